//! `kv-rotator rotate` through a running service's admin API: one engine per vault.
//!
//! [`connect`] looks for a service on `[admin] listen` (a wildcard address is reached on
//! loopback); [`ApiClient::rotate`] posts the job, polls `GET /api/rotations/{id}` until
//! every secret has ended, and reports each secret's end to [`Progress`] as the in-process
//! `rotate` does.
//!
//! The credential is bound to a proven connection: `rotate` speaks HTTP/1 over a TCP
//! connection of its own ([`Connection`]), and on each new one, before anything else, has
//! the service prove who it is ([`prove_service`]). Only then does a credential go out, on
//! that connection alone, and only answers read from it are believed. When it is gone (the
//! service restarted, or closed it while idle), a new one is opened and proven again: a
//! program that took the port in between gets a proof request, never a credential, and
//! cannot fake a job's answer. No connection pool, no proxy, no redirect.
//!
//! The credential ([`Bearer`]) comes from the same `[admin.auth]` the service reads:
//! - `static-token`: the token's environment variable or file; the service proves it
//!   knows the token.
//! - `entra-id`: the service proves it knows the proof key it wrote to `proof_file` at
//!   startup (readable by its user and root only, so `rotate` runs as one of them; read
//!   again for each connection, as a restart writes a fresh one: [`super::proof_file`]);
//!   only then is a token asked for, from `client_credential` (default: the operator's `az`
//!   or `azd` login), for scope `{first audience}/.default`, and renewed while a job runs.
//!   Without `proof_file`, `rotate` does not go through the API.
//! - `none` (loopback only): nothing to prove and no credential; whatever answers is
//!   believed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use kv_rotator_config::{AdminAuthConfig, AdminConfig};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::bearer::Bearer;
use super::jobs::JobSecret;
use super::proof_file::read_proof_key;
use crate::cli::progress::{OutputFormat, Progress};

/// How often a job is polled.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long connecting to the admin listener may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the service may take to prove itself (a hash; a slow answer is not the service).
const PROOF_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any other call may take, its answer read.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A service's admin API, answering, over a connection it proved itself on.
#[derive(Debug)]
pub struct ApiClient {
    addr: SocketAddr,
    base: String,
    proof: Proof,
    bearer: Option<Bearer>,
    /// The connection the service last proved itself on; `None` once it is gone.
    proven: Option<Connection>,
    /// The job, once posted: what a failure after that names.
    job: Option<uuid::Uuid>,
}

/// What the service proves it knows on each new connection, before any credential goes
/// out on it.
#[derive(Debug)]
enum Proof {
    /// `mode = "none"`: no credential to protect, nothing to prove.
    Nothing,
    /// `admin.auth.token`.
    Token(SecretString),
    /// The proof key in `admin.auth.proof_file`, read for each connection (each start of
    /// the service writes a fresh one).
    KeyIn(PathBuf),
}

/// The address a client reaches `listen` on: a wildcard address on loopback.
pub fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port()),
        _ => listen,
    }
}

/// The service's admin API when `[admin.auth]` is set and something accepts connections on
/// `[admin] listen`; `Ok(None)` when nothing does (then `rotate` may run in process, under
/// the engine lease). The service has proven itself on the connection, and the credential
/// is read (an Entra ID token fetched) now.
pub async fn connect(config: &AdminConfig) -> anyhow::Result<Option<ApiClient>> {
    let Some(auth) = &config.auth else { return Ok(None) };
    if !config.enabled {
        return Ok(None);
    }
    let addr = reachable(config.listen);
    // The token goes over plain HTTP: only to this host.
    if !addr.ip().is_loopback() {
        bail!(
            "admin.listen {addr} is not a loopback address: rotate sends the admin token over plain HTTP, so it \
             goes through the API only on the service's own host. Nothing was rotated. Run rotate there, or call \
             POST /api/rotations over a channel you trust"
        );
    }
    let connection = match Connection::open(addr).await {
        Ok(connection) => connection,
        Err(e) => {
            eprintln!("no service answers on admin.listen {addr} ({e}): rotating in this process");
            return Ok(None);
        }
    };
    let (proof, bearer) = match auth {
        AdminAuthConfig::None {} => (Proof::Nothing, None),
        AdminAuthConfig::StaticToken { token } => {
            let token = crate::service::read_secret("admin.auth.token", token)?;
            (Proof::Token(token.clone()), Some(Bearer::Static(token)))
        }
        AdminAuthConfig::EntraId { proof_file: None, .. } => bail!(
            "a service answers on admin.listen {addr}, but with admin.auth.mode = \"entra-id\" rotate goes through \
             its admin API only when admin.auth.proof_file is set (the service writes a proof key there, and rotate \
             checks with it that the service, not another program on the port, gets the Entra ID token). Nothing \
             was rotated. Set proof_file in the service's configuration and restart it, call POST /api/rotations \
             with a token carrying the role, or stop the service and pass --in-process"
        ),
        AdminAuthConfig::EntraId { proof_file: Some(path), audience, role, client_credential, .. } => {
            let bearer = Bearer::entra_id(client_credential.as_deref(), audience, role)?;
            (Proof::KeyIn(path.clone()), Some(bearer))
        }
    };
    let mut client = ApiClient { addr, base: format!("http://{addr}"), proof, bearer, proven: None, job: None };
    client.prove(connection).await?;
    // Now, not at the first call: a credential that gives no token fails before any job.
    if let Some(bearer) = &mut client.bearer {
        bearer.token(None).await?;
    }
    Ok(Some(client))
}

/// An HTTP/1 connection of `rotate`'s own to the admin listener: requests go one at a time
/// on this very TCP connection, never on another.
#[derive(Debug)]
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

/// What became of a request that got no answer.
enum Unanswered {
    /// It never went out: the connection was already closed. Safe to send again.
    Unsent(anyhow::Error),
    /// It went out, or may have.
    Sent(anyhow::Error),
}

impl Unanswered {
    fn error(self) -> anyhow::Error {
        match self {
            Unanswered::Unsent(e) | Unanswered::Sent(e) => e,
        }
    }
}

/// An answer: its status and body (at most [`MAX_ANSWER_BYTES`]).
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Connection {
    /// Connects to `addr` (within [`CONNECT_TIMEOUT`]).
    async fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no connection within 3 s"))??;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| std::io::Error::other(format!("HTTP/1 handshake: {e}")))?;
        // Reads and writes the socket; ends when either side closes it (or `sender` is dropped).
        tokio::spawn(connection);
        Ok(Connection { sender })
    }

    /// Whether the other side may still answer on it.
    fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Sends `request` and reads the whole answer, within `within`.
    async fn exchange(&mut self, request: Request<Full<Bytes>>, within: Duration) -> Result<Answer, Unanswered> {
        let exchange = async {
            self.sender.ready().await.map_err(|e| Unanswered::Unsent(e.into()))?;
            let response = self.sender.try_send_request(request).await.map_err(|mut e| match e.take_message() {
                Some(_) => Unanswered::Unsent(e.into_error().into()),
                None => Unanswered::Sent(e.into_error().into()),
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await.map_err(|e| {
                Unanswered::Sent(anyhow::anyhow!("reading the answer (at most {MAX_ANSWER_BYTES} bytes): {e}"))
            })?;
            Ok(Answer { status, body: body.to_bytes() })
        };
        tokio::time::timeout(within, exchange)
            .await
            .unwrap_or_else(|_| Err(Unanswered::Sent(anyhow::anyhow!("no answer within {} s", within.as_secs()))))
    }
}

impl ApiClient {
    /// Where it calls.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// What a failure now means for the operator's rotation.
    fn consequence(&self) -> String {
        match self.job {
            None => "Nothing was rotated".to_owned(),
            Some(id) => format!("Job {id} goes on in the service if it still runs"),
        }
    }

    /// Has the service prove itself on `connection` ([`prove_service`]), then keeps it as
    /// the one connection credentials go out on.
    async fn prove(&mut self, mut connection: Connection) -> anyhow::Result<()> {
        let consequence = self.consequence();
        match &self.proof {
            Proof::Nothing => {}
            Proof::Token(token) => {
                prove_service(&mut connection, self.addr, token, "the admin token", &consequence).await?
            }
            Proof::KeyIn(path) => {
                let key = read_proof_key(path, &consequence)?;
                let what = "the proof key in admin.auth.proof_file";
                prove_service(&mut connection, self.addr, &key, what, &consequence).await?
            }
        }
        self.proven = Some(connection);
        Ok(())
    }

    /// The proven connection, a new one opened and proven if the last is gone.
    async fn proven(&mut self) -> anyhow::Result<&mut Connection> {
        if !self.proven.as_ref().is_some_and(Connection::is_open) {
            self.proven = None;
            let connection = Connection::open(self.addr)
                .await
                .with_context(|| format!("no connection to admin.listen {}. {}", self.addr, self.consequence()))?;
            self.prove(connection).await?;
        }
        self.proven.as_mut().context("no proven connection")
    }

    /// `method path` with `body` (JSON) and `token` as its bearer, on the proven
    /// connection. A request that never went out (the connection had closed), or a `GET`,
    /// is sent once more on a new proven connection; the answer's status is the caller's.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&SecretString>,
    ) -> anyhow::Result<Answer> {
        let mut retried = false;
        loop {
            let request = self.request(&method, path, body.clone(), token)?;
            let outcome = self.proven().await?.exchange(request, REQUEST_TIMEOUT).await;
            match outcome {
                Ok(answer) => return Ok(answer),
                Err(unanswered) => {
                    // Never used again: its state is unknown.
                    self.proven = None;
                    let again = matches!(unanswered, Unanswered::Unsent(_)) || method == Method::GET;
                    if retried || !again {
                        return Err(unanswered.error());
                    }
                    retried = true;
                }
            }
        }
    }

    /// A request to the service, with `token` as its bearer.
    fn request(
        &self,
        method: &Method,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&SecretString>,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut request = Request::builder().method(method.clone()).uri(path).header(HOST, self.addr.to_string());
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let mut request = request.body(Full::new(Bytes::from(body.unwrap_or_default()))).context("a request")?;
        if let Some(token) = token {
            let bearer = Zeroizing::new(format!("Bearer {}", token.expose_secret()));
            let mut value = HeaderValue::from_str(&bearer)
                .map_err(|_| anyhow::anyhow!("the admin credential has characters an HTTP header cannot carry"))?;
            value.set_sensitive(true);
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        Ok(request)
    }

    /// The token to send now (`None`: mode none).
    async fn token(&mut self) -> anyhow::Result<Option<SecretString>> {
        let job = self.job;
        match &mut self.bearer {
            Some(bearer) => bearer.token(job).await.map(Some),
            None => Ok(None),
        }
    }

    /// What to do about `status`, when the credential is the reason.
    fn hint(&self, status: StatusCode) -> String {
        self.bearer.as_ref().map(|bearer| bearer.hint(status)).unwrap_or_default()
    }

    /// Posts the job and follows it to its end, reporting each secret as it ends in
    /// `output`; an error if any failed (or was refused as too soon), if the service
    /// refused the job, or if it went away.
    pub async fn rotate(&mut self, asked: JobRequest<'_>, output: OutputFormat) -> anyhow::Result<()> {
        let mut body = json!({ "reason": asked.reason, "force": asked.force });
        match asked.selection {
            Selection::Named(names) => body["secrets"] = json!(names),
            Selection::Tagged(tags) => body["tag"] = json!(tags),
            Selection::All => body["all"] = json!(true),
        }
        if let Some(limit) = asked.concurrency {
            body["concurrency"] = json!(limit);
        }
        let token = self.token().await?;
        let answer = self
            .call(Method::POST, "/api/rotations", Some(serde_json::to_vec(&body)?), token.as_ref())
            .await
            .with_context(|| {
                format!(
                    "POST {}/api/rotations: no answer from the service. If the request reached it, the job may run \
                     there (its log says)",
                    self.base
                )
            })?;
        let status = answer.status;
        if status != StatusCode::ACCEPTED {
            let text = String::from_utf8_lossy(&answer.body).into_owned();
            let error = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(text);
            let error = crate::logging::sanitized(&error, 1000);
            bail!("the service at {} refused the rotation job: HTTP {status}: {error}{}", self.base, self.hint(status));
        }
        let mut job: Job = parsed(&answer, "the service's answer to POST /api/rotations")?;
        self.job = Some(job.id);
        let names: Vec<String> = job.secrets.iter().map(|s| crate::logging::sanitized(&s.secret, 200)).collect();
        let mut progress = Progress::start(output, &names);
        if !job.secrets.is_empty() {
            eprintln!("rotating through the service at {} (job {}); waiting for every secret", self.base, job.id);
        }
        loop {
            for (index, entry) in job.secrets.iter().enumerate() {
                if entry.is_done() {
                    progress.ended(index, &distrusted(entry));
                }
            }
            if job.done {
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
            job = self.job(job.id).await?;
            if job.secrets.len() != names.len() {
                bail!("the service's job {} changed its list of secrets while it ran", job.id);
            }
        }
        progress.finish()
    }

    /// `GET /api/rotations/{id}`.
    async fn job(&mut self, id: uuid::Uuid) -> anyhow::Result<Job> {
        let path = format!("/api/rotations/{id}");
        let token = self.token().await?;
        let answer = self.call(Method::GET, &path, None, token.as_ref()).await.with_context(|| {
            format!(
                "lost the service while waiting for job {id} (its rotations go on there, or are resumed by the next \
                 engine's sweeper)"
            )
        })?;
        let status = answer.status;
        if !status.is_success() {
            bail!(
                "GET {path}: HTTP {status}: {}{}",
                crate::logging::sanitized(&String::from_utf8_lossy(&answer.body), 500),
                self.hint(status)
            );
        }
        parsed(&answer, &format!("the service's answer to GET {path}"))
    }
}

/// Has the service prove, on `connection` to `addr`, that it knows `secret`
/// ([`super::auth::service_proof`]; `what` names it) before any token is asked for or
/// sent on it: a program that took the admin port first (while the service was down or
/// restarting) would otherwise receive it, and could fake a job's answer. `consequence`
/// ends the error.
async fn prove_service(
    connection: &mut Connection,
    addr: SocketAddr,
    secret: &SecretString,
    what: &str,
    consequence: &str,
) -> anyhow::Result<()> {
    let nonce = hex::encode(rand::random::<[u8; 32]>());
    let refuse = |why: String| {
        anyhow::anyhow!(
            "what answers on http://{addr} did not prove that it knows {what} ({why}): no token was sent. \
             {consequence}. Another program may hold admin.listen, or it is a kv-rotator older than this one or one \
             started with another [admin.auth] (restart or upgrade it, or stop it and pass --in-process)"
        )
    };
    let request = Request::get(format!("/api/service-proof/{nonce}"))
        .header(HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .context("the proof request")?;
    let answer = connection
        .exchange(request, PROOF_TIMEOUT)
        .await
        .map_err(|e| refuse(crate::logging::sanitized(&format!("{:#}", e.error()), 300)))?;
    if !answer.status.is_success() {
        return Err(refuse(format!("HTTP {}", answer.status)));
    }
    #[derive(Deserialize)]
    struct Proof {
        proof: String,
    }
    let proof: Proof = parsed(&answer, "its proof").map_err(|e| refuse(format!("{e:#}")))?;
    let proof = hex::decode(proof.proof.as_bytes()).map_err(|_| refuse("a proof that is not hex".to_owned()))?;
    if !super::auth::proof_matches(secret, nonce.as_bytes(), &proof) {
        return Err(refuse("a wrong proof".to_owned()));
    }
    Ok(())
}

/// `answer`'s body as JSON.
fn parsed<T: serde::de::DeserializeOwned>(answer: &Answer, what: &str) -> anyhow::Result<T> {
    serde_json::from_slice(&answer.body).with_context(|| format!("{what} is not what kv-rotator sends"))
}

/// What `GET /api/rotations/{id}` answers (the fields `rotate` reads).
#[derive(Debug, Deserialize)]
struct Job {
    id: uuid::Uuid,
    done: bool,
    secrets: Vec<JobSecret>,
}

/// Largest answer read from the service (a job of thousands of secrets fits).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// A job entry as the service reported it, its text escaped: what answers on the admin
/// port is trusted with nothing printed raw.
fn distrusted(entry: &JobSecret) -> JobSecret {
    let text = |t: &str| crate::logging::sanitized(t, 4096);
    let mut shown = entry.clone();
    shown.secret = text(&entry.secret);
    shown.state = text(&entry.state);
    shown.version = entry.version.as_deref().map(text);
    shown.new_version = entry.new_version.as_deref().map(text);
    shown.detail = entry.detail.as_deref().map(text);
    shown.error = entry.error.as_deref().map(text);
    shown
}

/// Which secrets a `rotate` names.
#[derive(Debug)]
pub enum Selection<'a> {
    /// Named secrets.
    Named(&'a [String]),
    /// The managed secrets carrying every one of these tags.
    Tagged(&'a BTreeMap<String, String>),
    /// Every managed secret.
    All,
}

/// The job `rotate` posts.
#[derive(Debug)]
pub struct JobRequest<'a> {
    /// Its secrets.
    pub selection: Selection<'a>,
    /// Why, for the audit log.
    pub reason: &'a str,
    /// Whether to rotate within `engine.min_rotation_interval_secs` of the last write.
    pub force: bool,
    /// At most this many of its secrets at once.
    pub concurrency: Option<u16>,
}
