//! End to end against the OpenLDAP server `scripts/setup-slapd.sh` starts (LDAPS on
//! 127.0.0.1:3636, its test CA, suffix `dc=kvr,dc=test`): an entry under `ou=people` with
//! a known password, its secret in the dev vault with rotation tags, a
//! `SecretNearExpiry` delivery over HTTP to the webhook — then the entry binds with the
//! latest Key Vault value and is refused with the old one. The profile's admin is the
//! setup's service account (it may change passwords under `ou=people` only), its password
//! read from the dev vault.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::ldap::{self, add_entry, binds, delete_entry};
use common::suffix;
use kv_rotator::engine::Outcome;
use kv_rotator_config::TargetProfile;
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::PasswordPolicy;
use secrecy::{ExposeSecret, SecretString};

/// The service with one LDAP profile `directory` over verified LDAPS, its admin the
/// setup's service account, whose password the vault holds as `ldap-admin`.
async fn start() -> common::Harness {
    let profile = TargetProfile {
        target: ldap::target(),
        admin: Some(ldap::service_admin("ldap-admin")),
        password: Default::default(),
        accounts: vec!["kvr_e2e*".to_owned()],
        allow_admin_account: false,
        strategy: Strategy::SingleUser,
        grace_period_secs: None,
        twin_suffix: None,
        rotation_window: None,
    };
    let h = common::Harness::start(BTreeMap::from([("directory".to_owned(), profile)])).await;
    h.seed("ldap-admin", &ldap::service_password(), &[]).await;
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
    assert!(latest.expose_secret() != p0.expose_secret(), "the latest is a new password");
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
