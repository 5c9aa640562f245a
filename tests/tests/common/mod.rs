//! The service as the end-to-end suites run it: the dev vault, `service::start_with`
//! with the suite's target profiles, and an HTTP client for the webhook; the targets'
//! servers as a consumer and an administrator reach them (PostgreSQL and MariaDB here,
//! [`ldap`], [`rabbitmq`], [`redis`]).
//!
//! The worker's emergency suite (`worker/tests/emergency.rs`) includes this module too.

#![allow(dead_code)] // not every suite uses every helper

pub mod ldap;
pub mod rabbitmq;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_rotator::engine::RotationReport;
use kv_rotator::service::{self, Background, RunningService};
use kv_rotator::targets::Targets;
use kv_rotator_config::{EngineConfig, SweeperConfig, TargetProfile, WebhookConfig};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, SecretStore};
use secrecy::SecretString;
use time::OffsetDateTime;
use tokio::sync::broadcast;

/// A test CA that a setup script made (`var`, or its default path).
pub fn test_ca(var: &str, default: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    assert!(std::path::Path::new(&path).is_file(), "no test CA at {path}: run the setup scripts (scripts/test.sh)");
    path
}

/// A random suffix for names of accounts and secrets.
pub fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

pub struct Harness {
    pub vault: DevVault,
    pub store: Arc<dyn SecretStore>,
    pub service: RunningService,
    pub reports: broadcast::Receiver<RotationReport>,
}

impl Harness {
    /// The service over a fresh dev vault with `profiles`. Its sweeper runs every second
    /// with the due scan off: it only resumes journals and asks for retirements, so every
    /// rotation is the test's.
    pub async fn start(profiles: BTreeMap<String, TargetProfile>) -> Harness {
        let vault = DevVault::start(DevVaultOptions::default()).await.expect("dev vault");
        let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).expect("store"));
        let engine = EngineConfig {
            initial_backoff_ms: 50,
            max_backoff_ms: 200,
            min_rotation_interval_secs: 0,
            ..Default::default()
        };
        let background = Background {
            sweeper: Some(SweeperConfig { enabled: false, interval_secs: 1, ..Default::default() }),
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let service = service::start_with(
            store.clone(),
            Targets::from_profiles(&profiles).unwrap(),
            engine,
            &WebhookConfig::default(),
            background,
            listener,
        )
        .await
        .expect("service");
        let reports = service.engine.subscribe();
        Harness { vault, store, service, reports }
    }

    /// Writes a version of `name` (content type `text/plain`), expiring in three days.
    pub async fn seed(&self, name: &str, value: &SecretString, tags: &[(&str, &str)]) -> String {
        let new = NewSecretVersion {
            value: value.clone(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            content_type: Some("text/plain".into()),
            expires: Some(OffsetDateTime::now_utc() + time::Duration::days(3)),
            not_before: None,
        };
        self.store.set_secret(name, new).await.expect("seed secret").version
    }

    /// POSTs a `SecretNearExpiry` delivery for `secret` at `version`; the status.
    pub async fn deliver(&self, secret: &str, version: &str) -> reqwest::StatusCode {
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

    /// The next report for `secret`, within `within`.
    pub async fn report_for(&mut self, secret: &str, within: Duration) -> RotationReport {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let report = tokio::time::timeout(left, self.reports.recv())
                .await
                .unwrap_or_else(|_| panic!("no report for {secret} within {within:?}"))
                .expect("engine alive");
            if report.request.secret_name == secret {
                return report;
            }
        }
    }

    /// A forced manual rotation of `secret`, run to its end.
    pub async fn rotate_now(&self, secret: &str) -> RotationReport {
        let request = kv_rotator_core::RotationRequest {
            vault_name: self.store.vault_name().to_owned(),
            secret_name: secret.to_owned(),
            version: None,
            trigger: kv_rotator_core::Trigger::Manual { requested_by: "test".into(), force: true },
        };
        self.service.engine.rotate(request).await
    }

    pub async fn stop(self) {
        self.service.shutdown().await.unwrap();
        self.vault.shutdown().await;
    }
}

/// The machine's PostgreSQL as its superuser (trust for `postgres` over TCP here).
pub async fn pg_superuser() -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432");
    tokio::spawn(conn);
    client
}

/// Whether `password` logs in as `role` and runs `query`.
pub async fn pg_runs(role: &str, password: &SecretString, query: &str) -> bool {
    use secrecy::ExposeSecret;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1").port(5432).user(role).password(password.expose_secret()).dbname("postgres");
    match cfg.connect(tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client.simple_query(query).await.is_ok()
        }
        Err(_) => false,
    }
}

/// A PostgreSQL profile over verified TLS with channel binding, the setup script's CA.
pub fn pg_target() -> kv_rotator_config::TargetKind {
    let settings = serde_json::json!({
        "host": "127.0.0.1", "sslmode": "verify-full", "channel_binding": "require",
        "sslrootcert": test_ca("KVR_TEST_PG_CA", "/var/lib/postgresql/kvr-test-tls/ca.pem"),
    });
    kv_rotator_config::TargetKind::parse("postgres", settings).unwrap()
}

/// A MariaDB profile over verified TLS, the setup script's CA.
pub fn mariadb_target() -> kv_rotator_config::TargetKind {
    let settings = serde_json::json!({
        "host": "127.0.0.1", "tls": "verify-full",
        "tls_ca_file": test_ca("KVR_TEST_MARIADB_CA", "/var/lib/mysql-kvr-test-tls/ca.pem"),
    });
    kv_rotator_config::TargetKind::parse("mariadb", settings).unwrap()
}

/// The machine's MariaDB as root (no password here).
pub async fn mariadb_root() -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default().ip_or_hostname("127.0.0.1").tcp_port(3306).user(Some("root"));
    mysql_async::Conn::new(opts.prefer_socket(false)).await.expect("MariaDB must run on 127.0.0.1:3306")
}

/// Whether a client with `password` connects as `user` over TCP (as `user@'%'` or
/// `user@'localhost'`, whichever the server matches) and runs `query`.
pub async fn mariadb_runs(user: &str, password: &SecretString, query: &str) -> bool {
    use mysql_async::prelude::Queryable;
    use secrecy::ExposeSecret;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(3306)
        .user(Some(user))
        .pass(Some(password.expose_secret()))
        .prefer_socket(false);
    match mysql_async::Conn::new(opts).await {
        Ok(mut conn) => conn.query_drop(query).await.is_ok(),
        Err(_) => false,
    }
}
