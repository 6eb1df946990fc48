//! The deployment report: every step with its outcome and duration, and the
//! totals. Written to the store on every boot and summarised in the log.

use super::plan::Step;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How the whole deployment went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Some steps failed, `on_failure = "continue"`: the node serves what works.
    Degraded,
    /// Some step failed, `on_failure = "stop"`: the node exits 1.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepOutcome {
    Ok,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub alias: String,
    pub package: String,
    pub action: String,
    pub reason: Option<String>,
    pub outcome: StepOutcome,
    /// Why it failed or was skipped: package, alias, step, function and cause.
    pub error: Option<String>,
    pub duration_ms: f64,
    /// Guest calls made, retries included.
    pub calls: u32,
}

impl StepReport {
    pub fn ok(step: &Step, d: Duration, calls: u32) -> Self {
        Self::new(step, StepOutcome::Ok, None, d, calls)
    }
    pub fn failed(step: &Step, d: Duration, error: String, calls: u32) -> Self {
        Self::new(step, StepOutcome::Failed, Some(error), d, calls)
    }
    pub fn skipped(step: &Step, why: &str) -> Self {
        Self::new(step, StepOutcome::Skipped, Some(why.to_string()), Duration::ZERO, 0)
    }
    fn new(step: &Step, outcome: StepOutcome, error: Option<String>, d: Duration, calls: u32) -> Self {
        Self {
            alias: step.alias().to_string(),
            package: step.package().to_string(),
            action: step.kind().to_string(),
            reason: step.reason().map(str::to_string),
            outcome,
            error,
            duration_ms: d.as_secs_f64() * 1000.0,
            calls,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub started_at_ms: i64,
    pub duration_ms: f64,
    pub outcome: Outcome,
    /// The plan had no changes.
    pub no_changes: bool,
    /// What crash recovery did before planning.
    pub recovered: Vec<String>,
    pub steps: Vec<StepReport>,
    /// Count of steps per action and per outcome.
    pub totals: BTreeMap<String, usize>,
}

impl Report {
    pub fn new(started_at_ms: i64, d: Duration, outcome: Outcome, no_changes: bool, steps: Vec<StepReport>) -> Self {
        let mut totals = BTreeMap::new();
        for s in &steps {
            *totals.entry(s.action.clone()).or_insert(0) += 1;
            *totals.entry(format!("{:?}", s.outcome).to_lowercase()).or_insert(0) += 1;
        }
        Self { started_at_ms, duration_ms: d.as_secs_f64() * 1000.0, outcome, no_changes, recovered: vec![], steps, totals }
    }

    pub fn failures(&self) -> Vec<String> {
        self.steps.iter().filter(|s| s.outcome == StepOutcome::Failed).filter_map(|s| s.error.clone()).collect()
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        if self.no_changes && self.outcome == Outcome::Ok {
            return format!("deployment: no changes, {} up to date ({:.1} ms)", self.steps.len(), self.duration_ms);
        }
        let changed: Vec<String> = self
            .totals
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "keep" | "keep-spell" | "ok" | "failed" | "skipped"))
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        format!(
            "deployment {:?}: {} ({} failed, {} skipped) in {:.1} ms",
            self.outcome,
            if changed.is_empty() { "nothing changed".into() } else { changed.join(", ") },
            self.totals.get("failed").unwrap_or(&0),
            self.totals.get("skipped").unwrap_or(&0),
            self.duration_ms
        )
        .to_lowercase()
    }
}
