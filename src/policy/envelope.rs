//! The SMTP envelope of one message, as the policy sees it: who connected,
//! what it said at HELO, MAIL FROM and the first RCPT TO, and whether it
//! authenticated. One [`Envelope`] is what the bypass chain
//! ([`super::skip`]), the decision ([`super::decide`]) and the header writer
//! ([`super::headers`]) read; the SPF evaluator gets a [`Request`] built
//! from it ([`Envelope::spf_request`]), so the evaluator knows nothing of
//! the policy.
//!
//! What is not envelope data goes beside it: the MTA's macros (for
//! `MacroList`, see [`Macros`]) and the time the decision must be done by.

use std::net::IpAddr;

use crate::spf::Request;
use crate::spf::identity;

/// An MTA macro by name without braces (`i`, `j`, `auth_authen`,
/// `daemon_name`); `None` when the MTA did not send it.
pub type Macros<'a> = dyn Fn(&str) -> Option<String> + Sync + 'a;

/// One message's envelope (RFC 5321 §3.3). The connection's part (address,
/// HELO) lasts for the connection; the message's part (sender, recipient,
/// authentication) is set again at each MAIL FROM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The SMTP client's address; `None` when the MTA did not say (e.g. a
    /// local submission on a UNIX socket).
    pub client_ip: Option<IpAddr>,
    /// The last HELO/EHLO argument (after STARTTLS the client says it
    /// again), possibly empty.
    pub helo: String,
    /// MAIL FROM without angle brackets; empty for the null sender `<>`.
    pub sender: String,
    /// The first RCPT TO argument as the MTA passed it (`<a@b>`); `None`
    /// before the first recipient.
    pub first_recipient: Option<String>,
    /// The client authenticated with SMTP AUTH (`{auth_authen}` was set at
    /// MAIL FROM).
    pub authenticated: bool,
}

impl Envelope {
    /// A new message of the connection: `sender` as the MTA passes MAIL
    /// FROM (`<a@b>`, `<>`), kept without the angle brackets; no recipient
    /// yet.
    pub fn start_message(&mut self, sender: &str, authenticated: bool) {
        self.sender.clear();
        self.sender
            .push_str(sender.trim().trim_start_matches('<').trim_end_matches('>'));
        self.first_recipient = None;
        self.authenticated = authenticated;
    }

    /// The message ended (or was aborted): its part of the envelope is
    /// forgotten; the connection's stays.
    pub fn end_message(&mut self) {
        self.sender.clear();
        self.first_recipient = None;
        self.authenticated = false;
    }

    /// The null sender `<>` (white space aside; see
    /// [`identity::is_null_sender`]).
    pub fn is_null_sender(&self) -> bool {
        identity::is_null_sender(&self.sender)
    }

    /// The inputs of an SPF check of this envelope from `ip` (the address
    /// evaluated: the client's or `Prospective`): the sender, white space
    /// trimmed; the HELO name trimmed, or the sender's domain when the
    /// client gave none (docs/policyd-spf-compatibility.md §3, step 3). The
    /// receiver (`%{r}`) is unknown: the check runs at MAIL FROM.
    pub fn spf_request(&self, ip: IpAddr) -> Request<'_> {
        let sender = self.sender.trim();
        let helo = match self.helo.trim() {
            "" => sender_domain(sender),
            helo => helo,
        };
        Request {
            ip,
            helo,
            sender,
            receiver: None,
        }
    }
}

/// The domain of an address (after the last `@`); the whole text when it
/// has no `@`.
fn sender_domain(sender: &str) -> &str {
    sender.rsplit_once('@').map_or(sender, |(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    #[test]
    fn mail_from_loses_its_brackets_and_a_new_message_its_recipient() {
        let mut e = Envelope {
            helo: "mx.example.org".into(),
            first_recipient: Some("<old@rcpt.example>".into()),
            ..Envelope::default()
        };
        e.start_message(" <a@example.org> ", true);
        assert_eq!(e.sender, "a@example.org");
        assert_eq!(e.first_recipient, None);
        assert!(e.authenticated);
        e.start_message("<>", false);
        assert_eq!(e.sender, "");
        assert!(e.is_null_sender());
        assert!(!e.authenticated);
        // The connection's part stays across messages.
        e.end_message();
        assert_eq!(e.helo, "mx.example.org");
    }

    #[test]
    fn the_request_trims_and_takes_the_sender_domain_without_helo() {
        let e = Envelope {
            client_ip: Some(ip()),
            helo: "  ".into(),
            sender: " a@b.example.org ".into(),
            ..Envelope::default()
        };
        let r = e.spf_request(ip());
        assert_eq!((r.helo, r.sender), ("b.example.org", "a@b.example.org"));
        assert_eq!(r.receiver, None);
        let e = Envelope {
            helo: " mx.example.org ".into(),
            ..e
        };
        assert_eq!(e.spf_request(ip()).helo, "mx.example.org");
        // No `@`: the whole sender is the domain.
        let e = Envelope {
            helo: String::new(),
            sender: "example.net".into(),
            ..e
        };
        assert_eq!(e.spf_request(ip()).helo, "example.net");
    }
}
