//! The rules in the kernel: writes `Rule`s into the `rules_v4`/`rules_v6` LPM
//! tries, swaps a whole rule set with no moment where neither set applies,
//! and deletes expired rules.
use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags};
use nix::time::{clock_gettime, ClockId};

use crate::{
    kernel::{
        config::PORT_BITS,
        skel::types::{cgdrop_action, cgdrop_key_v4, cgdrop_key_v6, cgdrop_rule},
    },
    rules::{Action, Rule, Target},
};

// SAFETY: generated from BTF, all fields are integers or byte arrays and the
// padding is explicit (`pad`), so every byte is initialised and any bit
// pattern is valid.
unsafe impl plain::Plain for cgdrop_key_v4 {}
// SAFETY: as above.
unsafe impl plain::Plain for cgdrop_key_v6 {}
// SAFETY: u64 then a u32 enum newtype and a u32: no padding.
unsafe impl plain::Plain for cgdrop_rule {}

/// The bytes of a key or value. Only for the Plain types above, which have no
/// implicit padding.
fn bytes<T: plain::Plain>(v: &T) -> &[u8] {
    // SAFETY: T is Plain and has no uninitialised padding (see the impls above).
    unsafe { plain::as_bytes(v) }
}

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

/// What cgdrop wrote into the tries: (target, action, expiry in boot-time
/// ns or 0 = never), sorted by target, one entry per target. A sorted vector
/// rather than a hash map: set differences of a million rules are a merge.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Installed(pub Vec<(Target, Action, u64)>);

impl Installed {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the set from rules; for a target given twice the later rule wins,
    /// as it does in the kernel when both are written in order.
    fn from_rules(rules: &[Rule], now_ns: u64) -> Self {
        let mut v: Vec<(Target, Action, u64)> = rules
            .iter()
            .map(|r| (r.target, r.action, r.ttl.map_or(0, |ttl| now_ns.saturating_add(ttl.as_nanos() as u64))))
            .collect();
        // Stable: among equal targets the original order stays, so keep the last.
        v.sort_by_key(|(t, _, _)| *t);
        let mut out: Vec<(Target, Action, u64)> = Vec::with_capacity(v.len());
        for entry in v {
            match out.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => out.push(entry),
            }
        }
        Self(out)
    }

    /// Targets in `self` that `other` does not have.
    fn missing_from<'a>(&'a self, other: &'a Installed) -> impl Iterator<Item = &'a Target> + 'a {
        let mut theirs = other.0.iter().map(|(t, _, _)| t).peekable();
        self.0.iter().map(|(t, _, _)| t).filter(move |t| {
            while theirs.next_if(|o| o < t).is_some() {}
            theirs.peek() != Some(t)
        })
    }
}

/// Keys and values of one family laid end to end, for a batch update.
#[derive(Default)]
struct Batch {
    keys: Vec<u8>,
    values: Vec<u8>,
    count: u32,
}

impl<M: MapCore> RuleMaps<'_, M> {
    fn map(&self, family: Family) -> &M {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }

    /// Writes one family's rules with one BPF_MAP_UPDATE_BATCH call: a
    /// million single updates would spend most of their time in syscalls.
    fn put_batch(&self, family: Family, batch: &Batch) -> Result<()> {
        if batch.count == 0 {
            return Ok(());
        }
        let map = self.map(family);
        let max = map.max_entries();
        if batch.count > max {
            bail!("{} {family} rules: the kernel's rule table holds at most {max} per address family", batch.count);
        }
        map.update_batch(&batch.keys, &batch.values, batch.count, MapFlags::ANY, MapFlags::ANY)
            .with_context(|| format!("adding {} {family} rules to the kernel", batch.count))
    }

    /// Adds or overwrites one rule.
    pub fn put(&self, target: &Target, action: Action, expires_ns: u64) -> Result<()> {
        let (family, key, prefixlen) = key_of(target);
        let value = cgdrop_rule { expires_ns, action: action_value(action), prefixlen };
        self.map(family)
            .update(&key, bytes(&value), MapFlags::ANY)
            .with_context(|| format!("adding rule {action} {target} to the kernel"))
    }

    /// The rule for exactly this target, if any: (action, expiry ns).
    pub fn get(&self, target: &Target) -> Result<Option<(Action, u64)>> {
        let (family, key, _) = key_of(target);
        let raw = self.map(family).lookup(&key, MapFlags::ANY).with_context(|| format!("looking up rule {target}"))?;
        raw.map(|raw| decode_value(&raw)).transpose()
    }

    /// Every rule in the tries, sorted by target.
    pub fn read_all(&self) -> Result<Installed> {
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            let map = self.map(family);
            for key in map.keys() {
                let Some(raw) = map.lookup(&key, MapFlags::ANY).context("reading a rule")? else { continue };
                let (action, expires_ns) = decode_value(&raw)?;
                out.push((decode_key(family, &key)?, action, expires_ns));
            }
        }
        out.sort_by_key(|(t, _, _)| *t);
        Ok(Installed(out))
    }

    pub fn delete(&self, target: &Target) -> Result<()> {
        let (family, key, _) = key_of(target);
        match self.map(family).delete(&key) {
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
        let next = Installed::from_rules(rules, now_ns);
        let mut batches = [Batch::default(), Batch::default()];
        for (target, action, expires_ns) in &next.0 {
            let (family, key, prefixlen) = key_of(target);
            let value = cgdrop_rule { expires_ns: *expires_ns, action: action_value(*action), prefixlen };
            let batch = &mut batches[family as usize];
            batch.keys.extend_from_slice(&key);
            batch.values.extend_from_slice(bytes(&value));
            batch.count += 1;
        }
        self.put_batch(Family::V4, &batches[0])?;
        self.put_batch(Family::V6, &batches[1])?;
        switch_default()?;
        for target in installed.missing_from(&next) {
            self.delete(target)?;
        }
        *installed = next;
        Ok(())
    }

    /// Deletes the rules that expired by `now_ns`; returns how many.
    pub fn sweep_expired(&self, installed: &mut Installed, now_ns: u64) -> Result<usize> {
        let before = installed.0.len();
        let mut result = Ok(());
        installed.0.retain(|(t, _, exp)| {
            let expired = *exp != 0 && *exp <= now_ns;
            if expired && result.is_ok() {
                result = self.delete(t);
            }
            !expired
        });
        result.map(|()| before - installed.0.len())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4 = 0,
    V6 = 1,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

fn action_value(action: Action) -> cgdrop_action {
    match action {
        Action::Allow => cgdrop_action::CGDROP_ACTION_ALLOW,
        Action::Deny => cgdrop_action::CGDROP_ACTION_DENY,
    }
}

fn decode_value(raw: &[u8]) -> Result<(Action, u64)> {
    // SAFETY: all-zero bytes are a valid cgdrop_rule (integers, a u32 newtype).
    let mut v: cgdrop_rule = unsafe { std::mem::zeroed() };
    plain::copy_from_bytes(&mut v, raw).map_err(|_| anyhow::anyhow!("a rule value has {} bytes", raw.len()))?;
    let action = match v.action {
        cgdrop_action::CGDROP_ACTION_ALLOW => Action::Allow,
        cgdrop_action::CGDROP_ACTION_DENY => Action::Deny,
        other => bail!("a rule has the unknown action {}", other.0),
    };
    Ok((action, v.expires_ns))
}

/// The target a trie key stands for (the inverse of `key_of`).
fn decode_key(family: Family, raw: &[u8]) -> Result<Target> {
    let bad = || anyhow::anyhow!("a {family} rule key has {} bytes", raw.len());
    let (prefixlen, port, addr) = match family {
        Family::V4 => {
            let mut k = cgdrop_key_v4::default();
            plain::copy_from_bytes(&mut k, raw).map_err(|_| bad())?;
            (k.prefixlen, k.port, IpAddr::from(k.addr))
        }
        Family::V6 => {
            let mut k = cgdrop_key_v6::default();
            plain::copy_from_bytes(&mut k, raw).map_err(|_| bad())?;
            (k.prefixlen, k.port, IpAddr::from(k.addr))
        }
    };
    let prefix = prefixlen.checked_sub(PORT_BITS).and_then(|p| u8::try_from(p).ok()).ok_or_else(bad)?;
    Ok(Target::new(addr, prefix, u16::from_be(port)))
}

/// The family, key bytes and key prefix length of a target.
fn key_of(t: &Target) -> (Family, Vec<u8>, u32) {
    let prefixlen = PORT_BITS + u32::from(t.prefix);
    match t.addr {
        IpAddr::V4(a) => {
            let key = cgdrop_key_v4 { prefixlen, port: t.port.to_be(), addr: a.octets(), pad: [0; 2] };
            (Family::V4, bytes(&key).to_vec(), prefixlen)
        }
        IpAddr::V6(a) => {
            let key = cgdrop_key_v6 { prefixlen, port: t.port.to_be(), addr: a.octets(), pad: [0; 2] };
            (Family::V6, bytes(&key).to_vec(), prefixlen)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: Action, t: &str) -> Rule {
        Rule { action, target: t.parse().unwrap(), ttl: None }
    }

    #[test]
    fn later_rule_for_a_target_wins_and_set_is_sorted() {
        let set = Installed::from_rules(
            &[rule(Action::Deny, "10.0.0.0/8"), rule(Action::Allow, "1.2.3.4"), rule(Action::Allow, "10.0.0.0/8")],
            0,
        );
        let targets: Vec<String> = set.0.iter().map(|(t, a, _)| format!("{a} {t}")).collect();
        assert_eq!(targets, ["allow 1.2.3.4/32", "allow 10.0.0.0/8"]);
    }

    #[test]
    fn expiry_counts_from_now() {
        let r = Rule { ttl: Some(std::time::Duration::from_secs(2)), ..rule(Action::Deny, "::1") };
        assert_eq!(Installed::from_rules(&[r], 1_000).0[0].2, 2_000_001_000);
        assert_eq!(Installed::from_rules(&[rule(Action::Deny, "::1")], 1_000).0[0].2, 0, "no ttl: never");
    }

    #[test]
    fn difference_of_sorted_sets() {
        let old = Installed::from_rules(
            &[
                rule(Action::Deny, "1.1.1.1"),
                rule(Action::Deny, "2.2.2.2"),
                rule(Action::Deny, "::1"),
                rule(Action::Deny, "9.9.9.9"),
            ],
            0,
        );
        let new = Installed::from_rules(
            &[rule(Action::Allow, "2.2.2.2"), rule(Action::Deny, "3.3.3.3"), rule(Action::Deny, "::1")],
            0,
        );
        let gone: Vec<String> = old.missing_from(&new).map(|t| t.to_string()).collect();
        assert_eq!(gone, ["1.1.1.1/32", "9.9.9.9/32"]);
        assert_eq!(new.missing_from(&new).count(), 0);
        assert_eq!(Installed::new().missing_from(&old).count(), 0);
        assert_eq!(old.missing_from(&Installed::new()).count(), 4);
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn keys_decode_to_their_target() {
        for t in ["10.0.0.0/8", "8.8.8.8/32:53", "2001:db8::/32", "[2001:db8::1/128]:443", "0.0.0.0/0", "::/0"] {
            let target: Target = t.parse().unwrap();
            let (family, key, prefixlen) = key_of(&target);
            assert_eq!(prefixlen, 16 + u32::from(target.prefix));
            assert_eq!(decode_key(family, &key).unwrap(), target, "{t}");
        }
    }

    #[test]
    fn values_decode_to_their_action() {
        let v = cgdrop_rule { expires_ns: 42, action: action_value(Action::Deny), prefixlen: 48 };
        assert_eq!(decode_value(bytes(&v)).unwrap(), (Action::Deny, 42));
        let bad = cgdrop_rule { action: cgdrop_action(7), ..v };
        assert!(decode_value(bytes(&bad)).is_err());
    }
}
