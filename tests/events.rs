//! Drop and reject events as root, with real traffic: the event names the
//! process, the address and the rule; the budget holds under a flood and
//! nothing is lost silently; `cgdrop log --follow` reads a pinned policy's.
mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::{Probe, TestCgroup, Unpin, CGDROP};
use serde_json::Value;

/// The JSON lines of a stdout that also holds the command's own output.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout.lines().filter(|l| l.starts_with('{')).filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// A python script running in a cgroup, with its stdout to read.
fn python_in(cg: &TestCgroup, script: &str) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).stdout(Stdio::piped());
    common::in_cgroup(&mut cmd, &cg.path);
    let mut child = cmd.spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// The first line `pid N` of the command's output.
fn pid_of(stdout: &str) -> u64 {
    stdout.lines().find_map(|l| l.strip_prefix("pid ")).and_then(|p| p.trim().parse().ok()).expect("pid line")
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_rejected_connect_names_the_process_and_the_rule() {
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "20");
    let script = format!(
        "import os, socket\nprint('pid', os.getpid(), flush=True)\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', {port}))\nexcept OSError:\n    pass\n"
    );
    let out = Command::new(CGDROP)
        .args(["run", "--log-json", "--block", "127.0.0.0/8", "--", "python3", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid = pid_of(&stdout);
    let events = json_lines(&stdout);
    let e = events.iter().find(|e| e["hook"] == "connect4").unwrap_or_else(|| panic!("no connect4 event: {stdout}"));
    assert_eq!(e["pid"], pid, "{e}");
    assert_eq!(e["comm"], "python3", "{e}");
    assert_eq!(e["remote"], "127.0.0.1", "{e}");
    assert_eq!(e["remote_port"].to_string(), port, "{e}");
    assert_eq!(e["rule"], "deny 127.0.0.0/8", "{e}");
    assert_eq!(
        (e["verdict"].as_str(), e["reason"].as_str(), e["proto"].as_str()),
        (Some("rejected"), Some("rule"), Some("tcp"))
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_packet_drop_names_the_sockets_owner() {
    // With --iface, sendto() is not rejected: the egress program drops the
    // packet, and names the owner the sendmsg hook recorded on the socket.
    let script = "import os, socket\nprint('pid', os.getpid(), flush=True)\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(3):\n    try:\n        u.sendto(b'x' * 10, ('127.0.0.2', 53))\n    except OSError:\n        pass\n";
    let out = Command::new(CGDROP)
        .args([
            "run",
            "--log-json",
            "--iface",
            "lo",
            "--egress",
            "--block",
            "127.0.0.0/8",
            "--",
            "python3",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid = pid_of(&stdout);
    let drops: Vec<Value> = json_lines(&stdout).into_iter().filter(|e| e["hook"] == "egress").collect();
    assert_eq!(drops.len(), 3, "{stdout}");
    for e in &drops {
        assert_eq!((e["pid"].as_u64(), e["verdict"].as_str()), (Some(pid), Some("dropped")), "{e}");
        assert_eq!(
            (e["remote"].as_str(), e["remote_port"].as_u64(), e["local"].as_str()),
            (Some("127.0.0.2"), Some(53), Some("127.0.0.1"))
        );
        assert_eq!(e["rule"], "deny 127.0.0.0/8");
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_flood_is_budgeted_and_nothing_is_lost_silently() {
    // 100,000 dropped datagrams, at most 20 events a second: the events and
    // the "left out" counts add up to the drops, and the drops to the sends.
    let script = "import socket\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(100000):\n    u.sendto(b'x' * 10, ('127.0.0.2', 53))\n";
    let started = Instant::now();
    let out = Command::new(CGDROP)
        .args([
            "run",
            "--log-json",
            "--json",
            "--silent",
            "--egress",
            "--log-rate",
            "20",
            "--",
            "python3",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = json_lines(&stdout);
    let summary = lines.iter().find(|l| l.get("egress").is_some()).expect("the summary");
    let dropped = summary["egress"]["dropped_packets"].as_u64().unwrap();
    assert_eq!(dropped, 100_000, "counters equal what was sent");
    let events = lines.iter().filter(|l| l["hook"] == "egress").count() as u64;
    let left_out: u64 = lines.iter().filter_map(|l| l["suppressed"].as_u64()).sum();
    assert_eq!(events + left_out, dropped, "{events} events + {left_out} left out");
    // 20 a second over the CPUs (rounded up per CPU), for each second begun.
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let most = 20u64.div_ceil(cpus) * cpus * (secs.ceil() as u64 + 1);
    assert!(events <= most, "{events} events in {secs:.1} s (at most {most})");
    assert!(events > 0);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn log_follow_shows_a_pinned_policys_events() {
    let cg = TestCgroup::new("log");
    let path = cg.path.to_str().unwrap().to_string();
    let out = Command::new(CGDROP).args(["pin", "--cgroup", &path, "--block", "127.0.0.0/8"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _unpin = Unpin(path.clone());
    let mut log = Command::new(CGDROP)
        .args(["log", "--follow", "--json", "--cgroup", &path])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = log.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    thread::sleep(Duration::from_millis(300));
    // A process started after `log`: its rejected connect shows up; and
    // again after `pin --replace` (new ring buffer), which log follows.
    let connect_and_find = |rx: &mpsc::Receiver<String>| {
        let mut probe = Command::new("python3");
        probe.args([
            "-c",
            "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), 1)\nexcept OSError:\n    pass\n",
        ]);
        common::in_cgroup(&mut probe, &cg.path);
        let mut child = probe.spawn().unwrap();
        let pid = child.id() as u64;
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                if serde_json::from_str::<Value>(&line).is_ok_and(|e| e["pid"] == pid && e["hook"] == "connect4") {
                    return Ok(());
                }
                seen.push(line);
            }
        }
        Err(format!("no event of pid {pid}: {seen:?}"))
    };
    let first = connect_and_find(&rx);
    let out =
        Command::new(CGDROP).args(["pin", "--replace", "--cgroup", &path, "--block", "127.0.0.0/8"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    thread::sleep(Duration::from_millis(1500));
    let after_replace = connect_and_find(&rx);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(log.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let status = log.wait().unwrap();
    first.unwrap();
    after_replace.unwrap();
    assert!(status.success(), "`log --follow` ends cleanly on SIGTERM: {status:?}");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn log_bad_input() {
    let cg = TestCgroup::new("log-bad");
    let out = Command::new(CGDROP).args(["log", "--cgroup", cg.path.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no cgdrop policy is pinned"), "{stderr}");
    let out = Command::new(CGDROP).args(["run", "--log-rate", "many", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn an_established_connection_names_its_owner_or_unknown_never_another() {
    // A TCP connection made before the policy arrives never passed its
    // connect hook: its egress drops (in process and softirq context) name
    // no process, or this one — never the process that happens to run.
    let cg = TestCgroup::new("established");
    let (_server, port) = Probe::listen(None, "tcp-sink", "127.0.0.1", "20");
    let go = common::TempPath::new("go");
    let script = format!(
        "import os, socket, time\nprint('pid', os.getpid(), flush=True)\ns = socket.create_connection(('127.0.0.1', {port}))\nwhile not os.path.exists('{go}'):\n    time.sleep(0.02)\nfor _ in range(20):\n    try:\n        s.send(b'x' * 100)\n    except OSError:\n        pass\n    time.sleep(0.05)\n",
        go = go.display()
    );
    let (mut client, mut out) = python_in(&cg, &script);
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let pid = pid_of(&first);
    let cgdrop = common::Cgdrop::start(&["--cgroup", cg.path.to_str().unwrap(), "--egress", "--log-json"]);
    std::fs::write(&*go, "").unwrap();
    client.wait().unwrap();
    thread::sleep(Duration::from_millis(500));
    cgdrop.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, stdout, stderr) = cgdrop.wait();
    let drops: Vec<Value> = json_lines(&stdout).into_iter().filter(|e| e["hook"] == "egress").collect();
    assert!(!drops.is_empty(), "{stdout}{stderr}");
    for e in &drops {
        assert!(e["pid"].is_null() || e["pid"] == pid, "an event names another process: {e}");
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn run_ends_with_the_most_blocked_destinations() {
    let script = "import socket\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor dest, n in ((('127.0.0.2', 53), 5), (('127.0.0.3', 80), 2)):\n    for _ in range(n):\n        try:\n            u.sendto(b'x', dest)\n        except OSError:\n            pass\n";
    let out = Command::new(CGDROP).args(["run", "--", "python3", "-c", script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("most blocked destinations (among the recorded events): 127.0.0.2:53 (5), 127.0.0.3:80 (2)"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn per_rule_hits_equal_the_rejected_connects() {
    let cg = TestCgroup::new("hits");
    let path = cg.path.to_str().unwrap().to_string();
    let out = Command::new(CGDROP)
        .args(["pin", "--cgroup", &path, "--block", "127.61.0.0/16", "--block", "127.62.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _unpin = Unpin(path.clone());
    for (addr, n) in [("127.61.0.5", 3), ("127.62.0.1", 5)] {
        for _ in 0..n {
            let r = Probe::run(Some(&cg), &["tcp-connect", addr, "9", "1"]);
            assert_eq!(r["result"], "EPERM", "{r}");
        }
    }
    let list = Command::new(CGDROP).args(["rule", "list", "--cgroup", &path, "--json"]).output().unwrap();
    let rules: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap();
    let hits = |rule: &str| rules.iter().find(|r| r["rule"] == rule).map(|r| r["hits"].as_u64().unwrap());
    assert_eq!((hits("127.61.0.0/16"), hits("127.62.0.1/32")), (Some(3), Some(5)), "{rules:?}");
    let stats: Vec<Value> = serde_json::from_slice(
        &Command::new(CGDROP).args(["stats", "--cgroup", &path, "--json"]).output().unwrap().stdout,
    )
    .unwrap();
    assert_eq!(stats[0]["rules"][0]["rule"], "127.62.0.1/32", "most hits first: {}", stats[0]);
    assert_eq!(stats[0]["rules"][0]["hits"], 5);
    let prom = Command::new(CGDROP).args(["stats", "--cgroup", &path, "--prometheus"]).output().unwrap();
    let prom = String::from_utf8_lossy(&prom.stdout);
    assert!(
        prom.contains(&format!("cgdrop_rule_hits_total{{cgroup=\"{path}\",rule=\"deny 127.61.0.0/16\"}} 3")),
        "{prom}"
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn an_ingress_drop_names_the_receiver_that_never_sent() {
    // A UDP receiver made after the policy never connects or sends: only
    // the sock_create hook saw it. Its dropped datagrams name it.
    let cg = TestCgroup::new("receiver");
    let path = cg.path.to_str().unwrap().to_string();
    let out =
        Command::new(CGDROP).args(["pin", "--cgroup", &path, "--ingress", "--block", "127.0.0.0/8"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _unpin = Unpin(path.clone());
    let go = common::TempPath::new("receiver-done");
    let script = format!(
        "import os, socket, time\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nu.bind(('127.0.0.1', 0))\nprint('pid', os.getpid(), flush=True)\nprint('port', u.getsockname()[1], flush=True)\nwhile not os.path.exists('{go}'):\n    time.sleep(0.02)\n",
        go = go.display()
    );
    let (mut receiver, mut out) = python_in(&cg, &script);
    let (mut first, mut second) = (String::new(), String::new());
    out.read_line(&mut first).unwrap();
    out.read_line(&mut second).unwrap();
    let pid = pid_of(&first);
    let port: u16 = second.trim().strip_prefix("port ").unwrap().parse().unwrap();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..3 {
        sender.send_to(b"hello", ("127.0.0.1", port)).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    std::fs::write(&*go, "").unwrap();
    receiver.wait().unwrap();
    let log = Command::new(CGDROP).args(["log", "--json", "--cgroup", &path]).output().unwrap();
    let stdout = String::from_utf8_lossy(&log.stdout);
    let drops: Vec<Value> = json_lines(&stdout)
        .into_iter()
        .filter(|e| e["hook"] == "ingress" && e["local_port"].as_u64() == Some(port.into()))
        .collect();
    assert_eq!(drops.len(), 3, "{stdout}{}", String::from_utf8_lossy(&log.stderr));
    for e in &drops {
        assert_eq!((e["pid"].as_u64(), e["comm"].as_str()), (Some(pid), Some("python3")), "{e}");
    }
}
