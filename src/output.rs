//! Everything the user reads: the counter table, durations and ages, rates,
//! descriptions of a policy (loaded or pinned), the live views redrawn in
//! place on a terminal, and the summary a session ends with. Output never
//! kills cgdrop: the macros below ignore write errors (a closed pipe, a
//! descriptor someone made non-blocking) where `println!` would panic.
use std::{fmt::Write as _, io::Write as _, time::Instant};

use crate::{
    kernel::{
        config::Config,
        events::{Event, Kind, Why},
        stats::Stats,
    },
    policy::Policy,
    rules::{Action, RejectWith},
};

/// A line on stderr; write errors are ignored.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Text on stderr without a newline; write errors are ignored.
#[macro_export]
macro_rules! say_raw {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!($($arg)*)) };
}

/// A line on stdout; write errors are ignored.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output::stdout(format!("{}\n", format_args!($($arg)*)).as_bytes()) };
}

/// Text on stdout without a newline; write errors are ignored.
#[macro_export]
macro_rules! out_raw {
    ($($arg:tt)*) => { $crate::output::stdout(format!($($arg)*).as_bytes()) };
}

/// Writes to stderr, ignoring errors: there is nowhere left to report them.
pub fn stderr(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_all(args.to_string().as_bytes());
}

/// Writes to stdout and flushes, ignoring errors (a reader that went away).
pub fn stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

/// `cgdrop: <message>` on stderr.
pub fn warn(args: std::fmt::Arguments<'_>) {
    stderr(format_args!("cgdrop: {args}\n"));
}

/// "ingress+egress", "ingress" or "egress".
pub fn directions(ingress: bool, egress: bool) -> &'static str {
    match (ingress, egress) {
        (true, true) => "ingress+egress",
        (true, false) => "ingress",
        _ => "egress",
    }
}

/// A loaded policy in a few words, e.g. "egress traffic on interface lo, port 8080".
pub fn describe(policy: &Policy) -> String {
    let dirs = directions(policy.ingress, policy.egress);
    let iface = policy.iface.as_ref().map_or("every interface".to_string(), |(n, _)| format!("interface {n}"));
    let port = policy.port.map_or("every port".to_string(), |p| {
        if p.lo == p.hi {
            format!("port {p}")
        } else {
            format!("ports {p}")
        }
    });
    // Targets, not lines: a target given twice is one rule.
    let count = |a| {
        // References (8 bytes, not a 20-byte copy): a million rules are loaded meanwhile.
        let mut targets: Vec<_> = policy.rules.iter().filter(|r| r.action == a).map(|r| &r.target).collect();
        targets.sort_unstable();
        targets.dedup();
        targets.len()
    };
    let (allow, deny) = (count(Action::Allow), count(Action::Deny));
    let rules = match (allow, deny) {
        (0, 0) => String::new(),
        (a, 0) => format!(", except {a} allowed target(s)"),
        (0, d) => format!(", to or from {d} denied target(s)"),
        (a, d) => format!(", to or from {d} denied target(s) except {a} allowed"),
    };
    let mode = match (policy.dry_run, policy.silent) {
        (true, _) => " (dry run: nothing is dropped)",
        (false, true) => " (silent)",
        _ => "",
    };
    if policy.no_new_inbound && policy.rules.is_empty() {
        return format!("new inbound TCP connections on {iface}, {port}{mode}");
    }
    let inbound = if policy.no_new_inbound { " and new inbound TCP connections" } else { "" };
    let reject = match policy.reject_with {
        RejectWith::Eperm => "",
        RejectWith::Refused => "; rejected calls get ECONNREFUSED",
        RejectWith::Reset => "; rejected calls get ECONNRESET",
    };
    format!("{dirs} traffic{inbound} on {iface}, {port}{rules}{mode}{reject}")
}

/// A pinned policy in a few words, from what its maps say.
pub fn describe_pinned(c: &Config, unmatched_pass: bool, allow: usize, deny: usize) -> String {
    let dirs = directions(c.ingress, c.egress);
    let elsewhere = c.netns_cookie != 0 && crate::kernel::config::netns_cookie() != Some(c.netns_cookie);
    let iface = match c.ifindex {
        0 => "every interface".to_string(),
        i => format!(
            "interface {} (index {i}{})",
            c.iface.as_deref().unwrap_or("?"),
            if elsewhere { ", in another network namespace" } else { "" }
        ),
    };
    let port = match (c.port, c.port_hi) {
        (0, _) => "every port".to_string(),
        (lo, hi) if hi > lo => format!("ports {lo}-{hi}"),
        (lo, _) => format!("port {lo}"),
    };
    let mut s = format!(
        "{dirs} on {iface}, {port}; {allow} allow and {deny} deny rules; unmatched traffic {}",
        if unmatched_pass { "passes" } else { "is dropped" }
    );
    if c.silent {
        s += "; silent";
    }
    if c.dry_run {
        s += "; dry run";
    }
    s
}

/// 4h2m5s, 3m0s, 12s.
pub fn format_secs(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m{s}s"),
        _ => format!("{d}d{h}h{m}m"),
    }
}

/// "3m0s ago".
pub fn age(secs: u64) -> String {
    format!("{} ago", format_secs(secs))
}

/// The rules in force, for the banner: the first few and how many in all.
pub fn rules_line(policy: &Policy) -> Option<String> {
    let mut seen: Vec<&crate::rules::Target> = policy.rules.iter().map(|r| &r.target).collect();
    seen.sort_unstable();
    seen.dedup();
    if seen.is_empty() {
        return None;
    }
    // The order they were given in, first ones first.
    let mut shown = Vec::new();
    for r in &policy.rules {
        let text = format!("{} {}", r.action, r.target);
        if !shown.contains(&text) {
            shown.push(text);
        }
        if shown.len() == 4 {
            break;
        }
    }
    let more = if seen.len() > shown.len() { format!(", … ({} in all)", seen.len()) } else { String::new() };
    Some(format!("cgdrop: rules in force: {}{more}", shown.join(", ")))
}

/// What the banner says happens to connect() and sendto().
pub fn calls_note(policy: &Policy) -> String {
    let errno = RejectWith::name_of(policy.reject_with.errno());
    if !policy.rejects_calls() {
        String::new()
    } else if policy.dry_run {
        ", connect() and sendto() that would be rejected are counted".into()
    } else if policy.egress {
        format!(", connect() and sendto() rejected with {errno}")
    } else {
        // Ingress only: a TCP handshake cannot complete, a UDP send can.
        format!(", TCP connect() rejected with {errno}")
    }
}

/// What the counter table says of rejected calls.
pub fn rejected_with(dry_run: bool, reject_errno: u32) -> String {
    if dry_run {
        "would be rejected".into()
    } else {
        format!("rejected with {}", RejectWith::name_of(reject_errno))
    }
}

/// The multi-line counter table (`verdict`: see `rejected_with`).
pub fn table(s: &Stats, verdict: &str) -> String {
    let mut out = format!("{:<9} {:>12} {:>14} {:>12} {:>14}\n", "", "packets", "bytes", "dropped", "dropped bytes");
    for (name, t) in [("ingress", &s.ingress), ("egress", &s.egress)] {
        let _ = writeln!(
            out,
            "{name:<9} {:>12} {:>14} {:>12} {:>14}",
            t.packets, t.bytes, t.dropped_packets, t.dropped_bytes
        );
    }
    for (name, c) in [("connect", &s.connect), ("sendmsg", &s.sendmsg)] {
        let _ = writeln!(out, "{name:<9} {:>12} attempts, {} {verdict}", c.attempts, c.rejected);
    }
    out
}

/// Drops and rejections per second between two readings of the counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub dropped_in: f64,
    pub dropped_out: f64,
    pub rejected: f64,
}

impl Rates {
    pub fn between(before: (&Stats, Instant), now: (&Stats, Instant)) -> Self {
        let secs = now.1.duration_since(before.1).as_secs_f64().max(1e-3);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let (s, b) = (now.0, before.0);
        Self {
            dropped_in: rate(s.ingress.dropped_packets, b.ingress.dropped_packets),
            dropped_out: rate(s.egress.dropped_packets, b.egress.dropped_packets),
            rejected: rate(s.connect.rejected + s.sendmsg.rejected, b.connect.rejected + b.sendmsg.rejected),
        }
    }
}

/// A block of lines redrawn in place on a terminal: the cursor goes back up
/// over the previous block, which is cleared, then the new one is drawn.
#[derive(Debug, Default)]
pub struct Redraw {
    drawn: usize,
}

impl Redraw {
    /// The text that replaces the previous block by `block`.
    pub fn frame(&mut self, block: &str) -> String {
        let mut out = if self.drawn > 0 { format!("\x1b[{}A\x1b[J", self.drawn) } else { String::new() };
        out += block;
        self.drawn = block.lines().count();
        out
    }
}

/// The foreground live view (`--interval`): on a terminal a block redrawn
/// in place, else one line per interval.
pub fn live_block(s: &Stats, r: &Rates, elapsed_secs: u64) -> String {
    format!(
        "cgdrop: attached for {}\n  ingress  {:>10.1} drops/s  {:>12} dropped of {}\n  egress   {:>10.1} drops/s  {:>12} dropped of {}\n  connect  {} of {} rejected   sendmsg {} of {} rejected\n",
        format_secs(elapsed_secs),
        r.dropped_in,
        s.ingress.dropped_packets,
        s.ingress.packets,
        r.dropped_out,
        s.egress.dropped_packets,
        s.egress.packets,
        s.connect.rejected,
        s.connect.attempts,
        s.sendmsg.rejected,
        s.sendmsg.attempts
    )
}

pub fn live_line(s: &Stats, r: &Rates, elapsed_secs: u64) -> String {
    format!(
        "cgdrop: {elapsed_secs}s ingress dropped {} of {} ({:.1}/s), egress dropped {} of {} ({:.1}/s), connect rejected {} of {}, sendmsg rejected {} of {}\n",
        s.ingress.dropped_packets,
        s.ingress.packets,
        r.dropped_in,
        s.egress.dropped_packets,
        s.egress.packets,
        r.dropped_out,
        s.connect.rejected,
        s.connect.attempts,
        s.sendmsg.rejected,
        s.sendmsg.attempts
    )
}

/// The rates line under a policy's table in `stats --watch`.
pub fn watch_rates(r: &Rates) -> String {
    format!(
        "{:<9} {:>12.1} pkt/s dropped in, {:.1} pkt/s dropped out, {:.1} calls/s rejected\n",
        "rates", r.dropped_in, r.dropped_out, r.rejected
    )
}

/// One line saying what cgdrop did to a `run` command's traffic, when it did
/// anything: a failing command is then explained.
pub fn explain(s: &Stats, policy: &Policy) -> Option<String> {
    let rejected = s.connect.rejected + s.sendmsg.rejected;
    let dropped = s.ingress.dropped_packets + s.egress.dropped_packets;
    if rejected == 0 && dropped == 0 {
        return None;
    }
    let verb = if policy.dry_run { "would have been" } else { "was" };
    Some(format!(
        "cgdrop: the command's network traffic {verb} blocked: {} connect() and {} sendto() calls rejected with {}, {dropped} packets dropped ({})",
        s.connect.rejected,
        s.sendmsg.rejected,
        RejectWith::name_of(policy.reject_with.errno()),
        describe(policy)
    ))
}

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFormat {
    /// One line for people (stderr in a session, stdout for `cgdrop log`).
    Text,
    /// JSON lines with stable field names (stdout).
    Json,
}

/// A boot-time instant as wall-clock seconds since the epoch.
fn wall_secs(boot_ns: u64) -> f64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let boot_now = crate::kernel::rulemaps::boot_time_ns().unwrap_or(boot_ns);
    now - boot_now.saturating_sub(boot_ns) as f64 / 1e9
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        136 => "udplite".into(),
        132 => "sctp".into(),
        33 => "dccp".into(),
        0 => "?".into(),
        n => format!("proto {n}"),
    }
}

fn endpoint(ip: Option<std::net::IpAddr>, port: u16) -> String {
    match (ip, port) {
        (None, _) => "?".into(),
        (Some(std::net::IpAddr::V6(a)), p) if p != 0 => format!("[{a}]:{p}"),
        (Some(a), 0) => a.to_string(),
        (Some(a), p) => format!("{a}:{p}"),
    }
}

/// One event as a line (without the newline).
pub fn event(e: &Event, format: EventFormat) -> String {
    let wall = wall_secs(e.time_ns);
    match (&e.kind, format) {
        (Kind::Suppressed(n), EventFormat::Text) => {
            format!("{} cgroup {}: {n} more events left out (over --log-rate)", clock(wall), e.cgroup_id)
        }
        (Kind::Suppressed(n), EventFormat::Json) => {
            serde_json::json!({"time": wall, "cgroup_id": e.cgroup_id, "suppressed": n}).to_string()
        }
        (Kind::Blocked(b), EventFormat::Text) => {
            let who = match &b.owner {
                Some((pid, _, uid, comm)) => format!("{comm}[{pid}] uid {uid}"),
                None => "unknown process".into(),
            };
            let arrow = if b.hook == "ingress" { "→" } else { "←" };
            let why = match &b.why {
                Why::Rule(t, _) => format!("by deny {t}"),
                Why::Default => "(no rule matched: the policy drops everything in scope)".into(),
                Why::Undecided => "(could not be decided: headers or expired rules not looked past)".into(),
                Why::NewInbound => "(a new inbound connection: --no-new-inbound)".into(),
            };
            format!(
                "{} {:<8} {} {} {arrow} {who} {} {why}",
                clock(wall),
                b.hook,
                proto_name(b.proto),
                endpoint(b.remote, b.remote_port),
                b.verdict
            )
        }
        (Kind::Blocked(b), EventFormat::Json) => {
            let (rule, expires_ns) = match &b.why {
                Why::Rule(t, exp) => (Some(format!("deny {t}")), *exp),
                _ => (None, 0),
            };
            let now_ns = crate::kernel::rulemaps::boot_time_ns().unwrap_or(0);
            let owner = b.owner.as_ref();
            serde_json::json!({
                "time": wall,
                "cgroup_id": e.cgroup_id,
                "hook": b.hook,
                "verdict": b.verdict,
                "proto": proto_name(b.proto),
                "local": b.local.map(|a| a.to_string()),
                "local_port": b.local_port,
                "remote": b.remote.map(|a| a.to_string()),
                "remote_port": b.remote_port,
                "len": b.len,
                "reason": match b.why { Why::Rule(..) => "rule", Why::Default => "default", Why::Undecided => "undecided", Why::NewInbound => "new_inbound" },
                "rule": rule,
                "rule_expires_in_secs": (expires_ns != 0).then(|| expires_ns.saturating_sub(now_ns) / 1_000_000_000),
                "pid": owner.map(|o| o.0),
                "tgid": owner.map(|o| o.1),
                "uid": owner.map(|o| o.2),
                "comm": owner.map(|o| o.3.clone()),
            })
            .to_string()
        }
    }
}

/// HH:MM:SS (UTC) of wall-clock seconds.
fn clock(wall: f64) -> String {
    let s = wall as u64 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::stats::Traffic;

    #[test]
    fn formats_time_left() {
        assert_eq!(format_secs(0), "0s");
        assert_eq!(format_secs(59), "59s");
        assert_eq!(format_secs(180), "3m0s");
        assert_eq!(format_secs(4 * 3600 + 125), "4h2m5s");
        assert_eq!(format_secs(2 * 86400 + 3600 + 60), "2d1h1m");
    }

    #[test]
    fn rates_per_second() {
        let t0 = Instant::now();
        let before = Stats::default();
        let now = Stats { egress: Traffic { dropped_packets: 500, ..Traffic::default() }, ..Stats::default() };
        let r = Rates::between((&before, t0), (&now, t0 + std::time::Duration::from_secs(2)));
        assert_eq!(r, Rates { dropped_in: 0.0, dropped_out: 250.0, rejected: 0.0 });
    }

    #[test]
    fn redraw_moves_back_over_the_previous_block() {
        let mut r = Redraw::default();
        assert_eq!(r.frame("a\nb\n"), "a\nb\n");
        assert_eq!(r.frame("c\n"), "\x1b[2A\x1b[Jc\n");
    }
}
