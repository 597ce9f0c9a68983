//! The session loop of an attached policy (foreground mode and `cgdrop run`):
//! loads and attaches, starts the command, then waits for the end — a stop
//! signal, the command's exit, or the cgroup's removal — while showing the
//! live view, sweeping expired rules and reloading the rules file on SIGHUP.
//! It detaches when it ends and returns the counters.
use std::{
    io::IsTerminal,
    mem::MaybeUninit,
    os::unix::process::ExitStatusExt,
    process::{Child, ExitStatus},
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
    host::{
        cgroup::Cgroup,
        process::{spawn_in_cgroup, Cmd},
    },
    kernel::{
        loader,
        rulemaps::Installed,
        skel::CgdropSkel,
        stats::{self, Stats},
    },
    output::{self, Rates, Redraw},
    policy::Policy,
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

/// What a session ends with.
pub struct Outcome {
    pub stats: Stats,
    /// The command's status, if there was a command.
    pub status: Option<ExitStatus>,
    pub policy: Policy,
}

/// Loads and attaches the policy, runs the command, waits, detaches.
pub fn session(mut policy: Policy, cgroup: &Cgroup, cmd: Option<Cmd<'_>>, interval: Option<u64>) -> Result<Outcome> {
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
        output::describe(&policy),
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
            reload(&mut policy, &mut skel, &mut installed);
            Ok(None)
        }
    })?;

    let totals = stats::read(&skel.maps.stats)?;
    drop(links);
    Ok(Outcome { stats: totals, status, policy })
}

/// Re-reads the rules file and swaps the rules in; on any error the old rules
/// stay in force and the error is printed.
fn reload(policy: &mut Policy, skel: &mut CgdropSkel<'_>, installed: &mut Installed) {
    let Some(next) = policy.reloaded() else { return };
    let path = policy.rules_file.clone().unwrap_or_default();
    let result = next.and_then(|next| loader::apply_rules(skel, installed, &next).map(|()| next));
    match result {
        Ok(next) => {
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
    redraw: Redraw,
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
            redraw: Redraw::default(),
        }
    }

    fn show(&mut self, s: Stats) {
        let now = Instant::now();
        let (before, since) = self.previous.unwrap_or((Stats::default(), self.started));
        let rates = Rates::between((&before, since), (&s, now));
        let elapsed = now.duration_since(self.started).as_secs();
        if self.tty {
            eprint!("{}", self.redraw.frame(&output::live_block(&s, &rates, elapsed)));
        } else {
            eprint!("{}", output::live_line(&s, &rates, elapsed));
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
