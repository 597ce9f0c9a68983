//! The pins of a session on a cgroup cgdrop owns (`cgdrop run`, `--create`):
//! `/sys/fs/bpf/cgdrop/runs/<cgroup-id>/` holds `info` (which cgroup) and
//! the links. While a process is left in the cgroup, the policy must not
//! depend on cgdrop's own descriptors: a killed cgdrop leaves the policy
//! attached here, and the next cgdrop command (or `cgdrop cleanup`) empties
//! the cgroup, then removes these pins and the cgroup.
use std::{
    fs,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::{DirBuilderExt, MetadataExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle};

use crate::{
    host::cgroup::Cgroup,
    kernel::{config::Info, loader::Hook, skel::CgdropSkel},
    pins::{
        bpffs,
        pinned::{link_path, lock_dir, write_info},
    },
};

/// The name of a session's pin directory while its `info` is pinned, before
/// the id (not a number: `list` passes it by). Its maker holds a lock on it
/// (flock) until it is renamed; `remove_stale_pinning` removes those that
/// nobody holds (their cgdrop was killed).
const PINNING: &str = "pinning-";

/// Makes `dir` (and `runs`, if missing: the end of another session may just
/// have removed it) and locks it. A sweep may remove it between the two: then
/// again (a sweep holds the lock only while it removes).
fn make_locked(dir: &Path) -> Result<OwnedFd> {
    let mut last = None;
    for _ in 0..5 {
        if let Err(e) = fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
            last = Some(anyhow::Error::new(e).context(format!("creating {}", dir.display())));
            continue;
        }
        let fd = match lock_dir(dir) {
            Ok(fd) => fd,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        // Still the directory we locked (not removed, or removed and made again).
        let locked = nix::sys::stat::fstat(fd.as_raw_fd()).map(|st| st.st_ino);
        if fs::metadata(dir).is_ok_and(|m| locked == Ok(m.ino())) {
            return Ok(fd);
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{} kept being removed while it was made", dir.display())))
}

/// `/sys/fs/bpf/cgdrop/runs`.
pub fn runs_dir() -> PathBuf {
    bpffs::cgdrop_root().join("runs")
}

/// A session's pins; removed (which detaches, once cgdrop's own link
/// descriptors are closed too) by `remove`.
pub struct RunPins {
    dir: PathBuf,
}

impl RunPins {
    /// Pins `info` first (so that any pin directory names its cgroup), then
    /// every link. `info` is pinned in a directory of its own
    /// (`pinning-<id>`; bpffs allows no dot in a name), renamed into place
    /// once it holds it: a cleanup running meanwhile (every command starts
    /// with one) takes a `<id>` without `info` for the leftover of a cgdrop
    /// killed while pinning, and removes it.
    pub fn pin(skel: &mut CgdropSkel<'_>, links: &mut [(Hook, Link)], cgroup: &Cgroup) -> Result<Self> {
        bpffs::prepare_root()?;
        let dir = runs_dir().join(cgroup.id.to_string());
        let making = runs_dir().join(format!("{PINNING}{}", cgroup.id));
        for old in [&dir, &making] {
            if old.exists() {
                // A cgroup id is an inode number: one of a cgroup long gone can come back.
                fs::remove_dir_all(old).with_context(|| format!("removing the stale {}", old.display()))?;
            }
        }
        // Held until `making` is renamed: a sweep leaves a locked one alone.
        let _lock = make_locked(&making)?;
        write_info(skel, cgroup, "", "", None)?;
        let info = making.join("info");
        let pinned = skel.maps.cgdrop_info.pin(&info).with_context(|| format!("pinning map {}", info.display()));
        let renamed = pinned.and_then(|()| {
            fs::rename(&making, &dir).with_context(|| format!("renaming {} to {}", making.display(), dir.display()))
        });
        if let Err(e) = renamed {
            let _ = fs::remove_dir_all(&making);
            return Err(e);
        }
        let me = Self { dir };
        for (hook, link) in links.iter_mut() {
            let path = link_path(&me.dir, *hook);
            link.pin(&path).with_context(|| format!("pinning link {}", path.display()))?;
        }
        Ok(me)
    }

    /// Removes the pins: with cgroup empty, the policy can go. `runs` goes
    /// too when it is empty (it fails harmlessly while others are in it).
    pub fn remove(self) -> Result<()> {
        remove(&self.dir)?;
        let _ = fs::remove_dir(runs_dir());
        Ok(())
    }
}

fn remove(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// A session's pins found on bpffs, and the cgroup they record.
pub struct Found {
    pub dir: PathBuf,
    pub id: u64,
    /// None when `info` is missing or unreadable (killed while pinning it:
    /// then no link is pinned either).
    pub info: Option<Info>,
}

impl Found {
    pub fn remove(&self) -> Result<()> {
        remove(&self.dir)?;
        let _ = fs::remove_dir(runs_dir());
        Ok(())
    }
}

/// Removes the `PINNING` directories of sessions killed while they pinned
/// `info` (no link is pinned there yet): those whose lock nobody holds.
pub fn remove_stale_pinning() {
    let Ok(entries) = fs::read_dir(runs_dir()) else { return };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(PINNING) {
            continue;
        }
        if let Ok(Some(_lock)) = bpffs::try_lock(&e.path()) {
            // Removed under the lock: its maker, if it comes back to it, sees it gone and makes another.
            let _ = remove(&e.path());
        }
    }
}

/// Every session pin directory.
pub fn list() -> Vec<Found> {
    let Ok(entries) = fs::read_dir(runs_dir()) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_str()?.parse().ok()?;
            let dir = e.path();
            let info = MapHandle::from_pinned_path(dir.join("info"))
                .ok()
                .and_then(|m| m.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).ok().flatten())
                .and_then(|raw| Info::decode(&raw).ok());
            Some(Found { dir, id, info })
        })
        .collect()
}
