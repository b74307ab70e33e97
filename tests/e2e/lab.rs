//! The lab: DNS, the SPF milter under test, OpenDMARC and Postfix, in one
//! temporary directory, started in that order and stopped in the reverse
//! one — by [`Lab::shutdown`], or by `Drop` if the test panics. When it is
//! dropped during a panic it prints everything a failure needs: the SMTP
//! transcripts are in files, the logs (maillog, syslog of the milters, NSD,
//! daemons' stderr) and the DNS queries are printed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::dns::{Dns, DnsPorts, QueryLog, Zone};
use super::milter::{MilterUnderTest, PolicydConf, RunningMilter, SpfHeader, spf_header};
use super::opendkim::{OpenDkim, OpenDkimConfig};
use super::opendmarc::{OpenDmarc, OpenDmarcConfig};
use super::postfix::{MYHOSTNAME, Postfix, PostfixConfig};
use super::process::{TempDir, other_processes, read_lossy, signal, wait_until};
use super::smtp::{Mail, Message, Transcript};
use super::syslog;
use super::zones::standard_zones;

/// Port of the SPF milter under test.
pub const MILTER_PORT: u16 = 8891;

/// What to start.
#[derive(Debug, Clone)]
pub struct LabConfig {
    pub zones: Vec<Zone>,
    pub dns_ports: DnsPorts,
    /// The SPF milter and its configuration; listed first in
    /// `smtpd_milters`.
    pub milter: Option<(MilterUnderTest, PolicydConf)>,
    pub milter_port: u16,
    /// Per-milter settings appended to the SPF milter's `smtpd_milters`
    /// entry, e.g. `default_action=accept`.
    pub milter_settings: Vec<String>,
    /// OpenDKIM (verify mode), listed after the SPF milter and before
    /// OpenDMARC (see `e2e/opendkim.rs` for why not before the SPF milter).
    pub opendkim: Option<OpenDkimConfig>,
    /// OpenDMARC, listed after the SPF milter.
    pub opendmarc: Option<OpenDmarcConfig>,
    /// Postfix; `milters` is filled from the two above if left empty.
    pub postfix: PostfixConfig,
}

impl LabConfig {
    /// The standard zones, `milter` with `conf`, OpenDMARC, and Postfix
    /// with `milter_default_action = tempfail`.
    pub fn new(milter: &MilterUnderTest, conf: PolicydConf) -> Self {
        Self {
            zones: standard_zones(),
            dns_ports: DnsPorts::default(),
            milter: Some((milter.clone(), conf)),
            milter_port: MILTER_PORT,
            milter_settings: Vec::new(),
            opendkim: None,
            opendmarc: Some(OpenDmarcConfig::default()),
            postfix: PostfixConfig::default(),
        }
    }

    pub fn milter_default_action(mut self, action: &str) -> Self {
        self.postfix.milter_default_action = action.to_string();
        self
    }
}

/// A running lab.
pub struct Lab {
    dir: TempDir,
    pub dns: Option<Dns>,
    pub milter_under_test: Option<MilterUnderTest>,
    pub policyd_conf: Option<PolicydConf>,
    milter_port: u16,
    pub milter: Option<RunningMilter>,
    pub opendkim: Option<OpenDkim>,
    pub opendmarc: Option<OpenDmarc>,
    pub postfix: Option<Postfix>,
    sent: usize,
    shut_down: bool,
}

impl Lab {
    /// Starts everything under a new directory in `scratch`.
    pub fn start(scratch: &Path, mut config: LabConfig) -> Result<Self, String> {
        let dir = TempDir::new(scratch, "lab-").map_err(|e| format!("lab directory: {e}"))?;
        let mut lab = Self {
            dir,
            dns: None,
            milter_under_test: config.milter.as_ref().map(|(m, _)| m.clone()),
            policyd_conf: config.milter.as_ref().map(|(_, c)| c.clone()),
            milter_port: config.milter_port,
            milter: None,
            opendkim: None,
            opendmarc: None,
            postfix: None,
            sent: 0,
            shut_down: false,
        };
        let root = lab.dir.path().to_path_buf();
        let t = Instant::now();
        lab.dns = Some(Dns::start(
            &root.join("dns"),
            &config.zones,
            config.dns_ports,
        )?);
        eprintln!("e2e: dns up after {:?}", t.elapsed());
        if let Some((milter, conf)) = &config.milter {
            lab.milter = Some(milter.start(&root.join("milter"), config.milter_port, conf)?);
            eprintln!("e2e: {} up after {:?}", milter.name, t.elapsed());
        }
        if let Some(dkim) = &config.opendkim {
            lab.opendkim = Some(OpenDkim::start(&root.join("opendkim"), dkim)?);
            eprintln!("e2e: opendkim up after {:?}", t.elapsed());
        }
        if let Some(dmarc) = &config.opendmarc {
            lab.opendmarc = Some(OpenDmarc::start(&root.join("opendmarc"), dmarc)?);
            eprintln!("e2e: opendmarc up after {:?}", t.elapsed());
        }
        if config.postfix.milters.is_empty() {
            if config.milter.is_some() {
                let socket = format!("inet:127.0.0.1:{}", config.milter_port);
                config
                    .postfix
                    .milters
                    .push(if config.milter_settings.is_empty() {
                        socket
                    } else {
                        format!("{{ {socket}, {} }}", config.milter_settings.join(", "))
                    });
            }
            if let Some(dkim) = &config.opendkim {
                config
                    .postfix
                    .milters
                    .push(format!("inet:127.0.0.1:{}", dkim.port));
            }
            if let Some(dmarc) = &config.opendmarc {
                config
                    .postfix
                    .milters
                    .push(format!("inet:127.0.0.1:{}", dmarc.port));
            }
        }
        lab.postfix = Some(Postfix::start(&root.join("postfix"), &config.postfix)?);
        eprintln!("e2e: postfix up after {:?}", t.elapsed());
        Ok(lab)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn postfix(&self) -> &Postfix {
        self.postfix.as_ref().expect("postfix is running")
    }

    /// Sends `mail` to Postfix; the transcript is kept in `smtp-N.txt`.
    pub fn send(&mut self, mail: &Mail) -> Transcript {
        self.sent += 1;
        let file = self.dir.path().join(format!("smtp-{}.txt", self.sent));
        let port = self.postfix().port;
        mail.send(port, &file)
    }

    /// Sends `mail`, asserts that it was accepted, and returns the stored
    /// message with the milters' headers.
    pub fn deliver(&mut self, mail: &Mail) -> (Transcript, Message) {
        let transcript = self.send(mail);
        let Some(queue_id) = transcript.queue_id() else {
            panic!("message from <{}> not accepted:\n{transcript}", mail.from);
        };
        let message = self
            .postfix()
            .message(&queue_id)
            .unwrap_or_else(|e| panic!("cannot read message {queue_id}: {e}"));
        (transcript, message)
    }

    /// The SPF result the milter under test left in `message`, in the
    /// header it writes with its configuration.
    pub fn spf_header(&self, message: &Message) -> Option<SpfHeader> {
        let milter = self.milter_under_test.as_ref()?;
        let kind = milter.trace_header(self.policyd_conf.as_ref()?)?;
        spf_header(message, kind)
    }

    /// OpenDMARC's verdict in `message` (`pass`, `fail`, `none`...).
    pub fn dmarc_result(&self, message: &Message) -> Option<String> {
        message.auth_result(MYHOSTNAME, "dmarc")
    }

    /// Kills the SPF milter with SIGKILL, as a crash would.
    pub fn kill_milter(&mut self) -> Result<(), String> {
        match self.milter.take() {
            Some(mut m) => m.daemon.kill(),
            None => Ok(()),
        }
    }

    /// Stops the SPF milter (TERM) and starts it again with `conf`.
    pub fn restart_milter(&mut self, conf: PolicydConf) -> Result<(), String> {
        if let Some(mut m) = self.milter.take() {
            m.daemon.stop()?;
        }
        let milter = self
            .milter_under_test
            .clone()
            .ok_or("no milter under test in this lab")?;
        self.milter =
            Some(milter.start(&self.dir.path().join("milter"), self.milter_port, &conf)?);
        self.policyd_conf = Some(conf);
        Ok(())
    }

    /// What the SPF milter logged: its syslog lines (tagged with its
    /// name) and its stderr.
    pub fn milter_log(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(milter) = &self.milter_under_test {
            let tag = format!("{}[", milter.name);
            lines.extend(syslog::all().into_iter().filter(|l| l.starts_with(&tag)));
        }
        if let Some(m) = &self.milter {
            lines.extend(read_lossy(&m.log).lines().map(str::to_string));
        }
        lines
    }

    /// Waits until a line of [`Self::milter_log`] contains `needle`.
    pub fn wait_milter_log(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let mut found = None;
        wait_until(
            timeout,
            &format!("milter log line containing {needle:?}"),
            || {
                found = self.milter_log().into_iter().find(|l| l.contains(needle));
                found.is_some()
            },
        )?;
        Ok(found.unwrap_or_default())
    }

    /// DNS queries seen so far.
    pub fn dns_queries(&self) -> Vec<QueryLog> {
        self.dns.as_ref().map(Dns::queries).unwrap_or_default()
    }

    /// Everything worth reading when a test fails.
    pub fn diagnostics(&self) -> String {
        let mut s = format!("===== lab {}\n", self.dir.path().display());
        if let Some(p) = &self.postfix {
            s += &format!("----- maillog\n{}", p.maillog());
        }
        s += &format!("----- syslog (milters)\n{}\n", syslog::all().join("\n"));
        if let Some(m) = &self.milter {
            s += &format!("----- {} stderr\n{}", m.log.display(), read_lossy(&m.log));
        }
        let dkim_log = self.dir.path().join("opendkim/opendkim.stderr");
        s += &format!("----- opendkim stderr\n{}", read_lossy(&dkim_log));
        let dmarc_log = self.dir.path().join("opendmarc/opendmarc.stderr");
        s += &format!("----- opendmarc stderr\n{}", read_lossy(&dmarc_log));
        if let Some(d) = &self.dns {
            s += &format!("----- nsd\n{}", d.log());
            s += "----- dns queries (name type tcp dropped)\n";
            for q in d.queries() {
                s += &format!("{} {} {} {}\n", q.name, q.qtype, q.tcp, q.dropped);
            }
        }
        for n in 1..=self.sent {
            let f: PathBuf = self.dir.path().join(format!("smtp-{n}.txt"));
            s += &format!("----- {}\n{}", f.display(), read_lossy(&f));
        }
        s
    }

    /// Stops everything and checks that no process is left in the
    /// namespace.
    pub fn shutdown(mut self) -> Result<(), String> {
        if std::env::var_os("SPFMILTER_E2E_VERBOSE").is_some() {
            eprintln!("{}", self.diagnostics());
        }
        self.stop_all()
    }

    fn stop_all(&mut self) -> Result<(), String> {
        if self.shut_down {
            return Ok(());
        }
        self.shut_down = true;
        let t = Instant::now();
        let mut errors = Vec::new();
        if let Some(mut p) = self.postfix.take()
            && let Err(e) = p.stop()
        {
            errors.push(format!("postfix: {e}"));
        }
        // libmilter daemons take seconds to stop: signal both, then wait.
        if let Some(m) = &mut self.milter {
            m.daemon.begin_stop();
        }
        if let Some(d) = &mut self.opendkim {
            d.daemon().begin_stop();
        }
        if let Some(d) = &mut self.opendmarc {
            d.daemon().begin_stop();
        }
        if let Some(mut m) = self.milter.take()
            && let Err(e) = m.daemon.stop()
        {
            errors.push(e);
        }
        if let Some(mut d) = self.opendkim.take()
            && let Err(e) = d.daemon().stop()
        {
            errors.push(e);
        }
        if let Some(mut d) = self.opendmarc.take()
            && let Err(e) = d.daemon().stop()
        {
            errors.push(e);
        }
        if let Some(mut d) = self.dns.take()
            && let Err(e) = d.stop()
        {
            errors.push(format!("dns: {e}"));
        }
        if wait_until(Duration::from_secs(5), "all processes to exit", || {
            other_processes().is_empty()
        })
        .is_err()
        {
            let left = other_processes();
            for (pid, _) in &left {
                let _ = signal(*pid, "KILL");
            }
            errors.push(format!("processes left after the lab stopped: {left:?}"));
        }
        eprintln!("e2e: lab stopped in {:?}", t.elapsed());
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let verbose = std::env::var_os("SPFMILTER_E2E_VERBOSE").is_some();
        if std::thread::panicking() || (verbose && !self.shut_down) {
            eprintln!("{}", self.diagnostics());
        }
        if let Err(e) = self.stop_all() {
            eprintln!("e2e: lab shutdown: {e}");
        }
    }
}
