//! Standby: a `serve` started while another live engine holds the vault's engine lease
//! ([`crate::lease`]) waits for it instead of exiting.
//!
//! Orchestrators start a replacement before the old process is gone (Container Apps
//! starts a new revision before it stops the old one; Kubernetes' RollingUpdate, or a
//! pod replaced while its evicted predecessor is still terminating, do the same). A
//! replacement that exited on the held lease would be restarted in a loop, and an update
//! that waits for it to become ready would never finish. In standby it runs its
//! listeners and waits for the lease instead:
//!
//! - [`Standby`]: what `serve` builds when its first claim was refused by a live holder
//!   ([`lease::HeldBy`]); it logs the standby once. [`crate::service::start_with`] serves
//!   the listeners and spawns the [`ClaimLoop`], and [`crate::service::RunningService::run_until`]
//!   starts the engine when the loop wins the lease.
//! - [`ClaimLoop`]: retries [`lease::claim`] — the one claim protocol, with its fresh-
//!   heartbeat pre-check (nothing written while the holder renews) and its settle delay
//!   (of two standbys claiming at once, at most one wins) — every quarter TTL (the
//!   holder's renewal interval), jittered by ±20 %. It never gives up: a refusal, a void
//!   claim or a failing vault is retried at the next interval (a change of holder is
//!   logged at info, the first failure of a run at warn). Stopped, it ends at once
//!   between attempts and during the pre-check; a claim already written gets to its
//!   verdict (the settle delay and a few calls, at most 10 s more) and what it won is
//!   released, so no claim of a stopped process stays live.
//! - [`StandbyStatus`]: the shared view. `/readyz` answers 503 `standby: lease held by
//!   <holder>` while waiting; the engine built at startup rotates nothing until the lease
//!   is held (it is its [`EngineLease`](crate::engine::EngineLease): "lost" while
//!   waiting, the guard's state after).
//!
//! `rotate` and `dev` never wait: a one-shot command is answered at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use kv_rotator_keyvault::SecretStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::lease::{self, ClaimError, HeldBy, LeaseGuard, LeaseTimings};

/// The body of the webhook's 503 while in standby (sent to whoever delivers, so it names
/// no host or process).
pub const WEBHOOK_MESSAGE: &str = "standby: another replica holds the engine lease; retry later";

/// A service that waits for the engine lease; see the [module docs](self).
#[derive(Debug)]
pub struct Standby {
    store: Arc<dyn SecretStore>,
    command: &'static str,
    timings: LeaseTimings,
    status: StandbyStatus,
    holder_id: String,
}

impl Standby {
    /// Standby after `held` refused this process's claim for `command`; logs it (once).
    pub fn new(store: Arc<dyn SecretStore>, command: &'static str, timings: LeaseTimings, held: &HeldBy) -> Self {
        info!(
            vault = %held.vault,
            holder = %held.holder.holder,
            retry_every = ?timings.renew_every,
            "standby: {held}. Listening: /readyz answers 503 and deliveries of rotations get 503 with Retry-After \
             until this process holds the engine lease; it claims again every {:?} or so and takes over as soon \
             as the lease is free (at once after the holder's SIGTERM, a TTL after it died)",
            timings.renew_every,
        );
        let status = StandbyStatus {
            phase: Arc::new(Mutex::new(Phase::Waiting { holder: held.holder.holder.to_string() })),
            since: Instant::now(),
        };
        Self { store, command, timings, status, holder_id: held.holder.holder.holder_id.clone() }
    }

    /// The view shared with readiness and the engine.
    pub fn status(&self) -> StandbyStatus {
        self.status.clone()
    }

    /// How often the claim is retried (before jitter): also the webhook's `Retry-After`.
    pub fn retry_every(&self) -> Duration {
        self.timings.renew_every
    }

    /// Starts claiming.
    pub fn spawn(self) -> ClaimLoop {
        let (stop, stopped) = watch::channel(false);
        let settle = self.timings.settle;
        let task = tokio::spawn(self.run(stopped));
        ClaimLoop { stop, task: Some(task), settle }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) -> Option<LeaseGuard> {
        let mut failing = false;
        loop {
            let jitter = 0.8 + 0.4 * rand::random::<f64>();
            tokio::select! {
                _ = tokio::time::sleep(self.timings.renew_every.mul_f64(jitter)) => {}
                // A stop, or the loop's owner gone.
                _ = stop.changed() => return None,
            }
            // `lease::claim` in its two halves: a stop during the listing that may refuse
            // at once ends the loop there, before anything is written.
            let fresh = tokio::select! {
                checked = lease::refuse_if_freshly_held(self.store.as_ref(), &self.timings) => checked,
                _ = stop.changed() => return None,
            };
            let attempt = match fresh {
                Ok(()) => lease::claim_by_writing(self.store.clone(), self.command, self.timings).await,
                Err(refused) => Err(refused),
            };
            if *stop.borrow() || stop.has_changed().is_err() {
                if let Ok(won) = attempt {
                    // Won while stopping: not a single rotation, and the lease free again at once.
                    won.release().await;
                }
                return None;
            }
            match attempt {
                Ok(guard) => return Some(guard),
                Err(ClaimError::Held(held)) => {
                    if std::mem::take(&mut failing) {
                        info!("standby: the engine lease can be claimed again; still held by another engine");
                    }
                    if held.holder.holder.holder_id != self.holder_id {
                        info!(holder = %held.holder.holder, "standby: the engine lease changed hands: {held}");
                        self.holder_id.clone_from(&held.holder.holder.holder_id);
                        self.status.waiting_for(held.holder.holder.to_string());
                    } else {
                        debug!("standby: {held}");
                    }
                }
                Err(err) if !failing => {
                    failing = true;
                    warn!(error = %err, "standby: claiming the engine lease failed; retrying every {:?}", self.timings.renew_every);
                }
                Err(err) => debug!(error = %err, "standby: claiming the engine lease failed again"),
            }
        }
    }
}

/// The claims of a [`Standby`], running.
#[derive(Debug)]
pub struct ClaimLoop {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Option<LeaseGuard>>>,
    settle: Duration,
}

impl ClaimLoop {
    /// Completes when a claim won the lease. Cancel-safe; once it completed, an error.
    pub async fn won(&mut self) -> anyhow::Result<LeaseGuard> {
        let task = self.task.as_mut().context("the standby's claims already ended")?;
        let result = task.await;
        self.task = None;
        result.context("the standby's claim task")?.context("the standby's claims stopped without the engine lease")
    }

    /// Stops claiming: at once between attempts and during the pre-check. A claim already
    /// written gets the settle delay and 10 s more to reach its verdict, and the lease it
    /// won is released; past that it is abandoned (its claim counts until it lapses: a
    /// successor may wait up to a TTL).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let Some(mut task) = self.task.take() else { return };
        match tokio::time::timeout(self.settle + Duration::from_secs(10), &mut task).await {
            Ok(Ok(Some(guard))) => guard.release().await,
            Ok(_) => {}
            Err(_) => {
                task.abort();
                warn!("standby: a claim of the engine lease did not finish in time; abandoned");
            }
        }
    }
}

/// What a service in standby tells its readiness probe and its engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StandbyStatus {
    phase: Arc<Mutex<Phase>>,
    since: Instant,
}

#[derive(Debug)]
enum Phase {
    /// Another engine holds the lease (its description).
    Waiting { holder: String },
    /// This process took it over.
    Engine(LeaseGuard),
}

impl StandbyStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waiting_for(&self, holder: String) {
        let mut phase = self.lock();
        if let Phase::Waiting { .. } = *phase {
            *phase = Phase::Waiting { holder };
        }
    }

    /// This process holds `lease` and its engine runs.
    pub(crate) fn took_over(&self, lease: LeaseGuard) {
        *self.lock() = Phase::Engine(lease);
    }

    /// `Err("standby: lease held by …")` while waiting; `Ok` once taken over.
    pub fn check(&self) -> Result<(), String> {
        match &*self.lock() {
            Phase::Waiting { holder } => Err(format!("standby: lease held by {holder}")),
            Phase::Engine(_) => Ok(()),
        }
    }

    /// The lease, once taken over.
    pub fn lease(&self) -> Option<LeaseGuard> {
        match &*self.lock() {
            Phase::Engine(lease) => Some(lease.clone()),
            Phase::Waiting { .. } => None,
        }
    }

    /// Since when this process has been in standby (or was, until it took over).
    pub fn since(&self) -> Instant {
        self.since
    }
}

/// Nothing is rotated while waiting (as with a lost lease: at once, no tag, no alert).
impl crate::engine::EngineLease for StandbyStatus {
    fn state(&self) -> crate::engine::LeaseState {
        match self.lease() {
            Some(lease) => crate::engine::EngineLease::state(&lease),
            None => crate::engine::LeaseState::Lost,
        }
    }
}
