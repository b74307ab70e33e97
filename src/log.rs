//! Where the milter's log lines go: syslog (facility mail, like Postfix's
//! own lines and policyd-spf's) or standard error.

use crate::config::{LogLevel, LogTarget};

/// A log destination.
pub enum Logger {
    /// `/dev/log`, RFC 3164 framing without a timestamp (the syslog daemon
    /// adds it), facility mail.
    Syslog(std::os::unix::net::UnixDatagram),
    Stderr,
    /// Standard error connected to systemd's journal (`JOURNAL_STREAM`
    /// set): journald adds the name and pid itself and reads the priority
    /// from an `<N>` prefix, so a line is `<6>text`.
    Journal,
    /// Kept in memory, for the tests of the layers that log.
    Memory(std::sync::Mutex<Vec<String>>),
}

impl Logger {
    pub fn new(target: LogTarget) -> Logger {
        if target == LogTarget::Syslog {
            if let Ok(socket) = std::os::unix::net::UnixDatagram::unbound()
                && socket.connect("/dev/log").is_ok()
            {
                return Logger::Syslog(socket);
            }
            eprintln!("spfmilter: /dev/log is not available, logging to standard error");
        }
        if std::env::var_os("JOURNAL_STREAM").is_some() {
            Logger::Journal
        } else {
            Logger::Stderr
        }
    }

    /// Writes one line. Control characters in it (from a HELO name, a
    /// sender, a header, a DNS answer…) are escaped first, so that no value
    /// can end the line and forge another one in the log.
    pub fn log(&self, level: LogLevel, line: &str) {
        let line = &*one_line(line);
        let pid = pid();
        match self {
            Logger::Syslog(socket) => {
                // facility mail (2) * 8 + severity: err (3) or info (6).
                let priority = if level <= LogLevel::Errors {
                    "<19>"
                } else {
                    "<22>"
                };
                let prefix = syslog_prefix();
                let mut message = String::with_capacity(priority.len() + prefix.len() + line.len());
                message.push_str(priority);
                message.push_str(prefix);
                message.push_str(line);
                if socket.send(message.as_bytes()).is_err() {
                    eprintln!("spfmilter[{pid}]: {line}");
                }
            }
            Logger::Stderr => eprintln!("spfmilter[{pid}]: {line}"),
            Logger::Journal => {
                // sd-daemon(3) priorities: err (3) or info (6).
                let priority = if level <= LogLevel::Errors { 3 } else { 6 };
                eprintln!("<{priority}>{line}");
            }
            Logger::Memory(lines) => lines
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(line.to_owned()),
        }
    }
}

impl Logger {
    /// The lines a [`Logger::Memory`] kept; none for the others.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Logger::Memory(lines) => lines
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            _ => Vec::new(),
        }
    }
}

/// The process's ID, asked of the kernel once (the daemon never forks
/// after it has started logging).
fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// `spfmilter[PID]: `, the tag of every syslog line (RFC 3164 §4.1.3).
fn syslog_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| format!("spfmilter[{}]: ", pid()))
}

/// Whether `line` holds a control character (C0, DEL, or C1: U+0080 to
/// U+009F, in UTF-8 0xC2 followed by 0x80 to 0x9F), by bytes: first a
/// pass without branches over every byte (the compiler vectorises it) for
/// any byte that may start one, then, only if there is one, the exact
/// test.
fn has_control(line: &str) -> bool {
    let bytes = line.as_bytes();
    let suspect = bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == 0x7f) | (b == 0xc2)
    });
    suspect
        && bytes.iter().enumerate().any(|(i, &b)| {
            b < 0x20
                || b == 0x7f
                || (b == 0xc2 && bytes.get(i + 1).is_some_and(|n| (0x80..0xa0).contains(n)))
        })
}

/// `line` with each control character (C0, DEL, C1) written as Rust
/// escapes it (`\r`, `\n`, `\t`, `\u{1b}`): one log line, readable, and
/// the original bytes recoverable by a reader who needs them.
fn one_line(line: &str) -> std::borrow::Cow<'_, str> {
    if !has_control(line) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// The byte scan finds exactly the characters `char::is_control`
    /// finds, over every character of the Basic Multilingual Plane and
    /// beyond, alone and between others.
    #[test]
    fn the_byte_scan_finds_what_is_control_finds() {
        for c in (0..0x3_0000u32).filter_map(char::from_u32) {
            let alone = c.to_string();
            assert_eq!(super::has_control(&alone), c.is_control(), "{c:?}");
            let between = format!("a\u{e9}{c}\u{100}z");
            assert_eq!(super::has_control(&between), c.is_control(), "{c:?}");
        }
    }

    #[test]
    fn control_characters_cannot_start_a_new_line() {
        assert_eq!(
            one_line("helo x\r\nX-Inj: 1\u{1b}[31m\u{7f}\u{85}end"),
            "helo x\\r\\nX-Inj: 1\\u{1b}[31m\\u{7f}\\u{85}end"
        );
        assert_eq!(one_line("tab\there"), "tab\\there");
        // Printable text, non-ASCII included, is written as it is.
        let plain = "from <j\u{fc}rgen@example.org> (\\ and \")";
        assert!(matches!(one_line(plain), std::borrow::Cow::Borrowed(p) if p == plain));
    }
}
