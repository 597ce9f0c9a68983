//! Bad input across every subcommand, table-driven: each case exits 1 or 2
//! with one line naming the problem, and leaves no cgroup, pin, link or
//! process behind (compared before and after the whole table). As root the
//! privileged paths are reached; without root the privilege error would
//! mask them, so the table is skipped.
mod common;

use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt},
    path::PathBuf,
    process::Command,
};

use common::{cgroup2_root, TestCgroup, CGDROP};

/// Files the cases point at, removed on drop.
struct Fixtures {
    dir: PathBuf,
}

impl Fixtures {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("cgdrop-test-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| fs::write(dir.join(name), bytes).unwrap();
        write("bad-line.rules", b"deny 10.0.0.0/8\nallow\n");
        write("bad-cidr.rules", b"deny 10.0.0.0/40\n");
        write("bad-action.rules", b"drop 10.0.0.0/8\n");
        write("bad-ttl.rules", b"deny 10.0.0.1 ttl=1y\n");
        write("overflow-ttl.rules", b"deny 10.0.0.1 ttl=18446744073709551615s\n");
        write("garbage.rules", &[0x7f, 0x45, 0x4c, 0x46, 0xff, 0x00, 0xfe]);
        write("conflict.rules", b"deny 10.0.0.0/8\nallow 10.0.0.0/8\n");
        // More rules than a trie holds: refused before anything is attached.
        let huge: String =
            (0..1_100_000u32).map(|i| format!("deny {}\n", std::net::Ipv4Addr::from(0x0b00_0000 + i))).collect();
        write("too-many.rules", huge.as_bytes());
        write("unreadable.rules", b"deny 10.0.0.0/8\n");
        fs::set_permissions(dir.join("unreadable.rules"), fs::Permissions::from_mode(0o000)).unwrap();
        write("a-file", b"not a cgroup\n");
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Fixtures {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What must not change: test cgroups, cgdrop's pins, attached cgdrop links.
fn system_state() -> (Vec<String>, Vec<String>, usize) {
    let cgroups = fs::read_dir(cgroup2_root())
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("cgdrop-"))
        .collect();
    let pins = fs::read_dir("/sys/fs/bpf/cgdrop")
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    let progs = Command::new("bpftool").args(["prog", "show"]).output().unwrap();
    let loaded = String::from_utf8_lossy(&progs.stdout).matches(" name cgdrop_").count();
    (cgroups, pins, loaded)
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn every_bad_input_is_refused_cleanly() {
    let f = Fixtures::new();
    let cg = TestCgroup::new("bad");
    let cgp = cg.path.to_string_lossy().into_owned();
    let v1 = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup").then(|| left.split_whitespace().nth(4).unwrap().to_string())
        })
        .unwrap_or_else(|| "/proc".into());
    let link = f.dir.join("link-to-tmp");
    symlink(std::env::temp_dir(), &link).unwrap();
    let link = link.to_string_lossy().into_owned();
    let missing = format!("{}/cgdrop-test-bad-missing-{}", cgroup2_root().display(), std::process::id());

    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        // Paths.
        (owned(&["--cgroup", &missing]), 1, "does not exist"),
        (owned(&["--cgroup", &f.path("a-file")]), 1, "not a cgroup v2 directory"),
        (owned(&["--cgroup", &link]), 1, "not a cgroup v2 directory"),
        (owned(&["--cgroup", &v1]), 1, "cgroup v"),
        (owned(&["--cgroup", "../../etc"]), 1, "'..'"),
        (owned(&["--cgroup", ""]), 2, "a value is required"),
        (owned(&["--cgroup", &format!("{}/cgroup.procs", cgp)]), 1, "cgroup file"),
        (owned(&["--cgroup", &format!("{missing}/child"), "--create"]), 1, "parent"),
        (owned(&["run", "--", "cgdrop-test-no-such-binary"]), 1, "command not found: cgdrop-test-no-such-binary"),
        // Interfaces and ports.
        (owned(&["--cgroup", &cgp, "--iface", "cgdrop-nosuch0"]), 1, "unknown interface"),
        (owned(&["--cgroup", &cgp, "--port", "0"]), 2, "--port"),
        (owned(&["--cgroup", &cgp, "--port", "65536"]), 2, "--port"),
        (owned(&["--cgroup", &cgp, "--port", "-5"]), 2, "'-5'"),
        // Rules on the command line.
        (owned(&["--cgroup", &cgp, "--block", "10.0.0.0/33"]), 2, "prefix length"),
        (owned(&["--cgroup", &cgp, "--block", "2001:db8::/129"]), 2, "prefix length"),
        (owned(&["--cgroup", &cgp, "--block", "1.2.3.4:0"]), 2, "port '0'"),
        (owned(&["--cgroup", &cgp, "--allow", "1.2.3.4:65536"]), 2, "port '65536'"),
        (owned(&["--cgroup", &cgp, "--allow", "[2001:db8::1:443"]), 2, "missing its ']'"),
        (owned(&["--cgroup", &cgp, "--allow", "10.0.0.1x"]), 2, "not an IPv4 or IPv6 address"),
        (owned(&["--cgroup", &cgp, "--block", "10.0.0.0/8", "--allow", "10.0.0.0/8"]), 1, "both allowed and denied"),
        // Rules files.
        (owned(&["--cgroup", &cgp, "--rules-file", &f.path("bad-line.rules")]), 1, "line 2"),
        (owned(&["--cgroup", &cgp, "--rules-file", &f.path("bad-cidr.rules")]), 1, "line 1"),
        (owned(&["--cgroup", &cgp, "--rules-file", &f.path("bad-action.rules")]), 1, "not an action"),
        (owned(&["--cgroup", &cgp, "--rules-file", &f.path("bad-ttl.rules")]), 1, "unknown unit"),
        (owned(&["--cgroup", &cgp, "--rules-file", &f.path("overflow-ttl.rules")]), 1, "duration"),
        (owned(&["--cgroup", &cgp, "--rules-file", &f.path("garbage.rules")]), 1, "not UTF-8"),
        (owned(&["--cgroup", &cgp, "--rules-file", &f.path("conflict.rules")]), 1, "both allowed and denied"),
        (owned(&["--cgroup", &cgp, "--rules-file", &f.path("too-many.rules")]), 1, "at most"),
        (owned(&["--cgroup", &cgp, "--rules-file", &f.path("no-such.rules")]), 1, "reading rules file"),
        (owned(&["--cgroup", &cgp, "--rules-file", &f.dir.to_string_lossy()]), 1, "reading rules file"),
        // Conflicting and missing flags.
        (owned(&["--cgroup", &cgp, "--ingress", "--egress"]), 2, "cannot be used with"),
        (owned(&["--cgroup", &cgp, "--interval", "0"]), 2, "--interval"),
        (owned(&["pin", "--programs", "--cgroup", &cgp]), 2, "cannot be used with"),
        (owned(&["pin"]), 2, "required"),
        (owned(&["unpin"]), 2, "required"),
        (owned(&["unpin", "--all", "--cgroup", &cgp]), 2, "cannot be used with"),
        (owned(&["stats", "--json", "--prometheus"]), 2, "cannot be used with"),
        (owned(&["run", "sleep", "1"]), 2, "--"),
        // Users and durations.
        (owned(&["run", "--user", "cgdrop-test-no-such-user", "--", "true"]), 1, "unknown user"),
        (owned(&["rule", "add", "--cgroup", &cgp, "deny", "10.0.0.1", "--ttl", "99999999999999999999s"]), 2, "--ttl"),
        (owned(&["rule", "add", "--cgroup", &cgp, "deny", "10.0.0.1", "--ttl", "5"]), 2, "needs a unit"),
        (owned(&["rule", "add", "--cgroup", &cgp, "block", "10.0.0.1"]), 2, "block"),
        // Pinned-policy commands on a cgroup without a policy.
        (owned(&["rule", "list", "--cgroup", &cgp]), 1, "no cgdrop policy is pinned"),
        (owned(&["rule", "del", "--cgroup", &cgp, "10.0.0.1"]), 1, "no cgdrop policy is pinned"),
        (owned(&["unpin", "--cgroup", &cgp]), 1, "no cgdrop policy is pinned"),
        (owned(&["stats", "--cgroup", &cgp]), 1, "no cgdrop policy is pinned"),
    ];
    assert!(cases.len() >= 30);

    let before = system_state();
    let mut failures = Vec::new();
    for (args, code, needle) in &cases {
        let out = Command::new(CGDROP).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let ok = out.status.code() == Some(*code)
            && lines.len() == 1
            && lines[0].starts_with("cgdrop: ")
            && lines[0].contains(needle)
            && out.stdout.is_empty();
        if !ok {
            failures
                .push(format!("{args:?}: exit {:?}, stderr {stderr:?} (wanted {code}, {needle:?})", out.status.code()));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert_eq!(system_state(), before, "a refused command changed the system");
}
