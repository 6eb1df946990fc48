//! The executor's steps, each a short declaration of what changes, carried
//! through intent → advance → complete or roll back by `StepTx`; and what
//! they share: init calls (a WIT `err` fails them), the durability barrier
//! before an alias moves, taking an alias over, owner checks.

use super::executor::{Deployer, StepFailure};
use super::journal::{now_ms, Action, Intent, Phase};
use super::model::*;
use super::plan::{kv_applied_of, Step};
use crate::ids::{Alias, ServiceId};
use crate::runtime::{AliasTarget, CallError, FunctionSig};

impl Deployer {
    pub(super) fn entry_for_service(&self, s: &DesiredService, id: &ServiceId, created_at: i64) -> Deployed {
        Deployed {
            alias: s.alias.clone(),
            package: s.package.clone(),
            version: s.version.clone(),
            kind: DeployedKind::Service {
                service_id: id.clone(),
                blueprint_id: s.blueprint_id,
                components: s.components(),
                init_hash: s.init_hash(),
                init_snapshot: s.init_snapshot(),
            },
            created_at,
            updated_at: now_ms(),
        }
    }

    /// Runs init calls on `id` (all of them, or only on-change ones), with
    /// retries for transient failures. Returns the attempts used. A call
    /// whose WIT result is `err` has failed, exactly like a trap.
    pub(super) async fn run_init(&self, s: &DesiredService, id: &ServiceId, only_on_change: bool) -> Result<u32, StepFailure> {
        let mut total = 0;
        let sigs = match self.runtime.service_exports(id.as_str()) {
            Some(Ok(sigs)) => sigs,
            Some(Err(e)) => return Err(fail(format!("reading the exports of service {id}: {e}"))),
            None => return Err(fail(format!("service {id} does not exist"))),
        };
        for call in s.init.iter().filter(|c| !only_on_change || c.run == InitRun::OnChange) {
            let args = serde_json::Value::Array(call.args.clone());
            let sig = super::plan::find_export(&sigs, &call.function);
            let mut attempt = 0;
            loop {
                attempt += 1;
                total += 1;
                match self.runtime.call_with_ttl(id.as_str(), &call.function, args.clone(), self.policy.call_ttl).await {
                    Ok(value) => match sig.and_then(|sig| guest_error(sig, &value)) {
                        None => break,
                        Some(message) => {
                            return Err(StepFailure {
                                message: format!("function {}: the service returned an error: {message}", call.function),
                                attempts: total,
                            })
                        }
                    },
                    Err(e) if attempt < self.policy.attempts && is_transient(&e) => {
                        let wait = self.policy.backoff * 2u32.pow(attempt - 1);
                        tracing::warn!(alias = %s.alias, function = %call.function, attempt, "transient init failure, retrying in {wait:?}: {e}");
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => {
                        return Err(StepFailure {
                            message: format!("function {}: {}", call.function, redact_call_error(&e, call.is_secret())),
                            attempts: total,
                        });
                    }
                }
            }
        }
        Ok(total)
    }

    /// Makes what services wrote (copied data, files written by init calls)
    /// durable before the commit that binds or moves an alias to them:
    /// `syncfs` on the file system of the services' data dirs.
    fn make_durable(&self, id: &ServiceId) -> Result<(), StepFailure> {
        let dir = self.runtime.data_dir(id);
        sync_filesystem(&dir).map_err(|e| fail(format!("making the data of service {id} durable ({}): {e}", dir.display())))?;
        crate::failpoint::trace::event(|| format!("synced {id}"));
        Ok(())
    }

    /// Points `alias` at `target`: binds it when free, moves it when this
    /// host holds it (removing a host-owned leftover it pointed at that no
    /// entry records), refuses when someone else holds it.
    pub(super) async fn take_alias(&self, alias: &Alias, target: AliasTarget) -> Result<(), StepFailure> {
        let Some(b) = self.runtime.alias(alias) else {
            self.runtime.bind_alias(alias, target.clone(), &self.host).map_err(fail)?;
            crate::failpoint::trace::event(|| format!("bound {alias} -> {target:?}"));
            return Ok(());
        };
        if b.owner != self.host {
            return Err(fail(format!("alias {alias} is held by {}; it is left untouched", b.owner)));
        }
        if b.target == target {
            return Ok(());
        }
        self.runtime.rebind_alias(alias, target.clone(), &self.host).map_err(fail)?;
        crate::failpoint::trace::event(|| format!("bound {alias} -> {target:?}"));
        self.drop_displaced(alias, &b.target).await
    }

    /// Removes what an alias pointed at before it was moved, when the host
    /// owns it and no entry records it.
    async fn drop_displaced(&self, alias: &Alias, old: &AliasTarget) -> Result<(), StepFailure> {
        let entries = self.journal.deployed().map_err(fail)?;
        match old {
            AliasTarget::Service(id) => {
                let recorded = entries.values().any(|e| matches!(&e.kind, DeployedKind::Service { service_id, .. } if service_id == id));
                let ours = self.runtime.check_owner(id, &self.host).is_ok();
                if ours && !recorded {
                    self.runtime.remove_service(id, false).await.map_err(fail)?;
                }
            }
            AliasTarget::Spell(id) => {
                let recorded = entries.values().any(|e| matches!(&e.kind, DeployedKind::Spell { spell_id, .. } if spell_id == id));
                if !recorded && self.spell_owned(alias)? {
                    self.spells.remove(alias).map_err(fail)?;
                }
            }
        }
        Ok(())
    }

    /// Whether the spell under `alias` exists and the host owns it.
    fn spell_owned(&self, alias: &Alias) -> Result<bool, StepFailure> {
        let now = (now_ms() / 1000).max(0) as u64;
        let rec = crate::spell::read_spell(self.journal.store(), alias, now).map_err(fail)?;
        Ok(rec.is_some_and(|r| r.owner == self.host))
    }

    pub(super) async fn replace(&self, step: &Step, s: &DesiredService, old: &ServiceId) -> Result<u32, StepFailure> {
        self.runtime.check_owner(old, &self.host).map_err(fail)?;
        let old_entry = self.journal.deployed().ok().and_then(|mut d| d.remove(&s.alias));
        let created_at = old_entry.as_ref().map_or_else(now_ms, |e| e.created_at);
        let mut tx = StepTx::begin(self, step, None)?;
        let id = match self.runtime.create_service(&s.blueprint_id, &self.host).await {
            Ok(id) => id,
            Err(e) => return Err(tx.roll_back(fail(e)).await),
        };
        crash_point!("deploy::replace::created");
        tx.created(id.clone(), self.entry_for_service(s, &id, created_at)).await?;
        // From the start of the copy until the alias moved, calls to the old
        // service wait: what it would write after the copy would be lost.
        // Data kept from an earlier service (`restore_data_from`) replaces the
        // old service's; the hold is the same.
        let carried = s.keep_data || s.restore_data_from.is_some();
        let mut hold = None;
        if carried {
            hold = match self.runtime.hold_calls(old).await {
                Ok(h) => Some(h),
                Err(e) => return Err(tx.roll_back(fail(format!("holding the calls of {old}: {e}"))).await),
            };
            let copied = match &s.restore_data_from {
                Some(kept) => self.restore_kept(kept, &id).await,
                None => self.runtime.copy_data(old, &id).await.map_err(|e| fail(format!("carrying data over from {old}: {e}"))),
            };
            if let Err(f) = copied {
                return Err(tx.roll_back(f).await);
            }
            crate::failpoint::trace::event(|| format!("copied {}", s.alias));
            crash_point!("deploy::replace::copied");
            // The new service converts the carried data (issue 17): after the
            // copy, before the init calls; a failure rolls the replace back.
            let from = match self.migrate_from_of(s, &id) {
                Ok(f) => f,
                Err(f) => return Err(tx.roll_back(f).await),
            };
            if let Some(from) = from {
                if let Err(f) = self.run_migrate(s, &id, &from).await {
                    return Err(tx.roll_back(f).await);
                }
                crash_point!("deploy::replace::migrated");
            }
        }
        // `on-install` calls ran when the service was first created and their
        // effect is in the carried data: only a replace without data runs them.
        let attempts = match self.run_init(s, &id, carried).await {
            Ok(n) => n,
            Err(f) => return Err(tx.roll_back(f).await),
        };
        if let Err(f) = self.make_durable(&id) {
            return Err(tx.roll_back(f).await);
        }
        tx.advance(Phase::Initialised).await?;
        crash_point!("deploy::replace::initialised");
        // The swap: from here on recovery rolls forward.
        if let Err(f) = self.take_alias(&s.alias, AliasTarget::Service(id.clone())).await {
            return Err(tx.roll_back(f).await);
        }
        if let Some(h) = hold {
            let held = h.release_moved();
            crate::failpoint::trace::event(|| format!("held {} {}us", s.alias, held.as_micros()));
            tracing::info!(alias = %s.alias, held_ms = held.as_secs_f64() * 1000.0, "calls to the old service were held during the data copy and swap");
        }
        crash_point!("deploy::replace::swapped");
        tx.advance(Phase::Swapped).await?;
        self.journal.upsert(tx.entry()).map_err(fail)?;
        crash_point!("deploy::replace::recorded");
        match (&old_entry, s.snapshot_before_replace) {
            // Keep the old data dir (`kept.rs`); a failure leaves the old
            // service for the next boot's recovery to finish.
            (Some(entry), true) => {
                if let Err(f) = self.keep_replaced(old, entry).await {
                    tracing::error!(alias = %s.alias, "{}", f.message);
                    return Err(f);
                }
            }
            _ => {
                if let Err(e) = self.runtime.remove_service(old, false).await {
                    // The new service serves; the old one is an orphan the next boot removes.
                    tracing::warn!(alias = %s.alias, "removing replaced service {old}: {e}");
                }
            }
        }
        crate::failpoint::trace::event(|| format!("removed {old}"));
        crash_point!("deploy::replace::old-removed");
        tx.complete()?;
        Ok(attempts)
    }

    pub(super) async fn reinit(&self, step: &Step, s: &DesiredService, id: &ServiceId) -> Result<u32, StepFailure> {
        self.runtime.check_owner(id, &self.host).map_err(fail)?;
        let created_at = self.journal.deployed().ok().and_then(|d| d.get(&s.alias).map(|e| e.created_at)).unwrap_or_else(now_ms);
        let tx = StepTx::begin(self, step, Some(self.entry_for_service(s, id, created_at)))?;
        crash_point!("deploy::reinit::started");
        // A failed init keeps the previous entry, so the plan still shows
        // the change.
        let attempts = match self.run_init(s, id, true).await {
            Ok(n) => n,
            Err(f) => return Err(tx.roll_back(f).await),
        };
        if let Err(f) = self.make_durable(id) {
            return Err(tx.roll_back(f).await);
        }
        crash_point!("deploy::reinit::called");
        crate::failpoint::trace::event(|| format!("recorded {}", s.alias));
        tx.complete()?;
        Ok(attempts)
    }

    pub(super) async fn remove(&self, step: &Step, id: &ServiceId) -> Result<(), StepFailure> {
        let _tx = StepTx::begin(self, step, None)?;
        crash_point!("deploy::remove::started");
        // `finish_remove` completes the step (entry and intent go together).
        self.finish_remove(step.alias(), id).await
    }

    /// Unbinds (if still ours), removes the service (if it exists and the
    /// host owns it), deletes the entry and the intent. Idempotent: recovery
    /// calls it too. A service of another owner is never removed.
    pub(super) async fn finish_remove(&self, alias: &Alias, id: &ServiceId) -> Result<(), StepFailure> {
        if let Some(b) = self.runtime.alias(alias) {
            if b.target == AliasTarget::Service(id.clone()) && b.owner == self.host {
                self.runtime.unbind_alias(alias, &self.host).map_err(fail)?;
            }
        }
        crash_point!("deploy::remove::unbound");
        if let Some(info) = self.runtime.resolve(id.as_str()) {
            if info.owner == self.host {
                self.runtime.remove_service(id, false).await.map_err(fail)?;
            } else {
                tracing::warn!(%alias, "service {id} is owned by {}, not by this host: left untouched, only the record is dropped", info.owner);
            }
        }
        crash_point!("deploy::remove::removed");
        self.journal.complete(alias, None).map_err(fail)
    }

    /// Points an alias back at the recorded service or spell.
    pub(super) async fn repair(&self, step: &Step) -> Result<(), StepFailure> {
        let Step::Repair { alias, kind, target, .. } = step else { unreachable!("repair step") };
        let target = match kind.as_str() {
            "service" => {
                let id = ServiceId::try_from(target.clone()).map_err(fail)?;
                self.runtime.check_owner(&id, &self.host).map_err(fail)?;
                AliasTarget::Service(id)
            }
            _ => AliasTarget::Spell(target.clone()),
        };
        let tx = StepTx::begin(self, step, None)?;
        if let Err(f) = self.take_alias(alias, target).await {
            return Err(tx.roll_back(f).await);
        }
        tx.clear()
    }

    fn spell_entry(&self, s: &DesiredSpell, spell_id: String, created_at: i64) -> Deployed {
        Deployed {
            alias: s.alias.clone(),
            package: s.package.clone(),
            version: s.version.clone(),
            kind: DeployedKind::Spell {
                spell_id,
                script_hash: s.script_hash.clone(),
                trigger: s.trigger.clone(),
                kv_applied: kv_applied_of(s),
            },
            created_at,
            updated_at: now_ms(),
        }
    }

    pub(super) async fn install_spell(&self, step: &Step, s: &DesiredSpell) -> Result<(), StepFailure> {
        let mut tx = StepTx::begin(self, step, None)?;
        // A leftover spell under this alias (an interrupted install, a spell
        // nobody recorded) or a service recorded under it (the alias changes
        // kind): start clean.
        if self.spells.id_of(&s.alias).is_some() {
            if !self.spell_owned(&s.alias)? {
                return Err(tx.roll_back(fail("the spell under this alias is owned by another peer; it is left untouched")).await);
            }
            self.spells.remove(&s.alias).map_err(fail)?;
        }
        if let Some(d) = self.journal.deployed().map_err(fail)?.get(&s.alias) {
            if let DeployedKind::Service { service_id, .. } = &d.kind {
                self.finish_remove(&s.alias, service_id).await?;
                tx.restart()?;
            }
        }
        let id = self.spells.install(s, &self.host).map_err(fail)?;
        crash_point!("deploy::install-spell::created");
        tx.set_entry(Phase::Created, self.spell_entry(s, id.clone(), now_ms()))?;
        if let Err(f) = self.take_alias(&s.alias, AliasTarget::Spell(id)).await {
            let _ = self.spells.remove(&s.alias);
            return Err(tx.roll_back(f).await);
        }
        crash_point!("deploy::install-spell::bound");
        tx.complete()
    }

    pub(super) fn update_spell(&self, step: &Step, s: &DesiredSpell) -> Result<(), StepFailure> {
        let old = self.journal.deployed().map_err(fail)?.remove(&s.alias);
        let Some(Deployed { kind: DeployedKind::Spell { spell_id, kv_applied, .. }, created_at, .. }) = old else {
            return Err(fail("no spell is recorded under this alias"));
        };
        let mut entry = self.spell_entry(s, spell_id, created_at);
        // KV is applied by its own step; keep the old merge base here.
        if let DeployedKind::Spell { kv_applied: k, .. } = &mut entry.kind {
            *k = kv_applied;
        }
        let tx = StepTx::begin(self, step, Some(entry))?;
        crash_point!("deploy::update-spell::started");
        if let Err(e) = self.spells.update(s, &self.host) {
            return Err(tx.abandon(fail(e)));
        }
        crash_point!("deploy::update-spell::updated");
        tx.complete()
    }

    pub(super) fn kv_apply(&self, step: &Step, s: &DesiredSpell) -> Result<(), StepFailure> {
        let old = self.journal.deployed().map_err(fail)?.remove(&s.alias);
        let Some(Deployed { kind: DeployedKind::Spell { spell_id, script_hash, trigger, .. }, created_at, .. }) = old else {
            return Err(fail("no spell is recorded under this alias"));
        };
        let mut entry = self.spell_entry(s, spell_id, created_at);
        // Script/trigger are updated by their own step; only the KV base moves.
        if let DeployedKind::Spell { script_hash: h, trigger: t, .. } = &mut entry.kind {
            *h = script_hash;
            *t = trigger;
        }
        let tx = StepTx::begin(self, step, Some(entry))?;
        crash_point!("deploy::kv-apply::started");
        if let Err(e) = self.spells.kv_apply(s) {
            return Err(tx.abandon(fail(e)));
        }
        crash_point!("deploy::kv-apply::applied");
        tx.complete()
    }

    pub(super) async fn remove_spell(&self, step: &Step) -> Result<(), StepFailure> {
        let _tx = StepTx::begin(self, step, None)?;
        crash_point!("deploy::remove-spell::started");
        self.finish_remove_spell(step.alias()).await
    }

    /// Unbinds the alias (if it is this host's spell), removes the spell (if
    /// the host owns it), deletes the entry and the intent. Idempotent.
    pub(super) async fn finish_remove_spell(&self, alias: &Alias) -> Result<(), StepFailure> {
        if let Some(b) = self.runtime.alias(alias) {
            if matches!(b.target, AliasTarget::Spell(_)) && b.owner == self.host {
                self.runtime.unbind_alias(alias, &self.host).map_err(fail)?;
            }
        }
        crash_point!("deploy::remove-spell::unbound");
        if self.spell_owned(alias)? {
            self.spells.remove(alias).map_err(fail)?;
        }
        self.journal.complete(alias, None).map_err(fail)
    }
}

/// A failure of one step, from any error.
pub(super) fn fail(e: impl std::fmt::Display) -> StepFailure {
    StepFailure { message: e.to_string(), attempts: 0 }
}

/// One mutating step as a transaction: the intent is written before
/// anything is touched (`begin`), advanced as the step goes (`created`,
/// `advance`), and either completed (entry written and intent cleared in one
/// transaction) or rolled back (the service the step created removed, the
/// intent cleared). Dropping it without either leaves the intent for
/// `recover` — which is what a crash does.
struct StepTx<'a> {
    d: &'a Deployer,
    intent: Intent,
}

impl<'a> StepTx<'a> {
    fn begin(d: &'a Deployer, step: &Step, entry: Option<Deployed>) -> Result<Self, StepFailure> {
        let action = Action::of(step).ok_or_else(|| fail(format!("{} is not a mutating step", step.kind())))?;
        let intent = Intent {
            alias: step.alias().clone(),
            package: step.package().clone(),
            action,
            phase: Phase::Started,
            new_service: None,
            entry,
        };
        d.journal.put_intent(&intent).map_err(fail)?;
        Ok(Self { d, intent })
    }

    /// Writes the intent again (after a sub-step that completed its own
    /// record, e.g. removing what held the alias before).
    fn restart(&mut self) -> Result<(), StepFailure> {
        self.d.journal.put_intent(&self.intent).map_err(fail)
    }

    /// The new service exists; what the entry will be once done.
    async fn created(&mut self, id: ServiceId, entry: Deployed) -> Result<(), StepFailure> {
        self.intent.new_service = Some(id);
        self.intent.entry = Some(entry);
        self.advance(Phase::Created).await
    }

    fn set_entry(&mut self, phase: Phase, entry: Deployed) -> Result<(), StepFailure> {
        self.intent.phase = phase;
        self.intent.entry = Some(entry);
        self.d.journal.put_intent(&self.intent).map_err(fail)
    }

    /// Records progress; a failure to record rolls the step back.
    async fn advance(&mut self, phase: Phase) -> Result<(), StepFailure> {
        self.intent.phase = phase;
        if let Err(e) = self.d.journal.put_intent(&self.intent) {
            let f = fail(e);
            if phase < Phase::Swapped {
                return Err(self.clone_for_rollback().roll_back(f).await);
            }
            return Err(f);
        }
        Ok(())
    }

    fn clone_for_rollback(&self) -> StepTx<'a> {
        StepTx { d: self.d, intent: self.intent.clone() }
    }

    fn entry(&self) -> &Deployed {
        self.intent.entry.as_ref().expect("the entry is recorded with the new service")
    }

    /// Entry written (or deleted), intent cleared, in one transaction.
    fn complete(self) -> Result<(), StepFailure> {
        self.d.journal.complete(&self.intent.alias, self.intent.entry.as_ref()).map_err(fail)
    }

    /// Intent cleared, the entry untouched (a repair changes no record).
    fn clear(self) -> Result<(), StepFailure> {
        self.d.journal.clear_intent(&self.intent.alias).map_err(fail)
    }

    /// Undoes a step that failed before its point of no return: the service
    /// it created goes (the alias and the old service were not touched), the
    /// intent is cleared. Returns the failure, for the report.
    async fn roll_back(self, f: StepFailure) -> StepFailure {
        let alias = &self.intent.alias;
        if let Some(id) = &self.intent.new_service {
            if self.d.runtime.resolve(id.as_str()).is_some() {
                if let Err(e) = self.d.runtime.remove_service(id, false).await {
                    tracing::warn!(%alias, "rolling back new service {id}: {e}; the next boot removes it");
                }
            }
        }
        self.abandon(f)
    }

    /// Clears the intent of a step that failed having changed nothing it
    /// must undo (the previous entry stays).
    fn abandon(self, f: StepFailure) -> StepFailure {
        if let Err(e) = self.d.journal.clear_intent(&self.intent.alias) {
            tracing::warn!(alias = %self.intent.alias, "clearing intent: {e}");
        }
        f
    }
}

/// `Some(message)` when `value` is the `err` case of a function whose WIT
/// result is a `result`.
pub(super) fn guest_error(sig: &FunctionSig, value: &serde_json::Value) -> Option<String> {
    let [crate::runtime::WitType::Result { .. }] = sig.results.as_slice() else { return None };
    let err = value.as_object().filter(|o| o.len() == 1)?.get("err")?;
    Some(match err {
        serde_json::Value::Null => "err (no message)".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// `syncfs(2)` on the file system holding `dir`.
pub(super) fn sync_filesystem(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir)?;
    // SAFETY: syncfs on a valid, open file descriptor we own.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn is_transient(e: &CallError) -> bool {
    matches!(e, CallError::Busy { .. } | CallError::Timeout { .. })
}

/// A call error's text, with argument values redacted when they are secret
/// (a BadArgument echoes the JSON it got).
fn redact_call_error(e: &CallError, secret: bool) -> String {
    match e {
        CallError::BadArgument { target, function, param, expected, .. } if secret => {
            format!("{target}.{function}: parameter {param}: expected {expected}, got <redacted>")
        }
        e => e.to_string(),
    }
}
