//! Whether the vault answers, judged from the calls the service makes anyway (rotations,
//! sweeps, lease renewals), never from a probe of its own: `/readyz` may be asked every
//! few seconds, and a readiness probe must not add load on Key Vault.
//!
//! - [`VaultHealth`]: when the vault last answered well, and since when every try has
//!   failed; [`crate::admin::Readiness`] reads it.
//! - [`VaultObserver`]: the [`ClientObserver`] the service gives its store: each try's
//!   outcome goes to the health — a token the credential could not get counts as a failed
//!   try, since no call reaches the vault then — 429s and retries to the metrics
//!   (`kv_rotator_vault_throttled_total`, `kv_rotator_vault_retries_total`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_rotator_keyvault::pipeline::{ClientObserver, TryOutcome};

use crate::metrics::Metrics;

/// The vault's recent answers. Cheap to clone: every clone is the same record.
#[derive(Debug, Clone, Default)]
pub struct VaultHealth {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// When the first failure since the last success happened; `None`: not failing.
    failing_since: Option<Instant>,
    /// What the latest failure was, for the 503's body.
    last_failure: Option<TryOutcome>,
}

impl VaultHealth {
    /// Records one try's outcome.
    pub fn record(&self, outcome: TryOutcome) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if outcome.is_success() {
            state.failing_since = None;
        } else {
            state.failing_since.get_or_insert_with(Instant::now);
            state.last_failure = Some(outcome);
        }
    }

    /// `Err` with why when every try for at least `threshold` has failed.
    pub fn check(&self, threshold: Duration) -> Result<(), String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(since) = state.failing_since.filter(|since| since.elapsed() >= threshold) else {
            return Ok(());
        };
        let last = match state.last_failure {
            Some(TryOutcome::Answered(429)) => "429 throttled".to_owned(),
            Some(TryOutcome::Answered(status)) => format!("HTTP {status}"),
            // Nothing was sent: the fix is the identity's, not the vault's.
            Some(TryOutcome::NoToken) => {
                "no token: the credential (vault.credential) could not get one, so nothing was sent".to_owned()
            }
            Some(TryOutcome::NoAnswer) | None => "no answer".to_owned(),
        };
        Err(format!(
            "the vault is unreachable: every call for {} s has failed, the last with {last} \
             (not ready after {} s of failures)",
            since.elapsed().as_secs(),
            threshold.as_secs()
        ))
    }
}

/// The service's [`ClientObserver`]: tries to the health, 429s and retries to metrics.
#[derive(Debug, Clone)]
pub struct VaultObserver {
    /// Where each try's outcome goes.
    pub health: VaultHealth,
    /// Where 429s and retries are counted.
    pub metrics: Arc<Metrics>,
}

impl ClientObserver for VaultObserver {
    fn try_finished(&self, outcome: TryOutcome) {
        if outcome == TryOutcome::Answered(429) {
            self.metrics.inc("kv_rotator_vault_throttled_total", &[]);
        }
        self.health.record(outcome);
    }

    fn retrying(&self) {
        self.metrics.inc("kv_rotator_vault_retries_total", &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_past_the_threshold_with_no_success_since_is_unreachable() {
        let health = VaultHealth::default();
        assert_eq!(health.check(Duration::ZERO), Ok(()), "no call yet: nothing known against it");
        health.record(TryOutcome::Answered(401));
        health.record(TryOutcome::Answered(404));
        assert_eq!(health.check(Duration::ZERO), Ok(()), "a challenge and a 404 are the vault answering");
        health.record(TryOutcome::Answered(503));
        let why = health.check(Duration::ZERO).unwrap_err();
        assert!(why.starts_with("the vault is unreachable: every call for 0 s has failed, the last with HTTP 503"));
        assert_eq!(health.check(Duration::from_secs(3600)), Ok(()), "not failing for long enough");
        health.record(TryOutcome::NoAnswer);
        assert!(health.check(Duration::ZERO).unwrap_err().contains("the last with no answer"));
        health.record(TryOutcome::Answered(200));
        assert_eq!(health.check(Duration::ZERO), Ok(()), "one success ends it");
        health.record(TryOutcome::Answered(429));
        assert!(health.check(Duration::ZERO).unwrap_err().contains("the last with 429 throttled"));
        health.record(TryOutcome::NoToken);
        let why = health.check(Duration::ZERO).unwrap_err();
        assert!(why.contains("the last with no token: the credential (vault.credential) could not get one"), "{why}");
    }

    #[test]
    fn the_observer_counts_429s_and_retries() {
        let observer = VaultObserver { health: VaultHealth::default(), metrics: Arc::new(Metrics::default()) };
        observer.try_finished(TryOutcome::Answered(429));
        observer.try_finished(TryOutcome::Answered(503));
        observer.retrying();
        observer.retrying();
        assert_eq!(observer.metrics.counter("kv_rotator_vault_throttled_total", &[]), 1);
        assert_eq!(observer.metrics.counter("kv_rotator_vault_retries_total", &[]), 2);
        assert!(observer.health.check(Duration::ZERO).is_err());
    }
}
