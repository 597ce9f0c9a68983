//! Foreground mode (`cgdrop --cgroup …`) and `cgdrop run` (a fresh cgroup
//! for one command): checks, the session, and the summary.
use std::{fs, io::IsTerminal};

use anyhow::{Context, Result};

use crate::{
    cli::{ForegroundArgs, LogFlags, PolicyArgs, RunArgs},
    host::{
        cgroup::{self, Cgroup},
        preflight,
        process::{check_command, exit_code, lookup_user, Cmd},
        target::CgroupTarget,
    },
    kernel::{loader, stats},
    output::{self, EventFormat},
    policy::Policy,
    session::{session, Outcome},
};

/// Foreground mode; returns the exit status (the --run command's, or 0).
pub fn run(args: &ForegroundArgs, verbose: bool) -> Result<u8> {
    announce_rules_file(&args.policy);
    let policy = Policy::from_args(&args.policy)?;
    let target = args.target.required()?;
    let location = cgroup::locate(&target.resolve()?, args.create, args.whole_host)?;
    preflight::check()?;
    loader::set_verbose(verbose);
    let cgroup = Cgroup::open(location)?;
    if !matches!(target, CgroupTarget::Cgroup(_)) {
        crate::say!("cgdrop: {target} is cgroup {} (id {})", cgroup.path.display(), cgroup.id);
    }
    let cmd = args.run.as_deref().map(Cmd::Shell);
    let outcome = session(policy, &cgroup, cmd, args.interval, log_format(&args.log), false)?;
    print_summary(&outcome, &cgroup, args.json)?;
    if outcome.left_unfiltered > 0 {
        output::warn(format_args!(
            "{} processes remain in cgroup {}, no longer filtered (cgdrop did not create it, so it does not kill them)",
            outcome.left_unfiltered,
            cgroup.path.display()
        ));
    }
    Ok(outcome.status.map_or(0, exit_code))
}

/// `cgdrop run`: a fresh cgroup for one command; whatever the command leaves
/// in it is killed before the policy goes, and the cgroup is removed.
pub fn run_command(args: &RunArgs, verbose: bool) -> Result<u8> {
    announce_rules_file(&args.policy);
    let policy = Policy::from_args(&args.policy)?;
    check_command(&args.command, args.user.is_some())?;
    let user = match &args.user {
        Some(name) => Some(lookup_user(name)?),
        None => None,
    };
    preflight::check()?;
    loader::set_verbose(verbose);
    let cgroup = Cgroup::create_run()?;
    let cmd = Cmd::Argv { argv: &args.command, user: user.as_ref(), keep_fds: &args.keep_fds };
    let outcome = session(policy, &cgroup, Some(cmd), args.interval, log_format(&args.log), true)?;
    print_summary(&outcome, &cgroup, args.json)?;
    if let Some(line) = output::explain(&outcome.stats, &outcome.policy) {
        crate::say!("{line}");
        if !outcome.top_blocked.is_empty() {
            let top: Vec<String> = outcome.top_blocked.iter().map(|(to, n)| format!("{to} ({n})")).collect();
            crate::say!("cgdrop: most blocked destinations (among the recorded events): {}", top.join(", "));
        }
    }
    // Removed here rather than on drop, so that a failure is an error.
    let path = cgroup.path.clone();
    cgroup.remove().with_context(|| format!("removing cgroup {} (`cgdrop cleanup` retries)", path.display()))?;
    Ok(outcome.status.map_or(1, exit_code))
}

/// On a terminal, says that a large rules file is being read (errors stay one
/// line when stderr is not a terminal).
fn announce_rules_file(args: &PolicyArgs) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    if let Some(size) = args.rules_file.as_ref().and_then(|f| fs::metadata(f).ok()).map(|m| m.len()) {
        if size >= 1 << 20 {
            crate::say!(
                "cgdrop: reading {} ({} MiB)…",
                args.rules_file.as_ref().map_or("".into(), |f| f.display().to_string()),
                size >> 20
            );
        }
    }
}

fn log_format(flags: &LogFlags) -> Option<EventFormat> {
    if flags.log_json {
        Some(EventFormat::Json)
    } else {
        flags.log.then_some(EventFormat::Text)
    }
}

/// The summary: a table on stderr, or one JSON object on stdout.
fn print_summary(outcome: &Outcome, cgroup: &Cgroup, json: bool) -> Result<()> {
    if json {
        let summary =
            stats::Summary { cgroup: &cgroup.path.to_string_lossy(), cgroup_id: cgroup.id, stats: outcome.stats };
        crate::outln!("{}", serde_json::to_string(&summary)?);
    } else {
        crate::say_raw!(
            "cgdrop: detached from {}\n{}",
            cgroup.path.display(),
            output::table(
                &outcome.stats,
                &output::rejected_with(outcome.policy.dry_run, outcome.policy.reject_with.errno())
            )
        );
    }
    Ok(())
}
