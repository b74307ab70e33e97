//! A private Postfix instance: its own `main.cf`/`master.cf`, queue and
//! data directories and log file in the lab directory, `smtpd` on
//! 127.0.0.1:PORT, XCLIENT allowed from loopback, every accepted message
//! put on hold (`check_recipient_access static:HOLD`) so a test reads it
//! back with `postcat`, as it would have been delivered, milter changes
//! included. Nothing is ever delivered or sent on.
//!
//! Facts that shaped this (Postfix 3.7, Debian 12):
//! * `postfix -c DIR` works for root without `alternate_config_directories`
//!   and without any `/etc/postfix/main.cf`; `postcat -c DIR` too.
//! * `maillog_file` must start with one of `maillog_file_prefixes`
//!   (default `/var, /dev/stdout`), or `postfix` dies with a fatal error
//!   sent to syslog only; it also needs the `postlog` service in master.cf.
//! * `data_directory` must be owned by `mail_owner`.
//! * Commands print their errors to stderr only when it is a terminal; else
//!   they go to syslog (captured by the lab) and the maillog file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{Daemon, make_dir, pid_alive, read_lossy, run, wait_until, write_file};
use super::smtp::Message;
use super::syslog;

/// The Postfix host name: the milter macro `j`, the default authserv-id.
pub const MYHOSTNAME: &str = "mx.test.example";
/// The domain the recipients are in (accepted, then held).
pub const RCPT_DOMAIN: &str = "rcpt.example";

/// How the instance is set up.
#[derive(Debug, Clone)]
pub struct PostfixConfig {
    /// smtpd listens on 127.0.0.1:`smtpd_port`.
    pub smtpd_port: u16,
    /// `smtpd_milters`, in order (the SPF milter first, OpenDMARC after it,
    /// so OpenDMARC sees the SPF milter's header). Each entry is a socket
    /// (`inet:127.0.0.1:8891`) or a block with per-milter settings
    /// (`{ inet:127.0.0.1:8891, default_action=accept }`).
    pub milters: Vec<String>,
    /// `milter_default_action`: `tempfail` (Postfix's default), `accept`,
    /// `reject` or `quarantine`.
    pub milter_default_action: String,
    /// More `main.cf` settings, written last (so they override).
    pub main_cf: Vec<(String, String)>,
    /// More files in the configuration directory: (relative path,
    /// contents), e.g. `sasl/smtpd.conf`.
    pub conf_files: Vec<(String, String)>,
    /// More `master.cf` lines (services), e.g. the `virtual` delivery agent.
    pub master_cf: Vec<String>,
}

impl Default for PostfixConfig {
    fn default() -> Self {
        Self {
            smtpd_port: 25,
            milters: Vec::new(),
            milter_default_action: "tempfail".to_string(),
            main_cf: Vec::new(),
            conf_files: Vec::new(),
            master_cf: Vec::new(),
        }
    }
}

impl PostfixConfig {
    /// SMTP AUTH with `login`'s database (see [`SaslLogin`]).
    pub fn with_sasl(mut self, login: &SaslLogin) -> Self {
        self.main_cf.extend(login.main_cf.iter().cloned());
        self.conf_files
            .push(("sasl/smtpd.conf".to_string(), login.smtpd_conf.clone()));
        self
    }
}

/// A running instance; stopped (and checked to be gone) when dropped.
pub struct Postfix {
    pub dir: PathBuf,
    pub conf_dir: PathBuf,
    pub port: u16,
    master: Option<Daemon>,
}

const MASTER_CF: &str = "\
# service type  private unpriv  chroot  wakeup  maxproc command + args
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

impl Postfix {
    /// Writes the configuration under `dir`, checks it and starts Postfix.
    pub fn start(dir: &Path, config: &PostfixConfig) -> Result<Self, String> {
        let dir = make_dir(dir)?;
        let conf_dir = make_dir(&dir.join("conf"))?;
        let queue = make_dir(&dir.join("queue"))?;
        let data = make_dir(&dir.join("data"))?;
        run(Command::new("chown").arg("postfix:postfix").arg(&data))?;
        let d = dir.display();
        let mut main = vec![
            ("compatibility_level", "3.6".to_string()),
            ("queue_directory", queue.display().to_string()),
            ("data_directory", data.display().to_string()),
            ("mail_owner", "postfix".into()),
            ("setgid_group", "postdrop".into()),
            ("maillog_file_prefixes", d.to_string()),
            ("maillog_file", format!("{d}/maillog")),
            ("myhostname", MYHOSTNAME.into()),
            ("mydomain", "test.example".into()),
            ("myorigin", "$myhostname".into()),
            ("mydestination", RCPT_DOMAIN.into()),
            ("local_recipient_maps", String::new()),
            ("alias_maps", String::new()),
            ("alias_database", String::new()),
            ("mynetworks", "127.0.0.1/32".into()),
            ("inet_interfaces", "loopback-only".into()),
            ("inet_protocols", "ipv4".into()),
            ("smtputf8_enable", "no".into()),
            ("biff", "no".into()),
            ("smtpd_authorized_xclient_hosts", "127.0.0.0/8".into()),
            (
                "smtpd_recipient_restrictions",
                "check_recipient_access static:HOLD".into(),
            ),
            ("smtpd_milters", config.milters.join(", ")),
            (
                "milter_default_action",
                config.milter_default_action.clone(),
            ),
            ("milter_protocol", "6".into()),
            ("notify_classes", String::new()),
        ];
        for (k, v) in &config.main_cf {
            main.retain(|(key, _)| key != k);
            main.push((k.as_str(), v.clone()));
        }
        let mut main_cf = String::new();
        for (k, v) in &main {
            main_cf.push_str(&format!("{k} = {v}\n"));
        }
        write_file(&conf_dir.join("main.cf"), &main_cf)?;
        let mut master_cf = format!("127.0.0.1:{} inet n - n - - smtpd\n", config.smtpd_port);
        master_cf.push_str(MASTER_CF);
        for line in &config.master_cf {
            master_cf.push_str(line);
            master_cf.push('\n');
        }
        write_file(&conf_dir.join("master.cf"), &master_cf)?;
        for (name, contents) in &config.conf_files {
            let path = conf_dir.join(name);
            if let Some(parent) = path.parent() {
                make_dir(parent)?;
            }
            write_file(&path, contents)?;
        }

        let mut this = Self {
            dir,
            conf_dir,
            port: config.smtpd_port,
            master: None,
        };
        let mark = syslog::mark();
        // `postfix start` runs the integrity checks of `postfix check` that
        // matter (creating the queue directories among them); a full
        // `postfix check` would add 2 s.
        this.postfix(&["start"])
            .map_err(|e| this.explain(e, mark))?;
        let pid_file = queue.join("pid/master.pid");
        let mut pid = 0;
        wait_until(Duration::from_secs(10), "postfix master.pid", || {
            pid = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            pid != 0 && pid_alive(pid)
        })
        .map_err(|e| this.explain(e, mark))?;
        this.master = Some(Daemon::adopt(
            "postfix master",
            pid,
            Duration::from_secs(10),
        ));
        Ok(this)
    }

    fn explain(&self, e: String, mark: usize) -> String {
        format!(
            "{e}\nmaillog:\n{}\nsyslog:\n{}",
            self.maillog(),
            syslog::since(mark).join("\n")
        )
    }

    /// `postfix -c CONF ARGS...`
    pub fn postfix(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new("postfix")
            .arg("-c")
            .arg(&self.conf_dir)
            .args(args))
    }

    /// Changes `main.cf` settings (`postconf -e`) and reloads; new SMTP
    /// sessions use them.
    pub fn reconfigure(&self, settings: &[(&str, &str)]) -> Result<(), String> {
        let mut cmd = Command::new("postconf");
        cmd.arg("-c").arg(&self.conf_dir).arg("-e");
        for (k, v) in settings {
            cmd.arg(format!("{k}={v}"));
        }
        run(&mut cmd)?;
        let reloads = || self.maillog().matches("reload -- version").count();
        let before = reloads();
        let old_smtpd = daemons_named("smtpd");
        self.postfix(&["reload"])?;
        // reload is asynchronous: wait for master to say it has re-read
        // the configuration, and for the smtpd processes of the old
        // configuration to exit, so the next session gets the new one.
        wait_until(Duration::from_secs(10), "postfix reload", || {
            reloads() > before
        })?;
        wait_until(
            Duration::from_secs(10),
            "old smtpd processes to exit",
            || old_smtpd.iter().all(|&pid| !pid_alive(pid)),
        )
    }

    /// The whole log file.
    pub fn maillog(&self) -> String {
        read_lossy(&self.dir.join("maillog"))
    }

    /// The log lines that mention `needle` (a queue ID, an address...).
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.maillog()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Waits until a log line contains `needle` and returns it (postlogd
    /// writes the file asynchronously).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let mut line = None;
        wait_until(
            timeout,
            &format!("maillog line containing {needle:?}"),
            || {
                line = self.log_lines(needle).into_iter().next();
                line.is_some()
            },
        )?;
        Ok(line.unwrap_or_default())
    }

    /// A queued (held) message, headers and body, as `postcat -q` shows it:
    /// with the headers the milters added.
    pub fn message(&self, queue_id: &str) -> Result<Message, String> {
        let headers = run(Command::new("postcat")
            .arg("-c")
            .arg(&self.conf_dir)
            .args(["-h", "-q", queue_id]))?;
        let body = run(Command::new("postcat")
            .arg("-c")
            .arg(&self.conf_dir)
            .args(["-b", "-q", queue_id]))?;
        Ok(Message::parse(&headers, &body))
    }

    /// Stops Postfix (`postfix stop`) and waits until the master and every
    /// Postfix daemon are gone.
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut master) = self.master.take() else {
            return Ok(());
        };
        let _ = self.postfix(&["stop"]);
        if !super::process::wait_gone(master.pid(), Duration::from_secs(10)) {
            master.stop()?;
        }
        drop(master);
        let postfix_processes = || {
            super::process::other_processes()
                .into_iter()
                .filter(|(pid, _)| {
                    fs::read_link(format!("/proc/{pid}/exe"))
                        .map(|exe| exe.starts_with("/usr/lib/postfix/"))
                        .unwrap_or(false)
                })
                .collect::<Vec<_>>()
        };
        wait_until(Duration::from_secs(10), "postfix daemons to exit", || {
            postfix_processes().is_empty()
        })
        .map_err(|e| format!("{e}: {:?}", postfix_processes()))
    }
}

/// PIDs of the running Postfix daemons `/usr/lib/postfix/sbin/NAME`.
fn daemons_named(name: &str) -> Vec<u32> {
    let exe = Path::new("/usr/lib/postfix/sbin").join(name);
    super::process::other_processes()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe))
        .collect()
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("e2e: postfix: {e}");
        }
    }
}

/// A real SMTP AUTH login for the instance: Cyrus SASL with a private
/// sasldb (packages `libsasl2-modules`, `sasl2-bin`), mechanisms PLAIN and
/// LOGIN, offered without TLS. No saslauthd: the `auxprop` method reads the
/// sasldb file inside smtpd itself.
///
/// Where the Cyrus configuration (`smtpd.conf`) goes: upstream Postfix
/// reads it from `cyrus_sasl_config_path`; Debian's Postfix (patch
/// `07_sasl_config`, README.Debian "SASL configuration goes in
/// /etc/postfix/sasl") ignores that setting and reads
/// `$config_directory/sasl/smtpd.conf`, then `/usr/lib/sasl/smtpd.conf`
/// (seen with strace). So [`PostfixConfig::with_sasl`] writes the file into
/// the instance's configuration directory and also sets
/// `cyrus_sasl_config_path` to that directory.
#[derive(Debug, Clone)]
pub struct SaslLogin {
    /// The login name swaks sends: `user@realm`.
    pub login: String,
    pub password: String,
    /// The Cyrus configuration file `smtpd.conf`.
    pub smtpd_conf: String,
    /// `main.cf` settings that turn SMTP AUTH on.
    pub main_cf: Vec<(String, String)>,
}

impl SaslLogin {
    /// Writes `DIR/sasldb2` with one user `user@realm` (`saslpasswd2 -f
    /// FILE -c -p -u REALM USER`, the password on stdin), readable by
    /// smtpd (user `postfix`).
    pub fn create(dir: &Path, user: &str, realm: &str, password: &str) -> Result<Self, String> {
        use std::io::Write;
        let dir = make_dir(dir)?;
        let db = dir.join("sasldb2");
        let mut child = Command::new("saslpasswd2")
            .arg("-f")
            .arg(&db)
            .args(["-c", "-p", "-u", realm, user])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run saslpasswd2 (run scripts/e2e-packages): {e}"))?;
        child
            .stdin
            .take()
            .ok_or("saslpasswd2 stdin")?
            .write_all(password.as_bytes())
            .map_err(|e| format!("saslpasswd2 stdin: {e}"))?;
        let out = child
            .wait_with_output()
            .map_err(|e| format!("saslpasswd2: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "saslpasswd2 failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        run(Command::new("chown").arg("postfix").arg(&db))?;
        let smtpd_conf = format!(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\n\
             mech_list: PLAIN LOGIN\nsasldb_path: {}\n",
            db.display()
        );
        let main_cf = [
            ("smtpd_sasl_auth_enable", "yes"),
            ("smtpd_sasl_type", "cyrus"),
            ("smtpd_sasl_path", "smtpd"),
            ("cyrus_sasl_config_path", "$config_directory/sasl"),
            ("smtpd_tls_auth_only", "no"),
            ("smtpd_sasl_security_options", "noanonymous"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Ok(Self {
            login: format!("{user}@{realm}"),
            password: password.to_string(),
            smtpd_conf,
            main_cf,
        })
    }
}
