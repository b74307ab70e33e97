//! What an SPF evaluation produced (RFC 7208 §2.6), with enough detail to
//! build Received-SPF (`mechanism=`, `problem=`, §9.1), Authentication-Results
//! and policyd-spf's comments without re-evaluating anything.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use compact_str::CompactString;
use serde::Serialize;

/// The seven results of check_host() (RFC 7208 §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpfResult {
    None,
    Neutral,
    Pass,
    Fail,
    SoftFail,
    TempError,
    PermError,
}

impl SpfResult {
    /// The RFC's lower-case name (`softfail`, `temperror`, …), as used in
    /// Authentication-Results (RFC 8601 §2.7.2) and in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }

    /// policyd-spf's capitalised spelling (`Pass`, `Softfail`, `Permerror`).
    pub fn capitalized(self) -> &'static str {
        match self {
            SpfResult::None => "None",
            SpfResult::Neutral => "Neutral",
            SpfResult::Pass => "Pass",
            SpfResult::Fail => "Fail",
            SpfResult::SoftFail => "Softfail",
            SpfResult::TempError => "Temperror",
            SpfResult::PermError => "Permerror",
        }
    }
}

impl fmt::Display for SpfResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SpfResult {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "none" => SpfResult::None,
            "neutral" => SpfResult::Neutral,
            "pass" => SpfResult::Pass,
            "fail" => SpfResult::Fail,
            "softfail" => SpfResult::SoftFail,
            "temperror" => SpfResult::TempError,
            "permerror" => SpfResult::PermError,
            other => return Err(format!("unknown SPF result {other:?}")),
        })
    }
}

/// Which identity was checked (RFC 7208 §2.3, §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Identity {
    Helo,
    #[serde(rename = "mailfrom")]
    MailFrom,
}

impl Identity {
    pub fn as_str(self) -> &'static str {
        match self {
            Identity::Helo => "helo",
            Identity::MailFrom => "mailfrom",
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole answer of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpfOutcome {
    pub identity: Identity,
    pub result: SpfResult,
    /// The directive that matched, qualifier always shown (`-all`,
    /// `+include:_spf.example.com`), or `default` when none matched and the
    /// result is the implicit neutral (§4.7). `None` for none, permerror and
    /// temperror.
    ///
    /// Short strings (this one, `domain`) are stored inline: an outcome is
    /// built for every identity of every message.
    pub mechanism: Option<CompactString>,
    /// For permerror and temperror: what went wrong and where.
    pub problem: Option<Box<str>>,
    /// For fail: the domain's `exp=` text, expanded (§6.2), or the
    /// configured default explanation.
    pub explanation: Option<Arc<str>>,
    /// The domain whose policy was evaluated (the sender's or HELO domain).
    pub domain: CompactString,
    /// The <sender> used: `local@domain`, `postmaster@helo` for HELO and
    /// null-sender checks.
    pub sender: CompactString,
    /// DNS-querying terms evaluated (§4.6.4: at most 10).
    pub dns_lookups: u32,
    /// Lookups that returned no answer or NXDOMAIN (§4.6.4).
    pub void_lookups: u32,
    /// Every `include:` and `redirect=` target the evaluation entered, at
    /// any depth, in order (macro-expanded names as queried), when the
    /// evaluator tracks them (`Evaluator::with_via`); empty otherwise.
    /// The evaluation stops at the first match (§4.6.2), so these are the
    /// targets evaluated on the way to the result.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<CompactString>,
}
