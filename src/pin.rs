//! Persistent policies under bpffs. One directory per cgroup,
//! `/sys/fs/bpf/cgdrop/<cgroup-id>/` (mode 0700), holds the pinned links
//! (`link_<hook>`: they keep the programs attached after cgdrop exits) and the
//! maps (`stats`, `rules_v4`, `rules_v6`, `rodata`, `bss`, `info`). A policy
//! directory is built under a temporary name and renamed into place, so it is
//! complete or absent. `pin --programs` pins bare programs under `progs/`.
use std::{
    ffi::CString,
    fs,
    mem::MaybeUninit,
    os::{
        fd::{AsFd, AsRawFd},
        unix::{ffi::OsStrExt, fs::DirBuilderExt, fs::PermissionsExt},
    },
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use libbpf_rs::{query::LinkTypeInfo, Link, MapCore, MapFlags, MapHandle, OpenObject};
use nix::{
    mount::{mount, MsFlags},
    sys::statfs::statfs,
};

use crate::{
    cgroup::{self, Cgroup},
    cli::PinArgs,
    loader::{self, Hook},
    policy::Policy,
    preflight,
    rulemaps::Installed,
    skel::{
        types::{bss, cgdrop_direction, cgdrop_info, cgdrop_mode, rodata},
        CgdropSkel,
    },
};

pub const BPFFS: &str = "/sys/fs/bpf";
/// statfs(2) f_type of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

// SAFETY: three u32 generated from BTF; any bit pattern is valid, no padding.
unsafe impl plain::Plain for bss {}
// SAFETY: integers and an i8 array generated from BTF; any bit pattern is valid.
unsafe impl plain::Plain for cgdrop_info {}
// SAFETY: integers and u32 newtypes generated from BTF; any bit pattern is
// valid. Only ever read from bytes (its padding is never exposed).
unsafe impl plain::Plain for rodata {}

/// `/sys/fs/bpf/cgdrop`: everything cgdrop pins is below it.
pub fn cgdrop_root() -> PathBuf {
    Path::new(BPFFS).join("cgdrop")
}

/// Refuses a cgdrop bpffs directory that is a symbolic link: cgdrop changes
/// permissions and removes entries there, and must never do so elsewhere.
fn check_not_symlink(root: &Path) -> Result<()> {
    match fs::symlink_metadata(root) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("{} is a symbolic link: refusing to follow it out of bpffs; remove it", root.display())
        }
        _ => Ok(()),
    }
}

/// Where `pin --programs` puts bare programs.
pub fn programs_dir() -> PathBuf {
    cgdrop_root().join("progs")
}

/// Mounts bpffs at /sys/fs/bpf if something else is there, and creates
/// /sys/fs/bpf/cgdrop (0700: pins hold the policy and its counters).
fn prepare_root() -> Result<PathBuf> {
    let fs = statfs(BPFFS).with_context(|| format!("cannot inspect {BPFFS}"))?;
    if fs.filesystem_type().0 != BPF_FS_MAGIC {
        mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .with_context(|| format!("mounting bpffs at {BPFFS} (mount -t bpf bpf {BPFFS})"))?;
        eprintln!("cgdrop: mounted bpffs at {BPFFS} (it was not mounted)");
    }
    let root = cgdrop_root();
    check_not_symlink(&root)?;
    if !root.exists() {
        fs::DirBuilder::new().mode(0o700).create(&root).with_context(|| format!("creating {}", root.display()))?;
    }
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to root", root.display()))?;
    recover(&root)?;
    Ok(root)
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
fn recover(root: &Path) -> Result<()> {
    check_not_symlink(root)?;
    let alive = |pid: i32| Path::new(&format!("/proc/{pid}")).exists();
    let Ok(entries) = fs::read_dir(root) else { return Ok(()) };
    let mut names: Vec<String> =
        entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
    // `new-…` before `old-…`: an interrupted swap is completed from its new half.
    names.sort();
    for name in &names {
        let Some((kind, id, pid)) = working_dir(name) else { continue };
        let path = root.join(name);
        if alive(pid) || !path.exists() {
            continue;
        }
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
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn create(path: PathBuf) -> Result<Self> {
        fs::DirBuilder::new().mode(0o700).create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep: false })
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
fn obj_pin(fd: impl AsFd, path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).context("pin path contains NUL")?;
    // SAFETY: a valid fd and a NUL-terminated path that outlives the call.
    let ret = unsafe { libbpf_sys::bpf_obj_pin(fd.as_fd().as_raw_fd(), c.as_ptr()) };
    if ret < 0 {
        return Err(std::io::Error::from_raw_os_error(-ret)).with_context(|| format!("pinning {}", path.display()));
    }
    Ok(())
}

fn link_path(dir: &Path, hook: Hook) -> PathBuf {
    dir.join(format!("link_{}", hook.name()))
}

/// Pins the maps of a loaded skeleton into `dir`.
fn pin_maps(skel: &mut CgdropSkel<'_>, dir: &Path) -> Result<()> {
    let m = &mut skel.maps;
    for (name, map) in [
        ("stats", &mut m.stats),
        ("rules_v4", &mut m.rules_v4),
        ("rules_v6", &mut m.rules_v6),
        ("rodata", &mut m.rodata),
        ("bss", &mut m.bss),
        ("info", &mut m.info),
    ] {
        let path = dir.join(name);
        map.pin(&path).with_context(|| format!("pinning map {}", path.display()))?;
    }
    Ok(())
}

/// Records the cgroup in the `info` map.
fn write_info(skel: &CgdropSkel<'_>, cgroup: &Cgroup) -> Result<()> {
    let path = cgroup.path.as_os_str().as_bytes();
    let mut info = cgdrop_info { cgroup_id: cgroup.id, ..Default::default() };
    if path.len() >= info.cgroup_path.len() {
        bail!(
            "cgroup path {} is longer than the {} bytes a pinned policy records",
            cgroup.path.display(),
            info.cgroup_path.len() - 1
        );
    }
    for (dst, src) in info.cgroup_path.iter_mut().zip(path) {
        *dst = *src as i8;
    }
    info.pinned_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // SAFETY: Plain, no uninitialised bytes: u64, u64, then an i8 array.
    let bytes = unsafe { plain::as_bytes(&info) };
    skel.maps.info.update(&0u32.to_ne_bytes(), bytes, MapFlags::ANY).context("recording the cgroup in the info map")
}

/// `cgdrop pin`: attach and pin, or replace a pinned policy in place.
pub fn pin(args: &PinArgs, verbose: bool) -> Result<()> {
    let policy = Policy::from_args(&args.policy)?;
    if args.programs {
        preflight::check()?;
        loader::set_verbose(verbose);
        return pin_programs(&policy);
    }
    let arg = args.cgroup.as_deref().context("--cgroup or --programs is required")?;
    let location = cgroup::locate(arg, args.create)?;
    preflight::check()?;
    loader::set_verbose(verbose);
    let root = prepare_root()?;
    let mut cgroup = Cgroup::open(location)?;
    let dir = root.join(cgroup.id.to_string());
    let existing = dir.exists();
    if existing && !args.replace {
        bail!(
            "cgroup {} already has a pinned cgdrop policy ({}): pass --replace to swap it, or `cgdrop unpin --cgroup {}` first",
            cgroup.path.display(),
            dir.display(),
            cgroup.path.display()
        );
    }

    let mut object = MaybeUninit::<OpenObject>::uninit();
    let mut skel = loader::load(&policy, &mut object)?;
    loader::apply_rules(&mut skel, &mut Installed::new(), &policy)?;
    write_info(&skel, &cgroup)?;
    let tmp = TempDir::create(root.join(format!("new-{}-{}", cgroup.id, std::process::id())))?;
    if existing {
        replace_into(&mut skel, &cgroup, &policy, tmp, &dir)?;
    } else {
        pin_fresh(&mut skel, &cgroup, &policy, tmp, &dir)?;
    }
    // Pinned: the cgroup stays even if this run created it.
    cgroup.keep();
    eprintln!(
        "cgdrop: {} cgroup {} (id {}): dropping {}; pinned at {}",
        if existing { "replaced the policy of" } else { "pinned a policy on" },
        cgroup.path.display(),
        cgroup.id,
        policy.describe(),
        dir.display()
    );
    Ok(())
}

fn pin_fresh(skel: &mut CgdropSkel<'_>, cgroup: &Cgroup, policy: &Policy, mut tmp: TempDir, dir: &Path) -> Result<()> {
    // Attached from here on; until the pins exist, the fds alone hold the links,
    // so an error or a kill detaches everything.
    let mut links = loader::attach(skel, cgroup, policy)?;
    pin_maps(skel, &tmp.path)?;
    for (hook, link) in &mut links {
        let path = link_path(&tmp.path, *hook);
        link.pin(&path).with_context(|| format!("pinning link {}", path.display()))?;
    }
    fs::rename(&tmp.path, dir).with_context(|| format!("moving {} to {}", tmp.path.display(), dir.display()))?;
    tmp.keep = true;
    Ok(())
}

/// Swaps the programs of the existing links (bpf_link update: atomic per
/// hook, so no packet meets no program), attaches hooks the new policy adds,
/// and detaches those it drops once the new directory is in place.
fn replace_into(
    skel: &mut CgdropSkel<'_>,
    cgroup: &Cgroup,
    policy: &Policy,
    mut tmp: TempDir,
    dir: &Path,
) -> Result<()> {
    let mut old: Vec<(Hook, Link)> = Vec::new();
    for hook in Hook::ALL {
        let path = link_path(dir, hook);
        if path.exists() {
            old.push((hook, Link::open(&path).with_context(|| format!("opening pinned link {}", path.display()))?));
        }
    }
    pin_maps(skel, &tmp.path)?;
    let mut added = Vec::new();
    for hook in Hook::for_policy(policy) {
        let path = link_path(&tmp.path, hook);
        match old.iter_mut().find(|(h, _)| *h == hook) {
            Some((_, link)) => {
                link.update_prog(hook.program(skel)).with_context(|| {
                    format!("replacing the program of {} on {}", hook.name(), cgroup.path.display())
                })?;
                obj_pin(&*link, &path)?;
            }
            None => {
                let mut link = loader::attach_hook(skel, hook, cgroup)?;
                link.pin(&path).with_context(|| format!("pinning link {}", path.display()))?;
                added.push(link);
            }
        }
    }
    let retired = dir.with_file_name(format!("old-{}-{}", cgroup.id, std::process::id()));
    fs::rename(dir, &retired).with_context(|| format!("moving {} aside", dir.display()))?;
    fs::rename(&tmp.path, dir).with_context(|| format!("moving {} to {}", tmp.path.display(), dir.display()))?;
    tmp.keep = true;
    // Hooks the new policy does not use lose their last pin here, and their
    // last fd when `old` is dropped: the kernel detaches them.
    fs::remove_dir_all(&retired).with_context(|| format!("removing {}", retired.display()))
}

/// `pin --programs`: loads the programs for `policy` and pins each under
/// /sys/fs/bpf/cgdrop/progs/<hook> (and the maps beside them), attaching nothing.
fn pin_programs(policy: &Policy) -> Result<()> {
    let root = prepare_root()?;
    let dir = programs_dir();
    if dir.exists() {
        bail!("{} already exists: `cgdrop unpin --all` removes it", dir.display());
    }
    let mut object = MaybeUninit::<OpenObject>::uninit();
    let mut skel = loader::load(policy, &mut object)?;
    loader::apply_rules(&mut skel, &mut Installed::new(), policy)?;
    let mut tmp = TempDir::create(root.join(format!("new-progs-{}", std::process::id())))?;
    pin_maps(&mut skel, &tmp.path)?;
    for hook in Hook::ALL {
        let path = tmp.path.join(hook.name());
        obj_pin(hook.program(&skel).as_fd(), &path)?;
    }
    fs::rename(&tmp.path, &dir).with_context(|| format!("moving {} to {}", tmp.path.display(), dir.display()))?;
    tmp.keep = true;
    eprintln!(
        "cgdrop: pinned programs for {} in {} (attach: bpftool cgroup attach CGROUP egress pinned {}/egress)",
        policy.describe(),
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// A pinned policy, opened from its directory.
pub struct Pinned {
    pub dir: PathBuf,
    pub id: u64,
    /// The cgroup path recorded at pin time.
    pub cgroup_path: String,
    pub pinned_at: u64,
    pub stats: MapHandle,
    pub rules_v4: MapHandle,
    pub rules_v6: MapHandle,
    rodata: MapHandle,
    bss: MapHandle,
}

/// Whether a pinned policy does what it was pinned for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Every hook of the policy is attached to its cgroup.
    Ok,
    /// The cgroup was removed: the links point nowhere (cgroup id 0).
    Defunct,
    /// Some hooks of the policy have no pinned link.
    Incomplete(Vec<&'static str>),
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Ok => f.write_str("ok"),
            Health::Defunct => f.write_str("defunct (cgroup removed; `cgdrop unpin` cleans it)"),
            Health::Incomplete(missing) => write!(f, "incomplete (not attached: {})", missing.join(", ")),
        }
    }
}

/// The configuration a pinned policy was loaded with (its rodata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub ingress: bool,
    pub egress: bool,
    pub ifindex: u32,
    pub port: u16,
    pub silent: bool,
    pub dry_run: bool,
}

fn open_map(dir: &Path, name: &str) -> Result<MapHandle> {
    let path = dir.join(name);
    MapHandle::from_pinned_path(&path).with_context(|| format!("opening pinned map {}", path.display()))
}

impl Pinned {
    pub fn open(dir: &Path) -> Result<Self> {
        let id = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{} is not a policy directory", dir.display()))?;
        let info_map = open_map(dir, "info")?;
        let raw = info_map
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("reading {}/info", dir.display()))?
            .with_context(|| format!("{}/info is empty", dir.display()))?;
        let mut info = cgdrop_info::default();
        plain::copy_from_bytes(&mut info, &raw)
            .map_err(|_| anyhow::anyhow!("{}/info has the wrong size", dir.display()))?;
        let path_bytes: Vec<u8> = info.cgroup_path.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            id,
            cgroup_path: String::from_utf8_lossy(&path_bytes).into_owned(),
            pinned_at: info.pinned_at,
            stats: open_map(dir, "stats")?,
            rules_v4: open_map(dir, "rules_v4")?,
            rules_v6: open_map(dir, "rules_v6")?,
            rodata: open_map(dir, "rodata")?,
            bss: open_map(dir, "bss")?,
        })
    }

    /// Every pinned policy, by cgroup id. No bpffs or no cgdrop directory: none.
    pub fn list() -> Result<Vec<Self>> {
        let root = cgdrop_root();
        recover(&root)?;
        let Ok(entries) = fs::read_dir(&root) else { return Ok(Vec::new()) };
        let mut dirs: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()).map(|id| (id, e.path())))
            .collect();
        dirs.sort();
        dirs.into_iter().map(|(_, dir)| Self::open(&dir)).collect()
    }

    /// The pinned policy of the cgroup `arg` names: by its id while it exists,
    /// by the recorded path once it is gone.
    pub fn find(arg: &Path) -> Result<Self> {
        let root = cgroup::cgroup2_root()?;
        let path = cgroup::resolve(arg, &root)?;
        if let Ok(meta) = fs::metadata(&path) {
            let dir = cgdrop_root().join(std::os::unix::fs::MetadataExt::ino(&meta).to_string());
            if dir.exists() {
                return Self::open(&dir);
            }
        } else if let Some(p) = Self::list()?.into_iter().find(|p| Path::new(&p.cgroup_path) == path) {
            return Ok(p);
        }
        bail!("no cgdrop policy is pinned on cgroup {} (`cgdrop status` lists them)", path.display())
    }

    pub fn config(&self) -> Result<Config> {
        let raw = self
            .rodata
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("reading {}/rodata", self.dir.display()))?
            .with_context(|| format!("{}/rodata is empty", self.dir.display()))?;
        // SAFETY: all-zero bytes are a valid rodata (integers and u32 newtypes).
        let mut r: rodata = unsafe { std::mem::zeroed() };
        plain::copy_from_bytes(&mut r, &raw)
            .map_err(|_| anyhow::anyhow!("{}/rodata has the wrong size", self.dir.display()))?;
        let dirs = r.cfg_directions.0;
        let modes = r.cfg_modes.0;
        Ok(Config {
            ingress: dirs & cgdrop_direction::CGDROP_DIR_INGRESS.0 != 0,
            egress: dirs & cgdrop_direction::CGDROP_DIR_EGRESS.0 != 0,
            ifindex: r.cfg_ifindex,
            port: r.cfg_port,
            silent: modes & cgdrop_mode::CGDROP_MODE_SILENT.0 != 0,
            dry_run: modes & cgdrop_mode::CGDROP_MODE_DRY_RUN.0 != 0,
        })
    }

    /// Whether traffic no rule matches passes (a block list) or is dropped.
    pub fn unmatched_pass(&self) -> Result<bool> {
        let raw = self
            .bss
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("reading {}/bss", self.dir.display()))?
            .with_context(|| format!("{}/bss is empty", self.dir.display()))?;
        let word: [u8; 4] = raw.get(..4).and_then(|b| b.try_into().ok()).context("bss too short")?;
        Ok(u32::from_ne_bytes(word) != 0)
    }

    /// Before a rule is added: makes the programs look rules up (and, for a
    /// rule with a port, look up with the port). Never lowered here: a flag
    /// that is set only costs a lookup.
    pub fn enable_lookups(&self, with_port: bool) -> Result<()> {
        let key = 0u32.to_ne_bytes();
        let raw =
            self.bss.lookup(&key, MapFlags::ANY)?.with_context(|| format!("{}/bss is empty", self.dir.display()))?;
        let mut b = bss { unmatched_pass: 0, has_rules: 0, has_port_rules: 0 };
        plain::copy_from_bytes(&mut b, &raw)
            .map_err(|_| anyhow::anyhow!("{}/bss has the wrong size", self.dir.display()))?;
        b.has_rules = 1;
        b.has_port_rules |= u32::from(with_port);
        // SAFETY: bss is three u32: no padding.
        let bytes = unsafe { plain::as_bytes(&b) };
        self.bss.update(&key, bytes, MapFlags::ANY).with_context(|| format!("writing {}/bss", self.dir.display()))
    }

    pub fn health(&self) -> Result<Health> {
        let c = self.config()?;
        let mut missing = Vec::new();
        // The kernel clears a link's cgroup some time after the cgroup is
        // removed; the directory being gone (or reused) tells at once.
        let same_cgroup =
            fs::metadata(&self.cgroup_path).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == self.id);
        let mut defunct = !same_cgroup;
        for hook in Hook::wanted(c.ingress, c.egress, c.silent) {
            let path = link_path(&self.dir, hook);
            let Ok(link) = Link::open(&path) else {
                missing.push(hook.name());
                continue;
            };
            if let Ok(info) = link.info() {
                if let LinkTypeInfo::Cgroup(cg) = info.info {
                    defunct |= cg.cgroup_id == 0;
                }
            }
        }
        Ok(if defunct {
            Health::Defunct
        } else if missing.is_empty() {
            Health::Ok
        } else {
            Health::Incomplete(missing)
        })
    }
}

/// `cgdrop unpin`: removes one policy directory, or all of cgdrop's pins.
pub fn unpin(cgroup: Option<&Path>, all: bool) -> Result<()> {
    preflight::check()?;
    recover(&cgdrop_root())?;
    if all {
        let root = cgdrop_root();
        if !root.exists() {
            eprintln!("cgdrop: nothing is pinned ({} does not exist)", root.display());
            return Ok(());
        }
        let mut n = 0;
        for entry in fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))? {
            let path = entry.with_context(|| format!("listing {}", root.display()))?.path();
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            n += 1;
        }
        fs::remove_dir(&root).with_context(|| format!("removing {}", root.display()))?;
        eprintln!("cgdrop: removed {n} pinned director{} and {}", if n == 1 { "y" } else { "ies" }, root.display());
        return Ok(());
    }
    let arg = cgroup.context("--cgroup or --all is required")?;
    let pinned = Pinned::find(arg)?;
    let dir = pinned.dir.clone();
    let path = pinned.cgroup_path.clone();
    drop(pinned);
    // Unlinking the link pins detaches the programs: nothing else holds them.
    fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    eprintln!("cgdrop: unpinned the policy of cgroup {path} ({})", dir.display());
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
