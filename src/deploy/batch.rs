//! Installs in batches: a run of consecutive `Install` steps of one package
//! costs one transaction for the intents, one for the service records, one
//! `syncfs` after every init call, and one transaction that binds every alias
//! together with its entry (intent cleared) — instead of six commits and a
//! `syncfs` per service. The crash guarantees are the single install's:
//!
//! 1. intents (phase `Created`, with the chosen service id and the entry)
//!    are committed before anything is created (`deploy::install::intents`);
//! 2. data dirs and service records (`deploy::install::created`);
//! 3. init calls, then one `syncfs` of the data dirs' file system
//!    (`deploy::install::initialised`): data is durable before any alias
//!    points at it;
//! 4. aliases bound, entries written, intents cleared in one transaction
//!    (`deploy::install::bound`).
//!
//! A crash before 4 leaves intents whose alias does not point at their
//! service: recovery removes the service (if it was created) and clears the
//! intent; after 4 nothing is left to do. Steps keep their order semantics:
//! when step k fails, steps before it are bound, step k and the rest of the
//! run are rolled back, and the executor reports the rest as not run.

use super::executor::{Deployer, StepFailure};
use super::journal::{complete_in, Action, Intent, Phase};
use super::model::*;
use super::plan::Step;
use super::steps::{fail, sync_filesystem};
use crate::ids::ServiceId;
use crate::runtime::AliasTarget;
use std::time::{Duration, Instant};

/// One step's result and how long it took (its own init calls plus its
/// share of the batch's common work).
pub(super) type Done = (Result<u32, StepFailure>, Duration);

impl Deployer {
    /// Runs `steps` (all `Install`, in plan order). Returns one result per
    /// step that ran, in order; it stops after the first failure (the
    /// executor reports the steps after it as not run).
    pub(super) async fn install_batch(&self, steps: &[(&Step, &DesiredService)]) -> Vec<Done> {
        let t0 = Instant::now();
        let n = steps.len();
        let mut own = vec![Duration::ZERO; n];
        // Everything fails at once before any service exists.
        let all_fail = |f: StepFailure| vec![(Err(f), t0.elapsed())];
        let entries = match self.journal.deployed() {
            Ok(e) => e,
            Err(e) => return all_fail(fail(e)),
        };
        let now = super::journal::now_ms();
        let intents: Vec<Intent> = steps
            .iter()
            .map(|(step, s)| {
                let id = ServiceId::random();
                Intent {
                    alias: step.alias().clone(),
                    package: step.package().clone(),
                    action: Action::Install,
                    phase: Phase::Created,
                    entry: Some(self.entry_for_service(s, &id, now)),
                    new_service: Some(id),
                }
            })
            .collect();
        if let Err(e) = self.journal.put_intents(&intents) {
            return all_fail(fail(e));
        }
        crash_point!("deploy::install::intents");

        // A spell recorded under an alias (the alias changes kind) goes
        // first; removing it completes its own record, so the intent is
        // written again.
        let mut failed: Option<(usize, StepFailure)> = None;
        for (i, (_, s)) in steps.iter().enumerate() {
            if let Some(Deployed { kind: DeployedKind::Spell { .. }, .. }) = entries.get(&s.alias) {
                let r = match self.finish_remove_spell(&s.alias).await {
                    Ok(()) => self.journal.put_intent(&intents[i]).map_err(fail),
                    Err(f) => Err(f),
                };
                if let Err(f) = r {
                    failed = Some((i, f));
                    break;
                }
            }
        }
        let upto = failed.as_ref().map_or(n, |(i, _)| *i);
        let items: Vec<(ServiceId, crate::ids::BlueprintId)> =
            steps[..upto].iter().zip(&intents).map(|((_, s), it)| (new_id(it).clone(), s.blueprint_id)).collect();
        if let Err(e) = self.runtime.create_services(&items, &self.host).await {
            // Nothing was created; the first step carries the error.
            let _ = self.journal.clear_intents(intents.iter().map(|i| &i.alias));
            return all_fail(fail(e));
        }
        crash_point!("deploy::install::created");

        let mut attempts = vec![0u32; n];
        let mut ran = upto;
        for i in 0..upto {
            let t = Instant::now();
            let r = self.start_from_data(steps[i].1, new_id(&intents[i])).await;
            own[i] = t.elapsed();
            match r {
                Ok(a) => attempts[i] = a,
                Err(f) => {
                    failed = Some((i, f));
                    ran = i;
                    break;
                }
            }
        }
        // Steps from the failed one on are rolled back.
        let keep = failed.as_ref().map_or(ran, |(i, _)| *i);
        let mut failed_step = failed;
        if keep > 0 {
            let dir = self.runtime.data_dir(new_id(&intents[0]));
            match sync_filesystem(&dir) {
                Ok(()) => {
                    for it in &intents[..keep] {
                        crate::failpoint::trace::event(|| format!("synced {}", new_id(it)));
                    }
                }
                Err(e) => {
                    let f = fail(format!("making the data of the new services durable ({}): {e}", dir.display()));
                    self.abort(&intents, upto).await;
                    return all_fail(f);
                }
            }
            crash_point!("deploy::install::initialised");
        }

        // Aliases: free ones are bound in one transaction with their entries;
        // one this host holds is taken over on its own; one held by someone
        // else fails its step (and, as always, stops the run there).
        let mut free = Vec::new();
        let mut held = Vec::new();
        let mut bind_upto = keep;
        for i in 0..keep {
            let alias = &intents[i].alias;
            match self.runtime.alias(alias) {
                None => free.push(i),
                Some(b) if b.owner == self.host => held.push(i),
                Some(b) => {
                    failed_step = Some((i, fail(format!("alias {alias} is held by {}; it is left untouched", b.owner))));
                    bind_upto = i;
                    break;
                }
            }
        }
        free.retain(|i| *i < bind_upto);
        held.retain(|i| *i < bind_upto);
        if !free.is_empty() {
            let bindings: Vec<_> =
                free.iter().map(|&i| (intents[i].alias.clone(), AliasTarget::Service(new_id(&intents[i]).clone()))).collect();
            let records: Vec<&Deployed> = free.iter().map(|&i| intents[i].entry.as_ref().expect("entry recorded")).collect();
            let r = self.runtime.bind_aliases_with(&bindings, &self.host, |tx| records.iter().try_for_each(|e| complete_in(tx, e)));
            if let Err(e) = r {
                self.abort(&intents, upto).await;
                return all_fail(fail(e));
            }
            for (alias, target) in &bindings {
                crate::failpoint::trace::event(|| format!("bound {alias} -> {target:?}"));
            }
            crash_point!("deploy::install::bound");
        }
        let mut results: Vec<Option<Result<u32, StepFailure>>> = (0..n).map(|_| None).collect();
        for &i in &free {
            results[i] = Some(Ok(attempts[i]));
        }
        for &i in &held {
            let it = &intents[i];
            let r = match self.take_alias(&it.alias, AliasTarget::Service(new_id(it).clone())).await {
                Ok(()) => self.journal.complete(&it.alias, it.entry.as_ref()).map(|_| attempts[i]).map_err(fail),
                Err(f) => {
                    self.roll_back(std::slice::from_ref(it)).await;
                    Err(f)
                }
            };
            results[i] = Some(r);
        }
        if let Some((k, f)) = failed_step {
            self.roll_back(&intents[k..upto]).await;
            // The intents of steps that never created anything.
            if upto < n {
                let _ = self.journal.clear_intents(intents[upto..].iter().map(|i| &i.alias));
            }
            results[k] = Some(Err(StepFailure { attempts: f.attempts.max(attempts[k]), ..f }));
            results.truncate(k + 1);
        }
        let shared = t0.elapsed().saturating_sub(own.iter().sum()) / n.max(1) as u32;
        results.into_iter().enumerate().map_while(|(i, r)| r.map(|r| (r, own[i] + shared))).collect()
    }

    /// A new service's data and init: data kept from an earlier service when
    /// `restore_data_from` says so (then migrated when its version differs,
    /// and only the on-change init calls run, as on a replace carrying data);
    /// otherwise every init call on the empty data dir.
    async fn start_from_data(&self, s: &DesiredService, id: &ServiceId) -> Result<u32, StepFailure> {
        let Some(kept) = &s.restore_data_from else { return self.run_init(s, id, false).await };
        self.restore_kept(kept, id).await?;
        if let Some(from) = self.migrate_from_of(s, id)? {
            self.run_migrate(s, id, &from).await?;
        }
        self.run_init(s, id, true).await
    }

    /// Rolls the whole batch back: the services of `intents[..created]`
    /// and every intent.
    async fn abort(&self, intents: &[Intent], created: usize) {
        self.roll_back(&intents[..created]).await;
        if let Err(e) = self.journal.clear_intents(intents[created..].iter().map(|i| &i.alias)) {
            tracing::warn!("clearing the intents of rolled back installs: {e}");
        }
    }

    /// Removes the services these intents created (if they exist) and clears
    /// the intents, in one transaction.
    async fn roll_back(&self, intents: &[Intent]) {
        for it in intents {
            let id = new_id(it);
            if self.runtime.resolve(id.as_str()).is_some() {
                if let Err(e) = self.runtime.remove_service(id, false).await {
                    tracing::warn!(alias = %it.alias, "rolling back new service {id}: {e}; the next boot removes it");
                }
            }
        }
        if let Err(e) = self.journal.clear_intents(intents.iter().map(|i| &i.alias)) {
            tracing::warn!("clearing the intents of rolled back installs: {e}");
        }
    }
}

fn new_id(intent: &Intent) -> &ServiceId {
    intent.new_service.as_ref().expect("a batched install records its service id")
}
