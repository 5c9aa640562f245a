//! One engine per vault (`worker/src/lease.rs`), as operators run it: `serve` and
//! `rotate` as separate processes against one dev vault (run here, in the test process,
//! so it outlives every kill), with SIGKILLs and SIGTERMs; a second `serve` waiting in
//! standby (`worker/src/standby.rs`) and taking over; and the lease module itself
//! against simultaneous claims, a heartbeat, an operator breaking the lease and a vault
//! refusing renewals. Either only one engine runs, or the second is refused or waits.
//!
//! Size: ~630 lines, all tests: 9 of one engine per vault (7 through processes, 2 on the
//! lease module), and ~240 lines above them running the processes and their vault; each
//! file under tests/ is one more binary linking the whole worker.

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

/// A lease TTL for the standby tests: claims retried every 2 s (a quarter of it).
const STANDBY_TTL_MS: &str = "8000";
/// The claim interval that TTL gives.
const CLAIM_EVERY: Duration = Duration::from_secs(2);

/// Waits until the webhook answers (`Ok`) or the process exits (`Err`, with its status).
async fn started(proc: &mut Proc) -> Result<u16, ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = proc.exited() {
            return Err(status);
        }
        // The webhook listens on a port the OS picked (`listen = "127.0.0.1:0"`), logged.
        if let Some(addr) = proc.logged("webhook_addr") {
            if let Ok(r) = reqwest::get(format!("http://{addr}/healthz")).await {
                if r.status() == 200 {
                    return Ok(addr.port());
                }
            }
        }
        assert!(Instant::now() < deadline, "neither healthy nor exited within 60 s:\n{}", proc.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `url`: status and body.
async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (response.status().as_u16(), response.text().await.unwrap())
}

/// A `serve` whose admin listener is on a port of its own, to ask its `/readyz`.
struct Served {
    proc: Proc,
    port: u16,
    admin: u16,
}

impl Served {
    async fn readyz(&self) -> (u16, String) {
        get(&format!("http://127.0.0.1:{}/readyz", self.admin)).await
    }

    /// Waits until `/readyz` answers 200; panics after `within`.
    async fn wait_ready(&mut self, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            self.proc.assert_running();
            if self.readyz().await.0 == 200 {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "not ready within {within:?}: {:?}\n{}",
                self.readyz().await,
                self.proc.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs `body` as an Event Grid notification: status, `Retry-After`, body.
    async fn deliver(&self, body: &serde_json::Value) -> (u16, Option<String>, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/api/eventgrid", self.port))
            .header("aeg-event-type", "Notification")
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        (status, retry_after, response.json().await.unwrap_or(serde_json::Value::Null))
    }
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

    /// A configuration whose webhook listens on a port the OS picks (each `serve` logs
    /// its own); the sweeper only resumes journals, so a `serve` rotates nothing by itself.
    fn config(&self) -> String {
        let path = self.dir.path().join("kv-rotator.toml");
        let text = format!(
            "[vault]\nurl = \"{}\"\ntls_ca_file = \"{}\"\nconnect_to = \"{}\"\ncredential = {{ kind = \"dev-vault\" }}\n\
             [webhook]\nlisten = \"127.0.0.1:0\"\nauth = {{ mode = \"none\" }}\n\
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

    /// A `serve` with `env`; [`started`] learns its port.
    fn serve(&self, env: &[(&str, &str)]) -> Proc {
        spawn(&["serve", "--config", &self.config()], env)
    }

    /// A `serve` with its admin listener on a port of its own (the OS picks it: see
    /// [`Proc::spawn`]), once its webhook answers.
    async fn served(&self, env: &[(&str, &str)]) -> Served {
        let mut proc = self.serve(env);
        let port = started(&mut proc).await.unwrap_or_else(|s| panic!("serve exited {s}:\n{}", proc.output()));
        let admin = proc.logged_addr("admin_addr").await.port();
        Served { proc, port, admin }
    }

    /// A `SecretNearExpiry` delivery for `secret`'s latest version (event id `id`).
    async fn due_event(&self, secret: &str, id: &str) -> serde_json::Value {
        let latest = self.store.get_latest(secret).await.unwrap();
        let mut body = kv_rotator::cli::seed::near_expiry_delivery(
            "onevault",
            &self.vault.host(),
            secret,
            &latest.version,
            time::OffsetDateTime::now_utc(),
        );
        body[0]["id"] = id.into();
        body
    }

    /// Every secret but the lease, each version with what a write would change.
    async fn snapshot(&self) -> Vec<String> {
        let mut out = Vec::new();
        for secret in self.store.list_secrets().await.unwrap() {
            if secret.name == LEASE_SECRET {
                continue;
            }
            for v in self.store.list_versions(&secret.name).await.unwrap() {
                out.push(format!("{} {:?} {} {:?} {:?}", v.name, v.version, v.enabled, v.updated, v.tags));
            }
        }
        out.sort();
        out
    }

    /// `kv-rotator rotate ARGS` to its end.
    fn rotate(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["rotate", "--config", &self.config()])
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
        let req = VerifyRequest::new(user, password.clone());
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
async fn a_second_serve_waits_in_standby_then_takes_over_when_the_first_stops() {
    let env = [("KVR_LEASE_TTL_MS", STANDBY_TTL_MS)];
    let site = Site::new().await;
    let alpha = site.user("alpha-password", "alpha").await;
    let mut first = site.served(&env).await;
    first.wait_ready(Duration::from_secs(10)).await;
    let held = site.enabled_leases().await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].tags[TAG_PID], first.proc.pid());

    // The second: up (its webhook answered /healthz to `served`), not ready, naming the holder.
    let mut second = site.served(&env).await;
    let holder = format!("`kv-rotator serve` (pid {} on host", first.proc.pid());
    let (status, body) = second.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: standby: lease held by ") && body.contains(&holder), "{body}");
    assert_eq!(get(&format!("http://127.0.0.1:{}/healthz", second.admin)).await.0, 200);
    // A due event: 503 with Retry-After (the claim interval), the body naming no process.
    let event = site.due_event("alpha-password", "standby-event-1").await;
    let (status, retry_after, reply) = second.deliver(&event).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("2")), "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(error.starts_with("standby") && !error.contains("pid"), "{reply}");
    // Two claim intervals later: still waiting, nothing rotated, no claim written (the
    // holder's heartbeat is fresh, so every retry is refused before it writes).
    tokio::time::sleep(CLAIM_EVERY * 2).await;
    assert_eq!(second.readyz().await.0, 503);
    assert_eq!(site.store.list_versions("alpha-password").await.unwrap().len(), 1);
    assert_eq!(site.lease_versions().await.len(), 1, "a standby wrote a claim while the holder renewed");
    let output = second.proc.output();
    assert_eq!(output.matches("standby: another engine holds the engine lease").count(), 1, "logged once:\n{output}");
    assert!(output.contains(&holder), "{output}");

    // The holder stops: the standby takes over within a claim interval (+ jitter and the settle delay).
    let first_pid = first.proc.pid();
    first.proc.terminate();
    let stopped = Instant::now();
    let limit = CLAIM_EVERY.mul_f64(1.2) + Duration::from_millis(1500) + Duration::from_secs(3);
    second.wait_ready(limit).await;
    let took = stopped.elapsed();
    assert_eq!(second.readyz().await, (200, "ready".to_owned()));
    let live = site.enabled_leases().await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].tags[TAG_PID], second.proc.pid());
    // The event refused in standby, delivered again (same id: not taken for a duplicate), rotates.
    let (status, _, reply) = second.deliver(&event).await;
    assert_eq!((status, &reply["queued"]), (200, &serde_json::json!(1)), "{reply}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while site.store.list_versions("alpha-password").await.unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "not rotated:\n{}", second.proc.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let latest = site.store.get_latest("alpha-password").await.unwrap();
    assert!(site.logs_in("alpha", &latest.value).await && !site.logs_in("alpha", &alpha).await);
    let output = second.proc.output();
    assert_eq!(output.matches("standby over").count(), 1, "{output}");
    println!(
        "second serve: standby (readyz 503 naming pid {}, due event 503 + Retry-After 2), took over {:.1} s after \
         the holder's SIGTERM (claims every {CLAIM_EVERY:?}), then rotated the redelivered event",
        first_pid,
        took.as_secs_f64()
    );
    second.proc.terminate();
    assert!(site.enabled_leases().await.is_empty(), "SIGTERM releases the lease");
    site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_gets_sigterm_exits_promptly_and_wrote_nothing() {
    let env = [("KVR_LEASE_TTL_MS", STANDBY_TTL_MS)];
    let site = Site::new().await;
    site.user("alpha-password", "alpha").await;
    let first = site.served(&env).await;
    let before = site.snapshot().await;
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "kv_rotator=debug"));
    let second = site.served(&env).await;
    assert_eq!(second.readyz().await.0, 503);
    // A due event while waiting: refused, so nothing to finish at shutdown.
    let (status, _, _) = second.deliver(&site.due_event("alpha-password", "standby-event-2").await).await;
    assert_eq!(status, 503);
    // Let it retry its claim a few times.
    let deadline = Instant::now() + Duration::from_secs(20);
    while second.proc.output().matches("standby: another engine holds").count() < 3 {
        assert!(Instant::now() < deadline, "no claim retried:\n{}", second.proc.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = Instant::now();
    let (status, output) = second.proc.sigterm();
    let exited = sent.elapsed();
    assert!(status.success(), "{output}");
    assert!(exited < Duration::from_secs(3), "SIGTERM to exit took {exited:?}:\n{output}");
    assert!(output.contains("stopped in standby"), "{output}");
    for wrote in ["journal record written", "new version written", "engine lease claimed", "standby over"] {
        assert!(!output.contains(wrote), "{wrote:?} in:\n{output}");
    }
    // The vault as it was, but for the holder's own heartbeats.
    assert_eq!(site.snapshot().await, before);
    let leases = site.lease_versions().await;
    assert!(leases.iter().all(|v| v.tags[TAG_PID] == first.proc.pid()), "{leases:?}");
    let retries = output.matches("standby: another engine holds").count() - 1;
    println!("standby SIGTERMed after {retries} claim retries: exited in {:.2} s, wrote nothing", exited.as_secs_f64());
    first.proc.terminate();
    site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_standbys_one_takes_over_and_the_other_waits_naming_it() {
    let env = [("KVR_LEASE_TTL_MS", STANDBY_TTL_MS)];
    let site = Site::new().await;
    let first = site.served(&env).await;
    let mut standbys = vec![site.served(&env).await, site.served(&env).await];
    for standby in &standbys {
        assert_eq!(standby.readyz().await.0, 503);
    }
    first.proc.terminate();
    let stopped = Instant::now();
    let (winner, loser) = loop {
        let ready = [standbys[0].readyz().await.0 == 200, standbys[1].readyz().await.0 == 200];
        match ready {
            [true, true] => panic!("both standbys took over"),
            [true, false] => break (standbys.remove(0), standbys.remove(0)),
            [false, true] => break (standbys.remove(1), standbys.remove(0)),
            [false, false] => {}
        }
        assert!(stopped.elapsed() < Duration::from_secs(15), "no takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = stopped.elapsed();
    // A few claim intervals: the other keeps waiting, now naming the new holder.
    tokio::time::sleep(CLAIM_EVERY * 3).await;
    let (status, body) = loser.readyz().await;
    let holder = format!("`kv-rotator serve` (pid {} on host", winner.proc.pid());
    assert!(status == 503 && body.contains(&holder), "{status} {body}");
    assert_eq!(winner.readyz().await.0, 200);
    let live = site.enabled_leases().await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].tags[TAG_PID], winner.proc.pid());
    let claims = site.lease_versions().await.len() - 1;
    println!(
        "two standbys: one took over {:.1} s after the holder's SIGTERM, the other waits naming it; \
         {claims} claim(s) written in all",
        took.as_secs_f64()
    );
    loser.proc.terminate();
    winner.proc.terminate();
    site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_standby_off_a_second_serve_is_refused_naming_the_first() {
    let site = Site::new().await;
    let mut first = site.serve(&[]);
    started(&mut first).await.unwrap_or_else(|s| panic!("first serve exited {s}:\n{}", first.output()));
    let held = site.enabled_leases().await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].tags[TAG_PID], first.pid());

    let mut second = site.serve(&[("KV_ROTATOR_LEASE__STANDBY", "false")]);
    let status = started(&mut second).await.expect_err("the second serve must be refused");
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
    started(&mut first).await.unwrap();
    first.terminate();
    assert!(site.enabled_leases().await.is_empty(), "SIGTERM releases the lease");
    site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_all_beside_serve_is_refused_and_rotates_nothing_unless_allowed() {
    let site = Site::new().await;
    let alpha = site.user("alpha-password", "alpha").await;
    let beta = site.user("beta-password", "beta").await;
    let mut serve = site.serve(&[]);
    started(&mut serve).await.unwrap_or_else(|s| panic!("serve exited {s}:\n{}", serve.output()));

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
async fn after_a_sigkill_a_standby_successor_takes_over_once_the_heartbeat_is_a_ttl_old() {
    const TTL_S: i64 = 4;
    let env = [("KVR_LEASE_TTL_MS", "4000")];
    let site = Site::new().await;
    site.user("alpha-password", "alpha").await;
    let mut holder = site.served(&env).await;
    holder.wait_ready(Duration::from_secs(10)).await;
    let dead_pid = holder.proc.pid();
    let dead_id = site.enabled_leases().await[0].tags[TAG_HOLDER].clone();
    // A few heartbeats (every TTL/4 = 1 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    holder.proc.sigkill();
    let killed = Instant::now();

    let out = site.rotate(&["--all"]);
    assert!(!out.status.success() && text(&out).contains(&format!("pid {dead_pid} ")), "{}", text(&out));
    assert_eq!(site.store.list_versions("alpha-password").await.unwrap().len(), 1);

    // The successor waits in standby, naming the dead holder, until its lease lapses.
    let mut successor = site.served(&env).await;
    let (status, body) = successor.readyz().await;
    assert!(status == 503 && body.contains(&format!("pid {dead_pid} ")), "{status} {body}");
    successor.wait_ready(Duration::from_secs(30)).await;
    let took_over = killed.elapsed();
    // In the service's time: the successor's claim came more than a TTL (plus the
    // allowance) after the dead holder's last heartbeat.
    let versions = site.lease_versions().await;
    let dead = versions.iter().find(|v| v.tags[TAG_HOLDER] == dead_id).unwrap();
    let renewals: u64 = dead.tags["kv-rotator-lease-renewals"].parse().unwrap();
    let live = site.enabled_leases().await;
    assert_eq!(live.len(), 2, "the dead holder's version and the successor's");
    let new = live.iter().find(|v| v.tags[TAG_PID] == successor.proc.pid()).expect("the successor holds");
    let gap = (new.created.unwrap() - dead.updated.unwrap()).whole_seconds();
    assert!(gap > TTL_S + 2, "taken over {gap} s after the last heartbeat");
    // Claims written while the dead holder still counted were refused and disabled.
    let refused = versions.iter().filter(|v| v.tags[TAG_PID] == successor.proc.pid() && !v.enabled).count();
    println!(
        "SIGKILL of the holder after {renewals} heartbeats: rotate --all refused, the standby successor wrote \
         {refused} refused claim(s) and took over {:.1} s after the kill, {gap} s after the last heartbeat \
         (TTL {TTL_S} s + 2 s allowance)",
        took_over.as_secs_f64()
    );
    successor.proc.terminate();
    site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_sigterm_releases_the_lease_at_once() {
    // The default TTL (60 s): only a release lets the successor in within the test.
    let site = Site::new().await;
    let mut first = site.serve(&[]);
    started(&mut first).await.unwrap_or_else(|s| panic!("serve exited {s}:\n{}", first.output()));
    let output = first.terminate();
    assert!(output.contains("engine lease released"), "{output}");
    let stopped = Instant::now();
    assert!(site.enabled_leases().await.is_empty());

    let mut next = site.serve(&[]);
    started(&mut next).await.unwrap_or_else(|s| panic!("successor refused {s}:\n{}", next.output()));
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
