//! The standard test zones: one sender domain per SPF result, each with a
//! HELO host `mx.DOMAIN` and a DMARC record `_dmarc.DOMAIN` with
//! `p=reject` (relaxed SPF alignment, so an envelope sender and a From:
//! header in the same domain align).
//!
//! | domain | SPF record (MAIL FROM) | result for [`CLIENT_IP`] |
//! |---|---|---|
//! | pass.test | `v=spf1 ip4:192.0.2.0/24 -all` | pass |
//! | fail.test | `v=spf1 -all` | fail |
//! | softfail.test | `v=spf1 ~all` | softfail |
//! | neutral.test | `v=spf1 ?all` | neutral |
//! | none.test | (a TXT record that is not SPF) | none |
//! | permerror.test | `v=spf1 bogus -all` (unknown mechanism) | permerror |
//! | temperror.test | `v=spf1 a:host.unreachable.test -all`; `unreachable.test` is delegated to 127.0.0.2, where nothing listens, and the lab's resolver drops its queries: time-out | temperror |
//! | servfail.test | `v=spf1 a:host.broken.test -all`; `broken.test` answers SERVFAIL | temperror (RFC 7208 §5); pyspf with pydns: **fail** (the SERVFAIL reads as "no address", `-all` matches) |
//! | broken.test | every query SERVFAILs (configured in NSD without data), `_dmarc` included | temperror; pyspf with pydns: none; OpenDMARC: dmarc=none |
//!
//! HELO hosts: `mx.pass.test` (A [`CLIENT_IP`], SPF `v=spf1 a -all`:
//! pass), `mx.fail.test` (`v=spf1 -all`: fail), `mx.softfail.test`
//! (`~all`), `mx.neutral.test` (`?all`), `mx.none.test` (no SPF),
//! `mx.permerror.test` (permerror), `mx.temperror.test` and
//! `mx.servfail.test` (as their domains). The parent zone `test.` holds
//! the delegations and answers NXDOMAIN for other names under `test`; the
//! reverse zone `2.0.192.in-addr.arpa` maps [`CLIENT_IP`] to
//! `mx.pass.test`.

use super::dns::{Record, Zone};

/// The SMTP client's address in the tests (TEST-NET-1, set with XCLIENT).
pub const CLIENT_IP: &str = "192.0.2.10";
/// An address that no policy authorizes.
pub const STRANGER_IP: &str = "198.51.100.7";

/// The sender domains, one per SPF result, in the order of the table.
pub const DOMAINS: [&str; 8] = [
    "pass.test",
    "fail.test",
    "softfail.test",
    "neutral.test",
    "none.test",
    "permerror.test",
    "temperror.test",
    "servfail.test",
];

/// The SPF record of a sender domain (`None`: no SPF record).
pub fn spf_record(domain: &str) -> Option<&'static str> {
    match domain {
        "pass.test" => Some("v=spf1 ip4:192.0.2.0/24 -all"),
        "fail.test" => Some("v=spf1 -all"),
        "softfail.test" => Some("v=spf1 ~all"),
        "neutral.test" => Some("v=spf1 ?all"),
        "none.test" => None,
        "permerror.test" => Some("v=spf1 bogus -all"),
        "temperror.test" => Some("v=spf1 a:host.unreachable.test -all"),
        "servfail.test" => Some("v=spf1 a:host.broken.test -all"),
        _ => None,
    }
}

/// The SPF record of the HELO host `mx.DOMAIN`.
fn helo_record(domain: &str) -> Option<&'static str> {
    match domain {
        "pass.test" => Some("v=spf1 a -all"),
        other => spf_record(other),
    }
}

/// The DMARC record published for every sender domain.
pub const DMARC_RECORD: &str = "v=DMARC1; p=reject; aspf=r; adkim=r";

/// All zones of the lab.
pub fn standard_zones() -> Vec<Zone> {
    let mut zones = Vec::new();
    let mut parent = Zone::new("test");
    for domain in DOMAINS {
        let label = domain.trim_end_matches(".test");
        parent = parent
            .with(Record::ns(label, &format!("ns.{domain}.")))
            .with(Record::a(&format!("ns.{label}"), "127.0.0.1"));
        let mut zone = Zone::new(domain)
            .with(Record::a("mx", CLIENT_IP))
            .with(Record::mx("@", 10, &format!("mx.{domain}.")))
            .with(Record::txt("_dmarc", DMARC_RECORD));
        zone = match spf_record(domain) {
            Some(spf) => zone.with(Record::txt("@", spf)),
            None => zone.with(Record::txt(
                "@",
                "google-site-verification=not-an-spf-record",
            )),
        };
        if let Some(spf) = helo_record(domain) {
            zone = zone.with(Record::txt("mx", spf));
        }
        zones.push(zone);
    }
    // Delegations that cannot be followed.
    parent = parent
        .with(Record::ns("unreachable", "ns.unreachable.test."))
        .with(Record::a("ns.unreachable", "127.0.0.2"))
        .with(Record::ns("broken", "ns.broken.test."))
        .with(Record::a("ns.broken", "127.0.0.1"));
    zones.push(parent);
    zones.push(Zone::unanswered("unreachable.test"));
    zones.push(Zone::servfail("broken.test"));
    zones.push(Zone::new("2.0.192.in-addr.arpa").with(Record::ptr(
        CLIENT_IP.rsplit('.').next().expect("last octet"),
        "mx.pass.test.",
    )));
    zones
}
