//! Persistent policies as root: `pin` outlives cgdrop, `--replace` under
//! traffic, live `rule add|del`, defunct policies, foreign programs left
//! alone, parent and child policies, `pin --programs`, `make install`.
//! The tests of this file share /sys/fs/bpf/cgdrop and run one at a time.
mod common;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Mutex, MutexGuard},
};

use common::{attached_cgdrop_progs, Probe, TestCgroup, CGDROP};
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn cgdrop(args: &[&str]) -> Output {
    Command::new(CGDROP).args(args).output().expect("run cgdrop")
}

/// Runs cgdrop and asserts success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = cgdrop(args);
    assert!(out.status.success(), "cgdrop {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bpf_root() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/cgdrop")
}

/// Removes the pins of a test cgroup's policy on drop (and the cgdrop bpffs
/// directory once empty), whatever the test left.
struct Unpin(u64);

impl Unpin {
    fn of(cg: &TestCgroup) -> Self {
        Self(cgroup_id(cg))
    }
}

fn cgroup_id(cg: &TestCgroup) -> u64 {
    fs::metadata(&cg.path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).expect("cgroup inode")
}

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(bpf_root().join(self.0.to_string()));
        let _ = fs::remove_dir(bpf_root());
    }
}

fn stats_of(cg: &TestCgroup) -> Value {
    let out = ok(&["stats", "--cgroup", cg.path.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

fn status() -> Vec<Value> {
    serde_json::from_str(&ok(&["status", "--json"])).unwrap()
}

fn connect(cg: &TestCgroup, addr: &str, port: &str) -> String {
    Probe::run(Some(cg), &["tcp-connect", addr, port, "2"])["result"].as_str().unwrap().to_string()
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn pinned_policy_outlives_cgdrop_and_keeps_counting() {
    let _serial = serial();
    let cg = TestCgroup::new("pin");
    let _unpin = Unpin::of(&cg);
    let (mut receiver, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
    let out = cgdrop(&["pin", "--cgroup", cg.path.to_str().unwrap(), "--egress"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // cgdrop has exited: the pins alone keep the programs attached.
    let mut progs = attached_cgdrop_progs(&cg.path);
    progs.sort();
    assert_eq!(progs, common::EGRESS_HOOKS);
    let dir = bpf_root().join(cgroup_id(&cg).to_string());
    assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "pins readable by root only");

    let sent = Probe::run(Some(&cg), &["udp-send", "127.0.0.1", &port, "10", "100"]);
    assert_eq!(sent, json!({"sent": 0, "errors": {"EPERM": 10}}));
    assert_eq!(stats_of(&cg)["sendmsg"], json!({"attempts": 10, "rejected": 10}));
    // The counters live in the pinned map: they add up across cgdrop runs.
    Probe::run(Some(&cg), &["udp-send", "127.0.0.1", &port, "5", "100"]);
    assert_eq!(stats_of(&cg)["sendmsg"], json!({"attempts": 15, "rejected": 15}));
    assert_eq!(receiver.finish(10), json!({"received": 0}));

    let st = status();
    let mine = st.iter().find(|p| p["cgroup"] == cg.path.to_str().unwrap()).expect("status lists the policy");
    assert_eq!(mine["health"], "ok");
    assert_eq!(mine["policy"]["egress"], true);
    assert_eq!(mine["policy"]["ingress"], false);
    assert_eq!(mine["sendmsg"]["rejected"], 15);

    let prom = ok(&["stats", "--prometheus", "--cgroup", cg.path.to_str().unwrap()]);
    let line = format!("cgdrop_rejected_calls_total{{cgroup=\"{}\",hook=\"sendmsg\"}} 15", cg.path.display());
    assert!(prom.lines().any(|l| l == line), "{prom}");

    let again = cgdrop(&["pin", "--cgroup", cg.path.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has a pinned cgdrop policy"));

    ok(&["unpin", "--cgroup", cg.path.to_str().unwrap()]);
    assert!(attached_cgdrop_progs(&cg.path).is_empty(), "unpin detaches");
    assert!(!dir.exists());
    let sent = Probe::run(Some(&cg), &["udp-send", "127.0.0.1", &port, "1", "100"]);
    assert_eq!(sent, json!({"sent": 1, "errors": {}}));
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn replace_under_traffic_lets_nothing_through() {
    let _serial = serial();
    let cg = TestCgroup::new("replace");
    let _unpin = Unpin::of(&cg);
    let path = cg.path.to_str().unwrap();
    let (mut receiver, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
    ok(&["pin", "--cgroup", path, "--egress", "--block", "127.0.0.1"]);
    let mut sender = Probe::start(Some(&cg), &["udp-send", "127.0.0.1", &port, "3000", "10"]);
    // Each policy blocks the destination by another rule, and hooks come and
    // go (--both adds ingress; --egress removes it again).
    let policies: [&[&str]; 6] = [
        &["--egress", "--block", "127.0.0.0/8"],
        &["--both", "--block", "127.0.0.1"],
        &["--egress", "--allow", "192.0.2.1"],
        &["--egress", "--block", "127.0.0.1/32"],
        &["--both"],
        &["--egress", "--block", "127.0.0.0/8"],
    ];
    for flags in policies {
        let mut args = vec!["pin", "--cgroup", path, "--replace"];
        args.extend_from_slice(flags);
        ok(&args);
    }
    assert_eq!(sender.next(30), json!({"sent": 0, "errors": {"EPERM": 3000}}), "no datagram passes during the swaps");
    assert_eq!(receiver.finish(15), json!({"received": 0}));
    let st = status();
    let mine = st.iter().find(|p| p["cgroup"] == path).unwrap();
    assert_eq!(mine["health"], "ok", "{mine}");
    assert_eq!(mine["policy"]["deny_rules"], 1);
    let mut progs = attached_cgdrop_progs(&cg.path);
    progs.sort();
    assert_eq!(progs, common::EGRESS_HOOKS);
    let leftovers: Vec<_> = fs::read_dir(bpf_root()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(
        leftovers.iter().all(|n| n.to_str().unwrap().parse::<u64>().is_ok()),
        "no temporary directories: {leftovers:?}"
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn rule_add_and_del_change_live_verdicts() {
    let _serial = serial();
    let cg = TestCgroup::new("rules");
    let _unpin = Unpin::of(&cg);
    let path = cg.path.to_str().unwrap();
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "20");
    ok(&["pin", "--cgroup", path, "--block", "192.0.2.1"]);
    assert_eq!(connect(&cg, "127.0.0.1", &port), "ok", "a block list passes the rest");

    ok(&["rule", "add", "--cgroup", path, "deny", "127.0.0.1"]);
    assert_eq!(connect(&cg, "127.0.0.1", &port), "EPERM", "the next connect() sees the new rule");
    ok(&["rule", "add", "--cgroup", path, "allow", &format!("127.0.0.1:{port}"), "--ttl", "1h"]);
    assert_eq!(connect(&cg, "127.0.0.1", &port), "ok", "a rule with the port beats the one without");

    let list: Vec<Value> = serde_json::from_str(&ok(&["rule", "list", "--cgroup", path, "--json"])).unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    let timed = list.iter().find(|r| r["action"] == "allow").unwrap();
    assert!((3590..=3600).contains(&timed["expires_in_secs"].as_u64().unwrap()), "{timed}");
    assert!(list.iter().any(|r| r["rule"] == "127.0.0.1/32" && r["expires_in_secs"].is_null()));

    let conflict = cgdrop(&["rule", "add", "--cgroup", path, "allow", "127.0.0.1"]);
    assert_eq!(conflict.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&conflict.stderr).contains("already denied"));

    ok(&["rule", "del", "--cgroup", path, "allow", &format!("127.0.0.1:{port}")]);
    assert_eq!(connect(&cg, "127.0.0.1", &port), "EPERM");
    ok(&["rule", "del", "--cgroup", path, "127.0.0.1"]);
    assert_eq!(connect(&cg, "127.0.0.1", &port), "ok");
    let missing = cgdrop(&["rule", "del", "--cgroup", path, "127.0.0.1"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("has no rule for 127.0.0.1/32"));
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_big_rules_file_loads_into_the_host_table_and_changes_live() {
    // 5,000 /32 rules (the host table takes 4,096 or more), 127.0.0.1 among them.
    let _serial = serial();
    let cg = TestCgroup::new("hosts");
    let _unpin = Unpin::of(&cg);
    let path = cg.path.to_str().unwrap();
    let file = common::TempPath::new("hosts.rules");
    let mut text: String =
        (0..4999u32).map(|i| format!("deny {}\n", std::net::Ipv4Addr::from(0x0a00_0000 + i))).collect();
    text.push_str("deny 127.0.0.1\n");
    fs::write(&file, text).unwrap();
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "30");
    ok(&["pin", "--cgroup", path, "--rules-file", file.to_str().unwrap()]);
    assert_eq!(connect(&cg, "127.0.0.1", &port), "EPERM", "a host of the table is denied");
    assert_eq!(
        connect(&cg, "127.0.0.2", &port),
        "ECONNREFUSED",
        "the block list passes the rest (nothing listens there)"
    );
    let list: Vec<Value> = serde_json::from_str(&ok(&["rule", "list", "--cgroup", path, "--json"])).unwrap();
    assert_eq!(list.len(), 5000);
    let hit = list.iter().find(|r| r["rule"] == "127.0.0.1/32").unwrap();
    assert_eq!(hit["hits"], 1, "the table's rule counts its hit: {hit}");

    ok(&["rule", "del", "--cgroup", path, "127.0.0.1"]);
    assert_eq!(connect(&cg, "127.0.0.1", &port), "ok", "deleted from the table");
    ok(&["rule", "add", "--cgroup", path, "deny", "127.0.0.1", "--ttl", "1h"]);
    assert_eq!(connect(&cg, "127.0.0.1", &port), "EPERM", "a rule with a ttl for a table host");
    ok(&["rule", "del", "--cgroup", path, "127.0.0.1"]);
    assert_eq!(connect(&cg, "127.0.0.1", &port), "ok");
    ok(&["rule", "add", "--cgroup", path, "deny", "127.0.0.1"]);
    assert_eq!(connect(&cg, "127.0.0.1", &port), "EPERM", "written again in place");
    let policy = status().into_iter().find(|p| p["cgroup"] == path).expect("the policy in status");
    assert_eq!(policy["health"], "ok", "{policy}");

    // pin --replace carries the live rule over into the new policy's table.
    ok(&["pin", "--cgroup", path, "--rules-file", file.to_str().unwrap(), "--replace"]);
    assert_eq!(connect(&cg, "127.0.0.1", &port), "EPERM");
    let list: Vec<Value> = serde_json::from_str(&ok(&["rule", "list", "--cgroup", path, "--json"])).unwrap();
    assert_eq!(list.len(), 5000);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn expired_rules_are_deleted_when_touched() {
    let _serial = serial();
    let cg = TestCgroup::new("expire");
    let _unpin = Unpin::of(&cg);
    let path = cg.path.to_str().unwrap();
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "20");
    ok(&["pin", "--cgroup", path, "--block", "192.0.2.1"]);
    ok(&["rule", "add", "--cgroup", path, "deny", "127.0.0.1", "--ttl", "1s"]);
    assert_eq!(connect(&cg, "127.0.0.1", &port), "EPERM");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    // The kernel ignores it at once; the next command deletes it.
    assert_eq!(connect(&cg, "127.0.0.1", &port), "ok");
    let list: Vec<Value> = serde_json::from_str(&ok(&["rule", "list", "--cgroup", path, "--json"])).unwrap();
    assert_eq!(
        list,
        vec![json!({"action": "deny", "rule": "192.0.2.1/32", "expires_in_secs": null, "added_live": false,
            "hits": 0, "last_hit_secs_ago": null})]
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn defunct_policy_is_reported_and_unpinned_by_its_old_path() {
    let _serial = serial();
    let cg = TestCgroup::new("defunct");
    let unpin = Unpin::of(&cg);
    let path = cg.path.to_str().unwrap().to_string();
    ok(&["pin", "--cgroup", &path]);
    fs::remove_dir(&cg.path).expect("remove the (empty) cgroup under its policy");
    let st = status();
    let mine = st.iter().find(|p| p["cgroup"] == path.as_str()).expect("still listed");
    assert!(mine["health"].as_str().unwrap().starts_with("defunct"), "{mine}");
    let text = ok(&["status"]);
    assert!(text.contains("defunct"), "{text}");
    ok(&["unpin", "--cgroup", &path]);
    assert!(!bpf_root().join(unpin.0.to_string()).exists());
    assert!(status().iter().all(|p| p["cgroup"] != path.as_str()));
}

/// The id of a pinned program, from bpftool.
fn prog_id(pin: &Path) -> String {
    let out = Command::new("bpftool").args(["prog", "show", "pinned"]).arg(pin).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':').next().unwrap().trim().to_string()
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn unpin_leaves_foreign_programs_alone() {
    let _serial = serial();
    let cg = TestCgroup::new("foreign");
    let _unpin = Unpin::of(&cg);
    let foreign = common::ForeignProgram::attach(&cg, "foreign", true);
    let foreign_id = prog_id(&foreign.pin);
    let ids = || {
        let out = Command::new("bpftool").args(["cgroup", "show"]).arg(&cg.path).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect::<Vec<_>>()
    };

    ok(&["pin", "--cgroup", cg.path.to_str().unwrap()]);
    assert_eq!(ids().len(), 8, "the foreign program and cgdrop's seven");
    ok(&["unpin", "--cgroup", cg.path.to_str().unwrap()]);
    assert_eq!(ids(), vec![foreign_id.clone()], "only the foreign program remains");
    ok(&["pin", "--cgroup", cg.path.to_str().unwrap()]);
    ok(&["unpin", "--all"]);
    assert_eq!(ids(), vec![foreign_id], "unpin --all leaves it too");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn parent_and_child_policies_both_apply() {
    let _serial = serial();
    let parent = TestCgroup::new("parent");
    let child_path = parent.path.join("child");
    fs::create_dir(&child_path).unwrap();
    let child = TestCgroup { path: child_path, name: "child".into() };
    let (_unpin_parent, _unpin_child) = (Unpin::of(&parent), Unpin::of(&child));
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "20");
    let (_server2, port2) = Probe::listen(None, "tcp-serve", "127.0.0.2", "20");
    let (_server3, port3) = Probe::listen(None, "tcp-serve", "127.0.0.3", "20");
    ok(&["pin", "--cgroup", parent.path.to_str().unwrap(), "--block", "127.0.0.2"]);
    ok(&["pin", "--cgroup", child.path.to_str().unwrap(), "--block", "127.0.0.3"]);

    assert_eq!(connect(&child, "127.0.0.2", &port2), "EPERM", "the parent's policy applies below it");
    assert_eq!(connect(&child, "127.0.0.3", &port3), "EPERM", "and the child's own");
    assert_eq!(connect(&child, "127.0.0.1", &port), "ok");
    assert_eq!(connect(&parent, "127.0.0.2", &port2), "EPERM");
    assert_eq!(connect(&parent, "127.0.0.3", &port3), "ok", "the child's policy does not apply above it");
    drop(child); // removes the child cgroup before the parent's guard runs
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn pinned_programs_attach_by_hand() {
    let _serial = serial();
    let cg = TestCgroup::new("progs");
    struct UnpinAll;
    impl Drop for UnpinAll {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(bpf_root().join("progs"));
            let _ = fs::remove_dir(bpf_root());
        }
    }
    let _cleanup = UnpinAll;
    let out = cgdrop(&["pin", "--programs", "--egress"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("/egress multi)"), "the hint attaches with multi: {said}");
    let egress = bpf_root().join("progs/egress");
    let attach = Command::new("bpftool")
        .args(["cgroup", "attach"])
        .arg(&cg.path)
        .args(["egress", "pinned"])
        .arg(&egress)
        .arg("multi")
        .output()
        .unwrap();
    assert!(attach.status.success(), "{}", String::from_utf8_lossy(&attach.stderr));
    let (mut receiver, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
    // Only the egress program is attached: UDP sends fail at the packet level.
    let sent = Probe::run(Some(&cg), &["udp-send", "127.0.0.1", &port, "5", "10"]);
    assert_eq!(sent, json!({"sent": 0, "errors": {"EPERM": 5}}));
    assert_eq!(receiver.finish(10), json!({"received": 0}));
    // `stats` counts the pinned programs too (5 datagrams dropped by egress).
    let stats: Vec<Value> = serde_json::from_str(&ok(&["stats", "--json"])).unwrap();
    let progs = stats.iter().find(|s| s["cgroup"].as_str().is_some_and(|c| c.contains("pinned programs"))).unwrap();
    assert_eq!(progs["egress"]["dropped_packets"], 5, "{progs}");
    let detach = Command::new("bpftool")
        .args(["cgroup", "detach"])
        .arg(&cg.path)
        .args(["egress", "pinned"])
        .arg(&egress)
        .output()
        .unwrap();
    assert!(detach.status.success());
    ok(&["unpin", "--programs"]);
    assert!(!bpf_root().join("progs").exists());
    ok(&["unpin", "--all"]);
    assert!(!bpf_root().exists());
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn make_install_pins_and_uninstall_leaves_no_trace() {
    let _serial = serial();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join("target/release/cgdrop").exists() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"skipped: needs target/release/cgdrop (make test builds it)\n",
        );
        return;
    }
    let prefix = std::env::temp_dir().join(format!("cgdrop-test-prefix-{}", std::process::id()));
    struct RmPrefix(PathBuf);
    impl Drop for RmPrefix {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _rm = RmPrefix(prefix.clone());
    let name = format!("cgdrop-test-x-{}", std::process::id());
    let cg_path = common::cgroup2_root().join(&name);
    // Unpins by path (cgdrop finds a policy by its recorded path even once
    // the cgroup is gone), then removes the cgroup.
    struct RmCg(PathBuf);
    impl Drop for RmCg {
        fn drop(&mut self) {
            let _ = Command::new(CGDROP).arg("unpin").arg("--cgroup").arg(&self.0).output();
            let _ = fs::remove_dir(bpf_root());
            common::remove_cgroup(&self.0);
        }
    }
    let _rm_cg = RmCg(cg_path.clone());
    // -o build: the binary is already built (make test built it); cargo must
    // not run again under this cargo test.
    let make = |target: &str, extra: &[String]| {
        let out = Command::new("make")
            .current_dir(root)
            .args(["-s", "-o", "build", target, &format!("PREFIX={}", prefix.display())])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make {target}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    make("install", &[format!("CGROUP={name}"), "CGDROP_FLAGS=--egress".into()]);
    for f in [
        "bin/cgdrop",
        "share/man/man1/cgdrop.1",
        "share/bash-completion/completions/cgdrop",
        "lib/systemd/system/cgdrop@.service",
        "lib/systemd/system/cgdrop.service",
    ] {
        assert!(prefix.join(f).exists(), "{f} installed");
    }
    let man = fs::read_to_string(prefix.join("share/man/man1/cgdrop.1")).unwrap();
    assert!(man.contains(".TH cgdrop"), "a man page");
    // Every page the main page refers to is installed too.
    for sub in ["run", "pin", "unpin", "status", "stats", "rule", "cleanup", "apply", "systemd", "log"] {
        assert!(man.contains(&format!("cgdrop\\-{sub}(1)")), "cgdrop.1 refers to cgdrop-{sub}(1)");
        assert!(prefix.join(format!("share/man/man1/cgdrop-{sub}.1")).exists(), "cgdrop-{sub}.1 installed");
    }
    // Every page any installed page refers to is installed (rule → rule-add, …).
    let man1 = prefix.join("share/man/man1");
    for page in fs::read_dir(&man1).unwrap().map(|e| e.unwrap().path()) {
        let text = fs::read_to_string(&page).unwrap().replace("\\-", "-");
        for (at, _) in text.match_indices("cgdrop-") {
            let name: String = text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            if text[at + name.len()..].starts_with("(1)") {
                assert!(
                    man1.join(format!("{name}.1")).exists(),
                    "{} refers to {name}(1), not installed",
                    page.display()
                );
            }
        }
    }
    let mut progs = attached_cgdrop_progs(&cg_path);
    progs.sort();
    assert_eq!(progs, common::EGRESS_HOOKS);
    let st = status();
    assert!(st.iter().any(|p| p["cgroup"] == cg_path.to_str().unwrap() && p["health"] == "ok"), "{st:?}");
    let cg = TestCgroup { path: cg_path.clone(), name: name.clone() };
    let (mut receiver, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
    let sent = Probe::run(Some(&cg), &["udp-send", "127.0.0.1", &port, "3", "10"]);
    assert_eq!(sent, json!({"sent": 0, "errors": {"EPERM": 3}}), "egress dropped after every cgdrop process exited");
    assert_eq!(receiver.finish(10), json!({"received": 0}));

    make("uninstall", &[]);
    assert!(!bpf_root().exists(), "no trace in bpffs");
    assert!(attached_cgdrop_progs(&cg_path).is_empty(), "nothing on the cgroup");
    assert!(!prefix.join("bin/cgdrop").exists());
}
