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
    match &config.webhook.auth {
        None => anyhow::bail!(
            "webhook.auth is not set: `serve` needs [webhook.auth] mode = \"entra-id\" or \"shared-key\" \
             (or mode = \"none\" behind an ingress that authenticates Event Grid); see README \"Securing the webhook\""
        ),
        Some(kv_rotator_config::WebhookAuthConfig::None {}) => warn!(
            "webhook.auth.mode = \"none\": the webhook accepts UNAUTHENTICATED deliveries; \
             only run it so behind an ingress that authenticates Event Grid"
        ),
        Some(_) => {}
    }
    let background = service::Background { sweeper: Some(config.sweeper.clone()), alerts: config.alerts.clone() };
    let running =
        service::start_with(store, targets, config.engine.clone(), &config.webhook, background, listener).await?;
    running.run_until(service::shutdown_signal()).await
}
