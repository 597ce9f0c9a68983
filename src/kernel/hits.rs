//! Per-rule hit counters: the per-CPU `rule_hits` map the programs fill for
//! every packet or call a rule decided, keyed by the rule (`cgdrop_rule_ref`).
use std::net::IpAddr;

use libbpf_rs::{MapCore, MapFlags};

use crate::{
    kernel::{
        config::PORT_BITS,
        skel::types::{cgdrop_hits, cgdrop_rule_ref},
    },
    rules::Target,
};

// SAFETY: integers and a byte array generated from BTF with explicit padding.
unsafe impl plain::Plain for cgdrop_rule_ref {}
// SAFETY: two u64.
unsafe impl plain::Plain for cgdrop_hits {}

/// The map key of a rule.
fn key(t: &Target) -> Vec<u8> {
    let mut addr = [0u8; 16];
    let family = match t.addr {
        IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            addr.copy_from_slice(&a.octets());
            6
        }
    };
    let r = cgdrop_rule_ref { prefixlen: PORT_BITS + u32::from(t.prefix), port: t.port.to_be(), family, pad: 0, addr };
    // SAFETY: Plain, explicit padding: every byte is initialised.
    unsafe { plain::as_bytes(&r) }.to_vec()
}

/// Hits summed over the CPUs, and the last one (boot-time ns, 0 = never).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Hits {
    pub hits: u64,
    pub last_ns: u64,
}

fn sum(values: &[Vec<u8>]) -> Hits {
    let mut out = Hits::default();
    for raw in values {
        let mut h = cgdrop_hits { hits: 0, last_ns: 0 };
        if plain::copy_from_bytes(&mut h, raw).is_ok() {
            out.hits += h.hits;
            out.last_ns = out.last_ns.max(h.last_ns);
        }
    }
    out
}

/// The hits of one rule (zero if it never decided anything).
pub fn of(map: &dyn MapCore, t: &Target) -> Hits {
    match map.lookup_percpu(&key(t), MapFlags::ANY) {
        Ok(Some(values)) => sum(&values),
        _ => Hits::default(),
    }
}

/// Forgets a deleted rule's hits (a rule added again later starts at zero).
pub fn forget(map: &dyn MapCore, t: &Target) {
    let _ = map.delete(&key(t));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_programs_layout() {
        let k = key(&"10.1.0.0/16:53".parse().unwrap());
        assert_eq!(k.len(), 24);
        assert_eq!(&k[..4], &(16u32 + 16).to_ne_bytes());
        assert_eq!(&k[4..6], &53u16.to_be_bytes());
        assert_eq!(k[6], 4);
        assert_eq!(&k[8..12], &[10, 1, 0, 0]);
        assert!(k[12..].iter().all(|b| *b == 0));
    }
}
