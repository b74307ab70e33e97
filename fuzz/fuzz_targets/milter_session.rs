//! Fuzzes the milter session: arbitrary milter packets, after Postfix's
//! negotiation, to the real daemon (`spfmilter::milter::run`, as `spfmilter
//! run` starts it) on a UNIX socket in this process, with DNS from an
//! authoritative server on loopback serving a small zone (the test
//! suite's `tests/common/dns_server.rs`).
//!
//! Input: the first byte picks one of five configurations (header types,
//! reject and defer policies, skips, test mode, the rescue: SPF rejects
//! held to end of message, where body chunks and end of message meet the
//! real verifier); the rest is a sequence of
//! packets `[command][length: 2 octets, big-endian][data]`, each sent as a
//! milter packet with that command and data (so the framing is right and
//! the fuzzer explores commands and their arguments), except command 0xff,
//! whose data is sent as it is (broken framing too). Then the client
//! closes its side and reads every reply until the daemon closes.
//!
//! Besides "no panic" (libfuzzer-sys aborts on any panic, including one in
//! a session task), it checks that:
//! - the daemon closes the session within 10 s of the client's end;
//! - every reply is a well-formed milter packet with a known reply code;
//! - a reject or tempfail reply (`y`) is one line, a 4xx or 5xx code;
//! - inserted headers are `Received-SPF`, `Authentication-Results` or
//!   `X-Comment` (a skip's note), at index 0, and their values are well-formed header bodies (no CR, a
//!   line break only as folding, lines of at most 998 octets: RFC 5322
//!   §2.1.1, §2.2.3), whatever bytes came in;
//! - header changes only delete (empty value) trace headers;
//! - every 200 inputs, a well-formed session still gets its Received-SPF
//!   Pass: the daemon lives on;
//! - no value of ours holds a separator (security report, item 3): an
//!   inserted Received-SPF, read as OpenDMARC reads it
//!   (`tests/common/lenient.rs`), has exactly one `identity` key and no
//!   value with `;` `=` `"` `(` `)` `\`, white space or a control; an
//!   inserted Authentication-Results of configuration 1 reads as its
//!   authserv-id;
//! - no forged header survives (item 1): the input's header packets are
//!   also sent in a well-formed session to configuration 1 (fixed
//!   authserv-id) and the edits applied as Postfix applies them; no
//!   Received-SPF is left, and no Authentication-Results that OpenDMARC's
//!   reader or [`spfmilter::policy::headers::could_claim_authserv_id`]
//!   takes for ours.

#![no_main]

#[allow(dead_code)]
#[path = "../../tests/common/dns_server.rs"]
mod dns_server;
#[path = "../../tests/common/lenient.rs"]
mod lenient;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use milter_codec::{cstrings, optneg, packet, split_packet};
use spfmilter::config::{Config, Datasets, Overrides, Source};
use spfmilter::dns::Zone;
use spfmilter::policy::headers::could_claim_authserv_id;

/// The authserv-id of configuration 1.
const FIXED_ID: &str = "fuzz.example";

// The third configuration has Reject_Not_Pass_Domains, whose label match
// this target once crashed on non-UTF-8 names
// (`tests/faults.rs::a_non_utf8_name_against_reject_not_pass_domains`).
const CONFIGS: [&str; 5] = [
    "",
    "[milter]\nheader_type = \"AR\"\nauthserv_id = \"fuzz.example\"\n[policy]\nhelo_reject = \"SPF_Not_Pass\"\nmail_from_reject = \"SPF_Not_Pass\"\npermerror_reject = true\ntemperror_defer = true\nreason_url = \"http://x.example/?s={0};id={1};ip={2};r={3}\"\n",
    "[milter]\nheader_type = \"SPF,AR\"\nhide_receiver = true\n[policy]\ntest_mode = true\nno_mail = true\nreject_not_pass_domains = [\"pass.test\"]\n[skip]\nwhitelist = [\"192.0.2.128/25\"]\ndomain_whitelist = [\"wl.test\"]\nhelo_whitelist = [\"relay.test\"]\ndomain_whitelist_ptr = [\"ptr.test\"]\ninternal_hosts = [\"10.0.0.0/8\"]\n",
    "[milter]\nheader_type = \"None\"\nremove_forged_headers = false\n[policy]\nhelo_reject = \"Null\"\nmail_from_reject = \"Softfail\"\n[skip]\nmacro_list = [\"daemon_name|ORIGINATING\"]\nskip_authenticated = true\n",
    "[milter]\nheader_type = \"SPF,AR\"\n[policy]\nmail_from_reject = \"SPF_Not_Pass\"\npermerror_reject = true\n[rescue]\nmethods = [\"dkim\", \"arc\"]\ntrusted_arc_sealers = [\"lists.test\"]\nmax_message_size = \"64K\"\nmax_held_bytes = \"128K\"\ntime_limit = 2\n",
];

fn zone() -> Zone {
    Zone::new()
        .with_txt(
            "pass.test",
            "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all",
        )
        .with_txt("fail.test", "v=spf1 -all exp=why.fail.test")
        .with_txt(
            "why.fail.test",
            "%{i} is not one of %{d}'s hosts (%{s}, %{h}, %{r})",
        )
        .with_txt("softfail.test", "v=spf1 ~all")
        .with_txt("neutral.test", "v=spf1 ?all")
        .with_txt("permerror.test", "v=spf1 ip4:300.1.1.1 -all")
        .with_txt(
            "macro.test",
            "v=spf1 exists:%{ir}.%{l1r+-}.%{o}.x.test a mx ptr -all",
        )
        .with_txt(
            "include.test",
            "v=spf1 include:pass.test include:fail.test ~all",
        )
        .with_txt("redirect.test", "v=spf1 redirect=pass.test")
        .with_ip("none.test", "198.51.100.99")
        .with_ip("relay.test", "192.0.2.200")
        .with_ptr("192.0.2.1", "host.ptr.test")
        .with_ip("host.ptr.test", "192.0.2.1")
}

struct Daemons {
    sockets: Vec<PathBuf>,
    inputs: AtomicU64,
}

fn daemons() -> &'static Daemons {
    static DAEMONS: OnceLock<Daemons> = OnceLock::new();
    DAEMONS.get_or_init(|| {
        let dns = dns_server::TestDnsServer::start(Arc::new(zone()));
        let dns_addr = dns.addr();
        // The server lives as long as the process.
        std::mem::forget(dns);
        let dir = std::env::temp_dir().join(format!("spfmilter-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a socket directory");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let mut sockets = Vec::new();
        for (i, text) in CONFIGS.iter().enumerate() {
            let socket = dir.join(format!("milter-{i}.sock"));
            let mut config: Config = (*Config::parse_toml(text, "fuzz.toml", Datasets::Refuse)
                .unwrap_or_else(|e| panic!("configuration {i}: {e:?}"))
                .config)
                .clone();
            config.milter.socket = spfmilter::config::SocketSpec::Unix(socket.clone());
            config.dns.nameservers = vec![dns_addr];
            config.dns.timeout = Duration::from_millis(500);
            config.spf.lookup_time = Duration::from_secs(2);
            config.log.level = spfmilter::config::LogLevel::Silent;
            config.log.target = spfmilter::config::LogTarget::Stderr;
            runtime.spawn(async move {
                spfmilter::milter::run(Arc::new(config), Source::Default, Overrides::default())
                    .await
                    .expect("the milter runs");
            });
            let start = Instant::now();
            while UnixStream::connect(&socket).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "milter {i} not up"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            sockets.push(socket);
        }
        std::mem::forget(runtime);
        Daemons {
            sockets,
            inputs: AtomicU64::new(0),
        }
    })
}

/// The input read as `[command][length: 2 octets, big-endian][data]`
/// records (a length past the end takes what is left).
fn input_records(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let [command, rest @ ..] = data else {
            return None;
        };
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
            _ => (0, &[][..]),
        };
        let (body, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        Some((*command, body))
    })
}

/// The input's packets, as bytes to send.
fn packets(data: &[u8]) -> Vec<u8> {
    let mut out = optneg();
    for (command, body) in input_records(data) {
        if command == 0xff {
            out.extend_from_slice(body);
        } else {
            out.extend_from_slice(&packet(command, body));
        }
    }
    out
}

/// Sends `bytes`, closes the sending side, reads until the daemon closes.
fn converse(socket: &PathBuf, bytes: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).expect("connect to the milter");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Inputs are small (libFuzzer's -max_len, at most 4096 by default), so the
    // whole input fits in the socket buffer and is written before any reply
    // is read. The daemon may close first (an error): the rest is lost.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut replies = Vec::new();
    match stream.read_to_end(&mut replies) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the session did not end within 10 s: {e}"),
    }
    replies
}

/// A header body as RFC 5322 allows it after the milter's edits.
fn check_header_value(name: &[u8], value: &[u8]) {
    let text = String::from_utf8_lossy(value);
    assert!(!value.contains(&b'\r'), "CR in {text:?}");
    for (i, line) in value.split(|b| *b == b'\n').enumerate() {
        let len = if i == 0 {
            line.len() + name.len() + 2
        } else {
            line.len()
        };
        assert!(len <= 998, "a line of {len} octets in {text:?}");
        if i > 0 {
            assert!(
                line.starts_with(b" ") || line.starts_with(b"\t"),
                "a line break that is not folding in {text:?}"
            );
        }
    }
}

/// What a session's replies asked for.
#[derive(Default)]
struct Edits {
    /// Inserted headers (name, value), in the order sent.
    inserted: Vec<(Vec<u8>, Vec<u8>)>,
    /// Deleted headers (name, index), in the order sent.
    deleted: Vec<(Vec<u8>, u32)>,
}

/// Checks every reply; returns the edits.
fn check_replies(mut replies: &[u8]) -> Edits {
    let mut edits = Edits::default();
    let mut first = true;
    while !replies.is_empty() {
        let (reply, rest) = match split_packet(replies) {
            Ok(Some(split)) => split,
            Ok(None) | Err(_) => panic!("a cut reply: {replies:?}"),
        };
        let (code, data) = (reply.command, reply.data);
        if first {
            assert_eq!(code, b'O', "the first reply answers the negotiation");
            first = false;
        }
        match code {
            b'O' | b'c' | b'a' | b'd' | b'r' | b't' | b'p' | b'q' | b's' => {}
            b'y' => {
                let text = data.strip_suffix(b"\0").expect("a NUL-terminated reply");
                assert!(!text.contains(&b'\r') && !text.contains(&b'\n'), "{text:?}");
                assert!(
                    text.len() >= 3 && (text[0] == b'4' || text[0] == b'5'),
                    "reply {text:?}"
                );
            }
            b'i' => {
                assert!(data.len() >= 4);
                let index = u32::from_be_bytes(data[..4].try_into().unwrap());
                assert_eq!(index, 0, "inserted below the top");
                let fields = cstrings(&data[4..]);
                assert_eq!(fields.len(), 2, "{data:?}");
                let (name, value) = (fields[0], fields[1]);
                assert!(
                    [
                        &b"Received-SPF"[..],
                        b"Authentication-Results",
                        b"X-Comment"
                    ]
                    .contains(&name),
                    "header {:?}",
                    String::from_utf8_lossy(name)
                );
                check_header_value(name, value);
                check_our_header(name, value);
                edits.inserted.push((name.to_vec(), value.to_vec()));
            }
            b'm' => {
                assert!(data.len() >= 4);
                let fields = cstrings(&data[4..]);
                assert!(
                    fields.len() == 2 && fields[1].is_empty(),
                    "a header change that is no deletion: {data:?}"
                );
                assert!(
                    fields[0].eq_ignore_ascii_case(b"Received-SPF")
                        || fields[0].eq_ignore_ascii_case(b"Authentication-Results"),
                    "deletes {:?}",
                    String::from_utf8_lossy(fields[0])
                );
                let index = u32::from_be_bytes(data[..4].try_into().unwrap());
                edits.deleted.push((fields[0].to_vec(), index));
            }
            other => panic!("unexpected reply code {other:#x}"),
        }
        replies = rest;
    }
    edits
}

/// Item 3 of the security report: a header of ours, as OpenDMARC reads it.
fn check_our_header(name: &[u8], value: &[u8]) {
    let text = String::from_utf8_lossy(value);
    let unfolded = text.replace("\n\t", " ");
    if name == b"Received-SPF" {
        let (_, pairs) = lenient::opendmarc_received_spf(&unfolded);
        let identities = pairs.iter().filter(|(k, _)| k == "identity").count();
        assert_eq!(identities, 1, "{unfolded:?}: {pairs:?}");
        for (key, v) in &pairs {
            assert!(
                v.bytes()
                    .all(|b| b.is_ascii_graphic() && !b";=\"()\\".contains(&b)),
                "{key}={v:?} in {unfolded:?}"
            );
        }
    }
}

/// The header packets (`L`: name, value) of an input, before its first
/// end of message.
fn header_packets(data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut headers = Vec::new();
    for (command, body) in input_records(data) {
        match command {
            b'L' => {
                let fields = cstrings(body);
                if let [name, value] = fields[..]
                    && !name.is_empty()
                    && !value.contains(&0)
                {
                    headers.push((name.to_vec(), value.to_vec()));
                }
            }
            b'E' => break,
            _ => {}
        }
    }
    headers
}

/// Item 1: the headers sent in a well-formed session to configuration 1;
/// after the edits, applied as Postfix applies them (the index counts the
/// headers of that name still present), nothing reads as ours.
fn check_forged_headers_go(socket: &PathBuf, headers: &[(Vec<u8>, Vec<u8>)]) {
    let mut out = optneg();
    out.extend(packet(b'D', b"Cj\0mx.example.net\0"));
    out.extend(packet(b'C', b"client.example\x004\x10\xe1192.0.2.1\0"));
    out.extend(packet(b'H', b"pass.test\0"));
    out.extend(packet(b'M', b"<a@pass.test>\0"));
    out.extend(packet(b'R', b"<u@rcpt.example>\0"));
    out.extend(packet(b'T', b""));
    for (name, value) in headers {
        let mut body = name.clone();
        body.push(0);
        body.extend_from_slice(value);
        body.push(0);
        out.extend(packet(b'L', &body));
    }
    out.extend(packet(b'N', b""));
    out.extend(packet(b'E', b""));
    out.extend(packet(b'Q', b""));
    let edits = check_replies(&converse(socket, &out));
    let mut left: Vec<Option<&(Vec<u8>, Vec<u8>)>> = headers.iter().map(Some).collect();
    for (name, index) in &edits.deleted {
        let position = left
            .iter()
            .enumerate()
            // As Postfix numbers them: white space before the colon
            // does not make another name.
            .filter(|(_, h)| h.is_some_and(|(n, _)| n.trim_ascii_end().eq_ignore_ascii_case(name)))
            .nth((*index as usize).saturating_sub(1))
            .map(|(i, _)| i);
        if let Some(i) = position {
            left[i] = None;
        }
    }
    for (name, value) in left.into_iter().flatten() {
        let text = String::from_utf8_lossy(value);
        assert!(
            !name.trim_ascii_end().eq_ignore_ascii_case(b"Received-SPF"),
            "a Received-SPF survived: {text:?}"
        );
        if name
            .trim_ascii_end()
            .eq_ignore_ascii_case(b"Authentication-Results")
        {
            let read = lenient::opendmarc_authserv_id(&text).map(|id| id.to_ascii_lowercase());
            assert!(
                read.as_deref().is_none_or(|id| id != FIXED_ID
                    && !id
                        .strip_prefix(FIXED_ID)
                        .is_some_and(|r| r.starts_with('/'))),
                "OpenDMARC takes a surviving header for ours: {text:?}"
            );
            assert!(
                !could_claim_authserv_id(&text, FIXED_ID),
                "a lenient reader takes a surviving header for ours: {text:?}"
            );
        }
    }
    for (name, value) in &edits.inserted {
        if name == b"Authentication-Results" {
            let text = String::from_utf8_lossy(value);
            assert_eq!(
                lenient::opendmarc_authserv_id(&text).as_deref(),
                Some(FIXED_ID),
                "{text:?}"
            );
        }
    }
}

/// A well-formed session: connect from 192.0.2.1, HELO, MAIL FROM
/// pass.test, RCPT, header, EOH, body, EOM, QUIT.
fn good_session() -> Vec<u8> {
    let mut out = optneg();
    out.extend(packet(b'D', b"Cj\0mx.example.net\0"));
    out.extend(packet(b'C', b"client.example\x004\x10\xe1192.0.2.1\0"));
    out.extend(packet(b'H', b"pass.test\0"));
    out.extend(packet(b'M', b"<a@pass.test>\0"));
    out.extend(packet(b'R', b"<u@rcpt.example>\0"));
    out.extend(packet(b'T', b""));
    out.extend(packet(b'L', b"Subject\0t\0"));
    out.extend(packet(b'N', b""));
    out.extend(packet(b'B', b"Hi.\r\n"));
    out.extend(packet(b'E', b""));
    out.extend(packet(b'Q', b""));
    out
}

fuzz_target!(|data: &[u8]| {
    let daemons = daemons();
    let Some((choice, rest)) = data.split_first() else {
        return;
    };
    let socket = &daemons.sockets[usize::from(*choice) % daemons.sockets.len()];
    check_replies(&converse(socket, &packets(rest)));
    let headers = header_packets(rest);
    if !headers.is_empty() && headers.len() <= 64 {
        check_forged_headers_go(&daemons.sockets[1], &headers);
    }
    if daemons
        .inputs
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(200)
    {
        let inserted = check_replies(&converse(&daemons.sockets[0], &good_session())).inserted;
        assert_eq!(inserted.len(), 1, "{inserted:?}");
        assert!(
            inserted[0].1.trim_ascii_start().starts_with(b"Pass "),
            "{:?}",
            String::from_utf8_lossy(&inserted[0].1)
        );
    }
});
