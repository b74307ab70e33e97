//! SPF evaluation throughput: warm-cache evaluations per second on one core,
//! spfmilter against mail-auth 0.13.3 on the same workload in the same run.
//!
//! A program that prints figures, not a timed test:
//!
//! ```text
//! cargo bench --bench spf_eval                     # every case, 1.5 s per library
//! cargo bench --bench spf_eval -- --seconds 5      # longer runs
//! cargo bench --bench spf_eval -- include-2 a-mx   # some cases only
//! ```
//!
//! `SPF_BENCH_SECONDS` sets the measuring time too; `--profile spfmilter`
//! (or `mail-auth`) runs one library alone, for a profiler. Without `--bench` in its
//! arguments (which `cargo bench` passes), the program only evaluates each
//! case once with both libraries and checks the answers: a smoke check.
//!
//! Both libraries run on one tokio current-thread runtime, one evaluation
//! awaited after the other, nothing spawned. Both are measured on their warm
//! path: spfmilter as `Evaluator<CachingLookup<Zone>>` (the production DNS
//! cache and parsed-record cache, warmed by one untimed pass); mail-auth with
//! its `ResolverCache`s filled with the same zone data as parsed records, and
//! a resolver pointing at 127.0.0.1:1 that a warm cache never reaches (a cache
//! miss would become a temperror, which the answer checks catch). Every
//! timed evaluation's result is compared with the expected one; a wrong
//! answer prints MISMATCH instead of a figure, and the exit status is 1.

use std::borrow::Borrow;
use std::hash::Hash;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::ExitCode;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::spf::Spf;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    DnssecStatus, MX, MessageAuthenticator, Parameters, ReceivedSpf, RecordSet, ResolverCache,
    SpfOutput, Txt,
};

use spfmilter::dns::cache::{CacheOptions, CachingLookup};
use spfmilter::dns::zone::Zone;
use spfmilter::policy::envelope::Envelope;
use spfmilter::policy::headers::{fold, received_spf_value};
use spfmilter::spf::{DEFAULT_EXPLANATION, Evaluator, Identity, Request, SpfOutcome, SpfResult};

// ---------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------

/// The receiving host (`%{r}`, `receiver=`).
const RECEIVER: &str = "mx.receiver.example";

/// TXT records of the zone.
const TXT: &[(&str, &str)] = &[
    // ip4-list: eight ranges, the client in the last.
    (
        "ip4.example.org",
        "v=spf1 ip4:198.51.100.0/26 ip4:198.51.100.128/27 ip4:203.0.113.0/27 \
         ip4:203.0.113.64/28 ip4:192.0.2.0/28 ip4:192.0.2.32/28 ip4:100.64.10.0/24 \
         ip4:192.0.2.200/29 -all",
    ),
    // include-2: a provider-style include chain of depth 2.
    ("example.com", "v=spf1 include:_spf.example.com -all"),
    (
        "_spf.example.com",
        "v=spf1 include:_netblocks.example.com ~all",
    ),
    (
        "_netblocks.example.com",
        "v=spf1 ip4:198.51.100.0/24 ip4:203.0.113.0/25 ip4:192.0.2.64/26 \
         ip6:2001:db8:1::/48 ip6:2001:db8:2::/48 ~all",
    ),
    // message: the HELO name's own record.
    ("mail.example.com", "v=spf1 a -all"),
    // a-mx: the client is the MX host, so `a` is evaluated and misses first.
    ("amx.example.net", "v=spf1 a mx -all"),
    // fail-walk: nothing matches, every term is walked.
    (
        "fail.example.org",
        "v=spf1 ip4:198.51.100.0/24 ip4:203.0.113.0/24 a mx include:_spf.other.test -all",
    ),
    (
        "_spf.other.test",
        "v=spf1 ip4:203.0.113.128/25 ip4:198.51.100.128/25 ~all",
    ),
];

/// A records of the zone.
const A: &[(&str, &str)] = &[
    ("mail.example.com", "192.0.2.77"),
    ("amx.example.net", "192.0.2.10"),
    ("mx1.amx.example.net", "192.0.2.25"),
    ("fail.example.org", "198.51.100.10"),
    ("mx1.fail.example.org", "198.51.100.20"),
    ("mx2.fail.example.org", "198.51.100.21"),
];

/// MX records of the zone.
const MXS: &[(&str, u16, &str)] = &[
    ("amx.example.net", 10, "mx1.amx.example.net"),
    ("fail.example.org", 10, "mx1.fail.example.org"),
    ("fail.example.org", 20, "mx2.fail.example.org"),
];

/// One check_host() and the answer it must give.
struct Check {
    identity: Identity,
    /// The client (parsed once, so that no run pays for parsing it).
    ip: IpAddr,
    helo: &'static str,
    /// MAIL FROM; unused for HELO checks.
    sender: &'static str,
    expect: SpfResult,
    /// spfmilter's `mechanism` for the expected answer.
    mechanism: &'static str,
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("case IP")
}

enum Work {
    One(Check),
    /// HELO check + MAIL FROM check + the Received-SPF text for MAIL FROM.
    Message {
        helo: Check,
        mail_from: Check,
        /// The message's envelope, as the milter session holds it (made
        /// once, not per run).
        envelope: Envelope,
    },
}

struct Case {
    name: &'static str,
    work: Work,
}

fn cases() -> Vec<Case> {
    let mail_from = |ip_text, sender, expect, mechanism| Check {
        identity: Identity::MailFrom,
        ip: ip(ip_text),
        helo: "mail.client.example",
        sender,
        expect,
        mechanism,
    };
    vec![
        Case {
            name: "ip4-list",
            work: Work::One(mail_from(
                "192.0.2.203",
                "user@ip4.example.org",
                SpfResult::Pass,
                "+ip4:192.0.2.200/29",
            )),
        },
        Case {
            name: "include-2",
            work: Work::One(mail_from(
                "192.0.2.77",
                "user@example.com",
                SpfResult::Pass,
                "+include:_spf.example.com",
            )),
        },
        Case {
            name: "a-mx",
            work: Work::One(mail_from(
                "192.0.2.25",
                "user@amx.example.net",
                SpfResult::Pass,
                "+mx",
            )),
        },
        Case {
            name: "fail-walk",
            work: Work::One(mail_from(
                "192.0.2.99",
                "user@fail.example.org",
                SpfResult::Fail,
                "-all",
            )),
        },
        Case {
            name: "message",
            work: Work::Message {
                helo: Check {
                    identity: Identity::Helo,
                    ip: ip("192.0.2.77"),
                    helo: "mail.example.com",
                    sender: "",
                    expect: SpfResult::Pass,
                    mechanism: "+a",
                },
                mail_from: Check {
                    identity: Identity::MailFrom,
                    ip: ip("192.0.2.77"),
                    helo: "mail.example.com",
                    sender: "user@example.com",
                    expect: SpfResult::Pass,
                    mechanism: "+include:_spf.example.com",
                },
                envelope: Envelope {
                    client_ip: Some(ip("192.0.2.77")),
                    helo: "mail.example.com".to_owned(),
                    sender: "user@example.com".to_owned(),
                    first_recipient: Some(format!("<user@{RECEIVER}>")),
                    authenticated: false,
                },
            },
        },
    ]
}

// ---------------------------------------------------------------------------
// spfmilter
// ---------------------------------------------------------------------------

type OurEvaluator = Evaluator<CachingLookup<Zone>>;

fn our_evaluator() -> OurEvaluator {
    let mut zone = Zone::new();
    for (name, text) in TXT {
        zone = zone.with_txt(name, text);
    }
    for (name, ip) in A {
        zone = zone.with_ip(name, ip);
    }
    for (name, preference, exchange) in MXS {
        zone = zone.with_mx(name, *preference, exchange);
    }
    // Prefetch on, as the daemon runs by default (it does nothing warm).
    Evaluator::new(CachingLookup::new(zone, CacheOptions::default())).with_prefetch(true)
}

async fn our_check(evaluator: &OurEvaluator, check: &Check) -> SpfOutcome {
    let request = Request {
        ip: check.ip,
        helo: check.helo,
        sender: check.sender,
        receiver: Some(RECEIVER),
    };
    evaluator.check(&request, check.identity).await
}

/// What spfmilter produced for one run of a case.
enum OurOutput {
    One(SpfOutcome),
    Message(SpfOutcome, SpfOutcome, String),
}

async fn our_run(evaluator: &OurEvaluator, work: &Work) -> OurOutput {
    match work {
        Work::One(check) => OurOutput::One(our_check(evaluator, check).await),
        Work::Message {
            helo,
            mail_from,
            envelope,
        } => {
            let helo_outcome = our_check(evaluator, helo).await;
            let outcome = our_check(evaluator, mail_from).await;
            let value = received_spf_value(&outcome, envelope, mail_from.ip, RECEIVER);
            let header = fold("Received-SPF", &value, 78);
            OurOutput::Message(helo_outcome, outcome, header)
        }
    }
}

/// The cheap check done on every timed run: the results.
fn our_results_ok(work: &Work, output: &OurOutput) -> bool {
    match (work, output) {
        (Work::One(check), OurOutput::One(outcome)) => outcome.result == check.expect,
        (
            Work::Message {
                helo, mail_from, ..
            },
            OurOutput::Message(h, m, _),
        ) => h.result == helo.expect && m.result == mail_from.expect,
        _ => false,
    }
}

fn verify_our_outcome(what: &str, check: &Check, outcome: &SpfOutcome, problems: &mut Vec<String>) {
    if outcome.result != check.expect {
        problems.push(format!(
            "{what}: result {} (expected {}), problem {:?}",
            outcome.result, check.expect, outcome.problem
        ));
    }
    if outcome.mechanism.as_deref() != Some(check.mechanism) {
        problems.push(format!(
            "{what}: mechanism {:?} (expected {:?})",
            outcome.mechanism, check.mechanism
        ));
    }
    let explanation = (check.expect == SpfResult::Fail).then_some(DEFAULT_EXPLANATION);
    if outcome.explanation.as_deref() != explanation {
        problems.push(format!(
            "{what}: explanation {:?} (expected {explanation:?})",
            outcome.explanation
        ));
    }
}

/// The full check of one run: results, mechanisms, explanation, header.
fn verify_ours(work: &Work, output: &OurOutput) -> Vec<String> {
    let mut problems = Vec::new();
    match (work, output) {
        (Work::One(check), OurOutput::One(outcome)) => {
            verify_our_outcome(check.identity.as_str(), check, outcome, &mut problems);
        }
        (
            Work::Message {
                helo, mail_from, ..
            },
            OurOutput::Message(h, m, header),
        ) => {
            verify_our_outcome("helo", helo, h, &mut problems);
            verify_our_outcome("mailfrom", mail_from, m, &mut problems);
            let unfolded = header.replace("\n\t", " ");
            let wanted = format!(
                "Pass (sender SPF authorized) identity=mailfrom; client-ip={}; helo={}; \
                 envelope-from={}; receiver={RECEIVER}; mechanism=\"{}\"",
                mail_from.ip, mail_from.helo, mail_from.sender, mail_from.mechanism
            );
            if unfolded != wanted {
                problems.push(format!("header {header:?}, expected (unfolded) {wanted:?}"));
            }
            // "Received-SPF: " before the first line; a TAB (8 columns)
            // starting the others.
            let too_wide = header.lines().enumerate().any(|(i, line)| {
                let columns = if i == 0 {
                    14 + line.len()
                } else {
                    7 + line.len()
                };
                columns > 78
            });
            if too_wide {
                problems.push(format!("header not folded to 78 columns: {header:?}"));
            }
        }
        _ => problems.push("internal: output does not fit the case".to_owned()),
    }
    problems
}

// ---------------------------------------------------------------------------
// mail-auth
// ---------------------------------------------------------------------------

/// A `ResolverCache` over a hash map behind a read-write lock (shareable
/// across threads, as a server's cache must be). Counts misses, which on the
/// warm path must stay at zero.
struct MapCache<K, V> {
    map: RwLock<hashbrown::HashMap<K, V>>,
    misses: AtomicU64,
}

impl<K, V> Default for MapCache<K, V> {
    fn default() -> Self {
        Self {
            map: RwLock::new(hashbrown::HashMap::new()),
            misses: AtomicU64::new(0),
        }
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for MapCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hit = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        if hit.is_none() {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    fn insert(&self, key: K, value: V, _valid_until: Instant) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, value);
    }
}

struct Theirs {
    authenticator: MessageAuthenticator,
    txt: MapCache<Box<str>, Txt>,
    mx: MapCache<Box<str>, RecordSet<MX>>,
    ipv4: MapCache<Box<str>, RecordSet<Ipv4Addr>>,
    ipv6: MapCache<Box<str>, RecordSet<Ipv6Addr>>,
    ptr: MapCache<IpAddr, RecordSet<Box<str>>>,
}

/// The name as mail-auth keys its caches: lower case, trailing dot.
fn fqdn(name: &str) -> Box<str> {
    format!("{}.", name.to_ascii_lowercase()).into_boxed_str()
}

fn record_set<T>(records: Vec<T>) -> RecordSet<T> {
    RecordSet {
        rrset: records.into(),
        dnssec_status: DnssecStatus::Indeterminate,
    }
}

impl Theirs {
    /// Must be called inside the runtime (the resolver is built there).
    fn new() -> Self {
        // Never reached while the caches are warm; if it were, port 1 on
        // loopback refuses at once and the answer becomes a temperror.
        let mut connection = ConnectionConfig::udp();
        connection.port = 1;
        let server = NameServerConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST), true, vec![connection]);
        let mut options = ResolverOpts::default();
        options.timeout = Duration::from_millis(100);
        options.attempts = 0;
        let authenticator =
            MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![server]), options)
                .expect("mail-auth resolver");

        let theirs = Theirs {
            authenticator,
            txt: MapCache::default(),
            mx: MapCache::default(),
            ipv4: MapCache::default(),
            ipv6: MapCache::default(),
            ptr: MapCache::default(),
        };
        let forever = Instant::now() + Duration::from_secs(86_400);
        for (name, text) in TXT {
            let spf = Spf::parse(text.as_bytes())
                .unwrap_or_else(|e| panic!("mail-auth cannot parse {text:?}: {e:?}"));
            theirs.txt.insert(fqdn(name), Txt::from(spf), forever);
        }
        let mut names: Vec<&str> = A.iter().map(|(name, _)| *name).collect();
        names.dedup();
        for name in names {
            let addrs = A
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, ip)| ip.parse().expect("A record"))
                .collect();
            theirs.ipv4.insert(fqdn(name), record_set(addrs), forever);
        }
        let mut names: Vec<&str> = MXS.iter().map(|(name, ..)| *name).collect();
        names.dedup();
        for name in names {
            // As mail-auth stores an answer: grouped by preference, sorted,
            // exchanges as lower-case FQDNs.
            let mut records: Vec<MX> = Vec::new();
            for (_, preference, exchange) in MXS.iter().filter(|(n, ..)| *n == name) {
                records.push(MX {
                    preference: *preference,
                    exchanges: vec![fqdn(exchange)].into_boxed_slice(),
                });
            }
            records.sort_by_key(|mx| mx.preference);
            theirs.mx.insert(fqdn(name), record_set(records), forever);
        }
        theirs
    }

    fn misses(&self) -> u64 {
        [
            &self.txt.misses,
            &self.mx.misses,
            &self.ipv4.misses,
            &self.ipv6.misses,
            &self.ptr.misses,
        ]
        .iter()
        .map(|m| m.load(Ordering::Relaxed))
        .sum()
    }

    async fn check(&self, check: &Check) -> SpfOutput {
        let ip = check.ip;
        let params = match check.identity {
            Identity::Helo => SpfParameters::verify_ehlo(ip, check.helo, RECEIVER),
            Identity::MailFrom => {
                SpfParameters::verify_mail_from(ip, check.helo, RECEIVER, check.sender)
            }
        };
        self.authenticator
            .check_host(
                Parameters::new(params)
                    .with_txt_cache(&self.txt)
                    .with_mx_cache(&self.mx)
                    .with_ipv4_cache(&self.ipv4)
                    .with_ipv6_cache(&self.ipv6)
                    .with_ptr_cache(&self.ptr),
            )
            .await
    }

    async fn run(&self, work: &Work) -> TheirOutput {
        match work {
            Work::One(check) => TheirOutput::One(self.check(check).await),
            Work::Message {
                helo, mail_from, ..
            } => {
                let helo_output = self.check(helo).await;
                let output = self.check(mail_from).await;
                let header = ReceivedSpf::new(
                    &output,
                    mail_from.ip,
                    mail_from.helo,
                    mail_from.sender,
                    RECEIVER,
                )
                .to_header();
                TheirOutput::Message(helo_output, output, header)
            }
        }
    }
}

/// What mail-auth produced for one run of a case.
enum TheirOutput {
    One(SpfOutput),
    Message(SpfOutput, SpfOutput, String),
}

fn their_result(output: &SpfOutput) -> SpfResult {
    match output.result() {
        mail_auth::SpfResult::Pass => SpfResult::Pass,
        mail_auth::SpfResult::Fail => SpfResult::Fail,
        mail_auth::SpfResult::SoftFail => SpfResult::SoftFail,
        mail_auth::SpfResult::Neutral => SpfResult::Neutral,
        mail_auth::SpfResult::TempError => SpfResult::TempError,
        mail_auth::SpfResult::PermError => SpfResult::PermError,
        mail_auth::SpfResult::None => SpfResult::None,
    }
}

fn their_results_ok(work: &Work, output: &TheirOutput) -> bool {
    match (work, output) {
        (Work::One(check), TheirOutput::One(o)) => their_result(o) == check.expect,
        (
            Work::Message {
                helo, mail_from, ..
            },
            TheirOutput::Message(h, m, _),
        ) => their_result(h) == helo.expect && their_result(m) == mail_from.expect,
        _ => false,
    }
}

fn verify_theirs(work: &Work, output: &TheirOutput) -> Vec<String> {
    let mut problems = Vec::new();
    let mut one = |what: &str, check: &Check, o: &SpfOutput| {
        if their_result(o) != check.expect {
            problems.push(format!(
                "{what}: result {} (expected {})",
                their_result(o),
                check.expect
            ));
        }
    };
    match (work, output) {
        (Work::One(check), TheirOutput::One(o)) => one(check.identity.as_str(), check, o),
        (
            Work::Message {
                helo, mail_from, ..
            },
            TheirOutput::Message(h, m, header),
        ) => {
            one("helo", helo, h);
            one("mailfrom", mail_from, m);
            if !header.starts_with("Received-SPF: pass (") || !header.contains(mail_from.sender) {
                problems.push(format!("header {header:?}"));
            }
        }
        _ => problems.push("internal: output does not fit the case".to_owned()),
    }
    problems
}

// ---------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------

/// One library running one case.
trait Subject {
    /// Runs the case once; false if a result is not the expected one.
    async fn once(&self) -> bool;
}

struct OurCase<'a> {
    evaluator: &'a OurEvaluator,
    work: &'a Work,
}

impl Subject for OurCase<'_> {
    async fn once(&self) -> bool {
        let output = our_run(self.evaluator, self.work).await;
        let ok = our_results_ok(self.work, &output);
        black_box(output);
        ok
    }
}

struct TheirCase<'a> {
    theirs: &'a Theirs,
    work: &'a Work,
}

impl Subject for TheirCase<'_> {
    async fn once(&self) -> bool {
        let output = self.theirs.run(self.work).await;
        let ok = their_results_ok(self.work, &output);
        black_box(output);
        ok
    }
}

/// Runs of one timed stretch.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    runs: u64,
    wrong: u64,
    elapsed: Duration,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.runs as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `subject` for about `budget`, reading the clock only between
/// batches (each a few milliseconds long) so that it costs nothing per run.
async fn run_for(subject: &impl Subject, budget: Duration) -> Sample {
    let mut sample = Sample::default();
    let mut batch: u64 = 8;
    let start = Instant::now();
    loop {
        let batch_start = Instant::now();
        for _ in 0..batch {
            if !subject.once().await {
                sample.wrong += 1;
            }
        }
        sample.runs += batch;
        sample.elapsed = start.elapsed();
        if sample.elapsed >= budget {
            return sample;
        }
        if batch_start.elapsed() < Duration::from_millis(4) {
            batch *= 2;
        }
    }
}

/// `--profile` runs: a time budget, or exactly `evals` evaluations.
async fn run_profiled(subject: &impl Subject, budget: Duration, evals: Option<u64>) -> Sample {
    let Some(evals) = evals else {
        return run_for(subject, budget).await;
    };
    let mut sample = Sample::default();
    let start = Instant::now();
    for _ in 0..evals {
        if !subject.once().await {
            sample.wrong += 1;
        }
    }
    sample.runs = evals;
    sample.elapsed = start.elapsed();
    sample
}

/// Timed stretches per library per case; the two libraries alternate, so a
/// burst of load from a neighbour hits both rather than one.
const SLICES: u32 = 5;

#[derive(Debug, Default)]
struct Figures {
    /// Evaluations per second of each slice.
    rates: Vec<f64>,
    /// Timed runs (warm-up included) that gave a wrong result.
    wrong: u64,
}

impl Figures {
    fn add(&mut self, sample: Sample) {
        self.rates.push(sample.rate());
        self.wrong += sample.wrong;
    }

    fn sorted(&self) -> Vec<f64> {
        let mut rates = self.rates.clone();
        rates.sort_by(f64::total_cmp);
        rates
    }

    fn median(&self) -> f64 {
        let rates = self.sorted();
        rates[rates.len() / 2]
    }

    /// (max − min) / median, in percent.
    fn spread(&self) -> f64 {
        let rates = self.sorted();
        (rates[rates.len() - 1] - rates[0]) / self.median() * 100.0
    }
}

struct Row {
    name: &'static str,
    ours: Figures,
    theirs: Figures,
    /// Why a figure must not be shown, per library.
    our_mismatch: Vec<String>,
    their_mismatch: Vec<String>,
}

async fn bench_case(case: &Case, evaluator: &OurEvaluator, theirs: &Theirs, seconds: f64) -> Row {
    let ours = OurCase {
        evaluator,
        work: &case.work,
    };
    let mail_auth = TheirCase {
        theirs,
        work: &case.work,
    };
    let warm_up = Duration::from_millis(300);
    let slice = Duration::from_secs_f64(seconds / f64::from(SLICES));

    let mut row = Row {
        name: case.name,
        ours: Figures::default(),
        theirs: Figures::default(),
        our_mismatch: verify_ours(&case.work, &our_run(evaluator, &case.work).await),
        their_mismatch: verify_theirs(&case.work, &theirs.run(&case.work).await),
    };
    let our_misses = evaluator.lookup().stats().misses;
    let their_misses = theirs.misses();

    row.ours.wrong += run_for(&ours, warm_up).await.wrong;
    row.theirs.wrong += run_for(&mail_auth, warm_up).await.wrong;
    for _ in 0..SLICES {
        row.ours.add(run_for(&ours, slice).await);
        row.theirs.add(run_for(&mail_auth, slice).await);
    }

    // The same full checks after the timed runs, and proof that both stayed
    // on their warm path.
    row.our_mismatch.extend(verify_ours(
        &case.work,
        &our_run(evaluator, &case.work).await,
    ));
    row.their_mismatch
        .extend(verify_theirs(&case.work, &theirs.run(&case.work).await));
    if row.ours.wrong > 0 {
        row.our_mismatch
            .push(format!("{} timed runs gave a wrong result", row.ours.wrong));
    }
    if row.theirs.wrong > 0 {
        row.their_mismatch.push(format!(
            "{} timed runs gave a wrong result",
            row.theirs.wrong
        ));
    }
    let our_new_misses = evaluator.lookup().stats().misses - our_misses;
    if our_new_misses > 0 {
        row.our_mismatch.push(format!(
            "{our_new_misses} DNS cache misses while timing (not the warm path)"
        ));
    }
    let their_new_misses = theirs.misses() - their_misses;
    if their_new_misses > 0 {
        row.their_mismatch.push(format!(
            "{their_new_misses} cache misses while timing (not the warm path)"
        ));
    }
    row
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned());
    let rustc = command_output("rustc", &["--version"]).unwrap_or_else(|| "rustc ?".to_owned());
    let date =
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".to_owned());
    format!("machine: {model}, nproc {cpus}, load {load} | {rustc} | {date}")
}

/// 1234567.8 → "1,234,568".
fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_row(row: &Row) {
    let rate = |figures: &Figures, mismatch: &[String]| {
        if mismatch.is_empty() {
            let median = figures.median();
            format!(
                "{:>13} {:>8.1} {:>5.1}%",
                grouped(median),
                1e9 / median,
                figures.spread()
            )
        } else {
            format!("{:>29}", "MISMATCH")
        }
    };
    let ratio = if row.our_mismatch.is_empty() && row.their_mismatch.is_empty() {
        format!("{:.2}x", row.ours.median() / row.theirs.median())
    } else {
        "n/a".to_owned()
    };
    println!(
        "{:<10} | {} | {} | {:>7}",
        row.name,
        rate(&row.ours, &row.our_mismatch),
        rate(&row.theirs, &row.their_mismatch),
        ratio
    );
}

fn print_mismatches(row: &Row) -> bool {
    for (library, problems) in [
        ("spfmilter", &row.our_mismatch),
        ("mail-auth", &row.their_mismatch),
    ] {
        // The same problem found before and after timing is shown once.
        let mut shown: Vec<&String> = Vec::new();
        for problem in problems {
            if !shown.contains(&problem) {
                println!("!!! MISMATCH {} {library}: {problem}", row.name);
                shown.push(problem);
            }
        }
    }
    !row.our_mismatch.is_empty() || !row.their_mismatch.is_empty()
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

struct Options {
    bench: bool,
    seconds: f64,
    only: Vec<String>,
    /// `--profile spfmilter|mail-auth`: run only that library (for perf or
    /// callgrind), no comparison.
    profile: Option<String>,
    /// `--evals N` with `--profile`: exactly N evaluations per case instead
    /// of a time budget, so instruction counts (callgrind) divide evenly.
    evals: Option<u64>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        bench: false,
        seconds: 1.5,
        only: Vec::new(),
        profile: None,
        evals: None,
    };
    if let Ok(value) = std::env::var("SPF_BENCH_SECONDS") {
        options.seconds = value
            .parse()
            .map_err(|_| format!("SPF_BENCH_SECONDS={value:?} is not a number"))?;
    }
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let seconds = match arg.as_str() {
            "--bench" => {
                options.bench = true;
                continue;
            }
            "--seconds" => args.next().ok_or("--seconds needs a value")?,
            "--evals" => {
                let n = args.next().ok_or("--evals needs a number")?;
                options.evals = Some(
                    n.parse()
                        .map_err(|_| format!("--evals {n:?}: not a number"))?,
                );
                continue;
            }
            "--profile" => {
                let library = args
                    .next()
                    .ok_or("--profile needs spfmilter or mail-auth")?;
                if library != "spfmilter" && library != "mail-auth" {
                    return Err(format!("--profile {library:?}: spfmilter or mail-auth"));
                }
                options.profile = Some(library);
                continue;
            }
            other => match other.strip_prefix("--seconds=") {
                Some(value) => value.to_owned(),
                // Other flags (from cargo or libtest conventions) are ignored.
                None if other.starts_with('-') => continue,
                None => {
                    options.only.push(other.to_owned());
                    continue;
                }
            },
        };
        options.seconds = seconds
            .parse()
            .map_err(|_| format!("--seconds {seconds:?} is not a number"))?;
    }
    if !(options.seconds.is_finite() && options.seconds > 0.0) {
        return Err(format!(
            "measuring time {} s is not positive",
            options.seconds
        ));
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("spf_eval: {e}");
            return ExitCode::from(2);
        }
    };
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| options.only.is_empty() || options.only.iter().any(|o| o == c.name))
        .collect();
    if cases.is_empty() {
        eprintln!("spf_eval: no case matches {:?}", options.only);
        return ExitCode::from(2);
    }

    // One thread, one core: everything is awaited in sequence on it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let failed = runtime.block_on(async {
        let evaluator = our_evaluator();
        let theirs = Theirs::new();

        // The untimed pass that warms spfmilter's DNS and record caches (and
        // the smoke check when not benchmarking).
        let mut failed = false;
        for case in &cases {
            let ours = verify_ours(&case.work, &our_run(&evaluator, &case.work).await);
            let mail_auth = verify_theirs(&case.work, &theirs.run(&case.work).await);
            failed |= print_mismatches(&Row {
                name: case.name,
                ours: Figures::default(),
                theirs: Figures::default(),
                our_mismatch: ours,
                their_mismatch: mail_auth,
            });
        }
        if !options.bench {
            if !failed {
                println!(
                    "spf_eval: smoke check passed ({} cases, both libraries); \
                     `cargo bench --bench spf_eval` prints the figures",
                    cases.len()
                );
            }
            return failed;
        }

        if let Some(library) = &options.profile {
            let budget = Duration::from_secs_f64(options.seconds);
            for case in &cases {
                let sample = if library == "spfmilter" {
                    let subject = OurCase {
                        evaluator: &evaluator,
                        work: &case.work,
                    };
                    run_profiled(&subject, budget, options.evals).await
                } else {
                    let subject = TheirCase {
                        theirs: &theirs,
                        work: &case.work,
                    };
                    run_profiled(&subject, budget, options.evals).await
                };
                println!(
                    "{library} {:<10} {:>13}/s {:>8.1} ns{}",
                    case.name,
                    grouped(sample.rate()),
                    1e9 / sample.rate(),
                    if sample.wrong > 0 { "  MISMATCH" } else { "" }
                );
                failed |= sample.wrong > 0;
            }
            return failed;
        }

        println!("spf_eval: warm-cache SPF evaluations on one core (tokio current_thread, sequential awaits)");
        println!("{}", machine_line());
        println!(
            "spfmilter {}: Evaluator<CachingLookup<Zone>>, DNS cache and parsed-record cache warm",
            env!("CARGO_PKG_VERSION")
        );
        println!(
            "mail-auth 0.13.3: MessageAuthenticator::check_host, ResolverCaches (RwLock<HashMap>) \
             pre-filled with parsed records"
        );
        println!(
            "per case and library: 0.3 s warm-up, then {:.2} s in {SLICES} alternating slices; \
             figures are the median slice, ± is (max-min)/median",
            options.seconds
        );
        println!("message = HELO check + MAIL FROM check + Received-SPF text (ours: received_spf_value + fold; mail-auth: ReceivedSpf::to_header)");
        println!();
        println!(
            "{:<10} | {:>13} {:>8} {:>6} | {:>13} {:>8} {:>6} | {:>7}",
            "case", "spfmilter/s", "ns/eval", "±", "mail-auth/s", "ns/eval", "±", "ratio"
        );
        println!("{}", "-".repeat(86));
        let mut rows = Vec::new();
        for case in &cases {
            let row = bench_case(case, &evaluator, &theirs, options.seconds).await;
            print_row(&row);
            rows.push(row);
        }
        println!();
        println!("ratio = spfmilter evals/s ÷ mail-auth evals/s (> 1: spfmilter faster)");
        let mut all_faster = true;
        for row in &rows {
            failed |= print_mismatches(row);
            if row.our_mismatch.is_empty()
                && row.their_mismatch.is_empty()
                && row.ours.median() <= row.theirs.median()
            {
                all_faster = false;
                println!("note: {} — spfmilter is not faster than mail-auth", row.name);
            }
        }
        if !failed && all_faster {
            println!("spfmilter is faster than mail-auth on every case");
        }
        failed
    });
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
