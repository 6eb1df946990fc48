//! Holding a service's calls while a replacement takes over its data: a
//! blue-green replace with `keep_data` copies the old service's data dir,
//! so calls the old service applied after the copy would be lost with it.
//! [`Runtime::hold_calls`] waits for the call running on the old service to
//! finish and makes every later call wait (queued within the service's
//! admission bound, so beyond it callers get `busy` as usual) until the hold
//! is released. Released after the alias moved, the held calls made through
//! the alias run on the new service; released after a failure, they run on
//! the old one, which stayed bound.

use super::service::ServiceSlot;
use super::{Runtime, RuntimeError};
use crate::ids::ServiceId;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Calls to one service are held while this lives.
pub struct CallHold {
    slot: Arc<ServiceSlot>,
    /// Write side of the slot's call gate; every call takes the read side.
    _gate: tokio::sync::OwnedRwLockWriteGuard<()>,
    since: Instant,
}

impl std::fmt::Debug for CallHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallHold").field("service", &self.slot.row.id).field("held_for", &self.since.elapsed()).finish()
    }
}

impl Runtime {
    /// Holds the calls of service `id`: returns once no call runs on it; from
    /// then on new calls wait until the hold is released.
    pub async fn hold_calls(&self, id: &ServiceId) -> Result<CallHold, RuntimeError> {
        let slot = self.inner.slot(id)?;
        let gate = slot.gate.clone().write_owned().await;
        Ok(CallHold { slot, _gate: gate, since: Instant::now() })
    }
}

impl CallHold {
    /// How long calls have been held so far.
    pub fn held_for(&self) -> Duration {
        self.since.elapsed()
    }

    /// The replace failed and the old service stays bound: held calls run on
    /// it. Returns how long calls were held.
    pub fn release(self) -> Duration {
        self.since.elapsed()
    }

    /// The alias has moved to the new service: held calls made through the
    /// alias are sent there; calls made by the old service's id fail as
    /// unknown (none of them was applied). Returns how long calls were held.
    pub fn release_moved(self) -> Duration {
        self.slot.superseded.store(true, Ordering::Release);
        self.since.elapsed()
    }
}
