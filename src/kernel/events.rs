//! Drop and reject events from the `events` ring buffer: decoded from the
//! skeleton's `cgdrop_event`, read by a poller that follows one or more
//! policies' buffers (a session's own, or pinned ones for `cgdrop log`), and
//! what each CPU left out to stay within its budget.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, BorrowedFd},
    time::Duration,
};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, RingBufferBuilder};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::{
    kernel::skel::types::{
        cgdrop_action, cgdrop_budget, cgdrop_event, cgdrop_reason, cgdrop_stat_slot, cgdrop_verdict,
    },
    rules::Target,
};

// SAFETY: integers, u32 enum newtypes and byte arrays generated from BTF,
// with explicit padding; any bit pattern is valid.
unsafe impl plain::Plain for cgdrop_event {}
// SAFETY: three u64.
unsafe impl plain::Plain for cgdrop_budget {}

/// One event, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_BOOTTIME ns.
    pub time_ns: u64,
    pub cgroup_id: u64,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A CPU left this many events out (its budget for a second was spent).
    Suppressed(u64),
    Blocked(Blocked),
}

/// A drop or a rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// ingress, egress, connect4, connect6, sendmsg4, sendmsg6
    pub hook: &'static str,
    /// dropped, rejected, would drop, would reject
    pub verdict: &'static str,
    /// IPPROTO_* number.
    pub proto: u8,
    pub local: Option<IpAddr>,
    pub remote: Option<IpAddr>,
    pub local_port: u16,
    pub remote_port: u16,
    pub len: u32,
    pub why: Why,
    /// (pid, tgid, uid, comm); None: the kernel could not tell.
    pub owner: Option<(u32, u32, u32, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The deny rule that matched, and its expiry (boot-time ns, 0 = never).
    Rule(Target, u64),
    /// No rule matched: the policy drops everything in scope.
    Default,
    /// The headers or expired rules could not be looked past.
    Undecided,
    /// --no-new-inbound: an inbound connection request.
    NewInbound,
}

fn addr(family: u8, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()),
        6 => Some(Ipv6Addr::from(*bytes).into()),
        _ => None,
    }
}

fn hook_name(slot: cgdrop_stat_slot) -> &'static str {
    match slot {
        cgdrop_stat_slot::CGDROP_STAT_INGRESS => "ingress",
        cgdrop_stat_slot::CGDROP_STAT_EGRESS => "egress",
        cgdrop_stat_slot::CGDROP_STAT_CONNECT4 => "connect4",
        cgdrop_stat_slot::CGDROP_STAT_CONNECT6 => "connect6",
        cgdrop_stat_slot::CGDROP_STAT_SENDMSG4 => "sendmsg4",
        cgdrop_stat_slot::CGDROP_STAT_SENDMSG6 => "sendmsg6",
        _ => "?",
    }
}

impl Event {
    pub fn decode(raw: &[u8]) -> Option<Self> {
        // SAFETY: all-zero bytes are a valid cgdrop_event (integers, newtypes, arrays).
        let mut e: cgdrop_event = unsafe { std::mem::zeroed() };
        plain::copy_from_bytes(&mut e, raw).ok()?;
        if e.hook == cgdrop_stat_slot::CGDROP_STAT_SLOTS {
            return Some(Self { time_ns: e.time_ns, cgroup_id: e.cgroup_id, kind: Kind::Suppressed(e.suppressed) });
        }
        let remote = addr(e.family, &e.remote);
        let why = match e.reason {
            cgdrop_reason::CGDROP_REASON_RULE => {
                let action_deny = e.rule_action == cgdrop_action::CGDROP_ACTION_DENY.0;
                match remote {
                    // The rule's prefix of the remote address is the rule's target.
                    Some(ip) if action_deny => {
                        Why::Rule(Target::new(ip, e.rule_prefix as u8, e.rule_port), e.rule_expires_ns)
                    }
                    _ => Why::Default,
                }
            }
            cgdrop_reason::CGDROP_REASON_UNDECIDED => Why::Undecided,
            cgdrop_reason::CGDROP_REASON_NEW_INBOUND => Why::NewInbound,
            _ => Why::Default,
        };
        let comm: Vec<u8> = e.comm.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        Some(Self {
            time_ns: e.time_ns,
            cgroup_id: e.cgroup_id,
            kind: Kind::Blocked(Blocked {
                hook: hook_name(e.hook),
                verdict: match e.verdict {
                    cgdrop_verdict::CGDROP_VERDICT_REJECTED => "rejected",
                    cgdrop_verdict::CGDROP_VERDICT_WOULD_DROP => "would drop",
                    cgdrop_verdict::CGDROP_VERDICT_WOULD_REJECT => "would reject",
                    _ => "dropped",
                },
                proto: e.proto,
                local: addr(e.family, &e.local),
                remote,
                local_port: e.local_port,
                remote_port: e.remote_port,
                len: e.len,
                why,
                owner: (e.owner_known != 0)
                    .then(|| (e.pid, e.tgid, e.uid, String::from_utf8_lossy(&comm).into_owned())),
            }),
        })
    }
}

/// The ring buffers of `maps`, decoding into a queue that the caller drains.
type Queue = std::rc::Rc<std::cell::RefCell<Vec<Event>>>;

fn rings(maps: &[MapHandle]) -> Result<(libbpf_rs::RingBuffer<'static>, Queue)> {
    let mut builder = RingBufferBuilder::new();
    let queue: Queue = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    for map in maps {
        let q = std::rc::Rc::clone(&queue);
        builder
            .add(map, move |raw: &[u8]| {
                if let Some(e) = Event::decode(raw) {
                    q.borrow_mut().push(e);
                }
                0
            })
            .context("reading the events ring buffer")?;
    }
    Ok((builder.build().context("reading the events ring buffer")?, queue))
}

/// Follows the `events` ring buffers of `maps`, calling `each` for every
/// event, until `wake` becomes readable (written to, or its other end
/// closed): then what is left is read, and it returns at once — the end of
/// a session waits for this (a timed poll made `cgdrop run -- true` ~20 ms
/// longer).
pub fn follow_until(maps: &[MapHandle], wake: &impl AsFd, mut each: impl FnMut(Event)) -> Result<()> {
    let (ring, queue) = rings(maps)?;
    // SAFETY: the ring buffer's epoll descriptor, valid while `ring` lives (this function).
    let ring_fd = unsafe { BorrowedFd::borrow_raw(ring.epoll_fd()) };
    loop {
        let mut fds = [PollFd::new(ring_fd, PollFlags::POLLIN), PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            // A signal (Ctrl-C, SIGTERM) interrupts the wait: poll again.
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("waiting for events"),
        }
        let woken = fds[1].revents().is_some_and(|r| !r.is_empty());
        ring.consume().context("reading events")?;
        for e in queue.borrow_mut().drain(..) {
            each(e);
        }
        if woken {
            return Ok(());
        }
    }
}

/// Follows the `events` ring buffers of `maps` (`follow` = false: reads what
/// is there and returns), until `go_on` says no (asked after every wait of 20 ms).
pub fn follow_while(
    maps: &[MapHandle],
    follow: bool,
    mut go_on: impl FnMut() -> bool,
    mut each: impl FnMut(Event),
) -> Result<()> {
    let (ring, queue) = rings(maps)?;
    loop {
        let done = !follow || !go_on();
        if done {
            ring.consume().context("reading events")?;
        } else {
            match ring.poll(Duration::from_millis(20)) {
                // A signal (Ctrl-C, SIGTERM) interrupts the wait: the loop looks at `go_on`.
                Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
                other => other.context("reading events")?,
            }
        }
        for e in queue.borrow_mut().drain(..) {
            each(e);
        }
        if done {
            return Ok(());
        }
    }
}

/// What the CPUs counted as left out and have not reported yet.
pub fn unreported_suppressed(budget: &dyn MapCore) -> u64 {
    let Ok(Some(values)) = budget.lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY) else { return 0 };
    values
        .iter()
        .filter_map(|raw| {
            let mut b = cgdrop_budget { window_ns: 0, sent: 0, suppressed: 0 };
            plain::copy_from_bytes(&mut b, raw).ok().map(|()| b.suppressed)
        })
        .sum()
}
