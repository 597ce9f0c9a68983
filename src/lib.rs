//! cgdrop: drop the network traffic of every process of one cgroup v2 with eBPF.
//!
//! Data flows one way: `cli` → validated `policy::Policy` (with `rules` parsed)
//! → `loader` (skeleton open, rodata, load, rules written by `rulemaps`,
//! attach) → links held by `foreground` → counters read back by `stats`.
//! `cgroup` finds and checks the cgroup; `preflight` checks capabilities, kernel and BTF up front.
//! Persistent policies: `pin` (pin, replace, unpin, open pinned), `rulecmd`
//! (live rule changes), `report` (status, stats, Prometheus).
pub mod cgroup;
pub mod cli;
pub mod foreground;
pub mod loader;
pub mod pin;
pub mod policy;
pub mod preflight;
pub mod report;
pub mod rulecmd;
pub mod rulemaps;
pub mod rules;
pub mod stats;

/// The skeleton libbpf-cargo generated from bpf/cgdrop.bpf.c (see build.rs).
pub mod skel {
    #![allow(clippy::all, missing_docs, non_camel_case_types, non_snake_case, non_upper_case_globals)]
    include!(concat!(env!("OUT_DIR"), "/cgdrop.skel.rs"));
}

/// Runs the command line; returns the process exit status.
pub fn run(cli: &cli::Cli) -> anyhow::Result<u8> {
    use cli::Command;
    let ok = |r: anyhow::Result<()>| r.map(|()| 0);
    match &cli.command {
        None => foreground::run(&cli.foreground, cli.verbose),
        Some(Command::Run(args)) => foreground::run_command(args, cli.verbose),
        Some(Command::Pin(args)) => ok(pin::pin(args, cli.verbose)),
        Some(Command::Unpin(args)) => ok(pin::unpin(args.cgroup.as_deref(), args.all)),
        Some(Command::Status { json }) => ok(report::status(*json)),
        Some(Command::Stats(args)) => ok(report::stats(args)),
        Some(Command::Rule { command }) => ok(rulecmd::run(command)),
        Some(Command::Completions { shell }) => ok(cli::completions(*shell)),
        Some(Command::Manpage) => ok(cli::manpage()),
    }
}
