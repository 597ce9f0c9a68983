//! BPF_PROG_TEST_RUN tests of the two cgroup_skb programs on crafted packets:
//! IPv4/IPv6 × TCP/UDP/ICMP, extension headers, fragments and truncated
//! headers, asserting each verdict and the counters. They load the real object
//! through the same loader as cgdrop, with the configuration in rodata. Root only.
//!
//! The kernel refuses BPF_PROG_TEST_RUN on packets shorter than their IP
//! header (EINVAL), and the IP stack never hands such packets to the hooks, so
//! truncation is tested past the IP header: L4 headers, extension headers, IHL.
mod common;

use std::time::Duration;

use cgdrop::{
    kernel::{
        loader::{self, Hook, Loaded},
        rulemaps::{self, Installed, RuleMaps},
        skel::CgdropSkel,
        stats::{self, Traffic},
    },
    policy::Policy,
    rules::{Action, Rule, Target},
};
use libbpf_rs::ProgramInput;

const PASS: u32 = 1;
const DROP: u32 = 0;

use common::packets::*;
fn policy(port: Option<u16>, ifindex: u32) -> Policy {
    Policy {
        ingress: true,
        egress: true,
        iface: (ifindex != 0).then(|| ("test".to_string(), ifindex)),
        port: port.map(|p| cgdrop::rules::PortRange { lo: p, hi: p }),
        rules: Vec::new(),
        rules_file: None,
        cli_rules: Vec::new(),
        log_rate: 0,
        kill_existing: false,
        no_new_inbound: false,
        reject_with: Default::default(),
        silent: false,
        dry_run: false,
    }
}

/// A policy with `rules` (`allow|deny TARGET`, no ttl), no other filter.
fn with_rules(rules: &[(&str, &str)]) -> Policy {
    let rules = rules
        .iter()
        .map(|(action, t)| Rule {
            action: if *action == "allow" { Action::Allow } else { Action::Deny },
            target: t.parse().unwrap(),
            ttl: None,
        })
        .collect();
    Policy { rules, ..policy(None, 0) }
}

/// Runs every case through both programs and checks verdicts and counters.
fn check(policy: &Policy, cases: &[(&str, Vec<u8>, u32)]) {
    let mut object = loader::Objects::new();
    let mut skel = loader::load(policy, &mut object, true).expect("load the BPF object");
    loader::apply_rules(&mut skel, &mut Installed::new(), policy).expect("write the rules");
    run_cases(&skel, cases);
}

/// Runs every case through both programs of a loaded skeleton; checks
/// verdicts and that the counters (fresh before) add up.
fn run_cases(skel: &Loaded<'_>, cases: &[(&str, Vec<u8>, u32)]) {
    run_verdicts(skel, cases);
    let mut expected = Traffic::default();
    for (_, packet, verdict) in cases {
        // The program sees the packet from the IP header on: skb->len excludes Ethernet.
        let len = (packet.len() - 14) as u64;
        expected.packets += 1;
        expected.bytes += len;
        if *verdict == DROP {
            expected.dropped_packets += 1;
            expected.dropped_bytes += len;
        }
    }
    let got = read_stats(skel);
    assert_eq!(got.ingress, expected, "ingress counters");
    assert_eq!(got.egress, expected, "egress counters");
}

/// The verdicts of both programs on every case (counters not checked: they
/// add up over calls, which run_cases expects fresh).
fn run_verdicts(skel: &Loaded<'_>, cases: &[(&str, Vec<u8>, u32)]) {
    for (name, packet, verdict) in cases {
        for prog in [Hook::Ingress.program(skel), Hook::Egress.program(skel)] {
            let out = prog
                .test_run(ProgramInput { data_in: Some(packet), ..Default::default() })
                .unwrap_or_else(|e| panic!("{name}: test run failed: {e}"));
            assert_eq!(out.return_value, *verdict, "{name}: verdict of {}", prog.name().to_string_lossy());
        }
    }
}

fn read_stats(skel: &CgdropSkel<'_>) -> stats::Stats {
    stats::read(&skel.maps.cgdrop_stats).expect("read stats")
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn no_filter_drops_every_packet() {
    check(
        &policy(None, 0),
        &[
            ("ipv4 udp", ipv4(IPPROTO_UDP, 0, &udp(1000, 53)), DROP),
            ("ipv4 tcp", ipv4(IPPROTO_TCP, 0, &tcp(1000, 80)), DROP),
            ("ipv4 icmp", ipv4(IPPROTO_ICMP, 0, &icmp()), DROP),
            ("ipv6 udp", ipv6(IPPROTO_UDP, &[], &udp(1000, 53)), DROP),
            ("ipv6 tcp", ipv6(IPPROTO_TCP, &[], &tcp(1000, 443)), DROP),
            ("ipv6 icmp", ipv6(IPPROTO_ICMPV6, &[], &icmp()), DROP),
            ("ipv4 fragment", ipv4(IPPROTO_UDP, 100, &[0; 16]), DROP),
        ],
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn port_filter_matches_source_or_destination() {
    check(
        &policy(Some(53), 0),
        &[
            ("ipv4 udp dport 53", ipv4(IPPROTO_UDP, 0, &udp(40000, 53)), DROP),
            ("ipv4 udp sport 53", ipv4(IPPROTO_UDP, 0, &udp(53, 40000)), DROP),
            ("ipv4 udp other port", ipv4(IPPROTO_UDP, 0, &udp(40000, 54)), PASS),
            ("ipv4 tcp dport 53", ipv4(IPPROTO_TCP, 0, &tcp(40000, 53)), DROP),
            ("ipv4 tcp other port", ipv4(IPPROTO_TCP, 0, &tcp(40000, 80)), PASS),
            ("ipv6 udp dport 53", ipv6(IPPROTO_UDP, &[], &udp(40000, 53)), DROP),
            ("ipv6 tcp sport 53", ipv6(IPPROTO_TCP, &[], &tcp(53, 40000)), DROP),
            ("ipv6 tcp other port", ipv6(IPPROTO_TCP, &[], &tcp(40000, 443)), PASS),
            // Packets without ports never match a port filter.
            ("ipv4 icmp", ipv4(IPPROTO_ICMP, 0, &icmp()), PASS),
            ("ipv6 icmp", ipv6(IPPROTO_ICMPV6, &[], &icmp()), PASS),
        ],
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn port_range_filter_matches_its_ends_and_nothing_outside() {
    let range = Policy { port: Some(cgdrop::rules::PortRange { lo: 8000, hi: 8100 }), ..policy(None, 0) };
    check(
        &range,
        &[
            ("below", ipv4(IPPROTO_UDP, 0, &udp(40000, 7999)), PASS),
            ("first", ipv4(IPPROTO_UDP, 0, &udp(40000, 8000)), DROP),
            ("inside, source port", ipv4(IPPROTO_TCP, 0, &tcp(8050, 40000)), DROP),
            ("last", ipv6(IPPROTO_TCP, &[], &tcp(40000, 8100)), DROP),
            ("above", ipv6(IPPROTO_UDP, &[], &udp(40000, 8101)), PASS),
        ],
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn port_filter_on_fragments_and_extension_headers() {
    check(
        &policy(Some(53), 0),
        &[
            // The first fragment carries the UDP header; later ones have no ports.
            ("ipv4 first fragment", ipv4(IPPROTO_UDP, IP_MF, &udp(40000, 53)), DROP),
            ("ipv4 non-first fragment", ipv4(IPPROTO_UDP, IP_MF | 1, &udp(40000, 53)), PASS),
            ("ipv6 hop-by-hop then udp 53", ipv6(NEXTHDR_HOP, &hop_by_hop(IPPROTO_UDP), &udp(40000, 53)), DROP),
            ("ipv6 hop-by-hop then udp 54", ipv6(NEXTHDR_HOP, &hop_by_hop(IPPROTO_UDP), &udp(40000, 54)), PASS),
            (
                "ipv6 first fragment udp 53",
                ipv6(NEXTHDR_FRAGMENT, &fragment(IPPROTO_UDP, 0, true), &udp(40000, 53)),
                DROP,
            ),
            (
                "ipv6 non-first fragment",
                ipv6(NEXTHDR_FRAGMENT, &fragment(IPPROTO_UDP, 10, false), &udp(40000, 53)),
                PASS,
            ),
        ],
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn port_filter_on_truncated_packets_passes() {
    let mut ipv4_cut = ipv4(IPPROTO_UDP, 0, &udp(40000, 53));
    ipv4_cut.truncate(14 + 20 + 2); // half the UDP ports
    let mut ipv6_cut = ipv6(IPPROTO_TCP, &[], &tcp(40000, 53));
    ipv6_cut.truncate(14 + 40 + 3);
    let mut ext_cut = ipv6(NEXTHDR_HOP, &hop_by_hop(IPPROTO_UDP), &udp(40000, 53));
    // An IHL of 15 words claims 40 bytes of options the packet does not have.
    let mut ihl_too_long = ipv4(IPPROTO_UDP, 0, &udp(40000, 53));
    ihl_too_long[14] = 0x4f;
    ext_cut.truncate(14 + 40 + 4); // inside the extension header
    check(
        &policy(Some(53), 0),
        &[
            ("ipv4 truncated udp header", ipv4_cut, PASS),
            ("ipv6 truncated tcp header", ipv6_cut, PASS),
            ("ipv6 truncated extension header", ext_cut, PASS),
            ("ipv4 ihl past the end", ihl_too_long, PASS),
            ("not ip", eth(0x0806).into_iter().chain([0; 28]).collect(), PASS),
        ],
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn interface_filter() {
    // BPF_PROG_TEST_RUN gives the packet the loopback device (ifindex 1).
    check(&policy(None, 1), &[("udp on lo", ipv4(IPPROTO_UDP, 0, &udp(1, 2)), DROP)]);
    check(&policy(None, 4242), &[("udp on another interface", ipv4(IPPROTO_UDP, 0, &udp(1, 2)), PASS)]);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn unselected_direction_passes() {
    let egress_only = Policy { ingress: false, ..policy(None, 0) };
    let mut object = loader::Objects::new();
    // The ingress program too (cgdrop itself neither loads nor attaches it for this policy).
    let skel = loader::load_programs(&egress_only, &mut object, &loader::Hook::ALL, true).expect("load");
    let packet = ipv4(IPPROTO_UDP, 0, &udp(1, 2));
    let run = |prog: &libbpf_rs::ProgramMut<'_>| {
        prog.test_run(ProgramInput { data_in: Some(&packet), ..Default::default() }).unwrap().return_value
    };
    assert_eq!(run(Hook::Ingress.program(&skel)), PASS);
    assert_eq!(run(Hook::Egress.program(&skel)), DROP);
    let s = read_stats(&skel);
    assert_eq!((s.ingress.packets, s.ingress.dropped_packets), (1, 0));
    assert_eq!((s.egress.packets, s.egress.dropped_packets), (1, 1));
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn longest_prefix_wins() {
    let udp = udp(5000, 5000);
    check(
        &with_rules(&[("deny", "10.0.0.0/8"), ("allow", "10.1.0.0/16"), ("deny", "10.1.2.0/24")]),
        &[
            ("in the /8", ipv4_at("10.2.3.4", IPPROTO_UDP, 0, &udp), DROP),
            ("in the allowed /16", ipv4_at("10.1.5.5", IPPROTO_UDP, 0, &udp), PASS),
            ("in the /24 inside the /16", ipv4_at("10.1.2.3", IPPROTO_UDP, 0, &udp), DROP),
            ("no rule, block list", ipv4_at("11.0.0.1", IPPROTO_UDP, 0, &udp), PASS),
            ("icmp in the /8", ipv4_at("10.9.9.9", IPPROTO_ICMP, 0, &icmp()), DROP),
        ],
    );
    check(
        &with_rules(&[("deny", "2001:db8::/32"), ("allow", "2001:db8:1::/48")]),
        &[
            ("in the /32", ipv6_at("2001:db8:2::1", IPPROTO_UDP, &[], &udp), DROP),
            ("in the allowed /48", ipv6_at("2001:db8:1::1", IPPROTO_UDP, &[], &udp), PASS),
            ("no rule, block list", ipv6_at("2001:db9::1", IPPROTO_UDP, &[], &udp), PASS),
        ],
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn port_rule_beats_portless_rule() {
    // Source and destination port equal, so that both programs see it as the remote port.
    check(
        &with_rules(&[
            ("deny", "10.0.0.0/8"),
            ("allow", "10.0.0.0/8:443"),
            ("deny", "10.1.1.1"),
            ("allow", "10.0.0.0/8:53"),
        ]),
        &[
            ("port 443 allowed", ipv4_at("10.2.2.2", IPPROTO_TCP, 0, &tcp(443, 443)), PASS),
            ("port 80 denied", ipv4_at("10.2.2.2", IPPROTO_TCP, 0, &tcp(80, 80)), DROP),
            ("a /8 with port beats a /32 without", ipv4_at("10.1.1.1", IPPROTO_UDP, 0, &udp(53, 53)), PASS),
            ("icmp has no port", ipv4_at("10.2.2.2", IPPROTO_ICMP, 0, &icmp()), DROP),
        ],
    );
    check(
        &with_rules(&[("allow", "[2001:db8::1]:443")]),
        &[
            ("allow-only, port hit", ipv6_at("2001:db8::1", IPPROTO_TCP, &[], &tcp(443, 443)), PASS),
            ("allow-only, port miss", ipv6_at("2001:db8::1", IPPROTO_TCP, &[], &tcp(80, 80)), DROP),
        ],
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn allow_only_and_ipv4_mapped() {
    let udp = udp(5000, 5000);
    check(
        &with_rules(&[("allow", "127.0.0.0/8"), ("allow", "::1")]),
        &[
            ("loopback v4", ipv4_at("127.0.0.5", IPPROTO_UDP, 0, &udp), PASS),
            ("loopback v6", ipv6_at("::1", IPPROTO_UDP, &[], &udp), PASS),
            ("other v4", ipv4_at("192.0.2.1", IPPROTO_UDP, 0, &udp), DROP),
            ("other v6", ipv6_at("2001:db8::1", IPPROTO_UDP, &[], &udp), DROP),
            ("v4-mapped loopback in an IPv6 header", ipv6_at("::ffff:127.0.0.1", IPPROTO_UDP, &[], &udp), PASS),
            ("v4-mapped other", ipv6_at("::ffff:192.0.2.1", IPPROTO_UDP, &[], &udp), DROP),
        ],
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn expired_rules_do_not_match() {
    let p = policy(None, 0);
    let mut object = loader::Objects::new();
    let mut loaded = loader::load(&p, &mut object, true).expect("load");
    // The skeleton itself: its maps are borrowed one by one below.
    let skel: &mut CgdropSkel<'_> = &mut loaded;
    let rule = |action, t: &str, ttl| Rule { action, target: t.parse::<Target>().unwrap(), ttl };
    let rules = [
        rule(Action::Deny, "10.0.0.0/8", None),
        // Expired: must not hide the /8 below it.
        rule(Action::Allow, "10.1.0.0/16", Some(Duration::from_secs(1))),
        // Expired, and the only rule for 192.0.2.0/24.
        rule(Action::Deny, "192.0.2.0/24", Some(Duration::from_secs(1))),
        // Not expired.
        rule(Action::Allow, "10.2.0.0/16", Some(Duration::from_secs(3600))),
    ];
    // Written as if 100 s ago: the 1 s rules expired long since.
    let then_ns = rulemaps::boot_time_ns().unwrap() - 100_000_000_000;
    let maps = RuleMaps {
        v4: &skel.maps.cgdrop_rules_v4,
        v6: &skel.maps.cgdrop_rules_v6,
        hosts_v4: &skel.maps.cgdrop_hosts_v4,
        sieve: &skel.maps.cgdrop_sieve,
    };
    let bss = skel.maps.bss_data.as_deref_mut().unwrap();
    bss.has_rules = 1;
    maps.replace(&mut Installed::new(), &rules, then_ns, || {
        bss.unmatched_pass = 1;
        Ok(())
    })
    .unwrap();
    let udp = udp(5000, 5000);
    run_cases(
        &loaded,
        &[
            ("expired allow /16 falls back to the /8 deny", ipv4_at("10.1.1.1", IPPROTO_UDP, 0, &udp), DROP),
            ("expired deny: no rule, block list passes", ipv4_at("192.0.2.7", IPPROTO_UDP, 0, &udp), PASS),
            ("live allow", ipv4_at("10.2.1.1", IPPROTO_UDP, 0, &udp), PASS),
        ],
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn the_sieve_lets_every_rule_be_seen() {
    // Rules in each part of the sieve (enum cgdrop_sieve): IPv4 /32 and a /8
    // over 65,536 groups; IPv6 /128 and /64 (hashed), /63 and /16 (the top
    // 20 bits). A packet in each is judged by its rule; one next to it, in
    // a group no rule has, passes the block list without a lookup.
    let rules = [
        ("deny", "198.51.100.7"),
        ("deny", "10.0.0.0/8"),
        ("deny", "2001:db8:aa::7"),
        ("deny", "2001:db8:bb::/64"),
        ("deny", "2001:db8:cc::/63"),
        ("deny", "3ffe::/16"),
    ];
    let udp = udp(5000, 5000);
    let cases = [
        ("v4 /32", ipv4_at("198.51.100.7", IPPROTO_UDP, 0, &udp), DROP),
        ("v4 /32's group, another address", ipv4_at("198.51.100.8", IPPROTO_UDP, 0, &udp), PASS),
        ("v4 next group", ipv4_at("198.51.101.7", IPPROTO_UDP, 0, &udp), PASS),
        ("v4 /8, first group", ipv4_at("10.0.0.1", IPPROTO_UDP, 0, &udp), DROP),
        ("v4 /8, last group", ipv4_at("10.255.255.254", IPPROTO_UDP, 0, &udp), DROP),
        ("v4 past the /8", ipv4_at("11.0.0.1", IPPROTO_UDP, 0, &udp), PASS),
        ("v4-mapped /32", ipv6_at("::ffff:198.51.100.7", IPPROTO_UDP, &[], &udp), DROP),
        ("v6 /128", ipv6_at("2001:db8:aa::7", IPPROTO_UDP, &[], &udp), DROP),
        ("v6 /128's /64, another address", ipv6_at("2001:db8:aa::8", IPPROTO_UDP, &[], &udp), PASS),
        ("v6 /64", ipv6_at("2001:db8:bb::ffff:1", IPPROTO_UDP, &[], &udp), DROP),
        ("v6 /63, upper /64", ipv6_at("2001:db8:cc:1::1", IPPROTO_UDP, &[], &udp), DROP),
        ("v6 past the /63", ipv6_at("2001:db8:cc:2::1", IPPROTO_UDP, &[], &udp), PASS),
        ("v6 /16", ipv6_at("3ffe:ffff::1", IPPROTO_UDP, &[], &udp), DROP),
        ("v6 past the /16", ipv6_at("3fff::1", IPPROTO_UDP, &[], &udp), PASS),
    ];
    check(&with_rules(&rules), &cases);

    // Written one by one into a loaded policy, as `rule add` does: each
    // marks its groups before it is written.
    let p = with_rules(&[("deny", "192.0.2.1")]);
    let mut object = loader::Objects::new();
    let mut skel = loader::load(&p, &mut object, true).expect("load");
    loader::apply_rules(&mut skel, &mut Installed::new(), &p).expect("write the rules");
    let maps = RuleMaps {
        v4: &skel.maps.cgdrop_rules_v4,
        v6: &skel.maps.cgdrop_rules_v6,
        hosts_v4: &skel.maps.cgdrop_hosts_v4,
        sieve: &skel.maps.cgdrop_sieve,
    };
    for (_, t) in rules {
        let entry = rulemaps::Entry { target: t.parse().unwrap(), action: Action::Deny, expires_ns: 0, live: true };
        maps.put(&entry).expect("add a rule");
    }
    run_cases(&skel, &cases);
}

/// `n` deny rules for 10.0.0.0 + i (/32, no port): enough for the host table.
fn host_rules(n: u32) -> Vec<Rule> {
    (0..n)
        .map(|i| Rule {
            action: Action::Deny,
            target: Target::new(std::net::Ipv4Addr::from(0x0a00_0000 + i).into(), 32, 0),
            ttl: None,
        })
        .collect()
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn host_table_rules_decide_and_change_in_place() {
    // 5,000 /32 rules (a table: HOST_TABLE_MIN is 4,096), a port rule and a
    // /24 beside them.
    let mut rules = host_rules(5000);
    rules.push(Rule { action: Action::Allow, target: "10.0.0.7:53".parse().unwrap(), ttl: None });
    rules.push(Rule { action: Action::Deny, target: "192.0.2.0/24".parse().unwrap(), ttl: None });
    let p = Policy { rules, ..policy(None, 0) };
    assert_eq!(cgdrop::kernel::config::host_table_size(&p.rules), 5000);
    let mut object = loader::Objects::new();
    let mut skel = loader::load(&p, &mut object, true).expect("load");
    let mut installed = Installed::new();
    loader::apply_rules(&mut skel, &mut installed, &p).expect("write the rules");
    let at = |a: &str, port: u16| ipv4_at(a, IPPROTO_UDP, 0, &udp(port, port));
    run_cases(
        &skel,
        &[
            ("first host", at("10.0.0.0", 5000), DROP),
            ("a host in the middle", at("10.0.9.195", 5000), DROP),
            ("last host", at("10.0.19.135", 5000), DROP),
            ("past the last", at("10.0.19.136", 5000), PASS),
            ("a port rule beats a host", at("10.0.0.7", 53), PASS),
            ("the host without that port", at("10.0.0.7", 80), DROP),
            ("a /24 from the trie", at("192.0.2.9", 5000), DROP),
            ("v4-mapped host", ipv6_at("::ffff:10.0.0.1", IPPROTO_UDP, &[], &udp(5000, 5000)), DROP),
        ],
    );
    let maps = RuleMaps {
        v4: &skel.maps.cgdrop_rules_v4,
        v6: &skel.maps.cgdrop_rules_v6,
        hosts_v4: &skel.maps.cgdrop_hosts_v4,
        sieve: &skel.maps.cgdrop_sieve,
    };
    let all = maps.read_all().expect("read the rules");
    assert_eq!(all.entries.len(), 5002, "every rule, the table's included, is listed");
    let entry =
        |t: &str, action, expires_ns| rulemaps::Entry { target: t.parse().unwrap(), action, expires_ns, live: true };
    // `rule del`, `rule add allow` in place, `rule add --ttl` (to the trie).
    maps.delete(&"10.0.0.1".parse().unwrap()).unwrap();
    maps.put(&entry("10.0.0.2", Action::Allow, 0)).unwrap();
    let later = rulemaps::boot_time_ns().unwrap() + 3_600_000_000_000;
    maps.put(&entry("10.0.0.3", Action::Allow, later)).unwrap();
    assert_eq!(maps.get(&"10.0.0.1".parse().unwrap()).unwrap(), None);
    assert_eq!(maps.get(&"10.0.0.2".parse().unwrap()).unwrap().map(|e| e.action), Some(Action::Allow));
    assert_eq!(maps.get(&"10.0.0.3".parse().unwrap()).unwrap().map(|e| e.expires_ns), Some(later));
    run_verdicts(
        &skel,
        &[
            ("deleted host", at("10.0.0.1", 5000), PASS),
            ("host now allowed", at("10.0.0.2", 5000), PASS),
            ("host allowed for an hour, from the trie", at("10.0.0.3", 5000), PASS),
            ("untouched host", at("10.0.0.4", 5000), DROP),
        ],
    );
    // A reload to another set: the table keeps its addresses, the rest go to the trie.
    let mut reload = host_rules(10);
    reload.push(Rule { action: Action::Deny, target: "10.9.9.9".parse().unwrap(), ttl: None });
    let p2 = Policy { rules: reload, ..policy(None, 0) };
    // As `apply` does to a pinned policy: what is installed, read back (10.0.0.3's ttl rule included).
    let mut installed = maps.read_all().expect("read the rules");
    loader::apply_rules(&mut skel, &mut installed, &p2).expect("reload the rules");
    run_verdicts(
        &skel,
        &[
            ("kept host", at("10.0.0.5", 5000), DROP),
            ("host the reload dropped", at("10.0.0.100", 5000), PASS),
            ("new host, in the trie", at("10.9.9.9", 5000), DROP),
            ("a host the reload made permanent again", at("10.0.0.3", 5000), DROP),
        ],
    );
    // Its ttl rule left the trie with the reload: deleting the host leaves no rule behind.
    let maps = RuleMaps {
        v4: &skel.maps.cgdrop_rules_v4,
        v6: &skel.maps.cgdrop_rules_v6,
        hosts_v4: &skel.maps.cgdrop_hosts_v4,
        sieve: &skel.maps.cgdrop_sieve,
    };
    maps.delete(&"10.0.0.3".parse().unwrap()).unwrap();
    assert_eq!(maps.get(&"10.0.0.3".parse().unwrap()).unwrap(), None);
    run_verdicts(&skel, &[("deleted after the reload", at("10.0.0.3", 5000), PASS)]);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn dry_run_counts_but_passes() {
    let p = Policy { dry_run: true, ..policy(None, 0) };
    let mut object = loader::Objects::new();
    let skel = loader::load(&p, &mut object, true).expect("load");
    let packet = ipv4(IPPROTO_UDP, 0, &udp(1, 2));
    for prog in [Hook::Ingress.program(&skel), Hook::Egress.program(&skel)] {
        let out = prog.test_run(ProgramInput { data_in: Some(&packet), ..Default::default() }).unwrap();
        assert_eq!(out.return_value, PASS);
    }
    let s = read_stats(&skel);
    assert_eq!((s.ingress.packets, s.ingress.dropped_packets), (1, 1), "counted as dropped");
    assert_eq!((s.egress.packets, s.egress.dropped_packets), (1, 1), "counted as dropped");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn silent_egress_drops_with_congestion_notification() {
    let p = Policy { silent: true, ..policy(None, 0) };
    let mut object = loader::Objects::new();
    let skel = loader::load(&p, &mut object, true).expect("load");
    let packet = ipv4(IPPROTO_UDP, 0, &udp(1, 2));
    let run = |prog: &libbpf_rs::ProgramMut<'_>| {
        prog.test_run(ProgramInput { data_in: Some(&packet), ..Default::default() }).unwrap().return_value
    };
    // 2 = drop with congestion notification: UDP senders see no error.
    assert_eq!(run(Hook::Egress.program(&skel)), 2);
    assert_eq!(run(Hook::Ingress.program(&skel)), DROP);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn addresses_are_read_from_the_right_header_field() {
    // Egress matches the destination, ingress the source: a packet from
    // 10.0.0.1 to 192.0.2.1 with 10.0.0.0/8 denied.
    let p = with_rules(&[("deny", "10.0.0.0/8")]);
    let mut object = loader::Objects::new();
    let mut skel = loader::load(&p, &mut object, true).expect("load");
    loader::apply_rules(&mut skel, &mut Installed::new(), &p).unwrap();
    let mut packet = ipv4_at("10.0.0.1", IPPROTO_UDP, 0, &udp(1, 2));
    let dst: std::net::Ipv4Addr = "192.0.2.1".parse().unwrap();
    packet[14 + 16..14 + 20].copy_from_slice(&dst.octets());
    let run = |prog: &libbpf_rs::ProgramMut<'_>| {
        prog.test_run(ProgramInput { data_in: Some(&packet), ..Default::default() }).unwrap().return_value
    };
    assert_eq!(run(Hook::Ingress.program(&skel)), DROP, "ingress: the source is remote");
    assert_eq!(run(Hook::Egress.program(&skel)), PASS, "egress: the destination is remote");
}

/// xorshift64*: a small deterministic generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A random packet: an Ethernet header of IPv4, IPv6 or something else, then
/// random bytes (a plausible IP header half the time), cut at a random length.
fn random_packet(rng: &mut Rng) -> Vec<u8> {
    let kind = rng.next() % 3;
    let ethertype = [0x0800u16, 0x86DD, 0x0806][kind as usize];
    let mut p = eth(ethertype);
    let body_len = 40 + (rng.next() % 200) as usize;
    let mut body = rng.bytes(body_len);
    if rng.next() % 2 == 0 {
        match kind {
            0 => {
                body[0] = 0x40 | (5 + (rng.next() % 11) as u8); // version 4, IHL 5–15
                body[9] = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP][(rng.next() % 3) as usize];
            }
            1 => {
                body[0] = 0x60;
                body[6] = [IPPROTO_TCP, IPPROTO_UDP, NEXTHDR_HOP, NEXTHDR_FRAGMENT, 43, 60][(rng.next() % 6) as usize];
            }
            _ => {}
        }
    }
    p.extend_from_slice(&body);
    p
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn random_packets_follow_the_policy() {
    // 5,000 packets in `make test`; `make fuzz` sets CGDROP_FUZZ_PACKETS higher.
    let n: u64 = std::env::var("CGDROP_FUZZ_PACKETS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let seed = std::env::var("CGDROP_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_cafe_f00d_0001);
    let mut rng = Rng(seed);
    let packets: Vec<Vec<u8>> = (0..n).map(|_| random_packet(&mut rng)).collect();
    let run = |prog: &libbpf_rs::ProgramMut<'_>, p: &[u8]| {
        prog.test_run(ProgramInput { data_in: Some(p), ..Default::default() }).expect("test run").return_value
    };

    // A policy that drops everything in scope drops every packet, parsable or not.
    let mut object = loader::Objects::new();
    let skel = loader::load(&policy(None, 0), &mut object, true).unwrap();
    for (i, p) in packets.iter().enumerate() {
        for prog in [Hook::Ingress.program(&skel), Hook::Egress.program(&skel)] {
            assert_eq!(run(prog, p), DROP, "packet {i}: {p:02x?}");
        }
    }
    let s = read_stats(&skel);
    assert_eq!((s.ingress.packets, s.ingress.dropped_packets), (n, n));
    assert_eq!((s.egress.packets, s.egress.dropped_packets), (n, n));

    // Deny everything by rule: every packet with a readable IP header is
    // dropped whatever follows it; only packets without one may pass (a
    // block list passes what no rule can match).
    let p = with_rules(&[("deny", "0.0.0.0/0"), ("deny", "::/0")]);
    let mut object = loader::Objects::new();
    let mut skel = loader::load(&p, &mut object, true).unwrap();
    loader::apply_rules(&mut skel, &mut Installed::new(), &p).unwrap();
    for (i, packet) in packets.iter().enumerate() {
        let ethertype = u16::from_be_bytes([packet[12], packet[13]]);
        let ip_len = packet.len() - 14;
        let readable = (ethertype == 0x0800 && ip_len >= 20) || (ethertype == 0x86DD && ip_len >= 40);
        for prog in [Hook::Ingress.program(&skel), Hook::Egress.program(&skel)] {
            let verdict = run(prog, packet);
            if readable {
                assert_eq!(verdict, DROP, "packet {i} has an IP header: {packet:02x?}");
            } else {
                assert_eq!(verdict, PASS, "packet {i}: {packet:02x?}");
            }
        }
    }

    // With a port filter any verdict may be right, but the program must run
    // to a verdict on every packet and count each once.
    let mut object = loader::Objects::new();
    let skel = loader::load(&policy(Some(53), 0), &mut object, true).unwrap();
    for p in &packets {
        for prog in [Hook::Ingress.program(&skel), Hook::Egress.program(&skel)] {
            assert!([PASS, DROP].contains(&run(prog, p)));
        }
    }
    assert_eq!(read_stats(&skel).egress.packets, n);
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn segment_routing_final_destination_is_judged() {
    // The first segment (the IPv6 destination) is allowed; the packet ends
    // up at a denied address. Egress judges both; ingress the source only.
    let udp = udp(40000, 53);
    let via = |left| srh(IPPROTO_UDP, &["2001:db8:bad::1", "2001:db8:1::1"], left);
    let mut unknown_type = via(1);
    unknown_type[2] = 3;
    egress_and_ingress(
        &with_rules(&[("deny", "2001:db8:bad::/48")]),
        &[
            ("srh to a denied final destination", ipv6_at("2001:db8:1::1", NEXTHDR_ROUTING, &via(1), &udp), DROP, PASS),
            ("srh with no segment left", ipv6_at("2001:db8:1::1", NEXTHDR_ROUTING, &via(0), &udp), PASS, PASS),
            // Where an unknown routing type sends the packet cannot be told: dropped.
            ("unknown routing type", ipv6_at("2001:db8:1::1", NEXTHDR_ROUTING, &unknown_type, &udp), DROP, PASS),
        ],
    );
}

/// Like `check`, with a verdict for each program: (name, packet, egress, ingress).
fn egress_and_ingress(policy: &Policy, cases: &[(&str, Vec<u8>, u32, u32)]) {
    let mut object = loader::Objects::new();
    let mut skel = loader::load(policy, &mut object, true).unwrap();
    loader::apply_rules(&mut skel, &mut Installed::new(), policy).unwrap();
    for (name, packet, egress, ingress) in cases {
        for (prog, want, which) in
            [(Hook::Egress.program(&skel), egress, "egress"), (Hook::Ingress.program(&skel), ingress, "ingress")]
        {
            let out = prog.test_run(ProgramInput { data_in: Some(packet), ..Default::default() }).unwrap();
            assert_eq!(out.return_value, *want, "{name}: {which}");
        }
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn header_chains_that_cannot_be_walked_are_dropped() {
    // Five extension headers: more than are walked, so the port is unknown.
    let mut chain = Vec::new();
    for _ in 0..4 {
        chain.extend(dest_opts(NEXTHDR_DEST));
    }
    chain.extend(dest_opts(IPPROTO_UDP));
    check(
        &policy(Some(53), 0),
        &[
            ("five extension headers", ipv6(NEXTHDR_DEST, &chain, &udp(40000, 54)), DROP),
            ("four are walked", ipv6(NEXTHDR_DEST, &chain[8..], &udp(40000, 54)), PASS),
        ],
    );
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn every_protocol_with_ports_matches_a_port_filter() {
    let mut cases = Vec::new();
    for (name, proto) in [("udplite", IPPROTO_UDPLITE), ("sctp", IPPROTO_SCTP), ("dccp", IPPROTO_DCCP)] {
        // All three start with the source and destination ports.
        let mut l4 = udp(40000, 53);
        l4.resize(16, 0);
        cases.push((format!("ipv4 {name} port 53"), ipv4(proto, 0, &l4), DROP));
        cases.push((format!("ipv6 {name} port 53"), ipv6(proto, &[], &l4), DROP));
        let mut other = udp(40000, 54);
        other.resize(16, 0);
        cases.push((format!("ipv4 {name} port 54"), ipv4(proto, 0, &other), PASS));
    }
    let cases: Vec<(&str, Vec<u8>, u32)> = cases.iter().map(|(n, p, v)| (n.as_str(), p.clone(), *v)).collect();
    check(&policy(Some(53), 0), &cases);
}

/// The per-CPU `stats` values of one slot: (depth, packets per level) for each CPU.
fn levels(skel: &CgdropSkel<'_>, slot: u32) -> Vec<(u32, [u64; 4])> {
    use libbpf_rs::{MapCore, MapFlags};
    let values = skel.maps.cgdrop_stats.lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY).unwrap().unwrap();
    values
        .iter()
        .map(|v| {
            let word = |at: usize| u64::from_ne_bytes(v[at..at + 8].try_into().unwrap());
            // depth, pad, then four levels of (packets, bytes, dropped_packets, dropped_bytes).
            (u32::from_ne_bytes(v[..4].try_into().unwrap()), [word(8), word(40), word(72), word(104)])
        })
        .collect()
}

/// Sets the nesting depth of `slot` on every CPU, as if that many runs of the
/// hook were under way (a run interrupted by softirqs).
fn set_depth(skel: &CgdropSkel<'_>, slot: u32, depth: u32) {
    use libbpf_rs::{MapCore, MapFlags};
    let mut values = skel.maps.cgdrop_stats.lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY).unwrap().unwrap();
    for v in &mut values {
        v[..4].copy_from_slice(&depth.to_ne_bytes());
    }
    skel.maps.cgdrop_stats.update_percpu(&slot.to_ne_bytes(), &values, MapFlags::ANY).unwrap();
}

/// The counters' nesting levels (struct cgdrop_stat_cpu): a run counts at the
/// level of the runs under way on its CPU, gives the depth back when it ends,
/// and the totals sum every level. Real nesting (a softirq's run of a hook
/// interrupting a task's run on the same CPU) is rare and cannot be made on
/// demand, so the depth a nested run would find is set here by hand; the
/// flood tests (tests/soak.rs) check the totals under real traffic.
#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn runs_count_at_their_nesting_level_and_the_totals_sum_every_level() {
    let policy = policy(None, 0);
    let mut object = loader::Objects::new();
    let skel = loader::load(&policy, &mut object, true).expect("load the BPF object");
    let egress = 1; // CGDROP_STAT_EGRESS
    let packet = ipv4(IPPROTO_UDP, 0, &udp(1000, 53));
    let run = |n: u32| {
        let out = Hook::Egress
            .program(&skel)
            .test_run(ProgramInput { data_in: Some(&packet), repeat: n, ..Default::default() })
            .unwrap();
        assert_eq!(out.return_value, DROP);
    };
    let packets_at = |level: usize| -> u64 { levels(&skel, egress).iter().map(|(_, l)| l[level]).sum() };

    run(3);
    assert_eq!((packets_at(0), packets_at(1)), (3, 0), "not nested: level 0");
    // One run under way: a nested run counts at level 1, and leaves the depth at 1.
    set_depth(&skel, egress, 1);
    run(5);
    assert_eq!((packets_at(0), packets_at(1)), (3, 5));
    assert!(levels(&skel, egress).iter().all(|(depth, _)| *depth == 1), "the depth is given back");
    // Deeper than the levels: the last level, shared (atomic adds).
    set_depth(&skel, egress, 9);
    run(7);
    assert_eq!(packets_at(3), 7);
    set_depth(&skel, egress, 0);
    run(1);
    let s = read_stats(&skel);
    assert_eq!((s.egress.packets, s.egress.dropped_packets), (16, 16), "the totals sum every level");
    assert!(levels(&skel, egress).iter().all(|(depth, _)| *depth == 0));
}
