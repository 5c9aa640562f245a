//! Step 4 and the journal record it works with: reading and checking this rotation's
//! record, asking the target whether it uses its password, and the pending password —
//! the record's, or one generated and journaled before the target sees it.

use std::collections::BTreeMap;

use kv_rotator_core::tags::{
    STEP_PENDING, STEP_TARGET_SET, TAG_ACCOUNT, TAG_ATTEMPTS, TAG_CREDENTIAL_ID, TAG_JOURNAL_FOR, TAG_PROFILE,
    TAG_ROTATED_FROM, TAG_ROTATION_ID, TAG_STEP, TAG_TRIGGER, TRIGGER_MANUAL, TRIGGER_SCHEDULED,
};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::{NewSecretVersion, PropertiesUpdate, SecretRecord, StoreError};
use kv_rotator_rotators::{Rotator, RotatorError, VerifyResponse};
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use super::{timed, Fenced, Journaled, Pending, Plan};
use crate::engine::journal::JOURNAL_CONTENT_TYPE;
use crate::engine::value::Login;
use crate::engine::{Engine, RotationError, StepLog};

/// This rotation's journal record, if there is one — refused unless it is exactly what
/// kv-rotator writes (content type, tags, rotation id): a record planted under the
/// expected name must not choose the password set on the target.
pub(super) async fn read_journal(engine: &Engine, fenced: &Fenced) -> Result<Option<SecretRecord>, RotationError> {
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
pub(in crate::engine) async fn journal_passwords(
    engine: &Engine,
    journal_name: &str,
) -> Result<Vec<SecretRecord>, RotationError> {
    Ok(journal_versions(engine, journal_name).await?.readable)
}

/// A journal record's versions: those that can be read, newest first — the first is the
/// record's current version, as Key Vault says (creation times are whole seconds, so two
/// versions written within one second cannot be ordered by them) — and whether any cannot
/// be read (disabled, or listed without an id).
pub(in crate::engine) struct JournalVersions {
    pub(in crate::engine) readable: Vec<SecretRecord>,
    pub(in crate::engine) hidden: bool,
}

/// The versions of the record `journal_name` ([`JournalVersions`]); none when it does
/// not exist.
pub(in crate::engine) async fn journal_versions(
    engine: &Engine,
    journal_name: &str,
) -> Result<JournalVersions, RotationError> {
    let store = engine.store.as_ref();
    let mut record = JournalVersions { readable: Vec::new(), hidden: false };
    let versions = match store.list_versions(journal_name).await {
        Ok(versions) => versions,
        // No record (or deleted meanwhile): nothing journaled.
        Err(StoreError::NotFound { .. }) => return Ok(record),
        Err(other) => return Err(other.into()),
    };
    let current = match store.get_latest(journal_name).await {
        Ok(current) => Some(current),
        Err(StoreError::NotFound { .. }) => return Ok(record),
        // A disabled current version (403).
        Err(StoreError::Disabled { .. }) => {
            record.hidden = true;
            None
        }
        Err(other) => return Err(other.into()),
    };
    let current_id = current.as_ref().map(|c| c.version.clone());
    record.readable.extend(current);
    for version in versions.iter().rev() {
        match version.version.as_deref() {
            Some(id) if current_id.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(id)) => {}
            Some(id) if version.enabled => record.readable.push(store.get_version(journal_name, id).await?),
            _ => record.hidden = true,
        }
    }
    Ok(record)
}

/// Whether the record was last written or updated more than `engine.target_lag_secs`
/// ago (by Key Vault's times, whole seconds, and this host's clock; a second more for the
/// rounding). A password is set after its version is written, and the record is updated
/// once it is (its step tag): the later of the two is when the target had it. A version
/// without those times is taken as written now.
pub(super) fn settled(engine: &Engine, journal: &[SecretRecord]) -> bool {
    // 0: the target shows a change at once (no replica, no pooler).
    if engine.settings.target_lag_secs == 0 {
        return true;
    }
    let lag = time::Duration::seconds(i64::try_from(engine.settings.target_lag_secs).unwrap_or(i64::MAX));
    let now = OffsetDateTime::now_utc();
    let last_touched = |record: &SecretRecord| {
        let p = &record.properties;
        p.created.unwrap_or(now).max(p.updated.unwrap_or(now))
    };
    let newest = journal.iter().map(last_touched).max().unwrap_or(now);
    now - newest > lag.saturating_add(time::Duration::SECOND)
}

/// This rotation's record, judged against the target for the planner
/// ([`Record::Present`](crate::engine::planner::Record::Present)).
pub(super) struct Judged {
    /// The version to resume with.
    pub(super) record: SecretRecord,
    /// The target accepts its password (for an own record: this request set it).
    pub(super) target_uses_it: bool,
    /// This request journaled it.
    pub(super) own: bool,
}

/// The journal record's version to resume with, and whether the target already uses
/// its password: its latest, unless an older version's password is the one the target
/// accepts (another engine journaled over a password it had already set) — then that
/// password is journaled again as the latest version, so the record's latest is always
/// the one to finish with.
pub(super) async fn judge(
    engine: &Engine,
    steps: &StepLog,
    rotator: &dyn Rotator,
    plan: &Plan,
    fenced: &Fenced,
    latest: SecretRecord,
) -> Result<Judged, RotationError> {
    // This request wrote it: whether the target may have it is known without a login
    // (refused logins count toward lockouts).
    if steps.own_journal_version().as_deref() == Some(latest.version.as_str()) {
        let touched = steps.target_touched().is_some();
        return Ok(Judged { record: latest, target_uses_it: touched, own: true });
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
        // kv-rotator generates every password it journals: one equal to the secret's
        // current value was written by someone else (a lagging login path still takes it,
        // and reusing it would leave the target's primary on the record's real password).
        if record.value.expose_secret() == fenced.latest.value.expose_secret() {
            return Err(RotationError::Misconfigured(format!(
                "journal record {} (version {}) holds the secret's current value, which kv-rotator never journals: \
                 it is kept, as its other versions may hold the password the target uses; an operator must choose",
                fenced.journal_name, record.version
            )));
        }
        let Some(request) = plan.verify_request(&record.value) else { continue };
        let verdict = rotator
            .verify(request)
            .await
            .map_err(|source| RotationError::Target { profile: plan.profile.clone(), source })?;
        if verdict == VerifyResponse::Rejected {
            continue;
        }
        if record.version == latest.version {
            return Ok(Judged { record: latest, target_uses_it: true, own: false });
        }
        // An older password logging in while the newest does not may be a login path
        // lagging behind the newest's set: trusted only once the target had time to show
        // it, or the newest (the primary's) would be replaced by the older one.
        if !settled(engine, &versions) {
            // The target takes one of the record's passwords: the failure says so, and
            // the finishing schedule tries again until the lag has passed.
            steps.mark_target_touched(&fenced.journal_name);
            return Err(RotationError::Target {
                profile: plan.profile.clone(),
                source: RotatorError::Transient(format!(
                    "the target takes an older password of journal record {} but not its newest, which may not \
                     show yet (engine.target_lag_secs): tried again later",
                    fenced.journal_name
                )),
            });
        }
        warn!(journal = %fenced.journal_name, version = %record.version, "the target uses an older version of the journal record; journaling it again as the latest");
        let again = NewSecretVersion {
            value: record.value.clone(),
            tags: latest.properties.tags.clone(),
            content_type: Some(JOURNAL_CONTENT_TYPE.to_owned()),
            expires: None,
            not_before: None,
        };
        let record = engine.store.set_secret(&fenced.journal_name, again).await?;
        return Ok(Judged { record, target_uses_it: true, own: false });
    }
    Ok(Judged { record: latest, target_uses_it: false, own: false })
}

/// Step 4: reuse the journal's pending password, or generate one and journal it before
/// the target sees it, as the planner chose ([`Journaled`]).
pub(super) async fn create(
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
    match journaled {
        // The target uses it, or this request's own earlier attempt wrote it: reused.
        Journaled::Reuse(record) => reuse_journal(engine, fenced, record, tags).await,
        Journaled::Fresh(Some(record)) => {
            // Its versions stay in the record's history; the new one is what is set.
            tags.insert(TAG_ATTEMPTS.to_owned(), (attempts_of(&record) + 1).to_string());
            if let Some(trigger) = record.properties.tags.get(TAG_TRIGGER) {
                tags.insert(TAG_TRIGGER.to_owned(), trigger.clone());
            }
            journal_fresh_password(engine, steps, rotator, fenced, plan, tags).await
        }
        Journaled::Fresh(None) => journal_fresh_password(engine, steps, rotator, fenced, plan, tags).await,
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

/// The journal's step tag becomes `target-set` (for diagnosis only).
pub(super) async fn mark_target_set(engine: &Engine, fenced: &Fenced, pending: &Pending) {
    let mut tags = pending.tags.clone();
    tags.insert(TAG_STEP.to_owned(), STEP_TARGET_SET.to_owned());
    let marked = Pending { value: pending.value.clone(), version: pending.version.clone(), tags, new: pending.new };
    update_journal_tags(engine, &fenced.journal_name, &marked).await;
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
