//! Log output: where it goes, its format, and which events pass.
//!
//! Logs go to stderr, as text or JSON lines. Which events pass is decided by two
//! filters that must both agree, on one per-layer filter of the formatting layer:
//!
//! 1. the user's filter, `RUST_LOG` (an [`EnvFilter`]; the command's default when it is
//!    unset or invalid);
//! 2. a cap on dependencies ([`dependency_cap`]): events and spans of kv-rotator's own
//!    targets (every target starting with `kv_rotator`: the `kv_rotator` crate,
//!    `kv_rotator::audit`, `kv_rotator_rotators`, `kv_rotator_keyvault`, …) pass at any
//!    level, those of every other target at `INFO` and above only.
//!
//! So `RUST_LOG=trace` makes kv-rotator itself verbose while `tokio_postgres`,
//! `postgres_protocol`, `hyper`, `reqwest`, `h2`, `rustls`, `azure_core`,
//! `azure_identity` and the rest never log below `INFO`, whatever `RUST_LOG` says
//! (`tokio_postgres=trace` included): their debug and trace output carries the SQL
//! statements (`ALTER ROLE … PASSWORD 'SCRAM-SHA-256$…'`), HTTP bodies with secret
//! values and bearer tokens, which must never reach a log. `RUST_LOG` can still lower a
//! dependency's level (`hyper=warn`). Dependencies that log through the `log` crate
//! (tokio-postgres does) reach tracing through the `log` bridge that
//! [`SubscriberInitExt::try_init`] installs, under their own target, so the cap applies
//! to them too.

use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

/// The target prefix of kv-rotator's own events: its crates are `kv_rotator` and
/// `kv_rotator_*`, and its custom targets (`kv_rotator::audit`) start with it too.
pub const OWN_TARGET_PREFIX: &str = "kv_rotator";

/// The most verbose level a target outside [`OWN_TARGET_PREFIX`] may log at.
pub const DEPENDENCY_MAX_LEVEL: LevelFilter = LevelFilter::INFO;

/// Own targets unrestricted (the user's filter decides), every other target capped at
/// [`DEPENDENCY_MAX_LEVEL`]. ([`Targets`] matches a target by prefix.)
pub fn dependency_cap() -> Targets {
    Targets::new().with_target(OWN_TARGET_PREFIX, LevelFilter::TRACE).with_default(DEPENDENCY_MAX_LEVEL)
}

/// Installs the global subscriber (and the `log` bridge): `RUST_LOG`, or
/// `default_filter` when it is unset or invalid, intersected with [`dependency_cap`];
/// then logs the filter in force at `TRACE`. Does nothing if a subscriber is already
/// installed.
pub fn init(format: LogFormat, default_filter: &str) {
    let user = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let shown = user.to_string();
    let filter = user.and(dependency_cap());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().boxed(),
    };
    if tracing_subscriber::registry().with(layer.with_filter(filter)).try_init().is_ok() {
        tracing::trace!(
            filter = %shown,
            dependency_max_level = %DEPENDENCY_MAX_LEVEL,
            "logging: kv-rotator's own targets filtered by RUST_LOG, every other target capped"
        );
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn own_targets_pass_at_every_level_and_others_at_info_and_above() {
        let cap = dependency_cap();
        for target in ["kv_rotator", "kv_rotator::audit", "kv_rotator_rotators::postgres", "kv_rotator_keyvault"] {
            assert!(cap.would_enable(target, &Level::TRACE), "{target}");
        }
        for target in ["tokio_postgres::query", "postgres_protocol", "hyper", "reqwest", "azure_core", "log"] {
            assert!(cap.would_enable(target, &Level::INFO), "{target}");
            assert!(!cap.would_enable(target, &Level::DEBUG), "{target}");
            assert!(!cap.would_enable(target, &Level::TRACE), "{target}");
        }
    }
}
