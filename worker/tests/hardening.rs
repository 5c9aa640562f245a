//! Process hardening (issue 10, item 5), checked on the real binary where it can be:
//!
//! - secret variables leave the environment before anything can inherit them: a child
//!   started the ordinary way (inheriting the environment as it is then) sees none, and
//!   each secret is handed out once;
//! - `serve` with the `azure-cli` credential runs a fake `az` that records the
//!   environment it got: only the helpers' allow-list, no secret and nothing else; the
//!   shared key taken from the environment still authenticates deliveries;
//! - `serve` has core dumps off: `/proc/<pid>/limits` says 0, and its log says the
//!   kernel reports it non-dumpable.
//!
//! What this cannot show: `/proc/<pid>/environ` is the block the process started with,
//! which removal does not change (see `kv_rotator::hardening`); the proof that no child
//! inherits a secret is what a child actually receives.

use std::path::Path;
use std::process::Command;

use kv_rotator::hardening::{secret_var, take_secret_env, SecretVarError};
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use secrecy::ExposeSecret;

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;

use common::proc::Proc;

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");
const HOOK_KEY: &str = "webhook-key-S3CRET-0123456789";
/// The admin API's static token (`[admin.auth]`), taken out of the environment like the key.
const ADMIN_TOKEN: &str = "admin-token-S3CRET-0123456789abcdefghij";
const CLIENT_SECRET: &str = "client-secret-S3CRET-0123456789";
const PFX_PASSWORD: &str = "pfx-password-S3CRET-0123456789";

#[test]
fn taken_variables_leave_the_environment_and_reach_no_child() {
    // Names of this test only: no other thread of this binary reads them.
    std::env::set_var("KVR_TEST_TAKEN_KEY", HOOK_KEY);
    std::env::set_var("KVR_TEST_TAKEN_SECRET", CLIENT_SECRET);
    std::env::set_var("KVR_TEST_KEPT", "not-a-secret");
    let found = take_secret_env(["KVR_TEST_TAKEN_KEY", "KVR_TEST_TAKEN_SECRET", "KVR_TEST_ABSENT", "", "A=B"]);
    assert_eq!(found[..2], ["KVR_TEST_TAKEN_KEY".to_owned(), "KVR_TEST_TAKEN_SECRET".to_owned()]);
    assert!(std::env::var_os("KVR_TEST_TAKEN_KEY").is_none());
    assert!(std::env::var_os("KVR_TEST_TAKEN_SECRET").is_none());

    // A child started the ordinary way inherits the environment as it is now.
    let child = Command::new("env").output().expect("run env");
    let env = String::from_utf8_lossy(&child.stdout);
    assert!(env.contains("KVR_TEST_KEPT=not-a-secret"), "the child got the environment:\n{env}");
    assert!(!env.contains("S3CRET"), "a taken secret reached a child:\n{env}");

    assert_eq!(secret_var("KVR_TEST_TAKEN_KEY").unwrap().expose_secret(), HOOK_KEY);
    assert_eq!(secret_var("KVR_TEST_TAKEN_KEY").unwrap_err(), SecretVarError::AlreadyRead);
    assert_eq!(secret_var("KVR_TEST_TAKEN_SECRET").unwrap().expose_secret(), CLIENT_SECRET);
    assert_eq!(secret_var("KVR_TEST_ABSENT").unwrap_err(), SecretVarError::NotSet);
    // Not taken: read from the environment as it is.
    assert_eq!(secret_var("KVR_TEST_KEPT").unwrap().expose_secret(), "not-a-secret");
}

/// A fake `az` in `dir/bin` that writes its environment to `dir/az-env` and prints a token.
fn fake_az(dir: &Path) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\nenv > '{}'\nprintf '{{\"accessToken\":\"fake-az-token\",\"expires_on\":%s,\"tokenType\":\"Bearer\"}}' \
         $(( $(date +%s) + 3600 ))\n",
        dir.join("az-env").display()
    );
    let az = bin.join("az");
    std::fs::write(&az, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_secrets_from_its_children_and_dumps_no_core() {
    let dir = tempfile::tempdir().unwrap();
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, vault.ca_certificate_pem()).unwrap();
    let config = format!(
        "[vault]\nurl = \"{}\"\ntls_ca_file = \"{}\"\nconnect_to = \"{}\"\ncredential = {{ kind = \"azure-cli\" }}\n\n\
         [webhook]\nlisten = \"127.0.0.1:0\"\n\
         auth = {{ mode = \"shared-key\", key = {{ env = \"KVR_TEST_HOOK_KEY\" }} }}\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         auth = {{ mode = \"static-token\", token = {{ env = \"KVR_TEST_ADMIN_TOKEN\" }} }}\n",
        vault.endpoint(),
        ca_file.display(),
        vault.local_addr(),
    );
    let config_path = dir.path().join("kv-rotator.toml");
    std::fs::write(&config_path, config).unwrap();
    let path = format!("{}:{}", fake_az(dir.path()).display(), std::env::var("PATH").unwrap_or_default());

    let mut proc = Proc::spawn(
        Command::new(BIN)
            .args(["serve", "--config", config_path.to_str().unwrap()])
            .env("PATH", path)
            .env("RUST_LOG", "info")
            .env("KVR_TEST_HOOK_KEY", HOOK_KEY)
            .env("KVR_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("AZURE_CLIENT_SECRET", CLIENT_SECRET)
            .env("AZURE_CLIENT_CERTIFICATE_PASSWORD", PFX_PASSWORD)
            .env("KVR_TEST_NOT_FOR_HELPERS", "marker-not-on-the-allow-list"),
    );
    let port = proc.logged_addr("webhook_addr").await.port();
    proc.wait_healthy(port).await;

    // `az` ran (the engine lease needed a token) with the allow-list only.
    let az_env = std::fs::read_to_string(dir.path().join("az-env")).expect("the fake az ran");
    assert!(az_env.lines().any(|l| l.starts_with("PATH=")), "az needs PATH:\n{az_env}");
    for absent in [
        "S3CRET",
        "KVR_TEST_HOOK_KEY",
        "KVR_TEST_ADMIN_TOKEN",
        "AZURE_CLIENT_SECRET",
        "KVR_TEST_NOT_FOR_HELPERS",
        "RUST_LOG",
    ] {
        assert!(!az_env.contains(absent), "{absent} reached az:\n{az_env}");
    }

    // Core dumps: the limit as the kernel shows it, and non-dumpable as serve read it back.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proc.pid())).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).expect("a core size line");
    assert_eq!(core.split_whitespace().collect::<Vec<_>>()[4..6], ["0", "0"], "{core}");
    let output = proc.output();
    assert!(output.contains("core dumps disabled"), "{output}");
    for name in
        ["KVR_TEST_HOOK_KEY", "KVR_TEST_ADMIN_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD"]
    {
        assert!(output.contains(name), "{name} is reported as removed:\n{output}");
    }

    // The key taken from the environment authenticates.
    let body = kv_rotator::cli::seed::near_expiry_delivery(
        "devvault",
        &vault.host(),
        "no-such-secret",
        "0123456789abcdef0123456789abcdef",
        time::OffsetDateTime::now_utc(),
    );
    let post = |query: &str| {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/api/eventgrid{query}"))
            .header("aeg-event-type", "Notification")
            .json(&body)
            .send()
    };
    assert_eq!(post("?key=wrong-key-0123456789").await.unwrap().status(), 401);
    assert_eq!(post(&format!("?key={HOOK_KEY}")).await.unwrap().status(), 200);

    let output = proc.terminate();
    assert!(!output.contains("S3CRET"), "a secret reached the output:\n{output}");
    vault.shutdown().await;
}
