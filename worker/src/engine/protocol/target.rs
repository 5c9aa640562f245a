//! Steps 3, 6 and 7, the ones that talk to the target: the canary, `set` (with
//! alternating users, the twin's sync first) and `test`.

use kv_rotator_keyvault::SecretRecord;
use kv_rotator_rotators::{
    Credential, Rotator, RotatorError, SetPasswordRequest, SyncTwinRequest, VerifyRequest, VerifyResponse,
};
use secrecy::SecretString;
use tracing::{debug, info, warn};

use super::{Fenced, Pair, Pending, Plan};
use crate::engine::value::Login;
use crate::engine::{Engine, RotationError, StepLog};

/// Older versions whose passwords `set` may try after the current one.
const PREVIOUS_PASSWORDS: usize = 2;

/// Step 3: a random password must be refused. A target that accepts anything (`trust`
/// in `pg_hba.conf`, a sidecar answering for it) would make `set` believe the pending
/// password already works and `test` pass, and a version no consumer can use be written.
/// A refusal counts for the rest of the request, so its retries and finishing attempts
/// add no refused logins (lockout policies count them); the next request asks again, so
/// a target that turned to trusting everyone is caught at its next rotation.
pub(super) async fn prove_target_checks_passwords(
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

/// Step 6: the rotator makes the target accept the pending password, logging in with the
/// current password, then older ones, then the admin. `Ok(true)`: the rotator proved the
/// pending password logs in, after the change, as [`test`] would.
pub(super) async fn set(
    engine: &Engine,
    steps: &StepLog,
    rotator: &dyn Rotator,
    plan: &Plan,
    fenced: &Fenced,
    pending: &Pending,
) -> Result<bool, RotationError> {
    let admin = crate::engine::retire::admin_credential(engine, &plan.profile).await?;
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

/// Step 7: the pending password logs in. A refusal here is transient: replication lag
/// or a pooler may hide a fresh password for a moment.
pub(super) async fn test(rotator: &dyn Rotator, plan: &Plan, pending: &Pending) -> Result<(), RotationError> {
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
