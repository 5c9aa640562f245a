//! End to end against the machine's PostgreSQL (127.0.0.1:5432): a role with a known
//! password, its secret in the dev vault with rotation tags, a `SecretNearExpiry`
//! delivery over HTTP — then the latest Key Vault version logs in, the old password is
//! rejected, expiry and tags are right, no journal record is left, and duplicate or
//! stale deliveries rotate nothing.
//!
//! Needs `scripts/setup-postgres.sh` (roles in `kvr_scram` must use SCRAM, not trust;
//! the server must have TLS with its test CA: the rotator runs with `verify-full`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kv_rotator::engine::{Outcome, RotationReport};
use kv_rotator::service::{self, RunningService};
use kv_rotator::targets::Targets;
use kv_rotator_config::{AdminRef, EngineConfig, TargetKind, TargetProfile, WebhookConfig};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, SecretStore, StoreError};
use kv_rotator_rotators::postgres::PostgresConfig;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

const PROFILE: &str = "pg-local";

/// Superuser connection over TCP (trust for `postgres` on this machine).
async fn superuser() -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432");
    tokio::spawn(conn);
    client
}

/// Whether `password` logs in as `role` over TCP.
async fn logs_in(role: &str, password: &str) -> bool {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1").port(5432).user(role).password(password).dbname("postgres");
    match cfg.connect(tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client.simple_query("SELECT 1").await.is_ok()
        }
        Err(_) => false,
    }
}

/// A login role in `kvr_scram`, dropped on drop.
struct TestRole {
    name: String,
}

impl TestRole {
    async fn create(prefix: &str, password: &str, extra: &str) -> TestRole {
        let name = format!("{prefix}_{:08x}", rand::random::<u32>());
        let su = superuser().await;
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
            rt.block_on(async { superuser().await.batch_execute(&format!("DROP ROLE IF EXISTS {name}")).await })
        })
        .join();
    }
}

struct Harness {
    vault: DevVault,
    store: Arc<dyn SecretStore>,
    service: RunningService,
    reports: broadcast::Receiver<RotationReport>,
}

impl Harness {
    async fn start(admin: Option<AdminRef>) -> Harness {
        let vault = DevVault::start(DevVaultOptions::default()).await.expect("dev vault");
        let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).expect("store"));
        // The production setting: verified TLS (the setup script's test CA) with every
        // login bound to the session.
        let ca = std::env::var("KVR_TEST_PG_CA").unwrap_or_else(|_| "/var/lib/postgresql/kvr-test-tls/ca.pem".into());
        let pg: PostgresConfig = serde_json::from_value(serde_json::json!({
            "host": "127.0.0.1", "port": 5432,
            "sslmode": "verify-full", "sslrootcert": ca, "channel_binding": "require",
        }))
        .unwrap();
        let profiles = BTreeMap::from([(
            PROFILE.to_owned(),
            TargetProfile {
                target: TargetKind::Postgres(pg),
                admin,
                password: Default::default(),
                accounts: vec!["kvr_e2e*".to_owned()],
                allow_admin_account: false,
                strategy: Default::default(),
                grace_period_secs: None,
                twin_suffix: None,
            },
        )]);
        let engine = EngineConfig {
            initial_backoff_ms: 50,
            max_backoff_ms: 200,
            min_rotation_interval_secs: 0,
            ..Default::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let service = service::start(
            store.clone(),
            Targets::from_profiles(&profiles).unwrap(),
            engine,
            &WebhookConfig::default(),
            listener,
        )
        .await
        .expect("service");
        let reports = service.engine.subscribe();
        Harness { vault, store, service, reports }
    }

    async fn seed(&self, name: &str, value: &str, tags: &[(&str, &str)]) -> String {
        let record = self
            .store
            .set_secret(
                name,
                NewSecretVersion {
                    value: SecretString::from(value.to_owned()),
                    tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    content_type: Some("text/plain".into()),
                    expires: Some(OffsetDateTime::now_utc() + time::Duration::days(3)),
                    not_before: None,
                },
            )
            .await
            .expect("seed secret");
        record.version
    }

    /// POSTs a SecretNearExpiry delivery for `secret` at `version`; returns the status.
    async fn deliver(&self, secret: &str, version: &str) -> reqwest::StatusCode {
        let body = kv_rotator::cli::seed::near_expiry_delivery(
            self.store.vault_name(),
            &self.vault.host(),
            secret,
            version,
            OffsetDateTime::now_utc(),
        );
        reqwest::Client::new()
            .post(format!("http://{}/api/eventgrid", self.service.webhook_addr))
            .header("aeg-event-type", "Notification")
            .json(&body)
            .send()
            .await
            .expect("POST to webhook")
            .status()
    }

    async fn stop(self) {
        self.service.shutdown().await.unwrap();
        self.vault.shutdown().await;
    }

    async fn next_report(&mut self) -> RotationReport {
        tokio::time::timeout(Duration::from_secs(60), self.reports.recv())
            .await
            .expect("a report within 60 s")
            .expect("engine alive")
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
    assert_ne!(latest.value.expose_secret(), initial);

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
    let again = tokio::time::timeout(Duration::from_secs(2), h.reports.recv()).await;
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
