//! End to end against the machine's PostgreSQL (127.0.0.1:5432): a role with a known
//! password, its secret in the dev vault with rotation tags, a `SecretNearExpiry`
//! delivery over HTTP — then the latest Key Vault version logs in, the old password is
//! rejected, expiry and tags are right, no journal record is left, and duplicate or
//! stale deliveries rotate nothing.
//!
//! Needs `scripts/setup-postgres.sh` (roles in `kvr_scram` must use SCRAM, not trust;
//! the server must have TLS with its test CA: the rotator runs with `verify-full`).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::pg_superuser;
use kv_rotator::engine::{Outcome, RotationReport};
use kv_rotator_config::{AdminRef, TargetProfile};
use kv_rotator_keyvault::StoreError;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

const PROFILE: &str = "pg-local";

/// Whether `password` logs in as `role` over TCP.
async fn logs_in(role: &str, password: &str) -> bool {
    common::pg_runs(role, &SecretString::from(password.to_owned()), "SELECT 1").await
}

/// A login role in `kvr_scram`, dropped on drop.
struct TestRole {
    name: String,
}

impl TestRole {
    async fn create(prefix: &str, password: &str, extra: &str) -> TestRole {
        let name = format!("{prefix}_{:08x}", rand::random::<u32>());
        let su = pg_superuser().await;
        su.batch_execute(&format!("CREATE ROLE {name} LOGIN {extra} IN ROLE kvr_scram PASSWORD '{password}'"))
            .await
            .expect("create role (run scripts/setup-postgres.sh first: it creates kvr_scram)");
        assert!(
            !logs_in(&name, "certainly-not-the-password").await,
            "a wrong password logs in as {name}: pg_hba.conf still trusts it — run scripts/setup-postgres.sh"
        );
        TestRole { name }
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop on a fresh runtime thread: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { pg_superuser().await.batch_execute(&format!("DROP ROLE IF EXISTS {name}")).await })
        })
        .join();
    }
}

struct Harness(common::Harness);

impl std::ops::Deref for Harness {
    type Target = common::Harness;
    fn deref(&self) -> &common::Harness {
        &self.0
    }
}

impl Harness {
    /// A single-user PostgreSQL profile over verified TLS (the production setting), with
    /// `admin` when given.
    async fn start(admin: Option<AdminRef>) -> Harness {
        let profiles = BTreeMap::from([(
            PROFILE.to_owned(),
            TargetProfile {
                target: common::pg_target(),
                admin,
                password: Default::default(),
                accounts: vec!["kvr_e2e*".to_owned()],
                allow_admin_account: false,
                strategy: Default::default(),
                grace_period_secs: None,
                twin_suffix: None,
                rotation_window: None,
            },
        )]);
        Harness(common::Harness::start(profiles).await)
    }

    async fn seed(&self, name: &str, value: &str, tags: &[(&str, &str)]) -> String {
        self.0.seed(name, &SecretString::from(value.to_owned()), tags).await
    }

    async fn next_report(&mut self) -> RotationReport {
        tokio::time::timeout(Duration::from_secs(60), self.0.reports.recv())
            .await
            .expect("a report within 60 s")
            .expect("engine alive")
    }

    async fn stop(self) {
        self.0.stop().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_expiry_event_rotates_a_postgres_role_end_to_end() {
    let initial = "initial-Pw-4-e2e";
    let role = TestRole::create("kvr_e2e", initial, "").await;
    assert!(logs_in(&role.name, initial).await);
    let mut h = Harness::start(None).await;
    let secret = format!("pg-{}", role.name.replace('_', "-"));
    let v1 = h
        .seed(
            &secret,
            initial,
            &[
                ("rotator", PROFILE),
                ("CredentialId", &role.name),
                ("ValidityPeriodDays", "7"),
                ("owner", "team-payments"),
            ],
        )
        .await;

    assert_eq!(h.deliver(&secret, &v1).await, 200);
    let report = h.next_report().await;
    let Outcome::Rotated { old_version, new_version, .. } = report.outcome.clone() else {
        panic!("not rotated: {report:?}")
    };
    assert_eq!(old_version, v1);

    let latest = h.store.get_latest(&secret).await.unwrap();
    assert_eq!(latest.version, new_version);
    assert!(logs_in(&role.name, latest.value.expose_secret()).await, "the latest Key Vault version must log in");
    assert!(!logs_in(&role.name, initial).await, "the old password must be rejected");
    assert!(latest.value.expose_secret() != initial, "the latest is a new password");

    let expires = latest.properties.expires.expect("exp set");
    let want = OffsetDateTime::now_utc() + time::Duration::days(7);
    assert!((expires - want).abs() < time::Duration::minutes(5), "exp {expires} should be about now + 7 days");
    let tags = &latest.properties.tags;
    for (k, v) in [
        ("rotator", PROFILE),
        ("CredentialId", role.name.as_str()),
        ("ValidityPeriodDays", "7"),
        ("owner", "team-payments"),
    ] {
        assert_eq!(tags.get(k).map(String::as_str), Some(v), "tag {k} carried over");
    }
    assert_eq!(tags.get("rotated-from"), Some(&v1));
    assert_eq!(tags.get("rotation-id"), report.rotation_id.as_ref());
    assert_eq!(latest.properties.content_type.as_deref(), Some("text/plain"));

    let journals: Vec<_> = h
        .store
        .list_secrets()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.name.starts_with("kv-rotator-pending-"))
        .collect();
    assert!(journals.is_empty(), "journal records left: {journals:?}");

    // The same delivery again: acknowledged, and coalesced by the webhook (same secret
    // version within its window), so it reaches no engine and rotates nothing.
    assert_eq!(h.deliver(&secret, &v1).await, 200);
    let again = tokio::time::timeout(Duration::from_secs(2), h.0.reports.recv()).await;
    assert!(again.is_err(), "no second rotation: {again:?}");
    let versions = h.store.list_versions(&secret).await.unwrap();
    assert_eq!(versions.len(), 2, "exactly one new version");
    assert!(logs_in(&role.name, latest.value.expose_secret()).await);

    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_event_for_an_older_version_rotates_nothing() {
    let role = TestRole::create("kvr_e2e", "stale-Pw-1-e2e", "").await;
    let mut h = Harness::start(None).await;
    let secret = format!("pg-{}", role.name.replace('_', "-"));
    let tags = [("rotator", PROFILE), ("CredentialId", role.name.as_str())];
    let v1 = h.seed(&secret, "stale-Pw-1-e2e", &tags).await;
    // Someone wrote a newer version (same password) since the event was sent.
    let v2 = h.seed(&secret, "stale-Pw-1-e2e", &tags).await;

    assert_eq!(h.deliver(&secret, &v1).await, 200);
    let report = h.next_report().await;
    assert_eq!(report.outcome, Outcome::Stale { requested: v1, latest: v2.clone() });
    assert_eq!(h.store.list_versions(&secret).await.unwrap().len(), 2);
    assert_eq!(h.store.get_latest(&secret).await.unwrap().version, v2);
    assert!(logs_in(&role.name, "stale-Pw-1-e2e").await, "password unchanged");

    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_credential_from_key_vault_rotates_when_the_current_password_is_lost() {
    let admin = TestRole::create("kvr_admin", "admin-Pw-9-e2e", "CREATEROLE").await;
    let role = TestRole::create("kvr_e2e", "real-Pw-2-e2e", "").await;
    let mut h = Harness::start(Some(AdminRef { username: admin.name.clone(), secret: "pg-admin".into() })).await;
    h.seed("pg-admin", "admin-Pw-9-e2e", &[]).await;
    let secret = format!("pg-{}", role.name.replace('_', "-"));
    // Key Vault holds a password the role no longer has.
    let v1 = h.seed(&secret, "drifted-Pw-3-e2e", &[("rotator", PROFILE), ("CredentialId", role.name.as_str())]).await;

    assert_eq!(h.deliver(&secret, &v1).await, 200);
    let report = h.next_report().await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let latest = h.store.get_latest(&secret).await.unwrap();
    assert!(logs_in(&role.name, latest.value.expose_secret()).await);
    assert!(!logs_in(&role.name, "real-Pw-2-e2e").await);
    // ValidityPeriodDays absent: the default of 60 days applies.
    let want = OffsetDateTime::now_utc() + time::Duration::days(60);
    assert!((latest.properties.expires.unwrap() - want).abs() < time::Duration::minutes(5));

    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_without_credential_id_fails_before_touching_the_target() {
    let role = TestRole::create("kvr_e2e", "keep-Pw-5-e2e", "").await;
    let mut h = Harness::start(None).await;
    let secret = format!("pg-{}", role.name.replace('_', "-"));
    let v1 = h.seed(&secret, "keep-Pw-5-e2e", &[("rotator", PROFILE)]).await;
    assert_eq!(h.deliver(&secret, &v1).await, 200);
    let report = h.next_report().await;
    match &report.outcome {
        Outcome::Failed { error, attempts, .. } => {
            assert!(error.contains("CredentialId"), "{error}");
            assert_eq!(*attempts, 1, "a configuration error is not retried");
        }
        other => panic!("expected failure, got {other:?}"),
    }
    assert!(logs_in(&role.name, "keep-Pw-5-e2e").await);
    let pending: Vec<_> = h
        .store
        .list_secrets()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.name.starts_with("kv-rotator-pending-"))
        .collect();
    assert!(pending.is_empty());
    assert!(matches!(h.store.get_latest("kv-rotator-pending-x").await, Err(StoreError::NotFound { .. })));

    h.stop().await;
}
