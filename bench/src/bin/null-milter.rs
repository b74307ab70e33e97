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
                    .insert(MacroStage::Mail, c"i {auth_authen}".into());
                cx.requested_macros.insert(MacroStage::Eom, c"i".into());
                // As spfmilter's negotiation (src/milter/negotiate.rs):
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

#[cfg(test)]
mod tests {
    use super::*;
    use milter_codec::{
        C_BODY, C_CONNECT, C_EOM, C_MAIL, C_OPTNEG, C_QUIT, C_RCPT, R_CONTINUE, R_INSHEADER,
        R_SKIP, append_cstr, optneg, packet, read_packet,
    };
    use std::io::Write;

    // Protocol flags of libmilter's mfdef.h.
    const NOBODY: u32 = 0x10;
    const SKIP: u32 = 0x400;
    const HDR_LEADSPC: u32 = 0x100000;

    /// Negotiates with the null milter in mode `body` as Postfix does
    /// (every step and flag offered), sends one message with a body, and
    /// returns the protocol flags it chose and the commands it answered
    /// the body chunk (if it asked for one) and the end of message with.
    async fn session(body: Body, name: &str) -> (u32, Option<u8>, Vec<u8>) {
        let path =
            std::env::temp_dir().join(format!("null-milter-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(indymilter::run(
            listener,
            callbacks(body),
            indymilter::Config::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let client_path = path.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(client_path).unwrap();
            s.write_all(&optneg()).unwrap();
            let (c, p) = read_packet(&mut s).unwrap();
            assert_eq!(c, C_OPTNEG);
            let flags = u32::from_be_bytes(p[8..12].try_into().unwrap());
            let mut connect = Vec::new();
            append_cstr(&mut connect, b"client.test");
            connect.push(b'4');
            connect.extend_from_slice(&25u16.to_be_bytes());
            append_cstr(&mut connect, b"192.0.2.10");
            s.write_all(&packet(C_CONNECT, &connect)).unwrap();
            assert_eq!(read_packet(&mut s).unwrap().0, R_CONTINUE);
            s.write_all(&packet(C_MAIL, b"<a@example.org>\0")).unwrap();
            assert_eq!(read_packet(&mut s).unwrap().0, R_CONTINUE);
            s.write_all(&packet(C_RCPT, b"<b@example.org>\0")).unwrap();
            assert_eq!(read_packet(&mut s).unwrap().0, R_CONTINUE);
            let body_reply = (flags & NOBODY == 0).then(|| {
                s.write_all(&packet(C_BODY, b"text\r\n")).unwrap();
                read_packet(&mut s).unwrap().0
            });
            s.write_all(&packet(C_EOM, b"")).unwrap();
            let eom = vec![
                read_packet(&mut s).unwrap().0,
                read_packet(&mut s).unwrap().0,
            ];
            s.write_all(&packet(C_QUIT, b"")).unwrap();
            (flags, body_reply, eom)
        })
        .await
        .unwrap();
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        let _ = std::fs::remove_file(&path);
        result
    }

    #[tokio::test]
    async fn the_body_modes_negotiate_and_answer_as_spfmilter_does() {
        // Without --body: no body step (spfmilter without [rescue]).
        let (flags, body, eom) = session(Body::None, "none").await;
        assert_ne!(flags & NOBODY, 0);
        assert_eq!(body, None);
        assert_eq!(eom, [R_INSHEADER, R_CONTINUE]);
        // --body skip: the body step, SKIP and the leading space, and
        // SMFIS_SKIP to the chunk (spfmilter with [rescue], not held).
        let (flags, body, eom) = session(Body::Skip, "skip").await;
        assert_eq!(flags & (NOBODY | SKIP | HDR_LEADSPC), SKIP | HDR_LEADSPC);
        assert_eq!(body, Some(R_SKIP));
        assert_eq!(eom, [R_INSHEADER, R_CONTINUE]);
        // --body read: the same steps, every chunk read (a held message).
        let (flags, body, eom) = session(Body::Read, "read").await;
        assert_eq!(flags & (NOBODY | SKIP | HDR_LEADSPC), SKIP | HDR_LEADSPC);
        assert_eq!(body, Some(R_CONTINUE));
        assert_eq!(eom, [R_INSHEADER, R_CONTINUE]);
    }
}
