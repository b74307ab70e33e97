//! Prometheus metrics: what the milter decided, how long it took, what DNS
//! cost, and how many MTA connections are open. Served as the Prometheus
//! text format on `[metrics] listen` (off by default) by [`serve`].
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `spfmilter_messages_total` | counter | `action`: accept, reject, defer, held, skipped, unchecked, internal_error |
//! | `spfmilter_held_total` | counter | `outcome` of a held message at end of message: rescued, not_rescued, deferred (test mode included) |
//! | `spfmilter_checks_total` | counter | `identity` (helo, mailfrom), `result`, `action` of the message |
//! | `spfmilter_skipped_total` | counter | `reason` (local, whitelist, domain_whitelist, helo_whitelist, ptr_whitelist) |
//! | `spfmilter_blocked_total` | counter | `rule` (authorized_by, includes), `mode` (enforce, test: logged "would block") |
//! | `spfmilter_decision_seconds` | histogram | — (bypass checks and SPF evaluations at MAIL FROM) |
//! | `spfmilter_connections_open` | gauge | — (from accept to close, as the listener counts them) |
//! | `spfmilter_connections_refused_total` | counter | — (closed at once over `max_connections`) |
//! | `spfmilter_dns_queries_total` | counter | — (sent to the DNS servers) |
//! | `spfmilter_dns_timeouts_total`, `spfmilter_dns_failures_total` | counter | — |
//! | `spfmilter_dns_cache_hits_total`, `spfmilter_dns_cache_misses_total` | counter | — |
//! | `spfmilter_dns_cache_entries`, `spfmilter_dns_cache_bytes` | gauge | — |
//!
//! The DNS counters belong to the resolver and cache of the configuration
//! in use: a reload (SIGHUP) starts them again from zero, which Prometheus
//! reads as a counter reset.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dns::cache::CacheStats;
use crate::dns::hickory::QueryStats;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    identity: &'static str,
    result: &'static str,
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlockLabels {
    rule: &'static str,
    mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// What became of a held message at end of message, as the `outcome`
/// label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldOutcome {
    Rescued,
    NotRescued,
    Deferred,
}

impl HeldOutcome {
    fn label(self) -> &'static str {
        match self {
            HeldOutcome::Rescued => "rescued",
            HeldOutcome::NotRescued => "not_rescued",
            HeldOutcome::Deferred => "deferred",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// What happened to a message at MAIL FROM, as the `action` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageAction {
    /// Accepted (with a header, unless `Header_Type = None`).
    Accept,
    Reject,
    Defer,
    /// A reject held to end of message for the rescue (`[rescue]`).
    Held,
    /// A bypass with a trace header (`skip_addresses`, whitelists).
    Skipped,
    /// Not checked and no header (internal hosts, MacroList, SMTP AUTH,
    /// nothing to check).
    Unchecked,
    /// A panic answered by `on_internal_error`.
    InternalError,
}

impl MessageAction {
    /// Its place among the [`ACTIONS`] counters.
    fn index(self) -> usize {
        match self {
            MessageAction::Accept => 0,
            MessageAction::Reject => 1,
            MessageAction::Defer => 2,
            MessageAction::Skipped => 3,
            MessageAction::Unchecked => 4,
            MessageAction::InternalError => 5,
            MessageAction::Held => 6,
        }
    }

    fn label(self) -> &'static str {
        match self {
            MessageAction::Accept => "accept",
            MessageAction::Reject => "reject",
            MessageAction::Defer => "defer",
            MessageAction::Held => "held",
            MessageAction::Skipped => "skipped",
            MessageAction::Unchecked => "unchecked",
            MessageAction::InternalError => "internal_error",
        }
    }
}

/// Where the DNS figures come from at scrape time.
pub type DnsStatsSource = Arc<dyn Fn() -> (QueryStats, CacheStats) + Send + Sync>;

/// The milter's metrics; cheap to update from every connection.
pub struct Metrics {
    registry: Registry,
    messages: Family<ActionLabels, Counter>,
    checks: Family<CheckLabels, Counter>,
    skipped: Family<ReasonLabels, Counter>,
    blocked: Family<BlockLabels, Counter>,
    held: Family<OutcomeLabels, Counter>,
    decision_seconds: Histogram,
    /// How many MTA connections are open, read when scraped (set once by
    /// the daemon: the listener counts them, from accept to close).
    connections: Arc<std::sync::OnceLock<ConnectionsSource>>,
    refused: Counter,
    /// The counters of the label sets messages use, each taken from its
    /// family once (at its first use, so that a series still appears only
    /// once counted): an increment without the family's lock and hash.
    resolved: Resolved,
}

/// Counters by [`MessageAction`] (`messages`) and by identity, result and
/// action (`checks`), as [`Resolved::index`] numbers them.
#[derive(Default)]
struct Resolved {
    messages: [std::sync::OnceLock<Counter>; ACTIONS],
    checks: [[[std::sync::OnceLock<Counter>; ACTIONS]; RESULTS.len()]; IDENTITIES.len()],
}

const ACTIONS: usize = 7;
const IDENTITIES: [&str; 2] = ["helo", "mailfrom"];
/// RFC 7208 §2.6, as `SpfResult::as_str` spells them.
const RESULTS: [&str; 7] = [
    "none",
    "neutral",
    "pass",
    "fail",
    "softfail",
    "temperror",
    "permerror",
];

impl Resolved {
    /// The place of a label in its list; `None` for one not listed (then
    /// counted through the family).
    fn index(list: &[&str], label: &str) -> Option<usize> {
        list.iter().position(|l| *l == label)
    }
}

/// Where the open-connections figure comes from at scrape time.
pub type ConnectionsSource = Box<dyn Fn() -> usize + Send + Sync>;

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(dns: DnsStatsSource) -> Metrics {
        let mut registry = Registry::default();
        let messages = Family::<ActionLabels, Counter>::default();
        registry.register(
            "spfmilter_messages",
            "Messages by what was done at MAIL FROM",
            messages.clone(),
        );
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "spfmilter_checks",
            "SPF checks by identity, result, and the message's action",
            checks.clone(),
        );
        let skipped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "spfmilter_skipped",
            "Messages not checked because of a bypass with a trace header",
            skipped.clone(),
        );
        let blocked = Family::<BlockLabels, Counter>::default();
        registry.register(
            "spfmilter_blocked",
            "Messages matched by a [block] rule, refused (mode enforce) or only logged (mode test)",
            blocked.clone(),
        );
        let held = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "spfmilter_held",
            "Messages held for the rescue, by what became of them at end of message",
            held.clone(),
        );
        // 0.5 ms to ~33 s: a cache hit to a decision that ran into the
        // time limit.
        let decision_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 17));
        registry.register_with_unit(
            "spfmilter_decision",
            "Time spent at MAIL FROM on bypass checks and SPF evaluations",
            prometheus_client::registry::Unit::Seconds,
            decision_seconds.clone(),
        );
        let connections = Arc::new(std::sync::OnceLock::new());
        registry.register_collector(Box::new(ConnectionsCollector(Arc::clone(&connections))));
        let refused = Counter::default();
        registry.register(
            "spfmilter_connections_refused",
            "MTA connections closed at once because max_connections were open",
            refused.clone(),
        );
        registry.register_collector(Box::new(DnsCollector(dns)));
        Metrics {
            registry,
            messages,
            checks,
            skipped,
            blocked,
            held,
            decision_seconds,
            connections,
            refused,
            resolved: Resolved::default(),
        }
    }

    /// One message decided at MAIL FROM, with the identities checked.
    pub fn message(
        &self,
        action: MessageAction,
        checks: impl IntoIterator<Item = (&'static str, &'static str)>,
        took: Duration,
    ) {
        let a = action.index();
        self.resolved.messages[a]
            .get_or_init(|| {
                self.messages
                    .get_or_create(&ActionLabels {
                        action: action.label(),
                    })
                    .clone()
            })
            .inc();
        for (identity, result) in checks {
            let labels = || CheckLabels {
                identity,
                result,
                action: action.label(),
            };
            let place = Resolved::index(&IDENTITIES, identity)
                .zip(Resolved::index(&RESULTS, result))
                .map(|(i, r)| &self.resolved.checks[i][r][a]);
            match place {
                Some(place) => place
                    .get_or_init(|| self.checks.get_or_create(&labels()).clone())
                    .inc(),
                None => self.checks.get_or_create(&labels()).inc(),
            };
        }
        self.decision_seconds.observe(took.as_secs_f64());
    }

    /// A held message decided at end of message.
    pub fn held(&self, outcome: HeldOutcome) {
        self.held
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// A bypass with a trace header.
    pub fn skipped(&self, reason: &'static str, took: Duration) {
        self.skipped.get_or_create(&ReasonLabels { reason }).inc();
        self.message(MessageAction::Skipped, [], took);
    }

    /// A `[block]` rule matched (`test`: only logged, "would block").
    pub fn blocked(&self, rule: &'static str, test: bool) {
        self.blocked
            .get_or_create(&BlockLabels {
                rule,
                mode: if test { "test" } else { "enforce" },
            })
            .inc();
    }

    /// Where `spfmilter_connections_open` comes from (the first call
    /// counts; until then it reads 0).
    pub fn count_connections_with(&self, source: ConnectionsSource) {
        let _ = self.connections.set(source);
    }

    /// A connection closed at once over `max_connections`.
    pub fn connection_refused(&self) {
        self.refused.inc();
    }

    /// The Prometheus text format of everything.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The open connections, read when scraped.
struct ConnectionsCollector(Arc<std::sync::OnceLock<ConnectionsSource>>);

impl fmt::Debug for ConnectionsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectionsCollector")
    }
}

impl Collector for ConnectionsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let open = self.0.get().map_or(0, |source| source());
        let gauge = ConstGauge::new(i64::try_from(open).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "spfmilter_connections_open",
            "MTA connections open",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// The DNS figures, read when scraped.
struct DnsCollector(DnsStatsSource);

impl fmt::Debug for DnsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DnsCollector")
    }
}

impl Collector for DnsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (queries, cache) = (self.0)();
        let counters = [
            (
                "spfmilter_dns_queries",
                "DNS queries sent to the servers",
                queries.queries,
            ),
            (
                "spfmilter_dns_timeouts",
                "DNS queries that timed out",
                queries.timeouts,
            ),
            (
                "spfmilter_dns_failures",
                "DNS queries that failed otherwise (SERVFAIL, REFUSED, network errors)",
                queries.failures,
            ),
            (
                "spfmilter_dns_cache_hits",
                "DNS lookups answered from the cache",
                cache.hits,
            ),
            (
                "spfmilter_dns_cache_misses",
                "DNS lookups the cache could not answer",
                cache.misses,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let gauges = [
            (
                "spfmilter_dns_cache_entries",
                "Answers held in the DNS cache",
                cache.entries,
            ),
            (
                "spfmilter_dns_cache_bytes",
                "Memory held by the DNS cache (at most [dns] cache_size)",
                cache.bytes,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// Serves `GET /metrics` on `listener` forever: one short HTTP/1.0-style
/// exchange per connection (`Connection: close`), anything else 404.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &metrics)).await;
        });
    }
}

async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    // The request line and headers; a scraper's request is small.
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let first_line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = first_line.split(|&b| b == b' ');
    let (method, path) = (words.next(), words.next());
    let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or(p));
    let (status, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => ("200 OK", metrics.render()),
        _ => ("404 Not Found", "see /metrics\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(Arc::new(|| {
            (
                QueryStats {
                    queries: 7,
                    timeouts: 2,
                    failures: 1,
                },
                CacheStats {
                    hits: 40,
                    misses: 7,
                    entries: 5,
                    bytes: 6789,
                    ..CacheStats::default()
                },
            )
        }))
    }

    #[test]
    fn the_text_format_has_every_family_with_its_values() {
        let m = metrics();
        m.count_connections_with(Box::new(|| 1));
        m.connection_refused();
        m.message(
            MessageAction::Reject,
            [("helo", "pass"), ("mailfrom", "fail")],
            Duration::from_millis(3),
        );
        m.skipped("local", Duration::from_micros(100));
        m.held(HeldOutcome::Rescued);
        m.held(HeldOutcome::NotRescued);
        m.held(HeldOutcome::NotRescued);
        let text = m.render();
        for line in [
            "spfmilter_messages_total{action=\"reject\"} 1",
            "spfmilter_messages_total{action=\"skipped\"} 1",
            "spfmilter_checks_total{identity=\"mailfrom\",result=\"fail\",action=\"reject\"} 1",
            "spfmilter_checks_total{identity=\"helo\",result=\"pass\",action=\"reject\"} 1",
            "spfmilter_skipped_total{reason=\"local\"} 1",
            "spfmilter_held_total{outcome=\"rescued\"} 1",
            "spfmilter_held_total{outcome=\"not_rescued\"} 2",
            "spfmilter_decision_seconds_count 2",
            "spfmilter_connections_open 1",
            "spfmilter_connections_refused_total 1",
            "spfmilter_dns_queries_total 7",
            "spfmilter_dns_timeouts_total 2",
            "spfmilter_dns_failures_total 1",
            "spfmilter_dns_cache_hits_total 40",
            "spfmilter_dns_cache_misses_total 7",
            "spfmilter_dns_cache_entries 5",
            "spfmilter_dns_cache_bytes 6789",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
        // 3 ms falls in the 4 ms bucket (0.5 ms · 2³), not the 2 ms one.
        assert!(
            text.contains("spfmilter_decision_seconds_bucket{le=\"0.002\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("spfmilter_decision_seconds_bucket{le=\"0.004\"} 2\n"),
            "{text}"
        );
    }

    /// The counters kept per label set are the family's: every message
    /// counts in the output, a series appears only once counted, and a
    /// label outside the known lists still counts.
    #[test]
    fn counters_kept_per_label_set_count_in_the_family() {
        let m = metrics();
        for _ in 0..3 {
            m.message(
                MessageAction::Accept,
                [("helo", "pass"), ("mailfrom", "softfail")],
                Duration::ZERO,
            );
        }
        m.message(
            MessageAction::Defer,
            [("mailfrom", "other")],
            Duration::ZERO,
        );
        let text = m.render();
        for line in [
            "spfmilter_messages_total{action=\"accept\"} 3",
            "spfmilter_messages_total{action=\"defer\"} 1",
            "spfmilter_checks_total{identity=\"helo\",result=\"pass\",action=\"accept\"} 3",
            "spfmilter_checks_total{identity=\"mailfrom\",result=\"softfail\",action=\"accept\"} 3",
            "spfmilter_checks_total{identity=\"mailfrom\",result=\"other\",action=\"defer\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
        assert!(!text.contains("action=\"reject\""), "{text}");
        assert!(!text.contains("result=\"fail\""), "{text}");
    }

    #[tokio::test]
    async fn the_endpoint_answers_get_metrics_and_404_otherwise() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(metrics())));
        let get = |request: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\r\n\r\n# HELP spfmilter_"), "{ok}");
        assert!(
            ok.contains("\n# TYPE spfmilter_decision_seconds histogram\n"),
            "{ok}"
        );
        assert!(ok.contains("spfmilter_dns_queries_total 7"), "{ok}");
        let missing = get("GET / HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    }
}
