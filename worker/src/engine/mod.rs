//! The rotation engine: the only place that knows the rotation protocol.
//!
//! - [`Engine`]: shared state (store, targets, settings, locks, limits, metrics, alert
//!   sink) and [`Engine::rotate`], which runs one request to its end with retries, then
//!   reports: an audit record (log and metrics), and on failure a tag on the secret, an
//!   error log and an alert.
//! - [`protocol`]: one attempt of the protocol of `docs/architecture.md` — fence,
//!   create (journal), set, test, finish.
//! - [`planner`]: the protocol's pure decisions (fence, journal, stale journals).
//! - [`journal`]: rotation ids, journal record naming and tags.
//! - [`locks`]: per-secret mutual exclusion.
//! - [`failpoints`]: step-boundary pauses for the crash suite (feature `failpoints`).
//! - [`Engine::run`]: takes requests off the queue, bounded by `engine.concurrency`
//!   (and `engine.target_concurrency` per profile), and publishes a [`RotationReport`].

pub mod failpoints;
pub mod journal;
pub mod locks;
pub mod planner;
pub mod protocol;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use kv_rotator_config::EngineConfig;
use kv_rotator_keyvault::{PropertiesUpdate, SecretStore, StoreError};
use kv_rotator_rotators::RotatorError;
use kv_rotator_webhook::{RotationRequest, Trigger};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{error, info, warn, Instrument};

use crate::alerts::{Alert, WebhookSink};
use crate::metrics::Metrics;
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

impl Outcome {
    /// A short, stable name for metrics labels and audit records.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Rotated { .. } => "rotated",
            Outcome::AlreadyRotated { .. } => "already_rotated",
            Outcome::Stale { .. } => "stale",
            Outcome::NotManaged => "not_managed",
            Outcome::OtherVault => "other_vault",
            Outcome::Failed { .. } => "failed",
        }
    }
}

/// One protocol step of one attempt, timed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Step name: `fence`, `journal-read`, `create`, `set`, `test`, `finish`.
    pub step: &'static str,
    /// How long it took.
    pub duration: Duration,
    /// Whether it succeeded.
    pub ok: bool,
}

/// The steps of every attempt of one request, in order.
#[derive(Debug, Default)]
pub struct StepLog {
    attempt: std::sync::atomic::AtomicU32,
    steps: Mutex<Vec<StepRecord>>,
}

impl StepLog {
    fn next_attempt(&self) -> u32 {
        self.attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }

    fn record(&self, step: &'static str, duration: Duration, ok: bool) {
        let attempt = self.attempt.load(std::sync::atomic::Ordering::SeqCst);
        self.steps.lock().expect("step log poisoned").push(StepRecord { attempt, step, duration, ok });
    }

    fn take(&self) -> (u32, Vec<StepRecord>) {
        let attempts = self.attempt.load(std::sync::atomic::Ordering::SeqCst);
        (attempts, std::mem::take(&mut *self.steps.lock().expect("step log poisoned")))
    }
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
    /// Attempts made.
    pub attempts: u32,
    /// Every step of every attempt, timed.
    pub steps: Vec<StepRecord>,
}

impl RotationReport {
    /// The structured audit record (also logged at info under target `kv_rotator::audit`).
    /// Names, versions and durations only: never a password.
    pub fn audit_json(&self) -> serde_json::Value {
        let (old_version, new_version) = match &self.outcome {
            Outcome::Rotated { old_version, new_version, .. } => (Some(old_version.clone()), Some(new_version.clone())),
            Outcome::AlreadyRotated { version } => (None, Some(version.clone())),
            Outcome::Stale { requested, latest } => (Some(requested.clone()), Some(latest.clone())),
            _ => (self.request.version.clone(), None),
        };
        serde_json::json!({
            "trigger": self.request.trigger.to_string(),
            "triggerKind": trigger_kind(&self.request.trigger),
            "vault": self.request.vault_name,
            "secret": self.request.secret_name,
            "requestedVersion": self.request.version,
            "rotationId": self.rotation_id,
            "oldVersion": old_version,
            "newVersion": new_version,
            "outcome": self.outcome.kind(),
            "detail": self.outcome.to_string(),
            "attempts": self.attempts,
            "durationMs": self.duration.as_millis() as u64,
            "steps": self.steps.iter().map(|s| serde_json::json!({
                "attempt": s.attempt, "step": s.step, "ms": s.duration.as_millis() as u64, "ok": s.ok,
            })).collect::<Vec<_>>(),
        })
    }
}

/// `event_grid`, `manual`, `resume` or `sweeper`: the trigger's kind, for metrics labels.
/// Resumed journals travel as manual requests from [`crate::sweeper::RESUME_REQUESTER`]
/// (the webhook crate's `Trigger` has no variant of its own for them yet).
pub fn trigger_kind(trigger: &Trigger) -> &'static str {
    match trigger {
        Trigger::EventGrid { .. } => "event_grid",
        Trigger::Manual { requested_by } if requested_by.starts_with(crate::sweeper::RESUME_REQUESTER) => "resume",
        Trigger::Manual { .. } => "manual",
        Trigger::Sweeper => "sweeper",
    }
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
    target_limits: Arc<BTreeMap<String, Arc<Semaphore>>>,
    reports: broadcast::Sender<RotationReport>,
    metrics: Arc<Metrics>,
    alerts: Option<Arc<WebhookSink>>,
}

impl Engine {
    /// An engine over `store` and `targets`.
    pub fn new(store: Arc<dyn SecretStore>, targets: Targets, settings: EngineConfig) -> Self {
        let (reports, _) = broadcast::channel(1024);
        let target_limits = settings
            .target_concurrency
            .iter()
            .map(|(name, limit)| (name.clone(), Arc::new(Semaphore::new((*limit).max(1)))))
            .collect();
        Self {
            store,
            targets: Arc::new(targets),
            settings,
            locks: KeyedLocks::default(),
            target_limits: Arc::new(target_limits),
            reports,
            metrics: Arc::new(Metrics::default()),
            alerts: None,
        }
    }

    /// Sends failures past the retry cap to `sink` too.
    pub fn with_alert_sink(mut self, sink: WebhookSink) -> Self {
        self.alerts = Some(Arc::new(sink));
        self
    }

    /// Records into `metrics` (shared with the sweeper and `/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The engine's metrics registry.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The store the engine rotates in.
    pub fn store(&self) -> Arc<dyn SecretStore> {
        self.store.clone()
    }

    /// Reports of every finished request, for the demo, tests and future alert sinks.
    pub fn subscribe(&self) -> broadcast::Receiver<RotationReport> {
        self.reports.subscribe()
    }

    /// A permit of profile `name`'s concurrency limit, if it has one.
    async fn target_permit(&self, name: &str) -> Option<OwnedSemaphorePermit> {
        let limit = self.target_limits.get(name)?.clone();
        limit.acquire_owned().await.ok()
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
    /// failure is transient, up to `engine.max_attempts`. Then the audit record; on
    /// failure the failure tag, error log and alert. Publishes and returns the report.
    pub async fn rotate(&self, request: RotationRequest) -> RotationReport {
        let span = tracing::info_span!("rotation", vault = %request.vault_name, secret = %request.secret_name, trigger = %request.trigger);
        async {
            let started = Instant::now();
            let _guard = self.locks.lock(&request.secret_name.to_ascii_lowercase()).await;
            let steps = StepLog::default();
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(self.settings.initial_backoff_ms))
                .with_max_delay(Duration::from_millis(self.settings.max_backoff_ms))
                .with_max_times(self.settings.max_attempts.saturating_sub(1) as usize)
                .with_jitter();
            let result = (|| {
                steps.next_attempt();
                protocol::attempt(self, &request, &steps)
            })
            .retry(backoff)
            .when(RotationError::is_transient)
            .notify(|err, delay| warn!(error = %err, retry_in = ?delay, "rotation attempt failed; retrying"))
            .await;
            let (attempts, step_records) = steps.take();
            let (rotation_id, outcome) = match result {
                Ok(done) => (done.rotation_id, done.outcome),
                Err(err) => {
                    error!(error = %err, attempts, "rotation failed; the current password stays in place");
                    let rotation_id = request
                        .version
                        .as_deref()
                        .map(|v| journal::rotation_id(self.store.vault_name(), &request.secret_name, v));
                    (rotation_id, Outcome::Failed { error: err.to_string(), attempts })
                }
            };
            let report = RotationReport {
                request: request.clone(),
                rotation_id,
                outcome,
                duration: started.elapsed(),
                attempts,
                steps: step_records,
            };
            self.record(&report);
            if matches!(report.outcome, Outcome::Failed { .. }) {
                self.report_failure(&report).await;
            }
            // No subscriber is fine: reports are also in the log.
            let _ = self.reports.send(report.clone());
            report
        }
        .instrument(span)
        .await
    }

    /// The audit record to the log and the metrics.
    fn record(&self, report: &RotationReport) {
        let outcome = report.outcome.kind();
        let m = &self.metrics;
        m.inc(
            "kv_rotator_rotations_total",
            &[("outcome", outcome), ("trigger", trigger_kind(&report.request.trigger))],
        );
        m.add("kv_rotator_rotation_attempts_total", &[], u64::from(report.attempts));
        m.observe("kv_rotator_rotation_duration_seconds", &[("outcome", outcome)], report.duration.as_secs_f64());
        for step in &report.steps {
            m.observe("kv_rotator_step_duration_seconds", &[("step", step.step)], step.duration.as_secs_f64());
        }
        info!(
            outcome = %report.outcome,
            rotation_id = report.rotation_id.as_deref().unwrap_or("-"),
            duration_ms = report.duration.as_millis() as u64,
            "rotation request finished"
        );
        info!(target: "kv_rotator::audit", audit = %report.audit_json(), "rotation audit record");
    }

    /// Past the cap: mark the secret (keeping its other tags), and alert.
    async fn report_failure(&self, report: &RotationReport) {
        let Outcome::Failed { error, attempts } = &report.outcome else { return };
        let tagged = self.tag_failure(report, *attempts).await;
        self.metrics.inc("kv_rotator_failure_tags_total", &[("result", if tagged { "written" } else { "skipped" })]);
        let Some(sink) = &self.alerts else { return };
        let alert = Alert {
            vault: report.request.vault_name.clone(),
            secret: report.request.secret_name.clone(),
            rotation_id: report.rotation_id.clone(),
            version: report.request.version.clone(),
            trigger: report.request.trigger.to_string(),
            attempts: *attempts,
            error: error.clone(),
            at: OffsetDateTime::now_utc(),
        };
        match sink.send(&alert).await {
            Ok(()) => self.metrics.inc("kv_rotator_alerts_total", &[("result", "sent")]),
            Err(err) => {
                self.metrics.inc("kv_rotator_alerts_total", &[("result", "failed")]);
                warn!(error = %err, "could not deliver the failure alert");
            }
        }
    }

    /// Writes the failure tag on the secret's latest version. Tags are replaced as a
    /// whole by the service, so the others are read and written back; a secret already
    /// at Key Vault's 15 tags is left as it is (the log and the alert still report).
    async fn tag_failure(&self, report: &RotationReport, attempts: u32) -> bool {
        let secret = &report.request.secret_name;
        if !report.request.vault_name.eq_ignore_ascii_case(self.store.vault_name()) {
            return false;
        }
        let latest = match self.store.get_latest(secret).await {
            Ok(record) => record.properties,
            Err(err) => {
                warn!(error = %err, "cannot read the secret to tag the failure");
                return false;
            }
        };
        if !latest.tags.contains_key(protocol::TAG_ROTATOR) {
            return false;
        }
        let mut tags = latest.tags.clone();
        if !tags.contains_key(journal::TAG_FAILED) && tags.len() >= protocol::MAX_TAGS {
            warn!("secret has {} tags, Key Vault's limit: no room for the failure tag", tags.len());
            return false;
        }
        let at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        let rotation = report.rotation_id.as_deref().unwrap_or("-");
        tags.insert(journal::TAG_FAILED.to_owned(), format!("{at} attempts={attempts} rotation={rotation}"));
        let update = PropertiesUpdate { tags: Some(tags), ..Default::default() };
        match self.store.update_properties(secret, latest.version.as_deref(), update).await {
            Ok(_) => true,
            Err(err) => {
                warn!(error = %err, "could not write the failure tag");
                false
            }
        }
    }
}
