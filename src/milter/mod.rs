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
use indymilter::{
    Actions, Callbacks, ContextActions, MacroStage, NegotiateContext, SetErrorReply, SocketInfo,
    Status,
};

use crate::config::Config;
use crate::dns::{CachingLookup, HickoryLookup, ResolverOptions, cache::CacheOptions};
use crate::log::Logger;
use crate::metrics::{DnsStatsSource, Metrics};
use crate::policy::decide::Reply;
use crate::session::{HeaderEdit, Session, Stage, StageReply};
use crate::spf::Evaluator;

mod daemon;
pub mod io;
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

/// A connection's state: its session, from connect on.
type Connection = Session<Lookup>;

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

/// A session's answer in the milter protocol.
fn status(reply: &mut indymilter::SmtpReply, answer: StageReply) -> Status {
    match answer {
        StageReply::Continue => Status::Continue,
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

/// Runs one stage of `session` under [`guarded`] and answers.
macro_rules! stage {
    ($cx:ident, $stage:expr, |$session:ident, $macros:ident| $work:expr) => {{
        let Some($session) = $cx.data.as_mut() else {
            return Status::Continue;
        };
        let macros = &$cx.macros;
        let $macros = &|name: &str| macro_value(macros, name);
        let answer = match guarded(async { $work }).await {
            Ok(answer) => answer,
            Err(panic) => $session.internal_error($stage, $macros, &panic),
        };
        status(&mut $cx.reply, answer)
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

/// The callbacks.
fn callbacks(milter: Arc<Milter>) -> Callbacks<Connection> {
    let negotiating = Arc::clone(&milter);
    let stopping = Arc::clone(&milter);
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
                let client_ip = match socket {
                    SocketInfo::Inet(addr) => Some(addr.ip()),
                    _ => None,
                };
                let mta_name = macro_value(&cx.macros, "j");
                let connected = guarded(async {
                    Session::connect(shared, metrics, client_ip, mta_name.as_deref())
                })
                .await;
                match connected {
                    Ok(session) => {
                        cx.data = Some(session);
                        Status::Continue
                    }
                    // No session to answer for: the MTA applies
                    // milter_default_action.
                    Err(_) => Status::Tempfail,
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
        .on_eom(|cx| {
            Box::pin(async move {
                let Some(session) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                let macros = &cx.macros;
                let macros = &|name: &str| macro_value(macros, name);
                let answer = match guarded(async { session.end_of_message(macros) }).await {
                    Ok(edits) => match apply(&cx.actions, &edits).await {
                        Ok(()) => StageReply::Continue,
                        Err(e) => session.internal_error(Stage::EndOfMessage, macros, &e),
                    },
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

    #[test]
    fn reply_text_percent_signs_are_doubled_for_postfix() {
        assert_eq!(protocol_text("100% sure, 5%s"), "100%% sure, 5%%s");
    }
}
