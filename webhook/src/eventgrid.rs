//! The Event Grid schema, and what each event of a delivery means to kv-rotator.
//!
//! Event Grid POSTs a JSON array of events to the webhook. This module turns that
//! array into decisions, with no I/O, so [`app`](crate::app) only answers HTTP and
//! feeds the queue. Its parts:
//!
//! - [`EventGridEvent`]: one event of the Event Grid schema (the envelope).
//! - [`AegEventType`]: the `aeg-event-type` header, what kind of delivery it is.
//! - [`EventKind`]: what an `eventType` is to us (handshake, rotate, ignore).
//! - [`SubscriptionValidationData`] and [`ValidationResponse`]: the handshake.
//! - [`KeyVaultEventData`]: the `data` of a Key Vault event, read tolerantly, and
//!   [`SecretRef`]: the secret it names, after cross-checking its fields.
//! - [`plan_event`] / [`Disposition`]: the decision for one event.
//! - [`CloudEvent`] / [`plan_cloud_event`]: the same for the CloudEvents 1.0 schema;
//!   [`plan_any_event`] picks the schema by the event's own shape.
//! - [`EventError`]: why an event is dropped. Always permanent: a malformed event
//!   never becomes valid on redelivery.
//!
//! # Quirks of the real payloads
//!
//! Microsoft's documented Key Vault example (see `shared/fixtures/eventgrid`) has
//! PascalCase `data` keys although other docs and SDKs use camelCase, the key
//! `"ObjectName "` with a trailing space, a `Version` value with a leading space, and
//! `NBF`/`EXP` as strings although the schema table says numbers. So keys are
//! matched after trimming and ignoring ASCII case, string values are trimmed, and
//! `NBF`/`EXP` may be integers, strings or null. No payload is published for
//! `SecretNearExpiry`/`SecretExpired`; the docs say they share the `data` shape of
//! `SecretNewVersionCreated`.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::source::{SourceError, SourceFilter};
use crate::text::{quote, quote_clipped, same_name, split_slash, trim};
use kv_rotator_core::names::{has_only_name_characters, is_secret_name, is_vault_name, is_version};
use kv_rotator_core::{RotationRequest, Trigger};

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

/// The `data` of a Key Vault object event, read tolerantly.
///
/// Keys match after trimming and ignoring ASCII case (`Id`/`id`, `"ObjectName "`);
/// string values are trimmed, and empty or null values count as absent. `NBF`/`EXP`
/// may be integers, integer strings or null; an unreadable one counts as absent,
/// because they are informational (the engine reads `exp` from Key Vault itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyVaultEventData {
    /// `Id`: the object's URL, `https://{vault}.vault.azure.net/secrets/{name}/{version}`.
    pub id: Option<String>,
    /// `VaultName`.
    pub vault_name: Option<String>,
    /// `ObjectType`: `Secret`, `Key` or `Certificate`.
    pub object_type: Option<String>,
    /// `ObjectName`.
    pub object_name: Option<String>,
    /// `Version`.
    pub version: Option<String>,
    /// `NBF`, Unix seconds.
    pub nbf: Option<i64>,
    /// `EXP`, Unix seconds.
    pub exp: Option<i64>,
}

/// The `data` keys we read, in canonical spelling, matched after trimming and ignoring ASCII case.
pub(crate) const KV_FIELDS: [&str; 7] = ["Id", "VaultName", "ObjectType", "ObjectName", "Version", "NBF", "EXP"];

/// The index in [`KV_FIELDS`] of a `data` key (trimmed, any ASCII case).
pub(crate) fn kv_field(key: &str) -> Option<usize> {
    let key = trim(key);
    // The length, and for two lengths one letter, pick the only candidate: one comparison.
    let i = match (key.len(), key.as_bytes()) {
        (2, _) => 0,
        (9, _) => 1,
        (10, [.., b'T' | b't', _, _, _]) => 2,
        (10, _) => 3,
        (7, _) => 4,
        (3, [b'N' | b'n', ..]) => 5,
        (3, _) => 6,
        _ => return None,
    };
    same_name(key, KV_FIELDS[i]).then_some(i)
}

impl KeyVaultEventData {
    /// Reads an event's `data`. Fails only when `data` is not an object, a field has
    /// a type no variant of the payload uses, or a key is given twice (e.g. `Id` and
    /// `id`) with different values.
    pub fn from_value(data: &Value) -> Result<Self, EventError> {
        let Value::Object(map) = data else {
            return Err(EventError::DataNotObject);
        };
        let mut out = Self::default();
        for (index, field) in KV_FIELDS.into_iter().enumerate() {
            let value = lookup(map, index)?;
            match field {
                "NBF" => out.nbf = value.and_then(unix_seconds),
                "EXP" => out.exp = value.and_then(unix_seconds),
                _ => {
                    let text = value.map(|v| trimmed_string(field, v)).transpose()?.flatten();
                    match field {
                        "Id" => out.id = text,
                        "VaultName" => out.vault_name = text,
                        "ObjectType" => out.object_type = text,
                        "ObjectName" => out.object_name = text,
                        _ => out.version = text,
                    }
                }
            }
        }
        Ok(out)
    }

    /// The secret this event names.
    ///
    /// Names come from `Id` when it is present, and every other field given must
    /// agree with it (ignoring ASCII case, as Key Vault names do); a disagreement
    /// rejects the event, since we cannot tell which field lies. Without `Id`, the
    /// names come from `VaultName`, `ObjectName` and `Version`.
    pub fn secret_ref(&self) -> Result<SecretRef, EventError> {
        self.view().secret_ref()
    }

    /// The fields the decisions use, borrowed.
    pub(crate) fn view(&self) -> KvView<'_> {
        KvView {
            id: self.id.as_deref(),
            vault_name: self.vault_name.as_deref(),
            object_type: self.object_type.as_deref(),
            object_name: self.object_name.as_deref(),
            version: self.version.as_deref(),
        }
    }
}

/// The name fields of [`KeyVaultEventData`], borrowed (trimmed, `None` when empty), so
/// the fast path decides without copying them; see [`KeyVaultEventData::secret_ref`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KvView<'a> {
    pub(crate) id: Option<&'a str>,
    pub(crate) vault_name: Option<&'a str>,
    pub(crate) object_type: Option<&'a str>,
    pub(crate) object_name: Option<&'a str>,
    pub(crate) version: Option<&'a str>,
}

impl KvView<'_> {
    /// [`KeyVaultEventData::secret_ref`]; only the checked names are copied.
    pub(crate) fn secret_ref(&self) -> Result<SecretRef, EventError> {
        if let Some(object_type) = self.object_type {
            if !same_name(object_type, "Secret") {
                return Err(EventError::WrongObjectType(quote(object_type)));
            }
        }
        let from_id = self.id.map(secret_id_parts).transpose()?;
        let (id_vault, id_name, id_version) = match from_id {
            Some((vault, name, version)) => (vault, Some(name), version),
            None => (None, None, None),
        };
        let vault_name = agree("VaultName", id_vault, self.vault_name)?.ok_or(EventError::MissingField("VaultName"))?;
        let secret_name =
            agree("ObjectName", id_name, self.object_name)?.ok_or(EventError::MissingField("ObjectName"))?;
        let version = agree("Version", id_version, self.version)?;

        if !is_vault_name(&vault_name) {
            return Err(EventError::InvalidVaultName(quote(&vault_name)));
        }
        if !is_secret_name(&secret_name) {
            return Err(EventError::InvalidSecretName(quote(&secret_name)));
        }
        if let Some(version) = &version {
            if !is_version(version) {
                return Err(EventError::InvalidVersion(quote(version)));
            }
        }
        Ok(SecretRef {
            vault_name: vault_name.into_owned(),
            secret_name: secret_name.into_owned(),
            version: version.map(Cow::into_owned),
        })
    }
}

/// Finds field `index` of [`KV_FIELDS`] among `map`'s keys, as [`kv_field`] reads them; two
/// spellings with different values are a conflict, not a choice.
fn lookup(map: &Map<String, Value>, index: usize) -> Result<Option<&Value>, EventError> {
    let mut found: Option<&Value> = None;
    for (key, value) in map {
        if kv_field(key) != Some(index) || value.is_null() {
            continue;
        }
        match found {
            Some(previous) if !same_value(previous, value) => {
                return Err(EventError::ConflictingField(KV_FIELDS[index]))
            }
            Some(_) => {}
            None => found = Some(value),
        }
    }
    Ok(found)
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.trim() == b.trim(),
        _ => a == b,
    }
}

/// A trimmed string, `None` when empty; a non-string is an error.
fn trimmed_string(field: &'static str, value: &Value) -> Result<Option<String>, EventError> {
    match value {
        Value::String(s) => {
            let s = s.trim();
            Ok((!s.is_empty()).then(|| s.to_owned()))
        }
        other => {
            Err(EventError::InvalidField { field, reason: format!("expected a string, got {}", json_type(other)) })
        }
    }
}

/// `NBF`/`EXP`: an integer, an integral float or a string holding one.
fn unix_seconds(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => {
            n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e15).map(|f| f as i64))
        }
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Cross-checks a name from `Id` with the same name given as its own field.
fn agree<'a>(
    field: &'static str,
    from_id: Option<Cow<'a, str>>,
    from_data: Option<&'a str>,
) -> Result<Option<Cow<'a, str>>, EventError> {
    match (from_id, from_data) {
        (Some(id), Some(data)) if !same_name(&id, data) => {
            Err(EventError::Mismatch { field, from_id: quote(&id), from_data: quote(data) })
        }
        (Some(id), _) => Ok(Some(id)),
        (None, data) => Ok(data.map(Cow::Borrowed)),
    }
}

/// The secret an event names, checked: a valid vault name, secret name and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// The vault's name.
    pub vault_name: String,
    /// The secret's name.
    pub secret_name: String,
    /// The version the event names, if any.
    pub version: Option<String>,
}

/// The parts of a secret id URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretIdParts {
    /// The first label of the host; `None` when the host is an IP address or a
    /// single label such as `localhost` (a dev vault), which names no vault.
    pub vault_name: Option<String>,
    /// The secret's name.
    pub secret_name: String,
    /// The version, when the id has one.
    pub version: Option<String>,
}

/// Splits `https://{vault}.vault.azure.net/secrets/{name}[/{version}]`.
///
/// Any host is accepted so sovereign clouds (`vault.azure.cn`,
/// `vault.usgovcloudapi.net`) work; the host's first label is the vault name.
pub fn parse_secret_id(id: &str) -> Result<SecretIdParts, EventError> {
    let (vault_name, secret_name, version) = secret_id_parts(id)?;
    Ok(SecretIdParts {
        vault_name: vault_name.map(Cow::into_owned),
        secret_name: secret_name.into_owned(),
        version: version.map(Cow::into_owned),
    })
}

/// (vault, name, version) of [`parse_secret_id`], borrowed from `id` when it is plain.
type IdParts<'a> = (Option<Cow<'a, str>>, Cow<'a, str>, Option<Cow<'a, str>>);

fn secret_id_parts(id: &str) -> Result<IdParts<'_>, EventError> {
    if let Some((vault_name, secret_name, version)) = plain_secret_id(id) {
        // The URL parser lower-cases the host.
        let vault_name = vault_name.map(|v| match v.bytes().any(|b| b.is_ascii_uppercase()) {
            true => Cow::Owned(v.to_ascii_lowercase()),
            false => Cow::Borrowed(v),
        });
        return Ok((vault_name, Cow::Borrowed(secret_name), version.map(Cow::Borrowed)));
    }
    let parts = url_secret_id(id)?;
    Ok((parts.vault_name.map(Cow::Owned), Cow::Owned(parts.secret_name), parts.version.map(Cow::Owned)))
}

/// [`parse_secret_id`] by the URL parser, for every id.
fn url_secret_id(id: &str) -> Result<SecretIdParts, EventError> {
    let invalid = |reason: &str| EventError::InvalidId { id: quote(id), reason: reason.to_owned() };
    let url = url::Url::parse(id).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(invalid("scheme is not https"));
    }
    let vault_name = match url.host() {
        Some(url::Host::Domain(host)) => host.split_once('.').map(|(label, _)| label.to_owned()),
        Some(_) => None,
        None => return Err(invalid("no host")),
    };
    let mut segments: Vec<&str> = url.path_segments().map(|s| s.collect()).unwrap_or_default();
    // Tolerate a trailing slash.
    if segments.last() == Some(&"") {
        segments.pop();
    }
    match segments.as_slice() {
        [collection, name] if collection.eq_ignore_ascii_case("secrets") => {
            Ok(SecretIdParts { vault_name, secret_name: (*name).to_owned(), version: None })
        }
        [collection, name, version] if collection.eq_ignore_ascii_case("secrets") => {
            Ok(SecretIdParts { vault_name, secret_name: (*name).to_owned(), version: Some((*version).to_owned()) })
        }
        _ => Err(invalid("path is not /secrets/{name}[/{version}]")),
    }
}

/// [`parse_secret_id`] without a URL parser, for the ids Key Vault sends: `https://`,
/// a host of plain letter-led labels, `/secrets/{name}[/{version}][/]` of letters,
/// digits and hyphens. `None` for anything else (ports, IP addresses, escapes, empty
/// segments, punycode), which the URL parser reads; on what this accepts both agree.
fn plain_secret_id(id: &str) -> Option<(Option<&str>, &str, Option<&str>)> {
    let rest = id.get(..8).filter(|scheme| scheme.eq_ignore_ascii_case("https://")).map(|_| &id[8..])?;
    let (host, path) = rest.split_at(rest.bytes().position(|b| b == b'/')?);
    // One pass over the host: labels start with a letter, hold letters, digits and single
    // hyphens, and do not end with a hyphen.
    let (mut previous, mut first_dot) = (b'.', None);
    for (i, b) in host.bytes().enumerate() {
        let plain = match b {
            b'.' | b'-' => previous != b'.' && previous != b'-',
            _ if b.is_ascii_digit() => previous != b'.',
            _ => b.is_ascii_alphabetic(),
        };
        if !plain {
            return None;
        }
        if b == b'.' && first_dot.is_none() {
            first_dot = Some(i);
        }
        previous = b;
    }
    if previous == b'.' || previous == b'-' {
        return None;
    }
    let vault_name = first_dot.map(|dot| &host[..dot]);
    let path = &path[1..];
    let path = path.strip_suffix('/').unwrap_or(path);
    let plain_segment = |s: &str| !s.is_empty() && has_only_name_characters(s);
    let mut segments = split_slash(path);
    let (collection, name, version) = (segments.next()?, segments.next()?, segments.next());
    if segments.next().is_some()
        || !same_name(collection, "secrets")
        || !plain_segment(name)
        || !version.is_none_or(plain_segment)
    {
        return None;
    }
    Some((vault_name, name, version))
}

/// Event ids: 1 to [`MAX_EVENT_ID_LEN`] visible ASCII characters (`!` to `~`) other than
/// `"` and `\`. An id is logged on every line of its delivery and of its rotation, and
/// kept in the dedup memory, so it is checked where it enters: no control character
/// (`\n`, `\r`, ESC) can start a forged log line or reach a terminal, no space or quote
/// can make it pose as another field of a line, and no huge id is repeated on every line.
pub fn is_event_id(id: &str) -> bool {
    (1..=MAX_EVENT_ID_LEN).contains(&id.len())
        && id.bytes().fold(true, |ok, b| ok & (b.is_ascii_graphic() & (b != b'"') & (b != b'\\')))
}

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
    /// The event's `id` is not one ([`is_event_id`]).
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

/// A received `validationUrl`, as it may be logged: quoted, control characters escaped,
/// clipped to [`MAX_LOGGED_URL`] characters.
pub(crate) fn loggable_url(url: &str) -> String {
    quote_clipped(url, MAX_LOGGED_URL)
}

/// The `id` of one event of a delivery, copied, when it is an event id ([`is_event_id`]);
/// otherwise why the event is rejected, before anything else of it is read.
pub(crate) fn checked_event_id(id: Option<&str>) -> Result<Option<String>, EventError> {
    match id {
        Some(id) if !is_event_id(id) => Err(EventError::InvalidEventId(quote(id))),
        id => Ok(id.map(str::to_owned)),
    }
}

/// What to do with one event of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The handshake: answer with this code.
    Validate(SubscriptionValidationData),
    /// Enqueue this rotation.
    Rotate(RotationRequest),
    /// Acknowledge and do nothing.
    Ignore {
        /// The event's kind.
        kind: EventKind,
        /// The event's `eventType` as sent.
        event_type: String,
    },
    /// Drop it, logging why.
    Reject(EventError),
}

/// One event of a delivery with its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Position in the delivered array, for logs.
    pub index: usize,
    /// The event's `id`, when it could be read and is an event id ([`is_event_id`]).
    pub event_id: Option<String>,
    /// What to do.
    pub disposition: Disposition,
}

impl PlannedEvent {
    /// The event at `index` of a delivery, dropped for `error` before its id was read.
    pub(crate) fn rejected(index: usize, error: EventError) -> Self {
        Self { index, event_id: None, disposition: Disposition::Reject(error) }
    }
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

/// Like [`plan_event`], for one element of a CloudEvents delivery: the event is read
/// as CloudEvents 1.0 and then decided exactly as its Event Grid twin (`source` plays
/// the part of `topic`, `type` of `eventType`).
pub fn plan_cloud_event(index: usize, value: Value, source: &SourceFilter) -> PlannedEvent {
    let event_id = match checked_event_id(value.get("id").and_then(Value::as_str)) {
        Ok(event_id) => event_id,
        Err(e) => return PlannedEvent::rejected(index, e),
    };
    let disposition = match serde_json::from_value::<CloudEvent>(value) {
        Err(e) => Disposition::Reject(EventError::Envelope(e.to_string())),
        Ok(ce) if ce.specversion.trim() != "1.0" => {
            Disposition::Reject(EventError::UnknownVersion { field: "specversion", value: quote(&ce.specversion) })
        }
        Ok(ce) if ce.data_base64.is_some() && ce.data.is_null() => {
            Disposition::Reject(EventError::Envelope("data_base64 is not a Key Vault payload".to_owned()))
        }
        Ok(ce) if EventKind::classify(&ce.event_type) == EventKind::SubscriptionValidation => Disposition::Reject(
            EventError::Envelope("CloudEvents subscriptions validate with OPTIONS, not a validation event".to_owned()),
        ),
        Ok(ce) => decide(
            EventGridEvent {
                id: ce.id,
                topic: Some(ce.source),
                subject: ce.subject,
                event_type: ce.event_type,
                event_time: ce.time,
                data: ce.data,
                data_version: None,
                metadata_version: None,
            },
            source,
        ),
    };
    PlannedEvent { index, event_id, disposition }
}

/// Decides what to do with one element of a delivered array; rotation events must
/// pass `source` (see [`SourceFilter::check`]). An event whose `id` is not an event id
/// ([`is_event_id`]) is rejected, whatever its type.
///
/// Takes the value by move: its strings and `data` move into the event, not copied.
pub fn plan_event(index: usize, value: Value, source: &SourceFilter) -> PlannedEvent {
    let event_id = match checked_event_id(value.get("id").and_then(Value::as_str)) {
        Ok(event_id) => event_id,
        Err(e) => return PlannedEvent::rejected(index, e),
    };
    let disposition = match serde_json::from_value::<EventGridEvent>(value) {
        Ok(event) => decide(event, source),
        Err(e) => Disposition::Reject(EventError::Envelope(e.to_string())),
    };
    PlannedEvent { index, event_id, disposition }
}

/// A CloudEvents 1.0 event: it has `specversion` and no `eventType`.
pub fn is_cloud_event(event: &Value) -> bool {
    event.get("specversion").is_some() && event.get("eventType").is_none()
}

/// [`plan_cloud_event`] or [`plan_event`], by the event's own shape ([`is_cloud_event`]):
/// for an event that arrives alone, without a delivery's content type to tell the schema
/// (the Azure Functions Event Grid trigger hands its function one event of either schema).
pub fn plan_any_event(index: usize, value: Value, source: &SourceFilter) -> PlannedEvent {
    if is_cloud_event(&value) {
        plan_cloud_event(index, value, source)
    } else {
        plan_event(index, value, source)
    }
}

fn decide(event: EventGridEvent, source: &SourceFilter) -> Disposition {
    let kind = EventKind::classify(&event.event_type);
    match kind {
        EventKind::SubscriptionValidation => match SubscriptionValidationData::deserialize(&event.data) {
            Ok(data) => Disposition::Validate(data),
            Err(e) => Disposition::Reject(EventError::InvalidField { field: "validationCode", reason: e.to_string() }),
        },
        EventKind::SecretNearExpiry | EventKind::SecretExpired => {
            let data = check_versions(event.metadata_version.as_deref(), event.data_version.as_deref())
                .and_then(|()| KeyVaultEventData::from_value(&event.data));
            let view = data.as_ref().map(KeyVaultEventData::view).map_err(EventError::clone);
            rotation(&event.id, &event.event_type, event.topic.as_deref(), view, source)
        }
        EventKind::SubscriptionDeleted
        | EventKind::SecretNewVersionCreated
        | EventKind::OtherKeyVault
        | EventKind::Unknown => Disposition::Ignore { kind, event_type: event.event_type },
    }
}

/// The decision for a `SecretNearExpiry`/`SecretExpired` event whose `data` was read
/// (or failed to be): rotate the secret it names if its names and source check out.
pub(crate) fn rotation(
    event_id: &str,
    event_type: &str,
    topic: Option<&str>,
    data: Result<KvView<'_>, EventError>,
    source: &SourceFilter,
) -> Disposition {
    let checked = data.and_then(|data| {
        let secret = data.secret_ref()?;
        source.check(topic, data.vault_name, data.id)?;
        Ok(secret)
    });
    match checked {
        Ok(secret) => Disposition::Rotate(RotationRequest {
            vault_name: secret.vault_name,
            secret_name: secret.secret_name,
            // Key Vault answers version ids in lower case; normalized here, at the boundary,
            // so the engine's fence and rotation id see one spelling.
            version: secret.version.map(|v| v.to_ascii_lowercase()),
            trigger: Trigger::EventGrid { event_id: event_id.to_owned(), event_type: trim(event_type).to_owned() },
        }),
        Err(e) => Disposition::Reject(e),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const VERSION: &str = "ee059b2bb5bc48398a53b168c6cdcb10";

    fn documented_data() -> Value {
        // The `data` of Microsoft's documented example, quirks included.
        json!({
            "Id": "https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10",
            "VaultName": "sample-kv",
            "ObjectType": "Secret",
            "ObjectName ": "newsecret",
            "Version": " ee059b2bb5bc48398a53b168c6cdcb10",
            "NBF": "1559081980",
            "EXP": "1559082102"
        })
    }

    fn expected_ref() -> SecretRef {
        SecretRef { vault_name: "sample-kv".into(), secret_name: "newsecret".into(), version: Some(VERSION.into()) }
    }

    #[test]
    fn documented_data_parses_with_its_quirks() {
        let data = KeyVaultEventData::from_value(&documented_data()).unwrap();
        assert_eq!(data.object_name.as_deref(), Some("newsecret"));
        assert_eq!(data.version.as_deref(), Some(VERSION));
        assert_eq!(data.nbf, Some(1_559_081_980));
        assert_eq!(data.exp, Some(1_559_082_102));
        assert_eq!(data.secret_ref().unwrap(), expected_ref());
    }

    #[test]
    fn camel_case_keys_and_integer_or_null_times() {
        let data = json!({
            "id": "https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10",
            "vaultName": "sample-kv",
            "objectType": "Secret",
            "objectName": "newsecret",
            "version": VERSION,
            "nbf": 1559081980,
            "exp": null
        });
        let data = KeyVaultEventData::from_value(&data).unwrap();
        assert_eq!((data.nbf, data.exp), (Some(1_559_081_980), None));
        assert_eq!(data.secret_ref().unwrap(), expected_ref());
    }

    #[test]
    fn unreadable_times_are_absent_not_fatal() {
        let mut data = documented_data();
        data["NBF"] = json!("soon");
        data["EXP"] = json!(1559082102.0);
        let data = KeyVaultEventData::from_value(&data).unwrap();
        assert_eq!((data.nbf, data.exp), (None, Some(1_559_082_102)));
    }

    #[test]
    fn names_without_id_come_from_fields() {
        let data = json!({"VaultName": "sample-kv", "ObjectName": "newsecret", "Version": VERSION});
        let data = KeyVaultEventData::from_value(&data).unwrap();
        assert_eq!(data.secret_ref().unwrap(), expected_ref());
    }

    #[test]
    fn id_alone_is_enough() {
        let data = json!({"Id": "https://sample-kv.vault.azure.net/secrets/newsecret/"});
        let secret = KeyVaultEventData::from_value(&data).unwrap().secret_ref().unwrap();
        assert_eq!(secret.vault_name, "sample-kv");
        assert_eq!(secret.secret_name, "newsecret");
        assert_eq!(secret.version, None);
    }

    #[test]
    fn names_compare_ignoring_case_and_id_spelling_wins() {
        let mut data = documented_data();
        data["ObjectName "] = json!("NewSecret");
        data["VaultName"] = json!("SAMPLE-KV");
        let secret = KeyVaultEventData::from_value(&data).unwrap().secret_ref().unwrap();
        assert_eq!(secret, expected_ref());
    }

    #[test]
    fn disagreements_with_id_are_rejected() {
        for (key, value, field) in [
            ("ObjectName ", "othersecret", "ObjectName"),
            ("VaultName", "other-kv", "VaultName"),
            ("Version", "0123456789abcdef0123456789abcdef", "Version"),
        ] {
            let mut data = documented_data();
            data[key] = json!(value);
            let err = KeyVaultEventData::from_value(&data).unwrap().secret_ref().unwrap_err();
            assert!(matches!(err, EventError::Mismatch { field: f, .. } if f == field), "{key}: {err}");
        }
    }

    #[test]
    fn conflicting_spellings_are_rejected_and_equal_ones_accepted() {
        let mut data = documented_data();
        data["ObjectName"] = json!("other");
        assert_eq!(KeyVaultEventData::from_value(&data), Err(EventError::ConflictingField("ObjectName")));
        data["ObjectName"] = json!("newsecret ");
        assert!(KeyVaultEventData::from_value(&data).is_ok());
    }

    #[test]
    fn bad_shapes_are_rejected() {
        assert_eq!(KeyVaultEventData::from_value(&json!("x")), Err(EventError::DataNotObject));
        let err = KeyVaultEventData::from_value(&json!({"VaultName": 5})).unwrap_err();
        assert!(matches!(err, EventError::InvalidField { field: "VaultName", .. }));
        let missing = KeyVaultEventData::from_value(&json!({"VaultName": "sample-kv"})).unwrap();
        assert_eq!(missing.secret_ref(), Err(EventError::MissingField("ObjectName")));
    }

    #[test]
    fn wrong_object_type_is_rejected() {
        let mut data = documented_data();
        data["ObjectType"] = json!("Key");
        let err = KeyVaultEventData::from_value(&data).unwrap().secret_ref().unwrap_err();
        assert!(matches!(err, EventError::WrongObjectType(_)));
    }

    #[test]
    fn secret_ids() {
        let parts = parse_secret_id("https://my-kv.vault.azure.cn/secrets/db-password/abc").unwrap();
        assert_eq!(parts.vault_name.as_deref(), Some("my-kv"));
        assert_eq!(parts.version.as_deref(), Some("abc"));
        // A dev vault on an IP or `localhost` names no vault; VaultName must.
        assert_eq!(parse_secret_id("https://127.0.0.1:8443/secrets/s").unwrap().vault_name, None);
        assert_eq!(parse_secret_id("https://localhost:8443/secrets/s/v").unwrap().vault_name, None);
        for bad in [
            "not a url",
            "http://sample-kv.vault.azure.net/secrets/s",
            "https://sample-kv.vault.azure.net/keys/k/v",
            "https://sample-kv.vault.azure.net/secrets",
            "https://sample-kv.vault.azure.net/secrets/s/v/extra",
        ] {
            assert!(matches!(parse_secret_id(bad), Err(EventError::InvalidId { .. })), "{bad}");
        }
    }

    #[test]
    fn plain_secret_ids_read_as_the_url_parser_reads_them() {
        let mut plain = 0;
        for id in [
            "https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10",
            "HTTPS://Sample-KV.Vault.Azure.NET/Secrets/NewSecret/",
            "https://sample-kv.vault.azure.net/secrets/s",
            "https://localhost/secrets/s/v",
            "https://a.b/secrets/s/v/",
            "https://sample-kv.vault.azure.net/secrets/s//",
            "https://sample-kv.vault.azure.net/secrets//v",
            "https://sample-kv.vault.azure.net/secrets/s/v/x",
            "https://sample-kv.vault.azure.net:443/secrets/s",
            "https://xn--bcher-kva.example/secrets/s",
            "https://a--b.vault.azure.net/secrets/s",
            "https://-a.vault.azure.net/secrets/s",
            "https://sample-kv.1/secrets/s",
            "https://sample-kv.vault.azure.net/secrets/s%41",
            "https://sample-kv.vault.azure.net/secrets/s/./v",
            "https://user@sample-kv.vault.azure.net/secrets/s",
            "https://sample-kv.vault.azure.net",
            "https://a-b.c9/secrets/s",
            "https://a-.b/secrets/s",
            "https://a..b/secrets/s",
            "https://.a/secrets/s",
            "https://a./secrets/s",
            "https://1a.b/secrets/s",
            "https://a.b-/secrets/s",
            "https:///secrets/s",
        ] {
            if plain_secret_id(id).is_some() {
                plain += 1;
                assert_eq!(parse_secret_id(id), url_secret_id(id), "{id}");
            }
        }
        assert_eq!(plain, 6, "the ids Key Vault sends take the plain path");
    }

    #[test]
    fn data_keys_and_trim_read_as_the_general_path_reads_them() {
        for key in [
            "Id",
            "id",
            " ID ",
            "VaultName",
            "vaultname",
            "ObjectType",
            "OBJECTTYPE",
            "ObjectName ",
            "objectName",
            "Version",
            "NBF",
            "nbf",
            "EXP",
            "Exp",
            "\u{a0}Id",
            "Idx",
            "ObjectTypo",
            "ObjectNamx",
            "NBX",
            "EXX",
            "",
            " ",
        ] {
            let general = KV_FIELDS.iter().position(|field| key.trim().eq_ignore_ascii_case(field));
            assert_eq!(kv_field(key), general, "{key:?}");
            assert_eq!(trim(key), key.trim(), "{key:?}");
        }
    }

    #[test]
    fn invalid_names_are_rejected_with_clipped_quotes() {
        let long = "x".repeat(500);
        let data = json!({"VaultName": "sample-kv", "ObjectName": format!("{long}\n"), "Version": VERSION});
        let err = KeyVaultEventData::from_value(&data).unwrap().secret_ref().unwrap_err();
        let EventError::InvalidSecretName(quoted) = &err else { panic!("{err}") };
        assert!(quoted.len() < 100, "{quoted}");
        let data = json!({"VaultName": "sample-kv", "ObjectName": "a\nb"});
        let err = KeyVaultEventData::from_value(&data).unwrap().secret_ref().unwrap_err();
        assert_eq!(err.to_string(), r#"invalid secret name "a\nb""#);
    }

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
    fn an_event_with_a_bad_id_is_rejected_whatever_its_type_with_the_id_clipped() {
        let huge = "A".repeat(500_000);
        for event_type in [SECRET_NEAR_EXPIRY, SECRET_NEW_VERSION_CREATED, SUBSCRIPTION_VALIDATION_EVENT, "Other"] {
            let event = json!({"id": huge, "eventType": event_type, "data": documented_data()});
            let planned = plan_event(2, event.clone(), &SourceFilter::any());
            assert_eq!((planned.index, planned.event_id.as_deref()), (2, None));
            let Disposition::Reject(e @ EventError::InvalidEventId(_)) = &planned.disposition else {
                panic!("{event_type}: {:?}", planned.disposition)
            };
            let text = e.to_string();
            assert!(text.starts_with("id \"AAAA") && text.len() < 200, "{text}");
            let cloud = json!({"specversion": "1.0", "id": huge, "source": "s", "type": event_type});
            assert_eq!(plan_cloud_event(2, cloud, &SourceFilter::any()).disposition, planned.disposition);
        }
        let planned = plan_event(0, json!({"id": "a\u{1b}[31m\nb", "eventType": "Other"}), &SourceFilter::any());
        let Disposition::Reject(e) = planned.disposition else { panic!() };
        let expected = r#"id "a\u{1b}[31m\nb" is not an event id: 1 to 128 visible ASCII characters, without " or \"#;
        assert_eq!(e.to_string(), expected);
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

    #[test]
    fn plan_rotates_near_expiry_and_ignores_new_versions() {
        let mut event = json!({
            "id": "e1", "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample-kv",
            "subject": "newsecret", "eventType": SECRET_NEAR_EXPIRY,
            "eventTime": "2019-07-25T01:08:33.1036736Z", "data": documented_data(),
            "dataVersion": 1, "metadataVersion": "1"
        });
        let planned = plan_event(3, event.clone(), &SourceFilter::any());
        assert_eq!(planned.index, 3);
        assert_eq!(planned.event_id.as_deref(), Some("e1"));
        let Disposition::Rotate(request) = planned.disposition else { panic!("{planned:?}") };
        assert_eq!(request.version.as_deref(), Some(VERSION));
        assert_eq!(
            request.trigger,
            Trigger::EventGrid { event_id: "e1".into(), event_type: SECRET_NEAR_EXPIRY.into() }
        );

        event["eventType"] = json!(SECRET_NEW_VERSION_CREATED);
        assert!(matches!(
            plan_event(0, event.clone(), &SourceFilter::any()).disposition,
            Disposition::Ignore { kind: EventKind::SecretNewVersionCreated, .. }
        ));
    }

    #[test]
    fn plan_rejects_broken_envelopes() {
        assert!(matches!(
            plan_event(0, json!(42), &SourceFilter::any()).disposition,
            Disposition::Reject(EventError::Envelope(_))
        ));
        let no_type = json!({"id": "e1", "data": {}});
        let planned = plan_event(0, no_type, &SourceFilter::any());
        assert_eq!(planned.event_id.as_deref(), Some("e1"));
        assert!(matches!(planned.disposition, Disposition::Reject(EventError::Envelope(m)) if m.contains("eventType")));
        let no_code = json!({"id": "v", "eventType": SUBSCRIPTION_VALIDATION_EVENT, "data": {}});
        assert!(matches!(
            plan_event(0, no_code, &SourceFilter::any()).disposition,
            Disposition::Reject(EventError::InvalidField { .. })
        ));
    }
}
