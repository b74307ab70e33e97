//! The session driven directly, stage by stage, with DNS from memory: no
//! milter library, no socket.

use super::*;
use std::sync::Mutex;

use crate::config::{DomainName, HeaderType, LogTarget};
use crate::dns::Zone;
use crate::dns::zone::Entry;
use crate::rescue::Method;

const CLIENT: &str = "192.0.2.1";

fn zone() -> Zone {
    Zone::new()
        .with_txt("pass.test", "v=spf1 ip4:192.0.2.0/24 -all")
        .with_txt("fail.test", "v=spf1 -all")
        .with("temp.test", Entry::Timeout)
}

fn session_with(config: Config, client: &str) -> Session<Zone> {
    let evaluator = Evaluator::new(zone()).with_limits(config.spf_limits());
    let shared = Shared::with_evaluator(
        Arc::new(config),
        evaluator,
        Logger::Memory(Default::default()),
    );
    let metrics = Arc::new(Metrics::new(Arc::new(Default::default)));
    Session::connect(
        Arc::new(shared),
        metrics,
        Some(client.parse().expect("an address")),
        Some("mx.example.net"),
    )
}

fn session() -> Session<Zone> {
    let mut config = Config::default();
    config.log.target = LogTarget::Stderr;
    config.log.level = LogLevel::Results;
    session_with(config, CLIENT)
}

/// The `i` macro only, as Postfix sends it at end of message.
fn queued(name: &str) -> Option<String> {
    (name == "i").then(|| "4QX7abcDEF".to_owned())
}

fn no_macros(_: &str) -> Option<String> {
    None
}

fn prepended(edits: &[HeaderEdit]) -> Vec<(&'static str, String)> {
    edits
        .iter()
        .filter_map(|e| match e {
            HeaderEdit::Prepend { name, value } => Some((*name, value.replace("\n\t", " "))),
            HeaderEdit::Delete { .. } => None,
        })
        .collect()
}

fn deleted(edits: &[HeaderEdit]) -> Vec<(&'static str, i32)> {
    edits
        .iter()
        .filter_map(|e| match e {
            HeaderEdit::Delete { name, index } => Some((*name, *index)),
            HeaderEdit::Prepend { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn a_pass_continues_and_gets_its_received_spf_on_top() {
    let mut s = session();
    s.helo("mx.pass.test");
    assert_eq!(
        s.mail("<a@pass.test>", &no_macros).await,
        StageReply::Continue
    );
    s.rcpt("<user@rcpt.example>");
    s.header(b"Subject", b"hi");
    let edits = s.end_of_message(&queued).await.edits;
    let headers = prepended(&edits);
    assert_eq!(headers.len(), 1, "{edits:?}");
    let (name, value) = &headers[0];
    // RFC 7208 §9.1: result, comment, then key-value pairs.
    assert_eq!(*name, "Received-SPF");
    assert!(value.starts_with("Pass ("), "{value}");
    for pair in [
        "identity=mailfrom",
        "client-ip=192.0.2.1",
        "helo=mx.pass.test",
        "envelope-from=a@pass.test",
        "receiver=rcpt.example",
    ] {
        assert!(value.contains(pair), "{pair} in {value}");
    }
    assert!(deleted(&edits).is_empty());
    let log = s.shared.logger().lines();
    assert!(
        log.iter()
            .any(|l| l.starts_with("NOQUEUE: Pass; identity=mailfrom;")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("4QX7abcDEF: prepend Received-SPF: Pass (")),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_fail_is_rejected_at_mail_from_with_the_reference_reply() {
    let mut s = session();
    s.helo("mx.pass.test");
    let answer = s.mail("<a@fail.test>", &no_macros).await;
    // policyd-spf's reply for Fail, with no Reason_URL
    // (docs/policyd-spf-compatibility.md §4, §5); RFC 7372 §3.2's 5.7.23.
    assert_eq!(
        answer,
        StageReply::Reject(Reply {
            code: 550,
            enhanced: Some("5.7.23"),
            text: "Message rejected due to: SPF fail - not authorized.".to_owned(),
        })
    );
    // The next message of the connection starts afresh.
    assert_eq!(
        s.mail("<b@pass.test>", &no_macros).await,
        StageReply::Continue
    );
    assert_eq!(prepended(&s.end_of_message(&queued).await.edits).len(), 1);
}

#[tokio::test]
async fn a_skipped_client_gets_the_skip_comment() {
    // 127.0.0.2: in skip_addresses (127.0.0.0/8), not in InternalHosts
    // (127.0.0.1), which skips without a header.
    let mut config = Config::default();
    config.milter.header_type = HeaderType::Ar;
    let mut s = session_with(config, "127.0.0.2");
    s.helo("localhost");
    assert_eq!(
        s.mail("<a@fail.test>", &no_macros).await,
        StageReply::Continue
    );
    let headers = prepended(&s.end_of_message(&queued).await.edits);
    assert_eq!(headers.len(), 1);
    assert_eq!(headers[0].0, "Authentication-Results");
    // RFC 8601 §2.2: our authserv-id (the MTA's j), then the result.
    assert!(
        headers[0]
            .1
            .starts_with("mx.example.net; none (SPF check N/A for local connections"),
        "{headers:?}"
    );
}

#[tokio::test]
async fn forged_trace_headers_are_deleted_last_first_whatever_their_case() {
    let mut config = Config::default();
    config.log.level = LogLevel::Actions;
    let mut s = session_with(config, CLIENT);
    s.helo("mx.pass.test");
    assert_eq!(
        s.mail("<a@pass.test>", &no_macros).await,
        StageReply::Continue
    );
    s.header(b"received-spf", b"Pass (forged) identity=mailfrom");
    s.header(b"X-Other", b"1");
    s.header(
        b"Authentication-Results",
        b"other.example; spf=pass smtp.mailfrom=pass.test",
    );
    s.header(b"RECEIVED-SPF", b"Pass (forged again) identity=mailfrom");
    s.header(
        b"authentication-results",
        b"MX.example.NET; spf=pass smtp.mailfrom=pass.test",
    );
    let edits = s.end_of_message(&queued).await.edits;
    // The MTA renumbers after each deletion: #2 of a name goes before #1.
    // The other site's Authentication-Results (#1 of its name) stays.
    assert_eq!(
        deleted(&edits),
        [
            ("Received-SPF", 2),
            ("Authentication-Results", 2),
            ("Received-SPF", 1)
        ]
    );
    // Deletions first, then ours.
    assert!(matches!(edits.last(), Some(HeaderEdit::Prepend { .. })));
    let log = s.shared.logger().lines();
    assert!(
        log.contains(
            &"4QX7abcDEF: removing 3 forged headers: Received-SPF #2, Authentication-Results #2, Received-SPF #1"
                .to_owned()
        ),
        "{log:?}"
    );
}

/// `Authentication-Results :` (space before the colon, RFC 5322 §4.5.3)
/// is an Authentication-Results to the MTA when it numbers the headers of
/// that name: counting it keeps the index of the forged one after it
/// right.
#[tokio::test]
async fn white_space_before_the_colon_is_counted_as_the_mta_counts_it() {
    let mut s = session();
    assert_eq!(
        s.mail("<a@pass.test>", &no_macros).await,
        StageReply::Continue
    );
    s.header(
        b"Authentication-Results \t",
        b"other.example; spf=none smtp.mailfrom=pass.test",
    );
    s.header(
        b"Authentication-Results",
        b"mx.example.net; spf=pass smtp.mailfrom=pass.test",
    );
    s.header(b"Received-SPF ", b"Pass (forged) identity=mailfrom");
    assert_eq!(
        deleted(&s.end_of_message(&queued).await.edits),
        [("Authentication-Results", 2), ("Received-SPF", 1)]
    );
}

#[tokio::test]
async fn nothing_is_deleted_when_the_option_is_off() {
    let mut config = Config::default();
    config.milter.remove_forged_headers = false;
    let mut s = session_with(config, CLIENT);
    assert_eq!(
        s.mail("<a@pass.test>", &no_macros).await,
        StageReply::Continue
    );
    s.header(b"Received-SPF", b"Pass (forged) identity=mailfrom");
    assert!(deleted(&s.end_of_message(&queued).await.edits).is_empty());
}

#[tokio::test]
async fn an_abort_forgets_the_message() {
    let mut s = session();
    s.helo("mx.pass.test");
    assert_eq!(
        s.mail("<a@pass.test>", &no_macros).await,
        StageReply::Continue
    );
    s.header(b"Received-SPF", b"Pass (forged) identity=mailfrom");
    s.abort();
    // An end of message without a MAIL FROM of its own: nothing to add,
    // nothing remembered to delete.
    assert_eq!(s.end_of_message(&queued).await.edits, []);
}

#[test]
fn deleted_headers_are_logged_in_one_line() {
    assert_eq!(
        forged_log_line(&[("Received-SPF", 1)]),
        "removing 1 forged header: Received-SPF #1"
    );
    let many: Vec<(&str, i32)> = (1..=12)
        .rev()
        .map(|i| ("Authentication-Results", i))
        .collect();
    let line = forged_log_line(&many);
    assert!(
        line.starts_with(
            "removing 12 forged headers: Authentication-Results #12, Authentication-Results #11,"
        ),
        "{line}"
    );
    assert!(
        line.ends_with("Authentication-Results #3 and 2 more"),
        "{line}"
    );
}

#[tokio::test]
async fn internal_errors_answer_as_configured_and_forget_the_message() {
    for (action, want) in [
        (
            InternalErrorAction::Tempfail,
            StageReply::Tempfail(Reply {
                code: 451,
                enhanced: Some("4.3.0"),
                text: "Temporary internal error in the SPF check".to_owned(),
            }),
        ),
        (
            InternalErrorAction::Reject,
            StageReply::Reject(Reply {
                code: 550,
                enhanced: Some("5.7.1"),
                text: "Internal error in the SPF check".to_owned(),
            }),
        ),
        (InternalErrorAction::Accept, StageReply::Accept),
    ] {
        let mut config = Config::default();
        config.milter.on_internal_error = action;
        let mut s = session_with(config, CLIENT);
        assert_eq!(
            s.mail("<a@pass.test>", &no_macros).await,
            StageReply::Continue
        );
        s.header(b"Received-SPF", b"Pass (forged) identity=mailfrom");
        let answer = s.internal_error(Stage::EndOfMessage, &queued, "cannot prepend");
        assert_eq!(answer, want);
        assert_eq!(s.end_of_message(&queued).await.edits, [], "{action}");
        let log = s.shared.logger().lines();
        assert!(
            log.contains(&format!(
                "4QX7abcDEF: internal error at end of message: cannot prepend; answering {action} (on_internal_error)"
            )),
            "{log:?}"
        );
    }
}

#[tokio::test]
async fn a_check_interrupted_by_the_stop_is_a_temporary_failure() {
    let mut s = session();
    assert_eq!(
        s.mail("<a@pass.test>", &no_macros).await,
        StageReply::Continue
    );
    s.header(b"Received-SPF", b"Pass (forged) identity=mailfrom");
    let answer = s.interrupted(&no_macros);
    // RFC 3463 §3.5: X.3.2, system not accepting network messages.
    assert_eq!(
        answer,
        StageReply::Tempfail(Reply {
            code: 451,
            enhanced: Some("4.3.2"),
            text: "SPF check interrupted by a restart, try again later".to_owned(),
        })
    );
    assert_eq!(s.end_of_message(&queued).await.edits, []);
    assert!(
        s.shared
            .logger()
            .lines()
            .contains(&"NOQUEUE: stopping: SPF check interrupted; answering 451 4.3.2".to_owned())
    );
}

// ------------------------------------------------------------ the rescue

/// What the stand-in rescuer was given: the message and the MAIL FROM
/// domain.
type Seen = Arc<Mutex<Vec<(Vec<u8>, Option<String>)>>>;

/// A rescuer that answers `verdict` (never, for `None`) and records what
/// it was given.
fn stand_in(verdict: Option<Verdict>, seen: &Seen) -> Rescuer<Zone> {
    let seen = Arc::clone(seen);
    Box::new(move |_lookup, _settings, message, domain| {
        seen.lock()
            .unwrap()
            .push((message.to_vec(), domain.map(str::to_owned)));
        let verdict = verdict.clone();
        Box::pin(async move {
            match verdict {
                Some(v) => v,
                None => std::future::pending().await,
            }
        })
    })
}

fn rescue_config(set: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    config.log.level = LogLevel::Actions;
    config.rescue.methods = vec![Method::Dkim];
    set(&mut config);
    config
}

fn shared_with(config: Config, verdict: Option<Verdict>, seen: &Seen) -> Arc<Shared<Zone>> {
    let evaluator = Evaluator::new(zone()).with_limits(config.spf_limits());
    Arc::new(
        Shared::with_evaluator(
            Arc::new(config),
            evaluator,
            Logger::Memory(Default::default()),
        )
        .with_rescuer(stand_in(verdict, seen)),
    )
}

fn connect(shared: &Arc<Shared<Zone>>) -> Session<Zone> {
    let metrics = Arc::new(Metrics::new(Arc::new(Default::default)));
    let mut s = Session::connect(
        Arc::clone(shared),
        metrics,
        Some(CLIENT.parse().expect("an address")),
        Some("mx.example.net"),
    );
    s.set_header_leading_space(true);
    s
}

fn rescuing(verdict: Option<Verdict>, set: impl FnOnce(&mut Config)) -> (Session<Zone>, Seen) {
    let seen = Seen::default();
    let shared = shared_with(rescue_config(set), verdict, &seen);
    (connect(&shared), seen)
}

/// The reply of a Fail reject (policyd-spf's, docs/policyd-spf-compatibility.md §4).
fn fail_reply() -> Reply {
    Reply {
        code: 550,
        enhanced: Some("5.7.23"),
        text: "Message rejected due to: SPF fail - not authorized.".to_owned(),
    }
}

/// A forwarded message: header as Postfix gives it with SMFIP_HDR_LEADSPC
/// (a folded value's lines joined by a bare LF), body in CRLF chunks.
async fn send_message(s: &mut Session<Zone>, sender: &str) -> StageReply {
    s.helo("mx.forwarder.example");
    let answer = s.mail(sender, &no_macros).await;
    s.rcpt("<user@rcpt.example>");
    s.header(b"From", b" Author <a@fail.test>");
    s.header(b"Subject", b" a long\n\tsubject");
    answer
}

const KEPT: &[u8] =
    b"From: Author <a@fail.test>\r\nSubject: a long\r\n\tsubject\r\n\r\nHello\r\n.. world\r\n";

async fn body_and_end(s: &mut Session<Zone>) -> (StageReply, EndOfMessage) {
    let first = s.body(b"Hello\r\n");
    assert_eq!(s.body(b".. world\r\n"), first);
    (first, s.end_of_message(&queued).await)
}

fn log_of(s: &Session<Zone>) -> Vec<String> {
    s.shared.logger().lines()
}

fn logged(s: &Session<Zone>, line: &str) {
    let log = log_of(s);
    assert!(log.iter().any(|l| l == line), "{line:?} not in {log:?}");
}

#[tokio::test]
async fn a_held_reject_not_rescued_is_rejected_at_end_of_message_with_the_same_reply() {
    let (mut s, seen) = rescuing(Some(Verdict::NotRescued("no signature".into())), |_| {});
    assert_eq!(
        send_message(&mut s, "<a@fail.test>").await,
        StageReply::Continue
    );
    let (body, eom) = body_and_end(&mut s).await;
    assert_eq!(body, StageReply::Continue);
    assert_eq!(
        eom,
        EndOfMessage {
            reply: StageReply::Reject(fail_reply()),
            edits: vec![],
        }
    );
    // The message exactly as received, and the MAIL FROM domain.
    assert_eq!(
        *seen.lock().unwrap(),
        [(KEPT.to_vec(), Some("fail.test".to_owned()))]
    );
    logged(
        &s,
        "NOQUEUE: held to end of message for the rescue: 550 5.7.23 Message rejected due to: SPF fail - not authorized.",
    );
    logged(
        &s,
        "4QX7abcDEF: not rescued (no signature): 550 5.7.23 Message rejected due to: SPF fail - not authorized.",
    );
    assert_eq!(s.shared.held_budget().used(), 0);
    let metrics = s.metrics.render();
    for line in [
        "spfmilter_messages_total{action=\"held\"} 1",
        "spfmilter_held_total{outcome=\"not_rescued\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}

/// The rescue cancels the reject, nothing else: the headers are those an
/// accepted message with this SPF result gets (those of test mode,
/// docs/policyd-spf-compatibility.md §4), `Fail` and never a pass.
#[tokio::test]
async fn a_rescued_message_gets_exactly_the_headers_of_an_unrescued_accept() {
    for header_type in [HeaderType::Spf, HeaderType::Ar, HeaderType::Both] {
        let (mut s, _) = rescuing(
            Some(Verdict::Rescued(
                "dkim d=fail.test aligned with From".into(),
            )),
            |c| c.milter.header_type = header_type,
        );
        assert_eq!(
            send_message(&mut s, "<a@fail.test>").await,
            StageReply::Continue
        );
        s.header(b"Received-SPF", b" Pass (forged) identity=mailfrom");
        let (_, eom) = body_and_end(&mut s).await;
        assert_eq!(eom.reply, StageReply::Continue);
        logged(
            &s,
            "4QX7abcDEF: rescued by dkim d=fail.test aligned with From",
        );

        // The same message in test mode, without the rescue.
        let mut config = Config::default();
        config.policy.test_mode = true;
        config.milter.header_type = header_type;
        let mut t = session_with(config, CLIENT);
        t.set_header_leading_space(true);
        assert_eq!(
            send_message(&mut t, "<a@fail.test>").await,
            StageReply::Continue
        );
        t.header(b"Received-SPF", b" Pass (forged) identity=mailfrom");
        assert_eq!(t.body(b"x"), StageReply::Skip);
        let want = t.end_of_message(&queued).await;
        assert_eq!(eom, want, "{header_type}");
        assert_eq!(deleted(&eom.edits), [("Received-SPF", 1)]);
        for (name, value) in prepended(&eom.edits) {
            match name {
                // RFC 7208 §9.1: the result first.
                "Received-SPF" => assert!(value.starts_with("Fail ("), "{value}"),
                // RFC 8601 §2.7.2: spf=fail.
                _ => assert!(value.contains("spf=fail"), "{value}"),
            }
            assert!(!value.to_ascii_lowercase().contains("pass"), "{value}");
        }
    }
}

#[tokio::test]
async fn a_temporary_failure_defers_and_a_held_message_is_never_accepted_on_it() {
    let (mut s, _) = rescuing(
        Some(Verdict::Temporary("key lookup SERVFAIL".into())),
        |_| {},
    );
    assert_eq!(
        send_message(&mut s, "<a@fail.test>").await,
        StageReply::Continue
    );
    let (_, eom) = body_and_end(&mut s).await;
    let reply = Reply {
        code: 451,
        enhanced: Some("4.4.3"),
        text: "Temporary failure checking the message's signatures, try again later".to_owned(),
    };
    assert_eq!(
        eom,
        EndOfMessage {
            reply: StageReply::Tempfail(reply),
            edits: vec![],
        }
    );
    logged(
        &s,
        "4QX7abcDEF: rescue failed for now (key lookup SERVFAIL): 451 4.4.3 Temporary failure checking the message's signatures, try again later",
    );
}

#[tokio::test(start_paused = true)]
async fn the_time_limit_defers() {
    let (mut s, seen) = rescuing(None, |c| c.rescue.time_limit = Duration::from_secs(3));
    assert_eq!(
        send_message(&mut s, "<a@fail.test>").await,
        StageReply::Continue
    );
    let (_, eom) = body_and_end(&mut s).await;
    assert!(
        matches!(eom.reply, StageReply::Tempfail(Reply { code: 451, .. })),
        "{eom:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    logged(
        &s,
        "4QX7abcDEF: rescue failed for now (rescue.time_limit (3000 ms) ran out): 451 4.4.3 Temporary failure checking the message's signatures, try again later",
    );
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_not_rescued_and_its_body_is_skipped() {
    let (mut s, seen) = rescuing(Some(Verdict::Rescued("dkim".into())), |c| {
        c.rescue.max_message_size = 60;
    });
    assert_eq!(
        send_message(&mut s, "<a@fail.test>").await,
        StageReply::Continue
    );
    // 55 bytes of header so far; the empty line and the body pass 60.
    assert_eq!(s.body(b"Hello\r\n"), StageReply::Skip);
    let eom = s.end_of_message(&queued).await;
    assert_eq!(eom.reply, StageReply::Reject(fail_reply()));
    // Never verified: a partial message proves nothing.
    assert!(seen.lock().unwrap().is_empty());
    logged(
        &s,
        "4QX7abcDEF: not rescued (the message is larger than rescue.max_message_size (60 bytes)): 550 5.7.23 Message rejected due to: SPF fail - not authorized.",
    );
}

#[tokio::test]
async fn over_the_total_of_held_bytes_a_message_is_deferred_never_let_through() {
    let seen = Seen::default();
    let shared = shared_with(
        rescue_config(|c| {
            c.rescue.max_message_size = 8192;
            c.rescue.max_held_bytes = 8192;
        }),
        Some(Verdict::Rescued("dkim".into())),
        &seen,
    );
    let mut first = connect(&shared);
    assert_eq!(
        send_message(&mut first, "<a@fail.test>").await,
        StageReply::Continue
    );
    assert_eq!(first.body(&[b'a'; 5000]), StageReply::Continue);
    let mut second = connect(&shared);
    assert_eq!(
        send_message(&mut second, "<a@fail.test>").await,
        StageReply::Continue
    );
    assert_eq!(second.body(&[b'b'; 5000]), StageReply::Skip);
    let eom = second.end_of_message(&queued).await;
    assert_eq!(
        eom.reply,
        StageReply::Tempfail(Reply {
            code: 451,
            enhanced: Some("4.3.1"),
            text: "Too much mail held for the SPF check, try again later".to_owned(),
        })
    );
    logged(
        &second,
        "4QX7abcDEF: rescue failed for now (rescue.max_held_bytes (8192 bytes) reached: too many messages held): 451 4.3.1 Too much mail held for the SPF check, try again later",
    );
    // The first is decided as usual and gives its bytes back.
    assert!(shared.held_budget().used() > 0);
    assert_eq!(
        first.end_of_message(&queued).await.reply,
        StageReply::Continue
    );
    assert_eq!(shared.held_budget().used(), 0);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn held_bytes_are_given_back_on_abort_and_when_the_connection_goes() {
    let seen = Seen::default();
    let shared = shared_with(
        rescue_config(|_| {}),
        Some(Verdict::Rescued("dkim".into())),
        &seen,
    );
    let mut s = connect(&shared);
    assert_eq!(
        send_message(&mut s, "<a@fail.test>").await,
        StageReply::Continue
    );
    assert_eq!(s.body(b"x"), StageReply::Continue);
    assert!(shared.held_budget().used() > 0);
    s.abort();
    assert_eq!(shared.held_budget().used(), 0);
    assert_eq!(
        s.end_of_message(&queued).await,
        EndOfMessage {
            reply: StageReply::Continue,
            edits: vec![]
        }
    );
    assert_eq!(
        send_message(&mut s, "<a@fail.test>").await,
        StageReply::Continue
    );
    assert!(shared.held_budget().used() > 0);
    drop(s);
    assert_eq!(shared.held_budget().used(), 0);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn test_mode_logs_what_the_rescue_would_do_and_accepts() {
    for (verdict, line) in [
        (
            Verdict::Rescued("dkim d=fail.test aligned with From".into()),
            "4QX7abcDEF: TestOnly: would rescue: rescued by dkim d=fail.test aligned with From",
        ),
        (
            Verdict::NotRescued("no signature".into()),
            "4QX7abcDEF: TestOnly: would reject: not rescued (no signature): 550 5.7.23 Message rejected due to: SPF fail - not authorized.",
        ),
        (
            Verdict::Temporary("key lookup SERVFAIL".into()),
            "4QX7abcDEF: TestOnly: would defer: rescue failed for now (key lookup SERVFAIL): 451 4.4.3 Temporary failure checking the message's signatures, try again later",
        ),
    ] {
        let (mut s, seen) = rescuing(Some(verdict), |c| c.policy.test_mode = true);
        assert_eq!(
            send_message(&mut s, "<a@fail.test>").await,
            StageReply::Continue
        );
        let (body, eom) = body_and_end(&mut s).await;
        assert_eq!(body, StageReply::Continue);
        assert_eq!(eom.reply, StageReply::Continue);
        let headers = prepended(&eom.edits);
        assert_eq!(headers.len(), 1);
        assert!(headers[0].1.starts_with("Fail ("), "{headers:?}");
        assert_eq!(seen.lock().unwrap()[0].0, KEPT);
        logged(
            &s,
            "NOQUEUE: TestOnly: would 550 5.7.23 Message rejected due to: SPF fail - not authorized.",
        );
        logged(&s, line);
    }
}

#[tokio::test]
async fn a_defer_is_never_held() {
    let (mut s, seen) = rescuing(Some(Verdict::Rescued("dkim".into())), |c| {
        c.policy.temperror_defer = true;
    });
    let answer = send_message(&mut s, "<a@temp.test>").await;
    // RFC 7372 §3.2: 4.7.24 for an SPF TempError.
    assert!(
        matches!(
            &answer,
            StageReply::Tempfail(Reply {
                code: 450,
                enhanced: Some("4.7.24"),
                ..
            })
        ),
        "{answer:?}"
    );
    assert_eq!(s.body(b"x"), StageReply::Skip);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn with_the_rescue_on_a_pass_is_not_held_and_its_body_is_skipped() {
    let (mut s, seen) = rescuing(Some(Verdict::NotRescued("unused".into())), |_| {});
    assert_eq!(
        send_message(&mut s, "<a@pass.test>").await,
        StageReply::Continue
    );
    let (body, eom) = body_and_end(&mut s).await;
    assert_eq!(body, StageReply::Skip);
    assert_eq!(eom.reply, StageReply::Continue);
    assert!(prepended(&eom.edits)[0].1.starts_with("Pass ("));
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(s.shared.held_budget().used(), 0);
}

#[tokio::test]
async fn a_helo_reject_is_held_too_and_a_rescue_reports_the_helo_result() {
    let (mut s, seen) = rescuing(Some(Verdict::Rescued("dkim".into())), |_| {});
    s.helo("fail.test");
    assert_eq!(
        s.mail("<a@pass.test>", &no_macros).await,
        StageReply::Continue
    );
    s.header(b"From", b" a@pass.test");
    let eom = s.end_of_message(&queued).await;
    assert_eq!(eom.reply, StageReply::Continue);
    let headers = prepended(&eom.edits);
    // The HELO identity rejected: test mode reports it.
    assert!(headers[0].1.starts_with("Fail ("), "{headers:?}");
    assert!(headers[0].1.contains("identity=helo"), "{headers:?}");
    // No body came: the header and the empty line.
    assert_eq!(seen.lock().unwrap()[0].0, b"From: a@pass.test\r\n\r\n");
}

#[tokio::test]
async fn without_the_rescue_nothing_is_held_and_the_body_is_not_wanted() {
    let mut s = session();
    s.helo("mx.pass.test");
    assert_eq!(
        s.mail("<a@fail.test>", &no_macros).await,
        StageReply::Reject(fail_reply())
    );
    assert_eq!(s.body(b"x"), StageReply::Skip);
}

/// A `[block]` reject is answered at MAIL FROM even with the rescue on: it
/// refuses the operator (here: the client is in pass.test's networks,
/// listed in `authorized_by`), whatever a signature could prove, so the
/// SPF fail of the same message is not held and the rescuer never runs.
#[tokio::test]
async fn a_block_is_never_held_for_the_rescue() {
    let (mut s, seen) = rescuing(Some(Verdict::Rescued("dkim".to_owned())), |c| {
        c.block.authorized_by = vec![DomainName::parse("pass.test").expect("a name")];
    });
    let answer = send_message(&mut s, "<a@fail.test>").await;
    let StageReply::Reject(reply) = answer else {
        panic!("not refused at MAIL FROM: {answer:?}");
    };
    assert_eq!(
        (reply.code, reply.enhanced),
        (550, Some("5.7.1")),
        "{reply:?}"
    );
    assert!(reply.text.contains("(pass.test)"), "{reply:?}");
    s.abort();
    assert!(seen.lock().unwrap().is_empty(), "the rescuer ran");
}

/// The prepend line shows the header unfolded, on one line.
#[test]
fn the_prepend_log_line_unfolds_the_value() {
    assert_eq!(
        super::prepend_log_line(
            "4QX7abcDEF",
            "Received-SPF",
            "Pass (mailfrom) identity=mailfrom;\n\tclient-ip=192.0.2.1;\n\thelo=a.example;"
        ),
        "4QX7abcDEF: prepend Received-SPF: Pass (mailfrom) identity=mailfrom; \
         client-ip=192.0.2.1; helo=a.example;"
    );
    assert_eq!(
        super::prepend_log_line("NOQUEUE", "Authentication-Results", "mx; spf=pass"),
        "NOQUEUE: prepend Authentication-Results: mx; spf=pass"
    );
}
