//! Hostile tag values on managed secrets (issue 10, item 10), driven through the real
//! engine against the dev vault (through the SDK): oversized values, control characters,
//! homoglyphs, and SQL-, LDAP- and shell-shaped names in `CredentialId`, `rotator` and
//! `ValidityPeriodDays`. Each is refused with an error naming the tag and quoting the
//! value (no raw control character), or — where the name really exists on the target —
//! rotates that account and nothing else. A refusal writes no version and no journal
//! record and leaves the target byte-for-byte as it was; against the real PostgreSQL
//! (127.0.0.1:5432, `scripts/setup-postgres.sh`), no role's row in `pg_authid` changes
//! but the one rotated.
//!
//! `hostile_tags.rs` covers the shape of the vault (trusting targets, `accounts`, the
//! admin's own account, planted journals, version case, a lost `rotator` tag); this file
//! covers the values. No LDAP rotator and no exec plugin exist yet: LDAP filter and DN
//! syntax (`*)(uid=*`, `cn=admin,dc=…`) and shell syntax (`$(…)`, backticks, `;`) are
//! sent to the rotators that do exist, which must treat them as plain names; the LDAP
//! and plugin rotators, when they land, must escape them (RFC 4515 filters, RFC 4514
//! DNs) and pass names as arguments, never through a shell.

// This suite makes its own roles (quoted names) and uses no proxy.
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::pg;
use kv_rotator::engine::{Engine, Outcome};
use kv_rotator::targets::{Accounts, Targets};
use kv_rotator_config::{AdminRef, EngineConfig};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions, SeedSecret};
use kv_rotator_keyvault::{NewSecretVersion, SecretStore};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::postgres::{quote_ident, PostgresConfig, PostgresRotator, SslMode};
use kv_rotator_rotators::{PasswordPolicy, Rotator, VerifyRequest, VerifyResponse};
use secrecy::{ExposeSecret, SecretString};

const SECRET: &str = "hostile-secret";

fn password() -> SecretString {
    PasswordPolicy::default().generate()
}

/// A dev vault reached through the SDK, and the engine over it.
struct Bench {
    dev: DevVault,
    store: Arc<dyn SecretStore>,
}

/// What the managed secret looks like: latest version id, value, tags, number of versions.
type Seen = (String, String, BTreeMap<String, String>, usize);

impl Bench {
    async fn new() -> Bench {
        let dev = DevVault::start(DevVaultOptions::default()).await.unwrap();
        let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&dev).unwrap());
        Bench { dev, store }
    }

    /// Writes `name` with `tags` through the SDK.
    async fn write(&self, name: &str, value: &SecretString, tags: &[(&str, &str)]) {
        let tags = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let version =
            NewSecretVersion { value: value.clone(), tags, content_type: None, expires: None, not_before: None };
        self.store.set_secret(name, version).await.unwrap();
    }

    async fn seen(&self) -> Seen {
        let latest = self.store.get_latest(SECRET).await.unwrap();
        let versions = self.store.list_versions(SECRET).await.unwrap().len();
        (latest.version, latest.value.expose_secret().to_owned(), latest.properties.tags, versions)
    }

    async fn journal_records(&self) -> usize {
        let all = self.store.list_secrets().await.unwrap();
        all.iter().filter(|p| p.name.starts_with("kv-rotator-pending-")).count()
    }

    /// Rotates [`SECRET`] once, by hand, on an engine over `targets`.
    async fn rotate(&self, targets: Targets) -> Outcome {
        let settings = EngineConfig {
            min_rotation_interval_secs: 0,
            finish_retry_for_secs: 0,
            max_backoff_ms: 50,
            ..Default::default()
        };
        let engine = Engine::new(self.store.clone(), targets, settings);
        let request = RotationRequest {
            vault_name: self.store.vault_name().to_owned(),
            secret_name: SECRET.to_owned(),
            version: None,
            trigger: Trigger::Manual { requested_by: "hostile tag values test".into(), force: false },
        };
        engine.rotate(request).await.outcome
    }

    /// Rotates and expects a refusal that changed nothing: one attempt, no journal
    /// record, the same latest version (a failure tag aside), the error returned.
    async fn refused(&self, targets: Targets, case: &str) -> String {
        self.refused_marking(targets, case, true).await
    }

    /// [`Bench::refused`]; `marked`: whether the `kv-rotator-failed` tag can be written
    /// (not on a version whose other tags are already over Key Vault's limits).
    async fn refused_marking(&self, targets: Targets, case: &str, marked: bool) -> String {
        let before = self.seen().await;
        let outcome = self.rotate(targets).await;
        let Outcome::Failed { error, attempts, unfinished_journal: None } = outcome else {
            panic!("{case}: expected a refusal with the target untouched, got {outcome:?}")
        };
        assert_eq!(attempts, 1, "{case}: not retried: {error}");
        assert!(!error.chars().any(char::is_control), "{case}: a raw control character in {error:?}");
        let (version, value, mut tags, versions) = self.seen().await;
        assert_eq!(tags.remove("kv-rotator-failed").is_some(), marked, "{case}: the failure mark on the secret");
        assert_eq!((version, value, tags, versions), before, "{case}: the secret changed");
        assert_eq!(self.journal_records().await, 0, "{case}: a journal record was written");
        error
    }
}

/// An htpasswd file and one profile `web` over it.
struct Site {
    _dir: tempfile::TempDir,
    path: PathBuf,
    rotator: Arc<HtpasswdRotator>,
}

impl Site {
    fn new(users: &[(&str, &SecretString)]) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        for (user, password) in users {
            htpasswd::add_user(&path, user, password, 4).unwrap();
        }
        let rotator = Arc::new(HtpasswdRotator::new(
            HtpasswdConfig { bcrypt_cost: 4, ..HtpasswdConfig::new(&path) },
            PasswordPolicy::default(),
        ));
        Site { _dir: dir, path, rotator }
    }

    fn targets(&self, accounts: &[&str]) -> Targets {
        let mut targets = Targets::default();
        targets.insert("web", self.rotator.clone(), None);
        targets.set_accounts("web", Accounts::new(accounts, false));
        targets
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    async fn accepts(&self, user: &str, password: &SecretString) -> bool {
        let request = VerifyRequest::new(user, password.clone());
        self.rotator.verify(request).await.unwrap() == VerifyResponse::Accepted
    }
}

/// A file whose creation would prove a shell ran a tag's value.
fn marker(dir: &Path) -> PathBuf {
    dir.join("pwned")
}

/// (case, tags over `rotator = web` and `CredentialId = app`, the profile's accounts,
/// what the error must contain).
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [&'a str], Vec<&'a str>);

/// Tag values that must be refused before anything changes, on a profile over an
/// htpasswd file holding `app` and `root`.
#[tokio::test]
async fn hostile_tag_values_are_refused_naming_the_tag_and_nothing_changes() {
    let (app, root) = (password(), password());
    let site = Site::new(&[("app", &app), ("root", &root)]);
    let shell = site._dir.path().join("pwned");
    let shell_cmd = format!("$(touch {})", shell.display());
    let long = "a".repeat(256);
    let cases: Vec<Case> = vec![
        // CredentialId
        (
            "a line break into the htpasswd file",
            vec![("CredentialId", "app\nroot:$2y$04$forged")],
            &["*"],
            vec!["htpasswd user name", "\\n"],
        ),
        ("a colon", vec![("CredentialId", "root:x")], &["*"], vec!["htpasswd user name"]),
        (
            "ESC sequences",
            vec![("CredentialId", "\u{1b}[2J\u{1b}]0;pwned\u{7}app")],
            &["*"],
            vec!["\\u{1b}", "not found"],
        ),
        ("a NUL", vec![("CredentialId", "app\0")], &["*"], vec!["\\0", "not found"]),
        ("Unicode line and paragraph separators", vec![("CredentialId", "app\u{2028}root")], &["*"], vec!["not found"]),
        ("a right-to-left override", vec![("CredentialId", "\u{202e}ppa")], &["*"], vec!["not found"]),
        ("Key Vault's longest value", vec![("CredentialId", &long)], &["*"], vec!["not found"]),
        (
            "a Cyrillic homoglyph of an allowed name",
            vec![("CredentialId", "\u{0430}pp")],
            &["app"],
            vec!["targets.web.accounts"],
        ),
        (
            "a zero-width space after an allowed name",
            vec![("CredentialId", "app\u{200b}")],
            &["app"],
            vec!["targets.web.accounts"],
        ),
        ("an LDAP filter", vec![("CredentialId", "*)(uid=*))(|(uid=*")], &["app*"], vec!["targets.web.accounts"]),
        ("an LDAP DN", vec![("CredentialId", "cn=admin,dc=example,dc=com")], &["*"], vec!["not found"]),
        (
            "a glob that matches every allowed name",
            vec![("CredentialId", "app*")],
            &["app*"],
            vec!["\"app*\"", "not found"],
        ),
        ("a shell command substitution", vec![("CredentialId", &shell_cmd)], &["*"], vec!["not found"]),
        (
            "backticks and a command list",
            vec![("CredentialId", "`id`; rm -rf / && echo app")],
            &["*"],
            vec!["not found"],
        ),
        ("an empty name", vec![("CredentialId", " \t ")], &["*"], vec!["CredentialId"]),
        // rotator: profiles are named exactly.
        (
            "a profile name with a line break",
            vec![("rotator", "web\nmalicious")],
            &["*"],
            vec!["no such profile", "\\n"],
        ),
        ("a profile name padded", vec![("rotator", "web ")], &["*"], vec!["no such profile"]),
        ("a long profile name", vec![("rotator", &long)], &["*"], vec!["no such profile"]),
        // ValidityPeriodDays
        ("no days", vec![("ValidityPeriodDays", "")], &["*"], vec!["ValidityPeriodDays", "\"\""]),
        ("zero days", vec![("ValidityPeriodDays", "0")], &["*"], vec!["ValidityPeriodDays"]),
        ("negative days", vec![("ValidityPeriodDays", "-1")], &["*"], vec!["ValidityPeriodDays"]),
        ("beyond ten years", vec![("ValidityPeriodDays", "3651")], &["*"], vec!["ValidityPeriodDays"]),
        ("beyond u32", vec![("ValidityPeriodDays", "99999999999999999999")], &["*"], vec!["ValidityPeriodDays"]),
        ("exponent", vec![("ValidityPeriodDays", "1e2")], &["*"], vec!["ValidityPeriodDays", "1e2"]),
        ("hexadecimal", vec![("ValidityPeriodDays", "0x10")], &["*"], vec!["ValidityPeriodDays"]),
        ("Arabic-Indic digits", vec![("ValidityPeriodDays", "\u{661}\u{664}")], &["*"], vec!["ValidityPeriodDays"]),
        ("fullwidth digits", vec![("ValidityPeriodDays", "\u{ff11}\u{ff14}")], &["*"], vec!["ValidityPeriodDays"]),
        ("a unit", vec![("ValidityPeriodDays", "14 days")], &["*"], vec!["ValidityPeriodDays"]),
        ("a NUL after the number", vec![("ValidityPeriodDays", "14\0")], &["*"], vec!["ValidityPeriodDays", "\\0"]),
        ("SQL", vec![("ValidityPeriodDays", "14; DROP TABLE secrets")], &["*"], vec!["ValidityPeriodDays"]),
    ];
    for (case, tags, accounts, expected) in cases {
        let bench = Bench::new().await;
        let mut all = vec![("rotator", "web"), ("CredentialId", "app")];
        for (key, value) in tags {
            all.retain(|(k, _)| *k != key);
            all.push((key, value));
        }
        bench.write(SECRET, &app, &all).await;
        let before = site.bytes();
        let error = bench.refused(site.targets(accounts), case).await;
        for piece in expected {
            assert!(error.contains(piece), "{case}: {piece:?} not in {error}");
        }
        assert_eq!(site.bytes(), before, "{case}: the htpasswd file changed");
        assert!(site.accepts("app", &app).await && site.accepts("root", &root).await, "{case}");
        assert!(!marker(site._dir.path()).exists(), "{case}: a shell ran the tag");
        bench.dev.shutdown().await;
    }
}

/// Key Vault refuses tag values over 256 characters, so the engine never sees one
/// through the service; the dev vault enforces the same limit. A vault that did not
/// (seeded here past the REST API) still gets a refusal naming the tag.
#[tokio::test]
async fn oversized_tag_values_stop_at_the_vault_or_at_the_engine() {
    let app = password();
    let site = Site::new(&[("app", &app)]);
    let bench = Bench::new().await;
    let huge = "a".repeat(64 * 1024);
    let tags: BTreeMap<String, String> = [("rotator", "web"), ("CredentialId", huge.as_str())]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let new = NewSecretVersion {
        value: app.clone(),
        tags: tags.clone(),
        content_type: None,
        expires: None,
        not_before: None,
    };
    let refused = bench.store.set_secret(SECRET, new).await.expect_err("a 64 KiB tag value");
    assert!(refused.to_string().contains("256"), "{refused}");
    assert!(matches!(bench.store.get_latest(SECRET).await, Err(kv_rotator_keyvault::StoreError::NotFound { .. })));

    bench
        .dev
        .seed(SeedSecret {
            name: SECRET.into(),
            value: app.expose_secret().to_owned(),
            tags: Some(tags),
            ..Default::default()
        })
        .unwrap();
    let before = site.bytes();
    // The failure mark is refused by the dev vault too: the version's tags are over the limit.
    let error = bench.refused_marking(site.targets(&["app_*"]), "a 64 KiB CredentialId", false).await;
    assert!(error.contains("targets.web.accounts"), "{:.200}", error);
    assert_eq!(site.bytes(), before);
    bench.dev.shutdown().await;
}

/// Names that are hostile elsewhere (a shell, an LDAP filter, SQL) but exist as users in
/// the file are plain names to the htpasswd rotator: each rotates its own line only, and
/// no shell runs.
#[tokio::test]
async fn shell_and_ldap_shaped_names_that_exist_rotate_only_their_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let shell_cmd = format!("$(touch {})", marker(dir.path()).display());
    let names = [
        shell_cmd.as_str(),
        "`touch pwned`;rm -rf /",
        "*)(uid=*))(|(uid=*",
        "cn=admin,dc=example,dc=com",
        "app' OR '1'='1",
        "#not-a-comment",
        "app*",
    ];
    for name in names {
        // `#` starts a comment line in htpasswd files: refused as a user name.
        if name.starts_with('#') {
            assert!(htpasswd::add_user(dir.path().join("x"), name, &password(), 4).is_err());
            continue;
        }
        let (mine, other) = (password(), password());
        let site = Site::new(&[("app", &other), (name, &mine), ("zz-last", &other)]);
        let before = site.bytes();
        let bench = Bench::new().await;
        bench.write(SECRET, &mine, &[("rotator", "web"), ("CredentialId", name)]).await;
        let outcome = bench.rotate(site.targets(&["*"])).await;
        assert!(matches!(outcome, Outcome::Rotated { .. }), "{name}: {outcome:?}");
        let (_, value, _, versions) = bench.seen().await;
        assert_eq!(versions, 2, "{name}: one new version");
        assert!(site.accepts(name, &SecretString::from(value)).await, "{name}: the new version logs in");
        assert!(!site.accepts(name, &mine).await);
        assert!(site.accepts("app", &other).await && site.accepts("zz-last", &other).await, "{name}");
        let (old, new) = (String::from_utf8(before).unwrap(), String::from_utf8(site.bytes()).unwrap());
        let changed: Vec<_> = old.lines().zip(new.lines()).filter(|(a, b)| a != b).collect();
        assert_eq!(old.lines().count(), new.lines().count(), "{name}");
        assert_eq!(changed.len(), 1, "{name}: {changed:?}");
        assert!(changed[0].1.starts_with(&format!("{name}:")), "{name}: {changed:?}");
        assert!(!marker(dir.path()).exists() && !Path::new("pwned").exists(), "{name}: a shell ran");
        bench.dev.shutdown().await;
    }
}

/// Roles on the machine's PostgreSQL, all named `kvi{tag}…` and members of `kvr_scram`
/// (SCRAM, not trust), dropped at the end by quoted name.
struct HostileRoles {
    tag: String,
    names: Vec<String>,
}

impl HostileRoles {
    async fn create(tag: &str, roles: &[(&str, &SecretString, &str)]) -> HostileRoles {
        let su = pg::superuser().await;
        let mut created = HostileRoles { tag: tag.to_owned(), names: Vec::new() };
        for (name, password, options) in roles {
            assert!(name.len() <= 63, "{name:?} is {} bytes: PostgreSQL would truncate it", name.len());
            let sql = format!(
                "CREATE ROLE {} LOGIN {options} IN ROLE kvr_scram PASSWORD '{}'",
                quote_ident(name),
                password.expose_secret()
            );
            su.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            created.names.push(name.to_string());
        }
        created
    }

    /// Every role whose name starts with this run's prefix, with what a change could
    /// touch, plus how many roles there are in all.
    async fn snapshot(&self) -> (BTreeMap<String, String>, i64) {
        let su = pg::superuser().await;
        let rows = su
            .query(
                "SELECT rolname, concat_ws('|', rolpassword, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, \
                 rolinherit, rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil) FROM pg_authid \
                 WHERE starts_with(lower(rolname), $1)",
                &[&format!("kvi{}", self.tag)],
            )
            .await
            .unwrap();
        let count: i64 = su.query_one("SELECT count(*) FROM pg_authid", &[]).await.unwrap().get(0);
        (rows.iter().map(|r| (r.get(0), r.get(1))).collect(), count)
    }
}

impl Drop for HostileRoles {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.names);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let su = pg::superuser().await;
                for name in names {
                    let _ = su.batch_execute(&format!("DROP ROLE IF EXISTS {}", quote_ident(&name))).await;
                }
            })
        })
        .join();
    }
}

/// A `pg` profile on 127.0.0.1:5432 whose admin (`CREATEROLE`, password in the vault)
/// could change any of the roles, so a name that escaped its quoting would show.
fn pg_targets(admin: &str) -> Targets {
    let mut cfg = PostgresConfig::new("127.0.0.1");
    cfg.sslmode = SslMode::Disable;
    let rotator = PostgresRotator::new(cfg, PasswordPolicy::default()).unwrap();
    let mut targets = Targets::default();
    targets.insert("pg", Arc::new(rotator), Some(AdminRef { username: admin.into(), secret: "pg-admin".into() }));
    targets
}

// Identifiers are quoted (`quote_ident`), so SQL in a role's name is only a name: each of
// these roles, which exist, rotates, and no other role's row changes.
#[tokio::test]
async fn sql_shaped_role_names_that_exist_rotate_only_their_role() {
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let victim = format!("kvi{tag}v");
    let admin = format!("kvi{tag}adm");
    let hostile = [
        format!("kvi{tag}\"; ALTER ROLE {victim} PASSWORD 'x';--"),
        format!("kvi{tag}' OR '1'='1"),
        format!("kvi{tag}$$;DROP ROLE {victim};$$"),
        format!("kvi{tag}\\\"\n;SELECT 1"),
        format!("KVI{tag}_Mixed"),
    ];
    let (victim_pw, admin_pw) = (password(), password());
    let passwords: Vec<SecretString> = hostile.iter().map(|_| password()).collect();
    let mut spec: Vec<(&str, &SecretString, &str)> = vec![(&victim, &victim_pw, ""), (&admin, &admin_pw, "CREATEROLE")];
    spec.extend(hostile.iter().zip(&passwords).map(|(name, pw)| (name.as_str(), pw, "")));
    let roles = HostileRoles::create(&tag, &spec).await;

    for (name, initial) in hostile.iter().zip(&passwords) {
        let (before, count) = roles.snapshot().await;
        let bench = Bench::new().await;
        bench.write("pg-admin", &admin_pw, &[]).await;
        bench.write(SECRET, initial, &[("rotator", "pg"), ("CredentialId", name)]).await;
        let outcome = bench.rotate(pg_targets(&admin)).await;
        assert!(matches!(outcome, Outcome::Rotated { .. }), "{name:?}: {outcome:?}");
        let (_, value, _, versions) = bench.seen().await;
        assert_eq!(versions, 2, "{name:?}");
        assert!(pg::logs_in(name, &SecretString::from(value)).await, "{name:?}: the new version logs in");
        assert!(!pg::logs_in(name, initial).await, "{name:?}: the old password no longer does");
        let (after, count_after) = roles.snapshot().await;
        assert_eq!(count_after, count, "{name:?}: a role was created or dropped");
        let changed: Vec<&String> = after.keys().filter(|role| after.get(*role) != before.get(*role)).collect();
        assert_eq!(changed, [name], "{name:?}: other roles changed");
        assert!(pg::logs_in(&victim, &victim_pw).await, "{name:?}: the victim's password changed");
        bench.dev.shutdown().await;
    }
}

// Names of no role — SQL, a NUL, a name over PostgreSQL's 63 bytes whose first 63 bytes
// name an existing role (PostgreSQL truncates identifiers) — are refused before the
// target changes: no role's row changes, no version or journal is written.
#[tokio::test]
async fn sql_shaped_names_of_no_role_are_refused_and_change_no_role() {
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let victim = format!("kvi{tag}v");
    let admin = format!("kvi{tag}adm");
    let full = format!("kvi{tag}{}", "l".repeat(63 - 9));
    let (victim_pw, admin_pw, full_pw) = (password(), password(), password());
    let spec: Vec<(&str, &SecretString, &str)> =
        vec![(&victim, &victim_pw, ""), (&admin, &admin_pw, "CREATEROLE"), (&full, &full_pw, "")];
    let roles = HostileRoles::create(&tag, &spec).await;
    // The role does not exist: this machine's pg_hba.conf trusts whoever is not in
    // kvr_scram, and the canary's login is refused as one no password protects (a role
    // missing under password authentication is refused with SQLSTATE 28000 instead).
    let unknown = "127.0.0.1:5432";
    let cases = [
        (format!("{victim}\"; ALTER ROLE {victim} PASSWORD 'x';--"), unknown),
        (format!("{victim}' --"), unknown),
        (format!("{victim}\0"), "NUL byte"),
        (format!("{full}x"), "63 bytes"),
    ];
    let (before, count) = roles.snapshot().await;
    for (name, expected) in cases {
        let bench = Bench::new().await;
        bench.write("pg-admin", &admin_pw, &[]).await;
        bench.write(SECRET, &victim_pw, &[("rotator", "pg"), ("CredentialId", &name)]).await;
        let error = bench.refused(pg_targets(&admin), &format!("{name:?}")).await;
        assert!(error.contains(expected), "{name:?}: {error}");
        assert_eq!(roles.snapshot().await, (before.clone(), count), "{name:?}: a role changed");
        assert!(pg::logs_in(&victim, &victim_pw).await && pg::logs_in(&full, &full_pw).await, "{name:?}");
        bench.dev.shutdown().await;
    }
}

// The PostgreSQL rotator used to name roles in its errors with SQL quoting
// (`quote_ident`), which leaves control characters as they are, so a `CredentialId` with
// a line break or an ESC sequence put them raw into the rotation's error: the text log
// format escapes its fields, but `kv-rotator rotate` prints the outcome to the operator's
// terminal as it is. It now quotes with `{:?}`, as the engine and htpasswd do.
#[tokio::test]
async fn control_characters_in_a_role_name_are_escaped_in_errors() {
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let admin = format!("kvi{tag}adm");
    let admin_pw = password();
    let roles = HostileRoles::create(&tag, &[(&admin, &admin_pw, "CREATEROLE")]).await;
    let before = roles.snapshot().await;
    for name in [format!("kvi{tag}v\n;ALTER ROLE {admin} SUPERUSER"), format!("kvi{tag}\u{1b}]0;pwned\u{7}")] {
        let bench = Bench::new().await;
        bench.write("pg-admin", &admin_pw, &[]).await;
        bench.write(SECRET, &password(), &[("rotator", "pg"), ("CredentialId", &name)]).await;
        bench.refused(pg_targets(&admin), &format!("{name:?}")).await;
        assert_eq!(roles.snapshot().await, before, "{name:?}: a role changed");
        bench.dev.shutdown().await;
    }
}
