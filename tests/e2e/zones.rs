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
//! | ipv6.test | `v=spf1 ip6:2001:db8::/32 -all` | fail; pass for [`CLIENT_IP6`] |
//! | broken.test | every query SERVFAILs (configured in NSD without data), `_dmarc` included | temperror; pyspf with pydns: none; OpenDMARC: dmarc=none |
//!
//! Relays for the whitelist steps (`Domain_Whitelist = relay.test`,
//! `HELO_Whitelist = mx.relay.test`, `Domain_Whitelist_PTR = wl.test`),
//! all in 198.51.100.64/26, below the `Whitelist` CIDR of the differential
//! test:
//!
//! | client | DNS | whitelisted by |
//! |---|---|---|
//! | [`DOMAIN_WHITELISTED_IP`] .70 | relay.test `v=spf1 ip4:198.51.100.64/28 -all` | Domain_Whitelist (check_host pass) |
//! | [`HELO_WHITELISTED_IP`] .80 | mx.relay.test A .80 | HELO_Whitelist, with EHLO mx.relay.test |
//! | [`PTR_WHITELISTED_IP`] .96 | PTR host.wl.test, host.wl.test A .96 | Domain_Whitelist_PTR |
//! | [`PTR_SUFFIX_IP`] .97 | PTR host.notwl.test, its A .97 | the reference only (plain suffix match) |
//! | [`PTR_UNCONFIRMED_IP`] .98 | PTR host.wl.test, whose A is .96 | the reference only (no forward confirmation) |
//!
//! evilhelo.test (an attacker's, security report): `x;identity=mailfrom;`
//! ([`EVIL_HELO`], no host name) with `v=spf1 +all` and an A record, and
//! `mx.evilhelo.test` with `v=spf1 exists:x;identity=mailfrom;.evilhelo.test
//! -all`, a matching mechanism whose text carries `;identity=mailfrom;`.
//!
//! relay.test also holds `neutral.relay.test` (`v=spf1 ?all`), a Neutral
//! sender domain outside neutral.test, `caps.relay.test` (`v=spf1 -ALL`,
//! "sends no mail" in capitals), and `exp.relay.test` and `pct.relay.test`
//! (`-all` with an `exp=` explanation, the second with a literal `%`).
//!
//! A spam operation for `[block]`: `burn-oxygen.test` holds the operator's
//! include `spf-stx.burn-oxygen.test` (`v=spf1 ip4:198.51.100.32/28
//! -all`, [`OPERATOR_IP`] inside); `toramaki.test`, its known domain, and
//! `kazeno.test`, a new one, both publish `v=spf1
//! include:spf-stx.burn-oxygen.test -all`.
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
/// The IPv6 SMTP client of the tests (documentation prefix, RFC 3849),
/// authorized by ipv6.test only.
pub const CLIENT_IP6: &str = "2001:db8::10";
/// An address that no policy authorizes.
pub const STRANGER_IP: &str = "198.51.100.7";

/// In relay.test's SPF record: whitelisted by `Domain_Whitelist = relay.test`.
pub const DOMAIN_WHITELISTED_IP: &str = "198.51.100.70";
/// The address of mx.relay.test: whitelisted by `HELO_Whitelist =
/// mx.relay.test` when it says `EHLO mx.relay.test`.
pub const HELO_WHITELISTED_IP: &str = "198.51.100.80";
/// PTR host.wl.test, forward-confirmed: `Domain_Whitelist_PTR = wl.test`.
pub const PTR_WHITELISTED_IP: &str = "198.51.100.96";
/// PTR host.notwl.test (forward-confirmed): in wl.test only for a plain
/// suffix match.
pub const PTR_SUFFIX_IP: &str = "198.51.100.97";
/// PTR host.wl.test, whose A record is [`PTR_WHITELISTED_IP`]: not
/// forward-confirmed.
pub const PTR_UNCONFIRMED_IP: &str = "198.51.100.98";

/// In the networks of the spam operation's include
/// (`spf-stx.burn-oxygen.test`, 198.51.100.32/28).
pub const OPERATOR_IP: &str = "198.51.100.40";
/// The operator's include, what `[block]` lists.
pub const OPERATOR_INCLUDE: &str = "spf-stx.burn-oxygen.test";

/// A HELO argument that is no host name, in evilhelo.test, whose DNS
/// answers `v=spf1 +all` (and an A record, for `mx.evilhelo.test`'s
/// `exists:`).
pub const EVIL_HELO: &str = "x;identity=mailfrom;.evilhelo.test";
/// Its owner name in the zone file.
const EVIL_HELO_LABEL: &str = "x\\;identity=mailfrom\\;";

/// The sender domains, one per SPF result, in the order of the table.
pub const DOMAINS: [&str; 9] = [
    "pass.test",
    "fail.test",
    "softfail.test",
    "neutral.test",
    "none.test",
    "permerror.test",
    "temperror.test",
    "servfail.test",
    "ipv6.test",
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
        "ipv6.test" => Some("v=spf1 ip6:2001:db8::/32 -all"),
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
    // The relays of the whitelist steps.
    for domain in [
        "relay.test",
        "wl.test",
        "notwl.test",
        "evilhelo.test",
        "burn-oxygen.test",
        "toramaki.test",
        "kazeno.test",
    ] {
        let label = domain.trim_end_matches(".test");
        parent = parent
            .with(Record::ns(label, &format!("ns.{domain}.")))
            .with(Record::a(&format!("ns.{label}"), "127.0.0.1"));
    }
    let last_octet = |ip: &str| ip.rsplit('.').next().expect("last octet").to_string();
    zones.push(
        Zone::new("relay.test")
            .with(Record::txt("@", "v=spf1 ip4:198.51.100.64/28 -all"))
            // A Neutral sender domain outside neutral.test.
            .with(Record::txt("neutral", "v=spf1 ?all"))
            // "Sends no mail", spelled in capitals (No_Mail).
            .with(Record::txt("caps", "v=spf1 -ALL"))
            // Fail with an explanation (RFC 7208 §6.2), macros expanded...
            .with(Record::txt("exp", "v=spf1 -all exp=why.relay.test"))
            .with(Record::txt("why", "%{s} may not send from %{i}"))
            // ...and one with a literal "%" (%%) in it.
            .with(Record::txt("pct", "v=spf1 -all exp=whypct.relay.test"))
            .with(Record::txt("whypct", "100%% forged: %{l}"))
            .with(Record::a("mx", HELO_WHITELISTED_IP)),
    );
    // An attacker's HELO names (security report): a name that is no host
    // name, `+all`; a host whose matching mechanism carries
    // `;identity=mailfrom;` (`\;`: a literal `;` in a zone file).
    zones.push(
        Zone::new("evilhelo.test")
            .with(Record::txt(EVIL_HELO_LABEL, "v=spf1 +all"))
            .with(Record::a(EVIL_HELO_LABEL, CLIENT_IP))
            .with(Record::txt(
                "mx",
                "v=spf1 exists:x;identity=mailfrom;.evilhelo.test -all",
            )),
    );
    // The spam operation of `[block]`.
    zones.push(
        Zone::new("burn-oxygen.test")
            .with(Record::txt("spf-stx", "v=spf1 ip4:198.51.100.32/28 -all")),
    );
    for domain in ["toramaki.test", "kazeno.test"] {
        zones.push(
            Zone::new(domain)
                .with(Record::txt(
                    "@",
                    "v=spf1 include:spf-stx.burn-oxygen.test -all",
                ))
                .with(Record::a("mail", OPERATOR_IP)),
        );
    }
    zones.push(Zone::new("wl.test").with(Record::a("host", PTR_WHITELISTED_IP)));
    zones.push(Zone::new("notwl.test").with(Record::a("host", PTR_SUFFIX_IP)));
    zones.push(
        Zone::new("100.51.198.in-addr.arpa")
            .with(Record::ptr(
                &last_octet(PTR_WHITELISTED_IP),
                "host.wl.test.",
            ))
            .with(Record::ptr(&last_octet(PTR_SUFFIX_IP), "host.notwl.test."))
            .with(Record::ptr(
                &last_octet(PTR_UNCONFIRMED_IP),
                "host.wl.test.",
            )),
    );
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

/// Adds `zone` (a child of `test.`) to `zones` and delegates it from the
/// parent zone `test.`; its name server is NSD itself, at 127.0.0.1. For
/// zones a test builds at run time, such as one holding a DKIM key made by
/// the test.
pub fn delegate(zones: &mut Vec<Zone>, zone: Zone) {
    let label = zone.origin.trim_end_matches(".test").to_string();
    if let Some(parent) = zones.iter_mut().find(|z| z.origin == "test") {
        parent
            .records
            .push(Record::ns(&label, &format!("ns.{}.", zone.origin)));
        parent
            .records
            .push(Record::a(&format!("ns.{label}"), "127.0.0.1"));
    }
    zones.push(zone);
}
