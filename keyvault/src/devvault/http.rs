//! The REST surface: one axum fallback handler in front of [`Vault`].
//!
//! Each request goes through, in order: the bearer check (401 with the challenge, before
//! the body is looked at, since the SDK's first request carries none), the api-version
//! check, routing on method and path segments, and the operation. Every answer then gets
//! the headers the service sends (`Cache-Control`, `x-ms-request-id`, ...).
//!
//! Routing is by hand rather than by axum paths: the service ignores empty segments
//! (the SDK asks for `/secrets/{name}/` for the latest version), and a static
//! `/secrets/restore` route would shadow GET of a secret named `restore`.
//!
//! Listings page with `maxresults` (1 to 25, default 25) and an opaque `$skiptoken`
//! carried in `nextLink`, an absolute https URL on the vault host and our port. The
//! query is parsed loosely: any order, percent-encoded keys (`%24skiptoken`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use azure_core::base64;
use serde::{Deserialize, Serialize};

use super::errors::ApiError;
use super::faults::{Gate, Operation, Verdict};
use super::persist::StateFile;
use super::state::{Bundle, Page, SetParams, UpdateParams, Vault};
use kv_rotator_core::names::is_secret_name;

/// The api-version the dev vault implements, and the one `nextLink`s fall back to.
pub(crate) const API_VERSION: &str = "2025-07-01";

/// Versions the service accepts whose secrets API has the same shape as 2025-07-01.
const KNOWN_API_VERSIONS: &[&str] = &["7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", API_VERSION];

/// Page size when `maxresults` is absent, and its largest allowed value.
const MAX_PAGE: usize = 25;

/// Largest request body read; far above what a 25 KiB value or a backup blob needs.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

const JSON: &str = "application/json; charset=utf-8";

/// What the handler shares: the state and what it needs to write ids and links.
#[derive(Debug)]
pub(crate) struct Shared {
    pub vault: Mutex<Vault>,
    /// `{vault}.vault.azure.net`.
    pub host: String,
    /// The port we listen on, for `nextLink`s.
    pub port: u16,
    pub tenant_id: String,
    /// Throttle and injected faults.
    pub gate: Gate,
    /// Where the state is saved after each change, in persistent mode.
    pub state_file: Option<StateFile>,
}

impl Shared {
    pub(crate) fn vault(&self) -> MutexGuard<'_, Vault> {
        // A panic while holding the lock leaves the map whole; keep serving.
        self.vault.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a change on the vault and, in persistent mode, saves the result before the
    /// lock is released (so the file never lags behind an answer already sent).
    fn change<T>(&self, f: impl FnOnce(&mut Vault) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let mut vault = self.vault();
        let result = f(&mut vault)?;
        if let Some(file) = &self.state_file {
            if let Err(error) = file.save(&vault) {
                tracing::error!(%error, "dev vault: the change is kept in memory but was not saved");
            }
        }
        Ok(result)
    }
}

/// The dev vault's app.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let mut response = match serve(&shared, request).await {
        Ok(response) => response,
        Err(error) => error_response(&shared, &error),
    };
    add_service_headers(response.headers_mut(), peer);
    response
}

fn error_response(shared: &Shared, error: &ApiError) -> Response {
    let mut response = json_response(error.status, error.body());
    if error.status == StatusCode::UNAUTHORIZED {
        let challenge = format!(
            "Bearer authorization=\"https://login.microsoftonline.com/{}\", resource=\"https://vault.azure.net\"",
            shared.tenant_id
        );
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

fn ok_json(body: &impl Serialize) -> Response {
    json_response(StatusCode::OK, serde_json::to_vec(body).unwrap_or_default())
}

/// The answer to a write. Test builds with `leak-ledger` also capture what the write left
/// on the secret — name, tags, content type, attributes; never the value, which holds a
/// password by design — for the leak scanner.
fn written(bundle: Bundle) -> Response {
    #[cfg(feature = "leak-ledger")]
    kv_rotator_leakscan::capture(
        "devvault",
        &serde_json::to_string(&Bundle { value: None, ..bundle.clone() }).unwrap_or_default(),
    );
    ok_json(&bundle)
}

/// The headers every answer of the service carries (see the recordings).
fn add_service_headers(headers: &mut HeaderMap, peer: Option<SocketAddr>) {
    let fixed = [
        ("cache-control", "no-cache"),
        ("pragma", "no-cache"),
        ("expires", "-1"),
        ("strict-transport-security", "max-age=31536000;includeSubDomains"),
        ("x-content-type-options", "nosniff"),
        ("x-ms-keyvault-region", "devvault"),
        ("x-ms-keyvault-service-version", concat!("kv-rotator-devvault/", env!("CARGO_PKG_VERSION"))),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("x-ms-request-id", id);
    }
    let network = match peer {
        Some(SocketAddr::V4(a)) => format!("conn_type=Ipv4;addr={};act_addr_fam=InterNetwork;", a.ip()),
        Some(SocketAddr::V6(a)) => format!("conn_type=Ipv6;addr={};act_addr_fam=InterNetworkV6;", a.ip()),
        None => "conn_type=Ipv4;addr=127.0.0.1;act_addr_fam=InterNetwork;".to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&network) {
        headers.insert("x-ms-keyvault-network-info", value);
    }
}

/// Any non-empty bearer token is accepted; the dev vault authorizes nothing further.
fn authorized(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, token)) = value.split_once(' ') else { return false };
    scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()
}

/// The query parameters the API reads.
#[derive(Debug, Default)]
struct Query {
    api_version: Option<String>,
    maxresults: Option<String>,
    skiptoken: Option<String>,
}

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        let mut query = Query::default();
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let slot = if key.eq_ignore_ascii_case("api-version") {
                &mut query.api_version
            } else if key.eq_ignore_ascii_case("maxresults") {
                &mut query.maxresults
            } else if key.eq_ignore_ascii_case("$skiptoken") {
                &mut query.skiptoken
            } else {
                continue;
            };
            *slot = Some(value.into_owned());
        }
        query
    }

    /// Best guess for the error: the service's message for a bad maxresults is not public.
    fn page_size(&self) -> Result<usize, ApiError> {
        match &self.maxresults {
            None => Ok(MAX_PAGE),
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_parameter(format!(
                    "The value of maxresults ({raw}) must be an integer from 1 to {MAX_PAGE}."
                ))),
            },
        }
    }
}

/// One operation of the API, with its path parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op<'a> {
    List,
    Restore,
    Set(&'a str),
    Get(&'a str, Option<&'a str>),
    Update(&'a str, Option<&'a str>),
    Delete(&'a str),
    Versions(&'a str),
    Backup(&'a str),
    ListDeleted,
    GetDeleted(&'a str),
    Purge(&'a str),
    Recover(&'a str),
}

impl<'a> Op<'a> {
    fn route(method: &Method, segments: &[&'a str]) -> Result<Self, ApiError> {
        let op = match (segments, method) {
            (["secrets"], &Method::GET) => Op::List,
            (["secrets", "restore"], &Method::POST) => Op::Restore,
            (["secrets", name], &Method::PUT) => Op::Set(name),
            (["secrets", name], &Method::GET) => Op::Get(name, None),
            (["secrets", name], &Method::PATCH) => Op::Update(name, None),
            (["secrets", name], &Method::DELETE) => Op::Delete(name),
            (["secrets", name, "versions"], &Method::GET) => Op::Versions(name),
            (["secrets", name, "backup"], &Method::POST) => Op::Backup(name),
            (["secrets", name, version], &Method::GET) => Op::Get(name, Some(version)),
            (["secrets", name, version], &Method::PATCH) => Op::Update(name, Some(version)),
            (["deletedsecrets"], &Method::GET) => Op::ListDeleted,
            (["deletedsecrets", name], &Method::GET) => Op::GetDeleted(name),
            (["deletedsecrets", name], &Method::DELETE) => Op::Purge(name),
            (["deletedsecrets", name, "recover"], &Method::POST) => Op::Recover(name),
            (["secrets"] | ["secrets", _] | ["secrets", _, _], _)
            | (["deletedsecrets"] | ["deletedsecrets", _] | ["deletedsecrets", _, "recover"], _) => {
                return Err(ApiError::method_not_allowed())
            }
            _ => return Err(ApiError::no_such_route()),
        };
        Ok(op)
    }

    /// The operation family faults are aimed at.
    fn operation(self) -> Operation {
        match self {
            Op::List | Op::ListDeleted | Op::Versions(_) => Operation::List,
            Op::Get(..) => Operation::Get,
            Op::Set(_) => Operation::Set,
            Op::Update(..) => Operation::Update,
            Op::Delete(_) => Operation::Delete,
            Op::GetDeleted(_) | Op::Purge(_) | Op::Recover(_) => Operation::Deleted,
            Op::Backup(_) | Op::Restore => Operation::Backup,
        }
    }

    fn name(self) -> Option<&'a str> {
        match self {
            Op::List | Op::Restore | Op::ListDeleted => None,
            Op::Set(n)
            | Op::Get(n, _)
            | Op::Update(n, _)
            | Op::Delete(n)
            | Op::Versions(n)
            | Op::Backup(n)
            | Op::GetDeleted(n)
            | Op::Purge(n)
            | Op::Recover(n) => Some(n),
        }
    }
}

/// `{"value": ..., "nextLink": ...}` of every listing.
#[derive(Serialize)]
struct ListBody {
    value: Vec<Bundle>,
    #[serde(rename = "nextLink")]
    next_link: Option<String>,
}

/// Body of backup's answer and of restore's request.
#[derive(Serialize, Deserialize)]
struct BlobBody {
    value: Option<String>,
}

async fn serve(shared: &Shared, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    if !authorized(&parts.headers) {
        return Err(ApiError::unauthorized());
    }
    let query = Query::parse(parts.uri.query());
    let api_version = match query.api_version.as_deref() {
        None => return Err(ApiError::missing_api_version()),
        Some(v) if !KNOWN_API_VERSIONS.contains(&v) => return Err(ApiError::unknown_api_version(v, API_VERSION)),
        Some(v) => v.to_string(),
    };
    let segments: Vec<String> = parts.uri.path().split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let op = Op::route(&parts.method, &segments)?;
    if let Some(name) = op.name() {
        if !is_secret_name(name) {
            return Err(ApiError::invalid_name(name));
        }
    }
    let (verdict, latency) = shared.gate.admit(op.operation());
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let drop_answer = matches!(verdict, Verdict::DropAfter);
    match verdict {
        Verdict::Serve | Verdict::DropAfter => {}
        Verdict::Drop => return Ok(dropped_connection()),
        Verdict::Fail(error, retry_after) => {
            let mut response = error_response(shared, &error);
            if let Some(seconds) = retry_after {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            return Ok(response);
        }
    }
    let lister = Lister { shared, query: &query, api_version: &api_version };
    let answer = match op {
        Op::List => lister.list("/secrets", "secrets", |vault, after, max| vault.list(after, max)),
        Op::ListDeleted => {
            lister.list("/deletedsecrets", "deleted", |vault, after, max| vault.list_deleted(after, max))
        }
        Op::Versions(name) => {
            let kind = format!("versions:{}", name.to_ascii_lowercase());
            let path = format!("/secrets/{name}/versions");
            lister.list(&path, &kind, |vault, after, max| vault.list_versions(name, after, max))
        }
        Op::Set(name) => {
            let params: SetParams = json_body(body).await?;
            shared.change(|vault| vault.set(name, params)).map(written)
        }
        Op::Get(name, version) => shared.vault().get(name, version).map(|b| ok_json(&b)),
        Op::Update(name, version) => {
            let params: UpdateParams = json_body(body).await?;
            shared.change(|vault| vault.update(name, version, params)).map(written)
        }
        Op::Delete(name) => shared.change(|vault| vault.delete(name)).map(written),
        Op::GetDeleted(name) => shared.vault().get_deleted(name).map(|b| ok_json(&b)),
        Op::Purge(name) => {
            shared.change(|vault| vault.purge(name))?;
            // 204 without a body or Content-Type, as recorded.
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            Ok(response)
        }
        Op::Recover(name) => shared.change(|vault| vault.recover(name)).map(written),
        Op::Backup(name) => {
            let blob = shared.vault().backup(name)?;
            Ok(ok_json(&BlobBody { value: Some(base64::encode_url_safe(blob)) }))
        }
        Op::Restore => {
            let BlobBody { value } = json_body(body).await?;
            // Best guess: the service's messages for a missing or undecodable blob are not public.
            let encoded = value.ok_or_else(|| ApiError::bad_parameter("Property 'value' is required."))?;
            let blob = base64::decode_url_safe(encoded)
                .map_err(|_| ApiError::bad_parameter("The backup blob is invalid or corrupt."))?;
            shared.change(|vault| vault.restore(&blob)).map(written)
        }
    };
    if drop_answer {
        return Ok(dropped_connection());
    }
    answer
}

/// An answer whose body fails at once: hyper closes the connection without a complete
/// response, which the client sees as a dropped connection (an I/O error).
fn dropped_connection() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, _>(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection dropped by the dev vault"))
    });
    Response::new(Body::from_stream(failing))
}

/// Pages one listing: decodes the skiptoken, asks the vault, writes the nextLink.
struct Lister<'a> {
    shared: &'a Shared,
    query: &'a Query,
    api_version: &'a str,
}

impl Lister<'_> {
    /// `kind` ties a skiptoken to its listing, so one from another listing is refused.
    fn list(
        &self,
        path: &str,
        kind: &str,
        fetch: impl FnOnce(&Vault, Option<&str>, usize) -> Page,
    ) -> Result<Response, ApiError> {
        let max = self.query.page_size()?;
        let after = match &self.query.skiptoken {
            None => None,
            Some(token) => Some(decode_skiptoken(token, kind)?),
        };
        let page = fetch(&self.shared.vault(), after.as_deref(), max);
        let next_link = page.next_after.map(|cursor| {
            let token = base64::encode_url_safe(format!("{kind}\n{cursor}"));
            let mut link = format!(
                "https://{}:{}{path}?api-version={}&$skiptoken={token}",
                self.shared.host, self.shared.port, self.api_version
            );
            if let Some(raw) = &self.query.maxresults {
                link.push_str(&format!("&maxresults={raw}"));
            }
            link
        });
        Ok(ok_json(&ListBody { value: page.items, next_link }))
    }
}

/// Best guess for the error: the service's message for a bad skiptoken is not public.
fn decode_skiptoken(token: &str, kind: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::bad_parameter(format!("The $skiptoken ({token}) is invalid."));
    let bytes = base64::decode_url_safe(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    match text.split_once('\n') {
        Some((k, cursor)) if k == kind => Ok(cursor.to_string()),
        _ => Err(invalid()),
    }
}

/// Reads a JSON body; a missing or malformed one is a 400 (best guess for the messages).
async fn json_body<T: for<'de> Deserialize<'de>>(body: Body) -> Result<T, ApiError> {
    let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::bad_parameter("The request body could not be read."))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_parameter("The request body is missing."));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_parameter(format!("The request body is invalid: {e}")))
}

/// Decodes `%XX` escapes of one path segment; anything malformed is kept as written.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_parsed_loosely() {
        let q = Query::parse(Some("maxresults=6&%24skiptoken=abc&api-version=2025-07-01"));
        assert_eq!(q.api_version.as_deref(), Some("2025-07-01"));
        assert_eq!(q.skiptoken.as_deref(), Some("abc"));
        assert_eq!(q.page_size().unwrap(), 6);
        assert!(Query::parse(Some("maxresults=26")).page_size().is_err());
        assert!(Query::parse(Some("maxresults=0")).page_size().is_err());
    }

    #[test]
    fn routes_ignore_empty_segments_and_keep_restore_as_a_name() {
        assert_eq!(Op::route(&Method::GET, &["secrets", "restore"]).unwrap(), Op::Get("restore", None));
        assert_eq!(Op::route(&Method::POST, &["secrets", "restore"]).unwrap(), Op::Restore);
        assert_eq!(Op::route(&Method::POST, &["secrets"]).unwrap_err().status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(Op::route(&Method::GET, &["keys"]).unwrap_err().status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Db"), "a-b");
        assert_eq!(percent_decode("bad%2"), "bad%2");
        assert_eq!(percent_decode("%"), "%");
    }

    #[test]
    fn bearer_tokens() {
        let mut headers = HeaderMap::new();
        assert!(!authorized(&headers));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert!(!authorized(&headers));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer x"));
        assert!(authorized(&headers));
    }
}
