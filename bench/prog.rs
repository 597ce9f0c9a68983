//! Per-packet cost of cgdrop_egress and cgdrop_ingress with BPF_PROG_TEST_RUN
//! (1,000,000 repeats a run, the kernel's average ns per repeat), against
//! `cgdrop_floor`, a cgroup_skb program that only returns 1.
use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use cgdrop::{
    kernel::{
        loader::{self, Hook},
        rulemaps::Installed,
        skel::{CgdropSkel, CgdropSkelBuilder},
    },
    policy::Policy,
    rules::{Action, Rule, Target},
};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    OpenObject, ProgramInput, ProgramMut,
};

use crate::{packets, Summary, Table};

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 7;
/// The destination/source port of the benchmark packets.
const PORT: u16 = 5000;

/// A UDP or TCP header from port 40000 to PORT, then 64 bytes of payload.
fn l4(tcp: bool) -> Vec<u8> {
    let mut h = if tcp { packets::tcp(40000, PORT) } else { packets::udp(40000, PORT) };
    h.extend_from_slice(&[0u8; 64]);
    h
}

fn packets() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("IPv4 UDP", packets::ipv4(packets::IPPROTO_UDP, 0, &l4(false))),
        ("IPv4 TCP", packets::ipv4(packets::IPPROTO_TCP, 0, &l4(true))),
        ("IPv6 UDP", packets::ipv6(packets::IPPROTO_UDP, &[], &l4(false))),
        ("IPv6 TCP", packets::ipv6(packets::IPPROTO_TCP, &[], &l4(true))),
    ]
}

/// `n` deny rules per family that the benchmark packets never match; with
/// `hit`, one more per family that they do.
fn filler_rules(n: usize, hit: bool) -> Vec<Rule> {
    let mut rules = Vec::with_capacity(2 * n);
    if hit && n > 0 {
        // The benchmark packets' address (127.0.0.1, ::1: see packets::ipv4).
        for addr in [std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST), std::net::Ipv6Addr::LOCALHOST.into()] {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            rules.push(Rule { action: Action::Deny, target: Target::new(addr, prefix, 0), ttl: None });
        }
    }
    for i in 0..n as u32 {
        let v4 = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        let v6 = std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i));
        for addr in [std::net::IpAddr::V4(v4), std::net::IpAddr::V6(v6)] {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            rules.push(Rule { action: Action::Deny, target: Target::new(addr, prefix, 0), ttl: None });
        }
    }
    rules
}

struct Config {
    name: &'static str,
    port: Option<u16>,
    rules: usize,
    /// Whether the benchmark packets pass (the path the 1.2× target is about).
    pass: bool,
    /// Events per second (`--log-rate`); 0 = off. Events cost only on the drop path.
    log_rate: u32,
}

const CONFIGS: [Config; 9] = [
    Config { name: "drop-all (no filter), events off", port: None, rules: 0, pass: false, log_rate: 0 },
    Config { name: "drop-all (no filter), events on (100/s)", port: None, rules: 0, pass: false, log_rate: 100 },
    Config { name: "port filter miss", port: Some(9), rules: 0, pass: true, log_rate: 0 },
    Config { name: "port filter hit", port: Some(PORT), rules: 0, pass: false, log_rate: 0 },
    Config { name: "1 rule (block list, no match)", port: None, rules: 1, pass: true, log_rate: 0 },
    Config { name: "1 rule (no match), events on (100/s)", port: None, rules: 1, pass: true, log_rate: 100 },
    Config { name: "100,000 rules (no match)", port: None, rules: 100_000, pass: true, log_rate: 0 },
    Config { name: "1,000,000 rules (no match)", port: None, rules: 1_000_000, pass: true, log_rate: 0 },
    Config { name: "1,000,000 rules, drop by a rule", port: None, rules: 1_000_000, pass: false, log_rate: 0 },
];

/// One run: the kernel's average ns per repeat.
fn ns_once(prog: &ProgramMut<'_>, packet: &[u8]) -> Result<f64> {
    let out = prog
        .test_run(ProgramInput { data_in: Some(packet), repeat: REPEAT, ..Default::default() })
        .context("BPF_PROG_TEST_RUN")?;
    Ok(out.duration.as_nanos() as f64)
}

fn ns_per_packet(prog: &ProgramMut<'_>, packet: &[u8]) -> Result<Vec<f64>> {
    (0..RUNS).map(|_| ns_once(prog, packet)).collect()
}

/// RUNS pairs of runs, the floor then the program, and the ratio within each
/// pair: this VM's speed changes by a third from one second to the next,
/// and the ratio of runs taken tens of milliseconds apart is what stays put.
fn against_floor(floor: &ProgramMut<'_>, prog: &ProgramMut<'_>, packet: &[u8]) -> Result<(Summary, Summary)> {
    let mut ns = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..RUNS {
        let f = ns_once(floor, packet)?;
        let p = ns_once(prog, packet)?;
        ns.push(p);
        ratios.push(p / f);
    }
    Ok((Summary::of(&ns), Summary::of(&ratios)))
}

pub fn load_floor<'obj>(object: &'obj mut MaybeUninit<OpenObject>) -> Result<CgdropSkel<'obj>> {
    let mut open = CgdropSkelBuilder::default().open(object)?;
    open.progs.cgdrop_floor.set_autoload(true);
    open.progs.cgdrop_floor_lookup.set_autoload(true);
    open.progs.cgdrop_floor_sendmsg4.set_autoload(true);
    Ok(open.load()?)
}

pub fn per_packet_cost() -> Result<String> {
    let packets = packets();
    let mut object = MaybeUninit::<OpenObject>::uninit();
    let floor_skel = load_floor(&mut object)?;
    let floor: Vec<Summary> = packets
        .iter()
        .map(|(_, p)| ns_per_packet(&floor_skel.progs.cgdrop_floor, p).map(|s| Summary::of(&s)))
        .collect::<Result<_>>()?;

    let mut header = vec!["program", "configuration", "path"];
    header.extend(packets.iter().map(|(n, _)| *n));
    let mut table = Table::new(
        "Per-packet cost (BPF_PROG_TEST_RUN)",
        &format!(
            "{RUNS} pairs of runs of {REPEAT} repeats each: the floor (a `return 1` cgroup_skb program), then the \
             program, on the same packet. Each cell: the program's median ns per packet, and the ratio to the \
             floor within each pair, median [min–max]. Rules are deny \
             rules per address family that the packet does not match, so the packet passes (a block list); \
             \"drop by a rule\" adds one that it matches. Target: pass path within 1.2× of the floor at \
             1 to 1,000,000 rules, drop path within 1.5×."
        ),
        &header,
    );
    let mut cells = vec!["floor (`return 1`)".to_string(), "—".into(), "pass".into()];
    cells.extend(floor.iter().map(|f| f.cell(1)));
    table.row(&cells);
    // The least a policy with rules pays: the floor plus one (empty) trie lookup.
    let mut cells = vec!["floor + 1 trie lookup".to_string(), "(reference)".into(), "pass".into()];
    for (_, packet) in &packets {
        let (ns, ratio) = against_floor(&floor_skel.progs.cgdrop_floor, &floor_skel.progs.cgdrop_floor_lookup, packet)?;
        cells.push(format!("{:.0} ns, ×{}", ns.median, ratio.cell(2)));
    }
    table.row(&cells);

    // CGDROP_BENCH_CONFIGS="1 rule,drop-all": only the configurations whose names contain one of these.
    let only = std::env::var("CGDROP_BENCH_CONFIGS").ok();
    for config in CONFIGS.iter().filter(|c| only.as_deref().is_none_or(|o| o.split(',').any(|w| c.name.contains(w)))) {
        let rules = filler_rules(config.rules, !config.pass);
        let policy = Policy {
            ingress: true,
            egress: true,
            iface: None,
            port: config.port.map(|p| cgdrop::rules::PortRange { lo: p, hi: p }),
            rules,
            rules_file: None,
            cli_rules: Vec::new(),
            log_rate: config.log_rate,
            kill_existing: false,
            no_new_inbound: false,
            reject_with: Default::default(),
            silent: false,
            dry_run: false,
        };
        let mut object = loader::Objects::new();
        let mut skel = loader::load(&policy, &mut object, true)?;
        loader::apply_rules(&mut skel, &mut Installed::new(), &policy)?;
        for (name, prog) in
            [("cgdrop_egress", Hook::Egress.program(&skel)), ("cgdrop_ingress", Hook::Ingress.program(&skel))]
        {
            let mut cells =
                vec![name.to_string(), config.name.to_string(), if config.pass { "pass" } else { "drop" }.to_string()];
            for (_, packet) in &packets {
                let (ns, ratio) = against_floor(&floor_skel.progs.cgdrop_floor, prog, packet)?;
                cells.push(format!("{:.0} ns, ×{}", ns.median, ratio.cell(2)));
            }
            table.row(&cells);
        }
    }
    table.note(
        "BPF_PROG_TEST_RUN runs the program on a linear skb: the cost of the `bpf_skb_load_bytes` \
         fallback for paged headers is not in these figures. The counters are plain adds at the \
         run's nesting level (no atomics; atomic adds only on kernels that preempt tasks inside \
         programs, which this one does not).",
    );
    Ok(table.finish())
}
