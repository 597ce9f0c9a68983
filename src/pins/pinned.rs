//! One pinned policy: the layout of its directory
//! (`/sys/fs/bpf/cgdrop/<cgroup-id>/`: `link_<hook>`, `stats`, `rules_v4`,
//! `rules_v6`, `rodata`, `bss`, `info`), writing a loaded skeleton's maps
//! there, and reading a pinned policy back: its config, flags, health.
use std::{
    fs,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use libbpf_rs::{query::LinkTypeInfo, Link, MapCore, MapFlags, MapHandle};

use crate::{
    host::{
        cgroup::{self, Cgroup},
        target::CgroupTarget,
    },
    kernel::{
        config::{self, Config, Info},
        loader::Hook,
        rulemaps::{self, RuleMaps},
        skel::CgdropSkel,
        sockets,
    },
    pins::bpffs,
};

pub fn link_path(dir: &Path, hook: Hook) -> PathBuf {
    dir.join(format!("link_{}", hook.name()))
}

/// Pins the maps of a loaded skeleton into `dir`.
pub fn pin_maps(skel: &mut CgdropSkel<'_>, dir: &Path) -> Result<()> {
    let m = &mut skel.maps;
    for (name, map) in [
        ("stats", &mut m.cgdrop_stats),
        ("rules_v4", &mut m.cgdrop_rules_v4),
        ("rules_v6", &mut m.cgdrop_rules_v6),
        ("hosts_v4", &mut m.cgdrop_hosts_v4),
        ("sieve", &mut m.cgdrop_sieve),
        ("rodata", &mut m.rodata),
        ("bss", &mut m.bss),
        ("info", &mut m.cgdrop_info),
        ("events", &mut m.cgdrop_events),
        ("event_budget", &mut m.cgdrop_budget),
        ("rule_hits", &mut m.cgdrop_hits),
        ("owners", &mut m.cgdrop_owners),
        ("killing", &mut m.cgdrop_killing),
    ] {
        let path = dir.join(name);
        map.pin(&path).with_context(|| format!("pinning map {}", path.display()))?;
    }
    Ok(())
}

/// Records the cgroup, the target as given, the `apply` policy name (empty:
/// by hand) and this cgdrop's layout in the `info` map.
/// `first_pinned_at`: when the policy this one replaces was first pinned.
pub fn write_info(
    skel: &CgdropSkel<'_>,
    cgroup: &Cgroup,
    target: &str,
    applied_as: &str,
    first_pinned_at: Option<u64>,
) -> Result<()> {
    let pinned_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let info = Info {
        cgroup_id: cgroup.id,
        cgroup_path: cgroup.path.to_string_lossy().into_owned(),
        pinned_at,
        pinned_boot_ns: rulemaps::boot_time_ns()?,
        first_pinned_at: first_pinned_at.unwrap_or(pinned_at),
        target: target.to_string(),
        applied_as: applied_as.to_string(),
    };
    let encoded = info.encode()?;
    skel.maps
        .cgdrop_info
        .update(&0u32.to_ne_bytes(), config::info_bytes(&encoded), MapFlags::ANY)
        .context("recording the cgroup in the info map")
}

/// A pinned policy, opened from its directory.
pub struct Pinned {
    pub dir: PathBuf,
    pub id: u64,
    /// The cgroup path recorded at pin time.
    pub cgroup_path: String,
    /// The target as given at pin time (`unit nginx.service`).
    pub target: String,
    /// The `cgdrop apply` policy that pinned it; empty: pinned by hand.
    pub applied_as: String,
    pub pinned_at: u64,
    pub pinned_boot_ns: u64,
    /// When it was first pinned; differs from `pinned_at` once replaced.
    pub first_pinned_at: u64,
    pub stats: MapHandle,
    pub rules_v4: MapHandle,
    pub rules_v6: MapHandle,
    pub hosts_v4: MapHandle,
    pub sieve: MapHandle,
    pub events: MapHandle,
    pub event_budget: MapHandle,
    pub rule_hits: MapHandle,
    owners: MapHandle,
    killing: MapHandle,
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
    /// The .bss flags hide rules that are in the tries.
    Inconsistent(&'static str),
    /// The `--iface` interface was removed or renumbered: the policy matches nothing.
    InterfaceGone(String),
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Ok => f.write_str("ok"),
            Health::Defunct => f.write_str("defunct (cgroup removed; `cgdrop unpin` cleans it)"),
            Health::Incomplete(missing) => write!(f, "incomplete (not attached: {})", missing.join(", ")),
            Health::Inconsistent(why) => write!(f, "inconsistent ({why}; `cgdrop pin --replace` rewrites them)"),
            Health::InterfaceGone(why) => write!(f, "not applied ({why}; `cgdrop pin --replace` names it again)"),
        }
    }
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
        let info = Info::decode(&raw).with_context(|| format!("cannot read the policy in {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            id,
            cgroup_path: info.cgroup_path,
            target: info.target,
            applied_as: info.applied_as,
            pinned_at: info.pinned_at,
            pinned_boot_ns: info.pinned_boot_ns,
            first_pinned_at: info.first_pinned_at,
            stats: open_map(dir, "stats")?,
            rules_v4: open_map(dir, "rules_v4")?,
            rules_v6: open_map(dir, "rules_v6")?,
            hosts_v4: open_map(dir, "hosts_v4")?,
            sieve: open_map(dir, "sieve")?,
            events: open_map(dir, "events")?,
            event_budget: open_map(dir, "event_budget")?,
            rule_hits: open_map(dir, "rule_hits")?,
            owners: open_map(dir, "owners")?,
            killing: open_map(dir, "killing")?,
            rodata: open_map(dir, "rodata")?,
            bss: open_map(dir, "bss")?,
        })
    }

    /// Every pinned policy, by cgroup id. No bpffs or no cgdrop directory: none.
    pub fn list() -> Result<Vec<Self>> {
        let root = bpffs::cgdrop_root();
        bpffs::recover(&root)?;
        let Ok(entries) = fs::read_dir(&root) else { return Ok(Vec::new()) };
        let mut dirs: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()).map(|id| (id, e.path())))
            .collect();
        dirs.sort();
        // One unreadable policy (pinned by a cgdrop of another layout) must
        // not hide the others: it is named, and skipped.
        Ok(dirs
            .into_iter()
            .filter_map(|(_, dir)| match Self::open(&dir) {
                Ok(p) => Some(p),
                Err(e) => {
                    crate::say!("cgdrop: skipping {}: {e:#}", dir.display());
                    None
                }
            })
            .collect())
    }

    /// The pinned policy of the cgroup `arg` names: by its id while it exists,
    /// by the recorded path once it is gone.
    pub fn find(arg: &Path) -> Result<Self> {
        let root = cgroup::cgroup2_root()?;
        let path = cgroup::resolve(arg, &root)?;
        if let Ok(meta) = fs::metadata(&path) {
            let dir = bpffs::cgdrop_root().join(meta.ino().to_string());
            if dir.exists() {
                return Self::open(&dir);
            }
        } else if let Some(p) = Self::list()?.into_iter().find(|p| Path::new(&p.cgroup_path) == path) {
            return Ok(p);
        }
        bail!("no cgdrop policy is pinned on cgroup {} (`cgdrop status` lists them)", path.display())
    }

    /// The pinned policy of a target; one whose cgroup is gone (a stopped
    /// unit, a removed container) is found by the target recorded with it.
    pub fn find_target(target: &CgroupTarget) -> Result<Self> {
        match target.resolve() {
            Ok(path) => Self::find(&path),
            Err(e) => {
                let recorded = target.to_string();
                Self::list()?.into_iter().find(|p| p.target == recorded).ok_or(e)
            }
        }
    }

    /// How long ago it was pinned, by the boot-time clock.
    pub fn pinned_for_secs(&self) -> Result<u64> {
        Ok(rulemaps::boot_time_ns()?.saturating_sub(self.pinned_boot_ns) / 1_000_000_000)
    }

    /// The configuration the policy was loaded with (its rodata).
    pub fn config(&self) -> Result<Config> {
        Config::from_rodata(&self.lookup(&self.rodata, "rodata")?)
            .with_context(|| format!("reading {}/rodata", self.dir.display()))
    }

    /// The one value of a one-entry map of this policy.
    fn lookup(&self, map: &MapHandle, name: &str) -> Result<Vec<u8>> {
        map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("reading {}/{name}", self.dir.display()))?
            .with_context(|| format!("{}/{name} is empty", self.dir.display()))
    }

    /// The cgroup's connections this policy drops that are open (made before
    /// it); with `kill`, closed (see `kernel::sockets`).
    pub fn sockets(&self, kill: bool) -> Result<Vec<sockets::Conn>> {
        let b = self.bss()?;
        let shared = sockets::Shared {
            rules_v4: self.rules_v4.as_fd(),
            rules_v6: self.rules_v6.as_fd(),
            hosts_v4: self.hosts_v4.as_fd(),
            sieve: self.sieve.as_fd(),
            owners: self.owners.as_fd(),
            killing: self.killing.as_fd(),
            has_rules: b.has_rules,
            has_port_rules: b.has_port_rules,
            unmatched_pass: b.unmatched_pass,
        };
        sockets::scan(&self.config()?, &shared, self.id, kill)
    }

    fn bss(&self) -> Result<crate::kernel::skel::types::bss> {
        config::decode_bss(&self.lookup(&self.bss, "bss")?)
            .with_context(|| format!("reading {}/bss", self.dir.display()))
    }

    /// Whether traffic no rule matches passes (a block list) or is dropped.
    pub fn unmatched_pass(&self) -> Result<bool> {
        Ok(self.bss()?.unmatched_pass != 0)
    }

    /// Before a rule is added: makes the programs look rules up (and, for a
    /// rule with a port, look up with the port). Never lowered here: a flag
    /// that is set only costs a lookup.
    pub fn enable_lookups(&self, with_port: bool) -> Result<()> {
        let mut b = self.bss()?;
        b.has_rules = 1;
        b.has_port_rules |= u32::from(with_port);
        self.bss
            .update(&0u32.to_ne_bytes(), config::encode_bss(&b), MapFlags::ANY)
            .with_context(|| format!("writing {}/bss", self.dir.display()))
    }

    /// The policy's rules: its tries, host table and sieve.
    pub fn rule_maps(&self) -> RuleMaps<'_, MapHandle> {
        RuleMaps { v4: &self.rules_v4, v6: &self.rules_v6, hosts_v4: &self.hosts_v4, sieve: &self.sieve }
    }

    pub fn health(&self) -> Result<Health> {
        let c = self.config()?;
        let mut missing = Vec::new();
        // The kernel clears a link's cgroup some time after the cgroup is
        // removed; the directory being gone (or reused) tells at once.
        let same_cgroup = fs::metadata(&self.cgroup_path).is_ok_and(|m| m.ino() == self.id);
        let mut defunct = !same_cgroup;
        for hook in Hook::wanted(c.ingress || c.no_new_inbound, c.egress, c.silent, c.events_per_cpu > 0) {
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
        } else if let Some(gone) = interface_gone(&c) {
            Health::InterfaceGone(gone)
        } else if !missing.is_empty() {
            Health::Incomplete(missing)
        } else if let Some(wrong) = self.flags_disagree()? {
            Health::Inconsistent(wrong)
        } else {
            Health::Ok
        })
    }

    /// Whether the .bss flags and the sieve let the programs see every rule
    /// in the tries: a lookup skipped for a flag that is 0, or a bit that is
    /// not set, ignores rules that are there.
    fn flags_disagree(&self) -> Result<Option<&'static str>> {
        let b = self.bss()?;
        let maps = self.rule_maps();
        let rules = maps.read_all()?;
        Ok(if b.has_rules == 0 && !rules.entries.is_empty() {
            Some("has_rules is 0 while rules are in the tries")
        } else if b.has_port_rules == 0 && rules.entries.iter().any(|e| e.target.port != 0) {
            Some("has_port_rules is 0 while port rules are in the tries")
        } else if !maps.sieve_covers(&rules)? {
            Some("the rule sieve misses rules that are in the tries")
        } else {
            None
        })
    }

    /// Serialises changes to this policy (`rule add|del`, `pin --replace`,
    /// `unpin`): `flock` on its directory, released when the guard drops.
    pub fn lock(&self) -> Result<OwnedFd> {
        lock_dir(&self.dir)
    }
}

/// Why an `--iface` policy no longer matches its interface, when this
/// process is in the network namespace where it was named (elsewhere the
/// names mean other interfaces, and nothing can be told).
pub fn interface_gone(c: &Config) -> Option<String> {
    let name = c.iface.as_deref()?;
    if c.ifindex == 0 || (c.netns_cookie != 0 && config::netns_cookie() != Some(c.netns_cookie)) {
        return None;
    }
    match nix::net::if_::if_nametoindex(name) {
        Err(_) => Some(format!("interface {name} is gone")),
        Ok(now) if now != c.ifindex => {
            Some(format!("interface {name} is now index {now}, the policy matches {}", c.ifindex))
        }
        Ok(_) => None,
    }
}

/// An exclusive `flock` on a directory opened without following a symlink;
/// waits for the holder.
pub fn lock_dir(dir: &Path) -> Result<OwnedFd> {
    let fd = bpffs::open_dir_nofollow(dir)?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { nix::libc::flock(fd.as_raw_fd(), nix::libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("locking {}", dir.display()));
    }
    Ok(fd)
}
