//! The IPv4 host table (`cgdrop_hosts_v4`, struct cgdrop_host in
//! include/cgdrop.h): a big rules file's /32 rules, written at once through
//! mmap before the programs are attached and searched by halves in the
//! kernel. After that only an entry's action (and origin) changes, in place.
use std::{
    net::{IpAddr, Ipv4Addr},
    num::NonZeroUsize,
    os::fd::AsFd,
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use anyhow::{Context, Result};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::rules::Target;

/// The address that marks the unused tail of a table (host order).
const END: u32 = u32::MAX;
/// struct cgdrop_host: addr, action, origin, pad (u32 each), hit_key (u64).
const ENTRY_BYTES: usize = 24;

/// One entry as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub addr: Ipv4Addr,
    /// enum cgdrop_action; 0 = deleted.
    pub action: u32,
    pub origin: u32,
}

/// The table of one policy, mapped into this process.
pub struct HostTable {
    base: NonNull<u8>,
    entries: usize,
}

impl HostTable {
    /// Maps the table behind `map` (`entries` long); None for a policy
    /// without one (the loader leaves a 1-entry placeholder).
    pub fn map(map: impl AsFd, entries: u32) -> Result<Option<Self>> {
        let entries = entries as usize;
        if entries < crate::kernel::config::HOST_TABLE_MIN {
            return Ok(None);
        }
        let len = NonZeroUsize::new(entries * ENTRY_BYTES).context("an empty host table")?;
        // SAFETY: a fresh shared mapping of the map's fd (no existing memory
        // is touched); it lives until Drop unmaps it. Entries that the
        // programs may read at the same time are written only as atomics.
        let ptr = unsafe {
            mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, map, 0)
                .context("mapping the host table (cgdrop_hosts_v4) into memory")?
        };
        Ok(Some(Self { base: ptr.cast(), entries }))
    }

    fn word(&self, i: usize, at: usize) -> &AtomicU32 {
        assert!(i < self.entries, "host table entry {i} out of {}", self.entries);
        // SAFETY: in bounds (asserted), 4-byte aligned (the mapping is page
        // aligned, entries 24 bytes, `at` a multiple of 4), alive as long as self.
        unsafe { &*self.base.as_ptr().add(i * ENTRY_BYTES + at).cast::<AtomicU32>() }
    }

    fn hit_key(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.entries, "host table entry {i} out of {}", self.entries);
        // SAFETY: as word(); offset 16 of a 24-byte entry is 8-byte aligned.
        unsafe { &*self.base.as_ptr().add(i * ENTRY_BYTES + 16).cast::<AtomicU64>() }
    }

    fn addr(&self, i: usize) -> u32 {
        self.word(i, 0).load(Ordering::Relaxed)
    }

    pub fn get(&self, i: usize) -> Host {
        Host {
            addr: Ipv4Addr::from(self.addr(i)),
            action: self.word(i, 4).load(Ordering::Relaxed),
            origin: self.word(i, 8).load(Ordering::Relaxed),
        }
    }

    /// The entry of a target, if the table has its address (live or deleted).
    pub fn find(&self, t: &Target) -> Option<usize> {
        let IpAddr::V4(a) = t.addr else { return None };
        if t.prefix != 32 || t.port != 0 {
            return None;
        }
        let a = u32::from(a);
        let (mut lo, mut hi) = (0, self.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.addr(mid).cmp(&a) {
                std::cmp::Ordering::Equal if a != END => return Some(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                _ => hi = mid,
            }
        }
        None
    }

    /// Fills an unfilled table with `hosts` (sorted by address, distinct;
    /// at most as many as it has entries) and marks the rest unused. A
    /// window of WINDOW entries at a time is mapped, so that a million
    /// entries never make 24 MB of this process's memory at once.
    pub fn fill(map: impl AsFd, entries: u32, hosts: impl Iterator<Item = (Ipv4Addr, u32, u32, u64)>) -> Result<()> {
        const WINDOW: usize = 1 << 16;
        let entries = entries as usize;
        let mut hosts = hosts.peekable();
        let mut start = 0;
        while start < entries {
            let n = WINDOW.min(entries - start);
            let len = NonZeroUsize::new(n * ENTRY_BYTES).context("an empty window")?;
            // SAFETY: as in map(); WINDOW * ENTRY_BYTES is a multiple of the
            // page size, so every window's offset is page aligned.
            let ptr = unsafe {
                mmap(
                    None,
                    len,
                    ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                    MapFlags::MAP_SHARED,
                    map.as_fd(),
                    (start * ENTRY_BYTES) as i64,
                )
                .context("mapping the host table (cgdrop_hosts_v4) into memory")?
            };
            let window = Self { base: ptr.cast(), entries: n };
            for i in 0..n {
                match hosts.next() {
                    Some((addr, action, origin, hit_key)) => {
                        window.word(i, 0).store(u32::from(addr), Ordering::Relaxed);
                        window.word(i, 4).store(action, Ordering::Relaxed);
                        window.word(i, 8).store(origin, Ordering::Relaxed);
                        window.hit_key(i).store(hit_key, Ordering::Relaxed);
                    }
                    None => window.word(i, 0).store(END, Ordering::Relaxed),
                }
            }
            start += n;
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        Ok(())
    }

    /// Gives entry `i` a new action (0 = deleted) and origin, each one atomic write.
    pub fn set(&self, i: usize, action: u32, origin: u32) {
        self.word(i, 8).store(origin, Ordering::SeqCst);
        self.word(i, 4).store(action, Ordering::SeqCst);
    }

    /// The live entries (index order: sorted by address).
    pub fn live(&self) -> impl Iterator<Item = Host> + '_ {
        (0..self.entries).map(|i| self.get(i)).filter(|h| h.action != 0 && u32::from(h.addr) != END)
    }
}

impl Drop for HostTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in HostTable::map, of this length, unmapped once.
        let _ = unsafe { munmap(self.base.cast(), self.entries * ENTRY_BYTES) };
    }
}
