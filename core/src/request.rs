//! [`RotationRequest`]: one request to rotate one secret, from any trigger.

use std::fmt;

/// What asked for a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// An Event Grid delivery.
    EventGrid {
        /// The event's `id`.
        event_id: String,
        /// The event's `eventType`, e.g. `Microsoft.KeyVault.SecretNearExpiry`.
        event_type: String,
    },
    /// An operator, by CLI or admin API. Runs whether or not the secret is due.
    Manual {
        /// Who asked (free text, for the audit record).
        requested_by: String,
        /// Rotate even within the minimum interval since the latest version was written
        /// (an emergency: the password leaked).
        force: bool,
    },
    /// The periodic sweeper found the secret near expiry.
    Sweeper,
    /// An unfinished rotation's journal record, found at startup or by the sweeper.
    Resume {
        /// The journal record's name.
        journal: String,
    },
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::EventGrid { event_id, event_type } => write!(f, "event-grid {event_type} {event_id}"),
            Trigger::Manual { requested_by, force: false } => write!(f, "manual by {requested_by}"),
            Trigger::Manual { requested_by, force: true } => write!(f, "manual (forced) by {requested_by}"),
            Trigger::Sweeper => f.write_str("sweeper"),
            Trigger::Resume { journal } => write!(f, "resume of {journal}"),
        }
    }
}

/// A request to rotate one secret. A hint only: the engine re-reads Key Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationRequest {
    /// The vault's name (first label of its host), as the event names it.
    pub vault_name: String,
    /// The secret's name.
    pub secret_name: String,
    /// The version the trigger saw; `None` means "whatever is latest".
    pub version: Option<String>,
    /// What asked.
    pub trigger: Trigger,
}
