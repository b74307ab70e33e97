//! The daemon around the callbacks: the listening socket, the process
//! settings (umask, socket owner and group, pid file, user switch), systemd
//! notification, and the signals (SIGHUP reload, SIGTERM/SIGINT stop).
//!
//! Start order: umask → resolver and configuration → bind (as root, so a
//! socket in a root-owned directory works) → socket mode, owner, group →
//! pid file → switch user → `READY=1` to systemd → serve.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::unistd::{Gid, Group, Uid, User};

use super::io::{AcceptHooks, ConnectionLimit, Gate, TcpMilterListener, UnixMilterListener};
use super::{Milter, Shared, callbacks};
use crate::config::{
    Config, Family, LogLevel, MilterConfig, Overrides, SocketSpec, Source, UserSpec,
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
    tokio::spawn(reload_on_hangup(
        Arc::clone(&milter),
        limit,
        source,
        overrides,
    ));
    let milter_config = indymilter::Config {
        // The listener keeps the limit (it refuses, where indymilter would
        // stop accepting); indymilter's own must never bind. Its semaphore
        // takes at most usize::MAX >> 3 permits.
        max_connections: usize::MAX >> 4,
        ..Default::default()
    };
    let callbacks = callbacks(Arc::clone(&milter));
    notify_systemd(&shared, &[sd_notify::NotifyState::Ready]);
    let served = match listener {
        Bound::Tcp(listener, _) => {
            indymilter::run(listener, callbacks, milter_config, shutdown_signal()).await
        }
        Bound::Unix(listener, _) => {
            indymilter::run(listener, callbacks, milter_config, shutdown_signal()).await
        }
    };
    notify_systemd(&shared, &[sd_notify::NotifyState::Stopping]);
    shared.log(LogLevel::Errors, "stopping");
    socket_file.remove(&shared);
    if let Some(pid_file) = pid_file {
        pid_file.remove(&shared);
    }
    served.map_err(|e| e.to_string())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
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
/// reference refuses to start over a stale one, spec §5); one naming a
/// running spfmilter stops the start.
#[derive(Debug)]
struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    fn create(path: &Path) -> Result<PidFile, String> {
        let pid = std::process::id();
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(other) = text.trim().parse::<u32>()
            && other != pid
            && is_spfmilter(other)
        {
            return Err(format!(
                "{}: spfmilter is already running with pid {other}",
                path.display()
            ));
        }
        std::fs::write(path, format!("{pid}\n"))
            .map_err(|e| format!("cannot write the pid file {}: {e}", path.display()))?;
        Ok(PidFile {
            path: path.to_owned(),
            pid,
        })
    }

    /// Removes the file if it is still ours.
    fn remove(self, shared: &Shared) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim().parse::<u32>() == Ok(self.pid));
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

/// Waits for SIGHUP and reloads, forever.
async fn reload_on_hangup(
    milter: Arc<Milter>,
    limit: Arc<ConnectionLimit>,
    source: Source,
    overrides: Overrides,
) {
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
        let reloading = sd_notify::NotifyState::monotonic_usec_now().ok();
        let mut states = vec![sd_notify::NotifyState::Reloading];
        states.extend(reloading);
        notify_systemd(&old, &states);
        reload(&milter, &limit, &old, &source, &overrides);
        notify_systemd(&milter.current(), &[sd_notify::NotifyState::Ready]);
    }
}

fn reload(
    milter: &Milter,
    limit: &ConnectionLimit,
    old: &Shared,
    source: &Source,
    overrides: &Overrides,
) {
    let loaded = match Config::load(source) {
        Ok(loaded) => loaded,
        Err(e) => {
            for diagnostic in &e.diagnostics {
                old.log(LogLevel::Errors, &diagnostic.to_string());
            }
            old.log(
                LogLevel::Errors,
                "configuration refused, keeping the old configuration",
            );
            return;
        }
    };
    for warning in &loaded.warnings {
        old.log(LogLevel::Errors, &warning.to_string());
    }
    let config = loaded.config.with_overrides(overrides);
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
    match Shared::new(Arc::new(config)) {
        Ok(shared) => {
            milter.replace(shared);
            // Connections open over a lowered limit stay; new ones are
            // refused until fewer are open.
            limit.set_max(max_connections);
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

    #[test]
    fn unknown_users_and_groups_are_named_in_the_error() {
        let e = resolve_user(&"no-such-user-xyz".parse().unwrap()).unwrap_err();
        assert!(e.contains("no user \"no-such-user-xyz\""), "{e}");
        let e = resolve_user(&"root:no-such-group-xyz".parse().unwrap()).unwrap_err();
        assert!(e.contains("no group \"no-such-group-xyz\""), "{e}");
    }
}
