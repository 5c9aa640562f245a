//! One attempt of the rotation protocol. Every step is safe to repeat, so an attempt
//! that fails anywhere can simply be run again:
//!
//! 1. **fence** — read the latest version; stop if the request names an older one or if
//!    the latest already carries this rotation's id.
//! 2. **create** — reuse this rotation's journal record, or generate a password and
//!    write the record to Key Vault *before* touching the target.
//! 3. **set** — the rotator makes the target accept the pending password (idempotent).
//! 4. **test** — log in with the pending password.
//! 5. **finish** — write the new version (tags carried over plus rotation metadata,
//!    `exp = now + ValidityPeriodDays`), then delete the journal record.
//!
//! The invariant: a password the target accepts is always in Key Vault — in the latest
//! version or in the journal record.

use std::collections::BTreeMap;

use std::time::Instant;

use kv_rotator_keyvault::{NewSecretVersion, PropertiesUpdate, SecretRecord, StoreError};
use kv_rotator_rotators::{Credential, Rotator, SetPasswordRequest, VerifyRequest, VerifyResponse};
use kv_rotator_webhook::RotationRequest;
use secrecy::SecretString;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use super::failpoints;
use super::journal::{
    self, JOURNAL_CONTENT_TYPE, STEP_PENDING, STEP_TARGET_SET, TAG_ATTEMPTS, TAG_FAILED, TAG_JOURNAL_FOR,
    TAG_ROTATED_AT, TAG_ROTATED_FROM, TAG_ROTATION_ID, TAG_STEP,
};
use super::planner::{self, Fence, Journal, JournalStep, Latest, StaleJournal, Target};
use super::{Engine, Outcome, RotationError, StepLog};

/// Tag naming the target profile (kv-rotator's own).
pub const TAG_ROTATOR: &str = "rotator";
/// Tag naming the user on the target (Microsoft's rotation samples).
pub const TAG_CREDENTIAL_ID: &str = "CredentialId";
/// Tag with the validity of a new version in days (Microsoft's rotation samples).
pub const TAG_VALIDITY_DAYS: &str = "ValidityPeriodDays";
/// Most tags Key Vault accepts on one version.
pub const MAX_TAGS: usize = 15;
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

/// The plan derived from the latest version before anything is written.
struct Plan {
    profile: String,
    username: String,
    validity_days: u32,
    rotation_id: String,
    new_tags: BTreeMap<String, String>,
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
    let store = engine.store.as_ref();
    let secret = request.secret_name.as_str();
    if !request.vault_name.eq_ignore_ascii_case(store.vault_name()) {
        warn!(managed_vault = store.vault_name(), "request names another vault; ignored");
        return Ok(Done { rotation_id: None, outcome: Outcome::OtherVault });
    }

    // 1. fence
    let latest = timed(steps, "fence", async { Ok(store.get_latest(secret).await?) }).await?;
    if !latest.properties.tags.contains_key(TAG_ROTATOR) {
        info!("secret has no {TAG_ROTATOR:?} tag; not managed");
        return Ok(Done { rotation_id: None, outcome: Outcome::NotManaged });
    }
    let source_version = request.version.clone().unwrap_or_else(|| latest.version.clone());
    let rotation_id = journal::rotation_id(store.vault_name(), secret, &source_version);
    let journal_name = journal::journal_name(&rotation_id);
    let seen = if latest.version == source_version {
        Latest::IsSource
    } else if latest.properties.tags.get(TAG_ROTATION_ID) == Some(&rotation_id) {
        Latest::CarriesRotationId
    } else {
        Latest::Newer
    };
    match planner::fence(seen) {
        Fence::AlreadyRotated => {
            // with_journal(AlreadyRotated, _) is Delete or Nothing; deleting a missing
            // record is not an error, so one call covers both.
            store.delete_secret(&journal_name).await?;
            return Ok(Done {
                rotation_id: Some(rotation_id),
                outcome: Outcome::AlreadyRotated { version: latest.version },
            });
        }
        Fence::Stale => {
            inspect_stale_journal(engine, &latest, &rotation_id, &journal_name).await?;
            info!(requested = %source_version, latest = %latest.version, "request names an older version; nothing to do");
            return Ok(Done {
                rotation_id: None,
                outcome: Outcome::Stale { requested: source_version, latest: latest.version },
            });
        }
        Fence::Rotate => {}
    }
    let plan = plan(engine, &latest, rotation_id)?;
    let rotator = engine.targets.rotator(&plan.profile).ok_or_else(|| {
        RotationError::Misconfigured(format!(
            "secret {secret:?} names target profile {:?} in its {TAG_ROTATOR:?} tag, but the configuration has no such profile",
            plan.profile
        ))
    })?;
    failpoints::hit("after-fence");
    // Per-profile limit: held from the journal to the finish, the steps that load the target.
    let _target_permit = engine.target_permit(&plan.profile).await;

    // 2. create: the pending password is durable in Key Vault before the target sees it.
    let existing = timed(steps, "journal-read", async {
        match store.get_latest(&journal_name).await {
            Ok(record) => Ok(Some(record)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(other) => Err(other.into()),
        }
    })
    .await?;
    let journal_state = if existing.is_some() { Journal::Present } else { Journal::Absent };
    let mut journal_tags = BTreeMap::from([
        (TAG_JOURNAL_FOR.to_owned(), secret.to_owned()),
        (TAG_ROTATION_ID.to_owned(), plan.rotation_id.clone()),
        (TAG_STEP.to_owned(), STEP_PENDING.to_owned()),
        (TAG_ROTATED_FROM.to_owned(), latest.version.clone()),
        (TAG_ATTEMPTS.to_owned(), "1".to_owned()),
    ]);
    let pending = match (planner::with_journal(Fence::Rotate, journal_state), existing) {
        (JournalStep::Reuse, Some(record)) => {
            debug!(journal = %journal_name, "resuming with the journal's pending password");
            // Keep what the record says (its step may be target-set) and count this attempt.
            let attempts = record.properties.tags.get(TAG_ATTEMPTS).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
            journal_tags.extend(record.properties.tags);
            journal_tags.insert(TAG_ATTEMPTS.to_owned(), (attempts + 1).to_string());
            update_journal_tags(engine, &journal_name, &journal_tags).await;
            record.value
        }
        _ => {
            let pending = rotator.password_policy().generate();
            let new = NewSecretVersion {
                value: pending.clone(),
                tags: journal_tags.clone(),
                content_type: Some(JOURNAL_CONTENT_TYPE.to_owned()),
                expires: None,
                not_before: None,
            };
            timed(steps, "create", async { Ok(store.set_secret(&journal_name, new).await?) }).await?;
            info!(journal = %journal_name, "journal record written");
            pending
        }
    };
    failpoints::hit("after-journal");

    // 3. set
    let set_result = timed(steps, "set", async {
        let admin = match engine.targets.admin(&plan.profile) {
            Some(admin) => {
                let record = store.get_latest(&admin.secret).await?;
                Some(Credential { username: admin.username.clone(), password: record.value })
            }
            None => None,
        };
        let previous = previous_passwords(engine, &latest).await;
        rotator
            .set_password(SetPasswordRequest {
                username: plan.username.clone(),
                pending: pending.clone(),
                current: latest.value.clone(),
                previous,
                admin,
            })
            .await
            .map_err(|source| RotationError::Target { profile: plan.profile.clone(), source })
    })
    .await;
    let set = match set_result {
        Ok(set) => set,
        Err(err) => {
            if matches!(&err, RotationError::Target { source, .. } if !source.is_transient()) {
                let journal = JournalRef { name: &journal_name, tags: &journal_tags };
                replace_refused_pending(engine, rotator.as_ref(), &plan.username, &latest, journal, &pending).await;
            }
            return Err(err);
        }
    };
    info!(outcome = ?set.outcome, "target accepts the pending password");
    failpoints::hit("after-set");
    journal_tags.insert(TAG_STEP.to_owned(), STEP_TARGET_SET.to_owned());
    update_journal_tags(engine, &journal_name, &journal_tags).await;
    failpoints::hit("after-step-tag");

    // 4. test
    let verdict = timed(steps, "test", async {
        rotator
            .verify(VerifyRequest { username: plan.username.clone(), password: pending.clone() })
            .await
            .map_err(|source| RotationError::Target { profile: plan.profile.clone(), source })
    })
    .await?;
    if verdict != VerifyResponse::Accepted {
        return Err(RotationError::TestFailed { profile: plan.profile });
    }
    failpoints::hit("after-test");

    // 5. finish
    let now = OffsetDateTime::now_utc();
    let expires = now + time::Duration::days(i64::from(plan.validity_days));
    let mut tags = plan.new_tags;
    tags.insert(TAG_ROTATED_AT.to_owned(), now.format(&Rfc3339).unwrap_or_default());
    let new = NewSecretVersion {
        value: pending,
        tags,
        content_type: latest.properties.content_type.clone(),
        expires: Some(expires),
        not_before: None,
    };
    let written = timed(steps, "finish", async { Ok(store.set_secret(secret, new).await?) }).await?;
    info!(old_version = %latest.version, new_version = %written.version, "new version written");
    failpoints::hit("after-finish");
    if let Err(err) = store.delete_secret(&journal_name).await {
        // The new version is safe; a leftover journal is cleaned up by the next fence.
        warn!(journal = %journal_name, error = %err, "could not delete the journal record");
    }
    failpoints::hit("after-journal-delete");
    Ok(Done {
        rotation_id: Some(plan.rotation_id),
        outcome: Outcome::Rotated { old_version: latest.version, new_version: written.version, expires },
    })
}

/// The journal record being worked on.
struct JournalRef<'a> {
    name: &'a str,
    tags: &'a BTreeMap<String, String>,
}

/// After the target refused to take the pending password (a permanent `set` error, e.g.
/// the target's own password rules), journals a fresh one — but only once it is proven
/// which password the target accepts: the pending one does not log in and the current
/// one does. Reusing a refused password would fail forever; replacing one the target
/// might use could lose it. The fresh password is a new version of the same record (a
/// deleted name could not be written again), used by the next attempt or trigger.
async fn replace_refused_pending(
    engine: &Engine,
    rotator: &dyn Rotator,
    username: &str,
    latest: &SecretRecord,
    journal: JournalRef<'_>,
    pending: &SecretString,
) {
    let logs_in = |password: &SecretString| {
        rotator.verify(VerifyRequest { username: username.to_owned(), password: password.clone() })
    };
    match (logs_in(pending).await, logs_in(&latest.value).await) {
        (Ok(VerifyResponse::Rejected), Ok(VerifyResponse::Accepted)) => {}
        _ => {
            debug!(journal = %journal.name, "cannot prove the pending password unused; keeping it");
            return;
        }
    }
    let mut tags = journal.tags.clone();
    tags.insert(TAG_STEP.to_owned(), STEP_PENDING.to_owned());
    let fresh = NewSecretVersion {
        value: rotator.password_policy().generate(),
        tags,
        content_type: Some(JOURNAL_CONTENT_TYPE.to_owned()),
        expires: None,
        not_before: None,
    };
    match engine.store.set_secret(journal.name, fresh).await {
        Ok(_) => {
            warn!(journal = %journal.name, "the target refused the pending password; a fresh one is journaled for the next attempt")
        }
        Err(err) => {
            warn!(journal = %journal.name, error = %err, "could not journal a fresh password; the refused one stays")
        }
    }
}

/// Rewrites the journal record's tags (the service replaces them as a whole, so `tags`
/// is the full set). For diagnosis only — an operator reading the vault sees the step and
/// the attempts; the protocol never depends on them, so a failure does not fail the rotation.
async fn update_journal_tags(engine: &Engine, journal_name: &str, tags: &BTreeMap<String, String>) {
    let update = PropertiesUpdate { tags: Some(tags.clone()), ..Default::default() };
    if let Err(err) = engine.store.update_properties(journal_name, None, update).await {
        debug!(journal = %journal_name, error = %err, "could not update the journal's tags");
    }
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
    let store = engine.store.as_ref();
    let pending = match store.get_latest(journal_name).await {
        Ok(record) => record.value,
        Err(StoreError::NotFound { .. }) => return Ok(()),
        Err(other) => return Err(other.into()),
    };
    let versions = store.list_versions(&latest.name).await?;
    let finished = versions.iter().any(|v| v.tags.get(TAG_ROTATION_ID).map(String::as_str) == Some(rotation_id));
    let target = if finished { Target::AcceptsLatest } else { probe_target(engine, latest, &pending).await };
    match planner::stale_journal(finished, target) {
        StaleJournal::Delete => {
            info!(journal = %journal_name, finished, "journal outlived its source version and is obsolete; deleting it");
            store.delete_secret(journal_name).await?;
            Ok(())
        }
        StaleJournal::KeepAndRetry => Err(RotationError::Target {
            profile: latest.properties.tags.get(TAG_ROTATOR).cloned().unwrap_or_default(),
            source: kv_rotator_rotators::RotatorError::Transient(
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

/// Which of the latest and the pending password the target accepts.
async fn probe_target(engine: &Engine, latest: &SecretRecord, pending: &SecretString) -> Target {
    let tags = &latest.properties.tags;
    let (Some(profile), Some(user)) = (tags.get(TAG_ROTATOR), tags.get(TAG_CREDENTIAL_ID)) else {
        return Target::AcceptsNeither;
    };
    let Some(rotator) = engine.targets.rotator(profile) else { return Target::AcceptsNeither };
    let try_login = |password: &SecretString| {
        rotator.verify(VerifyRequest { username: user.trim().to_owned(), password: password.clone() })
    };
    match try_login(&latest.value).await {
        Ok(VerifyResponse::Accepted) => return Target::AcceptsLatest,
        Ok(VerifyResponse::Rejected) => {}
        Err(_) => return Target::Unreachable,
    }
    match try_login(pending).await {
        Ok(VerifyResponse::Accepted) => Target::AcceptsPending,
        Ok(VerifyResponse::Rejected) => Target::AcceptsNeither,
        Err(_) => Target::Unreachable,
    }
}

/// Checks the secret's tags and derives everything `finish` will write, so that a
/// secret that cannot be finished fails before the target is touched.
fn plan(engine: &Engine, latest: &SecretRecord, rotation_id: String) -> Result<Plan, RotationError> {
    let tags = &latest.properties.tags;
    let name = &latest.name;
    let profile = tags.get(TAG_ROTATOR).cloned().unwrap_or_default();
    let username =
        tags.get(TAG_CREDENTIAL_ID).map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).ok_or_else(|| {
            RotationError::Misconfigured(format!(
                "secret {name:?} has no {TAG_CREDENTIAL_ID:?} tag naming the user on the target"
            ))
        })?;
    let validity_days = match tags.get(TAG_VALIDITY_DAYS) {
        None => engine.settings.default_validity_days,
        Some(raw) => match raw.trim().parse::<u32>() {
            Ok(days) if (1..=3650).contains(&days) => days,
            _ => {
                return Err(RotationError::Misconfigured(format!(
                "secret {name:?}: tag {TAG_VALIDITY_DAYS:?} = {raw:?} is not a whole number of days between 1 and 3650"
            )))
            }
        },
    };
    let mut new_tags = tags.clone();
    // A successful rotation clears an earlier failure mark.
    new_tags.remove(TAG_FAILED);
    new_tags.insert(TAG_ROTATION_ID.to_owned(), rotation_id.clone());
    new_tags.insert(TAG_ROTATED_FROM.to_owned(), latest.version.clone());
    // rotated-at is added at finish; count it now.
    let count = new_tags.len() + usize::from(!new_tags.contains_key(TAG_ROTATED_AT));
    if count > MAX_TAGS {
        return Err(RotationError::Misconfigured(format!(
            "secret {name:?} has {} tags; kv-rotator adds {TAG_ROTATION_ID:?}, {TAG_ROTATED_AT:?} and {TAG_ROTATED_FROM:?} and Key Vault allows {MAX_TAGS}: remove some tags",
            tags.len() - usize::from(tags.contains_key(TAG_FAILED))
        )));
    }
    Ok(Plan { profile, username, validity_days, rotation_id, new_tags })
}

/// Passwords of the versions before the latest, newest first. Best effort: they only
/// widen the logins `set` can try.
async fn previous_passwords(engine: &Engine, latest: &SecretRecord) -> Vec<SecretString> {
    let store = engine.store.as_ref();
    let versions = match store.list_versions(&latest.name).await {
        Ok(versions) => versions,
        Err(err) => {
            debug!(error = %err, "cannot list versions; trying only the current password");
            return Vec::new();
        }
    };
    let mut passwords = Vec::new();
    for version in versions.iter().rev().filter_map(|v| v.version.as_deref()) {
        if passwords.len() == PREVIOUS_PASSWORDS {
            break;
        }
        if version == latest.version {
            continue;
        }
        if let Ok(record) = store.get_version(&latest.name, version).await {
            if record.properties.enabled {
                passwords.push(record.value);
            }
        }
    }
    passwords
}
