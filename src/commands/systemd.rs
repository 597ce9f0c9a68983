//! `cgdrop systemd --unit NAME [POLICY] [--remove]`: pins a policy's programs
//! under /sys/fs/bpf/cgdrop/unit-NAME/ (dots as `_`) and writes a drop-in with systemd's
//! `BPFProgram=` lines, so that systemd itself attaches them at every start
//! of the unit, with no cgdrop process watching.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{
    cli::SystemdArgs,
    host::{preflight, target},
    kernel::loader,
    output,
    pins::bpffs,
    policy::Policy,
};

use super::pin;

/// Where the unit's programs are pinned: `unit-nginx_service` for
/// nginx.service (bpffs refuses names with a dot; `_` is doubled first).
pub fn unit_dir(unit: &str) -> PathBuf {
    bpffs::cgdrop_root().join(format!("unit-{}", unit.replace('_', "__").replace('.', "_")))
}

/// The drop-in file for the unit under `dir` (/etc/systemd/system by default).
fn drop_in(dir: &Path, unit: &str) -> PathBuf {
    dir.join(format!("{unit}.d")).join("cgdrop.conf")
}

/// The drop-in's section: BPFProgram= belongs to the unit types with a cgroup.
fn section(unit: &str) -> Result<&'static str> {
    Ok(match unit.rsplit_once('.').map(|(_, t)| t) {
        Some("service") => "Service",
        Some("socket") => "Socket",
        Some("mount") => "Mount",
        Some("swap") => "Swap",
        Some("slice") => "Slice",
        Some("scope") => bail!(
            "{unit} is a scope: systemd makes scopes at run time, so a drop-in cannot set their programs; use `cgdrop pin --unit {unit}` or `cgdrop apply --watch`"
        ),
        _ => bail!("{unit}: BPFProgram= applies to services, sockets, mounts, swaps and slices"),
    })
}

pub fn run(args: &SystemdArgs, verbose: bool) -> Result<()> {
    let unit = target::unit_name(&args.unit)?;
    let kind = section(&unit)?;
    let file = drop_in(&args.dir, &unit);
    preflight::check()?;
    let dir = unit_dir(&unit);
    if args.remove {
        let mut removed = Vec::new();
        if file.exists() {
            fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
            // The `<unit>.d` directory, if cgdrop's file was its only one.
            let _ = fs::remove_dir(file.parent().expect("a drop-in has a directory"));
            removed.push(file.display().to_string());
        }
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            removed.push(dir.display().to_string());
        }
        if removed.is_empty() {
            bail!("{unit} has no cgdrop drop-in ({} does not exist)", file.display());
        }
        crate::say!("cgdrop: removed {}", removed.join(" and "));
        reload_systemd(&unit, "from its next start on, systemd attaches no cgdrop programs to it");
        return Ok(());
    }
    let policy = Policy::from_args(&args.policy)?;
    loader::set_verbose(verbose);
    if file.exists() || dir.exists() {
        bail!(
            "{unit} already has a cgdrop drop-in ({}): `cgdrop systemd --unit {unit} --remove` first",
            file.display()
        );
    }
    let hooks = pin::pin_programs_into(&policy, &dir)?;
    let mut text = format!(
        "# Written by `cgdrop systemd --unit {unit}`: systemd attaches these programs\n# (pinned in {}) to the unit's cgroup at every start.\n# `cgdrop systemd --unit {unit} --remove` removes this file and the pins.\n# The pins live in memory (bpffs): after a reboot, run the same cgdrop\n# systemd command again before the unit starts.\n[{kind}]\n",
        dir.display()
    );
    for hook in &hooks {
        text += &format!("BPFProgram={}:{}\n", hook.name(), dir.join(hook.name()).display());
    }
    let parent = file.parent().expect("a drop-in has a directory");
    let written = fs::create_dir_all(parent).and_then(|()| fs::write(&file, text));
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&dir);
        return Err(e).with_context(|| format!("writing {}", file.display()));
    }
    crate::say!(
        "cgdrop: pinned programs for {} in {} and wrote {} ({} BPFProgram= lines)",
        output::describe(&policy),
        dir.display(),
        file.display(),
        hooks.len()
    );
    reload_systemd(&unit, "restart it to attach them (`systemctl restart` it)");
    Ok(())
}

/// Tells systemd about the changed drop-in, when systemd runs this host.
fn reload_systemd(unit: &str, then: &str) {
    if !Path::new("/run/systemd/system").exists() {
        crate::say!("cgdrop: systemd is not running here: {unit} sees the change when systemd next loads it");
        return;
    }
    match Command::new("systemctl").arg("daemon-reload").status() {
        Ok(s) if s.success() => crate::say!("cgdrop: reloaded systemd; {unit}: {then}"),
        _ => crate::say!("cgdrop: `systemctl daemon-reload` failed: run it, then for {unit}: {then}"),
    }
}
