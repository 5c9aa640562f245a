//! What kv-rotator adds to the SDK's HTTP pipeline: a bounded retry policy and a
//! client-side rate limiter, with counters.
//!
//! What the SDK does by default (typespec_client_core 1.1 `policies/retry`, read from the
//! source): exponential backoff from 200 ms doubling per retry plus 0–255 ms of jitter,
//! each wait at most 30 s, 8 retries, no new retry after 60 s; it retries 408, 429, 500,
//! 502, 503 and 504 and transport errors (`Io`, `Connection`: refused connections, resets,
//! read timeouts), and nothing else (other 4xx, credential errors). For 429 and 503 it
//! waits `max(Retry-After, backoff)` — and that `Retry-After` is *not* capped: an answer
//! saying 3600 makes one call sleep an hour. Hence [`BoundedRetry`]: the same statuses
//! and errors (a custom policy plugs into the SDK's own retry loop, so no second retry
//! layer such as backon is stacked on it), jittered exponential backoff, and every wait,
//! `Retry-After` included, capped at [`RetrySettings::max_delay`].
//!
//! [`RateLimitPolicy`] runs per try (after the bearer policy, so challenge round trips
//! and retries are counted too, as the service counts them) and waits for a permit from
//! a GCRA limiter (`governor`) shared by every clone of the store, so concurrent
//! rotations on one vault stay under its limit together.
//!
//! [`NoBlindWriteRetry`] keeps the SDK from re-sending a write whose answer was lost: a
//! Key Vault PUT is not idempotent (each one makes a new version), so a retried PUT whose
//! first try was carried out writes the value twice. When the connection fails after a
//! PUT or POST was sent, the error becomes [`UnknownWriteOutcome`] (transient for the
//! engine, which re-reads the vault before trying again); connection set-up failures,
//! where nothing was sent, are still retried here.
//!
//! [`ChallengeGate`] works around a race in the SDK's bearer policy: every 401 clears the
//! cached token, so when many calls start at once on a fresh client, the 401s of the
//! calls sent before the challenge was answered clear the token another call has just
//! fetched, and that call fails with a `Credential` error ("error while fetching the
//! access token"), which is not retried. The gate lets one call through alone until a
//! call has completed without a 401; then the scope and token are cached and calls run
//! concurrently.
//!
//! [`ClientObserver`] is told of every try's answer and every retry as they happen: the
//! worker counts throttling and retries in its metrics, and judges from them whether the
//! vault is reachable, without a dependency of this crate on the worker. The store's
//! credential is wrapped in `ObservedCredential`, so a token the credential cannot get
//! (a try that never reaches the transport) is told too, as [`TryOutcome::NoToken`].

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::headers::{RETRY_AFTER, RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS};
use azure_core::http::policies::{Policy, PolicyResult, RetryHeaders, RetryPolicy};
use azure_core::http::{Context, Method, Request, StatusCode};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Retry bounds for one operation (one SDK call; each page of a listing is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySettings {
    /// Retries after the first try; 0 turns retrying off.
    pub max_retries: u32,
    /// First backoff; doubles per retry.
    pub initial_delay: Duration,
    /// Cap on any one wait, `Retry-After` included.
    pub max_delay: Duration,
    /// No retry starts once this long has passed since the first try.
    pub max_elapsed: Duration,
}

impl Default for RetrySettings {
    /// 10 retries from 250 ms, waits at most 10 s, nothing new after 60 s. Ten retries
    /// keep an operation alive through a long run of throttling: at 30% failed tries,
    /// exhausting them has odds 0.3^11 ≈ 2e-6.
    fn default() -> Self {
        Self {
            max_retries: 10,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

/// A rate limit of `transactions` per `per`: the service's throttle in the dev vault,
/// and the client's own pacing for all work on one vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Transactions per window: the vault's limit (or this worker's share of it).
    pub transactions: u32,
    /// Window length.
    pub per: Duration,
}

impl Default for RateLimit {
    /// The service's limit for secrets: 2,000 transactions per 10 seconds per vault
    /// ("Azure Key Vault service limits").
    fn default() -> Self {
        Self { transactions: 2_000, per: Duration::from_secs(10) }
    }
}

impl RateLimit {
    /// The GCRA quota: a burst of 10% of the limit, then 80% of it sustained, so any
    /// window holds at most 90% of the limit — headroom for timing skew between client
    /// and service, and for other clients of the vault. (Below 10 transactions per
    /// window the burst rounds up to one and the bound is looser.)
    fn quota(&self) -> Option<Quota> {
        let burst = NonZeroU32::new((self.transactions / 10).max(1))?;
        let sustained = (u64::from(self.transactions) * 8 / 10).max(1);
        let period = self.per.checked_div(u32::try_from(sustained).ok()?)?;
        Some(Quota::with_period(period)?.allow_burst(burst))
    }
}

/// Everything configurable about the client beyond where and who.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// Retry bounds.
    pub retry: RetrySettings,
    /// Client-side pacing; `None` sends as fast as the work comes.
    pub rate_limit: Option<RateLimit>,
    /// Connection set-up timeout per try.
    pub connect_timeout: Duration,
    /// Longest silence while reading an answer before the try fails (and is retried).
    pub read_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            retry: RetrySettings::default(),
            rate_limit: Some(RateLimit::default()),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// Why [`ClientSettings`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidClientSettings {
    /// A rate limit under which no request could ever be sent.
    #[error("rate limit {transactions} per {per:?} admits nothing")]
    RateLimitAdmitsNothing {
        /// Its transactions.
        transactions: u32,
        /// Its period.
        per: Duration,
    },
    /// The first retry would wait longer than any retry may.
    #[error("retry initial delay is longer than the maximum delay")]
    InitialDelayOverMaximum,
    /// A connect or read timeout of zero.
    #[error("timeouts must be longer than zero")]
    ZeroTimeout,
}

impl ClientSettings {
    /// Checks the values make sense together; errors name the setting.
    pub fn validate(&self) -> Result<(), InvalidClientSettings> {
        if let Some(limit) = &self.rate_limit {
            if limit.transactions == 0 || limit.per.is_zero() || limit.quota().is_none() {
                return Err(InvalidClientSettings::RateLimitAdmitsNothing {
                    transactions: limit.transactions,
                    per: limit.per,
                });
            }
        }
        if self.retry.initial_delay > self.retry.max_delay {
            return Err(InvalidClientSettings::InitialDelayOverMaximum);
        }
        if self.connect_timeout.is_zero() || self.read_timeout.is_zero() {
            return Err(InvalidClientSettings::ZeroTimeout);
        }
        Ok(())
    }
}

/// Counters of one store (all its clones) since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// HTTP requests sent (tries), challenge round trips and retries included.
    pub tries: u64,
    /// Retries started by the retry policy.
    pub retries: u64,
    /// Tries that had to wait for the rate limiter.
    pub paced: u64,
}

/// What one try of a call came to, for a [`ClientObserver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    /// The vault answered with this HTTP status (a 401 challenge and a 404 included).
    Answered(u16),
    /// No answer: the connection failed, was reset or timed out.
    NoAnswer,
    /// Never sent: the credential got no token (not logged in, the managed identity
    /// endpoint down, a client secret refused), as the store's credential reports it.
    NoToken,
}

impl TryOutcome {
    /// Whether the vault answered and was neither throttling nor failing (not 408, not 429,
    /// not 5xx: what the retry policy retries). A 4xx such as 404 or the 401 challenge is
    /// the vault working.
    pub fn is_success(self) -> bool {
        matches!(self, TryOutcome::Answered(status) if status != 408 && status != 429 && status < 500)
    }
}

/// Told of the client's HTTP traffic as it happens (the worker's metrics and readiness).
/// Calls come from the request path: implementations must be quick and never block.
pub trait ClientObserver: Send + Sync + std::fmt::Debug {
    /// A try ended (each retry is a try of its own).
    fn try_finished(&self, outcome: TryOutcome);
    /// The retry policy is about to wait and try again.
    fn retrying(&self);
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    tries: AtomicU64,
    retries: AtomicU64,
    paced: AtomicU64,
    observer: std::sync::RwLock<Option<Arc<dyn ClientObserver>>>,
}

impl Counters {
    /// From now on, tells `observer` (in place of any earlier one).
    pub fn set_observer(&self, observer: Arc<dyn ClientObserver>) {
        *self.observer.write().unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    fn observer(&self) -> Option<Arc<dyn ClientObserver>> {
        self.observer.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn snapshot(&self) -> ClientStats {
        ClientStats {
            tries: self.tries.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            paced: self.paced.load(Ordering::Relaxed),
        }
    }
}

/// The SDK retry loop's policy, bounded as described in the module docs.
#[derive(Debug)]
pub(crate) struct BoundedRetry {
    settings: RetrySettings,
    headers: RetryHeaders,
    counters: Arc<Counters>,
}

/// What the SDK retries by default, and we too: timeouts, throttling, server errors.
const RETRY_STATUSES: &[StatusCode] = &[
    StatusCode::RequestTimeout,
    StatusCode::TooManyRequests,
    StatusCode::InternalServerError,
    StatusCode::BadGateway,
    StatusCode::ServiceUnavailable,
    StatusCode::GatewayTimeout,
];

impl BoundedRetry {
    pub fn new(settings: RetrySettings, counters: Arc<Counters>) -> Self {
        let headers = RetryHeaders { retry_headers: vec![X_MS_RETRY_AFTER_MS, RETRY_AFTER_MS, RETRY_AFTER] };
        Self { settings, headers, counters }
    }

    /// Exponential backoff with equal jitter: half the step fixed, half random.
    fn backoff(&self, retry_count: u32) -> Duration {
        let step = self.settings.initial_delay.saturating_mul(2u32.saturating_pow(retry_count.saturating_sub(1)));
        let step = step.min(self.settings.max_delay);
        step / 2 + step.mul_f64(rand::random::<f64>() / 2.0)
    }
}

#[async_trait]
impl RetryPolicy for BoundedRetry {
    fn is_expired(&self, since_start: azure_core::time::Duration, retry_count: u32) -> bool {
        let max_elapsed = azure_core::time::Duration::try_from(self.settings.max_elapsed).unwrap_or(since_start);
        retry_count >= self.settings.max_retries || since_start >= max_elapsed
    }

    fn retry_headers(&self) -> Option<&RetryHeaders> {
        Some(&self.headers)
    }

    fn retry_status_codes(&self) -> &[StatusCode] {
        RETRY_STATUSES
    }

    fn sleep_duration(&self, retry_count: u32) -> azure_core::time::Duration {
        azure_core::time::Duration::try_from(self.backoff(retry_count)).unwrap_or_default()
    }

    async fn wait(&self, retry_count: u32, retry_after: Option<azure_core::time::Duration>) {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        if let Some(observer) = self.counters.observer() {
            observer.retrying();
        }
        let backoff = self.backoff(retry_count);
        let asked = retry_after.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default();
        tokio::time::sleep(backoff.max(asked).min(self.settings.max_delay)).await;
    }
}

/// The connection failed after a write was sent: it may or may not have been carried out.
#[derive(Debug, thiserror::Error)]
#[error("the connection failed after the {method} was sent, so it may or may not have been carried out: {cause}")]
pub struct UnknownWriteOutcome {
    method: String,
    cause: String,
}

/// Per-try policy: a write that failed after being sent is not retried by the SDK.
#[derive(Debug, Default)]
pub(crate) struct NoBlindWriteRetry;

#[async_trait]
impl Policy for NoBlindWriteRetry {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        let result = next[0].send(ctx, request, &next[1..]).await;
        match result {
            // `Connection` means nothing was sent; `Io` covers resets and read timeouts after.
            Err(error) if *error.kind() == ErrorKind::Io && matches!(request.method(), Method::Put | Method::Post) => {
                let unknown = UnknownWriteOutcome { method: request.method().to_string(), cause: error.to_string() };
                // Not a transport error kind, so the SDK's retry loop hands it straight back.
                Err(azure_core::Error::new(ErrorKind::Other, unknown))
            }
            other => other,
        }
    }
}

/// Per-call policy: one call at a time until the challenge has been answered.
#[derive(Debug, Default)]
pub(crate) struct ChallengeGate {
    open: std::sync::atomic::AtomicBool,
    first: tokio::sync::Mutex<()>,
}

#[async_trait]
impl Policy for ChallengeGate {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        if self.open.load(Ordering::Acquire) {
            return next[0].send(ctx, request, &next[1..]).await;
        }
        let _alone = self.first.lock().await;
        let result = next[0].send(ctx, request, &next[1..]).await;
        if result.as_ref().is_ok_and(|response| response.status() != StatusCode::Unauthorized) {
            self.open.store(true, Ordering::Release);
        }
        result
    }
}

/// The store's credential, telling the observer of each token it could not get: those
/// calls never reach the transport, so the per-try policy does not see them, and a vault
/// that no call can be made to must not look as if it merely had nothing to answer. A
/// token it gets is not news: the try it authorizes reports how the vault answered.
#[derive(Debug)]
pub(crate) struct ObservedCredential {
    inner: Arc<dyn TokenCredential>,
    counters: Arc<Counters>,
}

impl ObservedCredential {
    pub fn new(inner: Arc<dyn TokenCredential>, counters: Arc<Counters>) -> Self {
        Self { inner, counters }
    }
}

#[async_trait]
impl TokenCredential for ObservedCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let token = self.inner.get_token(scopes, options).await;
        if token.is_err() {
            if let Some(observer) = self.counters.observer() {
                observer.try_finished(TryOutcome::NoToken);
            }
        }
        token
    }
}

/// Per-try policy: waits for a permit, counts the try, sends it on, and tells the
/// observer how it ended.
#[derive(Debug)]
pub(crate) struct RateLimitPolicy {
    limiter: Option<DefaultDirectRateLimiter>,
    counters: Arc<Counters>,
}

impl RateLimitPolicy {
    pub fn new(limit: Option<RateLimit>, counters: Arc<Counters>) -> Self {
        let limiter = limit.and_then(|l| l.quota()).map(RateLimiter::direct);
        Self { limiter, counters }
    }
}

#[async_trait]
impl Policy for RateLimitPolicy {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        if let Some(limiter) = &self.limiter {
            if limiter.check().is_err() {
                self.counters.paced.fetch_add(1, Ordering::Relaxed);
                limiter.until_ready().await;
            }
        }
        self.counters.tries.fetch_add(1, Ordering::Relaxed);
        let result = next[0].send(ctx, request, &next[1..]).await;
        if let Some(observer) = self.counters.observer() {
            observer.try_finished(match &result {
                Ok(response) => TryOutcome::Answered(u16::from(response.status())),
                Err(_) => TryOutcome::NoAnswer,
            });
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let settings = RetrySettings {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..Default::default()
        };
        let policy = BoundedRetry::new(settings, Arc::default());
        for _ in 0..50 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
            let third = policy.backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400), "{third:?}");
            assert!(policy.backoff(30) <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn the_quota_keeps_any_window_under_the_limit() {
        let limit = RateLimit::default();
        let quota = limit.quota().unwrap();
        assert_eq!(quota.burst_size().get(), 200);
        assert_eq!(quota.replenish_interval(), Duration::from_secs(10) / 1600);
        // Burst plus a full window of replenishment: 90% of the limit.
        let most = quota.burst_size().get() as u128 + limit.per.as_nanos() / quota.replenish_interval().as_nanos();
        assert_eq!(most, 1800);
        assert!(RateLimit { transactions: 1, per: Duration::from_secs(1) }.quota().is_some());
        let settings =
            ClientSettings { rate_limit: Some(RateLimit { transactions: 0, ..limit }), ..Default::default() };
        let e = settings.validate().unwrap_err();
        assert!(matches!(e, InvalidClientSettings::RateLimitAdmitsNothing { transactions: 0, .. }), "{e}");
        assert!(e.to_string().contains("admits nothing"), "{e}");
    }
}
