//! The engine lease of a Functions instance ([`LeaseKeeper`]): claimed when an invocation
//! needs it, shared by the invocations running at once ([`Hold`]), released once they
//! are idle. Independent of the invocation contract around it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_rotator_keyvault::SecretStore;
use tracing::info;

use super::LEASE_COMMAND;
use crate::lease::{self, ClaimError, LeaseGuard, LeaseTimings, NotHeld};

/// Why [`LeaseKeeper::acquire`] has no lease to give.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// Claiming failed: another engine holds it, or the vault failed.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// This instance's lease lapsed (renewals failing) while rotations still use it.
    #[error(transparent)]
    Lapsed(NotHeld),
}

/// The engine lease of a Functions instance: claimed on demand, kept while invocations
/// use it, released `idle` after the last one ends (or at shutdown). Claims are
/// serialized, so concurrent invocations of one instance share one claim.
#[derive(Debug)]
pub struct LeaseKeeper {
    store: Arc<dyn SecretStore>,
    timings: LeaseTimings,
    idle: Duration,
    claiming: tokio::sync::Mutex<()>,
    state: Mutex<KeeperState>,
}

#[derive(Debug, Default)]
struct KeeperState {
    guard: Option<LeaseGuard>,
    /// Live [`Hold`]s.
    users: usize,
    /// Moves at every change of `users`, so an idle release scheduled earlier can tell.
    generation: u64,
}

/// One invocation's (or rotation's) use of the lease: the lease is kept while any exists.
#[derive(Debug)]
pub struct Hold {
    keeper: Arc<LeaseKeeper>,
    pub(super) guard: LeaseGuard,
}

impl Hold {
    /// The lease held.
    pub fn guard(&self) -> &LeaseGuard {
        &self.guard
    }
}

impl Clone for Hold {
    fn clone(&self) -> Self {
        let mut state = self.keeper.state();
        state.users += 1;
        state.generation += 1;
        Self { keeper: self.keeper.clone(), guard: self.guard.clone() }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let generation = {
            let mut state = self.keeper.state();
            state.users -= 1;
            state.generation += 1;
            (state.users == 0).then_some(state.generation)
        };
        let (Some(generation), Ok(runtime)) = (generation, tokio::runtime::Handle::try_current()) else { return };
        let keeper = self.keeper.clone();
        runtime.spawn(async move {
            tokio::time::sleep(keeper.idle).await;
            keeper.release_if_idle(generation).await;
        });
    }
}

impl LeaseKeeper {
    /// A keeper of `store`'s engine lease; nothing is claimed yet.
    pub fn new(store: Arc<dyn SecretStore>, timings: LeaseTimings, idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            store,
            timings,
            idle,
            claiming: tokio::sync::Mutex::new(()),
            state: Mutex::new(KeeperState::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, KeeperState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease for one more user: the one held, else a fresh claim (at least the settle
    /// delay). Refused while another engine holds it.
    pub async fn acquire(self: &Arc<Self>) -> Result<Hold, AcquireError> {
        let _claiming = self.claiming.lock().await;
        let ended = {
            let mut state = self.state();
            match state.guard.as_ref().map(LeaseGuard::check) {
                Some(Ok(())) => {
                    let guard = state.guard.clone().expect("checked above");
                    state.users += 1;
                    state.generation += 1;
                    return Ok(Hold { keeper: self.clone(), guard });
                }
                // Its rotations may still get it back; a second claim would lose to it.
                Some(Err(lapsed @ NotHeld::Lapsed(_))) if state.users > 0 => return Err(AcquireError::Lapsed(lapsed)),
                _ => state.guard.take(),
            }
        };
        if let Some(ended) = ended {
            ended.release().await;
        }
        let guard = lease::claim(self.store.clone(), LEASE_COMMAND, self.timings).await?;
        let mut state = self.state();
        state.guard = Some(guard.clone());
        state.users += 1;
        state.generation += 1;
        Ok(Hold { keeper: self.clone(), guard })
    }

    /// Releases the lease if nothing used it since `generation`.
    async fn release_if_idle(&self, generation: u64) {
        let _claiming = self.claiming.lock().await;
        let idle = {
            let mut state = self.state();
            if state.users == 0 && state.generation == generation {
                state.guard.take()
            } else {
                None
            }
        };
        if let Some(guard) = idle {
            guard.release().await;
            info!(idle = ?self.idle, "engine lease released: no invocation needs it");
        }
    }

    /// Releases the lease now (shutdown).
    pub async fn release_now(&self) {
        let _claiming = self.claiming.lock().await;
        let guard = self.state().guard.take();
        if let Some(guard) = guard {
            guard.release().await;
            info!("engine lease released");
        }
    }

    /// Whether this instance holds the lease now.
    pub fn is_held(&self) -> bool {
        self.state().guard.as_ref().is_some_and(LeaseGuard::is_held)
    }
}
