//! The correctness matrix, with real traffic as root: IPv4 and IPv6 × TCP,
//! UDP and ICMP × ingress and egress × eleven policies. Each cell attaches a
//! fresh cgdrop, sends real traffic on loopback, and asserts the verdict the
//! traffic actually got and the counters cgdrop reported.
//!
//! Egress cells: the process inside the cgroup is the client (UDP sender, TCP
//! client, pinger). Ingress cells: it is the server (UDP receiver, TCP
//! listener) or, for ICMP, the pinger whose reply comes in.
mod common;

use std::{fs, thread, time::Duration};

use common::{assert_detached, summary, Cgdrop, Probe, TestCgroup};
use nix::sys::signal::Signal;
use serde_json::Value;

/// Datagrams per UDP cell.
const UDP_COUNT: u64 = 5;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Verdict {
    Pass,
    Drop,
}

/// One policy of the matrix: the flags it adds and the verdict it must give.
struct Config {
    name: &'static str,
    /// Flags; `{port}` is the port of the cell's traffic, `{miss}` another one.
    args: fn(v6: bool) -> Vec<&'static str>,
    /// A rules file to write, if any.
    rules_file: Option<fn(v6: bool) -> &'static str>,
    /// How long to wait after attaching before sending (for rules to expire).
    wait: Duration,
    expect: fn(Proto) -> Verdict,
    dry_run: bool,
    silent: bool,
}

fn always(v: Verdict) -> fn(Proto) -> Verdict {
    match v {
        Verdict::Pass => |_| Verdict::Pass,
        Verdict::Drop => |_| Verdict::Drop,
    }
}

fn configs() -> Vec<Config> {
    let base = |name, args, expect| Config {
        name,
        args,
        rules_file: None,
        wait: Duration::ZERO,
        expect,
        dry_run: false,
        silent: false,
    };
    vec![
        base("no filter", |_| vec![], always(Verdict::Drop)),
        // ICMP has no ports: a port filter never matches it.
        base(
            "port hit",
            |_| vec!["--port", "{port}"],
            |p| if p == Proto::Icmp { Verdict::Pass } else { Verdict::Drop },
        ),
        base("port miss", |_| vec!["--port", "{miss}"], always(Verdict::Pass)),
        base("deny-rule hit", |v6| vec!["--block", if v6 { "::1" } else { "127.0.0.1" }], always(Verdict::Drop)),
        base(
            "deny-rule miss",
            |v6| vec!["--block", if v6 { "2001:db8::1" } else { "192.0.2.1" }],
            always(Verdict::Pass),
        ),
        base("allow-only hit", |v6| vec!["--allow", if v6 { "::1" } else { "127.0.0.0/8" }], always(Verdict::Pass)),
        base(
            "allow-only miss",
            |v6| vec!["--allow", if v6 { "2001:db8::/32" } else { "192.0.2.0/24" }],
            always(Verdict::Drop),
        ),
        base(
            "allow beats deny",
            |v6| {
                if v6 {
                    vec!["--block", "::/0", "--allow", "::1"]
                } else {
                    vec!["--block", "127.0.0.0/8", "--allow", "127.0.0.1"]
                }
            },
            always(Verdict::Pass),
        ),
        Config {
            rules_file: Some(|v6| if v6 { "deny ::1 ttl=1s\n" } else { "deny 127.0.0.1 ttl=1s\n" }),
            wait: Duration::from_millis(1300),
            ..base("expired rule", |_| vec![], always(Verdict::Pass))
        },
        Config { dry_run: true, ..base("dry-run", |_| vec!["--dry-run"], always(Verdict::Pass)) },
        Config { silent: true, ..base("silent", |_| vec!["--silent"], always(Verdict::Drop)) },
    ]
}

/// What the traffic of one cell got.
struct Outcome {
    verdict: Verdict,
    detail: String,
    /// Set when the traffic showed a rejection that must be EPERM at once.
    rejected: bool,
}

struct Cell<'a> {
    cg: &'a TestCgroup,
    addr: &'static str,
    egress: bool,
    proto: Proto,
}

impl Cell<'_> {
    /// Starts what must exist before cgdrop attaches (the server side) and
    /// returns the port of the traffic with a closure that sends it.
    fn run(&self, config: &Config) -> Result<(), String> {
        let v6 = self.addr.contains(':');
        let inside = Some(self.cg);
        let (server_cg, client_cg) = if self.egress { (None, inside) } else { (inside, None) };
        // Servers first: their port goes into --port.
        let mut server = match self.proto {
            Proto::Udp => {
                let most = UDP_COUNT.to_string();
                // Long-lived; stopped (SIGTERM) once the sender is done.
                let mut p = Probe::start(server_cg, &["udp-recv", self.addr, "0", "60", &most]);
                let port = p.next(10)["port"].as_u64().unwrap();
                Some((p, port))
            }
            Proto::Tcp => {
                // Killed when the cell ends.
                let mut p = Probe::start(server_cg, &["tcp-serve", self.addr, "0", "60"]);
                let port = p.next(10)["port"].as_u64().unwrap();
                Some((p, port))
            }
            Proto::Icmp => None,
        };
        let port = server.as_ref().map_or(9, |(_, port)| *port).to_string();
        let miss = if port == "9" { "10".to_string() } else { (port.parse::<u16>().unwrap() ^ 1).to_string() };

        let mut args: Vec<String> = vec![
            "--cgroup".into(),
            self.cg.path.to_string_lossy().into(),
            if self.egress { "--egress" } else { "--ingress" }.into(),
            "--json".into(),
        ];
        for a in (config.args)(v6) {
            args.push(a.replace("{port}", &port).replace("{miss}", &miss));
        }
        let rules_path = self.cg.path.with_file_name(format!("{}.rules", self.cg.name));
        let rules_path = std::env::temp_dir().join(rules_path.file_name().unwrap());
        if let Some(text) = config.rules_file {
            fs::write(&rules_path, text(v6)).unwrap();
            args.push("--rules-file".into());
            args.push(rules_path.to_string_lossy().into());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let cgdrop = Cgdrop::start(&argv);
        thread::sleep(config.wait);

        let outcome = self.traffic(client_cg, &port, &mut server);
        cgdrop.signal(Signal::SIGINT);
        let (status, stdout, stderr) = cgdrop.wait();
        let _ = fs::remove_file(&rules_path);
        if !status.success() {
            return Err(format!("cgdrop exited with {status}: {stderr}"));
        }
        assert_detached(&self.cg.path);
        let s = summary(&stdout);

        let expect = (config.expect)(self.proto);
        if outcome.verdict != expect {
            return Err(format!("traffic got {:?}, expected {expect:?}: {}", outcome.verdict, outcome.detail));
        }
        if outcome.rejected && config.silent {
            return Err(format!("--silent must not reject calls: {}", outcome.detail));
        }
        self.check_counters(config, expect, &s)
    }

    /// Sends the cell's traffic and reports what it got.
    fn traffic(&self, client_cg: Option<&TestCgroup>, port: &str, server: &mut Option<(Probe, u64)>) -> Outcome {
        match self.proto {
            Proto::Udp => {
                let sent = Probe::run(client_cg, &["udp-send", self.addr, port, &UDP_COUNT.to_string(), "100"]);
                let (rx, _) = server.as_mut().unwrap();
                // Loopback delivery is done when sendto() returns; the
                // receiver reads what is queued before it reports.
                let got = rx.finish(10);
                let received = got["received"].as_u64().unwrap();
                let rejected = sent["errors"].get("EPERM").is_some();
                let verdict = if received == UDP_COUNT { Verdict::Pass } else { Verdict::Drop };
                // Partial delivery is neither verdict: report it as a drop with details.
                Outcome { verdict, detail: format!("sent {sent}, received {received}"), rejected }
            }
            Proto::Tcp => {
                let r = Probe::run(client_cg, &["tcp-connect", self.addr, port, "1"]);
                outcome_of(&r)
            }
            Proto::Icmp => {
                // The pinger is inside in both directions: egress drops the
                // request, ingress the reply.
                let r = Probe::run(Some(self.cg), &["ping", self.addr, "1"]);
                outcome_of(&r)
            }
        }
    }

    /// Checks the counters against the verdict: drops are counted where the
    /// hook that made them counts (exactly, for UDP), passes count no drop.
    fn check_counters(&self, config: &Config, expect: Verdict, s: &Value) -> Result<(), String> {
        let n = |path: &[&str]| path.iter().fold(s, |v, k| &v[*k]).as_u64().unwrap_or(u64::MAX);
        let drops = n(&["ingress", "dropped_packets"])
            + n(&["egress", "dropped_packets"])
            + n(&["connect", "rejected"])
            + n(&["sendmsg", "rejected"]);
        let would_drop = expect == Verdict::Drop || config.dry_run;
        if !would_drop {
            return if drops == 0 { Ok(()) } else { Err(format!("nothing may be counted as dropped: {s}")) };
        }
        let (found, wanted_exact): (u64, Option<u64>) = match (self.egress, self.proto, config.silent) {
            // Rejected by the sendmsg hook before a packet exists (and, in a
            // dry run, then counted again by the egress program).
            (true, Proto::Udp, false) => (n(&["sendmsg", "rejected"]), Some(UDP_COUNT)),
            (true, Proto::Udp, true) => (n(&["egress", "dropped_packets"]), Some(UDP_COUNT)),
            (true, Proto::Tcp, false) => (n(&["connect", "rejected"]), Some(1)),
            (true, Proto::Tcp, true) => (n(&["egress", "dropped_packets"]), None),
            (true, Proto::Icmp, _) => (n(&["egress", "dropped_packets"]), Some(1)),
            (false, Proto::Udp, _) => (n(&["ingress", "dropped_packets"]), Some(UDP_COUNT)),
            // SYNs (retransmitted) or the echo request's copy and its reply.
            (false, _, _) => (n(&["ingress", "dropped_packets"]), None),
        };
        match wanted_exact {
            Some(want) if found != want => Err(format!("{want} drops expected, {found} counted: {s}")),
            None if found == 0 => Err(format!("no drop counted: {s}")),
            _ => Ok(()),
        }
    }
}

fn outcome_of(r: &Value) -> Outcome {
    let result = r["result"].as_str().unwrap_or("?");
    let verdict = if result == "ok" { Verdict::Pass } else { Verdict::Drop };
    let rejected = result == "EPERM";
    if rejected {
        // Fail-fast: a rejection is immediate, never a time-out.
        let ms = r["ms"].as_f64().unwrap_or(f64::MAX);
        assert!(ms < 500.0, "EPERM after {ms} ms: {r}");
    }
    Outcome { verdict, detail: r.to_string(), rejected }
}

/// Runs every config × protocol for one direction and family; reports all
/// failing cells together.
fn matrix(addr: &'static str, egress: bool) {
    let dir = if egress { "egress" } else { "ingress" };
    let family = if addr.contains(':') { 6 } else { 4 };
    let mut failures = Vec::new();
    let mut cells = 0;
    for config in configs() {
        for proto in [Proto::Udp, Proto::Tcp, Proto::Icmp] {
            cells += 1;
            // A fresh cgroup per cell: sockets of the previous cell that are
            // still closing (a TCP FIN) keep their cgroup and must not be
            // counted here.
            let cg = TestCgroup::new(&format!("matrix-{dir}-{family}-{cells}"));
            let cell = Cell { cg: &cg, addr, egress, proto };
            if let Err(e) = cell.run(&config) {
                failures.push(format!("{addr} {dir} {proto:?} [{}]: {e}", config.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {cells} cells failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn matrix_ipv4_egress() {
    matrix("127.0.0.1", true);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn matrix_ipv4_ingress() {
    matrix("127.0.0.1", false);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn matrix_ipv6_egress() {
    matrix("::1", true);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn matrix_ipv6_ingress() {
    matrix("::1", false);
}
