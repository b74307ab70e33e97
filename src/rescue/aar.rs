//! The ARC-Authentication-Results header field (RFC 8617 §4.1.1): `i=N;`
//! and then an Authentication-Results payload (RFC 8601 §2.2), read as far
//! as the rescue needs: each result's method, result and properties. The
//! grammar's CFWS (comments, nested, with quoted pairs, and folding) is
//! skipped; values may be quoted strings. Whatever does not fit the grammar
//! is dropped: a result that cannot be read cannot rescue a message.

/// One `method=result ptype.property=value ...` of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResInfo {
    /// Lower-case, without a `/version`.
    pub method: String,
    /// Lower-case.
    pub result: String,
    /// `(ptype.property lower-case, value as written)`, `reason` included.
    pub properties: Vec<(String, String)>,
}

impl ResInfo {
    /// The value of `name` (`header.d`), if given once or more (the first).
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The payload of one ARC-Authentication-Results field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArcResults {
    pub instance: u32,
    pub authserv_id: String,
    pub results: Vec<ResInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Equals,
    Semicolon,
}

/// Splits a field value into tokens, dropping CFWS. `None` if a comment or
/// a quoted string is not closed.
fn tokenize(value: &[u8]) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'(' => {
                let mut depth = 0usize;
                loop {
                    match value.get(i)? {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            b'"' => {
                let mut text = Vec::new();
                i += 1;
                loop {
                    match value.get(i)? {
                        b'\\' => {
                            text.push(*value.get(i + 1)?);
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            break;
                        }
                        &c => {
                            text.push(c);
                            i += 1;
                        }
                    }
                }
                tokens.push(Token::Quoted(String::from_utf8_lossy(&text).into_owned()));
            }
            b'=' => {
                tokens.push(Token::Equals);
                i += 1;
            }
            b';' => {
                tokens.push(Token::Semicolon);
                i += 1;
            }
            b')' => return None,
            _ => {
                let start = i;
                while i < value.len()
                    && !matches!(
                        value[i],
                        b' ' | b'\t' | b'\r' | b'\n' | b'(' | b')' | b'"' | b'=' | b';'
                    )
                {
                    i += 1;
                }
                tokens.push(Token::Word(
                    String::from_utf8_lossy(&value[start..i]).into_owned(),
                ));
            }
        }
    }
    Some(tokens)
}

/// Reads `i=N; authserv-id [version]; resinfo; ...`. `None` if the field is
/// not that shape at all; a single resinfo that does not parse is skipped.
pub fn parse(value: &[u8]) -> Option<ArcResults> {
    let tokens = tokenize(value)?;
    let mut segments = tokens.split(|t| *t == Token::Semicolon);

    let instance = match segments.next()? {
        [Token::Word(i), Token::Equals, Token::Word(n)] if i.eq_ignore_ascii_case("i") => {
            n.parse::<u32>().ok()?
        }
        _ => return None,
    };
    let authserv_id = match segments.next()? {
        [Token::Word(id)] | [Token::Word(id), Token::Word(_)] => id.clone(),
        [Token::Quoted(id)] | [Token::Quoted(id), Token::Word(_)] => id.clone(),
        _ => return None,
    };
    let results = segments.filter_map(resinfo).collect();
    Some(ArcResults {
        instance,
        authserv_id,
        results,
    })
}

fn resinfo(segment: &[Token]) -> Option<ResInfo> {
    let (method, result, mut rest) = match segment {
        [Token::Word(m), Token::Equals, Token::Word(r), rest @ ..] => (m, r, rest),
        _ => return None,
    };
    let method = method
        .split('/')
        .next()
        .unwrap_or(method)
        .to_ascii_lowercase();
    let mut properties = Vec::new();
    while !rest.is_empty() {
        match rest {
            [
                Token::Word(key),
                Token::Equals,
                Token::Word(v) | Token::Quoted(v),
                tail @ ..,
            ] => {
                properties.push((key.to_ascii_lowercase(), v.clone()));
                rest = tail;
            }
            _ => return None,
        }
    }
    Some(ResInfo {
        method,
        result: result.to_ascii_lowercase(),
        properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rfc8617_example_shape() {
        // RFC 8617 §4.1.1 and the example of Appendix B.
        let aar = parse(
            b"i=1; lists.example.org;\r\n\
              \tspf=pass smtp.mfrom=jqd@d1.example;\r\n\
              \tdkim=pass (1024-bit key) header.i=@d1.example;\r\n\
              \tdmarc=pass",
        )
        .unwrap();
        assert_eq!(aar.instance, 1);
        assert_eq!(aar.authserv_id, "lists.example.org");
        assert_eq!(aar.results.len(), 3);
        assert_eq!(aar.results[0].method, "spf");
        assert_eq!(
            aar.results[0].property("smtp.mfrom"),
            Some("jqd@d1.example")
        );
        assert_eq!(aar.results[1].method, "dkim");
        assert_eq!(aar.results[1].property("header.i"), Some("@d1.example"));
        assert_eq!(aar.results[2].result, "pass");
    }

    #[test]
    fn comments_and_quotes_do_not_fake_results() {
        // A comment (nested, with a quoted pair) holding "dkim=pass" is not
        // a result; a quoted value keeps its ';'.
        let aar = parse(
            b"i=2; mx.example (a (nested \\) dkim=pass header.d=example.org) comment);\r\n \
              dkim=fail (dkim=pass header.d=example.org) header.d=\"evil;example\"",
        )
        .unwrap();
        assert_eq!(aar.instance, 2);
        assert_eq!(aar.results.len(), 1);
        assert_eq!(aar.results[0].result, "fail");
        assert_eq!(aar.results[0].property("header.d"), Some("evil;example"));
    }

    #[test]
    fn versions_case_and_none() {
        let aar = parse(b"I=3; mx.example 1; DKIM/1=PASS Header.D=Example.ORG").unwrap();
        assert_eq!(aar.results[0].method, "dkim");
        assert_eq!(aar.results[0].result, "pass");
        assert_eq!(aar.results[0].property("header.d"), Some("Example.ORG"));
        assert!(parse(b"i=1; mx.example; none").unwrap().results.is_empty());
    }

    #[test]
    fn malformed_fields_give_nothing_usable() {
        for bad in [
            &b""[..],
            b"mx.example; dkim=pass header.d=example.org",
            b"i=x; mx.example; dkim=pass",
            b"i=1; mx.example; dkim=pass (unclosed comment",
            b"i=1; mx.example; dkim=pass header.d=\"unclosed",
            b"i=1; mx.example; dkim=pass header.d",
            b"i=1; mx.example) ; dkim=pass",
        ] {
            let usable = parse(bad).is_some_and(|a| !a.results.is_empty());
            assert!(!usable, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
