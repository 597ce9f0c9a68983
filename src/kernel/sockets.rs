//! Sockets made before a policy: a second instance of the BPF object, sharing
//! the policy's rule maps, runs the `iter/tcp` and `iter/udp` programs over
//! every socket of the host; they report the connections of the cgroup (and
//! its descendants) that the policy would drop, and with `kill` close them
//! with bpf_sock_destroy (Linux 6.5).
use std::{
    io::Read,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::BorrowedFd,
};

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    Iter, MapCore, MapFlags, OpenObject,
};

use crate::kernel::{
    config::Config,
    sockets_skel::{
        types::{cgdrop_config, cgdrop_sock_rec},
        CgdropSocketsSkelBuilder,
    },
};

// SAFETY: generated from BTF: integers and byte arrays, padding explicit.
unsafe impl plain::Plain for cgdrop_sock_rec {}
// SAFETY: the same struct as the policy skeleton's (one header): integers, u32
// enum newtypes and an i8 array, padding explicit.
unsafe impl plain::Plain for cgdrop_config {}

/// The policy's maps the iterator shares, and its .bss flags.
pub struct Shared<'a> {
    pub rules_v4: BorrowedFd<'a>,
    pub rules_v6: BorrowedFd<'a>,
    pub hosts_v4: BorrowedFd<'a>,
    pub sieve: BorrowedFd<'a>,
    pub owners: BorrowedFd<'a>,
    pub killing: BorrowedFd<'a>,
    pub has_rules: u32,
    pub has_port_rules: u32,
    pub unmatched_pass: u32,
}

/// One connection the policy drops.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Conn {
    pub proto: &'static str,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub state: &'static str,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Closed by `--kill-existing`.
    pub closed: bool,
}

impl std::fmt::Display for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addr = |a: &IpAddr, p: u16| match a {
            IpAddr::V4(a) => format!("{a}:{p}"),
            IpAddr::V6(a) => format!("[{a}]:{p}"),
        };
        write!(
            f,
            "{} {} → {} {}",
            self.proto,
            addr(&self.local, self.local_port),
            addr(&self.remote, self.remote_port),
            self.state
        )?;
        match (&self.comm, self.pid) {
            (Some(c), Some(p)) => write!(f, " {c}[{p}]"),
            _ => f.write_str(" (process unknown)"),
        }
    }
}

fn tcp_state(s: u8) -> &'static str {
    match s {
        1 => "established",
        2 => "syn-sent",
        3 => "syn-recv",
        4 => "fin-wait-1",
        5 => "fin-wait-2",
        8 => "close-wait",
        9 => "last-ack",
        11 => "closing",
        _ => "other",
    }
}

fn decode(r: &cgdrop_sock_rec) -> Conn {
    let ip = |b: &[u8; 16]| -> IpAddr {
        if r.family == 4 {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*b))
        }
    };
    let comm: Vec<u8> = r.comm.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    Conn {
        proto: if r.proto == 6 { "tcp" } else { "udp" },
        local: ip(&r.local),
        local_port: r.local_port,
        remote: ip(&r.remote),
        remote_port: r.remote_port,
        state: if r.proto == 6 { tcp_state(r.state) } else { "connected" },
        pid: (r.owner_known != 0).then_some(r.pid),
        comm: (r.owner_known != 0).then(|| String::from_utf8_lossy(&comm).into_owned()),
        closed: r.closed != 0,
    }
}

/// Lists (and with `kill`, closes) the cgroup's connections that the policy
/// with `config` and the `shared` maps drops. An error means this kernel
/// cannot iterate sockets or lacks bpf_sock_destroy.
pub fn scan(config: &Config, shared: &Shared<'_>, cgroup_id: u64, kill: bool) -> Result<Vec<Conn>> {
    let mut object = MaybeUninit::<OpenObject>::uninit();
    let mut open = CgdropSocketsSkelBuilder::default().open(&mut object).context("opening the BPF object")?;
    let rodata = open.maps.rodata_data.as_deref_mut().context("no rodata")?;
    // The policy skeleton's type, byte for byte (same header, other skeleton).
    let cfg = config.encode();
    // SAFETY: cgdrop_config is Plain in both skeletons (see config.rs), no implicit padding.
    plain::copy_from_bytes(&mut rodata.cfg, unsafe { plain::as_bytes(&cfg) })
        .map_err(|e| anyhow!("the two skeletons' cgdrop_config differ: {e:?}"))?;
    rodata.iter_cgroup_id = cgroup_id;
    rodata.iter_kill = u32::from(kill);
    let bss = open.maps.bss_data.as_deref_mut().context("no .bss")?;
    bss.has_rules = shared.has_rules;
    bss.has_port_rules = shared.has_port_rules;
    bss.unmatched_pass = shared.unmatched_pass;
    let p = &mut open.progs;
    for prog in [
        &mut p.cgdrop_ingress,
        &mut p.cgdrop_egress,
        &mut p.cgdrop_connect4,
        &mut p.cgdrop_connect6,
        &mut p.cgdrop_sendmsg4,
        &mut p.cgdrop_sendmsg6,
        &mut p.cgdrop_sock_create,
    ] {
        prog.set_autoload(false);
    }
    p.cgdrop_iter_tcp.set_autoload(true);
    p.cgdrop_iter_udp.set_autoload(true);
    let m = &mut open.maps;
    m.cgdrop_rules_v4.reuse_fd(shared.rules_v4).context("sharing rules_v4")?;
    m.cgdrop_rules_v6.reuse_fd(shared.rules_v6).context("sharing rules_v6")?;
    m.cgdrop_sieve.reuse_fd(shared.sieve).context("sharing the rule sieve")?;
    m.cgdrop_hosts_v4.reuse_fd(shared.hosts_v4).context("sharing the host table")?;
    m.cgdrop_owners.reuse_fd(shared.owners).context("sharing owners")?;
    m.cgdrop_killing.reuse_fd(shared.killing).context("sharing killing")?;
    // The maps this instance does not use, as small as they go: the rule hits
    // of its lookups must not count, and a 2M-entry table costs ~25 ms to make.
    m.cgdrop_hits.set_max_entries(1).context("sizing the hits map")?;
    m.cgdrop_events.set_max_entries(4096).context("sizing the events map")?;
    let skel = open.load().map_err(|e| {
        anyhow!("this kernel cannot list the cgroup's sockets with a BPF socket iterator and bpf_sock_destroy (Linux 6.5 or later): {e}")
    })?;
    let zero = 0u32.to_ne_bytes();
    if kill {
        skel.maps
            .cgdrop_killing
            .update(&zero, &1u32.to_ne_bytes(), MapFlags::ANY)
            .context("starting to close sockets")?;
    }
    let result = (|| {
        let mut conns = Vec::new();
        for prog in [&skel.progs.cgdrop_iter_tcp, &skel.progs.cgdrop_iter_udp] {
            let link = prog.attach().context("attaching the socket iterator")?;
            let mut bytes = Vec::new();
            Iter::new(&link)?.read_to_end(&mut bytes).context("reading the socket iterator")?;
            for chunk in bytes.chunks_exact(size_of::<cgdrop_sock_rec>()) {
                // SAFETY: all-zero bytes are a valid cgdrop_sock_rec (integers and arrays).
                let mut rec: cgdrop_sock_rec = unsafe { std::mem::zeroed() };
                plain::copy_from_bytes(&mut rec, chunk).map_err(|e| anyhow!("a socket record: {e:?}"))?;
                conns.push(decode(&rec));
            }
        }
        Ok(conns)
    })();
    if kill {
        skel.maps.cgdrop_killing.update(&zero, &0u32.to_ne_bytes(), MapFlags::ANY).context("ending closing sockets")?;
    }
    result
}

/// The line to tell the user after a policy was attached: what
/// `--kill-existing` closed (or could not), or how many connections made
/// before the policy stay open. None when there is nothing to say.
pub fn describe(result: &Result<Vec<Conn>>, kill: bool, dry_run: bool) -> Option<String> {
    let few = |conns: &[&Conn]| {
        let mut s: Vec<String> = conns.iter().take(3).map(|c| c.to_string()).collect();
        if conns.len() > 3 {
            s.push(format!("and {} more", conns.len() - 3));
        }
        s.join(", ")
    };
    match result {
        Err(e) if kill => Some(format!("cgdrop: --kill-existing: {e:#}; connections made before the policy stay open")),
        Err(_) => None,
        Ok(conns) if conns.is_empty() => None,
        Ok(conns) if kill && !dry_run => {
            let closed: Vec<&Conn> = conns.iter().filter(|c| c.closed).collect();
            let open: Vec<&Conn> = conns.iter().filter(|c| !c.closed).collect();
            let mut line =
                format!("cgdrop: closed {} connection(s) made before the policy: {}", closed.len(), few(&closed));
            if !open.is_empty() {
                line += &format!("; could not close {}: {}", open.len(), few(&open));
            }
            Some(line)
        }
        Ok(conns) => {
            let all: Vec<&Conn> = conns.iter().collect();
            Some(format!(
                "cgdrop: {} connection(s) made before the policy stay open ({}), their packets dropped{}: --kill-existing closes them, `cgdrop status --sockets` lists them",
                conns.len(),
                few(&all),
                if dry_run { " (dry run: would be)" } else { "" }
            ))
        }
    }
}
