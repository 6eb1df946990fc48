//! The clock scheduler: one task per spell that sleeps until the spell's next
//! run, runs it, and repeats; a supervisor that follows installs, updates and
//! removals; a graceful shutdown that starts no new run, gives a running one
//! a grace period and then cancels it without committing.
//!
//! States of a spell task: **waiting** (sleeping until `next_run`, or until
//! something changes if it never runs again), **running** (awaiting its run;
//! changes are picked up when it ends), **gone** (the spell was removed or the
//! scheduler is stopping; the task ends).

use super::engine::Cancel;
use super::{next_run, store, SpellError, Spells};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Longest single sleep: the wall clock is re-read at least this often, so a
/// clock jump delays a run by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Pause before retrying after the store could not be read.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);
/// How long a cancelled run may take to notice before it is abandoned.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Starts spell schedulers. See [`Scheduler::start`].
pub struct Scheduler;

/// The running scheduler.
pub struct SchedulerHandle {
    /// `true` = start no new run; spell tasks end after their current run.
    stop: watch::Sender<bool>,
    /// Cancels runs still going when the grace period is over.
    cancel: Cancel,
    supervisor: JoinHandle<()>,
}

impl Scheduler {
    /// Starts running spells on their schedule. Call it once deployment has
    /// finished. When `shutdown` completes no new run starts; call
    /// [`SchedulerHandle::shutdown`] to also wait for (or cancel) running ones.
    pub fn start(spells: Spells, shutdown: impl Future<Output = ()> + Send + 'static) -> SchedulerHandle {
        let stop = watch::channel(false).0;
        let cancel = Cancel::new();
        let stop_on_signal = stop.clone();
        let supervisor = tokio::spawn(supervise(spells, stop.subscribe(), cancel.clone(), async move {
            shutdown.await;
            stop_on_signal.send_replace(true);
        }));
        SchedulerHandle { stop, cancel, supervisor }
    }
}

impl SchedulerHandle {
    /// Stops the scheduler: no new run starts; runs in flight get `grace` to
    /// finish (and commit), then are cancelled without committing.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.send_replace(true);
        let mut supervisor = self.supervisor;
        if tokio::time::timeout(grace, &mut supervisor).await.is_ok() {
            return;
        }
        tracing::warn!(grace_ms = grace.as_millis() as u64, "spell runs still going after the grace period; cancelling them");
        self.cancel.cancel();
        if tokio::time::timeout(CANCEL_WAIT, &mut supervisor).await.is_err() {
            tracing::error!("spell runs did not stop after cancellation; abandoning them (nothing they wrote is kept)");
            supervisor.abort();
        }
    }
}

async fn supervise(spells: Spells, mut stop: watch::Receiver<bool>, cancel: Cancel, signal: impl Future<Output = ()>) {
    tokio::pin!(signal);
    let mut changes = spells.subscribe();
    // Spell tasks; dropping the set (e.g. when this task is aborted) aborts them.
    let mut tasks = JoinSet::new();
    // Spell id of each live task.
    let mut live: HashMap<tokio::task::Id, String> = HashMap::new();
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        changes.borrow_and_update();
        let listed = {
            let conn = spells.inner.store.lock();
            store::ids(&conn)
        };
        let mut retry = None;
        match listed {
            Ok(ids) => {
                for (id, alias) in ids {
                    if !live.values().any(|l| *l == id) {
                        tracing::debug!(spell = %alias, "scheduling spell");
                        let task = tasks.spawn(spell_loop(spells.clone(), id.clone(), stop.clone(), cancel.clone()));
                        live.insert(task.id(), id);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot list spells; retrying");
                retry = Some(RETRY_AFTER_ERROR);
            }
        }
        tokio::select! {
            _ = &mut signal => {}
            _ = stop.changed() => {}
            _ = changes.changed() => {}
            _ = sleep_opt(retry) => {}
            Some(done) = tasks.join_next_with_id() => {
                let task = match done {
                    Ok((task, ())) => task,
                    Err(e) => {
                        tracing::error!(error = %e, "a spell task failed; it is restarted");
                        e.id()
                    }
                };
                live.remove(&task);
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Runs one spell on its schedule until it is removed or the scheduler stops.
async fn spell_loop(spells: Spells, id: String, mut stop: watch::Receiver<bool>, cancel: Cancel) {
    let mut changes = spells.subscribe();
    // A recorded `last_run` later than the wall clock (the clock was stepped
    // back, e.g. a VM booted ahead and NTP corrected it) counts as the moment
    // it was first seen: (recorded last_run, the now it was clamped to). Kept
    // here because re-clamping to a fresh `now` on every wake-up would push
    // the run back forever.
    let mut clamped: Option<(u64, u64)> = None;
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        changes.borrow_and_update();
        let row = {
            let conn = spells.inner.store.lock();
            store::by_id(&conn, &id)
        };
        let row = match row {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(spell_id = %id, error = %e, "cannot read spell; retrying");
                wait(Some(RETRY_AFTER_ERROR), &mut stop, &mut changes).await;
                continue;
            }
        };
        let now_ms = spells.inner.clock.now_ms();
        let last_run = match row.last_run {
            Some(last) if last > now_ms / 1000 => match clamped {
                Some((recorded, at)) if recorded == last => Some(at),
                _ => {
                    let now = now_ms / 1000;
                    tracing::warn!(
                        spell = %row.alias,
                        last_run = last,
                        now,
                        "the spell's last run lies {} s in the future (the wall clock was stepped back); counting it as now",
                        last - now
                    );
                    clamped = Some((last, now));
                    Some(now)
                }
            },
            other => other,
        };
        let due = next_run(&row.trigger, last_run, row.runs_under_trigger, now_ms / 1000);
        let wait_ms = due.map(|t| t.saturating_mul(1000).saturating_sub(now_ms));
        match wait_ms {
            Some(0) => match spells.run_with(&row.alias, cancel.clone()).await {
                Ok(_) => {}
                Err(SpellError::Busy { .. }) => {
                    // A run started by hand is in flight; look again shortly.
                    wait(Some(Duration::from_secs(1)), &mut stop, &mut changes).await;
                }
                Err(SpellError::Unknown { .. }) => return,
                Err(e) => {
                    tracing::error!(spell = %row.alias, error = %e, "spell run could not be recorded; retrying");
                    wait(Some(RETRY_AFTER_ERROR), &mut stop, &mut changes).await;
                }
            },
            Some(ms) => wait(Some(Duration::from_millis(ms).min(MAX_SLEEP)), &mut stop, &mut changes).await,
            None => wait(None, &mut stop, &mut changes).await,
        }
    }
}

/// Sleeps for `d` (forever if `None`) or until a stop or a spell change.
async fn wait(d: Option<Duration>, stop: &mut watch::Receiver<bool>, changes: &mut watch::Receiver<u64>) {
    tokio::select! {
        _ = sleep_opt(d) => {}
        _ = stop.changed() => {}
        _ = changes.changed() => {}
    }
}
