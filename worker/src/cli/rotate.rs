//! `kv-rotator rotate`: manual rotations, through the running service or in this process.
//!
//! - `rotate --config F SECRET...`: rotate the named secrets.
//! - `rotate --config F --all`: rotate every managed secret (tag `rotator`) — an emergency.
//! - `rotate --config F --resume`: finish every unfinished journal now.
//! - `--force`: rotate even within `engine.min_rotation_interval_secs` of the last write.
//! - `--dry-run`: print the plan only ([`super::status::dry_run`]): no lease, no write, no target.
//!
//! Each secret's latest version is read at trigger time and named in the request, so
//! triggers of the same state (a delivery, the sweeper, a second operator) converge on
//! one rotation. One line per secret on stdout; the exit code is non-zero if any failed.
//!
//! With `[admin.auth]` configured and a service answering on `[admin] listen`, named
//! secrets and `--all` go through that service's admin API ([`crate::admin::client`]): the
//! job is posted with `--reason` and `--force`, followed to its end, and printed the same
//! way; the service's engine rotates, so one engine runs. Otherwise (no `[admin.auth]`,
//! nothing answering, `--in-process`, `--resume`, `--allow-concurrent-engine`) it runs as
//! the vault's engine: it claims the engine lease ([`crate::lease`]) first and refuses to
//! run while another engine (a `serve`) holds it, unless `--allow-concurrent-engine` is
//! given; then it warns and runs without the lease.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::{SecretStore, StoreError};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::admin::client::Selection;
use crate::engine::due::DueRule;
use crate::engine::{Engine, Outcome};
use crate::lease::{self, ClaimError, LeaseGuard, LeaseTimings};
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
    /// Rotate even a secret whose latest version is younger than
    /// engine.min_rotation_interval_secs (a password that just leaked).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Run even while another engine (a running `serve`) holds the vault's engine lease.
    /// UNSAFE: two engines rotating the same secret at once can lose its password.
    #[arg(long)]
    pub allow_concurrent_engine: bool,
    /// Print the plan only (profile, account, latest version, expiry, what the engine would
    /// decide and why): no lease claimed, nothing written, no target contacted.
    #[arg(long)]
    pub dry_run: bool,
    /// Rotate in this process (claiming the engine lease) even when a service's admin API
    /// is configured: for a machine with no running service.
    #[arg(long)]
    pub in_process: bool,
    /// Why, for the audit log (sent to the service's admin API; at most 200 characters).
    /// Default: "kv-rotator rotate by $USER".
    #[arg(long)]
    pub reason: Option<String>,
    /// Names of the secrets to rotate.
    pub secrets: Vec<String>,
}

/// A manual request for `secret`, naming its latest version now: every trigger of this
/// state (a delivery, the sweeper, another operator) shares its rotation id.
pub async fn manual_request(
    store: &dyn SecretStore,
    secret: &str,
    requested_by: &str,
    force: bool,
) -> Result<RotationRequest, StoreError> {
    let latest = store.get_latest(secret).await?;
    Ok(RotationRequest {
        vault_name: store.vault_name().to_owned(),
        secret_name: secret.to_owned(),
        version: Some(latest.version),
        trigger: Trigger::Manual { requested_by: requested_by.to_owned(), force },
    })
}

/// Runs the rotations; an error if any failed.
pub async fn run(args: RotateArgs) -> anyhow::Result<()> {
    if !args.all && !args.resume && args.secrets.is_empty() {
        bail!("name at least one secret, or pass --all or --resume");
    }
    if args.dry_run {
        return super::status::dry_run(args).await;
    }
    crate::hardening::log_state();
    let config = kv_rotator_config::load(args.config.as_deref())?;
    if config.admin.auth.is_some() && !args.in_process && !args.resume && !args.allow_concurrent_engine {
        if let Some(client) = crate::admin::client::connect(&config.admin).await? {
            let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
            let reason = args.reason.clone().unwrap_or_else(|| format!("kv-rotator rotate by {user}"));
            let selection = if args.all { Selection::All } else { Selection::Named(&args.secrets) };
            return client.rotate(selection, &reason, args.force).await;
        }
    }
    let store = service::connect_store(&config.vault)?;
    let lease = claim_lease(store.clone(), args.allow_concurrent_engine, &config.lease).await?;
    let result = rotations(args, config, store, lease.clone()).await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    result
}

/// Claims the engine lease for this run; `None` when running without it was allowed.
async fn claim_lease(
    store: Arc<dyn SecretStore>,
    allow_concurrent: bool,
    config: &kv_rotator_config::LeaseConfig,
) -> anyhow::Result<Option<LeaseGuard>> {
    let timings = LeaseTimings::from_config(config)?;
    match lease::claim(store, "rotate", timings).await {
        Ok(guard) => Ok(Some(guard)),
        Err(err) if allow_concurrent => {
            warn!(
                error = %err,
                "--allow-concurrent-engine: RUNNING WITHOUT THE ENGINE LEASE; if another engine rotates the same \
                 secret at the same time, a password can be lost"
            );
            eprintln!("warning: running without the engine lease (--allow-concurrent-engine): {err}");
            Ok(None)
        }
        Err(ClaimError::Held(held)) => bail!(
            "refusing to rotate: {held}. Nothing was rotated. Hand the request to that service, stop it first, \
             or pass --allow-concurrent-engine (unsafe: two engines rotating one secret can lose its password)"
        ),
        Err(err) => Err(anyhow::Error::new(err).context("refusing to rotate without the engine lease")),
    }
}

/// The rotations themselves, while holding `lease` (if any).
async fn rotations(
    args: RotateArgs,
    config: kv_rotator_config::Config,
    store: Arc<dyn SecretStore>,
    lease: Option<LeaseGuard>,
) -> anyhow::Result<()> {
    let mut engine = Engine::new(store.clone(), Targets::from_profiles(&config.targets)?, config.engine.clone())
        .with_due_rule(DueRule::from_config(&config.engine, &config.sweeper));
    if let Some(lease) = &lease {
        engine = engine.with_lease(Arc::new(lease.clone()));
    }
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
            let request = manual_request(store.as_ref(), &name, &requested_by, args.force)
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
        let lease = lease.clone();
        tasks.spawn(async move {
            let line = match request {
                Err(err) => (false, format!("{name}: failed: {err:#}")),
                Ok(request) => {
                    let _permit = permits.acquire_owned().await.expect("never closed");
                    if let Some(Err(not_held)) = lease.as_ref().map(LeaseGuard::check) {
                        return (index, (false, format!("{name}: not rotated: {not_held}")));
                    }
                    let report = engine.rotate(request).await;
                    // Not rotated because too soon is not what the operator asked for either.
                    let ok = !matches!(report.outcome, Outcome::Failed { .. } | Outcome::TooSoon { .. });
                    (ok, format!("{name}: {}", report.outcome))
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
