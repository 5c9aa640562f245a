//! How a request is retried: attempts with jittered exponential backoff while the failure
//! is transient, up to `engine.max_attempts`; then, once the target may have the pending
//! password, a slower finishing schedule, since consumers are refused until Key Vault
//! catches up.

use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use kv_rotator_core::RotationRequest;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{error, warn};

use super::error::shown;
use super::{protocol, Engine, RotationError, StepLog};

impl Engine {
    /// Attempts with jittered exponential backoff while the failure is transient, up to
    /// `engine.max_attempts`; then, if the target may have the pending password, the
    /// slower finishing schedule ([`Engine::keep_finishing`]).
    pub(super) async fn attempt_until_done(
        &self,
        request: &RotationRequest,
        steps: &StepLog,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<protocol::Done, RotationError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.settings.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(self.settings.max_backoff_ms))
            .with_max_times(self.settings.max_attempts.saturating_sub(1) as usize)
            .with_jitter();
        let result = (|| {
            steps.next_attempt();
            protocol::attempt(self, request, steps)
        })
        .retry(backoff)
        .when(RotationError::is_transient)
        .notify(|err, delay| {
            let error = shown(err);
            warn!(error = %error, retry_in = ?delay, "rotation attempt failed; retrying")
        })
        .await;
        match (steps.target_touched(), result) {
            (Some(journal), Err(first)) if first.is_transient() => {
                self.keep_finishing(request, steps, &journal, first, permit).await
            }
            (_, result) => result,
        }
    }

    /// After `max_attempts`, once the target may already use the pending password while
    /// the latest version still holds the old one: consumers are broken until the vault
    /// catches up, so waiting for the next sweep is not enough. One attempt every
    /// `engine.finish_retry_interval_secs`, for at most `engine.finish_retry_for_secs`,
    /// while the failure stays transient.
    async fn keep_finishing(
        &self,
        request: &RotationRequest,
        steps: &StepLog,
        journal: &str,
        first: RotationError,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<protocol::Done, RotationError> {
        let interval = Duration::from_secs(self.settings.finish_retry_interval_secs.max(1));
        let deadline = Instant::now() + Duration::from_secs(self.settings.finish_retry_for_secs);
        error!(
            error = %shown(&first), %journal, retry_every = ?interval, for_at_most = ?Duration::from_secs(self.settings.finish_retry_for_secs),
            "the target may already use the new password but Key Vault is not finished: it is only in the journal \
             record, and consumers reading the latest version are refused; still finishing"
        );
        let mut last = Err(first);
        let mut stopping = self.stopping.subscribe();
        // Finishing takes no rotation slot: a stuck target or vault cannot stall the rest,
        // and the attempts are few (one per interval).
        drop(permit.take());
        while Instant::now() + interval <= deadline && !*stopping.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stopping.wait_for(|stop| *stop) => break,
            }
            self.metrics.inc("kv_rotator_finish_retries_total", &[]);
            steps.next_attempt();
            last = protocol::attempt(self, request, steps).await;
            match &last {
                Ok(_) => break,
                Err(err) if err.is_transient() => {
                    let error = shown(err);
                    warn!(error = %error, "finishing attempt failed; retrying")
                }
                Err(_) => break,
            }
        }
        last
    }
}
