//! Each end-to-end test runs in namespaces of its own, never on the host's
//! network or files.
//!
//! The `#[test]` function calls [`isolated`]. Outside the namespaces it
//! re-executes the test binary, for that one test, under
//!
//! ```text
//! unshare --net --mount --pid --fork --mount-proc --kill-child -- TESTBIN NAME --exact
//! ```
//!
//! with `SPFMILTER_E2E_SCRATCH` set; the re-executed test sees the variable,
//! prepares the namespaces and runs the body. Inside:
//!
//! * **network**: a new network namespace with only `lo` (brought up), so
//!   every daemon listens and talks on loopback of its own; fixed ports are
//!   fine and nothing can reach any other address;
//! * **mounts**: `/etc/resolv.conf` is a bind mount of a private file
//!   (`nameserver 127.0.0.1`, the lab's DNS), and `/dev` is a private tmpfs
//!   with the usual device nodes bound in plus a `/dev/log` socket read by
//!   the test ([`super::syslog`]), so the daemons' syslog lines are
//!   captured. The host's `/etc/resolv.conf` and `/dev` are never touched;
//! * **PIDs**: the test is PID 1 of a new PID namespace; when it exits, for
//!   whatever reason, the kernel kills every process left in it, and
//!   `--kill-child` makes killing `unshare` kill the test. Daemons are still
//!   stopped one by one by PID (see `process.rs`); this is the safety net.
//!
//! The scratch directory is made and removed by the outer process, so it
//! goes away even if the inner one is killed.

use std::env;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::process::{TempDir, make_dir, run, write_file};
use super::syslog;

/// Set in the re-executed test: the scratch directory of the namespace.
const SCRATCH_ENV: &str = "SPFMILTER_E2E_SCRATCH";
/// The outer mount namespace, to check that the inner one is another.
const OUTER_MNT_NS_ENV: &str = "SPFMILTER_E2E_OUTER_MNT_NS";
/// Longest time one isolated test may take, unless it says otherwise
/// ([`isolated_for`]).
const TEST_TIMEOUT: Duration = Duration::from_secs(150);

/// Runs `body` inside private network, mount and PID namespaces (see the
/// module documentation). `name` must be the `#[test]` function's name.
pub fn isolated(name: &str, body: impl FnOnce(&Path)) {
    isolated_for(name, TEST_TIMEOUT, body);
}

/// [`isolated`], killed after `timeout` instead of the usual 150 s.
pub fn isolated_for(name: &str, timeout: Duration, body: impl FnOnce(&Path)) {
    match env::var_os(SCRATCH_ENV) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            prepare_inside(&dir);
            body(&dir);
        }
        None => run_outside(name, timeout),
    }
}

fn run_outside(name: &str, timeout: Duration) {
    preflight();
    let scratch = TempDir::new(&env::temp_dir(), "spfmilter-e2e-").expect("scratch directory");
    let exe = env::current_exe().expect("current test binary");
    let started = Instant::now();
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "--",
        ])
        .arg(&exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(SCRATCH_ENV, scratch.path())
        .env(OUTER_MNT_NS_ENV, mount_namespace())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run unshare (util-linux); run scripts/e2e-packages");
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for unshare") {
            break Some(status);
        }
        if started.elapsed() > timeout {
            // --kill-child: the namespace's PID 1 dies with unshare, and
            // every process of the namespace with it.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    // Shown by the test harness when the test fails (or with --nocapture).
    print!("{stdout}");
    eprint!("{stderr}");
    println!(
        "e2e: {name} took {:.1} s in its namespaces",
        started.elapsed().as_secs_f64()
    );
    let Some(status) = status else {
        panic!("{name}: no result after {timeout:?}; killed");
    };
    assert!(
        status.success(),
        "{name} failed inside its namespaces ({status})"
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{name}: the re-executed test binary did not run exactly this test"
    );
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn preflight() {
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "the e2e tests run as root (namespaces, mounts, Postfix)"
    );
    for tool in [
        "/usr/bin/unshare",
        "/usr/sbin/ip",
        "/usr/sbin/postfix",
        "/usr/sbin/nsd",
        "/usr/sbin/opendmarc",
        "/usr/bin/swaks",
        "/usr/bin/pyspf-milter",
    ] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: run scripts/e2e-packages"
        );
    }
}

fn mount_namespace() -> String {
    fs::read_link("/proc/self/ns/mnt")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Inside: checks that the namespaces really are new ones before anything
/// is mounted, then sets up loopback, resolv.conf, /dev and /dev/log.
fn prepare_inside(scratch: &Path) {
    // Never change the host: refuse to go on unless this is a fresh
    // network namespace (only `lo`) and another mount namespace.
    let interfaces: Vec<String> = fs::read_to_string("/proc/net/dev")
        .expect("/proc/net/dev")
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
        .collect();
    assert_eq!(interfaces, ["lo"], "not in a private network namespace");
    let outer = env::var(OUTER_MNT_NS_ENV).unwrap_or_default();
    assert!(
        !outer.is_empty() && outer != mount_namespace(),
        "not in a private mount namespace"
    );
    assert_eq!(
        std::process::id(),
        1,
        "not PID 1 of a private PID namespace"
    );

    run(Command::new("ip").args(["link", "set", "lo", "up"])).expect("ip link set lo up");

    let resolv = scratch.join("resolv.conf");
    write_file(&resolv, "nameserver 127.0.0.1\n").expect("resolv.conf");
    mount(&["--bind", path(&resolv), "/etc/resolv.conf"]);

    // A private /dev: a tmpfs with the usual nodes bound from the real
    // /dev, moved over /dev, then /dev/log.
    let dev = make_dir(&scratch.join("dev")).expect("dev staging dir");
    mount(&["-t", "tmpfs", "-o", "mode=755", "e2e-dev", path(&dev)]);
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        write_file(&target, "").expect("device mount point");
        mount(&["--bind", &format!("/dev/{node}"), path(&target)]);
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link)).expect("/dev symlink");
    }
    let shm = make_dir(&dev.join("shm")).expect("dev/shm");
    super::process::set_mode(&shm, 0o1777).expect("chmod dev/shm");
    make_dir(&dev.join("pts")).expect("dev/pts");
    mount(&["--move", path(&dev), "/dev"]);
    syslog::start(Path::new("/dev/log"));
    pin_the_reference_to_pydns();
}

/// The reference (pyspf) uses dnspython when Python can import it, and
/// pydns (`python3-dns`, what Debian's pyspf-milter depends on) otherwise;
/// the two answer the lab's SERVFAIL zone and a single-label HELO
/// differently (dnspython waits out its timeouts where pydns has an
/// answer). So that the expected outcomes do not depend on whether the
/// machine happens to have dnspython (`python3-dnspython` is common on mail
/// servers), an empty directory is mounted over its package inside this
/// mount namespace: `import dns.resolver` fails and pyspf takes pydns.
fn pin_the_reference_to_pydns() {
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        return;
    }
    let Ok(out) = Command::new(python)
        .args(["-c", "import dns; print(list(dns.__path__)[0])"])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !dir.is_empty() && Path::new(&dir).is_dir() {
        mount(&["-t", "tmpfs", "-o", "ro,mode=755", "e2e-no-dnspython", &dir]);
    }
}

fn mount(args: &[&str]) {
    run(Command::new("mount").args(args)).unwrap_or_else(|e| panic!("{e}"));
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
