//! Layered loading (defaults → TOML file → `KV_ROTATOR_*` environment) and validation.

use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;

use kv_rotator_core::names::{is_secret_name, is_vault_name};
use kv_rotator_rotators::common::Strategy;

use crate::model::{
    AdminAuthConfig, AdminConfig, Config, CredentialConfig, EventGridAuth, NotificationSink, NotificationsConfig,
    SecretSource, SinkUrl, WebhookAuthConfig, WebhookConfig, ENTRA_ID_ONLY_ADMIN_KEYS,
};

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has the wrong type, is unknown, or is missing.
    #[error("configuration error: {0}")]
    Parse(String),
    /// Values parse but cannot work together.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Loads the configuration from `file` (if given) and the environment, then validates it.
///
/// Environment variables are `KV_ROTATOR_` + the key path with `__` between levels,
/// e.g. `KV_ROTATOR_VAULT__URL`, `KV_ROTATOR_WEBHOOK__LISTEN`.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    load_onto(Figment::new(), file)
}

/// Like [`load`], over a base layer of defaults (e.g. the embedded dev vault's URL).
pub fn load_onto(base: Figment, file: Option<&Path>) -> Result<Config, ConfigError> {
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::Parse(format!("config file {} does not exist", path.display())));
        }
    }
    from_figment(layers(base, file))
}

/// `base`, then the TOML `file` (if given), then the `KV_ROTATOR_*` environment.
fn layers(base: Figment, file: Option<&Path>) -> Figment {
    let mut figment = base;
    if let Some(path) = file {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment.merge(Env::prefixed("KV_ROTATOR_").ignore(CLI_ONLY_ENV).split("__"))
}

/// `KV_ROTATOR_*` variables that are command-line options (clap's `env`), not
/// configuration keys: read as keys they would be refused as unknown.
const CLI_ONLY_ENV: &[&str] = &["CONFIG", "LOG_FORMAT"];

/// The names of the environment variables that the configuration in `file` (if given)
/// and the environment reads secrets from: `vault.credential.secret_env` (client-secret),
/// `vault.credential.password_env` (client-certificate), `webhook.auth.key.env` and
/// `webhook.auth.previous_key.env` (shared-key), `admin.auth.token.env` (static-token),
/// `admin.auth.client_credential.secret_env` and `.password_env` (entra-id),
/// `notifications.sink.auth.key.env` (an Event Grid topic's key).
///
/// Nothing else is read or checked: the worker calls this before its runtime starts, to
/// take those variables out of its environment while it has a single thread, and the
/// full [`load`] that follows reports whatever is wrong with the configuration. A part
/// that does not parse names nothing.
pub fn secret_env_names(file: Option<&Path>) -> Vec<String> {
    let figment = layers(Figment::new(), file);
    let mut names = Vec::new();
    match figment.extract_inner::<CredentialConfig>("vault.credential") {
        Ok(CredentialConfig::ClientSecret { secret_env, .. }) => names.push(secret_env),
        Ok(CredentialConfig::ClientCertificate { password_env: Some(name), .. }) => names.push(name),
        _ => {}
    }
    if let Ok(WebhookAuthConfig::SharedKey { key, previous_key, .. }) =
        figment.extract_inner::<WebhookAuthConfig>("webhook.auth")
    {
        names.extend(key.env);
        names.extend(previous_key.and_then(|source| source.env));
    }
    match figment.extract_inner::<AdminAuthConfig>("admin.auth") {
        Ok(AdminAuthConfig::StaticToken { token }) => names.extend(token.env),
        Ok(AdminAuthConfig::EntraId { client_credential: Some(credential), .. }) => match *credential {
            CredentialConfig::ClientSecret { secret_env, .. } => names.push(secret_env),
            CredentialConfig::ClientCertificate { password_env: Some(name), .. } => names.push(name),
            _ => {}
        },
        _ => {}
    }
    if let Ok(NotificationSink::EventGrid { auth: EventGridAuth::Key { key }, .. }) =
        figment.extract_inner::<NotificationSink>("notifications.sink")
    {
        names.extend(key.env);
    }
    names
}

/// Extracts and validates a configuration from any figment (tests, embedded defaults).
pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
    entra_id_only_keys(&figment)?;
    let config: Config = figment.extract().map_err(|e| {
        // figment's errors name the key path and the source (file or env variable).
        let all: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
        ConfigError::Parse(all.join("; "))
    })?;
    validate(&config)?;
    Ok(config)
}

/// Refuses `[admin.auth]` keys that only `mode = "entra-id"` takes in another mode, with
/// a message that says so (serde's would only call the key unknown).
fn entra_id_only_keys(figment: &Figment) -> Result<(), ConfigError> {
    let Ok(mode) = figment.find_value("admin.auth.mode") else { return Ok(()) };
    let Some(mode) = mode.as_str() else { return Ok(()) };
    if mode == "entra-id" {
        return Ok(());
    }
    for key in ENTRA_ID_ONLY_ADMIN_KEYS {
        if figment.find_value(&format!("admin.auth.{key}")).is_ok() {
            let why = match mode {
                "static-token" => "a static token is its own proof, and `rotate` reads it from admin.auth.token",
                _ => "`rotate` sends no credential to this mode's loopback API, so it has none to get or protect",
            };
            return Err(ConfigError::Parse(format!(
                "admin.auth.{key}: only mode = \"entra-id\" takes it, not mode = \"{mode}\" ({why})"
            )));
        }
    }
    Ok(())
}

/// Checks what types alone cannot: URLs, cross-field rules, names.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    match url::Url::parse(&config.vault.url) {
        Ok(url) => {
            if url.scheme() != "https" {
                problems.push(format!("vault.url {:?}: Key Vault is only reachable over https", config.vault.url));
            }
            if url.host_str().is_none() {
                problems.push(format!("vault.url {:?}: no host", config.vault.url));
            }
        }
        Err(e) => problems.push(format!("vault.url {:?}: {e}", config.vault.url)),
    }
    if config.vault.credential == (CredentialConfig::DevVault {}) && config.vault.connect_to.is_none() {
        problems.push(
            "vault.credential.kind = \"dev-vault\" only works against the dev vault: set vault.connect_to to its address"
                .to_owned(),
        );
    }
    let vault = &config.vault;
    if let (Some(first), Some(max)) = (vault.retry_initial_delay_ms, vault.retry_max_delay_ms) {
        if first > max {
            problems.push(format!(
                "vault.retry_initial_delay_ms ({first}) is longer than vault.retry_max_delay_ms ({max})"
            ));
        }
    }
    if vault.retry_max_delay_ms == Some(0) {
        problems.push("vault.retry_max_delay_ms must be at least 1".to_owned());
    }
    if vault.read_timeout_secs == Some(0) {
        problems.push("vault.read_timeout_secs must be at least 1".to_owned());
    }
    if vault.max_retries.is_some_and(|n| n > 30) {
        problems.push("vault.max_retries above 30 would hold a rotation for many minutes; use at most 30".to_owned());
    }
    if config.engine.queue_capacity == 0 {
        problems.push("engine.queue_capacity must be at least 1".to_owned());
    }
    if config.engine.concurrency == 0 {
        problems.push("engine.concurrency must be at least 1".to_owned());
    }
    if config.engine.max_attempts == 0 {
        problems.push("engine.max_attempts must be at least 1".to_owned());
    }
    if config.engine.default_validity_days == 0 {
        problems.push("engine.default_validity_days must be at least 1".to_owned());
    }
    for (name, limit) in &config.engine.target_concurrency {
        if *limit == 0 {
            problems.push(format!("engine.target_concurrency.{name} must be at least 1"));
        }
        if !config.targets.contains_key(name) {
            problems.push(format!("engine.target_concurrency.{name}: no [targets.{name}] profile"));
        }
    }
    validate_schedule(config, &mut problems);
    validate_durations(config, &mut problems);
    if let Some(url) = &config.alerts.webhook_url {
        problems.extend(sink_url_setting_problem("alerts.webhook_url", url));
    }
    validate_notifications(&config.notifications, &mut problems);
    if config.lease.ttl_secs < 4 {
        problems.push(format!(
            "lease.ttl_secs = {}: at least 4 (Key Vault's timestamps are whole seconds)",
            config.lease.ttl_secs
        ));
    }
    if config.alerts.timeout_ms == 0 {
        problems.push("alerts.timeout_ms must be at least 1".to_owned());
    }
    for (name, profile) in &config.targets {
        if let Err(e) = profile.password.validate() {
            problems.push(format!("targets.{name}.password: {e}"));
        }
        if profile.accounts.is_empty() {
            problems.push(format!(
                "targets.{name}.accounts is empty: list the accounts (CredentialId) this profile may rotate, \
                 as names or glob patterns (\"*\" allows any)"
            ));
        }
        for pattern in &profile.accounts {
            if let Err(e) = glob::Pattern::new(pattern) {
                problems.push(format!("targets.{name}.accounts: {pattern:?} is not a glob pattern: {e}"));
            }
        }
        if let Err(why) = profile.target.offers(profile.strategy) {
            problems.push(format!(
                "targets.{name}.strategy {:?} is refused for kind {:?}: {why}",
                profile.strategy.as_str(),
                profile.target.name()
            ));
        }
        match (profile.grace_period_secs, profile.strategy) {
            (Some(_), Strategy::SingleUser) => problems.push(format!(
                "targets.{name}.grace_period_secs applies to strategies \"multi-password\" and \"alternating-users\" \
                 only (this profile's is \"single-user\")"
            )),
            (Some(0), _) => problems.push(format!(
                "targets.{name}.grace_period_secs must be at least 1: the old password must outlive the rotation \
                 that replaced it"
            )),
            (Some(secs), _) if secs > MAX_DURATION_SECS => {
                problems.push(format!("targets.{name}.grace_period_secs {secs} is more than ten years"))
            }
            _ => {}
        }
        match (&profile.twin_suffix, profile.strategy) {
            (Some(_), s) if s != Strategy::AlternatingUsers => problems.push(format!(
                "targets.{name}.twin_suffix applies to strategy \"alternating-users\" only (this profile's is {:?})",
                s.as_str()
            )),
            (Some(suffix), _) if suffix.is_empty() || suffix.len() > 32 || !suffix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => {
                problems.push(format!(
                    "targets.{name}.twin_suffix {suffix:?}: 1-32 of a-z A-Z 0-9 _ - (it becomes part of an account name)"
                ))
            }
            _ => {}
        }
        if profile.strategy == Strategy::AlternatingUsers && profile.admin.is_none() {
            problems.push(format!(
                "targets.{name}: strategy \"alternating-users\" needs an admin login (admin = {{ username, secret }}): \
                 the idle account is created and reset by it"
            ));
        }
        if let Some(admin) = &profile.admin {
            if !is_secret_name(&admin.secret) {
                problems.push(format!(
                    "targets.{name}.admin.secret {:?}: not a Key Vault secret name (1-127 of 0-9 a-z A-Z -)",
                    admin.secret
                ));
            }
            if admin.username.is_empty() {
                problems.push(format!("targets.{name}.admin.username is empty"));
            }
        }
    }
    validate_webhook(&config.webhook, &mut problems);
    validate_admin(config, &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// Longest duration any key may hold: ten years. Longer ones are mistakes, and near
/// `u64::MAX` they overflow the clock arithmetic they feed (a panic at the first lease
/// claim or unfinished rotation, not a configuration error).
const MAX_DURATION_SECS: u64 = 10 * 366 * 86_400;
/// Longest `engine.target_lag_secs`: a day.
const MAX_TARGET_LAG_SECS: u64 = 86_400;

/// Longest `engine.window_expiry_margin_hours`: 30 days.
const MAX_WINDOW_MARGIN_HOURS: u32 = 720;

fn validate_durations(config: &Config, problems: &mut Vec<String>) {
    let (vault, webhook, engine) = (&config.vault, &config.webhook, &config.engine);
    let secs = [
        ("vault.read_timeout_secs", vault.read_timeout_secs.unwrap_or(0)),
        ("webhook.header_read_timeout_secs", webhook.header_read_timeout_secs),
        ("webhook.request_timeout_secs", webhook.request_timeout_secs),
        ("webhook.shutdown_grace_secs", webhook.shutdown_grace_secs),
        ("engine.min_rotation_interval_secs", engine.min_rotation_interval_secs),
        ("engine.finish_retry_interval_secs", engine.finish_retry_interval_secs),
        ("engine.finish_retry_for_secs", engine.finish_retry_for_secs),
        ("sweeper.interval_secs", config.sweeper.interval_secs),
        ("lease.ttl_secs", config.lease.ttl_secs),
        ("alerts.repeat_after_secs", config.alerts.repeat_after_secs),
    ];
    let millis = [
        ("vault.retry_initial_delay_ms", vault.retry_initial_delay_ms.unwrap_or(0)),
        ("vault.retry_max_delay_ms", vault.retry_max_delay_ms.unwrap_or(0)),
        ("engine.initial_backoff_ms", engine.initial_backoff_ms),
        ("engine.max_backoff_ms", engine.max_backoff_ms),
        ("lease.settle_ms", config.lease.settle_ms),
        ("alerts.timeout_ms", config.alerts.timeout_ms),
        ("notifications.timeout_ms", config.notifications.timeout_ms),
    ];
    let too_long = secs
        .into_iter()
        .filter(|(_, v)| *v > MAX_DURATION_SECS)
        .map(|(k, v)| (k, v, "s"))
        .chain(millis.into_iter().filter(|(_, v)| *v / 1000 > MAX_DURATION_SECS).map(|(k, v)| (k, v, "ms")));
    for (key, value, unit) in too_long {
        problems.push(format!("{key} = {value} {unit}: longer than ten years ({MAX_DURATION_SECS} s)"));
    }
}

/// Rotation windows: a rotation deferred to its window is started by the sweeper, so
/// the due scan must be on and at least two sweeps must fall within each span.
fn validate_windows(config: &Config, problems: &mut Vec<String>) {
    let (engine, sweeper) = (&config.engine, &config.sweeper);
    if !(1..=MAX_WINDOW_MARGIN_HOURS).contains(&engine.window_expiry_margin_hours) {
        problems.push(format!(
            "engine.window_expiry_margin_hours = {}: between 1 and {MAX_WINDOW_MARGIN_HOURS}",
            engine.window_expiry_margin_hours
        ));
    }
    for (name, window) in config.targets.iter().filter_map(|(name, p)| Some((name, p.rotation_window.as_ref()?))) {
        if !sweeper.enabled {
            problems.push(format!(
                "targets.{name}.rotation_window needs sweeper.enabled = true: the sweeper starts the rotations a \
                 window deferred"
            ));
        }
        if let Some(problem) = window.sweeps_problem(sweeper.interval_secs) {
            problems.push(format!(
                "targets.{name}.rotation_window {:?}: {problem}: widen the window or sweep more often",
                window.to_string()
            ));
        }
    }
}

/// The sweeper's schedule and the due rule: combinations that would let a secret expire
/// unrotated, or rotate it again before its policy says so, are refused.
fn validate_schedule(config: &Config, problems: &mut Vec<String>) {
    let (engine, sweeper) = (&config.engine, &config.sweeper);
    if engine.target_lag_secs > MAX_TARGET_LAG_SECS {
        problems.push(format!("engine.target_lag_secs = {}: at most {MAX_TARGET_LAG_SECS}", engine.target_lag_secs));
    }
    if sweeper.interval_secs == 0 {
        problems.push("sweeper.interval_secs must be at least 1".to_owned());
    }
    if sweeper.window_days == 0 {
        problems.push("sweeper.window_days must be at least 1".to_owned());
    }
    if !(1..=90).contains(&sweeper.lead_percent) {
        problems.push(format!(
            "sweeper.lead_percent = {}: must be between 1 and 90 (a lead of the whole validity would make every new version due at once)",
            sweeper.lead_percent
        ));
        return;
    }
    if engine.default_validity_days == 0 || sweeper.window_days == 0 {
        return;
    }
    const DAY: u64 = 86_400;
    let validity_secs = u64::from(engine.default_validity_days) * DAY;
    let lead_secs = (u64::from(sweeper.window_days) * DAY).min(validity_secs * u64::from(sweeper.lead_percent) / 100);
    if sweeper.enabled && lead_secs <= sweeper.interval_secs {
        problems.push(format!(
            "sweeper.interval_secs = {} is not shorter than the lead before expiry ({lead_secs} s from sweeper.window_days = {}, \
             sweeper.lead_percent = {} and engine.default_validity_days = {}): a secret could expire between two sweeps",
            sweeper.interval_secs, sweeper.window_days, sweeper.lead_percent, engine.default_validity_days
        ));
    }
    if engine.min_rotation_interval_secs >= validity_secs - lead_secs {
        problems.push(format!(
            "engine.min_rotation_interval_secs = {} is not shorter than the time a version lives before it is due \
             ({} s from engine.default_validity_days = {} and the lead): due rotations would be refused",
            engine.min_rotation_interval_secs,
            validity_secs - lead_secs,
            engine.default_validity_days
        ));
    }
    if engine.finish_retry_interval_secs == 0 {
        problems.push("engine.finish_retry_interval_secs must be at least 1".to_owned());
    }
    validate_windows(config, problems);
}

/// What is wrong with `raw` as the URL of an HTTP sink (alerts, notifications) at key
/// `key`: not http(s), no host, or plain http to a host that is not loopback (the body
/// and the URL's own credential, a `sig=` or a token, would cross the network in clear).
/// The message quotes the URL only up to its origin when it has more: a path, query or
/// user part is often the sink's credential (a Slack hook's path, a Logic Apps `sig=`).
pub fn sink_url_problem(key: &str, raw: &str) -> Option<String> {
    let url = match url::Url::parse(raw) {
        Ok(url) => url,
        Err(e) => return Some(format!("{key}: not a URL ({e})")),
    };
    let bare = url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && matches!(url.path(), "" | "/");
    let shown = if bare { raw.to_owned() } else { format!("{}/…", url.origin().ascii_serialization()) };
    match (url.scheme(), url.host_str()) {
        ("http" | "https", None | Some("")) => Some(format!("{key} {shown:?}: no host")),
        ("https", Some(_)) => None,
        ("http", Some(host)) if kv_rotator_rotators::tls::is_loopback_host(host) => None,
        ("http", Some(_)) => Some(format!(
            "{key} {shown:?}: plain http only to a loopback host (localhost, 127.0.0.0/8, ::1); use https"
        )),
        (scheme, _) => Some(format!("{key} {shown:?}: scheme {scheme:?} refused: must be http or https")),
    }
}

/// What is wrong with a sink URL setting at `key`: an inline URL by the rule of
/// [`sink_url_problem`] and carrying no credential ([`url_credential`]), or the source it
/// is read from (the URL read from it is checked where it is read).
fn sink_url_setting_problem(key: &str, url: &SinkUrl) -> Option<String> {
    match url {
        SinkUrl::Inline(raw) => sink_url_problem(key, raw).or_else(|| {
            url_credential(raw).map(|what| {
                format!(
                    "{key}: this URL carries a credential ({what}), and the configuration holds no secret: \
                     give it as {key} = {{ env = \"NAME\" }} or {{ file = \"/path\" }}"
                )
            })
        }),
        SinkUrl::Secret(source) => source.problem(key),
    }
}

/// Query parameters that are a credential wherever they appear (Logic Apps and Power
/// Automate `sig`, Azure Functions `code`, and the usual token names), compared without
/// case.
const CREDENTIAL_PARAMETERS: &[&str] =
    &["sig", "code", "key", "token", "access_token", "api-key", "api_key", "apikey", "secret", "password"];

/// The credential `raw` carries where one can be told — a password in its user part, or
/// a query parameter of [`CREDENTIAL_PARAMETERS`] — named, never quoted.
pub fn url_credential(raw: &str) -> Option<String> {
    let url = url::Url::parse(raw).ok()?;
    if url.password().is_some() {
        return Some("a password in its user part".to_owned());
    }
    url.query_pairs()
        .map(|(name, _)| name.to_ascii_lowercase())
        .find(|name| CREDENTIAL_PARAMETERS.contains(&name.as_str()))
        .map(|name| format!("its {name:?} query parameter"))
}

/// `[notifications]`: the sink's URL by the rule of [`sink_url_problem`], the key's
/// source, the limits, and the expiry warning stages.
fn validate_notifications(notifications: &NotificationsConfig, problems: &mut Vec<String>) {
    match &notifications.sink {
        Some(NotificationSink::Webhook { url }) => {
            problems.extend(sink_url_setting_problem("notifications.sink.url", url))
        }
        Some(NotificationSink::EventGrid { topic_endpoint, auth }) => {
            problems.extend(sink_url_problem("notifications.sink.topic_endpoint", topic_endpoint));
            if let EventGridAuth::Key { key } = auth {
                problems.extend(key.problem("notifications.sink.auth.key"));
            }
        }
        None => {}
    }
    if notifications.timeout_ms == 0 {
        problems.push("notifications.timeout_ms must be at least 1".to_owned());
    }
    if !(1..=20).contains(&notifications.max_attempts) {
        problems.push(format!("notifications.max_attempts = {}: between 1 and 20", notifications.max_attempts));
    }
    if notifications.queue_capacity == 0 {
        problems.push("notifications.queue_capacity must be at least 1".to_owned());
    }
    let stages = &notifications.expiry_warning_days;
    if stages.iter().any(|days| !(1..=3660).contains(days)) {
        problems.push(format!("notifications.expiry_warning_days {stages:?}: each stage 1 to 3660 days"));
    }
    let mut sorted = stages.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != stages.len() {
        problems.push(format!("notifications.expiry_warning_days {stages:?}: a stage is listed twice"));
    }
}

/// `[webhook]`: listener limits (each at least 1), allowed vault names, and where secrets come from. The values of the
/// auth settings themselves are checked by the webhook crate when the state is built.
fn validate_webhook(webhook: &WebhookConfig, problems: &mut Vec<String>) {
    let limits = [
        ("header_read_timeout_secs", webhook.header_read_timeout_secs),
        ("request_timeout_secs", webhook.request_timeout_secs),
        ("max_connections", webhook.max_connections as u64),
        ("shutdown_grace_secs", webhook.shutdown_grace_secs),
    ];
    for (key, value) in limits {
        if value == 0 {
            problems.push(format!("webhook.{key}: must be at least 1"));
        }
    }
    for name in &webhook.allowed_vaults {
        if !is_vault_name(name) {
            problems.push(format!("webhook.allowed_vaults: {name:?} is not a Key Vault name (3-24 of a-z 0-9 -)"));
        }
    }
    let mut source = |key: &str, source: &SecretSource| problems.extend(source.problem(&format!("webhook.auth.{key}")));
    match &webhook.auth {
        Some(WebhookAuthConfig::SharedKey { key, previous_key, .. }) => {
            source("key", key);
            if let Some(previous) = previous_key {
                source("previous_key", previous);
            }
        }
        Some(WebhookAuthConfig::EntraId { openid_configuration_url: Some(_), jwks_url: Some(_), .. }) => {
            problems.push("webhook.auth: set openid_configuration_url or jwks_url, not both".to_owned());
        }
        _ => {}
    }
}

/// `[admin]`: when enabled, its address must not be one the webhook also listens on (the
/// same port on the same address, or on the wildcard address of either), or `/metrics`
/// would sit on the internet-facing port again — and one of the two binds would fail.
/// `[admin.auth]`: `mode = "none"` only on a loopback address; a token from exactly one
/// source; discovery or a key set, not both.
fn validate_admin(config: &Config, problems: &mut Vec<String>) {
    let AdminConfig { enabled, listen, auth, vault_failing_secs } = &config.admin;
    // Shorter than a lease's life, one retried 429 would make /readyz flap.
    if *vault_failing_secs < config.lease.ttl_secs {
        problems.push(format!(
            "admin.vault_failing_secs = {vault_failing_secs}: at least lease.ttl_secs ({}), or one failed call \
             that the next retry clears would make /readyz answer 503",
            config.lease.ttl_secs
        ));
    }
    let webhook = config.webhook.listen;
    let overlaps = listen.port() != 0
        && listen.port() == webhook.port()
        && (listen.ip() == webhook.ip() || listen.ip().is_unspecified() || webhook.ip().is_unspecified());
    if *enabled && overlaps {
        problems.push(format!(
            "admin.listen {listen} overlaps webhook.listen {webhook}: the admin listener needs its own port"
        ));
    }
    match auth {
        Some(AdminAuthConfig::None {}) if !listen.ip().is_loopback() => problems.push(format!(
            "admin.auth: mode = \"none\" is only allowed when admin.listen is a loopback address, not {listen}: \
             anyone who reaches it could rotate every secret; use mode = \"static-token\" or \"entra-id\""
        )),
        Some(AdminAuthConfig::StaticToken { token }) => problems.extend(token.problem("admin.auth.token")),
        Some(AdminAuthConfig::EntraId {
            role,
            openid_configuration_url,
            jwks_url,
            proof_file,
            client_credential,
            ..
        }) => {
            if openid_configuration_url.is_some() && jwks_url.is_some() {
                problems.push("admin.auth: set openid_configuration_url or jwks_url, not both".to_owned());
            }
            if let Some(path) = proof_file.as_ref().filter(|path| !path.is_absolute()) {
                problems.push(format!(
                    "admin.auth.proof_file {}: give an absolute path (the service and rotate may start in different \
                     directories)",
                    path.display()
                ));
            } else if proof_file.as_ref().is_some_and(|path| path.file_name().is_none()) {
                problems.push(format!(
                    "admin.auth.proof_file {}: name a file (in a directory that exists), not a directory",
                    proof_file.as_ref().map_or_else(String::new, |p| p.display().to_string())
                ));
            }
            if client_credential.as_deref() == Some(&CredentialConfig::DevVault {}) {
                problems.push(
                    "admin.auth.client_credential: kind = \"dev-vault\" only signs in to the dev vault; the admin API \
                     needs an Entra ID token (developer-tools, azure-cli, client-secret, ...)"
                        .to_owned(),
                );
            }
            if role.trim().is_empty() {
                problems.push("admin.auth.role: name the app role callers must hold, e.g. KvRotator.Rotate".to_owned());
            }
        }
        _ => {}
    }
}
