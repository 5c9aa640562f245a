//! What a request's end looks like: its [`Outcome`], the [`RotationReport`] every trigger
//! gets back, and the audit record (log target `kv_rotator::audit`, and metrics) written
//! from it. Names, versions and durations only: never a password.

use std::fmt;
use std::time::Duration;

use kv_rotator_core::{RotationRequest, Trigger};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::info;

use super::Engine;

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
    /// A scheduled trigger for a due version whose rotation window is closed: the
    /// sweeper starts it once the window opens.
    OutsideWindow {
        /// The latest version.
        version: String,
        /// When the window opens.
        opens_at: OffsetDateTime,
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
            Outcome::OutsideWindow { .. } => "outside_window",
            Outcome::TooSoon { .. } => "too_soon",
            Outcome::Retired { .. } => "retired",
            Outcome::OtherVault => "other_vault",
            Outcome::Failed { unfinished_journal: None, .. } => "failed",
            Outcome::Failed { unfinished_journal: Some(_), .. } => "failed_unfinished",
        }
    }
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
            Outcome::OutsideWindow { version, opens_at } => write!(
                f,
                "version {version} is due, but its rotation window is closed: the sweeper rotates it after {} (or rotate it by hand now)",
                opens_at.format(&Rfc3339).unwrap_or_default()
            ),
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
pub(super) fn request_span(request: &RotationRequest) -> tracing::Span {
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

impl Engine {
    /// The audit record to the log and the metrics.
    pub(super) fn record(&self, report: &RotationReport) {
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
}
