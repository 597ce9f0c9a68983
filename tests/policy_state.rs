//! Exact policy state as root: live rule edits mean the exact rule, lifetimes
//! merge to the longer one, expired rules never change a live verdict,
//! reloads keep expiries and are all or nothing, concurrent edits keep the
//! flags right, `pin --replace` carries live rules over, `stats --watch`
//! follows replacements. Verdicts are real UDP sends from inside the test
//! cgroup (sent, or rejected with EPERM by the sendmsg hook).
mod common;

use std::{
    fs,
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    sync::{mpsc, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use common::{Cgdrop, Probe, TestCgroup, CGDROP};
use nix::sys::signal::Signal;

/// The tests of this file share /sys/fs/bpf/cgdrop.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn cgdrop(args: &[&str]) -> Output {
    Command::new(CGDROP).args(args).output().expect("run cgdrop")
}

fn ok(args: &[&str]) -> String {
    let out = cgdrop(args);
    assert!(out.status.success(), "cgdrop {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A pinned policy on a fresh test cgroup, unpinned on drop.
struct Pinned {
    cg: TestCgroup,
}

impl Pinned {
    fn new(name: &str, policy: &[&str]) -> Self {
        let cg = TestCgroup::new(name);
        let mut args = vec!["pin", "--cgroup", cg.path.to_str().unwrap()];
        args.extend_from_slice(policy);
        ok(&args);
        Self { cg }
    }

    fn path(&self) -> &str {
        self.cg.path.to_str().unwrap()
    }

    fn rule(&self, words: &[&str]) -> Output {
        let mut args = vec!["rule", words[0], "--cgroup", self.path()];
        args.extend_from_slice(&words[1..]);
        cgdrop(&args)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = cgdrop(&["unpin", "--cgroup", self.path()]);
    }
}

/// One UDP datagram from inside `cg` to `addr`: "sent" or "EPERM".
fn send(cg: &TestCgroup, addr: &str) -> String {
    let r = Probe::run(Some(cg), &["udp-send", addr, "9", "1", "8"]);
    if r["sent"] == 1 {
        "sent".into()
    } else {
        r["errors"].as_object().and_then(|e| e.keys().next().cloned()).unwrap_or_else(|| format!("{r}"))
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn live_rules_mean_the_exact_rule() {
    let _serial = serial();
    // A block list: an exception inside the blocked network can be added.
    let p = Pinned::new("exact-block", &["--block", "127.0.0.0/8"]);
    let out = p.rule(&["add", "allow", "127.9.0.0/16"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(send(&p.cg, "127.9.0.1"), "sent", "the exception applies");
    assert_eq!(send(&p.cg, "127.1.0.1"), "EPERM", "the rest stays blocked");
    for words in [&["del", "deny", "127.1.2.3"][..], &["del", "allow", "127.1.2.3"], &["del", "127.1.2.3"]] {
        let out = p.rule(words);
        assert_eq!(out.status.code(), Some(1), "{words:?}: {}", stderr_of(&out));
        assert!(stderr_of(&out).contains("no such rule"), "{words:?}: {}", stderr_of(&out));
    }
    assert_eq!(send(&p.cg, "127.1.2.3"), "EPERM", "nothing was deleted");
    let out = p.rule(&["del", "allow", "127.9.0.0/16"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(send(&p.cg, "127.9.0.1"), "EPERM");
    drop(p);
    // An allow list: a carve-out inside the allowed network can be added.
    let p = Pinned::new("exact-allow", &["--allow", "127.0.0.0/8"]);
    let out = p.rule(&["add", "deny", "127.66.0.0/16"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(send(&p.cg, "127.66.0.1"), "EPERM");
    assert_eq!(send(&p.cg, "127.1.0.1"), "sent");
    // The same target with the other action is a real conflict.
    let out = p.rule(&["add", "allow", "127.66.0.0/16"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("already denied"), "{}", stderr_of(&out));
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_ttl_never_shortens_a_permanent_rule() {
    let _serial = serial();
    let p = Pinned::new("ttl-merge", &["--block", "127.5.0.1"]);
    let out = p.rule(&["add", "deny", "127.5.0.1", "--ttl", "1s"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("stays permanent"), "{}", stderr_of(&out));
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(send(&p.cg, "127.5.0.1"), "EPERM", "still denied after the ttl");
    drop(p);
    // The same within one policy: a flag and a file line for one target.
    let file = common::TempPath::new("ttl");
    fs::write(&file, "deny 127.5.0.2 ttl=1s\n").unwrap();
    let cg = TestCgroup::new("ttl-merge-fg");
    let cgdrop = Cgdrop::start(&[
        "--cgroup",
        cg.path.to_str().unwrap(),
        "--block",
        "127.5.0.2",
        "--rules-file",
        file.to_str().unwrap(),
    ]);
    thread::sleep(Duration::from_millis(1500));
    let verdict = send(&cg, "127.5.0.2");
    cgdrop.signal(Signal::SIGTERM);
    let _ = cgdrop.wait();
    let _ = fs::remove_file(&file);
    assert_eq!(verdict, "EPERM", "the permanent --block outlives the file's ttl");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn expired_rules_never_change_a_live_verdict() {
    let _serial = serial();
    // Pinned, nobody touching it: five nested allow exceptions expire over a
    // live deny. The kernel cannot see past them all: it must fail closed.
    let p = Pinned::new("expired-nest", &["--block", "127.0.0.0/8"]);
    for prefix in ["127.7.0.0/16", "127.7.0.0/17", "127.7.0.0/18", "127.7.0.0/19", "127.7.0.0/20"] {
        let out = p.rule(&["add", "allow", prefix, "--ttl", "1s"]);
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    assert_eq!(send(&p.cg, "127.7.0.1"), "sent", "the exceptions apply while they live");
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(send(&p.cg, "127.7.0.1"), "EPERM", "expired: the live deny applies");
    drop(p);
    // In foreground, expired rules are deleted when they expire, so even an
    // allow list (where failing closed would drop) gets the live verdict.
    let file = common::TempPath::new("nest");
    let lines: String = (16..21).map(|n| format!("deny 127.8.0.0/{n} ttl=1s\n")).collect();
    fs::write(&file, lines).unwrap();
    let cg = TestCgroup::new("expired-fg");
    let cgdrop = Cgdrop::start(&[
        "--cgroup",
        cg.path.to_str().unwrap(),
        "--allow",
        "127.0.0.0/8",
        "--rules-file",
        file.to_str().unwrap(),
    ]);
    let before = send(&cg, "127.8.0.1");
    thread::sleep(Duration::from_millis(1500));
    let after = send(&cg, "127.8.0.1");
    cgdrop.signal(Signal::SIGTERM);
    let _ = cgdrop.wait();
    let _ = fs::remove_file(&file);
    assert_eq!(before, "EPERM");
    assert_eq!(after, "sent", "the expired denies were swept without --interval");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_reload_keeps_the_expiry_of_an_unchanged_rule() {
    let _serial = serial();
    let file = common::TempPath::new("hup");
    fs::write(&file, "allow 127.9.9.9 ttl=1s\n").unwrap();
    let cg = TestCgroup::new("hup-ttl");
    let mut cgdrop = Cgdrop::start(&[
        "--cgroup",
        cg.path.to_str().unwrap(),
        "--block",
        "127.0.0.0/8",
        "--rules-file",
        file.to_str().unwrap(),
    ]);
    let live = send(&cg, "127.9.9.9");
    thread::sleep(Duration::from_millis(1500));
    let expired = send(&cg, "127.9.9.9");
    cgdrop.signal(Signal::SIGHUP);
    cgdrop.wait_for_stderr("reloaded");
    let reloaded = send(&cg, "127.9.9.9");
    cgdrop.signal(Signal::SIGTERM);
    let _ = cgdrop.wait();
    let _ = fs::remove_file(&file);
    assert_eq!((live.as_str(), expired.as_str()), ("sent", "EPERM"));
    assert_eq!(reloaded, "EPERM", "an expired allow does not reopen at a reload");
}

/// `n` IPv4 deny rules for 10.x.y.z/32, starting at `first`.
fn many_rules(first: u32, n: u32) -> String {
    (first..first + n).map(|i| format!("deny {}\n", std::net::Ipv4Addr::from(0x0a00_0000 + i))).collect()
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_reload_that_does_not_fit_changes_nothing() {
    let _serial = serial();
    // Two sets of 600,000 rules: each fits (1,048,576 per family), both at
    // once do not. The old set must stay whole and none of the new appear.
    let file = common::TempPath::new("cap");
    fs::write(&file, many_rules(0, 600_000) + "deny 127.44.0.1\n").unwrap();
    let cg = TestCgroup::new("reload-cap");
    let mut cgdrop = Cgdrop::start(&["--cgroup", cg.path.to_str().unwrap(), "--rules-file", file.to_str().unwrap()]);
    assert_eq!(send(&cg, "127.44.0.1"), "EPERM");
    fs::write(&file, many_rules(600_000, 600_000) + "deny 127.44.0.2\n").unwrap();
    cgdrop.signal(Signal::SIGHUP);
    let line = cgdrop.wait_for_stderr("reloading");
    assert!(line.contains("nothing was changed"), "{line}");
    let (old, new) = (send(&cg, "127.44.0.1"), send(&cg, "127.44.0.2"));
    // A later good reload leaves no hole behind either.
    fs::write(&file, "deny 127.44.0.3\n").unwrap();
    cgdrop.signal(Signal::SIGHUP);
    cgdrop.wait_for_stderr("reloaded");
    let after = (send(&cg, "127.44.0.1"), send(&cg, "127.44.0.2"), send(&cg, "127.44.0.3"));
    cgdrop.signal(Signal::SIGTERM);
    let (_, stdout, _) = cgdrop.wait();
    let _ = stdout;
    let _ = fs::remove_file(&file);
    assert_eq!((old.as_str(), new.as_str()), ("EPERM", "sent"), "the old rules stay, the new ones are not in");
    assert_eq!((after.0.as_str(), after.1.as_str(), after.2.as_str()), ("sent", "sent", "EPERM"));
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn concurrent_rule_adds_keep_port_rules_working() {
    let _serial = serial();
    let p = Pinned::new("race", &["--block", "127.250.0.1"]);
    let mut children = Vec::new();
    for i in 1..=20 {
        // Half port rules, half port-less: each add sets the skip flags.
        let rule = if i % 2 == 0 { format!("127.6.0.{i}:9") } else { format!("127.6.1.{i}") };
        children.push(
            Command::new(CGDROP)
                .args(["rule", "add", "--cgroup", p.path(), "deny", &rule])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    for i in (2..=20).step_by(2) {
        assert_eq!(send(&p.cg, &format!("127.6.0.{i}")), "EPERM", "port rule 127.6.0.{i}:9");
    }
    let status: serde_json::Value =
        serde_json::from_slice(&Command::new(CGDROP).args(["status", "--json"]).output().unwrap().stdout).unwrap();
    let mine = status.as_array().unwrap().iter().find(|s| s["cgroup"] == p.path()).cloned().unwrap();
    assert_eq!(mine["health"], "ok", "{mine}");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn replace_carries_live_rules_over() {
    let _serial = serial();
    let p = Pinned::new("carry", &["--block", "127.3.0.1"]);
    assert!(p.rule(&["add", "deny", "127.3.0.2"]).status.success());
    assert!(p.rule(&["add", "deny", "127.3.0.3", "--ttl", "1h"]).status.success());
    let said = ok(&["pin", "--replace", "--cgroup", p.path(), "--block", "127.3.0.1"]);
    assert!(said.contains("carried over 2 rule(s)"), "{said}");
    assert_eq!(send(&p.cg, "127.3.0.2"), "EPERM");
    assert_eq!(send(&p.cg, "127.3.0.3"), "EPERM");
    let list = String::from_utf8_lossy(&cgdrop(&["rule", "list", "--cgroup", p.path(), "--json"]).stdout).into_owned();
    let rules: serde_json::Value = serde_json::from_str(&list).unwrap();
    let ttl = rules.as_array().unwrap().iter().find(|r| r["rule"] == "127.3.0.3/32").unwrap();
    let left = ttl["expires_in_secs"].as_u64().unwrap();
    assert!((3500..=3600).contains(&left), "its expiry came along: {left} s left");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn stats_watch_follows_a_replacement() {
    let _serial = serial();
    let p = Pinned::new("watch", &["--egress"]);
    let mut watch = Command::new(CGDROP)
        .args(["stats", "--watch", "1", "--cgroup", p.path()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    ok(&["pin", "--replace", "--cgroup", p.path(), "--egress"]);
    for _ in 0..3 {
        send(&p.cg, "127.0.0.1");
    }
    // The view must come to show the new policy's 3 rejections.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut found = false;
    while Instant::now() < deadline && !found {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            found = line.starts_with("sendmsg") && line.contains("3 rejected");
            seen.push(line);
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(found, "stats --watch never showed the replacement's counters: {seen:?}");
}

/// Runs `script` in a private mount namespace with a bpffs of its own.
fn with_own_bpffs(script: &str) -> Output {
    let script = format!("while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done; {script}");
    Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output().unwrap()
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn bpffs_is_mounted_private_and_a_foreign_cgdrop_directory_is_refused() {
    let _serial = serial();
    let cg = TestCgroup::new("bpffs-owner");
    let p = cg.path.display();
    // cgdrop mounts bpffs itself: mode 0700, not the kernel's 1777.
    let out = with_own_bpffs(&format!(
        "{CGDROP} pin --cgroup {p} >/dev/null 2>&1; stat -c %a /sys/fs/bpf; {CGDROP} unpin --cgroup {p} 2>/dev/null"
    ));
    // The kernel always adds the sticky bit to bpffs' root: 1700.
    let mode = u32::from_str_radix(String::from_utf8_lossy(&out.stdout).trim(), 8).unwrap_or(0o7777);
    assert_eq!(mode & 0o777, 0o700, "mode {mode:o}: {}", stderr_of(&out));
    // A /sys/fs/bpf/cgdrop that an unprivileged user made is not used.
    let out = with_own_bpffs(&format!(
        "mount -t bpf -o mode=1777 bpf /sys/fs/bpf && mkdir /sys/fs/bpf/cgdrop && chown 65534 /sys/fs/bpf/cgdrop && {CGDROP} pin --cgroup {p}"
    ));
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("owned by uid 65534"), "{}", stderr_of(&out));
    common::assert_detached(&cg.path);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn recovery_decides_by_lock_and_touches_only_roots_directories() {
    let _serial = serial();
    // A working directory of a live pid (1) that no cgdrop holds is
    // abandoned; one that is not root's is left alone, whatever its name.
    let out = with_own_bpffs(&format!(
        "mount -t bpf -o mode=0700 bpf /sys/fs/bpf && mkdir -m 0700 /sys/fs/bpf/cgdrop \
         && mkdir /sys/fs/bpf/cgdrop/new-1-1 /sys/fs/bpf/cgdrop/new-2-999999 \
         && chown 65534 /sys/fs/bpf/cgdrop/new-2-999999 \
         && {CGDROP} status >/dev/null && ls /sys/fs/bpf/cgdrop"
    ));
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "new-2-999999");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn messages_say_what_happens() {
    let _serial = serial();
    let cg = TestCgroup::new("messages");
    let run = |args: &[&str]| {
        let mut all = vec!["--cgroup", cg.path.to_str().unwrap(), "--run", "python3 -c 'print()'"];
        all.extend_from_slice(args);
        let out = cgdrop(&all);
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
        stderr_of(&out)
    };
    // A dry run rejects nothing; an ingress-only policy lets UDP sends go.
    let dry = run(&["--dry-run"]);
    assert!(dry.contains("would be rejected are counted") && !dry.contains("rejected with EPERM"), "{dry}");
    assert!(dry.contains("would be rejected"), "{dry}");
    let ingress = run(&["--ingress"]);
    assert!(ingress.contains("TCP connect() rejected with EPERM"), "{ingress}");
    // One target given twice is one rule.
    let twice = run(&["--block", "10.0.0.0/8", "--block", "10.0.0.0/8"]);
    assert!(twice.contains("1 denied target(s)"), "{twice}");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn silent_drops_look_as_the_readme_says() {
    let _serial = serial();
    // --silent egress: a plain UDP sender sees success; one with IP_RECVERR
    // (glibc's resolver sets it) sees ENOBUFS. The README says exactly this.
    let script = "import socket\n\
                  out = []\n\
                  for recverr in (0, 1):\n\
                  \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                  \x20   s.setsockopt(socket.SOL_IP, 11, recverr)  # IP_RECVERR\n\
                  \x20   try:\n\
                  \x20       s.sendto(b'x', ('127.0.0.1', 9)); out.append('sent')\n\
                  \x20   except OSError as e:\n\
                  \x20       out.append(e.strerror)\n\
                  print(' '.join(out))\n";
    let out = cgdrop(&["run", "--silent", "--egress", "--", "python3", "-c", script]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sent No buffer space available");
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("IP_RECVERR") && readme.contains("ENOBUFS"), "the README documents it");
}
