//! `kv-rotator rotate` run as an operator runs it: a config file, named secrets, `--all`,
//! `--tag` and `--resume`; one line per secret and a summary table (`--output text`), JSON
//! lines when piped, a progress bar on a terminal; a non-zero exit when any failed, and no
//! password in the output.

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::devsite::DevSite;
use common::{line_for, secret_lines, summary_of};
use kv_rotator_keyvault::NewSecretVersion;
use kv_rotator_rotators::htpasswd;
use kv_rotator_rotators::PasswordPolicy;
use secrecy::{ExposeSecret, SecretString};

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");

struct Site {
    dev: DevSite,
    config: std::path::PathBuf,
}

impl std::ops::Deref for Site {
    type Target = DevSite;

    fn deref(&self) -> &DevSite {
        &self.dev
    }
}

impl Site {
    async fn new() -> Site {
        Site::with_min_interval(0).await
    }

    async fn with_min_interval(min_interval_secs: u64) -> Site {
        let dev = DevSite::start().await;
        let config = dev.dir.path().join("kv-rotator.toml");
        std::fs::write(
            &config,
            format!(
                "{}[engine]\ninitial_backoff_ms = 10\nmax_backoff_ms = 20\nmax_attempts = 2\nmin_rotation_interval_secs = {}\n{}",
                dev.vault_toml(),
                min_interval_secs,
                dev.htpasswd_target_toml()
            ),
        )
        .unwrap();
        Site { dev, config }
    }

    /// `rotate --output text ARGS`.
    fn rotate(&self, args: &[&str]) -> (bool, String, String) {
        self.rotate_as(&[&["--output", "text"], args].concat())
    }

    /// `rotate ARGS`, its stdout a pipe.
    fn rotate_as(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN).arg("rotate").arg("--config").arg(&self.config).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_secrets_rotate_and_a_missing_one_fails_the_exit_code() {
    let site = Site::new().await;
    let (a1, a_pw) = site.user("alpha-password", "alpha").await;
    let (b1, _) = site.user("beta-password", "beta").await;

    let (ok, stdout, stderr) = site.rotate(&["alpha-password", "beta-password", "no-such-secret"]);
    assert!(!ok, "a missing secret must fail the run:\n{stdout}\n{stderr}");
    assert_eq!(secret_lines(&stdout).len(), 3, "{stdout}");
    let expected = [("failed", 1), ("rotated", 2), ("total", 3)].map(|(k, v)| (k.to_owned(), v));
    assert_eq!(summary_of(&stdout), BTreeMap::from(expected), "{stdout}");
    assert!(stderr.contains("1 of 3 rotation(s) failed"), "{stderr}");
    assert!(line_for(&stdout, "alpha-password").contains(&format!("rotated {a1} -> ")), "{stdout}");
    assert!(line_for(&stdout, "beta-password").contains(&format!("rotated {b1} -> ")), "{stdout}");
    assert!(line_for(&stdout, "no-such-secret").contains("failed"), "{stdout}");
    let latest = site.store.get_latest("alpha-password").await.unwrap();
    assert!(site.logs_in("alpha", &latest.value).await);
    assert!(!site.logs_in("alpha", &a_pw).await);
    // One audit record per request on stderr (the log), with names and versions only.
    let audits: Vec<&str> = stderr.lines().filter(|l| l.contains("rotation audit record")).collect();
    // The missing secret never reached the engine: it failed at trigger time.
    assert_eq!(audits.len(), 2, "{stderr}");
    let alpha = audits.iter().find(|l| l.contains("\"secret\":\"alpha-password\"")).expect("alpha's audit record");
    for field in
        ["\"outcome\":\"rotated\"", &format!("\"oldVersion\":\"{a1}\""), "\"step\":\"finish\"", "manual by cli"]
    {
        assert!(alpha.contains(field), "{field} not in {alpha}");
    }
    for text in [&stdout, &stderr] {
        assert!(!text.contains(latest.value.expose_secret()) && !text.contains(a_pw.expose_secret()));
    }
    site.dev.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_rotates_every_managed_secret_and_nothing_else() {
    let site = Site::new().await;
    site.user("alpha-password", "alpha").await;
    site.user("beta-password", "beta").await;
    let plain = NewSecretVersion {
        value: SecretString::from("not managed".to_owned()),
        tags: BTreeMap::new(),
        content_type: None,
        expires: None,
        not_before: None,
    };
    site.store.set_secret("plain", plain).await.unwrap();

    let (ok, stdout, stderr) = site.rotate(&["--all"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(secret_lines(&stdout).len(), 2, "{stdout}");
    for (secret, user) in [("alpha-password", "alpha"), ("beta-password", "beta")] {
        assert!(line_for(&stdout, secret).contains("rotated"), "{stdout}");
        assert_eq!(site.store.list_versions(secret).await.unwrap().len(), 2);
        assert!(site.logs_in(user, &site.store.get_latest(secret).await.unwrap().value).await);
    }
    assert_eq!(site.store.list_versions("plain").await.unwrap().len(), 1);

    // Named, it is not rotated, and the exit code says so.
    let (ok, stdout, stderr) = site.rotate(&["plain"]);
    assert!(!ok, "a secret kv-rotator does not manage was not rotated:\n{stdout}\n{stderr}");
    assert!(line_for(&stdout, "plain").contains("not managed"), "{stdout}");
    assert_eq!(site.store.list_versions("plain").await.unwrap().len(), 1);
    site.dev.vault.shutdown().await;
}

/// A secret written minutes ago is not rotated again by hand (a storm of triggers, an
/// operator's double run) unless forced — the emergency path for a leaked password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_secret_is_rotated_by_hand_only_with_force() {
    let site = Site::with_min_interval(3600).await;
    // Its second version, written just now (a secret's first rotation is never capped).
    site.user("alpha-password", "alpha").await;
    let (v1, _) = site.user("alpha-password", "alpha").await;
    let (ok, stdout, stderr) = site.rotate(&["alpha-password"]);
    assert!(!ok, "refusing is not what the operator asked for: the exit code says so\n{stdout}\n{stderr}");
    let line = line_for(&stdout, "alpha-password");
    assert!(line.contains("min_rotation_interval_secs") && line.contains("--force"), "{line}");
    assert_eq!(site.store.list_versions("alpha-password").await.unwrap().len(), 2, "nothing written");

    let (ok, stdout, stderr) = site.rotate(&["--force", "alpha-password"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(line_for(&stdout, "alpha-password").contains(&format!("rotated {v1} -> ")), "{stdout}");
    assert!(stderr.contains("manual (forced) by cli"), "the audit record says it was forced:\n{stderr}");
    let latest = site.store.get_latest("alpha-password").await.unwrap();
    assert!(site.logs_in("alpha", &latest.value).await);
    site.dev.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_finishes_what_a_dead_process_left_and_then_has_nothing_to_do() {
    let site = Site::new().await;
    let (v1, _) = site.user("alpha-password", "alpha").await;
    // A dead worker's state after `set`: the journal holds the password the target uses.
    let pending = PasswordPolicy::default().generate();
    htpasswd::add_user(&site.htpasswd, "alpha", &pending, 4).unwrap();
    let id = kv_rotator::engine::journal::rotation_id(site.store.vault_name(), "alpha-password", &v1);
    let tags = BTreeMap::from([
        ("kv-rotator-journal-for".to_owned(), "alpha-password".to_owned()),
        ("rotation-id".to_owned(), id.clone()),
        ("kv-rotator-step".to_owned(), "target-set".to_owned()),
        ("rotated-from".to_owned(), v1.clone()),
    ]);
    let journal = NewSecretVersion {
        value: pending.clone(),
        tags,
        content_type: Some(kv_rotator::engine::journal::JOURNAL_CONTENT_TYPE.to_owned()),
        expires: None,
        not_before: None,
    };
    site.store.set_secret(&kv_rotator::engine::journal::journal_name(&id), journal).await.unwrap();

    let (ok, stdout, stderr) = site.rotate(&["--resume"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(line_for(&stdout, "alpha-password").contains(&format!("rotated {v1} -> ")), "{stdout}");
    let latest = site.store.get_latest("alpha-password").await.unwrap();
    assert!(latest.value.expose_secret() == pending.expose_secret(), "the latest holds the pending password");
    assert!(site.logs_in("alpha", &latest.value).await);

    let (ok, stdout, _) = site.rotate(&["--resume"]);
    assert!(ok);
    assert_eq!(stdout.trim(), "nothing to do");
    site.dev.vault.shutdown().await;
}

/// The secrets behind a compromised host, by tag, as a pipeline sees them: one JSON object
/// per secret as it ends, then a summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_rotates_only_the_secrets_carrying_it_and_json_lines_report_each() {
    let site = Site::new().await;
    let (a1, _) = site.tagged_user("alpha-password", "alpha", &[("host", "db1")]).await;
    let (b1, _) = site.tagged_user("beta-password", "beta", &[("host", "db1"), ("team", "x")]).await;
    site.tagged_user("gamma-password", "gamma", &[("host", "db2")]).await;
    site.user("delta-password", "delta").await;

    // Piped stdout: JSON lines without asking.
    let (ok, stdout, stderr) = site.rotate_as(&["--tag", "host=db1", "--concurrency", "1"]);
    assert!(ok, "{stdout}\n{stderr}");
    let lines: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let mut rotated = BTreeMap::new();
    for line in &lines[..2] {
        assert_eq!(
            (line["type"].as_str(), line["state"].as_str(), line["ok"].as_bool()),
            (Some("secret"), Some("rotated"), Some(true)),
            "{line}"
        );
        rotated.insert(line["secret"].as_str().unwrap().to_owned(), line.clone());
    }
    for (secret, user, old) in [("alpha-password", "alpha", &a1), ("beta-password", "beta", &b1)] {
        let latest = site.store.get_latest(secret).await.unwrap();
        assert_eq!(rotated[secret]["version"].as_str(), Some(old.as_str()));
        assert_eq!(rotated[secret]["newVersion"].as_str(), Some(latest.version.as_str()));
        assert!(site.logs_in(user, &latest.value).await);
        assert!(!stdout.contains(latest.value.expose_secret()));
    }
    assert_eq!(lines[2], serde_json::json!({"type": "summary", "total": 2, "failed": 0, "states": {"rotated": 2}}));
    for untouched in ["gamma-password", "delta-password"] {
        assert_eq!(site.store.list_versions(untouched).await.unwrap().len(), 1, "{untouched} has no other host's tag");
    }

    // Two tags: both must be carried.
    let (ok, stdout, stderr) = site.rotate(&["--tag", "host=db1", "--tag", "team=x", "--force"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(secret_lines(&stdout).len(), 1, "{stdout}");
    assert!(line_for(&stdout, "beta-password").contains("rotated"), "{stdout}");

    // No secret carries it: nothing to do, and that is not a failure.
    let (ok, stdout, _) = site.rotate(&["--tag", "host=db9"]);
    assert!(ok);
    assert_eq!(stdout.trim(), "nothing to do");

    for bad in [
        &["--tag", "host"][..],
        &["--tag", "=db1"],
        &["--tag", "host=db1", "--all"],
        &["--tag", "host=db1", "alpha-password"],
        &["--concurrency", "0", "--all"],
    ] {
        let (ok, _, stderr) = site.rotate(bad);
        assert!(!ok, "{bad:?} must be refused");
        assert!(stderr.contains("--tag") || stderr.contains("--concurrency"), "{bad:?}: {stderr}");
    }
    assert_eq!(site.store.list_versions("alpha-password").await.unwrap().len(), 2, "the refused runs rotated nothing");
    site.dev.vault.shutdown().await;
}

/// On a terminal: a progress bar while it runs, then the lines and the summary table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_gets_a_progress_bar_then_the_summary() {
    let site = Site::new().await;
    for i in 0..6 {
        site.user(&format!("user{i}-password"), &format!("user{i}")).await;
    }
    // `script` runs the command on a pseudo-terminal and copies what it shows.
    let command = format!("{BIN} rotate --config {} --all --concurrency 2", site.config.display());
    // Not scanned by the leak-ledger build, which tees a child's stdout through a pipe (no
    // terminal then): this test looks for the passwords in what the terminal showed itself.
    let out = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("KVR_LEAK_SCAN_DIR")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!((0..=6).any(|n| shown.contains(&format!(" {n}/6"))), "no progress bar counting the 6 secrets:\n{shown}");
    let text = shown.replace('\r', "");
    let summary = text.rsplit("outcome").next().unwrap_or_default();
    assert!(summary.contains("rotated") && summary.contains('6'), "no summary table:\n{shown}");
    for i in 0..6 {
        assert!(text.contains(&format!("user{i}-password: rotated")), "{shown}");
        let latest = site.store.get_latest(&format!("user{i}-password")).await.unwrap();
        assert!(!shown.contains(latest.value.expose_secret()), "a password on the terminal");
    }
    site.dev.vault.shutdown().await;
}

#[test]
fn no_secret_and_no_flag_is_a_usage_error() {
    let out = Command::new(BIN).args(["rotate", "--config", "/nonexistent.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"), "{}", String::from_utf8_lossy(&out.stderr));
}
