//! Thin entry point: parse, run, report `cgdrop: <error chain>` on failure.
use std::process::ExitCode;

use cgdrop::cli::{usage_error, Cli};
use clap::Parser;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match cgdrop::commands::run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            cgdrop::say!("cgdrop: {e:#}");
            ExitCode::from(1)
        }
    }
}
