//! Start-up (exec → all programs attached) and rule scale (time to load
//! 10,000 … 1,000,000 rules, and the loader's peak memory).
use std::{
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use cgdrop::kernel::loader::Hook;

use crate::{
    env::{cgdrop_attached, BenchCgroup, NftTable},
    Summary, Table,
};

const STARTUP_RUNS: usize = 10;
const SCALE_RUNS: usize = 3;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A pause before each timed start, the same for every tool: the kernel
/// frees the previous tool's programs and maps in the background (RCU,
/// workqueues) for a few hundred milliseconds, on the CPUs the next start
/// verifies on. Measured here: a cgdrop start right after bpftool's
/// teardown and a `run -- true` took 25.1 ms [15.2-34.8], the same 0.3 s
/// later 15.9 ms [12.1-17.7] (12 rounds, interleaved).
fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

/// bpftool loading the same object and attaching its seven programs.
fn bpftool_attach(cg: &BenchCgroup) -> Result<Duration> {
    let obj = find_object()?;
    let pins = PathBuf::from(format!("/sys/fs/bpf/cgdrop-test-bench-{}", std::process::id()));
    let hooks = [
        ("cgdrop_ingress", "ingress"),
        ("cgdrop_egress", "egress"),
        ("cgdrop_connect4", "connect4"),
        ("cgdrop_connect6", "connect6"),
        ("cgdrop_sendmsg4", "sendmsg4"),
        ("cgdrop_sendmsg6", "sendmsg6"),
        ("cgdrop_sock_create", "sock_create"),
    ];
    let start = Instant::now();
    let run = |args: Vec<String>| -> Result<()> {
        let out = Command::new("bpftool").args(&args).output()?;
        if !out.status.success() {
            bail!("bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let result = (|| {
        run(vec!["prog".into(), "loadall".into(), obj.to_string_lossy().into(), pins.to_string_lossy().into()])?;
        for (prog, hook) in hooks {
            let pin = pins.join(prog).to_string_lossy().into_owned();
            run(vec![
                "cgroup".into(),
                "attach".into(),
                cg.path.to_string_lossy().into(),
                hook.into(),
                "pinned".into(),
                pin,
                "multi".into(),
            ])?;
        }
        Ok(start.elapsed())
    })();
    for (prog, hook) in hooks {
        let pin = pins.join(prog);
        let _ = Command::new("bpftool")
            .arg("cgroup")
            .arg("detach")
            .arg(&cg.path)
            .arg(hook)
            .arg("pinned")
            .arg(&pin)
            .output();
    }
    let _ = fs::remove_dir_all(&pins);
    result
}

fn find_object() -> Result<PathBuf> {
    Ok(PathBuf::from(cgdrop::kernel::BPF_OBJECT_PLAIN))
}

/// `cgdrop run --block 192.0.2.1 -- true`, end to end.
fn run_true() -> Result<Duration> {
    let start = Instant::now();
    let out = Command::new(crate::env::CGDROP).args(["run", "--block", "192.0.2.1", "--", "true"]).output()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!("cgdrop run -- true: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

/// Where the load's time goes: each program's verification (µs) and the
/// instructions the verifier walked, from libbpf's log of one `run -- true`.
fn verifier_times() -> Result<Vec<(String, u64, u64)>> {
    let out = Command::new(crate::env::CGDROP)
        .args(["run", "--verbose", "--block", "192.0.2.1", "--", "true"])
        .env("CGDROP_VERIFIER_STATS", "4")
        .output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    let mut progs = Vec::new();
    let mut name = String::new();
    let mut usec = 0;
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("libbpf: prog '") {
            if rest.contains("BEGIN PROG LOAD LOG") {
                name = rest.split('\'').next().unwrap_or_default().to_string();
            }
        } else if let Some(rest) = line.strip_prefix("verification time ") {
            usec = rest.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("processed ") {
            let insns = rest.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            progs.push((std::mem::take(&mut name), usec, insns));
        }
    }
    Ok(progs)
}

pub fn startup() -> Result<String> {
    let cg = BenchCgroup::new("startup")?;
    let mut samples = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let nft_script = NftTable::script(&cg, &["ip daddr 192.0.2.1 drop"], &["ip saddr 192.0.2.1 drop"]);
    for _ in 0..STARTUP_RUNS {
        settle();
        let (proc, took) = cgdrop_attached(&cg, &["--block", "192.0.2.1"])?;
        drop(proc);
        samples[0].push(ms(took));
        settle();
        let (table, took) = NftTable::load(&nft_script)?;
        drop(table);
        samples[1].push(ms(took));
        settle();
        samples[2].push(ms(bpftool_attach(&cg)?));
        settle();
        samples[3].push(ms(run_true()?));
    }
    let [cgdrop, nft, bpftool, run] = samples.map(|s| Summary::of(&s));
    let mut table = Table::new(
        "Start-up: exec → attached",
        &format!(
            "{STARTUP_RUNS} runs, each after a 0.5 s pause (the kernel frees the previous tool's programs \
             and maps in the background; right after bpftool's teardown a cgdrop start measured ~10 ms more). \
             cgdrop: from spawning `cgdrop --cgroup … --block 192.0.2.1` to its \"attached\" line \
             (load, rules, seven links). nftables: `nft -f` of the equivalent table (output and input rules). \
             bpftool: `bpftool prog loadall` of the same object plus seven `bpftool cgroup attach`. \
             `run -- true`: `cgdrop run --block 192.0.2.1 -- true` end to end (cgroup made, policy attached, \
             the command run, everything removed). Targets: start-up < 20 ms (goal: faster than `nft -f`), \
             `run -- true` < 40 ms."
        ),
        &["tool", "ms", "ratio to nft -f"],
    );
    for (name, s) in
        [("cgdrop", cgdrop), ("nft -f", nft), ("bpftool loadall + 7 attach", bpftool), ("cgdrop run -- true", run)]
    {
        table.row(&[name.to_string(), s.cell(1), format!("{:.2}", s.median / nft.median)]);
    }
    let progs = verifier_times()?;
    let total: u64 = progs.iter().map(|p| p.1).sum();
    // Some programs load on the other CPU (kernel::loader::Loaded): those of
    // this policy's hooks (both directions, events on) that Hook::aside picks.
    let side_hooks = Hook::aside(&Hook::wanted(true, true, false, true));
    let on_the_side = |name: &str| side_hooks.iter().any(|h| name == format!("cgdrop_{}", h.name()));
    let aside: u64 = progs.iter().filter(|p| on_the_side(&p.0)).map(|p| p.1).sum();
    let side_names: Vec<&str> = progs.iter().filter(|p| on_the_side(&p.0)).map(|p| p.0.as_str()).collect();
    let each: Vec<String> =
        progs.iter().map(|(n, us, insns)| format!("{n} {:.1} ms ({insns} insns)", *us as f64 / 1000.0)).collect();
    table.note(&format!(
        "Where the time goes: the kernel's verifier took {:.1} ms of CPU in one start ({}), on two CPUs at once: \
         {:.1} ms for {}, loaded by a second instance of the object, beside {:.1} ms for the others; the \
         rest of a start is libbpf's feature probes and the object's BTF, map creation, the \
         links and the cgroup (the policy object has no CO-RE relocations: the kernel's BTF is not read).",
        total as f64 / 1000.0,
        each.join(", "),
        aside as f64 / 1000.0,
        side_names.join(", "),
        (total - aside) as f64 / 1000.0
    ));
    Ok(table.finish())
}

pub fn rule_scale() -> Result<String> {
    let cg = BenchCgroup::new("scale")?;
    let mut table = Table::new(
        "Rule scale",
        &format!(
            "A rules file of N IPv4 /32 deny rules, {SCALE_RUNS} runs: time from exec to attached (read, parse, \
             check, the rules written: from 4,096 on into the host table through mmap, attach) and the loader's peak RSS (VmHWM once attached). The \
             baseline is the same start with no rules. Target: 1,000,000 rules in < 1 s, peak RSS < 100 MiB."
        ),
        &["rules", "s to attached", "ratio to no rules", "peak RSS, MiB"],
    );
    let mut base = None;
    for n in [0usize, 10_000, 100_000, 1_000_000] {
        let file = std::env::temp_dir().join(format!("cgdrop-test-bench-{n}-{}.rules", std::process::id()));
        let text: String =
            (0..n as u32).map(|i| format!("deny {}\n", std::net::Ipv4Addr::from(0x0a00_0000 + i))).collect();
        fs::write(&file, text)?;
        let mut secs = Vec::new();
        let mut rss = Vec::new();
        for _ in 0..SCALE_RUNS {
            let flags = ["--rules-file", file.to_str().unwrap_or_default()];
            let (proc, took) = cgdrop_attached(&cg, &flags)?;
            secs.push(took.as_secs_f64());
            // The loader's own high-water mark since exec (wait4's ru_maxrss
            // would include the benchmark's memory, inherited at fork).
            let status = fs::read_to_string(format!("/proc/{}/status", proc.0.id()))?;
            let hwm_kib: f64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .context("VmHWM in /proc/<pid>/status")?;
            rss.push(hwm_kib / 1024.0);
            drop(proc);
        }
        let _ = fs::remove_file(&file);
        let s = Summary::of(&secs);
        let base_median = *base.get_or_insert(s.median);
        table.row(&[n.to_string(), s.cell(3), format!("{:.1}", s.median / base_median), Summary::of(&rss).cell(0)]);
    }
    Ok(table.finish())
}
