//! The fast path of issue #11, against the real PostgreSQL: a fresh rotation does not try
//! the password it just journaled before changing it, and its `test` step is the login
//! that ended `set` — four logins in all, counted by a proxy — while a resumed journal
//! record is still tried first.
//!
//! Needs `scripts/setup-postgres.sh`.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::pg::{logs_in, Proxy, Roles};
use kv_rotator::engine::{Engine, Outcome, RotationReport};
use kv_rotator::targets::Targets;
use kv_rotator_config::EngineConfig;
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, SecretStore};
use kv_rotator_rotators::postgres::{PostgresConfig, PostgresRotator, SslMode};
use kv_rotator_rotators::{
    PasswordPolicy, Rotator, RotatorError, RotatorResult, SetPasswordRequest, SetPasswordResponse, VerifyRequest,
    VerifyResponse,
};

/// The PostgreSQL rotator through the proxy, noting each request's `pending_is_new`; it
/// reports its first change as not yet visible (a lost answer) when told to.
#[derive(Debug)]
struct Noting {
    inner: PostgresRotator,
    seen_new: Mutex<Vec<bool>>,
    hide_first_change: Mutex<bool>,
}

#[async_trait]
impl Rotator for Noting {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn password_policy(&self) -> &PasswordPolicy {
        self.inner.password_policy()
    }

    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        self.seen_new.lock().unwrap().push(req.pending_is_new);
        let set = self.inner.set_password(req).await?;
        if std::mem::take(&mut *self.hide_first_change.lock().unwrap()) {
            return Err(RotatorError::NotYetVisible("the answer to the change was lost".into()));
        }
        Ok(set)
    }

    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        self.inner.verify(req).await
    }
}

struct Site {
    _vault: DevVault,
    store: Arc<dyn SecretStore>,
    proxy: Proxy,
    rotator: Arc<Noting>,
    roles: Roles,
}

impl Site {
    async fn start(hide_first_change: bool) -> Site {
        let roles = Roles::create("kvr_fast", 1).await;
        let proxy = Proxy::start().await;
        let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
        let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
        let (role, password) = &roles.0[0];
        let tags = BTreeMap::from([("rotator".to_owned(), "pg".to_owned()), ("CredentialId".to_owned(), role.clone())]);
        let new =
            NewSecretVersion { value: password.clone(), tags, content_type: None, expires: None, not_before: None };
        store.set_secret("fast-pg", new).await.unwrap();
        let cfg = PostgresConfig { port: proxy.port, sslmode: SslMode::Disable, ..PostgresConfig::new("127.0.0.1") };
        let rotator = Arc::new(Noting {
            inner: PostgresRotator::new(cfg, PasswordPolicy::default()).unwrap(),
            seen_new: Mutex::default(),
            hide_first_change: Mutex::new(hide_first_change),
        });
        Site { _vault: vault, store, proxy, rotator, roles }
    }

    fn engine(&self, max_attempts: u32) -> Engine {
        let mut targets = Targets::default();
        targets.insert("pg", self.rotator.clone(), None);
        let settings = EngineConfig {
            max_attempts,
            initial_backoff_ms: 10,
            max_backoff_ms: 20,
            min_rotation_interval_secs: 0,
            finish_retry_for_secs: 0,
            ..Default::default()
        };
        Engine::new(self.store.clone(), targets, settings)
    }

    /// One manual rotation; its report and the logins (connections) it made.
    async fn rotate(&self, engine: &Engine) -> (RotationReport, usize) {
        let request = RotationRequest {
            vault_name: self.store.vault_name().to_owned(),
            secret_name: "fast-pg".to_owned(),
            version: None,
            trigger: Trigger::Manual { requested_by: "fast path test".into(), force: true },
        };
        let before = self.proxy.connections();
        let report = engine.rotate(request).await;
        (report, self.proxy.connections() - before)
    }

    fn seen_new(&self) -> Vec<bool> {
        self.rotator.seen_new.lock().unwrap().clone()
    }

    async fn latest_logs_in(&self) -> bool {
        let latest = self.store.get_latest("fast-pg").await.unwrap();
        logs_in(&self.roles.0[0].0, &latest.value).await
    }
}

/// The `test` steps of a report, each with what proved it.
fn test_steps(report: &RotationReport) -> Vec<(u32, Option<&'static str>)> {
    report.steps.iter().filter(|s| s.step == "test").map(|s| (s.attempt, s.proven_by)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_rotation_logs_in_four_times_and_its_test_is_proven_by_set() {
    let site = Site::start(false).await;
    let (report, logins) = site.rotate(&site.engine(3)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{}", report.outcome);
    // Canary, current password + ALTER ROLE, the new password after the change, and the
    // final check at finish. Before issue #11: six (the pending password first, and test).
    assert_eq!(logins, 4, "{:?}", report.steps);
    assert_eq!(site.seen_new(), [true]);
    assert_eq!(test_steps(&report), [(1, Some("set"))]);
    let audit = report.audit_json();
    let test = audit["steps"].as_array().unwrap().iter().find(|s| s["step"] == "test").unwrap();
    assert_eq!(test["provenBy"], "set", "{audit}");
    assert!(site.latest_logs_in().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_journal_is_tried_first_within_a_request_and_across_requests() {
    // Within a request: the first change's answer is lost (NotYetVisible), so the second
    // attempt resumes the record its first attempt wrote — and must try it first.
    let site = Site::start(true).await;
    let (report, logins) = site.rotate(&site.engine(3)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{}", report.outcome);
    assert_eq!(site.seen_new(), [true, false], "the resumed attempt's password is not new");
    // Canary; current + proof (hidden); the pending password, which works: AlreadySet and
    // proven; the final check.
    assert_eq!(logins, 5, "{:?}", report.steps);
    assert_eq!(test_steps(&report), [(2, Some("set"))]);
    assert!(site.latest_logs_in().await);

    // Across requests: one attempt only, so the request ends with the target changed and
    // the password only in the journal record; the next request resumes that record.
    let site = Site::start(true).await;
    let (report, _) = site.rotate(&site.engine(1)).await;
    assert!(matches!(report.outcome, Outcome::Failed { unfinished_journal: Some(_), .. }), "{}", report.outcome);
    let (report, logins) = site.rotate(&site.engine(1)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{}", report.outcome);
    assert_eq!(site.seen_new(), [true, false]);
    // Canary; the journal's password probed; tried first by set (AlreadySet); final check.
    assert_eq!(logins, 4, "{:?}", report.steps);
    assert!(site.latest_logs_in().await);
}
