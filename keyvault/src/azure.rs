//! The production [`SecretStore`]: the official `SecretClient` of
//! `azure_security_keyvault_secrets` 1.x, with error classification.
//!
//! - [`AzureSecretStore::connect`] builds the client. [`TransportOverrides`] lets it
//!   reach the dev vault over real TLS: an extra trusted root and a fixed address for
//!   the vault host, so the SDK's whole path (challenge, bearer policy, retries) runs.
//! - [`DevVaultCredential`]: a fixed-token credential the dev vault accepts.
//! - Errors from the SDK become [`StoreError`]s that say whether a retry can help.
//!
//! Retries of 408/429/5xx (honouring `Retry-After`, capped), timeouts and connection
//! errors run in the SDK's retry loop with our bounded policy, and every try waits for
//! the store's rate limiter ([`crate::pipeline`], configured by [`ClientSettings`]);
//! what outlasts the retries surfaces as [`StoreError::Unavailable`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, Secret as AzSecret, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_security_keyvault_secrets::models::{
    Secret, SecretAttributes, SecretClientGetSecretOptions, SecretClientUpdateSecretPropertiesOptions,
    SecretProperties as AzSecretProperties, SetSecretParameters, UpdateSecretPropertiesParameters,
};
use azure_security_keyvault_secrets::{ResourceExt, SecretClient, SecretClientOptions};
use futures::TryStreamExt;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use url::Url;

use crate::pipeline::{
    BoundedRetry, ChallengeGate, ClientSettings, ClientStats, Counters, NoBlindWriteRetry, ObservedCredential,
    RateLimitPolicy, UnknownWriteOutcome,
};
use crate::store::{
    check_limits, NewSecretVersion, PropertiesUpdate, SecretProperties, SecretRecord, SecretStore, StoreError,
    StoreResult, MAX_CONTENT_TYPE_CHARS, MAX_TAG_CHARS,
};

/// How to reach a vault other than through public DNS and the system roots.
#[derive(Debug, Clone, Default)]
pub struct TransportOverrides {
    /// Extra root certificate (PEM) to trust, e.g. the dev vault's generated CA.
    pub extra_root_pem: Option<String>,
    /// Connect to this address for the vault host (like curl's `--connect-to`).
    pub connect_to: Option<SocketAddr>,
}

/// [`SecretStore`] over the official Azure SDK.
#[derive(Clone)]
pub struct AzureSecretStore {
    client: Arc<SecretClient>,
    url: Url,
    vault_name: String,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for AzureSecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSecretStore").field("url", &self.url.as_str()).finish_non_exhaustive()
    }
}

impl AzureSecretStore {
    /// Builds a client for `vault_url` with `credential` and default [`ClientSettings`].
    pub fn connect(
        vault_url: &str,
        credential: Arc<dyn TokenCredential>,
        overrides: TransportOverrides,
    ) -> StoreResult<Self> {
        Self::connect_with(vault_url, credential, overrides, ClientSettings::default())
    }

    /// Builds a client with explicit retry, rate-limit and timeout settings. Clones of
    /// the store share its rate limiter and counters; build one store per vault.
    pub fn connect_with(
        vault_url: &str,
        credential: Arc<dyn TokenCredential>,
        overrides: TransportOverrides,
        settings: ClientSettings,
    ) -> StoreResult<Self> {
        let invalid = |detail: String| StoreError::Invalid { name: String::new(), operation: "connect", detail };
        settings.validate().map_err(|e| invalid(format!("client settings: {e}")))?;
        let url = Url::parse(vault_url).map_err(|e| invalid(format!("vault URL {vault_url:?}: {e}")))?;
        let host = url.host_str().ok_or_else(|| invalid(format!("vault URL {vault_url:?} has no host")))?.to_owned();
        let vault_name = host.split('.').next().unwrap_or_default().to_owned();

        // Our own transport, shaped like the SDK's default one, with our timeouts.
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            // Key Vault never redirects; following one would re-send the token elsewhere.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &overrides.extra_root_pem {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| invalid(format!("extra root certificate: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        if let Some(addr) = overrides.connect_to {
            builder = builder.resolve(&host, addr);
        }
        let http = builder.build().map_err(|e| invalid(format!("HTTP client: {e}")))?;
        let counters = Arc::new(Counters::default());
        let client_options = ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            retry: RetryOptions::custom(Arc::new(BoundedRetry::new(settings.retry.clone(), counters.clone()))),
            per_try_policies: vec![
                Arc::new(RateLimitPolicy::new(settings.rate_limit, counters.clone())),
                Arc::new(NoBlindWriteRetry),
            ],
            per_call_policies: vec![Arc::new(ChallengeGate::default())],
            ..Default::default()
        };
        let options = SecretClientOptions { client_options, ..Default::default() };
        let credential = Arc::new(ObservedCredential::new(credential, counters.clone()));
        let client = SecretClient::new(url.as_str(), credential, Some(options))
            .map_err(|e| invalid(format!("secret client: {e}")))?;
        Ok(Self { client: Arc::new(client), url, vault_name, counters })
    }

    /// A store for the dev vault: its CA trusted, its host resolved to its address, and
    /// the fixed-token [`DevVaultCredential`].
    pub fn for_dev_vault(vault: &crate::devvault::DevVault) -> StoreResult<Self> {
        Self::for_dev_vault_with(vault, ClientSettings::default())
    }

    /// [`for_dev_vault`](Self::for_dev_vault) with explicit settings.
    pub fn for_dev_vault_with(vault: &crate::devvault::DevVault, settings: ClientSettings) -> StoreResult<Self> {
        let overrides = TransportOverrides {
            extra_root_pem: Some(vault.ca_certificate_pem().to_owned()),
            connect_to: Some(vault.local_addr()),
        };
        Self::connect_with(vault.endpoint().as_str(), DevVaultCredential::new(), overrides, settings)
    }

    /// Tries, retries and rate-limiter waits so far, over all clones of this store.
    pub fn stats(&self) -> ClientStats {
        self.counters.snapshot()
    }

    fn error(&self, name: &str, operation: &'static str, err: azure_core::Error) -> StoreError {
        classify(&self.vault_name, name, operation, err)
    }

    fn record(&self, name: &str, operation: &'static str, secret: Secret) -> StoreResult<SecretRecord> {
        let version = secret.resource_id().ok().and_then(|id| id.version).ok_or_else(|| StoreError::Invalid {
            name: name.to_owned(),
            operation,
            detail: "response has no version id".into(),
        })?;
        let value = SecretString::from(secret.value.unwrap_or_default());
        let properties =
            properties_from(name, Some(version.clone()), secret.tags, secret.content_type, secret.attributes);
        Ok(SecretRecord { name: name.to_owned(), version, value, properties })
    }
}

fn properties_from(
    name: &str,
    version: Option<String>,
    tags: Option<HashMap<String, String>>,
    content_type: Option<String>,
    attributes: Option<SecretAttributes>,
) -> SecretProperties {
    let attributes = attributes.unwrap_or_default();
    SecretProperties {
        name: name.to_owned(),
        version,
        tags: tags.unwrap_or_default().into_iter().collect(),
        content_type,
        enabled: attributes.enabled.unwrap_or(true),
        expires: attributes.expires,
        not_before: attributes.not_before,
        created: attributes.created,
        updated: attributes.updated,
    }
}

fn list_item(item: AzSecretProperties) -> Option<SecretProperties> {
    let id = item.resource_id().ok()?;
    Some(properties_from(&id.name, id.version, item.tags, item.content_type, item.attributes))
}

/// Maps an SDK error to a [`StoreError`], keeping the service's error code.
fn classify(vault: &str, name: &str, operation: &'static str, err: azure_core::Error) -> StoreError {
    let (vault, name) = (vault.to_owned(), name.to_owned());
    if let Some(unknown) = find_cause::<UnknownWriteOutcome>(&err) {
        // Transient: the engine re-reads the vault (fence) before writing again.
        return StoreError::Unavailable { vault, name, operation, detail: unknown.to_string() };
    }
    match err.kind() {
        ErrorKind::HttpResponse { status, error_code, raw_response } => {
            let status = u16::from(*status);
            let body: Option<serde_json::Value> = raw_response.as_ref().and_then(|r| r.body().json().ok());
            let inner_code = body
                .as_ref()
                .and_then(|b| b.pointer("/error/innererror/code"))
                .and_then(|c| c.as_str())
                .map(str::to_owned);
            let message = body
                .as_ref()
                .and_then(|b| b.pointer("/error/message"))
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .trim_end()
                .to_owned();
            let body_code = body.as_ref().and_then(|b| b.pointer("/error/code")).and_then(|c| c.as_str());
            // The SDK falls back to the bare status when it cannot parse the body (it reads
            // the message borrowed, so an escaped "\r\n", as in the service's 400s, fails).
            let code = error_code
                .clone()
                .filter(|c| *c != status.to_string())
                .or(body_code.map(str::to_owned))
                .unwrap_or_else(|| status.to_string());
            match status {
                404 => StoreError::NotFound { vault, name },
                403 if inner_code.as_deref() == Some("SecretDisabled") => StoreError::Disabled { vault, name },
                409 if inner_code.as_deref() == Some("ObjectIsDeletedButRecoverable")
                    || message.contains("deleted but recoverable") =>
                {
                    StoreError::SoftDeleted { vault, name }
                }
                401 | 403 => StoreError::AccessDenied { vault, name, operation, code },
                408 | 429 | 500..=599 => {
                    StoreError::Unavailable { vault, name, operation, detail: format!("{status} {code}") }
                }
                400 if message.starts_with("Property has invalid value") => {
                    // The service does not say which property; name the limits left to it.
                    let message = format!(
                        "{message} (tag names and values are limited to {MAX_TAG_CHARS} characters, contentType to {MAX_CONTENT_TYPE_CHARS})"
                    );
                    StoreError::Rejected { vault, name, operation, status, code, message }
                }
                _ => StoreError::Rejected { vault, name, operation, status, code, message },
            }
        }
        ErrorKind::Connection | ErrorKind::Io => {
            StoreError::Unavailable { vault, name, operation, detail: err.to_string() }
        }
        ErrorKind::Credential => {
            StoreError::AccessDenied { vault, name, operation, code: format!("credential: {err}") }
        }
        _ => StoreError::Invalid { name, operation, detail: err.to_string() },
    }
}

#[async_trait]
impl SecretStore for AzureSecretStore {
    fn vault_url(&self) -> &Url {
        &self.url
    }

    fn vault_name(&self) -> &str {
        &self.vault_name
    }

    fn set_client_observer(&self, observer: Arc<dyn crate::pipeline::ClientObserver>) {
        self.counters.set_observer(observer);
    }

    async fn get_latest(&self, name: &str) -> StoreResult<SecretRecord> {
        let secret = self
            .client
            .get_secret(name, None)
            .await
            .and_then(|r| r.into_model())
            .map_err(|e| self.error(name, "get", e))?;
        self.record(name, "get", secret)
    }

    async fn get_version(&self, name: &str, version: &str) -> StoreResult<SecretRecord> {
        let options = SecretClientGetSecretOptions { secret_version: Some(version.to_owned()), ..Default::default() };
        let secret = self
            .client
            .get_secret(name, Some(options))
            .await
            .and_then(|r| r.into_model())
            .map_err(|e| self.error(name, "get version", e))?;
        self.record(name, "get version", secret)
    }

    async fn set_secret(&self, name: &str, new: NewSecretVersion) -> StoreResult<SecretRecord> {
        check_limits(name, "set", Some(&new.value), Some(&new.tags))?;
        let parameters = SetSecretParameters {
            // The SDK model takes a plain String; it lives only for this request.
            value: Some(new.value.expose_secret().to_owned()),
            tags: Some(new.tags.into_iter().collect()),
            content_type: new.content_type,
            secret_attributes: Some(SecretAttributes {
                enabled: Some(true),
                expires: new.expires,
                not_before: new.not_before,
                ..Default::default()
            }),
        };
        let content = parameters.try_into().map_err(|e| self.error(name, "set", e))?;
        let secret = self
            .client
            .set_secret(name, content, None)
            .await
            .and_then(|r| r.into_model())
            .map_err(|e| self.error(name, "set", e))?;
        self.record(name, "set", secret)
    }

    async fn update_properties(
        &self,
        name: &str,
        version: Option<&str>,
        update: PropertiesUpdate,
    ) -> StoreResult<SecretProperties> {
        check_limits(name, "update", None, update.tags.as_ref())?;
        let parameters = UpdateSecretPropertiesParameters {
            content_type: update.content_type,
            tags: update.tags.map(|t| t.into_iter().collect()),
            secret_attributes: Some(SecretAttributes {
                enabled: update.enabled,
                expires: update.expires,
                ..Default::default()
            }),
        };
        let content = parameters.try_into().map_err(|e| self.error(name, "update", e))?;
        let options = SecretClientUpdateSecretPropertiesOptions {
            secret_version: version.map(str::to_owned),
            ..Default::default()
        };
        let secret = self
            .client
            .update_secret_properties(name, content, Some(options))
            .await
            .and_then(|r| r.into_model())
            .map_err(|e| self.error(name, "update", e))?;
        let version = secret.resource_id().ok().and_then(|id| id.version);
        Ok(properties_from(name, version, secret.tags, secret.content_type, secret.attributes))
    }

    async fn delete_secret(&self, name: &str) -> StoreResult<()> {
        match self.client.delete_secret(name, None).await {
            Ok(_) => Ok(()),
            Err(e) => match self.error(name, "delete", e) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn purge_deleted_secret(&self, name: &str) -> StoreResult<()> {
        match self.client.purge_deleted_secret(name, None).await {
            Ok(_) => Ok(()),
            Err(e) => match self.error(name, "purge", e) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list_versions(&self, name: &str) -> StoreResult<Vec<SecretProperties>> {
        let pager = self
            .client
            .list_secret_properties_versions(name, None)
            .map_err(|e| self.error(name, "list versions", e))?;
        let mut versions: Vec<SecretProperties> = pager
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| self.error(name, "list versions", e))?
            .into_iter()
            .filter_map(list_item)
            .collect();
        // The service lists versions in id order, which is not creation order.
        versions.sort_by_key(|v| v.created);
        Ok(versions)
    }

    async fn list_secrets(&self) -> StoreResult<Vec<SecretProperties>> {
        let pager = self.client.list_secret_properties(None).map_err(|e| self.error("", "list", e))?;
        let items = pager.try_collect::<Vec<_>>().await.map_err(|e| self.error("", "list", e))?;
        Ok(items.into_iter().filter_map(list_item).collect())
    }
}

/// The first error of type `T` in `err`'s chain of causes (the SDK wraps errors in context).
fn find_cause<T: std::error::Error + 'static>(err: &azure_core::Error) -> Option<&T> {
    std::iter::successors(Some(err as &(dyn std::error::Error + 'static)), |e| e.source())
        .find_map(|e| e.downcast_ref::<T>())
}

/// A credential returning one fixed token, accepted by the dev vault only.
#[derive(Debug, Clone)]
pub struct DevVaultCredential {
    token: String,
}

impl DevVaultCredential {
    /// A credential yielding [`crate::devvault::DEV_TOKEN`].
    pub fn new() -> Arc<Self> {
        Arc::new(Self { token: crate::devvault::DEV_TOKEN.to_owned() })
    }
}

#[async_trait]
impl TokenCredential for DevVaultCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(AzSecret::new(self.token.clone()), OffsetDateTime::now_utc() + time::Duration::hours(1)))
    }
}
