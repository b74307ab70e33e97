//! The reader of policyd-spf's `policyd-spf.conf` (also pyspf-milter's),
//! with the grammar of docs/policyd-spf-compatibility.md §1, reporting every place where policyd-spf
//! would read the file differently from what its writer surely meant.

use std::collections::HashMap;

use super::apply::{Cx, Raw};
use super::choices::{AuthservId, HeaderType};
use super::declare::OptionInfo;
use super::diag::{Diagnostics, nearest};
use super::options::{OPTIONS, UNSUPPORTED, Unsupported};
use super::{Config, Datasets};

/// pyspf-milter's own keys: a file with one of them is a milter's.
const MILTER_KEYS: [&str; 6] = [
    "Socket",
    "PidFile",
    "UserID",
    "UMask",
    "InternalHosts",
    "MacroList",
];

enum Key {
    Option(&'static OptionInfo, &'static str),
    Unsupported(&'static Unsupported),
}

fn lookup(name: &str) -> Option<(Key, bool)> {
    for exact in [true, false] {
        let same = |k: &str| {
            if exact {
                k == name
            } else {
                k.eq_ignore_ascii_case(name)
            }
        };
        if let Some((o, legacy)) = OPTIONS
            .iter()
            .find_map(|o| o.legacy.filter(|l| same(l)).map(|l| (o, l)))
        {
            return Some((Key::Option(o, legacy), exact));
        }
        if let Some(u) = UNSUPPORTED.iter().find(|u| same(u.legacy)) {
            return Some((Key::Unsupported(u), exact));
        }
    }
    None
}

fn known_keys() -> impl Iterator<Item = &'static str> {
    OPTIONS
        .iter()
        .filter_map(|o| o.legacy)
        .chain(UNSUPPORTED.iter().map(|u| u.legacy))
}

pub(crate) fn parse(text: &str, file: &str, datasets: Datasets) -> (Config, Diagnostics) {
    let mut diags = Diagnostics::new(file);
    let mut cfg = Config::default();
    let mut seen: HashMap<&'static str, usize> = HashMap::new();
    let mut milter_file = false;

    for (index, line) in universal_lines(text).enumerate() {
        let number = Some(index + 1);
        // Everything after the first `#` is a comment, even inside a value
        // (a `#` in a Reason_URL is lost, as in policyd-spf).
        let content = line.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }
        let Some((key, rest)) = content.split_once('=') else {
            diags.error(
                number,
                format!(
                    "{content:?} has no '=': expected Key = Value (policyd-spf ignores such a line)"
                ),
            );
            continue;
        };
        let key = key.trim();
        let Some((found, exact)) = lookup(key) else {
            let hint = nearest(key, known_keys())
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            diags.error(
                number,
                format!("unknown key {key:?}{hint}; policyd-spf would ignore the line"),
            );
            continue;
        };
        let canonical = match &found {
            Key::Option(_, name) => *name,
            Key::Unsupported(u) => u.legacy,
        };
        if !exact {
            diags.warning(
                number,
                format!(
                    "{key:?} read as {canonical}; policyd-spf's key names are case-sensitive and it would ignore this line"
                ),
            );
        }
        // Only Reason_URL may contain '=': policyd-spf splits on every '=',
        // strips the pieces and, for Reason_URL, joins them again.
        let value = if canonical == "Reason_URL" {
            rest.split('=').map(str::trim).collect::<Vec<_>>().join("=")
        } else {
            if rest.contains('=') {
                diags.warning(
                    number,
                    format!(
                        "{canonical}: the value contains '=', which policyd-spf does not allow outside Reason_URL (it ignores the whole line); spfmilter reads the value as written"
                    ),
                );
            }
            rest.trim().to_owned()
        };
        if let Some(first) = seen.insert(canonical, index + 1) {
            diags.warning(
                number,
                format!(
                    "{canonical} is set again (also on line {first}); the last value counts, as in policyd-spf"
                ),
            );
        }
        if MILTER_KEYS.contains(&canonical) {
            milter_file = true;
        }
        match found {
            Key::Option(option, _) => {
                let mut cx = Cx {
                    diags: &mut diags,
                    line: number,
                    key: canonical.to_owned(),
                    datasets,
                };
                (option.apply)(&mut cfg, Raw::Legacy(&value), &mut cx);
            }
            Key::Unsupported(u) => unsupported(u, &value, number, &mut diags),
        }
    }

    deviations(&cfg, &seen, milter_file, &mut diags);
    (cfg, diags)
}

/// Lines as Python's universal newlines cut them (`\n`, `\r\n`, `\r`),
/// which is how policyd-spf reads the file.
fn universal_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\n', '\r']) {
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

/// A key that policyd-spf reads but spfmilter does not use.
pub(crate) fn unsupported(
    u: &Unsupported,
    value: &str,
    line: Option<usize>,
    diags: &mut Diagnostics,
) {
    let key = u.legacy;
    if u.legacy == "Mock" && value.eq_ignore_ascii_case("false") {
        diags.warning(
            line,
            format!(
                "{key} = {value} turns Mock ON in policyd-spf, which reads any non-empty value as true (only an empty value is off). {}",
                u.why
            ),
        );
    } else if value.is_empty() {
        diags.warning(line, format!("{key}: empty, ignored ({})", u.why));
    } else if u.refused {
        diags.error(line, format!("{key} is not supported: {}", u.why));
    } else {
        diags.warning(line, format!("{key}: {}", u.why));
    }
}

/// Differences that come from what the file does not say.
fn deviations(
    cfg: &Config,
    seen: &HashMap<&'static str, usize>,
    milter_file: bool,
    diags: &mut Diagnostics,
) {
    let header_line = seen.get("Header_Type").copied();
    if milter_file && cfg.milter.header_type == HeaderType::Spf {
        diags.warning(
            header_line,
            "pyspf-milter writes Authentication-Results whatever Header_Type says (unless None); spfmilter writes what it says, Received-SPF here. Write Header_Type = AR to keep pyspf-milter's header",
        );
    }
    let writes_ar = cfg.milter.header_type.authentication_results()
        || (milter_file && cfg.milter.header_type != HeaderType::None);
    if writes_ar
        && cfg.milter.authserv_id == AuthservId::MtaHostname
        && !seen.contains_key("Authserv_Id")
    {
        diags.warning(
            None,
            "Authserv_Id is not set: policyd-spf and pyspf-milter would use this machine's host name, spfmilter uses the MTA's (Postfix's $myhostname, the j macro), which OpenDMARC trusts by default. Write Authserv_Id = HOSTNAME to keep the host name",
        );
    }
}
