//! A small authoritative DNS server on loopback, serving a [`Zone`], so
//! that tests exercise the real resolver, the wire format and both
//! transports.
//!
//! What it answers (RFC 1034 §4.3.2, RFC 1035 §4.1, RFC 2308):
//!
//! * every answer has AA set; RA is clear (it does not recurse);
//! * records of the asked type, preceded by the CNAME chain that led to
//!   them, as CNAME records (the zone follows CNAMEs inside itself);
//! * NXDOMAIN for a name not in the zone (after any CNAMEs), NODATA
//!   (NOERROR, empty answer) for a name without the asked type; both with an
//!   SOA in the authority section whose MINIMUM and TTL are the negative TTL
//!   (RFC 2308 §3), owned by the name's top-level label, a stand-in apex;
//! * no answer at all where the zone says [`Entry::Timeout`];
//! * SERVFAIL for a CNAME loop (the zone's `CnameLoop`), so the resolver
//!   reports a temporary error as [`Zone`] itself does;
//! * over UDP, an answer larger than the client's limit (512 octets, or its
//!   EDNS payload size, RFC 6891 §6.2.5; optionally capped further with
//!   [`ServerOptions::udp_payload_limit`]) is replaced by an empty one with
//!   TC set (RFC 1035 §4.2.1), so the client has to retry over TCP
//!   (RFC 7766), where the full answer comes back.
//!
//! Each string of a TXT entry is sent as character-strings of at most 255
//! octets (RFC 1035 §3.3), so multi-string records reach the client as such. A [`Entry::Txt`] with no strings at all cannot be put on
//! the wire (TXT-DATA is one or more character-strings), so it is served as
//! one empty string; the resolver then sees an empty TXT record, which is
//! what the zone's own lookup returns for it.
//!
//! For types other than the five SPF uses, the server answers the CNAME
//! at the name if there is one, times out if the name has a `Timeout`
//! entry, and otherwise gives NODATA or NXDOMAIN.
//!
//! The server runs on its own thread with its own Tokio runtime, so it
//! works the same under synchronous tests and under any test runtime. It
//! stops when dropped.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use spfmilter::dns::zone::{Entry, RecordType as ZoneType, Resolution, Zone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;

/// How the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// TTL of every record served.
    pub ttl: u32,
    /// TTL and MINIMUM of the SOA record sent with NXDOMAIN and NODATA,
    /// i.e. the negative TTL (RFC 2308 §5).
    pub negative_ttl: u32,
    /// If set, UDP answers longer than this are truncated even when the
    /// client's EDNS payload size would allow them.
    pub udp_payload_limit: Option<u16>,
    /// Misbehaviour for some names (compared without case, any query
    /// type): see [`Fault`].
    pub faults: Vec<(String, Fault)>,
}

/// How the server misbehaves for a name, to test how the resolver and
/// the milter live with broken DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// RCODE 2, SERVFAIL (RFC 1035 §4.1.1), over UDP and TCP.
    ServFail,
    /// Bytes that are no DNS message, over UDP and TCP.
    Garbage,
    /// The right answer under another message ID (RFC 1035 §4.1.1: the ID
    /// matches replies to queries; RFC 5452 §9.1: a reply that does not
    /// match is discarded).
    WrongId,
    /// An answer about another name: its question section and records
    /// name `lure.<name>`, with an SPF record that allows everything (RFC
    /// 5452 §9.1: a reply whose question does not match is discarded).
    OtherName,
    /// Over UDP, an empty answer with TC set whatever its size (RFC 1035
    /// §4.2.1); the full answer over TCP (RFC 7766).
    Truncated,
    /// Over UDP, TC set as in [`Fault::Truncated`]; over TCP, the
    /// connection is closed without an answer.
    TruncatedTcpDown,
    /// The right answer, this late.
    Delay(std::time::Duration),
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            ttl: 3600,
            negative_ttl: 300,
            udp_payload_limit: None,
            faults: Vec::new(),
        }
    }
}

/// What the server has seen, for tests to check what went over the wire.
#[derive(Debug, Default)]
struct Counters {
    udp: AtomicU64,
    tcp: AtomicU64,
    truncated: AtomicU64,
    dropped: AtomicU64,
    faulty: AtomicU64,
}

/// A running server. See the module documentation.
pub struct TestDnsServer {
    addr: SocketAddr,
    counters: Arc<Counters>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The largest UDP query we accept; queries are small, this is generous.
const MAX_QUERY: usize = 4096;
/// The EDNS payload size the server advertises (the DNS Flag Day 2020
/// value, also hickory's default).
const SERVER_PAYLOAD: u16 = 1232;

impl TestDnsServer {
    /// Starts serving `zone` with default options.
    pub fn start(zone: Arc<Zone>) -> Self {
        Self::start_with(zone, ServerOptions::default())
    }

    /// Starts serving `zone` on 127.0.0.1, UDP and TCP on the same port.
    pub fn start_with(zone: Arc<Zone>, options: ServerOptions) -> Self {
        Self::start_bound(bind_pair(), zone, options)
    }

    /// Starts serving on 127.0.0.1:`port` (UDP and TCP), if that port is
    /// free for both: e.g. where a server was down a moment ago.
    pub fn start_on(port: u16, zone: Arc<Zone>, options: ServerOptions) -> Option<Self> {
        let udp = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, port)).ok()?;
        let tcp = StdTcpListener::bind((Ipv4Addr::LOCALHOST, port)).ok()?;
        Some(Self::start_bound((udp, tcp), zone, options))
    }

    fn start_bound(
        (udp, tcp): (StdUdpSocket, StdTcpListener),
        zone: Arc<Zone>,
        options: ServerOptions,
    ) -> Self {
        let addr = udp.local_addr().expect("UDP socket address");
        let counters = Arc::new(Counters::default());
        let (shutdown, stop) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("test-dns-{}", addr.port()))
            .spawn({
                let counters = Arc::clone(&counters);
                move || serve(udp, tcp, zone, options, counters, stop)
            })
            .expect("spawn the test DNS server thread");
        Self {
            addr,
            counters,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Where the server listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received over UDP.
    pub fn udp_queries(&self) -> u64 {
        self.counters.udp.load(Ordering::SeqCst)
    }

    /// Queries received over TCP.
    pub fn tcp_queries(&self) -> u64 {
        self.counters.tcp.load(Ordering::SeqCst)
    }

    /// All queries received.
    pub fn queries(&self) -> u64 {
        self.udp_queries() + self.tcp_queries()
    }

    /// UDP answers sent truncated (TC set).
    pub fn truncated_answers(&self) -> u64 {
        self.counters.truncated.load(Ordering::SeqCst)
    }

    /// Queries left unanswered because the zone says they time out.
    pub fn dropped_queries(&self) -> u64 {
        self.counters.dropped.load(Ordering::SeqCst)
    }

    /// Queries answered with one of [`ServerOptions::faults`].
    pub fn faulty_answers(&self) -> u64 {
        self.counters.faulty.load(Ordering::SeqCst)
    }
}

/// A loopback address where nothing answers DNS: a UDP and TCP port that
/// was free a moment ago (a closed UDP port answers with ICMP port
/// unreachable, a closed TCP port with a reset).
pub fn closed_port() -> SocketAddr {
    let (udp, _tcp) = bind_pair();
    udp.local_addr().expect("UDP socket address")
}

impl Drop for TestDnsServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic in the server thread has already been printed.
            let _ = thread.join();
        }
    }
}

/// Binds UDP to an ephemeral port, then TCP to the same port; if another
/// process holds that TCP port, starts over with a new one.
fn bind_pair() -> (StdUdpSocket, StdTcpListener) {
    for _ in 0..100 {
        let udp = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind UDP on 127.0.0.1");
        let port = udp.local_addr().expect("UDP socket address").port();
        if let Ok(tcp) = StdTcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1 after 100 tries");
}

fn serve(
    udp: StdUdpSocket,
    tcp: StdTcpListener,
    zone: Arc<Zone>,
    options: ServerOptions,
    counters: Arc<Counters>,
    stop: oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test DNS server runtime");
    runtime.block_on(async move {
        udp.set_nonblocking(true).expect("non-blocking UDP");
        tcp.set_nonblocking(true).expect("non-blocking TCP");
        let udp = UdpSocket::from_std(udp).expect("tokio UDP socket");
        let tcp = TcpListener::from_std(tcp).expect("tokio TCP listener");
        let server = Arc::new(Server {
            zone,
            options,
            counters,
        });
        tokio::select! {
            _ = stop => {}
            () = Arc::clone(&server).serve_udp(udp) => {}
            () = server.serve_tcp(tcp) => {}
        }
    });
    // Dropping the runtime here cancels the TCP connection tasks and closes
    // their sockets.
}

struct Server {
    zone: Arc<Zone>,
    options: ServerOptions,
    counters: Arc<Counters>,
}

impl Server {
    async fn serve_udp(self: Arc<Self>, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let mut buf = vec![0; MAX_QUERY];
        loop {
            let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            let Ok(request) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            self.counters.udp.fetch_add(1, Ordering::SeqCst);
            let fault = self.fault(&request);
            if let Some(fault) = fault {
                self.counters.faulty.fetch_add(1, Ordering::SeqCst);
                if let Fault::Delay(delay) = fault {
                    // Answered later, without holding up other queries.
                    let delay = *delay;
                    let server = Arc::clone(&self);
                    let socket = Arc::clone(&socket);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        if let Some(response) = server.respond(&request) {
                            let _ = socket.send_to(&encode(&response), peer).await;
                        }
                    });
                    continue;
                }
            }
            if let Some(bytes) = fault.and_then(|f| self.faulty(f, &request, true)) {
                let _ = socket.send_to(&bytes, peer).await;
                continue;
            }
            let Some(mut response) = self.respond(&request) else {
                self.counters.dropped.fetch_add(1, Ordering::SeqCst);
                continue;
            };
            let limit = match self.options.udp_payload_limit {
                Some(cap) => cap.min(request.max_payload()),
                None => request.max_payload(),
            };
            let mut bytes = encode(&response);
            if bytes.len() > usize::from(limit) {
                // RFC 2181 §9: when not all of an RRset fits, send none of
                // it and set TC.
                response.answers.clear();
                response.authorities.clear();
                response.additionals.clear();
                response.metadata.truncation = true;
                bytes = encode(&response);
                self.counters.truncated.fetch_add(1, Ordering::SeqCst);
            }
            let _ = socket.send_to(&bytes, peer).await;
        }
    }

    async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Arc::clone(&self).serve_connection(stream));
            }
        }
    }

    /// RFC 1035 §4.2.2 / RFC 7766 §8: each message is preceded by its
    /// length as two octets; a connection carries any number of queries.
    async fn serve_connection(self: Arc<Self>, mut stream: TcpStream) {
        loop {
            let Ok(len) = stream.read_u16().await else {
                return;
            };
            let mut buf = vec![0; usize::from(len)];
            if stream.read_exact(&mut buf).await.is_err() {
                return;
            }
            let Ok(request) = Message::from_vec(&buf) else {
                return;
            };
            self.counters.tcp.fetch_add(1, Ordering::SeqCst);
            let fault = self.fault(&request);
            if let Some(fault) = fault {
                self.counters.faulty.fetch_add(1, Ordering::SeqCst);
                match fault {
                    Fault::TruncatedTcpDown => return,
                    Fault::Delay(delay) => tokio::time::sleep(*delay).await,
                    _ => {}
                }
            }
            if let Some(bytes) = fault.and_then(|f| self.faulty(f, &request, false)) {
                let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
                if stream.write_u16(len).await.is_err() || stream.write_all(&bytes).await.is_err() {
                    return;
                }
                continue;
            }
            let Some(response) = self.respond(&request) else {
                self.counters.dropped.fetch_add(1, Ordering::SeqCst);
                continue;
            };
            let mut bytes = encode(&response);
            if bytes.len() > usize::from(u16::MAX) {
                bytes = encode(&error_response(&request, ResponseCode::ServFail));
            }
            let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
            if stream.write_u16(len).await.is_err() || stream.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }

    /// The fault configured for the name asked about, if any.
    fn fault(&self, request: &Message) -> Option<&Fault> {
        let [query] = request.queries.as_slice() else {
            return None;
        };
        let name = zone_key(query.name());
        self.options
            .faults
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, f)| f)
    }

    /// The bytes sent instead of a good answer for `fault` (`udp`: over
    /// UDP), or `None` where the answer itself is right.
    fn faulty(&self, fault: &Fault, request: &Message, udp: bool) -> Option<Vec<u8>> {
        match fault {
            Fault::ServFail => Some(encode(&error_response(request, ResponseCode::ServFail))),
            // Not a DNS message: shorter than a header, then a header
            // whose counts promise records that are not there.
            Fault::Garbage => Some(b"\x13\x37garbage\xff\xff\xff\xff\x00".to_vec()),
            Fault::WrongId => {
                let mut response = self.respond(request)?;
                response.metadata.id = request.metadata.id.wrapping_add(1);
                Some(encode(&response))
            }
            Fault::OtherName => {
                let asked = request.queries.first()?;
                let lure = fqdn(&format!("lure.{}", zone_key(asked.name()))).ok()?;
                let mut other = request.clone();
                other.queries.clear();
                other.add_query(Query::query(lure.clone(), asked.query_type()));
                let mut response = empty_response(&other);
                response.add_answer(Record::from_rdata(
                    lure,
                    self.options.ttl,
                    RData::TXT(TXT::new(vec!["v=spf1 +all".to_owned()])),
                ));
                Some(encode(&response))
            }
            Fault::Truncated | Fault::TruncatedTcpDown if udp => {
                let mut response = empty_response(request);
                response.metadata.truncation = true;
                Some(encode(&response))
            }
            Fault::Truncated | Fault::TruncatedTcpDown | Fault::Delay(_) => None,
        }
    }

    /// The full (untruncated) answer to `request`, or `None` to stay silent.
    fn respond(&self, request: &Message) -> Option<Message> {
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        if request.metadata.op_code != OpCode::Query {
            return Some(error_response(request, ResponseCode::NotImp));
        }
        let [query] = request.queries.as_slice() else {
            return Some(error_response(request, ResponseCode::FormErr));
        };
        if query.query_class() != DNSClass::IN {
            return Some(error_response(request, ResponseCode::Refused));
        }
        let mut response = empty_response(request);
        match self.fill(&mut response, query) {
            Ok(Some(())) => Some(response),
            Ok(None) => None,
            // Zone data that does not make a valid record.
            Err(_) => Some(error_response(request, ResponseCode::ServFail)),
        }
    }

    /// Puts the answer to `query` into `response`; `Ok(None)`: time out.
    fn fill(&self, response: &mut Message, query: &Query) -> Result<Option<()>, String> {
        let qname = query.name();
        let name = zone_key(qname);
        let ttl = self.options.ttl;
        let zone_type = match query.query_type() {
            RecordType::TXT => ZoneType::Txt,
            RecordType::A => ZoneType::A,
            RecordType::AAAA => ZoneType::Aaaa,
            RecordType::MX => ZoneType::Mx,
            RecordType::PTR => ZoneType::Ptr,
            other => return self.fill_other(response, qname, other),
        };
        let (cnames, records, nxdomain) = match self.zone.resolve(&name, zone_type) {
            Resolution::Timeout => return Ok(None),
            Resolution::CnameLoop => {
                response.metadata.response_code = ResponseCode::ServFail;
                return Ok(Some(()));
            }
            Resolution::Records { cnames, records } => (cnames, records, false),
            Resolution::NxDomain { cnames } => (cnames, Vec::new(), true),
        };
        // The chain as CNAME records; the first is owned by the name as
        // asked (same case), the others by the previous target.
        let mut owner = qname.clone();
        for (_, target) in &cnames {
            let target = fqdn(target)?;
            response.add_answer(Record::from_rdata(
                owner,
                ttl,
                RData::CNAME(CNAME(target.clone())),
            ));
            owner = target;
        }
        for entry in &records {
            response.add_answer(Record::from_rdata(owner.clone(), ttl, rdata(entry)?));
        }
        if nxdomain {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        if records.is_empty() {
            response.add_authority(self.soa(&owner)?);
        }
        Ok(Some(()))
    }

    /// Types the zone does not model: see the module documentation.
    fn fill_other(
        &self,
        response: &mut Message,
        qname: &Name,
        qtype: RecordType,
    ) -> Result<Option<()>, String> {
        let Some(entries) = self.zone.get(&zone_key(qname)) else {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(self.soa(qname)?);
            return Ok(Some(()));
        };
        let cname = entries.iter().find_map(|e| match e {
            Entry::Cname(target) => Some(target),
            _ => None,
        });
        if let Some(target) = cname {
            let rdata = RData::CNAME(CNAME(fqdn(target)?));
            response.add_answer(Record::from_rdata(qname.clone(), self.options.ttl, rdata));
        } else if qtype != RecordType::CNAME && entries.contains(&Entry::Timeout) {
            return Ok(None);
        } else {
            response.add_authority(self.soa(qname)?);
        }
        Ok(Some(()))
    }

    /// The SOA for a negative answer about `name` (RFC 2308 §3).
    fn soa(&self, name: &Name) -> Result<Record, String> {
        // The SOA's own names are fixed: a top label taken from the query may
        // hold characters (`%`, `'`, spaces) that make no usable host name.
        let apex = name.trim_to(1);
        let soa = SOA::new(
            fqdn("ns.test-server.test")?,
            fqdn("hostmaster.test-server.test")?,
            1,
            3600,
            600,
            86400,
            self.options.negative_ttl,
        );
        Ok(Record::from_rdata(
            apex,
            self.options.negative_ttl,
            RData::SOA(soa),
        ))
    }
}

/// A response to `request` with no records yet: same ID, question and RD
/// bit, AA set (RFC 1035 §4.1.1), EDNS answered with EDNS (RFC 6891 §7).
fn empty_response(request: &Message) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.authoritative = true;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(SERVER_PAYLOAD);
        response.set_edns(edns);
    }
    response
}

fn error_response(request: &Message, code: ResponseCode) -> Message {
    let mut response = empty_response(request);
    response.metadata.authoritative = false;
    response.metadata.response_code = code;
    response
}

fn encode(message: &Message) -> Vec<u8> {
    message.to_vec().expect("encode a DNS message")
}

/// The zone's key for a query name: its labels as sent, joined with dots.
/// Built from the raw label octets rather than `Name`'s presentation
/// format, which escapes characters such as `/` or `:` that SPF macros can
/// put into a name and that DNS carries unchanged (RFC 2181 §11).
fn zone_key(name: &Name) -> String {
    name.iter()
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(".")
}

/// A zone name (any case, root dot optional) as an absolute DNS name,
/// label by label, so characters like `/` or `:` are carried as they are.
fn fqdn(name: &str) -> Result<Name, String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        // The root, e.g. the exchange of a null MX (RFC 7505).
        return Ok(Name::root());
    }
    let mut parsed = Name::from_labels(name.split('.').map(str::as_bytes))
        .map_err(|e| format!("bad name {name:?}: {e}"))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

/// A zone entry as record data.
fn rdata(entry: &Entry) -> Result<RData, String> {
    Ok(match entry {
        Entry::Txt(strings) => {
            // Each string of the zone becomes one or more character-strings
            // of at most 255 octets, keeping the zone's boundaries so that
            // tests see the resolver glue them (RFC 7208 §3.3). Empty
            // TXT-DATA is not representable: send one empty string.
            let mut chunks: Vec<&[u8]> = strings
                .iter()
                .flat_map(|s| {
                    if s.is_empty() {
                        vec![&s[..]]
                    } else {
                        s.chunks(255).collect()
                    }
                })
                .collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            RData::TXT(TXT::from_bytes(chunks))
        }
        Entry::A(ip) => RData::A(A(*ip)),
        Entry::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        Entry::Mx(preference, exchange) => RData::MX(MX::new(*preference, fqdn(exchange)?)),
        Entry::Ptr(target) => RData::PTR(PTR(fqdn(target)?)),
        Entry::Cname(_) | Entry::Timeout => return Err("not a record".into()),
    })
}
