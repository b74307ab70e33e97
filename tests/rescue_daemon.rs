//! The rescue of held SPF rejects (`[rescue]`) in the real daemon (the
//! built binary), driven over the milter protocol as Postfix drives it,
//! with DNS from an authoritative server on loopback.
//!
//! The verification itself (`spfmilter::rescue::verify`) is tested where
//! it is written; here most messages carry no signature, so none is
//! rescued: what is tested is what the daemon asks the MTA for, what it
//! answers at each step and when a held reject is decided. The last tests
//! send messages signed at test time (tests/common/dkim.rs) with the key
//! in the daemon's DNS: rescued, deferred on a key SERVFAIL, and
//! interrupted by SIGTERM. Expected
//! values: the milter protocol's flags (libmilter's `mfdef.h`, as
//! `milter-codec` names them), policyd-spf's reply for Fail
//! (docs/policyd-spf-compatibility.md §4) and RFC 7372's 5.7.23.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dkim::{TestKey, message};
use common::dns_server::TestDnsServer;
use common::milter::{
    Client, ConfigFile, Daemon, MacroStage, ProtoOpts, Status, Transport, cstring, go_on,
};
use indymilter_test::{EomAction, EomActions};
use milter_codec::{P_HDR_LEADSPC, P_NOBODY, P_NODATA, P_NOEOH, optneg, read_packet};
use spfmilter::dns::Zone;
use spfmilter::dns::zone::Entry;

/// SMFIP_NOUNKNOWN and SMFIP_SKIP (libmilter's `mfdef.h`).
const P_NOUNKNOWN: u32 = 0x100;
const P_SKIP: u32 = 0x400;
/// No reply awaited at connect, HELO, RCPT TO and each header
/// (SMFIP_NR_CONN, NR_HELO, NR_RCPT, NR_HDR, libmilter's `mfdef.h`): their
/// answer is always "go on" (src/milter/negotiate.rs).
const NO_REPLIES: u32 = 0x1000 | 0x2000 | 0x8000 | 0x80;

const CLIENT: &str = "192.0.2.1";
const QUEUE_ID: &str = "4QX7abcDEF";
/// policyd-spf's reply for Fail with no Reason_URL
/// (docs/policyd-spf-compatibility.md §4), RFC 7372 §3.2's 5.7.23.
const FAIL_REPLY: &str = "550 5.7.23 Message rejected due to: SPF fail - not authorized.";

fn zone() -> Zone {
    Zone::new()
        .with_txt("pass.test", "v=spf1 ip4:192.0.2.1 -all")
        .with_txt("fail.test", "v=spf1 -all")
}

fn dns() -> TestDnsServer {
    TestDnsServer::start(Arc::new(zone()))
}

fn ip() -> IpAddr {
    CLIENT.parse().unwrap()
}

const RESCUE: &str = "[rescue]\nmethods = [\"dkim\"]\n";

fn start(config: &str, dns: &TestDnsServer) -> Daemon {
    Daemon::start(
        Transport::Unix,
        &ConfigFile::Toml(config.to_owned()),
        dns.addr(),
    )
}

/// The protocol options the daemon asks for when Postfix offers every one
/// (SMFIC_OPTNEG as Postfix 3.7 sends it).
fn negotiated_options(d: &Daemon) -> u32 {
    let mut stream = d.connect_raw();
    std::io::Write::write_all(&mut stream, &optneg()).unwrap();
    let (command, body) = read_packet(&mut stream).unwrap();
    assert_eq!(command, b'O');
    u32::from_be_bytes(body[8..12].try_into().unwrap())
}

/// Without the rescue the daemon has no use for the body, DATA, end of
/// header or unknown commands, and takes SMFIP_SKIP as offered: the
/// negotiation of the daemon before the rescue existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_rescue_the_body_is_not_asked_for() {
    let dns = dns();
    let d = start("", &dns);
    assert_eq!(
        negotiated_options(&d),
        P_NODATA | P_NOEOH | P_NOUNKNOWN | P_NOBODY | P_SKIP | NO_REPLIES
    );
}

/// With it: the body, SKIP (to stop the body of messages not held) and
/// HDR_LEADSPC (header values exactly as received).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_rescue_the_body_skip_and_leading_space_are_asked_for() {
    let dns = dns();
    let d = start(RESCUE, &dns);
    assert_eq!(
        negotiated_options(&d),
        P_NODATA | P_NOEOH | P_NOUNKNOWN | P_SKIP | P_HDR_LEADSPC | NO_REPLIES
    );
}

/// What end of message answered.
fn reply_text(status: &Status) -> Option<String> {
    match status {
        Status::Reject { message } | Status::Tempfail { message } => {
            message.as_ref().map(|m| m.to_string_lossy().into_owned())
        }
        _ => None,
    }
}

/// HELO, MAIL FROM (which must continue), one recipient, an unsigned
/// message of `body`, end of message with the queue ID: what the body and
/// end of message answered.
async fn held_message(c: &mut Client, sender: &str, body: &[u8]) -> (Status, Status) {
    assert_eq!(c.helo("mx.forwarder.example").await, Status::Continue);
    assert_eq!(
        c.mail(sender, &[]).await,
        Status::Continue,
        "MAIL FROM {sender}"
    );
    assert_eq!(
        c.conn.rcpt([cstring("<user@rcpt.example>")]).await.unwrap(),
        go_on(c.conn.negotiated_opts(), ProtoOpts::NOREPLY_RCPT)
    );
    c.headers(&[("From", "Author <a@fail.test>"), ("Subject", "forwarded")])
        .await;
    let body = c.conn.body(body.to_vec()).await.unwrap();
    c.conn
        .macros(MacroStage::Eom, [(cstring("i"), cstring(QUEUE_ID))])
        .await
        .unwrap();
    let (_, eom) = c.conn.eom().await.unwrap();
    (body, eom)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_fail_that_nothing_rescues_is_rejected_at_end_of_message() {
    let dns = dns();
    let d = start(RESCUE, &dns);
    let mut c = Client::connect(&d, ip(), &[]).await;
    let (body, eom) = held_message(&mut c, "<a@fail.test>", b"Hello.\r\n").await;
    assert_eq!(body, Status::Continue);
    assert!(matches!(eom, Status::Reject { .. }), "{eom:?}");
    assert_eq!(reply_text(&eom).as_deref(), Some(FAIL_REPLY));
    c.close().await;
    d.wait_for_log(&format!(
        "NOQUEUE: held to end of message for the rescue: {FAIL_REPLY}"
    ))
    .await;
    d.wait_for_log(&format!("{QUEUE_ID}: not rescued (")).await;
}

/// The reply at end of message is the one MAIL FROM gives without the
/// rescue, Reason_Message and Reason_URL applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_held_reply_is_the_mail_from_reply() {
    let dns = dns();
    let policy = "[policy]\nreason_message = \"Refused ({rejectdefer}): {spf} See {url}\"\nreason_url = \"https://spf.example/?s={0};id={1};ip={2}\"\n";
    let plain = start(policy, &dns);
    let mut c = Client::connect(&plain, ip(), &[]).await;
    assert_eq!(c.helo("mx.forwarder.example").await, Status::Continue);
    let at_mail = c.mail("<a@fail.test>", &[]).await;
    let want = reply_text(&at_mail).expect("a reject at MAIL FROM");
    assert_eq!(
        want,
        "550 5.7.23 Refused (rejected): SPF fail - not authorized See https://spf.example/?s=mfrom;id=a@fail.test;ip=192.0.2.1"
    );
    c.abort().await;
    c.close().await;

    let held = start(&format!("{policy}{RESCUE}"), &dns);
    let mut c = Client::connect(&held, ip(), &[]).await;
    let (_, eom) = held_message(&mut c, "<a@fail.test>", b"Hello.\r\n").await;
    assert_eq!(reply_text(&eom), Some(want));
    c.close().await;
}

/// A message that is not held is not transferred: SMFIS_SKIP to its first
/// body chunk, and its header as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_rescue_a_pass_skips_its_body() {
    let dns = dns();
    let d = start(RESCUE, &dns);
    let mut c = Client::connect(&d, ip(), &[]).await;
    let (body, eom) = held_message(&mut c, "<a@pass.test>", b"Hello.\r\n").await;
    assert_eq!(body, Status::Skip);
    assert_eq!(eom, Status::Continue);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_over_max_message_size_is_not_rescued() {
    let dns = dns();
    let d = start(
        "[rescue]\nmethods = [\"dkim\"]\nmax_message_size = \"64K\"\n",
        &dns,
    );
    let mut c = Client::connect(&d, ip(), &[]).await;
    let (body, eom) = held_message(&mut c, "<a@fail.test>", &[b'a'; 70_000]).await;
    // The rest of the body is not wanted once the limit is passed.
    assert_eq!(body, Status::Skip);
    assert_eq!(reply_text(&eom).as_deref(), Some(FAIL_REPLY));
    c.close().await;
    d.wait_for_log(&format!(
        "{QUEUE_ID}: not rescued (the message is larger than rescue.max_message_size (65536 bytes)): {FAIL_REPLY}"
    ))
    .await;
}

/// SIGHUP turns the rescue on for new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_turns_the_rescue_on() {
    let dns = dns();
    let d = start("", &dns);
    let mut c = Client::connect(&d, ip(), &[]).await;
    assert_eq!(c.helo("mx.forwarder.example").await, Status::Continue);
    let at_mail = c.mail("<a@fail.test>", &[]).await;
    assert_eq!(reply_text(&at_mail).as_deref(), Some(FAIL_REPLY));
    c.abort().await;
    c.close().await;

    d.rewrite_config(RESCUE);
    d.hangup();
    let start = Instant::now();
    while negotiated_options(&d) & P_NOBODY != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the new configuration did not apply: {}",
            d.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = Client::connect(&d, ip(), &[]).await;
    let (body, eom) = held_message(&mut c, "<a@fail.test>", b"Hello.\r\n").await;
    assert_eq!(body, Status::Continue);
    assert_eq!(reply_text(&eom).as_deref(), Some(FAIL_REPLY));
    c.close().await;
}

// ------------------------------------------ with real signatures (mail-auth)

const AUTHOR: &str = "author.test";

/// The daemon's zone plus author.test: an SPF record that does not list
/// the client (the message is forwarded), and `key`'s record, or a key
/// name that gets `key_entry` instead.
fn zone_with_author(key: &TestKey, key_entry: Option<Entry>) -> Zone {
    let zone = zone().with_txt(AUTHOR, "v=spf1 ip4:203.0.113.0/24 -all");
    match key_entry {
        None => zone.with_txt(&key.dns_name(), &key.dns_txt()),
        Some(entry) => zone.with(&key.dns_name(), entry),
    }
}

/// A message by alice@author.test, signed by `key`, sent as Postfix sends
/// it with SMFIP_HDR_LEADSPC: each header's value as it follows the colon
/// (leading space kept), a folded value's lines joined by a bare LF; the
/// body as it is (CRLF). Returns what end of message answered.
async fn signed_message(c: &mut Client, key: &TestKey) -> (EomActions, Status) {
    let signed = key.sign(&message(
        &format!("Alice <alice@{AUTHOR}>"),
        "user@rcpt.example",
        "forwarded",
        "Hello from the author.\r\n",
    ));
    let text = String::from_utf8(signed).expect("ASCII");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header and a body");
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            let (_, value) = fields.last_mut().expect("a field to continue");
            value.push('\n');
            value.push_str(line);
        } else {
            let (name, value) = line.split_once(':').expect("a field name");
            fields.push((name.to_owned(), value.to_owned()));
        }
    }
    assert_eq!(c.helo("mx.forwarder.example").await, Status::Continue);
    assert_eq!(
        c.mail(format!("<alice@{AUTHOR}>").as_str(), &[]).await,
        Status::Continue,
        "the SPF fail is held"
    );
    assert_eq!(
        c.conn.rcpt([cstring("<user@rcpt.example>")]).await.unwrap(),
        go_on(c.conn.negotiated_opts(), ProtoOpts::NOREPLY_RCPT)
    );
    let fields: Vec<(&str, &str)> = fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    c.headers(&fields).await;
    assert_eq!(
        c.conn.body(body.as_bytes().to_vec()).await.unwrap(),
        Status::Continue
    );
    c.conn
        .macros(MacroStage::Eom, [(cstring("i"), cstring(QUEUE_ID))])
        .await
        .unwrap();
    c.conn.eom().await.unwrap()
}

/// A forwarded message signed by its author's domain, aligned with From:
/// rescued at end of message, with the header of the true SPF result
/// (Fail), and the log says what rescued it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_forward_is_rescued_with_its_true_spf_result() {
    let key = TestKey::ed25519(AUTHOR, "sel");
    let dns = TestDnsServer::start(Arc::new(zone_with_author(&key, None)));
    let d = start(RESCUE, &dns);
    let mut c = Client::connect(&d, ip(), &[]).await;
    let (actions, eom) = signed_message(&mut c, &key).await;
    assert_eq!(eom, Status::Continue, "{actions:?}");
    let spf: Vec<String> = actions
        .actions
        .iter()
        .filter_map(|a| match a {
            EomAction::InsertHeader { name, value, .. } if name.as_bytes() == b"Received-SPF" => {
                Some(value.to_string_lossy().into_owned())
            }
            _ => None,
        })
        .collect();
    assert_eq!(spf.len(), 1, "{actions:?}");
    assert!(spf[0].starts_with("Fail "), "{spf:?}");
    c.close().await;
    d.wait_for_log(&format!(
        "{QUEUE_ID}: rescued by dkim d={AUTHOR} aligned with From"
    ))
    .await;
}

/// The author's key server fails (SERVFAIL; the test server answers so
/// for a CNAME loop): the held message can be neither rejected nor
/// accepted; it is deferred (451) at end of message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_servfail_defers_the_held_message() {
    let key = TestKey::ed25519(AUTHOR, "sel");
    let looped = Entry::Cname(key.dns_name());
    let dns = TestDnsServer::start(Arc::new(zone_with_author(&key, Some(looped))));
    let d = start(RESCUE, &dns);
    let mut c = Client::connect(&d, ip(), &[]).await;
    let (_, eom) = signed_message(&mut c, &key).await;
    assert!(matches!(eom, Status::Tempfail { .. }), "{eom:?}");
    let text = reply_text(&eom).expect("a reply");
    assert!(text.starts_with("451 "), "{text}");
    c.close().await;
    d.wait_for_log(&format!("{QUEUE_ID}: rescue failed for now ("))
        .await;
}

/// SIGTERM while a held message waits for a key server that never
/// answers: the message is answered 451 4.3.2 (tried again later), never
/// rejected or accepted unverified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_verification_defers_the_held_message() {
    let key = TestKey::ed25519(AUTHOR, "sel");
    let dns = TestDnsServer::start(Arc::new(zone_with_author(&key, Some(Entry::Timeout))));
    let mut d = start(RESCUE, &dns);
    let mut c = Client::connect(&d, ip(), &[]).await;
    let in_flight = tokio::spawn(async move {
        let answer = signed_message(&mut c, &key).await;
        (answer, c)
    });
    // The key query is out when the server has dropped it.
    let start = Instant::now();
    while dns.dropped_queries() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no key query sent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _) = tokio::task::block_in_place(|| d.terminate());
    assert!(status.success(), "exit status {status:?}: {}", d.stderr());
    let ((_, eom), _c) = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the interrupted end of message hangs")
        .unwrap();
    let text = reply_text(&eom).expect("a reply");
    assert!(text.starts_with("451 4.3.2 "), "{eom:?}");
}
