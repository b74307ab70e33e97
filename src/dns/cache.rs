//! A shared, bounded, TTL-respecting cache in front of a DNS [`Source`].
//!
//! Every SPF check asks the same few questions again and again (the TXT
//! record of a big mail provider, its `include:`s, their A records), so the
//! milter keeps answers for as long as their TTL allows (RFC 1035 §3.2.1)
//! and NXDOMAIN/NODATA answers for as long as the zone's SOA says (RFC 2308
//! §5). Temporary failures are never cached: the next message retries.
//!
//! Design, chosen for a cheap warm hit (see `CachingLookup::get`):
//!
//! * keys are `[type byte] ++ lower-case name without the root dot`, built on
//!   the stack, hashed once with hashbrown's seeded foldhash (seeded per
//!   cache, so a sender cannot pick names that collide);
//! * the hash picks one of up to 64 shards, each a `Mutex` around a
//!   `hashbrown::HashTable` and the shard's counters. A hit costs three
//!   atomic operations (lock, unlock, `Arc` clone): a `RwLock` would cost as
//!   many plus one per counter, and its shared read lock does not avoid
//!   the cache-line transfer that dominates under contention anyway;
//! * eviction is CLOCK (second chance): a hit sets a per-entry flag, and a
//!   full shard evicts the first entry in insertion order whose flag is
//!   clear (or that has expired), clearing the flags it passes;
//! * the bound is both an entry count and a byte budget, because a single
//!   TXT RRset may be 64 KiB and senders choose which domains we look up.
//!   The budget counts everything the cache keeps alive, weighed as the
//!   allocator sees it ([`heap_cost`]): the records, their keys, each
//!   shard's table and CLOCK queue, and the memo a reader keeps with a TXT
//!   record (the parsed SPF policy, often several times the size of its
//!   text), charged when it is made ([`Lookup::memo_made`]);
//! * concurrent misses for the same key share one query (single-flight);
//!   the leader's future may be dropped at any time, in which case the
//!   waiters notice and one of them queries instead. A flight is a key and
//!   a channel, and the answer it hands over lives only as long as the
//!   callers holding it: they are bounded by the queries in progress (one
//!   per evaluation), not by the budget.

use std::collections::VecDeque;
use std::future::Future;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashTable};
use tokio::sync::watch;

pub use super::source::{Source, Sourced, ZONE_TTL};
use super::{Answer, DnsError, Lookup, Mx, Txt, reverse_name};

/// Where the cache gets the time from: milliseconds on a monotonic scale
/// with an arbitrary origin. Only tests need anything but [`SystemClock`].
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The system's monotonic clock, read coarsely.
///
/// Reading the precise clock costs more than the rest of a cache hit put
/// together (about 40 ns against 10 ns for the coarse clock here), and TTLs
/// are whole seconds: the coarse clock's few milliseconds of resolution do
/// not matter. `coarsetime` reads `CLOCK_MONOTONIC_COARSE` on Linux and
/// falls back to the precise clock elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        coarsetime::Duration::from_ticks(coarsetime::Instant::now().as_ticks()).as_millis()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Limits of a [`CachingLookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    /// At most this many RRsets (positive or negative) are kept; 0 disables
    /// caching (concurrent identical queries are still shared).
    pub max_entries: usize,
    /// At most this many bytes are kept alive by the cache: records,
    /// names, memos made from TXT records (parsed SPF policies) and the
    /// cache's own tables, each weighed with the allocator's overhead.
    /// The budget is split evenly between the shards (up to 64), so an
    /// entry heavier than one shard's share is not kept; and `max_entries`
    /// is lowered where needed so that the tables never take more than
    /// half of it.
    pub max_bytes: usize,
    /// TTLs below this are raised to it. RFC 1035 §3.2.1: a TTL of zero
    /// means "do not cache", which is what happens with the default of 0.
    pub min_ttl: Duration,
    /// TTLs of records above this are lowered to it, so that a changed SPF
    /// record is seen within this time whatever its publisher said.
    pub max_ttl: Duration,
    /// Negative TTLs (NXDOMAIN, NODATA) above this are lowered to it.
    /// RFC 2308 §5: "values of one to three hours have been found to work
    /// well".
    pub max_negative_ttl: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            max_entries: 50_000,
            max_bytes: DEFAULT_MAX_BYTES,
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(86_400),
            max_negative_ttl: Duration::from_secs(3600),
        }
    }
}

/// The default byte budget, 32 MiB: the working set of a busy site
/// (a few thousand sender domains with their include trees, typically
/// 1 to 3 kB each with the parsed policy) fits many times over, and a
/// small MX host spends a bounded, modest share of its memory on it
/// whatever the senders' DNS publishes.
pub const DEFAULT_MAX_BYTES: usize = 32 << 20;

/// What one heap allocation of `bytes` costs, as glibc's malloc takes it
/// on a 64-bit system: the bytes, an 8-byte header, rounded up to 16, at
/// least 32. Nothing for an empty allocation (Rust makes none). Used to
/// weigh everything counted against a cache's byte budget.
pub const fn heap_cost(bytes: usize) -> usize {
    if bytes == 0 {
        return 0;
    }
    let chunk = bytes.saturating_add(8 + 15) & !15;
    if chunk < 32 { 32 } else { chunk }
}

/// Counters of a [`CachingLookup`], for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers served from the cache.
    pub hits: u64,
    /// Queries sent to the source.
    pub misses: u64,
    /// Answers taken from another caller's concurrent identical query.
    pub coalesced: u64,
    /// Entries dropped to make room (expired ones included).
    pub evictions: u64,
    /// Entries currently held (some may have expired).
    pub entries: u64,
    /// Bytes currently counted against the budget.
    pub bytes: u64,
}

/// A shared cache in front of `S`. Cloning is cheap and clones share the
/// cache.
pub struct CachingLookup<S, C = SystemClock> {
    inner: Arc<Inner<S, C>>,
}

impl<S, C> Clone for CachingLookup<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<S, C> {
    source: S,
    clock: C,
    options: CacheOptions,
    hasher: DefaultHashBuilder,
    shards: Box<[Shard]>,
    /// `shards.len() - 1`; the length is a power of two.
    shard_mask: u64,
}

/// One RRset of any of the five types, as stored.
#[derive(Debug, Clone)]
enum Rrset {
    Txt(Arc<[Txt]>),
    A(Arc<[Ipv4Addr]>),
    Aaaa(Arc<[Ipv6Addr]>),
    Mx(Arc<[Mx]>),
    Ptr(Arc<[String]>),
}

/// A cacheable answer: records (an empty set is NODATA) or NXDOMAIN.
#[derive(Debug, Clone)]
enum Cached {
    Records(Rrset),
    NxDomain,
}

/// What a query in flight hands to the callers waiting for it.
type Outcome = Result<Cached, DnsError>;

/// Glue between the five record types and [`Rrset`].
trait Kind: Sized + Send + Sync + 'static {
    /// The first byte of the key (the DNS type number, truncated; only
    /// needs to be distinct between the five).
    const TAG: u8;
    fn wrap(set: Arc<[Self]>) -> Rrset;
    fn unwrap(set: Rrset) -> Option<Arc<[Self]>>;
    /// Heap bytes of the records as stored (the shared slice and what
    /// each record owns), for the byte budget.
    fn weight(set: &[Self]) -> usize;
}

macro_rules! kind {
    ($ty:ty, $variant:ident, $tag:expr, |$set:ident| $weight:expr) => {
        impl Kind for $ty {
            const TAG: u8 = $tag;
            fn wrap(set: Arc<[Self]>) -> Rrset {
                Rrset::$variant(set)
            }
            fn unwrap(set: Rrset) -> Option<Arc<[Self]>> {
                match set {
                    Rrset::$variant(set) => Some(set),
                    _ => None,
                }
            }
            fn weight($set: &[Self]) -> usize {
                $weight
            }
        }
    };
}

/// The `Arc<[T]>` holding a set: two counters and the elements.
fn slice_cost<T>(set: &[T]) -> usize {
    heap_cost(2 * size_of::<usize>() + size_of_val(set))
}

kind!(Txt, Txt, 16, |set| slice_cost(set)
    + set.iter().map(|t| heap_cost(t.len())).sum::<usize>());
kind!(Ipv4Addr, A, 1, |set| slice_cost(set));
kind!(Ipv6Addr, Aaaa, 28, |set| slice_cost(set));
kind!(Mx, Mx, 15, |set| slice_cost(set)
    + set
        .iter()
        .map(|m| heap_cost(m.exchange.capacity()))
        .sum::<usize>());
kind!(String, Ptr, 12, |set| slice_cost(set)
    + set.iter().map(|s| heap_cost(s.capacity())).sum::<usize>());

/// What a shard's table and CLOCK queue may cost per entry they can hold:
/// the table keeps at most 8 slots in 7 full and grows by doubling, the
/// queue doubles too, so with the growth margin either may hold about
/// twice the entries it needs. Used to keep the per-shard entry bound
/// where these structures take at most half the shard's byte budget.
const STRUCTURE_PER_ENTRY: usize = 3 * (size_of::<Entry>() + 1) + 2 * size_of::<(u64, u64)>();

/// At most this many shards: enough to make lock contention rare on any
/// machine this runs on, few enough that a small cache is not split into
/// slivers.
const MAX_SHARDS: usize = 64;
/// A shard should hold at least this many entries, so that an unlucky hash
/// distribution does not evict long before the cache is full.
const MIN_SHARD_ENTRIES: usize = 32;

struct Entry {
    hash: u64,
    key: Box<[u8]>,
    /// Distinguishes this entry from others with the same hash in the
    /// CLOCK queue; unique within the shard.
    seq: u64,
    value: Cached,
    /// [`Clock::now_ms`] after which the entry is stale.
    expires: u64,
    weight: usize,
    /// CLOCK's reference bit: set by hits, cleared when the hand passes.
    visited: bool,
}

struct Flight {
    hash: u64,
    key: Box<[u8]>,
    id: u64,
    result: watch::Receiver<Option<Outcome>>,
}

#[derive(Default)]
struct ShardState {
    table: HashTable<Entry>,
    /// The CLOCK: `(hash, seq)` of every entry, oldest first. Replacing an
    /// entry's value keeps its slot, and entries are only removed by the
    /// hand, so the queue and the table always hold the same entries.
    clock: VecDeque<(u64, u64)>,
    bytes: usize,
    next_seq: u64,
    /// Queries in flight, at most a handful, so a vector will do.
    flights: Vec<Flight>,
    hits: u64,
    misses: u64,
    coalesced: u64,
    evictions: u64,
}

impl ShardState {
    /// Bytes counted against the shard's budget: the entries and the
    /// allocations of the table and the CLOCK queue (which keep their
    /// size when entries leave).
    fn used(&self) -> usize {
        self.bytes
            + heap_cost(self.table.allocation_size())
            + heap_cost(self.clock.capacity() * size_of::<(u64, u64)>())
    }
}

/// Cache-line aligned so that the counters of neighbouring shards do not
/// share a line.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    state: Mutex<ShardState>,
    max_entries: usize,
    max_bytes: usize,
}

/// Calls `f` with the key of `name` for type `tag`: the tag, then the
/// lower-case name without the root dot. Built on the stack (and never
/// moved), since this runs on every lookup; names are at most 253 octets
/// in text form, longer (invalid) ones go to the heap.
#[inline]
fn with_key<R>(tag: u8, name: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
    let mut inline = [0u8; 256];
    let mut heap = Vec::new();
    let key: &mut [u8] = if name.len() < inline.len() {
        &mut inline[..=name.len()]
    } else {
        heap.resize(name.len() + 1, 0);
        &mut heap
    };
    key[0] = tag;
    for (dst, src) in key[1..].iter_mut().zip(name) {
        *dst = src.to_ascii_lowercase();
    }
    f(key)
}

fn lock(shard: &Shard) -> MutexGuard<'_, ShardState> {
    // A panic while holding the lock cannot leave the state inconsistent
    // in a way that matters more than losing the cache, so carry on.
    shard.state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the slow path decided under the shard's lock.
enum Step {
    Hit(Cached),
    Wait(watch::Receiver<Option<Outcome>>),
    Lead(watch::Sender<Option<Outcome>>, u64),
}

impl Shard {
    #[inline]
    fn get(&self, hash: u64, key: &[u8], now: u64) -> Option<Cached> {
        let mut state = lock(self);
        let entry = state.table.find_mut(hash, |e| *e.key == *key)?;
        if entry.expires <= now {
            return None;
        }
        entry.visited = true;
        let value = entry.value.clone();
        state.hits += 1;
        Some(value)
    }

    fn hit_or_join_or_lead(&self, hash: u64, key: &[u8], now: u64) -> Step {
        let mut state = lock(self);
        if let Some(entry) = state.table.find_mut(hash, |e| *e.key == *key)
            && entry.expires > now
        {
            entry.visited = true;
            let value = entry.value.clone();
            state.hits += 1;
            return Step::Hit(value);
        }
        if let Some(flight) = state
            .flights
            .iter()
            .find(|f| f.hash == hash && *f.key == *key)
        {
            return Step::Wait(flight.result.clone());
        }
        let (tx, rx) = watch::channel(None);
        let id = state.next_seq;
        state.next_seq += 1;
        state.misses += 1;
        state.flights.push(Flight {
            hash,
            key: key.into(),
            id,
            result: rx,
        });
        Step::Lead(tx, id)
    }

    fn end_flight(state: &mut ShardState, id: u64) {
        if let Some(i) = state.flights.iter().position(|f| f.id == id) {
            state.flights.swap_remove(i);
        }
    }

    /// Stores an answer (if it fits at all) and ends the flight.
    fn complete(
        &self,
        hash: u64,
        key: &[u8],
        id: u64,
        now: u64,
        store: Option<(Cached, u64, usize)>,
    ) {
        let mut state = lock(self);
        let state = &mut *state;
        Self::end_flight(state, id);
        let Some((value, expires, weight)) = store else {
            return;
        };
        let weight = weight + heap_cost(key.len());
        if self.max_entries == 0 || weight > self.max_bytes {
            return;
        }
        if let Some(entry) = state.table.find_mut(hash, |e| *e.key == *key) {
            // Refresh in place: the entry keeps its CLOCK slot.
            state.bytes = state.bytes - entry.weight + weight;
            entry.value = value;
            entry.expires = expires;
            entry.weight = weight;
            entry.visited = true;
        } else {
            let seq = state.next_seq;
            state.next_seq += 1;
            state.table.insert_unique(
                hash,
                Entry {
                    hash,
                    key: key.into(),
                    seq,
                    value,
                    expires,
                    weight,
                    visited: false,
                },
                |e| e.hash,
            );
            state.clock.push_back((hash, seq));
            state.bytes += weight;
        }
        self.shrink(state, now);
    }

    /// Counts a memo of `bytes` made in the TXT answer `answer` against
    /// the entry holding it, if the cache still holds that very answer.
    /// An entry too heavy for the shard with its memo is dropped at once.
    fn charge_memo(&self, hash: u64, key: &[u8], answer: &Arc<[Txt]>, bytes: usize, now: u64) {
        let mut state = lock(self);
        let state = &mut *state;
        let Some(entry) = state.table.find_mut(hash, |e| *e.key == *key) else {
            return;
        };
        let Cached::Records(Rrset::Txt(held)) = &entry.value else {
            return;
        };
        if !Arc::ptr_eq(held, answer) {
            return;
        }
        entry.weight = entry.weight.saturating_add(bytes);
        state.bytes = state.bytes.saturating_add(bytes);
        if entry.weight > self.max_bytes {
            let seq = entry.seq;
            if let Ok(entry) = state.table.find_entry(hash, |e| e.seq == seq) {
                let (removed, _) = entry.remove();
                state.bytes -= removed.weight;
                state.evictions += 1;
                state.clock.retain(|&slot| slot != (hash, seq));
            }
        }
        self.shrink(state, now);
    }

    /// Evicts until the shard is within both of its bounds.
    fn shrink(&self, state: &mut ShardState, now: u64) {
        while state.table.len() > self.max_entries || state.used() > self.max_bytes {
            if !self.evict_one(state, now) {
                break;
            }
        }
    }

    /// Moves the CLOCK hand until it drops one entry: an expired one, or
    /// one not hit since the hand last passed. Returns false if the shard
    /// is empty.
    fn evict_one(&self, state: &mut ShardState, now: u64) -> bool {
        // Each entry is passed over at most once before its bit is clear,
        // so two rounds always suffice.
        let rounds = 2 * state.clock.len();
        for _ in 0..rounds {
            let Some((hash, seq)) = state.clock.pop_front() else {
                return false;
            };
            let Ok(entry) = state.table.find_entry(hash, |e| e.seq == seq) else {
                debug_assert!(false, "CLOCK slot without an entry");
                continue;
            };
            let mut entry = entry;
            if entry.get().expires > now && entry.get().visited {
                entry.get_mut().visited = false;
                state.clock.push_back((hash, seq));
                continue;
            }
            let (removed, _) = entry.remove();
            state.bytes -= removed.weight;
            state.evictions += 1;
            return true;
        }
        false
    }
}

/// Ends a flight when the leader's future completes or is dropped. If it
/// is dropped before an answer is in, the sender goes away unsent, the
/// waiters see the channel closed and retry (one of them leads then).
struct FlightGuard<'a> {
    shard: &'a Shard,
    id: u64,
    done: bool,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            Shard::end_flight(&mut lock(self.shard), self.id);
        }
    }
}

impl<S: Source> CachingLookup<S, SystemClock> {
    pub fn new(source: S, options: CacheOptions) -> Self {
        Self::with_clock(source, options, SystemClock)
    }
}

impl<S: Source, C: Clock> CachingLookup<S, C> {
    /// A cache reading the time from `clock` (for tests).
    pub fn with_clock(source: S, options: CacheOptions, clock: C) -> Self {
        let shard_count = (options.max_entries / MIN_SHARD_ENTRIES)
            .clamp(1, MAX_SHARDS)
            .next_power_of_two()
            .min(MAX_SHARDS);
        // Round down so that the totals never exceed the configured bounds.
        let max_bytes = options.max_bytes / shard_count;
        // And leave at least half of each shard's bytes to the records.
        let max_entries =
            (options.max_entries / shard_count).min(max_bytes / 2 / STRUCTURE_PER_ENTRY);
        let shards = (0..shard_count)
            .map(|_| Shard {
                max_entries,
                max_bytes,
                ..Shard::default()
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                source,
                clock,
                options,
                hasher: DefaultHashBuilder::default(),
                shards,
                shard_mask: shard_count as u64 - 1,
            }),
        }
    }

    /// The layer below the cache.
    pub fn source(&self) -> &S {
        &self.inner.source
    }

    /// The counters, summed over the shards.
    pub fn stats(&self) -> CacheStats {
        let mut stats = CacheStats::default();
        for shard in &self.inner.shards {
            let state = lock(shard);
            stats.hits += state.hits;
            stats.misses += state.misses;
            stats.coalesced += state.coalesced;
            stats.evictions += state.evictions;
            stats.entries += state.table.len() as u64;
            stats.bytes += state.used() as u64;
        }
        stats
    }

    /// Drops every entry (queries in flight are left alone).
    pub fn clear(&self) {
        for shard in &self.inner.shards {
            let mut state = lock(shard);
            state.table.clear();
            state.clock.clear();
            state.bytes = 0;
        }
    }

    /// When an answer with `ttl` fetched at `now` goes stale, or `None` if
    /// it must not be cached.
    fn cache_until(&self, now: u64, ttl: Duration, negative: bool) -> Option<u64> {
        let options = &self.inner.options;
        let max = if negative {
            options.max_negative_ttl
        } else {
            options.max_ttl
        };
        // `max(min)` first so that a misconfigured min > max yields max.
        let ttl = millis(ttl.max(options.min_ttl).min(max));
        (ttl > 0).then(|| now.saturating_add(ttl))
    }

    fn shard(&self, hash: u64) -> &Shard {
        // The table uses the low bits (bucket) and the top 7 (tag) of the
        // hash; pick the shard from bits neither relies on much.
        &self.inner.shards[((hash >> 32) & self.inner.shard_mask) as usize]
    }

    /// The warm path, kept out of the async state machine so that the key
    /// buffer stays on the stack and the returned future stays small.
    #[inline]
    fn try_hit<T: Kind>(&self, name: &str) -> Option<Answer<T>> {
        with_key(T::TAG, name, |key| {
            let hash = self.inner.hasher.hash_one(key);
            let shard = self.shard(hash);
            let cached = shard.get(hash, key, self.inner.clock.now_ms())?;
            Some(unpack(cached))
        })
    }

    async fn get<T, F, Fut>(&self, name: &str, fetch: F) -> Answer<T>
    where
        T: Kind,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Sourced<T>>,
    {
        if let Some(answer) = self.try_hit(name) {
            return answer;
        }
        // Boxed: the source's future (hickory's is large) must not make
        // every hit's future large too.
        Box::pin(self.miss(name, fetch)).await
    }

    async fn miss<T, F, Fut>(&self, name: &str, fetch: F) -> Answer<T>
    where
        T: Kind,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Sourced<T>>,
    {
        let key: Box<[u8]> = with_key(T::TAG, name, |key| key.into());
        let key = &*key;
        let hash = self.inner.hasher.hash_one(key);
        let shard = self.shard(hash);

        let (tx, id) = loop {
            match shard.hit_or_join_or_lead(hash, key, self.inner.clock.now_ms()) {
                Step::Hit(cached) => return unpack(cached),
                Step::Wait(mut rx) => {
                    let outcome = match rx.wait_for(Option::is_some).await {
                        Ok(outcome) => outcome.clone(),
                        Err(_) => None,
                    };
                    if let Some(outcome) = outcome {
                        lock(shard).coalesced += 1;
                        return outcome.and_then(unpack);
                    }
                    // The leader was dropped (its caller gave up): try again.
                }
                Step::Lead(tx, id) => break (tx, id),
            }
        };

        let mut guard = FlightGuard {
            shard,
            id,
            done: false,
        };
        let (answer, ttl) = fetch().await;
        let now = self.inner.clock.now_ms();
        let outcome: Outcome = match &answer {
            Ok(records) => Ok(Cached::Records(T::wrap(Arc::clone(records)))),
            Err(DnsError::NxDomain) => Ok(Cached::NxDomain),
            Err(e @ DnsError::Temporary(_)) => Err(e.clone()),
        };
        let store = match &outcome {
            // Temporary errors are not cached: the next caller retries.
            Err(_) => None,
            Ok(cached) => {
                let (negative, weight) = match &answer {
                    Ok(records) => (records.is_empty(), T::weight(records)),
                    Err(_) => (true, 0),
                };
                self.cache_until(now, ttl, negative)
                    .map(|until| (cached.clone(), until, weight))
            }
        };
        shard.complete(hash, key, id, now, store);
        guard.done = true;
        drop(guard);
        // Waiters that subscribed before the flight ended get the answer;
        // later callers find it in the table (or query again if it was not
        // cacheable). No receivers left is fine.
        let _ = tx.send(Some(outcome));
        answer
    }
}

fn unpack<T: Kind>(cached: Cached) -> Answer<T> {
    match cached {
        Cached::NxDomain => Err(DnsError::NxDomain),
        Cached::Records(set) => T::unwrap(set)
            // Unreachable: the key's tag determines the variant.
            .ok_or_else(|| DnsError::Temporary("internal cache type mismatch".into())),
    }
}

impl<S: Source, C: Clock> Lookup for CachingLookup<S, C> {
    fn txt(&self, name: &str) -> impl Future<Output = Answer<Txt>> + Send {
        self.get(name, move || self.inner.source.txt_with_ttl(name))
    }
    fn a(&self, name: &str) -> impl Future<Output = Answer<Ipv4Addr>> + Send {
        self.get(name, move || self.inner.source.a_with_ttl(name))
    }
    fn aaaa(&self, name: &str) -> impl Future<Output = Answer<Ipv6Addr>> + Send {
        self.get(name, move || self.inner.source.aaaa_with_ttl(name))
    }
    fn mx(&self, name: &str) -> impl Future<Output = Answer<Mx>> + Send {
        self.get(name, move || self.inner.source.mx_with_ttl(name))
    }
    async fn ptr(&self, ip: IpAddr) -> Answer<String> {
        let name = reverse_name(ip);
        self.get(&name, || self.inner.source.ptr_with_ttl(ip)).await
    }
    fn memo_made(&self, name: &str, answer: &Arc<[Txt]>, bytes: usize) {
        with_key(Txt::TAG, name, |key| {
            let hash = self.inner.hasher.hash_one(key);
            self.shard(hash)
                .charge_memo(hash, key, answer, bytes, self.inner.clock.now_ms());
        });
    }
    /// Concurrent identical queries share one (single-flight), and answers
    /// are kept unless caching is off (`max_entries` or `max_bytes` 0).
    fn shares_answers(&self) -> bool {
        let options = &self.inner.options;
        options.max_entries > 0 && options.max_bytes > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::Zone;
    use crate::dns::zone::Entry as ZoneEntry;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// A clock that only moves when told to.
    #[derive(Clone)]
    struct ManualClock(Arc<AtomicU64>);

    impl ManualClock {
        fn new() -> Self {
            Self(Arc::new(AtomicU64::new(1_000_000)))
        }
        fn advance(&self, by: Duration) {
            self.0.fetch_add(millis(by), Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A source over a zone that counts queries and gives chosen TTLs.
    struct Counting {
        zone: Zone,
        ttl: Duration,
        negative_ttl: Duration,
        queries: AtomicUsize,
        /// Make every query wait for this long (to overlap them).
        delay: Duration,
    }

    impl Counting {
        fn new(zone: Zone) -> Self {
            Self {
                zone,
                ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(30),
                queries: AtomicUsize::new(0),
                delay: Duration::ZERO,
            }
        }
        fn queries(&self) -> usize {
            self.queries.load(Ordering::SeqCst)
        }
        async fn with_ttl<T>(&self, answer: impl Future<Output = Answer<T>>) -> Sourced<T> {
            self.queries.fetch_add(1, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let answer = answer.await;
            let ttl = match &answer {
                Ok(records) if !records.is_empty() => self.ttl,
                _ => self.negative_ttl,
            };
            (answer, ttl)
        }
    }

    impl Source for Counting {
        async fn txt_with_ttl(&self, name: &str) -> Sourced<Txt> {
            self.with_ttl(self.zone.txt(name)).await
        }
        async fn a_with_ttl(&self, name: &str) -> Sourced<Ipv4Addr> {
            self.with_ttl(self.zone.a(name)).await
        }
        async fn aaaa_with_ttl(&self, name: &str) -> Sourced<Ipv6Addr> {
            self.with_ttl(self.zone.aaaa(name)).await
        }
        async fn mx_with_ttl(&self, name: &str) -> Sourced<Mx> {
            self.with_ttl(self.zone.mx(name)).await
        }
        async fn ptr_with_ttl(&self, ip: IpAddr) -> Sourced<String> {
            self.with_ttl(self.zone.ptr(ip)).await
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn zone() -> Zone {
        Zone::new()
            .with_txt("example.com", "v=spf1 -all")
            .with_ip("example.com", "192.0.2.1")
            .with_mx("example.com", 10, "mx.example.com")
            .with_ptr("192.0.2.1", "mx.example.com")
            .with("slow.test", ZoneEntry::Timeout)
    }

    fn cache(
        source: Counting,
        options: CacheOptions,
    ) -> (CachingLookup<Counting, ManualClock>, ManualClock) {
        let clock = ManualClock::new();
        (
            CachingLookup::with_clock(source, options, clock.clone()),
            clock,
        )
    }

    #[test]
    fn hits_are_served_without_querying_and_counted() {
        let (cache, _) = cache(Counting::new(zone()), CacheOptions::default());
        block_on(async {
            let first = cache.txt("example.com").await.unwrap();
            assert_eq!(&*first[0], b"v=spf1 -all");
            // Case and the root dot do not make a different key.
            let second = cache.txt("EXAMPLE.com.").await.unwrap();
            assert!(
                Arc::ptr_eq(&first, &second),
                "hit must share the cached RRset"
            );
            // Same name, other type: a separate entry.
            assert_eq!(cache.a("example.com").await.unwrap().len(), 1);
            assert_eq!(cache.a("example.com").await.unwrap().len(), 1);
            assert_eq!(
                cache.mx("example.com").await.unwrap()[0].exchange,
                "mx.example.com"
            );
            let ip: IpAddr = "192.0.2.1".parse().unwrap();
            assert_eq!(
                &*cache.ptr(ip).await.unwrap(),
                &["mx.example.com".to_owned()]
            );
            assert_eq!(
                &*cache.ptr(ip).await.unwrap(),
                &["mx.example.com".to_owned()]
            );
        });
        assert_eq!(cache.source().queries(), 4);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (3, 4, 4));
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let mut source = Counting::new(zone());
        source.ttl = Duration::from_secs(10);
        let (cache, clock) = cache(source, CacheOptions::default());
        block_on(async {
            cache.a("example.com").await.unwrap();
            clock.advance(Duration::from_secs(9));
            cache.a("example.com").await.unwrap();
            assert_eq!(cache.source().queries(), 1, "still fresh after 9 s");
            clock.advance(Duration::from_secs(1));
            cache.a("example.com").await.unwrap();
            assert_eq!(cache.source().queries(), 2, "expired after 10 s");
            cache.a("example.com").await.unwrap();
            assert_eq!(
                cache.source().queries(),
                2,
                "refreshed entry is cached again"
            );
        });
        assert_eq!(cache.stats().entries, 1, "refresh replaces, not duplicates");
    }

    #[test]
    fn ttls_are_clamped_to_the_configured_range() {
        let mut source = Counting::new(zone());
        source.ttl = Duration::from_secs(1_000_000);
        source.negative_ttl = Duration::ZERO;
        let options = CacheOptions {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(100),
            max_negative_ttl: Duration::from_secs(50),
            ..CacheOptions::default()
        };
        let (cache, clock) = cache(source, options);
        block_on(async {
            cache.a("example.com").await.unwrap();
            assert_eq!(cache.txt("nx.example").await, Err(DnsError::NxDomain));
            clock.advance(Duration::from_secs(4));
            cache.a("example.com").await.unwrap();
            assert_eq!(cache.txt("nx.example").await, Err(DnsError::NxDomain));
            assert_eq!(
                cache.source().queries(),
                2,
                "zero negative TTL raised to min_ttl"
            );
            clock.advance(Duration::from_secs(1));
            assert_eq!(cache.txt("nx.example").await, Err(DnsError::NxDomain));
            assert_eq!(
                cache.source().queries(),
                3,
                "negative entry gone after min_ttl"
            );
            clock.advance(Duration::from_secs(95));
            cache.a("example.com").await.unwrap();
            assert_eq!(cache.source().queries(), 4, "huge TTL lowered to max_ttl");
        });
    }

    #[test]
    fn zero_ttl_is_not_cached() {
        let mut source = Counting::new(zone());
        source.ttl = Duration::ZERO;
        let (cache, _) = cache(source, CacheOptions::default());
        block_on(async {
            cache.a("example.com").await.unwrap();
            cache.a("example.com").await.unwrap();
        });
        assert_eq!(cache.source().queries(), 2);
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn nxdomain_and_nodata_are_cached_for_the_negative_ttl() {
        let mut source = Counting::new(zone());
        source.negative_ttl = Duration::from_secs(30);
        let (cache, clock) = cache(source, CacheOptions::default());
        block_on(async {
            assert_eq!(cache.txt("nx.example").await, Err(DnsError::NxDomain));
            assert_eq!(cache.aaaa("example.com").await.unwrap().len(), 0);
            assert_eq!(cache.txt("NX.example.").await, Err(DnsError::NxDomain));
            assert_eq!(cache.aaaa("example.com").await.unwrap().len(), 0);
            assert_eq!(cache.source().queries(), 2);
            clock.advance(Duration::from_secs(30));
            assert_eq!(cache.txt("nx.example").await, Err(DnsError::NxDomain));
            assert_eq!(cache.aaaa("example.com").await.unwrap().len(), 0);
            assert_eq!(cache.source().queries(), 4);
        });
        assert_eq!(cache.stats().hits, 2);
    }

    #[test]
    fn temporary_errors_are_not_cached() {
        let (cache, _) = cache(Counting::new(zone()), CacheOptions::default());
        block_on(async {
            assert!(matches!(
                cache.a("slow.test").await,
                Err(DnsError::Temporary(_))
            ));
            assert!(matches!(
                cache.a("slow.test").await,
                Err(DnsError::Temporary(_))
            ));
        });
        assert_eq!(cache.source().queries(), 2);
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn the_entry_bound_is_respected_and_hit_entries_survive() {
        let mut zone = Zone::new();
        for i in 0..100 {
            zone.add(
                &format!("h{i}.test"),
                ZoneEntry::A(Ipv4Addr::new(192, 0, 2, i)),
            );
        }
        let options = CacheOptions {
            max_entries: 10,
            ..CacheOptions::default()
        };
        let (cache, _) = cache(Counting::new(zone), options);
        block_on(async {
            for i in 0..100 {
                cache.a(&format!("h{i}.test")).await.unwrap();
                // Keep h0 hot: CLOCK gives it a second chance every time.
                cache.a("h0.test").await.unwrap();
                assert!(cache.stats().entries <= 10);
            }
        });
        let stats = cache.stats();
        assert_eq!(stats.entries, 10);
        assert_eq!(stats.evictions, 90);
        assert_eq!(stats.misses, 100, "h0 was never evicted: {stats:?}");
    }

    #[test]
    fn the_byte_bound_is_respected() {
        let big = vec![b'x'; 1000];
        let mut zone = Zone::new();
        for i in 0..20 {
            zone.add(&format!("t{i}.test"), ZoneEntry::Txt(vec![big.clone()]));
        }
        // One record as stored: the shared slice (two counters and one
        // 40-byte Txt), its 1000 bytes and the 8-byte key, each a malloc
        // chunk (8 bytes of header, rounded up to 16, at least 32).
        assert_eq!(size_of::<Txt>(), 40);
        let entry = 64 + 1008 + 32;
        let options = CacheOptions {
            // Few enough entries for a single shard, so the budget is exact.
            max_entries: 31,
            max_bytes: 8 * entry,
            ..CacheOptions::default()
        };
        let (cache, _) = cache(Counting::new(zone), options);
        block_on(async {
            for i in 0..20 {
                assert_eq!(
                    cache.txt(&format!("t{i}.test")).await.unwrap()[0].len(),
                    1000
                );
                assert!(cache.stats().bytes <= 8 * entry as u64);
            }
        });
        let stats = cache.stats();
        // Eight records would fill the budget alone; the table and the
        // CLOCK queue take their share of it too.
        assert!((5..8).contains(&stats.entries), "{stats:?}");
        assert!(stats.bytes >= stats.entries * entry as u64, "{stats:?}");
        assert_eq!(stats.evictions, 20 - stats.entries);
    }

    #[test]
    fn memos_are_charged_to_the_entry_that_holds_them() {
        let options = CacheOptions {
            max_entries: 31,
            max_bytes: 100_000,
            ..CacheOptions::default()
        };
        let (cache, clock) = cache(Counting::new(zone()), options);
        block_on(async {
            let answer = cache.txt("example.com").await.unwrap();
            let before = cache.stats().bytes;
            cache.memo_made("EXAMPLE.com.", &answer, 5000);
            assert_eq!(cache.stats().bytes, before + 5000);
            // An answer the cache does not hold (a copy, or the old answer
            // after a refresh) is not charged.
            let other: Arc<[Txt]> = answer.iter().cloned().collect();
            cache.memo_made("example.com", &other, 5000);
            assert_eq!(cache.stats().bytes, before + 5000);
            clock.advance(Duration::from_secs(60));
            let fresh = cache.txt("example.com").await.unwrap();
            assert!(!Arc::ptr_eq(&answer, &fresh));
            assert_eq!(cache.stats().bytes, before, "the refresh drops the memo");
            cache.memo_made("example.com", &answer, 5000);
            assert_eq!(cache.stats().bytes, before);
            // A memo too heavy for the budget drops its entry.
            cache.memo_made("example.com", &fresh, 100_000);
            let stats = cache.stats();
            assert_eq!((stats.entries, stats.evictions), (0, 1), "{stats:?}");
            assert!(stats.bytes < before, "{stats:?}");
            cache.txt("example.com").await.unwrap();
        });
        assert_eq!(cache.source().queries(), 3);
    }

    #[test]
    fn zero_capacity_disables_caching() {
        let options = CacheOptions {
            max_entries: 0,
            ..CacheOptions::default()
        };
        let (cache, _) = cache(Counting::new(zone()), options);
        block_on(async {
            cache.a("example.com").await.unwrap();
            cache.a("example.com").await.unwrap();
        });
        assert_eq!(cache.source().queries(), 2);
    }

    #[test]
    fn concurrent_misses_share_one_query() {
        let mut source = Counting::new(zone());
        source.delay = Duration::from_millis(50);
        let cache = CachingLookup::new(source, CacheOptions::default());
        block_on(async {
            let answers = futures_join(&cache, 8).await;
            assert!(answers.iter().all(|a| a.as_ref().unwrap().len() == 1));
        });
        assert_eq!(cache.source().queries(), 1);
        let stats = cache.stats();
        assert_eq!((stats.misses, stats.coalesced), (1, 7), "{stats:?}");
    }

    /// Runs `n` concurrent A lookups of example.com on the current task.
    async fn futures_join(cache: &CachingLookup<Counting>, n: usize) -> Vec<Answer<Ipv4Addr>> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let cache = cache.clone();
            set.spawn(async move { cache.a("example.com").await });
        }
        let mut answers = Vec::new();
        while let Some(answer) = set.join_next().await {
            answers.push(answer.unwrap());
        }
        answers
    }

    #[test]
    fn a_dropped_leader_does_not_wedge_waiters() {
        let mut source = Counting::new(zone());
        source.delay = Duration::from_millis(100);
        let cache = CachingLookup::new(source, CacheOptions::default());
        block_on(async {
            let leader = tokio::spawn({
                let cache = cache.clone();
                async move { cache.a("example.com").await }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            let waiter = tokio::spawn({
                let cache = cache.clone();
                async move { cache.a("example.com").await }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            leader.abort();
            assert!(leader.await.unwrap_err().is_cancelled());
            let answer = tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("waiter must not hang")
                .unwrap();
            assert_eq!(answer.unwrap().len(), 1);
        });
        // The waiter took over: two queries, and the flight list is empty.
        assert_eq!(cache.source().queries(), 2);
        assert!(
            cache
                .inner
                .shards
                .iter()
                .all(|s| lock(s).flights.is_empty())
        );
        assert_eq!(cache.stats().entries, 1);
    }

    #[test]
    fn temporary_errors_are_shared_with_concurrent_waiters() {
        let mut source = Counting::new(zone());
        source.delay = Duration::from_millis(50);
        let cache = CachingLookup::new(source, CacheOptions::default());
        block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..4 {
                let cache = cache.clone();
                set.spawn(async move { cache.a("slow.test").await });
            }
            while let Some(answer) = set.join_next().await {
                assert!(matches!(answer.unwrap(), Err(DnsError::Temporary(_))));
            }
        });
        assert_eq!(cache.source().queries(), 1);
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn zone_source_answers_with_the_zone_ttl() {
        let zone = zone();
        let (answer, ttl) = block_on(zone.txt_with_ttl("example.com"));
        assert_eq!(answer.unwrap().len(), 1);
        assert_eq!(ttl, ZONE_TTL);
        let cache = CachingLookup::new(zone, CacheOptions::default());
        block_on(async {
            assert_eq!(cache.a("example.com").await.unwrap().len(), 1);
            assert_eq!(cache.a("example.com").await.unwrap().len(), 1);
        });
        assert_eq!(cache.stats().hits, 1);
    }

    #[test]
    fn clear_drops_everything() {
        let (cache, _) = cache(Counting::new(zone()), CacheOptions::default());
        block_on(async {
            cache.a("example.com").await.unwrap();
            cache.clear();
            assert_eq!(cache.stats().entries, 0);
            cache.a("example.com").await.unwrap();
        });
        assert_eq!(cache.source().queries(), 2);
    }

    /// Many threads, mixed types, a cache much smaller than the working
    /// set: every answer must still be the right one, the bound must hold
    /// and every lookup must be accounted for.
    #[test]
    fn concurrent_mixed_load_stays_correct_and_bounded() {
        let mut zone = Zone::new();
        for i in 0..200u16 {
            let name = format!("n{i}.test");
            let [hi, lo] = i.to_be_bytes();
            zone.add(&name, ZoneEntry::A(Ipv4Addr::new(10, 0, hi, lo)));
            zone.add(&name, ZoneEntry::Txt(vec![name.clone().into_bytes()]));
        }
        let options = CacheOptions {
            max_entries: 50,
            ..CacheOptions::default()
        };
        let cache = CachingLookup::new(Counting::new(zone), options);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        const TASKS: u64 = 8;
        const LOOKUPS: u64 = 2000;
        runtime.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for t in 0..TASKS {
                let cache = cache.clone();
                set.spawn(async move {
                    for j in 0..LOOKUPS {
                        // A skewed mix: some names are hot, most are not.
                        let i = (j * 7 + t * 13) % if j % 2 == 0 { 10 } else { 200 };
                        let name = format!("N{i}.test.");
                        if j % 3 == 0 {
                            let txt = cache.txt(&name).await.unwrap();
                            assert_eq!(&*txt[0], format!("n{i}.test").as_bytes());
                        } else {
                            let [hi, lo] = u16::try_from(i).unwrap().to_be_bytes();
                            let a = cache.a(&name).await.unwrap();
                            assert_eq!(&*a, &[Ipv4Addr::new(10, 0, hi, lo)]);
                        }
                    }
                });
            }
            while let Some(done) = set.join_next().await {
                done.unwrap();
            }
        });
        let stats = cache.stats();
        assert!(stats.entries <= 50, "{stats:?}");
        assert_eq!(stats.hits + stats.misses + stats.coalesced, TASKS * LOOKUPS);
        assert_eq!(stats.misses, cache.source().queries() as u64);
        assert!(stats.hits > 0 && stats.evictions > 0, "{stats:?}");
    }

    #[test]
    fn long_names_use_a_heap_key() {
        let long = format!("{}.test", "a".repeat(300));
        with_key(1, &long, |key| {
            assert_eq!(key.len(), long.len() + 1);
            assert_eq!(&key[1..], long.as_bytes());
        });
        with_key(1, "Example.COM.", |key| assert_eq!(key, b"\x01example.com"));
        let max = "a".repeat(255);
        with_key(1, &max, |key| assert_eq!(key.len(), 256));
    }
}
