//! Cgroup v2 discovery and handling: finds the cgroup2 mount in
//! /proc/self/mountinfo (never hard-coded: `/sys/fs/cgroup` on unified hosts,
//! `/sys/fs/cgroup/unified` on hybrid ones), resolves `--cgroup` arguments,
//! checks that the result is a cgroup v2 directory, creates it on request,
//! and empties (kills, waits, removes depth first) the cgroups it owns.
use std::{
    fs,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
    time::Instant,
};

use anyhow::{anyhow, bail, Context, Result};

use super::tree::{descendants, remove_dir_retrying};
pub use super::tree::{destroy, empty_tree, populated, KILL_TIMEOUT};
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};

/// Mount points of every cgroup2 filesystem listed in a mountinfo text, in order.
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            // Fields: id parent major:minor root mount-point options [optional…] - fstype source super-options
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_octal(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first cgroup2 mount of this mount namespace.
pub fn cgroup2_root() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_mountinfo(&text).into_iter().next().ok_or_else(|| {
        anyhow!("no cgroup2 filesystem is mounted: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) or boot with systemd.unified_cgroup_hierarchy=1")
    })
}

/// Turns a `--cgroup` argument into an absolute path: relative paths are taken
/// from `root` (the cgroup2 mount). `.` components are dropped; `..` is refused
/// so that a relative path cannot leave the cgroup2 tree.
pub fn resolve(arg: &Path, root: &Path) -> Result<PathBuf> {
    if arg.as_os_str().is_empty() {
        bail!("empty cgroup path: pass a path relative to {} or an absolute one", root.display());
    }
    let mut out = if arg.is_absolute() { PathBuf::from("/") } else { root.to_path_buf() };
    for c in arg.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                bail!("cgroup path {} contains '..': pass the path without it", arg.display())
            }
        }
    }
    Ok(out)
}

/// An open cgroup v2 directory. A cgroup cgdrop created is cgdrop's: it is
/// locked (`flock` on the directory, released by the kernel however cgdrop
/// ends) for as long as cgdrop runs, emptied before it is detached, and
/// removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    /// Canonical: symbolic links resolved, inside the cgroup2 mount.
    pub path: PathBuf,
    /// The cgroup id (the directory's inode number on cgroup2), as bpftool
    /// shows it; read from the opened directory.
    pub id: u64,
    fd: OwnedFd,
    owned: bool,
}

/// A `--cgroup` argument resolved and checked, before anything is created.
#[derive(Debug)]
pub struct Location {
    path: PathBuf,
    root: PathBuf,
    /// The directory does not exist yet and will be created by `open`.
    create: bool,
}

/// Resolves `arg` (see `resolve`) and checks it without changing anything:
/// an existing path must be a cgroup v2 directory inside the cgroup2 mount
/// once symbolic links are resolved, and not the root cgroup (every process
/// of the host) unless `whole_host`; a missing one is an error unless
/// `create`, and then its parent must be such a directory.
pub fn locate(arg: &Path, create: bool, whole_host: bool) -> Result<Location> {
    let root = cgroup2_root()?;
    let path = resolve(arg, &root)?;
    let canonical_root = fs::canonicalize(&root).with_context(|| format!("resolving {}", root.display()))?;
    let inside = |p: &Path| -> Result<PathBuf> {
        let c = fs::canonicalize(p).with_context(|| format!("resolving {}", p.display()))?;
        if !c.starts_with(&canonical_root) {
            bail!(
                "{} leads to {}, outside the cgroup2 mount {}: pass a cgroup under it",
                p.display(),
                c.display(),
                root.display()
            );
        }
        Ok(c)
    };
    if fs::symlink_metadata(&path).is_ok() {
        check_cgroup2(&path, &root)?;
        let path = inside(&path)?;
        if path == canonical_root && !whole_host {
            bail!(
                "{} is the root cgroup: a policy there applies to every process of the host (sshd included); pass --whole-host if that is what you want",
                path.display()
            );
        }
        return Ok(Location { path, root, create: false });
    }
    if !create {
        bail!("cgroup {} does not exist: create it (mkdir) or pass --create", path.display());
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        bail!("cannot create cgroup {}: pass a path below {}", path.display(), root.display());
    };
    if !parent.exists() {
        bail!("cannot create cgroup {}: its parent {} does not exist", path.display(), parent.display());
    }
    check_cgroup2(parent, &root).with_context(|| format!("cannot create cgroup {}", path.display()))?;
    let parent = inside(parent)?;
    Ok(Location { path: parent.join(name), root, create: true })
}

/// Opens a cgroup directory; returns the descriptor and the cgroup id.
fn open_dir(path: &Path) -> Result<(OwnedFd, u64)> {
    let dir = fs::File::open(path).with_context(|| format!("opening cgroup {}", path.display()))?;
    let id = dir.metadata().with_context(|| format!("reading cgroup {}", path.display()))?.ino();
    Ok((OwnedFd::from(dir), id))
}

/// Takes the lock that says a live cgdrop owns the cgroup; false if another has it.
fn try_lock(fd: &OwnedFd) -> Result<bool> {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { nix::libc::flock(fd.as_raw_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(nix::libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(err).context("locking a cgroup directory")
}

/// The prefix of the cgroups `cgdrop run` creates under the cgroup2 root.
pub const RUN_PREFIX: &str = "cgdrop-run-";

impl Cgroup {
    /// Creates the cgroup if `locate` found it missing (then it is cgdrop's,
    /// see `create_owned`), else opens it.
    pub fn open(location: Location) -> Result<Self> {
        let Location { path, root, create } = location;
        if create {
            return Self::create_owned(&path)?
                .with_context(|| format!("creating cgroup {}: another cgdrop created it first", path.display()));
        }
        check_cgroup2(&path, &root)?;
        let (fd, id) = open_dir(&path)?;
        Ok(Self { path, id, fd, owned: false })
    }

    /// `mkdir` that must not find the directory, then the owner's lock.
    /// `None` when the name was taken meanwhile (by another cgdrop, or a
    /// cleanup that removed the directory between the two steps).
    fn create_owned(path: &Path) -> Result<Option<Self>> {
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("creating cgroup {}", path.display())),
        }
        let (fd, id) = match open_dir(path) {
            Ok(opened) => opened,
            // A `cleanup` took the fresh, unlocked directory before we opened it.
            Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {
                return Ok(None)
            }
            Err(e) => {
                // Leave the system as it was; the original error is what matters.
                let _ = fs::remove_dir(path);
                return Err(e);
            }
        };
        // Locked first, then checked: a `cleanup` running meanwhile may have
        // adopted the fresh (still unlocked) directory, removed it and let go
        // of the lock. Only once the lock is ours does "the path still names
        // the directory this call made" stay true.
        if !try_lock(&fd)? {
            return Ok(None);
        }
        if !fs::metadata(path).is_ok_and(|m| m.ino() == id) {
            return Ok(None);
        }
        Ok(Some(Self { path: path.to_path_buf(), id, fd, owned: true }))
    }

    /// A fresh cgroup for `cgdrop run`: `cgdrop-run-<random>` under the
    /// cgroup2 root, a name no other cgdrop (in any PID namespace) can share.
    pub fn create_run() -> Result<Self> {
        let root = cgroup2_root()?;
        for _ in 0..16 {
            let mut bytes = [0u8; 8];
            // SAFETY: getrandom writes at most bytes.len() bytes into the buffer.
            let n = unsafe { nix::libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
            if n != bytes.len() as isize {
                return Err(std::io::Error::last_os_error()).context("reading random bytes for a cgroup name");
            }
            let path = root.join(format!("{RUN_PREFIX}{:016x}", u64::from_ne_bytes(bytes)));
            if let Some(cg) = Self::create_owned(&path)? {
                return Ok(cg);
            }
        }
        bail!("could not create a cgroup under {} with a fresh name", root.display())
    }

    /// Opens an existing cgroup and takes the owner's lock; `None` if a live
    /// cgdrop holds it (or the directory is not the cgroup `id`, when given).
    pub fn adopt(path: &Path, id: Option<u64>) -> Result<Option<Self>> {
        let (fd, found) = open_dir(path)?;
        if id.is_some_and(|id| id != found) || !try_lock(&fd)? {
            return Ok(None);
        }
        Ok(Some(Self { path: path.to_path_buf(), id: found, fd, owned: true }))
    }

    /// Whether cgdrop created the cgroup (and so empties and removes it).
    pub fn owned(&self) -> bool {
        self.owned
    }

    /// Keeps the directory on drop even if cgdrop created it (a pinned policy needs it).
    pub fn keep(&mut self) {
        self.owned = false;
    }

    /// `cgroup.procs`: writing a pid (or "0" for the writer) moves that process in.
    pub fn procs_path(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Kills every process of the cgroup and of its sub-cgroups, waits until
    /// none is left, and removes the sub-cgroups. Only for cgroups cgdrop
    /// created (`cgdrop run`, `--create`).
    pub fn kill_all(&self) -> Result<()> {
        empty_tree(&self.path, KILL_TIMEOUT)
    }

    /// Removes the (empty) cgroup now, reporting an error instead of a warning.
    pub fn remove(mut self) -> Result<()> {
        self.owned = false;
        remove_dir_retrying(&self.path, Instant::now() + KILL_TIMEOUT)
    }

    /// Whether the path still names this cgroup: false once it is removed,
    /// or removed and created again (a new cgroup, which the programs do not cover).
    pub fn still_there(&self) -> bool {
        fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.id)
    }

    /// How many processes are in the cgroup and below it.
    pub fn process_count(&self) -> usize {
        descendants(&self.path)
            .iter()
            .chain([&self.path])
            .map(|dir| fs::read_to_string(dir.join("cgroup.procs")).map_or(0, |p| p.lines().count()))
            .sum()
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Cgroup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.owned && self.still_there() {
            if let Err(e) = remove_dir_retrying(&self.path, Instant::now() + KILL_TIMEOUT) {
                crate::output::warn(format_args!(
                    "leaving cgroup {} in place: {e:#} (`cgdrop cleanup` removes it)",
                    self.path.display()
                ));
            }
        }
    }
}

/// Fails with an explanation unless `path` is a directory of a cgroup2 filesystem.
fn check_cgroup2(path: &Path, root: &Path) -> Result<()> {
    let fs = statfs(path).with_context(|| format!("cannot inspect {}", path.display()))?;
    let magic = fs.filesystem_type();
    if magic == CGROUP_SUPER_MAGIC {
        bail!(
            "{} is a cgroup v1 directory: cgdrop needs cgroup v2; use a path under {} (the cgroup2 mount)",
            path.display(),
            root.display()
        );
    }
    if magic != CGROUP2_SUPER_MAGIC {
        bail!(
            "{} is not a cgroup v2 directory: use a path under {} (the cgroup2 mount) or one relative to it",
            path.display(),
            root.display()
        );
    }
    if !path.is_dir() {
        bail!("{} is a cgroup file, not a cgroup directory: pass the directory that holds it", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const UNIFIED: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
31 24 0:27 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:5 - bpf bpf rw,mode=700
";

    #[test]
    fn mountinfo_hybrid() {
        assert_eq!(parse_mountinfo(HYBRID), vec![PathBuf::from("/sys/fs/cgroup/unified")]);
    }

    #[test]
    fn mountinfo_unified_with_optional_fields() {
        assert_eq!(parse_mountinfo(UNIFIED), vec![PathBuf::from("/sys/fs/cgroup")]);
    }

    #[test]
    fn mountinfo_without_cgroup2() {
        assert!(parse_mountinfo("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n").is_empty());
        assert!(parse_mountinfo("").is_empty());
        assert!(parse_mountinfo("garbage line\n").is_empty());
    }

    #[test]
    fn mountinfo_escaped_mount_point() {
        let text = "41 31 0:38 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(text), vec![PathBuf::from("/mnt/my cgroups")]);
    }

    #[test]
    fn resolve_relative_and_absolute() {
        let root = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(resolve(Path::new("myapp"), root).unwrap(), root.join("myapp"));
        assert_eq!(resolve(Path::new("./a/./b/"), root).unwrap(), root.join("a/b"));
        assert_eq!(
            resolve(Path::new("/sys/fs/cgroup/unified/x"), root).unwrap(),
            PathBuf::from("/sys/fs/cgroup/unified/x")
        );
    }

    #[test]
    fn resolve_refuses_parent_and_empty() {
        let root = Path::new("/sys/fs/cgroup");
        let err = resolve(Path::new("../etc"), root).unwrap_err();
        assert!(err.to_string().contains("'..'"), "{err}");
        assert!(resolve(Path::new("/sys/fs/cgroup/a/../../b"), root).is_err());
        assert!(resolve(Path::new(""), root).is_err());
    }
}
