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
    /// An operator, by CLI or admin API.
    Manual {
        /// Who asked (free text, for the audit record).
        requested_by: String,
    },
    /// The periodic sweeper found the secret near expiry.
    Sweeper,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::EventGrid { event_id, event_type } => write!(f, "event-grid {event_type} {event_id}"),
            Trigger::Manual { requested_by } => write!(f, "manual by {requested_by}"),
            Trigger::Sweeper => f.write_str("sweeper"),
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
