//! The kernel side: the generated skeleton, the configuration it is loaded
//! with, loading and attaching, the rule tries and the counters. Nothing here
//! knows about the command line or about bpffs.
pub mod config;
pub mod events;
pub mod hits;
pub mod hosts;
pub mod loader;
pub mod rulekeys;
pub mod rulemaps;
pub mod sieve;
pub mod sockets;
pub mod stats;

/// The skeleton libbpf-cargo generated from bpf/cgdrop.bpf.c (see build.rs).
pub mod skel {
    #![allow(clippy::all, missing_docs, non_camel_case_types, non_snake_case, non_upper_case_globals)]
    include!(concat!(env!("OUT_DIR"), "/cgdrop.skel.rs"));
}

/// The same source with the socket iterators (`CGDROP_SOCKETS`), for
/// `sockets`: its own skeleton, so that the policy object has no CO-RE.
pub mod sockets_skel {
    #![allow(clippy::all, missing_docs, non_camel_case_types, non_snake_case, non_upper_case_globals)]
    include!(concat!(env!("OUT_DIR"), "/cgdrop_sockets.skel.rs"));
}

/// The compiled BPF object (the one the skeleton embeds), for tools that load
/// it themselves (bpftool in tests and benchmarks).
pub const BPF_OBJECT: &str = concat!(env!("OUT_DIR"), "/cgdrop.bpf.o");
/// The same programs without the two test-only ones (`bpftool prog loadall`
/// cannot pin programs that were not loaded).
pub const BPF_OBJECT_PLAIN: &str = concat!(env!("OUT_DIR"), "/cgdrop-plain.bpf.o");
