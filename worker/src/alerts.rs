//! Alert sinks for rotations that failed past the retry cap (or could not start).
//!
//! - [`Alert`]: what is reported — vault, secret, rotation id, versions, trigger,
//!   attempts and the sanitized error. Never a password: the engine's errors never
//!   carry one, and the alert is built from the report, not from secret values.
//! - [`WebhookSink`]: a generic HTTP webhook; POSTs the alert as JSON ([`crate::http_sink`]).

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::http_sink::{HttpSink, PostError};

/// One failed rotation, as sinks receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The vault's name.
    pub vault: String,
    /// The secret's name.
    pub secret: String,
    /// The rotation id, when the request got that far.
    pub rotation_id: Option<String>,
    /// The version the rotation started from, when known.
    pub version: Option<String>,
    /// What asked for the rotation.
    pub trigger: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error (sanitized).
    pub error: String,
    /// `Some(journal record)` when the target may already use the new password, which
    /// then lives only in that record: consumers reading the latest version are refused.
    pub unfinished_journal: Option<String>,
    /// When the rotation gave up.
    pub at: OffsetDateTime,
}

impl Alert {
    /// The JSON document sinks receive.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "kind": if self.unfinished_journal.is_some() { "kv-rotator.rotation-unfinished" } else { "kv-rotator.rotation-failed" },
            "vault": self.vault,
            "secret": self.secret,
            "rotationId": self.rotation_id,
            "version": self.version,
            "trigger": self.trigger,
            "attempts": self.attempts,
            "error": self.error,
            "at": self.at.format(&Rfc3339).unwrap_or_default(),
            "targetChanged": self.unfinished_journal.is_some(),
            "journal": self.unfinished_journal,
            "message": match &self.unfinished_journal {
                None => format!(
                    "rotation of {}/{} failed after {} attempt(s); the current password stays in place",
                    self.vault, self.secret, self.attempts
                ),
                Some(journal) => format!(
                    "rotation of {}/{} failed after {} attempt(s) after the target may have taken the new password: \
                     it is only in journal record {journal}, and the latest version may not log in until kv-rotator \
                     finishes (the sweeper resumes it at every interval)",
                    self.vault, self.secret, self.attempts
                ),
            },
        })
    }
}

/// Why an alert was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The sink could not be reached or timed out.
    #[error("alert webhook {url} unreachable: {detail}")]
    Unreachable {
        /// The sink's origin (scheme, host, port): never its path or query, which often
        /// carry its credential (a Logic Apps `sig=`, a Slack token).
        url: String,
        /// What failed.
        detail: String,
    },
    /// The sink answered with a non-success status.
    #[error("alert webhook {url} answered {status}")]
    Refused {
        /// The sink's origin, as above.
        url: String,
        /// The HTTP status.
        status: u16,
    },
}

/// A generic HTTP webhook sink: one POST of [`Alert::to_json`] per failure, through
/// [`HttpSink`] (one try: the failed request's report waits for it).
#[derive(Debug, Clone)]
pub struct WebhookSink {
    http: HttpSink,
}

impl WebhookSink {
    /// A sink POSTing to `url`, each request bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Self {
        Self { http: HttpSink::new(url, timeout) }
    }

    /// Sends one alert.
    pub async fn send(&self, alert: &Alert) -> Result<(), AlertError> {
        let body = alert.to_json().to_string();
        self.http.post("alerts", "application/json", HeaderMap::new(), body.as_bytes()).await.map_err(|e| match e {
            PostError::Unreachable { origin, detail } => AlertError::Unreachable { url: origin, detail },
            PostError::Refused { origin, status } => AlertError::Refused { url: origin, status },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn delivery_errors_name_the_sinks_origin_never_its_credential() {
        // A sink that answers 500 to everything.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n").await;
            }
        });
        let alert = Alert {
            vault: "v".into(),
            secret: "s".into(),
            rotation_id: None,
            version: None,
            trigger: "manual".into(),
            attempts: 1,
            error: "e".into(),
            unfinished_journal: None,
            at: OffsetDateTime::now_utc(),
        };
        let secret_url = format!("http://127.0.0.1:{port}/workflows/abc/triggers/manual/paths/invoke?sig=S3CRETsig");
        let err = WebhookSink::new(&secret_url, Duration::from_secs(5)).send(&alert).await.unwrap_err().to_string();
        assert_eq!(err, format!("alert webhook http://127.0.0.1:{port} answered 500"));
        // Nobody listens here (bound, never listening: refused, and no one else can take it
        // meanwhile): the transport error must not carry the URL either.
        let closed_socket = tokio::net::TcpSocket::new_v4().unwrap();
        closed_socket.bind((std::net::Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let closed = closed_socket.local_addr().unwrap().port();
        let unreachable = format!("http://127.0.0.1:{closed}/hooks/T000/B000/XXXXSECRETTOKEN");
        let err = WebhookSink::new(&unreachable, Duration::from_secs(5)).send(&alert).await.unwrap_err().to_string();
        assert!(err.starts_with(&format!("alert webhook http://127.0.0.1:{closed} unreachable")), "{err}");
        assert!(!err.contains("SECRETTOKEN") && !err.contains("hooks"), "{err}");
    }
}
