//! The daemon's process behaviour: sockets, start-up errors, shutdown.

mod common;

use common::milter::{collect_stderr, handshake};

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spfmilter(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_spfmilter"))
        .args(args)
        // Nothing is resolved in these tests; a nameserver that is never
        // asked keeps the daemon independent of /etc/resolv.conf.
        .args(["--nameserver", "127.0.0.1:1", "--log-target", "stderr"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spfmilter")
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "spfmilter did not stop within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn a_unix_socket_replaces_a_stale_one_gets_its_mode_and_is_removed_at_exit() {
    let dir = std::env::temp_dir().join(format!("spfmilter-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("milter.sock");
    // A stale socket from a milter that died.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(is_socket(&path));

    let spec = format!("unix:{}", path.display());
    let conf = dir.join("spfmilter.toml");
    std::fs::write(&conf, "[milter]\nsocket_mode = \"0660\"\n").unwrap();
    let mut child = spfmilter(&["run", "--config", conf.to_str().unwrap(), "--socket", &spec]);
    wait_for("the socket", || {
        std::os::unix::net::UnixStream::connect(&path).is_ok()
    });
    // The socket accepts connections from bind() on, a moment before its
    // mode is set: wait for the mode rather than read it once.
    let mode = || std::fs::metadata(&path).map_or(0, |m| m.permissions().mode() & 0o777);
    wait_for("socket_mode 0660 on the socket", || mode() == 0o660);
    assert_eq!(mode(), 0o660);
    let status = terminate(&mut child);
    assert!(status.success(), "{status:?}");
    assert!(!path.exists(), "the socket file was left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_that_is_not_a_socket_is_never_removed() {
    let dir = std::env::temp_dir().join(format!("spfmilter-daemon-nf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("important.txt");
    std::fs::write(&path, "keep me").unwrap();
    let spec = format!("unix:{}", path.display());
    let child = spfmilter(&["run", "--socket", &spec]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_broken_configuration_stops_the_start_with_file_and_line() {
    let dir = std::env::temp_dir().join(format!("spfmilter-daemon-bc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("policyd-spf.conf");
    std::fs::write(&conf, "debugLevel = 1\nFrobnicate = 1\n").unwrap();
    let child = spfmilter(&["run", "--policyd-conf", conf.to_str().unwrap()]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2: error", conf.display())),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sighup_reloads_and_a_broken_file_keeps_the_old_configuration() {
    let dir = std::env::temp_dir().join(format!("spfmilter-daemon-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("milter.sock");
    let conf = dir.join("spfmilter.toml");
    std::fs::write(&conf, "[policy]\nhelo_reject = \"Fail\"\n").unwrap();
    let spec = format!("unix:{}", path.display());
    let mut child = spfmilter(&["run", "--config", conf.to_str().unwrap(), "--socket", &spec]);
    let stderr = collect_stderr(&mut child);
    wait_for("the socket", || {
        std::os::unix::net::UnixStream::connect(&path).is_ok()
    });
    let hangup = |child: &Child| {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .expect("kill -HUP");
    };

    std::fs::write(&conf, "[policy]\nhelo_reject = \"Fail\"\nfrobnicate = 1\n").unwrap();
    hangup(&child);
    wait_for("the refusal", || {
        stderr
            .lock()
            .unwrap()
            .contains("keeping the old configuration")
    });
    let text = stderr.lock().unwrap().clone();
    assert!(
        text.contains(&format!("{}:3: error", conf.display())),
        "{text}"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&path).is_ok(),
        "still serving after a refused reload"
    );

    std::fs::write(&conf, "[policy]\nhelo_reject = \"SPF_Not_Pass\"\n").unwrap();
    hangup(&child);
    wait_for("the reload", || {
        stderr.lock().unwrap().contains("configuration reloaded")
    });

    let status = terminate(&mut child);
    assert!(status.success(), "{status:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether this test runs as root (CI does): switching users needs it.
fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

#[test]
fn process_settings_umask_socket_group_pid_file_user_and_systemd_readiness() {
    if !is_root() {
        eprintln!("not root: the user switch cannot be tested here (CI runs as root)");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let mail = nix::unistd::Group::from_name("mail")
        .unwrap()
        .expect("group mail");
    let dir = std::env::temp_dir().join(format!("spfmilter-daemon-ps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The socket's directory belongs to the milter's user, as
    // RuntimeDirectory= makes it, so it can remove the socket at exit.
    std::os::unix::fs::chown(&dir, Some(nobody.uid.as_raw()), None).unwrap();
    let socket = dir.join("milter.sock");
    let pid_path = dir.join("spfmilter.pid");
    // systemd's side of sd_notify: a datagram socket named by NOTIFY_SOCKET.
    let notify_path = dir.join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conf = dir.join("spfmilter.toml");
    std::fs::write(
        &conf,
        format!(
            "[milter]\nsocket = \"unix:{}\"\numask = \"0027\"\nsocket_group = \"mail\"\n\
             pid_file = \"{}\"\nuser = \"nobody\"\n",
            socket.display(),
            pid_path.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spfmilter"))
        .args(["run", "--config", conf.to_str().unwrap()])
        .args(["--nameserver", "127.0.0.1:1", "--log-target", "stderr"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spfmilter");
    let stderr = collect_stderr(&mut child);
    let mut datagram = [0u8; 512];
    let n = notify
        .recv(&mut datagram)
        .unwrap_or_else(|e| panic!("no readiness notification: {e}\n{}", stderr.lock().unwrap()));
    assert_eq!(datagram[..n].trim_ascii_end(), b"READY=1");
    // Ready means serving: the socket answers at once.
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());

    let pid = child.id();
    assert_eq!(
        std::fs::read_to_string(&pid_path).unwrap(),
        format!("{pid}\n")
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key} in {status}"));
        line.split_whitespace()
            .skip(1)
            .map(|n| n.parse().unwrap())
            .collect()
    };
    // Real, effective, saved and filesystem ids all dropped.
    assert_eq!(ids("Uid:"), vec![nobody.uid.as_raw(); 4]);
    assert_eq!(ids("Gid:"), vec![nobody.gid.as_raw(); 4]);
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.gid(), mail.gid.as_raw(), "socket_group");
    // umask 027 on a socket created 0777: 0750.
    assert_eq!(meta.mode() & 0o777, 0o750, "umask");

    let status = terminate(&mut child);
    assert!(status.success(), "{status:?}\n{}", stderr.lock().unwrap());
    let n = notify.recv(&mut datagram).expect("a stopping notification");
    assert_eq!(datagram[..n].trim_ascii_end(), b"STOPPING=1");
    assert!(!pid_path.exists(), "the pid file is removed at exit");
    assert!(!socket.exists(), "the socket is removed at exit");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_pid_file_of_a_running_milter_stops_a_second_start() {
    let dir = std::env::temp_dir().join(format!("spfmilter-daemon-pid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first_socket = dir.join("first.sock");
    let pid_path = dir.join("spfmilter.pid");
    let pid_arg = pid_path.to_str().unwrap();
    let spec = format!("unix:{}", first_socket.display());
    let mut first = spfmilter(&["run", "--socket", &spec, "--pid-file", pid_arg]);
    wait_for("the first milter", || {
        std::os::unix::net::UnixStream::connect(&first_socket).is_ok()
    });
    let second_spec = format!("unix:{}", dir.join("second.sock").display());
    let second = spfmilter(&["run", "--socket", &second_spec, "--pid-file", pid_arg])
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        stderr.contains(&format!(
            "{pid_arg}: spfmilter is already running with pid {}",
            first.id()
        )),
        "{stderr}"
    );
    // The running milter's pid file is untouched.
    assert_eq!(
        std::fs::read_to_string(&pid_path).unwrap(),
        format!("{}\n", first.id())
    );
    assert!(terminate(&mut first).success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_metrics_endpoint_is_served_where_configured() {
    use std::io::{Read, Write};
    let dir = std::env::temp_dir().join(format!("spfmilter-daemon-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("milter.sock");
    let conf = dir.join("spfmilter.toml");
    // Port 0: the log line says which port it got.
    std::fs::write(&conf, "[metrics]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let spec = format!("unix:{}", socket.display());
    let mut child = spfmilter(&["run", "--config", conf.to_str().unwrap(), "--socket", &spec]);
    let stderr = collect_stderr(&mut child);
    let mut url = String::new();
    wait_for("the metrics line", || {
        let text = stderr.lock().unwrap();
        match text.split("metrics on http://").nth(1) {
            Some(rest) => {
                url = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                true
            }
            None => false,
        }
    });
    let addr = url.strip_suffix("/metrics").expect("a /metrics URL");
    let mut http = std::net::TcpStream::connect(addr).unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    http.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    for line in [
        "spfmilter_connections_open 0",
        "spfmilter_dns_queries_total 0",
        "# TYPE spfmilter_decision_seconds histogram",
    ] {
        assert!(reply.lines().any(|l| l == line), "{line:?} in {reply}");
    }
    assert!(terminate(&mut child).success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn under_systemds_journal_lines_carry_a_priority_and_no_name() {
    let dir = std::env::temp_dir().join(format!("spfmilter-daemon-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("milter.sock");
    let spec = format!("unix:{}", socket.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_spfmilter"))
        .args(["run", "--socket", &spec])
        .args(["--nameserver", "127.0.0.1:1", "--log-target", "stderr"])
        // What systemd sets when standard error is the journal.
        .env("JOURNAL_STREAM", "8:12345")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spfmilter");
    let stderr = collect_stderr(&mut child);
    wait_for("the socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    assert!(terminate(&mut child).success());
    let text = stderr.lock().unwrap().clone();
    // journald adds "spfmilter[PID]:" itself; <3> is err, the priority of
    // start and stop lines (debugLevel 0).
    assert!(
        text.lines().any(|l| l == format!("<3>listening on {spec}")),
        "{text}"
    );
    assert!(!text.contains("spfmilter["), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The README's first command: `spfmilter` with no argument and no
/// configuration file runs with the built-in defaults and answers a milter
/// handshake on inet:127.0.0.1:8891. Run in a private network namespace
/// (entered by this test's own thread, which the child inherits), so that
/// port 8891 of the machine is never involved.
#[test]
fn with_no_arguments_it_answers_a_handshake_on_127_0_0_1_8891() {
    if !is_root() {
        eprintln!("not root: no private network namespace here (CI runs as root)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("spfmilter-daemon-default-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a network namespace");
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip");
        assert!(up.success());
        // The default path must be absent for the built-in defaults to
        // apply (the .deb test installs into a throwaway overlay only).
        assert!(
            !Path::new("/etc/spfmilter/spfmilter.toml").exists(),
            "this test wants the built-in defaults"
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_spfmilter"))
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start spfmilter");
        let stderr = collect_stderr(&mut child);
        let mut stream = None;
        wait_for("inet:127.0.0.1:8891", || {
            stream = std::net::TcpStream::connect("127.0.0.1:8891").ok();
            stream.is_some()
        });
        let mut stream = stream.unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let actions = handshake(&mut stream)
            .unwrap_or_else(|e| panic!("no negotiation reply: {e}\n{}", stderr.lock().unwrap()));
        // It asks to add and change headers (SMFIF_ADDHDRS | SMFIF_CHGHDRS).
        assert_eq!(actions & 0x11, 0x11, "actions {actions:#x}");
        drop(stream);
        assert!(terminate(&mut child).success());
    })
    .join()
    .expect("the namespace thread");
    std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("spfmilter-daemon-default-{}", std::process::id())),
    )
    .unwrap();
}

/// Junk and abandoned connections: each bad session is a log line (at most
/// five a second), and the next well-formed session is served.
#[test]
fn junk_and_abandoned_connections_are_logged_and_survived() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let dir = std::env::temp_dir().join(format!("spfmilter-daemon-junk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("milter.sock");
    let spec = format!("unix:{}", socket.display());
    let mut child = spfmilter(&["run", "--socket", &spec]);
    let stderr = collect_stderr(&mut child);
    wait_for("the socket", || UnixStream::connect(&socket).is_ok());
    let started = Instant::now();

    // A length of 4 GiB: refused, the connection closed.
    let mut junk = UnixStream::connect(&socket).unwrap();
    junk.write_all(b"\xff\xff\xff\xffjunk").unwrap();
    wait_for("the junk line", || {
        stderr
            .lock()
            .unwrap()
            .contains("milter connection ended by an error")
    });
    // A truncated packet, then the peer goes away; and 2,000 connections
    // opened and dropped at once.
    let mut truncated = UnixStream::connect(&socket).unwrap();
    truncated.write_all(b"\x00\x00\x00\x0dO\x00\x00").unwrap();
    drop(truncated);
    for _ in 0..2000 {
        drop(UnixStream::connect(&socket).unwrap());
    }
    let mut good = UnixStream::connect(&socket).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let actions = handshake(&mut good).expect("served after the junk");
    assert_eq!(actions & 0x11, 0x11);
    drop(good);
    assert!(terminate(&mut child).success());

    let text = stderr.lock().unwrap().clone();
    let lines = text
        .lines()
        .filter(|l| l.contains("milter connection ended by an error"))
        .count();
    let seconds = started.elapsed().as_secs() + 1;
    assert!(lines >= 1, "{text}");
    assert!(
        lines as u64 <= 5 * seconds,
        "{lines} lines in {seconds} s: not rate-limited"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// At start the soft `RLIMIT_NOFILE` is raised to the hard one: every
/// MTA connection is a descriptor, and systemd's default soft limit
/// (1024) is exactly the default `max_connections`.
#[test]
fn the_open_files_soft_limit_is_raised_to_the_hard_one() {
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(format!("spfmilter-daemon-nofile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("milter.sock");
    let conf = dir.join("spfmilter.toml");
    std::fs::write(&conf, "").unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_spfmilter"));
    // SAFETY: only setrlimit(2), async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256, 4096)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .args(["run", "--socket", &format!("unix:{}", socket.display())])
        .args(["--config", conf.to_str().unwrap()])
        .args(["--nameserver", "127.0.0.1:1", "--log-target", "stderr"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spfmilter");
    let stderr = collect_stderr(&mut child);
    wait_for("the socket", || is_socket(&socket));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("the open files line");
    let words: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    assert_eq!(
        words[3..5],
        ["4096", "4096"],
        "{line}\n{}",
        stderr.lock().unwrap()
    );
    assert!(terminate(&mut child).success());
    std::fs::remove_dir_all(&dir).unwrap();
}
