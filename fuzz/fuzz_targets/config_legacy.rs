//! Fuzzes the `policyd-spf.conf` reader (`Config::parse_legacy`) with
//! arbitrary text (bytes that are not UTF-8 become U+FFFD, as a file read
//! lossily would).
//!
//! Besides "no panic", it checks that:
//! - a refused file has at least one error, an accepted one none;
//! - every diagnostic names the file and a line that exists;
//! - an accepted configuration, printed as TOML (`config convert`), loads
//!   back to an equal `Config` without warnings.
//!
//! File datasets (`InternalHosts = /path`) are refused, so the fuzzer never
//! reads files.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spfmilter::config::{Config, Datasets, Diagnostic};

fn check_lines(diags: &[Diagnostic], text: &str) {
    // Python's universal newlines: \r\n, \r and \n each end a line.
    let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count();
    for d in diags {
        assert_eq!(d.file, "fuzz.conf");
        if let Some(line) = d.line {
            assert!(line >= 1 && line <= lines, "{d} beyond {lines} lines");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse_legacy(&text, "fuzz.conf", Datasets::Refuse) {
        Ok(loaded) => {
            assert!(loaded.warnings.iter().all(|d| !d.is_error()));
            check_lines(&loaded.warnings, &text);
            let toml = loaded.config.to_toml();
            match Config::parse_toml(&toml, "converted.toml", Datasets::Refuse) {
                Ok(again) => {
                    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
                    assert_eq!(*again.config, *loaded.config, "converted:\n{toml}");
                }
                Err(e) => panic!("the conversion does not load:\n{e}\n{toml}"),
            }
        }
        Err(e) => {
            assert!(e.diagnostics.iter().any(Diagnostic::is_error));
            check_lines(&e.diagnostics, &text);
        }
    }
});
