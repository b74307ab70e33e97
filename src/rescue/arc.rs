//! The `arc` method (RFC 8617): the ARC chain validates (mail-auth: every
//! set present with consecutive `i=`, `cv=none` on the first seal and
//! `cv=pass` on the others, the newest ARC-Message-Signature and every
//! ARC-Seal verify, RFC 8617 §5.2), the newest set is sealed by a domain of
//! `trusted_arc_sealers`, and that set's ARC-Authentication-Results says
//! the message passed in a way that speaks for its author:
//!
//! * `dkim=pass` with `header.d` (or, without it, the domain of
//!   `header.i`) aligned with the From domain;
//! * `dmarc=pass` with `header.from` aligned with the From domain;
//! * `spf=pass` with the domain of `smtp.mailfrom` aligned with the From
//!   domain or with the MAIL FROM domain this server saw (the sealer saw the
//!   same envelope pass before it forwarded the message). An `spf=pass` for
//!   another envelope says nothing about this one and does not rescue.
//!
//! Whether the newest set can rescue is decided before any key is fetched:
//! an untrusted sealer or an unhelpful ARC-Authentication-Results costs no
//! DNS query.

use mail_auth::common::verify::VerifySignature;
use mail_auth::{ArcOutput, AuthenticatedMessage, DkimResult};

use super::aar::{self, ResInfo};
use super::dkim::{Identities, describe};
use super::keys::{Keys, Outcome};
use super::org_domain::{aligned, normalize};
use super::{Findings, shown};

/// The longest chain looked at (RFC 8617 §4.2.1 allows 50 sets; each set
/// costs a key lookup and a signature check).
pub const MAX_SETS: usize = 10;

/// What the newest set would prove if the chain validates: the rescue's
/// text, and the key names to fetch.
pub struct Plan {
    pub rescue: String,
    pub names: Vec<String>,
}

/// Checks what can be checked without keys; `None` (with the reason in
/// `findings`) if the chain cannot rescue the message.
pub fn plan(
    message: &AuthenticatedMessage<'_>,
    trusted: &[String],
    ids: &Identities<'_>,
    findings: &mut Findings,
) -> Option<Plan> {
    let sets = message.as_headers.len();
    if message.has_arc_errors {
        let why = message
            .errors
            .iter()
            .find(|e| e.name.len() > 4 && e.name[..4].eq_ignore_ascii_case(b"ARC-"))
            .map_or_else(
                || "malformed ARC header field".to_string(),
                |e| e.header.to_string(),
            );
        findings.not(format!("arc chain broken: {why}"));
        return None;
    }
    if sets == 0 && message.ams_headers.is_empty() && message.aar_headers.is_empty() {
        findings.not("no ARC set".to_string());
        return None;
    }
    if sets != message.ams_headers.len() || sets != message.aar_headers.len() {
        findings.not("arc chain broken: incomplete set".to_string());
        return None;
    }
    if sets > MAX_SETS {
        findings.not(format!(
            "arc chain of {sets} sets not looked at (more than {MAX_SETS})"
        ));
        return None;
    }
    let (Some(seal), Some(signature), Some(results)) = (
        message.as_headers.last(),
        message.ams_headers.last(),
        message.aar_headers.last(),
    ) else {
        findings.not("no ARC set".to_string());
        return None;
    };
    let sealer = normalize(&seal.header.d).unwrap_or_else(|| shown(&seal.header.d));
    let i = seal.header.i;
    if !trusted
        .iter()
        .any(|t| t.trim_end_matches('.').eq_ignore_ascii_case(&sealer))
    {
        findings.not(format!("arc sealer {sealer} not trusted"));
        return None;
    }
    let Some(parsed) = aar::parse(results.value) else {
        findings.not(format!(
            "arc sealed by {sealer} (i={i}): unreadable ARC-Authentication-Results"
        ));
        return None;
    };
    let Some(pass) = parsed
        .results
        .iter()
        .find_map(|r| speaks_for_author(r, ids))
    else {
        findings.not(format!(
            "arc sealed by {sealer} (i={i}): no pass aligned with {} in its ARC-Authentication-Results",
            ids_from(ids)
        ));
        return None;
    };
    let mut names = vec![signature.header.domain_key()];
    names.extend(message.as_headers.iter().map(|s| s.header.domain_key()));
    Some(Plan {
        rescue: format!("arc sealed by {sealer} (i={i}) with {pass}"),
        names,
    })
}

/// The first of `names` the result has, with its value.
fn first_of<'r>(r: &'r ResInfo, names: &[&'static str]) -> Option<(&'static str, &'r str)> {
    names
        .iter()
        .find_map(|&name| r.property(name).map(|value| (name, value)))
}

fn ids_from(ids: &Identities<'_>) -> String {
    match ids.from {
        Ok(from) => format!("From {from}"),
        Err(why) => format!("From ({why})"),
    }
}

/// The result's text (`dkim=pass header.d=example.org`) if it passes and
/// speaks for the message's author.
fn speaks_for_author(r: &ResInfo, ids: &Identities<'_>) -> Option<String> {
    if r.result != "pass" {
        return None;
    }
    let from = ids.from.ok();
    let from_aligned = |d: &str| from.is_some_and(|f| aligned(d, f));
    // header.i (the signature's AUID, RFC 6376 §3.5: d= or a subdomain of
    // it) where a sealer writes it instead of header.d, as many do;
    // smtp.mfrom as RFC 8617's own example writes smtp.mailfrom.
    let (property, value) = match r.method.as_str() {
        "dkim" => first_of(r, &["header.d", "header.i"])?,
        "dmarc" => first_of(r, &["header.from"])?,
        "spf" => first_of(r, &["smtp.mailfrom", "smtp.mfrom"])?,
        _ => return None,
    };
    let domain = match property {
        "header.i" | "smtp.mailfrom" | "smtp.mfrom" => {
            value.rsplit_once('@').map_or(value, |(_, d)| d)
        }
        _ => value,
    };
    let ok = match r.method.as_str() {
        "spf" => from_aligned(domain) || ids.mail_from.is_some_and(|mf| aligned(domain, mf)),
        _ => from_aligned(domain),
    };
    ok.then(|| format!("{}=pass {property}={}", r.method, shown(value)))
}

/// Reads mail-auth's verdict on the chain.
pub fn evaluate(
    output: &ArcOutput<'_>,
    plan: Plan,
    keys: &Keys,
    findings: &mut Findings,
) -> Option<String> {
    match output.result() {
        DkimResult::Pass => Some(plan.rescue),
        DkimResult::None => {
            findings.not("no ARC set".to_string());
            None
        }
        DkimResult::Neutral(err)
        | DkimResult::Fail(err)
        | DkimResult::PermError(err)
        | DkimResult::TempError(err) => {
            // mail-auth stops at the first key it cannot use; only a key
            // whose lookup failed for now makes the error temporary.
            let temporary = matches!(err, mail_auth::Error::Dns(mail_auth::DnsError::Resolver(_)))
                .then(|| {
                    plan.names.iter().find_map(|name| match keys.outcome(name) {
                        Some(Outcome::Temporary(why)) => Some((name, why)),
                        _ => None,
                    })
                })
                .flatten();
            match temporary {
                Some((name, why)) => findings.temporary(format!(
                    "arc: key {}: {why}",
                    shown(name.trim_end_matches('.'))
                )),
                None => findings.not(format!("arc chain broken: {}", describe(err))),
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the newest ARC-Authentication-Results `aar` says for a message
    /// from example.org with MAIL FROM `mail_from`.
    fn rescue(aar: &str, mail_from: Option<&str>) -> Option<String> {
        let ids = Identities {
            from: Ok("example.org"),
            mail_from,
        };
        aar::parse(aar.as_bytes())?
            .results
            .iter()
            .find_map(|r| speaks_for_author(r, &ids))
    }

    #[test]
    fn passes_that_speak_for_the_author() {
        assert_eq!(
            rescue("i=1; mx.example; dkim=pass header.d=mail.example.org", None).as_deref(),
            Some("dkim=pass header.d=mail.example.org")
        );
        // The shape large mailbox providers seal: header.i, no header.d.
        assert_eq!(
            rescue(
                "i=1; mx.google.example; dkim=pass header.i=@example.org header.s=s header.b=Ab12",
                None
            )
            .as_deref(),
            Some("dkim=pass header.i=@example.org")
        );
        assert_eq!(
            rescue(
                "i=1; mx.example; dmarc=pass (p=reject) header.from=example.org",
                None
            )
            .as_deref(),
            Some("dmarc=pass header.from=example.org")
        );
        // The sealer saw this envelope pass: forwarded with its MAIL FROM.
        assert_eq!(
            rescue(
                "i=1; mx.example; spf=pass smtp.mailfrom=\"bounce@news.example.net\"",
                Some("example.net")
            )
            .as_deref(),
            Some("spf=pass smtp.mailfrom=bounce@news.example.net")
        );
    }

    #[test]
    fn passes_that_do_not() {
        for (aar, mail_from) in [
            ("i=1; mx.example; dkim=pass header.d=esp.example", None),
            ("i=1; mx.example; dkim=fail header.d=example.org", None),
            ("i=1; mx.example; dkim=pass header.s=sel", None),
            (
                "i=1; mx.example; dkim=pass header.d=evil.test@example.org",
                None,
            ),
            ("i=1; mx.example; dmarc=pass header.from=example.net", None),
            ("i=1; mx.example; dmarc=pass", None),
            // spf=pass for another envelope says nothing about this one.
            (
                "i=1; mx.example; spf=pass smtp.mailfrom=x@spammer.example",
                Some("example.net"),
            ),
            (
                "i=1; mx.example; spf=softfail smtp.mailfrom=x@example.net",
                Some("example.net"),
            ),
            (
                "i=1; mx.example; arc=pass; iprev=pass policy.iprev=192.0.2.1",
                None,
            ),
            ("i=1; mx.example; none", None),
        ] {
            assert_eq!(rescue(aar, mail_from), None, "{aar}");
        }
    }
}
