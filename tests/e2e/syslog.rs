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
            let text = if has_timestamp(text) {
                &text[16..]
            } else {
                text
            };
            lines().lock().unwrap().push(text.to_string());
        }
    });
}

/// Whether `text` begins with an RFC 3164 timestamp, `Mmm dd hh:mm:ss `
/// (libc's syslog writes one; spfmilter leaves it to the daemon). Not
/// just a space at index 15: `spfmilter[123]: ` has one there too.
fn has_timestamp(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() > 16
        && b[..3].iter().all(u8::is_ascii_alphabetic)
        && b[3] == b' '
        && b[4..6].iter().all(|c| *c == b' ' || c.is_ascii_digit())
        && b[6] == b' '
        && [7, 8, 10, 11, 13, 14]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
        && b[9] == b':'
        && b[12] == b':'
        && b[15] == b' '
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

#[test]
fn syslog_timestamp_is_told_from_a_tag() {
    // RFC 3164 §4.1.2: "Mmm dd hh:mm:ss ", the day padded with a space.
    assert!(has_timestamp("Dec  2 06:45:11 opendkim[47]: starting"));
    assert!(has_timestamp("Dec 12 06:45:11 opendkim[47]: starting"));
    // spfmilter sends no timestamp; a three-digit pid puts a space at 15.
    assert!(!has_timestamp(
        "spfmilter[123]: 4C7C598CD71: rescued by dkim"
    ));
    assert!(!has_timestamp("spfmilter[44]: stopping"));
}
