//! One PostgreSQL rotation through the engine against its floor, in the same process and
//! run (issue #11: at most 1.5× the floor).
//!
//! `cargo bench -p kv-rotator --bench rotation_floor` (a plain binary that prints figures
//! and PASS/FAIL against the goal; it never fails). Needs `scripts/setup-postgres.sh`.
//! `BENCH_ROTATIONS` sets rotations per round (default 30).
//!
//! - **engine**: `Engine::rotate` on a manual request, the real protocol, with the
//!   PostgreSQL rotator (`sslmode = "disable"`) and the store on the dev vault.
//! - **floor**: what one rotation cannot do without — the Key Vault requests the engine
//!   issues (counted by the dev vault and checked equal below), the canary's refused
//!   login, the login with the current password and its `ALTER ROLE … PASSWORD
//!   '<SCRAM verifier>'`, one login with the new password after the change, and the final
//!   login after the new version is written — issued one after another through the same
//!   store and tokio-postgres, with no engine.
//!
//! Both sides rotate their own role and secret; rounds alternate between them so drift on
//! a shared machine hits both alike, and the best round (lowest median) of three counts.
//! The dev vault's throttle and the client's rate limiter are off: paced, both sides would
//! measure the limiter. Logins per rotation are counted once, untimed, through a TCP proxy
//! that counts connections (the suites' `tests/common/pg.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_rotator::engine::{Engine, Outcome};
use kv_rotator::targets::Targets;
use kv_rotator_config::{EngineConfig, TargetKind, TargetProfile};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::pipeline::ClientSettings;
use kv_rotator_keyvault::{NewSecretVersion, PropertiesUpdate, SecretStore, StoreError};
use kv_rotator_rotators::PasswordPolicy;
use secrecy::{ExposeSecret, SecretString};

// The suites' PostgreSQL helpers: throwaway kvr_scram roles, the counting proxy (the
// module allows its own dead code).
#[path = "../tests/common/pg.rs"]
mod pg;

const ROUNDS: usize = 3;
const WARM_UP: usize = 3;
const GOAL: f64 = 1.5;
const PG: u16 = 5432;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let n: usize = std::env::var("BENCH_ROTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let vault = DevVault::start(DevVaultOptions { rate_limit: None, ..Default::default() }).await.expect("dev vault");
    let settings = ClientSettings { rate_limit: None, ..Default::default() };
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault_with(&vault, settings).expect("store"));
    let roles = pg::Roles::create("kvr_bench", 2).await;
    for (role, password) in &roles.0 {
        seed(store.as_ref(), role, password).await;
    }
    let (engine_role, floor_role) = (roles.0[0].0.clone(), roles.0[1].0.clone());

    let engine = Engine::new(store.clone(), targets(PG), engine_config());
    let floor = Floor { store: store.clone(), port: PG, role: floor_role.clone() };

    // Untimed: what one rotation asks of Key Vault and of PostgreSQL, each side.
    let proxy = pg::Proxy::start().await;
    let counting_engine = Engine::new(store.clone(), targets(proxy.port), engine_config());
    let counting_floor = Floor { port: proxy.port, ..floor.clone() };
    let (before_kv, before_logins) = (vault.stats().requests, proxy.connections());
    rotate(&counting_engine, store.as_ref(), &engine_role).await;
    let (engine_kv, engine_logins) = (vault.stats().requests - before_kv, proxy.connections() - before_logins);
    let (before_kv, before_logins) = (vault.stats().requests, proxy.connections());
    counting_floor.rotate().await;
    let (floor_kv, floor_logins) = (vault.stats().requests - before_kv, proxy.connections() - before_logins);

    for _ in 0..WARM_UP {
        rotate(&engine, store.as_ref(), &engine_role).await;
        floor.rotate().await;
    }
    let (mut best_engine, mut best_floor): (Option<Round>, Option<Round>) = (None, None);
    for _ in 0..ROUNDS {
        let mut times = Vec::with_capacity(n);
        let mut steps: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
        for _ in 0..n {
            let started = Instant::now();
            let report = rotate(&engine, store.as_ref(), &engine_role).await;
            times.push(started.elapsed());
            for step in report {
                steps.entry(step.0).or_default().push(step.1);
            }
        }
        keep_best(&mut best_engine, Round::new(times, steps));
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            floor.rotate().await;
            times.push(started.elapsed());
        }
        keep_best(&mut best_floor, Round::new(times, BTreeMap::new()));
    }
    let (engine_round, floor_round) = (best_engine.expect("rounds"), best_floor.expect("rounds"));
    let ratio = engine_round.median.as_secs_f64() / floor_round.median.as_secs_f64();

    println!(
        "kv-rotator rotation floor: PostgreSQL 127.0.0.1:{PG} (sslmode disable), dev vault over TLS, \
         {n} rotations per round, best of {ROUNDS} rounds"
    );
    println!("{:<8} {:>10} {:>10} {:>12} {:>8}", "", "median", "p95", "KV requests", "logins");
    for (label, round, kv, logins) in
        [("engine", &engine_round, engine_kv, engine_logins), ("floor", &floor_round, floor_kv, floor_logins)]
    {
        println!("{label:<8} {:>10} {:>10} {kv:>12} {logins:>8}", ms(round.median), ms(round.p95));
    }
    let steps: Vec<String> =
        engine_round.steps.iter().map(|(step, times)| format!("{step} {}", ms(median(times)))).collect();
    println!("engine steps (median): {}", steps.join(", "));
    if engine_kv != floor_kv {
        println!("note: the floor issued {floor_kv} Key Vault requests, the engine {engine_kv}: update the floor");
    }
    let verdict = if ratio <= GOAL { "PASS" } else { "FAIL" };
    println!("ratio engine/floor (medians): {ratio:.2}x; goal <= {GOAL}x: {verdict}");

    vault.shutdown().await;
}

/// One round's figures.
struct Round {
    median: Duration,
    p95: Duration,
    /// The engine's steps, each with its durations.
    steps: BTreeMap<&'static str, Vec<Duration>>,
}

impl Round {
    fn new(mut times: Vec<Duration>, steps: BTreeMap<&'static str, Vec<Duration>>) -> Self {
        times.sort();
        let p95 = times[((times.len() * 95).div_ceil(100)).saturating_sub(1)];
        Round { median: median(&times), p95, steps }
    }
}

fn keep_best(best: &mut Option<Round>, round: Round) {
    if best.as_ref().is_none_or(|b| round.median < b.median) {
        *best = Some(round);
    }
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn engine_config() -> EngineConfig {
    EngineConfig { min_rotation_interval_secs: 0, ..Default::default() }
}

fn targets(port: u16) -> Targets {
    let pg: kv_rotator_rotators::postgres::PostgresConfig =
        serde_json::from_value(serde_json::json!({"host": "127.0.0.1", "port": port, "sslmode": "disable"}))
            .expect("postgres profile");
    let profile = TargetProfile {
        target: TargetKind::new("postgres", pg),
        admin: None,
        password: Default::default(),
        accounts: vec!["kvr_bench_*".to_owned()],
        allow_admin_account: false,
        strategy: Default::default(),
        grace_period_secs: None,
        twin_suffix: None,
        rotation_window: None,
    };
    Targets::from_profiles(&BTreeMap::from([("pg".to_owned(), profile)])).expect("targets")
}

/// The managed secret of `role`, named after it.
async fn seed(store: &dyn SecretStore, role: &str, password: &SecretString) {
    let tags = BTreeMap::from([("rotator".to_owned(), "pg".to_owned()), ("CredentialId".to_owned(), role.to_owned())]);
    let new = NewSecretVersion { value: password.clone(), tags, content_type: None, expires: None, not_before: None };
    store.set_secret(&secret_name(role), new).await.expect("seed");
}

fn secret_name(role: &str) -> String {
    role.replace('_', "-")
}

/// One rotation through the engine; its steps and their durations.
async fn rotate(engine: &Engine, store: &dyn SecretStore, role: &str) -> Vec<(&'static str, Duration)> {
    let request = RotationRequest {
        vault_name: store.vault_name().to_owned(),
        secret_name: secret_name(role),
        version: None,
        trigger: Trigger::Manual { requested_by: "bench".to_owned(), force: true },
    };
    let report = engine.rotate(request).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "engine rotation: {}", report.outcome);
    report.steps.iter().map(|s| (s.step, s.duration)).collect()
}

/// The floor: the engine's Key Vault requests, in its order, and the logins and SQL a
/// rotation needs, straight through the store and tokio-postgres.
#[derive(Clone)]
struct Floor {
    store: Arc<dyn SecretStore>,
    port: u16,
    role: String,
}

impl Floor {
    async fn rotate(&self) {
        let store = self.store.as_ref();
        let secret = secret_name(&self.role);
        let journal = format!("kvr-journal-bench-{:016x}", rand::random::<u64>());
        // The request's "latest" (Engine::rotate), then the fence and the journal read.
        store.get_latest(&secret).await.expect("latest");
        let latest = store.get_latest(&secret).await.expect("fence");
        assert!(matches!(store.get_latest(&journal).await, Err(StoreError::NotFound { .. })));
        // The canary: a random password is refused.
        assert!(!self.logs_in(&PasswordPolicy::default().generate()).await);
        // The journal record, before the target sees the password.
        let pending = PasswordPolicy::default().generate();
        let mut journal_tags: BTreeMap<String, String> = (0..8).map(|i| (format!("k{i}"), "v".repeat(24))).collect();
        let new = NewSecretVersion {
            value: pending.clone(),
            tags: journal_tags.clone(),
            content_type: Some("application/vnd.kv-rotator.pending-password".to_owned()),
            expires: None,
            not_before: None,
        };
        let written = store.set_secret(&journal, new).await.expect("journal");
        self.refence(&secret, &journal).await;
        // The previous passwords: the version list and the two before the latest.
        let versions = store.list_versions(&secret).await.expect("versions");
        for version in versions.iter().rev().skip(1).take(2) {
            store.get_version(&secret, version.version.as_deref().expect("id")).await.expect("previous");
        }
        // The change, as the role with its current password, then a fresh login with the new one.
        let verifier = postgres_protocol::password::scram_sha_256(pending.expose_secret().as_bytes());
        let client = self.login(&latest.value).await.expect("current password logs in");
        client.batch_execute(&format!("ALTER ROLE {} PASSWORD '{verifier}'", self.role)).await.expect("alter");
        drop(client);
        assert!(self.logs_in(&pending).await, "new password logs in");
        journal_tags.insert("kv-rotator-step".to_owned(), "target-set".to_owned());
        let update = PropertiesUpdate { tags: Some(journal_tags), ..Default::default() };
        store.update_properties(&journal, Some(&written.version), update).await.expect("step tag");
        self.refence(&secret, &journal).await;
        // The new version, the final login, the journal's deletion.
        let mut tags = latest.properties.tags.clone();
        for key in ["rotation-id", "rotated-from", "rotated-at"] {
            tags.insert(key.to_owned(), "x".repeat(40));
        }
        let new =
            NewSecretVersion { value: pending.clone(), tags, content_type: None, expires: None, not_before: None };
        store.set_secret(&secret, new).await.expect("finish");
        assert!(self.logs_in(&pending).await, "the written version logs in");
        store.delete_secret(&journal).await.expect("delete journal");
    }

    async fn refence(&self, secret: &str, journal: &str) {
        self.store.get_latest(secret).await.expect("refence");
        self.store.get_latest(journal).await.expect("refence journal");
    }

    async fn login(&self, password: &SecretString) -> Option<tokio_postgres::Client> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port)
            .user(&self.role)
            .password(password.expose_secret())
            .dbname("postgres")
            .application_name("kv-rotator")
            .options("-c client_min_messages=warning");
        let (client, connection) = cfg.connect(tokio_postgres::NoTls).await.ok()?;
        tokio::spawn(connection);
        Some(client)
    }

    /// A login and a working session (what the rotator's check does).
    async fn logs_in(&self, password: &SecretString) -> bool {
        match self.login(password).await {
            Some(client) => client.batch_execute("SELECT 1").await.is_ok(),
            None => false,
        }
    }
}
