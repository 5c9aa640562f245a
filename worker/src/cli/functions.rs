//! `kv-rotator functions`: the Azure Functions custom handler ([`crate::functions`]).
//!
//! The Functions host starts it with the arguments of `deploy/functions/host.json` and
//! the port in `FUNCTIONS_CUSTOMHANDLER_PORT`, then invokes the `eventgrid`, `rotate` and
//! `sweep` functions on `127.0.0.1`. It claims no engine lease at startup: an invocation
//! with something to rotate claims it, and it is released once the instance is idle, so
//! a second instance of the app can take over (see [`crate::functions::LeaseKeeper`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::functions::{Deadlines, Handler, HandlerParts, LeaseKeeper};
use crate::lease::LeaseTimings;
use crate::listener::Limits;
use crate::metrics::Metrics;
use crate::service;
use crate::targets::Targets;

/// Default of `--event-deadline-secs`: under Event Grid's 30 s response timeout.
pub const DEFAULT_EVENT_DEADLINE_SECS: u64 = 25;
/// Default of `--sweep-deadline-secs`: under `deploy/functions/host.json`'s functionTimeout (10 min).
pub const DEFAULT_SWEEP_DEADLINE_SECS: u64 = 540;

/// Options of `kv-rotator functions`.
#[derive(Debug, Args)]
pub struct FunctionsArgs {
    /// Configuration file (TOML); `KV_ROTATOR_*` environment variables (app settings) override it.
    #[arg(long, short, env = "KV_ROTATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Port to serve the Functions host on, on 127.0.0.1 (the host sets FUNCTIONS_CUSTOMHANDLER_PORT).
    #[arg(long, env = "FUNCTIONS_CUSTOMHANDLER_PORT")]
    pub port: u16,
    /// How long an Event Grid or HTTP invocation waits for its rotations; keep it under Event
    /// Grid's 30 s response timeout. A rotation still running goes on in the instance.
    #[arg(long, default_value_t = DEFAULT_EVENT_DEADLINE_SECS, value_name = "SECS")]
    pub event_deadline_secs: u64,
    /// How long a timer (sweep) invocation waits for its rotations; keep it under host.json's
    /// functionTimeout.
    #[arg(long, default_value_t = DEFAULT_SWEEP_DEADLINE_SECS, value_name = "SECS")]
    pub sweep_deadline_secs: u64,
    /// Release the engine lease after this long without an invocation that needs it, so
    /// another instance can take over.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub lease_idle_secs: u64,
}

/// Loads the configuration, connects, and serves the Functions host until Ctrl-C or SIGTERM.
pub async fn run(args: FunctionsArgs) -> anyhow::Result<()> {
    crate::hardening::log_state();
    let config = kv_rotator_config::load(args.config.as_deref())?;
    if config.targets.is_empty() {
        warn!("no [targets.*] profile configured: every managed secret will fail to rotate");
    }
    let store = service::connect_store(&config.vault)?;
    let targets = Targets::from_profiles(&config.targets)?;
    let timings = LeaseTimings::from_config(&config.lease)?;
    let metrics = Arc::new(Metrics::default());
    let mut engine =
        service::build_engine(store.clone(), targets, config.engine.clone(), &config.sweeper, &config.alerts, metrics)?;
    // Outcomes only: an instance's memory is too short-lived for once-per-stage warnings.
    if let Some(sink) = crate::notify::Sink::from_config(&config.notifications, &config.vault)? {
        let notifier = sink.start(engine.metrics());
        engine = engine.with_notifier(notifier);
    }
    let deadlines = Deadlines {
        event: Duration::from_secs(args.event_deadline_secs),
        sweep: Duration::from_secs(args.sweep_deadline_secs),
    };
    let handler = Handler::new(HandlerParts {
        engine,
        keeper: LeaseKeeper::new(store.clone(), timings, Duration::from_secs(args.lease_idle_secs)),
        source: service::source_filter(&config.webhook, store.vault_name()),
        sweeper: config.sweeper.clone(),
        concurrency: config.engine.concurrency,
        deadlines,
        // An event is at most Event Grid's 1 MiB; the host may encode it twice as text.
        max_body_bytes: config.webhook.max_body_bytes.saturating_mul(4),
    });

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let listener =
        TcpListener::bind(addr).await.with_context(|| format!("cannot bind {addr} (FUNCTIONS_CUSTOMHANDLER_PORT)"))?;
    // `[webhook]`'s limits, except that an invocation may wait for its rotations.
    let mut limits = Limits::from_config(&config.webhook);
    limits.request_timeout = limits.request_timeout.max(deadlines.event.max(deadlines.sweep) + Duration::from_secs(30));
    info!(%addr, vault = %store.vault_name(), "Azure Functions custom handler listening");
    let served = crate::listener::serve(
        "functions",
        listener,
        crate::functions::router(handler.clone()),
        limits,
        service::shutdown_signal(),
    )
    .await;
    handler.shutdown(limits.shutdown_grace).await;
    served.context("functions listener")
}
