//! One SMTP connection as the milter sees it, without the milter library:
//! what the MTA said at each stage (connect, HELO, MAIL FROM, RCPT TO,
//! headers, end of message, abort), the per-connection and per-message
//! state, and what to answer. [`crate::milter`] turns the milter protocol
//! into calls of [`Session`] and its [`StageReply`]s and [`HeaderEdit`]s back
//! into the protocol; nothing here knows a socket or a milter type, so the
//! whole session runs in unit tests and under the fuzzer.
//!
//! At MAIL FROM the session hands the envelope to [`skip`] and [`decide`]; a
//! reject or defer is answered there. Accepted mail gets its trace headers
//! at end of message, inserted at index 0 (above the MTA's own
//! `Received:`), after forged ones are deleted.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{AuthservId, Config, InternalErrorAction, LogLevel};
use crate::dns::Lookup;
use crate::log::Logger;
use crate::metrics::{MessageAction, Metrics};
use crate::policy::decide::{Action, Decision, Reply, decide};
use crate::policy::envelope::Envelope;
use crate::policy::headers::{header_receiver, is_forged_trace_header, skip_headers, spf_headers};
use crate::policy::skip::{Skip, SkipReason, skip};
use crate::spf::Evaluator;

#[cfg(test)]
mod tests;

/// What every session of one configuration shares: the configuration, the
/// evaluator (with its DNS cache) and the log.
pub struct Shared<L> {
    pub config: Arc<Config>,
    pub evaluator: Evaluator<L>,
    logger: Logger,
}

impl<L> Shared<L> {
    pub fn with_evaluator(config: Arc<Config>, evaluator: Evaluator<L>, logger: Logger) -> Self {
        Self {
            config,
            evaluator,
            logger,
        }
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
        }
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
        let mut id = None;
        for line in decision.log.iter().filter(|line| shared.logs(line.level)) {
            let id = id.get_or_insert_with(queue_id);
            shared.log(line.level, &format!("{id}: {line}"));
        }
        let (action, answer) = match &decision.action {
            Action::Accept => (MessageAction::Accept, StageReply::Continue),
            Action::Reject(reply) => (MessageAction::Reject, StageReply::Reject(reply.clone())),
            Action::Defer(reply) => (MessageAction::Defer, StageReply::Tempfail(reply.clone())),
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
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
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

    /// End of message: the edits to make, in order. Forged trace headers
    /// are deleted first, the last of a name first: the MTA renumbers the
    /// headers of that name after each deletion, so deleting #1 before #2
    /// would delete the third one and leave the second. Then ours, on top.
    pub fn end_of_message(&mut self, macros: &Macros<'_>) -> Vec<HeaderEdit> {
        let queue_id = queue_id(macros);
        let shared = &self.shared;
        let config = &shared.config;
        let mut message = std::mem::take(&mut self.message);
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
        edits
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
