//! Prefetch: once a record is fetched, the DNS queries of the terms it may
//! evaluate are started at once, side by side, instead of one at a time as
//! the evaluation reaches them. A cold include tree then costs about one
//! round trip per level instead of one per lookup.
//!
//! The evaluation itself is untouched: it walks the record strictly in the
//! order of RFC 7208 §4.6.2, counts every limit of §4.6.4 as it would
//! without prefetch, and asks the DNS for every answer it uses. A prefetch
//! only warms the layer below (a cache that keeps answers and lets a
//! question join an identical one in flight, [`Lookup::shares_answers`]):
//! the evaluation's own question then finds the answer kept or joins the
//! query in flight. Prefetched answers are never looked at by the
//! evaluation otherwise, so a prefetch that fails changes nothing: a
//! temporary error is not kept by the cache, and the evaluation asks again;
//! NXDOMAIN, NODATA and records are what the evaluation would have got.
//!
//! Nothing starts until the evaluation first has to wait for the DNS: a
//! warm evaluation, answered from the cache, does no prefetch work at all
//! (not even a look at the terms). From then on, what is prefetched for a
//! record of `domain` the evaluation fetched:
//!
//! * the TXT record of each `include` target and of the `redirect` target
//!   (unless the record has `all`, which makes `redirect` dead, §6.1), and,
//!   when such a TXT record arrives, the terms of the record it holds (so a
//!   tree costs a round trip per level);
//! * the A (or AAAA, for an IPv6 client) record of each `a` target and of
//!   each `exists` target (A always, §5.7);
//! * the MX record of each `mx` target and, when it arrives with at most
//!   the MX limit of names, the addresses of the exchanges (§5.4);
//! * terms after `all` are never reached and are skipped; `ptr` and `exp`
//!   are not prefetched (`ptr` is deprecated, §5.5; `exp` is only read for
//!   a fail, §6.2).
//!
//! A domain-spec with macros is expanded as the evaluation will expand it
//! (§7.3), from the request alone; one using `%{p}` (which needs lookups of
//! its own, §7.3) or `%{t}` (the time, which may change before the
//! evaluation expands it) is not prefetched.
//!
//! Bounds (§4.6.4: never more queries than the evaluation could make):
//! per evaluation, at most the DNS-querying term limit (10) of term
//! queries and at most the MX-name limit (10) of exchange address queries;
//! each name and type is asked at most once. Prefetches live inside the
//! evaluation's future, polled with it: they end when it ends (a result, the
//! time limit, or the caller dropping it), which also bounds their number
//! in flight per evaluation; and at most [`MAX_IN_FLIGHT`] run at once in
//! the whole process, past which new ones are not started.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use crate::dns::{Answer, Lookup, Mx, Txt};
use crate::spf::identity::{self, SenderParts};
use crate::spf::macros::MacroLetter;
use crate::spf::record::{DomainSpec, Mechanism, Record, is_spf1};

use super::{Limits, Parsed, macro_context, parse_into_memo};

/// At most this many prefetch queries in flight in the whole process (all
/// evaluations of one evaluator together). Twenty per evaluation at most,
/// so this leaves a hundred cold evaluations prefetching fully at once.
pub const MAX_IN_FLIGHT: usize = 2048;

/// The process-wide count of prefetch queries in flight, shared by the
/// clones of one evaluator.
#[derive(Debug, Default)]
pub(super) struct Gate {
    in_flight: AtomicUsize,
}

impl Gate {
    /// A place for one more query, if the process has room for it.
    fn enter(&self) -> Option<Permit<'_>> {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Permit(self))
    }

    #[cfg(test)]
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// One query's place in the [`Gate`], given back when it ends or is
/// dropped.
struct Permit<'g>(&'g Gate);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A record the evaluation fetched from the DNS (its TXT answer and the
/// index of the SPF record in it), handed to the [`Prefetcher`].
struct Fetched {
    domain: String,
    txts: Arc<[Txt]>,
    index: usize,
}

/// Where the evaluation leaves the records it fetched. The evaluation and
/// the [`Prefetcher`] are polled one after the other by one task, so the
/// lock is never contended; it makes the queue shareable between them.
#[derive(Default)]
pub(super) struct Queue {
    fetched: Mutex<Vec<Fetched>>,
    /// Set when the evaluation first has to wait: only from then on are
    /// records handed over.
    waited: AtomicBool,
}

impl Queue {
    pub(super) fn mark_waited(&self) {
        self.waited.store(true, Ordering::Relaxed);
    }

    pub(super) fn waited(&self) -> bool {
        self.waited.load(Ordering::Relaxed)
    }

    pub(super) fn push(&self, domain: &str, txts: &Arc<[Txt]>, index: usize) {
        self.fetched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Fetched {
                domain: domain.to_owned(),
                txts: Arc::clone(txts),
                index,
            });
    }

    fn take(&self) -> Vec<Fetched> {
        std::mem::take(&mut *self.fetched.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The question of one prefetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Txt,
    A,
    Aaaa,
    Mx,
}

/// What a finished prefetch hands back: what to prefetch after it.
enum Done {
    Txt(String, Answer<Txt>),
    Mx(Answer<Mx>),
    Nothing,
}

type Running<'e> = Pin<Box<dyn Future<Output = Done> + Send + 'e>>;

/// The prefetches of one evaluation: polled by the evaluation's future
/// after the evaluation itself, dropped with it.
pub(super) struct Prefetcher<'e, L> {
    lookup: &'e L,
    limits: &'e Limits,
    gate: &'e Gate,
    queue: &'e Queue,
    ip: IpAddr,
    parts: &'e SenderParts,
    helo: &'e str,
    receiver: &'e str,
    running: Vec<Running<'e>>,
    /// Every question asked so far (each is asked once).
    asked: Vec<(Kind, String)>,
    /// The domains whose records' terms were prefetched.
    expanded: Vec<String>,
    terms_left: u32,
    mx_names_left: usize,
}

/// The request's values a [`Prefetcher`] needs to expand macros.
pub(super) struct RequestParts<'e> {
    pub ip: IpAddr,
    pub parts: &'e SenderParts,
    pub helo: &'e str,
    pub receiver: &'e str,
}

impl<'e, L: Lookup> Prefetcher<'e, L> {
    pub(super) fn new(
        lookup: &'e L,
        limits: &'e Limits,
        gate: &'e Gate,
        queue: &'e Queue,
        request: RequestParts<'e>,
    ) -> Self {
        Self {
            lookup,
            limits,
            gate,
            queue,
            ip: request.ip,
            parts: request.parts,
            helo: request.helo,
            receiver: request.receiver,
            running: Vec::new(),
            asked: Vec::new(),
            expanded: Vec::new(),
            terms_left: limits.dns_lookups,
            mx_names_left: limits.mx_names,
        }
    }

    /// Starts the prefetches of the records the evaluation fetched since
    /// the last call and drives those in flight, starting the follow-ups
    /// of those that finish. Never ready: the evaluation decides when all
    /// of it ends.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) {
        for fetched in self.queue.take() {
            self.expand(&fetched.domain, &fetched.txts, fetched.index);
        }
        let mut i = 0;
        while i < self.running.len() {
            match self.running[i].as_mut().poll(cx) {
                Poll::Pending => i += 1,
                Poll::Ready(done) => {
                    // The last one takes its place and is polled next;
                    // follow-ups are appended and polled in this loop too.
                    drop(self.running.swap_remove(i));
                    self.follow(done);
                }
            }
        }
    }

    fn follow(&mut self, done: Done) {
        match done {
            Done::Txt(domain, Ok(txts)) => {
                // §4.5: exactly one SPF record, or the evaluation stops there.
                let mut spf = (0..txts.len()).filter(|&i| is_spf1(&txts[i]));
                if let (Some(index), None) = (spf.next(), spf.next()) {
                    self.expand(&domain, &txts, index);
                }
            }
            Done::Mx(Ok(exchanges)) => {
                // More names than the limit is permerror (§4.6.4): the
                // evaluation looks at none of them.
                if exchanges.len() <= self.limits.mx_names {
                    for mx in exchanges.iter() {
                        if self.mx_names_left == 0 {
                            break;
                        }
                        let kind = self.address_kind();
                        if self.ask(kind, &mx.exchange) {
                            self.mx_names_left -= 1;
                        }
                    }
                }
            }
            Done::Txt(_, Err(_)) | Done::Mx(Err(_)) | Done::Nothing => {}
        }
    }

    fn address_kind(&self) -> Kind {
        match self.ip {
            IpAddr::V4(_) => Kind::A,
            IpAddr::V6(_) => Kind::Aaaa,
        }
    }

    /// Starts the queries of the terms of `domain`'s record, `txts[index]`
    /// (parsed into the answer's memo, as the evaluation parses it), once
    /// per domain.
    fn expand(&mut self, domain: &str, txts: &Arc<[Txt]>, index: usize) {
        if self.terms_left == 0 || self.expanded.iter().any(|d| d == domain) {
            return;
        }
        self.expanded.push(domain.to_owned());
        if parse_into_memo(self.lookup, domain, txts, index).is_none() {
            return;
        }
        let Some(Ok(record)) = txts[index].memo_get::<Parsed>() else {
            return;
        };
        self.terms(domain, record);
    }

    fn terms(&mut self, domain: &str, record: &Record) {
        let address = self.address_kind();
        for directive in &record.directives {
            if self.terms_left == 0 {
                return;
            }
            let (kind, spec) = match &directive.mechanism {
                // Nothing after `all` is evaluated, redirect included (§6.1).
                Mechanism::All => return,
                Mechanism::Ip4(_) | Mechanism::Ip6(_) | Mechanism::Ptr(_) => continue,
                Mechanism::Include(spec) => (Kind::Txt, Some(spec)),
                Mechanism::A(spec, _) => (address, spec.as_ref()),
                Mechanism::Mx(spec, _) => (Kind::Mx, spec.as_ref()),
                Mechanism::Exists(spec) => (Kind::A, Some(spec)),
            };
            self.term(kind, spec, domain);
        }
        if let Some(redirect) = &record.redirect
            && self.terms_left > 0
        {
            self.term(Kind::Txt, Some(redirect), domain);
        }
    }

    fn term(&mut self, kind: Kind, spec: Option<&DomainSpec>, domain: &str) {
        let name = match spec {
            None => Some(domain.to_owned()),
            Some(spec) => self.expand_spec(spec, domain),
        };
        if let Some(name) = name
            && self.ask(kind, &name)
        {
            self.terms_left -= 1;
        }
    }

    /// The name a domain-spec expands to (§7.3), as the evaluation will
    /// expand it, or `None` when that cannot be known now.
    fn expand_spec(&self, spec: &DomainSpec, domain: &str) -> Option<String> {
        if let Some(name) = spec.literal_name() {
            return Some(name.to_owned());
        }
        let macros = spec.macros();
        if macros.uses(MacroLetter::ValidatedPtr) || macros.uses(MacroLetter::Timestamp) {
            return None;
        }
        let ctx = macro_context(self.parts, self.ip, self.helo, self.receiver, domain);
        identity::query_name(&macros.expand(&ctx))
    }

    /// Starts the query `kind` of `name` unless it was asked already or
    /// the process has too many in flight. True if it was started.
    fn ask(&mut self, kind: Kind, name: &str) -> bool {
        if self
            .asked
            .iter()
            .any(|(k, n)| *k == kind && n.eq_ignore_ascii_case(name))
        {
            return false;
        }
        let Some(permit) = self.gate.enter() else {
            return false;
        };
        self.asked.push((kind, name.to_owned()));
        let lookup = self.lookup;
        let name = name.to_owned();
        let running: Running<'e> = match kind {
            Kind::Txt => Box::pin(async move {
                let answer = lookup.txt(&name).await;
                drop(permit);
                Done::Txt(name, answer)
            }),
            Kind::Mx => Box::pin(async move {
                let answer = lookup.mx(&name).await;
                drop(permit);
                Done::Mx(answer)
            }),
            Kind::A => Box::pin(async move {
                let _ = lookup.a(&name).await;
                drop(permit);
                Done::Nothing
            }),
            Kind::Aaaa => Box::pin(async move {
                let _ = lookup.aaaa(&name).await;
                drop(permit);
                Done::Nothing
            }),
        };
        self.running.push(running);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    use super::*;
    use crate::dns::cache::{CacheOptions, Source, Sourced};
    use crate::dns::{CachingLookup, DnsError, Zone};
    use crate::spf::eval::{Evaluator, Request};
    use crate::spf::outcome::{Identity, SpfOutcome, SpfResult};

    /// Every answer of `zone` after [`DELAY`], as from a distant
    /// resolver, counting the queries and the longest chain of queries
    /// each started after the previous one ended: the round trips an
    /// evaluation waited for in sequence. (Time is paused in these tests:
    /// the delay only orders events, nothing waits.)
    struct Delayed {
        zone: Zone,
        queries: std::sync::Mutex<Vec<String>>,
        /// How many queries were in sequence, at most, so far.
        rounds: AtomicU32,
        /// Names whose first query fails with a temporary error.
        fail_once: std::sync::Mutex<HashMap<String, bool>>,
        /// Names answered only after this much longer.
        slow: Vec<(String, Duration)>,
    }

    const DELAY: Duration = Duration::from_millis(50);

    impl Delayed {
        fn new(zone: Zone) -> Self {
            Self {
                zone,
                queries: Default::default(),
                rounds: AtomicU32::new(0),
                fail_once: Default::default(),
                slow: Vec::new(),
            }
        }

        /// Waits like a round trip; `Err` for a name failing once.
        async fn round_trip(&self, kind: &str, name: &str) -> Result<(), DnsError> {
            let start = self.rounds.load(Ordering::SeqCst);
            self.queries.lock().unwrap().push(format!("{kind} {name}"));
            let extra = self
                .slow
                .iter()
                .find(|(n, _)| n == name)
                .map_or(Duration::ZERO, |(_, d)| *d);
            tokio::time::sleep(DELAY + extra).await;
            self.rounds.fetch_max(start + 1, Ordering::SeqCst);
            let fails = self
                .fail_once
                .lock()
                .unwrap()
                .get_mut(name)
                .map(|failed| !std::mem::replace(failed, true));
            if fails == Some(true) {
                return Err(DnsError::Temporary("SERVFAIL (test)".into()));
            }
            Ok(())
        }

        fn queries(&self) -> Vec<String> {
            self.queries.lock().unwrap().clone()
        }
    }

    macro_rules! delayed {
        ($fn:ident, $kind:literal, $ty:ty) => {
            async fn $fn(&self, name: &str) -> Sourced<$ty> {
                if let Err(e) = self.round_trip($kind, name).await {
                    return (Err(e), Duration::ZERO);
                }
                self.zone.$fn(name).await
            }
        };
    }

    impl Source for Delayed {
        delayed!(txt_with_ttl, "TXT", Txt);
        delayed!(a_with_ttl, "A", Ipv4Addr);
        delayed!(aaaa_with_ttl, "AAAA", Ipv6Addr);
        delayed!(mx_with_ttl, "MX", Mx);
        async fn ptr_with_ttl(&self, ip: IpAddr) -> Sourced<String> {
            if let Err(e) = self.round_trip("PTR", &ip.to_string()).await {
                return (Err(e), Duration::ZERO);
            }
            self.zone.ptr_with_ttl(ip).await
        }
    }

    /// A tree like a large sender's: three includes, one of them two levels
    /// deeper with includes of its own, ip4/ip6 ranges, and an mx that
    /// the client matches, last. In RFC order the evaluation asks: TXT
    /// top, a, b, b1, b11, b2, c, MX top, A mx.top (9 queries, 7 counted
    /// terms: six includes and the mx).
    fn tree() -> Zone {
        Zone::new()
            .with_txt(
                "top.test",
                "v=spf1 ip4:198.51.100.0/24 include:a.test include:b.test include:c.test mx -all",
            )
            .with_txt(
                "a.test",
                "v=spf1 ip4:203.0.113.0/24 ip6:2001:db8:a::/48 ~all",
            )
            .with_txt("b.test", "v=spf1 include:b1.test include:b2.test ~all")
            .with_txt(
                "b1.test",
                "v=spf1 include:b11.test ip6:2001:db8:b1::/48 ~all",
            )
            .with_txt("b11.test", "v=spf1 ip4:192.0.2.0/28 ~all")
            .with_txt("b2.test", "v=spf1 ip4:192.0.2.64/26 ~all")
            .with_txt("c.test", "v=spf1 ip4:198.18.0.0/15 ~all")
            .with_mx("top.test", 10, "mx.top.test")
            .with_ip("mx.top.test", "192.0.2.200")
    }

    type Cache = CachingLookup<Delayed>;

    fn evaluator(source: Delayed, prefetch: bool) -> Evaluator<Cache> {
        Evaluator::new(CachingLookup::new(source, CacheOptions::default())).with_prefetch(prefetch)
    }

    async fn check(evaluator: &Evaluator<Cache>, ip: &str, domain: &str) -> SpfOutcome {
        let sender = format!("user@{domain}");
        let request = Request {
            ip: ip.parse().unwrap(),
            helo: "mail.client.test",
            sender: &sender,
            receiver: None,
        };
        evaluator.check(&request, Identity::MailFrom).await
    }

    fn rounds(evaluator: &Evaluator<Cache>) -> u32 {
        evaluator.lookup().source().rounds.load(Ordering::SeqCst)
    }

    fn in_flight(evaluator: &Evaluator<Cache>) -> usize {
        evaluator.prefetch.as_deref().map_or(0, Gate::in_flight)
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_tree_takes_a_round_trip_per_level_instead_of_per_lookup() {
        let plain = evaluator(Delayed::new(tree()), false);
        let outcome = check(&plain, "192.0.2.200", "top.test").await;
        assert_eq!(outcome.result, SpfResult::Pass);
        assert_eq!(outcome.mechanism.as_deref(), Some("+mx"));
        let sequence = plain.lookup().source().queries();
        assert_eq!(
            sequence,
            [
                "TXT top.test",
                "TXT a.test",
                "TXT b.test",
                "TXT b1.test",
                "TXT b11.test",
                "TXT b2.test",
                "TXT c.test",
                "MX top.test",
                "A mx.top.test"
            ]
        );
        assert_eq!(rounds(&plain), 9, "one query after the other");

        let prefetching = evaluator(Delayed::new(tree()), true);
        let fast = check(&prefetching, "192.0.2.200", "top.test").await;
        assert_eq!(
            (
                fast.result,
                &fast.mechanism,
                fast.dns_lookups,
                fast.void_lookups
            ),
            (
                outcome.result,
                &outcome.mechanism,
                outcome.dns_lookups,
                outcome.void_lookups
            )
        );
        assert_eq!(outcome.dns_lookups, 7);
        // top; then a, b, c and MX top together; then b1, b2 and the
        // exchange's A; then b11: four levels.
        assert_eq!(rounds(&prefetching), 4);
        // The same questions, each asked once.
        let mut asked = prefetching.lookup().source().queries();
        let mut expected = sequence.clone();
        asked.sort();
        expected.sort();
        assert_eq!(asked, expected);
        assert_eq!(in_flight(&prefetching), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_warm_record_starts_no_prefetch_and_a_cache_hit_path_is_unchanged() {
        let prefetching = evaluator(Delayed::new(tree()), true);
        check(&prefetching, "192.0.2.200", "top.test").await;
        let before = prefetching.lookup().source().queries().len();
        let outcome = check(&prefetching, "192.0.2.200", "top.test").await;
        assert_eq!(outcome.result, SpfResult::Pass);
        assert_eq!(prefetching.lookup().source().queries().len(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn prefetch_asks_no_more_than_the_terms_a_pass_short_cuts() {
        // The client is in b11's range: the evaluation stops there, before
        // b2, c and the mx; prefetch asked for those too, nothing else.
        let plain = evaluator(Delayed::new(tree()), false);
        let outcome = check(&plain, "192.0.2.1", "top.test").await;
        assert_eq!(outcome.result, SpfResult::Pass);
        assert_eq!(plain.lookup().source().queries().len(), 5);

        let prefetching = evaluator(Delayed::new(tree()), true);
        let fast = check(&prefetching, "192.0.2.1", "top.test").await;
        assert_eq!(
            (fast.result, fast.dns_lookups, fast.void_lookups),
            (outcome.result, outcome.dns_lookups, outcome.void_lookups)
        );
        let asked = prefetching.lookup().source().queries();
        assert!(asked.len() <= 9, "{asked:?}");
        assert!(!asked.iter().any(|q| q.starts_with("PTR")), "{asked:?}");
        assert_eq!(in_flight(&prefetching), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn eleven_includes_permerror_with_the_same_count_and_queries() {
        let mut zone = Zone::new();
        let includes: Vec<String> = (1..=11).map(|i| format!("include:i{i}.test")).collect();
        zone = zone.with_txt("many.test", &format!("v=spf1 {} -all", includes.join(" ")));
        for i in 1..=11 {
            zone = zone.with_txt(&format!("i{i}.test"), "v=spf1 ?all");
        }
        let mut outcomes = Vec::new();
        for prefetch in [false, true] {
            let evaluator = evaluator(Delayed::new(zone.clone()), prefetch);
            let outcome = check(&evaluator, "192.0.2.1", "many.test").await;
            // RFC 7208 §4.6.4: the 11th DNS-querying term is a permerror,
            // before its query: the record and ten includes are asked.
            assert_eq!(outcome.result, SpfResult::PermError);
            assert_eq!(outcome.dns_lookups, 11);
            let asked = evaluator.lookup().source().queries();
            assert_eq!(asked.len(), 11, "prefetch {prefetch}: {asked:?}");
            assert!(!asked.contains(&"TXT i11.test".to_owned()), "{asked:?}");
            outcomes.push((outcome.result, outcome.dns_lookups, outcome.void_lookups));
        }
        assert_eq!(outcomes[0], outcomes[1]);
    }

    #[tokio::test(start_paused = true)]
    async fn more_terms_than_the_limit_are_not_all_prefetched() {
        // Twelve a: terms and a nested include: the evaluation asks for the
        // first ten names and stops; prefetch asks no more than that.
        let names: Vec<String> = (1..=12).map(|i| format!("a:h{i}.test")).collect();
        let zone = Zone::new().with_txt("wide.test", &format!("v=spf1 {} -all", names.join(" ")));
        for prefetch in [false, true] {
            let evaluator = evaluator(Delayed::new(zone.clone()), prefetch);
            let outcome = check(&evaluator, "192.0.2.1", "wide.test").await;
            // The first two names are void lookups (NXDOMAIN) and the third
            // exceeds the void limit of 2 (§4.6.4).
            assert_eq!(outcome.result, SpfResult::PermError);
            assert_eq!((outcome.dns_lookups, outcome.void_lookups), (3, 3));
            let asked = evaluator.lookup().source().queries();
            let expected = if prefetch { 11 } else { 4 };
            assert_eq!(asked.len(), expected, "prefetch {prefetch}: {asked:?}");
            assert!(!asked.iter().any(|q| q == "A h11.test" || q == "A h12.test"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn too_many_mx_names_are_not_prefetched() {
        // The MX answer arrives while the evaluation still waits for the
        // include: prefetch sees it first, and starts nothing for it.
        let mut zone = Zone::new()
            .with_txt("mx.test", "v=spf1 include:first.test mx -all")
            .with_txt("first.test", "v=spf1 ~all");
        for i in 1..=11 {
            zone = zone.with_mx("mx.test", i, &format!("mx{i}.mx.test"));
        }
        let evaluator = evaluator(Delayed::new(zone), true);
        let outcome = check(&evaluator, "192.0.2.1", "mx.test").await;
        assert_eq!(outcome.result, SpfResult::PermError);
        let mut asked = evaluator.lookup().source().queries();
        asked.sort();
        assert_eq!(asked, ["MX mx.test", "TXT first.test", "TXT mx.test"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_exchanges_of_a_prefetched_mx_are_prefetched() {
        let zone = Zone::new()
            .with_txt("mx.test", "v=spf1 include:first.test mx -all")
            .with_txt("first.test", "v=spf1 ~all")
            .with_mx("mx.test", 10, "mx1.mx.test")
            .with_mx("mx.test", 20, "mx2.mx.test")
            .with_ip("mx2.mx.test", "192.0.2.1");
        let evaluator = evaluator(Delayed::new(zone), true);
        let outcome = check(&evaluator, "192.0.2.1", "mx.test").await;
        assert_eq!(outcome.result, SpfResult::Pass);
        // TXT mx.test; TXT first.test with MX mx.test; both exchanges' A.
        assert_eq!(rounds(&evaluator), 3);
        assert_eq!(evaluator.lookup().source().queries().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_prefetch_does_not_change_the_result() {
        // c.test's first query fails. Prefetch asks for it long before the
        // evaluation gets there; the error is not kept, the evaluation asks
        // again and gets the record: the same outcome as with a DNS that
        // never failed.
        let reference = check(
            &evaluator(Delayed::new(tree()), false),
            "192.0.2.200",
            "top.test",
        )
        .await;
        let source = Delayed::new(tree());
        source
            .fail_once
            .lock()
            .unwrap()
            .insert("c.test".into(), false);
        let prefetching = evaluator(source, true);
        let outcome = check(&prefetching, "192.0.2.200", "top.test").await;
        assert_eq!(
            (
                outcome.result,
                &outcome.mechanism,
                outcome.dns_lookups,
                outcome.void_lookups
            ),
            (
                reference.result,
                &reference.mechanism,
                reference.dns_lookups,
                reference.void_lookups
            )
        );
        let asked = prefetching.lookup().source().queries();
        assert_eq!(
            asked.iter().filter(|q| *q == "TXT c.test").count(),
            2,
            "{asked:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn prefetches_end_with_their_evaluation() {
        // a.test matches; the prefetches of b, c (slow) and the MX are
        // still in flight when the evaluation ends: they are dropped with
        // it, and their answers are neither awaited nor kept.
        let mut source = Delayed::new(tree());
        source.slow.push(("c.test".into(), Duration::from_secs(5)));
        let prefetching = evaluator(source, true);
        let outcome = check(&prefetching, "203.0.113.5", "top.test").await;
        assert_eq!(outcome.result, SpfResult::Pass);
        assert!(
            prefetching
                .lookup()
                .source()
                .queries()
                .contains(&"TXT c.test".to_owned())
        );
        assert_eq!(in_flight(&prefetching), 0);
        // Long after the slow answer would have come, the cache holds only
        // the two answers the evaluation used (top.test and a.test).
        tokio::time::sleep(Duration::from_secs(10)).await;
        let stats = prefetching.lookup().stats();
        assert_eq!(prefetching.lookup().source().queries().len(), 5);
        assert_eq!((stats.misses, stats.entries), (5, 2), "{stats:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn macro_targets_are_prefetched_when_known_now() {
        // %{i} and %{d} are known when the record arrives; %{p} is not.
        let zone = Zone::new()
            .with_txt(
                "macro.test",
                "v=spf1 exists:%{i}.e.%{d} a:%{p}.p.test include:%{l}.inc.test -all",
            )
            .with_txt("user.inc.test", "v=spf1 ip4:192.0.2.1 -all")
            .with_ip("192.0.2.1.e.macro.test", "127.0.0.2");
        let prefetching = evaluator(Delayed::new(zone), true);
        let outcome = check(&prefetching, "192.0.2.1", "macro.test").await;
        assert_eq!(outcome.result, SpfResult::Pass);
        assert_eq!(outcome.mechanism.as_deref(), Some("+exists:%{i}.e.%{d}"));
        let asked = prefetching.lookup().source().queries();
        assert!(asked.contains(&"TXT user.inc.test".to_owned()), "{asked:?}");
        assert!(!asked.iter().any(|q| q.starts_with("PTR")), "{asked:?}");
        assert_eq!(rounds(&prefetching), 2);
    }
}
