//! In-memory DNS zones for tests, benchmarks and the conformance suite.
//!
//! A [`Zone`] maps names to an ordered list of entries. Besides records it
//! knows two kinds of failure, so tests can exercise every RFC 7208 error
//! path without a network:
//!
//! * [`Entry::Timeout`]: a query of a type that has no record listed *before*
//!   the timeout entry fails with a temporary error (the model of the OpenSPF
//!   suite's `TIMEOUT`: a name may answer TXT but time out for other types).
//! * [`Entry::Cname`]: followed like a resolver would (up to 8 steps; a loop
//!   or a longer chain is a temporary error).
//!
//! A name that is not in the zone is NXDOMAIN; a name in the zone without a
//! record of the asked type is NODATA (an empty answer).

use std::collections::HashMap;
use std::future::{Future, ready};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::{Answer, DnsError, Lookup, Mx, Txt, normalize_name, reverse_name};

/// One entry at a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A TXT record given as its character-strings (glued together when
    /// answered, RFC 7208 §3.3). No strings at all is representable here,
    /// though not on the wire.
    Txt(Vec<Vec<u8>>),
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx(u16, String),
    Ptr(String),
    Cname(String),
    /// Queries of the types not answered before this entry time out.
    Timeout,
}

/// The record types a zone can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    Txt,
    A,
    Aaaa,
    Mx,
    Ptr,
}

impl Entry {
    fn record_type(&self) -> Option<RecordType> {
        match self {
            Entry::Txt(_) => Some(RecordType::Txt),
            Entry::A(_) => Some(RecordType::A),
            Entry::Aaaa(_) => Some(RecordType::Aaaa),
            Entry::Mx(..) => Some(RecordType::Mx),
            Entry::Ptr(_) => Some(RecordType::Ptr),
            Entry::Cname(_) | Entry::Timeout => None,
        }
    }
}

/// Result of resolving a name and type inside the zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution<'z> {
    /// The records of the asked type (possibly none: NODATA), and the CNAME
    /// chain that led to them (owner names, in order).
    Records {
        cnames: Vec<(&'z str, &'z str)>,
        records: Vec<&'z Entry>,
    },
    NxDomain {
        cnames: Vec<(&'z str, &'z str)>,
    },
    Timeout,
    CnameLoop,
}

/// An in-memory zone: cheap to build, shared read-only by the lookups.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    names: HashMap<String, Vec<Entry>>,
}

/// How many CNAMEs a lookup follows before giving up (resolvers use about
/// this many; the SPF suite only needs loops to be detected).
const MAX_CNAME_CHAIN: usize = 8;

impl Zone {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry at `name` (case-insensitive, trailing dot optional).
    pub fn add(&mut self, name: &str, entry: Entry) -> &mut Self {
        self.names
            .entry(normalize_name(name))
            .or_default()
            .push(entry);
        self
    }

    /// Builder-style [`Zone::add`].
    pub fn with(mut self, name: &str, entry: Entry) -> Self {
        self.add(name, entry);
        self
    }

    /// Adds a single-string TXT record.
    pub fn with_txt(self, name: &str, text: &str) -> Self {
        self.with(name, Entry::Txt(vec![text.as_bytes().to_vec()]))
    }

    /// Adds an A or AAAA record, by the address family of `ip`.
    pub fn with_ip(self, name: &str, ip: &str) -> Self {
        let entry = match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => Entry::A(v4),
            Ok(IpAddr::V6(v6)) => Entry::Aaaa(v6),
            Err(_) => panic!("Zone::with_ip: {ip:?} is not an IP address"),
        };
        self.with(name, entry)
    }

    /// Adds an MX record.
    pub fn with_mx(self, name: &str, preference: u16, exchange: &str) -> Self {
        self.with(name, Entry::Mx(preference, exchange.to_owned()))
    }

    /// Adds a PTR record for `ip` pointing at `target`.
    pub fn with_ptr(self, ip: &str, target: &str) -> Self {
        let ip: IpAddr = ip
            .parse()
            .unwrap_or_else(|_| panic!("Zone::with_ptr: {ip:?} is not an IP address"));
        self.with(&reverse_name(ip), Entry::Ptr(target.to_owned()))
    }

    /// All names and their entries, for serving the zone over the wire.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Entry])> {
        self.names.iter().map(|(n, e)| (n.as_str(), e.as_slice()))
    }

    /// The entries at `name` (case-insensitive, trailing dot optional), if
    /// the name exists.
    pub fn get(&self, name: &str) -> Option<&[Entry]> {
        self.names.get(&normalize_name(name)).map(Vec::as_slice)
    }

    /// Resolves `name`/`rtype` the way a resolver would: CNAMEs followed,
    /// timeouts honoured.
    pub fn resolve(&self, name: &str, rtype: RecordType) -> Resolution<'_> {
        let mut current = normalize_name(name);
        let mut cnames = Vec::new();
        for _ in 0..=MAX_CNAME_CHAIN {
            let Some((owner, entries)) = self.names.get_key_value(&current) else {
                return Resolution::NxDomain { cnames };
            };
            let mut records = Vec::new();
            for entry in entries {
                match entry {
                    Entry::Timeout if records.is_empty() => return Resolution::Timeout,
                    Entry::Timeout => break,
                    Entry::Cname(target) if records.is_empty() => {
                        cnames.push((owner.as_str(), target.as_str()));
                        break;
                    }
                    other if other.record_type() == Some(rtype) => records.push(other),
                    _ => {}
                }
            }
            match cnames.last() {
                Some((from, to)) if *from == owner.as_str() && records.is_empty() => {
                    current = normalize_name(to);
                }
                _ => return Resolution::Records { cnames, records },
            }
        }
        Resolution::CnameLoop
    }

    fn answer<T>(
        &self,
        name: &str,
        rtype: RecordType,
        convert: impl Fn(&Entry) -> Option<T>,
    ) -> Answer<T> {
        match self.resolve(name, rtype) {
            Resolution::Records { records, .. } => {
                Ok(records.into_iter().filter_map(convert).collect())
            }
            Resolution::NxDomain { .. } => Err(DnsError::NxDomain),
            Resolution::Timeout => Err(DnsError::Temporary(format!(
                "timeout querying {name} {rtype:?}"
            ))),
            Resolution::CnameLoop => Err(DnsError::Temporary(format!(
                "CNAME loop or chain too long at {name}"
            ))),
        }
    }
}

/// A zone whose every answer takes `delay` (a slow or unreachable DNS
/// server, for time-limit tests; with tokio's paused clock they take no
/// real time).
#[derive(Debug, Clone)]
pub struct Slow(pub Zone, pub std::time::Duration);

impl Lookup for Slow {
    async fn txt(&self, name: &str) -> Answer<Txt> {
        tokio::time::sleep(self.1).await;
        self.0.txt(name).await
    }
    async fn a(&self, name: &str) -> Answer<Ipv4Addr> {
        tokio::time::sleep(self.1).await;
        self.0.a(name).await
    }
    async fn aaaa(&self, name: &str) -> Answer<Ipv6Addr> {
        tokio::time::sleep(self.1).await;
        self.0.aaaa(name).await
    }
    async fn mx(&self, name: &str) -> Answer<Mx> {
        tokio::time::sleep(self.1).await;
        self.0.mx(name).await
    }
    async fn ptr(&self, ip: IpAddr) -> Answer<String> {
        tokio::time::sleep(self.1).await;
        self.0.ptr(ip).await
    }
}

impl Lookup for Zone {
    fn txt(&self, name: &str) -> impl Future<Output = Answer<Txt>> + Send {
        ready(self.answer(name, RecordType::Txt, |e| match e {
            Entry::Txt(strings) => Some(Txt::new(strings.concat())),
            _ => None,
        }))
    }

    fn a(&self, name: &str) -> impl Future<Output = Answer<Ipv4Addr>> + Send {
        ready(self.answer(name, RecordType::A, |e| match e {
            Entry::A(ip) => Some(*ip),
            _ => None,
        }))
    }

    fn aaaa(&self, name: &str) -> impl Future<Output = Answer<Ipv6Addr>> + Send {
        ready(self.answer(name, RecordType::Aaaa, |e| match e {
            Entry::Aaaa(ip) => Some(*ip),
            _ => None,
        }))
    }

    fn mx(&self, name: &str) -> impl Future<Output = Answer<Mx>> + Send {
        ready(self.answer(name, RecordType::Mx, |e| match e {
            Entry::Mx(preference, exchange) => Some(Mx {
                preference: *preference,
                exchange: normalize_name(exchange),
            }),
            _ => None,
        }))
    }

    fn ptr(&self, ip: IpAddr) -> impl Future<Output = Answer<String>> + Send {
        ready(
            self.answer(&reverse_name(ip), RecordType::Ptr, |e| match e {
                Entry::Ptr(target) => Some(normalize_name(target)),
                _ => None,
            }),
        )
    }
}

/// A zone shared between tasks.
pub type SharedZone = Arc<Zone>;

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn missing_name_is_nxdomain_and_missing_type_is_nodata() {
        let zone = Zone::new().with_ip("a.test", "192.0.2.1");
        assert_eq!(block_on(zone.txt("b.test")), Err(DnsError::NxDomain));
        assert_eq!(block_on(zone.txt("a.test")).unwrap().len(), 0);
        assert_eq!(
            &*block_on(zone.a("A.Test.")).unwrap(),
            &["192.0.2.1".parse::<Ipv4Addr>().unwrap()]
        );
    }

    #[test]
    fn txt_strings_are_glued_without_separator() {
        let zone = Zone::new().with(
            "t.test",
            Entry::Txt(vec![b"v=spf1 ip4:".to_vec(), b"192.0.2.5 -all".to_vec()]),
        );
        let txt = block_on(zone.txt("t.test")).unwrap();
        assert_eq!(&*txt[0], b"v=spf1 ip4:192.0.2.5 -all");
    }

    #[test]
    fn timeout_applies_only_to_types_not_listed_before_it() {
        let zone = Zone::new()
            .with_txt("t.test", "v=spf1 -all")
            .with("t.test", Entry::Timeout);
        assert_eq!(block_on(zone.txt("t.test")).unwrap().len(), 1);
        assert!(matches!(
            block_on(zone.a("t.test")),
            Err(DnsError::Temporary(_))
        ));
    }

    #[test]
    fn cnames_are_followed_and_loops_detected() {
        let zone = Zone::new()
            .with("alias.test", Entry::Cname("real.test.".into()))
            .with_ip("real.test", "192.0.2.7")
            .with("loop1.test", Entry::Cname("loop2.test".into()))
            .with("loop2.test", Entry::Cname("LOOP1.test".into()));
        assert_eq!(block_on(zone.a("alias.test")).unwrap().len(), 1);
        assert!(matches!(
            block_on(zone.a("loop1.test")),
            Err(DnsError::Temporary(_))
        ));
    }

    #[test]
    fn ptr_and_mx_names_are_normalized() {
        let zone = Zone::new()
            .with_ptr("192.0.2.1", "Mail.Example.COM.")
            .with_mx("example.com", 10, "MX.example.com.");
        assert_eq!(
            &*block_on(zone.ptr("192.0.2.1".parse().unwrap())).unwrap(),
            &["mail.example.com".to_owned()]
        );
        assert_eq!(
            block_on(zone.mx("example.com")).unwrap()[0].exchange,
            "mx.example.com"
        );
    }
}
