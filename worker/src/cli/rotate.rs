//! `kv-rotator rotate`: manual rotations, through the running service or in this process.
//!
//! - `rotate --config F SECRET...`: rotate the named secrets.
//! - `rotate --config F --all`: rotate every managed secret (tag `rotator`) — an emergency.
//! - `rotate --config F --tag host=db1`: the managed secrets carrying every given tag (the
//!   secrets behind a compromised host).
//! - `rotate --config F --resume`: finish every unfinished journal now.
//! - `--force`: rotate even within `engine.min_rotation_interval_secs` of the last write.
//! - `--concurrency N`: at most N rotations at once (default: `engine.concurrency`).
//! - `--dry-run`: print the plan only ([`super::status::dry_run`]): no lease, no write, no target.
//!
//! Each secret's latest version is read at trigger time and named in the request, so
//! triggers of the same state (a delivery, the sweeper, a second operator) converge on
//! one rotation. In this process, the outcomes are published to `[notifications]` as the
//! service publishes them, and the run waits (at most [`crate::notify::SHUTDOWN_FLUSH`])
//! for their delivery before it exits, saying on stderr how many were not delivered;
//! `--dry-run` publishes nothing. What it prints ([`super::progress`]): a progress bar on a terminal, JSON
//! lines otherwise, or `--output text`; the exit code is non-zero if any failed.
//!
//! With `[admin.auth]` configured and a service answering on `[admin] listen`, named
//! secrets and `--all` go through that service's admin API ([`crate::admin::client`]): the
//! job is posted with `--reason` and `--force`, followed to its end, and printed the same
//! way; the service's engine rotates, so one engine runs. Otherwise (no `[admin.auth]`,
//! nothing answering, `--in-process`, `--resume`, `--allow-concurrent-engine`) it runs as
//! the vault's engine: it claims the engine lease ([`crate::lease`]) first and refuses to
//! run while another engine (a `serve`) holds it, unless `--allow-concurrent-engine` is
//! given; then it warns and runs without the lease.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::{SecretStore, StoreError};
use tokio::sync::Semaphore;
use tracing::warn;

use super::progress::{OutputFormat, Progress};
use crate::admin::client::Selection;
use crate::admin::jobs::JobSecret;
use crate::engine::due::{DueRule, Windows};
use crate::engine::Engine;
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
    #[arg(long, conflicts_with_all = ["resume", "secrets", "tag"])]
    pub all: bool,
    /// Rotate the managed secrets carrying this tag, as KEY=VALUE; repeat it to require
    /// several (for example every secret of a compromised host: --tag host=db1).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_tag, conflicts_with_all = ["resume", "secrets"])]
    pub tag: Vec<(String, String)>,
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
    /// At most this many rotations at once (1-256). Default: engine.concurrency in this
    /// process; through the service, its engine's limit only.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: Option<u16>,
    /// auto: a progress bar on a terminal, JSON lines otherwise; text: one line per secret
    /// and a summary table; json: one JSON object per secret as it ends, then a summary.
    #[arg(long, value_enum, default_value_t = OutputFormat::Auto)]
    pub output: OutputFormat,
    /// Names of the secrets to rotate.
    pub secrets: Vec<String>,
}

/// `KEY=VALUE` of `--tag`.
fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?}: expected KEY=VALUE, for example host=db1")),
    }
}

impl RotateArgs {
    /// The tags of `--tag`, which a secret must all carry.
    pub fn tags(&self) -> BTreeMap<String, String> {
        self.tag.iter().cloned().collect()
    }

    /// The secrets named, or the managed ones `--all` or `--tag` select, read from `store` now.
    pub async fn selected(&self, store: &dyn SecretStore) -> anyhow::Result<Vec<String>> {
        if self.all || !self.tag.is_empty() {
            sweeper::managed_secrets(store, &self.tags()).await.context("cannot list the vault's secrets")
        } else {
            Ok(self.secrets.clone())
        }
    }
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
    if !args.all && !args.resume && args.secrets.is_empty() && args.tag.is_empty() {
        bail!("name at least one secret, or pass --tag KEY=VALUE, --all or --resume");
    }
    if args.dry_run {
        return super::status::dry_run(args).await;
    }
    crate::hardening::log_state();
    let config = kv_rotator_config::load(args.config.as_deref())?;
    if config.admin.auth.is_some() && !args.in_process && !args.resume && !args.allow_concurrent_engine {
        if let Some(mut client) = crate::admin::client::connect(&config.admin).await? {
            let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
            let reason = args.reason.clone().unwrap_or_else(|| format!("kv-rotator rotate by {user}"));
            let tags = args.tags();
            let selection = match () {
                _ if args.all => Selection::All,
                _ if !tags.is_empty() => Selection::Tagged(&tags),
                _ => Selection::Named(&args.secrets),
            };
            let job = crate::admin::client::JobRequest {
                selection,
                reason: &reason,
                force: args.force,
                concurrency: args.concurrency,
            };
            return client.rotate(job, args.output).await;
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
    crate::service::warn_if_target_lag_is_short(&config.engine);
    let mut engine = Engine::new(store.clone(), Targets::from_profiles(&config.targets)?, config.engine.clone())
        .with_due_rule(
            DueRule::from_config(&config.engine, &config.sweeper)
                .with_windows(Windows::from_config(&config.targets, &config.sweeper)),
        );
    if let Some(lease) = &lease {
        engine = engine.with_lease(Arc::new(lease.clone()));
    }
    // Consumers hear of an emergency rotation as of a scheduled one.
    let notifier = crate::notify::Sink::from_config(&config.notifications, &config.vault)?
        .map(|sink| sink.start(engine.metrics()));
    if let Some(notifier) = &notifier {
        engine = engine.with_notifier(notifier.clone());
    }
    let requested_by = format!("cli {}", std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned()));

    let requests: Vec<(String, anyhow::Result<RotationRequest>)> = if args.resume {
        let scan = sweeper::scan(store.as_ref(), None).await.context("cannot list the vault's journal records")?;
        scan.requests.into_iter().map(|(r, _)| (r.secret_name.clone(), Ok(r))).collect()
    } else {
        let mut requests = Vec::new();
        for name in args.selected(store.as_ref()).await? {
            let request = manual_request(store.as_ref(), &name, &requested_by, args.force)
                .await
                .with_context(|| format!("cannot read secret {name:?}"));
            requests.push((name, request));
        }
        requests
    };
    let names: Vec<String> = requests.iter().map(|(name, _)| name.clone()).collect();
    let mut progress = Progress::start(args.output, &names);
    let concurrency = args.concurrency.map_or(config.engine.concurrency, usize::from);
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (name, request)) in requests.into_iter().enumerate() {
        let engine = engine.clone();
        let permits = permits.clone();
        let lease = lease.clone();
        tasks.spawn(async move {
            let request = match request {
                Err(err) => return (index, JobSecret::unreadable(&name, format!("{err:#}"))),
                Ok(request) => request,
            };
            let _permit = permits.acquire_owned().await.expect("never closed");
            if let Some(Err(not_held)) = lease.as_ref().map(LeaseGuard::check) {
                let why = not_held.to_string();
                return (index, JobSecret::not_run(&name, request.version, format!("not rotated: {why}"), why));
            }
            let mut entry = JobSecret::queued(&name, request.version.as_deref().unwrap_or_default());
            entry.finish(&engine.rotate(request).await.outcome);
            (index, entry)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (index, entry) = done.context("rotation task")?;
        progress.ended(index, &entry);
    }
    if let Some(notifier) = &notifier {
        notifier.flush(crate::notify::SHUTDOWN_FLUSH).await;
    }
    let result = progress.finish();
    if let Some(tally) = notifier.map(|n| n.tally()).filter(|t| t.undelivered() > 0) {
        eprintln!("warning: {}", undelivered_notifications(&tally));
    }
    result
}

/// What the operator is told when notifications were not all delivered.
fn undelivered_notifications(tally: &crate::notify::Tally) -> String {
    let mut why = Vec::new();
    if tally.failed > 0 {
        why.push(format!("{} failed (see the log)", tally.failed));
    }
    if tally.dropped > 0 {
        why.push(format!("{} dropped (notifications.queue_capacity full)", tally.dropped));
    }
    if tally.queued > 0 {
        let secs = crate::notify::SHUTDOWN_FLUSH.as_secs();
        why.push(format!("{} still queued after {secs} s", tally.queued));
    }
    format!(
        "{} of {} notification(s) to [notifications.sink] not delivered: {}",
        tally.undelivered(),
        tally.published,
        why.join(", ")
    )
}
