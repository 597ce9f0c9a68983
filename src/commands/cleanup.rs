//! `cgdrop cleanup`, also run before every command that touches the kernel:
//! finishes what a killed cgdrop left, in the order a session ends — kill
//! what is left in a cgroup it owned, wait until it is empty, remove its
//! sub-cgroups, detach (remove the session's pins), remove the cgroup — and
//! completes or removes half-written pins. Ownership is the lock a live
//! cgdrop holds on its cgroup's directory, never a pid's existence.
use std::{fs, os::unix::fs::MetadataExt};

use anyhow::{Context, Result};

use crate::{
    host::{
        cgroup::{self, Cgroup, RUN_PREFIX},
        preflight,
    },
    output,
    pins::{bpffs, runs},
};

/// `cgdrop cleanup`.
pub fn run() -> Result<()> {
    preflight::check()?;
    let n = stale()?;
    if n == 0 {
        crate::say!("cgdrop: nothing to clean up");
    }
    Ok(())
}

/// Before a command: the same, best effort and quiet unless it finds something.
pub fn before_command() {
    // Without root there is nothing this could remove; the command says why it cannot run.
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if let Err(e) = stale() {
        output::warn(format_args!("cleaning up after a killed cgdrop: {e:#} (`cgdrop cleanup` retries)"));
    }
}

/// Cleans up everything stale; returns how many cgroups and pin directories it removed.
pub fn stale() -> Result<usize> {
    let root = bpffs::cgdrop_root();
    if root.is_dir() {
        bpffs::recover(&root)?;
    }
    let mut done = 0;
    runs::remove_stale_pinning();
    for found in runs::list() {
        let Some(info) = &found.info else {
            // Killed before `info` was pinned: no link was pinned either.
            found.remove()?;
            continue;
        };
        let path = std::path::Path::new(&info.cgroup_path);
        let same = fs::metadata(path).is_ok_and(|m| m.ino() == found.id);
        if !same {
            // The cgroup is gone: so are the programs' effects; drop the pins.
            found.remove()?;
            done += 1;
            continue;
        }
        let cg = match Cgroup::adopt(path, Some(found.id)) {
            Ok(Some(cg)) => cg,
            Ok(None) => continue,
            // Removed since the check above (its run ended): the next sweep drops the pins.
            Err(_) if !path.exists() => continue,
            Err(e) => return Err(e),
        };
        if finish_unless_gone(cg, || found.remove())? {
            done += 1;
        }
    }
    let root = cgroup::cgroup2_root()?;
    for entry in fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))?.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(RUN_PREFIX) {
            continue;
        }
        // Another cleanup may have removed it meanwhile.
        let Ok(Some(cg)) = Cgroup::adopt(&entry.path(), None) else { continue };
        if finish_unless_gone(cg, || Ok(()))? {
            done += 1;
        }
    }
    Ok(done)
}

/// `finish`, except that a cgroup removed while it works (by the `run` that
/// made it, ending, or by another cleanup) is not an error: there is nothing
/// left to do. Returns whether it removed the cgroup itself.
fn finish_unless_gone(cg: Cgroup, detach: impl FnOnce() -> Result<()>) -> Result<bool> {
    let path = cg.path.clone();
    match finish(cg, detach) {
        Ok(()) => Ok(true),
        Err(_) if !path.exists() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Empties an abandoned cgroup under the policy its pins keep, then detaches and removes it.
fn finish(cg: Cgroup, detach: impl FnOnce() -> Result<()>) -> Result<()> {
    let killed = cg.process_count();
    cg.kill_all()?;
    detach()?;
    let path = cg.path.clone();
    cg.remove()?;
    crate::say!("cgdrop: removed cgroup {} left by a killed cgdrop ({killed} processes killed)", path.display());
    Ok(())
}
