//! The rules in the kernel: writes `Rule`s into the `rules_v4`/`rules_v6` LPM
//! tries, swaps a whole rule set with no moment where neither set applies,
//! and deletes expired rules.
use std::{collections::HashMap, net::IpAddr};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};
use nix::time::{clock_gettime, ClockId};

use crate::{
    rules::{Action, Rule, Target},
    skel::types::{cgdrop_action, cgdrop_key_v4, cgdrop_key_v6, cgdrop_rule},
};

// SAFETY: generated from BTF, all fields are integers or byte arrays and the
// padding is explicit (`pad`), so every byte is initialised and any bit
// pattern is valid.
unsafe impl plain::Plain for cgdrop_key_v4 {}
// SAFETY: as above.
unsafe impl plain::Plain for cgdrop_key_v6 {}
// SAFETY: u64 then two u32: no padding.
unsafe impl plain::Plain for cgdrop_rule {}

/// The bytes of a key or value. Only for the Plain types above, which have no
/// implicit padding.
fn bytes<T: plain::Plain>(v: &T) -> &[u8] {
    // SAFETY: T is Plain and has no uninitialised padding (see the impls above).
    unsafe { plain::as_bytes(v) }
}

/// The port part of a trie key, in bits (see include/cgdrop.h).
const PORT_BITS: u32 = 16;

/// CLOCK_BOOTTIME in ns, the clock of bpf_ktime_get_boot_ns().
pub fn boot_time_ns() -> Result<u64> {
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).context("reading CLOCK_BOOTTIME")?;
    Ok(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
}

/// The two tries of one policy.
pub struct RuleMaps<'m, M: MapCore> {
    pub v4: &'m M,
    pub v6: &'m M,
}

/// What cgdrop wrote into the tries: target → (action, expiry in boot-time ns, 0 = never).
pub type Installed = HashMap<Target, (Action, u64)>;

impl<M: MapCore> RuleMaps<'_, M> {
    fn put(&self, target: &Target, action: Action, expires_ns: u64) -> Result<()> {
        let (map, key, prefixlen) = key_of(self, target);
        let value = cgdrop_rule {
            expires_ns,
            action: match action {
                Action::Allow => cgdrop_action::CGDROP_ACTION_ALLOW.0,
                Action::Deny => cgdrop_action::CGDROP_ACTION_DENY.0,
            },
            prefixlen,
        };
        map.update(&key, bytes(&value), MapFlags::ANY)
            .with_context(|| format!("adding rule {action} {target} to the kernel"))
    }

    fn delete(&self, target: &Target) -> Result<()> {
        let (map, key, _) = key_of(self, target);
        match map.delete(&key) {
            Ok(()) => Ok(()),
            // Already gone (deleted by someone else): the goal is reached.
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting rule {target} from the kernel")),
        }
    }

    /// Writes `rules` (with expiries counted from `now_ns`) over whatever is
    /// installed, calls `switch_default` (which sets what unmatched traffic
    /// gets), then deletes what the new set does not have. At every step each
    /// packet gets the verdict of the old set or of the new one: the new
    /// rules are in before the default changes, and the old ones leave after.
    pub fn replace(
        &self,
        installed: &mut Installed,
        rules: &[Rule],
        now_ns: u64,
        switch_default: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let mut next = Installed::with_capacity(rules.len());
        for r in rules {
            let expires_ns = r.ttl.map_or(0, |ttl| now_ns.saturating_add(ttl.as_nanos() as u64));
            self.put(&r.target, r.action, expires_ns)?;
            next.insert(r.target, (r.action, expires_ns));
        }
        switch_default()?;
        for target in installed.keys().filter(|t| !next.contains_key(t)) {
            self.delete(target)?;
        }
        *installed = next;
        Ok(())
    }

    /// Deletes the rules that expired by `now_ns`; returns how many.
    pub fn sweep_expired(&self, installed: &mut Installed, now_ns: u64) -> Result<usize> {
        let expired: Vec<Target> =
            installed.iter().filter(|(_, (_, exp))| *exp != 0 && *exp <= now_ns).map(|(t, _)| *t).collect();
        for t in &expired {
            self.delete(t)?;
            installed.remove(t);
        }
        Ok(expired.len())
    }
}

/// The trie, key bytes and key prefix length of a target.
fn key_of<'m, M: MapCore>(maps: &RuleMaps<'m, M>, t: &Target) -> (&'m M, Vec<u8>, u32) {
    let prefixlen = PORT_BITS + u32::from(t.prefix);
    match t.addr {
        IpAddr::V4(a) => {
            let key = cgdrop_key_v4 { prefixlen, port: t.port.to_be(), addr: a.octets(), pad: [0; 2] };
            (maps.v4, bytes(&key).to_vec(), prefixlen)
        }
        IpAddr::V6(a) => {
            let key = cgdrop_key_v6 { prefixlen, port: t.port.to_be(), addr: a.octets(), pad: [0; 2] };
            (maps.v6, bytes(&key).to_vec(), prefixlen)
        }
    }
}
