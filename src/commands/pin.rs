//! `cgdrop pin` (attach and pin, `--replace` in place, `--programs`) and
//! `cgdrop unpin`.
use std::{fs, os::fd::AsFd, path::Path};

use anyhow::{bail, Context, Result};
use libbpf_rs::Link;

use crate::{
    cli::PinArgs,
    host::{
        cgroup::{self, Cgroup},
        preflight,
        target::CgroupTarget,
    },
    kernel::{
        loader::{self, Hook},
        rulemaps::{self, Entry, Installed, RuleMaps},
        skel::CgdropSkel,
    },
    output,
    pins::{
        bpffs::{self, obj_pin, TempDir},
        pinned::{link_path, lock_dir, pin_maps, write_info, Pinned},
        runs,
    },
    policy::Policy,
};

/// `cgdrop pin`: attach and pin, or replace a pinned policy in place.
pub fn pin(args: &PinArgs, verbose: bool) -> Result<()> {
    let policy = Policy::from_args(&args.policy)?;
    if args.programs {
        preflight::check()?;
        loader::set_verbose(verbose);
        return pin_programs(&policy);
    }
    let target = args.target.required()?;
    let location = cgroup::locate(&target.resolve()?, args.create, args.whole_host)?;
    preflight::check()?;
    loader::set_verbose(verbose);
    let origin = Origin { target: target.to_string(), applied_as: String::new(), keep_live_rules: true };
    let pinned = pin_on(&policy, location, args.replace, &origin)?;
    crate::say!(
        "cgdrop: {} cgroup {} (id {}{}): dropping {}; pinned at {}",
        if pinned.replaced { "replaced the policy of" } else { "pinned a policy on" },
        pinned.cgroup_path.display(),
        pinned.cgroup_id,
        match &target {
            CgroupTarget::Cgroup(_) => String::new(),
            other => format!(", {other}"),
        },
        output::describe(&policy),
        pinned.dir.display()
    );
    existing_connections(&pinned.dir, &policy);
    Ok(())
}

/// After a policy is pinned: closes (`--kill-existing`) or counts the
/// cgroup's connections it drops that were open before it, and says so.
pub fn existing_connections(dir: &Path, policy: &Policy) {
    let result = Pinned::open(dir).and_then(|p| p.sockets(policy.kill_existing));
    if let Some(line) = crate::kernel::sockets::describe(&result, policy.kill_existing, policy.dry_run) {
        crate::say!("{line}");
    }
}

/// What a pinned policy records about who pinned it, and whether `rule add`
/// rules of the policy it replaces survive.
pub struct Origin {
    /// The target as given (`CgroupTarget::recorded`).
    pub target: String,
    /// The `cgdrop apply` policy name; empty for `cgdrop pin`.
    pub applied_as: String,
    pub keep_live_rules: bool,
}

/// Where a policy was pinned.
pub struct PinnedAt {
    pub cgroup_path: std::path::PathBuf,
    pub cgroup_id: u64,
    pub dir: std::path::PathBuf,
    pub replaced: bool,
}

/// Attaches `policy` to the cgroup at `location` and pins it; with `replace`,
/// an existing pinned policy there is swapped in place (no gap).
pub fn pin_on(policy: &Policy, location: cgroup::Location, replace: bool, origin: &Origin) -> Result<PinnedAt> {
    let root = bpffs::prepare_root()?;
    let mut cgroup = Cgroup::open(location)?;
    let dir = root.join(cgroup.id.to_string());
    let existing = dir.exists();
    if existing && !replace {
        bail!(
            "cgroup {} already has a pinned cgdrop policy ({}): pass --replace to swap it, or `cgdrop unpin --cgroup {}` first",
            cgroup.path.display(),
            dir.display(),
            cgroup.path.display()
        );
    }

    // Changes to one policy are serialised (see `Pinned::lock`).
    let _lock = if existing { Some(lock_dir(&dir)?) } else { None };
    let mut object = loader::Objects::new();
    // A pinned policy's rules change live (`cgdrop rule`).
    let mut skel = loader::load(policy, &mut object, true)?;
    let mut installed = Installed::new();
    loader::apply_rules(&mut skel, &mut installed, policy)?;
    let carried = if existing && origin.keep_live_rules { carry_live_rules(&mut skel, &installed, &dir)? } else { 0 };
    let first = if existing { Pinned::open(&dir).ok().map(|p| p.first_pinned_at) } else { None };
    write_info(&skel, &cgroup, &origin.target, &origin.applied_as, first)?;
    let tmp = TempDir::create(root.join(format!("new-{}-{}", cgroup.id, std::process::id())))?;
    if existing {
        replace_into(&mut skel, &cgroup, policy, tmp, &dir)?;
        if carried > 0 {
            crate::say!("cgdrop: carried over {carried} rule(s) added with `cgdrop rule add` (with their expiries)");
        }
    } else {
        pin_fresh(&mut skel, &cgroup, policy, tmp, &dir)?;
    }
    // Pinned: the cgroup stays even if this run created it.
    cgroup.keep();
    Ok(PinnedAt { cgroup_path: cgroup.path.clone(), cgroup_id: cgroup.id, dir, replaced: existing })
}

/// Writes the live rules of the pinned policy in `dir` (added with `rule
/// add`, not expired) into the new skeleton, unless the new policy has a rule
/// for the same target (the new policy wins). Returns how many.
fn carry_live_rules(skel: &mut CgdropSkel<'_>, new: &Installed, dir: &Path) -> Result<usize> {
    let old = Pinned::open(dir)?;
    let now_ns = rulemaps::boot_time_ns()?;
    let carried: Vec<Entry> = old
        .rule_maps()
        .read_all()?
        .entries
        .into_iter()
        .filter(|e| e.live && (e.expires_ns == 0 || e.expires_ns > now_ns))
        .filter(|e| new.entries.binary_search_by_key(&e.target, |n| n.target).is_err())
        .collect();
    let maps = RuleMaps {
        v4: &skel.maps.cgdrop_rules_v4,
        v6: &skel.maps.cgdrop_rules_v6,
        hosts_v4: &skel.maps.cgdrop_hosts_v4,
        sieve: &skel.maps.cgdrop_sieve,
    };
    for e in &carried {
        maps.put(e)?;
    }
    let bss = skel.maps.bss_data.as_deref_mut().context("the BPF object has no .bss section")?;
    bss.has_rules |= u32::from(!carried.is_empty());
    bss.has_port_rules |= u32::from(carried.iter().any(|e| e.target.port != 0));
    Ok(carried.len())
}

fn pin_fresh(
    skel: &mut loader::Loaded<'_>,
    cgroup: &Cgroup,
    policy: &Policy,
    mut tmp: TempDir,
    dir: &Path,
) -> Result<()> {
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
    skel: &mut loader::Loaded<'_>,
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
    let dir = bpffs::programs_dir();
    pin_programs_into(policy, &dir)?;
    crate::say!(
        "cgdrop: pinned programs for {} in {} (attach with BPF_F_ALLOW_MULTI, as cgdrop does, or cgdrop cannot attach there later: bpftool cgroup attach CGROUP egress pinned {}/egress multi)",
        output::describe(policy),
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Loads the programs for `policy` and pins them (and the maps) in `dir`
/// under the names of their hooks, attaching nothing; returns the hooks the
/// policy needs. `dir` appears whole or not at all.
pub fn pin_programs_into(policy: &Policy, dir: &Path) -> Result<Vec<Hook>> {
    let root = bpffs::prepare_root()?;
    if dir.exists() {
        bail!("{} already exists: `cgdrop unpin --all` removes it", dir.display());
    }
    let mut object = loader::Objects::new();
    // Every program: all of them are pinned, for attaching by hand.
    let mut skel = loader::load_programs(policy, &mut object, &Hook::ALL, true)?;
    loader::apply_rules(&mut skel, &mut Installed::new(), policy)?;
    let mut tmp = TempDir::create(root.join(format!("new-progs-{}", std::process::id())))?;
    pin_maps(&mut skel, &tmp.path)?;
    for hook in Hook::ALL {
        let path = tmp.path.join(hook.name());
        obj_pin(hook.program(&skel).as_fd(), &path)?;
    }
    fs::rename(&tmp.path, dir).with_context(|| format!("moving {} to {}", tmp.path.display(), dir.display()))?;
    tmp.keep = true;
    Ok(Hook::for_policy(policy))
}

/// `cgdrop unpin`: removes one policy directory, or all of cgdrop's pins.
pub fn unpin(target: Option<CgroupTarget>, all: bool, programs: bool) -> Result<()> {
    preflight::check()?;
    if programs {
        let dir = bpffs::programs_dir();
        if !dir.exists() {
            bail!("no programs are pinned ({} does not exist)", dir.display());
        }
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        crate::say!(
            "cgdrop: removed the pinned programs ({}); where they are attached, they stay until detached",
            dir.display()
        );
        return Ok(());
    }
    bpffs::recover(&bpffs::cgdrop_root())?;
    if all {
        let root = bpffs::cgdrop_root();
        if !root.exists() {
            crate::say!("cgdrop: nothing is pinned ({} does not exist)", root.display());
            return Ok(());
        }
        let (mut n, mut live, mut pinning) = (0, false, 0);
        let runs = runs::runs_dir();
        for entry in fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))? {
            let path = entry.with_context(|| format!("listing {}", root.display()))?.path();
            // Running sessions' pins (stale ones were cleaned up before this
            // command): removing them would let a killed session's processes
            // go unfiltered.
            if path == runs {
                live = fs::remove_dir(&path).is_err();
                continue;
            }
            // A pin under way finishes (it comes after this unpin) rather
            // than being cut in half.
            if bpffs::in_progress(&path) {
                pinning += 1;
                continue;
            }
            match fs::remove_dir_all(&path) {
                Ok(()) => n += 1,
                // Renamed into place meanwhile by a pin that was under way: it stays.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => pinning += 1,
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
        if live || pinning > 0 {
            let what = match (live, pinning) {
                (true, 0) => format!("{} (cgdrop sessions are running)", runs.display()),
                (false, k) => format!("{k} pin(s) under way, which will stay"),
                (true, k) => format!("{} (cgdrop sessions are running) and {k} pin(s) under way", runs.display()),
            };
            crate::say!("cgdrop: removed {n} pinned director{}; left {what}", if n == 1 { "y" } else { "ies" });
            return Ok(());
        }
        fs::remove_dir(&root).with_context(|| format!("removing {}", root.display()))?;
        crate::say!("cgdrop: removed {n} pinned director{} and {}", if n == 1 { "y" } else { "ies" }, root.display());
        return Ok(());
    }
    let target = target.context("a target (--cgroup, --pid, --unit or --container) or --all is required")?;
    unpin_pinned(Pinned::find_target(&target)?)
}

/// Detaches and removes one pinned policy.
pub fn unpin_pinned(pinned: Pinned) -> Result<()> {
    let _lock = pinned.lock()?;
    let dir = pinned.dir.clone();
    let path = pinned.cgroup_path.clone();
    drop(pinned);
    // Unlinking the link pins detaches the programs: nothing else holds them.
    fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    crate::say!("cgdrop: unpinned the policy of cgroup {path} ({})", dir.display());
    Ok(())
}
