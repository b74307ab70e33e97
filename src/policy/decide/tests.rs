//! The decision against the tables of docs/policyd-spf-compatibility.md
//! §2–§4. Every expected outcome below is written from that document (itself
//! written from the reference's behaviour), not from the
//! code's output.

use std::net::IpAddr;
use std::time::Duration;

use super::*;
use crate::config::{Config, DomainName, RejectPolicy};
use crate::dns::Zone;
use crate::dns::zone::Entry;
use crate::policy::envelope::Envelope;
use crate::spf::{Evaluator, Limits, SpfResult};

const CLIENT: &str = "192.0.2.1";

/// HELO names and sender domains publishing each result for 192.0.2.1.
fn zone() -> Zone {
    Zone::new()
        .with_txt("pass.test", "v=spf1 ip4:192.0.2.1 -all")
        .with_txt("fail.test", "v=spf1 -all")
        .with_txt("softfail.test", "v=spf1 ~all")
        .with_txt("neutral.test", "v=spf1 ?all")
        .with_ip("none.test", "192.0.2.1")
        .with_txt("permerror.test", "v=spf1 ip4:not-an-address -all")
        .with("temperror.test", Entry::Timeout)
        .with_txt("failip.test", "v=spf1 ip4:198.51.100.1 -all")
        .with_txt("exp.test", "v=spf1 -all exp=why.exp.test")
        .with_txt("why.exp.test", "100%% of %{d} is bad")
        .with_txt("crlf.test", "v=spf1 -all exp=why.crlf.test")
        .with_txt("why.crlf.test", "bad\r\nline")
        .with_txt("nomailmod.test", "V=SPF1  -ALL foo=bar")
        .with_txt("nomailexp.test", "v=spf1 -all exp=why.exp.test")
        .with_txt("sub.listed.test", "v=spf1 ~all")
}

fn evaluator() -> Evaluator<Zone> {
    Evaluator::new(zone()).with_limits(Limits {
        time: Duration::from_secs(2),
        ..Limits::default()
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn run_with(config: &Config, ev: &Evaluator<Zone>, helo: &str, sender: &str) -> Decision {
    decide(config, ev, &envelope(Some(ip(CLIENT)), helo, sender), None).await
}

fn envelope(client_ip: Option<IpAddr>, helo: &str, sender: &str) -> Envelope {
    Envelope {
        client_ip,
        helo: helo.to_owned(),
        sender: sender.to_owned(),
        ..Envelope::default()
    }
}

async fn run(config: &Config, helo: &str, sender: &str) -> Decision {
    run_with(config, &evaluator(), helo, sender).await
}

/// With policyd-spf's Reason_URL, whose `s=` and `id=` tell which
/// identity a reply is about.
fn config(helo: RejectPolicy, mail_from: RejectPolicy) -> Config {
    let mut c = Config::default();
    c.policy.reason_url = crate::config::POLICYD_SPF_REASON_URL.parse().unwrap();
    c.policy.helo_reject = helo;
    c.policy.mail_from_reject = mail_from;
    c
}

/// A row entry of the matrices of docs/policyd-spf-compatibility.md §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Accepted with the MAIL FROM outcome in the header.
    HdrMf(SpfResult),
    /// Accepted with the HELO outcome in the header.
    HdrHelo(SpfResult),
    /// `550 5.7.23`, caused by this identity.
    Reject(Identity),
    /// Accepted, no check, no header.
    Nothing,
}

fn check(d: &Decision, want: Want, what: &str) {
    match want {
        Want::HdrMf(result) | Want::HdrHelo(result) => {
            assert_eq!(d.action, Action::Accept, "{what}: {d:#?}");
            let source = if matches!(want, Want::HdrMf(_)) {
                HeaderSource::MailFrom
            } else {
                HeaderSource::Helo
            };
            assert_eq!(d.header, Some(source), "{what}: {d:#?}");
            let o = d.header_outcome().expect("header outcome");
            assert_eq!(o.result, result, "{what}");
            let identity = match source {
                HeaderSource::Helo => Identity::Helo,
                HeaderSource::MailFrom => Identity::MailFrom,
            };
            assert_eq!(o.identity, identity, "{what}");
        }
        Want::Reject(identity) => {
            let Action::Reject(reply) = &d.action else {
                panic!("{what}: expected a reject: {d:#?}");
            };
            assert_eq!(reply.code, 550, "{what}");
            assert_eq!(reply.enhanced, Some("5.7.23"), "{what}");
            assert_eq!(d.header, None, "{what}");
            let s = match identity {
                Identity::Helo => "s=helo;",
                Identity::MailFrom => "s=mfrom;",
            };
            // With policyd-spf's URL (see `config`) the reply says which
            // identity it is about.
            if reply.text.contains("s=") {
                assert!(reply.text.contains(s), "{what}: {}", reply.text);
            }
            // A HELO reject comes before MAIL FROM is evaluated.
            assert_eq!(
                d.mail_from.is_some(),
                identity == Identity::MailFrom,
                "{what}: {d:#?}"
            );
        }
        Want::Nothing => {
            assert_eq!(d.action, Action::Accept, "{what}");
            assert_eq!(d.header, None, "{what}");
            assert!(d.helo.is_none() && d.mail_from.is_none(), "{what}: {d:#?}");
        }
    }
}

// ------------------------------------------------ the HELO_reject matrix

#[tokio::test]
async fn helo_reject_matrix() {
    use RejectPolicy as P;
    use SpfResult as R;
    use Want::*;
    const COLUMNS: [RejectPolicy; 6] = [
        P::SpfNotPass,
        P::Softfail,
        P::Fail,
        P::Null,
        P::False,
        P::NoCheck,
    ];
    let h = Identity::Helo;
    let m = Identity::MailFrom;
    // (helo, sender, expected per column), straight from docs/policyd-spf-compatibility.md §3.
    let rows: [(&str, &str, [Want; 6]); 11] = [
        ("pass.test", "a@pass.test", [HdrMf(R::Pass); 6]),
        ("pass.test", "a@fail.test", [Reject(m); 6]),
        (
            "fail.test",
            "a@pass.test",
            [
                Reject(h),
                Reject(h),
                Reject(h),
                HdrMf(R::Pass),
                HdrMf(R::Pass),
                HdrMf(R::Pass),
            ],
        ),
        (
            "softfail.test",
            "a@pass.test",
            [
                Reject(h),
                Reject(h),
                HdrMf(R::Pass),
                HdrMf(R::Pass),
                HdrMf(R::Pass),
                HdrMf(R::Pass),
            ],
        ),
        (
            "neutral.test",
            "a@pass.test",
            [
                Reject(h),
                HdrMf(R::Pass),
                HdrMf(R::Pass),
                HdrMf(R::Pass),
                HdrMf(R::Pass),
                HdrMf(R::Pass),
            ],
        ),
        ("permerror.test", "a@pass.test", [HdrMf(R::Pass); 6]),
        ("temperror.test", "a@pass.test", [HdrMf(R::Pass); 6]),
        (
            "pass.test",
            "",
            [
                HdrHelo(R::Pass),
                HdrHelo(R::Pass),
                HdrHelo(R::Pass),
                HdrHelo(R::Pass),
                HdrHelo(R::Pass),
                Nothing,
            ],
        ),
        (
            "fail.test",
            "",
            [
                Reject(h),
                Reject(h),
                Reject(h),
                Reject(h),
                HdrHelo(R::Fail),
                Nothing,
            ],
        ),
        (
            "softfail.test",
            "",
            [
                Reject(h),
                Reject(h),
                HdrHelo(R::SoftFail),
                HdrHelo(R::SoftFail),
                HdrHelo(R::SoftFail),
                Nothing,
            ],
        ),
        (
            "none.test",
            "",
            [
                HdrHelo(R::None),
                HdrHelo(R::None),
                HdrHelo(R::None),
                HdrHelo(R::None),
                HdrHelo(R::None),
                Nothing,
            ],
        ),
    ];
    for (helo, sender, wants) in rows {
        for (policy, want) in COLUMNS.into_iter().zip(wants) {
            let c = config(policy, RejectPolicy::Fail);
            let d = run(&c, helo, sender).await;
            check(
                &d,
                want,
                &format!("HELO_reject={policy} helo={helo} sender=<{sender}>"),
            );
        }
    }
}

// ------------------------------------------- the Mail_From_reject matrix

#[tokio::test]
async fn mail_from_reject_matrix() {
    use RejectPolicy as P;
    use SpfResult as R;
    use Want::*;
    let m = Identity::MailFrom;
    // HELO result none; senders by result: fail, softfail, neutral, pass,
    // none, permerror, temperror.
    let senders = [
        "a@fail.test",
        "a@softfail.test",
        "a@neutral.test",
        "a@pass.test",
        "a@none.test",
        "a@permerror.test",
        "a@temperror.test",
    ];
    let hdr = [
        R::Fail,
        R::SoftFail,
        R::Neutral,
        R::Pass,
        R::None,
        R::PermError,
        R::TempError,
    ]
    .map(HdrMf);
    let table: [(RejectPolicy, [Want; 7]); 5] = [
        // SPF_Not_Pass rejects fail, softfail, neutral.
        (
            P::SpfNotPass,
            [
                Reject(m),
                Reject(m),
                Reject(m),
                hdr[3],
                hdr[4],
                hdr[5],
                hdr[6],
            ],
        ),
        // Softfail rejects fail, softfail.
        (
            P::Softfail,
            [Reject(m), Reject(m), hdr[2], hdr[3], hdr[4], hdr[5], hdr[6]],
        ),
        // Fail rejects fail.
        (
            P::Fail,
            [Reject(m), hdr[1], hdr[2], hdr[3], hdr[4], hdr[5], hdr[6]],
        ),
        // False never rejects (header Fail).
        (P::False, hdr),
        // No_Check: no MAIL FROM query; the HELO result (none) is used.
        (P::NoCheck, [HdrHelo(R::None); 7]),
    ];
    for (policy, wants) in table {
        for (sender, want) in senders.into_iter().zip(wants) {
            let c = config(RejectPolicy::Fail, policy);
            let d = run(&c, "none.test", sender).await;
            check(
                &d,
                want,
                &format!("Mail_From_reject={policy} sender={sender}"),
            );
            if policy == P::NoCheck {
                assert!(d.mail_from.is_none(), "No_Check evaluated MAIL FROM");
            }
        }
    }
}

#[tokio::test]
async fn both_scopes_no_check_with_a_sender_is_nothing() {
    let c = config(RejectPolicy::NoCheck, RejectPolicy::NoCheck);
    let d = run(&c, "fail.test", "a@fail.test").await;
    check(&d, Want::Nothing, "both No_Check");
}

// ------------------------------------------------- PermError / TempError

fn reply(d: &Decision) -> &Reply {
    match &d.action {
        Action::Reject(r) | Action::Defer(r) => r,
        Action::Accept => panic!("accepted: {d:#?}"),
    }
}

#[tokio::test]
async fn permerror_reject_mail_from() {
    for policy in [
        RejectPolicy::SpfNotPass,
        RejectPolicy::Softfail,
        RejectPolicy::Fail,
    ] {
        let mut c = config(RejectPolicy::Fail, policy);
        c.policy.permerror_reject = true;
        let d = run(&c, "none.test", "a@permerror.test").await;
        assert!(matches!(d.action, Action::Reject(_)), "{policy}");
        let r = reply(&d);
        assert_eq!((r.code, r.enhanced), (550, Some("5.7.24")));
        assert!(
            r.text
                .starts_with("Message rejected due to: SPF Permanent Error: "),
            "{}",
            r.text
        );
        assert!(
            r.text
                .contains("s=mfrom;id=a@permerror.test;ip=192.0.2.1;r=<UNKNOWN>")
        );
    }
    // False: never on that scope.
    let mut c = config(RejectPolicy::Fail, RejectPolicy::False);
    c.policy.permerror_reject = true;
    let d = run(&c, "none.test", "a@permerror.test").await;
    check(
        &d,
        Want::HdrMf(SpfResult::PermError),
        "PermError_reject with False",
    );
    // Off: header.
    let c = config(RejectPolicy::Fail, RejectPolicy::Fail);
    let d = run(&c, "none.test", "a@permerror.test").await;
    check(
        &d,
        Want::HdrMf(SpfResult::PermError),
        "PermError_reject off",
    );
}

#[tokio::test]
async fn permerror_reject_helo() {
    let mut c = config(RejectPolicy::Fail, RejectPolicy::Fail);
    c.policy.permerror_reject = true;
    let d = run(&c, "permerror.test", "a@pass.test").await;
    let r = reply(&d);
    assert_eq!((r.code, r.enhanced), (550, Some("5.7.24")));
    assert!(r.text.contains("s=helo;id=permerror.test;"), "{}", r.text);
    assert!(
        d.mail_from.is_none(),
        "MAIL FROM evaluated after a HELO reject"
    );
    // HELO_reject = False: ignored for HELO, MAIL FROM decides.
    c.policy.helo_reject = RejectPolicy::False;
    let d = run(&c, "permerror.test", "a@pass.test").await;
    check(
        &d,
        Want::HdrMf(SpfResult::Pass),
        "HELO False + PermError_reject",
    );
    // Null with a non-null sender: HELO result ignored.
    c.policy.helo_reject = RejectPolicy::Null;
    let d = run(&c, "permerror.test", "a@pass.test").await;
    check(
        &d,
        Want::HdrMf(SpfResult::Pass),
        "HELO Null + PermError_reject",
    );
}

#[tokio::test]
async fn temperror_defer_mail_from() {
    let mut c = config(RejectPolicy::Fail, RejectPolicy::Fail);
    c.policy.temperror_defer = true;
    let d = run(&c, "none.test", "a@temperror.test").await;
    let Action::Defer(r) = &d.action else {
        panic!("not deferred: {d:#?}");
    };
    assert_eq!((r.code, r.enhanced), (450, Some("4.7.24")));
    assert!(
        r.text
            .starts_with("Message deferred due to: SPF Temporary Error: "),
        "{}",
        r.text
    );
    assert_eq!(d.header, None);
    // False: never on that scope.
    c.policy.mail_from_reject = RejectPolicy::False;
    let d = run(&c, "none.test", "a@temperror.test").await;
    check(
        &d,
        Want::HdrMf(SpfResult::TempError),
        "TempError_Defer with False",
    );
    // Off: header.
    let c = config(RejectPolicy::Fail, RejectPolicy::Fail);
    let d = run(&c, "none.test", "a@temperror.test").await;
    check(&d, Want::HdrMf(SpfResult::TempError), "TempError_Defer off");
}

#[tokio::test]
async fn helo_temperror_defers_before_mail_from() {
    let mut c = config(RejectPolicy::Fail, RejectPolicy::Fail);
    c.policy.temperror_defer = true;
    let d = run(&c, "temperror.test", "a@pass.test").await;
    let Action::Defer(r) = &d.action else {
        panic!("not deferred: {d:#?}");
    };
    assert_eq!((r.code, r.enhanced), (450, Some("4.7.24")));
    assert!(r.text.contains("s=helo;id=temperror.test;"), "{}", r.text);
    assert!(
        d.mail_from.is_none(),
        "MAIL FROM evaluated after a HELO defer"
    );
    // The null sender: the HELO verdict stands.
    let d = run(&c, "temperror.test", "").await;
    assert!(matches!(d.action, Action::Defer(_)), "{d:#?}");
    // HELO_reject = False: not for HELO.
    c.policy.helo_reject = RejectPolicy::False;
    let d = run(&c, "temperror.test", "a@pass.test").await;
    check(
        &d,
        Want::HdrMf(SpfResult::Pass),
        "HELO False + TempError_Defer",
    );
    // Null: ignored with a sender, applies to <>.
    c.policy.helo_reject = RejectPolicy::Null;
    let d = run(&c, "temperror.test", "a@pass.test").await;
    check(
        &d,
        Want::HdrMf(SpfResult::Pass),
        "HELO Null + TempError_Defer, sender",
    );
    let d = run(&c, "temperror.test", "").await;
    assert!(matches!(d.action, Action::Defer(_)), "{d:#?}");
    // Off: the HELO TempError is only reported.
    let c = config(RejectPolicy::Fail, RejectPolicy::Fail);
    let d = run(&c, "temperror.test", "").await;
    check(
        &d,
        Want::HdrHelo(SpfResult::TempError),
        "TempError_Defer off, <>",
    );
}

// ------------------------------------------------------------- identities

#[tokio::test]
async fn no_address_is_nothing() {
    let c = Config::default();
    let env = envelope(None, "fail.test", "a@fail.test");
    let d = decide(&c, &evaluator(), &env, None).await;
    check(&d, Want::Nothing, "no IP");
    assert_eq!(d.ip, None);
}

#[tokio::test]
async fn empty_helo_and_null_sender_is_nothing() {
    let d = run(&Config::default(), "", "").await;
    check(&d, Want::Nothing, "no HELO, <>");
}

#[tokio::test]
async fn empty_helo_uses_the_sender_domain() {
    let c = config(RejectPolicy::Fail, RejectPolicy::Fail);
    let d = run(&c, "", "a@fail.test").await;
    check(&d, Want::Reject(Identity::Helo), "empty HELO, fail sender");
    assert_eq!(d.helo.as_ref().unwrap().domain, "fail.test");
    assert!(reply(&d).text.contains("s=helo;id=fail.test;"));
    let d = run(&c, "", "a@pass.test").await;
    check(&d, Want::HdrMf(SpfResult::Pass), "empty HELO, pass sender");
    assert_eq!(d.helo.as_ref().unwrap().domain, "pass.test");
    assert_eq!(d.helo.as_ref().unwrap().result, SpfResult::Pass);
}

#[tokio::test]
async fn null_sender_gets_no_mail_from_query_and_a_helo_header() {
    let d = run(&Config::default(), "pass.test", "").await;
    check(&d, Want::HdrHelo(SpfResult::Pass), "<>");
    assert!(d.mail_from.is_none());
}

#[tokio::test]
async fn cve_2019_20790_header_is_the_mail_from_result() {
    // HELO pass + MAIL FROM none: the reference reports the HELO pass; the
    // departure (docs/policyd-spf-compatibility.md §5) reports mailfrom none.
    let d = run(&Config::default(), "pass.test", "a@none.test").await;
    check(
        &d,
        Want::HdrMf(SpfResult::None),
        "HELO pass, MAIL FROM none",
    );
    assert_eq!(d.helo.as_ref().unwrap().result, SpfResult::Pass);
    let o = d.header_outcome().unwrap();
    assert_eq!(o.domain, "none.test");
    assert_eq!(o.identity, Identity::MailFrom);
}

// ------------------------------------------------------------------ No_Mail

#[tokio::test]
async fn no_mail_keeps_only_rejects_of_v_spf1_minus_all() {
    let mut c = Config::default();
    c.policy.no_mail = true;
    // MAIL FROM.
    let d = run(&c, "none.test", "a@fail.test").await;
    check(&d, Want::Reject(Identity::MailFrom), "No_Mail, v=spf1 -all");
    let d = run(&c, "none.test", "a@failip.test").await;
    check(
        &d,
        Want::HdrMf(SpfResult::Fail),
        "No_Mail, v=spf1 ip4:… -all",
    );
    // Unknown modifiers and spelling do not matter; exp= does.
    let d = run(&c, "none.test", "a@nomailmod.test").await;
    check(
        &d,
        Want::Reject(Identity::MailFrom),
        "No_Mail, -all foo=bar",
    );
    let d = run(&c, "none.test", "a@nomailexp.test").await;
    check(&d, Want::HdrMf(SpfResult::Fail), "No_Mail, -all exp=");
    // HELO.
    let d = run(&c, "fail.test", "a@pass.test").await;
    check(
        &d,
        Want::Reject(Identity::Helo),
        "No_Mail HELO, v=spf1 -all",
    );
    let d = run(&c, "failip.test", "a@pass.test").await;
    check(
        &d,
        Want::HdrMf(SpfResult::Pass),
        "No_Mail HELO, ip4 -all demoted",
    );
    assert_eq!(d.helo.as_ref().unwrap().result, SpfResult::Fail);
    // Without No_Mail the ip4 record's fail rejects.
    let d = run(&Config::default(), "none.test", "a@failip.test").await;
    check(&d, Want::Reject(Identity::MailFrom), "no No_Mail");
}

#[tokio::test]
async fn no_mail_does_not_touch_defers() {
    let mut c = Config::default();
    c.policy.no_mail = true;
    c.policy.temperror_defer = true;
    let d = run(&c, "none.test", "a@temperror.test").await;
    assert!(matches!(d.action, Action::Defer(_)), "{d:#?}");
}

// --------------------------------------------------- Reject_Not_Pass_Domains

#[tokio::test]
async fn reject_not_pass_domains() {
    let mut c = Config::default();
    c.policy.reject_not_pass_domains = vec![
        DomainName::parse("softfail.test").unwrap(),
        DomainName::parse("neutral.test").unwrap(),
        DomainName::parse("listed.test").unwrap(),
    ];
    // MAIL FROM softfail under Mail_From_reject = Fail: listed → SPF_Not_Pass.
    let d = run(&c, "none.test", "a@softfail.test").await;
    check(&d, Want::Reject(Identity::MailFrom), "listed softfail");
    assert_eq!(
        reply(&d).text,
        "Message rejected due to: Receiver policy for SPF Softfail."
    );
    // A name below a listed domain is not listed (policyd-spf compares
    // the name itself): its softfail keeps the configured policy.
    let d = run(&c, "none.test", "a@sub.listed.test").await;
    check(&d, Want::HdrMf(SpfResult::SoftFail), "below a listed name");
    // Names compare without regard to case.
    let d = run(&c, "none.test", "a@SoftFail.TEST").await;
    check(&d, Want::Reject(Identity::MailFrom), "listed, other case");
    // HELO neutral under HELO_reject = Fail: listed → SPF_Not_Pass.
    let d = run(&c, "neutral.test", "a@pass.test").await;
    check(&d, Want::Reject(Identity::Helo), "listed HELO neutral");
    assert!(reply(&d).text.contains("Receiver policy for SPF Neutral"));
    // Not listed: the configured policy.
    c.policy.reject_not_pass_domains.clear();
    let d = run(&c, "none.test", "a@softfail.test").await;
    check(&d, Want::HdrMf(SpfResult::SoftFail), "unlisted softfail");
    // Listed, scope False: SPF_Not_Pass wins (as in the reference).
    c.policy.reject_not_pass_domains = vec![DomainName::parse("softfail.test").unwrap()];
    c.policy.mail_from_reject = RejectPolicy::False;
    let d = run(&c, "none.test", "a@softfail.test").await;
    check(&d, Want::Reject(Identity::MailFrom), "listed, False");
}

// --------------------------------------------------------------- Prospective

#[tokio::test]
async fn prospective() {
    let mut c = config(RejectPolicy::Fail, RejectPolicy::Fail);
    c.policy.prospective = Some(ip("192.0.2.1"));
    // The client's own address does not matter, nor its absence.
    let env = envelope(Some(ip("198.51.100.7")), "pass.test", "a@pass.test");
    let d = decide(&c, &evaluator(), &env, None).await;
    assert_eq!(d.action, Action::Accept);
    assert_eq!(d.ip, Some(ip("192.0.2.1")));
    assert_eq!(d.mail_from.as_ref().unwrap().result, SpfResult::Pass);
    assert_eq!(d.header, None, "passing mail gets no header");
    let env = envelope(None, "pass.test", "a@none.test");
    let d = decide(&c, &evaluator(), &env, None).await;
    check(&d, Want::HdrMf(SpfResult::None), "Prospective, none");
    let env = envelope(None, "pass.test", "a@fail.test");
    let d = decide(&c, &evaluator(), &env, None).await;
    check(&d, Want::Reject(Identity::MailFrom), "Prospective, fail");
    assert!(reply(&d).text.contains("ip=192.0.2.1;"));
}

// ------------------------------------------------------------------ TestOnly

#[tokio::test]
async fn test_mode_helo_would_reject() {
    let mut c = Config::default();
    c.policy.test_mode = true;
    let d = run(&c, "fail.test", "a@pass.test").await;
    check(&d, Want::HdrHelo(SpfResult::Fail), "test mode HELO fail");
    assert!(
        d.mail_from.is_none(),
        "MAIL FROM evaluated after a would-be HELO reject"
    );
    let Some(Action::Reject(r)) = &d.would else {
        panic!("no would-reject: {d:#?}");
    };
    assert_eq!((r.code, r.enhanced), (550, Some("5.7.23")));
    assert!(
        d.log
            .iter()
            .any(|l| l.text.contains("would 550 5.7.23")
                && l.level == crate::config::LogLevel::Actions),
        "{:?}",
        d.log
    );
}

#[tokio::test]
async fn test_mode_mail_from_would_reject_and_would_defer() {
    let mut c = Config::default();
    c.policy.test_mode = true;
    c.policy.temperror_defer = true;
    let d = run(&c, "pass.test", "a@fail.test").await;
    check(&d, Want::HdrMf(SpfResult::Fail), "test mode MAIL FROM fail");
    assert!(matches!(&d.would, Some(Action::Reject(r)) if r.code == 550));
    let d = run(&c, "pass.test", "a@temperror.test").await;
    check(
        &d,
        Want::HdrMf(SpfResult::TempError),
        "test mode MAIL FROM temperror",
    );
    let Some(Action::Defer(r)) = &d.would else {
        panic!("no would-defer: {d:#?}");
    };
    assert_eq!((r.code, r.enhanced), (450, Some("4.7.24")));
    // Nothing would have happened: no `would`.
    let d = run(&c, "pass.test", "a@pass.test").await;
    check(&d, Want::HdrMf(SpfResult::Pass), "test mode pass");
    assert_eq!(d.would, None);
}

// -------------------------------------------------------------- reply texts

#[tokio::test]
async fn enhanced_status_codes_off() {
    let mut c = Config::default();
    c.policy.enhanced_status_codes = false;
    c.policy.permerror_reject = true;
    c.policy.temperror_defer = true;
    for (sender, code) in [
        ("a@fail.test", 550),
        ("a@permerror.test", 550),
        ("a@temperror.test", 450),
    ] {
        let d = run(&c, "none.test", sender).await;
        let r = reply(&d);
        assert_eq!((r.code, r.enhanced), (code, None), "{sender}");
    }
}

#[tokio::test]
async fn default_reply_text_for_fail() {
    // No URL by default (issue: the default URL must exist, or be none).
    let d = run(&Config::default(), "none.test", "a@fail.test").await;
    assert_eq!(
        reply(&d).text,
        "Message rejected due to: SPF fail - not authorized."
    );
    // policyd-spf's URL, configured: the reply text of
    // docs/policyd-spf-compatibility.md §4.
    let mut c = Config::default();
    c.policy.reason_url = crate::config::POLICYD_SPF_REASON_URL.parse().unwrap();
    let d = run(&c, "none.test", "a@fail.test").await;
    assert_eq!(
        reply(&d).text,
        "Message rejected due to: SPF fail - not authorized. Please see \
         http://www.openspf.net/Why?s=mfrom;id=a@fail.test;ip=192.0.2.1;r=<UNKNOWN>"
    );
    let d = run(&c, "fail.test", "a@pass.test").await;
    assert_eq!(
        reply(&d).text,
        "Message rejected due to: SPF fail - not authorized. Please see \
         http://www.openspf.net/Why?s=helo;id=fail.test;ip=192.0.2.1;r=<UNKNOWN>"
    );
}

#[tokio::test]
async fn exp_text_with_percent_is_kept_for_the_adapter_to_escape() {
    let d = run(&Config::default(), "none.test", "a@exp.test").await;
    assert_eq!(
        reply(&d).text,
        "Message rejected due to: 100% of exp.test is bad."
    );
}

#[tokio::test]
async fn cr_lf_never_reach_the_reply() {
    // An exp= text with CR LF in it (the engine may refuse it and use the
    // default explanation: either way no CR/LF in the reply).
    let d = run(&Config::default(), "none.test", "a@crlf.test").await;
    let text = &reply(&d).text;
    assert!(!text.contains(['\r', '\n']), "{text:?}");
    // An explanation that does carry CR LF and % (the default explanation
    // is configurable).
    let ev = evaluator().with_default_explanation("line one\r\nline two 50%");
    let d = run_with(&Config::default(), &ev, "none.test", "a@fail.test").await;
    assert_eq!(
        reply(&d).text,
        "Message rejected due to: line one  line two 50%."
    );
}

#[tokio::test]
async fn reject_not_pass_domains_leaves_no_check_unchecked() {
    let mut c = config(RejectPolicy::NoCheck, RejectPolicy::Fail);
    c.policy.reject_not_pass_domains = vec![DomainName::parse("neutral.test").unwrap()];
    let d = run(&c, "neutral.test", "a@pass.test").await;
    check(&d, Want::HdrMf(SpfResult::Pass), "listed HELO, No_Check");
    assert!(d.helo.is_none(), "No_Check evaluated HELO");
}

#[tokio::test]
async fn test_mode_null_sender_would_reject_on_helo() {
    let mut c = Config::default();
    c.policy.test_mode = true;
    let d = run(&c, "fail.test", "").await;
    check(
        &d,
        Want::HdrHelo(SpfResult::Fail),
        "test mode <>, HELO fail",
    );
    assert!(matches!(&d.would, Some(Action::Reject(r)) if r.enhanced == Some("5.7.23")));
}

/// The milter's budget for the whole MAIL FROM stage: with DNS that never
/// answers in time, HELO and MAIL FROM together end at the deadline (each
/// alone would have its full Lookup_Time), and both are TempError.
#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_helo_and_mail_from_together() {
    let mut c = config(RejectPolicy::Fail, RejectPolicy::Fail);
    c.policy.temperror_defer = true;
    c.spf.lookup_time = Duration::from_secs(20);
    let slow = crate::dns::zone::Slow(zone(), Duration::from_secs(3600));
    let evaluator = Evaluator::new(slow).with_limits(Limits {
        time: Duration::from_secs(20),
        ..Limits::default()
    });
    let start = tokio::time::Instant::now();
    let env = envelope(Some(ip(CLIENT)), "pass.test", "a@pass.test");
    let d = decide(&c, &evaluator, &env, Some(start + Duration::from_secs(25))).await;
    // HELO: its own 20 s limit, then the defer.
    assert_eq!(start.elapsed(), Duration::from_secs(20));
    let helo = d.helo.as_ref().expect("HELO checked");
    assert_eq!(helo.result, SpfResult::TempError);
    assert!(
        helo.problem
            .as_deref()
            .unwrap_or("")
            .contains("time limit of 20 s"),
        "{helo:?}"
    );
    // TempError_Defer: the HELO TempError defers at once, so MAIL FROM is
    // only reached without it.
    assert!(matches!(d.action, Action::Defer(_)), "{:?}", d.action);

    c.policy.temperror_defer = false;
    let start = tokio::time::Instant::now();
    let d = decide(&c, &evaluator, &env, Some(start + Duration::from_secs(25))).await;
    // HELO: 20 s; MAIL FROM: the 5 s left, not another 20.
    assert_eq!(start.elapsed(), Duration::from_secs(25));
    let mail_from = d.mail_from.as_ref().expect("MAIL FROM checked");
    assert_eq!(mail_from.result, SpfResult::TempError);
    assert!(
        mail_from
            .problem
            .as_deref()
            .unwrap_or("")
            .contains("the time for the whole SPF decision ran out"),
        "{mail_from:?}"
    );
    assert_eq!(d.action, Action::Accept);
}

/// A reject cancelled after all (the session's rescue) reports what test
/// mode reports for the same envelope: the identity that caused the
/// reject, with its true result (docs/policyd-spf-compatibility.md §4:
/// TestOnly adds the header that would have been added).
#[tokio::test]
async fn a_cancelled_reject_reports_what_test_mode_reports() {
    let listed = |c: &mut Config| {
        c.policy.reject_not_pass_domains = vec![DomainName::parse("softfail.test").unwrap()];
    };
    type Case = (
        &'static str,
        &'static str,
        fn(&mut Config),
        Identity,
        SpfResult,
    );
    let cases: [Case; 5] = [
        (
            "fail.test",
            "a@pass.test",
            |_| {},
            Identity::Helo,
            SpfResult::Fail,
        ),
        (
            "pass.test",
            "a@fail.test",
            |_| {},
            Identity::MailFrom,
            SpfResult::Fail,
        ),
        (
            "pass.test",
            "a@permerror.test",
            |c| c.policy.permerror_reject = true,
            Identity::MailFrom,
            SpfResult::PermError,
        ),
        (
            "pass.test",
            "a@softfail.test",
            listed,
            Identity::MailFrom,
            SpfResult::SoftFail,
        ),
        (
            "pass.test",
            "a@nomailmod.test",
            |c| c.policy.no_mail = true,
            Identity::MailFrom,
            SpfResult::Fail,
        ),
    ];
    for (helo, sender, set, identity, result) in cases {
        let mut c = Config::default();
        set(&mut c);
        let mut d = run(&c, helo, sender).await;
        assert!(matches!(d.action, Action::Reject(_)), "{sender}: {d:#?}");
        assert_eq!(d.header, None, "{sender}");
        d.accept_anyway();
        assert_eq!(d.action, Action::Accept);
        c.policy.test_mode = true;
        let t = run(&c, helo, sender).await;
        assert_eq!(d.header, t.header, "{sender}");
        let o = d.header_outcome().expect("a header");
        assert_eq!((o.identity, o.result), (identity, result), "{sender}");
        assert_eq!(t.header_outcome(), Some(o), "{sender}");
    }
}
