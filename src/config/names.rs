//! Names and networks: domain names, CIDR lists, `InternalHosts` entries
//! and `MacroList` rules, with the parsers both readers share.
//!
//! Parsers return `Err(text)` for input that cannot be understood; the
//! readers attach the file and line.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A validated domain name: A-labels (RFC 8616: U-labels are converted),
/// lower case, no trailing dot; labels of 1–63 letters, digits, `-` or `_`,
/// at most 253 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    pub fn parse(s: &str) -> Result<DomainName, String> {
        let name = s.strip_suffix('.').unwrap_or(s);
        if name.is_empty() {
            return Err("empty domain name".into());
        }
        let ascii = if name.is_ascii() {
            name.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii(name)
                .map_err(|_| format!("{s:?} is not a valid internationalized domain name"))?
        };
        if ascii.len() > 253 {
            return Err(format!("{s:?} is longer than 253 characters"));
        }
        for label in ascii.split('.') {
            if label.is_empty() {
                return Err(format!("{s:?} has an empty label"));
            }
            if label.len() > 63 {
                return Err(format!("{s:?} has a label longer than 63 characters"));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(format!("{s:?} is not a domain name ({c:?} is not allowed)"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!(
                    "{s:?} is not a domain name (a label cannot start or end with '-')"
                ));
            }
        }
        // RFC 3696 §2: a top-level label is never all digits, so such a
        // "name" is a mangled address (`127.`, `1.2.3.4.`), not a host.
        if ascii
            .rsplit('.')
            .next()
            .is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "{s:?} is not a domain name (its last label is a number; an address?)"
            ));
        }
        Ok(DomainName(ascii))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `name` is this name: compared without regard to ASCII case, a
    /// trailing dot ignored (a name from the envelope, not validated).
    pub fn is(&self, name: &str) -> bool {
        name.strip_suffix('.')
            .unwrap_or(name)
            .eq_ignore_ascii_case(&self.0)
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A list of networks, kept as written (for display and conversion), with
/// IPv4-mapped IPv6 networks normalised for matching: `::ffff:127.0.0.0/104`
/// matches exactly what `127.0.0.0/8` matches, and a client seen as
/// `::ffff:127.0.0.1` is matched as `127.0.0.1` (the milter receives
/// both forms depending on the socket). An IPv6 network shorter than /96
/// (such as `::/0`) never matches an IPv4 client.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CidrList {
    written: Vec<IpNet>,
    normalised: Vec<IpNet>,
}

impl CidrList {
    pub fn new(written: Vec<IpNet>) -> CidrList {
        let normalised = written.iter().map(|&n| normalise_net(n)).collect();
        CidrList {
            written,
            normalised,
        }
    }

    /// The networks as configured.
    pub fn entries(&self) -> &[IpNet] {
        &self.written
    }

    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// Whether `ip` (IPv4-mapped or not) is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.normalised.iter().any(|n| n.contains(&ip))
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`: the SPF engine's rule, shared.
pub use crate::spf::identity::canonical_ip;

/// An IPv6 network inside `::ffff:0:0/96` → the IPv4 network it maps.
pub fn normalise_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
    {
        // The prefix is ≥ 96 so the mapped prefix is 0..=32: always valid.
        if let Ok(v4net) = Ipv4Net::new(v4, v6.prefix_len() - 96) {
            return IpNet::V4(v4net);
        }
    }
    net
}

/// policyd-spf's `skip_addresses` default.
pub const DEFAULT_SKIP_ADDRESSES: [&str; 3] = ["127.0.0.0/8", "::ffff:127.0.0.0/104", "::1"];

/// [`DEFAULT_SKIP_ADDRESSES`] as networks.
pub(crate) fn default_skip_addresses() -> CidrList {
    CidrList::new(
        DEFAULT_SKIP_ADDRESSES
            .iter()
            .filter_map(|s| parse_cidr(s).ok())
            .map(|(net, _)| net)
            .collect(),
    )
}

/// `InternalHosts` by default: `127.0.0.1`.
pub(crate) fn default_internal_hosts() -> Vec<HostPattern> {
    vec![HostPattern {
        negated: false,
        kind: HostKind::Network(IpNet::from(IpAddr::V4(Ipv4Addr::LOCALHOST))),
    }]
}

/// How a CIDR item was written, when that matters to the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CidrNote {
    /// `::1//128`: the legacy spelling with two slashes.
    DoubleSlash,
    /// `10.0.0.0/255.0.0.0`: a netmask instead of a length.
    Netmask,
}

/// Parses one network: an address (a /32 or /128), `ADDR/LEN`,
/// `ADDR/NETMASK` (as Python's ipaddress accepts), or the legacy `ADDR//LEN`.
/// Host bits set (`10.0.0.1/8`) are an error: did the writer mean the
/// network or the host?
pub(crate) fn parse_cidr(item: &str) -> Result<(IpNet, Option<CidrNote>), String> {
    let mut note = None;
    let mut text = item.to_owned();
    if let Some((addr, len)) = item.split_once("//")
        && !len.contains('/')
    {
        note = Some(CidrNote::DoubleSlash);
        text = format!("{addr}/{len}");
    }
    let Some((addr, len)) = text.split_once('/') else {
        return match text.parse::<IpAddr>() {
            Ok(ip) => Ok((IpNet::from(ip), note)),
            Err(_) => Err(format!("{item:?} is not an IP address or network")),
        };
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{item:?} is not an IP network: {addr:?} is not an address"))?;
    let prefix = if let (IpAddr::V4(_), Ok(mask)) = (ip, len.parse::<Ipv4Addr>()) {
        let bits = u32::from(mask);
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return Err(format!("{item:?}: {len} is not a contiguous netmask"));
        }
        note = note.or(Some(CidrNote::Netmask));
        bits.leading_ones() as u8
    } else {
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
            return Err(format!(
                "{item:?} is not an IP network: {len:?} is not a prefix length"
            ));
        }
        len.parse::<u8>()
            .map_err(|_| format!("{item:?}: prefix length {len} is out of range"))?
    };
    let net = match ip {
        IpAddr::V4(v4) => Ipv4Net::new(v4, prefix).map(IpNet::V4),
        IpAddr::V6(v6) => Ipv6Net::new(v6, prefix).map(IpNet::V6),
    }
    .map_err(|_| format!("{item:?}: prefix length {prefix} is out of range"))?;
    if net.trunc() != net {
        return Err(format!(
            "{item:?} has host bits set: write {} for the network or {} for the single address",
            net.trunc(),
            net.addr()
        ));
    }
    Ok((net, note))
}

/// One entry of `InternalHosts` (pyspf-milter's dataset syntax): an address,
/// a network, a host name, or `.domain` for every name under a domain; `!`
/// in front excludes. IP entries may be written in brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// `!entry`: matching clients are not internal (more precise entries
    /// win, as in pyspf-milter).
    pub negated: bool,
    pub kind: HostKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostKind {
    /// An address (as /32 or /128) or a network. Matching normalises
    /// IPv4-mapped forms as [`CidrList`] does.
    Network(IpNet),
    /// A host name, matched against the client's forward-confirmed PTR name.
    Host(DomainName),
    /// `.example.com`: any forward-confirmed PTR name under the domain.
    Domain(DomainName),
}

impl HostPattern {
    pub(crate) fn parse(item: &str) -> Result<(HostPattern, Option<CidrNote>), String> {
        let (negated, rest) = match item.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, item),
        };
        let bare = rest.trim_start_matches('[').trim_end_matches(']');
        if bare.is_empty() {
            return Err(format!("{item:?} names no host"));
        }
        let looks_ip = bare.contains(':')
            || bare
                .split('/')
                .next()
                .is_some_and(|a| a.parse::<IpAddr>().is_ok());
        if looks_ip {
            let (net, note) = parse_cidr(bare)?;
            return Ok((
                HostPattern {
                    negated,
                    kind: HostKind::Network(net),
                },
                note,
            ));
        }
        if let Some(domain) = bare.strip_prefix('.') {
            let name = DomainName::parse(domain)?;
            return Ok((
                HostPattern {
                    negated,
                    kind: HostKind::Domain(name),
                },
                None,
            ));
        }
        // pyspf-milter takes a word without a dot for an error; so does
        // this reader, also after a trailing dot is dropped (`csl.`).
        let name = DomainName::parse(bare)
            .ok()
            .filter(|n| n.as_str().contains('.'))
            .ok_or_else(|| {
                format!(
                    "{item:?} is neither an address, a network, a fully qualified host name nor a .domain"
                )
            })?;
        Ok((
            HostPattern {
                negated,
                kind: HostKind::Host(name),
            },
            None,
        ))
    }

    /// Whether this entry names `ip` (networks only; names need DNS).
    pub fn matches_ip(&self, ip: IpAddr) -> bool {
        match &self.kind {
            HostKind::Network(net) => normalise_net(*net).contains(&canonical_ip(ip)),
            HostKind::Host(_) | HostKind::Domain(_) => false,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negated {
            f.write_str("!")?;
        }
        match &self.kind {
            HostKind::Network(net) => write_net(f, *net),
            HostKind::Host(name) => write!(f, "{name}"),
            HostKind::Domain(name) => write!(f, ".{name}"),
        }
    }
}

/// A network, with single addresses written without their length.
pub(crate) fn write_net(f: &mut impl fmt::Write, net: IpNet) -> fmt::Result {
    if net.prefix_len() == net.max_prefix_len() {
        write!(f, "{}", net.addr())
    } else {
        write!(f, "{net}")
    }
}

pub(crate) fn net_to_string(net: IpNet) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write_net(&mut s, net);
    s
}

/// One entry of `MacroList` (`name` or `name|value|value`): the connection is
/// checked when the macro is set (to one of the values, if any are given).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MacroRule {
    /// The macro's name without braces (`auth_type`, `daemon_name`, `j`).
    pub name: String,
    /// Accepted values (case-sensitive); empty: any value.
    pub values: Vec<String>,
}

impl MacroRule {
    pub(crate) fn parse(item: &str) -> Result<MacroRule, String> {
        let mut parts = item.split('|');
        let name = parts.next().unwrap_or_default();
        let name = name
            .strip_prefix('{')
            .and_then(|n| n.strip_suffix('}'))
            .unwrap_or(name);
        if name.is_empty() {
            return Err(format!("{item:?} names no macro"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        {
            return Err(format!(
                "{item:?}: {c:?} cannot be part of a macro name (write name|value|value)"
            ));
        }
        let values: Vec<String> = parts.map(str::to_owned).collect();
        if let Some(v) = values.iter().find(|v| v.chars().any(char::is_control)) {
            return Err(format!("{item:?}: control characters in the value {v:?}"));
        }
        Ok(MacroRule {
            name: name.to_owned(),
            values,
        })
    }

    /// Whether a connection whose macro has `value` (`None`: not sent) is
    /// selected by this rule.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match value {
            None => false,
            Some(v) if self.values.is_empty() => !v.is_empty(),
            Some(v) => self.values.iter().any(|x| x == v),
        }
    }
}

impl fmt::Display for MacroRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        for v in &self.values {
            write!(f, "|{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mode, SocketSpec, UserSpec};

    #[test]
    fn cidrs() {
        let net = |s: &str| parse_cidr(s).map(|(n, note)| (n.to_string(), note));
        assert_eq!(net("10.0.0.0/8"), Ok(("10.0.0.0/8".into(), None)));
        assert_eq!(net("::1"), Ok(("::1/128".into(), None)));
        assert_eq!(
            net("::1//128"),
            Ok(("::1/128".into(), Some(CidrNote::DoubleSlash)))
        );
        assert_eq!(
            net("10.0.0.0/255.0.0.0"),
            Ok(("10.0.0.0/8".into(), Some(CidrNote::Netmask)))
        );
        assert!(net("10.0.0.1/8").unwrap_err().contains("host bits"));
        for bad in [
            "",
            "foo",
            "10.0.0.0/33",
            "10.0.0.0/",
            "::1/129",
            "1.2.3.4/+8",
            "10.0.0.0/255.0.255.0",
            "1.2.3.4//8/8",
        ] {
            assert!(net(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mapped_networks_match_like_ipv4() {
        let list = CidrList::new(vec!["::ffff:127.0.0.0/104".parse().unwrap()]);
        let plain = CidrList::new(vec!["127.0.0.0/8".parse().unwrap()]);
        for ip in ["127.0.0.1", "::ffff:127.0.0.1", "127.255.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(list.contains(ip) && plain.contains(ip), "{ip}");
        }
        for ip in ["128.0.0.1", "::1", "::ffff:128.0.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!list.contains(ip) && !plain.contains(ip), "{ip}");
        }
        assert_eq!(list.entries()[0].to_string(), "::ffff:127.0.0.0/104");
    }

    #[test]
    fn host_patterns() {
        let p = |s: &str| HostPattern::parse(s).map(|(p, _)| p.to_string());
        assert_eq!(p("127.0.0.1"), Ok("127.0.0.1".into()));
        assert_eq!(p("[::1]"), Ok("::1".into()));
        assert_eq!(p("!192.168.1.0/24"), Ok("!192.168.1.0/24".into()));
        assert_eq!(p("![10.1.1.1]"), Ok("!10.1.1.1".into()));
        assert_eq!(p(".Example.COM"), Ok(".example.com".into()));
        assert_eq!(p("mx.example.com"), Ok("mx.example.com".into()));
        assert!(p("localhost").is_err());
        assert!(p("10.0.0.1/8").is_err());
        assert!(p("!").is_err());
        let (pat, _) = HostPattern::parse("127.0.0.1").unwrap();
        assert!(pat.matches_ip("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn domains_users_macros_modes() {
        assert_eq!(
            DomainName::parse("Example.COM.").unwrap().as_str(),
            "example.com"
        );
        assert_eq!(
            DomainName::parse("bücher.example").unwrap().as_str(),
            "xn--bcher-kva.example"
        );
        assert!(DomainName::parse("a..b").is_err());
        assert!(DomainName::parse(" a.b").is_err());
        assert!(DomainName::parse("a b.c").is_err());
        assert!(DomainName::parse("127.").is_err());
        assert!(DomainName::parse("1.2.3.4.").is_err());
        assert!(HostPattern::parse("127.").is_err());
        assert!(HostPattern::parse("csl.").is_err());
        assert!("inet:1.2.3.4.:25".parse::<SocketSpec>().is_err());
        assert_eq!(
            "mail:mail".parse::<UserSpec>().unwrap().to_string(),
            "mail:mail"
        );
        assert!("a:".parse::<UserSpec>().is_err());
        assert!("a b".parse::<UserSpec>().is_err());
        let rule = MacroRule::parse("{auth_type}|login|plain").unwrap();
        assert_eq!(rule.to_string(), "auth_type|login|plain");
        assert!(rule.matches(Some("plain")) && !rule.matches(Some("x")) && !rule.matches(None));
        assert!(MacroRule::parse("daemon_name").unwrap().matches(Some("x")));
        assert!(MacroRule::parse("|x").is_err());
        assert_eq!(Mode::parse_octal("0660", 0o7777), Ok(Mode(0o660)));
        assert_eq!(Mode(0o7).to_string(), "0007");
        assert!(Mode::parse_octal("0668", 0o7777).is_err());
        assert!(Mode::parse_octal("1777", 0o777).is_err());
    }
}
