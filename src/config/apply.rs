//! The shared value parsers, for both readers: each turns a value as
//! written into a typed one, or reports why not. The legacy reader's values
//! are the raw text after `=`; it also gets the warnings that say where
//! policyd-spf would read the same text differently
//! (docs/policyd-spf-compatibility.md §1). TOML values are typed, and their
//! strings are matched case-insensitively (TOML is this project's own
//! format). Which option uses which parser is said where the option is
//! declared (`options.rs`); the lists are in `lists.rs`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::Datasets;
use super::choices::{AuthservId, HeaderType, LogLevel, RejectPolicy};
use super::diag::Diagnostics;
use super::socket::Mode;
use super::units::{duration_from_secs_f64, parse_byte_size, parse_duration};
use crate::policy::reply::ReasonUrl;
use crate::rescue::Method;

/// A value as written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Raw<'a> {
    /// The text after `=` in `policyd-spf.conf`, stripped.
    Legacy(&'a str),
    Toml(&'a toml::Value),
}

/// Where the value was written, for diagnostics.
pub(crate) struct Cx<'d> {
    pub diags: &'d mut Diagnostics,
    pub line: Option<usize>,
    /// The key as written (the legacy spelling for legacy files).
    pub key: String,
    pub datasets: Datasets,
}

impl Cx<'_> {
    pub(crate) fn error(&mut self, msg: impl std::fmt::Display) {
        let m = format!("{}: {msg}", self.key);
        self.diags.error(self.line, m);
    }

    pub(crate) fn warning(&mut self, msg: impl std::fmt::Display) {
        let m = format!("{}: {msg}", self.key);
        self.diags.warning(self.line, m);
    }
}

pub(crate) fn type_name(v: &toml::Value) -> &'static str {
    v.type_str()
}

/// A string value.
pub(crate) fn text(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<String> {
    match raw {
        Raw::Legacy(s) => Some(s.to_owned()),
        Raw::Toml(toml::Value::String(s)) => Some(s.clone()),
        Raw::Toml(v) => {
            cx.error(format_args!("expected a string, found {}", type_name(v)));
            None
        }
    }
}

/// Matches `s` against the names of an enumeration: exact, else
/// case-insensitively (a warning for legacy files, where policyd-spf
/// compares exactly and `reference` says what it would do instead).
pub(crate) fn choose<T: Copy>(
    s: &str,
    names: &[(&str, T)],
    legacy: bool,
    reference: &str,
    cx: &mut Cx<'_>,
) -> Option<T> {
    if let Some((_, v)) = names.iter().find(|(n, _)| *n == s) {
        return Some(*v);
    }
    if let Some((n, v)) = names.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)) {
        if legacy {
            cx.warning(format_args!(
                "{s:?} read as {n:?}; policyd-spf compares values case-sensitively and {reference}"
            ));
        }
        return Some(*v);
    }
    let listed: Vec<String> = names.iter().map(|(n, _)| format!("{n:?}")).collect();
    let hint = super::diag::nearest(s, names.iter().map(|(n, _)| *n))
        .map(|n| format!(" (did you mean {n:?}?)"))
        .unwrap_or_default();
    cx.error(format_args!(
        "{s:?} is not one of {}{hint}",
        listed.join(", ")
    ));
    None
}

/// A yes/no option. Legacy files spell it with policyd-spf's two words, of
/// which it compares one exactly (`True` of True/False, `No` of Yes/No) and
/// takes anything else for the other: case variants are accepted with a
/// warning that says how policyd-spf reads them, other words are errors.
pub(crate) fn flag(raw: Raw<'_>, on: &str, off: &str, cx: &mut Cx<'_>) -> Option<bool> {
    match raw {
        Raw::Toml(toml::Value::Boolean(b)) => Some(*b),
        Raw::Toml(toml::Value::String(s)) => {
            let names = [
                (on, true),
                (off, false),
                ("true", true),
                ("false", false),
                ("yes", true),
                ("no", false),
            ];
            choose(s, &names, false, "", cx)
        }
        Raw::Toml(v) => {
            cx.error(format_args!(
                "expected true or false, found {}",
                type_name(v)
            ));
            None
        }
        Raw::Legacy(s) => {
            // policyd-spf tests `== 'True'` but `!= 'No'`.
            let fallback = if on == "True" { off } else { on };
            let reference = format!("reads it as {fallback:?}");
            choose(s, &[(on, true), (off, false)], true, &reference, cx)
        }
    }
}

/// An integer: Python's `int()` syntax in legacy files (sign, digits,
/// single underscores between digits), a TOML integer otherwise.
pub(crate) fn integer(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<i64> {
    match raw {
        Raw::Toml(toml::Value::Integer(n)) => Some(*n),
        Raw::Toml(v) => {
            cx.error(format_args!("expected an integer, found {}", type_name(v)));
            None
        }
        Raw::Legacy(s) => {
            let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
            let valid = !digits.is_empty()
                && !digits.starts_with('_')
                && !digits.ends_with('_')
                && !digits.contains("__")
                && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_');
            match s.replace('_', "").parse::<i64>() {
                Ok(n) if valid => Some(n),
                _ => {
                    cx.error(format_args!(
                        "{s:?} is not an integer (policyd-spf would not start)"
                    ));
                    None
                }
            }
        }
    }
}

pub(crate) fn count(raw: Raw<'_>, min: i64, cx: &mut Cx<'_>) -> Option<u32> {
    let n = integer(raw, cx)?;
    match u32::try_from(n) {
        Ok(v) if n >= min => Some(v),
        _ => {
            cx.error(format_args!("{n} is out of range ({min} to {})", u32::MAX));
            None
        }
    }
}

/// A time limit: whole seconds in legacy files (policyd-spf's `int()`);
/// in TOML an integer or float of seconds, or a string with a unit.
pub(crate) fn duration(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<std::time::Duration> {
    let d = match raw {
        Raw::Legacy(_) => {
            let n = integer(raw, cx)?;
            duration_from_secs_f64(n as f64, &n.to_string())
        }
        Raw::Toml(toml::Value::Integer(n)) => duration_from_secs_f64(*n as f64, &n.to_string()),
        Raw::Toml(toml::Value::Float(x)) => duration_from_secs_f64(*x, &x.to_string()),
        Raw::Toml(toml::Value::String(s)) => parse_duration(s),
        Raw::Toml(v) => Err(format!(
            "expected seconds or a string such as \"1500ms\", found {}",
            type_name(v)
        )),
    };
    match d {
        Ok(d) if d.is_zero() => {
            cx.error("must be longer than zero");
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            cx.error(e);
            None
        }
    }
}

/// The smallest cache size but 0: below this the cache, split in shards,
/// holds too little to help.
pub(crate) const MIN_CACHE_SIZE: usize = 1 << 20;
/// The largest cache size accepted (64 GiB): more is a typo.
const MAX_CACHE_SIZE: u64 = 64 << 30;

/// A memory size: a TOML integer of bytes, or a string of digits with an
/// optional unit (K, M, G, also written KiB, MiB, GiB; binary multiples).
/// 0 (no cache), or from [`MIN_CACHE_SIZE`] to 64 GiB.
pub(crate) fn byte_size(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<usize> {
    let (bytes, shown) = read_size(raw, cx, "64M")?;
    match bytes {
        Some(n) if n == 0 || (MIN_CACHE_SIZE as u64..=MAX_CACHE_SIZE).contains(&n) => {
            usize::try_from(n).ok().or_else(|| {
                cx.error(format_args!("{shown} does not fit in this system's memory"));
                None
            })
        }
        Some(_) => {
            cx.error(format_args!(
                "{shown} is out of range (0 for no cache, or 1M to 64G)"
            ));
            None
        }
        None => {
            cx.error(format_args!(
                "{shown} is not a size (bytes, or a number with K, M or G: \"64M\")"
            ));
            None
        }
    }
}

/// A size's value as written: its bytes (`None` if it is no size) and how
/// an error shows it; `None` (an error reported) for a value of another
/// type. `example` is a size shown in that error.
fn read_size(raw: Raw<'_>, cx: &mut Cx<'_>, example: &str) -> Option<(Option<u64>, String)> {
    match raw {
        Raw::Toml(toml::Value::Integer(n)) => Some((u64::try_from(*n).ok(), n.to_string())),
        Raw::Toml(toml::Value::String(s)) => Some((parse_byte_size(s), format!("{s:?}"))),
        Raw::Legacy(s) => Some((parse_byte_size(s), format!("{s:?}"))),
        Raw::Toml(v) => {
            cx.error(format_args!(
                "expected bytes or a string such as \"{example}\", found {}",
                type_name(v)
            ));
            None
        }
    }
}

/// The smallest `max_message_size` / `max_held_bytes` (64 KiB): less
/// holds no real message.
pub(crate) const MIN_HELD_MESSAGE: usize = 64 << 10;
/// The largest `max_message_size` / `max_held_bytes` (64 GiB): more is a
/// typo.
pub(crate) const MAX_HELD_BYTES: usize = 64 << 30;

/// A memory size as [`byte_size`] reads it, from `min` to `max` bytes.
pub(crate) fn size_in(raw: Raw<'_>, cx: &mut Cx<'_>, min: usize, max: usize) -> Option<usize> {
    let (bytes, shown) = read_size(raw, cx, "10M")?;
    let Some(n) = bytes else {
        cx.error(format_args!(
            "{shown} is not a size (bytes, or a number with K, M or G: \"10M\")"
        ));
        return None;
    };
    match usize::try_from(n) {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            cx.error(format_args!(
                "{shown} is out of range ({} to {})",
                size_shown(min),
                size_shown(max)
            ));
            None
        }
    }
}

/// `64K`, `64G`: a bound as a message shows it.
fn size_shown(bytes: usize) -> String {
    super::units::size_to_toml(bytes)
        .trim_matches('"')
        .to_owned()
}

/// The names of the rescue methods, as written in `[rescue] methods`.
const METHODS: [(&str, Method); 2] = [("dkim", Method::Dkim), ("arc", Method::Arc)];

/// A rescue method's name in the file.
pub(crate) fn method_name(method: Method) -> &'static str {
    METHODS
        .iter()
        .find(|(_, m)| *m == method)
        .map_or("", |(n, _)| n)
}

/// `[rescue] methods`: a list of "dkim" and "arc" (any case), each at most
/// once; an unknown name is an error with the nearest one.
pub(crate) fn rescue_methods(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<Vec<Method>> {
    let values = match raw {
        Raw::Toml(toml::Value::Array(values)) => values.as_slice(),
        Raw::Toml(v) => {
            cx.error(format_args!(
                "expected a list such as [\"dkim\", \"arc\"], found {}",
                type_name(v)
            ));
            return None;
        }
        Raw::Legacy(_) => {
            cx.error("is a native option (spfmilter.toml, [rescue])");
            return None;
        }
    };
    let mut methods = Vec::new();
    let mut ok = true;
    for v in values {
        let Some(method) =
            text(Raw::Toml(v), cx).and_then(|t| choose(t.trim(), &METHODS, false, "", cx))
        else {
            ok = false;
            continue;
        };
        if methods.contains(&method) {
            cx.warning(format_args!("{:?} is listed twice", method_name(method)));
        } else {
            methods.push(method);
        }
    }
    ok.then_some(methods)
}

pub(crate) fn parsed<T>(
    raw: Raw<'_>,
    cx: &mut Cx<'_>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    let s = text(raw, cx)?;
    match parse(&s) {
        Ok(v) => Some(v),
        Err(e) => {
            cx.error(e);
            None
        }
    }
}

/// An optional text: the empty string leaves it unset.
pub(crate) fn optional<T>(
    raw: Raw<'_>,
    cx: &mut Cx<'_>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<Option<T>> {
    let s = text(raw, cx)?;
    if s.trim().is_empty() {
        return Some(None);
    }
    match parse(&s) {
        Ok(v) => Some(Some(v)),
        Err(e) => {
            cx.error(e);
            None
        }
    }
}

/// A mode: octal text in TOML (`"0660"`), or a TOML integer taken as its
/// value (write `0o660`). Legacy `UMask` is policyd-spf's decimal `int()`:
/// see [`legacy_umask`].
pub(crate) fn mode(raw: Raw<'_>, max: u32, cx: &mut Cx<'_>) -> Option<Option<Mode>> {
    match raw {
        Raw::Toml(toml::Value::Integer(n)) => match u32::try_from(*n) {
            Ok(v) if v <= max => Some(Some(Mode(v))),
            _ => {
                cx.error(format_args!("{n} is out of range (0 to 0o{max:o})"));
                None
            }
        },
        Raw::Legacy(s) => legacy_umask(s, cx).map(Some),
        _ => optional(raw, cx, |s| Mode::parse_octal(s.trim(), max)),
    }
}

/// pyspf-milter reads `UMask` with `int()`, in decimal: `UMask = 077` is the
/// umask 77 = 0o115, surely not what was meant. 0–7 mean the same in both
/// bases; a leading 0 shows octal was meant (taken as octal, warned);
/// anything else is ambiguous.
fn legacy_umask(s: &str, cx: &mut Cx<'_>) -> Option<Mode> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        cx.error(format_args!(
            "{s:?} is not a umask (octal digits with a leading 0, e.g. 027)"
        ));
        return None;
    }
    let decimal: u64 = s.parse().unwrap_or(u64::MAX);
    if decimal <= 7 {
        // The same in both bases.
        return Some(Mode(decimal as u32));
    }
    if s.starts_with('0') {
        return match Mode::parse_octal(s, 0o777) {
            Ok(m) => {
                cx.warning(format_args!(
                    "{s} read as the octal umask {m}; pyspf-milter reads it as the decimal number {decimal}"
                ));
                Some(m)
            }
            Err(e) => {
                cx.error(e);
                None
            }
        };
    }
    cx.error(format_args!(
        "{s:?} is ambiguous: pyspf-milter reads UMask as a decimal number, a umask is octal. Write it with a leading 0 (e.g. 027) to mean octal"
    ));
    None
}

/// One of the names of an enumeration (`on_internal_error`, `log.target`).
pub(crate) fn one_of<T: Copy, const N: usize>(
    raw: Raw<'_>,
    cx: &mut Cx<'_>,
    names: [(&'static str, T); N],
) -> Option<T> {
    let t = text(raw, cx)?;
    choose(&t, &names, false, "", cx)
}

/// `Err(text)` reported, `Ok` kept.
fn reported<T>(r: Result<T, String>, cx: &mut Cx<'_>) -> Option<T> {
    r.map_err(|e| cx.error(e)).ok()
}

/// `idle_timeout`: at most 2 hours; shorter than Postfix's `smtpd_timeout`
/// is allowed with a warning.
pub(crate) fn idle_timeout(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<Duration> {
    let v = duration(raw, cx)?;
    // indymilter's own time limit on reading one packet is
    // 7210 s: above it, this one would never be reached.
    if v > Duration::from_secs(7200) {
        cx.error("must be at most 7200 seconds (2 hours)");
        return None;
    }
    if v < Duration::from_secs(300) {
        cx.warning(format_args!(
            "shorter than Postfix's smtpd_timeout (300 s by default): \
             a session waiting that long for its SMTP client loses the milter \
             (Postfix then applies milter_default_action)"
        ));
    }
    Some(v)
}

/// `Authserv_Id`: empty in a legacy file is the MTA's host name, with a
/// warning (policyd-spf cannot use an empty one).
pub(crate) fn authserv_id(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<AuthservId> {
    let legacy = matches!(raw, Raw::Legacy(_));
    let t = text(raw, cx)?;
    if t.trim().is_empty() && legacy {
        cx.warning("empty: policyd-spf cannot write Authentication-Results with it; spfmilter uses the MTA's host name (Postfix's j macro), as when the option is not set");
        return Some(AuthservId::MtaHostname);
    }
    reported(AuthservId::parse(&t), cx)
}

/// `PidFile`: an absolute path, or empty for none.
pub(crate) fn pid_file(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<Option<PathBuf>> {
    optional(raw, cx, |t| {
        let path = PathBuf::from(t);
        if path.is_absolute() {
            Ok(path)
        } else {
            Err(format!("{t:?} is not an absolute path"))
        }
    })
}

/// `test_mode`, or legacy `TestOnly`: an integer, 0 = test mode.
pub(crate) fn test_mode(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<bool> {
    match raw {
        Raw::Legacy(_) => integer(raw, cx).map(|n| n == 0),
        Raw::Toml(_) => flag(raw, "true", "false", cx),
    }
}

/// policyd-spf's `TestOnly` written in TOML keeps its integer meaning (0 =
/// test mode): it is not a spelling of `test_mode`, whose values are
/// booleans.
pub(crate) fn test_only_in_toml(value: &toml::Value, cx: &mut Cx<'_>) -> Option<bool> {
    match value {
        toml::Value::Integer(n) => Some(*n == 0),
        other => {
            cx.diags.error(
                cx.line,
                format!(
                    "TestOnly: expected an integer (0 = test mode), found {}; or write test_mode = true",
                    other.type_str()
                ),
            );
            None
        }
    }
}

/// `Prospective`: an IP address, or empty for none.
pub(crate) fn prospective(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<Option<IpAddr>> {
    optional(raw, cx, |t| {
        t.trim()
            .parse::<IpAddr>()
            .map_err(|_| format!("{t:?} is not an IP address"))
    })
}

/// `Reason_URL`: empty in a legacy file is no URL, with a warning.
pub(crate) fn reason_url(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<ReasonUrl> {
    let t = text(raw, cx)?;
    if matches!(raw, Raw::Legacy(_)) && t.is_empty() {
        // policyd-spf falls back to its (defunct) default URL;
        // spfmilter's default is no URL.
        cx.warning("empty: no URL in replies (policyd-spf would show its defunct default, http://www.openspf.net/Why?…)");
    }
    reported(t.parse::<ReasonUrl>(), cx)
}

/// `metrics.listen`: ADDRESS:PORT, or empty for none; a warning unless on
/// loopback.
pub(crate) fn metrics_listen(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<Option<SocketAddr>> {
    let v = optional(raw, cx, |t| {
        t.trim()
            .parse::<SocketAddr>()
            .map_err(|_| format!("{t:?} is not ADDRESS:PORT (\"127.0.0.1:9891\", \"[::1]:9891\")"))
    })?;
    if let Some(addr) = v
        && !addr.ip().is_loopback()
    {
        cx.warning(format!(
            "{addr} is not a loopback address: the metrics endpoint has no access control"
        ));
    }
    Some(v)
}

pub(crate) fn account_name(t: &str) -> Result<String, String> {
    let valid = t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
    if valid {
        Ok(t.to_owned())
    } else {
        Err(format!("{t:?} is not a user or group name"))
    }
}

pub(crate) fn policy(raw: Raw<'_>, helo: bool, cx: &mut Cx<'_>) -> Option<RejectPolicy> {
    let legacy = matches!(raw, Raw::Legacy(_));
    // TOML `false` is the policy False.
    let t = match raw {
        Raw::Toml(toml::Value::Boolean(false)) => "False".to_owned(),
        _ => text(raw, cx)?,
    };
    let names = RejectPolicy::ALL.map(|p| (p.as_str(), p));
    let reference = if helo {
        "would reject nothing on HELO (PermError_reject and TempError_Defer still applying)"
    } else {
        "would reject nothing on MAIL FROM (PermError_reject and TempError_Defer still applying)"
    };
    let v = choose(&t, &names, legacy, reference, cx)?;
    if !helo && v == RejectPolicy::Null {
        cx.error("Null applies to HELO_reject only (it rejects a HELO Fail for the null sender); policyd-spf would reject nothing on MAIL FROM with it. Use Fail or False");
        return None;
    }
    Some(v)
}

pub(crate) fn header_type(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<HeaderType> {
    let legacy = matches!(raw, Raw::Legacy(_));
    let t = match raw {
        Raw::Toml(toml::Value::Array(items)) => {
            let mut parts = Vec::new();
            for i in items {
                match i {
                    toml::Value::String(s) => parts.push(s.trim().to_owned()),
                    other => {
                        cx.error(format_args!(
                            "expected \"SPF\", \"AR\", \"SPF,AR\" or \"None\", but one item is of type {}",
                            type_name(other)
                        ));
                        return None;
                    }
                }
            }
            parts.join(",")
        }
        _ => text(raw, cx)?,
    };
    let compact: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    let both = compact.eq_ignore_ascii_case("SPF,AR")
        || compact.eq_ignore_ascii_case("AR,SPF")
        || compact.eq_ignore_ascii_case("both");
    if both {
        if legacy {
            cx.warning(format_args!(
                "{t:?}: both headers is an extension of spfmilter; policyd-spf refuses it at the first message"
            ));
        }
        return Some(HeaderType::Both);
    }
    let names = [
        ("SPF", HeaderType::Spf),
        ("AR", HeaderType::Ar),
        ("None", HeaderType::None),
    ];
    choose(
        &t,
        &names,
        legacy,
        "would not understand it (it looks for the letters AR and the exact word None)",
        cx,
    )
}

pub(crate) fn log_level(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<LogLevel> {
    if let Raw::Toml(toml::Value::String(s)) = raw {
        let names = LogLevel::ALL.map(|l| (l.name(), l));
        return choose(s, &names, false, "", cx);
    }
    let n = integer(raw, cx)?;
    match LogLevel::from_int(n) {
        None => {
            cx.error(format_args!("{n} is below -1 (nothing is logged at -1)"));
            None
        }
        Some(l) => {
            if n > 5 {
                cx.warning(format_args!("{n} logs as much as 5, the most there is"));
            }
            Some(l)
        }
    }
}
