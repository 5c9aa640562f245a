//! The admin listener: what the worker tells its operators, apart from the internet-facing
//! webhook.
//!
//! - [`router`]: the admin routes over an [`AdminState`] — `GET /metrics`
//!   ([`crate::metrics`]), `GET /healthz` (the process answers) and `GET /readyz`
//!   ([`Readiness`]), unauthenticated; with `[admin.auth]`, the authenticated admin API
//!   ([`api`]: rotation jobs, their results, the managed secrets, its OpenAPI document)
//!   and the status page over it ([`page`]: `/status`, for a browser).
//! - [`auth`]: who may call the API (static token, Entra ID app role, or none on loopback).
//! - [`jobs`]: the API's rotation jobs, in memory, followed through the engine's reports.
//! - [`client`]: `kv-rotator rotate` through a running service's API; [`proof_file`]: its
//!   reading of the proof key the service wrote.
//! - [`Readiness`]: ready while the engine takes requests off a queue at most
//!   [`QUEUE_READY_PERCENT`] full, the vault answers ([`crate::vault_health`]: judged from
//!   the service's own calls, never a probe) and the engine lease is held, when it was
//!   given one; not in standby ([`crate::standby`]).
//! - [`bind`]: the listener of `[admin]` (loopback by default), or none when disabled.
//!
//! [`crate::service`] serves it with the webhook's hardened listener
//! ([`crate::listener`]) and limits, on its own port: metrics say which secrets fail and
//! how rotations go, which is nobody's business who can merely reach the webhook. The
//! webhook keeps its own `/healthz` (a liveness probe) and answers 404 to `/metrics`.

pub mod api;
pub mod auth;
mod bearer;
pub mod client;
pub mod jobs;
pub mod page;
pub mod proof_file;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use kv_rotator_config::AdminConfig;
use kv_rotator_core::RotationRequest;
use kv_rotator_webhook::app::HEALTHZ_PATH;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::warn;

use crate::lease::LeaseGuard;
use crate::metrics::Metrics;
use crate::standby::StandbyStatus;
use crate::vault_health::VaultHealth;

/// The readiness path.
pub const READYZ_PATH: &str = "/readyz";

/// Not ready above this share of the queue's capacity, in percent: a queue that full
/// will soon refuse deliveries (the webhook's 503), so traffic is better sent elsewhere.
pub const QUEUE_READY_PERCENT: usize = 90;

/// What the admin routes read. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The registry `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// What `/readyz` answers.
    pub readiness: Readiness,
    /// The admin API, when `[admin.auth]` is set; `None`: `/api/...` answers 404.
    pub api: Option<api::ApiState>,
}

/// Whether the service can take rotation requests now: not in standby (another engine
/// holds the lease: `standby: lease held by …`), the engine is running (its end of the
/// queue is open), the queue is at most [`QUEUE_READY_PERCENT`] full (a full one makes
/// the webhook answer 503), the vault has not failed every call for longer than the
/// threshold (when given a [`VaultHealth`]), and the engine lease, if the service holds
/// one, is held (else rotations wait). A weak handle on the queue: readiness never keeps
/// the engine from draining at shutdown.
#[derive(Debug, Clone)]
pub struct Readiness {
    queue: mpsc::WeakSender<RotationRequest>,
    lease: Option<LeaseGuard>,
    standby: Option<StandbyStatus>,
    vault: Option<(VaultHealth, std::time::Duration)>,
}

impl Readiness {
    /// Readiness of the engine behind `queue`, holding `lease` if given.
    pub fn new(queue: &mpsc::Sender<RotationRequest>, lease: Option<LeaseGuard>) -> Self {
        Self { queue: queue.downgrade(), lease, standby: None, vault: None }
    }

    /// Not ready once every vault call `health` saw for at least `threshold` failed.
    pub fn with_vault_health(mut self, health: VaultHealth, threshold: std::time::Duration) -> Self {
        self.vault = Some((health, threshold));
        self
    }

    /// Requests waiting in the queue (0 once it is gone).
    pub fn queue_depth(&self) -> usize {
        self.queue.upgrade().map_or(0, |queue| queue.max_capacity() - queue.capacity())
    }

    /// Not ready while `standby` waits for the lease; then the lease it took is checked.
    pub fn with_standby(mut self, standby: StandbyStatus) -> Self {
        self.standby = Some(standby);
        self
    }

    /// Whether the engine takes requests at all: not shutting down, not in standby, running.
    pub fn takes_requests(&self) -> Result<mpsc::Sender<RotationRequest>, String> {
        let Some(queue) = self.queue.upgrade() else {
            return Err("shutting down: no more rotation requests are taken".to_owned());
        };
        if let Some(standby) = &self.standby {
            standby.check()?;
        }
        if queue.is_closed() {
            return Err("the engine is not running".to_owned());
        }
        Ok(queue)
    }

    /// `Ok` when ready, else why not.
    pub fn check(&self) -> Result<(), String> {
        let queue = self.takes_requests()?;
        let (waiting, max) = (queue.max_capacity() - queue.capacity(), queue.max_capacity());
        if waiting.saturating_mul(100) > max.saturating_mul(QUEUE_READY_PERCENT) {
            return Err(format!(
                "the rotation queue is saturated: {waiting} of {max} requests waiting (not ready above \
                 {QUEUE_READY_PERCENT} %)"
            ));
        }
        if let Some((health, threshold)) = &self.vault {
            health.check(*threshold)?;
        }
        let lease = self.lease.clone().or_else(|| self.standby.as_ref().and_then(StandbyStatus::lease));
        match lease.as_ref().map(LeaseGuard::check) {
            Some(Err(why)) => Err(format!("the engine lease is not held ({why}): rotations wait")),
            _ => Ok(()),
        }
    }
}

/// The admin routes; see the [module docs](self).
pub fn router(state: AdminState) -> Router {
    let readiness = state.readiness;
    let queue = readiness.clone();
    let metrics = crate::metrics::router_refreshing(state.metrics, move |metrics| {
        metrics.set("kv_rotator_queue_depth", &[], queue.queue_depth() as f64);
    });
    let page = state.api.clone().map(page::router).unwrap_or_default();
    let api = state.api.map(api::router).unwrap_or_default();
    Router::new()
        .route(HEALTHZ_PATH, get(|| async { "ok" }))
        .route(
            READYZ_PATH,
            get(move || {
                let answer = match readiness.check() {
                    Ok(()) => (StatusCode::OK, "ready".to_owned()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
                };
                async move { answer }
            }),
        )
        .merge(metrics)
        .merge(api)
        .merge(page)
}

/// Binds `[admin] listen` (or `listen`, which overrides it and enables the listener);
/// `None` when the admin listener is disabled. An address other than loopback is allowed
/// (the kubelet probes a pod's address) but logged: it must be kept off the ingress.
pub async fn bind(config: &AdminConfig, listen: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    let addr = match listen {
        Some(addr) => addr,
        None if config.enabled => config.listen,
        None => return Ok(None),
    };
    if !addr.ip().is_loopback() {
        warn!(%addr, "the admin listener (/metrics, /readyz) is not on loopback: keep its port off the ingress");
    }
    let listener = TcpListener::bind(addr).await.with_context(|| format!("admin.listen {addr}: cannot bind"))?;
    Ok(Some(listener))
}

/// The admin API's authentication for the listener `bound` (none: no API), from
/// `[admin.auth]` (none: no API): the static token read now, `mode = "none"` refused unless
/// the address actually bound is loopback (`--admin-listen` can move it).
pub fn api_auth(config: &AdminConfig, bound: Option<&TcpListener>) -> anyhow::Result<Option<auth::AdminAuth>> {
    let (Some(listener), Some(auth_config)) = (bound, &config.auth) else {
        if config.auth.is_some() {
            warn!("[admin.auth] is set but the admin listener is disabled: the admin API is not served");
        }
        return Ok(None);
    };
    let addr = listener.local_addr().context("admin listener")?;
    if matches!(auth_config, kv_rotator_config::AdminAuthConfig::None {}) {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "admin.auth: mode = \"none\" is only allowed on a loopback admin listener, not {addr}"
        );
        warn!(%addr, "admin.auth.mode = \"none\": anyone on this host can call the admin API and rotate secrets");
    }
    Ok(Some(auth::AdminAuth::from_config(auth_config, true)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RotationRequest {
        RotationRequest {
            vault_name: "kv".into(),
            secret_name: "s".into(),
            version: None,
            trigger: kv_rotator_core::Trigger::Sweeper,
        }
    }

    /// Serves `app` on a port the OS picks; its address.
    async fn serve(app: Router) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    async fn get(addr: &SocketAddr, path: &str) -> (StatusCode, String) {
        let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.text().await.unwrap())
    }

    #[tokio::test]
    async fn readyz_follows_the_engine_and_its_queue() {
        let (tx, mut rx) = mpsc::channel(2);
        let metrics = Arc::new(Metrics::default());
        metrics.inc("kv_rotator_sweeps_total", &[("result", "ok")]);
        let app = serve(router(AdminState { metrics, readiness: Readiness::new(&tx, None), api: None })).await;
        assert_eq!(get(&app, READYZ_PATH).await, (StatusCode::OK, "ready".to_owned()));
        assert_eq!(get(&app, HEALTHZ_PATH).await, (StatusCode::OK, "ok".to_owned()));
        assert_eq!(get(&app, "/api/secrets").await.0, StatusCode::NOT_FOUND, "no [admin.auth]: no API");
        let (status, body) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("kv_rotator_sweeps_total{result=\"ok\"} 1"), "{body}");

        // Full: the webhook would answer 503.
        tx.try_send(request()).unwrap();
        tx.try_send(request()).unwrap();
        let (status, body) = get(&app, READYZ_PATH).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: the rotation queue is saturated: 2 of 2 requests waiting (not ready above 90 %)");
        assert!(get(&app, "/metrics").await.1.contains("kv_rotator_queue_depth 2.0"));
        // Room again.
        rx.recv().await.unwrap();
        assert_eq!(get(&app, READYZ_PATH).await.0, StatusCode::OK);
        // The engine's end is gone.
        drop(rx);
        assert_eq!(get(&app, READYZ_PATH).await.1, "not ready: the engine is not running");
        // Every sender is gone (shutting down); the process still answers /healthz.
        drop(tx);
        let (status, body) = get(&app, READYZ_PATH).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("not ready: shutting down"), "{body}");
        assert_eq!(get(&app, HEALTHZ_PATH).await.0, StatusCode::OK);
    }

    #[test]
    fn a_queue_above_the_threshold_is_not_ready() {
        let (tx, _rx) = mpsc::channel(100);
        let readiness = Readiness::new(&tx, None);
        for _ in 0..90 {
            tx.try_send(request()).unwrap();
        }
        assert_eq!(readiness.check(), Ok(()), "90 % full is still ready");
        assert_eq!(readiness.queue_depth(), 90);
        tx.try_send(request()).unwrap();
        assert_eq!(
            readiness.check(),
            Err("the rotation queue is saturated: 91 of 100 requests waiting (not ready above 90 %)".to_owned())
        );
    }

    #[test]
    fn a_vault_failing_past_the_threshold_is_not_ready_until_a_call_succeeds() {
        use kv_rotator_keyvault::pipeline::TryOutcome;
        let (tx, _rx) = mpsc::channel(4);
        let health = VaultHealth::default();
        let patient = Readiness::new(&tx, None).with_vault_health(health.clone(), std::time::Duration::from_secs(3600));
        let readiness = Readiness::new(&tx, None).with_vault_health(health.clone(), std::time::Duration::ZERO);
        health.record(TryOutcome::Answered(503));
        let why = readiness.check().unwrap_err();
        assert!(why.starts_with("the vault is unreachable: every call for 0 s has failed, the last with HTTP 503"));
        assert_eq!(patient.check(), Ok(()), "failing for less than its threshold");
        health.record(TryOutcome::Answered(200));
        assert_eq!(readiness.check(), Ok(()));
    }

    #[tokio::test]
    async fn a_disabled_listener_binds_nothing_and_an_override_binds() {
        let disabled = AdminConfig { enabled: false, ..AdminConfig::default() };
        assert!(bind(&disabled, None).await.unwrap().is_none());
        let listener = bind(&disabled, Some("127.0.0.1:0".parse().unwrap())).await.unwrap().unwrap();
        assert!(listener.local_addr().unwrap().ip().is_loopback());
    }
}
