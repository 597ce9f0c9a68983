//! What `status` and the banner tell, as root: the rules in force when a
//! policy attaches, foreground sessions beside the pinned policies, and when
//! a pinned policy was last replaced.
mod common;

use std::{process::Command, thread, time::Duration};

use common::{Cgdrop, TestCgroup, Unpin, CGDROP};

fn cgdrop(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(CGDROP).args(args).output().expect("run cgdrop");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn the_banner_lists_the_rules_in_force() {
    let (ok, _, stderr) = cgdrop(&[
        "run",
        "--block",
        "10.0.0.0/8",
        "--allow",
        "10.1.0.0/16",
        "--block",
        "192.0.2.1",
        "--block",
        "198.51.100.0/24",
        "--block",
        "203.0.113.0/24",
        "--",
        "true",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("rules in force: deny 10.0.0.0/8, deny 192.0.2.1/32, deny 198.51.100.0/24, deny 203.0.113.0/24, … (5 in all)"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn status_lists_sessions_and_replacements() {
    let cg = TestCgroup::new("status-session");
    let path = cg.path.to_str().unwrap().to_string();
    let session = Cgdrop::start(&["--cgroup", &path, "--block", "192.0.2.1"]);
    let (_, stdout, _) = cgdrop(&["status"]);
    assert!(
        stdout.contains(&format!("{path} (id "))
            && stdout.contains(&format!("foreground session, cgdrop pid {}", session.pid())),
        "{stdout}"
    );
    session.signal(nix::sys::signal::Signal::SIGTERM);
    session.wait();
    let (_, stdout, _) = cgdrop(&["status"]);
    assert!(!stdout.contains("foreground session"), "gone when it ends: {stdout}");

    let pinned = TestCgroup::new("status-replaced");
    let ppath = pinned.path.to_str().unwrap().to_string();
    let _unpin = Unpin(ppath.clone());
    assert!(cgdrop(&["pin", "--cgroup", &ppath]).0);
    let (_, stdout, _) = cgdrop(&["status"]);
    assert!(!stdout.contains("last replaced"), "{stdout}");
    thread::sleep(Duration::from_millis(1100));
    assert!(cgdrop(&["pin", "--replace", "--cgroup", &ppath, "--egress"]).0);
    let (_, stdout, _) = cgdrop(&["status"]);
    assert!(stdout.contains("last replaced 0s ago"), "{stdout}");
    let (_, json, _) = cgdrop(&["status", "--json"]);
    let all: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let p = all.iter().find(|p| p["cgroup"] == ppath.as_str()).unwrap();
    assert!(p["first_pinned_at"].as_u64().unwrap() < p["pinned_at"].as_u64().unwrap(), "{p}");
}
