//! The sieve (`cgdrop_sieve`, enum cgdrop_sieve in include/cgdrop.h): the
//! bits that tell the programs which address groups a rule may cover, so
//! that a packet no rule can match skips the rule lookups. Written through
//! mmap, always before the rule itself is written (a bit set too early only
//! costs a lookup; a rule written before its bit would be skipped).
use std::{
    cell::{Cell, RefCell},
    net::IpAddr,
    num::NonZeroUsize,
    os::fd::BorrowedFd,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context, Result};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::{kernel::skel::types::cgdrop_sieve, rules::Target};

const V4_BITS: u32 = cgdrop_sieve::CGDROP_SIEVE_V4_BITS.0;
const V6_SHORT_BITS: u32 = cgdrop_sieve::CGDROP_SIEVE_V6_SHORT_BITS.0;
const V6_LONG_BITS: u32 = cgdrop_sieve::CGDROP_SIEVE_V6_LONG_BITS.0;
const V6_LONG_PREFIX: u8 = cgdrop_sieve::CGDROP_SIEVE_V6_LONG_PREFIX.0 as u8;
const V4_WORD: usize = cgdrop_sieve::CGDROP_SIEVE_V4_WORD.0 as usize;
const V6_SHORT_WORD: usize = cgdrop_sieve::CGDROP_SIEVE_V6_SHORT_WORD.0 as usize;
const V6_LONG_WORD: usize = cgdrop_sieve::CGDROP_SIEVE_V6_LONG_WORD.0 as usize;
/// The number of 64-bit words of the map.
pub const WORDS: usize = cgdrop_sieve::CGDROP_SIEVE_WORDS.0 as usize;
/// The multiplier of the IPv6 long part's hash (SIEVE_V6_HASH in bpf/cgdrop.bpf.c).
const V6_HASH: u64 = 0x9e37_79b9_7f4a_7c15;

/// A range of bits of the sieve: `count` bits from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bits {
    start: usize,
    count: usize,
}

/// The bits a rule for `t` covers: every group of addresses that it may match.
fn bits_of(t: &Target) -> Bits {
    match t.addr {
        IpAddr::V4(a) => group(V4_WORD, u32::from(a), t.prefix, V4_BITS),
        IpAddr::V6(a) if t.prefix >= V6_LONG_PREFIX => {
            let top = (u128::from(a) >> 64) as u64;
            let bit = (top.wrapping_mul(V6_HASH) >> (64 - V6_LONG_BITS)) as usize;
            Bits { start: V6_LONG_WORD * 64 + bit, count: 1 }
        }
        IpAddr::V6(a) => group(V6_SHORT_WORD, (u128::from(a) >> 96) as u32, t.prefix, V6_SHORT_BITS),
    }
}

/// The groups (the top `bits` bits of `top`, a /bits each) a prefix of
/// `prefix` bits covers: one, or all those under a shorter prefix.
fn group(word: usize, top: u32, prefix: u8, bits: u32) -> Bits {
    let first = (top >> (32 - bits)) as usize;
    let prefix = u32::from(prefix);
    if prefix >= bits {
        return Bits { start: word * 64 + first, count: 1 };
    }
    let count = 1usize << (bits - prefix);
    Bits { start: word * 64 + (first & !(count - 1)), count }
}

/// The sieve of one policy, mapped into this process as far as it is used:
/// page by page for the first few pages a change touches, whole after that.
/// Why: the kernel maps every page of a map's mmap at once, so mapping all
/// 2.7 MB for one rule's bit cost ~0.3 ms to map and ~0.15 ms to unmap, a
/// start-up's; a page is ~10 µs.
pub struct Sieve<'fd> {
    fd: BorrowedFd<'fd>,
    page_words: usize,
    /// The pages mapped one by one (page index, address), while few.
    pages: RefCell<Vec<(usize, NonNull<AtomicU64>)>>,
    /// The whole map, once more than PAGES_ALONE pages were needed.
    whole: Cell<Option<NonNull<AtomicU64>>>,
}

/// How many pages are mapped one at a time before the whole map is.
const PAGES_ALONE: usize = 8;

impl<'fd> Sieve<'fd> {
    /// The `cgdrop_sieve` array behind `map`, mapped on first use.
    pub fn map(map: BorrowedFd<'fd>) -> Result<Self> {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
            .filter(|p| *p >= 8 && p.is_power_of_two())
            .context("reading the page size")?;
        Ok(Self { fd: map, page_words: page / 8, pages: RefCell::new(Vec::new()), whole: Cell::new(None) })
    }

    /// Maps `len` bytes of the map from byte `offset`, shared: the programs
    /// and other processes use it at once, so it is only accessed as atomics.
    fn mmap_at(&self, offset: usize, len: usize) -> Result<NonNull<AtomicU64>> {
        let len = NonZeroUsize::new(len).context("the sieve has no words")?;
        let offset = i64::try_from(offset).context("sieve offset")?;
        // SAFETY: a fresh shared mapping of the map's fd (no existing memory
        // is touched); it lives until Drop unmaps it.
        let ptr = unsafe {
            mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, self.fd, offset)
                .context("mapping the rule sieve (cgdrop_sieve) into memory")?
        };
        Ok(ptr.cast())
    }

    fn whole_len() -> usize {
        WORDS * 8
    }

    /// The bytes of page `page` that are the map's (the last page has fewer).
    fn page_len(&self, page: usize) -> usize {
        (self.page_words * 8).min(Self::whole_len() - page * self.page_words * 8)
    }

    fn word(&self, i: usize) -> Result<&AtomicU64> {
        assert!(i < WORDS, "sieve word {i} out of {WORDS}");
        if let Some(all) = self.whole.get() {
            // SAFETY: i is in bounds (asserted), and the mapping lives as long as self.
            return Ok(unsafe { &*all.as_ptr().add(i) });
        }
        let (page, within) = (i / self.page_words, i % self.page_words);
        let mut pages = self.pages.borrow_mut();
        let base = match pages.iter().find(|(p, _)| *p == page) {
            Some(&(_, base)) => base,
            None if pages.len() < PAGES_ALONE => {
                let base = self.mmap_at(page * self.page_words * 8, self.page_len(page))?;
                pages.push((page, base));
                base
            }
            None => {
                let all = self.mmap_at(0, Self::whole_len())?;
                self.whole.set(Some(all));
                // SAFETY: as above.
                return Ok(unsafe { &*all.as_ptr().add(i) });
            }
        };
        // SAFETY: `within` is inside the mapped page (or the map's last,
        // shorter part: i < WORDS), which lives as long as self.
        Ok(unsafe { &*base.as_ptr().add(within) })
    }

    /// The words and masks a range of bits is made of.
    fn words_of(b: Bits) -> impl Iterator<Item = (usize, u64)> {
        let end = b.start + b.count;
        (b.start / 64..end.div_ceil(64)).map(move |w| {
            let lo = b.start.max(w * 64) - w * 64;
            let hi = end.min(w * 64 + 64) - w * 64;
            let mask = if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << lo };
            (w, mask)
        })
    }

    /// Sets the bits of every group a rule for `t` may match. Before the
    /// rule is written: the syscall that writes it orders the two.
    pub fn mark(&self, t: &Target) -> Result<()> {
        for (w, mask) in Self::words_of(bits_of(t)) {
            let word = self.word(w)?;
            if word.load(Ordering::Relaxed) & mask != mask {
                word.fetch_or(mask, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    /// Whether every group of `t` has its bit (a rule without them would be skipped).
    pub fn covers(&self, t: &Target) -> Result<bool> {
        for (w, mask) in Self::words_of(bits_of(t)) {
            if self.word(w)?.load(Ordering::Relaxed) & mask != mask {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Drop for Sieve<'_> {
    fn drop(&mut self) {
        for &(page, base) in self.pages.borrow().iter() {
            // SAFETY: a mapping made in word(), of this length, unmapped once.
            let _ = unsafe { munmap(base.cast(), self.page_len(page)) };
        }
        if let Some(all) = self.whole.get() {
            // SAFETY: the whole mapping made in word(), unmapped once.
            let _ = unsafe { munmap(all.cast(), Self::whole_len()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    #[test]
    fn groups_of_rules() {
        // 10.1.2.3/32: the /24 10.1.2.0.
        assert_eq!(bits_of(&t("10.1.2.3")), Bits { start: 0x0a0102, count: 1 });
        // A /8 covers 65,536 /24s, starting at its own.
        assert_eq!(bits_of(&t("10.0.0.0/8")), Bits { start: 0x0a0000, count: 1 << 16 });
        assert_eq!(bits_of(&t("0.0.0.0/0")), Bits { start: 0, count: 1 << 24 });
        // IPv6 under /64: the top 20 bits; a /16 covers 16 of them.
        assert_eq!(bits_of(&t("2001:db8::/32")), Bits { start: V6_SHORT_WORD * 64 + 0x20010, count: 1 });
        assert_eq!(bits_of(&t("2001::/16")), Bits { start: V6_SHORT_WORD * 64 + 0x20010, count: 16 });
        // /64 and longer: one hashed bit, the same for every address of the /64.
        let long = bits_of(&t("2001:db8::1"));
        assert_eq!(long.count, 1);
        assert!(long.start >= V6_LONG_WORD * 64 && long.start < WORDS * 64);
        assert_eq!(long, bits_of(&t("2001:db8::ffff:1/128")));
    }

    #[test]
    #[ignore = "needs root: `make test` runs it as root"]
    fn marks_land_in_the_map_mapped_by_pages_or_whole() {
        use std::os::fd::AsFd;
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: libbpf_rs::libbpf_sys::BPF_F_MMAPABLE,
            ..Default::default()
        };
        let map = libbpf_rs::MapHandle::create(
            libbpf_rs::MapType::Array,
            Some("cgdrop_t_sieve"),
            4,
            (WORDS * 8) as u32,
            1,
            &opts,
        )
        .expect("create a sieve-sized array (root)");
        // One rule per /8: 2 pages each, so that the first few pages are
        // mapped alone and the rest through the whole map.
        let rules: Vec<Target> = (1..40).map(|a| t(&format!("{a}.0.0.0/8"))).collect();
        {
            let sieve = Sieve::map(map.as_fd()).unwrap();
            for r in &rules {
                sieve.mark(r).unwrap();
            }
            assert!(sieve.whole.get().is_some(), "past {PAGES_ALONE} pages the whole map is mapped");
            assert!(rules.iter().all(|r| sieve.covers(r).unwrap()));
        }
        // A fresh mapping, page by page, reads what the first wrote.
        let sieve = Sieve::map(map.as_fd()).unwrap();
        assert!(sieve.covers(&rules[0]).unwrap() && sieve.covers(&t("39.1.2.3")).unwrap());
        assert!(!sieve.covers(&t("40.0.0.1")).unwrap() && !sieve.covers(&t("2001:db8::1")).unwrap());
        assert!(sieve.whole.get().is_none(), "a few lookups map a few pages");
        // The last word of the map (its last page is shorter than a page).
        let last = Bits { start: WORDS * 64 - 1, count: 1 };
        assert_eq!(Sieve::words_of(last).collect::<Vec<_>>(), [(WORDS - 1, 1 << 63)]);
        sieve.word(WORDS - 1).unwrap().fetch_or(1 << 63, Ordering::SeqCst);
        assert_eq!(Sieve::map(map.as_fd()).unwrap().word(WORDS - 1).unwrap().load(Ordering::SeqCst), 1 << 63);
    }

    #[test]
    fn words_and_masks() {
        let w: Vec<_> = Sieve::words_of(Bits { start: 62, count: 4 }).collect();
        assert_eq!(w, [(0, 0b11 << 62), (1, 0b11)]);
        let w: Vec<_> = Sieve::words_of(Bits { start: 64, count: 128 }).collect();
        assert_eq!(w, [(1, u64::MAX), (2, u64::MAX)]);
        let w: Vec<_> = Sieve::words_of(Bits { start: 5, count: 1 }).collect();
        assert_eq!(w, [(0, 1 << 5)]);
    }
}
