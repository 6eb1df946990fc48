//! The executor: the one place that applies a plan to the runtime, the spell
//! layer and the store (the steps themselves are in `steps.rs`). Every mutating step records its intent first and
//! clears it last (`StepTx`), so `recover` can finish or roll back a step
//! interrupted by a crash (see `journal::Phase`, `recover.rs`).

use super::journal::{now_ms, Journal};
use super::model::*;
use super::plan::{Plan, Step};
use super::report::{Outcome, Report, StepOutcome, StepReport};
use crate::ids::{Alias, BlueprintId, ComponentHash, PackageName, PeerId};
use crate::runtime::{FunctionSig, Runtime, RuntimeError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the executor needs from the spell layer.
pub trait SpellOps: Send + Sync {
    /// Creates the spell with its initial KV; returns the spell id.
    fn install(&self, spell: &DesiredSpell, owner: &PeerId) -> Result<String, String>;
    /// Script and/or trigger changed; KV and history survive.
    fn update(&self, spell: &DesiredSpell, owner: &PeerId) -> Result<(), String>;
    /// Writes the configured KV keys whose configured value changed.
    fn kv_apply(&self, spell: &DesiredSpell) -> Result<Vec<String>, String>;
    /// Deletes the spell and its KV. Removing an absent spell is not an error.
    fn remove(&self, alias: &Alias) -> Result<(), String>;
    /// The spell id, if a spell with this alias exists.
    fn id_of(&self, alias: &Alias) -> Option<String>;
}

/// Where component bytes come from (the embedded catalog, or a test distro).
pub trait ComponentSource: Send + Sync {
    fn bytes(&self, hash: &ComponentHash) -> Option<std::borrow::Cow<'_, [u8]>>;
}

/// `on_failure` from config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Stop deploying after the first failure; the node exits 1.
    Stop,
    /// Deploy everything that can be; the node runs degraded.
    Continue,
}

/// How steps are run.
#[derive(Debug, Clone)]
pub struct ApplyPolicy {
    pub on_failure: FailurePolicy,
    pub call_ttl: Duration,
    /// Attempts for transient failures (busy, timeout) of one init call.
    pub attempts: u32,
    pub backoff: Duration,
    /// Kept data dirs per alias that stay (`system_services.keep_generations`).
    pub keep_generations: usize,
}

impl Default for ApplyPolicy {
    fn default() -> Self {
        Self {
            on_failure: FailurePolicy::Stop,
            call_ttl: Duration::from_secs(60),
            attempts: 3,
            backoff: Duration::from_millis(100),
            keep_generations: 3,
        }
    }
}

/// Errors outside any one step: the store or the runtime is unusable.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("deployer state: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("package {package}, service {alias}: component {component} ({hash}) is not in the distro")]
    MissingComponent { package: PackageName, alias: Alias, component: String, hash: String },
    #[error("package {package}, service {alias}: component {component} is not a valid WebAssembly component: {message}")]
    BadComponent { package: PackageName, alias: Alias, component: String, message: String },
    #[error("package {package}, service {alias}: {message}; the host provides WASI 0.2 (without sockets), wasi:http (outgoing-handler, behind allowed_outbound_hosts) and sysdeploy:host — rebuild the component without those imports")]
    Unlinkable { package: PackageName, alias: Alias, message: String },
    #[error("preparing components: {0}")]
    Join(String),
    #[error("crash recovery: finishing the interrupted {action} of {alias}: {message}")]
    Recovery { alias: String, action: &'static str, message: String },
    #[error(transparent)]
    Observe(#[from] super::observed::ObserveError),
}

/// The executor and recovery, over the runtime, the spell layer and the
/// deployer's journal.
#[derive(Clone)]
pub struct Deployer {
    pub runtime: Runtime,
    pub spells: Arc<dyn SpellOps>,
    pub journal: Journal,
    pub host: PeerId,
    pub policy: ApplyPolicy,
}

impl DeployError {
    /// Bad input (a package whose component does not compile or link), as
    /// opposed to a deployment that failed: exit 2.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, DeployError::BadComponent { .. } | DeployError::Unlinkable { .. })
    }
}

/// A link failure of a desired blueprint, as bad input; other errors as is.
pub fn unlinkable(package: &PackageName, alias: &Alias, e: RuntimeError) -> DeployError {
    match e {
        e @ (RuntimeError::UnsatisfiedImport { .. } | RuntimeError::ImportMismatch { .. }) => {
            DeployError::Unlinkable { package: package.clone(), alias: alias.clone(), message: e.to_string() }
        }
        RuntimeError::Component { message, hash } => {
            DeployError::BadComponent { package: package.clone(), alias: alias.clone(), component: hash, message }
        }
        e => DeployError::Runtime(e),
    }
}

/// What one step failed with.
#[derive(Debug, Clone)]
pub(super) struct StepFailure {
    pub(super) message: String,
    pub(super) attempts: u32,
}

impl Deployer {
    /// The observed state (`observed::observe`): entries joined with every
    /// alias, service and spell.
    pub fn current(&self) -> Result<Current, DeployError> {
        if let Some(c) = self.journal.take_observed() {
            return Ok(c);
        }
        Ok(super::observed::observe(self.journal.store(), Some(&self.host))?)
    }

    /// Makes sure every desired component and blueprint is stored (and
    /// precompiled), then returns the facade exports of each blueprint for
    /// plan-time type checks. Writes nothing when all are present.
    pub async fn prepare(
        &self,
        desired: &Desired,
        source: Arc<dyn ComponentSource>,
    ) -> Result<BTreeMap<BlueprintId, Vec<FunctionSig>>, DeployError> {
        // Compile the missing components concurrently (Cranelift also
        // parallelises inside one component).
        let mut wanted: BTreeMap<ComponentHash, (PackageName, Alias, String)> = BTreeMap::new();
        for p in &desired.packages {
            for s in &p.services {
                for c in &s.blueprint.components {
                    wanted.entry(c.hash).or_insert_with(|| (s.package.clone(), s.alias.clone(), c.name.clone()));
                }
            }
        }
        let mut tasks = Vec::new();
        for (hash, (package, alias, name)) in wanted {
            if source.bytes(&hash).is_none() {
                return Err(DeployError::MissingComponent { package, alias, component: name, hash: hash.to_hex() });
            }
            let rt = self.runtime.clone();
            let src = source.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                let bytes = src.bytes(&hash).expect("checked above");
                rt.add_component(&bytes, Some(hash))
            }));
        }
        for t in tasks {
            t.await.map_err(|e| DeployError::Join(e.to_string()))??;
        }
        let mut exports = BTreeMap::new();
        for p in &desired.packages {
            for s in &p.services {
                if exports.contains_key(&s.blueprint_id) {
                    continue;
                }
                let id = self.runtime.put_blueprint(&s.blueprint)?;
                debug_assert_eq!(id, s.blueprint_id);
                exports.insert(s.blueprint_id, self.runtime.blueprint_exports(&s.blueprint_id)?);
            }
        }
        Ok(exports)
    }

    /// The facade exports of every desired blueprint, for plan-time type
    /// checks, without writing anything or compiling: components without a
    /// loaded module or verified artifact are decoded (`runtime::decode`).
    pub async fn exports(
        &self,
        desired: &Desired,
        source: Arc<dyn ComponentSource>,
    ) -> Result<BTreeMap<BlueprintId, Vec<FunctionSig>>, DeployError> {
        let mut tasks = Vec::new();
        let mut seen = BTreeSet::new();
        for p in &desired.packages {
            for s in &p.services {
                if !seen.insert(s.blueprint_id) {
                    continue;
                }
                let Some(facade) = s.blueprint.components.last() else { continue };
                if source.bytes(&facade.hash).is_none() {
                    return Err(DeployError::MissingComponent {
                        package: s.package.clone(),
                        alias: s.alias.clone(),
                        component: facade.name.clone(),
                        hash: facade.hash.to_hex(),
                    });
                }
                let (rt, src, hash, id) = (self.runtime.clone(), source.clone(), facade.hash, s.blueprint_id);
                let (package, alias, component) = (s.package.clone(), s.alias.clone(), facade.name.clone());
                let blueprint = s.blueprint.clone();
                tasks.push(tokio::task::spawn_blocking(move || {
                    let bytes = src.bytes(&hash).expect("checked above");
                    let sigs = rt.inspect_component(&bytes, &hash).map_err(|e| match e {
                        RuntimeError::Component { message, .. } => {
                            DeployError::BadComponent { package: package.clone(), alias: alias.clone(), component, message }
                        }
                        e => DeployError::Runtime(e),
                    })?;
                    // Imports the host does not provide are bad input too.
                    let lookup = |h: &ComponentHash| src.bytes(h);
                    rt.check_links(&blueprint, &lookup).map_err(|e| unlinkable(&package, &alias, e))?;
                    Ok::<_, DeployError>((id, sigs))
                }));
            }
        }
        let mut out = BTreeMap::new();
        for t in tasks {
            let (id, sigs) = t.await.map_err(|e| DeployError::Join(e.to_string()))??;
            out.insert(id, sigs);
        }
        Ok(out)
    }

    /// Applies the plan. Never panics on a step failure: failures go into
    /// the report, whose outcome the caller turns into an exit code.
    pub async fn apply(&self, desired: &Desired, plan: &Plan) -> Report {
        self.runtime.set_access(super::access::table(desired));
        let started_at = now_ms();
        let t0 = Instant::now();
        let mut reports: Vec<StepReport> = Vec::new();
        let mut failed_packages: BTreeSet<PackageName> = BTreeSet::new();
        let mut stop = false;

        // Removals (packages no longer wanted) first, one by one.
        let wanted: BTreeSet<&PackageName> = desired.packages.iter().map(|p| &p.name).collect();
        let services: BTreeMap<&Alias, &DesiredService> =
            desired.packages.iter().flat_map(|p| p.services.iter().map(|s| (&s.alias, s))).collect();
        let spells: BTreeMap<&Alias, &DesiredSpell> =
            desired.packages.iter().flat_map(|p| p.spells.iter().map(|s| (&s.alias, s))).collect();
        let is_removal = |s: &Step| {
            matches!(s, Step::Remove { .. } | Step::RemoveSpell { .. })
                && !services.contains_key(s.alias())
                && !spells.contains_key(s.alias())
        };
        for step in plan.steps.iter().filter(|s| is_removal(s)) {
            if stop {
                reports.push(StepReport::skipped(step, "not run: an earlier step failed and on_failure = \"stop\""));
                continue;
            }
            let r = self.run_step(step, &services, &spells).await;
            if r.outcome == StepOutcome::Failed {
                if !wanted.contains(step.package()) {
                    failed_packages.insert(step.package().clone());
                }
                stop = self.policy.on_failure == FailurePolicy::Stop;
            }
            reports.push(r);
        }

        // Then packages by dependency level; a level's packages in parallel.
        // Steps are grouped by package once (linear in the plan's size).
        let mut by_package: BTreeMap<&PackageName, Vec<&Step>> = BTreeMap::new();
        for s in plan.steps.iter().filter(|s| !is_removal(s)) {
            by_package.entry(s.package()).or_default().push(s);
        }
        let levels = levels(desired);
        for level in levels {
            let mut futs = Vec::new();
            for p in level {
                let steps: Vec<&Step> = by_package.remove(&p.name).unwrap_or_default();
                let blocked: Vec<&PackageName> = p.depends_on.iter().filter(|d| failed_packages.contains(*d)).collect();
                let stop_now = stop;
                let services = &services;
                let spells = &spells;
                futs.push(async move {
                    let mut out = Vec::new();
                    let mut failed = false;
                    let mut i = 0;
                    while i < steps.len() {
                        let step = steps[i];
                        if stop_now {
                            out.push(StepReport::skipped(step, "not run: an earlier step failed and on_failure = \"stop\""));
                        } else if !blocked.is_empty() {
                            let names: Vec<String> = blocked.iter().map(|b| b.to_string()).collect();
                            out.push(StepReport::skipped(step, &format!("not run: dependency {} failed", names.join(", "))));
                            failed = true;
                        } else if failed {
                            out.push(StepReport::skipped(step, "not run: an earlier step of this package failed"));
                        } else if matches!(step, Step::Install { .. }) {
                            // A run of installs goes as one batch (`batch.rs`).
                            let run: Vec<(&Step, &DesiredService)> = steps[i..]
                                .iter()
                                .take_while(|s| matches!(s, Step::Install { .. }))
                                .map(|s| (*s, services[s.alias()]))
                                .collect();
                            let len = run.len();
                            let results = self.install_batch(&run).await;
                            let reached = results.len();
                            for ((step, _), (r, elapsed)) in run.iter().zip(results) {
                                let r = step_report(step, elapsed, r);
                                failed |= r.outcome == StepOutcome::Failed;
                                out.push(r);
                            }
                            for (step, _) in &run[reached..] {
                                out.push(StepReport::skipped(step, "not run: an earlier step of this package failed"));
                            }
                            i += len;
                            continue;
                        } else {
                            let r = self.run_step(step, services, spells).await;
                            failed |= r.outcome == StepOutcome::Failed;
                            out.push(r);
                        }
                        i += 1;
                    }
                    (p.name.clone(), failed, out)
                });
            }
            for (name, failed, out) in futures::future::join_all(futs).await {
                if failed {
                    failed_packages.insert(name);
                    stop |= self.policy.on_failure == FailurePolicy::Stop;
                }
                reports.extend(out);
            }
        }

        // Kept data dirs beyond the newest `keep_generations` per alias go.
        self.retain_kept(self.policy.keep_generations);

        let outcome = if failed_packages.is_empty() && reports.iter().all(|r| r.outcome != StepOutcome::Failed) {
            Outcome::Ok
        } else if self.policy.on_failure == FailurePolicy::Continue {
            Outcome::Degraded
        } else {
            Outcome::Failed
        };
        Report::new(started_at, t0.elapsed(), outcome, plan.is_noop(), reports)
    }

    async fn run_step(
        &self,
        step: &Step,
        services: &BTreeMap<&Alias, &DesiredService>,
        spells: &BTreeMap<&Alias, &DesiredSpell>,
    ) -> StepReport {
        let t = Instant::now();
        let alias = step.alias();
        let result: Result<u32, StepFailure> = match step {
            Step::Keep { .. } | Step::KeepSpell { .. } => Ok(0),
            Step::Conflict { reason, .. } => Err(StepFailure { message: format!("conflict: {reason}"), attempts: 0 }),
            Step::Install { .. } => self.install_batch(&[(step, services[alias])]).await.pop().map_or_else(|| Ok(0), |(r, _)| r),
            Step::Replace { old_service_id, .. } => self.replace(step, services[alias], old_service_id).await,
            Step::Reinit { service_id, .. } => self.reinit(step, services[alias], service_id).await,
            Step::Remove { service_id, .. } => self.remove(step, service_id).await.map(|_| 0),
            Step::Repair { .. } => self.repair(step).await.map(|_| 0),
            Step::InstallSpell { .. } => self.install_spell(step, spells[alias]).await.map(|_| 0),
            Step::UpdateSpell { .. } => self.update_spell(step, spells[alias]).map(|_| 0),
            Step::KvApply { .. } => self.kv_apply(step, spells[alias]).map(|_| 0),
            Step::RemoveSpell { .. } => self.remove_spell(step).await.map(|_| 0),
        };
        step_report(step, t.elapsed(), result)
    }
}

/// The report of one step that ran; a failure is logged with its package,
/// alias and step.
fn step_report(step: &Step, elapsed: Duration, result: Result<u32, StepFailure>) -> StepReport {
    match result {
        Ok(attempts) => StepReport::ok(step, elapsed, attempts),
        Err(f) => {
            let alias = step.alias();
            let msg = format!("package {}, alias {}, step {}: {}", step.package(), alias, step.kind(), f.message);
            tracing::error!(package = %step.package(), alias = %alias, step = step.kind(), "{msg}");
            StepReport::failed(step, elapsed, msg, f.attempts)
        }
    }
}

pub use super::observed::alias_holders;

/// Packages grouped by dependency level: level 0 has no dependencies among
/// the desired packages; level n depends only on lower levels.
fn levels(desired: &Desired) -> Vec<Vec<&DesiredPackage>> {
    let mut level: BTreeMap<&PackageName, usize> = BTreeMap::new();
    // `desired.packages` is topologically sorted, so one pass suffices.
    for p in &desired.packages {
        let l = p.depends_on.iter().filter_map(|d| level.get(d)).map(|l| l + 1).max().unwrap_or(0);
        level.insert(&p.name, l);
    }
    let max = level.values().copied().max().map_or(0, |m| m + 1);
    let mut out: Vec<Vec<&DesiredPackage>> = vec![Vec::new(); max];
    for p in &desired.packages {
        out[level[&p.name]].push(p);
    }
    out
}
