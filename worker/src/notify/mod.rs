//! Notifications for consumers: rotation outcomes and expiry warnings, published as
//! CloudEvents 1.0 (structured JSON mode, `application/cloudevents+json`) to the sink of
//! `[notifications]` — any HTTPS webhook, or an Event Grid custom topic (key or Entra ID)
//! — so a consumer can refresh (a Power Automate flow, an app restart).
//!
//! - [`CloudEvent`], [`rotation_event`]: which engine outcome becomes which event type
//!   (docs/architecture.md, "Notifications"). Events carry names, versions, ids, the
//!   trigger's kind, the outcome and times: never a value, nor an error text (which quotes
//!   what a target said).
//! - [`Notifier`]: a bounded queue and one delivery task. [`Notifier::publish`] never
//!   waits: a full queue drops the event and counts it, so a slow or hanging sink never
//!   holds a rotation. Deliveries go through [`crate::http_sink`] (timeout, retries on
//!   429/5xx with backoff), as the alerts' do; an Entra ID token is fetched within the
//!   same timeout (`notifications.timeout_ms`), so a credential that never answers cannot
//!   stall the queue.
//! - [`Notifier::flush`], [`Notifier::flush_to`]: waiting for what was queued, bounded —
//!   at shutdown ([`SHUTDOWN_FLUSH`]: `serve`, `functions`, an in-process `rotate`) and
//!   by each Functions invocation for its own rotations' events (a [`Mark`]: the queue is
//!   delivered in order, so it waits for what was queued before it, not after).
//!   [`Notifier::tally`] says what became of every event (sent, failed, dropped, queued).
//! - [`expiry`]: the sweeper's multi-stage expiry warnings, each stage once per version.

pub mod expiry;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use azure_core::credentials::TokenCredential;
use kv_rotator_config::{EventGridAuth, NotificationSink, NotificationsConfig, VaultConfig};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify};
use tracing::warn;

use crate::engine::{trigger_kind, Outcome, RotationReport};
use crate::http_sink::{HttpSink, PostError};
use crate::metrics::Metrics;

/// A rotation wrote a new version: consumers can read it now.
pub const TYPE_SUCCEEDED: &str = "kv-rotator.rotation.succeeded";
/// A rotation failed past its retries.
pub const TYPE_FAILED: &str = "kv-rotator.rotation.failed";
/// A rotation was asked for and put off: no new version yet.
pub const TYPE_DEFERRED: &str = "kv-rotator.rotation.deferred";
/// A latest version nears its `exp` (a configured stage) and no rotation replaced it.
pub const TYPE_EXPIRY_WARNING: &str = "kv-rotator.secret.expiry-warning";

/// How long a process that stops waits for its queued notifications, once its rotations
/// ended (`serve`, `functions`, an in-process `kv-rotator rotate`); the rest are lost.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// The media type of one structured-mode CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json; charset=utf-8";

/// The scope of an Entra ID token for Event Grid's data plane.
pub const EVENT_GRID_SCOPE: &str = "https://eventgrid.azure.net/.default";

/// One CloudEvent 1.0.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    /// `type`: one of the `TYPE_*` constants.
    pub event_type: &'static str,
    /// `subject`: the secret's name.
    pub subject: String,
    /// The vault, for `source`.
    pub vault: String,
    /// `data`.
    pub data: Value,
    /// `time`.
    pub time: OffsetDateTime,
}

impl CloudEvent {
    /// The event's `source`: `/kv-rotator/vaults/<vault>`.
    pub fn source(&self) -> String {
        format!("/kv-rotator/vaults/{}", self.vault)
    }

    /// The structured-mode JSON document, with a fresh `id`.
    pub fn to_json(&self) -> Value {
        json!({
            "specversion": "1.0",
            "id": uuid::Uuid::new_v4().to_string(),
            "type": self.event_type,
            "source": self.source(),
            "subject": self.subject,
            "time": rfc3339(self.time),
            "datacontenttype": "application/json",
            "data": self.data,
        })
    }

    /// The metrics label of its type: `succeeded`, `failed`, `deferred`, `expiry_warning`.
    fn label(&self) -> &'static str {
        match self.event_type {
            TYPE_SUCCEEDED => "succeeded",
            TYPE_FAILED => "failed",
            TYPE_DEFERRED => "deferred",
            _ => "expiry_warning",
        }
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// The event a finished request publishes, if any: `Rotated` is succeeded, `Failed`
/// failed, `TooSoon` and `OutsideWindow` deferred (a rotation was asked for and
/// `min_rotation_interval_secs` or the rotation window put it off; `deferredBy` says
/// which, once per version). The rest tell consumers nothing new: `AlreadyRotated` and `Stale` (the
/// version that rotation wrote was announced then), `NotDue` (nothing asked a rotation
/// that was owed), `Retired` (no new version), `NotManaged`, `NotFound`, `OtherVault`.
pub fn rotation_event(report: &RotationReport) -> Option<CloudEvent> {
    let request = &report.request;
    let now = OffsetDateTime::now_utc();
    let mut data = json!({
        "vault": request.vault_name,
        "secret": request.secret_name,
        "rotationId": report.rotation_id,
        "trigger": trigger_kind(&request.trigger),
        "outcome": report.outcome.kind(),
        "time": rfc3339(now),
    });
    let event_type = match &report.outcome {
        Outcome::Rotated { old_version, new_version, expires } => {
            data["version"] = json!(new_version);
            data["previousVersion"] = json!(old_version);
            data["expires"] = json!(rfc3339(*expires));
            TYPE_SUCCEEDED
        }
        Outcome::Failed { attempts, unfinished_journal, .. } => {
            data["version"] = json!(request.version);
            data["attempts"] = json!(attempts);
            // The target may already use a password only the journal record holds:
            // consumers of the latest version are refused until the sweeper finishes it.
            data["targetChanged"] = json!(unfinished_journal.is_some());
            TYPE_FAILED
        }
        Outcome::TooSoon { version, allowed_at } => {
            data["version"] = json!(version);
            data["retryAfter"] = json!(rfc3339(*allowed_at));
            data["deferredBy"] = json!("min-rotation-interval");
            TYPE_DEFERRED
        }
        Outcome::OutsideWindow { version, opens_at } => {
            data["version"] = json!(version);
            data["retryAfter"] = json!(rfc3339(*opens_at));
            data["deferredBy"] = json!("rotation-window");
            TYPE_DEFERRED
        }
        _ => return None,
    };
    Some(CloudEvent {
        event_type,
        subject: request.secret_name.clone(),
        vault: request.vault_name.clone(),
        data,
        time: now,
    })
}

/// How deliveries authenticate.
#[derive(Clone)]
enum Auth {
    /// Nothing but what the URL carries (a webhook).
    None,
    /// An Event Grid topic key, as `aeg-sas-key`.
    Key(SecretString),
    /// A bearer token of this credential for [`EVENT_GRID_SCOPE`].
    EntraId(Arc<dyn TokenCredential>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Key(_) => "Key(..)",
            Auth::EntraId(_) => "EntraId(..)",
        })
    }
}

/// Where events go and how, read from `[notifications]` before the service starts (so
/// a missing key stops it with the key's name); [`Sink::start`] starts delivering.
#[derive(Debug, Clone)]
pub struct Sink {
    http: HttpSink,
    auth: Auth,
    /// How long an Entra ID token may take (`notifications.timeout_ms`, as one try).
    token_timeout: Duration,
    queue_capacity: usize,
    /// The expiry warning stages, in days, ascending.
    expiry_stages: Vec<u32>,
}

impl Sink {
    /// The sink of `config`, if one is set: the Event Grid key read from its source, an
    /// Entra ID credential built from `vault.credential` (the identity the worker reads
    /// Key Vault with).
    pub fn from_config(config: &NotificationsConfig, vault: &VaultConfig) -> anyhow::Result<Option<Sink>> {
        let (url, auth) = match &config.sink {
            None => return Ok(None),
            Some(NotificationSink::Webhook { url }) => {
                (crate::service::sink_url("notifications.sink.url", url)?, Auth::None)
            }
            Some(NotificationSink::EventGrid { topic_endpoint, auth }) => {
                let auth = match auth {
                    EventGridAuth::Key { key } => {
                        Auth::Key(crate::service::read_secret("notifications.sink.auth.key", key)?)
                    }
                    EventGridAuth::EntraId {} => Auth::EntraId(
                        crate::credentials::credential(&vault.credential)
                            .context("notifications.sink.auth (entra-id) uses vault.credential")?,
                    ),
                };
                (SecretString::from(event_grid_url(topic_endpoint)?), auth)
            }
        };
        Ok(Some(Sink::new(url.expose_secret(), auth, config)))
    }

    fn new(url: &str, auth: Auth, config: &NotificationsConfig) -> Sink {
        let timeout = Duration::from_millis(config.timeout_ms);
        let http = HttpSink::new(url, timeout).with_attempts(config.max_attempts);
        let mut expiry_stages = config.expiry_warning_days.clone();
        expiry_stages.sort_unstable();
        Sink { http, auth, token_timeout: timeout, queue_capacity: config.queue_capacity.max(1), expiry_stages }
    }

    /// A webhook sink at `url` (tests, tools).
    pub fn webhook(url: &str, config: &NotificationsConfig) -> Sink {
        Sink::new(url, Auth::None, config)
    }

    /// An Event Grid topic sink at `topic_endpoint` with `key` (tests, tools).
    pub fn event_grid_with_key(topic_endpoint: &str, key: SecretString, config: &NotificationsConfig) -> Sink {
        let url = event_grid_url(topic_endpoint).unwrap_or_else(|_| topic_endpoint.to_owned());
        Sink::new(&url, Auth::Key(key), config)
    }

    /// An Event Grid topic sink at `topic_endpoint` authenticated by `credential` (tests, tools).
    pub fn event_grid_with_credential(
        topic_endpoint: &str,
        credential: Arc<dyn TokenCredential>,
        config: &NotificationsConfig,
    ) -> Sink {
        let url = event_grid_url(topic_endpoint).unwrap_or_else(|_| topic_endpoint.to_owned());
        Sink::new(&url, Auth::EntraId(credential), config)
    }

    /// Starts the delivery task; events are counted in `metrics`.
    pub fn start(self, metrics: Arc<Metrics>) -> Notifier {
        let (queue, events) = mpsc::channel(self.queue_capacity);
        let progress = Arc::new(Progress::default());
        let expiry_stages = self.expiry_stages.clone();
        tokio::spawn(deliver(self, events, metrics.clone(), progress.clone()));
        Notifier { queue, metrics, progress, deferred_sent: Arc::default(), expiry_stages }
    }

    /// Sends one event: the auth header, then the POST with its retries.
    async fn send(&self, event: &CloudEvent) -> Result<(), SendError> {
        let mut headers = HeaderMap::new();
        match &self.auth {
            Auth::None => {}
            Auth::Key(key) => {
                let mut value = HeaderValue::from_str(key.expose_secret()).map_err(|_| SendError::KeyHeader)?;
                value.set_sensitive(true);
                headers.insert("aeg-sas-key", value);
            }
            Auth::EntraId(credential) => {
                let token = tokio::time::timeout(self.token_timeout, credential.get_token(&[EVENT_GRID_SCOPE], None))
                    .await
                    .map_err(|_| SendError::TokenTimeout(self.token_timeout))?
                    .map_err(SendError::Token)?;
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.token.secret()))
                    .map_err(|_| SendError::TokenHeader)?;
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
        }
        let body = event.to_json().to_string();
        Ok(self.http.post("notifications", CLOUDEVENTS_JSON, headers, body.as_bytes()).await?)
    }
}

/// Why one event was not delivered (logged; the event is counted as failed).
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("notifications.sink.auth.key is not a valid header value")]
    KeyHeader,
    #[error("no Entra ID token for Event Grid: {0}")]
    Token(azure_core::Error),
    #[error("no Entra ID token for Event Grid within notifications.timeout_ms ({} ms)", .0.as_millis())]
    TokenTimeout(Duration),
    #[error("the Entra ID token is not a valid header value")]
    TokenHeader,
    #[error(transparent)]
    Post(#[from] PostError),
}

/// The topic endpoint with Event Grid's `api-version` (added when the URL has none).
fn event_grid_url(topic_endpoint: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(topic_endpoint).context("notifications.sink.topic_endpoint")?;
    if !url.query_pairs().any(|(k, _)| k == "api-version") {
        url.query_pairs_mut().append_pair("api-version", "2018-01-01");
    }
    Ok(url.into())
}

/// The publishing end of the notification queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    queue: mpsc::Sender<CloudEvent>,
    metrics: Arc<Metrics>,
    progress: Arc<Progress>,
    /// (secret, version, reason) a deferred event went out for: a storm of triggers
    /// announces each version's deferral once per reason (minimum interval, window).
    deferred_sent: Arc<Mutex<HashSet<(String, String, String)>>>,
    expiry_stages: Vec<u32>,
}

/// Deferrals remembered before the memory starts over (one event may then repeat).
const DEFERRALS_REMEMBERED: usize = 10_000;

impl Notifier {
    /// Queues `event` without waiting; a full queue drops it (counted and logged).
    pub fn publish(&self, event: CloudEvent) {
        let label = event.label();
        // Held across the send, so acceptances are counted in the queue's order.
        let mut accepted = self.progress.accepted.lock().unwrap_or_else(|p| p.into_inner());
        if self.queue.try_send(event).is_ok() {
            *accepted += 1;
            return;
        }
        drop(accepted);
        self.progress.dropped.fetch_add(1, Ordering::SeqCst);
        self.metrics.inc("kv_rotator_notifications_total", &[("event", label), ("result", "dropped")]);
        warn!(event = label, "notification queue full (or closed): event dropped");
    }

    /// Publishes the event of a finished request ([`rotation_event`]), if it has one.
    pub fn rotation_finished(&self, report: &RotationReport) {
        let Some(event) = rotation_event(report) else { return };
        if event.event_type == TYPE_DEFERRED {
            let key = (
                report.request.secret_name.to_ascii_lowercase(),
                event.data["version"].to_string(),
                event.data["deferredBy"].to_string(),
            );
            let mut sent = self.deferred_sent.lock().expect("deferral memory poisoned");
            if sent.len() >= DEFERRALS_REMEMBERED {
                sent.clear();
            }
            if !sent.insert(key) {
                return;
            }
        }
        self.publish(event);
    }

    /// The expiry warning stages, in days, ascending.
    pub fn expiry_stages(&self) -> &[u32] {
        &self.expiry_stages
    }

    /// Where the queue stands now: [`Notifier::flush_to`] waits for the events published
    /// before this, not for later ones.
    pub fn mark(&self) -> Mark {
        Mark(*self.progress.accepted.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until every event published before `mark` was delivered (or given up), at
    /// most `within`; how many of them are still queued or being delivered then.
    pub async fn flush_to(&self, mark: Mark, within: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + within;
        let left = || mark.0.saturating_sub(self.progress.finished.load(Ordering::SeqCst));
        loop {
            // Made before the check: a delivery that ends in between still wakes it.
            let advanced = self.progress.advanced.notified();
            if left() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                return left();
            }
        }
    }

    /// Waits until every event queued now was delivered (or given up), at most `within`;
    /// whether none is left. For shutdown, after the engine drained.
    pub async fn flush(&self, within: Duration) -> bool {
        self.flush_to(self.mark(), within).await == 0
    }

    /// What became of the events published so far.
    pub fn tally(&self) -> Tally {
        let accepted = *self.progress.accepted.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = self.progress.dropped.load(Ordering::SeqCst);
        let finished = self.progress.finished.load(Ordering::SeqCst).min(accepted);
        let failed = self.progress.failed.load(Ordering::SeqCst).min(finished);
        Tally { published: accepted + dropped, sent: finished - failed, failed, dropped, queued: accepted - finished }
    }
}

/// A point in the notification queue ([`Notifier::mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(u64);

/// What became of the events a [`Notifier`] was given ([`Notifier::tally`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// Events published.
    pub published: u64,
    /// Delivered: the sink answered 2xx.
    pub sent: u64,
    /// Given up after `notifications.max_attempts` tries (or no token, or no valid header).
    pub failed: u64,
    /// Dropped at once: the queue was full.
    pub dropped: u64,
    /// Still queued or being delivered.
    pub queued: u64,
}

impl Tally {
    /// Events not delivered (yet, for the queued ones).
    pub fn undelivered(&self) -> u64 {
        self.failed + self.dropped + self.queued
    }
}

/// Events accepted into the queue and finished by the delivery task. The queue is FIFO
/// with one consumer, so the n-th event accepted is the n-th finished: a [`Mark`] is a
/// count of accepted events, reached when as many have finished.
#[derive(Debug, Default)]
struct Progress {
    /// Counted under the lock, in the queue's order.
    accepted: Mutex<u64>,
    finished: AtomicU64,
    /// Of the finished, those given up.
    failed: AtomicU64,
    /// Never accepted: the queue was full.
    dropped: AtomicU64,
    /// Woken as each event finishes.
    advanced: Notify,
}

/// The delivery task: one event at a time, in order, until every sender is gone.
async fn deliver(sink: Sink, mut events: mpsc::Receiver<CloudEvent>, metrics: Arc<Metrics>, progress: Arc<Progress>) {
    while let Some(event) = events.recv().await {
        let label = event.label();
        let result = match sink.send(&event).await {
            Ok(()) => "sent",
            Err(error) => {
                warn!(event = label, secret = %event.subject, %error, "notification not delivered");
                progress.failed.fetch_add(1, Ordering::SeqCst);
                "failed"
            }
        };
        metrics.inc("kv_rotator_notifications_total", &[("event", label), ("result", result)]);
        progress.finished.fetch_add(1, Ordering::SeqCst);
        progress.advanced.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use azure_core::credentials::{AccessToken, TokenRequestOptions};

    use super::*;

    /// An Entra ID credential whose token request never completes (an endpoint that
    /// accepts the connection and never answers).
    #[derive(Debug)]
    struct NeverAnswers;

    #[async_trait::async_trait]
    impl TokenCredential for NeverAnswers {
        async fn get_token(&self, _: &[&str], _: Option<TokenRequestOptions<'_>>) -> azure_core::Result<AccessToken> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_token_that_never_comes_fails_the_delivery_within_the_notifications_timeout() {
        let config = NotificationsConfig { timeout_ms: 50, max_attempts: 1, ..Default::default() };
        // Nothing is posted: the token comes first (the port is never reached).
        let sink = Sink::event_grid_with_credential("https://127.0.0.1:9/api/events", Arc::new(NeverAnswers), &config);
        let event = CloudEvent {
            event_type: TYPE_SUCCEEDED,
            subject: "db-password".into(),
            vault: "sample-kv".into(),
            data: json!({}),
            time: OffsetDateTime::now_utc(),
        };
        let error = sink.send(&event).await.unwrap_err();
        assert!(matches!(error, SendError::TokenTimeout(limit) if limit == Duration::from_millis(50)), "{error:?}");
        assert_eq!(error.to_string(), "no Entra ID token for Event Grid within notifications.timeout_ms (50 ms)");
    }
}
