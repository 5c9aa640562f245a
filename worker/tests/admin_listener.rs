//! What each port exposes: the internet-facing webhook answers 404 to `/metrics` and keeps
//! `/healthz`; the admin listener (`[admin] listen`, loopback by default) serves
//! `/metrics`, `/healthz` and `/readyz`, and no webhook route. In process (the service
//! with both listeners), and as an operator runs it (`serve` with `[admin]` from its
//! configuration file). `/readyz` follows the vault's answers, and a credential that
//! gets no token.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_rotator::service::{self, Background};
use kv_rotator::targets::Targets;
use kv_rotator_config::{EngineConfig, WebhookConfig};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::SecretStore;
use tokio::net::TcpListener;

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;

use common::proc::{Proc, ADMIN_LISTEN_ENV};

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");

/// `GET http://{addr}{path}`: status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The two ports' answers, as the tests below expect them.
async fn assert_ports(webhook: SocketAddr, admin: SocketAddr) {
    assert_eq!(get(webhook, "/metrics").await.0, 404, "no metrics on the webhook's port");
    assert_eq!(get(webhook, "/healthz").await, (200, "ok".to_owned()), "the liveness probe stays");
    let (status, metrics) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("kv_rotator_sweeps_total{result=\"ok\"}"), "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    assert_eq!(get(admin, "/healthz").await, (200, "ok".to_owned()));
    assert_eq!(get(admin, "/readyz").await, (200, "ready".to_owned()));
    let delivery = reqwest::Client::new().post(format!("http://{admin}/api/eventgrid")).body("[]").send().await;
    assert_eq!(delivery.unwrap().status(), 404, "no webhook route on the admin port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_on_the_admin_listener_and_not_on_the_webhook() {
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let background = Background { sweeper: Some(Default::default()), admin: Some(admin), ..Default::default() };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = service::start_with(
        store,
        Targets::default(),
        EngineConfig::default(),
        &WebhookConfig::default(),
        background,
        listener,
    )
    .await
    .unwrap();
    let admin = running.admin_addr.expect("the admin listener's address");
    // The startup sweep has run once it is counted.
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.engine.metrics().counter("kv_rotator_sweeps_total", &[("result", "ok")]) == 0 {
        assert!(Instant::now() < deadline, "no sweep within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ports(running.webhook_addr, admin).await;

    running.shutdown().await.unwrap();
    assert!(tokio::net::TcpStream::connect(admin).await.is_err(), "the admin listener is closed at shutdown");
    vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_opens_the_admin_listener_of_its_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, vault.ca_certificate_pem()).unwrap();
    let config = dir.path().join("kv-rotator.toml");
    std::fs::write(
        &config,
        format!(
            "[vault]\nurl = \"{}\"\ntls_ca_file = \"{}\"\nconnect_to = \"{}\"\ncredential = {{ kind = \"dev-vault\" }}\n\
             [webhook]\nlisten = \"127.0.0.1:0\"\nauth = {{ mode = \"none\" }}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            vault.endpoint(),
            ca_file.display(),
            vault.local_addr(),
        ),
    )
    .unwrap();
    // The address comes from the file, not from the helper's default for children: port 0
    // there, so the OS picks one (never the built-in default's), which serve logs.
    let mut proc = Proc::spawn(Command::new(BIN).args(["serve", "--config"]).arg(&config).env_remove(ADMIN_LISTEN_ENV));
    let webhook = proc.logged_addr("webhook_addr").await;
    let admin = proc.logged_addr("admin_addr").await;
    assert_ne!(admin, kv_rotator_config::DEFAULT_ADMIN_LISTEN, "the file's admin listener, not the default");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        proc.assert_running();
        let sweeps = match reqwest::get(format!("http://{admin}/metrics")).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if sweeps.contains("kv_rotator_sweeps_total{result=\"ok\"}") {
            break;
        }
        assert!(Instant::now() < deadline, "no sweep counted on the admin listener within 60 s:\n{}", proc.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ports(webhook, admin).await;
    let output = proc.terminate();
    assert!(output.contains("admin listener"), "its address is logged:\n{output}");
    vault.shutdown().await;
}

/// The value of the series `series` (name and labels, as rendered) in a scrape.
fn series_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes `/metrics` until `series` satisfies `wanted` (within 30 s); the scrape.
async fn scrape_until(admin: SocketAddr, series: &str, wanted: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = get(admin, "/metrics").await;
        if series_value(&metrics, series).is_some_and(&wanted) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "{series} not as wanted within 30 s:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks `/readyz` until it answers `status` (within 30 s); its body.
async fn readyz_until(admin: SocketAddr, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (got, body) = get(admin, "/readyz").await;
        if got == status {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz not {status} within 30 s: {got} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The service over `store` with its admin listener: a sweep a second with the due scan
/// off (only the webhook rotates; the sweeps still count, and are the vault calls
/// readiness is judged from), `/readyz` 503 after 1 s of failing vault calls.
async fn sweeping_service(store: Arc<dyn SecretStore>, targets: Targets) -> service::RunningService {
    let background = Background {
        sweeper: Some(kv_rotator_config::SweeperConfig { enabled: false, interval_secs: 1, ..Default::default() }),
        admin: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        vault_failing_for: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let engine = EngineConfig { initial_backoff_ms: 10, max_backoff_ms: 20, max_attempts: 2, ..Default::default() };
    service::start_with(store, targets, engine, &WebhookConfig::default(), background, listener).await.unwrap()
}

/// A rotation through the webhook, a throttled vault call, sweeps and an outage of the
/// vault, as a scraper and a readiness probe see them: rotations by outcome, rotator and
/// trigger; deliveries by outcome; 429s and retries; managed secrets by due state and the
/// oldest journal's age; `/readyz` 503 naming the vault while every call fails for longer
/// than the threshold, 200 again once one succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_rotations_deliveries_throttling_and_the_sweep_and_readyz_the_vault() {
    use kv_rotator_keyvault::devvault::{ErrorRule, Faults, Injected};
    use kv_rotator_keyvault::pipeline::{ClientSettings, RetrySettings};
    use kv_rotator_keyvault::NewSecretVersion;

    let site = common::devsite::DevSite::start().await;
    // Short retries: an outage shows in a few tries, and recovery in the next one.
    let retry = RetrySettings {
        max_retries: 2,
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_elapsed: Duration::from_secs(5),
    };
    let settings = ClientSettings { retry, ..ClientSettings::default() };
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault_with(&site.vault, settings).unwrap());
    let (v1, _) = site.user("db-password", "alice").await;
    let expired = Some(time::OffsetDateTime::now_utc() - time::Duration::days(1));
    for (name, tags, expires) in [
        ("old-password", vec![("rotator", "site"), ("CredentialId", "bob")], expired),
        ("broken-password", vec![("rotator", "site"), ("CredentialId", "carol"), ("kv-rotator-failed", "x")], None),
        // A journal record no rotation will finish (it names no secret): an operator's job.
        ("kv-rotator-pending-orphan", vec![], None),
    ] {
        let tags = tags.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        let value = secrecy::SecretString::from("not-a-real-password");
        let new = NewSecretVersion { value, tags, content_type: None, expires, not_before: None };
        store.set_secret(name, new).await.unwrap();
    }

    let running = sweeping_service(store.clone(), site.targets()).await;
    let admin = running.admin_addr.unwrap();
    let due = scrape_until(admin, "kv_rotator_managed_secrets{state=\"due\"}", |n| n == 1.0).await;
    assert_eq!(series_value(&due, "kv_rotator_managed_secrets{state=\"expired\"}"), Some(1.0), "{due}");
    assert_eq!(series_value(&due, "kv_rotator_managed_secrets{state=\"failed\"}"), Some(1.0), "{due}");
    assert_eq!(series_value(&due, "kv_rotator_managed_secrets{state=\"not_due\"}"), Some(0.0), "{due}");
    assert_eq!(series_value(&due, "kv_rotator_queue_depth"), Some(0.0), "{due}");

    // The next call to the vault is throttled once, then retried.
    let throttle_once = Faults { fail_nth: Some((1, Injected::Status(429))), ..Faults::default() };
    site.vault.set_faults(throttle_once).unwrap();
    let url = format!("http://{}/api/eventgrid", running.webhook_addr);
    let client = reqwest::Client::new();
    let now = time::OffsetDateTime::now_utc();
    let delivery =
        kv_rotator::cli::seed::near_expiry_delivery(store.vault_name(), &site.vault.host(), "db-password", &v1, now);
    let mut ignored = delivery.clone();
    ignored[0]["eventType"] = "Microsoft.KeyVault.SecretNewVersionCreated".into();
    ignored[0]["id"] = "another-event".into();
    for (body, status) in [(&delivery, 200), (&ignored, 200)] {
        let response = client.post(&url).header("aeg-event-type", "Notification").json(body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
    }
    assert_eq!(client.post(&url).body("not json").send().await.unwrap().status().as_u16(), 400);

    let rotated = "kv_rotator_rotations_total{outcome=\"rotated\",rotator=\"htpasswd\",trigger=\"event_grid\"}";
    let metrics = scrape_until(admin, rotated, |n| n == 1.0).await;
    for (series, value) in [
        ("kv_rotator_webhook_deliveries_total{outcome=\"queued\"}", 1.0),
        ("kv_rotator_webhook_deliveries_total{outcome=\"ignored\"}", 1.0),
        ("kv_rotator_webhook_deliveries_total{outcome=\"bad_request\"}", 1.0),
        ("kv_rotator_vault_throttled_total", 1.0),
    ] {
        assert_eq!(series_value(&metrics, series), Some(value), "{series}:\n{metrics}");
    }
    assert!(series_value(&metrics, "kv_rotator_vault_retries_total").is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(metrics.contains("kv_rotator_step_duration_seconds_count{step=\"canary\"}"), "{metrics}");
    assert!(!metrics.contains("db-password") && !metrics.contains("alice"), "no secret or account names:\n{metrics}");
    // A sweep after the rotation: the new version has an `exp` some way off.
    let swept = scrape_until(admin, "kv_rotator_managed_secrets{state=\"not_due\"}", |n| n == 1.0).await;
    assert_eq!(series_value(&swept, "kv_rotator_managed_secrets{state=\"due\"}"), Some(0.0), "{swept}");
    // The orphan journal record stays; its age grows sweep by sweep.
    scrape_until(admin, "kv_rotator_journal_age_seconds", |age| age >= 1.0).await;
    assert_eq!(readyz_until(admin, 200).await, "ready");

    // Key Vault answers 503 to everything: the sweeps fail, and after the threshold
    // (1 s here) with no success, the service is not ready, and says why.
    let outage = Faults {
        errors: vec![ErrorRule { operation: None, rate: 1.0, fault: Injected::Status(503) }],
        ..Faults::default()
    };
    site.vault.set_faults(outage).unwrap();
    let why = readyz_until(admin, 503).await;
    assert!(why.starts_with("not ready: the vault is unreachable: every call for "), "{why}");
    assert!(why.contains("the last with HTTP 503"), "{why}");
    site.vault.set_faults(Faults::default()).unwrap();
    assert_eq!(readyz_until(admin, 200).await, "ready", "the next sweep succeeds");

    running.shutdown().await.unwrap();
}

/// A credential that fails while `failing` is set (as `az` does when nobody is logged in)
/// and otherwise hands out the dev vault's token.
#[derive(Debug)]
struct SwitchedCredential {
    failing: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for SwitchedCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            let message = "Azure CLI not logged in: run az login";
            return Err(azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, message));
        }
        kv_rotator_keyvault::azure::DevVaultCredential::new().get_token(scopes, options).await
    }
}

/// A credential that gets no token sends no request, so no try's answer says the vault
/// fails: the token failures themselves count. Failing past the threshold, `/readyz` is
/// 503 naming the credential; once it gets a token again, the next call makes it ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_naming_the_credential_while_it_gets_no_token_and_ready_once_it_does() {
    use kv_rotator_keyvault::azure::TransportOverrides;
    use kv_rotator_keyvault::pipeline::ClientSettings;
    use std::sync::atomic::Ordering;

    let site = common::devsite::DevSite::start().await;
    let credential = Arc::new(SwitchedCredential { failing: true.into() });
    let overrides = TransportOverrides {
        extra_root_pem: Some(site.vault.ca_certificate_pem().to_owned()),
        connect_to: Some(site.vault.local_addr()),
    };
    let store: Arc<dyn SecretStore> = Arc::new(
        AzureSecretStore::connect_with(
            site.vault.endpoint().as_str(),
            credential.clone(),
            overrides,
            ClientSettings::default(),
        )
        .unwrap(),
    );
    let running = sweeping_service(store, site.targets()).await;
    let admin = running.admin_addr.unwrap();
    let why = readyz_until(admin, 503).await;
    assert!(why.starts_with("not ready: the vault is unreachable: every call for "), "{why}");
    assert!(why.contains("the last with no token: the credential (vault.credential) could not get one"), "{why}");

    credential.failing.store(false, Ordering::SeqCst);
    assert_eq!(readyz_until(admin, 200).await, "ready", "the next sweep gets a token and an answer");
    running.shutdown().await.unwrap();
}
