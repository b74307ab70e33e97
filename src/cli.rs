//! The command line: thin wrappers over the library.
//!
//! Exit status: 0 when the command ran (whatever the SPF result), 1 for a
//! setup error (e.g. no usable resolver) or, for `config check` and `config
//! convert`, a configuration with errors; 2 for a usage error.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use spfmilter::config::{Config, DomainName};
use spfmilter::dns::cache::CacheOptions;
use spfmilter::dns::hickory::parse_nameserver;
use spfmilter::dns::{CachingLookup, HickoryLookup, Lookup, ResolverOptions};
use spfmilter::policy::block;
use spfmilter::policy::envelope::Envelope;
use spfmilter::spf::flatten::{Flattened, flatten};
use spfmilter::spf::{Evaluator, Identity, Limits, Request, SpfOutcome, TraceStep};

#[derive(Debug, Parser)]
#[command(
    name = "spfmilter",
    version,
    about = "SPF (RFC 7208) checks for Postfix"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the milter (the default when no command is given).
    Run(ConfigArgs),
    /// Evaluate SPF for a connection, as the milter would, and explain why.
    Check(CheckArgs),
    /// Flatten a domain's SPF policy into the networks it authorizes.
    Expand(ExpandArgs),
    /// Check or convert a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, clap::Args)]
struct DnsArgs {
    /// DNS server to ask, HOST or HOST:PORT (repeatable). Default: the
    /// servers of /etc/resolv.conf.
    #[arg(long = "nameserver", value_name = "HOST:PORT", value_parser = parse_nameserver)]
    nameservers: Vec<SocketAddr>,
    /// Seconds to wait for one DNS answer before retrying.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    dns_timeout: f64,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The SMTP client's address.
    #[arg(long)]
    ip: IpAddr,
    /// The HELO/EHLO name the client gave.
    #[arg(long, default_value = "")]
    helo: String,
    /// The MAIL FROM address; '' is the null sender (checked as postmaster@HELO).
    #[arg(long)]
    sender: Option<String>,
    /// Which identity to check.
    #[arg(long, value_enum, default_value_t = IdentityArg::Both)]
    identity: IdentityArg,
    /// The receiving host's domain, for %{r} in explanations.
    #[arg(long)]
    receiver: Option<String>,
    #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
    format: CheckFormat,
    /// Show each step: records fetched, terms evaluated, DNS answers, limits.
    #[arg(long)]
    trace: bool,
    /// RFC 7208 §4.6.4 limit of DNS-querying terms.
    #[arg(long, default_value_t = Limits::default().dns_lookups)]
    lookup_limit: u32,
    /// RFC 7208 §4.6.4 limit of void lookups (policyd-spf Void_Limit).
    #[arg(long, default_value_t = Limits::default().void_lookups)]
    void_limit: u32,
    /// Time limit for one evaluation, in seconds (policyd-spf Lookup_Time).
    #[arg(long, value_name = "SECONDS", default_value_t = 20.0)]
    lookup_time: f64,
    /// Show which rule of this spfmilter.toml's [block] table would refuse
    /// the message (its other tables are not used).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// A domain of the block rule authorized_by (repeatable; added to
    /// those of the --config file).
    #[arg(long = "block-authorized-by", value_name = "DOMAIN")]
    block_authorized_by: Vec<String>,
    /// A domain of the block rule includes (repeatable; added to those of
    /// the --config file).
    #[arg(long = "block-includes", value_name = "DOMAIN")]
    block_includes: Vec<String>,
    #[command(flatten)]
    dns: DnsArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IdentityArg {
    Helo,
    Mailfrom,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CheckFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct ExpandArgs {
    /// The domain whose policy to flatten.
    domain: String,
    #[arg(long, value_enum, default_value_t = ExpandFormat::List)]
    format: ExpandFormat,
    /// The action written after each network in postfix-cidr format.
    #[arg(long, default_value = "REJECT")]
    action: String,
    #[command(flatten)]
    dns: DnsArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExpandFormat {
    /// One network per line.
    List,
    /// A Postfix cidr: access table ("45.120.196.0/22 REJECT").
    PostfixCidr,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(Command::Config(cmd)) => return config_main(cmd),
        Some(other) => other,
        // Plain `spfmilter` runs the milter with the default configuration.
        None => Command::Run(ConfigArgs::default()),
    };
    if let Command::Run(args) = &command {
        return run_main(args);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return setup_error(&format!("cannot start the async runtime: {e}")),
    };
    let result = match command {
        Command::Check(args) => runtime.block_on(check(args)),
        Command::Expand(args) => runtime.block_on(expand(args)),
        Command::Config(_) | Command::Run(_) => {
            return setup_error("internal: command dispatched twice");
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => setup_error(&e),
    }
}

fn setup_error(message: &str) -> ExitCode {
    eprintln!("spfmilter: {message}");
    ExitCode::from(1)
}

fn resolver(args: &DnsArgs) -> Result<CachingLookup<HickoryLookup>, String> {
    if !(args.dns_timeout.is_finite() && args.dns_timeout > 0.0) {
        return Err("--dns-timeout must be a positive number of seconds".into());
    }
    let options = ResolverOptions {
        nameservers: args.nameservers.clone(),
        timeout: Duration::from_secs_f64(args.dns_timeout),
        ..ResolverOptions::default()
    };
    let hickory = HickoryLookup::new(&options).map_err(|e| e.to_string())?;
    Ok(CachingLookup::new(hickory, CacheOptions::default()))
}

/// One line of `check --format json`.
#[derive(Serialize)]
struct JsonLine<'a> {
    #[serde(flatten)]
    outcome: &'a SpfOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<Vec<String>>,
}

async fn check(args: CheckArgs) -> Result<(), String> {
    if !(args.lookup_time.is_finite() && args.lookup_time > 0.0) {
        return Err("--lookup-time must be a positive number of seconds".into());
    }
    let identities: &[Identity] = match args.identity {
        IdentityArg::Helo => &[Identity::Helo],
        IdentityArg::Mailfrom => &[Identity::MailFrom],
        IdentityArg::Both => &[Identity::Helo, Identity::MailFrom],
    };
    if identities.contains(&Identity::MailFrom) && args.sender.is_none() {
        return Err("--sender is required to check the mailfrom identity (use --sender '' for the null sender)".into());
    }
    if identities.contains(&Identity::Helo) && args.helo.is_empty() {
        return Err("--helo is required to check the helo identity".into());
    }
    let limits = Limits {
        dns_lookups: args.lookup_limit,
        void_lookups: args.void_limit,
        time: Duration::from_secs_f64(args.lookup_time),
        ..Limits::default()
    };
    let blocks = block_config(&args)?;
    let evaluator = Evaluator::new(resolver(&args.dns)?)
        .with_limits(limits)
        .with_via(!blocks.block.includes.is_empty());
    let request = Request {
        ip: args.ip,
        helo: &args.helo,
        sender: args.sender.as_deref().unwrap_or(""),
        receiver: args.receiver.as_deref(),
    };
    let mut stdout = std::io::stdout().lock();
    let mut outcomes = Vec::new();
    for &identity in identities {
        let (outcome, trace) = evaluate(&evaluator, &request, identity, args.trace).await;
        let written = match args.format {
            CheckFormat::Json => {
                let line = JsonLine {
                    outcome: &outcome,
                    trace: trace.map(|t| t.iter().map(trace_line).collect()),
                };
                serde_json::to_string(&line)
                    .map_err(|e| e.to_string())
                    .and_then(|json| writeln!(stdout, "{json}").map_err(|e| e.to_string()))
            }
            CheckFormat::Text => {
                write_text(&mut stdout, &outcome, trace.as_deref()).map_err(|e| e.to_string())
            }
        };
        written?;
        outcomes.push(outcome);
    }
    if block::configured(&blocks) {
        let report = block_report(&blocks, &evaluator, &args, &outcomes).await;
        let written = match args.format {
            CheckFormat::Json => serde_json::to_string(&JsonBlock { block: &report })
                .map_err(|e| e.to_string())
                .and_then(|json| writeln!(stdout, "{json}").map_err(|e| e.to_string())),
            CheckFormat::Text => write_block(&mut stdout, &report).map_err(|e| e.to_string()),
        };
        written?;
    }
    Ok(())
}

/// The `[block]` rules `check` applies: those of `--config`, and the
/// `--block-*` domains.
fn block_config(args: &CheckArgs) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => {
            let loaded = Config::load_toml(path).map_err(|e| e.to_string())?;
            print_diagnostics(&loaded.warnings);
            (*loaded.config).clone()
        }
        None => Config::default(),
    };
    for (flag, names, list) in [
        (
            "--block-authorized-by",
            &args.block_authorized_by,
            &mut config.block.authorized_by,
        ),
        (
            "--block-includes",
            &args.block_includes,
            &mut config.block.includes,
        ),
    ] {
        for name in names {
            list.push(DomainName::parse(name).map_err(|e| format!("{flag}: {e}"))?);
        }
    }
    Ok(config)
}

/// What `check` says of the block rules: each rule's finding, and the
/// reply the milter would give.
#[derive(Serialize)]
struct BlockReport {
    /// One entry per rule looked at, in the milter's order.
    rules: Vec<RuleReport>,
    /// The reply of the first enforced match (`550 5.7.1 …`); `None`: the
    /// block rules refuse nothing.
    reply: Option<String>,
    #[serde(skip)]
    traces: Vec<(String, Vec<TraceStep>)>,
}

#[derive(Serialize)]
struct RuleReport {
    rule: &'static str,
    /// The listed name (`authorized_by`) or the names entered (`includes`).
    name: String,
    fires: bool,
    /// Only logged ("would block") in the milter: the rule's test switch.
    test: bool,
    why: String,
}

async fn block_report<L: Lookup>(
    config: &Config,
    evaluator: &Evaluator<L>,
    args: &CheckArgs,
    outcomes: &[SpfOutcome],
) -> BlockReport {
    let mut report = BlockReport {
        rules: Vec::new(),
        reply: None,
        traces: Vec::new(),
    };
    let mut first_enforced: Option<block::Hit> = None;
    if !config.block.includes.is_empty() {
        match block::includes_hit(config, outcomes) {
            Some(hit) => {
                report.rules.push(RuleReport {
                    rule: "includes",
                    name: hit.name.clone(),
                    fires: true,
                    test: hit.test,
                    why: hit.why.clone(),
                });
                if !hit.test {
                    first_enforced = Some(hit);
                }
            }
            None => {
                let entered: Vec<String> = outcomes
                    .iter()
                    .map(|o| format!("{} entered [{}]", o.identity, o.via.join(", ")))
                    .collect();
                report.rules.push(RuleReport {
                    rule: "includes",
                    name: String::new(),
                    fires: false,
                    test: config.block.includes_test || config.policy.test_mode,
                    why: format!("no listed name entered ({})", entered.join("; ")),
                });
            }
        }
    }
    let envelope = Envelope {
        client_ip: Some(args.ip),
        helo: args.helo.clone(),
        sender: args.sender.clone().unwrap_or_default(),
        ..Envelope::default()
    };
    let helo = envelope.spf_request(args.ip).helo;
    for domain in &config.block.authorized_by {
        let sender = block::postmaster(domain);
        let request = block::authorized_by_request(args.ip, helo, &sender);
        let (outcome, trace) = evaluate(evaluator, &request, Identity::MailFrom, args.trace).await;
        if let Some(trace) = trace {
            report
                .traces
                .push((format!("authorized_by {domain}"), trace));
        }
        let mut errors = Vec::new();
        let hit = block::authorized_by_verdict(config, args.ip, domain, &outcome, &mut errors);
        let why = match (&hit, errors.first()) {
            (Some(hit), _) => hit.why.clone(),
            (None, Some(line)) => line.text.clone(),
            (None, None) => format!("check_host({}, {domain}) = {}", args.ip, outcome.result),
        };
        report.rules.push(RuleReport {
            rule: "authorized_by",
            name: domain.to_string(),
            fires: hit.is_some(),
            test: config.block.authorized_by_test || config.policy.test_mode,
            why,
        });
        if let Some(hit) = hit
            && !hit.test
            && first_enforced.is_none()
        {
            first_enforced = Some(hit);
        }
    }
    report.reply = first_enforced.map(|hit| {
        let reply = block::reply(config, &hit);
        match reply.enhanced {
            Some(e) => format!("{} {e} {}", reply.code, reply.text),
            None => format!("{} {}", reply.code, reply.text),
        }
    });
    report
}

/// The line of `check --format json` for the block rules.
#[derive(Serialize)]
struct JsonBlock<'a> {
    block: &'a BlockReport,
}

fn write_block(out: &mut impl Write, report: &BlockReport) -> std::io::Result<()> {
    for (name, trace) in &report.traces {
        writeln!(out, "# block {name} trace")?;
        for step in trace {
            writeln!(out, "  {}", trace_line(step))?;
        }
    }
    for rule in &report.rules {
        let verdict = match (rule.fires, rule.test) {
            (true, false) => "fires",
            (true, true) => "fires (test mode: would block)",
            (false, _) => "does not fire",
        };
        let name = if rule.name.is_empty() {
            String::new()
        } else {
            format!(" {}", rule.name)
        };
        writeln!(out, "block {}{name}: {verdict}", rule.rule)?;
        writeln!(out, "  {}", rule.why)?;
    }
    match &report.reply {
        Some(reply) => writeln!(out, "block: the milter answers {reply}"),
        None => writeln!(out, "block: no rule refuses the message"),
    }
}

async fn evaluate<L: Lookup>(
    evaluator: &Evaluator<L>,
    request: &Request<'_>,
    identity: Identity,
    traced: bool,
) -> (SpfOutcome, Option<Vec<TraceStep>>) {
    if traced {
        let mut trace = Vec::new();
        let outcome = evaluator.check_traced(request, identity, &mut trace).await;
        (outcome, Some(trace))
    } else {
        (evaluator.check(request, identity).await, None)
    }
}

fn trace_line(step: &TraceStep) -> String {
    format!("{}{}", "  ".repeat(step.depth), step.text)
}

fn write_text(
    out: &mut impl Write,
    outcome: &SpfOutcome,
    trace: Option<&[TraceStep]>,
) -> std::io::Result<()> {
    if let Some(trace) = trace {
        writeln!(out, "# {} trace", outcome.identity)?;
        for step in trace {
            writeln!(out, "  {}", trace_line(step))?;
        }
    }
    writeln!(
        out,
        "{}: {} (domain {}, sender {})",
        outcome.identity, outcome.result, outcome.domain, outcome.sender
    )?;
    if let Some(mechanism) = &outcome.mechanism {
        writeln!(out, "  mechanism: {mechanism}")?;
    }
    if let Some(problem) = &outcome.problem {
        writeln!(out, "  problem: {problem}")?;
    }
    if let Some(explanation) = &outcome.explanation {
        writeln!(out, "  explanation: {explanation}")?;
    }
    if !outcome.via.is_empty() {
        writeln!(out, "  entered: {}", outcome.via.join(", "))?;
    }
    writeln!(
        out,
        "  dns lookups: {}, void lookups: {}",
        outcome.dns_lookups, outcome.void_lookups
    )
}

async fn expand(args: ExpandArgs) -> Result<(), String> {
    if args.action.trim().is_empty() || args.action.contains(['\n', '\r']) {
        return Err("--action must be a one-line Postfix access action, e.g. REJECT".into());
    }
    let lookup = resolver(&args.dns)?;
    let flat = flatten(&lookup, &args.domain).await;
    let mut stdout = std::io::stdout().lock();
    write_flattened(&mut stdout, &args, &flat).map_err(|e| e.to_string())
}

fn write_flattened(
    out: &mut impl Write,
    args: &ExpandArgs,
    flat: &Flattened,
) -> std::io::Result<()> {
    match args.format {
        ExpandFormat::List => {
            for warning in &flat.warnings {
                eprintln!("warning: {warning}");
            }
            for net in &flat.networks {
                writeln!(out, "{net}")?;
            }
        }
        ExpandFormat::PostfixCidr => {
            writeln!(
                out,
                "# Networks authorized by the SPF policy of {}",
                args.domain
            )?;
            writeln!(
                out,
                "# generated by spfmilter expand; use as check_client_access cidr:/path"
            )?;
            for warning in &flat.warnings {
                writeln!(out, "# warning: {warning}")?;
                eprintln!("warning: {warning}");
            }
            for net in &flat.networks {
                writeln!(out, "{net} {}", args.action)?;
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ config

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Read a configuration file and report every problem as
    /// FILE:LINE: error|warning: message. Exit status 1 if there is an
    /// error, 0 otherwise.
    Check(ConfigCheckArgs),
    /// Print a policyd-spf.conf as the equivalent commented spfmilter.toml.
    Convert(ConfigConvertArgs),
}

/// Which configuration to read, and the command line's settings on top of
/// it (the daemon takes the same options).
#[derive(Debug, Default, clap::Args)]
struct ConfigArgs {
    /// Native configuration file (TOML). Default: /etc/spfmilter/spfmilter.toml
    /// if it exists, else the built-in defaults.
    #[arg(long, value_name = "PATH", conflicts_with = "policyd_conf")]
    config: Option<std::path::PathBuf>,
    /// A policyd-spf.conf (policyd-spf or pyspf-milter), read unchanged.
    #[arg(long, value_name = "PATH")]
    policyd_conf: Option<std::path::PathBuf>,
    /// Listen here instead (inet:HOST:PORT, inet6:[ADDRESS]:PORT, unix:/PATH).
    #[arg(long, value_name = "SOCKET")]
    socket: Option<spfmilter::config::SocketSpec>,
    /// DNS server to ask, HOST or HOST:PORT (repeatable); replaces the
    /// file's list.
    #[arg(long = "nameserver", value_name = "HOST:PORT", value_parser = parse_nameserver)]
    nameservers: Vec<SocketAddr>,
    /// Log level, -1 to 5 (policyd-spf's debugLevel).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(i8).range(-1..=5))]
    log_level: Option<i8>,
    /// Log to syslog or stderr.
    #[arg(long, value_enum)]
    log_target: Option<LogTargetArg>,
    /// Write the process id to this file.
    #[arg(long, value_name = "PATH")]
    pid_file: Option<std::path::PathBuf>,
    /// Switch to this user[:group].
    #[arg(long, value_name = "USER[:GROUP]")]
    user: Option<spfmilter::config::UserSpec>,
    /// Reject and defer nothing (policyd-spf's TestOnly = 0).
    #[arg(long)]
    test_mode: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogTargetArg {
    Syslog,
    Stderr,
}

impl ConfigArgs {
    fn source(&self) -> spfmilter::config::Source {
        use spfmilter::config::Source;
        match (&self.config, &self.policyd_conf) {
            (Some(p), _) => Source::Toml(p.clone()),
            (None, Some(p)) => Source::Legacy(p.clone()),
            (None, None) => Source::Default,
        }
    }

    fn overrides(&self) -> spfmilter::config::Overrides {
        use spfmilter::config::{LogLevel, LogTarget, Overrides};
        Overrides {
            socket: self.socket.clone(),
            nameservers: self.nameservers.clone(),
            log_target: self.log_target.map(|t| match t {
                LogTargetArg::Syslog => LogTarget::Syslog,
                LogTargetArg::Stderr => LogTarget::Stderr,
            }),
            log_level: self.log_level.and_then(|n| LogLevel::from_int(n.into())),
            pid_file: self.pid_file.clone(),
            user: self.user.clone(),
            test_mode: self.test_mode.then_some(true),
        }
    }
}

#[derive(Debug, clap::Args)]
struct ConfigCheckArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print the effective configuration (defaults filled in, command-line
    /// settings applied) as TOML on standard output.
    #[arg(long)]
    show: bool,
}

#[derive(Debug, clap::Args)]
struct ConfigConvertArgs {
    /// The policyd-spf.conf to convert.
    #[arg(value_name = "POLICYD_SPF_CONF")]
    file: std::path::PathBuf,
}

/// `spfmilter run`: load the configuration (errors stop the start, with
/// FILE:LINE messages; warnings are printed), then serve until SIGTERM.
fn run_main(args: &ConfigArgs) -> ExitCode {
    use spfmilter::config::Config;
    let loaded = match Config::load(&args.source()) {
        Ok(loaded) => loaded,
        Err(e) => {
            print_diagnostics(&e.diagnostics);
            return setup_error("configuration refused, not starting");
        }
    };
    print_diagnostics(&loaded.warnings);
    let config = std::sync::Arc::new(loaded.config.with_overrides(&args.overrides()));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return setup_error(&format!("cannot start the async runtime: {e}")),
    };
    let served = runtime.block_on(spfmilter::milter::run(
        config,
        args.source(),
        args.overrides(),
    ));
    // Sessions still open after the stop's grace are dropped with the
    // runtime; nothing may hold the exit up (dropping the runtime would
    // wait for its blocking threads without end).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => setup_error(&e),
    }
}

fn config_main(cmd: ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Check(args) => config_check(&args),
        ConfigCommand::Convert(args) => config_convert(&args),
    }
}

fn print_diagnostics(diagnostics: &[spfmilter::config::Diagnostic]) {
    let mut stderr = std::io::stderr().lock();
    for d in diagnostics {
        let _ = writeln!(stderr, "{d}");
    }
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn config_check(args: &ConfigCheckArgs) -> ExitCode {
    use spfmilter::config::Config;
    let source = args.config.source();
    match Config::load(&source) {
        Ok(loaded) => {
            print_diagnostics(&loaded.warnings);
            let name = loaded.path.as_ref().map_or_else(
                || "built-in defaults".to_owned(),
                |p| p.display().to_string(),
            );
            eprintln!(
                "{name}: configuration OK ({})",
                plural(loaded.warnings.len(), "warning")
            );
            if args.show {
                let config = loaded.config.with_overrides(&args.config.overrides());
                print!("{}", config.to_toml());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_diagnostics(&e.diagnostics);
            let errors = e.diagnostics.iter().filter(|d| d.is_error()).count();
            let file = e
                .diagnostics
                .first()
                .map_or_else(String::new, |d| format!("{}: ", d.file));
            eprintln!(
                "{file}configuration refused: {}, {}",
                plural(errors, "error"),
                plural(e.diagnostics.len() - errors, "warning")
            );
            ExitCode::from(1)
        }
    }
}

fn config_convert(args: &ConfigConvertArgs) -> ExitCode {
    use spfmilter::config::Config;
    match Config::load_legacy(&args.file) {
        Ok(loaded) => {
            print_diagnostics(&loaded.warnings);
            let mut out = format!(
                "# Converted from {} by `spfmilter config convert`.\n",
                args.file.display()
            );
            if !loaded.warnings.is_empty() {
                out.push_str("# Warnings met while reading it:\n");
                for w in &loaded.warnings {
                    let line = w.line.map(|l| format!("line {l}: ")).unwrap_or_default();
                    out.push_str(&format!("#   {line}{}\n", w.message.replace('\n', " ")));
                }
            }
            out.push_str("#\n");
            out.push_str(&loaded.config.to_toml());
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_diagnostics(&e.diagnostics);
            let errors = e.diagnostics.iter().filter(|d| d.is_error()).count();
            eprintln!(
                "{}: not converted: {}",
                args.file.display(),
                plural(errors, "error")
            );
            ExitCode::from(1)
        }
    }
}
