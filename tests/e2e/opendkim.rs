//! OpenDKIM in verify mode, between the SPF milter and OpenDMARC: it
//! checks the message's DKIM signatures against the keys in the lab's DNS
//! and adds `Authentication-Results: mx.test.example; dkim=pass
//! header.d=...`, which OpenDMARC reads. The chain admins run is OpenDKIM
//! and OpenDMARC; spfmilter goes first in it.
//!
//! Why not OpenDKIM first: the SPF milter deletes every incoming
//! Authentication-Results that claims the site's authserv-id (the same for
//! all three milters by default), and a header that a milter ahead of it
//! inserted cannot be told from one the client sent: Postfix gives a milter
//! the headers the milters before it inserted, at the top, but not its own
//! `Received:` line that would separate them from the client's (seen here:
//! with OpenDKIM first, its `dkim=pass` was deleted as forged and OpenDMARC
//! said `dmarc=fail`). docs/dmarc-safety.md tells admins the order.
//!
//! Signing is done at test time with dkimpy's command-line tools
//! (`dknewkey`, `dkimsign`, `arcsign`; Debian's python3-dkim): a key made
//! by the test, published in the test zone, never a committed private key.
//! Another implementation signs what OpenDKIM and spfmilter (mail-auth)
//! verify.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::dkim::TestKey;
use super::postfix::MYHOSTNAME;
use super::process::{Daemon, make_dir, read_lossy, tcp_listening, wait_until, write_file};

/// Settings of the instance.
#[derive(Debug, Clone)]
pub struct OpenDkimConfig {
    pub port: u16,
    /// `AuthservID`: the authserv-id of its Authentication-Results.
    pub authserv_id: String,
    /// Empty: the keys are looked up in the lab's DNS. Otherwise the key
    /// records OpenDKIM reads instead of asking any DNS, as (name, TXT
    /// text) (`TestDNSData`, opendkim.conf(5)), for mail sent
    /// concurrently: with a resolver configuration file, OpenDKIM 2.11
    /// (built with VBR, as Debian's is) has libunbound parse that file
    /// again for each message, from the message's thread, and libunbound's
    /// parser is not reentrant — under a few concurrent messages OpenDKIM
    /// exits ("fatal flex scanner internal error--end of buffer missed",
    /// after "can't set VBR resolver configuration"), seen in the soak.
    pub keys: Vec<(String, String)>,
}

impl Default for OpenDkimConfig {
    fn default() -> Self {
        Self {
            port: 8892,
            authserv_id: MYHOSTNAME.to_string(),
            keys: Vec::new(),
        }
    }
}

/// A running OpenDKIM (foreground, `-f`), stopped by PID when dropped.
pub struct OpenDkim {
    pub port: u16,
    daemon: Daemon,
}

impl OpenDkim {
    pub fn start(dir: &Path, config: &OpenDkimConfig) -> Result<Self, String> {
        let dir = make_dir(dir)?;
        let conf = dir.join("opendkim.conf");
        let resolver = if config.keys.is_empty() {
            Self::resolver_settings(&dir)?
        } else {
            let data = dir.join("keys");
            let lines: String = config
                .keys
                .iter()
                .map(|(name, txt)| format!("{name}\t{txt}\n"))
                .collect();
            write_file(&data, &lines)?;
            format!("TestDNSData file:{}\n", data.display())
        };
        let text = format!(
            "Socket inet:{}@127.0.0.1\n\
             Mode v\n\
             AuthservID {}\n\
             {resolver}\
             Syslog yes\n\
             SyslogFacility mail\n\
             SyslogSuccess yes\n\
             LogWhy yes\n\
             SoftwareHeader no\n\
             UserID opendkim\n",
            config.port, config.authserv_id,
        );
        write_file(&conf, &text)?;
        let log = dir.join("opendkim.stderr");
        let mut daemon = Daemon::spawn(
            "opendkim",
            Command::new("opendkim").arg("-f").arg("-x").arg(&conf),
            &log,
            // libmilter takes seconds to stop on TERM, as OpenDMARC does.
            Duration::from_secs(8),
        )?;
        let port = config.port;
        let listening = wait_until(Duration::from_secs(10), "opendkim to listen", || {
            tcp_listening([127, 0, 0, 1], port) || !daemon.is_running()
        });
        if listening.is_err() || !daemon.is_running() {
            return Err(format!("opendkim did not start:\n{}", read_lossy(&log)));
        }
        Ok(Self { port, daemon })
    }

    /// The settings that make OpenDKIM ask the lab's DNS, with the
    /// libunbound configuration file they name, written in `dir`.
    fn resolver_settings(dir: &Path) -> Result<String, String> {
        // OpenDKIM resolves with libunbound, which never queries a
        // loopback address unless told so, and answers NXDOMAIN itself for
        // the special-use `test.` (RFC 6761) unless told otherwise: forward
        // everything to the lab's resolver (127.0.0.1:53, the forwarder in
        // front of NSD). No DNSSEC trust anchor, so the test zones are
        // insecure, not bogus.
        let unbound = dir.join("unbound.conf");
        write_file(
            &unbound,
            "server:\n\
             \tdo-not-query-localhost: no\n\
             \tlocal-zone: \"test.\" nodefault\n\
             forward-zone:\n\
             \tname: \".\"\n\
             \tforward-addr: 127.0.0.1\n",
        )?;
        Ok(format!(
            "Nameservers 127.0.0.1\nResolverConfiguration {}\n",
            unbound.display()
        ))
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

/// A DKIM key made by the test with dkimpy's `dknewkey`: the private key
/// file and the TXT record to publish at `selector._domainkey.domain`.
#[derive(Debug, Clone)]
pub struct DkimKey {
    pub private_key: PathBuf,
    /// The key record's text (`v=DKIM1; k=rsa; p=...`).
    pub record: String,
}

impl DkimKey {
    /// Makes an RSA key named `name` in `dir`.
    pub fn generate(dir: &Path, name: &str) -> Result<Self, String> {
        let dir = make_dir(dir)?;
        let base = dir.join(name);
        let out = Command::new("dknewkey")
            .arg("--ktype")
            .arg("rsa")
            .arg(&base)
            .output()
            .map_err(|e| format!("cannot run dknewkey (python3-dkim): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "dknewkey failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let private_key = base.with_extension("key");
        let dns = read_lossy(&base.with_extension("dns"));
        // The .dns file holds the record's text, possibly with zone-file
        // quoting around it; keep the text only.
        let record: String = dns
            .split('"')
            .enumerate()
            .filter(|(i, _)| dns.contains('"') == (i % 2 == 1))
            .map(|(_, s)| s.trim())
            .collect::<Vec<_>>()
            .join("");
        if !record.contains("p=") {
            return Err(format!("dknewkey wrote no key record: {dns:?}"));
        }
        Ok(Self {
            private_key,
            record,
        })
    }

    /// The same key for signing in Rust (mail-auth, `tests/common/dkim.rs`)
    /// as `domain` with `selector`: no process per message.
    pub fn test_key(&self, domain: &str, selector: &str) -> Result<TestKey, String> {
        let pem = std::fs::read(&self.private_key)
            .map_err(|e| format!("{}: {e}", self.private_key.display()))?;
        let public = self
            .record
            .split(';')
            .find_map(|tag| tag.trim().strip_prefix("p="))
            .ok_or_else(|| format!("no p= in {:?}", self.record))?;
        Ok(TestKey::rsa_from_pem(domain, selector, &pem, public))
    }

    /// `message` (CRLF line ends) signed by `domain` with `selector`
    /// (`dkimsign`, relaxed/simple canonicalization as most signers use).
    pub fn sign(&self, selector: &str, domain: &str, message: &str) -> Result<String, String> {
        self.sign_canonicalized(selector, domain, message, "relaxed", "simple")
    }

    /// [`Self::sign`] with the header and body canonicalizations given
    /// (`simple` or `relaxed`, RFC 6376 §3.4).
    pub fn sign_canonicalized(
        &self,
        selector: &str,
        domain: &str,
        message: &str,
        header: &str,
        body: &str,
    ) -> Result<String, String> {
        run_filter(
            Command::new("dkimsign")
                .arg(selector)
                .arg(domain)
                .arg(&self.private_key)
                .arg("--hcanon")
                .arg(header)
                .arg("--bcanon")
                .arg(body),
            message,
        )
    }
}

/// Runs `cmd` with `input` on stdin and returns its stdout.
fn run_filter(cmd: &mut Command, input: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{cmd:?}: write: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{cmd:?}: output not UTF-8: {e}"))
}
