//! A held message: the reject SPF would have caused at MAIL FROM, kept
//! until end of message, and the message's bytes as the MTA received them
//! (for [`crate::rescue::verify`]), within two bounds: the bytes of one
//! message (`rescue.max_message_size`) and of all held messages together
//! (`rescue.max_held_bytes`, counted in one [`HeldBudget`] that outlives
//! reloads). The bytes are given back to the budget when the [`Held`] is
//! dropped: at end of message, on abort, when the connection closes.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::policy::decide::Reply;

/// The bytes held by all sessions together.
#[derive(Debug, Default)]
pub struct HeldBudget {
    used: AtomicUsize,
}

impl HeldBudget {
    /// Bytes held now (the capacity of every held buffer).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if `used + n` stays within `cap`.
    fn take(&self, n: usize, cap: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= cap)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        // Never below zero: what is given back was taken.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }
}

/// How far the message's bytes were kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kept {
    /// Everything so far.
    Whole,
    /// Over `rescue.max_message_size`: dropped; the message is not
    /// rescued.
    TooLarge,
    /// `rescue.max_held_bytes` was reached: dropped; the message is
    /// deferred.
    OverTotal,
}

/// The limits a held message is kept within.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_message_size: usize,
    pub max_held_bytes: usize,
}

/// One held message (its bytes are not shown by `Debug`).
pub(super) struct Held {
    /// The reply the reject at MAIL FROM would have had.
    pub reply: Reply,
    /// Test mode: the decision is only logged.
    pub test_mode: bool,
    bytes: Vec<u8>,
    /// Bytes taken from the budget: the buffer's capacity.
    taken: usize,
    kept: Kept,
    /// The empty line after the header is written.
    in_body: bool,
    limits: Limits,
    budget: std::sync::Arc<HeldBudget>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("reply", &self.reply)
            .field("test_mode", &self.test_mode)
            .field("bytes", &self.bytes.len())
            .field("taken", &self.taken)
            .field("kept", &self.kept)
            .finish_non_exhaustive()
    }
}

impl Held {
    pub fn new(
        reply: Reply,
        test_mode: bool,
        limits: Limits,
        budget: std::sync::Arc<HeldBudget>,
    ) -> Held {
        Held {
            reply,
            test_mode,
            bytes: Vec::new(),
            taken: 0,
            kept: Kept::Whole,
            in_body: false,
            limits,
            budget,
        }
    }

    pub fn kept(&self) -> Kept {
        self.kept
    }

    /// Bytes kept so far.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// One header field as the milter protocol gives it: `name`, and
    /// `value` after the colon, with its leading white space when
    /// `leading_space` (SMFIP_HDR_LEADSPC) was negotiated; without it the
    /// MTA eats one space after the colon (Postfix's milter8.c, as
    /// Sendmail does), and one is put back. Lines of a folded value come
    /// separated by a bare LF (Postfix) or CRLF; each becomes CRLF, as the
    /// message had it on the wire (RFC 5322 §2.2.3). What cannot be
    /// restored: white space before the colon (obsolete syntax, RFC 5322
    /// §4.5.3), which Postfix drops from the name; a DKIM signature with
    /// simple header canonicalization over such a field fails (relaxed
    /// removes it anyway, RFC 6376 §3.4.2).
    pub fn header(&mut self, name: &[u8], value: &[u8], leading_space: bool) {
        if self.kept != Kept::Whole || self.in_body {
            return;
        }
        let mut field = Vec::with_capacity(name.len() + value.len() + 4);
        field.extend_from_slice(name);
        field.push(b':');
        if !leading_space {
            field.push(b' ');
        }
        crlf_lines(value, &mut field);
        field.extend_from_slice(b"\r\n");
        self.push(&field);
    }

    /// A chunk of the body, kept as it comes: Postfix ends every body
    /// line in CRLF, never sends the empty line after the header (put
    /// back here) and sends no data with end of message (milter8.c).
    pub fn body(&mut self, chunk: &[u8]) {
        self.end_header();
        self.push(chunk);
    }

    /// The whole message (the empty line after the header added if no
    /// body came), or `None` when it was not kept.
    pub fn message(&mut self) -> Option<&[u8]> {
        self.end_header();
        (self.kept == Kept::Whole).then_some(self.bytes.as_slice())
    }

    fn end_header(&mut self) {
        if !self.in_body {
            self.in_body = true;
            self.push(b"\r\n");
        }
    }

    fn push(&mut self, data: &[u8]) {
        if self.kept != Kept::Whole {
            return;
        }
        let Some(needed) = self
            .bytes
            .len()
            .checked_add(data.len())
            .filter(|&n| n <= self.limits.max_message_size)
        else {
            self.drop_bytes(Kept::TooLarge);
            return;
        };
        if needed > self.bytes.capacity() {
            // Doubling (as Vec does), but never past the message limit;
            // the budget counts what the allocator is asked for.
            let capacity = needed
                .max(self.bytes.capacity().saturating_mul(2))
                .max(4096)
                .min(self.limits.max_message_size)
                .max(needed);
            let more = capacity.saturating_sub(self.taken);
            if !self.budget.take(more, self.limits.max_held_bytes) {
                self.drop_bytes(Kept::OverTotal);
                return;
            }
            self.taken += more;
            self.bytes.reserve_exact(capacity - self.bytes.len());
        }
        self.bytes.extend_from_slice(data);
    }

    /// Stops keeping the message: its bytes are freed and given back.
    fn drop_bytes(&mut self, why: Kept) {
        self.kept = why;
        self.bytes = Vec::new();
        self.budget.give_back(std::mem::take(&mut self.taken));
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give_back(self.taken);
    }
}

/// Appends `value` with every bare LF made CRLF (a CRLF stays).
fn crlf_lines(value: &[u8], out: &mut Vec<u8>) {
    let mut previous = 0u8;
    for &b in value {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn reply() -> Reply {
        Reply {
            code: 550,
            enhanced: Some("5.7.23"),
            text: "no".to_owned(),
        }
    }

    fn held(max_message_size: usize, budget: &Arc<HeldBudget>, max_held_bytes: usize) -> Held {
        Held::new(
            reply(),
            false,
            Limits {
                max_message_size,
                max_held_bytes,
            },
            Arc::clone(budget),
        )
    }

    /// RFC 5322 §2.1, §2.2.3: fields end in CRLF, a folded field's lines
    /// too; an empty line, then the body as it came.
    #[test]
    fn the_message_is_rebuilt_as_received() {
        let budget = Arc::default();
        let mut h = held(1 << 20, &budget, 1 << 20);
        // With SMFIP_HDR_LEADSPC: the value as it stood after the colon,
        // folded with a bare LF (Postfix).
        h.header(b"Subject", b" a\n\tfolded\r\n one", true);
        h.header(b"X-Tight", b"x", true);
        h.body(b"line 1\r\n");
        h.body(b"line 2\r\n");
        assert_eq!(
            h.message(),
            Some(&b"Subject: a\r\n\tfolded\r\n one\r\nX-Tight:x\r\n\r\nline 1\r\nline 2\r\n"[..])
        );
        // Without it, one space is put back.
        let mut h = held(1 << 20, &budget, 1 << 20);
        h.header(b"From", b"a@example.org", false);
        assert_eq!(h.message(), Some(&b"From: a@example.org\r\n\r\n"[..]));
    }

    #[test]
    fn over_the_message_limit_nothing_is_kept_and_the_bytes_go_back() {
        let budget = Arc::new(HeldBudget::default());
        let mut h = held(100, &budget, 1 << 20);
        h.header(b"Subject", b" x", true);
        assert!(budget.used() > 0);
        h.body(&[b'a'; 100]);
        assert_eq!(h.kept(), Kept::TooLarge);
        assert_eq!(h.message(), None);
        assert_eq!(budget.used(), 0);
        // Later chunks are not kept either.
        h.body(b"b");
        assert_eq!((h.len(), budget.used()), (0, 0));
    }

    #[test]
    fn the_total_is_shared_and_given_back_on_drop() {
        let budget = Arc::new(HeldBudget::default());
        let total = 10_000;
        let mut first = held(8_000, &budget, total);
        first.body(&[b'a'; 7_000]);
        assert_eq!(first.kept(), Kept::Whole);
        let taken = budget.used();
        assert!((7_002..=8_000).contains(&taken), "{taken}");
        let mut second = held(8_000, &budget, total);
        second.body(&[b'b'; 5_000]);
        assert_eq!(second.kept(), Kept::OverTotal);
        assert_eq!(second.message(), None);
        assert_eq!(budget.used(), taken);
        drop(first);
        assert_eq!(budget.used(), 0);
        let mut third = held(8_000, &budget, total);
        third.body(&[b'c'; 5_000]);
        assert_eq!(third.kept(), Kept::Whole);
        drop(third);
        assert_eq!(budget.used(), 0);
    }
}
