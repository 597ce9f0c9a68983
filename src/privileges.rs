//! Checks up front that cgdrop has the capabilities it needs, so that a user
//! without them gets one clear message instead of a kernel EPERM halfway in.
use std::fs;

use anyhow::{bail, Context, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set from a /proc/<pid>/status text.
pub fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Names of the capabilities missing from `caps` for loading cgroup programs
/// with packet access and attaching them. CAP_SYS_ADMIN stands in for all.
pub fn missing(caps: u64) -> Vec<&'static str> {
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_NET_ADMIN, "CAP_NET_ADMIN")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect()
}

/// Fails with the names of the missing capabilities.
pub fn check() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let caps = effective_caps(&status).context("no CapEff line in /proc/self/status")?;
    let missing = missing(caps);
    if !missing.is_empty() {
        bail!(
            "missing privileges ({}): run cgdrop as root (sudo) or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN",
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cap_eff() {
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name:\tcat\n"), None);
    }

    #[test]
    fn root_and_sys_admin_need_nothing_more() {
        assert!(missing(0x1ff_ffff_ffff).is_empty());
        assert!(missing(1 << CAP_SYS_ADMIN).is_empty());
    }

    #[test]
    fn names_what_is_missing() {
        assert_eq!(missing(0), vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert_eq!(missing(1 << CAP_BPF | 1 << CAP_PERFMON), vec!["CAP_NET_ADMIN"]);
        assert!(missing(1 << CAP_BPF | 1 << CAP_PERFMON | 1 << CAP_NET_ADMIN).is_empty());
    }
}
