//! `make bench`: cgdrop's costs, each measured against a baseline in the same
//! run and reported as a ratio (the machines are shared and noisy). Writes a
//! Markdown report to the path given as the first argument (bench/RESULTS.md).
//!
//! Sections: per-packet cost (BPF_PROG_TEST_RUN against a `return 1`
//! program), pass-path throughput (iperf3: nothing / cgdrop / nftables),
//! drop-path CPU per packet, rejection latency, start-up, rule scale. See
//! bench/README.md. Needs root; everything it creates is named
//! `cgdrop-test-bench-…` and removed, even when a step fails.
mod env;
mod net;
// The packet builders of the tests: one set of fixtures for tests and benches.
#[path = "../tests/common/packets.rs"]
mod packets;
mod prog;
mod startup;

use std::{fmt::Write as _, fs, time::SystemTime};

/// Median, minimum and maximum of samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Self {
        let mut s = samples.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let median = if s.is_empty() {
            f64::NAN
        } else if s.len() % 2 == 1 {
            s[s.len() / 2]
        } else {
            (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
        };
        Self { median, min: *s.first().unwrap_or(&f64::NAN), max: *s.last().unwrap_or(&f64::NAN) }
    }

    /// `12.3 [11.9–13.0]` with `digits` decimals.
    pub fn cell(&self, digits: usize) -> String {
        format!("{:.d$} [{:.d$}–{:.d$}]", self.median, self.min, self.max, d = digits)
    }
}

/// A Markdown table under construction.
pub struct Table {
    out: String,
}

impl Table {
    pub fn new(title: &str, intro: &str, header: &[&str]) -> Self {
        let mut out = format!("\n## {title}\n\n{intro}\n\n| {} |\n|", header.join(" | "));
        for _ in header {
            out += "---|";
        }
        out += "\n";
        Self { out }
    }

    pub fn row(&mut self, cells: &[String]) {
        let _ = writeln!(self.out, "| {} |", cells.join(" | "));
        eprintln!("bench: {}", cells.join(" | "));
    }

    pub fn note(&mut self, text: &str) {
        let _ = write!(self.out, "\n{text}\n");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A benchmark section: runs and returns its Markdown.
type Section = fn() -> anyhow::Result<String>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--helper") {
        if let Err(e) = net::helper_main(&args[2..]) {
            eprintln!("bench helper: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo bench` passes `--bench`; the report path is the other argument.
    let out_path = std::env::args().skip(1).find(|a| !a.starts_with("--")).unwrap_or_else(|| "bench/RESULTS.md".into());
    if !nix::unistd::geteuid().is_root() {
        eprintln!("bench: needs root (it attaches programs and creates cgroups)");
        std::process::exit(1);
    }
    let date = {
        let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let out =
            std::process::Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%d %H:%M UTC"]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
    };
    let mut report = format!(
        "# cgdrop benchmark results\n\nMachine: Linux {}, {} CPUs ({}). Date: {date}. \
         Produced by `make bench` (bench/main.rs); every figure is the median of several runs \
         with [min–max], and a ratio against a baseline measured in the same run.\n",
        env::kernel(),
        env::cpus(),
        env::cpu_model()
    );
    let sections: [(&str, Section); 7] = [
        ("per-packet cost", prog::per_packet_cost),
        ("throughput", net::throughput),
        ("pass cpu", net::pass_cpu),
        ("drop path", net::drop_path),
        ("rejection latency", net::rejection_latency),
        ("start-up", startup::startup),
        ("rule scale", startup::rule_scale),
    ];
    // CGDROP_BENCH_ONLY="per-packet cost,start-up" runs only those sections.
    let only = std::env::var("CGDROP_BENCH_ONLY").ok();
    let mut failed = false;
    for (name, run) in sections {
        if only.as_ref().is_some_and(|o| !o.split(',').any(|w| w.trim() == name)) {
            continue;
        }
        eprintln!("bench: {name}…");
        match run() {
            Ok(section) => report += &section,
            Err(e) => {
                failed = true;
                eprintln!("bench: {name} failed: {e:#}");
                let _ = write!(report, "\n## {name}\n\nFailed: {e:#}\n");
            }
        }
    }
    if let Err(e) = fs::write(&out_path, &report) {
        eprintln!("bench: writing {out_path}: {e}");
        std::process::exit(1);
    }
    eprintln!("bench: wrote {out_path}");
    if failed {
        std::process::exit(1);
    }
}
