//! The policy decision (docs/policyd-spf-compatibility.md §3): from the SMTP
//! client's address, the HELO name and the envelope sender, which SPF
//! checks run, and whether the message is accepted (with a trace header),
//! rejected or deferred.
//!
//! Pure policy: no sockets, no milter types. [`decide`] evaluates SPF
//! through an [`Evaluator`] and reads the [`PolicyConfig`] options; the
//! caller turns the [`Decision`] into milter replies and headers.
//!
//! # Scope
//!
//! Steps 1 and 3–7 of §3. Step 2, the bypass chain (`skip_addresses`,
//! `Whitelist`, `Domain_Whitelist`, `HELO_Whitelist`, `Domain_Whitelist_PTR`,
//! and the milter's `InternalHosts`, `MacroList` and SMTP AUTH skips), is
//! applied by the caller **before** calling [`decide`]: a skipped session
//! never reaches this module.
//!
//! # Choices where the spec leaves room
//!
//! * **Header identity (security departure of §3).** When a MAIL FROM check
//!   ran, [`Decision::header`] is always [`HeaderSource::MailFrom`], whatever
//!   the HELO result: a HELO pass is never reported in place of the MAIL
//!   FROM result (CVE-2019-20790). The HELO outcome is still returned in
//!   [`Decision::helo`] for a caller that wants a separate `identity=helo`
//!   entry.
//! * **`{3}` of `Reason_URL`.** The decision is taken at MAIL FROM, before
//!   any recipient is known, so the receiver is always `<UNKNOWN>` (what
//!   policyd-spf writes when it has no recipient), whatever
//!   `Hide_Receiver` says.
//! * **`Reject_Not_Pass_Domains`.** A HELO name or sender domain matches an
//!   entry when it equals it or is below it (label boundary). It raises the
//!   policy of every *checked* scope to `SPF_Not_Pass`, `False` included (as
//!   the reference does); a `No_Check` scope stays unchecked. The reason
//!   text becomes `Receiver policy for SPF <Result>` for Fail, Softfail and
//!   Neutral rejects; a PermError or TempError keeps its error text, which
//!   says more.
//! * **`No_Mail`.** Applies to every reject (policy, receiver policy and
//!   PermError, as in the reference), never to a defer. The reject is kept
//!   only when the domain publishes exactly one SPF record and that record,
//!   parsed, is one `-all` directive with neither `redirect=` nor `exp=`.
//!   Unknown modifiers are ignored (RFC 7208 §6: they change nothing), so
//!   `v=spf1 -all foo=bar` and `V=SPF1  -ALL` count as "sends no mail". A
//!   DNS error while fetching the record demotes the reject (it could not
//!   be confirmed). Since a `v=spf1 -all` record never gives PermError, a
//!   PermError reject is always demoted under `No_Mail`.
//! * **`HELO_reject = Null` with a non-null sender.** The HELO identity is
//!   still evaluated (its outcome is reported when `Mail_From_reject =
//!   No_Check`) but never rejects or defers, PermError and TempError
//!   included.
//! * **`Prospective`.** Evaluation uses the prospective address everywhere
//!   (also in `{2}` of `Reason_URL`); when the outcome the header would
//!   report is Pass, there is no header.
//!
//! # Reply text
//!
//! `Reason_Message` with `{rejectdefer}` = `rejected`/`deferred`, `{spf}` =
//! the policyd-spf comment of the result (the `exp=` text or default
//! explanation for Fail, `SPF Permanent Error: …`, `SPF Temporary Error: …`,
//! or `Receiver policy for SPF …`) and `{url}` = `Reason_URL`. The text is
//! made safe for one SMTP reply line: control characters (CR, LF, TAB, …)
//! become spaces, non-ASCII characters `?`, and it is cut so that its length
//! plus the number of `%` in it is at most [`MAX_REPLY_TEXT`](super::reply::MAX_REPLY_TEXT) bytes. A `%`
//! is left as is: the milter adapter must send it as `%%` (Postfix expands
//! reply text printf-style), and the cut leaves room for that doubling.

use std::net::IpAddr;

use crate::config::{Config, LogLevel, PolicyConfig, RejectPolicy};
use crate::dns::Lookup;
use crate::spf::record::is_spf1;
use crate::spf::{Evaluator, Identity, Mechanism, Qualifier, Record, SpfOutcome, SpfResult};

use super::envelope::Envelope;
use super::headers::result_comment;
use super::reply::sanitize_reply;

/// What the receiver is called in `Reason_URL` at MAIL FROM time.
pub const UNKNOWN_RECEIVER: &str = "<UNKNOWN>";

/// One log line of a decision, with the `debugLevel` it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `Actions` (1): what was done (replies, `TestOnly: would …`,
    /// `No_Mail`); `Results` (2): how (a line per identity checked, why
    /// nothing was checked).
    pub level: LogLevel,
    pub text: String,
}

impl LogLine {
    fn detail(text: impl Into<String>) -> LogLine {
        LogLine {
            level: LogLevel::Results,
            text: text.into(),
        }
    }

    fn action(text: impl Into<String>) -> LogLine {
        LogLine {
            level: LogLevel::Actions,
            text: text.into(),
        }
    }
}

impl std::fmt::Display for LogLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// An SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 550 or 450.
    pub code: u16,
    /// RFC 7372: `5.7.23`, `5.7.24` or `4.7.24`; `None` with
    /// `SPF_Enhanced_Status_Codes = No`.
    pub enhanced: Option<&'static str>,
    /// Sanitized text (see the module doc); `%` not yet escaped.
    pub text: String,
}

/// What to do with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Accept,
    Reject(Reply),
    Defer(Reply),
}

/// Which outcome the trace header reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderSource {
    Helo,
    MailFrom,
}

/// The result of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The address evaluated (`Prospective` or the client's); `None` when
    /// nothing was done for lack of one.
    pub ip: Option<IpAddr>,
    /// The HELO identity's outcome, when it was checked.
    pub helo: Option<SpfOutcome>,
    /// The MAIL FROM identity's outcome, when it was checked.
    pub mail_from: Option<SpfOutcome>,
    /// Which outcome the trace header reports; `None`: no header.
    pub header: Option<HeaderSource>,
    /// Test mode: what normal mode would have done instead of accepting.
    pub would: Option<Action>,
    /// The identity whose result rejected or deferred the message (in
    /// test mode too): what the trace header reports if the message is
    /// accepted after all (test mode, or a reject cancelled at end of
    /// message by `crate::session`'s rescue).
    pub blocked_by: Option<HeaderSource>,
    /// policyd-spf style log lines (per identity checked, and the action).
    pub log: Vec<LogLine>,
}

impl Decision {
    fn nothing(ip: Option<IpAddr>, log: Vec<LogLine>) -> Decision {
        Decision {
            action: Action::Accept,
            ip,
            helo: None,
            mail_from: None,
            header: None,
            would: None,
            blocked_by: None,
            log,
        }
    }

    /// A reject or defer is cancelled: the message is accepted with the
    /// header test mode gives it (the outcome of the identity that
    /// blocked it, whatever it was).
    pub fn accept_anyway(&mut self) {
        self.action = Action::Accept;
        if self.blocked_by.is_some() {
            self.header = self.blocked_by;
        }
    }

    /// The outcome the header reports, if any.
    pub fn header_outcome(&self) -> Option<&SpfOutcome> {
        match self.header? {
            HeaderSource::Helo => self.helo.as_ref(),
            HeaderSource::MailFrom => self.mail_from.as_ref(),
        }
    }
}

/// The scope of a check, as `Reason_URL`'s `{0}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Helo,
    MailFrom,
}

impl Scope {
    fn url_name(self) -> &'static str {
        match self {
            Scope::Helo => "helo",
            Scope::MailFrom => "mfrom",
        }
    }
}

/// What one scope's result leads to before `No_Mail` and test mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// Reject; `receiver` when the reason is `Reject_Not_Pass_Domains`.
    Reject {
        receiver: bool,
    },
    Defer,
}

/// Decides what to do with a message (docs/policyd-spf-compatibility.md §3, steps 1 and 3–7; the bypass
/// chain of step 2 is the caller's, see the module doc).
///
/// `deadline`: when the whole decision must be done (the milter's
/// `decision_time_limit`): an evaluation still running then is TempError.
/// `None`: each evaluation has `Lookup_Time` only.
pub async fn decide<L: Lookup>(
    config: &Config,
    evaluator: &Evaluator<L>,
    envelope: &Envelope,
    deadline: Option<tokio::time::Instant>,
) -> Decision {
    let policy = &config.policy;
    let mut log = Vec::new();

    // Step 1: the address.
    let Some(ip) = policy.prospective.or(envelope.client_ip) else {
        log.push(LogLine::detail("no client address: SPF not checked"));
        return Decision::nothing(None, log);
    };

    // Step 3: the identities.
    let null_sender = envelope.is_null_sender();
    if null_sender && envelope.helo.trim().is_empty() {
        log.push(LogLine::detail(
            "no sender and no HELO name: SPF not checked",
        ));
        return Decision::nothing(Some(ip), log);
    }
    let request = envelope.spf_request(ip);
    let (helo, sender) = (request.helo, request.sender);
    let header_sender = if null_sender { "<>" } else { sender };
    let mut decision = Decision::nothing(Some(ip), log);

    // Step 4: HELO.
    if policy.helo_reject != RejectPolicy::NoCheck {
        let outcome = evaluator
            .check_until(&request, Identity::Helo, deadline)
            .await;
        decision.log.push(LogLine::detail(result_log(
            &outcome,
            ip,
            helo,
            header_sender,
        )));
        let verdict = if policy.helo_reject == RejectPolicy::Null && !null_sender {
            Verdict::Pass
        } else {
            let listed = is_listed(policy, &outcome.domain);
            let effective = if listed {
                RejectPolicy::SpfNotPass
            } else {
                policy.helo_reject
            };
            verdict(policy, effective, listed, null_sender, outcome.result)
        };
        let action = act(
            config,
            evaluator,
            &outcome,
            verdict,
            Scope::Helo,
            helo,
            ip,
            &mut decision.log,
        )
        .await;
        decision.helo = Some(outcome);
        if finish_if_blocking(policy, action, HeaderSource::Helo, &mut decision) {
            return decision;
        }
        decision.header = Some(HeaderSource::Helo);
    } else if null_sender {
        // Step 5 with No_Check: no check, no header.
        decision.log.push(LogLine::detail(
            "null sender and HELO_reject = No_Check: SPF not checked",
        ));
        return decision;
    }

    // Step 6: MAIL FROM (step 5: not for the null sender; the HELO verdict
    // stands).
    if !null_sender && policy.mail_from_reject != RejectPolicy::NoCheck {
        let outcome = evaluator
            .check_until(&request, Identity::MailFrom, deadline)
            .await;
        decision.log.push(LogLine::detail(result_log(
            &outcome,
            ip,
            helo,
            header_sender,
        )));
        let listed = is_listed(policy, &outcome.domain);
        let effective = if listed {
            RejectPolicy::SpfNotPass
        } else {
            policy.mail_from_reject
        };
        let verdict = verdict(policy, effective, listed, false, outcome.result);
        let action = act(
            config,
            evaluator,
            &outcome,
            verdict,
            Scope::MailFrom,
            sender,
            ip,
            &mut decision.log,
        )
        .await;
        decision.mail_from = Some(outcome);
        // CVE-2019-20790: the MAIL FROM result, whatever the HELO said.
        decision.header = Some(HeaderSource::MailFrom);
        if finish_if_blocking(policy, action, HeaderSource::MailFrom, &mut decision) {
            return decision;
        }
    } else if !null_sender && policy.helo_reject == RejectPolicy::NoCheck {
        decision.log.push(LogLine::detail(
            "HELO_reject and Mail_From_reject = No_Check: SPF not checked",
        ));
        return decision;
    }

    // Step 7: accepted; Prospective drops the header of passing mail.
    if policy.prospective.is_some()
        && decision.header_outcome().map(|o| o.result) == Some(SpfResult::Pass)
    {
        decision.header = None;
        decision
            .log
            .push(LogLine::detail("Prospective: pass, no header"));
    }
    decision
}

/// Applies a reject or defer (or, in test mode, records it and reports the
/// identity that caused it). True when the decision is final.
fn finish_if_blocking(
    policy: &PolicyConfig,
    action: Action,
    source: HeaderSource,
    decision: &mut Decision,
) -> bool {
    if action == Action::Accept {
        return false;
    }
    let line = reply_log(&action);
    decision.blocked_by = Some(source);
    if policy.test_mode {
        decision
            .log
            .push(LogLine::action(format!("TestOnly: would {line}")));
        decision.would = Some(action);
        decision.action = Action::Accept;
        decision.header = Some(source);
    } else {
        decision.log.push(LogLine::action(line));
        decision.action = action;
        decision.header = None;
    }
    true
}

/// `Reject_Not_Pass_Domains` names `domain` itself: a name below a listed
/// one is not listed, as in policyd-spf. (policyd-spf also takes a name
/// *above* a listed entry for listed — `mx.example.com` listed rejects
/// `example.com` — which spfmilter does not: a departure that rejects
/// less, docs/policyd-spf-compatibility.md §5.)
fn is_listed(policy: &PolicyConfig, domain: &str) -> bool {
    policy.reject_not_pass_domains.iter().any(|d| d.is(domain))
}

/// The reject sets of §2, `PermError_reject` and `TempError_Defer`.
fn verdict(
    policy: &PolicyConfig,
    effective: RejectPolicy,
    listed: bool,
    null_sender: bool,
    result: SpfResult,
) -> Verdict {
    use RejectPolicy as P;
    let reject = |receiver| Verdict::Reject { receiver };
    match (result, effective) {
        (_, P::False | P::NoCheck) => Verdict::Pass,
        (SpfResult::Fail, P::SpfNotPass | P::Softfail | P::Fail) => reject(listed),
        (SpfResult::Fail, P::Null) if null_sender => reject(false),
        (SpfResult::SoftFail, P::SpfNotPass | P::Softfail) => reject(listed),
        (SpfResult::Neutral, P::SpfNotPass) => reject(listed),
        (SpfResult::PermError, _) if policy.permerror_reject => reject(false),
        (SpfResult::TempError, _) if policy.temperror_defer => Verdict::Defer,
        _ => Verdict::Pass,
    }
}

/// Turns a verdict into an action: `No_Mail`, the reply text and code.
#[allow(clippy::too_many_arguments)]
async fn act<L: Lookup>(
    config: &Config,
    evaluator: &Evaluator<L>,
    outcome: &SpfOutcome,
    verdict: Verdict,
    scope: Scope,
    id: &str,
    ip: IpAddr,
    log: &mut Vec<LogLine>,
) -> Action {
    let policy = &config.policy;
    let (receiver, defer) = match verdict {
        Verdict::Pass => return Action::Accept,
        Verdict::Reject { receiver } => (receiver, false),
        Verdict::Defer => (false, true),
    };
    if !defer && policy.no_mail && !sends_no_mail(evaluator, &outcome.domain).await {
        log.push(LogLine::action(format!(
            "No_Mail: {} is not v=spf1 -all; {} {} not rejected",
            outcome.domain,
            outcome.identity,
            outcome.result.capitalized()
        )));
        return Action::Accept;
    }
    let spf_text = if receiver {
        format!("Receiver policy for SPF {}", outcome.result.capitalized())
    } else {
        result_comment(outcome).into_owned()
    };
    let ip_text = ip.to_string();
    let url = policy
        .reason_url
        .render([scope.url_name(), id, &ip_text, UNKNOWN_RECEIVER]);
    let rejectdefer = if defer { "deferred" } else { "rejected" };
    let text = sanitize_reply(&policy.reason_message.render(rejectdefer, &spf_text, &url));
    let (code, enhanced) = match (defer, outcome.result) {
        (true, _) => (450, "4.7.24"),
        (false, SpfResult::PermError) => (550, "5.7.24"),
        (false, _) => (550, "5.7.23"),
    };
    let reply = Reply {
        code,
        enhanced: policy.enhanced_status_codes.then_some(enhanced),
        text,
    };
    if defer {
        Action::Defer(reply)
    } else {
        Action::Reject(reply)
    }
}

/// `No_Mail`: does `domain` publish exactly `v=spf1 -all` (compared parsed;
/// see the module doc)?
async fn sends_no_mail<L: Lookup>(evaluator: &Evaluator<L>, domain: &str) -> bool {
    let Ok(txts) = evaluator.lookup().txt(domain).await else {
        return false;
    };
    let mut spf = txts.iter().filter(|t| is_spf1(t));
    let (Some(only), None) = (spf.next(), spf.next()) else {
        return false;
    };
    let Ok(record) = Record::parse(only) else {
        return false;
    };
    record.redirect.is_none()
        && record.exp.is_none()
        && matches!(
            record.directives.as_slice(),
            [d] if d.qualifier == Qualifier::Fail && d.mechanism == Mechanism::All
        )
}

/// policyd-spf's per-identity log line:
/// `Pass; identity=mailfrom; client-ip=…; helo=…; envelope-from=…; receiver=…`.
fn result_log(outcome: &SpfOutcome, ip: IpAddr, helo: &str, envelope_from: &str) -> String {
    format!(
        "{}; identity={}; client-ip={ip}; helo={helo}; envelope-from={envelope_from}; receiver={UNKNOWN_RECEIVER}",
        outcome.result.capitalized(),
        outcome.identity
    )
}

/// `550 5.7.23 Message rejected …`.
fn reply_log(action: &Action) -> String {
    let (Action::Reject(r) | Action::Defer(r)) = action else {
        return "accept".to_owned();
    };
    match r.enhanced {
        Some(e) => format!("{} {e} {}", r.code, r.text),
        None => format!("{} {}", r.code, r.text),
    }
}

#[cfg(test)]
mod tests;
