//! The DNS seam.
//!
//! The SPF evaluator asks exactly five questions of the DNS (RFC 7208 §5:
//! TXT, A, AAAA, MX and PTR) and nothing else. They sit behind the small
//! [`Lookup`] trait so the evaluator can run on hickory-resolver in
//! production ([`hickory`]), behind a shared cache ([`cache`]), or on
//! in-memory zones in tests ([`zone`]).

pub mod cache;
pub mod hickory;
mod source;
pub mod zone;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

pub use cache::{CacheOptions, CacheStats, CachingLookup, Source};
pub use hickory::{HickoryLookup, ResolverError, ResolverOptions, parse_nameserver};
pub use zone::Zone;

/// Why a query produced no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DnsError {
    /// RCODE 3 ("Name Error", NXDOMAIN): the name does not exist.
    /// RFC 7208 treats it like an empty answer, except that it counts as a
    /// void lookup (§4.6.4) and makes an initial check_host() `none` (§4.3).
    NxDomain,
    /// A timeout, SERVFAIL, REFUSED, a broken answer or a network failure:
    /// RFC 7208 §5 and §4.4 turn these into `temperror` (or skip the name
    /// where the RFC says so). The text says what happened, for logs and
    /// `--trace`; it is never put into an SMTP reply.
    Temporary(String),
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::NxDomain => f.write_str("NXDOMAIN"),
            DnsError::Temporary(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for DnsError {}

/// The records of one RRset. `Ok` with an empty slice is NODATA (the name
/// exists but has no record of that type). Shared so that cached answers are
/// handed out without copying.
pub type Answer<T> = Result<Arc<[T]>, DnsError>;

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mx {
    pub preference: u16,
    /// The exchange's name, lower-case, without the trailing dot.
    pub exchange: String,
}

/// One TXT record: its character-strings concatenated with nothing between
/// them (RFC 7208 §3.3). Bytes, not text: a TXT record may hold anything,
/// and only the SPF parser decides what is acceptable (§4.5, §3.1: 7-bit
/// ASCII only).
///
/// A record also carries a memo slot: whoever interprets the bytes (the SPF
/// evaluator parsing a policy) may keep the result with the record, so
/// every later evaluation served from the same cached answer reuses it
/// without parsing or hashing the text again. A fresh answer (after the TTL
/// ran out) starts with an empty slot, so the memo never outlives the data.
/// The DNS layer stores the memo without knowing what it is; whoever makes
/// one reports its weight with [`Lookup::memo_made`], so that a cache
/// counts it against its budget.
pub struct Txt {
    bytes: Box<[u8]>,
    memo: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl Txt {
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Self {
        Self {
            bytes: bytes.into(),
            memo: OnceLock::new(),
        }
    }

    /// The memo of type `T`, made by `init` on first use. `None` only if
    /// another type was stored first (one interpreter per record).
    pub fn memo<T: Any + Send + Sync>(&self, init: impl FnOnce(&[u8]) -> T) -> Option<&T> {
        self.memo
            .get_or_init(|| Box::new(init(&self.bytes)))
            .downcast_ref::<T>()
    }
}

impl Txt {
    /// The memo of type `T`, if one was made.
    pub fn memo_get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.memo.get()?.downcast_ref::<T>()
    }
}

impl std::ops::Deref for Txt {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl From<Vec<u8>> for Txt {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl Clone for Txt {
    /// The bytes; the memo is not copied (it is rebuilt on demand).
    fn clone(&self) -> Self {
        Self::new(self.bytes.clone())
    }
}

impl PartialEq for Txt {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Txt {}

impl fmt::Debug for Txt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Txt({:?})", String::from_utf8_lossy(&self.bytes))
    }
}

/// The five DNS questions of RFC 7208.
///
/// Names are given as absolute domain names in A-label form, with or without
/// the trailing dot; implementations treat them case-insensitively. CNAME
/// chains are followed by the implementation (as a resolver does), so callers
/// never see a CNAME.
pub trait Lookup: Send + Sync {
    fn txt(&self, name: &str) -> impl Future<Output = Answer<Txt>> + Send;
    fn a(&self, name: &str) -> impl Future<Output = Answer<Ipv4Addr>> + Send;
    fn aaaa(&self, name: &str) -> impl Future<Output = Answer<Ipv6Addr>> + Send;
    fn mx(&self, name: &str) -> impl Future<Output = Answer<Mx>> + Send;
    /// The PTR names of an address (the query goes to `in-addr.arpa` or
    /// `ip6.arpa`), lower-case, without the trailing dot.
    fn ptr(&self, ip: IpAddr) -> impl Future<Output = Answer<String>> + Send;

    /// Reports that a memo ([`Txt::memo`]) was just made in a record of
    /// `answer`, the TXT answer this lookup gave for `name`, and that it
    /// keeps `bytes` alive (weighed with [`cache::heap_cost`]). Whoever
    /// makes a memo calls this once, right after; a cache that still holds
    /// that answer counts the bytes against its budget. Layers that keep
    /// nothing have nothing to do.
    fn memo_made(&self, name: &str, answer: &Arc<[Txt]>, bytes: usize) {
        let _ = (name, answer, bytes);
    }

    /// Whether asking early helps a later identical question: true for a
    /// layer that lets a question join an identical one in flight and
    /// keeps the answers (a cache). The SPF evaluator prefetches (starts
    /// the queries of a record's terms before it reaches them) only
    /// through such a layer; through any other, a prefetch would only
    /// double the queries.
    fn shares_answers(&self) -> bool {
        false
    }
}

impl<L: Lookup> Lookup for Arc<L> {
    fn txt(&self, name: &str) -> impl Future<Output = Answer<Txt>> + Send {
        (**self).txt(name)
    }
    fn a(&self, name: &str) -> impl Future<Output = Answer<Ipv4Addr>> + Send {
        (**self).a(name)
    }
    fn aaaa(&self, name: &str) -> impl Future<Output = Answer<Ipv6Addr>> + Send {
        (**self).aaaa(name)
    }
    fn mx(&self, name: &str) -> impl Future<Output = Answer<Mx>> + Send {
        (**self).mx(name)
    }
    fn ptr(&self, ip: IpAddr) -> impl Future<Output = Answer<String>> + Send {
        (**self).ptr(ip)
    }
    fn memo_made(&self, name: &str, answer: &Arc<[Txt]>, bytes: usize) {
        (**self).memo_made(name, answer, bytes);
    }
    fn shares_answers(&self) -> bool {
        (**self).shares_answers()
    }
}

/// A name as a lookup key: lower-case, no trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The reverse-lookup name of an address (RFC 1035 §3.5, RFC 3596 §2.5),
/// without the trailing dot: `4.3.2.1.in-addr.arpa`, or 32 nibbles and
/// `ip6.arpa`.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(73);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    name.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    name.push('.');
                }
            }
            name.push_str("ip6.arpa");
            name
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_follow_rfc1035_and_rfc3596() {
        assert_eq!(
            reverse_name("192.0.2.1".parse().unwrap()),
            "1.2.0.192.in-addr.arpa"
        );
        // RFC 3596 §2.5 example: 4321:0:1:2:3:4:567:89ab
        assert_eq!(
            reverse_name("4321:0:1:2:3:4:567:89ab".parse().unwrap()),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa"
        );
    }

    #[test]
    fn normalized_names_are_lower_case_without_root_dot() {
        assert_eq!(normalize_name("Example.COM."), "example.com");
        assert_eq!(normalize_name("example.com"), "example.com");
    }
}
