//! `cgdrop status` and `cgdrop stats`: pinned policies shown as text, JSON,
//! Prometheus text exposition, or a live view with per-second rates.
use std::{
    collections::HashMap,
    fmt::Write as _,
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::{
    cli::StatsArgs,
    commands::rule,
    host::preflight,
    kernel::{
        hits,
        stats::{self, Stats},
    },
    output::{self, Rates, Redraw},
    pins::{bpffs, pinned::Pinned},
    rules::Action,
};

#[derive(Serialize)]
struct PolicyJson {
    ingress: bool,
    egress: bool,
    /// Interface name (when it still exists) and index; null = every interface.
    iface: Option<String>,
    ifindex: u32,
    /// null = every port.
    port: Option<u16>,
    silent: bool,
    dry_run: bool,
    /// What traffic no rule matches gets: "drop" or "pass".
    unmatched: &'static str,
    /// The error rejected calls get: "EPERM", "ECONNREFUSED" or "ECONNRESET".
    reject_with: &'static str,
    /// Inbound TCP connection requests are dropped.
    no_new_inbound: bool,
    /// The --port range's last port (equal to `port` for one port).
    port_hi: Option<u16>,
    allow_rules: usize,
    deny_rules: usize,
}

#[derive(Serialize)]
struct StatusJson {
    cgroup: String,
    cgroup_id: u64,
    /// The target as given when it was pinned (`unit nginx.service`), which
    /// resolved to `cgroup`.
    target: String,
    /// The `cgdrop apply` policy that pinned it; null: pinned by hand.
    applied_as: Option<String>,
    #[serde(flatten)]
    stats: Stats,
    policy: PolicyJson,
    health: String,
    pin_dir: String,
    /// CLOCK_REALTIME seconds when it was pinned, or last replaced.
    pinned_at: u64,
    /// CLOCK_REALTIME seconds when it was first pinned (before any replacement).
    first_pinned_at: u64,
    /// How long ago, by the boot-time clock (wall-clock changes do not count).
    pinned_for_secs: u64,
    #[serde(skip)]
    reject_errno: u32,
    /// With --sockets: the connections made before the policy that it drops.
    #[serde(skip_serializing_if = "Option::is_none")]
    sockets: Option<Vec<crate::kernel::sockets::Conn>>,
}

/// `cgdrop status [--json]`.
pub fn status(json: bool, sockets: bool) -> Result<()> {
    preflight::check()?;
    let mut out = Vec::new();
    for p in Pinned::list()? {
        let config = p.config()?;
        let rules = rule::live_rules(&p)?;
        let count = |a| rules.entries.iter().filter(|e| e.action == a).count();
        let unmatched_pass = p.unmatched_pass()?;
        out.push((
            output::describe_pinned(&config, unmatched_pass, count(Action::Allow), count(Action::Deny)),
            StatusJson {
                cgroup: p.cgroup_path.clone(),
                cgroup_id: p.id,
                target: if p.target.is_empty() { format!("cgroup {}", p.cgroup_path) } else { p.target.clone() },
                applied_as: (!p.applied_as.is_empty()).then(|| p.applied_as.clone()),
                stats: stats::read(&p.stats)?,
                policy: PolicyJson {
                    ingress: config.ingress,
                    egress: config.egress,
                    iface: config.iface.clone(),
                    ifindex: config.ifindex,
                    port: (config.port != 0).then_some(config.port),
                    silent: config.silent,
                    dry_run: config.dry_run,
                    unmatched: if unmatched_pass { "pass" } else { "drop" },
                    reject_with: crate::rules::RejectWith::name_of(config.reject_errno),
                    no_new_inbound: config.no_new_inbound,
                    port_hi: (config.port != 0).then_some(config.port_hi),
                    allow_rules: count(Action::Allow),
                    deny_rules: count(Action::Deny),
                },
                health: p.health()?.to_string(),
                pin_dir: p.dir.to_string_lossy().into_owned(),
                pinned_at: p.pinned_at,
                first_pinned_at: p.first_pinned_at,
                pinned_for_secs: p.pinned_for_secs()?,
                reject_errno: config.reject_errno,
                sockets: if sockets { Some(p.sockets(false)?) } else { None },
            },
        ));
    }
    if json {
        let all: Vec<&StatusJson> = out.iter().map(|(_, s)| s).collect();
        crate::outln!("{}", serde_json::to_string(&all)?);
        return Ok(());
    }
    let running = crate::host::sessions::list();
    if out.is_empty() && running.is_empty() {
        crate::outln!("no pinned cgdrop policies");
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for s in &running {
        crate::outln!("{} (id {}): {} session, cgdrop pid {}", s.cgroup, s.cgroup_id, s.kind, s.pid);
        crate::outln!("  policy: {}", s.policy);
        crate::outln!("  started {}; detached when that cgdrop ends", output::age(now.saturating_sub(s.started_at)));
    }
    for (desc, s) in &out {
        crate::outln!("{} (id {}): {}", s.cgroup, s.cgroup_id, s.health);
        if !s.target.starts_with("cgroup ") {
            crate::outln!("  target: {}", s.target);
        }
        if let Some(name) = &s.applied_as {
            crate::outln!("  declared: policy {name} (`cgdrop apply`)");
        }
        crate::outln!("  policy: {desc}");
        if s.first_pinned_at != s.pinned_at {
            let first = s.pinned_at.saturating_sub(s.first_pinned_at) + s.pinned_for_secs;
            crate::outln!(
                "  pinned: {} {}, last replaced {}",
                s.pin_dir,
                output::age(first),
                output::age(s.pinned_for_secs)
            );
        } else {
            crate::outln!("  pinned: {} {}", s.pin_dir, output::age(s.pinned_for_secs));
        }
        for line in output::table(&s.stats, &output::rejected_with(s.policy.dry_run, s.reject_errno)).lines() {
            crate::outln!("  {line}");
        }
        if let Some(conns) = &s.sockets {
            crate::outln!("  open connections it drops (made before it): {}", conns.len());
            for c in conns {
                crate::outln!("    {c}");
            }
        }
    }
    Ok(())
}

fn selected(cgroup: Option<&Path>) -> Result<Vec<Pinned>> {
    match cgroup {
        Some(c) => Ok(vec![Pinned::find(c)?]),
        None => Pinned::list(),
    }
}

/// `cgdrop stats`.
pub fn stats(args: &StatsArgs) -> Result<()> {
    preflight::check()?;
    let cgroup = args.target.path()?;
    // Checked once up front, so that a wrong --cgroup is an error, not a view of one.
    let policies = selected(cgroup.as_deref())?;
    if let Some(secs) = args.watch {
        drop(policies);
        return watch(cgroup.as_deref(), Duration::from_secs(secs));
    }
    // (name, cgroup id, counters, dry run)
    let mut rows: Vec<(String, u64, Stats, String)> = Vec::new();
    // Per policy: its most used rules, at most TOP_RULES (a million-rule
    // policy must not make a million labels).
    let mut top_rules: Vec<Vec<RuleHitsJson>> = Vec::new();
    for p in &policies {
        let c = p.config()?;
        rows.push((
            p.cgroup_path.clone(),
            p.id,
            stats::read(&p.stats)?,
            output::rejected_with(c.dry_run, c.reject_errno),
        ));
        top_rules.push(most_used_rules(p)?);
    }
    // The programs of `pin --programs`, attached by hand: counted over every
    // cgroup they are attached to.
    let progs = bpffs::programs_dir();
    if cgroup.is_none() && progs.join("stats").exists() {
        let map = libbpf_rs::MapHandle::from_pinned_path(progs.join("stats"))
            .with_context(|| format!("opening {}/stats", progs.display()))?;
        rows.push((
            format!("(pinned programs: {})", progs.display()),
            0,
            stats::read(&map)?,
            output::rejected_with(false, 0),
        ));
    }
    if args.json {
        let all: Vec<StatsJson<'_>> = rows
            .iter()
            .enumerate()
            .map(|(i, (name, id, s, _))| StatsJson {
                summary: stats::Summary { cgroup: name, cgroup_id: *id, stats: *s },
                rules: top_rules.get(i).map(Vec::as_slice).unwrap_or_default(),
            })
            .collect();
        crate::outln!("{}", serde_json::to_string(&all)?);
    } else if args.prometheus {
        let mut text = prometheus(&rows.iter().map(|(name, _, s, _)| (name.as_str(), s)).collect::<Vec<_>>());
        let _ = writeln!(
            text,
            "# HELP cgdrop_rule_hits_total Packets and calls a rule decided (the {TOP_RULES} most used rules per policy).\n# TYPE cgdrop_rule_hits_total counter"
        );
        for ((name, ..), rules) in rows.iter().zip(&top_rules) {
            for r in rules {
                let _ = writeln!(
                    text,
                    "cgdrop_rule_hits_total{{cgroup=\"{}\",rule=\"{} {}\"}} {}",
                    label(name),
                    r.action,
                    r.rule,
                    r.hits
                );
            }
        }
        crate::out_raw!("{text}");
    } else {
        for (name, id, s, verdict) in &rows {
            crate::outln!("{name} (id {id})");
            crate::out_raw!("{}", output::table(s, verdict));
        }
    }
    Ok(())
}

/// How many rules per policy `stats` shows with their hits.
const TOP_RULES: usize = 100;

#[derive(Serialize)]
struct RuleHitsJson {
    action: String,
    rule: String,
    hits: u64,
    /// null = never.
    last_hit_secs_ago: Option<u64>,
}

#[derive(Serialize)]
struct StatsJson<'a> {
    #[serde(flatten)]
    summary: stats::Summary<'a>,
    /// The most used rules (at most TOP_RULES), most hits first.
    rules: &'a [RuleHitsJson],
}

/// The policy's rules with hits, most hits first, at most TOP_RULES.
fn most_used_rules(p: &Pinned) -> Result<Vec<RuleHitsJson>> {
    let now_ns = crate::kernel::rulemaps::boot_time_ns()?;
    let mut out: Vec<RuleHitsJson> = rule::live_rules(p)?
        .entries
        .iter()
        .map(|e| (e, hits::of(&p.rule_hits, &e.target)))
        .filter(|(_, h)| h.hits > 0)
        .map(|(e, h)| RuleHitsJson {
            action: e.action.to_string(),
            rule: e.target.to_string(),
            hits: h.hits,
            last_hit_secs_ago: Some(now_ns.saturating_sub(h.last_ns) / 1_000_000_000),
        })
        .collect();
    out.sort_by(|a, b| b.hits.cmp(&a.hits).then(a.rule.cmp(&b.rule)));
    out.truncate(TOP_RULES);
    Ok(out)
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One metric family: its samples per cgroup are two labelled values.
struct Family {
    name: &'static str,
    help: &'static str,
    /// The label that tells the two samples apart.
    label: &'static str,
    samples: fn(&Stats) -> [(&'static str, u64); 2],
}

const FAMILIES: [Family; 6] = [
    Family {
        name: "cgdrop_packets_total",
        help: "Packets the cgdrop programs saw.",
        label: "direction",
        samples: |s| [("ingress", s.ingress.packets), ("egress", s.egress.packets)],
    },
    Family {
        name: "cgdrop_bytes_total",
        help: "Bytes the cgdrop programs saw.",
        label: "direction",
        samples: |s| [("ingress", s.ingress.bytes), ("egress", s.egress.bytes)],
    },
    Family {
        name: "cgdrop_dropped_packets_total",
        help: "Packets cgdrop dropped.",
        label: "direction",
        samples: |s| [("ingress", s.ingress.dropped_packets), ("egress", s.egress.dropped_packets)],
    },
    Family {
        name: "cgdrop_dropped_bytes_total",
        help: "Bytes cgdrop dropped.",
        label: "direction",
        samples: |s| [("ingress", s.ingress.dropped_bytes), ("egress", s.egress.dropped_bytes)],
    },
    Family {
        name: "cgdrop_calls_total",
        help: "connect() and unconnected sendmsg() calls the cgdrop hooks saw.",
        label: "hook",
        samples: |s| [("connect", s.connect.attempts), ("sendmsg", s.sendmsg.attempts)],
    },
    Family {
        name: "cgdrop_rejected_calls_total",
        help: "Calls cgdrop rejected with EPERM.",
        label: "hook",
        samples: |s| [("connect", s.connect.rejected), ("sendmsg", s.sendmsg.rejected)],
    },
];

/// The text exposition format: counters labelled with the cgroup.
pub fn prometheus(rows: &[(&str, &Stats)]) -> String {
    let mut out = String::new();
    for f in &FAMILIES {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} counter", f.name, f.help, f.name);
        for (cgroup, s) in rows {
            for (which, v) in (f.samples)(s) {
                let _ = writeln!(out, "{}{{cgroup=\"{}\",{}=\"{which}\"}} {v}", f.name, label(cgroup), f.label);
            }
        }
    }
    out
}

/// Redraws the counters with per-second rates every `interval` until
/// SIGINT/SIGTERM. The policies are looked up again at every interval, so
/// that the view follows `pin --replace` (new counters), `unpin` and new pins.
fn watch(cgroup: Option<&Path>, interval: Duration) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    let tty = std::io::stdout().is_terminal();
    let mut redraw = Redraw::default();
    // By pin directory and pin time: a replaced policy starts over.
    let mut previous: HashMap<(PathBuf, u64), (Stats, Instant)> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let mut screen = String::new();
        let mut current = HashMap::new();
        match selected(cgroup) {
            Err(e) => {
                let _ = writeln!(screen, "cgdrop: {e:#}");
            }
            Ok(policies) if policies.is_empty() => screen += "no pinned cgdrop policies\n",
            Ok(policies) => {
                for p in &policies {
                    let s = stats::read(&p.stats)?;
                    let now = Instant::now();
                    let _ = writeln!(screen, "{} (id {})", p.cgroup_path, p.id);
                    let c = p.config()?;
                    screen += &output::table(&s, &output::rejected_with(c.dry_run, c.reject_errno));
                    let key = (p.dir.clone(), p.pinned_at);
                    if let Some((before, at)) = previous.get(&key) {
                        screen += &output::watch_rates(&Rates::between((before, *at), (&s, now)));
                    }
                    current.insert(key, (s, now));
                }
            }
        }
        crate::out_raw!("{}", if tty { redraw.frame(&screen) } else { screen });
        previous = current;
        let deadline = Instant::now() + interval;
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::stats::{Calls, Traffic};

    #[test]
    fn prometheus_text_format() {
        let s = Stats {
            egress: Traffic { packets: 10, bytes: 1000, dropped_packets: 4, dropped_bytes: 400 },
            connect: Calls { attempts: 3, rejected: 2 },
            ..Stats::default()
        };
        let text = prometheus(&[("/sys/fs/cgroup/a\"b", &s)]);
        assert!(text.contains("# TYPE cgdrop_packets_total counter\n"), "{text}");
        assert!(
            text.contains("cgdrop_packets_total{cgroup=\"/sys/fs/cgroup/a\\\"b\",direction=\"egress\"} 10\n"),
            "{text}"
        );
        assert!(
            text.contains("cgdrop_dropped_bytes_total{cgroup=\"/sys/fs/cgroup/a\\\"b\",direction=\"egress\"} 400\n")
        );
        assert!(text.contains("cgdrop_rejected_calls_total{cgroup=\"/sys/fs/cgroup/a\\\"b\",hook=\"connect\"} 2\n"));
        // Every sample line is `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
        }
    }
}
