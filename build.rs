//! Compiles bpf/cgdrop.bpf.c into `$OUT_DIR/cgdrop.skel.rs` (and the object
//! `$OUT_DIR/cgdrop.bpf.o`) with libbpf-cargo; into `cgdrop_sockets.skel.rs`
//! with the socket iterators (the one part that needs CO-RE); and into
//! `cgdrop-plain.bpf.o`, the policy programs without the two test-only ones,
//! for bpftool in the benchmarks.
use std::{env, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/cgdrop.bpf.c";

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // libbpf-sys (links = "bpf") exports the headers of the libbpf it vendors:
    // bpf_helpers.h matches the libbpf that loads the object.
    let libbpf_include = format!("-I{}", env::var("DEP_BPF_INCLUDE").expect("libbpf-sys exports DEP_BPF_INCLUDE"));
    // Replaces libbpf-cargo's defaults, so everything is listed; -mcpu is
    // pinned so the object does not depend on clang's default.
    let args = [
        "-O2",
        "-g",
        "-Wall",
        "-Werror",
        "-mcpu=v3",
        "-target",
        "bpf",
        "-D__TARGET_ARCH_x86",
        "-Iinclude",
        &libbpf_include,
    ];
    SkeletonBuilder::new()
        .source(SRC)
        // Kept beside the skeleton for tools that load the object themselves.
        .obj(out_dir.join("cgdrop.bpf.o"))
        .clang_args(args)
        .build_and_generate(out_dir.join("cgdrop.skel.rs"))
        .expect("compiling bpf/cgdrop.bpf.c (is clang installed? run scripts/deps.sh)");
    // The socket iterators (kernel structs: CO-RE) in an object of their own,
    // so that loading a policy never reads the kernel's BTF.
    SkeletonBuilder::new()
        .source(SRC)
        .obj(out_dir.join("cgdrop_sockets.bpf.o"))
        .clang_args(args.into_iter().chain(["-DCGDROP_SOCKETS"]))
        .build_and_generate(out_dir.join("cgdrop_sockets.skel.rs"))
        .expect("compiling bpf/cgdrop.bpf.c with the socket iterators");
    SkeletonBuilder::new()
        .source(SRC)
        .obj(out_dir.join("cgdrop-plain.bpf.o"))
        .clang_args(args.into_iter().chain(["-DCGDROP_NO_TEST_PROGRAMS"]))
        .build()
        .expect("compiling bpf/cgdrop.bpf.c without test programs");
    for f in [SRC, "include/cgdrop.h", "include/vmlinux.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
}
