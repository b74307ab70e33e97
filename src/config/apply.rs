//! One place that turns a written value into a typed option, for both
//! readers. The legacy reader's values are the raw text after `=`; it also
//! gets the warnings that say where policyd-spf would read the same text
//! differently (docs/policyd-spf-compatibility.md §1). TOML values are typed, and their strings are
//! matched case-insensitively (TOML is this project's own format).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::choices::{
    AuthservId, HeaderType, InternalErrorAction, LogLevel, LogTarget, RejectPolicy,
};
use super::diag::Diagnostics;
use super::names::{CidrList, CidrNote, DomainName, HostPattern, MacroRule, parse_cidr};
use super::options::Opt;
use super::socket::{Mode, SocketSpec, UserSpec};
use super::units::{duration_from_secs_f64, parse_byte_size, parse_duration};
use super::{Config, Datasets};
use crate::dns::hickory::parse_nameserver;
use crate::policy::reply::{ReasonMessage, ReasonUrl};

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
    fn error(&mut self, msg: impl std::fmt::Display) {
        let m = format!("{}: {msg}", self.key);
        self.diags.error(self.line, m);
    }

    fn warning(&mut self, msg: impl std::fmt::Display) {
        let m = format!("{}: {msg}", self.key);
        self.diags.warning(self.line, m);
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    v.type_str()
}

/// A string value.
fn text(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<String> {
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
fn choose<T: Copy>(
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
fn flag(raw: Raw<'_>, on: &str, off: &str, cx: &mut Cx<'_>) -> Option<bool> {
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
fn integer(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<i64> {
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

fn count(raw: Raw<'_>, min: i64, cx: &mut Cx<'_>) -> Option<u32> {
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
fn duration(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<std::time::Duration> {
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
fn byte_size(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<usize> {
    let (bytes, shown) = match raw {
        Raw::Toml(toml::Value::Integer(n)) => (u64::try_from(*n).ok(), n.to_string()),
        Raw::Toml(toml::Value::String(s)) => (parse_byte_size(s), format!("{s:?}")),
        Raw::Legacy(s) => (parse_byte_size(s), format!("{s:?}")),
        Raw::Toml(v) => {
            cx.error(format_args!(
                "expected bytes or a string such as \"64M\", found {}",
                type_name(v)
            ));
            return None;
        }
    };
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

/// What a legacy list is, for the warnings about how policyd-spf would
/// read it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ListKind {
    /// `skip_addresses`, `Whitelist`: policyd-spf splits on commas without
    /// stripping and stops at the first item it cannot parse.
    Cidr,
    /// Domain lists: split without stripping, compared as written.
    Domain,
    /// pyspf-milter datasets: stripped, `csl:` prefix, file datasets.
    Dataset,
}

/// The items of a list, each with the line it came from (datasets read
/// from a file carry `(file, line)` for messages).
struct Item {
    text: String,
    origin: Option<String>,
}

fn list(raw: Raw<'_>, kind: ListKind, cx: &mut Cx<'_>) -> Option<Vec<Item>> {
    let items = match raw {
        Raw::Toml(toml::Value::Array(values)) => {
            let mut items = Vec::new();
            for v in values {
                match v {
                    toml::Value::String(s) => items.push(Item {
                        text: s.trim().to_owned(),
                        origin: None,
                    }),
                    other => {
                        cx.error(format_args!(
                            "expected a list of strings, but one item is of type {}",
                            type_name(other)
                        ));
                        return None;
                    }
                }
            }
            if kind == ListKind::Dataset
                && let [one] = items.as_slice()
                && is_file_dataset(&one.text)
            {
                let path = one.text.clone();
                return read_dataset(&path, cx);
            }
            items
        }
        Raw::Toml(toml::Value::String(s)) => {
            if kind == ListKind::Dataset && is_file_dataset(s.trim()) {
                return read_dataset(s.trim(), cx);
            }
            split_items(s)
        }
        Raw::Toml(v) => {
            cx.error(format_args!(
                "expected a list of strings, found {}",
                type_name(v)
            ));
            return None;
        }
        Raw::Legacy(s) => legacy_items(s, kind, cx)?,
    };
    Some(items.into_iter().filter(|i| !i.text.is_empty()).collect())
}

fn split_items(s: &str) -> Vec<Item> {
    if s.trim().is_empty() {
        return Vec::new();
    }
    s.split(',')
        .map(|i| Item {
            text: i.trim().to_owned(),
            origin: None,
        })
        .collect()
}

fn is_file_dataset(s: &str) -> bool {
    s.starts_with('/') || s.starts_with("file:") || s.starts_with("refile:") || s.starts_with("db:")
}

fn legacy_items(s: &str, kind: ListKind, cx: &mut Cx<'_>) -> Option<Vec<Item>> {
    if kind == ListKind::Dataset {
        if is_file_dataset(s) {
            return read_dataset(s, cx);
        }
        let s = s.strip_prefix("csl:").unwrap_or(s);
        return Some(split_items(s));
    }
    // policyd-spf skips the option when the value is empty.
    if s.is_empty() {
        return Some(Vec::new());
    }
    let raw_items: Vec<&str> = s.split(',').collect();
    let spaced: Vec<&str> = raw_items
        .iter()
        .copied()
        .filter(|i| !i.is_empty() && i.trim() != *i)
        .collect();
    if let Some(first) = spaced.first() {
        let consequence = match kind {
            ListKind::Cidr => format!("it cannot parse {first:?} and stops reading the list there"),
            _ => format!("{first:?} would never match"),
        };
        cx.warning(format_args!(
            "spaces around list items, which policyd-spf does not strip ({consequence}); spfmilter ignores them. Write the list without spaces"
        ));
    }
    if raw_items.iter().any(|i| i.trim().is_empty()) {
        let consequence = if kind == ListKind::Cidr {
            "policyd-spf stops reading the list at an empty item"
        } else {
            "policyd-spf keeps it, harmlessly"
        };
        cx.warning(format_args!(
            "empty list item (a doubled or trailing comma) ignored; {consequence}"
        ));
    }
    Some(
        raw_items
            .into_iter()
            .map(|i| Item {
                text: i.trim().to_owned(),
                origin: None,
            })
            .collect(),
    )
}

/// Reads a pyspf-milter file dataset: one entry per line, `#` lines and
/// blank lines skipped.
fn read_dataset(spec: &str, cx: &mut Cx<'_>) -> Option<Vec<Item>> {
    let path = if let Some(p) = spec.strip_prefix("file:") {
        p
    } else if spec.starts_with("refile:") || spec.starts_with("db:") {
        cx.error(format_args!(
            "{spec:?}: only plain file datasets (file:/path or /path) are supported"
        ));
        return None;
    } else {
        spec
    };
    if cx.datasets == Datasets::Refuse {
        cx.error(format_args!(
            "{spec:?}: file datasets are not read here; list the entries in the value"
        ));
        return None;
    }
    let text = match super::read_limited(Path::new(path)) {
        Ok(t) => t,
        Err(e) => {
            cx.error(e);
            return None;
        }
    };
    Some(
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|(n, l)| Item {
                text: l.trim().to_owned(),
                origin: Some(format!("{path}:{}", n + 1)),
            })
            .collect(),
    )
}

fn item_error(cx: &mut Cx<'_>, item: &Item, msg: &str) {
    match &item.origin {
        Some(o) => cx.error(format_args!("{o}: {msg}")),
        None => cx.error(msg),
    }
}

fn cidr_list(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<CidrList> {
    let items = list(raw, ListKind::Cidr, cx)?;
    let legacy = matches!(raw, Raw::Legacy(_));
    let mut nets = Vec::new();
    let mut ok = true;
    let total = items.len();
    for (i, item) in items.iter().enumerate() {
        match parse_cidr(&item.text) {
            Ok((net, note)) => {
                if note == Some(CidrNote::DoubleSlash) {
                    let consequence = if legacy {
                        " policyd-spf cannot parse it and stops reading the list there, so it and everything after it are silently not matched;"
                    } else {
                        ""
                    };
                    cx.warning(format_args!(
                        "{:?} uses the old // spelling;{consequence} read as {net}",
                        item.text
                    ));
                }
                nets.push(net);
            }
            Err(e) => {
                ok = false;
                let rest = total - i - 1;
                let consequence = if legacy && rest > 0 {
                    format!(
                        " (policyd-spf would silently ignore it and the {rest} entr{} after it)",
                        if rest == 1 { "y" } else { "ies" }
                    )
                } else {
                    String::new()
                };
                item_error(cx, item, &format!("{e}{consequence}"));
            }
        }
    }
    ok.then(|| CidrList::new(nets))
}

fn domain_list(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<Vec<DomainName>> {
    let items = list(raw, ListKind::Domain, cx)?;
    let mut names = Vec::new();
    let mut ok = true;
    for item in &items {
        match DomainName::parse(&item.text) {
            Ok(n) => names.push(n),
            Err(e) => {
                ok = false;
                item_error(cx, item, &e);
            }
        }
    }
    ok.then_some(names)
}

fn host_list(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<Vec<HostPattern>> {
    let items = list(raw, ListKind::Dataset, cx)?;
    let mut hosts = Vec::new();
    let mut ok = true;
    for item in &items {
        match HostPattern::parse(&item.text) {
            Ok((p, note)) => {
                if note == Some(CidrNote::DoubleSlash) {
                    cx.warning(format_args!(
                        "{:?} uses the old // spelling; read as {p}",
                        item.text
                    ));
                }
                hosts.push(p);
            }
            Err(e) => {
                ok = false;
                item_error(cx, item, &e);
            }
        }
    }
    ok.then_some(hosts)
}

fn macro_list(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<Vec<MacroRule>> {
    let items = list(raw, ListKind::Dataset, cx)?;
    let mut rules = Vec::new();
    let mut ok = true;
    for item in &items {
        match MacroRule::parse(&item.text) {
            Ok(r) => rules.push(r),
            Err(e) => {
                ok = false;
                item_error(cx, item, &e);
            }
        }
    }
    ok.then_some(rules)
}

fn parsed<T>(
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
fn optional<T>(
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
fn mode(raw: Raw<'_>, max: u32, cx: &mut Cx<'_>) -> Option<Option<Mode>> {
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

/// Sets option `opt` of `cfg` from `raw`. On error nothing is set (the
/// error is reported and the load fails anyway).
pub(crate) fn apply(cfg: &mut Config, opt: Opt, raw: Raw<'_>, cx: &mut Cx<'_>) {
    let legacy = matches!(raw, Raw::Legacy(_));
    let m = &mut cfg.milter;
    let p = &mut cfg.policy;
    let s = &mut cfg.skip;
    match opt {
        Opt::Socket => {
            if let Some(v) = parsed(raw, cx, |t| t.parse::<SocketSpec>()) {
                m.socket = v;
            }
        }
        Opt::SocketMode => {
            if let Some(v) = mode(raw, 0o7777, cx) {
                m.socket_mode = v;
            }
        }
        Opt::SocketOwner => {
            if let Some(v) = optional(raw, cx, account_name) {
                m.socket_owner = v;
            }
        }
        Opt::SocketGroup => {
            if let Some(v) = optional(raw, cx, account_name) {
                m.socket_group = v;
            }
        }
        Opt::MaxConnections => {
            if let Some(v) = count(raw, 1, cx) {
                m.max_connections = v;
            }
        }
        Opt::DecisionTimeLimit => {
            if let Some(v) = duration(raw, cx) {
                m.decision_time_limit = v;
            }
        }
        Opt::IdleTimeout => {
            if let Some(v) = duration(raw, cx) {
                // indymilter's own time limit on reading one packet is
                // 7210 s: above it, this one would never be reached.
                if v > std::time::Duration::from_secs(7200) {
                    cx.error("must be at most 7200 seconds (2 hours)");
                } else {
                    if v < std::time::Duration::from_secs(300) {
                        cx.warning(format_args!(
                            "shorter than Postfix's smtpd_timeout (300 s by default): \
                             a session waiting that long for its SMTP client loses the milter \
                             (Postfix then applies milter_default_action)"
                        ));
                    }
                    m.idle_timeout = v;
                }
            }
        }
        Opt::OnInternalError => {
            if let Some(t) = text(raw, cx) {
                let names = InternalErrorAction::ALL.map(|a| (a.as_str(), a));
                if let Some(v) = choose(&t, &names, false, "", cx) {
                    m.on_internal_error = v;
                }
            }
        }
        Opt::HeaderType => {
            if let Some(v) = header_type(raw, cx) {
                m.header_type = v;
            }
        }
        Opt::AuthservId => {
            if let Some(t) = text(raw, cx) {
                if t.trim().is_empty() && legacy {
                    cx.warning("empty: policyd-spf cannot write Authentication-Results with it; spfmilter uses the MTA's host name (Postfix's j macro), as when the option is not set");
                    m.authserv_id = AuthservId::MtaHostname;
                } else {
                    match AuthservId::parse(&t) {
                        Ok(v) => m.authserv_id = v,
                        Err(e) => cx.error(e),
                    }
                }
            }
        }
        Opt::HideReceiver => {
            if let Some(v) = flag(raw, "Yes", "No", cx) {
                m.hide_receiver = v;
            }
        }
        Opt::RemoveForgedHeaders => {
            if let Some(v) = flag(raw, "true", "false", cx) {
                m.remove_forged_headers = v;
            }
        }
        Opt::PidFile => {
            let v = optional(raw, cx, |t| {
                let path = PathBuf::from(t);
                if path.is_absolute() {
                    Ok(path)
                } else {
                    Err(format!("{t:?} is not an absolute path"))
                }
            });
            if let Some(v) = v {
                m.pid_file = v;
            }
        }
        Opt::User => {
            if let Some(v) = optional(raw, cx, |t| t.parse::<UserSpec>()) {
                m.user = v;
            }
        }
        Opt::Umask => {
            if let Some(v) = mode(raw, 0o777, cx) {
                m.umask = v;
            }
        }
        Opt::HeloReject => {
            if let Some(v) = policy(raw, true, cx) {
                p.helo_reject = v;
            }
        }
        Opt::MailFromReject => {
            if let Some(v) = policy(raw, false, cx) {
                p.mail_from_reject = v;
            }
        }
        Opt::PermErrorReject => {
            if let Some(v) = flag(raw, "True", "False", cx) {
                p.permerror_reject = v;
            }
        }
        Opt::TempErrorDefer => {
            if let Some(v) = flag(raw, "True", "False", cx) {
                p.temperror_defer = v;
            }
        }
        Opt::NoMail => {
            if let Some(v) = flag(raw, "True", "False", cx) {
                p.no_mail = v;
            }
        }
        Opt::RejectNotPassDomains => {
            if let Some(v) = domain_list(raw, cx) {
                p.reject_not_pass_domains = v;
            }
        }
        Opt::TestMode => {
            // Legacy TestOnly: an integer, 0 = test mode.
            let v = if legacy {
                integer(raw, cx).map(|n| n == 0)
            } else {
                flag(raw, "true", "false", cx)
            };
            if let Some(v) = v {
                p.test_mode = v;
            }
        }
        Opt::Prospective => {
            let v = optional(raw, cx, |t| {
                t.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| format!("{t:?} is not an IP address"))
            });
            if let Some(v) = v {
                p.prospective = v;
            }
        }
        Opt::EnhancedStatusCodes => {
            if let Some(v) = flag(raw, "Yes", "No", cx) {
                p.enhanced_status_codes = v;
            }
        }
        Opt::ReasonMessage => {
            if let Some(v) = parsed(raw, cx, |t| t.parse::<ReasonMessage>()) {
                p.reason_message = v;
            }
        }
        Opt::ReasonUrl => {
            if let Some(t) = text(raw, cx) {
                if legacy && t.is_empty() {
                    // policyd-spf falls back to its (defunct) default URL;
                    // spfmilter's default is no URL.
                    cx.warning("empty: no URL in replies (policyd-spf would show its defunct default, http://www.openspf.net/Why?…)");
                }
                match t.parse::<ReasonUrl>() {
                    Ok(v) => p.reason_url = v,
                    Err(e) => cx.error(e),
                }
            }
        }
        Opt::SkipAddresses => {
            if let Some(v) = cidr_list(raw, cx) {
                s.skip_addresses = v;
            }
        }
        Opt::Whitelist => {
            if let Some(v) = cidr_list(raw, cx) {
                s.whitelist = v;
            }
        }
        Opt::DomainWhitelist => {
            if let Some(v) = domain_list(raw, cx) {
                s.domain_whitelist = v;
            }
        }
        Opt::HeloWhitelist => {
            if let Some(v) = domain_list(raw, cx) {
                s.helo_whitelist = v;
            }
        }
        Opt::DomainWhitelistPtr => {
            if let Some(v) = domain_list(raw, cx) {
                s.domain_whitelist_ptr = v;
            }
        }
        Opt::InternalHosts => {
            if let Some(v) = host_list(raw, cx) {
                s.internal_hosts = v;
            }
        }
        Opt::MacroList => {
            if let Some(v) = macro_list(raw, cx) {
                s.macro_list = v;
            }
        }
        Opt::SkipAuthenticated => {
            if let Some(v) = flag(raw, "true", "false", cx) {
                s.skip_authenticated = v;
            }
        }
        Opt::LookupLimit => {
            if let Some(v) = count(raw, 1, cx) {
                cfg.spf.lookup_limit = v;
            }
        }
        Opt::VoidLimit => {
            if let Some(v) = count(raw, 0, cx) {
                cfg.spf.void_limit = v;
            }
        }
        Opt::LookupTime => {
            if let Some(v) = duration(raw, cx) {
                cfg.spf.lookup_time = v;
            }
        }
        Opt::WhitelistLookupTime => {
            if let Some(v) = duration(raw, cx) {
                cfg.spf.whitelist_lookup_time = v;
            }
        }
        Opt::Nameservers => {
            if let Some(items) = list(raw, ListKind::Domain, cx) {
                let mut servers = Vec::new();
                let mut ok = true;
                for item in &items {
                    match parse_nameserver(&item.text) {
                        Ok(a) => servers.push(a),
                        Err(e) => {
                            ok = false;
                            item_error(cx, item, &e);
                        }
                    }
                }
                if ok {
                    cfg.dns.nameservers = servers;
                }
            }
        }
        Opt::DnsTimeout => {
            if let Some(v) = duration(raw, cx) {
                cfg.dns.timeout = v;
            }
        }
        Opt::DnsCacheSize => {
            if let Some(v) = byte_size(raw, cx) {
                cfg.dns.cache_size = v;
            }
        }
        Opt::LogTarget => {
            if let Some(t) = text(raw, cx) {
                let names = LogTarget::ALL.map(|a| (a.as_str(), a));
                if let Some(v) = choose(&t, &names, false, "", cx) {
                    cfg.log.target = v;
                }
            }
        }
        Opt::LogLevel => {
            if let Some(v) = log_level(raw, cx) {
                cfg.log.level = v;
            }
        }
        Opt::MetricsListen => {
            let v = optional(raw, cx, |t| {
                t.trim().parse::<std::net::SocketAddr>().map_err(|_| {
                    format!("{t:?} is not ADDRESS:PORT (\"127.0.0.1:9891\", \"[::1]:9891\")")
                })
            });
            if let Some(v) = v {
                if let Some(addr) = v
                    && !addr.ip().is_loopback()
                {
                    cx.warning(format!(
                        "{addr} is not a loopback address: the metrics endpoint has no access control"
                    ));
                }
                cfg.metrics.listen = v;
            }
        }
    }
}

fn account_name(t: &str) -> Result<String, String> {
    let valid = t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
    if valid {
        Ok(t.to_owned())
    } else {
        Err(format!("{t:?} is not a user or group name"))
    }
}

fn policy(raw: Raw<'_>, helo: bool, cx: &mut Cx<'_>) -> Option<RejectPolicy> {
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

fn header_type(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<HeaderType> {
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

fn log_level(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<LogLevel> {
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
