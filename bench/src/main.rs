//! `spfmilter-bench`: a milter load generator that plays Postfix 3.7's
//! side of the milter protocol (version 6), plus the helpers the
//! benchmark script needs (a DNS front that delays every answer).
//!
//! * `load`: closed loop, `--concurrency C` workers, a new connection per
//!   SMTP session, `--per-session K` messages per session; for
//!   `--duration` seconds after `--warmup`, or `--messages N` in all.
//! * `idle`: opens N sessions (negotiated, connected, HELO sent) and holds
//!   them open, then reports the milter's memory.
//! * `dns-delay`: a UDP DNS front that forwards every query after a delay.
//!
//! What Postfix does and this does too (from Postfix's MILTER_README and
//! the `milter_*_macros` parameters of postconf(5)):
//!
//! * OPTNEG with version 6, every action and every protocol step flag
//!   Postfix 3.7 offers; the milter's reply chooses.
//! * Macros: Postfix's default list per stage, unless the milter named its
//!   own list for that stage in the OPTNEG reply; only the macros that have
//!   a value are sent, in one SMFIC_MACRO packet written in the same
//!   write as the stage's command.
//! * A step the milter turned off (SMFIP_NOCONNECT, NOHELO, …) is not
//!   sent; where it declared no reply (SMFIP_NR_*), none is awaited, and
//!   its packets wait in the buffer until the next step whose reply is
//!   awaited, as Postfix writes them: into its buffered stream, which it
//!   flushes only when it reads a reply (or the buffer is full). So the
//!   headers of a milter that declared no reply for them go in one write
//!   with the end of message (and the connect and HELO with MAIL FROM).
//! * Header values go without their leading space unless the milter asked
//!   for SMFIP_HDR_LEADSPC.
//! * At the end of a message every modification action is read, then the
//!   final reply. A transaction that ends before the end of message
//!   (rejected at MAIL FROM or RCPT TO) is followed by SMFIC_ABORT, as
//!   Postfix sends when the SMTP client starts over; the session ends with
//!   SMFIC_QUIT and the connection is closed.
//!
//! Latency is per message, from writing MAIL FROM to the final reply of
//! the message (the end-of-message reply, or the rejection); the session's
//! set-up (connection, OPTNEG, connect, HELO) is reported separately.

mod proto;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use proto::{Negotiated, Stage, append_cstr, append_packet};

#[derive(Parser)]
#[command(
    name = "spfmilter-bench",
    about = "Milter load generator (Postfix 3.7's side of milter protocol 6)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop load: C workers, one connection per SMTP session.
    Load(LoadArgs),
    /// Hold N idle sessions open, then report the milter's memory.
    Idle(IdleArgs),
    /// UDP DNS front: forwards each query to UPSTREAM after a delay.
    DnsDelay(DelayArgs),
    /// A syslog socket (unix datagram) that reads and discards every line,
    /// so that milters logging to /dev/log pay what they pay with a real
    /// syslog daemon, and nothing is written anywhere.
    SyslogSink {
        /// Where to bind, e.g. /dev/log (in a private mount namespace).
        #[arg(long)]
        path: std::path::PathBuf,
    },
}

#[derive(Args, Clone)]
struct Session {
    /// The milter: inet:HOST:PORT or unix:/PATH.
    #[arg(long)]
    socket: String,
    /// The SMTP client's address given to the milter at connect.
    #[arg(long, default_value = "192.0.2.10")]
    client_ip: IpAddr,
    /// The SMTP client's (verified) name given at connect.
    #[arg(long, default_value = "mail.client.test")]
    client_name: String,
    /// HELO name.
    #[arg(long, default_value = "mx1.w1.bench.test")]
    helo: String,
    /// Seconds to wait for any one reply before counting an error.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Set TCP_NODELAY on the generator's side (Postfix does not).
    #[arg(long)]
    nodelay: bool,
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    session: Session,
    /// Workers, each with one session at a time.
    #[arg(long, short = 'c', default_value_t = 1)]
    concurrency: usize,
    /// Messages per SMTP session (connection).
    #[arg(long, default_value_t = 1)]
    per_session: u64,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Send exactly N messages, all measured (instead of --duration).
    #[arg(long)]
    messages: Option<u64>,
    /// MAIL FROM address; `{n}` is replaced by the message's number
    /// (0, 1, …; distinct across workers).
    #[arg(long, default_value = "user@w1.bench.test")]
    sender: String,
    /// RCPT TO address.
    #[arg(long, default_value = "postmaster@mx.bench.test")]
    rcpt: String,
    /// The expected verdict of every message: `accept` (no header),
    /// `header:NAME[:TEXT]` (accepted, a header NAME added whose value
    /// contains TEXT),
    /// `reject[:STAGE]` (5xx), `tempfail[:STAGE]` (4xx); STAGE is
    /// connect, helo, mail, rcpt, data, header, eoh, body or eom.
    /// Given once per `--message`, the i-th is that message's verdict.
    #[arg(long, default_value = "accept")]
    expect: Vec<String>,
    /// Send this message's header fields and body instead of the default
    /// ones: a file in RFC 5322 form with CRLF line ends (a header, an
    /// empty line, the body), e.g. as a DKIM signer wrote it. Each field
    /// goes as Postfix sends it (after Postfix's own Received), the body
    /// byte for byte in chunks of 65,535 bytes. Repeatable: message n is
    /// the file n mod the number of files.
    #[arg(long = "message")]
    message_files: Vec<std::path::PathBuf>,
    /// The milter's process id: its CPU time and peak RSS are reported.
    #[arg(long)]
    pid: Option<u32>,
    /// A name for the report.
    #[arg(long, default_value = "")]
    label: String,
    /// JSON report (one object on one line).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    session: Session,
    /// Sessions to open and hold.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Seconds to hold them once all are open.
    #[arg(long, default_value_t = 2.0)]
    hold: f64,
    /// The milter's process id (for its memory).
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DelayArgs {
    /// Address to listen on (UDP), e.g. 127.0.0.2:53.
    #[arg(long)]
    listen: SocketAddr,
    /// The real DNS server.
    #[arg(long)]
    upstream: SocketAddr,
    /// Delay of every answer, in milliseconds.
    #[arg(long, default_value_t = 50)]
    delay_ms: u64,
    /// On SIGHUP, write the number of queries received so far here.
    #[arg(long)]
    count_file: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Load(args) => load(args).await,
            Command::Idle(args) => idle(args).await,
            Command::DnsDelay(args) => dns_delay(args).await,
            Command::SyslogSink { path } => syslog_sink(&path).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spfmilter-bench: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------- outcomes

/// Where in the transaction a verdict came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
    Eom,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Helo => "helo",
            Step::Mail => "mail",
            Step::Rcpt => "rcpt",
            Step::Data => "data",
            Step::Header => "header",
            Step::Eoh => "eoh",
            Step::Body => "body",
            Step::Eom => "eom",
        }
    }

    fn parse(s: &str) -> Option<Step> {
        [
            Step::Connect,
            Step::Helo,
            Step::Mail,
            Step::Rcpt,
            Step::Data,
            Step::Header,
            Step::Eoh,
            Step::Body,
            Step::Eom,
        ]
        .into_iter()
        .find(|st| st.name() == s)
    }
}

/// A milter's answer to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Continue,
    Accept,
    Reject,
    Tempfail,
    Discard,
    Skip,
    /// SMFIR_REPLYCODE: the SMTP code.
    Code(u16),
}

/// How one message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Accepted; the headers added or inserted at the end of message.
    Accepted {
        headers: Vec<(String, String)>,
    },
    Rejected(Step),
    Tempfailed(Step),
    Discarded(Step),
}

#[derive(Debug, Clone)]
enum Expect {
    Accept,
    Header { name: String, text: String },
    Reject(Option<Step>),
    Tempfail(Option<Step>),
}

impl Expect {
    fn parse(s: &str) -> Result<Expect, String> {
        let mut parts = s.splitn(3, ':');
        let kind = parts.next().unwrap_or("");
        let step = |p: Option<&str>| -> Result<Option<Step>, String> {
            p.map(|s| Step::parse(s).ok_or_else(|| format!("unknown stage {s:?}")))
                .transpose()
        };
        Ok(match kind {
            "accept" => Expect::Accept,
            "header" => Expect::Header {
                name: parts
                    .next()
                    .filter(|n| !n.is_empty())
                    .ok_or("header:NAME[:TEXT]")?
                    .to_owned(),
                text: parts.next().unwrap_or("").to_owned(),
            },
            "reject" => Expect::Reject(step(parts.next())?),
            "tempfail" => Expect::Tempfail(step(parts.next())?),
            _ => {
                return Err(format!(
                    "--expect {s:?}: accept, header:…, reject[:STAGE] or tempfail[:STAGE]"
                ));
            }
        })
    }

    fn matches(&self, outcome: &Outcome) -> bool {
        match (self, outcome) {
            (Expect::Accept, Outcome::Accepted { headers }) => headers.is_empty(),
            (Expect::Header { name, text }, Outcome::Accepted { headers }) => headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name) && v.contains(text.as_str())),
            (Expect::Reject(step), Outcome::Rejected(s))
            | (Expect::Tempfail(step), Outcome::Tempfailed(s)) => step.is_none_or(|st| st == *s),
            _ => false,
        }
    }
}

// ---------------------------------------------------------------- sessions

/// One message's envelope and content.
struct Message<'a> {
    n: u64,
    sender: String,
    rcpt: &'a str,
    /// Its header fields and body (`--message`), or None: the defaults.
    content: Option<&'a Content>,
}

/// Per-connection constants.
struct Client<'a> {
    s: &'a Session,
    rcpt: &'a str,
    sender_template: &'a str,
    timeout: Duration,
    /// The messages of `--message` (message n is number n mod their
    /// count); empty: the default header and body.
    contents: &'a [Content],
}

impl Client<'_> {
    fn message(&self, n: u64) -> Message<'_> {
        Message {
            n,
            sender: self.sender_template.replace("{n}", &n.to_string()),
            rcpt: self.rcpt,
            content: pick(self.contents, n),
        }
    }
}

/// Item n mod the slice's length (None if empty).
fn pick<T>(items: &[T], n: u64) -> Option<&T> {
    let len = u64::try_from(items.len()).ok().filter(|&l| l > 0)?;
    items.get(usize::try_from(n % len).ok()?)
}

/// A message of `--message`: its header fields, each value as in the file
/// after the colon (leading white space kept; a fold's CRLF as LF, the
/// way Postfix keeps a header and hands it to a milter), and its body as
/// in the file (CRLF line ends: what Postfix sends a milter).
#[derive(Debug, PartialEq, Eq)]
struct Content {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Content {
    fn parse(bytes: &[u8]) -> Result<Content, String> {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no empty line (CRLF CRLF) after the header: CRLF line ends expected")?;
        let head = std::str::from_utf8(&bytes[..end + 2])
            .map_err(|e| format!("the header is not UTF-8: {e}"))?;
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.split_terminator("\r\n") {
            if line.contains(['\r', '\n']) {
                return Err(format!("bare CR or LF in the header: {line:?}"));
            }
            if line.starts_with([' ', '\t']) {
                let (_, value) = headers
                    .last_mut()
                    .ok_or("the header starts with a continuation line")?;
                value.push('\n');
                value.push_str(line);
            } else {
                let (name, value) = line
                    .split_once(':')
                    .ok_or_else(|| format!("not a header field: {line:?}"))?;
                headers.push((name.to_owned(), value.to_owned()));
            }
        }
        Ok(Content {
            headers,
            body: bytes[end + 4..].to_vec(),
        })
    }
}

/// Postfix's body chunks to a milter are at most this long (its
/// MILTER_CHUNK_SIZE).
const BODY_CHUNK: usize = 65535;

fn domain_of(addr: &str) -> &str {
    addr.rsplit_once('@').map_or("", |(_, d)| d)
}

/// The value Postfix would give a macro here, or None (not sent).
fn macro_value(name: &str, client: &Client, msg: Option<&Message>) -> Option<String> {
    let s = client.s;
    let qid = || msg.map(|m| format!("{:010X}", m.n + 1));
    Some(match name {
        "j" => "mx.bench.test".to_owned(),
        "{daemon_name}" => "smtpd".to_owned(),
        "{daemon_addr}" => "127.0.0.1".to_owned(),
        "v" => "Postfix 3.7.11".to_owned(),
        "_" => format!("{} [{}]", s.client_name, s.client_ip),
        "{client_addr}" => s.client_ip.to_string(),
        "{client_name}" | "{client_ptr}" => s.client_name.clone(),
        "{client_connections}" => "0".to_owned(),
        "i" => qid()?,
        "{mail_addr}" => msg?.sender.clone(),
        "{mail_host}" => domain_of(&msg?.sender).to_owned(),
        "{mail_mailer}" | "{rcpt_mailer}" => "smtp".to_owned(),
        "{rcpt_addr}" => msg?.rcpt.to_owned(),
        "{rcpt_host}" => domain_of(msg?.rcpt).to_owned(),
        // Not authenticated, no TLS: Postfix has no value, sends nothing.
        _ => return None,
    })
}

/// Appends the stage's SMFIC_MACRO packet (if any macro has a value).
fn macros(
    buf: &mut Vec<u8>,
    neg: &Negotiated,
    stage: Stage,
    client: &Client,
    msg: Option<&Message>,
) {
    let names = neg.macro_names(stage);
    let values: Vec<(&str, String)> = names
        .into_iter()
        .filter_map(|n| macro_value(n, client, msg).map(|v| (n, v)))
        .collect();
    if values.is_empty() {
        return;
    }
    append_packet(buf, proto::C_MACRO, |b| {
        b.push(stage.command());
        for (n, v) in &values {
            append_cstr(b, n.as_bytes());
            append_cstr(b, v.as_bytes());
        }
    });
}

/// The headers of every message: Postfix's own Received first, as the
/// milter sees it.
fn headers(client: &Client, msg: &Message) -> Vec<(&'static str, String)> {
    let s = client.s;
    vec![
        (
            "Received",
            format!(
                "from {} ({} [{}])\n\tby mx.bench.test (Postfix) with ESMTP id {:010X}\n\tfor <{}>; Mon, 23 Nov 2026 09:00:00 +0000 (UTC)",
                s.helo,
                s.client_name,
                s.client_ip,
                msg.n + 1,
                msg.rcpt
            ),
        ),
        ("From", format!("<{}>", msg.sender)),
        ("To", format!("<{}>", msg.rcpt)),
        ("Subject", format!("benchmark message {}", msg.n)),
        ("Date", "Mon, 23 Nov 2026 09:00:00 +0000".to_owned()),
        (
            "Message-ID",
            format!("<bench.{}@{}>", msg.n, domain_of(&msg.sender)),
        ),
    ]
}

const BODY: &[u8] = b"Hello,\r\n\r\nthis is a benchmark message of spfmilter-bench; it has a few\r\nlines of text so that the body is not empty, as in real mail.\r\n\r\n-- \r\nspfmilter-bench\r\n";

/// The connection, read and write halves.
struct Conn<R, W> {
    r: BufReader<R>,
    w: W,
    buf: Vec<u8>,
    payload: Vec<u8>,
    timeout: Duration,
    last: u8,
    /// The current message's body was answered with SMFIR_SKIP.
    skipped: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<R, W> {
    /// A connection over the two halves of a stream, nothing sent yet.
    fn new(r: R, w: W, timeout: Duration) -> Self {
        Conn {
            r: BufReader::new(r),
            w,
            buf: Vec::with_capacity(2048),
            payload: Vec::with_capacity(512),
            timeout,
            last: 0,
            skipped: false,
        }
    }

    async fn send(&mut self) -> Result<(), String> {
        // The last command written, for error messages.
        let mut rest = &self.buf[..];
        while let Ok(Some((packet, after))) = proto::split_packet(rest) {
            self.last = packet.command;
            rest = after;
        }
        let r = tokio::time::timeout(self.timeout, self.w.write_all(&self.buf)).await;
        self.buf.clear();
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err("write timed out".to_owned()),
        }
    }

    async fn read(&mut self) -> Result<u8, String> {
        match tokio::time::timeout(
            self.timeout,
            proto::read_async(&mut self.r, &mut self.payload),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("read: {e}")),
            Err(_) => Err(format!(
                "no reply after {:?} within the time-out",
                self.last as char
            )),
        }
    }

    /// Reads replies until a final one (progress packets are skipped).
    async fn reply(&mut self) -> Result<Reply, String> {
        loop {
            let c = self.read().await?;
            return Ok(match c {
                proto::R_PROGRESS => continue,
                proto::R_CONTINUE => Reply::Continue,
                proto::R_ACCEPT => Reply::Accept,
                proto::R_REJECT => Reply::Reject,
                proto::R_TEMPFAIL => Reply::Tempfail,
                proto::R_DISCARD => Reply::Discard,
                proto::R_SKIP => Reply::Skip,
                proto::R_REPLYCODE => {
                    let code = self
                        .payload
                        .get(..3)
                        .and_then(|d| std::str::from_utf8(d).ok())
                        .and_then(|d| d.parse().ok())
                        .ok_or("malformed SMFIR_REPLYCODE")?;
                    if !(400..600).contains(&code) {
                        return Err(format!("SMFIR_REPLYCODE {code}"));
                    }
                    Reply::Code(code)
                }
                proto::R_SHUTDOWN | proto::R_CONN_FAIL => {
                    return Err(format!("milter ended the connection ({:?})", c as char));
                }
                other => return Err(format!("unexpected reply {:?}", other as char)),
            });
        }
    }

    /// The end-of-message answer: modification actions, then the reply.
    async fn eom_reply(&mut self, headers: &mut Vec<(String, String)>) -> Result<Reply, String> {
        loop {
            let c = self.read().await?;
            match c {
                proto::R_ADDHEADER | proto::R_INSHEADER => {
                    let p: &[u8] = if c == proto::R_INSHEADER {
                        self.payload.get(4..).ok_or("short SMFIR_INSHEADER")?
                    } else {
                        &self.payload
                    };
                    let parts = proto::cstrings(p);
                    let [name, value] = parts.as_slice() else {
                        return Err("malformed header action".to_owned());
                    };
                    headers.push((
                        String::from_utf8_lossy(name).into_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    ));
                }
                proto::R_CHGHEADER
                | proto::R_ADDRCPT
                | proto::R_DELRCPT
                | proto::R_ADDRCPT_PAR
                | proto::R_CHGFROM
                | proto::R_REPLBODY
                | proto::R_QUARANTINE
                | proto::R_PROGRESS => {}
                _ => {
                    // Put the packet back into the reply parser's hands.
                    return self.final_reply(c);
                }
            }
        }
    }

    fn final_reply(&self, c: u8) -> Result<Reply, String> {
        Ok(match c {
            proto::R_CONTINUE => Reply::Continue,
            proto::R_ACCEPT => Reply::Accept,
            proto::R_REJECT => Reply::Reject,
            proto::R_TEMPFAIL => Reply::Tempfail,
            proto::R_DISCARD => Reply::Discard,
            proto::R_REPLYCODE => {
                let code: u16 = self
                    .payload
                    .get(..3)
                    .and_then(|d| std::str::from_utf8(d).ok())
                    .and_then(|d| d.parse().ok())
                    .ok_or("malformed SMFIR_REPLYCODE")?;
                Reply::Code(code)
            }
            other => {
                return Err(format!(
                    "unexpected end-of-message reply {:?}",
                    other as char
                ));
            }
        })
    }
}

/// What a step's reply means for the message: go on, or its outcome.
fn verdict(reply: &Reply, step: Step) -> Option<Outcome> {
    match reply {
        Reply::Continue | Reply::Skip => None,
        Reply::Accept => Some(Outcome::Accepted {
            headers: Vec::new(),
        }),
        Reply::Reject => Some(Outcome::Rejected(step)),
        Reply::Tempfail => Some(Outcome::Tempfailed(step)),
        Reply::Discard => Some(Outcome::Discarded(step)),
        Reply::Code(c) if *c >= 500 => Some(Outcome::Rejected(step)),
        Reply::Code(_) => Some(Outcome::Tempfailed(step)),
    }
}

/// Opens the session: OPTNEG, connect, HELO. Returns the negotiated
/// options, and the session's verdict if the milter ended it there
/// (accept, reject, tempfail at connect or HELO apply to every message).
async fn open<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    c: &mut Conn<R, W>,
    client: &Client<'_>,
) -> Result<(Negotiated, Option<Outcome>), String> {
    proto::append_optneg(&mut c.buf);
    c.send().await?;
    let cmd = c.read().await?;
    if cmd != proto::C_OPTNEG {
        return Err(format!("OPTNEG answered with {:?}", cmd as char));
    }
    let neg = Negotiated::parse(&c.payload)?;
    let s = client.s;
    if !neg.has(proto::P_NOCONNECT) {
        macros(&mut c.buf, &neg, Stage::Connect, client, None);
        append_packet(&mut c.buf, proto::C_CONNECT, |b| {
            append_cstr(b, s.client_name.as_bytes());
            b.push(if s.client_ip.is_ipv4() { b'4' } else { b'6' });
            b.extend_from_slice(&40_000u16.to_be_bytes());
            append_cstr(b, s.client_ip.to_string().as_bytes());
        });
        if !neg.has(proto::P_NR_CONN) {
            c.send().await?;
            if let Some(o) = verdict(&c.reply().await?, Step::Connect) {
                return Ok((neg, Some(o)));
            }
        }
    }
    if !neg.has(proto::P_NOHELO) {
        macros(&mut c.buf, &neg, Stage::Helo, client, None);
        append_packet(&mut c.buf, proto::C_HELO, |b| {
            append_cstr(b, s.helo.as_bytes())
        });
        if !neg.has(proto::P_NR_HELO) {
            c.send().await?;
            if let Some(o) = verdict(&c.reply().await?, Step::Helo) {
                return Ok((neg, Some(o)));
            }
        }
    }
    Ok((neg, None))
}

/// One message: MAIL … end of message. The outcome, or an error.
async fn transaction<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    c: &mut Conn<R, W>,
    neg: &Negotiated,
    client: &Client<'_>,
    msg: &Message<'_>,
) -> Result<(Outcome, Step), String> {
    // Written only when a reply is awaited (see the module's notes).
    macro_rules! step {
        ($nr:expr, $step:expr) => {
            if !neg.has($nr) {
                c.send().await?;
                if let Some(o) = verdict(&c.reply().await?, $step) {
                    return Ok((o, $step));
                }
            }
        };
    }
    c.skipped = false;
    if !neg.has(proto::P_NOMAIL) {
        macros(&mut c.buf, neg, Stage::Mail, client, Some(msg));
        append_packet(&mut c.buf, proto::C_MAIL, |b| {
            append_cstr(b, format!("<{}>", msg.sender).as_bytes());
        });
        step!(proto::P_NR_MAIL, Step::Mail);
    }
    if !neg.has(proto::P_NORCPT) {
        macros(&mut c.buf, neg, Stage::Rcpt, client, Some(msg));
        append_packet(&mut c.buf, proto::C_RCPT, |b| {
            append_cstr(b, format!("<{}>", msg.rcpt).as_bytes());
        });
        step!(proto::P_NR_RCPT, Step::Rcpt);
    }
    if !neg.has(proto::P_NODATA) && neg.version >= 4 {
        macros(&mut c.buf, neg, Stage::Data, client, Some(msg));
        append_packet(&mut c.buf, proto::C_DATA, |_| {});
        step!(proto::P_NR_DATA, Step::Data);
    }
    if !neg.has(proto::P_NOHDRS) {
        let leading_space = neg.has(proto::P_HDR_LEADSPC);
        let lead = if leading_space { " " } else { "" };
        let mut defaults = headers(client, msg);
        // A message of its own: Postfix's Received, then its fields.
        if msg.content.is_some() {
            defaults.truncate(1);
        }
        for (name, value) in defaults {
            append_packet(&mut c.buf, proto::C_HEADER, |b| {
                append_cstr(b, name.as_bytes());
                b.extend_from_slice(lead.as_bytes());
                append_cstr(b, value.as_bytes());
            });
            step!(proto::P_NR_HDR, Step::Header);
        }
        for (name, value) in msg.content.map_or(&[][..], |m| &m.headers[..]) {
            // Postfix drops the white space after the colon unless the
            // milter asked for it (SMFIP_HDR_LEADSPC).
            let value = if leading_space {
                value.as_str()
            } else {
                value.trim_start_matches([' ', '\t'])
            };
            append_packet(&mut c.buf, proto::C_HEADER, |b| {
                append_cstr(b, name.as_bytes());
                append_cstr(b, value.as_bytes());
            });
            step!(proto::P_NR_HDR, Step::Header);
        }
    }
    if !neg.has(proto::P_NOEOH) {
        macros(&mut c.buf, neg, Stage::Eoh, client, Some(msg));
        append_packet(&mut c.buf, proto::C_EOH, |_| {});
        step!(proto::P_NR_EOH, Step::Eoh);
    }
    if !neg.has(proto::P_NOBODY) {
        let body = msg.content.map_or(BODY, |m| &m.body[..]);
        for chunk in body.chunks(BODY_CHUNK) {
            append_packet(&mut c.buf, proto::C_BODY, |b| b.extend_from_slice(chunk));
            // Without a reply awaited, the chunk waits in the buffer for
            // the next step that has one, as in Postfix's stream.
            if !neg.has(proto::P_NR_BODY) {
                c.send().await?;
                match c.reply().await? {
                    // SMFIR_SKIP: no more body chunks.
                    Reply::Skip => {
                        c.skipped = true;
                        break;
                    }
                    r => {
                        if let Some(o) = verdict(&r, Step::Body) {
                            return Ok((o, Step::Body));
                        }
                    }
                }
            }
        }
    }
    macros(&mut c.buf, neg, Stage::Eom, client, Some(msg));
    append_packet(&mut c.buf, proto::C_EOM, |_| {});
    c.send().await?;
    let mut added = Vec::new();
    let reply = c.eom_reply(&mut added).await?;
    let outcome = match verdict(&reply, Step::Eom) {
        None | Some(Outcome::Accepted { .. }) => Outcome::Accepted { headers: added },
        Some(o) => o,
    };
    Ok((outcome, Step::Eom))
}

// ---------------------------------------------------------------- load

/// Results of one worker (merged at the end).
#[derive(Default)]
struct Tally {
    /// Per-message latency, nanoseconds.
    latencies: Vec<u64>,
    /// Session set-up latency (connect … HELO answered), nanoseconds.
    setups: Vec<u64>,
    accepted: u64,
    header_added: u64,
    rejected: u64,
    tempfailed: u64,
    discarded: u64,
    errors: u64,
    mismatches: u64,
    /// Messages whose body the milter answered with SMFIR_SKIP.
    body_skipped: u64,
    sessions: u64,
    /// By outcome description, the first few mismatches / errors.
    samples: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.latencies.extend(o.latencies);
        self.setups.extend(o.setups);
        self.accepted += o.accepted;
        self.header_added += o.header_added;
        self.rejected += o.rejected;
        self.tempfailed += o.tempfailed;
        self.discarded += o.discarded;
        self.errors += o.errors;
        self.mismatches += o.mismatches;
        self.body_skipped += o.body_skipped;
        self.sessions += o.sessions;
        for (k, v) in o.samples {
            *self.samples.entry(k).or_default() += v;
        }
    }

    fn note(&mut self, what: String) {
        if self.samples.len() < 20 || self.samples.contains_key(&what) {
            *self.samples.entry(what).or_default() += 1;
        }
    }

    fn record(&mut self, outcome: &Outcome, expect: &Expect, latency: Duration) {
        self.latencies.push(latency.as_nanos() as u64);
        match outcome {
            Outcome::Accepted { headers } if headers.is_empty() => self.accepted += 1,
            Outcome::Accepted { .. } => self.header_added += 1,
            Outcome::Rejected(_) => self.rejected += 1,
            Outcome::Tempfailed(_) => self.tempfailed += 1,
            Outcome::Discarded(_) => self.discarded += 1,
        }
        if !expect.matches(outcome) {
            self.mismatches += 1;
            self.note(format!("mismatch: {outcome:?}"));
        }
    }
}

/// Hands out message numbers and says when to stop and what to count.
struct Plan {
    next: AtomicU64,
    total: Option<u64>,
    measure_from: Instant,
    end: Option<Instant>,
}

impl Plan {
    fn claim(&self) -> Option<u64> {
        if let Some(end) = self.end
            && Instant::now() >= end
        {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        match self.total {
            Some(t) if n >= t => None,
            _ => Some(n),
        }
    }

    fn counts(&self, done: Instant) -> bool {
        done >= self.measure_from && self.end.is_none_or(|e| done <= e)
    }
}

enum Endpoint {
    Tcp(String),
    Unix(String),
}

impl Endpoint {
    fn parse(s: &str) -> Result<Endpoint, String> {
        if let Some(a) = s.strip_prefix("inet:") {
            Ok(Endpoint::Tcp(a.to_owned()))
        } else if let Some(p) = s.strip_prefix("unix:") {
            Ok(Endpoint::Unix(p.to_owned()))
        } else {
            Err(format!("socket {s:?}: inet:HOST:PORT or unix:/PATH"))
        }
    }
}

/// Runs `f` on a fresh connection to the endpoint.
macro_rules! with_conn {
    ($endpoint:expr, $s:expr, $timeout:expr, |$c:ident| $body:expr) => {
        match $endpoint {
            Endpoint::Tcp(addr) => match tokio::net::TcpStream::connect(addr.as_str()).await {
                Ok(stream) => {
                    if $s.nodelay {
                        let _ = stream.set_nodelay(true);
                    }
                    let (r, w) = stream.into_split();
                    let mut $c = Conn::new(r, w, $timeout);
                    Ok($body)
                }
                Err(e) => Err(format!("connect {addr}: {e}")),
            },
            Endpoint::Unix(path) => match tokio::net::UnixStream::connect(path.as_str()).await {
                Ok(stream) => {
                    let (r, w) = stream.into_split();
                    let mut $c = Conn::new(r, w, $timeout);
                    Ok($body)
                }
                Err(e) => Err(format!("connect {path}: {e}")),
            },
        }
    };
}

/// One SMTP session with up to `per_session` messages; `first` is the
/// first message's number, already claimed.
async fn run_session<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    c: &mut Conn<R, W>,
    client: &Client<'_>,
    plan: &Plan,
    per_session: u64,
    expects: &[Expect],
    first: u64,
    tally: &mut Tally,
) {
    let started = Instant::now();
    let (neg, ended) = match open(c, client).await {
        Ok(x) => x,
        Err(e) => {
            tally.errors += 1;
            tally.note(format!("error: {e}"));
            return;
        }
    };
    if plan.counts(Instant::now()) {
        tally.setups.push(started.elapsed().as_nanos() as u64);
    }
    let mut n = Some(first);
    let mut sent = 0;
    while let Some(i) = n {
        let msg = client.message(i);
        let t0 = Instant::now();
        let result = match &ended {
            Some(o) => Ok((o.clone(), Step::Helo)),
            None => transaction(c, &neg, client, &msg).await,
        };
        let done = Instant::now();
        match result {
            Ok((outcome, step)) => {
                if plan.counts(done)
                    && let Some(expect) = pick(expects, i)
                {
                    tally.record(&outcome, expect, done - t0);
                    tally.body_skipped += u64::from(c.skipped);
                }
                // A transaction that ended before its end: the client
                // starts over (RSET), and Postfix aborts the milter's.
                if ended.is_none() && step != Step::Eom {
                    append_packet(&mut c.buf, proto::C_ABORT, |_| {});
                    if let Err(e) = c.send().await {
                        tally.errors += 1;
                        tally.note(format!("error: {e}"));
                        return;
                    }
                }
            }
            Err(e) => {
                if plan.counts(done) {
                    tally.errors += 1;
                }
                tally.note(format!("error: {e}"));
                return;
            }
        }
        sent += 1;
        n = if sent < per_session {
            plan.claim()
        } else {
            None
        };
    }
    append_packet(&mut c.buf, proto::C_QUIT, |_| {});
    let _ = c.send().await;
    let _ = c.w.shutdown().await;
}

async fn worker(
    endpoint: Arc<Endpoint>,
    args: Arc<LoadArgs>,
    plan: Arc<Plan>,
    expects: Arc<Vec<Expect>>,
    contents: Arc<Vec<Content>>,
) -> Tally {
    let mut tally = Tally::default();
    let timeout = Duration::from_secs_f64(args.session.timeout);
    let client = Client {
        s: &args.session,
        rcpt: &args.rcpt,
        sender_template: &args.sender,
        timeout,
        contents: &contents,
    };
    while let Some(first) = plan.claim() {
        let r: Result<(), String> = with_conn!(&*endpoint, client.s, client.timeout, |c| {
            run_session(
                &mut c,
                &client,
                &plan,
                args.per_session,
                &expects,
                first,
                &mut tally,
            )
            .await
        });
        tally.sessions += 1;
        if let Err(e) = r {
            tally.errors += 1;
            tally.note(format!("error: {e}"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tally
}

/// utime + stime of a process, seconds (USER_HZ is 100 on Linux).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// A `Vm…:` line of /proc/PID/status, KiB.
fn vm_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1e6
}

async fn load(args: LoadArgs) -> Result<ExitCode, String> {
    let endpoint = Arc::new(Endpoint::parse(&args.session.socket)?);
    let expects = args
        .expect
        .iter()
        .map(|e| Expect::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    let expects = Arc::new(expects);
    let mut contents = Vec::new();
    for path in &args.message_files {
        let bytes =
            std::fs::read(path).map_err(|e| format!("--message {}: {e}", path.display()))?;
        contents.push(
            Content::parse(&bytes).map_err(|e| format!("--message {}: {e}", path.display()))?,
        );
    }
    let contents = Arc::new(contents);
    if expects.len() != 1 && expects.len() != contents.len() {
        return Err(format!(
            "{} --expect for {} --message: give one, or one per message",
            expects.len(),
            contents.len()
        ));
    }
    if args.concurrency == 0 || args.per_session == 0 {
        return Err("--concurrency and --per-session must be at least 1".to_owned());
    }
    let start = Instant::now();
    let (measure_from, end) = match args.messages {
        Some(_) => (start, None),
        None => {
            let from = start + Duration::from_secs_f64(args.warmup);
            (from, Some(from + Duration::from_secs_f64(args.duration)))
        }
    };
    let plan = Arc::new(Plan {
        next: AtomicU64::new(0),
        total: args.messages,
        measure_from,
        end,
    });
    let pid = args.pid.map(|p| p.to_string());
    let args = Arc::new(args);
    let mut handles = Vec::new();
    for _ in 0..args.concurrency {
        handles.push(tokio::spawn(worker(
            Arc::clone(&endpoint),
            Arc::clone(&args),
            Arc::clone(&plan),
            Arc::clone(&expects),
            Arc::clone(&contents),
        )));
    }
    // CPU at the start of the measured window.
    let now = Instant::now();
    if measure_from > now {
        tokio::time::sleep(measure_from - now).await;
    }
    let cpu0 = pid.as_deref().and_then(cpu_seconds);
    let self0 = cpu_seconds("self");
    let t0 = Instant::now();
    let mut tally = Tally::default();
    for h in handles {
        tally.merge(h.await.map_err(|e| e.to_string())?);
    }
    let cpu1 = pid.as_deref().and_then(cpu_seconds);
    let self1 = cpu_seconds("self");
    let elapsed = match plan.end {
        Some(e) => e.min(Instant::now()) - t0.min(e),
        None => t0.elapsed(),
    }
    .as_secs_f64()
    .max(1e-9);

    let mut lat = std::mem::take(&mut tally.latencies);
    lat.sort_unstable();
    let mut setups = std::mem::take(&mut tally.setups);
    setups.sort_unstable();
    let messages = lat.len() as u64;
    let cpu_per_1000 = match (cpu0, cpu1) {
        (Some(a), Some(b)) if messages > 0 => Some((b - a) / messages as f64 * 1000.0),
        _ => None,
    };
    let gen_cpu_per_1000 = match (self0, self1) {
        (Some(a), Some(b)) if messages > 0 => Some((b - a) / messages as f64 * 1000.0),
        _ => None,
    };
    let hwm = args.pid.and_then(|p| vm_kib(p, "VmHWM:"));
    let report = json!({
        "label": args.label,
        "socket": args.session.socket,
        "concurrency": args.concurrency,
        "per_session": args.per_session,
        "seconds": elapsed,
        "messages": messages,
        "sessions": tally.sessions,
        "messages_per_s": messages as f64 / elapsed,
        "latency": "MAIL FROM written .. final reply of the message",
        "latency_ms": {
            "p50": percentile(&lat, 50.0),
            "p90": percentile(&lat, 90.0),
            "p99": percentile(&lat, 99.0),
            "max": lat.last().map_or(0.0, |&m| m as f64 / 1e6),
        },
        "setup_ms": {
            "p50": percentile(&setups, 50.0),
            "p99": percentile(&setups, 99.0),
        },
        "outcomes": {
            "accept": tally.accepted,
            "header_added": tally.header_added,
            "reject_5xx": tally.rejected,
            "tempfail_4xx": tally.tempfailed,
            "discard": tally.discarded,
            "errors": tally.errors,
        },
        "expect": args.expect.join(" / "),
        "mismatches": tally.mismatches,
        "body_skipped": tally.body_skipped,
        "milter_cpu_s_per_1000": cpu_per_1000,
        "milter_peak_rss_kib": hwm,
        "generator_cpu_s_per_1000": gen_cpu_per_1000,
        "notes": tally.samples.iter().map(|(k, v)| format!("{v}× {k}")).collect::<Vec<_>>(),
    });
    if args.json {
        println!("{report}");
    } else {
        print_text(&report);
    }
    Ok(
        if tally.errors == 0 && tally.mismatches == 0 && messages > 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

fn print_text(r: &Value) {
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.3}"));
    println!(
        "{} {} c={} k={}: {} messages in {:.2} s = {:.0} messages/s",
        r["label"].as_str().unwrap_or(""),
        r["socket"].as_str().unwrap_or(""),
        r["concurrency"],
        r["per_session"],
        r["messages"],
        r["seconds"].as_f64().unwrap_or(0.0),
        r["messages_per_s"].as_f64().unwrap_or(0.0)
    );
    let l = &r["latency_ms"];
    println!(
        "  latency ms (MAIL..final reply): p50 {} p90 {} p99 {} max {}; session set-up p50 {} ms",
        f(&l["p50"]),
        f(&l["p90"]),
        f(&l["p99"]),
        f(&l["max"]),
        f(&r["setup_ms"]["p50"])
    );
    let o = &r["outcomes"];
    println!(
        "  outcomes: accept {} header-added {} 5xx {} 4xx {} discard {} errors {}; mismatches vs {:?}: {}",
        o["accept"],
        o["header_added"],
        o["reject_5xx"],
        o["tempfail_4xx"],
        o["discard"],
        o["errors"],
        r["expect"].as_str().unwrap_or(""),
        r["mismatches"]
    );
    println!("  bodies answered with SMFIR_SKIP: {}", r["body_skipped"]);
    println!(
        "  milter CPU s/1000 messages {}, peak RSS {} KiB; generator CPU s/1000 {}",
        f(&r["milter_cpu_s_per_1000"]),
        r["milter_peak_rss_kib"],
        f(&r["generator_cpu_s_per_1000"])
    );
    if let Some(notes) = r["notes"].as_array() {
        for n in notes {
            println!("  note: {}", n.as_str().unwrap_or(""));
        }
    }
}

// ---------------------------------------------------------------- idle

async fn idle(args: IdleArgs) -> Result<ExitCode, String> {
    let endpoint = Endpoint::parse(&args.session.socket)?;
    let timeout = Duration::from_secs_f64(args.session.timeout);
    let client = Client {
        s: &args.session,
        rcpt: "postmaster@mx.bench.test",
        sender_template: "user@w1.bench.test",
        timeout,
        contents: &[],
    };
    let rss_before = args.pid.and_then(|p| vm_kib(p, "VmRSS:"));
    let started = Instant::now();
    let (hold_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let (ready_tx, mut ready_rx) =
        tokio::sync::mpsc::channel::<Result<(), String>>(args.connections.max(1));
    let endpoint = Arc::new(endpoint);
    let session = Arc::new(args.session.clone());
    let mut handles = Vec::new();
    for _ in 0..args.connections {
        let endpoint = Arc::clone(&endpoint);
        let session = Arc::clone(&session);
        let ready = ready_tx.clone();
        let mut hold = hold_tx.subscribe();
        handles.push(tokio::spawn(async move {
            let client = Client {
                s: &session,
                rcpt: "postmaster@mx.bench.test",
                sender_template: "user@w1.bench.test",
                timeout,
                contents: &[],
            };
            let r: Result<(), String> = with_conn!(&*endpoint, client.s, timeout, |c| {
                match open(&mut c, &client).await {
                    Ok(_) => {
                        // A connect and HELO without reply would still
                        // be in the buffer: written, so that the milter
                        // holds the sessions as it would when the MTA's
                        // buffer went out.
                        if !c.buf.is_empty() && c.send().await.is_err() {
                            let _ = ready.send(Err("write".to_owned())).await;
                            return;
                        }
                        let _ = ready.send(Ok(())).await;
                        let _ = hold.recv().await;
                        append_packet(&mut c.buf, proto::C_QUIT, |_| {});
                        let _ = c.send().await;
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e)).await;
                    }
                }
            });
            if let Err(e) = r {
                let _ = ready.send(Err(e)).await;
            }
        }));
    }
    drop(ready_tx);
    let mut opened = 0;
    let mut errors = Vec::new();
    for _ in 0..args.connections {
        match ready_rx.recv().await {
            Some(Ok(())) => opened += 1,
            Some(Err(e)) => errors.push(e),
            None => break,
        }
    }
    let open_time = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let rss_held = args.pid.and_then(|p| vm_kib(p, "VmRSS:"));
    // Does the milter still answer a message while they are open?
    let probe: Result<Result<(Outcome, f64), String>, String> =
        with_conn!(&*endpoint, client.s, timeout, |c| {
            async {
                let (neg, ended) = open(&mut c, &client).await?;
                if let Some(o) = ended {
                    return Ok((o, 0.0));
                }
                let t = Instant::now();
                let (o, _) = transaction(&mut c, &neg, &client, &client.message(0)).await?;
                Ok((o, t.elapsed().as_secs_f64() * 1e3))
            }
            .await
        });
    let probe = probe.and_then(|r| r);
    let _ = hold_tx.send(());
    for h in handles {
        let _ = h.await;
    }
    let hwm = args.pid.and_then(|p| vm_kib(p, "VmHWM:"));
    let report = json!({
        "label": args.label,
        "socket": args.session.socket,
        "connections": args.connections,
        "opened": opened,
        "errors": errors.len(),
        "first_error": errors.first(),
        "open_seconds": open_time,
        "milter_rss_kib_before": rss_before,
        "milter_rss_kib_held": rss_held,
        "milter_peak_rss_kib": hwm,
        "probe_message": match &probe { Ok((o, ms)) => json!({"outcome": format!("{o:?}"), "ms": ms}), Err(e) => json!({"error": e}) },
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} {}: {}/{} sessions open in {:.2} s ({} errors{}); milter RSS {:?} KiB before, {:?} KiB with them open, peak {:?} KiB; probe: {}",
            args.label,
            args.session.socket,
            opened,
            args.connections,
            open_time,
            errors.len(),
            errors
                .first()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default(),
            rss_before,
            rss_held,
            hwm,
            report["probe_message"]
        );
    }
    Ok(if errors.is_empty() && probe.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// ---------------------------------------------------------------- dns-delay

async fn dns_delay(args: DelayArgs) -> Result<ExitCode, String> {
    let socket = Arc::new(
        tokio::net::UdpSocket::bind(args.listen)
            .await
            .map_err(|e| format!("bind {}: {e}", args.listen))?,
    );
    let delay = Duration::from_millis(args.delay_ms);
    let queries = Arc::new(AtomicU64::new(0));
    if let Some(path) = args.count_file.clone() {
        let queries = Arc::clone(&queries);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let n = queries.load(Ordering::Relaxed);
                let _ = std::fs::write(&path, format!("{n}\n"));
            }
        });
    }
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, from) = socket
            .recv_from(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        queries.fetch_add(1, Ordering::Relaxed);
        let query = buf[..len].to_vec();
        let socket = Arc::clone(&socket);
        let upstream = args.upstream;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Ok(up) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
                return;
            };
            if up.send_to(&query, upstream).await.is_err() {
                return;
            }
            let mut answer = vec![0u8; 65535];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(5), up.recv(&mut answer)).await
            {
                let _ = socket.send_to(&answer[..n], from).await;
            }
        });
    }
}

// ---------------------------------------------------------------- syslog-sink

async fn syslog_sink(path: &std::path::Path) -> Result<ExitCode, String> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let socket = tokio::net::UnixDatagram::bind(path)
        .map_err(|e| format!("bind {}: {e}", path.display()))?;
    // Daemons that dropped their privileges log too.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    let mut buf = vec![0u8; 65536];
    loop {
        socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn session() -> Session {
        Session {
            socket: "unix:/unused".to_owned(),
            client_ip: "192.0.2.10".parse().unwrap(),
            client_name: "mail.client.test".to_owned(),
            helo: "mx1.w1.bench.test".to_owned(),
            timeout: 5.0,
            nodelay: false,
        }
    }

    /// Reads one whole packet (length, command, payload) from the MTA side.
    async fn next<R: AsyncRead + Unpin>(r: &mut R) -> (u8, Vec<u8>) {
        let mut p = Vec::new();
        let c = proto::read_async(r, &mut p).await.unwrap();
        (c, p)
    }

    async fn reply<W: AsyncWrite + Unpin>(w: &mut W, command: u8, payload: &[u8]) {
        let mut b = Vec::new();
        append_packet(&mut b, command, |p| p.extend_from_slice(payload));
        w.write_all(&b).await.unwrap();
    }

    /// A scripted milter that asks for no HELO, no reply to headers and
    /// end of headers, no body, its own connect macros, and the leading
    /// space: the generator must send exactly what Postfix would, in order.
    #[tokio::test]
    async fn follows_the_negotiated_steps() {
        let (mta, milter) = tokio::io::duplex(1 << 16);
        let (mr, mw) = tokio::io::split(mta);
        let s = session();
        let client = Client {
            s: &s,
            rcpt: "postmaster@mx.bench.test",
            sender_template: "user@w1.bench.test",
            timeout: Duration::from_secs(5),
            contents: &[],
        };
        let script = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(milter);
            let (c, p) = next(&mut r).await;
            assert_eq!(c, proto::C_OPTNEG);
            // Postfix offers version 6, every action and step flag.
            assert_eq!(&p[..], &[0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff]);
            let protocol = proto::P_NOHELO
                | proto::P_NR_HDR
                | proto::P_NR_EOH
                | proto::P_NOBODY
                | proto::P_HDR_LEADSPC;
            let mut o = Vec::new();
            o.extend_from_slice(&6u32.to_be_bytes());
            o.extend_from_slice(&0x1u32.to_be_bytes());
            o.extend_from_slice(&protocol.to_be_bytes());
            o.extend_from_slice(&0u32.to_be_bytes());
            o.extend_from_slice(b"j {nonexistent}\0");
            reply(&mut w, proto::C_OPTNEG, &o).await;
            // Connect: the milter's own list; only `j` has a value.
            let (c, p) = next(&mut r).await;
            assert_eq!((c, &p[..]), (proto::C_MACRO, &b"Cj\0mx.bench.test\0"[..]));
            let (c, p) = next(&mut r).await;
            assert_eq!(c, proto::C_CONNECT);
            assert!(p.starts_with(b"mail.client.test\x004"));
            reply(&mut w, proto::R_CONTINUE, b"").await;
            // No HELO: MAIL comes next, with Postfix's default MAIL macros
            // that have a value (no {auth_*} for an anonymous client).
            let (c, p) = next(&mut r).await;
            assert_eq!(c, proto::C_MACRO);
            let names: Vec<&[u8]> = proto::cstrings(&p[1..]).into_iter().step_by(2).collect();
            assert_eq!(
                names,
                [&b"i"[..], b"{mail_addr}", b"{mail_host}", b"{mail_mailer}"]
            );
            let (c, p) = next(&mut r).await;
            assert_eq!((c, &p[..]), (proto::C_MAIL, &b"<user@w1.bench.test>\0"[..]));
            reply(&mut w, proto::R_CONTINUE, b"").await;
            let (c, _) = next(&mut r).await;
            assert_eq!(c, proto::C_MACRO);
            let (c, _) = next(&mut r).await;
            assert_eq!(c, proto::C_RCPT);
            reply(&mut w, proto::R_CONTINUE, b"").await;
            let (c, _) = next(&mut r).await;
            assert_eq!(c, proto::C_MACRO);
            let (c, _) = next(&mut r).await;
            assert_eq!(c, proto::C_DATA);
            reply(&mut w, proto::R_CONTINUE, b"").await;
            // Six headers and the end of headers, no reply to any of them.
            for _ in 0..6 {
                let (c, p) = next(&mut r).await;
                assert_eq!(c, proto::C_HEADER);
                let parts = proto::cstrings(&p);
                assert!(
                    parts[1].starts_with(b" "),
                    "SMFIP_HDR_LEADSPC: value keeps its space"
                );
            }
            let (c, _) = next(&mut r).await;
            assert_eq!(c, proto::C_MACRO);
            let (c, _) = next(&mut r).await;
            assert_eq!(c, proto::C_EOH);
            // No body: the end of message follows.
            let (c, _) = next(&mut r).await;
            assert_eq!(c, proto::C_MACRO);
            let (c, _) = next(&mut r).await;
            assert_eq!(c, proto::C_EOM);
            let mut ins = 0u32.to_be_bytes().to_vec();
            ins.extend_from_slice(b"X-Test\0yes\0");
            reply(&mut w, proto::R_INSHEADER, &ins).await;
            reply(&mut w, proto::R_CONTINUE, b"").await;
            // Nothing else before the MTA closes its side.
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).await.unwrap();
            rest
        });
        let mut c = Conn::new(mr, mw, Duration::from_secs(5));
        let (neg, ended) = open(&mut c, &client).await.unwrap();
        assert!(ended.is_none());
        let (outcome, step) = transaction(&mut c, &neg, &client, &client.message(0))
            .await
            .unwrap();
        assert_eq!(step, Step::Eom);
        assert_eq!(
            outcome,
            Outcome::Accepted {
                headers: vec![("X-Test".to_owned(), "yes".to_owned())]
            }
        );
        assert!(
            Expect::parse("header:X-Test:yes")
                .unwrap()
                .matches(&outcome)
        );
        assert!(!Expect::parse("accept").unwrap().matches(&outcome));
        c.w.shutdown().await.unwrap();
        drop(c);
        assert!(script.await.unwrap().is_empty());
    }

    #[test]
    fn a_message_file_is_split_into_fields_and_body_as_postfix_keeps_them() {
        let m = Content::parse(
            b"DKIM-Signature: v=1; a=rsa-sha256;\r\n\td=fail.bench.test; s=bench\r\n\
              From:<a@fail.bench.test>\r\n\r\nline 1\r\n\r\nline 3\r\n",
        )
        .unwrap();
        assert_eq!(
            m.headers,
            [
                (
                    "DKIM-Signature".to_owned(),
                    " v=1; a=rsa-sha256;\n\td=fail.bench.test; s=bench".to_owned()
                ),
                ("From".to_owned(), "<a@fail.bench.test>".to_owned()),
            ]
        );
        assert_eq!(m.body, b"line 1\r\n\r\nline 3\r\n");
        // LF line ends, a field without a colon, a fold first: refused.
        assert!(Content::parse(b"From: a@b\n\nbody\n").is_err());
        assert!(Content::parse(b"From a@b\r\n\r\nbody\r\n").is_err());
        assert!(Content::parse(b" x\r\nFrom: a@b\r\n\r\n").is_err());
        assert!(Content::parse(b"From: a@b\nTo: c@d\r\n\r\n").is_err());
    }

    /// `--message`: Postfix's Received, then the file's fields without
    /// their leading space (no SMFIP_HDR_LEADSPC asked), the body in
    /// 65,535-byte chunks, and none after an SMFIR_SKIP.
    #[tokio::test]
    async fn sends_a_message_file_and_stops_the_body_at_skip() {
        let mut file = b"From: <user@fail.bench.test>\r\nSubject: two\r\n\tlines\r\n\r\n".to_vec();
        let body: Vec<u8> = (0..70_000u32)
            .map(|i| b"abcdefg\r\n"[i as usize % 9])
            .collect();
        file.extend_from_slice(&body);
        let content = Content::parse(&file).unwrap();
        let (mta, milter) = tokio::io::duplex(1 << 20);
        let (mr, mw) = tokio::io::split(mta);
        let s = session();
        let contents = [content];
        let client = Client {
            s: &s,
            rcpt: "postmaster@mx.bench.test",
            sender_template: "user@fail.bench.test",
            timeout: Duration::from_secs(5),
            contents: &contents,
        };
        let expected_first_chunk = body[..BODY_CHUNK].to_vec();
        let script = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(milter);
            let (c, _) = next(&mut r).await;
            assert_eq!(c, proto::C_OPTNEG);
            // Every step, replies to all, SMFIP_SKIP; no macros of its own.
            let mut o = Vec::new();
            o.extend_from_slice(&6u32.to_be_bytes());
            o.extend_from_slice(&0x1u32.to_be_bytes());
            // SMFIP_SKIP (libmilter's mfdef.h).
            o.extend_from_slice(&0x400u32.to_be_bytes());
            reply(&mut w, proto::C_OPTNEG, &o).await;
            let mut fields = Vec::new();
            let mut chunks = Vec::new();
            loop {
                let (c, p) = next(&mut r).await;
                match c {
                    proto::C_MACRO => continue,
                    proto::C_HEADER => {
                        let parts = proto::cstrings(&p);
                        fields.push((parts[0].to_vec(), parts[1].to_vec()));
                    }
                    proto::C_BODY => {
                        chunks.push(p);
                        reply(&mut w, proto::R_SKIP, b"").await;
                        continue;
                    }
                    proto::C_EOM => {
                        reply(&mut w, proto::R_CONTINUE, b"").await;
                        break;
                    }
                    _ => {}
                }
                reply(&mut w, proto::R_CONTINUE, b"").await;
            }
            (fields, chunks)
        });
        let mut c = Conn::new(mr, mw, Duration::from_secs(5));
        let (neg, ended) = open(&mut c, &client).await.unwrap();
        assert!(ended.is_none());
        let (outcome, step) = transaction(&mut c, &neg, &client, &client.message(7))
            .await
            .unwrap();
        assert_eq!(
            (outcome, step),
            (Outcome::Accepted { headers: vec![] }, Step::Eom)
        );
        assert!(c.skipped);
        let (fields, chunks) = script.await.unwrap();
        let names: Vec<&[u8]> = fields.iter().map(|(n, _)| &n[..]).collect();
        assert_eq!(names, [&b"Received"[..], b"From", b"Subject"]);
        assert_eq!(fields[1].1, b"<user@fail.bench.test>");
        assert_eq!(fields[2].1, b"two\n\tlines");
        // One chunk of 65,535 bytes, then nothing more: SMFIR_SKIP.
        assert_eq!(chunks, [expected_first_chunk]);
    }
}
