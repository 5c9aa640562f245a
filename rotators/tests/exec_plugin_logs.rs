//! A plugin's stderr reaches the log scrubbed of every password and capped. Alone in its
//! test binary: `tracing`'s per-callsite interest cache makes a scoped subscriber miss
//! events when other tests in the same process hit the same callsites concurrently.

#![cfg(feature = "exec")]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};

use common::{every_login_request, four_passwords};
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::exec::{ExecConfig, ExecRotator};
use kv_rotator_rotators::{PasswordPolicy, Rotator};
use secrecy::ExposeSecret;

/// Everything logged.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn stderr_is_logged_scrubbed_and_capped() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The request, passwords and all, then 100 kB more, to stderr; then a good reply.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("stderr.sh");
    let script = r#"#!/bin/sh
req=$(cat)
printf '%s\n' "$req" >&2
case "$req" in *'"operation":"describe"'*)
  echo '{"protocol":1,"outcome":"described","strategies":["single-user"]}'; exit 0;;
esac
head -c 100000 /dev/zero | tr '\0' x >&2
echo '{"protocol":1,"outcome":"already-set","verified":true}'
"#;
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = ExecConfig::new(path);
    cfg.max_stderr_bytes = 256;
    let r = ExecRotator::new(cfg, PasswordPolicy::default(), Strategy::SingleUser);

    let all = four_passwords();
    let req = every_login_request(&all);
    r.set_password(req).await.unwrap();

    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("(set) wrote to stderr") && logged.contains("[REDACTED]"), "{logged}");
    assert!(logged.contains("[…truncated]") && logged.len() < 2000, "{logged}");
    assert!(!all.iter().any(|s| logged.contains(s.expose_secret())), "a password in the log");
}
