//! The rotation engine: the only place that knows the rotation protocol.
//!
//! - [`Engine`] (this file): shared state (store, targets, settings, locks, limits,
//!   metrics, alert sink), [`Engine::run`], which takes requests off the queue, bounded by
//!   `engine.concurrency` (and `engine.target_concurrency` per profile), and
//!   [`Engine::rotate`], which runs one request to its end and publishes its
//!   [`RotationReport`] (and, with a notifier, its CloudEvent for consumers:
//!   [`crate::notify`]).
//! - `retry.rs`: attempts with backoff, then the finishing schedule once the target may
//!   have the pending password.
//! - `report.rs`: [`Outcome`], [`RotationReport`] and the audit record (log and metrics).
//! - `failure.rs`: a failure past the retry cap: its log line, the failure tag on the
//!   secret, and the alert.
//! - `steps.rs`: [`StepLog`], the timed steps of a request's attempts; `error.rs`:
//!   [`RotationError`]. All four re-exported here.
//! - [`protocol`]: one attempt of the protocol of `docs/architecture.md` — fence, gate,
//!   canary, create (journal), re-fence, set, test, re-fence, finish — one function each.
//! - [`due`]: when a version is due (for the sweeper and events alike) and the
//!   minimum interval between rotations.
//! - [`retire`]: multi-password retirement of old passwords after the grace period.
//! - [`value`]: what a secret's value holds (a password, or alternating-users' pair).
//! - [`planner`]: the protocol's pure decisions (the fence, the gate or not and the
//!   password for a rotation's journal record, a leftover record's fate); the protocol
//!   calls them and acts on what they return.
//! - [`journal`]: rotation ids, journal record naming and content type (the tags it
//!   writes are `kv_rotator_core::tags`).
//! - [`locks`]: per-secret mutual exclusion.
//! - [`failpoints`]: step-boundary pauses for the crash suite (feature `failpoints`).

pub mod due;
mod error;
pub mod failpoints;
mod failure;
pub mod journal;
pub mod locks;
pub mod planner;
pub mod protocol;
mod report;
pub mod retire;
mod retry;
mod steps;
pub mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_rotator_config::EngineConfig;
use kv_rotator_core::RotationRequest;
use kv_rotator_keyvault::SecretStore;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::alerts::WebhookSink;
use crate::metrics::Metrics;
use crate::targets::Targets;
use error::shown;
use locks::{KeyGuard, KeyedLocks};
use report::request_span;

pub use error::RotationError;
pub use report::{trigger_kind, Outcome, RotationReport, StepRecord};
pub use steps::StepLog;

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

    /// Where outcomes are published, if anywhere (to wait for their delivery).
    pub fn notifier(&self) -> Option<&crate::notify::Notifier> {
        self.notifier.as_ref()
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
        self.due_rule.clone()
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
        self.pin_version(&mut request).await;
        let span = request_span(&request);
        async {
            let started = Instant::now();
            let _guard = self.lock_secret(&request.secret_name, &mut permit).await;
            if let Some(observer) = &self.observer {
                observer.started(&request);
            }
            let steps = StepLog::default();
            let result = self.attempt_until_done(&request, &steps, &mut permit).await;
            let (attempts, step_records) = steps.take();
            let lease_lost = matches!(result, Err(RotationError::LeaseLost));
            let (rotation_id, outcome) = match result {
                Ok(done) => (done.rotation_id, done.outcome),
                Err(err) => self.failed(&request, err, attempts, steps.target_touched()),
            };
            let report = RotationReport {
                request: request.clone(),
                rotation_id,
                outcome,
                duration: started.elapsed(),
                attempts,
                steps: step_records,
                rotator: steps.rotator(),
            };
            self.publish(&report, lease_lost).await;
            report
        }
        .instrument(span)
        .await
    }

    /// The boundary: one spelling of a version id from here on, and one version for every
    /// attempt (a request for "the latest" that re-read it at each retry would start a new
    /// rotation from a version its own first attempt wrote).
    async fn pin_version(&self, request: &mut RotationRequest) {
        match request.version.as_mut() {
            Some(version) => version.make_ascii_lowercase(),
            None => {
                if let Ok(latest) = self.store.get_latest(&request.secret_name).await {
                    request.version = Some(latest.version.to_ascii_lowercase());
                }
            }
        }
    }

    /// The secret's lock before a slot: a request waiting for a busy secret (one on its
    /// finishing schedule, say) gives its slot back while it waits, so waiting cannot
    /// deadlock.
    async fn lock_secret(&self, secret_name: &str, permit: &mut Option<OwnedSemaphorePermit>) -> KeyGuard {
        let key = secret_name.to_ascii_lowercase();
        if let Some(guard) = self.locks.try_lock(&key) {
            return guard;
        }
        let held = permit.take().is_some();
        let guard = self.locks.lock(&key).await;
        if held {
            *permit = Some(self.permits.clone().acquire_owned().await.expect("semaphore never closes"));
        }
        guard
    }

    /// Tells everyone who listens how the request ended: the audit record; on failure the
    /// failure tag and alert; the consumers' notification; the observer; the subscribers.
    /// An engine that lost its lease writes no tag and sends no alert or notification:
    /// another engine may be at work on the vault.
    async fn publish(&self, report: &RotationReport, lease_lost: bool) {
        self.record(report);
        if matches!(report.outcome, Outcome::Failed { .. }) && !lease_lost {
            self.report_failure(report).await;
        }
        if let Some(notifier) = self.notifier.as_ref().filter(|_| !lease_lost) {
            notifier.rotation_finished(report);
        }
        if let Some(observer) = &self.observer {
            observer.finished(report);
        }
        // No subscriber is fine: reports are also in the log.
        let _ = self.reports.send(report.clone());
    }
}
