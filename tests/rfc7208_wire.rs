//! The OpenSPF RFC 7208 suite over the wire: each scenario's zone is served
//! by a real authoritative DNS server on loopback (tests/common/dns_server.rs)
//! and queried through the production resolver (hickory) and cache.
//!
//! Every case is represented on the wire, with one approximation:
//! `null-text` publishes a TXT record with zero character-strings, which
//! the wire format cannot carry (RFC 1035 §3.3.14: one or more); the server
//! sends one empty string instead, which SPF treats the same way (a non-SPF
//! TXT record), so the case still runs and passes. `TIMEOUT` entries are
//! queries the server never answers, so those cases exercise real resolver
//! timeouts. Every case runs with prefetch off and on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::dns_server::TestDnsServer;
use common::suite::{self, run_case};
use spfmilter::dns::cache::CacheOptions;
use spfmilter::dns::{CachingLookup, HickoryLookup, ResolverOptions};
use spfmilter::spf::Evaluator;

/// Short, so the suite's TIMEOUT cases take little time; loopback answers
/// come back in well under a millisecond on an idle machine.
const QUERY_TIMEOUT: Duration = Duration::from_millis(300);

/// A case that fails with [`QUERY_TIMEOUT`] is run again with this one:
/// on a loaded machine a loopback answer can take longer than 300 ms, and
/// the case would fail for the machine, not for spfmilter. Only a case
/// that also fails with this timeout is a failure.
const PATIENT_TIMEOUT: Duration = Duration::from_secs(5);

fn resolver(server: &TestDnsServer, timeout: Duration) -> HickoryLookup {
    HickoryLookup::new(&ResolverOptions {
        nameservers: vec![server.addr()],
        timeout,
        attempts: 1,
        ..ResolverOptions::default()
    })
    .expect("resolver for the test server")
}

/// Evaluators through the production cache, with prefetch off and on.
fn cached(resolver: &Arc<HickoryLookup>) -> [Evaluator<CachingLookup<Arc<HickoryLookup>>>; 2] {
    [false, true].map(|prefetch| {
        Evaluator::new(CachingLookup::new(
            Arc::clone(resolver),
            CacheOptions::default(),
        ))
        .with_prefetch(prefetch)
    })
}

/// Runs `case` every way: uncached (every query over the wire), through
/// `shared` caches (prefetch off and on; a cold pass, then a warm one
/// served from cached positive and negative answers) and through a cache
/// of its own (every record over the wire, starting prefetches). Returns
/// what failed.
async fn run_every_way(
    resolver: &Arc<HickoryLookup>,
    shared: &[Evaluator<CachingLookup<Arc<HickoryLookup>>>; 2],
    case: &suite::Case,
) -> Vec<String> {
    let mut failures = Vec::new();
    let direct = Evaluator::new(Arc::clone(resolver));
    if let Err(why) = run_case(&direct, case).await {
        failures.push(format!("wire: {why}"));
    }
    for evaluator in shared {
        let prefetch = evaluator.prefetches();
        for pass in ["cold", "warm"] {
            if let Err(why) = run_case(evaluator, case).await {
                failures.push(format!("cached ({pass}, prefetch {prefetch}): {why}"));
            }
        }
    }
    let cold = Evaluator::new(CachingLookup::new(
        Arc::clone(resolver),
        CacheOptions::default(),
    ))
    .with_prefetch(true);
    if let Err(why) = run_case(&cold, case).await {
        failures.push(format!("own cache, prefetch true: {why}"));
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_suite_passes_over_the_wire() {
    let scenarios = suite::load();
    let mut failures = Vec::new();
    let mut total = 0;
    for scenario in &scenarios {
        let server = TestDnsServer::start(Arc::new(scenario.zone.clone()));
        // The caches are shared by the scenario's cases, as in the daemon.
        let quick = Arc::new(resolver(&server, QUERY_TIMEOUT));
        let shared = cached(&quick);
        for case in &scenario.cases {
            total += 1;
            if run_every_way(&quick, &shared, case).await.is_empty() {
                continue;
            }
            // Again, patiently, on caches of its own (a cache shared with
            // the failed run could hold its time-outs' consequences).
            let patient = Arc::new(resolver(&server, PATIENT_TIMEOUT));
            let again = run_every_way(&patient, &cached(&patient), case).await;
            failures.extend(
                again
                    .into_iter()
                    .map(|why| format!("{why} (with a {PATIENT_TIMEOUT:?} query timeout too)")),
            );
        }
        assert!(
            server.queries() > 0,
            "{}: no query reached the server",
            scenario.description
        );
    }
    assert_eq!(total, 203);
    assert!(
        failures.is_empty(),
        "{} failures over the wire:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
