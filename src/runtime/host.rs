//! What a guest sees: the per-service store data (WASI context with one
//! preopened directory and stdout/stderr forwarded to the node's log, the
//! `sysdeploy:host/node` interface, the memory limiter, the data quota and
//! descriptor cap) and the base linker every blueprint's linkers start from.

use super::guestio::{GuestLevel, GuestLog, GuestOutput, GuestSource};
use super::limits::{OpenFiles, Quota};
use super::RuntimeError;
use crate::ids::PeerId;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::Engine;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "wit/host.wit",
    world: "guest-host",
});

use sysdeploy::host::node::Level;

/// The guest path of a service's data directory.
pub const DATA_DIR_GUEST_PATH: &str = "/data";

/// Per-service store data.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: ComponentLimiter,
    /// Returned by `peer-id`.
    peer_id: PeerId,
    /// The service's log (host `log`, stdout, stderr): escaped, rate-limited.
    log: Arc<GuestLog>,
    /// The data dir's quota ledger.
    pub(crate) quota: Arc<Quota>,
    /// Descriptors this instance holds.
    pub(crate) open_files: OpenFiles,
    /// Instances of the blueprint's components, in order; forwarding
    /// functions of component k call into entries j < k.
    pub(crate) instances: Vec<Option<wasmtime::component::Instance>>,
    /// Epoch tick count at which the current call is out of time.
    pub(crate) deadline_tick: u64,
    /// Ticks elapsed since the runtime started (advanced by the ticker
    /// thread together with the engine epoch).
    pub(crate) ticks: Arc<AtomicU64>,
    /// Set by the epoch callback when it interrupts a call, so the caller can
    /// tell a timeout from other traps even if wasmtime rewraps the error.
    pub(crate) timed_out: bool,
}

impl HostState {
    #[allow(clippy::too_many_arguments)] // each is one piece of the instance's world
    pub(crate) fn new(
        data_dir: &Path,
        peer_id: PeerId,
        log: Arc<GuestLog>,
        quota: Arc<Quota>,
        open_files: OpenFiles,
        limiter: ComponentLimiter,
        ticks: Arc<AtomicU64>,
    ) -> Result<Self, RuntimeError> {
        // Deny by default: no env, no args, no stdin, no network; the data
        // directory is the only filesystem; stdout and stderr go to the log.
        let mut b = WasiCtxBuilder::new();
        b.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        // Filesystem calls run on the thread that runs the guest instead of a
        // round trip through tokio's blocking pool per call (see
        // `limits::add_to_linker` for the exceptions).
        b.allow_blocking_current_thread(true);
        b.stdout(GuestOutput::new(log.clone(), GuestSource::Stdout));
        b.stderr(GuestOutput::new(log.clone(), GuestSource::Stderr));
        b.preopened_dir(data_dir, DATA_DIR_GUEST_PATH, FsPerms::ReadWrite)
            .map_err(|e| RuntimeError::Io { path: data_dir.to_path_buf(), source: std::io::Error::other(e.to_string()) })?;
        let n = limiter.limits.len();
        Ok(Self {
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter,
            peer_id,
            log,
            quota,
            open_files,
            instances: vec![None; n],
            deadline_tick: u64::MAX,
            ticks,
            timed_out: false,
        })
    }

    pub(crate) fn now_tick(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    pub(crate) fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// The service id, for log events.
    pub(crate) fn service_id(&self) -> &str {
        self.log.service()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl sysdeploy::host::node::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace => GuestLevel::Trace,
            Level::Debug => GuestLevel::Debug,
            Level::Info => GuestLevel::Info,
            Level::Warn => GuestLevel::Warn,
            Level::Error => GuestLevel::Error,
        };
        self.log.line(level, GuestSource::Log, &message);
    }
    fn peer_id(&mut self) -> String {
        self.peer_id.to_string()
    }
    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// The linker with everything the host provides: WASI 0.2 and
/// `sysdeploy:host/node`. Shadowing is allowed so a blueprint's earlier
/// components take precedence over the host for the names they export.
pub(crate) fn base_linker(engine: &Engine) -> Result<Linker<HostState>, RuntimeError> {
    let mut linker = Linker::new(engine);
    linker.allow_shadowing(true);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| RuntimeError::Wasmtime(format!("adding WASI to the linker: {e:#}")))?;
    sysdeploy::host::node::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        .map_err(|e| RuntimeError::Wasmtime(format!("adding sysdeploy:host/node to the linker: {e:#}")))?;
    super::limits::add_to_linker(&mut linker)
        .map_err(|e| RuntimeError::Wasmtime(format!("adding the quota and descriptor checks to the linker: {e:#}")))?;
    Ok(linker)
}

/// A guest tried to grow memory past its component's cap. Raised from the
/// limiter as a trap, never turned into a silent `memory.grow` of -1.
#[derive(Debug, Clone, thiserror::Error)]
#[error("component {component} exceeded its memory limit of {limit_mib} MiB (it asked to grow to {requested_mib} MiB); raise memory_limit_mb if this is expected")]
pub struct MemoryLimitExceeded {
    pub component: String,
    pub limit_mib: u64,
    pub requested_mib: u64,
}

/// Limits linear memory per component of a blueprint.
///
/// wasmtime's `StoreLimits` caps each memory of a store alike; a blueprint
/// gives each component its own cap. The limiter charges growth to the
/// component whose code is running: `active` is set before instantiating
/// component k, to the facade for a call, and to the callee while a
/// forwarding function runs another component's export.
pub(crate) struct ComponentLimiter {
    pub(crate) names: Vec<String>,
    /// Bytes each component may hold across its memories.
    pub(crate) limits: Vec<u64>,
    /// Bytes each component holds now.
    used: Vec<u64>,
    /// Index of the component whose code runs now.
    pub(crate) active: usize,
    /// Growth granted by `memory_growing` but not yet confirmed, refunded if
    /// wasmtime then fails the grow.
    pending: u64,
}

/// Tables are small; this only stops a table bomb.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl ComponentLimiter {
    pub(crate) fn new(names: Vec<String>, limits: Vec<u64>) -> Self {
        let n = limits.len();
        Self { names, limits, used: vec![0; n], active: 0, pending: 0 }
    }
}

impl wasmtime::ResourceLimiter for ComponentLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let k = self.active.min(self.limits.len().saturating_sub(1));
        let delta = desired.saturating_sub(current) as u64;
        let total = self.used[k].saturating_add(delta);
        if total > self.limits[k] {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                component: self.names[k].clone(),
                limit_mib: self.limits[k] >> 20,
                requested_mib: total.div_ceil(1 << 20),
            }));
        }
        self.used[k] = total;
        self.pending = delta;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        let k = self.active.min(self.limits.len().saturating_sub(1));
        self.used[k] = self.used[k].saturating_sub(self.pending);
        self.pending = 0;
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
