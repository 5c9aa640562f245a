//! The rotation engine: the only place that knows the rotation protocol.
//!
//! - [`Engine`]: shared state (store, targets, settings, locks) and [`Engine::rotate`],
//!   which runs one request to its end with retries.
//! - [`protocol`]: one attempt of the protocol of `docs/architecture.md` — fence,
//!   create (journal), set, test, finish.
//! - [`journal`]: rotation ids and journal record naming.
//! - [`locks`]: per-secret mutual exclusion.
//! - [`Engine::run`]: takes requests off the queue, bounded by `engine.concurrency`,
//!   and publishes a [`RotationReport`] for each.

pub mod journal;
pub mod locks;
pub mod protocol;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use kv_rotator_config::EngineConfig;
use kv_rotator_keyvault::{SecretStore, StoreError};
use kv_rotator_rotators::RotatorError;
use kv_rotator_webhook::RotationRequest;
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc, Semaphore};
use tracing::{error, info, warn, Instrument};

use crate::targets::Targets;
use locks::KeyedLocks;

/// Why an attempt failed, and whether another attempt can help.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// Key Vault failed.
    #[error("key vault: {0}")]
    Store(#[from] StoreError),
    /// The target failed.
    #[error("target {profile}: {source}")]
    Target {
        /// Target profile name.
        profile: String,
        /// The rotator's (sanitized) error.
        source: RotatorError,
    },
    /// The secret or its configuration is not usable as it is; an operator must act.
    #[error("{0}")]
    Misconfigured(String),
    /// The pending password was set but the target does not accept it.
    #[error("target {profile} does not accept the new password after setting it")]
    TestFailed {
        /// Target profile name.
        profile: String,
    },
}

impl RotationError {
    /// Whether retrying the rotation later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RotationError::Store(e) => e.is_transient(),
            RotationError::Target { source, .. } => source.is_transient(),
            RotationError::Misconfigured(_) => false,
            // Replication lag or a pooler may make a fresh password fail for a moment.
            RotationError::TestFailed { .. } => true,
        }
    }
}

/// How one rotation request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new version was written.
    Rotated {
        /// The version rotated away from.
        old_version: String,
        /// The version written.
        new_version: String,
        /// Its expiry.
        expires: OffsetDateTime,
    },
    /// The latest version already carries this rotation's id: nothing to do.
    AlreadyRotated {
        /// The latest version.
        version: String,
    },
    /// The request named a version that is no longer the latest.
    Stale {
        /// Version the request named.
        requested: String,
        /// The latest version.
        latest: String,
    },
    /// The secret carries no `rotator` tag: it is not managed by kv-rotator.
    NotManaged,
    /// The request names another vault than the one this worker manages.
    OtherVault,
    /// Every attempt failed; the old password keeps working.
    Failed {
        /// The last error (sanitized).
        error: String,
        /// Attempts made.
        attempts: u32,
    },
}

/// The audit record of one rotation request.
#[derive(Debug, Clone)]
pub struct RotationReport {
    /// The request.
    pub request: RotationRequest,
    /// The rotation id, when the request got as far as computing it.
    pub rotation_id: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time from dequeue to the end.
    pub duration: Duration,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Rotated { old_version, new_version, .. } => write!(f, "rotated {old_version} -> {new_version}"),
            Outcome::AlreadyRotated { version } => write!(f, "already rotated (latest {version})"),
            Outcome::Stale { requested, latest } => write!(f, "stale request for {requested}; latest is {latest}"),
            Outcome::NotManaged => f.write_str("not managed (no rotator tag)"),
            Outcome::OtherVault => f.write_str("request for another vault"),
            Outcome::Failed { error, attempts } => write!(f, "failed after {attempts} attempt(s): {error}"),
        }
    }
}

/// The rotation engine.
#[derive(Debug, Clone)]
pub struct Engine {
    store: Arc<dyn SecretStore>,
    targets: Arc<Targets>,
    settings: EngineConfig,
    locks: KeyedLocks,
    reports: broadcast::Sender<RotationReport>,
}

impl Engine {
    /// An engine over `store` and `targets`.
    pub fn new(store: Arc<dyn SecretStore>, targets: Targets, settings: EngineConfig) -> Self {
        let (reports, _) = broadcast::channel(1024);
        Self { store, targets: Arc::new(targets), settings, locks: KeyedLocks::default(), reports }
    }

    /// Reports of every finished request, for the demo, tests and future alert sinks.
    pub fn subscribe(&self) -> broadcast::Receiver<RotationReport> {
        self.reports.subscribe()
    }

    /// Takes requests off `queue` until it closes, at most `engine.concurrency` at once.
    pub async fn run(self, mut queue: mpsc::Receiver<RotationRequest>) {
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(request) = queue.recv().await {
            let permit = permits.clone().acquire_owned().await.expect("semaphore never closes");
            let engine = self.clone();
            tasks.spawn(async move {
                let _permit = permit;
                engine.rotate(request).await;
            });
            // Reap finished tasks so the set does not grow with the queue's history.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Runs one request to its end: attempts with jittered exponential backoff while the
    /// failure is transient, up to `engine.max_attempts`. Publishes and returns the report.
    pub async fn rotate(&self, request: RotationRequest) -> RotationReport {
        let span = tracing::info_span!("rotation", vault = %request.vault_name, secret = %request.secret_name, trigger = %request.trigger);
        async {
            let started = Instant::now();
            let _guard = self.locks.lock(&request.secret_name.to_ascii_lowercase()).await;
            let mut attempts = 0u32;
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(self.settings.initial_backoff_ms))
                .with_max_delay(Duration::from_millis(self.settings.max_backoff_ms))
                .with_max_times(self.settings.max_attempts.saturating_sub(1) as usize)
                .with_jitter();
            let result = (|| {
                attempts += 1;
                protocol::attempt(self, &request)
            })
            .retry(backoff)
            .when(RotationError::is_transient)
            .notify(|err, delay| warn!(error = %err, retry_in = ?delay, "rotation attempt failed; retrying"))
            .await;
            let (rotation_id, outcome) = match result {
                Ok(done) => (done.rotation_id, done.outcome),
                Err(err) => {
                    error!(error = %err, attempts, "rotation failed; the current password stays in place");
                    (None, Outcome::Failed { error: err.to_string(), attempts })
                }
            };
            let report = RotationReport { request: request.clone(), rotation_id, outcome, duration: started.elapsed() };
            info!(outcome = %report.outcome, rotation_id = report.rotation_id.as_deref().unwrap_or("-"), duration_ms = report.duration.as_millis() as u64, "rotation request finished");
            // No subscriber is fine: reports are also in the log.
            let _ = self.reports.send(report.clone());
            report
        }
        .instrument(span)
        .await
    }
}
