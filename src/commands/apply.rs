//! `cgdrop apply [--check] [--prune] [--watch] FILE|DIR…`: makes the pinned
//! policies what the files declare — a plan (`+ ~ - = ?`), then the changes —
//! and with `--watch` keeps it so as cgroups come and go.
use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    cli::ApplyArgs,
    declared::{self, Declared},
    host::{
        cgroup::{self, Location},
        preflight,
        watch::TreeWatch,
    },
    kernel::{config::Config, loader, rulemaps},
    output,
    pins::pinned::{Health, Pinned},
    rules::Action,
};

use super::pin::{self, Origin};

/// `--check`'s exit status when changes are pending (0: none; 1 and 2 are
/// errors and usage errors).
pub const CHANGES_PENDING: u8 = 3;

/// One line of the plan.
enum Step {
    /// Pin the policy on a cgroup that has none.
    Add { decl: usize, location: Location, path: PathBuf },
    /// Replace the cgroup's pinned policy (atomically), for these reasons.
    Replace { decl: usize, location: Location, path: PathBuf, why: String },
    /// Already as declared.
    Keep { decl: usize, path: String },
    /// Unpin: made by `apply` and no longer declared, or left on an old cgroup.
    Remove { pinned: Box<Pinned>, name: String, why: String },
    /// The target has no cgroup now (a stopped unit, a missing cgroup).
    Wait { decl: usize, why: String },
}

impl Step {
    fn pending(&self) -> bool {
        matches!(self, Step::Add { .. } | Step::Replace { .. } | Step::Remove { .. })
    }

    fn line(&self, decls: &[Declared]) -> String {
        match self {
            Step::Add { decl, path, .. } => {
                let d = &decls[*decl];
                format!("+ {}: {} → {}: {}", d.name, d.target, path.display(), output::describe(&d.policy))
            }
            Step::Replace { decl, path, why, .. } => {
                let d = &decls[*decl];
                format!("~ {}: {} → {}: {why}", d.name, d.target, path.display())
            }
            Step::Keep { decl, path } => format!("= {}: {} → {path}", decls[*decl].name, decls[*decl].target),
            Step::Remove { pinned, name, why } => format!("- {name}: {}: {why}", pinned.cgroup_path),
            Step::Wait { decl, why } => format!("? {}: waiting: {why}", decls[*decl].name),
        }
    }
}

/// `cgdrop apply`; returns the exit status.
pub fn run(args: &ApplyArgs, verbose: bool) -> Result<u8> {
    let decls = declared::read(&args.paths)?;
    preflight::check()?;
    loader::set_verbose(verbose);
    if args.watch {
        return watch(args, decls);
    }
    let steps = plan(&decls, args.prune)?;
    for s in &steps {
        crate::outln!("{}", s.line(&decls));
    }
    let pending = steps.iter().filter(|s| s.pending()).count();
    if args.check {
        crate::say!("cgdrop: {pending} change(s) pending");
        return Ok(if pending > 0 { CHANGES_PENDING } else { 0 });
    }
    let done = execute(&decls, steps)?;
    crate::say!("cgdrop: applied {done} change(s)");
    Ok(0)
}

/// Compares the declared policies with the pinned ones; changes nothing.
fn plan(decls: &[Declared], prune: bool) -> Result<Vec<Step>> {
    let root = cgroup::cgroup2_root()?;
    let mut pins = Pinned::list()?;
    let mut steps = Vec::new();
    let mut claimed: BTreeSet<u64> = BTreeSet::new();
    for (i, d) in decls.iter().enumerate() {
        let path = match d.target.resolve() {
            Ok(p) => cgroup::resolve(&p, &root)?,
            Err(e) => {
                steps.push(Step::Wait { decl: i, why: format!("{e:#}") });
                continue;
            }
        };
        if !path.exists() && !d.create {
            steps.push(Step::Wait { decl: i, why: format!("cgroup {} does not exist (yet)", path.display()) });
            continue;
        }
        let location = cgroup::locate(&path, d.create, false)
            .map_err(|e| anyhow::anyhow!("{}: policy {}: {e:#}", d.at, d.name))?;
        let id = fs::metadata(&path).map(|m| m.ino()).ok();
        let existing = id.and_then(|id| pins.iter().position(|p| p.id == id));
        let Some(at) = existing else {
            steps.push(Step::Add { decl: i, location, path });
            continue;
        };
        claimed.insert(pins[at].id);
        let why = differences(d, &pins[at])?;
        if why.is_empty() {
            steps.push(Step::Keep { decl: i, path: pins[at].cgroup_path.clone() });
        } else {
            steps.push(Step::Replace { decl: i, location, path, why: why.join("; ") });
        }
    }
    // Policies `apply` pinned that no declaration holds now: left on an old
    // cgroup of a declared target (restarted unit), or no longer declared.
    let mut i = 0;
    while i < pins.len() {
        let p = &pins[i];
        let declared = decls.iter().any(|d| d.name == p.applied_as);
        let stale = declared && !claimed.contains(&p.id);
        if !p.applied_as.is_empty() && !claimed.contains(&p.id) && (stale || prune) {
            let why = if stale {
                format!("unpin (left on an old cgroup: {})", p.health()?)
            } else {
                "unpin (no file declares it)".to_string()
            };
            let pinned = Box::new(pins.remove(i));
            let name = pinned.applied_as.clone();
            steps.push(Step::Remove { pinned, name, why });
        } else {
            i += 1;
        }
    }
    Ok(steps)
}

/// Why a pinned policy is not the declared one; empty if it is.
fn differences(d: &Declared, p: &Pinned) -> Result<Vec<String>> {
    let mut why = Vec::new();
    if p.applied_as != d.name {
        why.push(if p.applied_as.is_empty() {
            "take over a policy pinned by hand".to_string()
        } else {
            format!("take over from policy {}", p.applied_as)
        });
    }
    if p.applied_as == d.name && p.target != d.target.to_string() {
        why.push(format!("target was {}", p.target));
    }
    let health = p.health()?;
    if health != Health::Ok {
        why.push(format!("it is {health}"));
    }
    let old = p.config()?;
    let new = Config::of(&d.policy);
    why.extend(config_changes(&old, &new));
    let now_ns = rulemaps::boot_time_ns()?;
    let installed = p.rule_maps().read_all()?;
    let live = |e: &&rulemaps::Entry| e.expires_ns == 0 || e.expires_ns > now_ns;
    let have: BTreeSet<(crate::rules::Target, bool)> = installed
        .entries
        .iter()
        .filter(live)
        .filter(|e| !(e.live && d.keep_live_rules))
        .map(|e| (e.target, e.action == Action::Allow))
        .collect();
    let want: BTreeSet<(crate::rules::Target, bool)> =
        d.policy.rules.iter().map(|r| (r.target, r.action == Action::Allow)).collect();
    if have != want {
        let added = want.difference(&have).count();
        let removed = have.difference(&want).count();
        why.push(format!("rules +{added} -{removed}"));
    }
    Ok(why)
}

fn config_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let dirs = |c: &Config| output::directions(c.ingress, c.egress);
    if (old.ingress, old.egress) != (new.ingress, new.egress) {
        out.push(format!("direction {} → {}", dirs(old), dirs(new)));
    }
    let iface = |c: &Config| c.iface.clone().unwrap_or_else(|| "every interface".into());
    if old.iface != new.iface || old.ifindex != new.ifindex || old.netns_cookie != new.netns_cookie {
        out.push(format!("iface {} → {}", iface(old), iface(new)));
    }
    let port = |c: &Config| if c.port == 0 { "every port".to_string() } else { c.port.to_string() };
    if old.port != new.port {
        out.push(format!("port {} → {}", port(old), port(new)));
    }
    if old.silent != new.silent {
        out.push(format!("silent {} → {}", old.silent, new.silent));
    }
    if old.dry_run != new.dry_run {
        out.push(format!("dry_run {} → {}", old.dry_run, new.dry_run));
    }
    if old.events_per_cpu != new.events_per_cpu {
        out.push("log_rate changed".to_string());
    }
    out
}

/// Carries out the plan: pins and replaces first, then unpins. Returns how
/// many changes were made.
fn execute(decls: &[Declared], steps: Vec<Step>) -> Result<usize> {
    let mut done = 0;
    let mut removals = Vec::new();
    for step in steps {
        match step {
            Step::Add { decl, location, .. } => {
                pin_declared(&decls[decl], location, false)?;
                done += 1;
            }
            Step::Replace { decl, location, .. } => {
                pin_declared(&decls[decl], location, true)?;
                done += 1;
            }
            Step::Remove { pinned, name, .. } => removals.push((pinned, name)),
            Step::Keep { .. } | Step::Wait { .. } => {}
        }
    }
    for (pinned, name) in removals {
        pin::unpin_pinned(*pinned).with_context(|| format!("unpinning policy {name}"))?;
        done += 1;
    }
    Ok(done)
}

fn pin_declared(d: &Declared, location: Location, replace: bool) -> Result<()> {
    let origin =
        Origin { target: d.target.to_string(), applied_as: d.name.clone(), keep_live_rules: d.keep_live_rules };
    let at =
        pin::pin_on(&d.policy, location, replace, &origin).with_context(|| format!("{}: policy {}", d.at, d.name))?;
    pin::existing_connections(&at.dir, &d.policy);
    Ok(())
}

/// `apply --watch`: applies, then again whenever a cgroup appears or goes
/// (inotify on the cgroup tree) and on SIGHUP (files read again), until
/// SIGTERM or SIGINT. Pins stay when it exits: they are the declared state.
fn watch(args: &ApplyArgs, mut decls: Vec<Declared>) -> Result<u8> {
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
        .context("installing signal handlers")?;
    let mut tree = TreeWatch::new(&cgroup::cgroup2_root()?)?;
    crate::say!("cgdrop: watching {} policies ({} directories of the cgroup tree)", decls.len(), tree.watched());
    let mut first = true;
    // A rescan now and then, in case an event was lost (inotify queue overflow).
    const RESCAN: Duration = Duration::from_secs(60);
    loop {
        if reload.swap(false, Ordering::SeqCst) {
            match declared::read(&args.paths) {
                Ok(d) => {
                    crate::say!("cgdrop: SIGHUP: read {} policies again", d.len());
                    decls = d;
                }
                Err(e) => crate::say!("cgdrop: SIGHUP: keeping the policies in force: {e:#}"),
            }
        }
        match plan(&decls, args.prune) {
            Ok(steps) => {
                for s in &steps {
                    if first || s.pending() {
                        crate::say!("cgdrop: {}", s.line(&decls));
                    }
                }
                match execute(&decls, steps) {
                    Ok(0) => {}
                    Ok(n) => crate::say!("cgdrop: applied {n} change(s)"),
                    Err(e) => crate::say!("cgdrop: {e:#}"),
                }
            }
            Err(e) => crate::say!("cgdrop: {e:#}"),
        }
        first = false;
        let last = Instant::now();
        // Wait for a change in the tree, a signal, or the rescan.
        loop {
            if stop.load(Ordering::SeqCst) {
                crate::say!("cgdrop: stopped watching; the pinned policies stay");
                return Ok(0);
            }
            if reload.load(Ordering::SeqCst) || last.elapsed() >= RESCAN {
                break;
            }
            if tree.wait(Duration::from_millis(500))? {
                // Let a burst (a unit's cgroup and its children) settle.
                std::thread::sleep(Duration::from_millis(20));
                tree.drain()?;
                break;
            }
        }
    }
}
