//! One module per subcommand, and the dispatcher `main` calls. Nothing below
//! this layer imports it.
pub mod foreground;
pub mod pin;
pub mod report;
pub mod rule;

use crate::cli::{self, Cli, Command};

/// Runs the command line; returns the process exit status.
pub fn run(cli: &Cli) -> anyhow::Result<u8> {
    let ok = |r: anyhow::Result<()>| r.map(|()| 0);
    match &cli.command {
        None => foreground::run(&cli.foreground, cli.verbose),
        Some(Command::Run(args)) => foreground::run_command(args, cli.verbose),
        Some(Command::Pin(args)) => ok(pin::pin(args, cli.verbose)),
        Some(Command::Unpin(args)) => ok(pin::unpin(args.cgroup.as_deref(), args.all)),
        Some(Command::Status { json }) => ok(report::status(*json)),
        Some(Command::Stats(args)) => ok(report::stats(args)),
        Some(Command::Rule { command }) => ok(rule::run(command)),
        Some(Command::Completions { shell }) => ok(cli::completions(*shell)),
        Some(Command::Manpage) => ok(cli::manpage()),
    }
}
