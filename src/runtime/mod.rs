//! The WASM component host: content-addressed component store, precompiled
//! artifact cache, sandboxed services with aliases, and typed JSON calls.
//!
//! CONTRACT (other layers code against exactly these signatures; the runtime
//! issue fills in the bodies and may add, but not change, them):
//! - `Runtime::open`, `add_component`, `put_blueprint`, `blueprint_exports`,
//!   `create_service`, `remove_service`, `copy_data`, alias functions,
//!   `resolve`, `list_services`, `call`, `gc`.
//! - `Blueprint::id()` is pure: the deployer computes ids at plan time.

mod access;
mod batch;
mod cache;
mod check;
pub mod decode;
mod guestio;
mod hold;
mod host;
mod limits;
mod limits_view;
mod link;
mod outbound;
pub mod records;
mod service;
pub mod wit;

pub use access::{is_private, is_toolchain_internal, AccessTable, CallOrigin, ServiceAccess};
pub use cache::{engine_key, CacheStats};
pub use check::check_links_offline;
pub use guestio::{escape as escape_guest_text, LogLimits};
pub use hold::CallHold;
pub use host::{MemoryLimitExceeded, DATA_DIR_GUEST_PATH};
pub use limits::DataUsage;
pub use limits_view::{add_limits, limits_json, limits_line, read_blueprints, LimitDefaults};
pub use wit::{check_args, ArgError};

use crate::ids::{Alias, BlueprintId, ComponentHash, PeerId, ServiceId};
use crate::store::Store;
use cache::ComponentCache;
use host::HostState;
use link::{Exports, Prepared};
use records::ServiceRow;
use serde::{Deserialize, Serialize};
use service::{CallEnv, ServiceSlot};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::Engine;

/// Settings of the runtime, from config.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// `<state_dir>`: holds `components/`, the artifact cache and `services/`.
    pub state_dir: PathBuf,
    /// Default TTL of one guest call.
    pub call_ttl: Duration,
    /// Epoch ticker period (10 ms by default).
    pub epoch_tick: Duration,
}

/// One component of a blueprint and its per-component settings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlueprintComponent {
    /// Name used in messages and for matching imports (`registry`), usually the
    /// file stem of the `.wasm`.
    pub name: String,
    pub hash: ComponentHash,
    /// Linear-memory cap of this component's instance; `None` = runtime default.
    pub memory_limit_mb: Option<u64>,
}

/// Ordered components; the last is the facade whose exports are the
/// service's functions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Blueprint {
    pub components: Vec<BlueprintComponent>,
    /// Overrides of the node's guest limits for services of this blueprint;
    /// encoded (and so part of the id) only when one is set.
    #[serde(default, skip_serializing_if = "ServiceLimits::is_unset")]
    pub limits: ServiceLimits,
}

/// Per-service overrides of [`GuestLimits`] (from `distro.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_quota_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_quota_inodes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files_max: Option<u32>,
    /// TTL of one call to the service (replaces the runtime's default TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_ttl_ms: Option<u64>,
    /// Calls admitted at once (replaces `RuntimeOptions::max_queued_calls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u32>,
    /// Origins (`scheme://host:port`, canonical, resolved from the manifest's
    /// `allowed_outbound_hosts`) the service may reach through
    /// `wasi:http/outgoing-handler`; empty = every request is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
}

impl ServiceLimits {
    pub fn is_unset(&self) -> bool {
        *self == ServiceLimits::default()
    }

    /// `defaults` with these overrides applied.
    pub fn apply(&self, defaults: &GuestLimits) -> GuestLimits {
        GuestLimits {
            data_quota_bytes: self.data_quota_mb.map_or(defaults.data_quota_bytes, |mb| mb.saturating_mul(1 << 20)),
            data_quota_inodes: self.data_quota_inodes.unwrap_or(defaults.data_quota_inodes),
            max_open_files: self.open_files_max.unwrap_or(defaults.max_open_files),
            ..*defaults
        }
    }
}

impl Blueprint {
    /// A blueprint of `components` with the node's default limits.
    pub fn new(components: Vec<BlueprintComponent>) -> Self {
        Blueprint { components, limits: ServiceLimits::default() }
    }
}

impl Blueprint {
    /// blake3 of the canonical encoding (compact JSON of this struct, whose
    /// field order is fixed). Pure.
    pub fn id(&self) -> BlueprintId {
        let bytes = serde_json::to_vec(self).expect("blueprint serialises");
        BlueprintId(*blake3::hash(&bytes).as_bytes())
    }
}

/// A function a service exports, with its WIT signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSig {
    /// `name` for a top-level export, `interface#name` (e.g.
    /// `sysdeploy:registry/api#register`) inside an exported interface; calls
    /// accept either the full name or the bare function name when unambiguous.
    pub name: String,
    pub params: Vec<(String, WitType)>,
    pub results: Vec<WitType>,
}

/// A WIT type, as much as callers need to type-check JSON against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WitType {
    Bool,
    S8,
    U8,
    S16,
    U16,
    S32,
    U32,
    S64,
    U64,
    F32,
    F64,
    Char,
    String,
    List {
        element: Box<WitType>,
    },
    Option {
        inner: Box<WitType>,
    },
    Result {
        ok: Option<Box<WitType>>,
        err: Option<Box<WitType>>,
    },
    Tuple {
        items: Vec<WitType>,
    },
    Record {
        fields: Vec<(String, WitType)>,
    },
    Variant {
        cases: Vec<(String, Option<WitType>)>,
    },
    Enum {
        cases: Vec<String>,
    },
    Flags {
        names: Vec<String>,
    },
    /// Resources and other types JSON cannot carry.
    Unsupported {
        what: String,
    },
}

/// What is known about one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub id: ServiceId,
    pub blueprint_id: BlueprintId,
    pub owner: PeerId,
    pub aliases: Vec<Alias>,
    pub created_at: i64,
}

/// What an alias points at. Services and spells share one alias namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum AliasTarget {
    Service(ServiceId),
    /// A spell id (owned by the spell layer).
    Spell(String),
}

/// A bound alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasBinding {
    pub alias: Alias,
    pub target: AliasTarget,
    pub owner: PeerId,
}

/// Errors of runtime management operations.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("component {hash}: {message}")]
    Component { hash: String, message: String },
    #[error("blueprint {id}: component {component} imports {import}, which neither an earlier component nor the host provides")]
    UnsatisfiedImport { id: String, component: String, import: String },
    #[error("unknown blueprint {0}")]
    UnknownBlueprint(String),
    #[error("unknown service {0}")]
    UnknownService(String),
    #[error("alias {alias} is already bound to {target:?} owned by {owner}")]
    AliasTaken { alias: String, target: AliasTarget, owner: String },
    #[error("alias {0} is not bound")]
    AliasNotBound(String),
    #[error("{0} is owned by {1}, not by this host")]
    NotOwner(String, String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wasmtime: {0}")]
    Wasmtime(String),
    #[error("blueprint {id}: component {component} imports {import}, but what is provided there does not match: {detail}")]
    ImportMismatch { id: String, component: String, import: String, detail: String },
    #[error("blueprint {id} is invalid: {message}")]
    InvalidBlueprint { id: String, message: String },
    #[error("state store holds a malformed {what} ({value:?}); the runtime tables were edited by hand or are damaged")]
    CorruptRecord { what: String, value: String },
    #[error("service {0} has already been called, so its data dir cannot be replaced; copy data before the first call")]
    ServiceInUse(String),
    #[error("runtime configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Tree(#[from] crate::tree::TreeError),
}

/// Why a call failed. Each variant maps to one HTTP status in the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum CallError {
    /// 404
    #[error("no service or alias named {target}")]
    UnknownTarget { target: String },
    /// 404
    #[error("service {target} has no function {function}; it exports: {available}")]
    UnknownFunction { target: String, function: String, available: String },
    /// 400: names the parameter, the WIT type expected and the JSON received.
    #[error("{target}.{function}: parameter {param}: expected {expected}, got {got}")]
    BadArgument { target: String, function: String, param: String, expected: String, got: String },
    /// 400: wrong number of arguments or arguments not a JSON array.
    #[error("{target}.{function}: {message}")]
    BadArguments { target: String, function: String, message: String },
    /// 504
    #[error("{target}.{function}: call exceeded its time limit of {ttl_ms} ms and was interrupted")]
    Timeout { target: String, function: String, ttl_ms: u64 },
    /// 500: guest trapped (incl. memory cap, stack overflow); the instance was discarded.
    #[error("{target}.{function}: guest trapped: {trap}")]
    Trap { target: String, function: String, trap: String },
    /// 503: too many calls queued for one service.
    #[error("{target}: too many calls in flight; try again later")]
    Busy { target: String },
    /// 500
    #[error("{target}.{function}: {message}")]
    Internal { target: String, function: String, message: String },
    /// 502: the result is larger than the node accepts; the guest's instance
    /// is kept, the result discarded before any JSON was built.
    #[error("{target}.{function}: the result is larger than the cap of {limit_bytes} bytes (system_services.guest_result_max_bytes) and was discarded")]
    ResultTooLarge { target: String, function: String, limit_bytes: u64 },
    /// 403: the function is private to the package that deployed the service
    /// (`access.rs`); the reason says who may call it.
    #[error("{target}.{function}: {reason}")]
    PrivateFunction { target: String, function: String, reason: String },
}

/// Runtime settings that are not part of the node config (yet).
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Returned to guests by `sysdeploy:host/node.peer-id`; when `None`, a
    /// guest sees its service's owner (which is the host for every system
    /// service).
    pub host_peer: Option<PeerId>,
    /// Memory cap of a component whose blueprint entry sets none.
    pub default_memory_limit_mb: u64,
    /// Calls admitted per service (one running, the rest queued) before
    /// further calls fail fast with `CallError::Busy`.
    pub max_queued_calls: usize,
    /// What one guest may take of what services share.
    pub limits: GuestLimits,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self { host_peer: None, default_memory_limit_mb: 128, max_queued_calls: 64, limits: GuestLimits::default() }
    }
}

/// What one service's guest may take of what the node's services share
/// (defaults from `[system_services]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    /// Largest call result, as estimated JSON bytes (`result_too_large` above).
    pub max_result_bytes: u64,
    /// Descriptors one instance may hold open (files and directories).
    pub max_open_files: u32,
    /// Logical bytes of regular files under `/data`.
    pub data_quota_bytes: u64,
    /// Directory entries under `/data`.
    pub data_quota_inodes: u64,
    /// Guest log lines (host `log`, stdout, stderr).
    pub log: LogLimits,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            max_result_bytes: 16 << 20,
            max_open_files: 256,
            data_quota_bytes: 1 << 30,
            data_quota_inodes: 100_000,
            log: LogLimits { lines_per_sec: 100, line_max_bytes: 4096 },
        }
    }
}

impl RuntimeConfig {
    /// The defaults: 60 s call TTL, 10 ms epoch tick.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self { state_dir: state_dir.into(), call_ttl: Duration::from_secs(60), epoch_tick: Duration::from_millis(10) }
    }
}

/// The component host. Cheap to clone; share freely.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RuntimeConfig,
    opts: RuntimeOptions,
    store: Store,
    engine: Engine,
    /// WASI + host interface; each blueprint's linkers are clones of it.
    base_linker: Linker<HostState>,
    cache: ComponentCache,
    /// Advanced with the engine epoch by the ticker thread.
    ticks: Arc<AtomicU64>,
    services_dir: PathBuf,
    blueprints: RwLock<HashMap<BlueprintId, Blueprint>>,
    /// Exports per component hash (a facade's exports do not depend on the
    /// blueprint around it).
    exports: RwLock<HashMap<ComponentHash, Arc<Exports>>>,
    /// Linked blueprints: `InstancePre`s built once, reused by every
    /// instantiation of every service of that blueprint.
    prepared: RwLock<HashMap<BlueprintId, Arc<Prepared>>>,
    services: RwLock<HashMap<ServiceId, Arc<ServiceSlot>>>,
    aliases: RwLock<BTreeMap<Alias, AliasBinding>>,
    /// Blueprints the node wants now (`keep_blueprints`): `gc` keeps them,
    /// their components and artifacts even while no service uses them, so a
    /// deployment that failed after compiling is retried without compiling.
    wanted: RwLock<HashSet<BlueprintId>>,
    /// Descriptors all guests together may hold (below `RLIMIT_NOFILE`).
    fd_budget: Arc<limits::FdBudget>,
    /// Who may call which private functions (`access.rs`).
    access: RwLock<Arc<AccessTable>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// The artifact cache key (`cache/<key>`) of the engine this build makes:
/// what a snapshot records so a restore knows whether its artifacts load here.
pub fn current_engine_key() -> Result<String, RuntimeError> {
    Ok(engine_key(&new_engine()?))
}

fn engine(_cfg: &RuntimeConfig) -> Result<Engine, RuntimeError> {
    new_engine()
}

fn new_engine() -> Result<Engine, RuntimeError> {
    let mut c = wasmtime::Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    c.parallel_compilation(true);
    Engine::new(&c).map_err(|e| RuntimeError::Wasmtime(format!("creating the engine: {e:#}")))
}

/// Advances the epoch every `tick` while the engine lives. Holds only a weak
/// handle, so dropping the runtime ends the thread at its next tick.
fn spawn_ticker(engine: &Engine, tick: Duration, ticks: Arc<AtomicU64>) -> Result<(), RuntimeError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("sysdeploy-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(tick);
            match weak.upgrade() {
                Some(engine) => {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    engine.increment_epoch();
                }
                None => return,
            }
        })
        .map(|_| ())
        .map_err(|e| RuntimeError::Io { path: PathBuf::from("<epoch ticker thread>"), source: e })
}

impl Runtime {
    /// Opens the runtime over the state dir and store: loads service and alias
    /// records; instances are created lazily on first call. Starts the epoch
    /// ticker.
    pub fn open(store: Store, cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        Self::open_with(store, cfg, RuntimeOptions::default())
    }

    /// [`Runtime::open`] with explicit options.
    pub fn open_with(store: Store, cfg: RuntimeConfig, opts: RuntimeOptions) -> Result<Runtime, RuntimeError> {
        if cfg.epoch_tick.is_zero() {
            return Err(RuntimeError::Config("epoch_tick must be greater than zero".into()));
        }
        let engine = engine(&cfg)?;
        let cache = ComponentCache::open(engine.clone(), store.clone(), &cfg.state_dir)?;
        let services_dir = cfg.state_dir.join("services");
        std::fs::create_dir_all(&services_dir).map_err(|e| cache::io(&services_dir, e))?;
        let base_linker = host::base_linker(&engine)?;
        let blueprints = records::blueprints(&store)?.into_iter().collect();
        let services = records::services(&store)?
            .into_iter()
            .map(|row| {
                let dir = services_dir.join(row.id.as_str());
                (row.id.clone(), Arc::new(ServiceSlot::new(row, dir, opts.limits.log)))
            })
            .collect();
        let aliases = records::aliases(&store)?.into_iter().map(|b| (b.alias.clone(), b)).collect();
        let ticks = Arc::new(AtomicU64::new(0));
        spawn_ticker(&engine, cfg.epoch_tick, ticks.clone())?;
        let soft = limits::raise_nofile_limit();
        let fd_budget = limits::FdBudget::new(limits::guest_fd_budget(soft));
        tracing::debug!(nofile = soft, guest_budget = limits::guest_fd_budget(soft), "descriptor limits");
        let inner = Inner {
            fd_budget,
            cfg,
            opts,
            store,
            engine,
            base_linker,
            cache,
            ticks,
            services_dir,
            blueprints: RwLock::new(blueprints),
            exports: RwLock::default(),
            prepared: RwLock::default(),
            services: RwLock::new(services),
            aliases: RwLock::new(aliases),
            access: RwLock::default(),
            wanted: RwLock::default(),
        };
        Ok(Runtime { inner: Arc::new(inner) })
    }

    /// Stores `components/<hash>.wasm` if absent (temp + fsync + rename),
    /// records it, and makes sure a verified precompiled artifact exists
    /// (compiling only on a miss). `known_hash` is trusted when given
    /// (embedded bytes were hashed at build time). CPU-heavy on a miss: call
    /// from `spawn_blocking` or a blocking context.
    pub fn add_component(&self, bytes: &[u8], known_hash: Option<ComponentHash>) -> Result<ComponentHash, RuntimeError> {
        let hash = known_hash.unwrap_or_else(|| ComponentHash::of(bytes));
        self.inner.cache.store_bytes(bytes, &hash)?;
        self.inner.cache.load(&hash, Some(bytes))?;
        Ok(hash)
    }

    /// The exports of a component given by its bytes, writing nothing and
    /// compiling nothing: from the loaded component or its verified
    /// artifact when there is one (a cache hit; `add_component` needs it
    /// anyway), else decoded from the bytes (`decode.rs`). Lets the deployer
    /// type-check a plan before it stores anything.
    pub fn inspect_component(&self, bytes: &[u8], hash: &ComponentHash) -> Result<Vec<FunctionSig>, RuntimeError> {
        if let Some(e) = read(&self.inner.exports).get(hash) {
            return Ok(e.sigs());
        }
        let Some(component) = self.inner.cache.cached(hash)? else {
            return Ok(check::decode_component(hash, bytes)?.functions);
        };
        let exports = Arc::new(Exports::of(&self.inner.engine, &component));
        write(&self.inner.exports).insert(*hash, exports.clone());
        Ok(exports.sigs())
    }

    /// Records a blueprint whose components were added; returns its id.
    pub fn put_blueprint(&self, bp: &Blueprint) -> Result<BlueprintId, RuntimeError> {
        let id = bp.id();
        if bp.components.is_empty() {
            return Err(RuntimeError::InvalidBlueprint {
                id: id.to_hex(),
                message: "it has no components; list at least the facade".into(),
            });
        }
        for c in &bp.components {
            if c.name.is_empty() {
                return Err(RuntimeError::InvalidBlueprint {
                    id: id.to_hex(),
                    message: format!("component {} has an empty name", c.hash.short()),
                });
            }
            if c.memory_limit_mb == Some(0) {
                return Err(RuntimeError::InvalidBlueprint {
                    id: id.to_hex(),
                    message: format!("component {} has memory_limit_mb = 0", c.name),
                });
            }
            if !records::has_component(&self.inner.store, &c.hash)? {
                return Err(RuntimeError::Component {
                    hash: c.hash.to_hex(),
                    message: format!("component {} of blueprint {} was never added; call add_component first", c.name, id.short()),
                });
            }
        }
        if read(&self.inner.blueprints).contains_key(&id) {
            return Ok(id);
        }
        records::put_blueprint(&self.inner.store, &id, bp)?;
        write(&self.inner.blueprints).insert(id, bp.clone());
        Ok(id)
    }

    /// The facade's exports of a recorded blueprint, with WIT signatures.
    pub fn blueprint_exports(&self, id: &BlueprintId) -> Result<Vec<FunctionSig>, RuntimeError> {
        Ok(self.inner.facade_exports(id)?.sigs())
    }

    /// Creates a service: checks every import is satisfiable (error names the
    /// component and import), creates `services/<id>/`, records it.
    pub async fn create_service(&self, blueprint: &BlueprintId, owner: &PeerId) -> Result<ServiceId, RuntimeError> {
        self.inner.prepared_async(blueprint).await?;
        let id = ServiceId::random();
        let dir = self.inner.services_dir.join(id.as_str());
        std::fs::create_dir_all(&dir).map_err(|e| cache::io(&dir, e))?;
        let row = ServiceRow { id: id.clone(), blueprint_id: *blueprint, owner: owner.clone(), created_at: records::now_secs() };
        if let Err(e) = records::put_service(&self.inner.store, &row) {
            let _ = remove_dir_if_exists(&dir);
            return Err(e);
        }
        write(&self.inner.services).insert(id.clone(), Arc::new(ServiceSlot::new(row, dir, self.inner.opts.limits.log)));
        tracing::info!(service = %id, blueprint = %blueprint.short(), owner = %owner, "service created");
        Ok(id)
    }

    /// Drops the instance, deletes the record and the data dir unless `keep_data`.
    /// Aliases pointing at the service are unbound with it.
    pub async fn remove_service(&self, id: &ServiceId, keep_data: bool) -> Result<(), RuntimeError> {
        let slot = self.inner.slot(id)?;
        // Waits for a running call to finish; queued calls then see `removed`.
        let mut live = slot.live.lock().await;
        records::delete_service(&self.inner.store, id)?;
        slot.removed.store(true, std::sync::atomic::Ordering::Release);
        drop(live.take());
        write(&self.inner.services).remove(id);
        write(&self.inner.aliases).retain(|_, b| b.target != AliasTarget::Service(id.clone()));
        drop(live);
        if !keep_data {
            let dir = slot.data_dir.clone();
            tokio::task::spawn_blocking(move || remove_dir_if_exists(&dir))
                .await
                .map_err(|e| RuntimeError::Wasmtime(format!("removal task failed: {e}")))??;
        }
        tracing::info!(service = %id, keep_data, "service removed");
        Ok(())
    }

    /// Copies `services/<from>/` into `services/<to>/` (blue-green replace
    /// with `keep_data`). The target's instance must not have been called yet.
    pub async fn copy_data(&self, from: &ServiceId, to: &ServiceId) -> Result<(), RuntimeError> {
        let src = self.inner.slot(from)?;
        let dst = self.inner.slot(to)?;
        if from == to {
            return Ok(());
        }
        // Holding the target's lock keeps a first call from instantiating it
        // while files are copied under its feet.
        let guard = dst.live.lock().await;
        if guard.is_some() {
            return Err(RuntimeError::ServiceInUse(to.to_string()));
        }
        let (a, b) = (src.data_dir.clone(), dst.data_dir.clone());
        // The old instance may be running and rewriting its tree meanwhile:
        // the walker opens every entry fd-relative without following symlinks.
        tokio::task::spawn_blocking(move || crate::tree::copy_tree(&a, &b))
            .await
            .map_err(|e| RuntimeError::Wasmtime(format!("copy task failed: {e}")))??;
        drop(guard);
        Ok(())
    }

    /// Binds an unbound alias; fails with `AliasTaken` otherwise.
    pub fn bind_alias(&self, alias: &Alias, target: AliasTarget, owner: &PeerId) -> Result<(), RuntimeError> {
        let mut aliases = write(&self.inner.aliases);
        if let Some(b) = aliases.get(alias) {
            return Err(RuntimeError::AliasTaken { alias: alias.to_string(), target: b.target.clone(), owner: b.owner.to_string() });
        }
        self.inner.check_target(&target)?;
        let binding = AliasBinding { alias: alias.clone(), target, owner: owner.clone() };
        records::insert_alias(&self.inner.store, &binding)?;
        aliases.insert(alias.clone(), binding);
        Ok(())
    }

    /// Atomically points a bound alias (owned by `owner`) at a new target;
    /// returns the old target. Calls in flight finish on the old target, new
    /// calls go to the new one.
    pub fn rebind_alias(&self, alias: &Alias, target: AliasTarget, owner: &PeerId) -> Result<AliasTarget, RuntimeError> {
        let mut aliases = write(&self.inner.aliases);
        let b = aliases.get_mut(alias).ok_or_else(|| RuntimeError::AliasNotBound(alias.to_string()))?;
        if b.owner != *owner {
            return Err(RuntimeError::NotOwner(format!("alias {alias}"), b.owner.to_string()));
        }
        self.inner.check_target(&target)?;
        records::update_alias(&self.inner.store, alias, &target)?;
        Ok(std::mem::replace(&mut b.target, target))
    }

    pub fn unbind_alias(&self, alias: &Alias, owner: &PeerId) -> Result<(), RuntimeError> {
        let mut aliases = write(&self.inner.aliases);
        let b = aliases.get(alias).ok_or_else(|| RuntimeError::AliasNotBound(alias.to_string()))?;
        if b.owner != *owner {
            return Err(RuntimeError::NotOwner(format!("alias {alias}"), b.owner.to_string()));
        }
        records::delete_alias(&self.inner.store, alias)?;
        aliases.remove(alias);
        Ok(())
    }

    pub fn alias(&self, alias: &Alias) -> Option<AliasBinding> {
        read(&self.inner.aliases).get(alias).cloned()
    }

    pub fn aliases(&self) -> Vec<AliasBinding> {
        read(&self.inner.aliases).values().cloned().collect()
    }

    /// Looks a service up by alias or id.
    pub fn resolve(&self, alias_or_id: &str) -> Option<ServiceInfo> {
        let slot = self.inner.resolve_slot(alias_or_id)?;
        let aliases = read(&self.inner.aliases)
            .values()
            .filter(|b| b.target == AliasTarget::Service(slot.row.id.clone()))
            .map(|b| b.alias.clone())
            .collect();
        Some(info(&slot, aliases))
    }

    pub fn list_services(&self) -> Vec<ServiceInfo> {
        let mut by_service: HashMap<ServiceId, Vec<Alias>> = HashMap::new();
        for b in read(&self.inner.aliases).values() {
            if let AliasTarget::Service(id) = &b.target {
                by_service.entry(id.clone()).or_default().push(b.alias.clone());
            }
        }
        let mut out: Vec<ServiceInfo> =
            read(&self.inner.services).values().map(|s| info(s, by_service.remove(&s.row.id).unwrap_or_default())).collect();
        out.sort_by(|a, b| (a.created_at, a.id.as_str()).cmp(&(b.created_at, b.id.as_str())));
        out
    }

    /// Fails with `NotOwner` unless `owner` owns the service.
    pub fn check_owner(&self, id: &ServiceId, owner: &PeerId) -> Result<(), RuntimeError> {
        let slot = self.inner.slot(id)?;
        if slot.row.owner != *owner {
            return Err(RuntimeError::NotOwner(format!("service {id}"), slot.row.owner.to_string()));
        }
        Ok(())
    }

    /// The exports of a service (its blueprint's facade).
    pub fn service_exports(&self, alias_or_id: &str) -> Option<Result<Vec<FunctionSig>, RuntimeError>> {
        let slot = self.inner.resolve_slot(alias_or_id)?;
        Some(self.blueprint_exports(&slot.row.blueprint_id))
    }

    /// Whether the service currently has an instance (instances are created
    /// on the first call and discarded after a trap).
    pub fn is_instantiated(&self, id: &ServiceId) -> bool {
        self.inner.slot(id).map(|s| s.is_instantiated()).unwrap_or(false)
    }

    /// Whether a call to the service is running now.
    pub fn is_busy(&self, id: &ServiceId) -> bool {
        self.inner.slot(id).map(|s| s.is_busy()).unwrap_or(false)
    }

    /// Calls to the service running or queued now (for `/metrics`).
    pub fn calls_in_flight(&self, id: &ServiceId) -> usize {
        self.inner.slot(id).map(|s| s.in_flight()).unwrap_or(0)
    }

    /// What the service's guest takes now: data usage (as its live instance
    /// accounts it, else scanned from disk), descriptors held, log lines
    /// dropped by the rate limit since the node started.
    pub fn guest_usage(&self, id: &ServiceId) -> Option<GuestUsage> {
        let slot = self.inner.slot(id).ok()?;
        guest_usage(&slot)
    }

    /// [`Runtime::guest_usage`] of the service named by alias or id (what the
    /// API records after each call: one lookup, no listing of aliases).
    pub fn guest_usage_of(&self, alias_or_id: &str) -> Option<GuestUsage> {
        let slot = self.inner.resolve_slot(alias_or_id)?;
        guest_usage(&slot)
    }

    /// Artifact cache counters (for `/metrics`).
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// The artifact cache directory of this engine
    /// (`<state_dir>/cache/<engine key>`).
    pub fn artifact_dir(&self) -> PathBuf {
        self.inner.cfg.state_dir.join("cache").join(self.inner.cache.engine_key())
    }

    /// The private data directory of a service.
    pub fn data_dir(&self, id: &ServiceId) -> PathBuf {
        self.inner.services_dir.join(id.as_str())
    }

    /// Calls `function` of the service named by alias or id with a JSON array
    /// of arguments; returns the result as JSON (a single result unwrapped,
    /// none as `null`, several as an array). Uses the service's own TTL
    /// (`call_ttl_ms` in its `distro.toml`), else the configured one.
    pub async fn call(&self, alias_or_id: &str, function: &str, args: serde_json::Value) -> Result<serde_json::Value, CallError> {
        self.call_ttl_opt(alias_or_id, function, args, None).await
    }

    /// Same with an explicit TTL (it wins over the service's own).
    pub async fn call_with_ttl(
        &self,
        alias_or_id: &str,
        function: &str,
        args: serde_json::Value,
        ttl: Duration,
    ) -> Result<serde_json::Value, CallError> {
        self.call_ttl_opt(alias_or_id, function, args, Some(ttl)).await
    }

    async fn call_ttl_opt(
        &self,
        alias_or_id: &str,
        function: &str,
        args: serde_json::Value,
        ttl: Option<Duration>,
    ) -> Result<serde_json::Value, CallError> {
        // A call held by a replace that then moved the alias was not run on
        // the old service; it goes to the service the alias names now.
        let mut attempts = 0;
        loop {
            let r = self.call_once(alias_or_id, function, &args, ttl).await;
            attempts += 1;
            let moved = matches!(r, Err(CallError::UnknownTarget { .. }))
                && self.inner.resolve_slot(alias_or_id).is_some_and(|s| !s.superseded.load(Ordering::Acquire));
            if !moved || attempts >= 3 {
                return r;
            }
        }
    }

    async fn call_once(
        &self,
        alias_or_id: &str,
        function: &str,
        args: &serde_json::Value,
        ttl: Option<Duration>,
    ) -> Result<serde_json::Value, CallError> {
        let inner = &self.inner;
        let target = alias_or_id;
        let slot = inner.resolve_slot(alias_or_id).ok_or_else(|| CallError::UnknownTarget { target: target.to_string() })?;
        let internal = |message: String| CallError::Internal { target: target.to_string(), function: function.to_string(), message };
        let prepared = inner.prepared_async(&slot.row.blueprint_id).await.map_err(|e| internal(e.to_string()))?;
        let export = prepared.exports.find(function).ok_or_else(|| CallError::UnknownFunction {
            target: target.to_string(),
            function: function.to_string(),
            available: prepared.exports.available(),
        })?;
        if !export.json_callable {
            return Err(CallError::BadArguments {
                target: target.to_string(),
                function: function.to_string(),
                message: format!("{} uses types that JSON cannot carry (resources, streams, futures)", export.sig),
            });
        }
        let params = wit::json_args_to_vals(&export.sig.params, args).map_err(|e| e.into_call_error(target, function))?;
        let ttl = ttl.or(prepared.service_limits.call_ttl_ms.map(Duration::from_millis)).unwrap_or(inner.cfg.call_ttl);
        let host_peer = inner.opts.host_peer.as_ref().unwrap_or(&slot.row.owner);
        let env = CallEnv {
            engine: &inner.engine,
            host_peer,
            ticks: &inner.ticks,
            tick: inner.cfg.epoch_tick,
            max_queue: inner.opts.max_queued_calls.max(1),
            limits: &inner.opts.limits,
            fd_budget: &inner.fd_budget,
        };
        slot.call(&env, prepared.clone(), target, function, export, params, ttl).await
    }

    /// Names the blueprints the node wants (its desired state), replacing the
    /// previous set: `gc` keeps them (records, components, artifacts) even
    /// while no service uses them, e.g. after a failed install, so a retry
    /// loads the artifact instead of compiling again.
    pub fn keep_blueprints(&self, ids: impl IntoIterator<Item = BlueprintId>) {
        *write(&self.inner.wanted) = ids.into_iter().collect();
    }

    /// Removes components, artifacts, blueprints and data dirs nothing
    /// references (no service, and no blueprint named by `keep_blueprints`). Returns what it removed, for the report. Run it when no
    /// deployment is in progress (a blueprint put but not yet used by a
    /// service counts as unreferenced).
    pub fn gc(&self) -> Result<Vec<String>, RuntimeError> {
        self.inner.gc()
    }
}

/// What one service's guest takes of the node's shared resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestUsage {
    pub data: DataUsage,
    /// Descriptors its instance holds (0 when not instantiated).
    pub open_files: u64,
    pub log_lines_dropped: u64,
}

/// Bytes and entries under a data dir, counted as the quota counts them
/// (read-only; for `status`).
pub fn data_usage(dir: &Path) -> Result<DataUsage, RuntimeError> {
    Ok(limits::Quota::scan(dir, u64::MAX, u64::MAX)?.usage())
}

fn guest_usage(slot: &ServiceSlot) -> Option<GuestUsage> {
    let (data, open_files) = slot.usage();
    let data = data.or_else(|| data_usage(&slot.data_dir).ok())?;
    Some(GuestUsage { data, open_files, log_lines_dropped: slot.log.dropped() })
}

fn info(slot: &ServiceSlot, mut aliases: Vec<Alias>) -> ServiceInfo {
    aliases.sort();
    ServiceInfo {
        id: slot.row.id.clone(),
        blueprint_id: slot.row.blueprint_id,
        owner: slot.row.owner.clone(),
        aliases,
        created_at: slot.row.created_at,
    }
}

impl Inner {
    fn slot(&self, id: &ServiceId) -> Result<Arc<ServiceSlot>, RuntimeError> {
        read(&self.services).get(id).cloned().ok_or_else(|| RuntimeError::UnknownService(id.to_string()))
    }

    fn resolve_slot(&self, alias_or_id: &str) -> Option<Arc<ServiceSlot>> {
        if let Ok(alias) = Alias::new(alias_or_id) {
            if let Some(AliasBinding { target: AliasTarget::Service(id), .. }) = read(&self.aliases).get(&alias) {
                return read(&self.services).get(id).cloned();
            }
        }
        let id = ServiceId::try_from(alias_or_id.to_string()).ok()?;
        read(&self.services).get(&id).cloned()
    }

    fn check_target(&self, target: &AliasTarget) -> Result<(), RuntimeError> {
        match target {
            AliasTarget::Service(id) => self.slot(id).map(|_| ()),
            AliasTarget::Spell(_) => Ok(()),
        }
    }

    fn blueprint(&self, id: &BlueprintId) -> Result<Blueprint, RuntimeError> {
        read(&self.blueprints).get(id).cloned().ok_or_else(|| RuntimeError::UnknownBlueprint(id.to_hex()))
    }

    fn component_exports(&self, hash: &ComponentHash) -> Result<Arc<Exports>, RuntimeError> {
        if let Some(e) = read(&self.exports).get(hash) {
            return Ok(e.clone());
        }
        let component = self.cache.load(hash, None)?;
        let exports = Arc::new(Exports::of(&self.engine, &component));
        write(&self.exports).insert(*hash, exports.clone());
        Ok(exports)
    }

    fn facade_exports(&self, id: &BlueprintId) -> Result<Arc<Exports>, RuntimeError> {
        let bp = self.blueprint(id)?;
        let facade = bp.components.last().ok_or_else(|| RuntimeError::UnknownBlueprint(id.to_hex()))?;
        self.component_exports(&facade.hash)
    }

    /// The linked blueprint, linking it (and loading its components) on
    /// first use.
    fn prepared(&self, id: &BlueprintId) -> Result<Arc<Prepared>, RuntimeError> {
        if let Some(p) = read(&self.prepared).get(id) {
            return Ok(p.clone());
        }
        let bp = self.blueprint(id)?;
        let components = bp.components.iter().map(|c| self.cache.load(&c.hash, None)).collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = bp.components.iter().map(|c| c.name.clone()).collect();
        let pres = link::link(&self.engine, &self.base_linker, id, &names, &components)?;
        let limits =
            bp.components.iter().map(|c| c.memory_limit_mb.unwrap_or(self.opts.default_memory_limit_mb).saturating_mul(1 << 20)).collect();
        // Export indices belong to one `Component` value: take them from the
        // facade that was just linked, never from an `Exports` computed from
        // another load or compile of the same bytes (its indices may not
        // resolve in this instance: "lacks an export").
        let facade = components.last().ok_or_else(|| RuntimeError::UnknownBlueprint(id.to_hex()))?;
        let exports = Arc::new(Exports::of(&self.engine, facade));
        let p = Arc::new(Prepared { names, limits, pres, exports, service_limits: bp.limits });
        write(&self.prepared).insert(*id, p.clone());
        Ok(p)
    }

    /// [`Inner::prepared`] off the async worker threads when it has work to do.
    async fn prepared_async(self: &Arc<Self>, id: &BlueprintId) -> Result<Arc<Prepared>, RuntimeError> {
        if let Some(p) = read(&self.prepared).get(id) {
            return Ok(p.clone());
        }
        let (me, id) = (self.clone(), *id);
        tokio::task::spawn_blocking(move || me.prepared(&id))
            .await
            .map_err(|e| RuntimeError::Wasmtime(format!("linking task failed: {e}")))?
    }

    fn gc(&self) -> Result<Vec<String>, RuntimeError> {
        let mut removed = Vec::new();
        let mut used_blueprints: HashSet<BlueprintId> = read(&self.services).values().map(|s| s.row.blueprint_id).collect();
        used_blueprints.extend(read(&self.wanted).iter().copied());
        let unused: Vec<BlueprintId> = read(&self.blueprints).keys().filter(|id| !used_blueprints.contains(id)).copied().collect();
        for id in unused {
            records::delete_blueprint(&self.store, &id)?;
            write(&self.blueprints).remove(&id);
            write(&self.prepared).remove(&id);
            removed.push(format!("blueprint {id}"));
            // Blueprint record gone, its components still stored: the next
            // gc sees them unreferenced and removes them.
            crash_point!("runtime::gc::blueprint-removed");
        }
        let used_components: HashSet<ComponentHash> =
            read(&self.blueprints).values().flat_map(|bp| bp.components.iter().map(|c| c.hash)).collect();
        for hash in records::components(&self.store)? {
            if !used_components.contains(&hash) {
                write(&self.exports).remove(&hash);
                self.cache.remove(&hash)?;
                removed.push(format!("component {hash}"));
            }
        }
        removed.extend(self.cache.collect_foreign()?);
        let known: HashSet<String> = read(&self.services).keys().map(|id| id.to_string()).collect();
        let entries = std::fs::read_dir(&self.services_dir).map_err(|e| cache::io(&self.services_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| cache::io(&self.services_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Only directories named like a service id are ours to remove.
            if ServiceId::try_from(name.clone()).is_ok() && !known.contains(&name) {
                remove_dir_if_exists(&entry.path())?;
                removed.push(format!("data dir {name}"));
            }
        }
        if !removed.is_empty() {
            tracing::info!(count = removed.len(), "runtime gc removed unreferenced items");
        }
        Ok(removed)
    }
}

/// Removes a data dir with the safe walker: iterative (any depth), fd-relative,
/// never following a symlink the guest left inside.
fn remove_dir_if_exists(path: &Path) -> Result<(), RuntimeError> {
    crate::tree::remove_tree(path)?;
    Ok(())
}

/// The exports of a component, for `sysdeploy plan`, which must type-check
/// init arguments without writing to the state directory: decoded from the
/// component's bytes (`decode.rs`), never compiled. `state_dir` and `store`
/// are no longer needed (kept for callers).
pub fn inspect_exports(
    _state_dir: &std::path::Path,
    _store: Option<&Store>,
    hash: &ComponentHash,
    bytes: &[u8],
) -> Result<Vec<FunctionSig>, RuntimeError> {
    Ok(check::decode_component(hash, bytes)?.functions)
}
