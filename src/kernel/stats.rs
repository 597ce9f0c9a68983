//! Counters: reads the per-CPU `stats` map and sums the CPUs into `Stats`
//! (its JSON shape is the documented summary; `output` draws the rest).
use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags};
use serde::Serialize;

use crate::kernel::skel::types::{cgdrop_counters, cgdrop_stat_cpu, cgdrop_stat_slot};

// SAFETY: cgdrop_counters is four u64 generated from BTF: no padding, and every
// bit pattern is a valid value.
unsafe impl plain::Plain for cgdrop_counters {}
// SAFETY: two u32 and an array of cgdrop_counters: no implicit padding.
unsafe impl plain::Plain for cgdrop_stat_cpu {}

/// Packets and bytes one skb hook saw and dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}

/// Calls one sock_addr hook saw (connect or sendmsg, both families) and rejected.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Calls {
    pub attempts: u64,
    pub rejected: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub ingress: Traffic,
    pub egress: Traffic,
    pub connect: Calls,
    pub sendmsg: Calls,
}

/// The JSON object of the foreground summary (DESIGN.md, "JSON summary").
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    pub cgroup: &'a str,
    pub cgroup_id: u64,
    #[serde(flatten)]
    pub stats: Stats,
}

/// Sums the per-CPU values of one slot, as `lookup_percpu` returns them,
/// over the CPUs and the nesting levels.
pub fn sum_percpu(values: &[Vec<u8>]) -> Result<cgdrop_counters> {
    let mut sum = cgdrop_counters::default();
    for (cpu, raw) in values.iter().enumerate() {
        let mut s = cgdrop_stat_cpu::default();
        if plain::copy_from_bytes(&mut s, raw).is_err() {
            bail!("stats value of CPU {cpu} is {} bytes, expected {}", raw.len(), size_of::<cgdrop_stat_cpu>());
        }
        for c in &s.level {
            sum.packets += c.packets;
            sum.bytes += c.bytes;
            sum.dropped_packets += c.dropped_packets;
            sum.dropped_bytes += c.dropped_bytes;
        }
    }
    Ok(sum)
}

fn read_slot(map: &impl MapCore, slot: cgdrop_stat_slot) -> Result<cgdrop_counters> {
    let values = map
        .lookup_percpu(&slot.0.to_ne_bytes(), MapFlags::ANY)
        .with_context(|| format!("reading stats slot {}", slot.0))?
        .with_context(|| format!("stats slot {} missing", slot.0))?;
    sum_percpu(&values)
}

fn traffic(c: cgdrop_counters) -> Traffic {
    Traffic { packets: c.packets, bytes: c.bytes, dropped_packets: c.dropped_packets, dropped_bytes: c.dropped_bytes }
}

fn calls(a: cgdrop_counters, b: cgdrop_counters) -> Calls {
    Calls { attempts: a.packets + b.packets, rejected: a.dropped_packets + b.dropped_packets }
}

/// Reads every slot of the `stats` map.
pub fn read(map: &impl MapCore) -> Result<Stats> {
    let slot = |s| read_slot(map, s);
    Ok(Stats {
        ingress: traffic(slot(cgdrop_stat_slot::CGDROP_STAT_INGRESS)?),
        egress: traffic(slot(cgdrop_stat_slot::CGDROP_STAT_EGRESS)?),
        connect: calls(slot(cgdrop_stat_slot::CGDROP_STAT_CONNECT4)?, slot(cgdrop_stat_slot::CGDROP_STAT_CONNECT6)?),
        sendmsg: calls(slot(cgdrop_stat_slot::CGDROP_STAT_SENDMSG4)?, slot(cgdrop_stat_slot::CGDROP_STAT_SENDMSG6)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One CPU's value: depth, pad, then the counters of each level (the last levels zero).
    fn raw(levels: &[[u64; 4]]) -> Vec<u8> {
        let mut out = vec![0u8; 8];
        for l in 0..4 {
            let c = levels.get(l).copied().unwrap_or_default();
            out.extend(c.iter().flat_map(|v| v.to_ne_bytes()));
        }
        out
    }

    #[test]
    fn sums_every_cpu_and_level() {
        let sum = sum_percpu(&[
            raw(&[[1, 100, 1, 100]]),
            raw(&[[2, 50, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]),
            raw(&[]),
            raw(&[[7, 1, 3, 1], [1, 2, 3, 4]]),
        ])
        .unwrap();
        assert_eq!((sum.packets, sum.bytes, sum.dropped_packets, sum.dropped_bytes), (12, 154, 8, 106));
    }

    #[test]
    fn no_cpus_is_zero() {
        let sum = sum_percpu(&[]).unwrap();
        assert_eq!((sum.packets, sum.bytes, sum.dropped_packets, sum.dropped_bytes), (0, 0, 0, 0));
    }

    #[test]
    fn short_value_is_an_error() {
        let err = sum_percpu(&[vec![0u8; 8]]).unwrap_err();
        assert!(err.to_string().contains("8 bytes"), "{err}");
    }

    #[test]
    fn json_has_the_documented_shape() {
        let s = Stats {
            ingress: Traffic { packets: 1, bytes: 2, dropped_packets: 3, dropped_bytes: 4 },
            connect: Calls { attempts: 5, rejected: 6 },
            ..Stats::default()
        };
        let json = serde_json::to_value(Summary { cgroup: "/sys/fs/cgroup/x", cgroup_id: 42, stats: s }).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cgroup": "/sys/fs/cgroup/x", "cgroup_id": 42,
                "ingress": {"packets": 1, "bytes": 2, "dropped_packets": 3, "dropped_bytes": 4},
                "egress": {"packets": 0, "bytes": 0, "dropped_packets": 0, "dropped_bytes": 0},
                "connect": {"attempts": 5, "rejected": 6},
                "sendmsg": {"attempts": 0, "rejected": 0}})
        );
    }
}
