//! `kv-rotator serve`: the service against the configured vault.

use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::warn;

use crate::service;
use crate::targets::Targets;

/// Loads the configuration, connects, and serves until Ctrl-C or SIGTERM.
pub async fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = kv_rotator_config::load(config_path.as_deref())?;
    if config.targets.is_empty() {
        warn!("no [targets.*] profile configured: every managed secret will fail to rotate");
    }
    let store = service::connect_store(&config.vault)?;
    let targets = Targets::from_profiles(&config.targets);
    let listener = TcpListener::bind(config.webhook.listen)
        .await
        .with_context(|| format!("webhook.listen {}: cannot bind", config.webhook.listen))?;
    warn!("the webhook accepts unauthenticated deliveries: put it behind an authenticating ingress until Entra ID / shared-key auth lands");
    let running = service::start(store, targets, config.engine.clone(), &config.webhook, listener).await?;
    running.run_until(service::shutdown_signal()).await
}
