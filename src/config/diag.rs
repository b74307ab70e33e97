//! Problems found in a configuration file, each tied to a file and line.
//!
//! Both readers report through [`Diagnostics`] so that `config check`, the
//! daemon's start and its reload print the same `FILE:LINE: error|warning:
//! message` lines, in file order.

use std::fmt;

/// How bad a problem is: a warning is reported and the file is used; an
/// error stops the load (the daemon keeps its previous configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One problem: `FILE:LINE: error|warning: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file as the user named it (or a label such as `<built-in>`).
    pub file: String,
    /// 1-based line; `None` for problems of the whole file (unreadable…).
    pub line: Option<usize>,
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "{}:{}: {}: {}",
                self.file, line, self.severity, self.message
            ),
            None => write!(f, "{}: {}: {}", self.file, self.severity, self.message),
        }
    }
}

/// Collects the diagnostics of one file.
#[derive(Debug, Clone)]
pub(crate) struct Diagnostics {
    file: String,
    list: Vec<Diagnostic>,
}

impl Diagnostics {
    pub(crate) fn new(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            list: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, severity: Severity, line: Option<usize>, message: String) {
        self.list.push(Diagnostic {
            severity,
            file: self.file.clone(),
            line,
            message,
        });
    }

    pub(crate) fn error(&mut self, line: Option<usize>, message: impl Into<String>) {
        self.push(Severity::Error, line, message.into());
    }

    pub(crate) fn warning(&mut self, line: Option<usize>, message: impl Into<String>) {
        self.push(Severity::Warning, line, message.into());
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.list.iter().any(Diagnostic::is_error)
    }

    /// The diagnostics in file order (stable: problems of one line keep the
    /// order in which they were found).
    pub(crate) fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.list.sort_by_key(|d| d.line.unwrap_or(0));
        self.list
    }
}

/// Byte offset → 1-based line number, for TOML spans.
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    pub(crate) fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

/// The known name nearest to `word`, if it is near enough to be a likely
/// typo (or differs only in case or `-`/`_`).
pub(crate) fn nearest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let folded = fold(word);
    let mut best: Option<(f64, &str)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(&folded, &fold(candidate));
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, candidate));
        }
    }
    // 0.8 accepts one or two wrong letters in names of this length
    // (`helo_rejct`, `skip_adresses`) and rejects unrelated words.
    best.filter(|&(score, _)| score >= 0.8).map(|(_, c)| c)
}

fn fold(s: &str) -> String {
    s.to_ascii_lowercase().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_counts_from_one() {
        let idx = LineIndex::new("a\nbb\n\nc");
        assert_eq!(idx.line(0), 1);
        assert_eq!(idx.line(1), 1);
        assert_eq!(idx.line(2), 2);
        assert_eq!(idx.line(5), 3);
        assert_eq!(idx.line(6), 4);
        assert_eq!(idx.line(100), 4);
    }

    #[test]
    fn nearest_finds_typos_only() {
        let keys = ["helo_reject", "mail_from_reject", "skip_addresses"];
        assert_eq!(nearest("helo_rejct", keys), Some("helo_reject"));
        assert_eq!(nearest("HELO-Reject", keys), Some("helo_reject"));
        assert_eq!(nearest("skip_adresses", keys), Some("skip_addresses"));
        assert_eq!(nearest("frobnicate", keys), None);
    }

    #[test]
    fn display_with_and_without_line() {
        let mut d = Diagnostics::new("a.conf");
        d.error(Some(3), "bad");
        d.warning(None, "odd");
        let v: Vec<String> = d.into_sorted().iter().map(ToString::to_string).collect();
        assert_eq!(v, ["a.conf: warning: odd", "a.conf:3: error: bad"]);
    }
}
