//! All 203 cases of the OpenSPF RFC 7208 test suite through the in-memory
//! DNS. Every case must pass; explanations are compared where the suite
//! gives one.

mod common;

use common::suite::{self, run_case};
use spfmilter::dns::Zone;
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
