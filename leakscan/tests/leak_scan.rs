//! The `leak-scan` binary as `scripts/test.sh` runs it: clean captures pass, a recorded
//! password planted in a captured log fails the scan (naming the file and the offset,
//! never the password), and a required stream that captured nothing fails it too.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_leak-scan");
const PASSWORD: &str = "q7Wd-3nR.xK9_vTz2LmB5sYc8HjP4aFe";

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn scan(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let Output { status, stdout, stderr } = Command::new(BIN)
        .arg("--ledger")
        .arg(dir.join("ledger"))
        .arg("--dir")
        .arg(dir.join("captured"))
        .args(extra)
        .output()
        .unwrap();
    (status.code(), format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr)))
}

#[test]
fn a_planted_password_fails_the_scan_and_is_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let captured = dir.path().join("captured");
    std::fs::create_dir(&captured).unwrap();
    let verifier = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$U3RvcmVkS2V5U3RvcmVkS2V5U3RvcmVkS2V5MTIzNDU=:U2VydmVyS2V5U2VydmVyS2V5U2VydmVyS2V5MTIzNDU=";
    let ledger = format!("generated {}\nderived {}\nhandled {}\n", hex(PASSWORD), hex(verifier), hex("short"));
    std::fs::write(dir.path().join("ledger"), ledger).unwrap();
    std::fs::write(captured.join("log.7"), "INFO kv_rotator::audit: rotation audit record outcome=rotated\n").unwrap();
    std::fs::write(captured.join("devvault.7"), r#"{"id":"x","tags":{"rotation-id":"abc"}}"#).unwrap();

    let (code, out) = scan(dir.path(), &["--require", "log,devvault"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("tracked 3 passwords and verifiers (1 derived, 1 generated, 1 handled; 1 shorter than 12"),
        "{out}"
    );
    assert!(out.contains("in 2 files") && out.contains(", 0 hits"), "{out}");
    assert!(out.contains("audit records in the logs: 1"), "{out}");
    assert!(out.contains("self-check: a recorded generated secret planted in a log line was found"), "{out}");

    let leaked = format!("ERROR login failed for app with password {PASSWORD}\n");
    std::fs::write(captured.join("stderr.8"), leaked).unwrap();
    let (code, out) = scan(dir.path(), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(", 1 hits"), "{out}");
    assert!(out.contains("LEAK stderr.8 at byte 41: a generated secret (ledger line 1) as is"), "{out}");
    assert!(!out.contains(PASSWORD), "the scanner printed the password: {out}");
}

#[test]
fn an_empty_required_stream_or_ledger_proves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("captured")).unwrap();
    std::fs::write(dir.path().join("ledger"), format!("generated {}\n", hex(PASSWORD))).unwrap();
    std::fs::write(dir.path().join("captured/log.1"), "INFO nothing to see\n").unwrap();
    let (code, out) = scan(dir.path(), &["--require", "log,metrics"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("nothing captured for: metrics, audit records in the logs"), "{out}");

    std::fs::write(dir.path().join("ledger"), "").unwrap();
    let (code, out) = scan(dir.path(), &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("no secret to search"), "{out}");
}
