//! `cgdrop rule add|del|list`: changes the rules of a pinned policy in place.
//! A change is one map update or delete, seen by the next packet; nothing is
//! reloaded. Changes to one policy are serialised (`flock` on its directory).
//! `add` and `del` mean this exact rule (target and prefix), never a
//! longer-prefix match. Expired rules are deleted whenever a command touches the policy.
//! What unmatched traffic gets was fixed when the policy was pinned and does
//! not change here (`pin --replace` changes it).
use std::{
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::{
    cli::{RuleCommand, RuleTarget},
    host::preflight,
    kernel::{
        hits,
        rulemaps::{self, Entry, Installed, RuleMaps},
    },
    output::format_secs,
    pins::pinned::Pinned,
    rules::{Action, Targets},
};

fn maps(p: &Pinned) -> RuleMaps<'_, libbpf_rs::MapHandle> {
    p.rule_maps()
}

/// Deletes the expired rules of a pinned policy and returns what is left.
pub fn live_rules(p: &Pinned) -> Result<Installed> {
    let maps = maps(p);
    let mut rules = maps.read_all()?;
    maps.sweep_expired(&mut rules, rulemaps::boot_time_ns()?)?;
    Ok(rules)
}

/// The pinned policy of `cgroup`, locked. A `pin --replace` that held the
/// lock may have swapped the directory meanwhile: then the new one is taken.
fn locked(cgroup: &Path) -> Result<(Pinned, OwnedFd)> {
    for _ in 0..10 {
        let p = Pinned::find(cgroup)?;
        let lock = p.lock()?;
        let ino = |m: std::fs::Metadata| m.ino();
        let held = nix::sys::stat::fstat(lock.as_raw_fd()).map(|st| st.st_ino).ok();
        if std::fs::metadata(&p.dir).map(ino).ok() == held {
            return Ok((p, lock));
        }
    }
    bail!("the policy of {} kept changing under `rule`: try again", cgroup.display())
}

fn path(t: &RuleTarget) -> Result<std::path::PathBuf> {
    t.target.required()?.resolve()
}

pub fn run(command: &RuleCommand) -> Result<()> {
    preflight::check()?;
    match command {
        RuleCommand::Add { target, action, rule, ttl, kill_existing } => {
            add(&path(target)?, *action, rule, *ttl, *kill_existing)
        }
        RuleCommand::Del { target, words } => del(&path(target)?, words),
        RuleCommand::List { target, json } => list(&path(target)?, *json),
    }
}

fn add(cgroup: &Path, action: Action, targets: &Targets, ttl: Option<Duration>, kill_existing: bool) -> Result<()> {
    let (p, _lock) = locked(cgroup)?;
    let before = live_rules(&p)?.entries.len();
    let maps = maps(&p);
    let expires = match ttl {
        Some(ttl) => rulemaps::boot_time_ns()?.saturating_add(ttl.as_nanos() as u64),
        None => 0,
    };
    // All checked first: a port range is added whole or not at all.
    let mut entries = Vec::new();
    let mut note = String::new();
    // Entries the tries will gain (a rule added again replaces itself).
    let mut new = 0;
    for target in &targets.0 {
        let mut expires_ns = expires;
        let existing = maps.get(target)?;
        new += usize::from(existing.is_none());
        if let Some(existing) = existing {
            if existing.action != action {
                let state = if existing.action == Action::Allow { "allowed" } else { "denied" };
                bail!("{target} is already {state} on {}: `cgdrop rule del` it first", p.cgroup_path);
            }
            // The same rule again: it keeps the longer of the two lifetimes.
            let merged = rulemaps::longer(existing.expires_ns, expires_ns);
            if merged != expires_ns {
                note = if merged == 0 {
                    " (it was already there without a ttl: it stays permanent)".into()
                } else {
                    " (it was already there for longer: it keeps that)".into()
                };
            }
            expires_ns = merged;
        }
        entries.push(Entry { target: *target, action, expires_ns, live: true });
    }
    p.enable_lookups(targets.0.iter().any(|t| t.port != 0))?;
    for e in &entries {
        maps.put(e)?;
    }
    let lifetime = ttl.map_or(String::new(), |t| format!(" for {}", format_secs(t.as_secs())));
    let shown = match targets.0.as_slice() {
        [one] => one.to_string(),
        [first, .., last] => format!("{first} to port {} ({} rules)", last.port, targets.0.len()),
        [] => String::new(),
    };
    crate::say!("cgdrop: {action} {shown}{lifetime} on {}{note}", p.cgroup_path);
    let capacity = libbpf_rs::MapCore::max_entries(&p.rule_hits) as usize;
    if before + new > capacity {
        crate::say!(
            "cgdrop: note: this policy was loaded to count the hits of {capacity} rules and now has more: the rules beyond count no hits (`cgdrop pin --replace` loads it for its size)"
        );
    }
    if action == Action::Deny {
        let dry_run = p.config()?.dry_run;
        if let Some(line) = crate::kernel::sockets::describe(&p.sockets(kill_existing), kill_existing, dry_run) {
            crate::say!("{line}");
        }
    }
    Ok(())
}

/// `[allow|deny] RULE`
fn parse_del_words(words: &[String]) -> Result<(Option<Action>, Targets)> {
    let (action, rule) = match words {
        [rule] => (None, rule),
        [action, rule] => match action.as_str() {
            "allow" => (Some(Action::Allow), rule),
            "deny" => (Some(Action::Deny), rule),
            other => bail!("'{other}' is not an action: `cgdrop rule del --cgroup PATH [allow|deny] RULE`"),
        },
        _ => bail!("expected `[allow|deny] RULE`"),
    };
    let targets: Targets = rule.parse().map_err(anyhow::Error::msg).with_context(|| format!("rule '{rule}'"))?;
    Ok((action, targets))
}

fn del(cgroup: &Path, words: &[String]) -> Result<()> {
    let (action, targets) = parse_del_words(words)?;
    let (p, _lock) = locked(cgroup)?;
    live_rules(&p)?;
    let maps = maps(&p);
    let asked = action.map_or(String::new(), |a| format!("{a} "));
    // A port range: every port's rule must be there (checked first), then all go.
    let (last, first) = targets.0.split_last().context("no rule")?;
    for target in first {
        match maps.get(target)? {
            Some(existing) if action.is_none_or(|a| a == existing.action) => {}
            _ => bail!("no such rule: {} has no rule for {asked}{target}, so the range is not deleted", p.cgroup_path),
        }
    }
    let target = *last;
    match maps.get(&target)? {
        Some(existing) if action.is_none_or(|a| a == existing.action) => {
            for t in &targets.0 {
                maps.delete(t)?;
                hits::forget(&p.rule_hits, t);
            }
            let shown = if targets.0.len() > 1 { words[words.len() - 1].clone() } else { target.to_string() };
            crate::say!("cgdrop: deleted {} {shown} on {}", existing.action, p.cgroup_path);
            Ok(())
        }
        Some(existing) => bail!(
            "no such rule: {} has no rule {asked}{target} (the rule for {target} is {}: `cgdrop rule del {} {target}`)",
            p.cgroup_path,
            existing.action,
            existing.action
        ),
        None => bail!(
            "no such rule: {} has no rule for {asked}{target} (`cgdrop rule list --cgroup {}` lists them)",
            p.cgroup_path,
            cgroup.display()
        ),
    }
}

#[derive(Serialize)]
struct RuleJson {
    action: String,
    rule: String,
    /// Seconds left; null = never expires.
    expires_in_secs: Option<u64>,
    /// Added with `rule add` (`pin --replace` carries it over).
    added_live: bool,
    /// Packets and calls the rule decided.
    hits: u64,
    /// null = never.
    last_hit_secs_ago: Option<u64>,
}

fn list(cgroup: &Path, json: bool) -> Result<()> {
    let p = Pinned::find(cgroup)?;
    let rules = live_rules(&p)?;
    let now_ns = rulemaps::boot_time_ns()?;
    let left = |exp: u64| (exp != 0).then(|| exp.saturating_sub(now_ns) / 1_000_000_000);
    if json {
        let out: Vec<RuleJson> = rules
            .entries
            .iter()
            .map(|e| {
                let h = hits::of(&p.rule_hits, &e.target);
                RuleJson {
                    action: e.action.to_string(),
                    rule: e.target.to_string(),
                    expires_in_secs: left(e.expires_ns),
                    added_live: e.live,
                    hits: h.hits,
                    last_hit_secs_ago: (h.last_ns != 0).then(|| now_ns.saturating_sub(h.last_ns) / 1_000_000_000),
                }
            })
            .collect();
        crate::outln!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let unmatched = if p.unmatched_pass()? { "passes" } else { "is dropped" };
    crate::outln!("# {}: {} rules; traffic no rule matches {unmatched}", p.cgroup_path, rules.entries.len());
    // A port range (one entry per port in the tries) is one line, as it was written.
    let mut i = 0;
    while i < rules.entries.len() {
        let e = &rules.entries[i];
        let mut end = i;
        while let Some(next) = rules.entries.get(end + 1) {
            let prev = &rules.entries[end];
            let same = next.target.addr == e.target.addr
                && next.target.prefix == e.target.prefix
                && e.target.port != 0
                && next.target.port == prev.target.port + 1
                && (next.action, next.live, next.expires_ns) == (e.action, e.live, e.expires_ns);
            if !same {
                break;
            }
            end += 1;
        }
        let group = &rules.entries[i..=end];
        let shown = if group.len() == 1 {
            e.target.to_string()
        } else {
            let whole = e.target.to_string();
            format!("{whole}-{}", group[group.len() - 1].target.port)
        };
        let ttl = left(e.expires_ns).map_or("never expires".to_string(), |s| format!("expires in {}", format_secs(s)));
        let live = if e.live { " (rule add)" } else { "" };
        let hit_list: Vec<_> = group.iter().map(|g| hits::of(&p.rule_hits, &g.target)).collect();
        let total: u64 = hit_list.iter().map(|h| h.hits).sum();
        let last_ns = hit_list.iter().map(|h| h.last_ns).max().unwrap_or(0);
        let last = if last_ns == 0 {
            String::new()
        } else {
            format!(", last {}", crate::output::age(now_ns.saturating_sub(last_ns) / 1_000_000_000))
        };
        crate::outln!("{:<5} {:<44} {ttl}{live}; {total} hits{last}", e.action, shown);
        i = end + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn del_words() {
        let w = |v: &[&str]| parse_del_words(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(w(&["10.0.0.0/8"]).unwrap(), (None, "10.0.0.0/8".parse().unwrap()));
        assert_eq!(w(&["deny", "::1"]).unwrap(), (Some(Action::Deny), "::1".parse().unwrap()));
        assert!(w(&["block", "::1"]).is_err());
        assert!(w(&["deny", "::1/129"]).is_err());
    }
}
