//! `cgdrop rule add|del|list`: changes the rules of a pinned policy in place.
//! A change is one map update or delete, seen by the next packet; nothing is
//! reloaded. Expired rules are deleted whenever a command touches the policy.
//! What unmatched traffic gets was fixed when the policy was pinned and does
//! not change here (`pin --replace` changes it).
use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::{
    cli::RuleCommand,
    host::preflight,
    kernel::rulemaps::{self, Installed, RuleMaps},
    output::format_secs,
    pins::pinned::Pinned,
    rules::{Action, Target},
};

fn maps(p: &Pinned) -> RuleMaps<'_, libbpf_rs::MapHandle> {
    RuleMaps { v4: &p.rules_v4, v6: &p.rules_v6 }
}

/// Deletes the expired rules of a pinned policy and returns what is left.
pub fn live_rules(p: &Pinned) -> Result<Installed> {
    let maps = maps(p);
    let mut rules = maps.read_all()?;
    maps.sweep_expired(&mut rules, rulemaps::boot_time_ns()?)?;
    Ok(rules)
}

pub fn run(command: &RuleCommand) -> Result<()> {
    preflight::check()?;
    match command {
        RuleCommand::Add { cgroup, action, rule, ttl } => add(cgroup, *action, rule, *ttl),
        RuleCommand::Del { cgroup, words } => del(cgroup, words),
        RuleCommand::List { cgroup, json } => list(cgroup, *json),
    }
}

fn add(cgroup: &Path, action: Action, target: &Target, ttl: Option<Duration>) -> Result<()> {
    let p = Pinned::find(cgroup)?;
    live_rules(&p)?;
    let maps = maps(&p);
    if let Some((existing, _)) = maps.get(target)? {
        if existing != action {
            let state = if existing == Action::Allow { "allowed" } else { "denied" };
            bail!("{target} is already {state} on {}: `cgdrop rule del` it first", p.cgroup_path);
        }
    }
    let expires_ns = match ttl {
        Some(ttl) => rulemaps::boot_time_ns()?.saturating_add(ttl.as_nanos() as u64),
        None => 0,
    };
    p.enable_lookups(target.port != 0)?;
    maps.put(target, action, expires_ns)?;
    let lifetime = ttl.map_or(String::new(), |t| format!(" for {}", format_secs(t.as_secs())));
    crate::say!("cgdrop: {action} {target}{lifetime} on {}", p.cgroup_path);
    Ok(())
}

/// `[allow|deny] RULE`
fn parse_del_words(words: &[String]) -> Result<(Option<Action>, Target)> {
    let (action, rule) = match words {
        [rule] => (None, rule),
        [action, rule] => match action.as_str() {
            "allow" => (Some(Action::Allow), rule),
            "deny" => (Some(Action::Deny), rule),
            other => bail!("'{other}' is not an action: `cgdrop rule del --cgroup PATH [allow|deny] RULE`"),
        },
        _ => bail!("expected `[allow|deny] RULE`"),
    };
    let target: Target = rule.parse().map_err(anyhow::Error::msg).with_context(|| format!("rule '{rule}'"))?;
    Ok((action, target))
}

fn del(cgroup: &Path, words: &[String]) -> Result<()> {
    let (action, target) = parse_del_words(words)?;
    let p = Pinned::find(cgroup)?;
    live_rules(&p)?;
    let maps = maps(&p);
    match maps.get(&target)? {
        None => bail!("{} has no rule for {target} (`cgdrop rule list --cgroup {}`)", p.cgroup_path, cgroup.display()),
        Some((existing, _)) if action.is_some_and(|a| a != existing) => {
            let asked = action.map_or(String::new(), |a| a.to_string());
            bail!("the rule for {target} on {} is {existing}, not {asked}", p.cgroup_path)
        }
        Some((existing, _)) => {
            maps.delete(&target)?;
            crate::say!("cgdrop: deleted {existing} {target} on {}", p.cgroup_path);
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct RuleJson {
    action: String,
    rule: String,
    /// Seconds left; null = never expires.
    expires_in_secs: Option<u64>,
}

fn list(cgroup: &Path, json: bool) -> Result<()> {
    let p = Pinned::find(cgroup)?;
    let rules = live_rules(&p)?;
    let now_ns = rulemaps::boot_time_ns()?;
    let left = |exp: u64| (exp != 0).then(|| exp.saturating_sub(now_ns) / 1_000_000_000);
    if json {
        let out: Vec<RuleJson> = rules
            .0
            .iter()
            .map(|(t, a, exp)| RuleJson { action: a.to_string(), rule: t.to_string(), expires_in_secs: left(*exp) })
            .collect();
        crate::outln!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let unmatched = if p.unmatched_pass()? { "passes" } else { "is dropped" };
    crate::outln!("# {}: {} rules; traffic no rule matches {unmatched}", p.cgroup_path, rules.0.len());
    for (t, a, exp) in &rules.0 {
        let ttl = left(*exp).map_or("never expires".to_string(), |s| format!("expires in {}", format_secs(s)));
        crate::outln!("{a:<5} {:<44} {ttl}", t.to_string());
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
