//! The daemon's process behaviour: sockets, start-up errors, shutdown.

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
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
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

/// Collects a child's standard error as it comes.
fn collect_stderr(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::Read;
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stderr = child.stderr.take().expect("piped stderr");
    let sink = std::sync::Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
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

#[test]
fn settings_not_applied_yet_are_said_at_start() {
    let dir = std::env::temp_dir().join(format!("spfmilter-daemon-us-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("milter.sock");
    let conf = dir.join("pyspf-milter.conf");
    std::fs::write(&conf, "PidFile = /run/x.pid\nUserID = nobody\n").unwrap();
    let spec = format!("unix:{}", path.display());
    let mut child = spfmilter(&[
        "run",
        "--policyd-conf",
        conf.to_str().unwrap(),
        "--socket",
        &spec,
    ]);
    let stderr = collect_stderr(&mut child);
    wait_for("the socket", || {
        std::os::unix::net::UnixStream::connect(&path).is_ok()
    });
    wait_for("the warnings", || {
        stderr
            .lock()
            .unwrap()
            .contains("UserID (user) is not supported")
    });
    terminate(&mut child);
    let text = stderr.lock().unwrap().clone();
    assert!(
        text.contains("PidFile (pid_file) is not supported by this version yet"),
        "{text}"
    );
    assert!(
        text.contains("UserID (user) is not supported by this version yet"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
