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

use indymilter::{
    Actions, Callbacks, ContextActions, MacroStage, NegotiateContext, SetErrorReply, SocketInfo,
    Status,
};

use crate::config::{
    AuthservId, Config, Family, LogLevel, LogTarget, Overrides, SocketSpec, Source,
};
use crate::dns::{CachingLookup, HickoryLookup, ResolverOptions, cache::CacheOptions};
use crate::policy::decide::{Action, Decision, Inputs, Reply, decide};
use crate::policy::headers::{
    Transaction, header_receiver, is_forged_trace_header, skip_headers, spf_headers,
};
use crate::policy::skip::{Session as SkipSession, Skip, SkipReason, skip};
use crate::spf::Evaluator;

type Lookup = CachingLookup<HickoryLookup>;

/// What every connection shares: the configuration and the evaluator
/// (with its DNS cache).
pub struct Shared {
    pub config: Arc<Config>,
    pub evaluator: Evaluator<Lookup>,
    logger: Logger,
}

/// Where log lines go.
enum Logger {
    /// `/dev/log`, RFC 3164 framing without a timestamp (the syslog daemon
    /// adds it), facility mail as Postfix's own lines.
    Syslog(std::os::unix::net::UnixDatagram),
    Stderr,
}

impl Logger {
    fn new(target: LogTarget) -> Logger {
        if target == LogTarget::Syslog {
            if let Ok(socket) = std::os::unix::net::UnixDatagram::unbound()
                && socket.connect("/dev/log").is_ok()
            {
                return Logger::Syslog(socket);
            }
            eprintln!("spfmilter: /dev/log is not available, logging to standard error");
        }
        Logger::Stderr
    }

    fn log(&self, level: LogLevel, line: &str) {
        let pid = std::process::id();
        match self {
            Logger::Syslog(socket) => {
                // facility mail (2) * 8 + severity: err (3) or info (6).
                let priority = if level <= LogLevel::Errors { 19 } else { 22 };
                let message = format!("<{priority}>spfmilter[{pid}]: {line}");
                if socket.send(message.as_bytes()).is_err() {
                    eprintln!("spfmilter[{pid}]: {line}");
                }
            }
            Logger::Stderr => eprintln!("spfmilter[{pid}]: {line}"),
        }
    }
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
        let evaluator = Evaluator::new(CachingLookup::new(hickory, CacheOptions::default()))
            .with_limits(config.spf_limits());
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
}

/// Per connection.
#[derive(Default)]
struct Connection {
    /// The configuration and evaluator current when the connection came:
    /// a reload applies to new connections, never mid-message.
    shared: Option<Arc<Shared>>,
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

/// The running milter: the current configuration, swapped whole on reload.
pub struct Milter {
    current: std::sync::RwLock<Arc<Shared>>,
}

impl Milter {
    pub fn new(shared: Shared) -> Self {
        Self {
            current: std::sync::RwLock::new(Arc::new(shared)),
        }
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

/// The callbacks.
fn callbacks(milter: Arc<Milter>) -> Callbacks<Connection> {
    Callbacks::new()
        .on_negotiate(|cx: &mut NegotiateContext<Connection>, _, _| {
            Box::pin(async move {
                cx.requested_actions = Actions::ADD_HEADER | Actions::CHANGE_HEADER;
                cx.requested_macros.insert(MacroStage::Connect, c"j".into());
                cx.requested_macros
                    .insert(MacroStage::Mail, c"{auth_authen}".into());
                Status::Continue
            })
        })
        .on_connect(move |cx, _hostname, socket| {
            let shared = milter.current();
            Box::pin(async move {
                let mta_name = cx.macros.get(c"j").map(lossy);
                let mut conn = Connection {
                    authserv_id: authserv_id(&shared.config, mta_name.as_deref()),
                    shared: Some(Arc::clone(&shared)),
                    ..Connection::default()
                };
                if let SocketInfo::Inet(addr) = socket {
                    conn.client_ip = Some(addr.ip());
                }
                shared.log(
                    LogLevel::Requests,
                    &format!("connect from {:?}", conn.client_ip),
                );
                cx.data = Some(conn);
                Status::Continue
            })
        })
        .on_helo(|cx, helo| {
            Box::pin(async move {
                if let Some(conn) = cx.data.as_mut() {
                    conn.helo = lossy(&helo);
                }
                Status::Continue
            })
        })
        .on_mail(|cx, args| {
            Box::pin(async move {
                let authenticated = cx
                    .macros
                    .get(c"{auth_authen}")
                    .is_some_and(|v| !v.is_empty());
                let Some(conn) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                let Some(shared) = conn.shared.clone() else {
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
                let config = &shared.config;
                let macro_value = |name: &str| -> Option<String> {
                    let name = CString::new(format!("{{{name}}}")).ok()?;
                    cx.macros.get(&name).map(lossy)
                };
                let session = SkipSession {
                    client_ip: conn.client_ip,
                    helo: &conn.helo,
                    sender: &conn.message.sender,
                    authenticated,
                    macro_value: &macro_value,
                };
                match skip(config, &shared.evaluator, &session).await {
                    Skip::Check => {}
                    Skip::Silent(why) => {
                        shared.log(LogLevel::Results, &format!("not checked: {why}"));
                        return Status::Continue;
                    }
                    Skip::Traced(reason) => {
                        shared.log(LogLevel::Actions, reason.comment());
                        if let Some(conn) = cx.data.as_mut() {
                            conn.message.skipped = Some(reason);
                        }
                        return Status::Continue;
                    }
                }
                let inputs = Inputs {
                    client_ip: conn.client_ip,
                    helo: &conn.helo,
                    sender: &conn.message.sender,
                };
                let decision = decide(config, &shared.evaluator, &inputs).await;
                for line in &decision.log {
                    shared.log(LogLevel::Results, line);
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
                let Some(conn) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                let Some(shared) = conn.shared.clone() else {
                    return Status::Continue;
                };
                let config = &shared.config;
                let message = std::mem::take(&mut conn.message);
                // Forged trace headers go first (postfix-opendmarc.md).
                for (name, index) in &message.forged {
                    shared.log(
                        LogLevel::Actions,
                        &format!("removing forged {name} header #{index}"),
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
                        &format!("prepend {name}: {}", value.replace("\n\t", " ")),
                    );
                    let _ = cx.actions.insert_header(0, *name, value.as_str()).await;
                }
                Status::Continue
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
}

/// Runs the milter on the configured socket until SIGTERM or SIGINT.
///
/// SIGHUP reloads the configuration from `source` (with the same
/// command-line `overrides`): new connections use it; a file that does not
/// load keeps the old configuration, and the log says why.
pub async fn run(config: Arc<Config>, source: Source, overrides: Overrides) -> Result<(), String> {
    let milter = Arc::new(Milter::new(Shared::new(Arc::clone(&config))?));
    let shared = milter.current();
    for unsupported in unsupported_settings(&config) {
        shared.log(
            LogLevel::Errors,
            &format!("{unsupported} is not supported by this version yet: ignored"),
        );
    }
    tokio::spawn(reload_on_hangup(Arc::clone(&milter), source, overrides));
    let milter_config = indymilter::Config {
        max_connections: usize::try_from(config.milter.max_connections).unwrap_or(usize::MAX),
        ..Default::default()
    };
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    let callbacks = callbacks(Arc::clone(&milter));
    match &config.milter.socket {
        SocketSpec::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            shared.log(
                LogLevel::Errors,
                &format!("listening on {}", config.milter.socket),
            );
            indymilter::run(listener, callbacks, milter_config, shutdown)
                .await
                .map_err(|e| e.to_string())
        }
        SocketSpec::TcpName { name, port, family } => {
            let addr = tokio::net::lookup_host((name.as_str(), *port))
                .await
                .map_err(|e| format!("cannot resolve {name}: {e}"))?
                .find(|a| match family {
                    Family::Inet => a.is_ipv4(),
                    Family::Inet6 => a.is_ipv6(),
                })
                .ok_or_else(|| format!("{name} has no address of the socket's family"))?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} ({name}): {e}"))?;
            shared.log(
                LogLevel::Errors,
                &format!("listening on {addr} ({})", config.milter.socket),
            );
            indymilter::run(listener, callbacks, milter_config, shutdown)
                .await
                .map_err(|e| e.to_string())
        }
        SocketSpec::Unix(path) => {
            remove_stale_socket(path)?;
            let listener = tokio::net::UnixListener::bind(path)
                .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
            if let Some(mode) = config.milter.socket_mode {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode.0))
                    .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
            }
            shared.log(
                LogLevel::Errors,
                &format!("listening on {}", config.milter.socket),
            );
            let served = indymilter::run(listener, callbacks, milter_config, shutdown).await;
            // The socket file goes with the milter.
            let _ = std::fs::remove_file(path);
            served.map_err(|e| e.to_string())
        }
    }
}

/// Process settings the configuration accepts but this daemon does not
/// apply yet; said at start rather than ignored silently.
fn unsupported_settings(config: &Config) -> Vec<&'static str> {
    let m = &config.milter;
    [
        (m.pid_file.is_some(), "PidFile (pid_file)"),
        (m.user.is_some(), "UserID (user)"),
        (m.umask.is_some(), "UMask (umask)"),
        (m.socket_owner.is_some(), "socket_owner"),
        (m.socket_group.is_some(), "socket_group"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect()
}

/// Waits for SIGHUP and reloads, forever.
async fn reload_on_hangup(milter: Arc<Milter>, source: Source, overrides: Overrides) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        milter.current().log(
            LogLevel::Errors,
            "cannot catch SIGHUP: reloading is disabled",
        );
        return;
    };
    while hangup.recv().await.is_some() {
        let old = milter.current();
        match Config::load(&source) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    old.log(LogLevel::Errors, &warning.to_string());
                }
                let config = loaded.config.with_overrides(&overrides);
                if config.milter.socket != old.config.milter.socket {
                    old.log(
                        LogLevel::Errors,
                        &format!(
                            "reload: the socket changed to {}; it takes effect at the next start",
                            config.milter.socket
                        ),
                    );
                }
                match Shared::new(Arc::new(config)) {
                    Ok(shared) => {
                        milter.replace(shared);
                        milter
                            .current()
                            .log(LogLevel::Errors, "configuration reloaded");
                    }
                    Err(e) => old.log(
                        LogLevel::Errors,
                        &format!("reload failed, keeping the old configuration: {e}"),
                    ),
                }
            }
            Err(e) => {
                for diagnostic in &e.diagnostics {
                    old.log(LogLevel::Errors, &diagnostic.to_string());
                }
                old.log(
                    LogLevel::Errors,
                    "configuration refused, keeping the old configuration",
                );
            }
        }
    }
}

/// A socket file left by a milter that did not exit cleanly would make the
/// bind fail: remove it, but never anything that is not a socket.
fn remove_stale_socket(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display())),
        Ok(_) => Err(format!(
            "{} exists and is not a socket: not removing it",
            path.display()
        )),
        Err(_) => Ok(()),
    }
}
