//! The events of an attached session: read from its ring buffer by a thread
//! of their own, printed as they come (`--log`, `--log-json`) and tallied by
//! destination for the summary of `cgdrop run`.
use std::{collections::HashMap, os::unix::net::UnixStream, thread};

use anyhow::{Context, Result};
use libbpf_rs::MapHandle;

use crate::{
    kernel::{events, skel::CgdropSkel},
    output::{self, EventFormat},
};

/// The events of the session, read by a thread of their own as they come:
/// printed (`--log`, `--log-json`) and tallied by destination.
pub struct Logger {
    /// Dropped to stop the reader: its end of the pair becomes readable.
    wake: UnixStream,
    thread: thread::JoinHandle<Result<HashMap<String, u64>>>,
    budget: MapHandle,
    format: Option<EventFormat>,
}

impl Logger {
    pub fn start(skel: &CgdropSkel<'_>, format: Option<EventFormat>) -> Result<Self> {
        let ring = MapHandle::try_from(&skel.maps.cgdrop_events).context("opening the events ring buffer")?;
        let budget = MapHandle::try_from(&skel.maps.cgdrop_budget).context("opening the event budget")?;
        let (wake, woken) = UnixStream::pair().context("making the event reader's wake-up")?;
        let thread = thread::spawn(move || {
            let mut tally = HashMap::new();
            events::follow_until(&[ring], &woken, |e| {
                if let events::Kind::Blocked(b) = &e.kind {
                    let to = match (b.remote, b.remote_port) {
                        (Some(std::net::IpAddr::V6(a)), p) if p != 0 => format!("[{a}]:{p}"),
                        (Some(a), 0) => a.to_string(),
                        (Some(a), p) => format!("{a}:{p}"),
                        (None, _) => "?".into(),
                    };
                    *tally.entry(to).or_insert(0) += 1;
                }
                if let Some(format) = format {
                    print_event(&e, format);
                }
            })?;
            Ok(tally)
        });
        Ok(Self { wake, thread, budget, format })
    }

    /// Reads what is left in the ring buffer, reports what the CPUs left
    /// out and have not reported yet, and returns the three most blocked
    /// destinations.
    pub fn finish(self, cgroup_id: u64) -> Vec<(String, u64)> {
        drop(self.wake);
        let tally = match self.thread.join() {
            Ok(Ok(tally)) => tally,
            Ok(Err(e)) => {
                output::warn(format_args!("reading events: {e:#}"));
                HashMap::new()
            }
            Err(_) => {
                output::warn(format_args!("reading events: the reader thread failed"));
                HashMap::new()
            }
        };
        let left_out = events::unreported_suppressed(&self.budget);
        if let (Some(format), true) = (self.format, left_out > 0) {
            let time_ns = crate::kernel::rulemaps::boot_time_ns().unwrap_or(0);
            print_event(&events::Event { time_ns, cgroup_id, kind: events::Kind::Suppressed(left_out) }, format);
        }
        let mut top: Vec<(String, u64)> = tally.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(3);
        top
    }
}

/// An event on stderr (text) or stdout (JSON lines).
pub fn print_event(e: &events::Event, format: EventFormat) {
    let line = output::event(e, format);
    match format {
        EventFormat::Text => crate::say!("{line}"),
        EventFormat::Json => crate::outln!("{line}"),
    }
}
