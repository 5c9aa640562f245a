//! The PostgreSQL rotator against the real server on 127.0.0.1:5432.
//!
//! Test roles are members of `kvr_scram`, which `scripts/setup-postgres.sh` puts under
//! `scram-sha-256` in pg_hba.conf; without it every password logs in and these tests
//! fail (never skip) saying so. Roles are named `kvr_t_<random>…` and dropped by a guard,
//! also when a test fails. The `postgres` superuser connects over trust to set them up.
//! The TLS tests use the certificate the same script gives the server (its own test CA).
//!
//! Size: ~740 lines, all tests: 18 of one rotator against one server, sharing the ~200
//! lines of guard and fixtures above them; a second file would be one more test binary to
//! link, needing that setup again.
#![cfg(feature = "postgres")]

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kv_rotator_rotators::postgres::{ChannelBinding, PostgresConfig, PostgresRotator, SslMode};
use kv_rotator_rotators::testkit::{
    contains_secret, run_conformance, run_twin_conformance, ConformanceFixture, TwinFixture,
};
use kv_rotator_rotators::{
    Credential, PasswordPolicy, Rotator, RotatorError, SetPasswordOutcome, SetPasswordRequest, SyncTwinRequest,
    VerifyRequest, VerifyResponse,
};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::{Client, NoTls};

const HOST: &str = "127.0.0.1";
const PORT: u16 = 5432;
const SETUP_HINT: &str =
    "run `sudo scripts/setup-postgres.sh` (it puts members of kvr_scram under scram-sha-256 in pg_hba.conf)";

/// Quoted identifier, written here rather than taken from the crate so that a broken
/// `quote_ident` fails the rotator, not the fixture.
fn ident(name: &str) -> String {
    let mut quoted = String::from('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

async fn superuser() -> Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host(HOST)
        .port(PORT)
        .user("postgres")
        .dbname("postgres")
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect as postgres to {HOST}:{PORT} over trust: {e}; is PostgreSQL running?")
        });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Drops every registered role when the test ends, passed or failed.
struct RoleGuard {
    roles: Mutex<Vec<String>>,
}

impl RoleGuard {
    fn new() -> Arc<Self> {
        Arc::new(Self { roles: Mutex::new(Vec::new()) })
    }
    fn register(&self, name: &str) {
        self.roles.lock().unwrap().push(name.to_owned());
    }
}

impl Drop for RoleGuard {
    fn drop(&mut self) {
        let roles: Vec<String> = std::mem::take(&mut *self.roles.lock().unwrap_or_else(|p| p.into_inner()));
        if roles.is_empty() {
            return;
        }
        common::cleanup_on_own_thread("test roles", move || async move {
            let su = superuser().await;
            for role in roles.iter().rev() {
                let exists = su.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[role]).await;
                if !matches!(exists, Ok(Some(_))) {
                    continue;
                }
                // DROP OWNED: what a test gave the role (a table) goes with it.
                let sql = format!("DROP OWNED BY {0}; DROP ROLE {0}", ident(role));
                if let Err(e) = su.batch_execute(&sql).await {
                    eprintln!("cleanup: could not drop role {role:?}: {e}");
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

/// A rotator on the local server, without TLS (what most tests here need).
fn rotator() -> PostgresRotator {
    rotator_with(|cfg| cfg.sslmode = SslMode::Disable)
}

fn rotator_with(adjust: impl FnOnce(&mut PostgresConfig)) -> PostgresRotator {
    let mut cfg = PostgresConfig::new(HOST);
    cfg.port = PORT;
    cfg.application_name = "kv-rotator-tests".to_owned();
    adjust(&mut cfg);
    PostgresRotator::new(cfg, policy()).unwrap()
}

/// Creates a role in kvr_scram whose stored verifier is computed here, as the rotator does.
async fn create_role(su: &Client, guard: &RoleGuard, name: &str, password: &SecretString, options: &str) {
    guard.register(name);
    let verifier = postgres_protocol::password::scram_sha_256(password.expose_secret().as_bytes());
    su.batch_execute(&format!("CREATE ROLE {} {options} IN ROLE kvr_scram PASSWORD '{verifier}'", ident(name)))
        .await
        .unwrap_or_else(|e| panic!("creating test role {name:?}: {e}"));
}

/// Fails (does not skip) when a wrong password would log in: the setup script has not run.
async fn require_password_auth(su: &Client, guard: &RoleGuard, prefix: &str) {
    let exists = su.query_opt("SELECT 1 FROM pg_roles WHERE rolname = 'kvr_scram'", &[]).await.unwrap();
    assert!(exists.is_some(), "role kvr_scram does not exist: {SETUP_HINT}");
    let probe = format!("{prefix}_probe");
    let right = policy().generate();
    create_role(su, guard, &probe, &right, "LOGIN").await;
    let rotator = rotator();
    let wrong = policy().generate();
    let got = rotator.verify(VerifyRequest::new(probe.clone(), wrong)).await;
    assert!(
        matches!(got, Ok(VerifyResponse::Rejected)),
        "a wrong password was not rejected for a kvr_scram member ({got:?}): {SETUP_HINT}"
    );
    let got = rotator.verify(VerifyRequest::new(probe, right)).await;
    assert!(matches!(got, Ok(VerifyResponse::Accepted)), "the right password did not log in: {got:?}");
}

async fn setup() -> (Client, Arc<RoleGuard>, String) {
    let su = superuser().await;
    let guard = RoleGuard::new();
    let prefix = prefix();
    require_password_auth(&su, &guard, &prefix).await;
    (su, guard, prefix)
}

async fn stored_verifier(su: &Client, role: &str) -> String {
    su.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&role]).await.unwrap().get(0)
}

struct PgFixture {
    su: Client,
    guard: Arc<RoleGuard>,
    prefix: String,
    admin: Credential,
    next: usize,
}

#[async_trait]
impl ConformanceFixture for PgFixture {
    async fn create_user(&mut self, password: &SecretString) -> Result<String, String> {
        self.next += 1;
        let name = format!("{}_u{}", self.prefix, self.next);
        create_role(&self.su, &self.guard, &name, password, "LOGIN").await;
        // PostgreSQL 16+ lets a CREATEROLE admin alter only roles it has ADMIN OPTION on.
        self.su
            .batch_execute(&format!("GRANT {} TO {} WITH ADMIN OPTION", ident(&name), ident(&self.admin.username)))
            .await
            .map_err(|e| e.to_string())?;
        Ok(name)
    }

    fn admin(&self) -> Option<Credential> {
        Some(self.admin.clone())
    }
}

async fn conformance(rotator: PostgresRotator) {
    let (su, guard, prefix) = setup().await;
    let admin = Credential::new(format!("{prefix}_admin"), policy().generate());
    create_role(&su, &guard, &admin.username, &admin.password, "LOGIN CREATEROLE").await;
    let mut fixture = PgFixture { su, guard: Arc::clone(&guard), prefix, admin, next: 0 };
    let report = run_conformance(&rotator, &mut fixture).await.unwrap_or_else(|e| panic!("conformance: {e}"));
    println!("{report}");
    assert!(report.skipped.is_empty(), "postgres must run every check: {report}");
}

#[tokio::test]
async fn postgres_passes_conformance() {
    conformance(rotator()).await;
}

// ---- TLS (the setup script turns it on, with a certificate from its own test CA) ----

/// The setup script's test CA.
fn test_ca() -> std::path::PathBuf {
    let path = std::env::var_os("KVR_TEST_PG_CA")
        .map(Into::into)
        .unwrap_or_else(|| std::path::PathBuf::from("/var/lib/postgresql/kvr-test-tls/ca.pem"));
    assert!(path.is_file(), "no test CA at {}: {SETUP_HINT}", path.display());
    path
}

/// verify-full, the test CA, and channel binding required: tokio-postgres then accepts
/// only SCRAM-SHA-256-PLUS, so every login of the run is bound to a verified TLS session.
fn tls_rotator(host: &str) -> PostgresRotator {
    rotator_with(|cfg| {
        cfg.host = host.to_owned();
        cfg.sslmode = SslMode::VerifyFull;
        cfg.sslrootcert = Some(test_ca());
        cfg.channel_binding = Some(ChannelBinding::Require);
    })
}

#[tokio::test]
async fn postgres_passes_conformance_over_verify_full_tls_with_channel_binding() {
    conformance(tls_rotator(HOST)).await;
}

/// The role's sessions seen by the server while `hold` is open, with their TLS state.
async fn ssl_of_sessions(su: &Client, role: &str) -> Vec<bool> {
    su.query("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = $1", &[&role])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn the_host_name_form_verifies_too_and_sessions_are_encrypted() {
    let (su, guard, prefix) = setup().await;
    let user = format!("{prefix}_tls");
    let p0 = policy().generate();
    create_role(&su, &guard, &user, &p0, "LOGIN").await;
    // "localhost" is a DNS name in the certificate; 127.0.0.1 (above) an IP address.
    let rotator = tls_rotator("localhost");
    let p1 = policy().generate();
    let out = rotator.set_password(SetPasswordRequest::new(user.clone(), p1.clone(), p0.clone())).await.unwrap();
    assert_eq!(out.outcome, SetPasswordOutcome::ChangedWithCurrent);
    assert_eq!(rotator.verify(VerifyRequest::new(user.clone(), p0)).await.unwrap(), VerifyResponse::Rejected);

    // While a session of the role is open, the server says it is TLS.
    let (client, connection) = tokio_postgres::Config::new()
        .host(HOST)
        .port(PORT)
        .user(&user)
        .password(p1.expose_secret())
        .dbname("postgres")
        .connect(NoTls)
        .await
        .unwrap();
    let plain = tokio::spawn(connection);
    assert_eq!(ssl_of_sessions(&su, &user).await, vec![false], "the fixture's own plain session");
    drop(client);
    let _ = plain.await;
    let held = tokio::spawn({
        let rotator = tls_rotator(HOST);
        let user = user.clone();
        async move {
            // verify opens a session and runs SELECT 1; loop until the observer saw one.
            for _ in 0..200 {
                rotator.verify(VerifyRequest::new(user.clone(), p1.clone())).await.unwrap();
            }
        }
    });
    let mut seen = Vec::new();
    while !held.is_finished() {
        seen.extend(ssl_of_sessions(&su, &user).await);
    }
    assert!(!seen.is_empty(), "never saw a session of the rotator");
    assert!(seen.iter().all(|ssl| *ssl), "a rotator session without TLS: {seen:?}");
}

#[tokio::test]
async fn a_trusted_login_is_not_proof_of_a_password() {
    // The machine's pg_hba.conf trusts `postgres` from 127.0.0.1: any password "works".
    // A rotator that believed it could record a password the role does not have.
    let _ = setup().await;
    let wrong = policy().generate();
    let err = rotator().verify(VerifyRequest::new("postgres", wrong)).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("without checking any password"), "{err}");
}

/// Every `log` record of the process (tokio-postgres logs through `log`).
static RECORDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        // The worker caps dependencies at INFO (worker/src/logging.rs): tokio-postgres's
        // DEBUG records carry every statement, this one's verifier too, and stay out.
        if record.level() <= log::Level::Info {
            RECORDS.lock().unwrap().push(format!("{} {}: {}", record.level(), record.target(), record.args()));
        }
    }
    fn flush(&self) {}
}

#[tokio::test]
async fn server_notices_never_reach_the_log() {
    // A DBA's per-role settings make the server echo every DDL statement back to the
    // client as a notice: ALTER ROLE with the new verifier. tokio-postgres would log each
    // notice at INFO.
    log::set_logger(&Capture).expect("only this test installs a logger");
    log::set_max_level(log::LevelFilter::Trace);
    let (su, guard, prefix) = setup().await;
    let user = format!("{prefix}_notice");
    let p0 = policy().generate();
    create_role(&su, &guard, &user, &p0, "LOGIN").await;
    su.batch_execute(&format!(
        "ALTER ROLE {0} SET client_min_messages = debug5; ALTER ROLE {0} SET log_statement = 'all'",
        ident(&user)
    ))
    .await
    .unwrap();
    let p1 = policy().generate();
    let out = rotator().set_password(SetPasswordRequest::new(user.clone(), p1.clone(), p0.clone())).await.unwrap();
    assert_eq!(out.outcome, SetPasswordOutcome::ChangedWithCurrent);
    let verifier = stored_verifier(&su, &user).await;
    let records = RECORDS.lock().unwrap().clone();
    for record in &records {
        assert!(!record.contains(&verifier), "the verifier reached the log: {record}");
        assert!(!contains_secret(record, &p0) && !contains_secret(record, &p1), "a password reached the log");
    }
}

#[tokio::test]
async fn a_wrong_ca_is_refused_permanently_before_any_login() {
    let (su, guard, prefix) = setup().await;
    let user = format!("{prefix}_ca");
    let p0 = policy().generate();
    create_role(&su, &guard, &user, &p0, "LOGIN").await;
    let dir = tempfile::tempdir().unwrap();
    for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
        let rotator = rotator_with(|cfg| {
            cfg.sslmode = mode;
            cfg.sslrootcert = Some(common::other_ca(dir.path()));
        });
        let err = rotator.verify(VerifyRequest::new(user.clone(), p0.clone())).await.unwrap_err();
        assert!(matches!(err, RotatorError::Permanent(_)), "{mode:?}: {err:?}");
        let text = err.to_string();
        assert!(text.contains("certificate was refused") && text.contains(mode.as_str()), "{text}");
        assert!(text.contains("UnknownIssuer"), "{text}");
        assert!(!contains_secret(&text, &p0), "{text}");
    }
    // The same request with the right CA works: the refusal was the CA's.
    assert_eq!(tls_rotator(HOST).verify(VerifyRequest::new(user, p0)).await.unwrap(), VerifyResponse::Accepted);
}

#[tokio::test]
async fn verify_ca_skips_the_host_name_and_verify_full_does_not() {
    let (su, guard, prefix) = setup().await;
    let user = format!("{prefix}_name");
    let p0 = policy().generate();
    create_role(&su, &guard, &user, &p0, "LOGIN").await;
    let (port, task) = common::forwarder("127.0.0.2", (HOST, PORT)).await;
    let on = |mode: SslMode| {
        rotator_with(|cfg| {
            cfg.host = "127.0.0.2".to_owned();
            cfg.port = port;
            cfg.sslmode = mode;
            cfg.sslrootcert = Some(test_ca());
            cfg.channel_binding = Some(ChannelBinding::Require);
        })
    };
    let request = || VerifyRequest::new(user.clone(), p0.clone());
    let err = on(SslMode::VerifyFull).verify(request()).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("not valid for name \"127.0.0.2\""), "{err}");
    assert_eq!(on(SslMode::VerifyCa).verify(request()).await.unwrap(), VerifyResponse::Accepted);
    // `require` checks no certificate at all; channel binding (required there by
    // default) still holds the login to the session.
    let require = rotator_with(|cfg| {
        cfg.host = "127.0.0.2".to_owned();
        cfg.port = port;
        cfg.sslmode = SslMode::Require;
    });
    assert_eq!(require.verify(request()).await.unwrap(), VerifyResponse::Accepted);
    task.abort();
}

#[tokio::test]
async fn role_name_with_double_quote_and_space_is_quoted() {
    let (su, guard, prefix) = setup().await;
    let tricky = format!("{prefix} \"q\" x");
    // What a naive `"{name}"` would leave of the name.
    let decoy = prefix.clone();
    let (p0, p1, decoy_password) = (policy().generate(), policy().generate(), policy().generate());
    create_role(&su, &guard, &tricky, &p0, "LOGIN").await;
    create_role(&su, &guard, &decoy, &decoy_password, "LOGIN").await;
    let decoy_before = stored_verifier(&su, &decoy).await;

    let rotator = rotator();
    let resp = rotator.set_password(SetPasswordRequest::new(tricky.clone(), p1.clone(), p0.clone())).await.unwrap();
    assert_eq!(resp.outcome, SetPasswordOutcome::ChangedWithCurrent);
    let verify = |password: &SecretString| VerifyRequest::new(tricky.clone(), password.clone());
    assert_eq!(rotator.verify(verify(&p1)).await.unwrap(), VerifyResponse::Accepted);
    assert_eq!(rotator.verify(verify(&p0)).await.unwrap(), VerifyResponse::Rejected);
    assert_eq!(stored_verifier(&su, &decoy).await, decoy_before, "another role was touched");

    // The admin path quotes the name too.
    let admin = Credential::new(format!("{prefix} \"adm\""), policy().generate());
    create_role(&su, &guard, &admin.username, &admin.password, "LOGIN CREATEROLE").await;
    let p2 = policy().generate();
    let resp =
        rotator.set_password(SetPasswordRequest::new(tricky.clone(), p2.clone(), p0).with_admin(admin)).await.unwrap();
    assert_eq!(resp.outcome, SetPasswordOutcome::ChangedWithAdmin);
    assert_eq!(rotator.verify(verify(&p2)).await.unwrap(), VerifyResponse::Accepted);
    assert_eq!(rotator.verify(verify(&p1)).await.unwrap(), VerifyResponse::Rejected);
}

#[tokio::test]
async fn stored_password_is_a_scram_verifier() {
    let (su, guard, prefix) = setup().await;
    let user = format!("{prefix}_v");
    let (p0, p1) = (policy().generate(), policy().generate());
    create_role(&su, &guard, &user, &p0, "LOGIN").await;
    rotator().set_password(SetPasswordRequest::new(user.clone(), p1.clone(), p0)).await.unwrap();
    let stored = stored_verifier(&su, &user).await;
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "not a SCRAM verifier: {stored}");
    assert!(!contains_secret(&stored, &p1));
}

#[tokio::test]
async fn admin_without_privilege_is_permanent_and_names_the_login() {
    let (su, guard, prefix) = setup().await;
    let user = format!("{prefix}_u");
    let weak = Credential::new(format!("{prefix}_weak"), policy().generate());
    let p0 = policy().generate();
    create_role(&su, &guard, &user, &p0, "LOGIN").await;
    create_role(&su, &guard, &weak.username, &weak.password, "LOGIN").await;
    let req = SetPasswordRequest::new(user.clone(), policy().generate(), policy().generate())
        .with_previous(vec![policy().generate()])
        .with_admin(weak.clone());
    let secrets = [req.pending.clone(), req.current.clone(), req.previous[0].clone(), weak.password.clone()];
    let err = rotator().set_password(req).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(text.contains("insufficient privilege") && text.contains("42501"), "{text}");
    assert!(text.contains(&weak.username) && text.contains(&user), "should name the login and the role: {text}");
    for s in &secrets {
        assert!(!contains_secret(&text, s) && !contains_secret(&format!("{err:?}"), s));
    }
    assert_eq!(
        rotator().verify(VerifyRequest::new(user, p0)).await.unwrap(),
        VerifyResponse::Accepted,
        "the password must be unchanged"
    );
}

#[tokio::test]
async fn missing_role_via_admin_is_permanent_and_verify_says_so() {
    let (su, guard, prefix) = setup().await;
    let admin = Credential::new(format!("{prefix}_admin"), policy().generate());
    create_role(&su, &guard, &admin.username, &admin.password, "LOGIN CREATEROLE").await;
    let ghost = format!("{prefix}_ghost");
    let rotator = rotator();
    // Under SCRAM a missing role is indistinguishable from a wrong password (28P01,
    // Rejected). Here a missing role is no member of kvr_scram, so pg_hba.conf trusts it:
    // the server accepts the login unchecked, which the rotator refuses as no proof (or,
    // were the guard not there, the server would then say 28000 "does not exist"). Either
    // way a permanent error.
    let permanent_for_ghost = |m: &str| m.contains("does not exist") || m.contains("without checking any password");
    match rotator.verify(VerifyRequest::new(ghost.clone(), policy().generate())).await {
        Ok(VerifyResponse::Rejected) => {}
        Err(RotatorError::Permanent(m)) => assert!(permanent_for_ghost(&m), "{m}"),
        other => panic!("{other:?}"),
    }
    let err = rotator
        .set_password(
            SetPasswordRequest::new(ghost.clone(), policy().generate(), policy().generate()).with_admin(admin),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(permanent_for_ghost(&err.to_string()), "{err}");
}

/// A role the worker cannot log in as at all (here NOLOGIN; likewise no pg_hba.conf entry
/// for the worker's address) is a configuration error, not a wrong password: otherwise
/// the admin would change a password no login can ever verify.
#[tokio::test]
async fn a_role_that_may_not_log_in_is_permanent_not_rejected() {
    let (su, guard, prefix) = setup().await;
    let user = format!("{prefix}_nologin");
    let p0 = policy().generate();
    create_role(&su, &guard, &user, &p0, "NOLOGIN").await;
    let err = rotator().verify(VerifyRequest::new(user.clone(), p0.clone())).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("28000") && err.to_string().contains("pg_hba.conf"), "{err}");
    let admin = Credential::new(format!("{prefix}_admin"), policy().generate());
    create_role(&su, &guard, &admin.username, &admin.password, "LOGIN CREATEROLE").await;
    let before = stored_verifier(&su, &user).await;
    let err = rotator()
        .set_password(SetPasswordRequest::new(user.clone(), policy().generate(), p0).with_admin(admin))
        .await
        .unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert_eq!(stored_verifier(&su, &user).await, before, "nothing changed");
}

#[tokio::test]
async fn missing_database_is_permanent() {
    let (su, guard, prefix) = setup().await;
    let user = format!("{prefix}_u");
    let p0 = policy().generate();
    create_role(&su, &guard, &user, &p0, "LOGIN").await;
    let mut cfg = PostgresConfig::new(HOST);
    cfg.database = format!("{prefix}_no_such_db");
    cfg.sslmode = SslMode::Disable;
    let err = PostgresRotator::new(cfg, policy()).unwrap().verify(VerifyRequest::new(user, p0)).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("3D000"), "{err}");
}

fn rotator_on(port: u16) -> PostgresRotator {
    let mut cfg = PostgresConfig::new(HOST);
    cfg.port = port;
    cfg.connect_timeout_secs = 1;
    cfg.sslmode = SslMode::Disable;
    PostgresRotator::new(cfg, policy()).unwrap()
}

fn any_set_request() -> SetPasswordRequest {
    SetPasswordRequest::new("nobody", policy().generate(), policy().generate())
}

#[tokio::test]
async fn refused_connection_is_transient() {
    // A port nobody listens on: bind, note it, close.
    let port = common::unused_port(HOST);
    let rotator = rotator_on(port);
    let err = rotator.verify(VerifyRequest::new("nobody", policy().generate())).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains(&format!("{HOST}:{port}")), "{err}");
    let err = rotator.set_password(any_set_request()).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn silent_server_times_out_as_transient() {
    // Accepts TCP, never speaks: tokio-postgres's own connect_timeout does not cover this.
    let (port, server) = common::silent_server(HOST).await;
    let started = Instant::now();
    let err = rotator_on(port).verify(VerifyRequest::new("nobody", policy().generate())).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("no answer within 1s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    server.abort();
}

// ---- Alternating users: the twin ----

struct PgTwinFixture {
    su: Client,
    guard: Arc<RoleGuard>,
    prefix: String,
    admin: Credential,
    next: usize,
}

impl PgTwinFixture {
    async fn new() -> Self {
        let (su, guard, prefix) = setup().await;
        let admin = Credential::new(format!("{prefix}_admin"), policy().generate());
        create_role(&su, &guard, &admin.username, &admin.password, "LOGIN CREATEROLE").await;
        Self { su, guard, prefix, admin, next: 0 }
    }

    fn table(&self) -> String {
        format!("{}_tbl", self.prefix)
    }
}

#[async_trait]
impl TwinFixture for PgTwinFixture {
    fn admin(&self) -> Credential {
        self.admin.clone()
    }

    async fn create_primary(&mut self, password: &SecretString) -> Result<String, String> {
        let name = format!("{}_app", self.prefix);
        create_role(&self.su, &self.guard, &name, password, "LOGIN CONNECTION LIMIT 7").await;
        // Owned by the primary alone (dropped with it by the guard's DROP OWNED).
        let table = ident(&self.table());
        let sql = format!(
            "CREATE TABLE {table} (x int); INSERT INTO {table} VALUES (1); ALTER TABLE {table} OWNER TO {}",
            ident(&name)
        );
        self.su.batch_execute(&sql).await.map_err(|e| e.to_string())?;
        Ok(name)
    }

    fn fresh_name(&mut self) -> String {
        self.next += 1;
        let name = format!("{}_twin{}", self.prefix, self.next);
        self.guard.register(&name);
        name
    }

    async fn use_primary_privilege(&mut self, user: &str, password: &SecretString) -> Result<(), String> {
        let (client, connection) = tokio_postgres::Config::new()
            .host(HOST)
            .port(PORT)
            .user(user)
            .password(password.expose_secret())
            .dbname("postgres")
            .connect(NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let row = client
            .query_one(&format!("SELECT x FROM {}", ident(&self.table())), &[])
            .await
            .map_err(|e| e.to_string())?;
        if row.get::<_, i32>(0) != 1 {
            return Err("wrong row".into());
        }
        Ok(())
    }

    async fn grow_primary(&mut self, primary: &str) -> Result<String, String> {
        self.su.batch_execute(&format!("ALTER ROLE {} CREATEDB", ident(primary))).await.map_err(|e| e.to_string())?;
        Ok("CREATEDB".into())
    }

    async fn grow_twin(&mut self, twin: &str) -> Result<String, String> {
        let extra = format!("{}_extra", self.prefix);
        self.guard.register(&extra);
        let sql = format!("CREATE ROLE {0} NOLOGIN; GRANT {0} TO {1}", ident(&extra), ident(twin));
        self.su.batch_execute(&sql).await.map_err(|e| e.to_string())?;
        Ok(extra)
    }
}

#[tokio::test]
async fn postgres_passes_twin_conformance() {
    let mut fixture = PgTwinFixture::new().await;
    let guard = Arc::clone(&fixture.guard);
    let report =
        run_twin_conformance(&rotator(), &mut fixture).await.unwrap_or_else(|e| panic!("twin conformance: {e}"));
    println!("{report}");
    // The twin got the primary's attributes, membership carries the rest, and the
    // verifier (not the password) was sent.
    let twin = format!("{}_twin1", fixture.prefix);
    let row = fixture
        .su
        .query_one(
            "SELECT r.rolconnlimit, r.rolcreatedb, a.rolpassword LIKE 'SCRAM-SHA-256$%', \
             pg_has_role(r.oid, $2::text, 'USAGE') FROM pg_roles r JOIN pg_authid a USING (oid) WHERE r.rolname = $1",
            &[&twin, &format!("{}_app", fixture.prefix)],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    assert!(row.get::<_, bool>(1) && row.get::<_, bool>(2) && row.get::<_, bool>(3));
    drop(guard);
}

#[tokio::test]
async fn a_twin_with_more_power_than_the_primary_or_a_group_role_is_refused() {
    let mut fixture = PgTwinFixture::new().await;
    let primary = fixture.create_primary(&policy().generate()).await.unwrap();
    for (options, why) in [("NOLOGIN", "NOLOGIN"), ("LOGIN CREATEROLE", "CREATEROLE"), ("LOGIN SUPERUSER", "SUPERUSER")]
    {
        let twin = fixture.fresh_name();
        create_role(&fixture.su, &fixture.guard, &twin, &policy().generate(), options).await;
        let req = SyncTwinRequest::new(primary.clone(), twin.clone(), fixture.admin.clone())
            .with_password_if_created(policy().generate())
            .with_twin_known(true);
        let e = rotator().sync_twin(req).await.unwrap_err();
        assert!(matches!(&e, RotatorError::Permanent(m) if m.contains(why)), "{options}: {e}");
        let members = fixture
            .su
            .query_opt(
                "SELECT 1 FROM pg_auth_members WHERE member = $1::text::regrole AND roleid = $2::text::regrole",
                &[&ident(&twin), &ident(&primary)],
            )
            .await
            .unwrap();
        assert!(members.is_none(), "{options}: a refused twin was changed");
    }
}

/// Issue #11: a pending password the engine has just journaled (`pending_is_new`) is not
/// tried first, so a fresh change costs two logins — the current password, then the new
/// one, which proves it (`pending_verified`). Any other request (a resumed journal) still
/// tries the pending password first: one login when it already works, three when not.
#[tokio::test]
async fn a_new_pending_password_is_not_tried_first_and_a_resumed_one_is() {
    let (su, guard, prefix) = setup().await;
    let user = format!("{prefix}_fast");
    let p0 = policy().generate();
    create_role(&su, &guard, &user, &p0, "LOGIN").await;
    let (port, logins, task) = common::counting_forwarder(HOST, (HOST, PORT)).await;
    let proxied = rotator_on(port);
    let counted = |before: usize| logins.load(Ordering::SeqCst) - before;

    let p1 = policy().generate();
    let fresh = SetPasswordRequest::new(user.clone(), p1.clone(), p0.clone()).with_pending_is_new(true);
    let before = logins.load(Ordering::SeqCst);
    let set = proxied.set_password(fresh.clone()).await.unwrap();
    assert_eq!((set.outcome, set.pending_verified), (SetPasswordOutcome::ChangedWithCurrent, true));
    assert_eq!(counted(before), 2, "a new pending password: the current login and the proof, nothing else");

    // The same password resumed (a crash after ALTER ROLE): tried first, and it works.
    let before = logins.load(Ordering::SeqCst);
    let set = proxied.set_password(fresh.clone().with_pending_is_new(false)).await.unwrap();
    assert_eq!((set.outcome, set.pending_verified), (SetPasswordOutcome::AlreadySet, true));
    assert_eq!(counted(before), 1, "a resumed pending password that works: one login");

    // A resumed password not set yet: tried first (refused), then the change and its proof.
    let p2 = policy().generate();
    let resumed = SetPasswordRequest::new(user.clone(), p2.clone(), p1);
    let before = logins.load(Ordering::SeqCst);
    let set = proxied.set_password(resumed).await.unwrap();
    assert_eq!((set.outcome, set.pending_verified), (SetPasswordOutcome::ChangedWithCurrent, true));
    assert_eq!(counted(before), 3, "a resumed pending password is tried before the change");
    task.abort();
    assert!(matches!(rotator().verify(VerifyRequest::new(user, p2)).await, Ok(VerifyResponse::Accepted)));
}
