//! One engine per vault (`worker/src/lease.rs`), as operators run it: `serve` and
//! `rotate` as separate processes against one dev vault (run here, in the test process,
//! so it outlives every kill), with SIGKILLs and SIGTERMs; and the lease module itself
//! against simultaneous claims, a heartbeat, an operator breaking the lease and a vault
//! refusing renewals. Either only one engine runs, or the second is refused.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_rotator::lease::{self, ClaimError, LeaseTimings, NotHeld, LEASE_SECRET, TAG_HOLDER, TAG_PID};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions, ErrorRule, Faults, Injected, Operation, SeedSecret};
use kv_rotator_keyvault::pipeline::{ClientSettings, RetrySettings};
use kv_rotator_keyvault::{SecretProperties, SecretStore};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::{PasswordPolicy, Rotator, VerifyRequest, VerifyResponse};
use secrecy::{ExposeSecret, SecretString};

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;

use common::proc::Proc;

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");
/// The shortest settle delay that still orders simultaneous claims (the default is 3 s).
const SETTLE_MS: &str = "1500";

/// `kv-rotator ARGS` with `env`, and the shortest safe settle delay.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
    Proc::spawn(Command::new(BIN).args(args).envs(env.iter().copied()).env("KVR_LEASE_SETTLE_MS", SETTLE_MS))
}

/// Waits until the webhook answers (`Ok`) or the process exits (`Err`, with its status).
async fn started(proc: &mut Proc, port: u16) -> Result<(), ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = proc.exited() {
            return Err(status);
        }
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await {
            if r.status() == 200 {
                return Ok(());
            }
        }
        assert!(Instant::now() < deadline, "neither healthy nor exited within 60 s:\n{}", proc.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A dev vault, an htpasswd target and configuration files for processes.
struct Site {
    dir: tempfile::TempDir,
    vault: DevVault,
    store: Arc<dyn SecretStore>,
    htpasswd: PathBuf,
}

impl Site {
    async fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let options = DevVaultOptions { vault_name: "onevault".into(), ..Default::default() };
        let vault = DevVault::start(options).await.unwrap();
        let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
        std::fs::write(dir.path().join("ca.pem"), vault.ca_certificate_pem()).unwrap();
        let htpasswd = dir.path().join("site.htpasswd");
        Site { dir, vault, store, htpasswd }
    }

    /// A configuration whose webhook listens on `port`; the sweeper only resumes
    /// journals, so a `serve` rotates nothing by itself.
    fn config(&self, port: u16) -> String {
        let path = self.dir.path().join(format!("kv-rotator-{port}.toml"));
        let text = format!(
            "[vault]\nurl = \"{}\"\ntls_ca_file = \"{}\"\nconnect_to = \"{}\"\ncredential = {{ kind = \"dev-vault\" }}\n\
             [webhook]\nlisten = \"127.0.0.1:{port}\"\nauth = {{ mode = \"none\" }}\n\
             [engine]\ninitial_backoff_ms = 10\nmax_backoff_ms = 20\nmax_attempts = 2\n\
             [sweeper]\nenabled = false\n\
             [targets.site]\nkind = \"htpasswd\"\npath = \"{}\"\nbcrypt_cost = 4\naccounts = [\"*\"]\n",
            self.vault.endpoint(),
            self.dir.path().join("ca.pem").display(),
            self.vault.local_addr(),
            self.htpasswd.display()
        );
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// A `serve` on a free port, with `env`; returns it and its port.
    fn serve(&self, env: &[(&str, &str)]) -> (Proc, u16) {
        let port = free_port();
        (spawn(&["serve", "--config", &self.config(port)], env), port)
    }

    /// `kv-rotator rotate ARGS` to its end.
    fn rotate(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["rotate", "--config", &self.config(free_port())])
            .args(args)
            .env("KVR_LEASE_SETTLE_MS", SETTLE_MS)
            .output()
            .unwrap()
    }

    /// A user on the target and its managed secret, written 30 days ago (so no minimum
    /// interval between rotations holds it back).
    async fn user(&self, secret: &str, user: &str) -> SecretString {
        let password = PasswordPolicy::default().generate();
        htpasswd::add_user(&self.htpasswd, user, &password, 4).unwrap();
        let tags =
            BTreeMap::from([("rotator".to_owned(), "site".to_owned()), ("CredentialId".to_owned(), user.to_owned())]);
        let created = time::OffsetDateTime::now_utc().unix_timestamp() - 30 * 86_400;
        let seed = SeedSecret {
            name: secret.to_owned(),
            value: password.expose_secret().to_owned(),
            tags: Some(tags),
            created: Some(created),
            ..SeedSecret::default()
        };
        self.vault.seed(seed).unwrap();
        password
    }

    async fn logs_in(&self, user: &str, password: &SecretString) -> bool {
        let rotator = HtpasswdRotator::new(HtpasswdConfig::new(&self.htpasswd), PasswordPolicy::default());
        let req = VerifyRequest { username: user.into(), password: password.clone() };
        rotator.verify(req).await.unwrap() == VerifyResponse::Accepted
    }

    async fn lease_versions(&self) -> Vec<SecretProperties> {
        self.store.list_versions(LEASE_SECRET).await.unwrap()
    }

    /// The enabled lease versions.
    async fn enabled_leases(&self) -> Vec<SecretProperties> {
        self.lease_versions().await.into_iter().filter(|v| v.enabled).collect()
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_vault_is_refused_naming_the_first() {
    let site = Site::new().await;
    let (mut first, first_port) = site.serve(&[]);
    started(&mut first, first_port).await.unwrap_or_else(|s| panic!("first serve exited {s}:\n{}", first.output()));
    let held = site.enabled_leases().await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].tags[TAG_PID], first.pid());

    let (mut second, second_port) = site.serve(&[]);
    let status = started(&mut second, second_port).await.expect_err("the second serve must be refused");
    let output = second.output();
    assert!(!status.success(), "{output}");
    let holder = format!("`kv-rotator serve` (pid {} on host", first.pid());
    for part in
        ["refusing to start", "another engine holds the engine lease of vault onevault", &holder, "last heartbeat"]
    {
        assert!(output.contains(part), "{part:?} not in:\n{output}");
    }
    println!("second serve refused ({status}): {}", output.lines().find(|l| l.contains("refusing")).unwrap());
    // The first's heartbeat is fresh: refused before it wrote a claim of its own.
    assert_eq!(site.enabled_leases().await.len(), 1);
    assert_eq!(site.lease_versions().await.len(), 1, "a refused claim adds no version");
    started(&mut first, first_port).await.unwrap();
    first.terminate();
    assert!(site.enabled_leases().await.is_empty(), "SIGTERM releases the lease");
    site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_all_beside_serve_is_refused_and_rotates_nothing_unless_allowed() {
    let site = Site::new().await;
    let alpha = site.user("alpha-password", "alpha").await;
    let beta = site.user("beta-password", "beta").await;
    let (mut serve, port) = site.serve(&[]);
    started(&mut serve, port).await.unwrap_or_else(|s| panic!("serve exited {s}:\n{}", serve.output()));

    let out = site.rotate(&["--all"]);
    let refused = text(&out);
    assert!(!out.status.success(), "{refused}");
    let holder = format!("`kv-rotator serve` (pid {} on host", serve.pid());
    for part in ["refusing to rotate", "another engine holds the engine lease", &holder, "Nothing was rotated"] {
        assert!(refused.contains(part), "{part:?} not in:\n{refused}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "{refused}");
    for secret in ["alpha-password", "beta-password"] {
        assert_eq!(site.store.list_versions(secret).await.unwrap().len(), 1, "{secret} rotated:\n{refused}");
    }
    assert!(site.logs_in("alpha", &alpha).await && site.logs_in("beta", &beta).await);
    println!("rotate --all beside serve: refused ({}), 0 of 2 secrets rotated", out.status);

    let out = site.rotate(&["--all", "--allow-concurrent-engine"]);
    let allowed = text(&out);
    assert!(out.status.success(), "{allowed}");
    assert!(allowed.contains("running without the engine lease"), "{allowed}");
    for (secret, user) in [("alpha-password", "alpha"), ("beta-password", "beta")] {
        assert_eq!(site.store.list_versions(secret).await.unwrap().len(), 2, "{allowed}");
        assert!(site.logs_in(user, &site.store.get_latest(secret).await.unwrap().value).await);
    }
    println!("rotate --all --allow-concurrent-engine beside serve: ran, 2 of 2 secrets rotated");
    // The service kept its lease throughout.
    let held = site.enabled_leases().await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].tags[TAG_PID], serve.pid());
    serve.terminate();
    site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_successors_are_refused_until_the_heartbeat_is_a_ttl_old() {
    const TTL_S: i64 = 4;
    let env = [("KVR_LEASE_TTL_MS", "4000")];
    let site = Site::new().await;
    site.user("alpha-password", "alpha").await;
    let (mut holder, port) = site.serve(&env);
    started(&mut holder, port).await.unwrap_or_else(|s| panic!("serve exited {s}:\n{}", holder.output()));
    let dead_pid = holder.pid();
    let dead_id = site.enabled_leases().await[0].tags[TAG_HOLDER].clone();
    // A few heartbeats (every TTL/4 = 1 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    holder.sigkill();
    let killed = Instant::now();

    let out = site.rotate(&["--all"]);
    assert!(!out.status.success() && text(&out).contains(&format!("pid {dead_pid} ")), "{}", text(&out));
    assert_eq!(site.store.list_versions("alpha-password").await.unwrap().len(), 1);

    let mut refused = 0;
    let successor = loop {
        let (mut next, port) = site.serve(&env);
        match started(&mut next, port).await {
            Ok(()) => break next,
            Err(status) => {
                let output = next.output();
                assert!(!status.success() && output.contains(&format!("pid {dead_pid} ")), "{output}");
                refused += 1;
            }
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "no takeover within 60 s");
    };
    let took_over = killed.elapsed();
    // In the service's time: the successor's claim came more than a TTL (plus the
    // allowance) after the dead holder's last heartbeat.
    let versions = site.lease_versions().await;
    let dead = versions.iter().find(|v| v.tags[TAG_HOLDER] == dead_id).unwrap();
    let renewals: u64 = dead.tags["kv-rotator-lease-renewals"].parse().unwrap();
    let live = site.enabled_leases().await;
    assert_eq!(live.len(), 2, "the dead holder's version and the successor's");
    let new = live.iter().find(|v| v.tags[TAG_PID] == successor.pid()).expect("the successor holds");
    let gap = (new.created.unwrap() - dead.updated.unwrap()).whole_seconds();
    assert!(gap > TTL_S + 2, "taken over {gap} s after the last heartbeat");
    assert!(refused >= 1, "the first successor came while the heartbeat was fresh");
    println!(
        "SIGKILL of the holder after {renewals} heartbeats: rotate --all refused, {refused} serve(s) refused, \
         takeover {:.1} s after the kill, {gap} s after the last heartbeat (TTL {TTL_S} s + 2 s allowance)",
        took_over.as_secs_f64()
    );
    successor.terminate();
    site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_sigterm_releases_the_lease_at_once() {
    // The default TTL (60 s): only a release lets the successor in within the test.
    let site = Site::new().await;
    let (mut first, port) = site.serve(&[]);
    started(&mut first, port).await.unwrap_or_else(|s| panic!("serve exited {s}:\n{}", first.output()));
    let output = first.terminate();
    assert!(output.contains("engine lease released"), "{output}");
    let stopped = Instant::now();
    assert!(site.enabled_leases().await.is_empty());

    let (mut next, port) = site.serve(&[]);
    started(&mut next, port).await.unwrap_or_else(|s| panic!("successor refused {s}:\n{}", next.output()));
    let waited = stopped.elapsed();
    assert!(waited < Duration::from_secs(30), "{waited:?}");
    println!("successor serving {:.1} s after the holder's SIGTERM (TTL 60 s)", waited.as_secs_f64());
    next.terminate();
    site.vault.shutdown().await;
}

/// A client of its own (its own connections), as another process would have.
fn client(vault: &DevVault, max_retries: u32) -> Arc<dyn SecretStore> {
    let settings = ClientSettings {
        retry: RetrySettings { max_retries, initial_delay: Duration::from_millis(20), ..RetrySettings::default() },
        ..ClientSettings::default()
    };
    Arc::new(AzureSecretStore::for_dev_vault_with(vault, settings).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_simultaneous_claims_exactly_one_wins() {
    let rounds: usize = std::env::var("LEASE_RACE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let timings = LeaseTimings { settle: Duration::from_millis(1500), ..LeaseTimings::default() };
    let (a, b) = (client(&vault, 3), client(&vault, 3));
    let (mut wins_a, mut wins_b, mut same_second) = (0, 0, 0);
    for round in 0..rounds {
        // Start together, or one up to 1.2 s after the other: same second or not.
        let offset = Duration::from_millis((round as u64 * 131) % 1200);
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let claim = move |store: Arc<dyn SecretStore>, delay: Duration, barrier: Arc<tokio::sync::Barrier>| async move {
            barrier.wait().await;
            tokio::time::sleep(delay).await;
            // The written claim, which decides when both pass the pre-check at once.
            lease::claim_by_writing(store, "rotate", timings).await
        };
        let (ra, rb) = tokio::join!(
            tokio::spawn(claim(a.clone(), Duration::ZERO, barrier.clone())),
            tokio::spawn(claim(b.clone(), offset, barrier))
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let winner = match (&ra, &rb) {
            (Ok(g), Err(ClaimError::Held(held))) | (Err(ClaimError::Held(held)), Ok(g)) => {
                assert_eq!(held.holder.version, g.version(), "the refusal names the winner");
                g.clone()
            }
            other => panic!("round {round}: not exactly one winner: {other:?}"),
        };
        if ra.is_ok() {
            wins_a += 1;
        } else {
            wins_b += 1;
        }
        let versions = a.list_versions(LEASE_SECRET).await.unwrap();
        let this_round = &versions[versions.len() - 2..];
        if this_round[0].created == this_round[1].created {
            same_second += 1;
        }
        assert_eq!(versions.iter().filter(|v| v.enabled).count(), 1, "round {round}: the loser's claim is disabled");
        winner.release().await;
    }
    println!(
        "simultaneous claims: {rounds} rounds, exactly one winner in each (first {wins_a}, second {wins_b}); \
         {same_second} rounds with both claims in the same second"
    );
    vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_renews_in_place_and_loses_the_lease_when_it_is_broken_or_cannot_renew() {
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let timings =
        LeaseTimings { settle: Duration::from_millis(1100), ..LeaseTimings::with_ttl(Duration::from_secs(3)) };
    let store = client(&vault, 0);

    // Heartbeats move `updated` on the same version.
    let guard = lease::claim(store.clone(), "serve", timings).await.unwrap();
    assert!(guard.is_held() && guard.held_for().unwrap() <= Duration::from_millis(2500));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let versions = store.list_versions(LEASE_SECRET).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert!(versions[0].updated > versions[0].created, "{versions:?}");
    assert!(guard.is_held(), "renewed past the first TTL");

    // An operator breaks the lease: the holder finds out at its next renewal.
    assert_eq!(lease::break_lease(store.as_ref()).await.unwrap(), 1);
    let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost()).await.expect("loss noticed");
    assert!(matches!(&lost, NotHeld::Lost(why) if why.contains("disabled")), "{lost:?}");
    assert!(!guard.is_held() && guard.check().is_err());
    guard.release().await;

    // A vault that refuses every renewal: the hold lapses, then the lease is lost.
    let guard = lease::claim(store.clone(), "serve", timings).await.unwrap();
    let rule = ErrorRule { operation: Some(Operation::Update), rate: 1.0, fault: Injected::Status(503) };
    vault.set_faults(Faults { errors: vec![rule], ..Faults::default() }).unwrap();
    let refusing = Instant::now();
    while guard.is_held() {
        assert!(refusing.elapsed() < Duration::from_secs(5), "still held with every renewal refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lapsed = refusing.elapsed();
    assert!(matches!(guard.check(), Err(NotHeld::Lapsed(_))), "{:?}", guard.check());
    let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost()).await.expect("loss declared");
    assert!(matches!(&lost, NotHeld::Lost(why) if why.contains("no renewal succeeded")), "{lost:?}");
    vault.set_faults(Faults::default()).unwrap();
    println!(
        "renewals refused: lapsed after {:.1} s, lost after {:.1} s (TTL 3 s)",
        lapsed.as_secs_f64(),
        refusing.elapsed().as_secs_f64()
    );
    guard.release().await;
    vault.shutdown().await;
}
