//! Flattening a domain's SPF policy into the networks it authorizes
//! (`spfmilter expand`): follows `include` and `redirect`, resolves `a` and
//! `mx`, and lists what cannot be flattened (`exists`, `ptr`, macros) as
//! warnings. An admin uses it to turn a spam operation's published SPF
//! records into a Postfix `cidr:` access table.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::dns::{DnsError, Lookup};

use super::identity;
use super::record::{DomainSpec, DualCidr, Mechanism, Qualifier, Record, is_spf1};

/// Guards against include loops and absurd trees; deeper than the RFC's
/// 10-lookup limit allows any real evaluation to go.
const MAX_DEPTH: usize = 12;

/// What a policy authorizes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flattened {
    /// Networks reached through `+` directives, aggregated, IPv4 first.
    pub networks: Vec<IpNet>,
    /// Everything that could not be flattened exactly, in the order found.
    pub warnings: Vec<String>,
    /// DNS-querying terms met (include, a, mx, ptr, exists, redirect). Above
    /// 10 a real evaluation would end in permerror (RFC 7208 §4.6.4).
    pub dns_terms: u32,
}

/// Flattens `domain`'s policy.
pub async fn flatten<L: Lookup>(lookup: &L, domain: &str) -> Flattened {
    let mut walk = Walk {
        lookup,
        seen: HashSet::new(),
        networks: Vec::new(),
        out: Flattened::default(),
    };
    match identity::validate_domain(&identity::to_ascii_domain(domain)) {
        Ok(domain) => walk.domain(domain.into_owned(), 0, true).await,
        Err(why) => walk.out.warnings.push(why),
    }
    if walk.out.dns_terms > 10 {
        walk.out.warnings.push(format!(
            "the policy has {} DNS-querying terms; real evaluations stop at 10 with permerror \
             (RFC 7208 §4.6.4)",
            walk.out.dns_terms
        ));
    }
    walk.out.networks = aggregate(&walk.networks);
    walk.out
}

struct Walk<'l, L> {
    lookup: &'l L,
    seen: HashSet<String>,
    networks: Vec<IpNet>,
    out: Flattened,
}

impl<L: Lookup> Walk<'_, L> {
    fn warn(&mut self, text: String) {
        self.out.warnings.push(text);
    }

    /// Walks one domain's record. `authorizing` is false below a directive
    /// whose qualifier is not `+`: such networks are not authorized.
    fn domain<'s>(
        &'s mut self,
        domain: String,
        depth: usize,
        authorizing: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 's>> {
        Box::pin(async move {
            if depth > MAX_DEPTH {
                self.warn(format!(
                    "{domain}: nested more than {MAX_DEPTH} levels, not followed"
                ));
                return;
            }
            if !self.seen.insert(domain.clone()) {
                self.warn(format!(
                    "{domain}: already visited (include loop or repeat), skipped"
                ));
                return;
            }
            let record = match self.lookup.txt(&domain).await {
                Ok(txts) => {
                    let spf: Vec<_> = txts.iter().filter(|t| is_spf1(t)).collect();
                    match spf.as_slice() {
                        [one] => match Record::parse(one) {
                            Ok(record) => record,
                            Err(e) => {
                                self.warn(format!("{domain}: syntax error: {e}"));
                                return;
                            }
                        },
                        [] => {
                            self.warn(format!("{domain}: no SPF record"));
                            return;
                        }
                        _ => {
                            self.warn(format!("{domain}: more than one SPF record (permerror)"));
                            return;
                        }
                    }
                }
                Err(e) => {
                    self.warn(format!("{domain}: TXT lookup failed: {e}"));
                    return;
                }
            };
            for directive in &record.directives {
                let passes = authorizing && directive.qualifier == Qualifier::Pass;
                if directive.mechanism.queries_dns() {
                    self.out.dns_terms += 1;
                }
                match &directive.mechanism {
                    Mechanism::All => {
                        if passes {
                            self.warn(format!(
                                "{domain}: +all authorizes every address; listed as 0.0.0.0/0 and ::/0"
                            ));
                            self.add(passes, IpNet::V4(Ipv4Net::default()));
                            self.add(passes, IpNet::V6(Ipv6Net::default()));
                        }
                        // Nothing after "all" is ever evaluated.
                        return;
                    }
                    Mechanism::Ip4(net) => self.add(passes, IpNet::V4(*net)),
                    Mechanism::Ip6(net) => self.add(passes, IpNet::V6(*net)),
                    Mechanism::Include(spec) => {
                        if let Some(target) = self.literal(spec, &domain, "include") {
                            // §5.2: the included policy's passes are this
                            // directive's matches.
                            self.domain(target, depth + 1, passes).await;
                        }
                    }
                    Mechanism::A(spec, cidr) => {
                        if let Some(target) = self.target(spec.as_ref(), &domain, "a") {
                            self.addresses(&target, *cidr, passes).await;
                        }
                    }
                    Mechanism::Mx(spec, cidr) => {
                        if let Some(target) = self.target(spec.as_ref(), &domain, "mx") {
                            self.mx(&target, *cidr, passes).await;
                        }
                    }
                    Mechanism::Ptr(_) | Mechanism::Exists(_) => {
                        if passes || directive.qualifier != Qualifier::Pass {
                            self.warn(format!(
                                "{domain}: {directive} depends on the connecting client and cannot be flattened"
                            ));
                        }
                    }
                }
                if authorizing
                    && directive.qualifier != Qualifier::Pass
                    && directive.mechanism != Mechanism::All
                {
                    self.warn(format!(
                        "{domain}: {directive} is not a pass; addresses it matches are listed only if a \
                         later directive authorizes them (order is not represented)"
                    ));
                }
            }
            if let Some(redirect) = &record.redirect
                && let Some(target) = self.literal(redirect, &domain, "redirect")
            {
                self.out.dns_terms += 1;
                self.domain(target, depth + 1, authorizing).await;
            }
        })
    }

    fn add(&mut self, passes: bool, net: IpNet) {
        if passes {
            self.networks.push(net.trunc());
        }
    }

    fn target(&mut self, spec: Option<&DomainSpec>, domain: &str, what: &str) -> Option<String> {
        match spec {
            Some(spec) => self.literal(spec, domain, what),
            None => Some(domain.to_owned()),
        }
    }

    /// A domain-spec without macros, ready to query; macros depend on the
    /// message and are reported instead.
    fn literal(&mut self, spec: &DomainSpec, domain: &str, what: &str) -> Option<String> {
        match spec.literal_name() {
            Some(name) => Some(name.to_owned()),
            None => {
                self.warn(format!(
                    "{domain}: {what}:{spec} uses macros (or is not a valid name) and cannot be flattened"
                ));
                None
            }
        }
    }

    async fn addresses(&mut self, name: &str, cidr: DualCidr, passes: bool) {
        match self.lookup.a(name).await {
            Ok(addrs) => {
                for a in addrs.iter() {
                    if let Ok(net) = Ipv4Net::new(*a, cidr.v4) {
                        self.add(passes, IpNet::V4(net));
                    }
                }
            }
            Err(DnsError::NxDomain) => {}
            Err(e) => self.warn(format!("{name}: A lookup failed: {e}")),
        }
        match self.lookup.aaaa(name).await {
            Ok(addrs) => {
                for a in addrs.iter() {
                    if let Ok(net) = Ipv6Net::new(*a, cidr.v6) {
                        self.add(passes, IpNet::V6(net));
                    }
                }
            }
            Err(DnsError::NxDomain) => {}
            Err(e) => self.warn(format!("{name}: AAAA lookup failed: {e}")),
        }
    }

    async fn mx(&mut self, name: &str, cidr: DualCidr, passes: bool) {
        match self.lookup.mx(name).await {
            Ok(exchanges) => {
                if exchanges.len() > 10 {
                    self.warn(format!(
                        "{name}: {} MX records; real evaluations give permerror above 10",
                        exchanges.len()
                    ));
                }
                for mx in exchanges.iter() {
                    self.addresses(&mx.exchange, cidr, passes).await;
                }
            }
            Err(DnsError::NxDomain) => {}
            Err(e) => self.warn(format!("{name}: MX lookup failed: {e}")),
        }
    }
}

/// Merges overlapping and adjacent networks; IPv4 before IPv6.
fn aggregate(networks: &[IpNet]) -> Vec<IpNet> {
    let mut v4: Vec<Ipv4Net> = Vec::new();
    let mut v6: Vec<Ipv6Net> = Vec::new();
    for net in networks {
        match net {
            IpNet::V4(n) => v4.push(*n),
            IpNet::V6(n) => v6.push(*n),
        }
    }
    Ipv4Net::aggregate(&v4)
        .into_iter()
        .map(IpNet::V4)
        .chain(Ipv6Net::aggregate(&v6).into_iter().map(IpNet::V6))
        .collect()
}

/// Does `ip` fall in one of the flattened networks? (For tests and for
/// cross-checking a flattening against the evaluator.)
pub fn covers(flat: &Flattened, ip: IpAddr) -> bool {
    flat.networks.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::Zone;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn follows_an_include_chain_and_resolves_a_and_mx() {
        let zone = Zone::new()
            .with_txt("spam.test", "v=spf1 include:_spf.spam.test a mx/24 ~all")
            .with_txt(
                "_spf.spam.test",
                "v=spf1 ip4:45.120.196.0/23 include:_net2.spam.test -all",
            )
            .with_txt(
                "_net2.spam.test",
                "v=spf1 ip4:45.120.198.0/23 ip6:2001:db8:1::/48",
            )
            .with_ip("spam.test", "198.51.100.7")
            .with_mx("spam.test", 10, "mx.spam.test")
            .with_ip("mx.spam.test", "203.0.113.9");
        let flat = run(flatten(&zone, "spam.test"));
        let nets: Vec<String> = flat.networks.iter().map(ToString::to_string).collect();
        assert_eq!(
            nets,
            [
                "45.120.196.0/22",
                "198.51.100.7/32",
                "203.0.113.0/24",
                "2001:db8:1::/48"
            ]
        );
        assert_eq!(flat.dns_terms, 4);
    }

    #[test]
    fn warns_about_what_cannot_be_flattened() {
        let zone = Zone::new()
            .with_txt("x.test", "v=spf1 exists:%{i}.bl.x.test ptr include:%{d}.y.test -ip4:192.0.2.1 redirect=z.test")
            .with_txt("z.test", "v=spf1 ip4:192.0.2.0/24 -all");
        let flat = run(flatten(&zone, "x.test"));
        assert_eq!(
            flat.networks,
            vec!["192.0.2.0/24".parse::<IpNet>().unwrap()]
        );
        let text = flat.warnings.join("\n");
        assert!(text.contains("exists:%{i}.bl.x.test"), "{text}");
        assert!(text.contains("+ptr"), "{text}");
        assert!(text.contains("include:%{d}.y.test uses macros"), "{text}");
        assert!(text.contains("-ip4:192.0.2.1 is not a pass"), "{text}");
    }

    #[test]
    fn non_pass_includes_authorize_nothing_and_loops_stop() {
        let zone = Zone::new()
            .with_txt("a.test", "v=spf1 ?include:b.test include:a.test -all")
            .with_txt("b.test", "v=spf1 ip4:192.0.2.0/24 -all");
        let flat = run(flatten(&zone, "a.test"));
        assert!(flat.networks.is_empty());
        assert!(flat.warnings.iter().any(|w| w.contains("already visited")));
    }
}
