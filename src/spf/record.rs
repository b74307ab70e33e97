//! SPF records (RFC 7208 §4.5, §4.6, §5, §6 and the ABNF of §12), parsed
//! strictly: anything the ABNF does not allow is a syntax error, which the
//! evaluator turns into `permerror` (§4.6).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use compact_str::CompactString;
use ipnet::{Ipv4Net, Ipv6Net};

use super::macros::{MacroError, MacroString, MacroSyntax, Token};
use crate::dns::cache::heap_cost;

/// A directive's qualifier (§4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

impl Qualifier {
    pub fn symbol(self) -> char {
        match self {
            Qualifier::Pass => '+',
            Qualifier::Fail => '-',
            Qualifier::SoftFail => '~',
            Qualifier::Neutral => '?',
        }
    }
}

/// CIDR prefix lengths of `a` and `mx` (§5.6 dual-cidr-length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DualCidr {
    pub v4: u8,
    pub v6: u8,
}

impl Default for DualCidr {
    fn default() -> Self {
        Self { v4: 32, v6: 128 }
    }
}

/// A domain-spec (§7.1): a macro string whose end was checked against
/// `domain-end` at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainSpec {
    macros: MacroString,
    /// For a domain-spec without macros: the name to query, prepared once
    /// at parse time (lower-case, no trailing dot, valid for DNS), so that
    /// evaluating a cached record copies nothing.
    name: Option<Box<str>>,
}

impl DomainSpec {
    pub fn macros(&self) -> &MacroString {
        &self.macros
    }

    /// The ready-to-query name of a macro-free domain-spec; `None` when the
    /// spec has macros or its literal text is not a usable DNS name.
    pub fn literal_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl DomainSpec {
    /// Heap bytes owned (see [`Record::heap_size`]).
    pub fn heap_size(&self) -> usize {
        self.macros.heap_size() + self.name.as_ref().map_or(0, |n| heap_cost(n.len()))
    }
}

impl fmt::Display for DomainSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.macros.fmt(f)
    }
}

/// A mechanism (§5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mechanism {
    All,
    Include(DomainSpec),
    A(Option<DomainSpec>, DualCidr),
    Mx(Option<DomainSpec>, DualCidr),
    Ptr(Option<DomainSpec>),
    Ip4(Ipv4Net),
    Ip6(Ipv6Net),
    Exists(DomainSpec),
}

impl Mechanism {
    /// Heap bytes owned (see [`Record::heap_size`]).
    pub fn heap_size(&self) -> usize {
        match self {
            Mechanism::Include(spec) | Mechanism::Exists(spec) => spec.heap_size(),
            Mechanism::A(spec, _) | Mechanism::Mx(spec, _) | Mechanism::Ptr(spec) => {
                spec.as_ref().map_or(0, DomainSpec::heap_size)
            }
            Mechanism::All | Mechanism::Ip4(_) | Mechanism::Ip6(_) => 0,
        }
    }

    /// §4.6.4: the terms that cause DNS queries and count against the limit
    /// of 10 (`redirect` is counted by the evaluator too).
    pub fn queries_dns(&self) -> bool {
        matches!(
            self,
            Mechanism::Include(_)
                | Mechanism::A(..)
                | Mechanism::Mx(..)
                | Mechanism::Ptr(_)
                | Mechanism::Exists(_)
        )
    }
}

/// A directive: qualifier and mechanism, plus the mechanism as written, for
/// Received-SPF's `mechanism=` and the trace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Directive {
    pub qualifier: Qualifier,
    pub mechanism: Mechanism,
    /// The qualifier symbol (`+` when implicit) and the mechanism's text as
    /// published: what Received-SPF's `mechanism=` shows. Built once at
    /// parse time, so a match costs a copy (inline up to 24 bytes), not a
    /// formatting.
    shown: CompactString,
}

impl Directive {
    pub fn new(qualifier: Qualifier, mechanism: Mechanism, text: &str) -> Self {
        let mut shown = CompactString::with_capacity(1 + text.len());
        shown.push(qualifier.symbol());
        shown.push_str(text);
        Self {
            qualifier,
            mechanism,
            shown,
        }
    }

    /// Heap bytes owned (see [`Record::heap_size`]).
    pub fn heap_size(&self) -> usize {
        let shown = if self.shown.is_heap_allocated() {
            heap_cost(self.shown.capacity())
        } else {
            0
        };
        shown + self.mechanism.heap_size()
    }

    /// The mechanism's text as published, without the qualifier.
    pub fn text(&self) -> &str {
        // The qualifier symbol is one ASCII byte.
        &self.shown[1..]
    }

    /// The directive with its qualifier always shown (`+` when implicit).
    pub fn shown(&self) -> &CompactString {
        &self.shown
    }
}

impl fmt::Display for Directive {
    /// The directive with its qualifier always shown (`+` when implicit).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// A parsed `v=spf1` record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Record {
    pub directives: Vec<Directive>,
    /// `redirect=` (§6.1), at most once.
    pub redirect: Option<DomainSpec>,
    /// `exp=` (§6.2), at most once.
    pub exp: Option<DomainSpec>,
}

/// Why a record could not be parsed: becomes the `problem=` of a permerror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError(pub String);

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<MacroError> for SyntaxError {
    fn from(e: MacroError) -> Self {
        SyntaxError(e.0)
    }
}

/// True if a TXT record is an SPF version 1 record: it begins with exactly
/// `v=spf1` followed by a space or the end (§4.5). ABNF literals are
/// case-insensitive (RFC 5234 §2.3).
pub fn is_spf1(txt: &[u8]) -> bool {
    txt.len() >= 6 && txt[..6].eq_ignore_ascii_case(b"v=spf1") && (txt.len() == 6 || txt[6] == b' ')
}

impl Record {
    /// The heap bytes this record owns (not the `Record` itself), each
    /// allocation weighed as the allocator takes it ([`heap_cost`]): what
    /// a cache keeping the record counts against its byte budget.
    pub fn heap_size(&self) -> usize {
        heap_cost(self.directives.capacity() * size_of::<Directive>())
            + self
                .directives
                .iter()
                .map(Directive::heap_size)
                .sum::<usize>()
            + self.redirect.as_ref().map_or(0, DomainSpec::heap_size)
            + self.exp.as_ref().map_or(0, DomainSpec::heap_size)
    }

    /// Parses a TXT record already known to satisfy [`is_spf1`].
    pub fn parse(txt: &[u8]) -> Result<Self, SyntaxError> {
        // §3.1 / §4.5: records are 7-bit ASCII. Not valid text is refused
        // with a readable description of the offending byte.
        if let Some(pos) = txt.iter().position(|b| !b.is_ascii()) {
            return Err(SyntaxError(format!(
                "non-ASCII byte 0x{:02X} at offset {pos} of the record",
                txt[pos]
            )));
        }
        let text = std::str::from_utf8(txt).map_err(|e| SyntaxError(e.to_string()))?;
        if !is_spf1(txt) {
            return Err(SyntaxError("record does not start with v=spf1".into()));
        }
        let mut record = Record::default();
        // record = version terms *SP ; terms = *( 1*SP ( directive / modifier ) )
        // Splitting on SP only: any other whitespace or control character
        // stays inside a term and fails its syntax (§4.6.1).
        for term in text[6..].split(' ').filter(|t| !t.is_empty()) {
            record.parse_term(term)?;
        }
        // Records are kept (cached) for long: no spare capacity.
        record.directives.shrink_to_fit();
        Ok(record)
    }

    fn parse_term(&mut self, term: &str) -> Result<(), SyntaxError> {
        // A modifier is name "=" ...; a name starts with ALPHA and has no
        // ':' or '/', so "a:x=y" is a mechanism and "foo=bar" a modifier.
        let name_end = term
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .unwrap_or(term.len());
        if term.as_bytes().get(name_end) == Some(&b'=') && name_end > 0 {
            return self.parse_modifier(&term[..name_end], &term[name_end + 1..]);
        }
        let (qualifier, mech) = match term.as_bytes()[0] {
            b'+' => (Qualifier::Pass, &term[1..]),
            b'-' => (Qualifier::Fail, &term[1..]),
            b'~' => (Qualifier::SoftFail, &term[1..]),
            b'?' => (Qualifier::Neutral, &term[1..]),
            _ => (Qualifier::Pass, term),
        };
        let mechanism = parse_mechanism(mech)?;
        self.directives
            .push(Directive::new(qualifier, mechanism, mech));
        Ok(())
    }

    fn parse_modifier(&mut self, name: &str, value: &str) -> Result<(), SyntaxError> {
        if !name.as_bytes()[0].is_ascii_alphabetic() {
            return Err(SyntaxError(format!("invalid modifier name {name:?}")));
        }
        if name.eq_ignore_ascii_case("redirect") || name.eq_ignore_ascii_case("exp") {
            let slot = if name.eq_ignore_ascii_case("redirect") {
                &mut self.redirect
            } else {
                &mut self.exp
            };
            if slot.is_some() {
                // §6: these modifiers MUST NOT appear more than once.
                return Err(SyntaxError(format!(
                    "{} modifier appears more than once",
                    name.to_ascii_lowercase()
                )));
            }
            *slot = Some(parse_domain_spec(value)?);
        } else {
            // §6: unknown modifiers are ignored, but must still be syntactically
            // valid macro strings (§12 unknown-modifier = name "=" macro-string).
            MacroString::parse(value, MacroSyntax::Record)?;
        }
        Ok(())
    }
}

fn parse_mechanism(text: &str) -> Result<Mechanism, SyntaxError> {
    let name_end = text.find([':', '/']).unwrap_or(text.len());
    let name = &text[..name_end];
    let rest = &text[name_end..];
    let lower = name.to_ascii_lowercase();
    let bad = || SyntaxError(format!("invalid mechanism {text:?}"));
    match lower.as_str() {
        "all" if rest.is_empty() => Ok(Mechanism::All),
        "include" => Ok(Mechanism::Include(required_domain(text, rest)?)),
        "exists" => Ok(Mechanism::Exists(required_domain(text, rest)?)),
        "a" | "mx" => {
            let (spec, cidr) = split_dual_cidr(rest).ok_or_else(bad)?;
            let domain = optional_domain(text, spec)?;
            Ok(if lower == "a" {
                Mechanism::A(domain, cidr)
            } else {
                Mechanism::Mx(domain, cidr)
            })
        }
        "ptr" => Ok(Mechanism::Ptr(optional_domain(text, rest)?)),
        "ip4" => {
            let body = rest.strip_prefix(':').ok_or_else(bad)?;
            let (addr, len) = match body.split_once('/') {
                Some((addr, len)) => (addr, parse_cidr_len(len, 32).ok_or_else(bad)?),
                None => (body, 32),
            };
            let addr = parse_ip4_network(addr).ok_or_else(bad)?;
            Ipv4Net::new(addr, len)
                .map(Mechanism::Ip4)
                .map_err(|_| bad())
        }
        "ip6" => {
            let body = rest.strip_prefix(':').ok_or_else(bad)?;
            let (addr, len) = match body.rsplit_once('/') {
                Some((addr, len)) => (addr, parse_cidr_len(len, 128).ok_or_else(bad)?),
                None => (body, 128),
            };
            // ip6-network = <as per RFC 4291 §2.2>; Rust's parser accepts
            // exactly those forms (including embedded IPv4), no zone ids.
            let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
            Ipv6Net::new(addr, len)
                .map(Mechanism::Ip6)
                .map_err(|_| bad())
        }
        _ => Err(SyntaxError(format!("unknown mechanism {text:?}"))),
    }
}

/// `:` domain-spec, required (include, exists).
fn required_domain(term: &str, rest: &str) -> Result<DomainSpec, SyntaxError> {
    match rest.strip_prefix(':') {
        Some(spec) => parse_domain_spec(spec),
        None => Err(SyntaxError(format!("{term:?} needs a domain"))),
    }
}

/// [ ":" domain-spec ] (a, mx, ptr).
fn optional_domain(term: &str, rest: &str) -> Result<Option<DomainSpec>, SyntaxError> {
    if rest.is_empty() {
        return Ok(None);
    }
    match rest.strip_prefix(':') {
        Some(spec) => parse_domain_spec(spec).map(Some),
        None => Err(SyntaxError(format!("invalid mechanism {term:?}"))),
    }
}

/// Splits `[":" domain-spec] [ip4-cidr-length] ["/" ip6-cidr-length]` at the
/// CIDR suffix. A domain-spec may itself contain '/', so the suffix is
/// recognised from the right: `/N`, `//N` or `/N//M`, digits only.
fn split_dual_cidr(rest: &str) -> Option<(&str, DualCidr)> {
    let mut cidr = DualCidr::default();
    let mut spec = rest;
    if let Some((before, digits)) = spec.rsplit_once("//")
        && is_digits(digits)
    {
        cidr.v6 = parse_cidr_len(digits, 128)?;
        spec = before;
    }
    if let Some((before, digits)) = spec.rsplit_once('/')
        && is_digits(digits)
    {
        cidr.v4 = parse_cidr_len(digits, 32)?;
        spec = before;
    }
    Some((spec, cidr))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// ip4-cidr-length / ip6-cidr-length: "0" or a number without leading zero,
/// within range. Out-of-range lengths are errors, never clamped (§5.6).
fn parse_cidr_len(digits: &str, max: u8) -> Option<u8> {
    if !is_digits(digits) || (digits.len() > 1 && digits.starts_with('0')) || digits.len() > 3 {
        return None;
    }
    digits.parse::<u8>().ok().filter(|n| *n <= max)
}

/// ip4-network = qnum "." qnum "." qnum "." qnum, qnum without leading zeros.
fn parse_ip4_network(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if !is_digits(part) || part.len() > 3 || (part.len() > 1 && part.starts_with('0')) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// domain-spec = macro-string domain-end;
/// domain-end = ( "." toplabel [ "." ] ) / macro-expand (§7.1).
pub fn parse_domain_spec(text: &str) -> Result<DomainSpec, SyntaxError> {
    let spec = MacroString::parse(text, MacroSyntax::Record)?;
    let ends_ok = match spec.tokens().last() {
        None => false,
        Some(Token::Macro(_) | Token::Escape(_)) => true,
        Some(Token::Literal(lit)) => {
            let lit = lit.strip_suffix('.').unwrap_or(lit);
            match lit.rsplit_once('.') {
                Some((_, top)) => is_toplabel(top),
                // The dot may sit right after a macro: "%{d}.com".
                None => false,
            }
        }
    };
    if ends_ok {
        let name = spec
            .as_literal()
            .and_then(super::identity::query_name)
            .map(|n| n.to_ascii_lowercase().into_boxed_str());
        Ok(DomainSpec { macros: spec, name })
    } else {
        Err(SyntaxError(format!(
            "invalid domain {text:?}: it must end in a dot and a top-level label, or a macro"
        )))
    }
}

/// toplabel = ( *alphanum ALPHA *alphanum ) /
///            ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
/// i.e. letters, digits and inner hyphens, not all digits (RFC 3696 §2).
pub fn is_toplabel(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !b.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Record, SyntaxError> {
        Record::parse(s.as_bytes())
    }

    #[test]
    fn recognises_spf1_records() {
        assert!(is_spf1(b"v=spf1"));
        assert!(is_spf1(b"v=spf1 -all"));
        assert!(is_spf1(b"V=SPF1 -all"));
        assert!(!is_spf1(b"v=spf10 -all"));
        assert!(!is_spf1(b"v=spf1-all"));
        assert!(!is_spf1(b"spf2.0/pra -all"));
    }

    #[test]
    fn parses_every_mechanism() {
        let r = parse(
            "v=spf1 +all -include:_spf.example.com ~a ?a:mail.example.com/24//64 mx/30 \
             ptr ptr:example.org ip4:192.0.2.0/24 ip6:2001:db8::/32 exists:%{i}.bl.example.com",
        )
        .unwrap();
        assert_eq!(r.directives.len(), 10);
        assert_eq!(r.directives[0].mechanism, Mechanism::All);
        assert_eq!(r.directives[1].qualifier, Qualifier::Fail);
        assert_eq!(
            r.directives[3].mechanism,
            Mechanism::A(
                Some(parse_domain_spec("mail.example.com").unwrap()),
                DualCidr { v4: 24, v6: 64 }
            )
        );
        assert_eq!(
            r.directives[4].mechanism,
            Mechanism::Mx(None, DualCidr { v4: 30, v6: 128 })
        );
        assert_eq!(
            r.directives[7].mechanism,
            Mechanism::Ip4("192.0.2.0/24".parse().unwrap())
        );
        assert_eq!(r.directives[3].to_string(), "?a:mail.example.com/24//64");
        assert_eq!(r.directives[2].to_string(), "~a");
    }

    #[test]
    fn modifiers() {
        let r = parse("v=spf1 redirect=_spf.example.com exp=exp.%{d} foo=bar-%{l}").unwrap();
        assert!(r.redirect.is_some() && r.exp.is_some());
        assert!(parse("v=spf1 redirect=a.example redirect=b.example").is_err());
        assert!(parse("v=spf1 exp=a.example exp=b.example").is_err());
        assert!(parse("v=spf1 foo=%x").is_err());
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in [
            "v=spf1 ip4:192.0.2.0/33",
            "v=spf1 ip4:192.0.2.0/024",
            "v=spf1 ip4:192.0.02.0",
            "v=spf1 ip4:192.0.2",
            "v=spf1 ip6:2001:db8::/129",
            "v=spf1 a/33",
            "v=spf1 a//129",
            "v=spf1 a:example.com/",
            "v=spf1 a:museum",
            "v=spf1 a:111.222.33.44",
            "v=spf1 a:foo.example-",
            "v=spf1 all:foo",
            "v=spf1 all/8",
            "v=spf1 include",
            "v=spf1 include:",
            "v=spf1 exists:",
            "v=spf1 frobnicate",
            "v=spf1 -",
            "v=spf1 ip4:192.0.2.1\n",
            "v=spf1 a:%{c}.example.com",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be a syntax error");
        }
    }

    #[test]
    fn rejects_non_ascii() {
        assert!(Record::parse(b"v=spf1 a:\xef\xbb\xbfgarbage.example.net -all").is_err());
    }

    #[test]
    fn accepts_edge_syntax() {
        for good in [
            "v=spf1",
            "v=spf1 ",
            "v=spf1  -all ",
            "v=spf1 a:example.com.",
            "v=spf1 a:%{d}",
            "v=spf1 ip4:0.0.0.0/0 ip6:::/0",
            "v=spf1 ip6:::ffff:192.0.2.1",
            "v=spf1 mx:example.com//0",
            "V=SPF1 ALL",
        ] {
            assert!(parse(good).is_ok(), "{good:?} should parse");
        }
    }
}
