//! Process and socket settings: where the milter listens
//! ([`SocketSpec`]), the user it runs as ([`UserSpec`]), file modes and the
//! umask ([`Mode`]).
//!
//! Parsers return `Err(text)` for input that cannot be understood; the
//! readers attach the file and line.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use super::names::DomainName;

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
                    name: name.as_str().to_owned(),
                    port,
                    family,
                })
            }
        },
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
}
