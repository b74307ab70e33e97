//! The hickory-based lookup against a real DNS server on loopback: wire
//! format, both transports, CNAMEs, negative answers and timeouts, alone
//! and behind the cache.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dns_server::{ServerOptions, TestDnsServer};
use spfmilter::dns::cache::CacheOptions;
use spfmilter::dns::zone::Entry;
use spfmilter::dns::{
    CachingLookup, DnsError, HickoryLookup, Lookup, Mx, ResolverOptions, Zone, parse_nameserver,
};

fn zone() -> Zone {
    Zone::new()
        .with(
            "multi.test",
            Entry::Txt(vec![b"v=spf1 ip4:".to_vec(), b"192.0.2.5 -all".to_vec()]),
        )
        .with_txt("multi.test", "other record")
        .with_ip("host.test", "192.0.2.1")
        .with_ip("host.test", "192.0.2.2")
        .with_ip("host.test", "2001:db8::1")
        .with_mx("mail.test", 10, "MX1.Mail.TEST.")
        .with_mx("mail.test", 20, "mx2.mail.test")
        .with_ptr("192.0.2.1", "Host.TEST.")
        .with_ptr("2001:db8::1", "host.test")
        .with_ptr("2001:db8::1", "alias.host.test")
        .with("alias.test", Entry::Cname("mid.test".into()))
        .with("mid.test", Entry::Cname("host.test.".into()))
        .with("spf-alias.test", Entry::Cname("multi.test".into()))
        .with("dangling.test", Entry::Cname("nowhere.test".into()))
        .with("loop1.test", Entry::Cname("loop2.test".into()))
        .with("loop2.test", Entry::Cname("loop1.test".into()))
        .with_txt("half.test", "v=spf1 -all")
        .with("half.test", Entry::Timeout)
        .with("empty-txt.test", Entry::Txt(vec![]))
}

fn start() -> TestDnsServer {
    TestDnsServer::start(Arc::new(zone()))
}

fn options(server: &TestDnsServer) -> ResolverOptions {
    ResolverOptions {
        nameservers: vec![server.addr()],
        timeout: Duration::from_secs(2),
        attempts: 1,
        ..ResolverOptions::default()
    }
}

fn resolver(server: &TestDnsServer) -> HickoryLookup {
    HickoryLookup::new(&options(server)).expect("resolver with explicit servers")
}

fn ipv4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn sorted<T: Ord + Clone>(records: &[T]) -> Vec<T> {
    let mut records = records.to_vec();
    records.sort();
    records
}

#[tokio::test]
async fn txt_character_strings_are_glued_per_record() {
    let server = start();
    let dns = resolver(&server);
    let txt: Vec<Vec<u8>> = dns
        .txt("multi.test")
        .await
        .unwrap()
        .iter()
        .map(|t| t.to_vec())
        .collect();
    assert_eq!(
        sorted(&txt),
        vec![
            b"other record".to_vec(),
            b"v=spf1 ip4:192.0.2.5 -all".to_vec()
        ]
    );
    // Case and the root dot do not matter.
    assert_eq!(dns.txt("MULTI.Test.").await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_and_aaaa_return_only_their_family() {
    let server = start();
    let dns = resolver(&server);
    assert_eq!(
        sorted(&dns.a("host.test").await.unwrap()),
        vec![ipv4("192.0.2.1"), ipv4("192.0.2.2")]
    );
    assert_eq!(
        &*dns.aaaa("host.test").await.unwrap(),
        &["2001:db8::1".parse::<Ipv6Addr>().unwrap()]
    );
}

#[tokio::test]
async fn mx_exchanges_are_lower_case_without_root_dot() {
    let server = start();
    let dns = resolver(&server);
    let mut mx = dns.mx("mail.test").await.unwrap().to_vec();
    mx.sort_by_key(|m| m.preference);
    assert_eq!(
        mx,
        vec![
            Mx {
                preference: 10,
                exchange: "mx1.mail.test".into()
            },
            Mx {
                preference: 20,
                exchange: "mx2.mail.test".into()
            },
        ]
    );
}

#[tokio::test]
async fn ptr_works_for_ipv4_and_ipv6() {
    let server = start();
    let dns = resolver(&server);
    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    assert_eq!(&*dns.ptr(v4).await.unwrap(), &["host.test".to_owned()]);
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(
        sorted(&dns.ptr(v6).await.unwrap()),
        vec!["alias.host.test".to_owned(), "host.test".to_owned()]
    );
    let unknown: IpAddr = "192.0.2.99".parse().unwrap();
    assert_eq!(dns.ptr(unknown).await, Err(DnsError::NxDomain));
}

#[tokio::test]
async fn cnames_are_followed_and_only_the_asked_type_returned() {
    let server = start();
    let dns = resolver(&server);
    // Two hops, to a name with A, AAAA and PTR-less data.
    assert_eq!(
        sorted(&dns.a("alias.test").await.unwrap()),
        vec![ipv4("192.0.2.1"), ipv4("192.0.2.2")]
    );
    assert_eq!(dns.aaaa("alias.test").await.unwrap().len(), 1);
    assert_eq!(dns.txt("spf-alias.test").await.unwrap().len(), 2);
    // The target exists but has no record of the type: NODATA.
    assert_eq!(dns.mx("alias.test").await.unwrap().len(), 0);
    // The target does not exist: NXDOMAIN, as RFC 7208 needs for void
    // lookups (§4.6.4).
    assert_eq!(dns.a("dangling.test").await, Err(DnsError::NxDomain));
}

#[tokio::test]
async fn a_cname_loop_is_a_temporary_error() {
    let server = start();
    let dns = resolver(&server);
    match dns.a("loop1.test").await {
        Err(DnsError::Temporary(why)) => assert!(why.contains("SERVFAIL"), "{why}"),
        other => panic!("expected a temporary error, got {other:?}"),
    }
}

#[tokio::test]
async fn nxdomain_and_nodata_are_distinct() {
    let server = start();
    let dns = resolver(&server);
    assert_eq!(dns.txt("absent.test").await, Err(DnsError::NxDomain));
    assert_eq!(dns.a("sub.absent.test").await, Err(DnsError::NxDomain));
    assert_eq!(dns.txt("host.test").await.unwrap().len(), 0);
    assert_eq!(dns.aaaa("mail.test").await.unwrap().len(), 0);
}

#[tokio::test]
async fn an_empty_txt_entry_is_served_as_one_empty_string() {
    let server = start();
    let dns = resolver(&server);
    let txt = dns.txt("empty-txt.test").await.unwrap();
    assert_eq!(txt.len(), 1);
    assert!(txt[0].is_empty());
}

#[tokio::test]
async fn names_that_cannot_exist_are_nxdomain_without_a_query() {
    let server = start();
    let dns = resolver(&server);
    let long_label = format!("{}.test", "x".repeat(64));
    assert_eq!(dns.txt(&long_label).await, Err(DnsError::NxDomain));
    assert_eq!(dns.a("a..test").await, Err(DnsError::NxDomain));
    assert_eq!(server.queries(), 0);
}

#[tokio::test]
async fn a_timeout_is_temporary_and_bounded_by_the_configured_timeout() {
    let server = start();
    let timeout = Duration::from_millis(500);
    let dns = HickoryLookup::new(&ResolverOptions {
        timeout,
        ..options(&server)
    })
    .unwrap();
    // The TXT record comes before the timeout entry: answered.
    assert_eq!(dns.txt("half.test").await.unwrap().len(), 1);
    let started = Instant::now();
    let answer = dns.a("half.test").await;
    let elapsed = started.elapsed();
    match answer {
        Err(DnsError::Temporary(why)) => {
            assert!(why.contains("timeout"), "{why}");
            assert!(why.contains("half.test"), "{why}");
        }
        other => panic!("expected a temporary error, got {other:?}"),
    }
    assert!(
        elapsed >= timeout.mul_f32(0.9),
        "gave up before the timeout: {elapsed:?}"
    );
    assert!(
        elapsed < timeout + Duration::from_millis(400),
        "took too long: {elapsed:?}"
    );
    assert!(server.dropped_queries() >= 1);
}

#[tokio::test]
async fn attempts_retry_a_timed_out_query() {
    let server = start();
    let timeout = Duration::from_millis(300);
    let dns = HickoryLookup::new(&ResolverOptions {
        timeout,
        attempts: 2,
        ..options(&server)
    })
    .unwrap();
    let started = Instant::now();
    assert!(matches!(
        dns.a("half.test").await,
        Err(DnsError::Temporary(_))
    ));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout * 2 - Duration::from_millis(50),
        "{elapsed:?}"
    );
    assert!(
        elapsed < timeout * 2 + Duration::from_millis(400),
        "{elapsed:?}"
    );
    assert!(server.dropped_queries() >= 2);
}

/// A TXT RRset of about 3 KB: more than the 1232 octets of EDNS that
/// hickory advertises, so the UDP answer is truncated.
fn big_zone() -> Zone {
    let mut zone = Zone::new();
    for i in 0..8u8 {
        let text = format!("v=spf{i} {}", "x".repeat(390));
        zone.add("big.test", Entry::Txt(vec![text.into_bytes()]));
    }
    zone.with_txt("small.test", &"y".repeat(400))
}

#[tokio::test]
async fn truncated_udp_answers_are_retried_over_tcp() {
    let server = TestDnsServer::start(Arc::new(big_zone()));
    let dns = resolver(&server);
    let txt = dns.txt("big.test").await.unwrap();
    assert_eq!(txt.len(), 8);
    // Each record was longer than 255 octets, so it went out as two
    // character-strings and came back glued.
    assert!(
        txt.iter().all(|t| t.len() == 397),
        "{:?}",
        txt.iter().map(|t| t.len()).collect::<Vec<_>>()
    );
    assert_eq!(server.truncated_answers(), 1);
    assert_eq!(server.udp_queries(), 1);
    assert_eq!(server.tcp_queries(), 1);
}

#[tokio::test]
async fn the_server_can_force_truncation_below_the_edns_size() {
    let server = TestDnsServer::start_with(
        Arc::new(big_zone()),
        ServerOptions {
            udp_payload_limit: Some(512),
            ..ServerOptions::default()
        },
    );
    let dns = resolver(&server);
    assert_eq!(
        &*dns.txt("small.test").await.unwrap()[0],
        "y".repeat(400).as_bytes()
    );
    assert_eq!(server.truncated_answers(), 0, "fits in 512 octets");
    let big = "z".repeat(600);
    let server = TestDnsServer::start_with(
        Arc::new(Zone::new().with_txt("t.test", &big)),
        ServerOptions {
            udp_payload_limit: Some(512),
            ..ServerOptions::default()
        },
    );
    let dns = resolver(&server);
    assert_eq!(&*dns.txt("t.test").await.unwrap()[0], big.as_bytes());
    assert_eq!((server.truncated_answers(), server.tcp_queries()), (1, 1));
}

#[tokio::test]
async fn an_unreachable_server_is_a_short_temporary_error() {
    // Bind and drop to find a port with nothing listening.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dns = HickoryLookup::new(&ResolverOptions {
        nameservers: vec![parse_nameserver(&format!("127.0.0.1:{port}")).unwrap()],
        timeout: Duration::from_millis(500),
        attempts: 1,
        ..ResolverOptions::default()
    })
    .unwrap();
    let started = Instant::now();
    match dns.txt("example.test").await {
        Err(DnsError::Temporary(why)) => {
            assert!(why.contains("example.test"), "{why}");
            assert!(
                !why.contains('{') && why.len() < 200,
                "not a short text: {why}"
            );
        }
        other => panic!("expected a temporary error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn the_cache_in_front_of_hickory_saves_queries() {
    let server = start();
    let dns = CachingLookup::new(resolver(&server), CacheOptions::default());
    for _ in 0..3 {
        assert_eq!(dns.txt("multi.test").await.unwrap().len(), 2);
        assert_eq!(dns.a("alias.test").await.unwrap().len(), 2);
        assert_eq!(dns.txt("absent.test").await, Err(DnsError::NxDomain));
        assert_eq!(dns.aaaa("mail.test").await.unwrap().len(), 0);
    }
    // One query each (the alias took one: the server sent the whole
    // chain), however often asked.
    assert_eq!(server.queries(), 4);
    let stats = dns.stats();
    assert_eq!((stats.hits, stats.misses), (8, 4), "{stats:?}");
    // Temporary errors are not cached.
    let timeout = HickoryLookup::new(&ResolverOptions {
        timeout: Duration::from_millis(200),
        ..options(&server)
    })
    .unwrap();
    let dns = CachingLookup::new(timeout, CacheOptions::default());
    assert!(matches!(
        dns.a("half.test").await,
        Err(DnsError::Temporary(_))
    ));
    assert!(matches!(
        dns.a("half.test").await,
        Err(DnsError::Temporary(_))
    ));
    assert_eq!(dns.stats().misses, 2);
}

#[tokio::test]
async fn cached_answers_expire_with_the_server_ttls() {
    let server = TestDnsServer::start_with(
        Arc::new(zone()),
        ServerOptions {
            ttl: 1,
            negative_ttl: 1,
            ..ServerOptions::default()
        },
    );
    let dns = CachingLookup::new(resolver(&server), CacheOptions::default());
    let ask = || async {
        assert_eq!(dns.a("host.test").await.unwrap().len(), 2);
        assert_eq!(dns.txt("absent.test").await, Err(DnsError::NxDomain));
        assert_eq!(dns.txt("host.test").await.unwrap().len(), 0);
    };
    ask().await;
    ask().await;
    assert_eq!(server.queries(), 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ask().await;
    assert_eq!(server.queries(), 6, "positive and negative entries expired");
}

#[test]
fn the_server_works_without_a_test_runtime_and_stops_on_drop() {
    let server = start();
    let addr = server.addr();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dns = resolver(&server);
    let answer = runtime.block_on(dns.a("host.test")).unwrap();
    assert_eq!(answer.len(), 2);
    drop(server);
    // Nothing listens on the TCP port any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn the_system_configuration_is_read_or_explained() {
    match HickoryLookup::new(&ResolverOptions::default()) {
        Ok(_) => assert!(std::path::Path::new("/etc/resolv.conf").exists()),
        Err(e) => assert!(e.to_string().contains("/etc/resolv.conf"), "{e}"),
    }
}
