//! End-to-end tests as root: cgdrop attached to a real test cgroup, real
//! traffic on loopback from processes inside and outside it, and the verdicts
//! and counters the traffic actually got. Without root each test prints
//! "skipped: needs root".
mod common;

use std::{process::Command, thread, time::Duration};

use common::{assert_detached, attached_cgdrop_progs, summary, Cgdrop, Probe, TestCgroup, CGDROP};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const UDP_PAYLOAD: u64 = 100;
const IPV4_UDP_HEADERS: u64 = 20 + 8;
const IPV6_UDP_HEADERS: u64 = 40 + 8;

fn udp_headers(addr: &str) -> u64 {
    if addr.contains(':') {
        IPV6_UDP_HEADERS
    } else {
        IPV4_UDP_HEADERS
    }
}

fn cg_arg(cg: &TestCgroup) -> String {
    cg.path.to_string_lossy().into_owned()
}

/// Stops cgdrop with SIGINT and returns its JSON summary, checking it detached.
fn stop(cgdrop: Cgdrop, cg: &TestCgroup) -> Value {
    cgdrop.signal(Signal::SIGINT);
    let (status, stdout, stderr) = cgdrop.wait();
    assert!(status.success(), "cgdrop exited with {status}; stderr: {stderr}");
    assert_detached(&cg.path);
    summary(&stdout)
}

/// UDP from inside with egress dropped. By default the sendmsg hook rejects
/// each sendto() with EPERM before a packet exists; with --silent the packets
/// are built, dropped by the egress program and counted, and the sender sees
/// no error (a cut cable).
fn udp_egress_case(addr: &str, silent: bool) {
    let cg = TestCgroup::new(&format!("udp-egress-{}-{silent}", addr.len()));
    let mut args = vec!["--cgroup", &cg.path.to_str().unwrap(), "--egress", "--json"];
    if silent {
        args.push("--silent");
    }
    let cgdrop = Cgdrop::start(&args);
    let (mut receiver, port) = Probe::listen(None, "udp-recv", addr, "60");

    let inside = Probe::run(Some(&cg), &["udp-send", addr, &port, "20", "100"]);
    if silent {
        assert_eq!(inside, json!({"sent": 20, "errors": {}}), "--silent: sends seem to succeed");
    } else {
        assert_eq!(inside, json!({"sent": 0, "errors": {"EPERM": 20}}), "sends from inside fail with EPERM");
    }
    let outside = Probe::run(None, &["udp-send", addr, &port, "20", "100"]);
    assert_eq!(outside, json!({"sent": 20, "errors": {}}), "a process outside keeps its traffic");
    assert_eq!(receiver.finish(10), json!({"received": 20}), "only the outside datagrams arrive");

    let s = stop(cgdrop, &cg);
    let bytes = 20 * (UDP_PAYLOAD + udp_headers(addr));
    if silent {
        assert_eq!(s["egress"], json!({"packets": 20, "bytes": bytes, "dropped_packets": 20, "dropped_bytes": bytes}));
        assert_eq!(s["sendmsg"], json!({"attempts": 0, "rejected": 0}), "no sendmsg hook with --silent");
    } else {
        assert_eq!(s["egress"], json!({"packets": 0, "bytes": 0, "dropped_packets": 0, "dropped_bytes": 0}));
        assert_eq!(s["sendmsg"], json!({"attempts": 20, "rejected": 20}));
    }
    assert_eq!(s["ingress"], json!({"packets": 0, "bytes": 0, "dropped_packets": 0, "dropped_bytes": 0}));
    assert_eq!(s["cgroup"], json!(cg_arg(&cg)));
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn udp_egress_ipv4_rejected_and_counted_exactly() {
    udp_egress_case("127.0.0.1", false);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn udp_egress_ipv6_rejected_and_counted_exactly() {
    udp_egress_case("::1", false);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn udp_egress_ipv4_silently_dropped_and_counted_exactly() {
    udp_egress_case("127.0.0.1", true);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn udp_egress_ipv6_silently_dropped_and_counted_exactly() {
    udp_egress_case("::1", true);
}

fn udp_ingress_case(addr: &str) {
    let cg = TestCgroup::new(&format!("udp-ingress-{}", addr.len()));
    let cgdrop = Cgdrop::start(&["--cgroup", &cg_arg(&cg), "--ingress", "--json"]);
    let (mut inside_rx, inside_port) = Probe::listen(Some(&cg), "udp-recv", addr, "60");
    let (mut outside_rx, outside_port) = Probe::listen(None, "udp-recv", addr, "60");

    let to_inside = Probe::run(None, &["udp-send", addr, &inside_port, "20", "100"]);
    assert_eq!(to_inside, json!({"sent": 20, "errors": {}}), "the sender outside sees no error");
    let from_inside = Probe::run(Some(&cg), &["udp-send", addr, &outside_port, "20", "100"]);
    assert_eq!(from_inside, json!({"sent": 20, "errors": {}}), "egress is not filtered with --ingress");
    assert_eq!(inside_rx.finish(10), json!({"received": 0}), "nothing reaches the socket inside");
    assert_eq!(outside_rx.finish(10), json!({"received": 20}), "the outside socket gets everything");

    let s = stop(cgdrop, &cg);
    let bytes = 20 * (UDP_PAYLOAD + udp_headers(addr));
    assert_eq!(s["ingress"], json!({"packets": 20, "bytes": bytes, "dropped_packets": 20, "dropped_bytes": bytes}));
    // The egress program is not attached with --ingress: nothing is counted there.
    assert_eq!(s["egress"], json!({"packets": 0, "bytes": 0, "dropped_packets": 0, "dropped_bytes": 0}));
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn udp_ingress_ipv4_dropped_and_counted_exactly() {
    udp_ingress_case("127.0.0.1");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn udp_ingress_ipv6_dropped_and_counted_exactly() {
    udp_ingress_case("::1");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn tcp_connect_fails_at_once_with_eperm() {
    let cg = TestCgroup::new("connect");
    let cgdrop = Cgdrop::start(&["--cgroup", &cg_arg(&cg), "--json"]);
    for addr in ["127.0.0.1", "::1"] {
        let (_server, port) = Probe::listen(None, "tcp-serve", addr, "5");
        let inside = Probe::run(Some(&cg), &["tcp-connect", addr, &port, "5"]);
        assert_eq!(inside["result"], "EPERM", "{addr}: {inside}");
        // Fail-fast, not a 127 s SYN retry: anything near a second would be a hang.
        assert!(inside["ms"].as_f64().unwrap() < 1000.0, "{addr}: connect took {inside}");
        let outside = Probe::run(None, &["tcp-connect", addr, &port, "5"]);
        assert_eq!(outside["result"], "ok", "{addr}: a process outside connects: {outside}");
    }
    let s = stop(cgdrop, &cg);
    assert_eq!(s["connect"], json!({"attempts": 2, "rejected": 2}));
    assert_eq!(s["egress"]["packets"], 0, "no SYN left the cgroup");
}

/// A server inside the cgroup: with only one direction dropped, the handshake
/// still fails (the SYN is dropped on ingress, the SYN-ACK on egress).
fn tcp_server_inside_case(direction: &str, slot: &str) {
    let cg = TestCgroup::new(&format!("tcp-server{direction}"));
    let cgdrop = Cgdrop::start(&["--cgroup", &cg_arg(&cg), direction, "--json"]);
    let (_server, port) = Probe::listen(Some(&cg), "tcp-serve", "127.0.0.1", "5");
    let client = Probe::run(None, &["tcp-connect", "127.0.0.1", &port, "1"]);
    assert_eq!(client["result"], "timeout", "{client}");

    let s = stop(cgdrop, &cg);
    let dropped = s[slot]["dropped_packets"].as_u64().unwrap();
    assert!(dropped >= 1, "no {slot} packet dropped: {s}");
    assert_eq!(s[slot]["packets"].as_u64().unwrap(), dropped, "every {slot} packet dropped: {s}");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn tcp_ingress_to_server_inside_dropped() {
    tcp_server_inside_case("--ingress", "ingress");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn tcp_egress_from_server_inside_dropped() {
    tcp_server_inside_case("--egress", "egress");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn port_filter_drops_only_that_port() {
    let cg = TestCgroup::new("port");
    let (mut blocked_rx, blocked) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
    let (mut open_rx, open) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
    let (_tcp_server, tcp_port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "5");
    let cgdrop = Cgdrop::start(&["--cgroup", &cg_arg(&cg), "--port", &blocked, "--json"]);

    let to_blocked = Probe::run(Some(&cg), &["udp-send", "127.0.0.1", &blocked, "10", "100"]);
    assert_eq!(to_blocked, json!({"sent": 0, "errors": {"EPERM": 10}}));
    let to_open = Probe::run(Some(&cg), &["udp-send", "127.0.0.1", &open, "10", "100"]);
    assert_eq!(to_open, json!({"sent": 10, "errors": {}}));
    assert_eq!(blocked_rx.finish(10), json!({"received": 0}));
    assert_eq!(open_rx.finish(10), json!({"received": 10}));

    let tcp_open = Probe::run(Some(&cg), &["tcp-connect", "127.0.0.1", &tcp_port, "3"]);
    assert_eq!(tcp_open["result"], "ok", "TCP to another port connects: {tcp_open}");
    let tcp_blocked = Probe::run(Some(&cg), &["tcp-connect", "127.0.0.1", &blocked, "3"]);
    assert_eq!(tcp_blocked["result"], "EPERM", "TCP to the filtered port is rejected: {tcp_blocked}");

    let s = stop(cgdrop, &cg);
    assert_eq!(s["sendmsg"], json!({"attempts": 20, "rejected": 10}), "{s}");
    assert_eq!(s["egress"]["dropped_packets"], 0, "rejected before a packet exists: {s}");
    assert_eq!(s["ingress"]["dropped_packets"], 0, "{s}");
    assert_eq!(s["connect"], json!({"attempts": 2, "rejected": 1}));
}

fn detaches_on(sig: Signal) {
    let cg = TestCgroup::new(&format!("sig{}", sig as i32));
    let cgdrop = Cgdrop::start(&["--cgroup", &cg_arg(&cg)]);
    let mut progs = attached_cgdrop_progs(&cg.path);
    progs.sort();
    assert_eq!(progs, common::BOTH_HOOKS);
    cgdrop.signal(sig);
    let (status, _, stderr) = cgdrop.wait();
    if sig == Signal::SIGKILL {
        assert_eq!(status.code(), None, "killed");
    } else {
        assert!(status.success(), "{sig}: {status}; {stderr}");
        assert!(stderr.contains("detached from"), "{stderr}");
    }
    assert_detached(&cg.path);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn detaches_on_sigint() {
    detaches_on(Signal::SIGINT);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn detaches_on_sigterm() {
    detaches_on(Signal::SIGTERM);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn detaches_on_sigkill() {
    detaches_on(Signal::SIGKILL);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn run_command_exit_status_and_created_cgroup_removed() {
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "10");
    let name = format!("cgdrop-test-create-{}", std::process::id());
    let path = common::cgroup2_root().join(&name);
    // Removes the cgroup even if the assertions below fail.
    let _cleanup = scopeguard(path.clone());
    let url = format!("http://127.0.0.1:{port}/");
    let out = Command::new(CGDROP)
        .args(["--cgroup", &name, "--create", "--json", "--run", &format!("curl -sS -m 5 {url}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // curl's exit status 7: could not connect. Passed through.
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("Failed to connect"), "{stderr}");
    let s = summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(s["connect"], json!({"attempts": 1, "rejected": 1}));
    assert!(!path.exists(), "the cgroup cgdrop created is removed on exit");

    let cg = TestCgroup::new("run-status");
    let out = Command::new(CGDROP).args(["--cgroup", &cg_arg(&cg), "--run", "exit 7"]).output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert!(cg.path.exists(), "a cgroup cgdrop did not create stays");
    assert_detached(&cg.path);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn run_command_is_inside_the_cgroup() {
    let cg = TestCgroup::new("run-inside");
    let out = Command::new(CGDROP).args(["--cgroup", &cg_arg(&cg), "--run", "cat /proc/self/cgroup"]).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("0::/") && l.ends_with(&cg.name)), "{stdout}");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn sigterm_stops_the_run_command_then_detaches() {
    let cg = TestCgroup::new("run-term");
    let cgdrop = Cgdrop::start(&["--cgroup", &cg_arg(&cg), "--run", "sleep 30"]);
    // Wait until the command is in the cgroup, then stop cgdrop.
    for _ in 0..100 {
        if !cg.pids().is_empty() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(!cg.pids().is_empty(), "the command runs inside the cgroup");
    cgdrop.signal(Signal::SIGTERM);
    let (status, _, stderr) = cgdrop.wait();
    assert_eq!(status.code(), Some(128 + Signal::SIGTERM as i32), "{stderr}");
    assert_detached(&cg.path);
    assert!(cg.pids().is_empty(), "the command was stopped");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn interval_prints_counters() {
    let cg = TestCgroup::new("interval");
    let out = Command::new(CGDROP)
        .args(["--cgroup", &cg_arg(&cg), "--interval", "1", "--run", "sleep 2.5"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reports: Vec<_> = stderr.lines().filter(|l| l.contains("s ingress dropped ")).collect();
    // Reports at 1 s and 2 s of a 2.5 s command; a third only on a very slow machine.
    assert!((2..=3).contains(&reports.len()), "{stderr}");
    for (i, line) in reports.iter().enumerate() {
        // Not a terminal: one line per interval, with rates.
        let want = format!(
            "cgdrop: {}s ingress dropped 0 of 0 (0.0/s), egress dropped 0 of 0 (0.0/s), connect rejected 0 of 0, sendmsg rejected 0 of 0",
            i + 1
        );
        assert_eq!(*line, want, "{stderr}");
    }
}

/// Removes a cgroup path on drop (for cgroups that cgdrop itself creates).
fn scopeguard(path: std::path::PathBuf) -> impl Drop {
    struct Guard(std::path::PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            common::remove_cgroup(&self.0);
        }
    }
    Guard(path)
}

/// A rules file `cgdrop-test-<name>-<pid>.rules` in the temp dir, removed on drop.
struct RulesFile(std::path::PathBuf);

impl RulesFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("cgdrop-test-{name}-{}.rules", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for RulesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn sighup_reloads_the_rules_file_and_keeps_the_old_rules_on_error() {
    let cg = TestCgroup::new("reload");
    let rules = RulesFile::new("reload", "deny 127.0.0.1\n");
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "20");
    let connect = || Probe::run(Some(&cg), &["tcp-connect", "127.0.0.1", &port, "2"])["result"].clone();
    let mut cgdrop = Cgdrop::start(&["--cgroup", &cg_arg(&cg), "--rules-file", rules.arg(), "--json"]);
    assert_eq!(connect(), "EPERM");

    rules.write("# now only another host\ndeny 127.0.0.2\n");
    cgdrop.signal(Signal::SIGHUP);
    cgdrop.wait_for_stderr("reloaded");
    assert_eq!(connect(), "ok", "the new rules apply");

    rules.write("deny 127.0.0.1\nbogus line\n");
    cgdrop.signal(Signal::SIGHUP);
    let line = cgdrop.wait_for_stderr("failed");
    assert!(line.contains("line 2") && line.contains("previous rules stay in force"), "{line}");
    assert_eq!(connect(), "ok", "a bad file leaves the previous rules");

    std::fs::remove_file(&rules.0).unwrap();
    cgdrop.signal(Signal::SIGHUP);
    let line = cgdrop.wait_for_stderr("failed");
    assert!(line.contains("reading rules file"), "{line}");
    assert_eq!(connect(), "ok", "a deleted file leaves the previous rules");

    let s = stop(cgdrop, &cg);
    assert_eq!(s["connect"], json!({"attempts": 4, "rejected": 1}));
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn reload_under_traffic_leaves_no_gap() {
    // The blocked destination is denied by a /32 in one file and by a /8 in
    // the other: each reload replaces the rule that blocks it by another one,
    // among thousands of others. Not one datagram may get through.
    let filler: String = (0..5000).map(|i| format!("deny 10.{}.{}.0/24\n", i / 256, i % 256)).collect();
    let a = format!("{filler}deny 127.0.0.1\n");
    let b = format!("deny 127.0.0.0/8\n{filler}");
    let cg = TestCgroup::new("nogap");
    let rules = RulesFile::new("nogap", &a);
    let (mut receiver, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
    let mut cgdrop = Cgdrop::start(&["--cgroup", &cg_arg(&cg), "--egress", "--rules-file", rules.arg(), "--json"]);
    let sender = Probe::start(Some(&cg), &["udp-send", "127.0.0.1", &port, "3000", "10"]);
    for i in 0..10 {
        rules.write(if i % 2 == 0 { &b } else { &a });
        cgdrop.signal(Signal::SIGHUP);
        cgdrop.wait_for_stderr("reloaded");
    }
    let mut sender = sender;
    let sent = sender.next(30);
    assert_eq!(sent, json!({"sent": 0, "errors": {"EPERM": 3000}}), "every datagram rejected");
    assert_eq!(receiver.finish(15), json!({"received": 0}));
    let s = stop(cgdrop, &cg);
    assert_eq!(s["sendmsg"], json!({"attempts": 3000, "rejected": 3000}));
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_million_rules_load_and_decide() {
    // 1,000,000 deny rules for 10.0.0.0/12 host by host, and one for the
    // local server among them: only that one matches the traffic.
    let mut text = String::with_capacity(20 * 1_000_000);
    for i in 0..999_999u32 {
        text += &format!("deny 10.{}.{}.{}\n", i >> 16, (i >> 8) & 255, i & 255);
    }
    text += "deny 127.0.0.2\n";
    let rules = RulesFile::new("million", &text);
    let cg = TestCgroup::new("million");
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "60");
    let (_server2, port2) = Probe::listen(None, "tcp-serve", "127.0.0.2", "60");
    let cgdrop = Cgdrop::start(&["--cgroup", &cg_arg(&cg), "--rules-file", rules.arg(), "--json"]);
    assert!(cgdrop.stderr.contains("1000000 denied target(s)"), "{}", cgdrop.stderr);
    let denied = Probe::run(Some(&cg), &["tcp-connect", "127.0.0.2", &port2, "2"]);
    assert_eq!(denied["result"], "EPERM", "{denied}");
    let other = Probe::run(Some(&cg), &["tcp-connect", "127.0.0.1", &port, "2"]);
    assert_eq!(other["result"], "ok", "a block list passes the rest: {other}");
    let s = stop(cgdrop, &cg);
    assert_eq!(s["connect"], json!({"attempts": 2, "rejected": 1}));
}
