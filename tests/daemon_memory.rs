//! The daemon's memory under the record flood of the security review: an
//! attacker's zone gives every `dN.attacker.example` its own SPF record of
//! about 60 kB (served over TCP, in 255-byte strings), and one MAIL FROM
//! per domain makes the daemon fetch, parse and cache each. The daemon's
//! peak resident memory (VmHWM) must stay within the DNS cache's budget
//! (`[dns] cache_size`) plus a small fixed overhead above its resident
//! memory before the flood.
//!
//! The same test is the benchmark of BENCHMARKS.md ("DNS cache under a
//! record flood"), at a larger scale:
//!
//!     SPFMILTER_FLOOD_SENDERS=3000 SPFMILTER_FLOOD_CACHE_MIB=64 \
//!         cargo test --release --test daemon_memory -- --nocapture

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dns_server::TestDnsServer;
use common::milter::{ConfigFile, Daemon, Transport, Tx, Verdict};
use spfmilter::dns::Zone;

/// What the daemon may use above its resident memory before the flood,
/// besides the cache's budget: the sessions in flight (each holds an
/// answer of 60 kB and its parse, about 270 kB, while it is checked), the
/// resolver's buffers, and what the allocator keeps of freed memory.
const OVERHEAD_MIB: u64 = 12;

/// Sessions at once.
const CONCURRENCY: usize = 4;

/// The record of `dN.attacker.example`: about 60 kB of ip4 terms, one of
/// them naming N so that every record is distinct, none matching the
/// client (so the result is fail).
fn record(n: usize) -> String {
    let mut text = format!("v=spf1 ip4:172.16.{}.{}", (n >> 8) & 255, n & 255);
    let mut i = 0;
    while text.len() < 60_000 {
        text.push_str(&format!(" ip4:10.{}.{}.0/24", (i >> 8) & 255, i & 255));
        i += 1;
    }
    text.push_str(" -all");
    text
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?}")))
        .unwrap_or(default)
}

/// A field of /proc/PID/status in kB (VmRSS, VmHWM).
fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix(" kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A value of the daemon's metrics (`[metrics] listen` on port 0: the
/// address is in its log, waited for).
fn metric(daemon: &Daemon, name: &str) -> u64 {
    let start = Instant::now();
    let addr = loop {
        let stderr = daemon.stderr();
        if let Some(url) = stderr
            .split("metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        {
            break url
                .strip_suffix("/metrics")
                .expect("a /metrics URL")
                .to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no metrics address in the log: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut http = std::net::TcpStream::connect(&addr).expect("connect to the metrics");
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send the request");
    let mut reply = String::new();
    http.read_to_string(&mut reply).expect("read the metrics");
    reply
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {reply}"))
}

/// One transaction from 192.0.2.1 with MAIL FROM `sender`.
async fn send(daemon: &Daemon, sender: &str) -> Verdict {
    let sender = format!("<{sender}>");
    Tx {
        helo: Some("helo.attacker.example"),
        sender: &sender,
        ..Tx::default()
    }
    .run(daemon)
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_large_records_stays_within_the_cache_budget() {
    let senders = env("SPFMILTER_FLOOD_SENDERS", 600);
    let budget_mib = env("SPFMILTER_FLOOD_CACHE_MIB", 32) as u64;
    let mut zone = Zone::new().with_txt("warm.attacker.example", "v=spf1 ip4:10.0.0.0/8 -all");
    for n in 0..senders {
        zone = zone.with_txt(&format!("d{n}.attacker.example"), &record(n));
    }
    let dns = TestDnsServer::start(Arc::new(zone));
    let config = ConfigFile::Toml(format!(
        "[dns]\ncache_size = \"{budget_mib}M\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
    ));
    let daemon = Arc::new(Daemon::start(Transport::Unix, &config, dns.addr()));
    let pid = daemon.pid();

    // Warm up (runtime threads, the resolver, a few sessions) before the
    // baseline.
    for _ in 0..CONCURRENCY {
        let v = send(&daemon, "user@warm.attacker.example").await;
        assert!(matches!(v, Verdict::Reject(_)), "{v:?}");
    }
    let baseline = status_kb(pid, "VmRSS");

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..CONCURRENCY {
        let daemon = Arc::clone(&daemon);
        tasks.spawn(async move {
            for n in (t..senders).step_by(CONCURRENCY) {
                let v = send(&daemon, &format!("user@d{n}.attacker.example")).await;
                // RFC 7208 §4.6.2: no ip4 term matches 192.0.2.1, so
                // "-all" decides: fail, rejected with 550 5.7.23
                // (RFC 7372 §3.2) by default.
                match v {
                    Verdict::Reject(text) if text.starts_with("550 5.7.23 ") => {}
                    other => panic!("d{n}.attacker.example: {other:?}"),
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a flood task");
    }

    let peak = status_kb(pid, "VmHWM");
    let after = status_kb(pid, "VmRSS");
    let held = metric(&daemon, "spfmilter_dns_cache_bytes");
    let entries = metric(&daemon, "spfmilter_dns_cache_entries");
    eprintln!(
        "flood: {senders} senders, cache_size {budget_mib} MiB: RSS before {baseline} kB, \
         peak {peak} kB, after {after} kB; the cache holds {entries} entries, {} kB",
        held / 1024
    );
    assert!(held <= budget_mib << 20, "the cache holds {held} bytes");
    // The flood's records are in the cache (the budget is used), not
    // refused by it.
    assert!(
        held >= (budget_mib << 20) / 2,
        "the cache holds {held} bytes"
    );
    let limit = baseline + (budget_mib + OVERHEAD_MIB) * 1024;
    assert!(
        peak <= limit,
        "peak RSS {peak} kB above {baseline} kB + {budget_mib} MiB + {OVERHEAD_MIB} MiB"
    );
}
