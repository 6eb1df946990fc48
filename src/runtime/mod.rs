//! The WASM component host: content-addressed component store, precompiled
//! artifact cache, sandboxed services with aliases, and typed JSON calls.
//!
//! CONTRACT (other layers code against exactly these signatures; the runtime
//! issue fills in the bodies and may add, but not change, them):
//! - `Runtime::open`, `add_component`, `put_blueprint`, `blueprint_exports`,
//!   `create_service`, `remove_service`, `copy_data`, alias functions,
//!   `resolve`, `list_services`, `call`, `gc`.
//! - `Blueprint::id()` is pure: the deployer computes ids at plan time.

use crate::ids::{Alias, BlueprintId, ComponentHash, PeerId, ServiceId};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

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
    Bool, S8, U8, S16, U16, S32, U32, S64, U64, F32, F64, Char, String,
    List { element: Box<WitType> },
    Option { inner: Box<WitType> },
    Result { ok: Option<Box<WitType>>, err: Option<Box<WitType>> },
    Tuple { items: Vec<WitType> },
    Record { fields: Vec<(String, WitType)> },
    Variant { cases: Vec<(String, Option<WitType>)> },
    Enum { cases: Vec<String> },
    Flags { names: Vec<String> },
    /// Resources and other types JSON cannot carry.
    Unsupported { what: String },
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
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("wasmtime: {0}")]
    Wasmtime(String),
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
}

/// The component host. Cheap to clone; share freely.
#[derive(Clone)]
pub struct Runtime {
    _todo: std::sync::Arc<()>,
}

#[allow(unused_variables)]
impl Runtime {
    /// Opens the runtime over the state dir and store: loads service and alias
    /// records; instances are created lazily on first call. Starts the epoch
    /// ticker.
    pub fn open(store: Store, cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        todo!("runtime issue")
    }
    /// Stores `components/<hash>.wasm` if absent (temp + fsync + rename),
    /// records it, and makes sure a verified precompiled artifact exists
    /// (compiling only on a miss). `known_hash` is trusted when given
    /// (embedded bytes were hashed at build time). CPU-heavy on a miss: call
    /// from `spawn_blocking` or a blocking context.
    pub fn add_component(&self, bytes: &[u8], known_hash: Option<ComponentHash>) -> Result<ComponentHash, RuntimeError> {
        todo!()
    }
    /// Records a blueprint whose components were added; returns its id.
    pub fn put_blueprint(&self, bp: &Blueprint) -> Result<BlueprintId, RuntimeError> {
        todo!()
    }
    /// The facade's exports of a recorded blueprint, with WIT signatures.
    pub fn blueprint_exports(&self, id: &BlueprintId) -> Result<Vec<FunctionSig>, RuntimeError> {
        todo!()
    }
    /// Creates a service: checks every import is satisfiable (error names the
    /// component and import), creates `services/<id>/`, records it.
    pub async fn create_service(&self, blueprint: &BlueprintId, owner: &PeerId) -> Result<ServiceId, RuntimeError> {
        todo!()
    }
    /// Drops the instance, deletes the record and the data dir unless `keep_data`.
    pub async fn remove_service(&self, id: &ServiceId, keep_data: bool) -> Result<(), RuntimeError> {
        todo!()
    }
    /// Copies `services/<from>/` into `services/<to>/` (blue-green replace
    /// with `keep_data`). The target's instance must not have been called yet.
    pub async fn copy_data(&self, from: &ServiceId, to: &ServiceId) -> Result<(), RuntimeError> {
        todo!()
    }
    /// Binds an unbound alias; fails with `AliasTaken` otherwise.
    pub fn bind_alias(&self, alias: &Alias, target: AliasTarget, owner: &PeerId) -> Result<(), RuntimeError> {
        todo!()
    }
    /// Atomically points a bound alias (owned by `owner`) at a new target;
    /// returns the old target. Calls in flight finish on the old target, new
    /// calls go to the new one.
    pub fn rebind_alias(&self, alias: &Alias, target: AliasTarget, owner: &PeerId) -> Result<AliasTarget, RuntimeError> {
        todo!()
    }
    pub fn unbind_alias(&self, alias: &Alias, owner: &PeerId) -> Result<(), RuntimeError> {
        todo!()
    }
    pub fn alias(&self, alias: &Alias) -> Option<AliasBinding> {
        todo!()
    }
    pub fn aliases(&self) -> Vec<AliasBinding> {
        todo!()
    }
    /// Looks a service up by alias or id.
    pub fn resolve(&self, alias_or_id: &str) -> Option<ServiceInfo> {
        todo!()
    }
    pub fn list_services(&self) -> Vec<ServiceInfo> {
        todo!()
    }
    /// Calls `function` of the service named by alias or id with a JSON array
    /// of arguments; returns the result as JSON (a single result unwrapped,
    /// none as `null`, several as an array). Uses the configured TTL.
    pub async fn call(&self, alias_or_id: &str, function: &str, args: serde_json::Value) -> Result<serde_json::Value, CallError> {
        todo!()
    }
    /// Same with an explicit TTL.
    pub async fn call_with_ttl(&self, alias_or_id: &str, function: &str, args: serde_json::Value, ttl: Duration) -> Result<serde_json::Value, CallError> {
        todo!()
    }
    /// Removes components, artifacts, blueprints and data dirs nothing
    /// references. Returns what it removed, for the report.
    pub fn gc(&self) -> Result<Vec<String>, RuntimeError> {
        todo!()
    }
}
