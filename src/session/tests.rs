//! The session driven directly, stage by stage, with DNS from memory: no
//! milter library, no socket.

use super::*;
use crate::config::{HeaderType, LogTarget};
use crate::dns::Zone;

const CLIENT: &str = "192.0.2.1";

fn zone() -> Zone {
    Zone::new()
        .with_txt("pass.test", "v=spf1 ip4:192.0.2.0/24 -all")
        .with_txt("fail.test", "v=spf1 -all")
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
    let edits = s.end_of_message(&queued);
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
    assert_eq!(prepended(&s.end_of_message(&queued)).len(), 1);
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
    let headers = prepended(&s.end_of_message(&queued));
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
    let edits = s.end_of_message(&queued);
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
        deleted(&s.end_of_message(&queued)),
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
    assert!(deleted(&s.end_of_message(&queued)).is_empty());
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
    assert_eq!(s.end_of_message(&queued), []);
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
        assert_eq!(s.end_of_message(&queued), [], "{action}");
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
    assert_eq!(s.end_of_message(&queued), []);
    assert!(
        s.shared
            .logger()
            .lines()
            .contains(&"NOQUEUE: stopping: SPF check interrupted; answering 451 4.3.2".to_owned())
    );
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
