//! Process hardening, done in `main` before the async runtime starts any thread:
//!
//! - [`take_secret_env`]: the environment variables that hold secrets — those the
//!   configuration names ([`kv_rotator_config::load::secret_env_names`]: the client
//!   secret, the certificate password, the webhook's shared keys) and the Azure SDKs'
//!   conventional ones ([`ALWAYS_TAKEN`]) — are moved into this process's memory and
//!   removed from its environment, so no child process started later inherits them;
//!   [`secret_var`] hands each out once, to the code that reads it.
//! - [`disable_core_dumps`]: `serve`, `rotate` and `functions` hold passwords; a crash must not
//!   write them to a core file, and the process is made non-dumpable, which also keeps
//!   other processes of the same user from reading its memory (ptrace,
//!   `/proc/<pid>/mem`, `/proc/<pid>/environ`).
//!
//! Why before the runtime: `std::env::remove_var` is sound only while no other thread
//! may read the environment (C code such as the resolver calls `getenv` without Rust's
//! lock), so it runs while `main` is the only thread. The credential helpers (`az`,
//! `azd`) additionally get only the variables they need
//! ([`crate::credentials::HelperExecutor`]).
//!
//! Limits: the kernel keeps the environment the process started with in its initial
//! stack, and `/proc/<pid>/environ` shows that block, removal or not; overwriting it
//! would need `unsafe`. A non-dumpable process's `/proc/<pid>/environ` is readable only
//! with `CAP_SYS_PTRACE` (root), not by the same user. Prefer secrets from files
//! (`webhook.auth.key.file`) or no secret at all (managed or workload identity).

use std::collections::BTreeMap;
use std::env::VarError;
use std::sync::Mutex;

use secrecy::SecretString;

/// Secret-bearing variables of the Azure SDKs' environment credentials, taken whatever
/// the configuration says: kv-rotator reads them only where the configuration names them,
/// and no child process needs them.
pub const ALWAYS_TAKEN: &[&str] = &["AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_PASSWORD"];

/// A variable taken from the environment, until [`secret_var`] hands it out.
enum Taken {
    Value(SecretString),
    NotUnicode,
    HandedOut,
}

static TAKEN: Mutex<BTreeMap<String, Taken>> = Mutex::new(BTreeMap::new());

/// Moves the variables named (and [`ALWAYS_TAKEN`]) from the process environment into
/// memory, for [`secret_var`]; returns the names of those that were set.
///
/// Call it while the process has a single thread (see the [module docs](self)). Names that
/// cannot be environment variables (empty, or with `=` or NUL) are skipped.
pub fn take_secret_env<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut found = Vec::new();
    for name in names.into_iter().chain(ALWAYS_TAKEN.iter().copied()) {
        if name.is_empty() || name.contains(['=', '\0']) || taken.contains_key(name) {
            continue;
        }
        let Some(value) = std::env::var_os(name) else { continue };
        std::env::remove_var(name);
        let value = match value.into_string() {
            Ok(value) => Taken::Value(SecretString::from(value)),
            Err(_) => Taken::NotUnicode,
        };
        taken.insert(name.to_owned(), value);
        found.push(name.to_owned());
    }
    found
}

/// The secret in environment variable `name`: taken at startup by [`take_secret_env`]
/// (handed out once: a second read is an error, so no copy stays behind), else read from
/// the environment (code that did not start from `main`, such as tests).
pub fn secret_var(name: &str) -> Result<SecretString, SecretVarError> {
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    match taken.get_mut(name).map(|slot| std::mem::replace(slot, Taken::HandedOut)) {
        Some(Taken::Value(value)) => Ok(value),
        Some(Taken::NotUnicode) => Err(SecretVarError::NotUnicode),
        Some(Taken::HandedOut) => Err(SecretVarError::AlreadyRead),
        None => match std::env::var(name) {
            Ok(value) => Ok(SecretString::from(value)),
            Err(VarError::NotPresent) => Err(SecretVarError::NotSet),
            Err(VarError::NotUnicode(_)) => Err(SecretVarError::NotUnicode),
        },
    }
}

/// Why [`secret_var`] has no value; the messages complete "environment variable NAME ".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretVarError {
    /// Neither taken at startup nor set now.
    #[error("is not set")]
    NotSet,
    /// Set, but not UTF-8.
    #[error("is not UTF-8")]
    NotUnicode,
    /// Taken at startup and already handed out: one secret, one reader.
    #[error("was already read (a secret variable is read once, then removed)")]
    AlreadyRead,
}

/// The names of the variables [`take_secret_env`] took out of the environment.
pub fn taken_names() -> Vec<String> {
    TAKEN.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
}

/// Logs what [`at_startup`] did, read back: whether core dumps are off, and which
/// variables left the environment (their names only).
pub fn log_state() {
    let taken = taken_names();
    if core_dumps_disabled() {
        tracing::info!(secret_env_removed = ?taken, "process hardening: core dumps disabled (RLIMIT_CORE 0, not dumpable)");
    } else {
        tracing::warn!(secret_env_removed = ?taken, "process hardening: core dumps are NOT disabled on this platform");
    }
}

/// Sets `RLIMIT_CORE` to 0 (soft and hard) and, on Linux, makes the process
/// non-dumpable (`PR_SET_DUMPABLE` 0). A no-op elsewhere.
pub fn disable_core_dumps() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use rustix::process::{setrlimit, Resource, Rlimit};
        setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) })?;
    }
    #[cfg(target_os = "linux")]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Whether core dumps are off, read back from the kernel: `RLIMIT_CORE` is 0 and, on
/// Linux, the process is non-dumpable. `false` where neither can be asked.
pub fn core_dumps_disabled() -> bool {
    #[cfg(unix)]
    let limit_zero = rustix::process::getrlimit(rustix::process::Resource::Core).current == Some(0);
    #[cfg(not(unix))]
    let limit_zero = false;
    #[cfg(target_os = "linux")]
    let not_dumpable =
        rustix::process::dumpable_behavior().is_ok_and(|b| b == rustix::process::DumpableBehavior::NotDumpable);
    #[cfg(not(target_os = "linux"))]
    let not_dumpable = true;
    limit_zero && not_dumpable
}

/// Everything `main` does before the runtime, for `command`: core dumps off for `serve`,
/// `rotate`, `functions`, `check` and `plugin test` (an error if the kernel refuses), then the
/// secret variables that `config_file` and the environment name (and `events send` its
/// `--*-env` options) taken out of the environment.
pub fn at_startup(command: &crate::cli::Command) -> Result<(), String> {
    use crate::cli::Command;
    let (holds_passwords, config_file) = match command {
        Command::Serve { config } => (true, config.as_deref()),
        Command::Rotate(args) => (true, args.config.as_deref()),
        Command::Functions(args) => (true, args.config.as_deref()),
        Command::Dev(args) => (false, args.config.as_deref()),
        // Admin passwords read from the vault.
        Command::Check(args) => (true, args.config.as_deref()),
        // The key or token it sends, taken like the configuration's secret variables.
        Command::Events(args) => {
            let names = crate::cli::events::secret_env_names(args);
            take_secret_env(names.iter().map(String::as_str));
            (false, None)
        }
        Command::Plugin(crate::cli::plugin::PluginArgs { command: crate::cli::plugin::PluginCommand::Test(args) }) => {
            (true, args.config.as_deref())
        }
        _ => (false, None),
    };
    if holds_passwords {
        disable_core_dumps().map_err(|e| format!("cannot disable core dumps: {e}"))?;
    }
    let names = kv_rotator_config::load::secret_env_names(config_file);
    take_secret_env(names.iter().map(String::as_str));
    Ok(())
}
