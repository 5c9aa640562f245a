//! `kv-rotator rotate --dry-run` and `kv-rotator status` against the dev vault: the
//! plan and the view say what the engine would do, and neither writes anything — the
//! vault's full state (every secret's versions, tags and attributes) and the target are
//! the same before and after, and no engine lease was taken.

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::devsite::DevSite;
use common::line_for;
use kv_rotator_keyvault::{NewSecretVersion, SecretProperties};
use kv_rotator_rotators::PasswordPolicy;
use secrecy::SecretString;
use time::OffsetDateTime;

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");
const ESC: char = '\u{1b}';

struct Site {
    dev: DevSite,
    config: std::path::PathBuf,
}

impl Site {
    /// A vault with one secret for each decision, and a journal record.
    async fn new() -> Site {
        let dev = DevSite::start().await;
        let config = dev.dir.path().join("kv-rotator.toml");
        std::fs::write(
            &config,
            format!(
                "{}[engine]\nmin_rotation_interval_secs = 3600\n{}[targets.narrow]\nkind = \"htpasswd\"\npath = \"{}\"\nbcrypt_cost = 4\naccounts = [\"app-*\"]\n",
                dev.vault_toml(),
                dev.htpasswd_target_toml(),
                dev.htpasswd.display()
            ),
        )
        .unwrap();
        let site = Site { dev, config };
        // Due now (no expiry), never rotated.
        site.dev.user("alpha-password", "alpha").await;
        // Expires in 200 days: not due by schedule; a manual request still rotates it.
        // A rotation window opening two hours from now (daily, UTC).
        let now = OffsetDateTime::now_utc();
        let (from, to) = (now + time::Duration::hours(2), now + time::Duration::hours(5));
        let window = format!("daily {:02}:{:02}-{:02}:{:02} UTC", from.hour(), from.minute(), to.hour(), to.minute());
        let tags = [("rotator", "site"), ("CredentialId", "later"), ("RotationWindow", window.as_str())];
        site.put("later-password", &tags, Some(200)).await;
        // Two versions, the latest just written: too soon under min_rotation_interval_secs.
        site.dev.user("fresh-password", "fresh").await;
        site.dev.user("fresh-password", "fresh").await;
        site.put("plain", &[], None).await;
        site.put("ghost-password", &[("rotator", "nowhere"), ("CredentialId", "ghost")], None).await;
        site.put("narrow-password", &[("rotator", "narrow"), ("CredentialId", "bob")], None).await;
        // A failed rotation's mark, with terminal escapes someone put in the tags.
        site.put(
            "failed-password",
            &[
                ("rotator", "site"),
                ("CredentialId", "fail\u{1b}]0;pwned\u{7}ed"),
                ("kv-rotator-failed", "2026-01-01T00:00:00Z attempts=5 rotation=abc\u{1b}[2J"),
            ],
            None,
        )
        .await;
        // An unfinished rotation of resume-password's latest version.
        let (v1, _) = site.dev.user("resume-password", "resume").await;
        let id = kv_rotator::engine::journal::rotation_id(site.dev.store.vault_name(), "resume-password", &v1);
        let tags = BTreeMap::from([
            ("kv-rotator-journal-for".to_owned(), "resume-password".to_owned()),
            ("rotation-id".to_owned(), id.clone()),
            ("kv-rotator-step".to_owned(), "pending".to_owned()),
            ("rotated-from".to_owned(), v1),
        ]);
        let journal = NewSecretVersion {
            value: PasswordPolicy::default().generate(),
            tags,
            content_type: Some(kv_rotator::engine::journal::JOURNAL_CONTENT_TYPE.to_owned()),
            expires: None,
            not_before: None,
        };
        site.dev.store.set_secret(&kv_rotator::engine::journal::journal_name(&id), journal).await.unwrap();
        site
    }

    async fn put(&self, name: &str, tags: &[(&str, &str)], expires_in_days: Option<i64>) {
        let new = NewSecretVersion {
            value: SecretString::from("not-a-real-password-1".to_owned()),
            tags: tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            content_type: None,
            expires: expires_in_days.map(|d| OffsetDateTime::now_utc() + time::Duration::days(d)),
            not_before: None,
        };
        self.dev.store.set_secret(name, new).await.unwrap();
    }

    fn run(&self, command: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN).arg(command).arg("--config").arg(&self.config).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    /// Every secret's every version's properties (tags, attributes, timestamps), and the target file.
    async fn state(&self) -> (BTreeMap<String, Vec<SecretProperties>>, Vec<u8>) {
        (self.dev.vault_state().await, std::fs::read(&self.dev.htpasswd).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_engines_decisions_and_writes_nothing() {
    let site = Site::new().await;
    let before = site.state().await;
    assert_eq!(before.0.len(), 9, "{:?}", before.0.keys());

    let named = [
        "alpha-password",
        "later-password",
        "fresh-password",
        "plain",
        "ghost-password",
        "narrow-password",
        "failed-password",
        "resume-password",
        "no-such-secret",
        "kv-rotator-engine-lease",
    ];
    let (ok, stdout, stderr) = site.run("rotate", &[&["--dry-run"][..], &named].concat());
    assert!(ok, "{stdout}\n{stderr}");
    for (secret, expected) in [
        ("alpha-password", "rotate (manual; due: no expiry)"),
        ("later-password", "rotate (manual; not due until"),
        ("fresh-password", "too-soon ("),
        ("plain", "not-managed (not managed"),
        ("ghost-password", "profile-unknown (the configuration has no target profile nowhere)"),
        ("narrow-password", "account-refused (account \"bob\" is not in targets.narrow.accounts)"),
        ("failed-password", "rotate (manual; due: no expiry)"),
        ("resume-password", "resume (unfinished journal kv-rotator-pending-"),
        ("no-such-secret", "not-found"),
        ("kv-rotator-engine-lease", "not-managed (kv-rotator's own record"),
    ] {
        let line = line_for(&stdout, secret);
        assert!(line.contains(expected), "{secret}: {expected:?} not in {line:?}");
    }
    assert!(line_for(&stdout, "alpha-password").contains("profile=site account=alpha version="));
    assert!(line_for(&stdout, "later-password").contains("expires=20"));
    assert!(line_for(&stdout, "fresh-password").contains("min_rotation_interval_secs"));
    assert!(!stdout.contains(ESC) && !stderr.contains(ESC), "vault text is escaped:\n{stdout}");
    assert!(line_for(&stdout, "failed-password").contains("account=fail\\u{1b}]0;pwned"), "{stdout}");

    let (ok, stdout, stderr) = site.run("rotate", &["--dry-run", "--force", "fresh-password"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(line_for(&stdout, "fresh-password").contains("rotate (forced; due: no expiry)"), "{stdout}");

    let (ok, stdout, stderr) = site.run("rotate", &["--dry-run", "--all"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.starts_with("dry run: nothing is rotated"), "{stdout}");
    assert_eq!(stdout.lines().skip(1).filter(|l| l.contains(": ")).count(), 7, "managed secrets only:\n{stdout}");
    assert!(!stdout.contains("plain:"), "{stdout}");

    let (ok, stdout, stderr) = site.run("rotate", &["--dry-run", "--resume"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(line_for(&stdout, "resume-password").contains("resume (unfinished journal"), "{stdout}");
    assert_eq!(stdout.lines().skip(1).filter(|l| l.contains(": ")).count(), 1, "{stdout}");

    let after = site.state().await;
    assert_eq!(before, after, "a dry run wrote to the vault or the target");
    assert!(!after.0.contains_key(kv_rotator::lease::LEASE_SECRET), "no engine lease was claimed");
    site.dev.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_managed_secrets_failures_and_journals_read_only() {
    let site = Site::new().await;
    let before = site.state().await;

    let (ok, stdout, stderr) = site.run("status", &["--json"]);
    assert!(ok, "{stdout}\n{stderr}");
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let secret = |name: &str| {
        rows.iter()
            .find(|r| r["kind"] == "secret" && r["secret"] == name)
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
    };
    let secrets: Vec<&str> =
        rows.iter().filter(|r| r["kind"] == "secret").map(|r| r["secret"].as_str().unwrap()).collect();
    assert_eq!(secrets.len(), 7, "managed secrets only: {secrets:?}");
    assert!(!secrets.contains(&"plain"));
    let alpha = secret("alpha-password");
    assert_eq!((alpha["profile"].as_str(), alpha["account"].as_str()), (Some("site"), Some("alpha")));
    assert_eq!(alpha["nextDue"], "now (no expiry)");
    assert!(alpha["lastFailure"].is_null());
    assert!(alpha["age"].as_str().unwrap().ends_with('s') || alpha["age"].as_str().unwrap().ends_with('m'));
    let later = secret("later-password");
    assert!(later["expires"].as_str().unwrap().starts_with("20"), "{later}");
    let due = OffsetDateTime::parse(later["nextDue"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
        .expect("an RFC 3339 due time");
    assert!(due > OffsetDateTime::now_utc() + time::Duration::days(150), "{later}");
    assert!(later["window"].as_str().unwrap().starts_with("daily ") && alpha["window"] == "-", "{later}");
    let opens =
        OffsetDateTime::parse(later["nextWindow"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .expect("an RFC 3339 opening");
    let until = opens - OffsetDateTime::now_utc();
    assert!(until > time::Duration::minutes(100) && until <= time::Duration::hours(2), "{later}");
    let failed = secret("failed-password");
    let failure = failed["lastFailure"].as_str().unwrap();
    assert!(failure.starts_with("2026-01-01T00:00:00Z attempts=5") && !failure.contains(ESC), "{failure:?}");
    assert!(!failed["account"].as_str().unwrap().contains(ESC));
    let journals: Vec<_> = rows.iter().filter(|r| r["kind"] == "journal").collect();
    assert_eq!(journals.len(), 1, "{stdout}");
    assert_eq!(journals[0]["secret"], "resume-password");
    assert_eq!(journals[0]["step"], "pending");
    assert_eq!(journals[0]["resumable"], true);
    assert!(journals[0]["journal"].as_str().unwrap().starts_with("kv-rotator-pending-"));

    let (ok, table, stderr) = site.run("status", &[]);
    assert!(ok, "{table}\n{stderr}");
    assert!(table.starts_with("SECRET") && table.contains("LAST FAILURE") && table.contains("JOURNAL"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("later-password") && l.contains("UTC)")), "the window:\n{table}");
    assert!(table.lines().any(|l| l.starts_with("failed-password") && l.contains("attempts=5")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("kv-rotator-pending-") && l.contains("resume-password")), "{table}");
    assert!(!table.contains(ESC) && !stdout.contains(ESC) && !stderr.contains(ESC), "{table}");

    let after = site.state().await;
    assert_eq!(before, after, "status wrote to the vault or the target");
    assert!(!after.0.contains_key(kv_rotator::lease::LEASE_SECRET));
    site.dev.vault.shutdown().await;
}
