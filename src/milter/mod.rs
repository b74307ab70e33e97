//! The milter adapter: indymilter callbacks around [`crate::session`].
//!
//! Glue only: each callback turns what the MTA sent into one call of the
//! connection's [`Session`] and its [`StageReply`] (and, at end of message, its
//! [`HeaderEdit`]s) back into the milter protocol. One panic guard covers
//! every stage; a panic or a header edit the library refuses is answered as
//! `on_internal_error` says.

use std::ffi::{CStr, CString};
use std::future::Future;
use std::sync::Arc;

use futures_util::FutureExt as _;
use indymilter::{Callbacks, ContextActions, NegotiateContext, SetErrorReply, SocketInfo, Status};

use crate::config::Config;
use crate::dns::{CachingLookup, HickoryLookup, ResolverOptions, cache::CacheOptions};
use crate::log::Logger;
use crate::metrics::{DnsStatsSource, Metrics};
use crate::policy::decide::Reply;
use crate::session::{EndOfMessage, HeaderEdit, Session, Stage, StageReply};
use crate::spf::Evaluator;

mod daemon;
pub mod io;
mod negotiate;
mod rate_limit;
pub mod session_log;

pub use daemon::run;

type Lookup = CachingLookup<HickoryLookup>;

/// What every connection of one configuration shares, with the resolver
/// the configuration asks for.
pub type Shared = crate::session::Shared<Lookup>;

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
        let evaluator = Evaluator::new(CachingLookup::new(hickory, cache))
            .with_limits(config.spf_limits())
            .with_prefetch(config.dns.prefetch);
        let logger = Logger::new(config.log.target);
        Ok(Self::with_evaluator(config, evaluator, logger))
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

/// A connection's state, from its negotiation on.
struct Connection {
    /// The configuration the connection negotiated with; its session
    /// starts with the same (a reload in between does not change what
    /// was asked of the MTA).
    shared: Arc<Shared>,
    /// The protocol options negotiated ([`negotiate::protocol`]).
    opts: indymilter::ProtoOpts,
    /// From connect on.
    session: Option<Session<Lookup>>,
    /// An answer for the connection that a step without reply could not
    /// give (an internal error at connect or HELO): every MAIL FROM of
    /// the connection gets it, as every command after a connect or HELO
    /// reply of that kind would have.
    connection_answer: Option<StageReply>,
    /// The same for the current message (an internal error at RCPT TO or
    /// at a header): its end of message gets it; a new message or an
    /// abort forgets it.
    message_answer: Option<StageReply>,
}

impl Connection {
    /// SMFIS_SKIP may be answered to a body chunk: the body was asked for
    /// (the rescue) and SMFIP_SKIP negotiated.
    fn skip(&self) -> bool {
        !self.opts.contains(indymilter::ProtoOpts::NO_BODY)
            && self.opts.contains(indymilter::ProtoOpts::SKIP)
    }

    /// Header values keep their leading white space (SMFIP_HDR_LEADSPC).
    fn leading_space(&self) -> bool {
        self.opts.contains(indymilter::ProtoOpts::LEADING_SPACE)
    }

    /// What to tell the MTA at `stage`: `answer`, or nothing where it
    /// awaits no reply (an answer other than Continue is then kept for
    /// the next step that has one).
    fn answer(
        &mut self,
        reply: &mut indymilter::SmtpReply,
        stage: Stage,
        answer: StageReply,
    ) -> Status {
        match self.reply_at(stage, answer) {
            Some(StageReply::Skip) if stage == Stage::Body && self.skip() => Status::Skip,
            Some(answer) => status(reply, answer),
            None => Status::Noreply,
        }
    }

    /// [`Connection::answer`]'s choice: the answer to give, or `None`.
    fn reply_at(&mut self, stage: Stage, answer: StageReply) -> Option<StageReply> {
        if negotiate::awaits_reply(self.opts, stage) {
            return Some(answer);
        }
        if answer != StageReply::Continue {
            let owed = match stage {
                Stage::Connect | Stage::Helo => &mut self.connection_answer,
                _ => &mut self.message_answer,
            };
            owed.get_or_insert(answer);
        }
        None
    }

    /// The answer owed at `stage` (MAIL FROM or end of message), if any;
    /// a new message or an abort forgets the last message's.
    fn owed(&mut self, stage: Stage) -> Option<StageReply> {
        match stage {
            Stage::Mail => {
                self.message_answer = None;
                self.connection_answer.clone()
            }
            Stage::EndOfMessage => self.message_answer.take(),
            Stage::Abort => {
                self.message_answer = None;
                None
            }
            _ => None,
        }
    }
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

/// A session's answer in the milter protocol. A skip (of the rest of the
/// body) goes on where SMFIS_SKIP cannot be answered; where it can,
/// [`Connection::answer`] answers it.
fn status(reply: &mut indymilter::SmtpReply, answer: StageReply) -> Status {
    match answer {
        StageReply::Continue | StageReply::Skip => Status::Continue,
        StageReply::Accept => Status::Accept,
        StageReply::Reject(r) => {
            set_reply(reply, &r);
            Status::Reject
        }
        StageReply::Tempfail(r) => {
            set_reply(reply, &r);
            Status::Tempfail
        }
    }
}

/// The one panic guard: runs a stage's work; a panic in it becomes the
/// text of an internal error.
async fn guarded<T>(work: impl Future<Output = T>) -> Result<T, String> {
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned())
        })
}

/// Runs one stage of the connection's session under [`guarded`] and
/// answers (or not: [`Connection::answer`]).
macro_rules! stage {
    ($cx:ident, $stage:expr, |$session:ident, $macros:ident| $work:expr) => {{
        let Some(conn) = $cx.data.as_mut() else {
            return Status::Continue;
        };
        if let Some(owed) = conn.owed($stage) {
            return status(&mut $cx.reply, owed);
        }
        let answer = match conn.session.as_mut() {
            // No session: its connect failed, and said so.
            None => StageReply::Continue,
            Some($session) => {
                let macros = &$cx.macros;
                let $macros = &|name: &str| macro_value(macros, name);
                match guarded(async { $work }).await {
                    Ok(answer) => answer,
                    Err(panic) => $session.internal_error($stage, $macros, &panic),
                }
            }
        };
        conn.answer(&mut $cx.reply, $stage, answer)
    }};
}

/// The running milter: the current configuration, swapped whole on
/// reload, and the metrics, which outlive reloads.
pub struct Milter {
    current: std::sync::RwLock<Arc<Shared>>,
    metrics: Arc<Metrics>,
    /// Set when the daemon stops and will not wait any longer for the
    /// checks in progress ([`Milter::interrupt`]).
    interrupt: tokio::sync::watch::Sender<bool>,
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
                interrupt: tokio::sync::watch::Sender::new(false),
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

    /// The daemon is stopping: every check in progress at MAIL FROM ends
    /// now with a temporary failure (and so does any that starts).
    fn interrupt(&self) {
        self.interrupt.send_replace(true);
    }

    /// Completes when [`Milter::interrupt`] is called; never otherwise.
    fn interrupted(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut interrupt = self.interrupt.subscribe();
        async move {
            if interrupt.wait_for(|&stop| stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// A reload: new connections get `shared`; the bytes held by the
    /// sessions of the previous configuration stay counted against
    /// `rescue.max_held_bytes`.
    fn replace(&self, shared: Shared) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let budget = Arc::clone(current.held_budget());
        *current = Arc::new(shared.with_held_budget(budget));
    }
}

/// A macro's value, by its name without braces.
/// The names every message asks for are spelled out; others (`MacroList`)
/// are built for the look-up.
fn macro_value(macros: &indymilter::Macros, name: &str) -> Option<String> {
    let value = match name {
        "i" => macros.get(c"i"),
        "j" => macros.get(c"j"),
        "auth_authen" => macros.get(c"{auth_authen}"),
        _ => macros.get(&CString::new(negotiate::macro_request_name(name)).ok()?),
    };
    value.map(lossy)
}

/// The callbacks.
fn callbacks(milter: Arc<Milter>) -> Callbacks<Connection> {
    let negotiating = Arc::clone(&milter);
    let stopping = Arc::clone(&milter);
    let stopping_at_eom = Arc::clone(&milter);
    Callbacks::new()
        .on_negotiate(move |cx: &mut NegotiateContext<Connection>, _, offered| {
            let shared = negotiating.current();
            Box::pin(async move {
                let opts = negotiate::protocol(&shared.config, offered);
                cx.requested_actions = negotiate::ACTIONS;
                cx.requested_opts = opts;
                for (stage, macros) in negotiate::requested_macros(&shared.config) {
                    cx.requested_macros.insert(stage, macros);
                }
                cx.data = Some(Connection {
                    shared,
                    opts,
                    session: None,
                    connection_answer: None,
                    message_answer: None,
                });
                Status::Continue
            })
        })
        .on_connect(move |cx, _hostname, socket| {
            let metrics = Arc::clone(milter.metrics());
            Box::pin(async move {
                let Some(conn) = cx.data.as_mut() else {
                    return Status::Tempfail;
                };
                let client_ip = match socket {
                    SocketInfo::Inet(addr) => Some(addr.ip()),
                    _ => None,
                };
                // A new connection on the same stream (after a QUIT_NC)
                // owes nothing of the last one.
                conn.connection_answer = None;
                conn.message_answer = None;
                let mta_name = macro_value(&cx.macros, "j");
                let shared = Arc::clone(&conn.shared);
                let connected = guarded(async {
                    Session::connect(shared, metrics, client_ip, mta_name.as_deref())
                })
                .await;
                match connected {
                    Ok(mut session) => {
                        session.set_header_leading_space(conn.leading_space());
                        conn.session = Some(session);
                        conn.answer(&mut cx.reply, Stage::Connect, StageReply::Continue)
                    }
                    // No session to answer for: a bare temporary failure
                    // (the MTA gives its own text), at connect or, if the
                    // MTA awaits no reply there, at every MAIL FROM.
                    Err(_) if negotiate::awaits_reply(conn.opts, Stage::Connect) => {
                        Status::Tempfail
                    }
                    Err(_) => {
                        conn.connection_answer = Some(StageReply::Tempfail(Reply {
                            code: 451,
                            enhanced: Some("4.7.1"),
                            text: "Service unavailable - try again later".to_owned(),
                        }));
                        Status::Noreply
                    }
                }
            })
        })
        .on_helo(|cx, helo| {
            Box::pin(async move {
                stage!(cx, Stage::Helo, |session, _macros| {
                    session.helo(&lossy(&helo));
                    StageReply::Continue
                })
            })
        })
        .on_mail(move |cx, args| {
            let interrupted = stopping.interrupted();
            Box::pin(async move {
                let sender = args.first().map(|a| lossy(a)).unwrap_or_default();
                stage!(cx, Stage::Mail, |session, macros| {
                    let finished = tokio::select! {
                        answer = session.mail(&sender, macros) => Some(answer),
                        () = interrupted => None,
                    };
                    match finished {
                        Some(answer) => answer,
                        None => session.interrupted(macros),
                    }
                })
            })
        })
        .on_rcpt(|cx, args| {
            Box::pin(async move {
                stage!(cx, Stage::Rcpt, |session, _macros| {
                    if let Some(recipient) = args.first() {
                        session.rcpt(&lossy(recipient));
                    }
                    StageReply::Continue
                })
            })
        })
        .on_header(|cx, name, value| {
            Box::pin(async move {
                stage!(cx, Stage::Header, |session, _macros| {
                    session.header(name.to_bytes(), value.to_bytes());
                    StageReply::Continue
                })
            })
        })
        .on_body(|cx, chunk| {
            Box::pin(
                async move { stage!(cx, Stage::Body, |session, _macros| session.body(&chunk)) },
            )
        })
        .on_eom(move |cx| {
            // A held message's verification is interrupted by a stop as a
            // check at MAIL FROM is: a temporary failure, never the MTA's
            // default action (which may be to accept).
            let interrupted = stopping_at_eom.interrupted();
            Box::pin(async move {
                let Some(conn) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                if let Some(owed) = conn.owed(Stage::EndOfMessage) {
                    return status(&mut cx.reply, owed);
                }
                let Some(session) = conn.session.as_mut() else {
                    return Status::Continue;
                };
                let macros = &cx.macros;
                let macros = &|name: &str| macro_value(macros, name);
                let finished = guarded(async {
                    // The message first: one that is not held ends at once
                    // with its headers, even while stopping.
                    tokio::select! {
                        biased;
                        eom = session.end_of_message(macros) => Some(eom),
                        () = interrupted => None,
                    }
                })
                .await;
                let answer = match finished {
                    Ok(Some(EndOfMessage {
                        reply: StageReply::Continue,
                        edits,
                    })) => match apply(&cx.actions, &edits).await {
                        Ok(()) => StageReply::Continue,
                        Err(e) => session.internal_error(Stage::EndOfMessage, macros, &e),
                    },
                    Ok(Some(EndOfMessage { reply, .. })) => reply,
                    Ok(None) => session.interrupted(macros),
                    Err(panic) => session.internal_error(Stage::EndOfMessage, macros, &panic),
                };
                status(&mut cx.reply, answer)
            })
        })
        .on_abort(|cx| {
            Box::pin(async move {
                stage!(cx, Stage::Abort, |session, _macros| {
                    session.abort();
                    StageReply::Continue
                })
            })
        })
}

/// Makes the header edits of end of message, in order; the first the
/// library refuses stops them, named in the error.
async fn apply(actions: &impl ContextActions, edits: &[HeaderEdit]) -> Result<(), String> {
    for edit in edits {
        let done = match edit {
            HeaderEdit::Delete { name, index } => {
                actions.change_header(*name, *index, None::<&str>).await
            }
            HeaderEdit::Prepend { name, value } => {
                actions.insert_header(0, *name, value.as_str()).await
            }
        };
        done.map_err(|e| format!("cannot {edit}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milter actions that refuse every edit (as the library does for an
    /// action that was not negotiated), recording what was asked.
    #[derive(Default)]
    struct Refusing(std::sync::Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl ContextActions for Refusing {
        async fn add_header<'cx, 'k, 'v>(
            &'cx self,
            _: impl indymilter::IntoCString + Send + 'k,
            _: impl indymilter::IntoCString + Send + 'v,
        ) -> Result<(), indymilter::ActionError> {
            self.0.lock().unwrap().push("add".into());
            Err(indymilter::ActionError::NotAvailable)
        }
        async fn insert_header<'cx, 'k, 'v>(
            &'cx self,
            _: i32,
            _: impl indymilter::IntoCString + Send + 'k,
            _: impl indymilter::IntoCString + Send + 'v,
        ) -> Result<(), indymilter::ActionError> {
            self.0.lock().unwrap().push("insert".into());
            Err(indymilter::ActionError::NotAvailable)
        }
        async fn change_header<'cx, 'k, 'v>(
            &'cx self,
            _: impl indymilter::IntoCString + Send + 'k,
            _: i32,
            _: Option<impl indymilter::IntoCString + Send + 'v>,
        ) -> Result<(), indymilter::ActionError> {
            self.0.lock().unwrap().push("change".into());
            Err(indymilter::ActionError::InvalidParam)
        }
        async fn change_sender<'cx, 'a, 'b>(
            &'cx self,
            _: impl indymilter::IntoCString + Send + 'a,
            _: Option<impl indymilter::IntoCString + Send + 'b>,
        ) -> Result<(), indymilter::ActionError> {
            unreachable!("spfmilter never changes the sender")
        }
        async fn add_recipient<'cx, 'a>(
            &'cx self,
            _: impl indymilter::IntoCString + Send + 'a,
        ) -> Result<(), indymilter::ActionError> {
            unreachable!("spfmilter never adds recipients")
        }
        async fn add_recipient_ext<'cx, 'a, 'b>(
            &'cx self,
            _: impl indymilter::IntoCString + Send + 'a,
            _: Option<impl indymilter::IntoCString + Send + 'b>,
        ) -> Result<(), indymilter::ActionError> {
            unreachable!("spfmilter never adds recipients")
        }
        async fn delete_recipient<'cx, 'a>(
            &'cx self,
            _: impl indymilter::IntoCString + Send + 'a,
        ) -> Result<(), indymilter::ActionError> {
            unreachable!("spfmilter never deletes recipients")
        }
        async fn replace_body<'cx, 'a>(
            &'cx self,
            _: &'a [u8],
        ) -> Result<(), indymilter::ActionError> {
            unreachable!("spfmilter never replaces the body")
        }
        async fn progress<'cx>(&'cx self) -> Result<(), indymilter::ActionError> {
            unreachable!("spfmilter never sends progress")
        }
        async fn quarantine<'cx, 'a>(
            &'cx self,
            _: impl indymilter::IntoCString + Send + 'a,
        ) -> Result<(), indymilter::ActionError> {
            unreachable!("spfmilter never quarantines")
        }
    }

    /// A header edit the library refuses stops the edits and is named in
    /// the error, which the end-of-message glue answers as an internal
    /// error (tested in `crate::session`).
    #[tokio::test]
    async fn a_refused_header_edit_stops_the_edits_and_is_named() {
        let refusing = Refusing::default();
        let edits = [
            HeaderEdit::Delete {
                name: "Received-SPF",
                index: 2,
            },
            HeaderEdit::Prepend {
                name: "Received-SPF",
                value: "Pass".into(),
            },
        ];
        let error = apply(&refusing, &edits).await.unwrap_err();
        assert!(
            error.starts_with("cannot delete Received-SPF header #2: "),
            "{error}"
        );
        assert_eq!(*refusing.0.lock().unwrap(), ["change"]);
        let error = apply(&refusing, &edits[1..]).await.unwrap_err();
        assert!(
            error.starts_with("cannot prepend a Received-SPF header: "),
            "{error}"
        );
    }

    fn connection(opts: indymilter::ProtoOpts) -> Connection {
        Connection {
            shared: Arc::new(Shared::for_tests()),
            opts,
            session: None,
            connection_answer: None,
            message_answer: None,
        }
    }

    fn tempfail() -> StageReply {
        StageReply::Tempfail(Reply {
            code: 451,
            enhanced: Some("4.3.0"),
            text: "Temporary internal error in the SPF check".to_owned(),
        })
    }

    /// An internal error at a header the MTA awaits no reply for is
    /// answered at the end of that message, and only there.
    #[test]
    fn a_header_error_without_reply_is_answered_at_end_of_message() {
        use indymilter::ProtoOpts;
        let mut conn = connection(ProtoOpts::NOREPLY_HEADER | ProtoOpts::NOREPLY_RCPT);
        assert_eq!(conn.reply_at(Stage::Header, StageReply::Continue), None);
        assert_eq!(conn.owed(Stage::EndOfMessage), None);
        assert_eq!(conn.reply_at(Stage::Header, tempfail()), None);
        assert_eq!(conn.reply_at(Stage::Header, StageReply::Accept), None);
        // The first one is kept.
        assert_eq!(conn.owed(Stage::EndOfMessage), Some(tempfail()));
        assert_eq!(conn.owed(Stage::EndOfMessage), None, "answered once");
        // An abort, or a new message, forgets it.
        assert_eq!(conn.reply_at(Stage::Rcpt, tempfail()), None);
        assert_eq!(conn.owed(Stage::Abort), None);
        assert_eq!(conn.owed(Stage::EndOfMessage), None);
        assert_eq!(conn.reply_at(Stage::Rcpt, tempfail()), None);
        assert_eq!(conn.owed(Stage::Mail), None);
        assert_eq!(conn.owed(Stage::EndOfMessage), None);
        // Where the MTA waits for the reply, it is given there.
        let mut conn = connection(ProtoOpts::empty());
        assert_eq!(conn.reply_at(Stage::Header, tempfail()), Some(tempfail()));
        assert_eq!(conn.owed(Stage::EndOfMessage), None);
    }

    /// At connect or HELO without reply, every MAIL FROM of the
    /// connection gets the answer, as every command after such a reply at
    /// connect or HELO would have.
    #[test]
    fn a_connect_or_helo_error_without_reply_answers_every_mail_from() {
        use indymilter::ProtoOpts;
        let mut conn = connection(ProtoOpts::NOREPLY_CONNECT | ProtoOpts::NOREPLY_HELO);
        assert_eq!(conn.reply_at(Stage::Connect, StageReply::Continue), None);
        assert_eq!(conn.owed(Stage::Mail), None);
        assert_eq!(conn.reply_at(Stage::Helo, tempfail()), None);
        assert_eq!(conn.owed(Stage::Mail), Some(tempfail()));
        assert_eq!(conn.owed(Stage::Abort), None);
        assert_eq!(
            conn.owed(Stage::Mail),
            Some(tempfail()),
            "the next message too"
        );
        assert_eq!(
            conn.reply_at(Stage::Mail, StageReply::Continue),
            Some(StageReply::Continue)
        );
    }

    #[test]
    fn reply_text_percent_signs_are_doubled_for_postfix() {
        assert_eq!(protocol_text("100% sure, 5%s"), "100%% sure, 5%%s");
    }

    /// `rescue.max_held_bytes` bounds the daemon, not one configuration:
    /// the sessions of the old configuration and of the new one count in
    /// the same total.
    #[test]
    fn a_reload_keeps_counting_held_bytes_in_the_same_total() {
        let milter = Milter::new(Shared::for_tests());
        let before = Arc::clone(milter.current().held_budget());
        milter.replace(Shared::for_tests());
        assert!(Arc::ptr_eq(&before, milter.current().held_budget()));
    }
}
