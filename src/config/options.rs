//! The list of options: TOML table and key, policyd-spf key, default and
//! meaning. One list drives the readers' key lookup, the commented TOML
//! writer, the table in docs/configuration.md and the did-you-mean
//! suggestions.

use std::fmt::Write as _;

/// Which option (the readers' and writer's handle on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Opt {
    Socket,
    SocketMode,
    SocketOwner,
    SocketGroup,
    MaxConnections,
    IdleTimeout,
    OnInternalError,
    DecisionTimeLimit,
    HeaderType,
    AuthservId,
    HideReceiver,
    RemoveForgedHeaders,
    PidFile,
    User,
    Umask,
    HeloReject,
    MailFromReject,
    PermErrorReject,
    TempErrorDefer,
    NoMail,
    RejectNotPassDomains,
    TestMode,
    Prospective,
    EnhancedStatusCodes,
    ReasonMessage,
    ReasonUrl,
    SkipAddresses,
    Whitelist,
    DomainWhitelist,
    HeloWhitelist,
    DomainWhitelistPtr,
    InternalHosts,
    MacroList,
    SkipAuthenticated,
    LookupLimit,
    VoidLimit,
    LookupTime,
    WhitelistLookupTime,
    Nameservers,
    DnsTimeout,
    DnsCacheSize,
    LogTarget,
    MetricsListen,
    LogLevel,
}

/// One option, as documented.
#[derive(Debug, Clone, Copy)]
pub struct OptionInfo {
    pub(crate) id: Opt,
    /// The TOML table (`milter`, `policy`, `skip`, `spf`, `dns`, `log`).
    pub table: &'static str,
    /// The TOML key.
    pub key: &'static str,
    /// The policyd-spf / pyspf-milter key, also accepted in TOML.
    pub legacy: Option<&'static str>,
    /// The default, as docs/configuration.md shows it.
    pub default: &'static str,
    /// What it does, in one paragraph (docs/configuration.md and the TOML
    /// comment).
    pub meaning: &'static str,
}

/// The tables, in file order, with their heading comment.
pub(crate) const TABLES: [(&str, &str); 7] = [
    ("milter", "The milter: socket, process, headers written."),
    (
        "policy",
        "What SPF results lead to (policyd-spf semantics).",
    ),
    ("skip", "Clients and sessions that are not checked."),
    ("spf", "Limits of one SPF evaluation (RFC 7208 §4.6.4)."),
    ("dns", "DNS resolution."),
    ("log", "Logging."),
    ("metrics", "Prometheus metrics (off unless listen is set)."),
];

macro_rules! opt {
    ($id:ident, $table:literal, $key:literal, $legacy:expr, $default:literal, $meaning:literal) => {
        OptionInfo {
            id: Opt::$id,
            table: $table,
            key: $key,
            legacy: $legacy,
            default: $default,
            meaning: $meaning,
        }
    };
}

/// Every option, in file order.
pub static OPTIONS: &[OptionInfo] = &[
    opt!(
        Socket,
        "milter",
        "socket",
        Some("Socket"),
        "`inet:127.0.0.1:8891`",
        "Where the milter listens: inet:HOST:PORT, inet6:[ADDRESS]:PORT or unix:/PATH; pyspf-milter's inet:PORT@HOST, inet6:PORT@[ADDRESS] and local:/PATH are accepted too. In Postfix: smtpd_milters = inet:127.0.0.1:8891."
    ),
    opt!(
        SocketMode,
        "milter",
        "socket_mode",
        None,
        "unset (as the umask leaves it)",
        "Permissions of a UNIX socket, in octal (\"0660\")."
    ),
    opt!(
        SocketOwner,
        "milter",
        "socket_owner",
        None,
        "unset (the milter's user)",
        "Owner of a UNIX socket (a user name)."
    ),
    opt!(
        SocketGroup,
        "milter",
        "socket_group",
        None,
        "unset (the milter's group)",
        "Group of a UNIX socket, e.g. \"postfix\"."
    ),
    opt!(
        MaxConnections,
        "milter",
        "max_connections",
        None,
        "`1024`",
        "MTA connections served at once. One more is closed at once, unread, so that the MTA applies its `milter_default_action` without waiting (logged, and counted in `spfmilter_connections_refused_total`). SIGHUP applies a change; connections open over a lowered limit stay open."
    ),
    opt!(
        IdleTimeout,
        "milter",
        "idle_timeout",
        None,
        "`900` (seconds)",
        "A connection that sends no complete command for this long is closed, so that connections left idle do not hold places under `max_connections`. Postfix's gaps between commands are bounded by `smtpd_timeout` (300 s), except the upload of a message (the headers come once it is queued): 900 s lets a message of Postfix's default `message_size_limit` (10 MB) arrive at 11 kB/s. Raise it if you accept larger messages from slow clients. At most 7200 (2 hours); below 300 a warning. SIGHUP applies a change, to open connections too. Seconds, or a string with a unit."
    ),
    opt!(
        DecisionTimeLimit,
        "milter",
        "decision_time_limit",
        None,
        "`25` (seconds)",
        "Time limit of everything done at MAIL FROM (bypass lookups, HELO and MAIL FROM evaluations together); each evaluation gets the smaller of `lookup_time` and what is left, and running out is TempError. Keep it below Postfix's `milter_command_timeout` (30 s). Seconds, or a string with a unit."
    ),
    opt!(
        OnInternalError,
        "milter",
        "on_internal_error",
        None,
        "`tempfail`",
        "Reply when the milter itself fails (not an SPF result): tempfail (451 4.3.0), accept (no header) or reject (550 5.7.1)."
    ),
    opt!(
        HeaderType,
        "milter",
        "header_type",
        Some("Header_Type"),
        "`SPF`",
        "Trace header added: SPF (Received-SPF), AR (Authentication-Results), SPF,AR (both) or None."
    ),
    opt!(
        AuthservId,
        "milter",
        "authserv_id",
        Some("Authserv_Id"),
        "unset (the MTA's `j` macro, Postfix's $myhostname)",
        "The authserv-id of Authentication-Results (what OpenDMARC's TrustedAuthservIDs must name): one token (RFC 8601 §2.2), no spaces, quotes or ;()=, usually a host name. HOSTNAME means this machine's host name, as in policyd-spf."
    ),
    opt!(
        HideReceiver,
        "milter",
        "hide_receiver",
        Some("Hide_Receiver"),
        "`false` (policyd-spf's code default; its sample file sets Yes)",
        "true: receiver= and r= say <UNKNOWN> instead of the first recipient's domain."
    ),
    opt!(
        RemoveForgedHeaders,
        "milter",
        "remove_forged_headers",
        None,
        "`true`",
        "Delete incoming Received-SPF headers and Authentication-Results headers that carry our authserv-id (in any form a lenient reader takes for it), so that downstream filters (OpenDMARC) only see ours."
    ),
    opt!(
        PidFile,
        "milter",
        "pid_file",
        Some("PidFile"),
        "unset (no pid file)",
        "File to write the process id to (an absolute path)."
    ),
    opt!(
        User,
        "milter",
        "user",
        Some("UserID"),
        "unset (keep the user it was started as)",
        "user[:group] to switch to after opening the socket."
    ),
    opt!(
        Umask,
        "milter",
        "umask",
        Some("UMask"),
        "unset (inherited)",
        "The process umask, in octal (\"0007\"); it applies to a UNIX socket and the pid file."
    ),
    opt!(
        HeloReject,
        "policy",
        "helo_reject",
        Some("HELO_reject"),
        "`Fail`",
        "HELO results that reject: SPF_Not_Pass (Fail, Softfail, Neutral), Softfail (Fail, Softfail), Fail, Null (Fail, only for the null sender), False (never reject or defer on HELO, header only), No_Check (no HELO check)."
    ),
    opt!(
        MailFromReject,
        "policy",
        "mail_from_reject",
        Some("Mail_From_reject"),
        "`Fail`",
        "MAIL FROM results that reject: SPF_Not_Pass, Softfail, Fail, False or No_Check, as for helo_reject."
    ),
    opt!(
        PermErrorReject,
        "policy",
        "permerror_reject",
        Some("PermError_reject"),
        "`false`",
        "Reject a PermError (550 5.7.24) in each checked identity whose policy is not False."
    ),
    opt!(
        TempErrorDefer,
        "policy",
        "temperror_defer",
        Some("TempError_Defer"),
        "`false`",
        "Defer a TempError (450 4.7.24) in each checked identity whose policy is not False."
    ),
    opt!(
        NoMail,
        "policy",
        "no_mail",
        Some("No_Mail"),
        "`false`",
        "Keep a reject only when the domain's record is exactly \"v=spf1 -all\"; otherwise add the header instead."
    ),
    opt!(
        RejectNotPassDomains,
        "policy",
        "reject_not_pass_domains",
        Some("Reject_Not_Pass_Domains"),
        "`[]`",
        "HELO names and sender domains that get the SPF_Not_Pass policy (reason \"Receiver policy for SPF <result>\"); each entry is one name, not the names below it."
    ),
    opt!(
        TestMode,
        "policy",
        "test_mode",
        Some("TestOnly"),
        "`false` (`TestOnly = 1`)",
        "true: reject or defer nothing; add the header that would have been added and log \"would reject\" / \"would defer\". policyd-spf's TestOnly = 0 (also accepted in TOML, with its integer meaning)."
    ),
    opt!(
        Prospective,
        "policy",
        "prospective",
        Some("Prospective"),
        "unset",
        "Evaluate as if the client had this IP address (would mail from here pass?); passing mail gets no header."
    ),
    opt!(
        EnhancedStatusCodes,
        "policy",
        "enhanced_status_codes",
        Some("SPF_Enhanced_Status_Codes"),
        "`true`",
        "Use the RFC 7372 codes 5.7.23, 5.7.24 and 4.7.24; false: plain 550 and 450."
    ),
    opt!(
        ReasonMessage,
        "policy",
        "reason_message",
        Some("Reason_Message"),
        "`Message {rejectdefer} due to: {spf}. Please see {url}`",
        "Text of a reject or defer: {rejectdefer} is rejected or deferred, {spf} the explanation, {url} the expanded reason_url; {{ and }} are literal braces."
    ),
    opt!(
        ReasonUrl,
        "policy",
        "reason_url",
        Some("Reason_URL"),
        "`\"\"` (no URL; policyd-spf's default, http://www.openspf.net/Why?s={0};id={1};ip={2};r={3}, is a defunct site)",
        "The {url} of reason_message: {0} helo or mfrom, {1} the HELO name or sender, {2} the client IP, {3} the receiver. Empty: no URL, and the default reason_message ends after {spf}."
    ),
    opt!(
        SkipAddresses,
        "skip",
        "skip_addresses",
        Some("skip_addresses"),
        "`127.0.0.0/8, ::ffff:127.0.0.0/104, ::1`",
        "Clients not checked, with the trace header \"X-Comment: SPF check N/A for local connections\". IPv4-mapped networks (::ffff:a.b.c.d/N) match as their IPv4 network."
    ),
    opt!(
        Whitelist,
        "skip",
        "whitelist",
        Some("Whitelist"),
        "`[]`",
        "Networks of trusted relays not checked (\"SPF skipped for whitelisted relay\")."
    ),
    opt!(
        DomainWhitelist,
        "skip",
        "domain_whitelist",
        Some("Domain_Whitelist"),
        "`[]`",
        "Domains whose SPF Pass for the client's IP skips the check (\"SPF skipped for whitelisted relay domain\")."
    ),
    opt!(
        HeloWhitelist,
        "skip",
        "helo_whitelist",
        Some("HELO_Whitelist"),
        "`[]`",
        "HELO names that skip the check when the client's IP is among the name's A/AAAA records."
    ),
    opt!(
        DomainWhitelistPtr,
        "skip",
        "domain_whitelist_ptr",
        Some("Domain_Whitelist_PTR"),
        "`[]`",
        "Domains whose forward-confirmed PTR names skip the check (\"SPF skipped for PTR whitelisted relay domain\")."
    ),
    opt!(
        InternalHosts,
        "skip",
        "internal_hosts",
        Some("InternalHosts"),
        "`127.0.0.1`",
        "Clients not checked and given no header at all: addresses, networks, host names, .domain for names under a domain, !entry to exclude. A string \"file:/path\" (or \"/path\") reads one entry per line."
    ),
    opt!(
        MacroList,
        "skip",
        "macro_list",
        Some("MacroList"),
        "`[]`",
        "If not empty, only connections with one of these MTA macros set are checked: name, or name|value|value for given values (Postfix sends the macros listed in milter_connect_macros / milter_mail_macros)."
    ),
    opt!(
        SkipAuthenticated,
        "skip",
        "skip_authenticated",
        None,
        "`true`",
        "Sessions authenticated with SMTP AUTH ({auth_authen} set at MAIL FROM) are not checked and get no header, as with pyspf-milter."
    ),
    opt!(
        LookupLimit,
        "spf",
        "lookup_limit",
        None,
        "`10`",
        "DNS-querying terms (include a mx ptr exists redirect) per evaluation before PermError; RFC 7208 says 10."
    ),
    opt!(
        VoidLimit,
        "spf",
        "void_limit",
        Some("Void_Limit"),
        "`2`",
        "Lookups answered with no record or NXDOMAIN per evaluation before PermError."
    ),
    opt!(
        LookupTime,
        "spf",
        "lookup_time",
        Some("Lookup_Time"),
        "`20` (seconds)",
        "Time limit of one identity's evaluation; beyond it the result is TempError. Seconds, or a string with a unit (\"1500ms\")."
    ),
    opt!(
        WhitelistLookupTime,
        "spf",
        "whitelist_lookup_time",
        Some("Whitelist_Lookup_Time"),
        "`10` (seconds)",
        "Time limit of each whitelist lookup (domain_whitelist, helo_whitelist, domain_whitelist_ptr)."
    ),
    opt!(
        Nameservers,
        "dns",
        "nameservers",
        None,
        "`[]` (the servers of /etc/resolv.conf)",
        "DNS servers to ask, \"HOST\" or \"HOST:PORT\" (\"[::1]:5353\" for IPv6 with a port)."
    ),
    opt!(
        DnsTimeout,
        "dns",
        "timeout",
        None,
        "`5` (seconds)",
        "Time to wait for one DNS answer before retrying."
    ),
    opt!(
        DnsCacheSize,
        "dns",
        "cache_size",
        None,
        "`\"32M\"` (32 MiB)",
        "Memory the shared DNS cache may keep: answers, NXDOMAIN/NODATA entries, the parsed SPF records kept with TXT answers and the cache's tables, each counted as the allocator takes it. Bytes, or a string with a unit (\"512K\", \"64M\", \"1G\"; binary multiples); at least 1M, or 0 for no cache. The least used entries make room; peak memory is about this plus the daemon's own (BENCHMARKS.md). SIGHUP starts a new, empty cache of this size."
    ),
    opt!(
        LogTarget,
        "log",
        "target",
        None,
        "`syslog`",
        "syslog (facility mail, the lines policyd-spf writes) or stderr."
    ),
    opt!(
        LogLevel,
        "log",
        "level",
        Some("debugLevel"),
        "`1`",
        "policyd-spf's debugLevel: -1 nothing, 0 errors, 1 one line per action, 2 a line per identity checked, 3 configuration and header text, 4 raw request data, 5 internals."
    ),
    opt!(
        MetricsListen,
        "metrics",
        "listen",
        None,
        "unset (no metrics endpoint)",
        "ADDRESS:PORT of a Prometheus text endpoint (GET /metrics); keep it on loopback (\"127.0.0.1:9891\"), it has no access control."
    ),
];

pub(crate) fn info(id: Opt) -> &'static OptionInfo {
    OPTIONS
        .iter()
        .find(|o| o.id == id)
        .expect("every Opt is listed in OPTIONS")
}

/// Keys that policyd-spf or pyspf-milter read but that spfmilter does not
/// use: why, and whether that refuses the file.
pub(crate) struct Unsupported {
    pub legacy: &'static str,
    pub toml: &'static str,
    /// An error when set to a non-empty value (a warning when empty).
    pub refused: bool,
    pub why: &'static str,
}

pub(crate) static UNSUPPORTED: &[Unsupported] = &[
    Unsupported {
        legacy: "HELO_pass_restriction",
        toml: "helo_pass_restriction",
        refused: true,
        why: "a milter cannot return a Postfix restriction class (policy-server only; pyspf-milter answers 451 4.3.0 instead). Remove it; to act on an SPF Pass, match the Received-SPF or Authentication-Results header downstream (OpenDMARC, header_checks), or keep policyd-spf as a check_policy_service for this",
    },
    Unsupported {
        legacy: "Mail_From_pass_restriction",
        toml: "mail_from_pass_restriction",
        refused: true,
        why: "a milter cannot return a Postfix restriction class (policy-server only; pyspf-milter answers 451 4.3.0 instead). Remove it; to act on an SPF Pass, match the Received-SPF or Authentication-Results header downstream (OpenDMARC, header_checks), or keep policyd-spf as a check_policy_service for this",
    },
    Unsupported {
        legacy: "Per_User",
        toml: "per_user",
        refused: true,
        why: "per-recipient settings are a policy-server feature: the milter decides once per message at MAIL FROM, before the recipients are known (pyspf-milter ignores it, which changes decisions silently). Remove it and put the settings that should apply to everyone in this file",
    },
    Unsupported {
        legacy: "Mock",
        toml: "mock",
        refused: false,
        why: "Mock is a policy-server workaround (a dummy first header for milters that cannot see it); a milter adds its headers itself and does not need it: ignored, remove it",
    },
    Unsupported {
        legacy: "defaultSeedOnly",
        toml: "default_seed_only",
        refused: false,
        why: "defaultSeedOnly is the old name of TestOnly and policyd-spf ignores its value (TestOnly always wins); ignored, use TestOnly",
    },
    Unsupported {
        legacy: "IntHosts",
        toml: "int_hosts",
        refused: false,
        why: "IntHosts is internal to pyspf-milter (computed from InternalHosts, whatever the file says): ignored, remove it",
    },
    Unsupported {
        legacy: "QueueID",
        toml: "queue_id",
        refused: false,
        why: "QueueID only changes the policy server's log lines (policyd-spf does not even read it from the file); the milter's log lines carry the queue id when the MTA sends it: ignored, remove it",
    },
];

/// The option table of docs/configuration.md: TOML key, legacy key,
/// default, meaning.
pub fn options_markdown_table() -> String {
    let mut out =
        String::from("| TOML key | policyd-spf key | default | meaning |\n|---|---|---|---|\n");
    for o in OPTIONS {
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
