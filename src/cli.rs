//! The command line: thin wrappers over the library.
//!
//! Exit status: 0 when the command ran (whatever the SPF result), 1 for a
//! setup error (e.g. no usable resolver), 2 for a usage error.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use spfmilter::dns::cache::CacheOptions;
use spfmilter::dns::hickory::parse_nameserver;
use spfmilter::dns::{CachingLookup, HickoryLookup, Lookup, ResolverOptions};
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
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Evaluate SPF for a connection, as the milter would, and explain why.
    Check(CheckArgs),
    /// Flatten a domain's SPF policy into the networks it authorizes.
    Expand(ExpandArgs),
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return setup_error(&format!("cannot start the async runtime: {e}")),
    };
    let result = match cli.command {
        Command::Check(args) => runtime.block_on(check(args)),
        Command::Expand(args) => runtime.block_on(expand(args)),
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
    let evaluator = Evaluator::new(resolver(&args.dns)?).with_limits(limits);
    let request = Request {
        ip: args.ip,
        helo: &args.helo,
        sender: args.sender.as_deref().unwrap_or(""),
        receiver: args.receiver.as_deref(),
    };
    let mut stdout = std::io::stdout().lock();
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
    }
    Ok(())
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
