//! A milter that does nothing but what the protocol asks, on the same
//! library (indymilter 0.3) and runtime (tokio, multi-threaded) as
//! spfmilter: the protocol ceiling of this machine.
//!
//! It asks for what spfmilter needs of the MTA in its default
//! configuration (actions ADD_HEADER | CHANGE_HEADER; the macros `j` at
//! connect, `i {auth_authen}` at MAIL FROM and `i` at end of message;
//! callbacks for connect, HELO, MAIL, RCPT, header, EOM and abort, so
//! indymilter asks the MTA for the same steps), accepts everything and
//! inserts one header of a Received-SPF-like length at the end of each
//! message. It waits for a reply at every step it asks for: the replies
//! spfmilter leaves out (`SMFIP_NR_*`) are savings of spfmilter's, not
//! of the ceiling's.
//!
//! `null-milter --socket inet:127.0.0.1:PORT` or `--socket unix:/PATH`.

use std::io;
use std::process::ExitCode;
use std::task::{Context, Poll};

use indymilter::{Actions, Callbacks, ContextActions, MacroStage, NegotiateContext, Status};

/// What the header says: as long as a typical Received-SPF value, so the
/// bytes on the wire match spfmilter's.
const HEADER_VALUE: &str = "Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.10; \
helo=mx1.w1.bench.test; envelope-from=user@w1.bench.test; receiver=<UNKNOWN>";

/// TCP with Nagle's algorithm off on every accepted connection: a reply
/// written right after a modification action (two small writes) must not
/// wait for the MTA's delayed ACK. This is the ceiling; `--nagle` leaves
/// the algorithm on to show what it costs.
struct NoDelay(tokio::net::TcpListener);

impl indymilter::Listener for NoDelay {
    type Io = tokio::net::TcpStream;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        self.0.poll_accept(cx).map_ok(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        })
    }
}

fn callbacks() -> Callbacks<()> {
    Callbacks::new()
        .on_negotiate(|cx: &mut NegotiateContext<()>, _, _| {
            Box::pin(async move {
                cx.requested_actions = Actions::ADD_HEADER | Actions::CHANGE_HEADER;
                cx.requested_macros.insert(MacroStage::Connect, c"j".into());
                cx.requested_macros
                    .insert(MacroStage::Mail, c"i {auth_authen}".into());
                cx.requested_macros.insert(MacroStage::Eom, c"i".into());
                Status::Continue
            })
        })
        .on_connect(|_, _, _| Box::pin(async { Status::Continue }))
        .on_helo(|_, _| Box::pin(async { Status::Continue }))
        .on_mail(|_, _| Box::pin(async { Status::Continue }))
        .on_rcpt(|_, _| Box::pin(async { Status::Continue }))
        .on_header(|_, _, _| Box::pin(async { Status::Continue }))
        .on_eom(|cx| {
            Box::pin(async move {
                let _ = cx
                    .actions
                    .insert_header(0, "X-Null-Milter", HEADER_VALUE)
                    .await;
                Status::Continue
            })
        })
        .on_abort(|_| Box::pin(async { Status::Continue }))
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let nagle = args.iter().any(|a| a == "--nagle");
    args.retain(|a| a != "--nagle");
    let socket = match args.as_slice() {
        [flag, socket] if flag == "--socket" => socket.clone(),
        _ => {
            eprintln!("usage: null-milter [--nagle] --socket inet:HOST:PORT|unix:/PATH");
            return ExitCode::from(2);
        }
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let config = indymilter::Config {
        max_connections: 4096,
        ..Default::default()
    };
    let served = if let Some(addr) = socket.strip_prefix("inet:") {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) if nagle => indymilter::run(listener, callbacks(), config, shutdown).await,
            Ok(listener) => indymilter::run(NoDelay(listener), callbacks(), config, shutdown).await,
            Err(e) => {
                eprintln!("null-milter: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else if let Some(path) = socket.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        match tokio::net::UnixListener::bind(path) {
            Ok(listener) => {
                let served = indymilter::run(listener, callbacks(), config, shutdown).await;
                let _ = std::fs::remove_file(path);
                served
            }
            Err(e) => {
                eprintln!("null-milter: cannot listen on {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        eprintln!("null-milter: socket must be inet:HOST:PORT or unix:/PATH");
        return ExitCode::from(2);
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("null-milter: {e}");
            ExitCode::FAILURE
        }
    }
}
