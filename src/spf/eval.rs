//! check_host() (RFC 7208 §4–§6) with the processing limits of §4.6.4.

use std::borrow::Cow;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use compact_str::CompactString;

use crate::dns::cache::heap_cost;
use crate::dns::{DnsError, Lookup, Txt};

use super::identity::{self, SenderParts};
use super::macros::{MacroContext, MacroLetter, MacroString, MacroSyntax};
use super::outcome::{Identity, SpfOutcome, SpfResult};
use super::record::{DomainSpec, Qualifier, Record, SyntaxError, is_spf1};

mod mechanisms;
mod prefetch;

pub use mechanisms::is_same_or_subdomain;

/// Processing limits. The defaults are the RFC's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// §4.6.4: DNS-querying terms per evaluation (include, a, mx, ptr,
    /// exists, redirect).
    pub dns_lookups: u32,
    /// §4.6.4: "void lookups" (empty answer or NXDOMAIN) per evaluation.
    /// policyd-spf's `Void_Limit`.
    pub void_lookups: u32,
    /// §4.6.4: MX records looked at per `mx` (more is permerror).
    pub mx_names: usize,
    /// §4.6.4: PTR names looked at per `ptr` or `%{p}` (the rest ignored).
    pub ptr_names: usize,
    /// Wall-clock limit for one whole evaluation (policyd-spf
    /// `Lookup_Time`); exceeding it is temperror and cancels queries still
    /// in flight.
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            dns_lookups: 10,
            void_lookups: 2,
            mx_names: 10,
            ptr_names: 10,
            time: Duration::from_secs(20),
        }
    }
}

/// pyspf's (and so policyd-spf's) default explanation for `fail`.
pub const DEFAULT_EXPLANATION: &str = "SPF fail - not authorized";

/// The inputs of one check (RFC 7208 §4.1).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The SMTP client's address. IPv4-mapped IPv6 addresses are evaluated
    /// as IPv4 (what the client really is).
    pub ip: IpAddr,
    /// The HELO/EHLO argument (may be empty).
    pub helo: &'a str,
    /// The MAIL FROM address without angle brackets; empty for `<>`.
    pub sender: &'a str,
    /// The receiving domain for `%{r}`; "unknown" when `None`.
    pub receiver: Option<&'a str>,
}

/// One line of `--trace` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceStep {
    /// Nesting through include/redirect.
    pub depth: usize,
    pub text: String,
}

/// The SPF evaluator: a DNS source, limits and the default explanation.
/// Holds no per-message state. Parsed records are kept in the memo of the
/// TXT answer they came from (see [`Txt::memo`]), so they live exactly as
/// long as a cache keeps that answer, within its byte budget.
#[derive(Debug, Clone)]
pub struct Evaluator<L> {
    lookup: L,
    limits: Limits,
    /// Shared, so a fail's outcome takes a reference, not a copy.
    default_explanation: Arc<str>,
    /// Whether outcomes list the include/redirect targets entered
    /// ([`SpfOutcome::via`]); off, an evaluation records nothing.
    track_via: bool,
    /// Prefetch on ([`Evaluator::with_prefetch`]): the process-wide count
    /// of prefetches in flight, shared by clones.
    prefetch: Option<Arc<prefetch::Gate>>,
}

impl<L> Evaluator<L> {
    /// Whether outcomes list every `include:` and `redirect=` target the
    /// evaluation entered, at any depth ([`SpfOutcome::via`]). Off by
    /// default: the block rule `includes` turns it on.
    pub fn with_via(mut self, track: bool) -> Self {
        self.track_via = track;
        self
    }
}

impl<L: Lookup> Evaluator<L> {
    pub fn new(lookup: L) -> Self {
        Self {
            lookup,
            limits: Limits::default(),
            default_explanation: Arc::from(DEFAULT_EXPLANATION),
            track_via: false,
            prefetch: None,
        }
    }

    /// Prefetch (off by default): once an evaluation has had to wait for
    /// the DNS, start the queries of the terms each record it fetches may
    /// evaluate at once (see `src/spf/eval/prefetch.rs`). Only through a
    /// lookup that [shares answers](Lookup::shares_answers) (otherwise
    /// `on` is ignored); results and limits are the same either way.
    pub fn with_prefetch(mut self, on: bool) -> Self {
        self.prefetch = (on && self.lookup.shares_answers()).then(Arc::default);
        self
    }

    /// Whether this evaluator prefetches.
    pub fn prefetches(&self) -> bool {
        self.prefetch.is_some()
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn with_default_explanation(mut self, text: impl Into<String>) -> Self {
        self.default_explanation = Arc::from(text.into());
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn lookup(&self) -> &L {
        &self.lookup
    }

    /// Checks one identity of `request`.
    ///
    /// Not an `async fn` itself, so the caller gets the evaluation's future
    /// directly rather than one wrapping it (every wrapper is another copy
    /// of a large future).
    pub fn check<'s>(
        &'s self,
        request: &'s Request<'_>,
        identity: Identity,
    ) -> impl Future<Output = SpfOutcome> + Send + 's {
        self.run(request, identity, None, None)
    }

    /// Like [`Evaluator::check`], ending by `deadline` at the latest (when
    /// it comes before the time limit): a caller's budget for several
    /// evaluations (the milter's HELO and MAIL FROM checks together).
    pub fn check_until<'s>(
        &'s self,
        request: &'s Request<'_>,
        identity: Identity,
        deadline: Option<tokio::time::Instant>,
    ) -> impl Future<Output = SpfOutcome> + Send + 's {
        self.run(request, identity, None, deadline)
    }

    /// Like [`Evaluator::check`], recording every step in `trace`.
    pub fn check_traced<'s>(
        &'s self,
        request: &'s Request<'_>,
        identity: Identity,
        trace: &'s mut Vec<TraceStep>,
    ) -> impl Future<Output = SpfOutcome> + Send + 's {
        self.run(request, identity, Some(trace), None)
    }

    /// check_host() for an explicit domain and sender, as used by the
    /// policy's `Domain_Whitelist` (check_host(ip, D, postmaster@D)).
    pub async fn check_domain(&self, ip: IpAddr, domain: &str, helo: &str) -> SpfOutcome {
        let sender = format!("postmaster@{domain}");
        let request = Request {
            ip,
            helo,
            sender: &sender,
            receiver: None,
        };
        self.run(&request, Identity::MailFrom, None, None).await
    }

    async fn run(
        &self,
        request: &Request<'_>,
        identity: Identity,
        trace: Option<&mut Vec<TraceStep>>,
        deadline: Option<tokio::time::Instant>,
    ) -> SpfOutcome {
        let ip = identity::canonical_ip(request.ip);
        let parts = match identity {
            Identity::Helo => SenderParts::for_helo(request.helo),
            Identity::MailFrom => SenderParts::for_mail_from(request.sender, request.helo),
        };
        let queue = prefetch::Queue::default();
        let gate = self.prefetch.as_deref();
        let mut state = Eval {
            prefetch: gate.map(|_| &queue),
            evaluator: self,
            ip,
            parts: &parts,
            receiver: request.receiver.unwrap_or("unknown"),
            helo: request.helo,
            dns_lookups: 0,
            void_lookups: 0,
            depth: 0,
            trace,
            via: Vec::new(),
        };
        state.note(|| format!("identity {identity}: <sender>={} <ip>={ip}", parts.sender()));

        // §4.3: a malformed or single-label domain, or an address literal,
        // gives "none" before any DNS query.
        // A name from the HELO argument must be a host name, too.
        let from_helo = identity == Identity::Helo || identity::is_null_sender(request.sender);
        let valid = identity::validate_domain(parts.domain()).and_then(|domain| {
            if from_helo {
                identity::validate_host_name(&domain)?;
            }
            Ok(domain)
        });
        let host_result = match valid {
            Ok(domain) => {
                // The time limit is polled here rather than by a wrapping
                // future, so the evaluation's large future is not moved
                // into one. The timer is armed only once the evaluation
                // first has to wait: a warm evaluation answered from cache
                // never touches the timer wheel, and until then it only
                // burned CPU for microseconds.
                let limit = self.limits.time;
                let mut evaluation = std::pin::pin!(state.check_host(&domain, true));
                let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
                // Whether the caller's deadline, not our limit, ends it.
                let mut cut_by_deadline = false;
                // Polled after the evaluation, with it, and dropped with
                // it: prefetches never outlive the evaluation. Made when
                // the evaluation first waits (a warm one never does), and
                // boxed, so that it does not make every evaluation's
                // future larger.
                let mut prefetcher: Option<Box<prefetch::Prefetcher<'_, L>>> = None;
                let finished = std::future::poll_fn(|cx| {
                    if let Poll::Ready(host_result) = evaluation.as_mut().poll(cx) {
                        return Poll::Ready(Some(host_result));
                    }
                    if let Some(gate) = gate {
                        queue.mark_waited();
                        prefetcher
                            .get_or_insert_with(|| {
                                Box::new(prefetch::Prefetcher::new(
                                    &self.lookup,
                                    &self.limits,
                                    gate,
                                    &queue,
                                    prefetch::RequestParts {
                                        ip,
                                        parts: &parts,
                                        helo: request.helo,
                                        receiver: request.receiver.unwrap_or("unknown"),
                                    },
                                ))
                            })
                            .poll(cx);
                    }
                    let timer = timer.get_or_insert_with(|| {
                        let own = tokio::time::Instant::now() + limit;
                        let end = match deadline {
                            Some(deadline) if deadline < own => {
                                cut_by_deadline = true;
                                deadline
                            }
                            _ => own,
                        };
                        Box::pin(tokio::time::sleep_until(end))
                    });
                    timer.as_mut().poll(cx).map(|()| None)
                })
                .await;
                // Dropping the evaluation cancels every query in flight.
                finished.unwrap_or_else(|| {
                    Err(Fault::Temp(if cut_by_deadline {
                        "the time for the whole SPF decision ran out".to_owned()
                    } else {
                        format!(
                            "time limit of {} s for the SPF evaluation exceeded",
                            limit.as_secs_f32()
                        )
                    }))
                })
            }
            Err(why) => {
                state.note(|| format!("no check: {why}"));
                Ok(HostResult::none())
            }
        };

        let (result, mechanism, problem, explanation) = match host_result {
            Ok(host_result) => {
                let explanation = match host_result.explanation {
                    None if host_result.result == SpfResult::Fail => {
                        Some(Arc::clone(&self.default_explanation))
                    }
                    explanation => explanation,
                };
                let mechanism = host_result.matched;
                (host_result.result, mechanism, None, explanation)
            }
            Err(Fault::Perm(problem)) => (SpfResult::PermError, None, Some(problem), None),
            Err(Fault::Temp(problem)) => (SpfResult::TempError, None, Some(problem), None),
        };
        state.note(|| match &problem {
            Some(problem) => format!("result {result}: {problem}"),
            None => format!("result {result}"),
        });
        let (dns_lookups, void_lookups) = (state.dns_lookups, state.void_lookups);
        let via = state.via;
        let domain = CompactString::from(parts.domain());
        SpfOutcome {
            identity,
            result,
            mechanism,
            problem: problem.map(String::into_boxed_str),
            explanation,
            domain,
            sender: parts.into_sender(),
            dns_lookups,
            void_lookups,
            via,
        }
    }
}

/// What the memo of a TXT record holds: the record's parse.
type Parsed = Result<Record, SyntaxError>;

/// What a memo of `parsed` keeps alive: its box and the record's heap (or
/// the error's text), as [`Lookup::memo_made`] wants it.
fn memo_weight(parsed: &Parsed) -> usize {
    heap_cost(size_of::<Parsed>())
        + match parsed {
            Ok(record) => record.heap_size(),
            Err(SyntaxError(text)) => heap_cost(text.capacity()),
        }
}

/// Parses `txts[index]` into its memo, unless it holds a parse already,
/// and reports a new memo's weight to `lookup` (whose cache counts it).
/// Whether the record parsed; `None` if the memo holds something else.
fn parse_into_memo<L: Lookup>(
    lookup: &L,
    domain: &str,
    txts: &Arc<[Txt]>,
    index: usize,
) -> Option<Result<(), SyntaxError>> {
    let mut made = None;
    let memo = txts[index].memo(|bytes| {
        let parsed: Parsed = Record::parse(bytes);
        made = Some(memo_weight(&parsed));
        parsed
    });
    let memo = memo.map(|parsed| parsed.as_ref().map(|_| ()).map_err(Clone::clone));
    if let Some(bytes) = made {
        lookup.memo_made(domain, txts, bytes);
    }
    memo
}

/// A domain's parsed SPF record: kept in the memo of the cached TXT answer
/// (checked to be there when this is made), or owned.
enum RecordRef {
    Cached(Arc<[Txt]>, usize),
    Owned(Box<Record>),
}

impl RecordRef {
    fn record(&self) -> &Record {
        match self {
            RecordRef::Owned(record) => record,
            RecordRef::Cached(txts, index) => match txts[*index].memo_get::<Parsed>() {
                Some(Ok(record)) => record,
                // Not reached: a Cached record is only made once its memo
                // holds a parsed record. An empty record would give neutral.
                _ => &EMPTY_RECORD,
            },
        }
    }
}

static EMPTY_RECORD: Record = Record {
    directives: Vec::new(),
    redirect: None,
    exp: None,
};

/// What ends an evaluation early (§4.6, §4.4, §5).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    Perm(String),
    Temp(String),
}

/// The result of check_host() for one domain when it did not fault.
#[derive(Debug, Clone)]
struct HostResult {
    /// pass, fail, softfail, neutral or none.
    result: SpfResult,
    matched: Option<CompactString>,
    explanation: Option<Arc<str>>,
}

impl HostResult {
    fn none() -> Self {
        Self {
            result: SpfResult::None,
            matched: None,
            explanation: None,
        }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The state of one evaluation: counters shared across include/redirect
/// recursion (the limits of §4.6.4 are per evaluation, not per record).
struct Eval<'a, L> {
    evaluator: &'a Evaluator<L>,
    ip: IpAddr,
    parts: &'a SenderParts,
    helo: &'a str,
    receiver: &'a str,
    dns_lookups: u32,
    void_lookups: u32,
    depth: usize,
    trace: Option<&'a mut Vec<TraceStep>>,
    /// The include/redirect targets entered, when the evaluator tracks
    /// them (see [`Evaluator::with_via`]).
    via: Vec<CompactString>,
    /// Where records fetched from the DNS go for prefetch, when it is on.
    prefetch: Option<&'a prefetch::Queue>,
}

impl<'a, L: Lookup> Eval<'a, L> {
    /// Records a trace line; the text is only built when tracing.
    #[inline]
    fn note(&mut self, text: impl FnOnce() -> String) {
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.push(TraceStep {
                depth: self.depth,
                text: text(),
            });
        }
    }

    /// Remembers that the evaluation enters `target` through an include
    /// or redirect (only when the evaluator tracks it).
    #[inline]
    fn enter(&mut self, target: &str) {
        if self.evaluator.track_via {
            self.via.push(CompactString::from(target));
        }
    }

    /// check_host() for include and redirect: boxed, because it recurses
    /// (depth bounded by the lookup limit). The top level calls
    /// [`Eval::check_host`] directly and allocates nothing for it.
    fn check_host_boxed<'s>(
        &'s mut self,
        domain: &'s str,
        decisive: bool,
    ) -> BoxFuture<'s, Result<HostResult, Fault>>
    where
        'a: 's,
    {
        Box::pin(self.check_host(domain, decisive))
    }

    /// check_host() of §4 for `domain`. `decisive`: this level's result is
    /// the evaluation's (the top level, or a redirect from it), so its
    /// explanation (§6.2) and matched directive are worth building; an
    /// include's result only says match or no match (§5.2).
    async fn check_host(&mut self, domain: &str, decisive: bool) -> Result<HostResult, Fault> {
        let Some(fetched) = self.fetch_record(domain).await? else {
            return Ok(HostResult::none());
        };
        let record = fetched.record();
        for directive in &record.directives {
            if directive.mechanism.queries_dns() {
                self.count_lookup(directive.text())?;
            }
            // The mechanisms that need no DNS are decided here, without
            // building the (large) future of `matches`.
            let matched = match self.match_local(&directive.mechanism) {
                Some(matched) => matched,
                None => self.matches(&directive.mechanism, domain).await?,
            };
            self.note(|| {
                format!(
                    "{directive}: {}",
                    if matched { "match" } else { "no match" }
                )
            });
            if !matched {
                continue;
            }
            let result = match directive.qualifier {
                Qualifier::Pass => SpfResult::Pass,
                Qualifier::Fail => SpfResult::Fail,
                Qualifier::SoftFail => SpfResult::SoftFail,
                Qualifier::Neutral => SpfResult::Neutral,
            };
            // Only the deciding level's details matter: an include's
            // result is reduced to match / no match (§5.2).
            let explanation = match &record.exp {
                // Boxed, like the other rare paths below: their futures
                // are large, and every evaluation would otherwise move
                // them around (memcpy) even when they never run. Without
                // exp= (the usual case) there is nothing to box.
                Some(exp) if result == SpfResult::Fail && decisive => {
                    Box::pin(self.explain(exp, domain)).await.map(Arc::from)
                }
                _ => None,
            };
            return Ok(HostResult {
                result,
                // Received-SPF's `mechanism=` (qualifier always written),
                // prepared at parse time.
                matched: decisive.then(|| directive.shown().clone()),
                explanation,
            });
        }

        // §6.1: redirect applies only when no mechanism matched (a record
        // with "all" never gets here).
        if let Some(redirect) = &record.redirect {
            self.count_lookup("redirect")?;
            let target = self.expand_domain(redirect, domain).await?;
            self.note(|| format!("redirect={}", target.as_deref().unwrap_or("(invalid name)")));
            let Some(target) = target else {
                return Err(Fault::Perm(format!(
                    "redirect={redirect} in {domain} is not a valid domain name"
                )));
            };
            self.enter(&target);
            self.depth += 1;
            // §6.2: the exp= of the redirect target applies, not ours.
            let host_result = self.check_host_boxed(&target, decisive).await;
            self.depth -= 1;
            let host_result = host_result?;
            if host_result.result == SpfResult::None {
                // §6.1: a redirect to a domain without a record is permerror.
                return Err(Fault::Perm(format!(
                    "redirect target {target} (from {domain}) has no SPF record"
                )));
            }
            return Ok(host_result);
        }

        // §4.7: no match and no redirect: neutral.
        Ok(HostResult {
            result: SpfResult::Neutral,
            matched: Some(CompactString::const_new("default")),
            explanation: None,
        })
    }

    /// §4.4 and §4.5: the one SPF record of `domain`, or `None`.
    async fn fetch_record(&mut self, domain: &str) -> Result<Option<RecordRef>, Fault> {
        let answer = self.evaluator.lookup.txt(domain).await;
        let txts = match answer {
            Ok(txts) => txts,
            Err(DnsError::NxDomain) => {
                self.note(|| format!("TXT {domain}: NXDOMAIN"));
                return Ok(None);
            }
            Err(DnsError::Temporary(why)) => {
                self.note(|| format!("TXT {domain}: {why}"));
                return Err(Fault::Temp(format!(
                    "DNS error looking up TXT {domain}: {why}"
                )));
            }
        };
        // §4.5: exactly one record may start with v=spf1.
        let mut spf = (0..txts.len()).filter(|&i| is_spf1(&txts[i]));
        let Some(index) = spf.next() else {
            self.note(|| format!("TXT {domain}: no v=spf1 record"));
            return Ok(None);
        };
        if spf.next().is_some() {
            return Err(Fault::Perm(format!(
                "{domain} has more than one v=spf1 record"
            )));
        }
        // Prefetch once the evaluation has had to wait for the DNS (a
        // warm one, answered from the cache, never does).
        if let Some(queue) = self.prefetch
            && queue.waited()
        {
            queue.push(domain, &txts, index);
        }
        self.note(|| format!("TXT {domain}: {:?}", String::from_utf8_lossy(&txts[index])));
        // Parsed once per cached DNS answer (the memo). The record is then
        // lent out of the answer: no reference count is taken for it.
        if let Some(Ok(_)) = txts[index].memo_get::<Parsed>() {
            return Ok(Some(RecordRef::Cached(txts, index)));
        }
        self.parse_record(domain, txts, index)
            .map(Some)
            .map_err(|e| Fault::Perm(format!("syntax error in the SPF record of {domain}: {e}")))
    }

    /// The record of `txts[index]` when its memo holds no parsed record:
    /// parses it into the memo (and reports the memo's weight to the
    /// lookup, whose cache counts it), or finds the syntax error there.
    /// Out of line: the warm path above stays small.
    #[inline(never)]
    fn parse_record(
        &self,
        domain: &str,
        txts: Arc<[Txt]>,
        index: usize,
    ) -> Result<RecordRef, SyntaxError> {
        match parse_into_memo(&self.evaluator.lookup, domain, &txts, index) {
            Some(Ok(())) => Ok(RecordRef::Cached(txts, index)),
            Some(Err(e)) => Err(e),
            // The memo holds something else: parse for this evaluation.
            None => Record::parse(&txts[index]).map(|r| RecordRef::Owned(Box::new(r))),
        }
    }

    fn count_lookup(&mut self, term: &str) -> Result<(), Fault> {
        self.dns_lookups += 1;
        let limit = self.evaluator.limits.dns_lookups;
        let count = self.dns_lookups;
        self.note(|| format!("DNS-querying term {count} of at most {limit}: {term}"));
        if count > limit {
            return Err(Fault::Perm(format!(
                "more than {limit} DNS-querying terms (limit reached at {term})"
            )));
        }
        Ok(())
    }

    /// Counts a void lookup (§4.6.4) and faults past the limit. `what` is
    /// only formatted when it is shown.
    fn count_void(&mut self, what: impl Fn() -> String) -> Result<(), Fault> {
        self.void_lookups += 1;
        let limit = self.evaluator.limits.void_lookups;
        let count = self.void_lookups;
        self.note(|| format!("void lookup {count} ({})", what()));
        if count > limit {
            return Err(Fault::Perm(format!(
                "more than {limit} void DNS lookups (at {})",
                what()
            )));
        }
        Ok(())
    }

    /// The target-name of a/mx/ptr: the domain-spec expanded, or <domain>.
    async fn target<'r>(
        &mut self,
        spec: Option<&'r DomainSpec>,
        domain: &'r str,
    ) -> Result<Option<Cow<'r, str>>, Fault> {
        match spec {
            Some(spec) => self.expand_domain(spec, domain).await,
            None => Ok(Some(Cow::Borrowed(domain))),
        }
    }

    /// Expands a domain-spec (§7.3) into a name to query: truncated from the
    /// left to 253 characters, trailing dot removed. `None` when the result
    /// is not a usable DNS name (empty or over-long label). Macro-free specs
    /// were prepared at parse time and are lent out as they are.
    async fn expand_domain<'r>(
        &mut self,
        spec: &'r DomainSpec,
        domain: &str,
    ) -> Result<Option<Cow<'r, str>>, Fault> {
        if let Some(name) = spec.literal_name() {
            return Ok(Some(Cow::Borrowed(name)));
        }
        let expanded = Box::pin(self.expand(spec.macros(), domain)).await;
        Ok(identity::query_name(&expanded).map(Cow::Owned))
    }

    async fn expand(&mut self, macros: &MacroString, domain: &str) -> String {
        let ptr = if macros.uses(MacroLetter::ValidatedPtr) {
            // `%{p}` is not a term: its lookups count against no limit.
            self.validated_names(false)
                .await
                .ok()
                .and_then(|names| preferred_ptr(&names, domain))
        } else {
            None
        };
        let timestamp = if macros.uses(MacroLetter::Timestamp) {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        } else {
            0
        };
        let ctx = MacroContext {
            validated_ptr: ptr.as_deref(),
            timestamp,
            ..macro_context(self.parts, self.ip, self.helo, self.receiver, domain)
        };
        macros.expand(&ctx)
    }

    /// §6.2: the explanation for a fail. Any problem (DNS error, no or
    /// several TXT records, bad syntax) means "no explanation"; none of it
    /// counts against the limits.
    async fn explain(&mut self, exp: &DomainSpec, domain: &str) -> Option<String> {
        let name = self.expand_domain(exp, domain).await.ok()??;
        let txts = match self.evaluator.lookup.txt(&name).await {
            Ok(txts) => txts,
            Err(why) => {
                self.note(|| format!("exp TXT {name}: {why}"));
                return None;
            }
        };
        let [text] = &*txts else {
            self.note(|| format!("exp TXT {name}: {} records, need exactly one", txts.len()));
            return None;
        };
        let text = std::str::from_utf8(text).ok().filter(|t| t.is_ascii())?;
        let macros = match MacroString::parse(text, MacroSyntax::Explanation) {
            Ok(m) => m,
            Err(e) => {
                self.note(|| format!("exp TXT {name}: {e}"));
                return None;
            }
        };
        let explanation = self.expand(&macros, domain).await;
        self.note(|| format!("explanation: {explanation:?}"));
        Some(explanation)
    }
}

/// §7.3 `%{p}`: a validated name equal to the domain, else one below it,
/// else any.
fn preferred_ptr(names: &[String], domain: &str) -> Option<String> {
    names
        .iter()
        .find(|n| n.eq_ignore_ascii_case(domain))
        .or_else(|| names.iter().find(|n| is_same_or_subdomain(n, domain)))
        .or_else(|| names.first())
        .cloned()
}

/// The macro values of one evaluation of `domain` (RFC 7208 §7.3) without
/// `p` and `t`, which cost a lookup or change with time: the caller adds
/// them where the string uses them.
pub(super) fn macro_context<'a>(
    parts: &'a SenderParts,
    ip: IpAddr,
    helo: &'a str,
    receiver: &'a str,
    domain: &'a str,
) -> MacroContext<'a> {
    MacroContext {
        sender: parts.sender(),
        local_part: parts.local_part(),
        sender_domain: parts.domain(),
        domain,
        ip,
        helo,
        receiver,
        validated_ptr: None,
        timestamp: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptr_preference() {
        let names = vec![
            "a.other.test".to_owned(),
            "mx.example.com".to_owned(),
            "example.com".to_owned(),
        ];
        assert_eq!(
            preferred_ptr(&names, "example.com").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            preferred_ptr(&names[..2], "example.com").as_deref(),
            Some("mx.example.com")
        );
        assert_eq!(
            preferred_ptr(&names[..1], "example.com").as_deref(),
            Some("a.other.test")
        );
    }
}
