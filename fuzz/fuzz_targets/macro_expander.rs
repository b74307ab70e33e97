//! Fuzzes the macro-string parser and expander (RFC 7208 §7) and the name
//! checks applied to expansions (`query_name`, `validate_domain`).
//!
//! Input format (one field per line, so that seeds are readable text):
//!
//! ```text
//! line 1   the macro string (parsed as Record and as Explanation syntax)
//! line 2   <sender>            (%{s})
//! line 3   local part          (%{l})
//! line 4   sender domain       (%{o})
//! line 5   <domain>            (%{d})
//! line 6   HELO name           (%{h})
//! line 7   receiver            (%{r})
//! line 8   validated PTR name  (%{p}); absent means None
//! line 9   client IP           (%{i} %{c} %{v}): an address, or else the
//!                              line's bytes make one (<= 4 bytes: IPv4,
//!                              more: IPv6)
//! line 10+ timestamp           (%{t}): a number, or else the bytes make one
//! ```
//!
//! Missing lines take the values of the RFC 7208 §7.4 example. Bytes that
//! are not UTF-8 are replaced (U+FFFD), which still exercises the
//! non-ASCII paths.
//!
//! Invariants checked besides "no panic":
//! - a string valid in a record is valid, and the same, as explanation text;
//! - `Display` re-parses to an equal value (both syntaxes);
//! - `parse_domain_spec` accepts only strings the macro parser accepts;
//! - a string without macros expands the same whatever the context, and a
//!   pure literal expands to itself;
//! - an ASCII context gives an ASCII expansion;
//! - `query_name` returns an ASCII name of at most 253 characters, made of
//!   labels of 1 to 63 characters, that is a suffix of the expansion;
//! - `validate_domain` returns a lower-case multi-label name of at most 253
//!   characters, which `validate_domain` and `query_name` accept again.

#![no_main]

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use spfmilter::spf::identity::{SenderParts, canonical_ip, query_name, validate_domain};
use spfmilter::spf::macros::{MacroContext, MacroLetter, MacroString, MacroSyntax};
use spfmilter::spf::record::parse_domain_spec;

/// The context of the examples of RFC 7208 §7.4.
fn rfc_context() -> MacroContext<'static> {
    MacroContext {
        sender: "strong-bad@email.example.com",
        local_part: "strong-bad",
        sender_domain: "email.example.com",
        domain: "email.example.com",
        ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)),
        helo: "mx.example.org",
        receiver: "unknown",
        validated_ptr: None,
        timestamp: 1_000_000_000,
    }
}

fn ip_from(field: &[u8]) -> IpAddr {
    if let Ok(ip) = std::str::from_utf8(field).unwrap_or("").parse::<IpAddr>() {
        return ip;
    }
    if field.len() <= 4 {
        let mut octets = [0u8; 4];
        octets[..field.len()].copy_from_slice(field);
        IpAddr::V4(Ipv4Addr::from(octets))
    } else {
        let mut octets = [0u8; 16];
        let n = field.len().min(16);
        octets[..n].copy_from_slice(&field[..n]);
        IpAddr::V6(Ipv6Addr::from(octets))
    }
}

fn timestamp_from(field: &[u8]) -> u64 {
    if let Some(t) = std::str::from_utf8(field).ok().and_then(|s| s.parse().ok()) {
        return t;
    }
    let mut bytes = [0u8; 8];
    let n = field.len().min(8);
    bytes[..n].copy_from_slice(&field[..n]);
    u64::from_le_bytes(bytes)
}

fn check_syntax(text: &str, syntax: MacroSyntax) -> Option<MacroString> {
    let parsed = MacroString::parse(text, syntax).ok()?;
    let shown = parsed.to_string();
    match MacroString::parse(&shown, syntax) {
        Ok(again) => assert_eq!(again, parsed, "{syntax:?}: {text:?} shown as {shown:?}"),
        Err(e) => panic!("{syntax:?}: {text:?} shown as {shown:?}, which does not parse: {e}"),
    }
    // Never panic.
    let _ = (
        parsed.has_macros(),
        parsed.uses(MacroLetter::ValidatedPtr),
        parsed.tokens().len(),
    );
    Some(parsed)
}

fn check_expansion(parsed: &MacroString, ctx: &MacroContext<'_>, ascii_ctx: bool) {
    let expanded = parsed.expand(ctx);
    if ascii_ctx {
        assert!(expanded.is_ascii(), "non-ASCII expansion {expanded:?}");
    }
    if !parsed.has_macros() {
        assert_eq!(
            expanded,
            parsed.expand(&rfc_context()),
            "escapes depend on the context"
        );
    }
    if let Some(literal) = parsed.as_literal() {
        assert_eq!(expanded, literal);
    }

    let trimmed = expanded.strip_suffix('.').unwrap_or(&expanded);
    if let Some(name) = query_name(&expanded) {
        assert!(name.len() <= 253, "query name too long: {name:?}");
        assert!(name.is_ascii());
        assert!(
            name.split('.').all(|l| !l.is_empty() && l.len() <= 63),
            "bad label in {name:?}"
        );
        assert!(
            trimmed.ends_with(&name),
            "{name:?} is not a suffix of {expanded:?}"
        );
        let _ = validate_domain(&name);
    }
    if let Ok(name) = validate_domain(&expanded) {
        assert!(name.len() <= 253, "valid domain too long: {name:?}");
        assert_eq!(name, name.to_ascii_lowercase());
        assert!(name.split('.').count() >= 2, "{name:?} is single-label");
        assert!(trimmed.eq_ignore_ascii_case(&name));
        assert_eq!(
            validate_domain(&name).as_deref(),
            Ok(&*name),
            "not idempotent"
        );
        assert_eq!(
            query_name(&name).as_deref(),
            Some(&*name),
            "query_name refuses {name:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.splitn(10, |b| *b == b'\n').collect();
    let field =
        |i: usize| -> Option<Cow<'_, str>> { lines.get(i).map(|l| String::from_utf8_lossy(l)) };
    let text = field(0).unwrap_or_default();
    let defaults = rfc_context();
    let sender = field(1);
    let local_part = field(2);
    let sender_domain = field(3);
    let domain = field(4);
    let helo = field(5);
    let receiver = field(6);
    let validated_ptr = field(7);
    let ctx = MacroContext {
        sender: sender.as_deref().unwrap_or(defaults.sender),
        local_part: local_part.as_deref().unwrap_or(defaults.local_part),
        sender_domain: sender_domain.as_deref().unwrap_or(defaults.sender_domain),
        domain: domain.as_deref().unwrap_or(defaults.domain),
        helo: helo.as_deref().unwrap_or(defaults.helo),
        receiver: receiver.as_deref().unwrap_or(defaults.receiver),
        validated_ptr: validated_ptr.as_deref(),
        ip: lines.get(8).map_or(defaults.ip, |l| ip_from(l)),
        timestamp: lines
            .get(9)
            .map_or(defaults.timestamp, |l| timestamp_from(l)),
    };
    let ascii_ctx = [
        ctx.sender,
        ctx.local_part,
        ctx.sender_domain,
        ctx.domain,
        ctx.helo,
        ctx.receiver,
        ctx.validated_ptr.unwrap_or(""),
    ]
    .iter()
    .all(|s| s.is_ascii());

    let record = check_syntax(&text, MacroSyntax::Record);
    let explanation = check_syntax(&text, MacroSyntax::Explanation);
    if let Some(record) = &record {
        assert_eq!(
            Some(record),
            explanation.as_ref(),
            "valid in a record but not the same as explanation: {text:?}"
        );
    }
    if let Ok(spec) = parse_domain_spec(&text) {
        assert_eq!(Some(spec.macros()), record.as_ref(), "domain-spec {text:?}");
        if let Some(name) = spec.literal_name() {
            assert_eq!(
                spfmilter::spf::identity::query_name(&text)
                    .map(|n| n.to_ascii_lowercase())
                    .as_deref(),
                Some(name),
                "literal name of {text:?}"
            );
        }
    }
    for parsed in record.iter().chain(explanation.iter()) {
        check_expansion(parsed, &ctx, ascii_ctx);
    }

    // The identities the context is normally built from.
    let parts = SenderParts::for_mail_from(ctx.sender, ctx.helo);
    let _ = validate_domain(parts.domain());
    let helo_parts = SenderParts::for_helo(ctx.helo);
    let _ = validate_domain(helo_parts.domain());
    let ip = canonical_ip(ctx.ip);
    if let IpAddr::V6(v6) = ctx.ip {
        assert_eq!(ip.is_ipv4(), v6.to_ipv4_mapped().is_some());
    }
});
