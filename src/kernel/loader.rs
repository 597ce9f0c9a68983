//! The BPF side: opens the skeleton, writes the policy into rodata, loads the
//! programs (on both CPUs: two instances of the object sharing their maps;
//! libbpf's log kept for --verbose) and attaches them to a cgroup with
//! bpf_link. The returned links keep the programs attached: dropping them
//! (or the process exiting, however it exits) detaches.
use std::mem::MaybeUninit;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    AsRawLibbpf, ErrorKind, Link, OpenObject, PrintLevel, ProgramMut,
};

use crate::{
    host::{cgroup::Cgroup, cpus},
    kernel::{
        config::Config,
        rulemaps::{self, Installed, RuleMaps},
        skel::{CgdropSkel, CgdropSkelBuilder, OpenCgdropSkel},
    },
    policy::Policy,
};

/// Puts the policy's rules into the tries (replacing `installed`) and sets
/// what unmatched traffic gets, in the order that never leaves a gap.
pub fn apply_rules(skel: &mut CgdropSkel<'_>, installed: &mut Installed, policy: &Policy) -> Result<()> {
    let now_ns = rulemaps::boot_time_ns()?;
    let maps = RuleMaps {
        v4: &skel.maps.cgdrop_rules_v4,
        v6: &skel.maps.cgdrop_rules_v6,
        hosts_v4: &skel.maps.cgdrop_hosts_v4,
        sieve: &skel.maps.cgdrop_sieve,
    };
    let bss = skel.maps.bss_data.as_deref_mut().context("the BPF object has no .bss section")?;
    let has_rules = u32::from(!policy.rules.is_empty());
    let has_port_rules = u32::from(policy.rules.iter().any(|r| r.target.port != 0));
    // The skip flags cover the old and the new rules while both may be in the tries.
    bss.has_rules |= has_rules;
    bss.has_port_rules |= has_port_rules;
    maps.replace(installed, &policy.rules, now_ns, || {
        bss.unmatched_pass = u32::from(policy.unmatched_pass());
        Ok(())
    })?;
    bss.has_rules = has_rules;
    bss.has_port_rules = has_port_rules;
    Ok(())
}

/// Deletes expired rules from the tries; returns how many.
pub fn sweep_expired(skel: &CgdropSkel<'_>, installed: &mut Installed) -> Result<usize> {
    let maps = RuleMaps {
        v4: &skel.maps.cgdrop_rules_v4,
        v6: &skel.maps.cgdrop_rules_v6,
        hosts_v4: &skel.maps.cgdrop_hosts_v4,
        sieve: &skel.maps.cgdrop_sieve,
    };
    maps.sweep_expired(installed, rulemaps::boot_time_ns()?)
}

fn print_live(_level: PrintLevel, msg: String) {
    crate::say_raw!("{msg}");
}

/// Sends libbpf's log (including the verifier's) to stderr when `verbose`;
/// otherwise silences it, so that errors stay one line (they say to use --verbose).
pub fn set_verbose(verbose: bool) {
    libbpf_rs::set_print(verbose.then_some((PrintLevel::Debug, print_live as libbpf_rs::PrintCallback)));
}

/// Rules whose hits a policy loaded with `rules` rules counts: twice that,
/// and at least 65,536 when its rules can be edited later (a pinned policy:
/// `rule add`; a rules file: SIGHUP), 64 when they cannot. A hash's buckets
/// are allocated when it is made: 65,536 of them cost ~0.8 ms at every start
/// (measured: a start-up's twentieth), the most it could need (2,097,152)
/// ~30 ms. Rules added beyond it later are enforced but count no hits
/// (`rule add` says so).
pub fn hits_capacity(rules: usize, editable: bool) -> u32 {
    let most = 2 * crate::kernel::config::MAX_RULES_PER_FAMILY;
    let least = if editable { 1 << 16 } else { 64 };
    rules.saturating_mul(2).clamp(least, most) as u32
}

/// Where one load's two instances of the BPF object live (see `Loaded`).
pub struct Objects {
    main: MaybeUninit<OpenObject>,
    side: MaybeUninit<OpenObject>,
}

impl Objects {
    pub fn new() -> Self {
        Self { main: MaybeUninit::uninit(), side: MaybeUninit::uninit() }
    }
}

impl Default for Objects {
    fn default() -> Self {
        Self::new()
    }
}

/// A loaded policy: the skeleton with every map and some of the programs,
/// and a second instance of the object that loaded the others at the same
/// time on another CPU (the verifier takes ~20 ms of CPU in a start on the
/// development VM, one program after the other within an object; see
/// `Hook::aside` for the split), sharing every map of the
/// first. Derefs to the first (its maps); `Hook::program` finds a hook's
/// program, wherever it was loaded.
pub struct Loaded<'obj> {
    skel: CgdropSkel<'obj>,
    side: Option<CgdropSkel<'obj>>,
    /// The hooks whose programs `side` loaded.
    aside: Vec<Hook>,
}

impl<'obj> std::ops::Deref for Loaded<'obj> {
    type Target = CgdropSkel<'obj>;
    fn deref(&self) -> &CgdropSkel<'obj> {
        &self.skel
    }
}

impl<'obj> std::ops::DerefMut for Loaded<'obj> {
    fn deref_mut(&mut self) -> &mut CgdropSkel<'obj> {
        &mut self.skel
    }
}

/// Opens the BPF object, configures it for `policy` through rodata and loads
/// the programs of the hooks the policy attaches to (each program the
/// verifier does not have to see is 0.1–7 ms less CPU in a start).
/// `editable`: whether its rules may change after the load (see hits_capacity).
pub fn load<'obj>(policy: &Policy, objects: &'obj mut Objects, editable: bool) -> Result<Loaded<'obj>> {
    load_programs(policy, objects, &Hook::for_policy(policy), editable)
}

fn set_autoload(open: &mut OpenCgdropSkel<'_>, hook: Hook, on: bool) {
    let p = &mut open.progs;
    match hook {
        Hook::Ingress => p.cgdrop_ingress.set_autoload(on),
        Hook::Egress => p.cgdrop_egress.set_autoload(on),
        Hook::Connect4 => p.cgdrop_connect4.set_autoload(on),
        Hook::Connect6 => p.cgdrop_connect6.set_autoload(on),
        Hook::Sendmsg4 => p.cgdrop_sendmsg4.set_autoload(on),
        Hook::Sendmsg6 => p.cgdrop_sendmsg6.set_autoload(on),
        Hook::SockCreate => p.cgdrop_sock_create.set_autoload(on),
    };
}

fn verifier_stats(open: &mut OpenCgdropSkel<'_>) {
    if let Some(level) = std::env::var_os("CGDROP_VERIFIER_STATS") {
        // For `make bench` and whoever measures the load: the verifier's
        // statistics (instructions processed, states) in libbpf's log
        // (--verbose); a number asks for that log level instead (5: every
        // instruction walked, with its source line, and the statistics).
        let level = level.to_str().and_then(|l| l.parse().ok()).unwrap_or(4);
        for mut prog in open.open_object_mut().progs_mut() {
            prog.set_log_level(level);
        }
    }
}

fn refused(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "loading the BPF programs into the kernel failed ({e}): the verifier or the kernel refused a program; run with --verbose to see libbpf's and the verifier's log"
    )
}

/// An object being loaded on another thread. SAFETY (of the Send): a libbpf
/// object is plain memory, tied to no thread; each of the two instances is
/// used by one thread at a time, and what they share (the maps' fds, which
/// the side instance only reuses) the kernel serialises.
struct OnAnotherThread<T>(T);
// SAFETY: see above.
unsafe impl<T> Send for OnAnotherThread<T> {}

/// As `load`, with the programs of `hooks` (`pin --programs` pins them all).
pub fn load_programs<'obj>(
    policy: &Policy,
    objects: &'obj mut Objects,
    hooks: &[Hook],
    editable: bool,
) -> Result<Loaded<'obj>> {
    let side_hooks = Hook::aside(hooks);
    let Objects { main, side } = objects;
    if side_hooks.is_empty() {
        let open = open_main(policy, main, hooks, &side_hooks, editable)?;
        return Ok(Loaded { skel: open.load().map_err(refused)?, side: None, aside: side_hooks });
    }
    // The second instance is opened (libbpf parses the object again, ~0.7
    // ms) on its thread while this one opens and prepares the first; it then
    // waits for the first's maps, shares them, and loads its programs.
    let (maps_tx, maps_rx) = std::sync::mpsc::channel::<Vec<(String, i32)>>();
    let (shared_tx, shared_rx) = std::sync::mpsc::channel::<()>();
    let side = OnAnotherThread(side);
    let aside_hooks = &side_hooks;
    let mut split = cpus::CpuSplit::for_this_thread();
    let side_cpus = split.side;
    let (main, side) = std::thread::scope(|scope| {
        let aside = scope.spawn(move || {
            // The wrapper whole (a closure would capture only its field).
            let side = side;
            cpus::CpuSplit::enter(&side_cpus);
            OnAnotherThread(load_side(side.0, aside_hooks, &maps_rx, shared_tx))
        });
        // Pinned only now: a thread inherits its maker's mask, and the side
        // thread would wait for this CPU to run its first instruction.
        split.pin_here();
        let main = open_main(policy, main, hooks, &side_hooks, editable).and_then(|mut open| {
            // The maps first (libbpf's prepare step: created, rodata written
            // and frozen), so that the side instance can share them before
            // either loads.
            let obj = open.open_object_mut().as_libbpf_object();
            // SAFETY: a valid, opened and not yet loaded bpf_object, owned by `open`.
            let rc = unsafe { libbpf_rs::libbpf_sys::bpf_object__prepare(obj.as_ptr()) };
            if rc != 0 {
                return Err(refused(std::io::Error::from_raw_os_error(-rc)));
            }
            let fds: Vec<(String, i32)> = open
                .open_object_mut()
                .maps_mut()
                .map(|m| {
                    // SAFETY: a map of the prepared object above: its fd is valid while `open` lives.
                    let fd = unsafe { libbpf_rs::libbpf_sys::bpf_map__fd(m.as_libbpf_object().as_ptr()) };
                    (m.name().to_string_lossy().into_owned(), fd)
                })
                .collect();
            let _ = maps_tx.send(fds);
            // Until the side instance has its own copies (or gave up): a
            // failed load below closes these fds, whose numbers could then be
            // reused under it.
            let _ = shared_rx.recv();
            open.load().map_err(refused)
        });
        // On an error above, the side thread finds the channel closed.
        drop(maps_tx);
        (main, aside.join().map(|r| r.0))
    });
    drop(split);
    let side = side.map_err(|_| anyhow!("loading the BPF programs: the loading thread panicked"))?;
    Ok(Loaded { skel: main?, side: Some(side?), aside: side_hooks })
}

/// Opens the first instance of the object, configured for `policy`, with
/// the programs of `hooks` but those of `side_hooks` set to load.
fn open_main<'obj>(
    policy: &Policy,
    object: &'obj mut MaybeUninit<OpenObject>,
    hooks: &[Hook],
    side_hooks: &[Hook],
    editable: bool,
) -> Result<OpenCgdropSkel<'obj>> {
    let mut open = CgdropSkelBuilder::default().open(object).context("opening the BPF object")?;
    for hook in Hook::ALL {
        set_autoload(&mut open, hook, hooks.contains(&hook) && !side_hooks.contains(&hook));
    }
    let rodata = open.maps.rodata_data.as_deref_mut().context("the BPF object has no rodata section")?;
    rodata.cfg = Config::of(policy).encode();
    let hosts = rodata.cfg.hosts_v4.max(1);
    open.maps.cgdrop_hosts_v4.set_max_entries(hosts).context("sizing the host table")?;
    open.maps
        .cgdrop_hits
        .set_max_entries(hits_capacity(policy.rules.len(), editable))
        .context("sizing the hits map")?;
    if std::env::var_os("CGDROP_SELFTEST_REJECTED_PROGRAM").is_some() {
        // Only to test the error path: a program the verifier refuses.
        open.progs.cgdrop_selftest.set_autoload(true);
    }
    verifier_stats(&mut open);
    Ok(open)
}

/// The second instance (on its own thread): opened, then, once the first
/// has made the maps (`maps`: each map's name and fd), sharing every one of
/// them, and loading the programs of `hooks`.
fn load_side<'obj>(
    object: &'obj mut MaybeUninit<OpenObject>,
    hooks: &[Hook],
    maps: &std::sync::mpsc::Receiver<Vec<(String, i32)>>,
    shared: std::sync::mpsc::Sender<()>,
) -> Result<CgdropSkel<'obj>> {
    let mut side = CgdropSkelBuilder::default().open(object).context("opening the BPF object")?;
    for hook in Hook::ALL {
        set_autoload(&mut side, hook, hooks.contains(&hook));
    }
    verifier_stats(&mut side);
    // Closed without a message: the first instance failed (its error is the one reported).
    let fds = maps.recv().map_err(|_| anyhow!("the first instance of the BPF object was not loaded"))?;
    for mut m in side.open_object_mut().maps_mut() {
        let name = m.name().to_string_lossy().into_owned();
        let &(_, fd) =
            fds.iter().find(|(n, _)| *n == name).with_context(|| format!("map {name} of the second instance"))?;
        // SAFETY: fd belongs to the first instance, which waits for `shared`
        // before it loads (or fails and closes it); reuse_fd dups it.
        m.reuse_fd(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
            .with_context(|| format!("sharing map {name}"))?;
    }
    // (Dropped on every return above too: the first instance then goes on.)
    drop(shared);
    side.load().map_err(refused)
}

/// A cgroup hook cgdrop attaches to, and the program it attaches there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
    Connect4,
    Connect6,
    Sendmsg4,
    Sendmsg6,
    /// Records each new socket's creator for the events (only with events on).
    SockCreate,
}

impl Hook {
    pub const ALL: [Hook; 7] =
        [Hook::Ingress, Hook::Egress, Hook::Connect4, Hook::Connect6, Hook::Sendmsg4, Hook::Sendmsg6, Hook::SockCreate];

    /// Short name: pin file names (`link_<name>`) and `pin --programs` names.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
            Hook::Connect4 => "connect4",
            Hook::Connect6 => "connect6",
            Hook::Sendmsg4 => "sendmsg4",
            Hook::Sendmsg6 => "sendmsg6",
            Hook::SockCreate => "sock_create",
        }
    }

    /// What verifying this hook's program costs, in tenths of a millisecond
    /// (measured on a 2-core VM, policy `--block 192.0.2.1`; only the
    /// proportions matter).
    fn load_cost(self) -> u32 {
        match self {
            Hook::Ingress | Hook::Egress => 65,
            Hook::Connect6 | Hook::Sendmsg6 => 28,
            Hook::Connect4 | Hook::Sendmsg4 => 19,
            Hook::SockCreate => 1,
        }
    }

    /// The hooks of `hooks` whose programs the second instance of a load
    /// loads (see `Loaded`): the costliest first, each to the instance with
    /// less to verify so far, so that both CPUs finish at about the same
    /// time (for every hook: ingress, connect6, connect4 and sock_create on
    /// one, egress, sendmsg6 and sendmsg4 on the other).
    pub fn aside(hooks: &[Hook]) -> Vec<Hook> {
        let mut by_cost = hooks.to_vec();
        by_cost.sort_by_key(|h| std::cmp::Reverse(h.load_cost()));
        let (mut main, mut side, mut aside) = (0, 0, Vec::new());
        for hook in by_cost {
            if side < main {
                side += hook.load_cost();
                aside.push(hook);
            } else {
                main += hook.load_cost();
            }
        }
        aside
    }

    pub fn program<'s, 'obj>(self, loaded: &'s Loaded<'obj>) -> &'s ProgramMut<'obj> {
        let skel = match &loaded.side {
            Some(side) if loaded.aside.contains(&self) => side,
            _ => &loaded.skel,
        };
        let p = &skel.progs;
        match self {
            Hook::Ingress => &p.cgdrop_ingress,
            Hook::Egress => &p.cgdrop_egress,
            Hook::Connect4 => &p.cgdrop_connect4,
            Hook::Connect6 => &p.cgdrop_connect6,
            Hook::Sendmsg4 => &p.cgdrop_sendmsg4,
            Hook::Sendmsg6 => &p.cgdrop_sendmsg6,
            Hook::SockCreate => &p.cgdrop_sock_create,
        }
    }

    /// The hooks a policy with these settings attaches to. --silent turns the
    /// fail-fast hooks off; sendmsg is only rejected when egress is dropped;
    /// sock_create only names sockets' owners for the events.
    pub fn wanted(ingress: bool, egress: bool, silent: bool, events: bool) -> Vec<Hook> {
        let mut hooks = Vec::new();
        if ingress {
            hooks.push(Hook::Ingress);
        }
        if egress {
            hooks.push(Hook::Egress);
        }
        if !silent {
            hooks.extend([Hook::Connect4, Hook::Connect6]);
            if egress {
                hooks.extend([Hook::Sendmsg4, Hook::Sendmsg6]);
            }
        }
        if events && (ingress || egress) {
            hooks.push(Hook::SockCreate);
        }
        hooks
    }

    pub fn for_policy(policy: &Policy) -> Vec<Hook> {
        Self::wanted(policy.ingress || policy.no_new_inbound, policy.egress, policy.silent, policy.log_rate > 0)
    }
}

/// Attaches one hook's program to `cgroup` with a bpf_link.
pub fn attach_hook(skel: &Loaded<'_>, hook: Hook, cgroup: &Cgroup) -> Result<Link> {
    let name = hook.program(skel).name().to_string_lossy().into_owned();
    hook.program(skel).attach_cgroup(cgroup.raw_fd()).map_err(|e| {
        let what = format!("attaching {name} to cgroup {}", cgroup.path.display());
        if e.kind() == ErrorKind::PermissionDenied {
            // Privileges were checked up front: EPERM from link creation
            // means an exclusive (non-multi) attachment is in the way.
            anyhow!(
                "{what}: operation not permitted: another program is attached to this cgroup without BPF_F_ALLOW_MULTI; detach it (see `bpftool cgroup show {}`)",
                cgroup.path.display()
            )
        } else {
            anyhow::Error::new(e).context(what)
        }
    })
}

/// Attaches the programs the policy needs to `cgroup`. On error, the links
/// made so far are dropped, so nothing stays attached.
pub fn attach(skel: &Loaded<'_>, cgroup: &Cgroup, policy: &Policy) -> Result<Vec<(Hook, Link)>> {
    Hook::for_policy(policy).into_iter().map(|hook| Ok((hook, attach_hook(skel, hook, cgroup)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifiers_work_is_split_between_the_two_cpus() {
        let all = Hook::wanted(true, true, false, true);
        let aside = Hook::aside(&all);
        assert_eq!(aside, [Hook::Egress, Hook::Sendmsg6, Hook::Sendmsg4]);
        // One skb program: the other CPU verifies the connect programs.
        assert_eq!(Hook::aside(&Hook::wanted(true, false, false, false)), [Hook::Connect6, Hook::Connect4]);
        // A single program is loaded by one instance alone.
        assert!(Hook::aside(&[Hook::Ingress]).is_empty());
    }

    #[test]
    fn hits_are_counted_for_every_rule_a_policy_loads_with() {
        assert_eq!(hits_capacity(0, true), 1 << 16);
        assert_eq!(hits_capacity(100_000, true), 200_000);
        // Rules that cannot change: room for each of them, twice over.
        assert_eq!(hits_capacity(0, false), 64);
        assert_eq!(hits_capacity(1_000, false), 2_000);
        // Both families full: the most the rule tables hold.
        assert_eq!(hits_capacity(2 << 20, true), 2 << 20);
        assert_eq!(hits_capacity(usize::MAX, false), 2 << 20);
    }
}
