//! The block rules through a whole session (bypass chain, decision, block),
//! with DNS from memory. Addresses are documentation ranges (RFC 5737,
//! RFC 3849): the operator's networks are 198.51.100.0/24 and
//! 2001:db8:5a::/48, a legitimate sender's 192.0.2.0/24.

use std::sync::Arc;

use crate::config::{CidrList, Config, DomainName, LogLevel, LogTarget};
use crate::dns::Zone;
use crate::dns::zone::Entry;
use crate::log::Logger;
use crate::metrics::Metrics;
use crate::policy::decide::Reply;
use crate::session::{Session, Shared, StageReply};
use crate::spf::{Evaluator, Identity, Request};

const LISTED: &str = "spf-stx.burn-oxygen.test";
const OPERATOR_V4: &str = "198.51.100.7";
const OPERATOR_V6: &str = "2001:db8:5a::7";
const ELSEWHERE: &str = "203.0.113.9";
const LEGIT: &str = "192.0.2.1";

fn zone() -> Zone {
    Zone::new()
        // The operator's networks, and an unlisted sibling publishing the
        // same ones under another name.
        .with_txt(
            LISTED,
            "v=spf1 ip4:198.51.100.0/24 ip6:2001:db8:5a::/48 -all",
        )
        .with_txt(
            "spf-mkt.burn-oxygen.test",
            "v=spf1 ip4:198.51.100.0/24 ip6:2001:db8:5a::/48 -all",
        )
        // One level, two levels, redirect, a name built by a macro
        // (%{d2} of mac.burn-oxygen.test is burn-oxygen.test, RFC 7208
        // §7.3), and the unlisted sibling.
        .with_txt(
            "toramaki.test",
            "v=spf1 include:spf-stx.burn-oxygen.test -all",
        )
        .with_txt("newspam.test", "v=spf1 include:_spf.newspam.test -all")
        .with_txt(
            "_spf.newspam.test",
            "v=spf1 include:spf-stx.burn-oxygen.test ~all",
        )
        .with_txt("redir.test", "v=spf1 redirect=spf-stx.burn-oxygen.test")
        .with_txt("mac.burn-oxygen.test", "v=spf1 include:spf-stx.%{d2} -all")
        .with_txt(
            "sibling.test",
            "v=spf1 include:spf-mkt.burn-oxygen.test -all",
        )
        // A HELO host of the operator's.
        .with_txt(
            "mx.newspam.test",
            "v=spf1 include:spf-stx.burn-oxygen.test -all",
        )
        // A legitimate sender, and one whose first include decides before
        // the listed one is reached.
        .with_txt("legit.test", "v=spf1 ip4:192.0.2.0/24 -all")
        .with_txt(
            "good-first.test",
            "v=spf1 include:legit.test include:spf-stx.burn-oxygen.test -all",
        )
        // A listed domain whose DNS fails, and a sender whose evaluation
        // enters the listed name and then fails.
        .with("broken-op.test", Entry::Timeout)
        .with_txt(
            "tempy.test",
            "v=spf1 include:spf-stx.burn-oxygen.test include:broken-op.test -all",
        )
}

fn names(list: &[&str]) -> Vec<DomainName> {
    list.iter()
        .map(|n| DomainName::parse(n).expect("a name"))
        .collect()
}

fn config(authorized_by: &[&str], includes: &[&str]) -> Config {
    let mut config = Config::default();
    config.log.target = LogTarget::Stderr;
    config.log.level = LogLevel::Results;
    config.block.authorized_by = names(authorized_by);
    config.block.includes = names(includes);
    config
}

fn session(config: Config, client: &str) -> (Session<Zone>, Arc<Shared<Zone>>, Arc<Metrics>) {
    let evaluator = Evaluator::new(zone()).with_limits(config.spf_limits());
    let shared = Arc::new(Shared::with_evaluator(
        Arc::new(config),
        evaluator,
        Logger::Memory(Default::default()),
    ));
    let metrics = Arc::new(Metrics::new(Arc::new(Default::default)));
    let session = Session::connect(
        Arc::clone(&shared),
        Arc::clone(&metrics),
        Some(client.parse().expect("an address")),
        Some("mx.example.net"),
    );
    (session, shared, metrics)
}

fn no_macros(_: &str) -> Option<String> {
    None
}

/// MAIL FROM `sender` from `client`: the answer and the log.
async fn mail(config: Config, client: &str, sender: &str) -> (StageReply, Vec<String>) {
    let (mut s, shared, _) = session(config, client);
    s.helo("mail.sender.test");
    let answer = s.mail(&format!("<{sender}>"), &no_macros).await;
    (answer, shared.logger().lines())
}

fn block_reply(name: &str) -> StageReply {
    StageReply::Reject(Reply {
        code: 550,
        enhanced: Some("5.7.1"),
        text: format!("Mail from the SPF infrastructure of a blocked operator ({name}) is refused"),
    })
}

fn has(log: &[String], text: &str) -> bool {
    log.iter().any(|l| l.contains(text))
}

#[tokio::test]
async fn authorized_by_refuses_the_operators_networks_v4_and_v6() {
    for client in [OPERATOR_V4, OPERATOR_V6] {
        // toramaki.test passes SPF: only the block refuses it.
        let (answer, log) = mail(config(&[LISTED], &[]), client, "a@toramaki.test").await;
        assert_eq!(answer, block_reply(LISTED), "{client}");
        assert!(
            has(
                &log,
                &format!(
                    "NOQUEUE: blocked (authorized_by {LISTED}): check_host({client}, {LISTED}) = pass (+ip"
                )
            ),
            "{log:?}"
        );
        assert!(has(&log, "NOQUEUE: Pass; identity=mailfrom"), "{log:?}");
    }
}

#[tokio::test]
async fn authorized_by_lets_other_networks_through() {
    let (answer, log) = mail(config(&[LISTED], &[]), LEGIT, "a@legit.test").await;
    assert_eq!(answer, StageReply::Continue);
    assert!(!has(&log, "block"), "{log:?}");
    // The operator's own domain from elsewhere: its SPF fails, the normal
    // decision rejects, and the reply is the SPF one.
    let (answer, _) = mail(config(&[LISTED], &[]), ELSEWHERE, "a@toramaki.test").await;
    let StageReply::Reject(reply) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(reply.enhanced, Some("5.7.23"));
}

#[tokio::test]
async fn includes_refuses_nested_includes_v4_and_v6() {
    for client in [OPERATOR_V4, OPERATOR_V6] {
        let (answer, log) = mail(config(&[], &[LISTED]), client, "x@newspam.test").await;
        assert_eq!(answer, block_reply(LISTED), "{client}");
        assert!(
            has(
                &log,
                &format!(
                    "blocked (includes {LISTED}): mailfrom evaluation of newspam.test entered {LISTED} (via _spf.newspam.test, {LISTED}); result pass"
                )
            ),
            "{log:?}"
        );
    }
}

#[tokio::test]
async fn includes_refuses_whatever_network_the_new_domain_sends_from() {
    // Outside the operator's networks the include was still entered
    // before -all: the block's reply replaces the SPF fail's, and the
    // decision's own reject line is not logged.
    let (answer, log) = mail(config(&[], &[LISTED]), ELSEWHERE, "x@newspam.test").await;
    assert_eq!(answer, block_reply(LISTED));
    assert!(has(&log, "result fail"), "{log:?}");
    assert!(!has(&log, "5.7.23"), "{log:?}");
}

#[tokio::test]
async fn includes_follows_redirect_and_macro_built_names() {
    for sender in ["x@redir.test", "x@mac.burn-oxygen.test"] {
        let (answer, log) = mail(config(&[], &[LISTED]), OPERATOR_V4, sender).await;
        assert_eq!(answer, block_reply(LISTED), "{sender}: {log:?}");
    }
}

#[tokio::test]
async fn includes_looks_at_the_helo_evaluation_too() {
    // A legitimate sender domain, but the HELO host's record enters the
    // operator's include (and fails from here: the decision would reject
    // with 5.7.23; the block's reply replaces it).
    let (mut s, shared, _) = session(config(&[], &[LISTED]), LEGIT);
    s.helo("mx.newspam.test");
    let answer = s.mail("<a@legit.test>", &no_macros).await;
    let log = shared.logger().lines();
    assert_eq!(answer, block_reply(LISTED), "{log:?}");
    assert!(
        has(
            &log,
            &format!(
                "blocked (includes {LISTED}): helo evaluation of mx.newspam.test entered {LISTED}"
            )
        ),
        "{log:?}"
    );
}

#[tokio::test]
async fn an_unlisted_sibling_include_does_not_match() {
    // Same networks, another name: includes compares names whole.
    let (answer, log) = mail(config(&[], &[LISTED]), OPERATOR_V4, "x@sibling.test").await;
    assert_eq!(answer, StageReply::Continue, "{log:?}");
    assert!(!has(&log, "block"), "{log:?}");
    // A sibling include that decides before the listed one is reached.
    let (answer, log) = mail(config(&[], &[LISTED]), LEGIT, "x@good-first.test").await;
    assert_eq!(answer, StageReply::Continue, "{log:?}");
    // The same sender from outside both: the listed include was entered.
    let (answer, _) = mail(config(&[], &[LISTED]), ELSEWHERE, "x@good-first.test").await;
    assert_eq!(answer, block_reply(LISTED));
}

#[tokio::test]
async fn dns_failure_of_a_listed_domain_never_blocks() {
    let (answer, log) = mail(
        config(&["broken-op.test"], &[]),
        OPERATOR_V4,
        "a@toramaki.test",
    )
    .await;
    assert_eq!(answer, StageReply::Continue, "{log:?}");
    assert!(
        has(
            &log,
            "NOQUEUE: block authorized_by broken-op.test: temperror (DNS error looking up TXT broken-op.test"
        ),
        "{log:?}"
    );
    // The listed name entered, then a TempError: not blocked either (the
    // normal decision applies: TempError_Defer is off).
    let (answer, log) = mail(config(&[], &[LISTED]), ELSEWHERE, "x@tempy.test").await;
    assert_eq!(answer, StageReply::Continue, "{log:?}");
    assert!(has(&log, "Temperror; identity=mailfrom"), "{log:?}");
}

#[tokio::test]
async fn a_whitelisted_client_is_never_blocked() {
    let mut c = config(&[LISTED], &[LISTED]);
    c.skip.whitelist = CidrList::new(vec!["198.51.100.0/24".parse().expect("a network")]);
    let (answer, log) = mail(c, OPERATOR_V4, "x@newspam.test").await;
    assert_eq!(answer, StageReply::Continue);
    assert!(has(&log, "SPF skipped for whitelisted relay"), "{log:?}");
    assert!(!has(&log, "block"), "{log:?}");
}

#[tokio::test]
async fn test_mode_logs_would_block_and_lets_the_decision_stand() {
    let mut c = config(&[LISTED], &[LISTED]);
    c.block.authorized_by_test = true;
    c.block.includes_test = true;
    let (mut s, shared, metrics) = session(c, OPERATOR_V4);
    s.helo("mail.sender.test");
    assert_eq!(
        s.mail("<x@newspam.test>", &no_macros).await,
        StageReply::Continue
    );
    let log = shared.logger().lines();
    assert!(
        has(&log, &format!("would block (includes {LISTED})")),
        "{log:?}"
    );
    assert!(
        has(&log, &format!("would block (authorized_by {LISTED})")),
        "{log:?}"
    );
    let text = metrics.render();
    for rule in ["includes", "authorized_by"] {
        assert!(
            text.contains(&format!(
                "spfmilter_blocked_total{{rule=\"{rule}\",mode=\"test\"}} 1"
            )),
            "{text}"
        );
    }
    // One rule enforced, the other watched.
    let mut c = config(&[LISTED], &[LISTED]);
    c.block.includes_test = true;
    let (answer, log) = mail(c, OPERATOR_V4, "x@newspam.test").await;
    assert_eq!(answer, block_reply(LISTED));
    assert!(has(&log, "would block (includes"), "{log:?}");
    assert!(has(&log, "NOQUEUE: blocked (authorized_by"), "{log:?}");
    // [policy] test_mode watches both.
    let mut c = config(&[LISTED], &[LISTED]);
    c.policy.test_mode = true;
    let (answer, log) = mail(c, OPERATOR_V4, "x@newspam.test").await;
    assert_eq!(answer, StageReply::Continue);
    assert!(has(&log, "would block (includes"), "{log:?}");
}

#[tokio::test]
async fn the_reply_is_configurable() {
    let mut c = config(&[LISTED], &[]);
    c.block.reply = "{rule}: {name} 100%".parse().expect("a template");
    c.policy.enhanced_status_codes = false;
    let (answer, _) = mail(c, OPERATOR_V4, "a@toramaki.test").await;
    assert_eq!(
        answer,
        StageReply::Reject(Reply {
            code: 550,
            enhanced: None,
            text: format!("authorized_by: {LISTED} 100%"),
        })
    );
}

#[tokio::test]
async fn enforced_blocks_are_counted_by_rule() {
    let (mut s, _, metrics) = session(config(&[], &[LISTED]), OPERATOR_V4);
    s.helo("mail.sender.test");
    assert_eq!(
        s.mail("<x@newspam.test>", &no_macros).await,
        block_reply(LISTED)
    );
    let text = metrics.render();
    assert!(
        text.contains("spfmilter_blocked_total{rule=\"includes\",mode=\"enforce\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("spfmilter_messages_total{action=\"reject\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn via_is_recorded_only_when_asked() {
    let request = Request {
        ip: OPERATOR_V4.parse().expect("an address"),
        helo: "mail.sender.test",
        sender: "x@mac.burn-oxygen.test",
        receiver: None,
    };
    let plain = Evaluator::new(zone());
    let outcome = plain.check(&request, Identity::MailFrom).await;
    assert!(outcome.via.is_empty(), "{outcome:?}");
    let tracking = Evaluator::new(zone()).with_via(true);
    let outcome = tracking.check(&request, Identity::MailFrom).await;
    // The name as expanded, not as written (RFC 7208 §7.3).
    assert_eq!(outcome.via, [LISTED]);
}
