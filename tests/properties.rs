//! Property tests of the rule language: any input is refused or accepted
//! without panicking, every valid target and rules file survives a round trip
//! through its text, and out-of-range prefixes and ports are always refused.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    time::Duration,
};

use cgdrop::rules::{parse_duration, parse_rules, Action, Rule, Target};
use proptest::prelude::*;

fn target() -> impl Strategy<Value = Target> {
    let v4 = (any::<u32>(), 0u8..=32).prop_map(|(a, p)| (IpAddr::V4(Ipv4Addr::from(a)), p));
    let v6 = (any::<u128>(), 0u8..=128).prop_map(|(a, p)| (IpAddr::V6(Ipv6Addr::from(a)), p));
    (prop_oneof![v4, v6], any::<u16>()).prop_map(|((addr, prefix), port)| Target::new(addr, prefix, port))
}

fn rule() -> impl Strategy<Value = Rule> {
    (any::<bool>(), target(), proptest::option::of(1u64..=315_360_000)).prop_map(|(allow, target, ttl)| Rule {
        action: if allow { Action::Allow } else { Action::Deny },
        target,
        ttl: ttl.map(Duration::from_secs),
    })
}

proptest! {
    // 2,000 cases in `make test`; `make fuzz` sets PROPTEST_CASES higher.
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)))]

    #[test]
    fn any_text_is_parsed_or_refused_without_panic(s in ".{0,60}") {
        let _ = Target::from_str(&s);
        let _ = parse_duration(&s);
        let _ = parse_rules(&s);
    }

    #[test]
    fn rule_shaped_text_is_parsed_or_refused_without_panic(s in "[0-9a-f:./\\[\\] ]{0,45}") {
        let _ = Target::from_str(&s);
        let _ = parse_rules(&format!("deny {s}\nallow {s} ttl=5m\n"));
    }

    #[test]
    fn targets_round_trip(t in target()) {
        let text = t.to_string();
        prop_assert_eq!(Target::from_str(&text), Ok(t), "{}", text);
    }

    #[test]
    fn rules_files_round_trip(rules in proptest::collection::vec(rule(), 0..20)) {
        let text: String = rules.iter().map(|r| format!("{r}  # comment\n\n")).collect();
        prop_assert_eq!(parse_rules(&text).unwrap(), rules);
    }

    #[test]
    fn prefixes_out_of_range_are_refused(a in any::<u32>(), extra in 33u32..1000) {
        let text = format!("{}/{extra}", Ipv4Addr::from(a));
        prop_assert!(Target::from_str(&text).is_err());
    }

    #[test]
    fn ports_out_of_range_are_refused(a in any::<u32>(), port in prop_oneof![Just(0u64), 65536u64..10_000_000]) {
        let text = format!("{}:{port}", Ipv4Addr::from(a));
        prop_assert!(Target::from_str(&text).is_err());
    }

    #[test]
    fn durations_round_trip(n in 1u64..50_000, unit in prop_oneof![Just(("s", 1u64)), Just(("m", 60)), Just(("h", 3600))]) {
        let text = format!("{n}{}", unit.0);
        prop_assert_eq!(parse_duration(&text), Ok(Duration::from_secs(n * unit.1)));
    }
}
