//! The enumerations of the configuration: what the SPF results lead to
//! (`HELO_reject`, `Mail_From_reject`), which header is written and with
//! which authserv-id, what an internal failure answers, where and how much
//! is logged.

use std::fmt;

/// `HELO_reject` / `Mail_From_reject` (docs/policyd-spf-compatibility.md §2): which SPF results of an
/// identity reject the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectPolicy {
    /// Reject Fail, Softfail and Neutral.
    SpfNotPass,
    /// Reject Fail and Softfail.
    Softfail,
    /// Reject Fail (the default).
    Fail,
    /// HELO only: reject a HELO Fail only when the sender is `<>`.
    Null,
    /// Never reject or defer on this identity; header only
    /// (`PermError_reject` and `TempError_Defer` do not apply to it).
    False,
    /// Do not check this identity at all.
    NoCheck,
}

impl RejectPolicy {
    pub const ALL: [RejectPolicy; 6] = [
        RejectPolicy::SpfNotPass,
        RejectPolicy::Softfail,
        RejectPolicy::Fail,
        RejectPolicy::Null,
        RejectPolicy::False,
        RejectPolicy::NoCheck,
    ];

    /// The policyd-spf spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectPolicy::SpfNotPass => "SPF_Not_Pass",
            RejectPolicy::Softfail => "Softfail",
            RejectPolicy::Fail => "Fail",
            RejectPolicy::Null => "Null",
            RejectPolicy::False => "False",
            RejectPolicy::NoCheck => "No_Check",
        }
    }
}

impl fmt::Display for RejectPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which trace header(s) the milter adds (`Header_Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderType {
    /// `Received-SPF` (RFC 7208 §9.1); policyd-spf's default.
    Spf,
    /// `Authentication-Results` (RFC 8601).
    Ar,
    /// Both (an extension of this project: `SPF,AR`).
    Both,
    /// No header at all.
    None,
}

impl HeaderType {
    pub const ALL: [HeaderType; 4] = [
        HeaderType::Spf,
        HeaderType::Ar,
        HeaderType::Both,
        HeaderType::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HeaderType::Spf => "SPF",
            HeaderType::Ar => "AR",
            HeaderType::Both => "SPF,AR",
            HeaderType::None => "None",
        }
    }

    pub fn received_spf(self) -> bool {
        matches!(self, HeaderType::Spf | HeaderType::Both)
    }

    pub fn authentication_results(self) -> bool {
        matches!(self, HeaderType::Ar | HeaderType::Both)
    }
}

impl fmt::Display for HeaderType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the milter answers when it fails internally (a bug, not an SPF
/// result): like the `On-InternalError` of other milters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InternalErrorAction {
    /// 451 4.3.0: the client retries later (Postfix's `milter_default_action`).
    Tempfail,
    /// Let the message through without an SPF header.
    Accept,
    /// 550 5.7.1.
    Reject,
}

impl InternalErrorAction {
    pub const ALL: [InternalErrorAction; 3] = [
        InternalErrorAction::Tempfail,
        InternalErrorAction::Accept,
        InternalErrorAction::Reject,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InternalErrorAction::Tempfail => "tempfail",
            InternalErrorAction::Accept => "accept",
            InternalErrorAction::Reject => "reject",
        }
    }
}

impl fmt::Display for InternalErrorAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogTarget {
    /// syslog, facility mail (what policyd-spf does and log parsers expect).
    Syslog,
    /// Standard error (for systemd's journal or a terminal).
    Stderr,
}

impl LogTarget {
    pub const ALL: [LogTarget; 2] = [LogTarget::Syslog, LogTarget::Stderr];

    pub fn as_str(self) -> &'static str {
        match self {
            LogTarget::Syslog => "syslog",
            LogTarget::Stderr => "stderr",
        }
    }
}

impl fmt::Display for LogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// policyd-spf's `debugLevel`, -1 to 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// -1: nothing at all once started.
    Silent,
    /// 0: errors only.
    Errors,
    /// 1: one line per action (the default).
    Actions,
    /// 2: adds a line per identity checked.
    Results,
    /// 3: configuration dump, header text.
    Config,
    /// 4: the raw data of each request.
    Requests,
    /// 5: internals.
    Internals,
}

impl LogLevel {
    pub const ALL: [LogLevel; 7] = [
        LogLevel::Silent,
        LogLevel::Errors,
        LogLevel::Actions,
        LogLevel::Results,
        LogLevel::Config,
        LogLevel::Requests,
        LogLevel::Internals,
    ];

    pub fn as_int(self) -> i8 {
        match self {
            LogLevel::Silent => -1,
            LogLevel::Errors => 0,
            LogLevel::Actions => 1,
            LogLevel::Results => 2,
            LogLevel::Config => 3,
            LogLevel::Requests => 4,
            LogLevel::Internals => 5,
        }
    }

    /// -1..=5; `None` below -1. Values above 5 are 5 (policyd-spf logs
    /// nothing more for them); the caller warns.
    pub fn from_int(n: i64) -> Option<LogLevel> {
        match n {
            ..=-2 => None,
            -1 => Some(LogLevel::Silent),
            0 => Some(LogLevel::Errors),
            1 => Some(LogLevel::Actions),
            2 => Some(LogLevel::Results),
            3 => Some(LogLevel::Config),
            4 => Some(LogLevel::Requests),
            _ => Some(LogLevel::Internals),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Silent => "silent",
            LogLevel::Errors => "errors",
            LogLevel::Actions => "actions",
            LogLevel::Results => "results",
            LogLevel::Config => "config",
            LogLevel::Requests => "requests",
            LogLevel::Internals => "internals",
        }
    }
}

/// The authserv-id written in Authentication-Results (`Authserv_Id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuthservId {
    /// The MTA's `j` macro (Postfix `$myhostname`): what OpenDMARC trusts by
    /// default. The default of spfmilter.
    MtaHostname,
    /// `HOSTNAME`: this machine's host name (policyd-spf's default).
    Hostname,
    /// A fixed identifier.
    Fixed(String),
}

impl AuthservId {
    /// Parses a configured value: `HOSTNAME` or an identifier. RFC 8601
    /// §2.2 allows a token or a quoted-string; only a token is taken
    /// (choice where the RFC leaves room): lenient readers such as
    /// OpenDMARC's drop quotes and split on spaces, so a quoted or spaced
    /// id could be read as another one, and a `;` would end it early.
    pub fn parse(s: &str) -> Result<AuthservId, String> {
        if s == "HOSTNAME" {
            return Ok(AuthservId::Hostname);
        }
        if s.trim().is_empty() {
            return Err("the authserv-id is empty: leave the option unset to use the MTA's host name (Postfix's j macro), or write HOSTNAME for this machine's host name".into());
        }
        if let Some(c) = s.chars().find(|&c| !is_token_char(c)) {
            return Err(format!(
                "the authserv-id {s:?} contains {c:?}: it must be one token of RFC 8601 §2.2 (letters, digits, '.', '-', '_' and the like; no spaces, quotes or ;:()<>@,/\\[]?=), usually the host name"
            ));
        }
        Ok(AuthservId::Fixed(s.to_owned()))
    }

    /// The value as configured; `None` for the MTA's host name, which is
    /// what an unset option means.
    pub fn configured(&self) -> Option<&str> {
        match self {
            AuthservId::MtaHostname => None,
            AuthservId::Hostname => Some("HOSTNAME"),
            AuthservId::Fixed(id) => Some(id),
        }
    }
}

/// A character of an RFC 2045 §5.1 `token`: printable ASCII other than
/// space and the tspecials. The authserv-id (RFC 8601 §2.2 `value`) is
/// written as one, so that no header reader can split it.
pub fn is_token_char(c: char) -> bool {
    c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c)
}
