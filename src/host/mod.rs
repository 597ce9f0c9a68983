//! What cgdrop finds on the host and does to it outside BPF: the cgroup,
//! the preflight checks, the command's process.
pub mod cgroup;
mod child;
pub mod cpus;
pub mod preempt;
pub mod preflight;
pub mod process;
pub mod sessions;
pub mod target;
pub mod tree;
pub mod watch;
