//! `kv-rotator completions SHELL`: the shell completion script for every command and
//! flag, generated from the command line's own definition (`clap_complete`), so it
//! cannot drift from it.

use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

/// Options of `kv-rotator completions`.
#[derive(Debug, Args)]
#[command(after_help = "Install, for example:\n  \
    bash:       kv-rotator completions bash > /etc/bash_completion.d/kv-rotator\n  \
    zsh:        kv-rotator completions zsh > \"${fpath[1]}/_kv-rotator\"\n  \
    fish:       kv-rotator completions fish > ~/.config/fish/completions/kv-rotator.fish\n  \
    powershell: kv-rotator completions powershell >> $PROFILE")]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Prints the script to stdout.
pub fn run(args: &CompletionsArgs) -> ExitCode {
    let mut command = Cli::command();
    let name = command.get_name().to_owned();
    clap_complete::generate(args.shell, &mut command, name, &mut std::io::stdout());
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap's own checks: no clashing flags, groups naming real arguments, …
        Cli::command().debug_assert();
    }
}
