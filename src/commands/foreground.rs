//! Foreground mode (`cgdrop --cgroup …`) and `cgdrop run` (a fresh cgroup
//! for one command): checks, the session, and the summary.
use std::{fs, io::IsTerminal, path::Path};

use anyhow::{Context, Result};

use crate::{
    cli::{ForegroundArgs, PolicyArgs, RunArgs},
    host::{
        cgroup::{self, Cgroup},
        preflight,
        process::{check_command, exit_code, lookup_user, Cmd},
    },
    kernel::{loader, stats},
    output,
    policy::Policy,
    session::{session, Outcome},
};

/// Foreground mode; returns the exit status (the --run command's, or 0).
pub fn run(args: &ForegroundArgs, verbose: bool) -> Result<u8> {
    announce_rules_file(&args.policy);
    let policy = Policy::from_args(&args.policy)?;
    let cgroup_arg = args.cgroup.as_deref().context("--cgroup is required")?;
    let location = cgroup::locate(cgroup_arg, args.create)?;
    preflight::check()?;
    loader::set_verbose(verbose);
    let cgroup = Cgroup::open(location)?;
    let cmd = args.run.as_deref().map(Cmd::Shell);
    let outcome = session(policy, &cgroup, cmd, args.interval)?;
    print_summary(&outcome, &cgroup, args.json)?;
    Ok(outcome.status.map_or(0, exit_code))
}

/// `cgdrop run`: a fresh cgroup for one command, removed afterwards.
pub fn run_command(args: &RunArgs, verbose: bool) -> Result<u8> {
    announce_rules_file(&args.policy);
    let policy = Policy::from_args(&args.policy)?;
    check_command(&args.command)?;
    let user = match &args.user {
        Some(name) => Some(lookup_user(name)?),
        None => None,
    };
    preflight::check()?;
    loader::set_verbose(verbose);
    remove_stale_run_cgroups()?;
    let name = format!("cgdrop-run-{}", std::process::id());
    let cgroup = Cgroup::open(cgroup::locate(Path::new(&name), true)?)?;
    let cmd = Cmd::Argv { argv: &args.command, user: user.as_ref() };
    let outcome = session(policy, &cgroup, Some(cmd), args.interval);
    // Whatever the command left running goes with the cgroup, success or not.
    let cleaned = cgroup.kill_all();
    let outcome = outcome?;
    cleaned?;
    print_summary(&outcome, &cgroup, args.json)?;
    if let Some(line) = output::explain(&outcome.stats, &outcome.policy) {
        eprintln!("{line}");
    }
    Ok(outcome.status.map_or(1, exit_code))
}

/// Removes the `cgdrop-run-<pid>` cgroups of `cgdrop run`s that were killed
/// (SIGKILL cannot be caught, so such a run could not remove its own),
/// killing what their commands left in them.
fn remove_stale_run_cgroups() -> Result<()> {
    let root = cgroup::cgroup2_root()?;
    let Ok(entries) = fs::read_dir(&root) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("cgdrop-run-")).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Best effort: another run may be removing it too; this run goes on.
        let path = entry.path();
        let removed = cgroup::destroy(&path, cgroup::KILL_TIMEOUT);
        if let Err(e) = removed {
            if path.exists() {
                eprintln!("cgdrop: could not remove {} (left by a killed cgdrop run): {e:#}", path.display());
            }
        }
    }
    Ok(())
}

/// On a terminal, says that a large rules file is being read (errors stay one
/// line when stderr is not a terminal).
fn announce_rules_file(args: &PolicyArgs) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    if let Some(size) = args.rules_file.as_ref().and_then(|f| fs::metadata(f).ok()).map(|m| m.len()) {
        if size >= 1 << 20 {
            eprintln!(
                "cgdrop: reading {} ({} MiB)…",
                args.rules_file.as_ref().map_or("".into(), |f| f.display().to_string()),
                size >> 20
            );
        }
    }
}

/// The summary: a table on stderr, or one JSON object on stdout.
fn print_summary(outcome: &Outcome, cgroup: &Cgroup, json: bool) -> Result<()> {
    if json {
        let summary =
            stats::Summary { cgroup: &cgroup.path.to_string_lossy(), cgroup_id: cgroup.id, stats: outcome.stats };
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprint!("cgdrop: detached from {}\n{}", cgroup.path.display(), output::table(&outcome.stats));
    }
    Ok(())
}
