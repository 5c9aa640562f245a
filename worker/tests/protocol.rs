//! The engine's protocol against the dev vault (through the SDK) and a real htpasswd
//! target, starting from the states a crash or a failure leaves behind: a journal record
//! written but the target untouched, the target changed but the secret not finished,
//! the secret finished but the journal not deleted — and from inputs that must be
//! refused before the target is touched.
//!
//! Size: ~620 lines, all tests: 17 of the protocol from the states a crash or failure
//! leaves, all on the `World` above them and two target doubles (`Flaky`, `Slow`); each
//! file under tests/ is one more binary linking the whole worker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use kv_rotator::engine::journal::{journal_name, rotation_id};
use kv_rotator::engine::{Engine, Outcome};
use kv_rotator::targets::Targets;
use kv_rotator_config::EngineConfig;
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, SecretStore, StoreError};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::{
    PasswordPolicy, Rotator, RotatorError, RotatorResult, SetPasswordRequest, SetPasswordResponse, VerifyRequest,
    VerifyResponse,
};
use secrecy::{ExposeSecret, SecretString};

const SECRET: &str = "app-password";
const USER: &str = "app";
const PROFILE: &str = "site";

/// A rotator that fails `set_password` transiently a given number of times first.
#[derive(Debug)]
struct Flaky {
    inner: HtpasswdRotator,
    failures_left: AtomicU32,
    /// `set_password` calls still to refuse as the target's own password rules would.
    refusals_left: AtomicU32,
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
        if self.refusals_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(RotatorError::Refused("password does not meet the target's rules (injected)".into()));
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
            refusals_left: AtomicU32::new(0),
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
        let settings = EngineConfig {
            max_attempts,
            initial_backoff_ms: 10,
            max_backoff_ms: 50,
            min_rotation_interval_secs: 0,
            finish_retry_for_secs: 0,
            ..Default::default()
        };
        let engine = Engine::new(store.clone(), targets, settings);
        World { _dir: dir, vault, store, rotator, engine, initial, v1 }
    }

    fn request(&self, version: Option<&str>) -> RotationRequest {
        RotationRequest {
            vault_name: self.store.vault_name().to_owned(),
            secret_name: SECRET.to_owned(),
            version: version.map(str::to_owned),
            trigger: Trigger::Manual { requested_by: "protocol test".into(), force: false },
        }
    }

    fn journal(&self) -> String {
        journal_name(&rotation_id(self.store.vault_name(), SECRET, &self.v1))
    }

    /// A journal record as a dead process leaves it after `create`.
    async fn write_journal(&self, password: &SecretString) {
        write_tagged_journal(self, password, "pending").await;
    }

    async fn logs_in(&self, password: &SecretString) -> bool {
        let req = VerifyRequest::new(USER, password.clone());
        self.rotator.verify(req).await.unwrap() == VerifyResponse::Accepted
    }

    async fn journal_gone(&self) -> bool {
        matches!(self.store.get_latest(&self.journal()).await, Err(StoreError::NotFound { .. }))
    }
}

#[tokio::test]
async fn finishes_with_a_fresh_password_when_a_crash_came_after_create() {
    let w = World::new(0, 1, &[]).await;
    let pending = PasswordPolicy::default().generate();
    w.write_journal(&pending).await;

    // The target never saw the journaled password, and a record in that state cannot be
    // told from a planted one: a fresh password is journaled over it and set.
    let report = w.engine.rotate(w.request(Some(&w.v1))).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let latest = w.store.get_latest(SECRET).await.unwrap();
    assert!(latest.value.expose_secret() != pending.expose_secret(), "an unused record's password is not trusted");
    assert!(w.logs_in(&latest.value).await);
    assert!(!w.logs_in(&pending).await);
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
    let latest = w.store.get_latest(SECRET).await.unwrap();
    assert!(latest.value.expose_secret() == pending.expose_secret(), "the latest holds the pending password");
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
        Outcome::Failed { attempts, error, .. } => {
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
        Outcome::Failed { attempts, error, .. } => {
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
        matches!(&report.outcome, Outcome::Failed { error, attempts: 1, .. } if error.contains("ValidityPeriodDays") && error.contains("sixty")),
        "{report:?}"
    );
    w.vault.shutdown().await;

    let w = World::new(0, 3, &[("rotator", "no-such-profile")]).await;
    let report = w.engine.rotate(w.request(None)).await;
    assert!(
        matches!(&report.outcome, Outcome::Failed { error, attempts: 1, .. } if error.contains("no-such-profile")),
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

/// A journal record as a dead process leaves it: named, tagged and typed as the engine writes it.
async fn write_tagged_journal(w: &World, password: &SecretString, step: &str) {
    let id = rotation_id(w.store.vault_name(), SECRET, &w.v1);
    let tags = BTreeMap::from([
        ("kv-rotator-journal-for".to_owned(), SECRET.to_owned()),
        ("rotation-id".to_owned(), id),
        ("kv-rotator-step".to_owned(), step.to_owned()),
        ("rotated-from".to_owned(), w.v1.clone()),
    ]);
    let new = NewSecretVersion {
        value: password.clone(),
        tags,
        content_type: Some("application/vnd.kv-rotator.pending-password".into()),
        expires: None,
        not_before: None,
    };
    w.store.set_secret(&w.journal(), new).await.unwrap();
}

#[tokio::test]
async fn resume_finds_a_dead_process_journal_and_finishes_it() {
    let w = World::new(0, 1, &[]).await;
    let pending = PasswordPolicy::default().generate();
    write_tagged_journal(&w, &pending, "target-set").await;
    htpasswd::add_user(&w.rotator.inner.config().path, USER, &pending, 4).unwrap();
    // The target now only accepts the journaled password: Key Vault's latest is stale.
    assert!(!w.logs_in(&w.initial).await);

    let scan = kv_rotator::sweeper::scan(w.store.as_ref(), None).await.unwrap();
    assert_eq!(scan.requests.len(), 1, "{scan:?}");
    let (request, reason) = scan.requests.into_iter().next().unwrap();
    assert_eq!(reason, kv_rotator::sweeper::Reason::Journal);
    assert_eq!((request.secret_name.as_str(), request.version.as_deref()), (SECRET, Some(w.v1.as_str())));

    let report = w.engine.rotate(request).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    assert_eq!(report.audit_json()["triggerKind"], "resume");
    let latest = w.store.get_latest(SECRET).await.unwrap();
    assert!(latest.value.expose_secret() == pending.expose_secret(), "the latest holds the pending password");
    assert!(w.logs_in(&latest.value).await);
    assert!(w.journal_gone().await);
    assert!(kv_rotator::sweeper::scan(w.store.as_ref(), None).await.unwrap().requests.is_empty());
    w.vault.shutdown().await;
}

#[tokio::test]
async fn a_journal_outliving_its_finished_rotation_is_deleted_even_after_newer_rotations() {
    let w = World::new(0, 1, &[]).await;
    let pending = PasswordPolicy::default().generate();
    write_tagged_journal(&w, &pending, "target-set").await;
    // Rotation of v1 finished (v2 carries its id) but its journal survived a crash; then
    // v2 itself was rotated to v3. The journal's source is now two versions back.
    let first = w.engine.rotate(w.request(Some(&w.v1))).await;
    let Outcome::Rotated { new_version: v2, .. } = first.outcome else { panic!("{first:?}") };
    // Recreate the record as the crash would have left it (its name is soft-deleted now).
    w.store.purge_deleted_secret(&w.journal()).await.unwrap();
    write_tagged_journal(&w, &pending, "target-set").await;
    let second = w.engine.rotate(w.request(Some(&v2))).await;
    assert!(matches!(second.outcome, Outcome::Rotated { .. }), "{second:?}");
    assert!(!w.journal_gone().await, "precondition: the leftover journal exists");

    // The record's password is in no version and the latest logs in: obsolete, once the
    // record is older than the target's lag (a replica may not show its password yet).
    let resumed = w.engine.rotate(w.request(Some(&w.v1))).await;
    assert!(matches!(resumed.outcome, Outcome::Stale { .. }), "{resumed:?}");
    assert!(!w.journal_gone().await, "younger than engine.target_lag_secs: kept");
    let mut targets = Targets::default();
    targets.insert(PROFILE, w.rotator.clone(), None);
    let settled = EngineConfig { target_lag_secs: 0, ..EngineConfig::default() };
    let resumed = Engine::new(w.store.clone(), targets, settled).rotate(w.request(Some(&w.v1))).await;
    assert!(matches!(resumed.outcome, Outcome::Stale { .. }), "{resumed:?}");
    assert!(w.journal_gone().await, "obsolete journal deleted");
    assert!(w.logs_in(&w.store.get_latest(SECRET).await.unwrap().value).await);
    w.vault.shutdown().await;
}

#[tokio::test]
async fn a_journal_whose_password_is_the_only_working_one_is_kept_and_reported() {
    let w = World::new(0, 1, &[]).await;
    let pending = PasswordPolicy::default().generate();
    write_tagged_journal(&w, &pending, "target-set").await;
    htpasswd::add_user(&w.rotator.inner.config().path, USER, &pending, 4).unwrap();
    // Someone wrote a new version (with a password the target does not know) meanwhile.
    let mut tags = w.store.get_latest(SECRET).await.unwrap().properties.tags;
    tags.insert("note".into(), "hand-written".into());
    let wrong = PasswordPolicy::default().generate();
    let new = NewSecretVersion { value: wrong, tags, content_type: None, expires: None, not_before: None };
    w.store.set_secret(SECRET, new).await.unwrap();

    let report = w.engine.rotate(w.request(Some(&w.v1))).await;
    match &report.outcome {
        Outcome::Failed { error, .. } => assert!(error.contains("operator"), "{error}"),
        other => panic!("expected a failure for an operator, got {other:?}"),
    }
    assert!(!w.journal_gone().await, "the only copy of the working password is kept");
    assert!(w.logs_in(&pending).await);
    w.vault.shutdown().await;
}

#[tokio::test]
async fn failure_past_the_cap_tags_the_secret_keeping_its_tags_and_success_clears_it() {
    let w = World::new(2, 2, &[("owner", "team-a")]).await;
    let failed = w.engine.rotate(w.request(None)).await;
    assert!(matches!(failed.outcome, Outcome::Failed { attempts: 2, .. }), "{failed:?}");
    let tags = w.store.get_latest(SECRET).await.unwrap().properties.tags;
    let mark = tags.get("kv-rotator-failed").expect("failure tag written");
    assert!(mark.contains("attempts=2"), "{mark}");
    for (k, v) in [("owner", "team-a"), ("rotator", PROFILE), ("CredentialId", USER)] {
        assert_eq!(tags.get(k).map(String::as_str), Some(v), "tag {k} kept");
    }
    let metrics = w.engine.metrics();
    assert_eq!(metrics.counter("kv_rotator_rotations_total", &[("outcome", "failed"), ("trigger", "manual")]), 1);
    assert_eq!(metrics.counter("kv_rotator_failure_tags_total", &[("result", "written")]), 1);
    assert_eq!(metrics.counter("kv_rotator_rotation_attempts_total", &[]), 2);

    // The injected failures are used up: the next request succeeds, the mark is gone.
    let ok = w.engine.rotate(w.request(None)).await;
    assert!(matches!(ok.outcome, Outcome::Rotated { .. }), "{ok:?}");
    let latest = w.store.get_latest(SECRET).await.unwrap();
    assert!(!latest.properties.tags.contains_key("kv-rotator-failed"), "{:?}", latest.properties.tags);
    assert_eq!(latest.properties.tags.get("owner").map(String::as_str), Some("team-a"));
    let audit = ok.audit_json();
    assert_eq!(audit["outcome"], "rotated");
    let steps: Vec<&str> = audit["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    // The failed request left a journal record the target does not use: this one reads
    // it, does not trust it (another request wrote it), and journals a fresh password.
    assert_eq!(steps, ["fence", "journal-read", "canary", "create", "set", "test", "finish"], "{audit}");
    assert!(!audit.to_string().contains(latest.value.expose_secret()), "no password in the audit record");
    w.vault.shutdown().await;
}

/// A target that takes a while to change a password and records how many changes
/// overlapped.
#[derive(Debug, Default)]
struct Slow {
    running: AtomicU32,
    peak: AtomicU32,
    policy: PasswordPolicy,
    set: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl Rotator for Slow {
    fn kind(&self) -> &'static str {
        "slow"
    }
    fn password_policy(&self) -> &PasswordPolicy {
        &self.policy
    }
    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        self.set.lock().unwrap().push(req.pending.expose_secret().to_owned());
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(SetPasswordResponse::new(kv_rotator_rotators::SetPasswordOutcome::ChangedWithCurrent))
    }
    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        let known = self.set.lock().unwrap().iter().any(|p| p == req.password.expose_secret());
        Ok(if known { VerifyResponse::Accepted } else { VerifyResponse::Rejected })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_concurrency_bounds_one_profile_and_not_the_others() {
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let (limited, free) = (Arc::new(Slow::default()), Arc::new(Slow::default()));
    let mut targets = Targets::default();
    targets.insert("limited", limited.clone(), None);
    targets.insert("free", free.clone(), None);
    let mut names = Vec::new();
    for profile in ["limited", "free"] {
        for i in 0..4 {
            let name = format!("{profile}-{i}");
            let tags =
                BTreeMap::from([("rotator".to_owned(), profile.to_owned()), ("CredentialId".to_owned(), name.clone())]);
            let value = PasswordPolicy::default().generate();
            let new = NewSecretVersion { value, tags, content_type: None, expires: None, not_before: None };
            store.set_secret(&name, new).await.unwrap();
            names.push(name);
        }
    }
    let settings = EngineConfig {
        concurrency: 8,
        target_concurrency: BTreeMap::from([("limited".to_owned(), 1)]),
        min_rotation_interval_secs: 0,
        ..Default::default()
    };
    let engine = Engine::new(store.clone(), targets, settings);
    let (queue, rx) = tokio::sync::mpsc::channel(16);
    let mut reports = engine.subscribe();
    let running = tokio::spawn(engine.clone().run(rx));
    for name in &names {
        let request = RotationRequest {
            vault_name: store.vault_name().to_owned(),
            secret_name: name.clone(),
            version: None,
            trigger: Trigger::Manual { requested_by: "limits test".into(), force: false },
        };
        queue.send(request).await.unwrap();
    }
    drop(queue);
    running.await.unwrap();
    for _ in &names {
        assert!(matches!(reports.recv().await.unwrap().outcome, Outcome::Rotated { .. }));
    }
    assert_eq!(limited.peak.load(Ordering::SeqCst), 1, "engine.target_concurrency.limited = 1");
    assert!(free.peak.load(Ordering::SeqCst) > 1, "an unlimited profile runs rotations side by side");
    vault.shutdown().await;
}

#[tokio::test]
async fn a_pending_password_the_target_refuses_is_replaced_once_proven_unused() {
    let w = World::new(0, 1, &[]).await;
    let refused = PasswordPolicy::default().generate();
    w.write_journal(&refused).await;
    w.rotator.refusals_left.store(1, Ordering::SeqCst);

    let first = w.engine.rotate(w.request(Some(&w.v1))).await;
    assert!(matches!(&first.outcome, Outcome::Failed { error, .. } if error.contains("target's rules")), "{first:?}");
    assert!(w.logs_in(&w.initial).await, "the old password keeps working");
    let journal = w.store.get_latest(&w.journal()).await.expect("journal kept");
    assert_ne!(
        journal.value.expose_secret(),
        refused.expose_secret(),
        "a fresh pending password replaced the refused one"
    );
    assert_eq!(journal.properties.tags.get("kv-rotator-step").map(String::as_str), Some("pending"));

    // The next trigger of the same state rotates (with a password of its own: the target
    // uses none of the record's).
    let second = w.engine.rotate(w.request(Some(&w.v1))).await;
    assert!(matches!(second.outcome, Outcome::Rotated { .. }), "{second:?}");
    let latest = w.store.get_latest(SECRET).await.unwrap();
    assert!(latest.value.expose_secret() != refused.expose_secret(), "the refused password is not the latest");
    assert!(w.logs_in(&latest.value).await);
    assert!(w.journal_gone().await);
    w.vault.shutdown().await;
}

#[tokio::test]
async fn a_refused_pending_password_is_kept_when_the_current_one_no_longer_logs_in() {
    let w = World::new(0, 1, &[]).await;
    let refused = PasswordPolicy::default().generate();
    w.write_journal(&refused).await;
    w.rotator.refusals_left.store(1, Ordering::SeqCst);
    // Someone changed the password on the target behind Key Vault's back: nothing proves
    // which password the target uses, so the journal is left as it is.
    let elsewhere = PasswordPolicy::default().generate();
    htpasswd::add_user(&w.rotator.inner.config().path, USER, &elsewhere, 4).unwrap();

    let report = w.engine.rotate(w.request(Some(&w.v1))).await;
    assert!(matches!(report.outcome, Outcome::Failed { .. }), "{report:?}");
    // The record keeps every password it held: the planted-looking one it was given and
    // the one this request journaled and the target refused — none replaced or deleted.
    let versions = w.store.list_versions(&w.journal()).await.expect("journal kept");
    assert_eq!(versions.len(), 2, "no fresh password journaled without proof: {versions:?}");
    let mut kept = false;
    for v in &versions {
        let record = w.store.get_version(&w.journal(), v.version.as_deref().unwrap()).await.unwrap();
        kept |= record.value.expose_secret() == refused.expose_secret();
    }
    assert!(kept, "the first password is still in the record");
    w.vault.shutdown().await;
}

/// A journal record written for another account — the secret's `CredentialId` tag was
/// changed while a rotation was pending, after its `set` — holds the password that
/// account now uses: it is kept for an operator, never journaled over, and nothing
/// changes on the target.
#[tokio::test]
async fn a_journal_written_for_another_account_is_kept_and_nothing_is_journaled_over_it() {
    let w = World::new(0, 1, &[]).await;
    let pending = PasswordPolicy::default().generate();
    let id = rotation_id(w.store.vault_name(), SECRET, &w.v1);
    let tags = BTreeMap::from([
        ("kv-rotator-journal-for".to_owned(), SECRET.to_owned()),
        ("rotation-id".to_owned(), id),
        ("kv-rotator-step".to_owned(), "target-set".to_owned()),
        ("rotated-from".to_owned(), w.v1.clone()),
        ("kv-rotator-account".to_owned(), "earlier-account".to_owned()),
        ("kv-rotator-profile".to_owned(), PROFILE.to_owned()),
    ]);
    let new = NewSecretVersion {
        value: pending.clone(),
        tags,
        content_type: Some("application/vnd.kv-rotator.pending-password".into()),
        expires: None,
        not_before: None,
    };
    w.store.set_secret(&w.journal(), new).await.unwrap();
    let before = w.store.list_versions(&w.journal()).await.unwrap().len();
    let path = w.rotator.inner.config().path.clone();
    let target_before = std::fs::read(&path).unwrap();

    let report = w.engine.rotate(w.request(Some(&w.v1))).await;
    match &report.outcome {
        Outcome::Failed { error, .. } => {
            assert!(error.contains("was written for account \"earlier-account\""), "{error}")
        }
        other => panic!("expected the record to be kept for an operator, got {other:?}"),
    }
    assert_eq!(w.store.list_versions(&w.journal()).await.unwrap().len(), before, "nothing journaled over it");
    let record = w.store.get_latest(&w.journal()).await.unwrap();
    assert!(record.value.expose_secret() == pending.expose_secret(), "the record holds the pending password");
    assert_eq!(std::fs::read(&path).unwrap(), target_before, "the target was not touched");
    assert_eq!(w.store.list_versions(SECRET).await.unwrap().len(), 1, "no version written");
    w.vault.shutdown().await;
}
