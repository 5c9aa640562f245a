//! Step 1, the fence: the latest version, and whether this request rotates it. A
//! request the fence stops may find its rotation's journal record left over; the
//! planner's [`Leftover`](super::planner::Leftover) judges it ([`super::leftover`]).

use kv_rotator_core::tags::{TAG_ROTATION_ID, TAG_ROTATOR};
use kv_rotator_core::RotationRequest;
use kv_rotator_keyvault::StoreError;
use tracing::info;

use super::{journal_versions, leftover, timed, Done, Fenced};
use crate::engine::journal::{self, RESERVED_PREFIX};
use crate::engine::planner::{self, Fence, Journal, Latest, Stop};
use crate::engine::{Engine, Outcome, RotationError, StepLog};

/// Step 1: reads the latest version and decides whether this request rotates it.
/// `Ok(Err(done))`: the request ends here.
pub(super) async fn fence(
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
        other => return not_rotated(engine, secret, other.is_some(), &rotation_id, &journal_name).await,
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
        Fence::Stop(stop) => {
            let journal = journal_versions(engine, &journal_name).await?;
            let present = match journal.readable.is_empty() && !journal.hidden {
                true => Journal::Absent,
                false => Journal::Present,
            };
            if let Some(leftover) = planner::leftover(stop, present) {
                leftover::settle(engine, &latest, &rotation_id, &journal_name, &source_version, &journal, leftover)
                    .await?;
            }
            Ok(Err(match stop {
                Stop::AlreadyRotated => {
                    let version = latest.version;
                    Done::new(Some(&rotation_id), Outcome::AlreadyRotated { version })
                }
                Stop::Stale => {
                    info!(requested = %source_version, latest = %latest.version, "request names an older version; nothing to do");
                    Done::new(None, Outcome::Stale { requested: source_version, latest: latest.version })
                }
            }))
        }
    }
}

/// The secret no longer exists, or (`exists`) has no rotator tag: nothing to rotate —
/// unless this rotation's journal record exists.
async fn not_rotated(
    engine: &Engine,
    secret: &str,
    exists: bool,
    rotation_id: &str,
    journal_name: &str,
) -> Result<Result<Fenced, Done>, RotationError> {
    let (outcome, what) = match exists {
        true => (Outcome::NotManaged, "has no rotator tag"),
        false => (Outcome::NotFound, "no longer exists"),
    };
    match engine.store.get_latest(journal_name).await {
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
    }
}
