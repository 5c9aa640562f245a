//! Rotation windows against the dev vault and a real htpasswd target: a due secret whose
//! window is closed waits for it when an event or the sweeper asks, an operator's
//! rotation does not wait, no window (however hostile its tag) keeps a secret unrotated
//! until it expires, and a deferral needs no state: a restarted service's sweeper starts
//! it once the window is open.
//!
//! The clock is the real one, so windows are written around it: "closed" opens two
//! hours from now, "open" runs from an hour ago to an hour from now (both daily, UTC).

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::put_secret as put;
use kv_rotator::engine::due::{DueRule, Windows};
use kv_rotator::engine::{Engine, Outcome};
use kv_rotator::service::{self, Background};
use kv_rotator::sweeper;
use kv_rotator::targets::Targets;
use kv_rotator_config::window::RotationWindow;
use kv_rotator_config::{EngineConfig, SweeperConfig, WebhookConfig};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{PropertiesUpdate, SecretStore};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::{PasswordPolicy, Rotator, VerifyRequest, VerifyResponse};
use time::OffsetDateTime;

/// `daily HH:MM-HH:MM UTC` from `from` to `to` (their times of day).
fn daily(from: OffsetDateTime, to: OffsetDateTime) -> String {
    format!("daily {:02}:{:02}-{:02}:{:02} UTC", from.hour(), from.minute(), to.hour(), to.minute())
}

fn closed_window() -> String {
    let now = OffsetDateTime::now_utc();
    daily(now + time::Duration::hours(2), now + time::Duration::hours(5))
}

fn open_window() -> String {
    let now = OffsetDateTime::now_utc();
    daily(now - time::Duration::hours(1), now + time::Duration::hours(1))
}

fn sweeper_config() -> SweeperConfig {
    SweeperConfig { interval_secs: 1, ..Default::default() }
}

/// An htpasswd profile `site` (optionally with a profile window) over the file at `path`.
fn targets(path: &Path, profile_window: Option<&str>) -> Targets {
    let mut targets = Targets::default();
    let rotator =
        HtpasswdRotator::new(HtpasswdConfig { bcrypt_cost: 4, ..HtpasswdConfig::new(path) }, PasswordPolicy::default());
    targets.insert("site", Arc::new(rotator), None);
    if let Some(window) = profile_window {
        targets.set_rotation_window("site", window.parse::<RotationWindow>().unwrap());
    }
    targets
}

/// An engine over `targets` whose due rule knows their windows, as the service builds it.
fn engine(store: Arc<dyn SecretStore>, targets: Targets) -> Engine {
    let windows = Windows::new(targets.rotation_windows().clone(), &sweeper_config());
    let settings = EngineConfig { min_rotation_interval_secs: 0, ..Default::default() };
    let rule = DueRule::from_config(&settings, &sweeper_config()).with_windows(windows);
    Engine::new(store, targets, settings).with_due_rule(rule)
}

/// A managed secret `name` for user `name` on the htpasswd file, expiring in
/// `expires_in_hours`, with a `RotationWindow` tag when given; its version.
async fn managed(
    store: &dyn SecretStore,
    path: &Path,
    name: &str,
    window_tag: Option<&str>,
    expires_in_hours: i64,
) -> String {
    let mut tags = vec![("rotator", "site"), ("CredentialId", name)];
    if let Some(window) = window_tag {
        tags.push(("RotationWindow", window));
    }
    let version = put(store, name, &tags, None).await;
    let expires = OffsetDateTime::now_utc() + time::Duration::hours(expires_in_hours);
    let update = PropertiesUpdate { expires: Some(expires), ..Default::default() };
    store.update_properties(name, Some(&version), update).await.unwrap();
    let value = store.get_latest(name).await.unwrap().value;
    htpasswd::add_user(path, name, &value, 4).unwrap();
    version
}

fn event(store: &dyn SecretStore, name: &str, version: &str) -> RotationRequest {
    RotationRequest {
        vault_name: store.vault_name().to_owned(),
        secret_name: name.to_owned(),
        version: Some(version.to_owned()),
        trigger: Trigger::EventGrid {
            event_id: format!("evt-{name}"),
            event_type: "Microsoft.KeyVault.SecretNearExpiry".to_owned(),
        },
    }
}

/// Whether the htpasswd file accepts the latest value of `name` for user `name`.
async fn target_takes_latest(store: &dyn SecretStore, path: &Path, name: &str) -> bool {
    let latest = store.get_latest(name).await.unwrap();
    let rotator = HtpasswdRotator::new(HtpasswdConfig::new(path), PasswordPolicy::default());
    rotator.verify(VerifyRequest::new(name, latest.value)).await.unwrap() == VerifyResponse::Accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_for_a_closed_window_and_operators_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let engine = engine(store.clone(), targets(&path, None));
    // Due: ten days before expiry, inside the 30-day lead.
    let waiting = managed(store.as_ref(), &path, "waiting", Some(&closed_window()), 240).await;
    let open = managed(store.as_ref(), &path, "open", Some(&open_window()), 240).await;

    let report = engine.rotate(event(store.as_ref(), "waiting", &waiting)).await;
    let Outcome::OutsideWindow { version, opens_at } = &report.outcome else {
        panic!("a closed window defers the event: {:?}", report.outcome)
    };
    assert_eq!(version, &waiting);
    let until = *opens_at - OffsetDateTime::now_utc();
    assert!(until > time::Duration::minutes(100) && until <= time::Duration::hours(2), "opens in ~2 h: {until}");
    assert_eq!(store.list_versions("waiting").await.unwrap().len(), 1, "nothing written");
    assert!(target_takes_latest(store.as_ref(), &path, "waiting").await, "the target was not touched");

    let report = engine.rotate(event(store.as_ref(), "open", &open)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "an open window: {:?}", report.outcome);
    assert!(target_takes_latest(store.as_ref(), &path, "open").await);

    // The sweeper does not queue what waits for its window.
    let scan = sweeper::scan(store.as_ref(), Some(&engine.due_rule())).await.unwrap();
    let queued: Vec<&str> = scan.requests.iter().map(|(r, _)| r.secret_name.as_str()).collect();
    assert!(!queued.contains(&"waiting"), "{queued:?}");
    assert_eq!(scan.census.waiting_for_window, 1);

    // An operator's rotation ignores the window.
    let manual = RotationRequest {
        vault_name: store.vault_name().to_owned(),
        secret_name: "waiting".to_owned(),
        version: None,
        trigger: Trigger::Manual { requested_by: "test".to_owned(), force: false },
    };
    let report = engine.rotate(manual).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "manual: {:?}", report.outcome);
    assert!(target_takes_latest(store.as_ref(), &path, "waiting").await);
    vault.shutdown().await;
}

/// What a tag can do to the schedule is bounded by `exp`: a window that opens after the
/// margin before `exp`, an expired version, a window tag that is not a window or too
/// short for the sweeper — each is rotated now, never left to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_window_or_hostile_window_tag_lets_a_secret_expire() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let engine = engine(store.clone(), targets(&path, None));
    let now = OffsetDateTime::now_utc();
    // A weekly window that opened an hour ago closed again: it next opens in ~6 days.
    let weekly = {
        let from = now - time::Duration::hours(2);
        let to = now - time::Duration::hours(1);
        let day =
            ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][usize::from(from.weekday().number_days_from_monday())];
        format!("{day} {:02}:{:02}-{:02}:{:02} UTC", from.hour(), from.minute(), to.hour(), to.minute())
    };
    let cases = [
        // Expires in 12 h, inside the 24 h margin: the closed window is not waited for.
        ("margin", Some(closed_window()), 12),
        // Expires in 3 days, the window opens in ~6: waiting would let it expire.
        ("week", Some(weekly), 72),
        // Expired an hour ago.
        ("expired", Some(closed_window()), -1),
        // Not a window: ignored (the profile has none).
        ("garbage", Some("Mon-Fri 25:00-99:00 UTC\u{1b}[2J".to_owned()), 240),
        // A span shorter than two sweeps of the test's 1 s sweeper is fine; one of 10
        // minutes is not a window at all (spans last at least 15 minutes).
        ("tiny", Some(daily(now + time::Duration::hours(2), now + time::Duration::minutes(130))), 240),
    ];
    for (name, tag, hours) in &cases {
        let version = managed(store.as_ref(), &path, name, tag.as_deref(), *hours).await;
        let report = engine.rotate(event(store.as_ref(), name, &version)).await;
        assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{name}: {:?}", report.outcome);
        assert!(target_takes_latest(store.as_ref(), &path, name).await, "{name}");
    }
    vault.shutdown().await;
}

/// A secret's tag overrides its profile's window; a tag that is not a usable window
/// leaves the profile's in force (a tag cannot switch the profile's window off by being
/// garbage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_overrides_the_profile_window_and_a_bad_tag_falls_back_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let engine = engine(store.clone(), targets(&path, Some(&closed_window())));
    let plain = managed(store.as_ref(), &path, "plain", None, 240).await;
    let opened = managed(store.as_ref(), &path, "opened", Some(&open_window()), 240).await;
    let garbage = managed(store.as_ref(), &path, "garbage", Some("whenever"), 240).await;
    let outcome = |name: &'static str, version: String| {
        let engine = &engine;
        let store = store.clone();
        async move { engine.rotate(event(store.as_ref(), name, &version)).await.outcome }
    };
    assert!(matches!(outcome("plain", plain).await, Outcome::OutsideWindow { .. }), "the profile's window");
    assert!(matches!(outcome("opened", opened).await, Outcome::Rotated { .. }), "the tag's open window");
    assert!(matches!(outcome("garbage", garbage).await, Outcome::OutsideWindow { .. }), "bad tag: the profile's");
    vault.shutdown().await;
}

/// A service without a sweeper (`dev`, the demo) has nothing to start what would wait:
/// an event for a due secret rotates whatever the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_sweeper_nothing_waits_for_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let v1 = managed(store.as_ref(), &path, "nightly", None, 240).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = service::start_with(
        store.clone(),
        targets(&path, Some(&closed_window())),
        EngineConfig { min_rotation_interval_secs: 0, ..Default::default() },
        &WebhookConfig::default(),
        Background::default(),
        listener,
    )
    .await
    .unwrap();
    let report = running.engine.rotate(event(store.as_ref(), "nightly", &v1)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{:?}", report.outcome);
    assert!(target_takes_latest(store.as_ref(), &path, "nightly").await);
    running.shutdown().await.unwrap();
    vault.shutdown().await;
}

/// A deferral is not remembered anywhere but in the vault's own state: a restarted
/// service's sweeper starts the rotation once the window is open. (The window "opens" by
/// rewriting the tag: the test cannot move the clock.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_starts_a_deferred_rotation_in_its_window_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let v1 = managed(store.as_ref(), &path, "nightly", Some(&closed_window()), 240).await;
    let start = || async {
        let background = Background { sweeper: Some(sweeper_config()), ..Default::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        service::start_with(
            store.clone(),
            targets(&path, None),
            EngineConfig { min_rotation_interval_secs: 0, ..Default::default() },
            &WebhookConfig::default(),
            background,
            listener,
        )
        .await
        .unwrap()
    };
    let running = start().await;
    let metrics = running.engine.metrics();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics.counter("kv_rotator_sweeps_total", &[("result", "ok")]) < 3 {
        assert!(Instant::now() < deadline, "three sweeps within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.get_latest("nightly").await.unwrap().version, v1, "not rotated outside its window");
    assert_eq!(metrics.counter("kv_rotator_sweep_enqueued_total", &[("reason", "near_expiry")]), 0);
    assert_eq!(metrics.gauge("kv_rotator_managed_secrets", &[("state", "waiting_for_window")]), Some(1.0));
    running.shutdown().await.unwrap();

    let mut tags = store.get_latest("nightly").await.unwrap().properties.tags;
    tags.insert("RotationWindow".to_owned(), open_window());
    let update = PropertiesUpdate { tags: Some(tags), ..Default::default() };
    store.update_properties("nightly", Some(&v1), update).await.unwrap();

    let running = start().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.get_latest("nightly").await.unwrap().version == v1 {
        assert!(Instant::now() < deadline, "the restarted sweeper did not rotate it within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(target_takes_latest(store.as_ref(), &path, "nightly").await);
    let latest = store.get_latest("nightly").await.unwrap();
    assert_eq!(latest.properties.tags.get("RotationWindow"), Some(&open_window()), "the tag is carried over");
    running.shutdown().await.unwrap();
    vault.shutdown().await;
}
