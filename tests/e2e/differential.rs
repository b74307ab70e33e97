//! The differential test: the same mail, under the same unchanged
//! `policyd-spf.conf` ([`conf`], checked to be the same file), once through
//! Debian's pyspf-milter (the reference, spf-engine 3.0.4) and once through
//! spfmilter, each in a lab of its own (started one after the other in the
//! test's namespaces, without OpenDMARC: only the SPF milter's decision and
//! header matter here). Each lab runs the cases of each [`Mode`] in turn —
//! reject, No_Mail, strict, header-only — restarting its milter with that
//! mode's file in between.
//!
//! Each case is one SMTP session; what is compared is its **outcome**:
//! Postfix's reply at the first stage that did not succeed (`MAIL` for MAIL
//! FROM, `RCPT`, `DATA`, `END` for the end of data) with its code and
//! enhanced status code, e.g. `MAIL 550 5.7.23`; or, for accepted mail,
//! `250 2.0.0` followed by what the milter wrote in its
//! Authentication-Results (`Header_Type = AR`, the only header the
//! reference milter writes): `spf=RESULT IDENTITY`, `skip=local`
//! (skip_addresses), `skip=whitelist` (Whitelist), `skip=domain-whitelist`,
//! `skip=helo-whitelist`, `skip=ptr-whitelist`, or `no-header`.
//!
//! [`cases`] is the one table: case → expected outcome for the reference and
//! for spfmilter, and the departure when they differ. On a mismatch the test
//! prints the table side by side (expected and observed, for both milters)
//! with both labs' logs.
//!
//! # Departures (where spfmilter differs from Debian's pyspf-milter)
//!
//! Each is a place where docs/policyd-spf-compatibility.md (written
//! against spf-engine 3.1.0, and RFC 7208) says spfmilter is right:
//!
//! * **HELO identity.** pyspf-milter 3.0.4 checks the host name Postfix
//!   sends at connect (here XCLIENT NAME; in real life the verified PTR
//!   name, or `unknown`) as the HELO identity and ignores the EHLO
//!   argument (its `connect` callback stores `hostname` as `helo_name`; it
//!   has no `hello` callback). spfmilter checks the EHLO argument (RFC 7208
//!   §2.3; docs/policyd-spf-compatibility.md §5). Cases `helo-real-fails` and
//!   `helo-real-passes` set NAME and EHLO apart; every other case sets them
//!   equal, so both milters check the same name.
//! * **SMTP AUTH.** pyspf-milter 3.0.4 does not look at `{auth_authen}`: an
//!   authenticated client whose sender fails SPF is rejected. Per docs/policyd-spf-compatibility.md
//!   (§2, milter-only keys, from spf-engine 3.1.0) an authenticated client
//!   is not checked and gets no header: spfmilter accepts it (its
//!   `skip_authenticated`, on by default for a legacy file).
//! * **SERVFAIL.** pyspf with pydns (`python3-dns`, what pyspf-milter's
//!   dependencies install; pyspf would prefer dnspython if it were there)
//!   reads a SERVFAIL answer as an empty answer. RFC 7208 §5 (a mechanism's
//!   lookup) and §4.4 (the record lookup) make it a `temperror`. So
//!   `servfail.test` (`a:host.broken.test -all`) is a fail for the reference
//!   and a deferred temperror for spfmilter, and `broken.test` (its own TXT
//!   query SERVFAILs) is `none` for the reference and a temperror for
//!   spfmilter. A DNS **time-out** is a temperror for both (`temperror`
//!   cases: the lab's resolver drops every query for `unreachable.test`,
//!   `Lookup_Time = 4`): that is the temperror both see the same way.
//! * **A sender domain with a trailing dot** (`alice@pass.test.`, which
//!   Postfix passes on): the reference says none; RFC 7208 §4.3 calls a
//!   domain malformed for "a zero-length label not at the end", so
//!   `pass.test.` is pass.test, and spfmilter says pass.
//! * **A `%` in the reason.** An explanation `100%% forged: %{l}` expands
//!   to `100% forged: mallory`; the reference hands it to libmilter's
//!   `setreply` unescaped, which fails, and Postfix answers `451 4.3.0`
//!   ("pymilter: untrapped exception"). The spec (§4, §5) wants the `%`
//!   escaped and the reject made: spfmilter answers `550 5.7.23 … 100%
//!   forged: mallory` (case `explanation-with-percent`).
//! * **Domain_Whitelist_PTR.** The reference takes the client's first PTR
//!   name without looking up its address and matches it as a plain string
//!   suffix, so `host.notwl.test` is "in" `wl.test`, and a PTR name whose A
//!   record is another address counts. The spec (§2) wants forward-confirmed
//!   names matched at a label boundary: spfmilter checks both clients
//!   (cases `Domain_Whitelist_PTR-suffix` and `-unconfirmed`).
//! * **No_Mail.** The reference keeps a reject only when the first TXT
//!   string of the domain is byte for byte `v=spf1 -all`; `v=spf1 -ALL`
//!   (the same policy: mechanism names are case-insensitive, RFC 7208
//!   §4.6.1) is demoted to a header. The spec (§2) compares the parsed
//!   record: spfmilter keeps that reject (case
//!   `no-mail-record-in-capitals`).
//! * **Reject_Not_Pass_Domains.** The reference tests a name with pyspf's
//!   `domainmatch(list, name)`, whose arguments are (PTR names, domain):
//!   it asks whether a *listed entry* equals the name or lies below it. So
//!   with `mx.neutral.test` listed, the sender domain `neutral.test` — a
//!   parent, not listed — gets the SPF_Not_Pass policy and its Neutral is
//!   rejected. spfmilter takes the listed name itself only: the same as the
//!   reference for a listed name and a name below it, one reject less for
//!   a parent (case `Reject_Not_Pass_Domains-parent`).
//! * **HELO pass, MAIL FROM none** (CVE-2019-20790, docs/policyd-spf-compatibility.md §3 "one deliberate
//!   departure"): both accept, but the reference writes the HELO's pass
//!   (`spf=pass smtp.helo=…`), which a DMARC verifier must not take for the
//!   MAIL FROM; spfmilter writes the MAIL FROM's own result, `none`.
//!
//! Everything else — the reject sets of `HELO_reject`/`Mail_From_reject =
//! Fail`, `PermError_reject` and `TempError_Defer` in both scopes, the null
//! sender, a domain's explanation (`exp=`) as the reason, an address
//! literal, upper case, a trailing dot, a single label,
//! a malformed or a non-existent name as EHLO, IPv6 and IPv4-mapped clients,
//! senders in upper case, without `@` or with a single label,
//! `skip_addresses` (a configured CIDR, the default `127.0.0.0/8` and
//! `::1`), `Whitelist` and its boundary, `Domain_Whitelist`,
//! `HELO_Whitelist` (and the same EHLO from another address),
//! `Domain_Whitelist_PTR` for a confirmed name, and the header-only mode's
//! results — must be the same, and is.
//!
//! Where both milters refuse a message the same way, Postfix's reply texts
//! must be the same too (`Message rejected due to: … Please see
//! http://www.openspf.net/Why?s=mfrom;id=…;ip=…;r=<UNKNOWN>`, docs/policyd-spf-compatibility.md §4), up
//! to the detail of a PermError/TempError explanation, which each SPF
//! library words its own way ([`refusal_text`]), and up to case: the
//! reference lower-cases the sender's domain (`id=someone@mx.neutral.test`
//! for `MAIL FROM:<someone@MX.Neutral.TEST>`), spfmilter repeats the sender
//! as sent. They are. Likewise the whole Authentication-Results of
//! accepted mail ([`normalize_header`]): the same, but for `receiver=`
//! (`<UNKNOWN>` in the reference, which decides before any recipient;
//! the first recipient's domain in spfmilter, docs/policyd-spf-compatibility.md §2 `Hide_Receiver`).
//!
//! Runtime: about 50 s on an idle machine (two labs, each milter killed
//! and restarted between modes; pyspf-milter's final stop takes ~4 s, and
//! the three time-out cases take 4 s each per milter).

use std::fmt::Write as _;
use std::path::Path;

use super::lab::{Lab, LabConfig};
use super::milter::{MilterUnderTest, PolicydConf};
use super::postfix::{MYHOSTNAME, SaslLogin};
use super::process::read_lossy;
use super::smtp::{Mail, Transcript, authentication_results_parts};
use super::zones::{
    CLIENT_IP, CLIENT_IP6, DOMAIN_WHITELISTED_IP, HELO_WHITELISTED_IP, PTR_SUFFIX_IP,
    PTR_UNCONFIRMED_IP, PTR_WHITELISTED_IP, STRANGER_IP,
};

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

/// The configurations a lab runs, one after the other, in this order (the
/// milter is restarted with each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decisions are SMTP replies.
    Reject,
    /// Reject mode with `No_Mail = True`: a reject stands only for a domain
    /// whose record is `v=spf1 -all` (docs/policyd-spf-compatibility.md §2).
    NoMail,
    /// Stricter reject sets: `HELO_reject = SPF_Not_Pass`,
    /// `Mail_From_reject = Softfail`, `Reject_Not_Pass_Domains =
    /// mx.neutral.test` (docs/policyd-spf-compatibility.md §2).
    Strict,
    /// `HELO_reject = Mail_From_reject = False`: nothing is rejected or
    /// deferred (PermError_reject and TempError_Defer are ignored in a
    /// `False` scope, docs/policyd-spf-compatibility.md §2), so every result shows in the header.
    HeaderOnly,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Reject => "reject",
            Mode::Strict => "strict",
            Mode::NoMail => "no_mail",
            Mode::HeaderOnly => "header",
        }
    }
}

/// The `policyd-spf.conf` both milters read in `mode`. The harness adds the
/// reference's process keys `Socket`, `PidFile` and `UserID`, for both: the
/// test checks that the two files are the same, byte for byte, up to the
/// lab directory in `PidFile`.
///
/// * `HELO_reject = Mail_From_reject = Fail` (reject mode; see [`Mode`]
///   for the others): Fail → `550 5.7.23`;
/// * `PermError_reject = True` → `550 5.7.24`, `TempError_Defer = True` →
///   `450 4.7.24` (docs/policyd-spf-compatibility.md §2, §4), in each scope;
/// * `Header_Type = AR`: the reference writes only Authentication-Results,
///   so both milters write the header that is compared;
/// * `skip_addresses`: the default list plus 203.0.113.0/24, no spaces
///   (the reference does not strip list items, docs/policyd-spf-compatibility.md §1);
/// * `Whitelist = 198.51.100.128/25`, `Domain_Whitelist = relay.test`,
///   `HELO_Whitelist = mx.relay.test`, `Domain_Whitelist_PTR = wl.test`
///   (the relays of `zones.rs`);
/// * `Reason_URL` = the reference's default, written out: spfmilter's
///   default is no URL (the site is defunct), and the reply texts are
///   compared.
pub fn conf(mode: Mode) -> PolicydConf {
    let base = match mode {
        Mode::Reject => PolicydConf::reject_fail(),
        Mode::Strict => PolicydConf::base()
            .set("HELO_reject", "SPF_Not_Pass")
            .set("Mail_From_reject", "Softfail")
            .set("Reject_Not_Pass_Domains", "mx.neutral.test"),
        Mode::NoMail => PolicydConf::reject_fail().set("No_Mail", "True"),
        Mode::HeaderOnly => PolicydConf::header_only(),
    };
    base.set("PermError_reject", "True")
        .set("TempError_Defer", "True")
        .set("Header_Type", "AR")
        .set(
            "skip_addresses",
            "127.0.0.0/8,::ffff:127.0.0.0/104,::1,203.0.113.0/24",
        )
        .set("Whitelist", "198.51.100.128/25")
        .set("Domain_Whitelist", "relay.test")
        .set("HELO_Whitelist", "mx.relay.test")
        .set("Domain_Whitelist_PTR", "wl.test")
        .set(
            "Reason_URL",
            "http://www.openspf.net/Why?s={0};id={1};ip={2};r={3}",
        )
}

/// One SMTP session and what each milter is expected to make of it.
#[derive(Debug, Clone)]
pub struct Case {
    pub mode: Mode,
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

/// The matrix, mode by mode (see [`Mode`]). The client is
/// [`CLIENT_IP`] and XCLIENT NAME = EHLO unless a case says otherwise; the
/// EHLO is `mx.none.test` (no SPF record: the HELO check says none and MAIL
/// FROM decides) unless the case is about the HELO.
/// Expected outcomes follow the decision steps (§3) and the reply table
/// (§4) of docs/policyd-spf-compatibility.md for this [`conf`].
pub fn cases() -> Vec<Case> {
    let mut cases = reject_cases();
    cases.extend(no_mail_cases());
    cases.extend(strict_cases());
    cases.extend(header_cases());
    cases
}

fn same(mode: Mode, name: &'static str, mail: Mail, expected: &'static str) -> Case {
    Case {
        mode,
        name,
        mail,
        reference: expected,
        spfmilter: expected,
        departure: None,
    }
}

/// A documented departure: the reference and spfmilter answer differently,
/// for the reason `why`.
fn differ(
    mode: Mode,
    name: &'static str,
    mail: Mail,
    reference: &'static str,
    spfmilter: &'static str,
    why: &'static str,
) -> Case {
    Case {
        mode,
        name,
        mail,
        reference,
        spfmilter,
        departure: Some(why),
    }
}

/// A sender of `from` with HELO `mx.none.test`.
fn mail(from: &str) -> Mail {
    Mail::from(from).helo("mx.none.test")
}

fn smtp_auth(from: &str) -> Mail {
    mail(from).auth(&format!("{SASL_USER}@{SASL_REALM}"), SASL_PASSWORD)
}

const AUTH_DEPARTURE: &str = "3.0.4 ignores {auth_authen}; docs/policyd-spf-compatibility.md §2: authenticated clients are not checked";
const HELO_DEPARTURE: &str = "reference checks the client name (XCLIENT NAME/PTR), not the EHLO";
const PTR_SUFFIX_DEPARTURE: &str = "reference: plain suffix match (host.notwl.test in wl.test); docs/policyd-spf-compatibility.md §2: label boundary";
const PTR_UNCONFIRMED_DEPARTURE: &str = "reference: PTR name not forward-confirmed; docs/policyd-spf-compatibility.md §2: confirmed names only";
const TRAILING_DOT_DEPARTURE: &str =
    "reference: pass.test. gives none; RFC 7208 §4.3: a final empty label is not malformed";
const PERCENT_DEPARTURE: &str = "reference: a % in the reason crashes it (451); docs/policyd-spf-compatibility.md §4/§5: escape it, reject";
const NO_MAIL_DEPARTURE: &str = "reference: byte comparison with \"v=spf1 -all\"; docs/policyd-spf-compatibility.md §2: the parsed record";
const RNPD_PARENT_DEPARTURE: &str = "reference: a parent of a listed domain matches (swapped domainmatch); docs/policyd-spf-compatibility.md §2: listed only";
const SERVFAIL_MECHANISM: &str = "pydns reads SERVFAIL as empty; RFC 7208 §5: temperror";
const SERVFAIL_RECORD: &str = "pydns reads SERVFAIL as no record; RFC 7208 §4.4: temperror";
const HELO_PASS_HEADER: &str =
    "header: reference writes the HELO pass (CVE-2019-20790), docs/policyd-spf-compatibility.md §5";

/// Reject mode: decisions.
fn reject_cases() -> Vec<Case> {
    let same = |name, mail, expected| same(Mode::Reject, name, mail, expected);
    let differ = |name, mail, reference, spfmilter, why| {
        differ(Mode::Reject, name, mail, reference, spfmilter, why)
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
        // An address literal as EHLO: no domain to check (RFC 7208 §2.3,
        // §4.3: not a domain name → none), MAIL FROM decides. The reference
        // checks NAME (mx.none.test, none) and so decides the same.
        same(
            "helo-address-literal",
            Mail::from("alice@pass.test")
                .helo("[192.0.2.10]")
                .client_name("mx.none.test"),
            PASS,
        ),
        // HELO names compare case-insensitively, a trailing dot is the
        // root (RFC 7208 §4.3: only a zero-length label *not* at the end is
        // malformed). XCLIENT refuses NAME with a trailing dot, so the
        // reference checks mx.fail.test.
        same(
            "helo-upper-case",
            Mail::from("alice@pass.test").helo("MX.FAIL.TEST"),
            FAIL,
        ),
        same(
            "helo-trailing-dot",
            Mail::from("alice@pass.test")
                .helo("mx.fail.test.")
                .client_name("mx.fail.test"),
            FAIL,
        ),
        // A HELO that is a single label, malformed (a 64-byte label), or
        // does not exist gives none (RFC 7208 §4.3), not an error: MAIL
        // FROM decides.
        same(
            "helo-single-label",
            Mail::from("alice@pass.test").helo("localhost"),
            PASS,
        ),
        same(
            "helo-malformed",
            Mail::from("alice@pass.test")
                .helo(&format!("{}.test", "x".repeat(64)))
                .client_name("mx.none.test"),
            PASS,
        ),
        same(
            "helo-nxdomain",
            Mail::from("alice@pass.test").helo("nonexistent.test"),
            PASS,
        ),
        same(
            "sender-nxdomain",
            mail("a@nonexistent.test"),
            "250 2.0.0 spf=none mailfrom",
        ),
        // The domain's explanation (RFC 7208 §6.2, macros expanded) is the
        // reason in the reply; the reply texts are compared.
        same("explanation", mail("mallory@exp.relay.test"), FAIL),
        // IPv6 clients (XCLIENT ADDR=IPv6:…): ip6 matches only IPv6, ip4
        // only IPv4 (RFC 7208 §5.6); an IPv4-mapped client is the IPv4
        // client (Postfix hands it to the milters as 192.0.2.10).
        same(
            "ipv6-pass",
            mail("alice@ipv6.test").client_ip(&format!("IPv6:{CLIENT_IP6}")),
            PASS,
        ),
        same(
            "ipv6-fail",
            mail("alice@pass.test").client_ip(&format!("IPv6:{CLIENT_IP6}")),
            FAIL,
        ),
        same(
            "ipv4-mapped-ipv6",
            mail("alice@pass.test").client_ip("IPv6:::ffff:192.0.2.10"),
            PASS,
        ),
        // Domains compare case-insensitively (RFC 7208 §4.3, RFC 4343).
        same("sender-upper-case", mail("ALICE@PASS.TEST"), PASS),
        // A reverse-path without "@": both read it as a bare domain
        // (pyspf's split_email: `foo.com` → postmaster@foo.com)...
        same("sender-without-at", mail("fail.test"), FAIL),
        // ...and a single label is not a multi-label domain: none (RFC
        // 7208 §4.3).
        same(
            "sender-single-label",
            mail("alice"),
            "250 2.0.0 spf=none mailfrom",
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
            "skip_addresses-default-ipv6-loopback",
            mail("mallory@fail.test")
                .helo("mx.fail.test")
                .client_ip("IPv6:::1"),
            "250 2.0.0 skip=local",
        ),
        same(
            "Whitelist",
            mail("mallory@fail.test")
                .helo("mx.fail.test")
                .client_ip(WHITELISTED_IP),
            "250 2.0.0 skip=whitelist",
        ),
        // Outside the Whitelist CIDR, not authorized by relay.test, no
        // PTR: checked like anyone else.
        same(
            "Whitelist-neighbour-checked",
            mail("mallory@fail.test").client_ip(STRANGER_IP),
            FAIL,
        ),
        // Domain_Whitelist: check_host(ip, relay.test) is Pass.
        same(
            "Domain_Whitelist",
            mail("mallory@fail.test").client_ip(DOMAIN_WHITELISTED_IP),
            "250 2.0.0 skip=domain-whitelist",
        ),
        // HELO_Whitelist: the EHLO is listed and resolves to the client...
        same(
            "HELO_Whitelist",
            mail("mallory@fail.test")
                .helo("mx.relay.test")
                .client_ip(HELO_WHITELISTED_IP),
            "250 2.0.0 skip=helo-whitelist",
        ),
        // ...but not from another address (mx.relay.test has no SPF
        // record: HELO none, MAIL FROM fail).
        same(
            "HELO_Whitelist-other-address",
            mail("mallory@fail.test")
                .helo("mx.relay.test")
                .client_ip(STRANGER_IP),
            FAIL,
        ),
        // Domain_Whitelist_PTR: the PTR name is in wl.test and confirmed.
        same(
            "Domain_Whitelist_PTR",
            mail("mallory@fail.test").client_ip(PTR_WHITELISTED_IP),
            "250 2.0.0 skip=ptr-whitelist",
        ),
        differ(
            "smtp-auth",
            smtp_auth("mallory@fail.test"),
            FAIL,
            "250 2.0.0 no-header",
            AUTH_DEPARTURE,
        ),
        differ(
            "helo-real-fails",
            Mail::from("alice@pass.test")
                .helo("mx.fail.test")
                .client_name("mx.pass.test"),
            PASS,
            FAIL,
            HELO_DEPARTURE,
        ),
        differ(
            "helo-real-passes",
            Mail::from("alice@pass.test")
                .helo("mx.pass.test")
                .client_name("mx.fail.test"),
            FAIL,
            PASS,
            HELO_DEPARTURE,
        ),
        differ(
            "Domain_Whitelist_PTR-suffix",
            mail("mallory@fail.test").client_ip(PTR_SUFFIX_IP),
            "250 2.0.0 skip=ptr-whitelist",
            FAIL,
            PTR_SUFFIX_DEPARTURE,
        ),
        differ(
            "Domain_Whitelist_PTR-unconfirmed",
            mail("mallory@fail.test").client_ip(PTR_UNCONFIRMED_IP),
            "250 2.0.0 skip=ptr-whitelist",
            FAIL,
            PTR_UNCONFIRMED_DEPARTURE,
        ),
        differ(
            "sender-trailing-dot",
            mail("alice@pass.test."),
            "250 2.0.0 spf=none mailfrom",
            PASS,
            TRAILING_DOT_DEPARTURE,
        ),
        differ(
            "explanation-with-percent",
            mail("mallory@pct.relay.test"),
            "MAIL 451 4.3.0",
            FAIL,
            PERCENT_DEPARTURE,
        ),
        differ(
            "servfail-in-mechanism",
            mail("someone@servfail.test"),
            FAIL,
            TEMPERROR,
            SERVFAIL_MECHANISM,
        ),
        differ(
            "servfail-for-record",
            mail("someone@broken.test"),
            "250 2.0.0 spf=none mailfrom",
            TEMPERROR,
            SERVFAIL_RECORD,
        ),
        differ(
            "helo-pass-mailfrom-none",
            Mail::from("someone@none.test").helo("mx.pass.test"),
            "250 2.0.0 spf=pass helo",
            "250 2.0.0 spf=none mailfrom",
            HELO_PASS_HEADER,
        ),
    ]
}

/// No_Mail mode: rejects stand only for `v=spf1 -all`; other rejects
/// become headers (PermError ones too, docs/policyd-spf-compatibility.md §2); defers are untouched.
fn no_mail_cases() -> Vec<Case> {
    let same = |name, mail, expected| same(Mode::NoMail, name, mail, expected);
    vec![
        same("fail-no-mail-domain", mail("mallory@fail.test"), FAIL),
        same(
            "fail-sending-domain",
            mail("alice@pass.test").client_ip(STRANGER_IP),
            "250 2.0.0 spf=fail mailfrom",
        ),
        same(
            "permerror",
            mail("someone@permerror.test"),
            "250 2.0.0 spf=permerror mailfrom",
        ),
        same(
            "helo-fail-no-mail-domain",
            Mail::from("alice@pass.test").helo("mx.fail.test"),
            FAIL,
        ),
        // The HELO's Fail (mx.pass.test: `a -all`) is demoted; MAIL FROM
        // is then checked and its own `v=spf1 -all` Fail stands.
        same(
            "helo-fail-demoted-mailfrom-fail",
            Mail::from("mallory@fail.test")
                .helo("mx.pass.test")
                .client_ip(STRANGER_IP),
            FAIL,
        ),
        Case {
            mode: Mode::NoMail,
            name: "no-mail-record-in-capitals",
            mail: mail("someone@caps.relay.test"),
            reference: "250 2.0.0 spf=fail mailfrom",
            spfmilter: FAIL,
            departure: Some(NO_MAIL_DEPARTURE),
        },
    ]
}

/// Strict mode: the larger reject sets, and a receiver policy for one
/// domain.
fn strict_cases() -> Vec<Case> {
    let same = |name, mail, expected| same(Mode::Strict, name, mail, expected);
    vec![
        // SPF_Not_Pass = {Fail, Softfail, Neutral} for the HELO.
        same(
            "helo-softfail-mailfrom-pass",
            Mail::from("alice@pass.test").helo("mx.softfail.test"),
            FAIL,
        ),
        same(
            "helo-neutral-mailfrom-pass",
            Mail::from("alice@pass.test").helo("mx.neutral.test"),
            FAIL,
        ),
        // Softfail = {Fail, Softfail} for MAIL FROM; Neutral is not in it...
        same("mailfrom-softfail", mail("someone@softfail.test"), FAIL),
        same(
            "mailfrom-neutral",
            mail("someone@neutral.relay.test"),
            "250 2.0.0 spf=neutral mailfrom",
        ),
        // ...unless the domain is listed in Reject_Not_Pass_Domains: its
        // policy becomes SPF_Not_Pass ("Receiver policy for SPF Neutral",
        // compared with the reply texts). Domains compare case-insensitively.
        same(
            "Reject_Not_Pass_Domains",
            mail("someone@mx.neutral.test"),
            FAIL,
        ),
        same(
            "Reject_Not_Pass_Domains-case",
            mail("someone@MX.Neutral.TEST"),
            FAIL,
        ),
        same(
            "none-not-rejected",
            mail("someone@none.test"),
            "250 2.0.0 spf=none mailfrom",
        ),
        Case {
            mode: Mode::Strict,
            name: "Reject_Not_Pass_Domains-parent",
            mail: mail("someone@neutral.test"),
            reference: FAIL,
            spfmilter: "250 2.0.0 spf=neutral mailfrom",
            departure: Some(RNPD_PARENT_DEPARTURE),
        },
    ]
}

/// Header-only mode: every message is accepted; the header's result is
/// compared. The results that reject mode turned into replies, and the
/// departures again.
fn header_cases() -> Vec<Case> {
    let same = |name, mail, expected| same(Mode::HeaderOnly, name, mail, expected);
    let differ = |name, mail, reference, spfmilter, why| {
        differ(Mode::HeaderOnly, name, mail, reference, spfmilter, why)
    };
    vec![
        same("pass", mail("alice@pass.test"), PASS),
        same(
            "fail",
            mail("mallory@fail.test"),
            "250 2.0.0 spf=fail mailfrom",
        ),
        same(
            "permerror",
            mail("someone@permerror.test"),
            "250 2.0.0 spf=permerror mailfrom",
        ),
        same(
            "temperror",
            mail("someone@temperror.test"),
            "250 2.0.0 spf=temperror mailfrom",
        ),
        same(
            "null-sender-helo-fail",
            Mail::null_sender().helo("mx.fail.test"),
            "250 2.0.0 spf=fail helo",
        ),
        // `HELO_reject = False`: the HELO Fail is not acted on, MAIL FROM
        // is checked and its Pass goes into the header (docs/policyd-spf-compatibility.md §3 matrix,
        // row fail / pass).
        same(
            "helo-fail-mailfrom-pass",
            Mail::from("alice@pass.test").helo("mx.fail.test"),
            PASS,
        ),
        same(
            "helo-pass-mailfrom-fail",
            Mail::from("mallory@fail.test").helo("mx.pass.test"),
            "250 2.0.0 spf=fail mailfrom",
        ),
        same(
            "Whitelist",
            mail("mallory@fail.test").client_ip(WHITELISTED_IP),
            "250 2.0.0 skip=whitelist",
        ),
        differ(
            "smtp-auth",
            smtp_auth("mallory@fail.test"),
            "250 2.0.0 spf=fail mailfrom",
            "250 2.0.0 no-header",
            AUTH_DEPARTURE,
        ),
        differ(
            "servfail-in-mechanism",
            mail("someone@servfail.test"),
            "250 2.0.0 spf=fail mailfrom",
            "250 2.0.0 spf=temperror mailfrom",
            SERVFAIL_MECHANISM,
        ),
        differ(
            "servfail-for-record",
            mail("someone@broken.test"),
            "250 2.0.0 spf=none mailfrom",
            "250 2.0.0 spf=temperror mailfrom",
            SERVFAIL_RECORD,
        ),
        differ(
            "helo-pass-mailfrom-none",
            Mail::from("someone@none.test").helo("mx.pass.test"),
            "250 2.0.0 spf=pass helo",
            "250 2.0.0 spf=none mailfrom",
            HELO_PASS_HEADER,
        ),
    ]
}

/// What one session gave.
#[derive(Debug, Clone)]
pub struct Observed {
    /// See the module docs.
    pub outcome: String,
    /// The text of Postfix's refusal (MAIL FROM, RCPT, DATA or end of
    /// data), normalized by [`refusal_text`]; `None` when accepted.
    pub refusal: Option<String>,
    /// The milter's Authentication-Results in the accepted message
    /// (unfolded), normalized by [`normalize_header`].
    pub header: Option<String>,
}

/// Runs every case through a lab of `milter` and returns what each gave,
/// in order, the `policyd-spf.conf` the milter read last (header-only
/// mode's; the lab directory in `PidFile` written as `LAB`), and the lab's
/// diagnostics (for a failure report).
pub fn run_cases(
    scratch: &Path,
    milter: &MilterUnderTest,
    sasl: &SaslLogin,
    cases: &[Case],
) -> (Vec<Observed>, String, String) {
    let mut mode = cases.first().map_or(Mode::Reject, |c| c.mode);
    let mut config = LabConfig::new(milter, conf(mode));
    config.opendmarc = None;
    config.postfix = config.postfix.with_sasl(sasl);
    // XCLIENT accepts an IPv6 client address only when Postfix has IPv6.
    config
        .postfix
        .main_cf
        .push(("inet_protocols".into(), "ipv4, ipv6".into()));
    let mut lab = Lab::start(scratch, config)
        .unwrap_or_else(|e| panic!("the {} lab did not start: {e}", milter.name));
    let outcomes = cases
        .iter()
        .map(|case| {
            if case.mode != mode {
                mode = case.mode;
                // SIGKILL: pyspf-milter takes ~4 s to stop on TERM, and
                // nothing is in flight between two sessions.
                lab.kill_milter()
                    .unwrap_or_else(|e| panic!("kill {}: {e}", milter.name));
                lab.restart_milter(conf(mode))
                    .unwrap_or_else(|e| panic!("restart {} in {mode:?} mode: {e}", milter.name));
            }
            let transcript = lab.send(&case.mail);
            let (outcome, header) = outcome(&lab, &case.mail, &transcript);
            Observed {
                outcome,
                refusal: refusal_text(&transcript),
                header: header.map(|h| normalize_header(&h)),
            }
        })
        .collect();
    let file = lab
        .milter
        .as_ref()
        .map(|m| read_lossy(&m.conf_path))
        .unwrap_or_default()
        // The pid file lies in the lab's own directory.
        .replace(&lab.dir().display().to_string(), "LAB");
    let diagnostics = lab.diagnostics();
    lab.shutdown()
        .unwrap_or_else(|e| panic!("unclean shutdown: {e}"));
    (outcomes, file, diagnostics)
}

/// The text of the first refusal from MAIL FROM on, with the detail of a
/// PermError/TempError explanation (`SPF Permanent Error: DETAIL. Please
/// see`) cut out: that text comes from each milter's SPF library (pyspf's
/// "Unknown mechanism found: bogus" against spfmilter's own wording) and is
/// not part of the policyd-spf reply format (docs/policyd-spf-compatibility.md §4).
pub fn refusal_text(transcript: &Transcript) -> Option<String> {
    let reply = ["MAIL FROM", "RCPT TO", "DATA"]
        .into_iter()
        .filter_map(|c| transcript.reply_to(c))
        .chain(transcript.data_end())
        .find(|r| r.code >= 400)?;
    let text = reply.text();
    for marker in ["SPF Permanent Error: ", "SPF Temporary Error: "] {
        if let (Some(start), Some(end)) = (text.find(marker), text.rfind(". Please see")) {
            let start = start + marker.len();
            if start <= end {
                return Some(format!("{}…{}", &text[..start], &text[end..]));
            }
        }
    }
    Some(text)
}

/// An Authentication-Results value with what may differ cut out:
/// `receiver=` (the reference decides at MAIL FROM, before any recipient,
/// and writes `<UNKNOWN>`; spfmilter writes the header at the end of the
/// message and names the first recipient's domain, as `Hide_Receiver = No`
/// says, docs/policyd-spf-compatibility.md §2), the detail of a PermError/TempError explanation (each
/// SPF library's own words), case, and runs of white space (the
/// reference's skip comments have two spaces in `- <2 spaces>client-ip=`:
/// its comment text ends in a space and its format adds one; docs/policyd-spf-compatibility.md §4 shows
/// one).
pub fn normalize_header(value: &str) -> String {
    let mut out = value
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    for marker in ["spf permanent error: ", "spf temporary error: "] {
        if let Some(start) = out.find(marker).map(|i| i + marker.len())
            && let Some(len) = out[start..].find(')')
        {
            out.replace_range(start..start + len, "…");
        }
    }
    if let Some(start) = out.find("receiver=").map(|i| i + "receiver=".len()) {
        let len = out[start..].find([')', ';']).unwrap_or(out.len() - start);
        out.replace_range(start..start + len, "…");
    }
    out
}

/// The outcome of one session, in the notation of the module docs, and
/// the milter's Authentication-Results of an accepted message.
pub fn outcome(lab: &Lab, mail: &Mail, transcript: &Transcript) -> (String, Option<String>) {
    let mut stages = vec![("XCLIENT", "XCLIENT"), ("EHLO", "EHLO")];
    if mail.auth.is_some() {
        stages.push(("AUTH", "AUTH"));
    }
    stages.extend([("MAIL", "MAIL FROM"), ("RCPT", "RCPT TO"), ("DATA", "DATA")]);
    for (stage, command) in stages {
        let Some(reply) = transcript.reply_to(command) else {
            return (format!("{stage} no reply"), None);
        };
        if reply.code >= 400 {
            let outcome = match reply.enhanced {
                Some(e) => format!("{stage} {} {e}", reply.code),
                None => format!("{stage} {}", reply.code),
            };
            return (outcome, None);
        }
    }
    let Some(end) = transcript.data_end() else {
        return ("END no reply".to_string(), None);
    };
    if end.code != 250 {
        return (
            format!("END {} {}", end.code, end.enhanced.unwrap_or_default()),
            None,
        );
    }
    let Some(queue_id) = transcript.queue_id() else {
        return ("END 250 without a queue ID".to_string(), None);
    };
    let message = match lab.postfix().message(&queue_id) {
        Ok(m) => m,
        Err(e) => return (format!("250 unreadable message: {e}"), None),
    };
    let accepted = format!("250 {}", end.enhanced.unwrap_or_default());
    let ours: Vec<String> = message
        .unfolded("Authentication-Results")
        .into_iter()
        .filter(|v| authentication_results_parts(v).first() == Some(&MYHOSTNAME))
        .collect();
    let header = ours.first().cloned();
    if let Some(spf) = lab.spf_header(&message) {
        return (
            format!("{accepted} spf={} {}", spf.result, spf.identity),
            header,
        );
    }
    // A skip: Authentication-Results: ID; none (COMMENT) (docs/policyd-spf-compatibility.md §4).
    let outcome = match ours.first() {
        None => format!("{accepted} no-header"),
        Some(v) if v.contains("SPF check N/A for local connections") => {
            format!("{accepted} skip=local")
        }
        Some(v) if v.contains("SPF skipped for whitelisted relay -") => {
            format!("{accepted} skip=whitelist")
        }
        Some(v) if v.contains("SPF skipped for whitelisted relay domain -") => {
            format!("{accepted} skip=domain-whitelist")
        }
        Some(v) if v.contains("SPF skipped for whitelisted HELO domain -") => {
            format!("{accepted} skip=helo-whitelist")
        }
        Some(v) if v.contains("SPF skipped for PTR whitelisted relay domain -") => {
            format!("{accepted} skip=ptr-whitelist")
        }
        Some(v) => format!("{accepted} other-header: {v}"),
    };
    (outcome, header)
}

/// The side-by-side table: case, then expected and observed per milter, a
/// mark for each mismatch, and the departure.
pub fn table(cases: &[Case], reference: &[Observed], spfmilter: &[Observed]) -> String {
    let mark = |expected: &str, observed: &str| if expected == observed { " " } else { "X" };
    let rows: Vec<[String; 9]> = cases
        .iter()
        .zip(reference.iter().zip(spfmilter))
        .map(|(c, (r, s))| {
            [
                c.mode.name().to_string(),
                c.name.to_string(),
                c.reference.to_string(),
                r.outcome.clone(),
                mark(c.reference, &r.outcome).to_string(),
                c.spfmilter.to_string(),
                s.outcome.clone(),
                mark(c.spfmilter, &s.outcome).to_string(),
                c.departure.unwrap_or("").to_string(),
            ]
        })
        .collect();
    let header = [
        "mode",
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
    let mut widths = [0usize; 9];
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
        cases
            .iter()
            .filter(|c| c.mode == Mode::Reject && c.departure.is_none())
            .count()
            >= 12,
        "at least 12 reject-mode cases must agree"
    );
    let sasl = SaslLogin::create(&scratch.join("sasl"), SASL_USER, SASL_REALM, SASL_PASSWORD)
        .unwrap_or_else(|e| panic!("SASL database: {e}"));
    let (reference, reference_file, reference_log) =
        run_cases(scratch, &MilterUnderTest::pyspf_milter(), &sasl, &cases);
    // spfmilter reads the reference's file as it is, process keys included
    // (its --socket overrides the file's Socket).
    let spfmilter = MilterUnderTest {
        reference_file: true,
        ..MilterUnderTest::spfmilter()
    };
    let (ours, our_file, our_log) = run_cases(scratch, &spfmilter, &sasl, &cases);
    assert_eq!(
        reference_file, our_file,
        "the two milters did not read the same policyd-spf.conf"
    );
    assert!(
        our_file.contains("HELO_reject = False"),
        "the last file read is not header-only mode's:\n{our_file}"
    );
    let table = table(&cases, &reference, &ours);
    eprintln!("e2e: differential, client {CLIENT_IP} unless stated:\n{table}");
    let failed = cases
        .iter()
        .zip(reference.iter().zip(&ours))
        .any(|(c, (r, s))| c.reference != r.outcome || c.spfmilter != s.outcome);
    // Where the decisions agree, so must the refusal texts (docs/policyd-spf-compatibility.md §4).
    let texts: Vec<String> = cases
        .iter()
        .zip(reference.iter().zip(&ours))
        .filter(|(c, (r, s))| c.departure.is_none() && r.outcome == s.outcome)
        // The reference names the HELO it checked: XCLIENT NAME.
        .filter(|(c, _)| {
            c.mail
                .client_name
                .as_ref()
                .is_none_or(|n| *n == c.mail.helo)
        })
        // Case aside: the reference lower-cases the sender's domain
        // (pyspf-milter's envfrom) in `id=` of the URL; spfmilter keeps it
        // as sent. The spec does not say; RFC 7208 §7.3's `s` macro is the
        // sender as given.
        .filter(|(_, (r, s))| {
            r.refusal.as_ref().map(|t| t.to_ascii_lowercase())
                != s.refusal.as_ref().map(|t| t.to_ascii_lowercase())
        })
        .map(|(c, (r, s))| {
            format!(
                "{} {}:\n  pyspf-milter: {:?}\n  spfmilter:    {:?}",
                c.mode.name(),
                c.name,
                r.refusal,
                s.refusal
            )
        })
        .collect();
    // Where the outcomes agree, so must the headers, up to what
    // normalize_header leaves out.
    let headers: Vec<String> = cases
        .iter()
        .zip(reference.iter().zip(&ours))
        .filter(|(c, (r, s))| c.departure.is_none() && r.outcome == s.outcome)
        .filter(|(c, _)| {
            c.mail
                .client_name
                .as_ref()
                .is_none_or(|n| *n == c.mail.helo)
        })
        .filter(|(_, (r, s))| r.header != s.header)
        .map(|(c, (r, s))| {
            format!(
                "{} {}:\n  pyspf-milter: {:?}\n  spfmilter:    {:?}",
                c.mode.name(),
                c.name,
                r.header,
                s.header
            )
        })
        .collect();
    if (failed || !texts.is_empty() || !headers.is_empty())
        && std::env::var_os("SPFMILTER_E2E_VERBOSE").is_none()
    {
        eprintln!("{reference_log}\n{our_log}");
    }
    assert!(!failed, "outcomes differ from the table (X):\n{table}");
    // The departure on `%`: the text arrives intact, `%` unescaped.
    let percent = cases
        .iter()
        .position(|c| c.name == "explanation-with-percent")
        .expect("the % case");
    assert!(
        ours[percent]
            .refusal
            .as_deref()
            .is_some_and(|t| t.starts_with("Message rejected due to: 100% forged: mallory.")),
        "spfmilter's reply with a % in the reason: {:?}",
        ours[percent].refusal
    );
    assert!(
        texts.is_empty(),
        "same decision, different reply text:\n{}",
        texts.join("\n")
    );
    assert!(
        headers.is_empty(),
        "same outcome, different Authentication-Results:\n{}",
        headers.join("\n")
    );
}
