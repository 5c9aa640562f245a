//! `kv-rotator plugin test`: a plugin author's one command. The example plugins pass it
//! with their fixture, under both strategies they declare; a plugin that lies (accepts any
//! password) fails it, naming the check; a profile that is not there is named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins").canonicalize().unwrap()
}

/// A configuration with one exec profile per (plugin, strategy), each on its own toy file.
fn config(dir: &Path, profiles: &[(&str, &Path, &str)]) -> PathBuf {
    let mut text = "[vault]\nurl = \"https://unused.vault.azure.net/\"\n".to_owned();
    for (name, command, strategy) in profiles {
        let file = dir.join(format!("{name}.txt"));
        std::fs::write(&file, "").unwrap();
        text += &format!(
            "[targets.{name}]\nkind = \"exec\"\ncommand = \"{}\"\nstrategy = \"{strategy}\"\naccounts = [\"*\"]\n\
             settings = {{ path = \"{}\" }}\n",
            command.display(),
            file.display()
        );
    }
    let path = dir.join("kv-rotator.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn plugin_test(config: &Path, profile: &str) -> Output {
    Command::new(BIN)
        .args(["plugin", "test", "--config"])
        .arg(config)
        .arg("--fixture")
        .arg(examples().join("toy_file_fixture.py"))
        .arg(profile)
        .env_remove("KV_ROTATOR_CONFIG")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn the_example_plugins_pass_under_each_strategy_they_declare() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (py, sh) = (examples().join("toy_file.py"), examples().join("toy_file.sh"));
    let config = config(
        dir.path(),
        &[
            ("py", &py, "single-user"),
            ("py-multi", &py, "multi-password"),
            ("sh", &sh, "single-user"),
            ("sh-multi", &sh, "multi-password"),
        ],
    );
    for profile in ["py", "py-multi", "sh", "sh-multi"] {
        let output = plugin_test(&config, profile);
        let out = text(&output);
        assert!(output.status.success(), "{profile}: {out}");
        assert!(out.contains(&format!("testing targets.{profile} (kind \"exec\"")), "{out}");
        assert!(out.contains("ok       no password in any Debug/Display text"), "{out}");
        let single = out.contains("ok       set_password of a new pending password with the current password");
        assert_eq!(single, !profile.ends_with("-multi"), "the strategy's own checks ran: {out}");
        assert!(out.contains("passed: ") && !out.contains("FAILED"), "{out}");
    }
    // The admin check ran: the fixture's admin login is in the toy file.
    let single = std::fs::read_to_string(dir.path().join("py.txt")).unwrap();
    assert!(single.lines().any(|l| l.starts_with("root ")), "{single}");
}

#[test]
fn a_plugin_that_accepts_any_password_fails_naming_the_check() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // Answers every verify with "accepted" and passes the rest to the real example.
    let liar = dir.path().join("liar.py");
    std::fs::write(
        &liar,
        format!(
            "#!/usr/bin/env python3\nimport json, subprocess, sys\nraw = sys.stdin.read()\n\
             if json.loads(raw)['operation'] == 'verify':\n    print(json.dumps({{'protocol': 1, 'outcome': 'accepted'}}))\n\
             else:\n    sys.exit(subprocess.run(['{}'], input=raw, text=True).returncode)\n",
            examples().join("toy_file.py").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&liar, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = config(dir.path(), &[("liar", &liar, "single-user")]);
    let output = plugin_test(&config, "liar");
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains("FAILED   verify(") && out.contains("a wrong password): expected Rejected, got Accepted"),
        "{out}"
    );
    assert!(out.contains("targets.liar failed the conformance checks"), "{out}");
}

#[test]
fn an_unknown_profile_is_named_with_the_ones_there_are() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = config(dir.path(), &[("py", &examples().join("toy_file.py"), "single-user")]);
    let output = plugin_test(&config, "pyy");
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("no [targets.pyy] profile; the configuration has: py"), "{out}");
}

/// Runs `plugin test` on profile `py` (toy_file.py, accounts `user-*`, admin `root`) with a
/// fixture of sh `body` that answers `admin` properly first.
fn with_fixture(body: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = config(dir.path(), &[("py", &examples().join("toy_file.py"), "single-user")]);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "accounts = [\"*\"]",
        "accounts = [\"user-*\", \"root\"]\nadmin = { username = \"root\", secret = \"toy-admin\" }",
    );
    std::fs::write(&config, text).unwrap();
    let fixture = dir.path().join("fixture.sh");
    std::fs::write(
        &fixture,
        format!(
            "#!/bin/sh\nreq=$(cat)\ncase \"$req\" in *'\"op\":\"admin\"'*) echo '{{\"admin\":null}}'; exit 0;; esac\n{body}\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fixture, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let output = Command::new(BIN)
        .args(["plugin", "test", "--config"])
        .arg(&config)
        .arg("--fixture")
        .arg(&fixture)
        .args(extra)
        .arg("py")
        .env_remove("KV_ROTATOR_CONFIG")
        .output()
        .unwrap();
    // Nothing was added to the toy file: every user below is refused before any change.
    let toy = std::fs::read_to_string(dir.path().join("py.txt")).unwrap();
    assert_eq!(toy, "", "the target was changed");
    output
}

#[test]
fn a_fixture_user_the_profile_may_not_rotate_is_refused_before_any_change() {
    for (name, why) in [("app", "not in targets.py.accounts"), ("root", "is the admin login of targets.py")] {
        let output = with_fixture(&format!("echo '{{\"username\":\"{name}\"}}'"), &[]);
        let out = text(&output);
        assert_eq!(output.status.code(), Some(1), "{out}");
        assert!(out.contains("the fixture's new user is refused before any change") && out.contains(why), "{out}");
    }
}

#[test]
fn a_broken_fixture_gets_a_clear_error_and_keeps_its_secrets() {
    // The password it was given, echoed to stderr, then a crash.
    let output = with_fixture("printf '%s\\n' \"$req\" >&2\nexit 4", &[]);
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("op create-user, stderr: {\"fixture\":1") && out.contains("[REDACTED]"), "{out}");
    assert!(out.contains("exit status: 4"), "{out}");
    // A reply that is not JSON is described, not quoted.
    let output = with_fixture("printf 'user: %s\\n' \"$req\"", &[]);
    let out = text(&output);
    assert!(out.contains("its reply is not the expected JSON") && !out.contains("user: {"), "{out}");
    // A hang: killed at the timeout, with what it left behind.
    let output = with_fixture("sleep 300", &["--fixture-timeout-secs", "1"]);
    let out = text(&output);
    assert!(out.contains("no answer within 1s; process group killed"), "{out}");
}
