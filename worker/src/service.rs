//! Runs the webhook and the engine together: [`connect_store`] opens the vault,
//! [`start`] binds the webhook to a listener and starts the engine behind a bounded
//! queue, [`start_with`] adds the sweeper (journal resume, near-expiry scan), the alert
//! sink, notifications ([`crate::notify`]) and the admin listener (`/metrics`,
//! `/healthz`, `/readyz`: [`crate::admin`]), and [`RunningService::shutdown`] stops them
//! gracefully (the webhook first, queued notifications and the admin listener once the
//! engine drained, then the engine lease the service was given is released). A service given a [`Standby`] instead of a lease serves its listeners at
//! once and starts the engine and the sweeper only when its claims win the lease
//! ([`RunningService::run_until`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use kv_rotator_config::{AlertsConfig, EngineConfig, SweeperConfig, VaultConfig, WebhookConfig};
use kv_rotator_config::{SecretSource, SinkUrl, WebhookAuthConfig};
use kv_rotator_core::RotationRequest;
use kv_rotator_keyvault::azure::{AzureSecretStore, TransportOverrides};
use kv_rotator_keyvault::SecretStore;
use kv_rotator_webhook::Intake;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin::api::ApiState;
use crate::admin::jobs::Jobs;
use crate::admin::{AdminState, Readiness};
use crate::alerts::WebhookSink;
use crate::engine::due::{DueRule, SweepClock, Windows};
use crate::engine::Engine;
use crate::lease::LeaseGuard;
use crate::listener::Limits;
use crate::metrics::Metrics;
use crate::notify::expiry::ExpiryWarnings;
use crate::notify::Notifier;
use crate::standby::{ClaimLoop, Standby, StandbyStatus};
use crate::sweeper::Sweeper;
use crate::targets::Targets;
use crate::vault_health::{VaultHealth, VaultObserver};

/// Opens the configured vault through the official SDK.
pub fn connect_store(vault: &VaultConfig) -> anyhow::Result<Arc<dyn SecretStore>> {
    let credential = crate::credentials::credential(&vault.credential)?;
    let extra_root_pem = match &vault.tls_ca_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("vault.tls_ca_file {}: cannot read", path.display()))?,
        ),
        None => None,
    };
    let overrides = TransportOverrides { extra_root_pem, connect_to: vault.connect_to };
    let settings = crate::credentials::client_settings(vault);
    let store = AzureSecretStore::connect_with(&vault.url, credential, overrides, settings).context("vault")?;
    Ok(Arc::new(store))
}

/// The webhook and engine, running.
#[derive(Debug)]
pub struct RunningService {
    /// The engine (subscribe to its reports).
    pub engine: Engine,
    /// Where the webhook listens.
    pub webhook_addr: SocketAddr,
    /// Where the admin listener listens, when the service has one.
    pub admin_addr: Option<SocketAddr>,
    webhook: Server,
    admin: Option<Server>,
    /// `None` while in standby.
    engine_task: Option<JoinHandle<()>>,
    sweeper_task: Option<JoinHandle<()>>,
    lease: Option<LeaseGuard>,
    standby: Option<Waiting>,
    /// Its queue gets [`crate::notify::SHUTDOWN_FLUSH`] at shutdown.
    notifier: Option<Notifier>,
}

/// What a service in standby starts once its claims win the lease.
#[derive(Debug)]
struct Waiting {
    claims: ClaimLoop,
    status: StandbyStatus,
    queue: mpsc::Receiver<RotationRequest>,
    sweeper: Option<Sweeper>,
    intake: Intake,
}

/// One HTTP listener served by [`crate::listener::serve`], and how to stop it.
#[derive(Debug)]
struct Server {
    name: &'static str,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    fn spawn(name: &'static str, listener: TcpListener, app: Router, limits: Limits) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::listener::serve(name, listener, app, limits, async {
            let _ = stopped.await;
        }));
        Self { name, stop, task }
    }

    /// Stops accepting, and returns once its connections are closed (within the grace).
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.with_context(|| format!("{} task", self.name))?.with_context(|| format!("{} server", self.name))
    }
}

/// What runs beside the webhook and the engine.
#[derive(Debug, Default)]
pub struct Background {
    /// The startup and periodic scan (journals to resume, secrets near expiry); `None`: off.
    pub sweeper: Option<SweeperConfig>,
    /// Where failures past the retry cap are sent.
    pub alerts: AlertsConfig,
    /// Where rotation outcomes and expiry warnings are published (`[notifications]`,
    /// read by [`crate::notify::Sink::from_config`]); `None`: nowhere.
    pub notifications: Option<crate::notify::Sink>,
    /// The engine lease this service holds (see [`crate::lease`]): released at shutdown;
    /// its loss ends [`RunningService::run_until`] with an error.
    pub lease: Option<LeaseGuard>,
    /// Instead of `lease`: start in standby ([`crate::standby`]): the listeners serve,
    /// `/readyz` and the webhook's rotations answer 503, and the engine and the sweeper
    /// start when the standby's claims win the lease (in [`RunningService::run_until`]).
    pub standby: Option<Standby>,
    /// The admin listener ([`crate::admin`]: `/metrics`, `/healthz`, `/readyz`), bound
    /// by the caller (see [`crate::admin::bind`]); `None`: no admin listener.
    pub admin: Option<TcpListener>,
    /// How the admin API's callers authenticate (`[admin.auth]`); `None`: the API is not
    /// served. Only with `admin`.
    pub admin_auth: Option<crate::admin::auth::AdminAuth>,
    /// `/readyz` is 503 once every vault call for this long has failed, with no success
    /// since (`[admin] vault_failing_secs`); `None`: that key's default.
    pub vault_failing_for: Option<Duration>,
}

/// Starts the engine and serves the webhook on `listener`, with no sweeper.
pub async fn start(
    store: Arc<dyn SecretStore>,
    targets: Targets,
    engine_config: EngineConfig,
    webhook_config: &WebhookConfig,
    listener: TcpListener,
) -> anyhow::Result<RunningService> {
    start_with(store, targets, engine_config, webhook_config, Background::default(), listener).await
}

/// Starts the engine, the sweeper and alert sink of `background`, and serves the
/// webhook on `listener` and the admin routes on `background.admin` (both within the
/// limits of `[webhook]`, see [`crate::listener`]).
pub async fn start_with(
    store: Arc<dyn SecretStore>,
    targets: Targets,
    engine_config: EngineConfig,
    webhook_config: &WebhookConfig,
    background: Background,
    listener: TcpListener,
) -> anyhow::Result<RunningService> {
    anyhow::ensure!(
        background.lease.is_none() || background.standby.is_none(),
        "a service holds the engine lease or waits for it in standby, not both"
    );
    let (queue_tx, queue_rx) = mpsc::channel(engine_config.queue_capacity);
    let vault_name = store.vault_name().to_owned();
    let metrics = Arc::new(Metrics::default());
    // Every clone of the store (the lease's, the sweeper's) reports its calls here.
    let vault_health = VaultHealth::default();
    store.set_client_observer(Arc::new(VaultObserver { health: vault_health.clone(), metrics: metrics.clone() }));
    // No sweeper (`dev`, the demo): the due rule is the default one, and nothing waits
    // for a rotation window, since no sweep would start what waited.
    let sweeper_config = match &background.sweeper {
        Some(config) => config.clone(),
        None => SweeperConfig { enabled: false, ..SweeperConfig::default() },
    };
    let mut engine =
        build_engine(store.clone(), targets, engine_config, &sweeper_config, &background.alerts, metrics.clone())?;
    let due_rule = engine.due_rule();
    let notifier = background.notifications.map(|sink| sink.start(metrics.clone()));
    if let Some(notifier) = &notifier {
        engine = engine.with_notifier(notifier.clone());
    }
    // The admin API's jobs follow their requests through the engine.
    let jobs = background.admin_auth.as_ref().filter(|_| background.admin.is_some()).map(|_| Arc::new(Jobs::default()));
    if let Some(jobs) = &jobs {
        engine = engine.with_observer(jobs.clone());
    }
    if let Some(lease) = &background.lease {
        engine = engine.with_lease(Arc::new(lease.clone()));
    }
    let standby_status = background.standby.as_ref().map(Standby::status);
    if let Some(status) = &standby_status {
        // Rotates nothing until the standby took the lease over.
        engine = engine.with_lease(Arc::new(status.clone()));
    }
    let api_store = store.clone();
    let sweeper = background.sweeper.map(|config| {
        let sweeper = Sweeper::new(store, queue_tx.clone(), config, due_rule.clone(), metrics.clone());
        match notifier.as_ref().filter(|n| !n.expiry_stages().is_empty()) {
            Some(notifier) => sweeper.with_expiry_warnings(ExpiryWarnings::new(notifier.clone(), &vault_name)),
            None => sweeper,
        }
    });
    let vault_failing_for = background
        .vault_failing_for
        .unwrap_or(Duration::from_secs(kv_rotator_config::AdminConfig::default().vault_failing_secs));
    let mut readiness =
        Readiness::new(&queue_tx, background.lease.clone()).with_vault_health(vault_health, vault_failing_for);
    let intake = Intake::default();
    if let (Some(standby), Some(status)) = (&background.standby, &standby_status) {
        readiness = readiness.with_standby(status.clone());
        intake.close(crate::standby::WEBHOOK_MESSAGE, standby.retry_every());
    }
    let api = match (background.admin_auth, jobs) {
        (Some(auth), Some(jobs)) => Some(ApiState {
            auth,
            store: api_store,
            queue: queue_tx.downgrade(),
            readiness: readiness.clone(),
            jobs,
            due_rule,
            vault_calls: ApiState::vault_calls(),
        }),
        _ => None,
    };
    let limits = Limits::from_config(webhook_config);
    let state = webhook_state(queue_tx, webhook_config, &vault_name)?
        .with_intake(intake.clone())
        .with_observer(metrics.clone())
        .with_request_timeout(limits.request_timeout);
    let webhook_addr = listener.local_addr().context("webhook listener")?;
    let admin_addr = background.admin.as_ref().map(TcpListener::local_addr).transpose().context("admin listener")?;
    let app = kv_rotator_webhook::router(state);
    let webhook = Server::spawn("webhook", listener, app, Limits { timed_by_app: true, ..limits });
    info!(%webhook_addr, "webhook listening");
    let api_mode = api.as_ref().map(|api| api.auth.mode());
    let admin = background.admin.map(|listener| {
        let app = crate::admin::router(AdminState { metrics, readiness, api });
        Server::spawn("admin", listener, app, Limits { peer_in_requests: true, ..limits })
    });
    match (admin_addr, api_mode) {
        (Some(admin_addr), None) => info!(%admin_addr, "admin listener (/metrics, /healthz, /readyz) listening"),
        (Some(admin_addr), Some(auth)) => {
            info!(%admin_addr, %auth, "admin listener (/metrics, /healthz, /readyz, admin API /api/...) listening")
        }
        (None, _) => {}
    }
    let (engine_task, sweeper_task, standby) = match (background.standby, standby_status) {
        (Some(standby), Some(status)) => {
            let waiting = Waiting { claims: standby.spawn(), status, queue: queue_rx, sweeper, intake };
            (None, None, Some(waiting))
        }
        _ => (Some(tokio::spawn(engine.clone().run(queue_rx))), sweeper.map(|s| tokio::spawn(s.run())), None),
    };
    Ok(RunningService {
        engine,
        webhook_addr,
        admin_addr,
        webhook,
        admin,
        engine_task,
        sweeper_task,
        lease: background.lease,
        standby,
        notifier,
    })
}

/// The engine of every service (`serve`, `dev`, `functions`): its metrics in `metrics`,
/// versions judged due by the rule of `[engine]` and `sweeper` (the sweeper's rule too),
/// failures past the retry cap sent to `[alerts]` (its URL read now, if from a source).
/// The caller adds the engine lease.
pub fn build_engine(
    store: Arc<dyn SecretStore>,
    targets: Targets,
    engine_config: EngineConfig,
    sweeper: &SweeperConfig,
    alerts: &AlertsConfig,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Engine> {
    let windows = Windows::new(targets.rotation_windows().clone(), sweeper)
        .with_sweep_clock(SweepClock::started(time::OffsetDateTime::now_utc()));
    let due_rule = DueRule::from_config(&engine_config, sweeper).with_windows(windows);
    warn_if_target_lag_is_short(&engine_config);
    let mut engine = Engine::new(store, targets, engine_config).with_metrics(metrics).with_due_rule(due_rule);
    if let Some(url) = &alerts.webhook_url {
        let url = sink_url("alerts.webhook_url", url)?;
        let sink = WebhookSink::new(url.expose_secret(), Duration::from_millis(alerts.timeout_ms));
        engine = engine.with_alert_sink(sink, Duration::from_secs(alerts.repeat_after_secs));
    }
    Ok(engine)
}

/// Warns when `engine.target_lag_secs` is under 30 s: a leftover journal record may then
/// be deleted (or an older record password trusted) that soon after its password was set.
pub fn warn_if_target_lag_is_short(engine: &EngineConfig) {
    if engine.target_lag_secs < 30 {
        warn!(
            target_lag_secs = engine.target_lag_secs,
            "engine.target_lag_secs under 30 s: a leftover journal record may be judged that soon after its password \
             was set, on the strength of what the target's logins show; safe only for targets without replicas or \
             poolers between their primary and their logins"
        );
    }
}

/// The URL of an HTTP sink setting: written inline (checked with the configuration), or
/// read from its source now and held to the same rule; errors name the setting and at
/// most the URL's origin.
pub(crate) fn sink_url(setting: &str, url: &SinkUrl) -> anyhow::Result<SecretString> {
    match url {
        SinkUrl::Inline(url) => Ok(SecretString::from(url.clone())),
        SinkUrl::Secret(source) => {
            let url = read_secret(setting, source)?;
            if let Some(problem) = kv_rotator_config::load::sink_url_problem(setting, url.expose_secret()) {
                anyhow::bail!("{problem} (as read from its source)");
            }
            Ok(url)
        }
    }
}

impl RunningService {
    /// Runs until `signal` completes, then shuts down; or until the engine lease is lost
    /// for good, then shuts down and returns that error (a restart claims again). In
    /// standby, first waits for the standby's claims to win the lease, and then starts
    /// the engine as a fresh start would: the sweeper's first pass (resume of unfinished
    /// journals, due secrets) and the queue, and the webhook takes rotations again.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(signal);
        if let Some(waiting) = self.standby.as_mut() {
            tokio::select! {
                _ = &mut signal => return self.shutdown().await,
                won = waiting.claims.won() => match won {
                    Ok(lease) => self.take_over(lease),
                    Err(err) => {
                        self.shutdown().await?;
                        return Err(err);
                    }
                },
            }
        }
        let lease = self.lease.clone();
        let lost = async {
            match &lease {
                Some(lease) => lease.lost().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signal => self.shutdown().await,
            why = lost => {
                self.shutdown().await?;
                Err(anyhow::Error::new(why).context("stopped"))
            }
        }
    }

    /// The engine lease this service holds, if it was given one (or took it over).
    pub fn lease(&self) -> Option<&LeaseGuard> {
        self.lease.as_ref()
    }

    /// Whether the service still waits for the engine lease in standby.
    pub fn in_standby(&self) -> bool {
        self.standby.is_some()
    }

    /// The standby's claims won `lease`: the engine, the sweeper (its first pass resumes
    /// unfinished journals, as at any start) and the webhook's rotations start.
    fn take_over(&mut self, lease: LeaseGuard) {
        let Some(waiting) = self.standby.take() else { return };
        // First, so that the engine's lease check passes when its first request comes.
        waiting.status.took_over(lease.clone());
        self.engine_task = Some(tokio::spawn(self.engine.clone().run(waiting.queue)));
        self.sweeper_task = waiting.sweeper.map(|sweeper| tokio::spawn(sweeper.run()));
        waiting.intake.open();
        info!(
            vault = %lease.vault(),
            version = %lease.version(),
            standby_secs = waiting.status.since().elapsed().as_secs(),
            "standby over: this process holds the engine lease; the engine starts (resume of unfinished journals, \
             sweeper, queue) and the webhook takes rotations"
        );
        self.lease = Some(lease);
    }

    /// Stops accepting deliveries, lets queued rotations finish, and returns. Open HTTP
    /// connections get `webhook.shutdown_grace_secs` to finish, then are closed. The
    /// admin listener serves until the engine has drained (`/readyz` says it is shutting
    /// down), so the last rotations are still scraped.
    /// In standby, the claims stop (an attempt in flight reaches its verdict and what it
    /// won is released), then the listeners; no engine ran.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(waiting) = self.standby.take() {
            waiting.claims.stop().await;
            drop((waiting.queue, waiting.sweeper));
            self.webhook.stop().await?;
            if let Some(admin) = self.admin {
                admin.stop().await?;
            }
            info!("stopped in standby: this process never held the engine lease");
            return Ok(());
        }
        if let Some(sweeper) = self.sweeper_task {
            // It holds a sender of the queue: the engine drains only once it is gone.
            sweeper.abort();
            let _ = sweeper.await;
        }
        self.webhook.stop().await?;
        // The router, and with it the queue's sender, is gone: the engine drains and ends.
        if let Some(engine_task) = self.engine_task {
            engine_task.await.context("engine task")?;
        }
        if let Some(notifier) = &self.notifier {
            if !notifier.flush(crate::notify::SHUTDOWN_FLUSH).await {
                tracing::warn!("notifications still queued at shutdown were not delivered");
            }
        }
        if let Some(admin) = self.admin {
            admin.stop().await?;
        }
        if let Some(lease) = self.lease {
            lease.release().await;
        }
        Ok(())
    }
}

/// Completes on Ctrl-C or SIGTERM (what container runtimes send). The handlers are
/// installed when this is called, not when the future is first polled: a signal that
/// comes while the service is still starting (claiming the lease, entering standby) is
/// then a shutdown request, not the default action that ends the process at once.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{signal, SignalKind};
        (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let recv = |s: &mut Option<tokio::signal::unix::Signal>| {
                let s = s.take();
                async move {
                    match s {
                        Some(mut s) => {
                            s.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                }
            };
            tokio::select! { _ = recv(&mut term) => {}, _ = recv(&mut int) => {} }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        info!("shutdown requested");
    }
}

/// The webhook's state from `[webhook]`: body limit, authentication (keys read from
/// their environment variables or files now) and the vault allowlist (`allowed_vaults`,
/// else `vault_name`, the configured vault). Entra ID signing keys are fetched in the
/// background so the first delivery does not wait for them.
pub fn webhook_state(
    queue: mpsc::Sender<kv_rotator_core::RotationRequest>,
    config: &WebhookConfig,
    vault_name: &str,
) -> anyhow::Result<kv_rotator_webhook::WebhookState> {
    let auth = webhook_auth(config.auth.as_ref()).context("webhook.auth")?;
    if let kv_rotator_webhook::Authenticator::EntraId(entra) = &auth {
        let entra = entra.clone();
        tokio::spawn(async move {
            if let Err(e) = entra.refresh_keys().await {
                tracing::warn!(error = %e, "Entra ID signing keys not fetched yet; retried on the first delivery");
            }
        });
    }
    Ok(kv_rotator_webhook::WebhookState::new(queue)
        .with_max_body_bytes(config.max_body_bytes)
        .with_auth(auth)
        .with_source_filter(source_filter(config, vault_name)))
}

/// Whose events are accepted: the vaults of `webhook.allowed_vaults`, else `vault_name`
/// (the configured vault).
pub fn source_filter(config: &WebhookConfig, vault_name: &str) -> kv_rotator_webhook::SourceFilter {
    if config.allowed_vaults.is_empty() {
        kv_rotator_webhook::SourceFilter::only([vault_name])
    } else {
        kv_rotator_webhook::SourceFilter::only(&config.allowed_vaults)
    }
}

/// The webhook's authenticator from `[webhook.auth]`, its keys read now (also `kv-rotator check`).
pub(crate) fn webhook_auth(config: Option<&WebhookAuthConfig>) -> anyhow::Result<kv_rotator_webhook::Authenticator> {
    use kv_rotator_webhook::{Authenticator, EntraId, SharedKey};
    Ok(match config {
        None | Some(WebhookAuthConfig::None {}) => Authenticator::None,
        Some(WebhookAuthConfig::SharedKey { key, previous_key, query_parameter, header }) => {
            let current = read_secret("key", key)?;
            let previous = previous_key.as_ref().map(|p| read_secret("previous_key", p)).transpose()?;
            let mut shared = SharedKey::new(&current, previous.as_ref())?;
            if let Some(name) = query_parameter {
                shared = shared.with_query_parameter(name)?;
            }
            if let Some(name) = header {
                shared = shared.with_header(name)?;
            }
            Authenticator::SharedKey(Arc::new(shared))
        }
        Some(WebhookAuthConfig::EntraId {
            tenant_id,
            audience,
            app_id,
            role,
            openid_configuration_url,
            jwks_url,
            clock_skew_secs,
        }) => {
            let mut entra = entra_config(tenant_id, audience, openid_configuration_url, jwks_url, *clock_skew_secs)?;
            if let Some(app_id) = app_id {
                entra.app_id = Some(app_id.clone());
            }
            if let Some(role) = role {
                entra.role = role.clone();
            }
            Authenticator::EntraId(Arc::new(EntraId::new(entra)?))
        }
    })
}

/// An Entra ID verifier's settings (the webhook's or the admin API's): the tenant's
/// issuers, the audiences, where the signing keys are, the clock skew; the accepted
/// application and role are the caller's to set.
pub(crate) fn entra_config(
    tenant_id: &str,
    audience: &[String],
    openid_configuration_url: &Option<String>,
    jwks_url: &Option<String>,
    clock_skew_secs: Option<u64>,
) -> anyhow::Result<kv_rotator_webhook::EntraIdConfig> {
    use kv_rotator_webhook::JwksLocation;
    let mut entra = kv_rotator_webhook::EntraIdConfig::new(tenant_id, audience.to_vec())?;
    if let Some(url) = openid_configuration_url {
        entra.jwks = JwksLocation::OpenIdConfiguration(url.parse().context("openid_configuration_url")?);
    }
    if let Some(url) = jwks_url {
        entra.jwks = JwksLocation::Jwks(url.parse().context("jwks_url")?);
    }
    if let Some(secs) = clock_skew_secs {
        entra.clock_skew = Duration::from_secs(secs);
    }
    Ok(entra)
}

/// Reads a key from its environment variable or file; errors name the source, never the value.
pub(crate) fn read_secret(setting: &str, source: &SecretSource) -> anyhow::Result<SecretString> {
    let value = match (&source.env, &source.file) {
        // Taken out of the environment at startup (crate::hardening).
        (Some(env), None) => {
            return crate::hardening::secret_var(env)
                .map_err(|e| anyhow::anyhow!("{setting}: environment variable {env} {e}"))
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("{setting}: cannot read {}", path.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        _ => anyhow::bail!("{setting}: set exactly one of env or file"),
    };
    Ok(SecretString::from(value))
}
