//! The authenticated admin API, served on the admin listener when `[admin.auth]` is set.
//!
//! - `POST /api/rotations` ([`post_rotations`]): a job of manual rotations — named secrets,
//!   the managed secrets carrying tags, or all of them — with a reason and a force flag.
//!   Every secret's latest version is read now (as `rotate` does); the requests go on the
//!   running engine's queue all together or not at all (503 with `Retry-After` when it has
//!   no room), and the job is remembered ([`super::jobs`]). 202 with the job. A job with
//!   a `concurrency` limit is fed to the queue instead, one request as each secret ends
//!   ([`jobs::feed`]): it may be larger than the queue.
//! - `GET /api/rotations/{id}`: the job, each secret's state as the engine reported it.
//! - `GET /api/secrets`: the managed secrets and unfinished journal records, as `status`
//!   reads them ([`crate::cli::status::read_status`]).
//! - `GET /api/openapi.json`: the OpenAPI 3.1 document of these routes ([`OPENAPI`]).
//! - `GET /api/service-proof/{nonce}` ([`SERVICE_PROOF_ROUTE`]): public, and only with a
//!   static token or an Entra ID `proof_file`: the service proves it knows the token (or
//!   the proof key) before `rotate` sends a credential.
//!
//! Every other route needs the caller's credential ([`super::auth`]: 401, or 403 for a token
//! without the role), and every call is logged under `kv_rotator::admin` with who made it,
//! what it asked and the status; a rotation job's log line also has its reason. Request
//! bodies must be `application/json` (415 otherwise: a web page cannot then post one
//! cross-origin to a loopback listener without a CORS preflight, which is never answered).
//!
//! Size: ~20 lines of module doc, ~600 of code, ~60 of unit tests. The code is the
//! routes, the authentication middleware in front of them, and the body checks of the one
//! route with a body; jobs and credentials are already apart (`jobs`, `auth`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use kv_rotator_core::limits::MAX_TAG_CHARS;
use kv_rotator_core::RotationRequest;
use kv_rotator_keyvault::{SecretStore, StoreError};
use serde::Deserialize;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tracing::{info, warn};
use uuid::Uuid;

use super::auth::AdminAuth;
use super::jobs::{self, Job, JobSecret, Jobs};
use super::Readiness;
use crate::cli::status::StatusView;
use crate::engine::due::DueRule;
use crate::logging::sanitized;

/// The OpenAPI 3.1 document of the admin API, served at `GET /api/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route the API serves, as (method, path) — the router is built from this list,
/// and a test checks it against [`OPENAPI`].
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/rotations"),
    ("GET", "/api/rotations/{id}"),
    ("GET", "/api/secrets"),
    ("GET", "/api/openapi.json"),
    ("GET", SERVICE_PROOF_ROUTE),
];

/// The one route served without a credential: the service's proof that it knows the
/// static token or the proof key ([`super::auth::service_proof`]), which `kv-rotator
/// rotate` asks for before it sends a credential.
pub const SERVICE_PROOF_ROUTE: &str = "/api/service-proof/{nonce}";
/// The nonce's length in hex digits, at least and at most.
const NONCE_HEX: std::ops::RangeInclusive<usize> = 32..=128;

/// Longest `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 200;
/// Largest request body.
const MAX_BODY_BYTES: usize = 256 * 1024;
/// `Retry-After` of a 503.
const RETRY_AFTER_SECS: u64 = 5;

/// What the API routes read. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Who may call.
    pub auth: AdminAuth,
    /// The vault the service rotates in.
    pub store: Arc<dyn SecretStore>,
    /// The engine's queue (weak: the API never keeps the engine from draining).
    pub queue: mpsc::WeakSender<RotationRequest>,
    /// Whether the engine takes requests (not in standby, not shutting down).
    pub readiness: Readiness,
    /// The jobs, also the engine's observer.
    pub jobs: Arc<Jobs>,
    /// When versions are due, for `GET /api/secrets`.
    pub due_rule: DueRule,
    /// The vault-reading calls (`POST /api/rotations`, `GET /api/secrets`) that may run at
    /// once ([`ApiState::vault_calls`]); more get 429, so that callers cannot turn the API
    /// into a flood of Key Vault reads that throttles the engine and the vault's consumers.
    pub vault_calls: Arc<tokio::sync::Semaphore>,
}

impl ApiState {
    /// Vault-reading calls that may run at once.
    pub const VAULT_CALLS: usize = 2;

    /// A fresh limit of [`ApiState::VAULT_CALLS`].
    pub fn vault_calls() -> Arc<tokio::sync::Semaphore> {
        Arc::new(tokio::sync::Semaphore::new(Self::VAULT_CALLS))
    }
}

/// 429: another vault-reading call is running.
fn busy() -> Response {
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        format!("{} calls that read the vault are running; retry later", ApiState::VAULT_CALLS),
    );
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

/// The caller as authenticated, for handlers and the log.
#[derive(Debug, Clone)]
struct Caller(String);

/// The API's routes; see the [module docs](self).
pub fn router(state: ApiState) -> Router {
    let mut router = Router::new();
    let mut public = Router::new();
    for (method, path) in ROUTES {
        match (*method, *path) {
            ("POST", "/api/rotations") => router = router.route(path, post(post_rotations)),
            ("GET", "/api/rotations/{id}") => router = router.route(path, get(get_rotation)),
            ("GET", "/api/secrets") => router = router.route(path, get(get_secrets)),
            ("GET", "/api/openapi.json") => router = router.route(path, get(get_openapi)),
            ("GET", SERVICE_PROOF_ROUTE) => public = public.route(path, get(get_service_proof)),
            _ => unreachable!("ROUTES lists a route without a handler: {method} {path}"),
        };
    }
    router
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .merge(public)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `GET /api/service-proof/{nonce}`: `{"proof": hex}`, the HMAC of the caller's nonce
/// keyed by the digest of the static token or of the Entra ID mode's proof key; 404 in
/// the modes with neither.
async fn get_service_proof(State(state): State<ApiState>, Path(nonce): Path<String>) -> Response {
    let Some(digest) = state.auth.proof_digest() else {
        let why = match state.auth {
            AdminAuth::EntraId { .. } => "admin.auth mode entra-id without proof_file has no proof key".to_owned(),
            _ => format!("admin.auth mode {} has no static token to prove", state.auth.mode()),
        };
        return error(StatusCode::NOT_FOUND, why);
    };
    if !NONCE_HEX.contains(&nonce.len()) || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error(StatusCode::BAD_REQUEST, "nonce: 32 to 128 hex digits");
    }
    Json(json!({ "proof": hex::encode(super::auth::service_proof(digest, nonce.as_bytes())) })).into_response()
}

/// `{"error": message}` with `status`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// 503 with `Retry-After` and `body`.
fn unavailable(body: serde_json::Value) -> Response {
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

/// Why a request that a browser may have sent on a web page's behalf is refused, if it is:
/// a `Host` that names another site (DNS rebinding: a page whose name now resolves to
/// this loopback listener is same-origin with it), or an `Origin` or `Sec-Fetch-Site`
/// that says another site sent it. Tools (curl, `kv-rotator rotate`) send neither of the
/// latter and name the address they connect to.
fn cross_site(headers: &HeaderMap) -> Option<&'static str> {
    if let Some(why) = foreign_host(headers) {
        return Some(why);
    }
    if headers.contains_key(header::ORIGIN) {
        return Some("a browser sent it for a web page (Origin)");
    }
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() != b"none" && v.as_bytes() != b"same-origin") {
        return Some("a browser sent it for another site (Sec-Fetch-Site)");
    }
    None
}

/// Why the `Host` header is refused, if it is: it names a site, not an IP literal or
/// `localhost` (DNS rebinding). Also the status page's first check ([`super::page`]).
pub(super) fn foreign_host(headers: &HeaderMap) -> Option<&'static str> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    // An IP literal (v4, or v6 in brackets) or localhost, with or without a port.
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    if !(name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()) {
        return Some("the Host header names a site, not this listener's address (DNS rebinding)");
    }
    None
}

/// Refuses browser-borne requests ([`cross_site`]), checks the credential before anything
/// else runs, then logs the call with its caller.
async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let method = parts.method.clone();
    let path = sanitized(parts.uri.path(), 200);
    if let Some(why) = cross_site(&parts.headers) {
        warn!(target: "kv_rotator::admin", %method, %path, status = 403, "admin API call refused: {why}");
        return error(StatusCode::FORBIDDEN, format!("refused: {why}"));
    }
    let who = match state.auth.check(&parts).await {
        Ok(who) => who,
        Err(err) => {
            warn!(target: "kv_rotator::admin", %method, %path, status = err.status().as_u16(), error = %err,
                  "admin API call refused");
            let mut response = error(err.status(), err.to_string());
            if err.status() == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return response;
        }
    };
    parts.extensions.insert(Caller(who.clone()));
    let response = next.run(Request::from_parts(parts, body)).await;
    info!(target: "kv_rotator::admin", %who, %method, %path, status = response.status().as_u16(), "admin API call");
    response
}

/// The body of `POST /api/rotations`. A key given as `null` is refused, as the OpenAPI
/// document says (absent is the way to leave one out).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotationBody {
    #[serde(default, deserialize_with = "not_null")]
    secrets: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    tag: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "not_null")]
    all: Option<bool>,
    #[serde(default, deserialize_with = "not_null")]
    reason: Option<String>,
    #[serde(default)]
    force: bool,
    #[serde(default, deserialize_with = "whole_number")]
    concurrency: Option<u64>,
}

/// A present key's whole number: JSON Schema's `integer` is any number without a
/// fraction, `8.0` too; not `null`, and not a fraction or a negative number.
fn whole_number<'de, D: serde::Deserializer<'de>>(value: D) -> Result<Option<u64>, D::Error> {
    let number = serde_json::Number::deserialize(value)?;
    match (number.as_u64(), number.as_f64()) {
        (Some(whole), _) => Ok(Some(whole)),
        (None, Some(f)) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom(format!("{number} is not a whole number"))),
    }
}

/// A present key's value, which must not be `null`.
fn not_null<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(value: D) -> Result<Option<T>, D::Error> {
    T::deserialize(value).map(Some)
}

/// Most secrets of one job on the queue or rotating at once, when the job sets a limit.
pub const MAX_JOB_CONCURRENCY: usize = 256;

/// A checked `POST /api/rotations` body.
#[derive(Debug)]
struct Asked {
    selection: Selection,
    reason: String,
    force: bool,
    concurrency: Option<usize>,
}

/// Which secrets a job names.
#[derive(Debug)]
enum Selection {
    Named(Vec<String>),
    Tagged(BTreeMap<String, String>),
    All,
}

impl Selection {
    fn describe(&self) -> String {
        match self {
            Selection::Named(names) => format!("{} named secret(s)", names.len()),
            Selection::Tagged(tags) => {
                let tags: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("managed secrets tagged {}", sanitized(&tags.join(","), 200))
            }
            Selection::All => "all managed secrets".to_owned(),
        }
    }
}

/// Characters that change how text around them reads without showing: bidirectional
/// overrides and isolates, zero-width characters, line and paragraph separators, the
/// byte-order mark. A reason with one could read differently in a log than it is.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}')
}

/// Checks a body; the error says what is wrong and where.
fn validate(body: RotationBody) -> Result<Asked, String> {
    let reason = body.reason.ok_or("reason: required (why these secrets are rotated, for the audit log)")?;
    if reason.trim().is_empty() {
        return Err("reason: must not be empty".to_owned());
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(format!("reason: longer than {MAX_REASON_CHARS} characters"));
    }
    if let Some(at) = reason.chars().position(|c| c.is_control() || is_invisible_format(c)) {
        return Err(format!("reason: control or invisible formatting character at position {at}"));
    }
    let selection = match (body.secrets, body.tag, body.all) {
        (Some(names), None, None) => {
            if names.is_empty() {
                return Err("secrets: name at least one secret".to_owned());
            }
            for (i, name) in names.iter().enumerate() {
                if !kv_rotator_core::names::is_secret_name(name) {
                    return Err(format!(
                        "secrets[{i}]: {:?} is not a Key Vault secret name (1-127 of 0-9 a-z A-Z -)",
                        sanitized(name, 130)
                    ));
                }
            }
            // A name given twice is one secret, rotated once (Key Vault names ignore case).
            let mut seen = HashSet::new();
            Selection::Named(names.into_iter().filter(|name| seen.insert(name.to_ascii_lowercase())).collect())
        }
        (None, Some(tags), None) => {
            if tags.is_empty() {
                return Err("tag: name at least one tag, as {\"key\": \"value\"}".to_owned());
            }
            for (key, value) in &tags {
                if key.is_empty() || key.chars().count() > 512 || key.chars().any(char::is_control) {
                    return Err(format!(
                        "tag: {:?} is not a tag name (1-512 characters, no control characters)",
                        sanitized(key, 100)
                    ));
                }
                if value.chars().count() > MAX_TAG_CHARS || value.chars().any(char::is_control) {
                    return Err(format!(
                        "tag.{key}: not a tag value (at most {MAX_TAG_CHARS} characters, no control characters)"
                    ));
                }
            }
            Selection::Tagged(tags)
        }
        (None, None, Some(true)) => Selection::All,
        (None, None, Some(false)) => return Err("all: must be true when given".to_owned()),
        (None, None, None) => return Err("name the secrets: one of \"secrets\", \"tag\" or \"all\"".to_owned()),
        _ => return Err("\"secrets\", \"tag\" and \"all\" exclude each other: give exactly one".to_owned()),
    };
    let concurrency = match body.concurrency {
        None => None,
        Some(limit) => match usize::try_from(limit) {
            Ok(limit) if (1..=MAX_JOB_CONCURRENCY).contains(&limit) => Some(limit),
            _ => return Err(format!("concurrency: {limit} is not between 1 and {MAX_JOB_CONCURRENCY}")),
        },
    };
    Ok(Asked { selection, reason, force: body.force, concurrency })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// The names `selection` stands for, read from the vault now.
async fn names_of(store: &dyn SecretStore, selection: Selection) -> Result<Vec<String>, StoreError> {
    match selection {
        Selection::Named(names) => Ok(names),
        Selection::Tagged(tags) => crate::sweeper::managed_secrets(store, &tags).await,
        Selection::All => crate::sweeper::managed_secrets(store, &BTreeMap::new()).await,
    }
}

/// Secrets' latest versions read at once, at most this many at a time.
const RESOLVE_CONCURRENCY: usize = 16;

/// Each of `names` with its latest version read now, in order: an entry for the job (queued,
/// or failed when it cannot be read) and the requests to queue.
async fn resolve(
    store: &Arc<dyn SecretStore>,
    names: &[String],
    requested_by: &str,
    force: bool,
) -> (Vec<JobSecret>, Vec<RotationRequest>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(RESOLVE_CONCURRENCY));
    let mut reads = tokio::task::JoinSet::new();
    for (index, name) in names.iter().enumerate() {
        let (store, permits, name, requested_by) =
            (store.clone(), permits.clone(), name.clone(), requested_by.to_owned());
        reads.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let read = crate::cli::rotate::manual_request(store.as_ref(), &name, &requested_by, force).await;
            (index, read)
        });
    }
    let mut read: Vec<Option<Result<RotationRequest, StoreError>>> = names.iter().map(|_| None).collect();
    while let Some(done) = reads.join_next().await {
        // A read that panicked leaves its slot empty: reported below, not dropped.
        if let Ok((index, result)) = done {
            read[index] = Some(result);
        }
    }
    let mut entries = Vec::with_capacity(names.len());
    let mut requests = Vec::with_capacity(names.len());
    for (name, result) in names.iter().zip(read) {
        match result {
            Some(Ok(mut request)) => {
                let version = request.version.as_deref().unwrap_or_default().to_ascii_lowercase();
                request.version = Some(version.clone());
                entries.push(JobSecret::queued(name, &version));
                requests.push(request);
            }
            Some(Err(StoreError::NotFound { .. })) => {
                entries.push(JobSecret::unreadable(name, "cannot read it: no such secret".to_owned()));
            }
            Some(Err(e)) => entries.push(JobSecret::unreadable(name, sanitized(&format!("cannot read it: {e}"), 500))),
            None => entries.push(JobSecret::unreadable(name, "cannot read it: the read failed".to_owned())),
        }
    }
    (entries, requests)
}

/// 413: a job of `secrets` is more than the queue's `capacity`; nothing was `done`.
fn too_large(secrets: usize, capacity: usize, done: &str) -> Response {
    let why = format!(
        "{secrets} secrets are more than the rotation queue holds (engine.queue_capacity = {capacity}): split the \
         job, or give it a concurrency limit; nothing was {done}"
    );
    error(StatusCode::PAYLOAD_TOO_LARGE, why)
}

/// Remembers `job` and puts all its `requests` on the engine's queue at once; or the
/// refusal (413 or 503), with nothing queued and the job forgotten.
fn queue_together(
    queue: &mpsc::Sender<RotationRequest>,
    jobs: &Jobs,
    job: Job,
    requests: Vec<RotationRequest>,
) -> Option<Response> {
    if requests.is_empty() {
        jobs.insert(job);
        return None;
    }
    if requests.len() > queue.max_capacity() {
        return Some(too_large(requests.len(), queue.max_capacity(), "queued"));
    }
    let permits = match queue.try_reserve_many(requests.len()) {
        Ok(permits) => permits,
        Err(mpsc::error::TrySendError::Full(())) => {
            let why = format!(
                "the rotation queue has room for {} of the {} requests: nothing was queued; retry later",
                queue.capacity(),
                requests.len()
            );
            warn!(target: "kv_rotator::admin", who = %job.requested_by, job = %job.id, "{why}");
            return Some(unavailable(json!({ "error": why, "queued": [] })));
        }
        Err(mpsc::error::TrySendError::Closed(())) => {
            return Some(unavailable(json!({ "error": "the engine is not running", "queued": [] })));
        }
    };
    // Remembered before the engine can report on it.
    jobs.insert(job);
    for (permit, request) in permits.zip(requests) {
        permit.send(request);
    }
    None
}

/// `POST /api/rotations`; see the [module docs](self).
async fn post_rotations(
    State(state): State<ApiState>,
    Extension(Caller(who)): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_json(&headers) {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the body must be JSON (Content-Type: application/json)");
    }
    let body: RotationBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {}", sanitized(&e.to_string(), 300))),
    };
    let asked = match validate(body) {
        Ok(valid) => valid,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let id = match start_job(&state, &who, asked).await {
        Ok(id) => id,
        Err(refused) => return refused,
    };
    let job = state.jobs.get(&id).map(|job| json!(job)).unwrap_or_else(|| json!({ "id": id }));
    let mut response = (StatusCode::ACCEPTED, Json(job)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/rotations/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// A job of one secret asked for by the status page ([`super::page`]): checked as a body
/// of `POST /api/rotations` naming it, then started as that route starts one; its id.
pub(super) async fn start_one(
    state: &ApiState,
    who: &str,
    secret: String,
    reason: String,
    force: bool,
) -> Result<Uuid, Response> {
    let body = RotationBody {
        secrets: Some(vec![secret]),
        tag: None,
        all: None,
        reason: Some(reason),
        force,
        concurrency: None,
    };
    let asked = validate(body).map_err(|why| error(StatusCode::BAD_REQUEST, why))?;
    start_job(state, who, asked).await
}

/// Reads the selected secrets, queues them (all or none, or fed under the job's
/// concurrency limit) and remembers the job; its id, or the answer that refuses it.
async fn start_job(state: &ApiState, who: &str, asked: Asked) -> Result<Uuid, Response> {
    let Asked { selection, reason, force, concurrency } = asked;
    if let Err(why) = state.readiness.takes_requests() {
        return Err(unavailable(json!({ "error": format!("no rotation is taken now: {why}"), "queued": [] })));
    }
    let Ok(_reading) = state.vault_calls.clone().try_acquire_owned() else { return Err(busy()) };
    let selected = selection.describe();
    let names = match names_of(state.store.as_ref(), selection).await {
        Ok(names) => names,
        Err(e) => {
            let why = sanitized(&format!("cannot list the vault's secrets: {e}"), 500);
            return Err(unavailable(json!({ "error": why, "queued": [] })));
        }
    };
    // Before any secret is read: a job the queue could never hold reads nothing (one with
    // a concurrency limit holds at most that many places at once).
    let capacity = state.queue.upgrade().map_or(0, |queue| queue.max_capacity());
    if concurrency.is_none() && names.len() > capacity {
        return Err(too_large(names.len(), capacity, "read or queued"));
    }
    let id = Uuid::new_v4();
    let trigger_by = jobs::requested_by(who, id);
    let (entries, requests) = resolve(&state.store, &names, &trigger_by, force).await;
    let Some(queue) = state.queue.upgrade() else {
        return Err(unavailable(json!({ "error": "the service is shutting down", "queued": [] })));
    };
    let created = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
    let job = Job {
        id,
        created,
        requested_by: who.to_owned(),
        reason: reason.clone(),
        force,
        concurrency,
        done: false,
        secrets: entries,
    };
    if concurrency.is_some() {
        // Remembered before the engine can report on it.
        state.jobs.insert(job);
        tokio::spawn(jobs::feed(state.jobs.clone(), id, requests, state.queue.clone()));
    } else if let Some(refused) = queue_together(&queue, &state.jobs, job, requests) {
        return Err(refused);
    }
    info!(
        target: "kv_rotator::admin", %who, job = %id, reason = %reason, force, selection = %selected,
        secrets = names.len(), "admin API: rotation job queued"
    );
    Ok(id)
}

/// `GET /api/rotations/{id}`.
async fn get_rotation(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let Ok(uuid) = Uuid::parse_str(&id) else {
        return error(StatusCode::BAD_REQUEST, "id: not a job id (a UUID)");
    };
    match state.jobs.get(&uuid) {
        Some(job) => Json(job).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no job {uuid}: jobs are kept in this process's memory, the last {} only", jobs::MAX_JOBS),
        ),
    }
}

/// `GET /api/secrets`.
async fn get_secrets(State(state): State<ApiState>) -> Response {
    match read_secrets(&state).await {
        Ok(view) => Json(view).into_response(),
        Err(refused) => refused,
    }
}

/// What `GET /api/secrets` answers (also the status page's): read through the vault-call
/// limit, or the answer that refuses it.
pub(super) async fn read_secrets(state: &ApiState) -> Result<StatusView, Response> {
    let Ok(_reading) = state.vault_calls.clone().try_acquire_owned() else { return Err(busy()) };
    crate::cli::status::read_status(state.store.as_ref(), &state.due_rule)
        .await
        .map_err(|e| unavailable(json!({ "error": sanitized(&format!("{e:#}"), 1000) })))
}

/// `GET /api/openapi.json`.
async fn get_openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> Result<(Selection, String, bool), String> {
        validate(serde_json::from_value(json).map_err(|e| e.to_string())?).map(|a| (a.selection, a.reason, a.force))
    }

    #[test]
    fn bodies_are_checked_and_errors_say_what_and_where() {
        let ok = body(json!({"secrets": ["a-1", "b"], "reason": "leak", "force": true})).unwrap();
        let whole = validate(serde_json::from_value(json!({"all": true, "reason": "r", "concurrency": 8.0})).unwrap());
        assert_eq!(whole.unwrap().concurrency, Some(8), "8.0 is an integer to JSON Schema");
        let twice = body(json!({"secrets": ["a", "b", "A"], "reason": "r"})).unwrap().0;
        assert!(matches!(twice, Selection::Named(ref n) if n == &["a", "b"]), "one secret, once: {twice:?}");
        assert!(matches!(ok.0, Selection::Named(ref n) if n.len() == 2) && ok.2);
        assert!(matches!(body(json!({"all": true, "reason": "incident"})).unwrap().0, Selection::All));
        assert!(matches!(body(json!({"tag": {"host": "db1"}, "reason": "x"})).unwrap().0, Selection::Tagged(_)));
        for (bad, expected) in [
            (json!({"secrets": ["a"]}), "reason: required"),
            (json!({"secrets": ["a"], "reason": "  "}), "reason: must not be empty"),
            (json!({"secrets": ["a"], "reason": "x".repeat(201)}), "longer than 200"),
            (
                json!({"secrets": ["a"], "reason": "a\u{1b}[31m"}),
                "control or invisible formatting character at position 1",
            ),
            (json!({"secrets": [], "reason": "r"}), "secrets: name at least one"),
            (json!({"secrets": ["ok", "bad_name"], "reason": "r"}), "secrets[1]: \"bad_name\" is not a Key Vault"),
            (json!({"secrets": ["a"], "all": true, "reason": "r"}), "exclude each other"),
            (json!({"all": false, "reason": "r"}), "all: must be true"),
            (json!({"reason": "r"}), "one of \"secrets\", \"tag\" or \"all\""),
            (json!({"tag": {}, "reason": "r"}), "tag: name at least one"),
            (json!({"secrets": ["a"], "reason": "r", "forse": true}), "unknown field `forse`"),
            (json!({"secrets": "a", "reason": "r"}), "invalid type"),
            (json!({"all": true, "reason": "r", "concurrency": 0}), "concurrency: 0 is not between 1 and 256"),
            (json!({"all": true, "reason": "r", "concurrency": 257}), "concurrency: 257 is not between"),
            (json!({"all": true, "reason": "r", "concurrency": null}), "invalid type: null"),
            (json!({"all": true, "reason": "r", "concurrency": 2.5}), "2.5 is not a whole number"),
            (json!({"all": true, "reason": "r", "concurrency": -1}), "-1 is not a whole number"),
            (json!({"all": true, "secrets": null, "reason": "r"}), "invalid type: null"),
        ] {
            let err = body(bad.clone()).unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn the_openapi_document_names_every_route_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"].as_str().unwrap().get(..3), Some("3.1"));
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let mut served: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }
}
