//! The tree below a cgroup: whether any process is left in it (from
//! `cgroup.events`), killing all of it, and removing its sub-cgroups deepest
//! first. Used for the cgroups cgdrop owns, and by tests and benchmarks for
//! theirs.
use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// How long the processes of a killed cgroup get to be gone.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether any process is in the cgroup or below it. Read from
/// `cgroup.events`, never from an empty `cgroup.procs`: a process that is
/// migrating itself in can be missing from `cgroup.procs` for an RCU grace
/// period while it is already counted as populating the cgroup.
pub fn populated(path: &Path) -> Result<bool> {
    let events = path.join("cgroup.events");
    let text = fs::read_to_string(&events).with_context(|| format!("reading {}", events.display()))?;
    match text.lines().find_map(|l| l.strip_prefix("populated ")) {
        Some(v) => Ok(v.trim() != "0"),
        None => bail!("{} has no 'populated' line", events.display()),
    }
}

/// The sub-cgroups of `path`, deepest first (the order they can be removed in).
pub(super) fn descendants(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
                out.push(entry.path());
            }
        }
    }
    // Parents were pushed before their children: reversed, children come first.
    out.reverse();
    out
}

/// Kills every process of the cgroup tree at `path` (`cgroup.kill`, Linux
/// 5.14; else SIGKILL to every pid of every cgroup of the tree, again until
/// none is left), waits until `cgroup.events` says `populated 0`, then
/// removes the sub-cgroups depth first. `path` itself stays.
pub fn empty_tree(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let kill_file = path.join("cgroup.kill");
    let can_kill = kill_file.exists();
    while populated(path)? {
        if Instant::now() > deadline {
            bail!("the processes of cgroup {} did not exit within {timeout:?} of SIGKILL", path.display());
        }
        if can_kill {
            fs::write(&kill_file, "1").with_context(|| format!("writing {}", kill_file.display()))?;
        } else {
            for dir in descendants(path).iter().chain([&path.to_path_buf()]) {
                for pid in fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
                    if let Ok(pid) = pid.trim().parse() {
                        // Gone already is fine: that is the goal.
                        let _ =
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                    }
                }
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    for dir in descendants(path) {
        remove_dir_retrying(&dir, deadline)?;
    }
    Ok(())
}

/// `rmdir` of a cgroup that just became empty: the kernel may still say EBUSY
/// for a moment while the last exiting task is released.
pub(super) fn remove_dir_retrying(dir: &Path, deadline: Instant) -> Result<()> {
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
        }
    }
}

/// Empties the cgroup tree at `path` (see `empty_tree`) and removes `path`.
pub fn destroy(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    empty_tree(path, timeout)?;
    remove_dir_retrying(path, deadline)
}
