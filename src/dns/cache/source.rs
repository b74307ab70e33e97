//! What a [`super::CachingLookup`] reads from: a [`Lookup`] that also
//! tells how long each answer may be kept (its TTL, RFC 1035 §3.2.1, or
//! the negative TTL of RFC 2308 §5).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use crate::dns::{Answer, Lookup, Mx, Txt, Zone};

/// An answer together with how long it may be cached.
///
/// For records this is the RRset's TTL (the smallest one along a CNAME
/// chain); for NXDOMAIN and NODATA the negative TTL of RFC 2308 §5 (the
/// smaller of the SOA record's TTL and its MINIMUM field); for temporary
/// errors it is ignored.
pub type Sourced<T> = (Answer<T>, Duration);

/// A [`Lookup`] that also tells how long each answer stays valid: what a
/// [`super::CachingLookup`] needs from the layer below it.
///
/// The methods are named `*_with_ttl` so that a type can implement both
/// traits without ambiguous method calls.
pub trait Source: Send + Sync {
    fn txt_with_ttl(&self, name: &str) -> impl Future<Output = Sourced<Txt>> + Send;
    fn a_with_ttl(&self, name: &str) -> impl Future<Output = Sourced<Ipv4Addr>> + Send;
    fn aaaa_with_ttl(&self, name: &str) -> impl Future<Output = Sourced<Ipv6Addr>> + Send;
    fn mx_with_ttl(&self, name: &str) -> impl Future<Output = Sourced<Mx>> + Send;
    fn ptr_with_ttl(&self, ip: IpAddr) -> impl Future<Output = Sourced<String>> + Send;
}

impl<S: Source> Source for Arc<S> {
    fn txt_with_ttl(&self, name: &str) -> impl Future<Output = Sourced<Txt>> + Send {
        (**self).txt_with_ttl(name)
    }
    fn a_with_ttl(&self, name: &str) -> impl Future<Output = Sourced<Ipv4Addr>> + Send {
        (**self).a_with_ttl(name)
    }
    fn aaaa_with_ttl(&self, name: &str) -> impl Future<Output = Sourced<Ipv6Addr>> + Send {
        (**self).aaaa_with_ttl(name)
    }
    fn mx_with_ttl(&self, name: &str) -> impl Future<Output = Sourced<Mx>> + Send {
        (**self).mx_with_ttl(name)
    }
    fn ptr_with_ttl(&self, ip: IpAddr) -> impl Future<Output = Sourced<String>> + Send {
        (**self).ptr_with_ttl(ip)
    }
}

/// The TTL a [`Zone`] gives every answer, positive or negative: zones are
/// fixed test data, so any value works; an hour is a common zone default.
pub const ZONE_TTL: Duration = Duration::from_secs(3600);

impl Source for Zone {
    async fn txt_with_ttl(&self, name: &str) -> Sourced<Txt> {
        (self.txt(name).await, ZONE_TTL)
    }
    async fn a_with_ttl(&self, name: &str) -> Sourced<Ipv4Addr> {
        (self.a(name).await, ZONE_TTL)
    }
    async fn aaaa_with_ttl(&self, name: &str) -> Sourced<Ipv6Addr> {
        (self.aaaa(name).await, ZONE_TTL)
    }
    async fn mx_with_ttl(&self, name: &str) -> Sourced<Mx> {
        (self.mx(name).await, ZONE_TTL)
    }
    async fn ptr_with_ttl(&self, ip: IpAddr) -> Sourced<String> {
        (self.ptr(ip).await, ZONE_TTL)
    }
}
