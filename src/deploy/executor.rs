//! The executor: the one place that applies a plan to the runtime, the spell
//! layer and the store. Every mutating step records its intent first and
//! clears it last, so `recover` can finish or roll back a step interrupted
//! by a crash (see `journal::Phase`).

use super::journal::{now_ms, Intent, Journal, Phase};
use super::model::*;
use super::plan::{kv_applied_of, Plan, Step};
use super::report::{Outcome, Report, StepOutcome, StepReport};
use crate::ids::{Alias, BlueprintId, ComponentHash, PackageName, PeerId, ServiceId};
use crate::runtime::{AliasTarget, CallError, FunctionSig, Runtime, RuntimeError};
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
}

impl Default for ApplyPolicy {
    fn default() -> Self {
        Self { on_failure: FailurePolicy::Stop, call_ttl: Duration::from_secs(60), attempts: 3, backoff: Duration::from_millis(100) }
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
    #[error("preparing components: {0}")]
    Join(String),
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

/// What one step failed with.
#[derive(Debug, Clone)]
struct StepFailure {
    message: String,
    attempts: u32,
}

impl Deployer {
    /// The current state: the deployer's entries plus every bound alias.
    pub fn current(&self) -> Result<Current, DeployError> {
        let deployed = self.journal.deployed()?;
        let aliases = alias_holders(self.runtime.aliases());
        Ok(Current { host: Some(self.host.clone()), deployed, aliases })
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
    /// checks, without writing anything (new components are compiled in
    /// memory, concurrently, and kept for `prepare`).
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
                tasks.push(tokio::task::spawn_blocking(move || {
                    let bytes = src.bytes(&hash).expect("checked above");
                    rt.inspect_component(&bytes, &hash).map(|sigs| (id, sigs)).map_err(|e| match e {
                        RuntimeError::Component { message, .. } => DeployError::BadComponent { package, alias, component, message },
                        e => DeployError::Runtime(e),
                    })
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
                    for step in steps {
                        if stop_now {
                            out.push(StepReport::skipped(step, "not run: an earlier step failed and on_failure = \"stop\""));
                        } else if !blocked.is_empty() {
                            let names: Vec<String> = blocked.iter().map(|b| b.to_string()).collect();
                            out.push(StepReport::skipped(step, &format!("not run: dependency {} failed", names.join(", "))));
                            failed = true;
                        } else if failed {
                            out.push(StepReport::skipped(step, "not run: an earlier step of this package failed"));
                        } else {
                            let r = self.run_step(step, services, spells).await;
                            failed |= r.outcome == StepOutcome::Failed;
                            out.push(r);
                        }
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
            Step::Install { .. } => self.install(step, services[alias]).await,
            Step::Replace { old_service_id, .. } => self.replace(step, services[alias], old_service_id).await,
            Step::Reinit { service_id, .. } => self.reinit(step, services[alias], service_id).await,
            Step::Remove { service_id, .. } => self.remove(step, service_id).await.map(|_| 0),
            Step::InstallSpell { .. } => self.install_spell(step, spells[alias]).await.map(|_| 0),
            Step::UpdateSpell { .. } => self.update_spell(step, spells[alias]).map(|_| 0),
            Step::KvApply { .. } => self.kv_apply(step, spells[alias]).map(|_| 0),
            Step::RemoveSpell { .. } => self.remove_spell(step).map(|_| 0),
        };
        let elapsed = t.elapsed();
        match result {
            Ok(attempts) => StepReport::ok(step, elapsed, attempts),
            Err(f) => {
                let msg = format!("package {}, alias {}, step {}: {}", step.package(), alias, step.kind(), f.message);
                tracing::error!(package = %step.package(), alias = %alias, step = step.kind(), "{msg}");
                StepReport::failed(step, elapsed, msg, f.attempts)
            }
        }
    }

    fn entry_for_service(&self, s: &DesiredService, id: &ServiceId, created_at: i64) -> Deployed {
        Deployed {
            alias: s.alias.clone(),
            package: s.package.clone(),
            version: s.version.clone(),
            kind: DeployedKind::Service {
                service_id: id.clone(),
                blueprint_id: s.blueprint_id,
                components: s.components(),
                init_hash: s.init_hash(),
                init_snapshot: s.init_snapshot(),
            },
            created_at,
            updated_at: now_ms(),
        }
    }

    /// Runs init calls on `id` (all of them, or only on-change ones), with
    /// retries for transient failures. Returns the attempts used.
    async fn run_init(&self, s: &DesiredService, id: &ServiceId, only_on_change: bool) -> Result<u32, StepFailure> {
        let mut total = 0;
        for call in s.init.iter().filter(|c| !only_on_change || c.run == InitRun::OnChange) {
            let args = serde_json::Value::Array(call.args.clone());
            let mut attempt = 0;
            loop {
                attempt += 1;
                total += 1;
                match self.runtime.call_with_ttl(id.as_str(), &call.function, args.clone(), self.policy.call_ttl).await {
                    Ok(_) => break,
                    Err(e) if attempt < self.policy.attempts && is_transient(&e) => {
                        let wait = self.policy.backoff * 2u32.pow(attempt - 1);
                        tracing::warn!(alias = %s.alias, function = %call.function, attempt, "transient init failure, retrying in {wait:?}: {e}");
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => {
                        return Err(StepFailure {
                            message: format!("function {}: {}", call.function, redact_call_error(&e, call.is_secret())),
                            attempts: total,
                        });
                    }
                }
            }
        }
        Ok(total)
    }

    async fn install(&self, step: &Step, s: &DesiredService) -> Result<u32, StepFailure> {
        let fail = |m: String| StepFailure { message: m, attempts: 0 };
        let mut intent = Intent { step: step.clone(), phase: Phase::Started, new_service: None, entry: None };
        self.journal.put_intent(&intent).map_err(|e| fail(e.to_string()))?;
        let id = self.runtime.create_service(&s.blueprint_id, &self.host).await.map_err(|e| fail(e.to_string()))?;
        crash_point!("deploy::install::created");
        intent.phase = Phase::Created;
        intent.new_service = Some(id.clone());
        intent.entry = Some(self.entry_for_service(s, &id, now_ms()));
        self.journal.put_intent(&intent).map_err(|e| fail(e.to_string()))?;
        let attempts = match self.run_init(s, &id, false).await {
            Ok(n) => n,
            Err(f) => {
                self.rollback_new_service(step.alias(), &id).await;
                return Err(f);
            }
        };
        crash_point!("deploy::install::initialised");
        if let Err(e) = self.runtime.bind_alias(&s.alias, AliasTarget::Service(id.clone()), &self.host) {
            self.rollback_new_service(step.alias(), &id).await;
            return Err(fail(e.to_string()));
        }
        crash_point!("deploy::install::bound");
        self.journal.complete(&s.alias, intent.entry.as_ref()).map_err(|e| fail(e.to_string()))?;
        Ok(attempts)
    }

    async fn replace(&self, step: &Step, s: &DesiredService, old: &ServiceId) -> Result<u32, StepFailure> {
        let fail = |m: String| StepFailure { message: m, attempts: 0 };
        let created_at = self.journal.deployed().ok().and_then(|d| d.get(&s.alias).map(|e| e.created_at)).unwrap_or_else(now_ms);
        let mut intent = Intent { step: step.clone(), phase: Phase::Started, new_service: None, entry: None };
        self.journal.put_intent(&intent).map_err(|e| fail(e.to_string()))?;
        let id = self.runtime.create_service(&s.blueprint_id, &self.host).await.map_err(|e| fail(e.to_string()))?;
        crash_point!("deploy::replace::created");
        intent.phase = Phase::Created;
        intent.new_service = Some(id.clone());
        intent.entry = Some(self.entry_for_service(s, &id, created_at));
        self.journal.put_intent(&intent).map_err(|e| fail(e.to_string()))?;
        if s.keep_data {
            if let Err(e) = self.runtime.copy_data(old, &id).await {
                self.rollback_new_service(step.alias(), &id).await;
                return Err(fail(format!("carrying data over from {old}: {e}")));
            }
            crash_point!("deploy::replace::copied");
        }
        let attempts = match self.run_init(s, &id, false).await {
            Ok(n) => n,
            Err(f) => {
                self.rollback_new_service(step.alias(), &id).await;
                return Err(f);
            }
        };
        intent.phase = Phase::Initialised;
        self.journal.put_intent(&intent).map_err(|e| fail(e.to_string()))?;
        crash_point!("deploy::replace::initialised");
        // The swap: from here on recovery rolls forward.
        if let Err(e) = self.runtime.rebind_alias(&s.alias, AliasTarget::Service(id.clone()), &self.host) {
            self.rollback_new_service(step.alias(), &id).await;
            return Err(fail(e.to_string()));
        }
        crash_point!("deploy::replace::swapped");
        intent.phase = Phase::Swapped;
        self.journal.put_intent(&intent).map_err(|e| fail(e.to_string()))?;
        self.journal.upsert(intent.entry.as_ref().expect("set above")).map_err(|e| fail(e.to_string()))?;
        crash_point!("deploy::replace::recorded");
        if let Err(e) = self.runtime.remove_service(old, false).await {
            // The new service serves; the old one is an orphan GC removes later.
            tracing::warn!(alias = %s.alias, "removing replaced service {old}: {e}");
        }
        crash_point!("deploy::replace::old-removed");
        self.journal.clear_intent(&s.alias).map_err(|e| fail(e.to_string()))?;
        Ok(attempts)
    }

    async fn reinit(&self, step: &Step, s: &DesiredService, id: &ServiceId) -> Result<u32, StepFailure> {
        let fail = |m: String| StepFailure { message: m, attempts: 0 };
        let created_at = self.journal.deployed().ok().and_then(|d| d.get(&s.alias).map(|e| e.created_at)).unwrap_or_else(now_ms);
        let entry = self.entry_for_service(s, id, created_at);
        let intent = Intent { step: step.clone(), phase: Phase::Started, new_service: None, entry: Some(entry.clone()) };
        self.journal.put_intent(&intent).map_err(|e| fail(e.to_string()))?;
        crash_point!("deploy::reinit::started");
        let attempts = match self.run_init(s, id, true).await {
            Ok(n) => n,
            Err(f) => {
                let _ = self.journal.clear_intent(&s.alias);
                return Err(f);
            }
        };
        crash_point!("deploy::reinit::called");
        self.journal.complete(&s.alias, Some(&entry)).map_err(|e| fail(e.to_string()))?;
        Ok(attempts)
    }

    async fn remove(&self, step: &Step, id: &ServiceId) -> Result<(), StepFailure> {
        let fail = |m: String| StepFailure { message: m, attempts: 0 };
        let intent = Intent { step: step.clone(), phase: Phase::Started, new_service: None, entry: None };
        self.journal.put_intent(&intent).map_err(|e| fail(e.to_string()))?;
        crash_point!("deploy::remove::started");
        self.finish_remove(step.alias(), id).await.map_err(fail)
    }

    /// Unbinds (if still ours), removes the service (if it exists), deletes
    /// the entry and the intent. Idempotent: recovery calls it too.
    async fn finish_remove(&self, alias: &Alias, id: &ServiceId) -> Result<(), String> {
        if let Some(b) = self.runtime.alias(alias) {
            if b.target == AliasTarget::Service(id.clone()) && b.owner == self.host {
                self.runtime.unbind_alias(alias, &self.host).map_err(|e| e.to_string())?;
            }
        }
        crash_point!("deploy::remove::unbound");
        if self.runtime.resolve(id.as_str()).is_some() {
            self.runtime.remove_service(id, false).await.map_err(|e| e.to_string())?;
        }
        crash_point!("deploy::remove::removed");
        self.journal.complete(alias, None).map_err(|e| e.to_string())
    }

    fn spell_entry(&self, s: &DesiredSpell, spell_id: String, created_at: i64) -> Deployed {
        Deployed {
            alias: s.alias.clone(),
            package: s.package.clone(),
            version: s.version.clone(),
            kind: DeployedKind::Spell {
                spell_id,
                script_hash: s.script_hash.clone(),
                trigger: s.trigger.clone(),
                kv_applied: kv_applied_of(s),
            },
            created_at,
            updated_at: now_ms(),
        }
    }

    async fn install_spell(&self, step: &Step, s: &DesiredSpell) -> Result<(), StepFailure> {
        let fail = |m: String| StepFailure { message: m, attempts: 0 };
        let mut intent = Intent { step: step.clone(), phase: Phase::Started, new_service: None, entry: None };
        self.journal.put_intent(&intent).map_err(|e| fail(e.to_string()))?;
        // A leftover spell under this alias from an interrupted install or an
        // alias that changes kind: start clean.
        if self.spells.id_of(&s.alias).is_some() {
            self.spells.remove(&s.alias).map_err(fail)?;
        }
        if let Some(d) = self.journal.deployed().map_err(|e| fail(e.to_string()))?.get(&s.alias) {
            if let DeployedKind::Service { service_id, .. } = &d.kind {
                self.finish_remove(&s.alias, service_id).await.map_err(fail)?;
                self.journal.put_intent(&intent).map_err(|e| fail(e.to_string()))?;
            }
        }
        let id = self.spells.install(s, &self.host).map_err(fail)?;
        crash_point!("deploy::install-spell::created");
        intent.phase = Phase::Created;
        intent.entry = Some(self.spell_entry(s, id.clone(), now_ms()));
        self.journal.put_intent(&intent).map_err(|e| fail(e.to_string()))?;
        if let Err(e) = self.runtime.bind_alias(&s.alias, AliasTarget::Spell(id), &self.host) {
            let _ = self.spells.remove(&s.alias);
            let _ = self.journal.clear_intent(&s.alias);
            return Err(fail(e.to_string()));
        }
        crash_point!("deploy::install-spell::bound");
        self.journal.complete(&s.alias, intent.entry.as_ref()).map_err(|e| fail(e.to_string()))
    }

    fn update_spell(&self, step: &Step, s: &DesiredSpell) -> Result<(), StepFailure> {
        let fail = |m: String| StepFailure { message: m, attempts: 0 };
        let old = self.journal.deployed().map_err(|e| fail(e.to_string()))?.remove(&s.alias);
        let Some(Deployed { kind: DeployedKind::Spell { spell_id, kv_applied, .. }, created_at, .. }) = old else {
            return Err(fail("no spell is recorded under this alias".into()));
        };
        let mut entry = self.spell_entry(s, spell_id, created_at);
        // KV is applied by its own step; keep the old merge base here.
        if let DeployedKind::Spell { kv_applied: k, .. } = &mut entry.kind {
            *k = kv_applied;
        }
        self.journal
            .put_intent(&Intent { step: step.clone(), phase: Phase::Started, new_service: None, entry: Some(entry.clone()) })
            .map_err(|e| fail(e.to_string()))?;
        crash_point!("deploy::update-spell::started");
        self.spells.update(s, &self.host).map_err(fail)?;
        crash_point!("deploy::update-spell::updated");
        self.journal.complete(&s.alias, Some(&entry)).map_err(|e| fail(e.to_string()))
    }

    fn kv_apply(&self, step: &Step, s: &DesiredSpell) -> Result<(), StepFailure> {
        let fail = |m: String| StepFailure { message: m, attempts: 0 };
        let old = self.journal.deployed().map_err(|e| fail(e.to_string()))?.remove(&s.alias);
        let Some(Deployed { kind: DeployedKind::Spell { spell_id, script_hash, trigger, .. }, created_at, .. }) = old else {
            return Err(fail("no spell is recorded under this alias".into()));
        };
        let mut entry = self.spell_entry(s, spell_id, created_at);
        // Script/trigger are updated by their own step; only the KV base moves.
        if let DeployedKind::Spell { script_hash: h, trigger: t, .. } = &mut entry.kind {
            *h = script_hash;
            *t = trigger;
        }
        self.journal
            .put_intent(&Intent { step: step.clone(), phase: Phase::Started, new_service: None, entry: Some(entry.clone()) })
            .map_err(|e| fail(e.to_string()))?;
        crash_point!("deploy::kv-apply::started");
        self.spells.kv_apply(s).map_err(fail)?;
        crash_point!("deploy::kv-apply::applied");
        self.journal.complete(&s.alias, Some(&entry)).map_err(|e| fail(e.to_string()))
    }

    fn remove_spell(&self, step: &Step) -> Result<(), StepFailure> {
        let fail = |m: String| StepFailure { message: m, attempts: 0 };
        self.journal
            .put_intent(&Intent { step: step.clone(), phase: Phase::Started, new_service: None, entry: None })
            .map_err(|e| fail(e.to_string()))?;
        crash_point!("deploy::remove-spell::started");
        self.finish_remove_spell(step.alias()).map_err(fail)
    }

    fn finish_remove_spell(&self, alias: &Alias) -> Result<(), String> {
        if let Some(b) = self.runtime.alias(alias) {
            if matches!(b.target, AliasTarget::Spell(_)) && b.owner == self.host {
                self.runtime.unbind_alias(alias, &self.host).map_err(|e| e.to_string())?;
            }
        }
        crash_point!("deploy::remove-spell::unbound");
        self.spells.remove(alias)?;
        self.journal.complete(alias, None).map_err(|e| e.to_string())
    }

    /// Undo of a half-made install/replace: the new service goes, the alias
    /// and the old service are untouched, the intent is cleared.
    async fn rollback_new_service(&self, alias: &Alias, id: &ServiceId) {
        if let Err(e) = self.runtime.remove_service(id, false).await {
            tracing::warn!(%alias, "rolling back new service {id}: {e}; GC will retry");
        }
        if let Err(e) = self.journal.clear_intent(alias) {
            tracing::warn!(%alias, "clearing intent: {e}");
        }
    }

    /// Finishes or rolls back every step a crash interrupted, then removes
    /// orphans (host-owned services no alias and no entry refer to, spells
    /// without an entry, unreferenced components, artifacts and data dirs).
    /// Returns one line per action, for the report.
    pub async fn recover(&self) -> Result<Vec<String>, DeployError> {
        let mut done = Vec::new();
        for intent in self.journal.intents()? {
            let alias = intent.step.alias().clone();
            let bound = self.runtime.alias(&alias);
            let line = match &intent.step {
                Step::Install { .. } | Step::Replace { .. } => {
                    let new = intent.new_service.clone();
                    let swapped = matches!((&bound, &new), (Some(b), Some(n)) if b.target == AliasTarget::Service(n.clone()));
                    if swapped {
                        let entry = intent.entry.clone().expect("entry is recorded with the new service");
                        self.journal.upsert(&entry)?;
                        if let Step::Replace { old_service_id, .. } = &intent.step {
                            if self.runtime.resolve(old_service_id.as_str()).is_some() {
                                self.runtime.remove_service(old_service_id, false).await?;
                            }
                        }
                        self.journal.clear_intent(&alias)?;
                        format!("{alias}: finished interrupted {}", intent.step.kind())
                    } else {
                        if let Some(n) = &new {
                            if self.runtime.resolve(n.as_str()).is_some() {
                                self.runtime.remove_service(n, false).await?;
                            }
                        }
                        self.journal.clear_intent(&alias)?;
                        format!("{alias}: rolled back interrupted {}", intent.step.kind())
                    }
                }
                Step::Reinit { .. } | Step::UpdateSpell { .. } | Step::KvApply { .. } => {
                    // Idempotent steps: the entry still says "old", so the
                    // plan runs the step again.
                    self.journal.clear_intent(&alias)?;
                    format!("{alias}: interrupted {} will run again", intent.step.kind())
                }
                Step::Remove { service_id, .. } => {
                    self.finish_remove(&alias, service_id).await.map_err(|e| DeployError::Join(e))?;
                    format!("{alias}: finished interrupted remove")
                }
                Step::RemoveSpell { .. } => {
                    self.finish_remove_spell(&alias).map_err(DeployError::Join)?;
                    format!("{alias}: finished interrupted remove-spell")
                }
                Step::InstallSpell { .. } => {
                    let spell_bound = matches!(&bound, Some(b) if matches!(b.target, AliasTarget::Spell(_)) && b.owner == self.host);
                    if spell_bound && intent.entry.is_some() {
                        self.journal.complete(&alias, intent.entry.as_ref())?;
                        format!("{alias}: finished interrupted install-spell")
                    } else {
                        if spell_bound {
                            self.runtime.unbind_alias(&alias, &self.host)?;
                        }
                        self.spells.remove(&alias).map_err(DeployError::Join)?;
                        self.journal.clear_intent(&alias)?;
                        format!("{alias}: rolled back interrupted install-spell")
                    }
                }
                Step::Keep { .. } | Step::KeepSpell { .. } | Step::Conflict { .. } => {
                    self.journal.clear_intent(&alias)?;
                    continue;
                }
            };
            tracing::info!("recovery: {line}");
            done.push(line);
        }
        done.extend(self.sweep_orphans().await?);
        Ok(done)
    }

    /// Host-owned services and spells that neither an alias nor an entry
    /// refers to are leftovers of a crash; remove them, then GC storage.
    async fn sweep_orphans(&self) -> Result<Vec<String>, DeployError> {
        let mut done = Vec::new();
        let entries = self.journal.deployed()?;
        let mut referenced: BTreeSet<ServiceId> = BTreeSet::new();
        for e in entries.values() {
            if let DeployedKind::Service { service_id, .. } = &e.kind {
                referenced.insert(service_id.clone());
            }
        }
        for b in self.runtime.aliases() {
            if let AliasTarget::Service(id) = b.target {
                referenced.insert(id);
            }
        }
        for s in self.runtime.list_services() {
            if s.owner == self.host && !referenced.contains(&s.id) {
                self.runtime.remove_service(&s.id, false).await?;
                done.push(format!("removed orphan service {}", s.id));
            }
        }
        // Deployer entries whose alias is gone were finished above; an entry
        // whose alias points elsewhere is left for the plan to reconcile.
        for removed in self.runtime.gc()? {
            done.push(format!("gc: {removed}"));
        }
        Ok(done)
    }
}

/// Who holds each bound alias, as the planner sees it.
pub fn alias_holders(bindings: Vec<crate::runtime::AliasBinding>) -> BTreeMap<Alias, AliasHolder> {
    bindings
        .into_iter()
        .map(|b| {
            let (kind, target) = match &b.target {
                AliasTarget::Service(id) => ("service", id.to_string()),
                AliasTarget::Spell(id) => ("spell", id.clone()),
            };
            (b.alias, AliasHolder { owner: b.owner, kind: kind.into(), target })
        })
        .collect()
}

fn is_transient(e: &CallError) -> bool {
    matches!(e, CallError::Busy { .. } | CallError::Timeout { .. })
}

/// A call error's text, with argument values redacted when they are secret
/// (a BadArgument echoes the JSON it got).
fn redact_call_error(e: &CallError, secret: bool) -> String {
    match e {
        CallError::BadArgument { target, function, param, expected, .. } if secret => {
            format!("{target}.{function}: parameter {param}: expected {expected}, got <redacted>")
        }
        e => e.to_string(),
    }
}

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
