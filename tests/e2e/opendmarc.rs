//! OpenDMARC as the milter after the SPF milter: it reads the SPF result
//! the SPF milter left in the message and adds `Authentication-Results:
//! mx.test.example; dmarc=pass|fail ...`. No reports, no history, no SPF
//! checks of its own; failures are marked, not rejected (unless
//! `reject_failures`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::postfix::MYHOSTNAME;
use super::process::{Daemon, make_dir, read_lossy, tcp_listening, wait_until, write_file};

/// Settings of the instance.
#[derive(Debug, Clone)]
pub struct OpenDmarcConfig {
    pub port: u16,
    /// `AuthservID`: the authserv-id of its own header.
    pub authserv_id: String,
    /// `TrustedAuthservIDs`: whose Authentication-Results it believes.
    pub trusted_authserv_ids: String,
    /// `RejectFailures`.
    pub reject_failures: bool,
    /// More `Key Value` lines.
    pub extra: Vec<(String, String)>,
}

impl Default for OpenDmarcConfig {
    fn default() -> Self {
        Self {
            port: 8893,
            authserv_id: MYHOSTNAME.to_string(),
            trusted_authserv_ids: MYHOSTNAME.to_string(),
            reject_failures: false,
            extra: Vec::new(),
        }
    }
}

/// A running OpenDMARC (foreground, `-f`), stopped by PID when dropped.
pub struct OpenDmarc {
    pub port: u16,
    daemon: Daemon,
}

impl OpenDmarc {
    pub fn start(dir: &Path, config: &OpenDmarcConfig) -> Result<Self, String> {
        let dir = make_dir(dir)?;
        let conf = dir.join("opendmarc.conf");
        let mut text = format!(
            "Socket inet:{}@127.0.0.1\n\
             AuthservID {}\n\
             TrustedAuthservIDs {}\n\
             RejectFailures {}\n\
             FailureReports false\n\
             SPFSelfValidate false\n\
             SPFIgnoreResults false\n\
             RequiredHeaders false\n\
             Syslog true\n\
             SyslogFacility mail\n\
             UserID opendmarc\n",
            config.port, config.authserv_id, config.trusted_authserv_ids, config.reject_failures
        );
        for (k, v) in &config.extra {
            text.push_str(&format!("{k} {v}\n"));
        }
        write_file(&conf, &text)?;
        let log = dir.join("opendmarc.stderr");
        let mut daemon = Daemon::spawn(
            "opendmarc",
            Command::new("opendmarc").arg("-f").arg("-c").arg(&conf),
            &log,
            // libmilter takes ~4.5 s to stop on TERM.
            Duration::from_secs(8),
        )?;
        let port = config.port;
        let listening = wait_until(Duration::from_secs(10), "opendmarc to listen", || {
            tcp_listening([127, 0, 0, 1], port) || !daemon.is_running()
        });
        if listening.is_err() || !daemon.is_running() {
            return Err(format!("opendmarc did not start:\n{}", read_lossy(&log)));
        }
        Ok(Self { port, daemon })
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}
