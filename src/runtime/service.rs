//! Live services: one wasmtime `Store` per service, created lazily on the
//! first call, serialised per service behind an async mutex with a bounded
//! queue, with a TTL enforced by epoch interruption and an outer timeout.
//!
//! Guest code runs through `call_async` on a wasmtime fiber. The epoch
//! callback yields back to tokio on every tick, so a busy guest occupies a
//! worker thread for at most one tick (10 ms by default) at a time, and
//! dropping the call future (outer timeout, client gone) abandons the call.
//! This keeps calls cancellable; `spawn_blocking` with synchronous calls
//! could not be cancelled from outside and would need one OS thread per
//! running guest.

use super::guestio::{GuestLog, LogLimits};
use super::host::{ComponentLimiter, HostState, MemoryLimitExceeded};
use super::limits::{result_size, DataUsage, FdBudget, OpenFiles, Quota};
use super::link::Prepared;
use super::records::ServiceRow;
use super::wit::{placeholder, results_to_json};
use super::{CallError, GuestLimits};
use crate::ids::PeerId;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{Instance, Val};
use wasmtime::{Engine, Trap, UpdateDeadline};

/// A service known to the runtime.
pub(crate) struct ServiceSlot {
    pub(crate) row: ServiceRow,
    pub(crate) data_dir: PathBuf,
    /// The instance; `None` until the first call and after a trap. Holding
    /// the lock is what serialises calls to one service.
    pub(crate) live: tokio::sync::Mutex<Option<Live>>,
    /// Calls admitted (running or waiting for `live`).
    admitted: AtomicUsize,
    /// True while a call holds `live` (for status and tests).
    running: AtomicBool,
    /// Set (under the `live` lock) when the service is removed, so calls that
    /// resolved it just before fail instead of resurrecting it.
    pub(crate) removed: AtomicBool,
    /// The service's log, shared by its successive instances.
    pub(crate) log: Arc<GuestLog>,
    /// The quota ledger of the latest instance (scanned when it was created).
    quota: Mutex<Option<Arc<Quota>>>,
    /// Every call passes it (read side); `hold::CallHold` holds the write side
    /// while a replace copies this service's data and moves its alias.
    pub(crate) gate: Arc<tokio::sync::RwLock<()>>,
    /// Set when a hold ends with the alias moved away: calls still waiting
    /// are not run here (the runtime re-resolves the alias for them).
    pub(crate) superseded: AtomicBool,
}

/// An instantiated service.
pub(crate) struct Live {
    store: wasmtime::Store<HostState>,
    facade: Instance,
}

/// Slack of the outer timeout beyond TTL + 2 ticks: the epoch interruption
/// normally fires first; the outer timeout only catches a guest stuck where
/// epochs are not checked (e.g. inside a host call).
const OUTER_GRACE: Duration = Duration::from_millis(100);

/// Marks the epoch callback's interruption of a call that ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("time limit exceeded")]
struct TimedOut;

/// What a call needs from the runtime.
pub(crate) struct CallEnv<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) host_peer: &'a PeerId,
    pub(crate) ticks: &'a Arc<AtomicU64>,
    pub(crate) tick: Duration,
    pub(crate) max_queue: usize,
    pub(crate) limits: &'a GuestLimits,
    pub(crate) fd_budget: &'a Arc<FdBudget>,
}

/// Releases an admission slot when the call ends, however it ends.
struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Marks a service busy while a call holds its instance.
struct Running<'a>(&'a AtomicBool);

impl<'a> Running<'a> {
    fn start(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Release);
        Running(flag)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl ServiceSlot {
    pub(crate) fn new(row: ServiceRow, data_dir: PathBuf, log: LogLimits) -> Self {
        Self {
            log: Arc::new(GuestLog::new(row.id.clone(), log)),
            quota: Mutex::new(None),
            row,
            data_dir,
            live: tokio::sync::Mutex::new(None),
            admitted: AtomicUsize::new(0),
            running: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            gate: Arc::new(tokio::sync::RwLock::new(())),
            superseded: AtomicBool::new(false),
        }
    }

    /// Whether an instance exists now (a running call holds one).
    pub(crate) fn is_instantiated(&self) -> bool {
        self.live.try_lock().map(|g| g.is_some()).unwrap_or(true)
    }

    /// Whether a call is running now.
    pub(crate) fn is_busy(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Calls running or queued now.
    pub(crate) fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// Data usage as the latest instance accounted it (`None` before the
    /// first instance), and descriptors the instance holds now (0 while a
    /// call runs or without an instance).
    pub(crate) fn usage(&self) -> (Option<DataUsage>, u64) {
        let data = self.quota.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|q| q.usage());
        let open = match self.live.try_lock() {
            Ok(mut g) => g.as_mut().map(|l| l.store.data_mut().open_files.live() as u64).unwrap_or(0),
            Err(_) => 0,
        };
        (data, open)
    }

    /// Calls `func` of the facade with already converted `params`.
    #[allow(clippy::too_many_arguments)] // all borrowed context of one call; a struct would only rename them
    pub(crate) async fn call(
        &self,
        env: &CallEnv<'_>,
        prepared: &Prepared,
        target: &str,
        function: &str,
        export: &super::link::ExportFn,
        params: Vec<Val>,
        ttl: Duration,
    ) -> Result<serde_json::Value, CallError> {
        // The service's own queue depth (`distro.toml`) replaces the runtime's.
        let max_queue = prepared.service_limits.queue_depth.map_or(env.max_queue, |q| q as usize).max(1);
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= max_queue {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(CallError::Busy { target: target.to_string() });
        }
        let _admission = Admission(&self.admitted);
        // Waits while a replace holds this service's calls (`hold.rs`).
        let _gate = self.gate.read().await;
        if self.superseded.load(Ordering::Acquire) {
            return Err(CallError::UnknownTarget { target: target.to_string() });
        }
        let mut guard = self.live.lock().await;
        let _running = Running::start(&self.running);
        if self.removed.load(Ordering::Acquire) {
            return Err(CallError::UnknownTarget { target: target.to_string() });
        }
        let ttl_ms = ttl.as_millis() as u64;
        let outer = ttl.saturating_add(env.tick * 2).saturating_add(OUTER_GRACE);
        // Taken out of the slot for the call: it goes back only if the call
        // returns normally, so a trap, a timeout or a dropped future all
        // discard the instance and the next call starts fresh.
        let mut live = match guard.take() {
            Some(l) => l,
            None => self.instantiate(env, prepared, target, function, ttl).await?,
        };
        arm_deadline(&mut live.store, ttl, env.tick, prepared.names.len() - 1);
        live.store.data_mut().outbound.arm(target, ttl);
        let func = live.facade.get_func(&mut live.store, export.index).ok_or_else(|| CallError::Internal {
            target: target.to_string(),
            function: function.to_string(),
            message: "the instance lacks an export its component declares".into(),
        })?;
        let mut results = vec![placeholder(); export.sig.results.len()];
        let outcome = tokio::time::timeout(outer, func.call_async(&mut live.store, &params, &mut results)).await;
        match outcome {
            Ok(Ok(())) => {
                *guard = Some(live);
                // Checked on the lifted values, before any JSON exists.
                let cap = env.limits.max_result_bytes;
                if result_size(&results, cap) > cap {
                    return Err(CallError::ResultTooLarge { target: target.to_string(), function: function.to_string(), limit_bytes: cap });
                }
                Ok(results_to_json(&results))
            }
            Ok(Err(e)) => {
                let timed_out = live.store.data().timed_out;
                drop(live);
                Err(classify(e, timed_out, target, function, ttl_ms))
            }
            Err(_elapsed) => {
                drop(live);
                Err(CallError::Timeout { target: target.to_string(), function: function.to_string(), ttl_ms })
            }
        }
    }

    /// Creates the store and instantiates every component in order.
    async fn instantiate(
        &self,
        env: &CallEnv<'_>,
        prepared: &Prepared,
        target: &str,
        function: &str,
        ttl: Duration,
    ) -> Result<Live, CallError> {
        let internal = |message: String| CallError::Internal { target: target.to_string(), function: function.to_string(), message };
        std::fs::create_dir_all(&self.data_dir).map_err(|e| internal(format!("creating {}: {e}", self.data_dir.display())))?;
        let limiter = ComponentLimiter::new(prepared.names.clone(), prepared.limits.clone());
        let (dir, limits) = (self.data_dir.clone(), prepared.service_limits.apply(env.limits));
        let quota = tokio::task::spawn_blocking(move || Quota::scan(&dir, limits.data_quota_bytes, limits.data_quota_inodes))
            .await
            .map_err(|e| internal(format!("data usage scan failed: {e}")))?
            .map_err(|e| internal(format!("scanning the data dir for its quota: {e}")))?;
        let quota = Arc::new(quota);
        *self.quota.lock().unwrap_or_else(|p| p.into_inner()) = Some(quota.clone());
        let open_files = OpenFiles::new(limits.max_open_files as usize, env.fd_budget.clone());
        let mut state =
            HostState::new(&self.data_dir, env.host_peer.clone(), self.log.clone(), quota, open_files, limiter, env.ticks.clone())
                .map_err(|e| internal(e.to_string()))?;
        state.outbound.allow(&prepared.service_limits.allowed_outbound_hosts);
        state.outbound.arm(target, ttl);
        let mut store = wasmtime::Store::new(env.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut ctx| {
            let d = ctx.data_mut();
            if d.now_tick() >= d.deadline_tick {
                d.timed_out = true;
                Err(wasmtime::Error::new(TimedOut))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let outer = ttl.saturating_add(env.tick * 2).saturating_add(OUTER_GRACE);
        let mut facade = None;
        for (k, pre) in prepared.pres.iter().enumerate() {
            arm_deadline(&mut store, ttl, env.tick, k);
            let r = tokio::time::timeout(outer, pre.instantiate_async(&mut store)).await;
            let instance = match r {
                Ok(Ok(i)) => i,
                Ok(Err(e)) => {
                    let timed_out = store.data().timed_out;
                    let err = classify(e, timed_out, target, function, ttl.as_millis() as u64);
                    return Err(match err {
                        CallError::Trap { target, function, trap } => {
                            CallError::Trap { target, function, trap: format!("instantiating component {}: {trap}", prepared.names[k]) }
                        }
                        other => other,
                    });
                }
                Err(_) => {
                    return Err(CallError::Timeout { target: target.into(), function: function.into(), ttl_ms: ttl.as_millis() as u64 })
                }
            };
            store.data_mut().instances[k] = Some(instance);
            facade = Some(instance);
        }
        let facade = facade.ok_or_else(|| internal("the blueprint has no components".into()))?;
        Ok(Live { store, facade })
    }
}

/// Sets the deadline of the next guest entry: `ttl` rounded up to whole
/// ticks, plus one because the current tick is already partly over, so the
/// guest gets at least `ttl` and at most `ttl` + 2 ticks.
fn arm_deadline(store: &mut wasmtime::Store<HostState>, ttl: Duration, tick: Duration, active: usize) {
    let ticks = u64::try_from(ttl.as_nanos().div_ceil(tick.as_nanos().max(1)).max(1)).unwrap_or(u64::MAX / 2);
    let d = store.data_mut();
    d.deadline_tick = d.now_tick().saturating_add(ticks + 1);
    d.timed_out = false;
    d.limiter.active = active;
    // Check at the next epoch increment; the callback decides what happens.
    store.set_epoch_deadline(1);
}

/// Maps a failed guest call to the API error.
fn classify(e: wasmtime::Error, timed_out: bool, target: &str, function: &str, ttl_ms: u64) -> CallError {
    let (target, function) = (target.to_string(), function.to_string());
    if timed_out || e.chain().any(|c| c.is::<TimedOut>()) || matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return CallError::Timeout { target, function, ttl_ms };
    }
    if let Some(m) = e.chain().find_map(|c| c.downcast_ref::<MemoryLimitExceeded>()) {
        return CallError::Trap { target, function, trap: m.to_string() };
    }
    let location = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        // The name comes from the guest's name section: escaped like its log lines.
        .and_then(|bt| {
            bt.frames().iter().find_map(|f| f.func_name().map(|n| format!(" in guest function {}", super::guestio::escape(n, 256))))
        })
        .unwrap_or_default();
    let trap = match e.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => format!("stack overflow (call stack exhausted, e.g. by unbounded recursion){location}"),
        Some(Trap::UnreachableCodeReached) => format!("unreachable instruction executed (the guest panicked or aborted){location}"),
        Some(t) => format!("{t}{location}"),
        None => {
            // A host function or a forwarded call failed; report the root.
            let root = e.chain().last().map(|c| c.to_string()).unwrap_or_default();
            format!("{root}{location}")
        }
    };
    CallError::Trap { target, function, trap }
}
