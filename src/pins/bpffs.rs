//! bpffs and cgdrop's directory in it: mounts bpffs (mode 0700) when it is
//! missing, accepts `/sys/fs/bpf/cgdrop` only as a root-owned directory no
//! one else can write, and recovers what a killed cgdrop left half done there
//! (working directories `new-…`/`old-…`, abandoned when their lock is free). Also the
//! helpers to build a directory of pins that is complete or absent.
use std::{
    ffi::CString,
    fs,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::{
            ffi::OsStrExt,
            fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
        },
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use nix::{
    mount::{mount, MsFlags},
    sys::statfs::statfs,
};

pub const BPFFS: &str = "/sys/fs/bpf";
/// statfs(2) f_type of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// `/sys/fs/bpf/cgdrop`: everything cgdrop pins is below it.
pub fn cgdrop_root() -> PathBuf {
    Path::new(BPFFS).join("cgdrop")
}

/// Accepts cgdrop's bpffs directory only as a root-owned directory that
/// neither group nor others can write, checked on a descriptor opened
/// without following a symlink: cgdrop removes entries there, and must never
/// act on what an unprivileged user put in place. Returns that descriptor.
pub fn check_root_dir(root: &Path) -> Result<Option<OwnedFd>> {
    match fs::symlink_metadata(root) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("{} is a symbolic link: refusing to follow it out of bpffs; remove it", root.display())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        _ => {}
    }
    let fd = open_dir_nofollow(root)?;
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).with_context(|| format!("inspecting {}", root.display()))?;
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
        bail!(
            "{} is owned by uid {} with mode {:o}: cgdrop only uses it when root owns it and nobody else can write to it; remove it (rm -r {}) and let cgdrop recreate it",
            root.display(),
            st.st_uid,
            st.st_mode & 0o7777,
            root.display()
        );
    }
    Ok(Some(fd))
}

/// Opens a directory without following a symlink in its last component.
pub fn open_dir_nofollow(path: &Path) -> Result<OwnedFd> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(OwnedFd::from(f))
}

/// The lock a live cgdrop holds on a working or policy directory; `None`
/// when another process holds it.
pub fn try_lock(path: &Path) -> Result<Option<OwnedFd>> {
    let fd = open_dir_nofollow(path)?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { nix::libc::flock(fd.as_raw_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB) } == 0 {
        return Ok(Some(fd));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(nix::libc::EWOULDBLOCK) {
        return Ok(None);
    }
    Err(err).with_context(|| format!("locking {}", path.display()))
}

/// Where `pin --programs` puts bare programs.
pub fn programs_dir() -> PathBuf {
    cgdrop_root().join("progs")
}

/// Mounts bpffs at /sys/fs/bpf if something else is there, and creates
/// /sys/fs/bpf/cgdrop (0700: pins hold the policy and its counters).
pub fn prepare_root() -> Result<PathBuf> {
    let fs = statfs(BPFFS).with_context(|| format!("cannot inspect {BPFFS}"))?;
    if fs.filesystem_type().0 != BPF_FS_MAGIC {
        // mode=0700: the kernel's default (1777) lets every user create and
        // rename entries next to cgdrop's directory.
        mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .with_context(|| format!("mounting bpffs at {BPFFS} (mount -t bpf -o mode=0700 bpf {BPFFS})"))?;
        crate::say!("cgdrop: mounted bpffs at {BPFFS} (it was not mounted)");
    } else if fs::metadata(BPFFS).is_ok_and(|m| m.permissions().mode() & 0o002 != 0) {
        crate::say!(
            "cgdrop: warning: bpffs at {BPFFS} is writable by every user; cgdrop's own directory is protected, but consider `mount -o remount,mode=0700 {BPFFS}`"
        );
    }
    let root = cgdrop_root();
    if check_root_dir(&root)?.is_none() {
        match fs::DirBuilder::new().mode(0o700).create(&root) {
            Ok(()) => {}
            // Made meanwhile (by another cgdrop, or someone else: checked below).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", root.display())),
        }
        check_root_dir(&root)?;
    }
    recover(&root)?;
    Ok(root)
}

/// Whether `path` is a working directory (`new-…`, `old-…`) that a running
/// cgdrop holds: a pin under way, which `unpin --all` must not cut in half
/// (a half-removed directory renamed into place would leave links attached
/// with no policy to read or remove).
pub fn in_progress(path: &Path) -> bool {
    let is_working = path.file_name().and_then(|n| n.to_str()).and_then(working_dir).is_some();
    is_working && matches!(try_lock(path), Ok(None))
}

/// A working directory of a cgdrop process: `new-<id>-<pid>`, `old-<id>-<pid>`
/// or `new-progs-<pid>`. Returns (kind, id, pid).
fn working_dir(name: &str) -> Option<(&str, Option<u64>, i32)> {
    let (kind, rest) = name.split_once('-')?;
    if kind != "new" && kind != "old" {
        return None;
    }
    let (id, pid) = rest.rsplit_once('-')?;
    let id = if id == "progs" { None } else { Some(id.parse().ok()?) };
    Some((kind, id, pid.parse().ok()?))
}

/// Finishes or undoes what a killed cgdrop left half done, so that every
/// policy is complete or absent (SIGKILL cannot be caught while pinning):
/// a `new-…` directory whose pin never got renamed into place is removed
/// (its links detach), unless the policy directory is missing and its `old-…`
/// twin shows that a --replace was between its two renames, which is then
/// completed; an `old-…` directory left after a finished swap is removed.
pub fn recover(root: &Path) -> Result<()> {
    if check_root_dir(root)?.is_none() {
        return Ok(());
    }
    let Ok(entries) = fs::read_dir(root) else { return Ok(()) };
    let mut names: Vec<String> =
        entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
    // `new-…` before `old-…`: an interrupted swap is completed from its new half.
    names.sort();
    for name in &names {
        let Some((kind, id, pid)) = working_dir(name) else { continue };
        let path = root.join(name);
        // Only root's own directories: anything else is not cgdrop's to touch.
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if !meta.is_dir() || meta.uid() != 0 {
            continue;
        }
        // The cgdrop that made it holds its lock while it works on it.
        let Some(_lock) = try_lock(&path)? else { continue };
        let dir = id.map(|id| root.join(id.to_string()));
        let twin = id.map(|id| root.join(format!("old-{id}-{pid}")));
        match (kind, dir) {
            // Killed between the two renames of --replace: finish the swap.
            ("new", Some(dir)) if !dir.exists() && twin.is_some_and(|t| t.exists()) => {
                fs::rename(&path, &dir)
                    .with_context(|| format!("completing the interrupted replace of {}", dir.display()))?;
            }
            // Should the new half be gone too, the old policy is better than none.
            ("old", Some(dir)) if !dir.exists() => {
                fs::rename(&path, &dir).with_context(|| format!("restoring {}", dir.display()))?;
            }
            _ => fs::remove_dir_all(&path)
                .with_context(|| format!("removing {} (left by a killed cgdrop)", path.display()))?,
        }
    }
    Ok(())
}

/// A directory being filled; removed (with its pins) on drop unless kept.
/// Locked while this process works on it, so that recovery leaves it alone.
pub struct TempDir {
    pub path: PathBuf,
    /// Set once the directory is renamed into place.
    pub keep: bool,
    _lock: OwnedFd,
}

impl TempDir {
    pub fn create(path: PathBuf) -> Result<Self> {
        fs::DirBuilder::new().mode(0o700).create(&path).with_context(|| format!("creating {}", path.display()))?;
        let lock = try_lock(&path)?.with_context(|| format!("{} is locked by another process", path.display()))?;
        Ok(Self { path, keep: false, _lock: lock })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: the error being propagated matters more.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Pins an object (a link opened from a pin already carries a pin path,
/// which libbpf's own pin call refuses) at a second path.
pub fn obj_pin(fd: impl AsFd, path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).context("pin path contains NUL")?;
    // SAFETY: a valid fd and a NUL-terminated path that outlives the call.
    let ret = unsafe { libbpf_sys::bpf_obj_pin(fd.as_fd().as_raw_fd(), c.as_ptr()) };
    if ret < 0 {
        return Err(std::io::Error::from_raw_os_error(-ret)).with_context(|| format!("pinning {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_directory_names() {
        assert_eq!(working_dir("new-1234-99"), Some(("new", Some(1234), 99)));
        assert_eq!(working_dir("old-1234-99"), Some(("old", Some(1234), 99)));
        assert_eq!(working_dir("new-progs-7"), Some(("new", None, 7)));
        assert_eq!(working_dir("1234"), None);
        assert_eq!(working_dir("progs"), None);
        assert_eq!(working_dir("new-x-1"), None);
        assert_eq!(working_dir("tmp-1-2"), None);
    }
}
