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

    pub fn log(&self, level: LogLevel, line: &str) {
        let pid = std::process::id();
        match self {
            Logger::Syslog(socket) => {
                // facility mail (2) * 8 + severity: err (3) or info (6).
                let priority = if level <= LogLevel::Errors { 19 } else { 22 };
                let message = format!("<{priority}>spfmilter[{pid}]: {line}");
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
        }
    }
}
