//! The identities SPF checks (RFC 7208 §2.3, §2.4, §4.3) and the name rules
//! that apply to them.

use std::borrow::Cow;
use std::net::IpAddr;

use compact_str::CompactString;

/// <sender> and the parts macros need, in one string: `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderParts {
    /// `local@domain` as used by `%{s}`; the domain in lower-case A-labels.
    /// Inline up to 24 bytes (most addresses): no allocation per check.
    sender: CompactString,
    /// Where the `@` between local part and domain is.
    at: usize,
}

/// The longest `local@domain` a [`CompactString`] holds without allocating.
const INLINE_SENDER: usize = std::mem::size_of::<CompactString>();

impl SenderParts {
    /// The HELO identity: `postmaster@<helo>` (§2.3).
    pub fn for_helo(helo: &str) -> Self {
        Self::build("postmaster", trim_helo(helo))
    }

    /// The MAIL FROM identity (§2.4): the null sender becomes
    /// `postmaster@<helo>`; a missing local part becomes `postmaster` (§4.3);
    /// an address without `@` is taken as a bare domain.
    pub fn for_mail_from(sender: &str, helo: &str) -> Self {
        let sender = sender.trim();
        let sender = sender
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(sender);
        if sender.is_empty() {
            return Self::for_helo(helo);
        }
        // The domain cannot contain '@', a quoted local part can: split at
        // the last one.
        // A plain backwards scan: addresses are short, and memrchr's set-up
        // costs more than it saves here.
        let at = sender.bytes().rposition(|b| b == b'@');
        let (local, domain) = match at {
            Some(at) => (&sender[..at], &sender[at + 1..]),
            None => ("", sender),
        };
        let local = if local.is_empty() {
            "postmaster"
        } else {
            local
        };
        Self::build(local, domain)
    }

    fn build(local: &str, domain: &str) -> Self {
        let at = local.len();
        let ascii_domain;
        let domain = if domain.is_ascii() {
            domain
        } else {
            ascii_domain = to_ascii_domain(domain);
            &ascii_domain
        };
        let len = at + 1 + domain.len();
        let mut bytes = [0u8; INLINE_SENDER];
        let sender = if len <= INLINE_SENDER {
            // Most addresses: assembled on the stack, stored inline.
            bytes[..at].copy_from_slice(local.as_bytes());
            bytes[at] = b'@';
            bytes[at + 1..len].copy_from_slice(domain.as_bytes());
            bytes[at + 1..len].make_ascii_lowercase();
            // Valid UTF-8: whole strings joined at an ASCII '@', and only
            // ASCII letters changed.
            CompactString::from_utf8(&bytes[..len]).unwrap_or_default()
        } else {
            let mut sender = String::with_capacity(len);
            sender.push_str(local);
            sender.push('@');
            sender.push_str(domain);
            sender[at + 1..].make_ascii_lowercase();
            CompactString::from(sender)
        };
        Self { sender, at }
    }

    /// `local@domain`.
    pub fn sender(&self) -> &str {
        &self.sender
    }

    pub fn local_part(&self) -> &str {
        &self.sender[..self.at]
    }

    /// The domain to evaluate (lower-case, A-labels where the input had
    /// U-labels).
    pub fn domain(&self) -> &str {
        &self.sender[self.at + 1..]
    }

    pub fn into_sender(self) -> CompactString {
        self.sender
    }
}

/// HELO arguments arrive with stray spaces sometimes; nothing else is
/// changed (an address literal stays one and yields "none").
fn trim_helo(helo: &str) -> &str {
    helo.trim()
}

/// RFC 8616 §4: a domain given in U-labels is looked up in its A-label
/// form. ASCII names are only lower-cased. A name that IDNA cannot convert
/// is kept as it is, and fails validation later.
pub fn to_ascii_domain(domain: &str) -> String {
    if domain.is_ascii() {
        domain.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_owned())
    }
}

/// What a byte is in a domain name, for [`validate_domain`]. Controls,
/// space and DEL are invalid; anything else printable may be in a label
/// (§4.3 asks for a well-formed name, not an LDH host name: `_spf` and the
/// like are common). Non-ASCII is refused before the table is used.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NameByte {
    Label,
    Upper,
    Dot,
    Invalid,
}

const NAME_BYTE: [NameByte; 256] = {
    let mut table = [NameByte::Invalid; 256];
    let mut b = b'!';
    while b < 0x7f {
        table[b as usize] = if b == b'.' {
            NameByte::Dot
        } else if b.is_ascii_uppercase() {
            NameByte::Upper
        } else {
            NameByte::Label
        };
        b += 1;
    }
    table
};

/// §4.3: the domain must be a multi-label, well-formed name (labels of
/// 1–63 characters, at most 253 in all) and not an address literal.
/// Returns the name to query (lower-case, no trailing dot; borrowed when the
/// input already is), or why it is not one.
pub fn validate_domain(domain: &str) -> Result<Cow<'_, str>, String> {
    if domain.is_empty() {
        return Err("no domain to check".to_owned());
    }
    if domain.starts_with('[') {
        return Err(format!("{domain} is an address literal, not a domain name"));
    }
    let name = domain.strip_suffix('.').unwrap_or(domain);
    if !name.is_ascii() {
        return Err(format!("{domain:?} is not a valid domain name"));
    }
    if name.len() > 253 {
        return Err(format!("{domain} is longer than 253 characters"));
    }
    // One pass over the bytes: label lengths, control characters, case.
    let mut labels = 1;
    // Where the current label starts; its length is checked at its end.
    let mut label_start = 0;
    let mut upper = false;
    let label_end = |start: usize, end: usize| match end - start {
        0 => Err(format!("{domain} has an empty label")),
        64.. => Err(format!("{domain} has a label longer than 63 characters")),
        _ => Ok(()),
    };
    // One table lookup per byte: this runs for every identity checked.
    for (i, &b) in name.as_bytes().iter().enumerate() {
        match NAME_BYTE[usize::from(b)] {
            NameByte::Label => {}
            NameByte::Upper => upper = true,
            NameByte::Dot => {
                label_end(label_start, i)?;
                labels += 1;
                label_start = i + 1;
            }
            NameByte::Invalid => {
                return Err(format!("{domain:?} contains control characters or spaces"));
            }
        }
    }
    label_end(label_start, name.len())?;
    if labels < 2 {
        return Err(format!("{domain} is not a fully qualified domain name"));
    }
    if upper {
        Ok(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(name))
    }
}

/// Whether `sender` (MAIL FROM, with or without angle brackets) is the null
/// reverse-path, whose identity is then `postmaster@<helo>` (§2.4).
pub fn is_null_sender(sender: &str) -> bool {
    let sender = sender.trim();
    sender
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(sender)
        .is_empty()
}

/// A domain that came from the HELO/EHLO argument (the HELO identity, or
/// the MAIL FROM identity of the null sender) must also be a host name:
/// labels of letters, digits and hyphens, not starting or ending with a
/// hyphen (RFC 1123 §2.1, RFC 5321 §4.1.2 `Domain`). §4.3 gives "none" for
/// a malformed <domain>; a HELO argument is malformed when it is no host
/// name. Choices where the spec leaves room: [`validate_domain`] accepts any
/// printable label (a MAIL FROM domain's `_spf`-like labels are common), a
/// HELO name gets this stricter reading, so that text such as
/// `x;identity=mailfrom;.evil.test` is never evaluated (nor looked up) as a
/// name. `name` is the output of [`validate_domain`] (lower case, A-labels).
pub fn validate_host_name(name: &str) -> Result<(), String> {
    let ldh = name.split('.').all(|label| {
        !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if ldh {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a host name (letters, digits and hyphens)"
        ))
    }
}

/// A macro-expanded target name made ready to query (§7.3): the trailing
/// dot removed, then labels dropped from the left until it fits in 253
/// characters. `None` when it is not a name DNS can carry (an empty label,
/// a label over 63 characters, non-ASCII).
pub fn query_name(expanded: &str) -> Option<String> {
    let mut name = expanded.strip_suffix('.').unwrap_or(expanded);
    while name.len() > 253 {
        name = name.split_once('.')?.1;
    }
    let valid = !name.is_empty()
        && name.is_ascii()
        && name.split('.').all(|l| !l.is_empty() && l.len() <= 63);
    valid.then(|| name.to_owned())
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are IPv4 clients seen
/// through a dual-stack socket: evaluate them as IPv4 (RFC 4291 §2.5.5.2).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_ldh_labels() {
        for ok in [
            "mx.example.com",
            "1mx.example.com",
            "a-b.c0",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(validate_host_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "x;identity=mailfrom;.evil.test",
            "my_host.example.com",
            "-mx.example.com",
            "mx-.example.com",
            "mx.exa mple.com",
            "mx.(c)example.com",
            "mx.\"x\".com",
            "mx.example=.com",
        ] {
            assert!(validate_host_name(bad).is_err(), "{bad}");
        }
        assert!(is_null_sender(""));
        assert!(is_null_sender(" <> "));
        assert!(!is_null_sender("<a@b.c>"));
    }

    #[test]
    fn mail_from_identities() {
        let p = SenderParts::for_mail_from("Joe@Example.COM", "helo.test");
        assert_eq!((p.local_part(), p.domain()), ("Joe", "example.com"));
        assert_eq!(p.sender(), "Joe@example.com");
        let p = SenderParts::for_mail_from("", "mx.example.org");
        assert_eq!(p.sender(), "postmaster@mx.example.org");
        let p = SenderParts::for_mail_from("@example.net", "h");
        assert_eq!(p.sender(), "postmaster@example.net");
        let p = SenderParts::for_mail_from("<\"a@b\"@example.org>", "h");
        assert_eq!((p.local_part(), p.domain()), ("\"a@b\"", "example.org"));
        let p = SenderParts::for_mail_from("example.com", "h");
        assert_eq!(p.sender(), "postmaster@example.com");
    }

    #[test]
    fn idn_domains_become_a_labels() {
        let p = SenderParts::for_mail_from("user@bücher.example", "h");
        assert_eq!(p.domain(), "xn--bcher-kva.example");
        assert_eq!(
            SenderParts::for_helo("MAIL.Bücher.example").domain(),
            "mail.xn--bcher-kva.example"
        );
    }

    #[test]
    fn domain_validation_per_section_4_3() {
        assert!(validate_domain("example.com").is_ok());
        assert_eq!(validate_domain("Example.COM.").unwrap(), "example.com");
        assert!(validate_domain("A2345678").is_err());
        assert!(validate_domain("[192.0.2.1]").is_err());
        assert!(validate_domain("a...example.com").is_err());
        assert!(validate_domain(&format!("{}.example.com", "a".repeat(64))).is_err());
        assert!(validate_domain(&format!("{}.example.com", "a".repeat(63))).is_ok());
        assert!(validate_domain("").is_err());
        // Controls, spaces and DEL anywhere; labels checked at the end too.
        for bad in [
            "exa mple.com",
            "example.com\t",
            "exa\u{7f}mple.com",
            "example..",
            ".",
        ] {
            assert!(validate_domain(bad).is_err(), "{bad:?}");
        }
        assert!(validate_domain(&format!("example.{}", "a".repeat(64))).is_err());
        assert_eq!(
            validate_domain("_SPF.Example.com").unwrap(),
            Cow::<str>::Owned("_spf.example.com".into())
        );
        assert!(matches!(
            validate_domain("mx.example.com").unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn query_names_are_truncated_from_the_left() {
        let long = format!("{}.example.com", ["abcdefghij"; 30].join("."));
        let name = query_name(&long).unwrap();
        assert!(name.len() <= 253);
        assert!(name.ends_with(".example.com"));
        assert!(long.ends_with(&name));
        assert!(name.starts_with("abcdefghij."));
        assert_eq!(query_name("example.com.").as_deref(), Some("example.com"));
        assert_eq!(query_name("a..example.com"), None);
        assert_eq!(query_name(""), None);
    }

    #[test]
    fn mapped_ipv6_is_evaluated_as_ipv4() {
        assert_eq!(
            canonical_ip("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
    }
}
