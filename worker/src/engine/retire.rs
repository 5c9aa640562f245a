//! Retirement, the last phase of a multi-password rotation.
//!
//! With `strategy = "multi-password"` the target keeps the old password beside the new
//! one, so consumers that read the old value keep working. `finish` marks the new version
//! with [`TAG_RETIRE_AFTER`]; once the profile's grace period has passed since that
//! version was created, the passwords of the versions before it are removed from the
//! target ([`retire_if_due`]).
//!
//! What it relies on, and why each is safe:
//! - **When**: the version's `created` attribute (the service's clock, which no tag can
//!   move) plus the profile's `grace_period_secs`. The tag only says "outstanding"; its
//!   value is for operators and is a hint for the sweeper.
//! - **What**: every password the account has but the latest version's and those of an
//!   unfinished rotation of it (its journal record): older versions', disabled ones',
//!   and any a journal alone ever held (a second engine's, a lost race), so what is left
//!   is what Key Vault says is in use. Removing a password can never leave a working
//!   password that Key Vault does not hold, so the invariant is untouched; what matters
//!   is not to cut off the consumers, so the rotator removes nothing unless the latest
//!   value logs in first, and proves it still does after, and the latest is read again
//!   just before (a newer version's password would otherwise be among the others).
//! - **Crashes**: removing is idempotent (the rotator removes only what the account still
//!   has), and the tag is cleared only after the target is done, so a crash in between
//!   repeats a removal that finds nothing left.
//! - **Who**: the rotation engine, at the fence of any request for the secret, under the
//!   secret's lock and the engine lease; the sweeper enqueues one for every marked
//!   secret whose hint has passed.

use std::time::Duration;

use kv_rotator_keyvault::{PropertiesUpdate, SecretRecord};
use kv_rotator_rotators::{Credential, RetirePasswordsRequest};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::failpoints;
use super::journal;
use super::protocol::refuses_a_random_password;
use super::{Engine, RotationError};
use kv_rotator_core::tags::{TAG_CREDENTIAL_ID, TAG_RETIRE_AFTER, TAG_ROTATOR};

/// When the version `latest` may have its predecessors retired: `created` plus `grace`.
pub fn retire_at(latest_created: OffsetDateTime, grace: Duration) -> OffsetDateTime {
    latest_created + grace
}

/// The tag value `finish` writes on a new version of a multi-password profile: when its
/// predecessors' passwords go (for operators; the engine recomputes it from `created`).
pub fn retire_tag(now: OffsetDateTime, grace: Duration) -> String {
    retire_at(now, grace).format(&Rfc3339).unwrap_or_default()
}

/// Whether the sweeper should ask for a retirement: the marker is there and its time has
/// come, or cannot be read (then the engine decides).
pub fn retirement_hint_due(tags: &std::collections::BTreeMap<String, String>, now: OffsetDateTime) -> bool {
    match tags.get(TAG_RETIRE_AFTER) {
        None => false,
        Some(at) => OffsetDateTime::parse(at.trim(), &Rfc3339).map_or(true, |at| at <= now),
    }
}

/// Carries out the retirement `latest` is marked for, if its profile is multi-password
/// and the grace period has passed; the number of passwords removed, or `None` when
/// nothing was due.
pub(super) async fn retire_if_due(engine: &Engine, latest: &SecretRecord) -> Result<Option<usize>, RotationError> {
    let tags = &latest.properties.tags;
    if !tags.contains_key(TAG_RETIRE_AFTER) {
        return Ok(None);
    }
    let profile = tags.get(TAG_ROTATOR).cloned().unwrap_or_default();
    let grace = engine.targets.grace_period(&profile).filter(|_| engine.targets.multi_password(&profile));
    let Some(grace) = grace else {
        // The profile is no longer multi-password (its set replaces every password): the
        // marker goes, or the sweeper would ask again at every scan.
        if engine.targets.rotator(&profile).is_some() {
            engine.check_lease()?;
            clear_marker(engine, latest).await?;
        }
        return Ok(None);
    };
    let Some(created) = latest.properties.created else {
        warn!(version = %latest.version, "the latest version has no creation time; its retirement waits");
        return Ok(None);
    };
    if OffsetDateTime::now_utc() < retire_at(created, grace) {
        return Ok(None);
    }
    let name = &latest.name;
    let user = tags.get(TAG_CREDENTIAL_ID).map(|u| u.trim().to_owned()).unwrap_or_default();
    if let Some(why) = engine.targets.refuse_account(&profile, &user) {
        return Err(RotationError::Misconfigured(format!("secret {name:?}: {why}; its old passwords are not retired")));
    }
    let rotator = engine.targets.rotator(&profile).ok_or_else(|| {
        RotationError::Misconfigured(format!(
            "secret {name:?} names target profile {profile:?}, which is not configured"
        ))
    })?;
    let target = |source| RotationError::Target { profile: profile.clone(), source };
    // As for a rotation: a target that takes any password proves nothing about which
    // password consumers still use.
    if !refuses_a_random_password(rotator.as_ref(), &user).await.map_err(target)? {
        return Err(RotationError::Misconfigured(format!(
            "target {profile} accepted a random wrong password for {user:?}; old passwords are not retired"
        )));
    }
    // An unfinished rotation of this version keeps its pending passwords (it may have
    // set them already); the latest must still be the latest, or its successor's
    // password would be among those removed.
    let admin = admin_credential(engine, &profile).await?;
    let rotation = journal::rotation_id(engine.store.vault_name(), name, &latest.version);
    let pending = super::protocol::journal_passwords(engine, &journal::journal_name(&rotation)).await?;
    let now_latest = engine.store.get_latest(name).await?;
    if !now_latest.version.eq_ignore_ascii_case(&latest.version) {
        return Err(RotationError::Raced(format!(
            "version {} of {name:?} was written while its old passwords were to be retired",
            now_latest.version
        )));
    }
    // Last, the lease: another engine may only rotate once this one no longer holds it,
    // so a password it set is never among those removed here.
    engine.check_lease()?;
    let request = RetirePasswordsRequest::new(user, latest.value.clone())
        .with_also_keep(pending.into_iter().map(|record| record.value).collect())
        .with_admin(admin);
    let removed = rotator.retire_passwords(request).await.map_err(target)?.removed;
    failpoints::hit("after-retire");
    engine.check_lease()?;
    clear_marker(engine, latest).await?;
    info!(version = %latest.version, removed, "old passwords retired after the grace period");
    Ok(Some(removed))
}

/// Takes the retirement marker off `latest` (tags are replaced as a whole: the rest kept).
async fn clear_marker(engine: &Engine, latest: &SecretRecord) -> Result<(), RotationError> {
    let mut tags = latest.properties.tags.clone();
    tags.remove(TAG_RETIRE_AFTER);
    let update = PropertiesUpdate { tags: Some(tags), ..Default::default() };
    engine.store.update_properties(&latest.name, Some(&latest.version), update).await?;
    Ok(())
}

/// The admin login of `profile`, its password read from Key Vault now.
pub(super) async fn admin_credential(engine: &Engine, profile: &str) -> Result<Option<Credential>, RotationError> {
    match engine.targets.admin(profile) {
        Some(admin) => {
            let record = engine.store.get_latest(&admin.secret).await?;
            Ok(Some(Credential::new(admin.username.clone(), record.value)))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_is_due_when_its_time_passed_or_it_cannot_be_read() {
        let now = OffsetDateTime::now_utc();
        let tags = |v: &str| std::collections::BTreeMap::from([(TAG_RETIRE_AFTER.to_owned(), v.to_owned())]);
        assert!(!retirement_hint_due(&Default::default(), now));
        assert!(retirement_hint_due(&tags(&retire_tag(now, Duration::ZERO)), now));
        assert!(!retirement_hint_due(&tags(&retire_tag(now, Duration::from_secs(60))), now));
        assert!(retirement_hint_due(&tags("tomorrow"), now), "an unreadable hint is the engine's to judge");
    }
}
