//! `kv-rotator demo`: one real rotation end to end on embedded defaults.
//!
//! Starts the dev vault (TLS, real 401 challenge), seeds the demo target, starts the
//! webhook and engine, POSTs a `SecretNearExpiry` delivery over HTTP, waits for the
//! rotation and prints a report with proof that the new password logs in and the old
//! one does not. It never prints a password.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use kv_rotator_config::{EngineConfig, WebhookConfig};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::SecretStore;
use kv_rotator_rotators::{Rotator, VerifyRequest, VerifyResponse};
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;

use super::seed::{self, DEMO_SECRET, DEMO_USER};
use crate::engine::Outcome;
use crate::service;
use crate::targets::Targets;

/// Runs the demo; an error if any step or proof fails.
pub async fn run() -> anyhow::Result<()> {
    let vault = DevVault::start(DevVaultOptions::default()).await.context("cannot start the dev vault")?;
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault)?);
    let workdir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut targets = Targets::default();
    let demo = seed::seed_demo_target(store.as_ref(), workdir.path(), &mut targets).await?;

    let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot bind the webhook")?;
    let running =
        service::start(store.clone(), targets, EngineConfig::default(), &WebhookConfig::default(), listener).await?;
    let mut reports = running.engine.subscribe();

    let latest = store.get_latest(DEMO_SECRET).await?;
    let delivery = seed::near_expiry_delivery(
        store.vault_name(),
        &vault.host(),
        DEMO_SECRET,
        &demo.initial_version,
        latest.properties.expires.unwrap_or_else(time::OffsetDateTime::now_utc),
    );
    let webhook_url = format!("http://{}/api/eventgrid", running.webhook_addr);
    let response = reqwest::Client::new()
        .post(&webhook_url)
        .header("aeg-event-type", "Notification")
        .json(&delivery)
        .send()
        .await
        .with_context(|| format!("cannot POST the event to {webhook_url}"))?;
    if !response.status().is_success() {
        bail!("the webhook answered {} to the SecretNearExpiry delivery", response.status());
    }

    let report = tokio::time::timeout(Duration::from_secs(120), reports.recv())
        .await
        .context("no rotation finished within 120 s")?
        .context("engine stopped")?;
    let Outcome::Rotated { old_version, new_version, expires } = &report.outcome else {
        bail!("rotation did not complete: {}", report.outcome);
    };

    // Proof, read back the way a consumer would: the latest version from Key Vault.
    let now_latest = store.get_latest(DEMO_SECRET).await?;
    let rotator = demo.rotator.as_ref();
    let new_ok = verify(rotator, &now_latest.value).await? == VerifyResponse::Accepted;
    let old_rejected = verify(rotator, &demo.initial_password).await? == VerifyResponse::Rejected;

    println!("kv-rotator demo — one rotation end to end");
    println!("  vault        {}", vault.endpoint());
    println!("  secret       {DEMO_SECRET} (user {DEMO_USER:?} in {})", demo.htpasswd.display());
    println!("  trigger      Microsoft.KeyVault.SecretNearExpiry via POST {webhook_url}");
    println!("  versions     {old_version} -> {new_version}");
    println!("  new expiry   {}", expires.format(&Rfc3339).unwrap_or_default());
    println!("  duration     {} ms", report.duration.as_millis());
    println!("  latest version is {new_version}: {}", yes_no(now_latest.version == *new_version));
    println!("  new password logs in: {}", yes_no(new_ok));
    println!("  old password rejected: {}", yes_no(old_rejected));

    running.shutdown().await?;
    vault.shutdown().await;
    if !(new_ok && old_rejected && now_latest.version == *new_version) {
        bail!("the rotation's proof failed (see above)");
    }
    Ok(())
}

async fn verify(rotator: &dyn Rotator, password: &secrecy::SecretString) -> anyhow::Result<VerifyResponse> {
    Ok(rotator.verify(VerifyRequest::new(DEMO_USER, password.clone())).await?)
}

fn yes_no(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "NO"
    }
}
