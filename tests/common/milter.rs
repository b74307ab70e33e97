//! The MTA side of milter tests against the real daemon: starts the built
//! `spfmilter` binary on a TCP port or a UNIX socket, with a configuration
//! file in a private temporary directory and DNS from a given server, and
//! speaks the milter protocol to it with `indymilter-test` (Postfix's part
//! of the conversation).
//!
//! What Postfix does that the helpers copy (Postfix `MILTER_README`,
//! `smtpd(8)`): the `j` macro at connect, `{auth_authen}` at MAIL FROM
//! when the client authenticated, an abort after a rejected transaction
//! (RSET), and only the steps the milter negotiated (no DATA, EOH or body
//! for a milter that did not ask for them).
//!
//! [`apply`] replays the milter's end-of-message edits on the header list
//! as Postfix's cleanup server does (`cleanup_milter.c`): an insert at
//! index 0 goes on top; a change or delete names the N-th header of that
//! name among the headers present at that moment (a deleted header is
//! replaced by a skip pointer, so it no longer counts).

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use indymilter_test::{EomAction, MacroStage, ProtoOpts, Status, TestConnection, TestError};

/// How the MTA reaches the milter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Unix,
}

/// A configuration file, written as given.
#[derive(Debug, Clone)]
pub enum ConfigFile {
    /// spfmilter.toml, given with `--config`.
    Toml(String),
    /// A policyd-spf.conf, given with `--policyd-conf`.
    Policyd(String),
}

/// Where the daemon listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Endpoint {
    /// Opens a milter connection (negotiation done), or says why not.
    pub async fn try_open(&self) -> Result<TestConnection, TestError> {
        let builder = TestConnection::configure()
            .read_timeout(Duration::from_secs(20))
            .write_timeout(Duration::from_secs(20));
        match self {
            Endpoint::Tcp(addr) => builder.open_tcp(*addr).await,
            Endpoint::Unix(path) => builder.open_unix(path).await,
        }
    }
}

/// A running `spfmilter run`; stopped with SIGTERM when dropped.
pub struct Daemon {
    child: Child,
    endpoint: Endpoint,
    dir: PathBuf,
    config_path: PathBuf,
    stderr: Arc<Mutex<String>>,
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

fn private_dir() -> PathBuf {
    let n = DIRS.fetch_add(1, Ordering::SeqCst);
    let dir =
        std::env::temp_dir().join(format!("spfmilter-milter-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test directory");
    dir
}

/// A TCP port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

impl Daemon {
    /// Starts the daemon and waits until it accepts connections.
    pub fn start(transport: Transport, config: &ConfigFile, nameserver: SocketAddr) -> Daemon {
        Daemon::start_with_open_files(transport, config, nameserver, None)
    }

    /// [`Daemon::start`], with `RLIMIT_NOFILE` (soft and hard: the daemon
    /// raises its soft limit to the hard one) set to `open_files` if given.
    pub fn start_with_open_files(
        transport: Transport,
        config: &ConfigFile,
        nameserver: SocketAddr,
        open_files: Option<u64>,
    ) -> Daemon {
        let dir = private_dir();
        let (config_path, flag) = match config {
            ConfigFile::Toml(_) => (dir.join("spfmilter.toml"), "--config"),
            ConfigFile::Policyd(_) => (dir.join("policyd-spf.conf"), "--policyd-conf"),
        };
        let text = match config {
            ConfigFile::Toml(t) | ConfigFile::Policyd(t) => t,
        };
        std::fs::write(&config_path, text).expect("write the configuration");
        // Another process may take the port between our probe and the
        // daemon's bind: then the daemon exits and we try another port.
        let mut last_error = String::new();
        for _ in 0..5 {
            let endpoint = match transport {
                Transport::Tcp => {
                    Endpoint::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())))
                }
                Transport::Unix => Endpoint::Unix(dir.join("milter.sock")),
            };
            let socket = match &endpoint {
                Endpoint::Tcp(addr) => format!("inet:{addr}"),
                Endpoint::Unix(path) => format!("unix:{}", path.display()),
            };
            let mut command = Command::new(env!("CARGO_BIN_EXE_spfmilter"));
            if let Some(limit) = open_files {
                use std::os::unix::process::CommandExt;
                // SAFETY: between fork and exec, only setrlimit(2), which
                // is async-signal-safe, and no allocation.
                unsafe {
                    command.pre_exec(move || {
                        nix::sys::resource::setrlimit(
                            nix::sys::resource::Resource::RLIMIT_NOFILE,
                            limit,
                            limit,
                        )
                        .map_err(std::io::Error::from)
                    });
                }
            }
            let mut child = command
                .arg("run")
                .arg(flag)
                .arg(&config_path)
                .args(["--socket", &socket])
                .args(["--nameserver", &nameserver.to_string()])
                .args(["--log-target", "stderr"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start spfmilter");
            let stderr = collect_stderr(&mut child);
            let start = Instant::now();
            loop {
                let up = match &endpoint {
                    Endpoint::Tcp(addr) => std::net::TcpStream::connect(addr).is_ok(),
                    Endpoint::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
                };
                if up {
                    return Daemon {
                        child,
                        endpoint,
                        dir,
                        config_path,
                        stderr,
                    };
                }
                if child.try_wait().expect("wait for spfmilter").is_some() {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "spfmilter did not listen within 15 s: {}",
                    stderr.lock().unwrap()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            last_error = stderr.lock().unwrap().clone();
            assert!(
                transport == Transport::Tcp,
                "spfmilter exited at start: {last_error}"
            );
        }
        panic!("spfmilter did not start on a free TCP port in 5 tries: {last_error}");
    }

    /// Opens a milter connection (negotiation done).
    pub async fn open(&self) -> TestConnection {
        self.endpoint
            .try_open()
            .await
            .expect("open a milter connection")
    }

    /// Where the daemon listens.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    /// A plain connection to the milter socket, for bytes of any kind.
    pub fn connect_raw(&self) -> RawStream {
        match &self.endpoint {
            Endpoint::Tcp(addr) => {
                RawStream::Tcp(std::net::TcpStream::connect(addr).expect("connect over TCP"))
            }
            Endpoint::Unix(path) => RawStream::Unix(
                std::os::unix::net::UnixStream::connect(path).expect("connect to the socket"),
            ),
        }
    }

    /// Sends SIGTERM and waits (at most 10 s) for the process to end:
    /// its exit status and how long it took after the signal.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for spfmilter") {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "spfmilter still runs 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The daemon's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration file given to the daemon.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Rewrites the configuration file (for a reload).
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("rewrite the configuration");
    }

    /// Sends SIGHUP.
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// What the daemon wrote to standard error so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (at most 10 s) until the daemon's standard error has `text`,
    /// and returns all of it.
    pub async fn wait_for_log(&self, text: &str) -> String {
        let start = Instant::now();
        loop {
            let log = self.stderr();
            if log.contains(text) {
                return log;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{text:?} not logged: {log}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        }
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain stream to the milter socket (see [`Daemon::connect_raw`]).
pub enum RawStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl RawStream {
    pub fn set_read_timeout(&self, timeout: Option<Duration>) {
        match self {
            RawStream::Tcp(s) => s.set_read_timeout(timeout),
            RawStream::Unix(s) => s.set_read_timeout(timeout),
        }
        .expect("set a read timeout");
    }
}

impl std::io::Read for RawStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.read(buf),
            RawStream::Unix(s) => s.read(buf),
        }
    }
}

impl std::io::Write for RawStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.write(buf),
            RawStream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Collects a child's standard error as it comes.
pub fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    use std::io::Read;
    let text = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().expect("piped stderr");
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Postfix's SMFIC_OPTNEG (version 6, all actions, all protocol steps)
/// on a plain stream, but without the options to leave steps unanswered
/// (`SMFIP_NR_*`, as an older MTA): every step is answered, a point the
/// raw tests wait for. Returns the actions the milter asks for.
pub fn handshake(stream: &mut (impl std::io::Read + std::io::Write)) -> std::io::Result<u32> {
    use milter_codec as m;
    let no_reply = m::P_NR_HDR
        | m::P_NR_CONN
        | m::P_NR_HELO
        | m::P_NR_MAIL
        | m::P_NR_RCPT
        | m::P_NR_DATA
        | m::P_NR_UNKN
        | m::P_NR_EOH
        | m::P_NR_BODY;
    let mut offer = Vec::with_capacity(12);
    offer.extend_from_slice(&m::VERSION.to_be_bytes());
    offer.extend_from_slice(&m::POSTFIX_ACTIONS.to_be_bytes());
    offer.extend_from_slice(&(m::POSTFIX_PROTOCOL & !no_reply).to_be_bytes());
    stream.write_all(&m::packet(m::C_OPTNEG, &offer))?;
    let (command, body) = milter_codec::read_packet(stream)?;
    assert_eq!(command, b'O', "an SMFIC_OPTNEG reply");
    assert!(body.len() >= 12, "a short OPTNEG reply: {body:?}");
    assert_eq!(u32::from_be_bytes(body[..4].try_into().unwrap()), 6);
    Ok(u32::from_be_bytes(body[4..8].try_into().unwrap()))
}

/// What a step that goes on answers: nothing where the milter negotiated
/// no reply for it (`no_reply`, one of the `NOREPLY_*` options), Continue
/// otherwise.
pub fn go_on(negotiated: ProtoOpts, no_reply: ProtoOpts) -> Status {
    if negotiated.contains(no_reply) {
        Status::Noreply
    } else {
        Status::Continue
    }
}

/// Bytes for the milter protocol (no NUL inside).
pub fn cstring(bytes: impl Into<Vec<u8>>) -> CString {
    CString::new(bytes).expect("no NUL in test data")
}

/// The MTA's host name as Postfix sends it in the `j` macro.
pub const MTA_NAME: &str = "mx.example.net";

/// One SMTP session as the MTA reports it to the milter.
pub struct Client {
    pub conn: TestConnection,
}

/// What the milter answered at end of message.
#[derive(Debug, Clone)]
pub struct Eom {
    pub status: Status,
    pub actions: Vec<EomAction>,
    /// The message's headers as sent to the milter.
    pub original: Vec<(String, String)>,
}

impl Eom {
    /// The headers after the milter's edits, as Postfix applies them.
    pub fn result(&self) -> Vec<(String, String)> {
        apply(&self.original, &self.actions)
    }

    /// Inserted headers (index, name, unfolded value), in the order sent.
    pub fn inserted(&self) -> Vec<(i32, String, String)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                EomAction::InsertHeader { index, name, value } => Some((
                    *index,
                    name.to_string_lossy().into_owned(),
                    unfold(&value.to_string_lossy()),
                )),
                _ => None,
            })
            .collect()
    }

    /// Deleted headers (name, index), in the order sent.
    pub fn deleted(&self) -> Vec<(String, i32)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                EomAction::DeleteHeader { name, index } => {
                    Some((name.to_string_lossy().into_owned(), *index))
                }
                _ => None,
            })
            .collect()
    }
}

/// Folded header text back on one line: each line break with the
/// whitespace after it counts as one space (RFC 5322 §2.2.3).
pub fn unfold(value: &str) -> String {
    value
        .replace("\r\n", "\n")
        .replace("\n\t", " ")
        .replace("\n ", " ")
}

/// Replays end-of-message edits on `headers` (see the module doc).
pub fn apply(headers: &[(String, String)], actions: &[EomAction]) -> Vec<(String, String)> {
    let mut out = headers.to_vec();
    let nth = |out: &[(String, String)], name: &str, index: i32| {
        out.iter()
            .enumerate()
            .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
            .nth(usize::try_from(index).ok()?.checked_sub(1)?)
            .map(|(i, _)| i)
    };
    for action in actions {
        match action {
            EomAction::InsertHeader { index, name, value } => {
                let at = usize::try_from(*index).unwrap_or(0).min(out.len());
                out.insert(
                    at,
                    (
                        name.to_string_lossy().into_owned(),
                        value.to_string_lossy().into_owned(),
                    ),
                );
            }
            EomAction::AddHeader { name, value } => out.push((
                name.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )),
            EomAction::DeleteHeader { name, index } => {
                if let Some(i) = nth(&out, &name.to_string_lossy(), *index) {
                    out.remove(i);
                }
            }
            EomAction::ChangeHeader { name, index, value } => {
                let name = name.to_string_lossy().into_owned();
                let value = value.to_string_lossy().into_owned();
                match nth(&out, &name, *index) {
                    Some(i) => out[i].1 = value,
                    None => out.push((name, value)),
                }
            }
            other => panic!("unexpected milter action {other:?}"),
        }
    }
    out
}

impl Client {
    /// Opens a connection and reports the client `ip`, after the connect
    /// macros (`j` = [`MTA_NAME`] unless `macros` names `j` itself; an
    /// empty `j` value leaves it out).
    pub async fn connect(daemon: &Daemon, ip: IpAddr, macros: &[(&str, &str)]) -> Client {
        let mut conn = daemon.open().await;
        let mut sent: Vec<(CString, CString)> = Vec::new();
        if !macros.iter().any(|(k, _)| *k == "j") {
            sent.push((cstring("j"), cstring(MTA_NAME)));
        }
        for (k, v) in macros {
            if !(*k == "j" && v.is_empty()) {
                sent.push((cstring(*k), cstring(*v)));
            }
        }
        if !sent.is_empty() {
            conn.macros(MacroStage::Connect, sent)
                .await
                .expect("send connect macros");
        }
        let status = conn
            .connect("client.example", (ip, 4321))
            .await
            .expect("connect");
        assert_eq!(
            status,
            go_on(conn.negotiated_opts(), ProtoOpts::NOREPLY_CONNECT),
            "connect from {ip}"
        );
        Client { conn }
    }

    /// HELO/EHLO with any bytes: Continue where the milter negotiated no
    /// reply (the MTA goes on).
    pub async fn helo(&mut self, name: impl Into<Vec<u8>>) -> Status {
        let status = self.conn.helo(cstring(name)).await.expect("helo");
        if status == go_on(self.conn.negotiated_opts(), ProtoOpts::NOREPLY_HELO) {
            Status::Continue
        } else {
            status
        }
    }

    /// MAIL FROM with the argument as Postfix passes it (`<a@b>`), after
    /// the MAIL-stage macros.
    pub async fn mail(&mut self, sender: impl Into<Vec<u8>>, macros: &[(&str, &str)]) -> Status {
        if !macros.is_empty() {
            self.conn
                .macros(
                    MacroStage::Mail,
                    macros.iter().map(|(k, v)| (cstring(*k), cstring(*v))),
                )
                .await
                .expect("send MAIL macros");
        }
        self.conn.mail([cstring(sender)]).await.expect("mail")
    }

    /// RCPT, DATA, the headers and end of message (the steps the milter
    /// negotiated); every step but the last must answer Continue.
    pub async fn message(&mut self, rcpt: &str, headers: &[(&str, &str)]) -> Eom {
        self.try_message(rcpt, headers)
            .await
            .expect("an answer at end of message")
    }

    /// [`Client::message`], with the protocol error if the milter did not
    /// answer (e.g. it dropped the connection).
    pub async fn try_message(
        &mut self,
        rcpt: &str,
        headers: &[(&str, &str)],
    ) -> Result<Eom, TestError> {
        let opts = self.conn.negotiated_opts();
        if !opts.contains(ProtoOpts::NO_RCPT) {
            let status = self.conn.rcpt([cstring(rcpt)]).await?;
            assert_eq!(status, go_on(opts, ProtoOpts::NOREPLY_RCPT), "RCPT {rcpt}");
        }
        if !opts.contains(ProtoOpts::NO_DATA) {
            let status = self.conn.data().await?;
            assert_eq!(status, Status::Continue, "DATA");
        }
        self.headers(headers).await;
        if !opts.contains(ProtoOpts::NO_EOH) {
            let status = self.conn.eoh().await?;
            assert!(matches!(status, Status::Continue | Status::Noreply));
        }
        if !opts.contains(ProtoOpts::NO_BODY) {
            let status = self.conn.body("Hello.\r\n").await?;
            // Skip: the body of a message that is not held for the rescue.
            assert!(matches!(
                status,
                Status::Continue | Status::Noreply | Status::Skip
            ));
        }
        let (actions, status) = self.conn.eom().await?;
        Ok(Eom {
            status,
            actions: actions.actions,
            original: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        })
    }

    /// Sends headers (those the milter wants).
    pub async fn headers(&mut self, headers: &[(&str, &str)]) {
        if self.conn.negotiated_opts().contains(ProtoOpts::NO_HEADER) {
            return;
        }
        for (name, value) in headers {
            let status = self
                .conn
                .header(cstring(*name), cstring(*value))
                .await
                .expect("header");
            assert!(
                matches!(status, Status::Continue | Status::Noreply),
                "header {name}: {status:?}"
            );
        }
    }

    /// Aborts the current message (what Postfix sends on RSET and after a
    /// rejected transaction).
    pub async fn abort(&mut self) {
        self.conn.abort().await.expect("abort");
    }

    /// QUIT.
    pub async fn close(self) {
        self.conn.close().await.expect("close");
    }
}

/// How a whole transaction ended.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Rejected at MAIL FROM with this reply ("" when the milter gave
    /// none).
    Reject(String),
    /// Tempfailed at MAIL FROM with this reply.
    Tempfail(String),
    /// Accepted at MAIL FROM; what end of message said.
    Accept(Eom),
}

impl Verdict {
    pub fn from_mail(status: Status) -> Option<Verdict> {
        let text = |m: Option<CString>| m.map(|m| m.to_string_lossy().into_owned());
        match status {
            Status::Continue => None,
            Status::Reject { message } => Some(Verdict::Reject(text(message).unwrap_or_default())),
            Status::Tempfail { message } => {
                Some(Verdict::Tempfail(text(message).unwrap_or_default()))
            }
            other => panic!("unexpected answer to MAIL FROM: {other:?}"),
        }
    }

    /// The end-of-message answer; panics on a reject or tempfail.
    pub fn accepted(self) -> Eom {
        match self {
            Verdict::Accept(eom) => eom,
            other => panic!("expected the message to be accepted, got {other:?}"),
        }
    }
}

/// One transaction of the usual shape.
#[derive(Debug, Clone)]
pub struct Tx<'a> {
    pub ip: IpAddr,
    pub connect_macros: &'a [(&'a str, &'a str)],
    /// `None`: no HELO at all.
    pub helo: Option<&'a str>,
    /// The MAIL FROM argument (`<a@b>`, `<>`).
    pub sender: &'a str,
    pub mail_macros: &'a [(&'a str, &'a str)],
    pub rcpt: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
}

impl Default for Tx<'_> {
    fn default() -> Self {
        Tx {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            connect_macros: &[],
            helo: Some("pass.test"),
            sender: "<a@pass.test>",
            mail_macros: &[],
            rcpt: "<user@rcpt.example>",
            headers: &[("Subject", "test")],
        }
    }
}

impl Tx<'_> {
    /// Runs the transaction on a connection of its own.
    pub async fn run(&self, daemon: &Daemon) -> Verdict {
        let mut client = Client::connect(daemon, self.ip, self.connect_macros).await;
        let verdict = client.transaction(self).await;
        client.close().await;
        verdict
    }
}

impl Client {
    /// HELO (if any), MAIL FROM and, if that continues, the message.
    pub async fn transaction(&mut self, tx: &Tx<'_>) -> Verdict {
        if let Some(helo) = tx.helo {
            let status = self.helo(helo).await;
            assert_eq!(status, Status::Continue, "HELO {helo}");
        }
        let status = self.mail(tx.sender, tx.mail_macros).await;
        match Verdict::from_mail(status) {
            Some(verdict) => {
                self.abort().await;
                verdict
            }
            None => Verdict::Accept(self.message(tx.rcpt, tx.headers).await),
        }
    }
}
