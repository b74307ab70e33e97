//! Property tests of the two readers: a generated configuration written as
//! a policyd-spf.conf, and that file's conversion to TOML, load to the same
//! `Config`; and any configuration printed as TOML loads back equal.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use proptest::prelude::*;
use spfmilter::config::{
    AuthservId, CidrList, Config, Datasets, DomainName, Family, HeaderType, HostKind, HostPattern,
    InternalErrorAction, LogLevel, LogTarget, MacroRule, Mode, RejectPolicy, SocketSpec, UserSpec,
};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        // IPv4-mapped addresses, which are normalised for matching only.
        any::<u32>().prop_map(|n| IpAddr::V6(Ipv4Addr::from(n).to_ipv6_mapped())),
    ]
}

fn net() -> impl Strategy<Value = IpNet> {
    (ip(), any::<u8>()).prop_map(|(ip, len)| {
        let max = if ip.is_ipv4() { 33 } else { 129 };
        IpNet::new(ip, len % max).unwrap().trunc()
    })
}

fn domain() -> impl Strategy<Value = DomainName> {
    "[a-z][a-z0-9-]{0,6}[a-z0-9](\\.[a-z][a-z0-9_]{0,6}){1,3}"
        .prop_map(|s| DomainName::parse(&s).unwrap())
}

fn policy(helo: bool) -> impl Strategy<Value = RejectPolicy> {
    proptest::sample::select(
        RejectPolicy::ALL
            .into_iter()
            .filter(move |p| helo || *p != RejectPolicy::Null)
            .collect::<Vec<_>>(),
    )
}

/// Template text as policyd-spf keeps it: no `#` (a comment), no control
/// characters, and no spaces at either end (stripped).
fn message() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            "[A-Za-z0-9 .,:;!?{}=-]{1,12}".prop_map(|s| s.replace('{', "{{").replace('}', "}}")),
            Just("{rejectdefer}".to_owned()),
            Just("{spf}".to_owned()),
            Just("{url}".to_owned()),
        ],
        1..6,
    )
    .prop_map(|parts| parts.concat().trim().to_owned())
    .prop_filter("not empty", |s| !s.is_empty() && !s.ends_with('{'))
}

fn url() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            "[A-Za-z0-9/:.?&;=_-]{1,12}",
            (0..4u8).prop_map(|i| format!("{{{i}}}")),
        ],
        1..8,
    )
    .prop_map(|p| p.concat())
}

fn socket() -> impl Strategy<Value = SocketSpec> {
    prop_oneof![
        (ip(), 1..=u16::MAX).prop_map(|(ip, port)| SocketSpec::Tcp(SocketAddr::new(ip, port))),
        (domain(), 1..=u16::MAX, any::<bool>()).prop_map(|(d, port, v6)| SocketSpec::TcpName {
            name: d.to_string(),
            port,
            family: if v6 { Family::Inet6 } else { Family::Inet },
        }),
        "/[a-z]{1,8}/[a-z.]{1,12}".prop_map(|p| SocketSpec::Unix(p.into())),
    ]
}

fn host_pattern() -> impl Strategy<Value = HostPattern> {
    (
        any::<bool>(),
        prop_oneof![
            net().prop_map(HostKind::Network),
            domain().prop_map(HostKind::Host),
            domain().prop_map(HostKind::Domain),
        ],
    )
        .prop_map(|(negated, kind)| HostPattern { negated, kind })
}

fn macro_rule() -> impl Strategy<Value = MacroRule> {
    (
        "[a-z_]{1,10}",
        proptest::collection::vec("[A-Za-z0-9]{1,8}", 0..3),
    )
        .prop_map(|(name, values)| MacroRule { name, values })
}

fn user() -> impl Strategy<Value = UserSpec> {
    (
        "[a-z][a-z0-9_-]{0,8}",
        proptest::option::of("[a-z][a-z0-9_-]{0,8}"),
    )
        .prop_map(|(user, group)| UserSpec { user, group })
}

fn secs() -> impl Strategy<Value = Duration> {
    (1..3600u64).prop_map(Duration::from_secs)
}

/// A configuration made only of what a policyd-spf.conf can say.
fn legacy_config() -> impl Strategy<Value = Config> {
    let milter = (
        socket(),
        proptest::sample::select(HeaderType::ALL.to_vec()),
        prop_oneof![
            Just(AuthservId::MtaHostname),
            Just(AuthservId::Hostname),
            "[a-z0-9][a-z0-9.-]{0,20}".prop_map(AuthservId::Fixed),
        ],
        any::<bool>(),
        proptest::option::of("/[a-z]{1,8}/[a-z]{1,8}\\.pid"),
        proptest::option::of(user()),
        proptest::option::of((0..=0o777u32).prop_map(Mode)),
    );
    let policy = (
        policy(true),
        policy(false),
        any::<[bool; 5]>(),
        proptest::collection::vec(domain(), 0..3),
        proptest::option::of(ip()),
        message(),
        url(),
    );
    let skip = (
        proptest::collection::vec(net(), 0..4),
        proptest::collection::vec(net(), 0..4),
        proptest::collection::vec(domain(), 0..3),
        proptest::collection::vec(domain(), 0..3),
        proptest::collection::vec(domain(), 0..3),
        proptest::collection::vec(host_pattern(), 0..4),
        proptest::collection::vec(macro_rule(), 0..3),
    );
    let spf = (
        0..50u32,
        secs(),
        secs(),
        proptest::sample::select(LogLevel::ALL.to_vec()),
    );
    (milter, policy, skip, spf).prop_map(|(m, p, s, f)| {
        let mut c = Config::default();
        (
            c.milter.socket,
            c.milter.header_type,
            c.milter.authserv_id,
            c.milter.hide_receiver,
        ) = (m.0, m.1, m.2, m.3);
        c.milter.pid_file = m.4.map(Into::into);
        (c.milter.user, c.milter.umask) = (m.5, m.6);
        (c.policy.helo_reject, c.policy.mail_from_reject) = (p.0, p.1);
        [
            c.policy.permerror_reject,
            c.policy.temperror_defer,
            c.policy.no_mail,
            c.policy.test_mode,
            c.policy.enhanced_status_codes,
        ] = p.2;
        c.policy.reject_not_pass_domains = p.3;
        c.policy.prospective = p.4;
        c.policy.reason_message = p.5.parse().unwrap();
        c.policy.reason_url = p.6.parse().unwrap();
        c.skip.skip_addresses = CidrList::new(s.0);
        c.skip.whitelist = CidrList::new(s.1);
        (
            c.skip.domain_whitelist,
            c.skip.helo_whitelist,
            c.skip.domain_whitelist_ptr,
        ) = (s.2, s.3, s.4);
        (c.skip.internal_hosts, c.skip.macro_list) = (s.5, s.6);
        (
            c.spf.void_limit,
            c.spf.lookup_time,
            c.spf.whitelist_lookup_time,
            c.log.level,
        ) = f;
        c
    })
}

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn join_nets(list: &CidrList) -> String {
    join(list.entries().iter().map(|n| {
        if n.prefix_len() == n.max_prefix_len() {
            n.addr().to_string()
        } else {
            n.to_string()
        }
    }))
}

/// Writes `c` as a policyd-spf.conf, with the socket in pyspf-milter's
/// spelling where it has one.
fn to_legacy(c: &Config) -> String {
    let mut s = String::from("# generated\n");
    let socket = match &c.milter.socket {
        SocketSpec::Tcp(SocketAddr::V4(a)) => format!("inet:{}@{}", a.port(), a.ip()),
        SocketSpec::Tcp(SocketAddr::V6(a)) => format!("inet6:{}@[{}]", a.port(), a.ip()),
        SocketSpec::Unix(p) => format!("local:{}", p.display()),
        other => other.to_string(),
    };
    let _ = writeln!(s, "Socket = {socket}");
    let _ = writeln!(s, "Header_Type = {}", c.milter.header_type);
    match &c.milter.authserv_id {
        AuthservId::MtaHostname => {}
        AuthservId::Hostname => s.push_str("Authserv_Id = HOSTNAME\n"),
        AuthservId::Fixed(id) => {
            let _ = writeln!(s, "Authserv_Id = {id}");
        }
    }
    let yes = |b: bool| if b { "Yes" } else { "No" };
    let tru = |b: bool| if b { "True" } else { "False" };
    let _ = writeln!(s, "Hide_Receiver = {}", yes(c.milter.hide_receiver));
    if let Some(p) = &c.milter.pid_file {
        let _ = writeln!(s, "PidFile = {}", p.display());
    }
    if let Some(u) = &c.milter.user {
        let _ = writeln!(s, "UserID = {u}");
    }
    if let Some(m) = c.milter.umask {
        let _ = writeln!(s, "UMask = 0{:o}", m.0);
    }
    let p = &c.policy;
    let _ = writeln!(s, "HELO_reject = {}", p.helo_reject);
    let _ = writeln!(s, "Mail_From_reject = {}", p.mail_from_reject);
    let _ = writeln!(s, "PermError_reject = {}", tru(p.permerror_reject));
    let _ = writeln!(s, "TempError_Defer = {}", tru(p.temperror_defer));
    let _ = writeln!(s, "No_Mail = {}", tru(p.no_mail));
    let _ = writeln!(
        s,
        "Reject_Not_Pass_Domains = {}",
        join(&p.reject_not_pass_domains)
    );
    let _ = writeln!(s, "TestOnly = {}", if p.test_mode { 0 } else { 1 });
    if let Some(ip) = p.prospective {
        let _ = writeln!(s, "Prospective = {ip}");
    }
    let _ = writeln!(
        s,
        "SPF_Enhanced_Status_Codes = {}",
        yes(p.enhanced_status_codes)
    );
    let _ = writeln!(s, "Reason_Message = {}", p.reason_message);
    let _ = writeln!(s, "Reason_URL = {}", p.reason_url);
    let k = &c.skip;
    let _ = writeln!(s, "skip_addresses = {}", join_nets(&k.skip_addresses));
    let _ = writeln!(s, "Whitelist = {}", join_nets(&k.whitelist));
    let _ = writeln!(s, "Domain_Whitelist = {}", join(&k.domain_whitelist));
    let _ = writeln!(s, "HELO_Whitelist = {}", join(&k.helo_whitelist));
    let _ = writeln!(
        s,
        "Domain_Whitelist_PTR = {}",
        join(&k.domain_whitelist_ptr)
    );
    let _ = writeln!(s, "InternalHosts = {}", join(&k.internal_hosts));
    let _ = writeln!(s, "MacroList = {}", join(&k.macro_list));
    let _ = writeln!(s, "Void_Limit = {}", c.spf.void_limit);
    let _ = writeln!(s, "Lookup_Time = {}", c.spf.lookup_time.as_secs());
    let _ = writeln!(
        s,
        "Whitelist_Lookup_Time = {}",
        c.spf.whitelist_lookup_time.as_secs()
    );
    let _ = writeln!(s, "debugLevel = {}", c.log.level.as_int());
    s
}

/// Adds what only the TOML file can say.
fn full_config() -> impl Strategy<Value = Config> {
    (
        legacy_config(),
        proptest::option::of((0..=0o7777u32).prop_map(Mode)),
        proptest::option::of("[a-z][a-z0-9_]{0,8}"),
        proptest::option::of("[a-z][a-z0-9_]{0,8}"),
        (
            1..100_000u32,
            proptest::sample::select(InternalErrorAction::ALL.to_vec()),
        ),
        any::<[bool; 2]>(),
        1..100u32,
        proptest::collection::vec(
            (ip(), 1..=u16::MAX).prop_map(|(i, p)| SocketAddr::new(i, p)),
            0..3,
        ),
        (1..100_000u64).prop_map(Duration::from_millis),
        proptest::sample::select(LogTarget::ALL.to_vec()),
    )
        .prop_map(
            |(
                mut c,
                mode,
                owner,
                group,
                (max, action),
                [forged, auth],
                limit,
                ns,
                timeout,
                target,
            )| {
                c.milter.socket_mode = mode;
                (c.milter.socket_owner, c.milter.socket_group) = (owner, group);
                (c.milter.max_connections, c.milter.on_internal_error) = (max, action);
                (c.milter.remove_forged_headers, c.skip.skip_authenticated) = (forged, auth);
                c.spf.lookup_limit = limit;
                (c.dns.nameservers, c.dns.timeout, c.log.target) = (ns, timeout, target);
                c
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn legacy_and_converted_toml_load_equal(c in legacy_config()) {
        let text = to_legacy(&c);
        let from_legacy = match Config::parse_legacy(&text, "gen.conf", Datasets::Refuse) {
            Ok(l) => l.config,
            Err(e) => panic!("{e}\nin:\n{text}"),
        };
        prop_assert_eq!(&*from_legacy, &c, "legacy:\n{}", text);
        let converted = from_legacy.to_toml();
        let from_toml = match Config::parse_toml(&converted, "gen.toml", Datasets::Refuse) {
            Ok(l) => l.config,
            Err(e) => panic!("{e}\nin:\n{converted}"),
        };
        prop_assert_eq!(&*from_toml, &c);
    }

    #[test]
    fn any_config_prints_back_to_itself(c in full_config()) {
        let text = c.to_toml();
        match Config::parse_toml(&text, "gen.toml", Datasets::Refuse) {
            Ok(l) => {
                prop_assert!(l.warnings.is_empty(), "{:?}", l.warnings);
                prop_assert_eq!(&*l.config, &c);
            }
            Err(e) => panic!("{e}\nin:\n{text}"),
        }
    }
}
