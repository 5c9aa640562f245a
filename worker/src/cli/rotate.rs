//! `kv-rotator rotate`: manual rotations, run in this process.
//!
//! - `rotate --config F SECRET...`: rotate the named secrets.
//! - `rotate --config F --all`: rotate every managed secret (tag `rotator`) — an emergency.
//! - `rotate --config F --resume`: finish every unfinished journal now.
//!
//! Each secret's latest version is read at trigger time and named in the request, so
//! triggers of the same state (a delivery, the sweeper, a second operator) converge on
//! one rotation. One line per secret on stdout; the exit code is non-zero if any failed.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use kv_rotator_keyvault::{SecretStore, StoreError};
use kv_rotator_webhook::{RotationRequest, Trigger};
use tokio::sync::Semaphore;

use crate::engine::{Engine, Outcome};
use crate::service;
use crate::sweeper;
use crate::targets::Targets;

/// Options of `kv-rotator rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Configuration file (TOML); `KV_ROTATOR_*` environment variables override it.
    #[arg(long, short, env = "KV_ROTATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Rotate every managed secret (tag `rotator`).
    #[arg(long, conflicts_with_all = ["resume", "secrets"])]
    pub all: bool,
    /// Finish every unfinished rotation (journal record) instead.
    #[arg(long, conflicts_with = "secrets")]
    pub resume: bool,
    /// Names of the secrets to rotate.
    pub secrets: Vec<String>,
}

/// A manual request for `secret`, naming its latest version now: every trigger of this
/// state (a delivery, the sweeper, another operator) shares its rotation id.
pub async fn manual_request(
    store: &dyn SecretStore,
    secret: &str,
    requested_by: &str,
) -> Result<RotationRequest, StoreError> {
    let latest = store.get_latest(secret).await?;
    Ok(RotationRequest {
        vault_name: store.vault_name().to_owned(),
        secret_name: secret.to_owned(),
        version: Some(latest.version),
        trigger: Trigger::Manual { requested_by: requested_by.to_owned() },
    })
}

/// Runs the rotations; an error if any failed.
pub async fn run(args: RotateArgs) -> anyhow::Result<()> {
    if !args.all && !args.resume && args.secrets.is_empty() {
        bail!("name at least one secret, or pass --all or --resume");
    }
    let config = kv_rotator_config::load(args.config.as_deref())?;
    let store = service::connect_store(&config.vault)?;
    let engine = Engine::new(store.clone(), Targets::from_profiles(&config.targets), config.engine.clone());
    let requested_by = format!("cli {}", std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned()));

    let requests: Vec<(String, anyhow::Result<RotationRequest>)> = if args.resume {
        let scan = sweeper::scan(store.as_ref(), None).await.context("cannot list the vault's journal records")?;
        scan.requests.into_iter().map(|(r, _)| (r.secret_name.clone(), Ok(r))).collect()
    } else {
        let names = if args.all {
            sweeper::managed_secrets(store.as_ref()).await.context("cannot list the vault's secrets")?
        } else {
            args.secrets.clone()
        };
        let mut requests = Vec::new();
        for name in names {
            let request = manual_request(store.as_ref(), &name, &requested_by)
                .await
                .with_context(|| format!("cannot read secret {name:?}"));
            requests.push((name, request));
        }
        requests
    };
    if requests.is_empty() {
        println!("nothing to do");
        return Ok(());
    }

    let permits = Arc::new(Semaphore::new(config.engine.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (name, request)) in requests.into_iter().enumerate() {
        let engine = engine.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let line = match request {
                Err(err) => (false, format!("{name}: failed: {err:#}")),
                Ok(request) => {
                    let _permit = permits.acquire_owned().await.expect("never closed");
                    let report = engine.rotate(request).await;
                    (!matches!(report.outcome, Outcome::Failed { .. }), format!("{name}: {}", report.outcome))
                }
            };
            (index, line)
        });
    }
    let mut lines = Vec::new();
    while let Some(done) = tasks.join_next().await {
        lines.push(done.context("rotation task")?);
    }
    lines.sort_by_key(|(index, _)| *index);
    let failed = lines.iter().filter(|(_, (ok, _))| !ok).count();
    for (_, (_, line)) in &lines {
        println!("{line}");
    }
    if failed > 0 {
        bail!("{failed} of {} rotation(s) failed", lines.len());
    }
    Ok(())
}
