//! The list values of both readers: networks, domain names, `InternalHosts`
//! and `MacroList` (pyspf-milter datasets, also read from a file) and name
//! servers, each item checked and reported with its own line.

use std::net::SocketAddr;
use std::path::Path;

use super::Datasets;
use super::apply::{Cx, Raw, type_name};
use super::names::{CidrList, CidrNote, DomainName, HostPattern, MacroRule, parse_cidr};
use crate::dns::hickory::parse_nameserver;

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

pub(crate) fn cidr_list(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<CidrList> {
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

pub(crate) fn domain_list(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<Vec<DomainName>> {
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

pub(crate) fn host_list(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<Vec<HostPattern>> {
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

pub(crate) fn macro_list(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<Vec<MacroRule>> {
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

/// `nameservers`: `HOST` or `HOST:PORT` each.
pub(crate) fn nameservers(raw: Raw<'_>, cx: &mut Cx<'_>) -> Option<Vec<SocketAddr>> {
    let items = list(raw, ListKind::Domain, cx)?;
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
    ok.then_some(servers)
}
