//! A milter that does nothing but what the protocol asks, on the same
//! library (indymilter 0.3) and runtime (tokio, multi-threaded) as
//! spfmilter: the protocol ceiling of this machine.
//!
//! It negotiates like spfmilter (actions ADD_HEADER | CHANGE_HEADER; the
//! macros `j` at connect and `{auth_authen}` at MAIL FROM; callbacks for
//! connect, HELO, MAIL, RCPT, header, EOM and abort, so indymilter asks the
//! MTA for the same steps), accepts everything and inserts one header of a
//! Received-SPF-like length at the end of each message.
//!
//! With `--body skip` it negotiates like spfmilter with `[rescue]` on:
//! the body step too, SMFIP_SKIP and SMFIP_HDR_LEADSPC if the MTA offers
//! them, and it answers the first body chunk with SMFIS_SKIP (what
//! spfmilter answers a message that is not held). With `--body read` it
//! asks for the body and reads all of it (what spfmilter does with a
//! held message), answering every chunk with SMFIS_CONTINUE.
//!
//! `null-milter [--nagle] [--body skip|read] --socket inet:127.0.0.1:PORT`
//! or `--socket unix:/PATH`.

use std::io;
use std::process::ExitCode;
use std::task::{Context, Poll};

use indymilter::{
    Actions, Callbacks, ContextActions, MacroStage, NegotiateContext, ProtoOpts, Status,
};

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

/// The body step: none (spfmilter without `[rescue]`), or asked for and
/// answered as spfmilter with `[rescue]` answers a message it does not
/// hold (`Skip`) or one it holds (`Read`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Skip,
    Read,
}

fn callbacks(body: Body) -> Callbacks<()> {
    let callbacks = Callbacks::new()
        .on_negotiate(move |cx: &mut NegotiateContext<()>, _, offered| {
            Box::pin(async move {
                cx.requested_actions = Actions::ADD_HEADER | Actions::CHANGE_HEADER;
                cx.requested_macros.insert(MacroStage::Connect, c"j".into());
                cx.requested_macros
                    .insert(MacroStage::Mail, c"{auth_authen}".into());
                // As spfmilter's protocol_options (src/milter/mod.rs):
                // with the body, SMFIP_SKIP and SMFIP_HDR_LEADSPC if offered.
                if body != Body::None {
                    cx.requested_opts |= offered & (ProtoOpts::SKIP | ProtoOpts::LEADING_SPACE);
                }
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
        .on_abort(|_| Box::pin(async { Status::Continue }));
    match body {
        Body::None => callbacks,
        Body::Skip => callbacks.on_body(|_, _| Box::pin(async { Status::Skip })),
        Body::Read => callbacks.on_body(|_, _| Box::pin(async { Status::Continue })),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let nagle = args.iter().any(|a| a == "--nagle");
    args.retain(|a| a != "--nagle");
    let mut body = Body::None;
    if let Some(i) = args.iter().position(|a| a == "--body") {
        body = match args.get(i + 1).map(String::as_str) {
            Some("skip") => Body::Skip,
            Some("read") => Body::Read,
            _ => {
                eprintln!("null-milter: --body skip or --body read");
                return ExitCode::from(2);
            }
        };
        args.drain(i..i + 2);
    }
    let socket = match args.as_slice() {
        [flag, socket] if flag == "--socket" => socket.clone(),
        _ => {
            eprintln!(
                "usage: null-milter [--nagle] [--body skip|read] --socket inet:HOST:PORT|unix:/PATH"
            );
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
            Ok(listener) if nagle => {
                indymilter::run(listener, callbacks(body), config, shutdown).await
            }
            Ok(listener) => {
                indymilter::run(NoDelay(listener), callbacks(body), config, shutdown).await
            }
            Err(e) => {
                eprintln!("null-milter: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else if let Some(path) = socket.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        match tokio::net::UnixListener::bind(path) {
            Ok(listener) => {
                let served = indymilter::run(listener, callbacks(body), config, shutdown).await;
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
