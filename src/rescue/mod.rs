//! The rescue of a held SPF reject at end of message: does the message
//! itself prove who wrote it (an aligned DKIM signature, or a trusted ARC
//! sealer's verdict)? Below the session and beside [`crate::spf`]: it sees
//! the message's bytes, the MAIL FROM domain and [`crate::dns::Lookup`],
//! never a milter type.
//!
//! The session decides *whether* a message is held and what to answer; this
//! module only says whether the message rescues itself.

//!
//! How a message is verified:
//!
//! 1. mail-auth parses it (strict: signatures with `l=` are refused, see
//!    [`dkim`]); the From domain is taken only if there is exactly one From
//!    field with exactly one address.
//! 2. Each method checks what it can without DNS ([`dkim::plan`],
//!    [`arc::plan`]): unaligned signatures, altered bodies, untrusted
//!    sealers never cost a query.
//! 3. The keys of what is left are fetched through [`Lookup`], at once and
//!    within `Settings::time_limit` ([`keys`]), and handed to mail-auth as
//!    its TXT cache; mail-auth's own resolver has no name server.
//! 4. mail-auth verifies; one aligned signature or one trusted chain that
//!    verifies rescues the message, whatever failed elsewhere. A key whose
//!    lookup failed for now makes the verdict [`Verdict::Temporary`] only if
//!    nothing rescued the message.

mod aar;
mod arc;
mod dkim;
mod keys;
pub mod org_domain;

use std::time::Duration;

use mail_auth::{AuthenticatedMessage, Parameters};

use crate::dns::Lookup;

/// A way a held message may prove its author.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// A DKIM signature (RFC 6376) that verifies, with `d=` aligned with the
    /// RFC 5322 From domain or the MAIL FROM domain.
    Dkim,
    /// A valid ARC chain (RFC 8617) whose newest set is sealed by a trusted
    /// sealer and whose ARC-Authentication-Results says the message passed.
    Arc,
}

/// What the rescue of one message is allowed to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The methods tried; empty means the rescue is off (nothing is held).
    pub methods: Vec<Method>,
    /// ARC sealer domains (`d=` of ARC-Seal) whose verdicts are trusted:
    /// lower-case, without a trailing dot.
    pub trusted_arc_sealers: Vec<String>,
    /// The time all key lookups of one message may take together.
    pub time_limit: Duration,
}

/// What the message proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The message proves its author: the held reject is cancelled. The text
    /// says by what, for the log (`dkim d=example.org aligned with From`).
    Rescued(String),
    /// Nothing rescued it: the held reject stands. The text says why, for
    /// the log.
    NotRescued(String),
    /// A temporary failure (a key lookup's SERVFAIL or timeout, the time
    /// limit): neither reject nor accept; the session defers. The text says
    /// what failed, for the log.
    Temporary(String),
}

/// Whether `message` rescues itself under `settings`.
///
/// `message` is the whole message as the MTA received it: the header
/// fields in their order, each `Name: value` with its folding as received,
/// lines ending in CRLF, an empty line, then the body with CRLF line ends.
/// `mail_from_domain` is the MAIL FROM domain (None for the null sender).
pub async fn verify<L: Lookup>(
    lookup: &L,
    settings: &Settings,
    message: &[u8],
    mail_from_domain: Option<&str>,
) -> Verdict {
    if settings.methods.is_empty() {
        return Verdict::NotRescued("no rescue method configured".to_string());
    }
    let deadline = tokio::time::Instant::now() + settings.time_limit;
    let Some(mut parsed) = AuthenticatedMessage::parse(message) else {
        return Verdict::NotRescued("no header fields".to_string());
    };
    let from = from_domain(&parsed);
    let mail_from = mail_from_domain.and_then(org_domain::normalize);
    let ids = dkim::Identities {
        from: from.as_deref().map_err(|why| *why),
        mail_from: mail_from.as_deref(),
    };
    let mut findings = Findings::default();

    let mut names = Vec::new();
    let try_dkim = settings.methods.contains(&Method::Dkim);
    if try_dkim {
        names.extend(dkim::plan(&mut parsed, &ids, &mut findings));
    } else {
        parsed.dkim_headers.clear();
    }
    let arc_plan = if settings.methods.contains(&Method::Arc) {
        arc::plan(&parsed, &settings.trusted_arc_sealers, &ids, &mut findings)
    } else {
        None
    };
    if let Some(plan) = &arc_plan {
        names.extend(plan.names.iter().cloned());
    }
    if names.is_empty() {
        return findings.verdict();
    }

    let keys = keys::Keys::fetch(lookup, &names, deadline).await;
    let authenticator = match keys::authenticator() {
        Ok(authenticator) => authenticator,
        Err(why) => return Verdict::Temporary(why),
    };
    if try_dkim && !parsed.dkim_headers.is_empty() {
        let outputs = authenticator
            .verify_dkim(Parameters::new(&parsed).with_txt_cache(&keys))
            .await;
        if let Some(rescue) = dkim::evaluate(&outputs, &keys, &ids, &mut findings) {
            return Verdict::Rescued(rescue);
        }
    }
    if let Some(plan) = arc_plan {
        let output = authenticator
            .verify_arc(Parameters::new(&parsed).with_txt_cache(&keys))
            .await;
        if let Some(rescue) = arc::evaluate(&output, plan, &keys, &mut findings) {
            return Verdict::Rescued(rescue);
        }
    }
    findings.verdict()
}

/// The RFC 5322 From domain (normalized), or why there is none to align
/// with: RFC 5322 §3.6 allows one From field; more than one address in it
/// (a mailbox-list) names no single author either.
fn from_domain(message: &AuthenticatedMessage<'_>) -> Result<String, &'static str> {
    let fields = message
        .headers
        .iter()
        .filter(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"From"))
        .count();
    match fields {
        0 => return Err("no From field"),
        1 => {}
        _ => return Err("several From fields"),
    }
    match message.from.as_slice() {
        [address] => address
            .rsplit_once('@')
            .and_then(|(_, domain)| org_domain::normalize(domain))
            .ok_or("no domain in From"),
        [] => Err("no address in From"),
        _ => Err("several addresses in From"),
    }
}

/// The most reasons kept for the log line.
const MAX_REASONS: usize = 6;

/// Why nothing rescued the message so far, and what failed for now.
#[derive(Default)]
struct Findings {
    not: Vec<String>,
    temporary: Vec<String>,
}

impl Findings {
    fn not(&mut self, why: String) {
        self.not.push(why);
    }

    fn temporary(&mut self, why: String) {
        self.temporary.push(why);
    }

    /// The verdict when nothing rescued the message: temporary if any key
    /// lookup failed for now (its signature might have rescued it).
    fn verdict(self) -> Verdict {
        if self.temporary.is_empty() {
            Verdict::NotRescued(join(self.not))
        } else {
            Verdict::Temporary(join(self.temporary))
        }
    }
}

fn join(mut reasons: Vec<String>) -> String {
    if reasons.is_empty() {
        return "nothing to verify".to_string();
    }
    let more = reasons.len().saturating_sub(MAX_REASONS);
    reasons.truncate(MAX_REASONS);
    let mut text = reasons.join("; ");
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    text
}

/// Text from the message made safe for a log line: no control characters
/// or white space, at most 253 characters (a domain name's length).
fn shown(text: &str) -> String {
    text.chars()
        .take(253)
        .map(|c| {
            if c.is_control() || c.is_whitespace() {
                '?'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "../../tests/common/dkim.rs"]
mod test_dkim;
#[cfg(test)]
mod tests;
