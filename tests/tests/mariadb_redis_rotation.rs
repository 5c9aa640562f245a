//! End to end against the machine's MariaDB (127.0.0.1:3306) and Redis (127.0.0.1:6379,
//! TLS on 6380): an account with a known password, its secret in the dev vault with
//! rotation tags, a `SecretNearExpiry` delivery over HTTP to the webhook — then a client
//! holding the latest Key Vault value connects, and the old value is refused: at once
//! for MariaDB (single-user), and for Redis (multi-password) only once the grace period
//! has ended, when the service's sweeper has the engine retire it.
//!
//! Needs `scripts/setup-mariadb.sh` and `scripts/setup-redis.sh` (TLS with their test
//! CAs: the rotators run with `verify-full`).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::redis::{redis_acl, redis_admin_connection, redis_logs_in, sha256_hex};
use common::{mariadb_root, mariadb_runs, mariadb_target, suffix};
use kv_rotator::engine::Outcome;
use kv_rotator_config::{AdminRef, TargetKind, TargetProfile};
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::PasswordPolicy;
use mysql_async::prelude::Queryable;
use secrecy::{ExposeSecret, SecretString};

const GRACE_SECS: u64 = 4;

fn profile(target: TargetKind, admin: Option<AdminRef>, strategy: Strategy, grace: Option<u64>) -> TargetProfile {
    TargetProfile {
        target,
        admin,
        password: Default::default(),
        accounts: vec!["kvr_e2e*".to_owned()],
        allow_admin_account: false,
        strategy,
        grace_period_secs: grace,
        twin_suffix: None,
        rotation_window: None,
    }
}

struct Harness(common::Harness);

impl std::ops::Deref for Harness {
    type Target = common::Harness;
    fn deref(&self) -> &common::Harness {
        &self.0
    }
}

impl std::ops::DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut common::Harness {
        &mut self.0
    }
}

impl Harness {
    /// A MariaDB profile `db` (single-user, admin `db_admin`) and a Redis profile `cache`
    /// (multi-password, admin `redis_admin`), both over verified TLS.
    async fn start(db_admin: &str, redis_admin: &str) -> Harness {
        let redis = common::redis::target();
        let admin = AdminRef { username: redis_admin.into(), secret: "redis-admin".into() };
        let db_admin = AdminRef { username: db_admin.into(), secret: "db-admin".into() };
        let profiles = BTreeMap::from([
            ("db".to_owned(), profile(mariadb_target(), Some(db_admin), Strategy::SingleUser, None)),
            ("cache".to_owned(), profile(redis, Some(admin), Strategy::MultiPassword, Some(GRACE_SECS))),
        ]);
        Harness(common::Harness::start(profiles).await)
    }

    async fn stop(self) {
        self.0.stop().await
    }
}

// ---- MariaDB ----

/// Whether a client with `password` connects as `user`.
async fn mariadb_logs_in(user: &str, password: &SecretString) -> bool {
    mariadb_runs(user, password, "SELECT 1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_expiry_event_rotates_a_mariadb_account_on_every_host_entry() {
    let user = format!("kvr_e2e_{}", suffix());
    let p0 = PasswordPolicy::default().generate();
    let mut root = mariadb_root().await;
    for host in ["%", "localhost"] {
        root.query_drop(format!("CREATE USER '{user}'@'{host}' IDENTIFIED BY '{}'", p0.expose_secret())).await.unwrap();
    }
    // An account with two host entries is changed by the admin (a user may change only
    // its own entry), whose password is in Key Vault.
    let admin = format!("kvr_e2e_dba_{}", suffix());
    let admin_password = PasswordPolicy::default().generate();
    root.query_drop(format!("CREATE USER '{admin}'@'%' IDENTIFIED BY '{}'", admin_password.expose_secret()))
        .await
        .unwrap();
    root.query_drop(format!("GRANT CREATE USER ON *.* TO '{admin}'@'%'")).await.unwrap();
    for table in ["user", "global_priv"] {
        root.query_drop(format!("GRANT SELECT ON mysql.{table} TO '{admin}'@'%'")).await.unwrap();
    }
    let drop_users = || async {
        let mut root = mariadb_root().await;
        for (name, host) in [(&user, "%"), (&user, "localhost"), (&admin, "%")] {
            let _ = root.query_drop(format!("DROP USER IF EXISTS '{name}'@'{host}'")).await;
        }
    };
    assert!(mariadb_logs_in(&user, &p0).await);
    let mut h = Harness::start(&admin, "kvr_e2e_adm_unused").await;
    h.seed("db-admin", &admin_password, &[]).await;
    let secret = format!("db-{}", user.replace('_', "-"));
    let v1 = h.seed(&secret, &p0, &[("rotator", "db"), ("CredentialId", &user), ("ValidityPeriodDays", "7")]).await;

    assert_eq!(h.deliver(&secret, &v1).await, 200);
    let report = h.report_for(&secret, Duration::from_secs(60)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let latest = h.store.get_latest(&secret).await.unwrap();
    assert!(mariadb_logs_in(&user, &latest.value).await, "a client holding the new Key Vault value connects");
    assert!(!mariadb_logs_in(&user, &p0).await, "the old value is refused");
    // Both host entries changed together: each carries the hash of the new value.
    let hashes: Vec<(String, String)> = root
        .exec("SELECT host, authentication_string FROM mysql.user WHERE user = ? ORDER BY host", (user.as_str(),))
        .await
        .unwrap();
    assert_eq!(hashes.len(), 2);
    assert_eq!(hashes[0].1, hashes[1].1, "every host entry has the same new hash: {hashes:?}");
    assert!(!latest.properties.tags.contains_key("kv-rotator-retire-after"), "single-user retires nothing");
    h.stop().await;
    drop_users().await;
}

// ---- Redis ----

/// A Redis user the consumer logs in as (its keys only, nothing of the ACL), an admin
/// that may change it (its password in Key Vault), and the user's secret.
struct RedisSetup {
    user: String,
    admin: String,
    p0: SecretString,
    secret: String,
    v1: String,
}

impl RedisSetup {
    async fn new(h: &Harness, admin: &str) -> RedisSetup {
        let (user, admin) = (format!("kvr_e2e_{}", suffix()), admin.to_owned());
        let (p0, admin_password) = (PasswordPolicy::default().generate(), PasswordPolicy::default().generate());
        let mut conn = redis_admin_connection().await;
        let hash = format!("#{}", sha256_hex(&p0));
        redis_acl(&mut conn, &["SETUSER", &user, "reset", "on", &hash, "~app:*", "+get"]).await;
        redis_acl(&mut conn, &["SETUSER", &admin, "on", &format!("#{}", sha256_hex(&admin_password)), "+acl"]).await;
        h.seed("redis-admin", &admin_password, &[]).await;
        let secret = format!("cache-{}", user.replace('_', "-"));
        let v1 = h.seed(&secret, &p0, &[("rotator", "cache"), ("CredentialId", &user)]).await;
        RedisSetup { user, admin, p0, secret, v1 }
    }

    async fn remove(self) {
        let mut conn = redis_admin_connection().await;
        for name in [self.user.as_str(), self.admin.as_str()] {
            redis_acl(&mut conn, &["DELUSER", name]).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_password_redis_keeps_the_old_value_until_the_grace_period_ends_and_not_after() {
    let admin = format!("kvr_e2e_adm_{}", suffix());
    let mut h = Harness::start("kvr_e2e_dba_unused", &admin).await;
    let setup = RedisSetup::new(&h, &admin).await;
    let (user, p0, secret, v1) = (setup.user.as_str(), &setup.p0, setup.secret.as_str(), setup.v1.as_str());

    assert_eq!(h.deliver(secret, v1).await, 200);
    let report = h.report_for(secret, Duration::from_secs(60)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let rotated_at = Instant::now();
    let latest = h.store.get_latest(secret).await.unwrap();
    assert!(latest.properties.tags.contains_key("kv-rotator-retire-after"), "{:?}", latest.properties.tags);
    // Within the grace period: a consumer mid-run with the old value still gets in, and
    // one that read the new value does too.
    assert!(redis_logs_in(user, &latest.value).await, "the new value logs in");
    assert!(redis_logs_in(user, p0).await, "the old value keeps working during the grace period");

    // The sweeper (every second) has the engine retire it once the grace period is over.
    let retired = h.report_for(secret, Duration::from_secs(GRACE_SECS + 20)).await;
    assert!(
        rotated_at.elapsed() >= Duration::from_secs(GRACE_SECS) - Duration::from_millis(500),
        "retired before the grace period ended: {retired:?}"
    );
    assert!(matches!(retired.outcome, Outcome::Retired { removed: 1, .. }), "{retired:?}");
    assert!(!redis_logs_in(user, p0).await, "the old value is refused after the grace period");
    assert!(redis_logs_in(user, &latest.value).await, "the new value still logs in");
    let after = h.store.get_latest(secret).await.unwrap();
    assert_eq!(after.version, latest.version, "retiring writes no version");
    assert!(!after.properties.tags.contains_key("kv-rotator-retire-after"), "the marker is cleared");
    // Nothing more happens at the next sweeps.
    let more = tokio::time::timeout(Duration::from_millis(2500), h.reports.recv()).await;
    assert!(more.is_err(), "nothing more to do: {more:?}");

    h.stop().await;
    setup.remove().await;
}

/// The retirement marker is only a hint: a tag moved into the past does not cut the
/// grace period short (the version's own creation time counts). A second rotation within
/// the grace period keeps all three values working until its own grace period ends, and
/// then both older ones go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_retirement_tag_does_not_shorten_the_grace_period_and_overlapping_rotations_retire_together() {
    let admin = format!("kvr_e2e_adm_{}", suffix());
    let mut h = Harness::start("kvr_e2e_dba_unused", &admin).await;
    let setup = RedisSetup::new(&h, &admin).await;
    let (user, p0, secret) = (setup.user.as_str(), &setup.p0, setup.secret.as_str());
    assert_eq!(h.deliver(secret, &setup.v1).await, 200);
    let report = h.report_for(secret, Duration::from_secs(60)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let v2 = h.store.get_latest(secret).await.unwrap();
    let mut tags = v2.properties.tags.clone();
    tags.insert("kv-rotator-retire-after".into(), "1970-01-01T00:00:00Z".into());
    let update = kv_rotator_keyvault::PropertiesUpdate { tags: Some(tags), ..Default::default() };
    h.store.update_properties(secret, Some(&v2.version), update).await.unwrap();
    // The sweeper asks at once (the hint is past); the engine retires nothing yet.
    let asked = h.report_for(secret, Duration::from_secs(5)).await;
    assert!(!matches!(asked.outcome, Outcome::Retired { .. }), "retired on a tag's word: {asked:?}");
    assert!(redis_logs_in(user, p0).await, "the old value keeps working through the grace period");

    let report = h.rotate_now(secret).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let v3 = h.store.get_latest(secret).await.unwrap();
    for (password, which) in [(p0, "v1"), (&v2.value, "v2"), (&v3.value, "v3")] {
        assert!(redis_logs_in(user, password).await, "{which} works within the grace period");
    }
    let deadline = Instant::now() + Duration::from_secs(GRACE_SECS + 20);
    let retired = loop {
        let report = h.report_for(secret, deadline.saturating_duration_since(Instant::now())).await;
        if matches!(report.outcome, Outcome::Retired { .. }) {
            break report;
        }
    };
    assert!(matches!(retired.outcome, Outcome::Retired { removed: 2, .. }), "{retired:?}");
    assert!(!redis_logs_in(user, p0).await && !redis_logs_in(user, &v2.value).await, "both older values retired");
    assert!(redis_logs_in(user, &v3.value).await);
    h.stop().await;
    setup.remove().await;
}
