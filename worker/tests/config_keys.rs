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
         [targets.site]\nkind = \"htpasswd\"\npath = \"/tmp/x\"\naccounts = [\"*\"]\n",
    );
    let config = kv_rotator_config::load(Some(&path)).unwrap();
    assert_eq!(config.engine.target_concurrency.get("site"), Some(&2));
    assert!(!config.sweeper.enabled);
    assert_eq!((config.sweeper.interval_secs, config.sweeper.window_days), (60, 7));
    assert_eq!(config.alerts.webhook_url, Some("https://alerts.example/hook".into()));
    assert_eq!(config.alerts.timeout_ms, 900);
}

/// Schedules that cannot work are refused, naming the keys: a lead shorter than the
/// sweep interval (a secret could expire between two sweeps), a minimum interval longer
/// than a version lives before it is due, a lead of the whole validity.
#[test]
fn schedules_that_cannot_work_are_refused_naming_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |body: &str, keys: &[&str]| {
        let err = kv_rotator_config::load(Some(&write(&dir, body))).unwrap_err().to_string();
        for key in keys {
            assert!(err.contains(key), "{key:?} not in: {err}");
        }
    };
    // 1-day validity, 50 %: a 12 h lead; sweeping every 13 h could miss it.
    refused(
        "[engine]\ndefault_validity_days = 1\nmin_rotation_interval_secs = 60\n[sweeper]\ninterval_secs = 46800\n",
        &["sweeper.interval_secs", "sweeper.window_days", "sweeper.lead_percent", "engine.default_validity_days"],
    );
    // A version of 7 days is due after 3.5 days; a 4-day minimum interval refuses it.
    refused(
        "[engine]\ndefault_validity_days = 7\nmin_rotation_interval_secs = 345600\n",
        &["engine.min_rotation_interval_secs", "engine.default_validity_days"],
    );
    refused("[sweeper]\nlead_percent = 100\n", &["sweeper.lead_percent"]);
    refused("[sweeper]\nwindow_days = 0\n", &["sweeper.window_days"]);
    refused("[lease]\nttl_secs = 1\n", &["lease.ttl_secs"]);
    refused("[lease]\nttl = 30\n", &["ttl"]);
    // Short validities that do work: 7 days, hourly sweeps, the default interval.
    let ok = kv_rotator_config::load(Some(&write(&dir, "[engine]\ndefault_validity_days = 7\n"))).unwrap();
    assert_eq!(ok.sweeper.lead_percent, 50);
    assert_eq!(ok.engine.min_rotation_interval_secs, 3600);
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
