//! The steps of one request ([`StepLog`]): every attempt's timed steps, and what an
//! attempt leaves for the next (whether the target may have the pending password, the
//! journal version it wrote, a refused canary).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::report::StepRecord;

/// The steps of every attempt of one request, in order, and whether the target may
/// already have the pending password.
#[derive(Debug, Default)]
pub struct StepLog {
    attempt: AtomicU32,
    steps: Mutex<Vec<StepRecord>>,
    target_touched: Mutex<Option<String>>,
    /// The target refused a random password during this request (the canary).
    canary_refused: AtomicBool,
    /// The journal version this request wrote (trusted by its own later attempts).
    own_journal_version: Mutex<Option<String>>,
    /// Alternating users: the idle account's canary was refused in this request.
    idle_canary_refused: Mutex<Option<String>>,
    /// The kind of the rotator the secret's profile names, once it is known (metrics).
    rotator: std::sync::OnceLock<&'static str>,
}

impl StepLog {
    /// From now on the target may have the password journaled in `journal`.
    pub(super) fn mark_target_touched(&self, journal: &str) {
        *self.target_touched.lock().expect("step log poisoned") = Some(journal.to_owned());
    }

    pub(super) fn set_own_journal_version(&self, version: &str) {
        *self.own_journal_version.lock().expect("step log poisoned") = Some(version.to_owned());
    }

    pub(super) fn own_journal_version(&self) -> Option<String> {
        self.own_journal_version.lock().expect("step log poisoned").clone()
    }

    /// The target refused a random password earlier in this request.
    pub(super) fn canary_refused(&self) -> bool {
        self.canary_refused.load(Ordering::SeqCst)
    }

    pub(super) fn canary_refused_for(&self, account: &str) -> bool {
        self.idle_canary_refused.lock().expect("step log poisoned").as_deref() == Some(account)
    }

    pub(super) fn mark_canary_refused_for(&self, account: &str) {
        *self.idle_canary_refused.lock().expect("step log poisoned") = Some(account.to_owned());
    }

    pub(super) fn mark_canary_refused(&self) {
        self.canary_refused.store(true, Ordering::SeqCst);
    }

    /// The journal record whose password the target may have, once `set` has run (or a
    /// journal from an earlier attempt was found).
    pub(super) fn target_touched(&self) -> Option<String> {
        self.target_touched.lock().expect("step log poisoned").clone()
    }

    pub(super) fn next_attempt(&self) -> u32 {
        self.attempt.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(super) fn record(&self, step: &'static str, duration: Duration, ok: bool) {
        let attempt = self.attempt.load(Ordering::SeqCst);
        self.steps.lock().expect("step log poisoned").push(StepRecord { attempt, step, duration, ok, proven_by: None });
    }

    /// `step` succeeded without running: `by` (an earlier step of this attempt) proved it.
    pub(super) fn record_proven(&self, step: &'static str, by: &'static str) {
        let attempt = self.attempt.load(Ordering::SeqCst);
        let record = StepRecord { attempt, step, duration: Duration::ZERO, ok: true, proven_by: Some(by) };
        self.steps.lock().expect("step log poisoned").push(record);
    }

    /// The secret's profile is of rotator kind `kind` (`postgres`, `exec`, …).
    pub(crate) fn set_rotator(&self, kind: &'static str) {
        let _ = self.rotator.set(kind);
    }

    /// The rotator kind, once the profile was read.
    pub(super) fn rotator(&self) -> Option<&'static str> {
        self.rotator.get().copied()
    }

    pub(super) fn take(&self) -> (u32, Vec<StepRecord>) {
        let attempts = self.attempt.load(Ordering::SeqCst);
        (attempts, std::mem::take(&mut *self.steps.lock().expect("step log poisoned")))
    }
}
