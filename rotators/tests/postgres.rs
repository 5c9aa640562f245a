//! The PostgreSQL rotator against the real server on 127.0.0.1:5432.
//!
//! Test roles are members of `kvr_scram`, which `scripts/setup-postgres.sh` puts under
//! `scram-sha-256` in pg_hba.conf; without it every password logs in and these tests
//! fail (never skip) saying so. Roles are named `kvr_t_<random>…` and dropped by a guard,
//! also when a test fails. The `postgres` superuser connects over trust to set them up.
#![cfg(feature = "postgres")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kv_rotator_rotators::postgres::{PostgresConfig, PostgresRotator};
use kv_rotator_rotators::testkit::{contains_secret, run_conformance, ConformanceFixture};
use kv_rotator_rotators::{
    Credential, PasswordPolicy, Rotator, RotatorError, SetPasswordOutcome, SetPasswordRequest, VerifyRequest,
    VerifyResponse,
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
        // Drop may run on a runtime thread (even while unwinding): use a thread of its own.
        let result = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let su = superuser().await;
                for role in roles.iter().rev() {
                    if let Err(e) = su.batch_execute(&format!("DROP ROLE IF EXISTS {}", ident(role))).await {
                        eprintln!("cleanup: could not drop role {role:?}: {e}");
                    }
                }
            })
        })
        .join();
        if result.is_err() {
            eprintln!("cleanup of test roles panicked");
        }
    }
}

fn prefix() -> String {
    format!("kvr_t_{:08x}", rand::random::<u32>())
}

fn policy() -> PasswordPolicy {
    PasswordPolicy::default()
}

fn rotator() -> PostgresRotator {
    let mut cfg = PostgresConfig::new(HOST);
    cfg.port = PORT;
    cfg.application_name = "kv-rotator-tests".to_owned();
    PostgresRotator::new(cfg, policy())
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
    let got = rotator.verify(VerifyRequest { username: probe.clone(), password: wrong }).await;
    assert!(
        matches!(got, Ok(VerifyResponse::Rejected)),
        "a wrong password was not rejected for a kvr_scram member ({got:?}): {SETUP_HINT}"
    );
    let got = rotator.verify(VerifyRequest { username: probe, password: right }).await;
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

#[tokio::test]
async fn postgres_passes_conformance() {
    let (su, guard, prefix) = setup().await;
    let admin = Credential { username: format!("{prefix}_admin"), password: policy().generate() };
    create_role(&su, &guard, &admin.username, &admin.password, "LOGIN CREATEROLE").await;
    let mut fixture = PgFixture { su, guard: Arc::clone(&guard), prefix, admin, next: 0 };
    let rotator = rotator();
    let report = run_conformance(&rotator, &mut fixture).await.unwrap_or_else(|e| panic!("conformance: {e}"));
    println!("{report}");
    assert!(report.skipped.is_empty(), "postgres must run every check: {report}");
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
    let resp = rotator
        .set_password(SetPasswordRequest {
            username: tricky.clone(),
            pending: p1.clone(),
            current: p0.clone(),
            previous: vec![],
            admin: None,
        })
        .await
        .unwrap();
    assert_eq!(resp.outcome, SetPasswordOutcome::ChangedWithCurrent);
    let verify = |password: &SecretString| VerifyRequest { username: tricky.clone(), password: password.clone() };
    assert_eq!(rotator.verify(verify(&p1)).await.unwrap(), VerifyResponse::Accepted);
    assert_eq!(rotator.verify(verify(&p0)).await.unwrap(), VerifyResponse::Rejected);
    assert_eq!(stored_verifier(&su, &decoy).await, decoy_before, "another role was touched");

    // The admin path quotes the name too.
    let admin = Credential { username: format!("{prefix} \"adm\""), password: policy().generate() };
    create_role(&su, &guard, &admin.username, &admin.password, "LOGIN CREATEROLE").await;
    let p2 = policy().generate();
    let resp = rotator
        .set_password(SetPasswordRequest {
            username: tricky.clone(),
            pending: p2.clone(),
            current: p0,
            previous: vec![],
            admin: Some(admin),
        })
        .await
        .unwrap();
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
    rotator()
        .set_password(SetPasswordRequest {
            username: user.clone(),
            pending: p1.clone(),
            current: p0,
            previous: vec![],
            admin: None,
        })
        .await
        .unwrap();
    let stored = stored_verifier(&su, &user).await;
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "not a SCRAM verifier: {stored}");
    assert!(!contains_secret(&stored, &p1));
}

#[tokio::test]
async fn admin_without_privilege_is_permanent_and_names_the_login() {
    let (su, guard, prefix) = setup().await;
    let user = format!("{prefix}_u");
    let weak = Credential { username: format!("{prefix}_weak"), password: policy().generate() };
    let p0 = policy().generate();
    create_role(&su, &guard, &user, &p0, "LOGIN").await;
    create_role(&su, &guard, &weak.username, &weak.password, "LOGIN").await;
    let req = SetPasswordRequest {
        username: user.clone(),
        pending: policy().generate(),
        current: policy().generate(),
        previous: vec![policy().generate()],
        admin: Some(weak.clone()),
    };
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
        rotator().verify(VerifyRequest { username: user, password: p0 }).await.unwrap(),
        VerifyResponse::Accepted,
        "the password must be unchanged"
    );
}

#[tokio::test]
async fn missing_role_via_admin_is_permanent_and_verify_says_so() {
    let (su, guard, prefix) = setup().await;
    let admin = Credential { username: format!("{prefix}_admin"), password: policy().generate() };
    create_role(&su, &guard, &admin.username, &admin.password, "LOGIN CREATEROLE").await;
    let ghost = format!("{prefix}_ghost");
    let rotator = rotator();
    // Under SCRAM a missing role is indistinguishable from a wrong password (28P01,
    // Rejected); where pg_hba.conf lets the server say so (28000), it is a configuration
    // error naming the role.
    match rotator.verify(VerifyRequest { username: ghost.clone(), password: policy().generate() }).await {
        Ok(VerifyResponse::Rejected) => {}
        Err(RotatorError::Permanent(m)) => assert!(m.contains("does not exist"), "{m}"),
        other => panic!("{other:?}"),
    }
    let err = rotator
        .set_password(SetPasswordRequest {
            username: ghost.clone(),
            pending: policy().generate(),
            current: policy().generate(),
            previous: vec![],
            admin: Some(admin),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
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
    let err = rotator().verify(VerifyRequest { username: user.clone(), password: p0.clone() }).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("28000") && err.to_string().contains("pg_hba.conf"), "{err}");
    let admin = Credential { username: format!("{prefix}_admin"), password: policy().generate() };
    create_role(&su, &guard, &admin.username, &admin.password, "LOGIN CREATEROLE").await;
    let before = stored_verifier(&su, &user).await;
    let err = rotator()
        .set_password(SetPasswordRequest {
            username: user.clone(),
            pending: policy().generate(),
            current: p0,
            previous: vec![],
            admin: Some(admin),
        })
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
    let err =
        PostgresRotator::new(cfg, policy()).verify(VerifyRequest { username: user, password: p0 }).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("3D000"), "{err}");
}

fn rotator_on(port: u16) -> PostgresRotator {
    let mut cfg = PostgresConfig::new(HOST);
    cfg.port = port;
    cfg.connect_timeout_secs = 1;
    PostgresRotator::new(cfg, policy())
}

fn any_set_request() -> SetPasswordRequest {
    SetPasswordRequest {
        username: "nobody".to_owned(),
        pending: policy().generate(),
        current: policy().generate(),
        previous: vec![],
        admin: None,
    }
}

#[tokio::test]
async fn refused_connection_is_transient() {
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind((HOST, 0)).unwrap().local_addr().unwrap().port();
    let rotator = rotator_on(port);
    let err =
        rotator.verify(VerifyRequest { username: "nobody".into(), password: policy().generate() }).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains(&format!("{HOST}:{port}")), "{err}");
    let err = rotator.set_password(any_set_request()).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn silent_server_times_out_as_transient() {
    // Accepts TCP, never speaks: tokio-postgres's own connect_timeout does not cover this.
    let listener = tokio::net::TcpListener::bind((HOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            held.push(socket);
        }
    });
    let started = Instant::now();
    let err = rotator_on(port)
        .verify(VerifyRequest { username: "nobody".into(), password: policy().generate() })
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("no answer within 1s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    server.abort();
}
