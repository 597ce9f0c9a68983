//! The configuration layout shared with the BPF programs, in one place:
//! `struct cgdrop_config` (the rodata variable `cfg`), the .bss flags and the
//! pinned `info` record, encoded from a `Policy` and decoded from a loaded
//! skeleton or a pinned policy's maps through the skeleton's generated types.
use anyhow::{bail, Result};

use crate::{
    kernel::skel::types::{
        bss, cgdrop_config, cgdrop_direction, cgdrop_info, cgdrop_layout, cgdrop_limits, cgdrop_mode, cgdrop_sieve,
        cgdrop_stat_slot, rodata,
    },
    policy::Policy,
};

// SAFETY: three u32 generated from BTF; any bit pattern is valid, no padding.
unsafe impl plain::Plain for bss {}
// SAFETY: integers, u32 enum newtypes and an i8 array generated from BTF; the
// padding is explicit (`pad`); any bit pattern is valid.
unsafe impl plain::Plain for cgdrop_info {}
// SAFETY: one cgdrop_config: integers and u32 enum newtypes with explicit
// padding (`pad`); any bit pattern is valid.
unsafe impl plain::Plain for rodata {}

/// Rules per address family the kernel's tries hold.
pub const MAX_RULES_PER_FAMILY: usize = cgdrop_limits::CGDROP_MAX_RULES.0 as usize;
/// The port part of a trie key, in bits.
pub const PORT_BITS: u32 = cgdrop_limits::CGDROP_PORT_BITS.0;

/// The configuration fixed for one load, as the rest of cgdrop reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub ingress: bool,
    pub egress: bool,
    /// 0 = every interface.
    pub ifindex: u32,
    /// The interface's name, and the cookie of the network namespace where it
    /// was named (0: unknown).
    pub iface: Option<String>,
    pub netns_cookie: u64,
    /// Events each CPU may emit per second (the policy's `--log-rate` spread over the CPUs); 0 = none.
    pub events_per_cpu: u32,
    /// The port range (inclusive); 0 = every port.
    pub port: u16,
    pub port_hi: u16,
    pub silent: bool,
    pub dry_run: bool,
    pub no_new_inbound: bool,
    /// The errno rejected calls get; 0 = EPERM.
    pub reject_errno: u32,
    /// The kernel can preempt a task inside a program: counters use atomic adds.
    pub count_atomic: bool,
    /// Entries of the IPv4 host table (struct cgdrop_host); 0 = none.
    pub hosts_v4: u32,
}

/// Host rules (IPv4 /32, no port, no ttl) a policy needs before they go to a
/// table of their own (struct cgdrop_host) instead of the trie.
pub const HOST_TABLE_MIN: usize = 4096;

/// Whether a rule belongs in the host table: an IPv4 /32 without port or
/// ttl (255.255.255.255, the table's end marker, stays in the trie).
pub fn is_table_host(target: &crate::rules::Target, expires_ns: u64) -> bool {
    matches!(target.addr, std::net::IpAddr::V4(a) if a != std::net::Ipv4Addr::BROADCAST)
        && target.prefix == 32
        && target.port == 0
        && expires_ns == 0
}

/// The host table's size for `rules`: room for each of its host rules (a
/// target given twice only leaves an entry unused), or 0 below HOST_TABLE_MIN.
pub fn host_table_size(rules: &[crate::rules::Rule]) -> u32 {
    let n = rules.iter().filter(|r| r.ttl.is_none() && is_table_host(&r.target, 0)).count();
    if n < HOST_TABLE_MIN {
        0
    } else {
        n.min(MAX_RULES_PER_FAMILY) as u32
    }
}

impl Config {
    pub fn of(policy: &Policy) -> Self {
        Self {
            ingress: policy.ingress,
            egress: policy.egress,
            ifindex: policy.ifindex(),
            iface: policy.iface.as_ref().map(|(name, _)| name.clone()),
            netns_cookie: if policy.iface.is_some() { netns_cookie().unwrap_or(0) } else { 0 },
            port: policy.port.map_or(0, |p| p.lo),
            port_hi: policy.port.map_or(0, |p| p.hi),
            events_per_cpu: match policy.log_rate {
                0 => 0,
                rate => rate.div_ceil(libbpf_rs::num_possible_cpus().map_or(1, |n| n.max(1)) as u32),
            },
            silent: policy.silent,
            dry_run: policy.dry_run,
            no_new_inbound: policy.no_new_inbound,
            reject_errno: policy.reject_with.errno(),
            count_atomic: crate::host::preempt::counters_need_atomics(),
            hosts_v4: host_table_size(&policy.rules),
        }
    }

    /// The C struct. Built field by field: the generated enum newtypes'
    /// `Default` is their first value, not 0.
    pub fn encode(&self) -> cgdrop_config {
        let bits = |flags: &[(bool, u32)]| flags.iter().filter(|(on, _)| *on).fold(0, |acc, (_, bit)| acc | bit);
        let mut iface = [0i8; 16];
        for (dst, src) in iface.iter_mut().zip(self.iface.as_deref().unwrap_or("").bytes().take(15)) {
            *dst = src as i8;
        }
        cgdrop_config {
            ifindex: self.ifindex,
            port: self.port,
            port_hi: self.port_hi,
            netns_cookie: self.netns_cookie,
            iface,
            events_per_cpu: self.events_per_cpu,
            reject_errno: self.reject_errno,
            count_atomic: u32::from(self.count_atomic),
            hosts_v4: self.hosts_v4,
            directions: cgdrop_direction(bits(&[
                (self.ingress, cgdrop_direction::CGDROP_DIR_INGRESS.0),
                (self.egress, cgdrop_direction::CGDROP_DIR_EGRESS.0),
            ])),
            modes: cgdrop_mode(bits(&[
                (self.silent, cgdrop_mode::CGDROP_MODE_SILENT.0),
                (self.dry_run, cgdrop_mode::CGDROP_MODE_DRY_RUN.0),
                (self.no_new_inbound, cgdrop_mode::CGDROP_MODE_NO_NEW_INBOUND.0),
            ])),
        }
    }

    pub fn decode(c: &cgdrop_config) -> Self {
        Self {
            ingress: c.directions.0 & cgdrop_direction::CGDROP_DIR_INGRESS.0 != 0,
            egress: c.directions.0 & cgdrop_direction::CGDROP_DIR_EGRESS.0 != 0,
            ifindex: c.ifindex,
            iface: {
                let name: Vec<u8> = c.iface.iter().take_while(|b| **b != 0).map(|b| *b as u8).collect();
                (!name.is_empty()).then(|| String::from_utf8_lossy(&name).into_owned())
            },
            netns_cookie: c.netns_cookie,
            events_per_cpu: c.events_per_cpu,
            port: c.port,
            port_hi: c.port_hi,
            silent: c.modes.0 & cgdrop_mode::CGDROP_MODE_SILENT.0 != 0,
            dry_run: c.modes.0 & cgdrop_mode::CGDROP_MODE_DRY_RUN.0 != 0,
            no_new_inbound: c.modes.0 & cgdrop_mode::CGDROP_MODE_NO_NEW_INBOUND.0 != 0,
            reject_errno: c.reject_errno,
            count_atomic: c.count_atomic != 0,
            hosts_v4: c.hosts_v4,
        }
    }

    /// From the bytes of a pinned `rodata` map.
    pub fn from_rodata(raw: &[u8]) -> Result<Self> {
        // SAFETY: all-zero bytes are a valid rodata (integers and u32 newtypes).
        let mut r: rodata = unsafe { std::mem::zeroed() };
        // The map holds the section's bytes; the Rust type may add tail padding.
        let size = size_of::<rodata>();
        if raw.len() > size || raw.len() + 8 <= size {
            bail!("rodata has {} bytes, this cgdrop's layout has {size}", raw.len());
        }
        let mut padded = vec![0u8; size];
        padded[..raw.len()].copy_from_slice(raw);
        if plain::copy_from_bytes(&mut r, &padded).is_err() {
            bail!("rodata has {} bytes, this cgdrop's layout has {size}", raw.len());
        }
        Ok(Self::decode(&r.cfg))
    }
}

/// The cookie of this process's network namespace (SO_NETNS_COOKIE, Linux 5.14).
pub fn netns_cookie() -> Option<u64> {
    const SO_NETNS_COOKIE: i32 = 71;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as nix::libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the local u64.
    let ret = unsafe {
        nix::libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            nix::libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (ret == 0).then_some(cookie)
}

/// The .bss flags (see bpf/cgdrop.bpf.c): what unmatched traffic gets and
/// which lookups the programs may skip.
pub fn decode_bss(raw: &[u8]) -> Result<bss> {
    let mut b = bss { unmatched_pass: 0, has_rules: 0, has_port_rules: 0 };
    if plain::copy_from_bytes(&mut b, raw).is_err() {
        bail!("bss has {} bytes, this cgdrop's layout has {}", raw.len(), size_of::<bss>());
    }
    Ok(b)
}

pub fn encode_bss(b: &bss) -> &[u8] {
    // SAFETY: bss is three u32: no padding.
    unsafe { plain::as_bytes(b) }
}

/// What a pinned policy records about itself, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub cgroup_id: u64,
    pub cgroup_path: String,
    /// CLOCK_REALTIME seconds.
    pub pinned_at: u64,
    /// CLOCK_BOOTTIME ns.
    pub pinned_boot_ns: u64,
    /// CLOCK_REALTIME seconds of the first pin (before any `--replace`).
    pub first_pinned_at: u64,
    /// The target as given (`unit nginx.service`); empty: the path itself.
    pub target: String,
    /// The `cgdrop apply` policy that pinned it; empty: pinned by hand.
    pub applied_as: String,
}

/// Copies `text` into a NUL-terminated C array, or says it does not fit.
fn put_str(dst: &mut [i8], text: &str, what: &str) -> Result<()> {
    if text.len() >= dst.len() {
        bail!("{what} {text} is longer than the {} bytes a pinned policy records", dst.len() - 1);
    }
    for (d, s) in dst.iter_mut().zip(text.as_bytes()) {
        *d = *s as i8;
    }
    Ok(())
}

fn get_str(src: &[i8]) -> String {
    let bytes: Vec<u8> = src.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Info {
    /// The `info` record stamped with this cgdrop's layout.
    pub fn encode(&self) -> Result<cgdrop_info> {
        let mut info = cgdrop_info {
            cgroup_id: self.cgroup_id,
            pinned_at: self.pinned_at,
            pinned_boot_ns: self.pinned_boot_ns,
            first_pinned_at: self.first_pinned_at,
            layout: cgdrop_layout::CGDROP_LAYOUT_VERSION,
            stat_slots: cgdrop_stat_slot::CGDROP_STAT_SLOTS,
            max_rules: cgdrop_limits::CGDROP_MAX_RULES,
            sieve_words: cgdrop_sieve::CGDROP_SIEVE_WORDS,
            cgroup_path: [0; cgdrop_limits::CGDROP_PATH_MAX.0 as usize],
            target: [0; 256],
            applied_as: [0; 64],
        };
        put_str(&mut info.cgroup_path, &self.cgroup_path, "cgroup path")?;
        put_str(&mut info.target, &self.target, "target")?;
        put_str(&mut info.applied_as, &self.applied_as, "policy name")?;
        Ok(info)
    }

    /// Decodes an `info` record; one written by another layout is refused,
    /// never misread.
    pub fn decode(raw: &[u8]) -> Result<Self> {
        const OTHER: &str = "it was pinned by a cgdrop with another layout: unpin it with that cgdrop, or remove it with `cgdrop unpin --all`";
        // SAFETY: all-zero bytes are a valid cgdrop_info (integers, u32 newtypes, bytes).
        let mut info: cgdrop_info = unsafe { std::mem::zeroed() };
        if plain::copy_from_bytes(&mut info, raw).is_err() || raw.len() != size_of::<cgdrop_info>() {
            bail!("its info record has {} bytes, not {}: {OTHER}", raw.len(), size_of::<cgdrop_info>());
        }
        let ours = (
            cgdrop_layout::CGDROP_LAYOUT_VERSION,
            cgdrop_stat_slot::CGDROP_STAT_SLOTS,
            cgdrop_limits::CGDROP_MAX_RULES,
            cgdrop_sieve::CGDROP_SIEVE_WORDS,
        );
        if (info.layout, info.stat_slots, info.max_rules, info.sieve_words) != ours {
            bail!("its layout is version {}, this cgdrop's is {}: {OTHER}", info.layout.0, ours.0 .0);
        }
        Ok(Self {
            cgroup_id: info.cgroup_id,
            cgroup_path: get_str(&info.cgroup_path),
            target: get_str(&info.target),
            applied_as: get_str(&info.applied_as),
            pinned_at: info.pinned_at,
            pinned_boot_ns: info.pinned_boot_ns,
            first_pinned_at: info.first_pinned_at,
        })
    }
}

/// The bytes of an encoded `info` record.
pub fn info_bytes(info: &cgdrop_info) -> &[u8] {
    // SAFETY: Plain with explicit padding: every byte is initialised.
    unsafe { plain::as_bytes(info) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_the_c_struct() {
        for bits in 0..16u32 {
            let c = Config {
                ingress: bits & 1 != 0,
                egress: bits & 2 != 0,
                ifindex: bits * 3,
                iface: (bits & 1 != 0).then(|| "eth0".to_string()),
                netns_cookie: u64::from(bits) << 40,
                events_per_cpu: bits * 7,
                port: 8080,
                port_hi: 8080 + bits as u16,
                silent: bits & 4 != 0,
                dry_run: bits & 8 != 0,
                no_new_inbound: bits & 2 != 0,
                reject_errno: bits,
                count_atomic: bits & 4 != 0,
                hosts_v4: bits * 5000,
            };
            assert_eq!(Config::decode(&c.encode()), c.clone());
        }
    }

    #[test]
    fn host_table_takes_big_sets_of_plain_ipv4_hosts() {
        let rule = |t: &str, ttl: Option<u64>| crate::rules::Rule {
            action: crate::rules::Action::Deny,
            target: t.parse().unwrap(),
            ttl: ttl.map(std::time::Duration::from_secs),
        };
        let hosts: Vec<_> = (0..HOST_TABLE_MIN as u32)
            .map(|i| rule(&std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string(), None))
            .collect();
        assert_eq!(host_table_size(&hosts), HOST_TABLE_MIN as u32);
        assert_eq!(host_table_size(&hosts[1..]), 0, "fewer stay in the trie");
        // Prefixes, ports, ttls, IPv6 and the end marker do not count.
        let mut others = hosts[1..].to_vec();
        for t in ["10.0.0.0/31", "10.0.0.1:53", "::1", "255.255.255.255"] {
            others.push(rule(t, None));
        }
        others.push(rule("10.9.9.9", Some(60)));
        assert_eq!(host_table_size(&others), 0);
    }

    #[test]
    fn info_round_trips_and_other_layouts_are_refused() {
        let info = Info {
            cgroup_id: 42,
            cgroup_path: "/sys/fs/cgroup/a".into(),
            pinned_at: 7,
            pinned_boot_ns: 9,
            first_pinned_at: 5,
            target: "unit a.service".into(),
            applied_as: "web".into(),
        };
        let encoded = info.encode().unwrap();
        assert_eq!(Info::decode(info_bytes(&encoded)).unwrap(), info);
        let mut old = encoded;
        old.layout = cgdrop_layout(1);
        let err = Info::decode(info_bytes(&old)).unwrap_err().to_string();
        assert!(err.contains("layout is version 1") && err.contains("cgdrop unpin --all"), "{err}");
        // The previous layout's record: no version fields, 4096 bytes.
        let err = Info::decode(&[0u8; 4096]).unwrap_err().to_string();
        assert!(err.contains("4096 bytes"), "{err}");
        let long = Info { cgroup_path: "x".repeat(5000), ..info };
        assert!(long.encode().is_err());
    }
}
