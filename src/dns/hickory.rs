//! Production DNS on hickory-resolver.
//!
//! The resolver is used as a stub: it sends recursive queries to the
//! configured servers (or those of `/etc/resolv.conf`) and follows CNAMEs
//! in their answers. What SPF needs on top, and what this module ensures:
//!
//! * names are queried exactly as given, as absolute names: no search list,
//!   no `ndots`, no `/etc/hosts` (RFC 7208 §4.3 and §5 speak of DNS
//!   queries, and a local hosts file has no say in a sender's policy);
//! * NXDOMAIN, NODATA and failures stay distinct (RFC 7208 §2.7, §4.3,
//!   §4.6.4, §5), with the negative TTL of RFC 2308 §5 for the cache;
//! * truncated UDP answers are retried over TCP (RFC 7766 §5, RFC 1035
//!   §4.2.1); SPF TXT RRsets often exceed 512 octets;
//! * each query has a deadline, so a dead server costs at most
//!   `timeout × attempts` (RFC 7208 §4.6.4 asks to bound DNS time).
//!
//! hickory's own response cache is off by default: [`super::CachingLookup`]
//! caches the decoded answers, which is cheaper and bounded by our limits.
//!
//! Note that hickory answers some special-use names itself (RFC 6761):
//! `localhost.` and the loopback reverse zones (`127.in-addr.arpa.`,
//! `::1`'s `ip6.arpa.` name) resolve to loopback/`localhost` and `.invalid.`
//! is NXDOMAIN, without asking any server.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as NetDnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

use super::cache::{Source, Sourced};
use super::{Answer, DnsError, Lookup, Mx, Txt, normalize_name, reverse_name};

/// How the resolver is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverOptions {
    /// The servers to ask, in order of preference. Empty: the `nameserver`
    /// lines of `/etc/resolv.conf` (its other settings are ignored).
    pub nameservers: Vec<SocketAddr>,
    /// How long one attempt may take, TCP fallback included.
    pub timeout: Duration,
    /// How many times a query is sent before it counts as failed (at least
    /// once), as `attempts` in resolv.conf(5).
    pub attempts: usize,
    /// Size of hickory's own response cache, in responses. 0 (the
    /// default) turns it off, leaving caching to [`super::CachingLookup`].
    pub cache_size: usize,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
            cache_size: 0,
        }
    }
}

/// Why a [`HickoryLookup`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverError(String);

impl fmt::Display for ResolverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ResolverError {}

/// Negative TTL used when an NXDOMAIN or NODATA answer carries no SOA
/// record to take it from (RFC 2308 §5 leaves this to the resolver; BIND
/// and Unbound use similar values).
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(300);

/// Extra time granted beyond `timeout × attempts` before a query is given
/// up regardless of hickory's own timers: room for a CNAME hop or a TCP
/// fallback after a slow attempt, and a safety net should hickory ever
/// fail to time out by itself.
const DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// The five SPF queries on hickory-resolver. Cloning shares the resolver
/// (and the counters).
#[derive(Clone)]
pub struct HickoryLookup {
    resolver: TokioResolver,
    deadline: Duration,
    counters: Arc<QueryCounters>,
}

/// Queries sent through a [`HickoryLookup`] and how they ended, for the
/// metrics.
#[derive(Debug, Default)]
struct QueryCounters {
    queries: AtomicU64,
    timeouts: AtomicU64,
    /// Other temporary failures (SERVFAIL, REFUSED, network errors).
    failures: AtomicU64,
}

/// A snapshot of a [`HickoryLookup`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryStats {
    pub queries: u64,
    pub timeouts: u64,
    pub failures: u64,
}

impl fmt::Debug for HickoryLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HickoryLookup")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl HickoryLookup {
    /// Sets up the resolver. Reads `/etc/resolv.conf` when
    /// `options.nameservers` is empty. Needs no runtime; queries must run
    /// inside a Tokio runtime with I/O and time enabled.
    pub fn new(options: &ResolverOptions) -> Result<Self, ResolverError> {
        let servers = if options.nameservers.is_empty() {
            let (config, _) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                ResolverError(format!(
                    "cannot use the DNS servers of /etc/resolv.conf: {}",
                    describe_system_conf_error(&e)
                ))
            })?;
            // Keep only the servers: the search list and `domain` must not
            // apply to SPF names, and `options` are ours.
            config.name_servers().to_vec()
        } else {
            options
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect()
        };
        if servers.is_empty() {
            return Err(ResolverError("no DNS servers configured".into()));
        }
        let attempts = options.attempts.max(1);

        let mut opts = ResolverOpts::default();
        opts.timeout = options.timeout;
        // hickory counts retries after the first try.
        opts.attempts = attempts - 1;
        opts.cache_size = options.cache_size as u64;
        opts.use_hosts_file = ResolveHosts::Never;
        // Names are always absolute (see `query_name`); this only makes
        // sure nothing else is ever tried.
        opts.ndots = 0;

        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| ResolverError(format!("cannot set up the DNS resolver: {e}")))?;

        let deadline = options
            .timeout
            .saturating_mul(u32::try_from(attempts).unwrap_or(u32::MAX))
            .saturating_add(DEADLINE_SLACK);
        Ok(Self {
            resolver,
            deadline,
            counters: Arc::default(),
        })
    }

    /// Queries sent so far, and how many timed out or failed otherwise.
    pub fn stats(&self) -> QueryStats {
        QueryStats {
            queries: self.counters.queries.load(Ordering::Relaxed),
            timeouts: self.counters.timeouts.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
        }
    }

    /// Asks for `name`/`rtype` and extracts the records of that type that
    /// belong to the name or to the CNAME chain starting at it.
    async fn query<T>(
        &self,
        name: &str,
        rtype: RecordType,
        extract: impl Fn(&RData) -> Option<T>,
    ) -> Sourced<T> {
        let Some(qname) = query_name(name) else {
            // A name that cannot be encoded (an empty label, a label over
            // 63 octets, over 255 octets in all) cannot exist in the DNS.
            // Macro expansion of a sender-chosen local-part can produce
            // such names (RFC 7208 §7.3); they must not turn into temporary
            // errors, or a sender could force a deferral.
            return (Err(DnsError::NxDomain), DEFAULT_NEGATIVE_TTL);
        };
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        let lookup =
            tokio::time::timeout(self.deadline, self.resolver.lookup(qname.clone(), rtype));
        let answer = lookup.await;
        let timed_out = matches!(answer, Err(_) | Ok(Err(NetError::Timeout)));
        let sourced = match answer {
            Err(_) => (
                Err(DnsError::Temporary(format!(
                    "timeout querying {name} {rtype}"
                ))),
                Duration::ZERO,
            ),
            Ok(Ok(lookup)) => {
                let owners = chain(&qname, lookup.answers());
                let records = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype && owners.contains(&r.name))
                    .filter_map(|r| extract(&r.data))
                    .collect();
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(Instant::now());
                (Ok(records), ttl)
            }
            Ok(Err(e)) => map_error(&e, name, rtype),
        };
        if timed_out {
            self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        } else if matches!(sourced.0, Err(DnsError::Temporary(_))) {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        sourced
    }
}

/// `name` as an absolute DNS name. Built from raw labels so that no
/// character is taken as an escape (a local-part may contain `\`).
fn query_name(name: &str) -> Option<Name> {
    let name = name.strip_suffix('.').unwrap_or(name);
    Name::from_labels(name.split('.').map(str::as_bytes)).ok()
}

/// The query name and the names its CNAME chain in `answers` leads to
/// (RFC 1034 §3.6.2, RFC 2181 §10.1.1): only records owned by these answer
/// the question; anything else in the answer section is ignored.
fn chain(qname: &Name, answers: &[Record]) -> Vec<Name> {
    let mut owners = vec![qname.clone()];
    // Bounded: a loop in the answer must not loop here.
    for _ in 0..answers.len() {
        let last = &owners[owners.len() - 1];
        let next = answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name == *last => Some(target.0.clone()),
            _ => None,
        });
        match next {
            Some(target) if !owners.contains(&target) => owners.push(target),
            _ => break,
        }
    }
    owners
}

/// hickory's error as one of ours, with a short text for logs.
fn map_error<T>(error: &NetError, name: &str, rtype: RecordType) -> Sourced<T> {
    let temporary = |why: String| (Err(DnsError::Temporary(why)), Duration::ZERO);
    match error {
        NetError::Dns(NetDnsError::NoRecordsFound(NoRecords {
            response_code,
            negative_ttl,
            ..
        })) => {
            let ttl = negative_ttl.map_or(DEFAULT_NEGATIVE_TTL, |s| Duration::from_secs(s.into()));
            match *response_code {
                ResponseCode::NXDomain => (Err(DnsError::NxDomain), ttl),
                ResponseCode::NoError => (Ok(Vec::new().into()), ttl),
                code => temporary(format!("{} querying {name} {rtype}", rcode_name(code))),
            }
        }
        NetError::Dns(NetDnsError::ResponseCode(code)) => {
            temporary(format!("{} querying {name} {rtype}", rcode_name(*code)))
        }
        NetError::Timeout => temporary(format!("timeout querying {name} {rtype}")),
        NetError::Io(e) => temporary(format!("network error querying {name} {rtype}: {e}")),
        NetError::NoConnections => {
            temporary(format!("no DNS server reachable querying {name} {rtype}"))
        }
        NetError::Busy => temporary(format!("DNS resolver busy querying {name} {rtype}")),
        NetError::Truncated => temporary(format!(
            "truncated answer even over TCP querying {name} {rtype}"
        )),
        NetError::Proto(_) => temporary(format!("malformed answer querying {name} {rtype}")),
        NetError::QueryCaseMismatch => temporary(format!(
            "suspicious answer (query name case changed) querying {name} {rtype}"
        )),
        _ => temporary(format!("DNS failure querying {name} {rtype}")),
    }
}

/// The RFC 1035 §4.1.1 / RFC 6895 mnemonic of an RCODE.
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("RCODE {}", u16::from(other)),
    }
}

/// resolv.conf problems in words (hickory's `NetError` for them is an I/O
/// error or a message).
fn describe_system_conf_error(error: &NetError) -> String {
    match error {
        NetError::Io(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// A name from an answer as we hand it out: lower-case, no root dot, its
/// labels as they are on the wire (the presentation format would escape
/// characters such as `/` or `:`, which DNS labels may hold, RFC 2181 §11).
/// The root (a null MX, RFC 7505) becomes the empty string.
fn out_name(name: &Name) -> String {
    let labels: Vec<_> = name.iter().map(String::from_utf8_lossy).collect();
    normalize_name(&labels.join("."))
}

impl Source for HickoryLookup {
    fn txt_with_ttl(&self, name: &str) -> impl Future<Output = Sourced<Txt>> + Send {
        // RFC 7208 §3.3: the character-strings of one record are joined
        // with nothing in between.
        self.query(name, RecordType::TXT, |data| match data {
            RData::TXT(txt) => Some(Txt::new(txt.txt_data.concat())),
            _ => None,
        })
    }

    fn a_with_ttl(&self, name: &str) -> impl Future<Output = Sourced<Ipv4Addr>> + Send {
        self.query(name, RecordType::A, |data| match data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
    }

    fn aaaa_with_ttl(&self, name: &str) -> impl Future<Output = Sourced<Ipv6Addr>> + Send {
        self.query(name, RecordType::AAAA, |data| match data {
            RData::AAAA(aaaa) => Some(aaaa.0),
            _ => None,
        })
    }

    fn mx_with_ttl(&self, name: &str) -> impl Future<Output = Sourced<Mx>> + Send {
        self.query(name, RecordType::MX, |data| match data {
            RData::MX(mx) => Some(Mx {
                preference: mx.preference,
                exchange: out_name(&mx.exchange),
            }),
            _ => None,
        })
    }

    async fn ptr_with_ttl(&self, ip: IpAddr) -> Sourced<String> {
        self.query(&reverse_name(ip), RecordType::PTR, |data| match data {
            RData::PTR(ptr) => Some(out_name(&ptr.0)),
            _ => None,
        })
        .await
    }
}

impl Lookup for HickoryLookup {
    async fn txt(&self, name: &str) -> Answer<Txt> {
        self.txt_with_ttl(name).await.0
    }
    async fn a(&self, name: &str) -> Answer<Ipv4Addr> {
        self.a_with_ttl(name).await.0
    }
    async fn aaaa(&self, name: &str) -> Answer<Ipv6Addr> {
        self.aaaa_with_ttl(name).await.0
    }
    async fn mx(&self, name: &str) -> Answer<Mx> {
        self.mx_with_ttl(name).await.0
    }
    async fn ptr(&self, ip: IpAddr) -> Answer<String> {
        self.ptr_with_ttl(ip).await.0
    }
}

/// Parses a DNS server address: an IPv4 or IPv6 address, optionally with a
/// port (`192.0.2.53`, `192.0.2.53:5353`, `2001:db8::53`,
/// `[2001:db8::53]:5353`, `[2001:db8::53]`). The port defaults to 53.
pub fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let addr = if let Ok(addr) = s.parse::<SocketAddr>() {
        Some(addr)
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        Some(SocketAddr::new(ip, 53))
    } else if let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        inner
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| SocketAddr::new(ip.into(), 53))
    } else {
        None
    };
    match addr {
        Some(addr) if addr.port() == 0 => Err(format!("invalid DNS server {s:?}: port 0")),
        Some(addr) => Ok(addr),
        None => Err(format!(
            "invalid DNS server {s:?}: expected an IP address with an optional port, \
             e.g. 192.0.2.53, 192.0.2.53:5353, 2001:db8::53 or [2001:db8::53]:5353"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_parse_with_and_without_port() {
        let ok = |s: &str| parse_nameserver(s).unwrap().to_string();
        assert_eq!(ok("127.0.0.1"), "127.0.0.1:53");
        assert_eq!(ok("127.0.0.1:5353"), "127.0.0.1:5353");
        assert_eq!(ok("::1"), "[::1]:53");
        assert_eq!(ok("[::1]:5353"), "[::1]:5353");
        assert_eq!(ok("[2001:db8::53]"), "[2001:db8::53]:53");
        assert_eq!(ok(" 192.0.2.1 "), "192.0.2.1:53");
        for bad in [
            "",
            "dns.example",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "[::1",
            "::1:53x",
            "1.2.3.4:0",
        ] {
            let err = parse_nameserver(bad).unwrap_err();
            assert!(err.contains("invalid DNS server"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn query_names_are_absolute_and_taken_literally() {
        let name = query_name("Example.COM").unwrap();
        assert!(name.is_fqdn());
        assert_eq!(name.to_ascii(), "Example.COM.");
        assert_eq!(query_name("example.com.").unwrap(), name);
        // A backslash is a character of the label, not an escape.
        let odd = query_name("a\\046b.example").unwrap();
        assert_eq!(odd.num_labels(), 2);
        assert!(query_name("a..example").is_none());
        assert!(query_name(&format!("{}.example", "x".repeat(64))).is_none());
        assert!(
            query_name(&"abcdefghi.".repeat(26)).is_none(),
            "over 255 octets"
        );
    }

    #[test]
    fn rcodes_have_their_mnemonics() {
        assert_eq!(rcode_name(ResponseCode::ServFail), "SERVFAIL");
        assert_eq!(rcode_name(ResponseCode::Refused), "REFUSED");
        assert_eq!(rcode_name(ResponseCode::NotAuth), "RCODE 9");
    }

    #[test]
    fn cname_chains_select_the_owners_of_the_answer() {
        use hickory_resolver::proto::rr::rdata::{A, CNAME};
        let n = |s: &str| Name::from_ascii(s).unwrap();
        let answers = vec![
            Record::from_rdata(n("alias.test."), 60, RData::CNAME(CNAME(n("Mid.test.")))),
            Record::from_rdata(n("mid.test."), 60, RData::CNAME(CNAME(n("real.test.")))),
            Record::from_rdata(n("real.test."), 60, RData::A(A::new(192, 0, 2, 1))),
            // Loops back: must terminate.
            Record::from_rdata(n("real.test."), 60, RData::CNAME(CNAME(n("alias.test.")))),
        ];
        let owners = chain(&n("ALIAS.test."), &answers);
        assert_eq!(
            owners,
            vec![n("alias.test."), n("mid.test."), n("real.test.")]
        );
    }

    #[test]
    fn errors_map_to_nxdomain_nodata_or_short_temporary_texts() {
        use hickory_resolver::proto::op::Query;
        let q = Query::query(Name::from_ascii("x.test.").unwrap(), RecordType::TXT);
        let mut nx = NoRecords::new(q.clone(), ResponseCode::NXDomain);
        nx.negative_ttl = Some(42);
        let (answer, ttl): Sourced<Txt> = map_error(
            &NetError::from(NetDnsError::NoRecordsFound(nx)),
            "x.test",
            RecordType::TXT,
        );
        assert_eq!(answer, Err(DnsError::NxDomain));
        assert_eq!(ttl, Duration::from_secs(42));

        let nodata = NoRecords::new(q, ResponseCode::NoError);
        let (answer, ttl): Sourced<Txt> = map_error(
            &NetError::from(NetDnsError::NoRecordsFound(nodata)),
            "x.test",
            RecordType::TXT,
        );
        assert_eq!(answer.unwrap().len(), 0);
        assert_eq!(ttl, DEFAULT_NEGATIVE_TTL);

        let (answer, _): Sourced<Txt> = map_error(
            &NetError::from(NetDnsError::ResponseCode(ResponseCode::ServFail)),
            "x.test",
            RecordType::TXT,
        );
        assert_eq!(
            answer,
            Err(DnsError::Temporary("SERVFAIL querying x.test TXT".into()))
        );
        let (answer, _): Sourced<Txt> = map_error(&NetError::Timeout, "x.test", RecordType::TXT);
        assert_eq!(
            answer,
            Err(DnsError::Temporary("timeout querying x.test TXT".into()))
        );
    }

    #[test]
    fn explicit_nameservers_need_no_resolv_conf() {
        let options = ResolverOptions {
            nameservers: vec![parse_nameserver("192.0.2.53:5353").unwrap()],
            ..ResolverOptions::default()
        };
        let lookup = HickoryLookup::new(&options).unwrap();
        assert_eq!(lookup.deadline, Duration::from_secs(11));
    }
}
