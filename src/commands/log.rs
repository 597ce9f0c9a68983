//! `cgdrop log`: the drop and reject events of pinned policies, read from
//! their pinned ring buffers (each event is read once), and `--follow`ed.
use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::{
    cli::LogArgs, eventlog::print_event, host::preflight, kernel::events, output::EventFormat, pins::pinned::Pinned,
};

pub fn run(args: &LogArgs) -> Result<()> {
    preflight::check()?;
    let cgroup = args.target.path()?;
    let policies = select(cgroup.as_deref())?;
    if policies.is_empty() {
        crate::say!("cgdrop: no pinned cgdrop policies");
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    let format = if args.json { EventFormat::Json } else { EventFormat::Text };
    let print = |e: events::Event| match format {
        // Text goes to stdout here: the log is what this command prints.
        EventFormat::Text => crate::outln!("{}", crate::output::event(&e, format)),
        EventFormat::Json => print_event(&e, format),
    };
    let mut policies = policies;
    loop {
        let rings: Vec<_> = policies.iter().map(ring_of).collect::<Result<_>>()?;
        // Followed until stopped, or until the policies change (`pin
        // --replace` makes new ring buffers; a new pin or an unpin changes
        // the set): then they are looked up again.
        let seen = identity(&policies);
        let mut checked = std::time::Instant::now();
        let mut changed = false;
        events::follow_while(
            &rings,
            args.follow,
            || {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                if checked.elapsed() >= std::time::Duration::from_secs(1) {
                    checked = std::time::Instant::now();
                    changed = select(cgroup.as_deref()).is_ok_and(|now| identity(&now) != seen);
                }
                !changed
            },
            print,
        )?;
        if !changed || stop.load(Ordering::Relaxed) {
            break;
        }
        policies = select(cgroup.as_deref())?;
    }
    for p in &policies {
        let left_out = events::unreported_suppressed(&p.event_budget);
        if left_out > 0 {
            crate::say!(
                "cgdrop: {} events of {} were left out (over its --log-rate) and are not reported yet",
                left_out,
                p.cgroup_path
            );
        }
    }
    Ok(())
}

fn select(cgroup: Option<&Path>) -> Result<Vec<Pinned>> {
    match cgroup {
        Some(c) => Ok(vec![Pinned::find(c)?]),
        None => Pinned::list(),
    }
}

/// What identifies the set of policies followed: directory and pin time.
fn identity(policies: &[Pinned]) -> Vec<(std::path::PathBuf, u64)> {
    policies.iter().map(|p| (p.dir.clone(), p.pinned_boot_ns)).collect()
}

fn ring_of(p: &Pinned) -> Result<libbpf_rs::MapHandle> {
    libbpf_rs::MapHandle::from_pinned_path(Path::new(&p.dir).join("events"))
        .with_context(|| format!("opening {}/events", p.dir.display()))
}
