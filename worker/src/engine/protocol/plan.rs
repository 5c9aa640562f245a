//! Step 2's second half, the plan: the secret's tags and account checked against the
//! profile, and everything `finish` will write derived, before the target is touched.

use kv_rotator_core::limits::MAX_TAGS;
use kv_rotator_core::tags::{
    TAG_CREDENTIAL_ID, TAG_FAILED, TAG_RETIRE_AFTER, TAG_ROTATED_AT, TAG_ROTATED_FROM, TAG_ROTATION_ID, TAG_ROTATOR,
};

use super::{Fenced, Pair, Plan};
use crate::engine::value::Shape;
use crate::engine::{Engine, RotationError};

/// Checks the secret's tags and the account against the profile, and derives
/// everything `finish` will write, so that a secret that cannot be finished (or must not
/// be rotated) fails before the target is touched.
pub(super) fn plan(engine: &Engine, fenced: &Fenced) -> Result<Plan, RotationError> {
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
