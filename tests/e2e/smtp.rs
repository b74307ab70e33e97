//! Sending with swaks through XCLIENT, and reading what came out: the SMTP
//! transcript, the replies to each command, the held message's headers.

use std::path::Path;
use std::process::{Command, Stdio};

use super::postfix::RCPT_DOMAIN;
use super::zones::CLIENT_IP;

/// One message to send. XCLIENT sets the client's address, name and HELO
/// as Postfix and the milters see them.
#[derive(Debug, Clone)]
pub struct Mail {
    /// XCLIENT ADDR.
    pub client_ip: String,
    /// XCLIENT NAME: the client host name Postfix passes to the milters at
    /// connect (what pyspf-milter checks as "HELO"). Defaults to the HELO
    /// name; `[UNAVAILABLE]` makes it unknown.
    pub client_name: Option<String>,
    /// XCLIENT HELO and the EHLO swaks sends after XCLIENT (Postfix
    /// restarts the session after XCLIENT; the new EHLO sets the HELO).
    pub helo: String,
    /// MAIL FROM; empty for the null sender.
    pub from: String,
    pub to: Vec<String>,
    /// Message headers added to swaks' defaults (Date, To, From, Subject,
    /// Message-Id, X-Mailer); `From` given here replaces the default
    /// `From: <envelope sender>`.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The whole message (header and body), sent as it is instead of
    /// swaks's generated one: for messages signed before sending.
    /// `headers` and `body` are then not used.
    pub data: Option<String>,
    /// SMTP AUTH PLAIN as `(user, password)` after XCLIENT and EHLO, so
    /// Postfix passes `{auth_authen}` to the milters at MAIL FROM.
    pub auth: Option<(String, String)>,
}

impl Mail {
    /// A message from `from`, by [`CLIENT_IP`] with HELO `mx.pass.test`,
    /// to `user@rcpt.example`, with `From: from`.
    pub fn from(from: &str) -> Self {
        Self {
            client_ip: CLIENT_IP.to_string(),
            client_name: None,
            helo: "mx.pass.test".to_string(),
            from: from.to_string(),
            to: vec![format!("user@{RCPT_DOMAIN}")],
            headers: Vec::new(),
            body: "e2e test message".to_string(),
            data: None,
            auth: None,
        }
    }
    pub fn helo(mut self, helo: &str) -> Self {
        self.helo = helo.to_string();
        self
    }
    pub fn client_ip(mut self, ip: &str) -> Self {
        self.client_ip = ip.to_string();
        self
    }
    pub fn client_name(mut self, name: &str) -> Self {
        self.client_name = Some(name.to_string());
        self
    }
    /// Logs in with SMTP AUTH PLAIN (the server must offer it).
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }
    /// The null reverse-path `<>`.
    pub fn null_sender() -> Self {
        Self::from("")
    }
    /// Sends `message` (header and body) as it is.
    pub fn data(mut self, message: &str) -> Self {
        self.data = Some(message.to_string());
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sends it to 127.0.0.1:`port` with swaks; the transcript is also
    /// written to `transcript_file`.
    pub fn send(&self, port: u16, transcript_file: &Path) -> Transcript {
        let mut cmd = Command::new("swaks");
        cmd.args(["--server", &format!("127.0.0.1:{port}")])
            .args(["--timeout", "60"])
            .args(["--xclient-addr", &self.client_ip])
            .args([
                "--xclient-name",
                self.client_name.as_deref().unwrap_or(&self.helo),
            ])
            .args(["--xclient-helo", &self.helo])
            .args(["--helo", &self.helo])
            // swaks's spelling of the null sender; an empty --from would
            // make it use a default address.
            .args([
                "--from",
                if self.from.is_empty() {
                    "<>"
                } else {
                    &self.from
                },
            ])
            .args(["--to", &self.to.join(",")]);
        if let Some(data) = &self.data {
            // `@FILE`: swaks reads the message from the file as it is.
            let file = transcript_file.with_extension("eml");
            std::fs::write(&file, data).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
            cmd.arg("--data").arg(format!("@{}", file.display()));
        } else {
            cmd.args(["--body", &self.body]);
            for (name, value) in &self.headers {
                cmd.args(["--header", &format!("{name}: {value}")]);
            }
        }
        if let Some((user, password)) = &self.auth {
            cmd.args(["--auth", "PLAIN"])
                .args(["--auth-user", user])
                .args(["--auth-password", password]);
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("cannot run swaks: run scripts/e2e-packages");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::write(transcript_file, &text);
        Transcript {
            text,
            exit_code: out.status.code(),
        }
    }
}

/// A server reply: code, enhanced status code (if any) and all its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<String>,
    pub lines: Vec<String>,
}

impl Reply {
    /// The text of all lines, without codes, joined by spaces.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| {
                let rest = l.get(4..).unwrap_or("");
                match &self.enhanced {
                    Some(e) => rest.strip_prefix(e.as_str()).unwrap_or(rest).trim_start(),
                    None => rest,
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.lines.join(" / "))
    }
}

/// What swaks printed: ` -> ` client lines, `<-  ` server replies, `<** `
/// server errors, `=== ` information.
#[derive(Debug, Clone)]
pub struct Transcript {
    pub text: String,
    pub exit_code: Option<i32>,
}

impl Transcript {
    /// The reply to the last client command that starts with `command`
    /// (case-insensitive), e.g. `"MAIL FROM"`, `"RCPT TO"`, `"DATA"`,
    /// `"XCLIENT"`, `"EHLO"`; for the end of data use [`Self::data_end`].
    pub fn reply_to(&self, command: &str) -> Option<Reply> {
        let lines: Vec<&str> = self.text.lines().collect();
        let want = command.to_ascii_uppercase();
        let start = lines.iter().rposition(|l| {
            l.strip_prefix(" -> ")
                .is_some_and(|c| c.to_ascii_uppercase().starts_with(&want))
        })?;
        reply_after(&lines, start)
    }

    /// The reply to the end of data (the line `.`).
    pub fn data_end(&self) -> Option<Reply> {
        let lines: Vec<&str> = self.text.lines().collect();
        let start = lines.iter().rposition(|l| *l == " -> .")?;
        reply_after(&lines, start)
    }

    /// The greeting (`220`), or the error the server greeted with.
    pub fn banner(&self) -> Option<Reply> {
        let lines: Vec<&str> = self.text.lines().collect();
        let start = lines.iter().position(|l| l.starts_with("=== Connected"))?;
        reply_after(&lines, start)
    }

    /// The queue ID of an accepted message (`250 2.0.0 Ok: queued as ID`).
    pub fn queue_id(&self) -> Option<String> {
        self.data_end()?
            .lines
            .iter()
            .find_map(|l| l.split("queued as ").nth(1))
            .map(|id| id.trim().to_string())
    }
}

impl std::fmt::Display for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.text)
    }
}

fn reply_after(lines: &[&str], command: usize) -> Option<Reply> {
    let mut reply_lines = Vec::new();
    for line in &lines[command + 1..] {
        let Some(text) = line
            .strip_prefix("<-  ")
            .or_else(|| line.strip_prefix("<** "))
        else {
            if reply_lines.is_empty() && line.starts_with("===") {
                continue;
            }
            break;
        };
        reply_lines.push(text.to_string());
        // "250-..." continues, "250 ..." ends the reply.
        if text.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    let first = reply_lines.first()?;
    let code = first.get(..3)?.parse().ok()?;
    let enhanced = first
        .get(4..)
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string);
    Some(Reply {
        code,
        enhanced,
        lines: reply_lines,
    })
}

/// A stored message: its header fields in order (top first) and body.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// `(name, value)`; the value as stored (continuation lines kept, with
    /// their line breaks as `\n`), without the space after the colon.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Message {
    /// Parses `postcat -h` and `postcat -b` output.
    pub fn parse(headers: &str, body: &str) -> Self {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in headers.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = fields.last_mut() {
                    value.push('\n');
                    value.push_str(line);
                }
            } else if let Some((name, value)) = line.split_once(':') {
                fields.push((
                    name.to_string(),
                    value.strip_prefix(' ').unwrap_or(value).to_string(),
                ));
            }
        }
        Self {
            headers: fields,
            body: body.to_string(),
        }
    }

    /// Values of the fields named `name` (case-insensitive), top first.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The topmost field named `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// The position (0 = top) of the first field named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Unfolded values (continuation line breaks and indentation replaced
    /// by one space) of the fields named `name`.
    pub fn unfolded(&self, name: &str) -> Vec<String> {
        self.all(name).into_iter().map(unfold).collect()
    }

    /// The `Authentication-Results` fields of `authserv_id` (unfolded) that
    /// carry a `method=` result.
    pub fn auth_results(&self, authserv_id: &str, method: &str) -> Vec<String> {
        let key = format!("{method}=");
        self.unfolded("Authentication-Results")
            .into_iter()
            .filter(|v| {
                let parts = authentication_results_parts(v);
                parts.first() == Some(&authserv_id)
                    && parts[1..].iter().any(|r| r.starts_with(&key))
            })
            .collect()
    }

    /// The result of `method` (`spf`, `dmarc`) in the topmost
    /// Authentication-Results of `authserv_id`, lower-case.
    pub fn auth_result(&self, authserv_id: &str, method: &str) -> Option<String> {
        let key = format!("{method}=");
        let header = self.auth_results(authserv_id, method).into_iter().next()?;
        authentication_results_parts(&header)[1..]
            .iter()
            .find_map(|r| {
                r.strip_prefix(&key)
                    .and_then(|v| v.split_whitespace().next())
                    .map(str::to_ascii_lowercase)
            })
    }

    /// The whole header as text, for assertion messages.
    pub fn header_text(&self) -> String {
        self.headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}\n"))
            .collect()
    }
}

/// Unfolds a header value (RFC 5322 §2.2.3).
pub fn unfold(value: &str) -> String {
    value
        .split('\n')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The parts of an Authentication-Results value (RFC 8601 §2.2): the
/// authserv-id, then each result, split at the `;` that stand outside
/// comments (nested, with `\` escapes) and quoted strings, trimmed. A
/// comment such as `(SPF Temporary Error: DNS; timeout)` stays whole.
pub fn authentication_results_parts(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut escaped, mut start) = (0usize, false, false, 0);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            ';' if !quoted && depth == 0 => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim());
    parts
}

#[test]
fn authentication_results_are_split_outside_comments_and_quotes() {
    assert_eq!(
        authentication_results_parts(
            "mx.example.net; spf=temperror (SPF Temporary Error: DNS; timeout \\) x; y) smtp.mailfrom=a.test; dkim=none (\"a;b\")"
        ),
        [
            "mx.example.net",
            "spf=temperror (SPF Temporary Error: DNS; timeout \\) x; y) smtp.mailfrom=a.test",
            "dkim=none (\"a;b\")",
        ]
    );
    assert_eq!(
        authentication_results_parts("id \"q;q\"; none"),
        ["id \"q;q\"", "none"]
    );
}
