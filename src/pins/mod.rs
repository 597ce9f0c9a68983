//! What cgdrop keeps on bpffs: its directory there (`bpffs`), one pinned
//! policy (`pinned`), and the pins of sessions on cgroups it owns (`runs`).
pub mod bpffs;
pub mod pinned;
pub mod runs;
