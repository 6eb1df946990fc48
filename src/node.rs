//! The node daemon: boot sequence (lock → recover → plan → apply → spells →
//! API ready), the API backend over runtime, spells and store, live reload,
//! and ordered shutdown on SIGINT/SIGTERM.

use crate::api::{self, ApiConfig, Backend, BoxFuture, Health, Metrics};
use crate::cli::Exit;
use crate::config::{self, EffectiveConfig, LoadOptions, OnFailure};
use crate::deploy::desired::{self, CatalogComponents};
use crate::deploy::journal::Journal;
use crate::deploy::{self, ApplyPolicy, Deployer, DesiredSpell, FailurePolicy, Outcome, Report, SpellOps};
use crate::distro::Catalog;
use crate::ids::{Alias, PeerId};
use crate::runtime::{CallError, Runtime, RuntimeConfig, RuntimeOptions};
use crate::spell::{self, Scheduler, ServiceCaller, SpellConfig, SpellDef, Spells, Start, Trigger};
use crate::state::StateDir;
use crate::store::Store;
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long in-flight API requests may take to finish at shutdown.
const API_DRAIN: Duration = Duration::from_secs(10);
/// How long a running spell may take to finish at shutdown.
const SPELL_GRACE: Duration = Duration::from_secs(5);

/// Why a deployment could not even start, mapped to an exit code.
#[derive(Debug)]
pub struct DeployFailure {
    pub exit: Exit,
    pub message: String,
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
}

/// Lets spells call services through the runtime.
struct RuntimeCaller {
    runtime: Runtime,
    metrics: Metrics,
}

impl ServiceCaller for RuntimeCaller {
    fn call(
        &self,
        alias: &str,
        function: &str,
        args: Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send + '_>> {
        let (alias, function) = (alias.to_string(), function.to_string());
        Box::pin(async move {
            let t = std::time::Instant::now();
            let r = self.runtime.call(&alias, &function, args).await;
            self.metrics.observe_call(&alias, t.elapsed(), r.is_ok());
            r.map_err(|e| e.to_string())
        })
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
        ..ApplyPolicy::default()
    }
}

impl Node {
    /// Takes the state-dir lock and opens store, runtime and spell layer.
    pub fn open(config: EffectiveConfig, load_opts: LoadOptions, catalog: &'static Catalog) -> Result<Arc<Node>, DeployFailure> {
        let state = StateDir::open_exclusive(&config.node.state_dir).map_err(|e| DeployFailure::new(Exit::StoreUnusable, e))?;
        let store = Store::open(&state.store_path()).map_err(|e| DeployFailure::new(Exit::StoreUnusable, e))?;
        let ttl = Duration::from_millis(config.system_services.call_ttl_ms);
        let mut rcfg = RuntimeConfig::new(state.path());
        rcfg.call_ttl = ttl;
        let runtime =
            Runtime::open_with(store.clone(), rcfg, RuntimeOptions { host_peer: Some(state.peer_id().clone()), ..Default::default() })
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
        *self.health.write().unwrap_or_else(|p| p.into_inner()) = h;
    }

    /// Finishes or rolls back whatever a crash interrupted.
    pub async fn recover(&self) -> Result<Vec<String>, DeployFailure> {
        self.deployer.recover().await.map_err(|e| DeployFailure::new(Exit::StoreUnusable, format!("crash recovery failed: {e}")))
    }

    /// Resolve → prepare → plan → apply with the current config; writes the
    /// report, updates metrics and health.
    pub async fn deploy(&self, recovered: Vec<String>) -> Result<Report, DeployFailure> {
        let _one = self.deploying.lock().await;
        self.set_health(Health::Deploying);
        let result = self.deploy_locked(recovered).await;
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

    async fn deploy_locked(&self, recovered: Vec<String>) -> Result<Report, DeployFailure> {
        let cfg = self.config.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut desired = desired::resolve(self.catalog, &cfg).map_err(|e| DeployFailure::new(Exit::Invalid, e))?;
        let source = Arc::new(CatalogComponents::new(self.catalog));
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
        self.deployer.prepare(&desired, source).await.map_err(|e| DeployFailure::new(Exit::DeployFailed, e))?;
        for s in plan.changes() {
            tracing::info!(action = s.kind(), alias = %s.alias(), package = %s.package(), "plan: {}", s.reason().unwrap_or(""));
        }
        let mut report = {
            let mut d = self.deployer.clone();
            d.policy = policy(&cfg);
            d.apply(&desired, &plan).await
        };
        report.recovered = recovered;
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

    /// Re-reads the config file and deploys what changed.
    pub async fn reload(&self) -> Result<Report, DeployFailure> {
        let fresh = config::load(&self.load_opts, &self.catalog.schemas()).map_err(|e| DeployFailure::new(Exit::Invalid, e))?;
        {
            let old = self.config.read().unwrap_or_else(|p| p.into_inner());
            if fresh.node != old.node {
                tracing::warn!("[node] settings changed; they take effect at the next restart");
            }
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        tracing::info!("reloading configuration");
        self.deploy(vec![]).await
    }

    fn services_json(&self) -> Value {
        let current = match self.deployer.current() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("listing services: {e}");
                return json!({ "services": [] });
            }
        };
        let list: Vec<Value> = current
            .list_services()
            .into_iter()
            .map(|s| service_json(s.id, &s.aliases, &s.service.blueprint_id, &s.service.owner, s.service.created_at, s.entry))
            .collect();
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

/// The API's view of the node.
struct NodeBackend(Arc<Node>);

impl Backend for NodeBackend {
    fn health(&self) -> Health {
        self.0.health.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn services(&self) -> Value {
        self.0.services_json()
    }
    fn spells(&self) -> Value {
        self.0.spells_json()
    }
    fn spell_kv(&self, alias: &str) -> Option<Value> {
        let alias = Alias::new(alias).ok()?;
        self.0.spells.kv(&alias).map(|kv| serde_json::to_value(kv).unwrap_or(Value::Null))
    }
    fn last_deployment(&self) -> Option<Value> {
        self.0.deployer.journal.last_report().ok().flatten()
    }
    fn call(&self, alias: &str, function: &str, args: Value) -> BoxFuture<'_, Result<Value, CallError>> {
        let (alias, function) = (alias.to_string(), function.to_string());
        Box::pin(async move { self.0.runtime.call(&alias, &function, args).await })
    }
    fn reload(&self) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(async move {
            match self.0.reload().await {
                Ok(r) => Ok(serde_json::to_value(&r).unwrap_or(Value::Null)),
                Err(e) => Err(e.message),
            }
        })
    }
}

/// `sysdeploy run`: boot, then serve until SIGINT/SIGTERM (or exit after
/// deploying with `once`).
pub fn run(config: EffectiveConfig, load_opts: LoadOptions, catalog: &'static Catalog, once: bool) -> Exit {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("sysdeploy").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return Exit::DeployFailed;
        }
    };
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let exit = rt.block_on(run_async(config, load_opts, catalog, once));
    // Guest calls that outlive shutdown must not hold the process.
    rt.shutdown_timeout(Duration::from_secs(1));
    exit
}

async fn run_async(config: EffectiveConfig, load_opts: LoadOptions, catalog: &'static Catalog, once: bool) -> Exit {
    let listen = config.node.api_listen;
    // Bad input is refused before the state directory is touched (no lock
    // taken, no store opened, no recovery run): resolving is pure and cheap.
    if let Err(e) = desired::resolve(catalog, &config) {
        eprint!("error: {e}");
        return Exit::Invalid;
    }
    let node = match Node::open(config, load_opts, catalog) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {}", e.message);
            return e.exit;
        }
    };
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: installing signal handlers: {e}");
            return Exit::DeployFailed;
        }
    };

    // The API is up from the start, answering 503 while deploying.
    let (stop_api, api_stopped) = tokio::sync::watch::channel(false);
    let mut api_task = None;
    if !once {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: node.api_listen = {listen}: cannot listen: {e}; choose another address with --api-listen");
                return Exit::Invalid;
            }
        };
        let token = match node.state.api_token() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::StoreUnusable;
            }
        };
        let ttl = Duration::from_millis(node.config.read().unwrap_or_else(|p| p.into_inner()).system_services.call_ttl_ms);
        let mut rx = api_stopped.clone();
        let backend: Arc<dyn Backend> = Arc::new(NodeBackend(node.clone()));
        api_task = Some(tokio::spawn(api::serve(listener, backend, node.metrics.clone(), ApiConfig::new(token, ttl), async move {
            let _ = rx.wait_for(|s| *s).await;
        })));
    }

    // Deploy, unless a signal comes first (then the interrupted step is
    // finished or rolled back by the next boot's recovery).
    let deployed = tokio::select! {
        // A signal that arrived while a step was running wins at the next
        // await, instead of a coin flip against the deployment finishing.
        biased;
        _ = signals.next_shutdown() => None,
        r = async {
            let recovered = node.recover().await?;
            node.deploy(recovered).await
        } => Some(r),
    };
    let exit = match deployed {
        None => {
            tracing::warn!("signal received during deployment; stopping (the next boot converges)");
            let _ = stop_api.send(true);
            return Exit::DeployFailed;
        }
        Some(Err(e)) => {
            eprintln!("error: {}", e.message);
            e.exit
        }
        Some(Ok(r)) if r.outcome == Outcome::Failed => Exit::DeployFailed,
        Some(Ok(_)) => Exit::Ok,
    };
    if once || exit != Exit::Ok {
        // `--once`, invalid input, or on_failure = "stop" with a failure.
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
    notify_ready();
    tracing::info!(api = %listen, "node ready");

    loop {
        match signals.next().await {
            Sig::Reload => {
                if let Err(e) = node.reload().await {
                    tracing::error!("reload failed: {}", e.message);
                }
            }
            Sig::Shutdown => break,
        }
    }
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

/// Tells systemd we are ready, when started under it.
fn notify_ready() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!("sd_notify READY=1 failed: {e}");
        }
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

/// `sysdeploy plan`: the plan against the current store, computed without
/// taking the lock or writing anything (init arguments are type-checked by
/// compiling the facades in memory).
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
    let source = CatalogComponents::new(catalog);
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
            let bytes = deploy::ComponentSource::bytes(&source, &facade.hash)
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
            let lookup = |h: &crate::ids::ComponentHash| deploy::ComponentSource::bytes(&source, h);
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
