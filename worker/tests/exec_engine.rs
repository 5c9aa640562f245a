//! The engine's guarantees with an exec plugin that misbehaves, through the real engine,
//! the dev vault (over the SDK) and the toy-file example plugin wrapped by a program that
//! goes wrong once: after a set that changed the password and then hung, crashed or
//! answered garbage, the pending password is kept and the rotation finishes; a plugin
//! that claims a change it did not make, or accepts any password, never costs the working
//! password. After every run, what Key Vault holds logs in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kv_rotator::engine::{Engine, Outcome};
use kv_rotator::targets::Targets;
use kv_rotator_config::EngineConfig;
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, SecretStore};
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::exec::{ExecConfig, ExecRotator};
use kv_rotator_rotators::{PasswordPolicy, Rotator, VerifyRequest, VerifyResponse};
use secrecy::{ExposeSecret, SecretString};

const SECRET: &str = "legacy-bot-password";
const USER: &str = "legacy-bot";

fn toy_plugin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/toy_file.py").canonicalize().unwrap()
}

struct Site {
    dir: tempfile::TempDir,
    store: Arc<dyn SecretStore>,
    _vault: DevVault,
    /// The well-behaved example, to check logins with.
    honest: ExecRotator,
}

impl Site {
    /// A toy file with the user, its secret in the dev vault.
    async fn new() -> Site {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
        let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
        let honest =
            ExecRotator::new(Self::config(dir.path(), toy_plugin()), PasswordPolicy::default(), Strategy::SingleUser);
        let site = Site { dir, store, _vault: vault, honest };
        let password = PasswordPolicy::default().generate();
        let digest = hex::encode(sha2::Sha256::digest(password.expose_secret().as_bytes()));
        std::fs::write(site.toy(), format!("{USER} {digest}\n")).unwrap();
        let tags =
            BTreeMap::from([("rotator".to_owned(), "legacy".to_owned()), ("CredentialId".to_owned(), USER.to_owned())]);
        let new = NewSecretVersion { value: password, tags, content_type: None, expires: None, not_before: None };
        site.store.set_secret(SECRET, new).await.unwrap();
        site
    }

    fn toy(&self) -> PathBuf {
        self.dir.path().join("toy.txt")
    }

    fn config(dir: &Path, command: PathBuf) -> ExecConfig {
        let mut cfg = ExecConfig::new(command);
        cfg.timeout_secs = 2;
        cfg.settings.insert("path".into(), dir.join("toy.txt").to_str().unwrap().into());
        cfg
    }

    /// A wrapper around the example that runs `once` (sh, the request in `$req`) the
    /// first time it is asked to `op`, and the example itself otherwise.
    fn wrapper(&self, op: &str, once: &str) -> PathBuf {
        let path = self.dir.path().join(format!("wrapped-{op}.sh"));
        let marker = self.dir.path().join(format!("went-wrong-{op}"));
        let script = format!(
            "#!/bin/sh\nreq=$(cat)\ncase \"$req\" in *'\"operation\":\"{op}\"'*)\n  \
             if [ ! -e '{marker}' ]; then : > '{marker}'\n{once}\n  fi;;\nesac\n\
             printf '%s' \"$req\" | '{plugin}'\n",
            marker = marker.display(),
            plugin = toy_plugin().display()
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        path
    }

    fn engine(&self, command: PathBuf) -> Engine {
        let rotator =
            ExecRotator::new(Self::config(self.dir.path(), command), PasswordPolicy::default(), Strategy::SingleUser);
        let mut targets = Targets::default();
        targets.insert("legacy", Arc::new(rotator), None);
        let settings = EngineConfig {
            initial_backoff_ms: 10,
            max_backoff_ms: 50,
            min_rotation_interval_secs: 0,
            finish_retry_for_secs: 0,
            ..Default::default()
        };
        Engine::new(self.store.clone(), targets, settings)
    }

    async fn rotate(&self, engine: &Engine) -> Outcome {
        let latest = self.store.get_latest(SECRET).await.unwrap();
        let request = RotationRequest {
            vault_name: self.store.vault_name().to_owned(),
            secret_name: SECRET.to_owned(),
            version: Some(latest.version),
            trigger: Trigger::Manual { requested_by: "exec engine test".into(), force: true },
        };
        engine.rotate(request).await.outcome
    }

    async fn logs_in(&self, password: &SecretString) -> bool {
        let req = VerifyRequest::new(USER, password.clone());
        self.honest.verify(req).await.unwrap() == VerifyResponse::Accepted
    }

    /// The invariant: the latest version, or else a journal record, logs in.
    async fn latest_logs_in(&self) -> bool {
        self.logs_in(&self.store.get_latest(SECRET).await.unwrap().value).await
    }
}

use sha2::Digest as _;

/// A `set` that went wrong after the example changed the password: the retry finds the
/// pending password already set, and finishes with it.
async fn changed_then(went_wrong: &str) {
    let site = Site::new().await;
    let before = site.store.get_latest(SECRET).await.unwrap();
    // The change is made (the example's own set, its reply thrown away), then `went_wrong`.
    let once = format!("  printf '%s' \"$req\" | '{}' > /dev/null\n{went_wrong}", toy_plugin().display());
    let engine = site.engine(site.wrapper("set", &once));
    let outcome = site.rotate(&engine).await;
    assert!(matches!(outcome, Outcome::Rotated { .. }), "{outcome:?}");
    assert!(site.dir.path().join("went-wrong-set").exists(), "the plugin never went wrong");
    let after = site.store.get_latest(SECRET).await.unwrap();
    assert_ne!(after.version, before.version);
    assert!(site.latest_logs_in().await, "the new value in Key Vault does not log in");
    assert!(!site.logs_in(&before.value).await, "the old value still logs in");
}

#[tokio::test]
async fn a_set_that_changed_then_hung_is_finished_with_the_pending_password() {
    changed_then("  sleep 30").await;
}

#[tokio::test]
async fn a_set_that_changed_then_crashed_is_finished_with_the_pending_password() {
    changed_then("  exit 3").await;
}

#[tokio::test]
async fn a_set_that_changed_then_answered_garbage_is_finished_with_the_pending_password() {
    changed_then("  echo 'OK!'; exit 0").await;
}

#[tokio::test]
async fn a_set_that_crashed_before_changing_is_retried_and_finishes() {
    let site = Site::new().await;
    let before = site.store.get_latest(SECRET).await.unwrap();
    let engine = site.engine(site.wrapper("set", "  exit 1"));
    let outcome = site.rotate(&engine).await;
    assert!(matches!(outcome, Outcome::Rotated { .. }), "{outcome:?}");
    assert!(site.latest_logs_in().await);
    assert!(!site.logs_in(&before.value).await);
}

#[tokio::test]
async fn a_plugin_claiming_a_change_it_did_not_make_never_costs_the_working_password() {
    let site = Site::new().await;
    let before = site.store.get_latest(SECRET).await.unwrap();
    // Every set says "changed" and changes nothing.
    let liar = site.dir.path().join("liar.sh");
    std::fs::write(
        &liar,
        format!(
            "#!/bin/sh\nreq=$(cat)\ncase \"$req\" in *'\"operation\":\"set\"'*)\n  \
             echo '{{\"protocol\":1,\"outcome\":\"changed\",\"changed_with\":\"current\",\"verified\":true}}';;\n\
             *) printf '%s' \"$req\" | '{}';;\nesac\n",
            toy_plugin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&liar, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let outcome = site.rotate(&site.engine(liar)).await;
    assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    // Its claim of `verified` was not believed: the engine's own login failed. The old
    // password is the one that works, and Key Vault still serves it as the latest.
    let latest = site.store.get_latest(SECRET).await.unwrap();
    assert_eq!(latest.version, before.version, "a version was written for a change that never happened");
    assert!(site.logs_in(&latest.value).await);
}

#[tokio::test]
async fn a_plugin_accepting_any_password_is_caught_before_anything_is_written() {
    let site = Site::new().await;
    let before = site.store.get_latest(SECRET).await.unwrap();
    let outcome = site
        .rotate(&site.engine(site.wrapper("verify", "  echo '{\"protocol\":1,\"outcome\":\"accepted\"}'; exit 0")))
        .await;
    let Outcome::Failed { error, unfinished_journal, .. } = &outcome else { panic!("{outcome:?}") };
    assert!(error.contains("canary") || error.contains("wrong password"), "{error}");
    assert!(unfinished_journal.is_none(), "{outcome:?}");
    let latest = site.store.get_latest(SECRET).await.unwrap();
    assert_eq!(latest.version, before.version);
    assert!(site.logs_in(&latest.value).await, "the toy file was changed");
}

#[tokio::test]
async fn a_login_check_that_hangs_after_the_change_is_retried_and_the_change_kept() {
    let site = Site::new().await;
    let before = site.store.get_latest(SECRET).await.unwrap();
    // The set works; the first login check after it hangs past the timeout (transient).
    let (done, hung) = (site.dir.path().join("set-done"), site.dir.path().join("hung"));
    let script = site.dir.path().join("slow-after-set.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nreq=$(cat)\ncase \"$req\" in\n  *'\"operation\":\"set\"'*) printf '%s' \"$req\" | '{plugin}'; \
             : > '{done}'; exit 0;;\n  *'\"operation\":\"verify\"'*) if [ -e '{done}' ] && [ ! -e '{hung}' ]; then \
             : > '{hung}'; sleep 30; fi;;\nesac\nprintf '%s' \"$req\" | '{plugin}'\n",
            plugin = toy_plugin().display(),
            done = done.display(),
            hung = hung.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let outcome = site.rotate(&site.engine(script)).await;
    assert!(matches!(outcome, Outcome::Rotated { .. }), "{outcome:?}");
    assert!(hung.exists(), "the login check never hung");
    assert!(site.latest_logs_in().await);
    assert!(!site.logs_in(&before.value).await);
}
