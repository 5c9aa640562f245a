//! A journal record left over by a request the fence stops: its rotation finished, or
//! it outlived its source version. The planner's [`Leftover`] asks what it needs, one
//! question at a time ([`settle`] answers: the record's passwords, the secret's history,
//! a probe of the target), and its verdict is carried out here.

use kv_rotator_core::tags::{
    TAG_ACCOUNT, TAG_CREDENTIAL_ID, TAG_JOURNAL_FOR, TAG_PROFILE, TAG_ROTATED_AT, TAG_ROTATION_ID, TAG_ROTATOR,
};
use kv_rotator_keyvault::{NewSecretVersion, SecretRecord};
use kv_rotator_rotators::{RotatorError, VerifyRequest, VerifyResponse};
use secrecy::{ExposeSecret, SecretString};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::pending::{settled, JournalVersions};
use super::refuses_a_random_password;
use crate::engine::journal::JOURNAL_CONTENT_TYPE;
use crate::engine::planner::{Leftover, Next, Question, StaleJournal, Target};
use crate::engine::value::Shape;
use crate::engine::{Engine, RotationError};

/// Answers `leftover`'s questions about the record `record` until the planner's
/// verdict, then carries it out.
pub(super) async fn settle(
    engine: &Engine,
    latest: &SecretRecord,
    rotation_id: &str,
    journal_name: &str,
    source_version: &str,
    record: &JournalVersions,
    mut leftover: Leftover,
) -> Result<(), RotationError> {
    // Its readable versions, newest first.
    let journal = record.readable.as_slice();
    // The record's version the target accepts, once probed.
    let mut accepted = None;
    let verdict = loop {
        let question = match leftover.next() {
            Next::Verdict(verdict) => break verdict,
            Next::Ask(question) => question,
        };
        match question {
            Question::AllVersionsReadable => leftover.all_readable = Some(!record.hidden),
            Question::HoldsOnlyLatest => {
                let only_latest =
                    matches!(journal, [only] if only.value.expose_secret() == latest.value.expose_secret());
                leftover.holds_only_latest = Some(only_latest);
            }
            Question::FinishedInHistory => {
                leftover.finished_in_history = Some(finished_in_history(engine, latest, rotation_id, journal).await?);
            }
            Question::Target => {
                let (target, record) = probe(engine, latest, rotation_id, journal).await;
                accepted = record;
                leftover.target = Some(target);
            }
            Question::PendingInHistory => {
                let in_history = match accepted {
                    Some(record) => value_in_history(engine, latest, &record.value).await?,
                    None => false,
                };
                leftover.pending_in_history = Some(in_history);
            }
            Question::RecordSettled => leftover.record_settled = Some(settled(engine, journal)),
            Question::LatestIsSource => {
                let old = held_before_rotation(engine, &latest.name, source_version, &latest.value).await?;
                leftover.latest_is_source = Some(old);
            }
            Question::PendingIsOld => {
                let old = match accepted {
                    Some(record) => held_before_rotation(engine, &latest.name, source_version, &record.value).await?,
                    None => true,
                };
                leftover.pending_is_old = Some(old);
            }
        }
    };
    carry_out(engine, latest, rotation_id, journal_name, verdict, accepted, &leftover).await
}

/// Whether versions carrying the rotation id hold every one of the record's passwords:
/// then none is lost with the record. (One held is not enough: the tag is anyone's to
/// write, and so is a version of the record.)
async fn finished_in_history(
    engine: &Engine,
    latest: &SecretRecord,
    rotation_id: &str,
    journal: &[SecretRecord],
) -> Result<bool, RotationError> {
    let mut held = vec![false; journal.len()];
    for version in engine.store.list_versions(&latest.name).await? {
        let (Some(id), true) =
            (version.version.as_deref(), version.tags.get(TAG_ROTATION_ID).map(String::as_str) == Some(rotation_id))
        else {
            continue;
        };
        let written = engine.store.get_version(&latest.name, id).await?;
        for (held, record) in held.iter_mut().zip(journal) {
            *held |= record.value.expose_secret() == written.value.expose_secret();
        }
    }
    Ok(!journal.is_empty() && held.iter().all(|held| *held))
}

/// Whether `value` is one `secret` held before the rotation: its source version's, or
/// one of the 20 newest versions created in an earlier second (Key Vault's times are
/// whole seconds: a version of the source's own second may be a later one). A source
/// version that cannot be read (disabled, purged) may have held it; older versions that
/// cannot be read are passed over (an old disabled version is common, and the source is
/// the one the rotation replaced).
async fn held_before_rotation(
    engine: &Engine,
    secret: &str,
    source_version: &str,
    value: &SecretString,
) -> Result<bool, RotationError> {
    let store = engine.store.as_ref();
    let source = match store.get_version(secret, source_version).await {
        Ok(source) => source,
        Err(err) if err.is_transient() => return Err(err.into()),
        Err(_) => return Ok(true),
    };
    if source.value.expose_secret() == value.expose_secret() {
        return Ok(true);
    }
    let Some(started) = source.properties.created else { return Ok(true) };
    let mut older = store.list_versions(secret).await?;
    older.retain(|v| v.enabled && v.created.is_some_and(|created| created < started));
    older.sort_by_key(|v| std::cmp::Reverse(v.created));
    for version in older.iter().take(20) {
        let Some(id) = version.version.as_deref().filter(|id| !id.eq_ignore_ascii_case(source_version)) else {
            continue;
        };
        match store.get_version(secret, id).await {
            Ok(old) if old.value.expose_secret() == value.expose_secret() => return Ok(true),
            Ok(_) => {}
            Err(err) if err.is_transient() => return Err(err.into()),
            Err(_) => {}
        }
    }
    Ok(false)
}

/// Carries out the planner's verdict on a leftover record; `accepted` is the record's
/// version the target accepts, if it was probed and one does.
async fn carry_out(
    engine: &Engine,
    latest: &SecretRecord,
    rotation_id: &str,
    journal_name: &str,
    verdict: StaleJournal,
    accepted: Option<&SecretRecord>,
    answers: &Leftover,
) -> Result<(), RotationError> {
    match (verdict, accepted) {
        (StaleJournal::Delete, _) => {
            // What a crash between finish and delete leaves goes without a word.
            if answers.holds_only_latest != Some(true) {
                info!(journal = %journal_name, "journal outlived its source version and is obsolete; deleting it");
            }
            engine.store.delete_secret(journal_name).await?;
            Ok(())
        }
        (StaleJournal::Refinish, Some(in_use)) => refinish(engine, latest, journal_name, in_use).await,
        (StaleJournal::KeepAndRetry, _) => Err(RotationError::Target {
            profile: latest.properties.tags.get(TAG_ROTATOR).cloned().unwrap_or_default(),
            source: RotatorError::Transient(
                "cannot check which password the target accepts for a stale journal record".into(),
            ),
        }),
        // The planner refinishes only with a password the probe found the target using;
        // without one, the record is kept.
        (StaleJournal::KeepUntilSettled, _) => {
            engine.metrics.inc("kv_rotator_journals_kept_total", &[("reason", "target_lag")]);
            info!(
                journal = %journal_name, target_lag_secs = engine.settings.target_lag_secs,
                "the latest version logs in, but the journal record is younger than the target's lag (a replica may \
                 not show its password yet): kept, and judged again at a later sweep"
            );
            Ok(())
        }
        (StaleJournal::KeepForOperator, _) | (StaleJournal::Refinish, None) => {
            let why = match answers.target {
                _ if answers.all_readable == Some(false) => {
                    "a version of the journal record is disabled, and may hold the password the target uses"
                }
                Some(Target::AcceptsLatest) => {
                    "its password logs in, but it is a value the secret held before the rotation, which a login path \
                     that never caught up with the record's password (broken replication, a stale auth file) still takes"
                }
                Some(Target::AcceptsPending) if answers.pending_is_old == Some(true) => {
                    "the record's password that logs in is one the secret held before the rotation: a record version \
                     kv-rotator did not write (its other passwords may be the target's)"
                }
                Some(Target::AcceptsOlderPending) => {
                    "an older password of the record logs in, not its newest, long after it was set: the target may \
                     never have caught up"
                }
                Some(Target::AcceptsNeither) => {
                    "neither its password nor the record's logs in (a target lagging behind its primary may refuse both)"
                }
                _ => "its password does not log in, and the record's does",
            };
            Err(RotationError::Misconfigured(format!(
                "secret {:?}: version {} was written while rotation {rotation_id} was pending; {why}. The journal \
                 record {journal_name} is kept (it may hold the working password): an operator must choose",
                latest.name, latest.version
            )))
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
    if !journal.iter().all(|record| written_for(record, latest, rotation_id, profile, &accounts)) {
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
    // A record holding the latest's own value says nothing the latest does not. Only the
    // newest version's password logging in shows what the target has: it was set last.
    let distinct = journal.iter().enumerate().filter(|(_, r)| r.value.expose_secret() != latest.value.expose_secret());
    for (index, record) in distinct {
        match try_login(&record.value).await {
            Ok(VerifyResponse::Accepted) if index == 0 => return (Target::AcceptsPending, Some(record)),
            Ok(VerifyResponse::Accepted) => return (Target::AcceptsOlderPending, Some(record)),
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

/// Whether `record` is a journal version kv-rotator wrote for `latest`'s secret, this
/// rotation and — where the record names them — this profile and one of `accounts`.
fn written_for(
    record: &SecretRecord,
    latest: &SecretRecord,
    rotation_id: &str,
    profile: &str,
    accounts: &[String],
) -> bool {
    let t = &record.properties.tags;
    let same = |key: &str, want: &str| t.get(key).is_none_or(|v| v.trim() == want);
    record.properties.content_type.as_deref() == Some(JOURNAL_CONTENT_TYPE)
        && t.get(TAG_JOURNAL_FOR).is_some_and(|s| s.eq_ignore_ascii_case(&latest.name))
        && t.get(TAG_ROTATION_ID).is_some_and(|id| id == rotation_id)
        && same(TAG_PROFILE, profile)
        && t.get(TAG_ACCOUNT).is_none_or(|a| accounts.iter().any(|account| a.trim() == account))
}
