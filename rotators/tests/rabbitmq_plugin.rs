//! The RabbitMQ exec plugin (`examples/plugins/rabbitmq.py`) against the machine's
//! RabbitMQ: the conformance checks; every rotation seen by an AMQP client of its own
//! (`amqprs`), not the plugin's probe; only a hash on the wire and in the server; the
//! user's tags, limits and permissions kept; hostile user names that reach no other user
//! or endpoint; a wrong or powerless admin, a missing user and an unreachable server, each
//! a clear error that changed nothing.
//!
//! Needs `scripts/setup-rabbitmq.sh` (the management API on 127.0.0.1:15672, guest an
//! administrator there: the tests administer the server as guest). Every user a test makes
//! is deleted when it ends, passed or failed.

#![cfg(feature = "exec")]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use amqprs::connection::{Connection, OpenConnectionArguments};
use async_trait::async_trait;
use base64::Engine as _;
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::exec::{ExecConfig, ExecRotator};
use kv_rotator_rotators::testkit::{run_conformance, ConformanceFixture};
use kv_rotator_rotators::{
    Credential, PasswordPolicy, Rotator, RotatorError, SetPasswordOutcome, SetPasswordRequest, VerifyResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SETUP_HINT: &str = "run `sudo scripts/setup-rabbitmq.sh` (it enables the management plugin)";

/// The management API (`KVR_TEST_RABBITMQ_URL`, default `http://127.0.0.1:15672`).
fn management_url() -> String {
    std::env::var("KVR_TEST_RABBITMQ_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".to_owned())
}

/// The AMQP listener (`KVR_TEST_RABBITMQ_AMQP`, default `127.0.0.1:5672`).
fn amqp_addr() -> (String, u16) {
    let addr = std::env::var("KVR_TEST_RABBITMQ_AMQP").unwrap_or_else(|_| "127.0.0.1:5672".to_owned());
    let (host, port) = addr.rsplit_once(':').expect("KVR_TEST_RABBITMQ_AMQP is host:port");
    (host.to_owned(), port.parse().expect("KVR_TEST_RABBITMQ_AMQP's port"))
}

fn plugin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/rabbitmq.py").canonicalize().unwrap()
}

fn rotator_with(settings: Value) -> ExecRotator {
    let mut cfg = ExecConfig::new(plugin());
    cfg.settings = settings.as_object().unwrap().clone();
    ExecRotator::new(cfg, PasswordPolicy::default(), Strategy::SingleUser)
}

fn settings_for(management_url: &str) -> Value {
    let (host, port) = amqp_addr();
    json!({ "management_url": management_url, "amqp_host": host, "amqp_port": port, "timeout_secs": 5 })
}

fn rotator() -> ExecRotator {
    rotator_with(settings_for(&management_url()))
}

fn password() -> SecretString {
    PasswordPolicy::default().generate()
}

/// A user name as one percent-encoded path segment: written here, not taken from the plugin.
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn prefix() -> String {
    format!("kvr_t_{:08x}", rand::random::<u32>())
}

/// The management API as guest (the machine's administrator), for the tests' own setup
/// and checks.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new() -> Self {
        Self { http: reqwest::Client::new(), base: management_url() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req =
            self.http.request(method.clone(), format!("{}{path}", self.base)).basic_auth("guest", Some("guest"));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}; {SETUP_HINT}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn put_user(&self, name: &str, password: &SecretString, tags: &str) {
        let body = json!({ "password": password.expose_secret(), "tags": tags });
        let (status, _) = self.call(reqwest::Method::PUT, &format!("/api/users/{}", segment(name)), Some(body)).await;
        assert!(status == 201 || status == 204, "creating user {name:?}: HTTP {status}");
    }

    /// Configure, write and read on vhost `/` (an AMQP client opens it).
    async fn permit(&self, name: &str) {
        let body = json!({ "configure": "^kvr-", "write": "^kvr-", "read": "^kvr-" });
        let (status, _) =
            self.call(reqwest::Method::PUT, &format!("/api/permissions/%2F/{}", segment(name)), Some(body)).await;
        assert!(status == 201 || status == 204, "permissions of {name:?}: HTTP {status}");
    }

    async fn get_user(&self, name: &str) -> Option<Value> {
        let (status, user) = self.call(reqwest::Method::GET, &format!("/api/users/{}", segment(name)), None).await;
        match status {
            200 => Some(user),
            404 => None,
            other => panic!("GET user {name:?}: HTTP {other}"),
        }
    }

    async fn names(&self, what: &str) -> BTreeSet<String> {
        let (status, list) = self.call(reqwest::Method::GET, &format!("/api/{what}"), None).await;
        assert_eq!(status, 200, "GET /api/{what}");
        list.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().to_owned()).collect()
    }
}

/// Deletes every registered user when the test ends, passed or failed.
struct UserGuard {
    api: Api,
    users: Mutex<Vec<String>>,
}

impl UserGuard {
    fn new(api: &Api) -> Arc<Self> {
        Arc::new(Self { api: api.clone(), users: Mutex::new(Vec::new()) })
    }

    /// Creates `name` (registered first, so a failed creation is cleaned up too).
    async fn user(&self, name: &str, password: &SecretString, tags: &str) {
        self.users.lock().unwrap().push(name.to_owned());
        self.api.put_user(name, password, tags).await;
    }

    async fn admin(&self, prefix: &str) -> Credential {
        let admin = Credential::new(format!("{prefix}_admin"), password());
        self.user(&admin.username, &admin.password, "administrator").await;
        admin
    }
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        let users = std::mem::take(&mut *self.users.lock().unwrap_or_else(|p| p.into_inner()));
        let base = self.api.base.clone();
        common::cleanup_on_own_thread("RabbitMQ test users", move || async move {
            let http = reqwest::Client::new();
            for user in users {
                let url = format!("{base}/api/users/{}", segment(&user));
                if let Err(e) = http.delete(url).basic_auth("guest", Some("guest")).send().await {
                    eprintln!("cleanup: could not delete RabbitMQ user {user:?}: {e}");
                }
            }
        });
    }
}

/// What most tests start from: an admin (tagged `administrator`) and a user `{prefix}_{name}`
/// with `tags`, allowed on vhost `/`, whose password is `p0`.
struct Setup {
    api: Api,
    guard: Arc<UserGuard>,
    prefix: String,
    admin: Credential,
    user: String,
    p0: SecretString,
}

async fn setup(name: &str, tags: &str) -> Setup {
    let api = Api::new();
    let guard = UserGuard::new(&api);
    let prefix = prefix();
    let admin = guard.admin(&prefix).await;
    let user = format!("{prefix}_{name}");
    let p0 = password();
    guard.user(&user, &p0, tags).await;
    api.permit(&user).await;
    Setup { api, guard, prefix, admin, user, p0 }
}

/// An AMQP 0-9-1 login by another client than the plugin's: `Ok` once the connection is
/// open on vhost `/` (`Connection.OpenOk`), `Err` with the client's error otherwise.
async fn amqp_login(user: &str, password: &SecretString) -> Result<(), String> {
    let (host, port) = amqp_addr();
    let args = OpenConnectionArguments::new(&host, port, user, password.expose_secret());
    let conn = Connection::open(&args).await.map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok(())
}

async fn assert_logs_in(user: &str, password: &SecretString, which: &str) {
    if let Err(e) = amqp_login(user, password).await {
        panic!("AMQP login of {user:?} with {which} failed: {e}");
    }
}

/// A refused login, as amqprs sees one: it does not ask for the server's 403 (the
/// `authentication_failure_close` capability), so RabbitMQ drops the connection after the
/// login. A vhost refusal (530) would mean the password worked.
async fn assert_refused(user: &str, password: &SecretString, which: &str) {
    match amqp_login(user, password).await {
        Ok(()) => panic!("AMQP login of {user:?} with {which} was accepted"),
        Err(e) => assert!(
            e.contains("ACCESS_REFUSED") || (e.contains("network io error") && !e.contains("NOT_ALLOWED")),
            "{user:?} with {which}: not a refused login: {e}"
        ),
    }
}

/// A set request for `user` (its current password, no previous one), with `admin`.
fn set_request(
    user: &str,
    pending: &SecretString,
    current: &SecretString,
    admin: Option<Credential>,
) -> SetPasswordRequest {
    common::request(user, pending, current).with_admin(admin)
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref().to_vec()
}

/// Whether RabbitMQ's stored `password_hash` (base64 of a 4-byte salt and
/// SHA-256(salt + password)) is that of `password`.
fn hash_matches(stored: &str, password: &SecretString) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(stored) else { return false };
    if raw.len() != 36 {
        return false;
    }
    let (salt, digest) = raw.split_at(4);
    sha256(&[salt, password.expose_secret().as_bytes()].concat()) == digest
}

// ---- conformance ----

/// Users for the conformance checks. The checks change a password with the user's own
/// login and no admin (`ChangedWithCurrent`), which RabbitMQ's management API allows only
/// to users tagged `administrator`: these users are, as a Redis fixture's users hold
/// `+acl|setuser`. Untagged users, changed by the admin, are the other tests'.
struct Fixture {
    guard: Arc<UserGuard>,
    prefix: String,
    admin: Credential,
    next: usize,
}

#[async_trait]
impl ConformanceFixture for Fixture {
    async fn create_user(&mut self, password: &SecretString) -> Result<String, String> {
        self.next += 1;
        let name = format!("{}_u{}", self.prefix, self.next);
        self.guard.user(&name, password, "administrator").await;
        Ok(name)
    }

    fn admin(&self) -> Option<Credential> {
        Some(self.admin.clone())
    }
}

#[tokio::test]
async fn the_rabbitmq_plugin_passes_conformance() {
    let api = Api::new();
    let guard = UserGuard::new(&api);
    let prefix = prefix();
    let admin = guard.admin(&prefix).await;
    let mut fixture = Fixture { guard: Arc::clone(&guard), prefix, admin, next: 0 };
    let report = run_conformance(&rotator(), &mut fixture).await.unwrap_or_else(|e| panic!("conformance: {e}"));
    println!("{report}");
    assert!(report.skipped.is_empty(), "the RabbitMQ plugin must run every check: {report}");
}

// ---- what a user of the server checks ----

/// Forwards connections on 127.0.0.1 to `to`, keeping every byte the client sent.
async fn recording_forwarder(to: (String, u16)) -> (u16, Arc<Mutex<Vec<u8>>>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&sent);
    let task = tokio::spawn(async move {
        loop {
            let (inbound, _) = listener.accept().await.unwrap();
            let outbound = tokio::net::TcpStream::connect(to.clone()).await.unwrap();
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let (mut in_read, mut in_write) = inbound.into_split();
                let (mut out_read, mut out_write) = outbound.into_split();
                let upstream = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match in_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                record.lock().unwrap().extend_from_slice(&buf[..n]);
                                if out_write.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = out_write.shutdown().await;
                };
                let downstream = async {
                    let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
                    let _ = in_write.shutdown().await;
                };
                tokio::join!(upstream, downstream);
            });
        }
    });
    (port, sent, task)
}

#[tokio::test]
async fn a_rotation_sends_only_a_hash_keeps_tags_limits_and_permissions_and_an_amqp_client_sees_it() {
    let Setup { api, guard: _guard, admin, user, p0, .. } = setup("app", "monitoring").await;
    let (status, _) = api
        .call(reqwest::Method::PUT, &format!("/api/user-limits/{user}/max-connections"), Some(json!({"value": 20})))
        .await;
    assert_eq!(status, 204, "setting a user limit");
    let permissions_before = api.call(reqwest::Method::GET, &format!("/api/users/{user}/permissions"), None).await;
    assert_logs_in(&user, &p0, "its first password").await;

    // Through a forwarder that keeps every byte the plugin sends to the management API.
    let url = reqwest::Url::parse(&management_url()).unwrap();
    let to = (url.host_str().unwrap().to_owned(), url.port_or_known_default().unwrap());
    let (port, sent, task) = recording_forwarder(to).await;
    let rotator = rotator_with(settings_for(&format!("http://127.0.0.1:{port}")));
    let p1 = password();
    let mut req = set_request(&user, &p1, &p0, Some(admin));
    req.pending_is_new = true;
    let resp = rotator.set_password(req).await.unwrap_or_else(|e| panic!("set: {e}"));
    task.abort();
    // Tagged `monitoring`, the user may not change users itself: the admin did.
    assert_eq!(resp.outcome, SetPasswordOutcome::ChangedWithAdmin);

    assert_logs_in(&user, &p1, "the new password").await;
    assert_refused(&user, &p0, "the replaced password").await;
    assert_eq!(rotator.verify(common::verify(&user, &p1)).await.unwrap(), VerifyResponse::Accepted);
    assert_eq!(rotator.verify(common::verify(&user, &p0)).await.unwrap(), VerifyResponse::Rejected);

    let sent = String::from_utf8_lossy(&sent.lock().unwrap()).into_owned();
    assert!(sent.contains("PUT /api/users/") && sent.contains("\"password_hash\""), "the plugin sent no hash");
    assert!(!sent.contains(p1.expose_secret()), "the new password itself went to the management API");
    assert!(!sent.contains("\"password\""), "a clear password field went to the management API");

    let stored = api.get_user(&user).await.expect("the user still exists");
    let hash = stored["password_hash"].as_str().unwrap();
    assert_ne!(hash, p1.expose_secret(), "the server stores the clear password");
    assert!(!hash.contains(p1.expose_secret()));
    assert!(hash_matches(hash, &p1), "the stored hash is not salt + SHA-256(salt + new password)");
    assert_eq!(stored["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert_eq!(stored["tags"], json!(["monitoring"]), "tags kept");
    assert_eq!(stored["limits"], json!({"max-connections": 20}), "limits kept");
    let permissions_after = api.call(reqwest::Method::GET, &format!("/api/users/{user}/permissions"), None).await;
    assert_eq!(permissions_after, permissions_before, "permissions kept");
}

#[tokio::test]
async fn hostile_user_names_reach_no_other_user_or_endpoint() {
    let Setup { api, guard, prefix, admin, user: victim, p0 } = setup("victim", "").await;
    let victim_before = api.get_user(&victim).await.unwrap();
    let vhosts_before = api.names("vhosts").await;
    let rotator = rotator();

    let hostile = [
        format!("../users/{victim}"),
        format!("..%2Fusers%2F{victim}"),
        format!("%2E%2E/users/{victim}"),
        format!("{victim}/x"),
        format!("{victim}?x=1"),
        format!("{victim}#x"),
        format!("{victim}:x"),
        format!("{victim}%00"),
        format!("{victim}\t"),
        "../vhosts".to_owned(),
        "../vhosts/kvr-hostile".to_owned(),
        "..".to_owned(),
        "a/b".to_owned(),
        "%2F".to_owned(),
        "x".repeat(10_000),
        format!("{prefix}_üñí€ødé"),
    ];
    for name in &hostile {
        let shown: String = name.chars().take(60).collect();
        // The victim's own password as current, and a working admin: the worst case.
        let result = rotator.set_password(set_request(name, &password(), &p0, Some(admin.clone()))).await;
        match result {
            Err(RotatorError::Permanent(_)) => {}
            other => panic!("set of {shown:?}: expected a permanent error, got {other:?}"),
        }
        assert!(!api.names("users").await.contains(name), "{shown:?} was created");
    }
    assert_eq!(api.get_user(&victim).await.unwrap(), victim_before, "the victim changed");
    assert_logs_in(&victim, &p0, "its untouched password").await;
    assert_eq!(api.names("vhosts").await, vhosts_before, "a virtual host appeared or went");

    // Names like these are users too: each is rotated as itself, and the user whose name
    // is a part of it stays as it was.
    let owner = prefix.clone();
    let owner_password = password();
    guard.user(&owner, &owner_password, "").await;
    let owner_before = api.get_user(&owner).await.unwrap();
    // (Not `..` itself: the tests' own HTTP client would resolve `%2E%2E` as a dot segment.)
    for name in [format!("{prefix}/a b"), format!("{prefix}/../{prefix}"), format!("{prefix}_üñí€ødé")] {
        let q0 = password();
        guard.user(&name, &q0, "").await;
        api.permit(&name).await;
        let q1 = password();
        let resp = rotator
            .set_password(set_request(&name, &q1, &q0, Some(admin.clone())))
            .await
            .unwrap_or_else(|e| panic!("set of {name:?}: {e}"));
        assert_eq!(resp.outcome, SetPasswordOutcome::ChangedWithAdmin, "{name:?}");
        assert_logs_in(&name, &q1, "its new password").await;
        assert_refused(&name, &q0, "its old password").await;
    }
    assert_eq!(api.get_user(&owner).await.unwrap(), owner_before, "a user named by a part of another changed");
    assert_eq!(api.get_user(&victim).await.unwrap(), victim_before, "the victim changed");
}

#[tokio::test]
async fn a_wrong_or_powerless_admin_or_a_missing_user_is_a_clear_permanent_error_that_changes_nothing() {
    let Setup { api, guard, prefix, admin, user, p0 } = setup("app", "").await;
    let before = api.get_user(&user).await.unwrap();
    let rotator = rotator();
    let permanent = |result: Result<_, RotatorError>, case: &str| match result {
        Err(RotatorError::Permanent(message)) => message,
        other => panic!("{case}: expected a permanent error, got {other:?}"),
    };

    let wrong_admin = Credential::new(admin.username.clone(), password());
    let message = permanent(
        rotator.set_password(set_request(&user, &password(), &password(), Some(wrong_admin))).await,
        "wrong admin password",
    );
    assert!(message.contains(&format!("admin '{}': login refused", admin.username)), "{message}");

    let monitor = Credential::new(format!("{prefix}_monitor"), password());
    guard.user(&monitor.username, &monitor.password, "monitoring").await;
    let message = permanent(
        rotator.set_password(set_request(&user, &password(), &password(), Some(monitor))).await,
        "an admin that is not an administrator",
    );
    assert!(message.contains("may not change users") && message.contains("administrator"), "{message}");

    // The user's own (right) password, and no admin: an untagged user may not change it.
    let message =
        permanent(rotator.set_password(set_request(&user, &password(), &p0, None)).await, "no admin, untagged user");
    assert!(message.contains("may not change users") && message.contains("no admin login given"), "{message}");

    assert_eq!(api.get_user(&user).await.unwrap(), before, "the user changed");
    assert_logs_in(&user, &p0, "its untouched password").await;

    let ghost = format!("{prefix}_ghost");
    let message = permanent(
        rotator.set_password(set_request(&ghost, &password(), &password(), Some(admin))).await,
        "a user that does not exist",
    );
    assert!(message.contains("never creates"), "{message}");
    assert!(api.get_user(&ghost).await.is_none(), "the plugin created a user");
}

#[tokio::test]
async fn an_unreachable_or_silent_server_is_a_transient_error_not_a_rejection() {
    let Setup { guard: _guard, admin, user, p0, .. } = setup("app", "").await;
    let nobody = common::unused_port("127.0.0.1");
    let (silent, task) = common::silent_server("127.0.0.1").await;

    for (port, what) in [(nobody, "nobody listening"), (silent, "a server that never speaks")] {
        let mut settings = settings_for(&management_url());
        settings["amqp_port"] = json!(port);
        settings["timeout_secs"] = json!(1);
        let result = rotator_with(settings).verify(common::verify(&user, &p0)).await;
        assert!(matches!(result, Err(RotatorError::Transient(_))), "verify, AMQP {what}: {result:?}");

        let mut settings = settings_for(&format!("http://127.0.0.1:{port}"));
        settings["timeout_secs"] = json!(1);
        let rotator = rotator_with(settings);
        let mut req = set_request(&user, &password(), &p0, Some(admin.clone()));
        req.pending_is_new = true;
        let result = rotator.set_password(req).await;
        assert!(matches!(result, Err(RotatorError::Transient(_))), "set, management API {what}: {result:?}");
    }
    task.abort();
    assert_logs_in(&user, &p0, "its untouched password").await;
}

/// Terminates TLS (`acceptor`'s certificate) on 127.0.0.1 and forwards in the clear to `to`:
/// RabbitMQ's management API and AMQP port over TLS, without reconfiguring the server.
async fn tls_terminator(acceptor: tokio_rustls::TlsAcceptor, to: (String, u16)) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let (inbound, _) = listener.accept().await.unwrap();
            let (acceptor, to) = (acceptor.clone(), to.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(inbound).await else { return };
                let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut outbound).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn tls_to_the_management_api_and_to_amqp_is_verified_with_ca_file() {
    let Setup { guard: _guard, admin, user, p0, .. } = setup("app", "").await;
    let dir = tempfile::tempdir().unwrap();
    let acceptor = common::tls_acceptor(dir.path());
    let url = reqwest::Url::parse(&management_url()).unwrap();
    let management = (url.host_str().unwrap().to_owned(), url.port_or_known_default().unwrap());
    let (https, https_task) = tls_terminator(acceptor.clone(), management).await;
    let (amqps, amqps_task) = tls_terminator(acceptor, amqp_addr()).await;
    let settings = |ca: &Path| {
        json!({
            "management_url": format!("https://127.0.0.1:{https}"), "amqp_host": "127.0.0.1", "amqp_port": amqps,
            "amqp_tls": true, "ca_file": ca, "timeout_secs": 5,
        })
    };

    // A CA that did not sign the certificate: refused before any login is sent.
    let untrusting = rotator_with(settings(&common::other_ca(dir.path())));
    let result = untrusting.verify(common::verify(&user, &p0)).await;
    assert!(matches!(&result, Err(RotatorError::Permanent(m)) if m.contains("certificate")), "verify: {result:?}");
    let mut req = set_request(&user, &password(), &p0, Some(admin.clone()));
    req.pending_is_new = true;
    let result = untrusting.set_password(req).await;
    assert!(matches!(&result, Err(RotatorError::Permanent(m)) if m.contains("certificate")), "set: {result:?}");

    let rotator = rotator_with(settings(&dir.path().join("ca.pem")));
    assert_eq!(rotator.verify(common::verify(&user, &p0)).await.unwrap(), VerifyResponse::Accepted);
    assert_eq!(rotator.verify(common::verify(&user, &password())).await.unwrap(), VerifyResponse::Rejected);
    let p1 = password();
    let resp = rotator.set_password(set_request(&user, &p1, &p0, Some(admin))).await.unwrap();
    assert_eq!(resp.outcome, SetPasswordOutcome::ChangedWithAdmin);
    assert_eq!(rotator.verify(common::verify(&user, &p1)).await.unwrap(), VerifyResponse::Accepted);
    assert_eq!(rotator.verify(common::verify(&user, &p0)).await.unwrap(), VerifyResponse::Rejected);
    https_task.abort();
    amqps_task.abort();
    assert_logs_in(&user, &p1, "the new password, in the clear").await;
    assert_refused(&user, &p0, "the replaced password, in the clear").await;
}

#[tokio::test]
async fn passwords_are_sent_in_clear_only_to_a_loopback_host() {
    // 192.0.2.1 (TEST-NET-1) is never reached: the settings are refused before any
    // connection, for the management API and for AMQP alike.
    for settings in [
        json!({ "management_url": "http://192.0.2.1:15672", "amqp_tls": true }),
        json!({ "management_url": "https://192.0.2.1:15671", "amqp_host": "192.0.2.1" }),
        json!({ "management_url": "http://rabbitmq.example:15672", "amqp_host": "127.0.0.1" }),
    ] {
        let request = kv_rotator_rotators::VerifyRequest::new("app", password());
        let e = rotator_with(settings.clone()).verify(request).await.unwrap_err();
        assert!(
            matches!(&e, RotatorError::Permanent(m) if m.contains("passwords are sent in clear only to a loopback host")),
            "{settings}: {e}"
        );
    }
}
