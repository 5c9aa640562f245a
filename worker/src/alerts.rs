//! Alert sinks for rotations that failed past the retry cap (or could not start).
//!
//! - [`Alert`]: what is reported — vault, secret, rotation id, versions, trigger,
//!   attempts and the sanitized error. Never a password: the engine's errors never
//!   carry one, and the alert is built from the report, not from secret values.
//! - [`WebhookSink`]: a generic HTTP webhook; POSTs the alert as JSON.

use std::time::Duration;

use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

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
        /// The sink's URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The sink answered with a non-success status.
    #[error("alert webhook {url} answered {status}")]
    Refused {
        /// The sink's URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
}

/// A generic HTTP webhook sink: one POST of [`Alert::to_json`] per failure.
#[derive(Debug, Clone)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
}

impl WebhookSink {
    /// A sink POSTing to `url`, each request bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Self {
        let client = reqwest::Client::builder().timeout(timeout).build().unwrap_or_default();
        Self { client, url: url.to_owned() }
    }

    /// Sends one alert.
    pub async fn send(&self, alert: &Alert) -> Result<(), AlertError> {
        let body = alert.to_json();
        #[cfg(feature = "leak-ledger")]
        kv_rotator_leakscan::capture("alerts", &body.to_string());
        let response = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| AlertError::Unreachable { url: self.url.clone(), detail: e.without_url().to_string() })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(AlertError::Refused { url: self.url.clone(), status: status.as_u16() })
        }
    }
}
