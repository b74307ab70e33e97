//! The bypass chain (docs/policyd-spf-compatibility.md §2, §3 step 2): which
//! sessions are not checked at all, and whether they get a trace header.
//!
//! Pure policy: no sockets, no milter types. [`skip`] runs before
//! [`super::decide::decide`]; only [`Skip::Check`] goes on to the decision.
//!
//! # Order
//!
//! pyspf-milter's own skips first, then policyd-spf's chain; the first match
//! wins:
//!
//! 1. `InternalHosts` → [`Skip::Silent`] (no check, no header).
//! 2. `MacroList` (when not empty): no rule matches → [`Skip::Silent`].
//! 3. SMTP AUTH (`skip_authenticated` and `{auth_authen}` set) →
//!    [`Skip::Silent`].
//! 4. `skip_addresses` → `Whitelist` → `Domain_Whitelist` →
//!    `HELO_Whitelist` → `Domain_Whitelist_PTR` → [`Skip::Traced`]
//!    (no check, an `X-Comment` trace header, see [`x_comment_value`]).
//!
//! # Choices where the spec leaves room
//!
//! * **Addresses.** IPv4-mapped IPv6 clients (`::ffff:192.0.2.1`) are IPv4
//!   clients everywhere. `InternalHosts` looks at the real client address;
//!   policyd-spf's chain at `Prospective` when set (as the reference and
//!   [`super::decide::decide`] do), else the client address. With neither,
//!   the answer is [`Skip::Check`] (`decide()` then does nothing).
//! * **Forward-confirmed PTR names** (`InternalHosts` host and `.domain`
//!   entries, `Domain_Whitelist_PTR`): the client's PTR names (at most
//!   [`MAX_PTR_NAMES`], as RFC 7208 §5.5 limits `ptr`) whose A (IPv4
//!   client) or AAAA (IPv6 client) records contain the client address. They
//!   are looked up once per call, and only when an entry needs them.
//! * **`InternalHosts` negation.** The most precise matching entry decides
//!   (a host name beats a `.domain`, a deeper `.domain` beats a shallower
//!   one, any name beats a network, a longer prefix beats a shorter one);
//!   on a tie a `!` entry wins (the client is checked). `.example.com`
//!   covers `example.com` itself and every name below it.
//! * **`Domain_Whitelist_PTR`** matches a forward-confirmed name equal to
//!   the listed domain or below it at a label boundary (the reference's
//!   plain suffix match would let `host.notwl.test` through for `wl.test`).
//! * **`HELO_Whitelist`.** The HELO name (case-insensitive, a trailing dot
//!   ignored) must equal an entry, and the client address must be among
//!   that name's A (IPv4) or AAAA (IPv6) records.
//! * **Time limits.** Each DNS-based whitelist step (one `Domain_Whitelist`
//!   evaluation, one `HELO_Whitelist` address lookup, one PTR confirmation)
//!   is bounded by `Whitelist_Lookup_Time`. A timeout, a DNS error or any
//!   result but Pass means "not whitelisted": the session is checked.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::{Config, HostKind, HostPattern};
use crate::dns::Lookup;
use crate::spf::eval::is_same_or_subdomain;
use crate::spf::identity::canonical_ip;
use crate::spf::ptr::{self, has_address};
use crate::spf::{Evaluator, SpfResult};

use super::envelope::{Envelope, Macros};

/// At most this many PTR names of a client are confirmed (RFC 7208 §5.5).
pub const MAX_PTR_NAMES: usize = 10;

/// What to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not skipped: go on to `decide()`.
    Check,
    /// No check and no header (`InternalHosts`, `MacroList`, SMTP AUTH);
    /// the text says why, for the log.
    Silent(&'static str),
    /// No check; a trace header says why.
    Traced(SkipReason),
}

/// Why policyd-spf's chain skipped the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// `skip_addresses`.
    LocalConnection,
    /// `Whitelist`.
    WhitelistedRelay,
    /// `Domain_Whitelist`.
    WhitelistedDomain,
    /// `HELO_Whitelist`.
    WhitelistedHelo,
    /// `Domain_Whitelist_PTR`.
    PtrWhitelistedDomain,
}

impl SkipReason {
    /// policyd-spf's comment text (docs/policyd-spf-compatibility.md §2, §4).
    pub fn comment(self) -> &'static str {
        match self {
            SkipReason::LocalConnection => "SPF check N/A for local connections",
            SkipReason::WhitelistedRelay => "SPF skipped for whitelisted relay",
            SkipReason::WhitelistedDomain => "SPF skipped for whitelisted relay domain",
            SkipReason::WhitelistedHelo => "SPF skipped for whitelisted HELO domain",
            SkipReason::PtrWhitelistedDomain => "SPF skipped for PTR whitelisted relay domain",
        }
    }
}

/// The value of the skip trace header `X-Comment` (everything after
/// `X-Comment:`), in policyd-spf's format, trailing space included:
/// `SPF check N/A for local connections - client-ip=127.0.0.1; helo=…;
/// envelope-from=…; receiver=… `. An empty `envelope_from` is written `<>`
/// (as in this project's Received-SPF). In the values, separators (`;` `=`
/// `"` `(` `)` `\`), white space, control and non-ASCII characters become
/// `?`, so a sender can neither inject header lines nor keys.
pub fn x_comment_value(
    reason: SkipReason,
    client_ip: IpAddr,
    helo: &str,
    envelope_from: &str,
    receiver: &str,
) -> String {
    let envelope_from = if envelope_from.is_empty() {
        "<>"
    } else {
        envelope_from
    };
    format!(
        "{} - client-ip={}; helo={}; envelope-from={}; receiver={} ",
        reason.comment(),
        canonical_ip(client_ip),
        sanitize(helo),
        sanitize(envelope_from),
        sanitize(receiver),
    )
}

/// A value as a word of a trace header: separators, white space, controls
/// and non-ASCII characters become `?` (see
/// [`super::headers::REPLACEMENT`]).
fn sanitize(value: &str) -> std::borrow::Cow<'_, str> {
    super::headers::sanitized_word(value)
}

/// Whether and how the message of `envelope` skips the SPF check (see the
/// module doc); `macros` are the MTA's, for `MacroList`.
pub async fn skip<L: Lookup>(
    config: &Config,
    evaluator: &Evaluator<L>,
    envelope: &Envelope,
    macros: &Macros<'_>,
) -> Skip {
    let s = &config.skip;
    let Some(ip) = config.policy.prospective.or(envelope.client_ip) else {
        return Skip::Check;
    };
    let ip = canonical_ip(ip);
    let limit = config.spf.whitelist_lookup_time;
    let lookup = evaluator.lookup();
    // The forward-confirmed PTR names of the real client, looked up at most
    // once and only when an entry needs them.
    let mut client_names: Option<Vec<String>> = None;

    if let Some(client) = envelope.client_ip.map(canonical_ip)
        && is_internal(&s.internal_hosts, client, lookup, limit, &mut client_names).await
    {
        return Skip::Silent("client in InternalHosts");
    }
    if !s.macro_list.is_empty()
        && !s
            .macro_list
            .iter()
            .any(|rule| rule.matches(macros(&rule.name).as_deref()))
    {
        return Skip::Silent("no MacroList rule matches");
    }
    if s.skip_authenticated && envelope.authenticated {
        return Skip::Silent("client authenticated with SMTP AUTH");
    }

    if s.skip_addresses.contains(ip) {
        return Skip::Traced(SkipReason::LocalConnection);
    }
    if s.whitelist.contains(ip) {
        return Skip::Traced(SkipReason::WhitelistedRelay);
    }
    for domain in &s.domain_whitelist {
        let outcome = within(
            limit,
            evaluator.check_domain(ip, domain.as_str(), &envelope.helo),
        );
        if outcome.await.is_some_and(|o| o.result == SpfResult::Pass) {
            return Skip::Traced(SkipReason::WhitelistedDomain);
        }
    }
    let helo = envelope.helo.strip_suffix('.').unwrap_or(&envelope.helo);
    if !helo.is_empty()
        && s.helo_whitelist.iter().any(|d| d.is(helo))
        && within(limit, has_address(lookup, helo, ip))
            .await
            .unwrap_or(false)
    {
        return Skip::Traced(SkipReason::WhitelistedHelo);
    }
    if !s.domain_whitelist_ptr.is_empty() {
        // The PTR names of the address evaluated (Prospective or client);
        // the cached names are the real client's.
        let prospective_names;
        let names: &[String] = if Some(ip) == envelope.client_ip.map(canonical_ip) {
            names_of(&mut client_names, lookup, ip, limit).await
        } else {
            prospective_names = confirmed_names(lookup, ip, limit).await;
            &prospective_names
        };
        if names.iter().any(|name| {
            s.domain_whitelist_ptr
                .iter()
                .any(|d| is_same_or_subdomain(name, d.as_str()))
        }) {
            return Skip::Traced(SkipReason::PtrWhitelistedDomain);
        }
    }
    Skip::Check
}

/// `InternalHosts`: the most precise matching entry decides; a tie goes to
/// a negated entry.
async fn is_internal<L: Lookup>(
    patterns: &[HostPattern],
    ip: IpAddr,
    lookup: &L,
    limit: Duration,
    names: &mut Option<Vec<String>>,
) -> bool {
    let needs_names = patterns
        .iter()
        .any(|p| !matches!(p.kind, HostKind::Network(_)));
    let names: &[String] = if needs_names {
        names_of(names, lookup, ip, limit).await
    } else {
        &[]
    };
    // (precision, negated): the maximum decides.
    let mut best: Option<(u32, bool)> = None;
    for pattern in patterns {
        let precision = match &pattern.kind {
            HostKind::Network(net) => {
                if !pattern.matches_ip(ip) {
                    continue;
                }
                // Mapped networks count by their IPv4 length.
                u32::from(crate::config::normalise_net(*net).prefix_len())
            }
            HostKind::Domain(domain) => {
                if !names
                    .iter()
                    .any(|n| is_same_or_subdomain(n, domain.as_str()))
                {
                    continue;
                }
                1000 + domain.as_str().split('.').count() as u32
            }
            HostKind::Host(host) => {
                if !names.iter().any(|n| n.eq_ignore_ascii_case(host.as_str())) {
                    continue;
                }
                2000
            }
        };
        let candidate = (precision, pattern.negated);
        if best.is_none_or(|b| candidate > b) {
            best = Some(candidate);
        }
    }
    best.is_some_and(|(_, negated)| !negated)
}

/// The cached forward-confirmed names of `ip`, looked up on first use.
async fn names_of<'n, L: Lookup>(
    cache: &'n mut Option<Vec<String>>,
    lookup: &L,
    ip: IpAddr,
    limit: Duration,
) -> &'n [String] {
    if cache.is_none() {
        *cache = Some(confirmed_names(lookup, ip, limit).await);
    }
    cache.as_deref().unwrap_or_default()
}

/// The forward-confirmed PTR names of `ip` ([`ptr::confirmed_names`]),
/// within `limit` (nothing on a timeout or DNS error).
async fn confirmed_names<L: Lookup>(lookup: &L, ip: IpAddr, limit: Duration) -> Vec<String> {
    let confirm = ptr::confirmed_names(lookup, ip, MAX_PTR_NAMES, |_| Ok::<(), Infallible>(()));
    match within(limit, confirm).await {
        Some(Ok(names)) => names,
        None => Vec::new(),
    }
}

/// `future` within `limit`; `None` when it took longer.
async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, future).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CidrList, DomainName, MacroRule};
    use crate::dns::Zone;
    use crate::dns::zone::Slow;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(items: &[&str]) -> CidrList {
        CidrList::new(items.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn domains(items: &[&str]) -> Vec<DomainName> {
        items
            .iter()
            .map(|s| DomainName::parse(s).unwrap())
            .collect()
    }

    fn net(s: &str, negated: bool) -> HostPattern {
        HostPattern {
            negated,
            kind: HostKind::Network(s.parse().unwrap()),
        }
    }

    /// A configuration with no skips at all.
    fn bare() -> Config {
        let mut c = Config::default();
        c.skip.skip_addresses = CidrList::default();
        c.skip.internal_hosts = Vec::new();
        c.skip.skip_authenticated = false;
        c
    }

    fn no_macros(_: &str) -> Option<String> {
        None
    }

    fn session(client: &str, helo: &'static str) -> Envelope {
        Envelope {
            client_ip: Some(ip(client)),
            helo: helo.to_owned(),
            sender: "a@sender.test".to_owned(),
            first_recipient: None,
            authenticated: false,
        }
    }

    async fn run<L: Lookup>(config: &Config, lookup: L, s: &Envelope) -> Skip {
        run_with_macros(config, lookup, s, &no_macros).await
    }

    async fn run_with_macros<L: Lookup>(
        config: &Config,
        lookup: L,
        s: &Envelope,
        macros: &Macros<'_>,
    ) -> Skip {
        skip(config, &Evaluator::new(lookup), s, macros).await
    }

    #[tokio::test]
    async fn skip_addresses_default_covers_loopback_in_every_form() {
        let mut c = bare();
        c.skip.skip_addresses = Config::default().skip.skip_addresses;
        for client in ["127.0.0.1", "127.1.2.3", "::ffff:127.0.0.1", "::1"] {
            assert_eq!(
                run(&c, Zone::new(), &session(client, "h.test")).await,
                Skip::Traced(SkipReason::LocalConnection),
                "{client}"
            );
        }
        for client in ["192.0.2.1", "::2", "::ffff:192.0.2.1"] {
            assert_eq!(
                run(&c, Zone::new(), &session(client, "h.test")).await,
                Skip::Check,
                "{client}"
            );
        }
    }

    #[tokio::test]
    async fn whitelist_matches_and_comes_after_skip_addresses() {
        let mut c = bare();
        c.skip.whitelist = cidrs(&["192.0.2.0/24", "127.0.0.0/8"]);
        let s = session("192.0.2.9", "h.test");
        assert_eq!(
            run(&c, Zone::new(), &s).await,
            Skip::Traced(SkipReason::WhitelistedRelay)
        );
        let s = session("::ffff:192.0.2.9", "h.test");
        assert_eq!(
            run(&c, Zone::new(), &s).await,
            Skip::Traced(SkipReason::WhitelistedRelay)
        );
        assert_eq!(
            run(&c, Zone::new(), &session("198.51.100.1", "h.test")).await,
            Skip::Check
        );
        c.skip.skip_addresses = cidrs(&["127.0.0.0/8"]);
        assert_eq!(
            run(&c, Zone::new(), &session("127.0.0.1", "h.test")).await,
            Skip::Traced(SkipReason::LocalConnection)
        );
    }

    #[tokio::test]
    async fn domain_whitelist_needs_a_pass() {
        let zone = Zone::new()
            .with_txt("wl.test", "v=spf1 ip4:192.0.2.0/24 -all")
            .with_txt("other.test", "v=spf1 -all");
        let mut c = bare();
        c.skip.domain_whitelist = domains(&["other.test", "wl.test"]);
        assert_eq!(
            run(&c, zone.clone(), &session("192.0.2.1", "h.test")).await,
            Skip::Traced(SkipReason::WhitelistedDomain)
        );
        assert_eq!(
            run(&c, zone, &session("198.51.100.1", "h.test")).await,
            Skip::Check
        );
    }

    #[tokio::test]
    async fn helo_whitelist_needs_the_name_and_its_address() {
        let zone = Zone::new()
            .with_ip("mx.wl.test", "192.0.2.1")
            .with_ip("mx.wl.test", "2001:db8::1");
        let mut c = bare();
        c.skip.helo_whitelist = domains(&["mx.wl.test"]);
        let hit = Skip::Traced(SkipReason::WhitelistedHelo);
        assert_eq!(
            run(&c, zone.clone(), &session("192.0.2.1", "MX.wl.test")).await,
            hit
        );
        assert_eq!(
            run(
                &c,
                zone.clone(),
                &session("::ffff:192.0.2.1", "mx.wl.test.")
            )
            .await,
            hit
        );
        assert_eq!(
            run(&c, zone.clone(), &session("2001:db8::1", "mx.wl.test")).await,
            hit
        );
        // Wrong address, wrong family, other name.
        for (client, helo) in [
            ("192.0.2.2", "mx.wl.test"),
            ("2001:db8::2", "mx.wl.test"),
            ("192.0.2.1", "other.wl.test"),
            ("192.0.2.1", ""),
        ] {
            assert_eq!(
                run(&c, zone.clone(), &session(client, helo)).await,
                Skip::Check,
                "{client} {helo}"
            );
        }
    }

    #[tokio::test]
    async fn domain_whitelist_ptr_needs_confirmation_and_a_label_boundary() {
        let zone = Zone::new()
            // Forward-confirmed, below wl.test.
            .with_ptr("192.0.2.1", "mail.wl.test")
            .with_ip("mail.wl.test", "192.0.2.1")
            // PTR claims wl.test, but its A record points elsewhere.
            .with_ptr("192.0.2.2", "liar.wl.test")
            .with_ip("liar.wl.test", "192.0.2.99")
            // Confirmed, but notwl.test is not wl.test.
            .with_ptr("192.0.2.3", "host.notwl.test")
            .with_ip("host.notwl.test", "192.0.2.3")
            // Second PTR name is the confirmed one; IPv6.
            .with_ptr("2001:db8::5", "other.example")
            .with_ptr("2001:db8::5", "v6.wl.test")
            .with_ip("v6.wl.test", "2001:db8::5");
        let mut c = bare();
        c.skip.domain_whitelist_ptr = domains(&["wl.test"]);
        let hit = Skip::Traced(SkipReason::PtrWhitelistedDomain);
        assert_eq!(
            run(&c, zone.clone(), &session("192.0.2.1", "h.test")).await,
            hit
        );
        assert_eq!(
            run(&c, zone.clone(), &session("::ffff:192.0.2.1", "h.test")).await,
            hit
        );
        assert_eq!(
            run(&c, zone.clone(), &session("2001:db8::5", "h.test")).await,
            hit
        );
        for client in ["192.0.2.2", "192.0.2.3", "192.0.2.4"] {
            assert_eq!(
                run(&c, zone.clone(), &session(client, "h.test")).await,
                Skip::Check,
                "{client}"
            );
        }
    }

    #[tokio::test]
    async fn internal_hosts_networks_negation_and_names() {
        let zone = Zone::new()
            .with_ptr("198.51.100.7", "relay.corp.test")
            .with_ip("relay.corp.test", "198.51.100.7")
            .with_ptr("198.51.100.8", "other.corp.test")
            .with_ip("other.corp.test", "198.51.100.8")
            .with_ptr("198.51.100.9", "fake.corp.test")
            .with_ip("fake.corp.test", "203.0.113.1");
        let mut c = bare();
        // Loopback is traced by skip_addresses unless InternalHosts wins.
        c.skip.skip_addresses = cidrs(&["127.0.0.0/8"]);
        c.skip.internal_hosts = vec![
            net("192.168.1.0/24", false),
            net("192.168.1.1/32", true),
            net("127.0.0.1/32", false),
            HostPattern {
                negated: false,
                kind: HostKind::Host(DomainName::parse("relay.corp.test").unwrap()),
            },
        ];
        let internal = |s: Skip| matches!(s, Skip::Silent(_));
        for client in [
            "192.168.1.5",
            "::ffff:192.168.1.5",
            "127.0.0.1",
            "198.51.100.7",
        ] {
            assert!(
                internal(run(&c, zone.clone(), &session(client, "h.test")).await),
                "{client}"
            );
        }
        // Negated more precisely; not listed; name not confirmed; other name.
        for client in ["192.168.1.1", "192.168.2.1", "198.51.100.9", "198.51.100.8"] {
            assert_eq!(
                run(&c, zone.clone(), &session(client, "h.test")).await,
                Skip::Check,
                "{client}"
            );
        }
        assert_eq!(
            run(&c, zone.clone(), &session("127.0.0.2", "h.test")).await,
            Skip::Traced(SkipReason::LocalConnection)
        );
        // A .domain entry and a more precise negated host below it.
        c.skip.internal_hosts = vec![
            HostPattern {
                negated: false,
                kind: HostKind::Domain(DomainName::parse("corp.test").unwrap()),
            },
            HostPattern {
                negated: true,
                kind: HostKind::Host(DomainName::parse("other.corp.test").unwrap()),
            },
        ];
        assert!(internal(
            run(&c, zone.clone(), &session("198.51.100.7", "h.test")).await
        ));
        assert_eq!(
            run(&c, zone, &session("198.51.100.8", "h.test")).await,
            Skip::Check
        );
    }

    #[tokio::test]
    async fn macro_list_selects_the_checked_connections() {
        let mut c = bare();
        c.skip.macro_list = vec![
            MacroRule {
                name: "daemon_name".into(),
                values: vec!["mx-in".into()],
            },
            MacroRule {
                name: "x_check".into(),
                values: vec![],
            },
        ];
        let inbound = |m: &str| (m == "daemon_name").then(|| "mx-in".to_owned());
        let submission = |m: &str| (m == "daemon_name").then(|| "submission".to_owned());
        let flagged = |m: &str| (m == "x_check").then(|| "1".to_owned());
        let s = session("192.0.2.1", "h.test");
        for f in [
            &inbound as &(dyn Fn(&str) -> Option<String> + Sync),
            &flagged,
        ] {
            assert_eq!(run_with_macros(&c, Zone::new(), &s, f).await, Skip::Check);
        }
        for f in [
            &submission as &(dyn Fn(&str) -> Option<String> + Sync),
            &no_macros,
        ] {
            assert!(matches!(
                run_with_macros(&c, Zone::new(), &s, f).await,
                Skip::Silent(_)
            ));
        }
    }

    #[tokio::test]
    async fn smtp_auth_skips_silently_when_enabled() {
        let mut c = bare();
        let mut s = session("192.0.2.1", "h.test");
        s.authenticated = true;
        assert_eq!(run(&c, Zone::new(), &s).await, Skip::Check);
        c.skip.skip_authenticated = true;
        assert!(matches!(run(&c, Zone::new(), &s).await, Skip::Silent(_)));
        s.authenticated = false;
        assert_eq!(run(&c, Zone::new(), &s).await, Skip::Check);
    }

    #[tokio::test]
    async fn no_address_means_check() {
        let c = Config::default();
        let mut s = session("127.0.0.1", "h.test");
        s.client_ip = None;
        assert_eq!(run(&c, Zone::new(), &s).await, Skip::Check);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_whitelist_lookups_give_check_within_the_limit() {
        let zone = Zone::new()
            .with_txt("wl.test", "v=spf1 ip4:192.0.2.1 -all")
            .with_ip("mx.wl.test", "192.0.2.1")
            .with_ptr("192.0.2.1", "mx.wl.test");
        let mut c = bare();
        c.spf.whitelist_lookup_time = Duration::from_secs(10);
        c.skip.domain_whitelist = domains(&["wl.test"]);
        c.skip.helo_whitelist = domains(&["mx.wl.test"]);
        c.skip.domain_whitelist_ptr = domains(&["wl.test"]);
        c.skip.internal_hosts = vec![HostPattern {
            negated: false,
            kind: HostKind::Host(DomainName::parse("mx.wl.test").unwrap()),
        }];
        let s = session("192.0.2.1", "mx.wl.test");
        let start = tokio::time::Instant::now();
        let slow = Slow(zone.clone(), Duration::from_secs(3600));
        assert_eq!(run(&c, slow, &s).await, Skip::Check);
        // InternalHosts names, Domain_Whitelist, HELO_Whitelist (PTR names
        // are reused): three limits at most.
        assert!(start.elapsed() <= Duration::from_secs(30));
        // Fast enough: the first skip that needs DNS wins.
        let quick = Slow(zone, Duration::from_secs(1));
        assert!(matches!(run(&c, quick, &s).await, Skip::Silent(_)));
    }

    #[test]
    fn comments_are_policyd_spf_texts() {
        assert_eq!(
            SkipReason::PtrWhitelistedDomain.comment(),
            "SPF skipped for PTR whitelisted relay domain"
        );
        assert_eq!(
            SkipReason::WhitelistedHelo.comment(),
            "SPF skipped for whitelisted HELO domain"
        );
    }

    #[test]
    fn x_comment_format() {
        assert_eq!(
            x_comment_value(
                SkipReason::LocalConnection,
                ip("::ffff:127.0.0.1"),
                "localhost",
                "a@example.com",
                "rcpt.example"
            ),
            "SPF check N/A for local connections - client-ip=127.0.0.1; helo=localhost; \
             envelope-from=a@example.com; receiver=rcpt.example "
        );
        assert_eq!(
            x_comment_value(
                SkipReason::WhitelistedRelay,
                ip("2001:db8::1"),
                "evil\r\nX-Injected: 1",
                "",
                "<UNKNOWN>"
            ),
            "SPF skipped for whitelisted relay - client-ip=2001:db8::1; \
             helo=evil??X-Injected:?1; envelope-from=<>; receiver=<UNKNOWN> "
        );
        // No value can add a key: separators and spaces become `?`; an
        // SRS sender keeps its domain.
        assert_eq!(
            x_comment_value(
                SkipReason::LocalConnection,
                ip("127.0.0.1"),
                "x;identity=mailfrom;.evil.test",
                "SRS0=HHH=TT=orig.example=user@fwd.example",
                "r.example;identity=mailfrom (c)"
            ),
            "SPF check N/A for local connections - client-ip=127.0.0.1; \
             helo=x?identity?mailfrom?.evil.test; \
             envelope-from=SRS0?HHH?TT?orig.example?user@fwd.example; \
             receiver=r.example?identity?mailfrom??c? "
        );
    }
}
