//! Macro strings (RFC 7208 §7): parsing and expansion.
//!
//! A macro string is parsed once, with the record, into [`MacroString`];
//! expansion is pure and synchronous. The only macro that needs DNS, `%{p}`,
//! is resolved by the evaluator beforehand and handed in through
//! [`MacroContext::validated_ptr`].

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use crate::dns::cache::heap_cost;

/// A macro letter (RFC 7208 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacroLetter {
    /// `s`: <sender>
    Sender,
    /// `l`: local-part of <sender>
    LocalPart,
    /// `o`: domain of <sender>
    SenderDomain,
    /// `d`: <domain>, the domain being evaluated
    Domain,
    /// `i`: <ip>, dotted quad or dot-separated nibbles
    Ip,
    /// `p`: the validated domain name of <ip> (do not use)
    ValidatedPtr,
    /// `v`: the string "in-addr" if <ip> is IPv4, or "ip6"
    IpVersion,
    /// `h`: HELO/EHLO domain
    Helo,
    /// `c`: SMTP client IP, readable form (exp only)
    ClientIp,
    /// `r`: domain name of the host performing the check (exp only)
    Receiver,
    /// `t`: current timestamp (exp only)
    Timestamp,
}

impl MacroLetter {
    fn from_char(c: char) -> Option<Self> {
        Some(match c.to_ascii_lowercase() {
            's' => Self::Sender,
            'l' => Self::LocalPart,
            'o' => Self::SenderDomain,
            'd' => Self::Domain,
            'i' => Self::Ip,
            'p' => Self::ValidatedPtr,
            'v' => Self::IpVersion,
            'h' => Self::Helo,
            'c' => Self::ClientIp,
            'r' => Self::Receiver,
            't' => Self::Timestamp,
            _ => return None,
        })
    }

    fn as_char(self) -> char {
        match self {
            Self::Sender => 's',
            Self::LocalPart => 'l',
            Self::SenderDomain => 'o',
            Self::Domain => 'd',
            Self::Ip => 'i',
            Self::ValidatedPtr => 'p',
            Self::IpVersion => 'v',
            Self::Helo => 'h',
            Self::ClientIp => 'c',
            Self::Receiver => 'r',
            Self::Timestamp => 't',
        }
    }

    /// RFC 7208 §7.1: `c`, `r` and `t` are allowed only in "exp" text.
    fn exp_only(self) -> bool {
        matches!(self, Self::ClientIp | Self::Receiver | Self::Timestamp)
    }
}

/// One `%{...}` expansion.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MacroExpand {
    pub letter: MacroLetter,
    /// Upper-case letter: URL-escape the result (§7.3).
    pub url_escape: bool,
    /// DIGIT transformer: keep this many right-hand parts (never 0).
    pub keep: Option<u32>,
    /// `r` transformer: reverse the parts.
    pub reverse: bool,
    /// Delimiters to split on; empty means the default, ".".
    pub delimiters: Box<str>,
}

/// A piece of a macro string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Token {
    Literal(Box<str>),
    /// `%%`, `%_` or `%-`: already the text they stand for (`%`, ` `,
    /// `%20`). Kept apart from literals because the ABNF counts them as
    /// macro-expands (relevant to domain-end, §12).
    Escape(&'static str),
    Macro(MacroExpand),
}

/// A parsed macro string (RFC 7208 §7.1 `macro-string`, or the
/// `explain-string` of an explanation TXT record, which may also hold spaces).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MacroString {
    tokens: Vec<Token>,
}

/// Where a macro string occurs: decides which characters and letters are legal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacroSyntax {
    /// A domain-spec or unknown-modifier value in a record.
    Record,
    /// The text of an explanation TXT record (§6.2): spaces and `c r t`
    /// allowed.
    Explanation,
}

/// A syntax error in a macro string, with a human description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroError(pub String);

impl fmt::Display for MacroError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// RFC 7208 §7.1 delimiter characters.
const DELIMITERS: &str = ".-+,/_=";

impl MacroString {
    /// Heap bytes owned, each allocation weighed as the allocator takes
    /// it (for a cache's byte budget).
    pub fn heap_size(&self) -> usize {
        heap_cost(self.tokens.capacity() * size_of::<Token>())
            + self
                .tokens
                .iter()
                .map(|token| match token {
                    Token::Literal(text) => heap_cost(text.len()),
                    Token::Escape(_) => 0,
                    Token::Macro(expand) => heap_cost(expand.delimiters.len()),
                })
                .sum::<usize>()
    }

    /// Parses `text` per RFC 7208 §7.1 (or §6.2 explain-string).
    pub fn parse(text: &str, syntax: MacroSyntax) -> Result<Self, MacroError> {
        let bytes = text.as_bytes();
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if c != b'%' {
                // macro-literal = %x21-24 / %x26-7E; explain-string adds SP.
                let legal =
                    (0x21..=0x7e).contains(&c) || (c == b' ' && syntax == MacroSyntax::Explanation);
                if !legal {
                    return Err(MacroError(format!(
                        "illegal character {:?} in {:?}",
                        char::from(c),
                        text
                    )));
                }
                literal.push(char::from(c));
                i += 1;
                continue;
            }
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut literal).into()));
            }
            match bytes.get(i + 1) {
                Some(b'%') => tokens.push(Token::Escape("%")),
                Some(b'_') => tokens.push(Token::Escape(" ")),
                Some(b'-') => tokens.push(Token::Escape("%20")),
                Some(b'{') => {
                    let close = text[i + 2..]
                        .find('}')
                        .ok_or_else(|| MacroError(format!("unterminated macro in {text:?}")))?;
                    let body = &text[i + 2..i + 2 + close];
                    tokens.push(Token::Macro(parse_expand(body, syntax, text)?));
                    i += 2 + close + 1;
                    continue;
                }
                _ => {
                    return Err(MacroError(format!(
                        "'%' must be followed by '{{', '%', '_' or '-' in {text:?}"
                    )));
                }
            }
            i += 2;
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal.into()));
        }
        // Parsed records are kept (cached) for long: no spare capacity.
        tokens.shrink_to_fit();
        Ok(Self { tokens })
    }

    /// A macro string that is only literal text (no validation: used for
    /// names the receiver configures, never for published records).
    pub fn literal(text: &str) -> Self {
        Self {
            tokens: vec![Token::Literal(text.into())],
        }
    }

    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// True when the string contains `%{...}` macros (escapes do not count).
    pub fn has_macros(&self) -> bool {
        self.tokens.iter().any(|t| matches!(t, Token::Macro(_)))
    }

    /// True when the macro `letter` occurs: `%{p}` needs a PTR validation
    /// and `%{t}` the clock before expanding.
    pub fn uses(&self, letter: MacroLetter) -> bool {
        self.tokens
            .iter()
            .any(|t| matches!(t, Token::Macro(m) if m.letter == letter))
    }

    /// The string itself when it has no macros or escapes at all.
    pub fn as_literal(&self) -> Option<&str> {
        match self.tokens.as_slice() {
            [Token::Literal(l)] => Some(l),
            [] => Some(""),
            _ => None,
        }
    }

    /// Expands the string (RFC 7208 §7.3).
    pub fn expand(&self, ctx: &MacroContext<'_>) -> String {
        let mut out = String::new();
        for token in &self.tokens {
            match token {
                Token::Literal(l) => out.push_str(l),
                Token::Escape(e) => out.push_str(e),
                Token::Macro(m) => expand_one(m, ctx, &mut out),
            }
        }
        out
    }
}

impl fmt::Display for MacroString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for token in &self.tokens {
            match token {
                Token::Literal(l) => f.write_str(l)?,
                Token::Escape("%") => f.write_str("%%")?,
                Token::Escape(" ") => f.write_str("%_")?,
                Token::Escape(_) => f.write_str("%-")?,
                Token::Macro(m) => {
                    let letter = if m.url_escape {
                        m.letter.as_char().to_ascii_uppercase()
                    } else {
                        m.letter.as_char()
                    };
                    write!(f, "%{{{letter}")?;
                    if let Some(keep) = m.keep {
                        write!(f, "{keep}")?;
                    }
                    if m.reverse {
                        f.write_char('r')?;
                    }
                    write!(f, "{}}}", m.delimiters)?;
                }
            }
        }
        Ok(())
    }
}

/// Parses the inside of `%{...}`: macro-letter transformers *delimiter.
fn parse_expand(body: &str, syntax: MacroSyntax, whole: &str) -> Result<MacroExpand, MacroError> {
    let mut chars = body.chars();
    let first = chars
        .next()
        .ok_or_else(|| MacroError(format!("empty macro %{{}} in {whole:?}")))?;
    let letter = MacroLetter::from_char(first)
        .ok_or_else(|| MacroError(format!("unknown macro letter {first:?} in {whole:?}")))?;
    if letter.exp_only() && syntax == MacroSyntax::Record {
        return Err(MacroError(format!(
            "macro %{{{first}}} is allowed only in explanation text (RFC 7208 §7.1), in {whole:?}"
        )));
    }
    let rest = &body[first.len_utf8()..];
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let keep = if digits_end == 0 {
        None
    } else {
        // Values beyond u32 mean "all parts", like any value above the count.
        let n = rest[..digits_end].parse::<u32>().unwrap_or(u32::MAX);
        if n == 0 {
            return Err(MacroError(format!(
                "macro transformer digit must be nonzero (RFC 7208 §7.3), in {whole:?}"
            )));
        }
        Some(n)
    };
    let mut rest = &rest[digits_end..];
    let reverse = if let Some(r) = rest.strip_prefix(['r', 'R']) {
        rest = r;
        true
    } else {
        false
    };
    if let Some(bad) = rest.chars().find(|c| !DELIMITERS.contains(*c)) {
        return Err(MacroError(format!(
            "illegal character {bad:?} in macro %{{{body}}} of {whole:?}"
        )));
    }
    Ok(MacroExpand {
        letter,
        url_escape: first.is_ascii_uppercase(),
        keep,
        reverse,
        delimiters: rest.into(),
    })
}

/// The values macros expand to, for one check_host() call.
#[derive(Debug, Clone)]
pub struct MacroContext<'a> {
    /// <sender>: `local@domain` (`postmaster@helo` for HELO checks).
    pub sender: &'a str,
    pub local_part: &'a str,
    pub sender_domain: &'a str,
    /// <domain>: the domain currently evaluated.
    pub domain: &'a str,
    pub ip: IpAddr,
    pub helo: &'a str,
    /// `r`; "unknown" when the receiver did not say.
    pub receiver: &'a str,
    /// `p`, when the string uses it; "unknown" otherwise (§7.3).
    pub validated_ptr: Option<&'a str>,
    /// `t`: seconds since the epoch.
    pub timestamp: u64,
}

fn expand_one(m: &MacroExpand, ctx: &MacroContext<'_>, out: &mut String) {
    let owned;
    let value: &str = match m.letter {
        MacroLetter::Sender => ctx.sender,
        MacroLetter::LocalPart => ctx.local_part,
        MacroLetter::SenderDomain => ctx.sender_domain,
        MacroLetter::Domain => ctx.domain,
        MacroLetter::Helo => ctx.helo,
        MacroLetter::Receiver => ctx.receiver,
        MacroLetter::ValidatedPtr => ctx.validated_ptr.unwrap_or("unknown"),
        MacroLetter::IpVersion => match ctx.ip {
            IpAddr::V4(_) => "in-addr",
            IpAddr::V6(_) => "ip6",
        },
        MacroLetter::Ip => {
            owned = dotted_ip(ctx.ip);
            &owned
        }
        MacroLetter::ClientIp => {
            // RFC 7208 §7.3: IPv6 in the RFC 5952 form, which Display gives.
            owned = ctx.ip.to_string();
            &owned
        }
        MacroLetter::Timestamp => {
            owned = ctx.timestamp.to_string();
            &owned
        }
    };

    let transformed;
    let value = if m.keep.is_none() && !m.reverse && m.delimiters.is_empty() {
        value
    } else {
        let delimiters: &str = if m.delimiters.is_empty() {
            "."
        } else {
            &m.delimiters
        };
        let mut parts: Vec<&str> = value.split(|c| delimiters.contains(c)).collect();
        if m.reverse {
            parts.reverse();
        }
        if let Some(keep) = m.keep {
            let keep = usize::try_from(keep).unwrap_or(usize::MAX);
            if keep < parts.len() {
                parts.drain(..parts.len() - keep);
            }
        }
        transformed = parts.join(".");
        &transformed
    };

    if m.url_escape {
        url_escape(value, out);
    } else {
        out.push_str(value);
    }
}

/// `i`: IPv4 dotted quad; IPv6 as 32 dot-separated nibbles (§7.3).
///
/// The nibbles are upper-case hex, as pyspf writes them and as the OpenSPF
/// suite expects in explanations (`v-macro-ip6`); the RFC's §7.4 example
/// uses lower case. DNS names are case-insensitive, so lookups are the same.
fn dotted_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(63);
            for byte in v6.octets() {
                for nibble in [byte >> 4, byte & 0x0f] {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push(
                        char::from_digit(u32::from(nibble), 16)
                            .unwrap_or('0')
                            .to_ascii_uppercase(),
                    );
                }
            }
            s
        }
    }
}

/// URL-escaping of upper-case macros (§7.3): everything outside the RFC 3986
/// "unreserved" set becomes `%XX`, upper-case hex, byte by byte.
fn url_escape(value: &str, out: &mut String) {
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example context of RFC 7208 §7.4.
    fn rfc_context(ip: &str) -> MacroContext<'static> {
        MacroContext {
            sender: "strong-bad@email.example.com",
            local_part: "strong-bad",
            sender_domain: "email.example.com",
            domain: "email.example.com",
            ip: ip.parse().unwrap(),
            helo: "mx.example.org",
            receiver: "unknown",
            validated_ptr: None,
            timestamp: 1_000_000_000,
        }
    }

    fn expand(text: &str, ip: &str) -> String {
        MacroString::parse(text, MacroSyntax::Explanation)
            .unwrap()
            .expand(&rfc_context(ip))
    }

    #[test]
    fn rfc7208_section_7_4_examples() {
        let v4 = "192.0.2.3";
        assert_eq!(expand("%{s}", v4), "strong-bad@email.example.com");
        assert_eq!(expand("%{o}", v4), "email.example.com");
        assert_eq!(expand("%{d}", v4), "email.example.com");
        assert_eq!(expand("%{d4}", v4), "email.example.com");
        assert_eq!(expand("%{d3}", v4), "email.example.com");
        assert_eq!(expand("%{d2}", v4), "example.com");
        assert_eq!(expand("%{d1}", v4), "com");
        assert_eq!(expand("%{dr}", v4), "com.example.email");
        assert_eq!(expand("%{d2r}", v4), "example.email");
        assert_eq!(expand("%{l}", v4), "strong-bad");
        assert_eq!(expand("%{l-}", v4), "strong.bad");
        assert_eq!(expand("%{lr}", v4), "strong-bad");
        assert_eq!(expand("%{lr-}", v4), "bad.strong");
        assert_eq!(expand("%{l1r-}", v4), "strong");
        assert_eq!(
            expand("%{ir}.%{v}._spf.%{d2}", v4),
            "3.2.0.192.in-addr._spf.example.com"
        );
        assert_eq!(
            expand("%{lr-}.lp._spf.%{d2}", v4),
            "bad.strong.lp._spf.example.com"
        );
        assert_eq!(
            expand("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", v4),
            "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"
        );
        assert_eq!(
            expand("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", v4),
            "3.2.0.192.in-addr.strong.lp._spf.example.com"
        );
        assert_eq!(
            expand("%{d2}.trusted-domains.example.net", v4),
            "example.com.trusted-domains.example.net"
        );
        let v6 = "2001:db8::cb01";
        assert_eq!(
            expand("%{ir}.%{v}._spf.%{d2}", v6),
            "1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2.ip6._spf.example.com"
        );
    }

    #[test]
    fn url_escaping_uses_upper_case_hex() {
        let ctx = MacroContext {
            local_part: "~jack&jill=up-a_b3.c",
            ..rfc_context("192.0.2.3")
        };
        let m = MacroString::parse("l=%{L}", MacroSyntax::Record).unwrap();
        assert_eq!(m.expand(&ctx), "l=~jack%26jill%3Dup-a_b3.c");
    }

    #[test]
    fn escapes_and_exp_only_letters() {
        assert_eq!(expand("a%%b%_c%-d", "192.0.2.3"), "a%b c%20d");
        assert_eq!(
            expand("%{c} %{r} %{t}", "2001:db8::1"),
            "2001:db8::1 unknown 1000000000"
        );
        assert!(MacroString::parse("%{c}.example.com", MacroSyntax::Record).is_err());
        assert!(MacroString::parse("%{t}", MacroSyntax::Record).is_err());
    }

    #[test]
    fn syntax_errors() {
        for bad in ["%", "%x", "%{", "%{x}", "%{d0}", "%{d2r!}", "%{}", "a b"] {
            assert!(
                MacroString::parse(bad, MacroSyntax::Record).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(MacroString::parse("%{d2r.-+,/_=}", MacroSyntax::Record).is_ok());
    }

    #[test]
    fn huge_digit_transformer_keeps_everything() {
        assert_eq!(expand("%{d99999999999}", "192.0.2.3"), "email.example.com");
    }

    #[test]
    fn display_round_trips() {
        for text in ["%{d2r-}.x%%y%_z%-", "%{L}.%{ir}.example.com"] {
            let parsed = MacroString::parse(text, MacroSyntax::Record).unwrap();
            assert_eq!(parsed.to_string(), text);
        }
    }
}
