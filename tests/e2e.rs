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
//! `temperror` where pydns-based pyspf reports fail and none.
//!
//! The lab of a test (`e2e/lab.rs`), all on loopback of its namespace:
//!
//! | what | where |
//! |---|---|
//! | DNS forwarder (resolv.conf's `nameserver 127.0.0.1`) | 127.0.0.1:53 |
//! | NSD, the test zones of `e2e/zones.rs` | 127.0.0.1:5300 |
//! | the SPF milter under test | inet 127.0.0.1:8891 |
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

use harness::milter::MilterUnderTest;
use harness::namespace::isolated;
use harness::scenarios;

fn pyspf() -> MilterUnderTest {
    MilterUnderTest::pyspf_milter()
}

// ---- the reference: Debian's pyspf-milter ---------------------------------

#[test]
fn pyspf_header_mode() {
    isolated("pyspf_header_mode", |dir| {
        scenarios::header_mode(dir, &pyspf())
    });
}

#[test]
fn pyspf_header_results() {
    isolated("pyspf_header_results", |dir| {
        scenarios::header_results(
            dir,
            &pyspf(),
            &[
                ("pass.test", "pass", "pass"),
                ("fail.test", "fail", "fail"),
                ("softfail.test", "softfail", "fail"),
                ("neutral.test", "neutral", "fail"),
                ("none.test", "none", "fail"),
                ("permerror.test", "permerror", "fail"),
                ("temperror.test", "temperror", "fail"),
                // pyspf with pydns (Debian's default) reads a SERVFAIL
                // answer as "no records" instead of a temperror: the `a:`
                // target of servfail.test SERVFAILs, the mechanism does not
                // match, and `-all` makes it a FAIL (a reject in reject
                // mode); a SERVFAIL for the policy itself gives none.
                // OpenDMARC too reads the SERVFAIL of _dmarc.broken.test
                // as "no policy": dmarc=none.
                ("servfail.test", "fail", "fail"),
                ("broken.test", "none", "none"),
            ],
        );
    });
}

#[test]
fn pyspf_reject_mode() {
    isolated("pyspf_reject_mode", |dir| {
        scenarios::reject_mode(dir, &pyspf())
    });
}

#[test]
fn pyspf_milter_down() {
    isolated("pyspf_milter_down", |dir| {
        scenarios::milter_down(dir, &pyspf())
    });
}

#[test]
fn pyspf_reference_quirks() {
    isolated("pyspf_reference_quirks", scenarios::reference_quirks);
}

// ---- spfmilter: the same scenarios -----------------------------------------

fn spfmilter() -> MilterUnderTest {
    MilterUnderTest::spfmilter()
}

#[test]
fn spfmilter_header_mode() {
    isolated("spfmilter_header_mode", |dir| {
        scenarios::header_mode(dir, &spfmilter())
    });
}

#[test]
fn spfmilter_header_results() {
    isolated("spfmilter_header_results", |dir| {
        scenarios::header_results(
            dir,
            &spfmilter(),
            &[
                ("pass.test", "pass", "pass"),
                ("fail.test", "fail", "fail"),
                ("softfail.test", "softfail", "fail"),
                ("neutral.test", "neutral", "fail"),
                ("none.test", "none", "fail"),
                ("permerror.test", "permerror", "fail"),
                ("temperror.test", "temperror", "fail"),
                // RFC 7208 §5: SERVFAIL is a temperror.
                ("servfail.test", "temperror", "fail"),
                ("broken.test", "temperror", "none"),
            ],
        );
    });
}

#[test]
fn spfmilter_reject_mode() {
    isolated("spfmilter_reject_mode", |dir| {
        scenarios::reject_mode(dir, &spfmilter())
    });
}

#[test]
fn spfmilter_milter_down() {
    isolated("spfmilter_milter_down", |dir| {
        scenarios::milter_down(dir, &spfmilter())
    });
}

#[test]
fn spfmilter_forged_headers() {
    isolated("spfmilter_forged_headers", |dir| {
        scenarios::forged_headers(dir, &spfmilter())
    });
}
