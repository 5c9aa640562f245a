//! The `[engine]`, `[sweeper]` and `[alerts]` keys of the configuration file: defaults,
//! values read, and bad values refused with the key's name.

use std::path::PathBuf;

fn write(dir: &tempfile::TempDir, body: &str) -> PathBuf {
    let path = dir.path().join("kv-rotator.toml");
    std::fs::write(&path, format!("[vault]\nurl = \"https://v.vault.azure.net/\"\n{body}")).unwrap();
    path
}

#[test]
fn defaults_are_a_daily_window_of_30_days_and_no_alert_sink() {
    let dir = tempfile::tempdir().unwrap();
    let config = kv_rotator_config::load(Some(&write(&dir, ""))).unwrap();
    assert!(config.sweeper.enabled);
    assert_eq!((config.sweeper.interval_secs, config.sweeper.window_days), (3600, 30));
    assert_eq!(config.alerts.webhook_url, None);
    assert_eq!(config.alerts.timeout_ms, 5000);
    assert!(config.engine.target_concurrency.is_empty());
}

#[test]
fn keys_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[engine]\ntarget_concurrency = { site = 2 }\n[sweeper]\nenabled = false\ninterval_secs = 60\nwindow_days = 7\n\
         [alerts]\nwebhook_url = \"https://alerts.example/hook\"\ntimeout_ms = 900\n\
         [targets.site]\nkind = \"htpasswd\"\npath = \"/tmp/x\"\n",
    );
    let config = kv_rotator_config::load(Some(&path)).unwrap();
    assert_eq!(config.engine.target_concurrency.get("site"), Some(&2));
    assert!(!config.sweeper.enabled);
    assert_eq!((config.sweeper.interval_secs, config.sweeper.window_days), (60, 7));
    assert_eq!(config.alerts.webhook_url.as_deref(), Some("https://alerts.example/hook"));
    assert_eq!(config.alerts.timeout_ms, 900);
}

#[test]
fn bad_values_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[engine]\ntarget_concurrency = { nowhere = 0 }\n[sweeper]\ninterval_secs = 0\n\
         [alerts]\nwebhook_url = \"ftp://alerts.example/\"\ntimeout_ms = 0\n",
    );
    let err = kv_rotator_config::load(Some(&path)).unwrap_err().to_string();
    for key in [
        "engine.target_concurrency.nowhere must be at least 1",
        "engine.target_concurrency.nowhere: no [targets.nowhere] profile",
        "sweeper.interval_secs",
        "alerts.webhook_url \"ftp://alerts.example/\"",
        "alerts.timeout_ms",
    ] {
        assert!(err.contains(key), "{key:?} not in: {err}");
    }
    let path = write(&dir, "[sweeper]\nwindow = 3\n");
    let err = kv_rotator_config::load(Some(&path)).unwrap_err().to_string();
    assert!(err.contains("window"), "{err}");
}
