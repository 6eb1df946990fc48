//! The node daemon: boot sequence (lock → recover → plan → apply → spells →
//! API ready), the API backend over runtime, spells and store, live reload,
//! and ordered shutdown on SIGINT/SIGTERM.
//!
//! One control loop (`run_async`) owns recovery, deployments, reloads and
//! shutdown: the API only sends it reload requests, so nothing deploys
//! concurrently with recovery or with another deployment, and a signal is
//! seen at the next await of whatever the loop is doing.

use crate::api::{self, ApiConfig, Backend, BoxFuture, Health, Metrics, ReloadError};
use crate::config::{self, EffectiveConfig, LoadOptions, OnFailure};
use crate::deploy::desired::{self, CatalogComponents};
use crate::deploy::journal::Journal;
use crate::deploy::{self, ApplyPolicy, Deployer, DesiredSpell, FailurePolicy, Outcome, Report, SpellOps};
use crate::distro::Catalog;
use crate::exit::Exit;
use crate::ids::{Alias, PeerId};
use crate::runtime::{CallError, Runtime, RuntimeConfig, RuntimeOptions};
use crate::spell::{self, Scheduler, ServiceCaller, SpellConfig, SpellDef, Spells, Start, Trigger};
use crate::state::StateDir;
use crate::store::Store;
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long in-flight API requests may take to finish at shutdown.
pub const API_DRAIN: Duration = Duration::from_secs(10);
/// How long a running spell may take to finish at shutdown.
pub const SPELL_GRACE: Duration = Duration::from_secs(5);
/// Reload requests from the API waiting for the control loop; more get 503 `busy`.
const RELOAD_QUEUE: usize = 16;

/// Why a deployment could not even start, mapped to an exit code.
#[derive(Debug)]
pub struct DeployFailure {
    pub exit: Exit,
    pub message: String,
}

/// What a successful reload did: the deployment report and the changed
/// settings that wait for a restart.
#[derive(Debug)]
pub struct Reloaded {
    pub report: Report,
    /// `key: running → configured` for every changed setting that needs a restart.
    pub needs_restart: Vec<String>,
}

/// A reload request from the API, answered by the control loop.
struct ReloadRequest {
    reply: tokio::sync::oneshot::Sender<Result<Value, ReloadError>>,
}

/// Everything checked before a deployment touches anything.
struct Validated {
    desired: deploy::Desired,
    plan: deploy::Plan,
    source: Arc<CatalogComponents>,
    misses_before: crate::runtime::CacheStats,
    /// Pins applied and the config used (generations, issue 17).
    resolved: deploy::generations::Resolved,
}

impl DeployFailure {
    fn new(exit: Exit, message: impl std::fmt::Display) -> Self {
        Self { exit, message: message.to_string() }
    }
}

/// The running node: everything the API, the scheduler and reloads share.
pub struct Node {
    /// Held for the node's lifetime: the state-dir lock.
    state: StateDir,
    runtime: Runtime,
    spells: Spells,
    deployer: Deployer,
    metrics: Metrics,
    catalog: &'static Catalog,
    /// Reloads re-read the config file with the same env and flags.
    load_opts: LoadOptions,
    config: RwLock<EffectiveConfig>,
    health: RwLock<Health>,
    /// One deployment (boot or reload) at a time.
    deploying: tokio::sync::Mutex<()>,
    /// A reload runs now (`/readyz` says so; `/health` keeps its status).
    reloading: std::sync::atomic::AtomicBool,
    /// systemd's notify socket, when started under it.
    notifier: crate::notify::Notifier,
}

/// Lets spells call services through the runtime.
struct RuntimeCaller {
    runtime: Runtime,
    metrics: Metrics,
}

impl RuntimeCaller {
    /// One spell call as `origin`, timed and counted like an API call.
    fn call_as(
        &self,
        origin: crate::runtime::CallOrigin,
        alias: &str,
        function: &str,
        args: Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send + '_>> {
        let (alias, function) = (alias.to_string(), function.to_string());
        Box::pin(async move {
            let t = std::time::Instant::now();
            let r = self.runtime.call_as(&origin, &alias, &function, args).await;
            self.metrics.observe_call(&alias, t.elapsed(), r.as_ref().err().map(crate::api::call_error_code));
            record_guest_usage(&self.runtime, &self.metrics, &alias);
            r.map_err(|e| e.to_string())
        })
    }
}

impl ServiceCaller for RuntimeCaller {
    fn call(
        &self,
        alias: &str,
        function: &str,
        args: Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send + '_>> {
        self.call_as(crate::runtime::CallOrigin::Spell(None), alias, function, args)
    }
    fn call_from(
        &self,
        spell: &Alias,
        alias: &str,
        function: &str,
        args: Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send + '_>> {
        let origin = crate::runtime::CallOrigin::Spell(self.runtime.access().spell_package(spell).cloned());
        self.call_as(origin, alias, function, args)
    }
}

/// The executor's view of the spell layer.
struct SpellLayer(Spells);

fn spell_def(s: &DesiredSpell, owner: &PeerId) -> SpellDef {
    SpellDef {
        alias: s.alias.clone(),
        owner: owner.clone(),
        script: s.script.clone(),
        script_hash: s.script_hash.clone(),
        trigger: Trigger { start: s.trigger.start.map_or(Start::Now, Start::At), period_sec: s.trigger.period_sec, end: s.trigger.end },
    }
}

impl SpellOps for SpellLayer {
    fn install(&self, s: &DesiredSpell, owner: &PeerId) -> Result<String, String> {
        let id = self.0.install(&spell_def(s, owner), &s.kv).map_err(|e| e.to_string())?;
        self.0.reschedule();
        Ok(id.to_string())
    }
    fn update(&self, s: &DesiredSpell, owner: &PeerId) -> Result<(), String> {
        self.0.update(&spell_def(s, owner)).map_err(|e| e.to_string())?;
        self.0.reschedule();
        Ok(())
    }
    fn kv_apply(&self, s: &DesiredSpell) -> Result<Vec<String>, String> {
        self.0.kv_apply(&s.alias, &s.kv).map_err(|e| e.to_string())
    }
    fn remove(&self, alias: &Alias) -> Result<(), String> {
        if self.0.get(alias).is_none() {
            return Ok(());
        }
        self.0.remove(alias).map_err(|e| e.to_string())?;
        self.0.reschedule();
        Ok(())
    }
    fn id_of(&self, alias: &Alias) -> Option<String> {
        self.0.get(alias).map(|r| r.id.to_string())
    }
}

fn policy(cfg: &EffectiveConfig) -> ApplyPolicy {
    ApplyPolicy {
        on_failure: match cfg.system_services.on_failure {
            OnFailure::Stop => FailurePolicy::Stop,
            OnFailure::Continue => FailurePolicy::Continue,
        },
        call_ttl: Duration::from_millis(cfg.system_services.call_ttl_ms),
        keep_generations: cfg.get("system_services.keep_generations").and_then(|v| v.value.as_u64()).map_or(3, |n| n as usize),
        ..ApplyPolicy::default()
    }
}

/// After a call: what the callee's guest takes now, into the metrics (only
/// for targets that exist, so clients cannot grow the label set).
fn record_guest_usage(runtime: &Runtime, metrics: &Metrics, alias: &str) {
    if let Some(usage) = runtime.guest_usage_of(alias) {
        metrics.guest_usage(alias, &usage);
    }
}

/// The runtime's guest limits from the `system_services.guest_*` keys.
fn guest_limits(cfg: &EffectiveConfig) -> crate::runtime::GuestLimits {
    let g = &cfg.system_services.guest;
    let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    crate::runtime::GuestLimits {
        max_result_bytes: g.result_max_bytes,
        max_open_files: small(g.open_files_max),
        data_quota_bytes: g.data_quota_mb.saturating_mul(1 << 20),
        data_quota_inodes: g.data_quota_inodes,
        log: crate::runtime::LogLimits { lines_per_sec: small(g.log_lines_per_sec), line_max_bytes: small(g.log_line_max_bytes) },
    }
}

/// Settings a reload cannot change in a running node keep their running
/// (boot) values in `fresh`; returns the ones the reloaded config changes, as
/// `key: running → configured`, to be reported as "needs restart".
/// `call_ttl_ms` is one of them: the runtime, the spell engine and the API
/// took it at boot, and a reload that changed only the init-call TTL would
/// leave the others silently behind.
fn keep_restart_only(fresh: &mut EffectiveConfig, running: &EffectiveConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |key: &str, old: String, new: String| {
        if old != new {
            out.push(format!("{key}: {old} → {new}"));
        }
    };
    note("node.state_dir", running.node.state_dir.display().to_string(), fresh.node.state_dir.display().to_string());
    note("node.api_listen", running.node.api_listen.to_string(), fresh.node.api_listen.to_string());
    let watching = |c: &EffectiveConfig| crate::watch::enabled(c).to_string();
    note(crate::watch::KEY, watching(running), watching(fresh));
    let (old_ttl, new_ttl) = (running.system_services.call_ttl_ms, fresh.system_services.call_ttl_ms);
    note("system_services.call_ttl_ms", old_ttl.to_string(), new_ttl.to_string());
    // Guest limits are given to the runtime at boot.
    let (old_g, new_g) = (running.system_services.guest, fresh.system_services.guest);
    for (key, old, new) in [
        ("guest_result_max_bytes", old_g.result_max_bytes, new_g.result_max_bytes),
        ("guest_open_files_max", old_g.open_files_max, new_g.open_files_max),
        ("guest_data_quota_mb", old_g.data_quota_mb, new_g.data_quota_mb),
        ("guest_data_quota_inodes", old_g.data_quota_inodes, new_g.data_quota_inodes),
        ("guest_log_lines_per_sec", old_g.log_lines_per_sec, new_g.log_lines_per_sec),
        ("guest_log_line_max_bytes", old_g.log_line_max_bytes, new_g.log_line_max_bytes),
    ] {
        note(&format!("system_services.{key}"), old.to_string(), new.to_string());
    }
    fresh.node = running.node.clone();
    fresh.system_services.call_ttl_ms = old_ttl;
    fresh.system_services.guest = old_g;
    out
}

impl Node {
    /// Takes the state-dir lock and opens store, runtime and spell layer.
    pub fn open(config: EffectiveConfig, load_opts: LoadOptions, catalog: &'static Catalog) -> Result<Arc<Node>, DeployFailure> {
        let state = StateDir::open_exclusive(&config.node.state_dir).map_err(|e| DeployFailure::new(Exit::StoreUnusable, e))?;
        let store = Store::open(&state.store_path()).map_err(|e| DeployFailure::new(Exit::StoreUnusable, e))?;
        let ttl = Duration::from_millis(config.system_services.call_ttl_ms);
        let mut rcfg = RuntimeConfig::new(state.path());
        rcfg.call_ttl = ttl;
        let runtime = Runtime::open_with(
            store.clone(),
            rcfg,
            RuntimeOptions { host_peer: Some(state.peer_id().clone()), limits: guest_limits(&config), ..Default::default() },
        )
        .map_err(|e| DeployFailure::new(Exit::StoreUnusable, e))?;
        let metrics = Metrics::new();
        let mut scfg = SpellConfig::new(state.peer_id().clone());
        scfg.run_ttl = ttl;
        let m = metrics.clone();
        scfg.on_run = Some(spell::RunHook(Arc::new(move |alias: &Alias, out: &spell::RunOutcome| {
            m.spell_run(alias.as_str(), out.status == spell::RunStatus::Ok)
        })));
        let spells = Spells::new(store.clone(), Arc::new(RuntimeCaller { runtime: runtime.clone(), metrics: metrics.clone() }), scfg);
        let deployer = Deployer {
            runtime: runtime.clone(),
            spells: Arc::new(SpellLayer(spells.clone())),
            journal: Journal::new(store.clone()),
            host: state.peer_id().clone(),
            policy: policy(&config),
        };
        tracing::info!(state_dir = %state.path().display(), peer_id = %state.peer_id(), "state directory open and locked");
        // A snapshot the last run was killed in left its staged tree (issue 17).
        crate::snapshot::online::remove_leftovers(state.path());
        Ok(Arc::new(Node {
            state,
            runtime,
            spells,
            deployer,
            metrics,
            catalog,
            load_opts,
            config: RwLock::new(config),
            health: RwLock::new(Health::Deploying),
            deploying: tokio::sync::Mutex::new(()),
            reloading: std::sync::atomic::AtomicBool::new(false),
            notifier: crate::notify::Notifier::from_env(),
        }))
    }

    pub fn peer_id(&self) -> &PeerId {
        self.state.peer_id()
    }
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
    pub fn spells(&self) -> &Spells {
        &self.spells
    }
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn set_health(&self, h: Health) {
        self.metrics.set_health(&h);
        *self.health.write().unwrap_or_else(|p| p.into_inner()) = h;
    }

    /// The one-line state systemd shows (`systemctl status`) once deployed.
    fn serving_status(&self) -> String {
        let (services, spells) = (self.runtime.list_services().len(), self.spells.list().len());
        match &*self.health.read().unwrap_or_else(|p| p.into_inner()) {
            Health::Degraded { failures } => {
                format!("degraded: serving {services} services, {spells} spells; {} failed: {}", failures.len(), failures.join("; "))
            }
            _ => format!("serving {services} services, {spells} spells"),
        }
    }

    /// Stages this running node for a snapshot while it serves
    /// (`snapshot::online::stage`: deployments wait, each service's calls are
    /// held while its data is copied).
    pub async fn stage_snapshot(
        &self,
        include_identity: bool,
    ) -> Result<crate::snapshot::online::StagedTree, crate::snapshot::online::OnlineError> {
        let h = crate::snapshot::online::Handles {
            state_dir: self.state.path(),
            peer_id: self.state.peer_id(),
            runtime: &self.runtime,
            deploying: &self.deploying,
        };
        crate::snapshot::online::stage(&h, include_identity).await
    }

    /// Finishes or rolls back whatever a crash interrupted.
    pub async fn recover(&self) -> Result<Vec<String>, DeployFailure> {
        self.notifier.status("recovering: finishing or rolling back any interrupted deployment");
        self.deployer.recover().await.map_err(|e| DeployFailure::new(Exit::StoreUnusable, format!("crash recovery failed: {e}")))
    }

    /// Resolve → plan → prepare → apply with the current config; writes the
    /// report, updates metrics and health (boot).
    pub async fn deploy(&self, recovered: Vec<String>) -> Result<Report, DeployFailure> {
        let _one = self.deploying.lock().await;
        self.set_health(Health::Deploying);
        self.notifier.status("deploying the configured services and spells");
        let cfg = self.config.read().unwrap_or_else(|p| p.into_inner()).clone();
        let result = match self.validate(&cfg).await {
            Ok(v) => self.apply_validated(&cfg, v, recovered).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(r) => self.set_health(match r.outcome {
                Outcome::Ok => Health::Ready,
                Outcome::Degraded => Health::Degraded { failures: r.failures() },
                Outcome::Failed => Health::Failed { failures: r.failures() },
            }),
            Err(e) => self.set_health(Health::Failed { failures: vec![e.message.clone()] }),
        }
        result
    }

    /// Resolves, type-checks and plans `cfg` against the store; touches
    /// nothing (components are compiled in memory, kept pending).
    async fn validate(&self, cfg: &EffectiveConfig) -> Result<Validated, DeployFailure> {
        let mut resolved = self.resolve(cfg)?;
        let mut desired = std::mem::take(&mut resolved.desired);
        self.runtime.keep_blueprints(self.wanted(&desired));
        let source = resolved.components.clone();
        let misses_before = self.runtime.cache_stats();
        // Type-check the plan before anything is stored: a bad init argument
        // is invalid input and must leave the state as it was.
        desired.exports = self.deployer.exports(&desired, source.clone()).await.map_err(|e| {
            // A component that does not compile is a bad package: invalid input.
            let exit = if e.is_invalid_input() { Exit::Invalid } else { Exit::DeployFailed };
            DeployFailure::new(exit, e)
        })?;
        let current = self.deployer.current().map_err(|e| DeployFailure::new(Exit::StoreUnusable, e))?;
        let plan = deploy::plan(&desired, &current, self.state.peer_id()).map_err(|e| DeployFailure::new(Exit::Invalid, e))?;
        Ok(Validated { desired, plan, source, misses_before, resolved })
    }

    /// The desired state of `cfg`, pinned packages from their generations.
    fn resolve(&self, cfg: &EffectiveConfig) -> Result<deploy::generations::Resolved, DeployFailure> {
        deploy::generations::resolve(self.catalog, cfg, Some(self.deployer.journal.store()), self.state.path())
            .map_err(|e| DeployFailure::new(e.exit(), e))
    }

    /// What GC keeps: the desired blueprints and those of the generations kept.
    fn wanted(&self, desired: &deploy::Desired) -> Vec<crate::ids::BlueprintId> {
        let mut ids = blueprint_ids(desired);
        match deploy::generations::keep_set(self.deployer.journal.store()) {
            Ok(kept) => ids.extend(kept),
            Err(e) => tracing::warn!("reading the generations to keep: {e}"),
        }
        ids
    }

    /// Records the deployment's generation (when it changed something) and
    /// sets the GC keep-set from the generations now kept.
    fn record_generation(
        &self,
        cfg: &EffectiveConfig,
        v: (&deploy::generations::Resolved, &deploy::Desired, &deploy::Plan),
        report: &Report,
    ) {
        let (resolved, desired, plan) = v;
        let current = match self.deployer.current() {
            Ok(c) => c,
            Err(e) => return tracing::warn!("recording the generation: {e}"),
        };
        let d = deploy::generations::Deployment { catalog: self.catalog, resolved, config: cfg, desired, plan, report, current: &current };
        match deploy::generations::record(self.deployer.journal.store(), &d, deploy::generations::keep_generations(cfg)) {
            Ok(Some(n)) => tracing::info!(generation = n, "recorded generation {n}"),
            // Nothing recorded, nothing pruned: the keep-set `validate` set
            // from this desired state still holds (no second parse of the
            // kept generations on a no-op boot).
            Ok(None) => return,
            Err(e) => tracing::warn!("recording the generation failed: {e}"),
        }
        self.runtime.keep_blueprints(self.wanted(desired));
    }

    /// Stores the components, applies the plan, collects garbage, writes the report.
    async fn apply_validated(&self, cfg: &EffectiveConfig, v: Validated, recovered: Vec<String>) -> Result<Report, DeployFailure> {
        let Validated { desired, plan, source, misses_before, resolved } = v;
        self.deployer.prepare(&desired, source).await.map_err(|e| DeployFailure::new(Exit::DeployFailed, e))?;
        for s in plan.changes() {
            tracing::info!(action = s.kind(), alias = %s.alias(), package = %s.package(), "plan: {}", s.reason().unwrap_or(""));
        }
        let mut report = {
            let mut d = self.deployer.clone();
            d.policy = policy(cfg);
            d.apply(&desired, &plan).await
        };
        report.recovered = recovered;
        if !plan.is_noop() || !report.recovered.is_empty() {
            self.record_generation(cfg, (&resolved, &desired, &plan), &report);
        }
        // Replaced and removed services leave blueprints, components and
        // artifacts behind; collect them now instead of at the next boot, so a
        // converged node holds nothing it does not use.
        match self.runtime.gc() {
            Ok(removed) => {
                for r in removed {
                    tracing::info!("gc: removed {r}");
                }
            }
            Err(e) => tracing::warn!("collecting unused components after the deployment failed: {e}; the next boot retries"),
        }
        let stats = self.runtime.cache_stats();
        self.metrics.cache(stats.hits.saturating_sub(misses_before.hits), stats.misses.saturating_sub(misses_before.misses));
        for s in &report.steps {
            self.metrics.observe_step(
                &s.action,
                Duration::from_secs_f64(s.duration_ms / 1000.0),
                &format!("{:?}", s.outcome).to_lowercase(),
            );
        }
        self.metrics.set_deployed(self.runtime.list_services().len(), self.spells.list().len());
        let value = serde_json::to_value(&report).expect("report serialises");
        let finished = crate::deploy::journal::now_ms();
        self.deployer
            .journal
            .save_report(report.started_at_ms, finished, &format!("{:?}", report.outcome).to_lowercase(), &value)
            .map_err(|e| DeployFailure::new(Exit::StoreUnusable, e))?;
        match report.outcome {
            Outcome::Ok => tracing::info!("{}", report.summary()),
            _ => tracing::error!("{}", report.summary()),
        }
        Ok(report)
    }

    /// Re-reads the config file (same env and flags as at boot), validates
    /// it — load, resolve, type-check, plan — and only then swaps it in and
    /// deploys what changed. A refused or failed reload leaves the node
    /// serving what it served and `/health` as it was; the failure goes to
    /// the log and to `/v1/deployments/last`. A reload that applied sets
    /// `/health` from its outcome unless that outcome is a failure.
    pub async fn reload(&self) -> Result<Reloaded, DeployFailure> {
        let _one = self.deploying.lock().await;
        let started = crate::deploy::journal::now_ms();
        let t = std::time::Instant::now();
        tracing::info!("reloading configuration");
        let result = self.reload_locked().await;
        self.metrics.reload(match &result {
            Ok(r) => match r.report.outcome {
                Outcome::Ok => "ok",
                Outcome::Degraded => "degraded",
                Outcome::Failed => "failed",
            },
            Err(e) if e.exit == Exit::Invalid => "refused",
            Err(_) => "failed",
        });
        match &result {
            Ok(r) => match r.report.outcome {
                Outcome::Ok => self.set_health(Health::Ready),
                Outcome::Degraded => self.set_health(Health::Degraded { failures: r.report.failures() }),
                Outcome::Failed => tracing::error!("reload failed; the node keeps serving: {}", r.report.failures().join("; ")),
            },
            Err(e) => {
                tracing::error!("reload refused; nothing was changed and the node keeps serving: {}", e.message);
                // Recorded as the last deployment, so `/v1/deployments/last`
                // and `status` say why the new config is not running.
                let mut value =
                    serde_json::to_value(Report::new(started, t.elapsed(), Outcome::Failed, false, vec![])).expect("report serialises");
                if let Value::Object(o) = &mut value {
                    o.insert("trigger".into(), json!("reload"));
                    o.insert("error".into(), json!(e.message));
                }
                if let Err(se) = self.deployer.journal.save_report(started, crate::deploy::journal::now_ms(), "failed", &value) {
                    tracing::error!("recording the refused reload failed: {se}");
                }
            }
        }
        result
    }

    async fn reload_locked(&self) -> Result<Reloaded, DeployFailure> {
        let mut fresh = config::load(&self.load_opts, &self.catalog.schemas()).map_err(|e| DeployFailure::new(Exit::Invalid, e))?;
        let running = self.config.read().unwrap_or_else(|p| p.into_inner()).clone();
        let needs_restart = keep_restart_only(&mut fresh, &running);
        for n in &needs_restart {
            tracing::warn!("{n}: needs a restart to take effect; the node keeps the running value until then");
        }
        let validated = self.validate(&fresh).await?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        let report = self.apply_validated(&fresh, validated, vec![]).await?;
        Ok(Reloaded { report, needs_restart })
    }

    /// The access table and GC keep-set of the boot with pins applied and
    /// kept generations added (the unpinned ones when resolving fails: the
    /// deployment then reports why).
    fn pinned_boot(
        &self,
        access: crate::runtime::AccessTable,
        wanted: Vec<crate::ids::BlueprintId>,
    ) -> (crate::runtime::AccessTable, Vec<crate::ids::BlueprintId>) {
        let pinned = deploy::generations::pins::pins(self.deployer.journal.store()).is_ok_and(|p| !p.is_empty());
        let resolved = if pinned {
            let cfg = self.config.read().unwrap_or_else(|p| p.into_inner()).clone();
            self.resolve(&cfg).ok()
        } else {
            None
        };
        let (access, desired_ids) = match resolved {
            Some(r) => (deploy::access::table(&r.desired), blueprint_ids(&r.desired)),
            None => (access, wanted),
        };
        let mut ids = desired_ids;
        ids.extend(deploy::generations::keep_set(self.deployer.journal.store()).unwrap_or_default());
        (access, ids)
    }

    fn services_json(&self) -> Value {
        let current = match self.deployer.current() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("listing services: {e}");
                return json!({ "services": [] });
            }
        };
        let mut list: Vec<Value> = current
            .list_services()
            .into_iter()
            .map(|s| {
                let mut v = service_json(s.id, &s.aliases, &s.service.blueprint_id, &s.service.owner, s.service.created_at, s.entry);
                // Public functions only: private ones are not the API's (issue 16).
                if let (Value::Object(o), Some(f)) = (&mut v, self.runtime.public_functions(s.id.as_str())) {
                    o.insert("functions".into(), json!(f.iter().map(|f| f.to_string()).collect::<Vec<_>>()));
                }
                v
            })
            .collect();
        crate::runtime::add_limits(&mut list, &self.runtime.blueprints(), &self.runtime.limit_defaults());
        json!({ "services": list })
    }

    fn spells_json(&self) -> Value {
        let list: Vec<Value> = self
            .spells
            .list()
            .into_iter()
            .map(|s| {
                let errors = self.spells.errors(&s.alias);
                let mut v = serde_json::to_value(&s).unwrap_or(Value::Null);
                if let Value::Object(o) = &mut v {
                    o.insert("errors".into(), serde_json::to_value(errors).unwrap_or(Value::Null));
                }
                v
            })
            .collect();
        json!({ "spells": list })
    }
}

/// One service as `/v1/services` and `status --json` show it.
pub fn service_json(
    id: &crate::ids::ServiceId,
    aliases: &[Alias],
    blueprint_id: &crate::ids::BlueprintId,
    owner: &PeerId,
    created_at: i64,
    entry: Option<&deploy::Deployed>,
) -> Value {
    json!({
        "id": id,
        "aliases": aliases,
        "blueprint_id": blueprint_id,
        "owner": owner,
        "created_at": created_at,
        "package": entry.map(|e| e.package.to_string()),
        "version": entry.map(|e| e.version.clone()),
    })
}

/// The API's view of the node; reloads and liveness pings go to the control loop.
struct NodeBackend {
    node: Arc<Node>,
    reloads: tokio::sync::mpsc::Sender<ReloadRequest>,
    pings: tokio::sync::mpsc::Sender<Ping>,
    /// One snapshot at a time (issue 17).
    snapshots: crate::snapshot::online::Slot,
}

impl Backend for NodeBackend {
    fn reloading(&self) -> bool {
        self.node.reloading.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn alive(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            // A full queue means the loop is not taking pings: not alive.
            self.pings.try_send(tx).is_ok() && rx.await.is_ok()
        })
    }
    fn health(&self) -> Health {
        self.node.health.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn services(&self) -> Value {
        self.node.services_json()
    }
    fn spells(&self) -> Value {
        self.node.spells_json()
    }
    fn spell_kv(&self, alias: &str) -> Option<Value> {
        let alias = Alias::new(alias).ok()?;
        self.node.spells.kv(&alias).map(|kv| serde_json::to_value(kv).unwrap_or(Value::Null))
    }
    fn last_deployment(&self) -> Option<Value> {
        self.node.deployer.journal.last_report().ok().flatten()
    }
    fn call(&self, alias: &str, function: &str, args: Value) -> BoxFuture<'_, Result<Value, CallError>> {
        let (alias, function) = (alias.to_string(), function.to_string());
        Box::pin(async move {
            let r = self.node.runtime.call_as(&crate::runtime::CallOrigin::Api, &alias, &function, args).await;
            record_guest_usage(&self.node.runtime, &self.node.metrics, &alias);
            r
        })
    }
    fn reload(&self) -> BoxFuture<'_, Result<Value, ReloadError>> {
        Box::pin(ask_reload(&self.reloads))
    }
    fn snapshot(&self) -> BoxFuture<'_, Result<crate::snapshot::online::ByteStream, api::SnapshotRefused>> {
        Box::pin(async move {
            if self.health() == Health::Deploying {
                return Err(api::SnapshotRefused::Booting);
            }
            let slot = self.snapshots.try_take().ok_or(api::SnapshotRefused::Busy)?;
            let started = std::time::Instant::now();
            match self.node.stage_snapshot(false).await {
                Ok(staged) => Ok(crate::snapshot::online::stream(staged, slot, self.node.metrics.clone(), started)),
                Err(e) => {
                    self.node.metrics.snapshot("failed", 0, started.elapsed());
                    Err(api::SnapshotRefused::Failed(e.to_string()))
                }
            }
        })
    }
}

/// Asks the control loop for a reload (API, config watcher) and waits for its answer.
async fn ask_reload(reloads: &tokio::sync::mpsc::Sender<ReloadRequest>) -> Result<Value, ReloadError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    reloads.try_send(ReloadRequest { reply }).map_err(|e| match e {
        tokio::sync::mpsc::error::TrySendError::Full(_) => ReloadError::Busy,
        tokio::sync::mpsc::error::TrySendError::Closed(_) => ReloadError::ShuttingDown("no reload is started now".into()),
    })?;
    answer.await.unwrap_or_else(|_| Err(ReloadError::ShuttingDown("the reload was not run".into())))
}

/// `sysdeploy run`: boot, then serve until SIGINT/SIGTERM (or exit after
/// deploying with `once`). Fatal errors go to `fatal` (plain text or a JSON
/// log record, as `--log-format` says).
pub fn run(config: EffectiveConfig, load_opts: LoadOptions, catalog: &'static Catalog, once: bool, fatal: &dyn Fn(&str)) -> Exit {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("sysdeploy").build() {
        Ok(rt) => rt,
        Err(e) => {
            fatal(&format!("starting the async runtime: {e}"));
            return Exit::DeployFailed;
        }
    };
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let exit = rt.block_on(run_async(config, load_opts, catalog, once, fatal));
    // Guest calls that outlive shutdown must not hold the process.
    rt.shutdown_timeout(Duration::from_secs(1));
    exit
}

/// A liveness probe's question to the control loop; answered by dropping
/// nothing but sending `()`.
type Ping = tokio::sync::oneshot::Sender<()>;

async fn run_async(config: EffectiveConfig, load_opts: LoadOptions, catalog: &'static Catalog, once: bool, fatal: &dyn Fn(&str)) -> Exit {
    let listen = config.node.api_listen;
    // Signal handlers first: a SIGTERM while the state dir is opened is then
    // seen by the boot loop below instead of killing the process.
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            fatal(&format!("installing signal handlers: {e}"));
            return Exit::DeployFailed;
        }
    };
    // Bad input is refused before the state directory is touched (no lock
    // taken, no store opened, no recovery run): resolving is pure and cheap.
    let (access, wanted) = match desired::resolve(catalog, &config) {
        Ok(d) => (deploy::access::table(&d), blueprint_ids(&d)),
        Err(e) => {
            fatal(e.to_string().trim_end());
            return Exit::Invalid;
        }
    };
    // `node.watch_config`: the baseline is taken now, before the boot, so
    // an edit made while the node boots is reloaded once it is ready.
    let watcher = if crate::watch::enabled(&config) && !once {
        let w = crate::watch::Watcher::new(&crate::watch::watched_paths(&load_opts, &config));
        if w.is_none() {
            tracing::warn!("node.watch_config is on but the node has no config file (--config, SYSDEPLOY_CONFIG): nothing to watch");
        }
        w
    } else {
        None
    };
    let node = match Node::open(config, load_opts, catalog) {
        Ok(n) => n,
        Err(e) => {
            fatal(&e.message);
            return e.exit;
        }
    };
    // Pinned packages (issue 17) come from their generations.
    let (access, wanted) = node.pinned_boot(access, wanted);
    // Private functions are private from the first request on (issue 16).
    node.runtime.set_access(access);
    // Recovery's GC keeps what this boot will deploy (e.g. the artifact of
    // an install that failed last time), so the retry does not recompile.
    node.runtime.keep_blueprints(wanted);

    // The API is up from the start, answering 503 while deploying. Its
    // reload requests and liveness pings go to this loop, never straight to
    // the node.
    let (reload_tx, mut reloads) = tokio::sync::mpsc::channel::<ReloadRequest>(RELOAD_QUEUE);
    let (ping_tx, mut pings) = tokio::sync::mpsc::channel::<Ping>(RELOAD_QUEUE);
    let (stop_api, api_stopped) = tokio::sync::watch::channel(false);
    let mut api_task = None;
    let mut _api_addr = None;
    let mut _watching = None;
    if !once {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                fatal(&format!("node.api_listen = {listen}: cannot listen: {e}; choose another address with --api-listen"));
                return Exit::Invalid;
            }
        };
        // Operators' commands (`call`, `reload`, `health`, `status`) find
        // the node through `<state_dir>/api.addr`; removed on orderly exit.
        let bound = listener.local_addr().unwrap_or(listen);
        if let Err(e) = node.state.write_api_addr(bound) {
            fatal(&e.to_string());
            return Exit::StoreUnusable;
        }
        _api_addr = Some(ApiAddrGuard(node.clone()));
        let token = match node.state.api_token() {
            Ok(t) => t,
            Err(e) => {
                fatal(&e.to_string());
                return Exit::StoreUnusable;
            }
        };
        // A service may have its own TTL up to the ceiling: the API waits that long.
        let ttl = Duration::from_millis({
            let cfg = node.config.read().unwrap_or_else(|p| p.into_inner());
            cfg.system_services.call_ttl_ms.max(cfg.system_services.ceilings.call_ttl_max_ms)
        });
        let mut rx = api_stopped.clone();
        if let Some(w) = watcher {
            tracing::info!(files = %w.describe(), "node.watch_config: reloading when these files change");
            let tx = reload_tx.clone();
            let ask: crate::watch::AskReload = Box::new(move || {
                let tx = tx.clone();
                Box::pin(async move { ask_reload(&tx).await })
            });
            // Weak: the watcher must not keep the node (and its lock) alive.
            let n = Arc::downgrade(&node);
            let paths: crate::watch::Paths = Box::new(move || match n.upgrade() {
                Some(n) => {
                    let cfg = n.config.read().unwrap_or_else(|p| p.into_inner()).clone();
                    crate::watch::watched_paths(&n.load_opts, &cfg)
                }
                None => Vec::new(),
            });
            _watching = Some(crate::watch::Running(w.spawn(paths, ask)));
        }
        let backend: Arc<dyn Backend> =
            Arc::new(NodeBackend { node: node.clone(), reloads: reload_tx, pings: ping_tx, snapshots: Default::default() });
        api_task = Some(tokio::spawn(api::serve(listener, backend, node.metrics.clone(), ApiConfig::new(token, ttl), async move {
            let _ = rx.wait_for(|s| *s).await;
        })));
    } else {
        drop(reload_tx);
        drop(ping_tx);
    }

    // Boot: recover, then deploy, unless a signal comes first (then the
    // interrupted step is finished or rolled back by the next boot's
    // recovery). Reloads asked meanwhile are answered 503 `booting`: recovery
    // and the first deployment never share the store with another one.
    let deployed = {
        let boot = async {
            let recovered = node.recover().await?;
            node.deploy(recovered).await
        };
        tokio::pin!(boot);
        loop {
            tokio::select! {
                // A signal that arrived while a step was running wins at the next
                // await, instead of a coin flip against the deployment finishing.
                biased;
                _ = signals.next_shutdown() => break None,
                Some(req) = reloads.recv() => {
                    let _ = req.reply.send(Err(ReloadError::Booting));
                }
                Some(ping) = pings.recv() => {
                    let _ = ping.send(());
                }
                r = &mut boot => break Some(r),
            }
        }
    };
    let exit = match deployed {
        None => {
            // An orderly stop asked by the supervisor (`systemctl stop`,
            // `docker stop`): not a failure. The interrupted step is in the
            // journal and the next boot's recovery finishes or rolls it back.
            tracing::warn!(
                "signal received during the first deployment; stopping (the next boot finishes or rolls back the interrupted step)"
            );
            node.notifier.stopping("stopping: the first deployment was interrupted; the next boot converges");
            let _ = stop_api.send(true);
            if let Some(t) = api_task {
                let _ = tokio::time::timeout(API_DRAIN, t).await;
            }
            return Exit::Ok;
        }
        Some(Err(e)) => {
            fatal(&e.message);
            e.exit
        }
        Some(Ok(r)) if r.outcome == Outcome::Failed => Exit::DeployFailed,
        Some(Ok(_)) => Exit::Ok,
    };
    if once || exit != Exit::Ok {
        // `--once`, invalid input, or on_failure = "stop" with a failure.
        if exit != Exit::Ok {
            node.notifier.stopping("stopping: the deployment failed");
        }
        drop(reloads);
        let _ = stop_api.send(true);
        if let Some(t) = api_task {
            let _ = tokio::time::timeout(API_DRAIN, t).await;
        }
        return exit;
    }

    let (stop_spells_tx, stop_spells_rx) = tokio::sync::watch::channel(false);
    let scheduler = Scheduler::start(node.spells.clone(), async move {
        let mut rx = stop_spells_rx;
        let _ = rx.wait_for(|s| *s).await;
    });
    node.notifier.ready(&node.serving_status());
    tracing::info!(api = %listen, "node ready");

    // Serve: one reload at a time, from SIGHUP or the API; requests that
    // arrive while one runs are answered by the next. A shutdown signal
    // preempts a reload at its next await; liveness pings are answered
    // throughout.
    loop {
        let mut waiting = tokio::select! {
            biased;
            sig = signals.next() => match sig {
                Sig::Shutdown => break,
                Sig::Reload => Vec::new(),
            },
            Some(ping) = pings.recv() => {
                let _ = ping.send(());
                continue;
            }
            Some(req) = reloads.recv() => vec![req],
        };
        while let Ok(req) = reloads.try_recv() {
            waiting.push(req);
        }
        node.reloading.store(true, std::sync::atomic::Ordering::SeqCst);
        node.notifier.reloading("reloading the configuration");
        let reloaded = {
            let reload = node.reload();
            tokio::pin!(reload);
            loop {
                tokio::select! {
                    biased;
                    _ = signals.next_shutdown() => break None,
                    Some(ping) = pings.recv() => {
                        let _ = ping.send(());
                    }
                    r = &mut reload => break Some(r),
                }
            }
        };
        node.reloading.store(false, std::sync::atomic::Ordering::SeqCst);
        let answer = match reloaded {
            None => {
                tracing::warn!(
                    "signal received during a reload: the deployment was interrupted; stopping (the next boot finishes or \
                     rolls back the interrupted step)"
                );
                for req in waiting {
                    let _ = req.reply.send(Err(ReloadError::ShuttingDown(
                        "a shutdown signal interrupted this reload; the next boot finishes or rolls back its interrupted step".into(),
                    )));
                }
                break;
            }
            Some(Ok(r)) => {
                let mut v = serde_json::to_value(&r.report).unwrap_or(Value::Null);
                if let Value::Object(o) = &mut v {
                    o.insert("needs_restart".into(), json!(r.needs_restart));
                }
                if r.report.outcome == Outcome::Failed {
                    Err(ReloadError::Failed(r.report.failures().join("; ")))
                } else {
                    Ok(v)
                }
            }
            Some(Err(e)) if e.exit == Exit::Invalid => Err(ReloadError::Invalid(e.message)),
            Some(Err(e)) => Err(ReloadError::Failed(e.message)),
        };
        // Whatever the reload did, the node serves: systemd gets READY=1 back.
        node.notifier.ready(&node.serving_status());
        for req in waiting {
            let _ = req.reply.send(answer.clone());
        }
    }
    drop(reloads);
    drop(pings);
    node.notifier.stopping("stopping: draining in-flight requests and spells");
    tracing::info!("shutting down: no new requests, draining in-flight ones");
    // A second signal exits at once: SQLite's journal keeps the store whole.
    tokio::spawn(async move {
        signals.next_shutdown().await;
        eprintln!("second signal: exiting now");
        std::process::exit(Exit::DeployFailed as i32);
    });
    let _ = stop_api.send(true);
    if let Some(t) = api_task {
        if tokio::time::timeout(API_DRAIN, t).await.is_err() {
            tracing::warn!("in-flight requests did not finish within {API_DRAIN:?}");
        }
    }
    let _ = stop_spells_tx.send(true);
    scheduler.shutdown(SPELL_GRACE).await;
    drop(node);
    tracing::info!("stopped");
    Exit::Ok
}

/// Removes `api.addr` when `run_async` returns, whatever way; dropped
/// before the node (and its state-dir lock) is.
struct ApiAddrGuard(Arc<Node>);

impl Drop for ApiAddrGuard {
    fn drop(&mut self) {
        self.0.state.remove_api_addr();
    }
}

enum Sig {
    Shutdown,
    Reload,
}

/// SIGINT/SIGTERM (shutdown) and SIGHUP (reload).
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())?, hup: signal(SignalKind::hangup())? })
    }
    async fn next(&mut self) -> Sig {
        tokio::select! {
            _ = self.int.recv() => Sig::Shutdown,
            _ = self.term.recv() => Sig::Shutdown,
            _ = self.hup.recv() => Sig::Reload,
        }
    }
    async fn next_shutdown(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {},
            _ = self.term.recv() => {},
        }
    }
}

/// The blueprints a desired state names (what `Runtime::gc` keeps).
fn blueprint_ids(d: &deploy::Desired) -> Vec<crate::ids::BlueprintId> {
    d.packages.iter().flat_map(|p| p.services.iter().map(|s| s.blueprint_id)).collect()
}

/// `sysdeploy plan`: the plan against the current store, computed without
/// taking the lock or writing anything (init arguments are type-checked
/// against exports decoded from the component bytes; nothing is compiled).
pub fn plan_readonly(config: &EffectiveConfig, catalog: &Catalog) -> Result<(deploy::Plan, Option<PeerId>), DeployFailure> {
    let mut desired = desired::resolve(catalog, config).map_err(|e| DeployFailure::new(Exit::Invalid, e))?;
    let dir = &config.node.state_dir;
    let mut store = None;
    // A store without its key is refused (`StateDir::open_shared` says so),
    // never planned against as if the node were new.
    let (host, current) = if dir.join("node.key").exists() || dir.join(crate::state::STORE_FILE).exists() {
        let state = StateDir::open_shared(dir).map_err(|e| DeployFailure::new(Exit::StoreUnusable, e))?;
        let host = state.peer_id().clone();
        let current = match Store::open_read_only(&state.store_path()) {
            Ok(s) => {
                let c = current_readonly(&s, &host).map_err(|e| DeployFailure::new(Exit::StoreUnusable, e))?;
                store = Some(s);
                c
            }
            Err(crate::store::StoreError::Missing { .. }) => deploy::Current::default(),
            Err(e) => return Err(DeployFailure::new(Exit::StoreUnusable, e)),
        };
        (Some(host), current)
    } else {
        (None, deploy::Current::default())
    };
    // Pinned packages (issue 17) come from their generations.
    let mut source = Arc::new(CatalogComponents::new(catalog));
    if let Some(s) = &store {
        if deploy::generations::pins::pins(s).is_ok_and(|p| !p.is_empty()) {
            let r = deploy::generations::resolve(catalog, config, Some(s), dir).map_err(|e| DeployFailure::new(e.exit(), e))?;
            (desired, source) = (r.desired, r.components);
        }
    }
    let source = &*source;
    let linked: std::collections::BTreeSet<crate::ids::BlueprintId> = match &store {
        Some(s) => crate::runtime::records::blueprints(s).map(|b| b.into_iter().map(|(id, _)| id).collect()).unwrap_or_default(),
        None => Default::default(),
    };
    for p in &desired.packages {
        for s in &p.services {
            if desired.exports.contains_key(&s.blueprint_id) {
                continue;
            }
            let facade = s.blueprint.components.last().expect("validated: at least one component");
            let bytes = deploy::ComponentSource::bytes(source, &facade.hash)
                .ok_or_else(|| DeployFailure::new(Exit::Invalid, format!("package {}: component {} missing", p.name, facade.name)))?;
            let sigs = crate::runtime::inspect_exports(dir, store.as_ref(), &facade.hash, &bytes)
                .map_err(|e| DeployFailure::new(Exit::Invalid, format!("package {}, service {}: {e}", p.name, s.alias)))?;
            desired.exports.insert(s.blueprint_id, sigs);
            // Imports the host does not provide: invalid input, found here
            // rather than by a failed install. A blueprint the store records
            // passed this check when it was prepared.
            if linked.contains(&s.blueprint_id) {
                continue;
            }
            let lookup = |h: &crate::ids::ComponentHash| deploy::ComponentSource::bytes(source, h);
            crate::runtime::check_links_offline(&s.blueprint, &lookup).map_err(|e| {
                let e = deploy::executor::unlinkable(&p.name, &s.alias, e);
                DeployFailure::new(if e.is_invalid_input() { Exit::Invalid } else { Exit::DeployFailed }, e)
            })?;
        }
    }
    // Without a key there is no host yet: nothing can conflict.
    let host_for_plan = host.clone().unwrap_or_else(|| PeerId::from_ed25519_public(&[0; 32]));
    let plan = deploy::plan(&desired, &current, &host_for_plan).map_err(|e| DeployFailure::new(Exit::Invalid, e))?;
    Ok((plan, host))
}

/// The current state from a read-only store (the same observed state the
/// deployer plans and recovers against).
pub fn current_readonly(store: &Store, host: &PeerId) -> Result<deploy::Current, deploy::observed::ObserveError> {
    deploy::observed::observe(store, Some(host))
}
