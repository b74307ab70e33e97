//! The milter's sockets: TCP without Nagle's algorithm, and replies of one
//! stage sent in one write.
//!
//! indymilter writes every protocol message as three writes (length, kind,
//! data) followed by a flush, and reads it as three reads. On a raw TCP
//! socket with Nagle's algorithm on, the small writes of an end-of-message
//! stage (an insert-header action, then the final reply) wait for the
//! MTA's delayed ACK: the reference milter loses ~40 ms per message that
//! way (docs/policyd-spf-compatibility.md §5). So every connection here is
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
//!
//! The listeners also keep `[milter] max_connections` (see [`Gate`]): a
//! connection over it is closed at once, and an accept error never stops
//! the daemon.
//!
//! Reading, [`Coalescing`] hands indymilter whole packets only (see
//! [`Incoming`]): indymilter allocates a packet's announced length as soon
//! as it reads the length, so a peer announcing 1 MiB and sending a few
//! bytes would cost 1 MiB; here what a connection holds follows what it
//! sent, a packet announcing more than [`MAX_PACKET_LEN`] ends the
//! connection before anything is allocated for it, and a connection that
//! sends no complete packet for `[milter] idle_timeout` is closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use indymilter::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::time::Sleep;

use super::rate_limit::RateLimit;

/// Milter protocol replies that never end a stage (sendmail's `SMFIR_*`
/// modification actions): they are always followed by a final reply.
const MODIFICATION_ACTIONS: &[u8] = b"him+2-beq";

/// Above this many bytes held, write even if no final reply came yet (it
/// cannot happen with this milter's few header actions; it bounds memory
/// if it ever did).
const MAX_HELD: usize = 64 * 1024;

/// The largest milter packet read, its length field (command octet and
/// data): indymilter's own limit (1 MiB), checked here before anything is
/// buffered. Postfix's largest packets are far smaller: body chunks of
/// 64 KiB (`MILTER_CHUNK_SIZE`) and headers up to `header_size_limit`
/// (100 KiB by default).
pub const MAX_PACKET_LEN: u32 = 1 << 20;

/// Bytes asked of the socket at a time: a burst of MTA commands in one
/// read; a large packet in steps of at most [`READ_STEP`].
const READ_AHEAD: usize = 4096;
const READ_STEP: usize = 16 * 1024;

/// A connection's stream: whole packets read, coalesced writes.
/// indymilter buffers both ways itself (`BufStream`); a buffer here on top
/// of [`Coalescing`]'s own would only copy every byte once more (and
/// allocate, zeroed, 4 KiB per connection).
pub type MilterStream<S> = Coalescing<S>;

/// The reading side of a connection: bytes from the socket, handed up
/// one whole packet at a time (the framing is indymilter's: a 4-byte
/// big-endian length, then that many octets, the command octet first; a
/// length of 0 still has its command octet).
#[derive(Debug, Default)]
struct Incoming {
    /// Complete packets not yet handed up, then the start of the next.
    buf: Vec<u8>,
    /// Of `buf`, handed up already.
    handed: usize,
    /// Of `buf`, the complete packets: what may be handed up.
    complete: usize,
    /// When the packet being waited for must have arrived
    /// (`idle_timeout` after the wait began); `None` when not waiting.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    /// Where the packet starting at `at` ends, if its length is known:
    /// `Err` for a length over [`MAX_PACKET_LEN`].
    fn packet_end(&self, at: usize) -> io::Result<Option<usize>> {
        let Some(prefix) = self.buf.get(at..at + 4) else {
            return Ok(None);
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len);
        if len > MAX_PACKET_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the MTA announced a packet of {len} bytes, over the limit of {MAX_PACKET_LEN}"
                ),
            ));
        }
        // indymilter reads the command octet even for a length of 0.
        Ok(Some(at + 4 + (len as usize).max(1)))
    }

    /// Moves `complete` over the packets now whole.
    fn scan(&mut self) -> io::Result<()> {
        while let Some(end) = self.packet_end(self.complete)? {
            if end > self.buf.len() {
                break;
            }
            self.complete = end;
        }
        Ok(())
    }

    /// Bytes still missing from the packet after the complete ones (at
    /// least 1: its length, when not yet known, has 4).
    fn missing(&self) -> io::Result<usize> {
        Ok(match self.packet_end(self.complete)? {
            Some(end) => end - self.buf.len(),
            None => self.complete + 4 - self.buf.len(),
        })
    }

    /// Hands up what is complete; `false` if nothing is.
    fn hand_up(&mut self, out: &mut ReadBuf<'_>) -> bool {
        if self.handed == self.complete {
            return false;
        }
        let n = out.remaining().min(self.complete - self.handed);
        out.put_slice(&self.buf[self.handed..self.handed + n]);
        self.handed += n;
        if self.handed == self.complete {
            // Keep only the start of the next packet; give a large
            // packet's memory back.
            self.buf.drain(..self.complete);
            self.handed = 0;
            self.complete = 0;
            if self.buf.capacity() > READ_STEP {
                self.buf.shrink_to(READ_AHEAD);
            }
        }
        true
    }
}

/// Writes held until a stage's final reply is flushed.
#[derive(Debug)]
pub struct Coalescing<S> {
    /// The connection's place under `max_connections`. Declared first,
    /// so dropped first: given back before the socket closes, so that an
    /// MTA that sees the close and connects again finds the place free.
    slot: Option<Slot>,
    inner: S,
    /// Bytes not yet written to `inner`.
    held: Vec<u8>,
    /// Of `held`, already written (a write to `inner` may be partial).
    written: usize,
    /// Where the message being written (not yet flushed) starts in `held`.
    message_start: usize,
    incoming: Incoming,
}

impl<S> Coalescing<S> {
    pub fn new(inner: S) -> Self {
        Self {
            slot: None,
            inner,
            held: Vec::with_capacity(512),
            written: 0,
            message_start: 0,
            incoming: Incoming::default(),
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
    /// Whole packets only (see [`Incoming`]), and none at all after
    /// `idle_timeout` without one: an error that ends the session.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let incoming = &mut this.incoming;
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if incoming.hand_up(out) {
                incoming.deadline = None;
                return Poll::Ready(Ok(()));
            }
            let missing = incoming.missing()?;
            // Read ahead for a burst of small packets; a large one in
            // steps, through a buffer on the stack, so that the memory
            // held (and touched) follows what arrived.
            // Not zeroed: the socket writes what it reads, and only the
            // filled part is looked at (zeroing 16 KiB on every poll cost
            // about a tenth of a warm message's CPU).
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_STEP];
            let step = missing.clamp(READ_AHEAD, READ_STEP);
            let mut read = ReadBuf::uninit(&mut chunk[..step]);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut read);
            let got = read.filled();
            let n = got.len();
            if n > 0 {
                let (len, capacity) = (incoming.buf.len(), incoming.buf.capacity());
                if capacity < len + n {
                    // Doubling, but never past the packet's end (and the
                    // read-ahead): at most twice what arrived.
                    let wanted = (capacity * 2).max(len + n).min(len + missing.max(n));
                    incoming.buf.reserve_exact(wanted - len);
                }
                incoming.buf.extend_from_slice(got);
            }
            match polled {
                Poll::Ready(Ok(())) if n == 0 => {
                    // End of file: indymilter sees it (mid-packet, as an
                    // unexpected end).
                    incoming.deadline = None;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => incoming.scan()?,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    let Some(idle) = this.slot.as_ref().map(Slot::idle_timeout) else {
                        return Poll::Pending;
                    };
                    let deadline = incoming
                        .deadline
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    ready!(deadline.as_mut().poll(cx));
                    incoming.deadline = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "closed after {} s without a complete command from the MTA \
                             (milter.idle_timeout)",
                            idle.as_secs()
                        ),
                    )));
                }
            }
        }
    }
}

fn milter_stream<S: AsyncRead + AsyncWrite + Unpin>(stream: S, slot: Slot) -> MilterStream<S> {
    let mut coalescing = Coalescing::new(stream);
    coalescing.slot = Some(slot);
    coalescing
}

/// `[milter] max_connections`: how many MTA connections are open, and how
/// many may be. Shared by the listener (which takes a [`Slot`] per
/// connection) and the reload (which changes the maximum).
///
/// It also holds `[milter] idle_timeout`, which each connection reads
/// through its slot whenever it starts waiting for a packet, so that a
/// reload applies it to connections already open.
#[derive(Debug)]
pub struct ConnectionLimit {
    open: AtomicUsize,
    max: AtomicUsize,
    /// In milliseconds.
    idle_timeout: AtomicU64,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            idle_timeout: AtomicU64::new(u64::MAX),
        })
    }

    /// How long a connection may wait for its next packet.
    pub fn set_idle_timeout(&self, idle: Duration) {
        let millis = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        self.idle_timeout.store(millis, Ordering::Relaxed);
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout.load(Ordering::Relaxed))
    }

    /// A new maximum, for new connections: open ones over it are left
    /// alone; new ones are refused until fewer are open.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A slot for one more connection, or, at the limit, how many are
    /// open. One compare-exchange (a loop only when connections close
    /// at the same moment).
    pub fn try_acquire(self: &Arc<Self>) -> Result<Slot, usize> {
        let max = self.max();
        let mut open = self.open.load(Ordering::Relaxed);
        loop {
            if open >= max {
                return Err(open);
            }
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(Slot(Arc::clone(self))),
                Err(now) => open = now,
            }
        }
    }
}

/// One connection's place under the limit, given back when dropped (with
/// the connection's stream, which holds it).
#[derive(Debug)]
pub struct Slot(Arc<ConnectionLimit>);

impl Slot {
    fn idle_timeout(&self) -> Duration {
        self.0.idle_timeout()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where the listener reports: log lines (already rate-limited) and each
/// refused connection (for the metrics).
pub struct AcceptHooks {
    pub log: Box<dyn Fn(&str) + Send + Sync>,
    pub refused: Box<dyn Fn() + Send + Sync>,
}

/// How long accepting pauses after an error that is ours (out of file
/// descriptors or memory): long enough not to spin on it, short enough
/// that connections wait in the listen backlog rather than time out.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What every listener does between the socket's `accept` and
/// indymilter: the connection limit, refusals, and accept errors.
///
/// indymilter 0.3 would stop accepting at its own limit (connections wait
/// unanswered in the listen backlog, and Postfix waits for
/// `milter_command_timeout` each) and ends on the first accept error (the
/// daemon exits when it runs out of file descriptors). Here every
/// connection is accepted; one over the limit is closed at once, unread,
/// so that Postfix applies `milter_default_action` at once; and an accept
/// error never reaches indymilter.
pub struct Gate {
    limit: Arc<ConnectionLimit>,
    hooks: AcceptHooks,
    refusals: RateLimit,
    errors: RateLimit,
    pause: Option<Pin<Box<Sleep>>>,
}

impl Gate {
    pub fn new(limit: Arc<ConnectionLimit>, hooks: AcceptHooks) -> Self {
        Self {
            limit,
            hooks,
            refusals: RateLimit::new(1),
            errors: RateLimit::new(1),
            pause: None,
        }
    }

    /// Waits out a pause after an accept error.
    fn poll_pause(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(pause) = &mut self.pause {
            ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        Poll::Ready(())
    }

    /// A slot for a new connection, or `None` (logged, counted): the
    /// connection is to be closed.
    fn admit(&mut self, peer: impl FnOnce() -> String) -> Option<Slot> {
        match self.limit.try_acquire() {
            Ok(slot) => Some(slot),
            Err(open) => {
                (self.hooks.refused)();
                if let Some(left_out) = self.refusals.line(Instant::now()) {
                    let mut line = format!(
                        "refused a connection from {}: {open} connections open, \
                         milter.max_connections = {}",
                        peer(),
                        self.limit.max()
                    );
                    if left_out > 0 {
                        line.push_str(&format!(
                            " ({left_out} more refused since the last such line)"
                        ));
                    }
                    (self.hooks.log)(&line);
                }
                None
            }
        }
    }

    /// An accept error: one of a connection that went away before it was
    /// accepted is skipped; any other (out of file descriptors, buffers
    /// or memory; or unknown) is logged and pauses accepting for
    /// [`ACCEPT_PAUSE`], so as not to spin on it.
    fn accept_error(&mut self, error: &io::Error) {
        if is_connection_error(error) {
            return;
        }
        if let Some(left_out) = self.errors.line(Instant::now()) {
            let mut line = format!(
                "cannot accept a connection: {error}; pausing accepts for {} ms",
                ACCEPT_PAUSE.as_millis()
            );
            if left_out > 0 {
                line.push_str(&format!(
                    " ({left_out} more such errors since the last such line)"
                ));
            }
            (self.hooks.log)(&line);
        }
        self.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_PAUSE)));
    }
}

/// Errors of the connection being accepted, not of the listener: accept(2)
/// on Linux returns the connection's pending network errors, and
/// ECONNABORTED for one reset before it was accepted; EPERM is a firewall
/// rule's refusal; EINTR a signal.
fn is_connection_error(error: &io::Error) -> bool {
    use nix::errno::Errno;
    let Some(code) = error.raw_os_error() else {
        return matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted
        );
    };
    [
        Errno::ECONNABORTED,
        Errno::ECONNRESET,
        Errno::EPROTO,
        Errno::EPERM,
        Errno::EINTR,
        Errno::ENETDOWN,
        Errno::ENOPROTOOPT,
        Errno::EHOSTDOWN,
        Errno::ENONET,
        Errno::EHOSTUNREACH,
        Errno::EOPNOTSUPP,
        Errno::ENETUNREACH,
        Errno::ETIMEDOUT,
    ]
    .iter()
    .any(|&e| e as i32 == code)
}

/// A TCP listener whose connections have `TCP_NODELAY` set.
pub struct TcpMilterListener {
    listener: TcpListener,
    gate: Gate,
}

impl TcpMilterListener {
    pub fn new(listener: TcpListener, gate: Gate) -> Self {
        Self { listener, gate }
    }
}

impl Listener for TcpMilterListener {
    type Io = MilterStream<TcpStream>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        // Each round goes through tokio's accept, which takes from the
        // task's cooperative budget: a flood of refusals or errors yields
        // to the other tasks now and then.
        loop {
            ready!(self.gate.poll_pause(cx));
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, peer)) => {
                    let Some(slot) = self.gate.admit(|| peer.to_string()) else {
                        // Closed unread: the MTA sees the connection end
                        // during its negotiation.
                        drop(stream);
                        continue;
                    };
                    // Without it, a reply waits for the MTA's delayed ACK
                    // (docs/policyd-spf-compatibility.md §5). A failure to set it costs time, not
                    // correctness.
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready(Ok(milter_stream(stream, slot)));
                }
                Err(e) => self.gate.accept_error(&e),
            }
        }
    }
}

/// A UNIX-domain listener with the same buffering.
pub struct UnixMilterListener {
    listener: UnixListener,
    gate: Gate,
}

impl UnixMilterListener {
    pub fn new(listener: UnixListener, gate: Gate) -> Self {
        Self { listener, gate }
    }
}

impl Listener for UnixMilterListener {
    type Io = MilterStream<UnixStream>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        loop {
            ready!(self.gate.poll_pause(cx));
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, _)) => {
                    let Some(slot) = self.gate.admit(|| "unix socket".to_owned()) else {
                        drop(stream);
                        continue;
                    };
                    return Poll::Ready(Ok(milter_stream(stream, slot)));
                }
                Err(e) => self.gate.accept_error(&e),
            }
        }
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
        let (gate, _, _) = gate(ConnectionLimit::new(1));
        let mut listener = TcpMilterListener::new(listener, gate);
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = listener.accept().await.unwrap();
        assert!(accepted.inner.nodelay().unwrap());
    }

    /// One read of at most `max` bytes, without waiting: `None` if the
    /// read would wait.
    fn try_read(
        stream: &mut Coalescing<tokio::io::DuplexStream>,
        max: usize,
    ) -> Option<io::Result<Vec<u8>>> {
        let mut out = vec![0; max];
        let mut buf = ReadBuf::new(&mut out);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(stream).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) => Some(Ok(buf.filled().to_vec())),
            Poll::Ready(Err(e)) => Some(Err(e)),
            Poll::Pending => None,
        }
    }

    fn wire(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut p = u32::try_from(data.len() + 1)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        p.push(kind);
        p.extend_from_slice(data);
        p
    }

    #[tokio::test]
    async fn a_packet_is_handed_up_only_whole_and_what_is_held_follows_what_arrived() {
        let (ours, mut peer) = tokio::io::duplex(1 << 21);
        let mut stream = Coalescing::new(ours);
        // A header packet announcing 1 MiB, of which 1000 bytes came:
        // nothing for indymilter (which would allocate the 1 MiB), and
        // what is held is about what came, not what was announced.
        let data = vec![b'x'; (MAX_PACKET_LEN - 1) as usize];
        let packet = wire(b'L', &data);
        peer.write_all(&packet[..1005]).await.unwrap();
        assert!(
            try_read(&mut stream, 1 << 21).is_none(),
            "handed up in part"
        );
        assert_eq!(stream.incoming.buf.len(), 1005);
        assert!(
            stream.incoming.buf.capacity() <= 2 * READ_STEP,
            "{} bytes held for 1005 received",
            stream.incoming.buf.capacity()
        );
        // Half of it: still nothing, and at most twice that held.
        let half = packet.len() / 2;
        peer.write_all(&packet[1005..half]).await.unwrap();
        while stream.incoming.buf.len() < half {
            assert!(try_read(&mut stream, 1 << 21).is_none());
        }
        assert!(stream.incoming.buf.capacity() <= 2 * half);
        // The rest, and two small packets behind it: everything, in
        // order, and never a packet in part.
        let small = [wire(b'H', b"pass.test\0"), wire(b'A', b"")].concat();
        peer.write_all(&packet[half..]).await.unwrap();
        peer.write_all(&small).await.unwrap();
        let ends = [packet.len(), packet.len() + 15, packet.len() + 20];
        let mut got = Vec::new();
        while got.len() < ends[2] {
            match try_read(&mut stream, 1 << 21) {
                Some(Ok(bytes)) => {
                    got.extend(bytes);
                    assert!(ends.contains(&got.len()), "a packet in part: {}", got.len());
                }
                Some(Err(e)) => panic!("{e}"),
                None => tokio::task::yield_now().await,
            }
        }
        assert!(got == [packet, small].concat());
        assert!(
            stream.incoming.buf.capacity() <= READ_STEP,
            "a large packet's memory is given back"
        );
        // The end of the stream reaches the reader.
        drop(peer);
        assert_eq!(try_read(&mut stream, 4096).unwrap().unwrap(), b"");
    }

    #[tokio::test]
    async fn a_packet_over_the_limit_ends_the_connection_before_its_data() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut stream = Coalescing::new(ours);
        // indymilter's limit, the largest that is read:
        peer.write_all(&MAX_PACKET_LEN.to_be_bytes()).await.unwrap();
        assert!(try_read(&mut stream, 4096).is_none());
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut stream = Coalescing::new(ours);
        peer.write_all(&(MAX_PACKET_LEN + 1).to_be_bytes())
            .await
            .unwrap();
        let e = try_read(&mut stream, 4096).unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            e.to_string(),
            "the MTA announced a packet of 1048577 bytes, over the limit of 1048576"
        );
        // A length of 0 still has its command octet, as indymilter
        // reads it: handed up with it, in step with indymilter.
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut stream = Coalescing::new(ours);
        peer.write_all(b"\0\0\0\0Q\0\0\0\x01A").await.unwrap();
        assert_eq!(
            try_read(&mut stream, 4096).unwrap().unwrap(),
            b"\0\0\0\0Q\0\0\0\x01A"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_complete_packet_for_idle_timeout_is_closed() {
        let limit = ConnectionLimit::new(10);
        limit.set_idle_timeout(Duration::from_secs(600));
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut stream = Coalescing::new(ours);
        stream.slot = Some(limit.try_acquire().unwrap());
        // Packets 599 s apart: each wait is under the limit.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(599)).await;
            peer.write_all(&wire(b'H', b"x\0")).await.unwrap();
            let got = stream.read(&mut [0; 64]).await.unwrap();
            assert_eq!(got, 7);
        }
        // Half a packet, then the rest 599 s later: the wait is for a
        // whole packet, so dripping bytes does not extend it.
        let packet = wire(b'H', b"x\0");
        peer.write_all(&packet[..3]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(300)).await;
        peer.write_all(&packet[3..5]).await.unwrap();
        let started = tokio::time::Instant::now();
        let e = stream.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            e.to_string(),
            "closed after 600 s without a complete command from the MTA (milter.idle_timeout)"
        );
        // The wait began with the read, after the 300 s sleep.
        assert_eq!(started.elapsed(), Duration::from_secs(600));
        // A reload's new value applies to the next wait.
        limit.set_idle_timeout(Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let e = stream.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    type Lines = Arc<std::sync::Mutex<Vec<String>>>;

    /// A gate whose log lines and refusals are recorded.
    fn gate(limit: Arc<ConnectionLimit>) -> (Gate, Lines, Arc<AtomicUsize>) {
        let lines = Lines::default();
        let refused = Arc::new(AtomicUsize::new(0));
        let (l, r) = (Arc::clone(&lines), Arc::clone(&refused));
        let hooks = AcceptHooks {
            log: Box::new(move |line: &str| l.lock().unwrap().push(line.to_owned())),
            refused: Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        };
        (Gate::new(limit, hooks), lines, refused)
    }

    #[test]
    fn slots_are_given_back_when_dropped() {
        let limit = ConnectionLimit::new(2);
        let a = limit.try_acquire().expect("first");
        let b = limit.try_acquire().expect("second");
        assert_eq!(limit.try_acquire().unwrap_err(), 2, "over the limit");
        drop(a);
        assert_eq!(limit.open(), 1);
        let c = limit.try_acquire().expect("below the limit again");
        // Lowered under the open count: the open ones stay, new ones wait
        // until fewer are open than the new maximum.
        limit.set_max(1);
        assert_eq!(limit.try_acquire().unwrap_err(), 2);
        drop(b);
        assert_eq!(limit.try_acquire().unwrap_err(), 1);
        drop(c);
        let d = limit.try_acquire().expect("below the lowered limit");
        drop(d);
        assert_eq!(limit.open(), 0);
    }

    #[test]
    fn slots_are_counted_exactly_under_contention() {
        // 8 threads take and give back slots of a limit of 5 as fast as
        // they can: never more than 5 held at once, none lost.
        const MAX: usize = 5;
        let limit = ConnectionLimit::new(MAX);
        let held = Arc::new(AtomicUsize::new(0));
        let granted = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (limit, held, granted) =
                    (Arc::clone(&limit), Arc::clone(&held), Arc::clone(&granted));
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Ok(slot) = limit.try_acquire() {
                            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= MAX, "{now} slots held at once");
                            granted.fetch_add(1, Ordering::SeqCst);
                            held.fetch_sub(1, Ordering::SeqCst);
                            drop(slot);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(limit.open(), 0, "a slot was lost or given back twice");
        assert!(granted.load(Ordering::SeqCst) > 0);
    }

    #[tokio::test]
    async fn a_connection_over_the_limit_is_closed_at_once_and_logged() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (gate, lines, refused) = gate(ConnectionLimit::new(1));
        let mut listener = TcpMilterListener::new(listener, gate);
        let _first = TcpStream::connect(addr).await.unwrap();
        let held = listener.accept().await.unwrap();
        let mut over = TcpStream::connect(addr).await.unwrap();
        let over_port = over.local_addr().unwrap().port();
        let mut after = TcpStream::connect(addr).await.unwrap();
        // The accept loop refuses `over` and `after` and waits for more:
        // run it briefly.
        let accepting = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(accepting.is_err(), "a connection was served over the limit");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), over.read(&mut buf))
            .await
            .expect("the refused connection is closed at once");
        assert!(
            matches!(read, Ok(0)) || read.is_err(),
            "refused, yet answered: {read:?}"
        );
        assert_eq!(refused.load(Ordering::SeqCst), 2, "both counted");
        {
            let lines = lines.lock().unwrap();
            assert_eq!(
                *lines,
                [format!(
                    "refused a connection from 127.0.0.1:{over_port}: 1 connections open, milter.max_connections = 1"
                )],
                "the second refusal within the second is not a line"
            );
        }
        // Below the limit again: the next connection is served.
        drop(held);
        let _next = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), listener.accept())
            .await
            .expect("served once below the limit")
            .unwrap();
        let read = tokio::time::timeout(Duration::from_secs(2), after.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }

    #[tokio::test]
    async fn unix_refusals_name_the_socket() {
        let dir = std::env::temp_dir().join(format!("spfmilter-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("limit.sock");
        let _ = std::fs::remove_file(&path);
        let (gate, lines, _) = gate(ConnectionLimit::new(0));
        let mut listener = UnixMilterListener::new(UnixListener::bind(&path).unwrap(), gate);
        let mut over = UnixStream::connect(&path).await.unwrap();
        let accepting = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepting.is_err());
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), over.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "refused a connection from unix socket: 0 connections open, milter.max_connections = 0"
            ]
        );
        // Two more within the second: counted; the next line, a second
        // later, says how many were left out.
        let _a = UnixStream::connect(&path).await.unwrap();
        let _b = UnixStream::connect(&path).await.unwrap();
        let accepting = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepting.is_err());
        listener.gate.refusals.start = Some(Instant::now() - Duration::from_secs(1));
        let _c = UnixStream::connect(&path).await.unwrap();
        let accepting = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepting.is_err());
        assert_eq!(
            lines.lock().unwrap()[1..],
            [
                "refused a connection from unix socket: 0 connections open, milter.max_connections = 0 (2 more refused since the last such line)"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn accept_errors_of_ours_pause_and_are_logged_others_are_skipped() {
        let (mut gate, lines, _) = gate(ConnectionLimit::new(1));
        // A connection reset before it was accepted: nothing to say.
        gate.accept_error(&io::Error::from_raw_os_error(nix::libc::ECONNABORTED));
        assert!(gate.pause.is_none());
        assert!(lines.lock().unwrap().is_empty());
        // Out of file descriptors: a line, and a pause.
        let emfile = io::Error::from_raw_os_error(nix::libc::EMFILE);
        gate.accept_error(&emfile);
        assert!(gate.pause.is_some());
        gate.accept_error(&emfile);
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("cannot accept a connection: ")
                && lines[0].contains("os error 24")
                && lines[0].ends_with("; pausing accepts for 100 ms"),
            "{lines:?}"
        );
    }
}
