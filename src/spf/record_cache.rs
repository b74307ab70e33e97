//! A cache of parsed SPF records, keyed by the record's exact text.
//!
//! Parsing is pure, so keying by the text (not by the domain) can never
//! serve a stale policy: when a domain publishes a new record, its new text
//! is simply a new key. The DNS cache decides how long a text is current;
//! this cache only saves re-parsing the same popular records (a provider's
//! `_spf` tree is evaluated for most messages). Sharded to keep lock hold
//! times tiny and contention low; bounded by emptying a full shard.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};

use hashbrown::{DefaultHashBuilder, HashMap};

use super::record::{Record, SyntaxError};

const SHARDS: usize = 16;

/// The result of parsing one record text, shared.
pub type Parsed = Result<Arc<Record>, SyntaxError>;

/// One shard: record text → parse result.
type Shard = Mutex<HashMap<Box<[u8]>, Parsed>>;

#[derive(Debug)]
pub struct RecordCache {
    shards: Box<[Shard]>,
    /// hashbrown's default (foldhash, seeded per process): an order of
    /// magnitude cheaper than SipHash on record-sized keys, and still not
    /// predictable by whoever publishes the records.
    hasher: DefaultHashBuilder,
    per_shard: usize,
}

impl RecordCache {
    /// A cache holding about `capacity` records (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        // One hasher for all shards: entries are placed by the hash computed
        // here, and a shard rehashing on growth must compute the same one.
        let hasher = DefaultHashBuilder::default();
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            hasher,
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    /// The parsed record for `text`, parsing it on a miss.
    pub fn parse(&self, text: &[u8]) -> Parsed {
        if self.per_shard == 0 {
            return Record::parse(text).map(Arc::new);
        }
        let hash = self.hasher.hash_one(text);
        let shard = &self.shards[(hash >> 59) as usize % SHARDS];
        if let Some((_, hit)) = shard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .raw_entry()
            .from_key_hashed_nocheck(hash, text)
        {
            return hit.clone();
        }
        // Parse outside the lock; a concurrent miss parses twice, harmlessly.
        let parsed = Record::parse(text).map(Arc::new);
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.per_shard {
            map.clear();
        }
        map.raw_entry_mut()
            .from_key_hashed_nocheck(hash, text)
            .or_insert_with(|| (text.into(), parsed.clone()));
        parsed
    }

    /// Number of cached texts.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for RecordCache {
    fn default() -> Self {
        Self::new(10_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_return_the_same_parse_and_errors_are_cached_too() {
        let cache = RecordCache::new(100);
        let a = cache.parse(b"v=spf1 -all").unwrap();
        let b = cache.parse(b"v=spf1 -all").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(cache.parse(b"v=spf1 bogus").is_err());
        assert!(cache.parse(b"v=spf1 bogus").is_err());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn stays_bounded() {
        let cache = RecordCache::new(32);
        for i in 0..1000 {
            let text = format!("v=spf1 ip4:10.0.{}.{} -all", i / 256, i % 256);
            assert!(cache.parse(text.as_bytes()).is_ok());
        }
        assert!(cache.len() <= 32, "{} entries", cache.len());
    }

    #[test]
    fn disabled_cache_still_parses() {
        let cache = RecordCache::new(0);
        assert!(cache.parse(b"v=spf1 a -all").is_ok());
        assert!(cache.is_empty());
    }
}
