//! The BPF side: opens the skeleton, writes the policy into rodata, loads the
//! programs (keeping libbpf's log for --verbose) and attaches them to a cgroup
//! with bpf_link. The returned links keep the programs attached: dropping them
//! (or the process exiting, however it exits) detaches.
use std::{mem::MaybeUninit, sync::Mutex};

use anyhow::{Context, Result};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    ErrorKind, Link, OpenObject, PrintLevel,
};

use crate::{
    cgroup::Cgroup,
    policy::Policy,
    skel::{types::cgdrop_direction, CgdropSkel, CgdropSkelBuilder},
};

/// libbpf's messages of this run, kept so that a failure can point at them.
static LOG: Mutex<String> = Mutex::new(String::new());

fn print_live(_level: PrintLevel, msg: String) {
    eprint!("{msg}");
}

fn keep_quietly(level: PrintLevel, msg: String) {
    if level != PrintLevel::Debug {
        if let Ok(mut log) = LOG.lock() {
            log.push_str(&msg);
        }
    }
}

/// Sends libbpf's log (including the verifier's) to stderr when `verbose`,
/// otherwise keeps it quiet.
pub fn set_verbose(verbose: bool) {
    if verbose {
        libbpf_rs::set_print(Some((PrintLevel::Debug, print_live)));
    } else {
        libbpf_rs::set_print(Some((PrintLevel::Warn, keep_quietly)));
    }
}

/// Opens the BPF object, configures it for `policy` through rodata and loads it.
pub fn load<'obj>(
    policy: &Policy,
    object: &'obj mut MaybeUninit<OpenObject>,
) -> Result<CgdropSkel<'obj>> {
    let mut open = CgdropSkelBuilder::default()
        .open(object)
        .context("opening the BPF object")?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the BPF object has no rodata section")?;
    rodata.cfg_ifindex = policy.ifindex();
    rodata.cfg_port = policy.port.unwrap_or(0);
    let mut dirs = 0;
    if policy.ingress {
        dirs |= cgdrop_direction::CGDROP_DIR_INGRESS.0;
    }
    if policy.egress {
        dirs |= cgdrop_direction::CGDROP_DIR_EGRESS.0;
    }
    rodata.cfg_directions = cgdrop_direction(dirs);
    open.load().map_err(|e| {
        let hint = match e.kind() {
            ErrorKind::PermissionDenied => "the kernel refused a program (verifier rejection or missing privileges); run with --verbose to see libbpf's log and the verifier's",
            _ => "run with --verbose to see libbpf's log",
        };
        anyhow::Error::new(e).context(format!("loading the BPF programs failed ({hint})"))
    })
}

/// Attaches the programs the policy needs to `cgroup`. On error, the links
/// made so far are dropped, so nothing stays attached.
pub fn attach(skel: &CgdropSkel<'_>, cgroup: &Cgroup, policy: &Policy) -> Result<Vec<Link>> {
    let progs = &skel.progs;
    let mut wanted = Vec::new();
    if policy.ingress {
        wanted.push(("cgdrop_ingress", &progs.cgdrop_ingress));
    }
    if policy.egress {
        wanted.push(("cgdrop_egress", &progs.cgdrop_egress));
    }
    wanted.push(("cgdrop_connect4", &progs.cgdrop_connect4));
    wanted.push(("cgdrop_connect6", &progs.cgdrop_connect6));

    wanted
        .into_iter()
        .map(|(name, prog)| {
            prog.attach_cgroup(cgroup.raw_fd()).map_err(|e| {
                let hint = if e.kind() == ErrorKind::PermissionDenied {
                    format!(
                        ": another program is attached to this cgroup without BPF_F_ALLOW_MULTI and blocks others; see `bpftool cgroup show {}`",
                        cgroup.path.display()
                    )
                } else {
                    String::new()
                };
                anyhow::Error::new(e).context(format!("attaching {name} to cgroup {}{hint}", cgroup.path.display()))
            })
        })
        .collect()
}
