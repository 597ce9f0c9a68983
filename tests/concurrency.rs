//! Concurrency as root: two cgdrop instances on one cgroup, foreground and
//! pinned together, `rule add/del` racing with traffic and with `unpin`,
//! `unpin --all` racing with `pin`, `run` racing with `cleanup`. Verdicts
//! stay right, nothing crashes, counters never go backwards, and what is
//! left is whole.
mod common;

use std::{
    fs,
    process::Command,
    sync::{Mutex, MutexGuard},
    thread,
    time::Duration,
};

use common::{assert_detached, attached_cgdrop_progs, Cgdrop, Probe, TestCgroup, CGDROP};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn connect(cg: &TestCgroup, addr: &str, port: &str) -> String {
    Probe::run(Some(cg), &["tcp-connect", addr, port, "2"])["result"].as_str().unwrap().to_string()
}

fn cgdrop(args: &[&str]) -> std::process::Output {
    Command::new(CGDROP).args(args).output().unwrap()
}

/// Unpins this cgroup's policy (by path) and the empty bpffs directory on drop.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = cgdrop(&["unpin", "--cgroup", &self.0]);
        let _ = fs::remove_dir("/sys/fs/bpf/cgdrop");
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn two_instances_on_one_cgroup() {
    let cg = TestCgroup::new("two");
    let path = cg.path.to_str().unwrap();
    let (_s2, p2) = Probe::listen(None, "tcp-serve", "127.0.0.2", "20");
    let (_s3, p3) = Probe::listen(None, "tcp-serve", "127.0.0.3", "20");
    let a = Cgdrop::start(&["--cgroup", path, "--block", "127.0.0.2", "--json"]);
    let b = Cgdrop::start(&["--cgroup", path, "--block", "127.0.0.3", "--json"]);
    assert_eq!(attached_cgdrop_progs(&cg.path).len(), 14, "both attached side by side");
    assert_eq!(connect(&cg, "127.0.0.2", &p2), "EPERM");
    assert_eq!(connect(&cg, "127.0.0.3", &p3), "EPERM");
    a.signal(Signal::SIGINT);
    let (status, _, _) = a.wait();
    assert!(status.success());
    assert_eq!(attached_cgdrop_progs(&cg.path).len(), 7, "the other stays");
    assert_eq!(connect(&cg, "127.0.0.2", &p2), "ok");
    assert_eq!(connect(&cg, "127.0.0.3", &p3), "EPERM");
    b.signal(Signal::SIGINT);
    let (status, stdout, _) = b.wait();
    assert!(status.success());
    // b saw all four connects and rejected the two to 127.0.0.3.
    assert_eq!(common::summary(&stdout)["connect"], json!({"attempts": 4, "rejected": 2}));
    assert_detached(&cg.path);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn foreground_and_pinned_on_one_cgroup() {
    let _serial = serial();
    let cg = TestCgroup::new("fgpin");
    let path = cg.path.to_str().unwrap().to_string();
    let _cleanup = Cleanup(path.clone());
    let (_s2, p2) = Probe::listen(None, "tcp-serve", "127.0.0.2", "20");
    let (_s3, p3) = Probe::listen(None, "tcp-serve", "127.0.0.3", "20");
    assert!(cgdrop(&["pin", "--cgroup", &path, "--block", "127.0.0.2"]).status.success());
    let fg = Cgdrop::start(&["--cgroup", &path, "--block", "127.0.0.3"]);
    assert_eq!(connect(&cg, "127.0.0.2", &p2), "EPERM");
    assert_eq!(connect(&cg, "127.0.0.3", &p3), "EPERM");
    fg.signal(Signal::SIGTERM);
    assert!(fg.wait().0.success());
    assert_eq!(connect(&cg, "127.0.0.3", &p3), "ok", "the foreground policy went with its process");
    assert_eq!(connect(&cg, "127.0.0.2", &p2), "EPERM", "the pinned one stays");
}

fn pinned_stats(path: &str) -> Value {
    let out = cgdrop(&["stats", "--cgroup", path, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str::<Value>(&String::from_utf8_lossy(&out.stdout)).unwrap()[0].clone()
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn rule_changes_race_with_traffic_and_counters_never_go_back() {
    let _serial = serial();
    let cg = TestCgroup::new("race");
    let path = cg.path.to_str().unwrap().to_string();
    let _cleanup = Cleanup(path.clone());
    let (mut rx, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
    assert!(cgdrop(&["pin", "--cgroup", &path, "--egress", "--block", "127.0.0.2"]).status.success());
    let mut blocked = Probe::start(Some(&cg), &["udp-flood", "127.0.0.2", &port, "4", "300"]);
    let mut passing = Probe::start(Some(&cg), &["udp-flood", "127.0.0.1", &port, "4", "300"]);
    let mut last = 0;
    for i in 0..40 {
        let rule = format!("10.{i}.0.0/16");
        assert!(cgdrop(&["rule", "add", "--cgroup", &path, "deny", &rule]).status.success());
        let s = pinned_stats(&path);
        let attempts = s["sendmsg"]["attempts"].as_u64().unwrap();
        assert!(attempts >= last, "counters went back: {attempts} < {last}");
        last = attempts;
        assert!(cgdrop(&["rule", "del", "--cgroup", &path, &rule]).status.success());
        thread::sleep(Duration::from_millis(50));
    }
    let blocked = blocked.next(20);
    let passing = passing.next(20);
    assert_eq!(blocked["sent"], 0, "every datagram to the blocked host rejected: {blocked}");
    assert_eq!(passing["errors"], json!({}));
    assert_eq!(rx.finish(20), json!({"received": passing["sent"]}), "every other datagram arrived");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn rule_add_racing_with_unpin_and_unpin_all_racing_with_pin() {
    let _serial = serial();
    let cg = TestCgroup::new("unpinrace");
    let path = cg.path.to_str().unwrap().to_string();
    let _cleanup = Cleanup(path.clone());
    for round in 0..6 {
        assert!(cgdrop(&["pin", "--cgroup", &path, "--egress"]).status.success());
        // rule add against an unpin: each either succeeds or fails with one line.
        let adder = {
            let path = path.clone();
            thread::spawn(move || {
                (0..10)
                    .map(|i| cgdrop(&["rule", "add", "--cgroup", &path, "deny", &format!("10.{round}.{i}.0/24")]))
                    .collect::<Vec<_>>()
            })
        };
        thread::sleep(Duration::from_millis(5 * round));
        assert!(cgdrop(&["unpin", "--cgroup", &path]).status.success());
        for out in adder.join().unwrap() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.code() == Some(0) || out.status.code() == Some(1), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
        assert_detached(&cg.path);

        // unpin --all against a pin: afterwards the policy is whole or gone.
        let pinner = {
            let path = path.clone();
            thread::spawn(move || cgdrop(&["pin", "--cgroup", &path, "--egress"]))
        };
        thread::sleep(Duration::from_millis(10 * round));
        let _ = cgdrop(&["unpin", "--all"]);
        let pinned = pinner.join().unwrap();
        assert!(pinned.status.code() == Some(0) || pinned.status.code() == Some(1));
        let status: Vec<Value> =
            serde_json::from_str(&String::from_utf8_lossy(&cgdrop(&["status", "--json"]).stdout)).unwrap();
        match status.iter().find(|p| p["cgroup"] == path.as_str()) {
            Some(p) => {
                assert_eq!(p["health"], "ok", "{p}");
                assert_eq!(attached_cgdrop_progs(&cg.path).len(), 6);
                assert!(cgdrop(&["unpin", "--cgroup", &path]).status.success());
            }
            None => assert_detached(&cg.path),
        }
    }
}

/// `cgdrop cleanup` (and the stale-state sweep every command starts with)
/// removes `cgdrop-run-*` cgroups nobody holds the lock of; a `run` that has
/// made its cgroup but not yet locked it must notice and take a fresh name,
/// never go on with a removed directory ("opening cgroup …: No such file").
/// The window is a few microseconds wide, so this is a stress test: it cannot
/// prove the race gone, but it fails when the window comes back wide.
#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn run_racing_with_cleanup_keeps_its_own_cgroup() {
    let _serial = serial();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sweeper = {
        let done = done.clone();
        thread::spawn(move || {
            let mut sweeps = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let out = cgdrop(&["cleanup"]);
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                sweeps += 1;
            }
            sweeps
        })
    };
    let runners: Vec<_> =
        (0..2).map(|_| thread::spawn(|| (0..25).map(|_| cgdrop(&["run", "--", "true"])).collect::<Vec<_>>())).collect();
    let outs: Vec<_> = runners.into_iter().flat_map(|r| r.join().unwrap()).collect();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(sweeper.join().unwrap() > 0);
    for out in &outs {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(common::run_cgroups(), Vec::<std::path::PathBuf>::new(), "every run removed its cgroup");
}
