//! `kv-rotator rotate` through a running service's admin API: one engine per vault.
//!
//! [`connect`] looks for a service on `[admin] listen` (a wildcard address is reached on
//! loopback); [`ApiClient::rotate`] posts the job, polls `GET /api/rotations/{id}` until
//! every secret has ended, and prints one line per secret as the in-process `rotate` does.
//! The credential comes from the same `[admin.auth]` the service reads (the static token's
//! environment variable or file); `mode = "entra-id"` needs a token the CLI cannot get yet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use kv_rotator_config::{AdminAuthConfig, AdminConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

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
    Ok(Some(ApiClient { base: format!("http://{addr}"), token, http }))
}

/// What `GET /api/rotations/{id}` answers (the fields `rotate` reads).
#[derive(Debug, Deserialize)]
struct Job {
    id: String,
    done: bool,
    secrets: Vec<JobSecret>,
}

#[derive(Debug, Deserialize)]
struct JobSecret {
    secret: String,
    state: String,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    ok: Option<bool>,
}

/// Which secrets a `rotate` names.
#[derive(Debug)]
pub enum Selection<'a> {
    /// Named secrets.
    Named(&'a [String]),
    /// Every managed secret.
    All,
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

    /// Posts the job and follows it to its end, printing one line per secret; an error if
    /// any failed (or was refused as too soon), or if the service refused the job.
    pub async fn rotate(&self, selection: Selection<'_>, reason: &str, force: bool) -> anyhow::Result<()> {
        let mut body = json!({ "reason": reason, "force": force });
        match selection {
            Selection::Named(names) => body["secrets"] = json!(names),
            Selection::All => body["all"] = json!(true),
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
        let mut job: Job = response.json().await.context("the service's answer to POST /api/rotations")?;
        if job.secrets.is_empty() {
            println!("nothing to do");
            return Ok(());
        }
        eprintln!("rotating through the service at {} (job {}); waiting for every secret", self.base, job.id);
        while !job.done {
            tokio::time::sleep(POLL_EVERY).await;
            let path = format!("/api/rotations/{}", job.id);
            let response = self.request(reqwest::Method::GET, &path).send().await.with_context(|| {
                format!(
                    "lost the service while waiting for job {} (its rotations go on there, or are resumed by the \
                     next engine's sweeper)",
                    job.id
                )
            })?;
            let status = response.status();
            if !status.is_success() {
                bail!(
                    "GET {path}: HTTP {status}: {}",
                    crate::logging::sanitized(&response.text().await.unwrap_or_default(), 500)
                );
            }
            job = response.json().await.with_context(|| format!("the service's answer to GET {path}"))?;
        }
        let mut failed = 0;
        for secret in &job.secrets {
            if secret.ok != Some(true) {
                failed += 1;
            }
            let detail = secret.detail.clone().unwrap_or_else(|| secret.state.clone());
            println!(
                "{}: {}",
                crate::logging::sanitized(&secret.secret, 200),
                crate::logging::sanitized(&detail, 4096)
            );
        }
        if failed > 0 {
            bail!("{failed} of {} rotation(s) failed", job.secrets.len());
        }
        Ok(())
    }
}
