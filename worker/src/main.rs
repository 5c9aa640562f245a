//! The `kv-rotator` binary; see the crate docs of `kv_rotator` for the parts.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kv_rotator::cli::Cli::parse();
    kv_rotator::cli::run(cli)
}
