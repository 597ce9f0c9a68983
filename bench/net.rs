//! Real traffic on loopback from a process in a benchmark cgroup: pass-path
//! throughput (iperf3), the CPU a dropped packet costs the sender, and how
//! fast a rejected connect() returns — each against nothing attached and
//! against an equivalent nftables `socket cgroupv2` rule, in the same run.
use std::{
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    env::{cgdrop_attached, helper, run_measured, BenchCgroup, NftTable, Proc},
    Summary, Table,
};

const THROUGHPUT_SECS: u32 = 2;
const THROUGHPUT_RUNS: usize = 9;
const FLOOD_PACKETS: u64 = 300_000;
const DROP_RUNS: usize = 3;
const CONNECTS: u64 = 20_000;
const CONNECT_RUNS: usize = 3;

/// The helper commands the benchmark runs as its own child in a cgroup.
/// `flood ADDR:PORT COUNT`: send COUNT 64-byte datagrams, errors ignored.
/// `connect-loop ADDR:PORT COUNT`: socket/connect/close COUNT times; prints ns per loop.
pub fn helper_main(args: &[String]) -> Result<()> {
    match args {
        [cmd, addr, count] if cmd == "flood" => {
            let addr: SocketAddr = addr.parse()?;
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            let payload = [0u8; 64];
            for _ in 0..count.parse::<u64>()? {
                let _ = sock.send_to(&payload, addr);
            }
            Ok(())
        }
        [cmd, addr, count] if cmd == "connect-loop" => {
            let addr: SocketAddr = addr.parse()?;
            let n: u64 = count.parse()?;
            let start = Instant::now();
            for _ in 0..n {
                // Refused or rejected: either is the outcome being timed.
                let _ = TcpStream::connect(addr);
            }
            println!("{}", start.elapsed().as_nanos() as u64 / n);
            Ok(())
        }
        _ => bail!("unknown helper command {args:?}"),
    }
}

/// The three set-ups every comparison runs, interleaved so that machine noise
/// spreads over all of them.
#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Nothing,
    Cgdrop,
    Nftables,
}

const SETUPS: [Setup; 3] = [Setup::Nothing, Setup::Cgdrop, Setup::Nftables];

/// Attaches a set-up to `cg`: cgdrop with `cgdrop_flags`, or an nftables
/// table with `nft_out`/`nft_in` statements. Dropping the guard detaches it.
fn attach(
    setup: Setup,
    cg: &BenchCgroup,
    cgdrop_flags: &[&str],
    nft_out: &[&str],
    nft_in: &[&str],
) -> Result<Option<Box<dyn Send>>> {
    Ok(match setup {
        Setup::Nothing => None,
        Setup::Cgdrop => Some(Box::new(cgdrop_attached(cg, cgdrop_flags)?.0)),
        Setup::Nftables => Some(Box::new(NftTable::load(&NftTable::script(cg, nft_out, nft_in))?.0)),
    })
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn iperf3(cg: &BenchCgroup, port: u16, udp: bool) -> Result<f64> {
    let mut argv: Vec<String> =
        // -A 0,1: the client on CPU 0, the server on CPU 1, in every run (the
        // scheduler's placement would otherwise differ from run to run).
        ["iperf3", "-c", "127.0.0.1", "-p", &port.to_string(), "-t", &THROUGHPUT_SECS.to_string(), "-J", "-A", "0,1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    if udp {
        // Small packets, as fast as the sender goes: packets per second.
        argv.extend(["-u", "-b", "0", "-l", "64"].map(String::from));
    }
    let (json, _, _) = run_measured(Some(cg), &argv)?;
    let v: serde_json::Value = serde_json::from_str(&json).context("iperf3 -J output")?;
    if udp {
        let sum = &v["end"]["sum"];
        let packets = sum["packets"].as_f64().context("packets")? - sum["lost_packets"].as_f64().unwrap_or(0.0);
        Ok(packets / sum["seconds"].as_f64().context("seconds")?)
    } else {
        Ok(v["end"]["sum_received"]["bits_per_second"].as_f64().context("bits_per_second")? / 1e9)
    }
}

pub fn throughput() -> Result<String> {
    let cg = BenchCgroup::new("tput")?;
    let port = free_port()?;
    let _server = Proc(
        Command::new("iperf3")
            .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("iperf3 (scripts/deps.sh bench installs it)")?,
    );
    thread::sleep(Duration::from_millis(300));
    // A policy that does not match the traffic: a block list for another host.
    let cgdrop_flags = ["--block", "192.0.2.1"];
    let nft_out = ["ip daddr 192.0.2.1 drop"];
    let nft_in = ["ip saddr 192.0.2.1 drop"];
    let mut table = Table::new(
        "Throughput on the pass path (loopback, iperf3)",
        &format!(
            "iperf3 client in a cgroup, server outside, client pinned to CPU 0 and server to CPU 1, \
             {THROUGHPUT_SECS} s per run, {THROUGHPUT_RUNS} rounds of the three set-ups one after the other (each round starting \
             with the next set-up). \
             (a) nothing attached; (b) cgdrop with a policy that does not match (`--block 192.0.2.1`, both \
             directions); (c) an nftables table with the equivalent `socket cgroupv2` rules in output and input. \
             Each cell: median [min–max]; the ratios are taken within each round (runs seconds apart), median \
             [min–max] of the {THROUGHPUT_RUNS} rounds. Targets: b/a ≥ 0.98, b/c ≥ 1."
        ),
        &["traffic", "(a) nothing", "(b) cgdrop", "(c) nftables", "b/a", "b/c"],
    );
    for (name, udp, digits) in [("TCP, Gbit/s", false, 2), ("UDP 64-byte, packets/s", true, 0)] {
        let mut samples = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..THROUGHPUT_RUNS {
            // Each round starts with another set-up: none is always first (or last).
            for k in 0..SETUPS.len() {
                let i = (round + k) % SETUPS.len();
                let _guard = attach(SETUPS[i], &cg, &cgdrop_flags, &nft_out, &nft_in)?;
                samples[i].push(iperf3(&cg, port, udp)?);
            }
        }
        let ratio =
            |x: &[f64], y: &[f64]| -> Summary { Summary::of(&x.iter().zip(y).map(|(x, y)| x / y).collect::<Vec<_>>()) };
        let (ba, bc) = (ratio(&samples[1], &samples[0]), ratio(&samples[1], &samples[2]));
        let [a, b, c] = samples.map(|s| Summary::of(&s));
        table.row(&[name.to_string(), a.cell(digits), b.cell(digits), c.cell(digits), ba.cell(3), bc.cell(3)]);
    }
    // What the throughput's spread cannot show, measured in the traffic
    // itself: the programs' own run time (kernel.bpf_stats_enabled) per
    // second of the flow, in runs of their own (the statistics cost two
    // clock reads per run, which the rounds above must not pay).
    let mut costs = Vec::new();
    for (name, udp) in [("TCP", false), ("UDP 64-byte", true)] {
        let mut shares = Vec::new();
        let mut per_run = Vec::new();
        for _ in 0..COST_RUNS {
            let _guard = attach(Setup::Cgdrop, &cg, &cgdrop_flags, &nft_out, &nft_in)?;
            let (ns, runs, wall) = program_time(&cg, || iperf3(&cg, port, udp).map(|_| ()))?;
            shares.push(ns / wall.as_nanos() as f64);
            per_run.push(ns / runs.max(1) as f64);
        }
        let share = Summary::of(&shares);
        costs.push(format!(
            "{name}: the programs ran {:.1} ns per run, {:.2}% [{:.2}–{:.2}%] of the flow's time (so at most \
             that much of one CPU's throughput: b/a ≥ {:.3} if all of it fell on the busier CPU)",
            Summary::of(&per_run).median,
            share.median * 100.0,
            share.min * 100.0,
            share.max * 100.0,
            1.0 - share.max
        ));
    }
    table.note(&format!(
        "The programs' cost in this traffic ({COST_RUNS} more runs of (b) with kernel.bpf_stats_enabled, which adds \
         two clock reads to every run and so overstates it): {}.",
        costs.join("; ")
    ));
    Ok(table.finish())
}

const COST_RUNS: usize = 3;

/// Runs `f` with kernel.bpf_stats_enabled on and returns the run time (ns)
/// and runs of the programs attached to `cg` during it, and its wall time.
fn program_time(cg: &BenchCgroup, f: impl FnOnce() -> Result<()>) -> Result<(f64, u64, Duration)> {
    const KNOB: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(KNOB).context("reading kernel.bpf_stats_enabled")?;
    std::fs::write(KNOB, "1").context("enabling kernel.bpf_stats_enabled")?;
    let result = (|| {
        let ids = attached_ids(cg)?;
        let t0 = run_times(&ids)?;
        let start = Instant::now();
        f()?;
        let wall = start.elapsed();
        let t1 = run_times(&ids)?;
        Ok(((t1.0 - t0.0) as f64, t1.1 - t0.1, wall))
    })();
    let _ = std::fs::write(KNOB, before.trim());
    result
}

/// The ids of the programs attached to `cg` (bpftool cgroup show).
fn attached_ids(cg: &BenchCgroup) -> Result<Vec<u64>> {
    let out = Command::new("bpftool").args(["-j", "cgroup", "show"]).arg(&cg.path).output().context("bpftool")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool cgroup show -j")?;
    let ids: Vec<u64> = v.as_array().into_iter().flatten().filter_map(|p| p["id"].as_u64()).collect();
    if ids.is_empty() {
        bail!("no program attached to {}", cg.path.display());
    }
    Ok(ids)
}

/// The summed run_time_ns and run_cnt of programs.
fn run_times(ids: &[u64]) -> Result<(u64, u64)> {
    let mut sum = (0, 0);
    for id in ids {
        let out =
            Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]).output().context("bpftool")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool prog show -j")?;
        sum.0 += v["run_time_ns"].as_u64().unwrap_or(0);
        sum.1 += v["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(sum)
}

const PASS_CPU_ROUNDS: usize = 11;

/// What the throughput's spread cannot show, in CPU time instead of rate:
/// a CPU-bound sender's cost per datagram that the policy lets through, with
/// nothing, cgdrop and nftables attached, interleaved round by round. CPU
/// time is what a CPU-bound flow's rate is the inverse of, and the VM's
/// changing speed moves it less than the rate over a couple of seconds.
pub fn pass_cpu() -> Result<String> {
    let cg = BenchCgroup::new("passcpu")?;
    let sink = UdpSocket::bind("127.0.0.1:0")?;
    let target = sink.local_addr()?.to_string();
    let mut table = Table::new(
        "Pass path: sender CPU per datagram let through",
        &format!(
            "A UDP flood of {FLOOD_PACKETS} 64-byte datagrams (unconnected sendto: the sendmsg4 and egress \
             programs run for each) from the cgroup to a loopback socket outside it; the sender's CPU time \
             (user + system, from wait4, which includes the loopback delivery) per datagram. {PASS_CPU_ROUNDS} \
             rounds of (a) nothing, (b) cgdrop with a policy that does not match (`--block 192.0.2.1`, both \
             directions), (c) the equivalent nftables `socket cgroupv2` rules, each round starting with the next \
             set-up, and (d) two programs that only return 1, on the egress and sendmsg4 hooks: what any \
             program there costs. The ratios are taken within each round: a/b is the rate a CPU-bound sender \
             keeps with cgdrop (the throughput's b/a), c/b against nftables, a/d with the empty programs. \
             Targets: a/b ≥ 0.98, c/b ≥ 1."
        ),
        &["set-up", "ns of CPU per datagram", "a/b, c/b (per round)"],
    );
    let flood = helper(&["flood".into(), target, FLOOD_PACKETS.to_string()]);
    // (d): `return 1` programs on the two hooks cgdrop's programs run at for
    // this traffic: what any program there costs, cgdrop's or another's.
    let mut object = std::mem::MaybeUninit::uninit();
    let floors = crate::prog::load_floor(&mut object)?;
    let cgroup_fd = std::fs::File::open(&cg.path).context("opening the cgroup")?;
    let mut samples = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for round in 0..PASS_CPU_ROUNDS {
        for k in 0..samples.len() {
            let i = (round + k) % samples.len();
            let _guard = if i < SETUPS.len() {
                attach(
                    SETUPS[i],
                    &cg,
                    &["--block", "192.0.2.1"],
                    &["ip daddr 192.0.2.1 drop"],
                    &["ip saddr 192.0.2.1 drop"],
                )?
            } else {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&cgroup_fd);
                let links = [
                    floors.progs.cgdrop_floor.attach_cgroup(fd).context("attaching the egress floor")?,
                    floors.progs.cgdrop_floor_sendmsg4.attach_cgroup(fd).context("attaching the sendmsg4 floor")?,
                ];
                Some(Box::new(links) as Box<dyn Send>)
            };
            let (_, _, cpu) = run_measured(Some(&cg), &flood)?;
            samples[i].push(cpu.as_nanos() as f64 / FLOOD_PACKETS as f64);
        }
    }
    let ratio = |x: &[f64], y: &[f64]| Summary::of(&x.iter().zip(y).map(|(x, y)| x / y).collect::<Vec<_>>());
    let (ab, cb, ad) =
        (ratio(&samples[0], &samples[1]), ratio(&samples[2], &samples[1]), ratio(&samples[0], &samples[3]));
    let names = ["(a) nothing", "(b) cgdrop", "(c) nftables", "(d) `return 1` on egress and sendmsg4"];
    for (i, s) in samples.iter().enumerate() {
        let cell = match i {
            0 => format!("a/b {}", ab.cell(3)),
            2 => format!("c/b {}", cb.cell(3)),
            3 => format!("a/d {}", ad.cell(3)),
            _ => "—".to_string(),
        };
        table.row(&[names[i].to_string(), Summary::of(s).cell(0), cell]);
    }
    Ok(table.finish())
}

pub fn drop_path() -> Result<String> {
    let cg = BenchCgroup::new("drop")?;
    let sink = UdpSocket::bind("127.0.0.1:0")?;
    let target = sink.local_addr()?.to_string();
    let ip = target.split(':').next().unwrap_or("127.0.0.1").to_string();
    let port = sink.local_addr()?.port().to_string();
    let mut table = Table::new(
        "Drop path: sender CPU per dropped packet",
        &format!(
            "A UDP flood of {FLOOD_PACKETS} 64-byte datagrams from the cgroup to a loopback socket that the policy \
             drops; the sender's CPU time (user + system, from wait4) per datagram, {DROP_RUNS} runs. \
             The baseline is an nftables `socket cgroupv2 … drop` rule in output; \"no policy\" is the cost of \
             delivering the datagram."
        ),
        &["set-up", "ns of CPU per datagram", "ratio to nftables drop"],
    );
    let flood = helper(&["flood".into(), target.clone(), FLOOD_PACKETS.to_string()]);
    let nft_rule = format!("ip daddr {ip} udp dport {port} drop");
    let setups: [(&str, Option<&[&str]>); 4] = [
        ("no policy (delivered)", None),
        ("nftables drop", Some(&[])),
        ("cgdrop (sendmsg hook rejects, EPERM)", Some(&["--egress"])),
        ("cgdrop --silent (egress program drops)", Some(&["--egress", "--silent"])),
    ];
    let mut results = Vec::new();
    for (name, flags) in setups {
        let mut samples = Vec::new();
        for _ in 0..DROP_RUNS {
            let _guard: Option<Box<dyn Send>> = match flags {
                None => None,
                Some([]) => Some(Box::new(NftTable::load(&NftTable::script(&cg, &[&nft_rule], &[]))?.0)),
                Some(flags) => Some(Box::new(cgdrop_attached(&cg, flags)?.0)),
            };
            let (_, _, cpu) = run_measured(Some(&cg), &flood)?;
            samples.push(cpu.as_nanos() as f64 / FLOOD_PACKETS as f64);
        }
        results.push((name, Summary::of(&samples)));
    }
    let nft = results[1].1.median;
    for (name, s) in results {
        table.row(&[name.to_string(), s.cell(0), format!("{:.2}", s.median / nft)]);
    }
    Ok(table.finish())
}

pub fn rejection_latency() -> Result<String> {
    let cg = BenchCgroup::new("reject")?;
    let port = free_port()?; // closed: nothing listens on it
    let target = format!("127.0.0.1:{port}");
    let mut table = Table::new(
        "Rejection latency: socket/connect/close loop",
        &format!(
            "{CONNECTS} iterations of socket/connect/close from the cgroup to 127.0.0.1:{port}, {CONNECT_RUNS} runs. \
             Baseline: the same loop to a closed port with no policy (the kernel's own refusal, a RST). \
             nftables: `reject with tcp reset` in output. Target: cgdrop ≤ 0.6× the closed-port loop."
        ),
        &["set-up", "µs per connect", "ratio to closed port"],
    );
    let nft_rule = format!("ip daddr 127.0.0.1 tcp dport {port} reject with tcp reset");
    let block = format!("127.0.0.1:{port}");
    let setups: [(&str, Setup); 3] = [
        ("closed port, no policy", Setup::Nothing),
        ("cgdrop (connect hook, EPERM)", Setup::Cgdrop),
        ("nftables reject with tcp reset", Setup::Nftables),
    ];
    let mut samples = vec![Vec::new(); setups.len()];
    for _ in 0..CONNECT_RUNS {
        for (i, (_, setup)) in setups.iter().enumerate() {
            let _guard = attach(*setup, &cg, &["--block", &block], &[&nft_rule], &[])?;
            let (out, _, _) =
                run_measured(Some(&cg), &helper(&["connect-loop".into(), target.clone(), CONNECTS.to_string()]))?;
            samples[i].push(out.trim().parse::<f64>().context("connect-loop output")? / 1000.0);
        }
    }
    let base = Summary::of(&samples[0]).median;
    for ((name, _), s) in setups.iter().zip(&samples) {
        let s = Summary::of(s);
        table.row(&[name.to_string(), s.cell(2), format!("{:.2}", s.median / base)]);
    }
    Ok(table.finish())
}
