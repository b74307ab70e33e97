//! The rescue of a held SPF reject at end of message: does the message
//! itself prove who wrote it (an aligned DKIM signature, or a trusted ARC
//! sealer's verdict)? Below the session and beside [`crate::spf`]: it sees
//! the message's bytes, the MAIL FROM domain and [`crate::dns::Lookup`],
//! never a milter type.
//!
//! The session decides *whether* a message is held and what to answer; this
//! module only says whether the message rescues itself.

use std::time::Duration;

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
    let _ = (lookup, settings, message, mail_from_domain);
    Verdict::NotRescued("no rescue method is built yet".to_string())
}
