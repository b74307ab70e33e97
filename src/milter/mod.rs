//! The milter adapter: indymilter callbacks around [`crate::policy`].
//!
//! Thin on purpose: each callback records what Postfix said (client
//! address, HELO, sender, first recipient, incoming trace headers) in the
//! per-connection state, and at MAIL FROM hands the session to
//! [`skip`] and [`decide`]; a reject or defer is answered there, accepted
//! mail gets its trace headers at end of message, inserted at index 0
//! (above Postfix's own `Received:`), after forged ones are deleted.
//!
//! Logging follows `debugLevel` (one line per action, the policyd-spf
//! result lines at 2): to syslog (facility mail, through `/dev/log`) by
//! default, or to standard error.

use std::ffi::{CStr, CString};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use indymilter::{
    Actions, Callbacks, ContextActions, MacroStage, NegotiateContext, SetErrorReply, SocketInfo,
    Status,
};

use crate::config::{AuthservId, Config, InternalErrorAction, LogLevel};
use crate::dns::{CachingLookup, HickoryLookup, ResolverOptions, cache::CacheOptions};
use crate::metrics::{DnsStatsSource, MessageAction, Metrics};
use crate::policy::decide::{Action, Decision, Inputs, Reply, decide};
use crate::policy::headers::{
    Transaction, header_receiver, is_forged_trace_header, skip_headers, spf_headers,
};
use crate::policy::skip::{Session as SkipSession, Skip, SkipReason, skip};
use crate::spf::Evaluator;

mod daemon;
pub mod io;
mod log;
pub mod session_log;

pub use daemon::run;
use log::Logger;

type Lookup = CachingLookup<HickoryLookup>;

/// What every connection shares: the configuration and the evaluator
/// (with its DNS cache).
pub struct Shared {
    pub config: Arc<Config>,
    pub evaluator: Evaluator<Lookup>,
    logger: Logger,
}

impl Shared {
    /// Builds the resolver and evaluator the configuration asks for.
    pub fn new(config: Arc<Config>) -> Result<Self, String> {
        let options = ResolverOptions {
            nameservers: config.dns.nameservers.clone(),
            timeout: config.dns.timeout,
            ..ResolverOptions::default()
        };
        let hickory = HickoryLookup::new(&options).map_err(|e| e.to_string())?;
        let cache = CacheOptions {
            max_bytes: config.dns.cache_size,
            ..CacheOptions::default()
        };
        let evaluator =
            Evaluator::new(CachingLookup::new(hickory, cache)).with_limits(config.spf_limits());
        let logger = Logger::new(config.log.target);
        Ok(Self {
            config,
            evaluator,
            logger,
        })
    }

    fn log(&self, level: LogLevel, line: &str) {
        if self.config.log.level >= level {
            self.logger.log(level, line);
        }
    }

    /// Defaults, a nameserver that is never asked, and standard error.
    #[cfg(test)]
    fn for_tests() -> Shared {
        let mut config = Config::default();
        config.dns.nameservers = vec!["127.0.0.1:1".parse().expect("an address")];
        config.log.target = crate::config::LogTarget::Stderr;
        Shared::new(Arc::new(config)).expect("a resolver")
    }
}

/// Per connection.
#[derive(Default)]
struct Connection {
    /// The configuration and evaluator current when the connection came:
    /// a reload applies to new connections, never mid-message.
    shared: Option<Arc<Shared>>,
    metrics: Option<Arc<Metrics>>,
    client_ip: Option<IpAddr>,
    helo: String,
    /// Ours in Authentication-Results, settled at connect (the MTA's `j`
    /// macro by default): every header of the session is compared with it.
    authserv_id: String,
    message: Message,
}

/// Per message; reset at MAIL FROM and on abort.
#[derive(Debug, Default)]
struct Message {
    sender: String,
    first_recipient: Option<String>,
    decision: Option<Decision>,
    skipped: Option<SkipReason>,
    /// Occurrences (name, 1-based index among headers of that name) of
    /// incoming headers to delete.
    forged: Vec<(String, i32)>,
    seen: Vec<(String, i32)>,
}

fn lossy(s: &CStr) -> String {
    String::from_utf8_lossy(s.to_bytes()).into_owned()
}

/// Reply text for the milter protocol: Postfix expands `%` printf-style.
fn protocol_text(text: &str) -> String {
    text.replace('%', "%%")
}

fn set_reply(reply: &mut indymilter::SmtpReply, r: &Reply) {
    let code = r.code.to_string();
    let text = protocol_text(&r.text);
    // A text the library refuses (it cannot be, after sanitizing) still
    // gets the status code.
    let _ = reply.set_error_reply(&code, r.enhanced, [text.as_str()]);
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

/// The running milter: the current configuration, swapped whole on
/// reload, and the metrics, which outlive reloads.
pub struct Milter {
    current: std::sync::RwLock<Arc<Shared>>,
    metrics: Arc<Metrics>,
}

impl Milter {
    pub fn new(shared: Shared) -> Arc<Self> {
        Arc::new_cyclic(|milter: &std::sync::Weak<Milter>| {
            // The DNS figures are those of the configuration in use.
            let milter = milter.clone();
            let dns: DnsStatsSource = Arc::new(move || {
                milter.upgrade().map_or_else(Default::default, |m| {
                    let shared = m.current();
                    let lookup = shared.evaluator.lookup();
                    (lookup.source().stats(), lookup.stats())
                })
            });
            Self {
                current: std::sync::RwLock::new(Arc::new(shared)),
                metrics: Arc::new(Metrics::new(dns)),
            }
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn current(&self) -> Arc<Shared> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn replace(&self, shared: Shared) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(shared);
    }
}

/// The milter macros a connection asks Postfix for, per stage. Asking
/// replaces Postfix's default list of that stage (`milter_*_macros`), so
/// every macro used is named: `j` (the authserv-id), `i` (the queue ID,
/// for the log), `{auth_authen}` (the SMTP AUTH skip) and the macros of
/// `MacroList`.
fn requested_macros(config: &Config) -> [(MacroStage, CString); 3] {
    let mut mail = String::from("i {auth_authen}");
    for rule in &config.skip.macro_list {
        mail.push(' ');
        mail.push_str(&macro_request_name(&rule.name));
    }
    let c = |s: String| CString::new(s).unwrap_or_default();
    [
        (MacroStage::Connect, c("j".to_owned())),
        (MacroStage::Mail, c(mail)),
        (MacroStage::Eom, c("i".to_owned())),
    ]
}

/// Sendmail macro names: one character bare (`j`), longer ones in braces
/// (`{daemon_name}`).
fn macro_request_name(name: &str) -> String {
    if name.chars().count() == 1 {
        name.to_owned()
    } else {
        format!("{{{name}}}")
    }
}

/// A macro's value, by its name without braces.
fn macro_value(macros: &indymilter::Macros, name: &str) -> Option<String> {
    let name = CString::new(macro_request_name(name)).ok()?;
    macros.get(&name).map(lossy)
}

/// The queue ID for log lines: Postfix's `i`, or `NOQUEUE` before Postfix
/// has assigned one (at MAIL FROM, by default).
fn queue_id(macros: &indymilter::Macros) -> String {
    macro_value(macros, "i")
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| "NOQUEUE".to_owned())
}

/// What a panic in a callback is answered with (`on_internal_error`).
fn internal_error(
    shared: &Shared,
    metrics: Option<&Metrics>,
    reply: &mut indymilter::SmtpReply,
    stage: &str,
    queue_id: &str,
    panic: &(dyn std::any::Any + Send),
) -> Status {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let action = shared.config.milter.on_internal_error;
    if let Some(metrics) = metrics {
        metrics.message(MessageAction::InternalError, [], Duration::ZERO);
    }
    shared.log(
        LogLevel::Errors,
        &format!(
            "{queue_id}: internal error at {stage}: {what}; answering {action} (on_internal_error)"
        ),
    );
    let (status, answer) = internal_error_answer(action);
    if let Some(answer) = answer {
        set_reply(reply, &answer);
    }
    status
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

/// The status and reply of `on_internal_error`.
fn internal_error_answer(action: InternalErrorAction) -> (Status, Option<Reply>) {
    match action {
        // Accepted as if the milter were not there: no header.
        InternalErrorAction::Accept => (Status::Accept, None),
        InternalErrorAction::Tempfail => (
            Status::Tempfail,
            Some(Reply {
                code: 451,
                enhanced: Some("4.3.0"),
                text: "Temporary internal error in the SPF check".to_owned(),
            }),
        ),
        InternalErrorAction::Reject => (
            Status::Reject,
            Some(Reply {
                code: 550,
                enhanced: Some("5.7.1"),
                text: "Internal error in the SPF check".to_owned(),
            }),
        ),
    }
}

/// The callbacks.
fn callbacks(milter: Arc<Milter>) -> Callbacks<Connection> {
    let negotiating = Arc::clone(&milter);
    Callbacks::new()
        .on_negotiate(move |cx: &mut NegotiateContext<Connection>, _, _| {
            let shared = negotiating.current();
            Box::pin(async move {
                cx.requested_actions = Actions::ADD_HEADER | Actions::CHANGE_HEADER;
                for (stage, macros) in requested_macros(&shared.config) {
                    cx.requested_macros.insert(stage, macros);
                }
                Status::Continue
            })
        })
        .on_connect(move |cx, _hostname, socket| {
            let shared = milter.current();
            let metrics = Arc::clone(milter.metrics());
            Box::pin(async move {
                let mta_name = cx.macros.get(c"j").map(lossy);
                metrics.connection_opened();
                let mut conn = Connection {
                    authserv_id: authserv_id(&shared.config, mta_name.as_deref()),
                    shared: Some(Arc::clone(&shared)),
                    metrics: Some(metrics),
                    ..Connection::default()
                };
                if let SocketInfo::Inet(addr) = socket {
                    conn.client_ip = Some(addr.ip());
                }
                shared.log(
                    LogLevel::Requests,
                    &format!(
                        "connect from {}",
                        conn.client_ip
                            .map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string())
                    ),
                );
                cx.data = Some(conn);
                Status::Continue
            })
        })
        .on_helo(|cx, helo| {
            Box::pin(async move {
                // A second HELO/EHLO (after STARTTLS) replaces the first.
                if let Some(conn) = cx.data.as_mut() {
                    conn.helo = lossy(&helo);
                }
                Status::Continue
            })
        })
        .on_mail(|cx, args| {
            Box::pin(async move {
                let Some(shared) = cx.data.as_ref().and_then(|c| c.shared.clone()) else {
                    return Status::Continue;
                };
                let queue_id = queue_id(&cx.macros);
                let guarded = std::panic::AssertUnwindSafe(at_mail(cx, &args, &shared, &queue_id));
                match futures_util::FutureExt::catch_unwind(guarded).await {
                    Ok(status) => status,
                    Err(panic) => {
                        let metrics = cx.data.as_mut().and_then(|conn| {
                            conn.message = Message::default();
                            conn.metrics.clone()
                        });
                        internal_error(
                            &shared,
                            metrics.as_deref(),
                            &mut cx.reply,
                            "MAIL FROM",
                            &queue_id,
                            &*panic,
                        )
                    }
                }
            })
        })
        .on_rcpt(|cx, args| {
            Box::pin(async move {
                if let Some(conn) = cx.data.as_mut()
                    && conn.message.first_recipient.is_none()
                {
                    conn.message.first_recipient = args.first().map(|a| lossy(a));
                }
                Status::Continue
            })
        })
        .on_header(|cx, name, value| {
            Box::pin(async move {
                let Some(conn) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                let Some(shared) = conn.shared.clone() else {
                    return Status::Continue;
                };
                let name = lossy(&name);
                let lower = name.to_ascii_lowercase();
                let index = match conn.message.seen.iter_mut().find(|(n, _)| *n == lower) {
                    Some((_, count)) => {
                        *count += 1;
                        *count
                    }
                    None => {
                        conn.message.seen.push((lower, 1));
                        1
                    }
                };
                if shared.config.milter.remove_forged_headers
                    && is_forged_trace_header(
                        &name,
                        &String::from_utf8_lossy(value.to_bytes()),
                        &conn.authserv_id,
                    )
                {
                    conn.message.forged.push((name, index));
                }
                Status::Continue
            })
        })
        .on_eom(|cx| {
            Box::pin(async move {
                let Some(shared) = cx.data.as_ref().and_then(|c| c.shared.clone()) else {
                    return Status::Continue;
                };
                let queue_id = queue_id(&cx.macros);
                let guarded =
                    std::panic::AssertUnwindSafe(at_end_of_message(cx, &shared, &queue_id));
                match futures_util::FutureExt::catch_unwind(guarded).await {
                    Ok(status) => status,
                    Err(panic) => {
                        let metrics = cx.data.as_ref().and_then(|conn| conn.metrics.clone());
                        internal_error(
                            &shared,
                            metrics.as_deref(),
                            &mut cx.reply,
                            "end of message",
                            &queue_id,
                            &*panic,
                        )
                    }
                }
            })
        })
        .on_abort(|cx| {
            Box::pin(async move {
                if let Some(conn) = cx.data.as_mut() {
                    conn.message = Message::default();
                }
                Status::Continue
            })
        })
        .on_close(|cx| {
            Box::pin(async move {
                if let Some(metrics) = cx.data.take().and_then(|c| c.metrics) {
                    metrics.connection_closed();
                }
                Status::Continue
            })
        })
}

/// MAIL FROM: the bypass chain, then the decision; a reject or defer is
/// answered here.
async fn at_mail(
    cx: &mut indymilter::Context<Connection>,
    args: &[CString],
    shared: &Shared,
    queue_id: &str,
) -> Status {
    let config = &shared.config;
    // The whole stage, bypass lookups and both evaluations, stays inside
    // one budget below Postfix's milter_command_timeout.
    let started = tokio::time::Instant::now();
    let deadline = started + config.milter.decision_time_limit;
    let authenticated = cx
        .macros
        .get(c"{auth_authen}")
        .is_some_and(|v| !v.is_empty());
    let Some(conn) = cx.data.as_mut() else {
        return Status::Continue;
    };
    let sender = args.first().map(|a| lossy(a)).unwrap_or_default();
    let sender = sender
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned();
    conn.message = Message {
        sender,
        ..Message::default()
    };
    let macros = &cx.macros;
    let macro_lookup = |name: &str| macro_value(macros, name);
    let session = SkipSession {
        client_ip: conn.client_ip,
        helo: &conn.helo,
        sender: &conn.message.sender,
        authenticated,
        macro_value: &macro_lookup,
    };
    let skipped =
        tokio::time::timeout_at(deadline, skip(config, &shared.evaluator, &session)).await;
    match skipped.unwrap_or_else(|_| {
        shared.log(
            LogLevel::Errors,
            &format!(
                "{queue_id}: the bypass checks ran out of time (decision_time_limit): checking SPF"
            ),
        );
        Skip::Check
    }) {
        Skip::Check => {}
        Skip::Silent(why) => {
            shared.log(
                LogLevel::Results,
                &format!("{queue_id}: not checked: {why}"),
            );
            if let Some(metrics) = &conn.metrics {
                metrics.message(MessageAction::Unchecked, [], started.elapsed());
            }
            return Status::Continue;
        }
        Skip::Traced(reason) => {
            shared.log(
                LogLevel::Actions,
                &format!("{queue_id}: {}", reason.comment()),
            );
            if let Some(metrics) = &conn.metrics {
                metrics.skipped(skip_label(reason), started.elapsed());
            }
            conn.message.skipped = Some(reason);
            return Status::Continue;
        }
    }
    let inputs = Inputs {
        client_ip: conn.client_ip,
        helo: &conn.helo,
        sender: &conn.message.sender,
        deadline: Some(deadline),
    };
    let decision = decide(config, &shared.evaluator, &inputs).await;
    for line in &decision.log {
        shared.log(line.level, &format!("{queue_id}: {line}"));
    }
    if let Some(metrics) = &conn.metrics {
        let action = match decision.action {
            Action::Accept => MessageAction::Accept,
            Action::Reject(_) => MessageAction::Reject,
            Action::Defer(_) => MessageAction::Defer,
        };
        let checks = [&decision.helo, &decision.mail_from]
            .into_iter()
            .flatten()
            .map(|o| (o.identity.as_str(), o.result.as_str()));
        metrics.message(action, checks, started.elapsed());
    }
    let status = match &decision.action {
        Action::Accept => Status::Continue,
        Action::Reject(reply) => {
            set_reply(&mut cx.reply, reply);
            Status::Reject
        }
        Action::Defer(reply) => {
            set_reply(&mut cx.reply, reply);
            Status::Tempfail
        }
    };
    if let Some(conn) = cx.data.as_mut() {
        conn.message.decision = Some(decision);
    }
    status
}

/// End of message: forged trace headers deleted, ours inserted on top.
async fn at_end_of_message(
    cx: &mut indymilter::EomContext<Connection>,
    shared: &Shared,
    queue_id: &str,
) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return Status::Continue;
    };
    let config = &shared.config;
    let mut message = std::mem::take(&mut conn.message);
    // Forged trace headers go first (postfix-opendmarc.md), the last of a
    // name first: the MTA renumbers the headers of that name after each
    // deletion, so deleting #1 before #2 would delete the third one and
    // leave the second.
    message
        .forged
        .sort_by_key(|&(_, index)| std::cmp::Reverse(index));
    for (name, index) in &message.forged {
        shared.log(
            LogLevel::Actions,
            &format!("{queue_id}: removing forged {name} header #{index}"),
        );
        let _ = cx
            .actions
            .change_header(name.as_str(), *index, None::<&str>)
            .await;
    }
    let id = &conn.authserv_id;
    let receiver = header_receiver(
        config.milter.hide_receiver,
        message.first_recipient.as_deref(),
    );
    let headers = match (&message.skipped, &message.decision) {
        (Some(reason), _) => conn.client_ip.map(|ip| {
            skip_headers(
                config.milter.header_type,
                id,
                *reason,
                &Transaction {
                    client_ip: ip,
                    helo: &conn.helo,
                    envelope_from: &message.sender,
                    receiver,
                },
            )
        }),
        (None, Some(decision)) => match (decision.header_outcome(), decision.ip) {
            (Some(outcome), Some(ip)) => Some(spf_headers(
                config.milter.header_type,
                id,
                outcome,
                &Transaction {
                    client_ip: ip,
                    helo: &conn.helo,
                    envelope_from: &message.sender,
                    receiver,
                },
            )),
            _ => None,
        },
        (None, None) => None,
    };
    // Inserted at index 0 in reverse, so the first ends on top.
    for (name, value) in headers.unwrap_or_default().iter().rev() {
        shared.log(
            LogLevel::Actions,
            &format!("{queue_id}: prepend {name}: {}", value.replace("\n\t", " ")),
        );
        let _ = cx.actions.insert_header(0, *name, value.as_str()).await;
    }
    Status::Continue
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MacroRule;

    #[test]
    fn macro_lists_name_what_is_used_one_letter_bare_longer_in_braces() {
        let mut config = Config::default();
        config.skip.macro_list = vec![
            MacroRule::parse("daemon_name|mx-in").unwrap(),
            MacroRule::parse("{auth_type}").unwrap(),
            MacroRule::parse("_").unwrap(),
        ];
        let lists = requested_macros(&config);
        let list = |stage| {
            lists
                .iter()
                .find(|(s, _)| *s == stage)
                .map(|(_, l)| l.to_str().unwrap().to_owned())
        };
        assert_eq!(list(MacroStage::Connect).as_deref(), Some("j"));
        assert_eq!(
            list(MacroStage::Mail).as_deref(),
            Some("i {auth_authen} {daemon_name} {auth_type} _")
        );
        assert_eq!(list(MacroStage::Eom).as_deref(), Some("i"));
    }

    #[test]
    fn internal_errors_answer_as_configured() {
        let (status, reply) = internal_error_answer(InternalErrorAction::Tempfail);
        assert_eq!(status, Status::Tempfail);
        let reply = reply.unwrap();
        assert_eq!((reply.code, reply.enhanced), (451, Some("4.3.0")));
        let (status, reply) = internal_error_answer(InternalErrorAction::Reject);
        assert_eq!(status, Status::Reject);
        assert_eq!(reply.unwrap().code, 550);
        assert_eq!(
            internal_error_answer(InternalErrorAction::Accept),
            (Status::Accept, None)
        );
    }

    #[test]
    fn reply_text_percent_signs_are_doubled_for_postfix() {
        assert_eq!(protocol_text("100% sure, 5%s"), "100%% sure, 5%%s");
    }
}
