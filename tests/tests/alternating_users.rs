//! Alternating users end to end, through the webhook and the dev vault, against the
//! machine's PostgreSQL and MariaDB: a secret onboarded with the primary account's plain
//! password; each rotation resets the idle account of the pair (creating the twin, with
//! the primary's grants, the first time) and writes `{"username", "password"}` naming
//! it, while the account consumers used until then keeps working — zero downtime.
//!
//! Needs `scripts/setup-postgres.sh` and `scripts/setup-mariadb.sh` (TLS with their test
//! CAs: the rotators run verified).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{mariadb_root, mariadb_runs, mariadb_target, pg_runs, pg_superuser, pg_target, suffix, Harness};
use kv_rotator::engine::Outcome;
use kv_rotator_config::{AdminRef, TargetKind, TargetProfile};
use kv_rotator_keyvault::SecretStore;
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::PasswordPolicy;
use mysql_async::prelude::Queryable;
use secrecy::{ExposeSecret, SecretString};

fn alternating(target: TargetKind, admin: AdminRef, accounts: &str) -> TargetProfile {
    TargetProfile {
        target,
        admin: Some(admin),
        password: Default::default(),
        accounts: vec![accounts.to_owned()],
        allow_admin_account: false,
        strategy: Strategy::AlternatingUsers,
        grace_period_secs: None,
        twin_suffix: None,
        rotation_window: None,
    }
}

/// The login a version's value names: `{"username", "password"}`.
async fn login_in(store: &dyn SecretStore, secret: &str) -> (String, SecretString, String) {
    let latest = store.get_latest(secret).await.unwrap();
    let json: serde_json::Value = serde_json::from_str(latest.value.expose_secret()).expect("a JSON value");
    let user = json["username"].as_str().expect("username").to_owned();
    let password = SecretString::from(json["password"].as_str().expect("password").to_owned());
    (user, password, latest.version)
}

// ---- PostgreSQL ----

/// Whether `password` logs in as `role` and may read `table`.
async fn pg_reads(role: &str, password: &SecretString, table: &str) -> bool {
    pg_runs(role, password, &format!("SELECT count(*) FROM {table}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pairs_flip_with_zero_downtime_and_the_twin_gets_the_primary_grants() {
    let s = suffix();
    let (primary, twin, admin, table) = (
        format!("kvr_e2e_alt_{s}"),
        format!("kvr_e2e_alt_{s}_clone"),
        format!("kvr_e2e_rot_{s}"),
        format!("kvr_e2e_t_{s}"),
    );
    let policy = PasswordPolicy::default();
    let (p0, admin_password) = (policy.generate(), policy.generate());
    let su = pg_superuser().await;
    su.batch_execute(&format!(
        "CREATE ROLE {admin} LOGIN CREATEROLE IN ROLE kvr_scram PASSWORD '{}';
         CREATE ROLE {primary} LOGIN IN ROLE kvr_scram PASSWORD '{}';
         CREATE TABLE {table} (v int); GRANT SELECT ON {table} TO {primary};",
        admin_password.expose_secret(),
        p0.expose_secret()
    ))
    .await
    .expect("setup (run scripts/setup-postgres.sh first: it creates kvr_scram)");
    let cleanup = || async {
        let su = pg_superuser().await;
        for statement in [
            format!("DROP TABLE IF EXISTS {table}"),
            format!("DROP ROLE IF EXISTS {twin}"),
            format!("DROP ROLE IF EXISTS {primary}"),
            format!("DROP ROLE IF EXISTS {admin}"),
        ] {
            let _ = su.batch_execute(&statement).await;
        }
    };
    let admin_ref = AdminRef { username: admin.clone(), secret: "pg-admin".into() };
    let profiles = BTreeMap::from([("db".to_owned(), alternating(pg_target(), admin_ref, "kvr_e2e_alt_*"))]);
    let mut h = Harness::start(profiles).await;
    h.seed("pg-admin", &admin_password, &[]).await;
    let secret = format!("alt-{s}");
    let v1 = h.seed(&secret, &p0, &[("rotator", "db"), ("CredentialId", &primary)]).await;

    // 1. The event: the twin is created with the primary's grants and becomes active;
    // the primary's password is untouched, so consumers that still hold it keep working.
    assert_eq!(h.deliver(&secret, &v1).await, 200);
    let report = h.report_for(&secret, Duration::from_secs(60)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let (user1, p1, _) = login_in(h.store.as_ref(), &secret).await;
    assert_eq!(user1, twin, "the twin is active");
    assert!(pg_reads(&twin, &p1, &table).await, "the twin logs in and has the primary's grants");
    assert!(pg_reads(&primary, &p0, &table).await, "the primary keeps its password: zero downtime");

    // 2. The next rotation resets the primary and flips back; the twin still works.
    let report = h.rotate_now(&secret).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let (user2, p2, _) = login_in(h.store.as_ref(), &secret).await;
    assert_eq!(user2, primary);
    assert!(pg_reads(&primary, &p2, &table).await);
    assert!(!pg_reads(&primary, &p0, &table).await, "the primary's old password is gone");
    assert!(pg_reads(&twin, &p1, &table).await, "the twin, active until now, keeps working");

    // 3. Drift: the twin lost its membership in the primary; the next rotation (to the
    // twin) repairs it before the twin is handed out again.
    su.batch_execute(&format!("REVOKE {primary} FROM {twin}")).await.unwrap();
    assert!(!pg_reads(&twin, &p1, &table).await, "the drift is real: the twin cannot read");
    let report = h.rotate_now(&secret).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let (user3, p3, v3) = login_in(h.store.as_ref(), &secret).await;
    assert_eq!(user3, twin);
    assert!(pg_reads(&twin, &p3, &table).await, "repaired: the twin reads again");
    assert!(!pg_reads(&twin, &p1, &table).await);

    // 4. A value edited to name another account is refused; nothing changes.
    let hostile = SecretString::from(format!("{{\"username\":\"{admin}\",\"password\":\"x\"}}"));
    h.seed(&secret, &hostile, &[("rotator", "db"), ("CredentialId", &primary)]).await;
    let report = h.rotate_now(&secret).await;
    match &report.outcome {
        Outcome::Failed { error, .. } => assert!(error.contains("neither the secret's CredentialId"), "{error}"),
        other => panic!("not refused: {other:?}"),
    }
    assert!(pg_reads(&twin, &p3, &table).await && pg_reads(&primary, &p2, &table).await, "nothing changed");
    assert!(pg_reads(&admin, &admin_password, "pg_roles").await, "the admin's password is untouched");
    let versions = h.store.list_versions(&secret).await.unwrap().len();
    assert_eq!(versions, 5, "v1, three rotations, the hostile one; none after it (v3 was {v3})");
    h.stop().await;
    cleanup().await;
}

// ---- MariaDB ----

/// Whether `password` logs in as `user` and may read `table`.
async fn mariadb_reads(user: &str, password: &SecretString, table: &str) -> bool {
    mariadb_runs(user, password, &format!("SELECT COUNT(*) FROM {table}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_pairs_flip_and_the_twin_gets_every_host_entry_and_grant() {
    let s = suffix();
    let (primary, twin, admin, db) = (
        format!("kvr_e2e_alt_{s}"),
        format!("kvr_e2e_alt_{s}_clone"),
        format!("kvr_e2e_rot_{s}"),
        format!("kvr_e2e_{s}"),
    );
    let table = format!("{db}.t");
    let policy = PasswordPolicy::default();
    let (p0, admin_password) = (policy.generate(), policy.generate());
    let mut root = mariadb_root().await;
    for statement in [
        format!("CREATE DATABASE {db}"),
        format!("CREATE TABLE {table} (v INT)"),
        format!("CREATE USER '{primary}'@'%' IDENTIFIED BY '{}'", p0.expose_secret()),
        format!("CREATE USER '{primary}'@'localhost' IDENTIFIED BY '{}'", p0.expose_secret()),
        format!("GRANT SELECT ON {db}.* TO '{primary}'@'%', '{primary}'@'localhost'"),
        format!("CREATE USER '{admin}'@'%' IDENTIFIED BY '{}'", admin_password.expose_secret()),
        format!("GRANT CREATE USER ON *.* TO '{admin}'@'%'"),
        format!("GRANT SELECT ON mysql.* TO '{admin}'@'%'"),
        format!("GRANT SELECT ON {db}.* TO '{admin}'@'%' WITH GRANT OPTION"),
    ] {
        root.query_drop(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let cleanup = || async {
        let mut root = mariadb_root().await;
        for (name, host) in
            [(&primary, "%"), (&primary, "localhost"), (&twin, "%"), (&twin, "localhost"), (&admin, "%")]
        {
            let _ = root.query_drop(format!("DROP USER IF EXISTS '{name}'@'{host}'")).await;
        }
        let _ = root.query_drop(format!("DROP DATABASE IF EXISTS {db}")).await;
    };
    let admin_ref = AdminRef { username: admin.clone(), secret: "db-admin".into() };
    let profiles = BTreeMap::from([("db".to_owned(), alternating(mariadb_target(), admin_ref, "kvr_e2e_alt_*"))]);
    let mut h = Harness::start(profiles).await;
    h.seed("db-admin", &admin_password, &[]).await;
    let secret = format!("alt-{s}");
    let v1 = h.seed(&secret, &p0, &[("rotator", "db"), ("CredentialId", &primary)]).await;

    assert_eq!(h.deliver(&secret, &v1).await, 200);
    let report = h.report_for(&secret, Duration::from_secs(60)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let (user1, p1, _) = login_in(h.store.as_ref(), &secret).await;
    assert_eq!(user1, twin);
    assert!(mariadb_reads(&twin, &p1, &table).await, "the twin logs in and has the primary's grant");
    assert!(mariadb_reads(&primary, &p0, &table).await, "the primary keeps its password: zero downtime");
    let hosts: Vec<String> =
        root.exec("SELECT host FROM mysql.user WHERE user = ? ORDER BY host", (twin.as_str(),)).await.unwrap();
    assert_eq!(hosts, ["%", "localhost"], "the twin has every host entry the primary has");

    let report = h.rotate_now(&secret).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let (user2, p2, _) = login_in(h.store.as_ref(), &secret).await;
    assert_eq!(user2, primary);
    assert!(mariadb_reads(&primary, &p2, &table).await);
    assert!(!mariadb_reads(&primary, &p0, &table).await, "the primary's old password is gone");
    assert!(mariadb_reads(&twin, &p1, &table).await, "the twin keeps working until its next turn");
    h.stop().await;
    cleanup().await;
}

/// The twin's name taken by an account this secret never used (someone else's) is not
/// taken over, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_never_takes_over_a_stranger_twin() {
    let s = suffix();
    let (primary, twin, admin) =
        (format!("kvr_e2e_alt_{s}"), format!("kvr_e2e_alt_{s}_clone"), format!("kvr_e2e_rot_{s}"));
    let policy = PasswordPolicy::default();
    let (p0, stranger_pw, admin_password) = (policy.generate(), policy.generate(), policy.generate());
    let su = pg_superuser().await;
    su.batch_execute(&format!(
        "CREATE ROLE {admin} LOGIN CREATEROLE IN ROLE kvr_scram PASSWORD '{}';
         CREATE ROLE {primary} LOGIN IN ROLE kvr_scram PASSWORD '{}';
         CREATE ROLE {twin} LOGIN IN ROLE kvr_scram PASSWORD '{}';",
        admin_password.expose_secret(),
        p0.expose_secret(),
        stranger_pw.expose_secret()
    ))
    .await
    .expect("setup (run scripts/setup-postgres.sh first: it creates kvr_scram)");
    let cleanup = || async {
        let su = pg_superuser().await;
        for role in [&twin, &primary, &admin] {
            let _ = su.batch_execute(&format!("DROP ROLE IF EXISTS {role}")).await;
        }
    };
    let admin_ref = AdminRef { username: admin.clone(), secret: "pg-admin".into() };
    let profiles = BTreeMap::from([("db".to_owned(), alternating(pg_target(), admin_ref, "kvr_e2e_alt_*"))]);
    let h = Harness::start(profiles).await;
    h.seed("pg-admin", &admin_password, &[]).await;
    let secret = format!("alt-{s}");
    h.seed(&secret, &p0, &[("rotator", "db"), ("CredentialId", &primary)]).await;

    let report = h.rotate_now(&secret).await;
    match &report.outcome {
        Outcome::Failed { error, .. } => assert!(error.contains("this secret never used it"), "{error}"),
        other => panic!("a stranger's account was taken over: {other:?}"),
    }
    assert!(pg_reads(&twin, &stranger_pw, "pg_roles").await, "the stranger's account is untouched");
    let member = su
        .query_opt(
            "SELECT 1 FROM pg_auth_members WHERE member = $1::text::regrole AND roleid = $2::text::regrole",
            &[&twin, &primary],
        )
        .await
        .unwrap();
    assert!(member.is_none(), "no grant was given to it");

    h.stop().await;
    cleanup().await;
}

/// An active twin that was dropped is not recreated with a password no one has, and the
/// primary is not reset either. (The fixed names: `scripts/setup-postgres.sh` gives this
/// twin a password check while it does not exist, as a server that checks every role
/// would; the machine trusts other unknown roles.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_does_not_recreate_a_dropped_active_twin() {
    let (primary, twin, admin) = ("kvr_e2e_ghost", "kvr_e2e_ghost_clone", format!("kvr_e2e_rot_{}", suffix()));
    let policy = PasswordPolicy::default();
    let (p0, admin_password) = (policy.generate(), policy.generate());
    let su = pg_superuser().await;
    su.batch_execute(&format!(
        "DROP ROLE IF EXISTS {twin}; DROP ROLE IF EXISTS {primary};
         CREATE ROLE {admin} LOGIN CREATEROLE IN ROLE kvr_scram PASSWORD '{}';
         CREATE ROLE {primary} LOGIN IN ROLE kvr_scram PASSWORD '{}';",
        admin_password.expose_secret(),
        p0.expose_secret()
    ))
    .await
    .expect("setup (run scripts/setup-postgres.sh first: it creates kvr_scram)");
    let cleanup = || async {
        let su = pg_superuser().await;
        for role in [twin, primary, admin.as_str()] {
            let _ = su.batch_execute(&format!("DROP ROLE IF EXISTS {role}")).await;
        }
    };
    let admin_ref = AdminRef { username: admin.clone(), secret: "pg-admin".into() };
    let profiles = BTreeMap::from([("db".to_owned(), alternating(pg_target(), admin_ref, "kvr_e2e_ghost*"))]);
    let h = Harness::start(profiles).await;
    h.seed("pg-admin", &admin_password, &[]).await;
    let secret = format!("ghost-{}", suffix());
    h.seed(&secret, &p0, &[("rotator", "db"), ("CredentialId", primary)]).await;
    let report = h.rotate_now(&secret).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let (active, _, _) = login_in(h.store.as_ref(), &secret).await;
    assert_eq!(active, twin);
    su.batch_execute(&format!("DROP ROLE {twin}")).await.unwrap();
    let report = h.rotate_now(&secret).await;
    match &report.outcome {
        Outcome::Failed { error, .. } => {
            assert!(error.contains("does not exist") && error.contains("not recreated"), "{error}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let exists = su.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&twin]).await.unwrap();
    assert!(exists.is_none(), "the dropped twin was not recreated");
    assert!(pg_reads(primary, &p0, "pg_roles").await, "the primary was not reset either");
    h.stop().await;
    cleanup().await;
}
