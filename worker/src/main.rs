//! The `kv-rotator` binary; see the crate docs of `kv_rotator` for the parts.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kv_rotator::cli::Cli::parse();
    // Test builds (`leak-ledger`): the argv and environment this process was started with,
    // for the leak scanner, whoever started it.
    #[cfg(feature = "leak-ledger")]
    kv_rotator_leakscan::process_started();
    // While this is the only thread: core dumps off, secret variables out of the
    // environment (see `kv_rotator::hardening`). The runtime starts in `run`.
    if let Err(e) = kv_rotator::hardening::at_startup(&cli.command) {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    // Test builds: stdout and stderr are copied to the leak scanner too, until `run` returns.
    #[cfg(all(feature = "leak-ledger", unix))]
    let _tee = kv_rotator_leakscan::tee_stdio();
    kv_rotator::cli::run(cli)
}
