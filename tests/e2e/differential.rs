//! The differential test: the same mail, under the same unchanged
//! `policyd-spf.conf` ([`conf`]), once through Debian's pyspf-milter (the
//! reference, spf-engine 3.0.4) and once through spfmilter, each in a lab of
//! its own (started one after the other in the test's namespaces, without
//! OpenDMARC: only the SPF milter's decision and header matter here).
//!
//! Each case is one SMTP session; what is compared is its **outcome**:
//! Postfix's reply at the first stage that did not succeed (`MAIL` for MAIL
//! FROM, `RCPT`, `DATA`, `END` for the end of data) with its code and
//! enhanced status code, e.g. `MAIL 550 5.7.23`; or, for accepted mail,
//! `250 2.0.0` followed by what the milter wrote in its
//! Authentication-Results (`Header_Type = AR`, the only header the
//! reference milter writes): `spf=RESULT IDENTITY`, `skip=local`
//! (skip_addresses), `skip=whitelist` (Whitelist), or `no-header`.
//!
//! [`cases`] is the one table: case → expected outcome for the reference and
//! for spfmilter, and the departure when they differ. On a mismatch the test
//! prints the table side by side (expected and observed, for both milters)
//! with both labs' logs.
//!
//! # Departures (where spfmilter differs from Debian's pyspf-milter)
//!
//! Each is a place where the spec (`policyd-spf-semantics.md`, written
//! against spf-engine 3.1.0, and RFC 7208) says spfmilter is right:
//!
//! * **HELO identity.** pyspf-milter 3.0.4 checks the host name Postfix
//!   sends at connect (here XCLIENT NAME; in real life the verified PTR
//!   name, or `unknown`) as the HELO identity and ignores the EHLO
//!   argument (its `connect` callback stores `hostname` as `helo_name`; it
//!   has no `hello` callback). spfmilter checks the EHLO argument (RFC 7208
//!   §2.3; spec §5 "known defects"). Cases `helo-real-fails` and
//!   `helo-real-passes` set NAME and EHLO apart; every other case sets them
//!   equal, so both milters check the same name.
//! * **SMTP AUTH.** pyspf-milter 3.0.4 does not look at `{auth_authen}`: an
//!   authenticated client whose sender fails SPF is rejected. Per the spec
//!   (§2, milter-only keys, from spf-engine 3.1.0) an authenticated client
//!   is not checked and gets no header: spfmilter accepts it (its
//!   `skip_authenticated`, on by default for a legacy file).
//! * **SERVFAIL.** pyspf with pydns (Debian's default DNS library for it)
//!   reads a SERVFAIL answer as an empty answer. RFC 7208 §5 (a mechanism's
//!   lookup) and §4.4 (the record lookup) make it a `temperror`. So
//!   `servfail.test` (`a:host.broken.test -all`) is a fail for the reference
//!   and a deferred temperror for spfmilter, and `broken.test` (its own TXT
//!   query SERVFAILs) is `none` for the reference and a temperror for
//!   spfmilter. A DNS **time-out** is a temperror for both (`temperror`
//!   cases: the lab's resolver drops every query for `unreachable.test`,
//!   `Lookup_Time = 4`): that is the temperror both see the same way.
//! * **HELO pass, MAIL FROM none** (CVE-2019-20790, spec §3 "one deliberate
//!   departure"): both accept, but the reference writes the HELO's pass
//!   (`spf=pass smtp.helo=…`), which a DMARC verifier must not take for the
//!   MAIL FROM; spfmilter writes the MAIL FROM's own result, `none`.
//!
//! Everything else — the reject sets of `HELO_reject`/`Mail_From_reject =
//! Fail`, `PermError_reject` and `TempError_Defer` in both scopes, the null
//! sender, `skip_addresses` (a configured CIDR and the default
//! `127.0.0.0/8`), `Whitelist` and its boundary — must be the same.

use std::fmt::Write as _;
use std::path::Path;

use super::lab::{Lab, LabConfig};
use super::milter::{MilterUnderTest, PolicydConf};
use super::postfix::{MYHOSTNAME, SaslLogin};
use super::smtp::{Mail, Transcript};
use super::zones::{CLIENT_IP, STRANGER_IP};

/// Inside `skip_addresses` (TEST-NET-3 is added to the default list).
const SKIPPED_IP: &str = "203.0.113.5";
/// A loopback address other than 127.0.0.1 (the reference's default
/// `InternalHosts`, which would skip silently): inside the default
/// `skip_addresses` `127.0.0.0/8`.
const LOOPBACK_IP: &str = "127.0.0.2";
/// Inside `Whitelist` (198.51.100.128/25); [`STRANGER_IP`], 198.51.100.7,
/// is in the same /24 but outside it.
const WHITELISTED_IP: &str = "198.51.100.200";

/// The SASL user of the SMTP AUTH case (realm = Postfix's `mydomain`).
const SASL_USER: &str = "user";
const SASL_REALM: &str = "test.example";
const SASL_PASSWORD: &str = "e2e-secret";

/// The one `policyd-spf.conf` both milters read (the harness adds only the
/// reference's own `Socket`, `PidFile` and `UserID`): reject mode, so
/// decisions are SMTP replies.
///
/// * `HELO_reject = Mail_From_reject = Fail`: Fail → `550 5.7.23`;
/// * `PermError_reject = True` → `550 5.7.24`, `TempError_Defer = True` →
///   `450 4.7.24` (spec §2, §4), in each scope;
/// * `Header_Type = AR`: the reference writes only Authentication-Results,
///   so both milters write the header that is compared;
/// * `skip_addresses`: the default list plus 203.0.113.0/24, no spaces
///   (the reference does not strip list items, spec §1);
/// * `Whitelist = 198.51.100.128/25`.
pub fn conf() -> PolicydConf {
    PolicydConf::reject_fail()
        .set("PermError_reject", "True")
        .set("TempError_Defer", "True")
        .set("Header_Type", "AR")
        .set(
            "skip_addresses",
            "127.0.0.0/8,::ffff:127.0.0.0/104,::1,203.0.113.0/24",
        )
        .set("Whitelist", "198.51.100.128/25")
}

/// One SMTP session and what each milter is expected to make of it.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub mail: Mail,
    /// Expected outcome with pyspf-milter (see the module docs for the
    /// notation).
    pub reference: &'static str,
    /// Expected outcome with spfmilter.
    pub spfmilter: &'static str,
    /// Why they differ; `None` when they must be the same.
    pub departure: Option<&'static str>,
}

const PASS: &str = "250 2.0.0 spf=pass mailfrom";
const FAIL: &str = "MAIL 550 5.7.23";
const PERMERROR: &str = "MAIL 550 5.7.24";
const TEMPERROR: &str = "MAIL 450 4.7.24";

/// The matrix. The client is [`CLIENT_IP`] and XCLIENT NAME = EHLO unless a
/// case says otherwise; the EHLO is `mx.none.test` (no SPF record: the HELO
/// check says none and MAIL FROM decides) unless the case is about the HELO.
/// Expected outcomes follow the spec's decision steps (§3) and reply table
/// (§4) for this [`conf`].
pub fn cases() -> Vec<Case> {
    let mail = |from: &str| Mail::from(from).helo("mx.none.test");
    let same = |name, mail, expected| Case {
        name,
        mail,
        reference: expected,
        spfmilter: expected,
        departure: None,
    };
    vec![
        // One per MAIL FROM result (RFC 7208 §2.6), HELO none.
        same("pass", mail("alice@pass.test"), PASS),
        same("fail", mail("mallory@fail.test"), FAIL),
        // Softfail and Neutral are not in the reject set of `Fail`.
        same(
            "softfail",
            mail("someone@softfail.test"),
            "250 2.0.0 spf=softfail mailfrom",
        ),
        same(
            "neutral",
            mail("someone@neutral.test"),
            "250 2.0.0 spf=neutral mailfrom",
        ),
        same(
            "none",
            mail("someone@none.test"),
            "250 2.0.0 spf=none mailfrom",
        ),
        same("permerror", mail("someone@permerror.test"), PERMERROR),
        // A DNS time-out (RFC 7208 §4.4) under Lookup_Time = 4.
        same("temperror", mail("someone@temperror.test"), TEMPERROR),
        // Null sender: no MAIL FROM query, the HELO verdict stands (§3
        // step 5), header identity=helo.
        same(
            "null-sender-helo-pass",
            Mail::null_sender().helo("mx.pass.test"),
            "250 2.0.0 spf=pass helo",
        ),
        same(
            "null-sender-helo-fail",
            Mail::null_sender().helo("mx.fail.test"),
            FAIL,
        ),
        // A HELO reject returns at once; MAIL FROM is not evaluated (§3
        // step 4), so a passing sender does not help.
        same(
            "helo-fail-mailfrom-pass",
            Mail::from("alice@pass.test").helo("mx.fail.test"),
            FAIL,
        ),
        // PermError_reject and TempError_Defer act in the HELO scope too.
        same(
            "helo-permerror-mailfrom-pass",
            Mail::from("alice@pass.test").helo("mx.permerror.test"),
            PERMERROR,
        ),
        same(
            "helo-temperror-mailfrom-pass",
            Mail::from("alice@pass.test").helo("mx.temperror.test"),
            TEMPERROR,
        ),
        // A HELO Softfail is not rejected under `Fail`; the MAIL FROM pass
        // goes into the header.
        same(
            "helo-softfail-mailfrom-pass",
            Mail::from("alice@pass.test").helo("mx.softfail.test"),
            PASS,
        ),
        // The bypass chain (§3 step 2): no check, a trace "none" result.
        same(
            "skip_addresses",
            mail("mallory@fail.test")
                .helo("mx.fail.test")
                .client_ip(SKIPPED_IP),
            "250 2.0.0 skip=local",
        ),
        same(
            "skip_addresses-default-loopback",
            mail("mallory@fail.test")
                .helo("mx.fail.test")
                .client_ip(LOOPBACK_IP),
            "250 2.0.0 skip=local",
        ),
        same(
            "Whitelist",
            mail("mallory@fail.test")
                .helo("mx.fail.test")
                .client_ip(WHITELISTED_IP),
            "250 2.0.0 skip=whitelist",
        ),
        same(
            "Whitelist-neighbour-checked",
            mail("mallory@fail.test").client_ip(STRANGER_IP),
            FAIL,
        ),
        Case {
            name: "smtp-auth",
            mail: mail("mallory@fail.test")
                .auth(&format!("{SASL_USER}@{SASL_REALM}"), SASL_PASSWORD),
            reference: FAIL,
            spfmilter: "250 2.0.0 no-header",
            departure: Some(
                "3.0.4 ignores {auth_authen}; spec §2: authenticated clients are not checked",
            ),
        },
        Case {
            name: "helo-real-fails",
            mail: Mail::from("alice@pass.test")
                .helo("mx.fail.test")
                .client_name("mx.pass.test"),
            reference: PASS,
            spfmilter: FAIL,
            departure: Some("reference checks the client name (XCLIENT NAME/PTR), not the EHLO"),
        },
        Case {
            name: "helo-real-passes",
            mail: Mail::from("alice@pass.test")
                .helo("mx.pass.test")
                .client_name("mx.fail.test"),
            reference: FAIL,
            spfmilter: PASS,
            departure: Some("reference checks the client name (XCLIENT NAME/PTR), not the EHLO"),
        },
        Case {
            name: "servfail-in-mechanism",
            mail: mail("someone@servfail.test"),
            reference: FAIL,
            spfmilter: TEMPERROR,
            departure: Some("pydns reads SERVFAIL as empty; RFC 7208 §5: temperror"),
        },
        Case {
            name: "servfail-for-record",
            mail: mail("someone@broken.test"),
            reference: "250 2.0.0 spf=none mailfrom",
            spfmilter: TEMPERROR,
            departure: Some("pydns reads SERVFAIL as no record; RFC 7208 §4.4: temperror"),
        },
        Case {
            name: "helo-pass-mailfrom-none",
            mail: Mail::from("someone@none.test").helo("mx.pass.test"),
            reference: "250 2.0.0 spf=pass helo",
            spfmilter: "250 2.0.0 spf=none mailfrom",
            departure: Some("header: reference writes the HELO pass (CVE-2019-20790), spec §3"),
        },
    ]
}

/// Runs every case through a lab of `milter` and returns the outcomes, in
/// order, and the lab's diagnostics (for a failure report).
pub fn run_cases(
    scratch: &Path,
    milter: &MilterUnderTest,
    sasl: &SaslLogin,
    cases: &[Case],
) -> (Vec<String>, String) {
    let mut config = LabConfig::new(milter, conf());
    config.opendmarc = None;
    config.postfix = config.postfix.with_sasl(sasl);
    let mut lab = Lab::start(scratch, config)
        .unwrap_or_else(|e| panic!("the {} lab did not start: {e}", milter.name));
    let outcomes = cases
        .iter()
        .map(|case| {
            let transcript = lab.send(&case.mail);
            outcome(&lab, &case.mail, &transcript)
        })
        .collect();
    let diagnostics = lab.diagnostics();
    lab.shutdown()
        .unwrap_or_else(|e| panic!("unclean shutdown: {e}"));
    (outcomes, diagnostics)
}

/// The outcome of one session, in the notation of the module docs.
pub fn outcome(lab: &Lab, mail: &Mail, transcript: &Transcript) -> String {
    let mut stages = vec![("XCLIENT", "XCLIENT"), ("EHLO", "EHLO")];
    if mail.auth.is_some() {
        stages.push(("AUTH", "AUTH"));
    }
    stages.extend([("MAIL", "MAIL FROM"), ("RCPT", "RCPT TO"), ("DATA", "DATA")]);
    for (stage, command) in stages {
        let Some(reply) = transcript.reply_to(command) else {
            return format!("{stage} no reply");
        };
        if reply.code >= 400 {
            return match reply.enhanced {
                Some(e) => format!("{stage} {} {e}", reply.code),
                None => format!("{stage} {}", reply.code),
            };
        }
    }
    let Some(end) = transcript.data_end() else {
        return "END no reply".to_string();
    };
    if end.code != 250 {
        return format!("END {} {}", end.code, end.enhanced.unwrap_or_default());
    }
    let Some(queue_id) = transcript.queue_id() else {
        return "END 250 without a queue ID".to_string();
    };
    let message = match lab.postfix().message(&queue_id) {
        Ok(m) => m,
        Err(e) => return format!("250 unreadable message: {e}"),
    };
    let accepted = format!("250 {}", end.enhanced.unwrap_or_default());
    if let Some(header) = lab.spf_header(&message) {
        return format!("{accepted} spf={} {}", header.result, header.identity);
    }
    // A skip: Authentication-Results: ID; none (COMMENT) (spec §4).
    let ours: Vec<String> = message
        .unfolded("Authentication-Results")
        .into_iter()
        .filter(|v| v.split(';').next().map(str::trim) == Some(MYHOSTNAME))
        .collect();
    match ours.first() {
        None => format!("{accepted} no-header"),
        Some(v) if v.contains("SPF check N/A for local connections") => {
            format!("{accepted} skip=local")
        }
        Some(v) if v.contains("SPF skipped for whitelisted relay -") => {
            format!("{accepted} skip=whitelist")
        }
        Some(v) => format!("{accepted} other-header: {v}"),
    }
}

/// The side-by-side table: case, then expected and observed per milter, a
/// mark for each mismatch, and the departure.
pub fn table(cases: &[Case], reference: &[String], spfmilter: &[String]) -> String {
    let mark = |expected: &str, observed: &str| if expected == observed { " " } else { "X" };
    let rows: Vec<[String; 8]> = cases
        .iter()
        .zip(reference.iter().zip(spfmilter))
        .map(|(c, (r, s))| {
            [
                c.name.to_string(),
                c.reference.to_string(),
                r.clone(),
                mark(c.reference, r).to_string(),
                c.spfmilter.to_string(),
                s.clone(),
                mark(c.spfmilter, s).to_string(),
                c.departure.unwrap_or("").to_string(),
            ]
        })
        .collect();
    let header = [
        "case",
        "pyspf-milter expected",
        "pyspf-milter observed",
        "",
        "spfmilter expected",
        "spfmilter observed",
        "",
        "departure",
    ]
    .map(str::to_string);
    let mut widths = [0usize; 8];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "| {} |", line.join(" | "));
    }
    out
}

/// The test: both labs, all cases, one table.
pub fn differential(scratch: &Path) {
    let cases = cases();
    // The table is consistent: a departure is named exactly where the
    // expected outcomes differ.
    for c in &cases {
        assert_eq!(
            c.departure.is_some(),
            c.reference != c.spfmilter,
            "case {}: a departure must be named iff the expectations differ",
            c.name
        );
    }
    assert!(
        cases.iter().filter(|c| c.departure.is_none()).count() >= 12,
        "at least 12 cases must agree"
    );
    let sasl = SaslLogin::create(&scratch.join("sasl"), SASL_USER, SASL_REALM, SASL_PASSWORD)
        .unwrap_or_else(|e| panic!("SASL database: {e}"));
    let (reference, reference_log) =
        run_cases(scratch, &MilterUnderTest::pyspf_milter(), &sasl, &cases);
    let (ours, our_log) = run_cases(scratch, &MilterUnderTest::spfmilter(), &sasl, &cases);
    let table = table(&cases, &reference, &ours);
    eprintln!("e2e: differential, client {CLIENT_IP} unless stated:\n{table}");
    let failed = cases
        .iter()
        .zip(reference.iter().zip(&ours))
        .any(|(c, (r, s))| c.reference != r || c.spfmilter != s);
    if failed && std::env::var_os("SPFMILTER_E2E_VERBOSE").is_none() {
        eprintln!("{reference_log}\n{our_log}");
    }
    assert!(!failed, "outcomes differ from the table (X):\n{table}");
}
