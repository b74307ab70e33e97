//! The OpenSPF RFC 7208 test suite (release 2014.04), read from
//! `../shared/spf/rfc7208-tests.yml` (or `$SPF_TEST_SUITE`); the file is
//! third-party data and is not copied into this repository.
//!
//! Zone data follows the suite driver of pyspf (`testspf.py`): the record
//! type `SPF` (99) is not looked up by RFC 7208 implementations, so a name's
//! SPF records are also published as TXT unless the name lists a TXT record
//! of its own (`TXT: NONE` means "no TXT record, and do not copy").
//! `TIMEOUT` makes queries time out for the types not listed before it.

use std::net::IpAddr;
use std::path::PathBuf;

use spfmilter::dns::Lookup;
use spfmilter::dns::Zone;
use spfmilter::dns::zone::Entry;
use spfmilter::spf::{DEFAULT_EXPLANATION, Evaluator, Identity, Request, SpfOutcome, SpfResult};
use yaml_rust2::{Yaml, YamlLoader};

/// One test case.
#[derive(Debug, Clone)]
pub struct Case {
    pub scenario: String,
    pub name: String,
    pub helo: String,
    pub host: IpAddr,
    pub mailfrom: String,
    /// Acceptable results (some cases allow two).
    pub results: Vec<SpfResult>,
    /// Expected explanation; `Some("DEFAULT")` means the default one.
    pub explanation: Option<String>,
}

/// One YAML document: cases sharing a zone.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub description: String,
    pub cases: Vec<Case>,
    pub zone: Zone,
}

/// The SHA-256 of release 2014.04, as published with the suite.
pub const SUITE_SHA256: &str = "901f561a6e2b1c1590a40a61b1ac7601226fd7045a7aae591a4d25421358d6f9";

pub fn suite_path() -> PathBuf {
    if let Some(path) = std::env::var_os("SPF_TEST_SUITE") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/spf/rfc7208-tests.yml")
}

/// Loads every scenario. Panics with a clear message if the file is missing
/// (the suite is required: a conformance test that silently skips proves
/// nothing).
pub fn load() -> Vec<Scenario> {
    let path = suite_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the RFC 7208 test suite at {}: {e}. Put it there or set \
             SPF_TEST_SUITE (it ships in the pyspf 2.0.14 sdist as test/rfc7208-tests.yml)",
            path.display()
        )
    });
    let docs = YamlLoader::load_from_str(&text).expect("the suite is valid YAML");
    docs.iter().map(scenario).collect()
}

fn scenario(doc: &Yaml) -> Scenario {
    let description = doc["description"].as_str().unwrap_or("").to_owned();
    let mut cases = Vec::new();
    for (name, test) in doc["tests"].as_hash().expect("tests") {
        let name = name.as_str().expect("test name").to_owned();
        let results = match &test["result"] {
            Yaml::String(r) => vec![r.parse().unwrap()],
            Yaml::Array(rs) => rs
                .iter()
                .map(|r| r.as_str().unwrap().parse().unwrap())
                .collect(),
            other => panic!("{name}: unexpected result {other:?}"),
        };
        cases.push(Case {
            scenario: description.clone(),
            helo: scalar(&test["helo"]),
            host: scalar(&test["host"]).parse().expect("host is an IP"),
            mailfrom: scalar(&test["mailfrom"]),
            results,
            explanation: test["explanation"].as_str().map(str::to_owned),
            name,
        });
    }
    Scenario {
        description,
        cases,
        zone: zone(&doc["zonedata"]),
    }
}

fn scalar(y: &Yaml) -> String {
    match y {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Real(r) => r.clone(),
        Yaml::Null | Yaml::BadValue => String::new(),
        other => panic!("unexpected scalar {other:?}"),
    }
}

fn strings(y: &Yaml) -> Vec<Vec<u8>> {
    match y {
        Yaml::Array(parts) => parts.iter().map(|p| scalar(p).into_bytes()).collect(),
        other => vec![scalar(other).into_bytes()],
    }
}

fn zone(data: &Yaml) -> Zone {
    let mut zone = Zone::new();
    let Some(names) = data.as_hash() else {
        return zone;
    };
    for (name, entries) in names {
        let name = name.as_str().expect("zone name");
        let entries = entries.as_vec().expect("zone entries");
        let has_txt = entries.iter().any(|e| !e["TXT"].is_badvalue());
        let mut copied_spf = Vec::new();
        for entry in entries {
            if entry.as_str() == Some("TIMEOUT") {
                zone.add(name, Entry::Timeout);
                continue;
            }
            let (rtype, value) = entry.as_hash().and_then(|h| h.front()).expect("entry");
            let rtype = rtype.as_str().expect("record type");
            if value.as_str() == Some("NONE") {
                continue;
            }
            let record = match rtype {
                "SPF" => {
                    if !has_txt {
                        copied_spf.push(Entry::Txt(strings(value)));
                    }
                    continue;
                }
                "TXT" => Entry::Txt(strings(value)),
                "A" => Entry::A(scalar(value).parse().expect("A")),
                "AAAA" => Entry::Aaaa(scalar(value).parse().expect("AAAA")),
                "MX" => {
                    let mx = value.as_vec().expect("MX [pref, name]");
                    let pref = u16::try_from(mx[0].as_i64().expect("MX preference")).unwrap();
                    Entry::Mx(pref, scalar(&mx[1]))
                }
                "PTR" => Entry::Ptr(scalar(value)),
                "CNAME" => Entry::Cname(scalar(value)),
                other => panic!("unknown record type {other}"),
            };
            zone.add(name, record);
        }
        // pyspf's driver appends the copies after everything else, so they
        // come after a TIMEOUT entry too.
        for txt in copied_spf {
            zone.add(name, txt);
        }
    }
    zone
}

/// Runs one case; `Err` describes the mismatch.
pub async fn run_case(
    evaluator: &Evaluator<impl Lookup>,
    case: &Case,
) -> Result<SpfOutcome, String> {
    let request = Request {
        ip: case.host,
        helo: &case.helo,
        sender: &case.mailfrom,
        receiver: None,
    };
    let outcome = evaluator.check(&request, Identity::MailFrom).await;
    if !case.results.contains(&outcome.result) {
        return Err(format!(
            "{}/{}: expected {:?}, got {} (problem: {:?}, mechanism: {:?})",
            case.scenario,
            case.name,
            case.results,
            outcome.result,
            outcome.problem,
            outcome.mechanism
        ));
    }
    if let Some(expected) = &case.explanation {
        let expected = if expected == "DEFAULT" {
            DEFAULT_EXPLANATION
        } else {
            expected
        };
        if outcome.explanation.as_deref() != Some(expected) {
            return Err(format!(
                "{}/{}: explanation: expected {expected:?}, got {:?}",
                case.scenario, case.name, outcome.explanation
            ));
        }
    }
    Ok(outcome)
}
