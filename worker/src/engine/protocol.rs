//! One attempt of the rotation protocol, one function per step. Every step is safe to
//! repeat, so an attempt that fails anywhere can simply be run again. The decisions about
//! the version and the journal record (the fence, whether a rotation passes the gate and
//! with which password, a leftover record's fate) are the planner's
//! ([`super::planner`]): the protocol gathers what it asks and acts on its answer.
//!
//! 1. [`fence`](fence::fence) — read the latest version; stop if the request names an
//!    older one, if the latest already carries this rotation's id, or if the secret is
//!    gone. A journal record such a request leaves behind is judged in [`leftover`].
//! 2. [`gate`] — a new rotation (no journal yet, or one the target does not use and this
//!    request did not write in an earlier attempt) starts
//!    only when it is wanted: a scheduled trigger (event, sweeper, resume) only when the
//!    version is due ([`super::due`]), and none within the minimum interval unless forced.
//!    [`plan`](plan::plan) then checks the tags and the account against the profile.
//! 3. [`prove_target_checks_passwords`](target::prove_target_checks_passwords) — a random
//!    canary must be refused, or no "accepted" from the target means anything.
//! 4. [`create`](pending::create) — reuse this rotation's journal record (only one
//!    kv-rotator wrote), or generate a password and write the record to Key Vault
//!    *before* touching the target.
//! 5. [`refence`](finish::refence) — the secret's latest version and the journal record
//!    are still the ones this attempt started from (again before finish): another
//!    engine's write stops it.
//! 6. [`set`](target::set) — the rotator makes the target accept the pending password
//!    (idempotent; told when this attempt just journaled it, so it need not try it first).
//! 7. [`test`](target::test) — log in with the pending password, unless `set` just proved
//!    it did.
//! 8. [`finish`](finish::finish) — write the new version (tags carried over plus rotation
//!    metadata, `exp = now + ValidityPeriodDays`), then delete the journal record if it is
//!    still ours.
//!
//! The invariant: a password the target accepts is always in Key Vault — in the latest
//! version or in the journal record.
//!
//! This file holds [`attempt`], the types the steps share, and the gate; each other step
//! is its own module.

mod fence;
mod finish;
mod leftover;
mod pending;
mod plan;
mod target;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use kv_rotator_core::tags::{TAG_RETIRE_AFTER, TAG_ROTATOR, TAG_TRIGGER, TRIGGER_MANUAL};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::{SecretProperties, SecretRecord};
use kv_rotator_rotators::{Rotator, VerifyRequest};
use secrecy::SecretString;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::due::{Due, DueRule};
use super::failpoints;
use super::planner::{self, Password, Record, Start};
use super::value::{Login, Shape};
use super::{Engine, Outcome, RotationError, StepLog};

pub(in crate::engine) use pending::{journal_passwords, journal_versions};
pub(crate) use target::refuses_a_random_password;

/// What a successful attempt decided.
#[derive(Debug)]
pub struct Done {
    /// The rotation id, when the secret is managed.
    pub rotation_id: Option<String>,
    /// How the request ended.
    pub outcome: Outcome,
}

impl Done {
    fn new(rotation_id: Option<&str>, outcome: Outcome) -> Self {
        Self { rotation_id: rotation_id.map(str::to_owned), outcome }
    }
}

/// What the fence found: the version this rotation starts from.
struct Fenced {
    /// The latest version, which is the source version.
    latest: SecretRecord,
    rotation_id: String,
    journal_name: String,
}

/// The plan derived from the latest version before anything is written.
struct Plan {
    profile: String,
    /// The account whose password changes: the `CredentialId`, or with alternating
    /// users the idle one of the pair.
    username: String,
    /// How the secret's value holds its login ([`Shape`]).
    shape: Shape,
    /// Alternating users: the pair, as (primary, twin), and the account active now.
    pair: Option<Pair>,
    validity_days: u32,
    new_tags: BTreeMap<String, String>,
    /// Multi-password: how long the old password stays valid after finish (then retired).
    grace_period: Option<std::time::Duration>,
}

impl Plan {
    /// The secret's `CredentialId`: the account itself, or the pair's primary.
    fn primary(&self) -> &str {
        self.pair.as_ref().map_or(&self.username, |pair| &pair.primary)
    }

    /// The login `value` (the secret's or a journal record's) stands for.
    fn login(&self, value: &SecretString) -> Result<Login, RotationError> {
        self.shape.login_of(self.primary(), value).map_err(RotationError::Misconfigured)
    }

    /// A login check of `value` as the account this rotation changes; `None` when the
    /// value stands for another account (the pair's active one: not this rotation's).
    fn verify_request(&self, value: &SecretString) -> Option<VerifyRequest> {
        let login = self.login(value).ok()?;
        (login.user == self.username).then_some(VerifyRequest::new(login.user, login.password))
    }
}

/// Alternating users: the two accounts, and which one consumers use now.
struct Pair {
    primary: String,
    twin: String,
    active: String,
}

/// The journal record this attempt works with: its password, and the version of the
/// record that holds it (so a record rewritten by anyone else is noticed).
struct Pending {
    value: SecretString,
    version: String,
    tags: BTreeMap<String, String>,
    /// Generated and journaled by this attempt ([`pending::create`]): no target
    /// can have it yet ([`SetPasswordRequest::pending_is_new`]), nor, with alternating
    /// users, can an earlier attempt have created the twin with it.
    new: bool,
}

/// Runs `step` and records its duration in `steps` under `name`.
async fn timed<T>(
    steps: &StepLog,
    name: &'static str,
    step: impl std::future::Future<Output = Result<T, RotationError>>,
) -> Result<T, RotationError> {
    let started = Instant::now();
    let result = step.await;
    steps.record(name, started.elapsed(), result.is_ok());
    result
}

/// Runs the protocol once for `request`, recording each step's duration in `steps`.
pub async fn attempt(engine: &Engine, request: &RotationRequest, steps: &StepLog) -> Result<Done, RotationError> {
    if !request.vault_name.eq_ignore_ascii_case(engine.store.vault_name()) {
        warn!(managed_vault = engine.store.vault_name(), "request names another vault; ignored");
        return Ok(Done::new(None, Outcome::OtherVault));
    }
    engine.check_lease()?;
    let fenced = match fence::fence(engine, request, steps).await? {
        Ok(fenced) => fenced,
        Err(done) => return Ok(done),
    };
    let retirement = retire_first(engine, steps, &fenced).await?;
    let existing = timed(steps, "journal-read", pending::read_journal(engine, &fenced)).await?;
    // Without a record the planner needs nothing from the target: the gate comes first.
    if existing.is_none() && planner::start(Record::Absent).gated {
        if let Some(outcome) = gate(engine, Schedule::of(&request.trigger), &fenced.latest).await? {
            return gated(&fenced, retirement, outcome);
        }
    }
    if let Err(e) = &retirement {
        warn!(error = %super::shown(e), "retiring old passwords failed; the rotation goes on, and its own retirement covers them");
    }
    let plan = plan::plan(engine, &fenced)?;
    let rotator_arc = rotator_for(engine, &fenced, &plan)?;
    let rotator = rotator_arc.as_ref();
    steps.set_rotator(rotator.kind());
    failpoints::hit("after-fence");
    // Per-profile limit: held from the journal to the finish, the steps that load the target.
    let _target_permit = engine.target_permit(&plan.profile).await;
    timed(steps, "canary", target::prove_target_checks_passwords(steps, rotator, &plan)).await?;
    let journaled = match existing {
        None => Journaled::of(planner::start(Record::Absent), None),
        Some(record) => {
            let judged = pending::judge(engine, steps, rotator, &plan, &fenced, record).await?;
            if judged.target_uses_it {
                // An earlier attempt or process set the target: it has the pending password.
                steps.mark_target_touched(&fenced.journal_name);
            }
            let start = planner::start(Record::Present { target_uses_it: judged.target_uses_it, own: judged.own });
            if start.gated {
                let schedule = Schedule::of_journal(&request.trigger, &judged.record);
                if let Some(outcome) = gate(engine, schedule, &fenced.latest).await? {
                    return gated(&fenced, retirement, outcome);
                }
            }
            Journaled::of(start, Some(judged.record))
        }
    };
    let pending = pending::create(engine, steps, rotator, &fenced, &plan, request, journaled).await?;
    failpoints::hit("after-journal");
    finish::refence(engine, &fenced, &pending, "set").await?;
    let proven = timed(steps, "set", target::set(engine, steps, rotator, &plan, &fenced, &pending)).await?;
    steps.mark_target_touched(&fenced.journal_name);
    failpoints::hit("after-set");
    pending::mark_target_set(engine, &fenced, &pending).await;
    failpoints::hit("after-step-tag");
    if proven {
        // `set` ended with the login `test` would make; still a step of the audit record.
        steps.record_proven("test", "set");
    } else {
        timed(steps, "test", target::test(rotator, &plan, &pending)).await?;
    }
    failpoints::hit("after-test");
    finish::refence(engine, &fenced, &pending, "finish").await?;
    finish::finish(engine, steps, rotator, plan, fenced, pending).await
}

/// Multi-password: the passwords the grace period kept go first, so a request that is
/// not a rotation (the sweeper's, for this) ends with them retired. The inner result is
/// the retirement's: a failure is this request's outcome only if no rotation follows (a
/// rotation writes a version whose own retirement covers these passwords, and must not
/// be blocked by one: a `--force` after a password leak, a resume).
async fn retire_first(
    engine: &Engine,
    steps: &StepLog,
    fenced: &Fenced,
) -> Result<Result<Option<usize>, RotationError>, RotationError> {
    let retirement = match fenced.latest.properties.tags.contains_key(TAG_RETIRE_AFTER) {
        true => timed(steps, "retire", super::retire::retire_if_due(engine, &fenced.latest)).await,
        false => Ok(None),
    };
    // A lost lease ends the request; so does what an operator must fix (a target that
    // took the canary, an account the profile may not change): a rotation would not
    // be safe either, and the canary this request remembers would skip the proof.
    match retirement {
        Err(e @ (RotationError::LeaseLost | RotationError::LeaseLapsed | RotationError::Misconfigured(_))) => Err(e),
        retirement => Ok(retirement),
    }
}

/// The outcome of a request the gate ends: what the retirement did, or its failure.
fn gated(
    fenced: &Fenced,
    retirement: Result<Option<usize>, RotationError>,
    outcome: Outcome,
) -> Result<Done, RotationError> {
    let outcome = match retirement? {
        Some(removed) => Outcome::Retired { version: fenced.latest.version.clone(), removed },
        None => outcome,
    };
    Ok(Done::new(Some(&fenced.rotation_id), outcome))
}

/// The rotator of the profile the secret's `rotator` tag names.
fn rotator_for(engine: &Engine, fenced: &Fenced, plan: &Plan) -> Result<Arc<dyn Rotator>, RotationError> {
    engine.targets.rotator(&plan.profile).ok_or_else(|| {
        RotationError::Misconfigured(format!(
            "secret {:?} names target profile {:?} in its {TAG_ROTATOR:?} tag, but the configuration has no such profile",
            fenced.latest.name, plan.profile
        ))
    })
}

/// Step 2: whether a new rotation is wanted now. Scheduled triggers (events, the
/// sweeper, resumes whose journal is gone) need a due version; every trigger but a
/// forced manual one respects the minimum interval since the latest version was written.
async fn gate(engine: &Engine, schedule: Schedule, latest: &SecretRecord) -> Result<Option<Outcome>, RotationError> {
    let now = OffsetDateTime::now_utc();
    let grace = latest.properties.tags.get(TAG_ROTATOR).and_then(|profile| engine.targets.grace_period(profile));
    if schedule == Schedule::Due {
        log_window(&engine.due_rule, latest, now);
    }
    match gate_rule(&engine.due_rule, schedule, &latest.version, &latest.properties, grace, now) {
        GateRule::Open => Ok(None),
        GateRule::Closed(outcome) => {
            match &outcome {
                Outcome::NotDue { version, due_at: Some(due_at) } => {
                    info!(%version, due_at = %due_at.format(&Rfc3339).unwrap_or_default(), "version not due yet; nothing to do");
                }
                Outcome::OutsideWindow { version, opens_at } => info!(
                    %version,
                    opens_at = %opens_at.format(&Rfc3339).unwrap_or_default(),
                    "due, but its rotation window is closed; the sweeper starts it in the window"
                ),
                _ => {}
            }
            Ok(Some(outcome))
        }
        GateRule::TooSoonIfRotatedBefore(outcome) => {
            // A secret with a single version was never rotated: onboarding it is not a storm.
            // (`created` is the service's own clock; no tag can move it.)
            if engine.store.list_versions(&latest.name).await?.len() <= 1 {
                return Ok(None);
            }
            info!(version = %latest.version, outcome = %outcome, "too soon after the latest version; nothing to do");
            Ok(Some(outcome))
        }
    }
}

/// Says why a scheduled rotation ignores the window it would otherwise wait for: the
/// secret's window tag is unusable, or the window opens too close to `exp`.
fn log_window(rule: &DueRule, latest: &SecretRecord, now: OffsetDateTime) {
    if let (_, Some(problem)) = rule.windows.of(&latest.properties) {
        warn!(secret = %latest.name, "{problem}");
    }
    if let Due::WindowTooLate { opens_at } = rule.check(&latest.properties, now) {
        warn!(
            secret = %latest.name,
            opens_at = %opens_at.format(&Rfc3339).unwrap_or_default(),
            "the rotation window opens less than engine.window_expiry_margin_hours before exp: rotating now, outside it"
        );
    }
}

/// What [`gate`] decides from the latest version alone ([`gate_rule`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GateRule {
    /// A new rotation may start.
    Open,
    /// The request ends here with this outcome.
    Closed(Outcome),
    /// Too soon ([`Outcome::TooSoon`], or [`Outcome::NotDue`] within a grace period) if
    /// the secret has more than one version; a secret's first rotation is never capped.
    TooSoonIfRotatedBefore(Outcome),
}

/// The pure part of [`gate`], shared with `rotate --dry-run`: the due rule for scheduled
/// triggers, then the minimum interval for all but forced ones.
pub(crate) fn gate_rule(
    rule: &DueRule,
    schedule: Schedule,
    version: &str,
    properties: &SecretProperties,
    grace: Option<std::time::Duration>,
    now: OffsetDateTime,
) -> GateRule {
    let version = version.to_owned();
    if schedule == Schedule::Due {
        match rule.check(properties, now) {
            Due::NoExpiry | Due::Expired | Due::NearExpiry | Due::WindowTooLate { .. } => {}
            Due::NotYet { due_at } => return GateRule::Closed(Outcome::NotDue { version, due_at: Some(due_at) }),
            Due::WaitingForWindow { opens_at } => {
                return GateRule::Closed(Outcome::OutsideWindow { version, opens_at })
            }
            Due::Disabled => return GateRule::Closed(Outcome::NotDue { version, due_at: None }),
        }
    }
    // Multi-password and alternating users: the previous value works until `grace` after
    // the latest was written; no rotation but a forced one replaces or resets it sooner
    // (rotations faster than that would pile passwords up, or reset an account in use).
    // A secret's first version has no previous value to protect: onboarding is not held.
    if let (Some(grace), Some(created), false) = (grace, properties.created, schedule == Schedule::Forced) {
        let until = created + grace;
        if now < until {
            return GateRule::TooSoonIfRotatedBefore(Outcome::NotDue { version, due_at: Some(until) });
        }
    }
    if schedule == Schedule::Forced {
        return GateRule::Open;
    }
    match rule.too_soon(properties, now) {
        None => GateRule::Open,
        Some(allowed_at) => GateRule::TooSoonIfRotatedBefore(Outcome::TooSoon { version, allowed_at }),
    }
}

/// What a new rotation must respect ([`gate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Schedule {
    /// Events, the sweeper, resumes: the version must be due, and the minimum interval past.
    Due,
    /// A manual request: the minimum interval past.
    Manual,
    /// `rotate --force`: nothing.
    Forced,
}

impl Schedule {
    pub(crate) fn of(trigger: &Trigger) -> Self {
        match trigger {
            Trigger::Manual { force: true, .. } => Schedule::Forced,
            Trigger::Manual { force: false, .. } => Schedule::Manual,
            Trigger::EventGrid { .. } | Trigger::Sweeper | Trigger::Resume { .. } => Schedule::Due,
        }
    }

    /// A resume of a record a manual request started is held to the manual rule (it need
    /// not be due); never to "forced", which a tag could claim.
    fn of_journal(trigger: &Trigger, record: &SecretRecord) -> Self {
        let manual = record.properties.tags.get(TAG_TRIGGER).is_some_and(|t| t == TRIGGER_MANUAL);
        match Schedule::of(trigger) {
            Schedule::Due if manual => Schedule::Manual,
            other => other,
        }
    }
}

/// The pending password's source, as the planner chose it ([`Start::password`]).
enum Journaled {
    /// A password generated now, journaled over the record found (if any).
    Fresh(Option<SecretRecord>),
    /// The record's own password.
    Reuse(SecretRecord),
}

impl Journaled {
    fn of(start: Start, record: Option<SecretRecord>) -> Self {
        match (start.password, record) {
            (Password::Journaled, Some(record)) => Journaled::Reuse(record),
            // The planner reuses only a record that exists.
            (Password::Fresh, record) | (Password::Journaled, record @ None) => Journaled::Fresh(record),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grace period holds unforced rotations of a recent version, but never opens
    /// what the due rule closes: a scheduled trigger for a version not yet due stays
    /// closed however the grace period's own exemption (a first version) would go.
    #[test]
    fn the_grace_period_holds_unforced_rotations_and_never_skips_the_due_rule() {
        let now = OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let grace = Some(std::time::Duration::from_secs(86_400));
        let props = |created: OffsetDateTime, expires: OffsetDateTime| SecretProperties {
            created: Some(created),
            expires: Some(expires),
            enabled: true,
            ..Default::default()
        };
        let rule = DueRule::default();
        let recent_not_due = props(now - time::Duration::hours(1), now + 45 * day);
        let gate = |schedule, p: &SecretProperties| gate_rule(&rule, schedule, "v", p, grace, now);
        assert!(matches!(gate(Schedule::Due, &recent_not_due), GateRule::Closed(Outcome::NotDue { .. })));
        let recent_due = props(now - time::Duration::hours(1), now + day);
        assert!(matches!(
            gate(Schedule::Due, &recent_due),
            GateRule::TooSoonIfRotatedBefore(Outcome::NotDue { due_at: Some(_), .. })
        ));
        assert!(matches!(gate(Schedule::Manual, &recent_due), GateRule::TooSoonIfRotatedBefore(_)));
        assert_eq!(gate(Schedule::Forced, &recent_due), GateRule::Open);
        let old_due = props(now - 2 * day, now + day);
        assert_eq!(gate_rule(&rule, Schedule::Due, "v", &old_due, grace, now), GateRule::Open);
        assert_eq!(gate_rule(&rule, Schedule::Due, "v", &recent_due, None, now), GateRule::Open, "single-user");
    }
}
