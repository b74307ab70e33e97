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
/// come back in well under a millisecond.
const QUERY_TIMEOUT: Duration = Duration::from_millis(300);

fn resolver(server: &TestDnsServer) -> HickoryLookup {
    HickoryLookup::new(&ResolverOptions {
        nameservers: vec![server.addr()],
        timeout: QUERY_TIMEOUT,
        attempts: 1,
        ..ResolverOptions::default()
    })
    .expect("resolver for the test server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_suite_passes_over_the_wire() {
    let scenarios = suite::load();
    let mut failures = Vec::new();
    let mut total = 0;
    for scenario in &scenarios {
        let server = TestDnsServer::start(Arc::new(scenario.zone.clone()));
        // Uncached: every case goes over the wire.
        let direct = Evaluator::new(resolver(&server));
        // Through the production cache, twice, so the second pass is served
        // from cached positive and negative answers.
        // With prefetch off and on (through a cache shared by the
        // scenario's cases, as in the daemon).
        let resolver = Arc::new(resolver(&server));
        let cached = [false, true].map(|prefetch| {
            Evaluator::new(CachingLookup::new(
                Arc::clone(&resolver),
                CacheOptions::default(),
            ))
            .with_prefetch(prefetch)
        });
        for case in &scenario.cases {
            total += 1;
            if let Err(why) = run_case(&direct, case).await {
                failures.push(format!("wire: {why}"));
            }
            for evaluator in &cached {
                let prefetch = evaluator.prefetches();
                for pass in ["cold", "warm"] {
                    if let Err(why) = run_case(evaluator, case).await {
                        failures.push(format!("cached ({pass}, prefetch {prefetch}): {why}"));
                    }
                }
            }
            // And on a cache of its own, so that every record of the case
            // comes over the wire and starts prefetches.
            let cold = Evaluator::new(CachingLookup::new(
                Arc::clone(&resolver),
                CacheOptions::default(),
            ))
            .with_prefetch(true);
            if let Err(why) = run_case(&cold, case).await {
                failures.push(format!("own cache, prefetch true: {why}"));
            }
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
