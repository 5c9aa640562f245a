//! `kv-rotator serve` and `kv-rotator dev` run as separate processes, as an operator
//! runs them: configuration from a file, a delivery over HTTP, the rotation observed in
//! Key Vault and on the target, SIGTERM ends the process cleanly, and no password
//! appears in its output, even at the `trace` log level.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_rotator_keyvault::azure::{AzureSecretStore, DevVaultCredential, TransportOverrides};
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, SecretStore};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::{PasswordPolicy, Rotator, VerifyRequest, VerifyResponse};
use secrecy::{ExposeSecret, SecretString};

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;

use common::proc::Proc;

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");

/// `kv-rotator ARGS` at the `trace` log level.
fn spawn(args: &[&str]) -> Proc {
    Proc::spawn(Command::new(BIN).args(args).env("RUST_LOG", "trace"))
}

fn dev_store(url: &str, ca_pem: String, addr: std::net::SocketAddr) -> Arc<dyn SecretStore> {
    Arc::new(
        AzureSecretStore::connect(
            url,
            DevVaultCredential::new(),
            TransportOverrides { extra_root_pem: Some(ca_pem), connect_to: Some(addr) },
        )
        .unwrap(),
    )
}

/// Polls until the latest version of `secret` differs from `old`.
async fn wait_new_version(
    store: &dyn SecretStore,
    secret: &str,
    old: &str,
    proc: &mut Proc,
) -> kv_rotator_keyvault::SecretRecord {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        proc.assert_running();
        let latest = store.get_latest(secret).await.unwrap();
        if latest.version != old {
            return latest;
        }
        assert!(Instant::now() < deadline, "no new version of {secret} within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn verify(rotator: &HtpasswdRotator, user: &str, password: &SecretString) -> VerifyResponse {
    rotator.verify(VerifyRequest::new(user, password.clone())).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_rotates_from_a_config_file_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let vault = DevVault::start(DevVaultOptions { vault_name: "opsvault".into(), ..Default::default() }).await.unwrap();
    let store = dev_store(vault.endpoint().as_str(), vault.ca_certificate_pem().to_owned(), vault.local_addr());

    let htpasswd_path = dir.path().join("site.htpasswd");
    let policy = PasswordPolicy::default();
    let initial = policy.generate();
    htpasswd::add_user(&htpasswd_path, "svc-web", &initial, 4).unwrap();
    let v1 = store
        .set_secret(
            "web-password",
            NewSecretVersion {
                value: initial.clone(),
                tags: BTreeMap::from([
                    ("rotator".to_owned(), "intranet".to_owned()),
                    ("CredentialId".to_owned(), "svc-web".to_owned()),
                    ("ValidityPeriodDays".to_owned(), "14".to_owned()),
                ]),
                content_type: None,
                expires: None,
                not_before: None,
            },
        )
        .await
        .unwrap()
        .version;

    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, vault.ca_certificate_pem()).unwrap();
    let key_file = dir.path().join("webhook.key");
    std::fs::write(&key_file, "webhook-key-0123456789abcdef\n").unwrap();
    let config = format!(
        "[vault]\nurl = \"{}\"\ntls_ca_file = \"{}\"\nconnect_to = \"{}\"\ncredential = {{ kind = \"dev-vault\" }}\n\n\
         [webhook]\nlisten = \"127.0.0.1:0\"\n\
         auth = {{ mode = \"shared-key\", key = {{ file = \"{}\" }} }}\n\n\
         [engine]\nmin_rotation_interval_secs = 0\n\n\
         [targets.intranet]\nkind = \"htpasswd\"\npath = \"{}\"\nbcrypt_cost = 4\naccounts = [\"*\"]\n",
        vault.endpoint(),
        ca_file.display(),
        vault.local_addr(),
        key_file.display(),
        htpasswd_path.display()
    );
    let config_path = dir.path().join("kv-rotator.toml");
    std::fs::write(&config_path, config).unwrap();

    let mut proc = spawn(&["serve", "--config", config_path.to_str().unwrap()]);
    let port = proc.logged_addr("webhook_addr").await.port();
    proc.wait_healthy(port).await;
    let body = kv_rotator::cli::seed::near_expiry_delivery(
        "opsvault",
        &vault.host(),
        "web-password",
        &v1,
        time::OffsetDateTime::now_utc(),
    );
    let post = |url: String| reqwest::Client::new().post(url).header("aeg-event-type", "Notification").json(&body);
    let status = post(format!("http://127.0.0.1:{port}/api/eventgrid")).send().await.unwrap().status();
    assert_eq!(status, 401, "no key, no delivery");
    let url = format!("http://127.0.0.1:{port}/api/eventgrid?key=webhook-key-0123456789abcdef");
    let status = post(url).send().await.unwrap().status();
    assert_eq!(status, 200);

    let latest = wait_new_version(store.as_ref(), "web-password", &v1, &mut proc).await;
    let rotator = HtpasswdRotator::new(HtpasswdConfig::new(&htpasswd_path), policy);
    assert_eq!(verify(&rotator, "svc-web", &latest.value).await, VerifyResponse::Accepted);
    assert_eq!(verify(&rotator, "svc-web", &initial).await, VerifyResponse::Rejected);
    assert_eq!(latest.properties.tags.get("rotated-from"), Some(&v1));

    let output = proc.terminate();
    assert!(output.contains("rotation request finished"), "the rotation is logged:\n{output}");
    for password in [&initial, &latest.value] {
        assert!(!output.contains(password.expose_secret()), "a password leaked into the output:\n{output}");
    }
    vault.shutdown().await;
}

#[test]
fn serve_with_a_bad_config_names_the_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[vault]\nurl = \"https://v.vault.azure.net/\"\n[webhook]\nlisten_on = \"0.0.0.0:1\"\n")
        .unwrap();
    let out = Command::new(BIN).args(["serve", "--config", path.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listen_on"), "{stderr}");
}

#[test]
fn serve_without_webhook_auth_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.toml");
    std::fs::write(&path, "[vault]\nurl = \"https://v.vault.azure.net/\"\n[webhook]\nlisten = \"127.0.0.1:0\"\n")
        .unwrap();
    let out = Command::new(BIN).args(["serve", "--config", path.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("webhook.auth is not set"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_rotates_its_demo_secret_on_the_sample_event() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut proc = spawn(&[
        "dev",
        "--vault-addr",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let endpoints = common::proc::dev_endpoints(&mut proc, &state).await;
    let field = |k: &str| endpoints[k].as_str().unwrap_or_else(|| panic!("{k} in endpoints.json")).to_owned();

    let store = dev_store(
        &field("vault_url"),
        std::fs::read_to_string(field("ca_file")).unwrap(),
        field("vault_addr").parse().unwrap(),
    );
    let secret = field("demo_secret");
    let before = store.get_latest(&secret).await.unwrap();
    let event = std::fs::read(field("sample_event")).unwrap();
    let status = reqwest::Client::new()
        .post(field("webhook_url"))
        .header("aeg-event-type", "Notification")
        .header("content-type", "application/json")
        .body(event)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    let latest = wait_new_version(store.as_ref(), &secret, &before.version, &mut proc).await;
    let rotator = HtpasswdRotator::new(HtpasswdConfig::new(state.join("demo.htpasswd")), PasswordPolicy::default());
    assert_eq!(verify(&rotator, "demo-bot", &latest.value).await, VerifyResponse::Accepted);
    assert_eq!(verify(&rotator, "demo-bot", &before.value).await, VerifyResponse::Rejected);
    assert!(Path::new(&field("serve_config")).exists());

    let output = proc.terminate();
    for password in [&before.value, &latest.value] {
        assert!(!output.contains(password.expose_secret()), "a password leaked into the output");
    }
}
