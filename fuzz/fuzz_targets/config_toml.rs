//! Fuzzes the native TOML reader (`Config::parse_toml`) with arbitrary text
//! (bytes that are not UTF-8 become U+FFFD).
//!
//! Besides "no panic", it checks that:
//! - a refused file has at least one error, an accepted one none;
//! - every diagnostic names the file and a line that exists;
//! - an accepted configuration, printed as TOML (`config check --show`),
//!   loads back to an equal `Config` without warnings.
//!
//! File datasets (`internal_hosts = "file:/path"`) are refused, so the
//! fuzzer never reads files.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spfmilter::config::{Config, Datasets, Diagnostic};

fn check_lines(diags: &[Diagnostic], text: &str) {
    let lines = text.split('\n').count();
    for d in diags {
        assert_eq!(d.file, "fuzz.toml");
        if let Some(line) = d.line {
            assert!(line >= 1 && line <= lines, "{d} beyond {lines} lines");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse_toml(&text, "fuzz.toml", Datasets::Refuse) {
        Ok(loaded) => {
            assert!(loaded.warnings.iter().all(|d| !d.is_error()));
            check_lines(&loaded.warnings, &text);
            let shown = loaded.config.to_toml();
            match Config::parse_toml(&shown, "shown.toml", Datasets::Refuse) {
                Ok(again) => {
                    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
                    assert_eq!(*again.config, *loaded.config, "shown:\n{shown}");
                }
                Err(e) => panic!("the printed configuration does not load:\n{e}\n{shown}"),
            }
        }
        Err(e) => {
            assert!(e.diagnostics.iter().any(Diagnostic::is_error));
            check_lines(&e.diagnostics, &text);
        }
    }
});
