//! The admin API's rotation jobs: one per `POST /api/rotations`, each secret's state as the
//! engine reports it, in memory and bounded ([`MAX_JOBS`], the oldest forgotten first).
//!
//! A job's requests carry `Trigger::Manual { requested_by: "<caller> via admin API job
//! <id>" }`: unique per job, and what the audit record shows. [`Jobs`] is the engine's
//! [`RequestObserver`]: it finds the job by that text and the entry by the secret's name,
//! so a report is never lost the way a lagging broadcast receiver could lose it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use kv_rotator_core::{RotationRequest, Trigger};
use serde::Serialize;
use uuid::Uuid;

use crate::engine::{Outcome, RequestObserver, RotationReport};

/// Jobs remembered at most.
pub const MAX_JOBS: usize = 1000;

/// One secret of a job.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSecret {
    /// The secret's name.
    pub secret: String,
    /// The version resolved at trigger time (none when it could not be read).
    pub version: Option<String>,
    /// `queued`, `running`, then the engine's outcome kind in kebab-case (`rotated`,
    /// `already-rotated`, `stale`, `not-managed`, `not-found`, `not-due`, `too-soon`,
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
    /// Whether the operator got what was asked: not failed and not refused as too soon.
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
        let mut entry = Self::new(secret, None, "failed");
        entry.detail = Some(format!("failed: {error}"));
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

    fn finish(&mut self, outcome: &Outcome) {
        self.state = outcome.kind().replace('_', "-");
        self.detail = Some(outcome.to_string());
        match outcome {
            Outcome::Rotated { new_version, .. } => self.new_version = Some(new_version.clone()),
            Outcome::Failed { error, .. } => self.error = Some(error.clone()),
            _ => {}
        }
        self.ok = Some(!matches!(outcome, Outcome::Failed { .. } | Outcome::TooSoon { .. }));
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
        }
        inner.by_trigger.insert(requested_by(&job.requested_by, job.id), job.id);
        inner.order.push_back(job.id);
        inner.jobs.insert(job.id, job);
    }

    /// Job `id`, as it stands now.
    pub fn get(&self, id: &Uuid) -> Option<Job> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).jobs.get(id).cloned()
    }

    fn update(&self, request: &RotationRequest, change: impl FnOnce(&mut JobSecret)) {
        let Trigger::Manual { requested_by, .. } = &request.trigger else { return };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(id) = inner.by_trigger.get(requested_by).copied() else { return };
        let Some(job) = inner.jobs.get_mut(&id) else { return };
        if let Some(entry) = job.secrets.iter_mut().find(|s| s.secret == request.secret_name && !s.is_done()) {
            change(entry);
        }
        job.done = job.secrets.iter().all(JobSecret::is_done);
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
        let report = |request, outcome| RotationReport {
            request,
            rotation_id: None,
            outcome,
            duration: std::time::Duration::ZERO,
            attempts: 1,
            steps: Vec::new(),
        };
        jobs.finished(&report(request(&first, "a"), Outcome::NotDue { version: "v1".into(), due_at: None }));
        let done = jobs.get(&first.id).unwrap();
        assert!(done.done);
        assert_eq!((done.secrets[0].state.as_str(), done.secrets[0].ok), ("not-due", Some(true)));
        assert_eq!(done.secrets[1].state, "failed");

        for _ in 0..MAX_JOBS {
            jobs.insert(job(vec![JobSecret::queued("b", "v1")]));
        }
        assert!(jobs.get(&first.id).is_none(), "the oldest job is forgotten");
        assert_eq!(jobs.inner.lock().unwrap().by_trigger.len(), MAX_JOBS);
    }
}
