//! A syslog receiver on the namespace's private `/dev/log`: what the
//! milters and OpenDMARC log (they log to syslog only) is kept in memory
//! for the tests to read. Postfix logs to its own `maillog_file` instead.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use super::process::{set_mode, wait_until};

static LINES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();

/// Binds `path` (the private `/dev/log`) and collects every message on a
/// background thread for the rest of the process.
pub fn start(path: &Path) {
    let socket =
        UnixDatagram::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
    set_mode(path, 0o666).expect("chmod /dev/log");
    LINES.get_or_init(|| Mutex::new(Vec::new()));
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            let text = text.trim_end_matches(['\0', '\n', '\r']);
            // "<PRI>Mon DD HH:MM:SS tag[pid]: message" -> "tag[pid]: message"
            let text = match text.strip_prefix('<').and_then(|t| t.split_once('>')) {
                Some((_, rest)) => rest,
                None => text,
            };
            let text = if text.len() > 16 && text.as_bytes()[15] == b' ' {
                &text[16..]
            } else {
                text
            };
            lines().lock().unwrap().push(text.to_string());
        }
    });
}

fn lines() -> &'static Mutex<Vec<String>> {
    LINES.get_or_init(|| Mutex::new(Vec::new()))
}

/// How many lines were received so far: a mark for [`since`].
pub fn mark() -> usize {
    lines().lock().unwrap().len()
}

/// The lines received since `mark`, as `tag[pid]: message`.
pub fn since(mark: usize) -> Vec<String> {
    lines()
        .lock()
        .unwrap()
        .get(mark..)
        .map(<[String]>::to_vec)
        .unwrap_or_default()
}

/// Every line received.
pub fn all() -> Vec<String> {
    since(0)
}

/// Waits until a line received since `mark` contains `needle`.
pub fn wait_for(mark: usize, needle: &str, timeout: Duration) -> Result<String, String> {
    let mut found = None;
    wait_until(
        timeout,
        &format!("syslog line containing {needle:?}"),
        || {
            found = since(mark).into_iter().find(|l| l.contains(needle));
            found.is_some()
        },
    )?;
    Ok(found.unwrap_or_default())
}
