//! Lenient readers of trace headers, as the tests' oracles: what
//! OpenDMARC 1.4.2 reads in an Authentication-Results value (its `ares`
//! parser, `opendmarc/opendmarc-ar.c`) and in a Received-SPF value
//! (`dmarcf_parse_received_spf`, `opendmarc/opendmarc.c`). Written for
//! this project's tests from a reading of those parsers (behaviour, not
//! code), independently of `src/policy/headers.rs`. Shared by the unit
//! tests of `src/policy/headers.rs`, `tests/milter_daemon.rs` and the
//! `milter_session` fuzz target.
#![allow(dead_code)]

/// OpenDMARC 1.4.2 keeps this many characters of an authserv-id
/// (`DMARC_MAXHOSTNAMELEN`).
pub const OPENDMARC_ID_LIMIT: usize = 256;

/// The authserv-id OpenDMARC's `ares` parser reads in an
/// Authentication-Results value, when the value gets as far as its
/// first result (`None`: the parser gives up first).
pub fn opendmarc_authserv_id(value: &str) -> Option<String> {
    // ares_tokenize: tokens split at white space and at `;` `=` `.`
    // (each its own token) outside quotes and comments; `\` escapes
    // the next byte (which then is an ordinary one); `"` toggles
    // quoting outside comments and is dropped; `(` outside quotes
    // opens a comment that is kept, parentheses included, as one
    // token; a `)` outside comments is dropped.
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let (mut quoted, mut escaped, mut parens) = (false, false, 0u32);
    for &b in value.as_bytes() {
        if escaped {
            current.get_or_insert_with(Vec::new).push(b);
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' && parens == 0 {
            quoted = !quoted;
            current.get_or_insert_with(Vec::new);
        } else if b == b'(' && !quoted {
            parens += 1;
            current.get_or_insert_with(Vec::new).push(b);
        } else if b == b')' && !quoted {
            if parens > 0 {
                parens -= 1;
                if parens == 0 {
                    let mut token = current.take().unwrap_or_default();
                    token.push(b')');
                    tokens.push(token);
                }
            }
        } else if quoted {
            current.get_or_insert_with(Vec::new).push(b);
        } else if b.is_ascii_whitespace() || b == 0x0b {
            if parens > 0 {
                if let Some(token) = current.as_mut() {
                    token.push(b);
                }
            } else if let Some(token) = current.take() {
                tokens.push(token);
            }
        } else if b";=.".contains(&b) {
            if parens > 0 {
                current.get_or_insert_with(Vec::new).push(b);
                continue;
            }
            if let Some(token) = current.take() {
                tokens.push(token);
            }
            tokens.push(vec![b]);
        } else {
            current.get_or_insert_with(Vec::new).push(b);
        }
    }
    if let Some(token) = current.take() {
        tokens.push(token);
    }
    // ares_parse, up to the first `;`: tokens starting with `(` are
    // comments; the id is a token starting with a letter or digit,
    // joined with more by single `.` tokens; an optional version (a
    // token starting with a digit) may follow.
    let mut host = Vec::new();
    let (mut state, mut prev) = (0, -1);
    for token in tokens {
        if token.first() == Some(&b'(') {
            continue;
        }
        match state {
            0 => {
                if !token.first().is_some_and(u8::is_ascii_alphanumeric) {
                    return None;
                }
                host.extend_from_slice(&token);
                (prev, state) = (0, 1);
            }
            1 => {
                if token == b"." && prev == 0 {
                    host.push(b'.');
                    (prev, state) = (1, 0);
                } else if token.first() == Some(&b';') {
                    break;
                } else if token.first().is_some_and(u8::is_ascii_digit) {
                    (prev, state) = (1, 2);
                } else {
                    return None;
                }
            }
            _ => {
                if token == b";" {
                    break;
                }
                return None;
            }
        }
        if state == 3 {
            break;
        }
    }
    if state == 0 || host.is_empty() {
        return None;
    }
    // `ares_host` holds 256 characters (strlcat truncates).
    host.truncate(OPENDMARC_ID_LIMIT);
    Some(String::from_utf8_lossy(&host).into_owned())
}

/// The keys and values OpenDMARC's `dmarcf_parse_received_spf` reads in
/// a Received-SPF value, and its result word: comments skipped at any
/// `(` (also inside quotes), `\` escapes, quotes dropped (white space
/// inside them too), `;` and `=` separating keys and values even
/// inside quotes. (Its value buffer is rewritten from the start at each
/// `=`; the oracle keeps the same overwrite.)
pub fn opendmarc_received_spf(value: &str) -> (String, Vec<(String, String)>) {
    let mut result = Vec::new();
    let mut pairs = Vec::new();
    let (mut key, mut val): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
    // 0: result, 1: key, 2: value; the write position in the value.
    let (mut target, mut at) = (0, 0);
    let (mut escaped, mut quoting, mut parens) = (false, false, 0u32);
    let write =
        |target: i32, at: &mut usize, b: u8, k: &mut Vec<u8>, v: &mut Vec<u8>, r: &mut Vec<u8>| {
            match target {
                0 => r.push(b),
                1 => k.push(b),
                _ => {
                    if *at < v.len() {
                        v[*at] = b;
                    } else {
                        v.push(b);
                    }
                    *at += 1;
                }
            }
        };
    for &b in value.as_bytes() {
        if escaped {
            if parens == 0 {
                write(target, &mut at, b, &mut key, &mut val, &mut result);
            }
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'(' {
            parens += 1;
        } else if b == b')' && parens > 0 {
            parens -= 1;
        } else if parens == 0 {
            if b == b'"' {
                quoting = !quoting;
            } else if b.is_ascii_whitespace() || b == 0x0b {
                if !quoting && target == 0 {
                    target = 1;
                }
            } else if target != 0 && b == b'=' {
                (target, at) = (2, 0);
            } else if target != 0 && b == b';' {
                pairs.push((
                    String::from_utf8_lossy(&key).to_ascii_lowercase(),
                    String::from_utf8_lossy(&val).into_owned(),
                ));
                key.clear();
                val.clear();
                target = 1;
            } else {
                write(target, &mut at, b, &mut key, &mut val, &mut result);
            }
        }
    }
    if !key.is_empty() {
        pairs.push((
            String::from_utf8_lossy(&key).to_ascii_lowercase(),
            String::from_utf8_lossy(&val).into_owned(),
        ));
    }
    (String::from_utf8_lossy(&result).into_owned(), pairs)
}

/// The value OpenDMARC ends up with for `key`: the last one wins.
pub fn last<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}
