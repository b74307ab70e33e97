//! Forward-confirmed PTR names (RFC 7208 §5.5, the validated domain names
//! of `ptr` and `%{p}`): the PTR names of an address whose A (IPv4 address)
//! or AAAA (IPv6 address) records contain that address. The evaluator
//! uses them for `ptr` and `%{p}`; the policy's bypass chain for
//! `InternalHosts` and `Domain_Whitelist_PTR`.
//!
//! Error handling (§5.5): a failed PTR lookup (NXDOMAIN or a DNS error)
//! gives no names; a failed address lookup of one name leaves that name
//! out. Only the first `max_names` PTR names are looked at (§4.6.4: "all
//! records other than the first 10 MUST be ignored").

use std::fmt;
use std::net::IpAddr;

use crate::dns::{Answer, DnsError, Lookup};

/// What [`confirmed_names`] found on the way, for a caller that traces
/// the lookups or counts void ones.
pub enum Step<'s> {
    /// The PTR lookup failed: no names.
    PtrFailed(&'s DnsError),
    /// The PTR names (all of them, before the limit).
    PtrNames(&'s [String]),
    /// The A (`kind` "A") or AAAA records of one PTR name: `Some` and the
    /// addresses, or `None` for no record (or NXDOMAIN). A DNS error is
    /// not reported (the name is left out).
    Addresses {
        kind: &'static str,
        name: &'s str,
        addresses: Option<&'s (dyn fmt::Debug + Sync)>,
    },
}

/// The forward-confirmed PTR names of `ip` (see the module doc), in the
/// PTR answer's order. `observe` sees each [`Step`]; an error from it ends
/// the lookups and is returned.
pub async fn confirmed_names<L: Lookup, E>(
    lookup: &L,
    ip: IpAddr,
    max_names: usize,
    mut observe: impl FnMut(Step<'_>) -> Result<(), E>,
) -> Result<Vec<String>, E> {
    let names = match lookup.ptr(ip).await {
        Ok(names) => names,
        Err(why) => {
            observe(Step::PtrFailed(&why))?;
            return Ok(Vec::new());
        }
    };
    observe(Step::PtrNames(&names))?;
    let mut confirmed = Vec::new();
    for name in names.iter().take(max_names) {
        let hit = match ip {
            IpAddr::V4(v4) => {
                let answer = lookup.a(name).await;
                addresses_step(&mut observe, "A", name, &answer, |a| a.contains(&v4))?
            }
            IpAddr::V6(v6) => {
                let answer = lookup.aaaa(name).await;
                addresses_step(&mut observe, "AAAA", name, &answer, |a| a.contains(&v6))?
            }
        };
        if hit {
            confirmed.push(name.clone());
        }
    }
    Ok(confirmed)
}

/// One name's address answer: observed (unless a DNS error), and whether
/// it confirms the name.
fn addresses_step<T: fmt::Debug + Send + Sync, E>(
    observe: &mut impl FnMut(Step<'_>) -> Result<(), E>,
    kind: &'static str,
    name: &str,
    answer: &Answer<T>,
    hit: impl Fn(&[T]) -> bool,
) -> Result<bool, E> {
    let addresses = match answer {
        Ok(addrs) if !addrs.is_empty() => addrs,
        Ok(_) | Err(DnsError::NxDomain) => {
            observe(Step::Addresses {
                kind,
                name,
                addresses: None,
            })?;
            return Ok(false);
        }
        Err(DnsError::Temporary(_)) => return Ok(false),
    };
    observe(Step::Addresses {
        kind,
        name,
        addresses: Some(addresses),
    })?;
    Ok(hit(addresses))
}

/// Whether `ip` is among the A (IPv4) or AAAA (IPv6) records of `name`;
/// a DNS error or no record is "no".
pub async fn has_address<L: Lookup>(lookup: &L, name: &str, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => lookup.a(name).await.is_ok_and(|a| a.contains(&v4)),
        IpAddr::V6(v6) => lookup.aaaa(name).await.is_ok_and(|a| a.contains(&v6)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    use crate::dns::Zone;
    use crate::dns::zone::Entry;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    async fn names(zone: &Zone, client: &str, max: usize) -> Vec<String> {
        let Ok(names) = confirmed_names(zone, ip(client), max, |_| Ok::<(), Infallible>(())).await;
        names
    }

    /// §5.5: a name counts when one of its addresses (of the client's
    /// family) is the client's; a name whose lookup fails is left out; only
    /// the first `max_names` are looked at.
    #[tokio::test]
    async fn only_names_whose_addresses_hold_the_client_within_the_limit() {
        let zone = Zone::new()
            .with_ptr("192.0.2.1", "ok.test")
            .with_ip("ok.test", "192.0.2.1")
            .with_ptr("192.0.2.1", "elsewhere.test")
            .with_ip("elsewhere.test", "192.0.2.9")
            .with_ptr("192.0.2.1", "v6only.test")
            .with_ip("v6only.test", "2001:db8::1")
            .with_ptr("192.0.2.1", "broken.test")
            .with("broken.test", Entry::Timeout)
            .with_ptr("192.0.2.1", "missing.test")
            .with_ptr("192.0.2.1", "late.test")
            .with_ip("late.test", "192.0.2.1")
            .with_ptr("2001:db8::1", "v6only.test");
        assert_eq!(
            names(&zone, "192.0.2.1", 10).await,
            ["ok.test", "late.test"]
        );
        // late.test is the sixth name.
        assert_eq!(names(&zone, "192.0.2.1", 5).await, ["ok.test"]);
        assert_eq!(names(&zone, "2001:db8::1", 10).await, ["v6only.test"]);
        // No PTR record, or a failing PTR lookup: no names.
        assert!(names(&zone, "192.0.2.2", 10).await.is_empty());
        let down = Zone::new().with("1.2.0.192.in-addr.arpa", Entry::Timeout);
        let mut failed = false;
        let Ok(none) = confirmed_names(&down, ip("192.0.2.1"), 10, |step| {
            failed |= matches!(step, Step::PtrFailed(DnsError::Temporary(_)));
            Ok::<(), Infallible>(())
        })
        .await;
        assert!(none.is_empty() && failed);
    }

    /// Every step is shown to the observer, and its error ends the walk.
    #[tokio::test]
    async fn the_observer_sees_each_step_and_can_stop_the_walk() {
        let zone = Zone::new()
            .with_ptr("192.0.2.1", "a.test")
            .with_ip("a.test", "192.0.2.1")
            .with_ptr("192.0.2.1", "b.test");
        let mut seen = Vec::new();
        let found = confirmed_names(&zone, ip("192.0.2.1"), 10, |step| {
            seen.push(match step {
                Step::PtrFailed(why) => format!("failed {why}"),
                Step::PtrNames(names) => format!("names {}", names.len()),
                Step::Addresses {
                    kind,
                    name,
                    addresses,
                } => format!("{kind} {name} {}", addresses.is_some()),
            });
            Ok::<(), ()>(())
        })
        .await;
        assert_eq!(found, Ok(vec!["a.test".to_owned()]));
        assert_eq!(seen, ["names 2", "A a.test true", "A b.test false"]);
        let stopped = confirmed_names(&zone, ip("192.0.2.1"), 10, |step| match step {
            Step::PtrNames(_) => Err("void"),
            _ => Ok(()),
        })
        .await;
        assert_eq!(stopped, Err("void"));
    }
}
