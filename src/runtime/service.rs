//! Live services: one wasmtime `Store` per service, created lazily on the
//! first call, serialised per service with a bounded admission, with a TTL
//! enforced by epoch interruption and an outer timeout.
//!
//! Calls to one service are run by that service's own call task, spawned at
//! its first call: callers convert their JSON arguments, queue a [`Job`] and
//! wait for its answer; the task takes the jobs in arrival order and runs
//! them back to back on the service's instance, so the instance never sits
//! idle waiting for a woken caller to be scheduled (the tail a fair mutex
//! handed from caller to caller had: every handoff waited for a worker to
//! poll the next caller). Results are turned into JSON by the caller, off the
//! task's critical path.
//!
//! Guest code runs through `call_async` on a wasmtime fiber. The epoch
//! callback yields back to tokio on every tick, so a busy guest occupies a
//! worker thread for at most one tick (10 ms by default) at a time, and a
//! caller that goes away (outer timeout, client gone) abandons its call: the
//! task stops it and discards the instance. This keeps calls cancellable;
//! `spawn_blocking` with synchronous calls could not be cancelled from
//! outside and would need one OS thread per running guest.

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
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use wasmtime::component::{ComponentExportIndex, Instance, Val};
use wasmtime::{Engine, Trap, UpdateDeadline};

/// A service known to the runtime.
pub(crate) struct ServiceSlot {
    pub(crate) row: ServiceRow,
    pub(crate) data_dir: PathBuf,
    /// The instance; `None` until the first call and after a trap. The call
    /// task holds the lock for each call it runs; removal and the data copy
    /// of a replace take it between calls.
    pub(crate) live: tokio::sync::Mutex<Option<Live>>,
    /// Calls admitted (running or waiting for their turn).
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
    /// The queue of the service's call task; `None` before the first call.
    queue: RwLock<Option<mpsc::UnboundedSender<Job>>>,
    /// Jobs queued for the call task and not finished yet. Jobs lost with a
    /// call task whose tokio runtime shut down stay counted: the service then
    /// always queues (slower for a lone call, never wrong).
    pending: AtomicUsize,
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

/// The same, owned by a service's call task (constant for its life).
struct TaskEnv {
    engine: Engine,
    host_peer: PeerId,
    ticks: Arc<AtomicU64>,
    tick: Duration,
    limits: GuestLimits,
    fd_budget: Arc<FdBudget>,
}

impl TaskEnv {
    fn view(&self) -> CallEnv<'_> {
        CallEnv {
            engine: &self.engine,
            host_peer: &self.host_peer,
            ticks: &self.ticks,
            tick: self.tick,
            max_queue: usize::MAX,
            limits: &self.limits,
            fd_budget: &self.fd_budget,
        }
    }
}

impl CallEnv<'_> {
    fn owned(&self) -> TaskEnv {
        TaskEnv {
            engine: self.engine.clone(),
            host_peer: self.host_peer.clone(),
            ticks: self.ticks.clone(),
            tick: self.tick,
            limits: *self.limits,
            fd_budget: self.fd_budget.clone(),
        }
    }
}

/// One queued call: everything the call task needs, already converted.
struct Job {
    prepared: Arc<Prepared>,
    export: ComponentExportIndex,
    results: usize,
    params: Vec<Val>,
    ttl: Duration,
    /// The alias or id the caller named (outbound HTTP logs name it).
    target: String,
    reply: oneshot::Sender<Result<Vec<Val>, Failure>>,
}

/// Why the call task could not answer with results; the caller names its
/// target and function when turning it into a [`CallError`].
enum Failure {
    Removed,
    Timeout,
    Trap(String),
    Internal(String),
}

impl Failure {
    fn into_call_error(self, target: &str, function: &str, ttl: Duration) -> CallError {
        let (target, function) = (target.to_string(), function.to_string());
        match self {
            Failure::Removed => CallError::UnknownTarget { target },
            Failure::Timeout => CallError::Timeout { target, function, ttl_ms: ttl.as_millis() as u64 },
            Failure::Trap(trap) => CallError::Trap { target, function, trap },
            Failure::Internal(message) => CallError::Internal { target, function, message },
        }
    }
}

/// Releases an admission slot when the call ends, however it ends.
struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a queued job finished, however its turn ends.
struct Done<'a>(&'a AtomicUsize);

impl Drop for Done<'_> {
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
            queue: RwLock::new(None),
            pending: AtomicUsize::new(0),
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

    /// Calls the facade's export `export` with already converted `params`:
    /// queues the call for the service's call task and waits for its turn and
    /// its answer. Dropping the returned future abandons the call (the task
    /// skips it, or stops it and discards the instance if it is running).
    #[allow(clippy::too_many_arguments)] // all borrowed context of one call; a struct would only rename them
    pub(crate) async fn call(
        self: &Arc<Self>,
        env: &CallEnv<'_>,
        prepared: Arc<Prepared>,
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
        // Waits while a replace holds this service's calls (`hold.rs`); held
        // until the answer, so a hold also waits for calls already queued.
        let _gate = self.gate.read().await;
        if self.superseded.load(Ordering::Acquire) || self.removed.load(Ordering::Acquire) {
            return Err(CallError::UnknownTarget { target: target.to_string() });
        }
        let results = match self.call_idle(env, target, &prepared, export, &params, ttl).await {
            // The service was idle: run on the caller's task, no handoff.
            Some(r) => r,
            None => {
                let (reply, answer) = oneshot::channel();
                let job = Job {
                    prepared,
                    export: export.index,
                    results: export.sig.results.len(),
                    params,
                    ttl,
                    target: target.to_string(),
                    reply,
                };
                self.submit(env, job);
                answer.await.unwrap_or_else(|_| {
                    Err(Failure::Internal("the service's call task stopped before answering (the node is shutting down)".into()))
                })
            }
        };
        let results = results.map_err(|failure| failure.into_call_error(target, function, ttl))?;
        // Checked on the lifted values, before any JSON exists; the instance
        // was kept.
        let cap = env.limits.max_result_bytes;
        if result_size(&results, cap) > cap {
            return Err(CallError::ResultTooLarge { target: target.to_string(), function: function.to_string(), limit_bytes: cap });
        }
        Ok(results_to_json(&results))
    }

    /// Runs the call on the caller's task when nothing is queued and no call
    /// runs (an idle service need not wake its call task and wait for it);
    /// `None` when the call has to queue. Calls that queued before keep their
    /// turn: the path is taken only with an empty queue.
    async fn call_idle(
        &self,
        env: &CallEnv<'_>,
        target: &str,
        prepared: &Prepared,
        export: &super::link::ExportFn,
        params: &[Val],
        ttl: Duration,
    ) -> Option<Result<Vec<Val>, Failure>> {
        if self.pending.load(Ordering::Acquire) != 0 {
            return None;
        }
        let mut guard = self.live.try_lock().ok()?;
        if self.pending.load(Ordering::Acquire) != 0 {
            return None;
        }
        Some(self.run_job(env, target, &mut guard, prepared, export.index, export.sig.results.len(), params, ttl).await)
    }

    /// One call under the `live` lock: refused if the service was removed
    /// meanwhile, marked running while it runs.
    #[allow(clippy::too_many_arguments)] // the parts of one call
    async fn run_job(
        &self,
        env: &CallEnv<'_>,
        target: &str,
        guard: &mut Option<Live>,
        prepared: &Prepared,
        export: ComponentExportIndex,
        results: usize,
        params: &[Val],
        ttl: Duration,
    ) -> Result<Vec<Val>, Failure> {
        if self.removed.load(Ordering::Acquire) {
            return Err(Failure::Removed);
        }
        let _running = Running::start(&self.running);
        self.run(env, target, guard, prepared, export, results, params, ttl).await
    }

    /// Queues `job` for the service's call task, starting the task on the
    /// current tokio runtime at the first call (or when the runtime that ran
    /// it is gone).
    fn submit(self: &Arc<Self>, env: &CallEnv<'_>, job: Job) {
        // `Some(job)` back when there is no live task to take it.
        fn offer(tx: Option<&mpsc::UnboundedSender<Job>>, job: Job) -> Option<Job> {
            let Some(tx) = tx else { return Some(job) };
            tx.send(job).err().map(|mpsc::error::SendError(job)| job)
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        let Some(job) = offer(self.queue.read().unwrap_or_else(|p| p.into_inner()).as_ref(), job) else { return };
        let mut queue = self.queue.write().unwrap_or_else(|p| p.into_inner());
        // Another caller may have started the task meanwhile.
        let Some(job) = offer(queue.as_ref(), job) else { return };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(job);
        *queue = Some(tx);
        tokio::spawn(call_task(Arc::downgrade(self), rx, env.owned()));
    }

    /// Runs one call on the instance in `guard`, instantiating it first if
    /// needed. The instance goes back into `guard` only if the call returned
    /// normally: a trap, a timeout or dropping this future (the caller went
    /// away) discards it, and the next call starts fresh.
    #[allow(clippy::too_many_arguments)] // the parts of one queued call
    async fn run(
        &self,
        env: &CallEnv<'_>,
        target: &str,
        guard: &mut Option<Live>,
        prepared: &Prepared,
        export: ComponentExportIndex,
        results: usize,
        params: &[Val],
        ttl: Duration,
    ) -> Result<Vec<Val>, Failure> {
        let outer = ttl.saturating_add(env.tick * 2).saturating_add(OUTER_GRACE);
        let mut live = match guard.take() {
            Some(l) => l,
            None => self.instantiate(env, target, prepared, ttl).await?,
        };
        arm_deadline(&mut live.store, ttl, env.tick, prepared.names.len() - 1);
        live.store.data_mut().outbound.arm(target, ttl);
        let func = live
            .facade
            .get_func(&mut live.store, export)
            .ok_or_else(|| Failure::Internal("the instance lacks an export its component declares".into()))?;
        let mut out = vec![placeholder(); results];
        match tokio::time::timeout(outer, func.call_async(&mut live.store, params, &mut out)).await {
            Ok(Ok(())) => {
                *guard = Some(live);
                Ok(out)
            }
            Ok(Err(e)) => {
                let timed_out = live.store.data().timed_out;
                drop(live);
                Err(classify(e, timed_out))
            }
            Err(_elapsed) => Err(Failure::Timeout),
        }
    }

    /// Creates the store and instantiates every component in order.
    async fn instantiate(&self, env: &CallEnv<'_>, target: &str, prepared: &Prepared, ttl: Duration) -> Result<Live, Failure> {
        std::fs::create_dir_all(&self.data_dir).map_err(|e| Failure::Internal(format!("creating {}: {e}", self.data_dir.display())))?;
        let limiter = ComponentLimiter::new(prepared.names.clone(), prepared.limits.clone());
        let (dir, limits) = (self.data_dir.clone(), prepared.service_limits.apply(env.limits));
        let quota = tokio::task::spawn_blocking(move || Quota::scan(&dir, limits.data_quota_bytes, limits.data_quota_inodes))
            .await
            .map_err(|e| Failure::Internal(format!("data usage scan failed: {e}")))?
            .map_err(|e| Failure::Internal(format!("scanning the data dir for its quota: {e}")))?;
        let quota = Arc::new(quota);
        *self.quota.lock().unwrap_or_else(|p| p.into_inner()) = Some(quota.clone());
        let open_files = OpenFiles::new(limits.max_open_files as usize, env.fd_budget.clone());
        let mut state =
            HostState::new(&self.data_dir, env.host_peer.clone(), self.log.clone(), quota, open_files, limiter, env.ticks.clone())
                .map_err(|e| Failure::Internal(e.to_string()))?;
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
            let instance = match tokio::time::timeout(outer, pre.instantiate_async(&mut store)).await {
                Ok(Ok(i)) => i,
                Ok(Err(e)) => {
                    let timed_out = store.data().timed_out;
                    return Err(match classify(e, timed_out) {
                        Failure::Trap(trap) => Failure::Trap(format!("instantiating component {}: {trap}", prepared.names[k])),
                        other => other,
                    });
                }
                Err(_) => return Err(Failure::Timeout),
            };
            store.data_mut().instances[k] = Some(instance);
            facade = Some(instance);
        }
        let facade = facade.ok_or_else(|| Failure::Internal("the blueprint has no components".into()))?;
        Ok(Live { store, facade })
    }
}

/// The call task of one service: runs its queued calls one at a time, in
/// arrival order, each under the `live` lock. Ends when the service is gone
/// (its slot dropped, which closes the queue).
async fn call_task(slot: Weak<ServiceSlot>, mut queue: mpsc::UnboundedReceiver<Job>, env: TaskEnv) {
    let env = env.view();
    while let Some(job) = queue.recv().await {
        let Some(slot) = slot.upgrade() else { return };
        let _done = Done(&slot.pending);
        let Job { prepared, export, results, params, ttl, target, mut reply } = job;
        // The caller went away before its turn: the call is not run.
        if reply.is_closed() {
            continue;
        }
        let mut guard = slot.live.lock().await;
        // The caller may have gone away while this job waited for the
        // instance (taken from the queue, then blocked on a running call):
        // its turn has come, but nobody waits for it, so it is not run.
        if reply.is_closed() {
            continue;
        }
        let out = tokio::select! {
            biased;
            r = slot.run_job(&env, &target, &mut guard, &prepared, export, results, &params, ttl) => Some(r),
            // The caller went away mid-call: stop the guest (the instance
            // is discarded with the dropped call).
            _ = reply.closed() => None,
        };
        drop(guard);
        if let Some(out) = out {
            let _ = reply.send(out);
        }
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

/// What a failed guest call was.
fn classify(e: wasmtime::Error, timed_out: bool) -> Failure {
    if timed_out || e.chain().any(|c| c.is::<TimedOut>()) || matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return Failure::Timeout;
    }
    if let Some(m) = e.chain().find_map(|c| c.downcast_ref::<MemoryLimitExceeded>()) {
        return Failure::Trap(m.to_string());
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
    Failure::Trap(trap)
}
