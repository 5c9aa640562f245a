//! The HTTP app: an axum [`Router`] that receives Event Grid deliveries.
//!
//! - [`router`]: `POST /api/eventgrid` (and `POST /` as an alias, for subscriptions
//!   that name the bare host), `OPTIONS` on both for the CloudEvents handshake,
//!   `GET /healthz` (unauthenticated).
//! - [`WebhookState`]: the queue the rotations go to, authentication, the source
//!   filter, the memory of recent events, and the limits.
//! - [`Intake`]: whether rotations are taken now; a service in standby closes it.
//! - Each delivery's outcome goes to the state's [`DeliveryObserver`], if it has one
//!   ([`crate::observe`]: the worker's metrics).
//! - The delivery handler: authenticates, checks the content type (Event Grid schema
//!   `application/json`, CloudEvents `application/cloudevents+json` and
//!   `application/cloudevents-batch+json`) and size, answers the subscription
//!   validation handshake, turns `SecretNearExpiry`/`SecretExpired` into
//!   [`RotationRequest`]s for the queue (once per event id and per secret version
//!   within a window) and acknowledges the rest. Decisions per event are made in
//!   [`eventgrid`](crate::eventgrid) and [`source`](crate::source); this module only
//!   maps them to HTTP and the queue.
//!
//! # Status codes
//!
//! Event Grid never retries 400, 401, 403, 404 or 413, and retries everything else
//! that is not a success. So:
//!
//! - 200 whenever the delivery was understood, even if some events in it were
//!   malformed (an `id` that is not an event id — see
//!   [`is_event_id`](crate::eventgrid::is_event_id) — included): those are logged and
//!   dropped, since they can never become valid, a failure would make Event Grid
//!   redeliver the good ones too, and a 400 would drop the good ones with them. A
//!   validation handshake whose event is malformed gets 400 with the reason.
//! - 503 with `Retry-After` when the queue is full or closed, or the [`Intake`] is
//!   closed (a service in standby) and the delivery holds a rotation: transient, retried.
//! - 400 only for a body that is not a delivery at all (not JSON, not an array,
//!   wrong content type, a validation event inside a batch); 413 for an oversize body.
//! - 401/403 only for authentication failures; 503 when the signing keys cannot be
//!   fetched (transient).
//! - 408 when a delivery is not answered within the request timeout, if one is set
//!   ([`WebhookState::with_request_timeout`]): a body that never arrives. Retried.
//!
//! The handler never waits for a rotation: it only `try_send`s into the queue.
//!
//! Size: ~40 lines of module doc, ~645 of code, ~190 of unit tests. The code is one
//! handler and the state only it reads; per-event decisions already live in `eventgrid`
//! and `source`, and what is left is the mapping to HTTP above.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::auth::{AuthError, Authenticator};
use crate::dedup::RecentSet;
use crate::eventgrid::{
    is_cloud_event, loggable_url, plan_cloud_event, plan_event, AegEventType, Disposition, EventKind, PlannedEvent,
    SubscriptionValidationData, ValidationResponse, AEG_EVENT_TYPE_HEADER,
};
use crate::observe::{observed, tagged, timed, DeliveryObserver, DeliveryOutcome};
use crate::source::SourceFilter;
use crate::text::{quote, same_name};
use kv_rotator_core::{RotationRequest, Trigger};

/// The main delivery path.
pub const EVENTGRID_PATH: &str = "/api/eventgrid";
/// The liveness path.
pub const HEALTHZ_PATH: &str = "/healthz";

// Header names as constants: a lookup by `&str` parses the name on every request.
const AEG_EVENT_TYPE: HeaderName = HeaderName::from_static(AEG_EVENT_TYPE_HEADER);
const AEG_SUBSCRIPTION_NAME: HeaderName = HeaderName::from_static("aeg-subscription-name");
const AEG_DELIVERY_COUNT: HeaderName = HeaderName::from_static("aeg-delivery-count");
const CE_SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");

/// What the webhook needs: the rotation queue and its options.
///
/// Cheap to clone (the queue sender is reference counted).
#[derive(Debug, Clone)]
pub struct WebhookState {
    queue: mpsc::Sender<RotationRequest>,
    max_body_bytes: usize,
    retry_after: Duration,
    auth: Authenticator,
    source: SourceFilter,
    recent: Arc<Mutex<Recent>>,
    dedup: (Duration, usize),
    coalesce: (Duration, usize),
    intake: Intake,
    observer: Option<Arc<dyn DeliveryObserver>>,
    request_timeout: Option<Duration>,
}

/// Whether deliveries holding rotations are taken now. Open unless closed; a service in
/// standby (another process holds the engine lease, so nothing here would rotate) closes
/// it, and a delivery that would queue a rotation then gets 503 with the given
/// `Retry-After`, so Event Grid delivers it again later: never a 200 for an event that
/// will not be processed, and nothing remembered (a redelivery after [`Intake::open`] is
/// not taken for a duplicate). Validation handshakes, and deliveries with nothing to
/// rotate, are answered as usual. Cheap to clone: every clone is the same switch.
#[derive(Debug, Clone, Default)]
pub struct Intake {
    closed: Arc<Mutex<Option<Closed>>>,
}

#[derive(Debug, Clone)]
struct Closed {
    message: String,
    retry_after: Duration,
}

impl Intake {
    /// Refuses rotations from now on: 503 with `message` (sent to the caller, so nothing
    /// internal) and `Retry-After: retry_after` (whole seconds, rounded up, at least 1).
    pub fn close(&self, message: impl Into<String>, retry_after: Duration) {
        *self.lock() = Some(Closed { message: message.into(), retry_after });
    }

    /// Takes rotations again.
    pub fn open(&self) {
        *self.lock() = None;
    }

    /// Whether rotations are taken now.
    pub fn is_open(&self) -> bool {
        self.lock().is_none()
    }

    fn closed(&self) -> Option<Closed> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Closed>> {
        self.closed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What was enqueued lately: event ids and (vault, secret, version) keys.
#[derive(Debug)]
struct Recent {
    events: RecentSet,
    rotations: RecentSet,
}

/// The answer to a notification: what became of its events.
#[derive(Debug, serde::Serialize)]
struct Summary {
    queued: usize,
    ignored: usize,
    rejected: usize,
}

/// A queued request's digests in the two [`Recent`] sets.
struct Keys {
    event: u64,
    rotation: u64,
}

/// (vault, secret, version), lower-cased (Key Vault names ignore case), hashed as one
/// byte string.
struct RotationKey<'a>(&'a RotationRequest);

impl std::hash::Hash for RotationKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let RotationRequest { vault_name, secret_name, version, .. } = self.0;
        let mut key = format!("{vault_name}/{secret_name}/{}", version.as_deref().unwrap_or(""));
        key.make_ascii_lowercase();
        state.write(key.as_bytes());
    }
}

impl WebhookState {
    /// Event Grid's largest batch, 1 MiB.
    pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
    /// `Retry-After` sent with 503.
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);
    /// How long an enqueued event id is remembered.
    pub const DEFAULT_DEDUP_TTL: Duration = Duration::from_secs(3600);
    /// How many event ids (and rotation keys) are remembered at most.
    pub const DEFAULT_DEDUP_CAPACITY: usize = 20_000;
    /// How long an enqueued (vault, secret, version) absorbs further requests.
    pub const DEFAULT_COALESCE_WINDOW: Duration = Duration::from_secs(60);

    /// A state sending rotations into `queue`, with default options.
    pub fn new(queue: mpsc::Sender<RotationRequest>) -> Self {
        let dedup = (Self::DEFAULT_DEDUP_TTL, Self::DEFAULT_DEDUP_CAPACITY);
        let coalesce = (Self::DEFAULT_COALESCE_WINDOW, Self::DEFAULT_DEDUP_CAPACITY);
        Self {
            queue,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            retry_after: Self::DEFAULT_RETRY_AFTER,
            auth: Authenticator::None,
            source: SourceFilter::any(),
            recent: Self::recent(dedup, coalesce),
            dedup,
            coalesce,
            intake: Intake::default(),
            observer: None,
            request_timeout: None,
        }
    }

    fn recent(dedup: (Duration, usize), coalesce: (Duration, usize)) -> Arc<Mutex<Recent>> {
        Arc::new(Mutex::new(Recent {
            events: RecentSet::new(dedup.0, dedup.1),
            rotations: RecentSet::new(coalesce.0, coalesce.1),
        }))
    }

    /// Which vaults' events are accepted (default: any, as long as the names agree).
    pub fn with_source_filter(mut self, source: SourceFilter) -> Self {
        self.source = source;
        self
    }

    /// Event ids already enqueued are ignored for `ttl`; at most `capacity` remembered.
    pub fn with_dedup(mut self, ttl: Duration, capacity: usize) -> Self {
        self.dedup = (ttl, capacity);
        self.recent = Self::recent(self.dedup, self.coalesce);
        self
    }

    /// A (vault, secret, version) already enqueued is not enqueued again for `window`.
    pub fn with_coalesce_window(mut self, window: Duration) -> Self {
        self.coalesce.0 = window;
        self.recent = Self::recent(self.dedup, self.coalesce);
        self
    }

    /// Takes rotations only while `intake` is open (default: always).
    pub fn with_intake(mut self, intake: Intake) -> Self {
        self.intake = intake;
        self
    }

    /// Tells `observer` what became of each delivery (default: nobody).
    pub fn with_observer(mut self, observer: Arc<dyn DeliveryObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Answers 408 to a delivery not answered within `timeout`, body reading included
    /// (default: no limit here; a host's listener may bound requests itself). Told to the
    /// observer as [`DeliveryOutcome::Timeout`], which a timeout layered outside the
    /// router could not be.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// How deliveries are authenticated (default: not at all).
    pub fn with_auth(mut self, auth: Authenticator) -> Self {
        self.auth = auth;
        self
    }

    /// How deliveries are authenticated.
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// Largest accepted body; larger ones get 413.
    pub fn with_max_body_bytes(mut self, max_body_bytes: usize) -> Self {
        self.max_body_bytes = max_body_bytes;
        self
    }

    /// The `Retry-After` sent with 503, rounded up to whole seconds (at least 1).
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Largest accepted body.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The `Retry-After` sent with 503.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

/// The webhook's routes; see the [module docs](self).
pub fn router(state: WebhookState) -> Router {
    let deliveries = Router::new()
        .route(EVENTGRID_PATH, post(receive).options(abuse_protection))
        .route("/", post(receive).options(abuse_protection));
    let deliveries = match state.request_timeout {
        Some(limit) => timed(deliveries, limit),
        None => deliveries,
    };
    let deliveries = match state.observer.clone() {
        Some(observer) => observed(deliveries, observer),
        None => deliveries,
    };
    deliveries
        .route(HEALTHZ_PATH, get(healthz))
        // One reference count per request instead of a clone of every field.
        .with_state(Arc::new(state))
}

async fn healthz() -> &'static str {
    "ok"
}

/// A short JSON error; never echoes the body.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn unavailable(state: &WebhookState, message: &str) -> Response {
    unavailable_for(state.retry_after, message)
}

fn unavailable_for(retry_after: Duration, message: &str) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// 401/403 for a bad credential, 503 when it cannot be checked now. Logged at
/// `warn`: a stream of these is an attack or a misconfigured subscription.
fn unauthenticated(state: &WebhookState, e: &AuthError) -> Response {
    tracing::warn!(mode = state.auth.mode(), error = %e, "delivery refused: not authenticated");
    if e.is_transient() {
        return unavailable(state, &e.to_string());
    }
    let mut response = error(e.status(), e.to_string());
    if e.status() == StatusCode::UNAUTHORIZED && matches!(state.auth, Authenticator::EntraId(_)) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn too_large(state: &WebhookState) -> Response {
    error(StatusCode::PAYLOAD_TOO_LARGE, format!("body exceeds {} bytes", state.max_body_bytes))
}

/// The schema a delivery is in, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    /// `application/json`: an array of Event Grid events (or, tolerated, CloudEvents).
    EventGrid,
    /// `application/cloudevents+json`: one CloudEvent (an array is tolerated).
    CloudEvent,
    /// `application/cloudevents-batch+json`: an array of CloudEvents.
    CloudEventBatch,
}

/// The schema of a delivery, or why its content type is refused (any case, any
/// parameters).
fn schema(headers: &HeaderMap) -> Result<Schema, &'static str> {
    if headers.contains_key(CE_SPECVERSION) {
        // Binary mode puts the envelope in headers; Event Grid delivers structured mode.
        return Err("CloudEvents binary mode is not supported: use structured mode (application/cloudevents+json)");
    }
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err("missing Content-Type, expected application/json or application/cloudevents(-batch)+json");
    };
    let essence = value.to_str().unwrap_or("").split(';').next().unwrap_or("").trim();
    [
        ("application/json", Schema::EventGrid),
        ("application/cloudevents+json", Schema::CloudEvent),
        ("application/cloudevents-batch+json", Schema::CloudEventBatch),
    ]
    .into_iter()
    .find_map(|(name, schema)| same_name(essence, name).then_some(schema))
    .ok_or("unsupported Content-Type, expected application/json or application/cloudevents(-batch)+json")
}

/// Whether reading a body failed because it exceeds the limit.
fn is_length_limit(e: &axum::Error) -> bool {
    std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| e.source())
        .any(|e| e.is::<http_body_util::LengthLimitError>())
}

/// Reads the header as text for logs; `""` when absent or not visible ASCII.
fn header_text(headers: &HeaderMap, name: HeaderName) -> &str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Handles one delivery (see the [module docs](self) for the status codes).
#[tracing::instrument(
    name = "eventgrid_delivery",
    skip_all,
    fields(aeg_event_type, aeg_subscription_name, aeg_delivery_count, events)
)]
async fn receive(State(state): State<Arc<WebhookState>>, request: Request) -> Response {
    // Authentication first: an unauthenticated caller learns nothing about the body rules.
    let (parts, body) = request.into_parts();
    if let Err(e) = state.auth.check(&parts).await {
        return unauthenticated(&state, &e);
    }
    let request = Request::from_parts(parts, body);
    // Cheap checks next, before reading the body.
    let schema = match schema(request.headers()) {
        Ok(schema) => schema,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared_length.is_some_and(|n| n > state.max_body_bytes as u64) {
        return too_large(&state);
    }
    // Header names are case-insensitive (`AEG-SUBSCRIPTION-NAME` arrives upper-case); values
    // are not validated, so they are logged quoted and clipped (they are on every line of
    // the delivery).
    let headers = request.headers();
    let aeg_header = headers.get(AEG_EVENT_TYPE).map(|v| v.to_str().unwrap_or(""));
    let aeg = aeg_header.and_then(AegEventType::parse);
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("aeg_event_type", tracing::field::display(quote(aeg_header.unwrap_or(""))));
        span.record(
            "aeg_subscription_name",
            tracing::field::display(quote(header_text(headers, AEG_SUBSCRIPTION_NAME))),
        );
        span.record("aeg_delivery_count", tracing::field::display(quote(header_text(headers, AEG_DELIVERY_COUNT))));
    }
    if aeg_header.is_some() && aeg.is_none() {
        // Decisions rest on each event's eventType; an unknown header value is no reason to refuse.
        tracing::debug!("unknown aeg-event-type header value");
    }

    // The limit caps the read even without a Content-Length. (Read here rather than by a
    // `DefaultBodyLimit` layer, which costs a service clone and an extension per request.)
    let body = match axum::body::to_bytes(request.into_body(), state.max_body_bytes).await {
        Ok(body) => body,
        Err(e) if is_length_limit(&e) => return too_large(&state),
        Err(e) => {
            tracing::debug!(error = %e, "could not read request body");
            return error(StatusCode::BAD_REQUEST, "could not read request body");
        }
    };
    // The common delivery is decided straight from the body; anything unusual, and every
    // error, goes the general way below.
    if schema == Schema::EventGrid {
        if let Some(planned) = crate::fastpath::plan_event_grid(&body, &state.source) {
            span.record("events", planned.len());
            return handshake(aeg, &planned).unwrap_or_else(|| notify(&state, planned));
        }
    }
    // serde_json's syntax errors name a line and column, never body content; its
    // recursion limit (128) turns deeply nested bodies into an error, not a stack overflow.
    let value = match serde_json::from_slice::<Value>(&body) {
        Ok(value) => value,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body is not valid JSON: {e}")),
    };
    let events = match (schema, value) {
        (Schema::CloudEvent, event @ Value::Object(_)) => vec![event],
        (_, Value::Array(events)) => events,
        (Schema::EventGrid, _) => {
            return error(StatusCode::BAD_REQUEST, "body must be a JSON array of Event Grid events")
        }
        (_, _) => return error(StatusCode::BAD_REQUEST, "body must be a CloudEvent object or an array of them"),
    };
    span.record("events", events.len());
    // CloudEvents labelled application/json are read as what they are.
    let cloud = schema != Schema::EventGrid || events.iter().any(is_cloud_event);
    let planned: Vec<PlannedEvent> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| if cloud { plan_cloud_event(i, e, &state.source) } else { plan_event(i, e, &state.source) })
        .collect();
    if let Some(response) = handshake(aeg, &planned) {
        return response;
    }
    notify(&state, planned)
}

/// The CloudEvents abuse-protection handshake: an `OPTIONS` with
/// `WebHook-Request-Origin`, answered 200 with `WebHook-Allowed-Origin` (and
/// `WebHook-Allowed-Rate` when a rate was asked for). Authenticated like a delivery.
async fn abuse_protection(State(state): State<Arc<WebhookState>>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    if let Err(e) = state.auth.check(&parts).await {
        return unauthenticated(&state, &e);
    }
    let allow = HeaderValue::from_static("POST, OPTIONS");
    let Some(origin) = parts.headers.get("webhook-request-origin") else {
        // A plain OPTIONS (no handshake): say what the endpoint takes.
        return tagged((StatusCode::OK, [(header::ALLOW, allow)]).into_response(), DeliveryOutcome::Probe);
    };
    let valid = origin.to_str().ok().filter(|o| {
        !o.is_empty() && o.len() <= 253 && o.bytes().all(|b| b.is_ascii_alphanumeric() || b".-*:".contains(&b))
    });
    let Some(origin) = valid else {
        return error(StatusCode::BAD_REQUEST, "WebHook-Request-Origin is not a host name");
    };
    tracing::info!(origin, "answering CloudEvents abuse-protection handshake");
    let mut response = (StatusCode::OK, [(header::ALLOW, allow)]).into_response();
    let headers = response.headers_mut();
    headers.insert("webhook-allowed-origin", HeaderValue::from_str(origin).expect("checked above"));
    if parts.headers.contains_key("webhook-request-rate") {
        // No rate limit of our own: the queue's 503 is the backpressure.
        headers.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    }
    tagged(response, DeliveryOutcome::Validation)
}

/// Answers the validation handshake, if this delivery is one.
fn handshake(aeg: Option<AegEventType>, planned: &[PlannedEvent]) -> Option<Response> {
    let validation = planned.iter().find_map(|p| match &p.disposition {
        Disposition::Validate(data) => Some((p, data)),
        _ => None,
    });
    let Some((event, SubscriptionValidationData { validation_code, validation_url })) = validation else {
        if aeg != Some(AegEventType::SubscriptionValidation) {
            return None;
        }
        // A handshake we cannot answer: say why; Event Grid reports the failure to whoever subscribes.
        let reason = planned
            .iter()
            .find_map(|p| match &p.disposition {
                Disposition::Reject(e) => Some(e.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "no SubscriptionValidationEvent in a SubscriptionValidation delivery".to_owned());
        tracing::warn!(%reason, "subscription validation failed");
        return Some(error(StatusCode::BAD_REQUEST, reason));
    };
    if planned.len() > 1 {
        // Event Grid sends the handshake alone: a batch around one is not a real delivery.
        tracing::warn!(events = planned.len(), "validation event inside a batch refused");
        return Some(error(StatusCode::BAD_REQUEST, "a SubscriptionValidationEvent must be delivered alone"));
    }
    tracing::info!(
        event_id = ?event.event_id.as_deref().unwrap_or(""),
        validation_url = %loggable_url(validation_url.as_deref().unwrap_or("")),
        "answering Event Grid subscription validation"
    );
    // 200, not 202: Event Grid rejects 202 for the handshake.
    let answer = Json(ValidationResponse { validation_response: validation_code.clone() });
    Some(tagged((StatusCode::OK, answer).into_response(), DeliveryOutcome::Validation))
}

/// Logs every event's fate, enqueues the rotations, and answers.
fn notify(state: &WebhookState, planned: Vec<PlannedEvent>) -> Response {
    let (mut ignored, mut rejected, mut rotations) = (0usize, 0usize, 0usize);
    let mut refused_source = false;
    for PlannedEvent { index, event_id, disposition } in &planned {
        // Event ids were checked (`is_event_id`: short, visible ASCII); an event whose id
        // is not one is rejected and its id only quoted, clipped, in the reason. Event types
        // that are not ours are any text: quoted and clipped.
        let id = event_id.as_deref().unwrap_or("");
        match disposition {
            Disposition::Rotate(_) => rotations += 1,
            Disposition::Ignore { kind: EventKind::SubscriptionDeleted, event_type } => {
                ignored += 1;
                tracing::warn!(index, event_id = ?id, event_type = %quote(event_type), "Event Grid subscription deleted");
            }
            Disposition::Ignore { kind, event_type } => {
                ignored += 1;
                // Includes SecretNewVersionCreated: the worker's own writes must not loop back.
                tracing::debug!(index, event_id = ?id, event_type = %quote(event_type), ?kind, "event ignored");
            }
            // Not reached: a delivery holding a validation event is answered by `handshake`.
            Disposition::Validate(_) => ignored += 1,
            Disposition::Reject(reason) if reason.is_source() => {
                rejected += 1;
                refused_source = true;
                // Acknowledged all the same: Event Grid must not redeliver a spoofed event.
                tracing::warn!(index, event_id = ?id, %reason, "event from an unexpected source dropped");
            }
            Disposition::Reject(reason) => {
                rejected += 1;
                tracing::warn!(index, event_id = ?id, %reason, "event dropped");
            }
        }
    }

    if rotations > 0 {
        if let Some(closed) = state.intake.closed() {
            // Nothing remembered: the redelivery is taken once the intake opens.
            tracing::info!(rotations, reason = %closed.message, "delivery refused with 503: rotations not taken now");
            return unavailable_for(closed.retry_after, &closed.message);
        }
    }

    // Check, enqueue and remember under one lock, so two concurrent deliveries of the
    // same event cannot both pass the check. `try_send` never waits.
    let now = Instant::now();
    let mut recent = state.recent.lock().unwrap_or_else(|p| p.into_inner());
    // Most deliveries hold one event: the set of this batch's keys is only built for more.
    let mut in_batch = (rotations > 1).then(HashSet::new);
    let mut fresh = Vec::with_capacity(rotations);
    for PlannedEvent { index, disposition, .. } in planned {
        let Disposition::Rotate(request) = disposition else { continue };
        let Trigger::EventGrid { event_id, .. } = &request.trigger else { continue };
        let keys = Keys {
            event: recent.events.digest(event_id.as_str()),
            rotation: recent.rotations.digest(&RotationKey(&request)),
        };
        if recent.events.contains_digest(keys.event, now) {
            ignored += 1;
            tracing::debug!(index, event_id = ?event_id, "event already enqueued (redelivery)");
        } else if recent.rotations.contains_digest(keys.rotation, now)
            || in_batch.as_mut().is_some_and(|set| !set.insert(keys.rotation))
        {
            // One version asked twice (NearExpiry and Expired, two subscriptions): one rotation is enough.
            ignored += 1;
            tracing::debug!(index, event_id = ?event_id, "rotation of this version already requested");
        } else {
            fresh.push((request, keys));
        }
    }
    let queued = fresh.len();
    let (sent, outcome) = enqueue(&state.queue, fresh, |request, keys| {
        recent.events.insert_digest(keys.event, now);
        recent.rotations.insert_digest(keys.rotation, now);
        if let Trigger::EventGrid { event_id, event_type } = &request.trigger {
            // Names are validated and the event type is a known one, so `%` is safe for them.
            tracing::info!(
                vault = %request.vault_name,
                secret = %request.secret_name,
                version = %request.version.as_deref().unwrap_or("latest"),
                ?event_id,
                %event_type,
                "rotation request queued"
            );
        }
    });
    drop(recent);
    if let Err(e) = outcome {
        let (message, closed) = match e {
            TrySendError::Full(()) => ("rotation queue is full, retry later", false),
            TrySendError::Closed(()) => ("worker is shutting down, retry later", true),
        };
        tracing::warn!(rotations = queued, sent, closed, "delivery refused with 503");
        return unavailable(state, message);
    }
    let outcome = match (queued, refused_source) {
        (1.., _) => DeliveryOutcome::Queued,
        (0, true) => DeliveryOutcome::RefusedSource,
        (0, false) => DeliveryOutcome::Ignored,
    };
    tagged((StatusCode::OK, Json(Summary { queued, ignored, rejected })).into_response(), outcome)
}

/// Sends `rotations`, returning how many went in; `sent` sees each one as it goes in
/// (its digest alongside), so nothing is copied. When the queue could hold them all,
/// it is all or none, so a 503 makes Event Grid redeliver a batch that adds no
/// duplicate. A batch larger than the whole queue goes one by one; duplicates from its
/// redelivery are harmless, since the engine keys a rotation on (vault, secret, version).
fn enqueue<K>(
    queue: &mpsc::Sender<RotationRequest>,
    rotations: Vec<(RotationRequest, K)>,
    mut sent: impl FnMut(&RotationRequest, K),
) -> (usize, Result<(), TrySendError<()>>) {
    let count = rotations.len();
    if count == 0 {
        return (0, Ok(()));
    }
    if count <= queue.max_capacity() {
        return match queue.try_reserve_many(count) {
            Ok(permits) => {
                for (permit, (request, key)) in permits.zip(rotations) {
                    sent(&request, key);
                    permit.send(request);
                }
                (count, Ok(()))
            }
            Err(e) => (0, Err(e)),
        };
    }
    for (i, (request, key)) in rotations.into_iter().enumerate() {
        match queue.try_reserve() {
            Ok(permit) => {
                sent(&request, key);
                permit.send(request);
            }
            Err(e) => return (i, Err(e)),
        }
    }
    (count, Ok(()))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    fn post(path: &str, content_type: &str, body: &str) -> Request {
        Request::post(path).header(header::CONTENT_TYPE, content_type).body(Body::from(body.to_owned())).unwrap()
    }

    async fn call(state: WebhookState, request: Request) -> (StatusCode, HeaderMap, Value) {
        let response = router(state).oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, value)
    }

    #[tokio::test]
    async fn healthz_says_ok() {
        let (tx, _rx) = mpsc::channel(1);
        let response = router(WebhookState::new(tx))
            .oneshot(Request::get(HEALTHZ_PATH).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(axum::body::to_bytes(response.into_body(), 16).await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn content_type_parameters_and_case_are_accepted() {
        let (tx, _rx) = mpsc::channel(1);
        let (status, _, body) = call(WebhookState::new(tx), post("/", "Application/JSON; charset=utf-8", "[]")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"queued": 0, "ignored": 0, "rejected": 0}));
    }

    #[tokio::test]
    async fn wrong_or_missing_content_type_is_400() {
        let (tx, _rx) = mpsc::channel(1);
        let state = WebhookState::new(tx);
        let (status, _, body) = call(state.clone(), post(EVENTGRID_PATH, "text/plain", "[]")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("Content-Type"));
        let request = Request::post(EVENTGRID_PATH).body(Body::from("[]")).unwrap();
        assert_eq!(call(state, request).await.0, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn non_array_json_is_400() {
        let (tx, _rx) = mpsc::channel(1);
        let (status, _, body) = call(WebhookState::new(tx), post(EVENTGRID_PATH, "application/json", "{}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, json!({"error": "body must be a JSON array of Event Grid events"}));
    }

    #[tokio::test]
    async fn declared_oversize_is_413_before_reading() {
        let (tx, _rx) = mpsc::channel(1);
        let request = Request::post(EVENTGRID_PATH)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, "11")
            .body(Body::from("[         ]"))
            .unwrap();
        let (status, _, _) = call(WebhookState::new(tx).with_max_body_bytes(10), request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    fn expired_event(id: &str) -> Value {
        json!({
            "id": id, "eventType": crate::eventgrid::SECRET_EXPIRED,
            "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample-kv",
            "data": {"Id": "https://sample-kv.vault.azure.net/secrets/s", "VaultName": "sample-kv"}
        })
    }

    #[tokio::test]
    async fn events_with_bad_ids_are_dropped_and_the_good_ones_of_their_batch_queued() {
        let (tx, mut rx) = mpsc::channel(8);
        let bad = ["", "line\nforged", "\u{1b}[31mred", "with space", "quo\"te", &"x".repeat(129)];
        // The common shape (fast path) and CloudEvents (general path) alike.
        let mut batch: Vec<Value> = bad.iter().map(|id| expired_event(id)).collect();
        batch.push(expired_event("good-1"));
        let body = Value::Array(batch.clone()).to_string();
        let (status, _, reply) = call(WebhookState::new(tx.clone()), post("/", "application/json", &body)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(reply, json!({"queued": 1, "ignored": 0, "rejected": bad.len()}));
        let queued = rx.try_recv().unwrap();
        assert!(matches!(&queued.trigger, Trigger::EventGrid { event_id, .. } if event_id == "good-1"));

        let cloud: Vec<Value> = batch
            .iter()
            .map(|e| {
                json!({"specversion": "1.0", "id": e["id"], "source": e["topic"], "type": e["eventType"], "data": e["data"]})
            })
            .collect();
        let body = Value::Array(cloud).to_string();
        let (status, _, reply) =
            call(WebhookState::new(tx), post("/", "application/cloudevents-batch+json", &body)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(reply, json!({"queued": 1, "ignored": 0, "rejected": bad.len()}));
    }

    #[tokio::test]
    async fn a_handshake_with_a_bad_id_is_refused_naming_the_field() {
        let (tx, _rx) = mpsc::channel(1);
        let event = |id: &str, url: &str| {
            json!([{
                "id": id, "eventType": crate::eventgrid::SUBSCRIPTION_VALIDATION_EVENT,
                "data": {"validationCode": "code-1", "validationUrl": url}
            }])
            .to_string()
        };
        let handshake = |body: String| {
            Request::post(EVENTGRID_PATH)
                .header(header::CONTENT_TYPE, "application/json")
                .header(AEG_EVENT_TYPE, "SubscriptionValidation")
                .body(Body::from(body))
                .unwrap()
        };
        let state = WebhookState::new(tx);
        let (status, _, reply) = call(state.clone(), handshake(event("a\r\nb", "https://x/"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(reply["error"].as_str().unwrap().starts_with(r#"id "a\r\nb" is not an event id"#), "{reply}");
        // A hostile validationUrl is only logged (escaped): the handshake is answered.
        let url = format!("https://x/\r\nforged \u{1b}[31m{}", "u".repeat(10_000));
        let (status, _, reply) = call(state, handshake(event("v-1", &url))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(reply, json!({"validationResponse": "code-1"}));
    }

    #[tokio::test]
    async fn retry_after_rounds_up() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let state = WebhookState::new(tx).with_retry_after(Duration::from_millis(1500));
        let event = json!([{
            "id": "e", "eventType": crate::eventgrid::SECRET_EXPIRED,
            "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample-kv",
            "data": {"Id": "https://sample-kv.vault.azure.net/secrets/s", "VaultName": "sample-kv"}
        }]);
        let (status, headers, _) = call(state, post("/", "application/json", &event.to_string())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "2");
    }

    #[tokio::test]
    async fn a_closed_intake_refuses_rotations_with_503_remembers_nothing_and_still_answers_the_rest() {
        let (tx, mut rx) = mpsc::channel(8);
        let intake = Intake::default();
        intake.close("standby, retry later", Duration::from_millis(14_200));
        let state = WebhookState::new(tx).with_intake(intake.clone());
        let delivery = |id: &str| post("/", "application/json", &json!([expired_event(id)]).to_string());

        let (status, headers, reply) = call(state.clone(), delivery("e-1")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "15");
        assert_eq!(reply, json!({"error": "standby, retry later"}));
        assert!(rx.try_recv().is_err(), "nothing queued");
        // The general path (CloudEvents) too.
        let cloud = json!({"specversion": "1.0", "id": "c-1", "source": expired_event("c-1")["topic"],
            "type": crate::eventgrid::SECRET_EXPIRED, "data": expired_event("c-1")["data"]});
        let (status, _, _) = call(state.clone(), post("/", "application/cloudevents+json", &cloud.to_string())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        // Nothing to rotate: answered as always.
        let (status, _, reply) = call(state.clone(), post("/", "application/json", "[]")).await;
        assert_eq!((status, reply), (StatusCode::OK, json!({"queued": 0, "ignored": 0, "rejected": 0})));
        // The handshake is answered.
        let handshake = Request::post(EVENTGRID_PATH)
            .header(header::CONTENT_TYPE, "application/json")
            .header(AEG_EVENT_TYPE, "SubscriptionValidation")
            .body(Body::from(
                json!([{"id": "v-1", "eventType": crate::eventgrid::SUBSCRIPTION_VALIDATION_EVENT,
                    "data": {"validationCode": "code-1"}}])
                .to_string(),
            ))
            .unwrap();
        let (status, _, reply) = call(state.clone(), handshake).await;
        assert_eq!((status, reply), (StatusCode::OK, json!({"validationResponse": "code-1"})));

        // Open: the redelivery of the refused event is taken, not a duplicate.
        intake.open();
        assert!(intake.is_open());
        let (status, _, reply) = call(state, delivery("e-1")).await;
        assert_eq!((status, reply), (StatusCode::OK, json!({"queued": 1, "ignored": 0, "rejected": 0})));
        assert!(rx.try_recv().is_ok());
    }
}
