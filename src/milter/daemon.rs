//! The daemon around the callbacks: the listening socket, the process
//! settings (umask, socket owner and group, pid file, user switch), systemd
//! notification, and the signals (SIGHUP reload, SIGTERM/SIGINT stop).
//!
//! Start order: umask → resolver and configuration → bind (as root, so a
//! socket in a root-owned directory works) → socket mode, owner, group →
//! pid file → switch user → `READY=1` to systemd → serve.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::{Gid, Group, Uid, User};

use super::io::{AcceptHooks, ConnectionLimit, Gate, TcpMilterListener, UnixMilterListener};
use super::{Milter, Shared, callbacks};
use crate::config::{
    Config, Family, LogLevel, MilterConfig, Overrides, SocketSpec, Source, UserSpec, check_regular,
    read_limited,
};

/// Runs the milter on the configured socket until SIGTERM or SIGINT.
///
/// SIGHUP reloads the configuration from `source` (with the same
/// command-line `overrides`): new connections use it; a file that does not
/// load keeps the old configuration, and the log says why.
pub async fn run(config: Arc<Config>, source: Source, overrides: Overrides) -> Result<(), String> {
    let settings = &config.milter;
    if let Some(mask) = settings.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask.0));
    }
    let mut stop_signals = StopSignals::catch();
    // SIGHUP is caught from here on too, before the socket exists: a
    // client that can connect may send it at once (a reload after a
    // package upgrade), and its default action would end the process.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let milter = Milter::new(Shared::new(Arc::clone(&config))?);
    let shared = milter.current();
    // Sessions that die of a protocol or I/O error: one line each
    // (rate-limited), through the configuration in use.
    let logging = Arc::downgrade(&milter);
    super::session_log::install(Box::new(move |line: &str| {
        if let Some(milter) = logging.upgrade() {
            milter.current().log(LogLevel::Errors, line);
        }
    }));
    raise_file_limit(&shared);
    let limit = ConnectionLimit::new(limit_of(settings));
    limit.set_idle_timeout(settings.idle_timeout);
    // Every connection from accept to close, whatever it sent.
    let open = Arc::clone(&limit);
    milter
        .metrics()
        .count_connections_with(Box::new(move || open.open()));
    let gate = {
        let logging = Arc::downgrade(&milter);
        let metrics = Arc::clone(milter.metrics());
        Gate::new(
            Arc::clone(&limit),
            AcceptHooks {
                log: Box::new(move |line: &str| {
                    if let Some(milter) = logging.upgrade() {
                        milter.current().log(LogLevel::Errors, line);
                    }
                }),
                refused: Box::new(move || metrics.connection_refused()),
            },
        )
    };
    let listener = bind(settings, gate).await?;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("metrics: cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    // From here on the socket file, if any, is ours to remove at exit.
    let socket_file = SocketFile(match &listener {
        Bound::Unix(_, path) => Some(path.clone()),
        Bound::Tcp(..) => None,
    });
    if let Some(path) = &socket_file.0 {
        socket_permissions(settings, path)?;
    }
    let switch = match &settings.user {
        Some(spec) => Some((spec, resolve_user(spec)?)),
        None => None,
    };
    let pid_file = match &settings.pid_file {
        Some(path) => Some(PidFile::create(path)?),
        None => None,
    };
    if let Some((spec, (user, gid))) = switch {
        // The pid file stays the milter's to check and remove at exit.
        if let Some(pid_file) = &pid_file {
            std::os::unix::fs::chown(&pid_file.path, Some(user.uid.as_raw()), Some(gid.as_raw()))
                .map_err(|e| format!("cannot give {} to {spec}: {e}", pid_file.path.display()))?;
        }
        switch_user(spec, &user, gid)?;
        shared.log(LogLevel::Actions, &format!("running as {spec}"));
    }
    shared.log(
        LogLevel::Errors,
        &format!("listening on {}", listener.describe()),
    );
    if let Some(metrics_listener) = metrics_listener {
        let addr = metrics_listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        shared.log(
            LogLevel::Errors,
            &format!("metrics on http://{addr}/metrics"),
        );
        tokio::spawn(crate::metrics::serve(
            metrics_listener,
            Arc::clone(milter.metrics()),
        ));
    }
    match hangup {
        Ok(hangup) => {
            tokio::spawn(reload_on_hangup(
                hangup,
                Arc::clone(&milter),
                limit,
                source,
                overrides,
            ));
        }
        Err(e) => shared.log(
            LogLevel::Errors,
            &format!("cannot catch SIGHUP ({e}): reloading is disabled"),
        ),
    }
    let milter_config = indymilter::Config {
        // The listener keeps the limit (it refuses, where indymilter would
        // stop accepting); indymilter's own must never bind. Its semaphore
        // takes at most usize::MAX >> 3 permits.
        max_connections: usize::MAX >> 4,
        ..Default::default()
    };
    let callbacks = callbacks(Arc::clone(&milter));
    notify_systemd(&shared, &[sd_notify::NotifyState::Ready]);
    let listener = match listener {
        Bound::Tcp(listener, _) => indymilter::EitherListener::Tcp(listener),
        Bound::Unix(listener, _) => indymilter::EitherListener::Unix(listener),
    };
    // Set at SIGTERM/SIGINT: indymilter stops accepting and ends each
    // session once its current command is answered.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let served = indymilter::run(listener, callbacks, milter_config, async move {
        let mut stopped = stopped;
        // The sender lives until this function returns.
        let _ = stopped.wait_for(|&stop| stop).await;
    });
    tokio::pin!(served);
    let served = tokio::select! {
        // The listener failed (indymilter gives up on it).
        served = &mut served => {
            notify_systemd(&shared, &[sd_notify::NotifyState::Stopping]);
            shared.log(LogLevel::Errors, "stopping");
            served.map_err(|e| e.to_string())
        }
        () = stop_signals.recv() => {
            notify_systemd(&shared, &[sd_notify::NotifyState::Stopping]);
            shared.log(LogLevel::Errors, "stopping");
            let _ = stop.send(true);
            stop_sessions(&milter, &shared, served).await
        }
    };
    socket_file.remove(&shared);
    if let Some(pid_file) = pid_file {
        pid_file.remove(&shared);
    }
    served
}

/// After SIGTERM/SIGINT, how long the commands being processed (a MAIL
/// FROM waiting for DNS, say) have to finish with their real answer.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// After [`STOP_GRACE`], how long the sessions have to end once their
/// checks are interrupted, before the daemon exits anyway.
pub const STOP_CLOSE: Duration = Duration::from_secs(2);

/// Lets the sessions end after a stop signal (indymilter ends each once
/// its current command is answered), within a few seconds whatever they
/// are doing: after [`STOP_GRACE`], SPF checks still running are answered
/// with a temporary failure ([`Milter::interrupt`]); after [`STOP_CLOSE`]
/// more, the connections still open are closed as the process exits
/// (Postfix then applies `milter_default_action`).
async fn stop_sessions(
    milter: &Milter,
    shared: &Shared,
    mut served: std::pin::Pin<&mut impl Future<Output = std::io::Result<()>>>,
) -> Result<(), String> {
    if let Ok(served) = tokio::time::timeout(STOP_GRACE, served.as_mut()).await {
        return served.map_err(|e| e.to_string());
    }
    shared.log(
        LogLevel::Errors,
        &format!(
            "stopping: sessions still busy after {} s; answering SPF checks in progress \
             with a temporary failure",
            STOP_GRACE.as_secs()
        ),
    );
    milter.interrupt();
    if let Ok(served) = tokio::time::timeout(STOP_CLOSE, served.as_mut()).await {
        return served.map_err(|e| e.to_string());
    }
    shared.log(
        LogLevel::Errors,
        &format!(
            "stopping: closing the connections still open after {} s",
            (STOP_GRACE + STOP_CLOSE).as_secs()
        ),
    );
    Ok(())
}

/// SIGTERM and SIGINT, caught from the moment this is made (so before
/// systemd hears that the milter is ready: a stop that follows at once
/// is a stop, not a kill by the default action).
struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn catch() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Completes at the first SIGTERM or SIGINT.
    async fn recv(&mut self) {
        async fn one(signal: Option<&mut tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = one(self.term.as_mut()) => {}
            () = one(self.int.as_mut()) => {}
        }
    }
}

/// Tells systemd (when it started us with `Type=notify`: `NOTIFY_SOCKET`
/// is set) about readiness, reloads and the stop; a no-op otherwise.
fn notify_systemd(shared: &Shared, states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(states)
    {
        shared.log(
            LogLevel::Errors,
            &format!("cannot notify systemd (NOTIFY_SOCKET): {e}"),
        );
    }
}

/// The listening socket.
enum Bound {
    /// With what the configuration said, for the log.
    Tcp(TcpMilterListener, String),
    Unix(UnixMilterListener, PathBuf),
}

impl Bound {
    fn describe(&self) -> String {
        match self {
            Bound::Tcp(_, said) => said.clone(),
            Bound::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }
}

/// `max_connections` as the listener counts.
fn limit_of(settings: &MilterConfig) -> usize {
    usize::try_from(settings.max_connections).unwrap_or(usize::MAX)
}

/// Raises the soft limit of open files to the hard one: every connection
/// is a file descriptor, and systemd's default soft limit (1024) is the
/// default `max_connections`; its hard limit is far higher (524288).
fn raise_file_limit(shared: &Shared) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let raised = getrlimit(Resource::RLIMIT_NOFILE).and_then(|(soft, hard)| {
        if soft < hard {
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        }
        Ok((soft, hard))
    });
    match raised {
        Ok((soft, hard)) => shared.log(
            LogLevel::Internals,
            &format!("open files limit: {hard} (soft limit was {soft})"),
        ),
        Err(e) => shared.log(
            LogLevel::Internals,
            &format!("cannot raise the open files limit: {e}"),
        ),
    }
}

async fn bind(settings: &MilterConfig, gate: Gate) -> Result<Bound, String> {
    let spec = &settings.socket;
    match spec {
        SocketSpec::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            Ok(Bound::Tcp(
                TcpMilterListener::new(listener, gate),
                spec.to_string(),
            ))
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
            Ok(Bound::Tcp(
                TcpMilterListener::new(listener, gate),
                format!("{addr} ({spec})"),
            ))
        }
        SocketSpec::Unix(path) => {
            remove_stale_socket(path)?;
            let listener = tokio::net::UnixListener::bind(path)
                .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
            Ok(Bound::Unix(
                UnixMilterListener::new(listener, gate),
                path.clone(),
            ))
        }
    }
}

/// `socket_mode`, `socket_owner`, `socket_group` of a UNIX socket.
fn socket_permissions(settings: &MilterConfig, path: &Path) -> Result<(), String> {
    if let Some(mode) = settings.socket_mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode.0))
            .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    }
    let owner = match &settings.socket_owner {
        Some(name) => Some(user_named(name, "socket_owner")?.uid.as_raw()),
        None => None,
    };
    let group = match &settings.socket_group {
        Some(name) => Some(group_named(name, "socket_group")?.gid.as_raw()),
        None => None,
    };
    if owner.is_some() || group.is_some() {
        std::os::unix::fs::chown(path, owner, group).map_err(|e| {
            format!(
                "cannot give {} to {}:{}: {e}",
                path.display(),
                settings.socket_owner.as_deref().unwrap_or("-"),
                settings.socket_group.as_deref().unwrap_or("-"),
            )
        })?;
    }
    Ok(())
}

fn user_named(name: &str, option: &str) -> Result<User, String> {
    match User::from_name(name) {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(format!("{option}: there is no user {name:?}")),
        Err(e) => Err(format!("{option}: cannot look up the user {name:?}: {e}")),
    }
}

fn group_named(name: &str, option: &str) -> Result<Group, String> {
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group),
        Ok(None) => Err(format!("{option}: there is no group {name:?}")),
        Err(e) => Err(format!("{option}: cannot look up the group {name:?}: {e}")),
    }
}

/// The user and group of `UserID` / `milter.user` (the user's primary
/// group unless one is named).
fn resolve_user(spec: &UserSpec) -> Result<(User, Gid), String> {
    let user = user_named(&spec.user, "user")?;
    let gid: Gid = match &spec.group {
        Some(name) => group_named(name, "user")?.gid,
        None => user.gid,
    };
    Ok((user, gid))
}

/// Drops root for `user` and `gid`, with the user's supplementary groups.
/// Running as that user already is fine; anything else than root cannot
/// switch, and says so.
fn switch_user(spec: &UserSpec, user: &User, gid: Gid) -> Result<(), String> {
    if Uid::effective() == user.uid && Gid::effective() == gid {
        return Ok(());
    }
    if !Uid::effective().is_root() {
        return Err(format!(
            "user {spec}: only root can switch users (running as uid {})",
            Uid::effective()
        ));
    }
    let name = std::ffi::CString::new(user.name.as_str())
        .map_err(|_| format!("user {spec}: the name contains NUL"))?;
    // Supplementary groups first, while still root; then the group, then
    // the user (after setuid nothing else could be changed).
    nix::unistd::initgroups(&name, gid)
        .map_err(|e| format!("user {spec}: cannot set the supplementary groups: {e}"))?;
    nix::unistd::setgid(gid).map_err(|e| format!("user {spec}: cannot set group {gid}: {e}"))?;
    nix::unistd::setuid(user.uid)
        .map_err(|e| format!("user {spec}: cannot set user {}: {e}", user.uid))?;
    Ok(())
}

/// A socket file left by a milter that did not exit cleanly would make the
/// bind fail: remove it, but never anything that is not a socket.
fn remove_stale_socket(path: &Path) -> Result<(), String> {
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

/// The UNIX socket file, removed at exit.
struct SocketFile(Option<PathBuf>);

impl SocketFile {
    fn remove(self, shared: &Shared) {
        if let Some(path) = self.0
            && let Err(e) = std::fs::remove_file(&path)
        {
            shared.log(
                LogLevel::Errors,
                &format!("cannot remove the socket {}: {e}", path.display()),
            );
        }
    }
}

/// `PidFile`: written at start, removed at exit. A pid file naming a
/// process that is not a running spfmilter is stale and replaced (the
/// reference refuses to start over a stale one, docs/policyd-spf-compatibility.md §5); one naming a
/// running spfmilter stops the start.
#[derive(Debug)]
struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    fn create(path: &Path) -> Result<PidFile, String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let pid = std::process::id();
        if let Ok(text) = read_limited(path)
            && let Ok(other) = text.trim().parse::<u32>()
            && other != pid
            && is_spfmilter(other)
        {
            return Err(format!(
                "{}: spfmilter is already running with pid {other}",
                path.display()
            ));
        }
        // Like every file a setting names, only ever a regular file: a
        // FIFO there would block the open or the write (config::open_regular).
        let cannot = |e: &dyn std::fmt::Display| format!("cannot write the pid file {e}");
        // Checked before the open too, for a clear message: without a
        // reader, opening a FIFO fails with ENXIO.
        if std::fs::metadata(path).is_ok_and(|meta| !meta.is_file()) {
            return Err(cannot(&format_args!(
                "{}: not a regular file",
                path.display()
            )));
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(path)
            .map_err(|e| cannot(&format_args!("{}: {e}", path.display())))?;
        check_regular(&file, path).map_err(|e| cannot(&e))?;
        file.set_len(0)
            .and_then(|()| file.write_all(format!("{pid}\n").as_bytes()))
            .map_err(|e| cannot(&format_args!("{}: {e}", path.display())))?;
        Ok(PidFile {
            path: path.to_owned(),
            pid,
        })
    }

    /// Removes the file if it is still ours.
    fn remove(self, shared: &Shared) {
        let ours =
            read_limited(&self.path).is_ok_and(|text| text.trim().parse::<u32>() == Ok(self.pid));
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            shared.log(
                LogLevel::Errors,
                &format!("cannot remove the pid file {}: {e}", self.path.display()),
            );
        }
    }
}

/// Whether `pid` is a running process named spfmilter.
fn is_spfmilter(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim() == "spfmilter")
}

/// How long a reload may take to read and check the configuration (and
/// build its resolver) before it is given up and the old configuration
/// kept. Reading is done off the runtime's workers, so sessions are
/// served meanwhile whatever it takes; the limit is for the log and for
/// systemd, which waits for the end of a reload.
const RELOAD_TIME_LIMIT: Duration = Duration::from_secs(10);

/// Waits for SIGHUP and reloads, forever. Signals that come during a
/// reload are merged into one more reload after it (the signal stream
/// keeps one pending notification, not a count).
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    milter: Arc<Milter>,
    limit: Arc<ConnectionLimit>,
    source: Source,
    overrides: Overrides,
) {
    let loader = Loader::default();
    while hangup.recv().await.is_some() {
        let old = milter.current();
        let reloading = sd_notify::NotifyState::monotonic_usec_now().ok();
        let mut states = vec![sd_notify::NotifyState::Reloading];
        states.extend(reloading);
        notify_systemd(&old, &states);
        reload(&milter, &limit, &old, &loader, &source, &overrides).await;
        notify_systemd(&milter.current(), &[sd_notify::NotifyState::Ready]);
    }
}

/// The file a reload reads, for the log.
fn source_name(source: &Source) -> String {
    match source {
        Source::Toml(path) | Source::Legacy(path) => path.display().to_string(),
        Source::Default => crate::config::DEFAULT_CONFIG_PATH.to_owned(),
    }
}

/// Why work given to a [`Loader`] brought nothing back.
#[derive(Debug, PartialEq, Eq)]
enum Unfinished {
    /// It ran out of time; it may still be running, and its result will
    /// be dropped.
    TimedOut,
    /// The previous work, given up on, still runs: nothing new is started,
    /// so that a stuck file cannot pile up threads.
    Busy,
    /// The thread could not be started, or ended without a result (a
    /// panic).
    Failed(String),
}

/// Runs blocking work (reading files) on a thread of its own, never on
/// the runtime's workers, one piece of work at a time, within a time
/// limit: the listener, the sessions and the signal handling go on
/// whatever the work does.
#[derive(Debug, Default)]
struct Loader {
    /// Set while a thread runs (cleared by the thread when it ends, even
    /// long after its caller gave up on it).
    busy: Arc<std::sync::atomic::AtomicBool>,
}

impl Loader {
    async fn run<T: Send + 'static>(
        &self,
        limit: Duration,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Unfinished> {
        use std::sync::atomic::Ordering;
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(Unfinished::Busy);
        }
        /// Clears `busy` when the thread ends, however it ends.
        struct Done(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let done = Done(Arc::clone(&self.busy));
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new()
            .name("spfmilter-reload".to_owned())
            .spawn(move || {
                // Work that builds a resolver may need the runtime's
                // context (not its workers).
                let entered = runtime.enter();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
                drop(entered);
                // Not busy any more before the caller hears of the end.
                drop(done);
                if let Ok(result) = result {
                    // The receiver is gone if the caller gave up: nothing
                    // to do then.
                    let _ = sender.send(result);
                }
            });
        if let Err(e) = spawned {
            // The closure, and `done` with it, were dropped: not busy.
            return Err(Unfinished::Failed(format!("cannot start a thread: {e}")));
        }
        match tokio::time::timeout(limit, receiver).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(Unfinished::Failed(
                "internal error: the reading thread panicked".to_owned(),
            )),
            Err(_) => Err(Unfinished::TimedOut),
        }
    }
}

/// What the reload thread brings back: the new configuration and what
/// serves it, or the lines that say why not.
type Reloaded = Result<(Config, Vec<String>, Result<Shared, String>), Vec<String>>;

/// Reads and checks the configuration (off the runtime's workers, within
/// [`RELOAD_TIME_LIMIT`]), then puts it in place for new connections; on
/// any failure keeps the old one and logs why.
async fn reload(
    milter: &Milter,
    limit: &ConnectionLimit,
    old: &Shared,
    loader: &Loader,
    source: &Source,
    overrides: &Overrides,
) {
    let name = source_name(source);
    let (source, overrides) = (source.clone(), overrides.clone());
    let loaded = loader.run(RELOAD_TIME_LIMIT, move || -> Reloaded {
        let loaded = Config::load(&source).map_err(|e| {
            e.diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        })?;
        let warnings = loaded.warnings.iter().map(ToString::to_string).collect();
        let config = loaded.config.with_overrides(&overrides);
        let shared = Shared::new(Arc::new(config.clone()));
        Ok((config, warnings, shared))
    });
    let (config, shared) = match loaded.await {
        Ok(Ok((config, warnings, shared))) => {
            for warning in &warnings {
                old.log(LogLevel::Errors, warning);
            }
            (config, shared)
        }
        Ok(Err(diagnostics)) => {
            for diagnostic in &diagnostics {
                old.log(LogLevel::Errors, diagnostic);
            }
            old.log(
                LogLevel::Errors,
                "configuration refused, keeping the old configuration",
            );
            return;
        }
        Err(unfinished) => {
            let why = match unfinished {
                Unfinished::TimedOut => format!(
                    "reading {name} took longer than {} s",
                    RELOAD_TIME_LIMIT.as_secs()
                ),
                Unfinished::Busy => format!(
                    "an earlier reload is still reading {name} (given up after {} s)",
                    RELOAD_TIME_LIMIT.as_secs()
                ),
                Unfinished::Failed(e) => e,
            };
            old.log(
                LogLevel::Errors,
                &format!("reload failed, keeping the old configuration: {why}"),
            );
            return;
        }
    };
    let old_settings = &old.config.milter;
    let process_settings = [
        (config.milter.socket != old_settings.socket, "the socket"),
        (
            config.milter.socket_mode != old_settings.socket_mode,
            "socket_mode",
        ),
        (
            config.milter.socket_owner != old_settings.socket_owner,
            "socket_owner",
        ),
        (
            config.milter.socket_group != old_settings.socket_group,
            "socket_group",
        ),
        (
            config.milter.pid_file != old_settings.pid_file,
            "the pid file",
        ),
        (config.milter.user != old_settings.user, "the user"),
        (config.milter.umask != old_settings.umask, "the umask"),
    ];
    for (_, what) in process_settings.iter().filter(|(changed, _)| *changed) {
        old.log(
            LogLevel::Errors,
            &format!("reload: {what} changed; it takes effect at the next start"),
        );
    }
    let max_connections = limit_of(&config.milter);
    let idle_timeout = config.milter.idle_timeout;
    match shared {
        Ok(shared) => {
            milter.replace(shared);
            // Connections open over a lowered limit stay; new ones are
            // refused until fewer are open.
            limit.set_max(max_connections);
            // Applies to the next wait of every connection, open or new.
            limit.set_idle_timeout(idle_timeout);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spfmilter-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_stale_pid_file_is_replaced_and_removed_at_exit() {
        let dir = temp_dir("pidfile-stale");
        let path = dir.join("spfmilter.pid");
        // pid 1 is init (never called spfmilter); a huge pid does not exist.
        for stale in ["1\n", "4194999\n", "garbage"] {
            std::fs::write(&path, stale).unwrap();
            let pid_file = PidFile::create(&path).expect("a stale pid file is replaced");
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                format!("{}\n", std::process::id())
            );
            let shared = Shared::for_tests();
            pid_file.remove(&shared);
            assert!(!path.exists(), "the pid file is removed at exit");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pid_file_rewritten_by_someone_else_is_left_alone() {
        let dir = temp_dir("pidfile-other");
        let path = dir.join("spfmilter.pid");
        let pid_file = PidFile::create(&path).unwrap();
        std::fs::write(&path, "12345\n").unwrap();
        pid_file.remove(&Shared::for_tests());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "12345\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn loader_work_runs_off_the_workers_within_a_time_limit_one_at_a_time() {
        let loader = Loader::default();
        // A result within the limit.
        assert_eq!(
            loader.run(Duration::from_secs(5), || 42).await,
            Ok(42),
            "a quick result"
        );
        // Stuck work (a current-thread runtime: were it run on the
        // runtime's thread, the timer could never fire): given up on.
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let result = loader
            .run(Duration::from_millis(200), move || stuck.recv().is_ok())
            .await;
        assert_eq!(result, Err(Unfinished::TimedOut));
        assert!(started.elapsed() < Duration::from_secs(5));
        // While it is stuck, nothing else starts.
        assert_eq!(
            loader.run(Duration::from_secs(5), || 1).await,
            Err(Unfinished::Busy)
        );
        // Once it ends, work runs again.
        release.send(()).unwrap();
        let started = std::time::Instant::now();
        loop {
            match loader.run(Duration::from_secs(5), || 2).await {
                Ok(n) => break assert_eq!(n, 2),
                Err(Unfinished::Busy) => {
                    assert!(started.elapsed() < Duration::from_secs(5), "still busy");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        // Work that panics: a failure, not a hang, and not busy after.
        let result = loader
            .run(Duration::from_secs(5), || -> u8 { panic!("boom") })
            .await;
        assert!(matches!(result, Err(Unfinished::Failed(_))), "{result:?}");
        assert_eq!(loader.run(Duration::from_secs(5), || 3).await, Ok(3));
    }

    #[test]
    fn unknown_users_and_groups_are_named_in_the_error() {
        let e = resolve_user(&"no-such-user-xyz".parse().unwrap()).unwrap_err();
        assert!(e.contains("no user \"no-such-user-xyz\""), "{e}");
        let e = resolve_user(&"root:no-such-group-xyz".parse().unwrap()).unwrap_err();
        assert!(e.contains("no group \"no-such-group-xyz\""), "{e}");
    }
}
