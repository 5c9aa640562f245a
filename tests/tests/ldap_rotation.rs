//! End to end against the OpenLDAP server `scripts/setup-slapd.sh` starts (LDAPS on
//! 127.0.0.1:3636, its test CA, suffix `dc=kvr,dc=test`): an entry under `ou=people` with
//! a known password, its secret in the dev vault with rotation tags, a
//! `SecretNearExpiry` delivery over HTTP to the webhook — then the entry binds with the
//! latest Key Vault value and is refused with the old one. The profile's admin is the
//! setup's service account (it may change passwords under `ou=people` only), its password
//! read from the dev vault.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::{suffix, test_ca};
use kv_rotator::engine::Outcome;
use kv_rotator_config::{AdminRef, TargetKind, TargetProfile};
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::tls::{client_config, Verification};
use kv_rotator_rotators::PasswordPolicy;
use secrecy::{ExposeSecret, SecretString};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn suffix_dn() -> String {
    env_or("KVR_TEST_LDAP_SUFFIX", "dc=kvr,dc=test")
}

fn ldaps_url() -> String {
    format!("ldaps://127.0.0.1:{}", env_or("KVR_TEST_LDAPS_PORT", "3636"))
}

fn ca() -> String {
    test_ca("KVR_TEST_LDAP_CA", "/var/lib/kvr-test-slapd-tls/ca.pem")
}

fn entry_dn(uid: &str) -> String {
    format!("uid={uid},ou=people,{}", suffix_dn())
}

/// A verified LDAPS connection, bound as `dn` with `password`: the bind's result code.
async fn bind(dn: &str, password: &str) -> (ldap3::Ldap, u32) {
    let settings = ldap3::LdapConnSettings::new()
        .set_config(client_config(Verification::Full, Some(ca().as_ref()), "ca").unwrap());
    let (conn, mut ldap) = ldap3::LdapConnAsync::with_settings(settings, &ldaps_url())
        .await
        .unwrap_or_else(|e| panic!("slapd must run on {} (scripts/setup-slapd.sh): {e}", ldaps_url()));
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    let rc = ldap.simple_bind(dn, password).await.unwrap().rc;
    (ldap, rc)
}

/// Whether a client binding as `uid`'s entry with `password` is let in.
async fn binds(uid: &str, password: &SecretString) -> bool {
    assert!(!password.expose_secret().is_empty(), "an empty password is an unauthenticated bind");
    match bind(&entry_dn(uid), password.expose_secret()).await.1 {
        0 => true,
        49 => false,
        rc => panic!("bind as {uid}: result {rc}"),
    }
}

/// The setup's root DN, for adding and deleting the test's entry.
async fn root() -> ldap3::Ldap {
    let password = env_or("KVR_TEST_LDAP_ADMIN_PASSWORD", "kvr-test-ldap-admin");
    let (ldap, rc) = bind(&format!("cn=admin,{}", suffix_dn()), &password).await;
    assert_eq!(rc, 0, "root bind (scripts/setup-slapd.sh)");
    ldap
}

async fn add_entry(uid: &str, password: &SecretString) {
    let attrs = vec![
        ("objectClass", HashSet::from(["inetOrgPerson"])),
        ("uid", HashSet::from([uid])),
        ("cn", HashSet::from([uid])),
        ("sn", HashSet::from(["e2e"])),
        ("userPassword", HashSet::from([password.expose_secret()])),
    ];
    root().await.add(&entry_dn(uid), attrs).await.unwrap().success().unwrap();
}

async fn delete_entry(uid: &str) {
    let _ = root().await.delete(&entry_dn(uid)).await;
}

/// The service with one LDAP profile `directory` over verified LDAPS, its admin the
/// setup's service account, whose password the vault holds as `ldap-admin`.
async fn start() -> common::Harness {
    let target = TargetKind::parse(
        "ldap",
        serde_json::json!({
            "url": ldaps_url(), "tls_ca_file": ca(),
            "user_dn_template": format!("uid={{}},ou=people,{}", suffix_dn()),
        }),
    )
    .unwrap();
    let profile = TargetProfile {
        target,
        admin: Some(AdminRef {
            username: format!("cn=kv-rotator,ou=services,{}", suffix_dn()),
            secret: "ldap-admin".into(),
        }),
        password: Default::default(),
        accounts: vec!["kvr_e2e*".to_owned()],
        allow_admin_account: false,
        strategy: Strategy::SingleUser,
        grace_period_secs: None,
        twin_suffix: None,
    };
    let h = common::Harness::start(BTreeMap::from([("directory".to_owned(), profile)])).await;
    let service_password = SecretString::from(env_or("KVR_TEST_LDAP_SERVICE_PASSWORD", "kvr-test-ldap-service"));
    h.seed("ldap-admin", &service_password, &[]).await;
    h
}

/// Delivers a near-expiry event for `uid`'s secret (holding `value`) and waits for its
/// rotation; the new Key Vault value.
async fn rotate_by_event(h: &mut common::Harness, uid: &str, value: &SecretString) -> SecretString {
    let secret = format!("ldap-{}", uid.replace('_', "-"));
    let v1 =
        h.seed(&secret, value, &[("rotator", "directory"), ("CredentialId", uid), ("ValidityPeriodDays", "7")]).await;
    assert_eq!(h.deliver(&secret, &v1).await, 200);
    let report = h.report_for(&secret, Duration::from_secs(60)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    h.store.get_latest(&secret).await.unwrap().value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_expiry_event_rotates_an_ldap_entry_which_binds_with_the_new_value_only() {
    let mut h = start().await;

    // The entry changes its own password (its current one is the vault's).
    let uid = format!("kvr_e2e_{}", suffix());
    let p0 = PasswordPolicy::default().generate();
    add_entry(&uid, &p0).await;
    let latest = rotate_by_event(&mut h, &uid, &p0).await;
    assert_ne!(latest.expose_secret(), p0.expose_secret());
    assert!(binds(&uid, &latest).await, "the entry binds with the new Key Vault value");
    assert!(!binds(&uid, &p0).await, "the old value is refused");

    // An entry whose vault value no longer works (changed behind kv-rotator's back): the
    // admin, with its password from the vault, sets the new one.
    let stale_uid = format!("kvr_e2e_{}", suffix());
    let (actual, stale) = (PasswordPolicy::default().generate(), PasswordPolicy::default().generate());
    add_entry(&stale_uid, &actual).await;
    let latest_stale = rotate_by_event(&mut h, &stale_uid, &stale).await;
    assert!(binds(&stale_uid, &latest_stale).await, "the admin set the new Key Vault value");
    assert!(!binds(&stale_uid, &actual).await, "the password set behind its back is replaced");

    h.stop().await;
    delete_entry(&uid).await;
    delete_entry(&stale_uid).await;
}
