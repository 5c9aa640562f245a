//! The service's HTTP listeners — the webhook and the admin listener ([`crate::admin`]) —
//! hardened against abuse before authentication runs.
//!
//! `axum::serve` runs hyper without a timer, which turns off hyper's header-read timeout,
//! and it caps neither connections nor shutdown. [`serve`] instead drives each accepted
//! socket with hyper-util's connection builder (HTTP/1.1 only: no HTTP/2 prior-knowledge
//! connections, which no header timeout would cover):
//! - a header-read timeout (with tokio's timer): a connection that has not sent a whole
//!   request head within it, including an idle keep-alive one, is closed;
//! - a whole-request timeout (`tower_http`'s [`TimeoutLayer`]): body reading and handling
//!   past it answer 408 (the webhook answers its own, inside its delivery metrics, so
//!   they are counted: [`Limits::timed_by_app`]);
//! - a connection cap: a socket is accepted only once one of `max_connections` permits is
//!   free, so further clients wait in the kernel's listen backlog;
//! - a bounded graceful shutdown: on `stop`, accepting ends, open connections are asked to
//!   finish their request and close, and those still open after the grace period are
//!   dropped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use kv_rotator_config::WebhookConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower_http::timeout::TimeoutLayer;
use tracing::{debug, warn};

/// The listener's limits, from `[webhook]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to receive a request's head (and the longest a keep-alive connection idles).
    pub header_read_timeout: Duration,
    /// Time for a whole request, body and handling included.
    pub request_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long shutdown waits for open connections.
    pub shutdown_grace: Duration,
    /// Whether handlers are told the peer's address (axum's `ConnectInfo`): the admin
    /// listener's status page serves loopback peers only; the webhook's hot path needs no
    /// such extension.
    pub peer_in_requests: bool,
    /// Whether the app bounds its requests by `request_timeout` itself (the webhook's
    /// delivery routes, so each 408 is counted as a delivery outcome): the listener's own
    /// timeout then comes a second later, a backstop for every other route (and for an
    /// app that lost its own), never answering first and uncounted.
    pub timed_by_app: bool,
}

/// How much later than an app that times its own requests ([`Limits::timed_by_app`]) the
/// listener's timeout answers.
const BACKSTOP_AFTER_APP: Duration = Duration::from_secs(1);

impl Limits {
    /// The limits configured in `[webhook]` (zeros, refused by the loader, count as 1).
    pub fn from_config(config: &WebhookConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs.max(1)),
            request_timeout: Duration::from_secs(config.request_timeout_secs.max(1)),
            max_connections: config.max_connections.max(1),
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs.max(1)),
            peer_in_requests: false,
            timed_by_app: false,
        }
    }
}

/// Serves `app` on `listener` within `limits` until `stop` completes, then shuts down
/// within the grace period. Returns once every connection is closed or dropped. `name`
/// (`webhook`, `admin`) tells the listeners apart in logs.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let timeout = match limits.timed_by_app {
        true => limits.request_timeout + BACKSTOP_AFTER_APP,
        false => limits.request_timeout,
    };
    let app = app.layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout));
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = &mut stop => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (socket, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Such as EMFILE: back off rather than spin.
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let tell_peer = limits.peer_in_requests;
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: axum::http::Request<_>| {
                if tell_peer {
                    request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                }
                request
            },
        ));
        let connection = builder.serve_connection(TokioIo::new(socket), service).into_owned();
        let watched = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(e) = watched.await {
                debug!(listener = name, %peer, error = %e, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    let open = graceful.count();
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        warn!(listener = name, open, grace = ?limits.shutdown_grace, "connections still open after the grace period: closed");
    }
    connections.shutdown().await;
    Ok(())
}
