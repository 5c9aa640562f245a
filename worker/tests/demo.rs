//! The README's first command, `kv-rotator demo`, run as a user would: it must exit 0
//! and print the rotation report with its proofs, and no password.

use std::process::Command;

#[test]
fn demo_command_rotates_and_reports() {
    let output = Command::new(env!("CARGO_BIN_EXE_kv-rotator"))
        .arg("demo")
        .env_remove("RUST_LOG")
        .output()
        .expect("run kv-rotator demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    for line in ["new password logs in: yes", "old password rejected: yes", "latest version is"] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let versions = stdout.lines().find(|l| l.trim_start().starts_with("versions")).expect("versions line");
    let parts: Vec<&str> = versions.split_whitespace().collect();
    assert_eq!(parts.len(), 4, "versions OLD -> NEW: {versions}");
    assert_ne!(parts[1], parts[3], "a new version was written");
    assert!(parts[1].len() == 32 && parts[3].len() == 32, "{versions}");
    // Demo passwords come from the default policy (32 characters); bcrypt hashes start $2.
    assert!(!stdout.contains("$2"), "no hash or password material in the report");
}
