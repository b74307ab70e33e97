//! The configuration readers: every option in both formats, the reference's
//! sample files, the pitfalls of docs/policyd-spf-compatibility.md §1 with their line numbers, and the
//! `config check` / `config convert` commands.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use spfmilter::config::DomainName;
use spfmilter::config::{
    AuthservId, Config, Datasets, Diagnostic, HeaderType, HostKind, InternalErrorAction, LoadError,
    Loaded, LogLevel, LogTarget, Mode, OPTIONS, Overrides, RejectPolicy, Severity, SocketSpec,
    Source, options_markdown_table,
};
use spfmilter::rescue::Method;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn legacy(text: &str) -> Result<Loaded, LoadError> {
    Config::parse_legacy(text, "test.conf", Datasets::Refuse)
}

fn toml(text: &str) -> Result<Loaded, LoadError> {
    Config::parse_toml(text, "test.toml", Datasets::Refuse)
}

#[track_caller]
fn ok(r: Result<Loaded, LoadError>) -> (Config, Vec<Diagnostic>) {
    match r {
        Ok(l) => ((*l.config).clone(), l.warnings),
        Err(e) => panic!("refused:\n{e}"),
    }
}

#[track_caller]
fn refused(r: Result<Loaded, LoadError>) -> Vec<Diagnostic> {
    match r {
        Ok(l) => panic!("accepted: {:?}, warnings {:?}", l.config, l.warnings),
        Err(e) => e.diagnostics,
    }
}

/// The one diagnostic of `severity` on `line`, whose text contains `needle`.
#[track_caller]
fn has(diags: &[Diagnostic], severity: Severity, line: usize, needle: &str) {
    assert!(
        diags
            .iter()
            .any(|d| d.severity == severity && d.line == Some(line) && d.message.contains(needle)),
        "no {severity} on line {line} containing {needle:?} in:\n{}",
        diags.iter().map(|d| format!("  {d}\n")).collect::<String>()
    );
}

fn nets(list: &spfmilter::config::CidrList) -> Vec<String> {
    list.entries().iter().map(ToString::to_string).collect()
}

// ------------------------------------------------------------ defaults

#[test]
fn built_in_defaults_are_conf_spfmilter_toml() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/spfmilter.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (cfg, warnings) = ok(Config::load_toml(&path));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(cfg, Config::default());
    // The file is exactly what the writer prints for the defaults, so it
    // lists every option, commented, at its default.
    assert_eq!(text, Config::default().to_toml());
    for o in OPTIONS {
        assert!(
            text.contains(&format!("\n{} = ", o.key)) || text.contains(&format!("\n#{} = ", o.key)),
            "{} missing from conf/spfmilter.toml",
            o.key
        );
    }
}

#[test]
fn reference_defaults() {
    let c = Config::default();
    assert_eq!(c.policy.helo_reject, RejectPolicy::Fail);
    assert_eq!(c.policy.mail_from_reject, RejectPolicy::Fail);
    assert!(!c.policy.permerror_reject && !c.policy.temperror_defer && !c.policy.no_mail);
    assert!(!c.policy.test_mode);
    assert!(c.policy.enhanced_status_codes);
    assert_eq!(
        nets(&c.skip.skip_addresses),
        ["127.0.0.0/8", "::ffff:127.0.0.0/104", "::1/128"]
    );
    assert_eq!(c.milter.header_type, HeaderType::Spf);
    // policyd-spf's code default (its sample file sets Yes).
    assert!(!c.milter.hide_receiver);
    assert_eq!(c.milter.authserv_id, AuthservId::MtaHostname);
    assert_eq!(c.spf.lookup_time, Duration::from_secs(20));
    assert_eq!(c.spf.whitelist_lookup_time, Duration::from_secs(10));
    assert_eq!(c.spf.void_limit, 2);
    assert_eq!(c.log.level, LogLevel::Actions);
    assert_eq!(
        c.policy.reason_message.to_string(),
        "Message {rejectdefer} due to: {spf}. Please see {url}"
    );
    // No URL by default: policyd-spf's points at a defunct site.
    assert_eq!(c.policy.reason_url.to_string(), "");
    assert_eq!(c.milter.socket.to_string(), "inet:127.0.0.1:8891");
    assert_eq!(c.skip.internal_hosts.len(), 1);
    assert_eq!(c.skip.internal_hosts[0].to_string(), "127.0.0.1");
    let limits = c.spf_limits();
    assert_eq!(
        (limits.dns_lookups, limits.void_lookups, limits.time),
        (10, 2, Duration::from_secs(20))
    );
    // An empty file of either format is the defaults.
    assert_eq!(ok(legacy("")).0, c);
    assert_eq!(ok(toml("")).0, c);
}

#[test]
fn spf_limits_follow_the_options() {
    let (c, _) = ok(toml(
        "[spf]\nlookup_limit = 15\nvoid_limit = 3\nlookup_time = 7\n",
    ));
    let l = c.spf_limits();
    assert_eq!(
        (l.dns_lookups, l.void_lookups, l.time),
        (15, 3, Duration::from_secs(7))
    );
    assert_eq!((l.mx_names, l.ptr_names), (10, 10));
}

// ------------------------------------------------------- reference samples

#[test]
fn debian_sample_loads() {
    let (c, warnings) = ok(Config::load_legacy(&fixture("debian-policyd-spf.conf")));
    assert!(warnings.is_empty(), "{warnings:?}");
    // Everything it sets is the default.
    assert_eq!(c, Config::default());
}

#[test]
fn commented_sample_loads() {
    let (c, warnings) = ok(Config::load_legacy(&fixture("policyd-spf.conf.commented")));
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut expected = Config::default();
    expected.milter.hide_receiver = true;
    expected.milter.authserv_id = AuthservId::Fixed("HEADER".into());
    assert_eq!(c, expected);
}

#[test]
fn pyspf_milter_sample_loads() {
    let (c, warnings) = ok(Config::load_legacy(&fixture("pyspf-milter.conf")));
    assert_eq!(c.milter.socket.to_string(), "inet:localhost:8893");
    assert_eq!(
        c.milter.pid_file.as_deref(),
        Some(Path::new("/run/pyspf-milter/pyspf-milter.pid"))
    );
    assert_eq!(c.milter.user.as_ref().unwrap().to_string(), "pyspf-milter");
    assert_eq!(c.skip.internal_hosts[0].to_string(), "127.0.0.1");
    // pyspf-milter always writes Authentication-Results: both differences
    // are reported, without a line (they come from what the file omits).
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings.iter().all(|w| w.line.is_none()));
    assert!(
        warnings[0]
            .message
            .contains("pyspf-milter writes Authentication-Results")
    );
    assert!(warnings[1].message.contains("Authserv_Id is not set"));
}

// ------------------------------------------------------ every option

/// One option written in both formats.
struct Case {
    /// `table.key` in TOML.
    toml_key: &'static str,
    legacy_key: Option<&'static str>,
    /// The value in policyd-spf.conf syntax and in TOML syntax.
    legacy_value: &'static str,
    toml_value: &'static str,
    /// Holds for the value above, not for the default.
    check: fn(&Config) -> bool,
    /// Refused values.
    bad_legacy: &'static str,
    bad_toml: &'static str,
}

fn cases() -> Vec<Case> {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let _ = ip;
    vec![
        Case {
            toml_key: "milter.socket",
            legacy_key: Some("Socket"),
            legacy_value: "local:/run/spf.sock",
            toml_value: "\"unix:/run/spf.sock\"",
            check: |c| c.milter.socket == SocketSpec::Unix("/run/spf.sock".into()),
            bad_legacy: "tcp:25",
            bad_toml: "25",
        },
        Case {
            toml_key: "milter.socket_mode",
            legacy_key: None,
            legacy_value: "",
            toml_value: "\"0660\"",
            check: |c| c.milter.socket_mode == Some(Mode(0o660)),
            bad_legacy: "",
            bad_toml: "\"0999\"",
        },
        Case {
            toml_key: "milter.socket_owner",
            legacy_key: None,
            legacy_value: "",
            toml_value: "\"spfmilter\"",
            check: |c| c.milter.socket_owner.as_deref() == Some("spfmilter"),
            bad_legacy: "",
            bad_toml: "\"a b\"",
        },
        Case {
            toml_key: "milter.socket_group",
            legacy_key: None,
            legacy_value: "",
            toml_value: "\"postfix\"",
            check: |c| c.milter.socket_group.as_deref() == Some("postfix"),
            bad_legacy: "",
            bad_toml: "7",
        },
        Case {
            toml_key: "milter.max_connections",
            legacy_key: None,
            legacy_value: "",
            toml_value: "64",
            check: |c| c.milter.max_connections == 64,
            bad_legacy: "",
            bad_toml: "0",
        },
        Case {
            toml_key: "metrics.listen",
            legacy_key: None,
            legacy_value: "",
            toml_value: "\"127.0.0.1:9891\"",
            check: |c| c.metrics.listen == Some("127.0.0.1:9891".parse().unwrap()),
            bad_legacy: "",
            bad_toml: "\"localhost\"",
        },
        Case {
            toml_key: "milter.decision_time_limit",
            legacy_key: None,
            legacy_value: "",
            toml_value: "\"1500ms\"",
            check: |c| c.milter.decision_time_limit == Duration::from_millis(1500),
            bad_legacy: "",
            bad_toml: "\"soon\"",
        },
        Case {
            toml_key: "milter.idle_timeout",
            legacy_key: None,
            legacy_value: "",
            toml_value: "\"20m\"",
            check: |c| c.milter.idle_timeout == Duration::from_secs(1200),
            bad_legacy: "",
            bad_toml: "7201",
        },
        Case {
            toml_key: "milter.on_internal_error",
            legacy_key: None,
            legacy_value: "",
            toml_value: "\"Accept\"",
            check: |c| c.milter.on_internal_error == InternalErrorAction::Accept,
            bad_legacy: "",
            bad_toml: "\"ignore\"",
        },
        Case {
            toml_key: "milter.header_type",
            legacy_key: Some("Header_Type"),
            legacy_value: "AR",
            toml_value: "\"AR\"",
            check: |c| c.milter.header_type == HeaderType::Ar,
            bad_legacy: "XY",
            bad_toml: "\"XY\"",
        },
        Case {
            toml_key: "milter.authserv_id",
            legacy_key: Some("Authserv_Id"),
            legacy_value: "mx.example.com",
            toml_value: "\"mx.example.com\"",
            check: |c| c.milter.authserv_id == AuthservId::Fixed("mx.example.com".into()),
            bad_legacy: "mx\u{7f}",
            bad_toml: "\"tab\\there\"",
        },
        Case {
            toml_key: "milter.hide_receiver",
            legacy_key: Some("Hide_Receiver"),
            legacy_value: "Yes",
            toml_value: "true",
            check: |c| c.milter.hide_receiver,
            bad_legacy: "True",
            bad_toml: "1",
        },
        Case {
            toml_key: "milter.remove_forged_headers",
            legacy_key: None,
            legacy_value: "",
            toml_value: "false",
            check: |c| !c.milter.remove_forged_headers,
            bad_legacy: "",
            bad_toml: "\"maybe\"",
        },
        Case {
            toml_key: "milter.pid_file",
            legacy_key: Some("PidFile"),
            legacy_value: "/run/s.pid",
            toml_value: "\"/run/s.pid\"",
            check: |c| c.milter.pid_file.as_deref() == Some(Path::new("/run/s.pid")),
            bad_legacy: "run/s.pid",
            bad_toml: "\"s.pid\"",
        },
        Case {
            toml_key: "milter.user",
            legacy_key: Some("UserID"),
            legacy_value: "spf:mail",
            toml_value: "\"spf:mail\"",
            check: |c| {
                c.milter
                    .user
                    .as_ref()
                    .is_some_and(|u| u.user == "spf" && u.group.as_deref() == Some("mail"))
            },
            bad_legacy: "a:b:c",
            bad_toml: "\"a b\"",
        },
        Case {
            toml_key: "milter.umask",
            legacy_key: Some("UMask"),
            legacy_value: "7",
            toml_value: "\"0007\"",
            check: |c| c.milter.umask == Some(Mode(0o7)),
            bad_legacy: "22",
            bad_toml: "\"0o9\"",
        },
        Case {
            toml_key: "policy.helo_reject",
            legacy_key: Some("HELO_reject"),
            legacy_value: "SPF_Not_Pass",
            toml_value: "\"SPF_Not_Pass\"",
            check: |c| c.policy.helo_reject == RejectPolicy::SpfNotPass,
            bad_legacy: "Reject",
            bad_toml: "\"Reject\"",
        },
        Case {
            toml_key: "policy.mail_from_reject",
            legacy_key: Some("Mail_From_reject"),
            legacy_value: "No_Check",
            toml_value: "\"no_check\"",
            check: |c| c.policy.mail_from_reject == RejectPolicy::NoCheck,
            bad_legacy: "Null",
            bad_toml: "\"Null\"",
        },
        Case {
            toml_key: "policy.permerror_reject",
            legacy_key: Some("PermError_reject"),
            legacy_value: "True",
            toml_value: "true",
            check: |c| c.policy.permerror_reject,
            bad_legacy: "Yes",
            bad_toml: "\"perhaps\"",
        },
        Case {
            toml_key: "policy.temperror_defer",
            legacy_key: Some("TempError_Defer"),
            legacy_value: "True",
            toml_value: "true",
            check: |c| c.policy.temperror_defer,
            bad_legacy: "1",
            bad_toml: "1",
        },
        Case {
            toml_key: "policy.no_mail",
            legacy_key: Some("No_Mail"),
            legacy_value: "True",
            toml_value: "true",
            check: |c| c.policy.no_mail,
            bad_legacy: "on",
            bad_toml: "[]",
        },
        Case {
            toml_key: "policy.reject_not_pass_domains",
            legacy_key: Some("Reject_Not_Pass_Domains"),
            legacy_value: "aol.com,Hotmail.com",
            toml_value: "[\"aol.com\", \"Hotmail.com\"]",
            check: |c| {
                c.policy
                    .reject_not_pass_domains
                    .iter()
                    .map(|d| d.as_str())
                    .eq(["aol.com", "hotmail.com"])
            },
            bad_legacy: "aol..com",
            bad_toml: "[\"a b\"]",
        },
        Case {
            toml_key: "policy.test_mode",
            legacy_key: Some("TestOnly"),
            legacy_value: "0",
            toml_value: "true",
            check: |c| c.policy.test_mode,
            bad_legacy: "False",
            bad_toml: "\"sometimes\"",
        },
        Case {
            toml_key: "policy.prospective",
            legacy_key: Some("Prospective"),
            legacy_value: "192.168.0.4",
            toml_value: "\"192.168.0.4\"",
            check: |c| c.policy.prospective == Some("192.168.0.4".parse().unwrap()),
            bad_legacy: "192.168.0",
            bad_toml: "\"host.example\"",
        },
        Case {
            toml_key: "policy.enhanced_status_codes",
            legacy_key: Some("SPF_Enhanced_Status_Codes"),
            legacy_value: "No",
            toml_value: "false",
            check: |c| !c.policy.enhanced_status_codes,
            bad_legacy: "False",
            bad_toml: "0",
        },
        Case {
            toml_key: "policy.reason_message",
            legacy_key: Some("Reason_Message"),
            legacy_value: "{rejectdefer}: {spf}",
            toml_value: "\"{rejectdefer}: {spf}\"",
            check: |c| c.policy.reason_message.render("rejected", "x", "u") == "rejected: x",
            bad_legacy: "{reason}",
            bad_toml: "\"{0}\"",
        },
        Case {
            toml_key: "policy.reason_url",
            legacy_key: Some("Reason_URL"),
            legacy_value: "https://spf.example/?{0}={1}&ip={2}",
            toml_value: "\"https://spf.example/?{0}={1}&ip={2}\"",
            check: |c| {
                c.policy.reason_url.render(["mfrom", "a@b", "1.2.3.4", "r"])
                    == "https://spf.example/?mfrom=a@b&ip=1.2.3.4"
            },
            bad_legacy: "http://x/{4}",
            bad_toml: "\"{url}\"",
        },
        Case {
            toml_key: "skip.skip_addresses",
            legacy_key: Some("skip_addresses"),
            legacy_value: "10.0.0.0/8,::1",
            toml_value: "[\"10.0.0.0/8\", \"::1\"]",
            check: |c| nets(&c.skip.skip_addresses) == ["10.0.0.0/8", "::1/128"],
            bad_legacy: "10.0.0.0/33",
            bad_toml: "[\"x\"]",
        },
        Case {
            toml_key: "skip.whitelist",
            legacy_key: Some("Whitelist"),
            legacy_value: "192.168.0.0/31,192.168.1.12",
            toml_value: "[\"192.168.0.0/31\", \"192.168.1.12\"]",
            check: |c| {
                c.skip.whitelist.contains("192.168.1.12".parse().unwrap())
                    && c.skip.whitelist.contains("192.168.0.1".parse().unwrap())
                    && !c.skip.whitelist.contains("192.168.0.2".parse().unwrap())
            },
            bad_legacy: "192.168.0.1/31",
            bad_toml: "\"1.2.3.4/40\"",
        },
        Case {
            toml_key: "skip.domain_whitelist",
            legacy_key: Some("Domain_Whitelist"),
            legacy_value: "pobox.com,trustedforwarder.org",
            toml_value: "[\"pobox.com\", \"trustedforwarder.org\"]",
            check: |c| c.skip.domain_whitelist.len() == 2,
            bad_legacy: "pobox.com,-",
            bad_toml: "[1]",
        },
        Case {
            toml_key: "skip.helo_whitelist",
            legacy_key: Some("HELO_Whitelist"),
            legacy_value: "relay.example.com",
            toml_value: "[\"relay.example.com\"]",
            check: |c| {
                c.skip
                    .helo_whitelist
                    .first()
                    .is_some_and(|d| d.as_str() == "relay.example.com")
            },
            bad_legacy: "relay example",
            bad_toml: "[\"a/b\"]",
        },
        Case {
            toml_key: "skip.domain_whitelist_ptr",
            legacy_key: Some("Domain_Whitelist_PTR"),
            legacy_value: "yahoo.com",
            toml_value: "[\"yahoo.com\"]",
            check: |c| {
                c.skip
                    .domain_whitelist_ptr
                    .first()
                    .is_some_and(|d| d.as_str() == "yahoo.com")
            },
            bad_legacy: "yahoo.com.,,a..b",
            bad_toml: "[\".\"]",
        },
        Case {
            toml_key: "skip.internal_hosts",
            legacy_key: Some("InternalHosts"),
            legacy_value: "192.168.1.0/24, !192.168.1.1, .example.com, mx.example.net",
            toml_value: "[\"192.168.1.0/24\", \"!192.168.1.1\", \".example.com\", \"mx.example.net\"]",
            check: |c| {
                c.skip.internal_hosts.len() == 4
                    && c.skip.internal_hosts[1].negated
                    && matches!(c.skip.internal_hosts[2].kind, HostKind::Domain(_))
            },
            bad_legacy: "localhost",
            bad_toml: "[\"10.0.0.1/8\"]",
        },
        Case {
            toml_key: "skip.macro_list",
            legacy_key: Some("MacroList"),
            legacy_value: "daemon_name|ORIGINATING,auth_type",
            toml_value: "[\"daemon_name|ORIGINATING\", \"auth_type\"]",
            check: |c| {
                c.skip.macro_list.len() == 2 && c.skip.macro_list[0].values == ["ORIGINATING"]
            },
            bad_legacy: "a b|c",
            bad_toml: "[\"|x\"]",
        },
        Case {
            toml_key: "skip.skip_authenticated",
            legacy_key: None,
            legacy_value: "",
            toml_value: "false",
            check: |c| !c.skip.skip_authenticated,
            bad_legacy: "",
            bad_toml: "\"x\"",
        },
        Case {
            toml_key: "block.authorized_by",
            legacy_key: None,
            legacy_value: "",
            toml_value: "[\"spf-stx.burn-oxygen.test\", \"OP.example.\"]",
            check: |c| {
                c.block.authorized_by.len() == 2
                    && c.block.authorized_by[1].as_str() == "op.example"
            },
            bad_legacy: "",
            bad_toml: "[\"a..b\"]",
        },
        Case {
            toml_key: "block.includes",
            legacy_key: None,
            legacy_value: "",
            toml_value: "[\"spf-stx.burn-oxygen.test\"]",
            check: |c| {
                c.block
                    .includes
                    .first()
                    .is_some_and(|d| d.as_str() == "spf-stx.burn-oxygen.test")
            },
            bad_legacy: "",
            bad_toml: "[\"spf stx\"]",
        },
        Case {
            toml_key: "block.authorized_by_test",
            legacy_key: None,
            legacy_value: "",
            toml_value: "true",
            check: |c| c.block.authorized_by_test,
            bad_legacy: "",
            bad_toml: "\"maybe\"",
        },
        Case {
            toml_key: "block.includes_test",
            legacy_key: None,
            legacy_value: "",
            toml_value: "true",
            check: |c| c.block.includes_test,
            bad_legacy: "",
            bad_toml: "2",
        },
        Case {
            toml_key: "block.reply",
            legacy_key: None,
            legacy_value: "",
            toml_value: "\"blocked: {name} ({rule})\"",
            check: |c| c.block.reply.render("op.test", "includes") == "blocked: op.test (includes)",
            bad_legacy: "",
            bad_toml: "\"{spf}\"",
        },
        Case {
            toml_key: "spf.lookup_limit",
            legacy_key: None,
            legacy_value: "",
            toml_value: "20",
            check: |c| c.spf.lookup_limit == 20,
            bad_legacy: "",
            bad_toml: "-1",
        },
        Case {
            toml_key: "spf.void_limit",
            legacy_key: Some("Void_Limit"),
            legacy_value: "5",
            toml_value: "5",
            check: |c| c.spf.void_limit == 5,
            bad_legacy: "five",
            bad_toml: "-2",
        },
        Case {
            toml_key: "spf.lookup_time",
            legacy_key: Some("Lookup_Time"),
            legacy_value: "30",
            toml_value: "30",
            check: |c| c.spf.lookup_time == Duration::from_secs(30),
            bad_legacy: "0",
            bad_toml: "\"30 seconds\"",
        },
        Case {
            toml_key: "spf.whitelist_lookup_time",
            legacy_key: Some("Whitelist_Lookup_Time"),
            legacy_value: "3",
            toml_value: "\"3s\"",
            check: |c| c.spf.whitelist_lookup_time == Duration::from_secs(3),
            bad_legacy: "3s",
            bad_toml: "-3",
        },
        Case {
            toml_key: "dns.nameservers",
            legacy_key: None,
            legacy_value: "",
            toml_value: "[\"192.0.2.53\", \"[2001:db8::53]:5353\"]",
            check: |c| {
                c.dns.nameservers
                    == [
                        "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                        "[2001:db8::53]:5353".parse().unwrap(),
                    ]
            },
            bad_legacy: "",
            bad_toml: "[\"dns.example\"]",
        },
        Case {
            toml_key: "dns.timeout",
            legacy_key: None,
            legacy_value: "",
            toml_value: "2.5",
            check: |c| c.dns.timeout == Duration::from_millis(2500),
            bad_legacy: "",
            bad_toml: "0",
        },
        Case {
            toml_key: "dns.cache_size",
            legacy_key: None,
            legacy_value: "",
            toml_value: "\"48M\"",
            check: |c| c.dns.cache_size == 48 * 1024 * 1024,
            bad_legacy: "",
            bad_toml: "\"512K\"",
        },
        Case {
            toml_key: "dns.prefetch",
            legacy_key: None,
            legacy_value: "",
            toml_value: "false",
            check: |c| !c.dns.prefetch,
            bad_legacy: "",
            bad_toml: "\"maybe\"",
        },
        Case {
            toml_key: "rescue.methods",
            legacy_key: None,
            legacy_value: "",
            toml_value: "[\"DKIM\"]",
            check: |c| c.rescue.methods == [Method::Dkim],
            bad_legacy: "",
            bad_toml: "[\"dkim\", \"spf\"]",
        },
        Case {
            toml_key: "rescue.trusted_arc_sealers",
            legacy_key: None,
            legacy_value: "",
            toml_value: "[\"Lists.Example.ORG.\"]",
            check: |c| {
                c.rescue.trusted_arc_sealers == [DomainName::parse("lists.example.org").unwrap()]
            },
            bad_legacy: "",
            bad_toml: "[\"lists example.org\"]",
        },
        Case {
            toml_key: "rescue.max_message_size",
            legacy_key: None,
            legacy_value: "",
            toml_value: "\"512K\"",
            check: |c| c.rescue.max_message_size == 512 * 1024,
            bad_legacy: "",
            bad_toml: "\"1K\"",
        },
        Case {
            toml_key: "rescue.max_held_bytes",
            legacy_key: None,
            legacy_value: "",
            toml_value: "1073741824",
            check: |c| c.rescue.max_held_bytes == 1 << 30,
            bad_legacy: "",
            bad_toml: "\"lots\"",
        },
        Case {
            toml_key: "rescue.time_limit",
            legacy_key: None,
            legacy_value: "",
            toml_value: "\"2500ms\"",
            check: |c| c.rescue.time_limit == Duration::from_millis(2500),
            bad_legacy: "",
            bad_toml: "0",
        },
        Case {
            toml_key: "log.target",
            legacy_key: None,
            legacy_value: "",
            toml_value: "\"stderr\"",
            check: |c| c.log.target == LogTarget::Stderr,
            bad_legacy: "",
            bad_toml: "\"file\"",
        },
        Case {
            toml_key: "log.level",
            legacy_key: Some("debugLevel"),
            legacy_value: "3",
            toml_value: "3",
            check: |c| c.log.level == LogLevel::Config,
            bad_legacy: "-2",
            bad_toml: "\"loud\"",
        },
    ]
}

fn toml_doc(toml_key: &str, key: &str, value: &str) -> String {
    let (table, _) = toml_key.split_once('.').unwrap();
    format!("# a comment\n[{table}]\n{key} = {value}\n")
}

#[test]
fn every_option_is_tested() {
    let cases = cases();
    for o in OPTIONS {
        let key = format!("{}.{}", o.table, o.key);
        let case = cases
            .iter()
            .find(|c| c.toml_key == key)
            .unwrap_or_else(|| panic!("no test case for {key}"));
        assert_eq!(case.legacy_key, o.legacy, "{key}");
    }
    assert_eq!(cases.len(), OPTIONS.len());
}

#[test]
fn every_option_value_default_alias_error() {
    for case in cases() {
        let name = case.toml_key;
        assert!(
            !(case.check)(&Config::default()),
            "{name}: the check holds for the default"
        );
        let (_, key) = name.split_once('.').unwrap();

        // TOML, native key.
        let (c, w) = ok(toml(&toml_doc(name, key, case.toml_value)));
        assert!((case.check)(&c), "{name}: TOML value not taken");
        assert!(w.is_empty(), "{name}: {w:?}");
        // TOML, refused value, reported on line 3 with the key.
        let errors = refused(toml(&toml_doc(name, key, case.bad_toml)));
        has(&errors, Severity::Error, 3, key);

        let Some(legacy_key) = case.legacy_key else {
            continue;
        };
        // Legacy file.
        let (l, w) = ok(legacy(&format!(
            "# x\n\n{legacy_key} = {}\n",
            case.legacy_value
        )));
        assert!((case.check)(&l), "{name}: legacy value not taken");
        // Only the file-wide notes of pyspf-milter files (which header,
        // which authserv-id) may come up; they have no line.
        assert!(w.iter().all(|d| d.line.is_none()), "{name}: {w:?}");
        let errors = refused(legacy(&format!(
            "# x\n\n{legacy_key} = {}\n",
            case.bad_legacy
        )));
        has(&errors, Severity::Error, 3, legacy_key);
        // The policyd-spf key is an alias in TOML (TestOnly keeps its
        // integer meaning there).
        let alias_value = if legacy_key == "TestOnly" {
            "0"
        } else {
            case.toml_value
        };
        let (a, w) = ok(toml(&toml_doc(name, legacy_key, alias_value)));
        assert!(w.is_empty(), "{name}: {w:?}");
        assert_eq!(a, c, "{name}: the alias {legacy_key} means something else");
        // Both spellings at once is an error.
        let both = format!(
            "[{}]\n{key} = {}\n{legacy_key} = {alias_value}\n",
            name.split_once('.').unwrap().0,
            case.toml_value
        );
        if key != legacy_key {
            has(
                &refused(toml(&both)),
                Severity::Error,
                3,
                "sets the same option",
            );
        }
    }
}

// ------------------------------------------------------- docs/policyd-spf-compatibility.md §1 pitfalls

#[test]
fn mis_cased_key_is_read_with_a_warning() {
    let (c, w) = ok(legacy("\nhelo_reject = SPF_Not_Pass\n"));
    assert_eq!(c.policy.helo_reject, RejectPolicy::SpfNotPass);
    has(&w, Severity::Warning, 2, "case-sensitive");
}

#[test]
fn mis_cased_value_is_read_with_a_warning() {
    let (c, w) = ok(legacy("debugLevel = 1\nHELO_reject = fail\n"));
    assert_eq!(c.policy.helo_reject, RejectPolicy::Fail);
    has(&w, Severity::Warning, 2, "would reject nothing on HELO");
    let (c, w) = ok(legacy("PermError_reject = true\n"));
    assert!(c.policy.permerror_reject);
    has(&w, Severity::Warning, 1, "reads it as \"False\"");
    let (c, w) = ok(legacy("SPF_Enhanced_Status_Codes = no\n"));
    assert!(!c.policy.enhanced_status_codes);
    has(&w, Severity::Warning, 1, "reads it as \"Yes\"");
}

#[test]
fn spaces_in_lists_are_read_with_a_warning() {
    let (c, w) = ok(legacy("\n\nskip_addresses = 127.0.0.0/8, 10.0.0.0/8\n"));
    assert_eq!(nets(&c.skip.skip_addresses), ["127.0.0.0/8", "10.0.0.0/8"]);
    has(&w, Severity::Warning, 3, "does not strip");
    let (c, w) = ok(legacy("Reject_Not_Pass_Domains = aol.com, hotmail.com\n"));
    assert_eq!(c.policy.reject_not_pass_domains.len(), 2);
    has(&w, Severity::Warning, 1, "would never match");
}

#[test]
fn legacy_double_slash_cidr_is_read_with_a_warning() {
    let (c, w) = ok(legacy(
        "#\nskip_addresses = 127.0.0.0/8,::ffff:127.0.0.0/104,::1//128\n",
    ));
    assert_eq!(
        nets(&c.skip.skip_addresses),
        ["127.0.0.0/8", "::ffff:127.0.0.0/104", "::1/128"]
    );
    assert!(c.skip.skip_addresses.contains("::1".parse().unwrap()));
    has(&w, Severity::Warning, 2, "old // spelling");
}

#[test]
fn host_bits_set_is_an_error() {
    let e = refused(legacy("\n\n\nWhitelist = 10.0.0.1/8\n"));
    has(
        &e,
        Severity::Error,
        4,
        "host bits set: write 10.0.0.0/8 for the network or 10.0.0.1",
    );
}

#[test]
fn mock_false_is_a_warning_that_explains() {
    let (c, w) = ok(legacy("\nMock = False\n"));
    assert_eq!(c, Config::default());
    has(&w, Severity::Warning, 2, "turns Mock ON in policyd-spf");
    let (_, w) = ok(legacy("Mock = True\n"));
    has(&w, Severity::Warning, 1, "ignored");
    let (_, w) = ok(toml("mock = true\n"));
    has(&w, Severity::Warning, 1, "ignored");
}

#[test]
fn unknown_keys_are_errors_with_a_suggestion() {
    let e = refused(legacy("TestOnly = 1\nHELO_rejct = Fail\n"));
    has(&e, Severity::Error, 2, "did you mean `HELO_reject`?");
    let e = refused(toml("[policy]\n\nhelo_rejct = \"Fail\"\n"));
    has(&e, Severity::Error, 3, "did you mean `helo_reject`?");
    let e = refused(toml("[milter]\nhelo_reject = \"Fail\"\n"));
    has(
        &e,
        Severity::Error,
        2,
        "did you mean `helo_reject` in [policy]?",
    );
    let e = refused(toml("[polcy]\nx = 1\n"));
    has(&e, Severity::Error, 1, "did you mean `policy`?");
    // Every unknown key is reported, not just the first.
    let e = refused(toml("[policy]\na_key = 1\n[skip]\nanother = 2\n"));
    has(&e, Severity::Error, 2, "a_key");
    has(&e, Severity::Error, 4, "another");
}

/// The authserv-id is one RFC 2045 token (RFC 8601 §2.2 `value`): a value
/// a header reader could split or read as another id stops the start.
#[test]
fn authserv_id_is_one_token() {
    for bad in [
        "mx.example.net; spf=pass",
        "mx.example.net spf=pass",
        "\"mx.example.net\"",
        "mx.(c)example.net",
        "mx\\.example.net",
    ] {
        let text = format!("[milter]\nauthserv_id = {}\n", toml_string(bad));
        let e = refused(toml(&text));
        has(&e, Severity::Error, 2, "must be one token");
        let e = refused(legacy(&format!("\nAuthserv_Id = {bad}\n")));
        has(&e, Severity::Error, 2, "must be one token");
    }
    // All blank: an error in the native file; the legacy file keeps
    // policyd-spf's reading (unset) with a warning.
    let e = refused(toml("[milter]\nauthserv_id = \"   \"\n"));
    has(&e, Severity::Error, 2, "empty");
    let (c, w) = ok(legacy("Authserv_Id =   \n"));
    assert_eq!(c.milter.authserv_id, AuthservId::MtaHostname);
    has(&w, Severity::Warning, 1, "empty");
    for good in ["mx.example.net", "MX-1.example_net", "filter"] {
        let (c, _) = ok(toml(&format!("[milter]\nauthserv_id = \"{good}\"\n")));
        assert_eq!(c.milter.authserv_id, AuthservId::Fixed(good.into()));
    }
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[test]
fn header_type_spf_ar_is_both_with_a_warning() {
    let (c, w) = ok(legacy("\nHeader_Type = SPF,AR\n"));
    assert_eq!(c.milter.header_type, HeaderType::Both);
    has(&w, Severity::Warning, 2, "extension");
    let (c, w) = ok(toml("[milter]\nheader_type = \"SPF,AR\"\n"));
    assert_eq!(c.milter.header_type, HeaderType::Both);
    assert!(w.is_empty());
    let (c, _) = ok(toml("[milter]\nheader_type = [\"AR\", \"SPF\"]\n"));
    assert_eq!(c.milter.header_type, HeaderType::Both);
}

#[test]
fn a_bad_cidr_in_a_list_does_not_shorten_it() {
    let e = refused(legacy("#\n#\nskip_addresses = 127.0.0.0/8,localhost,::1\n"));
    has(
        &e,
        Severity::Error,
        3,
        "\"localhost\" is not an IP address or network",
    );
    has(
        &e,
        Severity::Error,
        3,
        "silently ignore it and the 1 entry after it",
    );
}

#[test]
fn other_legacy_grammar() {
    // Everything after '#' is a comment; keys and values are stripped.
    let (c, w) = ok(legacy("  HELO_reject=Softfail   # reject softfail too\r\n"));
    assert_eq!(c.policy.helo_reject, RejectPolicy::Softfail);
    assert!(w.is_empty());
    // A line without '=' is an error (policyd-spf ignores it).
    has(
        &refused(legacy("\nHELO_reject\n")),
        Severity::Error,
        2,
        "has no '='",
    );
    // Reason_URL may contain '=', with the pieces stripped as policyd-spf does.
    let (c, _) = ok(legacy("Reason_URL = http://x/?s = {0}&i={1}\n"));
    assert_eq!(c.policy.reason_url.to_string(), "http://x/?s={0}&i={1}");
    // Another key with '=' in its value: read, with a warning.
    let (c, w) = ok(legacy("Reason_Message = a=b {spf}\n"));
    assert_eq!(c.policy.reason_message.to_string(), "a=b {spf}");
    has(&w, Severity::Warning, 1, "ignores the whole line");
    // A key set twice: the last one counts.
    let (c, w) = ok(legacy("TestOnly = 0\nTestOnly = 1\n"));
    assert!(!c.policy.test_mode);
    has(&w, Severity::Warning, 2, "also on line 1");
    // CR line ends count as lines, as in Python's universal newlines.
    has(
        &refused(legacy("TestOnly = 1\rbogus = 1\r\n")),
        Severity::Error,
        2,
        "bogus",
    );
}

#[test]
fn policy_server_options_are_refused_or_ignored() {
    for key in [
        "HELO_pass_restriction",
        "Mail_From_pass_restriction",
        "Per_User",
    ] {
        let e = refused(legacy(&format!("\n{key} = something\n")));
        has(&e, Severity::Error, 2, "not supported");
        // Empty: nothing to honour.
        let (_, w) = ok(legacy(&format!("{key} =\n")));
        has(&w, Severity::Warning, 1, "empty, ignored");
    }
    let e = refused(toml("[policy]\nhelo_pass_restriction = \"x\"\n"));
    has(&e, Severity::Error, 2, "restriction class");
    for key in ["defaultSeedOnly = 1", "IntHosts = True", "QueueID = True"] {
        let (c, w) = ok(legacy(key));
        assert_eq!(c, Config::default());
        has(&w, Severity::Warning, 1, "ignored");
    }
}

/// `milter.idle_timeout`: above indymilter's own limit on reading a
/// packet (7210 s) it could never apply, an error; below Postfix's
/// `smtpd_timeout` (300 s) it cuts sessions that wait for a slow SMTP
/// client, a warning naming the reason.
#[test]
fn idle_timeout_bounds() {
    let (c, w) = ok(toml("[milter]\nidle_timeout = 7200\n"));
    assert_eq!(c.milter.idle_timeout, Duration::from_secs(7200));
    assert!(w.is_empty(), "{w:?}");
    let diags = refused(toml("[milter]\nidle_timeout = \"7201s\"\n"));
    has(&diags, Severity::Error, 2, "at most 7200 seconds");
    let (c, w) = ok(toml("[milter]\nidle_timeout = \"299s\"\n"));
    assert_eq!(c.milter.idle_timeout, Duration::from_secs(299));
    has(&w, Severity::Warning, 2, "smtpd_timeout");
    let diags = refused(toml("[milter]\nidle_timeout = 0\n"));
    has(&diags, Severity::Error, 2, "longer than zero");
}

#[test]
fn umask_decimal_pitfall() {
    let (c, w) = ok(legacy("UMask = 027\n"));
    assert_eq!(c.milter.umask, Some(Mode(0o27)));
    has(&w, Severity::Warning, 1, "decimal number 27");
    has(
        &refused(legacy("UMask = 23\n")),
        Severity::Error,
        1,
        "ambiguous",
    );
    let (c, _) = ok(toml("[milter]\numask = 0o027\n"));
    assert_eq!(c.milter.umask, Some(Mode(0o27)));
}

#[test]
fn mapped_ipv4_networks_are_normalised() {
    let (a, _) = ok(toml("[skip]\nskip_addresses = [\"::ffff:10.0.0.0/104\"]\n"));
    let (b, _) = ok(toml("[skip]\nskip_addresses = [\"10.0.0.0/8\"]\n"));
    for ip in ["10.1.2.3", "::ffff:10.1.2.3"] {
        let ip: IpAddr = ip.parse().unwrap();
        assert!(a.skip.skip_addresses.contains(ip) && b.skip.skip_addresses.contains(ip));
    }
    assert!(!a.skip.skip_addresses.contains("11.0.0.1".parse().unwrap()));
}

#[test]
fn socket_spellings_of_both_tools() {
    for (written, shown) in [
        ("inet:8893@localhost", "inet:localhost:8893"),
        ("inet6:8893@[::1]", "inet6:[::1]:8893"),
        (
            "local:/run/pyspf-milter/pyspf-milter.sock",
            "unix:/run/pyspf-milter/pyspf-milter.sock",
        ),
        ("inet:127.0.0.1:8891", "inet:127.0.0.1:8891"),
        ("inet6:[::1]:8891", "inet6:[::1]:8891"),
        (
            "unix:/var/spool/postfix/spf/spf.sock",
            "unix:/var/spool/postfix/spf/spf.sock",
        ),
    ] {
        let (c, _) = ok(legacy(&format!(
            "Socket = {written}\nHeader_Type = AR\nAuthserv_Id = x\n"
        )));
        assert_eq!(c.milter.socket.to_string(), shown);
        let (t, _) = ok(toml(&format!("[milter]\nsocket = \"{written}\"\n")));
        assert_eq!(t.milter.socket, c.milter.socket);
    }
}

#[test]
fn toml_syntax_errors_have_lines_and_a_hint_for_legacy_files() {
    let e = refused(toml("[policy]\nhelo_reject = \"Fail\n"));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, Some(2));
    let e = refused(toml("# policyd-spf\nHELO_reject = Fail\n"));
    has(&e, Severity::Error, 2, "--policyd-conf");
}

#[test]
fn file_datasets() {
    let dir = std::env::temp_dir().join(format!("spfmilter-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("internal");
    std::fs::write(&hosts, "# ours\n10.0.0.0/8\n\n.example.com\n").unwrap();
    let conf = format!("InternalHosts = file:{}\n", hosts.display());
    let (c, _) = ok(Config::parse_legacy(&conf, "x.conf", Datasets::Read));
    assert_eq!(
        c.skip
            .internal_hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.0.0.0/8", ".example.com"]
    );
    // Refused where files must not be read, and named with file and line.
    has(&refused(legacy(&conf)), Severity::Error, 1, "not read here");
    std::fs::write(&hosts, "10.0.0.0/8\nbad\n").unwrap();
    let e = refused(Config::parse_legacy(&conf, "x.conf", Datasets::Read));
    has(&e, Severity::Error, 1, &format!("{}:2", hosts.display()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn overrides_apply_the_same_to_both_formats() {
    let o = Overrides {
        socket: Some("unix:/run/x.sock".parse().unwrap()),
        nameservers: vec!["127.0.0.1:5353".parse().unwrap()],
        log_level: Some(LogLevel::Internals),
        log_target: Some(LogTarget::Stderr),
        test_mode: Some(true),
        ..Overrides::default()
    };
    let (l, _) = ok(legacy("Socket = inet:1@localhost\nHeader_Type = None\n"));
    let (t, _) = ok(toml(
        "[milter]\nsocket = \"inet:localhost:1\"\nheader_type = \"None\"\n",
    ));
    assert_eq!(l, t);
    let (l, t) = (l.with_overrides(&o), t.with_overrides(&o));
    assert_eq!(l, t);
    assert_eq!(l.milter.socket.to_string(), "unix:/run/x.sock");
    assert_eq!(l.dns.nameservers.len(), 1);
    assert!(l.policy.test_mode);
    assert_eq!(l.log.level, LogLevel::Internals);
    assert!(Overrides::default().is_empty() && !o.is_empty());
}

#[test]
fn load_reports_unreadable_files() {
    let e = refused(Config::load(&Source::Toml(
        "/nonexistent/spfmilter.toml".into(),
    )));
    assert_eq!(e[0].line, None);
    assert!(
        e[0].to_string()
            .starts_with("/nonexistent/spfmilter.toml: error: cannot read")
    );
}

// ------------------------------------------------------------- [rescue]

#[test]
fn an_unknown_rescue_method_is_an_error_with_the_nearest_name() {
    let errors = refused(toml("[rescue]\n\nmethods = [\"arc\",\n  \"dkm\"]\n"));
    // The line of the value (the list starts on line 3).
    has(
        &errors,
        Severity::Error,
        3,
        "\"dkm\" is not one of \"dkim\", \"arc\" (did you mean \"dkim\"?)",
    );
}

#[test]
fn arc_without_trusted_sealers_is_a_warning_on_the_methods_line() {
    let (c, w) = ok(toml("[rescue]\nmethods = [\"dkim\", \"arc\"]\n"));
    assert_eq!(c.rescue.methods, [Method::Dkim, Method::Arc]);
    has(
        &w,
        Severity::Warning,
        2,
        "rescues nothing while rescue.trusted_arc_sealers is empty",
    );
    let (_, w) = ok(toml(
        "[rescue]\nmethods = [\"arc\"]\ntrusted_arc_sealers = [\"lists.example.org\"]\n",
    ));
    assert!(w.is_empty(), "{w:?}");
    // DKIM alone needs no sealer.
    let (_, w) = ok(toml("[rescue]\nmethods = [\"dkim\"]\n"));
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn a_message_limit_above_the_total_is_an_error() {
    let errors = refused(toml(
        "[rescue]\nmethods = [\"dkim\"]\nmax_held_bytes = \"1M\"\nmax_message_size = \"2M\"\n",
    ));
    has(
        &errors,
        Severity::Error,
        4,
        "larger than rescue.max_held_bytes",
    );
    // The defaults fit: 10 MiB per message, 256 MiB in all.
    let c = Config::default();
    assert_eq!(
        (c.rescue.max_message_size, c.rescue.max_held_bytes),
        (10_485_760, 256 << 20)
    );
}

#[test]
fn a_policyd_spf_conf_leaves_the_rescue_off_and_its_conversion_too() {
    let (c, _) = ok(legacy("HELO_reject = Fail\nMail_From_reject = Fail\n"));
    assert!(c.rescue.methods.is_empty());
    // What `config convert` writes reads back with the rescue off.
    let (back, w) = ok(toml(&c.to_toml()));
    assert!(w.is_empty(), "{w:?}");
    assert!(back.rescue.methods.is_empty());
    assert_eq!(back.rescue, Config::default().rescue);
}

// ------------------------------------------------ docs/configuration.md

#[test]
fn the_configuration_document_lists_every_option() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    assert!(
        doc.contains(&options_markdown_table()),
        "docs/configuration.md's option table is out of date; it must contain:\n{}",
        options_markdown_table()
    );
}

// -------------------------------------------------------------- commands

fn spfmilter(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spfmilter"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spfmilter-config-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_check_exit_codes_and_show() {
    let good = fixture("policyd-spf.conf.commented");
    let (code, stdout, stderr) =
        spfmilter(&["config", "check", "--policyd-conf", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("configuration OK (0 warnings)"), "{stderr}");

    // Warnings only: 0, each printed as FILE:LINE: warning: …
    let warned = temp_file("warned.conf", "debugLevel = 1\nHELO_reject = fail\n");
    let (code, _, stderr) = spfmilter(&[
        "config",
        "check",
        "--policyd-conf",
        warned.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(
        stderr.contains(&format!(
            "{}:2: warning: HELO_reject: \"fail\"",
            warned.display()
        )),
        "{stderr}"
    );

    // Errors: 1.
    let bad = temp_file("bad.conf", "skip_addresses = 10.0.0.1/8\nFrob = 1\n");
    let (code, stdout, stderr) = spfmilter(&[
        "config",
        "check",
        "--show",
        "--policyd-conf",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "nothing shown for a refused file");
    assert!(
        stderr.contains(&format!("{}:1: error:", bad.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:2: error: unknown key", bad.display())),
        "{stderr}"
    );
    assert!(stderr.contains("2 errors"), "{stderr}");

    // --show prints the effective TOML, overrides applied; it loads back.
    let (code, stdout, _) = spfmilter(&[
        "config",
        "check",
        "--show",
        "--policyd-conf",
        good.to_str().unwrap(),
        "--socket",
        "inet:8894@localhost",
        "--nameserver",
        "127.0.0.1:5353",
    ]);
    assert_eq!(code, 0);
    let (shown, _) = ok(toml(&stdout));
    let (file, _) = ok(Config::load_legacy(&good));
    let o = Overrides {
        socket: Some("inet:localhost:8894".parse().unwrap()),
        nameservers: vec!["127.0.0.1:5353".parse().unwrap()],
        ..Overrides::default()
    };
    assert_eq!(shown, file.with_overrides(&o));
    assert!(stdout.contains("hide_receiver = true"));

    // The native file, and a usage error.
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/spfmilter.toml");
    let (code, _, _) = spfmilter(&["config", "check", "--config", conf.to_str().unwrap()]);
    assert_eq!(code, 0);
    let (code, _, _) = spfmilter(&["config", "check", "--config", "a", "--policyd-conf", "b"]);
    assert_eq!(code, 2);
}

#[test]
fn config_convert_output_loads_back_equal() {
    for name in [
        "debian-policyd-spf.conf",
        "policyd-spf.conf.commented",
        "pyspf-milter.conf",
    ] {
        let path = fixture(name);
        let (code, stdout, stderr) = spfmilter(&["config", "convert", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        let (converted, w) = ok(toml(&stdout));
        assert!(w.is_empty(), "{w:?}");
        let (original, _) = ok(Config::load_legacy(&path));
        assert_eq!(converted, original, "{name}");
    }
    // The warnings are kept as comments in the output.
    let path = fixture("pyspf-milter.conf");
    let (_, stdout, _) = spfmilter(&["config", "convert", path.to_str().unwrap()]);
    assert!(stdout.contains("# Warnings met while reading it:"));

    let bad = temp_file("convert-bad.conf", "Per_User = text,/etc/x\n");
    let (code, stdout, stderr) = spfmilter(&["config", "convert", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains(":1: error: Per_User is not supported"),
        "{stderr}"
    );
    // The summary is a line of its own, the last, ended by a newline, so
    // that nothing written after it (a shell prompt, the next command's
    // output) joins it.
    let summary = format!("{}: not converted: 1 error\n", bad.display());
    assert!(stderr.ends_with(&summary), "{stderr:?}");
    assert!(
        stderr
            .lines()
            .all(|l| l.starts_with(&*bad.to_string_lossy())),
        "{stderr:?}"
    );
}

/// Runs spfmilter, which must end within 5 s (a FIFO opened for reading
/// waits for a writer for ever; the binary used to wait with it): the
/// exit code and standard error.
fn spfmilter_within_5s(args: &[&str]) -> (i32, String) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_spfmilter"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > std::time::Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("spfmilter {args:?} still runs after 5 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code().unwrap_or(-1), stderr)
}

/// A FIFO, a directory or a device where a file is expected (the
/// configuration, a file dataset, the pid file) is refused at once as
/// `FILE: not a regular file`, by `config check`, `config convert` and
/// the daemon's start alike.
#[test]
fn files_that_are_not_regular_are_refused_at_once() {
    let dir = std::env::temp_dir().join(format!("spfmilter-config-fifo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo_s = fifo.to_str().unwrap();
    let not_regular = |path: &str| format!("{path}: not a regular file");

    for args in [
        &["config", "check", "--config", fifo_s][..],
        &["config", "check", "--policyd-conf", fifo_s],
        &["config", "convert", fifo_s],
        &["run", "--config", fifo_s, "--log-target", "stderr"],
        &["config", "check", "--config", "/dev/null"],
        &["config", "check", "--config", dir.to_str().unwrap()],
    ] {
        let (code, stderr) = spfmilter_within_5s(args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        let file = args[args.len() - 1 - usize::from(args[0] == "run") * 2];
        assert!(stderr.contains(&not_regular(file)), "{args:?}: {stderr}");
    }

    // A file dataset named by an option, in either format.
    let toml_conf = dir.join("datasets.toml");
    std::fs::write(
        &toml_conf,
        format!("[skip]\ninternal_hosts = \"file:{fifo_s}\"\n"),
    )
    .unwrap();
    let legacy_conf = dir.join("datasets.conf");
    std::fs::write(&legacy_conf, format!("InternalHosts = {fifo_s}\n")).unwrap();
    for (flag, conf) in [("--config", &toml_conf), ("--policyd-conf", &legacy_conf)] {
        let (code, stderr) =
            spfmilter_within_5s(&["config", "check", flag, conf.to_str().unwrap()]);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!("{}:", conf.display()))
                && stderr.contains(&not_regular(fifo_s)),
            "{stderr}"
        );
    }

    // The pid file: the daemon does not start (it would have hung on the
    // write, before listening).
    let socket = format!("unix:{}", dir.join("milter.sock").display());
    let (code, stderr) = spfmilter_within_5s(&[
        "run",
        "--socket",
        &socket,
        "--pid-file",
        fifo_s,
        "--nameserver",
        "127.0.0.1:53",
        "--log-target",
        "stderr",
    ]);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot write the pid file {}",
            not_regular(fifo_s)
        )),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
