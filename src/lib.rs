//! cgdrop: drop the network traffic of every process of one cgroup v2 with eBPF.
//!
//! Layers, lowest first; imports only go down:
//! - `rules` (the rule language) and `policy` (the validated `Policy`, the
//!   last stop of the CLI types);
//! - `kernel`: skeleton, config layout, loading and attaching, rule tries,
//!   counters; `host`: the cgroup, preflight checks, the command's process;
//! - `pins`: bpffs and cgdrop's directory there, one pinned policy;
//! - `output`: everything the user reads; `session`: the attached-session loop,
//!   `eventlog`: its events; `declared`: `cgdrop apply`'s TOML files;
//! - `commands`: one module per subcommand and the dispatcher `main` calls.
//!
//! Data flows one way: `cli` → `Policy` → `kernel::loader` (open, rodata,
//! load, rules, attach) → links held by `session` or pinned by `pins` →
//! counters read back by `kernel::stats`.
pub mod cli;
pub mod commands;
pub mod declared;
pub mod eventlog;
pub mod host;
pub mod kernel;
pub mod output;
pub mod pins;
pub mod policy;
pub mod rules;
pub mod session;
