//! Hostile or odd state in Key Vault and on the target, which the engine must refuse (or
//! handle) before it changes anything, as hardened for issue 9:
//!
//! 1. a target that accepts any password (a PostgreSQL role that `pg_hba.conf` trusts):
//!    refused by the canary, nothing written; a role that checks passwords rotates;
//! 2. a `CredentialId` outside the profile's `accounts`, or the profile admin's own
//!    account without `allow_admin_account`: refused, the target file untouched;
//! 3. a journal record planted under the expected name but not shaped as kv-rotator
//!    writes it (content type, `rotation-id`, `kv-rotator-journal-for`): never used,
//!    never deleted; one kv-rotator wrote is reused;
//! 4. a request naming the current version in upper case: finishes the rotation its
//!    journal started instead of taking the stale path; later ones are `AlreadyRotated`;
//! 5. a journal whose secret lost its `rotator` tag: the resume fails loudly (failure tag
//!    on the journal record, metric) instead of ending as `NotManaged`.
//!
//! Each test says, in a comment, how the engine before d518b11 failed it. Everything runs
//! against the dev vault through the real SDK; scenario 1 needs PostgreSQL on
//! 127.0.0.1:5432 prepared by `scripts/setup-postgres.sh`.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use common::pg::{self, Roles};
use kv_rotator::engine::journal::{journal_name, rotation_id, JOURNAL_CONTENT_TYPE};
use kv_rotator::engine::{Engine, Outcome};
use kv_rotator::targets::{Accounts, Targets};
use kv_rotator_config::{AdminRef, EngineConfig};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, PropertiesUpdate, SecretStore, StoreError};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::postgres::{PostgresConfig, PostgresRotator, SslMode};
use kv_rotator_rotators::{PasswordPolicy, Rotator, VerifyRequest, VerifyResponse};
use secrecy::{ExposeSecret, SecretString};

/// The dev vault, reached through the SDK.
struct Vault {
    dev: DevVault,
    store: Arc<dyn SecretStore>,
}

impl Vault {
    async fn start() -> Vault {
        let dev = DevVault::start(DevVaultOptions::default()).await.unwrap();
        let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&dev).unwrap());
        Vault { dev, store }
    }

    /// Writes a version of `name` and returns its id.
    async fn put(&self, name: &str, value: &SecretString, tags: &[(&str, &str)], content_type: Option<&str>) -> String {
        let tags = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let content_type = content_type.map(str::to_owned);
        let new = NewSecretVersion { value: value.clone(), tags, content_type, expires: None, not_before: None };
        self.store.set_secret(name, new).await.unwrap().version
    }

    /// A managed secret for `user` on profile `profile`, holding `password`.
    async fn managed(&self, name: &str, profile: &str, user: &str, password: &SecretString) -> String {
        self.put(name, password, &[("rotator", profile), ("CredentialId", user)], None).await
    }

    /// The journal record name of the rotation of `secret` from `version`.
    fn journal(&self, secret: &str, version: &str) -> String {
        journal_name(&rotation_id(self.store.vault_name(), secret, version))
    }

    /// A journal record shaped as kv-rotator writes it, at `step`.
    async fn write_journal(&self, secret: &str, version: &str, password: &SecretString, step: &str) -> String {
        let id = rotation_id(self.store.vault_name(), secret, version);
        let tags = [
            ("kv-rotator-journal-for", secret),
            ("rotation-id", id.as_str()),
            ("kv-rotator-step", step),
            ("rotated-from", version),
        ];
        let name = self.journal(secret, version);
        self.put(&name, password, &tags, Some(JOURNAL_CONTENT_TYPE)).await;
        name
    }

    async fn versions(&self, name: &str) -> usize {
        self.store.list_versions(name).await.unwrap().len()
    }

    async fn latest_value(&self, name: &str) -> String {
        self.store.get_latest(name).await.unwrap().value.expose_secret().to_owned()
    }

    /// Names of every journal record in the vault.
    async fn journals(&self) -> Vec<String> {
        let all = self.store.list_secrets().await.unwrap();
        all.into_iter().map(|p| p.name).filter(|n| n.starts_with("kv-rotator-pending-")).collect()
    }

    async fn gone(&self, name: &str) -> bool {
        matches!(self.store.get_latest(name).await, Err(StoreError::NotFound { .. }))
    }

    fn request(&self, secret: &str, version: Option<&str>) -> RotationRequest {
        RotationRequest {
            vault_name: self.store.vault_name().to_owned(),
            secret_name: secret.to_owned(),
            version: version.map(str::to_owned),
            trigger: Trigger::Manual { requested_by: "hostile tags test".into(), force: false },
        }
    }

    fn engine(&self, targets: Targets) -> Engine {
        let settings = EngineConfig {
            min_rotation_interval_secs: 0,
            finish_retry_for_secs: 0,
            initial_backoff_ms: 10,
            max_backoff_ms: 50,
            ..Default::default()
        };
        Engine::new(self.store.clone(), targets, settings)
    }
}

/// An htpasswd file with users and their passwords, and its rotator.
struct Htpasswd {
    _dir: tempfile::TempDir,
    path: PathBuf,
    rotator: Arc<HtpasswdRotator>,
}

impl Htpasswd {
    fn with_users(users: &[(&str, &SecretString)]) -> Htpasswd {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        for (user, password) in users {
            htpasswd::add_user(&path, user, password, 4).unwrap();
        }
        let cfg = HtpasswdConfig { bcrypt_cost: 4, ..HtpasswdConfig::new(&path) };
        let rotator = Arc::new(HtpasswdRotator::new(cfg, PasswordPolicy::default()));
        Htpasswd { _dir: dir, path, rotator }
    }

    /// One profile over this file, with `accounts`.
    fn targets(&self, profile: &str, admin: Option<AdminRef>, accounts: Accounts) -> Targets {
        let mut targets = Targets::default();
        targets.insert(profile, self.rotator.clone(), admin);
        targets.set_accounts(profile, accounts);
        targets
    }

    async fn logs_in(&self, user: &str, password: &SecretString) -> bool {
        let req = VerifyRequest::new(user, password.clone());
        self.rotator.verify(req).await.unwrap() == VerifyResponse::Accepted
    }
}

fn password() -> SecretString {
    PasswordPolicy::default().generate()
}

/// The error and attempts of a failed request, with the target untouched.
fn failed_untouched(outcome: &Outcome) -> (&str, u32) {
    match outcome {
        Outcome::Failed { error, attempts, unfinished_journal: None } => (error, *attempts),
        other => panic!("expected a failure with the target untouched, got {other:?}"),
    }
}

fn pg_targets(profile: &str) -> Targets {
    let mut cfg = PostgresConfig::new("127.0.0.1");
    cfg.sslmode = SslMode::Disable;
    let rotator = PostgresRotator::new(cfg, PasswordPolicy::default()).unwrap();
    let mut targets = Targets::default();
    targets.insert(profile, Arc::new(rotator), None);
    targets
}

/// The role's stored password verifier (what `ALTER ROLE … PASSWORD` changes).
async fn verifier(role: &str) -> Option<String> {
    let su = pg::superuser().await;
    su.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&role]).await.unwrap().get(0)
}

// Scenario 1 (issue 9, item 4). The old engine had no canary: `set` logged in with the
// pending password to check idempotency, the trusting server let it in, so `set` said
// AlreadySet without any ALTER ROLE, `test` passed the same way, and `finish` wrote a
// new version with a password the role does not have (outcome Rotated, a journal record
// written and deleted): the first SCRAM client to read it would be locked out.
#[tokio::test]
async fn a_target_that_accepts_any_password_is_refused_and_nothing_is_written() {
    let roles = Roles::create("kvr_trust", 1).await;
    let (role, initial) = roles.0[0].clone();
    // Out of kvr_scram, the role falls to this machine's `trust` rule.
    pg::superuser().await.batch_execute(&format!("REVOKE kvr_scram FROM {role}")).await.unwrap();
    assert!(pg::logs_in(&role, &password()).await, "precondition: pg_hba.conf trusts {role} once out of kvr_scram");
    let stored = verifier(&role).await;
    let vault = Vault::start().await;
    let v1 = vault.managed("trusted-db", "pg-trusting", &role, &initial).await;
    let engine = vault.engine(pg_targets("pg-trusting"));

    let report = engine.rotate(vault.request("trusted-db", None)).await;
    let (error, attempts) = failed_untouched(&report.outcome);
    assert_eq!(attempts, 1, "a configuration error is not retried: {error}");
    // Two defences: the PostgreSQL rotator refuses a login the server did not check
    // (its auth guard), and the engine's canary catches any rotator that cannot tell.
    assert!(
        error.contains("pg-trusting")
            && (error.contains("without checking any password") || error.contains("accepted a random wrong password")),
        "{error}"
    );
    assert_eq!(vault.versions("trusted-db").await, 1, "no new version");
    let latest = vault.store.get_latest("trusted-db").await.unwrap();
    assert_eq!(latest.version, v1);
    assert!(latest.value.expose_secret() == initial.expose_secret(), "the initial password stays");
    assert!(latest.properties.tags.contains_key("kv-rotator-failed"), "the failure is marked on the secret");
    assert!(vault.journals().await.is_empty(), "no journal record");
    assert_eq!(verifier(&role).await, stored, "the role's password was not changed");
    vault.dev.shutdown().await;
}

// Control for scenario 1: the canary is refused by a role that checks passwords, so the
// same profile rotates it (the old engine passed this too).
#[tokio::test]
async fn a_role_that_checks_passwords_rotates() {
    let roles = Roles::create("kvr_checks", 1).await;
    let (role, initial) = roles.0[0].clone();
    let vault = Vault::start().await;
    let v1 = vault.managed("checked-db", "pg-checking", &role, &initial).await;
    let engine = vault.engine(pg_targets("pg-checking"));

    let report = engine.rotate(vault.request("checked-db", None)).await;
    assert!(matches!(&report.outcome, Outcome::Rotated { old_version, .. } if *old_version == v1), "{report:?}");
    let latest = SecretString::from(vault.latest_value("checked-db").await);
    assert!(pg::logs_in(&role, &latest).await, "the new version logs in");
    assert!(!pg::logs_in(&role, &initial).await, "the old password does not");
    assert!(vault.journals().await.is_empty());
    vault.dev.shutdown().await;
}

// Scenario 2 (item 7). The old engine had no `accounts`: any CredentialId the tags named
// was rotated, so `root` got a new password (file rewritten, a new version written, outcome
// Rotated) — whoever can tag a secret could take over any account the profile can reach.
#[tokio::test]
async fn a_credential_outside_the_profiles_accounts_is_refused_before_anything_changes() {
    let (root_pw, app_pw) = (password(), password());
    let file = Htpasswd::with_users(&[("root", &root_pw), ("app_orders", &app_pw)]);
    let vault = Vault::start().await;
    vault.managed("root-password", "web", "root", &root_pw).await;
    vault.managed("orders-password", "web", "app_orders", &app_pw).await;
    let engine = vault.engine(file.targets("web", None, Accounts::new(&["app_*"], false)));
    let before = std::fs::read(&file.path).unwrap();

    let report = engine.rotate(vault.request("root-password", None)).await;
    let (error, attempts) = failed_untouched(&report.outcome);
    assert_eq!(attempts, 1, "{error}");
    assert!(error.contains("\"root\"") && error.contains("targets.web.accounts"), "{error}");
    assert_eq!(std::fs::read(&file.path).unwrap(), before, "the htpasswd file is byte-for-byte unchanged");
    assert!(file.logs_in("root", &root_pw).await);
    assert_eq!(vault.versions("root-password").await, 1, "no new version");
    assert!(vault.journals().await.is_empty(), "no journal record");

    // The same profile rotates an account its patterns match.
    let report = engine.rotate(vault.request("orders-password", None)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    assert!(file.logs_in("app_orders", &SecretString::from(vault.latest_value("orders-password").await)).await);
    assert!(file.logs_in("root", &root_pw).await, "root still untouched");
    vault.dev.shutdown().await;
}

// Scenario 2, the admin's own account (item 7). The old engine rotated it like any other:
// the secret the profile reads its admin login from was rotated by a rotation of that
// profile (outcome Rotated, file rewritten), without anyone having asked for it.
#[tokio::test]
async fn the_admins_own_account_is_rotated_only_with_allow_admin_account() {
    let admin_pw = password();
    let file = Htpasswd::with_users(&[("admin", &admin_pw)]);
    let vault = Vault::start().await;
    // The admin login's secret is itself tagged for rotation on the profile it serves.
    vault.managed("admin-pw", "web", "admin", &admin_pw).await;
    let admin = || Some(AdminRef { username: "admin".into(), secret: "admin-pw".into() });
    let before = std::fs::read(&file.path).unwrap();

    let refusing = vault.engine(file.targets("web", admin(), Accounts::new(&["*"], false)));
    let report = refusing.rotate(vault.request("admin-pw", None)).await;
    let (error, attempts) = failed_untouched(&report.outcome);
    assert_eq!(attempts, 1, "{error}");
    assert!(error.contains("\"admin\"") && error.contains("allow_admin_account"), "{error}");
    assert_eq!(std::fs::read(&file.path).unwrap(), before, "the htpasswd file is byte-for-byte unchanged");
    assert_eq!(vault.versions("admin-pw").await, 1, "no new version");
    assert!(vault.journals().await.is_empty(), "no journal record");

    let allowing = vault.engine(file.targets("web", admin(), Accounts::new(&["*"], true)));
    let report = allowing.rotate(vault.request("admin-pw", None)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    assert!(file.logs_in("admin", &SecretString::from(vault.latest_value("admin-pw").await)).await);
    assert!(!file.logs_in("admin", &admin_pw).await);
    vault.dev.shutdown().await;
}

/// A managed secret `app-password` (version `v1`) for user `app` on profile `site` over
/// an htpasswd file whose `app` logs in with `initial`.
struct App {
    vault: Vault,
    file: Htpasswd,
    initial: SecretString,
    v1: String,
    engine: Engine,
}

impl App {
    async fn start() -> App {
        let initial = password();
        let file = Htpasswd::with_users(&[("app", &initial)]);
        let vault = Vault::start().await;
        let v1 = vault.managed("app-password", "site", "app", &initial).await;
        let engine = vault.engine(file.targets("site", None, Accounts::any()));
        App { vault, file, initial, v1, engine }
    }

    /// What a crash after `set` leaves: a journal record at step `target-set` whose
    /// password the target already uses. Returns the password and the record's name.
    async fn crash_after_set(&self) -> (SecretString, String) {
        let pending = password();
        let name = self.vault.write_journal("app-password", &self.v1, &pending, "target-set").await;
        htpasswd::add_user(&self.file.path, "app", &pending, 4).unwrap();
        assert!(!self.file.logs_in("app", &self.initial).await);
        (pending, name)
    }
}

/// Rewrites a planted record's tags; returns the content type to give it.
type PlantTags = fn(&mut BTreeMap<&str, String>) -> Option<&'static str>;

// Scenario 3 (item 7, last bullet). The old engine reused whatever record had the
// journal's name: `set` made the target accept the planted password, `finish` wrote it as
// the new version (outcome Rotated) and deleted the record — whoever can write a secret
// named kv-rotator-pending-<id> chose the target's password. It failed every variant.
#[tokio::test]
async fn planted_journal_records_are_neither_used_nor_deleted() {
    let variants: [(&str, PlantTags); 3] = [
        ("no content type", |_| None),
        ("another rotation id", |tags| {
            tags.insert("rotation-id", "0123456789abcdef0123456789abcdef".into());
            Some(JOURNAL_CONTENT_TYPE)
        }),
        ("journal for another secret", |tags| {
            tags.insert("kv-rotator-journal-for", "other-secret".into());
            Some(JOURNAL_CONTENT_TYPE)
        }),
    ];
    for (variant, shape) in variants {
        let App { vault, file, initial, v1, engine } = App::start().await;
        let name = vault.journal("app-password", &v1);
        let mut tags = BTreeMap::from([
            ("kv-rotator-journal-for", "app-password".to_owned()),
            ("rotation-id", rotation_id(vault.store.vault_name(), "app-password", &v1)),
            ("kv-rotator-step", "pending".to_owned()),
            ("rotated-from", v1.clone()),
        ]);
        let content_type = shape(&mut tags);
        let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let planted = password();
        let planted_version = vault.put(&name, &planted, &tags, content_type).await;

        let report = engine.rotate(vault.request("app-password", Some(&v1))).await;
        let (error, attempts) = failed_untouched(&report.outcome);
        assert_eq!(attempts, 1, "{variant}: {error}");
        assert!(error.contains(&name) && error.contains("operator"), "{variant}: {error}");
        assert!(file.logs_in("app", &initial).await, "{variant}: the original password still logs in");
        assert!(!file.logs_in("app", &planted).await, "{variant}: the planted password was never set");
        let kept = vault.store.get_latest(&name).await.expect("the planted record is not deleted");
        assert_eq!(
            (kept.version.as_str(), kept.value.expose_secret()),
            (planted_version.as_str(), planted.expose_secret())
        );
        assert_eq!(vault.versions("app-password").await, 1, "{variant}: no new version");
        vault.dev.shutdown().await;
    }
}

// Control for scenario 3: a record shaped as kv-rotator writes it. What a crash after
// `set` leaves — the target already uses its password — is reused. What a crash after
// `create` leaves — the target uses none of its passwords — proves nothing (a planted
// record looks the same), so a fresh password is journaled over it and set; the record
// keeps the old one as an older version until it is deleted.
#[tokio::test]
async fn a_journal_record_kv_rotator_wrote_is_reused_once_the_target_uses_it() {
    let App { vault, file, initial, v1, engine } = App::start().await;
    let pending = password();
    let name = vault.write_journal("app-password", &v1, &pending, "pending").await;
    let report = engine.rotate(vault.request("app-password", Some(&v1))).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let latest = vault.latest_value("app-password").await;
    assert!(latest != pending.expose_secret(), "an unused record's password is not trusted");
    assert!(file.logs_in("app", &SecretString::from(latest)).await);
    assert!(!file.logs_in("app", &initial).await);
    assert!(vault.gone(&name).await, "the journal record is deleted once finished");
    vault.dev.shutdown().await;

    let app = App::start().await;
    let (pending, name) = app.crash_after_set().await;
    let App { vault, v1, engine, .. } = app;
    let report = engine.rotate(vault.request("app-password", Some(&v1))).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    assert!(vault.latest_value("app-password").await == pending.expose_secret(), "the journaled password is used");
    assert!(vault.gone(&name).await);
    vault.dev.shutdown().await;
}

// Scenario 4 (item 8). The old engine compared version ids case-sensitively: `V1 != v1`
// made the request "older than the latest", so it took the stale path; its probe found the
// target on the journal's password and ended Failed ("an operator must choose") instead of
// finishing, the latest version still not logging in. (The rotation id was already
// case-insensitive, so the old engine did answer the second, post-rotation request
// AlreadyRotated.)
#[tokio::test]
async fn an_upper_case_version_finishes_the_rotation_its_journal_started() {
    let app = App::start().await;
    let upper = app.v1.to_ascii_uppercase();
    assert_ne!(upper, app.v1, "precondition: the version id has letters");
    let (pending, name) = app.crash_after_set().await;
    let App { vault, file, v1, engine, .. } = app;

    let report = engine.rotate(vault.request("app-password", Some(&upper))).await;
    let Outcome::Rotated { old_version, new_version, .. } = &report.outcome else { panic!("{report:?}") };
    assert_eq!(old_version, &v1);
    let latest = vault.store.get_latest("app-password").await.unwrap();
    assert_eq!(&latest.version, new_version);
    assert!(latest.value.expose_secret() == pending.expose_secret(), "finished with the journal's password");
    assert!(file.logs_in("app", &latest.value).await, "the latest version logs in");
    assert!(vault.gone(&name).await, "the journal record is deleted only once finished");
    assert_eq!(vault.versions("app-password").await, 2);

    let again = engine.rotate(vault.request("app-password", Some(&upper))).await;
    assert_eq!(again.outcome, Outcome::AlreadyRotated { version: new_version.clone() });
    assert_eq!(vault.versions("app-password").await, 2, "nothing written");
    vault.dev.shutdown().await;
}

// Scenario 5 (item 9). The old fence returned NotManaged as soon as the secret had no
// `rotator` tag, without looking for a journal: the resume ended silently (metric
// outcome not_managed, no failure tag anywhere, no error log), and the journal's
// password — the only one the target accepts — was never pointed out to anyone.
#[tokio::test]
async fn a_journal_whose_secret_lost_its_rotator_tag_is_reported_not_passed_over() {
    let app = App::start().await;
    let (pending, name) = app.crash_after_set().await;
    let App { vault, file, v1, engine, .. } = app;
    // Someone rewrites the secret's tags without `rotator`.
    let mut tags = vault.store.get_latest("app-password").await.unwrap().properties.tags;
    tags.remove("rotator");
    let update = PropertiesUpdate { tags: Some(tags.clone()), ..Default::default() };
    vault.store.update_properties("app-password", Some(&v1), update).await.unwrap();

    let scan = kv_rotator::sweeper::scan(vault.store.as_ref(), None).await.unwrap();
    assert_eq!(scan.requests.len(), 1, "the sweeper finds the journal: {scan:?}");
    let (request, _) = scan.requests.into_iter().next().unwrap();
    let report = engine.rotate(request).await;
    let (error, attempts) = failed_untouched(&report.outcome);
    assert_eq!(attempts, 1, "{error}");
    assert!(error.contains(&name) && error.contains("no rotator tag"), "{error}");

    let journal = vault.store.get_latest(&name).await.expect("the journal record is kept");
    assert!(journal.value.expose_secret() == pending.expose_secret(), "the record holds the pending password");
    assert!(journal.properties.tags.contains_key("kv-rotator-failed"), "{:?}", journal.properties.tags);
    assert!(file.logs_in("app", &pending).await, "the target still uses the journal's password");
    let secret = vault.store.get_latest("app-password").await.unwrap();
    assert_eq!((secret.version.as_str(), &secret.properties.tags), (v1.as_str(), &tags), "the secret is untouched");
    let metrics = engine.metrics();
    assert_eq!(metrics.counter("kv_rotator_rotations_total", &[("outcome", "failed"), ("trigger", "resume")]), 1);
    assert_eq!(metrics.counter("kv_rotator_rotations_total", &[("outcome", "not_managed"), ("trigger", "resume")]), 0);
    vault.dev.shutdown().await;
}
