//! Fuzzes the SPF record parser (`Record::parse`, `is_spf1`) with arbitrary
//! bytes, as they could arrive in a TXT record.
//!
//! Besides "no panic", it checks invariants that every parsed record must
//! satisfy:
//! - a record that parses starts with `v=spf1` (`is_spf1` holds);
//! - each directive's `text` is printable ASCII without spaces, and its
//!   `Display` is the qualifier symbol followed by that text;
//! - CIDR lengths are within range;
//! - the record rebuilt from its parts (directives with explicit
//!   qualifiers, `redirect=`, `exp=`) parses back to an equal record.

#![no_main]

use std::fmt::Write as _;

use libfuzzer_sys::fuzz_target;
use spfmilter::spf::record::{Mechanism, Record, is_spf1};

fuzz_target!(|data: &[u8]| {
    let looks_like_spf1 = is_spf1(data);
    let Ok(record) = Record::parse(data) else {
        return;
    };
    assert!(looks_like_spf1, "parsed a record that is_spf1 rejects");

    let mut rebuilt = String::from("v=spf1");
    for directive in &record.directives {
        let text: &str = directive.text();
        assert!(!text.is_empty(), "empty directive text");
        assert!(
            text.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "directive text {text:?} is not printable ASCII"
        );
        let shown = directive.to_string();
        assert_eq!(shown.chars().next(), Some(directive.qualifier.symbol()));
        assert_eq!(&shown[1..], text);
        // Never panics, whatever the mechanism.
        let _ = directive.mechanism.queries_dns();
        match &directive.mechanism {
            Mechanism::A(_, cidr) | Mechanism::Mx(_, cidr) => {
                assert!(cidr.v4 <= 32 && cidr.v6 <= 128, "bad dual CIDR {cidr:?}");
            }
            Mechanism::Ip4(net) => assert!(net.prefix_len() <= 32),
            Mechanism::Ip6(net) => assert!(net.prefix_len() <= 128),
            Mechanism::All | Mechanism::Include(_) | Mechanism::Ptr(_) | Mechanism::Exists(_) => {}
        }
        write!(rebuilt, " {directive}").unwrap();
    }
    if let Some(redirect) = &record.redirect {
        write!(rebuilt, " redirect={redirect}").unwrap();
    }
    if let Some(exp) = &record.exp {
        write!(rebuilt, " exp={exp}").unwrap();
    }

    // Unknown modifiers are dropped on parsing, and the rest is rebuilt
    // verbatim: the result must parse to the same record.
    match Record::parse(rebuilt.as_bytes()) {
        Ok(again) => assert_eq!(again, record, "rebuilt record {rebuilt:?} differs"),
        Err(e) => panic!("rebuilt record {rebuilt:?} does not parse: {e}"),
    }
});
