//! Persistent policies: bpffs and cgdrop's directory there (`bpffs`), and
//! one pinned policy (`pinned`).
pub mod bpffs;
pub mod pinned;
