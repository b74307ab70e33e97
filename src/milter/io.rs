//! The milter's sockets: TCP without Nagle's algorithm, and replies of one
//! stage sent in one write.
//!
//! indymilter writes every protocol message as three writes (length, kind,
//! data) followed by a flush, and reads it as three reads. On a raw TCP
//! socket with Nagle's algorithm on, the small writes of an end-of-message
//! stage (an insert-header action, then the final reply) wait for the
//! MTA's delayed ACK: the reference milter loses ~40 ms per message that
//! way (spec §5). So every connection here is
//!
//! * read through a buffer (one `read` per burst of MTA commands), and
//! * written through [`Coalescing`]: a message is held until its flush;
//!   a flushed *modification action* (add/insert/change header, recipient
//!   and body changes) is held further, because the milter protocol always
//!   follows those with the stage's final reply, and everything goes out
//!   in one write with that reply;
//!
//! and TCP connections have `TCP_NODELAY` set, so that one write leaves at
//! once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use indymilter::Listener;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// Milter protocol replies that never end a stage (sendmail's `SMFIR_*`
/// modification actions): they are always followed by a final reply.
const MODIFICATION_ACTIONS: &[u8] = b"him+2-beq";

/// Above this many bytes held, write even if no final reply came yet (it
/// cannot happen with this milter's few header actions; it bounds memory
/// if it ever did).
const MAX_HELD: usize = 64 * 1024;

/// A connection's stream: buffered reads, coalesced writes.
pub type MilterStream<S> = BufReader<Coalescing<S>>;

/// Writes held until a stage's final reply is flushed.
#[derive(Debug)]
pub struct Coalescing<S> {
    inner: S,
    /// Bytes not yet written to `inner`.
    held: Vec<u8>,
    /// Of `held`, already written (a write to `inner` may be partial).
    written: usize,
    /// Where the message being written (not yet flushed) starts in `held`.
    message_start: usize,
}

impl<S> Coalescing<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            held: Vec::with_capacity(512),
            written: 0,
            message_start: 0,
        }
    }

    /// The milter message kind of the message last written: the byte after
    /// its 4-byte length.
    fn last_kind(&self) -> Option<u8> {
        self.held.get(self.message_start + 4).copied()
    }
}

impl<S: AsyncWrite + Unpin> Coalescing<S> {
    /// Writes out everything held.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.held.clear();
        self.written = 0;
        self.message_start = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalescing<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.len() >= MAX_HELD {
            ready!(this.poll_write_held(cx))?;
        }
        this.held.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.written == 0
            && this.held.len() < MAX_HELD
            && this
                .last_kind()
                .is_some_and(|kind| MODIFICATION_ACTIONS.contains(&kind))
        {
            // A modification action: its stage's final reply follows.
            this.message_start = this.held.len();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalescing<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

fn milter_stream<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> MilterStream<S> {
    BufReader::with_capacity(4096, Coalescing::new(stream))
}

/// A TCP listener whose connections have `TCP_NODELAY` set.
pub struct TcpMilterListener(pub TcpListener);

impl Listener for TcpMilterListener {
    type Io = MilterStream<TcpStream>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        let (stream, _) = ready!(self.0.poll_accept(cx))?;
        // Without it, a reply waits for the MTA's delayed ACK (spec §5). A
        // failure to set it costs time, not correctness.
        let _ = stream.set_nodelay(true);
        Poll::Ready(Ok(milter_stream(stream)))
    }
}

/// A UNIX-domain listener with the same buffering.
pub struct UnixMilterListener(pub UnixListener);

impl Listener for UnixMilterListener {
    type Io = MilterStream<UnixStream>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        let (stream, _) = ready!(self.0.poll_accept(cx))?;
        Poll::Ready(Ok(milter_stream(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes one milter message the way indymilter does: length, kind,
    /// data, flush.
    async fn send(stream: &mut Coalescing<tokio::io::DuplexStream>, kind: u8, data: &[u8]) {
        let len = u32::try_from(data.len() + 1).unwrap();
        stream.write_u32(len).await.unwrap();
        stream.write_u8(kind).await.unwrap();
        stream.write_all(data).await.unwrap();
        stream.flush().await.unwrap();
    }

    fn available(peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut out = vec![0; 1024];
        let mut buf = ReadBuf::new(&mut out);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match Pin::new(peer).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) => buf.filled().to_vec(),
            _ => Vec::new(),
        }
    }

    #[tokio::test]
    async fn header_actions_wait_for_the_final_reply_and_leave_with_it() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut stream = Coalescing::new(ours);
        // SMFIR_INSHEADER ('i') then SMFIR_CHGHEADER ('m'): held.
        send(&mut stream, b'i', b"\0\0\0\0X\0v\0").await;
        send(&mut stream, b'm', b"\0\0\0\x01Y\0\0").await;
        assert!(available(&mut peer).is_empty(), "actions were sent early");
        // SMFIR_CONTINUE ('c'): everything in order, in one piece.
        send(&mut stream, b'c', b"").await;
        let got = available(&mut peer);
        let mut expected = Vec::new();
        expected.extend_from_slice(b"\0\0\0\x09i\0\0\0\0X\0v\0");
        expected.extend_from_slice(b"\0\0\0\x08m\0\0\0\x01Y\0\0");
        expected.extend_from_slice(b"\0\0\0\x01c");
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn final_replies_and_progress_go_out_at_once() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut stream = Coalescing::new(ours);
        // SMFIR_PROGRESS ('p') must reach the MTA while the milter works.
        send(&mut stream, b'p', b"").await;
        assert_eq!(available(&mut peer), b"\0\0\0\x01p");
        // SMFIR_REPLYCODE ('y').
        send(&mut stream, b'y', b"550 5.7.23 no\0").await;
        assert_eq!(available(&mut peer), b"\0\0\0\x0fy550 5.7.23 no\0");
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_held() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut stream = Coalescing::new(ours);
        send(&mut stream, b'h', b"X\0v\0").await;
        stream.shutdown().await.unwrap();
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"\0\0\0\x05hX\0v\0");
    }

    #[tokio::test]
    async fn tcp_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = TcpMilterListener(listener);
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = listener.accept().await.unwrap();
        assert!(accepted.get_ref().inner.nodelay().unwrap());
    }
}
