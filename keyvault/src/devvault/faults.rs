//! Throttling and fault injection: what makes the dev vault fail the way the service does.
//!
//! - [`RateLimit`]: the service's per-vault limit for secrets (2,000 transactions per
//!   10 seconds), enforced over a sliding window. Over it, requests get 429 `Throttled`
//!   with `Retry-After` (seconds until the window has room again).
//! - [`Faults`]: injected on purpose from tests or `kv-rotator dev` flags — added latency,
//!   errors (429/500/503) at a rate per operation, dropped connections, fail-the-Nth-call.
//! - [`DevVaultStats`]: counters, so a test can tell injected failures from real ones.
//!
//! The order per request is: bearer check, api-version, routing, throttle, faults, the
//! operation. Only requests that reach a secrets operation count as transactions.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::errors::ApiError;

/// The service's limit for secrets operations on one vault; the same type paces the
/// production client.
pub use crate::pipeline::RateLimit;

/// The operations of the secrets API, to aim faults at one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// GET /secrets/{name}/{version?}.
    Get,
    /// PUT /secrets/{name}.
    Set,
    /// PATCH /secrets/{name}/{version?}.
    Update,
    /// DELETE /secrets/{name}.
    Delete,
    /// GET /secrets, /secrets/{name}/versions, /deletedsecrets (every page).
    List,
    /// GET /deletedsecrets/{name}, DELETE (purge), POST recover.
    Deleted,
    /// POST backup and restore.
    Backup,
}

/// Why a fault option (`dev --fail`, `--fail-nth`, a rule) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultSyntaxError {
    /// Not an operation name.
    #[error("unknown operation {0:?}: expected get, set, update, delete, list, deleted or backup")]
    Operation(String),
    /// Not a fault name.
    #[error("unknown fault {0:?}: expected 429, 500, 503, drop or drop-after")]
    Fault(String),
    /// A rule without `=RATE`.
    #[error("fault rule {0:?}: expected [OPERATION:]FAULT=RATE")]
    RuleShape(String),
    /// A rate that is not a number from 0 to 1.
    #[error("fault rule {rule:?}: rate {rate:?} is not a number between 0 and 1")]
    Rate {
        /// The rule.
        rule: String,
        /// Its rate as written.
        rate: String,
    },
    /// A fail-the-Nth-call whose N is not a whole number from 1.
    #[error("fail-the-Nth-call {0:?}: N must be a whole number from 1")]
    FailNth(String),
}

impl FromStr for Operation {
    type Err = FaultSyntaxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "get" => Operation::Get,
            "set" => Operation::Set,
            "update" => Operation::Update,
            "delete" => Operation::Delete,
            "list" => Operation::List,
            "deleted" => Operation::Deleted,
            "backup" => Operation::Backup,
            other => return Err(FaultSyntaxError::Operation(other.to_owned())),
        })
    }
}

/// What an injected failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Answer with this status (429, 500 or 503) and the service's error body.
    Status(u16),
    /// Close the connection without an answer.
    Drop,
    /// Carry the request out, then close the connection without an answer: the client
    /// cannot know whether its write happened (a lost response).
    DropAfter,
}

impl FromStr for Injected {
    type Err = FaultSyntaxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "drop" => Ok(Injected::Drop),
            "drop-after" => Ok(Injected::DropAfter),
            "429" => Ok(Injected::Status(429)),
            "500" => Ok(Injected::Status(500)),
            "503" => Ok(Injected::Status(503)),
            other => Err(FaultSyntaxError::Fault(other.to_owned())),
        }
    }
}

/// One injected-error rule: `rate` of the requests to `operation` (every operation when
/// `None`) fail with `fault`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorRule {
    /// Aimed at one operation, or at all.
    pub operation: Option<Operation>,
    /// Share of the requests, 0.0 to 1.0.
    pub rate: f64,
    /// What happens to them.
    pub fault: Injected,
}

impl FromStr for ErrorRule {
    type Err = FaultSyntaxError;

    /// `[OPERATION:]FAULT=RATE`, e.g. `503=0.1`, `set:429=0.3`, `drop=0.05`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (target, rate) = s.split_once('=').ok_or_else(|| FaultSyntaxError::RuleShape(s.to_owned()))?;
        let (operation, fault) = match target.split_once(':') {
            Some((op, fault)) => (Some(op.parse()?), fault),
            None => (None, target),
        };
        let refused = || FaultSyntaxError::Rate { rule: s.to_owned(), rate: rate.to_owned() };
        let rate: f64 = rate.parse().map_err(|_| refused())?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(refused());
        }
        Ok(ErrorRule { operation, rate, fault: fault.parse()? })
    }
}

/// Parses fail-the-Nth-call as `N[:FAULT]`, e.g. `5` (a 503) or `3:drop`.
pub fn parse_fail_nth(s: &str) -> Result<(u64, Injected), FaultSyntaxError> {
    let (n, fault) = match s.split_once(':') {
        Some((n, fault)) => (n, fault.parse()?),
        None => (s, Injected::Status(503)),
    };
    match n.parse::<u64>() {
        Ok(n) if n >= 1 => Ok((n, fault)),
        _ => Err(FaultSyntaxError::FailNth(s.to_owned())),
    }
}

/// The faults to inject. The default injects none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Added before every answer.
    pub latency: Duration,
    /// Error rules; one draw per request, so rates of rules that apply add up.
    pub errors: Vec<ErrorRule>,
    /// The Nth request (counting from 1 when these faults were set) fails this way.
    pub fail_nth: Option<(u64, Injected)>,
}

/// Why a set of [`Faults`] cannot be injected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidFaults {
    /// A rate outside 0..=1.
    #[error("fault rate {0} is not between 0 and 1")]
    RateOutOfRange(f64),
    /// The rates that apply to one operation add up to more than every call.
    #[error("fault rates for {operation:?} add up to {total}, over 1")]
    RatesOverOne {
        /// The operation.
        operation: Operation,
        /// Their sum.
        total: f64,
    },
    /// `fail_nth` of 0.
    #[error("fail-the-Nth-call counts from 1")]
    FailNthZero,
}

impl Faults {
    /// Checks that every rate is in 0..=1 and that the rates of any one operation add
    /// up to at most 1.
    pub fn validate(&self) -> Result<(), InvalidFaults> {
        for rule in &self.errors {
            if !(0.0..=1.0).contains(&rule.rate) {
                return Err(InvalidFaults::RateOutOfRange(rule.rate));
            }
        }
        let ops = [
            Operation::Get,
            Operation::Set,
            Operation::Update,
            Operation::Delete,
            Operation::List,
            Operation::Deleted,
            Operation::Backup,
        ];
        for op in ops {
            let total: f64 = self.errors.iter().filter(|r| r.operation.is_none_or(|o| o == op)).map(|r| r.rate).sum();
            if total > 1.0 + 1e-9 {
                return Err(InvalidFaults::RatesOverOne { operation: op, total });
            }
        }
        match self.fail_nth {
            Some((0, _)) => Err(InvalidFaults::FailNthZero),
            _ => Ok(()),
        }
    }
}

/// Counters of a dev vault since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DevVaultStats {
    /// Requests that reached a secrets operation (the service's transactions).
    pub requests: u64,
    /// Answered 429 by the rate limit.
    pub throttled: u64,
    /// Answered with an injected 429/500/503.
    pub injected_errors: u64,
    /// Connections dropped on purpose.
    pub dropped: u64,
}

/// What the handler should do with a request before running it.
#[derive(Debug)]
pub(crate) enum Verdict {
    Serve,
    Fail(ApiError, Option<u64>),
    Drop,
    /// Serve, then drop the answer.
    DropAfter,
}

/// The throttle and the faults, shared by all connections.
#[derive(Debug)]
pub(crate) struct Gate {
    limit: Option<RateLimit>,
    /// Times of the accepted transactions in the current window, oldest first.
    window: Mutex<VecDeque<Instant>>,
    faults: Mutex<(Faults, u64)>,
    requests: AtomicU64,
    throttled: AtomicU64,
    injected: AtomicU64,
    dropped: AtomicU64,
}

impl Gate {
    pub fn new(limit: Option<RateLimit>, faults: Faults) -> Self {
        Self {
            limit,
            window: Mutex::new(VecDeque::new()),
            faults: Mutex::new((faults, 0)),
            requests: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = (faults, 0);
    }

    pub fn stats(&self) -> DevVaultStats {
        DevVaultStats {
            requests: self.requests.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            injected_errors: self.injected.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// Decides about one request to `op`; the latency to add comes back separately so it
    /// is slept outside the locks.
    pub fn admit(&self, op: Operation) -> (Verdict, Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let (faults_verdict, latency) = self.draw_fault(op);
        if let Some(retry_after) = self.throttle() {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return (Verdict::Fail(ApiError::throttled(), Some(retry_after)), latency);
        }
        let verdict = match faults_verdict {
            None => Verdict::Serve,
            Some(Injected::Drop) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Verdict::Drop
            }
            Some(Injected::DropAfter) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Verdict::DropAfter
            }
            Some(Injected::Status(status)) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                let error = match status {
                    429 => ApiError::throttled(),
                    500 => ApiError::internal_error(),
                    _ => ApiError::service_unavailable(),
                };
                // Best guess: the service's Retry-After for these is not public; one second.
                let retry_after = matches!(status, 429 | 503).then_some(1);
                Verdict::Fail(error, retry_after)
            }
        };
        (verdict, latency)
    }

    fn draw_fault(&self, op: Operation) -> (Option<Injected>, Duration) {
        let mut guard = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let (faults, count) = &mut *guard;
        *count += 1;
        if let Some((n, fault)) = faults.fail_nth {
            if *count == n {
                return (Some(fault), faults.latency);
            }
        }
        let draw: f64 = rand::random();
        let mut cumulative = 0.0;
        for rule in faults.errors.iter().filter(|r| r.operation.is_none_or(|o| o == op)) {
            cumulative += rule.rate;
            if draw < cumulative {
                return (Some(rule.fault), faults.latency);
            }
        }
        (None, faults.latency)
    }

    /// `Some(seconds to wait)` when the window is full; otherwise records the transaction.
    fn throttle(&self) -> Option<u64> {
        let limit = self.limit?;
        let now = Instant::now();
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        while window.front().is_some_and(|t| now.duration_since(*t) >= limit.per) {
            window.pop_front();
        }
        if window.len() < limit.transactions as usize {
            window.push_back(now);
            return None;
        }
        let free_at = window.front().map(|t| *t + limit.per).unwrap_or(now);
        // Whole seconds, rounded up, at least 1: what `Retry-After` can say.
        Some(free_at.saturating_duration_since(now).as_secs_f64().ceil().max(1.0) as u64)
    }
}

impl ApiError {
    /// 429 over the rate limit. Body verbatim from a public capture of the service
    /// (vcsjones/AzureSignTool#219); that capture shows no `Retry-After`, which the
    /// dev vault adds anyway, as the issue and the throttling guidance describe.
    pub fn throttled() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Throttled",
            "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached",
        )
    }

    /// Injected 500. Best guess for code and message.
    pub fn internal_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "Internal server error (injected by the dev vault).",
        )
    }

    /// Injected 503. Best guess for code and message.
    pub fn service_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The service is unavailable (injected by the dev vault).",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_validate() {
        let rule: ErrorRule = "set:429=0.3".parse().unwrap();
        assert_eq!(rule, ErrorRule { operation: Some(Operation::Set), rate: 0.3, fault: Injected::Status(429) });
        assert_eq!("drop=0.1".parse::<ErrorRule>().unwrap().fault, Injected::Drop);
        assert!("404=0.1".parse::<ErrorRule>().unwrap_err().to_string().contains("429, 500, 503, drop or drop-after"));
        assert_eq!("set:drop-after=1".parse::<ErrorRule>().unwrap().fault, Injected::DropAfter);
        assert!("503=1.5".parse::<ErrorRule>().is_err());
        assert!("fetch:503=0.1".parse::<ErrorRule>().unwrap_err().to_string().contains("unknown operation"));
        let too_much =
            Faults { errors: vec!["503=0.6".parse().unwrap(), "get:429=0.6".parse().unwrap()], ..Default::default() };
        let e = too_much.validate().unwrap_err();
        assert!(matches!(e, InvalidFaults::RatesOverOne { operation: Operation::Get, .. }), "{e}");
    }

    #[test]
    fn fail_nth_parses() {
        assert_eq!(parse_fail_nth("5"), Ok((5, Injected::Status(503))));
        assert_eq!(parse_fail_nth("3:drop"), Ok((3, Injected::Drop)));
        assert!(parse_fail_nth("0").unwrap_err().to_string().contains("from 1"));
        assert!(parse_fail_nth("x:429").is_err());
    }

    #[test]
    fn the_window_slides() {
        let gate = Gate::new(Some(RateLimit { transactions: 3, per: Duration::from_millis(200) }), Faults::default());
        for _ in 0..3 {
            assert!(matches!(gate.admit(Operation::Get).0, Verdict::Serve));
        }
        assert!(matches!(gate.admit(Operation::Get).0, Verdict::Fail(ref e, Some(1)) if e.status == 429));
        std::thread::sleep(Duration::from_millis(210));
        assert!(matches!(gate.admit(Operation::Get).0, Verdict::Serve));
        assert_eq!(gate.stats(), DevVaultStats { requests: 5, throttled: 1, ..Default::default() });
    }

    #[test]
    fn the_nth_call_fails_once() {
        let gate = Gate::new(None, Faults { fail_nth: Some((2, Injected::Status(500))), ..Default::default() });
        let verdicts: Vec<bool> = (0..4).map(|_| matches!(gate.admit(Operation::Set).0, Verdict::Serve)).collect();
        assert_eq!(verdicts, [true, false, true, true]);
    }
}
