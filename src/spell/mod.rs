//! Spells: Rhai scripts on clock triggers with a persistent JSON key-value
//! store, owned by a peer. [`Spells`] is the handle the deployer and the API
//! use (install, update, kv-apply, remove, inspect, run); [`Scheduler`] runs
//! them on time once deployment has finished.
//!
//! Layout: `schedule` (trigger, clock, next-run rule), `engine` (Rhai sandbox
//! and host API), `store` (SQL), `scheduler` (the clock loop).

pub mod check;
mod engine;
mod schedule;
mod scheduler;
mod store;

pub use engine::{MAX_KEY_LEN, MAX_VALUE_BYTES};
pub use schedule::{next_run, Clock, Start, SystemClock, TokioClock, Trigger, MAX_PERIOD_SEC};
pub use scheduler::{Scheduler, SchedulerHandle};
pub use store::MIGRATIONS;

use crate::ids::{Alias, PeerId};
use crate::store::Store;
use engine::{Cancel, Finish, Overlay, RunContext};
use rhai::{Module, Shared, AST};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How spells reach services. Implemented by `crate::runtime::Runtime`; tests
/// use fakes. Errors are the human-readable message of the failed call.
pub trait ServiceCaller: Send + Sync + 'static {
    fn call(&self, alias: &str, function: &str, args: Value) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + '_>>;
    /// A call made by the spell `spell` (what runs use): the runtime checks
    /// that it may call a private function (only spells of the service's own
    /// package may). By default the same as [`ServiceCaller::call`].
    fn call_from(
        &self,
        spell: &Alias,
        alias: &str,
        function: &str,
        args: Value,
    ) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + '_>> {
        let _ = spell;
        self.call(alias, function, args)
    }
}

/// A spell id: 32 random hex characters, never reused. Aliases point at it
/// (`runtime::AliasTarget::Spell`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpellId(String);

impl SpellId {
    fn random() -> Self {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).expect("the OS random source failed");
        Self(hex::encode(b))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl From<SpellId> for String {
    fn from(v: SpellId) -> String {
        v.0
    }
}
impl std::fmt::Display for SpellId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::fmt::Debug for SpellId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpellId({})", self.0)
    }
}

/// blake3 of a script's bytes, lowercase hex: the spell's `script_hash`.
pub fn script_hash(script: &str) -> String {
    blake3::hash(script.as_bytes()).to_hex().to_string()
}

/// What the deployer wants to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpellDef {
    pub alias: Alias,
    pub owner: PeerId,
    pub script: String,
    /// [`script_hash`] of `script`; compared instead of the text when planning.
    pub script_hash: String,
    pub trigger: Trigger,
}

impl SpellDef {
    /// A definition with its script hash computed.
    pub fn new(alias: Alias, owner: PeerId, script: impl Into<String>, trigger: Trigger) -> Self {
        let script = script.into();
        Self { alias, owner, script_hash: script_hash(&script), script, trigger }
    }
}

/// Settings of the spell layer, from config.
#[derive(Debug, Clone)]
pub struct SpellConfig {
    /// The host peer id scripts see through `peer_id()`.
    pub peer_id: PeerId,
    /// Rhai operations one run may perform: stops a runaway loop
    /// deterministically, even one that never calls a service.
    pub max_operations: u64,
    /// Wall-clock limit of one run including its service calls (the node's
    /// call TTL by default).
    pub run_ttl: Duration,
    /// Errors kept per spell; older ones are dropped.
    pub error_log_len: usize,
    /// Finished runs kept per spell in the schedule history.
    pub history_len: usize,
    /// Told of every finished run (the node feeds its metrics from it).
    pub on_run: Option<RunHook>,
}

/// A callback for finished runs: `(alias, outcome)`.
#[derive(Clone)]
pub struct RunHook(pub Arc<dyn Fn(&Alias, &RunOutcome) + Send + Sync>);

impl std::fmt::Debug for RunHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunHook")
    }
}

impl SpellConfig {
    /// Defaults: 5,000,000 operations, 60 s per run, last 20 errors, last 100 runs.
    pub fn new(peer_id: PeerId) -> Self {
        Self { peer_id, max_operations: 5_000_000, run_ttl: Duration::from_secs(60), error_log_len: 20, history_len: 100, on_run: None }
    }
}

/// One recorded run failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpellErrorRecord {
    /// Unix seconds when the failed run finished.
    pub at: u64,
    pub message: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Finished; its KV writes were committed.
    Ok,
    /// The script threw, ran out of operations or a call failed; nothing committed.
    Failed,
    /// The run TTL expired; nothing committed.
    TimedOut,
    /// Stopped at shutdown after the grace period; nothing committed, and it
    /// does not count as a run for the schedule.
    Cancelled,
}

impl RunStatus {
    fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Cancelled => "cancelled",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "ok" => RunStatus::Ok,
            "timed_out" => RunStatus::TimedOut,
            "cancelled" => RunStatus::Cancelled,
            _ => RunStatus::Failed,
        }
    }
}

/// One entry of a spell's schedule history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Unix seconds; what the schedule counts from.
    pub started_at: u64,
    pub finished_at: u64,
    pub status: RunStatus,
}

/// What [`Spells::run_once`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutcome {
    pub started_at: u64,
    pub finished_at: u64,
    pub status: RunStatus,
    /// The failure message (also in the error log), if the run did not succeed.
    pub error: Option<String>,
    /// Keys the run wrote or removed (committed only if `status` is `Ok`).
    pub kv_changed: Vec<String>,
}

/// What is known about one installed spell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpellRecord {
    pub id: SpellId,
    pub alias: Alias,
    pub owner: PeerId,
    pub script_hash: String,
    pub trigger: Trigger,
    /// Start of the last run that counted (unix seconds).
    pub last_run: Option<u64>,
    /// When the scheduler will run it next; `None` = never again.
    pub next_run: Option<u64>,
    pub run_count: u64,
    /// The configured KV as of the last `install`/`kv_apply`: the base of the
    /// three-way merge.
    pub last_applied_kv: BTreeMap<String, Value>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// Errors of spell management. Script failures are not errors of this kind:
/// they end up in the spell's error log and in [`RunOutcome`].
#[derive(Debug, thiserror::Error)]
pub enum SpellError {
    #[error("no spell named {alias}; `sysdeploy status` lists the installed spells")]
    Unknown { alias: String },
    #[error("spell {alias} is already installed; update it instead of installing it again")]
    AlreadyInstalled { alias: String },
    #[error("spell {alias} is owned by {owner}, not by {requested}; it was left untouched")]
    NotOwner { alias: String, owner: String, requested: String },
    #[error("spell {alias}: script_hash {declared} does not match the script (blake3 {actual}); compute it with spell::script_hash")]
    HashMismatch { alias: String, declared: String, actual: String },
    #[error("spell {alias}: script does not compile: {message}; fix the script")]
    Compile { alias: String, message: String },
    #[error("spell {alias}: invalid trigger: {reason}")]
    InvalidTrigger { alias: String, reason: String },
    #[error("spell {alias}: configured kv key {key:?}: {reason}")]
    InvalidKv { alias: String, key: String, reason: String },
    #[error("spell {alias} is running already; runs of one spell never overlap, try again when it finishes")]
    Busy { alias: String },
    #[error("spell {alias}: stored data is damaged ({what}); remove the spell so the deployer reinstalls it")]
    Corrupt { alias: String, what: String },
    #[error("spell store: {op}: {source}")]
    Sql {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("spell {alias}: the run could not be started or finished: {message}")]
    Run { alias: String, message: String },
}

/// Keys whose configured value differs from the value applied last time
/// (new keys included), i.e. the keys [`Spells::kv_apply`] writes. Keys that
/// left the configuration are not written: the spell's data stays.
pub fn kv_changes(last_applied: &BTreeMap<String, Value>, configured: &BTreeMap<String, Value>) -> Vec<String> {
    configured.iter().filter(|(k, v)| last_applied.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect()
}

/// Compiles a spell script with the same limits as [`Spells::install`], so
/// input validation can refuse a script that does not compile before the
/// deployment touches anything.
pub fn check_script(script: &str) -> Result<(), String> {
    engine::compile(&engine::compiler(&engine::std_module()), script).map(|_| ())
}

/// All spells in a store, for readers without a [`Spells`] handle (`plan`,
/// `status` on a read-only store). `now` is used for `next_run`.
pub fn read_spells(store: &Store, now: u64) -> Result<Vec<SpellRecord>, SpellError> {
    let conn = store.lock();
    store::all(&conn)?.into_iter().map(|row| record(&conn, row, now)).collect()
}

/// One spell by alias, like [`read_spells`].
pub fn read_spell(store: &Store, alias: &Alias, now: u64) -> Result<Option<SpellRecord>, SpellError> {
    let conn = store.lock();
    store::by_alias(&conn, alias)?.map(|row| record(&conn, row, now)).transpose()
}

fn record(conn: &rusqlite::Connection, row: store::Row, now: u64) -> Result<SpellRecord, SpellError> {
    let last_applied_kv = store::applied_kv(conn, &row)?;
    Ok(SpellRecord {
        next_run: next_run(&row.trigger, row.last_run, row.runs_under_trigger, now),
        id: SpellId(row.id),
        alias: row.alias,
        owner: row.owner,
        script_hash: row.script_hash,
        trigger: row.trigger,
        last_run: row.last_run,
        run_count: row.run_count,
        last_applied_kv,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// Configured KV obeys the same bounds as KV a script writes.
fn check_kv(alias: &Alias, kv: &BTreeMap<String, Value>) -> Result<(), SpellError> {
    for (k, v) in kv {
        let reason = if k.is_empty() || k.len() > MAX_KEY_LEN {
            format!("keys must be 1 to {MAX_KEY_LEN} bytes long")
        } else if v.to_string().len() > MAX_VALUE_BYTES {
            format!("value exceeds {MAX_VALUE_BYTES} bytes of JSON")
        } else {
            continue;
        };
        return Err(SpellError::InvalidKv { alias: alias.to_string(), key: k.clone(), reason });
    }
    Ok(())
}

/// The spell layer's handle: cheap to clone, shared by the deployer, the API
/// and the scheduler.
#[derive(Clone)]
pub struct Spells {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    caller: Arc<dyn ServiceCaller>,
    cfg: SpellConfig,
    clock: Arc<dyn Clock>,
    /// The Rhai standard library, built once for every run's engine.
    std: Shared<Module>,
    /// Compiles scripts; holds no host functions.
    compiler: rhai::Engine,
    /// Compiled scripts by script hash, so a script is parsed once, not per run.
    asts: Mutex<HashMap<String, Arc<AST>>>,
    /// Aliases with a run in flight: runs of one spell never overlap.
    running: Mutex<HashSet<String>>,
    /// Bumped on every install/update/remove; the scheduler watches it.
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for Spells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spells").field("store", &self.inner.store).field("cfg", &self.inner.cfg).finish()
    }
}

/// Marks an alias as running; unmarks it when the last clone is dropped (the
/// run's future and its blocking interpreter thread each hold one).
struct RunningGuard {
    inner: Arc<Inner>,
    alias: String,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.alias);
    }
}

/// Cancels a run if its future is dropped before the script ends.
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Spells {
    /// Spells over the store with the system clock.
    pub fn new(store: Store, caller: Arc<dyn ServiceCaller>, cfg: SpellConfig) -> Self {
        Self::with_clock(store, caller, cfg, Arc::new(SystemClock))
    }

    /// Spells with an injected clock (tests: [`TokioClock`]).
    pub fn with_clock(store: Store, caller: Arc<dyn ServiceCaller>, cfg: SpellConfig, clock: Arc<dyn Clock>) -> Self {
        let std = engine::std_module();
        let compiler = engine::compiler(&std);
        Self {
            inner: Arc::new(Inner {
                store,
                caller,
                cfg,
                clock,
                std,
                compiler,
                asts: Mutex::new(HashMap::new()),
                running: Mutex::new(HashSet::new()),
                changes: watch::channel(0).0,
            }),
        }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Tells the scheduler that spells changed (install/update/remove do this
    /// themselves).
    pub fn reschedule(&self) {
        self.inner.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn check_def(&self, def: &SpellDef) -> Result<(), SpellError> {
        let alias = def.alias.to_string();
        let actual = script_hash(&def.script);
        if actual != def.script_hash {
            return Err(SpellError::HashMismatch { alias, declared: def.script_hash.clone(), actual });
        }
        if let Some(reason) = def.trigger.problem() {
            return Err(SpellError::InvalidTrigger { alias, reason });
        }
        Ok(())
    }

    /// Compiled script for `hash`, compiling and caching on a miss.
    fn ast(&self, alias: &Alias, hash: &str, script: &str) -> Result<Arc<AST>, SpellError> {
        if let Some(ast) = self.inner.asts.lock().unwrap_or_else(|p| p.into_inner()).get(hash) {
            return Ok(ast.clone());
        }
        let ast =
            engine::compile(&self.inner.compiler, script).map_err(|message| SpellError::Compile { alias: alias.to_string(), message })?;
        let ast = Arc::new(ast);
        self.inner.asts.lock().unwrap_or_else(|p| p.into_inner()).insert(hash.to_string(), ast.clone());
        Ok(ast)
    }

    /// Drops compiled scripts no spell uses any more.
    fn prune_asts(&self) {
        let used = {
            let conn = self.inner.store.lock();
            store::script_hashes(&conn)
        };
        match used {
            Ok(used) => {
                let used: HashSet<String> = used.into_iter().collect();
                self.inner.asts.lock().unwrap_or_else(|p| p.into_inner()).retain(|h, _| used.contains(h));
            }
            Err(e) => tracing::warn!(error = %e, "could not prune the compiled-script cache"),
        }
    }

    /// Creates a spell, writes its initial KV (which becomes the last-applied
    /// configuration) and schedules it. The script must compile.
    pub fn install(&self, def: &SpellDef, initial_kv: &BTreeMap<String, Value>) -> Result<SpellId, SpellError> {
        self.check_def(def)?;
        check_kv(&def.alias, initial_kv)?;
        self.ast(&def.alias, &def.script_hash, &def.script)?;
        let now = self.inner.clock.now();
        let id = SpellId::random();
        {
            let mut conn = self.inner.store.lock();
            let tx = conn.transaction().map_err(store::sql("begin install"))?;
            if store::by_alias(&tx, &def.alias)?.is_some() {
                return Err(SpellError::AlreadyInstalled { alias: def.alias.to_string() });
            }
            store::insert(
                &tx,
                &store::Row {
                    id: id.0.clone(),
                    alias: def.alias.clone(),
                    owner: def.owner.clone(),
                    script: def.script.clone(),
                    script_hash: def.script_hash.clone(),
                    trigger: def.trigger,
                    last_run: None,
                    run_count: 0,
                    runs_under_trigger: 0,
                    created_at: now,
                    updated_at: now,
                },
            )?;
            for (k, v) in initial_kv {
                store::kv_put(&tx, &id.0, k, v)?;
            }
            store::set_applied_kv(&tx, &id.0, initial_kv)?;
            tx.commit().map_err(store::sql("commit install"))?;
        }
        tracing::info!(spell = %def.alias, id = %id, "spell installed");
        self.reschedule();
        Ok(id)
    }

    /// Updates script and/or trigger in place. KV, run count, last run and
    /// history survive; a changed trigger reschedules. No write if nothing
    /// changed. Only the owner may update.
    pub fn update(&self, def: &SpellDef) -> Result<(), SpellError> {
        self.check_def(def)?;
        let row = self.row(&def.alias)?;
        if row.owner != def.owner {
            return Err(SpellError::NotOwner {
                alias: def.alias.to_string(),
                owner: row.owner.to_string(),
                requested: def.owner.to_string(),
            });
        }
        let script_changed = row.script_hash != def.script_hash;
        let trigger_changed = row.trigger != def.trigger;
        if !script_changed && !trigger_changed {
            return Ok(());
        }
        if script_changed {
            self.ast(&def.alias, &def.script_hash, &def.script)?;
        }
        let now = self.inner.clock.now();
        {
            let mut conn = self.inner.store.lock();
            let tx = conn.transaction().map_err(store::sql("begin update"))?;
            if script_changed {
                store::set_script(&tx, &row.id, &def.script, &def.script_hash, now)?;
            }
            if trigger_changed {
                store::set_trigger(&tx, &row.id, &def.trigger, now)?;
            }
            tx.commit().map_err(store::sql("commit update"))?;
        }
        tracing::info!(spell = %def.alias, script_changed, trigger_changed, "spell updated");
        if script_changed {
            self.prune_asts();
        }
        self.reschedule();
        Ok(())
    }

    /// The keys [`kv_apply`](Self::kv_apply) would write, without writing.
    pub fn plan_kv(&self, alias: &Alias, configured: &BTreeMap<String, Value>) -> Result<Vec<String>, SpellError> {
        let conn = self.inner.store.lock();
        let row = store::by_alias(&conn, alias)?.ok_or_else(|| SpellError::Unknown { alias: alias.to_string() })?;
        Ok(kv_changes(&store::applied_kv(&conn, &row)?, configured))
    }

    /// Three-way merge of configured KV: writes key `k` only if
    /// `configured[k]` differs from what was applied last time, then records
    /// `configured` as applied. Values the spell wrote itself under keys whose
    /// configuration did not change are kept. Returns the keys written; an
    /// unchanged configuration writes nothing at all.
    pub fn kv_apply(&self, alias: &Alias, configured: &BTreeMap<String, Value>) -> Result<Vec<String>, SpellError> {
        check_kv(alias, configured)?;
        let mut conn = self.inner.store.lock();
        let tx = conn.transaction().map_err(store::sql("begin kv apply"))?;
        let row = store::by_alias(&tx, alias)?.ok_or_else(|| SpellError::Unknown { alias: alias.to_string() })?;
        let last = store::applied_kv(&tx, &row)?;
        if &last == configured {
            return Ok(Vec::new());
        }
        let changed = kv_changes(&last, configured);
        for k in &changed {
            store::kv_put(&tx, &row.id, k, &configured[k])?;
        }
        store::set_applied_kv(&tx, &row.id, configured)?;
        tx.commit().map_err(store::sql("commit kv apply"))?;
        Ok(changed)
    }

    /// Deletes the spell with its KV, error log and history; the scheduler
    /// drops it. A run in flight commits nothing.
    pub fn remove(&self, alias: &Alias) -> Result<(), SpellError> {
        {
            let conn = self.inner.store.lock();
            let row = store::by_alias(&conn, alias)?.ok_or_else(|| SpellError::Unknown { alias: alias.to_string() })?;
            store::delete(&conn, &row.id)?;
        }
        tracing::info!(spell = %alias, "spell removed");
        self.prune_asts();
        self.reschedule();
        Ok(())
    }

    fn row(&self, alias: &Alias) -> Result<store::Row, SpellError> {
        let conn = self.inner.store.lock();
        store::by_alias(&conn, alias)?.ok_or_else(|| SpellError::Unknown { alias: alias.to_string() })
    }

    pub fn try_get(&self, alias: &Alias) -> Result<Option<SpellRecord>, SpellError> {
        read_spell(&self.inner.store, alias, self.inner.clock.now())
    }

    pub fn try_list(&self) -> Result<Vec<SpellRecord>, SpellError> {
        read_spells(&self.inner.store, self.inner.clock.now())
    }

    /// The spell, or `None` if absent or unreadable (logged).
    pub fn get(&self, alias: &Alias) -> Option<SpellRecord> {
        self.try_get(alias).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading spell failed");
            None
        })
    }

    /// All spells by alias; empty if unreadable (logged).
    pub fn list(&self) -> Vec<SpellRecord> {
        self.try_list().unwrap_or_else(|e| {
            tracing::error!(error = %e, "listing spells failed");
            Vec::new()
        })
    }

    pub fn try_kv(&self, alias: &Alias) -> Result<Option<BTreeMap<String, Value>>, SpellError> {
        let conn = self.inner.store.lock();
        store::by_alias(&conn, alias)?.map(|row| store::kv(&conn, &row)).transpose()
    }

    /// The committed KV of a spell; `None` if there is no such spell.
    pub fn kv(&self, alias: &Alias) -> Option<BTreeMap<String, Value>> {
        self.try_kv(alias).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading spell kv failed");
            None
        })
    }

    /// The last N errors, oldest first.
    pub fn errors(&self, alias: &Alias) -> Vec<SpellErrorRecord> {
        let conn = self.inner.store.lock();
        let r = store::by_alias(&conn, alias).and_then(|row| match row {
            Some(row) => store::errors(&conn, &row.id),
            None => Ok(Vec::new()),
        });
        r.unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading spell errors failed");
            Vec::new()
        })
    }

    /// The schedule history (last N finished runs), oldest first.
    pub fn history(&self, alias: &Alias) -> Vec<RunRecord> {
        let conn = self.inner.store.lock();
        let r = store::by_alias(&conn, alias).and_then(|row| match row {
            Some(row) => store::runs(&conn, &row.id),
            None => Ok(Vec::new()),
        });
        r.unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading spell history failed");
            Vec::new()
        })
    }

    /// Runs the spell now, whatever its schedule says, and records the run
    /// (it counts for the schedule). Script failures are in the outcome and
    /// the error log; `Err` means the run could not happen at all.
    pub async fn run_once(&self, alias: &Alias) -> Result<RunOutcome, SpellError> {
        self.run_with(alias, Cancel::new()).await
    }

    /// A run that also stops when `cancel_all` fires (the scheduler's
    /// shutdown signal).
    async fn run_with(&self, alias: &Alias, cancel_all: Cancel) -> Result<RunOutcome, SpellError> {
        let inner = &self.inner;
        {
            let mut running = inner.running.lock().unwrap_or_else(|p| p.into_inner());
            if !running.insert(alias.to_string()) {
                return Err(SpellError::Busy { alias: alias.to_string() });
            }
        }
        let guard = Arc::new(RunningGuard { inner: inner.clone(), alias: alias.to_string() });

        let (row, base) = {
            let conn = inner.store.lock();
            let row = store::by_alias(&conn, alias)?.ok_or_else(|| SpellError::Unknown { alias: alias.to_string() })?;
            let kv = store::kv(&conn, &row)?;
            (row, kv)
        };
        let started_at = inner.clock.now();
        let cancel_run = Cancel::new();
        let _cancel_on_drop = CancelOnDrop(cancel_run.clone());

        let finish = match self.ast(&row.alias, &row.script_hash, &row.script) {
            Err(e) => Finish::Failed(e.to_string()),
            Ok(ast) => {
                let ctx = Arc::new(RunContext {
                    alias: row.alias.clone(),
                    peer_id: inner.cfg.peer_id.clone(),
                    clock: inner.clock.clone(),
                    caller: inner.caller.clone(),
                    handle: tokio::runtime::Handle::current(),
                    deadline: tokio::time::Instant::now() + inner.cfg.run_ttl,
                    ttl: inner.cfg.run_ttl,
                    cancel_run,
                    cancel_all,
                    stop: AtomicU8::new(0),
                    kv: Mutex::new(Overlay { base, writes: BTreeMap::new() }),
                });
                let std = inner.std.clone();
                let max_ops = inner.cfg.max_operations;
                let thread_guard = guard.clone();
                let joined = tokio::task::spawn_blocking(move || {
                    let _running = thread_guard;
                    engine::execute(&ast, &ctx, &std, max_ops)
                })
                .await;
                match joined {
                    Ok(f) => f,
                    Err(e) if e.is_panic() => Finish::Failed("the script interpreter panicked; this is a bug in sysdeploy".into()),
                    Err(e) => return Err(SpellError::Run { alias: alias.to_string(), message: e.to_string() }),
                }
            }
        };
        let finished_at = inner.clock.now();
        let outcome = self.commit(&row, started_at, finished_at, finish)?;
        drop(guard);
        if let Some(hook) = &inner.cfg.on_run {
            (hook.0)(alias, &outcome);
        }
        match &outcome.error {
            None => tracing::debug!(spell = %alias, "spell run finished"),
            Some(e) => tracing::warn!(spell = %alias, status = outcome.status.as_str(), "spell run failed: {e}"),
        }
        Ok(outcome)
    }

    /// Records a finished run in one transaction: KV writes (success only),
    /// schedule bookkeeping, history and error log. A spell removed during
    /// the run is left removed.
    fn commit(&self, row: &store::Row, started_at: u64, finished_at: u64, finish: Finish) -> Result<RunOutcome, SpellError> {
        let cfg = &self.inner.cfg;
        let (status, error, writes) = match finish {
            Finish::Ok(w) => (RunStatus::Ok, None, w),
            Finish::Failed(m) => (RunStatus::Failed, Some(m), BTreeMap::new()),
            Finish::TimedOut => (
                RunStatus::TimedOut,
                Some(format!("run exceeded its time limit of {} ms and was stopped; nothing it wrote was kept", cfg.run_ttl.as_millis())),
                BTreeMap::new(),
            ),
            Finish::Cancelled => (
                RunStatus::Cancelled,
                Some("run cancelled at shutdown after the grace period; nothing it wrote was kept".to_string()),
                BTreeMap::new(),
            ),
        };
        let outcome = RunOutcome {
            started_at,
            finished_at,
            status: status.clone(),
            error: error.clone(),
            kv_changed: writes.keys().cloned().collect(),
        };
        let mut conn = self.inner.store.lock();
        let tx = conn.transaction().map_err(store::sql("begin run commit"))?;
        let Some(current) = store::by_id(&tx, &row.id)? else {
            return Ok(outcome);
        };
        for (k, v) in &writes {
            match v {
                Some(v) => store::kv_put(&tx, &row.id, k, v)?,
                None => store::kv_delete(&tx, &row.id, k)?,
            }
        }
        if status != RunStatus::Cancelled {
            store::mark_run(&tx, &row.id, started_at, current.trigger == row.trigger)?;
        }
        store::push_run(&tx, &row.id, &RunRecord { started_at, finished_at, status }, cfg.history_len)?;
        if let Some(message) = &error {
            store::push_error(&tx, &row.id, finished_at, message, cfg.error_log_len)?;
        }
        tx.commit().map_err(store::sql("commit run"))?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn kv_changes_is_three_way() {
        use serde_json::json;
        let last = map(&[("a", json!(1)), ("b", json!("x")), ("gone", json!(true))]);
        let now = map(&[("a", json!(1)), ("b", json!("y")), ("new", json!([1]))]);
        assert_eq!(kv_changes(&last, &now), vec!["b".to_string(), "new".to_string()]);
        assert!(kv_changes(&now, &now).is_empty());
        assert_eq!(kv_changes(&BTreeMap::new(), &now).len(), 3);
    }

    #[test]
    fn script_hash_is_blake3_hex() {
        assert_eq!(script_hash("x").len(), 64);
        assert_ne!(script_hash("x"), script_hash("y"));
    }
}
