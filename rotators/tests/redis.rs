//! The Redis rotator against the real server on 127.0.0.1:6379 (and its TLS port 6380,
//! which `scripts/setup-redis.sh` opens with a certificate from its own test CA), and
//! against servers these tests start themselves with an ACL file (the machine's server
//! keeps nothing on disk).
//!
//! The machine's `default` user has no password: the fixture administers through it.
//! Test users are named `kvr_t_<random>…` and deleted by a guard, also when a test fails.
//!
//! Size: ~830 lines, all tests: 18 of one rotator against one server (and servers started
//! here), sharing the ~175 lines of guard and fixtures above them; a second file would be
//! one more test binary, needing that setup again.
#![cfg(feature = "redis")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_lc_rs::digest::{digest, SHA256};
use common::{request, verify};
use kv_rotator_rotators::redis::{AclSave, RedisConfig, RedisRotator, TlsMode};
use kv_rotator_rotators::testkit::{contains_secret, run_conformance, ConformanceFixture};
use kv_rotator_rotators::{Credential, PasswordPolicy, Rotator, RotatorError, SetPasswordOutcome, VerifyResponse};
use redis::aio::MultiplexedConnection;
use secrecy::{ExposeSecret, SecretString};

const HOST: &str = "127.0.0.1";
const PORT: u16 = 6379;
const TLS_PORT: u16 = 6380;
const SETUP_HINT: &str = "run `sudo scripts/setup-redis.sh` (TLS on port 6380 with a test CA)";

/// SHA-256 hex, computed here rather than taken from the crate.
fn hash_of(password: &SecretString) -> String {
    hex::encode(digest(&SHA256, password.expose_secret().as_bytes()).as_ref())
}

async fn admin_connection(port: u16) -> MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{HOST}:{port}/")).unwrap();
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to Redis at {HOST}:{port}: {e}; is it running?"))
}

async fn acl(conn: &mut MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd("ACL");
    for arg in args {
        cmd.arg(*arg);
    }
    cmd.query_async(conn).await.unwrap_or_else(|e| panic!("ACL {}: {e}", args[0]))
}

/// Deletes every registered user when the test ends, passed or failed.
struct UserGuard {
    port: u16,
    users: Mutex<Vec<String>>,
}

impl UserGuard {
    fn new(port: u16) -> Arc<Self> {
        Arc::new(Self { port, users: Mutex::new(Vec::new()) })
    }
    fn register(&self, name: &str) {
        self.users.lock().unwrap().push(name.to_owned());
    }
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        let users = std::mem::take(&mut *self.users.lock().unwrap_or_else(|p| p.into_inner()));
        if users.is_empty() {
            return;
        }
        let port = self.port;
        common::cleanup_on_own_thread("test users", move || async move {
            let Ok(client) = redis::Client::open(format!("redis://{HOST}:{port}/")) else { return };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return };
            for user in &users {
                let deleted: redis::RedisResult<redis::Value> =
                    redis::cmd("ACL").arg("DELUSER").arg(user).query_async(&mut conn).await;
                if let Err(e) = deleted {
                    eprintln!("cleanup: could not delete user {user:?}: {e}");
                }
            }
        });
    }
}

fn prefix() -> String {
    format!("kvr_t_{:08x}", rand::random::<u32>())
}

fn policy() -> PasswordPolicy {
    PasswordPolicy::default()
}

fn rotator_with(adjust: impl FnOnce(&mut RedisConfig)) -> RedisRotator {
    let mut cfg = RedisConfig::new(HOST);
    cfg.port = PORT;
    cfg.tls = TlsMode::Disable;
    // The machine's server has no ACL file (tests that need one start their own).
    cfg.acl_save = AclSave::Never;
    adjust(&mut cfg);
    RedisRotator::new(cfg, policy()).unwrap()
}

fn rotator() -> RedisRotator {
    rotator_with(|_| {})
}

/// Rules a user may change its own password with.
const SELF_CHANGE: &str = "+acl|setuser +acl|getuser";

async fn create_user(
    conn: &mut MultiplexedConnection,
    guard: &UserGuard,
    name: &str,
    password: &SecretString,
    rules: &str,
) {
    guard.register(name);
    let hash = format!("#{}", hash_of(password));
    let mut args = vec!["SETUSER", name, "reset", "on", hash.as_str()];
    args.extend(rules.split_whitespace());
    acl(conn, &args).await;
}

async fn create_admin(conn: &mut MultiplexedConnection, guard: &UserGuard, name: &str) -> Credential {
    let admin = Credential::new(name, policy().generate());
    create_user(conn, guard, name, &admin.password, "+acl +config|get +ping").await;
    admin
}

/// The user's `ACL LIST` line.
async fn acl_line(conn: &mut MultiplexedConnection, name: &str) -> String {
    let lines: Vec<String> = redis::cmd("ACL").arg("LIST").query_async(conn).await.unwrap();
    lines.into_iter().find(|l| l.starts_with(&format!("user {name} "))).unwrap_or_default()
}

struct RedisFixture {
    conn: MultiplexedConnection,
    guard: Arc<UserGuard>,
    prefix: String,
    admin: Credential,
    next: usize,
}

#[async_trait]
impl ConformanceFixture for RedisFixture {
    async fn create_user(&mut self, password: &SecretString) -> Result<String, String> {
        self.next += 1;
        let name = format!("{}_u{}", self.prefix, self.next);
        create_user(&mut self.conn, &self.guard, &name, password, &format!("~kvr:* +get +set {SELF_CHANGE}")).await;
        Ok(name)
    }

    fn admin(&self) -> Option<Credential> {
        Some(self.admin.clone())
    }
}

async fn setup() -> (MultiplexedConnection, Arc<UserGuard>, String) {
    (admin_connection(PORT).await, UserGuard::new(PORT), prefix())
}

async fn conformance(rotator: RedisRotator) {
    let (mut conn, guard, prefix) = setup().await;
    let admin = create_admin(&mut conn, &guard, &format!("{prefix}_admin")).await;
    let mut fixture = RedisFixture { conn, guard: Arc::clone(&guard), prefix, admin, next: 0 };
    let report = run_conformance(&rotator, &mut fixture).await.unwrap_or_else(|e| panic!("conformance: {e}"));
    println!("{report}");
    assert!(report.skipped.is_empty(), "redis must run every check: {report}");
}

#[tokio::test]
async fn redis_passes_multi_password_conformance() {
    let (mut conn, guard, prefix) = setup().await;
    let admin = create_admin(&mut conn, &guard, &format!("{prefix}_admin")).await;
    let mut fixture = RedisFixture { conn, guard: Arc::clone(&guard), prefix, admin, next: 0 };
    let rotator = rotator().with_multi_password();
    let report = kv_rotator_rotators::testkit::run_multi_password_conformance(&rotator, &mut fixture)
        .await
        .unwrap_or_else(|e| panic!("multi-password conformance: {e}"));
    println!("{report}");
}

#[tokio::test]
async fn redis_passes_conformance() {
    conformance(rotator()).await;
}

/// Forwards connections on `listen_ip` to `port`, recording what clients send.
async fn recording_forwarder(listen_ip: &str, port: u16) -> (u16, Arc<Mutex<Vec<u8>>>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind((listen_ip, 0)).await.unwrap();
    let local = listener.local_addr().unwrap().port();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn({
        let sent = Arc::clone(&sent);
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (inbound, _) = listener.accept().await.unwrap();
                let sent = Arc::clone(&sent);
                tokio::spawn(async move {
                    let outbound = tokio::net::TcpStream::connect((HOST, port)).await.unwrap();
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    let up = async move {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = in_read.read(&mut buf).await {
                            if n == 0 || out_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            sent.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
                    };
                    tokio::join!(up, down);
                });
            }
        }
    });
    (local, sent, task)
}

#[tokio::test]
async fn only_hashes_are_sent_and_the_other_acl_rules_stay() {
    let (mut conn, guard, prefix) = setup().await;
    let user = format!("{prefix}_rules");
    let p0 = policy().generate();
    let rules = "~app:* %R~ro:* &news:* +@read +set -flushall resetchannels &alerts";
    create_user(&mut conn, &guard, &user, &p0, rules).await;
    acl(&mut conn, &["SETUSER", &user, "(~other:* +get)"]).await; // a selector
    let admin = create_admin(&mut conn, &guard, &format!("{prefix}_admin")).await;
    let before = acl_line(&mut conn, &user).await;
    assert!(before.contains(&hash_of(&p0)), "{before}");

    let (port, sent, task) = recording_forwarder(HOST, PORT).await;
    let rotator = rotator_with(|cfg| cfg.port = port);
    let p1 = policy().generate();
    let mut req = request(&user, &p1, &policy().generate());
    req.admin = Some(admin);
    assert_eq!(rotator.set_password(req).await.unwrap().outcome, SetPasswordOutcome::ChangedWithAdmin);
    task.abort();

    let after = acl_line(&mut conn, &user).await;
    assert_eq!(after.replace(&hash_of(&p1), &hash_of(&p0)), before, "only the password changed");
    // On the wire: the new password in plain only after AUTH (logging in has no other
    // form); the change itself carried the hash.
    let sent = sent.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&sent);
    assert!(text.contains("resetpass") && text.contains(&format!("#{}", hash_of(&p1))), "no hashed SETUSER sent");
    let plain = p1.expose_secret();
    let mut seen = 0;
    for (at, _) in text.match_indices(plain) {
        seen += 1;
        let command_start = text[..at].rfind('*').unwrap();
        assert!(
            text[command_start..at].contains("AUTH"),
            "the plain password outside AUTH: {}",
            &text[command_start..at]
        );
    }
    assert!(seen > 0, "the new password never logged in through the forwarder");
}

#[tokio::test]
async fn a_user_without_acl_rights_is_changed_by_the_admin() {
    let (mut conn, guard, prefix) = setup().await;
    let user = format!("{prefix}_plain");
    let p0 = policy().generate();
    create_user(&mut conn, &guard, &user, &p0, "~app:* +get").await;
    let p1 = policy().generate();
    let err = rotator().set_password(request(&user, &p1, &p0)).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("may not read ACLs") && text.contains("no admin credential configured"), "{text}");
    assert_eq!(rotator().verify(verify(&user, &p0)).await.unwrap(), VerifyResponse::Accepted, "unchanged");
    let mut req = request(&user, &p1, &p0);
    req.admin = Some(create_admin(&mut conn, &guard, &format!("{prefix}_admin")).await);
    assert_eq!(rotator().set_password(req).await.unwrap().outcome, SetPasswordOutcome::ChangedWithAdmin);
    assert_eq!(rotator().verify(verify(&user, &p0)).await.unwrap(), VerifyResponse::Rejected);
}

#[tokio::test]
async fn a_user_that_takes_any_password_is_no_proof() {
    // The machine's default user has nopass: every password "works".
    let _ = setup().await;
    let err = rotator().verify(verify("default", &policy().generate())).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("accepted a random password too"), "{err}");
}

#[tokio::test]
async fn missing_and_disabled_users_are_permanent_and_nothing_is_created() {
    let (mut conn, guard, prefix) = setup().await;
    let admin = create_admin(&mut conn, &guard, &format!("{prefix}_admin")).await;
    let ghost = format!("{prefix}_ghost");
    let mut req = request(&ghost, &policy().generate(), &policy().generate());
    req.admin = Some(admin.clone());
    let err = rotator().set_password(req).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)) && err.to_string().contains("no such user"), "{err:?}");
    assert_eq!(acl(&mut conn, &["GETUSER", &ghost]).await, redis::Value::Nil, "the user was created");

    let off = format!("{prefix}_off");
    let p0 = policy().generate();
    create_user(&mut conn, &guard, &off, &p0, "+get").await;
    acl(&mut conn, &["SETUSER", &off, "off"]).await;
    assert_eq!(rotator().verify(verify(&off, &p0)).await.unwrap(), VerifyResponse::Rejected);
    let before = acl_line(&mut conn, &off).await;
    let mut req = request(&off, &policy().generate(), &p0);
    req.admin = Some(admin);
    let err = rotator().set_password(req).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)) && err.to_string().contains("the user is off"), "{err:?}");
    assert_eq!(acl_line(&mut conn, &off).await, before, "nothing changed");
}

#[tokio::test]
async fn acl_save_required_refuses_a_server_without_an_acl_file() {
    let (mut conn, guard, prefix) = setup().await;
    let user = format!("{prefix}_nosave");
    let p0 = policy().generate();
    create_user(&mut conn, &guard, &user, &p0, "+get").await;
    let mut req = request(&user, &policy().generate(), &p0);
    req.admin = Some(create_admin(&mut conn, &guard, &format!("{prefix}_admin")).await);
    let before = acl_line(&mut conn, &user).await;
    let err = rotator_with(|cfg| cfg.acl_save = AclSave::Required).set_password(req).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("no ACL file") && err.to_string().contains("acl_save = \"never\""), "{err}");
    assert_eq!(acl_line(&mut conn, &user).await, before, "nothing changed");
}

/// A Redis server of the test's own, with an ACL file, killed when dropped.
struct OwnServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl OwnServer {
    async fn start(dir: tempfile::TempDir, users: &str) -> Self {
        let aclfile = dir.path().join("acl").join("users.acl");
        std::fs::create_dir_all(aclfile.parent().unwrap()).unwrap();
        if !aclfile.exists() {
            std::fs::write(&aclfile, users).unwrap();
        }
        let port = common::unused_port(HOST);
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", HOST, "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--aclfile")
            .arg(&aclfile)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect((HOST, port)).await.is_err() {
            assert!(Instant::now() < deadline, "own redis-server did not start on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, port, dir }
    }

    fn aclfile(&self) -> PathBuf {
        self.dir.path().join("acl").join("users.acl")
    }

    async fn restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        OwnServer::start(dir, "").await
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// An own server with an ACL file: admin `kvr_admin` (returned) and user `app` with
/// `app_rules` and the password returned.
async fn server_with_app(app_rules: &str) -> (OwnServer, Credential, SecretString) {
    let admin = Credential::new("kvr_admin", policy().generate());
    let p0 = policy().generate();
    let users = format!(
        "user default off\nuser kvr_admin on #{} +acl +config|get\nuser app on #{} {app_rules}\n",
        hash_of(&admin.password),
        hash_of(&p0)
    );
    (OwnServer::start(tempfile::tempdir().unwrap(), &users).await, admin, p0)
}

/// A rotator for an own server, saving every change.
fn on(port: u16) -> RedisRotator {
    rotator_with(|cfg| {
        cfg.port = port;
        cfg.acl_save = AclSave::Required;
    })
}

#[tokio::test]
async fn changes_are_saved_to_the_acl_file_and_survive_a_restart() {
    let (server, admin, p0) = server_with_app("~app:* +get").await;
    let p1 = policy().generate();
    let mut req = request("app", &p1, &policy().generate());
    req.admin = Some(admin.clone());
    assert_eq!(on(server.port).set_password(req).await.unwrap().outcome, SetPasswordOutcome::ChangedWithAdmin);
    let saved = read(&server.aclfile());
    assert!(saved.contains(&hash_of(&p1)) && !saved.contains(&hash_of(&p0)), "{saved}");
    assert!(!contains_secret(&saved, &p1));

    let server = server.restart().await;
    assert_eq!(on(server.port).verify(verify("app", &p1)).await.unwrap(), VerifyResponse::Accepted);
    assert_eq!(on(server.port).verify(verify("app", &p0)).await.unwrap(), VerifyResponse::Rejected);
}

/// The WARN events logged on this thread while it is the default subscriber.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0 += &format!("{}={value:?} ", field.name());
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A save that fails after the change does not undo it: the old password is refused
/// already, so the outcome stands (Key Vault must get the new one) and the failure is a
/// warning. A retry that finds the pending password in force saves again.
#[tokio::test]
async fn a_failed_save_is_still_a_change_and_a_retry_saves_again() {
    let warnings = Warnings::default();
    let _logs = tracing::subscriber::set_default(warnings.clone());
    let (server, admin, p0) = server_with_app(&format!("~app:* +get {SELF_CHANGE} +config|get")).await;
    let p1 = policy().generate();
    // The user changes its own password but may not save (+acl|save): the admin saves.
    let mut req = request("app", &p1, &p0);
    req.admin = Some(admin.clone());
    let acl_dir = server.aclfile().parent().unwrap().to_owned();
    let moved = server.dir.path().join("acl.moved");
    let no_secret = |text: &str| {
        for secret in [&p0, &p1, &admin.password] {
            assert!(!contains_secret(text, secret), "{text}");
            assert!(!text.contains(&hash_of(secret)), "{text}");
        }
    };

    // The save fails (its directory is gone: a full disk, a read-only mount…).
    std::fs::rename(&acl_dir, &moved).unwrap();
    let first = on(server.port).set_password(req.clone()).await.unwrap();
    assert_eq!(first.outcome, SetPasswordOutcome::ChangedWithCurrent, "a change, for the engine to finish");
    assert_eq!(on(server.port).verify(verify("app", &p0)).await.unwrap(), VerifyResponse::Rejected);
    let logged = warnings.take();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].contains("NOT saved") && logged[0].contains("user=\"app\""), "{logged:?}");
    assert!(logged[0].contains(&format!("{HOST}:{}", server.port)), "{logged:?}");
    assert!(logged[0].contains("may not save ACLs"), "the user may not, the admin tried: {logged:?}");
    no_secret(&logged[0]);

    // Still failing at the retry: AlreadySet, warned again.
    assert_eq!(on(server.port).set_password(req.clone()).await.unwrap().outcome, SetPasswordOutcome::AlreadySet);
    let logged = warnings.take();
    assert_eq!(logged.len(), 1, "{logged:?}");
    no_secret(&logged[0]);

    // The disk recovers: the retry saves, and a restart keeps the new password.
    std::fs::rename(&moved, &acl_dir).unwrap();
    assert!(!read(&server.aclfile()).contains(&hash_of(&p1)));
    assert_eq!(on(server.port).set_password(req.clone()).await.unwrap().outcome, SetPasswordOutcome::AlreadySet);
    assert!(warnings.take().is_empty());
    let saved = read(&server.aclfile());
    assert!(saved.contains(&hash_of(&p1)) && !saved.contains(&hash_of(&p0)), "{saved}");
    let server = server.restart().await;
    assert_eq!(on(server.port).verify(verify("app", &p1)).await.unwrap(), VerifyResponse::Accepted);
    assert_eq!(on(server.port).verify(verify("app", &p0)).await.unwrap(), VerifyResponse::Rejected);

    // With acl_save = "never", nothing is saved and nothing is said.
    let p2 = policy().generate();
    let mut req = request("app", &p2, &p1);
    req.admin = Some(admin);
    let never = rotator_with(|cfg| cfg.port = server.port);
    assert_eq!(never.set_password(req.clone()).await.unwrap().outcome, SetPasswordOutcome::ChangedWithCurrent);
    assert_eq!(never.set_password(req).await.unwrap().outcome, SetPasswordOutcome::AlreadySet);
    assert!(!read(&server.aclfile()).contains(&hash_of(&p2)));
    assert!(warnings.take().is_empty());
}

// ---- TLS (the setup script opens port 6380 with a certificate from its own test CA) ----

fn test_ca() -> PathBuf {
    let path = std::env::var_os("KVR_TEST_REDIS_CA")
        .map(Into::into)
        .unwrap_or_else(|| PathBuf::from("/var/lib/redis/kvr-test-tls/ca.pem"));
    assert!(path.is_file(), "no test CA at {}: {SETUP_HINT}", path.display());
    path
}

fn tls_rotator(adjust: impl FnOnce(&mut RedisConfig)) -> RedisRotator {
    rotator_with(|cfg| {
        cfg.port = TLS_PORT;
        cfg.tls = TlsMode::VerifyFull;
        cfg.tls_ca_file = Some(test_ca());
        adjust(cfg);
    })
}

#[tokio::test]
async fn redis_passes_conformance_over_verify_full_tls() {
    conformance(tls_rotator(|_| {})).await;
}

#[tokio::test]
async fn certificates_are_checked_and_refusals_are_permanent() {
    let (mut conn, guard, prefix) = setup().await;
    let user = format!("{prefix}_tls");
    let p0 = policy().generate();
    create_user(&mut conn, &guard, &user, &p0, "+get").await;
    let dir = tempfile::tempdir().unwrap();
    let permanent = |err: RotatorError, want: &str| {
        assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
        assert!(err.to_string().contains(want), "{err}");
        assert!(!contains_secret(&err.to_string(), &p0));
    };
    for mode in [TlsMode::VerifyFull, TlsMode::VerifyCa] {
        let wrong = tls_rotator(|cfg| {
            cfg.tls = mode;
            cfg.tls_ca_file = Some(common::other_ca(dir.path()));
        });
        permanent(wrong.verify(verify(&user, &p0)).await.unwrap_err(), "UnknownIssuer");
    }
    // A port that answers in plain text under a TLS mode: no handshake, no AUTH.
    let listener = tokio::net::TcpListener::bind((HOST, 0)).await.unwrap();
    let plain_port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let plain = tokio::spawn({
        let got = Arc::clone(&got);
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let n = socket.read(&mut buf).await.unwrap();
            got.lock().unwrap().extend_from_slice(&buf[..n]);
            let _ = socket.write_all(b"-ERR unknown command\r\n").await;
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    let err = tls_rotator(|cfg| cfg.port = plain_port).verify(verify(&user, &p0)).await.unwrap_err();
    permanent(err, "no TLS handshake");
    let _ = tokio::time::timeout(Duration::from_secs(2), plain).await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.first(), Some(&0x16), "a TLS ClientHello first");
    assert!(!got.windows(4).any(|w| w == b"AUTH"), "AUTH sent without TLS");

    // By a name the certificate does not carry: verify-full refuses, verify-ca and
    // tls_server_name accept.
    let (port, _, task) = recording_forwarder("127.0.0.2", TLS_PORT).await;
    let by = |mode: TlsMode, name: Option<&str>| {
        tls_rotator(|cfg| {
            cfg.host = "127.0.0.2".into();
            cfg.port = port;
            cfg.tls = mode;
            cfg.tls_server_name = name.map(str::to_owned);
        })
    };
    permanent(by(TlsMode::VerifyFull, None).verify(verify(&user, &p0)).await.unwrap_err(), "not valid for name");
    assert_eq!(by(TlsMode::VerifyCa, None).verify(verify(&user, &p0)).await.unwrap(), VerifyResponse::Accepted);
    let named = by(TlsMode::VerifyFull, Some("localhost"));
    assert_eq!(named.verify(verify(&user, &p0)).await.unwrap(), VerifyResponse::Accepted);
    task.abort();
}

// ---- failures of the network ----

#[tokio::test]
async fn refused_connection_is_transient() {
    let port = common::unused_port(HOST);
    let rotator = rotator_with(|cfg| cfg.port = port);
    let err = rotator.verify(verify("nobody", &policy().generate())).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains(&format!("{HOST}:{port}")), "{err}");
    let err = rotator.set_password(request("nobody", &policy().generate(), &policy().generate())).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn silent_server_times_out_as_transient() {
    let (port, server) = common::silent_server(HOST).await;
    let started = Instant::now();
    let rotator = rotator_with(|cfg| {
        cfg.port = port;
        cfg.connect_timeout_secs = 1;
    });
    let err = rotator.verify(verify("nobody", &policy().generate())).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("no answer within 1s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    server.abort();
}

// ---- what a hostile server says ----

/// The RESP array frames in `bytes`, as lists of their bulk strings.
fn frames(bytes: &[u8]) -> Vec<Vec<String>> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split("\r\n");
    let mut all = Vec::new();
    while let Some(head) = lines.next() {
        let Some(n) = head.strip_prefix('*').and_then(|n| n.parse::<usize>().ok()) else { continue };
        let parts: Vec<String> = (0..n).filter_map(|_| lines.nth(1).map(str::to_owned)).collect();
        all.push(parts);
    }
    all
}

/// A server that takes `password` for `user` (and refuses every other `AUTH`), and
/// answers every other command with `-{reply(command's arguments)}`.
async fn scripted_server(
    user: &'static str,
    password: SecretString,
    reply: fn(&[String]) -> String,
) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((HOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let password = password.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    for frame in frames(&buf[..n]) {
                        let answer = match frame.first().map(String::as_str) {
                            Some("AUTH") if frame[1] == user && frame[2] == password.expose_secret() => {
                                "+OK".to_owned()
                            }
                            Some("AUTH") => "-WRONGPASS invalid username-password pair".to_owned(),
                            _ => format!("-{}", reply(&frame)),
                        };
                        if socket.write_all(format!("{answer}\r\n").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, task)
}

/// A reply echoing the password across the 200-character cut: scrubbed before the cut,
/// nothing of it is left; and a server's line break or terminal escape is escaped.
#[tokio::test]
async fn echoed_passwords_are_scrubbed_before_the_cut_and_server_text_is_escaped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((HOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = socket.read(&mut buf).await.unwrap();
            let password = frames(&buf[..n])[0][2].clone();
            // The cut would fall 20 characters into the password.
            let pad = "x".repeat(200 - 5 - 20);
            let reply = format!("-ERR {pad}{password} \n2026-01-01 INFO forged\x1b[2J\r\n");
            socket.write_all(reply.as_bytes()).await.unwrap();
        }
    });
    let rotator = rotator_with(|cfg| cfg.port = port);
    let password = policy().generate();
    let err = rotator.verify(verify("app", &password)).await.unwrap_err().to_string();
    server.abort();
    assert!(!err.contains(&password.expose_secret()[..8]), "{err}");
    assert!(!err.contains(['\n', '\x1b']), "{err:?}");
    assert!(err.contains("ERR xxx"), "{err}");
}

/// Errors of commands (after the login) are escaped too, and so are user names (a
/// control character in one is refused before anything is sent).
#[tokio::test]
async fn command_errors_and_user_names_are_escaped() {
    let current = policy().generate();
    let (port, server) = scripted_server("app\"evil", current.clone(), |frame| {
        format!("ERR no {} today\n2026-01-01 INFO forged\x1b[2J", frame.join(" "))
    })
    .await;
    let rotator = rotator_with(|cfg| cfg.port = port);
    let err = rotator.set_password(request("app\"evil", &policy().generate(), &current)).await.unwrap_err().to_string();
    server.abort();
    assert!(!err.contains(['\n', '\x1b']), "{err:?}");
    assert!(err.contains(r#"no ACL GETUSER app\"evil today\n2026"#), "the server's text, escaped: {err}");
    assert!(err.contains(r#"user "app\"evil" with its current password"#), "{err}");
}

fn retire(user: &str, keep: &SecretString, also_keep: &[&SecretString]) -> kv_rotator_rotators::RetirePasswordsRequest {
    kv_rotator_rotators::RetirePasswordsRequest::new(user, keep.clone())
        .with_also_keep(also_keep.iter().map(|p| (*p).clone()).collect())
}

/// Multi-password: the new password is added, the old one keeps working until it is
/// retired, and then only the new one logs in. Retiring again finds nothing to remove.
#[tokio::test]
async fn multi_password_keeps_the_old_password_until_it_is_retired() {
    let (mut conn, guard, prefix) = setup().await;
    let user = format!("{prefix}_multi");
    let p0 = policy().generate();
    create_user(&mut conn, &guard, &user, &p0, &format!("~kvr:* +get {SELF_CHANGE}")).await;
    let multi = rotator().with_multi_password();
    let p1 = policy().generate();
    assert_eq!(
        multi.set_password(request(&user, &p1, &p0)).await.unwrap().outcome,
        SetPasswordOutcome::ChangedWithCurrent
    );
    for (password, what) in [(&p0, "old"), (&p1, "new")] {
        assert_eq!(multi.verify(verify(&user, password)).await.unwrap(), VerifyResponse::Accepted, "{what} password");
    }
    // The other rules stay, and only hashes are in the ACL.
    let line = acl_line(&mut conn, &user).await;
    assert!(line.contains(&hash_of(&p0)) && line.contains(&hash_of(&p1)) && line.contains("~kvr:*"), "{line}");

    let done = multi.retire_passwords(retire(&user, &p1, &[])).await.unwrap();
    assert_eq!(done.removed, 1);
    assert_eq!(multi.verify(verify(&user, &p0)).await.unwrap(), VerifyResponse::Rejected, "old password retired");
    assert_eq!(multi.verify(verify(&user, &p1)).await.unwrap(), VerifyResponse::Accepted, "new password stays");
    let again = multi.retire_passwords(retire(&user, &p1, &[])).await.unwrap();
    assert_eq!(again.removed, 0, "a repeated retirement (after a crash) finds nothing left");
    // Named in also_keep too, the current one is still kept.
    assert_eq!(multi.retire_passwords(retire(&user, &p1, &[&p1])).await.unwrap().removed, 0);
    assert_eq!(multi.verify(verify(&user, &p1)).await.unwrap(), VerifyResponse::Accepted);
}

/// Nothing is retired unless the password consumers use now logs in: they may still
/// depend on an old one. A user without ACL rights has its passwords retired by the admin.
#[tokio::test]
async fn retirement_needs_a_working_current_password_and_falls_back_to_the_admin() {
    let (mut conn, guard, prefix) = setup().await;
    let user = format!("{prefix}_plainmulti");
    let (p0, p1) = (policy().generate(), policy().generate());
    create_user(&mut conn, &guard, &user, &p0, "~app:* +get").await;
    acl(&mut conn, &["SETUSER", &user, &format!("#{}", hash_of(&p1))]).await;
    let multi = rotator().with_multi_password();
    let stranger = policy().generate();
    let err = multi.retire_passwords(retire(&user, &stranger, &[])).await.unwrap_err();
    assert!(
        matches!(err, RotatorError::Permanent(_)) && err.to_string().contains("no older password is retired"),
        "{err}"
    );
    assert_eq!(multi.verify(verify(&user, &p0)).await.unwrap(), VerifyResponse::Accepted, "nothing removed");

    let err = multi.retire_passwords(retire(&user, &p1, &[])).await.unwrap_err();
    assert!(err.to_string().contains("may not change ACLs") && err.to_string().contains("no admin"), "{err}");
    let mut req = retire(&user, &p1, &[]);
    req.admin = Some(create_admin(&mut conn, &guard, &format!("{prefix}_admin")).await);
    assert_eq!(multi.retire_passwords(req.clone()).await.unwrap().removed, 1);
    assert_eq!(multi.verify(verify(&user, &p0)).await.unwrap(), VerifyResponse::Rejected);
    assert_eq!(multi.verify(verify(&user, &p1)).await.unwrap(), VerifyResponse::Accepted);
    for text in [format!("{err:?}"), err.to_string(), format!("{req:?}")] {
        for secret in [&p0, &p1, &stranger] {
            assert!(!contains_secret(&text, secret), "a password in {text}");
            assert!(!text.contains(&hash_of(secret)), "a hash in {text}");
        }
    }
}

/// Retirement is saved to the ACL file: a restart does not bring the old password back.
#[tokio::test]
async fn retirement_is_saved_to_the_acl_file() {
    let (server, admin, p0) = server_with_app("~app:* +get").await;
    let multi = on(server.port).with_multi_password();
    let p1 = policy().generate();
    let mut req = request("app", &p1, &p0);
    req.admin = Some(admin.clone());
    assert_eq!(multi.set_password(req).await.unwrap().outcome, SetPasswordOutcome::ChangedWithAdmin);
    let saved = read(&server.aclfile());
    assert!(saved.contains(&hash_of(&p0)) && saved.contains(&hash_of(&p1)), "both saved: {saved}");
    let mut req = retire("app", &p1, &[]);
    req.admin = Some(admin);
    assert_eq!(multi.retire_passwords(req).await.unwrap().removed, 1);
    let server = server.restart().await;
    let multi = on(server.port).with_multi_password();
    assert_eq!(multi.verify(verify("app", &p0)).await.unwrap(), VerifyResponse::Rejected);
    assert_eq!(multi.verify(verify("app", &p1)).await.unwrap(), VerifyResponse::Accepted);
}
