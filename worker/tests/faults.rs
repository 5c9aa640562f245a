//! Failing dependencies: the dev vault injecting 30% throttling (429), unavailability
//! (503) and dropped connections, and the PostgreSQL target unreachable (a proxy in front
//! of it closed) while rotations are under way, their journals written. No
//! password is lost, rotations complete once the dependencies recover, and rotations
//! that fail past the retry cap are reported — tag, metrics, alert — not silent.
//!
//! Needs `scripts/setup-postgres.sh`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use common::pg::{logs_in, Proxy, Roles};
use kv_rotator::engine::Outcome;
use kv_rotator::service::{self, Background, RunningService};
use kv_rotator::targets::Targets;
use kv_rotator_config::{AlertsConfig, EngineConfig, SweeperConfig, TargetKind, TargetProfile, WebhookConfig};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions, ErrorRule, Faults, Injected};
use kv_rotator_keyvault::{NewSecretVersion, SecretStore};
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use tokio::net::TcpListener;

const JOURNAL_FOR: &str = "kv-rotator-journal-for";

fn pg_targets(port: u16) -> Targets {
    let pg: kv_rotator_rotators::postgres::PostgresConfig = serde_json::from_value(
        serde_json::json!({"host": "127.0.0.1", "port": port, "sslmode": "disable", "connect_timeout_secs": 2}),
    )
    .unwrap();
    let profiles = BTreeMap::from([(
        "pg".to_owned(),
        TargetProfile {
            target: TargetKind::new("postgres", pg),
            admin: None,
            password: Default::default(),
            accounts: vec!["*".to_owned()],
            allow_admin_account: false,
            strategy: Default::default(),
            grace_period_secs: None,
            twin_suffix: None,
            rotation_window: None,
        },
    )]);
    Targets::from_profiles(&profiles).unwrap()
}

/// Seeds one managed secret per role, expiring in 5 days (due for the sweeper).
async fn seed(store: &dyn SecretStore, roles: &Roles) -> Vec<(String, String, String)> {
    let mut seeded = Vec::new();
    for (i, (role, password)) in roles.0.iter().enumerate() {
        let secret = format!("fault-pg-{i}");
        let tags = BTreeMap::from([("rotator".to_owned(), "pg".to_owned()), ("CredentialId".to_owned(), role.clone())]);
        let expires = Some(OffsetDateTime::now_utc() + time::Duration::days(5));
        let new = NewSecretVersion { value: password.clone(), tags, content_type: None, expires, not_before: None };
        let version = store.set_secret(&secret, new).await.unwrap().version;
        seeded.push((secret, role.clone(), version));
    }
    seeded
}

async fn start(
    store: Arc<dyn SecretStore>,
    targets: Targets,
    engine: EngineConfig,
    background: Background,
) -> RunningService {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    service::start_with(store, targets, engine, &WebhookConfig::default(), background, listener).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_faults_and_a_target_outage_lose_no_password_and_rotations_complete() {
    let roles = Roles::create("kvr_fault", 4).await;
    let proxy = Proxy::start().await;
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let seeded = seed(store.as_ref(), &roles).await;

    // 30% of every vault request fails: 429, 503, or a dropped connection.
    let faults = Faults {
        errors: vec![
            ErrorRule { operation: None, rate: 0.1, fault: Injected::Status(429) },
            ErrorRule { operation: None, rate: 0.1, fault: Injected::Status(503) },
            ErrorRule { operation: None, rate: 0.1, fault: Injected::Drop },
        ],
        ..Default::default()
    };
    vault.set_faults(faults).unwrap();
    let engine = EngineConfig {
        max_attempts: 60,
        initial_backoff_ms: 50,
        max_backoff_ms: 1000,
        min_rotation_interval_secs: 0,
        ..Default::default()
    };
    let background = Background {
        sweeper: Some(SweeperConfig { interval_secs: 1, ..Default::default() }),
        alerts: AlertsConfig::default(),
        ..Default::default()
    };
    // The target is down when the rotations start (the startup sweep finds every secret
    // due): each attempt fails to ask it, at the canary, before writing anything. It
    // comes back after 3 s.
    proxy.down();
    let running = start(store.clone(), pg_targets(proxy.port), engine, background).await;
    let started = Instant::now();
    // Once the sweep has handed every secret to the engine, keep the target down 2 s more.
    let metrics = running.engine.metrics();
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.counter("kv_rotator_sweep_enqueued_total", &[("reason", "near_expiry")]) < seeded.len() as u64 {
        assert!(Instant::now() < deadline, "the sweep did not enqueue every secret within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.up().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = vault.stats();
    vault.set_faults(Faults::default()).unwrap();

    // Dependencies recovered: every secret rotates, every journal is finished.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let journals = store.list_secrets().await.unwrap().iter().filter(|p| p.tags.contains_key(JOURNAL_FOR)).count();
        let mut rotated = 0;
        for (secret, _, v1) in &seeded {
            if store.get_latest(secret).await.unwrap().version != *v1 {
                rotated += 1;
            }
        }
        if journals == 0 && rotated == seeded.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{rotated}/{} rotated, {journals} journals left after 90 s", seeded.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    for (secret, role, v1) in &seeded {
        let latest = store.get_latest(secret).await.unwrap();
        assert!(logs_in(role, &latest.value).await, "latest version of {secret} does not log in");
        let mut per_rotation: HashMap<String, usize> = HashMap::new();
        for v in store.list_versions(secret).await.unwrap() {
            if let Some(id) = v.tags.get("rotation-id") {
                *per_rotation.entry(id.clone()).or_default() += 1;
            }
        }
        assert!(per_rotation.values().all(|n| *n == 1), "{secret}: {per_rotation:?}");
        let versions = store.list_versions(secret).await.unwrap();
        assert_eq!(
            latest.properties.tags.get("rotated-from"),
            Some(v1),
            "{secret} rotated more than once: {:#?}",
            versions.iter().map(|v| (&v.version, &v.expires, &v.tags)).collect::<Vec<_>>()
        );
    }
    let metrics = running.engine.metrics();
    let failed = metrics.counter("kv_rotator_rotations_total", &[("outcome", "failed"), ("trigger", "sweeper")]);
    let attempts = metrics.counter("kv_rotator_rotation_attempts_total", &[]);
    let rotated = metrics.counter("kv_rotator_rotations_total", &[("outcome", "rotated"), ("trigger", "sweeper")]);
    println!(
        "faults: vault {} requests: {} injected 429/503, {} connections dropped, {} throttled by its rate limit; \
         target down 3 s; {rotated} rotations in {:.1} s with {attempts} attempts, {failed} failed",
        stats.requests,
        stats.injected_errors,
        stats.dropped,
        stats.throttled,
        took.as_secs_f64()
    );
    assert_eq!(rotated, seeded.len() as u64, "one rotation per secret");
    assert_eq!(failed, 0);
    assert!(attempts > rotated, "the outage must have cost retries ({attempts} attempts)");
    assert!(stats.injected_errors + stats.dropped > 0, "{stats:?}");
    running.shutdown().await.unwrap();
    vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_past_the_cap_are_tagged_counted_and_alerted_then_cleared_by_success() {
    let roles = Roles::create("kvr_fault", 1).await;
    let proxy = Proxy::start().await;
    proxy.down();
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let seeded = seed(store.as_ref(), &roles).await;
    let (secret, role, v1) = seeded[0].clone();
    let initial = roles.0[0].1.clone();

    // A generic webhook alert sink.
    let alerts: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = {
        let alerts = alerts.clone();
        Router::new().route(
            "/alerts",
            post(move |Json(body): Json<serde_json::Value>| {
                let alerts = alerts.clone();
                async move { alerts.lock().unwrap().push(body) }
            }),
        )
    };
    let sink_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_url = format!("http://{}/alerts", sink_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(sink_listener, sink).await });

    let engine = EngineConfig {
        max_attempts: 3,
        initial_backoff_ms: 10,
        max_backoff_ms: 50,
        min_rotation_interval_secs: 0,
        ..Default::default()
    };
    let background = Background {
        sweeper: None,
        alerts: AlertsConfig { webhook_url: Some(sink_url.as_str().into()), timeout_ms: 2000, ..Default::default() },
        admin: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        ..Default::default()
    };
    let running = start(store.clone(), pg_targets(proxy.port), engine, background).await;
    let request = kv_rotator::cli::rotate::manual_request(store.as_ref(), &secret, "fault test", false).await.unwrap();
    let report = running.engine.rotate(request).await;
    assert!(matches!(report.outcome, Outcome::Failed { attempts: 3, .. }), "{report:?}");

    // Tagged on the secret, other tags kept, no new version; the old password works.
    let latest = store.get_latest(&secret).await.unwrap();
    assert_eq!(latest.version, v1);
    assert!(latest.properties.tags.get("kv-rotator-failed").is_some_and(|v| v.contains("attempts=3")));
    assert_eq!(latest.properties.tags.get("CredentialId"), Some(&role));
    assert!(logs_in(&role, &initial).await, "the old password keeps working");
    // The target could not even be asked whether it checks passwords (the canary comes
    // first): nothing was journaled, nothing can be lost.
    let journals = store.list_secrets().await.unwrap().into_iter().filter(|p| p.tags.contains_key(JOURNAL_FOR)).count();
    assert_eq!(journals, 0, "no journal record written for a target that could not be reached");

    // Alerted, without a password.
    let alert = alerts.lock().unwrap().first().cloned().expect("one alert delivered");
    assert_eq!(alert["kind"], "kv-rotator.rotation-failed");
    assert_eq!(alert["secret"], secret.as_str());
    assert_eq!(alert["attempts"], 3);
    assert!(alert["error"].as_str().unwrap().contains("pg"), "{alert}");
    let text = alert.to_string();
    assert!(!text.contains(initial.expose_secret()), "{text}");

    // Counted, at GET /metrics on the service's admin listener.
    let admin = running.admin_addr.expect("an admin listener");
    let body = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    for line in [
        "kv_rotator_rotations_total{outcome=\"failed\",rotator=\"postgres\",trigger=\"manual\"} 1",
        "kv_rotator_alerts_total{result=\"sent\"} 1",
        "kv_rotator_failure_tags_total{result=\"written\"} 1",
        "kv_rotator_rotation_attempts_total 3",
    ] {
        assert!(body.contains(line), "{line} missing from /metrics:\n{body}");
    }
    assert!(!body.contains(initial.expose_secret()));

    // The target is back: the next trigger rotates and clears the mark.
    proxy.up().await;
    let request = kv_rotator::cli::rotate::manual_request(store.as_ref(), &secret, "fault test", false).await.unwrap();
    let report = running.engine.rotate(request).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let latest = store.get_latest(&secret).await.unwrap();
    assert!(latest.value.expose_secret() != initial.expose_secret(), "the latest is a new password");
    assert!(logs_in(&role, &latest.value).await);
    assert!(!latest.properties.tags.contains_key("kv-rotator-failed"));
    running.shutdown().await.unwrap();
    vault.shutdown().await;
}
