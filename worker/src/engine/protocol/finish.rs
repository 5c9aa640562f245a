//! Steps 5 and 8: the re-fence before `set` and before `finish`, and the finish itself
//! (the new version, then the journal record if it is still ours).

use kv_rotator_core::tags::{TAG_RETIRE_AFTER, TAG_ROTATED_AT};
use kv_rotator_keyvault::{NewSecretVersion, StoreError};
use kv_rotator_rotators::{Rotator, RotatorError, VerifyResponse};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::{timed, Done, Fenced, Pending, Plan};
use crate::engine::failpoints;
use crate::engine::{Engine, Outcome, RotationError, StepLog};

/// Step 5: the secret's latest version is still the source, and the journal record's
/// latest version still the one this attempt holds. Key Vault has no compare-and-swap,
/// so this is how a second engine's write (a replica, `rotate` beside `serve`) is seen
/// before this one acts on stale state; the engine lease keeps the window closed.
pub(super) async fn refence(
    engine: &Engine,
    fenced: &Fenced,
    pending: &Pending,
    before: &str,
) -> Result<(), RotationError> {
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

/// Step 8: the new version, then the journal record (if it is still ours).
pub(super) async fn finish(
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
        tags.insert(TAG_RETIRE_AFTER.to_owned(), crate::engine::retire::retire_tag(now, grace));
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
