//! The command line, as clap types only. `--help` comes from these doc
//! comments; validation beyond what clap checks happens in `policy` and `cgroup`.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{error::ErrorKind, ArgGroup, Args, Parser, Subcommand};

use crate::{
    host::target::CgroupTarget,
    rules::{parse_duration, Action, PortRange, RejectWith, Targets},
};

/// Drop the network traffic of every process of one cgroup v2, with eBPF.
///
/// Without a subcommand, cgdrop attaches BPF programs to the cgroup and keeps
/// them attached until it exits (Ctrl-C, SIGTERM, or when the --run command
/// exits), then prints what it counted. `cgdrop pin` leaves a policy attached
/// after cgdrop exits. Programs apply to the cgroup's descendants too. Sockets
/// keep the cgroup they were created in: a process moved into the cgroup keeps
/// its old sockets unfiltered.
#[derive(Debug, Parser)]
#[command(name = "cgdrop", version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub foreground: ForegroundArgs,

    /// Show libbpf's log, including the verifier's, on stderr.
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

/// Which cgroup: one of these (everywhere a cgroup is taken).
#[derive(Debug, Args, Clone, Default)]
#[group(id = "target", multiple = false)]
pub struct TargetArgs {
    /// The cgroup: an absolute path inside a cgroup2 mount, a path relative
    /// to the cgroup2 root (`myapp`, `system.slice/foo.service`), or the
    /// `0::/path` line of /proc/PID/cgroup.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// The cgroup of the running process PID.
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..), value_hint = clap::ValueHint::Other)]
    pub pid: Option<u32>,

    /// The cgroup of a systemd unit: nginx.service, user@1000.service, a
    /// .scope or a .slice (from systemd when it runs the unit, else from the
    /// cgroup tree).
    #[arg(long, value_name = "NAME", value_hint = clap::ValueHint::Other)]
    pub unit: Option<String>,

    /// The cgroup of a Docker, Podman or containerd container, by full or
    /// short id, or by name (names need the docker or podman command).
    #[arg(long, value_name = "ID|NAME", value_hint = clap::ValueHint::Other)]
    pub container: Option<String>,
}

impl TargetArgs {
    /// The target given, if any.
    pub fn target(&self) -> Option<CgroupTarget> {
        if let Some(p) = &self.cgroup {
            Some(CgroupTarget::Cgroup(p.clone()))
        } else if let Some(pid) = self.pid {
            Some(CgroupTarget::Pid(pid))
        } else if let Some(u) = &self.unit {
            Some(CgroupTarget::Unit(u.clone()))
        } else {
            self.container.as_ref().map(|c| CgroupTarget::Container(c.clone()))
        }
    }

    /// The target, which clap has already required where one is needed.
    pub fn required(&self) -> anyhow::Result<CgroupTarget> {
        self.target().ok_or_else(|| anyhow::anyhow!("a target (--cgroup, --pid, --unit or --container) is required"))
    }

    /// The cgroup path the target names (absolute, or relative to the
    /// cgroup2 root, as `cgroup::locate` takes it), if a target was given.
    pub fn path(&self) -> anyhow::Result<Option<PathBuf>> {
        self.target().map(|t| t.resolve()).transpose()
    }
}

/// Foreground mode: attached while cgdrop runs.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("foreground_target").required(true).args(["cgroup", "pid", "unit", "container"])))]
pub struct ForegroundArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,

    #[command(flatten)]
    pub target: TargetArgs,

    /// Create the cgroup if it does not exist. It is then cgdrop's: on exit,
    /// every process in it (and below it) is killed before the policy is
    /// detached, and the cgroup is removed.
    #[arg(long)]
    pub create: bool,

    /// Allow the root cgroup as --cgroup: the policy then applies to every
    /// process of the host, sshd included.
    #[arg(long)]
    pub whole_host: bool,

    /// Run CMD with `sh -c` inside the cgroup (as root, which can leave the
    /// cgroup: `cgdrop run --user` is the sandbox mode); detach when it exits and exit
    /// with its status.
    #[arg(long, value_name = "CMD")]
    pub run: Option<String>,

    /// Print the counters every SECS seconds while attached.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: Option<u64>,

    /// Print the summary as one JSON object on stdout instead of a table on stderr.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub log: LogFlags,
}

/// Where drop and reject events go while attached.
#[derive(Debug, Args)]
pub struct LogFlags {
    /// Print each drop and rejection as it happens, one line on stderr: the
    /// process, the address and the rule (at most --log-rate per second).
    #[arg(long, conflicts_with = "log_json")]
    pub log: bool,

    /// The same as JSON lines on stdout.
    #[arg(long)]
    pub log_json: bool,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Only this cgroup's policy (default: every pinned policy).
    #[command(flatten)]
    pub target: TargetArgs,

    /// JSON lines with stable field names.
    #[arg(long)]
    pub json: bool,

    /// Keep printing events as they happen, until Ctrl-C.
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CMD in a fresh cgroup under the policy (with no policy flags:
    /// everything dropped), then kill what it left, remove the cgroup and exit
    /// with CMD's status.
    Run(RunArgs),
    /// Attach a policy and pin it under bpffs (/sys/fs/bpf/cgdrop/<cgroup-id>/):
    /// it stays attached after cgdrop exits, until `cgdrop unpin`.
    Pin(PinArgs),
    /// Detach and remove cgdrop's pinned policy of a cgroup (or all of them).
    /// Programs that other tools attached are never touched.
    Unpin(UnpinArgs),
    /// Show the drops and rejections of pinned policies: which process tried
    /// to reach what, and which rule stopped it (events are kept in the
    /// kernel until read; at most --log-rate per second were recorded).
    Log(LogArgs),
    /// Make the pinned policies what TOML files declare: pin what is missing,
    /// replace what differs, leave equal ones alone; print the plan
    /// (+ pin, ~ replace, - unpin, = as declared, ? waiting for its cgroup).
    ///
    /// One table per policy, keys as the flags: `[policy.NAME]` with exactly
    /// one of `cgroup = "PATH"`, `unit = "NAME"`, `container = "ID|NAME"`;
    /// then `direction = "ingress"|"egress"|"both"`, `block = ["CIDR[:PORT]", …]`,
    /// `allow = [...]`, `port = N`, `iface = "NAME"`, `rules_file = "PATH"`,
    /// `silent`, `dry_run` (booleans), `log_rate = N`, `keep_live_rules`
    /// (keep `rule add` rules on replace), `create` (cgroup targets). Every
    /// file is checked before anything changes; errors name FILE:LINE.
    /// Exit status: 0; 3 with --check when changes are pending; 1 on error.
    Apply(ApplyArgs),
    /// Let systemd attach a policy at every start of a unit: pin its programs
    /// under /sys/fs/bpf/cgdrop/unit-UNIT/ (dots as `_`) and write a drop-in with
    /// BPFProgram= lines (no cgdrop process runs; restart the unit to attach).
    Systemd(SystemdArgs),
    /// Finish what a killed cgdrop left: kill what is left in the cgroups it
    /// owned (`run`, `--create`), then remove their pins and the cgroups, and
    /// complete or remove half-written pins. Every cgdrop command does this
    /// first; this one only does this.
    Cleanup,
    /// List the pinned policies: cgroup, configuration, rules, counters, health.
    Status {
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
        /// Also list each policy's connections that were open before it and
        /// that it drops (they stay open until `--kill-existing` or a timeout).
        #[arg(long)]
        sockets: bool,
    },
    /// Show the counters of pinned policies.
    Stats(StatsArgs),
    /// Add, delete or list the rules of a pinned policy, live.
    Rule {
        #[command(subcommand)]
        command: RuleCommand,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) on stdout; with --dir, write cgdrop.1 and
    /// a page per subcommand (cgdrop-run.1, …) into DIR.
    #[command(hide = true)]
    Manpage {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Change nothing: print the plan and exit 3 if changes are pending, 0 if not.
    #[arg(long, conflicts_with = "watch")]
    pub check: bool,

    /// Also unpin the policies `apply` pinned that no file declares any more
    /// (never a policy pinned by hand).
    #[arg(long)]
    pub prune: bool,

    /// Keep applying: when a target's cgroup appears again (a restarted
    /// service or container), attach its policy at once; SIGHUP reads the
    /// files again; SIGTERM stops watching (the policies stay pinned).
    #[arg(long)]
    pub watch: bool,

    /// TOML files, or directories whose *.toml files are read (one
    /// `[policy.NAME]` table per policy; see `man cgdrop-apply` or the README).
    #[arg(required = true, value_name = "FILE|DIR")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SystemdArgs {
    /// The unit: a service, socket, mount, swap or slice (`.service` is
    /// added to a bare name).
    #[arg(long, value_name = "NAME")]
    pub unit: String,

    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Remove the drop-in and the pinned programs.
    #[arg(long)]
    pub remove: bool,

    /// Where drop-ins go.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Print the summary as one JSON object on stdout instead of a table on stderr.
    #[arg(long)]
    pub json: bool,

    /// Run CMD as USER (a name or a uid), with that user's groups: the
    /// sandbox mode. CMD gets a new session (no access to the terminal's
    /// input), a clean environment (PATH, HOME, USER, LOGNAME, SHELL, TERM),
    /// no capabilities it could regain (empty bounding set, NO_NEW_PRIVS).
    /// Without --user, CMD runs as root, which can move itself out of the
    /// cgroup: only --user confines a command that does not cooperate.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Pass inherited descriptor N on to CMD (repeatable). Others above 2 are
    /// closed: a socket opened outside the cgroup would send unfiltered, and
    /// so does one kept with this flag.
    #[arg(long = "keep-fd", value_name = "N", value_parser = clap::value_parser!(i32).range(3..))]
    pub keep_fds: Vec<i32>,

    /// Print the counters every SECS seconds while CMD runs.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: Option<u64>,

    #[command(flatten)]
    pub log: LogFlags,

    /// The command and its arguments, after `--` (run as given, no shell).
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("pin_what").required(true).args(["cgroup", "pid", "unit", "container", "programs"])))]
pub struct PinArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,

    #[command(flatten)]
    pub target: TargetArgs,

    /// Create the cgroup if it does not exist (it stays after cgdrop exits).
    #[arg(long, requires = "cgroup")]
    pub create: bool,

    /// Allow the root cgroup as --cgroup: every process of the host.
    #[arg(long)]
    pub whole_host: bool,

    /// Swap the cgroup's pinned policy for this one in place: each hook's
    /// program is replaced atomically, so no packet passes unfiltered.
    #[arg(long)]
    pub replace: bool,

    /// Attach nothing: pin the loaded programs under /sys/fs/bpf/cgdrop/progs/
    /// for attaching by hand (`bpftool cgroup attach CGROUP egress pinned
    /// /sys/fs/bpf/cgdrop/progs/egress`).
    #[arg(long, conflicts_with_all = ["target", "create", "replace"])]
    pub programs: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["cgroup", "pid", "unit", "container", "all", "programs"])))]
pub struct UnpinArgs {
    /// The cgroup whose policy to remove; a removed cgroup's path works too.
    #[command(flatten)]
    pub target: TargetArgs,

    /// Every policy cgdrop pinned, and the programs of `pin --programs`.
    #[arg(long)]
    pub all: bool,

    /// The programs of `pin --programs` (detach them from their cgroups first:
    /// `bpftool cgroup detach CGROUP egress pinned …`, or they stay attached).
    #[arg(long)]
    pub programs: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this cgroup's policy.
    #[command(flatten)]
    pub target: TargetArgs,

    /// One JSON array on stdout.
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,

    /// Prometheus text format (for node_exporter's textfile collector).
    #[arg(long)]
    pub prometheus: bool,

    /// Redraw every SECS seconds with per-second rates, until Ctrl-C.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..), conflicts_with_all = ["json", "prometheus"])]
    pub watch: Option<u64>,
}

/// The policy a `rule` command edits: a target is required.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("rule_target").required(true).args(["cgroup", "pid", "unit", "container"])))]
pub struct RuleTarget {
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Add a rule to a pinned policy; it applies from the next packet on.
    Add {
        #[command(flatten)]
        target: RuleTarget,
        /// allow or deny.
        action: Action,
        /// CIDR[:PORT], as for --block and --allow (a port range adds a rule per port).
        rule: Targets,
        /// Remove the rule after DURATION (30s, 5m, 1h, 2d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Close the cgroup's open connections a deny rule now drops (as for `pin`).
        #[arg(long)]
        kill_existing: bool,
    },
    /// Delete a rule from a pinned policy.
    Del {
        #[command(flatten)]
        target: RuleTarget,
        /// `[allow|deny] RULE`: the action, if given, must be the rule's.
        #[arg(num_args = 1..=2, required = true, value_name = "RULE")]
        words: Vec<String>,
    },
    /// List the rules of a pinned policy, with the time each has left.
    List {
        #[command(flatten)]
        target: RuleTarget,
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// What to drop: directions, interface, port.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("direction").args(["ingress", "egress", "both"])))]
pub struct PolicyArgs {
    /// Drop packets arriving at the cgroup's sockets only.
    #[arg(long)]
    pub ingress: bool,

    /// Drop packets sent by the cgroup's sockets only.
    #[arg(long)]
    pub egress: bool,

    /// Drop both directions (the default).
    #[arg(long)]
    pub both: bool,

    /// Only drop packets on this interface (for example `lo` or `eth0`).
    /// connect() cannot know the outgoing interface, so with --iface it is never
    /// rejected at once: blocked TCP connections hang until they time out.
    #[arg(long, value_name = "NAME", value_hint = clap::ValueHint::Other)]
    pub iface: Option<String>,

    /// Only drop TCP and UDP packets whose source or destination port is N:
    /// a number (1-65535), a range (8000-8100) or a service name from
    /// /etc/services (https). Packets without ports (ICMP, fragments) are
    /// then not dropped.
    #[arg(long, value_name = "N")]
    pub port: Option<PortRange>,

    /// Drop traffic to or from RULE (CIDR[:PORT]: 10.0.0.0/8, 8.8.8.8:53,
    /// 2001:db8::/32, [2001:db8::1]:443). Repeatable. With any deny rule the
    /// policy is a block list: traffic no rule matches passes.
    #[arg(long, value_name = "RULE")]
    pub block: Vec<Targets>,

    /// Let traffic to or from RULE through. Repeatable. Without deny rules only
    /// allowed traffic passes (--allow 127.0.0.0/8 --allow ::1: loopback only).
    /// The longest prefix wins; a rule with a port beats one without.
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<Targets>,

    /// Read rules from FILE: one `allow|deny RULE [ttl=DURATION]` per line
    /// (ttl: 30s, 5m, 1h, 2d), `#` comments. SIGHUP reloads it.
    #[arg(long, value_name = "FILE")]
    pub rules_file: Option<PathBuf>,

    /// Drop packets without rejecting connect() or sendto() at once: blocked
    /// connections hang and UDP sends seem to succeed, as in a real outage.
    #[arg(long)]
    pub silent: bool,

    /// Count what would be dropped, but drop nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Record at most N drop and reject events per second (with the process,
    /// the address and the rule; what is left out is counted); 0 = none.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub log_rate: u32,

    /// Close the cgroup's TCP and UDP connections that the policy drops and
    /// that were open before it (bpf_sock_destroy, Linux 6.5): the
    /// application gets ECONNABORTED instead of a hang. Without it, cgdrop
    /// says how many stay open (`cgdrop status --sockets` lists them).
    #[arg(long)]
    pub kill_existing: bool,

    /// The error a rejected connect() or sendto() gets: eperm (the default),
    /// refused (ECONNREFUSED, as a closed port: wget and other clients that
    /// retry EPERM give up at once) or reset (ECONNRESET). Packets dropped on
    /// the wire get no answer either way.
    #[arg(long, value_name = "ERROR", default_value = "eperm")]
    pub reject_with: RejectWith,

    /// Drop inbound TCP connection requests to the cgroup's servers (SYN
    /// without ACK), while their own outgoing connections and the connections
    /// they already have keep working. Alone, it drops nothing else.
    #[arg(long)]
    pub no_new_inbound: bool,
}

/// Reports a clap error as cgdrop reports every error: one line on stderr,
/// exit status 2. `--help` and `--version` print as usual and exit 0.
pub fn usage_error(err: clap::Error) -> ExitCode {
    if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        // Printing help can only fail if stdout is closed; nothing to report then.
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    if std::env::args_os().len() == 1 {
        // `cgdrop` alone: what it does and the commands to start with.
        crate::say_raw!("{SHORT_USAGE}");
        return ExitCode::from(2);
    }
    // clap's message is its first paragraph (a list of missing arguments
    // continues on indented lines); its tips ("a similar subcommand exists",
    // "use `-- curl`") are kept, the usage block is dropped.
    let rendered = err.render().to_string();
    let paragraph: Vec<&str> = rendered.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let msg = paragraph.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    let tips: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("tip: "))
        .map(|t| t.trim_end_matches('.'))
        .collect();
    let mut tips = if tips.is_empty() { String::new() } else { format!("; {}", tips.join("; ")) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if err.kind() == ErrorKind::UnknownArgument
        && args.first().is_some_and(|a| a == "run")
        && !args.iter().any(|a| a == "--")
        && tips.is_empty()
    {
        tips = "; put `--` before the command: cgdrop run [POLICY] -- CMD [ARGS]".into();
    }
    crate::say!("cgdrop: {}{tips} (see 'cgdrop --help')", plain_words(msg));
    ExitCode::from(2)
}

/// `cgdrop` with no arguments.
const SHORT_USAGE: &str = "cgdrop: drop the network traffic of every process of one cgroup, with eBPF.

  sudo cgdrop run -- CMD [ARGS]            run CMD with its network cut (or: --block/--allow RULES)
  sudo cgdrop --cgroup PATH [POLICY]       a policy on a cgroup while cgdrop runs (--pid, --unit, --container too)
  sudo cgdrop pin --unit nginx [POLICY]    a policy that stays after cgdrop exits; `cgdrop status` lists them
  sudo cgdrop apply /etc/cgdrop            the policies TOML files declare

`cgdrop --help` has every option; `man cgdrop` the details.
";

/// Rewords the Rust parsers' messages that clap passes on as they are.
fn plain_words(msg: &str) -> String {
    let mut out = msg
        .replace("invalid digit found in string", "not a whole number")
        .replace("number too large to fit in target type", "too large")
        .replace("number too small to fit in target type", "too small")
        .replace("cannot parse integer from empty string", "empty: a whole number is expected");
    // `0 is not in 1..18446744073709551615` (a range from clap's value parsers).
    if let Some(at) = out.find(" is not in ") {
        let rest = &out[at + " is not in ".len()..];
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '=')).unwrap_or(rest.len());
        let range = &rest[..end];
        if let Some((lo, hi)) = range.split_once("..") {
            let (hi, inclusive) = match hi.strip_prefix('=') {
                Some(hi) => (hi, true),
                None => (hi, false),
            };
            // An upper end of 10 digits or more is the type's limit, not a rule.
            let words = if hi.len() >= 10 || hi.is_empty() {
                format!(" is too small: at least {lo}")
            } else {
                let hi = hi.parse::<u64>().map_or(0, |h| if inclusive { h } else { h.saturating_sub(1) });
                format!(" is not a number from {lo} to {hi}")
            };
            out = format!("{}{words}{}", &out[..at], &rest[end..]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::plain_words;

    #[test]
    fn parser_messages_are_reworded() {
        assert_eq!(
            plain_words("invalid value 'x' for '--interval <SECS>': invalid digit found in string"),
            "invalid value 'x' for '--interval <SECS>': not a whole number"
        );
        assert_eq!(
            plain_words("invalid value '0' for '--interval <SECS>': 0 is not in 1..18446744073709551615"),
            "invalid value '0' for '--interval <SECS>': 0 is too small: at least 1"
        );
        assert_eq!(
            plain_words("'7' for '--keep-fd': 2 is not in 3..2147483647"),
            "'7' for '--keep-fd': 2 is too small: at least 3"
        );
        assert_eq!(plain_words("70000 is not in 1..=65535"), "70000 is not a number from 1 to 65535");
    }
}
