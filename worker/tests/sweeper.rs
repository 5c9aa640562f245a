//! The sweeper against the dev vault: one scan finds exactly the managed secrets whose
//! latest version expires within the window, has expired or has no `exp` — naming the
//! version it saw — plus every unfinished journal; and the service's periodic sweeper
//! feeds them to the engine, counted in its metrics.

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::put_secret as put;
use kv_rotator::service::{self, Background};
use kv_rotator::sweeper::{self, Reason};
use kv_rotator::targets::Targets;
use kv_rotator_config::{EngineConfig, SweeperConfig, WebhookConfig};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, PropertiesUpdate, SecretStore};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::PasswordPolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_finds_due_secrets_and_journals_and_nothing_else() {
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let managed = [("rotator", "site"), ("CredentialId", "u")];
    let near = put(store.as_ref(), "near", &managed, Some(10)).await;
    let expired = put(store.as_ref(), "expired", &managed, Some(-1)).await;
    let no_exp = put(store.as_ref(), "no-exp", &managed, None).await;
    put(store.as_ref(), "far", &managed, Some(45)).await;
    put(store.as_ref(), "unmanaged", &[], None).await;
    put(store.as_ref(), "disabled", &managed, None).await;
    let update = PropertiesUpdate { enabled: Some(false), ..Default::default() };
    store.update_properties("disabled", None, update).await.unwrap();
    // An older version near expiry does not count: the latest is far from it.
    put(store.as_ref(), "renewed", &managed, Some(5)).await;
    put(store.as_ref(), "renewed", &managed, Some(300)).await;
    put(
        store.as_ref(),
        "kv-rotator-pending-abc",
        &[("kv-rotator-journal-for", "far"), ("rotated-from", "v0"), ("rotation-id", "abc")],
        None,
    )
    .await;

    let scan = sweeper::scan(store.as_ref(), Some(&kv_rotator::engine::due::DueRule::default())).await.unwrap();
    let mut found: Vec<(String, Option<String>, Reason)> =
        scan.requests.iter().map(|(r, why)| (r.secret_name.clone(), r.version.clone(), *why)).collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        found,
        vec![
            ("expired".to_owned(), Some(expired), Reason::Expired),
            ("far".to_owned(), Some("v0".to_owned()), Reason::Journal),
            ("near".to_owned(), Some(near), Reason::NearExpiry),
            ("no-exp".to_owned(), Some(no_exp), Reason::NoExpiry),
        ]
    );
    assert_eq!(scan.managed, 6, "near, expired, no-exp, far, disabled, renewed");
    // Journals only, for `rotate --resume` and a disabled sweeper.
    let journals = sweeper::scan(store.as_ref(), None).await.unwrap();
    assert_eq!(journals.requests.len(), 1);
    assert_eq!(journals.requests[0].1, Reason::Journal);
    vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_sweeper_rotates_a_secret_no_event_announced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let v1 = put(store.as_ref(), "quiet", &[("rotator", "site"), ("CredentialId", "quiet")], Some(2)).await;
    let initial = store.get_latest("quiet").await.unwrap().value;
    htpasswd::add_user(&path, "quiet", &initial, 4).unwrap();
    let mut targets = Targets::default();
    let rotator = HtpasswdRotator::new(
        HtpasswdConfig { bcrypt_cost: 4, ..HtpasswdConfig::new(&path) },
        PasswordPolicy::default(),
    );
    targets.insert("site", Arc::new(rotator), None);
    let background = Background {
        sweeper: Some(SweeperConfig { interval_secs: 1, ..Default::default() }),
        alerts: Default::default(),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = service::start_with(
        store.clone(),
        targets,
        EngineConfig { min_rotation_interval_secs: 0, ..Default::default() },
        &WebhookConfig::default(),
        background,
        listener,
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let latest = loop {
        let latest = store.get_latest("quiet").await.unwrap();
        if latest.version != v1 {
            break latest;
        }
        assert!(Instant::now() < deadline, "the sweeper did not rotate the secret within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(latest.properties.tags.get("rotated-from"), Some(&v1));
    // Two more sweeps: the new version is 60 days from expiry, so nothing more happens.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(store.list_versions("quiet").await.unwrap().len(), 2);
    let metrics = running.engine.metrics();
    assert!(metrics.counter("kv_rotator_sweeps_total", &[("result", "ok")]) >= 3);
    assert_eq!(metrics.counter("kv_rotator_sweep_enqueued_total", &[("reason", "near_expiry")]), 1);
    assert_eq!(metrics.counter("kv_rotator_rotations_total", &[("outcome", "rotated"), ("trigger", "sweeper")]), 1);
    running.shutdown().await.unwrap();
    vault.shutdown().await;
}

/// A store whose listing is a snapshot taken earlier: what a scan sees when a rotation
/// writes a new version between the listing and the read of the latest version.
#[derive(Debug)]
struct StaleListing {
    inner: Arc<dyn SecretStore>,
    listing: Vec<kv_rotator_keyvault::SecretProperties>,
}

#[async_trait::async_trait]
impl SecretStore for StaleListing {
    fn vault_url(&self) -> &url::Url {
        self.inner.vault_url()
    }
    fn vault_name(&self) -> &str {
        self.inner.vault_name()
    }
    async fn get_latest(&self, name: &str) -> kv_rotator_keyvault::StoreResult<kv_rotator_keyvault::SecretRecord> {
        self.inner.get_latest(name).await
    }
    async fn get_version(
        &self,
        name: &str,
        version: &str,
    ) -> kv_rotator_keyvault::StoreResult<kv_rotator_keyvault::SecretRecord> {
        self.inner.get_version(name, version).await
    }
    async fn set_secret(
        &self,
        name: &str,
        new: NewSecretVersion,
    ) -> kv_rotator_keyvault::StoreResult<kv_rotator_keyvault::SecretRecord> {
        self.inner.set_secret(name, new).await
    }
    async fn update_properties(
        &self,
        name: &str,
        version: Option<&str>,
        update: PropertiesUpdate,
    ) -> kv_rotator_keyvault::StoreResult<kv_rotator_keyvault::SecretProperties> {
        self.inner.update_properties(name, version, update).await
    }
    async fn delete_secret(&self, name: &str) -> kv_rotator_keyvault::StoreResult<()> {
        self.inner.delete_secret(name).await
    }
    async fn purge_deleted_secret(&self, name: &str) -> kv_rotator_keyvault::StoreResult<()> {
        self.inner.purge_deleted_secret(name).await
    }
    async fn list_versions(
        &self,
        name: &str,
    ) -> kv_rotator_keyvault::StoreResult<Vec<kv_rotator_keyvault::SecretProperties>> {
        self.inner.list_versions(name).await
    }
    async fn list_secrets(&self) -> kv_rotator_keyvault::StoreResult<Vec<kv_rotator_keyvault::SecretProperties>> {
        Ok(self.listing.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_written_after_the_listing_is_judged_by_its_own_expiry() {
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let managed = [("rotator", "site"), ("CredentialId", "u")];
    put(store.as_ref(), "rotating", &managed, Some(5)).await;
    let listing = store.list_secrets().await.unwrap();
    // A rotation finishes after the listing: its version expires in 60 days.
    put(store.as_ref(), "rotating", &managed, Some(60)).await;
    let stale = StaleListing { inner: store.clone(), listing };
    let scan = sweeper::scan(&stale, Some(&kv_rotator::engine::due::DueRule::default())).await.unwrap();
    assert!(scan.requests.is_empty(), "the fresh version must not be rotated again: {:?}", scan.requests);
    vault.shutdown().await;
}

/// A sweep that fails leaves the census gauges as the last good sweep set them; the
/// per-result timestamps say how old they are, so an alert can tell stale from calm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sweep_is_stamped_and_leaves_the_census_of_the_last_good_one() {
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    put(store.as_ref(), "near", &[("rotator", "site"), ("CredentialId", "u")], Some(10)).await;
    let metrics = Arc::new(kv_rotator::metrics::Metrics::default());
    let (queue, mut requests) = tokio::sync::mpsc::channel(16);
    let rule = kv_rotator::engine::due::DueRule::default();
    let sweeper = sweeper::Sweeper::new(store, queue, SweeperConfig::default(), rule, metrics.clone());
    let stamp = |result| metrics.gauge("kv_rotator_last_sweep_timestamp_seconds", &[("result", result)]);
    let due = || metrics.gauge("kv_rotator_managed_secrets", &[("state", "due")]);

    let before = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert_eq!(sweeper.sweep_once().await.unwrap(), 1);
    assert_eq!(requests.recv().await.unwrap().secret_name, "near");
    let ok = stamp("ok").expect("an ok sweep is stamped");
    assert!(ok >= before, "{ok} < {before}");
    assert_eq!((stamp("error"), due()), (None, Some(1.0)));

    vault.shutdown().await;
    assert!(sweeper.sweep_once().await.is_err(), "the vault is gone");
    assert!(stamp("error").expect("a failed sweep is stamped") >= ok);
    assert_eq!(stamp("ok"), Some(ok), "the last good sweep's time stays");
    assert_eq!(due(), Some(1.0), "the census of the last good sweep stays");
    assert_eq!(metrics.counter("kv_rotator_sweeps_total", &[("result", "error")]), 1);
}
