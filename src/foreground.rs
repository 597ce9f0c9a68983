//! Foreground mode: attach, optionally run a command inside the cgroup, report
//! counters every interval, reload the rules file on SIGHUP, and detach on
//! SIGINT/SIGTERM (or SIGHUP without a rules file) or when the command exits;
//! then print the summary.
use std::{
    fs::OpenOptions,
    mem::MaybeUninit,
    os::{fd::AsRawFd, unix::process::CommandExt, unix::process::ExitStatusExt},
    process::{Child, Command, ExitStatus},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use libbpf_rs::OpenObject;
use nix::{sys::signal::Signal, unistd::Pid};
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::Signals,
};

use crate::{
    cgroup::{self, Cgroup},
    cli::{ForegroundArgs, PolicyArgs},
    loader,
    policy::Policy,
    privileges,
    rulemaps::Installed,
    rules,
    skel::CgdropSkel,
    stats,
};

enum Event {
    /// SIGINT or SIGTERM (or SIGHUP without a rules file) reached cgdrop.
    Signal,
    /// SIGHUP with a rules file: re-read it.
    Reload,
    /// The --run command exited.
    Exited(ExitStatus),
}

/// How long a --run command gets to exit after SIGTERM before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Runs foreground mode; returns the exit status (the --run command's, or 0).
pub fn run(cli: &ForegroundArgs, verbose: bool) -> Result<u8> {
    let mut policy = Policy::from_args(&cli.policy)?;
    let cgroup_arg = cli.cgroup.as_deref().context("--cgroup is required")?;
    let location = cgroup::locate(cgroup_arg, cli.create)?;
    privileges::check()?;
    loader::set_verbose(verbose);
    let cgroup = Cgroup::open(location)?;

    let (tx, rx) = mpsc::channel();
    forward_signals(tx.clone(), policy.rules_file.is_some())?;

    let mut object = MaybeUninit::<OpenObject>::uninit();
    let mut skel = loader::load(&policy, &mut object)?;
    let mut installed = Installed::new();
    // Rules go in before the programs are attached: the first packet sees them.
    loader::apply_rules(&mut skel, &mut installed, &policy)?;
    let links = loader::attach(&skel, &cgroup, &policy)?;
    eprintln!(
        "cgdrop: attached to cgroup {} (id {}): dropping {}{}; {}",
        cgroup.path.display(),
        cgroup.id,
        policy.describe(),
        if policy.rejects_calls() { ", connect() and sendto() rejected with EPERM" } else { "" },
        if cli.run.is_some() { "running the command" } else { "Ctrl-C to detach" }
    );

    let child_pid = match &cli.run {
        Some(cmd) => {
            let child = spawn_in_cgroup(cmd, &cgroup)?;
            let pid = Pid::from_raw(child.id() as i32);
            let tx = tx.clone();
            thread::spawn(move || wait_child(child, tx));
            Some(pid)
        }
        None => None,
    };
    drop(tx);

    let status = wait_events(&rx, cli.interval.map(Duration::from_secs), child_pid, |tick| match tick {
        Tick::Report => {
            loader::sweep_expired(&skel, &mut installed)?;
            stats::read(&skel.maps.stats).map(|s| eprintln!("cgdrop: {}", s.line()))
        }
        Tick::Reload => {
            reload(&cli.policy, &mut policy, &mut skel, &mut installed);
            Ok(())
        }
    })?;

    let totals = stats::read(&skel.maps.stats)?;
    drop(links);
    if cli.json {
        let summary = stats::Summary { cgroup: &cgroup.path.to_string_lossy(), cgroup_id: cgroup.id, stats: totals };
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprint!("cgdrop: detached from {}\n{}", cgroup.path.display(), totals.table());
    }
    Ok(status.map_or(0, exit_code))
}

/// Re-reads the rules file and swaps the rules in; on any error the old rules
/// stay in force and the error is printed.
fn reload(args: &PolicyArgs, policy: &mut Policy, skel: &mut CgdropSkel<'_>, installed: &mut Installed) {
    let Some(path) = policy.rules_file.clone() else { return };
    let mut next = policy.clone();
    let result = rules::read_rules_file(&path)
        .and_then(|file_rules| next.set_rules(args, file_rules))
        .and_then(|()| loader::apply_rules(skel, installed, &next));
    match result {
        Ok(()) => {
            *policy = next;
            eprintln!("cgdrop: reloaded {}: {} rules in force", path.display(), policy.rules.len());
        }
        Err(e) => eprintln!("cgdrop: reloading {} failed, the previous rules stay in force: {e:#}", path.display()),
    }
}

/// Sends SIGINT and SIGTERM (and SIGHUP, unless it means reload) to `tx` as events.
fn forward_signals(tx: mpsc::Sender<Event>, hup_reloads: bool) -> Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    thread::spawn(move || {
        for sig in signals.forever() {
            let event = if sig == SIGHUP && hup_reloads { Event::Reload } else { Event::Signal };
            // The receiver lives until run() returns; a send after that is moot.
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// What the event loop asks of its caller besides waiting.
enum Tick {
    /// An interval passed: report counters.
    Report,
    /// SIGHUP: reload the rules file.
    Reload,
}

/// Waits for a signal or the command's exit, reporting every `interval` and
/// reloading on SIGHUP. Returns the command's status, if there is a command.
fn wait_events(
    rx: &mpsc::Receiver<Event>,
    interval: Option<Duration>,
    child: Option<Pid>,
    mut on_tick: impl FnMut(Tick) -> Result<()>,
) -> Result<Option<ExitStatus>> {
    let mut next_report = interval.map(|i| Instant::now() + i);
    loop {
        let event = match next_report {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match event {
            Ok(Event::Exited(status)) => return Ok(Some(status)),
            Ok(Event::Reload) => on_tick(Tick::Reload)?,
            Ok(Event::Signal) => {
                let Some(pid) = child else { return Ok(None) };
                // Keep the policy in force until the command has gone.
                return Ok(Some(stop_child(rx, pid)));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                on_tick(Tick::Report)?;
                next_report = next_report.zip(interval).map(|(at, i)| at + i);
            }
            // Only when no sender is left, which cannot happen while the signal
            // handler holds one; treat it like a signal.
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
        }
    }
}

/// SIGTERM, then SIGKILL after a grace period; returns the command's status.
fn stop_child(rx: &mpsc::Receiver<Event>, pid: Pid) -> ExitStatus {
    // The child is not reaped until wait_child sends Exited, so the pid is still ours.
    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + KILL_GRACE;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Exited(status)) => return status,
            Ok(Event::Signal | Event::Reload) => {}
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                if let Ok(Event::Exited(status)) = rx.recv() {
                    return status;
                }
                return ExitStatus::from_raw(Signal::SIGKILL as i32);
            }
        }
    }
}

fn wait_child(mut child: Child, tx: mpsc::Sender<Event>) {
    // A wait() error leaves no status to report; 127 like a shell's failure.
    let status = child.wait().unwrap_or_else(|_| ExitStatus::from_raw(127 << 8));
    let _ = tx.send(Event::Exited(status));
}

/// Starts `sh -c cmd` already inside the cgroup: the child moves itself in
/// (writes "0" to cgroup.procs) between fork and exec, so its first socket is
/// already filtered.
fn spawn_in_cgroup(cmd: &str, cgroup: &Cgroup) -> Result<Child> {
    let procs = OpenOptions::new()
        .write(true)
        .open(cgroup.procs_path())
        .with_context(|| format!("opening {}", cgroup.procs_path().display()))?;
    let fd = procs.as_raw_fd();
    let mut command = Command::new("sh");
    command.arg("-c").arg(cmd);
    // SAFETY: the closure only calls write(2) on an fd that stays open (procs
    // outlives spawn), which is async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let n = nix::libc::write(fd, b"0".as_ptr().cast(), 1);
            if n == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let child = command.spawn().with_context(|| format!("running `{cmd}` in cgroup {}", cgroup.path.display()))?;
    drop(procs);
    Ok(child)
}

/// Shell convention: the exit code, or 128 + the signal that killed the command.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(Signal::SIGTERM as i32)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(Signal::SIGKILL as i32)), 137);
    }

    #[test]
    fn reports_each_interval_until_signal() {
        let (tx, rx) = mpsc::channel();
        let mut reports = 0;
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(350));
            tx.send(Event::Signal).unwrap();
        });
        let status = wait_events(&rx, Some(Duration::from_millis(100)), None, |_| {
            reports += 1;
            Ok(())
        })
        .unwrap();
        sender.join().unwrap();
        assert!(status.is_none());
        assert!((2..=4).contains(&reports), "{reports} reports in 350 ms at 100 ms");
    }
}
