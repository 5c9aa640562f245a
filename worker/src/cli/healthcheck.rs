//! `kv-rotator healthcheck`: asks a running service's `GET /healthz` and exits 0 only on
//! a 2xx answer within the timeout.
//!
//! It exists for images without a shell or curl (the distroless runtime in
//! `deploy/container/Containerfile`): their `HEALTHCHECK` runs the binary itself. It
//! reads no configuration and touches no vault.

use std::time::Duration;

use anyhow::{bail, Context};

/// Arguments of `kv-rotator healthcheck`.
#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// The service's health endpoint (plain HTTP on the webhook's port).
    #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
    pub url: url::Url,
    /// Seconds to wait for the whole answer.
    #[arg(long, default_value_t = 3)]
    pub timeout_secs: u64,
}

/// Succeeds when the endpoint answers 2xx within the timeout.
pub async fn run(args: HealthcheckArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .build()
        .context("cannot build the HTTP client")?;
    let response = client.get(args.url.clone()).send().await.with_context(|| format!("GET {}", args.url))?;
    if !response.status().is_success() {
        bail!("GET {} answered {}", args.url, response.status());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::routing::get;

    use super::*;

    async fn serve(status: StatusCode) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/healthz", get(move || async move { status }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn args(url: String) -> HealthcheckArgs {
        HealthcheckArgs { url: url.parse().unwrap(), timeout_secs: 3 }
    }

    #[tokio::test]
    async fn ok_only_on_2xx() {
        let up = serve(StatusCode::OK).await;
        run(args(format!("http://{up}/healthz"))).await.unwrap();
        let sick = serve(StatusCode::SERVICE_UNAVAILABLE).await;
        let err = run(args(format!("http://{sick}/healthz"))).await.unwrap_err();
        assert!(err.to_string().contains("503"), "{err:#}");
    }

    #[tokio::test]
    async fn fails_when_nothing_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(run(args(format!("http://{addr}/healthz"))).await.is_err());
    }
}
