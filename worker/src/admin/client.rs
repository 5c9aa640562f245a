//! `kv-rotator rotate` through a running service's admin API: one engine per vault.
//!
//! [`connect`] looks for a service on `[admin] listen` (a wildcard address is reached on
//! loopback); [`ApiClient::rotate`] posts the job, polls `GET /api/rotations/{id}` until
//! every secret has ended, and reports each secret's end to [`Progress`] as the in-process
//! `rotate` does.
//! The credential comes from the same `[admin.auth]` the service reads (the static token's
//! environment variable or file); `mode = "entra-id"` needs a token the CLI cannot get yet.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use kv_rotator_config::{AdminAuthConfig, AdminConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::jobs::JobSecret;
use crate::cli::progress::{OutputFormat, Progress};

/// How often a job is polled.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long connecting to the admin listener may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A service's admin API, answering.
#[derive(Debug)]
pub struct ApiClient {
    base: String,
    token: Option<SecretString>,
    http: reqwest::Client,
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
    let token = match auth {
        AdminAuthConfig::None {} => None,
        AdminAuthConfig::StaticToken { token } => Some(crate::service::read_secret("admin.auth.token", token)?),
        AdminAuthConfig::EntraId { .. } => bail!(
            "a service answers on admin.listen {addr}, but rotating through its admin API with \
             admin.auth.mode = \"entra-id\" is not supported by the CLI yet (it cannot get an Entra ID token). \
             Nothing was rotated. Call POST /api/rotations with a token carrying the role, or stop the service \
             and pass --in-process"
        ),
    };
    // Straight to the listener: never through a proxy (HTTP_PROXY would get the token),
    // never to where a redirect points.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("HTTP client")?;
    let base = format!("http://{addr}");
    if let Some(token) = &token {
        prove_service(&http, &base, token).await?;
    }
    Ok(Some(ApiClient { base, token, http }))
}

/// Has the service prove that it knows `token` ([`super::auth::service_proof`]) before the
/// token is ever sent: a program that took the admin port first (while the service was
/// down or restarting) would otherwise receive it, and could fake a job's answer.
async fn prove_service(http: &reqwest::Client, base: &str, token: &SecretString) -> anyhow::Result<()> {
    let nonce = hex::encode(rand::random::<[u8; 32]>());
    let refuse = |why: String| {
        anyhow::anyhow!(
            "what answers on {base} did not prove that it knows the admin token ({why}): the token was not sent and \
             nothing was rotated. Another program may hold admin.listen, or it is a kv-rotator older than this \
             one (upgrade it, or stop it and pass --in-process)"
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
    if !super::auth::proof_matches(token, nonce.as_bytes(), &proof) {
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

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token.expose_secret()),
            None => request,
        }
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
            bail!("the service at {} refused the rotation job: HTTP {status}: {error}", self.base);
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
        let response = self.request(reqwest::Method::GET, &path).send().await.with_context(|| {
            format!(
                "lost the service while waiting for job {id} (its rotations go on there, or are resumed by the next \
                 engine's sweeper)"
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "GET {path}: HTTP {status}: {}",
                crate::logging::sanitized(&response.text().await.unwrap_or_default(), 500)
            );
        }
        json_capped(response, &format!("the service's answer to GET {path}")).await
    }
}
