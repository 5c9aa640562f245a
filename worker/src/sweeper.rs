//! The sweeper: one listing of the vault turned into rotation requests.
//!
//! - [`scan`]: lists the secrets once and finds (1) unfinished journal records — each
//!   names its secret (`kv-rotator-journal-for`) and source version (`rotated-from`),
//!   so resuming is just requesting that rotation again — and (2) managed secrets (tag
//!   `rotator`) whose latest version is due under the engine's rule ([`DueRule`]: within
//!   the lead before `exp`, expired, or without `exp`), each naming the version it saw,
//!   and (3) multi-password secrets whose old passwords' grace period is over
//!   ([`crate::engine::retire`]), even with the due scan off: it finishes a rotation.
//! - [`Sweeper`]: runs [`scan`] at startup and every `sweeper.interval_secs`, and
//!   enqueues what it finds; then the expiry warnings due ([`crate::notify::expiry`]).
//!   Each sweep also sets the gauges of what it saw ([`Census`]): managed secrets by due
//!   state, and the age of the oldest unfinished journal record.
//!   Event Grid drops undeliverable events after 24 h and fires NearExpiry once per
//!   version: this is what makes a missed event harmless.
//!
//! Requests name the version they saw, so they converge with deliveries and manual
//! triggers of the same state on one rotation id.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::due::{Due, DueRule};
use kv_rotator_config::SweeperConfig;
use kv_rotator_core::names;
use kv_rotator_core::tags::{TAG_FAILED, TAG_JOURNAL_FOR, TAG_ROTATED_FROM, TAG_ROTATOR};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::{SecretProperties, SecretStore, StoreError};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::engine::journal::{JOURNAL_PREFIX, RESERVED_PREFIX};
use crate::engine::retire::retirement_hint_due;
use crate::metrics::Metrics;
use crate::notify::expiry::{Expiring, ExpiryWarnings};

/// Why the sweeper enqueued a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// An unfinished journal record.
    Journal,
    /// The latest version expires within the window.
    NearExpiry,
    /// The latest version has expired.
    Expired,
    /// The latest version has no `exp`.
    NoExpiry,
    /// Multi-password: the old passwords' grace period is over ([`crate::engine::retire`]).
    Retirement,
}

impl Reason {
    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Journal => "journal",
            Reason::NearExpiry => "near_expiry",
            Reason::Expired => "expired",
            Reason::NoExpiry => "no_expiry",
            Reason::Retirement => "retirement",
        }
    }
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Rotations to request, with why.
    pub requests: Vec<(RotationRequest, Reason)>,
    /// Managed secrets seen (due or not).
    pub managed: usize,
    /// Secrets that could not be examined (their names and why).
    pub skipped: Vec<(String, String)>,
    /// Managed secrets whose latest version is enabled and has an `exp`, as listed.
    pub expiring: Vec<Expiring>,
    /// The managed secrets by due state, and the oldest journal record.
    pub census: Census,
}

/// What a listing says about the vault's state, for the gauges: managed secrets by due
/// state (judged by the engine's rule even when the due scan is off) and the oldest
/// unfinished journal record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Census {
    /// Not due yet, or disabled (never rotated by a schedule).
    pub not_due: usize,
    /// Due: within the lead before `exp`, or without `exp`.
    pub due: usize,
    /// Due, but waiting for its rotation window to open.
    pub waiting_for_window: usize,
    /// Past `exp`.
    pub expired: usize,
    /// Carrying the failure tag (a rotation failed past the retry cap), whatever else.
    pub failed: usize,
    /// When the oldest journal record was created (`None`: none unfinished).
    pub oldest_journal: Option<OffsetDateTime>,
}

impl Census {
    /// Counts one managed secret's latest version (as listed).
    fn count(&mut self, properties: &SecretProperties, now: OffsetDateTime, rule: &DueRule) {
        let state = if properties.tags.contains_key(TAG_FAILED) {
            &mut self.failed
        } else {
            match rule.check(properties, now) {
                Due::Expired => &mut self.expired,
                Due::NoExpiry | Due::NearExpiry | Due::WindowTooLate { .. } => &mut self.due,
                Due::WaitingForWindow { .. } => &mut self.waiting_for_window,
                Due::NotYet { .. } | Due::Disabled => &mut self.not_due,
            }
        };
        *state += 1;
    }

    /// Notes a journal record created at `created` (unknown: now).
    fn journal(&mut self, created: Option<OffsetDateTime>, now: OffsetDateTime) {
        let created = created.unwrap_or(now);
        self.oldest_journal = Some(self.oldest_journal.map_or(created, |oldest| oldest.min(created)));
    }

    /// The states with their metrics labels.
    pub fn states(&self) -> [(&'static str, usize); 5] {
        [
            ("not_due", self.not_due),
            ("due", self.due),
            ("waiting_for_window", self.waiting_for_window),
            ("expired", self.expired),
            ("failed", self.failed),
        ]
    }

    /// Seconds since the oldest journal record was created; 0 when there is none.
    pub fn journal_age_secs(&self, now: OffsetDateTime) -> f64 {
        self.oldest_journal.map_or(0.0, |oldest| (now - oldest).as_seconds_f64().max(0.0))
    }

    /// Sets the gauges to what this census saw.
    fn record(&self, metrics: &Metrics, now: OffsetDateTime) {
        for (state, count) in self.states() {
            metrics.set("kv_rotator_managed_secrets", &[("state", state)], count as f64);
        }
        metrics.set("kv_rotator_journal_age_seconds", &[], self.journal_age_secs(now));
    }
}

/// Whether a managed secret's latest version is due under `rule`, and why.
pub fn due(properties: &SecretProperties, now: OffsetDateTime, rule: &DueRule) -> Option<Reason> {
    match rule.check(properties, now) {
        Due::NoExpiry => Some(Reason::NoExpiry),
        Due::Expired => Some(Reason::Expired),
        // Near expiry; or its window opens too close to `exp` to wait for.
        Due::NearExpiry | Due::WindowTooLate { .. } => Some(Reason::NearExpiry),
        // The first sweep inside the window enqueues it.
        Due::WaitingForWindow { .. } => None,
        // A disabled latest version cannot be read (403): an operator disabled it on purpose.
        Due::NotYet { .. } | Due::Disabled => None,
    }
}

/// The resume request a journal record stands for, if it is one: named like a journal
/// record, and naming a valid secret and version. Tags are anyone's to write: without
/// these checks a tag could put line breaks and terminal escapes into the logs and the
/// operator's terminal, or `/` and `..` into the secret path asked of Key Vault.
pub fn journal_request(vault_name: &str, properties: &SecretProperties) -> Option<RotationRequest> {
    if !properties.name.starts_with(JOURNAL_PREFIX) {
        return None;
    }
    let secret = properties.tags.get(TAG_JOURNAL_FOR)?;
    let version = properties.tags.get(TAG_ROTATED_FROM)?;
    if !names::is_secret_name(secret) || !names::is_version(version) {
        warn!(
            journal = %properties.name,
            "journal record names an invalid secret or version in its tags: not resumed; an operator must check it"
        );
        return None;
    }
    Some(RotationRequest {
        vault_name: vault_name.to_owned(),
        secret_name: secret.clone(),
        version: Some(version.clone()),
        trigger: Trigger::Resume { journal: properties.name.clone() },
    })
}

/// Why a managed secret's latest version (as listed or read) needs a request: its
/// old passwords' retirement has come (always looked for: it finishes a rotation), or it
/// is due under `rule` (when the due scan is on).
fn wanted(properties: &SecretProperties, now: OffsetDateTime, rule: Option<&DueRule>) -> Option<Reason> {
    // A disabled latest version cannot be read: an operator disabled it on purpose.
    if properties.enabled && retirement_hint_due(&properties.tags, now) {
        return Some(Reason::Retirement);
    }
    rule.and_then(|rule| due(properties, now, rule))
}

/// Lists the vault once: journals to resume and retirements whose time has come always;
/// secrets due under `rule` when it is `Some`. Its [`Census`] judges by `rule`, or by
/// the default rule.
pub async fn scan(store: &dyn SecretStore, rule: Option<&DueRule>) -> Result<Scan, StoreError> {
    scan_judging(store, rule, rule.unwrap_or(&DueRule::default())).await
}

/// [`scan`], its [`Census`] judged by `census_rule`.
async fn scan_judging(
    store: &dyn SecretStore,
    rule: Option<&DueRule>,
    census_rule: &DueRule,
) -> Result<Scan, StoreError> {
    let now = OffsetDateTime::now_utc();
    let mut scan = Scan::default();
    for properties in store.list_secrets().await? {
        if properties.name.starts_with(JOURNAL_PREFIX) {
            scan.census.journal(properties.created, now);
        }
        if let Some(request) = journal_request(store.vault_name(), &properties) {
            scan.requests.push((request, Reason::Journal));
            continue;
        }
        if !properties.tags.contains_key(TAG_ROTATOR) {
            continue;
        }
        scan.managed += 1;
        scan.census.count(&properties, now, census_rule);
        if let (true, Some(expires)) = (properties.enabled, properties.expires) {
            scan.expiring.push(Expiring { secret: properties.name.clone(), expires });
        }
        let Some(reason) = wanted(&properties, now, rule) else { continue };
        // The listing names no version: read the latest to name the one seen, and judge
        // that version (a rotation may have written a new one since the listing).
        match store.get_latest(&properties.name).await {
            Ok(latest) if wanted(&latest.properties, now, rule).is_none() => {}
            Ok(latest) => scan.requests.push((
                RotationRequest {
                    vault_name: store.vault_name().to_owned(),
                    secret_name: properties.name.clone(),
                    version: Some(latest.version),
                    trigger: Trigger::Sweeper,
                },
                reason,
            )),
            Err(err) => scan.skipped.push((properties.name.clone(), err.to_string())),
        }
    }
    Ok(scan)
}

/// The managed secrets (tag `rotator`; never a journal record or a name kv-rotator keeps
/// for itself) whose latest version carries every one of `tags` (none: all of them), for
/// `rotate --all`, `rotate --tag` and the admin API's jobs.
pub async fn managed_secrets(
    store: &dyn SecretStore,
    tags: &BTreeMap<String, String>,
) -> Result<Vec<String>, StoreError> {
    Ok(store
        .list_secrets()
        .await?
        .into_iter()
        .filter(|p| {
            p.tags.contains_key(TAG_ROTATOR)
                && !p.tags.contains_key(TAG_JOURNAL_FOR)
                && !p.name.to_ascii_lowercase().starts_with(RESERVED_PREFIX)
                && tags.iter().all(|(k, v)| p.tags.get(k) == Some(v))
        })
        .map(|p| p.name)
        .collect())
}

/// Runs [`scan`] at startup and on a schedule, feeding the engine's queue.
#[derive(Debug)]
pub struct Sweeper {
    store: Arc<dyn SecretStore>,
    queue: mpsc::Sender<RotationRequest>,
    config: SweeperConfig,
    rule: DueRule,
    metrics: Arc<Metrics>,
    warnings: Option<ExpiryWarnings>,
}

impl Sweeper {
    /// A sweeper over `store` feeding `queue`, judging versions by `rule` (the engine's).
    pub fn new(
        store: Arc<dyn SecretStore>,
        queue: mpsc::Sender<RotationRequest>,
        config: SweeperConfig,
        rule: DueRule,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { store, queue, config, rule, metrics, warnings: None }
    }

    /// After each sweep, sends the expiry warnings due ([`crate::notify::expiry`]).
    pub fn with_expiry_warnings(mut self, warnings: ExpiryWarnings) -> Self {
        self.warnings = Some(warnings);
        self
    }

    /// One scan, enqueued; returns the number of requests enqueued.
    pub async fn sweep_once(&self) -> Result<usize, StoreError> {
        let rule = self.config.enabled.then_some(&self.rule);
        let scan = match scan_judging(self.store.as_ref(), rule, &self.rule).await {
            Ok(scan) => scan,
            Err(err) => {
                self.count_sweep("error");
                return Err(err);
            }
        };
        self.count_sweep("ok");
        self.rule.windows.sweep_succeeded(OffsetDateTime::now_utc());
        scan.census.record(&self.metrics, OffsetDateTime::now_utc());
        for (name, why) in &scan.skipped {
            warn!(secret = %name, error = %why, "sweeper could not read a secret near expiry");
        }
        let queued: std::collections::HashSet<String> =
            scan.requests.iter().map(|(request, _)| request.secret_name.clone()).collect();
        let mut enqueued = 0;
        for (request, reason) in scan.requests {
            self.metrics.inc("kv_rotator_sweep_enqueued_total", &[("reason", reason.as_str())]);
            if self.queue.send(request).await.is_err() {
                break; // the engine stopped: shutting down
            }
            enqueued += 1;
        }
        if let Some(warnings) = &self.warnings {
            warnings.after_sweep(&scan.expiring, &queued, OffsetDateTime::now_utc());
        }
        info!(managed = scan.managed, enqueued, "sweep done");
        Ok(enqueued)
    }

    /// Counts a sweep and stamps its time: a failing sweep leaves the census gauges as
    /// they were, and the timestamps say how old they are.
    fn count_sweep(&self, result: &'static str) {
        self.metrics.inc("kv_rotator_sweeps_total", &[("result", result)]);
        let now = OffsetDateTime::now_utc().unix_timestamp() as f64;
        self.metrics.set("kv_rotator_last_sweep_timestamp_seconds", &[("result", result)], now);
    }

    /// Sweeps now, then every `interval_secs`, until the queue closes.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(self.config.interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.queue.is_closed() {
                return;
            }
            if let Err(err) = self.sweep_once().await {
                warn!(error = %err, "sweep failed; retrying at the next interval");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(expires: Option<OffsetDateTime>, enabled: bool) -> SecretProperties {
        SecretProperties { name: "s".into(), enabled, expires, ..Default::default() }
    }

    #[test]
    fn due_covers_no_expiry_expired_and_the_lead_only() {
        let now = OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let rule = DueRule::default();
        assert_eq!(due(&props(None, true), now, &rule), Some(Reason::NoExpiry));
        assert_eq!(due(&props(Some(now - day), true), now, &rule), Some(Reason::Expired));
        assert_eq!(due(&props(Some(now + 29 * day), true), now, &rule), Some(Reason::NearExpiry));
        assert_eq!(due(&props(Some(now + 31 * day), true), now, &rule), None);
        assert_eq!(due(&props(None, false), now, &rule), None, "disabled latest version left alone");
    }

    #[test]
    fn the_census_counts_each_managed_secret_once_and_the_oldest_journal() {
        let now = OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let rule = DueRule::default();
        let mut census = Census::default();
        let mut failed = props(Some(now + 90 * day), true);
        failed.tags.insert(TAG_FAILED.into(), "x".into());
        for p in [props(Some(now + 90 * day), true), props(None, true), props(Some(now - day), true), failed] {
            census.count(&p, now, &rule);
        }
        census.count(&props(Some(now + 29 * day), true), now, &rule);
        assert_eq!(
            census.states(),
            [("not_due", 1), ("due", 2), ("waiting_for_window", 0), ("expired", 1), ("failed", 1)]
        );
        assert_eq!(census.journal_age_secs(now), 0.0, "no journal: 0");
        census.journal(Some(now - time::Duration::seconds(30)), now);
        census.journal(Some(now - time::Duration::seconds(90)), now);
        census.journal(None, now);
        assert_eq!(census.journal_age_secs(now), 90.0);
    }

    #[test]
    fn a_journal_record_names_its_secret_and_source_version() {
        let mut p = props(None, true);
        p.name = "kv-rotator-pending-abc".into();
        p.tags.insert(TAG_JOURNAL_FOR.into(), "db-password".into());
        p.tags.insert(TAG_ROTATED_FROM.into(), "v1".into());
        let r = journal_request("vault", &p).unwrap();
        assert_eq!((r.secret_name.as_str(), r.version.as_deref()), ("db-password", Some("v1")));
        p.tags.remove(TAG_ROTATED_FROM);
        assert!(journal_request("vault", &p).is_none());
    }

    #[test]
    fn journal_tags_on_other_secrets_or_with_hostile_values_make_no_request() {
        let journal = |name: &str, secret: &str, version: &str| {
            let mut p = props(None, true);
            p.name = name.into();
            p.tags.insert(TAG_JOURNAL_FOR.into(), secret.into());
            p.tags.insert(TAG_ROTATED_FROM.into(), version.into());
            journal_request("vault", &p)
        };
        assert!(journal("kv-rotator-pending-abc", "db-password", "0123abcd").is_some());
        // Tags copied onto a secret that is not a journal record.
        assert!(journal("innocent", "db-password", "0123abcd").is_none());
        for (secret, version) in [
            ("x\u{1b}]0;pwned\u{7}\u{1b}[2K\rdb-password: rotated", "0123abcd"),
            ("db\u{202e}password", "0123abcd"),
            ("../deletedsecrets/x", "0123abcd"),
            ("db trigger=manual", "0123abcd"),
            ("db-password", "v1?api-version=1"),
            ("db-password", "../x"),
            (&"a".repeat(128), "0123abcd"),
        ] {
            assert!(journal("kv-rotator-pending-abc", secret, version).is_none(), "{secret:?} {version:?}");
        }
    }
}
