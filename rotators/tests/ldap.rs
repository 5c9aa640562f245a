//! The LDAP rotator against the real OpenLDAP server `scripts/setup-slapd.sh` starts:
//! StartTLS on 127.0.0.1:3389, LDAPS on 127.0.0.1:3636, a certificate from its own test
//! CA, suffix `dc=kvr,dc=test`, the root DN `cn=admin` and a service account
//! `cn=kv-rotator,ou=services` that may change the passwords of entries under
//! `ou=people` only.
//!
//! Test entries are `uid=kvr_t_<random>…,ou=people,…` (and an `ou=kvr_t_<random>` of
//! their own where a test needs one), added and deleted by the root DN through a guard,
//! also when a test fails. The checks that a password binds or not are made here with
//! `ldap3` directly, not through the rotator.
#![cfg(feature = "ldap")]

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::{request, verify};
use kv_rotator_rotators::ldap::{LdapConfig, LdapRotator, TlsMode};
use kv_rotator_rotators::testkit::{run_conformance, ConformanceFixture};
use kv_rotator_rotators::tls::{client_config, Verification};
use kv_rotator_rotators::{Credential, PasswordPolicy, Rotator, RotatorError, SetPasswordOutcome, VerifyResponse};
use ldap3::{dn_escape, Ldap, LdapConnAsync, LdapConnSettings};
use secrecy::{ExposeSecret, SecretString};

const SETUP_HINT: &str = "run `sudo scripts/setup-slapd.sh` (slapd with LDAPS and StartTLS from a test CA)";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn port() -> u16 {
    env_or("KVR_TEST_LDAP_PORT", "3389").parse().unwrap()
}

fn tls_port() -> u16 {
    env_or("KVR_TEST_LDAPS_PORT", "3636").parse().unwrap()
}

fn suffix() -> String {
    env_or("KVR_TEST_LDAP_SUFFIX", "dc=kvr,dc=test")
}

fn people() -> String {
    format!("ou=people,{}", suffix())
}

fn ca() -> PathBuf {
    let path = PathBuf::from(env_or("KVR_TEST_LDAP_CA", "/var/lib/kvr-test-slapd-tls/ca.pem"));
    assert!(path.is_file(), "no test CA at {}: {SETUP_HINT}", path.display());
    path
}

/// The root DN (setup's fixture password).
fn root() -> Credential {
    Credential::new(
        format!("cn=admin,{}", suffix()),
        SecretString::from(env_or("KVR_TEST_LDAP_ADMIN_PASSWORD", "kvr-test-ldap-admin")),
    )
}

/// The service account that may change passwords under ou=people only.
fn service() -> Credential {
    Credential::new(
        format!("cn=kv-rotator,ou=services,{}", suffix()),
        SecretString::from(env_or("KVR_TEST_LDAP_SERVICE_PASSWORD", "kvr-test-ldap-service")),
    )
}

fn policy() -> PasswordPolicy {
    PasswordPolicy::default()
}

fn template() -> String {
    format!("uid={{}},{}", people())
}

fn ldaps_config() -> LdapConfig {
    let mut cfg = LdapConfig::new(format!("ldaps://127.0.0.1:{}", tls_port()), template());
    cfg.tls_ca_file = Some(ca());
    cfg
}

fn starttls_config() -> LdapConfig {
    let mut cfg = LdapConfig::new(format!("ldap://127.0.0.1:{}", port()), template());
    cfg.starttls = true;
    cfg.tls_ca_file = Some(ca());
    cfg
}

fn rotator(cfg: LdapConfig) -> LdapRotator {
    LdapRotator::new(cfg, policy()).unwrap()
}

/// A verified LDAPS connection of the test's own.
async fn connect() -> Ldap {
    let config = client_config(Verification::Full, Some(&ca()), "ca").unwrap();
    let settings = LdapConnSettings::new().set_config(config);
    let url = format!("ldaps://127.0.0.1:{}", tls_port());
    let (conn, ldap) = LdapConnAsync::with_settings(settings, &url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}; {SETUP_HINT}"));
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    ldap
}

/// Whether `password` binds as `dn`, asked here rather than through the rotator.
async fn binds(dn: &str, password: &SecretString) -> bool {
    assert!(!password.expose_secret().is_empty());
    let mut ldap = connect().await;
    let result = ldap.simple_bind(dn, password.expose_secret()).await.unwrap();
    match result.rc {
        0 => true,
        49 => false,
        rc => panic!("bind as {dn}: unexpected result {rc}: {}", result.text),
    }
}

async fn as_root() -> Ldap {
    let mut ldap = connect().await;
    let root = root();
    ldap.simple_bind(&root.username, root.password.expose_secret())
        .await
        .unwrap()
        .success()
        .unwrap_or_else(|e| panic!("root bind: {e}; {SETUP_HINT}"));
    ldap
}

/// Deletes every registered entry when the test ends, passed or failed (children first).
struct EntryGuard {
    dns: Mutex<Vec<String>>,
}

impl EntryGuard {
    fn new() -> Arc<Self> {
        Arc::new(Self { dns: Mutex::new(Vec::new()) })
    }

    async fn add(&self, dn: &str, attrs: Vec<(&str, HashSet<&str>)>) {
        self.dns.lock().unwrap().push(dn.to_owned());
        as_root().await.add(dn, attrs).await.unwrap().success().unwrap_or_else(|e| panic!("adding {dn}: {e}"));
    }

    async fn add_person(&self, dn: &str, uid: &str, password: &SecretString) {
        self.add_person_under(dn, uid, password, None).await;
    }

    /// A person under the directory's strict password policy (at least 20 characters).
    async fn add_strict_person(&self, dn: &str, uid: &str, password: &SecretString) {
        let policy = format!("cn=strict,ou=policies,{}", suffix());
        self.add_person_under(dn, uid, password, Some(&policy)).await;
    }

    /// A person, under password policy `policy` when one is named.
    async fn add_person_under(&self, dn: &str, uid: &str, password: &SecretString, policy: Option<&str>) {
        let mut attrs = vec![
            ("objectClass", HashSet::from(["inetOrgPerson"])),
            ("uid", HashSet::from([uid])),
            ("cn", HashSet::from([uid])),
            ("sn", HashSet::from(["test"])),
            ("userPassword", HashSet::from([password.expose_secret()])),
        ];
        if let Some(policy) = policy {
            attrs.push(("pwdPolicySubentry", HashSet::from([policy])));
        }
        self.add(dn, attrs).await;
    }

    /// A fresh `ou=kvr_t_<random>` under `parent`: its name and DN.
    async fn add_ou(&self, parent: &str) -> (String, String) {
        let ou = prefix();
        let dn = format!("ou={ou},{parent}");
        let attrs = vec![("objectClass", HashSet::from(["organizationalUnit"])), ("ou", HashSet::from([ou.as_str()]))];
        self.add(&dn, attrs).await;
        (ou, dn)
    }
}

impl Drop for EntryGuard {
    fn drop(&mut self) {
        let dns = std::mem::take(&mut *self.dns.lock().unwrap_or_else(|p| p.into_inner()));
        if dns.is_empty() {
            return;
        }
        common::cleanup_on_own_thread("test entries", move || async move {
            let mut ldap = as_root().await;
            for dn in dns.iter().rev() {
                match ldap.delete(dn).await {
                    Ok(r) if r.rc == 0 || r.rc == 32 => {}
                    other => eprintln!("cleanup: could not delete {dn}: {other:?}"),
                }
            }
        });
    }
}

fn prefix() -> String {
    format!("kvr_t_{:08x}", rand::random::<u32>())
}

fn dn_of(uid: &str) -> String {
    format!("uid={},{}", dn_escape(uid), people())
}

struct LdapFixture {
    guard: Arc<EntryGuard>,
    prefix: String,
    admin: Credential,
    next: usize,
}

#[async_trait]
impl ConformanceFixture for LdapFixture {
    async fn create_user(&mut self, password: &SecretString) -> Result<String, String> {
        self.next += 1;
        let uid = format!("{}_u{}", self.prefix, self.next);
        self.guard.add_person(&dn_of(&uid), &uid, password).await;
        Ok(uid)
    }

    fn admin(&self) -> Option<Credential> {
        Some(self.admin.clone())
    }
}

async fn conformance(rotator: LdapRotator, admin: Credential) {
    let guard = EntryGuard::new();
    let mut fixture = LdapFixture { guard: Arc::clone(&guard), prefix: prefix(), admin, next: 0 };
    let report = run_conformance(&rotator, &mut fixture).await.unwrap_or_else(|e| panic!("conformance: {e}"));
    println!("{report}");
    assert!(report.skipped.is_empty(), "ldap must run every check: {report}");
}

#[tokio::test]
async fn ldaps_passes_conformance_with_the_service_account_as_admin() {
    conformance(rotator(ldaps_config()), service()).await;
}

#[tokio::test]
async fn starttls_passes_conformance_with_the_root_dn_as_admin() {
    conformance(rotator(starttls_config()), root()).await;
}

#[tokio::test]
async fn the_entry_binds_with_the_new_password_and_is_refused_with_the_old_one() {
    let guard = EntryGuard::new();
    for (cfg, admin, want) in [
        (ldaps_config(), None, SetPasswordOutcome::ChangedWithCurrent),
        (starttls_config(), Some(service()), SetPasswordOutcome::ChangedWithAdmin),
    ] {
        let uid = format!("{}_bind", prefix());
        let (old, new) = (policy().generate(), policy().generate());
        guard.add_person(&dn_of(&uid), &uid, &old).await;
        // With an admin, the current password offered is wrong: only the admin can change it.
        let current = if admin.is_some() { policy().generate() } else { old.clone() };
        let mut req = request(&uid, &new, &current);
        req.admin = admin;
        req.pending_is_new = true;
        assert_eq!(rotator(cfg).set_password(req).await.unwrap().outcome, want);
        assert!(binds(&dn_of(&uid), &new).await, "the new password must bind");
        assert!(!binds(&dn_of(&uid), &old).await, "the old password must be refused");
    }
}

#[tokio::test]
async fn hostile_account_names_never_reach_another_entry() {
    let guard = EntryGuard::new();
    // A victim an unescaped `x,ou=<p>` would name: uid=x,ou=<p>,ou=people,…
    let (p, ou_dn) = guard.add_ou(&people()).await;
    let victim_dn = format!("uid=x,{ou_dn}");
    let victim_password = policy().generate();
    guard.add_person(&victim_dn, "x", &victim_password).await;
    let hostile = format!("x,ou={p}");

    // The most powerful admin: only the escaping keeps it from the victim.
    let rotator = rotator(ldaps_config());
    let as_admin = |account: &str, pending: &SecretString| {
        let mut req = request(account, pending, &policy().generate());
        req.admin = Some(root());
        req
    };
    assert_eq!(
        rotator.verify(verify(&hostile, &victim_password)).await.unwrap(),
        VerifyResponse::Rejected,
        "the victim's password must not bind through an injected DN"
    );
    for account in [hostile.as_str(), "*", &format!("x,ou={p}\\"), "#x"] {
        let pending = policy().generate();
        let err = rotator.set_password(as_admin(account, &pending)).await.unwrap_err();
        assert!(matches!(err, RotatorError::Permanent(_)), "{account:?}: {err:?}");
        assert!(err.to_string().contains("noSuchObject") || err.to_string().contains("no such entry"), "{err}");
        assert!(!binds(&victim_dn, &pending).await, "{account:?} changed the victim");
    }
    // Refused before any request: control characters, and names the directory would fold
    // into another (outer and doubled spaces, non-ASCII such as the Kelvin sign for `k`).
    for account in ["x\0", "x\n,ou=people", "", " x", "x  y", "\u{212A}x"] {
        let err = rotator.set_password(as_admin(account, &policy().generate())).await.unwrap_err();
        assert!(matches!(err, RotatorError::Permanent(_)), "{account:?}: {err:?}");
        let err = rotator.verify(verify(account, &victim_password)).await.unwrap_err();
        assert!(matches!(err, RotatorError::Permanent(_)), "{account:?}: {err:?}");
    }
    assert!(binds(&victim_dn, &victim_password).await, "the victim's password changed");

    // The escaped DN names the entry whose uid is literally `x,ou=<p>`: that one changes.
    let literal_dn = dn_of(&hostile);
    let literal_password = policy().generate();
    guard.add_person(&literal_dn, &hostile, &literal_password).await;
    let pending = policy().generate();
    let outcome = rotator.set_password(as_admin(&hostile, &pending)).await.unwrap().outcome;
    assert_eq!(outcome, SetPasswordOutcome::ChangedWithAdmin);
    assert!(binds(&literal_dn, &pending).await);
    assert!(binds(&victim_dn, &victim_password).await, "the victim's password changed");
}

#[tokio::test]
async fn the_admin_dn_is_not_rotated_through_its_own_profile() {
    let mut cfg = ldaps_config();
    cfg.user_dn_template = format!("cn={{}},ou=services,{}", suffix());
    let mut req = request("KV-Rotator", &policy().generate(), &service().password);
    req.admin = Some(service());
    let err = rotator(cfg).set_password(req).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)) && err.to_string().contains("is the admin DN"), "{err:?}");
    assert!(binds(&service().username, &service().password).await, "the admin's password changed");
}

#[tokio::test]
async fn an_admin_the_directory_does_not_allow_changes_nothing() {
    // The service account may change passwords under ou=people only.
    let guard = EntryGuard::new();
    let (_, ou_dn) = guard.add_ou(&suffix()).await;
    let (old, new) = (policy().generate(), policy().generate());
    guard.add_person(&format!("uid=app,{ou_dn}"), "app", &old).await;
    let mut cfg = ldaps_config();
    cfg.user_dn_template = format!("uid={{}},{ou_dn}");
    let mut req = request("app", &new, &policy().generate());
    req.admin = Some(service());
    let err = rotator(cfg).set_password(req).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("insufficientAccessRights") && text.contains("refused: entry"), "{text}");
    assert!(binds(&format!("uid=app,{ou_dn}"), &old).await, "unchanged");
}

#[tokio::test]
async fn a_password_the_directory_policy_refuses_is_refused_and_nothing_changes() {
    let guard = EntryGuard::new();
    let uid = format!("{}_strict", prefix());
    let old = policy().generate();
    guard.add_strict_person(&dn_of(&uid), &uid, &old).await;
    // Under the policy's 20 characters: refused to the entry itself and to the admin.
    let short = SecretString::from(format!("Sh0rt-{:08x}", rand::random::<u32>()));
    let mut req = request(&uid, &short, &old);
    req.admin = Some(service());
    req.pending_is_new = true;
    let err = rotator(ldaps_config()).set_password(req).await.unwrap_err();
    assert!(matches!(err, RotatorError::Refused(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("constraintViolation") && text.contains("quality"), "{text}");
    assert!(!text.contains(short.expose_secret()) && !text.contains(old.expose_secret()), "{text}");
    assert!(binds(&dn_of(&uid), &old).await, "unchanged");
    assert!(!binds(&dn_of(&uid), &short).await);
    // A password the policy takes goes through.
    let new = policy().generate();
    let outcome = rotator(ldaps_config()).set_password(request(&uid, &new, &old)).await.unwrap().outcome;
    assert_eq!(outcome, SetPasswordOutcome::ChangedWithCurrent);
}

#[tokio::test]
async fn plaintext_on_loopback_works_when_asked_for() {
    let guard = EntryGuard::new();
    let uid = format!("{}_plain", prefix());
    let (old, new) = (policy().generate(), policy().generate());
    guard.add_person(&dn_of(&uid), &uid, &old).await;
    let mut cfg = LdapConfig::new(format!("ldap://127.0.0.1:{}", port()), template());
    cfg.tls = TlsMode::Disable;
    let rotator = rotator(cfg);
    assert_eq!(rotator.verify(verify(&uid, &old)).await.unwrap(), VerifyResponse::Accepted);
    let outcome = rotator.set_password(request(&uid, &new, &old)).await.unwrap().outcome;
    assert_eq!(outcome, SetPasswordOutcome::ChangedWithCurrent);
    assert!(binds(&dn_of(&uid), &new).await && !binds(&dn_of(&uid), &old).await);
}

/// A TLS failure changes nothing, is permanent (or, for `transient`, retried) and says
/// `what`.
async fn refused_tls(cfg: LdapConfig, what: &str) {
    refused_tls_as(cfg, what, false).await;
}

async fn refused_tls_as(cfg: LdapConfig, what: &str, transient: bool) {
    let guard = EntryGuard::new();
    let uid = format!("{}_tls", prefix());
    let old = policy().generate();
    guard.add_person(&dn_of(&uid), &uid, &old).await;
    let rotator = rotator(cfg);
    let err = rotator.verify(verify(&uid, &old)).await.unwrap_err();
    assert_eq!(err.is_transient(), transient, "{err:?}");
    assert!(!err.may_have_changed() && err.to_string().contains(what), "{err}");
    let new = policy().generate();
    let err = rotator.set_password(request(&uid, &new, &old)).await.unwrap_err();
    assert_eq!(err.is_transient(), transient, "{err:?}");
    assert!(!err.may_have_changed(), "{err:?}");
    assert!(binds(&dn_of(&uid), &old).await, "unchanged");
}

#[tokio::test]
async fn a_wrong_ca_is_refused_over_ldaps_and_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let other = common::other_ca(dir.path());
    for mut cfg in [ldaps_config(), starttls_config()] {
        cfg.tls_ca_file = Some(other.clone());
        refused_tls(cfg, "certificate was refused").await;
    }
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_unless_verify_ca() {
    let mut cfg = ldaps_config();
    cfg.tls_server_name = Some("ldap.example".into());
    refused_tls(cfg.clone(), "certificate was refused").await;
    // verify-ca checks the chain only.
    cfg.tls = TlsMode::VerifyCa;
    let guard = EntryGuard::new();
    let uid = format!("{}_ca", prefix());
    let old = policy().generate();
    guard.add_person(&dn_of(&uid), &uid, &old).await;
    assert_eq!(rotator(cfg).verify(verify(&uid, &old)).await.unwrap(), VerifyResponse::Accepted);
}

#[tokio::test]
async fn the_wrong_port_for_the_tls_kind_changes_nothing_and_says_so() {
    // LDAPS to the StartTLS port: slapd reads the TLS hello as LDAP and hangs up, which
    // a restart would do too (retried, with the hint).
    let mut cfg = ldaps_config();
    cfg.url = format!("ldaps://127.0.0.1:{}", port());
    refused_tls_as(cfg, "is this the server's LDAPS port?", true).await;
}

#[tokio::test]
async fn an_unreachable_server_is_transient() {
    let mut cfg = ldaps_config();
    cfg.url = format!("ldaps://127.0.0.1:{}", common::unused_port("127.0.0.1"));
    let err = rotator(cfg).verify(verify("app", &policy().generate())).await.unwrap_err();
    assert!(matches!(err, RotatorError::Transient(_)), "{err:?}");
}
