//! Crash recovery: every intent a crash left behind is finished or rolled
//! back against the observed state (the same `Current` the planner reads),
//! then host-owned services nothing refers to are removed and the runtime
//! collects what no service uses.

use super::executor::{DeployError, Deployer};
use super::journal::{Action, Intent, Phase};
use super::model::Current;
use crate::runtime::AliasTarget;
use std::collections::BTreeSet;

/// What recovery does with one intent, decided from the observed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The alias already points at the new service: write the entry, remove
    /// the replaced service.
    RollForward,
    /// The alias does not point at the new service: remove it (if created).
    RollBack,
    /// An idempotent step (reinit, update-spell, kv-apply, repair): the entry
    /// still says "old", so the plan runs it again.
    RunAgain,
    /// A remove: finish it.
    FinishRemove,
}

/// Decides what to do with `intent` given what is observed.
pub fn resolve(intent: &Intent, current: &Current, host: &crate::ids::PeerId) -> Resolution {
    let bound = current.aliases.get(&intent.alias).filter(|h| h.owner == *host);
    match &intent.action {
        Action::Install | Action::Replace { .. } => {
            let swapped = matches!((bound, &intent.new_service), (Some(h), Some(n)) if h.kind == "service" && h.target == n.as_str());
            // Before `Created` no new service was recorded: nothing to keep.
            if swapped && intent.phase >= Phase::Created && intent.entry.is_some() {
                Resolution::RollForward
            } else {
                Resolution::RollBack
            }
        }
        Action::InstallSpell => {
            let spell = current.spells.get(&intent.alias);
            let entry_spell = intent.entry.as_ref().and_then(|e| match &e.kind {
                super::model::DeployedKind::Spell { spell_id, .. } => Some(spell_id.clone()),
                _ => None,
            });
            let swapped =
                matches!((bound, spell, &entry_spell), (Some(h), Some(s), Some(id)) if h.kind == "spell" && h.target == *id && s.id == *id);
            if swapped {
                Resolution::RollForward
            } else {
                Resolution::RollBack
            }
        }
        Action::Reinit | Action::UpdateSpell | Action::KvApply | Action::Repair => Resolution::RunAgain,
        Action::Remove { .. } | Action::RemoveSpell => Resolution::FinishRemove,
    }
}

impl Deployer {
    /// Finishes or rolls back every step a crash interrupted, then removes
    /// orphans (host-owned services no alias and no entry refer to) and
    /// collects unreferenced components, artifacts and data dirs. Returns one
    /// line per action, for the report.
    pub async fn recover(&self) -> Result<Vec<String>, DeployError> {
        // A kept-data move a crash interrupted is finished first, so nothing
        // below deletes a data dir recorded as kept (`kept.rs`).
        let mut done = self.settle_kept().await.map_err(|message| DeployError::Recovery {
            alias: "kept data".into(),
            action: "keep-data",
            message,
        })?;
        let intents = self.journal.intents()?;
        // Observed once: an intent's resolution reads only its own alias, and
        // recovering one intent touches only its alias and its services (a
        // batch of 10,000 interrupted installs is then linear, not quadratic).
        let current = if intents.is_empty() { Current::default() } else { self.current()? };
        for intent in intents {
            let line = self.recover_one(&intent, &current).await.map_err(|message| DeployError::Recovery {
                alias: intent.alias.to_string(),
                action: intent.action.kind(),
                message,
            })?;
            tracing::info!("recovery: {line}");
            done.push(line);
        }
        done.extend(self.sweep_orphans().await?);
        Ok(done)
    }

    async fn recover_one(&self, intent: &Intent, current: &Current) -> Result<String, String> {
        let alias = &intent.alias;
        let kind = intent.action.kind();
        let err = |e: &dyn std::fmt::Display| e.to_string();
        match (resolve(intent, current, &self.host), &intent.action) {
            (Resolution::RollForward, Action::InstallSpell) => {
                self.journal.complete(alias, intent.entry.as_ref()).map_err(|e| err(&e))?;
            }
            (Resolution::RollForward, action) => {
                let entry = intent.entry.as_ref().expect("resolve checks the entry");
                self.journal.upsert(entry).map_err(|e| err(&e))?;
                if let Action::Replace { old_service } = action {
                    if self.runtime.check_owner(old_service, &self.host).is_ok() {
                        self.runtime.remove_service(old_service, false).await.map_err(|e| err(&e))?;
                    }
                }
                self.journal.clear_intent(alias).map_err(|e| err(&e))?;
            }
            (Resolution::RollBack, Action::InstallSpell) => {
                let ours = current.spells.get(alias).is_some_and(|s| s.owner == self.host);
                if let Some(b) = self.runtime.alias(alias) {
                    if matches!(b.target, AliasTarget::Spell(_)) && b.owner == self.host && !current.deployed.contains_key(alias) {
                        self.runtime.unbind_alias(alias, &self.host).map_err(|e| err(&e))?;
                    }
                }
                if ours && !current.deployed.contains_key(alias) {
                    self.spells.remove(alias)?;
                }
                self.journal.clear_intent(alias).map_err(|e| err(&e))?;
            }
            (Resolution::RollBack, _) => {
                if let Some(n) = &intent.new_service {
                    if self.runtime.check_owner(n, &self.host).is_ok() {
                        self.runtime.remove_service(n, false).await.map_err(|e| err(&e))?;
                    }
                }
                self.journal.clear_intent(alias).map_err(|e| err(&e))?;
                return Ok(format!("{alias}: rolled back interrupted {kind} (it had reached {:?})", intent.phase));
            }
            (Resolution::RunAgain, _) => {
                self.journal.clear_intent(alias).map_err(|e| err(&e))?;
                return Ok(format!("{alias}: interrupted {kind} will run again"));
            }
            (Resolution::FinishRemove, Action::Remove { service }) => {
                self.finish_remove(alias, service).await.map_err(|f| f.message)?;
            }
            (Resolution::FinishRemove, _) => {
                self.finish_remove_spell(alias).await.map_err(|f| f.message)?;
            }
        }
        Ok(format!("{alias}: finished interrupted {kind}"))
    }

    /// Host-owned services that neither an alias nor an entry refers to are
    /// leftovers of a crash; remove them, then GC storage.
    async fn sweep_orphans(&self) -> Result<Vec<String>, DeployError> {
        let mut done = Vec::new();
        let current = self.current()?;
        let mut referenced: BTreeSet<String> = BTreeSet::new();
        for e in current.deployed.values() {
            if let super::model::DeployedKind::Service { service_id, .. } = &e.kind {
                referenced.insert(service_id.to_string());
            }
        }
        for h in current.aliases.values() {
            if h.kind == "service" {
                referenced.insert(h.target.clone());
            }
        }
        for (id, s) in &current.services {
            if s.owner == self.host && !referenced.contains(id.as_str()) {
                self.runtime.remove_service(id, false).await?;
                done.push(format!("removed orphan service {id}"));
            }
        }
        if done.is_empty() {
            // Nothing changed what was observed (GC touches no entry, alias,
            // service or spell): the plan that follows may use it.
            self.journal.keep_observed(current);
        }
        for removed in self.runtime.gc()? {
            done.push(format!("gc: {removed}"));
        }
        Ok(done)
    }
}
