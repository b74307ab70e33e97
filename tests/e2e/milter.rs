//! The SPF milter under test, started from a command line and a
//! `policyd-spf.conf` written by the test, listening on
//! `inet:127.0.0.1:PORT`. Today that is Debian's pyspf-milter (the
//! reference); `spfmilter run` drops in through [`MilterUnderTest::spfmilter`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::postfix::MYHOSTNAME;
use super::process::{Daemon, make_dir, read_lossy, tcp_listening, wait_until, write_file};
use super::smtp::{Message, authentication_results_parts, unfold};

/// Which header carries the SPF result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceHeader {
    /// `Received-SPF: Pass (...) identity=mailfrom; ...`
    ReceivedSpf,
    /// `Authentication-Results: AUTHSERV-ID; spf=pass (...) smtp.mailfrom=DOMAIN ...`
    AuthenticationResults,
}

/// How to run the milter.
#[derive(Debug, Clone)]
pub enum MilterKind {
    /// `/usr/bin/pyspf-milter CONF` (spf-engine 3.0.4 in Debian 12). The
    /// socket, pid file and user are keys of CONF. It always writes
    /// Authentication-Results (it forces `Header_Type = AR`).
    PyspfMilter,
    /// `BINARY run --socket inet:127.0.0.1:PORT --policyd-conf CONF`.
    Spfmilter { binary: PathBuf },
}

/// The SPF milter a scenario runs against.
#[derive(Debug, Clone)]
pub struct MilterUnderTest {
    pub name: &'static str,
    pub kind: MilterKind,
    /// TERM, then KILL after this long.
    pub stop_grace: Duration,
    /// Give this milter the file exactly as the reference gets it, with
    /// the reference's process keys `Socket`, `PidFile` and `UserID` (the
    /// differential test: one unchanged file for both). Always the case
    /// for the reference itself.
    pub reference_file: bool,
    /// spfmilter only: start with this native configuration (TOML, `run
    /// --config`) instead of the `policyd-spf.conf`, for settings only the
    /// native format has (e.g. `[milter] max_connections`). The
    /// `policyd-spf.conf` then only tells the harness which header to read.
    pub native_config: Option<String>,
}

impl MilterUnderTest {
    /// Debian's pyspf-milter, the reference.
    pub fn pyspf_milter() -> Self {
        Self {
            name: "pyspf-milter",
            kind: MilterKind::PyspfMilter,
            // libmilter (python3-milter) takes ~4 s to stop on TERM.
            stop_grace: Duration::from_secs(8),
            reference_file: true,
            native_config: None,
        }
    }

    /// This crate's `spfmilter run`.
    pub fn spfmilter() -> Self {
        Self {
            name: "spfmilter",
            kind: MilterKind::Spfmilter {
                binary: PathBuf::from(env!("CARGO_BIN_EXE_spfmilter")),
            },
            stop_grace: Duration::from_secs(5),
            reference_file: false,
            native_config: None,
        }
    }

    /// This milter, started with `toml` as its native configuration.
    pub fn with_native_config(mut self, toml: &str) -> Self {
        self.native_config = Some(toml.to_string());
        self
    }

    /// The header this milter writes its result in with `conf`, if any.
    pub fn trace_header(&self, conf: &PolicydConf) -> Option<TraceHeader> {
        match self.kind {
            MilterKind::PyspfMilter => match conf.get("Header_Type") {
                Some("None") => None,
                _ => Some(TraceHeader::AuthenticationResults),
            },
            MilterKind::Spfmilter { .. } => match conf.get("Header_Type").unwrap_or("SPF") {
                "None" => None,
                "AR" => Some(TraceHeader::AuthenticationResults),
                _ => Some(TraceHeader::ReceivedSpf),
            },
        }
    }

    /// Writes the configuration under `dir` and starts the milter on
    /// 127.0.0.1:`port`; waits until it listens.
    pub fn start(
        &self,
        dir: &Path,
        port: u16,
        conf: &PolicydConf,
    ) -> Result<RunningMilter, String> {
        let dir = make_dir(dir)?;
        let conf_path = dir.join("policyd-spf.conf");
        let log = dir.join(format!("{}.stderr", self.name));
        let pid_file = dir.join("pyspf-milter.pid");
        // A stale pid file stops pyspf-milter from starting.
        let _ = fs::remove_file(&pid_file);
        let text = if self.reference_file {
            conf.clone()
                .set("Socket", &format!("inet:{port}@127.0.0.1"))
                .set("PidFile", &pid_file.display().to_string())
                .set("UserID", "pyspf-milter")
                .text()
        } else {
            conf.text()
        };
        write_file(&conf_path, &text)?;
        let mut cmd = match &self.kind {
            MilterKind::PyspfMilter => {
                let mut cmd = Command::new("/usr/bin/pyspf-milter");
                cmd.arg(&conf_path);
                cmd
            }
            MilterKind::Spfmilter { binary } => {
                // --socket: the file's Socket (if any) is the reference's.
                let mut cmd = Command::new(binary);
                cmd.arg("run")
                    .args(["--socket", &format!("inet:127.0.0.1:{port}")]);
                match &self.native_config {
                    Some(toml) => {
                        let toml_path = dir.join("spfmilter.toml");
                        write_file(&toml_path, toml)?;
                        cmd.arg("--config").arg(toml_path);
                    }
                    None => {
                        cmd.arg("--policyd-conf").arg(&conf_path);
                    }
                }
                cmd
            }
        };
        let mut daemon = Daemon::spawn(self.name, &mut cmd, &log, self.stop_grace)?;
        let started = wait_until(Duration::from_secs(15), "the milter to listen", || {
            tcp_listening([127, 0, 0, 1], port) || !daemon.is_running()
        });
        if started.is_err() || !daemon.is_running() {
            let _ = daemon.stop();
            return Err(format!(
                "{} did not start ({cmd:?}):\n{}",
                self.name,
                read_lossy(&log)
            ));
        }
        Ok(RunningMilter {
            port,
            conf_path,
            log,
            daemon,
        })
    }
}

/// A started milter, stopped by PID when dropped.
pub struct RunningMilter {
    pub port: u16,
    pub conf_path: PathBuf,
    pub log: PathBuf,
    pub daemon: Daemon,
}

/// A `policyd-spf.conf`, as ordered `Key = Value` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicydConf {
    pub entries: Vec<(String, String)>,
}

impl PolicydConf {
    /// The lab's base configuration, the reference's defaults except:
    /// * `debugLevel = 2`: per-identity result lines in the log;
    /// * `Authserv_Id = mx.test.example` (Postfix `myhostname`, the `j`
    ///   macro): the reference's default is the machine's host name
    ///   (`socket.gethostname()`), which OpenDMARC does not trust;
    /// * `Lookup_Time = 4`, so a DNS time-out is a TempError in 4 s.
    ///
    /// `HELO_reject` and `Mail_From_reject` are left at their default,
    /// `Fail`, and `TestOnly` at 1 (normal mode).
    pub fn base() -> Self {
        Self::default()
            .set("debugLevel", "2")
            .set("TestOnly", "1")
            .set("Authserv_Id", MYHOSTNAME)
            .set("Lookup_Time", "4")
    }

    /// Header only: nothing rejected, a header for every result.
    pub fn header_only() -> Self {
        Self::base()
            .set("HELO_reject", "False")
            .set("Mail_From_reject", "False")
    }

    /// Rejecting SPF fail on both identities (the reference's defaults).
    pub fn reject_fail() -> Self {
        Self::base()
            .set("HELO_reject", "Fail")
            .set("Mail_From_reject", "Fail")
    }

    /// Sets `key` (replacing an earlier value).
    pub fn set(mut self, key: &str, value: &str) -> Self {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => self.entries.push((key.to_string(), value.to_string())),
        }
        self
    }

    /// Removes `key`.
    pub fn unset(mut self, key: &str) -> Self {
        self.entries.retain(|(k, _)| k != key);
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        let mut s = String::from("# written by the spfmilter e2e harness\n");
        for (k, v) in &self.entries {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s
    }
}

/// The SPF result a milter left in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfHeader {
    pub header: TraceHeader,
    /// Lower-case: `pass`, `fail`, `softfail`, `neutral`, `none`,
    /// `permerror`, `temperror`.
    pub result: String,
    /// `mailfrom` or `helo`.
    pub identity: String,
    /// The authserv-id (Authentication-Results only).
    pub authserv_id: Option<String>,
    /// 0 = the topmost header field of the message.
    pub position: usize,
    /// The unfolded value.
    pub value: String,
}

/// The topmost SPF trace header of the given kind: a `Received-SPF`, or an
/// `Authentication-Results` with an `spf=` result (of any authserv-id).
pub fn spf_header(message: &Message, kind: TraceHeader) -> Option<SpfHeader> {
    message
        .headers
        .iter()
        .enumerate()
        .find_map(|(position, (name, value))| {
            let value = unfold(value);
            match kind {
                TraceHeader::ReceivedSpf if name.eq_ignore_ascii_case("Received-SPF") => {
                    let result = value.split_whitespace().next()?.to_ascii_lowercase();
                    let identity = value
                        .split("identity=")
                        .nth(1)
                        .and_then(|s| s.split([';', ' ']).next())
                        .unwrap_or("")
                        .to_string();
                    Some(SpfHeader {
                        header: kind,
                        result,
                        identity,
                        authserv_id: None,
                        position,
                        value,
                    })
                }
                TraceHeader::AuthenticationResults
                    if name.eq_ignore_ascii_case("Authentication-Results") =>
                {
                    let parts = authentication_results_parts(&value);
                    let authserv_id = parts.first()?.to_string();
                    let spf = *parts[1..].iter().find(|r| r.starts_with("spf="))?;
                    let result = spf["spf=".len()..]
                        .split_whitespace()
                        .next()?
                        .to_ascii_lowercase();
                    let identity = if spf.contains("smtp.mailfrom=") {
                        "mailfrom"
                    } else if spf.contains("smtp.helo=") {
                        "helo"
                    } else {
                        ""
                    };
                    Some(SpfHeader {
                        header: kind,
                        result,
                        identity: identity.to_string(),
                        authserv_id: Some(authserv_id),
                        position,
                        value,
                    })
                }
                _ => None,
            }
        })
}
