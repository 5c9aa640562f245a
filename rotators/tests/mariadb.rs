//! The MariaDB rotator against the real server on 127.0.0.1:3306.
//!
//! Root logs in over TCP without a password (the test machines' setup) to create the
//! test accounts, named `kvr_t_<random>…` and dropped by a guard, also when a test fails.
//! `scripts/setup-mariadb.sh` turns TLS on with a certificate from its own test CA and
//! installs the ed25519 plugin; the tests that need either fail (never skip) naming it.
//!
//! Size: ~860 lines, all tests: 22 of one rotator against one server, sharing the ~180
//! lines of guard and fixtures above them; a second file would be one more test binary to
//! link, needing that setup again.
#![cfg(feature = "mariadb")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_lc_rs::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY as SHA1};
use common::{request, verify};
use kv_rotator_rotators::mariadb::{MariaDbConfig, MariaDbRotator, TlsMode};
use kv_rotator_rotators::testkit::{
    contains_secret, run_conformance, run_twin_conformance, ConformanceFixture, TwinFixture,
};
use kv_rotator_rotators::{
    Credential, PasswordPolicy, Rotator, RotatorError, SetPasswordOutcome, SyncTwinRequest, VerifyResponse,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use secrecy::{ExposeSecret, SecretString};

const HOST: &str = "127.0.0.1";
const PORT: u16 = 3306;
const SETUP_HINT: &str = "run `sudo scripts/setup-mariadb.sh` (TLS with a test CA, the ed25519 plugin)";

/// Identifier in backticks, written here rather than taken from the crate so that a
/// broken quoting fails the rotator, not the fixture.
fn ident(name: &str) -> String {
    let mut quoted = String::from('`');
    for c in name.chars() {
        if c == '`' {
            quoted.push('`');
        }
        quoted.push(c);
    }
    quoted.push('`');
    quoted
}

/// `*` and upper-case hex of SHA1(SHA1(password)), computed here for the same reason.
fn hash_of(password: &SecretString) -> String {
    let stage1 = digest(&SHA1, password.expose_secret().as_bytes());
    format!("*{}", hex::encode_upper(digest(&SHA1, stage1.as_ref())))
}

async fn root() -> Conn {
    let opts = OptsBuilder::default().ip_or_hostname(HOST).tcp_port(PORT).user(Some("root")).prefer_socket(false);
    Conn::new(opts)
        .await
        .unwrap_or_else(|e| panic!("cannot connect as root to {HOST}:{PORT}: {e}; is MariaDB running?"))
}

/// Drops every registered account (name, host) when the test ends, passed or failed.
struct UserGuard {
    /// The statements that drop what a test made, in the order it was made.
    drops: Mutex<Vec<String>>,
}

impl UserGuard {
    fn new() -> Arc<Self> {
        Arc::new(Self { drops: Mutex::new(Vec::new()) })
    }
    fn register(&self, name: &str, host: &str) {
        self.register_drop(format!("DROP USER IF EXISTS {}@{}", ident(name), ident(host)));
    }
    /// Any other statement to run at the end (`DROP ROLE …`, `DROP DATABASE …`).
    fn register_drop(&self, sql: String) {
        self.drops.lock().unwrap().push(sql);
    }
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        let drops = std::mem::take(&mut *self.drops.lock().unwrap_or_else(|p| p.into_inner()));
        if drops.is_empty() {
            return;
        }
        common::cleanup_on_own_thread("test accounts", move || async move {
            let mut root = root().await;
            for sql in drops.iter().rev() {
                if let Err(e) = root.query_drop(sql).await {
                    eprintln!("cleanup: {sql}: {e}");
                }
            }
            let _ = root.disconnect().await;
        });
    }
}

fn prefix() -> String {
    format!("kvr_t_{:08x}", rand::random::<u32>())
}

fn policy() -> PasswordPolicy {
    PasswordPolicy::default()
}

/// A rotator on the local server, without TLS (what most tests here need).
fn rotator() -> MariaDbRotator {
    rotator_with(|cfg| cfg.tls = TlsMode::Disable)
}

fn rotator_with(adjust: impl FnOnce(&mut MariaDbConfig)) -> MariaDbRotator {
    let mut cfg = MariaDbConfig::new(HOST);
    cfg.port = PORT;
    adjust(&mut cfg);
    MariaDbRotator::new(cfg, policy()).unwrap()
}

/// Creates `name`@`host` with the hash of `password` (the plain password is not sent).
async fn create_user(root: &mut Conn, guard: &UserGuard, name: &str, host: &str, password: &SecretString) {
    guard.register(name, host);
    let sql = format!("CREATE USER {}@{} IDENTIFIED BY PASSWORD '{}'", ident(name), ident(host), hash_of(password));
    root.query_drop(sql).await.unwrap_or_else(|e| panic!("creating test account {name:?}@{host:?}: {e}"));
}

/// What a user needs to change its own password through the rotator: to see that it
/// has a single host entry.
async fn allow_self_change(root: &mut Conn, name: &str, host: &str) {
    let sql = format!("GRANT SELECT (User, Host) ON mysql.user TO {}@{}", ident(name), ident(host));
    root.query_drop(sql).await.unwrap();
}

async fn create_admin(root: &mut Conn, guard: &UserGuard, name: &str) -> Credential {
    let admin = Credential::new(name, policy().generate());
    create_user(root, guard, name, "%", &admin.password).await;
    root.query_drop(format!("GRANT CREATE USER ON *.* TO {}@'%'", ident(name))).await.unwrap();
    root.query_drop(format!("GRANT SELECT ON mysql.user TO {}@'%'", ident(name))).await.unwrap();
    root.query_drop(format!("GRANT SELECT ON mysql.global_priv TO {}@'%'", ident(name))).await.unwrap();
    admin
}

/// Each entry's host and stored hash, by host.
async fn stored(root: &mut Conn, name: &str) -> Vec<(String, String)> {
    root.exec("SELECT Host, authentication_string FROM mysql.user WHERE User = ? ORDER BY Host", (name,)).await.unwrap()
}

async fn setup() -> (Conn, Arc<UserGuard>, String) {
    (root().await, UserGuard::new(), prefix())
}

struct MariaFixture {
    root: Conn,
    guard: Arc<UserGuard>,
    prefix: String,
    admin: Credential,
    next: usize,
}

#[async_trait]
impl ConformanceFixture for MariaFixture {
    async fn create_user(&mut self, password: &SecretString) -> Result<String, String> {
        self.next += 1;
        let name = format!("{}_u{}", self.prefix, self.next);
        create_user(&mut self.root, &self.guard, &name, "%", password).await;
        allow_self_change(&mut self.root, &name, "%").await;
        Ok(name)
    }

    fn admin(&self) -> Option<Credential> {
        Some(self.admin.clone())
    }
}

async fn conformance(rotator: MariaDbRotator) {
    let (mut root, guard, prefix) = setup().await;
    let admin = create_admin(&mut root, &guard, &format!("{prefix}_admin")).await;
    let mut fixture = MariaFixture { root, guard: Arc::clone(&guard), prefix, admin, next: 0 };
    let report = run_conformance(&rotator, &mut fixture).await.unwrap_or_else(|e| panic!("conformance: {e}"));
    println!("{report}");
    assert!(report.skipped.is_empty(), "mariadb must run every check: {report}");
}

#[tokio::test]
async fn mariadb_passes_conformance() {
    conformance(rotator()).await;
}

#[tokio::test]
async fn every_host_entry_changes_together_or_none_does() {
    let (mut root, guard, prefix) = setup().await;
    let user = format!("{prefix}_multi");
    let p0 = policy().generate();
    for host in ["%", "localhost", "10.9.8.7"] {
        create_user(&mut root, &guard, &user, host, &p0).await;
    }
    allow_self_change(&mut root, &user, "%").await;
    let admin = create_admin(&mut root, &guard, &format!("{prefix}_admin")).await;
    let before = stored(&mut root, &user).await;
    assert_eq!(before.len(), 3);

    // The user can change only the entry it logs in through: it must not, and says why.
    let p1 = policy().generate();
    let err = rotator().set_password(request(&user, &p1, &p0)).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("can change only its own host entry") && text.contains("has 3"), "{text}");
    assert!(text.contains("no admin credential configured"), "{text}");
    assert_eq!(stored(&mut root, &user).await, before, "nothing changed");

    // The admin changes all three in one statement.
    let mut req = request(&user, &p1, &p0);
    req.admin = Some(admin);
    let out = rotator().set_password(req).await.unwrap();
    assert_eq!(out.outcome, SetPasswordOutcome::ChangedWithAdmin);
    let after = stored(&mut root, &user).await;
    assert_eq!(after.len(), 3);
    for (host, hash) in &after {
        assert_eq!(hash, &hash_of(&p1), "entry {host} was not changed");
    }
    assert_eq!(rotator().verify(verify(&user, &p0)).await.unwrap(), VerifyResponse::Rejected);
}

#[tokio::test]
async fn a_change_that_fails_part_way_is_undone() {
    // MariaDB applies a multi-account ALTER USER entry by entry and keeps the entries
    // before (and after) one that fails. The test hook names an entry that does not
    // exist, between the real ones, as if it had been dropped after being read.
    let (mut root, guard, prefix) = setup().await;
    let user = format!("{prefix}_partial");
    let p0 = policy().generate();
    for host in ["%", "localhost", "10.9.8.7"] {
        create_user(&mut root, &guard, &user, host, &p0).await;
    }
    let admin = create_admin(&mut root, &guard, &format!("{prefix}_admin")).await;
    let before = stored(&mut root, &user).await;
    let p1 = policy().generate();
    let mut req = request(&user, &p1, &policy().generate());
    req.admin = Some(admin.clone());
    let rotator = rotator().with_phantom_host_entry("kvr-phantom.invalid");
    let err = rotator.set_password(req.clone()).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("1396"), "{err}");
    assert!(!err.to_string().contains("restoring the entries failed"), "{err}");
    assert_eq!(stored(&mut root, &user).await, before, "every entry is back on the old password");
    assert_eq!(rotator.verify(verify(&user, &p0)).await.unwrap(), VerifyResponse::Accepted);
    assert_eq!(rotator.verify(verify(&user, &p1)).await.unwrap(), VerifyResponse::Rejected);
    for secret in [&p0, &p1, &admin.password] {
        assert!(!contains_secret(&format!("{err} {err:?}"), secret));
    }
    for (_, hash) in &before {
        assert!(!err.to_string().contains(hash.as_str()), "an old hash in the error: {err}");
    }
}

/// Turns the general query log on into a file of its own while alive; restores the
/// server's settings when dropped.
struct GeneralLog {
    dir: tempfile::TempDir,
    saved: (String, String),
}

impl GeneralLog {
    async fn start(root: &mut Conn) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // mariadbd runs as mysql: let it write there.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let saved: (String, String) =
            root.query_first("SELECT @@general_log, @@general_log_file").await.unwrap().unwrap();
        let file = dir.path().join("general.log");
        root.query_drop(format!("SET GLOBAL general_log_file = '{}'", file.display())).await.unwrap();
        root.query_drop("SET GLOBAL general_log = ON").await.unwrap();
        Self { dir, saved }
    }

    async fn stop(self, root: &mut Conn) -> String {
        root.query_drop("SET GLOBAL general_log = OFF").await.unwrap();
        let on = if self.saved.0 == "1" { "ON" } else { "OFF" };
        root.query_drop(format!("SET GLOBAL general_log_file = '{}'", self.saved.1)).await.unwrap();
        root.query_drop(format!("SET GLOBAL general_log = {on}")).await.unwrap();
        std::fs::read_to_string(self.dir.path().join("general.log")).unwrap()
    }
}

#[tokio::test]
async fn the_plain_password_never_reaches_the_general_query_log() {
    let (mut root, guard, prefix) = setup().await;
    let (self_user, admin_user) = (format!("{prefix}_self"), format!("{prefix}_byadmin"));
    let (p0, q0) = (policy().generate(), policy().generate());
    create_user(&mut root, &guard, &self_user, "%", &p0).await;
    allow_self_change(&mut root, &self_user, "%").await;
    create_user(&mut root, &guard, &admin_user, "%", &q0).await;
    create_user(&mut root, &guard, &admin_user, "localhost", &q0).await;
    let admin = create_admin(&mut root, &guard, &format!("{prefix}_admin")).await;

    let log = GeneralLog::start(&mut root).await;
    let (p1, q1) = (policy().generate(), policy().generate());
    let by_self = rotator().set_password(request(&self_user, &p1, &p0)).await;
    let mut req = request(&admin_user, &q1, &policy().generate());
    req.admin = Some(admin.clone());
    let by_admin = rotator().set_password(req).await;
    let text = log.stop(&mut root).await;

    assert_eq!(by_self.unwrap().outcome, SetPasswordOutcome::ChangedWithCurrent);
    assert_eq!(by_admin.unwrap().outcome, SetPasswordOutcome::ChangedWithAdmin);
    // The log caught the statements: the hashes are there (so a plain password would be).
    assert!(text.contains(&format!("SET PASSWORD = '{}'", hash_of(&p1))), "no SET PASSWORD in the log:\n{text}");
    assert!(text.contains("ALTER USER") && text.contains(&hash_of(&q1)), "no ALTER USER in the log:\n{text}");
    for (i, secret) in [&p0, &p1, &q0, &q1, &admin.password].into_iter().enumerate() {
        assert!(!contains_secret(&text, secret), "plain password #{i} in the general query log");
    }
}

/// A crash mid-restore (or a DBA) leaves `'%'` on the old password while the entry the
/// worker's address matches has the pending one: one login with the pending password
/// proves only that entry, so the admin reads them all and rolls the others forward.
#[tokio::test]
async fn already_set_is_proven_for_every_host_entry() {
    let (mut root, guard, prefix) = setup().await;
    let user = format!("{prefix}_ent");
    let (p0, p1) = (policy().generate(), policy().generate());
    create_user(&mut root, &guard, &user, "%", &p0).await;
    for host in ["localhost", "127.0.0.1"] {
        create_user(&mut root, &guard, &user, host, &p1).await;
        allow_self_change(&mut root, &user, host).await;
    }
    // Without an admin nothing can read or set '%': not finished, and the pending
    // password is kept (NotYetVisible, never a refusal or a permanent error).
    let err = rotator().set_password(request(&user, &p1, &p0)).await.unwrap_err();
    assert!(matches!(err, RotatorError::NotYetVisible(_)), "{err:?}");
    assert!(err.to_string().contains("no admin credential"), "{err}");
    let mut req = request(&user, &p1, &p0);
    req.admin = Some(create_admin(&mut root, &guard, &format!("{prefix}_admin")).await);
    let done = rotator().set_password(req.clone()).await.unwrap();
    assert_eq!(done.outcome, SetPasswordOutcome::ChangedWithAdmin);
    let all: Vec<(String, String)> =
        ["%", "127.0.0.1", "localhost"].iter().map(|h| (h.to_string(), hash_of(&p1))).collect();
    assert_eq!(stored(&mut root, &user).await, all);
    // Now every entry has it: a retry is AlreadySet, and changes nothing.
    assert_eq!(rotator().set_password(req).await.unwrap().outcome, SetPasswordOutcome::AlreadySet);
    assert_eq!(stored(&mut root, &user).await, all);
}

/// `IDENTIFIED VIA mysql_native_password … OR unix_socket`: mysql.user shows only the
/// first method, and the admin's ALTER USER would remove the other.
#[tokio::test]
async fn an_account_with_alternative_methods_is_refused_by_name() {
    let (mut root, guard, prefix) = setup().await;
    let user = format!("{prefix}_or");
    let p0 = policy().generate();
    guard.register(&user, "%");
    root.query_drop(format!(
        "CREATE USER {}@'%' IDENTIFIED VIA mysql_native_password USING '{}' OR unix_socket",
        ident(&user),
        hash_of(&p0)
    ))
    .await
    .unwrap();
    allow_self_change(&mut root, &user, "%").await;
    let before: Vec<String> = root.query(format!("SHOW CREATE USER {}@'%'", ident(&user))).await.unwrap();
    let mut req = request(&user, &policy().generate(), &p0);
    req.admin = Some(create_admin(&mut root, &guard, &format!("{prefix}_admin")).await);
    let err = rotator().set_password(req).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(
        err.to_string().contains(&format!("entry {user:?}@\"%\" authenticates by mysql_native_password OR")),
        "{err}"
    );
    let after: Vec<String> = root.query(format!("SHOW CREATE USER {}@'%'", ident(&user))).await.unwrap();
    assert_eq!(after, before, "nothing changed");
    assert!(after[0].contains("unix_socket"));
}

/// SHOW GRANTS lists a granted role's row first: the proof must find the account's own.
#[tokio::test]
async fn an_account_with_a_granted_role_is_proven() {
    let (mut root, guard, prefix) = setup().await;
    let user = format!("{prefix}_rl");
    let role = format!("{prefix}_role");
    let (p0, p1) = (policy().generate(), policy().generate());
    create_user(&mut root, &guard, &user, "%", &p0).await;
    allow_self_change(&mut root, &user, "%").await;
    root.query_drop(format!("CREATE ROLE {}", ident(&role))).await.unwrap();
    root.query_drop(format!("GRANT {} TO {}@'%'", ident(&role), ident(&user))).await.unwrap();
    let verified = rotator().verify(verify(&user, &p0)).await;
    let changed = rotator().set_password(request(&user, &p1, &p0)).await;
    root.query_drop(format!("DROP ROLE {}", ident(&role))).await.unwrap();
    assert_eq!(verified.unwrap(), VerifyResponse::Accepted);
    assert_eq!(changed.unwrap().outcome, SetPasswordOutcome::ChangedWithCurrent);
    assert_eq!(stored(&mut root, &user).await, [("%".to_owned(), hash_of(&p1))]);
}

#[tokio::test]
async fn an_account_on_another_plugin_is_refused_by_name() {
    let (mut root, guard, prefix) = setup().await;
    let active: Option<String> = root
        .query_first("SELECT PLUGIN_STATUS FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'ed25519'")
        .await
        .unwrap();
    assert_eq!(active.as_deref(), Some("ACTIVE"), "the ed25519 plugin is not installed: {SETUP_HINT}");
    let user = format!("{prefix}_ed");
    let p0 = policy().generate();
    create_user(&mut root, &guard, &user, "%", &p0).await;
    guard.register(&user, "localhost");
    root.query_drop(format!("CREATE USER {}@'localhost' IDENTIFIED VIA ed25519 USING PASSWORD('x')", ident(&user)))
        .await
        .unwrap();
    let admin = create_admin(&mut root, &guard, &format!("{prefix}_admin")).await;
    let before = stored(&mut root, &user).await;
    let mut req = request(&user, &policy().generate(), &policy().generate());
    req.admin = Some(admin);
    let err = rotator().set_password(req).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("uses plugin \"ed25519\""), "{err}");
    assert_eq!(stored(&mut root, &user).await, before, "nothing changed");
}

#[tokio::test]
async fn a_locked_account_is_permanent_not_rejected() {
    let (mut root, guard, prefix) = setup().await;
    let user = format!("{prefix}_locked");
    let p0 = policy().generate();
    create_user(&mut root, &guard, &user, "%", &p0).await;
    root.query_drop(format!("ALTER USER {}@'%' ACCOUNT LOCK", ident(&user))).await.unwrap();
    let err = rotator().verify(verify(&user, &p0)).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("4151"), "{err}");
}

#[tokio::test]
async fn admin_without_privilege_is_permanent_and_names_the_login() {
    let (mut root, guard, prefix) = setup().await;
    let user = format!("{prefix}_u");
    let p0 = policy().generate();
    create_user(&mut root, &guard, &user, "%", &p0).await;
    let weak = Credential::new(format!("{prefix}_weak"), policy().generate());
    create_user(&mut root, &guard, &weak.username, "%", &weak.password).await;
    let mut req = request(&user, &policy().generate(), &policy().generate());
    req.admin = Some(weak.clone());
    let secrets = [req.pending.clone(), req.current.clone(), weak.password.clone()];
    let err = rotator().set_password(req).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("insufficient privilege") && text.contains(&weak.username), "{text}");
    for s in &secrets {
        assert!(!contains_secret(&text, s) && !contains_secret(&format!("{err:?}"), s));
        assert!(!text.contains(&hash_of(s)), "a hash in the error: {text}");
    }
    assert_eq!(rotator().verify(verify(&user, &p0)).await.unwrap(), VerifyResponse::Accepted, "unchanged");
}

#[tokio::test]
async fn names_with_backticks_and_quotes_are_quoted() {
    let (mut root, guard, prefix) = setup().await;
    let tricky = format!("{prefix}`q' x");
    let decoy = prefix.clone();
    let (p0, p1, decoy_password) = (policy().generate(), policy().generate(), policy().generate());
    create_user(&mut root, &guard, &tricky, "%", &p0).await;
    allow_self_change(&mut root, &tricky, "%").await;
    create_user(&mut root, &guard, &decoy, "%", &decoy_password).await;
    let decoy_before = stored(&mut root, &decoy).await;
    let out = rotator().set_password(request(&tricky, &p1, &p0)).await.unwrap();
    assert_eq!(out.outcome, SetPasswordOutcome::ChangedWithCurrent);
    assert_eq!(rotator().verify(verify(&tricky, &p1)).await.unwrap(), VerifyResponse::Accepted);
    assert_eq!(stored(&mut root, &decoy).await, decoy_before, "another account was touched");
    // And through the admin.
    let admin = create_admin(&mut root, &guard, &format!("{prefix}`adm")).await;
    let p2 = policy().generate();
    let mut req = request(&tricky, &p2, &p0);
    req.admin = Some(admin);
    assert_eq!(rotator().set_password(req).await.unwrap().outcome, SetPasswordOutcome::ChangedWithAdmin);
    assert_eq!(rotator().verify(verify(&tricky, &p2)).await.unwrap(), VerifyResponse::Accepted);
    assert_eq!(stored(&mut root, &decoy).await, decoy_before, "another account was touched");
}

// ---- TLS (the setup script turns it on, with a certificate from its own test CA) ----

fn test_ca() -> std::path::PathBuf {
    let path = std::env::var_os("KVR_TEST_MARIADB_CA")
        .map(Into::into)
        .unwrap_or_else(|| std::path::PathBuf::from("/var/lib/mysql-kvr-test-tls/ca.pem"));
    assert!(path.is_file(), "no test CA at {}: {SETUP_HINT}", path.display());
    path
}

fn tls_rotator(host: &str) -> MariaDbRotator {
    rotator_with(|cfg| {
        cfg.host = host.to_owned();
        cfg.tls = TlsMode::VerifyFull;
        cfg.tls_ca_file = Some(test_ca());
    })
}

#[tokio::test]
async fn mariadb_passes_conformance_over_verify_full_tls() {
    conformance(tls_rotator(HOST)).await;
}

#[tokio::test]
async fn sessions_are_encrypted_and_the_host_name_form_verifies_too() {
    let (mut root, guard, prefix) = setup().await;
    let user = format!("{prefix}_tls");
    let p0 = policy().generate();
    create_user(&mut root, &guard, &user, "%", &p0).await;
    allow_self_change(&mut root, &user, "%").await;
    // An account that may log in only over TLS: its logins prove the rotator's are.
    root.query_drop(format!("ALTER USER {}@'%' REQUIRE SSL", ident(&user))).await.unwrap();
    assert!(
        matches!(rotator().verify(verify(&user, &p0)).await, Ok(VerifyResponse::Rejected)),
        "REQUIRE SSL refuses a plain login"
    );
    let p1 = policy().generate();
    let rotator = tls_rotator("localhost");
    let out = rotator.set_password(request(&user, &p1, &p0)).await.unwrap();
    assert_eq!(out.outcome, SetPasswordOutcome::ChangedWithCurrent);
    assert_eq!(rotator.verify(verify(&user, &p1)).await.unwrap(), VerifyResponse::Accepted);
    assert_eq!(rotator.verify(verify(&user, &p0)).await.unwrap(), VerifyResponse::Rejected);
}

#[tokio::test]
async fn a_wrong_ca_is_refused_permanently_before_any_login() {
    let (mut root, guard, prefix) = setup().await;
    let user = format!("{prefix}_ca");
    let p0 = policy().generate();
    create_user(&mut root, &guard, &user, "%", &p0).await;
    let dir = tempfile::tempdir().unwrap();
    let rotator = rotator_with(|cfg| {
        cfg.tls = TlsMode::VerifyFull;
        cfg.tls_ca_file = Some(common::other_ca(dir.path()));
    });
    let err = rotator.verify(verify(&user, &p0)).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("certificate was refused") && text.contains("verify-full"), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(!contains_secret(&text, &p0), "{text}");
    assert_eq!(tls_rotator(HOST).verify(verify(&user, &p0)).await.unwrap(), VerifyResponse::Accepted);
}

#[tokio::test]
async fn the_certificate_must_name_the_host_or_tls_server_name() {
    let (mut root, guard, prefix) = setup().await;
    let user = format!("{prefix}_name");
    let p0 = policy().generate();
    create_user(&mut root, &guard, &user, "%", &p0).await;
    let (port, task) = common::forwarder("127.0.0.2", (HOST, PORT)).await;
    let on = |server_name: Option<&str>| {
        rotator_with(|cfg| {
            cfg.host = "127.0.0.2".to_owned();
            cfg.port = port;
            cfg.tls = TlsMode::VerifyFull;
            cfg.tls_ca_file = Some(test_ca());
            cfg.tls_server_name = server_name.map(str::to_owned);
        })
    };
    let err = on(None).verify(verify(&user, &p0)).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("not valid for name \"127.0.0.2\""), "{err}");
    assert_eq!(err.to_string().matches("not valid for name").count(), 1, "said once: {err}");
    let err = on(Some("db.example")).verify(verify(&user, &p0)).await.unwrap_err();
    assert!(err.to_string().contains("not valid for name \"db.example\""), "{err}");
    assert_eq!(on(Some("localhost")).verify(verify(&user, &p0)).await.unwrap(), VerifyResponse::Accepted);
    task.abort();
}

// ---- failures of the network ----

fn rotator_on(port: u16) -> MariaDbRotator {
    rotator_with(|cfg| {
        cfg.port = port;
        cfg.connect_timeout_secs = 1;
        cfg.tls = TlsMode::Disable;
    })
}

#[tokio::test]
async fn refused_connection_is_transient() {
    let port = common::unused_port(HOST);
    let rotator = rotator_on(port);
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
    let err = rotator_on(port).verify(verify("nobody", &policy().generate())).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("no answer within 1s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    server.abort();
}

#[tokio::test]
async fn a_server_without_tls_is_refused_under_a_tls_mode() {
    // A fake server that greets without the SSL capability: the rotator must not go on
    // in plain text (no login, so no password exchange, reaches it).
    let listener = tokio::net::TcpListener::bind((HOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::<u8>::new()));
    let server = tokio::spawn({
        let got = Arc::clone(&got);
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.write_all(&handshake_without_ssl()).await.unwrap();
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    let rotator = rotator_with(|cfg| {
        cfg.port = port;
        cfg.tls = TlsMode::VerifyFull;
        cfg.tls_ca_file = Some(test_ca());
        cfg.connect_timeout_secs = 2;
    });
    let password = policy().generate();
    let err = rotator.verify(verify("app", &password)).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("needs TLS on the server"), "{err}");
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    let got = got.lock().unwrap().clone();
    assert!(!got.windows(3).any(|w| w == b"app"), "the client went on to log in: {got:?}");
}

/// A protocol-10 greeting from a "server" with mysql_native_password and no CLIENT_SSL.
fn handshake_without_ssl() -> Vec<u8> {
    let mut body = vec![10u8];
    body.extend_from_slice(b"10.11.0-fake\0");
    body.extend_from_slice(&1u32.to_le_bytes()); // connection id
    body.extend_from_slice(b"abcdefgh\0"); // scramble, first part
    let caps: u32 = 0x0000_0001 | 0x0000_0200 | 0x0000_8000 | 0x0008_0000; // long password, 4.1, secure conn, plugin auth
    body.extend_from_slice(&(caps as u16).to_le_bytes());
    body.push(33); // charset
    body.extend_from_slice(&2u16.to_le_bytes()); // status
    body.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    body.push(21); // auth data length
    body.extend_from_slice(&[0u8; 10]);
    body.extend_from_slice(b"ijklmnopqrst\0"); // scramble, second part
    body.extend_from_slice(b"mysql_native_password\0");
    let mut packet = (body.len() as u32).to_le_bytes()[..3].to_vec();
    packet.push(0);
    packet.extend_from_slice(&body);
    packet
}

/// A user name with a line break and an escape sequence is shown escaped in messages.
#[tokio::test]
async fn messages_carry_no_raw_control_characters() {
    let port = common::unused_port(HOST);
    let name = "app\n2026-01-01 INFO forged\x1b[2J";
    let e = rotator_on(port).verify(verify(name, &policy().generate())).await.unwrap_err().to_string();
    assert!(!e.contains('\n') && !e.contains('\x1b'), "{e:?}");
    assert!(e.contains(r#""app\n2026-01-01 INFO forged\u{1b}[2J""#), "{e}");
}

// ---- Alternating users: the twin ----

/// Host entries of every primary here: two, so "every entry or none" is exercised.
const TWIN_HOSTS: [&str; 2] = ["%", "localhost"];

struct MariaTwinFixture {
    root: Conn,
    guard: Arc<UserGuard>,
    prefix: String,
    admin: Credential,
    next: usize,
}

impl MariaTwinFixture {
    /// An admin that may copy what the primaries here get: privileges on the test
    /// database with grant option, the test role with admin option, SHOW GRANTS of others.
    async fn new() -> Self {
        let (mut root, guard, prefix) = setup().await;
        let admin = create_admin(&mut root, &guard, &format!("{prefix}_admin")).await;
        let (db, role, admin_sql) =
            (ident(&format!("{prefix}_db")), ident(&format!("{prefix}_role")), ident(&admin.username));
        guard.register_drop(format!("DROP DATABASE IF EXISTS {db}"));
        guard.register_drop(format!("DROP ROLE IF EXISTS {role}"));
        for sql in [
            format!("CREATE DATABASE {db}"),
            format!("CREATE TABLE {db}.t (x int)"),
            format!("INSERT INTO {db}.t VALUES (1)"),
            format!("CREATE ROLE {role}"),
            format!("GRANT {role} TO {admin_sql}@'%' WITH ADMIN OPTION"),
            format!("GRANT SELECT ON mysql.* TO {admin_sql}@'%'"),
            format!("GRANT SELECT, INSERT, DELETE ON {db}.* TO {admin_sql}@'%' WITH GRANT OPTION"),
        ] {
            root.query_drop(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        Self { root, guard, prefix, admin, next: 0 }
    }

    fn db(&self) -> String {
        ident(&format!("{}_db", self.prefix))
    }

    async fn on_every_host(&mut self, user: &str, sql: impl Fn(&str) -> String) -> Result<(), String> {
        for host in TWIN_HOSTS {
            let sql = sql(&format!("{}@{}", ident(user), ident(host)));
            self.root.query_drop(&sql).await.map_err(|e| format!("{sql}: {e}"))?;
        }
        Ok(())
    }

    fn request(&self, primary: &str, twin: &str) -> SyncTwinRequest {
        SyncTwinRequest::new(primary, twin, self.admin.clone())
            .with_password_if_created(policy().generate())
            .with_twin_known(true)
    }
}

#[async_trait]
impl TwinFixture for MariaTwinFixture {
    fn admin(&self) -> Credential {
        self.admin.clone()
    }

    async fn create_primary(&mut self, password: &SecretString) -> Result<String, String> {
        self.next += 1;
        let name = format!("{}_app{}", self.prefix, self.next);
        for host in TWIN_HOSTS {
            create_user(&mut self.root, &self.guard, &name, host, password).await;
        }
        let (db, role) = (self.db(), ident(&format!("{}_role", self.prefix)));
        self.on_every_host(&name, |account| {
            format!("GRANT SELECT ON {db}.t TO {account} WITH MAX_QUERIES_PER_HOUR 900")
        })
        .await?;
        self.on_every_host(&name, |account| format!("GRANT {role} TO {account}")).await?;
        Ok(name)
    }

    fn fresh_name(&mut self) -> String {
        self.next += 1;
        let name = format!("{}_twin{}", self.prefix, self.next);
        for host in TWIN_HOSTS {
            self.guard.register(&name, host);
        }
        name
    }

    async fn use_primary_privilege(&mut self, user: &str, password: &SecretString) -> Result<(), String> {
        let opts = OptsBuilder::default()
            .ip_or_hostname(HOST)
            .tcp_port(PORT)
            .user(Some(user))
            .pass(Some(password.expose_secret()))
            .prefer_socket(false);
        let mut conn = Conn::new(opts).await.map_err(|e| e.to_string())?;
        let x: Option<i32> =
            conn.query_first(format!("SELECT x FROM {}.t", self.db())).await.map_err(|e| e.to_string())?;
        let _ = conn.disconnect().await;
        if x != Some(1) {
            return Err(format!("read {x:?}"));
        }
        Ok(())
    }

    async fn grow_primary(&mut self, primary: &str) -> Result<String, String> {
        let db = self.db();
        self.on_every_host(primary, |account| format!("GRANT INSERT ON {db}.* TO {account}")).await?;
        Ok("INSERT".into())
    }

    async fn grow_twin(&mut self, twin: &str) -> Result<String, String> {
        let sql = format!("GRANT DELETE ON {}.t TO {}@'%'", self.db(), ident(twin));
        self.root.query_drop(&sql).await.map_err(|e| e.to_string())?;
        Ok("DELETE".into())
    }
}

/// A `SHOW GRANTS` row without its `IDENTIFIED BY PASSWORD '…'` clause.
fn without_hash(row: String) -> String {
    match row.split_once(" IDENTIFIED BY PASSWORD '") {
        Some((head, rest)) => format!("{head}{}", rest.split_once('\'').map_or("", |(_, tail)| tail)),
        None => row,
    }
}

/// Each entry's grants, with the grantee's name replaced by `<who>` so two accounts compare.
async fn grants_by_host(root: &mut Conn, name: &str) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for host in TWIN_HOSTS {
        let rows: Vec<String> = root.query(format!("SHOW GRANTS FOR {}@{}", ident(name), ident(host))).await.unwrap();
        let mut rows: Vec<String> =
            rows.into_iter().map(|r| r.replace(&ident(name), "<who>")).map(without_hash).collect();
        rows.sort();
        all.push(rows);
    }
    all
}

#[tokio::test]
async fn mariadb_passes_twin_conformance() {
    let mut fixture = MariaTwinFixture::new().await;
    let report =
        run_twin_conformance(&rotator(), &mut fixture).await.unwrap_or_else(|e| panic!("twin conformance: {e}"));
    println!("{report}");
    // Every host entry of the twin has the primary's grants (the twin's extra DELETE on
    // '%' aside), its options and default role, and one hash.
    let (primary, twin) = (format!("{}_app1", fixture.prefix), format!("{}_twin2", fixture.prefix));
    let (p, mut t) =
        (grants_by_host(&mut fixture.root, &primary).await, grants_by_host(&mut fixture.root, &twin).await);
    for row in &mut t[0] {
        *row = row.replace("SELECT, DELETE ON", "SELECT ON");
    }
    assert_eq!(p, t);
    let hashes: std::collections::BTreeSet<String> =
        stored(&mut fixture.root, &twin).await.into_iter().map(|(_, h)| h).collect();
    assert_eq!(hashes.len(), 1, "one password on every entry");
}

#[tokio::test]
async fn a_twin_cut_short_between_host_entries_is_completed() {
    let mut fixture = MariaTwinFixture::new().await;
    let primary = fixture.create_primary(&policy().generate()).await.unwrap();
    let twin = fixture.fresh_name();
    // As if a crash came after the first entry of a creation.
    let password = policy().generate();
    create_user(&mut fixture.root, &fixture.guard, &twin, "%", &password).await;
    // A default role, which this admin (no UPDATE on mysql.*) cannot set for others.
    let role = ident(&format!("{}_role", fixture.prefix));
    fixture.on_every_host(&primary, |account| format!("SET DEFAULT ROLE {role} FOR {account}")).await.unwrap();
    let out = rotator().sync_twin(fixture.request(&primary, &twin)).await.unwrap();
    assert!(!out.created, "{out:?}");
    assert_eq!(out.drift.len(), 2, "the default role, on each entry: {out:?}");
    assert!(out.drift.iter().all(|d| d.contains("default role") && d.contains("UPDATE on mysql.*")), "{out:?}");
    fixture.root.query_drop(format!("SET DEFAULT ROLE {role} FOR {}@'%'", ident(&twin))).await.unwrap();
    fixture.root.query_drop(format!("SET DEFAULT ROLE {role} FOR {}@'localhost'", ident(&twin))).await.unwrap();
    assert!(out.repaired.iter().any(|r| r.contains("created host entries \"localhost\"")), "{out:?}");
    assert!(out.repaired.iter().any(|r| r.contains("SELECT ON")), "{out:?}");
    let stored = stored(&mut fixture.root, &twin).await;
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|(_, hash)| *hash == hash_of(&password)), "the new entry has the twin's password");
    assert_eq!(grants_by_host(&mut fixture.root, &primary).await, grants_by_host(&mut fixture.root, &twin).await);
    let again = rotator().sync_twin(fixture.request(&primary, &twin)).await.unwrap();
    assert_eq!(again, Default::default());
}

#[tokio::test]
async fn a_twin_with_server_administration_or_a_role_name_is_refused() {
    let mut fixture = MariaTwinFixture::new().await;
    let primary = fixture.create_primary(&policy().generate()).await.unwrap();
    let twin = fixture.fresh_name();
    create_user(&mut fixture.root, &fixture.guard, &twin, "%", &policy().generate()).await;
    fixture.root.query_drop(format!("GRANT CREATE USER ON *.* TO {}@'%'", ident(&twin))).await.unwrap();
    let e = rotator().sync_twin(fixture.request(&primary, &twin)).await.unwrap_err();
    assert!(matches!(&e, RotatorError::Permanent(m) if m.contains("CREATE USER")), "{e}");
    assert_eq!(stored(&mut fixture.root, &twin).await.len(), 1, "nothing created for a refused twin");

    let role = format!("{}_role", fixture.prefix);
    let e = rotator().sync_twin(fixture.request(&primary, &role)).await.unwrap_err();
    assert!(matches!(&e, RotatorError::Permanent(m) if m.contains("is a role")), "{e}");
}
