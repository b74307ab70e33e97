//! The lab's DNS: NSD, authoritative for zones written from Rust data, and
//! in front of it, on the address of `/etc/resolv.conf` (127.0.0.1:53), a
//! small forwarder that logs every query and can leave chosen names
//! unanswered.
//!
//! Why the forwarder: the clients here are stub resolvers that ask
//! 127.0.0.1 directly and NSD does not recurse, so a broken delegation only
//! gives them a referral (an empty answer), not the time-out a real
//! recursive resolver would run into. Names under a [`Zone::unanswered`]
//! zone are dropped by the forwarder, so every client times out on them: a
//! realistic TempError, and the only one pyspf with pydns (Debian's
//! default) reports — it takes SERVFAIL and REFUSED answers for "no
//! records". A zone with [`ZoneMode::ServFail`] is configured in NSD
//! without data, and NSD answers SERVFAIL for it. Names outside every zone
//! get REFUSED from NSD (it does not recurse).
//!
//! NSD listens on 127.0.0.1:5300 ([`DnsPorts`]); a test can also ask it
//! directly, e.g. `spfmilter check --nameserver 127.0.0.1:5300`.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::process::{Daemon, make_dir, read_lossy, run, wait_until, write_file};

/// One resource record; `name` is relative to the zone (`@` for the apex)
/// or absolute with a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub rtype: &'static str,
    /// RDATA in zone-file syntax; for TXT the unquoted text (it is split
    /// into strings of at most 255 bytes and quoted when written).
    pub data: String,
}

impl Record {
    pub fn txt(name: &str, text: &str) -> Self {
        Self::new(name, "TXT", text)
    }
    pub fn a(name: &str, addr: &str) -> Self {
        Self::new(name, "A", addr)
    }
    pub fn aaaa(name: &str, addr: &str) -> Self {
        Self::new(name, "AAAA", addr)
    }
    pub fn mx(name: &str, preference: u16, host: &str) -> Self {
        Self::new(name, "MX", &format!("{preference} {host}"))
    }
    pub fn ptr(name: &str, host: &str) -> Self {
        Self::new(name, "PTR", host)
    }
    pub fn ns(name: &str, host: &str) -> Self {
        Self::new(name, "NS", host)
    }
    pub fn cname(name: &str, target: &str) -> Self {
        Self::new(name, "CNAME", target)
    }
    pub fn new(name: &str, rtype: &'static str, data: &str) -> Self {
        Self {
            name: name.to_string(),
            rtype,
            data: data.to_string(),
        }
    }

    fn zone_line(&self) -> String {
        let data = if self.rtype == "TXT" {
            txt_strings(&self.data)
        } else {
            self.data.clone()
        };
        format!("{}\tIN\t{}\t{}\n", self.name, self.rtype, data)
    }
}

/// TXT RDATA: quoted strings of at most 255 bytes, `"` and `\` escaped.
fn txt_strings(text: &str) -> String {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return "\"\"".to_string();
    }
    bytes
        .chunks(255)
        .map(|chunk| {
            let mut s = String::from("\"");
            for &b in chunk {
                match b {
                    b'"' | b'\\' => {
                        s.push('\\');
                        s.push(b as char);
                    }
                    0x20..=0x7e => s.push(b as char),
                    _ => {
                        let _ = write!(s, "\\{b:03}");
                    }
                }
            }
            s.push('"');
            s
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a zone is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneMode {
    /// NSD serves the records.
    Served,
    /// NSD has the zone configured but no data: it answers SERVFAIL.
    ServFail,
    /// Not in NSD; queries for names in it are dropped by the forwarder,
    /// so resolvers time out.
    Unanswered,
}

/// A zone: an origin and its records. SOA and NS (`ns.ORIGIN`, 127.0.0.1)
/// are added when it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub origin: String,
    pub mode: ZoneMode,
    pub records: Vec<Record>,
}

impl Zone {
    pub fn new(origin: &str) -> Self {
        Self {
            origin: origin.trim_end_matches('.').to_ascii_lowercase(),
            mode: ZoneMode::Served,
            records: Vec::new(),
        }
    }
    pub fn servfail(origin: &str) -> Self {
        Self {
            mode: ZoneMode::ServFail,
            ..Self::new(origin)
        }
    }
    pub fn unanswered(origin: &str) -> Self {
        Self {
            mode: ZoneMode::Unanswered,
            ..Self::new(origin)
        }
    }
    pub fn with(mut self, record: Record) -> Self {
        self.records.push(record);
        self
    }

    /// The zone file text.
    pub fn zone_file(&self) -> String {
        let o = &self.origin;
        let mut s = format!(
            "$ORIGIN {o}.\n$TTL 300\n@\tIN\tSOA\tns.{o}. hostmaster.{o}. 1 3600 600 86400 300\n\
             @\tIN\tNS\tns.{o}.\nns\tIN\tA\t127.0.0.1\n"
        );
        for r in &self.records {
            s.push_str(&r.zone_line());
        }
        s
    }
}

/// Addresses of the lab's DNS.
#[derive(Debug, Clone, Copy)]
pub struct DnsPorts {
    /// The forwarder: what resolv.conf names (port 53, since resolv.conf
    /// cannot name another port).
    pub front: u16,
    /// NSD itself.
    pub nsd: u16,
}

impl Default for DnsPorts {
    fn default() -> Self {
        Self {
            front: 53,
            nsd: 5300,
        }
    }
}

/// One query seen by the forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryLog {
    pub name: String,
    pub qtype: u16,
    pub tcp: bool,
    pub dropped: bool,
}

/// NSD plus the forwarder, stopped when dropped.
pub struct Dns {
    pub dir: PathBuf,
    pub ports: DnsPorts,
    nsd: Daemon,
    front: Front,
}

impl Dns {
    /// Writes the zones and NSD's configuration under `dir`, starts NSD in
    /// the foreground and the forwarder, and waits until a query for the
    /// first served zone's SOA is answered.
    pub fn start(dir: &Path, zones: &[Zone], ports: DnsPorts) -> Result<Self, String> {
        let dir = make_dir(dir)?;
        let conf = dir.join("nsd.conf");
        let d = dir.display();
        // Response-rate-limiting is off (`rrl-ratelimit: 0`): Debian builds
        // NSD with RRL at 200 answers/s per source, and every query here
        // comes from the one forwarder, so under load (the soak) NSD would
        // truncate or drop answers and stall the milter's lookups.
        let mut text = format!(
            "server:\n\
             \tip-address: 127.0.0.1@{port}\n\
             \tdo-ip6: no\n\
             \tusername: \"\"\n\
             \tchroot: \"\"\n\
             \tzonesdir: \"{d}\"\n\
             \tdatabase: \"\"\n\
             \tzonelistfile: \"{d}/zone.list\"\n\
             \txfrdfile: \"{d}/xfrd.state\"\n\
             \txfrdir: \"{d}\"\n\
             \tpidfile: \"{d}/nsd.pid\"\n\
             \tlogfile: \"{d}/nsd.log\"\n\
             \tserver-count: 1\n\
             \tverbosity: 1\n\
             \thide-version: yes\n\
             \tminimal-responses: no\n\
             \trrl-ratelimit: 0\n\
             \trrl-whitelist-ratelimit: 0\n\
             remote-control:\n\
             \tcontrol-enable: no\n",
            port = ports.nsd
        );
        let mut unanswered = Vec::new();
        for zone in zones {
            match zone.mode {
                ZoneMode::Unanswered => unanswered.push(zone.origin.clone()),
                ZoneMode::Served | ZoneMode::ServFail => {
                    let file = format!("{}.zone", zone.origin);
                    let _ = write!(
                        text,
                        "zone:\n\tname: {}\n\tzonefile: \"{file}\"\n",
                        zone.origin
                    );
                    if zone.mode == ZoneMode::Served {
                        let path = dir.join(&file);
                        write_file(&path, &zone.zone_file())?;
                        run(Command::new("nsd-checkzone").arg(&zone.origin).arg(&path))?;
                    }
                }
            }
        }
        write_file(&conf, &text)?;
        run(Command::new("nsd-checkconf").arg(&conf))?;
        let mut nsd = Daemon::spawn(
            "nsd",
            Command::new("nsd").arg("-d").arg("-c").arg(&conf),
            &dir.join("nsd.stderr"),
            Duration::from_secs(5),
        )?;
        let front = Front::start(ports, unanswered)?;
        let probe = zones
            .iter()
            .find(|z| z.mode == ZoneMode::Served)
            .map(|z| z.origin.clone())
            .unwrap_or_else(|| ".".to_string());
        let ready = wait_until(Duration::from_secs(10), "nsd to answer", || {
            query_rcode(ports.nsd, &probe, 6) == Some(0)
        });
        if let Err(e) = ready {
            let running = nsd.is_running();
            return Err(format!(
                "{e} (nsd running: {running})\n{}{}",
                read_lossy(&dir.join("nsd.log")),
                read_lossy(&dir.join("nsd.stderr"))
            ));
        }
        Ok(Self {
            dir,
            ports,
            nsd,
            front,
        })
    }

    /// The queries seen by the forwarder so far.
    pub fn queries(&self) -> Vec<QueryLog> {
        self.front.log.lock().unwrap().clone()
    }

    /// NSD's log.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("nsd.log")) + &read_lossy(&self.dir.join("nsd.stderr"))
    }

    /// Stops the forwarder and NSD.
    pub fn stop(&mut self) -> Result<(), String> {
        self.front.stop();
        self.nsd.stop()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("e2e: {e}");
        }
    }
}

/// Sends one UDP query to 127.0.0.1:`port` and returns the RCODE of the
/// answer, if one comes within 100 ms.
pub fn query_rcode(port: u16, name: &str, qtype: u16) -> Option<u8> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .ok()?;
    let query = build_query(0x4242, name, qtype);
    socket.send_to(&query, (Ipv4Addr::LOCALHOST, port)).ok()?;
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    (n >= 12 && buf[..2] == [0x42, 0x42]).then_some(buf[3] & 0x0f)
}

fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, QDCOUNT 1
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// The question of a DNS message: (lower-case name without the final dot,
/// QTYPE).
fn question(msg: &[u8]) -> Option<(String, u16)> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) == 0 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(msg.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    Some((labels.join("."), qtype))
}

fn in_zone(name: &str, origin: &str) -> bool {
    name == origin || name.ends_with(&format!(".{origin}"))
}

/// The forwarder: UDP and TCP on 127.0.0.1:`front`, to NSD on
/// 127.0.0.1:`nsd`, one thread per query or connection.
struct Front {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<QueryLog>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Front {
    fn start(ports: DnsPorts, unanswered: Vec<String>) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let unanswered = Arc::new(unanswered);
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, ports.front))
            .map_err(|e| format!("dns forwarder: bind udp/{}: {e}", ports.front))?;
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, ports.front))
            .map_err(|e| format!("dns forwarder: bind tcp/{}: {e}", ports.front))?;
        udp.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
        let nsd = SocketAddr::from((Ipv4Addr::LOCALHOST, ports.nsd));

        let udp_thread = {
            let (stop, log, unanswered) = (stop.clone(), log.clone(), unanswered.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 65535];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, client)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    let msg = buf[..n].to_vec();
                    if !note(&log, &unanswered, &msg, false) {
                        continue;
                    }
                    let Ok(reply_socket) = udp.try_clone() else {
                        continue;
                    };
                    thread::spawn(move || {
                        let Ok(up) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
                            return;
                        };
                        let _ = up.set_read_timeout(Some(Duration::from_secs(3)));
                        if up.send_to(&msg, nsd).is_err() {
                            return;
                        }
                        let mut answer = [0u8; 65535];
                        if let Ok(m) = up.recv(&mut answer) {
                            let _ = reply_socket.send_to(&answer[..m], client);
                        }
                    });
                }
            })
        };
        let tcp_thread = {
            let (stop, log) = (stop.clone(), log.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((conn, _)) => {
                            let (stop, log, unanswered) =
                                (stop.clone(), log.clone(), unanswered.clone());
                            thread::spawn(move || {
                                let _ = serve_tcp(conn, nsd, &stop, &log, &unanswered);
                            });
                        }
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Ok(Self {
            stop,
            log,
            threads: vec![udp_thread, tcp_thread],
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Logs a query; false if it is to be dropped.
fn note(log: &Mutex<Vec<QueryLog>>, unanswered: &[String], msg: &[u8], tcp: bool) -> bool {
    let (name, qtype) = question(msg).unwrap_or_default();
    let dropped = unanswered.iter().any(|z| in_zone(&name, z));
    log.lock().unwrap().push(QueryLog {
        name,
        qtype,
        tcp,
        dropped,
    });
    !dropped
}

fn serve_tcp(
    mut conn: TcpStream,
    nsd: SocketAddr,
    stop: &AtomicBool,
    log: &Mutex<Vec<QueryLog>>,
    unanswered: &[String],
) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut upstream: Option<TcpStream> = None;
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let n = match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        pending.extend_from_slice(&buf[..n]);
        while pending.len() >= 2 {
            let len = u16::from_be_bytes([pending[0], pending[1]]) as usize;
            if pending.len() < 2 + len {
                break;
            }
            let framed: Vec<u8> = pending.drain(..2 + len).collect();
            if !note(log, unanswered, &framed[2..], true) {
                continue;
            }
            if upstream.is_none() {
                let s = TcpStream::connect_timeout(&nsd, Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                upstream = Some(s);
            }
            let up = upstream.as_mut().expect("connected");
            up.write_all(&framed)?;
            let mut len = [0u8; 2];
            up.read_exact(&mut len)?;
            let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
            up.read_exact(&mut answer)?;
            conn.write_all(&len)?;
            conn.write_all(&answer)?;
        }
    }
    Ok(())
}
