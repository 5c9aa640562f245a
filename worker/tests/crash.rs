//! The crash matrix: `kv-rotator serve` as a separate process against the dev vault
//! (run here, in the test process, so it outlives every kill) and the machine's
//! PostgreSQL, killed with SIGKILL at every step boundary and at random instants, then
//! restarted; the invariant is checked at the instant of each kill and after recovery.
//!
//! Each cycle:
//! 1. make every secret due (its latest version's `exp` in the past) and start `serve`,
//!    which rotates all of them at once; with a failpoint armed (`KVR_FAILPOINT=POINT@N`, the N-th
//!    rotation to reach POINT pauses and says so) or not;
//! 2. SIGKILL it when the failpoint is reached, or after a random delay;
//! 3. check that, for every secret, the target accepts the latest version or a journal
//!    record's password (the invariant at every instant);
//! 4. start `serve` with the sweeper's due scan off, so it only resumes journals,
//!    wait until no journal is left, SIGTERM it (skipped after every fifth kill: the next
//!    cycle's process then resumes those journals while rotating, and is killed too);
//! 5. check, for every secret: the latest version logs in, no journal record is left,
//!    at most one version per rotation id.
//!
//! PostgreSQL without replicas shows a change at once, so the processes run with
//! `engine.target_lag_secs = 0`; lag is `invariant.rs`'s subject.
//!
//! Needs the `failpoints` feature (`scripts/test.sh` runs it) and
//! `scripts/setup-postgres.sh`. `CRASH_MATRIX_KILLS` sets the number of kills
//! (default 200, the CI variant); see README "Crash matrix" for the long variant;
//! `CRASH_MATRIX_VERBOSE=1` prints each cycle's timing.

#![cfg(feature = "failpoints")]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::pg::{logs_in, Roles};
use common::proc::{failpoint_binary, spawn_serve as spawn, MARKER};
use kv_rotator::engine::failpoints::POINTS;
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, SecretStore};
use rand::RngExt;
use secrecy::SecretString;

const SECRETS: usize = 4;
const JOURNAL_FOR: &str = "kv-rotator-journal-for";

struct World {
    _dir: tempfile::TempDir,
    vault: DevVault,
    store: Arc<dyn SecretStore>,
    /// (secret, role)
    managed: Vec<(String, String)>,
    _roles: Roles,
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
        let roles = Roles::create("kvr_crash", SECRETS).await;
        let mut managed = Vec::new();
        for (i, (role, password)) in roles.0.iter().enumerate() {
            let (role, password) = (role.clone(), password.clone());
            let secret = format!("crash-pg-{i}");
            let tags = BTreeMap::from([
                ("rotator".to_owned(), "pg".to_owned()),
                ("CredentialId".to_owned(), role.clone()),
                ("ValidityPeriodDays".to_owned(), "10".to_owned()),
            ]);
            // Not due until `make_due` says so: expires in 10 days, lead 5 days.
            let expires = Some(time::OffsetDateTime::now_utc() + time::Duration::days(10));
            let new = NewSecretVersion { value: password, tags, content_type: None, expires, not_before: None };
            store.set_secret(&secret, new).await.unwrap();
            managed.push((secret, role));
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
                 [sweeper]\nenabled = {due_scan}\n\
                 [targets.pg]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nport = 5432\nsslmode = \"disable\"\n\
                 accounts = [\"kvr_crash*\"]\n",
                vault.endpoint(),
                ca.display(),
                vault.local_addr(),
            )
        };
        let rotate_config = dir.path().join("rotate.toml");
        let resume_config = dir.path().join("resume.toml");
        std::fs::write(&rotate_config, config(true)).unwrap();
        std::fs::write(&resume_config, config(false)).unwrap();
        World { _dir: dir, vault, store, managed, _roles: roles, bin, rotate_config, resume_config }
    }

    /// `rotate --all`, started while a `serve` holds the engine lease, is refused and
    /// changes nothing; a second `serve` waits in standby and, SIGTERMed, exits having
    /// written nothing. (The holder keeps rotating its other secrets meanwhile, so what
    /// is checked is that the refused and the waiting ones wrote nothing.)
    async fn assert_second_engine_kept_out(&self, context: &str) {
        let rotate = Command::new(&self.bin)
            .args(["rotate", "--all", "--force", "--config"])
            .arg(&self.rotate_config)
            .env("KVR_LEASE_SETTLE_MS", "0")
            .env_remove("KVR_FAILPOINT")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&rotate.stderr);
        assert!(!rotate.status.success() && stderr.contains("engine lease"), "{context}: rotate --all ran:\n{stderr}");
        assert!(rotate.stdout.is_empty(), "{context}: rotate --all reported rotations despite the refusal");
        for wrote in ["journal record written", "new version written"] {
            assert!(!stderr.contains(wrote), "{context}: a refused rotate --all wrote ({wrote})");
        }
        let mut serve = spawn(&self.bin, &self.rotate_config, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !serve.output().contains("standby: another engine holds the engine lease") {
            if let Some(status) = serve.exited() {
                panic!(
                    "{context}: a second serve exited ({status}) instead of waiting in standby:\n{}",
                    serve.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{context}: a second serve did not wait in standby:\n{}",
                serve.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, output) = serve.sigterm();
        assert!(status.success() && output.contains("stopped in standby"), "{context}: {status}:\n{output}");
        for wrote in ["journal record written", "new version written", "engine lease claimed", "standby over"] {
            assert!(!output.contains(wrote), "{context}: a serve in standby wrote ({wrote})");
        }
    }

    /// Makes every secret's latest version due: its `exp` a minute ago.
    async fn make_due(&self) {
        let expires = Some(time::OffsetDateTime::now_utc() - time::Duration::minutes(1));
        for (secret, _) in &self.managed {
            let update = kv_rotator_keyvault::PropertiesUpdate { expires, ..Default::default() };
            self.store.update_properties(secret, None, update).await.unwrap();
        }
    }

    /// Journal records by the secret they belong to: (step tag, password).
    async fn journals(&self) -> HashMap<String, Vec<(String, SecretString)>> {
        let mut out: HashMap<String, Vec<(String, SecretString)>> = HashMap::new();
        for p in self.store.list_secrets().await.unwrap() {
            if let Some(secret) = p.tags.get(JOURNAL_FOR) {
                let step = p.tags.get("kv-rotator-step").cloned().unwrap_or_default();
                // A running process may finish it between the listing and the read.
                match self.store.get_latest(&p.name).await {
                    Ok(record) => out.entry(secret.clone()).or_default().push((step, record.value)),
                    Err(kv_rotator_keyvault::StoreError::NotFound { .. }) => {}
                    Err(e) => panic!("reading journal {}: {e}", p.name),
                }
            }
        }
        out
    }

    /// The invariant at any instant: the target accepts the latest version or a
    /// journaled password. Returns the journals' steps seen.
    async fn check_any_instant(&self, context: &str) -> Vec<String> {
        let journals = self.journals().await;
        let mut steps = Vec::new();
        for (secret, role) in &self.managed {
            let latest = self.store.get_latest(secret).await.unwrap();
            let pending = journals.get(secret).map(Vec::as_slice).unwrap_or_default();
            steps.extend(pending.iter().map(|(step, _)| step.clone()));
            let mut ok = logs_in(role, &latest.value).await;
            for (_, password) in pending {
                ok = ok || logs_in(role, password).await;
            }
            assert!(
                ok,
                "{context}: no password in Key Vault logs in as {role} ({secret}); journals: {}",
                pending.len()
            );
        }
        steps
    }

    /// After recovery: the latest version logs in, no journal, one version per rotation id.
    async fn check_recovered(&self, context: &str) {
        assert!(self.journals().await.is_empty(), "{context}: journal records left");
        for (secret, role) in &self.managed {
            let latest = self.store.get_latest(secret).await.unwrap();
            assert!(logs_in(role, &latest.value).await, "{context}: latest version of {secret} does not log in");
            let mut per_rotation: HashMap<String, usize> = HashMap::new();
            for v in self.store.list_versions(secret).await.unwrap() {
                if let Some(id) = v.tags.get("rotation-id") {
                    *per_rotation.entry(id.clone()).or_default() += 1;
                }
            }
            for (id, n) in per_rotation {
                assert_eq!(n, 1, "{context}: {n} versions of {secret} carry rotation id {id}");
            }
        }
    }

    async fn versions(&self) -> usize {
        let mut n = 0;
        for (secret, _) in &self.managed {
            n += self.store.list_versions(secret).await.unwrap().len();
        }
        n
    }

    /// Starts a resume-only process, waits until every journal is finished, stops it.
    async fn recover(&self, context: &str) -> Duration {
        let started = Instant::now();
        let mut proc = spawn(&self.bin, &self.resume_config, None);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            proc.assert_running();
            if self.journals().await.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{context}: journals not finished within 90 s:\n{}", proc.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let resumed = started.elapsed();
        proc.sigterm();
        if std::env::var_os("CRASH_MATRIX_VERBOSE").is_some() {
            eprintln!("  resumed in {resumed:?}, stopped after {:?}", started.elapsed());
        }
        started.elapsed()
    }

    /// Runs a rotating process without failpoints until every secret has a new version.
    async fn calibrate(&self) -> Duration {
        let before = self.versions().await;
        self.make_due().await;
        let started = Instant::now();
        let mut proc = spawn(&self.bin, &self.rotate_config, None);
        while self.versions().await < before + SECRETS || !self.journals().await.is_empty() {
            proc.assert_running();
            assert!(started.elapsed() < Duration::from_secs(90), "calibration run did not finish:\n{}", proc.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        proc.sigterm();
        took
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_step_boundary_and_at_random_instants_never_loses_a_password() {
    let kills: usize = std::env::var("CRASH_MATRIX_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let w = World::new().await;
    let full_run = w.calibrate().await;
    w.check_recovered("after calibration").await;
    let initial_versions = w.versions().await;

    let mut rng = rand::rng();
    let mut at_point: BTreeMap<&str, usize> = BTreeMap::new();
    let mut not_reached = 0usize;
    let mut random_kills = 0usize;
    let mut journals_at_kill: BTreeMap<String, usize> = BTreeMap::new();
    let mut recoveries = 0usize;
    let mut recovered_checks = 0usize;
    let mut pending_into_next = false;
    let mut killed_while_resuming = 0usize;
    let mut failpoint_kills = 0usize;
    let mut second_engines_refused = 0usize;
    let started = Instant::now();
    for i in 0..kills {
        let context = format!("kill {i}");
        // Two of three kills at a step boundary (every point, the N-th rotation to reach
        // it), one at a random instant within a full run's duration.
        let armed = if i % 3 != 2 {
            let point = POINTS[failpoint_kills % POINTS.len()];
            let nth = 1 + (failpoint_kills / POINTS.len()) % SECRETS;
            failpoint_kills += 1;
            Some((point, format!("{point}@{nth}")))
        } else {
            None
        };
        if std::mem::take(&mut pending_into_next) {
            killed_while_resuming += 1;
        }
        w.make_due().await;
        let mut proc = spawn(&w.bin, &w.rotate_config, armed.as_ref().map(|(_, spec)| spec.as_str()));
        match &armed {
            Some((point, _)) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if proc.output().contains(MARKER) {
                        *at_point.entry(point).or_default() += 1;
                        // A second engine beside one paused mid-rotation (the emergency
                        // `rotate --all`, a second replica) is refused, touching nothing.
                        if failpoint_kills % 10 == 1 {
                            w.assert_second_engine_kept_out(&context).await;
                            second_engines_refused += 2;
                        }
                        break;
                    }
                    proc.assert_running();
                    if Instant::now() > deadline {
                        not_reached += 1;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            None => {
                let delay = rng.random_range(0..=full_run.as_millis() as u64 * 6 / 5);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                proc.assert_running();
                random_kills += 1;
            }
        }
        let output = proc.sigkill();
        assert!(!output.contains("panicked"), "{context}: the worker panicked:\n{output}");
        // The dead process's engine lease would hold its successor off for the TTL:
        // break it, as waiting out the TTL would.
        kv_rotator::lease::break_lease(w.store.as_ref()).await.unwrap();

        let steps = w.check_any_instant(&context).await;
        if !steps.is_empty() {
            recoveries += 1;
        }
        for step in steps {
            *journals_at_kill.entry(step).or_default() += 1;
        }
        // Every fifth kill is not followed by a quiet recovery: the next process resumes
        // those journals while rotating again, and may itself be killed mid-recovery.
        if i % 5 == 3 && i + 1 < kills {
            pending_into_next = !w.journals().await.is_empty();
            continue;
        }
        let recovery = w.recover(&context).await;
        w.check_recovered(&context).await;
        recovered_checks += 1;
        if std::env::var_os("CRASH_MATRIX_VERBOSE").is_some() {
            eprintln!("{context}: {armed:?} recovery {recovery:?} total {:?}", started.elapsed());
        }
    }
    let rotations = w.versions().await - initial_versions;

    println!("crash matrix: {kills} SIGKILLs in {:.1} s", started.elapsed().as_secs_f64());
    println!("  at step boundaries: {failpoint_kills} ({not_reached} where the armed point was not reached in 30 s)");
    for (point, n) in &at_point {
        println!("    {point:<22} {n}");
    }
    println!("  at random instants (0..{} ms): {random_kills}", full_run.as_millis() * 6 / 5);
    println!("  journals found right after a kill, by step: {journals_at_kill:?}");
    println!("  recoveries (kills that left a journal to finish): {recoveries}");
    println!("  kills of a process started with journals left by the previous kill: {killed_while_resuming}");
    println!("  rotations written (new versions): {rotations}, across {SECRETS} secrets");
    println!("  second engines beside a paused one (rotate --all refused, serve in standby): {second_engines_refused}");
    println!("  invariant checked at {kills} kill instants and after {recovered_checks} recoveries: held");
    assert_eq!(not_reached, 0, "every armed step boundary must be reached");
    if failpoint_kills >= POINTS.len() {
        assert_eq!(at_point.len(), POINTS.len(), "every step boundary killed at least once: {at_point:?}");
    }
    assert!(recoveries > 0 && rotations > 0);
    w.vault.shutdown().await;
}
