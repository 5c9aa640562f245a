//! One attempt of the rotation protocol, one function per step. Every step is safe to
//! repeat, so an attempt that fails anywhere can simply be run again:
//!
//! 1. [`fence`] — read the latest version; stop if the request names an older one, if
//!    the latest already carries this rotation's id, or if the secret is gone.
//! 2. [`gate`] — a new rotation (no journal yet) starts only when it is wanted: a
//!    scheduled trigger (event, sweeper, resume) only when the version is due
//!    ([`super::due`]), and none within the minimum interval unless forced.
//!    [`plan`] then checks the tags and the account against the profile.
//! 3. [`prove_target_checks_passwords`] — a random canary must be refused, or no
//!    "accepted" from the target means anything.
//! 4. [`create`] — reuse this rotation's journal record (only one kv-rotator wrote), or
//!    generate a password and write the record to Key Vault *before* touching the target.
//! 5. [`refence`] — the secret's latest version and the journal record are still the
//!    ones this attempt started from (again before finish): another engine's write stops it.
//! 6. [`set`] — the rotator makes the target accept the pending password (idempotent;
//!    told when this attempt just journaled it, so it need not try it first).
//! 7. [`test`] — log in with the pending password, unless `set` just proved it did.
//! 8. [`finish`] — write the new version (tags carried over plus rotation metadata,
//!    `exp = now + ValidityPeriodDays`), then delete the journal record if it is still ours.
//!
//! The invariant: a password the target accepts is always in Key Vault — in the latest
//! version or in the journal record.

use std::collections::BTreeMap;
use std::time::Instant;

use kv_rotator_core::limits::MAX_TAGS;
use kv_rotator_core::tags::{
    STEP_PENDING, STEP_TARGET_SET, TAG_ACCOUNT, TAG_ATTEMPTS, TAG_CREDENTIAL_ID, TAG_FAILED, TAG_JOURNAL_FOR,
    TAG_PROFILE, TAG_RETIRE_AFTER, TAG_ROTATED_AT, TAG_ROTATED_FROM, TAG_ROTATION_ID, TAG_ROTATOR, TAG_STEP,
    TAG_TRIGGER, TRIGGER_MANUAL, TRIGGER_SCHEDULED,
};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::{NewSecretVersion, PropertiesUpdate, SecretProperties, SecretRecord, StoreError};
use kv_rotator_rotators::{
    Credential, Rotator, RotatorError, SetPasswordRequest, SyncTwinRequest, VerifyRequest, VerifyResponse,
};
use secrecy::{ExposeSecret, SecretString};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use super::due::{Due, DueRule};
use super::failpoints;
use super::journal::{self, JOURNAL_CONTENT_TYPE, RESERVED_PREFIX};
use super::planner::{self, Fence, Latest, StaleJournal, Target};
use super::value::{Login, Shape};
use super::{Engine, Outcome, RotationError, StepLog};

/// Older versions whose passwords `set` may try after the current one.
const PREVIOUS_PASSWORDS: usize = 2;

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
    /// Generated and journaled by this attempt ([`journal_fresh_password`]): no target
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
    let fenced = match fence(engine, request, steps).await? {
        Ok(fenced) => fenced,
        Err(done) => return Ok(done),
    };
    // Multi-password: the passwords the grace period kept go first, so a request that
    // is not a rotation (the sweeper's, for this) ends with them retired.
    // A failure is this request's outcome only if no rotation follows: a rotation writes
    // a version whose own retirement covers these passwords, and must not be blocked by
    // one (a `--force` after a password leak, a resume).
    let retirement = match fenced.latest.properties.tags.contains_key(TAG_RETIRE_AFTER) {
        true => timed(steps, "retire", super::retire::retire_if_due(engine, &fenced.latest)).await,
        false => Ok(None),
    };
    // A lost lease ends the request; so does what an operator must fix (a target that
    // took the canary, an account the profile may not change): a rotation would not
    // be safe either, and the canary this request remembers would skip the proof.
    if let Err(RotationError::LeaseLost | RotationError::LeaseLapsed | RotationError::Misconfigured(_)) = retirement {
        return Err(retirement.expect_err("matched an error"));
    }
    // The outcome of a request the gate ends: what the retirement did, or its failure.
    let gated = |retirement: Result<Option<usize>, RotationError>, outcome: Outcome| -> Result<Done, RotationError> {
        let outcome = match retirement? {
            Some(removed) => Outcome::Retired { version: fenced.latest.version.clone(), removed },
            None => outcome,
        };
        Ok(Done::new(Some(&fenced.rotation_id), outcome))
    };
    let existing = timed(steps, "journal-read", read_journal(engine, &fenced)).await?;
    if existing.is_none() {
        if let Some(outcome) = gate(engine, Schedule::of(&request.trigger), &fenced.latest).await? {
            return gated(retirement, outcome);
        }
    }
    if let Err(e) = &retirement {
        warn!(error = %super::shown(e), "retiring old passwords failed; the rotation goes on, and its own retirement covers them");
    }
    let plan = plan(engine, &fenced)?;
    let rotator_arc = engine.targets.rotator(&plan.profile).ok_or_else(|| {
        RotationError::Misconfigured(format!(
            "secret {:?} names target profile {:?} in its {TAG_ROTATOR:?} tag, but the configuration has no such profile",
            fenced.latest.name, plan.profile
        ))
    })?;
    let rotator = rotator_arc.as_ref();
    steps.set_rotator(rotator.kind());
    failpoints::hit("after-fence");
    // Per-profile limit: held from the journal to the finish, the steps that load the target.
    let _target_permit = engine.target_permit(&plan.profile).await;
    timed(steps, "canary", prove_target_checks_passwords(steps, rotator, &plan)).await?;
    let journaled = match existing {
        None => Journaled::None,
        Some(record) => match journal_version_in_use(engine, steps, rotator, &plan, &fenced, record).await? {
            (record, true) => {
                // An earlier attempt or process set the target: it has the pending password.
                steps.mark_target_touched(&fenced.journal_name);
                Journaled::InUse(record)
            }
            (record, false) => {
                // A record the target does not use is a rotation not yet begun: it does
                // not get past the schedule, and its password is not trusted (it may be
                // planted): a fresh one is journaled over it.
                let schedule = Schedule::of_journal(&request.trigger, &record);
                if let Some(outcome) = gate(engine, schedule, &fenced.latest).await? {
                    return gated(retirement, outcome);
                }
                Journaled::Unused(record)
            }
        },
    };
    let pending = create(engine, steps, rotator, &fenced, &plan, request, journaled).await?;
    failpoints::hit("after-journal");
    refence(engine, &fenced, &pending, "set").await?;
    let proven = timed(steps, "set", set(engine, steps, rotator, &plan, &fenced, &pending)).await?;
    steps.mark_target_touched(&fenced.journal_name);
    failpoints::hit("after-set");
    mark_target_set(engine, &fenced, &pending).await;
    failpoints::hit("after-step-tag");
    if proven {
        // `set` ended with the login `test` would make; still a step of the audit record.
        steps.record_proven("test", "set");
    } else {
        timed(steps, "test", test(rotator, &plan, &pending)).await?;
    }
    failpoints::hit("after-test");
    refence(engine, &fenced, &pending, "finish").await?;
    finish(engine, steps, rotator, plan, fenced, pending).await
}

/// Step 1: reads the latest version and decides whether this request rotates it.
/// `Ok(Err(done))`: the request ends here.
async fn fence(
    engine: &Engine,
    request: &RotationRequest,
    steps: &StepLog,
) -> Result<Result<Fenced, Done>, RotationError> {
    let store = engine.store.as_ref();
    let secret = request.secret_name.as_str();
    if secret.to_ascii_lowercase().starts_with(RESERVED_PREFIX) {
        info!("kv-rotator's own record (journal or lease); never managed");
        return Ok(Err(Done::new(None, Outcome::NotManaged)));
    }
    let latest = match timed(steps, "fence", async { Ok(store.get_latest(secret).await) }).await? {
        Ok(latest) => Some(latest),
        Err(StoreError::NotFound { .. }) => None,
        Err(other) => return Err(other.into()),
    };
    // Key Vault's version ids are case-insensitive; the webhook lower-cases them too.
    let source_version = match (request.version.as_deref(), &latest) {
        (Some(version), _) => version.to_ascii_lowercase(),
        (None, Some(latest)) => latest.version.to_ascii_lowercase(),
        (None, None) => String::new(),
    };
    let rotation_id = journal::rotation_id(store.vault_name(), secret, &source_version);
    let journal_name = journal::journal_name(&rotation_id);
    let latest = match latest {
        Some(latest) if latest.properties.tags.contains_key(TAG_ROTATOR) => latest,
        other => {
            let (outcome, what) = match other {
                Some(_) => (Outcome::NotManaged, "has no rotator tag"),
                None => (Outcome::NotFound, "no longer exists"),
            };
            return match store.get_latest(&journal_name).await {
                Err(StoreError::NotFound { .. }) => {
                    info!(%outcome, "nothing to rotate");
                    Ok(Err(Done::new(None, outcome)))
                }
                Err(other) => Err(other.into()),
                // A journal may hold the only working password: never pass over it silently.
                Ok(_) => Err(RotationError::Misconfigured(format!(
                    "secret {secret:?} {what}, but journal record {journal_name} holds a pending password of its \
                     rotation {rotation_id}, which the target may already use: restore the secret (or its tags) so \
                     kv-rotator finishes it, or finish it by hand"
                ))),
            };
        }
    };
    let seen = if latest.version.eq_ignore_ascii_case(&source_version) {
        Latest::IsSource
    } else if latest.properties.tags.get(TAG_ROTATION_ID) == Some(&rotation_id) {
        Latest::CarriesRotationId
    } else {
        Latest::Newer
    };
    match planner::fence(seen) {
        Fence::Rotate => Ok(Ok(Fenced { latest, rotation_id, journal_name })),
        Fence::AlreadyRotated => {
            clean_up_finished_journal(engine, &latest, &rotation_id, &journal_name).await?;
            let version = latest.version;
            Ok(Err(Done::new(Some(&rotation_id), Outcome::AlreadyRotated { version })))
        }
        Fence::Stale => {
            inspect_stale_journal(engine, &latest, &rotation_id, &journal_name).await?;
            info!(requested = %source_version, latest = %latest.version, "request names an older version; nothing to do");
            Ok(Err(Done::new(None, Outcome::Stale { requested: source_version, latest: latest.version })))
        }
    }
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

/// The journal record found for this rotation, judged against the target.
enum Journaled {
    /// None: a new rotation.
    None,
    /// The target accepts its password: resume with it.
    InUse(SecretRecord),
    /// The target accepts none of its passwords: a rotation not begun.
    Unused(SecretRecord),
}

/// Checks the secret's tags and the account against the profile, and derives
/// everything `finish` will write, so that a secret that cannot be finished (or must not
/// be rotated) fails before the target is touched.
fn plan(engine: &Engine, fenced: &Fenced) -> Result<Plan, RotationError> {
    let latest = &fenced.latest;
    let tags = &latest.properties.tags;
    let name = &latest.name;
    let profile = tags.get(TAG_ROTATOR).cloned().unwrap_or_default();
    let username =
        tags.get(TAG_CREDENTIAL_ID).map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).ok_or_else(|| {
            RotationError::Misconfigured(format!(
                "secret {name:?} has no {TAG_CREDENTIAL_ID:?} tag naming the user on the target"
            ))
        })?;
    if let Some(why) = engine.targets.refuse_account(&profile, &username) {
        return Err(RotationError::Misconfigured(format!(
            "secret {name:?}: {why}; its {TAG_CREDENTIAL_ID:?} tag is refused and nothing was changed"
        )));
    }
    let shape = engine.targets.shape(&profile);
    let (username, pair) = match shape.twin(&username) {
        None => (username, None),
        Some(twin) => {
            if let Shape::Pair { twin_suffix } = &shape {
                if username.ends_with(twin_suffix.as_str()) {
                    return Err(RotationError::Misconfigured(format!(
                        "secret {name:?}: its {TAG_CREDENTIAL_ID:?} {username:?} ends with the profile's twin_suffix \
                         {twin_suffix:?}: name the primary account, not a twin; nothing was changed"
                    )));
                }
            }
            if let Some(why) = engine.targets.refuse_account(&profile, &twin) {
                return Err(RotationError::Misconfigured(format!(
                    "secret {name:?}: the twin of {username:?}: {why}; nothing was changed"
                )));
            }
            let active = shape
                .login_of(&username, &latest.value)
                .map_err(|e| RotationError::Misconfigured(format!("secret {name:?}: {e}; nothing was changed")))?
                .user;
            let idle = if active == username { twin.clone() } else { username.clone() };
            (idle, Some(Pair { primary: username, twin, active }))
        }
    };
    let validity_days = engine
        .due_rule
        .validity_days(&latest.properties)
        .map_err(|e| RotationError::Misconfigured(format!("secret {name:?}: {e}")))?;
    let mut new_tags = tags.clone();
    // A successful rotation clears an earlier failure mark.
    new_tags.remove(TAG_FAILED);
    new_tags.insert(TAG_ROTATION_ID.to_owned(), fenced.rotation_id.clone());
    new_tags.insert(TAG_ROTATED_FROM.to_owned(), latest.version.clone());
    let grace_period = engine.targets.grace_period(&profile).filter(|_| engine.targets.multi_password(&profile));
    // Written at finish (multi-password: the old password's retirement is outstanding).
    new_tags.remove(TAG_RETIRE_AFTER);
    let added_at_finish = [Some(TAG_ROTATED_AT), grace_period.map(|_| TAG_RETIRE_AFTER)];
    let count = new_tags.len() + added_at_finish.iter().flatten().filter(|t| !new_tags.contains_key(**t)).count();
    if count > MAX_TAGS {
        return Err(RotationError::Misconfigured(format!(
            "secret {name:?} has {} tags; kv-rotator adds {TAG_ROTATION_ID:?}, {TAG_ROTATED_AT:?} and {TAG_ROTATED_FROM:?}{} and Key Vault allows {MAX_TAGS}: remove some tags",
            tags.len() - [TAG_FAILED, TAG_RETIRE_AFTER].iter().filter(|t| tags.contains_key(**t)).count(),
            if grace_period.is_some() { format!(" (and {TAG_RETIRE_AFTER:?}: multi-password)") } else { String::new() },
        )));
    }
    Ok(Plan { profile, username, shape, pair, validity_days, new_tags, grace_period })
}

/// Step 3: a random password must be refused. A target that accepts anything (`trust`
/// in `pg_hba.conf`, a sidecar answering for it) would make `set` believe the pending
/// password already works and `test` pass, and a version no consumer can use be written.
/// A refusal counts for the rest of the request, so its retries and finishing attempts
/// add no refused logins (lockout policies count them); the next request asks again, so
/// a target that turned to trusting everyone is caught at its next rotation.
async fn prove_target_checks_passwords(
    steps: &StepLog,
    rotator: &dyn Rotator,
    plan: &Plan,
) -> Result<(), RotationError> {
    if steps.canary_refused() {
        return Ok(());
    }
    // Alternating users: the active account here (the idle one may not exist yet: it is
    // asked in `set`, once the twin is synced).
    let account = plan.pair.as_ref().map_or(&plan.username, |p| &p.active);
    canary(rotator, &plan.profile, account, "nothing was written").await?;
    steps.mark_canary_refused();
    Ok(())
}

/// The canary for `account`: a random password must be refused; `consequence` says what
/// a failure left undone.
async fn canary(rotator: &dyn Rotator, profile: &str, account: &str, consequence: &str) -> Result<(), RotationError> {
    match refuses_a_random_password(rotator, account).await {
        Ok(true) => Ok(()),
        Err(source) => Err(RotationError::Target { profile: profile.to_owned(), source }),
        Ok(false) => Err(RotationError::Misconfigured(format!(
            "target {profile} accepted a random wrong password for {account:?}: it does not check this account's \
             password (e.g. trust in pg_hba.conf for the worker's address), so no login can prove which password \
             works; {consequence}"
        ))),
    }
}

/// Whether the target refuses a random password for `username` (the canary).
pub(crate) async fn refuses_a_random_password(rotator: &dyn Rotator, username: &str) -> Result<bool, RotatorError> {
    let canary = rotator.password_policy().generate();
    let verdict = rotator.verify(VerifyRequest::new(username, canary)).await?;
    Ok(verdict == VerifyResponse::Rejected)
}

/// This rotation's journal record, if there is one — refused unless it is exactly what
/// kv-rotator writes (content type, tags, rotation id): a record planted under the
/// expected name must not choose the password set on the target.
async fn read_journal(engine: &Engine, fenced: &Fenced) -> Result<Option<SecretRecord>, RotationError> {
    let record = match engine.store.get_latest(&fenced.journal_name).await {
        Ok(record) => record,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(other) => return Err(other.into()),
    };
    let tags = &record.properties.tags;
    let tag_is = |key: &str, want: &str| tags.get(key).is_some_and(|v| v.eq_ignore_ascii_case(want));
    let ours = record.properties.content_type.as_deref() == Some(JOURNAL_CONTENT_TYPE)
        && tags.get(TAG_ROTATION_ID) == Some(&fenced.rotation_id)
        && tag_is(TAG_JOURNAL_FOR, &fenced.latest.name)
        && tag_is(TAG_ROTATED_FROM, &fenced.latest.version);
    if !ours {
        return Err(RotationError::Misconfigured(format!(
            "journal record {} does not carry the content type and tags kv-rotator writes for rotation {} of {:?}; \
             it is not used (its password may be planted) nor deleted: an operator must check it",
            fenced.journal_name, fenced.rotation_id, fenced.latest.name
        )));
    }
    Ok(Some(record))
}

/// Every enabled version of the journal record, newest first (none when there is no
/// record): each may hold a password a target took (another engine's write over ours),
/// so none is overlooked while the record exists.
pub(super) async fn journal_passwords(engine: &Engine, journal_name: &str) -> Result<Vec<SecretRecord>, RotationError> {
    let store = engine.store.as_ref();
    let versions = match store.list_versions(journal_name).await {
        Ok(versions) => versions,
        // No record (or deleted meanwhile): nothing journaled.
        Err(StoreError::NotFound { .. }) => return Ok(Vec::new()),
        Err(other) => return Err(other.into()),
    };
    let mut records = Vec::new();
    for version in versions.iter().rev() {
        let Some(id) = version.version.as_deref() else { continue };
        if version.enabled {
            records.push(store.get_version(journal_name, id).await?);
        }
    }
    Ok(records)
}

/// The journal record's version to resume with, and whether the target already uses
/// its password: its latest, unless an older version's password is the one the target
/// accepts (another engine journaled over a password it had already set) — then that
/// password is journaled again as the latest version, so the record's latest is always
/// the one to finish with.
async fn journal_version_in_use(
    engine: &Engine,
    steps: &StepLog,
    rotator: &dyn Rotator,
    plan: &Plan,
    fenced: &Fenced,
    latest: SecretRecord,
) -> Result<(SecretRecord, bool), RotationError> {
    // This request wrote it: whether the target may have it is known without a login
    // (refused logins count toward lockouts).
    if steps.own_journal_version().as_deref() == Some(latest.version.as_str()) {
        let touched = steps.target_touched().is_some();
        return Ok((latest, touched));
    }
    let versions = journal_passwords(engine, &fenced.journal_name).await?;
    // Every version must be for the account this rotation changes: a record written for
    // another (the CredentialId tag or the strategy changed since) may hold a password
    // that account uses; it is kept for an operator, never journaled over.
    for record in &versions {
        let tagged = record.properties.tags.get(TAG_ACCOUNT).map(|a| a.trim());
        let named = plan.login(&record.value).ok().map(|login| login.user);
        if tagged.is_some_and(|a| a != plan.username) || named.as_deref() != Some(plan.username.as_str()) {
            return Err(RotationError::Misconfigured(format!(
                "journal record {} (version {}) was written for account {:?}, and this rotation changes {:?} (the \
                 secret's {TAG_CREDENTIAL_ID:?} tag or the profile's strategy changed since): it is kept, as it may \
                 hold the password that account uses; finish it by hand, or restore the tag or strategy",
                fenced.journal_name,
                record.version,
                tagged.unwrap_or("(not named)"),
                plan.username
            )));
        }
    }
    for record in &versions {
        let Some(request) = plan.verify_request(&record.value) else { continue };
        let verdict = rotator
            .verify(request)
            .await
            .map_err(|source| RotationError::Target { profile: plan.profile.clone(), source })?;
        if verdict == VerifyResponse::Rejected {
            continue;
        }
        if record.version == latest.version {
            return Ok((latest, true));
        }
        warn!(journal = %fenced.journal_name, version = %record.version, "the target uses an older version of the journal record; journaling it again as the latest");
        let again = NewSecretVersion {
            value: record.value.clone(),
            tags: latest.properties.tags.clone(),
            content_type: Some(JOURNAL_CONTENT_TYPE.to_owned()),
            expires: None,
            not_before: None,
        };
        return Ok((engine.store.set_secret(&fenced.journal_name, again).await?, true));
    }
    Ok((latest, false))
}

/// Step 4: reuse the journal's pending password, or generate one and journal it before
/// the target sees it.
async fn create(
    engine: &Engine,
    steps: &StepLog,
    rotator: &dyn Rotator,
    fenced: &Fenced,
    plan: &Plan,
    request: &RotationRequest,
    journaled: Journaled,
) -> Result<Pending, RotationError> {
    let trigger = match request.trigger {
        Trigger::Manual { .. } => TRIGGER_MANUAL,
        _ => TRIGGER_SCHEDULED,
    };
    let mut tags = BTreeMap::from([
        (TAG_JOURNAL_FOR.to_owned(), fenced.latest.name.clone()),
        (TAG_ROTATION_ID.to_owned(), fenced.rotation_id.clone()),
        (TAG_STEP.to_owned(), STEP_PENDING.to_owned()),
        (TAG_ROTATED_FROM.to_owned(), fenced.latest.version.clone()),
        (TAG_ATTEMPTS.to_owned(), "1".to_owned()),
        (TAG_PROFILE.to_owned(), plan.profile.clone()),
        (TAG_ACCOUNT.to_owned(), plan.username.clone()),
        (TAG_TRIGGER.to_owned(), trigger.to_owned()),
    ]);
    let own = |record: &SecretRecord| steps.own_journal_version().as_deref() == Some(record.version.as_str());
    match journaled {
        // The target uses it, or this request's own earlier attempt wrote it: reused.
        Journaled::InUse(record) => reuse_journal(engine, fenced, record, tags).await,
        Journaled::Unused(record) if own(&record) => reuse_journal(engine, fenced, record, tags).await,
        Journaled::Unused(record) => {
            // Its versions stay in the record's history; the new one is what is set.
            tags.insert(TAG_ATTEMPTS.to_owned(), (attempts_of(&record) + 1).to_string());
            if let Some(trigger) = record.properties.tags.get(TAG_TRIGGER) {
                tags.insert(TAG_TRIGGER.to_owned(), trigger.clone());
            }
            journal_fresh_password(engine, steps, rotator, fenced, plan, tags).await
        }
        Journaled::None => journal_fresh_password(engine, steps, rotator, fenced, plan, tags).await,
    }
}

/// Attempts that used a journal record, across processes (its `kv-rotator-attempts`).
fn attempts_of(record: &SecretRecord) -> u32 {
    record.properties.tags.get(TAG_ATTEMPTS).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0)
}

/// Resumes with `record`'s password, keeping what the record says (its step may be
/// `target-set`) and counting this attempt.
async fn reuse_journal(
    engine: &Engine,
    fenced: &Fenced,
    record: SecretRecord,
    mut tags: BTreeMap<String, String>,
) -> Result<Pending, RotationError> {
    debug!(journal = %fenced.journal_name, "resuming with the journal's pending password");
    let attempts = attempts_of(&record);
    tags.extend(record.properties.tags);
    tags.insert(TAG_ATTEMPTS.to_owned(), (attempts + 1).to_string());
    let pending = Pending { value: record.value, version: record.version, tags, new: false };
    update_journal_tags(engine, &fenced.journal_name, &pending).await;
    Ok(pending)
}

/// Generates a password under the profile's policy and writes it as the journal
/// record's latest version, before the target sees it.
async fn journal_fresh_password(
    engine: &Engine,
    steps: &StepLog,
    rotator: &dyn Rotator,
    fenced: &Fenced,
    plan: &Plan,
    tags: BTreeMap<String, String>,
) -> Result<Pending, RotationError> {
    // The value finish will write: the password, or alternating users' pair.
    let login = Login { user: plan.username.clone(), password: rotator.password_policy().generate() };
    let value = plan.shape.value_for(&login, &fenced.latest.value);
    let new = NewSecretVersion {
        value: value.clone(),
        tags: tags.clone(),
        content_type: Some(JOURNAL_CONTENT_TYPE.to_owned()),
        expires: None,
        not_before: None,
    };
    let written =
        timed(steps, "create", async { Ok(engine.store.set_secret(&fenced.journal_name, new).await?) }).await?;
    info!(journal = %fenced.journal_name, "journal record written");
    steps.set_own_journal_version(&written.version);
    Ok(Pending { value, version: written.version, tags, new: true })
}

/// Step 5: the secret's latest version is still the source, and the journal record's
/// latest version still the one this attempt holds. Key Vault has no compare-and-swap,
/// so this is how a second engine's write (a replica, `rotate` beside `serve`) is seen
/// before this one acts on stale state; the engine lease keeps the window closed.
async fn refence(engine: &Engine, fenced: &Fenced, pending: &Pending, before: &str) -> Result<(), RotationError> {
    engine.check_lease()?;
    let store = engine.store.as_ref();
    let latest = store.get_latest(&fenced.latest.name).await?;
    if !latest.version.eq_ignore_ascii_case(&fenced.latest.version) {
        return Err(RotationError::Raced(format!(
            "version {} of {:?} was written while this rotation was between fence and {before}",
            latest.version, fenced.latest.name
        )));
    }
    match store.get_latest(&fenced.journal_name).await {
        Ok(journal) if journal.version == pending.version => Ok(()),
        Ok(journal) => Err(RotationError::Raced(format!(
            "journal record {} got version {} from someone else before {before}",
            fenced.journal_name, journal.version
        ))),
        Err(StoreError::NotFound { .. }) => Err(RotationError::Raced(format!(
            "journal record {} was deleted by someone else before {before}",
            fenced.journal_name
        ))),
        Err(other) => Err(other.into()),
    }
}

/// Step 6: the rotator makes the target accept the pending password, logging in with the
/// current password, then older ones, then the admin. `Ok(true)`: the rotator proved the
/// pending password logs in, after the change, as [`test`] would.
async fn set(
    engine: &Engine,
    steps: &StepLog,
    rotator: &dyn Rotator,
    plan: &Plan,
    fenced: &Fenced,
    pending: &Pending,
) -> Result<bool, RotationError> {
    let admin = super::retire::admin_credential(engine, &plan.profile).await?;
    let pending_login = plan.login(&pending.value)?;
    let older = previous_passwords(engine, &fenced.latest).await;
    let mut created_with_pending = false;
    let (current, previous) = match &plan.pair {
        None => (fenced.latest.value.clone(), older),
        Some(pair) => {
            // The twin is this secret's if the latest or a recent version names it, or an
            // earlier attempt of this rotation (its journal names it) may have created it.
            let twin_known =
                pair.active == pair.twin || !pending.new || twin_in_history(engine, &fenced.latest, plan, pair).await?;
            // Creating the twin with the pending password changes the target: from here the
            // journal may hold the only copy of a working password (the twin's).
            if pending_login.user == pair.twin {
                steps.mark_target_touched(&fenced.journal_name);
            }
            created_with_pending = sync_twin(rotator, plan, pair, &pending_login, admin.as_ref(), twin_known).await?;
            // The idle account exists now: it too must check passwords before `test` means anything.
            if !steps.canary_refused_for(&plan.username) {
                canary(rotator, &plan.profile, &plan.username, "the idle account was not changed").await?;
                steps.mark_canary_refused_for(&plan.username);
            }
            // The idle account's own passwords: those of older versions that name it.
            let mut own = older.iter().filter_map(|v| plan.login(v).ok()).filter(|l| l.user == plan.username);
            let current = own.next().map(|l| l.password).unwrap_or_else(|| SecretString::from(String::new()));
            (current, own.map(|l| l.password).collect())
        }
    };
    let request = SetPasswordRequest::new(plan.username.clone(), pending_login.password, current)
        .with_previous(previous)
        .with_admin(admin)
        // Only a password this attempt journaled: a resumed one may already be set, and
        // must be tried first (and so must a twin just created with it).
        .with_pending_is_new(pending.new && !created_with_pending);
    match rotator.set_password(request).await {
        Ok(set) => {
            info!(outcome = ?set.outcome, "target accepts the pending password");
            Ok(set.pending_verified)
        }
        Err(source) => {
            if source.may_have_changed() {
                steps.mark_target_touched(&fenced.journal_name);
            }
            // A `Refused` password changed nothing and ends the request; the next finds a
            // record the target does not use and journals a fresh password over it.
            Err(RotationError::Target { profile: plan.profile.clone(), source })
        }
    }
}

/// Alternating users: the twin exists and has the primary's grants before the idle
/// account is set (created with the pending password when it is the idle one and
/// missing: then `true`). Drift that could not be repaired is a warning for the operator, not a failure:
/// the account consumers use next keeps what it has.
async fn sync_twin(
    rotator: &dyn Rotator,
    plan: &Plan,
    pair: &Pair,
    pending: &Login,
    admin: Option<&Credential>,
    twin_known: bool,
) -> Result<bool, RotationError> {
    let Some(admin) = admin.cloned() else {
        return Err(RotationError::Misconfigured(format!(
            "target {}: alternating-users needs the profile's admin login",
            plan.profile
        )));
    };
    // Created only as the account being set, with the pending password (journaled): an
    // active twin that is missing is an error, never recreated with a password no one has.
    let twin_is_idle = pending.user == pair.twin;
    let password_if_created = if twin_is_idle { pending.password.clone() } else { SecretString::from(String::new()) };
    let request = SyncTwinRequest::new(pair.primary.clone(), pair.twin.clone(), admin)
        .with_password_if_created(password_if_created)
        .with_twin_known(twin_known);
    let synced = rotator
        .sync_twin(request)
        .await
        .map_err(|source| RotationError::Target { profile: plan.profile.clone(), source })?;
    if synced.created {
        info!(twin = %pair.twin, primary = %pair.primary, "twin account created with the primary's grants");
    }
    if !synced.repaired.is_empty() {
        info!(twin = %pair.twin, repaired = %synced.repaired.join("; "), "twin's drift from the primary repaired");
    }
    if !synced.drift.is_empty() {
        warn!(
            twin = %pair.twin, primary = %pair.primary, drift = %synced.drift.join("; "),
            "the twin differs from the primary in ways kv-rotator does not repair: an operator should align them"
        );
    }
    // Created with the pending password: `set` must find it already set.
    Ok(synced.created && twin_is_idle)
}

/// Whether one of the versions before `latest` (a few, newest first) names the twin:
/// then this secret made it, and it may exist.
async fn twin_in_history(
    engine: &Engine,
    latest: &SecretRecord,
    plan: &Plan,
    pair: &Pair,
) -> Result<bool, RotationError> {
    const LOOKBACK: usize = 4;
    let mut versions = engine.store.list_versions(&latest.name).await?;
    versions.sort_by_key(|v| std::cmp::Reverse(v.created));
    let ids = versions.iter().filter(|v| v.enabled).filter_map(|v| v.version.as_deref());
    for id in ids.filter(|id| !id.eq_ignore_ascii_case(&latest.version)).take(LOOKBACK) {
        let record = engine.store.get_version(&latest.name, id).await?;
        if plan.login(&record.value).is_ok_and(|login| login.user == pair.twin) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The journal's step tag becomes `target-set` (for diagnosis only).
async fn mark_target_set(engine: &Engine, fenced: &Fenced, pending: &Pending) {
    let mut tags = pending.tags.clone();
    tags.insert(TAG_STEP.to_owned(), STEP_TARGET_SET.to_owned());
    let marked = Pending { value: pending.value.clone(), version: pending.version.clone(), tags, new: pending.new };
    update_journal_tags(engine, &fenced.journal_name, &marked).await;
}

/// Step 7: the pending password logs in. A refusal here is transient: replication lag
/// or a pooler may hide a fresh password for a moment.
async fn test(rotator: &dyn Rotator, plan: &Plan, pending: &Pending) -> Result<(), RotationError> {
    let request = plan.verify_request(&pending.value).ok_or_else(|| {
        RotationError::Misconfigured("the journaled value names another account than the one rotated".into())
    })?;
    let verdict = rotator
        .verify(request)
        .await
        .map_err(|source| RotationError::Target { profile: plan.profile.clone(), source })?;
    match verdict {
        VerifyResponse::Accepted => Ok(()),
        VerifyResponse::Rejected => Err(RotationError::TestFailed { profile: plan.profile.clone() }),
    }
}

/// Step 8: the new version, then the journal record (if it is still ours).
async fn finish(
    engine: &Engine,
    steps: &StepLog,
    rotator: &dyn Rotator,
    plan: Plan,
    fenced: Fenced,
    pending: Pending,
) -> Result<Done, RotationError> {
    let store = engine.store.as_ref();
    let now = OffsetDateTime::now_utc();
    let expires = now + time::Duration::days(i64::from(plan.validity_days));
    let mut tags = plan.new_tags.clone();
    tags.insert(TAG_ROTATED_AT.to_owned(), now.format(&Rfc3339).unwrap_or_default());
    if let Some(grace) = plan.grace_period {
        tags.insert(TAG_RETIRE_AFTER.to_owned(), super::retire::retire_tag(now, grace));
    }
    let new = NewSecretVersion {
        value: pending.value,
        tags,
        content_type: fenced.latest.properties.content_type.clone(),
        expires: Some(expires),
        not_before: None,
    };
    let secret = &fenced.latest.name;
    let written = timed(steps, "finish", async { Ok(store.set_secret(secret, new).await?) }).await?;
    info!(old_version = %fenced.latest.version, new_version = %written.version, "new version written");
    failpoints::hit("after-finish");
    // The journal goes only once the target is seen using the version just written: if
    // anyone changed the password since the test step, the record may hold it.
    let check = match plan.verify_request(&written.value) {
        Some(request) => rotator.verify(request).await,
        None => Err(RotatorError::Permanent("the written value names another account".into())),
    };
    match check {
        Ok(VerifyResponse::Accepted) => delete_journal(engine, &fenced.journal_name).await,
        other => warn!(
            journal = %fenced.journal_name, accepted = ?other.map_err(|e| e.to_string()),
            "the target does not accept the version just written; the journal record is kept for the next fence"
        ),
    }
    failpoints::hit("after-journal-delete");
    let outcome = Outcome::Rotated { old_version: fenced.latest.version, new_version: written.version, expires };
    Ok(Done::new(Some(&fenced.rotation_id), outcome))
}

/// Deletes the journal record. Best effort: the new version is safe, and a leftover
/// record is cleaned up by the next fence.
async fn delete_journal(engine: &Engine, journal_name: &str) {
    if let Err(err) = engine.store.delete_secret(journal_name).await {
        warn!(journal = %journal_name, error = %err, "could not delete the journal record");
    }
}

/// Rewrites the tags of the journal record's version this attempt holds (the service
/// replaces them as a whole, so they are the full set). For diagnosis only — an operator
/// reading the vault sees the step and the attempts; the protocol never depends on them,
/// so a failure does not fail the rotation.
async fn update_journal_tags(engine: &Engine, journal_name: &str, pending: &Pending) {
    let update = PropertiesUpdate { tags: Some(pending.tags.clone()), ..Default::default() };
    if let Err(err) = engine.store.update_properties(journal_name, Some(&pending.version), update).await {
        debug!(journal = %journal_name, error = %err, "could not update the journal's tags");
    }
}

/// The latest version carries this rotation's id. A leftover journal record is what a
/// crash between finish and delete leaves — when it holds the finished version's
/// password. If it holds another (a second engine journaled over it), it is judged as a
/// stale journal: kept unless the target is proven to accept the latest version.
async fn clean_up_finished_journal(
    engine: &Engine,
    latest: &SecretRecord,
    rotation_id: &str,
    journal_name: &str,
) -> Result<(), RotationError> {
    let journal = journal_passwords(engine, journal_name).await?;
    if journal.is_empty() {
        return Ok(());
    }
    if let [only] = journal.as_slice() {
        if only.value.expose_secret() == latest.value.expose_secret() {
            engine.store.delete_secret(journal_name).await?;
            return Ok(());
        }
    }
    match probe(engine, latest, rotation_id, &journal).await {
        // Two engines finished one rotation with different passwords, and the target kept
        // the one only the record holds: write it again as the latest version, so the
        // consumers' value logs in; then the record goes.
        (Target::AcceptsPending, Some(in_use)) => refinish(engine, latest, journal_name, in_use).await,
        (target, _) => {
            judge_stale_journal(engine, latest, rotation_id, journal_name, planner::stale_journal(true, target)).await
        }
    }
}

/// Writes `in_use` (a journal password the target accepts) as a new version of a secret
/// whose latest version already carries the rotation id, keeping that version's tags and
/// expiry, then deletes the journal record.
async fn refinish(
    engine: &Engine,
    latest: &SecretRecord,
    journal_name: &str,
    in_use: &SecretRecord,
) -> Result<(), RotationError> {
    let mut tags = latest.properties.tags.clone();
    tags.insert(TAG_ROTATED_AT.to_owned(), OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default());
    let again = NewSecretVersion {
        value: in_use.value.clone(),
        tags,
        content_type: latest.properties.content_type.clone(),
        expires: latest.properties.expires,
        not_before: None,
    };
    let written = engine.store.set_secret(&latest.name, again).await?;
    warn!(
        journal = %journal_name, version = %written.version,
        "the target uses the journal's password, not the finished version's: written again as the latest version"
    );
    engine.store.delete_secret(journal_name).await?;
    Ok(())
}

/// A request for an older version: if this rotation's journal survived, decide its fate
/// ([`planner::stale_journal`]) — delete it only when its password is provably not the
/// one the target depends on.
async fn inspect_stale_journal(
    engine: &Engine,
    latest: &SecretRecord,
    rotation_id: &str,
    journal_name: &str,
) -> Result<(), RotationError> {
    let journal = journal_passwords(engine, journal_name).await?;
    if journal.is_empty() {
        return Ok(());
    }
    // Finished only if a version carrying the rotation id holds one of the record's
    // passwords: a tag alone is anyone's to write.
    let mut finished = false;
    for version in engine.store.list_versions(&latest.name).await? {
        let (Some(id), true) =
            (version.version.as_deref(), version.tags.get(TAG_ROTATION_ID).map(String::as_str) == Some(rotation_id))
        else {
            continue;
        };
        let written = engine.store.get_version(&latest.name, id).await?;
        finished |= journal.iter().any(|j| j.value.expose_secret() == written.value.expose_secret());
    }
    // Probed even when the rotation finished: a second engine may have set another
    // password after it, which then lives only in this record.
    let verdict = match probe(engine, latest, rotation_id, &journal).await {
        // Where several passwords work (pairs, multi-password), the record's may be one a
        // version also holds (a finished rotation's, left over): it is readable there.
        (Target::AcceptsPending, Some(record)) if value_in_history(engine, latest, &record.value).await? => {
            StaleJournal::Delete
        }
        (target, _) => planner::stale_journal(finished, target),
    };
    judge_stale_journal(engine, latest, rotation_id, journal_name, verdict).await
}

/// Whether one of the 20 newest enabled versions of `latest`'s secret holds `value`.
async fn value_in_history(engine: &Engine, latest: &SecretRecord, value: &SecretString) -> Result<bool, RotationError> {
    let mut versions = engine.store.list_versions(&latest.name).await?;
    versions.sort_by_key(|v| std::cmp::Reverse(v.created));
    for version in versions.iter().take(20) {
        let (Some(id), true) = (version.version.as_deref(), version.enabled) else { continue };
        let record = engine.store.get_version(&latest.name, id).await?;
        if record.value.expose_secret() == value.expose_secret() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Carries out the planner's verdict on a journal that outlived its source version.
async fn judge_stale_journal(
    engine: &Engine,
    latest: &SecretRecord,
    rotation_id: &str,
    journal_name: &str,
    verdict: StaleJournal,
) -> Result<(), RotationError> {
    match verdict {
        StaleJournal::Delete => {
            info!(journal = %journal_name, "journal outlived its source version and is obsolete; deleting it");
            engine.store.delete_secret(journal_name).await?;
            Ok(())
        }
        StaleJournal::KeepAndRetry => Err(RotationError::Target {
            profile: latest.properties.tags.get(TAG_ROTATOR).cloned().unwrap_or_default(),
            source: RotatorError::Transient(
                "cannot check which password the target accepts for a stale journal record".into(),
            ),
        }),
        StaleJournal::KeepForOperator => Err(RotationError::Misconfigured(format!(
            "secret {:?}: version {} was written while rotation {rotation_id} was pending, and its password does not log in; \
             the journal record {journal_name} is kept (it may hold the working password): an operator must choose",
            latest.name, latest.version
        ))),
    }
}

/// Which of the latest and the journal's passwords the target accepts (and which journal
/// version, when it is one), asked as the consumers' account (the secret's `rotator` and
/// `CredentialId`, within the profile's `accounts`) after a fresh canary — and only when
/// every version of the record is kv-rotator's, for this secret and rotation and, where
/// the record names them, the same profile and account. Anything else cannot be told
/// apart from a planted record: it is [`Target::Unreachable`], and the record is kept.
async fn probe<'a>(
    engine: &Engine,
    latest: &SecretRecord,
    rotation_id: &str,
    journal: &'a [SecretRecord],
) -> (Target, Option<&'a SecretRecord>) {
    let cannot_tell = (Target::Unreachable, None);
    // The consumers' identity: the secret's own tags, held to the profile's accounts.
    let tags = &latest.properties.tags;
    let (Some(profile), Some(user)) = (tags.get(TAG_ROTATOR), tags.get(TAG_CREDENTIAL_ID).map(|u| u.trim().to_owned()))
    else {
        return cannot_tell;
    };
    // With alternating users the values name the primary or its twin; both are held to
    // the profile's accounts.
    let shape = engine.targets.shape(profile);
    let accounts: Vec<String> = std::iter::once(user.clone()).chain(shape.twin(&user)).collect();
    if accounts.iter().any(|account| engine.targets.refuse_account(profile, account).is_some()) {
        return cannot_tell;
    }
    // Every version of the record must be kv-rotator's, for this secret and this identity:
    // a planted or re-tagged version could otherwise point the verdict elsewhere.
    let ours = |record: &SecretRecord| {
        let t = &record.properties.tags;
        let same = |key: &str, want: &str| t.get(key).is_none_or(|v| v.trim() == want);
        record.properties.content_type.as_deref() == Some(JOURNAL_CONTENT_TYPE)
            && t.get(TAG_JOURNAL_FOR).is_some_and(|s| s.eq_ignore_ascii_case(&latest.name))
            && t.get(TAG_ROTATION_ID).is_some_and(|id| id == rotation_id)
            && same(TAG_PROFILE, profile)
            && t.get(TAG_ACCOUNT).is_none_or(|a| accounts.iter().any(|account| a.trim() == account))
    };
    if !journal.iter().all(ours) {
        return cannot_tell;
    }
    let Some(rotator) = engine.targets.rotator(profile) else { return cannot_tell };
    // Not the request's remembered canary: this verdict may delete a record.
    for account in &accounts {
        if !matches!(refuses_a_random_password(rotator.as_ref(), account).await, Ok(true)) {
            return cannot_tell;
        }
    }
    let try_login = |value: &SecretString| {
        let login = shape.login_of(&user, value);
        let rotator = rotator.clone();
        async move {
            let login = login.map_err(RotatorError::Permanent)?;
            rotator.verify(VerifyRequest::new(login.user, login.password)).await
        }
    };
    // Where an account holds several passwords (multi-password) or the pair holds two
    // accounts, the latest logging in does not rule out a journal's password also
    // logging in: the record is asked first, so it is never deleted while it works.
    let several = matches!(shape, Shape::Pair { .. }) || engine.targets.multi_password(profile);
    if !several {
        match try_login(&latest.value).await {
            Ok(VerifyResponse::Accepted) => return (Target::AcceptsLatest, None),
            Ok(VerifyResponse::Rejected) => {}
            Err(_) => return (Target::Unreachable, None),
        }
    }
    // A record holding the latest's own value says nothing the latest does not.
    let distinct = journal.iter().filter(|r| r.value.expose_secret() != latest.value.expose_secret());
    for record in distinct {
        match try_login(&record.value).await {
            Ok(VerifyResponse::Accepted) => return (Target::AcceptsPending, Some(record)),
            Ok(VerifyResponse::Rejected) => {}
            Err(_) => return (Target::Unreachable, None),
        }
    }
    if several {
        match try_login(&latest.value).await {
            Ok(VerifyResponse::Accepted) => return (Target::AcceptsLatest, None),
            Ok(VerifyResponse::Rejected) => {}
            Err(_) => return (Target::Unreachable, None),
        }
    }
    (Target::AcceptsNeither, None)
}

/// Passwords of versions written before the latest, newest first. Only versions created
/// strictly before the fenced one: a version another engine wrote after the fence is not
/// a "previous" password, and logging in with it would let this rotation overwrite a
/// password only that engine knows. Best effort: they only widen the logins `set` tries.
async fn previous_passwords(engine: &Engine, latest: &SecretRecord) -> Vec<SecretString> {
    let store = engine.store.as_ref();
    let Some(fenced_at) = latest.properties.created else { return Vec::new() };
    let versions = match store.list_versions(&latest.name).await {
        Ok(versions) => versions,
        Err(err) => {
            debug!(error = %err, "cannot list versions; trying only the current password");
            return Vec::new();
        }
    };
    let mut passwords = Vec::new();
    for version in versions.iter().rev() {
        if passwords.len() == PREVIOUS_PASSWORDS {
            break;
        }
        let (Some(id), Some(created)) = (version.version.as_deref(), version.created) else { continue };
        if created >= fenced_at || id.eq_ignore_ascii_case(&latest.version) || !version.enabled {
            continue;
        }
        if let Ok(record) = store.get_version(&latest.name, id).await {
            passwords.push(record.value);
        }
    }
    passwords
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
