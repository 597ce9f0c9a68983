//! The validated policy: what the rest of cgdrop takes instead of CLI flags.
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::{
    cli::PolicyArgs,
    rules::{self, Action, PortRange, RejectWith, Rule},
};

/// What to drop, checked and resolved (interface name to index, rules file read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub ingress: bool,
    pub egress: bool,
    /// Interface name and index; `None` means every interface.
    pub iface: Option<(String, u32)>,
    /// Port to match against source or destination; `None` means every port.
    pub port: Option<PortRange>,
    /// The rules of the command line followed by those of the rules file.
    pub rules: Vec<Rule>,
    /// Where the file rules came from (SIGHUP re-reads it).
    pub rules_file: Option<PathBuf>,
    /// The command line's rules alone, the part of `rules` a reload of
    /// the file keeps.
    pub cli_rules: Vec<Rule>,
    pub silent: bool,
    pub dry_run: bool,
    /// Drop/reject events per second at most (`--log-rate`); 0 = none.
    pub log_rate: u32,
    /// Close the cgroup's connections the policy drops when it is attached.
    pub kill_existing: bool,
    /// Inbound TCP connection requests are dropped (and, with no rules, only they).
    pub no_new_inbound: bool,
    pub reject_with: RejectWith,
}

impl Policy {
    /// Builds a policy from the flags, resolving `--iface` with `if_nametoindex`.
    pub fn from_args(args: &PolicyArgs) -> Result<Self> {
        Self::with_resolver(args, |name| nix::net::if_::if_nametoindex(name).ok())
    }

    /// As `from_args`, with the interface lookup passed in (unit tests).
    pub fn with_resolver(args: &PolicyArgs, resolve: impl Fn(&str) -> Option<u32>) -> Result<Self> {
        let (ingress, egress) = match (args.ingress, args.egress) {
            (true, false) => (true, false),
            (false, true) => (false, true),
            _ => (true, true),
        };
        let iface = match &args.iface {
            None => None,
            Some(name) => match resolve(name) {
                Some(index) => Some((name.clone(), index)),
                None => bail!("unknown interface '{name}': `ip link` lists the interfaces of this network namespace"),
            },
        };
        let flags = args
            .block
            .iter()
            .flat_map(|t| t.0.iter().map(|t| (Action::Deny, t)))
            .chain(args.allow.iter().flat_map(|t| t.0.iter().map(|t| (Action::Allow, t))));
        let mut policy = Self {
            ingress,
            egress,
            iface,
            port: args.port,
            rules: Vec::new(),
            rules_file: args.rules_file.clone(),
            cli_rules: flags.map(|(action, t)| Rule { action, target: *t, ttl: None }).collect(),
            silent: args.silent,
            dry_run: args.dry_run,
            log_rate: args.log_rate,
            kill_existing: args.kill_existing,
            no_new_inbound: args.no_new_inbound,
            reject_with: args.reject_with,
        };
        let file_rules = match &args.rules_file {
            Some(path) => rules::read_rules_file(path)?,
            None => Vec::new(),
        };
        policy.set_file_rules(file_rules)?;
        Ok(policy)
    }

    /// The same policy with the rules file read again (SIGHUP); `None` when
    /// the policy has no rules file.
    pub fn reloaded(&self) -> Option<Result<Self>> {
        let path = self.rules_file.as_ref()?;
        let mut next = self.clone();
        Some(rules::read_rules_file(path).and_then(|file_rules| next.set_file_rules(file_rules)).map(|()| next))
    }

    /// The policy without its rules: what a reload starts from (it reads
    /// them again), without a second copy of a million rules in memory.
    pub fn without_rules(&self) -> Self {
        Self {
            rules: Vec::new(),
            iface: self.iface.clone(),
            rules_file: self.rules_file.clone(),
            cli_rules: self.cli_rules.clone(),
            ..*self
        }
    }

    /// Sets the rules: the command line's, then `file_rules` (taken as they
    /// are, the command line's put in front: no second copy of the file's).
    fn set_file_rules(&mut self, mut file_rules: Vec<Rule>) -> Result<()> {
        file_rules.reserve_exact(self.cli_rules.len());
        file_rules.splice(0..0, self.cli_rules.iter().cloned());
        let rules = file_rules;
        rules::check_capacity(&rules)?;
        rules::check_conflicts(&rules)?;
        self.rules = rules;
        Ok(())
    }

    /// Whether traffic that no rule matches passes: only in a block list,
    /// that is a policy with at least one deny rule.
    pub fn unmatched_pass(&self) -> bool {
        // --no-new-inbound alone drops inbound connection requests and nothing else.
        self.rules.iter().any(|r| r.action == Action::Deny) || (self.no_new_inbound && self.rules.is_empty())
    }

    /// The interface index for the BPF programs (0 = every interface).
    pub fn ifindex(&self) -> u32 {
        self.iface.as_ref().map_or(0, |(_, index)| *index)
    }

    /// Whether connect() and sendto() are rejected at once (not with --silent,
    /// nor with --iface: the outgoing interface is unknown at connect() time).
    pub fn rejects_calls(&self) -> bool {
        self.iface.is_none() && !self.silent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cli::Cli, output::describe};
    use clap::Parser;

    fn policy(args: &[&str]) -> Result<Policy> {
        let cli = Cli::try_parse_from(["cgdrop", "--cgroup", "x"].iter().chain(args))?;
        Policy::with_resolver(&cli.foreground.policy, |n| (n == "lo").then_some(1))
    }

    #[test]
    fn both_directions_by_default() {
        let p = policy(&[]).unwrap();
        assert!(p.ingress && p.egress);
        assert_eq!(p.ifindex(), 0);
        assert_eq!(p.port, None);
        assert!(p.rejects_calls());
        assert!(!p.unmatched_pass(), "no rules: everything in scope is dropped");
    }

    #[test]
    fn single_direction() {
        let p = policy(&["--egress"]).unwrap();
        assert!(!p.ingress && p.egress);
        let p = policy(&["--ingress"]).unwrap();
        assert!(p.ingress && !p.egress);
        let p = policy(&["--both"]).unwrap();
        assert!(p.ingress && p.egress);
    }

    #[test]
    fn directions_conflict() {
        let err = policy(&["--egress", "--ingress"]).unwrap_err();
        assert!(err.to_string().contains("cannot be used with"), "{err}");
    }

    #[test]
    fn interface_resolved() {
        let p = policy(&["--iface", "lo"]).unwrap();
        assert_eq!(p.ifindex(), 1);
        assert!(!p.rejects_calls());
        let err = policy(&["--iface", "nosuch0"]).unwrap_err();
        assert!(err.to_string().contains("unknown interface 'nosuch0'"), "{err}");
    }

    #[test]
    fn port_range() {
        let range = |lo, hi| Some(PortRange { lo, hi });
        assert_eq!(policy(&["--port", "1"]).unwrap().port, range(1, 1));
        assert_eq!(policy(&["--port", "65535"]).unwrap().port, range(65535, 65535));
        assert_eq!(policy(&["--port", "8000-8100"]).unwrap().port, range(8000, 8100));
        for bad in ["0", "65536", "-1", "http-nosuch", "9-8", "1-65536", "a b"] {
            assert!(policy(&["--port", bad]).is_err(), "port {bad} accepted");
        }
    }

    #[test]
    fn interval_must_be_positive() {
        assert!(Cli::try_parse_from(["cgdrop", "--cgroup", "x", "--interval", "0"]).is_err());
        assert!(Cli::try_parse_from(["cgdrop", "--cgroup", "x", "--interval", "2"]).is_ok());
    }

    #[test]
    fn rules_from_flags() {
        let p = policy(&["--allow", "127.0.0.0/8", "--allow", "::1"]).unwrap();
        assert_eq!(p.rules.len(), 2);
        assert!(!p.unmatched_pass(), "allow-only: the rest is dropped");
        let p = policy(&["--block", "10.0.0.0/8", "--allow", "10.1.0.0/16"]).unwrap();
        assert!(p.unmatched_pass(), "a block list passes the rest");
        assert!(policy(&["--block", "10.0.0.0/33"]).is_err());
        let err = policy(&["--block", "10.0.0.0/8", "--allow", "10.0.0.0/8"]).unwrap_err();
        assert!(err.to_string().contains("both allowed and denied"), "{err}");
    }

    #[test]
    fn silent_does_not_reject_calls() {
        assert!(!policy(&["--silent"]).unwrap().rejects_calls());
        assert!(policy(&["--dry-run"]).unwrap().rejects_calls());
    }

    #[test]
    fn describe_names_what_is_dropped() {
        assert_eq!(describe(&policy(&[]).unwrap()), "ingress+egress traffic on every interface, every port");
        assert_eq!(
            describe(&policy(&["--egress", "--iface", "lo", "--port", "80"]).unwrap()),
            "egress traffic on interface lo, port 80"
        );
        assert_eq!(
            describe(&policy(&["--block", "10.0.0.0/8", "--dry-run"]).unwrap()),
            "ingress+egress traffic on every interface, every port, to or from 1 denied target(s) (dry run: nothing is dropped)"
        );
    }
}
