//! The benchmark environment: machine facts, a test cgroup, children placed
//! in it, cgdrop in the background, nftables tables — each removed on drop.
use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub const CGDROP: &str = env!("CARGO_BIN_EXE_cgdrop");

pub fn kernel() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// A cgroup `cgdrop-test-bench-<what>-<pid>`; its processes are killed and
/// the directory removed on drop.
pub struct BenchCgroup {
    pub path: PathBuf,
    pub name: String,
}

impl BenchCgroup {
    pub fn new(what: &str) -> Result<Self> {
        let root = cgdrop::host::cgroup::cgroup2_root()?;
        let name = format!("cgdrop-test-bench-{what}-{}", std::process::id());
        let path = root.join(&name);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, name })
    }

    /// Makes `cmd` move itself into this cgroup between fork and exec.
    pub fn put(&self, cmd: &mut Command) -> Result<()> {
        cgdrop::host::process::join_on_exec(cmd, &self.path)
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        // Best effort: a benchmark that failed is reported already.
        let _ = cgdrop::host::cgroup::destroy(&self.path, Duration::from_secs(10));
    }
}

/// A child process killed (by pid) and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// cgdrop in the foreground on `cg` with `flags`, once it says it is attached.
/// Returns it and the time from spawn to that line.
pub fn cgdrop_attached(cg: &BenchCgroup, flags: &[&str]) -> Result<(Proc, Duration)> {
    let start = Instant::now();
    let mut child = Command::new(CGDROP)
        .arg("--cgroup")
        .arg(&cg.path)
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning cgdrop")?;
    let stderr = child.stderr.take().context("piped stderr")?;
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains("attached to cgroup") => return Ok((proc, start.elapsed())),
            Ok(_) => {}
            Err(_) => bail!("cgdrop {flags:?} did not attach"),
        }
    }
}

/// An nftables table `inet cgdrop_bench`, deleted on drop. The `socket
/// cgroupv2` match resolves cgroup paths under /sys/fs/cgroup only, so on hosts
/// where cgroup2 is mounted elsewhere (hybrid) the table is loaded in a private
/// mount namespace with the cgroup2 mount bound there.
pub struct NftTable;

impl NftTable {
    /// The nft script of a table matching `cg`'s sockets; `rules` are the
    /// statements after the match, one per line, with `{out}`/`{in}` chains.
    pub fn script(cg: &BenchCgroup, output: &[&str], input: &[&str]) -> String {
        let mut s = String::from(
            "table inet cgdrop_bench {\n chain out {\n  type filter hook output priority 0; policy accept;\n",
        );
        for r in output {
            s += &format!("  socket cgroupv2 level 1 \"{}\" {r}\n", cg.name);
        }
        s += " }\n chain in {\n  type filter hook input priority 0; policy accept;\n";
        for r in input {
            s += &format!("  socket cgroupv2 level 1 \"{}\" {r}\n", cg.name);
        }
        s += " }\n}\n";
        s
    }

    /// Loads `script` with `nft -f`; returns the table and nft's own run time.
    pub fn load(script: &str) -> Result<(Self, Duration)> {
        let file = std::env::temp_dir().join(format!("cgdrop-test-bench-{}.nft", std::process::id()));
        fs::write(&file, script)?;
        let root = cgdrop::host::cgroup::cgroup2_root()?;
        // date +%s%N around nft only: the namespace set-up is not nft's cost.
        let sh = format!(
            "{}s=$(date +%s%N); nft -f {f} || exit 1; e=$(date +%s%N); echo $((e - s))",
            if root == Path::new("/sys/fs/cgroup") {
                String::new()
            } else {
                format!("mount --bind {} /sys/fs/cgroup && ", root.display())
            },
            f = file.display()
        );
        let out = Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &sh]).output()?;
        let _ = fs::remove_file(&file);
        if !out.status.success() {
            bail!("nft -f failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let ns: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("nft timing")?;
        Ok((Self, Duration::from_nanos(ns)))
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", "cgdrop_bench"]).output();
    }
}

/// Runs `argv` in `cg`, waits, and returns its stdout, wall time and CPU
/// time (user + system, from wait4's rusage).
pub fn run_measured(cg: Option<&BenchCgroup>, argv: &[String]) -> Result<(String, Duration, Duration)> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdout(Stdio::piped()).stderr(Stdio::inherit());
    if let Some(cg) = cg {
        cg.put(&mut cmd)?;
    }
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawning {argv:?}"))?;
    let pid = child.id() as i32;
    let mut stdout = child.stdout.context("stdout")?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text)?;
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 fills it.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet reaped; pointers are valid.
    let ret = unsafe { nix::libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if ret != pid {
        bail!("wait4 {argv:?}: {}", std::io::Error::last_os_error());
    }
    if !(nix::libc::WIFEXITED(status) && nix::libc::WEXITSTATUS(status) == 0) {
        bail!("{argv:?} failed (status {status})");
    }
    let tv = |t: nix::libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Ok((text, wall, tv(usage.ru_utime) + tv(usage.ru_stime)))
}

/// Runs this benchmark binary again as a child with a helper command (see
/// net.rs: `flood`, `connect-loop`).
pub fn helper(args: &[String]) -> Vec<String> {
    let mut argv =
        vec![std::env::current_exe().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(), "--helper".into()];
    argv.extend(args.iter().cloned());
    argv
}
