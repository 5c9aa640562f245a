//! The admin API's rotation jobs: one per `POST /api/rotations`, each secret's state as the
//! engine reports it, in memory and bounded ([`MAX_JOBS`], the oldest forgotten first).
//!
//! A job with a concurrency limit ([`Job::concurrency`]) is fed to the engine's queue by
//! [`feed`], one request per free slot; [`Jobs`] frees a slot as each of its secrets ends.
//!
//! A job's requests carry `Trigger::Manual { requested_by: "<caller> via admin API job
//! <id>" }`: unique per job, and what the audit record shows. [`Jobs`] is the engine's
//! [`RequestObserver`]: it finds the job by that text and the entry by the secret's name,
//! so a report is never lost the way a lagging broadcast receiver could lose it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use kv_rotator_core::{RotationRequest, Trigger};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use uuid::Uuid;

use crate::engine::{Outcome, RequestObserver, RotationReport};

/// Jobs remembered at most.
pub const MAX_JOBS: usize = 1000;

/// One secret of a job (also what `kv-rotator rotate` prints, in process or not).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSecret {
    /// The secret's name.
    pub secret: String,
    /// The version resolved at trigger time (none when it could not be read).
    pub version: Option<String>,
    /// `queued`, `running`, then the engine's outcome kind in kebab-case (`rotated`,
    /// `already-rotated`, `stale`, `not-managed`, `not-found`, `not-due`, `outside-window`, `too-soon`,
    /// `retired`, `other-vault`, `failed`, `failed-unfinished`); `failed` too when the
    /// secret could not be read at trigger time (then never queued).
    pub state: String,
    /// The version written, when rotated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_version: Option<String>,
    /// The outcome as `rotate` prints it (names, versions, times; never a password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The sanitized error, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the operator got what was asked: rotated (or already rotated, retired);
    /// not failed, refused as too soon, unmanaged, gone or of another vault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
}

impl JobSecret {
    /// A secret queued at `version`.
    pub fn queued(secret: &str, version: &str) -> Self {
        Self::new(secret, Some(version.to_owned()), "queued")
    }

    /// A secret that could not be read at trigger time: failed, never queued.
    pub fn unreadable(secret: &str, error: String) -> Self {
        Self::not_run(secret, None, format!("failed: {error}"), error)
    }

    /// A secret the engine was never given (`detail` says why, as printed): failed.
    pub fn not_run(secret: &str, version: Option<String>, detail: String, error: String) -> Self {
        let mut entry = Self::new(secret, version, "failed");
        entry.detail = Some(detail);
        entry.error = Some(error);
        entry.ok = Some(false);
        entry
    }

    fn new(secret: &str, version: Option<String>, state: &str) -> Self {
        JobSecret {
            secret: secret.to_owned(),
            version,
            state: state.to_owned(),
            new_version: None,
            detail: None,
            error: None,
            ok: None,
        }
    }

    /// Whether the engine has reported it (or it never went to the engine).
    pub fn is_done(&self) -> bool {
        self.ok.is_some()
    }

    /// Ends the entry with the engine's `outcome`.
    pub fn finish(&mut self, outcome: &Outcome) {
        self.state = outcome.kind().replace('_', "-");
        self.detail = Some(outcome.to_string());
        match outcome {
            Outcome::Rotated { new_version, .. } => self.new_version = Some(new_version.clone()),
            Outcome::Failed { error, .. } => self.error = Some(error.clone()),
            _ => {}
        }
        // What the operator asked for is a secret whose password was (or already had
        // been) replaced: a refusal as too soon, a secret kv-rotator does not manage, one
        // that is gone or belongs to another vault was not rotated, and says so.
        self.ok = Some(!matches!(
            outcome,
            Outcome::Failed { .. }
                | Outcome::TooSoon { .. }
                | Outcome::NotManaged
                | Outcome::NotFound
                | Outcome::OtherVault
        ));
    }
}

/// One `POST /api/rotations`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// The job's id.
    pub id: Uuid,
    /// When it was accepted (RFC 3339).
    pub created: String,
    /// Who asked (the caller as authenticated).
    pub requested_by: String,
    /// Why.
    pub reason: String,
    /// Whether `engine.min_rotation_interval_secs` was bypassed.
    pub force: bool,
    /// At most this many of its secrets on the engine's queue or rotating at once; `None`:
    /// all queued together (the engine's `engine.concurrency` still bounds them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Whether every secret has ended.
    pub done: bool,
    /// Its secrets, in the order asked.
    pub secrets: Vec<JobSecret>,
}

/// The jobs of a running service; the engine's [`RequestObserver`].
#[derive(Debug, Default)]
pub struct Jobs {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<Uuid, Job>,
    order: VecDeque<Uuid>,
    /// A job's requests' `requested_by` → the job.
    by_trigger: HashMap<String, Uuid>,
    /// The free slots of jobs with a concurrency limit, given back as secrets end.
    slots: HashMap<Uuid, Arc<Semaphore>>,
}

/// The `requested_by` of job `id`'s requests.
pub fn requested_by(caller: &str, id: Uuid) -> String {
    format!("{caller} via admin API job {id}")
}

impl Jobs {
    /// Remembers `job` (before its requests are sent), forgetting the oldest beyond [`MAX_JOBS`].
    pub fn insert(&self, mut job: Job) {
        job.done = job.secrets.iter().all(JobSecret::is_done);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while inner.order.len() >= MAX_JOBS {
            let Some(old) = inner.order.pop_front() else { break };
            if let Some(old) = inner.jobs.remove(&old) {
                inner.by_trigger.remove(&requested_by(&old.requested_by, old.id));
            }
            // A limited job forgotten while running: its feeder ends (nobody can follow it).
            if let Some(slots) = inner.slots.remove(&old) {
                slots.close();
            }
        }
        inner.by_trigger.insert(requested_by(&job.requested_by, job.id), job.id);
        if let Some(limit) = job.concurrency {
            inner.slots.insert(job.id, Arc::new(Semaphore::new(limit)));
        }
        inner.order.push_back(job.id);
        inner.jobs.insert(job.id, job);
    }

    /// The free slots of job `id`, when it has a concurrency limit.
    fn slots(&self, id: &Uuid) -> Option<Arc<Semaphore>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).slots.get(id).cloned()
    }

    /// Job `id`, as it stands now.
    pub fn get(&self, id: &Uuid) -> Option<Job> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).jobs.get(id).cloned()
    }

    /// The `n` newest jobs, newest first, as they stand now.
    pub fn recent(&self, n: usize) -> Vec<Job> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.order.iter().rev().take(n).filter_map(|id| inner.jobs.get(id).cloned()).collect()
    }

    fn update(&self, request: &RotationRequest, change: impl FnOnce(&mut JobSecret)) {
        let Trigger::Manual { requested_by, .. } = &request.trigger else { return };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(id) = inner.by_trigger.get(requested_by).copied() else { return };
        let Some(job) = inner.jobs.get_mut(&id) else { return };
        let mut ended = false;
        if let Some(entry) = job.secrets.iter_mut().find(|s| s.secret == request.secret_name && !s.is_done()) {
            change(entry);
            ended = entry.is_done();
        }
        job.done = job.secrets.iter().all(JobSecret::is_done);
        if ended {
            if let Some(slots) = inner.slots.get(&id) {
                slots.add_permits(1);
            }
        }
    }

    /// Ends job `id`'s entries for `secrets` that the engine will never see.
    fn not_queued(&self, id: &Uuid, secrets: &[RotationRequest], why: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(job) = inner.jobs.get_mut(id) else { return };
        for request in secrets {
            if let Some(entry) = job.secrets.iter_mut().find(|s| s.secret == request.secret_name && !s.is_done()) {
                *entry = JobSecret::not_run(
                    &request.secret_name,
                    request.version.clone(),
                    format!("not rotated: {why}"),
                    why.to_owned(),
                );
            }
        }
        job.done = job.secrets.iter().all(JobSecret::is_done);
    }
}

/// Feeds job `id`'s `requests` to the engine's `queue`, each when the job has a free slot
/// (a secret of it ended), so that at most its concurrency are queued or rotating at once,
/// and never into the last quarter of the queue ([`send_leaving_room`]). Between sends it
/// keeps only a weak handle: it never holds the engine open at shutdown. Requests it cannot
/// hand over (the engine stopped) end as not rotated; a job forgotten while it runs ends
/// its feeder.
pub async fn feed(jobs: Arc<Jobs>, id: Uuid, requests: Vec<RotationRequest>, queue: mpsc::WeakSender<RotationRequest>) {
    let Some(slots) = jobs.slots(&id) else { return };
    let mut requests = requests.into_iter();
    while let Some(request) = requests.next() {
        let Ok(slot) = slots.acquire().await else { return };
        // Given back by the entry's end (Jobs::update), not by this scope.
        slot.forget();
        if let Err(unsent) = send_leaving_room(&queue, request).await {
            let rest: Vec<RotationRequest> = std::iter::once(unsent).chain(requests).collect();
            jobs.not_queued(&id, &rest, "the engine stopped before it was queued");
            return;
        }
    }
}

/// How often a feeder looks again at a queue without room to spare.
const ROOM_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Puts `request` on `queue` once more than a quarter of its places are free: the rest is
/// left to the webhook's deliveries and the sweeper, which never wait (a full queue is a
/// 503 to Event Grid). `Err(request)` when the engine has stopped.
async fn send_leaving_room(
    queue: &mpsc::WeakSender<RotationRequest>,
    mut request: RotationRequest,
) -> Result<(), RotationRequest> {
    loop {
        let Some(strong) = queue.upgrade() else { return Err(request) };
        if strong.capacity() > strong.max_capacity() / 4 {
            match strong.try_send(request) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(again)) => request = again,
                Err(mpsc::error::TrySendError::Closed(unsent)) => return Err(unsent),
            }
        }
        drop(strong);
        tokio::time::sleep(ROOM_POLL).await;
    }
}

impl RequestObserver for Jobs {
    fn started(&self, request: &RotationRequest) {
        self.update(request, |entry| entry.state = "running".to_owned());
    }

    fn finished(&self, report: &RotationReport) {
        self.update(&report.request, |entry| entry.finish(&report.outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(secrets: Vec<JobSecret>) -> Job {
        Job {
            id: Uuid::new_v4(),
            created: "2026-01-01T00:00:00Z".into(),
            requested_by: "static-token".into(),
            reason: "test".into(),
            force: false,
            concurrency: None,
            done: false,
            secrets,
        }
    }

    fn request(job: &Job, secret: &str) -> RotationRequest {
        RotationRequest {
            vault_name: "kv".into(),
            secret_name: secret.into(),
            version: Some("v1".into()),
            trigger: Trigger::Manual { requested_by: requested_by(&job.requested_by, job.id), force: false },
        }
    }

    #[test]
    fn a_job_follows_its_requests_and_the_oldest_are_forgotten() {
        let jobs = Jobs::default();
        let first = job(vec![JobSecret::queued("a", "v1"), JobSecret::unreadable("gone", "not found".into())]);
        jobs.insert(first.clone());
        assert!(!jobs.get(&first.id).unwrap().done);
        jobs.started(&request(&first, "a"));
        assert_eq!(jobs.get(&first.id).unwrap().secrets[0].state, "running");
        // Another trigger of the same secret (the sweeper) changes nothing here.
        let mut sweeper = request(&first, "a");
        sweeper.trigger = Trigger::Sweeper;
        jobs.started(&sweeper);
        jobs.finished(&report(request(&first, "a"), Outcome::NotDue { version: "v1".into(), due_at: None }));
        let done = jobs.get(&first.id).unwrap();
        assert!(done.done);
        assert_eq!((done.secrets[0].state.as_str(), done.secrets[0].ok), ("not-due", Some(true)));
        assert_eq!(done.secrets[1].state, "failed");

        for _ in 0..MAX_JOBS {
            jobs.insert(job(vec![JobSecret::queued("b", "v1")]));
        }
        assert!(jobs.get(&first.id).is_none(), "the oldest job is forgotten");
        let newest = jobs.inner.lock().unwrap().order.back().copied();
        let recent = jobs.recent(3);
        assert_eq!((recent.len(), recent.first().map(|j| j.id)), (3, newest), "newest first");
        assert_eq!(jobs.inner.lock().unwrap().by_trigger.len(), MAX_JOBS);
    }

    fn report(request: RotationRequest, outcome: Outcome) -> RotationReport {
        RotationReport {
            request,
            rotation_id: None,
            outcome,
            duration: std::time::Duration::ZERO,
            attempts: 1,
            steps: Vec::new(),
            rotator: None,
        }
    }

    /// Lets every other task on this (current-thread) runtime run until it waits.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_limited_job_has_at_most_its_concurrency_on_the_queue_or_running() {
        let jobs = Arc::new(Jobs::default());
        let names = ["s0", "s1", "s2", "s3", "s4"];
        let mut limited = job(names.iter().map(|n| JobSecret::queued(n, "v1")).collect());
        limited.concurrency = Some(2);
        jobs.insert(limited.clone());
        let requests: Vec<RotationRequest> = names.iter().map(|n| request(&limited, n)).collect();
        let (queue, mut engine) = mpsc::channel(100);
        let feeder = tokio::spawn(feed(jobs.clone(), limited.id, requests, queue.downgrade()));
        settle().await;
        let mut taken = Vec::new();
        while let Ok(request) = engine.try_recv() {
            taken.push(request);
        }
        assert_eq!(taken.len(), 2, "two on the queue, the rest wait for a slot");
        // Starting is not ending: no slot is freed.
        jobs.started(&taken[0]);
        settle().await;
        assert!(engine.try_recv().is_err());
        // Each end lets exactly one more in, in the order asked.
        for (ended, next) in [(0, "s2"), (1, "s3"), (2, "s4")] {
            let outcome = Outcome::NotDue { version: "v1".into(), due_at: None };
            jobs.finished(&report(taken[ended].clone(), outcome));
            settle().await;
            let sent = engine.try_recv().expect("a slot was freed");
            assert_eq!(sent.secret_name, next);
            assert!(engine.try_recv().is_err());
            taken.push(sent);
        }
        feeder.await.unwrap();
        assert!(!jobs.get(&limited.id).unwrap().done, "two still run");
        drop(queue);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn what_a_stopped_engine_never_got_ends_as_not_rotated() {
        let jobs = Arc::new(Jobs::default());
        let mut limited = job(vec![JobSecret::queued("a", "v1"), JobSecret::queued("b", "v1")]);
        limited.concurrency = Some(1);
        jobs.insert(limited.clone());
        let requests = vec![request(&limited, "a"), request(&limited, "b")];
        let (queue, mut engine) = mpsc::channel(100);
        let feeder = tokio::spawn(feed(jobs.clone(), limited.id, requests, queue.downgrade()));
        settle().await;
        let first = engine.try_recv().unwrap();
        // The service shuts down: its queue's last strong sender goes, the engine drains.
        drop(queue);
        jobs.finished(&report(first, Outcome::NotDue { version: "v1".into(), due_at: None }));
        feeder.await.unwrap();
        let ended = jobs.get(&limited.id).unwrap();
        assert!(ended.done, "{ended:?}");
        let b = &ended.secrets[1];
        assert_eq!((b.state.as_str(), b.ok), ("failed", Some(false)));
        assert!(b.detail.as_deref().unwrap().contains("the engine stopped before it was queued"), "{b:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_limited_job_leaves_a_quarter_of_the_queue_to_the_webhook() {
        let jobs = Arc::new(Jobs::default());
        let names: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
        let mut limited = job(names.iter().map(|n| JobSecret::queued(n, "v1")).collect());
        limited.concurrency = Some(4);
        jobs.insert(limited.clone());
        let requests: Vec<RotationRequest> = names.iter().map(|n| request(&limited, n)).collect();
        let (queue, _engine) = mpsc::channel(4);
        tokio::spawn(feed(jobs.clone(), limited.id, requests, queue.downgrade()));
        settle().await;
        assert_eq!(queue.capacity(), 1, "three of its four slots used, one place left");
        let delivery = request(&limited, "from-the-webhook");
        assert!(queue.try_send(delivery).is_ok(), "a delivery still finds room");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_running_job_forgotten_ends_its_feeder() {
        let jobs = Arc::new(Jobs::default());
        let mut limited = job(vec![JobSecret::queued("a", "v1"), JobSecret::queued("b", "v1")]);
        limited.concurrency = Some(1);
        jobs.insert(limited.clone());
        let (queue, mut engine) = mpsc::channel(100);
        let requests = vec![request(&limited, "a"), request(&limited, "b")];
        let feeder = tokio::spawn(feed(jobs.clone(), limited.id, requests, queue.downgrade()));
        settle().await;
        assert!(engine.try_recv().is_ok());
        for _ in 0..MAX_JOBS {
            jobs.insert(job(vec![JobSecret::queued("c", "v1")]));
        }
        settle().await;
        assert!(feeder.is_finished(), "the feeder of a forgotten job does not wait forever");
        assert!(engine.try_recv().is_err(), "and queues nothing more");
    }
}
