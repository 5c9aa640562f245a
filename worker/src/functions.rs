//! The Azure Functions custom handler: the Functions host's invocation contract, served by
//! `kv-rotator functions` on `FUNCTIONS_CUSTOMHANDLER_PORT` (see `deploy/functions/`).
//!
//! The contract is the one on Microsoft's "Azure Functions custom handlers" page
//! (learn.microsoft.com/azure/azure-functions/functions-custom-handlers, sections "Request
//! payload" and "Response payload"): the host POSTs to `/{functionName}` (the function's
//! folder name) a JSON object `{"Data": {...}, "Metadata": {...}}` whose `Data` holds the
//! trigger's value under the binding's name from `function.json`, and reads back
//! `{"Outputs": {...}, "Logs": [...], "ReturnValue": ...}`: `Outputs` by output binding
//! name, `Logs` into the invocation's log, `ReturnValue` a string. A non-2xx answer fails
//! the invocation (the host's `DefaultHttpWorkerService` calls `EnsureSuccessStatusCode`).
//!
//! - [`router`]: `POST /eventgrid`, `POST /rotate`, `POST /sweep` — the three functions —
//!   and `GET /`, which the host pings until the handler answers.
//! - **`eventgrid`** (Event Grid trigger, binding `event`): the event is read by the
//!   webhook's own parsing and checks ([`plan_any_event`]: either schema, event id, names,
//!   `topic`/`VaultName`/`Id` agreement, the vault allowlist of [`crate::service::source_filter`])
//!   and `SecretNearExpiry`/`SecretExpired` become the same [`RotationRequest`] the webhook
//!   queues, run by the same engine. The host hands the event over as a JSON object, or as
//!   a string holding its JSON — once or, for a string input, twice encoded (the host's
//!   `GetHttpScriptInvocationContextValue` serializes strings again): all three are read.
//! - **`rotate`** (HTTP trigger, bindings `req` and `res`): `POST {"secret": NAME, "force":
//!   BOOL}` rotates one secret as `kv-rotator rotate` does ([`manual_request`]); the answer
//!   goes to the caller through `res`. The host checks the function key; the handler also
//!   refuses a request that carries no authenticated identity (a function whose `authLevel`
//!   became `anonymous`) and records who asked (the key's name, or the App Service
//!   authentication principal) in the audit record.
//! - **`sweep`** (timer trigger, binding `timer`): one pass of the sweeper
//!   ([`Sweeper::sweep_once`]): unfinished journals are resumed and due secrets rotated. A
//!   Functions app scales to zero, so this replaces `serve`'s background loop.
//! - [`LeaseKeeper`]: the engine lease ([`crate::lease`]), claimed when an invocation has
//!   something to rotate, shared by the invocations of this instance, and released after
//!   `lease_idle` without one. Another instance holding it refuses the invocation (503): Event
//!   Grid redelivers, the timer fires again, the HTTP caller is told to retry. It lives in
//!   `functions/lease_keeper.rs`, apart from the contract.
//!
//! Size: ~65 lines of module doc, ~600 of code, ~70 of unit tests. The code is one
//! contract with the Functions host (the invocation payload, three functions, their
//! answers and deadlines); each function is short, the payload rules they share are not.
//!
//! # Answers
//!
//! - A body that is not an invocation (not JSON, no `Data`, the trigger binding missing),
//!   an unknown function, a body over the limit: 4xx with `{"error": ...}`. The invocation
//!   fails; nothing was read from or written to the vault.
//! - Events that are understood but unusable (malformed, from another vault, of another
//!   type): 200, each event's fate in `ReturnValue` and `Logs` — like the webhook, since
//!   redelivering them cannot help. A failed rotation is answered 200 too: the engine
//!   retried it, tagged and alerted; the sweep retries it later.
//! - The lease held by another instance, or the vault unreachable before anything was
//!   done: 503, so the host fails the invocation and its trigger retries.
//!
//! # Deadlines
//!
//! An invocation waits for its rotations at most `event` (Event Grid, HTTP; under Event
//! Grid's 30 s response timeout) or `sweep` (timer; under `functionTimeout`). A rotation
//! still running then goes on in this instance, holding the lease, and is reported
//! `in_progress`. If the instance stops before it ends, the rotation stops where it is —
//! every step is safe to interrupt — and the next timer-triggered sweep resumes its
//! journal record (or rotates the still-due secret when it had not written one yet).
//!
//! With `[notifications]`, an invocation whose rotations ended answers only once their
//! CloudEvents were delivered (or given up): the host may freeze or recycle an idle
//! instance, and the queue lives in its memory. It waits for what is left of its deadline,
//! and at least [`NOTIFY_AFTER_DEADLINE`] when the rotations took all of it; what is still
//! queued then goes on in the instance (logged). `shutdown` waits for the queue too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kv_rotator_config::SweeperConfig;
use kv_rotator_core::names::is_secret_name;
use kv_rotator_core::RotationRequest;
use kv_rotator_keyvault::{SecretStore, StoreError};
use kv_rotator_webhook::eventgrid::{plan_any_event, Disposition, PlannedEvent};
use kv_rotator_webhook::SourceFilter;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

use crate::cli::rotate::manual_request;
use crate::engine::{Engine, Outcome, RotationReport};
use crate::sweeper::Sweeper;

mod lease_keeper;
pub use lease_keeper::{AcquireError, Hold, LeaseKeeper};

/// The Event Grid trigger function (folder `deploy/functions/eventgrid`).
pub const EVENTGRID_FUNCTION: &str = "eventgrid";
/// The HTTP trigger function for manual rotations (folder `deploy/functions/rotate`).
pub const ROTATE_FUNCTION: &str = "rotate";
/// The timer trigger function running the sweeper (folder `deploy/functions/sweep`).
pub const SWEEP_FUNCTION: &str = "sweep";
/// The Event Grid trigger's binding name in `function.json`.
pub const EVENT_BINDING: &str = "event";
/// The HTTP trigger's binding name.
pub const REQUEST_BINDING: &str = "req";
/// The HTTP output binding's name.
pub const RESPONSE_BINDING: &str = "res";
/// The timer trigger's binding name.
pub const TIMER_BINDING: &str = "timer";
/// The command named in the engine lease's holder tags.
pub const LEASE_COMMAND: &str = "functions";

/// How long an invocation whose rotations took its whole deadline still waits for their
/// notifications: short, so that an Event Grid invocation (25 s by default) still answers
/// within Event Grid's 30 s.
pub const NOTIFY_AFTER_DEADLINE: Duration = Duration::from_secs(2);

/// How long an invocation waits for its rotations.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Event Grid and HTTP invocations.
    pub event: Duration,
    /// Timer (sweep) invocations.
    pub sweep: Duration,
}

/// What the handler runs on.
#[derive(Debug)]
pub struct HandlerParts {
    /// The engine (`service::build_engine`), without a lease: each invocation adds the one
    /// it holds.
    pub engine: Engine,
    /// The engine lease, claimed on demand.
    pub keeper: Arc<LeaseKeeper>,
    /// Whose events are accepted (`service::source_filter`).
    pub source: SourceFilter,
    /// `[sweeper]`: whether due secrets are swept, and the due rule's window.
    pub sweeper: SweeperConfig,
    /// `engine.concurrency`: rotations at once, over all invocations.
    pub concurrency: usize,
    /// How long invocations wait.
    pub deadlines: Deadlines,
    /// Largest invocation body accepted.
    pub max_body_bytes: usize,
}

/// The handler's state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Handler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    parts: HandlerParts,
    store: Arc<dyn SecretStore>,
    permits: Arc<Semaphore>,
    /// Rotations, which may outlive the invocation that started them.
    running: Mutex<JoinSet<()>>,
}

/// Why an invocation is refused: the HTTP status to the host and why.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    error: String,
}

impl Refusal {
    fn bad_request(error: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, error: error.into() }
    }

    fn unavailable(error: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, error: error.into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.error }))).into_response()
    }
}

/// A successful invocation's answer: `{"Outputs", "Logs", "ReturnValue"}`.
#[derive(Debug, Default)]
struct Answer {
    outputs: Map<String, Value>,
    logs: Vec<String>,
    return_value: Option<Value>,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        // ReturnValue is a string in the contract: the summary's JSON text.
        let return_value = self.return_value.map(|v| Value::String(v.to_string())).unwrap_or(Value::Null);
        Json(json!({ "Outputs": self.outputs, "Logs": self.logs, "ReturnValue": return_value })).into_response()
    }
}

/// How one requested rotation ended, as far as the invocation saw.
#[derive(Debug)]
enum Fate {
    /// The engine's report.
    Done(Box<RotationReport>),
    /// Still running at the deadline.
    InProgress(String),
    /// Its task ended without a report (shutdown).
    Abandoned(String),
}

impl Fate {
    fn json(&self) -> Value {
        match self {
            Fate::Done(report) => report.audit_json(),
            Fate::InProgress(secret) => json!({
                "secret": secret,
                "outcome": "in_progress",
                "detail": "still running at the invocation's deadline: it goes on in this instance; if the instance \
                           stops first, the next sweep resumes its journal record",
            }),
            Fate::Abandoned(secret) => json!({
                "secret": secret,
                "outcome": "abandoned",
                "detail": "stopped with the handler; the next sweep resumes its journal record",
            }),
        }
    }

    fn log_line(&self) -> String {
        match self {
            Fate::Done(report) => format!("{}: {}", report.request.secret_name, report.outcome),
            Fate::InProgress(secret) => {
                format!("{secret}: still rotating at the deadline (continues in this instance)")
            }
            Fate::Abandoned(secret) => format!("{secret}: stopped with the handler (the next sweep resumes it)"),
        }
    }
}

/// The handler's routes; see the [module docs](self).
pub fn router(handler: Handler) -> Router {
    let limit = handler.inner.parts.max_body_bytes;
    Router::new()
        .route("/", get(ping))
        .route("/{function}", post(invoke))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(handler)
}

/// The host's readiness ping (any answer will do).
async fn ping() -> &'static str {
    "ok"
}

/// The invocation id header the host sends, when it looks like one (for logs).
fn invocation_id(headers: &HeaderMap) -> Option<&str> {
    let id = headers.get("x-azure-functions-invocationid")?.to_str().ok()?;
    (id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(id)
}

async fn invoke(
    State(handler): State<Handler>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let function = [EVENTGRID_FUNCTION, ROTATE_FUNCTION, SWEEP_FUNCTION]
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(&function));
    let Some(function) = function else {
        return Refusal {
            status: StatusCode::NOT_FOUND,
            error: format!(
                "no such function; this handler serves {EVENTGRID_FUNCTION}, {ROTATE_FUNCTION} and {SWEEP_FUNCTION}"
            ),
        }
        .into_response();
    };
    let span = tracing::info_span!("invocation", function, invocation_id = invocation_id(&headers).unwrap_or(""));
    async {
        let data = match invocation_data(&body) {
            Ok(data) => data,
            Err(refusal) => {
                warn!(error = %refusal.error, "invocation refused");
                return refusal.into_response();
            }
        };
        let answer = match function {
            EVENTGRID_FUNCTION => handler.eventgrid(&data).await,
            ROTATE_FUNCTION => handler.manual(&data).await,
            _ => handler.sweep(&data).await,
        };
        match answer {
            Ok(answer) => answer.into_response(),
            Err(refusal) => {
                warn!(status = refusal.status.as_u16(), error = %refusal.error, "invocation failed");
                refusal.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

/// The `Data` object of an invocation body.
fn invocation_data(body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::bad_request(format!("not a Functions invocation: body is not JSON: {e}")))?;
    let Value::Object(mut invocation) = value else {
        return Err(Refusal::bad_request("not a Functions invocation: body is not a JSON object"));
    };
    match invocation.remove("Data") {
        Some(Value::Object(data)) => Ok(data),
        Some(_) => Err(Refusal::bad_request("not a Functions invocation: Data is not an object")),
        None => Err(Refusal::bad_request("not a Functions invocation: no Data")),
    }
}

/// The events of the Event Grid trigger's value: an event object, an array of them
/// (`"cardinality": "many"`), or either as JSON text, encoded once or twice.
fn event_values(raw: &Value) -> Result<Vec<Value>, String> {
    let mut value = raw.clone();
    for _ in 0..3 {
        match value {
            Value::Object(_) => return Ok(vec![value]),
            Value::Array(events) => return Ok(events),
            Value::String(text) => {
                value = serde_json::from_str(&text)
                    .map_err(|e| format!("Data.{EVENT_BINDING} is a string but not JSON: {e}"))?;
            }
            _ => break,
        }
    }
    Err(format!("Data.{EVENT_BINDING} is not an event, an array of events, or the JSON text of either"))
}

/// Who asked for a manual rotation, from the identities the host authenticated (the
/// `Identities` of the HTTP trigger's value): the App Service authentication principal's
/// name, else the function key's name; `None` when no identity is authenticated.
fn requested_by(request: &Map<String, Value>) -> Option<String> {
    const KEY_ID: &str = "http://schemas.microsoft.com/2017/07/functions/claims/keyid";
    let printable = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')).then(|| s.to_owned())
    };
    let identities = request.get("Identities")?.as_array()?;
    let authenticated = identities.iter().filter(|i| i.get("IsAuthenticated").and_then(Value::as_bool) == Some(true));
    let mut key = None;
    for identity in authenticated {
        let kind = identity.get("AuthenticationType").and_then(Value::as_str).and_then(printable);
        let kind = kind.unwrap_or_else(|| "unknown".to_owned());
        if let Some(name) = identity.get("Name").and_then(Value::as_str).and_then(printable) {
            return Some(format!("functions http, {kind} principal {name:?}"));
        }
        let claims = identity.get("Claims").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let key_id = claims
            .iter()
            .find(|c| c.get("Type").and_then(Value::as_str) == Some(KEY_ID))
            .and_then(|c| c.get("Value").and_then(Value::as_str))
            .and_then(printable);
        key = key.or(Some(match key_id {
            Some(id) => format!("functions http, key {id:?}"),
            None => format!("functions http, {kind}"),
        }));
    }
    key
}

/// The HTTP output binding's value: what the caller gets.
fn http_response(status: StatusCode, body: &Value, retry_after: Option<u64>) -> Value {
    let mut headers = json!({ "Content-Type": "application/json" });
    if let Some(seconds) = retry_after {
        headers["Retry-After"] = Value::String(seconds.to_string());
    }
    // The host reads StatusCode, Status, Body and Headers (HttpOutputBindingResponse).
    json!({ "statusCode": status.as_u16(), "status": status.as_u16(), "headers": headers, "body": body.to_string() })
}

/// The caller's status for a manual rotation's fate.
fn manual_status(fate: &Fate) -> StatusCode {
    match fate {
        Fate::Done(report) => match report.outcome {
            Outcome::Rotated { .. } | Outcome::AlreadyRotated { .. } | Outcome::Retired { .. } => StatusCode::OK,
            Outcome::NotFound => StatusCode::NOT_FOUND,
            Outcome::NotManaged => StatusCode::UNPROCESSABLE_ENTITY,
            Outcome::Stale { .. }
            | Outcome::TooSoon { .. }
            | Outcome::NotDue { .. }
            | Outcome::OutsideWindow { .. } => StatusCode::CONFLICT,
            Outcome::OtherVault => StatusCode::BAD_REQUEST,
            Outcome::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        },
        Fate::InProgress(_) => StatusCode::ACCEPTED,
        Fate::Abandoned(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A manual rotation's body: `{"secret": NAME, "force": BOOL}`.
fn manual_body(request: &Map<String, Value>) -> Result<(String, bool), String> {
    let body = match request.get("Body") {
        None | Some(Value::Null) => return Err("empty body: send {\"secret\": NAME, \"force\": false}".to_owned()),
        Some(Value::String(text)) => {
            serde_json::from_str::<Value>(text).map_err(|e| format!("body is not JSON: {e}"))?
        }
        Some(other) => other.clone(),
    };
    let Value::Object(fields) = body else { return Err("body must be a JSON object".to_owned()) };
    if let Some(unknown) = fields.keys().find(|k| !matches!(k.as_str(), "secret" | "force")) {
        return Err(format!("unknown field {unknown:?}: the body takes secret and force"));
    }
    let secret = match fields.get("secret") {
        Some(Value::String(secret)) if is_secret_name(secret) => secret.clone(),
        Some(Value::String(_)) => {
            return Err("secret is not a Key Vault secret name (1-127 letters, digits, -)".to_owned())
        }
        _ => return Err("secret (a string) is required".to_owned()),
    };
    let force = match fields.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(force)) => *force,
        Some(_) => return Err("force must be true or false".to_owned()),
    };
    Ok((secret, force))
}

impl Handler {
    /// A handler over `parts`.
    pub fn new(parts: HandlerParts) -> Self {
        let store = parts.engine.store();
        let permits = Arc::new(Semaphore::new(parts.concurrency.max(1)));
        Self { inner: Arc::new(Inner { parts, store, permits, running: Mutex::new(JoinSet::new()) }) }
    }

    /// Lets running rotations finish for up to `grace`, stops the rest (the next sweep
    /// resumes their journals), releases the engine lease, and waits up to
    /// [`crate::notify::SHUTDOWN_FLUSH`] for queued notifications. The lease goes first: it
    /// lets another instance take over at once, and a process killed while it flushes
    /// would otherwise keep it until its time-to-live ran out.
    pub async fn shutdown(&self, grace: Duration) {
        let mut running = std::mem::take(&mut *self.inner.running.lock().expect("running rotations"));
        while running.try_join_next().is_some() {}
        if !running.is_empty() {
            info!(rotations = running.len(), ?grace, "waiting for running rotations");
            let drained = tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} }).await;
            if drained.is_err() {
                warn!(rotations = running.len(), "rotations still running after the grace period: stopped");
                running.shutdown().await;
            }
        }
        self.inner.parts.keeper.release_now().await;
        if let Some(notifier) = self.inner.parts.engine.notifier() {
            if !notifier.flush(crate::notify::SHUTDOWN_FLUSH).await {
                warn!("notifications still queued at shutdown were not delivered");
            }
        }
    }

    /// The Event Grid trigger.
    async fn eventgrid(&self, data: &Map<String, Value>) -> Result<Answer, Refusal> {
        let raw = data.get(EVENT_BINDING).ok_or_else(|| {
            Refusal::bad_request(format!(
                "Data has no {EVENT_BINDING}: function.json must name the Event Grid trigger binding {EVENT_BINDING:?}"
            ))
        })?;
        let events = event_values(raw).map_err(Refusal::bad_request)?;
        let source = &self.inner.parts.source;
        let planned: Vec<PlannedEvent> =
            events.into_iter().enumerate().map(|(index, event)| plan_any_event(index, event, source)).collect();
        let mut answer = Answer::default();
        let mut results = Vec::with_capacity(planned.len());
        let mut rotations = Vec::new();
        for PlannedEvent { index, event_id, disposition } in planned {
            let id = event_id.unwrap_or_default();
            match disposition {
                Disposition::Rotate(request) => {
                    rotations.push((index, id, request));
                    continue;
                }
                Disposition::Ignore { kind, event_type } => {
                    let event_type: String = event_type.chars().take(80).collect();
                    answer.logs.push(format!("event {index} ({id}): ignored ({kind:?})"));
                    results
                        .push(json!({ "index": index, "eventId": id, "result": "ignored", "eventType": event_type }));
                }
                Disposition::Reject(reason) => {
                    warn!(index, event_id = ?id, %reason, "event dropped");
                    answer.logs.push(format!("event {index} ({id}): rejected: {reason}"));
                    results.push(
                        json!({ "index": index, "eventId": id, "result": "rejected", "reason": reason.to_string() }),
                    );
                }
                Disposition::Validate(_) => {
                    let reason = "a subscription validation event: the Functions host answers the handshake itself";
                    answer.logs.push(format!("event {index} ({id}): rejected: {reason}"));
                    results.push(json!({ "index": index, "eventId": id, "result": "rejected", "reason": reason }));
                }
            }
        }
        if !rotations.is_empty() {
            let hold = self.hold().await?;
            let requests = rotations.iter().map(|(_, _, request)| request.clone()).collect();
            let fates = self.rotate_all(requests, hold, self.inner.parts.deadlines.event).await;
            for ((index, id, _), fate) in rotations.into_iter().zip(fates) {
                answer.logs.push(format!("event {index} ({id}): {}", fate.log_line()));
                results.push(json!({ "index": index, "eventId": id, "result": "rotate", "rotation": fate.json() }));
            }
            results.sort_by_key(|r| r["index"].as_u64());
        }
        answer.return_value = Some(json!({ "function": EVENTGRID_FUNCTION, "events": results }));
        Ok(answer)
    }

    /// The HTTP trigger: one manual rotation, answered through `res`.
    async fn manual(&self, data: &Map<String, Value>) -> Result<Answer, Refusal> {
        let request = data.get(REQUEST_BINDING).and_then(Value::as_object).ok_or_else(|| {
            Refusal::bad_request(format!(
                "Data has no {REQUEST_BINDING} object: function.json must name the HTTP trigger binding {REQUEST_BINDING:?}"
            ))
        })?;
        let reply = |status: StatusCode, body: Value, retry_after: Option<u64>| -> Result<Answer, Refusal> {
            let mut answer = Answer::default();
            answer.logs.push(format!(
                "{} {}",
                status.as_u16(),
                body["detail"].as_str().or(body["error"].as_str()).unwrap_or("")
            ));
            answer.outputs.insert(RESPONSE_BINDING.to_owned(), http_response(status, &body, retry_after));
            answer.return_value = Some(json!({ "function": ROTATE_FUNCTION, "status": status.as_u16() }));
            Ok(answer)
        };
        let error = |message: String| json!({ "error": message });
        if !request.get("Method").and_then(Value::as_str).is_some_and(|m| m.eq_ignore_ascii_case("POST")) {
            return reply(StatusCode::METHOD_NOT_ALLOWED, error("use POST".to_owned()), None);
        }
        let Some(requested_by) = requested_by(request) else {
            warn!("manual rotation refused: no authenticated identity (is the function's authLevel anonymous?)");
            let message = "no authenticated identity: the rotate function must keep authLevel function or admin";
            return reply(StatusCode::UNAUTHORIZED, error(message.to_owned()), None);
        };
        let (secret, force) = match manual_body(request) {
            Ok(parsed) => parsed,
            Err(message) => return reply(StatusCode::BAD_REQUEST, error(message), None),
        };
        let rotation = match manual_request(self.inner.store.as_ref(), &secret, &requested_by, force).await {
            Ok(rotation) => rotation,
            Err(StoreError::NotFound { .. }) => {
                return reply(StatusCode::NOT_FOUND, error(format!("no secret {secret:?} in the vault")), None)
            }
            Err(e) => {
                return reply(StatusCode::SERVICE_UNAVAILABLE, error(format!("cannot read {secret:?}: {e}")), Some(30))
            }
        };
        let hold = match self.hold().await {
            Ok(hold) => hold,
            Err(refusal) => return reply(StatusCode::SERVICE_UNAVAILABLE, error(refusal.error), Some(30)),
        };
        info!(secret = %secret, force, requested_by = %requested_by, "manual rotation requested");
        let fate = self.rotate_all(vec![rotation], hold, self.inner.parts.deadlines.event).await.pop();
        let fate = fate.unwrap_or(Fate::Abandoned(secret));
        reply(manual_status(&fate), fate.json(), None)
    }

    /// The timer trigger: one sweep, its requests rotated.
    async fn sweep(&self, data: &Map<String, Value>) -> Result<Answer, Refusal> {
        if data.get(TIMER_BINDING).and_then(|t| t.get("IsPastDue")).and_then(Value::as_bool) == Some(true) {
            info!("timer invocation is past due");
        }
        let requests = self.scan().await?;
        let mut answer = Answer::default();
        if requests.is_empty() {
            answer.logs.push("sweep: nothing to rotate or resume".to_owned());
            answer.return_value = Some(json!({ "function": SWEEP_FUNCTION, "requested": 0, "rotations": [] }));
            return Ok(answer);
        }
        let requested = requests.len();
        let hold = self.hold().await?;
        let fates = self.rotate_all(requests, hold, self.inner.parts.deadlines.sweep).await;
        answer.logs.extend(fates.iter().map(Fate::log_line));
        let rotations: Vec<Value> = fates.iter().map(Fate::json).collect();
        answer.return_value =
            Some(json!({ "function": SWEEP_FUNCTION, "requested": requested, "rotations": rotations }));
        Ok(answer)
    }

    /// One sweeper pass, without the lease (it only reads): its requests.
    async fn scan(&self) -> Result<Vec<RotationRequest>, Refusal> {
        let parts = &self.inner.parts;
        let (queue, mut requests) = mpsc::channel(64);
        let sweeper = Sweeper::new(
            self.inner.store.clone(),
            queue,
            parts.sweeper.clone(),
            parts.engine.due_rule(),
            parts.engine.metrics(),
        );
        let collect = async {
            let mut all = Vec::new();
            while let Some(request) = requests.recv().await {
                all.push(request);
            }
            all
        };
        // The sweeper (and its sender) is dropped when its pass ends, which ends `collect`.
        let (swept, all) = tokio::join!(async move { sweeper.sweep_once().await }, collect);
        swept.map_err(|e| Refusal::unavailable(format!("sweep: cannot list the vault: {e}")))?;
        Ok(all)
    }

    /// The engine lease for one invocation; 503 when it cannot be had.
    async fn hold(&self) -> Result<Hold, Refusal> {
        self.inner.parts.keeper.acquire().await.map_err(|e| {
            warn!(error = %e, "invocation refused: no engine lease");
            Refusal::unavailable(format!("not rotated, retry later: {e}"))
        })
    }

    /// Runs `requests` under `hold`, at most `engine.concurrency` at once over every
    /// invocation, and waits for them until `wait` has passed.
    async fn rotate_all(&self, requests: Vec<RotationRequest>, hold: Hold, wait: Duration) -> Vec<Fate> {
        let deadline = Instant::now() + wait;
        let engine = self.inner.parts.engine.clone().with_lease(Arc::new(hold.guard.clone()));
        let mut waiting = Vec::with_capacity(requests.len());
        {
            let mut running = self.inner.running.lock().expect("running rotations");
            while running.try_join_next().is_some() {}
            for request in requests {
                let (done, report) = oneshot::channel();
                let (engine, permits, hold) = (engine.clone(), self.inner.permits.clone(), hold.clone());
                waiting.push((request.secret_name.clone(), report));
                running.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let report = engine.rotate(request).await;
                    let _ = done.send(report);
                    drop(hold);
                });
            }
        }
        drop(hold);
        let mut fates = Vec::with_capacity(waiting.len());
        for (secret, report) in waiting {
            fates.push(match tokio::time::timeout_at(deadline, report).await {
                Ok(Ok(report)) => Fate::Done(Box::new(report)),
                Ok(Err(_)) => Fate::Abandoned(secret),
                Err(_) => Fate::InProgress(secret),
            });
        }
        if fates.iter().any(|fate| matches!(fate, Fate::Done(_))) {
            self.deliver_notifications(deadline).await;
        }
        fates
    }

    /// Waits for the notifications of the rotations that ended (and whatever was queued
    /// before them), until `deadline` or at least [`NOTIFY_AFTER_DEADLINE`]: once the
    /// answer is sent, the host may freeze or recycle the instance.
    async fn deliver_notifications(&self, deadline: Instant) {
        let Some(notifier) = self.inner.parts.engine.notifier() else { return };
        let within = deadline.saturating_duration_since(Instant::now()).max(NOTIFY_AFTER_DEADLINE);
        let left = notifier.flush_to(notifier.mark(), within).await;
        if left > 0 {
            warn!(
                notifications = left,
                waited_ms = within.as_millis() as u64,
                "notifications still queued when the invocation answers: they go on in this instance"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_is_read_as_object_text_or_twice_encoded_text() {
        let event = json!({ "id": "e-1", "eventType": "Microsoft.KeyVault.SecretExpired", "data": {} });
        let once = Value::String(event.to_string());
        let twice = Value::String(once.to_string());
        for raw in [event.clone(), once, twice, json!([event.clone()])] {
            assert_eq!(event_values(&raw).unwrap(), vec![event.clone()], "{raw}");
        }
        let thrice = Value::String(Value::String(Value::String(event.to_string()).to_string()).to_string());
        assert!(event_values(&thrice).is_err());
        for bad in [json!(7), json!(null), json!("not json"), json!("\"7\"")] {
            assert!(event_values(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invocation_bodies_need_a_data_object() {
        assert_eq!(invocation_data(br#"{"Data": {"a": 1}, "Metadata": {}}"#).unwrap()["a"], 1);
        for bad in [&b"nope"[..], b"[]", br#"{"Metadata": {}}"#, br#"{"Data": "x"}"#] {
            assert_eq!(invocation_data(bad).unwrap_err().status, StatusCode::BAD_REQUEST);
        }
    }

    fn key_identity(key: &str) -> Value {
        json!({
            "AuthenticationType": "WebJobsAuthLevel", "IsAuthenticated": true, "Name": null,
            "Claims": [
                { "Type": "http://schemas.microsoft.com/2017/07/functions/claims/authlevel", "Value": "Function" },
                { "Type": "http://schemas.microsoft.com/2017/07/functions/claims/keyid", "Value": key },
            ],
        })
    }

    #[test]
    fn requested_by_names_the_principal_or_the_key_and_needs_an_authenticated_identity() {
        let request = |identities: Value| json!({ "Identities": identities }).as_object().unwrap().clone();
        assert_eq!(requested_by(&request(json!([key_identity("ops")]))).unwrap(), r#"functions http, key "ops""#);
        let principal = json!({ "AuthenticationType": "aad", "IsAuthenticated": true, "Name": "alice@example.com" });
        assert_eq!(
            requested_by(&request(json!([key_identity("ops"), principal]))).unwrap(),
            r#"functions http, aad principal "alice@example.com""#
        );
        let anonymous = json!({ "AuthenticationType": null, "IsAuthenticated": false, "Claims": [] });
        assert_eq!(requested_by(&request(json!([anonymous]))), None);
        assert_eq!(requested_by(&request(json!([]))), None);
        assert_eq!(requested_by(&Map::new()), None);
        let forged = json!([{ "AuthenticationType": "aad", "IsAuthenticated": true, "Name": "a\nb" }]);
        assert_eq!(requested_by(&request(forged)).unwrap(), "functions http, aad", "control characters are not names");
    }

    #[test]
    fn manual_bodies_name_one_secret_and_maybe_force() {
        let body = |text: &str| json!({ "Body": text }).as_object().unwrap().clone();
        assert_eq!(manual_body(&body(r#"{"secret": "db-password"}"#)).unwrap(), ("db-password".to_owned(), false));
        assert_eq!(manual_body(&body(r#"{"secret": "a", "force": true}"#)).unwrap(), ("a".to_owned(), true));
        for bad in [
            "",
            "{",
            "[]",
            r#"{"force": true}"#,
            r#"{"secret": "a b"}"#,
            r#"{"secret": "a", "force": "yes"}"#,
            r#"{"secret": "a", "all": true}"#,
        ] {
            assert!(manual_body(&body(bad)).is_err(), "{bad}");
        }
        assert!(manual_body(&Map::new()).is_err(), "no body");
    }
}
