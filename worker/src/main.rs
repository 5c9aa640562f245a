//! The `kv-rotator` binary; see the crate docs of `kv_rotator` for the parts.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kv_rotator::cli::Cli::parse();
    // While this is the only thread: core dumps off, secret variables out of the
    // environment (see `kv_rotator::hardening`). The runtime starts in `run`.
    if let Err(e) = kv_rotator::hardening::at_startup(&cli.command) {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    kv_rotator::cli::run(cli)
}
