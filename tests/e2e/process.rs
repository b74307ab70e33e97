//! Processes and directories of a lab: temporary directories removed on
//! drop, daemons stopped by PID on drop, and waiting for things to happen.
//!
//! Everything here runs inside the private PID namespace of the test (see
//! `namespace.rs`), so `/proc` shows only the lab's own processes and a PID
//! read from a daemon's pid file is a PID of this namespace.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A directory removed with everything in it when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A new, empty directory `PARENT/PREFIXpid-n-nanos`, mode 0755 so the
    /// unprivileged users of the daemons (postfix, opendmarc, pyspf-milter)
    /// can reach the files inside.
    pub fn new(parent: &Path, prefix: &str) -> io::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = parent.join(format!(
            "{prefix}{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path)?;
        set_mode(&path, 0o755)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// `chmod MODE PATH`.
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// `mkdir -p` with mode 0755.
pub fn make_dir(path: &Path) -> Result<PathBuf, String> {
    fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
    set_mode(path, 0o755).map_err(|e| format!("chmod {}: {e}", path.display()))?;
    Ok(path.to_path_buf())
}

/// Writes a file, with a readable error.
pub fn write_file(path: &Path, contents: &str) -> Result<(), String> {
    fs::write(path, contents).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Reads a file as text (lossy), empty if it does not exist.
pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Runs a command to completion. Ok(stdout) if it exits 0, otherwise an
/// error with the command line, exit status, stdout and stderr.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{shown} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Whether a process exists and has not exited. A zombie (exited, not yet
/// reaped: daemons that forked away are reparented to the test process,
/// which is PID 1 of the namespace and does not reap them) counts as gone.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Sends a signal (`TERM`, `KILL`, `HUP`...) to a PID.
pub fn signal(pid: u32, sig: &str) -> Result<(), String> {
    run(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string()))
    .map(drop)
}

/// Polls `ready` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a PID to be gone.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    wait_until(timeout, "exit", || !pid_alive(pid)).is_ok()
}

/// Whether something listens on TCP `addr:port` (IPv4), read from
/// `/proc/net/tcp` of this network namespace: no connection is made, so a
/// milter never sees a probe connection.
pub fn tcp_listening(addr: [u8; 4], port: u16) -> bool {
    let want_addr = format!(
        "{:02X}{:02X}{:02X}{:02X}",
        addr[3], addr[2], addr[1], addr[0]
    );
    let want_port = format!("{port:04X}");
    read_lossy(Path::new("/proc/net/tcp"))
        .lines()
        .skip(1)
        .any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != "0A" {
                return false;
            }
            match f[1].split_once(':') {
                Some((a, p)) => p == want_port && (a == want_addr || a == "00000000"),
                None => false,
            }
        })
}

/// The other live processes of this PID namespace: `(pid, command line)`.
/// After a lab has stopped there must be none.
pub fn other_processes() -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u32, String)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && pid_alive(pid))
        .map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .replace('\0', " ")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            (pid, cmdline)
        })
        .collect();
    found.sort();
    found
}

/// A daemon of the lab, stopped by PID when dropped: `TERM`, then `KILL`
/// after a grace period.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    pid: u32,
    /// Set when the test process spawned it (foreground daemons): it is
    /// reaped through this handle.
    child: Option<Child>,
    grace: Duration,
    stopped: bool,
}

impl Daemon {
    /// Spawns a foreground daemon, stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        cmd: &mut Command,
        log: &Path,
        grace: Duration,
    ) -> Result<Self, String> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{name}: open {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("{name}: {e}"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{name}: cannot start {cmd:?}: {e}"))?;
        Ok(Self {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            grace,
            stopped: false,
        })
    }

    /// A daemon that forked away and is known by its PID only.
    pub fn adopt(name: &str, pid: u32, grace: Duration) -> Self {
        Self {
            name: name.to_string(),
            pid,
            child: None,
            grace,
            stopped: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it still runs (reaps a foreground child that has exited).
    pub fn is_running(&mut self) -> bool {
        if let Some(child) = &mut self.child
            && let Ok(Some(_)) = child.try_wait()
        {
            return false;
        }
        pid_alive(self.pid)
    }

    /// Sends `TERM` without waiting; `stop` finishes the job. Lets several
    /// daemons shut down in parallel (libmilter daemons take ~4-5 s).
    pub fn begin_stop(&mut self) {
        if !self.stopped && self.is_running() {
            let _ = signal(self.pid, "TERM");
        }
    }

    /// Stops it: `TERM`, wait up to the grace period, then `KILL`. Errors
    /// only if the process is still there after `KILL`.
    pub fn stop(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if self.is_running() {
            let _ = signal(self.pid, "TERM");
            if !self.wait_exit(self.grace) {
                eprintln!(
                    "e2e: {} (pid {}) ignored TERM for {:?}: KILL",
                    self.name, self.pid, self.grace
                );
                let _ = signal(self.pid, "KILL");
                if !self.wait_exit(Duration::from_secs(5)) {
                    return Err(format!("{} (pid {}) survives KILL", self.name, self.pid));
                }
            }
        }
        if let Some(child) = &mut self.child {
            let _ = child.wait();
        }
        Ok(())
    }

    /// Kills it with `KILL` at once, as a crash would.
    pub fn kill(&mut self) -> Result<(), String> {
        if !self.stopped && self.is_running() {
            let _ = signal(self.pid, "KILL");
        }
        self.stopped = true;
        if !self.wait_exit(Duration::from_secs(5)) {
            return Err(format!("{} (pid {}) survives KILL", self.name, self.pid));
        }
        if let Some(child) = &mut self.child {
            let _ = child.wait();
        }
        Ok(())
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        wait_until(timeout, "exit", || !self.is_running()).is_ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("e2e: {e}");
        }
    }
}
