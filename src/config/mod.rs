//! The configuration: one typed, immutable [`Config`], read from the native
//! TOML file (`/etc/spfmilter/spfmilter.toml`) or from an unchanged
//! policyd-spf / pyspf-milter `policyd-spf.conf`, or built in when neither
//! exists.
//!
//! Both readers go through the same per-option parsers (`apply`), so a
//! value means the same in both files; each problem is reported as
//! `FILE:LINE: error|warning: message` ([`Diagnostic`]). Warnings leave a
//! usable configuration; any error refuses the whole file, so that the
//! daemon keeps running with its previous configuration on reload.
//!
//! A [`Config`] is never changed once built: the daemon shares it between
//! connections as an `Arc<Config>` ([`Loaded::config`]) and swaps the whole
//! `Arc` on reload.

mod apply;
mod choices;
mod diag;
mod legacy;
mod names;
mod native;
mod options;
mod render;
mod socket;
mod units;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::spf::Limits;

/// The reply templates belong to the decision that fills them in
/// (`policy::reply`); they are configured here.
pub use crate::policy::reply::{
    DEFAULT_REASON_MESSAGE, DEFAULT_REASON_URL, MessageField, MessagePart, POLICYD_SPF_REASON_URL,
    ReasonMessage, ReasonUrl, UrlField, UrlPart,
};
pub use choices::{
    AuthservId, HeaderType, InternalErrorAction, LogLevel, LogTarget, RejectPolicy, is_token_char,
};
pub use diag::{Diagnostic, Severity};
pub use names::{
    CidrList, DomainName, HostKind, HostPattern, MacroRule, canonical_ip, normalise_net,
};
pub use options::{OPTIONS, OptionInfo, options_markdown_table};
pub use socket::{Family, Mode, SocketSpec, UserSpec};

/// Where the native configuration is looked for when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/spfmilter/spfmilter.toml";

/// Everything the milter is told. Defaults are policyd-spf's code defaults
/// (docs/policyd-spf-compatibility.md §2) and, for the milter's own settings, those documented in
/// `conf/spfmilter.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub milter: MilterConfig,
    pub policy: PolicyConfig,
    pub skip: SkipConfig,
    pub spf: SpfConfig,
    pub dns: DnsConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
}

/// `[milter]`: the socket, the process, and the headers written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilterConfig {
    /// `Socket`.
    pub socket: SocketSpec,
    /// Permissions of a UNIX socket; `None`: as the umask leaves them.
    pub socket_mode: Option<Mode>,
    /// Owner of a UNIX socket; `None`: the milter's user.
    pub socket_owner: Option<String>,
    /// Group of a UNIX socket (e.g. `postfix`); `None`: the milter's group.
    pub socket_group: Option<String>,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: u32,
    /// A connection that sends no complete command for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// Reply when the milter fails internally.
    pub on_internal_error: InternalErrorAction,
    /// Everything done at MAIL FROM (bypass lookups, both evaluations)
    /// within this, to stay inside Postfix's `milter_command_timeout`.
    pub decision_time_limit: Duration,
    /// `Header_Type`.
    pub header_type: HeaderType,
    /// `Authserv_Id`.
    pub authserv_id: AuthservId,
    /// `Hide_Receiver`: `receiver=` / `r=` become `<UNKNOWN>`.
    pub hide_receiver: bool,
    /// Delete incoming `Received-SPF` and `Authentication-Results` headers
    /// that claim our authserv-id (docs/policyd-spf-compatibility.md §5: the reference never does).
    pub remove_forged_headers: bool,
    /// `PidFile`; `None`: no pid file.
    pub pid_file: Option<PathBuf>,
    /// `UserID`: the user (and group) to switch to; `None`: stay.
    pub user: Option<UserSpec>,
    /// `UMask`; `None`: inherited.
    pub umask: Option<Mode>,
}

impl Default for MilterConfig {
    fn default() -> Self {
        Self {
            socket: SocketSpec::default(),
            socket_mode: None,
            socket_owner: None,
            socket_group: None,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(900),
            on_internal_error: InternalErrorAction::Tempfail,
            decision_time_limit: Duration::from_secs(25),
            header_type: HeaderType::Spf,
            authserv_id: AuthservId::MtaHostname,
            hide_receiver: false,
            remove_forged_headers: true,
            pid_file: None,
            user: None,
            umask: None,
        }
    }
}

/// `[policy]`: what the SPF results lead to (docs/policyd-spf-compatibility.md §2–§3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// `HELO_reject`.
    pub helo_reject: RejectPolicy,
    /// `Mail_From_reject` (never [`RejectPolicy::Null`]).
    pub mail_from_reject: RejectPolicy,
    /// `PermError_reject`.
    pub permerror_reject: bool,
    /// `TempError_Defer`.
    pub temperror_defer: bool,
    /// `No_Mail`.
    pub no_mail: bool,
    /// `Reject_Not_Pass_Domains`.
    pub reject_not_pass_domains: Vec<DomainName>,
    /// `TestOnly = 0`: nothing is rejected or deferred.
    pub test_mode: bool,
    /// `Prospective`.
    pub prospective: Option<IpAddr>,
    /// `SPF_Enhanced_Status_Codes`.
    pub enhanced_status_codes: bool,
    /// `Reason_Message`.
    pub reason_message: ReasonMessage,
    /// `Reason_URL`.
    pub reason_url: ReasonUrl,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            helo_reject: RejectPolicy::Fail,
            mail_from_reject: RejectPolicy::Fail,
            permerror_reject: false,
            temperror_defer: false,
            no_mail: false,
            reject_not_pass_domains: Vec::new(),
            test_mode: false,
            prospective: None,
            enhanced_status_codes: true,
            reason_message: ReasonMessage::default(),
            reason_url: ReasonUrl::default(),
        }
    }
}

/// `[skip]`: clients and sessions that are not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkipConfig {
    /// `skip_addresses`.
    pub skip_addresses: CidrList,
    /// `Whitelist`.
    pub whitelist: CidrList,
    /// `Domain_Whitelist`.
    pub domain_whitelist: Vec<DomainName>,
    /// `HELO_Whitelist`.
    pub helo_whitelist: Vec<DomainName>,
    /// `Domain_Whitelist_PTR`.
    pub domain_whitelist_ptr: Vec<DomainName>,
    /// `InternalHosts`: not checked, no header.
    pub internal_hosts: Vec<HostPattern>,
    /// `MacroList`: when not empty, only connections matching a rule are
    /// checked.
    pub macro_list: Vec<MacroRule>,
    /// Sessions authenticated with SMTP AUTH (`{auth_authen}` set) are not
    /// checked and get no header (as pyspf-milter does).
    pub skip_authenticated: bool,
}

/// policyd-spf's `skip_addresses` default.
pub const DEFAULT_SKIP_ADDRESSES: [&str; 3] = ["127.0.0.0/8", "::ffff:127.0.0.0/104", "::1"];

impl Default for SkipConfig {
    fn default() -> Self {
        Self {
            skip_addresses: CidrList::new(
                DEFAULT_SKIP_ADDRESSES
                    .iter()
                    .map(|s| names::parse_cidr(s).expect("the default is valid").0)
                    .collect(),
            ),
            whitelist: CidrList::default(),
            domain_whitelist: Vec::new(),
            helo_whitelist: Vec::new(),
            domain_whitelist_ptr: Vec::new(),
            internal_hosts: vec![HostPattern {
                negated: false,
                kind: HostKind::Network("127.0.0.1/32".parse().expect("valid")),
            }],
            macro_list: Vec::new(),
            skip_authenticated: true,
        }
    }
}

/// `[spf]`: limits of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfConfig {
    /// RFC 7208 §4.6.4 limit of DNS-querying terms.
    pub lookup_limit: u32,
    /// `Void_Limit`.
    pub void_limit: u32,
    /// `Lookup_Time`: per identity.
    pub lookup_time: Duration,
    /// `Whitelist_Lookup_Time`: per whitelist lookup.
    pub whitelist_lookup_time: Duration,
}

impl Default for SpfConfig {
    fn default() -> Self {
        Self {
            lookup_limit: 10,
            void_limit: 2,
            lookup_time: Duration::from_secs(20),
            whitelist_lookup_time: Duration::from_secs(10),
        }
    }
}

/// `[dns]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Servers to ask; empty: those of `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// Time to wait for one answer before retrying.
    pub timeout: Duration,
    /// The DNS cache's byte budget (0: no cache).
    pub cache_size: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            cache_size: crate::dns::cache::DEFAULT_MAX_BYTES,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// Where the Prometheus endpoint listens; `None`: nowhere.
    pub listen: Option<SocketAddr>,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub target: LogTarget,
    /// `debugLevel`.
    pub level: LogLevel,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            target: LogTarget::Syslog,
            level: LogLevel::Actions,
        }
    }
}

/// Which file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A native TOML file.
    Toml(PathBuf),
    /// A policyd-spf / pyspf-milter `policyd-spf.conf`.
    Legacy(PathBuf),
    /// [`DEFAULT_CONFIG_PATH`] if it exists, else the built-in defaults.
    Default,
}

/// A configuration that loaded, with the warnings met on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Arc<Config>,
    /// Warnings only (an error refuses the load), in file order.
    pub warnings: Vec<Diagnostic>,
    /// The file read; `None` for the built-in defaults.
    pub path: Option<PathBuf>,
}

/// A configuration that did not load: every problem found (errors and
/// warnings, in file order), at least one of them an error.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub diagnostics: Vec<Diagnostic>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// Settings given on the command line; they replace those of the file,
/// whichever format it has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub socket: Option<SocketSpec>,
    /// Non-empty: replaces the whole list.
    pub nameservers: Vec<SocketAddr>,
    pub log_target: Option<LogTarget>,
    pub log_level: Option<LogLevel>,
    pub pid_file: Option<PathBuf>,
    pub user: Option<UserSpec>,
    pub test_mode: Option<bool>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }
}

/// How file datasets (`InternalHosts = /path`, `file:/path`) are read.
/// Parsers of untrusted text (the fuzz targets) refuse them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datasets {
    /// Read regular files, at most 1 MiB.
    Read,
    /// Report a file dataset as an error.
    Refuse,
}

impl Config {
    /// Reads `source` and checks it whole.
    pub fn load(source: &Source) -> Result<Loaded, LoadError> {
        match source {
            Source::Toml(path) => Config::load_toml(path),
            Source::Legacy(path) => Config::load_legacy(path),
            Source::Default => {
                let path = Path::new(DEFAULT_CONFIG_PATH);
                if path.exists() {
                    Config::load_toml(path)
                } else {
                    Ok(Loaded {
                        config: Arc::new(Config::default()),
                        warnings: Vec::new(),
                        path: None,
                    })
                }
            }
        }
    }

    /// Reads a native TOML file.
    pub fn load_toml(path: &Path) -> Result<Loaded, LoadError> {
        let name = path.display().to_string();
        let text = read_text(path, &name)?;
        let mut loaded = Config::parse_toml(&text, &name, Datasets::Read)?;
        loaded.path = Some(path.to_owned());
        Ok(loaded)
    }

    /// Reads a `policyd-spf.conf` (policyd-spf or pyspf-milter).
    pub fn load_legacy(path: &Path) -> Result<Loaded, LoadError> {
        let name = path.display().to_string();
        let text = read_text(path, &name)?;
        let mut loaded = Config::parse_legacy(&text, &name, Datasets::Read)?;
        loaded.path = Some(path.to_owned());
        Ok(loaded)
    }

    /// Parses native TOML text; `file` names it in diagnostics.
    pub fn parse_toml(text: &str, file: &str, datasets: Datasets) -> Result<Loaded, LoadError> {
        finish(native::parse(text, file, datasets))
    }

    /// Parses `policyd-spf.conf` text; `file` names it in diagnostics.
    pub fn parse_legacy(text: &str, file: &str, datasets: Datasets) -> Result<Loaded, LoadError> {
        finish(legacy::parse(text, file, datasets))
    }

    /// This configuration with the command line's settings on top.
    pub fn with_overrides(&self, o: &Overrides) -> Config {
        let mut c = self.clone();
        if let Some(s) = &o.socket {
            c.milter.socket = s.clone();
        }
        if !o.nameservers.is_empty() {
            c.dns.nameservers = o.nameservers.clone();
        }
        if let Some(t) = o.log_target {
            c.log.target = t;
        }
        if let Some(l) = o.log_level {
            c.log.level = l;
        }
        if let Some(p) = &o.pid_file {
            c.milter.pid_file = Some(p.clone());
        }
        if let Some(u) = &o.user {
            c.milter.user = Some(u.clone());
        }
        if let Some(t) = o.test_mode {
            c.policy.test_mode = t;
        }
        c
    }

    /// The SPF engine's limits: `lookup_limit`, `Void_Limit`, `Lookup_Time`
    /// (the MX and PTR limits stay RFC 7208's 10).
    pub fn spf_limits(&self) -> Limits {
        Limits {
            dns_lookups: self.spf.lookup_limit,
            void_lookups: self.spf.void_limit,
            time: self.spf.lookup_time,
            ..Limits::default()
        }
    }

    /// The effective configuration as commented TOML, every option shown
    /// (unset ones as comments). Parsing it gives back an equal `Config`;
    /// for `Config::default()` it is `conf/spfmilter.toml`.
    pub fn to_toml(&self) -> String {
        render::to_toml(self)
    }
}

/// The largest file read (a configuration or a dataset); far above any
/// real one, low enough that a wrong path (a log, a device) fails fast.
pub(crate) const MAX_FILE_SIZE: u64 = 1 << 20;

/// Opens `path` for reading only if it is a regular file: opened without
/// waiting (`O_NONBLOCK`: a FIFO put in place of a file would otherwise
/// block the open until a writer comes, for ever), then checked with
/// fstat(2) on what was opened, so that nothing but a regular file is ever
/// read. `O_NOCTTY`: a terminal named by mistake never becomes ours.
/// Every file a setting or the command line names goes through here: the
/// configuration, file datasets, the pid file.
pub(crate) fn open_regular(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    check_regular(&file, path)?;
    Ok(file)
}

/// `FILE: not a regular file` unless `file` (already open) is one.
pub(crate) fn check_regular(file: &std::fs::File, path: &Path) -> Result<(), String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(format!("{}: not a regular file", path.display()))
    }
}

/// Reads a regular file of at most [`MAX_FILE_SIZE`] bytes as UTF-8
/// (opened by [`open_regular`]).
pub(crate) fn read_limited(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(format!("{} is larger than 1 MiB", path.display()));
    }
    String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        format!("{}: line {line} is not valid UTF-8", path.display())
    })
}

fn read_text(path: &Path, name: &str) -> Result<String, LoadError> {
    read_limited(path).map_err(|message| LoadError {
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            file: name.to_owned(),
            line: None,
            message,
        }],
    })
}

fn finish((config, diags): (Config, diag::Diagnostics)) -> Result<Loaded, LoadError> {
    if diags.has_errors() {
        Err(LoadError {
            diagnostics: diags.into_sorted(),
        })
    } else {
        Ok(Loaded {
            config: Arc::new(config),
            warnings: diags.into_sorted(),
            path: None,
        })
    }
}
