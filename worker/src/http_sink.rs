//! HTTP delivery shared by the alert sink ([`crate::alerts`]) and notifications
//! ([`crate::notify`]): one POST with a timeout, retried with jittered exponential backoff
//! (backon) on what a later try can fix — a connection error, a timeout, 408, 429, 5xx —
//! and errors that name the sink's origin only, never its path or query, which often carry
//! its credential (a Logic Apps or Power Automate `sig=`, a Slack token).

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};

/// Why a POST was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// The sink could not be reached or timed out.
    #[error("{origin} unreachable: {detail}")]
    Unreachable {
        /// The sink's origin (scheme, host, port).
        origin: String,
        /// What failed (without the URL).
        detail: String,
    },
    /// The sink answered with a non-success status.
    #[error("{origin} answered {status}")]
    Refused {
        /// The sink's origin.
        origin: String,
        /// The HTTP status.
        status: u16,
    },
}

impl PostError {
    /// Whether another try may succeed: unreachable, 408, 429 or 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            PostError::Unreachable { .. } => true,
            PostError::Refused { status, .. } => matches!(status, 408 | 429 | 500..=599),
        }
    }
}

/// An HTTP endpoint POSTed to, each try bounded by a timeout.
#[derive(Debug, Clone)]
pub struct HttpSink {
    client: reqwest::Client,
    /// A credential for most sinks (a `sig=`, a hook's path): redacted in `Debug`.
    url: SecretString,
    origin: String,
    attempts: u32,
    first_delay: Duration,
}

impl HttpSink {
    /// A sink POSTing to `url`, each try bounded by `timeout`; one try until
    /// [`HttpSink::with_attempts`].
    pub fn new(url: &str, timeout: Duration) -> Self {
        // Never to where a redirect points: reqwest keeps custom headers (`aeg-sas-key`)
        // across hosts, and the Referer would carry a `sig=` URL. A 3xx is a failure.
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .build()
            .unwrap_or_default();
        let origin = reqwest::Url::parse(url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| "(unparsable URL)".to_owned());
        Self { client, url: SecretString::from(url), origin, attempts: 1, first_delay: Duration::from_millis(200) }
    }

    /// Up to `attempts` tries per POST while the failure is transient.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// What messages show of the URL: its origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// POSTs `body` as `content_type` with `headers`, retrying transient failures; the
    /// last failure when every try failed. Test builds hand `body` to the leak scanner
    /// as stream `stream` first.
    pub async fn post(
        &self,
        stream: &'static str,
        content_type: &str,
        headers: HeaderMap,
        body: &[u8],
    ) -> Result<(), PostError> {
        #[cfg(feature = "leak-ledger")]
        kv_rotator_leakscan::capture(stream, &String::from_utf8_lossy(body));
        let _ = stream;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.attempts.saturating_sub(1) as usize)
            .with_jitter();
        (|| self.try_once(content_type, &headers, body))
            .retry(backoff)
            .when(PostError::is_transient)
            .notify(|err, delay| tracing::debug!(error = %err, retry_in = ?delay, "HTTP sink: retrying"))
            .await
    }

    async fn try_once(&self, content_type: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), PostError> {
        let response = self
            .client
            .post(self.url.expose_secret())
            .headers(headers.clone())
            .header(CONTENT_TYPE, content_type)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| PostError::Unreachable { origin: self.origin.clone(), detail: e.without_url().to_string() })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(PostError::Refused { origin: self.origin.clone(), status: status.as_u16() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_later_try_can_fix_is_retried() {
        let refused = |status| PostError::Refused { origin: "o".into(), status }.is_transient();
        assert!(refused(429) && refused(500) && refused(503) && refused(408));
        assert!(!refused(400) && !refused(401) && !refused(403) && !refused(404));
        assert!(PostError::Unreachable { origin: "o".into(), detail: "d".into() }.is_transient());
    }

    /// A sink that answers with a redirect to another host gets neither the body nor the
    /// sink's key header there: the 3xx is a refusal.
    #[tokio::test]
    async fn a_redirect_is_not_followed_and_the_key_goes_nowhere_else() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let elsewhere_hits = Arc::new(AtomicUsize::new(0));
        let hits = elsewhere_hits.clone();
        let elsewhere = axum::Router::new().fallback(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            async { "got it" }
        });
        let other = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let other_addr = other.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(other, elsewhere).await });
        let redirecting = axum::Router::new().fallback(move || async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, format!("http://{other_addr}/steal"))],
            )
        });
        let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink_addr = sink.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(sink, redirecting).await });

        let mut headers = HeaderMap::new();
        headers.insert("aeg-sas-key", axum::http::HeaderValue::from_static("the-topic-key"));
        let posted = HttpSink::new(&format!("http://{sink_addr}/hook?sig=s3cret"), Duration::from_secs(5))
            .post("alerts", "application/json", headers, b"{}")
            .await;
        assert!(matches!(posted, Err(PostError::Refused { status: 307, .. })), "{posted:?}");
        assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0, "nothing reached where the redirect pointed");
    }
}
