//! Clock triggers: the trigger type, the injectable unix clock and the pure
//! rule that says when a spell runs next.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time as the scheduler and scripts see it. Injected so that tests can
/// make it follow tokio's paused clock.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// Unix time that moves with tokio's clock: a fixed base plus the tokio time
/// elapsed since creation. Under `tokio::time::pause()` it advances exactly
/// as far as tokio's clock does, so schedules are deterministic in tests.
#[derive(Debug, Clone)]
pub struct TokioClock {
    /// Unix milliseconds at `origin`.
    base_ms: u64,
    /// tokio instant that corresponds to `base_ms`.
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `unix_secs` now. Create it inside the runtime whose
    /// clock it should follow.
    pub fn starting_at(unix_secs: u64) -> Self {
        Self { base_ms: unix_secs * 1000, origin: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.base_ms + self.origin.elapsed().as_millis() as u64
    }
}

/// When a trigger's first run may happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Start {
    /// As soon as the scheduler runs.
    Now,
    /// Not before this unix time (seconds); at once if it is already past.
    At(u64),
}

impl Serialize for Start {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Start::Now => s.serialize_str("now"),
            Start::At(t) => s.serialize_u64(*t),
        }
    }
}

impl<'de> Deserialize<'de> for Start {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Unix(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "now" => Ok(Start::Now),
            Raw::Word(w) => Err(serde::de::Error::custom(format!("expected \"now\" or a unix time in seconds, got {w:?}"))),
            Raw::Unix(t) => Ok(Start::At(t)),
        }
    }
}

/// A clock trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    pub start: Start,
    /// Seconds between the starts of two runs; `0` runs the spell once per
    /// trigger (a changed trigger may run it once more).
    pub period_sec: u64,
    /// No run starts at or after this unix time (seconds).
    #[serde(default)]
    pub end: Option<u64>,
}

/// Longest accepted period: ten years. Keeps arithmetic far from overflow.
pub const MAX_PERIOD_SEC: u64 = 10 * 366 * 24 * 3600;

impl Trigger {
    /// Runs every `period_sec` seconds from now on, forever.
    pub fn periodic(period_sec: u64) -> Self {
        Self { start: Start::Now, period_sec, end: None }
    }

    /// Runs once, now.
    pub fn once() -> Self {
        Self { start: Start::Now, period_sec: 0, end: None }
    }

    /// Why this trigger can never be valid, if so.
    pub fn problem(&self) -> Option<String> {
        if self.period_sec > MAX_PERIOD_SEC {
            return Some(format!("period_sec {} exceeds the maximum of {MAX_PERIOD_SEC} (ten years)", self.period_sec));
        }
        if let (Start::At(start), Some(end)) = (self.start, self.end) {
            if end <= start {
                return Some(format!("end {end} is not after start {start}; the spell would never run"));
            }
        }
        None
    }
}

/// When the spell runs next (unix seconds), or `None` if it never runs again.
///
/// - never ran under this trigger: at `start` (or `now` if that is past);
/// - ran before: at `max(now, last_run + period)`, never before `start`, so a
///   long downtime causes one run, not a burst, and a restart causes none;
/// - `period_sec = 0`: once per trigger;
/// - no run at or after `end`;
/// - a `last_run` after `now` (the wall clock was stepped back) counts as
///   `now`, so the spell waits one period, not until `last_run + period`
///   (the scheduler clamps once and keeps that instant, see `scheduler`).
///
/// `runs_under_trigger` counts the runs since the trigger was last set.
pub fn next_run(trigger: &Trigger, last_run: Option<u64>, runs_under_trigger: u64, now: u64) -> Option<u64> {
    let last_run = last_run.map(|l| l.min(now));
    let earliest = match trigger.start {
        Start::Now => 0,
        Start::At(t) => t,
    };
    let due = match last_run {
        _ if trigger.period_sec == 0 && runs_under_trigger > 0 => return None,
        Some(last) if trigger.period_sec > 0 => last.saturating_add(trigger.period_sec),
        _ => 0,
    };
    let at = due.max(earliest).max(now);
    match trigger.end {
        Some(end) if at >= end => None,
        _ => Some(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(start: Start, period_sec: u64, end: Option<u64>) -> Trigger {
        Trigger { start, period_sec, end }
    }

    #[test]
    fn first_run_at_start_or_now() {
        assert_eq!(next_run(&t(Start::Now, 10, None), None, 0, 100), Some(100));
        assert_eq!(next_run(&t(Start::At(150), 10, None), None, 0, 100), Some(150));
        assert_eq!(next_run(&t(Start::At(50), 10, None), None, 0, 100), Some(100));
    }

    #[test]
    fn periodic_without_burst() {
        let tr = t(Start::Now, 10, None);
        // restart 3 s after a run: wait for the period, no extra run
        assert_eq!(next_run(&tr, Some(100), 5, 103), Some(110));
        // long downtime: one run now, not one per missed period
        assert_eq!(next_run(&tr, Some(100), 5, 1000), Some(1000));
        assert_eq!(next_run(&tr, Some(1000), 6, 1000), Some(1010));
    }

    #[test]
    fn period_zero_runs_once_per_trigger() {
        let tr = Trigger::once();
        assert_eq!(next_run(&tr, None, 0, 100), Some(100));
        assert_eq!(next_run(&tr, Some(100), 1, 5000), None);
        // the trigger was changed since that run: once more
        assert_eq!(next_run(&tr, Some(100), 0, 5000), Some(5000));
    }

    #[test]
    fn end_stops() {
        let tr = t(Start::Now, 10, Some(130));
        assert_eq!(next_run(&tr, Some(110), 2, 110), Some(120));
        assert_eq!(next_run(&tr, Some(120), 3, 120), None);
        assert_eq!(next_run(&tr, None, 0, 200), None);
    }

    #[test]
    fn a_last_run_in_the_future_counts_as_now() {
        let tr = t(Start::Now, 10, None);
        assert_eq!(next_run(&tr, Some(1_000_000), 3, 100), Some(110));
    }

    #[test]
    fn start_holds_back_a_changed_trigger() {
        assert_eq!(next_run(&t(Start::At(500), 10, None), Some(100), 0, 120), Some(500));
    }

    #[test]
    fn trigger_serde_and_problems() {
        let tr: Trigger = serde_json::from_str(r#"{"start":"now","period_sec":5}"#).unwrap();
        assert_eq!(tr, Trigger::periodic(5));
        let tr: Trigger = serde_json::from_str(r#"{"start":42,"period_sec":0,"end":99}"#).unwrap();
        assert_eq!(tr, t(Start::At(42), 0, Some(99)));
        assert_eq!(serde_json::to_string(&Trigger::once()).unwrap(), r#"{"start":"now","period_sec":0,"end":null}"#);
        assert!(serde_json::from_str::<Trigger>(r#"{"start":"later","period_sec":5}"#).is_err());
        assert!(t(Start::At(10), 1, Some(10)).problem().is_some());
        assert!(t(Start::Now, MAX_PERIOD_SEC + 1, None).problem().is_some());
        assert!(Trigger::periodic(60).problem().is_none());
    }
}
