//! The `dkim` method: a DKIM signature (RFC 6376) that verifies and whose
//! `d=` is aligned (relaxed, [`super::org_domain`]) with the RFC 5322 From
//! domain or with the MAIL FROM domain.
//!
//! Only aligned signatures whose body hash matches are looked at (an
//! unaligned or altered one cannot rescue, so its key is never fetched),
//! at most [`MAX_SIGNATURES`] of them, in the order of the header fields.
//!
//! `l=` (body length, RFC 6376 §3.5, §8.2): the message is parsed in
//! mail-auth's strict mode, which refuses every signature carrying `l=` (it
//! is reported as "Insecure 'l=' tag found in Signature"). A signature with
//! `l=` vouches only for the first `l` bytes of the body: anything appended
//! after them (a forged payload, RFC 6376 §8.2) passes unnoticed. Even an
//! `l=` that covers the whole body as received is not accepted: the rescue
//! lets through mail that SPF would refuse, so when in doubt it does not
//! rescue, and senders that use `l=` are rare.

use mail_auth::common::crypto::{CryptoError, HashAlgorithm};
use mail_auth::common::verify::VerifySignature;
use mail_auth::dkim::DkimError;
use mail_auth::{AuthenticatedMessage, DkimOutput, DkimResult, DnsError, Error};

use super::keys::{Keys, Outcome};
use super::org_domain::{aligned, normalize};
use super::{Findings, shown};

/// The most DKIM signatures whose keys are fetched for one message.
pub const MAX_SIGNATURES: usize = 10;

/// The identities a signature may be aligned with.
pub struct Identities<'a> {
    /// The RFC 5322 From domain, or why there is none usable.
    pub from: Result<&'a str, &'a str>,
    /// The MAIL FROM domain (normalized), None for the null sender.
    pub mail_from: Option<&'a str>,
}

impl Identities<'_> {
    /// What `d` is aligned with, From first.
    fn alignment(&self, d: &str) -> Option<&'static str> {
        if self.from.is_ok_and(|from| aligned(d, from)) {
            Some("From")
        } else if self.mail_from.is_some_and(|mf| aligned(d, mf)) {
            Some("MAIL FROM")
        } else {
            None
        }
    }

    fn describe(&self) -> String {
        let from = match self.from {
            Ok(from) => format!("From {from}"),
            Err(why) => format!("From ({why})"),
        };
        match self.mail_from {
            Some(mf) => format!("{from} or MAIL FROM {mf}"),
            None => from,
        }
    }
}

/// Keeps in `message` only the signatures worth verifying and returns the
/// key names to fetch for them; the others' reasons go to `findings`.
pub fn plan(
    message: &mut AuthenticatedMessage<'_>,
    ids: &Identities<'_>,
    findings: &mut Findings,
) -> Vec<String> {
    for error in &message.errors {
        if error.name.eq_ignore_ascii_case(b"DKIM-Signature") {
            findings.not(format!("dkim: unusable signature: {}", error.header));
        }
    }
    if message.dkim_headers.is_empty() {
        if !message
            .errors
            .iter()
            .any(|e| e.name.eq_ignore_ascii_case(b"DKIM-Signature"))
        {
            findings.not("no DKIM signature".to_string());
        }
        return Vec::new();
    }
    let mut names = Vec::new();
    let mut keep = Vec::with_capacity(message.dkim_headers.len());
    for header in &message.dkim_headers {
        let signature = &header.header;
        let d = shown(&signature.d);
        let verdict = if ids.alignment(&signature.d).is_none() {
            Err(format!("dkim d={d} not aligned with {}", ids.describe()))
        } else if !body_hash_matches(message, signature) {
            Err(format!("dkim d={d}: body hash mismatch"))
        } else if names.len() >= MAX_SIGNATURES {
            Err(format!(
                "dkim d={d}: not looked at (more than {MAX_SIGNATURES} aligned signatures)"
            ))
        } else {
            Ok(signature.domain_key())
        };
        match verdict {
            Ok(name) => {
                names.push(name);
                keep.push(true);
            }
            Err(why) => {
                findings.not(why);
                keep.push(false);
            }
        }
    }
    let mut keep = keep.into_iter();
    message
        .dkim_headers
        .retain(|_| keep.next().unwrap_or(false));
    names
}

/// Whether the body hash mail-auth computed for the signature's
/// canonicalization, hash and length is the one the signature carries.
fn body_hash_matches(
    message: &AuthenticatedMessage<'_>,
    signature: &mail_auth::dkim::Signature,
) -> bool {
    let ha = HashAlgorithm::from(signature.a);
    message
        .body_hashes
        .iter()
        .find(|(c, h, l, _)| *c == signature.cb && *h == ha && *l == signature.l)
        .is_some_and(|(_, _, _, bh)| *bh == signature.bh)
}

/// Reads mail-auth's results: a rescue, or the reasons and temporary
/// failures in `findings`.
pub fn evaluate(
    outputs: &[DkimOutput<'_>],
    keys: &Keys,
    ids: &Identities<'_>,
    findings: &mut Findings,
) -> Option<String> {
    for output in outputs {
        let Some(signature) = output.signature() else {
            continue;
        };
        let d = shown(&signature.d);
        match output.result() {
            DkimResult::Pass => {
                if let Some(with) = ids.alignment(&signature.d) {
                    let d = normalize(&signature.d).unwrap_or(d);
                    return Some(format!("dkim d={d} aligned with {with}"));
                }
                findings.not(format!("dkim d={d} not aligned with {}", ids.describe()));
            }
            DkimResult::Neutral(err)
            | DkimResult::Fail(err)
            | DkimResult::PermError(err)
            | DkimResult::TempError(err) => {
                let name = signature.domain_key();
                match keys.outcome(&name) {
                    Some(Outcome::Temporary(why)) => findings.temporary(format!(
                        "dkim d={d}: key {}: {why}",
                        shown(name.trim_end_matches('.'))
                    )),
                    _ => findings.not(format!("dkim d={d}: {}", describe(err))),
                }
            }
            DkimResult::None => {}
        }
    }
    None
}

/// A short account of a verification error, for the log.
pub fn describe(err: &Error) -> String {
    match err {
        Error::Dkim(DkimError::FailedBodyHashMatch) => "body hash mismatch".to_string(),
        Error::Crypto(CryptoError::FailedVerification) => "signature does not verify".to_string(),
        Error::Dkim(DkimError::RevokedPublicKey) => "key revoked (empty p=)".to_string(),
        Error::Dkim(DkimError::SignatureExpired) => "signature expired".to_string(),
        Error::Dns(DnsError::RecordNotFound(_)) => "no key (NXDOMAIN)".to_string(),
        Error::Dns(DnsError::InvalidRecordType) => "no usable key record".to_string(),
        other => other.to_string(),
    }
}
