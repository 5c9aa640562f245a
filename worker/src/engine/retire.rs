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
//! - **What**: the values of the other enabled versions (the latest is read again after
//!   they are listed, so they are all older), never the latest's own value. Removing a password can never leave a working password that Key
//!   Vault does not hold, so the invariant is untouched; what matters is not to cut off
//!   the consumers, so the rotator removes nothing unless the latest value logs in first,
//!   and proves it still does after.
//! - **Crashes**: removing is idempotent (the rotator removes only what the account still
//!   has), and the tag is cleared only after the target is done, so a crash in between
//!   repeats a removal that finds nothing left.
//! - **Who**: the rotation engine, at the fence of any request for the secret, under the
//!   secret's lock and the engine lease; the sweeper enqueues one for every marked
//!   secret whose hint has passed.

use std::time::Duration;

use kv_rotator_keyvault::{PropertiesUpdate, SecretRecord};
use kv_rotator_rotators::{Credential, RetirePasswordsRequest};
use secrecy::{ExposeSecret, SecretString};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::failpoints;
use super::journal::TAG_RETIRE_AFTER;
use super::protocol::{refuses_a_random_password, TAG_CREDENTIAL_ID, TAG_ROTATOR};
use super::{Engine, RotationError};

/// Versions before the latest whose passwords a retirement removes, newest first. Each
/// retirement removes all of them, so one that was missed is caught by the next.
const RETIRE_LOOKBACK: usize = 5;

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
    let Some(grace) = engine.targets.grace_period(&profile) else {
        // The profile is no longer multi-password: its set replaces every password.
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
    let request = RetirePasswordsRequest {
        username: user,
        keep: latest.value.clone(),
        retire: older_passwords(engine, latest).await?,
        admin: admin_credential(engine, &profile).await?,
    };
    let removed = rotator.retire_passwords(request).await.map_err(target)?.removed;
    failpoints::hit("after-retire");
    let mut cleared = tags.clone();
    cleared.remove(TAG_RETIRE_AFTER);
    let update = PropertiesUpdate { tags: Some(cleared), ..Default::default() };
    engine.store.update_properties(name, Some(&latest.version), update).await?;
    info!(version = %latest.version, removed, "old passwords retired after the grace period");
    Ok(Some(removed))
}

/// The values of up to [`RETIRE_LOOKBACK`] enabled versions other than `latest`, newest
/// first, without `latest`'s own value. Key Vault's `created` has one-second resolution,
/// so a version written in the same second as `latest` cannot be told apart by time:
/// instead the latest is read again after the listing, and while it is still `latest`
/// every other version is older.
async fn older_passwords(engine: &Engine, latest: &SecretRecord) -> Result<Vec<SecretString>, RotationError> {
    let store = engine.store.as_ref();
    let mut versions = store.list_versions(&latest.name).await?;
    versions.sort_by_key(|v| std::cmp::Reverse(v.created));
    let mut passwords = Vec::new();
    for version in versions {
        if passwords.len() == RETIRE_LOOKBACK {
            break;
        }
        let Some(id) = version.version.as_deref() else { continue };
        if id.eq_ignore_ascii_case(&latest.version) || !version.enabled {
            continue;
        }
        let record = store.get_version(&latest.name, id).await?;
        if record.value.expose_secret() != latest.value.expose_secret() {
            passwords.push(record.value);
        }
    }
    let now_latest = store.get_latest(&latest.name).await?;
    if !now_latest.version.eq_ignore_ascii_case(&latest.version) {
        return Err(RotationError::Raced(format!(
            "version {} of {:?} was written while its old passwords were being retired",
            now_latest.version, latest.name
        )));
    }
    Ok(passwords)
}

/// The admin login of `profile`, its password read from Key Vault now.
pub(super) async fn admin_credential(engine: &Engine, profile: &str) -> Result<Option<Credential>, RotationError> {
    match engine.targets.admin(profile) {
        Some(admin) => {
            let record = engine.store.get_latest(&admin.secret).await?;
            Ok(Some(Credential { username: admin.username.clone(), password: record.value }))
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
