//! How rules look in the tries: keys (`cgdrop_key_v4/v6`: prefixlen, port,
//! address) and values (`cgdrop_rule`), encoded from and decoded to
//! `Target`/`Entry`.
use std::net::IpAddr;

use anyhow::{bail, Result};

use crate::{
    kernel::{
        config::PORT_BITS,
        rulemaps::Entry,
        skel::types::{cgdrop_action, cgdrop_key_v4, cgdrop_key_v6, cgdrop_rule, cgdrop_rule_origin},
    },
    rules::{Action, Target},
};

// SAFETY: generated from BTF, all fields are integers or byte arrays and the
// padding is explicit (`pad`), so every byte is initialised and any bit
// pattern is valid.
unsafe impl plain::Plain for cgdrop_key_v4 {}
// SAFETY: as above.
unsafe impl plain::Plain for cgdrop_key_v6 {}
// SAFETY: u64, four u32 (two enum newtypes, `pad` explicit), u64: no padding.
unsafe impl plain::Plain for cgdrop_rule {}

/// The bytes of a key or value. Only for the Plain types above, which have no
/// implicit padding.
pub(super) fn bytes<T: plain::Plain>(v: &T) -> &[u8] {
    // SAFETY: T is Plain and has no uninitialised padding (see the impls above).
    unsafe { plain::as_bytes(v) }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    V4 = 0,
    V6 = 1,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

pub(super) fn action_value(action: Action) -> cgdrop_action {
    match action {
        Action::Allow => cgdrop_action::CGDROP_ACTION_ALLOW,
        Action::Deny => cgdrop_action::CGDROP_ACTION_DENY,
    }
}

/// The errno under a libbpf-rs error, if it came from a syscall.
pub(super) fn errno(err: &libbpf_rs::Error) -> Option<i32> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        source = e.source();
    }
    None
}

/// The rule's key in the `rule_hits` map: a 64-bit FNV-1a hash of its trie
/// key (family by the key's length, prefix, port, address). The same rule
/// always gets the same one, whoever writes it, so no allocator is shared
/// between the processes that edit a pinned policy; two rules of one policy
/// sharing a hash (odds about n²/2⁶⁵: 3·10⁻⁸ for a million rules) would
/// only share their hit counts, never a verdict.
pub(crate) fn hit_key_of(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

pub(super) fn value_of(e: &Entry, key: &[u8], prefixlen: u32) -> cgdrop_rule {
    let origin = if e.live { cgdrop_rule_origin::CGDROP_RULE_LIVE } else { cgdrop_rule_origin(0) };
    cgdrop_rule {
        expires_ns: e.expires_ns,
        action: action_value(e.action),
        prefixlen,
        origin,
        pad: 0,
        hit_key: hit_key_of(key),
    }
}

/// A decoded rule value: the entry (its target still to be filled in) and
/// the prefixlen it was written for.
pub(super) struct Value {
    pub(super) entry: Entry,
    pub(super) prefixlen: u32,
}

pub(super) fn decode_value(raw: &[u8]) -> Result<Value> {
    // SAFETY: all-zero bytes are a valid cgdrop_rule (integers, u32 newtypes).
    let mut v: cgdrop_rule = unsafe { std::mem::zeroed() };
    plain::copy_from_bytes(&mut v, raw).map_err(|_| anyhow::anyhow!("a rule value has {} bytes", raw.len()))?;
    let action = match v.action {
        cgdrop_action::CGDROP_ACTION_ALLOW => Action::Allow,
        cgdrop_action::CGDROP_ACTION_DENY => Action::Deny,
        other => bail!("a rule has the unknown action {}", other.0),
    };
    let live = v.origin.0 & cgdrop_rule_origin::CGDROP_RULE_LIVE.0 != 0;
    let unset: Target = Target::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0, 0);
    Ok(Value { entry: Entry { target: unset, action, expires_ns: v.expires_ns, live }, prefixlen: v.prefixlen })
}

/// The target a trie key stands for (the inverse of `key_of`).
pub(super) fn decode_key(family: Family, raw: &[u8]) -> Result<Target> {
    let bad = || anyhow::anyhow!("a {family} rule key has {} bytes", raw.len());
    let (prefixlen, port, addr) = match family {
        Family::V4 => {
            let mut k = cgdrop_key_v4::default();
            plain::copy_from_bytes(&mut k, raw).map_err(|_| bad())?;
            (k.prefixlen, k.port, IpAddr::from(k.addr))
        }
        Family::V6 => {
            let mut k = cgdrop_key_v6::default();
            plain::copy_from_bytes(&mut k, raw).map_err(|_| bad())?;
            (k.prefixlen, k.port, IpAddr::from(k.addr))
        }
    };
    let prefix = prefixlen.checked_sub(PORT_BITS).and_then(|p| u8::try_from(p).ok()).ok_or_else(bad)?;
    Ok(Target::new(addr, prefix, u16::from_be(port)))
}

/// The family, key bytes and key prefix length of a target.
pub(super) fn key_of(t: &Target) -> (Family, Vec<u8>, u32) {
    let prefixlen = PORT_BITS + u32::from(t.prefix);
    match t.addr {
        IpAddr::V4(a) => {
            let key = cgdrop_key_v4 { prefixlen, port: t.port.to_be(), addr: a.octets(), pad: [0; 2] };
            (Family::V4, bytes(&key).to_vec(), prefixlen)
        }
        IpAddr::V6(a) => {
            let key = cgdrop_key_v6 { prefixlen, port: t.port.to_be(), addr: a.octets(), pad: [0; 2] };
            (Family::V6, bytes(&key).to_vec(), prefixlen)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_to_their_target() {
        for t in ["10.0.0.0/8", "8.8.8.8/32:53", "2001:db8::/32", "[2001:db8::1/128]:443", "0.0.0.0/0", "::/0"] {
            let target: Target = t.parse().unwrap();
            let (family, key, prefixlen) = key_of(&target);
            assert_eq!(prefixlen, 16 + u32::from(target.prefix));
            assert_eq!(decode_key(family, &key).unwrap(), target, "{t}");
        }
    }

    #[test]
    fn values_decode_to_their_action() {
        let e = Entry { target: "1.2.3.4".parse().unwrap(), action: Action::Deny, expires_ns: 42, live: true };
        let v = value_of(&e, &key_of(&e.target).1, 48);
        let back = decode_value(bytes(&v)).unwrap();
        assert_eq!(
            (back.entry.action, back.entry.expires_ns, back.entry.live, back.prefixlen),
            (Action::Deny, 42, true, 48)
        );
        let bad = cgdrop_rule { action: cgdrop_action(7), ..v };
        assert!(decode_value(bytes(&bad)).is_err());
    }
}
