//! Why an event is dropped ([`EventError`]): always permanent, since a malformed or
//! foreign event never becomes valid on redelivery.

use super::MAX_EVENT_ID_LEN;
use crate::source::SourceError;

/// Why an event is dropped. Every variant is permanent: redelivery cannot fix it.
///
/// Quoted values come from the request; they are clipped and shown with `{:?}`
/// escaping so a log line cannot be forged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The array element is not an Event Grid event.
    #[error("not an Event Grid event: {0}")]
    Envelope(String),
    /// The event's `id` is not one ([`is_event_id`](super::is_event_id)).
    #[error("id {0} is not an event id: 1 to {MAX_EVENT_ID_LEN} visible ASCII characters, without \" or \\")]
    InvalidEventId(String),
    /// `data` is not a JSON object.
    #[error("data is not a JSON object")]
    DataNotObject,
    /// A `data` field has a type no variant of the payload uses.
    #[error("data.{field}: {reason}")]
    InvalidField {
        /// Canonical field name.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A `data` key given twice (e.g. `Id` and `id`) with different values.
    #[error("data.{0} is given twice with different values")]
    ConflictingField(&'static str),
    /// A field needed to name the secret is absent.
    #[error("data.{0} is missing")]
    MissingField(&'static str),
    /// `data.Id` is not a secret URL.
    #[error("data.Id {id} is not a Key Vault secret id: {reason}")]
    InvalidId {
        /// The id, quoted and clipped.
        id: String,
        /// What was wrong.
        reason: String,
    },
    /// `data.Id` and another field name different objects.
    #[error("data.Id names {field} {from_id} but data.{field} is {from_data}")]
    Mismatch {
        /// Canonical name of the disagreeing field.
        field: &'static str,
        /// The value from `Id`, quoted and clipped.
        from_id: String,
        /// The value from the field, quoted and clipped.
        from_data: String,
    },
    /// A secret event whose `ObjectType` is not `Secret`.
    #[error("data.ObjectType is {0}, expected Secret")]
    WrongObjectType(String),
    /// Not a valid Key Vault name.
    #[error("invalid vault name {0}")]
    InvalidVaultName(String),
    /// Not a valid secret name.
    #[error("invalid secret name {0}")]
    InvalidSecretName(String),
    /// Not a valid secret version.
    #[error("invalid secret version {0}")]
    InvalidVersion(String),
    /// A field naming the event's source is absent (`topic`, `data.VaultName`, `data.Id`).
    #[error("{0} is missing: the event's source cannot be checked")]
    MissingSource(&'static str),
    /// `topic`/`source`, `data.VaultName` and `data.Id` do not name the same vault.
    #[error("event source does not agree: {reason}")]
    SourceMismatch {
        /// Which names disagree, quoted and clipped.
        reason: String,
    },
    /// The vault is not on the allowlist.
    #[error("vault {0} is not on the allowlist")]
    VaultNotAllowed(String),
    /// A schema version we do not know (`specversion`, `metadataVersion`, `dataVersion`).
    #[error("unknown {field} {value}")]
    UnknownVersion {
        /// Which version attribute.
        field: &'static str,
        /// Its value, quoted and clipped.
        value: String,
    },
}

impl From<SourceError> for EventError {
    fn from(error: SourceError) -> Self {
        match error {
            SourceError::Missing(field) => Self::MissingSource(field),
            SourceError::Mismatch { reason } => Self::SourceMismatch { reason },
            SourceError::NotAllowed(vault) => Self::VaultNotAllowed(vault),
        }
    }
}

impl EventError {
    /// Whether the event was dropped for its source (spoofed, foreign, or unprovable),
    /// rather than for its shape.
    pub fn is_source(&self) -> bool {
        matches!(self, Self::MissingSource(_) | Self::SourceMismatch { .. } | Self::VaultNotAllowed(_))
    }
}
