//! Attached sessions: foreground mode (`cgdrop --cgroup …`) and `cgdrop run`.
//! A session loads and attaches the policy, optionally runs a command inside
//! the cgroup, shows counters every interval, reloads the rules file on SIGHUP,
//! notices the cgroup being removed, and detaches when it ends (SIGINT/SIGTERM,
//! or the command's exit); then it prints the summary.
use std::{
    ffi::OsString,
    fs::{self, OpenOptions},
    io::IsTerminal,
    mem::MaybeUninit,
    os::{fd::AsRawFd, unix::process::CommandExt, unix::process::ExitStatusExt},
    path::Path,
    process::{Child, Command, ExitStatus},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use libbpf_rs::OpenObject;
use nix::{sys::signal::Signal, unistd::Pid};
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::{exfiltrator::WithOrigin, SignalsInfo},
    low_level::siginfo::Cause,
};

use crate::{
    cgroup::{self, Cgroup},
    cli::{ForegroundArgs, PolicyArgs, RunArgs},
    loader,
    policy::Policy,
    preflight,
    rulemaps::Installed,
    rules,
    skel::CgdropSkel,
    stats::{self, Stats},
};

enum Event {
    /// SIGINT or SIGTERM (or SIGHUP without a rules file). `sent`: by a
    /// process with kill(2), rather than by the terminal to the whole
    /// foreground process group (which the command is part of already).
    Stop { signal: i32, sent: bool },
    /// SIGHUP with a rules file: re-read it.
    Reload,
    /// The command exited.
    Exited(ExitStatus),
}

/// How long the command gets to exit after a forwarded signal before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a stop signal's event may lag behind its flag.
const LOST_SIGNAL_GRACE: Duration = Duration::from_millis(100);
/// How often the session checks that its cgroup still exists.
const CGROUP_CHECK: Duration = Duration::from_millis(250);
/// Rule sets from this size on get progress messages.
const MANY_RULES: usize = 10_000;

/// The command a session runs inside the cgroup.
pub enum Cmd<'a> {
    /// `--run`: through `sh -c`.
    Shell(&'a str),
    /// `cgdrop run`: argv as given, optionally as another user.
    Argv { argv: &'a [OsString], user: Option<&'a nix::unistd::User> },
}

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
    let outcome = session(&args.policy, policy, &cgroup, cmd, args.interval)?;
    outcome.print(&cgroup, args.json)?;
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
    let outcome = session(&args.policy, policy, &cgroup, Some(cmd), args.interval);
    // Whatever the command left running goes with the cgroup, success or not.
    let cleaned = cgroup.kill_all();
    let outcome = outcome?;
    cleaned?;
    outcome.print(&cgroup, args.json)?;
    outcome.explain();
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
        let removed = cgroup::locate(&path, false)
            .and_then(Cgroup::open)
            .and_then(|stale| stale.kill_all())
            .and_then(|()| fs::remove_dir(&path).context("rmdir"));
        if let Err(e) = removed {
            if path.exists() {
                eprintln!("cgdrop: could not remove {} (left by a killed cgdrop run): {e:#}", path.display());
            }
        }
    }
    Ok(())
}

/// Fails unless the command can be found, before anything is attached.
fn check_command(argv: &[OsString]) -> Result<()> {
    let name = argv.first().context("no command given")?;
    let found = if Path::new(name).components().count() > 1 {
        Path::new(name).is_file()
    } else {
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
    };
    if !found {
        bail!("command not found: {}: give a path or a program on PATH", Path::new(name).display());
    }
    Ok(())
}

/// A name or a numeric uid.
fn lookup_user(name: &str) -> Result<nix::unistd::User> {
    let found = match name.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(name),
    };
    found
        .with_context(|| format!("looking up user '{name}'"))?
        .with_context(|| format!("unknown user '{name}': `getent passwd` lists the users of this host"))
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

/// What a session ends with.
struct Outcome {
    stats: Stats,
    /// The command's status, if there was a command.
    status: Option<ExitStatus>,
    policy: Policy,
}

impl Outcome {
    fn print(&self, cgroup: &Cgroup, json: bool) -> Result<()> {
        if json {
            let summary =
                stats::Summary { cgroup: &cgroup.path.to_string_lossy(), cgroup_id: cgroup.id, stats: self.stats };
            println!("{}", serde_json::to_string(&summary)?);
        } else {
            eprint!("cgdrop: detached from {}\n{}", cgroup.path.display(), self.stats.table());
        }
        Ok(())
    }

    /// One line saying what cgdrop did to the command's traffic, when it did
    /// anything: a failing command is then explained.
    fn explain(&self) {
        let s = &self.stats;
        let rejected = s.connect.rejected + s.sendmsg.rejected;
        let dropped = s.ingress.dropped_packets + s.egress.dropped_packets;
        if rejected == 0 && dropped == 0 {
            return;
        }
        let verb = if self.policy.dry_run { "would have been" } else { "was" };
        eprintln!(
            "cgdrop: the command's network traffic {verb} blocked: {} connect() and {} sendto() calls rejected with EPERM, {dropped} packets dropped ({})",
            s.connect.rejected,
            s.sendmsg.rejected,
            self.policy.describe()
        );
    }
}

/// Loads and attaches the policy, runs the command, waits, detaches.
fn session(
    args: &PolicyArgs,
    mut policy: Policy,
    cgroup: &Cgroup,
    cmd: Option<Cmd<'_>>,
    interval: Option<u64>,
) -> Result<Outcome> {
    let (tx, rx) = mpsc::channel();
    let stopped = forward_signals(tx.clone(), policy.rules_file.is_some())?;

    let mut object = MaybeUninit::<OpenObject>::uninit();
    let mut skel = loader::load(&policy, &mut object)?;
    let mut installed = Installed::new();
    let started = Instant::now();
    // Progress on a terminal only: elsewhere, an error must stay one line.
    let progress = policy.rules.len() >= MANY_RULES && std::io::stderr().is_terminal();
    if progress {
        eprintln!("cgdrop: writing {} rules into the kernel…", policy.rules.len());
    }
    // Rules go in before the programs are attached: the first packet sees them.
    loader::apply_rules(&mut skel, &mut installed, &policy)?;
    if progress {
        eprintln!("cgdrop: {} rules in force ({:.2} s)", policy.rules.len(), started.elapsed().as_secs_f64());
    }
    let links = loader::attach(&skel, cgroup, &policy)?;
    eprintln!(
        "cgdrop: attached to cgroup {} (id {}): dropping {}{}; {}",
        cgroup.path.display(),
        cgroup.id,
        policy.describe(),
        if policy.rejects_calls() { ", connect() and sendto() rejected with EPERM" } else { "" },
        if cmd.is_some() { "running the command" } else { "Ctrl-C to detach" }
    );

    let child = match cmd {
        Some(cmd) => {
            let child = spawn_in_cgroup(&cmd, cgroup)?;
            let pid = Pid::from_raw(child.id() as i32);
            let tx = tx.clone();
            thread::spawn(move || wait_child(child, tx));
            Some(pid)
        }
        None => None,
    };
    drop(tx);

    let mut view = LiveView::new(interval.map(Duration::from_secs));
    let status = wait_events(&rx, &stopped, child, &mut view, cgroup, |tick| match tick {
        Tick::Report => {
            loader::sweep_expired(&skel, &mut installed)?;
            Ok(Some(stats::read(&skel.maps.stats)?))
        }
        Tick::Reload => {
            reload(args, &mut policy, &mut skel, &mut installed);
            Ok(None)
        }
    })?;

    let totals = stats::read(&skel.maps.stats)?;
    drop(links);
    Ok(Outcome { stats: totals, status, policy })
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

/// Sends SIGINT and SIGTERM (and SIGHUP, unless it means reload) to `tx` as
/// events. Also returns a flag those signals set: signal-hook's siginfo
/// delivery was seen to lose a signal that arrived right after start-up (one
/// in several hundred runs of tests/faults.rs), and the flag cannot be lost.
fn forward_signals(tx: mpsc::Sender<Event>, hup_reloads: bool) -> Result<Arc<AtomicBool>> {
    let stopped = Arc::new(AtomicBool::new(false));
    let stops: &[i32] = if hup_reloads { &[SIGINT, SIGTERM] } else { &[SIGINT, SIGTERM, SIGHUP] };
    for &sig in stops {
        signal_hook::flag::register(sig, Arc::clone(&stopped)).context("installing signal handlers")?;
    }
    let mut signals =
        SignalsInfo::<WithOrigin>::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    thread::spawn(move || {
        for origin in signals.forever() {
            let event = if origin.signal == SIGHUP && hup_reloads {
                Event::Reload
            } else {
                Event::Stop { signal: origin.signal, sent: matches!(origin.cause, Cause::Sent(_)) }
            };
            // The receiver lives until the session ends; a send after that is moot.
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    Ok(stopped)
}

/// What the event loop asks of the session besides waiting.
enum Tick {
    /// An interval passed: return the counters to show.
    Report,
    /// SIGHUP: reload the rules file.
    Reload,
}

/// The `--interval` display: on a terminal a block redrawn in place, else a
/// line per interval. Both show drops per second since the last report.
struct LiveView {
    interval: Option<Duration>,
    next: Option<Instant>,
    started: Instant,
    previous: Option<(Stats, Instant)>,
    tty: bool,
    /// Lines of the block drawn last (to move back over on a terminal).
    drawn: usize,
}

impl LiveView {
    fn new(interval: Option<Duration>) -> Self {
        let now = Instant::now();
        Self {
            interval,
            next: interval.map(|i| now + i),
            started: now,
            previous: None,
            tty: std::io::stderr().is_terminal(),
            drawn: 0,
        }
    }

    fn show(&mut self, s: Stats) {
        let now = Instant::now();
        let (before, since) = self.previous.unwrap_or((Stats::default(), self.started));
        let secs = now.duration_since(since).as_secs_f64().max(1e-3);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let rate_in = rate(s.ingress.dropped_packets, before.ingress.dropped_packets);
        let rate_out = rate(s.egress.dropped_packets, before.egress.dropped_packets);
        let elapsed = now.duration_since(self.started).as_secs();
        if self.tty {
            let block = [
                format!("cgdrop: attached for {}", crate::rulecmd::format_secs(elapsed)),
                format!(
                    "  ingress  {:>10.1} drops/s  {:>12} dropped of {}",
                    rate_in, s.ingress.dropped_packets, s.ingress.packets
                ),
                format!(
                    "  egress   {:>10.1} drops/s  {:>12} dropped of {}",
                    rate_out, s.egress.dropped_packets, s.egress.packets
                ),
                format!(
                    "  connect  {} of {} rejected   sendmsg {} of {} rejected",
                    s.connect.rejected, s.connect.attempts, s.sendmsg.rejected, s.sendmsg.attempts
                ),
            ];
            // Back over the previous block (cursor up, clear to the end), then draw.
            let mut out = if self.drawn > 0 { format!("\x1b[{}A\x1b[J", self.drawn) } else { String::new() };
            for line in &block {
                out += line;
                out += "\n";
            }
            eprint!("{out}");
            self.drawn = block.len();
        } else {
            eprintln!(
                "cgdrop: {elapsed}s ingress dropped {} of {} ({rate_in:.1}/s), egress dropped {} of {} ({rate_out:.1}/s), connect rejected {} of {}, sendmsg rejected {} of {}",
                s.ingress.dropped_packets,
                s.ingress.packets,
                s.egress.dropped_packets,
                s.egress.packets,
                s.connect.rejected,
                s.connect.attempts,
                s.sendmsg.rejected,
                s.sendmsg.attempts
            );
        }
        self.previous = Some((s, now));
        self.next = self.next.zip(self.interval).map(|(at, i)| at + i);
    }
}

/// Waits for the end of the session: a stop signal (with no command), the
/// command's exit, or the cgroup's removal (an error). Reports every interval
/// and reloads on SIGHUP through `on_tick`. A stop signal that a process sent
/// is forwarded to the command (the terminal already sent Ctrl-C to it); the
/// command then has KILL_GRACE before SIGKILL. Returns the command's status.
fn wait_events(
    rx: &mpsc::Receiver<Event>,
    stopped: &AtomicBool,
    child: Option<Pid>,
    view: &mut LiveView,
    cgroup: &Cgroup,
    mut on_tick: impl FnMut(Tick) -> Result<Option<Stats>>,
) -> Result<Option<ExitStatus>> {
    let mut kill_at: Option<Instant> = None;
    let mut next_check = Instant::now() + CGROUP_CHECK;
    // When the stop flag was first seen without its Stop event.
    let mut flag_only_since: Option<Instant> = None;
    loop {
        let wake = [view.next, kill_at, Some(next_check)].into_iter().flatten().min().unwrap_or(next_check);
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Event::Exited(status)) => return Ok(Some(status)),
            Ok(Event::Reload) => {
                on_tick(Tick::Reload)?;
            }
            Ok(Event::Stop { signal, sent }) => {
                let Some(pid) = child else { return Ok(None) };
                // The policy stays in force until the command has gone.
                if sent {
                    let sig = Signal::try_from(signal).unwrap_or(Signal::SIGTERM);
                    // Not reaped before Exited arrives, so the pid is still the command's.
                    let _ = nix::sys::signal::kill(pid, sig);
                }
                kill_at.get_or_insert(Instant::now() + KILL_GRACE);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Only when no sender is left, which cannot happen while the signal
            // thread holds one; treat it like a stop.
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
        }
        let now = Instant::now();
        // A stop signal whose event never came (see forward_signals): after a
        // grace for the event, stop without forwarding it.
        if stopped.load(Ordering::Relaxed) && kill_at.is_none() {
            let since = *flag_only_since.get_or_insert(now);
            if now.duration_since(since) >= LOST_SIGNAL_GRACE {
                if child.is_none() {
                    return Ok(None);
                }
                kill_at = Some(now + KILL_GRACE);
            }
        }
        if kill_at.is_some_and(|at| now >= at) {
            if let Some(pid) = child {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
            kill_at = None;
        }
        if view.next.is_some_and(|at| now >= at) {
            if let Some(s) = on_tick(Tick::Report)? {
                view.show(s);
            }
        }
        if now >= next_check {
            if !cgroup.exists() {
                bail!(
                    "cgroup {} was removed while cgdrop was attached: the programs went with it; nothing is filtered now",
                    cgroup.path.display()
                );
            }
            next_check = now + CGROUP_CHECK;
        }
    }
}

fn wait_child(mut child: Child, tx: mpsc::Sender<Event>) {
    // A wait() error leaves no status to report; 127 like a shell's failure.
    let status = child.wait().unwrap_or_else(|_| ExitStatus::from_raw(127 << 8));
    let _ = tx.send(Event::Exited(status));
}

/// Starts the command already inside the cgroup: between fork and exec the
/// child moves itself in (writes "0" to cgroup.procs), so its first socket is
/// filtered, then drops to the --user's groups and ids (after the move, which
/// needs root).
fn spawn_in_cgroup(cmd: &Cmd<'_>, cgroup: &Cgroup) -> Result<Child> {
    let procs = OpenOptions::new()
        .write(true)
        .open(cgroup.procs_path())
        .with_context(|| format!("opening {}", cgroup.procs_path().display()))?;
    let fd = procs.as_raw_fd();
    let (mut command, what, user) = match cmd {
        Cmd::Shell(line) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(line);
            (c, (*line).to_string(), None)
        }
        Cmd::Argv { argv, user } => {
            let (first, rest) = argv.split_first().context("no command given")?;
            let mut c = Command::new(first);
            c.args(rest);
            (c, argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "), *user)
        }
    };
    let ids = match user {
        Some(u) => {
            let name = std::ffi::CString::new(u.name.as_str()).context("user name contains NUL")?;
            let groups =
                nix::unistd::getgrouplist(&name, u.gid).with_context(|| format!("reading the groups of {}", u.name))?;
            command.env("HOME", &u.dir).env("USER", &u.name).env("LOGNAME", &u.name);
            Some((u.uid.as_raw(), u.gid.as_raw(), groups.iter().map(|g| g.as_raw()).collect::<Vec<_>>()))
        }
        None => None,
    };
    let parent = std::process::id() as nix::libc::pid_t;
    // SAFETY: the closure only makes raw syscalls (write, setgroups, setgid,
    // setuid, prctl, getppid) on memory prepared before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let last = std::io::Error::last_os_error;
            if nix::libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(last());
            }
            if let Some((uid, gid, groups)) = &ids {
                if nix::libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || nix::libc::setgid(*gid) != 0
                    || nix::libc::setuid(*uid) != 0
                {
                    return Err(last());
                }
            }
            // Should cgdrop be killed (SIGKILL detaches its policy), the
            // command must not run on unfiltered: it dies with cgdrop. Set
            // after setuid, which clears it; then check cgdrop is still there.
            if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL as nix::libc::c_ulong, 0, 0, 0) != 0 {
                return Err(last());
            }
            if nix::libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = command.spawn().with_context(|| format!("running `{what}` in cgroup {}", cgroup.path.display()))?;
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
    fn unknown_user() {
        let err = lookup_user("cgdrop-no-such-user").unwrap_err();
        assert!(format!("{err:#}").contains("unknown user 'cgdrop-no-such-user'"), "{err:#}");
        assert_eq!(lookup_user("0").unwrap().name, "root");
    }
}
