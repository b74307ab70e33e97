//! How an option is declared. [`declare_options!`] takes, for each table,
//! its section struct and, for each option, everything that follows from
//! it: the `Config` field with its type and default, the policyd-spf key,
//! the documented default and meaning, the parser (shared by both readers)
//! and the renderer (for the TOML writer). From that one declaration it
//! makes the section struct, its `Default`, and the option's row in
//! [`OPTIONS`](super::OPTIONS), which the readers' key lookup, the
//! did-you-mean suggestions, the commented TOML writer and the table of
//! docs/configuration.md all read. docs/design.md ("Adding an option")
//! says how to add one.

use std::fmt::Write as _;

use super::Config;
use super::apply::{Cx, Raw};

/// One option, as declared (see [`declare_options!`]).
#[derive(Debug, Clone, Copy)]
pub struct OptionInfo {
    /// The TOML table (`milter`, `policy`, `skip`, `spf`, `dns`, `log`,
    /// `metrics`), also the name of its section in [`Config`].
    pub table: &'static str,
    /// The TOML key, also the name of its field in the section.
    pub key: &'static str,
    /// The policyd-spf / pyspf-milter key, also accepted in TOML.
    pub legacy: Option<&'static str>,
    /// The default, as docs/configuration.md shows it.
    pub default: &'static str,
    /// What it does, in one paragraph (docs/configuration.md and the TOML
    /// comment).
    pub meaning: &'static str,
    /// What the option looks like when set, shown commented out by the
    /// TOML writer when it is unset.
    pub(crate) example: Option<&'static str>,
    /// Parses a value as written and, if it is valid, sets the option.
    /// On error nothing is set (the error is reported and the load fails
    /// anyway).
    pub(crate) apply: fn(&mut Config, Raw<'_>, &mut Cx<'_>),
    /// How the policyd-spf key reads when written in TOML, if not as the
    /// TOML key does (`TestOnly` keeps its integer meaning there).
    pub(crate) legacy_in_toml: Option<fn(&mut Config, &toml::Value, &mut Cx<'_>)>,
    /// The option's value as TOML; `None` when unset.
    pub(crate) render: fn(&Config) -> Option<String>,
}

/// Declares the tables and their options, in file order:
///
/// ```text
/// /// doc of the section struct
/// [table] SectionStruct, "heading comment of the table" {
///     /// doc of the field
///     key: Type = default expression,
///         legacy "PolicydSpfKey",          // optional
///         default "documented default",
///         parse parser,                    // fn(Raw, &mut Cx) -> Option<Type>
///         legacy_in_toml parser,           // optional: fn(&toml::Value, &mut Cx) -> Option<Type>
///         render renderer,                 // fn(&Type) -> Option<String>
///         example "\"value\"",             // when the renderer can say None
///         meaning "what it does";
/// }
/// ```
macro_rules! declare_options {
    (@maybe) => { None };
    (@maybe $e:expr) => { Some($e) };
    ($(
        $(#[$section_attr:meta])*
        [$table:ident] $Section:ident, $heading:literal {
            $(
                $(#[$field_attr:meta])*
                $field:ident: $ty:ty = $init:expr,
                $(legacy $legacy:literal,)?
                default $shown:literal,
                parse $parse:expr,
                $(legacy_in_toml $legacy_in_toml:expr,)?
                render $render:expr,
                $(example $example:literal,)?
                meaning $meaning:literal;
            )*
        }
    )*) => {
        $(
            $(#[$section_attr])*
            #[derive(Debug, Clone, PartialEq, Eq)]
            pub struct $Section {
                $( $(#[$field_attr])* pub $field: $ty, )*
            }

            impl Default for $Section {
                fn default() -> Self {
                    Self { $( $field: $init, )* }
                }
            }
        )*

        /// The tables, in file order, with their heading comment.
        pub(crate) const TABLES: &[(&str, &str)] = &[$( (stringify!($table), $heading), )*];

        /// Every option, in file order.
        pub static OPTIONS: &[OptionInfo] = &[$($(
            OptionInfo {
                table: stringify!($table),
                key: stringify!($field),
                legacy: declare_options!(@maybe $($legacy)?),
                default: $shown,
                meaning: $meaning,
                example: declare_options!(@maybe $($example)?),
                apply: {
                    fn apply(cfg: &mut Config, raw: Raw<'_>, cx: &mut Cx<'_>) {
                        let parse: fn(Raw<'_>, &mut Cx<'_>) -> Option<$ty> = $parse;
                        if let Some(v) = parse(raw, cx) {
                            cfg.$table.$field = v;
                        }
                    }
                    apply
                },
                legacy_in_toml: declare_options!(@maybe $({
                    fn apply(cfg: &mut Config, value: &toml::Value, cx: &mut Cx<'_>) {
                        let parse: fn(&toml::Value, &mut Cx<'_>) -> Option<$ty> =
                            $legacy_in_toml;
                        if let Some(v) = parse(value, cx) {
                            cfg.$table.$field = v;
                        }
                    }
                    apply
                })?),
                render: {
                    fn render(cfg: &Config) -> Option<String> {
                        let render: fn(&$ty) -> Option<String> = $render;
                        render(&cfg.$table.$field)
                    }
                    render
                },
            },
        )*)*];
    };
}
pub(crate) use declare_options;

/// The option table of docs/configuration.md: TOML key, legacy key,
/// default, meaning.
pub fn options_markdown_table() -> String {
    let mut out =
        String::from("| TOML key | policyd-spf key | default | meaning |\n|---|---|---|---|\n");
    for o in super::OPTIONS {
        let legacy = o
            .legacy
            .map_or_else(|| "—".to_owned(), |l| format!("`{l}`"));
        let meaning = o.meaning.replace('|', "\\|");
        let _ = writeln!(
            out,
            "| `{}.{}` | {legacy} | {} | {meaning} |",
            o.table, o.key, o.default
        );
    }
    out
}

/// The option written `name` in `table` (its TOML key or its policyd-spf
/// key, exactly).
pub(crate) fn find(table: &str, name: &str) -> Option<(usize, &'static OptionInfo)> {
    super::OPTIONS
        .iter()
        .enumerate()
        .find(|(_, o)| o.table == table && (o.key == name || o.legacy == Some(name)))
}

#[cfg(test)]
mod tests {
    use super::super::OPTIONS;
    use super::*;

    /// Each option is found under its TOML key and its policyd-spf key,
    /// in its table only; no two options share a key.
    #[test]
    fn keys_lead_to_their_option_only() {
        for (i, o) in OPTIONS.iter().enumerate() {
            for name in std::iter::once(o.key).chain(o.legacy) {
                assert_eq!(find(o.table, name).map(|(j, _)| j), Some(i), "{name}");
                for (table, _) in super::super::options::TABLES
                    .iter()
                    .filter(|(t, _)| *t != o.table)
                {
                    assert!(find(table, name).is_none(), "{name} in [{table}]");
                }
            }
            let same = OPTIONS.iter().filter(|p| p.key == o.key).count();
            assert_eq!(same, 1, "{} is the key of {same} options", o.key);
        }
    }

    /// An option that can be unset shows an example of a value in its
    /// place, and the example is a valid value of the option.
    #[test]
    fn unset_options_have_a_valid_example() {
        let defaults = Config::default();
        for o in OPTIONS {
            if (o.render)(&defaults).is_some() {
                continue;
            }
            let example = o
                .example
                .unwrap_or_else(|| panic!("{} can be unset but has no example", o.key));
            let text = format!("[{}]\n{} = {example}\n", o.table, o.key);
            let loaded = Config::parse_toml(&text, "example", super::super::Datasets::Refuse)
                .unwrap_or_else(|e| panic!("{}: {e}", o.key));
            assert!((o.render)(&loaded.config).is_some(), "{}", o.key);
        }
    }
}
