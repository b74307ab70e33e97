//! Every option, declared once: its `Config` field with type and default,
//! TOML table and key, policyd-spf key, documented default and meaning,
//! parser and renderer (see `declare.rs`). The readers, the did-you-mean
//! suggestions, the commented TOML writer (`conf/spfmilter.toml`, `config
//! check --show`, `config convert`) and the table of docs/configuration.md
//! all follow from this list; docs/design.md ("Adding an option") says
//! what else an option needs.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::Config;
use super::apply::{
    Cx, MAX_HELD_BYTES, MIN_HELD_MESSAGE, Raw, account_name, authserv_id, byte_size, count,
    duration, flag, header_type, idle_timeout, log_level, method_name, metrics_listen, mode,
    one_of, optional, parsed, pid_file, policy, prospective, reason_url, rescue_methods, size_in,
    test_mode, test_only_in_toml,
};
use super::choices::{
    AuthservId, HeaderType, InternalErrorAction, LogLevel, LogTarget, RejectPolicy,
};
use super::declare::{OptionInfo, declare_options};
use super::lists::{cidr_list, domain_list, host_list, macro_list, nameservers};
use super::names::{
    CidrList, DomainName, HostPattern, MacroRule, default_internal_hosts, default_skip_addresses,
    net_to_string,
};
use super::render::{array, quote};
use super::socket::{Mode, SocketSpec, UserSpec};
use super::units::{duration_to_toml, size_to_toml};
use crate::policy::reply::{BlockReply, ReasonMessage, ReasonUrl};
use crate::rescue::Method;

declare_options! {
    /// `[milter]`: the socket, the process, and the headers written.
    [milter] MilterConfig, "The milter: socket, process, headers written." {
        /// `Socket`.
        socket: SocketSpec = SocketSpec::default(),
            legacy "Socket",
            default "`inet:127.0.0.1:8891`",
            parse |raw, cx| parsed(raw, cx, |t| t.parse::<SocketSpec>()),
            render |v| Some(quote(&v.to_string())),
            meaning "Where the milter listens: inet:HOST:PORT, inet6:[ADDRESS]:PORT or unix:/PATH; pyspf-milter's inet:PORT@HOST, inet6:PORT@[ADDRESS] and local:/PATH are accepted too. In Postfix: smtpd_milters = inet:127.0.0.1:8891.";
        /// Permissions of a UNIX socket; `None`: as the umask leaves them.
        socket_mode: Option<Mode> = None,
            default "unset (as the umask leaves it)",
            parse |raw, cx| mode(raw, 0o7777, cx),
            render |v| v.map(|m| quote(&m.to_string())),
            example "\"0660\"",
            meaning "Permissions of a UNIX socket, in octal (\"0660\").";
        /// Owner of a UNIX socket; `None`: the milter's user.
        socket_owner: Option<String> = None,
            default "unset (the milter's user)",
            parse |raw, cx| optional(raw, cx, account_name),
            render |v| v.as_deref().map(quote),
            example "\"spfmilter\"",
            meaning "Owner of a UNIX socket (a user name).";
        /// Group of a UNIX socket (e.g. `postfix`); `None`: the milter's group.
        socket_group: Option<String> = None,
            default "unset (the milter's group)",
            parse |raw, cx| optional(raw, cx, account_name),
            render |v| v.as_deref().map(quote),
            example "\"postfix\"",
            meaning "Group of a UNIX socket, e.g. \"postfix\".";
        /// Connections served at once; more wait to be accepted.
        max_connections: u32 = 1024,
            default "`1024`",
            parse |raw, cx| count(raw, 1, cx),
            render |v| Some(v.to_string()),
            meaning "MTA connections served at once. One more is closed at once, unread, so that the MTA applies its `milter_default_action` without waiting (logged, and counted in `spfmilter_connections_refused_total`). SIGHUP applies a change; connections open over a lowered limit stay open.";
        /// A connection that sends no complete command for this long is
        /// closed.
        idle_timeout: Duration = Duration::from_secs(900),
            default "`900` (seconds)",
            parse idle_timeout,
            render |v| Some(duration_to_toml(*v)),
            meaning "A connection that sends no complete command for this long is closed, so that connections left idle do not hold places under `max_connections`. Postfix's gaps between commands are bounded by `smtpd_timeout` (300 s), except the upload of a message (the headers come once it is queued): 900 s lets a message of Postfix's default `message_size_limit` (10 MB) arrive at 11 kB/s. Raise it if you accept larger messages from slow clients. At most 7200 (2 hours); below 300 a warning. SIGHUP applies a change, to open connections too. Seconds, or a string with a unit.";
        /// Everything done at MAIL FROM (bypass lookups, both evaluations)
        /// within this, to stay inside Postfix's `milter_command_timeout`.
        decision_time_limit: Duration = Duration::from_secs(25),
            default "`25` (seconds)",
            parse duration,
            render |v| Some(duration_to_toml(*v)),
            meaning "Time limit of everything done at MAIL FROM (bypass lookups, HELO and MAIL FROM evaluations together); each evaluation gets the smaller of `lookup_time` and what is left, and running out is TempError. Keep it below Postfix's `milter_command_timeout` (30 s). Seconds, or a string with a unit.";
        /// Reply when the milter fails internally.
        on_internal_error: InternalErrorAction = InternalErrorAction::Tempfail,
            default "`tempfail`",
            parse |raw, cx| one_of(raw, cx, InternalErrorAction::ALL.map(|a| (a.as_str(), a))),
            render |v| Some(quote(v.as_str())),
            meaning "Reply when the milter itself fails (not an SPF result): tempfail (451 4.3.0), accept (no header) or reject (550 5.7.1).";
        /// `Header_Type`.
        header_type: HeaderType = HeaderType::Spf,
            legacy "Header_Type",
            default "`SPF`",
            parse header_type,
            render |v| Some(quote(v.as_str())),
            meaning "Trace header added: SPF (Received-SPF), AR (Authentication-Results), SPF,AR (both) or None.";
        /// `Authserv_Id`.
        authserv_id: AuthservId = AuthservId::MtaHostname,
            legacy "Authserv_Id",
            default "unset (the MTA's `j` macro, Postfix's $myhostname)",
            parse authserv_id,
            render |v| v.configured().map(quote),
            example "\"mx.example.com\"",
            meaning "The authserv-id of Authentication-Results (what OpenDMARC's TrustedAuthservIDs must name): one token (RFC 8601 §2.2), no spaces, quotes or ;()=, usually a host name. HOSTNAME means this machine's host name, as in policyd-spf.";
        /// `Hide_Receiver`: `receiver=` / `r=` become `<UNKNOWN>`.
        hide_receiver: bool = false,
            legacy "Hide_Receiver",
            default "`false` (policyd-spf's code default; its sample file sets Yes)",
            parse |raw, cx| flag(raw, "Yes", "No", cx),
            render |v| Some(v.to_string()),
            meaning "true: receiver= and r= say <UNKNOWN> instead of the first recipient's domain.";
        /// Delete incoming `Received-SPF` and `Authentication-Results` headers
        /// that claim our authserv-id (docs/policyd-spf-compatibility.md §5: the reference never does).
        remove_forged_headers: bool = true,
            default "`true`",
            parse |raw, cx| flag(raw, "true", "false", cx),
            render |v| Some(v.to_string()),
            meaning "Delete incoming Received-SPF headers and Authentication-Results headers that carry our authserv-id (in any form a lenient reader takes for it), so that downstream filters (OpenDMARC) only see ours.";
        /// `PidFile`; `None`: no pid file.
        pid_file: Option<PathBuf> = None,
            legacy "PidFile",
            default "unset (no pid file)",
            parse pid_file,
            render |v| v.as_ref().map(|p| quote(&p.display().to_string())),
            example "\"/run/spfmilter/spfmilter.pid\"",
            meaning "File to write the process id to (an absolute path).";
        /// `UserID`: the user (and group) to switch to; `None`: stay.
        user: Option<UserSpec> = None,
            legacy "UserID",
            default "unset (keep the user it was started as)",
            parse |raw, cx| optional(raw, cx, |t| t.parse::<UserSpec>()),
            render |v| v.as_ref().map(|u| quote(&u.to_string())),
            example "\"spfmilter:spfmilter\"",
            meaning "user[:group] to switch to after opening the socket.";
        /// `UMask`; `None`: inherited.
        umask: Option<Mode> = None,
            legacy "UMask",
            default "unset (inherited)",
            parse |raw, cx| mode(raw, 0o777, cx),
            render |v| v.map(|m| quote(&m.to_string())),
            example "\"0007\"",
            meaning "The process umask, in octal (\"0007\"); it applies to a UNIX socket and the pid file.";
    }

    /// `[policy]`: what the SPF results lead to (docs/policyd-spf-compatibility.md §2–§3).
    [policy] PolicyConfig, "What SPF results lead to (policyd-spf semantics)." {
        /// `HELO_reject`.
        helo_reject: RejectPolicy = RejectPolicy::Fail,
            legacy "HELO_reject",
            default "`Fail`",
            parse |raw, cx| policy(raw, true, cx),
            render |v| Some(quote(v.as_str())),
            meaning "HELO results that reject: SPF_Not_Pass (Fail, Softfail, Neutral), Softfail (Fail, Softfail), Fail, Null (Fail, only for the null sender), False (never reject or defer on HELO, header only), No_Check (no HELO check).";
        /// `Mail_From_reject` (never [`RejectPolicy::Null`]).
        mail_from_reject: RejectPolicy = RejectPolicy::Fail,
            legacy "Mail_From_reject",
            default "`Fail`",
            parse |raw, cx| policy(raw, false, cx),
            render |v| Some(quote(v.as_str())),
            meaning "MAIL FROM results that reject: SPF_Not_Pass, Softfail, Fail, False or No_Check, as for helo_reject.";
        /// `PermError_reject`.
        permerror_reject: bool = false,
            legacy "PermError_reject",
            default "`false`",
            parse |raw, cx| flag(raw, "True", "False", cx),
            render |v| Some(v.to_string()),
            meaning "Reject a PermError (550 5.7.24) in each checked identity whose policy is not False.";
        /// `TempError_Defer`.
        temperror_defer: bool = false,
            legacy "TempError_Defer",
            default "`false`",
            parse |raw, cx| flag(raw, "True", "False", cx),
            render |v| Some(v.to_string()),
            meaning "Defer a TempError (450 4.7.24) in each checked identity whose policy is not False.";
        /// `No_Mail`.
        no_mail: bool = false,
            legacy "No_Mail",
            default "`false`",
            parse |raw, cx| flag(raw, "True", "False", cx),
            render |v| Some(v.to_string()),
            meaning "Keep a reject only when the domain's record is exactly \"v=spf1 -all\"; otherwise add the header instead.";
        /// `Reject_Not_Pass_Domains`.
        reject_not_pass_domains: Vec<DomainName> = Vec::new(),
            legacy "Reject_Not_Pass_Domains",
            default "`[]`",
            parse domain_list,
            render |v| Some(array(v.iter().map(ToString::to_string))),
            meaning "HELO names and sender domains that get the SPF_Not_Pass policy (reason \"Receiver policy for SPF <result>\"); each entry is one name, not the names below it.";
        /// `TestOnly = 0`: nothing is rejected or deferred.
        test_mode: bool = false,
            legacy "TestOnly",
            default "`false` (`TestOnly = 1`)",
            parse test_mode,
            legacy_in_toml test_only_in_toml,
            render |v| Some(v.to_string()),
            meaning "true: reject or defer nothing; add the header that would have been added and log \"would reject\" / \"would defer\". policyd-spf's TestOnly = 0 (also accepted in TOML, with its integer meaning).";
        /// `Prospective`.
        prospective: Option<IpAddr> = None,
            legacy "Prospective",
            default "unset",
            parse prospective,
            render |v| v.map(|ip| quote(&ip.to_string())),
            example "\"192.0.2.1\"",
            meaning "Evaluate as if the client had this IP address (would mail from here pass?); passing mail gets no header.";
        /// `SPF_Enhanced_Status_Codes`.
        enhanced_status_codes: bool = true,
            legacy "SPF_Enhanced_Status_Codes",
            default "`true`",
            parse |raw, cx| flag(raw, "Yes", "No", cx),
            render |v| Some(v.to_string()),
            meaning "Use the RFC 7372 codes 5.7.23, 5.7.24 and 4.7.24; false: plain 550 and 450.";
        /// `Reason_Message`.
        reason_message: ReasonMessage = ReasonMessage::default(),
            legacy "Reason_Message",
            default "`Message {rejectdefer} due to: {spf}. Please see {url}`",
            parse |raw, cx| parsed(raw, cx, |t| t.parse::<ReasonMessage>()),
            render |v| Some(quote(&v.to_string())),
            meaning "Text of a reject or defer: {rejectdefer} is rejected or deferred, {spf} the explanation, {url} the expanded reason_url; {{ and }} are literal braces.";
        /// `Reason_URL`.
        reason_url: ReasonUrl = ReasonUrl::default(),
            legacy "Reason_URL",
            default "`\"\"` (no URL; policyd-spf's default, http://www.openspf.net/Why?s={0};id={1};ip={2};r={3}, is a defunct site)",
            parse reason_url,
            render |v| Some(quote(&v.to_string())),
            meaning "The {url} of reason_message: {0} helo or mfrom, {1} the HELO name or sender, {2} the client IP, {3} the receiver. Empty: no URL, and the default reason_message ends after {spf}.";
    }

    /// `[skip]`: clients and sessions that are not checked.
    [skip] SkipConfig, "Clients and sessions that are not checked." {
        /// `skip_addresses`.
        skip_addresses: CidrList = default_skip_addresses(),
            legacy "skip_addresses",
            default "`127.0.0.0/8, ::ffff:127.0.0.0/104, ::1`",
            parse cidr_list,
            render |v| Some(array(v.entries().iter().map(|n| net_to_string(*n)))),
            meaning "Clients not checked, with the trace header \"X-Comment: SPF check N/A for local connections\". IPv4-mapped networks (::ffff:a.b.c.d/N) match as their IPv4 network.";
        /// `Whitelist`.
        whitelist: CidrList = CidrList::default(),
            legacy "Whitelist",
            default "`[]`",
            parse cidr_list,
            render |v| Some(array(v.entries().iter().map(|n| net_to_string(*n)))),
            meaning "Networks of trusted relays not checked (\"SPF skipped for whitelisted relay\").";
        /// `Domain_Whitelist`.
        domain_whitelist: Vec<DomainName> = Vec::new(),
            legacy "Domain_Whitelist",
            default "`[]`",
            parse domain_list,
            render |v| Some(array(v.iter().map(ToString::to_string))),
            meaning "Domains whose SPF Pass for the client's IP skips the check (\"SPF skipped for whitelisted relay domain\").";
        /// `HELO_Whitelist`.
        helo_whitelist: Vec<DomainName> = Vec::new(),
            legacy "HELO_Whitelist",
            default "`[]`",
            parse domain_list,
            render |v| Some(array(v.iter().map(ToString::to_string))),
            meaning "HELO names that skip the check when the client's IP is among the name's A/AAAA records.";
        /// `Domain_Whitelist_PTR`.
        domain_whitelist_ptr: Vec<DomainName> = Vec::new(),
            legacy "Domain_Whitelist_PTR",
            default "`[]`",
            parse domain_list,
            render |v| Some(array(v.iter().map(ToString::to_string))),
            meaning "Domains whose forward-confirmed PTR names skip the check (\"SPF skipped for PTR whitelisted relay domain\").";
        /// `InternalHosts`: not checked, no header.
        internal_hosts: Vec<HostPattern> = default_internal_hosts(),
            legacy "InternalHosts",
            default "`127.0.0.1`",
            parse host_list,
            render |v| Some(array(v.iter().map(ToString::to_string))),
            meaning "Clients not checked and given no header at all: addresses, networks, host names, .domain for names under a domain, !entry to exclude. A string \"file:/path\" (or \"/path\") reads one entry per line.";
        /// `MacroList`: when not empty, only connections matching a rule are
        /// checked.
        macro_list: Vec<MacroRule> = Vec::new(),
            legacy "MacroList",
            default "`[]`",
            parse macro_list,
            render |v| Some(array(v.iter().map(ToString::to_string))),
            meaning "If not empty, only connections with one of these MTA macros set are checked: name, or name|value|value for given values (Postfix sends the macros listed in milter_connect_macros / milter_mail_macros).";
        /// Sessions authenticated with SMTP AUTH (`{auth_authen}` set) are not
        /// checked and get no header (as pyspf-milter does).
        skip_authenticated: bool = true,
            default "`true`",
            parse |raw, cx| flag(raw, "true", "false", cx),
            render |v| Some(v.to_string()),
            meaning "Sessions authenticated with SMTP AUTH ({auth_authen} set at MAIL FROM) are not checked and get no header, as with pyspf-milter.";
    }

    /// `[block]`: refusing mail by a listed operator's SPF (src/policy/block.rs).
    [block] BlockConfig, "Refusing mail by the SPF infrastructure of listed operators (no policyd-spf equivalent)." {
        /// Operators whose SPF authorizes the client: check_host(client IP,
        /// D, postmaster@D) is Pass for a listed D.
        authorized_by: Vec<DomainName> = Vec::new(),
            default "`[]`",
            parse domain_list,
            render |v| Some(array(v.iter().map(ToString::to_string))),
            meaning "Refuse the message at MAIL FROM when check_host(client IP, D, postmaster@D) is Pass for a listed domain D: the client is in the networks D's SPF authorizes (ip4, ip6, a, mx, include, as D publishes them now). Costs one evaluation per listed domain per message (cached DNS), within decision_time_limit and the [spf] limits. A TempError or PermError of D never refuses (logged). Runs after the bypass chain: a skipped session is never refused.";
        /// Operators whose records the sender's SPF goes through.
        includes: Vec<DomainName> = Vec::new(),
            default "`[]`",
            parse domain_list,
            render |v| Some(array(v.iter().map(ToString::to_string))),
            meaning "Refuse the message at MAIL FROM when the HELO or MAIL FROM evaluation entered a listed name through include: or redirect=, at any depth (a macro-built name as expanded), before it reached its result; TempError and PermError results never refuse. Catches a new domain of an operator that delegates to its own include the first time it is seen. Each entry is one name, not the names below it.";
        /// `authorized_by` only logs (`would block`).
        authorized_by_test: bool = false,
            default "`false`",
            parse |raw, cx| flag(raw, "true", "false", cx),
            render |v| Some(v.to_string()),
            meaning "true: a match of authorized_by is logged (\"would block\") and counted, and the message goes on to the normal SPF decision. [policy] test_mode does the same for both rules.";
        /// `includes` only logs (`would block`).
        includes_test: bool = false,
            default "`false`",
            parse |raw, cx| flag(raw, "true", "false", cx),
            render |v| Some(v.to_string()),
            meaning "true: a match of includes is logged (\"would block\") and counted, and the message goes on as the SPF decision says.";
        /// The text of a block's reply (550 5.7.1).
        reply: BlockReply = BlockReply::default(),
            default "`Mail from the SPF infrastructure of a blocked operator ({name}) is refused`",
            parse |raw, cx| parsed(raw, cx, |t| t.parse::<BlockReply>()),
            render |v| Some(quote(&v.to_string())),
            meaning "Text of the 550 5.7.1 reply to a blocked message (plain 550 with enhanced_status_codes = false): {name} is the listed name that matched, {rule} authorized_by or includes; {{ and }} are literal braces.";
    }

    /// `[spf]`: limits of one evaluation.
    [spf] SpfConfig, "Limits of one SPF evaluation (RFC 7208 §4.6.4)." {
        /// RFC 7208 §4.6.4 limit of DNS-querying terms.
        lookup_limit: u32 = 10,
            default "`10`",
            parse |raw, cx| count(raw, 1, cx),
            render |v| Some(v.to_string()),
            meaning "DNS-querying terms (include a mx ptr exists redirect) per evaluation before PermError; RFC 7208 says 10.";
        /// `Void_Limit`.
        void_limit: u32 = 2,
            legacy "Void_Limit",
            default "`2`",
            parse |raw, cx| count(raw, 0, cx),
            render |v| Some(v.to_string()),
            meaning "Lookups answered with no record or NXDOMAIN per evaluation before PermError.";
        /// `Lookup_Time`: per identity.
        lookup_time: Duration = Duration::from_secs(20),
            legacy "Lookup_Time",
            default "`20` (seconds)",
            parse duration,
            render |v| Some(duration_to_toml(*v)),
            meaning "Time limit of one identity's evaluation; beyond it the result is TempError. Seconds, or a string with a unit (\"1500ms\").";
        /// `Whitelist_Lookup_Time`: per whitelist lookup.
        whitelist_lookup_time: Duration = Duration::from_secs(10),
            legacy "Whitelist_Lookup_Time",
            default "`10` (seconds)",
            parse duration,
            render |v| Some(duration_to_toml(*v)),
            meaning "Time limit of each whitelist lookup (domain_whitelist, helo_whitelist, domain_whitelist_ptr).";
    }

    /// `[dns]`.
    [dns] DnsConfig, "DNS resolution." {
        /// Servers to ask; empty: those of `/etc/resolv.conf`.
        nameservers: Vec<SocketAddr> = Vec::new(),
            default "`[]` (the servers of /etc/resolv.conf)",
            parse nameservers,
            render |v| Some(array(v.iter().map(ToString::to_string))),
            meaning "DNS servers to ask, \"HOST\" or \"HOST:PORT\" (\"[::1]:5353\" for IPv6 with a port).";
        /// Time to wait for one answer before retrying.
        timeout: Duration = Duration::from_secs(5),
            default "`5` (seconds)",
            parse duration,
            render |v| Some(duration_to_toml(*v)),
            meaning "Time to wait for one DNS answer before retrying.";
        /// The DNS cache's byte budget (0: no cache).
        cache_size: usize = crate::dns::cache::DEFAULT_MAX_BYTES,
            default "`\"32M\"` (32 MiB)",
            parse byte_size,
            render |v| Some(size_to_toml(*v)),
            meaning "Memory the shared DNS cache may keep: answers, NXDOMAIN/NODATA entries, the parsed SPF records kept with TXT answers and the cache's tables, each counted as the allocator takes it. Bytes, or a string with a unit (\"512K\", \"64M\", \"1G\"; binary multiples); at least 1M, or 0 for no cache. The least used entries make room; peak memory is about this plus the daemon's own (BENCHMARKS.md). SIGHUP starts a new, empty cache of this size.";
        /// Start the queries of a fetched SPF record's terms at once.
        prefetch: bool = true,
            default "`true`",
            parse |raw, cx| flag(raw, "true", "false", cx),
            render |v| Some(v.to_string()),
            meaning "true: once an evaluation has had to wait for the DNS, start the queries of the terms of each record it then fetches (include and redirect targets, a, mx and exists names, and the terms of included records as they arrive) at once, so that a cold include tree costs about one DNS round trip per level instead of one per lookup (BENCHMARKS.md, W6). Results and the RFC 7208 lookup limits are the same either way; at most 10 term and 10 MX-name queries per evaluation. Only with the cache (cache_size not 0).";
    }

    /// `[rescue]`: SPF rejects held to end of message, cancelled when the
    /// message proves its author (docs/configuration.md, README.md).
    [rescue] RescueConfig, "Reject without losing forwarded mail: SPF rejects held to end of message." {
        /// How a held message may prove its author; empty: nothing is held.
        methods: Vec<Method> = Vec::new(),
            default "`[]` (off: rejects at MAIL FROM as without this table)",
            parse rescue_methods,
            render |v| Some(array(v.iter().map(|m| method_name(*m).to_owned()))),
            meaning "How a held message may prove its author: \"dkim\" (a DKIM signature that verifies, its d= aligned with the From domain or the MAIL FROM domain, RFC 6376) and \"arc\" (a valid ARC chain whose newest set is sealed by one of trusted_arc_sealers and says the message passed, RFC 8617). Not empty: every reject SPF causes at MAIL FROM (HELO or MAIL FROM, any policy, PermError_reject, Reject_Not_Pass_Domains, No_Mail) is held: the message is received and the reject is decided at end of message: rescued, it is accepted with the trace headers it would have had in test mode (the true SPF result, e.g. Fail); not rescued, it is rejected with the same reply; a temporary failure defers it (451). Defers (TempError) are never held; messages not held are not transferred to the milter (SMFIS_SKIP). Empty: off.";
        /// ARC sealers (`d=` of ARC-Seal) whose verdicts are trusted.
        trusted_arc_sealers: Vec<DomainName> = Vec::new(),
            default "`[]`",
            parse domain_list,
            render |v| Some(array(v.iter().map(ToString::to_string))),
            meaning "Domains (d= of the newest ARC-Seal) whose ARC verdicts the arc method trusts: the mailing lists and forwarders your users receive mail through, which check DKIM, SPF and DMARC and seal what they saw. Each entry is one name, not the names below it. \"arc\" in methods with no sealer listed rescues nothing by ARC (a warning).";
        /// Bytes kept per held message; a larger message is not rescued.
        max_message_size: usize = 10 << 20,
            default "`\"10M\"` (10485760 bytes)",
            parse |raw, cx| size_in(raw, cx, MIN_HELD_MESSAGE, MAX_HELD_BYTES),
            render |v| Some(size_to_toml(*v)),
            meaning "Bytes of a held message kept for the rescue (header and body as received). A larger message is not rescued: it is rejected with the held reply (logged). Bytes, or a string with a unit (\"512K\", \"10M\"); from 64K to 64G, and at most max_held_bytes.";
        /// Bytes held by all connections together.
        max_held_bytes: usize = 256 << 20,
            default "`\"256M\"`",
            parse |raw, cx| size_in(raw, cx, MIN_HELD_MESSAGE, MAX_HELD_BYTES),
            render |v| Some(size_to_toml(*v)),
            meaning "Bytes of held messages kept by all connections together. A held message that does not fit is deferred at end of message (451 4.3.1, logged): never accepted unchecked, never lost. Peak memory grows by up to this. Bytes, or a string with a unit; from 64K to 64G.";
        /// Time limit of a held message's key lookups.
        time_limit: Duration = Duration::from_secs(10),
            default "`10` (seconds)",
            parse duration,
            render |v| Some(duration_to_toml(*v)),
            meaning "Time limit of a held message's verification at end of message (DKIM and ARC key lookups, through the [dns] settings); running out defers the message (451 4.4.3). Keep it well below Postfix's milter_content_timeout (300 s). Seconds, or a string with a unit.";
    }

    /// `[log]`.
    [log] LogConfig, "Logging." {
        /// Where log lines go.
        target: LogTarget = LogTarget::Syslog,
            default "`syslog`",
            parse |raw, cx| one_of(raw, cx, LogTarget::ALL.map(|a| (a.as_str(), a))),
            render |v| Some(quote(v.as_str())),
            meaning "syslog (facility mail, the lines policyd-spf writes) or stderr.";
        /// `debugLevel`.
        level: LogLevel = LogLevel::Actions,
            legacy "debugLevel",
            default "`1`",
            parse log_level,
            render |v| Some(v.as_int().to_string()),
            meaning "policyd-spf's debugLevel: -1 nothing, 0 errors, 1 one line per action, 2 a line per identity checked, 3 configuration and header text, 4 raw request data, 5 internals.";
    }

    /// `[metrics]`.
    [metrics] MetricsConfig, "Prometheus metrics (off unless listen is set)." {
        /// Where the Prometheus endpoint listens; `None`: nowhere.
        listen: Option<SocketAddr> = None,
            default "unset (no metrics endpoint)",
            parse metrics_listen,
            render |v| v.map(|a| quote(&a.to_string())),
            example "\"127.0.0.1:9891\"",
            meaning "ADDRESS:PORT of a Prometheus text endpoint (GET /metrics); keep it on loopback (\"127.0.0.1:9891\"), it has no access control.";
    }
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
