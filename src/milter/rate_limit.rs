//! At most so many log lines of one kind a second: the listener's refusals
//! and accept errors ([`super::io`]), the sessions that end in an error
//! ([`super::session_log`]). A line left out is counted, and the count goes
//! into the next line written.

use std::time::{Duration, Instant};

/// A one-second window that opens at the first line after the previous
/// window closed, and holds at most `per_second` lines.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    /// When the current window opened; `None` before the first line.
    /// (Visible to the listener's tests, which move it back in time.)
    pub(super) start: Option<Instant>,
    /// Lines written in the current window.
    lines: u32,
    /// Lines left out since the last one written.
    left_out: u64,
}

impl RateLimit {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            start: None,
            lines: 0,
            left_out: 0,
        }
    }

    /// `Some(lines left out since the last line written)` if a line may be
    /// written `now`; `None` (and the line is counted) if not.
    pub fn line(&mut self, now: Instant) -> Option<u64> {
        if self
            .start
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1))
        {
            self.start = Some(now);
            self.lines = 0;
        }
        if self.lines >= self.per_second {
            self.left_out += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_count_of_those_left_out() {
        let mut rate = RateLimit::new(1);
        let t0 = Instant::now();
        assert_eq!(rate.line(t0), Some(0));
        assert_eq!(rate.line(t0 + Duration::from_millis(10)), None);
        assert_eq!(rate.line(t0 + Duration::from_millis(999)), None);
        assert_eq!(rate.line(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(rate.line(t0 + Duration::from_millis(1500)), None);
        assert_eq!(rate.line(t0 + Duration::from_millis(2500)), Some(1));
    }

    #[test]
    fn several_lines_a_second() {
        let mut rate = RateLimit::new(3);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(rate.line(ms(0)), Some(0));
        assert_eq!(rate.line(ms(100)), Some(0));
        assert_eq!(rate.line(ms(200)), Some(0));
        assert_eq!(rate.line(ms(300)), None);
        assert_eq!(rate.line(ms(999)), None);
        // A new window at 1000 ms: the first line carries the count.
        assert_eq!(rate.line(ms(1000)), Some(2));
        assert_eq!(rate.line(ms(1001)), Some(0));
    }
}
