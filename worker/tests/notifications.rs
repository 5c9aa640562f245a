//! Notifications through the real engine and sweeper, the dev vault (over the SDK) and an
//! htpasswd target, received by an HTTP sink in the test on 127.0.0.1: one CloudEvent per
//! outcome with its type, source and subject and no password; a deferral once per
//! version; Event Grid's key and Entra ID headers; a retry after a 500; a sink that hangs holds no rotation (and a full queue
//! drops, counted); expiry warning stages once each; an in-process `kv-rotator rotate`
//! announces its rotations before it exits.

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use axum::Router;
use kv_rotator::engine::due::{DueRule, Windows};
use kv_rotator::engine::{Engine, Outcome};
use kv_rotator::metrics::Metrics;
use kv_rotator::notify::expiry::ExpiryWarnings;
use kv_rotator::notify::{Notifier, Sink};
use kv_rotator::sweeper::Sweeper;
use kv_rotator::targets::Targets;
use kv_rotator_config::{EngineConfig, NotificationsConfig, SweeperConfig};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::azure::{AzureSecretStore, DevVaultCredential};
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions, DEV_TOKEN};
use kv_rotator_keyvault::{PropertiesUpdate, SecretStore};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::PasswordPolicy;
use secrecy::ExposeSecret;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::RwLock;

/// One request the sink received.
#[derive(Debug, Clone)]
struct Received {
    uri: Uri,
    headers: HeaderMap,
    body: String,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A local HTTP sink: records every request, answers the scripted statuses (then 200),
/// and holds its answers while the test holds `hold`'s write lock.
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
    hold: Arc<RwLock<()>>,
}

impl Receiver {
    async fn start(statuses: &[u16]) -> (Receiver, String) {
        let receiver =
            Receiver { statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())), ..Default::default() };
        let state = receiver.clone();
        let app = Router::new().route(
            "/events",
            post(move |uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    let body = String::from_utf8(body.to_vec()).unwrap();
                    state.received.lock().unwrap().push(Received { uri, headers, body });
                    let _held = state.hold.read().await;
                    let status = state.statuses.lock().unwrap().pop_front().unwrap_or(200);
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// The dev vault, an htpasswd file and one managed secret `app-password` for user `app`.
struct Site {
    dir: tempfile::TempDir,
    _vault: DevVault,
    store: Arc<dyn SecretStore>,
}

const SECRET: &str = "app-password";

impl Site {
    async fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
        let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
        put(store.as_ref(), SECRET, "site", Some(40)).await;
        let initial = store.get_latest(SECRET).await.unwrap().value;
        htpasswd::add_user(&path, "app", &initial, 4).unwrap();
        Site { dir, _vault: vault, store }
    }

    fn targets(&self) -> Targets {
        let config = HtpasswdConfig { bcrypt_cost: 4, ..HtpasswdConfig::new(self.dir.path().join("htpasswd")) };
        let mut targets = Targets::default();
        targets.insert("site", Arc::new(HtpasswdRotator::new(config, PasswordPolicy::default())), None);
        targets
    }

    fn engine(&self, notifier: Notifier) -> Engine {
        let settings = EngineConfig {
            max_attempts: 1,
            min_rotation_interval_secs: 0,
            finish_retry_for_secs: 0,
            ..Default::default()
        };
        Engine::new(self.store.clone(), self.targets(), settings).with_notifier(notifier)
    }

    async fn rotate(&self, engine: &Engine, secret: &str) -> kv_rotator::engine::RotationReport {
        let latest = self.store.get_latest(secret).await.unwrap();
        let request = RotationRequest {
            vault_name: self.store.vault_name().to_owned(),
            secret_name: secret.to_owned(),
            version: Some(latest.version),
            trigger: Trigger::Manual { requested_by: "notifications test".into(), force: true },
        };
        engine.rotate(request).await
    }
}

/// A version of `name` managed by `profile` (account `app`), expiring in `expires_in_days`.
async fn put(store: &dyn SecretStore, name: &str, profile: &str, expires_in_days: Option<i64>) -> String {
    common::put_secret(store, name, &[("rotator", profile), ("CredentialId", "app")], expires_in_days).await
}

fn config() -> NotificationsConfig {
    NotificationsConfig { timeout_ms: 30_000, ..Default::default() }
}

/// Waits (bounded) until every queued event was delivered.
async fn flushed(notifier: &Notifier) {
    assert!(notifier.flush(Duration::from_secs(30)).await, "notifications not delivered within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_publishes_one_succeeded_event_without_the_password() {
    let site = Site::new().await;
    let (receiver, url) = Receiver::start(&[]).await;
    let metrics = Arc::new(Metrics::default());
    let notifier = Sink::webhook(&url, &config()).start(metrics.clone());
    let engine = site.engine(notifier.clone());
    let old = site.store.get_latest(SECRET).await.unwrap();
    let report = site.rotate(&engine, SECRET).await;
    let Outcome::Rotated { new_version, old_version, .. } = &report.outcome else { panic!("{report:?}") };
    flushed(&notifier).await;

    let received = receiver.received();
    assert_eq!(received.len(), 1, "one event: {received:?}");
    let got = &received[0];
    assert!(got.headers["content-type"].to_str().unwrap().starts_with("application/cloudevents+json"));
    let event = got.json();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "kv-rotator.rotation.succeeded");
    assert_eq!(event["source"], format!("/kv-rotator/vaults/{}", site.store.vault_name()));
    assert_eq!(event["subject"], SECRET);
    assert!(event["id"].as_str().is_some_and(|id| !id.is_empty()));
    let data = &event["data"];
    assert_eq!(data["secret"], SECRET);
    assert_eq!(data["vault"], site.store.vault_name());
    assert_eq!(data["version"], new_version.as_str());
    assert_eq!(data["previousVersion"], old_version.as_str());
    assert_eq!(data["rotationId"], report.rotation_id.as_deref().unwrap());
    assert_eq!((data["trigger"].as_str(), data["outcome"].as_str()), (Some("manual"), Some("rotated")));
    let new = site.store.get_latest(SECRET).await.unwrap();
    for password in [&old.value, &new.value] {
        assert!(!got.body.contains(password.expose_secret()), "a password in the event: {}", got.body);
    }
    assert_eq!(metrics.counter("kv_rotator_notifications_total", &[("event", "succeeded"), ("result", "sent")]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rotation_publishes_a_failed_event_with_event_grids_key() {
    let site = Site::new().await;
    // A secret whose profile does not exist: the rotation fails, the target untouched.
    let version = put(site.store.as_ref(), "orphan-password", "no-such-profile", Some(40)).await;
    let (receiver, url) = Receiver::start(&[]).await;
    let key = "eg-topic-key-0123456789abcdef";
    let notifier = Sink::event_grid_with_key(&url, key.to_owned().into(), &config()).start(Arc::default());
    let report = site.rotate(&site.engine(notifier.clone()), "orphan-password").await;
    assert!(matches!(report.outcome, Outcome::Failed { .. }), "{report:?}");
    flushed(&notifier).await;

    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].headers["aeg-sas-key"], key);
    assert_eq!(received[0].uri.query(), Some("api-version=2018-01-01"), "Event Grid's API version added");
    let event = received[0].json();
    assert_eq!(
        (event["type"].as_str(), event["subject"].as_str()),
        (Some("kv-rotator.rotation.failed"), Some("orphan-password"))
    );
    let data = &event["data"];
    assert_eq!((data["outcome"].as_str(), data["version"].as_str()), (Some("failed"), Some(version.as_str())));
    assert_eq!(data["targetChanged"], false);
    assert!(data.get("error").is_none(), "no error text (it quotes targets) for consumers: {data}");
}

/// Asked for within `min_rotation_interval_secs`: deferred, announced once per version
/// however often it is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_put_off_by_the_minimum_interval_is_deferred_once() {
    let site = Site::new().await;
    let version = put(site.store.as_ref(), SECRET, "site", Some(40)).await; // a second version, just written
    let (receiver, url) = Receiver::start(&[]).await;
    let notifier = Sink::webhook(&url, &config()).start(Arc::default());
    let settings = EngineConfig { min_rotation_interval_secs: 3600, ..Default::default() };
    let engine = Engine::new(site.store.clone(), site.targets(), settings).with_notifier(notifier.clone());
    for _ in 0..3 {
        let request = RotationRequest {
            vault_name: site.store.vault_name().to_owned(),
            secret_name: SECRET.to_owned(),
            version: Some(version.clone()),
            trigger: Trigger::Manual { requested_by: "notifications test".into(), force: false },
        };
        let report = engine.rotate(request).await;
        assert!(matches!(report.outcome, Outcome::TooSoon { .. }), "{report:?}");
    }
    flushed(&notifier).await;
    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let event = received[0].json();
    assert_eq!(event["type"], "kv-rotator.rotation.deferred");
    assert_eq!(
        (event["data"]["version"].as_str(), event["data"]["outcome"].as_str()),
        (Some(version.as_str()), Some("too_soon"))
    );
    assert!(event["data"]["retryAfter"].as_str().is_some_and(|at| !at.is_empty()));
}

/// One version put off twice for different reasons (an operator within the minimum
/// interval, an event outside the rotation window): each deferral is announced once,
/// with what put it off, so consumers learn the later `retryAfter` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reason_for_deferring_a_version_is_announced_once() {
    let site = Site::new().await;
    let version = put(site.store.as_ref(), SECRET, "site", Some(10)).await; // due, and just written
    let now = OffsetDateTime::now_utc();
    let (from, to) = (now + time::Duration::hours(2), now + time::Duration::hours(5));
    let window = format!("daily {:02}:{:02}-{:02}:{:02} UTC", from.hour(), from.minute(), to.hour(), to.minute());
    let mut tags = site.store.get_latest(SECRET).await.unwrap().properties.tags;
    tags.insert("RotationWindow".to_owned(), window);
    let update = PropertiesUpdate { tags: Some(tags), ..Default::default() };
    site.store.update_properties(SECRET, Some(&version), update).await.unwrap();
    let (receiver, url) = Receiver::start(&[]).await;
    let notifier = Sink::webhook(&url, &config()).start(Arc::default());
    let settings = EngineConfig { min_rotation_interval_secs: 3600, ..Default::default() };
    let sweeper = SweeperConfig { interval_secs: 600, ..Default::default() };
    let windows = Windows::new(Default::default(), &sweeper);
    let rule = DueRule::from_config(&settings, &sweeper).with_windows(windows);
    let engine =
        Engine::new(site.store.clone(), site.targets(), settings).with_due_rule(rule).with_notifier(notifier.clone());
    let manual = Trigger::Manual { requested_by: "notifications test".into(), force: false };
    let event = Trigger::EventGrid { event_id: "e1".into(), event_type: "Microsoft.KeyVault.SecretNearExpiry".into() };
    for trigger in [manual.clone(), event.clone(), manual, event] {
        let request = RotationRequest {
            vault_name: site.store.vault_name().to_owned(),
            secret_name: SECRET.to_owned(),
            version: Some(version.clone()),
            trigger,
        };
        let report = engine.rotate(request).await;
        assert!(matches!(report.outcome, Outcome::TooSoon { .. } | Outcome::OutsideWindow { .. }), "{report:?}");
    }
    flushed(&notifier).await;
    let received = receiver.received();
    let reasons: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            let data = &r.json()["data"];
            (data["outcome"].as_str().unwrap().to_owned(), data["deferredBy"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("too_soon".to_owned(), "min-rotation-interval".to_owned()),
            ("outside_window".to_owned(), "rotation-window".to_owned())
        ],
        "{received:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_grid_with_entra_id_sends_the_credentials_bearer_token() {
    let site = Site::new().await;
    let (receiver, url) = Receiver::start(&[]).await;
    let notifier = Sink::event_grid_with_credential(&url, DevVaultCredential::new(), &config()).start(Arc::default());
    site.rotate(&site.engine(notifier.clone()), SECRET).await;
    flushed(&notifier).await;
    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].headers["authorization"], format!("Bearer {DEV_TOKEN}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_answering_500_then_200_gets_the_same_event_again() {
    let site = Site::new().await;
    let (receiver, url) = Receiver::start(&[500]).await;
    let metrics = Arc::new(Metrics::default());
    let notifier = Sink::webhook(&url, &config()).start(metrics.clone());
    site.rotate(&site.engine(notifier.clone()), SECRET).await;
    flushed(&notifier).await;
    let received = receiver.received();
    assert_eq!(received.len(), 2, "one retry after the 500: {received:?}");
    assert_eq!(received[0].json()["id"], received[1].json()["id"], "the same event, not a new one");
    assert_eq!(metrics.counter("kv_rotator_notifications_total", &[("event", "succeeded"), ("result", "sent")]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_hangs_holds_no_rotation_and_a_full_queue_drops_counted() {
    let site = Site::new().await;
    let (receiver, url) = Receiver::start(&[]).await;
    let held = receiver.hold.clone().write_owned().await;
    let metrics = Arc::new(Metrics::default());
    let notifier = Sink::webhook(&url, &NotificationsConfig { queue_capacity: 1, ..config() }).start(metrics.clone());
    let engine = site.engine(notifier.clone());
    // The first event is taken by the delivery task and hangs at the sink...
    assert!(matches!(site.rotate(&engine, SECRET).await.outcome, Outcome::Rotated { .. }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while receiver.received().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the first event never reached the sink");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while rotations go on: the second event waits in the queue, the third is dropped.
    assert!(matches!(site.rotate(&engine, SECRET).await.outcome, Outcome::Rotated { .. }));
    assert!(matches!(site.rotate(&engine, SECRET).await.outcome, Outcome::Rotated { .. }));
    assert_eq!(metrics.counter("kv_rotator_notifications_total", &[("event", "succeeded"), ("result", "dropped")]), 1);
    assert_eq!(receiver.received().len(), 1, "the sink still holds the first");
    drop(held);
    flushed(&notifier).await;
    assert_eq!(receiver.received().len(), 2);
    assert_eq!(metrics.counter("kv_rotator_notifications_total", &[("event", "succeeded"), ("result", "sent")]), 2);
}

/// The sweeper over a secret 6 days from `exp`, with `[30, 7, 1]`: each sweep's warnings,
/// by stage. `rotate` says whether the sweeper's due scan is on (it then queues a rotation
/// that nothing here runs).
async fn sweeps(rotate: bool) -> Vec<Vec<u64>> {
    let site = Site::new().await;
    put(site.store.as_ref(), SECRET, "site", Some(6)).await;
    let (receiver, url) = Receiver::start(&[]).await;
    let notifier = Sink::webhook(&url, &config()).start(Arc::default());
    let (queue, _requests) = tokio::sync::mpsc::channel(64);
    let config = SweeperConfig { enabled: rotate, ..Default::default() };
    let sweeper = Sweeper::new(site.store.clone(), queue, config, Default::default(), Arc::default())
        .with_expiry_warnings(ExpiryWarnings::new(notifier.clone(), site.store.vault_name()));
    let mut seen = 0;
    let mut stages = Vec::new();
    for sweep in 0..6 {
        if sweep == 3 {
            // 12 hours left: the last stage.
            let expires = Some(OffsetDateTime::now_utc() + time::Duration::hours(12));
            site.store
                .update_properties(SECRET, None, PropertiesUpdate { expires, ..Default::default() })
                .await
                .unwrap();
        }
        sweeper.sweep_once().await.unwrap();
        flushed(&notifier).await;
        let received = receiver.received();
        let mut warned = Vec::new();
        for event in received[seen..].iter().map(Received::json) {
            assert_eq!(event["type"], "kv-rotator.secret.expiry-warning");
            assert_eq!((event["subject"].as_str(), event["data"]["secret"].as_str()), (Some(SECRET), Some(SECRET)));
            warned.push(event["data"]["stageDays"].as_u64().unwrap());
        }
        seen = received.len();
        stages.push(warned);
    }
    stages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_warning_stages_fire_once_each() {
    // The due scan off: nothing will rotate it, so each stage warns at once, then never again.
    assert_eq!(sweeps(false).await, [vec![7], vec![], vec![], vec![1], vec![], vec![]]);
    // The due scan on: the sweep that queues a rotation waits one sweep for it.
    assert_eq!(sweeps(true).await, [vec![], vec![7], vec![], vec![], vec![1], vec![]]);
}

/// The service as `serve` wires it: `[notifications]` read by `Sink::from_config` (an
/// Event Grid topic, its key in a file), the sweeper rotating a secret 2 days from `exp`.
/// The rotation is announced once; no expiry warning goes out for the version it replaced
/// (the sweep that queued it waited), nor for the new one; shutdown delivers what is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_announces_the_sweepers_rotation_and_no_warning_for_it() {
    let site = Site::new().await;
    let old_version = put(site.store.as_ref(), SECRET, "site", Some(2)).await;
    let initial = site.store.get_latest(SECRET).await.unwrap().value;
    std::fs::remove_file(site.dir.path().join("htpasswd")).unwrap();
    htpasswd::add_user(site.dir.path().join("htpasswd"), "app", &initial, 4).unwrap();
    let (receiver, url) = Receiver::start(&[]).await;
    let key_file = site.dir.path().join("topic-key");
    std::fs::write(&key_file, "topic-key-from-a-file\n").unwrap();
    use kv_rotator_config::figment::{providers::Serialized, Figment};
    let config = kv_rotator_config::load::from_figment(Figment::from(Serialized::defaults(serde_json::json!({
            "vault": { "url": "https://v.vault.azure.net/" },
            "notifications": { "sink": {
                "kind": "event-grid", "topic_endpoint": url, "auth": { "mode": "key", "key": { "file": key_file } }
            } },
    }))))
    .unwrap();
    let sink = Sink::from_config(&config.notifications, &config.vault).unwrap().expect("a sink");
    let background = kv_rotator::service::Background {
        // Two seconds: the rotation the first sweep queues is done before the next one.
        sweeper: Some(SweeperConfig { interval_secs: 2, ..Default::default() }),
        notifications: Some(sink),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let engine = EngineConfig { min_rotation_interval_secs: 0, ..Default::default() };
    let webhook = kv_rotator_config::WebhookConfig::default();
    let running =
        kv_rotator::service::start_with(site.store.clone(), site.targets(), engine, &webhook, background, listener)
            .await
            .unwrap();
    let metrics = running.engine.metrics();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Two sweeps after the one that queued the rotation: a warning would have gone out by then.
    while metrics.counter("kv_rotator_rotations_total", &[("outcome", "rotated"), ("trigger", "sweeper")]) == 0
        || metrics.counter("kv_rotator_sweeps_total", &[("result", "ok")]) < 3
    {
        assert!(tokio::time::Instant::now() < deadline, "no rotation and three more sweeps within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.unwrap();

    let received = receiver.received();
    let types: Vec<Value> = received.iter().map(|r| r.json()["type"].clone()).collect();
    assert_eq!(types, ["kv-rotator.rotation.succeeded"], "{received:?}");
    assert_eq!(received[0].headers["aeg-sas-key"], "topic-key-from-a-file");
    let event = received[0].json();
    assert_eq!(
        (event["data"]["trigger"].as_str(), event["data"]["previousVersion"].as_str()),
        (Some("sweeper"), Some(old_version.as_str()))
    );
}

/// A Power Automate trigger's URL is a credential (`sig=`): read from a file, it reaches
/// the sink whole, shows in no `Debug` output, and a URL read that way is held to the
/// rule of inline ones (plain http off loopback refused, naming the key, never the query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_url_read_from_a_file_keeps_its_signature_out_of_sight() {
    let site = Site::new().await;
    let (receiver, url) = Receiver::start(&[]).await;
    let flow_url = format!("{url}?api-version=2016-06-01&sv=1.0&sig=FLOWsignature42");
    let url_file = site.dir.path().join("flow-url");
    std::fs::write(&url_file, format!("{flow_url}\n")).unwrap();
    let load = |sink: serde_json::Value| {
        use kv_rotator_config::figment::{providers::Serialized, Figment};
        kv_rotator_config::load::from_figment(Figment::from(Serialized::defaults(serde_json::json!({
            "vault": { "url": "https://v.vault.azure.net/" },
            "notifications": { "sink": sink },
        }))))
        .unwrap()
    };
    let config = load(serde_json::json!({ "kind": "webhook", "url": { "file": url_file } }));
    let sink = Sink::from_config(&config.notifications, &config.vault).unwrap().expect("a sink");
    assert!(!format!("{sink:?}").contains("FLOWsignature42"), "{sink:?}");
    let notifier = sink.start(Arc::new(Metrics::default()));
    let engine = site.engine(notifier.clone());
    let report = site.rotate(&engine, SECRET).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    flushed(&notifier).await;
    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].uri.query(), Some("api-version=2016-06-01&sv=1.0&sig=FLOWsignature42"));

    std::fs::write(&url_file, "http://flows.example/hook?sig=FLOWsignature42").unwrap();
    let config = load(serde_json::json!({ "kind": "webhook", "url": { "file": url_file } }));
    let message = format!("{:#}", Sink::from_config(&config.notifications, &config.vault).unwrap_err());
    assert!(message.contains("notifications.sink.url") && message.contains("loopback"), "{message}");
    assert!(!message.contains("FLOWsignature42"), "{message}");
}

/// `kv-rotator rotate --in-process` (an operator's emergency rotation, no service running)
/// announces what it rotated as the service would, and waits for the delivery before it
/// exits; `--dry-run` announces nothing; an event the sink refused is counted on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_rotate_announces_each_rotated_secret_before_it_exits() {
    let site = common::devsite::DevSite::start().await;
    let old = [site.user("alpha-password", "alpha").await.1, site.user("beta-password", "beta").await.1];
    let rotate = |url: &str, args: &[&str]| {
        let config = site.dir.path().join("kv-rotator.toml");
        let toml = format!(
            "{}{}[engine]\nmin_rotation_interval_secs = 0\n[notifications]\nmax_attempts = 1\n\
             [notifications.sink]\nkind = \"webhook\"\nurl = \"{url}\"\n",
            site.vault_toml(),
            site.htpasswd_target_toml()
        );
        std::fs::write(&config, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kv-rotator"))
            .arg("rotate")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "rotate {args:?}:\n{}\n{stderr}", String::from_utf8_lossy(&out.stdout));
        stderr
    };
    let (receiver, url) = Receiver::start(&[]).await;
    rotate(&url, &["--dry-run", "alpha-password", "beta-password"]);
    assert!(receiver.received().is_empty(), "a dry run announced: {:?}", receiver.received());

    let stderr = rotate(&url, &["--in-process", "alpha-password", "beta-password"]);
    assert!(!stderr.contains("not delivered"), "{stderr}");
    let received = receiver.received();
    assert_eq!(received.len(), 2, "one event per rotated secret: {received:?}");
    for secret in ["alpha-password", "beta-password"] {
        let event = received.iter().map(Received::json).find(|e| e["subject"] == secret).expect(secret);
        assert_eq!(event["type"], "kv-rotator.rotation.succeeded", "{event}");
        let latest = site.store.get_latest(secret).await.unwrap();
        assert_eq!(event["data"]["version"], latest.version.as_str(), "{event}");
        assert_eq!(event["data"]["trigger"], "manual", "{event}");
        for body in received.iter().map(|r| &r.body) {
            assert!(!body.contains(latest.value.expose_secret()), "a new password in {body}");
        }
    }
    for body in received.iter().map(|r| &r.body) {
        assert!(old.iter().all(|password| !body.contains(password.expose_secret())), "an old password in {body}");
    }

    // A sink that refuses (one try): the rotation stands, and the operator is told.
    let (refusing, url) = Receiver::start(&[500]).await;
    let stderr = rotate(&url, &["--in-process", "alpha-password"]);
    assert_eq!(refusing.received().len(), 1);
    assert!(
        stderr.contains("warning: 1 of 1 notification(s) to [notifications.sink] not delivered: 1 failed"),
        "{stderr}"
    );
    site.vault.shutdown().await;
}
