//! Duplicates: 1,000 Event Grid deliveries of the same secret state over HTTP, and 1,000
//! more straight into the engine (the webhook coalesces repeats, the engine must not need
//! it), interleaved with sweeper runs (the service's own, every second, and extra scans)
//! and manual triggers of the same state, converge on exactly one rotation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_rotator::engine::Outcome;
use kv_rotator::service::{self, Background};
use kv_rotator::targets::Targets;
use kv_rotator_config::{EngineConfig, SweeperConfig, WebhookConfig};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, SecretStore};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::{PasswordPolicy, Rotator, VerifyRequest, VerifyResponse};
use time::OffsetDateTime;
use tokio::net::TcpListener;

const SECRET: &str = "shared-password";
const USER: &str = "shared";
const DELIVERIES: usize = 1000;
const MANUAL: usize = 20;
const SCANS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_deliveries_sweeps_and_manual_triggers_make_one_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    let initial = PasswordPolicy::default().generate();
    htpasswd::add_user(&path, USER, &initial, 4).unwrap();
    let rotator = Arc::new(HtpasswdRotator::new(
        HtpasswdConfig { bcrypt_cost: 4, ..HtpasswdConfig::new(&path) },
        PasswordPolicy::default(),
    ));
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let tags =
        BTreeMap::from([("rotator".to_owned(), "site".to_owned()), ("CredentialId".to_owned(), USER.to_owned())]);
    // Expires in 5 days: the sweeper's 30-day window makes it due, as Event Grid's NearExpiry does.
    let expires = Some(OffsetDateTime::now_utc() + time::Duration::days(5));
    let v1 = store
        .set_secret(
            SECRET,
            NewSecretVersion { value: initial.clone(), tags, content_type: None, expires, not_before: None },
        )
        .await
        .unwrap()
        .version;

    // Manual triggers of this state, resolved before anything runs (v1 is latest), run
    // interleaved below.
    let mut manual = Vec::new();
    for i in 0..MANUAL {
        let request = kv_rotator::cli::rotate::manual_request(store.as_ref(), SECRET, &format!("operator {i}"), false)
            .await
            .unwrap();
        assert_eq!(request.version.as_deref(), Some(v1.as_str()));
        manual.push(request);
    }
    // Sweeper scans of this state, likewise: each names the version it saw (v1).
    let mut swept = Vec::new();
    for _ in 0..SCANS {
        let scan = kv_rotator::sweeper::scan(store.as_ref(), Some(&kv_rotator::engine::due::DueRule::default()))
            .await
            .unwrap();
        assert_eq!(scan.requests.len(), 1);
        swept.extend(scan.requests.into_iter().map(|(request, _)| request));
    }
    let mut targets = Targets::default();
    targets.insert("site", rotator.clone(), None);
    let engine_config = EngineConfig {
        queue_capacity: 256,
        initial_backoff_ms: 10,
        max_backoff_ms: 50,
        min_rotation_interval_secs: 0,
        ..Default::default()
    };
    let background = Background {
        sweeper: Some(SweeperConfig { interval_secs: 1, ..Default::default() }),
        alerts: Default::default(),
        ..Default::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running =
        service::start_with(store.clone(), targets, engine_config, &WebhookConfig::default(), background, listener)
            .await
            .unwrap();
    let engine = running.engine.clone();
    let url = format!("http://{}/api/eventgrid", running.webhook_addr);

    let started = Instant::now();
    let side = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for (i, request) in manual.into_iter().enumerate() {
                outcomes.push(engine.rotate(request).await.outcome);
                if i % (MANUAL / SCANS) == 0 {
                    if let Some(request) = swept.pop() {
                        outcomes.push(engine.rotate(request).await.outcome);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcomes
        })
    };

    // The same deliveries straight into the engine too: the webhook coalesces repeats
    // of one (vault, secret, version), and the engine must converge without that help.
    let direct: Vec<_> = (0..DELIVERIES)
        .map(|i| {
            let engine = engine.clone();
            let request = RotationRequest {
                vault_name: store.vault_name().to_owned(),
                secret_name: SECRET.to_owned(),
                version: Some(v1.clone()),
                trigger: Trigger::EventGrid {
                    event_id: format!("direct-{i}"),
                    event_type: "Microsoft.KeyVault.SecretNearExpiry".to_owned(),
                },
            };
            tokio::spawn(async move { engine.rotate(request).await.outcome })
        })
        .collect();

    // Event Grid retries a 503 (queue full); so does this sender.
    let client = reqwest::Client::new();
    let mut retried_503 = 0usize;
    let mut sent = 0usize;
    while sent < DELIVERIES {
        let batch: Vec<_> = (0..50.min(DELIVERIES - sent))
            .map(|_| {
                let body = kv_rotator::cli::seed::near_expiry_delivery(
                    store.vault_name(),
                    &vault.host(),
                    SECRET,
                    &v1,
                    OffsetDateTime::now_utc(),
                );
                let client = client.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    client
                        .post(&url)
                        .header("aeg-event-type", "Notification")
                        .json(&body)
                        .send()
                        .await
                        .unwrap()
                        .status()
                })
            })
            .collect();
        for handle in batch {
            match handle.await.unwrap().as_u16() {
                200 => sent += 1,
                503 => retried_503 += 1,
                other => panic!("webhook answered {other}"),
            }
        }
    }
    let side_outcomes = side.await.unwrap();
    for handle in direct {
        let outcome = handle.await.unwrap();
        assert!(!matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    }
    // Shutdown drains the queue: every delivery that reached it has been rotated or fenced.
    let metrics = engine.metrics();
    running.shutdown().await.unwrap();
    let took = started.elapsed();
    let count = |trigger: &str| -> u64 {
        ["rotated", "already_rotated", "stale", "failed", "not_managed", "other_vault"]
            .iter()
            .map(|o| metrics.counter("kv_rotator_rotations_total", &[("outcome", o), ("trigger", trigger)]))
            .sum()
    };
    let rotated: u64 = ["event_grid", "sweeper", "manual"]
        .iter()
        .map(|t| metrics.counter("kv_rotator_rotations_total", &[("outcome", "rotated"), ("trigger", t)]))
        .sum();
    let failed: u64 = ["event_grid", "sweeper", "manual"]
        .iter()
        .map(|t| metrics.counter("kv_rotator_rotations_total", &[("outcome", "failed"), ("trigger", t)]))
        .sum();
    let sweeper_requests = count("sweeper");
    let via_webhook = count("event_grid") - DELIVERIES as u64;
    println!(
        "duplicates: {DELIVERIES} deliveries over HTTP ({retried_503} 503s retried, {via_webhook} reached the engine after \
         the webhook's coalescing) + {DELIVERIES} straight to the engine, {} manual and scan requests, \
         {sweeper_requests} sweeper requests, in {:.1} s -> {rotated} rotation",
        side_outcomes.len(),
        took.as_secs_f64()
    );
    assert!(via_webhook >= 1);
    assert_eq!(rotated, 1, "exactly one rotation");
    assert_eq!(failed, 0);
    assert!(side_outcomes.iter().all(|o| !matches!(o, Outcome::Failed { .. })), "{side_outcomes:?}");

    let versions = store.list_versions(SECRET).await.unwrap();
    assert_eq!(versions.len(), 2, "one new version");
    let latest = store.get_latest(SECRET).await.unwrap();
    assert_eq!(latest.properties.tags.get("rotated-from"), Some(&v1));
    let verify = |password| rotator.verify(VerifyRequest::new(USER, password));
    assert_eq!(verify(latest.value.clone()).await.unwrap(), VerifyResponse::Accepted);
    assert_eq!(verify(initial.clone()).await.unwrap(), VerifyResponse::Rejected);
    let journals =
        store.list_secrets().await.unwrap().into_iter().filter(|p| p.name.starts_with("kv-rotator-pending-")).count();
    assert_eq!(journals, 0);

    vault.shutdown().await;
}
