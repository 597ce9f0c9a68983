//! The rules in the kernel: writes `Rule`s into the `rules_v4`/`rules_v6` LPM
//! tries and the IPv4 host table (each marked in the sieve first), swaps a
//! whole rule set with no moment where neither set applies, and deletes
//! expired rules.
use std::{collections::HashMap, time::Duration};

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags};
use nix::time::{clock_gettime, ClockId};

use crate::{
    kernel::{
        config::is_table_host,
        hosts::HostTable,
        rulekeys::{action_value, bytes, decode_key, decode_value, errno, hit_key_of, key_of, value_of, Family},
        sieve::Sieve,
    },
    rules::{Action, Rule, Target},
};

/// CLOCK_BOOTTIME in ns, the clock of bpf_ktime_get_boot_ns().
pub fn boot_time_ns() -> Result<u64> {
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).context("reading CLOCK_BOOTTIME")?;
    Ok(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
}

/// The two tries of one policy, its IPv4 host table, and its sieve (which
/// every write marks first).
pub struct RuleMaps<'m, M: MapCore> {
    pub v4: &'m M,
    pub v6: &'m M,
    pub hosts_v4: &'m M,
    pub sieve: &'m M,
}

/// The origin bits of an entry (struct cgdrop_rule's and cgdrop_host's).
fn origin_of(e: &Entry) -> u32 {
    if e.live {
        crate::kernel::skel::types::cgdrop_rule_origin::CGDROP_RULE_LIVE.0
    } else {
        0
    }
}

/// One rule in the tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub target: Target,
    pub action: Action,
    /// Boot-time ns after which it no longer matches; 0 = never.
    pub expires_ns: u64,
    /// Added with `rule add` (carried over by `pin --replace`).
    pub live: bool,
}

/// Of two lifetimes (boot-time ns, 0 = never), the longer.
pub fn longer(a: u64, b: u64) -> u64 {
    if a == 0 || b == 0 {
        0
    } else {
        a.max(b)
    }
}

/// What cgdrop wrote into the tries, sorted by target, one entry per target.
/// A sorted vector rather than a hash map: set differences of a million
/// rules are a merge. `expiries` remembers when each temporary rule of a
/// rules file (target, action, ttl) expires, so that a reload of an unchanged
/// rule keeps its expiry instead of starting it again.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Installed {
    pub entries: Vec<Entry>,
    expiries: HashMap<(Target, Action, Duration), u64>,
}

impl Installed {
    pub fn new() -> Self {
        Self::default()
    }

    /// The set `rules` stands for at `now_ns`: a target given twice (with
    /// the same action: conflicts are refused before) gets the longer
    /// lifetime; a temporary rule seen before keeps its first expiry, and
    /// one that has expired is left out.
    fn from_rules(rules: &[Rule], now_ns: u64, previous: &HashMap<(Target, Action, Duration), u64>) -> Self {
        let mut expiries = HashMap::new();
        let mut v: Vec<Entry> = rules
            .iter()
            .map(|r| {
                let expires_ns = r.ttl.map_or(0, |ttl| {
                    let key = (r.target, r.action, ttl);
                    let at = previous.get(&key).copied().unwrap_or(now_ns.saturating_add(ttl.as_nanos() as u64));
                    expiries.insert(key, at);
                    at
                });
                Entry { target: r.target, action: r.action, expires_ns, live: false }
            })
            .collect();
        // Unstable and in place: a stable sort's buffer and a second vector
        // would add ~30 MB each to the peak of a million rules. Two rules for
        // one target have one action (policies refuse conflicting ones,
        // rules::check_conflicts); if they ever differed, deny would win.
        v.sort_unstable_by_key(|e| e.target);
        v.dedup_by(|next, last| {
            if next.target != last.target {
                return false;
            }
            last.expires_ns = longer(last.expires_ns, next.expires_ns);
            if next.action == Action::Deny {
                last.action = Action::Deny;
            }
            true
        });
        v.retain(|e| e.expires_ns == 0 || e.expires_ns > now_ns);
        Self { entries: v, expiries }
    }

    /// Targets in `self` that `other` does not have.
    fn missing_from<'a>(&'a self, other: &'a Installed) -> impl Iterator<Item = &'a Target> + 'a {
        let mut theirs = other.entries.iter().map(|e| &e.target).peekable();
        self.entries.iter().map(|e| &e.target).filter(move |t| {
            while theirs.next_if(|o| o < t).is_some() {}
            theirs.peek() != Some(t)
        })
    }

    /// How many targets of each family `self` and `other` have together.
    fn union_counts(&self, other: &Installed) -> [usize; 2] {
        let mut counts = [0, 0];
        for t in self.entries.iter().map(|e| &e.target).chain(other.missing_from(self)) {
            counts[usize::from(!t.addr.is_ipv4())] += 1;
        }
        counts
    }

    /// Whether the rule for `target` has a ttl (then it is in the trie).
    fn has_ttl_rule(&self, target: &Target) -> bool {
        self.entries.binary_search_by_key(target, |e| e.target).is_ok_and(|i| self.entries[i].expires_ns != 0)
    }

    /// The earliest expiry of a temporary rule (boot-time ns).
    pub fn next_expiry(&self) -> Option<u64> {
        self.entries.iter().map(|e| e.expires_ns).filter(|&e| e != 0).min()
    }
}

/// A live entry of the host table as an Entry.
fn host_entry(h: &crate::kernel::hosts::Host) -> Result<Entry> {
    use crate::kernel::skel::types::{cgdrop_action, cgdrop_rule_origin};
    let action = match cgdrop_action(h.action) {
        cgdrop_action::CGDROP_ACTION_ALLOW => Action::Allow,
        cgdrop_action::CGDROP_ACTION_DENY => Action::Deny,
        other => bail!("a host rule has the unknown action {}", other.0),
    };
    Ok(Entry {
        target: Target::new(h.addr.into(), 32, 0),
        action,
        expires_ns: 0,
        live: h.origin & cgdrop_rule_origin::CGDROP_RULE_LIVE.0 != 0,
    })
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

    /// Writes a chunk of one family's rules with one BPF_MAP_UPDATE_BATCH
    /// call: a million single updates would spend most of their time in syscalls.
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

    fn sieve(&self) -> Result<Sieve<'_>> {
        Sieve::map(self.sieve.as_fd())
    }

    /// Whether the sieve lets the programs see every rule of `installed`.
    pub fn sieve_covers(&self, installed: &Installed) -> Result<bool> {
        let sieve = self.sieve()?;
        for e in &installed.entries {
            if !sieve.covers(&e.target)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The size of the host table if it has one and nothing was written to
    /// it yet (its first entry is all zero), read without mapping it.
    fn unfilled_table(&self) -> Result<Option<usize>> {
        let capacity = self.hosts_v4.max_entries() as usize;
        if capacity < crate::kernel::config::HOST_TABLE_MIN {
            return Ok(None);
        }
        let first = self.hosts_v4.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).context("reading the host table")?;
        Ok(first.is_some_and(|v| v.iter().all(|b| *b == 0)).then_some(capacity))
    }

    fn hosts(&self) -> Result<Option<HostTable>> {
        HostTable::map(self.hosts_v4.as_fd(), self.hosts_v4.max_entries())
    }

    /// Adds or overwrites one rule. A target of the host table keeps its
    /// entry: a rule without ttl is written there in place; one with a ttl
    /// goes to the trie first, and the entry is deleted after (so that one
    /// of the two decides at every moment).
    pub fn put(&self, e: &Entry) -> Result<()> {
        self.put_in(self.hosts()?.as_ref(), e)
    }

    /// put() with the host table mapped by the caller (see delete_in).
    fn put_in(&self, table: Option<&HostTable>, e: &Entry) -> Result<()> {
        self.sieve()?.mark(&e.target)?;
        if let Some(table) = table {
            if let Some(i) = table.find(&e.target) {
                if e.expires_ns == 0 {
                    table.set(i, action_value(e.action).0, origin_of(e));
                    // A ttl rule written before for the target would come back once this one is deleted.
                    return self.delete_from_trie(&e.target);
                }
                self.put_in_trie(e)?;
                table.set(i, 0, 0);
                return Ok(());
            }
        }
        self.put_in_trie(e)
    }

    fn put_in_trie(&self, e: &Entry) -> Result<()> {
        let (family, key, prefixlen) = key_of(&e.target);
        let value = value_of(e, &key, prefixlen);
        self.map(family).update(&key, bytes(&value), MapFlags::ANY).map_err(|err| {
            if errno(&err) == Some(nix::libc::ENOSPC) {
                anyhow::anyhow!(
                    "adding rule {} {}: the kernel's {family} rule table is full ({} rules): delete some first",
                    e.action,
                    e.target,
                    self.map(family).max_entries()
                )
            } else {
                anyhow::Error::new(err).context(format!("adding rule {} {} to the kernel", e.action, e.target))
            }
        })
    }

    /// The rule for exactly this target (not a longer-prefix match), if any.
    pub fn get(&self, target: &Target) -> Result<Option<Entry>> {
        if let Some(table) = self.hosts()? {
            if let Some(h) = table.find(target).map(|i| table.get(i)).filter(|h| h.action != 0) {
                return Ok(Some(host_entry(&h)?));
            }
        }
        let (family, key, prefixlen) = key_of(target);
        // An LPM lookup answers with the longest prefix that covers the key:
        // the value's prefixlen says whether that is this very rule.
        let raw = self.map(family).lookup(&key, MapFlags::ANY).with_context(|| format!("looking up rule {target}"))?;
        let Some(raw) = raw else { return Ok(None) };
        let v = decode_value(&raw)?;
        Ok((v.prefixlen == prefixlen).then_some(Entry { target: *target, ..v.entry }))
    }

    /// Every rule in the tries, sorted by target.
    pub fn read_all(&self) -> Result<Installed> {
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            let map = self.map(family);
            for key in map.keys() {
                let Some(raw) = map.lookup(&key, MapFlags::ANY).context("reading a rule")? else { continue };
                out.push(Entry { target: decode_key(family, &key)?, ..decode_value(&raw)?.entry });
            }
        }
        if let Some(table) = self.hosts()? {
            for h in table.live() {
                out.push(host_entry(&h)?);
            }
        }
        out.sort_by_key(|e| e.target);
        Ok(Installed { entries: out, expiries: HashMap::new() })
    }

    pub fn delete(&self, target: &Target) -> Result<()> {
        self.delete_in(self.hosts()?.as_ref(), target)
    }

    /// delete() with the host table mapped by the caller (mapping it costs
    /// the kernel every page of it: once per batch of deletes, not per rule).
    /// A live entry of the table has no copy in the trie (put deletes it).
    fn delete_in(&self, table: Option<&HostTable>, target: &Target) -> Result<()> {
        if let Some(table) = table {
            if let Some(i) = table.find(target) {
                if table.get(i).action != 0 {
                    table.set(i, 0, 0);
                    return Ok(());
                }
            }
        }
        self.delete_from_trie(target)
    }

    fn delete_from_trie(&self, target: &Target) -> Result<()> {
        let (family, key, _) = key_of(target);
        match self.map(family).delete(&key) {
            Ok(()) => Ok(()),
            // Already gone (deleted by someone else): the goal is reached.
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting rule {target} from the kernel")),
        }
    }

    /// Writes `rules` (with expiries counted from `now_ns`, or kept from
    /// `installed` for a temporary rule seen before) over whatever is
    /// installed, calls `switch_default` (which sets what unmatched traffic
    /// gets), then deletes what the new set does not have. At every step each
    /// packet gets the verdict of the old set or of the new one: the new
    /// rules are in before the default changes, and the old ones leave after.
    /// All or nothing: the old and the new set must fit the tries together
    /// (checked before anything is written), and a write that fails anyway
    /// is undone before the error is returned.
    pub fn replace(
        &self,
        installed: &mut Installed,
        rules: &[Rule],
        now_ns: u64,
        switch_default: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let next = Installed::from_rules(rules, now_ns, &installed.expiries);
        for (family, n) in [Family::V4, Family::V6].into_iter().zip(next.union_counts(installed)) {
            let max = self.map(family).max_entries() as usize;
            if n > max {
                bail!(
                    "{n} {family} rules during the swap (the old and the new set together): the kernel's rule table holds {max}; nothing was changed"
                );
            }
        }
        // Written in chunks: the batches of a million rules whole would be
        // ~45 MB of the loader's peak memory, for no fewer syscalls that matter.
        const CHUNK: u32 = 1 << 16;
        let mut batches = [Batch::default(), Batch::default()];
        let sieve = self.sieve()?;
        // A table is filled once, when its policy is loaded, before it is
        // attached (with the first of the rules it has room for); later sets
        // change entries in place (see put). Mapped whole only then: the
        // kernel maps every page of a map at once (24 MB for a million).
        let fresh = self.unfilled_table()?;
        let table = if fresh.is_some() { None } else { self.hosts()? };
        if let Some(capacity) = fresh {
            let hosts = next.entries.iter().filter(|e| is_table_host(&e.target, e.expires_ns)).take(capacity);
            // The first failure to mark, reported once the table is filled
            // (and before any rule of it is attached).
            let mut marked = Ok(());
            HostTable::fill(
                self.hosts_v4.as_fd(),
                capacity as u32,
                hosts.map(|e| {
                    if let (Err(err), Ok(())) = (sieve.mark(&e.target), &marked) {
                        marked = Err(err);
                    }
                    let addr = match e.target.addr {
                        std::net::IpAddr::V4(a) => a,
                        std::net::IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
                    };
                    (addr, action_value(e.action).0, origin_of(e), hit_key_of(&key_of(&e.target).1))
                }),
            )?;
            marked?;
        }
        let mut in_table = 0;
        let mut deleted_after = Vec::new();
        let written = (|| {
            for e in &next.entries {
                if let Some(capacity) = fresh {
                    // Filled (and marked) just now: the first `capacity` host rules are there.
                    if is_table_host(&e.target, e.expires_ns) && in_table < capacity {
                        in_table += 1;
                        continue;
                    }
                }
                sieve.mark(&e.target)?;
                // (A fresh table is not mapped: `table` is None then.)
                if let Some(t) = &table {
                    if let Some(i) = t.find(&e.target) {
                        if e.expires_ns == 0 {
                            t.set(i, action_value(e.action).0, origin_of(e));
                            // A ttl rule for it in the trie would come back once this one is deleted.
                            if installed.has_ttl_rule(&e.target) {
                                self.delete_from_trie(&e.target)?;
                            }
                            continue;
                        }
                        deleted_after.push(i);
                    }
                }
                let (family, key, prefixlen) = key_of(&e.target);
                let batch = &mut batches[family as usize];
                batch.keys.extend_from_slice(&key);
                batch.values.extend_from_slice(bytes(&value_of(e, &key, prefixlen)));
                batch.count += 1;
                if batch.count == CHUNK {
                    self.put_batch(family, batch)?;
                    *batch = Batch::default();
                }
            }
            self.put_batch(Family::V4, &batches[0])?;
            self.put_batch(Family::V6, &batches[1])
        })();
        if let Err(e) = written {
            self.undo(installed, &next);
            return Err(e);
        }
        if let Some(t) = &table {
            for i in deleted_after {
                t.set(i, 0, 0);
            }
        }
        switch_default()?;
        // Mapped for the deletes only if there are any (a first load has none).
        let table = match table {
            Some(t) => Some(t),
            None if installed.missing_from(&next).next().is_some() => self.hosts()?,
            None => None,
        };
        for target in installed.missing_from(&next) {
            self.delete_in(table.as_ref(), target)?;
        }
        *installed = next;
        Ok(())
    }

    /// After a failed write of `next`: deletes what it added and writes back
    /// what it overwrote (best effort: the write's error is what is reported).
    fn undo(&self, installed: &Installed, next: &Installed) {
        let table = self.hosts().ok().flatten();
        for target in next.missing_from(installed) {
            let _ = self.delete_in(table.as_ref(), target);
        }
        for e in &installed.entries {
            let _ = self.put_in(table.as_ref(), e);
        }
    }

    /// Deletes the rules that expired by `now_ns`; returns how many.
    pub fn sweep_expired(&self, installed: &mut Installed, now_ns: u64) -> Result<usize> {
        let before = installed.entries.len();
        let mut result = Ok(());
        // Expired rules have a ttl: never in the host table.
        installed.entries.retain(|e| {
            let expired = e.expires_ns != 0 && e.expires_ns <= now_ns;
            if expired && result.is_ok() {
                result = self.delete_from_trie(&e.target);
            }
            !expired
        });
        result.map(|()| before - installed.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: Action, t: &str) -> Rule {
        Rule { action, target: t.parse().unwrap(), ttl: None }
    }

    fn set(rules: &[Rule], now_ns: u64) -> Installed {
        Installed::from_rules(rules, now_ns, &HashMap::new())
    }

    fn secs(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    #[test]
    fn one_entry_per_target_sorted() {
        let s = set(
            &[rule(Action::Deny, "10.0.0.0/8"), rule(Action::Allow, "1.2.3.4"), rule(Action::Deny, "10.0.0.0/8")],
            0,
        );
        let targets: Vec<String> = s.entries.iter().map(|e| format!("{} {}", e.action, e.target)).collect();
        assert_eq!(targets, ["allow 1.2.3.4/32", "deny 10.0.0.0/8"]);
    }

    #[test]
    fn duplicates_keep_the_longer_lifetime() {
        let forever = rule(Action::Deny, "::1");
        let brief = Rule { ttl: secs(2), ..forever.clone() };
        for rules in [[forever.clone(), brief.clone()], [brief.clone(), forever.clone()]] {
            assert_eq!(set(&rules, 1_000).entries[0].expires_ns, 0, "a permanent rule stays permanent");
        }
        let long = Rule { ttl: secs(60), ..forever.clone() };
        assert_eq!(set(&[long, brief], 0).entries[0].expires_ns, 60_000_000_000);
    }

    #[test]
    fn expiry_counts_from_now_and_survives_a_reload() {
        let r = Rule { ttl: secs(2), ..rule(Action::Deny, "::1") };
        let first = set(std::slice::from_ref(&r), 1_000);
        assert_eq!(first.entries[0].expires_ns, 2_000_001_000);
        assert_eq!(set(&[rule(Action::Deny, "::1")], 1_000).entries[0].expires_ns, 0, "no ttl: never");
        // Reloaded a second later: the same expiry; after it: left out.
        let again = Installed::from_rules(std::slice::from_ref(&r), 1_000_001_000, &first.expiries);
        assert_eq!(again.entries[0].expires_ns, 2_000_001_000);
        let later = Installed::from_rules(std::slice::from_ref(&r), 3_000_000_000, &again.expiries);
        assert!(later.entries.is_empty(), "an expired rule does not come back");
        // Another ttl is another rule: it starts now.
        let changed = Rule { ttl: secs(5), ..r };
        assert_eq!(
            Installed::from_rules(&[changed], 3_000_000_000, &later.expiries).entries[0].expires_ns,
            8_000_000_000
        );
    }

    #[test]
    fn difference_of_sorted_sets() {
        let old = set(
            &[
                rule(Action::Deny, "1.1.1.1"),
                rule(Action::Deny, "2.2.2.2"),
                rule(Action::Deny, "::1"),
                rule(Action::Deny, "9.9.9.9"),
            ],
            0,
        );
        let new = set(&[rule(Action::Allow, "2.2.2.2"), rule(Action::Deny, "3.3.3.3"), rule(Action::Deny, "::1")], 0);
        let gone: Vec<String> = old.missing_from(&new).map(|t| t.to_string()).collect();
        assert_eq!(gone, ["1.1.1.1/32", "9.9.9.9/32"]);
        assert_eq!(new.missing_from(&new).count(), 0);
        assert_eq!(Installed::new().missing_from(&old).count(), 0);
        assert_eq!(old.missing_from(&Installed::new()).count(), 4);
        assert_eq!(old.union_counts(&new), [4, 1]);
    }
}
