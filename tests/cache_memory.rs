//! What the caches keep alive is what they count: parsed records are
//! weighed honestly, and a flood of distinct large SPF records (one per
//! sender domain, as an attacker's wildcard zone serves them) stays within
//! the DNS cache's byte budget.
//!
//! Its own test binary: the global allocator here counts every allocation,
//! per thread, so that each test measures only its own (each runs on one
//! thread, its runtime included).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use spfmilter::dns::cache::{CacheOptions, CachingLookup, Source, Sourced, heap_cost};
use spfmilter::dns::{DnsError, Mx, Txt};
use spfmilter::spf::{Evaluator, Identity, Record, Request, SpfResult};

/// Counts the bytes asked for and the chunks malloc hands out for them
/// ([`heap_cost`] models glibc's), live on this thread.
struct Counting;

thread_local! {
    static REQUESTED: Cell<isize> = const { Cell::new(0) };
    static CHUNKS: Cell<isize> = const { Cell::new(0) };
}

fn count(size: usize, sign: isize) {
    // `try_with`: the thread's counters may be gone while it exits.
    let _ = REQUESTED.try_with(|c| c.set(c.get() + sign * size as isize));
    let _ = CHUNKS.try_with(|c| c.set(c.get() + sign * heap_cost(size) as isize));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live (requested, chunk) bytes of this thread.
fn live() -> (isize, isize) {
    (REQUESTED.with(Cell::get), CHUNKS.with(Cell::get))
}

/// `terms` repeated (numbered with `{}`) after `v=spf1` until the record
/// is about `len` bytes long, then `-all`.
fn record_of(len: usize, term: impl Fn(usize) -> String) -> String {
    let mut text = String::from("v=spf1");
    let mut i = 0;
    while text.len() < len {
        text.push(' ');
        text.push_str(&term(i));
        i += 1;
    }
    text.push_str(" -all");
    text
}

/// How many shapes [`shape`] knows.
const SHAPES: usize = 6;

/// Records of the shapes a publisher can choose, about `len` bytes each.
fn shapes(len: usize) -> Vec<(&'static str, String)> {
    (0..SHAPES).map(|i| shape(i, len)).collect()
}

/// Record shape number `i` (below [`SHAPES`]), about `len` bytes long.
fn shape(i: usize, len: usize) -> (&'static str, String) {
    match i {
        0 => (
            "ip4",
            record_of(len, |i| {
                format!("ip4:10.{}.{}.0/24", (i >> 8) & 255, i & 255)
            }),
        ),
        1 => ("bare a", record_of(len, |_| "a".to_owned())),
        2 => (
            "ip6",
            record_of(len, |i| format!("ip6:2001:db8:{:x}::/48", i & 0xffff)),
        ),
        3 => (
            "long includes",
            record_of(len, |i| {
                format!("?include:_spf{i}.{}.example.net", "long-label".repeat(5))
            }),
        ),
        4 => (
            "macros",
            record_of(len, |i| {
                format!("~exists:%{{ir}}.%{{l1r-+}}.%{{d2}}.{i}.%{{h}}.x%%y%_z%-.bl.example")
            }),
        ),
        _ => (
            "mixed",
            record_of(len, |i| match i % 4 {
                0 => format!("a:h{i}.example.org/24//64"),
                1 => format!("mx:m{i}.example.org"),
                2 => "ptr".to_owned(),
                _ => format!("xyz{i}=%{{d}}.example"),
            }) + " redirect=_spf.example.com exp=explain.%{d}.example",
        ),
    }
}

/// The weight a cache gives a parsed record covers every chunk malloc
/// hands out for it, and is not wildly above what was asked for.
#[test]
fn a_parsed_record_weighs_at_least_what_it_allocates() {
    for len in [20, 300, 4_000, 60_000] {
        for (shape, text) in shapes(len) {
            let before = live();
            let record = Box::new(Record::parse(text.as_bytes()).expect(shape));
            let after = live();
            let requested = (after.0 - before.0) as usize;
            let chunks = (after.1 - before.1) as usize;
            let weight = heap_cost(size_of::<Record>()) + record.heap_size();
            assert!(
                weight >= chunks,
                "{shape} ({len} bytes): weight {weight} < {chunks} bytes of chunks"
            );
            assert!(
                weight <= 2 * requested,
                "{shape} ({len} bytes): weight {weight} > twice {requested} bytes requested"
            );
            drop(record);
            assert_eq!(live(), before, "{shape}: the record owns all it allocated");
        }
    }
}

/// An attacker's DNS: every `dN.attacker.example` has its own SPF record
/// of about 60 kB (as the wire would bring it, in 255-byte strings glued
/// together), in one of the shapes above; every other query is NXDOMAIN.
struct Flood {
    queries: AtomicUsize,
}

const RECORD_BYTES: usize = 60_000;

impl Flood {
    fn record(&self, name: &str) -> Option<Txt> {
        let n: usize = name
            .strip_prefix('d')?
            .strip_suffix(".attacker.example")?
            .parse()
            .ok()?;
        // Distinct per name: the shape's terms, then the name in a
        // modifier; every eighth record is not valid SPF (a syntax error
        // is kept as its parse too).
        let (_, text) = shape(n % SHAPES, RECORD_BYTES);
        let text = if n % 8 == 7 {
            format!("{text} frobnicate:{n}")
        } else {
            format!("{text} n={n}")
        };
        let bytes: Vec<u8> = text
            .as_bytes()
            .chunks(255)
            .flat_map(|s| s.iter().copied())
            .collect();
        Some(Txt::new(bytes))
    }
}

impl Source for Flood {
    async fn txt_with_ttl(&self, name: &str) -> Sourced<Txt> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let answer = match self.record(name) {
            Some(txt) => Ok(Arc::from(vec![txt])),
            None => Err(DnsError::NxDomain),
        };
        (answer, Duration::from_secs(3600))
    }
    async fn a_with_ttl(&self, _: &str) -> Sourced<Ipv4Addr> {
        (Err(DnsError::NxDomain), Duration::from_secs(3600))
    }
    async fn aaaa_with_ttl(&self, _: &str) -> Sourced<Ipv6Addr> {
        (Err(DnsError::NxDomain), Duration::from_secs(3600))
    }
    async fn mx_with_ttl(&self, _: &str) -> Sourced<Mx> {
        (Err(DnsError::NxDomain), Duration::from_secs(3600))
    }
    async fn ptr_with_ttl(&self, _: IpAddr) -> Sourced<String> {
        (Err(DnsError::NxDomain), Duration::from_secs(3600))
    }
}

/// The flood of the security review: one distinct ~60 kB record per
/// sender domain. Whatever the cache keeps (records, parsed policies,
/// syntax errors, tables) stays within its budget, and what it counts is
/// what is really held.
#[test]
fn a_flood_of_distinct_large_records_stays_within_the_budget() {
    const BUDGET: usize = 4 << 20;
    // The runtime, the evaluator's own structures and what the allocator
    // counts on this thread outside the cache.
    const SLACK: isize = 256 << 10;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let options = CacheOptions {
        max_bytes: BUDGET,
        // Four shards of 1 MiB: room for a few of these records each.
        max_entries: 128,
        ..CacheOptions::default()
    };
    let cache = CachingLookup::new(
        Flood {
            queries: AtomicUsize::new(0),
        },
        options,
    );
    let evaluator = Evaluator::new(cache.clone());
    let start = live().1;
    let mut peak = 0;
    let mut results = [0usize; 2];
    for n in 0..400 {
        let sender = format!("user@d{n}.attacker.example");
        let request = Request {
            ip: "192.0.2.1".parse().unwrap(),
            helo: "mx.attacker.example",
            sender: &sender,
            receiver: None,
        };
        let outcome = runtime.block_on(evaluator.check(&request, Identity::MailFrom));
        // The client matches nothing (or the record is broken).
        match outcome.result {
            SpfResult::PermError => results[1] += 1,
            _ => results[0] += 1,
        }
        let held = live().1 - start;
        let counted = cache.stats().bytes as isize;
        peak = peak.max(held);
        assert!(
            counted <= BUDGET as isize,
            "after {n} senders the cache counts {counted} bytes"
        );
        assert!(
            held <= counted + SLACK,
            "after {n} senders {held} bytes are held, the cache counts {counted}"
        );
    }
    let stats = cache.stats();
    // One TXT query per sender domain, and a few for the includes.
    assert!(cache.source().queries.load(Ordering::Relaxed) >= 400);
    eprintln!("peak {peak} bytes held, {stats:?}");
    assert!(results[0] > 0 && results[1] > 0, "{results:?}");
    // The flood did fill the cache, and the budget kept it small.
    assert!(stats.evictions > 0 && stats.entries > 0, "{stats:?}");
    assert!(peak <= (BUDGET as isize) + SLACK, "peak {peak}");
    drop(evaluator);
    drop(cache);
    assert!(live().1 - start <= SLACK, "the cache let go of everything");
}
