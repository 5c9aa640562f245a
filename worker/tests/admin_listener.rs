//! What each port exposes: the internet-facing webhook answers 404 to `/metrics` and keeps
//! `/healthz`; the admin listener (`[admin] listen`, loopback by default) serves
//! `/metrics`, `/healthz` and `/readyz`, and no webhook route. In process (the service
//! with both listeners), and as an operator runs it (`serve` with `[admin]` from its
//! configuration file).

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
