//! Sessions that end in a protocol or I/O error, logged.
//!
//! indymilter reports the error that ends a session only as a `tracing`
//! event (at TRACE level, target `indymilter::session`), not to its
//! caller. This subscriber takes exactly those events, and indymilter's
//! own errors, and turns them into one log line each, at most
//! [`LINES_PER_SECOND`] a second: a client sending junk in a loop must
//! not flood the log (the lines left out are counted in the next one).
//! Every other event is refused at its call site, so tracing costs
//! nothing on the message path.

use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

use super::rate_limit::RateLimit;

/// At most this many lines a second.
pub const LINES_PER_SECOND: u32 = 5;

/// Where the lines go.
pub type Sink = Box<dyn Fn(&str) + Send + Sync>;

/// Installs the subscriber for the whole process (once; a second call
/// keeps the first).
pub fn install(sink: Sink) {
    let _ = tracing::subscriber::set_global_default(SessionErrors::new(sink));
}

/// The subscriber.
pub struct SessionErrors {
    sink: Sink,
    rate: Mutex<RateLimit>,
}

impl SessionErrors {
    pub fn new(sink: Sink) -> Self {
        Self {
            sink,
            rate: Mutex::new(RateLimit::new(LINES_PER_SECOND)),
        }
    }

    /// Logs `line` unless this second's lines are all written.
    fn emit(&self, line: &str) {
        let allowed = self
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .line(Instant::now());
        let Some(suppressed) = allowed else {
            return;
        };
        if suppressed > 0 {
            (self.sink)(&format!("{line} ({suppressed} more such lines left out)"));
        } else {
            (self.sink)(line);
        }
    }

    /// The call sites wanted: indymilter's errors, and its session events
    /// that carry nothing but a message (the end-of-session error is one;
    /// per-command events carry more fields and are never enabled).
    fn wanted(meta: &Metadata<'_>) -> bool {
        meta.is_event()
            && meta.target().starts_with("indymilter")
            && (*meta.level() <= Level::WARN
                || (meta.target() == "indymilter::session"
                    && meta.fields().iter().all(|f| f.name() == "message")))
    }
}

/// The `message` field of an event, formatted.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            use fmt::Write as _;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

impl Subscriber for SessionErrors {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if Self::wanted(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        Self::wanted(meta)
    }

    fn event(&self, event: &Event<'_>) {
        let mut message = Message::default();
        event.record(&mut message);
        let text = message.0;
        if let Some(error) = text.strip_prefix("error in session while processing commands: ") {
            self.emit(&format!("milter connection ended by an error: {error}"));
        } else if *event.metadata().level() <= Level::WARN {
            self.emit(&format!("milter library: {text}"));
        }
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn session_errors_are_logged_at_most_five_a_second() {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink_lines = Arc::clone(&lines);
        let subscriber = SessionErrors::new(Box::new(move |l: &str| {
            sink_lines.lock().unwrap().push(l.to_owned());
        }));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..8 {
                // What indymilter's session task says when a session fails.
                tracing::trace!(
                    target: "indymilter::session",
                    "error in session while processing commands: junk {i}"
                );
            }
            // Events of other kinds are not lines.
            tracing::trace!(target: "indymilter::session", "session done processing commands");
            tracing::trace!(target: "indymilter::session", cmd = 1, "got next command");
            tracing::error!(target: "somewhere::else", "not ours");
        });
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(lines[0], "milter connection ended by an error: junk 0");
    }
}
