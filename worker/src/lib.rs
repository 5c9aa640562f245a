//! kv-rotator: an event-driven password rotation worker for Azure Key Vault.
//!
//! The binary wires the workspace's parts together:
//!
//! - [`engine`]: the only place that knows the rotation protocol — fence on the latest
//!   version, write the pending journal record to Key Vault before touching the target,
//!   set, test, finish, delete the journal — with retries and per-secret locking.
//! - [`targets`]: builds one [`Rotator`](kv_rotator_rotators::Rotator) per target profile.
//! - [`credentials`]: picks the Entra ID credential the configuration names.
//! - [`hardening`]: before the runtime starts: secret variables out of the
//!   environment, core dumps off.
//! - [`sweeper`]: resumes unfinished journals and enqueues secrets near expiry.
//! - [`metrics`]: Prometheus counters, gauges and histograms, `GET /metrics`.
//! - [`vault_health`]: whether the vault answers, from the service's own calls (for
//!   `/readyz`), and its throttling and retries (for the metrics).
//! - [`admin`]: the admin listener (loopback by default): `/metrics`, `/healthz`, `/readyz`,
//!   and with `[admin.auth]` the authenticated admin API (`/api/...`).
//! - [`listener`]: the hardened HTTP listener the webhook and the admin routes are served by.
//! - [`alerts`]: the HTTP webhook alert sink for failed rotations.
//! - [`notify`]: rotation outcomes and expiry warnings as CloudEvents to a webhook or an
//!   Event Grid topic, from a bounded queue that never holds a rotation.
//! - [`http_sink`]: the HTTP POST (timeout, retries, origin-only errors) both share.
//! - [`lease`]: the engine lease in Key Vault: one engine per vault.
//! - [`logging`]: log output; dependencies capped at INFO whatever `RUST_LOG` says.
//! - [`service`]: runs the webhook, engine and sweeper together until shutdown.
//! - [`standby`]: a `serve` that finds the engine lease held waits for it, listening.
//! - [`functions`]: the Azure Functions custom handler: Event Grid, HTTP and timer
//!   invocations run by the same engine, under an engine lease claimed per need.
//! - [`cli`]: the `demo`, `dev`, `serve`, `rotate`, `status`, `functions` and
//!   `healthcheck` commands.
//!
//! See `docs/architecture.md` for the data flow and the invariant.

// Test-only features never reach a binary that ships: a release build of either fails.
#[cfg(all(feature = "failpoints", not(debug_assertions)))]
compile_error!("the failpoints feature pauses rotations on an environment variable: test builds only");
#[cfg(all(feature = "leak-ledger", not(debug_assertions)))]
compile_error!("the leak-ledger feature records every password to a file: test builds only");

pub mod admin;
pub mod alerts;
pub mod cli;
pub mod credentials;
pub mod engine;
pub mod functions;
pub mod hardening;
pub mod http_sink;
pub mod lease;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod service;
pub mod standby;
pub mod sweeper;
pub mod targets;
pub mod vault_health;

/// The `kv-rotator` command line, with the rotator kinds of `registry`: the whole of the
/// binary's `main`. A build with kinds of its own (`examples/custom-rotator/`) calls it
/// with [`Registry::builtin`](kv_rotator_rotators::registry::Registry::builtin) plus them.
pub fn main_with(registry: kv_rotator_rotators::registry::Registry) -> std::process::ExitCode {
    use clap::Parser;
    // Before anything reads a configuration, which looks kinds up there.
    if kv_rotator_rotators::registry::install(registry).is_err() {
        eprintln!(
            "error: the rotator kinds were fixed before main_with could install them (a registry installed, or a \
             configuration read, earlier in main)"
        );
        return std::process::ExitCode::FAILURE;
    }
    let cli = cli::Cli::parse();
    // Test builds (`leak-ledger`): the argv and environment this process was started with,
    // for the leak scanner, whoever started it.
    #[cfg(feature = "leak-ledger")]
    kv_rotator_leakscan::process_started();
    // While this is the only thread: core dumps off, secret variables out of the
    // environment (see `hardening`). The runtime starts in `cli::run`.
    if let Err(e) = hardening::at_startup(&cli.command) {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    // Test builds: stdout and stderr are copied to the leak scanner too, until `run` returns.
    #[cfg(all(feature = "leak-ledger", unix))]
    let _tee = kv_rotator_leakscan::tee_stdio();
    cli::run(cli)
}
