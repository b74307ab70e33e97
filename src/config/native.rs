//! The reader of the native TOML file.
//!
//! Two passes over the text: the first walks the parsed document with its
//! spans and reports every key that is not an option (with the nearest one),
//! so that all of them are found at once; the second deserializes it with
//! serde into [`RawToml`], whose fields accept the policyd-spf spelling of
//! each key as an alias, and hands each value to the shared parsers.

use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::apply::{Cx, Raw, apply};
use super::diag::{Diagnostics, LineIndex, nearest};
use super::options::{OPTIONS, Opt, TABLES, UNSUPPORTED};
use super::{Config, Datasets};

type Field = Option<Spanned<toml::Value>>;

/// The file as serde sees it: every value kept as written, with its span.
/// Each alias is an option's policyd-spf key (checked against
/// `options::OPTIONS` by a test).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawToml {
    milter: RawMilter,
    policy: RawPolicy,
    skip: RawSkip,
    spf: RawSpf,
    dns: RawDns,
    log: RawLog,
    metrics: RawMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawMilter {
    #[serde(alias = "Socket")]
    socket: Field,
    socket_mode: Field,
    socket_owner: Field,
    socket_group: Field,
    max_connections: Field,
    idle_timeout: Field,
    on_internal_error: Field,
    decision_time_limit: Field,
    #[serde(alias = "Header_Type")]
    header_type: Field,
    #[serde(alias = "Authserv_Id")]
    authserv_id: Field,
    #[serde(alias = "Hide_Receiver")]
    hide_receiver: Field,
    remove_forged_headers: Field,
    #[serde(alias = "PidFile")]
    pid_file: Field,
    #[serde(alias = "UserID")]
    user: Field,
    #[serde(alias = "UMask")]
    umask: Field,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawPolicy {
    #[serde(alias = "HELO_reject")]
    helo_reject: Field,
    #[serde(alias = "Mail_From_reject")]
    mail_from_reject: Field,
    #[serde(alias = "PermError_reject")]
    permerror_reject: Field,
    #[serde(alias = "TempError_Defer")]
    temperror_defer: Field,
    #[serde(alias = "No_Mail")]
    no_mail: Field,
    #[serde(alias = "Reject_Not_Pass_Domains")]
    reject_not_pass_domains: Field,
    test_mode: Field,
    /// policyd-spf's `TestOnly`, with its inverted integer meaning (0 =
    /// test mode): not an alias of `test_mode`, whose values are booleans.
    #[serde(rename = "TestOnly")]
    test_only: Field,
    #[serde(alias = "Prospective")]
    prospective: Field,
    #[serde(alias = "SPF_Enhanced_Status_Codes")]
    enhanced_status_codes: Field,
    #[serde(alias = "Reason_Message")]
    reason_message: Field,
    #[serde(alias = "Reason_URL")]
    reason_url: Field,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSkip {
    skip_addresses: Field,
    #[serde(alias = "Whitelist")]
    whitelist: Field,
    #[serde(alias = "Domain_Whitelist")]
    domain_whitelist: Field,
    #[serde(alias = "HELO_Whitelist")]
    helo_whitelist: Field,
    #[serde(alias = "Domain_Whitelist_PTR")]
    domain_whitelist_ptr: Field,
    #[serde(alias = "InternalHosts")]
    internal_hosts: Field,
    #[serde(alias = "MacroList")]
    macro_list: Field,
    skip_authenticated: Field,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSpf {
    lookup_limit: Field,
    #[serde(alias = "Void_Limit")]
    void_limit: Field,
    #[serde(alias = "Lookup_Time")]
    lookup_time: Field,
    #[serde(alias = "Whitelist_Lookup_Time")]
    whitelist_lookup_time: Field,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawDns {
    nameservers: Field,
    timeout: Field,
    cache_size: Field,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLog {
    target: Field,
    #[serde(alias = "debugLevel")]
    level: Field,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawMetrics {
    listen: Field,
}

impl RawToml {
    /// Each option with its value, if written. `TestOnly` comes as
    /// `Opt::TestMode` with `true` for its legacy meaning.
    fn fields(&self) -> Vec<(Opt, &Field, bool)> {
        let (m, p, s) = (&self.milter, &self.policy, &self.skip);
        vec![
            (Opt::Socket, &m.socket, false),
            (Opt::SocketMode, &m.socket_mode, false),
            (Opt::SocketOwner, &m.socket_owner, false),
            (Opt::SocketGroup, &m.socket_group, false),
            (Opt::MaxConnections, &m.max_connections, false),
            (Opt::IdleTimeout, &m.idle_timeout, false),
            (Opt::OnInternalError, &m.on_internal_error, false),
            (Opt::DecisionTimeLimit, &m.decision_time_limit, false),
            (Opt::HeaderType, &m.header_type, false),
            (Opt::AuthservId, &m.authserv_id, false),
            (Opt::HideReceiver, &m.hide_receiver, false),
            (Opt::RemoveForgedHeaders, &m.remove_forged_headers, false),
            (Opt::PidFile, &m.pid_file, false),
            (Opt::User, &m.user, false),
            (Opt::Umask, &m.umask, false),
            (Opt::HeloReject, &p.helo_reject, false),
            (Opt::MailFromReject, &p.mail_from_reject, false),
            (Opt::PermErrorReject, &p.permerror_reject, false),
            (Opt::TempErrorDefer, &p.temperror_defer, false),
            (Opt::NoMail, &p.no_mail, false),
            (Opt::RejectNotPassDomains, &p.reject_not_pass_domains, false),
            (Opt::TestMode, &p.test_mode, false),
            (Opt::TestMode, &p.test_only, true),
            (Opt::Prospective, &p.prospective, false),
            (Opt::EnhancedStatusCodes, &p.enhanced_status_codes, false),
            (Opt::ReasonMessage, &p.reason_message, false),
            (Opt::ReasonUrl, &p.reason_url, false),
            (Opt::SkipAddresses, &s.skip_addresses, false),
            (Opt::Whitelist, &s.whitelist, false),
            (Opt::DomainWhitelist, &s.domain_whitelist, false),
            (Opt::HeloWhitelist, &s.helo_whitelist, false),
            (Opt::DomainWhitelistPtr, &s.domain_whitelist_ptr, false),
            (Opt::InternalHosts, &s.internal_hosts, false),
            (Opt::MacroList, &s.macro_list, false),
            (Opt::SkipAuthenticated, &s.skip_authenticated, false),
            (Opt::LookupLimit, &self.spf.lookup_limit, false),
            (Opt::VoidLimit, &self.spf.void_limit, false),
            (Opt::LookupTime, &self.spf.lookup_time, false),
            (
                Opt::WhitelistLookupTime,
                &self.spf.whitelist_lookup_time,
                false,
            ),
            (Opt::Nameservers, &self.dns.nameservers, false),
            (Opt::DnsTimeout, &self.dns.timeout, false),
            (Opt::DnsCacheSize, &self.dns.cache_size, false),
            (Opt::LogTarget, &self.log.target, false),
            (Opt::LogLevel, &self.log.level, false),
            (Opt::MetricsListen, &self.metrics.listen, false),
        ]
    }
}

pub(crate) fn parse(text: &str, file: &str, datasets: Datasets) -> (Config, Diagnostics) {
    let mut diags = Diagnostics::new(file);
    let mut cfg = Config::default();
    let lines = LineIndex::new(text);
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map(|s| lines.line(s.start));
            let mut message = format!("not valid TOML: {}", e.message().trim_end());
            if looks_legacy(text) {
                message.push_str(
                    " (this looks like a policyd-spf.conf: read it with --policyd-conf, or convert it with `spfmilter config convert`)",
                );
            }
            diags.error(line, message);
            return (cfg, diags);
        }
    };
    let Some(written) = check_keys(doc.get_ref(), &lines, &mut diags) else {
        return (cfg, diags);
    };
    let raw: RawToml = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let line = e.span().map(|s| lines.line(s.start));
            diags.error(line, e.message().trim_end().to_owned());
            return (cfg, diags);
        }
    };
    for (opt, field, legacy_meaning) in raw.fields() {
        let Some(value) = field else { continue };
        let info = super::options::info(opt);
        let key = written
            .get(&(opt, legacy_meaning))
            .cloned()
            .unwrap_or_else(|| info.key.to_owned());
        let mut cx = Cx {
            diags: &mut diags,
            line: Some(lines.line(value.span().start)),
            key,
            datasets,
        };
        if legacy_meaning {
            // TestOnly keeps policyd-spf's integer: 0 is test mode.
            match value.get_ref() {
                toml::Value::Integer(n) => cfg.policy.test_mode = *n == 0,
                other => cx.diags.error(
                    cx.line,
                    format!(
                        "TestOnly: expected an integer (0 = test mode), found {}; or write test_mode = true",
                        other.type_str()
                    ),
                ),
            }
        } else {
            apply(&mut cfg, opt, Raw::Toml(value.get_ref()), &mut cx);
        }
    }
    (cfg, diags)
}

/// policyd-spf.conf lines (`Key = Value` with a bare word value) are
/// mostly not TOML; say so when such a file fails to parse.
fn looks_legacy(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.split('#').next().unwrap_or_default();
        l.split_once('=').is_some_and(|(k, _)| {
            let k = k.trim();
            OPTIONS.iter().any(|o| o.legacy == Some(k))
        })
    })
}

/// Pass 1: every key of the document must be a table of ours or an option
/// of its table. Returns the key spelling used for each option (for
/// messages), or `None` when the structure itself is wrong (a table that
/// is not one, an option given twice through its alias).
fn check_keys(
    doc: &DeTable<'_>,
    lines: &LineIndex,
    diags: &mut Diagnostics,
) -> Option<HashMap<(Opt, bool), String>> {
    let mut written = HashMap::new();
    let mut structural = false;
    for (key, value) in doc.iter() {
        let name: &str = key.get_ref();
        let line = Some(lines.line(key.span().start));
        if TABLES.iter().any(|(t, _)| *t == name) {
            match value.get_ref() {
                DeValue::Table(table) => {
                    structural |= !check_table(name, table, lines, diags, &mut written);
                }
                other => {
                    structural = true;
                    diags.error(
                        line,
                        format!(
                            "{name} must be a table ([{name}]), found {}",
                            other.type_str()
                        ),
                    );
                }
            }
        } else {
            unknown_key(name, None, value, line, diags);
        }
    }
    (!structural).then_some(written)
}

fn check_table(
    table: &str,
    entries: &DeTable<'_>,
    lines: &LineIndex,
    diags: &mut Diagnostics,
    written: &mut HashMap<(Opt, bool), String>,
) -> bool {
    let mut ok = true;
    let mut first: HashMap<Opt, (String, usize)> = HashMap::new();
    // In file order, so that the second spelling of an option is the one
    // reported.
    let mut sorted: Vec<_> = entries.iter().collect();
    sorted.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in sorted {
        let name: &str = key.get_ref();
        let line = lines.line(key.span().start);
        let found = OPTIONS
            .iter()
            .find(|o| o.table == table && (o.key == name || o.legacy == Some(name)));
        let Some(info) = found else {
            unknown_key(name, Some(table), value, Some(line), diags);
            continue;
        };
        if let Some((other, other_line)) = first.get(&info.id) {
            ok = false;
            diags.error(
                Some(line),
                format!(
                    "{name} sets the same option as {other} (line {other_line}); keep one of them"
                ),
            );
            continue;
        }
        first.insert(info.id, (name.to_owned(), line));
        let legacy_meaning = info.id == Opt::TestMode && name == "TestOnly";
        written.insert((info.id, legacy_meaning), format!("{table}.{name}"));
    }
    ok
}

/// A key that is not an option where it stands: a policyd-spf key that
/// spfmilter does not use, an option in the wrong table, or a typo.
fn unknown_key(
    name: &str,
    table: Option<&str>,
    value: &Spanned<DeValue<'_>>,
    line: Option<usize>,
    diags: &mut Diagnostics,
) {
    if let Some(u) = UNSUPPORTED
        .iter()
        .find(|u| u.legacy.eq_ignore_ascii_case(name) || u.toml == name)
    {
        let empty = match value.get_ref() {
            DeValue::String(s) => s.trim().is_empty(),
            DeValue::Boolean(b) => !b,
            _ => false,
        };
        if u.refused && !empty {
            diags.error(line, format!("{name} is not supported: {}", u.why));
        } else {
            diags.warning(line, format!("{name}: {}", u.why));
        }
        return;
    }
    let place = table.map_or_else(|| "at the top level".to_owned(), |t| format!("in [{t}]"));
    // The same key in another table, or at the top level where tables are.
    if let Some(o) = OPTIONS
        .iter()
        .find(|o| o.key == name || o.legacy.is_some_and(|l| l.eq_ignore_ascii_case(name)))
    {
        let there = if table == Some(o.table) {
            String::new()
        } else {
            format!(" in [{}]", o.table)
        };
        diags.error(
            line,
            format!(
                "unknown key {name} {place}: did you mean `{}`{there}?",
                o.key
            ),
        );
        return;
    }
    let candidates: Vec<&str> = match table {
        Some(t) => OPTIONS
            .iter()
            .filter(|o| o.table == t)
            .flat_map(|o| std::iter::once(o.key).chain(o.legacy))
            .collect(),
        None => TABLES.iter().map(|(t, _)| *t).collect(),
    };
    let hint = match nearest(name, candidates.iter().copied()) {
        Some(k) => {
            let canonical = OPTIONS
                .iter()
                .find(|o| o.legacy == Some(k))
                .map_or(k, |o| o.key);
            format!(": did you mean `{canonical}`?")
        }
        None => match nearest(name, OPTIONS.iter().map(|o| o.key)) {
            Some(k) => {
                let t = OPTIONS.iter().find(|o| o.key == k).map_or("", |o| o.table);
                format!(": did you mean `{k}` in [{t}]?")
            }
            None => String::new(),
        },
    };
    diags.error(line, format!("unknown key {name} {place}{hint}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each option's TOML key and policyd-spf key reach the option through
    /// serde (its field or alias) in the option's table.
    #[test]
    fn serde_fields_and_aliases_match_the_option_list() {
        for o in OPTIONS {
            for name in std::iter::once(o.key).chain(o.legacy) {
                let text = format!("[{}]\n{name} = 1\n", o.table);
                let raw: RawToml = toml::from_str(&text).unwrap();
                let set: Vec<(Opt, bool)> = raw
                    .fields()
                    .into_iter()
                    .filter(|(_, f, _)| f.is_some())
                    .map(|(opt, _, legacy)| (opt, legacy))
                    .collect();
                let legacy_meaning = name == "TestOnly";
                assert_eq!(set, [(o.id, legacy_meaning)], "{}.{name}", o.table);
            }
        }
        // And nothing else is a field.
        let fields = RawToml::default().fields().len();
        assert_eq!(fields, OPTIONS.len() + 1, "TestOnly is the one extra field");
    }
}
