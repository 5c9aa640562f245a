//! The invariant under what the first suites never tried (issue 9): rotation loops from
//! short validities, events that are not due, a storm of triggers, a change that shows
//! only after a delay, two engines on one vault, and a vault outage after the target
//! changed. Each test drives the real engine against the dev vault (through the SDK) and
//! an htpasswd target, or a target double that models one unkind behaviour.
//!
//! Size: ~860 lines, all tests: 10 of the invariant, each beside the target double it
//! needs (`Lagging`, `Jittery`, …), all on the `Site` above them; each file under tests/
//! is one more binary linking the whole worker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kv_rotator::engine::{Engine, Outcome, RotationReport};
use kv_rotator::service::{self, Background};
use kv_rotator::sweeper;
use kv_rotator::targets::Targets;
use kv_rotator_config::{AlertsConfig, EngineConfig, SweeperConfig, WebhookConfig};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions, ErrorRule, Faults, Injected, Operation};
use kv_rotator_keyvault::pipeline::{ClientSettings, RetrySettings};
use kv_rotator_keyvault::{NewSecretVersion, PropertiesUpdate, SecretStore};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::{
    PasswordPolicy, Rotator, RotatorError, RotatorResult, SetPasswordOutcome, SetPasswordRequest, SetPasswordResponse,
    VerifyRequest, VerifyResponse,
};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

const DAY: time::Duration = time::Duration::days(1);

/// A dev vault, a store on it, and an htpasswd file as the target.
struct Site {
    dir: tempfile::TempDir,
    vault: Arc<DevVault>,
    store: Arc<dyn SecretStore>,
}

impl Site {
    async fn new() -> Site {
        Site::with_settings(ClientSettings::default()).await
    }

    async fn with_settings(settings: ClientSettings) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let vault = Arc::new(DevVault::start(DevVaultOptions::default()).await.unwrap());
        let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault_with(&vault, settings).unwrap());
        Site { dir, vault, store }
    }

    fn htpasswd(&self) -> HtpasswdRotator {
        let cfg = HtpasswdConfig { bcrypt_cost: 4, ..HtpasswdConfig::new(self.dir.path().join("htpasswd")) };
        HtpasswdRotator::new(cfg, PasswordPolicy::default())
    }

    /// A user on the htpasswd target and its managed secret; returns the first version.
    async fn user(&self, secret: &str, user: &str, tags: &[(&str, &str)], exp: Option<OffsetDateTime>) -> String {
        let password = PasswordPolicy::default().generate();
        htpasswd::add_user(self.dir.path().join("htpasswd"), user, &password, 4).unwrap();
        self.put(secret, &password, user, tags, exp).await
    }

    async fn put(
        &self,
        secret: &str,
        password: &SecretString,
        user: &str,
        tags: &[(&str, &str)],
        expires: Option<OffsetDateTime>,
    ) -> String {
        let mut all =
            BTreeMap::from([("rotator".to_owned(), "site".to_owned()), ("CredentialId".to_owned(), user.to_owned())]);
        all.extend(tags.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let new =
            NewSecretVersion { value: password.clone(), tags: all, content_type: None, expires, not_before: None };
        self.store.set_secret(secret, new).await.unwrap().version
    }

    fn request(&self, secret: &str, version: Option<&str>, trigger: Trigger) -> RotationRequest {
        RotationRequest {
            vault_name: self.store.vault_name().to_owned(),
            secret_name: secret.to_owned(),
            version: version.map(str::to_owned),
            trigger,
        }
    }

    async fn versions(&self, secret: &str) -> usize {
        self.store.list_versions(secret).await.unwrap().len()
    }

    /// The latest password of every journal record.
    async fn journals(&self) -> Vec<SecretString> {
        let mut out = Vec::new();
        for p in self.store.list_secrets().await.unwrap() {
            if p.tags.contains_key("kv-rotator-journal-for") {
                if let Ok(record) = self.store.get_latest(&p.name).await {
                    out.push(record.value);
                }
            }
        }
        out
    }

    /// Every password readable from journal records: each version of each record.
    async fn journal_versions(&self) -> Vec<SecretString> {
        let mut out = Vec::new();
        for p in self.store.list_secrets().await.unwrap() {
            if !p.tags.contains_key("kv-rotator-journal-for") {
                continue;
            }
            for v in self.store.list_versions(&p.name).await.unwrap_or_default() {
                if let Ok(record) = self.store.get_version(&p.name, v.version.as_deref().unwrap_or_default()).await {
                    out.push(record.value);
                }
            }
        }
        out
    }
}

fn event(event_id: &str) -> Trigger {
    Trigger::EventGrid { event_id: event_id.into(), event_type: "Microsoft.KeyVault.SecretNearExpiry".into() }
}

fn manual(force: bool) -> Trigger {
    Trigger::Manual { requested_by: "invariant test".into(), force }
}

async fn logs_in(rotator: &dyn Rotator, user: &str, password: &SecretString) -> bool {
    let req = VerifyRequest::new(user, password.clone());
    rotator.verify(req).await.unwrap() == VerifyResponse::Accepted
}

fn quick_engine() -> EngineConfig {
    EngineConfig {
        initial_backoff_ms: 10,
        max_backoff_ms: 50,
        min_rotation_interval_secs: 0,
        finish_retry_for_secs: 0,
        ..Default::default()
    }
}

/// Item 1: the sweeper at a 1 s interval over 20 sweeps, and a `SecretNearExpiry`
/// delivery for every version seen at every second, give exactly one rotation per
/// validity period — for validities of 7, 14 and 30 days against the default 30-day
/// window (the demo's own tags are the 30-day case). The minimum interval is off here,
/// so the due rule alone is what stops the loop. On the engine before issue 9, the
/// 30-day secret was due again the instant it was rotated (its new `exp` was within the
/// window), and every sweep wrote a new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rotation_per_validity_period_under_a_fast_sweeper_and_repeated_events() {
    let site = Site::new().await;
    let secrets = [("v7", "u7", 7i64), ("v14", "u14", 14), ("v30", "u30", 30)];
    let mut first = BTreeMap::new();
    for (secret, user, days) in secrets {
        let validity = days.to_string();
        // Due now for every validity: expires in a day.
        let exp = Some(OffsetDateTime::now_utc() + DAY);
        let v1 = site.user(secret, user, &[("ValidityPeriodDays", &validity)], exp).await;
        first.insert(secret, v1);
    }
    let mut targets = Targets::default();
    targets.insert("site", Arc::new(site.htpasswd()), None);
    let background =
        Background { sweeper: Some(SweeperConfig { interval_secs: 1, ..Default::default() }), ..Default::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = service::start_with(
        site.store.clone(),
        targets,
        quick_engine(),
        &WebhookConfig::default(),
        background,
        listener,
    )
    .await
    .unwrap();
    let url = format!("http://{}/api/eventgrid", running.webhook_addr);
    let http = reqwest::Client::new();
    let metrics = running.engine.metrics();
    let mut deliveries = 0;
    let started = Instant::now();
    while metrics.counter("kv_rotator_sweeps_total", &[("result", "ok")]) < 20 {
        assert!(started.elapsed() < Duration::from_secs(60), "20 sweeps did not happen within 60 s");
        // Event Grid's NearExpiry for the version seen now, and a redelivery for the first.
        for (secret, _, _) in secrets {
            let latest = site.store.get_latest(secret).await.unwrap();
            for version in [latest.version.as_str(), first[secret].as_str()] {
                let exp = latest.properties.expires.unwrap_or_else(OffsetDateTime::now_utc);
                let body = kv_rotator::cli::seed::near_expiry_delivery(
                    site.store.vault_name(),
                    &site.vault.host(),
                    secret,
                    version,
                    exp,
                );
                let status = http.post(&url).json(&body).send().await.unwrap().status();
                assert_eq!(status, 200);
                deliveries += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let the last requests drain.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sweeps = metrics.counter("kv_rotator_sweeps_total", &[("result", "ok")]);
    for (secret, user, days) in secrets {
        let versions = site.versions(secret).await;
        let latest = site.store.get_latest(secret).await.unwrap();
        assert_eq!(versions, 2, "{secret}: exactly one rotation in {sweeps} sweeps and {deliveries} deliveries");
        let exp = latest.properties.expires.expect("a rotated version has exp");
        let lives = exp - OffsetDateTime::now_utc();
        assert!((lives - DAY * days as i32).abs() < time::Duration::minutes(5), "{secret}: exp in {lives}");
        assert!(logs_in(&site.htpasswd(), user, &latest.value).await);
    }
    let rotated: u64 = ["event_grid", "sweeper"]
        .iter()
        .map(|t| metrics.counter("kv_rotator_rotations_total", &[("outcome", "rotated"), ("trigger", t)]))
        .sum();
    let not_due = metrics.counter("kv_rotator_rotations_total", &[("outcome", "not_due"), ("trigger", "event_grid")]);
    println!(
        "loop test: {sweeps} sweeps at 1 s, {deliveries} deliveries, {rotated} rotations for 3 secrets, \
         {not_due} events acknowledged as not due"
    );
    assert_eq!(rotated, 3);
    assert!(not_due > 0, "events for fresh versions are acknowledged as not due");
    running.shutdown().await.unwrap();
}

/// An alert sink that counts the alerts it receives.
async fn alert_sink() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = received.clone();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// Item 2: an accepted event rotates only what Key Vault's own attributes say is due;
/// an event without a version obeys the same rule; the minimum interval caps a storm
/// (a hostile `exp` in the past included) and only a forced manual request passes it;
/// events for unknown secrets cost one read and raise no alert; and a failing secret
/// alerts once per period, however often it is triggered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_rotate_only_due_versions_and_storms_are_capped() {
    let site = Site::new().await;
    let (url, alerts) = alert_sink().await;
    let mut targets = Targets::default();
    targets.insert("site", Arc::new(site.htpasswd()), None);
    let settings = EngineConfig { min_rotation_interval_secs: 3600, ..quick_engine() };
    let sink = kv_rotator::alerts::WebhookSink::new(&url, Duration::from_secs(2));
    let engine = Engine::new(site.store.clone(), targets, settings).with_alert_sink(sink, Duration::from_secs(3600));

    // Not due: expires in 45 days, validity 60 (lead 30).
    let far = site.user("far", "far", &[], Some(OffsetDateTime::now_utc() + DAY * 45)).await;
    for version in [Some(far.as_str()), None] {
        let report = engine.rotate(site.request("far", version, event("e-far"))).await;
        assert!(
            matches!(&report.outcome, Outcome::NotDue { version, due_at: Some(_) } if *version == far),
            "{report:?}"
        );
    }
    assert_eq!(site.versions("far").await, 1, "an event is a hint: nothing written for a version not due");

    // A hostile or mistaken exp in the past on a version written a minute ago (the
    // secret's second: it has been rotated before): due, but within the minimum interval
    // — refused for events, the sweeper and plain manual requests.
    site.user("fresh", "fresh-old", &[], None).await;
    let fresh = site.user("fresh", "fresh", &[], Some(OffsetDateTime::now_utc() + DAY * 45)).await;
    let update = PropertiesUpdate { expires: Some(OffsetDateTime::now_utc() - DAY), ..Default::default() };
    site.store.update_properties("fresh", None, update).await.unwrap();
    for trigger in [event("e-fresh"), Trigger::Sweeper, manual(false)] {
        let report = engine.rotate(site.request("fresh", Some(&fresh), trigger)).await;
        assert!(matches!(report.outcome, Outcome::TooSoon { .. }), "{report:?}");
    }
    assert_eq!(site.versions("fresh").await, 2, "nothing written");
    let forced = engine.rotate(site.request("fresh", Some(&fresh), manual(true))).await;
    assert!(matches!(forced.outcome, Outcome::Rotated { .. }), "{forced:?}");

    // Unknown secrets: acknowledged as not found, no alert, no failure.
    for i in 0..5 {
        let report = engine.rotate(site.request("no-such-secret", Some("0123"), event(&format!("e{i}")))).await;
        assert_eq!(report.outcome, Outcome::NotFound);
    }
    // A secret that fails (its profile does not exist) every time: one alert per period.
    let exp = Some(OffsetDateTime::now_utc() - DAY);
    let broken = site.user("broken", "broken", &[("rotator", "nowhere")], exp).await;
    let mut engine_without_interval = engine.clone();
    engine_without_interval = engine_without_interval
        .with_due_rule(kv_rotator::engine::due::DueRule { min_interval: Duration::ZERO, ..engine.due_rule() });
    for i in 0..4 {
        let report =
            engine_without_interval.rotate(site.request("broken", Some(&broken), event(&format!("b{i}")))).await;
        assert!(matches!(report.outcome, Outcome::Failed { .. }), "{report:?}");
    }
    let received = alerts.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "one alert for four failures of one secret: {received:?}");
    assert_eq!(received[0]["secret"], "broken");
    let m = engine.metrics();
    assert_eq!(m.counter("kv_rotator_alerts_total", &[("result", "repeat_suppressed")]), 3);
    assert_eq!(m.counter("kv_rotator_rotations_total", &[("outcome", "not_due"), ("trigger", "event_grid")]), 2);
    assert_eq!(m.counter("kv_rotator_rotations_total", &[("outcome", "not_found"), ("trigger", "event_grid")]), 5);
}

/// A target whose changes show on its login path only after a delay: replication lag
/// behind a balanced host, or a pooler with its own auth file. `set_password` changes
/// the primary and, like the PostgreSQL rotator, proves the change with a fresh login,
/// which goes to the lagging replica.
#[derive(Debug)]
struct Lagging {
    lag: Duration,
    /// How `set_password` reports "changed, but the new password does not log in yet":
    /// `true` as the PostgreSQL rotator did before issue 9 (Permanent), `false` as the
    /// contract now says (NotYetVisible).
    report_as_permanent: bool,
    state: Mutex<(String, String, Instant)>,
    policy: PasswordPolicy,
}

impl Lagging {
    fn new(initial: &SecretString, lag: Duration, report_as_permanent: bool) -> Self {
        let pw = initial.expose_secret().to_owned();
        Self {
            lag,
            report_as_permanent,
            state: Mutex::new((pw.clone(), pw, Instant::now())),
            policy: PasswordPolicy::default(),
        }
    }

    /// An operator's change on the primary, outside kv-rotator; the replica shows it after the lag.
    fn change_by_hand(&self, password: &SecretString) {
        // What the replica shows is brought up to date first: a change whose lag has passed shows.
        self.replica();
        let mut state = self.state.lock().unwrap();
        state.0 = password.expose_secret().to_owned();
        state.2 = Instant::now();
    }

    /// The password the login path accepts now.
    fn replica(&self) -> String {
        let mut state = self.state.lock().unwrap();
        if state.2.elapsed() >= self.lag {
            state.1 = state.0.clone();
        }
        state.1.clone()
    }
}

#[async_trait]
impl Rotator for Lagging {
    fn kind(&self) -> &'static str {
        "lagging"
    }
    fn password_policy(&self) -> &PasswordPolicy {
        &self.policy
    }
    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        if self.replica() == req.pending.expose_secret() {
            return Ok(SetPasswordResponse::new(SetPasswordOutcome::AlreadySet));
        }
        {
            let mut state = self.state.lock().unwrap();
            if state.0 != req.pending.expose_secret() {
                // The login goes to the primary, which has the change at once.
                if state.0 != req.current.expose_secret() {
                    return Err(RotatorError::Permanent("no known login".into()));
                }
                state.0 = req.pending.expose_secret().to_owned();
                state.2 = Instant::now();
            }
        }
        if self.replica() == req.pending.expose_secret() {
            return Ok(SetPasswordResponse::new(SetPasswordOutcome::ChangedWithCurrent));
        }
        let msg = "the password was changed, but the new password does not log in".to_owned();
        Err(if self.report_as_permanent { RotatorError::Permanent(msg) } else { RotatorError::NotYetVisible(msg) })
    }
    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        Ok(if self.replica() == req.password.expose_secret() {
            VerifyResponse::Accepted
        } else {
            VerifyResponse::Rejected
        })
    }
}

/// Item 3: a change that shows after a delay never costs the pending password. With a
/// rotator reporting it as the PostgreSQL rotator did (a permanent error), the engine
/// before issue 9 proved "pending rejected, current accepted" — exactly what lag shows —
/// and journaled a fresh password over the one the target had just taken: once the lag
/// cleared, no password in Key Vault logged in. Now only `RotatorError::Refused` may lead
/// to a fresh password; the journal is kept and the rotation finishes once the change
/// shows. Reported as `NotYetVisible` (the contract now), it finishes within the request
/// — through the finishing schedule when the lag outlasts `max_attempts` — and a failure
/// would say the target changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_visible_only_after_a_delay_is_never_replaced() {
    for (report_as_permanent, lag_ms) in [(true, 700u64), (false, 700), (false, 3000)] {
        let site = Site::new().await;
        let initial = PasswordPolicy::default().generate();
        let v1 = site.put("lagged", &initial, "app", &[], None).await;
        let target = Arc::new(Lagging::new(&initial, Duration::from_millis(lag_ms), report_as_permanent));
        let mut targets = Targets::default();
        targets.insert("site", target.clone(), None);
        let settings = EngineConfig {
            max_attempts: 4,
            initial_backoff_ms: 100,
            max_backoff_ms: 300,
            finish_retry_interval_secs: 1,
            finish_retry_for_secs: 20,
            ..quick_engine()
        };
        let engine = Engine::new(site.store.clone(), targets, settings);
        let report = engine.rotate(site.request("lagged", Some(&v1), manual(false))).await;
        if report_as_permanent {
            assert!(matches!(report.outcome, Outcome::Failed { .. }), "{report:?}");
            // The target took the pending password; it is the journal's, never replaced.
            tokio::time::sleep(Duration::from_millis(lag_ms + 100)).await;
            let journals = site.journals().await;
            assert_eq!(journals.len(), 1);
            assert!(target.replica() == journals[0].expose_secret(), "the journal holds what the target took");
            // The sweeper's resume finishes it.
            let scan = sweeper::scan(site.store.as_ref(), None).await.unwrap();
            let (resume, _) = scan.requests.into_iter().next().expect("the journal is found");
            let resumed = engine.rotate(resume).await;
            assert!(matches!(resumed.outcome, Outcome::Rotated { .. }), "{resumed:?}");
        } else {
            assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
            assert!(report.attempts > 1, "the lag cost retries: {report:?}");
            if lag_ms > 1000 {
                assert!(report.attempts > 4, "finished past max_attempts, on the finishing schedule: {report:?}");
            }
        }
        let latest = site.store.get_latest("lagged").await.unwrap();
        assert!(target.replica() == latest.value.expose_secret(), "the latest version logs in");
        assert!(site.journals().await.is_empty());
    }
}

/// A lagging target and a hostile or careless writer together. The target took the
/// pending password P (its primary has it; the replica that logins reach shows it only
/// after the lag), so P is only in the journal record. Someone then writes a newer
/// version: with a value nobody uses, or with the old password (an operator "restoring"
/// the previous value), with or without the rotation's id (as if it had finished). The
/// resume finds the rotation already rotated or stale, and the lagging replica refuses P
/// and takes the old password, or takes neither: only lag. The record must stay in all
/// four. Before, "finished" by the tag and "accepts neither" deleted it, and so did the
/// old password logging in; once the lag cleared no password in Key Vault logged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_finish_and_a_lagging_target_never_cost_the_journal() {
    let cases = [(false, true), (false, false), (true, true), (true, false)];
    let runs =
        cases.map(|(old_password, tagged)| tokio::spawn(planted_version_over_a_lagging_target(old_password, tagged)));
    let mut lost = Vec::new();
    for (case, run) in cases.iter().zip(runs) {
        if let Some(what) = run.await.unwrap() {
            lost.push(format!("(old password, rotation id tag) = {case:?}: {what}"));
        }
    }
    assert!(lost.is_empty(), "{lost:#?}");
}

/// A rotation whose pending password P is only in its journal record: the `Lagging`
/// target's primary took P, its replica does not show it yet, and the one attempt allowed
/// failed.
struct Unfinished {
    site: Site,
    secret: &'static str,
    /// The secret's first value and version: the rotation's source.
    initial: SecretString,
    v1: String,
    target: Arc<Lagging>,
    rotation_id: String,
    /// The journal record's name, and P.
    journal: String,
    pending: SecretString,
}

impl Unfinished {
    async fn new(secret: &'static str, lag: Duration) -> Unfinished {
        let site = Site::new().await;
        let initial = PasswordPolicy::default().generate();
        let v1 = site.put(secret, &initial, "app", &[], None).await;
        let target = Arc::new(Lagging::new(&initial, lag, false));
        let mut unfinished = Unfinished {
            site,
            secret,
            initial,
            v1,
            target,
            rotation_id: String::new(),
            journal: String::new(),
            pending: SecretString::from(String::new()),
        };
        let engine = unfinished.engine(EngineConfig { max_attempts: 1, ..quick_engine() });
        let report = engine.rotate(unfinished.site.request(secret, Some(&unfinished.v1), manual(false))).await;
        assert!(matches!(report.outcome, Outcome::Failed { unfinished_journal: Some(_), .. }), "{report:?}");
        unfinished.rotation_id = report.rotation_id.clone().expect("a rotation id");
        unfinished.pending = unfinished.site.journals().await.pop().expect("the journal holds P");
        let records = unfinished.site.store.list_secrets().await.unwrap().into_iter();
        let mut records = records.filter(|p| p.tags.contains_key("kv-rotator-journal-for"));
        unfinished.journal = records.next().expect("the record").name;
        unfinished
    }

    /// An engine over the same vault and target.
    fn engine(&self, settings: EngineConfig) -> Engine {
        let mut targets = Targets::default();
        targets.insert("site", self.target.clone(), None);
        Engine::new(self.site.store.clone(), targets, settings)
    }

    /// A second engine's turn: a fresh password journaled over the record as its newest
    /// version, and set on the target's primary (its replica lags again).
    async fn journal_again_and_set_by_hand(&self) -> SecretString {
        let first = self.site.store.get_latest(&self.journal).await.unwrap();
        let newest = PasswordPolicy::default().generate();
        let again = NewSecretVersion {
            value: newest.clone(),
            tags: first.properties.tags.clone(),
            content_type: first.properties.content_type.clone(),
            expires: None,
            not_before: None,
        };
        self.site.store.set_secret(&self.journal, again).await.unwrap();
        self.target.change_by_hand(&newest);
        newest
    }

    /// The sweeper's resume of the rotation, through `engine`.
    async fn resume(&self, engine: &Engine) -> RotationReport {
        let trigger = Trigger::Resume { journal: "by the sweeper".into() };
        engine.rotate(self.site.request(self.secret, Some(&self.v1), trigger)).await
    }
}

/// The other side of the rule above: a leftover record is not kept forever. The target
/// took the record's password P, then an operator changed it by hand to N and wrote N as
/// the latest version. The latest logs in: once the record is older than
/// `engine.target_lag_secs` the record goes; younger, it stays, and the request is only
/// stale (no failure, no alert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_record_goes_once_the_latest_logs_in_and_the_target_settled() {
    let lag = Duration::from_millis(800);
    let u = Unfinished::new("by-hand", lag).await;
    let by_hand = PasswordPolicy::default().generate();
    u.target.change_by_hand(&by_hand);
    tokio::time::sleep(lag + Duration::from_millis(200)).await;
    u.site.put(u.secret, &by_hand, "app", &[], None).await;
    assert!(logs_in(u.target.as_ref(), "app", &by_hand).await);

    let engine_with = |target_lag_secs| u.engine(EngineConfig { max_attempts: 1, target_lag_secs, ..quick_engine() });
    let young_engine = engine_with(600);
    let young = u.resume(&young_engine).await;
    assert!(matches!(young.outcome, Outcome::Stale { .. }), "{young:?}");
    assert_eq!(u.site.journals().await.len(), 1, "younger than target_lag_secs: kept");
    assert_eq!(young_engine.metrics().counter("kv_rotator_journals_kept_total", &[("reason", "target_lag")]), 1);
    // Key Vault's times are whole seconds: a second more.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let settled = u.resume(&engine_with(1)).await;
    assert!(matches!(settled.outcome, Outcome::Stale { .. }), "{settled:?}");
    assert!(u.site.journals().await.is_empty(), "older than target_lag_secs, and the latest logs in: deleted");
}

/// Two passwords in the record, set one after the other on a primary whose replica lags:
/// the replica takes the older (pw1) while the primary has the newest (pw2). A forged
/// "finished" latest makes the resume judge the record as already rotated. Before, the
/// probe's first record password to log in — pw1 — was written again as the latest and
/// the record deleted: pw2, the primary's, was lost. Only the newest may be refinished;
/// an older one logging in is lag, and the record stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_record_password_a_lagging_replica_takes_is_never_refinished() {
    let lag = Duration::from_secs(2);
    let u = Unfinished::new("two-sets", lag).await;
    let pw1 = &u.pending;
    tokio::time::sleep(lag + Duration::from_millis(300)).await;
    assert!(logs_in(u.target.as_ref(), "app", pw1).await, "the replica shows pw1 now");

    let pw2 = u.journal_again_and_set_by_hand().await;
    // The forged finish: a latest carrying the rotation id, with a value nobody uses.
    let junk = PasswordPolicy::default().generate();
    u.site.put(u.secret, &junk, "app", &[("rotation-id", u.rotation_id.as_str())], None).await;

    let resumed = u.resume(&u.engine(EngineConfig { max_attempts: 1, ..quick_engine() })).await;
    assert!(!matches!(resumed.outcome, Outcome::Rotated { .. }), "{resumed:?}");
    let latest = u.site.store.get_latest(u.secret).await.unwrap();
    assert!(latest.value.expose_secret() != pw1.expose_secret(), "pw1 refinished over the primary's pw2");
    assert!(
        u.site.journal_versions().await.iter().any(|v| v.expose_secret() == pw2.expose_secret()),
        "pw2, the primary's password, is no longer readable: {resumed:?}"
    );
    tokio::time::sleep(lag).await;
    assert!(logs_in(u.target.as_ref(), "app", &pw2).await, "once the lag clears, pw2 is what the target takes");
}

/// The resume of a rotation whose record holds two passwords, set one after the other
/// on a primary whose replica lags: the replica takes the older (pw1), the primary has
/// the newest (pw2). Before, the resume journaled pw1 again as the newest, found it
/// "already set" (the replica takes it) and finished with it: once the lag cleared, pw2 —
/// the primary's — was in no version. Now it is tried again later, and finishes with pw2
/// once the replica shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_never_finishes_with_an_older_record_password_a_lagging_replica_takes() {
    let lag = Duration::from_secs(2);
    let u = Unfinished::new("resumed", lag).await;
    tokio::time::sleep(lag + Duration::from_millis(300)).await;
    let pw2 = u.journal_again_and_set_by_hand().await;

    let engine = u.engine(EngineConfig { max_attempts: 1, ..quick_engine() });
    let early = u.resume(&engine).await;
    let Outcome::Failed { error, unfinished_journal, .. } = &early.outcome else { panic!("{early:?}") };
    assert!(error.contains("takes an older password") && unfinished_journal.is_some(), "{early:?}");
    let latest = u.site.store.get_latest(u.secret).await.unwrap();
    assert!(latest.value.expose_secret() == u.initial.expose_secret(), "finished while the replica lagged: {early:?}");
    assert!(u.site.journals().await.iter().any(|v| v.expose_secret() == pw2.expose_secret()), "pw2 kept");

    tokio::time::sleep(lag).await;
    let late = u.resume(&engine).await;
    assert!(matches!(late.outcome, Outcome::Rotated { .. }), "{late:?}");
    let latest = u.site.store.get_latest(u.secret).await.unwrap();
    assert!(latest.value.expose_secret() == pw2.expose_secret(), "finished with the newest password, pw2");
    assert!(logs_in(u.target.as_ref(), "app", &latest.value).await);
}

/// A login path that never catches up (broken replication, a pooler's stale auth file):
/// the target's primary took the record's password P, its logins still take the old one.
/// An operator "restores" the old value as the latest. However old the record, the latest
/// holding the value the rotation started from is no proof: the record is kept for an
/// operator (a failure saying so), never deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_path_that_never_catches_up_never_costs_the_record() {
    let u = Unfinished::new("stuck", Duration::from_secs(3600)).await;
    u.site.put(u.secret, &u.initial, "app", &[], None).await;
    // Older than target_lag_secs (Key Vault's times are whole seconds).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resumed = u.resume(&u.engine(EngineConfig { max_attempts: 1, target_lag_secs: 1, ..quick_engine() })).await;
    let Outcome::Failed { error, .. } = &resumed.outcome else { panic!("{resumed:?}") };
    assert!(error.contains("a value the secret held before the rotation") && error.contains("operator"), "{error}");
    let journals = u.site.journals().await;
    assert_eq!(journals.len(), 1, "kept");
    assert!(journals[0].expose_secret() == u.pending.expose_secret(), "the record still holds P");
}

/// Someone who may write secrets but does not know the target's password forges the
/// record itself (its tags and content type are public; the rotation id is a hash of
/// public names). The target took the record's password P; its replica lags.
/// - `Finished`: a record version X and a secret version X carrying the rotation id, then
///   a junk latest — one of the record's passwords is in a finished version, but not P.
/// - `Hidden`: P's record version disabled, then a record version X and a latest X
///   carrying the rotation id — the readable record holds only the latest's value.
/// - `OldPassword` (stale, or "finished" by a junk latest carrying the rotation id): the
///   forger knows the old password S, as every consumer did, and writes it as the
///   record's newest version. The lagging replica takes S, so it looks like the record's
///   password the target uses. `OldPasswordOnResume`: the same with nothing else written,
///   so the resume (not the leftover judgement) meets it, and would have reused S.
///
/// Before, each deleted the record (or refinished S over it), and P with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_journal_version_never_costs_the_record() {
    let cases = [
        Forgery::Finished,
        Forgery::Hidden,
        Forgery::OldPassword { tagged: false },
        Forgery::OldPassword { tagged: true },
        Forgery::OldPasswordOnResume,
    ];
    let runs = cases.map(|forgery| tokio::spawn(forged_record_over_a_lagging_target(forgery)));
    let mut lost = Vec::new();
    for (forgery, run) in cases.iter().zip(runs) {
        if let Some(what) = run.await.unwrap() {
            lost.push(format!("{forgery:?}: {what}"));
        }
    }
    assert!(lost.is_empty(), "{lost:#?}");
}

/// The forgeries of the test above.
#[derive(Debug, Clone, Copy)]
enum Forgery {
    Finished,
    Hidden,
    OldPassword {
        tagged: bool,
    },
    /// The old password as the record's newest version, and nothing else: the resume
    /// (the source is still the latest) would reuse it.
    OldPasswordOnResume,
}

/// One case of the test above: what went wrong, if anything.
async fn forged_record_over_a_lagging_target(forgery: Forgery) -> Option<String> {
    let u = Unfinished::new("forged", Duration::from_secs(6)).await;
    let (site, journal, rotation_id) = (&u.site, &u.journal, &u.rotation_id);
    if matches!(forgery, Forgery::Hidden) {
        let p_version = site.store.list_versions(journal).await.unwrap().pop().unwrap().version.unwrap();
        let update = PropertiesUpdate { enabled: Some(false), ..Default::default() };
        site.store.update_properties(journal, Some(&p_version), update).await.unwrap();
    }
    let forged = match forgery {
        Forgery::OldPassword { .. } | Forgery::OldPasswordOnResume => u.initial.clone(),
        Forgery::Finished | Forgery::Hidden => PasswordPolicy::default().generate(),
    };
    // A perfect forgery: the genuine version's tags and content type, which are public.
    let genuine = site.store.list_versions(journal).await.unwrap().remove(0);
    let (tags, content_type) = (genuine.tags, genuine.content_type);
    let new = NewSecretVersion { value: forged.clone(), tags, content_type, expires: None, not_before: None };
    site.store.set_secret(journal, new).await.unwrap();
    let junk = PasswordPolicy::default().generate();
    let finished: &[(&str, &str)] = &[("rotation-id", rotation_id.as_str())];
    match forgery {
        Forgery::Finished => {
            site.put(u.secret, &forged, "app", finished, None).await;
            site.put(u.secret, &junk, "app", &[], None).await;
        }
        Forgery::Hidden => _ = site.put(u.secret, &forged, "app", finished, None).await,
        Forgery::OldPasswordOnResume => {}
        Forgery::OldPassword { tagged } => {
            _ = site.put(u.secret, &junk, "app", if tagged { finished } else { &[] }, None).await
        }
    }
    let resumed = u.resume(&u.engine(EngineConfig { max_attempts: 1, ..quick_engine() })).await;
    let versions = site.store.list_versions(journal).await.map(|v| v.len()).unwrap_or(0);
    if versions != 2 {
        return Some(format!("the record has {versions} versions, not P's and the forged one: {resumed:?}"));
    }
    let hidden = matches!(forgery, Forgery::Hidden);
    if !hidden && !site.journal_versions().await.iter().any(|v| v.expose_secret() == u.pending.expose_secret()) {
        return Some(format!("P is no longer readable from the record: {resumed:?}"));
    }
    let on_resume = matches!(forgery, Forgery::OldPasswordOnResume);
    if !on_resume && site.store.get_latest(u.secret).await.unwrap().value.expose_secret() == u.initial.expose_secret() {
        return Some(format!("the old password was refinished as the latest: {resumed:?}"));
    }
    if matches!(resumed.outcome, Outcome::Rotated { .. }) {
        return Some(format!("the resume finished with the forged password: {resumed:?}"));
    }
    None
}

/// One case of the planted-version test: what went wrong, if anything.
async fn planted_version_over_a_lagging_target(old_password: bool, tagged: bool) -> Option<String> {
    let lag = Duration::from_secs(6);
    let u = Unfinished::new("planted", lag).await;
    let (site, target, initial, pending) = (&u.site, &u.target, &u.initial, &u.pending);

    let planted = if old_password { initial.clone() } else { PasswordPolicy::default().generate() };
    let tags: &[(&str, &str)] = if tagged { &[("rotation-id", u.rotation_id.as_str())] } else { &[] };
    site.put(u.secret, &planted, "app", tags, None).await;
    let resumed = u.resume(&u.engine(EngineConfig { max_attempts: 1, ..quick_engine() })).await;
    if matches!(resumed.outcome, Outcome::Rotated { .. }) {
        return Some(format!("the resume rotated: {resumed:?}"));
    }
    if old_password && !logs_in(target.as_ref(), "app", initial).await {
        return Some("the replica should still take the old password while the resume ran".into());
    }
    let journals = site.journals().await;
    if journals.len() != 1 || journals[0].expose_secret() != pending.expose_secret() {
        return Some(format!("the record holding the pending password is gone: {resumed:?}"));
    }

    // Once the lag clears, the target takes exactly what the record still holds.
    tokio::time::sleep(lag).await;
    if !logs_in(target.as_ref(), "app", pending).await || logs_in(target.as_ref(), "app", &planted).await {
        return Some("once the lag cleared, the target should take the record's password only".into());
    }
    None
}

/// A target double that takes a little while, at random, for every change: it widens
/// the windows in which two engines interleave.
#[derive(Debug)]
struct Jittery {
    inner: HtpasswdRotator,
}

#[async_trait]
impl Rotator for Jittery {
    fn kind(&self) -> &'static str {
        "jittery-htpasswd"
    }
    fn password_policy(&self) -> &PasswordPolicy {
        self.inner.password_policy()
    }
    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        let pause = rand::random::<u64>() % 40;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        self.inner.set_password(req).await
    }
    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        self.inner.verify(req).await
    }
}

/// Item 5, at the protocol's depth: two engines (as two processes: separate locks and
/// state) rotate the same secret at the same instant, forced, round after round — the
/// race the engine lease excludes between processes (see `one_engine.rs`), tried here
/// with no lease at all. After every round a password the target accepts is in Key
/// Vault (the latest version or a journal), and after a resume the latest logs in.
///
/// The target here checks the login and changes the password as one step (the htpasswd
/// rotator's lock, shared by both engines). Without that no protocol over Key Vault can
/// be safe: two engines' `set`s that each logged in before the other changed anything
/// both succeed, and the one that lands last may be the one whose engine already gave
/// up — a PostgreSQL session authenticated before another engine's `ALTER ROLE` can still
/// run its own. That is why one engine per vault is enforced by the lease, not left to
/// the re-fences this test exercises. The htpasswd file shows a change at once, so the
/// engines run with `target_lag_secs = 0` (lag is the `Lagging` tests' subject).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_without_a_lease_never_lose_a_password() {
    let site = Site::new().await;
    site.user("shared", "app", &[], None).await;
    let target = site.htpasswd();
    let engines: Vec<Engine> = (0..2)
        .map(|_| {
            let mut targets = Targets::default();
            targets.insert("site", Arc::new(Jittery { inner: target.clone() }), None);
            let settings = EngineConfig { max_attempts: 6, target_lag_secs: 0, ..quick_engine() };
            Engine::new(site.store.clone(), targets, settings)
        })
        .collect();
    let rotator = site.htpasswd();
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let rounds = 25;
    for round in 0..rounds {
        let latest = site.store.get_latest("shared").await.unwrap();
        let (a, b) = tokio::join!(
            engines[0].rotate(site.request("shared", Some(&latest.version), manual(true))),
            engines[1].rotate(site.request(
                "shared",
                if round % 2 == 0 { Some(&latest.version) } else { None },
                manual(true)
            )),
        );
        for report in [&a, &b] {
            *outcomes.entry(report.outcome.kind()).or_default() += 1;
        }
        let latest = site.store.get_latest("shared").await.unwrap();
        let mut ok = logs_in(&rotator, "app", &latest.value).await;
        for journal in site.journal_versions().await {
            ok = ok || logs_in(&rotator, "app", &journal).await;
        }
        assert!(ok, "round {round}: no password in Key Vault logs in\n{a:?}\n{b:?}");
        // Finish anything left, as the sweeper would.
        for (request, _) in sweeper::scan(site.store.as_ref(), None).await.unwrap().requests {
            let report: RotationReport = engines[0].rotate(request).await;
            if matches!(report.outcome, Outcome::Failed { .. }) {
                let history: Vec<_> = site
                    .store
                    .list_versions("shared")
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|v| {
                        (v.version, v.created, v.tags.get("rotation-id").cloned(), v.tags.get("rotated-from").cloned())
                    })
                    .collect();
                panic!("round {round}: resume failed: {report:?}\nthis round: {a:?}\n{b:?}\nhistory: {history:#?}");
            }
        }
        let latest = site.store.get_latest("shared").await.unwrap();
        assert!(logs_in(&rotator, "app", &latest.value).await, "round {round}: the latest version does not log in");
        assert!(site.journals().await.is_empty(), "round {round}: journal left");
    }
    println!("two engines, {rounds} rounds of simultaneous forced rotations: outcomes {outcomes:?}; invariant held");
    assert!(outcomes.get("rotated").copied().unwrap_or(0) >= rounds, "{outcomes:?}");
}

/// A target that takes Key Vault down for a while right after it accepts the password:
/// the vault outage comes exactly after `set`.
#[derive(Debug)]
struct OutageAfterSet {
    inner: HtpasswdRotator,
    vault: Arc<DevVault>,
    outage: Duration,
    recovered_at: Arc<Mutex<Option<Instant>>>,
    sets: AtomicU32,
}

#[async_trait]
impl Rotator for OutageAfterSet {
    fn kind(&self) -> &'static str {
        "outage-after-set"
    }
    fn password_policy(&self) -> &PasswordPolicy {
        self.inner.password_policy()
    }
    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        let response = self.inner.set_password(req).await?;
        if self.sets.fetch_add(1, Ordering::SeqCst) == 0 {
            let down = Faults {
                errors: vec![ErrorRule { operation: Some(Operation::Set), rate: 1.0, fault: Injected::Status(503) }],
                ..Default::default()
            };
            self.vault.set_faults(down).unwrap();
            let (vault, outage, recovered_at) = (self.vault.clone(), self.outage, self.recovered_at.clone());
            tokio::spawn(async move {
                tokio::time::sleep(outage).await;
                vault.set_faults(Faults::default()).unwrap();
                *recovered_at.lock().unwrap() = Some(Instant::now());
            });
        }
        Ok(response)
    }
    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        self.inner.verify(req).await
    }
}

/// Item 6: once the target has the pending password, a vault outage that outlasts
/// `max_attempts` does not end the rotation: it keeps finishing on the slower schedule
/// and the new version is written within seconds of the vault's recovery. Before issue
/// 9 it gave up after `max_attempts` (consumers broken until the next sweep, an hour
/// later) and said "the current password stays in place". An outage longer than
/// `finish_retry_for_secs` ends in a failure that says the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_outage_after_set_is_finished_soon_after_recovery() {
    let settings = ClientSettings {
        retry: RetrySettings {
            max_retries: 1,
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(100),
            max_elapsed: Duration::from_secs(1),
        },
        ..Default::default()
    };
    for (outage_secs, retry_for_secs) in [(4u64, 60u64), (6, 2)] {
        let site = Site::with_settings(settings.clone()).await;
        let v1 = site.user("db", "app", &[], None).await;
        let recovered_at = Arc::new(Mutex::new(None));
        let target = OutageAfterSet {
            inner: site.htpasswd(),
            vault: site.vault.clone(),
            outage: Duration::from_secs(outage_secs),
            recovered_at: recovered_at.clone(),
            sets: AtomicU32::new(0),
        };
        let mut targets = Targets::default();
        targets.insert("site", Arc::new(target), None);
        let engine_settings = EngineConfig {
            max_attempts: 2,
            finish_retry_interval_secs: 1,
            finish_retry_for_secs: retry_for_secs,
            ..quick_engine()
        };
        let engine = Engine::new(site.store.clone(), targets, engine_settings);
        let report = engine.rotate(site.request("db", Some(&v1), manual(false))).await;
        let ended = Instant::now();
        if retry_for_secs > outage_secs {
            assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
            let recovered = recovered_at.lock().unwrap().expect("the outage ended");
            let after = ended.duration_since(recovered);
            println!(
                "outage of {outage_secs} s after set: {} attempts, finished {after:?} after recovery",
                report.attempts
            );
            assert!(after < Duration::from_secs(3), "finished {after:?} after the vault recovered");
            assert!(report.attempts > 2, "kept finishing past max_attempts: {report:?}");
            assert!(engine.metrics().counter("kv_rotator_finish_retries_total", &[]) >= 1);
            let latest = site.store.get_latest("db").await.unwrap();
            assert!(logs_in(&site.htpasswd(), "app", &latest.value).await);
        } else {
            let Outcome::Failed { unfinished_journal: Some(journal), .. } = &report.outcome else {
                panic!("expected a failure after the target changed: {report:?}")
            };
            let text = report.outcome.to_string();
            assert!(text.contains("may already use the new password") && text.contains(journal.as_str()), "{text}");
            assert!(!text.contains("stays in place"), "{text}");
            assert_eq!(report.outcome.kind(), "failed_unfinished");
            // The invariant holds all the same: the journal has the password that works.
            tokio::time::sleep(Duration::from_secs(outage_secs)).await;
            let journal = site.store.get_latest(journal).await.unwrap();
            assert!(logs_in(&site.htpasswd(), "app", &journal.value).await);
        }
    }
}

/// Item 6, the alert: a failure after the target changed is announced as such.
#[test]
fn the_alert_of_an_unfinished_rotation_says_the_target_changed() {
    let alert = kv_rotator::alerts::Alert {
        vault: "v".into(),
        secret: "s".into(),
        rotation_id: Some("r".into()),
        version: Some("1".into()),
        trigger: "sweeper".into(),
        attempts: 5,
        error: "key vault: unavailable".into(),
        unfinished_journal: Some("kv-rotator-pending-r".into()),
        at: OffsetDateTime::now_utc(),
    };
    let json = alert.to_json();
    assert_eq!(json["targetChanged"], true);
    assert_eq!(json["kind"], "kv-rotator.rotation-unfinished");
    let message = json["message"].as_str().unwrap();
    assert!(message.contains("kv-rotator-pending-r") && !message.contains("stays in place"), "{message}");
    let _ = AlertsConfig::default();
}

/// Counts the logins a target refused (the canary's, among others); its first
/// `set_password` calls fail transiently without changing anything.
#[derive(Debug)]
struct CountingRefusals {
    inner: HtpasswdRotator,
    refused: AtomicU32,
    failing_sets: AtomicU32,
}

#[async_trait]
impl Rotator for CountingRefusals {
    fn kind(&self) -> &'static str {
        "counting-htpasswd"
    }
    fn password_policy(&self) -> &PasswordPolicy {
        self.inner.password_policy()
    }
    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        if self.failing_sets.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(RotatorError::Transient("connection refused (injected)".into()));
        }
        self.inner.set_password(req).await
    }
    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        let verdict = self.inner.verify(req).await?;
        if verdict == VerifyResponse::Rejected {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        Ok(verdict)
    }
}

/// The canary costs one refused login per request, not one per attempt: lockout policies
/// (credcheck, LDAP, fail2ban) count refused logins. The next request asks again, so a
/// target that turned to trusting everyone is caught at its next rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_is_one_refused_login_per_request() {
    let site = Site::new().await;
    let v1 = site.user("counted", "app", &[], None).await;
    let target = Arc::new(CountingRefusals {
        inner: site.htpasswd(),
        refused: AtomicU32::new(0),
        failing_sets: AtomicU32::new(2),
    });
    let mut targets = Targets::default();
    targets.insert("site", target.clone(), None);
    let engine = Engine::new(site.store.clone(), targets, quick_engine());
    let report = engine.rotate(site.request("counted", Some(&v1), manual(true))).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    assert_eq!(report.attempts, 3);
    // One canary for three attempts; the retries reused this request's own journal.
    assert_eq!(target.refused.load(Ordering::SeqCst), 1, "{report:?}");
    assert_eq!(
        site.store
            .list_versions(&kv_rotator::engine::journal::journal_name(report.rotation_id.as_deref().unwrap()))
            .await
            .map(|v| v.len())
            .unwrap_or(0),
        0,
        "journal deleted"
    );
    let Outcome::Rotated { new_version, .. } = report.outcome else { unreachable!() };
    let again = engine.rotate(site.request("counted", Some(&new_version), manual(true))).await;
    assert!(matches!(again.outcome, Outcome::Rotated { .. }), "{again:?}");
    assert_eq!(target.refused.load(Ordering::SeqCst), 2, "the next request asks again");
}

/// A lease that is never held.
#[derive(Debug)]
struct LostLease;

impl kv_rotator::engine::EngineLease for LostLease {
    fn state(&self) -> kv_rotator::engine::LeaseState {
        kv_rotator::engine::LeaseState::Lost
    }
}

/// An engine without the lease changes nothing and writes nothing: no rotation, no
/// failure tag, no alert — another engine may be at work on the vault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_lost_its_lease_writes_nothing() {
    let site = Site::new().await;
    let (url, alerts) = alert_sink().await;
    let v1 = site.user("leased", "app", &[], Some(OffsetDateTime::now_utc() - DAY)).await;
    let mut targets = Targets::default();
    targets.insert("site", Arc::new(site.htpasswd()), None);
    let sink = kv_rotator::alerts::WebhookSink::new(&url, Duration::from_secs(2));
    let engine = Engine::new(site.store.clone(), targets, quick_engine())
        .with_alert_sink(sink, Duration::from_secs(1))
        .with_lease(Arc::new(LostLease));
    let report = engine.rotate(site.request("leased", Some(&v1), Trigger::Sweeper)).await;
    assert!(
        matches!(&report.outcome, Outcome::Failed { attempts: 1, error, .. } if error.contains("lease")),
        "{report:?}"
    );
    assert_eq!(site.versions("leased").await, 1);
    assert!(site.journals().await.is_empty());
    let tags = site.store.get_latest("leased").await.unwrap().properties.tags;
    assert!(!tags.contains_key("kv-rotator-failed"), "{tags:?}");
    assert!(alerts.lock().unwrap().is_empty());
}

/// A journal whose secret was deleted may hold the only working password: reported, kept.
/// kv-rotator's own records are never managed, whatever their tags say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_secrets_with_a_journal_are_reported_and_own_records_never_managed() {
    let site = Site::new().await;
    let v1 = site.user("gone", "app", &[], None).await;
    let mut targets = Targets::default();
    targets.insert("site", Arc::new(site.htpasswd()), None);
    let engine = Engine::new(site.store.clone(), targets, quick_engine());
    let id = kv_rotator::engine::journal::rotation_id(site.store.vault_name(), "gone", &v1);
    let journal = kv_rotator::engine::journal::journal_name(&id);
    let tags = BTreeMap::from([
        ("kv-rotator-journal-for".to_owned(), "gone".to_owned()),
        ("rotation-id".to_owned(), id.clone()),
        ("kv-rotator-step".to_owned(), "target-set".to_owned()),
        ("rotated-from".to_owned(), v1.clone()),
    ]);
    let record = NewSecretVersion {
        value: PasswordPolicy::default().generate(),
        tags,
        content_type: Some(kv_rotator::engine::journal::JOURNAL_CONTENT_TYPE.to_owned()),
        expires: None,
        not_before: None,
    };
    site.store.set_secret(&journal, record).await.unwrap();
    site.store.delete_secret("gone").await.unwrap();
    let (request, _) = sweeper::scan(site.store.as_ref(), None).await.unwrap().requests.into_iter().next().unwrap();
    let report = engine.rotate(request).await;
    assert!(
        matches!(&report.outcome, Outcome::Failed { error, .. } if error.contains("no longer exists") && error.contains(&journal)),
        "{report:?}"
    );
    assert!(site.store.get_latest(&journal).await.is_ok(), "the journal record is kept");

    for own in ["kv-rotator-engine-lease", "kv-rotator-pending-0123"] {
        site.put(own, &PasswordPolicy::default().generate(), "app", &[], None).await;
        let report = engine.rotate(site.request(own, None, manual(true))).await;
        assert_eq!(report.outcome, Outcome::NotManaged, "{own}");
        assert_eq!(site.versions(own).await, 1, "{own}");
    }
}

/// A rotation waiting on its finishing schedule gives its slot back: with
/// `engine.concurrency = 1`, a target whose change shows only after seconds does not
/// hold up the next secret in the queue — not even when another request for the same
/// secret waits for its lock in between (it waits without a slot: no deadlock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_waiting_to_finish_does_not_hold_a_slot() {
    let site = Site::new().await;
    let initial = PasswordPolicy::default().generate();
    let slow = site.put("slow", &initial, "app", &[("rotator", "lagging")], None).await;
    let quick = site.user("quick", "quick", &[], None).await;
    let mut targets = Targets::default();
    targets.insert("lagging", Arc::new(Lagging::new(&initial, Duration::from_secs(4), false)), None);
    targets.insert("site", Arc::new(site.htpasswd()), None);
    let settings = EngineConfig {
        concurrency: 1,
        max_attempts: 2,
        finish_retry_interval_secs: 1,
        finish_retry_for_secs: 20,
        ..quick_engine()
    };
    let engine = Engine::new(site.store.clone(), targets, settings);
    let mut reports = engine.subscribe();
    let (queue, rx) = tokio::sync::mpsc::channel(4);
    let running = tokio::spawn(engine.clone().run(rx));
    queue.send(site.request("slow", Some(&slow), manual(false))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    queue.send(site.request("slow", Some(&slow), Trigger::Sweeper)).await.unwrap();
    queue.send(site.request("quick", Some(&quick), manual(false))).await.unwrap();
    let first = reports.recv().await.unwrap();
    let second = reports.recv().await.unwrap();
    let third = reports.recv().await.unwrap();
    assert_eq!(third.request.secret_name, "slow");
    assert!(matches!(third.outcome, Outcome::AlreadyRotated { .. }), "the waiting request found it done: {third:?}");
    // Closing the queue is shutting down: finishing schedules stop waiting then.
    drop(queue);
    running.await.unwrap();
    assert_eq!(first.request.secret_name, "quick", "the quick secret finished first: {first:?}");
    assert!(matches!(first.outcome, Outcome::Rotated { .. }), "{first:?}");
    assert!(matches!(second.outcome, Outcome::Rotated { .. }), "{second:?}");
    println!("quick rotation done in {:?} while the slow one waited {:?} to finish", first.duration, second.duration);
}
