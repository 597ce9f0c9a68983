//! Faults as root: cgdrop killed (SIGKILL) or signalled at every stage of its
//! start-up, in foreground mode, in `pin` and in `pin --replace`. Afterwards
//! the system is as before or has the complete policy, never part of one.
//! A `pin` killed mid-way is recovered by the next cgdrop command (here:
//! `status`), which completes or removes what it left.
mod common;

use std::{
    fs,
    process::{Command, Stdio},
    sync::Mutex,
    thread,
    time::Duration,
};

use common::{assert_detached, attached_cgdrop_progs, TestCgroup, CGDROP};
use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::Value;

/// The tests of this file share /sys/fs/bpf/cgdrop.
static SERIAL: Mutex<()> = Mutex::new(());

/// Delays (ms) at which to kill: from before the first syscall to after attaching.
const DELAYS_MS: [u64; 20] = [0, 1, 2, 3, 5, 7, 10, 13, 16, 20, 25, 30, 40, 50, 60, 70, 85, 100, 200, 400];

/// Starts cgdrop with `args`, sends `sig` after `delay_ms`, waits for it.
fn interrupt(args: &[&str], sig: Signal, delay_ms: u64) {
    let mut child = Command::new(CGDROP).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    thread::sleep(Duration::from_millis(delay_ms));
    let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), sig);
    child.wait().unwrap();
}

/// `cgdrop status --json` (which also recovers interrupted pins): this cgroup's entry.
fn status_of(cg: &TestCgroup) -> Option<Value> {
    let out = Command::new(CGDROP).args(["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all: Vec<Value> = serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    all.into_iter().find(|p| p["cgroup"] == cg.path.to_str().unwrap())
}

fn working_dirs_left() -> Vec<String> {
    fs::read_dir("/sys/fs/bpf/cgdrop")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("new-") || n.starts_with("old-"))
                .collect()
        })
        .unwrap_or_default()
}

fn unpin(cg: &TestCgroup) {
    let _ = Command::new(CGDROP).args(["unpin", "--cgroup", cg.path.to_str().unwrap()]).output();
}

/// Removes this cgroup's pins and the empty bpffs directory, whatever happens.
struct Cleanup<'a>(&'a TestCgroup);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        unpin(self.0);
        let _ = fs::remove_dir("/sys/fs/bpf/cgdrop");
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn foreground_interrupted_at_any_stage_leaves_nothing() {
    let cg = TestCgroup::new("fgkill");
    let path = cg.path.to_str().unwrap();
    for sig in [Signal::SIGKILL, Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        for delay in DELAYS_MS {
            interrupt(&["--cgroup", path, "--block", "192.0.2.1"], sig, delay);
            assert_detached(&cg.path);
        }
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn pin_killed_at_any_stage_is_all_or_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cg = TestCgroup::new("pinkill");
    let _cleanup = Cleanup(&cg);
    let path = cg.path.to_str().unwrap();
    let (mut none, mut complete) = (0, 0);
    for (delay, sig) in
        DELAYS_MS.iter().flat_map(|d| [(*d, Signal::SIGKILL), (*d, Signal::SIGTERM), (*d, Signal::SIGINT)])
    {
        interrupt(&["pin", "--cgroup", path, "--egress"], sig, delay);
        match status_of(&cg) {
            None => {
                assert!(
                    attached_cgdrop_progs(&cg.path).is_empty(),
                    "killed at {delay} ms: no policy, yet programs attached"
                );
                none += 1;
            }
            Some(p) => {
                assert_eq!(p["health"], "ok", "killed at {delay} ms: {p}");
                assert_eq!(sorted(attached_cgdrop_progs(&cg.path)), common::EGRESS_HOOKS, "killed at {delay} ms");
                complete += 1;
            }
        }
        assert!(working_dirs_left().is_empty(), "killed at {delay} ms: {:?}", working_dirs_left());
        unpin(&cg);
        assert_detached(&cg.path);
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("pin killed: {none} × nothing, {complete} × complete\n").as_bytes(),
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn replace_killed_at_any_stage_keeps_one_complete_policy() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cg = TestCgroup::new("replacekill");
    let _cleanup = Cleanup(&cg);
    let path = cg.path.to_str().unwrap();
    let pin = Command::new(CGDROP).args(["pin", "--cgroup", path, "--egress"]).output().unwrap();
    assert!(pin.status.success(), "{}", String::from_utf8_lossy(&pin.stderr));
    for delay in DELAYS_MS {
        // Alternate between the two policies, so that each kill interrupts a real change.
        let current = status_of(&cg).expect("a policy is always there");
        let to_both = current["policy"]["ingress"] == false;
        let flags: &[&str] = if to_both { &["--both"] } else { &["--egress"] };
        let mut args = vec!["pin", "--cgroup", path, "--replace"];
        args.extend_from_slice(flags);
        interrupt(&args, Signal::SIGKILL, delay);
        let p = status_of(&cg).unwrap_or_else(|| panic!("killed at {delay} ms: the policy is gone"));
        assert_eq!(p["health"], "ok", "killed at {delay} ms: {p}");
        let want: &[&str] = if p["policy"]["ingress"] == true { &common::BOTH_HOOKS } else { &common::EGRESS_HOOKS };
        assert_eq!(sorted(attached_cgdrop_progs(&cg.path)), want, "killed at {delay} ms: {p}");
        assert!(working_dirs_left().is_empty(), "killed at {delay} ms: {:?}", working_dirs_left());
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_symlinked_bpffs_directory_is_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if std::path::Path::new("/sys/fs/bpf/cgdrop").exists() {
        let _ = std::io::Write::write_all(&mut std::io::stderr(), b"skipped: /sys/fs/bpf/cgdrop exists\n");
        return;
    }
    let target = std::env::temp_dir().join(format!("cgdrop-test-symlink-{}", std::process::id()));
    fs::create_dir_all(target.join("precious")).unwrap();
    std::os::unix::fs::symlink(&target, "/sys/fs/bpf/cgdrop").unwrap();
    struct Undo(std::path::PathBuf);
    impl Drop for Undo {
        fn drop(&mut self) {
            let _ = fs::remove_file("/sys/fs/bpf/cgdrop");
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _undo = Undo(target.clone());
    let cg = TestCgroup::new("symlink");
    for args in [vec!["pin", "--cgroup", cg.path.to_str().unwrap()], vec!["unpin", "--all"], vec!["status"]] {
        let out = Command::new(CGDROP).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("is a symbolic link: refusing"), "{args:?}: {stderr}");
    }
    assert!(target.join("precious").exists(), "nothing removed through the link");
    assert_detached(&cg.path);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn run_killed_at_any_stage_leaves_nothing_after_the_next_run() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for delay in DELAYS_MS {
        let mut child = Command::new(CGDROP)
            .args(["run", "--", "sh", "-c", "sleep 30 & sleep 30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(delay));
        let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        child.wait().unwrap();
        // Whatever the killed run left (its cgroup, the background sleep
        // still in it under the pinned policy, the pins) the next run
        // removes, in order, waiting for `populated 0` — also while a child
        // is still being placed in the cgroup.
        let next = Command::new(CGDROP).args(["run", "--", "true"]).output().unwrap();
        assert!(next.status.success(), "killed at {delay} ms: {}", String::from_utf8_lossy(&next.stderr));
        assert_eq!(common::run_cgroups(), Vec::<std::path::PathBuf>::new(), "killed at {delay} ms: cgroups left");
        assert_eq!(common::run_pins(), Vec::<String>::new(), "killed at {delay} ms: session pins left");
    }
}
