//! The status page, on the admin listener next to the API (when `[admin.auth]` is set):
//! server-rendered HTML ([`html`]), no script, no front-end build.
//!
//! - `GET /status`: the managed secrets on an expiry timeline with their last failure tag
//!   (what `GET /api/secrets` reads, through the same call), unfinished journal records, the
//!   recent jobs of the admin API, and a rotate form per secret (a reason, and `force` only
//!   when its box is ticked).
//! - `POST /status/rotate`: a job of one secret, started as `POST /api/rotations` starts
//!   one; then `GET /status/jobs/{id}`, which reloads itself until the job has ended.
//! - `GET`/`POST /status/login`, `POST /status/logout`: the browser's session.
//!
//! How a browser authenticates without weakening the API's defences:
//! - static token: the login form takes the token once (a POST); the browser then holds a
//!   random session id ([`session`]) in an `HttpOnly`, `SameSite=Strict` cookie, kept here
//!   with an expiry. The token is never in a cookie, a URL or the page.
//! - `none` (loopback only): no login; a session is opened on the first visit, for its
//!   CSRF token.
//! - Entra ID: the page is not served (501 saying why): a browser cannot get a bearer token
//!   without an OAuth sign-in flow, which this page does not have. The API serves as before.
//!
//! The page is served to loopback peers only: the admin listener speaks plain HTTP, so the
//! token and the session must not cross a network (a port-forward or an SSH tunnel ends on
//! loopback). Every request's `Host` must name an address, not a site (DNS rebinding, as the API
//! checks); a `Sec-Fetch-Site` other than `same-origin` (or `none` for a `GET` typed in or
//! bookmarked) is refused, and so is a `POST` whose `Origin` is not this listener; every
//! `POST` but the login carries the session's CSRF token. Answers forbid framing, caching,
//! scripts and referrers. Form bodies are at most [`MAX_FORM_BYTES`].

mod html;
pub mod session;

use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::Markup;
use serde::Deserialize;
use tracing::{info, warn};
use uuid::Uuid;

use self::session::{Session, Sessions};
use super::api::{self, ApiState};
use super::auth::AdminAuth;
use crate::logging::sanitized;

/// The status page.
pub const PAGE_PATH: &str = "/status";
/// The login form (static-token mode).
pub const LOGIN_PATH: &str = "/status/login";
/// Ends the session.
pub const LOGOUT_PATH: &str = "/status/logout";
/// Starts a job of one secret.
pub const ROTATE_PATH: &str = "/status/rotate";
/// A job's page is `{JOBS_PATH}/{id}`.
pub const JOBS_PATH: &str = "/status/jobs";
/// Largest form body.
pub const MAX_FORM_BYTES: usize = 8 * 1024;
/// Longest token the login form takes, in bytes.
const MAX_TOKEN_BYTES: usize = 1024;
/// Jobs the page lists.
const RECENT_JOBS: usize = 20;
/// What every answer of the page says about itself: no script, no framing, no caching.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
    // Not `no-referrer`: with it a browser sends `Origin: null` on the page's own forms.
    ("referrer-policy", "same-origin"),
    ("x-content-type-options", "nosniff"),
];

/// What the page's routes read. Cheap to clone.
#[derive(Debug, Clone)]
struct PageState {
    api: ApiState,
    sessions: Arc<Sessions>,
}

/// The page's routes over the admin API's state; see the [module docs](self).
pub fn router(api: ApiState) -> Router {
    let state = PageState { api, sessions: Arc::new(Sessions::default()) };
    Router::new()
        .route(PAGE_PATH, get(get_page))
        .route(LOGIN_PATH, get(get_login).post(post_login))
        .route(LOGOUT_PATH, post(post_logout))
        .route(ROTATE_PATH, post(post_rotate))
        .route(&format!("{JOBS_PATH}/{{id}}"), get(get_job))
        .layer(middleware::from_fn(guard))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(state)
}

/// Why a request is refused before anything else runs, if it is; see the [module docs](self).
fn refused(method: &Method, headers: &HeaderMap) -> Option<&'static str> {
    if let Some(why) = api::foreign_host(headers) {
        return Some(why);
    }
    let fetch_site = headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
    if method == Method::GET || method == Method::HEAD {
        return match fetch_site {
            None | Some(b"same-origin" | b"none") => None,
            Some(_) => Some("a browser sent it for another site (Sec-Fetch-Site): open the page directly"),
        };
    }
    if fetch_site.is_some_and(|site| site != b"same-origin") {
        return Some("a browser sent it for another site (Sec-Fetch-Site)");
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    match headers.get(header::ORIGIN).map(|o| o.to_str().unwrap_or("")) {
        Some(origin) if origin.strip_prefix("http://") != Some(host) => Some("another site's page sent it (Origin)"),
        _ => None,
    }
}

/// Why a request from `peer` is refused: the page (and its login, which takes the admin
/// token) is served to loopback peers only — the admin listener speaks plain HTTP, so a
/// token or session typed in elsewhere would cross the network in clear. A listener
/// bound to a wildcard address (for probes) serves the page through a port-forward.
fn remote_peer(peer: Option<std::net::SocketAddr>) -> Option<&'static str> {
    match peer {
        Some(peer) if peer.ip().is_loopback() => None,
        Some(_) => Some(
            "the status page is served to this host only (the admin listener is plain HTTP, the token and the \
             session would cross the network in clear): open it through an SSH tunnel or a port-forward",
        ),
        None => Some("the peer's address is unknown"),
    }
}

/// Refuses requests from another host ([`remote_peer`]), cross-site and rebinding
/// requests ([`refused`]), and marks every answer ([`SECURITY_HEADERS`]).
async fn guard(request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|info| info.0);
    let why = remote_peer(peer).or_else(|| refused(request.method(), request.headers()));
    let mut response = match why {
        Some(why) => {
            let path = sanitized(request.uri().path(), 200);
            warn!(target: "kv_rotator::admin", method = %request.method(), %path, status = 403,
                  "status page request refused: {why}");
            page(StatusCode::FORBIDDEN, html::message("Refused", &format!("Refused: {why}.")))
        }
        None => next.run(request).await,
    };
    for (name, value) in SECURITY_HEADERS {
        response.headers_mut().insert(name, HeaderValue::from_static(value));
    }
    response
}

fn page(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

/// 501 in Entra ID mode; see the [module docs](self).
fn entra_unavailable() -> Response {
    let why = "The status page needs [admin.auth] mode \"static-token\" (or \"none\" on loopback): a browser \
               cannot obtain an Entra ID bearer token without an OAuth sign-in flow, which this page does not \
               have. Use the admin API (kv-rotator status, GET /api/secrets) with a token.";
    page(StatusCode::NOT_IMPLEMENTED, html::message("Status page unavailable", why))
}

/// `response` handing a new session's cookie to the browser.
fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// The session of a `GET`, or the answer for a browser without one: the login form (a
/// redirect), or in `none` mode a new session and its cookie.
fn session_or(state: &PageState, headers: &HeaderMap) -> Result<(Session, Option<String>), Box<Response>> {
    if let Some(session) = state.sessions.find(headers) {
        return Ok((session, None));
    }
    match &state.api.auth {
        AdminAuth::EntraId { .. } => Err(Box::new(entra_unavailable())),
        AdminAuth::None => {
            let (id, session) = state.sessions.open("anonymous (admin.auth mode none)");
            Ok((session, Some(session::set_cookie(&id, PAGE_PATH))))
        }
        AdminAuth::StaticToken(_) => Err(Box::new(Redirect::to(LOGIN_PATH).into_response())),
    }
}

/// The session of a form, whose `csrf` must be the session's; else 403.
fn form_session(state: &PageState, headers: &HeaderMap, csrf: &str) -> Result<Session, Box<Response>> {
    let Some(session) = state.sessions.find(headers) else {
        let why = "No session: open the status page first (and log in when asked).";
        return Err(Box::new(page(StatusCode::FORBIDDEN, html::message("Not logged in", why))));
    };
    if !session.csrf_matches(csrf) {
        warn!(target: "kv_rotator::admin", who = %session.who, status = 403, "status page form refused: bad CSRF token");
        let why = "The form's CSRF token is missing or not this session's: reload the status page and try again.";
        return Err(Box::new(page(StatusCode::FORBIDDEN, html::message("Refused", why))));
    }
    Ok(session)
}

/// `GET /status`.
async fn get_page(State(state): State<PageState>, headers: HeaderMap) -> Response {
    let (session, cookie) = match session_or(&state, &headers) {
        Ok(found) => found,
        Err(answer) => return *answer,
    };
    let (view, vault_error) = match api::read_secrets(&state.api).await {
        Ok(view) => (Some(html::view_json(&view)), None),
        Err(refused) => (None, Some(refusal_text(refused).await.1)),
    };
    let jobs = state.api.jobs.recent(RECENT_JOBS);
    let vault = state.api.store.vault_name().to_owned();
    let markup = html::status(&vault, &session.who, &session.csrf, view.as_ref(), vault_error.as_deref(), &jobs);
    let response = page(StatusCode::OK, markup);
    match cookie {
        Some(cookie) => with_cookie(response, &cookie),
        None => response,
    }
}

/// `GET /status/login`.
async fn get_login(State(state): State<PageState>) -> Response {
    match state.api.auth {
        AdminAuth::StaticToken(_) => page(StatusCode::OK, html::login(None)),
        AdminAuth::None => Redirect::to(PAGE_PATH).into_response(),
        AdminAuth::EntraId { .. } => entra_unavailable(),
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /status/login`: the static token, checked as the API checks a bearer token.
async fn post_login(State(state): State<PageState>, Form(form): Form<LoginForm>) -> Response {
    if let AdminAuth::EntraId { .. } = state.api.auth {
        return entra_unavailable();
    }
    if form.token.len() > MAX_TOKEN_BYTES {
        return page(StatusCode::BAD_REQUEST, html::login(Some("The token is longer than any admin token.")));
    }
    let who = match state.api.auth.check_static_token(form.token.as_bytes()) {
        Ok(who) => who,
        Err(err) => {
            warn!(target: "kv_rotator::admin", status = 401, error = %err, "status page login refused");
            return page(StatusCode::UNAUTHORIZED, html::login(Some("That is not the admin token.")));
        }
    };
    let (id, _) = state.sessions.open(&format!("{who} (status page)"));
    info!(target: "kv_rotator::admin", %who, "status page login");
    with_cookie(Redirect::to(PAGE_PATH).into_response(), &session::set_cookie(&id, PAGE_PATH))
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /status/logout`.
async fn post_logout(State(state): State<PageState>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    if let Err(answer) = form_session(&state, &headers, &form.csrf) {
        return *answer;
    }
    state.sessions.close(&headers);
    let to = if matches!(state.api.auth, AdminAuth::StaticToken(_)) { LOGIN_PATH } else { PAGE_PATH };
    with_cookie(Redirect::to(to).into_response(), &session::clear_cookie(PAGE_PATH))
}

#[derive(Debug, Deserialize)]
struct RotateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    reason: String,
    /// The checkbox: sent (as `yes`) only when ticked.
    #[serde(default)]
    force: Option<String>,
}

/// `POST /status/rotate`: a job of one secret, then its page.
async fn post_rotate(State(state): State<PageState>, headers: HeaderMap, Form(form): Form<RotateForm>) -> Response {
    let session = match form_session(&state, &headers, &form.csrf) {
        Ok(session) => session,
        Err(answer) => return *answer,
    };
    let force = form.force.is_some_and(|v| v == "yes");
    match api::start_one(&state.api, &session.who, form.secret, form.reason, force).await {
        Ok(id) => Redirect::to(&format!("{JOBS_PATH}/{id}")).into_response(),
        Err(refused) => {
            let (status, why) = refusal_text(refused).await;
            warn!(target: "kv_rotator::admin", who = %session.who, status = status.as_u16(),
                  "status page rotation refused: {why}");
            page(status, html::message("Rotation refused", &why))
        }
    }
}

/// `GET /status/jobs/{id}`.
async fn get_job(State(state): State<PageState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    // Shown with a session, but never opening one: in `none` mode, cookie-less callers
    // (a script polling the page) would otherwise crowd the browser's session out.
    let anonymous = matches!(state.api.auth, AdminAuth::None);
    if !anonymous {
        if let Err(answer) = session_or(&state, &headers) {
            return *answer;
        }
    }
    let Ok(id) = Uuid::parse_str(&id) else {
        return page(StatusCode::BAD_REQUEST, html::message("No such job", "Not a job id (a UUID)."));
    };
    match state.api.jobs.get(&id) {
        Some(job) => page(StatusCode::OK, html::job(&job)),
        None => page(
            StatusCode::NOT_FOUND,
            html::message("No such job", "Jobs are kept in the service's memory: it may have restarted."),
        ),
    }
}

/// The status and the `error` of an API answer that refused something.
async fn refusal_text(response: Response) -> (StatusCode, String) {
    let status = response.status();
    let body = to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    let why = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("refused ({status})"));
    (status, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_loopback_peer_is_served() {
        for peer in ["127.0.0.1:50000", "127.0.0.2:1", "[::1]:443"] {
            assert_eq!(remote_peer(Some(peer.parse().unwrap())), None, "{peer}");
        }
        for peer in ["10.0.0.5:50000", "192.168.1.2:1", "[2001:db8::1]:443", "0.0.0.0:1"] {
            let why = remote_peer(Some(peer.parse().unwrap())).unwrap_or_else(|| panic!("{peer} was served"));
            assert!(why.contains("this host only"), "{why}");
        }
        assert!(remote_peer(None).is_some(), "no peer known: refused");
    }
}
