//! The typed values of the configuration and their parsers, shared by the
//! TOML and the legacy reader so that one spelling means one thing in both.
//!
//! Parsers return `Err(text)` for input that cannot be understood; the
//! readers attach the file and line.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

// ---------------------------------------------------------------- policies

/// `HELO_reject` / `Mail_From_reject` (docs/policyd-spf-compatibility.md §2): which SPF results of an
/// identity reject the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectPolicy {
    /// Reject Fail, Softfail and Neutral.
    SpfNotPass,
    /// Reject Fail and Softfail.
    Softfail,
    /// Reject Fail (the default).
    Fail,
    /// HELO only: reject a HELO Fail only when the sender is `<>`.
    Null,
    /// Never reject or defer on this identity; header only
    /// (`PermError_reject` and `TempError_Defer` do not apply to it).
    False,
    /// Do not check this identity at all.
    NoCheck,
}

impl RejectPolicy {
    pub const ALL: [RejectPolicy; 6] = [
        RejectPolicy::SpfNotPass,
        RejectPolicy::Softfail,
        RejectPolicy::Fail,
        RejectPolicy::Null,
        RejectPolicy::False,
        RejectPolicy::NoCheck,
    ];

    /// The policyd-spf spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectPolicy::SpfNotPass => "SPF_Not_Pass",
            RejectPolicy::Softfail => "Softfail",
            RejectPolicy::Fail => "Fail",
            RejectPolicy::Null => "Null",
            RejectPolicy::False => "False",
            RejectPolicy::NoCheck => "No_Check",
        }
    }
}

impl fmt::Display for RejectPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which trace header(s) the milter adds (`Header_Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderType {
    /// `Received-SPF` (RFC 7208 §9.1); policyd-spf's default.
    Spf,
    /// `Authentication-Results` (RFC 8601).
    Ar,
    /// Both (an extension of this project: `SPF,AR`).
    Both,
    /// No header at all.
    None,
}

impl HeaderType {
    pub const ALL: [HeaderType; 4] = [
        HeaderType::Spf,
        HeaderType::Ar,
        HeaderType::Both,
        HeaderType::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HeaderType::Spf => "SPF",
            HeaderType::Ar => "AR",
            HeaderType::Both => "SPF,AR",
            HeaderType::None => "None",
        }
    }

    pub fn received_spf(self) -> bool {
        matches!(self, HeaderType::Spf | HeaderType::Both)
    }

    pub fn authentication_results(self) -> bool {
        matches!(self, HeaderType::Ar | HeaderType::Both)
    }
}

impl fmt::Display for HeaderType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the milter answers when it fails internally (a bug, not an SPF
/// result): like the `On-InternalError` of other milters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InternalErrorAction {
    /// 451 4.3.0: the client retries later (Postfix's `milter_default_action`).
    Tempfail,
    /// Let the message through without an SPF header.
    Accept,
    /// 550 5.7.1.
    Reject,
}

impl InternalErrorAction {
    pub const ALL: [InternalErrorAction; 3] = [
        InternalErrorAction::Tempfail,
        InternalErrorAction::Accept,
        InternalErrorAction::Reject,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InternalErrorAction::Tempfail => "tempfail",
            InternalErrorAction::Accept => "accept",
            InternalErrorAction::Reject => "reject",
        }
    }
}

impl fmt::Display for InternalErrorAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogTarget {
    /// syslog, facility mail (what policyd-spf does and log parsers expect).
    Syslog,
    /// Standard error (for systemd's journal or a terminal).
    Stderr,
}

impl LogTarget {
    pub const ALL: [LogTarget; 2] = [LogTarget::Syslog, LogTarget::Stderr];

    pub fn as_str(self) -> &'static str {
        match self {
            LogTarget::Syslog => "syslog",
            LogTarget::Stderr => "stderr",
        }
    }
}

impl fmt::Display for LogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// policyd-spf's `debugLevel`, -1 to 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// -1: nothing at all once started.
    Silent,
    /// 0: errors only.
    Errors,
    /// 1: one line per action (the default).
    Actions,
    /// 2: adds a line per identity checked.
    Results,
    /// 3: configuration dump, header text.
    Config,
    /// 4: the raw data of each request.
    Requests,
    /// 5: internals.
    Internals,
}

impl LogLevel {
    pub const ALL: [LogLevel; 7] = [
        LogLevel::Silent,
        LogLevel::Errors,
        LogLevel::Actions,
        LogLevel::Results,
        LogLevel::Config,
        LogLevel::Requests,
        LogLevel::Internals,
    ];

    pub fn as_int(self) -> i8 {
        match self {
            LogLevel::Silent => -1,
            LogLevel::Errors => 0,
            LogLevel::Actions => 1,
            LogLevel::Results => 2,
            LogLevel::Config => 3,
            LogLevel::Requests => 4,
            LogLevel::Internals => 5,
        }
    }

    /// -1..=5; `None` below -1. Values above 5 are 5 (policyd-spf logs
    /// nothing more for them); the caller warns.
    pub fn from_int(n: i64) -> Option<LogLevel> {
        match n {
            ..=-2 => None,
            -1 => Some(LogLevel::Silent),
            0 => Some(LogLevel::Errors),
            1 => Some(LogLevel::Actions),
            2 => Some(LogLevel::Results),
            3 => Some(LogLevel::Config),
            4 => Some(LogLevel::Requests),
            _ => Some(LogLevel::Internals),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Silent => "silent",
            LogLevel::Errors => "errors",
            LogLevel::Actions => "actions",
            LogLevel::Results => "results",
            LogLevel::Config => "config",
            LogLevel::Requests => "requests",
            LogLevel::Internals => "internals",
        }
    }
}

/// The authserv-id written in Authentication-Results (`Authserv_Id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuthservId {
    /// The MTA's `j` macro (Postfix `$myhostname`): what OpenDMARC trusts by
    /// default. The default of spfmilter.
    MtaHostname,
    /// `HOSTNAME`: this machine's host name (policyd-spf's default).
    Hostname,
    /// A fixed identifier.
    Fixed(String),
}

impl AuthservId {
    /// Parses a configured value: `HOSTNAME` or an identifier. RFC 8601
    /// §2.2 allows a token or a quoted-string; only a token is taken
    /// (choice where the RFC leaves room): lenient readers such as
    /// OpenDMARC's drop quotes and split on spaces, so a quoted or spaced
    /// id could be read as another one, and a `;` would end it early.
    pub fn parse(s: &str) -> Result<AuthservId, String> {
        if s == "HOSTNAME" {
            return Ok(AuthservId::Hostname);
        }
        if s.trim().is_empty() {
            return Err("the authserv-id is empty: leave the option unset to use the MTA's host name (Postfix's j macro), or write HOSTNAME for this machine's host name".into());
        }
        if let Some(c) = s.chars().find(|&c| !is_token_char(c)) {
            return Err(format!(
                "the authserv-id {s:?} contains {c:?}: it must be one token of RFC 8601 §2.2 (letters, digits, '.', '-', '_' and the like; no spaces, quotes or ;:()<>@,/\\[]?=), usually the host name"
            ));
        }
        Ok(AuthservId::Fixed(s.to_owned()))
    }
}

/// A character of an RFC 2045 §5.1 `token`: printable ASCII other than
/// space and the tspecials. The authserv-id (RFC 8601 §2.2 `value`) is
/// written as one, so that no header reader can split it.
pub fn is_token_char(c: char) -> bool {
    c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c)
}

// ------------------------------------------------------------------ socket

/// Where the milter listens. Accepts Postfix's spellings (`inet:HOST:PORT`,
/// `inet:[ADDR]:PORT`, `inet6:[ADDR]:PORT`, `unix:/path`) and pyspf-milter's
/// (`inet:PORT@HOST`, `inet6:PORT@[ADDR]`, `inet:PORT`, `local:/path`);
/// displays in Postfix's form, which Postfix's `smtpd_milters` takes as is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SocketSpec {
    /// TCP on one address (`0.0.0.0` / `::` for all interfaces).
    Tcp(SocketAddr),
    /// TCP on the addresses of a host name, of one family, resolved when
    /// the socket is bound.
    TcpName {
        name: String,
        port: u16,
        family: Family,
    },
    /// A UNIX-domain socket (absolute path).
    Unix(PathBuf),
}

/// The address family of a [`SocketSpec::TcpName`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Inet,
    Inet6,
}

impl Default for SocketSpec {
    fn default() -> Self {
        SocketSpec::Tcp(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 8891))
    }
}

impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketSpec::Tcp(SocketAddr::V4(a)) => write!(f, "inet:{}:{}", a.ip(), a.port()),
            SocketSpec::Tcp(SocketAddr::V6(a)) => write!(f, "inet6:[{}]:{}", a.ip(), a.port()),
            SocketSpec::TcpName { name, port, family } => {
                let kind = match family {
                    Family::Inet => "inet",
                    Family::Inet6 => "inet6",
                };
                write!(f, "{kind}:{name}:{port}")
            }
            SocketSpec::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The longest path a Linux `sockaddr_un` holds (108 bytes with the NUL).
const MAX_UNIX_PATH: usize = 107;

impl FromStr for SocketSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let expected = "expected inet:HOST:PORT, inet6:[ADDRESS]:PORT, unix:/PATH \
                        (or pyspf-milter's inet:PORT@HOST, inet6:PORT@[ADDRESS], local:/PATH)";
        let Some((kind, rest)) = s.split_once(':') else {
            return Err(format!("invalid socket {s:?}: {expected}"));
        };
        match kind.to_ascii_lowercase().as_str() {
            "unix" | "local" => {
                if !rest.starts_with('/') {
                    return Err(format!(
                        "invalid socket {s:?}: the path of a UNIX socket must be absolute"
                    ));
                }
                if rest.len() > MAX_UNIX_PATH {
                    return Err(format!(
                        "invalid socket {s:?}: a UNIX socket path has at most {MAX_UNIX_PATH} bytes"
                    ));
                }
                if rest.contains('\0') {
                    return Err(format!("invalid socket {s:?}: NUL in the path"));
                }
                Ok(SocketSpec::Unix(PathBuf::from(rest)))
            }
            "inet" => parse_tcp(s, rest, Family::Inet),
            "inet6" => parse_tcp(s, rest, Family::Inet6),
            _ => Err(format!("invalid socket {s:?}: {expected}")),
        }
    }
}

fn parse_tcp(whole: &str, rest: &str, family: Family) -> Result<SocketSpec, String> {
    let bad = |why: &str| format!("invalid socket {whole:?}: {why}");
    // pyspf-milter (libmilter): PORT@HOST, or PORT alone for all interfaces.
    let (host, port) = if let Some((port, host)) = rest.split_once('@') {
        (Some(host), port)
    } else if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
        (None, rest)
    } else if let Some(inner) = rest.strip_prefix('[') {
        let (addr, port) = inner
            .split_once("]:")
            .ok_or_else(|| bad("expected [ADDRESS]:PORT"))?;
        (Some(addr), port)
    } else {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("expected HOST:PORT"))?;
        if host.contains(':') {
            return Err(bad(
                "an IPv6 address must be enclosed in brackets: inet6:[ADDRESS]:PORT",
            ));
        }
        (Some(host), port)
    };
    let port: u16 = match port.parse() {
        Ok(0) | Err(_) => return Err(bad(&format!("{port:?} is not a port (1-65535)"))),
        Ok(p) => p,
    };
    let host = host.map(|h| {
        h.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(h)
    });
    match host {
        None => Ok(SocketSpec::Tcp(match family {
            Family::Inet => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
            Family::Inet6 => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
        })),
        Some(host) => match host.parse::<IpAddr>() {
            // Postfix writes IPv6 milters as inet:[::1]:PORT: the address
            // says the family, so take it.
            Ok(ip @ IpAddr::V6(_)) => Ok(SocketSpec::Tcp(SocketAddr::new(ip, port))),
            Ok(IpAddr::V4(_)) if family == Family::Inet6 => Err(bad(
                "inet6 needs an IPv6 address; write inet:ADDRESS:PORT for IPv4",
            )),
            Ok(ip) => Ok(SocketSpec::Tcp(SocketAddr::new(ip, port))),
            Err(_) => {
                let name = DomainName::parse(host)
                    .map_err(|e| bad(&format!("the host is neither an address nor a name: {e}")))?;
                Ok(SocketSpec::TcpName {
                    name: name.0,
                    port,
                    family,
                })
            }
        },
    }
}

// ---------------------------------------------------------- names and nets

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
        return IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).expect("prefix in range"));
    }
    net
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
    write_net(&mut s, net).expect("writing to a String");
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

/// `UserID`: `user[:group]` to run as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserSpec {
    pub user: String,
    /// The group; `None`: the user's primary group.
    pub group: Option<String>,
}

impl FromStr for UserSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let valid = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
        };
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        if !valid(user) || group.is_some_and(|g| !valid(g)) {
            return Err(format!(
                "{s:?} is not user[:group] (names of letters, digits, _ - . $)"
            ));
        }
        Ok(UserSpec {
            user: user.to_owned(),
            group: group.map(str::to_owned),
        })
    }
}

impl fmt::Display for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.group {
            Some(g) => write!(f, "{}:{g}", self.user),
            None => f.write_str(&self.user),
        }
    }
}

/// A file mode or umask, written in octal (`0660`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mode(pub u32);

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Mode {
    /// Octal digits, with or without a leading `0` or `0o`.
    pub(crate) fn parse_octal(s: &str, max: u32) -> Result<Mode, String> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(format!("{s:?} is not an octal mode such as 0660"));
        }
        match u32::from_str_radix(digits, 8) {
            Ok(v) if v <= max => Ok(Mode(v)),
            _ => Err(format!("{s:?} is larger than {max:o} (octal)")),
        }
    }
}

// --------------------------------------------------------------- durations

/// Parses a duration: a number of seconds (`20`, `1.5`) or a number with a
/// unit `ms`, `s`, `m` or `h` (`500ms`, `2m`). Whole milliseconds only, so
/// that every value prints back exactly.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (t, 1000.0)
    };
    let num = num.trim();
    let valid = !num.is_empty()
        && num.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && num.bytes().filter(|&b| b == b'.').count() <= 1;
    let value: f64 = match num.parse() {
        Ok(v) if valid => v,
        _ => {
            return Err(format!(
                "{s:?} is not a duration (seconds, or a number with ms, s, m or h)"
            ));
        }
    };
    duration_from_ms(value * scale_ms, s)
}

pub(crate) fn duration_from_secs_f64(secs: f64, shown: &str) -> Result<Duration, String> {
    duration_from_ms(secs * 1000.0, shown)
}

fn duration_from_ms(ms: f64, shown: &str) -> Result<Duration, String> {
    // A day is far beyond any sensible DNS or SPF time limit; capping keeps
    // the arithmetic exact.
    const MAX_MS: f64 = 86_400_000.0;
    if !ms.is_finite() || ms < 0.0 {
        return Err(format!("{shown:?} is not a duration"));
    }
    if ms > MAX_MS {
        return Err(format!("{shown:?} is longer than a day"));
    }
    let rounded = ms.round();
    if (ms - rounded).abs() > 1e-6 {
        return Err(format!(
            "{shown:?}: durations are counted in whole milliseconds"
        ));
    }
    Ok(Duration::from_millis(rounded as u64))
}

/// A duration as it is written back: whole seconds as an integer, anything
/// else as a `"…ms"` string.
pub(crate) fn duration_to_toml(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        d.as_secs().to_string()
    } else {
        format!("\"{}ms\"", d.as_millis())
    }
}

/// A byte size as the TOML file would say it: with the largest binary
/// unit that divides it ("32M"), else in bytes.
pub(crate) fn size_to_toml(bytes: usize) -> String {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("\"{}{unit}\"", bytes >> shift);
        }
    }
    bytes.to_string()
}

// --------------------------------------------------------------- templates

/// A piece of a `str.format` template (the syntax policyd-spf uses).
enum Piece {
    Text(String),
    Field(String),
}

/// Splits a Python `str.format` template into text and fields: `{{` and
/// `}}` are literal braces; a field is `{name}` (conversions `!r`, format
/// specs `:>10` and attribute access are refused: policyd-spf's values are
/// plain strings and the reply must stay predictable).
fn split_template(s: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '}' => return Err("a single '}' must be written '}}'".into()),
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => {
                            return Err(
                                "a '{' is not closed (a literal '{' is written '{{')".into()
                            );
                        }
                        Some(c) => name.push(c),
                    }
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Field(name));
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn escape_braces(out: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            '{' => out.write_str("{{")?,
            '}' => out.write_str("}}")?,
            c => fmt::Write::write_char(out, c)?,
        }
    }
    Ok(())
}

fn check_text(s: &str) -> Result<(), String> {
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "control character {c:?}: the text goes into an SMTP reply"
        )),
        None => Ok(()),
    }
}

/// The part of `Reason_Message` that is filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageField {
    /// `{rejectdefer}`: `rejected` or `deferred`.
    RejectDefer,
    /// `{spf}`: the explanation or error text.
    Spf,
    /// `{url}`: the expanded `Reason_URL`.
    Url,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessagePart {
    Text(String),
    Field(MessageField),
}

/// `Reason_Message`, parsed at load: `{rejectdefer}`, `{spf}`, `{url}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReasonMessage {
    pub parts: Vec<MessagePart>,
}

pub const DEFAULT_REASON_MESSAGE: &str = "Message {rejectdefer} due to: {spf}. Please see {url}";
/// No URL by default: policyd-spf's default,
/// [`POLICYD_SPF_REASON_URL`], points at a site that no longer exists.
pub const DEFAULT_REASON_URL: &str = "";
/// policyd-spf's `Reason_URL` default (www.openspf.net is defunct).
pub const POLICYD_SPF_REASON_URL: &str = "http://www.openspf.net/Why?s={0};id={1};ip={2};r={3}";

/// What comes before `{url}` in [`DEFAULT_REASON_MESSAGE`]: with no URL,
/// it goes too.
const URL_LEAD_IN: &str = " Please see ";

impl Default for ReasonMessage {
    fn default() -> Self {
        DEFAULT_REASON_MESSAGE.parse().expect("the default parses")
    }
}

impl FromStr for ReasonMessage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        check_text(s)?;
        let parts = split_template(s)?
            .into_iter()
            .map(|p| match p {
                Piece::Text(t) => Ok(MessagePart::Text(t)),
                Piece::Field(name) => match name.as_str() {
                    "rejectdefer" => Ok(MessagePart::Field(MessageField::RejectDefer)),
                    "spf" => Ok(MessagePart::Field(MessageField::Spf)),
                    "url" => Ok(MessagePart::Field(MessageField::Url)),
                    _ => Err(format!(
                        "unknown placeholder {{{name}}}: the reason message knows {{rejectdefer}}, {{spf}} and {{url}}"
                    )),
                },
            })
            .collect::<Result<_, _>>()?;
        Ok(ReasonMessage { parts })
    }
}

impl ReasonMessage {
    /// The text. With an empty `url`, a message ending in `… Please see
    /// {url}` (the default does) ends before ` Please see `: no dangling
    /// "Please see".
    pub fn render(&self, rejectdefer: &str, spf: &str, url: &str) -> String {
        let mut parts = self.parts.as_slice();
        let mut last_text: Option<&str> = None;
        if url.is_empty()
            && let [
                init @ ..,
                MessagePart::Text(lead),
                MessagePart::Field(MessageField::Url),
            ] = parts
            && let Some(kept) = lead.strip_suffix(URL_LEAD_IN)
        {
            parts = init;
            last_text = Some(kept);
        }
        let mut out = String::new();
        for part in parts {
            match part {
                MessagePart::Text(t) => out.push_str(t),
                MessagePart::Field(MessageField::RejectDefer) => out.push_str(rejectdefer),
                MessagePart::Field(MessageField::Spf) => out.push_str(spf),
                MessagePart::Field(MessageField::Url) => out.push_str(url),
            }
        }
        out.push_str(last_text.unwrap_or_default());
        out
    }
}

impl fmt::Display for ReasonMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                MessagePart::Text(t) => escape_braces(f, t)?,
                MessagePart::Field(MessageField::RejectDefer) => f.write_str("{rejectdefer}")?,
                MessagePart::Field(MessageField::Spf) => f.write_str("{spf}")?,
                MessagePart::Field(MessageField::Url) => f.write_str("{url}")?,
            }
        }
        Ok(())
    }
}

/// The argument of `Reason_URL` that is filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UrlField {
    /// `{0}`: `helo` or `mfrom`.
    Scope,
    /// `{1}`: the HELO name or the full sender.
    Identity,
    /// `{2}`: the client's IP address.
    Ip,
    /// `{3}`: the receiver (after `Hide_Receiver`).
    Receiver,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UrlPart {
    Text(String),
    Field(UrlField),
}

/// `Reason_URL`, parsed at load: `{0}`–`{3}` (or `{}` numbered in order,
/// as Python does).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReasonUrl {
    pub parts: Vec<UrlPart>,
}

impl Default for ReasonUrl {
    fn default() -> Self {
        DEFAULT_REASON_URL.parse().expect("the default parses")
    }
}

impl FromStr for ReasonUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        check_text(s)?;
        const FIELDS: [UrlField; 4] = [
            UrlField::Scope,
            UrlField::Identity,
            UrlField::Ip,
            UrlField::Receiver,
        ];
        let mut auto: Option<usize> = None;
        let mut manual = false;
        let mut parts = Vec::new();
        for piece in split_template(s)? {
            match piece {
                Piece::Text(t) => parts.push(UrlPart::Text(t)),
                Piece::Field(name) => {
                    let index = if name.is_empty() {
                        let next = auto.map_or(0, |i| i + 1);
                        auto = Some(next);
                        next
                    } else {
                        manual = true;
                        match name.as_str() {
                            "0" => 0,
                            "1" => 1,
                            "2" => 2,
                            "3" => 3,
                            _ => {
                                return Err(format!(
                                    "unknown placeholder {{{name}}}: the reason URL knows {{0}} (helo or mfrom), {{1}} (HELO name or sender), {{2}} (client IP) and {{3}} (receiver)"
                                ));
                            }
                        }
                    };
                    if auto.is_some() && manual {
                        return Err(
                            "{} and numbered placeholders cannot be mixed (Python refuses it)"
                                .into(),
                        );
                    }
                    let field = FIELDS.get(index).ok_or_else(|| {
                        "more than four {} placeholders: there are only four values".to_owned()
                    })?;
                    parts.push(UrlPart::Field(*field));
                }
            }
        }
        Ok(ReasonUrl { parts })
    }
}

impl ReasonUrl {
    /// `values` are {0} to {3}.
    pub fn render(&self, values: [&str; 4]) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                UrlPart::Text(t) => out.push_str(t),
                UrlPart::Field(f) => out.push_str(values[*f as usize]),
            }
        }
        out
    }
}

impl fmt::Display for ReasonUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                UrlPart::Text(t) => escape_braces(f, t)?,
                UrlPart::Field(field) => write!(f, "{{{}}}", *field as usize)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_spellings() {
        let ok = |s: &str| s.parse::<SocketSpec>().unwrap().to_string();
        assert_eq!(ok("inet:127.0.0.1:8891"), "inet:127.0.0.1:8891");
        assert_eq!(ok("inet:8893@localhost"), "inet:localhost:8893");
        assert_eq!(ok("inet:8893@127.0.0.1"), "inet:127.0.0.1:8893");
        assert_eq!(ok("inet:8893@[127.0.0.1]"), "inet:127.0.0.1:8893");
        assert_eq!(ok("inet:8893"), "inet:0.0.0.0:8893");
        assert_eq!(ok("inet6:8893"), "inet6:[::]:8893");
        assert_eq!(ok("inet6:8893@[::1]"), "inet6:[::1]:8893");
        assert_eq!(ok("inet6:[::1]:8893"), "inet6:[::1]:8893");
        assert_eq!(ok("inet:[::1]:8893"), "inet6:[::1]:8893");
        assert_eq!(ok("inet6:mx.example.com:25"), "inet6:mx.example.com:25");
        assert_eq!(ok("local:/run/x.sock"), "unix:/run/x.sock");
        assert_eq!(ok("unix:/run/x.sock"), "unix:/run/x.sock");
        assert_eq!(ok("INET:1.2.3.4:1"), "inet:1.2.3.4:1");
        for bad in [
            "",
            "8891",
            "inet:",
            "inet:host:",
            "inet:host:0",
            "inet:host:65536",
            "inet::1:8891",
            "inet6:127.0.0.1:8891",
            "inet6:[::1]",
            "unix:relative/path",
            "tcp:1.2.3.4:5",
            "inet:bad host:25",
            &format!("unix:/{}", "x".repeat(200)),
        ] {
            assert!(bad.parse::<SocketSpec>().is_err(), "{bad:?} parsed");
        }
        for s in [
            "inet:127.0.0.1:8891",
            "inet6:[::1]:1",
            "unix:/a",
            "inet:a.b:7",
        ] {
            let spec: SocketSpec = s.parse().unwrap();
            assert_eq!(spec.to_string().parse::<SocketSpec>().unwrap(), spec);
        }
    }

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
    fn templates() {
        let m: ReasonMessage = DEFAULT_REASON_MESSAGE.parse().unwrap();
        assert_eq!(m.to_string(), DEFAULT_REASON_MESSAGE);
        assert_eq!(
            m.render("rejected", "SPF fail - not authorized", "http://u"),
            "Message rejected due to: SPF fail - not authorized. Please see http://u"
        );
        let braces: ReasonMessage = "{{x}} {spf}".parse().unwrap();
        assert_eq!(braces.render("", "S", ""), "{x} S");
        assert_eq!(braces.to_string(), "{{x}} {spf}");
        for bad in ["{0}", "{spf!r}", "{spf:>3}", "{", "}", "{sp", "a\nb"] {
            assert!(bad.parse::<ReasonMessage>().is_err(), "{bad:?}");
        }
        // No URL by default: the default message then ends after {spf}.
        assert_eq!(
            m.render("rejected", "SPF fail - not authorized", ""),
            "Message rejected due to: SPF fail - not authorized."
        );
        let own: ReasonMessage = "{spf} see {url}".parse().unwrap();
        assert_eq!(own.render("rejected", "S", ""), "S see ");
        assert_eq!(
            ReasonUrl::default().render(["mfrom", "a@b", "192.0.2.1", "r"]),
            ""
        );
        let u: ReasonUrl = POLICYD_SPF_REASON_URL.parse().unwrap();
        assert_eq!(u.to_string(), POLICYD_SPF_REASON_URL);
        assert_eq!(
            u.render(["mfrom", "a@b", "192.0.2.1", "<UNKNOWN>"]),
            "http://www.openspf.net/Why?s=mfrom;id=a@b;ip=192.0.2.1;r=<UNKNOWN>"
        );
        let auto: ReasonUrl = "x{}y{}".parse().unwrap();
        assert_eq!(auto.to_string(), "x{0}y{1}");
        for bad in ["{4}", "{}{0}", "{}{}{}{}{}", "{rejectdefer}"] {
            assert!(bad.parse::<ReasonUrl>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "-1", "abc", "1.0001", "1e3", "2d", "25h", ".", "1..2"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(duration_to_toml(Duration::from_secs(20)), "20");
        assert_eq!(duration_to_toml(Duration::from_millis(1500)), "\"1500ms\"");
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
