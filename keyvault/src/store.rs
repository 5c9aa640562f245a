//! The [`SecretStore`] trait: the engine's whole view of Key Vault.
//!
//! Values are carried as [`SecretString`] so they never print; tags are a sorted map so
//! that what is written is deterministic. Errors say whether a retry can help.

use std::collections::BTreeMap;

use async_trait::async_trait;
use secrecy::SecretString;
use time::OffsetDateTime;

/// Key Vault's limits, which [`check_limits`] enforces before a write is sent.
pub use kv_rotator_core::limits::{MAX_CONTENT_TYPE_CHARS, MAX_TAGS, MAX_TAG_CHARS, MAX_VALUE_BYTES};

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// One version of a secret, with its value.
#[derive(Debug, Clone)]
pub struct SecretRecord {
    /// Secret name (the path segment after `/secrets/`).
    pub name: String,
    /// Version id (32 hex characters on the real service).
    pub version: String,
    /// The value; never printed.
    pub value: SecretString,
    /// Properties of this version.
    pub properties: SecretProperties,
}

/// Properties of one secret version, as the list operations return them (no value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretProperties {
    /// Secret name.
    pub name: String,
    /// Version id; `None` in the list-secrets operation, which names no version.
    pub version: Option<String>,
    /// Tags (at most 15 on the service).
    pub tags: BTreeMap<String, String>,
    /// `contentType`.
    pub content_type: Option<String>,
    /// `attributes.enabled`.
    pub enabled: bool,
    /// `attributes.exp`.
    pub expires: Option<OffsetDateTime>,
    /// `attributes.nbf`.
    pub not_before: Option<OffsetDateTime>,
    /// `attributes.created`.
    pub created: Option<OffsetDateTime>,
    /// `attributes.updated`.
    pub updated: Option<OffsetDateTime>,
}

/// What to write as a new version.
#[derive(Debug, Clone)]
pub struct NewSecretVersion {
    /// The value.
    pub value: SecretString,
    /// Tags of the new version (the service does not carry tags over by itself).
    pub tags: BTreeMap<String, String>,
    /// `contentType`.
    pub content_type: Option<String>,
    /// `attributes.exp`.
    pub expires: Option<OffsetDateTime>,
    /// `attributes.nbf`.
    pub not_before: Option<OffsetDateTime>,
}

/// A change to one version's properties; `None` fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertiesUpdate {
    /// Replaces the whole tag set when `Some` (the service has no per-tag patch).
    pub tags: Option<BTreeMap<String, String>>,
    /// `attributes.enabled`.
    pub enabled: Option<bool>,
    /// `attributes.exp`.
    pub expires: Option<OffsetDateTime>,
    /// `contentType`.
    pub content_type: Option<String>,
}

/// Errors of the store, classified for the engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// 404 `SecretNotFound`: no such secret (or version).
    #[error("secret {name:?} not found in {vault}")]
    NotFound { vault: String, name: String },
    /// 403 with inner code `SecretDisabled`: the latest version is disabled.
    #[error("the latest version of secret {name:?} in {vault} is disabled; enable it or write a new version")]
    Disabled { vault: String, name: String },
    /// 409 `Conflict`: the name is soft-deleted and must be recovered or purged first.
    #[error("secret {name:?} in {vault} is soft-deleted (409 Conflict); recover or purge it first")]
    SoftDeleted { vault: String, name: String },
    /// 401/403 other than a disabled secret: the identity lacks a permission.
    #[error("access denied by {vault} for {operation} on {name:?}: {code}; grant the worker's identity the needed secrets permission")]
    AccessDenied { vault: String, name: String, operation: &'static str, code: String },
    /// 400 and other 4xx the service will keep refusing (bad name, too many tags, value too large…).
    #[error("{vault} refused {operation} on {name:?}: {status} {code}: {message}")]
    Rejected { vault: String, name: String, operation: &'static str, status: u16, code: String, message: String },
    /// 429, 5xx, timeouts and connection errors that outlasted the client's own retries.
    #[error("{vault} unavailable for {operation} on {name:?}: {detail}")]
    Unavailable { vault: String, name: String, operation: &'static str, detail: String },
    /// The request was not sent: invalid input caught locally, or a malformed response.
    #[error("{operation} on {name:?}: {detail}")]
    Invalid { name: String, operation: &'static str, detail: String },
}

impl StoreError {
    /// Whether retrying the same operation later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// Checks the limits a write most plausibly breaks (value size, tag count) before it is
/// sent, so the error names the limit instead of the service's vague "Property has
/// invalid value". The rarer length limits are left to the service (see
/// [`StoreError::Rejected`]).
pub fn check_limits(
    name: &str,
    operation: &'static str,
    value: Option<&SecretString>,
    tags: Option<&BTreeMap<String, String>>,
) -> StoreResult<()> {
    use secrecy::ExposeSecret;
    let invalid = |detail: String| StoreError::Invalid { name: name.to_owned(), operation, detail };
    if let Some(len) = value.map(|v| v.expose_secret().len()).filter(|len| *len > MAX_VALUE_BYTES) {
        return Err(invalid(format!(
            "the value is {len} bytes, over Key Vault's limit of 25 KiB ({MAX_VALUE_BYTES} bytes) per secret value; not sent"
        )));
    }
    if let Some(count) = tags.map(BTreeMap::len).filter(|count| *count > MAX_TAGS) {
        return Err(invalid(format!(
            "{count} tags, over Key Vault's limit of {MAX_TAGS} tags per secret version; not sent"
        )));
    }
    Ok(())
}

/// Everything the rotation engine needs from Key Vault.
///
/// Implementations must be safe to share between concurrent rotations.
#[async_trait]
pub trait SecretStore: Send + Sync + std::fmt::Debug {
    /// The vault's URL, e.g. `https://myvault.vault.azure.net/`.
    fn vault_url(&self) -> &url::Url;

    /// The vault's name: the first label of its host.
    fn vault_name(&self) -> &str;

    /// Reads the latest version. A disabled latest version is [`StoreError::Disabled`].
    async fn get_latest(&self, name: &str) -> StoreResult<SecretRecord>;

    /// Reads one version.
    async fn get_version(&self, name: &str, version: &str) -> StoreResult<SecretRecord>;

    /// Writes a new version and returns it as stored.
    async fn set_secret(&self, name: &str, new: NewSecretVersion) -> StoreResult<SecretRecord>;

    /// Updates the properties of one version (`None`: the latest) and returns them.
    async fn update_properties(
        &self,
        name: &str,
        version: Option<&str>,
        update: PropertiesUpdate,
    ) -> StoreResult<SecretProperties>;

    /// Soft-deletes a secret (all versions). Deleting a missing secret is not an error.
    async fn delete_secret(&self, name: &str) -> StoreResult<()>;

    /// Purges a soft-deleted secret. Purging one that is not deleted is not an error.
    async fn purge_deleted_secret(&self, name: &str) -> StoreResult<()>;

    /// Lists the versions of a secret, oldest `created` first (the service returns id order).
    async fn list_versions(&self, name: &str) -> StoreResult<Vec<SecretProperties>>;

    /// Lists every secret's latest properties (no values).
    async fn list_secrets(&self) -> StoreResult<Vec<SecretProperties>>;

    /// From now on, tells `observer` of every HTTP try and retry this store (and every
    /// clone of it) makes: the worker's metrics and readiness. A store that makes no HTTP
    /// calls of its own ignores it.
    fn set_client_observer(&self, observer: std::sync::Arc<dyn crate::pipeline::ClientObserver>) {
        let _ = observer;
    }
}
