//! All 203 cases of the OpenSPF RFC 7208 test suite through the in-memory
//! DNS. Every case must pass; explanations are compared where the suite
//! gives one.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::suite::{self, run_case};
use spfmilter::dns::cache::{CacheOptions, Source, Sourced};
use spfmilter::dns::{CachingLookup, Mx, Txt, Zone};
use spfmilter::spf::Evaluator;

#[tokio::test]
async fn the_whole_suite_passes_with_in_memory_dns() {
    let scenarios = suite::load();
    let total: usize = scenarios.iter().map(|s| s.cases.len()).sum();
    assert_eq!(total, 203, "the 2014.04 suite has 203 cases");
    let mut failures = Vec::new();
    for scenario in &scenarios {
        let evaluator: Evaluator<Zone> = Evaluator::new(scenario.zone.clone());
        for case in &scenario.cases {
            if let Err(why) = run_case(&evaluator, case).await {
                failures.push(why);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The zone of a scenario as a cache's source whose every answer takes one
/// turn of the scheduler: every query of a cold cache is waited for, as one
/// over the network is, so prefetch starts for every record fetched.
struct Yielding {
    zone: Zone,
    queries: AtomicUsize,
}

impl Yielding {
    async fn turn(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::task::yield_now().await;
    }
}

impl Source for Yielding {
    async fn txt_with_ttl(&self, name: &str) -> Sourced<Txt> {
        self.turn().await;
        self.zone.txt_with_ttl(name).await
    }
    async fn a_with_ttl(&self, name: &str) -> Sourced<Ipv4Addr> {
        self.turn().await;
        self.zone.a_with_ttl(name).await
    }
    async fn aaaa_with_ttl(&self, name: &str) -> Sourced<Ipv6Addr> {
        self.turn().await;
        self.zone.aaaa_with_ttl(name).await
    }
    async fn mx_with_ttl(&self, name: &str) -> Sourced<Mx> {
        self.turn().await;
        self.zone.mx_with_ttl(name).await
    }
    async fn ptr_with_ttl(&self, ip: IpAddr) -> Sourced<String> {
        self.turn().await;
        self.zone.ptr_with_ttl(ip).await
    }
}

/// The suite through a cache, each case on a cold one, with prefetch off
/// and on: the same results, and prefetch did run (it asks for terms a
/// short-cut evaluation never reaches, so it makes more queries in all).
#[tokio::test]
async fn the_whole_suite_passes_through_a_cold_cache_with_prefetch_on_and_off() {
    let scenarios = suite::load();
    let mut failures = Vec::new();
    let mut queries = [0, 0];
    for scenario in &scenarios {
        for case in &scenario.cases {
            for (prefetch, queries) in [false, true].into_iter().zip(&mut queries) {
                let evaluator = Evaluator::new(CachingLookup::new(
                    Yielding {
                        zone: scenario.zone.clone(),
                        queries: AtomicUsize::new(0),
                    },
                    CacheOptions::default(),
                ))
                .with_prefetch(prefetch);
                assert_eq!(evaluator.prefetches(), prefetch);
                if let Err(why) = run_case(&evaluator, case).await {
                    failures.push(format!("prefetch {prefetch}: {why}"));
                }
                *queries += evaluator.lookup().source().queries.load(Ordering::Relaxed);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        queries[1] > queries[0],
        "prefetch made no query: {queries:?}"
    );
}

#[test]
fn the_suite_file_is_release_2014_04() {
    // Guards against testing against a different (e.g. edited) suite.
    let bytes = std::fs::read(suite::suite_path()).expect("suite file");
    let hex = sha256_hex(&bytes);
    assert_eq!(hex, suite::SUITE_SHA256);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
