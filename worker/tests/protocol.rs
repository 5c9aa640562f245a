//! The engine's protocol against the dev vault (through the SDK) and a real htpasswd
//! target, starting from the states a crash or a failure leaves behind: a journal record
//! written but the target untouched, the target changed but the secret not finished,
//! the secret finished but the journal not deleted — and from inputs that must be
//! refused before the target is touched.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use kv_rotator::engine::journal::{journal_name, rotation_id};
use kv_rotator::engine::{Engine, Outcome};
use kv_rotator::targets::Targets;
use kv_rotator_config::EngineConfig;
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, SecretStore, StoreError};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::{
    PasswordPolicy, Rotator, RotatorError, RotatorResult, SetPasswordRequest, SetPasswordResponse, VerifyRequest,
    VerifyResponse,
};
use kv_rotator_webhook::{RotationRequest, Trigger};
use secrecy::{ExposeSecret, SecretString};

const SECRET: &str = "app-password";
const USER: &str = "app";
const PROFILE: &str = "site";

/// A rotator that fails `set_password` transiently a given number of times first.
#[derive(Debug)]
struct Flaky {
    inner: HtpasswdRotator,
    failures_left: AtomicU32,
    set_calls: AtomicU32,
}

#[async_trait]
impl Rotator for Flaky {
    fn kind(&self) -> &'static str {
        "flaky-htpasswd"
    }
    fn password_policy(&self) -> &PasswordPolicy {
        self.inner.password_policy()
    }
    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        self.set_calls.fetch_add(1, Ordering::SeqCst);
        if self.failures_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(RotatorError::Transient("connection refused (injected)".into()));
        }
        self.inner.set_password(req).await
    }
    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        self.inner.verify(req).await
    }
}

struct World {
    _dir: tempfile::TempDir,
    vault: DevVault,
    store: Arc<dyn SecretStore>,
    rotator: Arc<Flaky>,
    engine: Engine,
    initial: SecretString,
    v1: String,
}

impl World {
    async fn new(transient_failures: u32, max_attempts: u32, extra_tags: &[(&str, &str)]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let policy = PasswordPolicy::default();
        let initial = policy.generate();
        htpasswd::add_user(&path, USER, &initial, 4).unwrap();
        let rotator = Arc::new(Flaky {
            inner: HtpasswdRotator::new(HtpasswdConfig { bcrypt_cost: 4, ..HtpasswdConfig::new(&path) }, policy),
            failures_left: AtomicU32::new(transient_failures),
            set_calls: AtomicU32::new(0),
        });
        let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
        let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
        let mut tags: BTreeMap<String, String> = [("rotator", PROFILE), ("CredentialId", USER)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tags.extend(extra_tags.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let v1 = store
            .set_secret(
                SECRET,
                NewSecretVersion { value: initial.clone(), tags, content_type: None, expires: None, not_before: None },
            )
            .await
            .unwrap()
            .version;
        let mut targets = Targets::default();
        targets.insert(PROFILE, rotator.clone(), None);
        let settings = EngineConfig { max_attempts, initial_backoff_ms: 10, max_backoff_ms: 50, ..Default::default() };
        let engine = Engine::new(store.clone(), targets, settings);
        World { _dir: dir, vault, store, rotator, engine, initial, v1 }
    }

    fn request(&self, version: Option<&str>) -> RotationRequest {
        RotationRequest {
            vault_name: self.store.vault_name().to_owned(),
            secret_name: SECRET.to_owned(),
            version: version.map(str::to_owned),
            trigger: Trigger::Manual { requested_by: "protocol test".into() },
        }
    }

    fn journal(&self) -> String {
        journal_name(&rotation_id(self.store.vault_name(), SECRET, &self.v1))
    }

    async fn write_journal(&self, password: &SecretString) {
        let tags = BTreeMap::from([("rotation-id".to_owned(), "x".to_owned())]);
        let new =
            NewSecretVersion { value: password.clone(), tags, content_type: None, expires: None, not_before: None };
        self.store.set_secret(&self.journal(), new).await.unwrap();
    }

    async fn logs_in(&self, password: &SecretString) -> bool {
        let req = VerifyRequest { username: USER.into(), password: password.clone() };
        self.rotator.verify(req).await.unwrap() == VerifyResponse::Accepted
    }

    async fn journal_gone(&self) -> bool {
        matches!(self.store.get_latest(&self.journal()).await, Err(StoreError::NotFound { .. }))
    }
}

#[tokio::test]
async fn resumes_with_the_journaled_password_when_a_crash_came_after_create() {
    let w = World::new(0, 1, &[]).await;
    let pending = PasswordPolicy::default().generate();
    w.write_journal(&pending).await;

    let report = w.engine.rotate(w.request(Some(&w.v1))).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let latest = w.store.get_latest(SECRET).await.unwrap();
    assert_eq!(latest.value.expose_secret(), pending.expose_secret(), "the journaled password is the one used");
    assert!(w.logs_in(&pending).await);
    assert!(!w.logs_in(&w.initial).await);
    assert!(w.journal_gone().await);
    w.vault.shutdown().await;
}

#[tokio::test]
async fn finishes_without_changing_the_target_again_when_a_crash_came_after_set() {
    let w = World::new(0, 1, &[]).await;
    let pending = PasswordPolicy::default().generate();
    w.write_journal(&pending).await;
    // The target already took the pending password; Key Vault still has the old one.
    let path = w.rotator.inner.config().path.clone();
    htpasswd::add_user(&path, USER, &pending, 4).unwrap();
    let before = std::fs::read(&path).unwrap();

    let report = w.engine.rotate(w.request(Some(&w.v1))).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "set was idempotent: the target was not rewritten");
    assert_eq!(w.store.get_latest(SECRET).await.unwrap().value.expose_secret(), pending.expose_secret());
    assert!(w.journal_gone().await);
    w.vault.shutdown().await;
}

#[tokio::test]
async fn a_finished_rotation_cleans_a_leftover_journal_and_writes_nothing() {
    let w = World::new(0, 1, &[]).await;
    // The state a crash between finish and the journal's deletion leaves: the target and
    // the latest version have the pending password, and the journal record is still there.
    let pending = PasswordPolicy::default().generate();
    w.write_journal(&pending).await;
    htpasswd::add_user(&w.rotator.inner.config().path, USER, &pending, 4).unwrap();
    let mut tags = w.store.get_latest(SECRET).await.unwrap().properties.tags;
    tags.insert("rotation-id".into(), rotation_id(w.store.vault_name(), SECRET, &w.v1));
    let finished =
        NewSecretVersion { value: pending.clone(), tags, content_type: None, expires: None, not_before: None };
    let v2 = w.store.set_secret(SECRET, finished).await.unwrap().version;

    let again = w.engine.rotate(w.request(Some(&w.v1))).await;
    assert_eq!(again.outcome, Outcome::AlreadyRotated { version: v2 });
    assert!(w.journal_gone().await);
    assert_eq!(w.store.list_versions(SECRET).await.unwrap().len(), 2, "nothing written");
    assert_eq!(w.rotator.set_calls.load(Ordering::SeqCst), 0, "target untouched");
    assert!(w.logs_in(&pending).await);
    w.vault.shutdown().await;
}

#[tokio::test]
async fn transient_target_failures_are_retried_with_the_same_pending_password() {
    let w = World::new(2, 5, &[]).await;
    let report = w.engine.rotate(w.request(None)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    assert_eq!(w.rotator.set_calls.load(Ordering::SeqCst), 3, "two injected failures, then success");
    // One journal record was written and reused: the journal secret has one version.
    let journal_versions = w.store.list_versions(&w.journal()).await.unwrap();
    assert!(journal_versions.len() <= 1, "journal rewritten on retry: {journal_versions:?}");
    assert!(w.logs_in(&w.store.get_latest(SECRET).await.unwrap().value).await);
    w.vault.shutdown().await;
}

#[tokio::test]
async fn failures_past_the_cap_are_reported_and_the_old_password_keeps_working() {
    let w = World::new(10, 3, &[]).await;
    let report = w.engine.rotate(w.request(None)).await;
    match &report.outcome {
        Outcome::Failed { attempts, error } => {
            assert_eq!(*attempts, 3);
            assert!(error.contains("injected"), "{error}");
        }
        other => panic!("expected failure, got {other:?}"),
    }
    let latest = w.store.get_latest(SECRET).await.unwrap();
    assert_eq!(latest.version, w.v1, "no new version");
    assert!(w.logs_in(&w.initial).await, "the old password keeps working");
    // The pending password stays journaled for the next attempt to reuse.
    assert!(!w.journal_gone().await);
    w.vault.shutdown().await;
}

#[tokio::test]
async fn a_secret_with_no_room_for_rotation_tags_fails_before_the_target_is_touched() {
    let extra: Vec<(String, String)> = (0..12).map(|i| (format!("tag{i}"), "x".to_owned())).collect();
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let w = World::new(0, 3, &extra).await;
    let report = w.engine.rotate(w.request(None)).await;
    match &report.outcome {
        Outcome::Failed { attempts, error } => {
            assert_eq!(*attempts, 1, "not retried");
            assert!(error.contains("14 tags") && error.contains("15"), "{error}");
        }
        other => panic!("expected failure, got {other:?}"),
    }
    assert_eq!(w.rotator.set_calls.load(Ordering::SeqCst), 0, "target untouched");
    assert!(w.journal_gone().await, "no journal written");
    assert!(w.logs_in(&w.initial).await);
    w.vault.shutdown().await;
}

#[tokio::test]
async fn bad_validity_and_unknown_profile_are_refused_with_their_names() {
    let w = World::new(0, 3, &[("ValidityPeriodDays", "sixty")]).await;
    let report = w.engine.rotate(w.request(None)).await;
    assert!(
        matches!(&report.outcome, Outcome::Failed { error, attempts: 1 } if error.contains("ValidityPeriodDays") && error.contains("sixty")),
        "{report:?}"
    );
    w.vault.shutdown().await;

    let w = World::new(0, 3, &[("rotator", "no-such-profile")]).await;
    let report = w.engine.rotate(w.request(None)).await;
    assert!(
        matches!(&report.outcome, Outcome::Failed { error, attempts: 1 } if error.contains("no-such-profile")),
        "{report:?}"
    );
    assert_eq!(w.rotator.set_calls.load(Ordering::SeqCst), 0);
    w.vault.shutdown().await;
}

#[tokio::test]
async fn unmanaged_secrets_and_other_vaults_are_left_alone() {
    let w = World::new(0, 1, &[]).await;
    w.store
        .set_secret(
            "plain",
            NewSecretVersion {
                value: SecretString::from("x".to_owned()),
                tags: BTreeMap::new(),
                content_type: None,
                expires: None,
                not_before: None,
            },
        )
        .await
        .unwrap();
    let mut req = w.request(None);
    req.secret_name = "plain".into();
    assert_eq!(w.engine.rotate(req).await.outcome, Outcome::NotManaged);
    let mut req = w.request(None);
    req.vault_name = "someone-elses-vault".into();
    assert_eq!(w.engine.rotate(req).await.outcome, Outcome::OtherVault);
    assert_eq!(w.store.list_versions(SECRET).await.unwrap().len(), 1);
    w.vault.shutdown().await;
}

#[tokio::test]
async fn concurrent_triggers_of_the_same_state_converge_on_one_rotation() {
    let w = World::new(0, 1, &[]).await;
    // Deliveries, sweeps and manual triggers all name the version they saw: v1.
    let requests = (0..8).map(|_| {
        let engine = w.engine.clone();
        let req = w.request(Some(&w.v1));
        tokio::spawn(async move { engine.rotate(req).await })
    });
    let mut rotated = 0;
    for handle in requests {
        match handle.await.unwrap().outcome {
            Outcome::Rotated { .. } => rotated += 1,
            Outcome::AlreadyRotated { .. } | Outcome::Stale { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rotated, 1);
    assert_eq!(w.store.list_versions(SECRET).await.unwrap().len(), 2);
    assert!(w.logs_in(&w.store.get_latest(SECRET).await.unwrap().value).await);
    w.vault.shutdown().await;
}
