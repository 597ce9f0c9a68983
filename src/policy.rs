//! The validated policy: what the rest of cgdrop takes instead of CLI flags.
use anyhow::{bail, Result};

use crate::cli::PolicyArgs;

/// What to drop, checked and resolved (interface name to index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub ingress: bool,
    pub egress: bool,
    /// Interface name and index; `None` means every interface.
    pub iface: Option<(String, u32)>,
    /// Port to match against source or destination; `None` means every port.
    pub port: Option<u16>,
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
        Ok(Self {
            ingress,
            egress,
            iface,
            port: args.port,
        })
    }

    /// The interface index for the BPF programs (0 = every interface).
    pub fn ifindex(&self) -> u32 {
        self.iface.as_ref().map_or(0, |(_, index)| *index)
    }

    /// Whether connect() is rejected at once (it is not with --iface: the
    /// outgoing interface is unknown when connect() is called).
    pub fn rejects_connect(&self) -> bool {
        self.iface.is_none()
    }

    /// A short human description, e.g. "egress on lo, port 8080".
    pub fn describe(&self) -> String {
        let dirs = match (self.ingress, self.egress) {
            (true, true) => "ingress+egress",
            (true, false) => "ingress",
            _ => "egress",
        };
        let iface = self
            .iface
            .as_ref()
            .map_or("every interface".to_string(), |(n, _)| {
                format!("interface {n}")
            });
        let port = self
            .port
            .map_or("every port".to_string(), |p| format!("port {p}"));
        format!("{dirs} traffic on {iface}, {port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn policy(args: &[&str]) -> Result<Policy> {
        let cli = Cli::try_parse_from(["cgdrop", "--cgroup", "x"].iter().chain(args))?;
        Policy::with_resolver(&cli.policy, |n| (n == "lo").then_some(1))
    }

    #[test]
    fn both_directions_by_default() {
        let p = policy(&[]).unwrap();
        assert!(p.ingress && p.egress);
        assert_eq!(p.ifindex(), 0);
        assert_eq!(p.port, None);
        assert!(p.rejects_connect());
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
        assert!(!p.rejects_connect());
        let err = policy(&["--iface", "nosuch0"]).unwrap_err();
        assert!(
            err.to_string().contains("unknown interface 'nosuch0'"),
            "{err}"
        );
    }

    #[test]
    fn port_range() {
        assert_eq!(policy(&["--port", "1"]).unwrap().port, Some(1));
        assert_eq!(policy(&["--port", "65535"]).unwrap().port, Some(65535));
        for bad in ["0", "65536", "-1", "http"] {
            assert!(policy(&["--port", bad]).is_err(), "port {bad} accepted");
        }
    }

    #[test]
    fn interval_must_be_positive() {
        assert!(Cli::try_parse_from(["cgdrop", "--cgroup", "x", "--interval", "0"]).is_err());
        assert!(Cli::try_parse_from(["cgdrop", "--cgroup", "x", "--interval", "2"]).is_ok());
    }

    #[test]
    fn describe_names_what_is_dropped() {
        assert_eq!(
            policy(&[]).unwrap().describe(),
            "ingress+egress traffic on every interface, every port"
        );
        assert_eq!(
            policy(&["--egress", "--iface", "lo", "--port", "80"])
                .unwrap()
                .describe(),
            "egress traffic on interface lo, port 80"
        );
    }
}
