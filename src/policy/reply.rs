//! The text of a reject or defer: the `Reason_Message` and `Reason_URL`
//! templates (parsed when the configuration is read, filled in by the
//! decision) and the cleaning that makes the result one safe SMTP reply
//! line.

use std::fmt;
use std::str::FromStr;

/// At most this many bytes of reply text once every `%` is doubled; with
/// `550 5.7.23 ` in front it stays well inside Postfix's 980 bytes a line.
pub const MAX_REPLY_TEXT: usize = 900;

/// Makes `text` one safe SMTP reply line (see the module doc of `policy::decide`).
pub fn sanitize_reply(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_REPLY_TEXT));
    let mut budget = MAX_REPLY_TEXT;
    for c in text.chars() {
        let c = if c.is_control() {
            ' '
        } else if !c.is_ascii() {
            '?'
        } else {
            c
        };
        let cost = if c == '%' { 2 } else { 1 };
        if cost > budget {
            break;
        }
        budget -= cost;
        out.push(c);
    }
    out
}

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

/// A piece of a parsed template: literal text, or a field filled in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Part<F> {
    Text(String),
    Field(F),
}

pub type MessagePart = Part<MessageField>;

/// The fields of a template known by name, in order: `(name, field)`.
type Named<F> = [(&'static str, F)];

/// Parses a template whose fields are named in `known`; `what` names the
/// template in the error (`the reason message`).
fn parse_named<F: Copy>(s: &str, known: &Named<F>, what: &str) -> Result<Vec<Part<F>>, String> {
    check_text(s)?;
    split_template(s)?
        .into_iter()
        .map(|p| match p {
            Piece::Text(t) => Ok(Part::Text(t)),
            Piece::Field(name) => known
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, field)| Part::Field(*field))
                .ok_or_else(|| {
                    let names: Vec<String> =
                        known.iter().map(|(n, _)| format!("{{{n}}}")).collect();
                    let list = match names.split_last() {
                        Some((last, [])) => last.clone(),
                        Some((last, init)) => format!("{} and {last}", init.join(", ")),
                        None => String::new(),
                    };
                    format!("unknown placeholder {{{name}}}: {what} knows {list}")
                }),
        })
        .collect()
}

/// The template text of `parts`, each field written by `placeholder`
/// (braces in text doubled), as the configuration writer prints it.
fn write_parts<F: Copy>(
    f: &mut fmt::Formatter<'_>,
    parts: &[Part<F>],
    placeholder: impl Fn(F) -> String,
) -> fmt::Result {
    for part in parts {
        match part {
            Part::Text(t) => escape_braces(f, t)?,
            Part::Field(field) => write!(f, "{{{}}}", placeholder(*field))?,
        }
    }
    Ok(())
}

/// `parts` filled in: each field's text from `value`.
fn fill<'v, F: Copy>(parts: &[Part<F>], value: impl Fn(F) -> &'v str) -> String {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Field(field) => out.push_str(value(*field)),
        }
    }
    out
}

/// The names of `Reason_Message`'s fields.
const MESSAGE_FIELDS: &Named<MessageField> = &[
    ("rejectdefer", MessageField::RejectDefer),
    ("spf", MessageField::Spf),
    ("url", MessageField::Url),
];

/// The name of a field in `known`.
fn field_name<F: Copy + PartialEq>(known: &Named<F>, field: F) -> String {
    known
        .iter()
        .find(|(_, f)| *f == field)
        .map(|(n, _)| (*n).to_owned())
        .unwrap_or_default()
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
        // The default parses (tested); were it not to, no text at all.
        DEFAULT_REASON_MESSAGE
            .parse()
            .unwrap_or(ReasonMessage { parts: Vec::new() })
    }
}

impl FromStr for ReasonMessage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts = parse_named(s, MESSAGE_FIELDS, "the reason message")?;
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
        let mut out = fill(parts, |field| match field {
            MessageField::RejectDefer => rejectdefer,
            MessageField::Spf => spf,
            MessageField::Url => url,
        });
        out.push_str(last_text.unwrap_or_default());
        out
    }
}

impl fmt::Display for ReasonMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_parts(f, &self.parts, |field| field_name(MESSAGE_FIELDS, field))
    }
}

/// The default text of a block's reply (`[block] reply`).
pub const DEFAULT_BLOCK_REPLY: &str =
    "Mail from the SPF infrastructure of a blocked operator ({name}) is refused";

/// The part of `[block] reply` that is filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockField {
    /// `{name}`: the listed name that matched.
    Name,
    /// `{rule}`: `authorized_by` or `includes`.
    Rule,
}

pub type BlockPart = Part<BlockField>;

/// The names of `[block] reply`'s fields.
const BLOCK_FIELDS: &Named<BlockField> = &[("name", BlockField::Name), ("rule", BlockField::Rule)];

/// `[block] reply`, parsed at load: `{name}` and `{rule}`, with the
/// template syntax of `Reason_Message` (`{{` and `}}` for braces).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockReply {
    pub parts: Vec<BlockPart>,
}

impl Default for BlockReply {
    fn default() -> Self {
        // The default parses (tested); were it not to, no text at all.
        DEFAULT_BLOCK_REPLY
            .parse()
            .unwrap_or(BlockReply { parts: Vec::new() })
    }
}

impl FromStr for BlockReply {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts = parse_named(s, BLOCK_FIELDS, "the block reply")?;
        Ok(BlockReply { parts })
    }
}

impl BlockReply {
    /// The text, not yet made safe ([`sanitize_reply`]).
    pub fn render(&self, name: &str, rule: &str) -> String {
        fill(&self.parts, |field| match field {
            BlockField::Name => name,
            BlockField::Rule => rule,
        })
    }
}

impl fmt::Display for BlockReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_parts(f, &self.parts, |field| field_name(BLOCK_FIELDS, field))
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

pub type UrlPart = Part<UrlField>;

/// `Reason_URL`, parsed at load: `{0}`–`{3}` (or `{}` numbered in order,
/// as Python does).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReasonUrl {
    pub parts: Vec<UrlPart>,
}

impl Default for ReasonUrl {
    fn default() -> Self {
        // The default is empty: no URL.
        DEFAULT_REASON_URL
            .parse()
            .unwrap_or(ReasonUrl { parts: Vec::new() })
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
        fill(&self.parts, |field| values[field as usize])
    }
}

impl fmt::Display for ReasonUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_parts(f, &self.parts, |field| (field as usize).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn block_reply_template() {
        let d = BlockReply::default();
        assert_eq!(d.to_string(), DEFAULT_BLOCK_REPLY);
        assert_eq!(
            d.render("spf-stx.burn-oxygen.test", "includes"),
            "Mail from the SPF infrastructure of a blocked operator (spf-stx.burn-oxygen.test) is refused"
        );
        let own: BlockReply = "{{{rule}}} {name}".parse().unwrap();
        assert_eq!(
            own.render("x.test", "authorized_by"),
            "{authorized_by} x.test"
        );
        assert_eq!(own.to_string(), "{{{rule}}} {name}");
        for bad in ["{spf}", "{name", "}", "a\rb", "{0}"] {
            assert!(bad.parse::<BlockReply>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sanitize_reply_limits_and_cleans() {
        assert_eq!(sanitize_reply("a\tb\r\nc\u{7f}é"), "a b  c ?");
        let long = "x".repeat(2000);
        assert_eq!(sanitize_reply(&long).len(), MAX_REPLY_TEXT);
        // Every % counts twice: once escaped, the text still fits.
        let percents = "%".repeat(1000);
        let out = sanitize_reply(&percents);
        assert_eq!(out.len() * 2, MAX_REPLY_TEXT);
        let mixed = format!("{}%", "y".repeat(MAX_REPLY_TEXT - 1));
        assert_eq!(sanitize_reply(&mixed), "y".repeat(MAX_REPLY_TEXT - 1));
    }
}
