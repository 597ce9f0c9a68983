//! The sieve (`cgdrop_sieve`, enum cgdrop_sieve in include/cgdrop.h): the
//! bits that tell the programs which address groups a rule may cover, so
//! that a packet no rule can match skips the rule lookups. Written through
//! mmap, always before the rule itself is written (a bit set too early only
//! costs a lookup; a rule written before its bit would be skipped).
use std::{
    net::IpAddr,
    num::NonZeroUsize,
    os::fd::AsFd,
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

/// The sieve of one policy, mapped into this process.
pub struct Sieve {
    words: NonNull<AtomicU64>,
}

impl Sieve {
    /// Maps the `cgdrop_sieve` array behind `map`.
    pub fn map(map: impl AsFd) -> Result<Self> {
        let len = NonZeroUsize::new(WORDS * 8).context("the sieve has no words")?;
        // SAFETY: a fresh shared mapping of the map's fd (no existing memory
        // is touched); it lives until Drop unmaps it, and is only accessed as
        // atomics, since the programs and other processes use it at once.
        let ptr = unsafe {
            mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, map, 0)
                .context("mapping the rule sieve (cgdrop_sieve) into memory")?
        };
        Ok(Self { words: ptr.cast() })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < WORDS, "sieve word {i} out of {WORDS}");
        // SAFETY: i is in bounds (asserted), and the mapping lives as long as self.
        unsafe { &*self.words.as_ptr().add(i) }
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
    pub fn mark(&self, t: &Target) {
        for (w, mask) in Self::words_of(bits_of(t)) {
            let word = self.word(w);
            if word.load(Ordering::Relaxed) & mask != mask {
                word.fetch_or(mask, Ordering::SeqCst);
            }
        }
    }

    /// Whether every group of `t` has its bit (a rule without them would be skipped).
    pub fn covers(&self, t: &Target) -> bool {
        Self::words_of(bits_of(t)).all(|(w, mask)| self.word(w).load(Ordering::Relaxed) & mask == mask)
    }
}

impl Drop for Sieve {
    fn drop(&mut self) {
        // SAFETY: the mapping made in Sieve::map, of this length, unmapped once.
        let _ = unsafe { munmap(self.words.cast(), WORDS * 8) };
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
    fn words_and_masks() {
        let w: Vec<_> = Sieve::words_of(Bits { start: 62, count: 4 }).collect();
        assert_eq!(w, [(0, 0b11 << 62), (1, 0b11)]);
        let w: Vec<_> = Sieve::words_of(Bits { start: 64, count: 128 }).collect();
        assert_eq!(w, [(1, u64::MAX), (2, u64::MAX)]);
        let w: Vec<_> = Sieve::words_of(Bits { start: 5, count: 1 }).collect();
        assert_eq!(w, [(0, 1 << 5)]);
    }
}
