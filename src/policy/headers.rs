//! Trace header text: Received-SPF (RFC 7208 §9.1) and
//! Authentication-Results (RFC 8601), and recognising such headers when
//! they arrive forged. Pure formatting; the milter decides where headers go.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::{HeaderType, is_token_char};
use crate::spf::{Identity, SpfOutcome, SpfResult};

use super::decide::UNKNOWN_RECEIVER;
use super::envelope::Envelope;
use super::skip::{SkipReason, x_comment_value};

/// The comment policyd-spf writes for each result (docs/policyd-spf-compatibility.md §4), used when the
/// outcome carries no explanation or problem of its own.
pub fn result_comment(outcome: &SpfOutcome) -> Cow<'_, str> {
    match outcome.result {
        SpfResult::Pass => Cow::Borrowed("sender SPF authorized"),
        SpfResult::Fail => Cow::Borrowed(
            outcome
                .explanation
                .as_deref()
                .unwrap_or("SPF fail - not authorized"),
        ),
        SpfResult::SoftFail => Cow::Borrowed("domain owner discourages use of this host"),
        SpfResult::Neutral => Cow::Borrowed("access neither permitted nor denied"),
        SpfResult::None => Cow::Borrowed("no SPF record"),
        SpfResult::PermError => Cow::Owned(format!(
            "SPF Permanent Error: {}",
            outcome.problem.as_deref().unwrap_or("unknown")
        )),
        SpfResult::TempError => Cow::Owned(format!(
            "SPF Temporary Error: {}",
            outcome.problem.as_deref().unwrap_or("unknown")
        )),
    }
}

/// At most this many bytes of an envelope value (HELO name, sender,
/// receiver, domain) go into a trace header. RFC 5321 §4.5.3.1 allows 255
/// for a domain and 256 for a path, so only invalid values are cut; a
/// value without spaces cannot be folded, and a longer one would break
/// RFC 5322's 998-octet line limit (§2.1.1).
pub const MAX_TRACE_VALUE: usize = 256;

/// `value`, cut to [`MAX_TRACE_VALUE`] bytes (at a character boundary)
/// with `...` to show the cut.
fn truncated(value: &str) -> Cow<'_, str> {
    if value.len() <= MAX_TRACE_VALUE {
        return value.into();
    }
    let mut end = MAX_TRACE_VALUE;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &value[..end]).into()
}

/// What a trace header says of the transaction besides the result: the
/// address evaluated (the client's, or `Prospective`), the envelope's HELO
/// name and sender, and the receiver ([`header_receiver`]), each value
/// [`truncated`].
struct TraceFields<'a> {
    client_ip: IpAddr,
    helo: Cow<'a, str>,
    /// MAIL FROM without brackets; empty for `<>`.
    envelope_from: Cow<'a, str>,
    receiver: Cow<'a, str>,
}

impl<'a> TraceFields<'a> {
    fn of(envelope: &'a Envelope, client_ip: IpAddr, receiver: &'a str) -> Self {
        Self {
            client_ip,
            helo: truncated(&envelope.helo),
            envelope_from: truncated(&envelope.sender),
            receiver: truncated(receiver),
        }
    }
}

/// The value of a Received-SPF header field (everything after
/// `Received-SPF:`), unfolded:
/// `pass (comment) identity=mailfrom; client-ip=…; helo=…; envelope-from=…;
/// receiver=…; mechanism=…` (or `problem=…` for errors). `client_ip` is
/// the address evaluated, `receiver` what [`header_receiver`] gives.
pub fn received_spf_value(
    outcome: &SpfOutcome,
    envelope: &Envelope,
    client_ip: IpAddr,
    receiver: &str,
) -> String {
    let tx = &TraceFields::of(envelope, client_ip, receiver);
    let mut v = String::with_capacity(200);
    v.push_str(outcome.result.capitalized());
    v.push_str(" (");
    push_comment(&mut v, &result_comment(outcome));
    v.push_str(") identity=");
    v.push_str(outcome.identity.as_str());
    v.push_str("; client-ip=");
    push_ip(&mut v, tx.client_ip);
    v.push_str("; helo=");
    push_value(&mut v, &tx.helo);
    v.push_str("; envelope-from=");
    if tx.envelope_from.is_empty() {
        v.push_str("<>");
    } else {
        push_value(&mut v, &tx.envelope_from);
    }
    v.push_str("; receiver=");
    push_value(&mut v, &tx.receiver);
    match (&outcome.problem, &outcome.mechanism) {
        (Some(problem), _) => {
            v.push_str("; problem=");
            push_quoted(&mut v, problem);
        }
        (None, Some(mechanism)) => {
            v.push_str("; mechanism=");
            push_value(&mut v, mechanism);
        }
        (None, None) => {}
    }
    v
}

/// The value of an Authentication-Results header field for one SPF result
/// (RFC 8601 §2.2, §2.7.2):
/// `authserv-id; spf=pass (comment) smtp.mailfrom=example.com (client-ip=…;
/// helo=…; envelope-from=…; receiver=…)`.
///
/// `smtp.mailfrom` carries the **domain only**: OpenDMARC ignores the
/// property when it holds a whole address (docs/dmarc-safety.md), and DMARC
/// aligns on the domain anyway. A HELO result is reported as `smtp.helo`.
pub fn authentication_results_value(
    authserv_id: &str,
    outcome: &SpfOutcome,
    envelope: &Envelope,
    client_ip: IpAddr,
    receiver: &str,
) -> String {
    let tx = &TraceFields::of(envelope, client_ip, receiver);
    let domain = truncated(&outcome.domain);
    let mut v = String::with_capacity(200);
    push_token_or_quoted(&mut v, authserv_id);
    v.push_str("; spf=");
    v.push_str(outcome.result.as_str());
    v.push_str(" (");
    push_comment(&mut v, &result_comment(outcome));
    v.push_str(") ");
    match outcome.identity {
        Identity::MailFrom => {
            v.push_str("smtp.mailfrom=");
            push_token_or_quoted(&mut v, &domain);
        }
        Identity::Helo => {
            v.push_str("smtp.helo=");
            push_token_or_quoted(&mut v, &domain);
        }
    }
    v.push_str(" (");
    let envelope_from = if tx.envelope_from.is_empty() {
        "<>"
    } else {
        &tx.envelope_from
    };
    // The reference's text; each value sanitized as a word.
    let _ = write!(
        v,
        "client-ip={}; helo={}; envelope-from={}; receiver={}",
        tx.client_ip,
        sanitized::<WORD>(&tx.helo),
        sanitized::<WORD>(envelope_from),
        sanitized::<WORD>(&tx.receiver)
    );
    v.push(')');
    v
}

/// The receiver written into headers and `Reason_URL`: with `Hide_Receiver`
/// `<UNKNOWN>` (policyd-spf's word), else the first recipient's domain, or
/// `<UNKNOWN>` when there is none.
pub fn header_receiver(hide_receiver: bool, first_recipient: Option<&str>) -> &str {
    const UNKNOWN: &str = UNKNOWN_RECEIVER;
    if hide_receiver {
        return UNKNOWN;
    }
    match first_recipient.map(|r| r.trim_matches(['<', '>'])) {
        Some(rcpt) => match rcpt.rsplit_once('@') {
            Some((_, domain)) if !domain.is_empty() => domain,
            _ => UNKNOWN,
        },
        None => UNKNOWN,
    }
}

/// The trace headers of an SPF result as `Header_Type` asks, top first,
/// each value folded for the milter protocol (LF + TAB); none with
/// `Header_Type = None`. `client_ip` and `receiver` as for
/// [`received_spf_value`].
pub fn spf_headers(
    header_type: HeaderType,
    authserv_id: &str,
    outcome: &SpfOutcome,
    envelope: &Envelope,
    client_ip: IpAddr,
    receiver: &str,
) -> Vec<(&'static str, String)> {
    let mut headers = Vec::with_capacity(2);
    if header_type.received_spf() {
        let value = received_spf_value(outcome, envelope, client_ip, receiver);
        headers.push(("Received-SPF", fold("Received-SPF", &value, 78)));
    }
    if header_type.authentication_results() {
        let value =
            authentication_results_value(authserv_id, outcome, envelope, client_ip, receiver);
        headers.push((
            "Authentication-Results",
            fold("Authentication-Results", &value, 78),
        ));
    }
    headers
}

/// The trace header of a session the bypass chain skipped (docs/policyd-spf-compatibility.md §4):
/// `X-Comment: <comment> - client-ip=…` with `Received-SPF` headers, and
/// `Authentication-Results: <id>; none (<comment> - client-ip=…)` with
/// Authentication-Results. `client_ip` is the client's address,
/// `receiver` what [`header_receiver`] gives.
pub fn skip_headers(
    header_type: HeaderType,
    authserv_id: &str,
    reason: SkipReason,
    envelope: &Envelope,
    client_ip: IpAddr,
    receiver: &str,
) -> Vec<(&'static str, String)> {
    let tx = TraceFields::of(envelope, client_ip, receiver);
    let comment = x_comment_value(
        reason,
        tx.client_ip,
        &tx.helo,
        &tx.envelope_from,
        &tx.receiver,
    );
    let mut headers = Vec::with_capacity(2);
    if header_type.received_spf() {
        headers.push(("X-Comment", fold("X-Comment", &comment, 78)));
    }
    if header_type.authentication_results() {
        let mut value = String::with_capacity(comment.len() + authserv_id.len() + 10);
        push_token_or_quoted(&mut value, authserv_id);
        value.push_str("; none (");
        // x_comment_value sanitized its values; the rest is the reference's
        // text.
        value.push_str(comment.trim_end());
        value.push(')');
        headers.push((
            "Authentication-Results",
            fold("Authentication-Results", &value, 78),
        ));
    }
    headers
}

/// Should an incoming header be deleted before ours is added? Every
/// `Received-SPF` (only our own may be trusted, and OpenDMARC falls back to
/// the first one it finds) and every `Authentication-Results` that some
/// reader could take for one of ours ([`could_claim_authserv_id`]; RFC 8601
/// §5 asks border MTAs to delete those). Other sites' Authentication-Results
/// are left alone.
pub fn is_forged_trace_header(name: &str, value: &str, our_authserv_id: &str) -> bool {
    if name.eq_ignore_ascii_case("Received-SPF") {
        return true;
    }
    name.eq_ignore_ascii_case("Authentication-Results")
        && could_claim_authserv_id(value, our_authserv_id)
}

/// Whether any lenient reading of an Authentication-Results value gives our
/// authserv-id ("when in doubt, delete").
///
/// Readers disagree on where the authserv-id (RFC 8601 §2.2) starts and
/// ends: OpenDMARC 1.4.2 joins `.`-separated tokens across white space and
/// folds, drops quotes and backslashes anywhere, skips a stray `)` and
/// takes any token starting with `(` for a comment, even one that came out
/// of a quoted string; other readers drop comments, quotes or all white
/// space, or fold case. So the value is read as: optional junk, then our
/// id's characters in order (ASCII case folded) with junk allowed between
/// them, then the end of the value or a character that ends a token for
/// some reader (white space, `(`, `;`, `/`: a version, a comment, the
/// results, OpenDMARC's `AuthservIDWithJobID` form). Junk is
///
/// * white space (folds included), control characters, `"`, `\`, a `)`,
///   and a few invisible format characters (soft hyphen, zero-width
///   spaces, the byte-order mark);
/// * a comment: from a `(` to any later `)` (the first, the matching one,
///   or any other: readers disagree on nesting and on escapes inside), or
///   up to any later white space (OpenDMARC ends a `"(x"` or `\(x` comment
///   token there).
///
/// A `;` inside a comment does not end the authserv-id; one outside does.
/// Characters are folded to ASCII before the comparison (full-width forms,
/// the Kelvin sign, the long s and the dotted and dotless i, as Unicode-aware
/// readers fold them), and a value holding RFC 2047 encoded-words is read
/// a second time with them decoded (mail libraries decode them in any
/// field). OpenDMARC keeps at most 256 characters of an authserv-id: an id
/// that long matches whatever follows it.
///
/// This over-approximates on purpose: a header whose first comment ends with
/// our id is deleted too. What it keeps is an ordinary header of another
/// authserv-id (`mx.google.com; …`, `mx.example.net.other; …`).
pub fn could_claim_authserv_id(value: &str, our_authserv_id: &str) -> bool {
    let id: Vec<u8> = our_authserv_id
        .chars()
        .filter_map(|c| match class_of(c) {
            Class::Char(b) => Some(b),
            _ => None,
        })
        .collect();
    if id.is_empty() {
        return false;
    }
    let matcher = IdMatcher::new(&id);
    matcher.matches(value.chars())
        || (value.contains("=?")
            && decode_encoded_words(value).is_some_and(|decoded| matcher.matches(decoded.chars())))
}

/// What a character is to [`could_claim_authserv_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// White space, a fold or a control character: junk, ends a comment
    /// token, and ends the authserv-id.
    Space,
    /// `"`, `\` or an invisible format character: junk.
    Junk,
    /// `(`: starts a comment.
    Open,
    /// `)`: ends a comment; junk outside one.
    Close,
    /// A character folded to lower-case ASCII.
    Char(u8),
    /// Anything else (non-ASCII without an ASCII folding).
    Other,
}

fn class_of(c: char) -> Class {
    match c {
        '"' | '\\' => Class::Junk,
        '(' => Class::Open,
        ')' => Class::Close,
        c if c.is_ascii_control() || c.is_whitespace() => Class::Space,
        '\u{AD}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' => Class::Junk,
        c if c.is_ascii() => Class::Char(c.to_ascii_lowercase() as u8),
        // Full-width forms of ASCII (U+FF01..U+FF5E) as NFKC maps them.
        '\u{FF01}'..='\u{FF5E}' => {
            let ascii = u32::from(c) - 0xFF01 + 0x21;
            u8::try_from(ascii).map_or(Class::Other, |b| Class::Char(b.to_ascii_lowercase()))
        }
        // Kelvin sign, long s, dotted capital I, dotless i: their Unicode
        // case foldings are ASCII letters.
        '\u{212A}' => Class::Char(b'k'),
        '\u{17F}' => Class::Char(b's'),
        '\u{130}' | '\u{131}' => Class::Char(b'i'),
        _ => Class::Other,
    }
}

/// OpenDMARC 1.4.2 keeps this many characters of an authserv-id
/// (`DMARC_MAXHOSTNAMELEN`).
const OPENDMARC_ID_LIMIT: usize = 256;

/// The reading of [`could_claim_authserv_id`] as a bit-parallel
/// nondeterministic automaton: state `j` means "the first `j` characters of
/// the id are read", outside a comment (`out`) or inside one (`inside`).
/// Linear in the value's length; it stops as soon as no state is left.
struct IdMatcher<'a> {
    id: &'a [u8],
    words: usize,
    /// Per ASCII character, the states `j` whose next id character it is.
    masks: Vec<u64>,
}

impl<'a> IdMatcher<'a> {
    fn new(id: &'a [u8]) -> Self {
        // States 0..=id.len().
        let words = (id.len() + 1).div_ceil(64);
        let mut masks = vec![0u64; 128 * words];
        for (j, &b) in id.iter().enumerate() {
            if let Some(word) = masks.get_mut(usize::from(b & 0x7f) * words + j / 64) {
                *word |= 1 << (j % 64);
            }
        }
        Self { id, words, masks }
    }

    fn has_end(&self, set: &[u64]) -> bool {
        let n = self.id.len();
        set.get(n / 64).is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    fn matches(&self, value: impl Iterator<Item = char>) -> bool {
        let words = self.words;
        let mut out = vec![0u64; words];
        let mut inside = vec![0u64; words];
        let mut next = vec![0u64; words];
        out[0] = 1;
        for c in value {
            let class = class_of(c);
            if self.has_end(&out) {
                let ends = matches!(
                    class,
                    Class::Space | Class::Open | Class::Char(b';') | Class::Char(b'/')
                );
                if ends || self.id.len() >= OPENDMARC_ID_LIMIT {
                    return true;
                }
            }
            next.fill(0);
            match class {
                Class::Space | Class::Close => {
                    // Junk outside a comment; a comment may end here.
                    for ((n, o), i) in next.iter_mut().zip(&out).zip(&inside) {
                        *n = o | i;
                    }
                }
                Class::Junk => next.copy_from_slice(&out),
                Class::Open => {
                    for (i, o) in inside.iter_mut().zip(&out) {
                        *i |= o;
                    }
                }
                Class::Char(b) if b < 0x80 => {
                    // next = (out & mask(b)) << 1
                    let mask = &self.masks[usize::from(b) * words..][..words];
                    let mut carry = 0;
                    for ((n, o), m) in next.iter_mut().zip(&out).zip(mask) {
                        let advanced = o & m;
                        *n = (advanced << 1) | carry;
                        carry = advanced >> 63;
                    }
                }
                Class::Char(_) | Class::Other => {}
            }
            std::mem::swap(&mut out, &mut next);
            if out.iter().all(|&w| w == 0) && inside.iter().all(|&w| w == 0) {
                return false;
            }
        }
        self.has_end(&out)
    }
}

/// `value` with its RFC 2047 encoded-words (`=?charset?Q|B?text?=`)
/// decoded (bytes that are not UTF-8 become U+FFFD); `None` when it has
/// none.
fn decode_encoded_words(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut decoded_any = false;
    while let Some(start) = rest.find("=?") {
        out.push_str(&rest[..start]);
        let word = &rest[start + 2..];
        let parsed = word.split_once('?').and_then(|(_charset, after)| {
            let (encoding, after) = after.split_once('?')?;
            let end = after.find("?=")?;
            let text = &after[..end];
            let bytes = match encoding {
                "Q" | "q" => decode_q(text),
                "B" | "b" => decode_base64(text)?,
                _ => return None,
            };
            Some((bytes, start + 2 + word.len() - after.len() + end + 2))
        });
        match parsed {
            Some((bytes, consumed)) => {
                out.push_str(&String::from_utf8_lossy(&bytes));
                rest = &rest[consumed..];
                decoded_any = true;
            }
            None => {
                out.push_str("=?");
                rest = &rest[start + 2..];
            }
        }
    }
    out.push_str(rest);
    decoded_any.then_some(out)
}

/// RFC 2047 §4.2 "Q": `_` is a space, `=XX` a byte.
fn decode_q(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => out.push(b' '),
            b'=' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b'=');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// RFC 2047 §4.1 "B" (base64, RFC 4648 §4); padding and unknown characters
/// are skipped. `None` for text that is not base64 at all.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for b in text.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// An RFC 2045 token: what a value may be without quotes (RFC 8601 §2.2
/// `value`).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_token_char)
}

fn push_token_or_quoted(out: &mut String, value: &str) {
    if is_token(value) {
        out.push_str(value);
    } else {
        push_quoted(out, value);
    }
}

/// Writes an address in its usual text form. IPv4 by hand: `Display` for
/// `Ipv4Addr` costs more than the whole rest of the header.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// RFC 5322 atext (§3.2.3), as a table over all byte values (non-ASCII
/// bytes are not atext): this runs for every character of every header.
const ATEXT: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 128 {
        table[c] = (c as u8).is_ascii_alphanumeric();
        c += 1;
    }
    let specials = b"!#$%&'*+-/=?^_`{|}~";
    let mut i = 0;
    while i < specials.len() {
        table[specials[i] as usize] = true;
        i += 1;
    }
    table
};

/// Whether a key-value value can be written as is (RFC 7208 §9.1): a
/// dot-atom, or an address `dot-atom@dot-atom` (RFC 5322 §3.2.3, §3.4.1).
/// One pass over the bytes: every atom non-empty, one `@` at most.
fn is_plain_value(s: &str) -> bool {
    // At the start of an atom: the start, or after a dot or the `@`.
    let mut atom_start = true;
    let mut seen_at = false;
    for &b in s.as_bytes() {
        if ATEXT[usize::from(b)] {
            atom_start = false;
        } else if b == b'.' && !atom_start {
            atom_start = true;
        } else if b == b'@' && !atom_start && !seen_at {
            seen_at = true;
            atom_start = true;
        } else {
            return false;
        }
    }
    !atom_start
}

/// A key-value value (RFC 7208 §9.1), [`sanitized`] as a word: dot-atom or
/// address as is, anything else as a quoted-string.
fn push_value(out: &mut String, value: &str) {
    let value = sanitized::<WORD>(value);
    if is_plain_value(&value) {
        out.push_str(&value);
    } else {
        push_quoted(out, &value);
    }
}

/// A quoted-string (RFC 5322 §3.2.4) of the value [`sanitized`] as a word:
/// there is nothing left to escape.
fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    out.push_str(&sanitized::<WORD>(value));
    out.push('"');
}

/// Comment text (RFC 5322 ctext), [`sanitized`] as prose.
fn push_comment(out: &mut String, text: &str) {
    out.push_str(&sanitized::<PROSE>(text));
}

/// What [`sanitized`] keeps: a value of a key or property (`WORD`), or the
/// text of a comment (`PROSE`, which keeps its spaces).
const WORD: u8 = 0;
const PROSE: u8 = 1;

/// The characters that lenient header readers split on or treat specially,
/// inside quoted-strings and comments too: OpenDMARC 1.4.2 reads `;` and
/// `=` of a Received-SPF inside quotes, opens a comment at any `(`, drops
/// `"` and `\` (so an escaped `\)` may close a comment for some reader).
/// None of them is ever written inside one of our values.
const SEPARATORS: &[u8] = b";=\"()\\";

/// The bytes [`sanitized`] copies as they are, per kind: printable ASCII
/// except [`SEPARATORS`], the space too for `PROSE`. A table, as this runs
/// for every character of every header.
const COPIED_AS_IS: [[bool; 256]; 2] = {
    let mut table = [[false; 256]; 2];
    let mut b = b' ';
    while b <= b'~' {
        let mut separator = false;
        let mut i = 0;
        while i < SEPARATORS.len() {
            separator |= SEPARATORS[i] == b;
            i += 1;
        }
        table[WORD as usize][b as usize] = !separator && b != b' ';
        table[PROSE as usize][b as usize] = !separator;
        b += 1;
    }
    table
};

/// The replacement of every character [`sanitized`] does not keep.
///
/// Choices where the spec leaves room: RFC 7208 §9.1 and RFC 8601 would let
/// a quoted-string or an escaped comment carry any of these, but readers
/// (OpenDMARC among them) do not honour the quoting, so the characters are
/// replaced rather than escaped. `?` is what already replaced controls and
/// non-ASCII text; it is `atext` (RFC 5322 §3.2.3), so an address keeps its
/// shape: `SRS0=HHH=TT=orig.example=user@fwd.example` is written
/// `SRS0?HHH?TT?orig.example?user@fwd.example`, with its domain intact (the
/// domain OpenDMARC compares is the part after the `@`).
pub const REPLACEMENT: char = '?';

/// `text` with each character that `KIND` does not keep (see
/// [`COPIED_AS_IS`]; controls and non-ASCII characters never are) replaced
/// by one [`REPLACEMENT`]. Borrowed when nothing is replaced.
pub(crate) fn sanitized<const KIND: u8>(text: &str) -> Cow<'_, str> {
    let plain = &COPIED_AS_IS[usize::from(KIND)];
    let bytes = text.as_bytes();
    let Some(first) = bytes.iter().position(|&b| !plain[usize::from(b)]) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        if c.is_ascii() && plain[c as usize] {
            out.push(c);
        } else {
            out.push(REPLACEMENT);
        }
    }
    Cow::Owned(out)
}

/// [`sanitized`] as a word: for the values of keys and properties.
pub fn sanitized_word(text: &str) -> Cow<'_, str> {
    sanitized::<WORD>(text)
}

/// Folds a header value for the milter protocol: lines of at most `width`
/// columns (counting `name: ` on the first, a TAB as 8 on the others),
/// broken at spaces with a bare LF followed by a TAB (the MTA adds the CRs).
/// Each break replaces one space, so unfolding gives the value back. Words
/// longer than a line stay whole.
pub fn fold(name: &str, value: &str, width: usize) -> String {
    let mut out = String::with_capacity(value.len() + 16);
    let mut rest = value;
    // Room left on the first line, after "Name: ".
    let mut room = width.saturating_sub(name.len() + 2);
    loop {
        let bytes = rest.as_bytes();
        if bytes.len() <= room {
            out.push_str(rest);
            return out;
        }
        // The last space that keeps the line within its room; failing
        // that (a word longer than a line), the first space after it.
        // Spaces are ASCII, so slicing there is safe.
        let fitting = bytes[1..=room.max(1).min(bytes.len() - 1)]
            .iter()
            .rposition(|&b| b == b' ');
        let split = match fitting {
            Some(i) => Some(i + 1),
            None => bytes[1..].iter().position(|&b| b == b' ').map(|i| i + 1),
        };
        let Some(split) = split else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..split]);
        out.push_str("\n\t");
        rest = &rest[split + 1..];
        room = width.saturating_sub(8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(result: SpfResult) -> SpfOutcome {
        SpfOutcome {
            identity: Identity::MailFrom,
            result,
            mechanism: Some("+ip4:192.0.2.0/24".into()),
            problem: None,
            explanation: None,
            domain: "pass.test".into(),
            sender: "a@pass.test".into(),
            dns_lookups: 0,
            void_lookups: 0,
            via: Vec::new(),
        }
    }

    const CLIENT: &str = "192.0.2.1";
    const RECEIVER: &str = "rcpt.example";

    fn client() -> IpAddr {
        CLIENT.parse().unwrap()
    }

    fn envelope(helo: &str, sender: &str) -> Envelope {
        Envelope {
            client_ip: Some(client()),
            helo: helo.to_owned(),
            sender: sender.to_owned(),
            ..Envelope::default()
        }
    }

    fn tx() -> Envelope {
        envelope("mx.pass.test", "a@pass.test")
    }

    #[test]
    fn received_spf_for_a_pass() {
        assert_eq!(
            received_spf_value(&outcome(SpfResult::Pass), &tx(), client(), RECEIVER),
            "Pass (sender SPF authorized) identity=mailfrom; client-ip=192.0.2.1; \
             helo=mx.pass.test; envelope-from=a@pass.test; receiver=rcpt.example; \
             mechanism=\"+ip4:192.0.2.0/24\""
        );
    }

    #[test]
    fn errors_carry_a_quoted_problem_and_hostile_text_is_neutralised() {
        let mut o = outcome(SpfResult::PermError);
        o.problem = Some("bad \"record\"\r\nX-Injected: yes".into());
        let t = envelope("[192.0.2.1]", "");
        let v = received_spf_value(&o, &t, client(), RECEIVER);
        // Quotes, spaces, controls: one `?` each (SEPARATORS, REPLACEMENT).
        assert!(
            v.contains("problem=\"bad??record???X-Injected:?yes\""),
            "{v}"
        );
        assert!(v.contains("envelope-from=<>"), "{v}");
        assert!(v.contains("helo=\"[192.0.2.1]\""), "{v}");
        assert!(!v.contains('\n') && !v.contains('\r'));
        // In the comment, spaces stay.
        assert!(
            v.contains("(SPF Permanent Error: bad ?record???X-Injected: yes)"),
            "{v}"
        );
    }

    #[test]
    fn addresses_are_written_in_their_usual_form() {
        for ip in [
            "0.0.0.0",
            "192.0.2.1",
            "10.100.9.255",
            "2001:db8::1",
            "::ffff:192.0.2.1",
        ] {
            let mut out = String::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip);
        }
    }

    /// The obvious word-by-word folding, to check the fast one against.
    /// RFC 7208 §9.1 key-value values: a dot-atom or `dot-atom@dot-atom`
    /// (RFC 5322 §3.2.3) as is; anything else needs quoting.
    #[test]
    fn plain_values_are_dot_atoms_or_plain_addresses() {
        for plain in [
            "mx.example.com",
            "a",
            "user@example.com",
            "first.last+tag@sub.example.org",
            "!#$%&'*+-/=?^_`{|}~@x",
            "192.0.2.1",
        ] {
            assert!(is_plain_value(plain), "{plain:?} is plain");
        }
        for needs_quotes in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "@",
            "@example.com",
            "user@",
            "user.@example.com",
            "user@.example.com",
            "a@b@c",
            "\"quoted\"@example.com",
            "+include:_spf.example.com",
            "two words",
            "b\u{fc}cher.example",
            "a\r\nX-Injected: 1",
        ] {
            assert!(
                !is_plain_value(needs_quotes),
                "{needs_quotes:?} needs quotes"
            );
        }
    }

    fn fold_word_by_word(name: &str, value: &str, width: usize) -> String {
        let mut out = String::new();
        let mut column = name.len() + 2;
        for (i, word) in value.split(' ').enumerate() {
            if i > 0 {
                if column + 1 + word.len() > width {
                    out.push_str("\n\t");
                    column = 8;
                } else {
                    out.push(' ');
                    column += 1;
                }
            }
            out.push_str(word);
            column += word.len();
        }
        out
    }

    #[test]
    fn folding_matches_word_by_word_folding() {
        // Words of varied lengths (a few longer than a line), single spaces.
        let mut seed = 12345u64;
        for _ in 0..2000 {
            let mut words = Vec::new();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for w in 0..(seed >> 60) + 1 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let len = if w % 7 == 6 {
                    80 + (seed >> 58)
                } else {
                    1 + (seed >> 59)
                };
                words.push("x".repeat(len as usize));
            }
            let value = words.join(" ");
            assert_eq!(
                fold("Received-SPF", &value, 78),
                fold_word_by_word("Received-SPF", &value, 78),
                "{value:?}"
            );
        }
    }

    #[test]
    fn folding_never_loses_text() {
        for value in ["", " ", "a", "  a  b  ", &"y".repeat(200), "é é é"] {
            assert_eq!(fold("X", value, 10).replace("\n\t", " "), value);
        }
        // No room at all on the first line.
        assert_eq!(fold(&"N".repeat(90), "a b", 78), "a\n\tb");
    }

    #[test]
    fn folding_keeps_lines_within_width() {
        let v = received_spf_value(&outcome(SpfResult::Pass), &tx(), client(), RECEIVER);
        let folded = fold("Received-SPF", &v, 78);
        let first = folded.lines().next().unwrap();
        assert!(first.len() + "Received-SPF: ".len() <= 78);
        for line in folded.lines().skip(1) {
            assert!(line.starts_with('\t'));
            assert!(line.len() + 7 <= 78, "{line:?}");
        }
        assert_eq!(folded.replace("\n\t", " "), v);
    }

    #[test]
    fn authentication_results_carry_the_domain_only() {
        let v = authentication_results_value(
            "mx.example.net",
            &outcome(SpfResult::Pass),
            &tx(),
            client(),
            RECEIVER,
        );
        assert_eq!(
            v,
            "mx.example.net; spf=pass (sender SPF authorized) smtp.mailfrom=pass.test \
             (client-ip=192.0.2.1; helo=mx.pass.test; envelope-from=a@pass.test; receiver=rcpt.example)"
        );
        let mut helo = outcome(SpfResult::None);
        helo.identity = Identity::Helo;
        helo.domain = "mx.none.test".into();
        let t = envelope("mx.pass.test", "");
        let v = authentication_results_value("mx.example.net", &helo, &t, client(), RECEIVER);
        assert!(
            v.starts_with("mx.example.net; spf=none (no SPF record) smtp.helo=mx.none.test ("),
            "{v}"
        );
        assert!(v.contains("envelope-from=<>"), "{v}");
    }

    #[test]
    fn forged_trace_headers_are_recognised() {
        let ours = "mx.example.net";
        assert!(is_forged_trace_header(
            "Received-SPF",
            "pass (x) identity=mailfrom",
            ours
        ));
        assert!(is_forged_trace_header("received-spf", "", ours));
        assert!(is_forged_trace_header(
            "Authentication-Results",
            "MX.example.net; spf=pass smtp.mailfrom=x.test",
            ours
        ));
        assert!(is_forged_trace_header(
            "Authentication-Results",
            "(c) mx.example.net; spf=pass",
            ours
        ));
        assert!(!is_forged_trace_header(
            "Authentication-Results",
            "other.example.org; spf=pass",
            ours
        ));
        assert!(!is_forged_trace_header(
            "Authentication-Results",
            "mx.example.net.evil; spf=pass",
            ours
        ));
        assert!(!is_forged_trace_header("X-Received-SPF", "pass", ours));
    }

    #[test]
    fn header_type_selects_the_headers_top_first() {
        let o = outcome(SpfResult::Fail);
        let names = |t| -> Vec<&str> {
            spf_headers(t, "mx.example.net", &o, &tx(), client(), RECEIVER)
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        assert_eq!(names(HeaderType::Spf), ["Received-SPF"]);
        assert_eq!(names(HeaderType::Ar), ["Authentication-Results"]);
        assert_eq!(
            names(HeaderType::Both),
            ["Received-SPF", "Authentication-Results"]
        );
        assert!(names(HeaderType::None).is_empty());
        let both = spf_headers(
            HeaderType::Both,
            "mx.example.net",
            &o,
            &tx(),
            client(),
            RECEIVER,
        );
        for (name, value) in &both {
            assert!(!value.contains('\r'), "{name}: {value:?}");
            for line in value.split('\n').skip(1) {
                assert!(line.starts_with('\t'), "{name}: {value:?}");
            }
        }
        assert!(
            both[1].1.starts_with("mx.example.net; spf=fail "),
            "{:?}",
            both[1].1
        );
    }

    #[test]
    fn skipped_sessions_get_the_reference_comment() {
        let t = envelope("localhost", "a@example.com");
        let h = skip_headers(
            HeaderType::Both,
            "mx.example.net",
            SkipReason::LocalConnection,
            &t,
            "127.0.0.1".parse().unwrap(),
            "<UNKNOWN>",
        );
        assert_eq!(h[0].0, "X-Comment");
        assert_eq!(
            h[0].1.replace("\n\t", " "),
            "SPF check N/A for local connections - client-ip=127.0.0.1; helo=localhost; \
             envelope-from=a@example.com; receiver=<UNKNOWN> "
        );
        assert_eq!(h[1].0, "Authentication-Results");
        assert_eq!(
            h[1].1.replace("\n\t", " "),
            "mx.example.net; none (SPF check N/A for local connections - client-ip=127.0.0.1; \
             helo=localhost; envelope-from=a@example.com; receiver=<UNKNOWN>)"
        );
    }

    #[test]
    fn the_receiver_is_the_first_recipients_domain_unless_hidden() {
        assert_eq!(
            header_receiver(false, Some("<bob@rcpt.example>")),
            "rcpt.example"
        );
        assert_eq!(
            header_receiver(false, Some("bob@rcpt.example")),
            "rcpt.example"
        );
        assert_eq!(header_receiver(true, Some("bob@rcpt.example")), "<UNKNOWN>");
        assert_eq!(header_receiver(false, None), "<UNKNOWN>");
        assert_eq!(header_receiver(false, Some("postmaster")), "<UNKNOWN>");
    }
}

#[cfg(test)]
mod envelope_junk {
    use super::*;

    #[test]
    fn non_ascii_and_controls_become_one_question_mark_each() {
        let mut out = String::new();
        // Two- and three-byte characters, a lossy-decoded byte, a control.
        push_comment(&mut out, "jörg€\u{FFFD}\x01(x) y");
        assert_eq!(out, "j?rg????x? y");
    }

    #[test]
    fn over_long_values_are_cut_at_a_character_boundary() {
        let long = format!("{}ö{}", "a".repeat(MAX_TRACE_VALUE - 1), "b".repeat(500));
        let cut = truncated(&long);
        // The 2-byte ö straddles the limit: cut before it.
        assert_eq!(cut, format!("{}...", "a".repeat(MAX_TRACE_VALUE - 1)));
        assert_eq!(truncated("mx.example.com"), "mx.example.com");
    }
}

#[cfg(test)]
#[path = "../../tests/common/lenient.rs"]
mod lenient_oracle;

/// The headers as lenient readers see them, OpenDMARC's readers as oracles
/// (`tests/common/lenient.rs`).
#[cfg(test)]
mod lenient_readers {
    use super::lenient_oracle::{last, opendmarc_authserv_id, opendmarc_received_spf};
    use super::*;
    use proptest::prelude::*;

    const OURS: &str = "mx.example.net";

    /// What OpenDMARC would do with the value: is it an
    /// Authentication-Results it trusts as ours?
    fn opendmarc_takes_as_ours(value: &str) -> bool {
        opendmarc_authserv_id(value).is_some_and(|id| id.eq_ignore_ascii_case(OURS))
    }

    fn forged(value: &str) -> bool {
        is_forged_trace_header("Authentication-Results", value, OURS)
    }

    const RESULTS: &str = "; spf=pass smtp.mailfrom=victim.test";

    /// The forms of the security report, each read as ours by OpenDMARC,
    /// and those already deleted before.
    #[test]
    fn every_reported_form_is_read_as_ours_by_opendmarc_and_deleted() {
        let reported = [
            "mx . example . net",
            "mx. example. net",
            "mx.example\r\n\t.net",
            "mx.example\n\t.net",
            "mx\\.example\\.net",
            "\\mx.example.net",
            "m\"x.example.ne\"t",
            "\"mx.example\".net",
            "mx.example.\"net\"",
            "\"(x\" mx.example.net",
            "mx.(c)example.net",
        ];
        let before = [
            "mx.example.net",
            "MX.Example.NET",
            "(c) mx.example.net",
            " (forged (nested) comment) MX.Example.NET ",
            "mx.example.net 1",
        ];
        for id in reported.iter().chain(&before) {
            let value = format!("{id}{RESULTS}");
            assert!(
                opendmarc_takes_as_ours(&value),
                "the oracle does not read {value:?} as ours: {:?}",
                opendmarc_authserv_id(&value)
            );
            assert!(forged(&value), "{value:?} is kept");
        }
    }

    /// Forms other readers could take for ours.
    #[test]
    fn other_lenient_readings_are_deleted_too() {
        for id in [
            // OpenDMARC's AuthservIDWithJobID form.
            "mx.example.net/4F2B1C3A",
            "\"mx.example.net\"",
            "(;) mx.example.net",
            "\\(x mx.example.net",
            "(\\) mx.example.net",
            "mx.exam ple.net",
            "mx.example.net)",
            "mx.example.net foo",
            "mx.example.net(comment)",
            "\u{FEFF}mx.ex\u{200B}ample.net",
            "\u{FF4D}\u{FF58}.example.net",
            "=?utf-8?q?mx=2Eexample.net?=",
            "=?us-ascii?B?bXguZXhhbXBsZS5uZXQ=?=",
            "\"mx.example.net;x\"",
        ] {
            let value = format!("{id}{RESULTS}");
            assert!(forged(&value), "{value:?} is kept");
        }
        // The whole value, without a result.
        assert!(forged("mx.example.net"));
        assert!(forged(" mx.example.net "));
    }

    /// Other sites' headers stay, also when they name us after the id.
    #[test]
    fn other_authserv_ids_are_kept() {
        for value in [
            "mx.google.com; dkim=pass header.i=@example.com",
            "other.example; spf=pass smtp.mailfrom=victim.test",
            "mx.example.net.evil; spf=pass",
            "mx.example.netx; spf=pass",
            "xmx.example.net; spf=pass",
            "example.net; spf=pass",
            "mx-example.net; spf=pass",
            "mx.example.org; spf=pass smtp.mailfrom=mx.example.net",
            "other.example; spf=pass (mx.example.net)",
            "other.example (mx.example.net); spf=pass",
            "\"other\" mx.example.net; spf=pass",
            ".mx.example.net; spf=pass",
            "mx.example.net1; spf=pass",
            "",
            ";",
        ] {
            assert!(!forged(value), "{value:?} is deleted");
        }
        // Our id a suffix of theirs, or theirs of ours.
        assert!(!is_forged_trace_header(
            "Authentication-Results",
            "mx.example.net; spf=pass",
            "example.net"
        ));
        assert!(!is_forged_trace_header(
            "authentication-results",
            "example.net; spf=pass",
            "mx.example.net"
        ));
    }

    #[test]
    fn an_id_opendmarc_would_truncate_matches_whatever_follows() {
        let long = format!("{}.example", "a".repeat(OPENDMARC_ID_LIMIT));
        let value = format!("{long}x; spf=pass");
        assert!(is_forged_trace_header(
            "Authentication-Results",
            &value,
            &long
        ));
        // Under the limit, a longer id is another id.
        assert!(!is_forged_trace_header(
            "Authentication-Results",
            "a.examplex; spf=pass",
            "a.example"
        ));
    }

    #[test]
    fn encoded_words_are_decoded() {
        assert_eq!(
            decode_encoded_words("=?utf-8?q?a_b=3Dc?= x =?x?b?Zm9v?=").as_deref(),
            Some("a b=c x foo")
        );
        assert_eq!(decode_encoded_words("=?broken"), None);
        assert_eq!(decode_encoded_words("no words"), None);
    }

    /// Junk a lenient reader drops: white space and folds, quotes,
    /// backslashes, comments (nested, with `;` inside, opened inside
    /// quotes), a stray `)`.
    fn junk() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(" ".to_owned()),
            Just("\t".to_owned()),
            Just("\r\n\t".to_owned()),
            Just("\n ".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just(")".to_owned()),
            Just("(c)".to_owned()),
            Just("(a (nested) comment)".to_owned()),
            Just("(;)".to_owned()),
            Just("\"(x\" ".to_owned()),
            Just(" (x".to_owned()).prop_map(|s| s + ")"),
            "[a-z ;=.]{0,6}".prop_map(|s| format!("({s})")),
        ]
    }

    /// One piece of a forged value: a character of our id (either case),
    /// or junk before it.
    fn forged_id() -> impl Strategy<Value = String> {
        let chars: Vec<char> = OURS.chars().collect();
        (
            proptest::collection::vec(proptest::option::of(junk()), chars.len() + 1),
            proptest::collection::vec(any::<bool>(), chars.len()),
        )
            .prop_map(move |(junk, upper)| {
                let mut s = String::new();
                for (i, c) in chars.iter().enumerate() {
                    s.push_str(junk[i].as_deref().unwrap_or(""));
                    s.push(if upper[i] { c.to_ascii_uppercase() } else { *c });
                }
                s.push_str(junk[chars.len()].as_deref().unwrap_or(""));
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Our id with junk inserted anywhere is deleted, with or without
        /// a version.
        #[test]
        fn our_id_with_junk_anywhere_is_deleted(
            id in forged_id(),
            version in proptest::option::of(" [0-9]{1,2}"),
        ) {
            let value = format!("{id}{}{RESULTS}", version.unwrap_or_default());
            prop_assert!(forged(&value), "{:?} is kept", value);
        }

        /// Whatever text OpenDMARC reads as our id is deleted: pieces of
        /// our id and junk in any order.
        #[test]
        fn whatever_opendmarc_takes_as_ours_is_deleted(
            pieces in proptest::collection::vec(
                prop_oneof![
                    Just("mx"), Just("MX"), Just("."), Just("example"), Just("net"),
                    Just("mx.example.net"), Just(" "), Just("\t"), Just("\r\n "),
                    Just("\""), Just("\\"), Just("("), Just(")"), Just("x"), Just(";"),
                    Just("1"), Just("/"), Just("="),
                ],
                1..16,
            )
        ) {
            let value = format!("{}{RESULTS}", pieces.concat());
            if opendmarc_takes_as_ours(&value) {
                prop_assert!(forged(&value), "{:?} is kept", value);
            }
        }

        /// Another authserv-id is kept.
        #[test]
        fn other_ids_are_kept(id in "[a-z0-9-]{1,8}(\\.[a-z0-9-]{1,8}){0,3}") {
            let value = format!("{id}{RESULTS}");
            prop_assert_eq!(forged(&value), id == OURS);
        }
    }

    // ---------------------------------------------------------- Received-SPF

    const HOSTILE: [&str; 12] = [
        "x;identity=mailfrom;.evilhelo.test",
        "x identity=mailfrom",
        "r.example;identity=mailfrom",
        "\"a;b\"=c",
        "(x;identity=mailfrom",
        "x)identity=mailfrom;",
        "x\\;identity\\=mailfrom",
        "a\r\n\tidentity=mailfrom;",
        "SRS0=HHH=TT=orig.example=user@fwd.example",
        "prvs=1234=user@example.com",
        "envelope-from=victim@paypal.test",
        "ok.example",
    ];

    fn client() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    /// An envelope whose HELO name and sender are `text`.
    fn hostile_envelope(text: &str) -> Envelope {
        Envelope {
            client_ip: Some(client()),
            helo: text.to_owned(),
            sender: text.to_owned(),
            ..Envelope::default()
        }
    }

    fn hostile_outcome(result: SpfResult, identity: Identity, text: &str) -> SpfOutcome {
        SpfOutcome {
            identity,
            result,
            mechanism: Some(format!("+a:{text}").into()),
            problem: (result == SpfResult::PermError).then(|| text.into()),
            explanation: (result == SpfResult::Fail).then(|| text.into()),
            domain: "evilhelo.test".into(),
            sender: "postmaster@evilhelo.test".into(),
            dns_lookups: 0,
            void_lookups: 0,
            via: Vec::new(),
        }
    }

    /// Every field of our Received-SPF as OpenDMARC reads it: the result
    /// word, exactly one `identity` (ours), and the envelope-from, helo and
    /// receiver we mean, whatever the session sent.
    #[test]
    fn opendmarc_reads_every_received_spf_field_as_written() {
        for text in HOSTILE {
            for (result, identity) in [
                (SpfResult::Pass, Identity::Helo),
                (SpfResult::Fail, Identity::Helo),
                (SpfResult::PermError, Identity::MailFrom),
                (SpfResult::Pass, Identity::MailFrom),
            ] {
                let o = hostile_outcome(result, identity, text);
                let tx = hostile_envelope(text);
                let value = received_spf_value(&o, &tx, client(), text);
                let (word, pairs) = opendmarc_received_spf(&value);
                assert_eq!(word, result.capitalized(), "{value}");
                let identities: Vec<_> = pairs.iter().filter(|(k, _)| k == "identity").collect();
                assert_eq!(identities.len(), 1, "{value}: {pairs:?}");
                assert_eq!(last(&pairs, "identity"), Some(identity.as_str()), "{value}");
                let sanitized = sanitized_word(text);
                for key in ["helo", "envelope-from", "receiver"] {
                    assert_eq!(last(&pairs, key), Some(&*sanitized), "{key} in {value}");
                }
                let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
                let tail = if result == SpfResult::PermError {
                    "problem"
                } else {
                    "mechanism"
                };
                assert_eq!(
                    keys,
                    [
                        "identity",
                        "client-ip",
                        "helo",
                        "envelope-from",
                        "receiver",
                        tail
                    ],
                    "{value}"
                );
                // No value of ours holds a separator.
                for (_, v) in &pairs {
                    assert!(
                        !v.bytes()
                            .any(|b| SEPARATORS.contains(&b) || !b.is_ascii_graphic()),
                        "{v:?} in {value}"
                    );
                }
            }
        }
    }

    /// The same for Authentication-Results: OpenDMARC reads our id, one
    /// `spf` result and the property we wrote, and a lenient
    /// comment-unaware reader finds no key of the session's making.
    #[test]
    fn opendmarc_reads_our_authentication_results_as_written() {
        for text in HOSTILE {
            for identity in [Identity::MailFrom, Identity::Helo] {
                let mut o = hostile_outcome(SpfResult::Fail, identity, text);
                o.domain = text.into();
                let tx = hostile_envelope(text);
                let value = authentication_results_value(OURS, &o, &tx, client(), text);
                assert_eq!(
                    opendmarc_authserv_id(&value).as_deref(),
                    Some(OURS),
                    "{value}"
                );
                // A reader that ignores comments and quotes: keys split at
                // `;` and white space.
                let keys: Vec<&str> = value
                    .split([';', ' '])
                    .filter_map(|w| w.split_once('=').map(|(k, _)| k.trim_start_matches('(')))
                    .collect();
                let property = match identity {
                    Identity::MailFrom => "smtp.mailfrom",
                    Identity::Helo => "smtp.helo",
                };
                assert_eq!(
                    keys,
                    [
                        "spf",
                        property,
                        "client-ip",
                        "helo",
                        "envelope-from",
                        "receiver"
                    ],
                    "{value}"
                );
                let skip = skip_headers(
                    HeaderType::Ar,
                    OURS,
                    SkipReason::LocalConnection,
                    &tx,
                    client(),
                    text,
                );
                let value = skip[0].1.replace("\n\t", " ");
                let keys: Vec<&str> = value
                    .split([';', ' '])
                    .filter_map(|w| w.split_once('=').map(|(k, _)| k))
                    .collect();
                assert_eq!(
                    keys,
                    ["client-ip", "helo", "envelope-from", "receiver"],
                    "{value}"
                );
            }
        }
    }

    #[test]
    fn srs_and_batv_senders_keep_their_domain() {
        let o = outcome_pass();
        for (sender, written) in [
            (
                "SRS0=HHH=TT=orig.example=user@fwd.example",
                "SRS0?HHH?TT?orig.example?user@fwd.example",
            ),
            ("prvs=1234=user@example.com", "prvs?1234?user@example.com"),
        ] {
            let tx = Envelope {
                client_ip: Some(client()),
                helo: "mx.fwd.example".to_owned(),
                sender: sender.to_owned(),
                ..Envelope::default()
            };
            let value = received_spf_value(&o, &tx, client(), "rcpt.example");
            assert!(
                value.contains(&format!("envelope-from={written};")),
                "{value}"
            );
            let (_, pairs) = opendmarc_received_spf(&value);
            let from = last(&pairs, "envelope-from").unwrap();
            assert_eq!(
                from.rsplit_once('@').unwrap().1,
                sender.rsplit_once('@').unwrap().1
            );
        }
    }

    fn outcome_pass() -> SpfOutcome {
        SpfOutcome {
            identity: Identity::MailFrom,
            result: SpfResult::Pass,
            mechanism: Some("+ip4:192.0.2.0/24".into()),
            problem: None,
            explanation: None,
            domain: "fwd.example".into(),
            sender: "x@fwd.example".into(),
            dns_lookups: 0,
            void_lookups: 0,
            via: Vec::new(),
        }
    }
}
