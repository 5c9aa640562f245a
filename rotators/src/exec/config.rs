//! [`ExecConfig`]: a plugin target's settings, and the checks that keep secrets out of
//! what others can read — its arguments (`ps`), its settings (in the configuration file
//! and each request) and the names of the environment variables passed through.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::{
    ExecRotator, DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_REPLY_BYTES, DEFAULT_MAX_STDERR_BYTES, DEFAULT_TIMEOUT_SECS,
};
use crate::registry::looks_secret;
use crate::Rotator;

/// Settings of an exec (plugin) target.
///
/// ```toml
/// [targets.legacy-app]
/// kind = "exec"
/// command = "/opt/kv-rotator/plugins/legacy_app.py"
/// args = ["--site", "eu"]
/// timeout_secs = 30
/// env = ["HTTPS_PROXY"]
/// settings = { url = "https://legacy.internal" }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// The program, by absolute path (no `PATH` lookup).
    #[serde(deserialize_with = "absolute_path")]
    pub command: PathBuf,
    /// Its arguments: visible to every local user (`ps`), so never secret
    /// (`--password=…`-like ones are refused).
    #[serde(default, deserialize_with = "non_secret_args")]
    pub args: Vec<String>,
    /// Seconds one run may take before its process group is killed; at least 1.
    #[serde(default = "default_timeout", deserialize_with = "at_least_one_sec")]
    pub timeout_secs: u64,
    /// Passed to the plugin in every request. Not secret: keys that name one
    /// ([`SECRET_WORDS`](crate::registry::SECRET_WORDS)) are refused.
    #[serde(default, deserialize_with = "non_secret_settings")]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Names of the worker's environment variables passed through (default none).
    #[serde(default, deserialize_with = "non_secret_env")]
    pub env: Vec<String>,
    /// Largest reply read from stdout; a longer one fails the run.
    #[serde(default = "default_max_reply")]
    pub max_reply_bytes: usize,
    /// Largest stretch of stderr kept (and logged); the rest is read and dropped.
    #[serde(default = "default_max_stderr")]
    pub max_stderr_bytes: usize,
    /// Most runs of this profile's program at once (the engine rotates several accounts
    /// concurrently); more wait their turn. At least 1.
    #[serde(default = "default_max_concurrent", deserialize_with = "at_least_one")]
    pub max_concurrent: usize,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}
fn default_max_reply() -> usize {
    DEFAULT_MAX_REPLY_BYTES
}
fn default_max_stderr() -> usize {
    DEFAULT_MAX_STDERR_BYTES
}

fn default_max_concurrent() -> usize {
    DEFAULT_MAX_CONCURRENT
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom("max_concurrent must be at least 1")),
        n => Ok(n),
    }
}

fn at_least_one_sec<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(serde::de::Error::custom("timeout_secs must be at least 1")),
        secs => Ok(secs),
    }
}

fn absolute_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let path = PathBuf::deserialize(d)?;
    if !path.is_absolute() {
        return Err(serde::de::Error::custom(format!("command {:?} must be an absolute path", path.display())));
    }
    Ok(path)
}

fn non_secret_settings<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<serde_json::Map<String, serde_json::Value>, D::Error> {
    let settings = serde_json::Map::deserialize(d)?;
    check_settings(&settings).map_err(serde::de::Error::custom)?;
    Ok(settings)
}

fn check_settings(settings: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
    for (key, value) in settings {
        if looks_secret(key) {
            return Err(format!(
                "settings.{key} looks like a secret: the configuration holds none (give the plugin an admin login \
                 from Key Vault instead)"
            ));
        }
        check_setting_value(value).map_err(|e| e.replacen("settings.", &format!("settings.{key}."), 1))?;
    }
    Ok(())
}

/// Tables inside a setting, also those inside arrays (`[[settings.hosts]]`).
fn check_setting_value(value: &serde_json::Value) -> Result<(), String> {
    match value {
        serde_json::Value::Object(inner) => check_settings(inner),
        serde_json::Value::Array(items) => items.iter().try_for_each(check_setting_value),
        _ => Ok(()),
    }
}

fn non_secret_args<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let args = Vec::<String>::deserialize(d)?;
    for arg in &args {
        // `--password=x`, or `--password` followed by its value.
        let name = arg.split_once('=').map_or(arg.as_str(), |(name, _)| name);
        if name.starts_with('-') && looks_secret(name) {
            return Err(serde::de::Error::custom(format!(
                "args: {name} looks like a secret option, and arguments are visible to every local user (ps); \
                 secrets reach a plugin on stdin only"
            )));
        }
    }
    Ok(args)
}

fn non_secret_env<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    for name in &names {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(serde::de::Error::custom(format!("env: {name:?} is not a variable name")));
        }
        if looks_secret(name) {
            return Err(serde::de::Error::custom(format!(
                "env: {name} looks like a secret; secrets reach a plugin on stdin only"
            )));
        }
    }
    Ok(names)
}

impl ExecConfig {
    /// `command` with every other setting at its default.
    pub fn new(command: impl Into<PathBuf>) -> Self {
        Self {
            command: command.into(),
            args: Vec::new(),
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            settings: serde_json::Map::new(),
            env: Vec::new(),
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            max_stderr_bytes: DEFAULT_MAX_STDERR_BYTES,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
        }
    }
}

impl crate::registry::KindSettings for ExecConfig {
    /// A plugin's strategies are known only when it describes itself: the rotator refuses
    /// then if the plugin does not declare the profile's.
    fn offers(&self, strategy: crate::common::Strategy) -> Result<(), std::borrow::Cow<'static, str>> {
        crate::registry::all_strategies_but(
            strategy,
            crate::common::Strategy::AlternatingUsers,
            "exec plugins offer single-user and multi-password (protocol 1 has no twin account operation)",
        )
    }

    fn build(
        &self,
        profile: &crate::registry::ProfileContext<'_>,
    ) -> Result<std::sync::Arc<dyn Rotator>, crate::registry::BuildError> {
        Ok(std::sync::Arc::new(ExecRotator::new(self.clone(), profile.password.clone(), profile.strategy)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_like: serde_json::Value) -> Result<ExecConfig, String> {
        serde_json::from_value(toml_like).map_err(|e| e.to_string())
    }

    #[test]
    fn config_needs_an_absolute_command_and_no_secrets() {
        let cfg = parse(serde_json::json!({"command": "/bin/true"})).unwrap();
        assert_eq!(cfg, ExecConfig::new("/bin/true"));
        let e = parse(serde_json::json!({"command": "plugin.sh"})).unwrap_err();
        assert!(e.contains("absolute path"), "{e}");
        let e = parse(serde_json::json!({"command": "/p", "settings": {"db": {"Password": "x"}}})).unwrap_err();
        assert!(e.contains("settings.db.Password looks like a secret"), "{e}");
        let e = parse(serde_json::json!({"command": "/p", "env": ["AZURE_CLIENT_SECRET"]})).unwrap_err();
        assert!(e.contains("looks like a secret"), "{e}");
        let e = parse(serde_json::json!({"command": "/p", "timeout_secs": 0})).unwrap_err();
        assert!(e.contains("timeout_secs must be at least 1"), "{e}");
        let e = parse(serde_json::json!({"command": "/p", "args": ["--site=eu", "--db-password=x"]})).unwrap_err();
        assert!(e.contains("args: --db-password looks like a secret option"), "{e}");
        // The option and its value apart, other spellings, and what is only a location.
        for args in [&["--password", "x"][..], &["--api-key=k"], &["--pass", "x"], &["-pwd=x"]] {
            let e = parse(serde_json::json!({"command": "/p", "args": args})).unwrap_err();
            assert!(e.contains("looks like a secret option"), "{args:?}: {e}");
        }
        let cfg = parse(serde_json::json!({"command": "/p", "args": ["--token-file=/run/t", "--password-env", "PW",
            "--site", "eu"], "settings": {"api-key_path": "/x"}}))
        .unwrap();
        assert_eq!(cfg.args.len(), 5);
        let e = parse(serde_json::json!({"command": "/p", "settings": {"hosts": [{"name": "a", "api_key": "k"}]}}))
            .unwrap_err();
        assert!(e.contains("settings.hosts.api_key looks like a secret"), "{e}");
        let e = parse(serde_json::json!({"command": "/p", "max_concurrent": 0})).unwrap_err();
        assert!(e.contains("max_concurrent must be at least 1"), "{e}");
        let e = parse(serde_json::json!({"command": "/p", "comand": "/q"})).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
