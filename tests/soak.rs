//! Load as root: a sustained flood of TCP and UDP from the cgroup (loopback
//! only, bounded in time), part matching the policy and part not, while the
//! rules are reloaded every 200 ms. No packet of the non-matching flows may be
//! dropped, every matching call must be rejected, cgdrop's counters must equal
//! the generators' own counts exactly, and cgdrop's memory must stay flat.
//! The egress packet counter runs in the senders' context and, for TCP
//! segments sent when ACKs arrive or timers fire, in softirq context on the
//! same CPUs: the counters are plain adds per nesting level (no atomics), and
//! this is the test that they lose nothing.
//! CGDROP_SOAK_SECS sets the length: 5 s in `make test`, 30 s in `make soak`.
mod common;

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use common::{summary, Cgdrop, Probe, TestCgroup};
use nix::sys::signal::Signal;
use serde_json::json;

fn rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn flood_with_rule_churn_counts_exactly() {
    let secs: u64 = std::env::var("CGDROP_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let secs_s = secs.to_string();
    let wait_s = (secs + 10).to_string();
    let cg = TestCgroup::new("soak");

    // 127.0.0.2 is blocked; everything else passes (a block list). The churn
    // alternates 0 and 2,000 unrelated rules around the one that matters.
    let rules = std::env::temp_dir().join(format!("cgdrop-test-soak-{}.rules", std::process::id()));
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(rules.clone());
    let small = "deny 127.0.0.2\n".to_string();
    let large: String =
        (0..2000).map(|i| format!("deny 10.{}.{}.0/24\n", i / 256, i % 256)).collect::<String>() + &small;
    fs::write(&rules, &small).unwrap();

    let (mut udp_rx, udp_port) = Probe::listen(None, "udp-recv", "127.0.0.1", &wait_s);
    let (mut sink, sink_port) = Probe::listen(None, "tcp-sink", "127.0.0.1", &wait_s);
    let mut cgdrop = Cgdrop::start(&[
        "--cgroup",
        cg.path.to_str().unwrap(),
        "--egress",
        "--rules-file",
        rules.to_str().unwrap(),
        "--json",
    ]);

    let mut flows = [
        Probe::start(Some(&cg), &["udp-flood", "127.0.0.1", &udp_port, &secs_s, "400"]),
        Probe::start(Some(&cg), &["udp-flood", "127.0.0.2", &udp_port, &secs_s, "400"]),
        Probe::start(Some(&cg), &["tcp-stream", "127.0.0.1", &sink_port, &secs_s]),
        Probe::start(Some(&cg), &["tcp-connects", "127.0.0.2", &sink_port, &secs_s]),
    ];

    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut reloads = 0;
    let mut rss_after_first = None;
    while Instant::now() < deadline {
        fs::write(&rules, if reloads % 2 == 0 { &large } else { &small }).unwrap();
        cgdrop.signal(Signal::SIGHUP);
        cgdrop.wait_for_stderr("reloaded");
        reloads += 1;
        if reloads == 2 {
            rss_after_first = Some(rss_kib(cgdrop.pid()));
        }
        thread::sleep(Duration::from_millis(200));
    }
    let rss_end = rss_kib(cgdrop.pid());

    let [udp_pass, udp_block, tcp_pass, tcp_block] = flows.each_mut().map(|p| p.next(secs + 30));
    cgdrop.signal(Signal::SIGINT);
    let (status, stdout, stderr) = cgdrop.wait();
    assert!(status.success(), "{stderr}");
    let s = summary(&stdout);

    let sent = udp_pass["sent"].as_u64().unwrap();
    let blocked = udp_block["errors"]["EPERM"].as_u64().unwrap_or(0);
    assert_eq!(udp_pass["errors"], json!({}), "the non-matching UDP flow saw no error");
    assert_eq!(udp_rx.finish(secs + 30), json!({"received": sent}), "every non-matching datagram arrived");
    assert_eq!(udp_block["sent"], 0, "every matching datagram was rejected: {udp_block}");
    let streamed = tcp_pass["sent_bytes"].as_u64().unwrap();
    assert_eq!(sink.next(secs + 30), json!({"received_bytes": streamed}), "the non-matching TCP stream lost nothing");
    let connects = tcp_block["attempts"].as_u64().unwrap();
    assert_eq!(tcp_block["results"], json!({"EPERM": connects}), "every matching connect() rejected");

    // The counters equal the generators' own counts.
    assert_eq!(s["sendmsg"], json!({"attempts": sent + blocked, "rejected": blocked}), "{s}");
    assert_eq!(s["connect"], json!({"attempts": 1 + connects, "rejected": connects}), "{s}");
    assert_eq!(s["egress"]["dropped_packets"], 0, "no packet of a non-matching flow dropped: {s}");
    // Every packet that left the cgroup: the datagrams and the stream's
    // segments as its own socket counted them (the rejected flows sent none).
    let segs = tcp_pass["segs_out"].as_u64().unwrap();
    assert_eq!(s["egress"]["packets"], sent + segs, "egress packets = {sent} datagrams + {segs} TCP segments: {s}");

    let rss_first = rss_after_first.unwrap_or(rss_end);
    let report = format!(
        "soak: {secs} s, {reloads} reloads; UDP {sent} passed and {blocked} rejected, TCP {streamed} bytes passed and {connects} connects rejected; cgdrop RSS {rss_first} → {rss_end} KiB\n"
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), report.as_bytes());
    assert!(reloads >= secs * 2, "{reloads} reloads in {secs} s");
    // Flat: the rule sets alternate, so memory must not grow with the reloads.
    assert!(rss_end <= rss_first + 2048, "cgdrop's RSS grew from {rss_first} to {rss_end} KiB");
}
