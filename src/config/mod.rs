//! The configuration: one typed, immutable [`Config`], read from the native
//! TOML file (`/etc/spfmilter/spfmilter.toml`) or from an unchanged
//! policyd-spf / pyspf-milter `policyd-spf.conf`, or built in when neither
//! exists.
//!
//! Every option is declared once, in `options.rs` (its field here, keys,
//! default, documentation, parser and renderer). Both readers go through
//! the option's parser, so a value means the same in both files; each
//! problem is reported as
//! `FILE:LINE: error|warning: message` ([`Diagnostic`]). Warnings leave a
//! usable configuration; any error refuses the whole file, so that the
//! daemon keeps running with its previous configuration on reload.
//!
//! A [`Config`] is never changed once built: the daemon shares it between
//! connections as an `Arc<Config>` ([`Loaded::config`]) and swaps the whole
//! `Arc` on reload.

mod apply;
mod choices;
mod declare;
mod diag;
mod legacy;
mod lists;
mod names;
mod native;
mod options;
mod render;
mod socket;
mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
pub use declare::{OptionInfo, options_markdown_table};
pub use diag::{Diagnostic, Severity};
pub use names::{
    CidrList, DEFAULT_SKIP_ADDRESSES, DomainName, HostKind, HostPattern, MacroRule, canonical_ip,
    normalise_net,
};
pub use options::{
    BlockConfig, DnsConfig, LogConfig, MetricsConfig, MilterConfig, OPTIONS, PolicyConfig,
    RescueConfig, SkipConfig, SpfConfig,
};
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
    pub block: BlockConfig,
    pub spf: SpfConfig,
    pub dns: DnsConfig,
    pub rescue: RescueConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
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

    /// What the rescue of a held message may use (`[rescue]`).
    pub fn rescue_settings(&self) -> crate::rescue::Settings {
        crate::rescue::Settings {
            methods: self.rescue.methods.clone(),
            trusted_arc_sealers: self
                .rescue
                .trusted_arc_sealers
                .iter()
                .map(ToString::to_string)
                .collect(),
            time_limit: self.rescue.time_limit,
        }
    }

    /// True when SPF rejects are held to end of message (`[rescue]
    /// methods` is not empty).
    pub fn rescue_on(&self) -> bool {
        !self.rescue.methods.is_empty()
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
