//! Checks up front what cgdrop needs from the host — capabilities, a kernel
//! with cgroup bpf_link (5.7), bpf_ktime_get_boot_ns (5.8) and BTF — so that a user gets one clear
//! message instead of a kernel error halfway in.
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

/// The oldest kernel with bpf_link for cgroup programs.
const MIN_KERNEL: (u32, u32) = (5, 8);
/// Where the kernel exposes its BTF, which CO-RE relocation needs.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Major and minor version of a kernel release string ("6.1.0-18-amd64").
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Fails unless the release is at least MIN_KERNEL.
pub fn check_kernel(release: &str) -> Result<()> {
    let (major, minor) =
        kernel_version(release).with_context(|| format!("cannot read the kernel version '{release}'"))?;
    if (major, minor) < MIN_KERNEL {
        bail!(
            "Linux {release} is too old: cgdrop needs Linux {}.{} or later (bpf_link for cgroup programs, bpf_ktime_get_boot_ns for rule expiry)",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    Ok(())
}

/// Everything cgdrop needs before it loads programs: capabilities, kernel
/// version, BTF. Fails with what is missing and what to do.
pub fn check() -> Result<()> {
    check_caps()?;
    let uname = nix::sys::utsname::uname().context("reading the kernel version (uname)")?;
    check_kernel(&uname.release().to_string_lossy())?;
    if !std::path::Path::new(VMLINUX_BTF).exists() {
        bail!(
            "this kernel exposes no BTF ({VMLINUX_BTF} is missing): cgdrop's CO-RE programs need a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    Ok(())
}

/// Fails with the names of the missing capabilities.
fn check_caps() -> Result<()> {
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
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.7.0"), Some((5, 7)));
        assert_eq!(kernel_version("2.6.78-fc-v595"), Some((2, 6)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(check_kernel("5.8.0").is_ok());
        assert!(check_kernel("5.7.19").is_err(), "bpf_ktime_get_boot_ns came in 5.8");
        assert!(check_kernel("6.18.44-fc-v595").is_ok());
        let err = check_kernel("5.4.0-100-generic").unwrap_err();
        assert!(err.to_string().contains("Linux 5.4.0-100-generic is too old: cgdrop needs Linux 5.8"), "{err}");
    }

    #[test]
    fn names_what_is_missing() {
        assert_eq!(missing(0), vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert_eq!(missing(1 << CAP_BPF | 1 << CAP_PERFMON), vec!["CAP_NET_ADMIN"]);
        assert!(missing(1 << CAP_BPF | 1 << CAP_PERFMON | 1 << CAP_NET_ADMIN).is_empty());
    }
}
