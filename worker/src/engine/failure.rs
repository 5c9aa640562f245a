//! A request that failed past the retry cap: the failure tag on the secret (or on its
//! journal record when the secret is no longer managed), and the alert, at most one per
//! secret and outcome per `alerts.repeat_after_secs`.

use std::time::Instant;

use kv_rotator_core::limits::MAX_TAGS;
use kv_rotator_core::tags::{TAG_FAILED, TAG_ROTATOR};
use kv_rotator_core::RotationRequest;
use kv_rotator_keyvault::PropertiesUpdate;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{error, warn};

use super::error::shown;
use super::{journal, Engine, Outcome, RotationError, RotationReport};
use crate::alerts::Alert;

impl Engine {
    /// The outcome of a request whose last attempt failed with `err`, logged once: the
    /// error is shown the same way for the log, the audit record, the alert, `rotate`'s
    /// output and the Functions host's logs alike.
    pub(super) fn failed(
        &self,
        request: &RotationRequest,
        err: RotationError,
        attempts: u32,
        unfinished_journal: Option<String>,
    ) -> (Option<String>, Outcome) {
        let error = shown(&err);
        match &unfinished_journal {
            None => error!(error = %error, attempts, "rotation failed; the current password stays in place"),
            Some(journal) => error!(
                error = %error, attempts, %journal,
                "rotation failed after the target may have taken the new password: it is only in the \
                 journal record, and the latest version may not log in until the sweeper resumes it"
            ),
        }
        let rotation_id =
            request.version.as_deref().map(|v| journal::rotation_id(self.store.vault_name(), &request.secret_name, v));
        (rotation_id, Outcome::Failed { error, attempts, unfinished_journal })
    }

    /// Past the cap: mark the secret (keeping its other tags), and alert — the same
    /// secret's alert of the same kind at most once per `alerts.repeat_after_secs`.
    pub(super) async fn report_failure(&self, report: &RotationReport) {
        let Outcome::Failed { error, attempts, unfinished_journal } = &report.outcome else { return };
        let tagged = self.tag_failure(report, *attempts).await;
        self.metrics.inc("kv_rotator_failure_tags_total", &[("result", if tagged { "written" } else { "skipped" })]);
        let Some(sink) = &self.alerts else { return };
        let key = (report.request.secret_name.to_ascii_lowercase(), report.outcome.kind());
        {
            let mut alerted = self.alerted.lock().expect("alert log poisoned");
            let now = Instant::now();
            alerted.retain(|_, at| now.duration_since(*at) < self.alert_repeat);
            if alerted.contains_key(&key) {
                self.metrics.inc("kv_rotator_alerts_total", &[("result", "repeat_suppressed")]);
                return;
            }
            alerted.insert(key, now);
        }
        let alert = Alert {
            unfinished_journal: unfinished_journal.clone(),
            vault: report.request.vault_name.clone(),
            secret: report.request.secret_name.clone(),
            rotation_id: report.rotation_id.clone(),
            version: report.request.version.clone(),
            trigger: report.request.trigger.to_string(),
            attempts: *attempts,
            error: error.clone(),
            at: OffsetDateTime::now_utc(),
        };
        match sink.send(&alert).await {
            Ok(()) => self.metrics.inc("kv_rotator_alerts_total", &[("result", "sent")]),
            Err(err) => {
                self.metrics.inc("kv_rotator_alerts_total", &[("result", "failed")]);
                warn!(error = %err, "could not deliver the failure alert");
            }
        }
    }

    /// Writes the failure tag on the secret's latest version. Tags are replaced as a
    /// whole by the service, so the others are read and written back; a secret already
    /// at Key Vault's 15 tags is left as it is (the log and the alert still report).
    async fn tag_failure(&self, report: &RotationReport, attempts: u32) -> bool {
        let secret = &report.request.secret_name;
        if !report.request.vault_name.eq_ignore_ascii_case(self.store.vault_name()) {
            return false;
        }
        let latest = match self.store.get_latest(secret).await {
            Ok(record) => record.properties,
            Err(err) => {
                warn!(error = %err, "cannot read the secret to tag the failure");
                return false;
            }
        };
        if !latest.tags.contains_key(TAG_ROTATOR) {
            // A journal whose secret lost its tags: mark the journal record instead.
            return match report.rotation_id.as_deref() {
                Some(id) => self.tag_journal_failure(&journal::journal_name(id), attempts).await,
                None => false,
            };
        }
        let mut tags = latest.tags.clone();
        if !tags.contains_key(TAG_FAILED) && tags.len() >= MAX_TAGS {
            warn!("secret has {} tags, Key Vault's limit: no room for the failure tag", tags.len());
            return false;
        }
        let at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        let rotation = report.rotation_id.as_deref().unwrap_or("-");
        tags.insert(TAG_FAILED.to_owned(), format!("{at} attempts={attempts} rotation={rotation}"));
        let update = PropertiesUpdate { tags: Some(tags), ..Default::default() };
        match self.store.update_properties(secret, latest.version.as_deref(), update).await {
            Ok(_) => true,
            Err(err) => {
                warn!(error = %err, "could not write the failure tag");
                false
            }
        }
    }

    /// The failure tag on a journal record (when its secret is not managed any more).
    async fn tag_journal_failure(&self, journal_name: &str, attempts: u32) -> bool {
        let Ok(record) = self.store.get_latest(journal_name).await else { return false };
        let mut tags = record.properties.tags;
        let at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        tags.insert(TAG_FAILED.to_owned(), format!("{at} attempts={attempts} secret-not-managed"));
        let update = PropertiesUpdate { tags: Some(tags), ..Default::default() };
        self.store.update_properties(journal_name, Some(&record.version), update).await.is_ok()
    }
}
