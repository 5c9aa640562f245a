//! The configuration model. Every struct denies unknown keys so a typo is an error that
//! names the key instead of a silently ignored setting.
//!
//! Size: ~560 lines of declarations (a struct per section of the file, ~170 lines of them
//! serde defaults) and ~225 of field docs; next to no logic, no unit tests (config/tests/
//! pins it). One schema of one file, read in one place.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::registry::{self, BuildError, KindSettings, ProfileContext};
use kv_rotator_rotators::{PasswordPolicy, Rotator};

use crate::window::RotationWindow;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Key Vault holding the managed secrets.
    pub vault: VaultConfig,
    /// The Event Grid webhook.
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// The rotation engine.
    #[serde(default)]
    pub engine: EngineConfig,
    /// The periodic scan: unfinished journals and secrets near expiry.
    #[serde(default)]
    pub sweeper: SweeperConfig,
    /// Where failures past the retry cap are sent.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Rotation outcomes and expiry warnings published as CloudEvents to consumers.
    #[serde(default)]
    pub notifications: NotificationsConfig,
    /// The engine lease: one engine per vault.
    #[serde(default)]
    pub lease: LeaseConfig,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`, loopback by default.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Target profiles by name; a secret's `rotator` tag names one.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetProfile>,
}

/// Where the vault is and how to authenticate to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// e.g. `https://myvault.vault.azure.net/`.
    pub url: String,
    /// How the worker gets Entra ID tokens.
    #[serde(default)]
    pub credential: CredentialConfig,
    /// Extra root certificate (PEM) to trust — for the dev vault's generated CA.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Connect to this address instead of resolving the vault host (dev vault).
    #[serde(default)]
    pub connect_to: Option<SocketAddr>,
    /// Client-side limit, in transactions per 10 seconds, shared by all work on the
    /// vault; default 2000 (the service's limit for secrets), 0 turns it off. With
    /// several replicas, give each its share.
    #[serde(default)]
    pub transactions_per_10s: Option<u32>,
    /// Retries per Key Vault call on 408/429/5xx, timeouts and connection errors
    /// (never on other 4xx); default 10.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// First retry delay in milliseconds, doubling and jittered; default 250.
    #[serde(default)]
    pub retry_initial_delay_ms: Option<u64>,
    /// Longest wait between tries in milliseconds, `Retry-After` included; default 10000.
    #[serde(default)]
    pub retry_max_delay_ms: Option<u64>,
    /// Longest silence while reading an answer before the try is retried; default 30.
    #[serde(default)]
    pub read_timeout_secs: Option<u64>,
}

/// The credential the worker authenticates to Key Vault with.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CredentialConfig {
    /// Managed identity: system-assigned, or user-assigned by one of the ids.
    ManagedIdentity {
        /// User-assigned identity's client id.
        #[serde(default)]
        client_id: Option<String>,
        /// User-assigned identity's object id.
        #[serde(default)]
        object_id: Option<String>,
        /// User-assigned identity's ARM resource id.
        #[serde(default)]
        resource_id: Option<String>,
    },
    /// AKS workload identity; unset fields come from `AZURE_CLIENT_ID`,
    /// `AZURE_TENANT_ID` and `AZURE_FEDERATED_TOKEN_FILE`.
    WorkloadIdentity {
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        tenant_id: Option<String>,
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
    /// Service principal with a client secret, read from an environment variable so
    /// the configuration file holds no secret.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        /// Name of the environment variable holding the secret.
        #[serde(default = "default_client_secret_env")]
        secret_env: String,
    },
    /// Service principal with a certificate: a PKCS#12 (`.pfx`) file holding the
    /// certificate and its RSA private key; its password, if any, from an environment
    /// variable so the configuration file holds no secret.
    ClientCertificate {
        tenant_id: String,
        client_id: String,
        /// Path of the PKCS#12 file.
        certificate_file: PathBuf,
        /// Name of the environment variable holding the file's password; none if unset.
        #[serde(default)]
        password_env: Option<String>,
    },
    /// The Azure CLI's login (`az login`), for local use.
    AzureCli {
        #[serde(default)]
        tenant_id: Option<String>,
    },
    /// Azure CLI, then Azure Developer CLI, for local use. (Struct variants with no
    /// field, not unit variants: serde lets a unit variant of a tagged enum ignore every
    /// other key, so a stray `tenant_id` would be dropped silently.)
    DeveloperTools {},
    /// A fixed token accepted by the dev vault only; requires `connect_to`.
    DevVault {},
}

impl Default for CredentialConfig {
    /// System-assigned managed identity: what a container on Azure normally has.
    fn default() -> Self {
        CredentialConfig::ManagedIdentity { client_id: None, object_id: None, resource_id: None }
    }
}

fn default_client_secret_env() -> String {
    "AZURE_CLIENT_SECRET".to_owned()
}

/// The Event Grid webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest accepted body; Event Grid batches are at most 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How deliveries are authenticated (`[webhook.auth]`); `serve` refuses to start
    /// without it, `mode = "none"` must be said explicitly.
    #[serde(default)]
    pub auth: Option<WebhookAuthConfig>,
    /// Vault names whose events are accepted; empty means the vault of `vault.url`.
    #[serde(default)]
    pub allowed_vaults: Vec<String>,
    /// Seconds a connection may take to send a request's headers (also how long an
    /// idle keep-alive connection is kept); then it is closed.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// Seconds a whole request may take, body and handling included; then 408.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Accepted connections served at once; further ones wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds shutdown waits for open connections before closing them.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
}

/// `[webhook.auth]`: how Event Grid proves who it is. Unset optional fields take the
/// webhook crate's defaults (Event Grid's application id, its role, the key's header).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum WebhookAuthConfig {
    /// No authentication: only behind an ingress that authenticates Event Grid. (A
    /// struct variant so that stray keys such as `key` are refused, not ignored.)
    None {},
    /// A shared key in a query parameter or header; `previous_key` is also accepted
    /// while the key is being rotated.
    SharedKey {
        /// Where the key is read from.
        key: SecretSource,
        #[serde(default)]
        previous_key: Option<SecretSource>,
        #[serde(default)]
        query_parameter: Option<String>,
        #[serde(default)]
        header: Option<String>,
    },
    /// Microsoft Entra ID bearer tokens.
    EntraId {
        /// Directory (tenant) id.
        tenant_id: String,
        /// Accepted audiences: the webhook application's id and/or App ID URI.
        audience: Vec<String>,
        #[serde(default)]
        app_id: Option<String>,
        #[serde(default)]
        role: Option<String>,
        /// OpenID discovery document (default: the tenant's on login.microsoftonline.com).
        #[serde(default)]
        openid_configuration_url: Option<String>,
        /// The key set itself, instead of discovery.
        #[serde(default)]
        jwks_url: Option<String>,
        #[serde(default)]
        clock_skew_secs: Option<u64>,
    },
}

/// Where a secret is read from at startup: an environment variable or a file (never
/// the configuration file or the command line). Exactly one must be set.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Name of an environment variable.
    #[serde(default)]
    pub env: Option<String>,
    /// Path of a file (trailing newline ignored), e.g. a mounted Kubernetes secret.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl SecretSource {
    /// What is wrong with this source at key path `path`, if anything: not exactly one of
    /// `env` and `file`, or a variable name figment would read as a configuration key.
    pub fn problem(&self, path: &str) -> Option<String> {
        match (&self.env, &self.file) {
            (Some(_), Some(_)) | (None, None) => Some(format!("{path}: set exactly one of env or file")),
            (Some(env), None) if env.is_empty() || env.starts_with("KV_ROTATOR_") => {
                Some(format!("{path}.env {env:?}: must be non-empty and not start with KV_ROTATOR_"))
            }
            _ => None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_header_read_timeout() -> u64 {
    10
}
fn default_request_timeout() -> u64 {
    30
}
fn default_max_connections() -> usize {
    1024
}
fn default_shutdown_grace() -> u64 {
    10
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            auth: None,
            allowed_vaults: Vec::new(),
            header_read_timeout_secs: default_header_read_timeout(),
            request_timeout_secs: default_request_timeout(),
            max_connections: default_max_connections(),
            shutdown_grace_secs: default_shutdown_grace(),
        }
    }
}

/// The rotation engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Capacity of the in-memory rotation queue; the webhook answers 503 when full.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Rotations running at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Attempts per rotation before it is marked failed.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay in milliseconds (doubles, with jitter).
    #[serde(default = "default_backoff")]
    pub initial_backoff_ms: u64,
    /// Retry delay cap in milliseconds.
    #[serde(default = "default_backoff_cap")]
    pub max_backoff_ms: u64,
    /// `ValidityPeriodDays` when a secret has no such tag.
    #[serde(default = "default_validity")]
    pub default_validity_days: u32,
    /// Rotations running at once against one target profile, by profile name
    /// (e.g. `{ orders-db = 2 }`); profiles not named are bounded by `concurrency` only.
    #[serde(default)]
    pub target_concurrency: BTreeMap<String, usize>,
    /// Least time, in seconds, between the latest version's creation and a new rotation
    /// of the same secret: caps any storm of triggers. Only `rotate --force` bypasses it;
    /// 0 turns it off. Default 3600.
    #[serde(default = "default_min_interval")]
    pub min_rotation_interval_secs: u64,
    /// Once the target may hold the pending password, a rotation that failed
    /// `max_attempts` times keeps finishing: one attempt every this many seconds
    /// (default 30) ...
    #[serde(default = "default_finish_retry_interval")]
    pub finish_retry_interval_secs: u64,
    /// ... for at most this many seconds (default 3600); then it is reported, and the
    /// sweeper resumes its journal at every interval.
    #[serde(default = "default_finish_retry_for")]
    pub finish_retry_for_secs: u64,
    /// A scheduled rotation waits for its rotation window only if the window opens at
    /// least this many hours (and at least two sweeps) before the version's `exp`;
    /// otherwise it runs at once, outside the window, so that no window lets a secret
    /// expire. Default 24.
    #[serde(default = "default_window_expiry_margin")]
    pub window_expiry_margin_hours: u32,
    /// How long a password change may take to show on every login path of a target
    /// (replicas, poolers, directory replication), in seconds, with any skew between this
    /// host's clock and Key Vault's (default 600, at most a day). A leftover journal
    /// record younger than this is not deleted because the latest version logs in: a
    /// lagging replica still takes the old password.
    #[serde(default = "default_target_lag")]
    pub target_lag_secs: u64,
}

fn default_queue() -> usize {
    1024
}
fn default_concurrency() -> usize {
    8
}
fn default_attempts() -> u32 {
    5
}
fn default_backoff() -> u64 {
    500
}
fn default_backoff_cap() -> u64 {
    60_000
}
fn default_validity() -> u32 {
    60
}
fn default_min_interval() -> u64 {
    3600
}
fn default_finish_retry_interval() -> u64 {
    30
}
fn default_target_lag() -> u64 {
    600
}
fn default_window_expiry_margin() -> u32 {
    24
}
fn default_finish_retry_for() -> u64 {
    3600
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: default_queue(),
            concurrency: default_concurrency(),
            max_attempts: default_attempts(),
            initial_backoff_ms: default_backoff(),
            max_backoff_ms: default_backoff_cap(),
            default_validity_days: default_validity(),
            target_concurrency: BTreeMap::new(),
            min_rotation_interval_secs: default_min_interval(),
            finish_retry_interval_secs: default_finish_retry_interval(),
            finish_retry_for_secs: default_finish_retry_for(),
            window_expiry_margin_hours: default_window_expiry_margin(),
            target_lag_secs: default_target_lag(),
        }
    }
}

/// The periodic scan of the vault, at startup and every `interval_secs`. Each run lists
/// the secrets once and enqueues (1) every unfinished journal record's rotation — always,
/// so a replacement process finishes what a dead one started — and (2) when `enabled`,
/// every managed secret whose latest version expires within `window_days`, has expired,
/// or has no expiry.
///
/// When a version is due — for the sweeper and for Event Grid's events alike — is one
/// rule: at its `exp` minus a lead of `min(window_days, ValidityPeriodDays × lead_percent
/// / 100)`, so a version is never due again before its own policy says so.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweeperConfig {
    /// Whether the scan enqueues secrets near expiry (journals are resumed regardless).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds between scans.
    #[serde(default = "default_sweep_interval")]
    pub interval_secs: u64,
    /// Longest lead, in days, before `exp` at which a version is due (Event Grid's
    /// SecretNearExpiry fires 30 days before `exp`). Default 30.
    #[serde(default = "default_window")]
    pub window_days: u32,
    /// The lead is also at most this share of the version's validity, in percent
    /// (1-90, default 50), so short validities rotate once per period, not at every sweep.
    #[serde(default = "default_lead_percent")]
    pub lead_percent: u32,
}

fn default_true() -> bool {
    true
}
fn default_sweep_interval() -> u64 {
    3600
}
fn default_window() -> u32 {
    30
}
fn default_lead_percent() -> u32 {
    50
}

impl Default for SweeperConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: default_sweep_interval(),
            window_days: default_window(),
            lead_percent: default_lead_percent(),
        }
    }
}

/// `[lease]`: the engine lease every engine (`serve`, `dev`, `rotate`) claims in the vault
/// before it rotates anything (one engine per vault).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// A holder whose last heartbeat is older than this (plus 2 s) has lost the lease; it
    /// renews every quarter of it. Also how long a killed holder blocks its successor.
    /// Default 60; at least 4.
    #[serde(default = "default_lease_ttl")]
    pub ttl_secs: u64,
    /// How long a claimer waits between writing its claim and reading the verdict; under
    /// 1500 two simultaneous claims are not told apart. Default 3000.
    #[serde(default = "default_lease_settle")]
    pub settle_ms: u64,
    /// `serve` only: when another live engine holds the lease at startup, wait for it in
    /// standby (listeners up, `/readyz` 503, deliveries 503 with `Retry-After`, the claim
    /// retried every quarter TTL) and take over when it is free. Default true; false
    /// exits at once, naming the holder. `rotate` and `dev` always refuse at once.
    #[serde(default = "default_true")]
    pub standby: bool,
}

fn default_lease_ttl() -> u64 {
    60
}
fn default_lease_settle() -> u64 {
    3000
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self { ttl_secs: default_lease_ttl(), settle_ms: default_lease_settle(), standby: true }
    }
}

/// `[admin]`: the admin listener, apart from the internet-facing webhook. It serves
/// `GET /metrics` (rotation outcomes, failures, timings), `GET /healthz` and `GET /readyz`,
/// and, with `[admin.auth]`, the authenticated admin API (`/api/...`). Loopback by default: what it tells
/// is for the host's scraper and probes, not for whoever can reach the webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether `serve` and `dev` open the admin listener at all (default true). Off: no
    /// metrics and no readiness endpoint; the webhook's `/healthz` stays.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Listen address; default `127.0.0.1:9464`. Another address (a pod's, for the
    /// kubelet's probes and an in-cluster scraper) must still be kept off the ingress.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// How callers of the admin API (`/api/...`) authenticate (`[admin.auth]`). Unset: the
    /// API is not served (404); `/metrics`, `/healthz` and `/readyz` never need it.
    #[serde(default)]
    pub auth: Option<AdminAuthConfig>,
    /// `/readyz` answers 503 once every Key Vault call for this many seconds has failed
    /// (429, 5xx, no answer) with no success since (default 120). Judged from the
    /// service's own calls (rotations, sweeps, lease renewals): no probe is sent.
    #[serde(default = "default_vault_failing_secs")]
    pub vault_failing_secs: u64,
}

fn default_vault_failing_secs() -> u64 {
    120
}

/// `[admin.auth]`: who may call the admin API (trigger rotations, read their results and
/// the managed secrets).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AdminAuthConfig {
    /// No authentication: allowed only when `admin.listen` is a loopback address (anyone
    /// on the host may then rotate). A struct variant so stray keys are refused.
    None {},
    /// `Authorization: Bearer <token>`, the token read from an environment variable or a
    /// file (at least [`MIN_ADMIN_TOKEN_LEN`] characters), compared in constant time.
    StaticToken {
        /// Where the token is read from.
        token: SecretSource,
    },
    /// A Microsoft Entra ID bearer token for the admin API's application, carrying `role`.
    EntraId {
        /// Directory (tenant) id.
        tenant_id: String,
        /// Accepted audiences: the admin API application's id and/or App ID URI.
        audience: Vec<String>,
        /// The app role the caller must hold, e.g. `KvRotator.Rotate`.
        role: String,
        /// OpenID discovery document (default: the tenant's on login.microsoftonline.com).
        #[serde(default)]
        openid_configuration_url: Option<String>,
        /// The key set itself, instead of discovery.
        #[serde(default)]
        jwks_url: Option<String>,
        #[serde(default)]
        clock_skew_secs: Option<u64>,
        /// Where the service (`serve`, `dev`) writes a fresh random proof key at each start
        /// (mode 0600, in a directory that must exist). The service proves it knows the key
        /// (`GET /api/service-proof/{nonce}`) and `kv-rotator rotate`, running as the
        /// service's user or root, reads it to check that proof before it asks for or sends
        /// a token. Unset: `rotate` cannot go through the admin API.
        #[serde(default)]
        proof_file: Option<PathBuf>,
        /// The credential `kv-rotator rotate` gets its token for the admin API with (scope
        /// `{first audience}/.default`); default `{ kind = "developer-tools" }`: the
        /// operator's `az login` or `azd auth login`.
        #[serde(default)]
        client_credential: Option<Box<CredentialConfig>>,
    },
}

/// The keys of `[admin.auth]` that only `mode = "entra-id"` takes.
pub const ENTRA_ID_ONLY_ADMIN_KEYS: &[&str] = &["proof_file", "client_credential"];

/// Shortest static admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// The admin listener's default address: loopback, Prometheus exporters' customary port range.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

fn default_admin_listen() -> SocketAddr {
    DEFAULT_ADMIN_LISTEN
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_admin_listen(),
            auth: None,
            vault_failing_secs: default_vault_failing_secs(),
        }
    }
}

/// Alert sinks for rotations that failed past the retry cap (or could not start).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Generic HTTP webhook: a JSON document (no secret values) is POSTed here per failure.
    #[serde(default)]
    pub webhook_url: Option<SinkUrl>,
    /// Timeout of one alert POST, milliseconds.
    #[serde(default = "default_alert_timeout")]
    pub timeout_ms: u64,
    /// The same secret's alert of the same kind is sent at most once per this many
    /// seconds (default 3600); repeats are logged and counted, not POSTed.
    #[serde(default = "default_alert_repeat")]
    pub repeat_after_secs: u64,
}

fn default_alert_timeout() -> u64 {
    5000
}
fn default_alert_repeat() -> u64 {
    3600
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self { webhook_url: None, timeout_ms: default_alert_timeout(), repeat_after_secs: default_alert_repeat() }
    }
}

/// `[notifications]`: rotation outcomes (succeeded, failed, deferred) and multi-stage
/// expiry warnings, published as CloudEvents 1.0 to one sink so consumers can refresh.
/// Events name secrets and versions, never a value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Where events go (`[notifications.sink]`); unset: no notifications.
    #[serde(default)]
    pub sink: Option<NotificationSink>,
    /// Timeout of one delivery try, milliseconds (default 5000).
    #[serde(default = "default_notify_timeout")]
    pub timeout_ms: u64,
    /// Tries per event on a connection error, a timeout, 429 or 5xx (default 5), with
    /// jittered exponential backoff; then the event is dropped and counted.
    #[serde(default = "default_notify_attempts")]
    pub max_attempts: u32,
    /// Events waiting for delivery (default 1024); past it new events are dropped and
    /// counted, so a slow sink never holds a rotation.
    #[serde(default = "default_notify_queue")]
    pub queue_capacity: usize,
    /// Days before a latest version's `exp` at which the sweeper warns, once per stage
    /// (default `[30, 7, 1]`); `[]` turns warnings off.
    #[serde(default = "default_expiry_warning_days")]
    pub expiry_warning_days: Vec<u32>,
}

fn default_notify_timeout() -> u64 {
    5000
}
fn default_notify_attempts() -> u32 {
    5
}
fn default_notify_queue() -> usize {
    1024
}
fn default_expiry_warning_days() -> Vec<u32> {
    vec![30, 7, 1]
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            sink: None,
            timeout_ms: default_notify_timeout(),
            max_attempts: default_notify_attempts(),
            queue_capacity: default_notify_queue(),
            expiry_warning_days: default_expiry_warning_days(),
        }
    }
}

/// `[notifications.sink]`: where CloudEvents are POSTed.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum NotificationSink {
    /// Any HTTPS endpoint (plain http only to a loopback host): one structured-mode
    /// CloudEvent (`application/cloudevents+json`) per POST.
    Webhook {
        /// The endpoint.
        url: SinkUrl,
    },
    /// An Event Grid custom topic whose input schema is CloudEvents 1.0.
    EventGrid {
        /// The topic endpoint, e.g. `https://<topic>.<region>-1.eventgrid.azure.net/api/events`.
        topic_endpoint: String,
        /// How the worker authenticates to the topic.
        auth: EventGridAuth,
    },
}

/// `[notifications.sink.auth]`: how the worker authenticates to an Event Grid topic.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum EventGridAuth {
    /// An access key of the topic, sent as `aeg-sas-key`; read from an environment
    /// variable or a file, never written in the configuration.
    Key {
        /// Where the key is read from.
        #[serde(deserialize_with = "event_grid_key")]
        key: SecretSource,
    },
    /// A Microsoft Entra ID token of the worker's own credential (`vault.credential`),
    /// which needs the `EventGrid Data Sender` role on the topic.
    EntraId {},
}

/// `notifications.sink.auth.key`: a [`SecretSource`] table; a plain value (a key written
/// inline) is refused without repeating it: figment's own type error would quote it, and
/// inside a tagged enum it names only `notifications.sink`, so the message names the key.
/// The URL of an HTTP sink (alerts, notifications): inline when it carries no credential,
/// or read at startup from an environment variable or a file when it does — a Power
/// Automate or Logic Apps trigger's `sig=`, an Azure Functions `code=`, a Slack hook's
/// path. An inline URL with a credential in its query or user part is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkUrl {
    /// Written in the configuration.
    Inline(String),
    /// `{ env = "NAME" }` or `{ file = "/path" }`.
    Secret(SecretSource),
}

impl From<&str> for SinkUrl {
    fn from(url: &str) -> Self {
        SinkUrl::Inline(url.to_owned())
    }
}

impl<'de> Deserialize<'de> for SinkUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SinkUrl;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a URL, { env = \"NAME\" } or { file = \"/path\" }")
            }
            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<SinkUrl, E> {
                Ok(SinkUrl::Inline(url.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<SinkUrl, A::Error> {
                SecretSource::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(SinkUrl::Secret)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn event_grid_key<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SecretSource, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = SecretSource;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("{ env = \"NAME\" } or { file = \"/path\" }")
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretSource, E> {
            Err(E::custom(
                "notifications.sink.auth.key: a secret written inline is refused: the configuration \
                 holds no secret; use key = { env = \"NAME\" } or key = { file = \"/path\" }",
            ))
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretSource, E> {
            self.visit_str("")
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretSource, E> {
            self.visit_str("")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<SecretSource, A::Error> {
            SecretSource::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_any(Visitor)
}

/// A target profile: what kind of system, how to reach it, its admin login and the
/// policy for new passwords.
// No `deny_unknown_fields` here: serde does not support it next to `flatten`. Unknown
// keys are still refused, by the kind's own config struct, which sees every key this
// struct does not consume.
#[derive(Debug, Clone, Deserialize)]
pub struct TargetProfile {
    /// The kind-specific settings (`kind = "postgres"` and its keys).
    #[serde(flatten)]
    pub target: TargetKind,
    /// The accounts (a secret's `CredentialId`) this profile may rotate: exact names or
    /// glob patterns (`app_*`, `svc-?`; `*` allows any). Required, so that a tag
    /// cannot point the profile's admin login at an account no one meant to rotate.
    pub accounts: Vec<String>,
    /// Whether the admin login's own account may be rotated through this profile
    /// (it also has to match `accounts`). Default false.
    #[serde(default)]
    pub allow_admin_account: bool,
    /// Admin login used when the user's own passwords no longer work.
    #[serde(default)]
    pub admin: Option<AdminRef>,
    /// Policy for generated passwords.
    #[serde(default)]
    pub password: PasswordPolicy,
    /// How a rotation keeps consumers working: `single-user` (the default),
    /// `alternating-users` or `multi-password`; the kind must offer it
    /// ([`TargetKind::offers`]).
    #[serde(default)]
    pub strategy: Strategy,
    /// `multi-password` and `alternating-users`: how long, in seconds, the previous value
    /// keeps working after a rotation — multi-password retires its password then;
    /// alternating users resets its account no sooner (the next rotation waits, unless
    /// forced). Default [`DEFAULT_GRACE_PERIOD_SECS`] (one day).
    #[serde(default)]
    pub grace_period_secs: Option<u64>,
    /// `alternating-users` only: the twin of an account is its name plus this suffix.
    /// Default [`DEFAULT_TWIN_SUFFIX`] (AWS's convention).
    #[serde(default)]
    pub twin_suffix: Option<String>,
    /// When scheduled rotations (Event Grid, the sweeper) of this profile's secrets may
    /// start, e.g. `"Mon-Fri 22:00-05:00 Europe/Amsterdam"` ([`crate::window`]); a
    /// secret's `RotationWindow` tag overrides it. Manual rotations ignore it. Default:
    /// any time.
    #[serde(default)]
    pub rotation_window: Option<RotationWindow>,
}

/// The default `twin_suffix` of an `alternating-users` profile.
pub const DEFAULT_TWIN_SUFFIX: &str = "_clone";

/// The default `grace_period_secs` of a `multi-password` profile: one day, so that a
/// consumer that read the old value at the start of a working day (a Power Automate
/// flow, a nightly job) finishes with it.
pub const DEFAULT_GRACE_PERIOD_SECS: u64 = 86_400;

impl TargetProfile {
    /// The twin suffix of an `alternating-users` profile; `None` for other strategies.
    pub fn twin_suffix(&self) -> Option<&str> {
        (self.strategy == Strategy::AlternatingUsers)
            .then(|| self.twin_suffix.as_deref().unwrap_or(DEFAULT_TWIN_SUFFIX))
    }

    /// The grace period of a `multi-password` or `alternating-users` profile; `None` for
    /// single-user.
    pub fn grace_period(&self) -> Option<std::time::Duration> {
        (self.strategy != Strategy::SingleUser)
            .then(|| std::time::Duration::from_secs(self.grace_period_secs.unwrap_or(DEFAULT_GRACE_PERIOD_SECS)))
    }
}

/// The admin login of a target: a user name, and the Key Vault secret holding its password.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminRef {
    /// Admin user name on the target.
    pub username: String,
    /// Name of the secret, in the same vault, holding the admin password.
    pub secret: String,
}

/// A profile's kind and its settings: `kind = "postgres"` and the keys that kind reads,
/// parsed by the kind's registration in the process's [`registry`].
#[derive(Clone)]
pub struct TargetKind {
    name: String,
    settings: Arc<dyn KindSettings>,
}

impl TargetKind {
    /// Kind `name` with `settings` (built by hand; a configuration file goes through the
    /// registry).
    pub fn new<S: KindSettings>(name: impl Into<String>, settings: S) -> Self {
        Self { name: name.into(), settings: Arc::new(settings) }
    }

    /// Kind `name` with `settings` as a configuration file would give them, read by the
    /// kind's registration in the process's registry; the error says what is wrong.
    pub fn parse(name: &str, settings: serde_json::Value) -> Result<Self, String> {
        let settings = registry::installed().parse(name, settings).map_err(|e| format!("kind {name:?}: {e}"))?;
        Ok(Self { name: name.to_owned(), settings })
    }

    /// The `kind` spelling.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this kind offers `strategy`; if not, why (for the configuration error).
    pub fn offers(&self, strategy: Strategy) -> Result<(), Cow<'static, str>> {
        self.settings.offers(strategy)
    }

    /// The settings, if they are an `S` (tests and tools that know the kind).
    pub fn settings<S: KindSettings>(&self) -> Option<&S> {
        let any: &dyn Any = self.settings.as_ref();
        any.downcast_ref::<S>()
    }

    /// The rotator of the profile `name` with this kind.
    pub fn build(&self, profile: &ProfileContext<'_>) -> Result<Arc<dyn Rotator>, BuildError> {
        self.settings.build(profile)
    }
}

impl fmt::Debug for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetKind").field("name", &self.name).field("settings", &self.settings).finish()
    }
}

impl<'de> Deserialize<'de> for TargetKind {
    /// Takes `kind` and hands every other key the profile does not read to that kind's
    /// registration, which refuses unknown ones.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut keys = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let name = match keys.remove("kind") {
            Some(serde_json::Value::String(name)) => name,
            Some(other) => return Err(D::Error::custom(format!("kind must be a string, not {other}"))),
            None => return Err(D::Error::missing_field("kind")),
        };
        Self::parse(&name, serde_json::Value::Object(keys)).map_err(D::Error::custom)
    }
}
