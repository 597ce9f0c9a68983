//! The README's table of errors, each produced for real and its message
//! checked: an old kernel (setarch's 2.6 personality), no BTF and no cgroup2
//! mount (hidden in a private mount namespace), a cgroup removed while
//! attached, bpffs not mounted, a verifier rejection. (Missing privileges, a
//! cgroup v1 path and a non-multi program are in tests/cli.rs.) Root only.
mod common;

use std::process::{Command, Output};

use common::{assert_detached, Cgdrop, TestCgroup, CGDROP};

/// Asserts exit status 1 and a one-line `cgdrop: …` error containing `needles`.
fn assert_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.starts_with("cgdrop: "), "{stderr}");
    for n in needles {
        assert!(last.contains(n), "{n:?} not in {last:?}");
    }
}

/// Runs `script` with sh in a private mount namespace (changes to mounts stay there).
fn in_private_mounts(script: &str) -> Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .output()
        .expect("unshare (util-linux)")
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn kernel_too_old() {
    let cg = TestCgroup::new("oldkernel");
    // The UNAME26 personality makes uname(2) report a 2.6 kernel.
    let out = Command::new("setarch")
        .args(["x86_64", "--uname-2.6", CGDROP, "--cgroup", cg.path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_error(&out, &["is too old", "needs Linux 5.8 or later"]);
    assert_detached(&cg.path);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn no_btf() {
    let cg = TestCgroup::new("nobtf");
    let out = in_private_mounts(&format!(
        "mount -t tmpfs none /sys/kernel/btf && exec {CGDROP} --cgroup {}",
        cg.path.display()
    ));
    assert_error(&out, &["no BTF", "CONFIG_DEBUG_INFO_BTF"]);
    assert_detached(&cg.path);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn cgroup2_not_mounted() {
    let root = common::cgroup2_root();
    let out = in_private_mounts(&format!("umount -l {} && exec {CGDROP} --cgroup myapp", root.display()));
    assert_error(&out, &["no cgroup2 filesystem is mounted", "mount -t cgroup2"]);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn cgroup_removed_while_attached() {
    let cg = TestCgroup::new("removed");
    let cgdrop = Cgdrop::start(&["--cgroup", cg.path.to_str().unwrap()]);
    let removed_at = std::time::Instant::now();
    std::fs::remove_dir(&cg.path).expect("remove the empty cgroup");
    let (status, _, stderr) = cgdrop.wait();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was removed while cgdrop was attached"), "{stderr}");
    // Noticed within a second (checked every 250 ms); 3 s allows a loaded machine.
    assert!(removed_at.elapsed() < std::time::Duration::from_secs(3), "noticed after {:?}", removed_at.elapsed());
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn bpffs_not_mounted_is_mounted() {
    let cg = TestCgroup::new("nobpffs");
    // In a private mount namespace without bpffs, `pin` mounts one there; the
    // pins go with that namespace, and so does the policy.
    let out = in_private_mounts(&format!(
        "while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done; {CGDROP} pin --cgroup {p} && {CGDROP} status && {CGDROP} unpin --cgroup {p}",
        p = cg.path.display()
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("mounted bpffs at /sys/fs/bpf"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"), "status in that namespace");
    assert_detached(&cg.path);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn verifier_rejection() {
    let cg = TestCgroup::new("verifier");
    let run = |verbose: bool| {
        let mut cmd = Command::new(CGDROP);
        cmd.args(["--cgroup", cg.path.to_str().unwrap()]).env("CGDROP_SELFTEST_REJECTED_PROGRAM", "1");
        if verbose {
            cmd.arg("--verbose");
        }
        cmd.output().unwrap()
    };
    let out = run(false);
    assert_error(&out, &["loading the BPF programs into the kernel failed", "verifier", "--verbose"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "one line without --verbose");
    let out = run(true);
    assert_error(&out, &["verifier"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("should have been in [0, 3]"), "--verbose shows the verifier's log: {stderr}");
    assert_detached(&cg.path);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn bpffs_unmounted_under_a_pinned_policy() {
    let cg = TestCgroup::new("bpffsgone");
    // In a private mount namespace with its own bpffs: pin, then unmount that
    // bpffs. The pins were the only references: the policy goes with them.
    let out = in_private_mounts(&format!(
        "while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done; \
         {CGDROP} pin --cgroup {p} && umount /sys/fs/bpf && {CGDROP} status",
        p = cg.path.display()
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no pinned cgdrop policies"), "{stderr}");
    assert_detached(&cg.path);
}
