//! The end-to-end checks, written once for any SPF milter: each takes the
//! namespace's scratch directory and a [`MilterUnderTest`], starts a lab,
//! sends mail and asserts what Postfix answered and what the stored
//! message carries. The `#[test]` functions in `tests/e2e.rs` run them
//! against pyspf-milter (the reference) and, once it exists, `spfmilter
//! run`.

use std::path::Path;
use std::time::{Duration, Instant};

use super::lab::{Lab, LabConfig};
use super::milter::{MilterUnderTest, PolicydConf, TraceHeader};
use super::postfix::MYHOSTNAME;
use super::smtp::{Mail, Message, Transcript};
use super::zones::{CLIENT_IP, EVIL_HELO, OPERATOR_INCLUDE, OPERATOR_IP};

/// Starts a lab or panics with the reason.
pub fn start(scratch: &Path, config: LabConfig) -> Lab {
    Lab::start(scratch, config).unwrap_or_else(|e| panic!("the lab did not start: {e}"))
}

/// Stops a lab and checks that nothing is left running.
pub fn finish(lab: Lab) {
    lab.shutdown()
        .unwrap_or_else(|e| panic!("unclean shutdown: {e}"));
}

/// Asserts the SPF milter's header: its result and identity, and that it
/// is above Postfix's own `Received:` (inserted at the top).
pub fn assert_spf(lab: &Lab, message: &Message, result: &str, identity: &str) {
    let Some(header) = lab.spf_header(message) else {
        panic!("no SPF header in:\n{}", message.header_text());
    };
    assert_eq!(header.result, result, "SPF result in {header:?}");
    assert_eq!(header.identity, identity, "SPF identity in {header:?}");
    if let Some(id) = &header.authserv_id {
        assert_eq!(id, MYHOSTNAME, "authserv-id in {header:?}");
    }
    let received = message.position("Received").expect("Postfix's Received:");
    assert!(
        header.position < received,
        "the SPF header is not above Received:\n{}",
        message.header_text()
    );
}

/// Asserts OpenDMARC's verdict.
pub fn assert_dmarc(lab: &Lab, message: &Message, result: &str) {
    assert_eq!(
        lab.dmarc_result(message).as_deref(),
        Some(result),
        "OpenDMARC's result in:\n{}",
        message.header_text()
    );
}

/// Asserts the reply to `command` (e.g. `"MAIL FROM"`): code and, if
/// given, the enhanced status code.
pub fn assert_reply(transcript: &Transcript, command: &str, code: u16, enhanced: Option<&str>) {
    let Some(reply) = transcript.reply_to(command) else {
        panic!("no reply to {command}:\n{transcript}");
    };
    assert_eq!(
        reply.code, code,
        "reply to {command}: {reply}\n{transcript}"
    );
    if let Some(enhanced) = enhanced {
        assert_eq!(
            reply.enhanced.as_deref(),
            Some(enhanced),
            "reply to {command}: {reply}"
        );
    }
}

/// (a) Header-only mode (`HELO_reject = Mail_From_reject = False`): an
/// aligned SPF pass from pass.test is delivered with the milter's `pass`
/// header and OpenDMARC's `dmarc=pass`; a fail.test sender is delivered
/// too, with `fail` and `dmarc=fail`.
pub fn header_mode(scratch: &Path, milter: &MilterUnderTest) {
    let mut lab = start(scratch, LabConfig::new(milter, PolicydConf::header_only()));

    let (transcript, message) = lab.deliver(&Mail::from("alice@pass.test"));
    assert_reply(&transcript, "MAIL FROM", 250, Some("2.1.0"));
    assert_spf(&lab, &message, "pass", "mailfrom");
    assert_dmarc(&lab, &message, "pass");

    let (transcript, message) = lab.deliver(&Mail::from("mallory@fail.test"));
    assert_reply(&transcript, "MAIL FROM", 250, Some("2.1.0"));
    assert_spf(&lab, &message, "fail", "mailfrom");
    assert_dmarc(&lab, &message, "fail");

    // Postfix's log lines of the message, by queue ID.
    let queue_id = transcript.queue_id().expect("queued");
    let client = lab
        .postfix()
        .wait_log(&format!("{queue_id}: client="), Duration::from_secs(5))
        .expect("maillog line of the message");
    assert!(
        client.ends_with("client=mx.pass.test[192.0.2.10]"),
        "{client}"
    );
    // The milter logs the classic policyd-spf result line (debugLevel 2).
    lab.wait_milter_log(
        "Fail; identity=mailfrom; client-ip=192.0.2.10; helo=mx.pass.test; \
         envelope-from=mallory@fail.test",
        Duration::from_secs(5),
    )
    .expect("the milter's log line");
    finish(lab);
}

/// Header-only mode, one message per sender domain of the standard zones,
/// HELO `mx.none.test` (no SPF record, so the MAIL FROM result decides):
/// `expected` lists `(domain, SPF result, DMARC result)`.
pub fn header_results(scratch: &Path, milter: &MilterUnderTest, expected: &[(&str, &str, &str)]) {
    let mut lab = start(scratch, LabConfig::new(milter, PolicydConf::header_only()));
    for &(domain, spf, dmarc) in expected {
        let mail = Mail::from(&format!("someone@{domain}")).helo("mx.none.test");
        let (_, message) = lab.deliver(&mail);
        assert_spf(&lab, &message, spf, "mailfrom");
        assert_dmarc(&lab, &message, dmarc);
    }
    finish(lab);
}

/// (b) Reject mode (`Mail_From_reject = Fail`, `HELO_reject = Fail`): a
/// fail.test sender gets `550 5.7.23` at MAIL FROM, logged by Postfix as a
/// milter-reject; a HELO that fails SPF gets `550 5.7.23` too; softfail is
/// not rejected; a pass is delivered.
pub fn reject_mode(scratch: &Path, milter: &MilterUnderTest) {
    let mut lab = start(scratch, LabConfig::new(milter, PolicydConf::reject_fail()));

    let transcript = lab.send(&Mail::from("mallory@fail.test"));
    assert_reply(&transcript, "MAIL FROM", 550, Some("5.7.23"));
    let reply = transcript.reply_to("MAIL FROM").expect("reply");
    assert!(
        reply
            .text()
            .starts_with("Message rejected due to: SPF fail - not authorized"),
        "reject text: {reply}"
    );
    assert!(transcript.queue_id().is_none(), "rejected mail was queued");
    lab.postfix()
        .wait_log(
            "milter-reject: MAIL from mx.pass.test[192.0.2.10]: 550 5.7.23",
            Duration::from_secs(5),
        )
        .expect("Postfix logs the milter's reject");

    // HELO fail (the sender would pass).
    let transcript = lab.send(&Mail::from("alice@pass.test").helo("mx.fail.test"));
    assert_reply(&transcript, "MAIL FROM", 550, Some("5.7.23"));

    // Softfail is not in the reject set of Fail.
    let (_, message) = lab.deliver(&Mail::from("someone@softfail.test"));
    assert_spf(&lab, &message, "softfail", "mailfrom");

    let (_, message) = lab.deliver(&Mail::from("alice@pass.test"));
    assert_spf(&lab, &message, "pass", "mailfrom");
    assert_dmarc(&lab, &message, "pass");
    finish(lab);
}

/// (c) The SPF milter dies. With `milter_default_action = tempfail`
/// Postfix answers `451 4.7.1` at MAIL FROM (it accepts the connection and
/// EHLO, and defers the milter's failure to MAIL FROM); after switching to
/// `accept` (postconf + reload) the mail is delivered without an SPF
/// header, and OpenDMARC, which then has no SPF result, says `fail`.
pub fn milter_down(scratch: &Path, milter: &MilterUnderTest) {
    let mut lab = start(
        scratch,
        LabConfig::new(milter, PolicydConf::header_only()).milter_default_action("tempfail"),
    );
    let (_, message) = lab.deliver(&Mail::from("alice@pass.test"));
    assert_spf(&lab, &message, "pass", "mailfrom");

    lab.kill_milter().expect("kill the milter");
    let transcript = lab.send(&Mail::from("alice@pass.test"));
    let banner = transcript.banner().expect("greeting");
    assert_eq!(banner.code, 220, "greeting: {banner}");
    assert_reply(&transcript, "EHLO", 250, None);
    assert_reply(&transcript, "MAIL FROM", 451, Some("4.7.1"));
    assert!(
        transcript.queue_id().is_none(),
        "mail accepted without its milter"
    );
    lab.postfix()
        .wait_log(
            "connect to Milter service inet:127.0.0.1:8891: Connection refused",
            Duration::from_secs(5),
        )
        .expect("Postfix logs the milter failure");

    lab.postfix()
        .reconfigure(&[("milter_default_action", "accept")])
        .expect("switch to accept");
    let (transcript, message) = lab.deliver(&Mail::from("alice@pass.test"));
    assert_reply(&transcript, "MAIL FROM", 250, Some("2.1.0"));
    assert!(
        lab.spf_header(&message).is_none(),
        "an SPF header without the milter:\n{}",
        message.header_text()
    );
    assert_dmarc(&lab, &message, "fail");
    finish(lab);
}

/// What the reference milter (Debian's pyspf-milter 3.0.4) does that this
/// project must not copy, or must know about. Not for `spfmilter`.
pub fn reference_quirks(scratch: &Path) {
    let milter = MilterUnderTest::pyspf_milter();
    let conf = PolicydConf::reject_fail().set("Header_Type", "SPF");
    let mut lab = start(scratch, LabConfig::new(&milter, conf.clone()));

    // 1. It checks the client's host name (from Postfix's connect, here
    //    XCLIENT NAME) as the HELO, never the HELO/EHLO argument: a HELO
    //    that fails SPF goes through when the client name passes.
    let mail = Mail::from("alice@pass.test")
        .helo("mx.fail.test")
        .client_name("mx.pass.test");
    let (_, message) = lab.deliver(&mail);
    let header = lab.spf_header(&message).expect("header");
    assert_eq!(header.result, "pass");
    assert!(header.value.contains("helo=mx.pass.test"), "{header:?}");

    // 2. Only Authentication-Results, never Received-SPF, whatever
    //    Header_Type says (SPF here).
    assert!(message.first("Received-SPF").is_none());

    // 3. HELO pass and MAIL FROM none: the HELO pass goes into the header
    //    (`smtp.helo`), the pattern of CVE-2019-20790.
    let (_, message) = lab.deliver(&Mail::from("someone@none.test"));
    let header = lab.spf_header(&message).expect("header");
    assert_eq!(
        (header.result.as_str(), header.identity.as_str()),
        ("pass", "helo")
    );
    // OpenDMARC does not take an smtp.helo result for SPF alignment.
    assert_dmarc(&lab, &message, "fail");

    // 4. Without Authserv_Id it signs its header with the machine's host
    //    name, not Postfix's myhostname (the `j` macro), so OpenDMARC,
    //    trusting only mx.test.example, ignores it: dmarc=fail for an
    //    aligned pass.
    lab.restart_milter(conf.unset("Authserv_Id"))
        .expect("restart pyspf-milter");
    let (_, message) = lab.deliver(&Mail::from("alice@pass.test"));
    let header =
        super::milter::spf_header(&message, TraceHeader::AuthenticationResults).expect("header");
    assert_eq!(header.result, "pass");
    assert_ne!(header.authserv_id.as_deref(), Some(MYHOSTNAME));
    assert_dmarc(&lab, &message, "fail");
    finish(lab);
}

/// The forged-header bypass (docs/dmarc-safety.md) is closed: a sender
/// whose SPF does not pass brings a forged `Received-SPF: pass …
/// identity=mailfrom` and a forged `Authentication-Results` under our
/// authserv-id. With `Header_Type = AR` (the configuration in which
/// OpenDMARC falls back to the first Received-SPF), the forged headers are
/// gone from the delivered message and OpenDMARC does not say dmarc=pass.
/// Each forged header comes twice: Postfix renumbers the headers of a name
/// after each deletion, so a milter deleting #1 then #2 leaves one behind.
pub fn forged_headers(scratch: &Path, milter: &MilterUnderTest) {
    let conf = PolicydConf::header_only().set("Header_Type", "AR");
    let mut lab = start(scratch, LabConfig::new(milter, conf));
    for domain in ["none.test", "softfail.test", "fail.test"] {
        let sender = format!("mallory@{domain}");
        let forged_spf = format!(
            "pass (forged) identity=mailfrom; client-ip=192.0.2.10; \
             helo=mx.pass.test; envelope-from=\"{sender}\"; receiver=x"
        );
        let forged_ar = format!("{MYHOSTNAME}; spf=pass smtp.mailfrom={domain}");
        let mail = Mail::from(&sender)
            .header("Received-SPF", &forged_spf)
            .header("Authentication-Results", &forged_ar)
            .header("Received-SPF", &forged_spf)
            .header("Authentication-Results", &forged_ar);
        let (transcript, message) = lab.deliver(&mail);
        assert_reply(&transcript, "MAIL FROM", 250, Some("2.1.0"));
        let text = message.header_text();
        assert!(
            !text.contains("(forged)"),
            "the forged Received-SPF survived:\n{text}"
        );
        let spf = message.auth_results(MYHOSTNAME, "spf");
        assert!(
            spf.iter().all(|r| !r.contains("spf=pass")),
            "a forged spf=pass under our authserv-id survived: {spf:?}\n{text}"
        );
        let dmarc = lab.dmarc_result(&message);
        assert_ne!(
            dmarc.as_deref(),
            Some("pass"),
            "DMARC bypass for {domain}:\n{text}"
        );
    }
    finish(lab);
}

/// The forms of forged Authentication-Results that OpenDMARC 1.4.2 reads
/// as our authserv-id although their first token differs (security report,
/// item 1), each in a message from a fail.test sender (`-all`, DMARC
/// `p=reject`) in header-only mode with the default `Header_Type` (SPF):
/// with the forged `spf=pass` surviving, OpenDMARC says dmarc=pass. Each
/// must be gone from the delivered message and OpenDMARC must say
/// dmarc=fail.
pub fn forged_lenient_authserv_ids(scratch: &Path, milter: &MilterUnderTest) {
    let mut lab = start(scratch, LabConfig::new(milter, PolicydConf::header_only()));
    let forms = [
        "mx . test . example",
        "mx. test. example",
        "mx.test\n\t.example",
        "mx\\.test\\.example",
        "\\mx.test.example",
        "m\"x.test.exampl\"e",
        "\"mx.test\".example",
        "mx.test.\"example\"",
        "\"(x\" mx.test.example",
        "mx.(c)test.example",
        "MX . Test.(c)\"example\" 1",
    ];
    for form in forms {
        let forged = format!("{form}; spf=pass smtp.mailfrom=fail.test");
        let mail = Mail::from("mallory@fail.test").header("Authentication-Results", &forged);
        let (_, message) = lab.deliver(&mail);
        let text = message.header_text();
        assert!(
            !text.contains("spf=pass smtp.mailfrom=fail.test"),
            "the forged header {form:?} survived:\n{text}"
        );
        assert_spf(&lab, &message, "fail", "mailfrom");
        assert_dmarc(&lab, &message, "fail");
    }
    finish(lab);
}

/// Session values that carry `;identity=mailfrom;` (security report, item
/// 3): with `Mail_From_reject = No_Check` the Received-SPF reports the
/// HELO result. A HELO argument that is no host name, answered `+all`,
/// and a HELO host whose matching mechanism's text carries the same, must
/// not make OpenDMARC record an SPF pass for the fail.test sender: dmarc
/// must say fail.
pub fn identity_injection(scratch: &Path, milter: &MilterUnderTest) {
    let conf = PolicydConf::header_only().set("Mail_From_reject", "No_Check");
    let mut lab = start(scratch, LabConfig::new(milter, conf));
    for (helo, result) in [(EVIL_HELO, None), ("mx.evilhelo.test", Some("pass"))] {
        let mail = Mail::from("victim@fail.test")
            .helo(helo)
            .client_name("mx.pass.test");
        let (_, message) = lab.deliver(&mail);
        let header = lab
            .spf_header(&message)
            .unwrap_or_else(|| panic!("no SPF header in:\n{}", message.header_text()));
        eprintln!("e2e: HELO {helo:?}: {}", header.value);
        assert_eq!(header.identity, "helo", "{header:?}");
        if let Some(result) = result {
            assert_eq!(header.result, result, "{header:?}");
        }
        assert_eq!(header.value.matches("identity=").count(), 1, "{header:?}");
        assert_dmarc(&lab, &message, "fail");
    }
    finish(lab);
}

/// `[milter] max_connections` with a real Postfix: over the limit,
/// spfmilter closes the connection at once, so Postfix applies
/// `milter_default_action` (`tempfail`: 451 4.7.1) at once instead of
/// waiting for `milter_command_timeout` (30 s); once a connection ends,
/// the next SMTP session is checked again. spfmilter only (a native
/// setting).
pub fn connection_limit(scratch: &Path) {
    let milter = MilterUnderTest::spfmilter()
        .with_native_config("[milter]\nmax_connections = 1\n\n[log]\nlevel = 2\n");
    let mut lab = start(scratch, LabConfig::new(&milter, PolicydConf::base()));
    let port = lab.postfix().port;

    // One SMTP session holds the only milter connection.
    let held = super::soak::Smtp::open(port, CLIENT_IP, "mx.pass.test")
        .unwrap_or_else(|(stage, e)| panic!("held session, {stage}: {e:?}"));
    // (Postfix connects its milters when a session starts, again after
    // XCLIENT; the EHLO after it was answered, so spfmilter has seen it.)
    let started = Instant::now();
    let transcript = lab.send(&Mail::from("alice@pass.test"));
    let took = started.elapsed();
    assert_reply(&transcript, "MAIL FROM", 451, Some("4.7.1"));
    assert!(
        took < Duration::from_secs(10),
        "Postfix waited {took:?} for the refused milter connection"
    );
    let refusal = lab
        .wait_milter_log(
            "refused a connection from 127.0.0.1:",
            Duration::from_secs(5),
        )
        .expect("spfmilter logs the refusal");
    assert!(
        refusal.contains("1 connections open, milter.max_connections = 1"),
        "{refusal}"
    );
    let postfix_line = lab
        .postfix()
        .wait_log("milter inet:127.0.0.1:8891", Duration::from_secs(5))
        .expect("Postfix logs the milter failure");
    eprintln!("e2e: Postfix's line for the refused milter connection: {postfix_line}");

    // The held session ends: the next session is checked again.
    held.quit();
    let mut delivered = None;
    super::process::wait_until(Duration::from_secs(10), "a checked session", || {
        let transcript = lab.send(&Mail::from("alice@pass.test"));
        if let Some(queue_id) = transcript.queue_id() {
            delivered = lab.postfix().message(&queue_id).ok();
            true
        } else {
            false
        }
    })
    .expect("served again below the limit");
    let message = delivered.expect("the delivered message");
    assert_spf(&lab, &message, "pass", "mailfrom");
    finish(lab);
}

/// `[block] includes` through Postfix: a new domain of a spam operation
/// (kazeno.test, whose record includes the operator's
/// spf-stx.burn-oxygen.test), sending from the operator's network, passes
/// SPF but is refused with 550 5.7.1 at MAIL FROM and never queued; a
/// legitimate sender in the same lab is delivered with its SPF pass.
/// spfmilter only (a native setting).
pub fn block_operator(scratch: &Path) {
    let milter = MilterUnderTest::spfmilter().with_native_config(&format!(
        "[block]\nincludes = [\"{OPERATOR_INCLUDE}\"]\nauthorized_by = [\"{OPERATOR_INCLUDE}\"]\n\n[log]\nlevel = 2\n"
    ));
    let mut lab = start(scratch, LabConfig::new(&milter, PolicydConf::base()));

    let spam = Mail::from("news@kazeno.test")
        .helo("mail.kazeno.test")
        .client_ip(OPERATOR_IP);
    let transcript = lab.send(&spam);
    assert_reply(&transcript, "MAIL FROM", 550, Some("5.7.1"));
    let reply = transcript.reply_to("MAIL FROM").expect("reply");
    assert!(
        reply
            .text()
            .contains(&format!("blocked operator ({OPERATOR_INCLUDE})")),
        "reject text: {reply}"
    );
    assert!(transcript.queue_id().is_none(), "blocked mail was queued");
    lab.postfix()
        .wait_log(
            "milter-reject: MAIL from mail.kazeno.test[198.51.100.40]: 550 5.7.1",
            Duration::from_secs(5),
        )
        .expect("Postfix logs the milter's reject");
    // The SPF result itself was a pass; the block line names rule and name.
    lab.wait_milter_log(
        "Pass; identity=mailfrom; client-ip=198.51.100.40; helo=mail.kazeno.test; \
         envelope-from=news@kazeno.test",
        Duration::from_secs(5),
    )
    .expect("the milter's result line");
    lab.wait_milter_log(
        &format!("blocked (includes {OPERATOR_INCLUDE}): mailfrom evaluation of kazeno.test"),
        Duration::from_secs(5),
    )
    .expect("the milter's block line");

    let (transcript, message) = lab.deliver(&Mail::from("alice@pass.test"));
    assert_reply(&transcript, "MAIL FROM", 250, Some("2.1.0"));
    assert_spf(&lab, &message, "pass", "mailfrom");
    finish(lab);
}

/// The rescue (`[rescue] methods`) with the real Postfix: Postfix accepts
/// what spfmilter then asks for (the body, SMFIP_SKIP, SMFIP_HDR_LEADSPC);
/// an unsigned forged Fail is held past MAIL FROM and refused with
/// `550 5.7.23` at the end of DATA, never queued; a pass is delivered with
/// its header (its body skipped). The verification itself, with OpenDKIM
/// and OpenDMARC beside, is not this scenario's.
pub fn rescue_holds_the_reject_to_the_end_of_data(scratch: &Path) {
    let milter = MilterUnderTest::spfmilter()
        .with_native_config("[rescue]\nmethods = [\"dkim\"]\n\n[log]\nlevel = 2\n");
    let mut lab = start(scratch, LabConfig::new(&milter, PolicydConf::base()));

    let transcript = lab.send(&Mail::from("mallory@fail.test"));
    assert_reply(&transcript, "MAIL FROM", 250, None);
    let Some(end) = transcript.data_end() else {
        panic!("no reply to the end of DATA:\n{transcript}");
    };
    assert_eq!(end.code, 550, "{end}\n{transcript}");
    assert_eq!(end.enhanced.as_deref(), Some("5.7.23"), "{end}");
    assert!(
        end.text()
            .starts_with("Message rejected due to: SPF fail - not authorized"),
        "reject text: {end}"
    );
    assert!(transcript.queue_id().is_none(), "rejected mail was queued");
    lab.wait_milter_log(
        "held to end of message for the rescue: 550 5.7.23",
        Duration::from_secs(5),
    )
    .expect("spfmilter logs the hold");
    let line = lab
        .wait_milter_log("not rescued (", Duration::from_secs(5))
        .expect("spfmilter logs the decision");
    assert!(
        !line.contains("NOQUEUE: not rescued"),
        "no queue ID: {line}"
    );
    lab.postfix()
        .wait_log("milter-reject: END-OF-MESSAGE from", Duration::from_secs(5))
        .expect("Postfix logs the milter's reject at end of message");

    let (_, message) = lab.deliver(&Mail::from("alice@pass.test"));
    assert_spf(&lab, &message, "pass", "mailfrom");
    finish(lab);
}
