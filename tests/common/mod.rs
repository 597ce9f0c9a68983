//! Fixtures for the root tests: a test cgroup that cleans itself up, the
//! netprobe traffic generator spawned inside or outside it, and cgdrop itself
//! run in the background. Everything is named `cgdrop-test-…` and removed on
//! drop, so a failing (panicking) test leaves nothing behind.
#![allow(dead_code)] // each test file uses a different part

pub mod packets;

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const CGDROP: &str = env!("CARGO_BIN_EXE_cgdrop");

pub fn cgroup2_root() -> PathBuf {
    cgdrop::host::cgroup::cgroup2_root().expect("a cgroup2 mount")
}

/// A fresh cgroup `cgdrop-test-<name>-<pid>` under the cgroup2 root. On drop,
/// the processes the test put in it are killed and the directory removed.
pub struct TestCgroup {
    pub path: PathBuf,
    pub name: String,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let name = format!("cgdrop-test-{name}-{}", std::process::id());
        let path = cgroup2_root().join(&name);
        if path.exists() {
            remove_cgroup(&path);
        }
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path, name }
    }

    /// The pids currently in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
    }
}

/// Kills what is in a test cgroup and below it (only the tests' own children
/// can be there) and removes it.
pub fn remove_cgroup(path: &Path) {
    if path.exists() {
        if let Err(e) = cgdrop::host::cgroup::destroy(path, Duration::from_secs(10)) {
            eprintln!("removing test cgroup {}: {e:#}", path.display());
        }
    }
}

/// Unpins the policy of a cgroup path on drop, also when the test fails.
pub struct Unpin(pub String);

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = Command::new(CGDROP).args(["unpin", "--cgroup", &self.0]).output();
    }
}

/// A file path `/tmp/cgdrop-test-<name>-<pid>`, removed on drop, even when
/// the test fails.
pub struct TempPath(pub PathBuf);

impl TempPath {
    pub fn new(name: &str) -> Self {
        let path = PathBuf::from(format!("/tmp/cgdrop-test-{name}-{}", std::process::id()));
        let _ = fs::remove_file(&path);
        Self(path)
    }
}

impl std::ops::Deref for TempPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// `cgdrop-run-…` cgroups under the cgroup2 root.
pub fn run_cgroups() -> Vec<PathBuf> {
    fs::read_dir(cgroup2_root())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cgdrop-run-"))
        .map(|e| e.path())
        .collect()
}

/// Session pins left under /sys/fs/bpf/cgdrop/runs.
pub fn run_pins() -> Vec<String> {
    fs::read_dir("/sys/fs/bpf/cgdrop/runs")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Makes `cmd` move itself into `cgroup` between fork and exec.
pub fn in_cgroup(cmd: &mut Command, cgroup: &Path) {
    cgdrop::host::process::join_on_exec(cmd, cgroup).expect("open cgroup.procs");
}

/// tests/netprobe.py running as a child, read line by line (one JSON object each).
pub struct Probe {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Probe {
    /// Starts netprobe with `args`, inside `cgroup` if given.
    pub fn start(cgroup: Option<&TestCgroup>, args: &[&str]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netprobe.py");
        let mut argv = vec!["python3".to_string(), script.to_string_lossy().into_owned()];
        argv.extend(args.iter().map(|a| a.to_string()));
        Self::start_cmd(cgroup, &argv)
    }

    /// Starts `argv` (which runs netprobe, through a wrapper such as nsenter).
    pub fn start_cmd(cgroup: Option<&TestCgroup>, argv: &[String]) -> Self {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdout(Stdio::piped()).stdin(Stdio::null());
        if let Some(cg) = cgroup {
            in_cgroup(&mut cmd, &cg.path);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines: rx }
    }

    /// The next JSON line, waiting at most `secs`.
    pub fn next(&mut self, secs: u64) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(secs))
            .unwrap_or_else(|e| panic!("netprobe printed nothing within {secs}s: {e}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("netprobe printed {line:?}: {e}"))
    }

    /// Stops a listener with SIGTERM and returns the report it then prints.
    pub fn finish(&mut self, secs: u64) -> Value {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.next(secs)
    }

    /// Runs netprobe to completion and returns its last JSON line.
    pub fn run(cgroup: Option<&TestCgroup>, args: &[&str]) -> Value {
        let p = Self::start(cgroup, args);
        let mut last = None;
        while let Ok(line) = p.lines.recv_timeout(Duration::from_secs(30)) {
            last = Some(line);
        }
        let line = last.unwrap_or_else(|| panic!("netprobe {args:?} printed nothing"));
        serde_json::from_str(&line).unwrap()
    }

    /// Starts a listener (udp-recv/tcp-serve) on an ephemeral port; returns it and the port.
    pub fn listen(cgroup: Option<&TestCgroup>, kind: &str, addr: &str, secs: &str) -> (Self, String) {
        let mut p = Self::start(cgroup, &[kind, addr, "0", secs]);
        let port = p.next(10)["port"].as_u64().expect("listener port").to_string();
        (p, port)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// cgdrop running in the background, started and waited on by pid.
pub struct Cgdrop {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    pub stderr: String,
}

impl Cgdrop {
    /// Starts cgdrop and waits until it says it is attached (panics otherwise).
    pub fn start(args: &[&str]) -> Self {
        let argv: Vec<&str> = std::iter::once(CGDROP).chain(args.iter().copied()).collect();
        Self::start_cmd(&argv)
    }

    /// As `start`, with the whole command line (cgdrop behind a wrapper such as nsenter).
    pub fn start_cmd(argv: &[&str]) -> Self {
        Self::start_until(argv, "attached to cgroup")
    }

    /// Starts the command line and waits until stderr has a line containing `needle`.
    pub fn start_until(argv: &[&str], needle: &str) -> Self {
        let args = &argv[1..];
        let mut child = Command::new(argv[0])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cgdrop");
        let stderr_lines = lines_of(child.stderr.take().expect("piped stderr"));
        let mut me = Self { child, stderr_lines, stderr: String::new() };
        me.wait_for_stderr(needle);
        me
    }

    /// Waits (at most 20 s) until cgdrop prints a line containing `needle`
    /// after what was already read; returns that line.
    pub fn wait_for_stderr(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.stderr_lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    self.stderr += &(line.clone() + "\n");
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("cgdrop printed no {needle:?}; stderr: {}", self.stderr),
            }
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal cgdrop");
    }

    /// Waits for exit (at most 10 s); returns status, stdout and all of stderr.
    pub fn wait(mut self) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait cgdrop") {
                break status;
            }
            assert!(Instant::now() < deadline, "cgdrop did not exit within 10 s");
            thread::sleep(Duration::from_millis(10));
        };
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(2)) {
            self.stderr += &(line + "\n");
        }
        (status, stdout, std::mem::take(&mut self.stderr))
    }
}

impl Drop for Cgdrop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(stderr: ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The programs a default policy attaches with `--egress` (sorted), and with both directions.
pub const EGRESS_HOOKS: [&str; 6] =
    ["cgdrop_connect4", "cgdrop_connect6", "cgdrop_egress", "cgdrop_sendmsg4", "cgdrop_sendmsg6", "cgdrop_sock_create"];
pub const BOTH_HOOKS: [&str; 7] = [
    "cgdrop_connect4",
    "cgdrop_connect6",
    "cgdrop_egress",
    "cgdrop_ingress",
    "cgdrop_sendmsg4",
    "cgdrop_sendmsg6",
    "cgdrop_sock_create",
];

/// Names of the cgdrop programs `bpftool cgroup show` lists on `path`.
pub fn attached_cgdrop_progs(path: &Path) -> Vec<String> {
    let out = Command::new("bpftool").arg("cgroup").arg("show").arg(path).output().expect("run bpftool");
    assert!(out.status.success(), "bpftool cgroup show {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|name| name.starts_with("cgdrop_"))
        .map(str::to_string)
        .collect()
}

/// Waits up to 3 s for no cgdrop program to be attached to `path`.
pub fn assert_detached(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let progs = attached_cgdrop_progs(path);
        if progs.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still attached to {}: {progs:?}", path.display());
        thread::sleep(Duration::from_millis(20));
    }
}

/// Parses the JSON summary cgdrop printed on stdout.
pub fn summary(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("summary {stdout:?}: {e}"))
}

/// The compiled BPF object build.rs keeps beside the skeleton, for tests
/// that load it with bpftool as another tool would.
pub fn bpf_object() -> PathBuf {
    PathBuf::from(cgdrop::kernel::BPF_OBJECT)
}

/// A program attached to a test cgroup by bpftool, as another tool would:
/// loaded from cgdrop's object and pinned at /sys/fs/bpf/cgdrop-test-<name>-<pid>.
/// Detached and unpinned on drop.
pub struct ForeignProgram {
    pub pin: PathBuf,
    cgroup: PathBuf,
}

impl ForeignProgram {
    /// `multi`: attach with BPF_F_ALLOW_MULTI (else exclusively, bpftool's default).
    pub fn attach(cg: &TestCgroup, name: &str, multi: bool) -> Self {
        let pin = PathBuf::from(format!("/sys/fs/bpf/cgdrop-test-{name}-{}", std::process::id()));
        let me = Self { pin: pin.clone(), cgroup: cg.path.clone() };
        let bpftool = |args: &[&std::ffi::OsStr]| {
            let out = Command::new("bpftool").args(args).output().expect("run bpftool");
            assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let obj = bpf_object();
        bpftool(&[
            "prog".as_ref(),
            "load".as_ref(),
            obj.as_os_str(),
            pin.as_os_str(),
            "type".as_ref(),
            "cgroup/skb".as_ref(),
        ]);
        let mut attach = vec![
            "cgroup".as_ref(),
            "attach".as_ref(),
            cg.path.as_os_str(),
            "egress".as_ref(),
            "pinned".as_ref(),
            pin.as_os_str(),
        ];
        if multi {
            attach.push("multi".as_ref());
        }
        bpftool(&attach);
        me
    }
}

impl Drop for ForeignProgram {
    fn drop(&mut self) {
        let _ = Command::new("bpftool")
            .arg("cgroup")
            .arg("detach")
            .arg(&self.cgroup)
            .args(["egress", "pinned"])
            .arg(&self.pin)
            .output();
        let _ = fs::remove_file(&self.pin);
    }
}
