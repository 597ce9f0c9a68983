//! One module per subcommand, and the dispatcher `main` calls. Nothing below
//! this layer imports it.
pub mod apply;
pub mod cleanup;
pub mod foreground;
pub mod log;
pub mod pin;
pub mod report;
pub mod rule;
pub mod systemd;

use clap::CommandFactory;

use crate::cli::{Cli, Command};

/// Runs the command line; returns the process exit status.
pub fn run(cli: &Cli) -> anyhow::Result<u8> {
    let ok = |r: anyhow::Result<()>| r.map(|()| 0);
    let touches_kernel =
        !matches!(cli.command, Some(Command::Completions { .. } | Command::Manpage { .. } | Command::Cleanup));
    if touches_kernel {
        cleanup::before_command();
    }
    match &cli.command {
        None => foreground::run(&cli.foreground, cli.verbose),
        Some(Command::Run(args)) => foreground::run_command(args, cli.verbose),
        Some(Command::Pin(args)) => ok(pin::pin(args, cli.verbose)),
        Some(Command::Unpin(args)) => ok(pin::unpin(args.target.target(), args.all, args.programs)),
        Some(Command::Cleanup) => ok(cleanup::run()),
        Some(Command::Apply(args)) => apply::run(args, cli.verbose),
        Some(Command::Systemd(args)) => ok(systemd::run(args, cli.verbose)),
        Some(Command::Log(args)) => ok(log::run(args)),
        Some(Command::Status { json, sockets }) => ok(report::status(*json, *sockets)),
        Some(Command::Stats(args)) => ok(report::stats(args)),
        Some(Command::Rule { command }) => ok(rule::run(command)),
        Some(Command::Completions { shell }) => ok(completions(*shell)),
        Some(Command::Manpage { dir }) => ok(manpage(dir.as_deref())),
    }
}

/// `cgdrop completions SHELL`: the completion script on stdout. Rendered
/// into memory first: clap_complete panics on a write error (`| head -1`).
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "cgdrop", &mut script);
    if shell == clap_complete::Shell::Bash {
        script = bash_values(&String::from_utf8_lossy(&script)).into_bytes();
    }
    crate::output::stdout(&script);
    Ok(())
}

/// What bash offers for the options that take names from the system rather
/// than file names (clap's generator offers files for every value).
const BASH_VALUES: [(&str, &str); 6] = [
    (
        "--cgroup",
        r#"COMPREPLY=($(cd "$(awk '$3=="cgroup2"{print $2; exit}' /proc/mounts)" 2>/dev/null && compgen -d -- "${cur}"))"#,
    ),
    ("--iface", r#"COMPREPLY=($(compgen -W "$(ls /sys/class/net 2>/dev/null)" -- "${cur}"))"#),
    (
        "--unit",
        r#"COMPREPLY=($(compgen -W "$(systemctl list-units --all --plain --no-legend 2>/dev/null | awk '{print $1}')" -- "${cur}"))"#,
    ),
    (
        "--container",
        r#"COMPREPLY=($(compgen -W "$( (docker ps --format '{{.Names}}'; podman ps --format '{{.Names}}') 2>/dev/null)" -- "${cur}"))"#,
    ),
    ("--pid", r#"COMPREPLY=($(compgen -W "$(ls /proc | grep -E '^[0-9]+$')" -- "${cur}"))"#),
    ("--user", r#"COMPREPLY=($(compgen -u -- "${cur}"))"#),
];

fn bash_values(script: &str) -> String {
    let mut out = Vec::new();
    let mut replace_next: Option<&str> = None;
    for line in script.lines() {
        match replace_next.take() {
            Some(ours) if line.trim_start().starts_with("COMPREPLY=") => {
                out.push(format!("                    {ours}"));
                continue;
            }
            _ => {}
        }
        let case = line.trim();
        replace_next = BASH_VALUES.iter().find(|(option, _)| case == format!("{option})")).map(|(_, ours)| *ours);
        out.push(line.to_string());
    }
    out.join("\n") + "\n"
}

/// The man page (roff) on stdout, from the same definition as --help; with
/// a directory, every page it refers to (`cgdrop-run(1)`, …) written there.
fn manpage(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(dir) = dir {
        return clap_mangen::generate_to(Cli::command(), dir)
            .map_err(|e| anyhow::anyhow!("writing man pages into {}: {e}", dir.display()));
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    crate::output::stdout(&page);
    Ok(())
}
