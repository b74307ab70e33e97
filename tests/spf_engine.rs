//! Behaviour of the SPF engine beyond the OpenSPF suite: configurable
//! limits, the overall time limit, identities (IDN, IPv4-mapped clients,
//! null sender), the result's details and the trace.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use spfmilter::dns::{Answer, Lookup, Mx, Txt, Zone};
use spfmilter::spf::{Evaluator, Identity, Limits, Request, SpfResult};

fn request<'a>(ip: &str, helo: &'a str, sender: &'a str) -> Request<'a> {
    Request {
        ip: ip.parse().unwrap(),
        helo,
        sender,
        receiver: None,
    }
}

/// A chain of includes each of which costs one lookup.
fn include_chain(len: usize) -> Zone {
    let mut zone = Zone::new();
    for i in 0..len {
        zone = zone.with_txt(
            &format!("l{i}.chain.test"),
            &format!("v=spf1 include:l{}.chain.test -all", i + 1),
        );
    }
    zone.with_txt(
        &format!("l{len}.chain.test"),
        "v=spf1 ip4:192.0.2.0/24 -all",
    )
}

#[tokio::test]
async fn the_lookup_limit_is_ten_by_default_and_configurable() {
    // l0 includes l1 … l10: 10 include terms, the last record matches.
    let zone = include_chain(10);
    let at_limit = Evaluator::new(zone.clone());
    let o = at_limit
        .check(
            &request("192.0.2.1", "h.test", "a@l0.chain.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(o.result, SpfResult::Pass, "{o:?}");
    assert_eq!(o.dns_lookups, 10);

    let zone = include_chain(11);
    let o = Evaluator::new(zone.clone())
        .check(
            &request("192.0.2.1", "h.test", "a@l0.chain.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(o.result, SpfResult::PermError);
    assert!(
        o.problem
            .unwrap()
            .contains("more than 10 DNS-querying terms")
    );

    let raised = Evaluator::new(zone).with_limits(Limits {
        dns_lookups: 11,
        ..Limits::default()
    });
    let o = raised
        .check(
            &request("192.0.2.1", "h.test", "a@l0.chain.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(o.result, SpfResult::Pass);
}

#[tokio::test]
async fn the_void_limit_is_two_by_default_and_configurable() {
    let zone = Zone::new().with_txt(
        "void.test",
        "v=spf1 a:n1.void.test a:n2.void.test a:n3.void.test ip4:192.0.2.0/24 -all",
    );
    let o = Evaluator::new(zone.clone())
        .check(
            &request("192.0.2.1", "h.test", "a@void.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(o.result, SpfResult::PermError);
    assert_eq!(o.void_lookups, 3);
    assert!(o.problem.unwrap().contains("void"));

    let o = Evaluator::new(zone)
        .with_limits(Limits {
            void_lookups: 3,
            ..Limits::default()
        })
        .check(
            &request("192.0.2.1", "h.test", "a@void.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(o.result, SpfResult::Pass);
    assert_eq!((o.dns_lookups, o.void_lookups), (3, 3));
}

/// RFC 7208 §4.6.4 counts void lookups per *term*: an `mx` term whose MX
/// hosts have no AAAA record for an IPv6 client is one term that matched
/// nothing, not one void lookup per host. pyspf counts every empty answer
/// (its issues #40, #41, #44), so this record is PermError there for an
/// IPv6 client; here it gets its real result
/// (docs/policyd-spf-compatibility.md §5).
#[tokio::test]
async fn void_lookups_are_counted_per_term_not_per_empty_answer() {
    let zone = Zone::new()
        .with_txt("v4only.test", "v=spf1 mx a -all")
        .with_mx("v4only.test", 10, "mx1.v4only.test")
        .with_mx("v4only.test", 20, "mx2.v4only.test")
        .with_mx("v4only.test", 30, "mx3.v4only.test")
        .with_ip("mx1.v4only.test", "192.0.2.1")
        .with_ip("mx2.v4only.test", "192.0.2.2")
        .with_ip("mx3.v4only.test", "192.0.2.3")
        .with_ip("v4only.test", "192.0.2.4");
    let o = Evaluator::new(zone.clone())
        .check(
            &request("2001:db8::1", "h.test", "a@v4only.test"),
            Identity::MailFrom,
        )
        .await;
    // Three empty AAAA answers under `mx`, one under `a`: pyspf's count
    // would be four, over the limit of two.
    assert_eq!(o.result, SpfResult::Fail, "{o:?}");
    assert!(o.void_lookups <= 2, "{o:?}");
    // The IPv4 clients the record names still pass.
    let o = Evaluator::new(zone)
        .check(
            &request("192.0.2.3", "h.test", "a@v4only.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(o.result, SpfResult::Pass, "{o:?}");
}

/// Answers every query after a delay, counting the queries that finished.
#[derive(Clone)]
struct SlowLookup {
    zone: Zone,
    delay: Duration,
    completed: Arc<AtomicUsize>,
}

impl SlowLookup {
    async fn slow<T>(&self, answer: impl Future<Output = T>) -> T {
        tokio::time::sleep(self.delay).await;
        let answer = answer.await;
        self.completed.fetch_add(1, Ordering::SeqCst);
        answer
    }
}

impl Lookup for SlowLookup {
    fn txt(&self, name: &str) -> impl Future<Output = Answer<Txt>> + Send {
        self.slow(self.zone.txt(name))
    }
    fn a(&self, name: &str) -> impl Future<Output = Answer<Ipv4Addr>> + Send {
        self.slow(self.zone.a(name))
    }
    fn aaaa(&self, name: &str) -> impl Future<Output = Answer<Ipv6Addr>> + Send {
        self.slow(self.zone.aaaa(name))
    }
    fn mx(&self, name: &str) -> impl Future<Output = Answer<Mx>> + Send {
        self.slow(self.zone.mx(name))
    }
    fn ptr(&self, ip: IpAddr) -> impl Future<Output = Answer<String>> + Send {
        self.slow(self.zone.ptr(ip))
    }
}

#[tokio::test(start_paused = true)]
async fn the_time_limit_gives_temperror_and_cancels_queries_in_flight() {
    let completed = Arc::new(AtomicUsize::new(0));
    let lookup = SlowLookup {
        zone: include_chain(3),
        delay: Duration::from_secs(4),
        completed: completed.clone(),
    };
    // Four TXT lookups of 4 s each do not fit in 10 s.
    let evaluator = Evaluator::new(lookup).with_limits(Limits {
        time: Duration::from_secs(10),
        ..Limits::default()
    });
    let started = tokio::time::Instant::now();
    let o = evaluator
        .check(
            &request("192.0.2.1", "h.test", "a@l0.chain.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(o.result, SpfResult::TempError);
    assert!(
        o.problem.as_deref().unwrap().contains("time limit"),
        "{o:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    // The third lookup was in flight at 10 s; it must never complete.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(completed.load(Ordering::SeqCst), 2);
    // The counts up to the cut-off are still reported.
    assert_eq!(o.dns_lookups, 2);
}

#[tokio::test]
async fn ipv4_mapped_clients_are_evaluated_as_ipv4() {
    let zone = Zone::new().with_txt("m.test", "v=spf1 ip4:192.0.2.0/24 -all");
    let o = Evaluator::new(zone)
        .check(
            &request("::ffff:192.0.2.9", "h.test", "a@m.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(o.result, SpfResult::Pass);
    assert_eq!(o.mechanism.as_deref(), Some("+ip4:192.0.2.0/24"));
}

#[tokio::test]
async fn idn_domains_are_looked_up_as_a_labels() {
    // RFC 8616 §4: bücher.example is published as xn--bcher-kva.example.
    let zone = Zone::new().with_txt("xn--bcher-kva.example", "v=spf1 ip4:192.0.2.0/24 -all");
    let evaluator = Evaluator::new(zone);
    let o = evaluator
        .check(
            &request("192.0.2.9", "h.test", "kunde@bücher.example"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(o.result, SpfResult::Pass);
    assert_eq!(o.domain, "xn--bcher-kva.example");
    let o = evaluator
        .check(
            &request("198.51.100.1", "BÜCHER.example", ""),
            Identity::Helo,
        )
        .await;
    assert_eq!(o.result, SpfResult::Fail);
    assert_eq!(o.sender, "postmaster@xn--bcher-kva.example");
}

#[tokio::test]
async fn identities_helo_null_sender_and_missing_local_part() {
    let zone = Zone::new()
        .with_txt("mx.helo.test", "v=spf1 a -all")
        .with_ip("mx.helo.test", "192.0.2.1")
        .with_txt("exp.test", "v=spf1 -all exp=why.exp.test")
        .with_txt("why.exp.test", "%{l} at %{o} may not send from %{i}");
    let evaluator = Evaluator::new(zone);
    let helo = evaluator
        .check(
            &request("192.0.2.1", "mx.helo.test", "x@other.test"),
            Identity::Helo,
        )
        .await;
    assert_eq!(
        (helo.result, helo.sender.as_str()),
        (SpfResult::Pass, "postmaster@mx.helo.test")
    );
    let null = evaluator
        .check(
            &request("192.0.2.1", "mx.helo.test", ""),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(
        (null.result, null.domain.as_str()),
        (SpfResult::Pass, "mx.helo.test")
    );
    let no_local = evaluator
        .check(
            &request("192.0.2.7", "mx.helo.test", "@exp.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(no_local.result, SpfResult::Fail);
    assert_eq!(
        no_local.explanation.as_deref(),
        Some("postmaster at exp.test may not send from 192.0.2.7")
    );
    assert_eq!(no_local.mechanism.as_deref(), Some("-all"));
    let literal = evaluator
        .check(
            &request("192.0.2.1", "[192.0.2.1]", "a@[192.0.2.1]"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(literal.result, SpfResult::None);
    assert_eq!(literal.dns_lookups, 0);
}

#[tokio::test]
async fn the_default_explanation_is_configurable_and_only_for_fail() {
    let zone = Zone::new()
        .with_txt("f.test", "v=spf1 -all")
        .with_txt("s.test", "v=spf1 ~all");
    let evaluator =
        Evaluator::new(zone).with_default_explanation("Not allowed, see https://example.net/spf");
    let fail = evaluator
        .check(
            &request("192.0.2.1", "h.test", "a@f.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(
        fail.explanation.as_deref(),
        Some("Not allowed, see https://example.net/spf")
    );
    let softfail = evaluator
        .check(
            &request("192.0.2.1", "h.test", "a@s.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(softfail.result, SpfResult::SoftFail);
    assert_eq!(softfail.explanation, None);
}

#[tokio::test]
async fn neutral_default_and_errors_describe_themselves() {
    let zone = Zone::new()
        .with_txt("n.test", "v=spf1 ip4:198.51.100.0/24")
        .with_txt("bad.test", "v=spf1 ip4:192.0.2.300 -all")
        .with("tmp.test", spfmilter::dns::zone::Entry::Timeout);
    let evaluator = Evaluator::new(zone);
    let neutral = evaluator
        .check(
            &request("192.0.2.1", "h.test", "a@n.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(
        (neutral.result, neutral.mechanism.as_deref()),
        (SpfResult::Neutral, Some("default"))
    );
    let perm = evaluator
        .check(
            &request("192.0.2.1", "h.test", "a@bad.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(perm.result, SpfResult::PermError);
    let problem = perm.problem.unwrap();
    assert!(
        problem.contains("bad.test") && problem.contains("ip4:192.0.2.300"),
        "{problem}"
    );
    let temp = evaluator
        .check(
            &request("192.0.2.1", "h.test", "a@tmp.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(temp.result, SpfResult::TempError);
    assert!(temp.problem.unwrap().contains("TXT tmp.test"));
}

#[tokio::test]
async fn the_trace_shows_records_terms_answers_and_counts() {
    let zone = Zone::new()
        .with_txt("t.test", "v=spf1 a:nx.t.test include:_spf.t.test -all")
        .with_txt("_spf.t.test", "v=spf1 ip4:192.0.2.0/24 -all");
    let mut trace = Vec::new();
    let o = Evaluator::new(zone)
        .check_traced(
            &request("192.0.2.1", "h.test", "a@t.test"),
            Identity::MailFrom,
            &mut trace,
        )
        .await;
    assert_eq!(o.result, SpfResult::Pass);
    let text: Vec<String> = trace
        .iter()
        .map(|s| format!("{}{}", "  ".repeat(s.depth), s.text))
        .collect();
    let text = text.join("\n");
    for expected in [
        "TXT t.test: \"v=spf1 a:nx.t.test include:_spf.t.test -all\"",
        "A nx.t.test: no records",
        "DNS-querying term 1 of at most 10: a:nx.t.test",
        "void lookup 1 (A nx.t.test)",
        "DNS-querying term 2 of at most 10: include:_spf.t.test",
        "+a:nx.t.test: no match",
        "  TXT _spf.t.test",
        "  +ip4:192.0.2.0/24: match",
        "+include:_spf.t.test: match",
        "result pass",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[tokio::test]
async fn only_the_first_ten_ptr_names_are_validated() {
    // RFC 7208 §4.6.4: the names past the 10th are ignored, even the one
    // that would validate.
    let mut zone = Zone::new().with_txt("p.test", "v=spf1 ptr -all");
    for i in 0..10 {
        zone = zone.with_ptr("192.0.2.1", &format!("h{i}.elsewhere.test"));
    }
    let zone = zone
        .with_ptr("192.0.2.1", "mx.p.test")
        .with_ip("mx.p.test", "192.0.2.1");
    let o = Evaluator::new(zone.clone())
        .check(
            &request("192.0.2.1", "h.test", "a@p.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(o.result, SpfResult::Fail, "{o:?}");
    let o = Evaluator::new(zone)
        .with_limits(Limits {
            ptr_names: 11,
            ..Limits::default()
        })
        .check(
            &request("192.0.2.1", "h.test", "a@p.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(o.result, SpfResult::Pass);
}

#[tokio::test]
async fn the_p_macro_counts_no_void_lookups() {
    // No PTR record: %{p} is "unknown", and that lookup is not a term.
    let zone = Zone::new()
        .with_txt("pm.test", "v=spf1 exists:%{p}.ok.pm.test -all")
        .with_ip("unknown.ok.pm.test", "127.0.0.2");
    let o = Evaluator::new(zone)
        .check(
            &request("192.0.2.1", "h.test", "a@pm.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(o.result, SpfResult::Pass);
    assert_eq!((o.dns_lookups, o.void_lookups), (1, 0));
}

/// RFC 7208 §4.3 with RFC 1123 §2.1: a HELO argument that is no host name
/// (letters, digits, hyphens) gives "none" without a query, as the HELO
/// identity and as the null sender's MAIL FROM identity; the same text as a
/// MAIL FROM domain is still evaluated (§4.3 asks only for a well-formed
/// name there).
#[tokio::test]
async fn a_helo_that_is_no_host_name_is_not_evaluated() {
    let evil = "x;identity=mailfrom;.evilhelo.test";
    let zone = Zone::new()
        .with_txt(evil, "v=spf1 +all")
        .with_txt("my_host.evilhelo.test", "v=spf1 +all")
        .with_txt("-x.evilhelo.test", "v=spf1 +all")
        .with_txt("1mx.evilhelo.test", "v=spf1 +all");
    let completed = Arc::new(AtomicUsize::new(0));
    let evaluator = Evaluator::new(SlowLookup {
        zone,
        delay: Duration::ZERO,
        completed: Arc::clone(&completed),
    });
    for helo in [evil, "my_host.evilhelo.test", "-x.evilhelo.test"] {
        for (identity, sender) in [
            (Identity::Helo, "a@pass.test"),
            (Identity::MailFrom, ""),
            (Identity::MailFrom, "<>"),
        ] {
            let o = evaluator
                .check(&request("192.0.2.1", helo, sender), identity)
                .await;
            assert_eq!(
                o.result,
                SpfResult::None,
                "HELO {helo:?}, {identity}: {o:?}"
            );
            assert_eq!(o.dns_lookups, 0);
        }
    }
    assert_eq!(completed.load(Ordering::SeqCst), 0, "a query was sent");

    // A host name starting with a digit is one (RFC 1123 §2.1).
    let o = evaluator
        .check(
            &request("192.0.2.1", "1mx.evilhelo.test", ""),
            Identity::Helo,
        )
        .await;
    assert_eq!(o.result, SpfResult::Pass);
    // As a MAIL FROM domain, the name is evaluated.
    let o = evaluator
        .check(
            &request("192.0.2.1", "mx.pass.test", "a@my_host.evilhelo.test"),
            Identity::MailFrom,
        )
        .await;
    assert_eq!(o.result, SpfResult::Pass);
}
