//! Packet builders for BPF_PROG_TEST_RUN: an Ethernet header (the program
//! sees `skb->data` at the IP header after it), IPv4/IPv6 headers, extension
//! headers and L4 headers. Used by tests/prog_test_run.rs and bench/prog.rs.
#![allow(dead_code)] // each user takes a different part

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_DEST: u8 = 60;
pub const IPPROTO_DCCP: u8 = 33;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_UDPLITE: u8 = 136;
/// IPv4 "more fragments" flag.
pub const IP_MF: u16 = 0x2000;

pub fn eth(ethertype: u16) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 8, 0, 0]);
    h
}

pub fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = udp(sport, dport);
    h.resize(20, 0);
    h[12] = 5 << 4; // data offset: 5 words
    h
}

pub fn icmp() -> Vec<u8> {
    vec![8, 0, 0, 0, 0, 1, 0, 1]
}

/// Ethernet + IPv4 header (20 bytes) from and to 127.0.0.1 + `l4`.
pub fn ipv4(proto: u8, frag_off: u16, l4: &[u8]) -> Vec<u8> {
    ipv4_at("127.0.0.1", proto, frag_off, l4)
}

/// Ethernet + IPv4 header with `addr` as source and destination (so that
/// both programs see it as the remote address) + `l4`.
pub fn ipv4_at(addr: &str, proto: u8, frag_off: u16, l4: &[u8]) -> Vec<u8> {
    let addr: std::net::Ipv4Addr = addr.parse().unwrap();
    let total = (20 + l4.len()) as u16;
    let mut p = eth(0x0800);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p.extend_from_slice(&frag_off.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&addr.octets());
    p.extend_from_slice(&addr.octets());
    p.extend_from_slice(l4);
    p
}

/// Ethernet + IPv6 header (40 bytes) from and to ::1 + extension headers + `l4`.
pub fn ipv6(next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
    ipv6_at("::1", next, ext, l4)
}

/// As `ipv6`, with `addr` as source and destination.
pub fn ipv6_at(addr: &str, next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
    let addr: std::net::Ipv6Addr = addr.parse().unwrap();
    let payload = (ext.len() + l4.len()) as u16;
    let mut p = eth(0x86DD);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&payload.to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&addr.octets());
    p.extend_from_slice(&addr.octets());
    p.extend_from_slice(ext);
    p.extend_from_slice(l4);
    p
}

/// A hop-by-hop options header (8 bytes) whose next header is `next`.
pub fn hop_by_hop(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// An IPv6 fragment header at fragment offset `offset` (in 8-byte units).
pub fn fragment(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1]);
    h
}

/// A segment routing header (type 4) listing `segments` (segments[0] is the
/// final destination), `left` of them still to visit.
pub fn srh(next: u8, segments: &[&str], left: u8) -> Vec<u8> {
    let n = segments.len() as u8;
    let mut h = vec![next, 2 * n, 4, left, n.saturating_sub(1), 0, 0, 0];
    for s in segments {
        h.extend_from_slice(&s.parse::<std::net::Ipv6Addr>().unwrap().octets());
    }
    h
}

/// A destination options header (8 bytes) whose next header is `next`.
pub fn dest_opts(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}
