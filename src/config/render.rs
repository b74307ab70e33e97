//! The commented TOML writer: `conf/spfmilter.toml` (the defaults), `config
//! check --show` (the effective configuration) and `config convert` (a
//! legacy file's meaning) are all this one function's output, so that each
//! of them reads back to the same `Config`.

use std::fmt::Write as _;

use super::Config;
use super::options::{OPTIONS, TABLES};

const WIDTH: usize = 78;

pub(crate) fn to_toml(cfg: &Config) -> String {
    let mut out = String::new();
    out.push_str(
        "# spfmilter configuration (TOML): every option, with what it does and its\n\
         # default. Lines starting with # are comments; an option that is commented\n\
         # out is unset. The policyd-spf spelling of each key is accepted too\n\
         # (HELO_reject = \"Fail\" in [policy]).\n\
         #\n\
         # Check a change before reloading:  spfmilter config check --config FILE\n\
         # Convert a policyd-spf.conf:        spfmilter config convert FILE\n",
    );
    for &(table, heading) in TABLES {
        let _ = write!(out, "\n# {heading}\n[{table}]\n");
        for o in OPTIONS.iter().filter(|o| o.table == table) {
            out.push('\n');
            comment(&mut out, o.meaning);
            let legacy = o
                .legacy
                .map(|l| format!(" policyd-spf.conf: {l}."))
                .unwrap_or_default();
            comment(
                &mut out,
                &format!("Default: {}.{legacy}", o.default.replace('`', "")),
            );
            match (o.render)(cfg) {
                Some(v) => {
                    let _ = writeln!(out, "{} = {v}", o.key);
                }
                None => {
                    let example = o.example.unwrap_or("\"\"");
                    let _ = writeln!(out, "#{} = {example}", o.key);
                }
            }
        }
    }
    out
}

/// Wraps `text` into `# ` lines.
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > WIDTH && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

pub(crate) fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

pub(crate) fn array<I: IntoIterator<Item = String>>(items: I) -> String {
    let items: Vec<String> = items.into_iter().map(|s| quote(&s)).collect();
    let inline = format!("[{}]", items.join(", "));
    if inline.len() <= 60 {
        return inline;
    }
    let mut s = String::from("[\n");
    for i in items {
        let _ = writeln!(s, "    {i},");
    }
    s.push(']');
    s
}
