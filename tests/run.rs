//! `cgdrop run`, completions and the demo script, from the outside: exit and
//! signal pass-through, the fresh cgroup removed and leftovers killed,
//! `--user`, the non-terminal live output.
mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
};

use common::{summary, Cgdrop, Probe, CGDROP};
use nix::sys::signal::Signal;
use serde_json::json;

/// The cgroup cgdrop named in its "attached to cgroup PATH (id N)" line.
fn run_cgroup(stderr: &str) -> std::path::PathBuf {
    let rest = stderr.split("attached to cgroup ").nth(1).unwrap_or_else(|| panic!("no attached line: {stderr}"));
    let path = rest.split(" (id ").next().unwrap();
    assert!(path.contains("/cgdrop-run-"), "{path}");
    path.into()
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn exit_status_is_the_commands() {
    for (argv, code) in [(&["sh", "-c", "exit 3"][..], 3), (&["true"][..], 0), (&["false"][..], 1)] {
        let out = Command::new(CGDROP).arg("run").arg("--").args(argv).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = Command::new(CGDROP).args(["run", "--", "cgdrop-test-no-such-command"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "cgdrop: command not found: cgdrop-test-no-such-command: give a path or a program on PATH"
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn signals_are_passed_to_the_command() {
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let cgdrop = Cgdrop::start(&["run", "--", "sleep", "30"]);
        let cgroup = run_cgroup(&cgdrop.stderr);
        cgdrop.signal(sig);
        let (status, _, stderr) = cgdrop.wait();
        // sleep died of the signal cgdrop passed on: 128 + signal.
        assert_eq!(status.code(), Some(128 + sig as i32), "{sig}: {stderr}");
        assert!(stderr.contains("detached from"), "{stderr}");
        assert!(!cgroup.exists(), "{} removed", cgroup.display());
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn leftovers_are_killed_and_the_cgroup_removed() {
    let child = Command::new(CGDROP)
        .args(["run", "--json", "--", "sh", "-c", "sleep 60 & echo $!"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cgroup = run_cgroup(&String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let pid: i32 = lines.next().unwrap().trim().parse().unwrap();
    let s = summary(lines.next().unwrap());
    assert_eq!(s["cgroup"], json!(cgroup.to_str().unwrap()));
    // The background sleep was killed: gone, or a zombie waiting for its
    // reaper (its parent sh exited first).
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').map_or(String::new(), |(_, rest)| rest.trim().chars().take(1).collect()))
        .unwrap_or_else(|_| "gone".into());
    assert!(state == "gone" || state == "Z", "sleep {pid} still runs (state {state})");
    assert!(!cgroup.exists(), "{} removed", cgroup.display());
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn user_option_drops_privileges_and_stays_filtered() {
    let out =
        Command::new(CGDROP).args(["run", "--user", "nobody", "--", "sh", "-c", "id -u; id -g"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids = String::from_utf8_lossy(&out.stdout);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(ids, format!("{}\n{}\n", nobody.uid, nobody.gid));

    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "10");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netprobe.py");
    let out = Command::new(CGDROP)
        .args(["run", "--user", "nobody", "--json", "--", "python3"])
        .arg(&script)
        .args(["tcp-connect", "127.0.0.1", &port, "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let probe: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(probe["result"], "EPERM", "the unprivileged command is still in the cgroup");
    assert_eq!(summary(lines.next().unwrap())["connect"], json!({"attempts": 1, "rejected": 1}));

    let out = Command::new(CGDROP).args(["run", "--user", "cgdrop-test-nobody-at-all", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown user 'cgdrop-test-nobody-at-all'"), "{stderr}");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn explains_a_blocked_command() {
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "10");
    let out = Command::new(CGDROP)
        .args(["run", "--", "curl", "-sS", "-m", "5", &format!("http://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "curl could not connect");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the command's network traffic was blocked: 1 connect() and 0 sendto() calls rejected"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn non_terminal_live_output() {
    let (_rx, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "5");
    let script =
        format!("python3 {}/tests/netprobe.py udp-send 127.0.0.1 {port} 4 10; sleep 1.6", env!("CARGO_MANIFEST_DIR"));
    let out =
        Command::new(CGDROP).args(["run", "--silent", "--interval", "1", "--", "sh", "-c", &script]).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line =
        stderr.lines().find(|l| l.starts_with("cgdrop: 1s ")).unwrap_or_else(|| panic!("no report at 1 s: {stderr}"));
    // --silent: the 4 datagrams are dropped by the egress program, not rejected.
    let (head, tail) = line.split_once(" (").unwrap();
    assert_eq!(head, "cgdrop: 1s ingress dropped 0 of 0");
    assert!(tail.starts_with("0.0/s), egress dropped 4 of 4 ("), "{line}");
    assert!(line.ends_with("/s), connect rejected 0 of 0, sendmsg rejected 0 of 0"), "{line}");
    assert!(!stderr.contains('\x1b'), "no terminal escapes when stderr is not a terminal");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn terminal_live_view_redraws_in_place() {
    // script(1) gives cgdrop a terminal and copies what it draws.
    let cmdline = format!("{CGDROP} run --interval 1 -- sleep 2.3");
    let out = Command::new("script").args(["-qc", &cmdline, "/dev/null"]).output().expect("script (util-linux)");
    assert!(out.status.success());
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("cgdrop: attached for 1s"), "{screen}");
    // The second report moves back over the four lines of the first and clears them.
    let redraw = screen.find("\x1b[4A\x1b[Jcgdrop: attached for 2s").unwrap_or_else(|| panic!("no redraw: {screen:?}"));
    assert!(screen[..redraw].contains("connect  0 of 0 rejected   sendmsg 0 of 0 rejected"), "{screen}");
}

#[test]
fn completions_for_each_shell() {
    for (shell, marker) in [("bash", "_cgdrop()"), ("zsh", "#compdef cgdrop"), ("fish", "complete -c cgdrop")] {
        let out = Command::new(CGDROP).args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: no {marker:?}");
        for word in ["pin", "unpin", "status", "block", "rules-file"] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = Command::new(CGDROP).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_page() {
    let out = Command::new(CGDROP).arg("manpage").output().unwrap();
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.starts_with(".ie") || man.contains(".TH cgdrop"), "roff");
    assert!(man.contains("\\-\\-cgroup") || man.contains("--cgroup"), "options listed");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn demo_script_passes() {
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo.sh"))
        .env("CGDROP", CGDROP)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("HTTP 200"), "the request works without cgdrop: {stdout}");
    assert!(stdout.contains("curl exited with 7"), "{stdout}");
}
