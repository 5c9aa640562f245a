//! `kv-rotator rotate` through a running service's admin API: one engine per vault.
//!
//! [`connect`] looks for a service on `[admin] listen` (a wildcard address is reached on
//! loopback) and has it prove who it is ([`prove_service`]) before any credential is sent;
//! [`ApiClient::rotate`] posts the job, polls `GET /api/rotations/{id}` until every secret
//! has ended, and reports each secret's end to [`Progress`] as the in-process `rotate` does.
//!
//! The credential ([`Bearer`]) comes from the same `[admin.auth]` the service reads:
//! - `static-token`: the token's environment variable or file; the service proves it
//!   knows the token.
//! - `entra-id`: the service proves it knows the proof key it wrote to `proof_file` at
//!   startup (readable by its user and root only, so `rotate` runs as one of them); only
//!   then is a token asked for, from `client_credential` (default: the operator's `az` or
//!   `azd` login), for scope `{first audience}/.default`, and renewed while a job runs.
//!   Without `proof_file`, `rotate` does not go through the API.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use azure_core::credentials::{AccessToken, TokenCredential};
use kv_rotator_config::{AdminAuthConfig, AdminConfig, CredentialConfig};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::jobs::JobSecret;
use crate::cli::progress::{OutputFormat, Progress};

/// How often a job is polled.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long connecting to the admin listener may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// An Entra ID token is renewed when it expires within this long (a job may outlast it).
const TOKEN_RENEW_BEFORE: time::Duration = time::Duration::minutes(5);

/// A service's admin API, answering.
#[derive(Debug)]
pub struct ApiClient {
    base: String,
    bearer: Option<Bearer>,
    http: reqwest::Client,
}

/// What `rotate` presents to the service as `Authorization: Bearer`.
#[derive(Debug)]
enum Bearer {
    /// `admin.auth.token`.
    Static(SecretString),
    /// Entra ID tokens for `scope` from `admin.auth.client_credential`, the last one kept
    /// until it nears its expiry (`az` and `azd` cache nothing for their caller).
    EntraId {
        credential: Arc<dyn TokenCredential>,
        scope: String,
        role: String,
        last: tokio::sync::Mutex<Option<AccessToken>>,
    },
}

impl Bearer {
    /// The Entra ID bearer of `[admin.auth]`: the credential built (offline), no token yet.
    fn entra_id(credential: Option<&CredentialConfig>, audience: &[String], role: &str) -> anyhow::Result<Self> {
        let Some(audience) = audience.first() else { bail!("admin.auth.audience is empty") };
        let default = CredentialConfig::DeveloperTools {};
        let credential =
            crate::credentials::credential_for("admin.auth.client_credential", credential.unwrap_or(&default))?;
        let scope = format!("{}/.default", audience.trim_end_matches('/'));
        Ok(Bearer::EntraId { credential, scope, role: role.to_owned(), last: Default::default() })
    }

    /// The token to send now: the static one, or an Entra ID token valid for at least
    /// [`TOKEN_RENEW_BEFORE`].
    async fn token(&self) -> anyhow::Result<SecretString> {
        let (credential, scope, last) = match self {
            Bearer::Static(token) => return Ok(token.clone()),
            Bearer::EntraId { credential, scope, last, .. } => (credential, scope, last),
        };
        let mut last = last.lock().await;
        let fresh = |token: &AccessToken| token.expires_on - time::OffsetDateTime::now_utc() > TOKEN_RENEW_BEFORE;
        if !last.as_ref().is_some_and(fresh) {
            let token = credential.get_token(&[scope.as_str()], None).await.map_err(|e| {
                anyhow::anyhow!(
                    "admin.auth.client_credential: no Entra ID token for scope {scope}: {}. Nothing was rotated \
                     (unset, client_credential is kind = \"developer-tools\": your az login or azd auth login)",
                    crate::logging::sanitized(&e.to_string(), 1000)
                )
            })?;
            *last = Some(token);
        }
        let token = last.as_ref().map(|token| token.token.secret()).unwrap_or_default();
        Ok(SecretString::from(token.to_owned()))
    }

    /// What an operator should do about a 401 or 403 (`status`) from the service.
    fn hint(&self, status: reqwest::StatusCode) -> String {
        match (self, status.as_u16()) {
            (Bearer::EntraId { role, .. }, 403) => format!(
                ": the identity of admin.auth.client_credential lacks the app role {role} (admin.auth.role); \
                 assign it to that user or application on the admin API's enterprise application"
            ),
            (Bearer::EntraId { scope, .. }, 401) => format!(
                ": the service did not accept the Entra ID token for {scope} (wrong tenant or audience, or \
                 expired); check admin.auth.tenant_id, admin.auth.audience and admin.auth.client_credential"
            ),
            (Bearer::Static(_), 401) => ": the service does not take this admin.auth.token".to_owned(),
            _ => String::new(),
        }
    }
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
/// the engine lease). The credential is read now.
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
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            eprintln!("no service answers on admin.listen {addr} ({e}): rotating in this process");
            return Ok(None);
        }
        Err(_) => {
            eprintln!("no service answers on admin.listen {addr} (no connection within 3 s): rotating in this process");
            return Ok(None);
        }
    }
    // Straight to the listener: never through a proxy (HTTP_PROXY would get the token),
    // never to where a redirect points.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("HTTP client")?;
    let base = format!("http://{addr}");
    let bearer = match auth {
        AdminAuthConfig::None {} => None,
        AdminAuthConfig::StaticToken { token } => {
            let token = crate::service::read_secret("admin.auth.token", token)?;
            prove_service(&http, &base, &token, "the admin token").await?;
            Some(Bearer::Static(token))
        }
        AdminAuthConfig::EntraId { proof_file: None, .. } => bail!(
            "a service answers on admin.listen {addr}, but with admin.auth.mode = \"entra-id\" rotate goes through \
             its admin API only when admin.auth.proof_file is set (the service writes a proof key there, and rotate \
             checks with it that the service, not another program on the port, gets the Entra ID token). Nothing \
             was rotated. Set proof_file in the service's configuration and restart it, call POST /api/rotations \
             with a token carrying the role, or stop the service and pass --in-process"
        ),
        AdminAuthConfig::EntraId { proof_file: Some(path), audience, role, client_credential, .. } => {
            let key = read_proof_key(path)?;
            prove_service(&http, &base, &key, "the proof key in admin.auth.proof_file").await?;
            let bearer = Bearer::entra_id(client_credential.as_deref(), audience, role)?;
            // Now, not at the first call: a credential that gives no token fails before any job.
            bearer.token().await?;
            Some(bearer)
        }
    };
    Ok(Some(ApiClient { base, bearer, http }))
}

/// The proof key the service wrote to `admin.auth.proof_file` ([`super::auth::write_proof_key`]).
fn read_proof_key(path: &Path) -> anyhow::Result<SecretString> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map(Zeroizing::new).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file: the service writes it at startup".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        anyhow::anyhow!(
            "admin.auth.proof_file {shown}: cannot read it ({why}). It is readable by the service's user only: run \
             rotate as that user (e.g. sudo -u <service user> kv-rotator rotate ...) or as root. Nothing was rotated"
        )
    })?;
    #[cfg(unix)]
    planted(path)?;
    let key = text.trim_end_matches(['\r', '\n']);
    if key.len() != super::auth::PROOF_KEY_HEX || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "admin.auth.proof_file {shown}: not a proof key kv-rotator wrote ({} hex digits). Nothing was rotated",
            super::auth::PROOF_KEY_HEX
        );
    }
    Ok(SecretString::from(key.to_owned()))
}

/// Refuses a proof file that the service cannot have written: one that others may read or
/// write (the service writes mode 0600), or one owned by another user than `rotate`'s —
/// or, for `rotate` run as root, than the directory's owner or root. Another user could
/// have planted such a key (in `/tmp`, say) and, once the service is down, answer its proof.
#[cfg(unix)]
fn planted(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let file = std::fs::metadata(path).with_context(|| format!("admin.auth.proof_file {shown}"))?;
    if file.mode() & 0o077 != 0 {
        bail!(
            "admin.auth.proof_file {shown}: other users may read or write it (mode {:o}), but the service writes it \
             with mode 600: it is not the service's key, or it has been exposed. Nothing was rotated; restarting the \
             service writes a fresh one",
            file.mode() & 0o777
        );
    }
    let me = rustix::process::geteuid().as_raw();
    let dir_owner = path.parent().and_then(|dir| std::fs::metadata(dir).ok()).map(|dir| dir.uid());
    let trusted = file.uid() == me || (me == 0 && (file.uid() == 0 || Some(file.uid()) == dir_owner));
    if !trusted {
        bail!(
            "admin.auth.proof_file {shown}: owned by uid {}, neither the user rotate runs as (uid {me}) nor, for root, \
             the directory's owner: another user may have planted it. Nothing was rotated. Keep proof_file in a \
             directory only the service's user can write, and run rotate as that user or root",
            file.uid()
        );
    }
    Ok(())
}

/// Has the service prove that it knows `secret` ([`super::auth::service_proof`]; `what`
/// names it) before any token is asked for or sent: a program that took the admin port
/// first (while the service was down or restarting) would otherwise receive it, and could
/// fake a job's answer.
async fn prove_service(http: &reqwest::Client, base: &str, secret: &SecretString, what: &str) -> anyhow::Result<()> {
    let nonce = hex::encode(rand::random::<[u8; 32]>());
    let refuse = |why: String| {
        anyhow::anyhow!(
            "what answers on {base} did not prove that it knows {what} ({why}): no token was sent and nothing was \
             rotated. Another program may hold admin.listen, or it is a kv-rotator older than this one or one \
             started with another [admin.auth] (restart or upgrade it, or stop it and pass --in-process)"
        )
    };
    let response = http
        .get(format!("{base}/api/service-proof/{nonce}"))
        .send()
        .await
        .map_err(|e| refuse(crate::logging::sanitized(&e.without_url().to_string(), 300)))?;
    if !response.status().is_success() {
        return Err(refuse(format!("HTTP {}", response.status())));
    }
    #[derive(Deserialize)]
    struct Proof {
        proof: String,
    }
    let proof: Proof = json_capped(response, "its proof").await.map_err(|e| refuse(format!("{e:#}")))?;
    let proof = hex::decode(proof.proof.as_bytes()).map_err(|_| refuse("a proof that is not hex".to_owned()))?;
    if !super::auth::proof_matches(secret, nonce.as_bytes(), &proof) {
        return Err(refuse("a wrong proof".to_owned()));
    }
    Ok(())
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

/// `response`'s body as JSON, read up to [`MAX_ANSWER_BYTES`].
async fn json_capped<T: serde::de::DeserializeOwned>(mut response: reqwest::Response, what: &str) -> anyhow::Result<T> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.with_context(|| format!("reading {what}"))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            bail!("{what} is larger than {MAX_ANSWER_BYTES} bytes: not what kv-rotator sends");
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).with_context(|| format!("{what} is not what kv-rotator sends"))
}

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

impl ApiClient {
    /// Where it calls.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn request(&self, method: reqwest::Method, path: &str) -> anyhow::Result<reqwest::RequestBuilder> {
        let request = self.http.request(method, format!("{}{path}", self.base));
        Ok(match &self.bearer {
            Some(bearer) => request.bearer_auth(bearer.token().await?.expose_secret()),
            None => request,
        })
    }

    /// What to do about `status`, when the credential is the reason.
    fn hint(&self, status: reqwest::StatusCode) -> String {
        self.bearer.as_ref().map(|bearer| bearer.hint(status)).unwrap_or_default()
    }

    /// Posts the job and follows it to its end, reporting each secret as it ends in
    /// `output`; an error if any failed (or was refused as too soon), or if the service
    /// refused the job.
    pub async fn rotate(&self, asked: JobRequest<'_>, output: OutputFormat) -> anyhow::Result<()> {
        let mut body = json!({ "reason": asked.reason, "force": asked.force });
        match asked.selection {
            Selection::Named(names) => body["secrets"] = json!(names),
            Selection::Tagged(tags) => body["tag"] = json!(tags),
            Selection::All => body["all"] = json!(true),
        }
        if let Some(limit) = asked.concurrency {
            body["concurrency"] = json!(limit);
        }
        let response = self
            .request(reqwest::Method::POST, "/api/rotations")
            .await?
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {}/api/rotations", self.base))?;
        let status = response.status();
        if status != reqwest::StatusCode::ACCEPTED {
            let text = response.text().await.unwrap_or_default();
            let error = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(text);
            let error = crate::logging::sanitized(&error, 1000);
            bail!("the service at {} refused the rotation job: HTTP {status}: {error}{}", self.base, self.hint(status));
        }
        let mut job: Job = json_capped(response, "the service's answer to POST /api/rotations").await?;
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
    async fn job(&self, id: uuid::Uuid) -> anyhow::Result<Job> {
        let path = format!("/api/rotations/{id}");
        let response = self.request(reqwest::Method::GET, &path).await?.send().await.with_context(|| {
            format!(
                "lost the service while waiting for job {id} (its rotations go on there, or are resumed by the next \
                 engine's sweeper)"
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "GET {path}: HTTP {status}: {}{}",
                crate::logging::sanitized(&response.text().await.unwrap_or_default(), 500),
                self.hint(status)
            );
        }
        json_capped(response, &format!("the service's answer to GET {path}")).await
    }
}
