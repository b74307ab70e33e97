//! End-to-end tests: Postfix + the SPF milter + OpenDMARC + NSD, driven by
//! swaks. Built only with `--features e2e`; needs root and the packages of
//! `scripts/e2e-packages`:
//!
//! ```sh
//! scripts/e2e-packages && cargo test --features e2e --test e2e
//! ```
//!
//! Each test re-executes itself in private network, mount and PID
//! namespaces (`e2e/namespace.rs`), so it may use fixed ports, its own
//! `/etc/resolv.conf` and `/dev/log`, and cannot reach or change anything
//! outside. The checks live in `e2e/scenarios.rs`, written once for any
//! milter; the tests below run them against Debian's pyspf-milter, the
//! reference, and against spfmilter, with one difference in
//! `header_results`: RFC 7208 §5 makes servfail.test and broken.test
//! `temperror` where pydns-based pyspf reports fail and none. The
//! differential test (`e2e/differential.rs`) sends the same matrix of
//! cases through both milters under one `policyd-spf.conf` and compares
//! Postfix's replies and the milters' headers, departures documented.
//!
//! The lab of a test (`e2e/lab.rs`), all on loopback of its namespace:
//!
//! | what | where |
//! |---|---|
//! | DNS forwarder (resolv.conf's `nameserver 127.0.0.1`) | 127.0.0.1:53 |
//! | NSD, the test zones of `e2e/zones.rs` | 127.0.0.1:5300 |
//! | the SPF milter under test | inet 127.0.0.1:8891 |
//! | OpenDKIM (the tests of forwarded, signed mail, and the soak) | inet 127.0.0.1:8892 |
//! | OpenDMARC | inet 127.0.0.1:8893 |
//! | Postfix smtpd, `myhostname = mx.test.example` | 127.0.0.1:25 |
//!
//! Mail is sent with swaks from "192.0.2.10" (XCLIENT ADDR, NAME = HELO),
//! accepted messages are held and read back with `postcat`.
//!
//! `spfmilter` is started as `spfmilter run --socket inet:127.0.0.1:8891
//! --policyd-conf FILE` (see `e2e/milter.rs`). Debugging: `-- --nocapture` shows the
//! phases and timings; `SPFMILTER_E2E_VERBOSE=1` prints every lab's logs
//! (maillog, the milters' syslog lines, NSD, DNS queries, SMTP transcripts),
//! which a failing test prints anyway.

#[path = "e2e/mod.rs"]
mod harness;

use harness::differential;
use harness::forwarding;
use harness::milter::MilterUnderTest;
use harness::namespace::{isolated, isolated_for};
use harness::scenarios;
use harness::soak;

/// The standard zones' expected (SPF result, DMARC result) per sender
/// domain. The two milters differ on SERVFAIL: RFC 7208 §5 makes it a
/// temperror (spfmilter); pyspf with pydns (Debian's default) reads it as
/// "no records", so the `a:` target of servfail.test does not match and
/// `-all` makes it fail, and a SERVFAIL for broken.test's policy itself
/// gives none. OpenDMARC reads the SERVFAIL of _dmarc.broken.test as "no
/// policy": dmarc=none.
fn expected_results(milter: &MilterUnderTest) -> Vec<(&'static str, &'static str, &'static str)> {
    let (servfail, broken) = if milter.name == "spfmilter" {
        ("temperror", "temperror")
    } else {
        ("fail", "none")
    };
    vec![
        ("pass.test", "pass", "pass"),
        ("fail.test", "fail", "fail"),
        ("softfail.test", "softfail", "fail"),
        ("neutral.test", "neutral", "fail"),
        ("none.test", "none", "fail"),
        ("permerror.test", "permerror", "fail"),
        ("temperror.test", "temperror", "fail"),
        ("servfail.test", servfail, "fail"),
        ("broken.test", broken, "none"),
    ]
}

/// One `#[test]` per scenario for a milter, each in its own namespaces.
macro_rules! scenario_tests {
    ($milter:expr, $($name:ident => $scenario:expr;)*) => {
        $(
            #[test]
            fn $name() {
                isolated(stringify!($name), |dir| $scenario(dir, &$milter));
            }
        )*
    };
}

// ---- the reference: Debian's pyspf-milter ---------------------------------

scenario_tests! {
    MilterUnderTest::pyspf_milter(),
    pyspf_header_mode => scenarios::header_mode;
    pyspf_header_results => |dir, m: &MilterUnderTest| scenarios::header_results(dir, m, &expected_results(m));
    pyspf_reject_mode => scenarios::reject_mode;
    pyspf_milter_down => scenarios::milter_down;
}

#[test]
fn pyspf_reference_quirks() {
    isolated("pyspf_reference_quirks", scenarios::reference_quirks);
}

// ---- spfmilter: the same scenarios, and the forged-header bypass -----------

scenario_tests! {
    MilterUnderTest::spfmilter(),
    spfmilter_header_mode => scenarios::header_mode;
    spfmilter_header_results => |dir, m: &MilterUnderTest| scenarios::header_results(dir, m, &expected_results(m));
    spfmilter_reject_mode => scenarios::reject_mode;
    spfmilter_milter_down => scenarios::milter_down;
    spfmilter_forged_headers => scenarios::forged_headers;
    spfmilter_forged_lenient_authserv_ids => scenarios::forged_lenient_authserv_ids;
    spfmilter_identity_injection => scenarios::identity_injection;
    spfmilter_forwarded_header_mode => forwarding::forwarded_header_mode;
    spfmilter_forwarded_reject_mode => forwarding::forwarded_reject_mode;
}

/// `[milter] max_connections` through Postfix: over the limit, Postfix's
/// `milter_default_action` applies at once; below it again, mail is checked.
#[test]
fn spfmilter_connection_limit() {
    isolated("spfmilter_connection_limit", scenarios::connection_limit);
}

/// `[block]` through Postfix: the operator's new domain is refused with
/// 550 5.7.1 at MAIL FROM and never queued; a legitimate sender is
/// delivered.
#[test]
fn spfmilter_block_operator() {
    isolated("spfmilter_block_operator", scenarios::block_operator);
}

/// `[rescue]` through Postfix: a held reject is refused at the end of DATA.
#[test]
fn spfmilter_rescue_holds_the_reject_to_the_end_of_data() {
    isolated(
        "spfmilter_rescue_holds_the_reject_to_the_end_of_data",
        scenarios::rescue_holds_the_reject_to_the_end_of_data,
    );
}

// ---- the differential test: the reference and spfmilter side by side -------

/// The same mail and the same `policyd-spf.conf` (reject mode) through
/// pyspf-milter and through spfmilter, one lab each, one table of cases
/// (`e2e/differential.rs`, where the departures are explained): the same
/// reply from Postfix, and the same SPF result in the header of accepted
/// mail, except the documented departures.
#[test]
fn differential_against_reference() {
    isolated("differential_against_reference", differential::differential);
}

// ---- the soak: many messages, two restarts ---------------------------------

/// `SPFMILTER_SOAK_MESSAGES` messages (default 1,000) with mixed results
/// through Postfix, spfmilter (reject mode, rescue by DKIM), OpenDKIM and
/// OpenDMARC into a Maildir, spfmilter restarted twice (SIGTERM, then
/// SIGKILL) under load: every message delivered once with the expected
/// headers or rejected as expected (held rejects at the end of DATA;
/// forwarded mail signed by its author's domain rescued, the same changed
/// after signing refused), none lost or duplicated (`e2e/soak.rs`). The full run:
/// `SPFMILTER_SOAK_MESSAGES=10000 cargo test --features e2e --test e2e soak -- --nocapture`.
#[test]
fn spfmilter_soak() {
    let messages = soak::messages_from_env();
    isolated_for("spfmilter_soak", soak::time_limit(messages), |dir| {
        soak::soak(dir, messages)
    });
}
