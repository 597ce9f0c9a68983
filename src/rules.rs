//! The rule language. A target is `CIDR[:PORT]` (`10.0.0.0/8`, `8.8.8.8:53`,
//! `2001:db8::/32`, `[2001:db8::1]:443`; a bare address is a /32 or /128;
//! `::ffff:a.b.c.d` is the IPv4 address). A rule is an action on a target with
//! an optional time to live. Rules come from `--allow`/`--block` and from rules
//! files: one `allow|deny TARGET [ttl=DURATION]` per line, `#` comments.
use std::{
    fmt, fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    str::FromStr,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::kernel::config::MAX_RULES_PER_FAMILY;

/// What a rule does to matching traffic (also the `rule add|del` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Action {
    Allow,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// The error a rejected connect() or sendto() gets (`--reject-with`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RejectWith {
    /// EPERM ("Operation not permitted"): what cgroup programs give by default.
    #[default]
    Eperm,
    /// ECONNREFUSED, as a closed port gives: clients that retry EPERM give up.
    Refused,
    /// ECONNRESET, as a reset connection gives.
    Reset,
}

impl RejectWith {
    /// The errno's name, as users read it.
    pub fn name_of(errno: u32) -> &'static str {
        match errno as i32 {
            nix::libc::ECONNREFUSED => "ECONNREFUSED",
            nix::libc::ECONNRESET => "ECONNRESET",
            _ => "EPERM",
        }
    }

    /// The errno the BPF programs set; 0 leaves the kernel's EPERM.
    pub fn errno(self) -> u32 {
        match self {
            RejectWith::Eperm => 0,
            RejectWith::Refused => nix::libc::ECONNREFUSED as u32,
            RejectWith::Reset => nix::libc::ECONNRESET as u32,
        }
    }
}

/// An address prefix and an optional port: what a rule matches. The address
/// has its host bits cleared; IPv4-mapped IPv6 prefixes are stored as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub addr: IpAddr,
    pub prefix: u8,
    /// 0 = any port.
    pub port: u16,
}

/// A port or an inclusive range of ports (`443`, `8000-8100`, `https`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    /// `N`, `N-M` (1-65535, N ≤ M) or a service name from /etc/services.
    fn from_str(s: &str) -> Result<Self, String> {
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let number = |p: &str| match p.parse::<u16>() {
            Ok(n) if n >= 1 && digits(p) => Ok(n),
            _ => {
                Err(format!("port '{p}' is not a number from 1 to 65535, a range such as 8000-8100, or a service name"))
            }
        };
        if digits(s) {
            return number(s).map(|n| Self { lo: n, hi: n });
        }
        if let Some((a, b)) = s.split_once('-').filter(|(a, b)| digits(a) && digits(b)) {
            let (lo, hi) = (number(a)?, number(b)?);
            if lo > hi {
                return Err(format!("port range '{s}' ends before it starts: write {hi}-{lo}"));
            }
            return Ok(Self { lo, hi });
        }
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(format!(
                "port '{s}' is not a number from 1 to 65535, a range such as 8000-8100, or a service name"
            ));
        }
        service_port(s).map(|p| Self { lo: p, hi: p })
    }
}

/// The port of a service name (or alias) in /etc/services; TCP's entry first.
pub fn service_port(name: &str) -> Result<u16, String> {
    let text = fs::read_to_string("/etc/services")
        .map_err(|e| format!("'{name}' is not a port, and /etc/services cannot be read to look it up: {e}"))?;
    let mut udp = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let (Some(service), Some(spec)) = (words.next(), words.next()) else { continue };
        if service != name && !words.any(|alias| alias == name) {
            continue;
        }
        let Some((port, proto)) = spec.split_once('/') else { continue };
        let Ok(port) = port.parse::<u16>() else { continue };
        if proto == "tcp" {
            return Ok(port);
        }
        udp.get_or_insert(port);
    }
    udp.ok_or_else(|| format!("port '{name}' is neither a number from 1 to 65535, a range such as 8000-8100, nor a service in /etc/services"))
}

/// The targets one rule argument stands for: a port range is one target per
/// port (the kernel's tries match single ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(pub Vec<Target>);

/// Ports one range in a rule may cover (each port is an entry in the tries).
pub const MAX_RANGE_PORTS: u32 = 4096;

impl FromStr for Targets {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (cidr, port) = split_port(s)?;
        let Some(port) = port else { return Target::from_str(s).map(|t| Self(vec![t])) };
        let range: PortRange = port.parse()?;
        let n = u32::from(range.hi) - u32::from(range.lo) + 1;
        if n > MAX_RANGE_PORTS {
            return Err(format!(
                "port range {range} in '{s}' has {n} ports: a rule takes at most {MAX_RANGE_PORTS} (each is an entry in the kernel's table); split it, or use --port for the policy"
            ));
        }
        let base = Target::from_str(cidr)?;
        Ok(Self((range.lo..=range.hi).map(|p| Target { port: p, ..base }).collect()))
    }
}

/// One rule: action, target, and how long it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub target: Target,
    pub ttl: Option<Duration>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.port) {
            (IpAddr::V4(a), 0) => write!(f, "{a}/{}", self.prefix),
            (IpAddr::V4(a), p) => write!(f, "{a}/{}:{p}", self.prefix),
            (IpAddr::V6(a), 0) => write!(f, "{a}/{}", self.prefix),
            (IpAddr::V6(a), p) => write!(f, "[{a}/{}]:{p}", self.prefix),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action, self.target)?;
        if let Some(ttl) = self.ttl {
            write!(f, " ttl={}s", ttl.as_secs())?;
        }
        Ok(())
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (cidr, port) = split_port(s)?;
        let (addr, prefix) = match cidr.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (cidr, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("'{addr}' is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("prefix length '/{p}' is not a number from 0 to {max}")),
            },
        };
        let port = match port {
            None => 0,
            Some(p) => match p.parse::<PortRange>()? {
                PortRange { lo, hi } if lo == hi => lo,
                r => return Err(format!("port range {r} where one port is expected: give one port")),
            },
        };
        Ok(Target::new(addr, prefix, port))
    }
}

/// Splits `ADDR[/N][:PORT]` or `[ADDR[/N]]:PORT`; an IPv6 address without
/// brackets has no port.
fn split_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if s.is_empty() {
        return Err("empty rule: expected CIDR[:PORT], e.g. 10.0.0.0/8 or [2001:db8::1]:443".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(format!("'{s}' is missing its ']': write [IPv6]:PORT"));
        };
        return match after {
            "" => Ok((inside, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((inside, Some(port))),
                None => Err(format!("unexpected '{after}' after ']' in '{s}': write [ADDR/PREFIX]:PORT")),
            },
        };
    }
    if s.contains(']') {
        return Err(format!("'{s}' has a ']' without its '['"));
    }
    match s.matches(':').count() {
        0 => Ok((s, None)),
        1 => {
            let (addr, port) = s.split_once(':').unwrap_or((s, ""));
            Ok((addr, Some(port)))
        }
        // An IPv6 address; its port, if any, needs brackets. `2001:db8::1:443`
        // is a valid address too, but most likely meant a port: refused.
        _ => {
            if let Some((addr, last)) = s.rsplit_once(':') {
                let digits = !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) && last.len() >= 2;
                if !s.contains('/') && digits && addr.parse::<Ipv6Addr>().is_ok() {
                    return Err(format!(
                        "'{s}' is ambiguous: write [{addr}]:{last} for port {last} of {addr}, or {s}/128 for the address"
                    ));
                }
            }
            Ok((s, None))
        }
    }
}

impl Target {
    /// Builds a target, clearing host bits and turning `::ffff:a.b.c.d/n`
    /// (n ≥ 96) into the IPv4 prefix it stands for.
    pub fn new(addr: IpAddr, prefix: u8, port: u16) -> Self {
        let (addr, prefix) = match addr {
            IpAddr::V6(a) if prefix >= 96 && a.to_ipv4_mapped().is_some() => {
                (IpAddr::V4(a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)), prefix - 96)
            }
            other => (other, prefix),
        };
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Self { addr, prefix, port }
    }
}

/// Parses `30s`, `5m`, `1h`, `2d`: a whole number and a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let secs_per = match unit {
        "s" => 1u64,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "" => return Err(format!("duration '{s}' needs a unit: s, m, h or d (e.g. 30s, 5m)")),
        _ => return Err(format!("duration '{s}' has an unknown unit '{unit}': use s, m, h or d")),
    };
    let n: u64 = num.parse().map_err(|_| format!("duration '{s}' does not start with a whole number"))?;
    // Ten years is far beyond any sensible TTL and keeps expiry arithmetic in range.
    const MAX_SECS: u64 = 10 * 365 * 86400;
    match n.checked_mul(secs_per) {
        Some(0) => Err(format!("duration '{s}' is zero: omit the ttl for a rule that never expires")),
        Some(secs) if secs <= MAX_SECS => Ok(Duration::from_secs(secs)),
        _ => Err(format!("duration '{s}' is too long: at most 3650d")),
    }
}

/// Parses the text of a rules file; errors name the line. A large file is
/// parsed in two halves at once (a million rules: ~0.35 s on one core).
pub fn parse_rules(text: &str) -> Result<Vec<Rule>> {
    const SPLIT_ABOVE: usize = 1 << 20;
    let cut = text.len() / 2;
    // Bytes, not chars: `cut` may fall inside a character (a newline never does).
    let newline = text.as_bytes()[cut..].iter().position(|b| *b == b'\n');
    let at = match newline {
        Some(nl) if text.len() > SPLIT_ABOVE => cut + nl + 1,
        _ => return parse_lines(text, 0),
    };
    let (first, second) = text.split_at(at);
    let first_lines = first.bytes().filter(|b| *b == b'\n').count();
    let (a, b) = std::thread::scope(|scope| {
        let b = scope.spawn(|| parse_lines(second, first_lines));
        (parse_lines(first, 0), b.join())
    });
    let mut rules = a?;
    rules.extend(b.map_err(|_| anyhow::anyhow!("parsing the rules file failed"))??);
    Ok(rules)
}

/// The rules of `text`, whose first line is line `skipped + 1` of the file.
fn parse_lines(text: &str, skipped: usize) -> Result<Vec<Rule>> {
    // One rule a line, as a rules file mostly is: no regrowing (a copy of
    // the whole vector at twice its size) at the peak of a large load.
    let mut rules = Vec::with_capacity(text.bytes().filter(|b| *b == b'\n').count() + 1);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        parse_line(line, &mut rules).with_context(|| format!("line {}", skipped + i + 1))?;
    }
    Ok(rules)
}

/// Appends the rules of one line (a port range is one rule per port).
fn parse_line(line: &str, out: &mut Vec<Rule>) -> Result<()> {
    let mut words = line.split_whitespace();
    let action = match words.next() {
        Some("allow") => Action::Allow,
        Some("deny") => Action::Deny,
        Some(w) => bail!("'{w}' is not an action: a line is `allow|deny CIDR[:PORT] [ttl=DURATION]`"),
        None => bail!("empty line"),
    };
    let Some(target) = words.next() else { bail!("'{line}' has no target after '{action}'") };
    let targets = Targets::from_str(target).map_err(anyhow::Error::msg)?;
    let ttl = match words.next() {
        None => None,
        Some(w) => match w.strip_prefix("ttl=") {
            Some(d) => Some(parse_duration(d).map_err(anyhow::Error::msg)?),
            None => bail!("unexpected '{w}': only ttl=DURATION may follow the target"),
        },
    };
    if let Some(extra) = words.next() {
        bail!("unexpected '{extra}' at the end of the line");
    }
    out.extend(targets.0.into_iter().map(|target| Rule { action, target, ttl }));
    Ok(())
}

/// The largest rules file read: room for the rule limit of both families
/// with comments (a rule line is at most about 60 bytes).
pub const MAX_RULES_FILE_BYTES: u64 = 256 << 20;

/// Reads and parses a rules file. Only a regular file of at most
/// MAX_RULES_FILE_BYTES: a FIFO would block the reader, /dev/zero never ends.
/// Opened non-blocking, so that not even the open can hang.
pub fn read_rules_file(path: &Path) -> Result<Vec<Rule>> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let what = || format!("rules file {}", path.display());
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("reading {}", what()))?;
    let meta = file.metadata().with_context(|| format!("reading {}", what()))?;
    if !meta.is_file() {
        bail!("reading {}: not a regular file (pipes, devices and directories are not read)", what());
    }
    if meta.len() > MAX_RULES_FILE_BYTES {
        bail!("{} has {} bytes: at most {MAX_RULES_FILE_BYTES} are read", what(), meta.len());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_RULES_FILE_BYTES + 1).read_to_end(&mut bytes).with_context(|| format!("reading {}", what()))?;
    if bytes.len() as u64 > MAX_RULES_FILE_BYTES {
        bail!("{} grew past {MAX_RULES_FILE_BYTES} bytes while being read", what());
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("byte {} is not UTF-8 text", e.utf8_error().valid_up_to()))
        .with_context(what)?;
    parse_rules(&text).with_context(what)
}

/// Refuses more rules of one family than the tries hold.
/// A target given twice is one rule in the kernel, and counts once.
pub fn check_capacity(rules: &[Rule]) -> Result<()> {
    let mut targets: Vec<&Target> = rules.iter().map(|r| &r.target).collect();
    targets.sort_unstable();
    targets.dedup();
    let v4 = targets.iter().filter(|t| t.addr.is_ipv4()).count();
    for (family, n) in [("IPv4", v4), ("IPv6", targets.len() - v4)] {
        if n > MAX_RULES_PER_FAMILY {
            bail!(
                "{n} {family} rules: the kernel's rule table holds at most {MAX_RULES_PER_FAMILY} per address family"
            );
        }
    }
    Ok(())
}

/// Refuses a target that is both allowed and denied: which one was meant?
pub fn check_conflicts(rules: &[Rule]) -> Result<()> {
    // Sorting beats hashing here: a million rules are checked in tens of ms.
    let mut by_target: Vec<(&Target, Action)> = rules.iter().map(|r| (&r.target, r.action)).collect();
    by_target.sort_unstable_by_key(|(t, _)| *t);
    for pair in by_target.windows(2) {
        if pair[0].0 == pair[1].0 && pair[0].1 != pair[1].1 {
            bail!("{} is both allowed and denied: keep one of the two rules", pair[0].0);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> String {
        Target::from_str(s).map(|t| t.to_string()).unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn every_target_form() {
        assert_eq!(t("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(t("8.8.8.8:53"), "8.8.8.8/32:53");
        assert_eq!(t("8.8.8.8"), "8.8.8.8/32");
        assert_eq!(t("10.0.0.0/8:443"), "10.0.0.0/8:443");
        assert_eq!(t("2001:db8::/32"), "2001:db8::/32");
        assert_eq!(t("[2001:db8::1]:443"), "[2001:db8::1/128]:443");
        assert_eq!(t("[2001:db8::/32]:443"), "[2001:db8::/32]:443");
        assert_eq!(t("[::1]"), "::1/128");
        assert_eq!(t("::1"), "::1/128");
        assert_eq!(t("0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(t("::/0"), "::/0");
        assert_eq!(t("1.2.3.4:65535"), "1.2.3.4/32:65535");
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(t("10.1.2.3/8"), "10.0.0.0/8");
        assert_eq!(t("2001:db8::1/32"), "2001:db8::/32");
    }

    #[test]
    fn ipv4_mapped_is_ipv4() {
        assert_eq!(t("::ffff:1.2.3.4"), "1.2.3.4/32");
        assert_eq!(t("::ffff:10.0.0.0/104"), "10.0.0.0/8");
        assert_eq!(t("[::ffff:1.2.3.4]:80"), "1.2.3.4/32:80");
    }

    #[test]
    fn malformed_targets() {
        for (bad, why) in [
            ("", "empty rule"),
            ("10.0.0.0/33", "prefix length"),
            ("2001:db8::/129", "prefix length"),
            ("10.0.0.0/-1", "prefix length"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0.0/8x", "prefix length"),
            ("10.0.0.256", "not an IPv4 or IPv6 address"),
            ("10.0.0", "not an IPv4 or IPv6 address"),
            ("example.com", "not an IPv4 or IPv6 address"),
            ("1.2.3.4:0", "port '0'"),
            ("1.2.3.4:65536", "port '65536'"),
            ("1.2.3.4:", "port ''"),
            ("1.2.3.4:+80", "port '+80'"),
            ("1.2.3.4:80x", "port '80x'"),
            ("[2001:db8::1:443", "missing its ']'"),
            ("2001:db8::1]:443", "without its '['"),
            ("[2001:db8::1]443", "after ']'"),
            ("[2001:db8::1]:", "port ''"),
            ("1.2.3.4 ", "not an IPv4 or IPv6 address"),
            ("2001:db8::1:443", "ambiguous: write [2001:db8::1]:443"),
            ("1.2.3.4:80-90", "port range 80-90 where one port is expected"),
        ] {
            let got = t(bad);
            assert!(got.starts_with("error: ") && got.contains(why), "{bad:?}: {got}");
        }
    }

    #[test]
    fn round_trip() {
        for s in ["10.0.0.0/8", "8.8.8.8/32:53", "2001:db8::/32", "[2001:db8::1/128]:443", "0.0.0.0/0"] {
            assert_eq!(t(s), s);
            assert_eq!(t(&t(s)), s);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172800)));
        for bad in ["", "30", "s", "1.5h", "-1s", "1w", "0s", "99999999999999999999s", "18446744073709551615d", "3651d"]
        {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rules_file() {
        let text =
            "# blocked hosts\n\ndeny 10.0.0.0/8\nallow 10.1.0.0/16:443 ttl=5m # for now\n  deny [2001:db8::1]:53\n";
        let rules = parse_rules(text).unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].to_string(), "deny 10.0.0.0/8");
        assert_eq!(rules[1].to_string(), "allow 10.1.0.0/16:443 ttl=300s");
        assert_eq!(rules[2].to_string(), "deny [2001:db8::1/128]:53");
        assert!(parse_rules("").unwrap().is_empty());
    }

    #[test]
    fn rules_file_errors_name_the_line() {
        for (text, line, why) in [
            ("deny 10.0.0.0/8\nblock 1.2.3.4\n", 2, "not an action"),
            ("\n\nallow\n", 3, "no target"),
            ("deny 10.0.0.0/33\n", 1, "prefix length"),
            ("deny 1.2.3.4 ttl=5\n", 1, "needs a unit"),
            ("deny 1.2.3.4 for=5m\n", 1, "only ttl="),
            ("deny 1.2.3.4 ttl=5m extra\n", 1, "unexpected 'extra'"),
        ] {
            let err = format!("{:#}", parse_rules(text).unwrap_err());
            assert!(err.starts_with(&format!("line {line}: ")) && err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_large_file_is_parsed_in_halves_in_order() {
        // Over the split size: the two halves meet mid-file, and line numbers run on.
        let n = 80_000u32;
        let mut text: String =
            (0..n).map(|i| format!("deny 10.{}.{}.{} # règle {i}\n", i >> 16, (i >> 8) & 255, i & 255)).collect();
        assert!(text.len() > 1 << 20);
        let rules = parse_rules(&text).unwrap();
        assert_eq!(rules.len(), n as usize);
        assert!(rules
            .iter()
            .enumerate()
            .all(|(i, r)| r.target.addr == std::net::Ipv4Addr::from(0x0a00_0000 + i as u32)));
        text.push_str("deny 10.0.0.0/33\n");
        let err = format!("{:#}", parse_rules(&text).unwrap_err());
        assert!(err.starts_with(&format!("line {}: ", n + 1)), "{err}");
    }

    #[test]
    fn conflicting_actions_refused() {
        let rules = parse_rules("deny 10.0.0.0/8\nallow 10.1.2.3/8\n").unwrap();
        let err = check_conflicts(&rules).unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/8 is both allowed and denied"), "{err}");
        check_conflicts(&parse_rules("deny 10.0.0.0/8\ndeny 10.0.0.0/8\nallow 10.0.0.0/8:80\n").unwrap()).unwrap();
    }
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn ranges_and_services() {
        let ports = |s: &str| s.parse::<Targets>().map(|t| t.0.iter().map(|t| t.port).collect::<Vec<_>>());
        assert_eq!(ports("10.0.0.0/8:8000-8003").unwrap(), [8000, 8001, 8002, 8003]);
        assert_eq!(ports("[2001:db8::1]:8000-8001").unwrap(), [8000, 8001]);
        assert_eq!(ports("10.0.0.1").unwrap(), [0]);
        assert!(ports("10.0.0.1:1-65535").unwrap_err().contains("at most 4096"));
        assert!(ports("10.0.0.1:9-8").unwrap_err().contains("ends before it starts"));
        assert!(ports("2001:db8::1:443").unwrap_err().contains("[2001:db8::1]:443"));
        assert_eq!(ports("2001:db8::1:443/128").unwrap(), [0], "with a prefix it is the address");
        assert_eq!(ports("2001:db8::1").unwrap(), [0]);
        if Path::new("/etc/services").exists() {
            assert_eq!(ports("10.0.0.1:https").unwrap(), [443]);
            assert_eq!(ports("10.0.0.1:domain").unwrap(), [53]);
            assert_eq!("https".parse::<PortRange>().unwrap(), PortRange { lo: 443, hi: 443 });
        }
        assert!(ports("10.0.0.1:nosuchservice").unwrap_err().contains("nor a service in /etc/services"));
    }
}
