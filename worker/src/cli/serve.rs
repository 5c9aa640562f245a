//! `kv-rotator serve`: the service against the configured vault.
//!
//! It first claims the vault's engine lease ([`crate::lease`]). While another live engine
//! holds it, `serve` waits in standby ([`crate::standby`]: listening, not ready, claiming
//! again every quarter TTL) and takes over when the lease is free; with `[lease] standby
//! = false` it refuses to start instead. It keeps the lease for its lifetime and releases
//! it when it stops.

use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::warn;

use crate::lease::{self, ClaimError, LeaseGuard, LeaseTimings};
use crate::service;
use crate::standby::Standby;
use crate::targets::Targets;

/// Loads the configuration, connects, and serves until Ctrl-C or SIGTERM.
pub async fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    crate::hardening::log_state();
    let config = kv_rotator_config::load(config_path.as_deref())?;
    if config.targets.is_empty() {
        warn!("no [targets.*] profile configured: every managed secret will fail to rotate");
    }
    let store = service::connect_store(&config.vault)?;
    let targets = Targets::from_profiles(&config.targets)?;
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
    // Before the lease is claimed: a SIGTERM while starting or in standby stops cleanly.
    let shutdown = service::shutdown_signal();
    let timings = LeaseTimings::from_config(&config.lease)?;
    let (lease, standby) = match lease::claim(store.clone(), "serve", timings).await {
        Ok(lease) => (Some(lease), None),
        Err(ClaimError::Held(held)) if config.lease.standby => {
            (None, Some(Standby::new(store.clone(), "serve", timings, &held)))
        }
        Err(err) => return Err(refusal(err)),
    };
    let started = async {
        let listener = TcpListener::bind(config.webhook.listen)
            .await
            .with_context(|| format!("webhook.listen {}: cannot bind", config.webhook.listen))?;
        let admin = crate::admin::bind(&config.admin, None).await?;
        let background = service::Background {
            sweeper: Some(config.sweeper.clone()),
            alerts: config.alerts.clone(),
            notifications: crate::notify::Sink::from_config(&config.notifications, &config.vault)?,
            lease: lease.clone(),
            standby,
            admin_auth: crate::admin::api_auth(&config.admin, admin.as_ref())?,
            admin,
            vault_failing_for: Some(std::time::Duration::from_secs(config.admin.vault_failing_secs)),
        };
        service::start_with(store, targets, config.engine.clone(), &config.webhook, background, listener).await
    };
    match started.await {
        Ok(running) => running.run_until(shutdown).await,
        Err(err) => {
            if let Some(lease) = lease {
                lease.release().await;
            }
            Err(err)
        }
    }
}

/// Claims the engine lease for a service (`serve`, `dev`); the error names the holder
/// when another engine has it.
pub(crate) async fn claim_lease(
    store: std::sync::Arc<dyn kv_rotator_keyvault::SecretStore>,
    command: &str,
    config: &kv_rotator_config::LeaseConfig,
) -> anyhow::Result<LeaseGuard> {
    let timings = LeaseTimings::from_config(config)?;
    lease::claim(store, command, timings).await.map_err(refusal)
}

/// Why a service does not start without the lease, naming the holder when there is one.
fn refusal(err: ClaimError) -> anyhow::Error {
    match err {
        ClaimError::Held(held) => anyhow::anyhow!(
            "refusing to start: {held}. One engine per vault: stop that one first, or wait until its lease lapses"
        ),
        other => anyhow::Error::new(other).context("refusing to start without the engine lease"),
    }
}
