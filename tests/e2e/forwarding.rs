//! Forwarded mail: a message signed with DKIM by its author's domain,
//! relayed unchanged by a forwarder whose address the author's SPF record
//! does not list. SPF fails; OpenDKIM (after the SPF milter) verifies the
//! signature; OpenDMARC (last) passes the message through DKIM alignment. The SPF milter must still say `fail` (DMARC reads it), and
//! OpenDMARC must still pass the message.
//!
//! signed.test is the author's domain, built at run time: its SPF record
//! lists only 203.0.113.0/24 (not [`CLIENT_IP`], the forwarder), its DMARC
//! policy is `p=reject`, and `sel._domainkey.signed.test` holds a key made
//! by the test.

use std::path::Path;
use std::time::Duration;

use super::dns::{Record, Zone};
use super::lab::{Lab, LabConfig};
use super::milter::{MilterUnderTest, PolicydConf};
use super::opendkim::{DkimKey, OpenDkimConfig};
use super::postfix::{MYHOSTNAME, RCPT_DOMAIN};
use super::scenarios::{assert_dmarc, assert_reply, assert_spf, finish, start};
use super::smtp::{Mail, Message};
use super::zones::{DMARC_RECORD, delegate, standard_zones};

/// The author's domain.
pub const SIGNED_DOMAIN: &str = "signed.test";
/// The DKIM selector of its key.
pub const SELECTOR: &str = "sel";

/// The standard zones plus signed.test with `key` published.
pub fn zones_with_signer(key: &DkimKey) -> Vec<Zone> {
    let mut zones = standard_zones();
    delegate(&mut zones, signer_zone(&key.record));
    zones
}

/// signed.test: SPF for 203.0.113.0/24 only, DMARC `p=reject`, and the
/// key record `key_record` (`v=DKIM1; k=...; p=...`) at
/// `sel._domainkey.signed.test`.
pub fn signer_zone(key_record: &str) -> Zone {
    Zone::new(SIGNED_DOMAIN)
        .with(Record::txt("@", "v=spf1 ip4:203.0.113.0/24 -all"))
        .with(Record::txt("_dmarc", DMARC_RECORD))
        .with(Record::txt(&format!("{SELECTOR}._domainkey"), key_record))
}

/// A message from alice@signed.test, CRLF line ends, with `body`.
pub fn author_message(subject: &str, body: &str) -> String {
    format!(
        "From: Alice <alice@{SIGNED_DOMAIN}>\r\n\
         To: user@{RCPT_DOMAIN}\r\n\
         Subject: {subject}\r\n\
         Date: Wed, 02 Dec 2026 06:00:00 +0000\r\n\
         Message-ID: <{subject}@{SIGNED_DOMAIN}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         {body}\r\n"
    )
}

/// The DKIM result OpenDKIM wrote (`pass`, `fail`, `none`...).
pub fn dkim_result(message: &Message) -> Option<String> {
    message.auth_result(MYHOSTNAME, "dkim")
}

/// Asserts what a forwarded message from signed.test carries: spfmilter's
/// SPF `fail` for the MAIL FROM identity (the forwarder is not listed),
/// OpenDKIM's `dkim` result and OpenDMARC's `dmarc` verdict.
pub fn assert_forward(lab: &Lab, stored: &Message, dkim: &str, dmarc: &str) {
    assert_spf(lab, stored, "fail", "mailfrom");
    assert_eq!(
        dkim_result(stored).as_deref(),
        Some(dkim),
        "OpenDKIM's result in:\n{}",
        stored.header_text()
    );
    assert_dmarc(lab, stored, dmarc);
}

/// Makes the key and starts a lab with OpenDKIM between the SPF milter and
/// OpenDMARC.
pub fn start_lab(scratch: &Path, milter: &MilterUnderTest, conf: PolicydConf) -> (Lab, DkimKey) {
    let key = DkimKey::generate(&scratch.join("keys"), "signed")
        .unwrap_or_else(|e| panic!("DKIM key: {e}"));
    let mut config = LabConfig::new(milter, conf);
    config.zones = zones_with_signer(&key);
    config.opendkim = Some(OpenDkimConfig::default());
    (start(scratch, config), key)
}

/// Header-only mode: the signed forward is delivered with SPF `fail`,
/// OpenDKIM's `dkim=pass` and OpenDMARC's `dmarc=pass`; the same message
/// changed after signing gets `dkim=fail` and `dmarc=fail`.
pub fn forwarded_header_mode(scratch: &Path, milter: &MilterUnderTest) {
    let (mut lab, key) = start_lab(scratch, milter, PolicydConf::header_only());
    let message = author_message("forwarded", "Hello from the author.");
    let signed = key
        .sign(SELECTOR, SIGNED_DOMAIN, &message)
        .unwrap_or_else(|e| panic!("sign: {e}"));

    let mail = Mail::from(&format!("alice@{SIGNED_DOMAIN}")).data(&signed);
    let (transcript, stored) = lab.deliver(&mail);
    assert_reply(&transcript, "MAIL FROM", 250, Some("2.1.0"));
    assert_forward(&lab, &stored, "pass", "pass");

    // Changed on the way: the body no longer matches the signature.
    let tampered = signed.replace("Hello from the author.", "Send the money.");
    assert_ne!(tampered, signed);
    let (_, stored) = lab.deliver(&Mail::from(&format!("alice@{SIGNED_DOMAIN}")).data(&tampered));
    assert_forward(&lab, &stored, "fail", "fail");
    finish(lab);
}

/// spfmilter's native configuration of the reject-mode tests: SPF fail
/// rejects (both identities), and the rescue by DKIM is on.
pub const RESCUE_CONFIG: &str = "[policy]\n\
     helo_reject = \"Fail\"\n\
     mail_from_reject = \"Fail\"\n\
     [rescue]\n\
     methods = [\"dkim\"]\n";

/// Reject mode with the rescue (`[rescue] methods = ["dkim"]`): the SPF
/// fail of a forwarded message is held to the end of the message.
///
/// - The signed forward is accepted at end of DATA and delivered with the
///   true SPF result (`Received-SPF: Fail`), OpenDKIM's `dkim=pass` and
///   OpenDMARC's `dmarc=pass`; spfmilter logs what rescued it, with the
///   queue ID.
/// - The same message unsigned, or changed after signing, is refused with
///   `550 5.7.23` at end of DATA (the reply MAIL FROM would have had) and
///   never queued.
/// - A sender that fails SPF with no signature at all from a domain of the
///   standard zones is refused the same way: holding changes when, not
///   whether.
pub fn forwarded_reject_mode(scratch: &Path, milter: &MilterUnderTest) {
    let milter = milter.clone().with_native_config(RESCUE_CONFIG);
    let (mut lab, key) = start_lab(scratch, &milter, PolicydConf::reject_fail());
    let message = author_message("rescued", "Hello from the author.");
    let signed = key
        .sign(SELECTOR, SIGNED_DOMAIN, &message)
        .unwrap_or_else(|e| panic!("sign: {e}"));
    let sender = format!("alice@{SIGNED_DOMAIN}");

    let (transcript, stored) = lab.deliver(&Mail::from(&sender).data(&signed));
    assert_reply(&transcript, "MAIL FROM", 250, Some("2.1.0"));
    assert_forward(&lab, &stored, "pass", "pass");
    let queue_id = transcript.queue_id().expect("queued");
    lab.wait_milter_log(
        &format!("{queue_id}: rescued by dkim d={SIGNED_DOMAIN} aligned with From"),
        Duration::from_secs(10),
    )
    .expect("spfmilter logs the rescue");

    // `simple` canonicalization signs the header lines byte for byte: a
    // folded header with runs of spaces, a tab, and a body with trailing
    // white space must come out of Postfix and spfmilter's reassembly
    // exactly as signed.
    let awkward = author_message("awkward", "Body line with trailing spaces   \r\n\tand a tab line\r\n")
        .replace(
            "Subject: awkward\r\n",
            "Subject: awkward  subject,\r\n   folded  with   spaces\r\n\tand a tab\r\nX-Spaced:   three leading spaces\r\nX-Empty:\r\n",
        );
    for (header, body) in [
        ("simple", "simple"),
        ("relaxed", "relaxed"),
        ("simple", "relaxed"),
    ] {
        let signed = key
            .sign_canonicalized(SELECTOR, SIGNED_DOMAIN, &awkward, header, body)
            .unwrap_or_else(|e| panic!("sign: {e}"));
        let (transcript, stored) = lab.deliver(&Mail::from(&sender).data(&signed));
        assert_forward(&lab, &stored, "pass", "pass");
        let queue_id = transcript.queue_id().expect("queued");
        lab.wait_milter_log(
            &format!("{queue_id}: rescued by dkim d={SIGNED_DOMAIN}"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("c={header}/{body}: {e}"));
    }

    let tampered = signed.replace("Hello from the author.", "Send the money.");
    for (what, data) in [
        ("unsigned", message.as_str()),
        ("changed", tampered.as_str()),
    ] {
        let transcript = lab.send(&Mail::from(&sender).data(data));
        assert_reply(&transcript, "MAIL FROM", 250, Some("2.1.0"));
        let Some(end) = transcript.data_end() else {
            panic!("{what}: no reply to the end of DATA:\n{transcript}");
        };
        assert_eq!(end.code, 550, "{what}: end of DATA: {end}\n{transcript}");
        assert_eq!(end.enhanced.as_deref(), Some("5.7.23"), "{what}: {end}");
        assert!(
            end.text()
                .starts_with("Message rejected due to: SPF fail - not authorized"),
            "{what}: reject text: {end}"
        );
        assert!(
            transcript.queue_id().is_none(),
            "{what}: queued:\n{transcript}"
        );
    }
    lab.postfix()
        .wait_log(
            "milter-reject: END-OF-MESSAGE from mx.pass.test[192.0.2.10]: 5.7.23",
            Duration::from_secs(10),
        )
        .expect("Postfix logs the milter's reject at end of message");

    let transcript = lab.send(&Mail::from("mallory@fail.test"));
    assert_reply(&transcript, "MAIL FROM", 250, Some("2.1.0"));
    let end = transcript.data_end().expect("a reply to the end of DATA");
    assert_eq!(end.code, 550, "end of DATA: {end}\n{transcript}");
    assert!(transcript.queue_id().is_none(), "queued:\n{transcript}");
    finish(lab);
}
