//! The command line: `demo`, `dev`, `serve`, `rotate`, `status`, `functions`, `plugin`
//! and `healthcheck`.
//!
//! - [`demo`]: one rotation end to end on embedded defaults, with a report.
//! - [`dev`]: the service with the dev vault embedded, for local experiments.
//! - [`serve`]: the service against a configured vault.
//! - [`rotate`]: manual rotations (named secrets, `--all`, `--resume`), in-process.
//! - [`status`]: `status` and `rotate --dry-run`, read-only views of the vault.
//! - [`functions`]: the Azure Functions custom handler (Event Grid, HTTP and timer triggers).
//! - [`plugin`]: `plugin test`, the conformance checks against a profile, for plugin authors.
//! - [`healthcheck`]: probes a running service's `/healthz` (container health checks).
//! - [`seed`]: the demo target (an htpasswd file) and a real-shaped Event Grid delivery.

pub mod demo;
pub mod dev;
pub mod functions;
pub mod healthcheck;
pub mod plugin;
pub mod progress;
pub mod rotate;
pub mod seed;
pub mod serve;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Event-driven password rotation worker for Azure Key Vault.
#[derive(Debug, Parser)]
#[command(name = "kv-rotator", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KV_ROTATOR_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Rotate one demo secret end to end on embedded defaults (dev vault, htpasswd target) and report.
    Demo,
    /// Run the service with the dev vault embedded.
    Dev(dev::DevArgs),
    /// Run the service against the vault in the configuration.
    Serve {
        /// Configuration file (TOML); `KV_ROTATOR_*` environment variables override it.
        #[arg(long, short, env = "KV_ROTATOR_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Rotate secrets now: named ones, --all managed ones, or --resume unfinished ones; through the
    /// running service's admin API when [admin.auth] is configured and it answers, else in this process.
    Rotate(rotate::RotateArgs),
    /// Show every managed secret (profile, account, age, expiry, next due, last failure) and
    /// unfinished journal records; read-only.
    Status(status::StatusArgs),
    /// Probe a running service's /healthz: exit 0 on a 2xx answer (for container health checks).
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Tools for rotator plugin authors: `plugin test` runs the conformance checks.
    Plugin(plugin::PluginArgs),
    /// Serve the Azure Functions host's invocations (custom handler) on FUNCTIONS_CUSTOMHANDLER_PORT.
    Functions(functions::FunctionsArgs),
}

/// Runs the CLI; the exit code says whether the command succeeded.
pub fn run(cli: Cli) -> ExitCode {
    let default_filter = match cli.command {
        // The demo's output is its report; logs only when something is wrong.
        Command::Demo | Command::Healthcheck(_) | Command::Status(_) => "warn",
        Command::Rotate(ref args) if args.dry_run => "warn",
        _ => "info",
    };
    crate::logging::init(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo => demo::run().await,
            Command::Dev(args) => dev::run(args).await,
            Command::Serve { config } => serve::run(config).await,
            Command::Rotate(args) => rotate::run(args).await,
            Command::Status(args) => status::status(args).await,
            Command::Healthcheck(args) => healthcheck::run(args).await,
            Command::Functions(args) => functions::run(args).await,
            Command::Plugin(args) => plugin::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
