//! The vault's model and its operations, in memory.
//!
//! - [`Vault`]: live secrets and soft-deleted ones, keyed by lowercase name (the service's
//!   names are case-insensitive; ids keep the casing of the first write).
//! - [`SecretVersion`] / [`Secret`]: versions kept in a `BTreeMap`, so every listing is in
//!   version-id order, as the service lists them (not in creation order).
//! - [`Bundle`]: the one JSON shape behind SecretBundle, SecretItem, DeletedSecretBundle
//!   and DeletedSecretItem; which fields are set decides which of them it is.
//! - Inputs ([`SetParams`], [`UpdateParams`]) with the service's validation limits.
//! - Backup blobs: our own encoding (a magic prefix and JSON), base64url in the API.
//!
//! Every operation completes at once: a deleted secret is listed as deleted, and a
//! recovered one readable, on the next request (the service takes a few seconds).
//!
//! Size: ~15 lines of module doc, ~625 of code, ~55 of unit tests. The code is the model
//! and its operations (set, get, update, list, delete, recover, purge, backup, restore,
//! seed), all on [`Vault`]'s private maps; HTTP and faults are apart.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use kv_rotator_core::names::is_secret_name;
use serde::{Deserialize, Serialize};

use super::errors::ApiError;

/// `attributes.recoveryLevel` of a vault with soft delete and purge protection off.
pub(crate) const RECOVERY_LEVEL: &str = "Recoverable+Purgeable";
/// `attributes.recoverableDays`: the default (and maximum) retention.
pub(crate) const RECOVERABLE_DAYS: i64 = 90;
// The service's size limits, shared with the production store's client-side checks.
pub(crate) use crate::store::{MAX_CONTENT_TYPE_CHARS, MAX_TAGS, MAX_TAG_CHARS, MAX_VALUE_BYTES};

/// Magic prefix of our backup blobs; restore refuses anything else.
const BACKUP_MAGIC: &[u8] = b"kv-rotator-devvault-backup-v1\n";

/// Seconds since the epoch, the service's time unit.
pub(crate) fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

fn new_version_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// One version of a secret.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct SecretVersion {
    pub id: String,
    pub value: String,
    pub content_type: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    pub enabled: bool,
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
    pub created: i64,
    pub updated: i64,
    /// Set for certificate-backed secrets, which only [`Vault::seed`] makes.
    #[serde(default)]
    pub managed: bool,
}

// Values never print, not even from the dev vault.
impl fmt::Debug for SecretVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretVersion")
            .field("id", &self.id)
            .field("value", &"[REDACTED]")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// Why [`Vault::seed`] refused a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    /// Not 1-127 of `0-9 a-z A-Z -`.
    #[error("invalid secret name {0:?}")]
    InvalidName(String),
    /// A given version id that is not 32 hex characters.
    #[error("version id {0:?} is not 32 hex characters")]
    InvalidVersion(String),
    /// A secret of that name exists, live or deleted (and `add_version` was not asked).
    #[error("a secret named {0:?} exists already")]
    Exists(String),
    /// `add_version` for a secret that is not there, or is deleted.
    #[error("add_version needs a live secret named {0:?}")]
    NoLiveSecret(String),
    /// `add_version` with a version id the secret has.
    #[error("secret {name:?} has a version {version} already")]
    VersionExists {
        /// The secret.
        name: String,
        /// The version id.
        version: String,
    },
}

/// Why a dev vault state file cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Not the JSON a dev vault writes.
    #[error("not a dev vault state file: {0}")]
    NotAStateFile(#[source] serde_json::Error),
    /// Another format version.
    #[error("format {0:?}, expected {STATE_FORMAT:?}")]
    Format(String),
    /// A secret with an invalid name or without its latest version.
    #[error("a secret in the file has an invalid name or no latest version")]
    BrokenSecret,
}

/// A secret: its versions and which one is the latest (the last written).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Secret {
    pub name: String,
    pub versions: BTreeMap<String, SecretVersion>,
    pub latest: String,
}

impl Secret {
    fn latest(&self) -> &SecretVersion {
        // `latest` always names an entry: every constructor inserts it.
        &self.versions[&self.latest]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deleted {
    secret: Secret,
    deleted_date: i64,
}

impl Deleted {
    fn scheduled_purge_date(&self) -> i64 {
        self.deleted_date + RECOVERABLE_DAYS * 86_400
    }
}

/// `attributes` of every bundle and item.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Attributes {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
    #[serde(rename = "recoveryLevel")]
    pub recovery_level: &'static str,
    #[serde(rename = "recoverableDays")]
    pub recoverable_days: i64,
}

/// SecretBundle, SecretItem, DeletedSecretBundle or DeletedSecretItem, with fields in
/// the order the service writes them. Its `Debug` leaves the value out.
#[derive(Clone, Serialize)]
pub(crate) struct Bundle {
    #[serde(rename = "recoveryId", skip_serializing_if = "Option::is_none")]
    pub recovery_id: Option<String>,
    #[serde(rename = "deletedDate", skip_serializing_if = "Option::is_none")]
    pub deleted_date: Option<i64>,
    #[serde(rename = "scheduledPurgeDate", skip_serializing_if = "Option::is_none")]
    pub scheduled_purge_date: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(rename = "contentType", skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
    pub attributes: Attributes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("id", &self.id)
            .field("value", &self.value.as_ref().map(|_| "[REDACTED]"))
            .field("deleted_date", &self.deleted_date)
            .field("attributes", &self.attributes)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

/// What a bundle shows: with or without the value, the version in the id or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    /// SecretBundle of get and set: value and versioned id.
    WithValue,
    /// Responses of update, recover, restore, delete and versions listing: versioned id,
    /// no value.
    Properties,
    /// Items of the secrets and deleted-secrets listings: id without version.
    Item,
}

/// `attributes` in a request; read-only fields are ignored, as the service does.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct AttributesParams {
    pub enabled: Option<bool>,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
}

/// Body of PUT /secrets/{name}.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SetParams {
    pub value: Option<String>,
    pub content_type: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub attributes: Option<AttributesParams>,
}

/// Body of PATCH /secrets/{name}/{version}.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateParams {
    pub content_type: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub attributes: Option<AttributesParams>,
}

fn check_properties(content_type: Option<&String>, tags: Option<&BTreeMap<String, String>>) -> Result<(), ApiError> {
    if content_type.is_some_and(|c| c.chars().count() > MAX_CONTENT_TYPE_CHARS) {
        return Err(ApiError::invalid_property());
    }
    if let Some(tags) = tags {
        let too_long = |s: &String| s.chars().count() > MAX_TAG_CHARS;
        if tags.len() > MAX_TAGS || tags.iter().any(|(k, v)| too_long(k) || too_long(v)) {
            return Err(ApiError::invalid_property());
        }
    }
    Ok(())
}

/// One page of a listing and where the next starts (the last key returned).
#[derive(Debug)]
pub(crate) struct Page {
    pub items: Vec<Bundle>,
    pub next_after: Option<String>,
}

fn page<'a, T: 'a>(
    entries: impl Iterator<Item = (&'a String, T)>,
    after: Option<&str>,
    max: usize,
    render: impl Fn(T) -> Bundle,
) -> Page {
    let mut rest = entries.filter(|(k, _)| after.is_none_or(|a| k.as_str() > a)).peekable();
    let mut items = Vec::new();
    let mut last = None;
    while items.len() < max {
        let Some((k, v)) = rest.next() else { break };
        last = Some(k.clone());
        items.push(render(v));
    }
    let next_after = if rest.peek().is_some() { last } else { None };
    Page { items, next_after }
}

/// A secret put straight into the state, bypassing the REST API.
#[derive(Clone)]
pub struct SeedSecret {
    /// Secret name.
    pub name: String,
    /// Value of the (single) version.
    pub value: String,
    /// `contentType`.
    pub content_type: Option<String>,
    /// Tags.
    pub tags: Option<BTreeMap<String, String>>,
    /// `attributes.enabled`.
    pub enabled: bool,
    /// `attributes.nbf`, unix seconds.
    pub not_before: Option<i64>,
    /// `attributes.exp`, unix seconds.
    pub expires: Option<i64>,
    /// `attributes.created`, unix seconds; `None` means now.
    pub created: Option<i64>,
    /// `attributes.updated`, unix seconds; `None` means `created`.
    pub updated: Option<i64>,
    /// Marks a certificate-backed secret (`managed: true`), which the REST API cannot make.
    pub managed: bool,
    /// Puts the secret in the soft-deleted state, deleted at this time (unix seconds).
    pub deleted_date: Option<i64>,
    /// The version id (32 lowercase hex characters on the service); `None` draws one.
    /// With [`created`](Self::created) this makes id order differ from creation order.
    pub version: Option<String>,
    /// Adds the version to the live secret of that name (it becomes the latest) instead
    /// of refusing a taken name.
    pub add_version: bool,
}

impl Default for SeedSecret {
    fn default() -> Self {
        Self {
            name: String::new(),
            value: String::new(),
            content_type: None,
            tags: None,
            enabled: true,
            not_before: None,
            expires: None,
            created: None,
            updated: None,
            managed: false,
            deleted_date: None,
            version: None,
            add_version: false,
        }
    }
}

impl fmt::Debug for SeedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedSecret")
            .field("name", &self.name)
            .field("value", &"[REDACTED]")
            .field("managed", &self.managed)
            .field("deleted_date", &self.deleted_date)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Our backup blob, before the magic prefix.
#[derive(Serialize, Deserialize)]
struct BackupBlob {
    secret: Secret,
}

/// A version as the service shows it; `host` is written into the ids.
fn render(host: &str, secret: &Secret, version: &SecretVersion, view: View) -> Bundle {
    let id = match view {
        View::Item => format!("https://{host}/secrets/{}", secret.name),
        _ => format!("https://{host}/secrets/{}/{}", secret.name, version.id),
    };
    Bundle {
        recovery_id: None,
        deleted_date: None,
        scheduled_purge_date: None,
        value: (view == View::WithValue).then(|| version.value.clone()),
        content_type: version.content_type.clone(),
        id,
        managed: version.managed.then_some(true),
        attributes: Attributes {
            enabled: version.enabled,
            nbf: version.not_before,
            exp: version.expires,
            created: version.created,
            updated: version.updated,
            recovery_level: RECOVERY_LEVEL,
            recoverable_days: RECOVERABLE_DAYS,
        },
        tags: version.tags.clone(),
    }
}

/// The whole state of one dev vault.
#[derive(Debug)]
pub(crate) struct Vault {
    /// `{vault}.vault.azure.net`: ids carry the host without a port, as the service's do.
    host: String,
    secrets: BTreeMap<String, Secret>,
    deleted: BTreeMap<String, Deleted>,
}

/// The persisted form of a vault's content (not its host, which ids are rendered with).
#[derive(Serialize, Deserialize)]
struct Persisted {
    format: String,
    secrets: BTreeMap<String, Secret>,
    deleted: BTreeMap<String, Deleted>,
}

/// Tag of the state file format; a file without it is refused rather than guessed at.
const STATE_FORMAT: &str = "kv-rotator-devvault-state-v1";

impl Vault {
    pub fn new(host: String) -> Self {
        Self { host, secrets: BTreeMap::new(), deleted: BTreeMap::new() }
    }

    /// The content as JSON, values included in clear (for the dev vault's state file).
    pub fn to_state_json(&self) -> Vec<u8> {
        let persisted =
            Persisted { format: STATE_FORMAT.into(), secrets: self.secrets.clone(), deleted: self.deleted.clone() };
        serde_json::to_vec_pretty(&persisted).unwrap_or_default()
    }

    /// A vault with the content of a state file written by [`Vault::to_state_json`].
    pub fn from_state_json(host: String, json: &[u8]) -> Result<Self, StateFileError> {
        let persisted: Persisted = serde_json::from_slice(json).map_err(StateFileError::NotAStateFile)?;
        if persisted.format != STATE_FORMAT {
            return Err(StateFileError::Format(persisted.format));
        }
        let whole = |s: &Secret| is_secret_name(&s.name) && s.versions.contains_key(&s.latest);
        if !persisted.secrets.values().all(whole) || !persisted.deleted.values().all(|d| whole(&d.secret)) {
            return Err(StateFileError::BrokenSecret);
        }
        Ok(Self { host, secrets: persisted.secrets, deleted: persisted.deleted })
    }

    fn render(&self, secret: &Secret, version: &SecretVersion, view: View) -> Bundle {
        render(&self.host, secret, version, view)
    }

    fn render_deleted(&self, deleted: &Deleted, view: View) -> Bundle {
        let secret = &deleted.secret;
        let mut bundle = self.render(secret, secret.latest(), view);
        bundle.recovery_id = Some(format!("https://{}/deletedsecrets/{}", self.host, secret.name));
        bundle.deleted_date = Some(deleted.deleted_date);
        bundle.scheduled_purge_date = Some(deleted.scheduled_purge_date());
        bundle
    }

    fn live(&self, name: &str) -> Result<&Secret, ApiError> {
        self.secrets.get(&name.to_ascii_lowercase()).ok_or_else(|| ApiError::secret_not_found(name, None))
    }

    /// PUT /secrets/{name}: a new version, which becomes the latest.
    pub fn set(&mut self, name: &str, params: SetParams) -> Result<Bundle, ApiError> {
        let key = name.to_ascii_lowercase();
        // Best guess: the service's message for a missing value is not public.
        let value = params.value.ok_or_else(|| ApiError::bad_parameter("Property 'value' is required."))?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(ApiError::invalid_property());
        }
        check_properties(params.content_type.as_ref(), params.tags.as_ref())?;
        if let Some(deleted) = self.deleted.get(&key) {
            return Err(ApiError::deleted_but_recoverable(&deleted.secret.name));
        }
        let attributes = params.attributes.unwrap_or_default();
        let now = now();
        let version = SecretVersion {
            id: new_version_id(),
            value,
            content_type: params.content_type,
            tags: params.tags,
            enabled: attributes.enabled.unwrap_or(true),
            not_before: attributes.nbf,
            expires: attributes.exp,
            created: now,
            updated: now,
            managed: false,
        };
        let secret = self.secrets.entry(key).or_insert_with(|| Secret {
            name: name.to_string(),
            versions: BTreeMap::new(),
            latest: String::new(),
        });
        secret.latest = version.id.clone();
        secret.versions.insert(version.id.clone(), version);
        // Rendered in place: cloning the secret would copy every version on each write.
        Ok(render(&self.host, secret, secret.latest(), View::WithValue))
    }

    /// GET /secrets/{name}/{version?}; disabled versions are refused with 403.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Bundle, ApiError> {
        let secret = self.live(name)?;
        let found = match version {
            None => secret.latest(),
            Some(v) => {
                secret.versions.get(&v.to_ascii_lowercase()).ok_or_else(|| ApiError::secret_not_found(name, Some(v)))?
            }
        };
        if !found.enabled {
            return Err(ApiError::secret_disabled());
        }
        Ok(self.render(secret, found, View::WithValue))
    }

    /// PATCH /secrets/{name}/{version?}: merge the given properties into one version.
    pub fn update(&mut self, name: &str, version: Option<&str>, params: UpdateParams) -> Result<Bundle, ApiError> {
        check_properties(params.content_type.as_ref(), params.tags.as_ref())?;
        let key = name.to_ascii_lowercase();
        let secret = self.secrets.get_mut(&key).ok_or_else(|| ApiError::secret_not_found(name, None))?;
        let version_id = match version {
            None => secret.latest.clone(),
            Some(v) => v.to_ascii_lowercase(),
        };
        let found = secret.versions.get_mut(&version_id).ok_or_else(|| ApiError::secret_not_found(name, version))?;
        if let Some(content_type) = params.content_type {
            found.content_type = Some(content_type);
        }
        if let Some(tags) = params.tags {
            found.tags = Some(tags);
        }
        let attributes = params.attributes.unwrap_or_default();
        if let Some(enabled) = attributes.enabled {
            found.enabled = enabled;
        }
        if let Some(nbf) = attributes.nbf {
            found.not_before = Some(nbf);
        }
        if let Some(exp) = attributes.exp {
            found.expires = Some(exp);
        }
        found.updated = now();
        Ok(render(&self.host, secret, &secret.versions[&version_id], View::Properties))
    }

    /// GET /secrets: one item per live secret, attributes of its latest version.
    pub fn list(&self, after: Option<&str>, max: usize) -> Page {
        page(self.secrets.iter(), after, max, |s| self.render(s, s.latest(), View::Item))
    }

    /// GET /secrets/{name}/versions: every version, in version-id order. An unknown name
    /// lists nothing (recordings: 200 with an empty page); so does a soft-deleted one
    /// (best guess: the recordings never list those).
    pub fn list_versions(&self, name: &str, after: Option<&str>, max: usize) -> Page {
        match self.secrets.get(&name.to_ascii_lowercase()) {
            Some(secret) => page(secret.versions.iter(), after, max, |v| self.render(secret, v, View::Properties)),
            None => Page { items: Vec::new(), next_after: None },
        }
    }

    /// DELETE /secrets/{name}: soft delete; the response is the DeletedSecretBundle.
    pub fn delete(&mut self, name: &str) -> Result<Bundle, ApiError> {
        let key = name.to_ascii_lowercase();
        let secret = self.secrets.remove(&key).ok_or_else(|| ApiError::secret_not_found(name, None))?;
        let deleted = Deleted { secret, deleted_date: now() };
        let bundle = self.render_deleted(&deleted, View::Properties);
        self.deleted.insert(key, deleted);
        Ok(bundle)
    }

    /// GET /deletedsecrets/{name}.
    pub fn get_deleted(&self, name: &str) -> Result<Bundle, ApiError> {
        let deleted =
            self.deleted.get(&name.to_ascii_lowercase()).ok_or_else(|| ApiError::deleted_secret_not_found(name))?;
        Ok(self.render_deleted(deleted, View::Properties))
    }

    /// GET /deletedsecrets.
    pub fn list_deleted(&self, after: Option<&str>, max: usize) -> Page {
        page(self.deleted.iter(), after, max, |d| self.render_deleted(d, View::Item))
    }

    /// DELETE /deletedsecrets/{name}: gone for good.
    pub fn purge(&mut self, name: &str) -> Result<(), ApiError> {
        self.deleted
            .remove(&name.to_ascii_lowercase())
            .map(|_| ())
            .ok_or_else(|| ApiError::deleted_secret_not_found(name))
    }

    /// POST /deletedsecrets/{name}/recover: live again, every version intact.
    pub fn recover(&mut self, name: &str) -> Result<Bundle, ApiError> {
        let key = name.to_ascii_lowercase();
        let deleted = self.deleted.remove(&key).ok_or_else(|| ApiError::deleted_secret_not_found(name))?;
        let bundle = self.render(&deleted.secret, deleted.secret.latest(), View::Properties);
        self.secrets.insert(key, deleted.secret);
        Ok(bundle)
    }

    /// POST /secrets/{name}/backup: every version, in our own (unencrypted) format.
    pub fn backup(&self, name: &str) -> Result<Vec<u8>, ApiError> {
        let secret = self.live(name)?.clone();
        let mut blob = BACKUP_MAGIC.to_vec();
        blob.extend(serde_json::to_vec(&BackupBlob { secret }).unwrap_or_default());
        Ok(blob)
    }

    /// POST /secrets/restore: the secret as backed up, versions and times included.
    pub fn restore(&mut self, blob: &[u8]) -> Result<Bundle, ApiError> {
        // Best guess: the service's message for a foreign or corrupt blob is not public.
        let corrupt = || ApiError::bad_parameter("The backup blob is invalid or corrupt.");
        let json = blob.strip_prefix(BACKUP_MAGIC).ok_or_else(corrupt)?;
        let BackupBlob { secret } = serde_json::from_slice(json).map_err(|_| corrupt())?;
        if !is_secret_name(&secret.name) || !secret.versions.contains_key(&secret.latest) {
            return Err(corrupt());
        }
        let key = secret.name.to_ascii_lowercase();
        if let Some(deleted) = self.deleted.get(&key) {
            return Err(ApiError::deleted_but_recoverable(&deleted.secret.name));
        }
        if let Some(live) = self.secrets.get(&key) {
            return Err(ApiError::already_exists(&live.name));
        }
        let bundle = self.render(&secret, secret.latest(), View::Properties);
        self.secrets.insert(key, secret);
        Ok(bundle)
    }

    /// Inserts a secret of one version, live or soft-deleted, or (with `add_version`) one
    /// more version of a live secret; returns the version id.
    pub fn seed(&mut self, seed: SeedSecret) -> Result<String, SeedError> {
        if !is_secret_name(&seed.name) {
            return Err(SeedError::InvalidName(seed.name));
        }
        let id = match seed.version {
            Some(v) if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) => v.to_ascii_lowercase(),
            Some(v) => return Err(SeedError::InvalidVersion(v)),
            None => new_version_id(),
        };
        let key = seed.name.to_ascii_lowercase();
        let existing = self.secrets.contains_key(&key);
        if self.deleted.contains_key(&key) || (existing && !seed.add_version) {
            return Err(SeedError::Exists(seed.name));
        }
        if seed.add_version && (!existing || seed.deleted_date.is_some()) {
            return Err(SeedError::NoLiveSecret(seed.name));
        }
        let created = seed.created.unwrap_or_else(now);
        let version = SecretVersion {
            id: id.clone(),
            value: seed.value,
            content_type: seed.content_type,
            tags: seed.tags,
            enabled: seed.enabled,
            not_before: seed.not_before,
            expires: seed.expires,
            created,
            updated: seed.updated.unwrap_or(created),
            managed: seed.managed,
        };
        if let Some(secret) = self.secrets.get_mut(&key) {
            if secret.versions.contains_key(&id) {
                return Err(SeedError::VersionExists { name: seed.name, version: id });
            }
            secret.versions.insert(id.clone(), version);
            secret.latest = id.clone();
            return Ok(id);
        }
        let secret = Secret { name: seed.name, versions: BTreeMap::from([(id.clone(), version)]), latest: id.clone() };
        match seed.deleted_date {
            Some(deleted_date) => self.deleted.insert(key, Deleted { secret, deleted_date }).map(|_| ()),
            None => self.secrets.insert(key, secret).map(|_| ()),
        };
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(vault: &mut Vault, name: &str, value: &str) -> Bundle {
        let params = SetParams { value: Some(value.into()), content_type: None, tags: None, attributes: None };
        vault.set(name, params).unwrap()
    }

    #[test]
    fn debug_output_of_what_the_vault_holds_never_shows_a_value() {
        let mut vault = Vault::new("v.vault.azure.net".into());
        let bundle = set(&mut vault, "s", "hunter2-value-that-must-not-print");
        let version = vault.get("s", None).unwrap();
        for text in [format!("{bundle:?}"), format!("{version:?}"), format!("{:?}", vault.secrets)] {
            assert!(!text.contains("hunter2"), "{text}");
        }
        assert!(format!("{bundle:?}").contains("[REDACTED]"));
    }

    #[test]
    fn names_are_case_insensitive_and_keep_their_first_casing() {
        let mut vault = Vault::new("v.vault.azure.net".into());
        set(&mut vault, "MyName", "a");
        let b = set(&mut vault, "myname", "b");
        assert!(b.id.starts_with("https://v.vault.azure.net/secrets/MyName/"), "{}", b.id);
        assert_eq!(vault.get("MYNAME", None).unwrap().value.as_deref(), Some("b"));
    }

    #[test]
    fn pages_resume_after_the_last_key() {
        let mut vault = Vault::new("v.vault.azure.net".into());
        for name in ["c", "a", "b"] {
            set(&mut vault, name, "x");
        }
        let first = vault.list(None, 2);
        assert_eq!(first.items.len(), 2);
        assert_eq!(first.next_after.as_deref(), Some("b"));
        let second = vault.list(first.next_after.as_deref(), 2);
        assert_eq!(second.items.len(), 1);
        assert!(second.next_after.is_none());
    }

    #[test]
    fn backup_round_trips_and_rejects_foreign_blobs() {
        let mut vault = Vault::new("v.vault.azure.net".into());
        let original = set(&mut vault, "s", "x");
        let blob = vault.backup("s").unwrap();
        vault.delete("s").unwrap();
        vault.purge("s").unwrap();
        let restored = vault.restore(&blob).unwrap();
        assert_eq!(restored.id, original.id);
        assert_eq!(vault.restore(&blob).unwrap_err().status, 409);
        assert_eq!(vault.restore(b"not ours").unwrap_err().status, 400);
    }
}
