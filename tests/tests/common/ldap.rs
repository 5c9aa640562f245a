//! The OpenLDAP server `scripts/setup-slapd.sh` starts (LDAPS on 127.0.0.1:3636, its test
//! CA, suffix `dc=kvr,dc=test`): verified binds, and entries under `ou=people` added and
//! deleted as the setup's root DN.

use std::collections::HashSet;

use kv_rotator_rotators::tls::{client_config, Verification};
use secrecy::{ExposeSecret, SecretString};

use kv_rotator_config::{AdminRef, TargetKind};

use super::test_ca;

/// Environment variable `name`, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The directory's suffix.
pub fn suffix_dn() -> String {
    env_or("KVR_TEST_LDAP_SUFFIX", "dc=kvr,dc=test")
}

/// Where slapd answers LDAPS.
pub fn ldaps_url() -> String {
    format!("ldaps://127.0.0.1:{}", env_or("KVR_TEST_LDAPS_PORT", "3636"))
}

/// The setup's test CA.
pub fn ca() -> String {
    test_ca("KVR_TEST_LDAP_CA", "/var/lib/kvr-test-slapd-tls/ca.pem")
}

/// The DN of `uid`'s entry under `ou=people`.
pub fn entry_dn(uid: &str) -> String {
    format!("uid={uid},ou=people,{}", suffix_dn())
}

/// A verified LDAPS connection, bound as `dn` with `password`: the bind's result code.
pub async fn bind(dn: &str, password: &str) -> (ldap3::Ldap, u32) {
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
pub async fn binds(uid: &str, password: &SecretString) -> bool {
    assert!(!password.expose_secret().is_empty(), "an empty password is an unauthenticated bind");
    match bind(&entry_dn(uid), password.expose_secret()).await.1 {
        0 => true,
        49 => false,
        rc => panic!("bind as {uid}: result {rc}"),
    }
}

/// The setup's root DN, for adding and deleting the test's entry.
pub async fn root() -> ldap3::Ldap {
    let password = env_or("KVR_TEST_LDAP_ADMIN_PASSWORD", "kvr-test-ldap-admin");
    let (ldap, rc) = bind(&format!("cn=admin,{}", suffix_dn()), &password).await;
    assert_eq!(rc, 0, "root bind (scripts/setup-slapd.sh)");
    ldap
}

/// Adds `uid`'s entry with `password`.
pub async fn add_entry(uid: &str, password: &SecretString) {
    let attrs = vec![
        ("objectClass", HashSet::from(["inetOrgPerson"])),
        ("uid", HashSet::from([uid])),
        ("cn", HashSet::from([uid])),
        ("sn", HashSet::from(["e2e"])),
        ("userPassword", HashSet::from([password.expose_secret()])),
    ];
    root().await.add(&entry_dn(uid), attrs).await.unwrap().success().unwrap();
}

/// Deletes `uid`'s entry, if it is there.
pub async fn delete_entry(uid: &str) {
    let _ = root().await.delete(&entry_dn(uid)).await;
}

/// An `ldap` target over verified LDAPS whose accounts are entries under `ou=people`.
pub fn target() -> TargetKind {
    let settings = serde_json::json!({
        "url": ldaps_url(), "tls_ca_file": ca(),
        "user_dn_template": format!("uid={{}},ou=people,{}", suffix_dn()),
    });
    TargetKind::parse("ldap", settings).unwrap()
}

/// The setup's service account (it may change passwords under `ou=people` only) as a
/// profile's admin, its password read from the vault's `secret`.
pub fn service_admin(secret: &str) -> AdminRef {
    AdminRef { username: format!("cn=kv-rotator,ou=services,{}", suffix_dn()), secret: secret.into() }
}

/// The service account's password.
pub fn service_password() -> SecretString {
    SecretString::from(env_or("KVR_TEST_LDAP_SERVICE_PASSWORD", "kvr-test-ldap-service"))
}
