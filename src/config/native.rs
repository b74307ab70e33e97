//! The reader of the native TOML file.
//!
//! One walk over the parsed document with its spans finds each option under
//! its TOML key or its policyd-spf key (the list in `options.rs`) and
//! reports every key that is not an option (with the nearest one), so that
//! all of them are found at once; then each value written goes to its
//! option's parser, with the line it is on.

use std::collections::HashMap;

use serde::Deserialize as _;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::apply::{Cx, Raw};
use super::declare::find;
use super::diag::{Diagnostics, LineIndex, nearest};
use super::options::{OPTIONS, TABLES, UNSUPPORTED};
use super::{Config, Datasets};

/// An option found in the file.
struct Written<'t> {
    /// `table.key` as written (the policyd-spf spelling, if used).
    key: String,
    value: Spanned<DeValue<'t>>,
    /// Written with its policyd-spf key, which means something else in
    /// TOML (`TestOnly`: see `OptionInfo::legacy_in_toml`).
    legacy_meaning: bool,
}

pub(crate) fn parse(text: &str, file: &str, datasets: Datasets) -> (Config, Diagnostics) {
    let mut diags = Diagnostics::new(file);
    let mut cfg = Config::default();
    let lines = LineIndex::new(text);
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map(|s| lines.line(s.start));
            let mut message = format!("not valid TOML: {}", e.message().trim_end());
            if looks_legacy(text) {
                message.push_str(
                    " (this looks like a policyd-spf.conf: read it with --policyd-conf, or convert it with `spfmilter config convert`)",
                );
            }
            diags.error(line, message);
            return (cfg, diags);
        }
    };
    let Some(written) = check_keys(doc.get_ref(), &lines, &mut diags) else {
        return (cfg, diags);
    };
    // In the order of the option list, whatever the file's order.
    for (index, option) in OPTIONS.iter().enumerate() {
        let Some(w) = written.get(&index) else {
            continue;
        };
        let line = Some(lines.line(w.value.span().start));
        let value = match toml::Value::deserialize(ValueDeserializer::from(w.value.clone())) {
            Ok(value) => value,
            Err(e) => {
                let line = e.span().map(|s| lines.line(s.start)).or(line);
                diags.error(line, e.message().trim_end().to_owned());
                continue;
            }
        };
        let mut cx = Cx {
            diags: &mut diags,
            line,
            key: w.key.clone(),
            datasets,
        };
        match option.legacy_in_toml {
            Some(apply) if w.legacy_meaning => apply(&mut cfg, &value, &mut cx),
            _ => (option.apply)(&mut cfg, Raw::Toml(&value), &mut cx),
        }
    }
    check_rescue(&cfg, &written, &lines, &mut diags);
    (cfg, diags)
}

/// What the `[rescue]` options mean together: `"arc"` with no trusted
/// sealer rescues nothing by ARC (a warning, on the `methods` line); a
/// message limit above the total is an error (such a message could only
/// ever be deferred).
fn check_rescue(
    cfg: &Config,
    written: &HashMap<usize, Written<'_>>,
    lines: &LineIndex,
    diags: &mut Diagnostics,
) {
    let line_of = |key: &str| {
        OPTIONS
            .iter()
            .position(|o| o.table == "rescue" && o.key == key)
            .and_then(|i| written.get(&i))
            .map(|w| lines.line(w.value.span().start))
    };
    let r = &cfg.rescue;
    if r.methods.contains(&crate::rescue::Method::Arc) && r.trusted_arc_sealers.is_empty() {
        diags.warning(
            line_of("methods"),
            "rescue.methods: \"arc\" rescues nothing while rescue.trusted_arc_sealers is empty: list the forwarders and lists whose ARC seals you trust",
        );
    }
    if r.max_message_size > r.max_held_bytes {
        diags.error(
            line_of("max_message_size").or_else(|| line_of("max_held_bytes")),
            format!(
                "rescue.max_message_size ({} bytes) is larger than rescue.max_held_bytes ({} bytes): such a message could only be deferred",
                r.max_message_size, r.max_held_bytes
            ),
        );
    }
}

/// policyd-spf.conf lines (`Key = Value` with a bare word value) are
/// mostly not TOML; say so when such a file fails to parse.
fn looks_legacy(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.split('#').next().unwrap_or_default();
        l.split_once('=').is_some_and(|(k, _)| {
            let k = k.trim();
            OPTIONS.iter().any(|o| o.legacy == Some(k))
        })
    })
}

/// Pass 1: every key of the document must be a table of ours or an option
/// of its table. Returns the key spelling used for each option (for
/// messages), or `None` when the structure itself is wrong (a table that
/// is not one, an option given twice through its alias).
fn check_keys<'t>(
    doc: &DeTable<'t>,
    lines: &LineIndex,
    diags: &mut Diagnostics,
) -> Option<HashMap<usize, Written<'t>>> {
    let mut written = HashMap::new();
    let mut structural = false;
    for (key, value) in doc.iter() {
        let name: &str = key.get_ref();
        let line = Some(lines.line(key.span().start));
        if TABLES.iter().any(|(t, _)| *t == name) {
            match value.get_ref() {
                DeValue::Table(table) => {
                    structural |= !check_table(name, table, lines, diags, &mut written);
                }
                other => {
                    structural = true;
                    diags.error(
                        line,
                        format!(
                            "{name} must be a table ([{name}]), found {}",
                            other.type_str()
                        ),
                    );
                }
            }
        } else {
            unknown_key(name, None, value, line, diags);
        }
    }
    (!structural).then_some(written)
}

fn check_table<'t>(
    table: &str,
    entries: &DeTable<'t>,
    lines: &LineIndex,
    diags: &mut Diagnostics,
    written: &mut HashMap<usize, Written<'t>>,
) -> bool {
    let mut ok = true;
    let mut first: HashMap<usize, (String, usize)> = HashMap::new();
    // In file order, so that the second spelling of an option is the one
    // reported.
    let mut sorted: Vec<_> = entries.iter().collect();
    sorted.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in sorted {
        let name: &str = key.get_ref();
        let line = lines.line(key.span().start);
        let Some((index, info)) = find(table, name) else {
            unknown_key(name, Some(table), value, Some(line), diags);
            continue;
        };
        if let Some((other, other_line)) = first.get(&index) {
            ok = false;
            diags.error(
                Some(line),
                format!(
                    "{name} sets the same option as {other} (line {other_line}); keep one of them"
                ),
            );
            continue;
        }
        first.insert(index, (name.to_owned(), line));
        let legacy_meaning =
            info.legacy_in_toml.is_some() && info.legacy == Some(name) && info.key != name;
        written.insert(
            index,
            Written {
                key: format!("{table}.{name}"),
                value: value.clone(),
                legacy_meaning,
            },
        );
    }
    ok
}

/// A key that is not an option where it stands: a policyd-spf key that
/// spfmilter does not use, an option in the wrong table, or a typo.
fn unknown_key(
    name: &str,
    table: Option<&str>,
    value: &Spanned<DeValue<'_>>,
    line: Option<usize>,
    diags: &mut Diagnostics,
) {
    if let Some(u) = UNSUPPORTED
        .iter()
        .find(|u| u.legacy.eq_ignore_ascii_case(name) || u.toml == name)
    {
        let empty = match value.get_ref() {
            DeValue::String(s) => s.trim().is_empty(),
            DeValue::Boolean(b) => !b,
            _ => false,
        };
        if u.refused && !empty {
            diags.error(line, format!("{name} is not supported: {}", u.why));
        } else {
            diags.warning(line, format!("{name}: {}", u.why));
        }
        return;
    }
    let place = table.map_or_else(|| "at the top level".to_owned(), |t| format!("in [{t}]"));
    // The same key in another table, or at the top level where tables are.
    if let Some(o) = OPTIONS
        .iter()
        .find(|o| o.key == name || o.legacy.is_some_and(|l| l.eq_ignore_ascii_case(name)))
    {
        let there = if table == Some(o.table) {
            String::new()
        } else {
            format!(" in [{}]", o.table)
        };
        diags.error(
            line,
            format!(
                "unknown key {name} {place}: did you mean `{}`{there}?",
                o.key
            ),
        );
        return;
    }
    let candidates: Vec<&str> = match table {
        Some(t) => OPTIONS
            .iter()
            .filter(|o| o.table == t)
            .flat_map(|o| std::iter::once(o.key).chain(o.legacy))
            .collect(),
        None => TABLES.iter().map(|(t, _)| *t).collect(),
    };
    let hint = match nearest(name, candidates.iter().copied()) {
        Some(k) => {
            let canonical = OPTIONS
                .iter()
                .find(|o| o.legacy == Some(k))
                .map_or(k, |o| o.key);
            format!(": did you mean `{canonical}`?")
        }
        None => match nearest(name, OPTIONS.iter().map(|o| o.key)) {
            Some(k) => {
                let t = OPTIONS.iter().find(|o| o.key == k).map_or("", |o| o.table);
                format!(": did you mean `{k}` in [{t}]?")
            }
            None => String::new(),
        },
    };
    diags.error(line, format!("unknown key {name} {place}{hint}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each option's TOML key and policyd-spf key reach the option, and
    /// only it, in the option's table.
    #[test]
    fn keys_and_aliases_match_the_option_list() {
        for (index, o) in OPTIONS.iter().enumerate() {
            for name in std::iter::once(o.key).chain(o.legacy) {
                let text = format!("[{}]\n{name} = 1\n", o.table);
                let doc = DeTable::parse(&text).unwrap();
                let mut diags = Diagnostics::new("t");
                let written =
                    check_keys(doc.get_ref(), &LineIndex::new(&text), &mut diags).unwrap();
                let set: Vec<(usize, bool)> = written
                    .iter()
                    .map(|(i, w)| (*i, w.legacy_meaning))
                    .collect();
                let legacy_meaning = name == "TestOnly";
                assert_eq!(set, [(index, legacy_meaning)], "{}.{name}", o.table);
                assert!(!diags.has_errors(), "{}.{name}", o.table);
            }
        }
    }
}
