//! Trace header text: Received-SPF (RFC 7208 §9.1) and
//! Authentication-Results (RFC 8601), and recognising such headers when
//! they arrive forged. Pure formatting; the milter decides where headers go.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::{HeaderType, is_token_char};
use crate::spf::{Identity, SpfOutcome, SpfResult};

use super::skip::{SkipReason, x_comment_value};

/// The comment policyd-spf writes for each result (spec §4), used when the
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

/// The details of the SMTP transaction that go into the header.
#[derive(Debug, Clone, Copy)]
pub struct Transaction<'a> {
    pub client_ip: IpAddr,
    pub helo: &'a str,
    /// MAIL FROM without brackets; empty for `<>`.
    pub envelope_from: &'a str,
    pub receiver: &'a str,
}

/// At most this many bytes of an envelope value (HELO name, sender,
/// receiver, domain) go into a trace header. RFC 5321 §4.5.3.1 allows 255
/// for a domain and 256 for a path, so only invalid values are cut; a
/// value without spaces cannot be folded, and a longer one would break
/// RFC 5322's 998-octet line limit (§2.1.1).
pub const MAX_TRACE_VALUE: usize = 256;

/// `value`, cut to [`MAX_TRACE_VALUE`] bytes (at a character boundary)
/// with `...` to show the cut.
fn bounded(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_TRACE_VALUE {
        return value.into();
    }
    let mut end = MAX_TRACE_VALUE;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &value[..end]).into()
}

/// A [`Transaction`] with its envelope values [`bounded`].
struct BoundedTransaction<'a> {
    client_ip: IpAddr,
    helo: std::borrow::Cow<'a, str>,
    envelope_from: std::borrow::Cow<'a, str>,
    receiver: std::borrow::Cow<'a, str>,
}

impl<'a> BoundedTransaction<'a> {
    fn of(tx: &Transaction<'a>) -> Self {
        Self {
            client_ip: tx.client_ip,
            helo: bounded(tx.helo),
            envelope_from: bounded(tx.envelope_from),
            receiver: bounded(tx.receiver),
        }
    }

    fn transaction(&self) -> Transaction<'_> {
        Transaction {
            client_ip: self.client_ip,
            helo: &self.helo,
            envelope_from: &self.envelope_from,
            receiver: &self.receiver,
        }
    }
}

/// The value of a Received-SPF header field (everything after
/// `Received-SPF:`), unfolded:
/// `pass (comment) identity=mailfrom; client-ip=…; helo=…; envelope-from=…;
/// receiver=…; mechanism=…` (or `problem=…` for errors).
pub fn received_spf_value(outcome: &SpfOutcome, tx: &Transaction<'_>) -> String {
    let bounded_tx = BoundedTransaction::of(tx);
    let tx = &bounded_tx.transaction();
    let mut v = String::with_capacity(200);
    v.push_str(outcome.result.capitalized());
    v.push_str(" (");
    push_comment(&mut v, &result_comment(outcome));
    v.push_str(") identity=");
    v.push_str(outcome.identity.as_str());
    v.push_str("; client-ip=");
    push_ip(&mut v, tx.client_ip);
    v.push_str("; helo=");
    push_value(&mut v, tx.helo);
    v.push_str("; envelope-from=");
    if tx.envelope_from.is_empty() {
        v.push_str("<>");
    } else {
        push_value(&mut v, tx.envelope_from);
    }
    v.push_str("; receiver=");
    push_value(&mut v, tx.receiver);
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
/// property when it holds a whole address (postfix-opendmarc.md), and DMARC
/// aligns on the domain anyway. A HELO result is reported as `smtp.helo`.
pub fn authentication_results_value(
    authserv_id: &str,
    outcome: &SpfOutcome,
    tx: &Transaction<'_>,
) -> String {
    let bounded_tx = BoundedTransaction::of(tx);
    let tx = &bounded_tx.transaction();
    let domain = bounded(&outcome.domain);
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
        tx.envelope_from
    };
    push_comment(
        &mut v,
        &format!(
            "client-ip={}; helo={}; envelope-from={envelope_from}; receiver={}",
            tx.client_ip, tx.helo, tx.receiver
        ),
    );
    v.push(')');
    v
}

/// The receiver written into headers and `Reason_URL`: with `Hide_Receiver`
/// `<UNKNOWN>` (policyd-spf's word), else the first recipient's domain, or
/// `<UNKNOWN>` when there is none.
pub fn header_receiver(hide_receiver: bool, first_recipient: Option<&str>) -> &str {
    const UNKNOWN: &str = "<UNKNOWN>";
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
/// each value folded for the milter protocol (LF + TAB). `None`: no header.
pub fn spf_headers(
    header_type: HeaderType,
    authserv_id: &str,
    outcome: &SpfOutcome,
    tx: &Transaction<'_>,
) -> Vec<(&'static str, String)> {
    let mut headers = Vec::with_capacity(2);
    if header_type.received_spf() {
        let value = received_spf_value(outcome, tx);
        headers.push(("Received-SPF", fold("Received-SPF", &value, 78)));
    }
    if header_type.authentication_results() {
        let value = authentication_results_value(authserv_id, outcome, tx);
        headers.push((
            "Authentication-Results",
            fold("Authentication-Results", &value, 78),
        ));
    }
    headers
}

/// The trace header of a session the bypass chain skipped (spec §4):
/// `X-Comment: <comment> - client-ip=…` with `Received-SPF` headers, and
/// `Authentication-Results: <id>; none (<comment> - client-ip=…)` with
/// Authentication-Results.
pub fn skip_headers(
    header_type: HeaderType,
    authserv_id: &str,
    reason: SkipReason,
    tx: &Transaction<'_>,
) -> Vec<(&'static str, String)> {
    let comment = x_comment_value(
        reason,
        tx.client_ip,
        &bounded(tx.helo),
        &bounded(tx.envelope_from),
        &bounded(tx.receiver),
    );
    let mut headers = Vec::with_capacity(2);
    if header_type.received_spf() {
        headers.push(("X-Comment", fold("X-Comment", &comment, 78)));
    }
    if header_type.authentication_results() {
        let mut value = String::with_capacity(comment.len() + authserv_id.len() + 10);
        push_token_or_quoted(&mut value, authserv_id);
        value.push_str("; none (");
        push_comment(&mut value, comment.trim_end());
        value.push(')');
        headers.push((
            "Authentication-Results",
            fold("Authentication-Results", &value, 78),
        ));
    }
    headers
}

/// The authserv-id of an Authentication-Results value: the first token,
/// after any leading white space and comments (RFC 8601 §2.2). `None` when
/// the value does not start with one.
pub fn authserv_id_of(value: &str) -> Option<&str> {
    let rest = skip_cfws(value);
    let end = rest
        .find(|c: char| c == ';' || c == '(' || c.is_whitespace())
        .unwrap_or(rest.len());
    let id = rest[..end].trim_matches('"');
    (!id.is_empty()).then_some(id)
}

/// Skips white space and (nested) comments at the start of `s`.
fn skip_cfws(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        let Some(body) = s.strip_prefix('(') else {
            return s;
        };
        let mut depth = 1;
        let mut escaped = false;
        let mut end = body.len();
        for (i, c) in body.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        s = &body[end.min(body.len())..];
    }
}

/// Should an incoming header be deleted before ours is added? Every
/// `Received-SPF` (only our own may be trusted, and OpenDMARC falls back to
/// the first one it finds) and every `Authentication-Results` that claims
/// our authserv-id (case-insensitively; RFC 8601 §5 asks border MTAs to do
/// this). Other sites' Authentication-Results are left alone.
pub fn is_forged_trace_header(name: &str, value: &str, our_authserv_id: &str) -> bool {
    if name.eq_ignore_ascii_case("Received-SPF") {
        return true;
    }
    name.eq_ignore_ascii_case("Authentication-Results")
        && authserv_id_of(value).is_some_and(|id| id.eq_ignore_ascii_case(our_authserv_id))
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

/// A key-value value (RFC 7208 §9.1): dot-atom or address as is, anything
/// else as a quoted-string.
fn push_value(out: &mut String, value: &str) {
    if is_plain_value(value) {
        out.push_str(value);
    } else {
        push_quoted(out, value);
    }
}

/// A quoted-string (RFC 5322 §3.2.4): `"` and `\` escaped; characters a
/// header may not carry (controls, non-ASCII) replaced by `?` so a sender
/// cannot inject header lines.
fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    push_escaped::<QUOTED_STRING>(out, value);
    out.push('"');
}

/// Comment text (RFC 5322 ctext): parentheses and backslashes escaped,
/// controls replaced.
fn push_comment(out: &mut String, text: &str) {
    push_escaped::<COMMENT>(out, text);
}

/// What [`push_escaped`] escapes: in a quoted-string `"` and `\`, in a
/// comment `(`, `)` and `\` (RFC 5322 §3.2.2, §3.2.4).
const QUOTED_STRING: u8 = 0;
const COMMENT: u8 = 1;

/// The bytes [`push_escaped`] copies as they are, per kind: printable
/// ASCII (space to `~`) except the kind's specials. A table, as this runs
/// for every character of every header.
const COPIED_AS_IS: [[bool; 256]; 2] = {
    let mut table = [[false; 256]; 2];
    let mut b = b' ';
    while b <= b'~' {
        table[QUOTED_STRING as usize][b as usize] = !matches!(b, b'"' | b'\\');
        table[COMMENT as usize][b as usize] = !matches!(b, b'(' | b')' | b'\\');
        b += 1;
    }
    table
};

/// Appends `text` with each special character of `KIND` preceded by a
/// backslash, and each control or non-ASCII character replaced by one `?`.
/// Runs of plain characters are copied whole (this runs for every header).
fn push_escaped<const KIND: u8>(out: &mut String, text: &str) {
    let plain = &COPIED_AS_IS[usize::from(KIND)];
    let bytes = text.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if plain[usize::from(b)] {
            i += 1;
            continue;
        }
        out.push_str(&text[run..i]);
        // Printable but not copied as is: one of the kind's specials.
        if (b' '..=b'~').contains(&b) {
            out.push('\\');
            out.push(char::from(b));
            i += 1;
        } else {
            // A control or a non-ASCII character (all its bytes): one `?`.
            out.push('?');
            i += text[i..].chars().next().map_or(1, char::len_utf8);
        }
        run = i;
    }
    out.push_str(&text[run..]);
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
        }
    }

    fn tx() -> Transaction<'static> {
        Transaction {
            client_ip: "192.0.2.1".parse().unwrap(),
            helo: "mx.pass.test",
            envelope_from: "a@pass.test",
            receiver: "rcpt.example",
        }
    }

    #[test]
    fn received_spf_for_a_pass() {
        assert_eq!(
            received_spf_value(&outcome(SpfResult::Pass), &tx()),
            "Pass (sender SPF authorized) identity=mailfrom; client-ip=192.0.2.1; \
             helo=mx.pass.test; envelope-from=a@pass.test; receiver=rcpt.example; \
             mechanism=\"+ip4:192.0.2.0/24\""
        );
    }

    #[test]
    fn errors_carry_a_quoted_problem_and_hostile_text_is_neutralised() {
        let mut o = outcome(SpfResult::PermError);
        o.problem = Some("bad \"record\"\r\nX-Injected: yes".into());
        let mut t = tx();
        t.envelope_from = "";
        t.helo = "[192.0.2.1]";
        let v = received_spf_value(&o, &t);
        assert!(
            v.contains("problem=\"bad \\\"record\\\"??X-Injected: yes\""),
            "{v}"
        );
        assert!(v.contains("envelope-from=<>"), "{v}");
        assert!(v.contains("helo=\"[192.0.2.1]\""), "{v}");
        assert!(!v.contains('\n') && !v.contains('\r'));
        assert!(
            v.contains("(SPF Permanent Error: bad \"record\"??X-Injected: yes)"),
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
        let v = received_spf_value(&outcome(SpfResult::Pass), &tx());
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
        let v = authentication_results_value("mx.example.net", &outcome(SpfResult::Pass), &tx());
        assert_eq!(
            v,
            "mx.example.net; spf=pass (sender SPF authorized) smtp.mailfrom=pass.test \
             (client-ip=192.0.2.1; helo=mx.pass.test; envelope-from=a@pass.test; receiver=rcpt.example)"
        );
        let mut helo = outcome(SpfResult::None);
        helo.identity = Identity::Helo;
        helo.domain = "mx.none.test".into();
        let mut t = tx();
        t.envelope_from = "";
        let v = authentication_results_value("mx.example.net", &helo, &t);
        assert!(
            v.starts_with("mx.example.net; spf=none (no SPF record) smtp.helo=mx.none.test ("),
            "{v}"
        );
        assert!(v.contains("envelope-from=<>"), "{v}");
    }

    #[test]
    fn authserv_ids_are_found_after_comments() {
        assert_eq!(
            authserv_id_of("mx.example.net; spf=pass"),
            Some("mx.example.net")
        );
        assert_eq!(
            authserv_id_of(" (forged (nested) comment) MX.Example.NET ; spf=pass"),
            Some("MX.Example.NET")
        );
        assert_eq!(
            authserv_id_of("mx.example.net 1; none"),
            Some("mx.example.net")
        );
        assert_eq!(authserv_id_of("  ; spf=pass"), None);
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
            spf_headers(t, "mx.example.net", &o, &tx())
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
        let both = spf_headers(HeaderType::Both, "mx.example.net", &o, &tx());
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
        let t = Transaction {
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: "localhost",
            envelope_from: "a@example.com",
            receiver: "<UNKNOWN>",
        };
        let h = skip_headers(
            HeaderType::Both,
            "mx.example.net",
            SkipReason::LocalConnection,
            &t,
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
        push_escaped::<COMMENT>(&mut out, "jörg€\u{FFFD}\x01(x)");
        assert_eq!(out, "j?rg???\\(x\\)");
    }

    #[test]
    fn over_long_values_are_cut_at_a_character_boundary() {
        let long = format!("{}ö{}", "a".repeat(MAX_TRACE_VALUE - 1), "b".repeat(500));
        let cut = bounded(&long);
        // The 2-byte ö straddles the limit: cut before it.
        assert_eq!(cut, format!("{}...", "a".repeat(MAX_TRACE_VALUE - 1)));
        assert_eq!(bounded("mx.example.com"), "mx.example.com");
    }
}
