//! What arrives: the envelopes of the two schemas (Event Grid and CloudEvents 1.0), the
//! `aeg-event-type` header, the event types we know, and the rules for an event's `id`
//! and schema versions. Nothing here reads a Key Vault payload (see [`data`](super::data)).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::EventError;
use crate::text::{quote, quote_clipped, same_name, trim};

/// Header naming the kind of delivery; its value is matched ignoring ASCII case.
pub const AEG_EVENT_TYPE_HEADER: &str = "aeg-event-type";

/// `eventType` of the subscription validation handshake.
pub const SUBSCRIPTION_VALIDATION_EVENT: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
/// `eventType` sent when the event subscription is deleted.
pub const SUBSCRIPTION_DELETED_EVENT: &str = "Microsoft.EventGrid.SubscriptionDeletedEvent";
/// A secret's `exp` is 30 days away (Key Vault's fixed threshold).
pub const SECRET_NEAR_EXPIRY: &str = "Microsoft.KeyVault.SecretNearExpiry";
/// A secret's `exp` has passed.
pub const SECRET_EXPIRED: &str = "Microsoft.KeyVault.SecretExpired";
/// A secret got a new version, including the ones the worker writes itself.
pub const SECRET_NEW_VERSION_CREATED: &str = "Microsoft.KeyVault.SecretNewVersionCreated";

/// Prefix of every Key Vault event type.
const KEY_VAULT_PREFIX: &str = "Microsoft.KeyVault.";

/// Longest event id accepted ([`is_event_id`]). Event Grid's ids are GUIDs (36
/// characters); the cap leaves room for other publishers' schemes while keeping every
/// log line of a rotation, which names its event, short.
pub const MAX_EVENT_ID_LEN: usize = 128;

/// Longest `validationUrl` logged as it is; a longer one is clipped (it is only logged,
/// for an operator to validate by hand, never called).
const MAX_LOGGED_URL: usize = 2048;

/// The `aeg-event-type` header: what kind of delivery a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AegEventType {
    /// The handshake: answer with the validation code.
    SubscriptionValidation,
    /// Ordinary events.
    Notification,
    /// The subscription was deleted.
    SubscriptionDeletion,
}

impl AegEventType {
    /// Reads the header value, ignoring ASCII case and surrounding spaces; `None` for
    /// a value we do not know.
    pub fn parse(value: &str) -> Option<Self> {
        let value = trim(value);
        [Self::SubscriptionValidation, Self::Notification, Self::SubscriptionDeletion]
            .into_iter()
            .find(|kind| same_name(value, kind.as_str()))
    }

    /// The header value as Event Grid spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SubscriptionValidation => "SubscriptionValidation",
            Self::Notification => "Notification",
            Self::SubscriptionDeletion => "SubscriptionDeletion",
        }
    }
}

impl fmt::Display for AegEventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an `eventType` is to kv-rotator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// [`SUBSCRIPTION_VALIDATION_EVENT`]: answer the handshake.
    SubscriptionValidation,
    /// [`SUBSCRIPTION_DELETED_EVENT`]: acknowledge.
    SubscriptionDeleted,
    /// [`SECRET_NEAR_EXPIRY`]: rotate.
    SecretNearExpiry,
    /// [`SECRET_EXPIRED`]: rotate.
    SecretExpired,
    /// [`SECRET_NEW_VERSION_CREATED`]: ignore, or our own writes would loop.
    SecretNewVersionCreated,
    /// Any other `Microsoft.KeyVault.*` event (keys, certificates, access policy).
    OtherKeyVault,
    /// Anything else.
    Unknown,
}

impl EventKind {
    /// Classifies an `eventType`, ignoring ASCII case and surrounding spaces.
    pub fn classify(event_type: &str) -> Self {
        let t = trim(event_type);
        let is = |name: &str| same_name(t, name);
        if is(SUBSCRIPTION_VALIDATION_EVENT) {
            Self::SubscriptionValidation
        } else if is(SUBSCRIPTION_DELETED_EVENT) {
            Self::SubscriptionDeleted
        } else if is(SECRET_NEAR_EXPIRY) {
            Self::SecretNearExpiry
        } else if is(SECRET_EXPIRED) {
            Self::SecretExpired
        } else if is(SECRET_NEW_VERSION_CREATED) {
            Self::SecretNewVersionCreated
        } else if t.get(..KEY_VAULT_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(KEY_VAULT_PREFIX)) {
            Self::OtherKeyVault
        } else {
            Self::Unknown
        }
    }

    /// Whether events of this kind ask for a rotation.
    pub fn triggers_rotation(self) -> bool {
        matches!(self, Self::SecretNearExpiry | Self::SecretExpired)
    }
}

/// One event of the Event Grid schema.
///
/// Unknown envelope fields are ignored (the schema grows); `id` and `eventType` are
/// required because nothing can be done without them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventGridEvent {
    /// Unique per event; Event Grid keeps it across redeliveries.
    pub id: String,
    /// The source's resource id; for Key Vault the vault's ARM id.
    #[serde(default)]
    pub topic: Option<String>,
    /// For Key Vault, the bare object name.
    #[serde(default)]
    pub subject: Option<String>,
    /// E.g. [`SECRET_NEAR_EXPIRY`].
    pub event_type: String,
    /// When the source emitted the event (RFC 3339, kept as sent).
    #[serde(default)]
    pub event_time: Option<String>,
    /// The event's payload; its shape depends on `eventType`.
    #[serde(default)]
    pub data: Value,
    /// Schema version of `data`.
    #[serde(default, deserialize_with = "string_or_number")]
    pub data_version: Option<String>,
    /// Schema version of the envelope.
    #[serde(default, deserialize_with = "string_or_number")]
    pub metadata_version: Option<String>,
}

/// Version fields are strings in the schema; tolerate a publisher that sends numbers.
fn string_or_number<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(de)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// `data` of [`SUBSCRIPTION_VALIDATION_EVENT`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionValidationData {
    /// Echoed back in [`ValidationResponse`].
    #[serde(alias = "ValidationCode")]
    pub validation_code: String,
    /// For manual validation (a GET within 5 minutes); logged, never called.
    #[serde(default, alias = "ValidationUrl")]
    pub validation_url: Option<String>,
}

/// The body answering the handshake, sent with 200 (Event Grid rejects 202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationResponse {
    /// The event's `validationCode`.
    pub validation_response: String,
}

/// One CloudEvents 1.0 event in structured mode (Event Grid's CloudEvents schema).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CloudEvent {
    /// Must be `1.0`.
    pub specversion: String,
    /// Unique per event; kept across redeliveries.
    pub id: String,
    /// The source's resource id; for Key Vault the vault's ARM id.
    pub source: String,
    /// E.g. [`SECRET_NEAR_EXPIRY`].
    #[serde(rename = "type")]
    pub event_type: String,
    /// For Key Vault, the bare object name.
    #[serde(default)]
    pub subject: Option<String>,
    /// When the source emitted the event.
    #[serde(default)]
    pub time: Option<String>,
    /// The payload.
    #[serde(default)]
    pub data: Value,
    /// A binary payload; Key Vault events never use it.
    #[serde(default)]
    pub data_base64: Option<String>,
}

/// A CloudEvents 1.0 event: it has `specversion` and no `eventType`.
pub fn is_cloud_event(event: &Value) -> bool {
    event.get("specversion").is_some() && event.get("eventType").is_none()
}

/// Event ids: 1 to [`MAX_EVENT_ID_LEN`] visible ASCII characters (`!` to `~`) other than
/// `"` and `\`. An id is logged on every line of its delivery and of its rotation, and
/// kept in the dedup memory, so it is checked where it enters: no control character
/// (`\n`, `\r`, ESC) can start a forged log line or reach a terminal, no space or quote
/// can make it pose as another field of a line, and no huge id is repeated on every line.
pub fn is_event_id(id: &str) -> bool {
    (1..=MAX_EVENT_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// The `id` of one event of a delivery, copied, when it is an event id ([`is_event_id`]);
/// otherwise why the event is rejected, before anything else of it is read.
pub(crate) fn checked_event_id(id: Option<&str>) -> Result<Option<String>, EventError> {
    match id {
        Some(id) if !is_event_id(id) => Err(EventError::InvalidEventId(quote(id))),
        id => Ok(id.map(str::to_owned)),
    }
}

/// A received `validationUrl`, as it may be logged: quoted, control characters escaped,
/// clipped to [`MAX_LOGGED_URL`] characters.
pub(crate) fn loggable_url(url: &str) -> String {
    quote_clipped(url, MAX_LOGGED_URL)
}

/// Envelope (`metadataVersion`) and Key Vault `data` (`dataVersion`) schema versions we
/// know; a rotation event of another version is dropped, since we cannot tell what its
/// fields mean. Absent versions are accepted (CloudEvents carries none).
pub(crate) fn check_versions(metadata_version: Option<&str>, data_version: Option<&str>) -> Result<(), EventError> {
    for (field, value) in [("metadataVersion", metadata_version), ("dataVersion", data_version)] {
        if let Some(v) = value.map(trim).filter(|v| !v.is_empty()) {
            if v != "1" && v != "1.0" {
                return Err(EventError::UnknownVersion { field, value: quote(v) });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_rules() {
        for good in ["00eccf70-95a7-4e7c-8299-2eb17ee9ad64", "e1", "urn:uuid:1#2=3", &"x".repeat(MAX_EVENT_ID_LEN)] {
            assert!(is_event_id(good), "{good}");
        }
        let long = "x".repeat(MAX_EVENT_ID_LEN + 1);
        for bad in ["", "a b", "a\nb", "a\rb", "\u{1b}[31m", "a\tb", "a\"b", "a\\b", "é", "a\u{7f}", &long] {
            assert!(!is_event_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn quotes_escape_and_clip_on_a_character_boundary() {
        assert_eq!(quote_clipped("a\nb", 3), r#""a\nb""#);
        assert_eq!(quote_clipped("éééé", 2), r#""éé"…"#);
        assert_eq!(loggable_url("https://x/\r\n\u{1b}"), r#""https://x/\r\n\u{1b}""#);
        assert!(loggable_url(&"u".repeat(5000)).len() < 2100);
    }

    #[test]
    fn classify_event_types() {
        assert_eq!(EventKind::classify("microsoft.keyvault.secretnearexpiry"), EventKind::SecretNearExpiry);
        assert_eq!(EventKind::classify(SECRET_EXPIRED), EventKind::SecretExpired);
        assert_eq!(EventKind::classify(SECRET_NEW_VERSION_CREATED), EventKind::SecretNewVersionCreated);
        assert_eq!(EventKind::classify("Microsoft.KeyVault.KeyNearExpiry"), EventKind::OtherKeyVault);
        assert_eq!(EventKind::classify("Microsoft.Storage.BlobCreated"), EventKind::Unknown);
        assert_eq!(EventKind::classify(SUBSCRIPTION_VALIDATION_EVENT), EventKind::SubscriptionValidation);
        assert_eq!(EventKind::classify(SUBSCRIPTION_DELETED_EVENT), EventKind::SubscriptionDeleted);
        assert_eq!(AegEventType::parse(" subscriptionvalidation"), Some(AegEventType::SubscriptionValidation));
        assert_eq!(AegEventType::parse("NOTIFICATION"), Some(AegEventType::Notification));
        assert_eq!(AegEventType::parse("other"), None);
    }
}
