//! Containment as root: nothing cgdrop confines sends a packet unfiltered,
//! however cgdrop ends. Each test floods UDP from inside — a process tree: a
//! shell's child, its grandchild, and a process in a sub-cgroup — to a
//! receiver outside that counts what got through: 0 once the policy is in
//! force. Afterwards nothing of cgdrop's is left (cgroups, pins, processes).
mod common;

use std::{
    fs,
    io::Read,
    os::{
        fd::AsRawFd,
        unix::{fs::OpenOptionsExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use common::{assert_detached, run_cgroups, run_pins, Cgdrop, Probe, TestCgroup, CGDROP};
use nix::{sys::signal::Signal, unistd::Pid};

/// These tests kill cgdrops and run `cgdrop cleanup`: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The flood: 64-byte datagrams to 127.0.0.1:PORT for SECS, 0.5 ms apart,
/// errors (EPERM) ignored. A file readable by everyone, so that `--user
/// nobody` can run it.
struct FloodScript(PathBuf);

impl FloodScript {
    fn new() -> Self {
        let path = PathBuf::from(format!("/tmp/cgdrop-test-flood-{}.py", std::process::id()));
        fs::write(
            &path,
            "import socket, sys, time\n\
             port, secs = int(sys.argv[1]), float(sys.argv[2])\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             end = time.time() + secs\n\
             while time.time() < end:\n\
             \x20   try:\n\
             \x20       s.sendto(b'x' * 64, ('127.0.0.1', port))\n\
             \x20   except OSError:\n\
             \x20       pass\n\
             \x20   time.sleep(0.0005)\n",
        )
        .unwrap();
        Self(path)
    }

    /// A shell script that starts the flood tree in the background (a child,
    /// a grandchild, one in the sub-cgroup `sub`) and then runs `tail`.
    fn tree(&self, port: &str, secs: u32, tail: &str) -> String {
        let root = common::cgroup2_root();
        let py = self.0.display();
        format!(
            r#"cg="{root}$(sed -n 's/^0:://p' /proc/self/cgroup)"
mkdir "$cg/sub"
sh -c 'echo $$ > "$1/sub/cgroup.procs" && exec python3 {py} {port} {secs}' x "$cg" &
sh -c 'python3 {py} {port} {secs} & wait' &
{tail}"#,
            root = root.display()
        )
    }
}

impl Drop for FloodScript {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn cleanup() -> String {
    let out = Command::new(CGDROP).arg("cleanup").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "cgdrop cleanup: {stderr}");
    stderr
}

/// cgdrop programs loaded in the kernel (none once every link and pin is gone).
fn loaded_programs() -> usize {
    let out = Command::new("bpftool").args(["prog", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).matches(" name cgdrop_").count()
}

/// Nothing of cgdrop's is left: no run cgroups, no session pins, no programs
/// (freed after an RCU grace period: waited for, 5 s at most).
fn assert_nothing_left(what: &str) {
    assert_eq!(run_cgroups(), Vec::<PathBuf>::new(), "{what}: run cgroups left");
    assert_eq!(run_pins(), Vec::<String>::new(), "{what}: session pins left");
    let deadline = Instant::now() + Duration::from_secs(5);
    while loaded_programs() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(loaded_programs(), 0, "{what}: cgdrop programs still loaded");
}

/// Waits for a child with a deadline; kills it (and fails) after.
fn wait_deadline(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {secs} s");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn received(probe: &mut Probe) -> u64 {
    probe.finish(10)["received"].as_u64().expect("received count")
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn the_flood_tree_is_seen_when_nothing_is_dropped() {
    // The control: with --dry-run the same tree reaches the receiver, so a
    // 0 in the other tests is the policy's doing, not a broken flood.
    let _serial = serial();
    let flood = FloodScript::new();
    let (mut probe, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
    let out = Command::new(CGDROP)
        .args(["run", "--dry-run", "--", "sh", "-c", &flood.tree(&port, 1, "wait")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = received(&mut probe);
    // Three floods of about 2000 datagrams per second for a second.
    assert!(got > 1000, "only {got} datagrams from the flood tree");
    assert_nothing_left("dry run");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn killed_run_keeps_its_whole_tree_filtered_until_cleanup() {
    let _serial = serial();
    let flood = FloodScript::new();
    for delay_ms in [0, 5, 20, 50, 100, 200, 400] {
        let (mut probe, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
        let mut cgdrop = Command::new(CGDROP)
            .args(["run", "--", "sh", "-c", &flood.tree(&port, 20, "wait")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(delay_ms));
        let _ = nix::sys::signal::kill(Pid::from_raw(cgdrop.id() as i32), Signal::SIGKILL);
        cgdrop.wait().unwrap();
        // The tree goes on without cgdrop, under the pinned policy.
        thread::sleep(Duration::from_millis(500));
        cleanup();
        assert_nothing_left(&format!("killed at {delay_ms} ms"));
        assert_eq!(received(&mut probe), 0, "killed at {delay_ms} ms: datagrams got through");
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn the_next_command_cleans_up_after_a_killed_run() {
    let _serial = serial();
    let flood = FloodScript::new();
    let (mut probe, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
    let cgdrop = Cgdrop::start(&["run", "--", "sh", "-c", &flood.tree(&port, 20, "wait")]);
    thread::sleep(Duration::from_millis(300));
    cgdrop.signal(Signal::SIGKILL);
    let _ = cgdrop.wait();
    assert_eq!(run_cgroups().len(), 1, "the killed run's cgroup stays, with its processes, until cleaned up");
    let out = Command::new(CGDROP).args(["run", "--", "true"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("left by a killed cgdrop"), "{stderr}");
    assert_nothing_left("after the next run");
    assert_eq!(received(&mut probe), 0);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn normal_end_kills_background_children_before_detaching() {
    let _serial = serial();
    let flood = FloodScript::new();
    for round in 0..5 {
        let (mut probe, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
        // The shell exits at once; its flood tree is left running.
        let out = Command::new(CGDROP)
            .args(["run", "--", "sh", "-c", &flood.tree(&port, 20, "sleep 0.2; exit 0")])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        thread::sleep(Duration::from_millis(300));
        assert_nothing_left(&format!("round {round}"));
        assert_eq!(received(&mut probe), 0, "round {round}: datagrams got through");
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn foreground_create_run_leaves_nothing_running() {
    let _serial = serial();
    let flood = FloodScript::new();
    let (mut probe, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
    let path = common::cgroup2_root().join(format!("cgdrop-test-create-{}", std::process::id()));
    let out = Command::new(CGDROP)
        .args(["--cgroup", path.to_str().unwrap(), "--create", "--run", &flood.tree(&port, 20, "sleep 0.2")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    thread::sleep(Duration::from_millis(300));
    assert!(!path.exists(), "the created cgroup is removed");
    assert_eq!(received(&mut probe), 0);
    assert_nothing_left("--create --run");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn closed_stdout_and_stderr_do_not_kill_cgdrop() {
    let _serial = serial();
    let flood = FloodScript::new();
    let (mut probe, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
    let mut child = Command::new(CGDROP)
        .args(["run", "--interval", "1", "--json", "--", "sh", "-c", &flood.tree(&port, 3, "wait")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away (`| head -n1` that has its line).
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = wait_deadline(&mut child, 30, "cgdrop with closed pipes");
    assert_eq!(status.code(), Some(0), "cgdrop exits with the command's status, not 134 or 141");
    assert_eq!(received(&mut probe), 0);
    assert_nothing_left("closed pipes");
    for args in [&["completions", "fish"][..], &["completions", "bash"], &["manpage"], &["--help"]] {
        let mut c = Command::new(CGDROP).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(c.stdout.take());
        let mut err = String::new();
        c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = c.wait().unwrap();
        assert!(status.success(), "{args:?}: {status:?} {err}");
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_command_cannot_make_cgdrops_stderr_fail() {
    // The unprivileged command fills the shared stderr pipe and sets
    // O_NONBLOCK on it, then floods from a background child.
    let _serial = serial();
    let flood = FloodScript::new();
    let (mut probe, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
    let script = format!(
        "import fcntl, os, subprocess\n\
         subprocess.Popen(['python3', '{}', '{port}', '4'], start_new_session=True)\n\
         fcntl.fcntl(2, fcntl.F_SETFL, fcntl.fcntl(2, fcntl.F_GETFL) | os.O_NONBLOCK)\n\
         try:\n\
         \x20   while True: os.write(2, b'x' * 4096)\n\
         except BlockingIOError:\n\
         \x20   pass\n",
        flood.0.display()
    );
    let mut child = Command::new(CGDROP)
        .args(["run", "--user", "nobody", "--interval", "1", "--", "python3", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A slow reader: nothing is read while the flood runs.
    thread::sleep(Duration::from_secs(5));
    let mut stderr = child.stderr.take().unwrap();
    let drain = thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    });
    let status = wait_deadline(&mut child, 30, "cgdrop under a non-blocking stderr");
    let err = drain.join().unwrap();
    assert_eq!(status.code(), Some(0), "cgdrop must outlive a bad stderr: {}", &err[err.len().saturating_sub(500)..]);
    assert!(!err.contains("panicked"), "{}", &err[err.len().saturating_sub(500)..]);
    assert_eq!(received(&mut probe), 0);
    assert_nothing_left("O_NONBLOCK");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn user_command_cannot_type_into_the_terminal() {
    let _serial = serial();
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the locals; no names or settings.
    let ret = unsafe {
        nix::libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
    };
    assert_eq!(ret, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors owned from here on.
    let (_master, slave_fd) = unsafe {
        use std::os::fd::FromRawFd;
        (std::os::fd::OwnedFd::from_raw_fd(master), std::os::fd::OwnedFd::from_raw_fd(slave))
    };
    let script = "import fcntl, termios\n\
                  for c in b'echo pwned\\n':\n\
                  \x20   try:\n\
                  \x20       fcntl.ioctl(0, termios.TIOCSTI, bytes([c]))\n\
                  \x20   except OSError as e:\n\
                  \x20       print('TIOCSTI refused:', e)\n\
                  \x20       break\n";
    let mut cmd = Command::new(CGDROP);
    cmd.args(["run", "--user", "nobody", "--", "python3", "-c", script]);
    // cgdrop runs on the terminal as root's shell would: the pty is its
    // controlling terminal, and stdin/stdout/stderr.
    // SAFETY: setsid, ioctl and dup2 on descriptors that outlive the spawn.
    unsafe {
        cmd.pre_exec(move || {
            nix::libc::setsid();
            nix::libc::ioctl(slave, nix::libc::TIOCSCTTY, 0);
            for fd in 0..3 {
                nix::libc::dup2(slave, fd);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let status = wait_deadline(&mut child, 30, "cgdrop run on a terminal");
    assert!(status.success() || status.code().is_some(), "{status:?}");
    // What reached the terminal's input queue: a read on the terminal side.
    let flags = nix::fcntl::fcntl(slave, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(slave, nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
    let mut buf = [0u8; 256];
    let typed = match nix::unistd::read(slave_fd.as_raw_fd(), &mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    };
    assert!(!typed.contains("pwned"), "the command pushed {typed:?} into root's terminal");
    assert_nothing_left("TIOCSTI");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn an_inherited_socket_is_not_passed_on() {
    let _serial = serial();
    let send = "import socket\n\
                try:\n\
                \x20   s = socket.socket(fileno=3)\n\
                \x20   for _ in range(200): s.send(b'x' * 64)\n\
                except OSError as e:\n\
                \x20   print('fd 3:', e)\n";
    // (extra flags, datagrams expected): --keep-fd 3 is the control, and the
    // documented bypass: the socket belongs to the cgroup it was made in.
    for (flags, expected) in [(&[][..], 0), (&["--user", "nobody"][..], 0), (&["--keep-fd", "3"][..], 200)] {
        let (mut probe, port) = Probe::listen(None, "udp-recv", "127.0.0.1", "60");
        // A socket made outside the cgroup (as a shell's `3<>/dev/udp/…` would).
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(format!("127.0.0.1:{port}")).unwrap();
        let raw = sock.as_raw_fd();
        let mut cmd = Command::new(CGDROP);
        cmd.arg("run").args(flags).args(["--", "python3", "-c", send]).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: dup2/fcntl on a descriptor that outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself would keep close-on-exec.
                if raw == 3 {
                    nix::libc::fcntl(3, nix::libc::F_SETFD, 0);
                } else {
                    nix::libc::dup2(raw, 3);
                }
                Ok(())
            });
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "{flags:?}: {status:?}");
        assert_eq!(received(&mut probe), expected, "{flags:?}: datagrams through the inherited socket");
    }
    assert_nothing_left("inherited socket");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_recreated_cgroup_ends_the_session() {
    let _serial = serial();
    let cg = TestCgroup::new("recreated");
    let cgdrop = Cgdrop::start(&["--cgroup", cg.path.to_str().unwrap()]);
    fs::remove_dir(&cg.path).unwrap();
    fs::create_dir(&cg.path).unwrap();
    let started = Instant::now();
    let (status, _, stderr) = cgdrop.wait();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(2), "noticed after {:?}", started.elapsed());
    assert!(stderr.contains("created again"), "{stderr}");
    assert_detached(&cg.path);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn runs_in_two_pid_namespaces_do_not_share_a_cgroup() {
    let _serial = serial();
    // In a new PID namespace cgdrop is pid 1 in both.
    let mut a = Command::new("unshare")
        .args(["--pid", "--fork", CGDROP, "run", "--", "sleep", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(500));
    let b = Command::new("unshare").args(["--pid", "--fork", CGDROP, "run", "--", "true"]).output().unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let status = wait_deadline(&mut a, 20, "the first run");
    let mut err = String::new();
    a.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(0), "the second run must not have killed the first one's command: {err}");
    assert_nothing_left("PID namespaces");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn rules_files_that_are_not_regular_files_are_refused_at_once() {
    let _serial = serial();
    let cg = TestCgroup::new("fifo");
    let fifo = common::TempPath::new("fifo");
    nix::unistd::mkfifo(&*fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for file in [&*fifo, Path::new("/dev/zero")] {
        let mut child = Command::new(CGDROP)
            .args(["--cgroup", cg.path.to_str().unwrap(), "--rules-file", file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_deadline(&mut child, 5, &format!("--rules-file {}", file.display()));
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(err.contains("not a regular file"), "{err}");
        assert_detached(&cg.path);
    }
    // A reload that meets a FIFO fails, and the session still stops on SIGTERM.
    let rules = common::TempPath::new("rules");
    fs::write(&rules, "deny 10.0.0.0/8\n").unwrap();
    let mut cgdrop = Cgdrop::start(&["--cgroup", cg.path.to_str().unwrap(), "--rules-file", rules.to_str().unwrap()]);
    fs::remove_file(&rules).unwrap();
    nix::unistd::mkfifo(&*rules, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    cgdrop.signal(Signal::SIGHUP);
    cgdrop.wait_for_stderr("not a regular file");
    cgdrop.signal(Signal::SIGTERM);
    let (status, _, stderr) = cgdrop.wait();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_detached(&cg.path);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn the_root_cgroup_needs_whole_host_and_symlinks_are_resolved() {
    let _serial = serial();
    let root = common::cgroup2_root();
    for (arg, says) in [(".", "--whole-host"), (root.to_str().unwrap(), "--whole-host"), ("/", "not a cgroup v2")] {
        let out = Command::new(CGDROP).args(["--cgroup", arg, "--run", "true"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--cgroup {arg}: {stderr}");
        assert!(stderr.contains(says), "{arg}: {stderr}");
    }
    assert_detached(&root);
    // Said explicitly, it is allowed (a dry run: the whole host is only counted).
    let out =
        Command::new(CGDROP).args(["--cgroup", ".", "--whole-host", "--dry-run", "--run", "true"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_detached(&root);
    let cg = TestCgroup::new("target");
    let link = common::TempPath::new("link");
    std::os::unix::fs::symlink(&cg.path, &*link).unwrap();
    let out = Command::new(CGDROP).args(["--cgroup", link.to_str().unwrap(), "--run", "true"]).output().unwrap();
    let _ = fs::remove_file(&link);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("attached to cgroup {} ", cg.path.display())), "{stderr}");
    // A symlink to the same cgroup through a second cgroup2 mount (in a
    // private mount namespace) leads outside the mount cgdrop uses: refused.
    let other = format!("/tmp/cgdrop-test-mnt-{}", std::process::id());
    let script = format!(
        "mkdir -p {other} && mount -t cgroup2 none {other} && ln -sfn {other}/{name} {link} && {CGDROP} --cgroup {link} --run true",
        name = cg.name,
        link = link.display()
    );
    let out = Command::new("unshare").args(["-m", "sh", "-c", &script]).output().unwrap();
    let _ = fs::remove_file(&link);
    let _ = fs::remove_dir(&other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("outside the cgroup2 mount"), "{stderr}");
    assert_detached(&cg.path);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_fifo_on_stdin_whose_writer_left_does_not_hang_the_start() {
    let _serial = serial();
    let fifo = common::TempPath::new("stdin");
    nix::unistd::mkfifo(&*fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Reader first (non-blocking), then a writer that writes and goes away.
    let reader = fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(&fifo).unwrap();
    fs::write(&fifo, "hi\n").unwrap();
    let flags = nix::fcntl::fcntl(reader.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let blocking = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(reader.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(blocking)).unwrap();
    let mut child = Command::new(CGDROP)
        .args(["run", "--", "cat"])
        .stdin(Stdio::from(reader))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_deadline(&mut child, 10, "cgdrop run with a FIFO on stdin");
    let _ = fs::remove_file(&fifo);
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(out, "hi\n");
}
