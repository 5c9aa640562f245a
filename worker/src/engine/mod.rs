//! The rotation engine: the only place that knows the rotation protocol.
//!
//! - [`Engine`]: shared state (store, targets, settings, locks, limits, metrics, alert
//!   sink) and [`Engine::rotate`], which runs one request to its end with retries, then
//!   reports: an audit record (log and metrics), and on failure a tag on the secret, an
//!   error log and an alert.
//! - [`protocol`]: one attempt of the protocol of `docs/architecture.md` — fence, gate,
//!   canary, create (journal), re-fence, set, test, re-fence, finish — one function each.
//! - [`due`]: when a version is due (for the sweeper and events alike) and the
//!   minimum interval between rotations.
//! - [`retire`]: multi-password retirement of old passwords after the grace period.
//! - [`value`]: what a secret's value holds (a password, or alternating-users' pair).
//! - [`planner`]: the protocol's pure decisions (fence, journal, stale journals).
//! - [`journal`]: rotation ids, journal record naming and content type (the tags it
//!   writes are `kv_rotator_core::tags`).
//! - [`locks`]: per-secret mutual exclusion.
//! - [`failpoints`]: step-boundary pauses for the crash suite (feature `failpoints`).
//! - [`Engine::run`]: takes requests off the queue, bounded by `engine.concurrency`
//!   (and `engine.target_concurrency` per profile), and publishes a [`RotationReport`]
//!   (and, with a notifier, its CloudEvent for consumers: [`crate::notify`]).

pub mod due;
pub mod failpoints;
pub mod journal;
pub mod locks;
pub mod planner;
pub mod protocol;
pub mod retire;
pub mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use kv_rotator_config::EngineConfig;
use kv_rotator_core::limits::MAX_TAGS;
use kv_rotator_core::tags::{TAG_FAILED, TAG_ROTATOR};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::{PropertiesUpdate, SecretStore, StoreError};
use kv_rotator_rotators::RotatorError;
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
    /// Someone else wrote the secret or the journal record during this attempt (another
    /// engine on the same vault); the next attempt fences again.
    #[error("{0}")]
    Raced(String),
    /// This process no longer holds the engine lease of the vault.
    #[error("this process does not hold the vault's engine lease (another kv-rotator engine may be running)")]
    LeaseLost,
    /// The engine lease's renewals are failing; a later one may restore it.
    #[error("the vault's engine lease lapsed (renewals failing); waiting for it to be renewed")]
    LeaseLapsed,
}

/// An attempt's error as logs, outcomes, audit records and alerts show it: it carries what
/// targets and Key Vault said, so it is escaped and middle-clipped (`logging::sanitized`).
fn shown(err: &RotationError) -> String {
    crate::logging::sanitized(&err.to_string(), crate::logging::MAX_ERROR_CHARS)
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
            RotationError::Raced(_) | RotationError::LeaseLapsed => true,
            // Another engine may be running: this one stops, and writes nothing more.
            RotationError::LeaseLost => false,
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
    /// The secret does not exist (an event for a deleted or unknown name).
    NotFound,
    /// A scheduled trigger (event, sweeper) for a version that is not due yet.
    NotDue {
        /// The latest version.
        version: String,
        /// When it becomes due; `None` when it never does by schedule (disabled).
        due_at: Option<OffsetDateTime>,
    },
    /// The latest version is younger than `engine.min_rotation_interval_secs`.
    TooSoon {
        /// The latest version.
        version: String,
        /// When a rotation is allowed again (or now, with `rotate --force`).
        allowed_at: OffsetDateTime,
    },
    /// Multi-password: the grace period after `version` had passed, and the passwords of
    /// the versions before it were retired; no rotation was due.
    Retired {
        /// The latest version, whose password stays.
        version: String,
        /// Passwords the target still had and no longer has.
        removed: usize,
    },
    /// The request names another vault than the one this worker manages.
    OtherVault,
    /// Every attempt failed.
    Failed {
        /// The last error (sanitized).
        error: String,
        /// Attempts made.
        attempts: u32,
        /// `Some(journal record)` when the target may already use the pending password,
        /// which then lives only in that record until a retry finishes; `None` when the
        /// target was not touched and the current password keeps working.
        unfinished_journal: Option<String>,
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
            Outcome::NotFound => "not_found",
            Outcome::NotDue { .. } => "not_due",
            Outcome::TooSoon { .. } => "too_soon",
            Outcome::Retired { .. } => "retired",
            Outcome::OtherVault => "other_vault",
            Outcome::Failed { unfinished_journal: None, .. } => "failed",
            Outcome::Failed { unfinished_journal: Some(_), .. } => "failed_unfinished",
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
    /// The step that proved this one instead (`test` proven by `set`): it ran no I/O.
    pub proven_by: Option<&'static str>,
}

/// The steps of every attempt of one request, in order, and whether the target may
/// already have the pending password.
#[derive(Debug, Default)]
pub struct StepLog {
    attempt: std::sync::atomic::AtomicU32,
    steps: Mutex<Vec<StepRecord>>,
    target_touched: Mutex<Option<String>>,
    /// The target refused a random password during this request (the canary).
    canary_refused: std::sync::atomic::AtomicBool,
    /// The journal version this request wrote (trusted by its own later attempts).
    own_journal_version: Mutex<Option<String>>,
    /// Alternating users: the idle account's canary was refused in this request.
    idle_canary_refused: Mutex<Option<String>>,
    /// The kind of the rotator the secret's profile names, once it is known (metrics).
    rotator: std::sync::OnceLock<&'static str>,
}

impl StepLog {
    /// From now on the target may have the password journaled in `journal`.
    fn mark_target_touched(&self, journal: &str) {
        *self.target_touched.lock().expect("step log poisoned") = Some(journal.to_owned());
    }

    fn set_own_journal_version(&self, version: &str) {
        *self.own_journal_version.lock().expect("step log poisoned") = Some(version.to_owned());
    }

    fn own_journal_version(&self) -> Option<String> {
        self.own_journal_version.lock().expect("step log poisoned").clone()
    }

    /// The target refused a random password earlier in this request.
    fn canary_refused(&self) -> bool {
        self.canary_refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn canary_refused_for(&self, account: &str) -> bool {
        self.idle_canary_refused.lock().expect("step log poisoned").as_deref() == Some(account)
    }

    fn mark_canary_refused_for(&self, account: &str) {
        *self.idle_canary_refused.lock().expect("step log poisoned") = Some(account.to_owned());
    }

    fn mark_canary_refused(&self) {
        self.canary_refused.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The journal record whose password the target may have, once `set` has run (or a
    /// journal from an earlier attempt was found).
    fn target_touched(&self) -> Option<String> {
        self.target_touched.lock().expect("step log poisoned").clone()
    }

    fn next_attempt(&self) -> u32 {
        self.attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }

    fn record(&self, step: &'static str, duration: Duration, ok: bool) {
        let attempt = self.attempt.load(std::sync::atomic::Ordering::SeqCst);
        self.steps.lock().expect("step log poisoned").push(StepRecord { attempt, step, duration, ok, proven_by: None });
    }

    /// `step` succeeded without running: `by` (an earlier step of this attempt) proved it.
    fn record_proven(&self, step: &'static str, by: &'static str) {
        let attempt = self.attempt.load(std::sync::atomic::Ordering::SeqCst);
        let record = StepRecord { attempt, step, duration: Duration::ZERO, ok: true, proven_by: Some(by) };
        self.steps.lock().expect("step log poisoned").push(record);
    }

    /// The secret's profile is of rotator kind `kind` (`postgres`, `exec`, …).
    pub(crate) fn set_rotator(&self, kind: &'static str) {
        let _ = self.rotator.set(kind);
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
    /// The kind of the secret's rotator, when the request got as far as reading it.
    pub rotator: Option<&'static str>,
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
            "steps": self.steps.iter().map(|s| {
                let mut step = serde_json::json!({
                    "attempt": s.attempt, "step": s.step, "ms": s.duration.as_millis() as u64, "ok": s.ok,
                });
                if let Some(by) = s.proven_by {
                    step["provenBy"] = by.into();
                }
                step
            }).collect::<Vec<_>>(),
        })
    }
}

/// The span of one request, on every line it logs: the names (checked where requests
/// enter), the trigger's kind and, for an event, its id as a field of its own (checked by
/// the webhook: short visible ASCII), so no part of a trigger can pose as another field.
/// The whole trigger is in the audit record.
fn request_span(request: &RotationRequest) -> tracing::Span {
    let span = tracing::info_span!(
        "rotation",
        vault = %request.vault_name,
        secret = %request.secret_name,
        trigger = trigger_kind(&request.trigger),
        event_id = tracing::field::Empty,
    );
    if let Trigger::EventGrid { event_id, .. } = &request.trigger {
        span.record("event_id", event_id.as_str());
    }
    span
}

/// `event_grid`, `manual`, `resume` or `sweeper`: the trigger's kind, for metrics labels.
pub fn trigger_kind(trigger: &Trigger) -> &'static str {
    match trigger {
        Trigger::EventGrid { .. } => "event_grid",
        Trigger::Manual { .. } => "manual",
        Trigger::Sweeper => "sweeper",
        Trigger::Resume { .. } => "resume",
    }
}

/// Whether this process may rotate in the vault: the engine lease (one engine per vault),
/// asked before every attempt and before `set` and `finish`. Cheap: no I/O.
pub trait EngineLease: Send + Sync + fmt::Debug {
    /// The lease now.
    fn state(&self) -> LeaseState;
}

/// What [`EngineLease::state`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Held: rotate.
    Held,
    /// Renewals are failing but one may still succeed: wait (transient).
    Lapsed,
    /// Ended for good: stop, write nothing more.
    Lost,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Rotated { old_version, new_version, .. } => write!(f, "rotated {old_version} -> {new_version}"),
            Outcome::AlreadyRotated { version } => write!(f, "already rotated (latest {version})"),
            Outcome::Stale { requested, latest } => write!(f, "stale request for {requested}; latest is {latest}"),
            Outcome::NotManaged => f.write_str("not managed (no rotator tag)"),
            Outcome::NotFound => f.write_str("no such secret"),
            Outcome::NotDue { version, due_at: Some(at) } => {
                write!(f, "version {version} not due until {}", at.format(&Rfc3339).unwrap_or_default())
            }
            Outcome::NotDue { version, due_at: None } => write!(f, "version {version} is disabled: not rotated by schedule"),
            Outcome::TooSoon { version, allowed_at } => write!(
                f,
                "version {version} is younger than engine.min_rotation_interval_secs: next rotation allowed at {} (or use --force)",
                allowed_at.format(&Rfc3339).unwrap_or_default()
            ),
            Outcome::Retired { version, removed } => write!(
                f,
                "grace period over: {removed} old password(s) retired, version {version} stays; not due for rotation"
            ),
            Outcome::OtherVault => f.write_str("request for another vault"),
            Outcome::Failed { error, attempts, unfinished_journal: None } => {
                write!(f, "failed after {attempts} attempt(s): {error}; the current password stays in place")
            }
            Outcome::Failed { error, attempts, unfinished_journal: Some(journal) } => write!(
                f,
                "failed after {attempts} attempt(s): {error}; the target may already use the new password, \
                 which is only in journal record {journal}: the latest version does not log in until a retry finishes"
            ),
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
    due_rule: due::DueRule,
    lease: Option<Arc<dyn EngineLease>>,
    /// When each (secret, alert kind) was last alerted, for `alerts.repeat_after_secs`.
    alerted: Arc<Mutex<std::collections::HashMap<(String, &'static str), Instant>>>,
    alert_repeat: Duration,
    /// `engine.concurrency` permits of [`Engine::run`].
    permits: Arc<Semaphore>,
    /// Becomes true when the queue closes: finishing schedules stop waiting.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// Told when each request starts and ends (the admin API's job records).
    observer: Option<Arc<dyn RequestObserver>>,
    /// Publishes outcomes to consumers (`[notifications]`), without waiting.
    notifier: Option<crate::notify::Notifier>,
}

/// Told of every request's start (its secret's lock and a slot taken) and end (its
/// report), synchronously and in order, so nothing is missed the way a lagging broadcast
/// receiver would. For bookkeeping only: it cannot change what the engine does.
pub trait RequestObserver: Send + Sync + fmt::Debug {
    /// `request` starts running (its version pinned).
    fn started(&self, request: &RotationRequest);
    /// `report` ends the request.
    fn finished(&self, report: &RotationReport);
}

impl Engine {
    /// An engine over `store` and `targets`.
    pub fn new(store: Arc<dyn SecretStore>, targets: Targets, settings: EngineConfig) -> Self {
        let (reports, _) = broadcast::channel(1024);
        let due_rule = due::DueRule::from_config(&settings, &kv_rotator_config::SweeperConfig::default());
        let target_limits = settings
            .target_concurrency
            .iter()
            .map(|(name, limit)| (name.clone(), Arc::new(Semaphore::new((*limit).max(1)))))
            .collect();
        Self {
            store,
            targets: Arc::new(targets),
            settings: settings.clone(),
            locks: KeyedLocks::default(),
            target_limits: Arc::new(target_limits),
            reports,
            metrics: Arc::new(Metrics::default()),
            alerts: None,
            due_rule,
            lease: None,
            alerted: Arc::default(),
            alert_repeat: Duration::from_secs(3600),
            permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            observer: None,
            notifier: None,
        }
    }

    /// Publishes every request's outcome to consumers through `notifier` ([`crate::notify`]).
    pub fn with_notifier(mut self, notifier: crate::notify::Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Tells `observer` of every request's start and end.
    pub fn with_observer(mut self, observer: Arc<dyn RequestObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Sends failures past the retry cap to `sink` too, the same secret's alert of the
    /// same kind at most once per `repeat_after`.
    pub fn with_alert_sink(mut self, sink: WebhookSink, repeat_after: Duration) -> Self {
        self.alerts = Some(Arc::new(sink));
        self.alert_repeat = repeat_after;
        self
    }

    /// Judges due versions with `rule` (default: the default configuration's).
    pub fn with_due_rule(mut self, rule: due::DueRule) -> Self {
        self.due_rule = rule;
        self
    }

    /// Rotates only while `lease` is held.
    pub fn with_lease(mut self, lease: Arc<dyn EngineLease>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The due rule in force.
    pub fn due_rule(&self) -> due::DueRule {
        self.due_rule
    }

    fn check_lease(&self) -> Result<(), RotationError> {
        match self.lease.as_ref().map(|lease| lease.state()) {
            None | Some(LeaseState::Held) => Ok(()),
            Some(LeaseState::Lapsed) => Err(RotationError::LeaseLapsed),
            Some(LeaseState::Lost) => Err(RotationError::LeaseLost),
        }
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
    /// A rotation waiting on its finishing schedule gives its permit back while it waits.
    pub async fn run(self, mut queue: mpsc::Receiver<RotationRequest>) {
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(request) = queue.recv().await {
            let permit = self.permits.clone().acquire_owned().await.expect("semaphore never closes");
            let engine = self.clone();
            tasks.spawn(async move {
                engine.rotate_holding(request, Some(permit)).await;
            });
            // Reap finished tasks so the set does not grow with the queue's history.
            while tasks.try_join_next().is_some() {}
        }
        // Shutting down: finishing schedules stop waiting (the sweeper of the next
        // process resumes their journals).
        self.stopping.send_replace(true);
        while tasks.join_next().await.is_some() {}
    }

    /// Runs one request to its end: attempts with jittered exponential backoff while the
    /// failure is transient, up to `engine.max_attempts` — and, once the target may have
    /// the pending password, on a slower schedule after that ([`Engine::keep_finishing`]).
    /// Then the audit record; on failure the failure tag, error log and alert. Publishes
    /// and returns the report.
    pub async fn rotate(&self, request: RotationRequest) -> RotationReport {
        self.rotate_holding(request, None).await
    }

    /// [`Engine::rotate`], holding `permit` of `engine.concurrency` (given back while a
    /// finishing schedule waits).
    async fn rotate_holding(
        &self,
        mut request: RotationRequest,
        mut permit: Option<OwnedSemaphorePermit>,
    ) -> RotationReport {
        // The boundary: one spelling of a version id from here on, and one version for
        // every attempt (a request for "the latest" that re-read it at each retry would
        // start a new rotation from a version its own first attempt wrote).
        match request.version.as_mut() {
            Some(version) => version.make_ascii_lowercase(),
            None => {
                if let Ok(latest) = self.store.get_latest(&request.secret_name).await {
                    request.version = Some(latest.version.to_ascii_lowercase());
                }
            }
        }
        let span = request_span(&request);
        async {
            let started = Instant::now();
            // The secret's lock before a slot: a request waiting for a busy secret (one on
            // its finishing schedule, say) holds no slot, so waiting cannot deadlock.
            let key = request.secret_name.to_ascii_lowercase();
            let _guard = match self.locks.try_lock(&key) {
                Some(guard) => guard,
                None => {
                    let held = permit.take().is_some();
                    let guard = self.locks.lock(&key).await;
                    if held {
                        permit = Some(self.permits.clone().acquire_owned().await.expect("semaphore never closes"));
                    }
                    guard
                }
            };
            if let Some(observer) = &self.observer {
                observer.started(&request);
            }
            let steps = StepLog::default();
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(self.settings.initial_backoff_ms))
                .with_max_delay(Duration::from_millis(self.settings.max_backoff_ms))
                .with_max_times(self.settings.max_attempts.saturating_sub(1) as usize)
                .with_jitter();
            let mut result = (|| {
                steps.next_attempt();
                protocol::attempt(self, &request, &steps)
            })
            .retry(backoff)
            .when(RotationError::is_transient)
            .notify(|err, delay| {
                let error = shown(err);
                warn!(error = %error, retry_in = ?delay, "rotation attempt failed; retrying")
            })
            .await;
            result = match (steps.target_touched(), result) {
                (Some(journal), Err(first)) if first.is_transient() => {
                    self.keep_finishing(&request, &steps, &journal, first, &mut permit).await
                }
                (_, result) => result,
            };
            let (attempts, step_records) = steps.take();
            let lease_lost = matches!(result, Err(RotationError::LeaseLost));
            let (rotation_id, outcome) = match result {
                Ok(done) => (done.rotation_id, done.outcome),
                Err(err) => {
                    let unfinished_journal = steps.target_touched();
                    // Shown once, for the log, the audit record, the alert, `rotate`'s
                    // output and the Functions host's logs alike.
                    let error = shown(&err);
                    match &unfinished_journal {
                        None => {
                            error!(error = %error, attempts, "rotation failed; the current password stays in place")
                        }
                        Some(journal) => error!(
                            error = %error, attempts, %journal,
                            "rotation failed after the target may have taken the new password: it is only in the \
                             journal record, and the latest version may not log in until the sweeper resumes it"
                        ),
                    }
                    let rotation_id = request
                        .version
                        .as_deref()
                        .map(|v| journal::rotation_id(self.store.vault_name(), &request.secret_name, v));
                    (rotation_id, Outcome::Failed { error, attempts, unfinished_journal })
                }
            };
            let report = RotationReport {
                request: request.clone(),
                rotation_id,
                outcome,
                duration: started.elapsed(),
                attempts,
                steps: step_records,
                rotator: steps.rotator.get().copied(),
            };
            self.record(&report);
            // An engine that lost its lease writes no tag and sends no alert: another
            // engine may be at work on the vault.
            if matches!(report.outcome, Outcome::Failed { .. }) && !lease_lost {
                self.report_failure(&report).await;
            }
            if let Some(notifier) = self.notifier.as_ref().filter(|_| !lease_lost) {
                notifier.rotation_finished(&report);
            }
            if let Some(observer) = &self.observer {
                observer.finished(&report);
            }
            // No subscriber is fine: reports are also in the log.
            let _ = self.reports.send(report.clone());
            report
        }
        .instrument(span)
        .await
    }

    /// After `max_attempts`, once the target may already use the pending password while
    /// the latest version still holds the old one: consumers are broken until the vault
    /// catches up, so waiting for the next sweep is not enough. One attempt every
    /// `engine.finish_retry_interval_secs`, for at most `engine.finish_retry_for_secs`,
    /// while the failure stays transient.
    async fn keep_finishing(
        &self,
        request: &RotationRequest,
        steps: &StepLog,
        journal: &str,
        first: RotationError,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<protocol::Done, RotationError> {
        let interval = Duration::from_secs(self.settings.finish_retry_interval_secs.max(1));
        let deadline = Instant::now() + Duration::from_secs(self.settings.finish_retry_for_secs);
        error!(
            error = %shown(&first), %journal, retry_every = ?interval, for_at_most = ?Duration::from_secs(self.settings.finish_retry_for_secs),
            "the target may already use the new password but Key Vault is not finished: it is only in the journal \
             record, and consumers reading the latest version are refused; still finishing"
        );
        let mut last = Err(first);
        let mut stopping = self.stopping.subscribe();
        // Finishing takes no rotation slot: a stuck target or vault cannot stall the rest,
        // and the attempts are few (one per interval).
        drop(permit.take());
        while Instant::now() + interval <= deadline && !*stopping.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stopping.wait_for(|stop| *stop) => break,
            }
            self.metrics.inc("kv_rotator_finish_retries_total", &[]);
            steps.next_attempt();
            last = protocol::attempt(self, request, steps).await;
            match &last {
                Ok(_) => break,
                Err(err) if err.is_transient() => {
                    let error = shown(err);
                    warn!(error = %error, "finishing attempt failed; retrying")
                }
                Err(_) => break,
            }
        }
        last
    }

    /// The audit record to the log and the metrics.
    fn record(&self, report: &RotationReport) {
        let outcome = report.outcome.kind();
        let m = &self.metrics;
        m.inc(
            "kv_rotator_rotations_total",
            &[
                ("outcome", outcome),
                ("rotator", report.rotator.unwrap_or("unknown")),
                ("trigger", trigger_kind(&report.request.trigger)),
            ],
        );
        m.add("kv_rotator_rotation_attempts_total", &[], u64::from(report.attempts));
        m.observe("kv_rotator_rotation_duration_seconds", &[("outcome", outcome)], report.duration.as_secs_f64());
        // A step another proved took no time of its own: it would only skew the histogram.
        for step in report.steps.iter().filter(|s| s.proven_by.is_none()) {
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

    /// Past the cap: mark the secret (keeping its other tags), and alert — the same
    /// secret's alert of the same kind at most once per `alerts.repeat_after_secs`.
    async fn report_failure(&self, report: &RotationReport) {
        let Outcome::Failed { error, attempts, unfinished_journal } = &report.outcome else { return };
        let tagged = self.tag_failure(report, *attempts).await;
        self.metrics.inc("kv_rotator_failure_tags_total", &[("result", if tagged { "written" } else { "skipped" })]);
        let Some(sink) = &self.alerts else { return };
        let key = (report.request.secret_name.to_ascii_lowercase(), report.outcome.kind());
        {
            let mut alerted = self.alerted.lock().expect("alert log poisoned");
            let now = Instant::now();
            alerted.retain(|_, at| now.duration_since(*at) < self.alert_repeat);
            if alerted.contains_key(&key) {
                self.metrics.inc("kv_rotator_alerts_total", &[("result", "repeat_suppressed")]);
                return;
            }
            alerted.insert(key, now);
        }
        let alert = Alert {
            unfinished_journal: unfinished_journal.clone(),
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
        if !latest.tags.contains_key(TAG_ROTATOR) {
            // A journal whose secret lost its tags: mark the journal record instead.
            return match report.rotation_id.as_deref() {
                Some(id) => self.tag_journal_failure(&journal::journal_name(id), attempts).await,
                None => false,
            };
        }
        let mut tags = latest.tags.clone();
        if !tags.contains_key(TAG_FAILED) && tags.len() >= MAX_TAGS {
            warn!("secret has {} tags, Key Vault's limit: no room for the failure tag", tags.len());
            return false;
        }
        let at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        let rotation = report.rotation_id.as_deref().unwrap_or("-");
        tags.insert(TAG_FAILED.to_owned(), format!("{at} attempts={attempts} rotation={rotation}"));
        let update = PropertiesUpdate { tags: Some(tags), ..Default::default() };
        match self.store.update_properties(secret, latest.version.as_deref(), update).await {
            Ok(_) => true,
            Err(err) => {
                warn!(error = %err, "could not write the failure tag");
                false
            }
        }
    }

    /// The failure tag on a journal record (when its secret is not managed any more).
    async fn tag_journal_failure(&self, journal_name: &str, attempts: u32) -> bool {
        let Ok(record) = self.store.get_latest(journal_name).await else { return false };
        let mut tags = record.properties.tags;
        let at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        tags.insert(TAG_FAILED.to_owned(), format!("{at} attempts={attempts} secret-not-managed"));
        let update = PropertiesUpdate { tags: Some(tags), ..Default::default() };
        self.store.update_properties(journal_name, Some(&record.version), update).await.is_ok()
    }
}
