//! Progress of a long command on a terminal: one line on stderr, rewritten in place
//! (`importing 12/40 (30%)`) or only saying what runs (`polling the upstream…`), and
//! nothing at all when stderr is not a terminal, so scripts and logs see only the
//! command's own output.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// The shortest time between two redraws.
const REDRAW: Duration = Duration::from_millis(100);

/// A progress line for `total` steps of `what`.
pub(super) struct Progress {
    what: &'static str,
    total: usize,
    done: usize,
    on: bool,
    drawn: Option<Instant>,
}

impl Progress {
    /// Shown only when stderr is a terminal.
    pub(super) fn new(what: &'static str, total: usize) -> Self {
        Self::with(what, total, std::io::stderr().is_terminal())
    }

    fn with(what: &'static str, total: usize, on: bool) -> Self {
        Progress {
            what,
            total,
            done: 0,
            on,
            drawn: None,
        }
    }

    /// A line that only says what is going on (`polling the upstream…`), shown at
    /// once and cleared when dropped.
    pub(super) fn saying(what: &'static str) -> Self {
        let mut p = Self::new(what, 0);
        if p.on {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{what}");
            let _ = err.flush();
            p.drawn = Some(Instant::now());
        }
        p
    }

    /// The line as it reads now.
    fn line(&self) -> String {
        let share = (self.done * 100).checked_div(self.total).unwrap_or(100);
        format!("{} {}/{} ({share}%)", self.what, self.done, self.total)
    }

    /// One more step done; redraws at most every 100 ms (and at the last step).
    pub(super) fn step(&mut self) {
        self.done = (self.done + 1).min(self.total);
        if !self.on {
            return;
        }
        let due = self.drawn.is_none_or(|t| t.elapsed() >= REDRAW) || self.done == self.total;
        if due {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K{}", self.line());
            let _ = err.flush();
            self.drawn = Some(Instant::now());
        }
    }

    /// Clears the line, so that what is printed next starts at the left margin.
    pub(super) fn clear(&mut self) {
        if self.on && self.drawn.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.drawn = None;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counts_steps_and_stays_within_the_total() {
        let mut p = Progress::with("importing", 4, false);
        assert_eq!(p.line(), "importing 0/4 (0%)");
        p.step();
        assert_eq!(p.line(), "importing 1/4 (25%)");
        for _ in 0..9 {
            p.step();
        }
        assert_eq!(p.line(), "importing 4/4 (100%)");
        assert_eq!(Progress::with("x", 0, false).line(), "x 0/0 (100%)");
    }
}
