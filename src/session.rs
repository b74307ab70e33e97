//! One SMTP connection as the milter sees it, without the milter library:
//! what the MTA said at each stage (connect, HELO, MAIL FROM, RCPT TO,
//! headers, end of message, abort), the per-connection and per-message
//! state, and what to answer. [`crate::milter`] turns the milter protocol
//! into calls of [`Session`] and its [`StageReply`]s and [`HeaderEdit`]s back
//! into the protocol; nothing here knows a socket or a milter type, so the
//! whole session runs in unit tests and under the fuzzer.
//!
//! At MAIL FROM the session hands the envelope to [`skip`] and [`decide`],
//! then, when `[block]` lists anything, to [`block`]; a reject or defer is
//! answered there. Accepted mail gets its trace headers
//! at end of message, inserted at index 0 (above the MTA's own
//! `Received:`), after forged ones are deleted.
//!
//! With `[rescue] methods` set, a reject is *held* instead ([`held`]): MAIL
//! FROM continues, the message is kept as it comes, and at end of message
//! the rescuer ([`crate::rescue::verify`]) says whether the message proves
//! its author. Rescued, it is accepted with the headers test mode would
//! give it (the true SPF result); not rescued, it is rejected with the
//! reply MAIL FROM would have had; a temporary failure defers it. The body
//! of a message that is not held is not wanted ([`StageReply::Skip`]).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{AuthservId, Config, InternalErrorAction, LogLevel};
use crate::dns::Lookup;
use crate::log::Logger;
use crate::metrics::{HeldOutcome, MessageAction, Metrics};
use crate::policy::block;
use crate::policy::decide::{Action, Decision, Reply, decide};
use crate::policy::envelope::Envelope;
use crate::policy::headers::{header_receiver, is_forged_trace_header, skip_headers, spf_headers};
use crate::policy::skip::{Skip, SkipReason, skip};
use crate::rescue::{Settings, Verdict};
use crate::spf::Evaluator;

mod held;
#[cfg(test)]
mod tests;

pub use held::HeldBudget;
use held::{Held, Kept};

/// What decides whether a held message rescues itself: its DNS, the
/// `[rescue]` settings, the message, the MAIL FROM domain. Always
/// [`crate::rescue::verify`] in the daemon ([`Shared::with_evaluator`]);
/// tests put a stand-in in its place ([`Shared::with_rescuer`]) to get a
/// given [`Verdict`].
pub type Rescuer<L> = Box<
    dyn for<'a> Fn(
            &'a L,
            &'a Settings,
            &'a [u8],
            Option<&'a str>,
        ) -> Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>
        + Send
        + Sync,
>;

/// What every session of one configuration shares: the configuration, the
/// evaluator (with its DNS cache), the log, and for the rescue its
/// settings, the rescuer and the count of held bytes.
pub struct Shared<L> {
    pub config: Arc<Config>,
    pub evaluator: Evaluator<L>,
    logger: Logger,
    rescue: Settings,
    rescuer: Rescuer<L>,
    /// Bytes held by all sessions; one count for the daemon's life
    /// (handed from one configuration to the next on reload).
    held_budget: Arc<HeldBudget>,
}

impl<L: Lookup + 'static> Shared<L> {
    pub fn with_evaluator(config: Arc<Config>, evaluator: Evaluator<L>, logger: Logger) -> Self {
        // The block rule `includes` reads the include/redirect targets of
        // each evaluation; without it they are not recorded.
        let evaluator = evaluator.with_via(!config.block.includes.is_empty());
        Self {
            rescue: config.rescue_settings(),
            config,
            evaluator,
            logger,
            rescuer: Box::new(|lookup, settings, message, domain| {
                Box::pin(crate::rescue::verify(lookup, settings, message, domain))
            }),
            held_budget: Arc::default(),
        }
    }
}

impl<L> Shared<L> {
    /// The same, with `rescuer` deciding held messages.
    pub fn with_rescuer(mut self, rescuer: Rescuer<L>) -> Self {
        self.rescuer = rescuer;
        self
    }

    /// The same, counting held bytes in `budget` (the previous
    /// configuration's, on reload: `rescue.max_held_bytes` is a limit for
    /// the daemon, not for one configuration).
    pub fn with_held_budget(mut self, budget: Arc<HeldBudget>) -> Self {
        self.held_budget = budget;
        self
    }

    /// The count of held bytes.
    pub fn held_budget(&self) -> &Arc<HeldBudget> {
        &self.held_budget
    }

    /// Logs `line` if `log.level` asks for lines of `level`.
    pub fn log(&self, level: LogLevel, line: &str) {
        if self.logs(level) {
            self.logger.log(level, line);
        }
    }

    /// Whether `log.level` asks for lines of `level`: a line that would
    /// be dropped need not be formatted.
    pub fn logs(&self, level: LogLevel) -> bool {
        self.config.log.level >= level
    }

    pub fn logger(&self) -> &Logger {
        &self.logger
    }
}

pub use crate::policy::envelope::Macros;

/// The stages of a session, as named in log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Header,
    Body,
    EndOfMessage,
    Abort,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Helo => "HELO",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Header => "header",
            Stage::Body => "body",
            Stage::EndOfMessage => "end of message",
            Stage::Abort => "abort",
        })
    }
}

/// What a stage answers the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageReply {
    /// Go on with the next stage.
    Continue,
    /// Accept the message without looking further (`on_internal_error =
    /// accept`).
    Accept,
    /// A permanent reject with this reply.
    Reject(Reply),
    /// A temporary failure with this reply.
    Tempfail(Reply),
    /// The rest of this stage's data is not wanted (the body of a message
    /// that is not held): SMFIS_SKIP where the MTA can skip, else go on.
    Skip,
}

/// What end of message answers: the reply, and the header edits to make
/// first when the message is accepted (none when it is rejected or
/// deferred).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndOfMessage {
    pub reply: StageReply,
    pub edits: Vec<HeaderEdit>,
}

/// A header edit to make at end of message, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Delete the `index`-th (from 1) header named `name` (any case).
    Delete { name: &'static str, index: i32 },
    /// Insert a header at the top (index 0); the value is folded for the
    /// milter protocol (LF + TAB).
    Prepend { name: &'static str, value: String },
}

impl std::fmt::Display for HeaderEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderEdit::Delete { name, index } => write!(f, "delete {name} header #{index}"),
            HeaderEdit::Prepend { name, .. } => write!(f, "prepend a {name} header"),
        }
    }
}

/// The header names whose occurrences are counted: the only ones ever
/// deleted. Counting nothing else keeps a header costing O(1) whatever
/// names a message brings. The MTA compares names without regard to case
/// when it applies an edit (Postfix's cleanup_milter.c), so these
/// spellings address any spelling that came.
const TRACE_HEADERS: [&str; 2] = ["Received-SPF", "Authentication-Results"];

/// How many deleted headers one log line names; the rest are counted.
const FORGED_NAMED_IN_LOG: usize = 10;

/// What is decided and seen of the current message (its envelope is in
/// [`Session::envelope`]); reset at MAIL FROM and on abort.
#[derive(Debug, Default)]
struct MessageData {
    decision: Option<Decision>,
    skipped: Option<SkipReason>,
    /// How many headers of each of [`TRACE_HEADERS`] came so far.
    trace_seen: [i32; TRACE_HEADERS.len()],
    /// Occurrences (name, 1-based index among headers of that name) of
    /// incoming headers to delete.
    forged: Vec<(&'static str, i32)>,
    /// The reject held to end of message, and the message kept for the
    /// rescue.
    held: Option<Held>,
}

/// One milter connection: the configuration it started with (a reload
/// applies to new connections, never mid-message), and its state.
pub struct Session<L> {
    shared: Arc<Shared<L>>,
    metrics: Arc<Metrics>,
    /// Ours in Authentication-Results, settled at connect (the MTA's `j`
    /// macro by default): every header of the session is compared with it.
    authserv_id: String,
    /// The connection's address and HELO name, and the current message's
    /// sender, first recipient and authentication.
    envelope: Envelope,
    message: MessageData,
    /// Header values come with their leading white space
    /// (SMFIP_HDR_LEADSPC was negotiated).
    leading_space: bool,
}

impl<L: Lookup> Session<L> {
    /// A new connection from `client_ip` (`None`: the MTA did not say,
    /// e.g. a local submission); `mta_name` is the MTA's `j` macro.
    pub fn connect(
        shared: Arc<Shared<L>>,
        metrics: Arc<Metrics>,
        client_ip: Option<IpAddr>,
        mta_name: Option<&str>,
    ) -> Self {
        if shared.logs(LogLevel::Requests) {
            shared.log(
                LogLevel::Requests,
                &format!(
                    "connect from {}",
                    client_ip.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string())
                ),
            );
        }
        let authserv_id = authserv_id(&shared.config, mta_name);
        Self {
            shared,
            metrics,
            authserv_id,
            envelope: Envelope {
                client_ip,
                ..Envelope::default()
            },
            message: MessageData::default(),
            leading_space: false,
        }
    }

    /// Header values will come with the white space after the colon
    /// (SMFIP_HDR_LEADSPC): kept as they are in a held message.
    pub fn set_header_leading_space(&mut self, on: bool) {
        self.leading_space = on;
    }

    /// The configuration the session started with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// HELO/EHLO: a second one (after STARTTLS) replaces the first.
    pub fn helo(&mut self, name: &str) {
        name.clone_into(&mut self.envelope.helo);
    }

    /// MAIL FROM (`sender` as the MTA passes it, `<a@b>`): the bypass
    /// chain, then the decision; a reject or defer is answered here.
    pub async fn mail(&mut self, sender: &str, macros: &Macros<'_>) -> StageReply {
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        // Looked up for a line that is logged only.
        let queue_id = || queue_id(macros);
        // The whole stage, bypass lookups and both evaluations, stays
        // inside one budget below Postfix's milter_command_timeout.
        let started = tokio::time::Instant::now();
        let deadline = started + config.milter.decision_time_limit;
        let authenticated = macros("auth_authen").is_some_and(|v| !v.is_empty());
        self.message = MessageData::default();
        self.envelope.start_message(sender, authenticated);
        let envelope = &self.envelope;
        let skipped =
            tokio::time::timeout_at(deadline, skip(config, &shared.evaluator, envelope, macros))
                .await;
        match skipped.unwrap_or_else(|_| {
            shared.log(
                LogLevel::Errors,
                &format!(
                    "{}: the bypass checks ran out of time (decision_time_limit): checking SPF",
                    queue_id()
                ),
            );
            Skip::Check
        }) {
            Skip::Check => {}
            Skip::Silent(why) => {
                if shared.logs(LogLevel::Results) {
                    shared.log(
                        LogLevel::Results,
                        &format!("{}: not checked: {why}", queue_id()),
                    );
                }
                self.metrics
                    .message(MessageAction::Unchecked, [], started.elapsed());
                return StageReply::Continue;
            }
            Skip::Traced(reason) => {
                if shared.logs(LogLevel::Actions) {
                    shared.log(
                        LogLevel::Actions,
                        &format!("{}: {}", queue_id(), reason.comment()),
                    );
                }
                self.metrics.skipped(skip_label(reason), started.elapsed());
                self.message.skipped = Some(reason);
                return StageReply::Continue;
            }
        }
        let decision = decide(config, &shared.evaluator, envelope, Some(deadline)).await;
        // [block] (src/policy/block.rs): its reject replaces the decision's,
        // and is never held for the rescue: it refuses the operator, whatever
        // the message could prove.
        let blocked = if block::configured(config) {
            block::check(
                config,
                &shared.evaluator,
                envelope,
                &decision,
                Some(deadline),
            )
            .await
        } else {
            block::Verdict::default()
        };
        let superseded = blocked.block.is_some();
        // A reject (or, in test mode, a reject that would be) is held to
        // end of message when a rescue method is set; a defer never is.
        let held = match (&decision.action, &decision.would) {
            _ if superseded => None,
            (Action::Reject(reply), _) | (Action::Accept, Some(Action::Reject(reply)))
                if config.rescue_on() =>
            {
                Some(reply.clone())
            }
            _ => None,
        };
        let mut id = None;
        for line in decision.log.iter().filter(|line| shared.logs(line.level)) {
            if superseded && line.level == LogLevel::Actions {
                continue;
            }
            let id = id.get_or_insert_with(queue_id);
            match &held {
                Some(reply)
                    if line.level == LogLevel::Actions && line.text == reply_line(reply) =>
                {
                    shared.log(
                        line.level,
                        &format!("{id}: held to end of message for the rescue: {line}"),
                    );
                }
                _ => shared.log(line.level, &format!("{id}: {line}")),
            }
        }
        for line in blocked.log.iter().filter(|line| shared.logs(line.level)) {
            let id = id.get_or_insert_with(queue_id);
            shared.log(line.level, &format!("{id}: {line}"));
        }
        for hit in &blocked.hits {
            self.metrics.blocked(hit.rule.as_str(), hit.test);
        }
        let (action, answer) = match (&blocked.block, &decision.action, held) {
            (Some((_, reply)), _, _) => (MessageAction::Reject, StageReply::Reject(reply.clone())),
            (None, _, Some(reply)) => {
                let limits = held::Limits {
                    max_message_size: config.rescue.max_message_size,
                    max_held_bytes: config.rescue.max_held_bytes,
                };
                self.message.held = Some(Held::new(
                    reply,
                    config.policy.test_mode,
                    limits,
                    Arc::clone(&shared.held_budget),
                ));
                let action = if config.policy.test_mode {
                    MessageAction::Accept
                } else {
                    MessageAction::Held
                };
                (action, StageReply::Continue)
            }
            (None, Action::Accept, None) => (MessageAction::Accept, StageReply::Continue),
            (None, Action::Reject(reply), None) => {
                (MessageAction::Reject, StageReply::Reject(reply.clone()))
            }
            (None, Action::Defer(reply), None) => {
                (MessageAction::Defer, StageReply::Tempfail(reply.clone()))
            }
        };
        let checks = [&decision.helo, &decision.mail_from]
            .into_iter()
            .flatten()
            .map(|o| (o.identity.as_str(), o.result.as_str()));
        self.metrics.message(action, checks, started.elapsed());
        self.message.decision = Some(decision);
        answer
    }

    /// RCPT TO: the first recipient names the receiver in the headers.
    pub fn rcpt(&mut self, recipient: &str) {
        if self.envelope.first_recipient.is_none() {
            self.envelope.first_recipient = Some(recipient.to_owned());
        }
    }

    /// One header of the message: trace headers that could be taken for
    /// ours are remembered, to be deleted at end of message.
    ///
    /// A name is counted as the MTA counts it when it finds the header to
    /// delete: without regard to case, and without the white space that
    /// may stand before the colon (RFC 5322 §4.5.3, obsolete syntax;
    /// Postfix's is_header() and cleanup_milter.c count `Received-SPF :`
    /// as a `Received-SPF`). Counted otherwise, such a header would shift
    /// the index of every later one, and a forged header would stay while
    /// another was deleted in its place.
    ///
    /// A held message keeps the header as it came.
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        if let Some(held) = &mut self.message.held {
            held.header(name, value, self.leading_space);
        }
        let name = name.trim_ascii_end();
        let Some(kind) = TRACE_HEADERS
            .iter()
            .position(|t| t.as_bytes().eq_ignore_ascii_case(name))
        else {
            return;
        };
        let name = TRACE_HEADERS[kind];
        let seen = &mut self.message.trace_seen[kind];
        *seen = seen.saturating_add(1);
        let index = *seen;
        if self.shared.config.milter.remove_forged_headers
            && is_forged_trace_header(name, &String::from_utf8_lossy(value), &self.authserv_id)
        {
            self.message.forged.push((name, index));
        }
    }

    /// A chunk of the body: kept when the message is held; otherwise (and
    /// once a held message is over a limit) the rest of the body is not
    /// wanted.
    pub fn body(&mut self, chunk: &[u8]) -> StageReply {
        match &mut self.message.held {
            Some(held) if held.kept() == Kept::Whole => {
                held.body(chunk);
                if held.kept() == Kept::Whole {
                    StageReply::Continue
                } else {
                    StageReply::Skip
                }
            }
            _ => StageReply::Skip,
        }
    }

    /// End of message: a held reject is decided (see the module doc),
    /// then the edits to make, in order. Forged trace headers are deleted
    /// first, the last of a name first: the MTA renumbers the headers of
    /// that name after each deletion, so deleting #1 before #2 would
    /// delete the third one and leave the second. Then ours, on top.
    pub async fn end_of_message(&mut self, macros: &Macros<'_>) -> EndOfMessage {
        let queue_id = queue_id(macros);
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        let mut message = std::mem::take(&mut self.message);
        if let Some(mut held) = message.held.take() {
            let verdict = self.rescue(&mut held).await;
            self.metrics.held(match &verdict {
                Verdict::Rescued(_) => HeldOutcome::Rescued,
                Verdict::NotRescued(_) => HeldOutcome::NotRescued,
                Verdict::Temporary(_) => HeldOutcome::Deferred,
            });
            let reply = held_answer(&shared, &queue_id, &held, verdict);
            drop(held);
            match (reply, &mut message.decision) {
                (StageReply::Continue, Some(decision)) => decision.accept_anyway(),
                (StageReply::Continue, None) => {}
                (reply, _) => {
                    self.envelope.end_message();
                    return EndOfMessage {
                        reply,
                        edits: Vec::new(),
                    };
                }
            }
        }
        message
            .forged
            .sort_by_key(|&(_, index)| std::cmp::Reverse(index));
        if !message.forged.is_empty() {
            shared.log(
                LogLevel::Actions,
                &format!("{queue_id}: {}", forged_log_line(&message.forged)),
            );
        }
        let mut edits: Vec<HeaderEdit> = message
            .forged
            .iter()
            .map(|&(name, index)| HeaderEdit::Delete { name, index })
            .collect();
        let envelope = &self.envelope;
        let receiver = header_receiver(
            config.milter.hide_receiver,
            envelope.first_recipient.as_deref(),
        );
        let (header_type, id) = (config.milter.header_type, &self.authserv_id);
        // A skip's header names the client; a result's, the address
        // evaluated (the client's, or `Prospective`).
        let headers = match (&message.skipped, &message.decision) {
            (Some(reason), _) => envelope
                .client_ip
                .map(|ip| skip_headers(header_type, id, *reason, envelope, ip, receiver)),
            (None, Some(decision)) => match (decision.header_outcome(), decision.ip) {
                (Some(outcome), Some(ip)) => Some(spf_headers(
                    header_type,
                    id,
                    outcome,
                    envelope,
                    ip,
                    receiver,
                )),
                _ => None,
            },
            (None, None) => None,
        };
        // Inserted at index 0 in reverse, so the first ends on top.
        for (name, value) in headers.unwrap_or_default().into_iter().rev() {
            if shared.logs(LogLevel::Actions) {
                shared.log(
                    LogLevel::Actions,
                    &prepend_log_line(&queue_id, name, &value),
                );
            }
            edits.push(HeaderEdit::Prepend { name, value });
        }
        self.envelope.end_message();
        EndOfMessage {
            reply: StageReply::Continue,
            edits,
        }
    }

    /// What the held message proves, within `rescue.time_limit`.
    async fn rescue(&self, held: &mut Held) -> Verdict {
        let shared = &self.shared;
        let limit = shared.config.rescue.time_limit;
        let domain = sender_domain(&self.envelope.sender);
        let Some(message) = held.message() else {
            return match held.kept() {
                Kept::TooLarge => Verdict::NotRescued(format!(
                    "the message is larger than rescue.max_message_size ({} bytes)",
                    shared.config.rescue.max_message_size
                )),
                _ => Verdict::Temporary(format!(
                    "rescue.max_held_bytes ({} bytes) reached: too many messages held",
                    shared.config.rescue.max_held_bytes
                )),
            };
        };
        let verify = (shared.rescuer)(shared.evaluator.lookup(), &shared.rescue, message, domain);
        tokio::time::timeout(limit, verify)
            .await
            .unwrap_or_else(|_| {
                Verdict::Temporary(format!(
                    "rescue.time_limit ({} ms) ran out",
                    limit.as_millis()
                ))
            })
    }

    /// The current message is over: its state and its part of the
    /// envelope are forgotten.
    fn forget_message(&mut self) {
        self.message = MessageData::default();
        self.envelope.end_message();
    }

    /// The message ended without end of message (RSET, a reject, a
    /// dropped client): its state is forgotten.
    pub fn abort(&mut self) {
        self.forget_message();
    }

    /// The daemon is stopping and will not wait for the check in progress
    /// at MAIL FROM: a temporary failure (RFC 3463 4.3.2, system not
    /// accepting network messages), so that the client tries again later.
    pub fn interrupted(&mut self, macros: &Macros<'_>) -> StageReply {
        self.forget_message();
        self.shared.log(
            LogLevel::Errors,
            &format!(
                "{}: stopping: SPF check interrupted; answering 451 4.3.2",
                queue_id(macros)
            ),
        );
        StageReply::Tempfail(Reply {
            code: 451,
            enhanced: Some("4.3.2"),
            text: "SPF check interrupted by a restart, try again later".to_owned(),
        })
    }

    /// Something went wrong inside the milter at `stage` (a panic, a
    /// header edit the library refused): logged, counted, the message
    /// forgotten, and answered as `on_internal_error` says.
    pub fn internal_error(&mut self, stage: Stage, macros: &Macros<'_>, what: &str) -> StageReply {
        self.forget_message();
        let action = self.shared.config.milter.on_internal_error;
        self.metrics
            .message(MessageAction::InternalError, [], Duration::ZERO);
        self.shared.log(
            LogLevel::Errors,
            &format!(
                "{}: internal error at {stage}: {what}; answering {action} (on_internal_error)",
                queue_id(macros)
            ),
        );
        internal_error_answer(action)
    }
}

/// What a held message's verdict leads to, logged with the queue ID:
/// Continue (accepted: rescued, or test mode), the held reject, or a
/// temporary failure.
fn held_answer<L>(shared: &Shared<L>, queue_id: &str, held: &Held, verdict: Verdict) -> StageReply {
    let log = |line: String| shared.log(LogLevel::Actions, &format!("{queue_id}: {line}"));
    let (answer, line) = match verdict {
        Verdict::Rescued(by) => (StageReply::Continue, format!("rescued by {by}")),
        Verdict::NotRescued(why) => {
            let line = format!("not rescued ({why}): {}", reply_line(&held.reply));
            (StageReply::Reject(held.reply.clone()), line)
        }
        Verdict::Temporary(why) => {
            let reply = rescue_tempfail(held.kept());
            let line = format!("rescue failed for now ({why}): {}", reply_line(&reply));
            (StageReply::Tempfail(reply), line)
        }
    };
    if held.test_mode {
        let would = match answer {
            StageReply::Reject(_) => "reject",
            StageReply::Tempfail(_) => "defer",
            _ => "rescue",
        };
        log(format!("TestOnly: would {would}: {line}"));
        StageReply::Continue
    } else {
        log(line);
        answer
    }
}

/// The deferral of a held message: the total of held bytes reached (RFC
/// 3463 X.3.1, mail system full), or the verification could not finish
/// (X.4.3, directory server failure: the keys are in the DNS).
fn rescue_tempfail(kept: Kept) -> Reply {
    match kept {
        Kept::OverTotal => Reply {
            code: 451,
            enhanced: Some("4.3.1"),
            text: "Too much mail held for the SPF check, try again later".to_owned(),
        },
        _ => Reply {
            code: 451,
            enhanced: Some("4.4.3"),
            text: "Temporary failure checking the message's signatures, try again later".to_owned(),
        },
    }
}

/// A reply as log lines show it: `550 5.7.23 text` (as
/// [`crate::policy::decide`] logs it).
fn reply_line(reply: &Reply) -> String {
    match reply.enhanced {
        Some(e) => format!("{} {e} {}", reply.code, reply.text),
        None => format!("{} {}", reply.code, reply.text),
    }
}

/// The MAIL FROM domain (after the last `@`), `None` for the null sender
/// or a sender without a domain.
fn sender_domain(sender: &str) -> Option<&str> {
    sender
        .trim()
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

/// The authserv-id: configured, the host name, or the MTA's `j` macro.
fn authserv_id(config: &Config, mta_name: Option<&str>) -> String {
    match &config.milter.authserv_id {
        AuthservId::Fixed(id) => id.clone(),
        AuthservId::Hostname => host_name(),
        AuthservId::MtaHostname => mta_name.map_or_else(host_name, str::to_owned),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// The queue ID for log lines: the MTA's `i`, or `NOQUEUE` before it has
/// assigned one (at MAIL FROM, with Postfix's defaults).
fn queue_id(macros: &Macros<'_>) -> String {
    macros("i")
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| "NOQUEUE".to_owned())
}

/// `QUEUEID: prepend NAME: VALUE`, the value unfolded (each line break
/// and tab of the folding a space), in one allocation.
fn prepend_log_line(queue_id: &str, name: &str, value: &str) -> String {
    let mut line = String::with_capacity(queue_id.len() + name.len() + value.len() + 12);
    line.push_str(queue_id);
    line.push_str(": prepend ");
    line.push_str(name);
    line.push_str(": ");
    for (i, part) in value.split("\n\t").enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push_str(part);
    }
    line
}

/// The one log line of a message's deleted headers:
/// `removing 3 forged headers: Received-SPF #2, Received-SPF #1,
/// Authentication-Results #1`, at most [`FORGED_NAMED_IN_LOG`] named and
/// the others counted (`… and 99990 more`), so that a message of many
/// forged headers costs one line.
fn forged_log_line(forged: &[(&str, i32)]) -> String {
    let mut line = format!(
        "removing {} forged header{}:",
        forged.len(),
        if forged.len() == 1 { "" } else { "s" }
    );
    for (i, (name, index)) in forged.iter().take(FORGED_NAMED_IN_LOG).enumerate() {
        line.push_str(if i == 0 { " " } else { ", " });
        line.push_str(name);
        line.push_str(" #");
        line.push_str(&index.to_string());
    }
    if let Some(more) = forged
        .len()
        .checked_sub(FORGED_NAMED_IN_LOG)
        .filter(|&n| n > 0)
    {
        line.push_str(&format!(" and {more} more"));
    }
    line
}

/// The `reason` label of a bypass in the metrics.
fn skip_label(reason: SkipReason) -> &'static str {
    match reason {
        SkipReason::LocalConnection => "local",
        SkipReason::WhitelistedRelay => "whitelist",
        SkipReason::WhitelistedDomain => "domain_whitelist",
        SkipReason::WhitelistedHelo => "helo_whitelist",
        SkipReason::PtrWhitelistedDomain => "ptr_whitelist",
    }
}

/// The answer of `on_internal_error`.
fn internal_error_answer(action: InternalErrorAction) -> StageReply {
    match action {
        // Accepted as if the milter were not there: no header.
        InternalErrorAction::Accept => StageReply::Accept,
        InternalErrorAction::Tempfail => StageReply::Tempfail(Reply {
            code: 451,
            enhanced: Some("4.3.0"),
            text: "Temporary internal error in the SPF check".to_owned(),
        }),
        InternalErrorAction::Reject => StageReply::Reject(Reply {
            code: 550,
            enhanced: Some("5.7.1"),
            text: "Internal error in the SPF check".to_owned(),
        }),
    }
}
