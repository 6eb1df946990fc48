//! Progress of a snapshot create, restore or fetch: a one-line bar redrawn in
//! place on a terminal, a plain line every few seconds otherwise (journald,
//! a container log), and nothing in tests.
//!
//! Hand-rolled rather than `indicatif`: one line redrawn with `\r`, ~80
//! lines, no new dependency for the node binary.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Receives the byte counts of a long operation.
pub trait Progress {
    /// The operation starts; `total` bytes are expected (0 when unknown).
    fn start(&mut self, total: u64);
    /// `bytes` more are done.
    fn advance(&mut self, bytes: u64);
    /// The operation ended (successfully or not).
    fn finish(&mut self);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// A [`Progress`] that reports nothing (tests, library callers).
pub fn none() -> NoProgress {
    NoProgress
}

/// How often a line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);
/// How often the bar is redrawn on a terminal.
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// Progress on stderr, labelled (`snapshot create: …`).
#[derive(Debug)]
pub struct Stderr {
    label: String,
    tty: bool,
    total: u64,
    done: u64,
    started: Instant,
    last: Option<Instant>,
}

/// Progress on stderr: a bar on a terminal, a line every few seconds otherwise.
pub fn stderr(label: &str) -> Stderr {
    Stderr { label: label.to_string(), tty: std::io::stderr().is_terminal(), total: 0, done: 0, started: Instant::now(), last: None }
}

impl Stderr {
    /// "120.0 MiB of 512.0 MiB, 23%, 40.0 MiB/s".
    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = super::mib((self.done as f64 / secs) as u64);
        if self.total == 0 {
            return format!("{}: {}, {rate}/s", self.label, super::mib(self.done));
        }
        let pct = (self.done.min(self.total) * 100) / self.total;
        format!("{}: {} of {}, {pct}%, {rate}/s", self.label, super::mib(self.done), super::mib(self.total))
    }

    fn show(&mut self, force: bool) {
        let now = Instant::now();
        let every = if self.tty { REDRAW_EVERY } else { LINE_EVERY };
        if !force && self.last.is_some_and(|l| now.duration_since(l) < every) {
            return;
        }
        self.last = Some(now);
        let line = self.line();
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            let filled = if self.total == 0 { 0 } else { (self.done.min(self.total) * 30 / self.total) as usize };
            write!(err, "\r[{}{}] {line}\x1b[K", "#".repeat(filled), " ".repeat(30 - filled))
        } else {
            writeln!(err, "{line}")
        };
    }
}

impl Progress for Stderr {
    fn start(&mut self, total: u64) {
        self.total = total;
        self.done = 0;
        self.started = Instant::now();
        self.show(true);
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        self.show(false);
    }

    fn finish(&mut self) {
        if self.last.is_none() {
            return; // never started (refused before any byte)
        }
        self.show(true);
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}
