//! Matching the mechanisms of a record against the client (RFC 7208 §5):
//! `all`, `ip4`, `ip6` without DNS; `include`, `a`, `mx`, `ptr` and
//! `exists` with the lookups and error handling of §5 and the void-lookup
//! count of §4.6.4.

use std::fmt;
use std::net::IpAddr;

use crate::dns::{Answer, DnsError, Lookup};
use crate::spf::outcome::SpfResult;
use crate::spf::ptr;
use crate::spf::record::{DualCidr, Mechanism};

use super::{Eval, Fault};

impl<L: Lookup> Eval<'_, L> {
    /// Does `name` have an address (in the client's family) within `cidr`
    /// of the client? RFC 7208 §5 error handling: NXDOMAIN or no records is
    /// a void lookup (counted when `count_void`), a DNS failure temperror.
    async fn address_matches(
        &mut self,
        name: &str,
        cidr: DualCidr,
        count_void: bool,
    ) -> Result<bool, Fault> {
        let tracing = self.trace.is_some();
        let (kind, answer) = match self.ip {
            IpAddr::V4(client) => (
                "A",
                scan_addresses(self.evaluator.lookup.a(name).await, tracing, |a| {
                    prefix_match_v4(client, *a, cidr.v4)
                }),
            ),
            IpAddr::V6(client) => (
                "AAAA",
                scan_addresses(self.evaluator.lookup.aaaa(name).await, tracing, |a| {
                    prefix_match_v6(client, *a, cidr.v6)
                }),
            ),
        };
        match answer {
            Ok(Some((found, listing))) => {
                if let Some(listing) = listing {
                    self.note(|| format!("{kind} {name}: {listing}"));
                }
                Ok(found)
            }
            Ok(None) | Err(DnsError::NxDomain) => {
                self.note(|| format!("{kind} {name}: no records"));
                if count_void {
                    self.count_void(|| format!("{kind} {name}"))?;
                }
                Ok(false)
            }
            Err(DnsError::Temporary(why)) => Err(Fault::Temp(format!(
                "DNS error looking up {kind} {name}: {why}"
            ))),
        }
    }

    /// The mechanisms decided without DNS: `all` (§5.1), `ip4` and `ip6`
    /// (§5.6). `None` for the others.
    pub(super) fn match_local(&self, mechanism: &Mechanism) -> Option<bool> {
        match mechanism {
            Mechanism::All => Some(true),
            Mechanism::Ip4(net) => Some(matches!(self.ip, IpAddr::V4(ip)
                if prefix_match_v4(net.addr(), ip, net.prefix_len()))),
            Mechanism::Ip6(net) => Some(matches!(self.ip, IpAddr::V6(ip)
                if prefix_match_v6(net.addr(), ip, net.prefix_len()))),
            _ => None,
        }
    }

    pub(super) async fn matches(
        &mut self,
        mechanism: &Mechanism,
        domain: &str,
    ) -> Result<bool, Fault> {
        match mechanism {
            Mechanism::All | Mechanism::Ip4(_) | Mechanism::Ip6(_) => {
                Ok(self.match_local(mechanism).unwrap_or(false))
            }
            Mechanism::Include(spec) => {
                let Some(target) = self.expand_domain(spec, domain).await? else {
                    return Err(Fault::Perm(format!(
                        "include:{spec} in {domain} is not a valid domain name"
                    )));
                };
                self.enter(&target);
                self.depth += 1;
                let host_result = self.check_host_boxed(&target, false).await;
                self.depth -= 1;
                match host_result?.result {
                    // §5.2: the include table.
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    _ => Err(Fault::Perm(format!(
                        "include:{target} (from {domain}) has no SPF record"
                    ))),
                }
            }
            Mechanism::A(spec, cidr) => {
                let Some(target) = self.target(spec.as_ref(), domain).await? else {
                    return Ok(false);
                };
                self.address_matches(&target, *cidr, true).await
            }
            Mechanism::Mx(spec, cidr) => {
                let Some(target) = self.target(spec.as_ref(), domain).await? else {
                    return Ok(false);
                };
                Box::pin(self.mx_matches(&target, *cidr)).await
            }
            Mechanism::Ptr(spec) => {
                let Some(target) = self.target(spec.as_ref(), domain).await? else {
                    return Ok(false);
                };
                let names = Box::pin(self.validated_names(true)).await?;
                Ok(names.iter().any(|n| is_same_or_subdomain(n, &target)))
            }
            Mechanism::Exists(spec) => {
                let Some(target) = self.expand_domain(spec, domain).await? else {
                    return Ok(false);
                };
                // §5.7: always an A query, whatever the client's family.
                match self.evaluator.lookup.a(&target).await {
                    Ok(addrs) if !addrs.is_empty() => {
                        self.note(|| format!("A {target}: {:?}", &*addrs));
                        Ok(true)
                    }
                    Ok(_) | Err(DnsError::NxDomain) => {
                        self.note(|| format!("A {target}: no records"));
                        self.count_void(|| format!("exists:{target}"))?;
                        Ok(false)
                    }
                    Err(DnsError::Temporary(why)) => Err(Fault::Temp(format!(
                        "DNS error looking up A {target}: {why}"
                    ))),
                }
            }
        }
    }

    /// §5.4: `mx`.
    async fn mx_matches(&mut self, target: &str, cidr: DualCidr) -> Result<bool, Fault> {
        let exchanges = match self.evaluator.lookup.mx(target).await {
            Ok(mx) => mx,
            Err(DnsError::NxDomain) => Default::default(),
            Err(DnsError::Temporary(why)) => {
                return Err(Fault::Temp(format!(
                    "DNS error looking up MX {target}: {why}"
                )));
            }
        };
        self.note(|| {
            format!(
                "MX {target}: {:?}",
                exchanges
                    .iter()
                    .map(|m| m.exchange.as_str())
                    .collect::<Vec<_>>()
            )
        });
        if exchanges.is_empty() {
            self.count_void(|| format!("MX {target}"))?;
            return Ok(false);
        }
        let limit = self.evaluator.limits.mx_names;
        if exchanges.len() > limit {
            // §4.6.4: more than 10 MX records is permerror.
            return Err(Fault::Perm(format!(
                "{target} has {} MX records, more than the limit of {limit}",
                exchanges.len()
            )));
        }
        for mx in exchanges.iter() {
            if self.address_matches(&mx.exchange, cidr, false).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// §5.5: the client's validated names (see [`ptr`]), with every
    /// lookup traced; an empty or NXDOMAIN PTR answer is a void lookup
    /// (counted when `count_void`).
    pub(super) async fn validated_names(&mut self, count_void: bool) -> Result<Vec<String>, Fault> {
        let ip = self.ip;
        let evaluator = self.evaluator;
        let max_names = evaluator.limits.ptr_names;
        let validated = ptr::confirmed_names(&evaluator.lookup, ip, max_names, |step| {
            match step {
                ptr::Step::PtrFailed(why) => {
                    self.note(|| format!("PTR {ip}: {why}"));
                    if *why == DnsError::NxDomain && count_void {
                        self.count_void(|| format!("PTR {ip}"))?;
                    }
                }
                ptr::Step::PtrNames(names) => {
                    self.note(|| format!("PTR {ip}: {names:?}"));
                    if names.is_empty() && count_void {
                        self.count_void(|| format!("PTR {ip}"))?;
                    }
                }
                ptr::Step::Addresses {
                    kind,
                    name,
                    addresses: Some(listing),
                } => self.note(|| format!("{kind} {name}: {listing:?}")),
                ptr::Step::Addresses {
                    kind,
                    name,
                    addresses: None,
                } => self.note(|| format!("{kind} {name}: no records")),
            }
            Ok(())
        })
        .await?;
        self.note(|| format!("validated names: {validated:?}"));
        Ok(validated)
    }
}

/// An A or AAAA answer reduced to what `address_matches` needs: `None`
/// when there is no record, else whether one satisfies `hit`, and (when
/// tracing) the addresses as text.
fn scan_addresses<T: fmt::Debug>(
    answer: Answer<T>,
    tracing: bool,
    hit: impl Fn(&T) -> bool,
) -> Result<Option<(bool, Option<String>)>, DnsError> {
    let addrs = answer?;
    if addrs.is_empty() {
        return Ok(None);
    }
    let listing = tracing.then(|| format!("{:?}", &*addrs));
    Ok(Some((addrs.iter().any(hit), listing)))
}

/// `name` is `target` or ends with `.target` (case-insensitive, label
/// boundary; trailing dots ignored).
pub fn is_same_or_subdomain(name: &str, target: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let target = target.strip_suffix('.').unwrap_or(target);
    if name.len() < target.len() {
        return false;
    }
    // Bytes, not str: a name from the envelope may hold non-ASCII, and the
    // cut may fall inside a character (which then cannot match an ASCII
    // label boundary anyway).
    let (head, tail) = name.as_bytes().split_at(name.len() - target.len());
    tail.eq_ignore_ascii_case(target.as_bytes()) && (head.is_empty() || head.ends_with(b"."))
}

fn prefix_match_v4(a: std::net::Ipv4Addr, b: std::net::Ipv4Addr, len: u8) -> bool {
    // checked_shl: a /0 prefix must not shift by 32 (overflow).
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    (u32::from(a) & mask) == (u32::from(b) & mask)
}

fn prefix_match_v6(a: std::net::Ipv6Addr, b: std::net::Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    (u128::from(a) & mask) == (u128::from(b) & mask)
}

#[cfg(test)]
mod subdomain_tests {
    use super::is_same_or_subdomain;

    #[test]
    fn label_boundaries_and_non_ascii_names() {
        assert!(is_same_or_subdomain("a.Pass.test.", "pass.test"));
        assert!(is_same_or_subdomain("pass.test", "pass.test"));
        assert!(!is_same_or_subdomain("xpass.test", "pass.test"));
        // The cut lands inside U+FFFD (a lossy-decoded byte): no panic.
        assert!(!is_same_or_subdomain("re\u{FFFD}ay.test", "pass.test"));
        assert!(!is_same_or_subdomain("\u{FFFD}.test", "a.test"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomain_matching_respects_label_boundaries() {
        assert!(is_same_or_subdomain("mail.example.com", "example.com"));
        assert!(is_same_or_subdomain("Example.COM.", "example.com"));
        assert!(!is_same_or_subdomain("badexample.com", "example.com"));
        assert!(!is_same_or_subdomain("com", "example.com"));
    }

    #[test]
    fn prefix_matching_handles_zero_and_full_lengths() {
        let a = "192.0.2.1".parse().unwrap();
        let b = "198.51.100.7".parse().unwrap();
        assert!(prefix_match_v4(a, b, 0));
        assert!(!prefix_match_v4(a, b, 32));
        assert!(prefix_match_v4(a, a, 32));
        let c = "2001:db8::1".parse().unwrap();
        let d = "2001:db8::2".parse().unwrap();
        assert!(prefix_match_v6(c, d, 0));
        assert!(prefix_match_v6(c, d, 126));
        assert!(!prefix_match_v6(c, d, 127));
    }
}
