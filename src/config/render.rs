//! The commented TOML writer: `conf/spfmilter.toml` (the defaults), `config
//! check --show` (the effective configuration) and `config convert` (a
//! legacy file's meaning) are all this one function's output, so that each
//! of them reads back to the same `Config`.

use std::fmt::Write as _;

use super::Config;
use super::choices::AuthservId;
use super::names::net_to_string;
use super::options::{OPTIONS, Opt, TABLES, info};
use super::units::{duration_to_toml, size_to_toml};

const WIDTH: usize = 78;

pub(crate) fn to_toml(cfg: &Config) -> String {
    let mut out = String::new();
    out.push_str(
        "# spfmilter configuration (TOML): every option, with what it does and its\n\
         # default. Lines starting with # are comments; an option that is commented\n\
         # out is unset. The policyd-spf spelling of each key is accepted too\n\
         # (HELO_reject = \"Fail\" in [policy]).\n\
         #\n\
         # Check a change before reloading:  spfmilter config check --config FILE\n\
         # Convert a policyd-spf.conf:        spfmilter config convert FILE\n",
    );
    for (table, heading) in TABLES {
        let _ = write!(out, "\n# {heading}\n[{table}]\n");
        for o in OPTIONS.iter().filter(|o| o.table == table) {
            out.push('\n');
            comment(&mut out, o.meaning);
            let legacy = o
                .legacy
                .map(|l| format!(" policyd-spf.conf: {l}."))
                .unwrap_or_default();
            comment(
                &mut out,
                &format!("Default: {}.{legacy}", o.default.replace('`', "")),
            );
            match value(cfg, o.id) {
                Some(v) => {
                    let _ = writeln!(out, "{} = {v}", o.key);
                }
                None => {
                    let _ = writeln!(out, "#{} = {}", o.key, example(o.id));
                }
            }
        }
    }
    out
}

/// Wraps `text` into `# ` lines.
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > WIDTH && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn array<I: IntoIterator<Item = String>>(items: I) -> String {
    let items: Vec<String> = items.into_iter().map(|s| quote(&s)).collect();
    let inline = format!("[{}]", items.join(", "));
    if inline.len() <= 60 {
        return inline;
    }
    let mut s = String::from("[\n");
    for i in items {
        let _ = writeln!(s, "    {i},");
    }
    s.push(']');
    s
}

fn flag(b: bool) -> String {
    b.to_string()
}

/// The value of an option as TOML, `None` when unset.
fn value(cfg: &Config, opt: Opt) -> Option<String> {
    let (m, p, s) = (&cfg.milter, &cfg.policy, &cfg.skip);
    let v = match opt {
        Opt::Socket => quote(&m.socket.to_string()),
        Opt::SocketMode => quote(&m.socket_mode?.to_string()),
        Opt::SocketOwner => quote(m.socket_owner.as_ref()?),
        Opt::SocketGroup => quote(m.socket_group.as_ref()?),
        Opt::MaxConnections => m.max_connections.to_string(),
        Opt::IdleTimeout => duration_to_toml(m.idle_timeout),
        Opt::OnInternalError => quote(m.on_internal_error.as_str()),
        Opt::DecisionTimeLimit => duration_to_toml(m.decision_time_limit),
        Opt::HeaderType => quote(m.header_type.as_str()),
        Opt::AuthservId => match &m.authserv_id {
            AuthservId::MtaHostname => return None,
            AuthservId::Hostname => quote("HOSTNAME"),
            AuthservId::Fixed(id) => quote(id),
        },
        Opt::HideReceiver => flag(m.hide_receiver),
        Opt::RemoveForgedHeaders => flag(m.remove_forged_headers),
        Opt::PidFile => quote(&m.pid_file.as_ref()?.display().to_string()),
        Opt::User => quote(&m.user.as_ref()?.to_string()),
        Opt::Umask => quote(&m.umask?.to_string()),
        Opt::HeloReject => quote(p.helo_reject.as_str()),
        Opt::MailFromReject => quote(p.mail_from_reject.as_str()),
        Opt::PermErrorReject => flag(p.permerror_reject),
        Opt::TempErrorDefer => flag(p.temperror_defer),
        Opt::NoMail => flag(p.no_mail),
        Opt::RejectNotPassDomains => array(p.reject_not_pass_domains.iter().map(|d| d.to_string())),
        Opt::TestMode => flag(p.test_mode),
        Opt::Prospective => quote(&p.prospective?.to_string()),
        Opt::EnhancedStatusCodes => flag(p.enhanced_status_codes),
        Opt::ReasonMessage => quote(&p.reason_message.to_string()),
        Opt::ReasonUrl => quote(&p.reason_url.to_string()),
        Opt::SkipAddresses => array(s.skip_addresses.entries().iter().map(|n| net_to_string(*n))),
        Opt::Whitelist => array(s.whitelist.entries().iter().map(|n| net_to_string(*n))),
        Opt::DomainWhitelist => array(s.domain_whitelist.iter().map(|d| d.to_string())),
        Opt::HeloWhitelist => array(s.helo_whitelist.iter().map(|d| d.to_string())),
        Opt::DomainWhitelistPtr => array(s.domain_whitelist_ptr.iter().map(|d| d.to_string())),
        Opt::InternalHosts => array(s.internal_hosts.iter().map(|h| h.to_string())),
        Opt::MacroList => array(s.macro_list.iter().map(|r| r.to_string())),
        Opt::SkipAuthenticated => flag(s.skip_authenticated),
        Opt::LookupLimit => cfg.spf.lookup_limit.to_string(),
        Opt::VoidLimit => cfg.spf.void_limit.to_string(),
        Opt::LookupTime => duration_to_toml(cfg.spf.lookup_time),
        Opt::WhitelistLookupTime => duration_to_toml(cfg.spf.whitelist_lookup_time),
        Opt::Nameservers => array(cfg.dns.nameservers.iter().map(|a| a.to_string())),
        Opt::DnsTimeout => duration_to_toml(cfg.dns.timeout),
        Opt::DnsCacheSize => size_to_toml(cfg.dns.cache_size),
        Opt::LogTarget => quote(cfg.log.target.as_str()),
        Opt::LogLevel => cfg.log.level.as_int().to_string(),
        Opt::MetricsListen => quote(&cfg.metrics.listen?.to_string()),
    };
    Some(v)
}

/// What an unset option looks like when set (shown commented out).
fn example(opt: Opt) -> &'static str {
    match opt {
        Opt::SocketMode => "\"0660\"",
        Opt::SocketOwner => "\"spfmilter\"",
        Opt::SocketGroup => "\"postfix\"",
        Opt::AuthservId => "\"mx.example.com\"",
        Opt::PidFile => "\"/run/spfmilter/spfmilter.pid\"",
        Opt::User => "\"spfmilter:spfmilter\"",
        Opt::Umask => "\"0007\"",
        Opt::Prospective => "\"192.0.2.1\"",
        Opt::MetricsListen => "\"127.0.0.1:9891\"",
        _ => {
            debug_assert!(false, "{} has no example", info(opt).key);
            "\"\""
        }
    }
}
