//! Per-rule hit counters: the per-CPU `rule_hits` map the programs fill for
//! every packet or call a rule decided, keyed by the rule's `hit_key` (a
//! hash of its trie key, see rulekeys::hit_key_of), one count per nesting
//! level as in `stats`.
use libbpf_rs::{MapCore, MapFlags};

use crate::{
    kernel::{
        rulekeys::{hit_key_of, key_of},
        skel::types::cgdrop_hits,
    },
    rules::Target,
};

// SAFETY: five u64.
unsafe impl plain::Plain for cgdrop_hits {}

/// The map key of a rule.
fn key(t: &Target) -> [u8; 8] {
    hit_key_of(&key_of(t).1).to_ne_bytes()
}

/// Hits summed over the CPUs and levels, and the last one (boot-time ns, 0 = never).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Hits {
    pub hits: u64,
    pub last_ns: u64,
}

fn sum(values: &[Vec<u8>]) -> Hits {
    let mut out = Hits::default();
    for raw in values {
        let mut h = cgdrop_hits::default();
        if plain::copy_from_bytes(&mut h, raw).is_ok() {
            out.hits += h.hits.iter().sum::<u64>();
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
    fn each_rule_has_its_own_key() {
        let keys: std::collections::HashSet<_> =
            ["10.1.0.0/16:53", "10.1.0.0/16", "10.1.0.0/17:53", "10.1.0.0/16:54", "[::a01:0/112]:53", "10.1.0.0/16:53"]
                .iter()
                .map(|t| key(&t.parse().unwrap()))
                .collect();
        assert_eq!(keys.len(), 5);
    }

    #[test]
    fn levels_and_cpus_are_summed() {
        let raw = |h: [u64; 4], last: u64| -> Vec<u8> {
            h.iter().chain([last].iter()).flat_map(|v| v.to_ne_bytes()).collect()
        };
        let s = sum(&[raw([1, 2, 0, 0], 50), raw([0, 0, 3, 4], 70)]);
        assert_eq!(s, Hits { hits: 10, last_ns: 70 });
    }
}
