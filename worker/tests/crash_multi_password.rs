//! The crash matrix of the multi-password strategy: `kv-rotator serve` as a separate
//! process against the dev vault and the machine's Redis (ACL users changed by an admin
//! whose password is in Key Vault), killed with SIGKILL at every step boundary of a
//! rotation and after the old passwords' retirement, then restarted.
//!
//! Each cycle makes every secret due and starts `serve` with a failpoint armed (the N-th
//! arrival at it pauses and says so), then SIGKILLs it there and checks:
//! - at the kill: for every secret, the latest version or a journal record logs in;
//! - after a resume-only process has run until no journal and no retirement is left:
//!   the latest version logs in, the user has exactly one password on the server, every
//!   older version of the secret is refused, no version still carries the retirement
//!   marker, at most one version per rotation id.
//!
//! Needs the `failpoints` feature (`scripts/test.sh` runs it). `CRASH_MULTI_KILLS` sets
//! the number of kills (default three per failpoint).

#![cfg(feature = "failpoints")]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::proc::{failpoint_binary, spawn_serve, MARKER};
use kv_rotator::engine::failpoints::{POINTS, RETIRE_POINTS};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, PropertiesUpdate, SecretStore, StoreError};
use kv_rotator_rotators::PasswordPolicy;
use secrecy::{ExposeSecret, SecretString};

const SECRETS: usize = 3;
const JOURNAL_FOR: &str = "kv-rotator-journal-for";
const RETIRE_TAG: &str = "kv-rotator-retire-after";

fn sha256_hex(password: &SecretString) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(password.expose_secret().as_bytes()))
}

/// The machine's server, through its `default` user (no password on this machine).
async fn redis_root() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    client.get_multiplexed_async_connection().await.expect("Redis must run on 127.0.0.1:6379")
}

async fn acl(args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd("ACL");
    for arg in args {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut redis_root().await).await.unwrap_or_else(|e| panic!("ACL {}: {e}", args[0]))
}

/// Whether a client sending `AUTH user password` gets in.
async fn logs_in(user: &str, password: &SecretString) -> bool {
    let mut conn = redis_root().await;
    let auth: redis::RedisResult<()> =
        redis::cmd("AUTH").arg(user).arg(password.expose_secret()).query_async(&mut conn).await;
    auth.is_ok()
}

/// How many passwords the server holds for `user`.
async fn password_count(user: &str) -> usize {
    let reply = acl(&["GETUSER", user]).await;
    let redis::Value::Array(items) = reply else { panic!("ACL GETUSER {user}: {reply:?}") };
    let key = |v: &redis::Value| matches!(v, redis::Value::BulkString(b) if b == b"passwords");
    let at = items.iter().position(key).expect("a passwords field");
    match &items[at + 1] {
        redis::Value::Array(list) | redis::Value::Set(list) => list.len(),
        other => panic!("passwords: {other:?}"),
    }
}

struct World {
    _dir: tempfile::TempDir,
    vault: DevVault,
    store: Arc<dyn SecretStore>,
    /// (secret, user)
    managed: Vec<(String, String)>,
    users: Vec<String>,
    bin: PathBuf,
    rotate_config: PathBuf,
    resume_config: PathBuf,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let bin = failpoint_binary(dir.path());
        let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
        let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
        let prefix = format!("kvr_cmp_{:08x}", rand::random::<u32>());
        let policy = PasswordPolicy::default();
        let admin = format!("{prefix}_admin");
        let admin_password = policy.generate();
        acl(&["SETUSER", &admin, "reset", "on", &format!("#{}", sha256_hex(&admin_password)), "+acl"]).await;
        let new = |value: SecretString, tags: BTreeMap<String, String>| NewSecretVersion {
            value,
            tags,
            content_type: None,
            expires: Some(time::OffsetDateTime::now_utc() + time::Duration::days(10)),
            not_before: None,
        };
        store.set_secret("redis-admin", new(admin_password, BTreeMap::new())).await.unwrap();
        let mut managed = Vec::new();
        let mut users = vec![admin.clone()];
        for i in 0..SECRETS {
            let user = format!("{prefix}_{i}");
            let password = policy.generate();
            acl(&["SETUSER", &user, "reset", "on", &format!("#{}", sha256_hex(&password)), "~app:*", "+get"]).await;
            let secret = format!("crash-redis-{i}");
            let tags = BTreeMap::from([
                ("rotator".to_owned(), "cache".to_owned()),
                ("CredentialId".to_owned(), user.clone()),
                ("ValidityPeriodDays".to_owned(), "10".to_owned()),
            ]);
            store.set_secret(&secret, new(password, tags)).await.unwrap();
            managed.push((secret, user.clone()));
            users.push(user);
        }
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, vault.ca_certificate_pem()).unwrap();
        let config = |due_scan: bool| {
            format!(
                "[vault]\nurl = \"{}\"\ntls_ca_file = \"{}\"\nconnect_to = \"{}\"\ncredential = {{ kind = \"dev-vault\" }}\n\
                 [webhook]\nlisten = \"127.0.0.1:0\"\n[webhook.auth]\nmode = \"none\"\n\
                 [engine]\nconcurrency = {SECRETS}\nmax_attempts = 20\ninitial_backoff_ms = 20\nmax_backoff_ms = 200\n\
                 min_rotation_interval_secs = 0\n\
                 target_lag_secs = 0\n\
                 [sweeper]\nenabled = {due_scan}\ninterval_secs = 1\n\
                 [targets.cache]\nkind = \"redis\"\nhost = \"127.0.0.1\"\nport = 6379\ntls = \"disable\"\n\
                 acl_save = \"never\"\nstrategy = \"multi-password\"\ngrace_period_secs = 1\n\
                 admin = {{ username = \"{admin}\", secret = \"redis-admin\" }}\naccounts = [\"{prefix}_*\"]\n",
                vault.endpoint(),
                ca.display(),
                vault.local_addr(),
            )
        };
        let rotate_config = dir.path().join("rotate.toml");
        let resume_config = dir.path().join("resume.toml");
        std::fs::write(&rotate_config, config(true)).unwrap();
        std::fs::write(&resume_config, config(false)).unwrap();
        World { _dir: dir, vault, store, managed, users, bin, rotate_config, resume_config }
    }

    async fn make_due(&self) {
        let expires = Some(time::OffsetDateTime::now_utc() - time::Duration::minutes(1));
        for (secret, _) in &self.managed {
            let update = PropertiesUpdate { expires, ..Default::default() };
            self.store.update_properties(secret, None, update).await.unwrap();
        }
    }

    /// Journal records' passwords by the secret they belong to.
    async fn journals(&self) -> HashMap<String, Vec<SecretString>> {
        let mut out: HashMap<String, Vec<SecretString>> = HashMap::new();
        for p in self.store.list_secrets().await.unwrap() {
            if let Some(secret) = p.tags.get(JOURNAL_FOR) {
                match self.store.get_latest(&p.name).await {
                    Ok(record) => out.entry(secret.clone()).or_default().push(record.value),
                    Err(StoreError::NotFound { .. }) => {}
                    Err(e) => panic!("reading journal {}: {e}", p.name),
                }
            }
        }
        out
    }

    /// Whether any secret's latest version still waits for its retirement.
    async fn retirements_left(&self) -> bool {
        for (secret, _) in &self.managed {
            if self.store.get_latest(secret).await.unwrap().properties.tags.contains_key(RETIRE_TAG) {
                return true;
            }
        }
        false
    }

    async fn check_any_instant(&self, context: &str) {
        let journals = self.journals().await;
        for (secret, user) in &self.managed {
            let latest = self.store.get_latest(secret).await.unwrap();
            let mut ok = logs_in(user, &latest.value).await;
            for password in journals.get(secret).map(Vec::as_slice).unwrap_or_default() {
                ok = ok || logs_in(user, password).await;
            }
            assert!(ok, "{context}: no password in Key Vault logs in as {user} ({secret})");
        }
    }

    async fn check_recovered(&self, context: &str) {
        assert!(self.journals().await.is_empty(), "{context}: journal records left");
        for (secret, user) in &self.managed {
            let latest = self.store.get_latest(secret).await.unwrap();
            assert!(logs_in(user, &latest.value).await, "{context}: the latest version of {secret} does not log in");
            assert!(!latest.properties.tags.contains_key(RETIRE_TAG), "{context}: {secret} still marked");
            assert_eq!(password_count(user).await, 1, "{context}: {user} holds old passwords after the grace period");
            let mut per_rotation: HashMap<String, usize> = HashMap::new();
            for v in self.store.list_versions(secret).await.unwrap() {
                let id = v.version.clone().unwrap();
                if let Some(rotation) = v.tags.get("rotation-id") {
                    *per_rotation.entry(rotation.clone()).or_default() += 1;
                }
                if id != latest.version {
                    let old = self.store.get_version(secret, &id).await.unwrap();
                    if old.value.expose_secret() != latest.value.expose_secret() {
                        assert!(!logs_in(user, &old.value).await, "{context}: an older version of {secret} logs in");
                    }
                }
            }
            for (id, n) in per_rotation {
                assert_eq!(n, 1, "{context}: {n} versions of {secret} carry rotation id {id}");
            }
        }
    }

    /// A resume-only process (its sweeper resumes journals and asks for retirements)
    /// until neither is left.
    async fn recover(&self, context: &str) {
        let mut proc = spawn_serve(&self.bin, &self.resume_config, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.journals().await.is_empty() || self.retirements_left().await {
            proc.assert_running();
            assert!(Instant::now() < deadline, "{context}: not recovered within 60 s:\n{}", proc.output());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        proc.sigterm();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_step_of_a_multi_password_rotation_and_its_retirement_loses_nothing() {
    let points: Vec<&str> = POINTS.iter().chain(RETIRE_POINTS).copied().collect();
    let kills: usize = std::env::var("CRASH_MULTI_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(3 * points.len());
    let w = World::new().await;
    let mut at_point: BTreeMap<&str, usize> = BTreeMap::new();
    let started = Instant::now();
    for i in 0..kills {
        let point = points[i % points.len()];
        let nth = 1 + (i / points.len()) % SECRETS;
        let context = format!("kill {i} at {point}@{nth}");
        w.make_due().await;
        let mut proc = spawn_serve(&w.bin, &w.rotate_config, Some(&format!("{point}@{nth}")));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !proc.output().contains(MARKER) {
            proc.assert_running();
            assert!(Instant::now() < deadline, "{context}: not reached in 30 s:\n{}", proc.output());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        *at_point.entry(point).or_default() += 1;
        let output = proc.sigkill();
        assert!(!output.contains("panicked"), "{context}: the worker panicked:\n{output}");
        kv_rotator::lease::break_lease(w.store.as_ref()).await.unwrap();
        w.check_any_instant(&context).await;
        w.recover(&context).await;
        w.check_recovered(&context).await;
    }
    println!("multi-password crash matrix: {kills} SIGKILLs in {:.1} s", started.elapsed().as_secs_f64());
    for (point, n) in &at_point {
        println!("    {point:<22} {n}");
    }
    println!("  invariant checked at every kill, and after every recovery: one password per user, the latest");
    assert_eq!(at_point.len(), points.len().min(kills), "every point killed at least once: {at_point:?}");
    for user in &w.users {
        acl(&["DELUSER", user]).await;
    }
    w.vault.shutdown().await;
}
