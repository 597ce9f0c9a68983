//! `cgdrop log`: the drop and reject events of pinned policies, read from
//! their pinned ring buffers (each event is read once), and `--follow`ed.
use std::{
    path::Path,
    sync::{atomic::AtomicBool, Arc},
};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::{
    cli::LogArgs, host::preflight, kernel::events, output::EventFormat, pins::pinned::Pinned, session::print_event,
};

pub fn run(args: &LogArgs) -> Result<()> {
    preflight::check()?;
    let policies = match args.cgroup.as_deref() {
        Some(c) => vec![Pinned::find(c)?],
        None => Pinned::list()?,
    };
    if policies.is_empty() {
        crate::say!("cgdrop: no pinned cgdrop policies");
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    let format = if args.json { EventFormat::Json } else { EventFormat::Text };
    let rings: Vec<_> = policies.iter().map(ring_of).collect::<Result<_>>()?;
    // Text goes to stdout here: the log is what this command prints.
    events::follow(&rings, args.follow, &stop, |e| match format {
        EventFormat::Text => crate::outln!("{}", crate::output::event(&e, format)),
        EventFormat::Json => print_event(&e, format),
    })?;
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

fn ring_of(p: &Pinned) -> Result<libbpf_rs::MapHandle> {
    libbpf_rs::MapHandle::from_pinned_path(Path::new(&p.dir).join("events"))
        .with_context(|| format!("opening {}/events", p.dir.display()))
}
