//! No log filter makes a dependency print password material: `kv-rotator rotate --all`
//! run at `RUST_LOG=trace` (then again with every dependency named at `trace`) rotates a
//! secret on every built-in rotator (PostgreSQL, through the user's own login and through
//! the admin's; MariaDB through the user's own; Redis through the admin's; LDAP through
//! the entry's own; htpasswd), and
//! its whole output (stdout and stderr) holds none of the passwords used — initial, new,
//! admin — nor their MariaDB and Redis hashes, and no verifier (`SCRAM-SHA-256$…`, bcrypt
//! `$2a$`/`$2b$`/`$2y$`), while kv-rotator's own trace output is there and the rotations
//! really happened (new versions in the vault that log in; the old passwords do not).
//!
//! Needs PostgreSQL on 127.0.0.1:5432 prepared by `scripts/setup-postgres.sh`, MariaDB on
//! 3306 (root without a password, managed with the `mariadb` client), Redis on 6379
//! (the default user without a password, managed with `redis-cli`) and the OpenLDAP of
//! `scripts/setup-slapd.sh` on 3389 (its root DN, managed with `ldapadd`/`ldapdelete`).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

mod common;

use common::pg::{logs_in, superuser, Roles};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, SecretStore};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::ldap::{LdapConfig, LdapRotator};
use kv_rotator_rotators::mariadb::{native_hash, MariaDbConfig, MariaDbRotator};
use kv_rotator_rotators::redis::{acl_hash, AclSave, RedisConfig, RedisRotator};
use kv_rotator_rotators::tls::TlsMode;
use kv_rotator_rotators::{PasswordPolicy, Rotator, VerifyRequest, VerifyResponse};
use secrecy::{ExposeSecret, SecretString};

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");
const HTPASSWD_USER: &str = "svc-site";
const ADMIN_SECRET: &str = "pg-admin-password";
const REDIS_ADMIN_SECRET: &str = "redis-admin-password";

/// `RUST_LOG` values tried: everything at trace, and every dependency named at trace.
const FILTERS: [&str; 2] = [
    "trace",
    "kv_rotator=trace,tokio_postgres=trace,postgres_protocol=trace,hyper=trace,hyper_util=trace,reqwest=trace,\
     h2=trace,rustls=trace,azure_core=trace,azure_identity=trace,typespec_client_core=trace,mysql_async=trace,\
     mysql_common=trace,redis=trace,ldap3=trace,lber=trace",
];

/// Verifier material: PostgreSQL's SCRAM verifier and bcrypt hashes (htpasswd).
const VERIFIER_MARKERS: [&str; 4] = ["SCRAM-SHA-256$", "$2a$", "$2b$", "$2y$"];

async fn put(store: &dyn SecretStore, secret: &str, value: &SecretString, tags: &[(&str, &str)]) -> String {
    let tags = tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>();
    let new = NewSecretVersion { value: value.clone(), tags, content_type: None, expires: None, not_before: None };
    store.set_secret(secret, new).await.unwrap().version
}

/// The lines of `output` that carry any of `secrets` (label, value) or a verifier
/// marker, each cut at the first verifier marker and with every secret replaced by its
/// label, so a failure shows where the leak is without printing it.
fn leaking_lines(output: &str, secrets: &[(String, SecretString)]) -> Vec<String> {
    let mut found = Vec::new();
    for line in output.lines() {
        let marker = VERIFIER_MARKERS.iter().filter_map(|m| line.find(m)).min();
        let mut shown = line[..marker.unwrap_or(line.len())].to_owned();
        let mut leaks = marker.is_some();
        for (label, secret) in secrets {
            // As written, and as `{:?}` and JSON escape it.
            let raw = secret.expose_secret();
            let quoted = format!("{raw:?}");
            for form in [raw, &quoted[1..quoted.len() - 1]] {
                leaks |= line.contains(form);
                shown = shown.replace(form, &format!("<{label}>"));
            }
        }
        if leaks {
            found.push(if marker.is_some() { format!("{shown}<verifier>…") } else { shown });
        }
    }
    found
}

/// Runs a client command of the machine (`mariadb`, `redis-cli`); panics on failure.
fn client(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !said.starts_with("ERR"),
        "{program} {}: {said}{}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mariadb(sql: &str) {
    client("mariadb", &["-uroot", "-h127.0.0.1", "-P3306", "-e", sql]);
}

fn redis_cli(args: &[&str]) {
    let mut all = vec!["-h", "127.0.0.1", "-p", "6379"];
    all.extend_from_slice(args);
    client("redis-cli", &all);
}

/// The setup's test directory (scripts/setup-slapd.sh): its plain port, base of the
/// entries, and root DN's fixture password.
fn ldap_setup() -> (String, String, String) {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let suffix = var("KVR_TEST_LDAP_SUFFIX", "dc=kvr,dc=test");
    (var("KVR_TEST_LDAP_PORT", "3389"), suffix, var("KVR_TEST_LDAP_ADMIN_PASSWORD", "kvr-test-ldap-admin"))
}

/// Runs `ldapadd` or `ldapdelete` as the setup's root DN, `input` on its stdin.
fn ldap_root(program: &str, input: &str) -> std::process::Output {
    use std::io::Write;
    let (port, suffix, root_password) = ldap_setup();
    let mut child = Command::new(program)
        .args(["-x", "-H", &format!("ldap://127.0.0.1:{port}"), "-D", &format!("cn=admin,{suffix}")])
        .args(["-w", &root_password])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} (ldap-utils, scripts/setup-slapd.sh): {e}"));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// A MariaDB account, Redis users and an LDAP entry (its DN) of this test, dropped when
/// it ends.
struct OtherTargets {
    maria: String,
    redis: Vec<String>,
    ldap: String,
}

impl Drop for OtherTargets {
    fn drop(&mut self) {
        let _ = Command::new("mariadb")
            .args(["-uroot", "-h127.0.0.1", "-P3306", "-e", &format!("DROP USER IF EXISTS `{}`@'%'", self.maria)])
            .output();
        for user in &self.redis {
            let _ = Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", "6379", "ACL", "DELUSER", user]).output();
        }
        let _ = ldap_root("ldapdelete", &format!("{}\n", self.ldap));
    }
}

/// A managed secret, and what its target accepts now.
struct Managed {
    secret: &'static str,
    /// The `CredentialId`: the htpasswd user or the PostgreSQL role.
    account: String,
    /// Its latest version in the vault.
    version: String,
    /// The password its target accepts.
    on_target: SecretString,
}

/// Checks a password on the target of each kind but PostgreSQL's.
struct Checkers {
    site: HtpasswdRotator,
    maria: MariaDbRotator,
    redis: RedisRotator,
    ldap: LdapRotator,
}

impl Managed {
    async fn accepts(&self, check: &Checkers, password: &SecretString) -> bool {
        let req = VerifyRequest::new(self.account.clone(), password.clone());
        let on: &dyn Rotator = match self.secret {
            "site-password" => &check.site,
            "maria-password" => &check.maria,
            "redis-password" => &check.redis,
            "ldap-password" => &check.ldap,
            _ => return logs_in(&self.account, password).await,
        };
        on.verify(req).await.unwrap() == VerifyResponse::Accepted
    }
}

/// A password and its MariaDB and Redis hashes, labelled.
fn with_hashes(label: String, password: &SecretString) -> [(String, SecretString); 3] {
    [
        (format!("MariaDB hash of the {label}"), SecretString::from(native_hash(password).to_string())),
        (format!("Redis hash of the {label}"), SecretString::from(acl_hash(password).to_string())),
        (label, password.clone()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_at_trace_level_print_no_password_and_no_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let policy = PasswordPolicy::default();

    // htpasswd: one user.
    let htpasswd_path = dir.path().join("site.htpasswd");
    let site_initial = policy.generate();
    htpasswd::add_user(&htpasswd_path, HTPASSWD_USER, &site_initial, 4).unwrap();
    let site = HtpasswdRotator::new(HtpasswdConfig::new(&htpasswd_path), policy.clone());

    // MariaDB: one account that changes its own password. Redis: one user that only the
    // admin (another user) can change.
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let (ldap_port, ldap_suffix, _) = ldap_setup();
    let ldap_user = format!("kvr_logleak_{tag}_l");
    let others = OtherTargets {
        maria: format!("kvr_logleak_{tag}_m"),
        redis: vec![format!("kvr_logleak_{tag}_r"), format!("kvr_logleak_{tag}_radmin")],
        ldap: format!("uid={ldap_user},ou=people,{ldap_suffix}"),
    };
    let (maria_initial, redis_initial, redis_admin) = (policy.generate(), policy.generate(), policy.generate());
    let maria_user = others.maria.clone();
    mariadb(&format!(
        "CREATE USER `{maria_user}`@'%' IDENTIFIED BY PASSWORD '{}'; \
         GRANT SELECT (User, Host) ON mysql.user TO `{maria_user}`@'%'",
        native_hash(&maria_initial).as_str()
    ));
    let [redis_user, redis_admin_user] = [&others.redis[0], &others.redis[1]];
    let hash = |p: &SecretString| format!("#{}", acl_hash(p).as_str());
    redis_cli(&["ACL", "SETUSER", redis_user, "reset", "on", &hash(&redis_initial), "~app:*", "+get"]);
    redis_cli(&["ACL", "SETUSER", redis_admin_user, "reset", "on", &hash(&redis_admin), "+acl"]);
    put(store.as_ref(), REDIS_ADMIN_SECRET, &redis_admin, &[]).await;
    // LDAP: one entry that changes its own password (over plain ldap:// on loopback, as the
    // others here: the output is what is checked).
    let ldap_initial = policy.generate();
    let added = ldap_root(
        "ldapadd",
        &format!(
            "dn: {}\nobjectClass: inetOrgPerson\nuid: {ldap_user}\ncn: {ldap_user}\nsn: leak\nuserPassword: {}\n",
            others.ldap,
            ldap_initial.expose_secret()
        ),
    );
    assert!(added.status.success(), "ldapadd: {}", String::from_utf8_lossy(&added.stderr));
    let ldap_url = format!("ldap://127.0.0.1:{ldap_port}");
    let ldap_template = format!("uid={{}},ou=people,{ldap_suffix}");
    let mut ldap_cfg = LdapConfig::new(&ldap_url, &ldap_template);
    ldap_cfg.tls = TlsMode::Disable;
    let mut maria_cfg = MariaDbConfig::new("127.0.0.1");
    maria_cfg.tls = TlsMode::Disable;
    let mut redis_cfg = RedisConfig::new("127.0.0.1");
    (redis_cfg.tls, redis_cfg.acl_save) = (TlsMode::Disable, AclSave::Never);
    let check = Checkers {
        site,
        maria: MariaDbRotator::new(maria_cfg, policy.clone()).unwrap(),
        redis: RedisRotator::new(redis_cfg, policy.clone()).unwrap(),
        ldap: LdapRotator::new(ldap_cfg, policy.clone()).unwrap(),
    };

    // PostgreSQL: `own` changes its password with its own login; `stale`'s secret holds a
    // password the server never had, so only the admin (`admin`) can change it.
    let roles = Roles::create("kvr_logleak", 3).await;
    let [(own, own_initial), (stale, stale_initial), (admin, admin_password)] = &roles.0[..] else { unreachable!() };
    superuser()
        .await
        .batch_execute(&format!("ALTER ROLE {admin} CREATEROLE; GRANT {stale} TO {admin} WITH ADMIN OPTION"))
        .await
        .unwrap();
    let stale_in_vault = policy.generate();
    put(store.as_ref(), ADMIN_SECRET, admin_password, &[]).await;

    // Every password used, by what it is, to look for in the output.
    let mut passwords = vec![
        ("initial password of the htpasswd user".to_owned(), site_initial.clone()),
        (format!("initial password of {own}"), own_initial.clone()),
        (format!("initial password of {stale}"), stale_initial.clone()),
        (format!("stale password of {stale} in the vault"), stale_in_vault.clone()),
        (format!("password of the admin {admin}"), admin_password.clone()),
    ];
    for (label, password) in [
        (format!("initial password of {maria_user}"), &maria_initial),
        (format!("initial password of {redis_user}"), &redis_initial),
        (format!("password of the admin {redis_admin_user}"), &redis_admin),
        (format!("initial password of {ldap_user}"), &ldap_initial),
    ] {
        passwords.extend(with_hashes(label, password));
    }
    let mut managed = Vec::new();
    for (secret, rotator, account, in_vault, on_target) in [
        ("site-password", "site", HTPASSWD_USER, &site_initial, &site_initial),
        ("pg-own-password", "pg", own.as_str(), own_initial, own_initial),
        ("pg-stale-password", "pg", stale.as_str(), &stale_in_vault, stale_initial),
        ("maria-password", "maria", maria_user.as_str(), &maria_initial, &maria_initial),
        ("redis-password", "redis", redis_user.as_str(), &redis_initial, &redis_initial),
        ("ldap-password", "ldap", ldap_user.as_str(), &ldap_initial, &ldap_initial),
    ] {
        let version = put(store.as_ref(), secret, in_vault, &[("rotator", rotator), ("CredentialId", account)]).await;
        managed.push(Managed { secret, account: account.to_owned(), version, on_target: on_target.clone() });
    }

    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, vault.ca_certificate_pem()).unwrap();
    let config = dir.path().join("kv-rotator.toml");
    std::fs::write(
        &config,
        format!(
            "[vault]\nurl = \"{}\"\ntls_ca_file = \"{}\"\nconnect_to = \"{}\"\ncredential = {{ kind = \"dev-vault\" }}\n\
             [engine]\ninitial_backoff_ms = 10\nmax_backoff_ms = 20\nmax_attempts = 2\n\
             [targets.site]\nkind = \"htpasswd\"\npath = \"{}\"\nbcrypt_cost = 4\naccounts = [\"{HTPASSWD_USER}\"]\n\
             [targets.pg]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nport = 5432\nsslmode = \"disable\"\n\
             accounts = [\"{own}\", \"{stale}\"]\nadmin = {{ username = \"{admin}\", secret = \"{ADMIN_SECRET}\" }}\n\
             [targets.maria]\nkind = \"mariadb\"\nhost = \"127.0.0.1\"\ntls = \"disable\"\naccounts = [\"{maria_user}\"]\n\
             [targets.redis]\nkind = \"redis\"\nhost = \"127.0.0.1\"\ntls = \"disable\"\nacl_save = \"never\"\n\
             accounts = [\"{redis_user}\"]\nadmin = {{ username = \"{redis_admin_user}\", secret = \"{REDIS_ADMIN_SECRET}\" }}\n\
             [targets.ldap]\nkind = \"ldap\"\nurl = \"{ldap_url}\"\ntls = \"disable\"\n\
             user_dn_template = \"{ldap_template}\"\naccounts = [\"{ldap_user}\"]\n",
            vault.endpoint(),
            ca.display(),
            vault.local_addr(),
            htpasswd_path.display(),
        ),
    )
    .unwrap();

    for filter in FILTERS {
        let out = Command::new(BIN)
            .args(["rotate", "--all", "--force", "--config"])
            .arg(&config)
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let output = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let stderr_tail: Vec<&str> = output.lines().rev().take(20).collect();
        assert!(
            out.status.success(),
            "RUST_LOG={filter}: rotate failed; stdout:\n{stdout}\nlast lines:\n{stderr_tail:#?}"
        );

        // The rotations happened: a new version of each secret, which logs in on its
        // target, where the password before it no longer does.
        for m in &mut managed {
            let latest = store.get_latest(m.secret).await.unwrap();
            assert_ne!(latest.version, m.version, "RUST_LOG={filter}: {} not rotated; stdout:\n{stdout}", m.secret);
            assert!(m.accepts(&check, &latest.value).await, "the new password of {} does not log in", m.secret);
            assert!(!m.accepts(&check, &m.on_target).await, "the old password of {} still logs in", m.secret);
            passwords.extend(with_hashes(format!("new password of {} ({})", m.secret, latest.version), &latest.value));
            (m.version, m.on_target) = (latest.version, latest.value);
        }

        let leaks = leaking_lines(&output, &passwords);
        assert!(
            leaks.is_empty(),
            "RUST_LOG={filter}: {} output line(s) carry password material:\n{}",
            leaks.len(),
            leaks.join("\n")
        );

        // The output is not empty by accident: kv-rotator's own trace output and its
        // audit records are there.
        let own_trace = output.lines().filter(|l| l.contains(" TRACE kv_rotator")).count();
        assert!(own_trace > 0, "RUST_LOG={filter}: no trace output from kv-rotator's own targets; stdout:\n{stdout}");
        let audits = output.lines().filter(|l| l.contains("rotation audit record")).count();
        assert_eq!(audits, 6, "RUST_LOG={filter}: stdout:\n{stdout}");
    }
    drop(roles);
    drop(others);
    vault.shutdown().await;
}
