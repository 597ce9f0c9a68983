//! The session loop of an attached policy (foreground mode and `cgdrop run`):
//! loads and attaches, starts the command, then waits for the end — a stop
//! signal, the command's exit, or the cgroup's removal — while showing the
//! live view, sweeping expired rules and reloading the rules file on SIGHUP.
//! It detaches when it ends and returns the counters.
use std::{
    io::IsTerminal,
    os::fd::AsFd,
    process::ExitStatus,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::{exfiltrator::WithOrigin, SignalsInfo},
    low_level::siginfo::Cause,
};

use crate::{
    eventlog::Logger,
    host::{
        cgroup::Cgroup,
        process::{spawn_in_cgroup, Child, Cmd},
        sessions,
    },
    kernel::{
        config::Config,
        loader,
        rulemaps::Installed,
        skel::CgdropSkel,
        sockets,
        stats::{self, Stats},
    },
    output::{self, EventFormat, Rates, Redraw},
    pins::runs::RunPins,
    policy::Policy,
};

enum Event {
    /// SIGINT or SIGTERM (or SIGHUP without a rules file). `sent`: by a
    /// process with kill(2), rather than by the terminal to the whole
    /// foreground process group (which the command is part of already).
    Stop { signal: i32, sent: bool },
    /// SIGHUP with a rules file: re-read it (in a thread of its own: a slow
    /// file must not delay signals or the command's exit).
    Reload,
    /// The rules file, read again.
    Reloaded(Result<Policy>),
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
    /// Processes left in a cgroup cgdrop does not own, unfiltered from now on.
    pub left_unfiltered: usize,
    /// The most blocked destinations among the recorded events, with their counts.
    pub top_blocked: Vec<(String, u64)>,
}

/// Loads and attaches the policy, runs the command, waits, then ends.
///
/// On a cgroup cgdrop owns (`run`, `--create`) the links are also pinned
/// before the command starts, so that the policy outlives a killed cgdrop
/// for as long as a process is left; the end is then always: kill the whole
/// tree, wait until it is empty, remove the sub-cgroups, read the counters,
/// detach (descriptors and pins). On any other cgroup, detaching is the end.
pub fn session(
    mut policy: Policy,
    cgroup: &Cgroup,
    cmd: Option<Cmd<'_>>,
    interval: Option<u64>,
    log: Option<EventFormat>,
    tally: bool,
) -> Result<Outcome> {
    let (tx, rx) = mpsc::channel();
    let stopped = forward_signals(tx.clone(), policy.rules_file.is_some())?;

    let mut object = loader::Objects::new();
    // Only a rules file (SIGHUP) changes a session's rules.
    let mut skel = loader::load(&policy, &mut object, policy.rules_file.is_some())?;
    let mut installed = Installed::new();
    // Registered before it says it is attached, so that `status` right after
    // sees it; on a thread of its own beside the rules and the links: the
    // file is made on the root filesystem (up to 0.6 ms measured here, as
    // long as the links). Dropped unjoined on an error: the thread then removes it.
    let described = output::describe(&policy);
    let registering = {
        let (kind, path, id, what) =
            (if tally { "run" } else { "foreground" }, cgroup.path.clone(), cgroup.id, described.clone());
        crate::host::cpus::spawn_beside(move || sessions::register(kind, &path, id, &what))
    };
    let started = Instant::now();
    // Progress on a terminal only: elsewhere, an error must stay one line.
    let progress = policy.rules.len() >= MANY_RULES && std::io::stderr().is_terminal();
    if progress {
        crate::say!("cgdrop: writing {} rules into the kernel…", policy.rules.len());
    }
    // Rules go in before the programs are attached: the first packet sees them.
    loader::apply_rules(&mut skel, &mut installed, &policy)?;
    if progress {
        crate::say!("cgdrop: {} rules in force ({:.2} s)", policy.rules.len(), started.elapsed().as_secs_f64());
    }
    let links = loader::attach(&skel, cgroup, &policy);
    let _registered = registering.join().ok().flatten();
    let mut links = links?;
    let pins = if cgroup.owned() { Some(RunPins::pin(&mut skel, &mut links, cgroup)?) } else { None };
    crate::say!(
        "cgdrop: attached to cgroup {} (id {}): dropping {}{}; {}",
        cgroup.path.display(),
        cgroup.id,
        described,
        output::calls_note(&policy),
        if cmd.is_some() { "running the command" } else { "Ctrl-C to detach" }
    );
    if let Some(line) = output::rules_line(&policy) {
        crate::say!("{line}");
    }

    // A fresh cgroup (`run`) has no sockets from before.
    if !tally {
        let shared = sockets::Shared {
            rules_v4: skel.maps.cgdrop_rules_v4.as_fd(),
            rules_v6: skel.maps.cgdrop_rules_v6.as_fd(),
            hosts_v4: skel.maps.cgdrop_hosts_v4.as_fd(),
            sieve: skel.maps.cgdrop_sieve.as_fd(),
            owners: skel.maps.cgdrop_owners.as_fd(),
            killing: skel.maps.cgdrop_killing.as_fd(),
            has_rules: skel.maps.bss_data.as_deref().map_or(0, |b| b.has_rules),
            has_port_rules: skel.maps.bss_data.as_deref().map_or(0, |b| b.has_port_rules),
            unmatched_pass: skel.maps.bss_data.as_deref().map_or(0, |b| b.unmatched_pass),
        };
        let result = sockets::scan(&Config::of(&policy), &shared, cgroup.id, policy.kill_existing);
        if let Some(line) = sockets::describe(&result, policy.kill_existing, policy.dry_run) {
            crate::say!("{line}");
        }
    }
    // Events are read when they are shown, or tallied for the summary.
    let logger = if (log.is_some() || tally) && policy.log_rate > 0 { Some(Logger::start(&skel, log)?) } else { None };
    let child = match cmd {
        Some(cmd) => match spawn_in_cgroup(&cmd, cgroup) {
            Ok(child) => {
                let child = Arc::new(child);
                let (waited, tx) = (Arc::clone(&child), tx.clone());
                thread::spawn(move || {
                    // The receiver lives until the session ends; a send after that is moot.
                    let _ = tx.send(Event::Exited(waited.wait()));
                });
                Some(child)
            }
            Err(e) => {
                end(cgroup, pins, links);
                return Err(e);
            }
        },
        None => None,
    };

    let mut view = LiveView::new(interval.map(Duration::from_secs));
    // What a reload starts from: the command line's part never changes.
    let base = policy.without_rules();
    let mut sweep_at = next_sweep(&installed);
    let waited = wait_events(&rx, &tx, &stopped, child.as_deref(), &mut view, cgroup, &base, &mut sweep_at, |tick| {
        let shown = match tick {
            Tick::Report => {
                loader::sweep_expired(&skel, &mut installed)?;
                Some(stats::read(&skel.maps.cgdrop_stats)?)
            }
            Tick::Sweep => {
                loader::sweep_expired(&skel, &mut installed)?;
                None
            }
            Tick::Apply(next) => {
                apply_reload(&mut policy, next, &mut skel, &mut installed);
                None
            }
        };
        Ok((shown, next_sweep(&installed)))
    });
    // An owned cgroup is emptied while the policy is still in force.
    let emptied = if cgroup.owned() { cgroup.kill_all() } else { Ok(()) };
    let totals = stats::read(&skel.maps.cgdrop_stats);
    let top_blocked = logger.map(|l| l.finish(cgroup.id)).unwrap_or_default();
    let left_unfiltered = if cgroup.owned() { 0 } else { cgroup.process_count() };
    // Should processes be left, the pins stay and keep them filtered until
    // `cgdrop cleanup` (or the next cgdrop command) finishes the job.
    if emptied.is_ok() {
        end(cgroup, pins, links);
    }
    let status = waited?;
    emptied?;
    Ok(Outcome { stats: totals?, status, policy, left_unfiltered, top_blocked })
}

/// Detaches: cgdrop's link descriptors and, on an owned cgroup, the pins.
fn end(cgroup: &Cgroup, pins: Option<RunPins>, links: Vec<(crate::kernel::loader::Hook, libbpf_rs::Link)>) {
    drop(links);
    if let Some(pins) = pins {
        if let Err(e) = pins.remove() {
            output::warn(format_args!("detaching from {}: {e:#} (`cgdrop cleanup` retries)", cgroup.path.display()));
        }
    }
}

/// When the next temporary rule expires: it is deleted then, so that expired
/// rules never pile up in the tries (the programs look past a few of them,
/// then fail closed).
fn next_sweep(installed: &Installed) -> Option<Instant> {
    let at_ns = installed.next_expiry()?;
    let now_ns = crate::kernel::rulemaps::boot_time_ns().ok()?;
    // A millisecond late rather than early: the rule has expired when it is swept.
    Some(Instant::now() + Duration::from_nanos(at_ns.saturating_sub(now_ns)) + Duration::from_millis(1))
}

/// Swaps in the rules of a re-read rules file; on any error the old rules
/// stay in force and the error is printed.
fn apply_reload(policy: &mut Policy, next: Result<Policy>, skel: &mut CgdropSkel<'_>, installed: &mut Installed) {
    let path = policy.rules_file.clone().unwrap_or_default();
    let result = next.and_then(|next| loader::apply_rules(skel, installed, &next).map(|()| next));
    match result {
        Ok(next) => {
            *policy = next;
            crate::say!("cgdrop: reloaded {}: {} rules in force", path.display(), policy.rules.len());
        }
        Err(e) => crate::say!("cgdrop: reloading {} failed, the previous rules stay in force: {e:#}", path.display()),
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
    /// A temporary rule expired: delete it.
    Sweep,
    /// The rules file was read again: apply it.
    Apply(Result<Policy>),
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
            crate::say_raw!("{}", self.redraw.frame(&output::live_block(&s, &rates, elapsed)));
        } else {
            crate::say_raw!("{}", output::live_line(&s, &rates, elapsed));
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
#[allow(clippy::too_many_arguments)] // the loop's whole state, passed once
fn wait_events(
    rx: &mpsc::Receiver<Event>,
    tx: &mpsc::Sender<Event>,
    stopped: &AtomicBool,
    child: Option<&Child>,
    view: &mut LiveView,
    cgroup: &Cgroup,
    policy: &Policy,
    sweep_at: &mut Option<Instant>,
    mut on_tick: impl FnMut(Tick) -> Result<(Option<Stats>, Option<Instant>)>,
) -> Result<Option<ExitStatus>> {
    let mut kill_at: Option<Instant> = None;
    let mut next_check = Instant::now() + CGROUP_CHECK;
    // When the stop flag was first seen without its Stop event.
    let mut flag_only_since: Option<Instant> = None;
    loop {
        let wake = [view.next, kill_at, *sweep_at, Some(next_check)].into_iter().flatten().min().unwrap_or(next_check);
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Event::Exited(status)) => return Ok(Some(status)),
            Ok(Event::Reload) => {
                let (current, tx) = (policy.clone(), tx.clone());
                thread::spawn(move || {
                    if let Some(next) = current.reloaded() {
                        let _ = tx.send(Event::Reloaded(next));
                    }
                });
            }
            Ok(Event::Reloaded(next)) => {
                *sweep_at = on_tick(Tick::Apply(next))?.1;
            }
            Ok(Event::Stop { signal, sent }) => {
                let Some(child) = child else { return Ok(None) };
                // The policy stays in force until the command has gone.
                if sent {
                    child.signal(Signal::try_from(signal).unwrap_or(Signal::SIGTERM));
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
            if let Some(child) = child {
                child.signal(Signal::SIGKILL);
            }
            kill_at = None;
        }
        if sweep_at.is_some_and(|at| now >= at) {
            *sweep_at = on_tick(Tick::Sweep)?.1;
        }
        if view.next.is_some_and(|at| now >= at) {
            let (shown, next) = on_tick(Tick::Report)?;
            *sweep_at = next;
            if let Some(s) = shown {
                view.show(s);
            }
        }
        if now >= next_check {
            if let Some((name, index)) = &policy.iface {
                if nix::net::if_::if_nametoindex(name.as_str()).ok() != Some(*index) {
                    bail!(
                        "interface {name} was removed or renumbered while cgdrop was attached: the policy no longer matches it; attach again"
                    );
                }
            }
            if !cgroup.still_there() {
                let how = if cgroup.path.exists() { "removed and created again" } else { "removed" };
                bail!(
                    "cgroup {} was {how} while cgdrop was attached: the programs went with it; nothing there is filtered now",
                    cgroup.path.display()
                );
            }
            next_check = now + CGROUP_CHECK;
        }
    }
}
