//! Refusing mail by the SPF infrastructure of listed operators (`[block]`).
//!
//! A spam operation that publishes valid SPF passes every SPF check. Its
//! own records still name it: the networks its SPF authorizes, and the
//! `include:` it puts in the records of each new domain. Two rules use
//! that, live, through the shared evaluator and its DNS cache:
//!
//! * **`authorized_by`**: the client is refused when check_host(client IP,
//!   D, postmaster@D) (RFC 7208 §4) is Pass for a listed D: the client is
//!   among the hosts D's SPF authorizes, however D publishes them (ip4,
//!   ip6, a, mx, include, redirect). One evaluation per listed domain per
//!   message, bounded by the `[spf]` limits and what is left of
//!   `decision_time_limit`. A TempError or PermError of D never refuses: it
//!   is logged and the normal decision goes on.
//! * **`includes`**: the message is refused when the HELO or MAIL FROM
//!   evaluation *entered* a listed name through `include:` (RFC 7208 §5.2)
//!   or `redirect=` (§6.1), at any depth, a macro-built name as expanded
//!   (§7.3), on its way to its result. An evaluation stops at the first
//!   mechanism that matches (§4.6.2), so "entered on the way" means: every
//!   include and redirect target evaluated before the result was known,
//!   whether or not its own terms matched. The domain
//!   `v=spf1 include:spf-stx.operator.test -all` is refused whatever
//!   network it sends from (inside the operator's networks the include
//!   matches; outside, the include was still entered before `-all`). A
//!   sibling include that decides *before* the listed one is reached
//!   (`include:good.test include:listed.test`, the client in good.test's
//!   networks) does not refuse: the listed record was never evaluated.
//!   Names are compared whole (no names below a listed one), without
//!   regard to case. An evaluation that ended in TempError or PermError
//!   never refuses.
//!
//! Both run after the bypass chain (a skipped session never gets here) and
//! after the SPF decision, whose reject or defer a block replaces: a
//! blocked message gets `550 5.7.1` and `[block] reply`. A rule in test
//! mode (`authorized_by_test`, `includes_test`, or `[policy] test_mode`)
//! logs `would block` and lets the decision stand.

use std::net::IpAddr;

use crate::config::{Config, DomainName};
use crate::dns::Lookup;
use crate::spf::{Evaluator, Identity, Request, SpfOutcome, SpfResult};

use super::decide::{Decision, LogLine, Reply};
use super::envelope::Envelope;
use super::reply::sanitize_reply;

/// The two rules of `[block]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    AuthorizedBy,
    Includes,
}

impl Rule {
    /// The option's name, as log lines and metrics say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::AuthorizedBy => "authorized_by",
            Rule::Includes => "includes",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub rule: Rule,
    /// The listed name that matched, as configured.
    pub name: String,
    /// Why, in a few words (`check_host(192.0.2.1, D) = pass`,
    /// `mailfrom evaluation of example.test entered D`).
    pub why: String,
    /// Logged and counted only (`would block`).
    pub test: bool,
}

impl Hit {
    /// The log line: `blocked (includes spf-stx.example): …; 550 5.7.1 …`
    /// or `would block (…)` in test mode.
    pub fn log_line(&self, reply: &Reply) -> String {
        let verb = if self.test { "would block" } else { "blocked" };
        let code = match reply.enhanced {
            Some(e) => format!("{} {e}", reply.code),
            None => reply.code.to_string(),
        };
        format!(
            "{verb} ({} {}): {}; {code} {}",
            self.rule, self.name, self.why, reply.text
        )
    }
}

/// What the block rules found for one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The enforced hit and its reply: the message is refused.
    pub block: Option<(Hit, Reply)>,
    /// Every hit, enforced or in test mode, in the order found.
    pub hits: Vec<Hit>,
    /// One line per hit and per listed domain whose check failed.
    pub log: Vec<LogLine>,
}

/// Whether any block rule is configured (nothing is done otherwise).
pub fn configured(config: &Config) -> bool {
    !(config.block.authorized_by.is_empty() && config.block.includes.is_empty())
}

/// The reply to a blocked message: 550 5.7.1 (RFC 3463 §3.8, delivery
/// not authorized), plain 550 with `enhanced_status_codes = false`.
pub fn reply(config: &Config, hit: &Hit) -> Reply {
    Reply {
        code: 550,
        enhanced: config.policy.enhanced_status_codes.then_some("5.7.1"),
        text: sanitize_reply(&config.block.reply.render(&hit.name, hit.rule.as_str())),
    }
}

/// The `includes` rule over the outcomes of a message's evaluations: the
/// first listed name one of them entered, if any (see the module doc).
pub fn includes_hit<'o>(
    config: &Config,
    outcomes: impl IntoIterator<Item = &'o SpfOutcome>,
) -> Option<Hit> {
    let listed = &config.block.includes;
    if listed.is_empty() {
        return None;
    }
    for outcome in outcomes {
        if matches!(outcome.result, SpfResult::TempError | SpfResult::PermError) {
            continue;
        }
        let found = outcome
            .via
            .iter()
            .find_map(|entered| listed.iter().find(|d| d.is(entered)));
        if let Some(name) = found {
            return Some(Hit {
                rule: Rule::Includes,
                name: name.to_string(),
                why: format!(
                    "{} evaluation of {} entered {name} (via {}); result {}",
                    outcome.identity,
                    outcome.domain,
                    outcome.via.join(", "),
                    outcome.result
                ),
                test: config.block.includes_test || config.policy.test_mode,
            });
        }
    }
    None
}

/// check_host(`ip`, `domain`, postmaster@`domain`) (RFC 7208 §4.1), as
/// `authorized_by` evaluates it, ending by `deadline` at the latest.
pub async fn authorized_by_outcome<L: Lookup>(
    evaluator: &Evaluator<L>,
    ip: IpAddr,
    helo: &str,
    domain: &DomainName,
    deadline: Option<tokio::time::Instant>,
) -> SpfOutcome {
    let sender = postmaster(domain);
    let request = authorized_by_request(ip, helo, &sender);
    evaluator
        .check_until(&request, Identity::MailFrom, deadline)
        .await
}

/// `postmaster@D`, the sender of an `authorized_by` check.
pub fn postmaster(domain: &DomainName) -> String {
    format!("postmaster@{domain}")
}

/// The request of an `authorized_by` check for `sender` (`postmaster@D`).
pub fn authorized_by_request<'a>(ip: IpAddr, helo: &'a str, sender: &'a str) -> Request<'a> {
    Request {
        ip,
        helo,
        sender,
        receiver: None,
    }
}

/// What an `authorized_by` evaluation of `domain` means: a hit on Pass,
/// nothing (with a log line on TempError and PermError) otherwise.
pub fn authorized_by_verdict(
    config: &Config,
    ip: IpAddr,
    domain: &DomainName,
    outcome: &SpfOutcome,
    log: &mut Vec<LogLine>,
) -> Option<Hit> {
    match outcome.result {
        SpfResult::Pass => Some(Hit {
            rule: Rule::AuthorizedBy,
            name: domain.to_string(),
            why: format!(
                "check_host({ip}, {domain}) = pass ({})",
                outcome.mechanism.as_deref().unwrap_or("?")
            ),
            test: config.block.authorized_by_test || config.policy.test_mode,
        }),
        SpfResult::TempError | SpfResult::PermError => {
            log.push(LogLine {
                level: crate::config::LogLevel::Errors,
                text: format!(
                    "block authorized_by {domain}: {} ({}); not blocking",
                    outcome.result,
                    outcome.problem.as_deref().unwrap_or("no detail")
                ),
            });
            None
        }
        _ => None,
    }
}

/// Both rules for a message the SPF decision has taken (`decision`):
/// `includes` over its outcomes, then, unless that refuses already,
/// `authorized_by` for each listed domain until one matches, with the
/// address the decision evaluated and the HELO name it used; `deadline`
/// is the end of the MAIL FROM stage.
pub async fn check<L: Lookup>(
    config: &Config,
    evaluator: &Evaluator<L>,
    envelope: &Envelope,
    decision: &Decision,
    deadline: Option<tokio::time::Instant>,
) -> Verdict {
    let mut verdict = Verdict::default();
    if !configured(config) {
        return verdict;
    }
    let Some(ip) = decision.ip else {
        return verdict;
    };
    let helo = envelope.spf_request(ip).helo;
    let outcomes = [&decision.helo, &decision.mail_from].into_iter().flatten();
    if let Some(hit) = includes_hit(config, outcomes) {
        verdict.record(config, hit);
    }
    if verdict.block.is_none() {
        for domain in &config.block.authorized_by {
            let outcome = authorized_by_outcome(evaluator, ip, helo, domain, deadline).await;
            let hit = authorized_by_verdict(config, ip, domain, &outcome, &mut verdict.log);
            if let Some(hit) = hit {
                verdict.record(config, hit);
                break;
            }
        }
    }
    verdict
}

impl Verdict {
    /// Logs and keeps `hit`; the first enforced one refuses.
    fn record(&mut self, config: &Config, hit: Hit) {
        let reply = reply(config, &hit);
        self.log.push(LogLine {
            level: crate::config::LogLevel::Actions,
            text: hit.log_line(&reply),
        });
        if !hit.test && self.block.is_none() {
            self.block = Some((hit.clone(), reply));
        }
        self.hits.push(hit);
    }
}

#[cfg(test)]
mod tests;
