//! The man pages stay in step with the code: `spfmilter.toml(5)` describes
//! every option of `spfmilter::config::OPTIONS`, in its table, under its
//! policyd-spf name, and nothing else; `spfmilter(8)` names every option
//! that each command's `--help` lists. The pages are written by hand, so
//! these checks are what catches an option added without its
//! documentation (every option with its TOML name, legacy policyd-spf
//! name, default and meaning).

use std::process::Command;

use spfmilter::config::OPTIONS;

fn page(name: &str) -> String {
    let path = format!("{}/man/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The option entries of `spfmilter.toml(5)`: (table, key, legacy key),
/// in page order. An entry is the tag line after `.TP` in a section named
/// `[table]: ...`, written `.B key` or `.BR key " (" LegacyKey )`.
fn toml5_entries(text: &str) -> Vec<(String, String, Option<String>)> {
    let mut entries = Vec::new();
    let mut table: Option<String> = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(title) = line.strip_prefix(".SH ") {
            table = title
                .trim_matches('"')
                .strip_prefix('[')
                .and_then(|t| t.split_once(']'))
                .map(|(t, _)| t.to_owned());
            continue;
        }
        let Some(table) = &table else { continue };
        if line != ".TP" {
            continue;
        }
        let tag = lines.next().expect("a tag line after .TP");
        let entry = if let Some(key) = tag.strip_prefix(".B ") {
            (key.to_owned(), None)
        } else if let Some(rest) = tag.strip_prefix(".BR ") {
            let (key, legacy) = rest
                .split_once(" \" (\" ")
                .unwrap_or_else(|| panic!("tag {tag:?}: expected .BR key \" (\" Legacy )"));
            let legacy = legacy
                .strip_suffix(" )")
                .unwrap_or_else(|| panic!("tag {tag:?}: expected a closing \" )\""));
            (key.to_owned(), Some(legacy.to_owned()))
        } else {
            panic!("tag {tag:?} in [{table}] is neither .B nor .BR")
        };
        entries.push((table.clone(), entry.0, entry.1));
    }
    entries
}

#[test]
fn toml5_describes_every_option_in_file_order_with_its_legacy_name() {
    let documented = toml5_entries(&page("spfmilter.toml.5"));
    let expected: Vec<(String, String, Option<String>)> = OPTIONS
        .iter()
        .map(|o| {
            (
                o.table.to_owned(),
                o.key.to_owned(),
                o.legacy.map(str::to_owned),
            )
        })
        .collect();
    // Compared one by one first, so that a failure names the option.
    for option in &expected {
        assert!(
            documented.contains(option),
            "spfmilter.toml(5) does not describe {option:?} (table, key, policyd-spf key)"
        );
    }
    for entry in &documented {
        assert!(
            expected.contains(entry),
            "spfmilter.toml(5) describes {entry:?}, which is not an option"
        );
    }
    assert_eq!(
        documented, expected,
        "spfmilter.toml(5) lists the options in another order than conf/spfmilter.toml"
    );
}

/// The parser above must see entries at all, or the test above would pass
/// on a page it cannot read: the page has one section per TOML table.
#[test]
fn toml5_has_a_section_per_table() {
    let text = page("spfmilter.toml.5");
    for table in [
        "milter", "policy", "skip", "block", "spf", "dns", "log", "metrics",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!(".SH \"[{table}]: "))),
            "no section for [{table}]"
        );
    }
    assert_eq!(toml5_entries(&text).len(), OPTIONS.len());
}

/// Keys of policyd-spf.conf that spfmilter refuses or ignores are
/// documented too (docs/configuration.md: "Mock, defaultSeedOnly, IntHosts
/// and QueueID are ignored with a warning"; the pass restrictions and
/// Per_User are refused).
#[test]
fn toml5_names_the_refused_and_ignored_legacy_keys() {
    let text = page("spfmilter.toml.5").replace("\\-", "-");
    for key in [
        "HELO_pass_restriction",
        "Mail_From_pass_restriction",
        "Per_User",
        "Mock",
        "defaultSeedOnly",
        "IntHosts",
        "QueueID",
    ] {
        assert!(text.contains(key), "spfmilter.toml(5) does not name {key}");
    }
}

/// The long options `spfmilter ARGS --help` lists.
fn help_options(args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_spfmilter"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run spfmilter --help");
    assert!(out.status.success(), "spfmilter {args:?} --help failed");
    let text = String::from_utf8(out.stdout).expect("UTF-8 help");
    let mut options: Vec<String> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split('=').next().unwrap_or(w).to_owned())
        .filter(|w| w != "--help" && w != "--version")
        .collect();
    options.sort();
    options.dedup();
    options
}

#[test]
fn spfmilter8_names_every_option_of_every_command() {
    // In roff a hyphen in an option is written `\-`.
    let text = page("spfmilter.8").replace("\\-", "-");
    let commands: [&[&str]; 5] = [
        &["run"],
        &["check"],
        &["expand"],
        &["config", "check"],
        &["config", "convert"],
    ];
    let mut seen = 0;
    for command in commands {
        for option in help_options(command) {
            seen += 1;
            assert!(
                text.contains(&option),
                "spfmilter(8) does not mention {option} of `spfmilter {}`",
                command.join(" ")
            );
        }
    }
    // `run` alone has ten options (--config ... --test-mode): the help was
    // read, not an empty text.
    assert!(seen >= 10, "only {seen} options found in the --help texts");
}

#[test]
fn spfmilter8_has_the_sections_an_admin_looks_for() {
    let text = page("spfmilter.8");
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "COMMANDS",
        "OPTIONS",
        "SIGNALS",
        "FILES",
        "\"EXIT STATUS\"",
        "EXAMPLES",
        "\"SEE ALSO\"",
    ] {
        assert!(
            text.lines().any(|l| l == format!(".SH {section}")),
            "spfmilter(8) has no {section} section"
        );
    }
}
