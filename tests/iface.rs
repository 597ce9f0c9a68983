//! `--iface` for real: two network namespaces joined by a veth pair that the
//! test creates. A process of the cgroup in namespace A loses its traffic over
//! the veth to namespace B and keeps its traffic on `lo`. cgdrop itself runs
//! in namespace A (interface indexes are per namespace). Root only.
mod common;

use std::process::Command;

use common::{assert_detached, summary, Cgdrop, TestCgroup};
use nix::sys::signal::Signal;
use serde_json::json;

/// Two namespaces `cgdrop-test-{a,b}-<pid>-<n>` with veth `cgdrop-va` (10.199.0.1,
/// in A) and `cgdrop-vb` (10.199.0.2, in B). Deleted on drop (the veth goes
/// with its namespace).
struct NetnsPair {
    a: String,
    b: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl NetnsPair {
    fn new() -> Self {
        // The tests of this file run in parallel: one pair each.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let pair = Self { a: format!("cgdrop-test-a-{pid}-{n}"), b: format!("cgdrop-test-b-{pid}-{n}") };
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        ip(&["-n", &pair.a, "link", "add", "cgdrop-va", "type", "veth", "peer", "name", "cgdrop-vb", "netns", &pair.b]);
        ip(&["-n", &pair.a, "addr", "add", "10.199.0.1/24", "dev", "cgdrop-va"]);
        ip(&["-n", &pair.b, "addr", "add", "10.199.0.2/24", "dev", "cgdrop-vb"]);
        for (ns, dev) in [(&pair.a, "cgdrop-va"), (&pair.b, "cgdrop-vb"), (&pair.a, "lo"), (&pair.b, "lo")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    /// The command prefix that runs a program in namespace `ns` (only the
    /// network namespace changes: the cgroup2 and bpffs mounts stay visible).
    fn enter(ns: &str) -> Vec<String> {
        vec!["nsenter".into(), format!("--net=/run/netns/{ns}"), "--".into()]
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// netprobe in a namespace (and in the cgroup, if given); returns its probe.
fn probe_in(ns: &str, cg: Option<&TestCgroup>, args: &[&str]) -> common::Probe {
    let mut full: Vec<String> = NetnsPair::enter(ns);
    full.push("python3".into());
    full.push(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netprobe.py").into());
    full.extend(args.iter().map(|s| s.to_string()));
    common::Probe::start_cmd(cg, &full)
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn iface_filter_drops_on_the_veth_and_keeps_lo() {
    let ns = NetnsPair::new();
    let cg = TestCgroup::new("iface");

    let mut remote = probe_in(&ns.b, None, &["udp-recv", "10.199.0.2", "0", "60", "10"]);
    let remote_port = remote.next(10)["port"].as_u64().unwrap().to_string();
    let mut local = probe_in(&ns.a, None, &["udp-recv", "127.0.0.1", "0", "60", "10"]);
    let local_port = local.next(10)["port"].as_u64().unwrap().to_string();
    let mut tcp_remote = probe_in(&ns.b, None, &["tcp-serve", "10.199.0.2", "0", "5"]);
    let tcp_port = tcp_remote.next(10)["port"].as_u64().unwrap().to_string();

    // Before cgdrop: the veth path works.
    let mut before = probe_in(&ns.a, Some(&cg), &["tcp-connect", "10.199.0.2", &tcp_port, "2"]);
    assert_eq!(before.next(5)["result"], "ok", "the veth pair carries traffic");

    let mut cmd = NetnsPair::enter(&ns.a);
    cmd.push(common::CGDROP.into());
    cmd.extend(["--cgroup", cg.path.to_str().unwrap(), "--iface", "cgdrop-va", "--egress", "--json"].map(String::from));
    let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let cgdrop = Cgdrop::start_cmd(&argv);

    let mut to_remote = probe_in(&ns.a, Some(&cg), &["udp-send", "10.199.0.2", &remote_port, "10", "100"]);
    assert_eq!(to_remote.next(10), json!({"sent": 0, "errors": {"EPERM": 10}}), "dropped on cgdrop-va");
    let mut to_local = probe_in(&ns.a, Some(&cg), &["udp-send", "127.0.0.1", &local_port, "10", "100"]);
    assert_eq!(to_local.next(10), json!({"sent": 10, "errors": {}}), "lo is not filtered");
    assert_eq!(remote.finish(10), json!({"received": 0}));
    assert_eq!(local.finish(10), json!({"received": 10}));
    // connect() cannot know the interface: no fail-fast, the SYN is dropped and the connect hangs.
    let mut tcp = probe_in(&ns.a, Some(&cg), &["tcp-connect", "10.199.0.2", &tcp_port, "1"]);
    assert_eq!(tcp.next(5)["result"], "timeout", "with --iface, connect() is not rejected at once");

    cgdrop.signal(Signal::SIGINT);
    let (status, stdout, stderr) = cgdrop.wait();
    assert!(status.success(), "{stderr}");
    assert_detached(&cg.path);
    let s = summary(&stdout);
    let n = |dir: &str, field: &str| s[dir][field].as_u64().unwrap();
    // Passed: exactly the 10 datagrams on lo. Dropped: the 10 on the veth and
    // the SYN(s) of the hanging connect (a 60-byte IPv4 SYN at least).
    assert_eq!(n("egress", "packets") - n("egress", "dropped_packets"), 10, "{s}");
    assert_eq!(n("egress", "bytes") - n("egress", "dropped_bytes"), 10 * 128, "{s}");
    assert!(n("egress", "dropped_packets") >= 11, "{s}");
    assert!(n("egress", "dropped_bytes") >= 10 * 128 + 60, "{s}");
    assert_eq!(s["connect"]["rejected"], 0, "{s}");
}

/// `udp-send` of 20 datagrams from a process of `cg` in namespace `ns` (None:
/// this one) to a receiver there on 127.0.0.1; returns how many arrived.
fn loopback_delivered(ns: Option<&str>, cg: &TestCgroup) -> u64 {
    let (mut recv, mut send): (common::Probe, Vec<String>) = match ns {
        Some(ns) => (probe_in(ns, None, &["udp-recv", "127.0.0.1", "0", "30"]), NetnsPair::enter(ns)),
        None => (common::Probe::start(None, &["udp-recv", "127.0.0.1", "0", "30"]), Vec::new()),
    };
    let port = recv.next(10)["port"].as_u64().unwrap().to_string();
    send.push("python3".into());
    send.push(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netprobe.py").into());
    send.extend(["udp-send", "127.0.0.1", &port, "20", "16"].iter().map(|s| s.to_string()));
    let mut sender = common::Probe::start_cmd(Some(cg), &send);
    let _ = sender.next(20);
    recv.finish(10)["received"].as_u64().unwrap()
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn iface_means_the_interface_of_the_namespace_where_it_was_named() {
    let ns = NetnsPair::new();
    let cg = TestCgroup::new("iface-netns");
    // `lo` is index 1 in every namespace: named in A, it is A's lo only.
    let mut argv = NetnsPair::enter(&ns.a);
    let cgdrop_bin = common::CGDROP.to_string();
    argv.extend([
        cgdrop_bin,
        "--cgroup".into(),
        cg.path.to_str().unwrap().into(),
        "--iface".into(),
        "lo".into(),
        "--egress".into(),
    ]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let cgdrop = Cgdrop::start_cmd(&argv);
    let in_a = loopback_delivered(Some(&ns.a), &cg);
    let here = loopback_delivered(None, &cg);
    cgdrop.signal(Signal::SIGTERM);
    let (status, _, stderr) = cgdrop.wait();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(in_a, 0, "A's lo is dropped");
    assert_eq!(here, 20, "this namespace's lo (also index 1) is another interface");
    assert_detached(&cg.path);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_removed_interface_is_reported() {
    let ns = NetnsPair::new();
    let cg = TestCgroup::new("iface-gone");
    ip(&["-n", &ns.a, "link", "add", "cgdrop-d0", "type", "veth", "peer", "name", "cgdrop-d1"]);
    let run_in_a = |args: &[&str]| {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", ns.a)).arg("--").arg(common::CGDROP).args(args);
        cmd.output().unwrap()
    };
    let path = cg.path.to_str().unwrap();
    let out = run_in_a(&["pin", "--cgroup", path, "--iface", "cgdrop-d0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ip(&["-n", &ns.a, "link", "del", "cgdrop-d0"]);
    ip(&["-n", &ns.a, "link", "add", "cgdrop-d0", "type", "veth", "peer", "name", "cgdrop-d1"]);
    let status = String::from_utf8_lossy(&run_in_a(&["status"]).stdout).into_owned();
    let elsewhere =
        String::from_utf8_lossy(&Command::new(common::CGDROP).arg("status").output().unwrap().stdout).into_owned();
    let _ = run_in_a(&["unpin", "--cgroup", path]);
    assert!(status.contains("interface cgdrop-d0 is now index"), "{status}");
    assert!(elsewhere.contains("in another network namespace"), "{elsewhere}");
    // A foreground session notices it too.
    let argv_owned: Vec<String> = NetnsPair::enter(&ns.a)
        .into_iter()
        .chain([common::CGDROP.to_string(), "--cgroup".into(), path.into(), "--iface".into(), "cgdrop-d0".into()])
        .collect();
    let argv: Vec<&str> = argv_owned.iter().map(String::as_str).collect();
    let cgdrop = Cgdrop::start_cmd(&argv);
    ip(&["-n", &ns.a, "link", "del", "cgdrop-d0"]);
    let (status, _, stderr) = cgdrop.wait();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interface cgdrop-d0 was removed or renumbered"), "{stderr}");
    assert_detached(&cg.path);
}
