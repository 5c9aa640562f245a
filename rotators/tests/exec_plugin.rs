//! The exec (plugin) rotator against real programs: the example plugins pass the
//! conformance checks, and misbehaving ones (a hang, a crash, garbage, a huge reply, no
//! reply, an echoed password) each get a clear error without a password in it.

#![cfg(feature = "exec")]

mod common;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use common::{every_login_request, four_passwords};
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::exec::{ExecConfig, ExecRotator};
use kv_rotator_rotators::testkit::{run_conformance, run_multi_password_conformance, ConformanceFixture};
use kv_rotator_rotators::{Credential, PasswordPolicy, Rotator, RotatorError, VerifyRequest, VerifyResponse};
use secrecy::{ExposeSecret, SecretString};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins").canonicalize().unwrap()
}

fn sha256_hex(password: &SecretString) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, password.expose_secret().as_bytes()))
}

/// The toy target: a file of `user hash…` lines, as the example plugins keep it.
struct ToyFile {
    path: PathBuf,
    next: usize,
    admin: SecretString,
}

impl ToyFile {
    fn new(dir: &Path) -> Self {
        let admin = PasswordPolicy::default().generate();
        let path = dir.join("toy.txt");
        std::fs::write(&path, format!("root {}\n", sha256_hex(&admin))).unwrap();
        ToyFile { path, next: 0, admin }
    }

    fn rotator(&self, command: PathBuf, strategy: Strategy) -> ExecRotator {
        let mut cfg = ExecConfig::new(command);
        cfg.settings.insert("path".into(), self.path.to_str().unwrap().into());
        ExecRotator::new(cfg, PasswordPolicy::default(), strategy)
    }
}

#[async_trait]
impl ConformanceFixture for ToyFile {
    async fn create_user(&mut self, password: &SecretString) -> Result<String, String> {
        self.next += 1;
        let user = format!("user{}", self.next);
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path).map_err(|e| e.to_string())?;
        writeln!(f, "{user} {}", sha256_hex(password)).map_err(|e| e.to_string())?;
        Ok(user)
    }

    fn admin(&self) -> Option<Credential> {
        Some(Credential::new("root", self.admin.clone()))
    }
}

async fn conformance(plugin: &str) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut toy = ToyFile::new(dir.path());
    let rotator = toy.rotator(examples().join(plugin), Strategy::SingleUser);
    let report = run_conformance(&rotator, &mut toy).await.unwrap();
    assert!(report.skipped.is_empty(), "{report}");
    let rotator = toy.rotator(examples().join(plugin), Strategy::MultiPassword);
    run_multi_password_conformance(&rotator, &mut toy).await.unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|f| f == "toy.txt" || f == "toy.txt.lock"), "files left behind: {left:?}");
}

#[tokio::test]
async fn the_python_example_passes_conformance() {
    conformance("toy_file.py").await;
}

#[tokio::test]
async fn the_sh_example_passes_conformance() {
    conformance("toy_file.sh").await;
}

/// A plugin that describes itself properly, then runs `body` (POSIX sh; the request is
/// in `$req`, the test's tempdir in `$dir`).
fn plugin(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    let script = format!(
        "#!/bin/sh\nreq=$(cat)\ndir='{}'\ncase \"$req\" in *'\"operation\":\"describe\"'*)\n  \
         echo '{{\"protocol\":1,\"outcome\":\"described\",\"strategies\":[\"single-user\"]}}'; exit 0;;\nesac\n{body}\n",
        dir.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn rotator(command: PathBuf, timeout_secs: u64) -> ExecRotator {
    let mut cfg = ExecConfig::new(command);
    cfg.timeout_secs = timeout_secs;
    cfg.max_reply_bytes = 4096;
    cfg.max_stderr_bytes = 256;
    ExecRotator::new(cfg, PasswordPolicy::default(), Strategy::SingleUser)
}

/// The error of a `set` and of a `verify` through `body`, checked free of passwords.
async fn both_errors(dir: &Path, name: &str, body: &str, timeout_secs: u64) -> (RotatorError, RotatorError) {
    let r = rotator(plugin(dir, name, body), timeout_secs);
    let passwords = four_passwords();
    let all: Vec<String> = passwords.iter().map(|p| p.expose_secret().to_owned()).collect();
    let req = every_login_request(&passwords);
    let set = r.set_password(req).await.expect_err("set must fail");
    let verify =
        r.verify(VerifyRequest::new("app", SecretString::from(all[0].clone()))).await.expect_err("verify must fail");
    for e in [&set, &verify] {
        let text = format!("{e} {e:?}");
        // Not even a part: 8 characters of a password are as good as a leak.
        for p in &all {
            for start in 0..p.len().saturating_sub(7) {
                assert!(!text.contains(&p[start..start + 8]), "8 characters of a password in {text}");
            }
        }
    }
    // A set that went wrong may have changed the password: the engine keeps it.
    assert!(matches!(set, RotatorError::NotYetVisible(_)), "{set:?}");
    // A verify that timed out may succeed later (a slow target); one that misbehaved
    // otherwise is the plugin's own fault.
    if verify.to_string().contains("no reply within") {
        assert!(matches!(verify, RotatorError::Transient(_)), "{verify:?}");
    } else {
        assert!(matches!(verify, RotatorError::Permanent(_)), "{verify:?}");
    }
    (set, verify)
}

fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for init to reap it is dead too.
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn a_hang_kills_the_whole_process_group() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let body = "sleep 300 &\necho $! > \"$dir/grandchild.$$\"\nsleep 300";
    let started = std::time::Instant::now();
    let (set, verify) = both_errors(dir.path(), "hang.sh", body, 1).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "{:?}", started.elapsed());
    for e in [set, verify] {
        assert!(e.to_string().contains("no reply within 1 s: process group killed"), "{e}");
    }
    let pids: Vec<u32> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("grandchild."))
        .map(|e| std::fs::read_to_string(e.path()).unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    for _ in 0..50 {
        if pids.iter().all(|&p| gone(p)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(pids.iter().all(|&p| gone(p)), "a grandchild outlived the timeout: {pids:?}");
}

#[tokio::test]
async fn a_cancelled_call_kills_the_process_group_too() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let body = "sleep 300 &\necho $! > \"$dir/grandchild\"\nsleep 300";
    let r = rotator(plugin(dir.path(), "hang.sh", body), 60);
    let password = PasswordPolicy::default().generate();
    let call = r.verify(VerifyRequest::new("app", password));
    // The engine drops a call it no longer waits for (shutdown, its own timeout).
    assert!(tokio::time::timeout(std::time::Duration::from_secs(2), call).await.is_err());
    let pid: u32 = std::fs::read_to_string(dir.path().join("grandchild")).unwrap().trim().parse().unwrap();
    for _ in 0..50 {
        if gone(pid) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the grandchild {pid} outlived its cancelled call");
}

#[tokio::test]
async fn a_crash_says_how_with_its_stderr_scrubbed() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // The whole request, passwords and all, to stderr; then a crash.
    let (set, verify) = both_errors(dir.path(), "crash.sh", "printf '%s\\n' \"$req\" >&2\nexit 3", 5).await;
    for e in [set, verify] {
        let text = e.to_string();
        assert!(text.contains("no reply (exit status 3)"), "{text}");
        assert!(text.contains("stderr: {\"protocol\":1"), "{text}");
        assert!(text.contains("[REDACTED]"), "{text}");
    }
}

#[tokio::test]
async fn garbage_is_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (set, _) = both_errors(dir.path(), "garbage.sh", "echo 'hello, world'", 5).await;
    assert!(set.to_string().contains("the reply is not the protocol's JSON"), "{set}");
    assert!(set.to_string().contains("\"hello, world\""), "{set}");
    let (set, _) = both_errors(dir.path(), "v2.sh", "echo '{\"protocol\":2,\"outcome\":\"accepted\"}'", 5).await;
    assert!(set.to_string().contains("reply protocol \"2\", expected 1"), "{set}");
}

#[tokio::test]
async fn a_huge_reply_is_cut_off() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let body = "head -c 10000000 /dev/zero | tr '\\0' a\nsleep 300";
    let (set, _) = both_errors(dir.path(), "huge.sh", body, 20).await;
    assert!(set.to_string().contains("reply larger than max_reply_bytes = 4096"), "{set}");
}

#[tokio::test]
async fn exit_0_without_a_reply_is_an_error() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (set, _) = both_errors(dir.path(), "silent.sh", "exit 0", 5).await;
    assert!(set.to_string().contains("no reply (exit 0)"), "{set}");
}

#[tokio::test]
async fn a_reply_echoing_a_password_is_refused_and_scrubbed() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // Quotes whatever follows "pending" or "password" (the request's first secret).
    let body = r#"pw=$(printf '%s' "$req" | sed -n 's/.*"\(pending\|password\)":"\([^"]*\)".*/\2/p')
printf '{"protocol":1,"outcome":"error","error":{"class":"permanent","message":"bad %s"}}\n' "$pw""#;
    let (set, verify) = both_errors(dir.path(), "echo.sh", body, 5).await;
    for e in [set, verify] {
        let text = e.to_string();
        assert!(text.contains("contains a password of the request (scrubbed here), refused"), "{text}");
        assert!(text.contains("bad [REDACTED]"), "{text}");
    }
}

#[tokio::test]
async fn error_classes_map_to_the_trait() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for (class, check) in [
        ("transient", (|e: &RotatorError| matches!(e, RotatorError::Transient(_))) as fn(&RotatorError) -> bool),
        ("not-yet-visible", |e| matches!(e, RotatorError::NotYetVisible(_))),
        ("refused", |e| matches!(e, RotatorError::Refused(_))),
        ("permanent", |e| matches!(e, RotatorError::Permanent(_))),
    ] {
        let body = format!(
            "echo '{{\"protocol\":1,\"outcome\":\"error\",\"error\":{{\"class\":\"{class}\",\"message\":\"nope\"}}}}'"
        );
        let r = rotator(plugin(dir.path(), &format!("{class}.sh"), &body), 5);
        let e = r.set_password(every_login_request(&four_passwords())).await.unwrap_err();
        assert!(check(&e) && e.to_string().contains("nope"), "{class}: {e:?}");
    }
}

#[tokio::test]
async fn a_strategy_the_plugin_does_not_declare_is_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cfg = ExecConfig::new(plugin(dir.path(), "single.sh", "exit 1"));
    cfg.timeout_secs = 5;
    let r = ExecRotator::new(cfg, PasswordPolicy::default(), Strategy::MultiPassword);
    let e = r.set_password(every_login_request(&four_passwords())).await.unwrap_err();
    assert!(
        matches!(&e, RotatorError::Permanent(m) if m.contains("does not offer strategy \"multi-password\"")),
        "{e}"
    );

    let r = rotator(dir.path().join("missing.sh"), 5);
    let e = r.set_password(every_login_request(&four_passwords())).await.unwrap_err();
    assert!(
        matches!(&e, RotatorError::Transient(m) if m.contains("cannot read the command file: No such file")),
        "{e}"
    );
}

#[tokio::test]
async fn secrets_are_never_in_argv_or_the_environment() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let body = r#"env > "$dir/env.$$"
tr '\0' ' ' < /proc/$$/cmdline > "$dir/cmdline.$$"
sleep 0.2 &
tr '\0' ' ' < /proc/$!/cmdline >> "$dir/cmdline.$$"
echo '{"protocol":1,"outcome":"accepted"}'"#;
    let mut cfg = ExecConfig::new(plugin(dir.path(), "env.sh", body));
    cfg.args = vec!["--flag".into()];
    cfg.env = vec!["HOME".into()];
    let r = ExecRotator::new(cfg, PasswordPolicy::default(), Strategy::SingleUser);
    let password = PasswordPolicy::default().generate();
    let got = r.verify(VerifyRequest::new("app", password.clone())).await.unwrap();
    assert_eq!(got, VerifyResponse::Accepted);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let file = entry.file_name().to_string_lossy().into_owned();
        assert!(!text.contains(password.expose_secret()), "{file} holds the password");
        if file.starts_with("env.") && !file.ends_with(".sh") {
            names.extend(text.lines().map(|l| l.split('=').next().unwrap().to_owned()));
        }
        if file.starts_with("cmdline.") {
            assert!(text.contains("env.sh --flag"), "{text}");
        }
    }
    names.sort();
    // PWD is the shell's own; the rest is what the rotator passed.
    let expected = if std::env::var_os("HOME").is_some() {
        vec!["HOME", "LANG", "PATH", "PWD"]
    } else {
        vec!["LANG", "PATH", "PWD"]
    };
    assert_eq!(names, expected);
}

#[tokio::test]
async fn a_policy_outside_the_plugins_constraints_is_refused_before_any_password() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("short.sh");
    let describe = r#"{"protocol":1,"outcome":"described","strategies":["single-user"],"password":{"max_length":16}}"#;
    std::fs::write(&path, format!("#!/bin/sh\ncat >/dev/null\necho '{describe}'\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = rotator(path, 5);
    let e = r.verify(VerifyRequest::new("app", SecretString::from("x".to_owned()))).await;
    let e = e.unwrap_err();
    assert!(
        matches!(&e, RotatorError::Permanent(m) if m.contains("password.length = 32 is above the plugin's max_length 16")),
        "{e}"
    );
}

/// A password the stderr cap cuts in half is not scrubbed (it is no longer whole), so it
/// must fall outside what is kept: no 8 characters of any password survive, however the
/// redactions before it shift the text.
#[tokio::test]
async fn stderr_cut_mid_password_keeps_no_part_of_it() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let body = r#"pw=$(printf '%s' "$req" | sed -n 's/.*"\(pending\|password\)":"\([^"]*\)".*/\2/p')
i=0; while [ $i -lt 40 ]; do printf '%s ' "$pw" >&2; i=$((i+1)); done
exit 3"#;
    // `both_errors` checks that no 8 characters of a password are in either error.
    let (set, verify) = both_errors(dir.path(), "stderr.sh", body, 5).await;
    for e in [set, verify] {
        let text = format!("{e} {e:?}");
        assert!(text.contains("[REDACTED]") && text.contains("truncated"), "the cap applied: {text}");
    }
}

/// Encoders escape more than serde does: a password echoed with a `\uXXXX` escape in
/// the reply is still seen, and the reply refused.
#[tokio::test]
async fn a_reply_echoing_a_password_in_another_escaping_is_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let body = r#"pw=$(printf '%s' "$req" | sed -n 's/.*"\(pending\|password\)":"\([^"]*\)".*/\2/p')
first=$(printf '%s' "$pw" | cut -c1); rest=$(printf '%s' "$pw" | cut -c2-)
hex=$(printf '%s' "$first" | od -An -tx1 | tr -d ' \n')
printf '{"protocol":1,"outcome":"error","error":{"class":"permanent","message":"bad \\u00%s%s"}}\n' "$hex" "$rest""#;
    let (set, verify) = both_errors(dir.path(), "escaped.sh", body, 5).await;
    for e in [set, verify] {
        let text = e.to_string();
        assert!(text.contains("contains a password of the request (scrubbed here), refused"), "{text}");
    }
}

/// A plugin that declares `strategies` (JSON list) and accepts every verify it is asked.
fn describing(dir: &Path, name: &str, strategies: &str) -> PathBuf {
    let path = dir.join(name);
    let script = format!(
        "#!/bin/sh\nreq=$(cat)\ncase \"$req\" in *'\"operation\":\"describe\"'*)\n  \
         echo '{{\"protocol\":1,\"outcome\":\"described\",\"strategies\":{strategies}}}'; exit 0;;\nesac\n\
         echo '{{\"protocol\":1,\"outcome\":\"rejected\"}}'\n"
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn verify_request() -> VerifyRequest {
    VerifyRequest::new("app", PasswordPolicy::default().generate())
}

#[tokio::test]
async fn a_command_others_could_change_is_refused_before_it_runs() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ran = dir.path().join("ran");
    let body = format!("touch '{}'\necho '{{\"protocol\":1,\"outcome\":\"rejected\"}}'", ran.display());
    let path = plugin(dir.path(), "open.sh", &body);
    let r = rotator(path.clone(), 5);
    let refused = |e: RotatorError, what: &str| {
        // Transient: nothing ran, and an upgrade in progress may pass in a moment.
        assert!(matches!(e, RotatorError::Transient(_)) && e.to_string().contains(what), "{what}: {e}");
    };
    // Group-writable file.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o775)).unwrap();
    refused(r.verify(verify_request()).await.unwrap_err(), "writable by its group or by others (mode 775)");
    // Its directory writable by others: the file could be renamed over.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(r.verify(verify_request()).await.unwrap_err(), "mode 777");
    // Sticky, as /tmp, is not enough: others can add files beside it (an interpreter's
    // modules), and the directory's owner can replace it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    refused(r.verify(verify_request()).await.unwrap_err(), "mode 1777");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // A directory further up, through a symlink: the link's and the target's paths both count.
    let open = dir.path().join("open");
    let inner = open.join("inner");
    std::fs::create_dir_all(&inner).unwrap();
    let hidden = plugin(&inner, "hidden.sh", &body);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let link = dir.path().join("link.sh");
    std::os::unix::fs::symlink(&hidden, &link).unwrap();
    refused(rotator(link.clone(), 5).verify(verify_request()).await.unwrap_err(), "open is writable");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(!ran.exists(), "the program ran");
    assert_eq!(rotator(link, 5).verify(verify_request()).await.unwrap(), VerifyResponse::Rejected);
    assert_eq!(r.verify(verify_request()).await.unwrap(), VerifyResponse::Rejected);
    assert!(ran.exists());
    // Not a file at all.
    refused(rotator(dir.path().to_owned(), 5).verify(verify_request()).await.unwrap_err(), "not a regular file");
    // Under /tmp, as most temporary directories are: refused.
    let tmp = tempfile::tempdir().unwrap();
    let under_tmp = plugin(tmp.path(), "tmp.sh", &body);
    refused(rotator(under_tmp, 5).verify(verify_request()).await.unwrap_err(), "mode 1777");
}

#[tokio::test]
async fn a_set_that_cannot_start_at_once_gives_up_without_running() {
    // The engine checked its lease just before `set`: a change started long after could
    // come after another engine took over. A set waiting for a busy plugin gives up.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = dir.path().join("log");
    let body = format!(
        "case \"$req\" in *'\"operation\":\"verify\"'*) sleep 6;; *) echo set >> '{}';; esac\n\
         echo '{{\"protocol\":1,\"outcome\":\"rejected\"}}'",
        log.display()
    );
    let mut cfg = ExecConfig::new(plugin(dir.path(), "busy.sh", &body));
    cfg.max_concurrent = 1;
    let r = ExecRotator::new(cfg, PasswordPolicy::default(), Strategy::SingleUser);
    let slow = r.verify(verify_request());
    let set = async {
        // Let the verify take the only run first.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        r.set_password(every_login_request(&four_passwords())).await
    };
    let (_, set) = tokio::join!(slow, set);
    let e = set.unwrap_err();
    assert!(matches!(&e, RotatorError::Transient(m) if m.contains("busy; nothing was run")), "{e}");
    assert!(!log.exists(), "the set ran after all");
}

/// A plugin that appends to `log` each time it describes itself.
fn counting(dir: &Path, name: &str, log: &Path) -> PathBuf {
    let body = "echo '{\"protocol\":1,\"outcome\":\"rejected\"}'";
    let path = dir.join(name);
    let script = format!(
        "#!/bin/sh\nreq=$(cat)\ncase \"$req\" in *'\"operation\":\"describe\"'*)\n  echo d >> '{}'\n  \
         echo '{{\"protocol\":1,\"outcome\":\"described\",\"strategies\":[\"single-user\"]}}'; exit 0;;\nesac\n{body}\n",
        log.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn a_description_is_kept_until_the_file_changes() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = dir.path().join("described");
    let path = counting(dir.path(), "plugin.sh", &log);
    let r = rotator(path.clone(), 5);
    let described = || std::fs::read_to_string(&log).unwrap_or_default().lines().count();
    for _ in 0..3 {
        r.verify(verify_request()).await.unwrap();
    }
    assert_eq!(described(), 1, "asked once for three runs");
    // Edited in place (same inode): asked again.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("# edited\n");
    std::fs::write(&path, text).unwrap();
    r.verify(verify_request()).await.unwrap();
    assert_eq!(described(), 2);
    r.verify(verify_request()).await.unwrap();
    assert_eq!(described(), 2);
}

#[tokio::test]
async fn a_replaced_plugin_is_described_again() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = describing(dir.path(), "plugin.sh", r#"["single-user"]"#);
    let r = ExecRotator::new(ExecConfig::new(path.clone()), PasswordPolicy::default(), Strategy::MultiPassword);
    let e = r.verify(verify_request()).await.unwrap_err();
    assert!(e.to_string().contains("does not offer strategy \"multi-password\""), "{e}");
    // An upgrade that adds the strategy is seen without restarting the worker.
    let new = describing(dir.path(), "plugin.new", r#"["single-user","multi-password"]"#);
    std::fs::rename(new, &path).unwrap();
    assert_eq!(r.verify(verify_request()).await.unwrap(), VerifyResponse::Rejected);
    assert_eq!(r.describe().await.unwrap().strategies, [Strategy::SingleUser, Strategy::MultiPassword]);
}

#[tokio::test]
async fn max_concurrent_runs_are_never_exceeded() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = dir.path().join("log");
    // Each verify notes its start and end, apart by a pause.
    let body = format!(
        "echo start >> '{0}'\nsleep 0.3\necho end >> '{0}'\necho '{{\"protocol\":1,\"outcome\":\"rejected\"}}'",
        log.display()
    );
    let mut cfg = ExecConfig::new(plugin(dir.path(), "slow.sh", &body));
    cfg.max_concurrent = 1;
    let r = ExecRotator::new(cfg, PasswordPolicy::default(), Strategy::SingleUser);
    let (a, b, c) = tokio::join!(r.verify(verify_request()), r.verify(verify_request()), r.verify(verify_request()));
    for result in [a, b, c] {
        assert_eq!(result.unwrap(), VerifyResponse::Rejected);
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines, "start\nend\n".repeat(3), "runs overlapped: {lines}");
}
