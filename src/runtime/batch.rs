//! Batched record writes for the deployer: many services created with one
//! transaction, many aliases bound in one transaction together with the
//! caller's own records. A deployment of N services then costs a few commits
//! (each a WAL `fsync`) instead of several per service.

use super::records::{self, ServiceRow};
use super::service::ServiceSlot;
use super::{cache, remove_dir_if_exists, write, AliasBinding, AliasTarget, Runtime, RuntimeError};
use crate::ids::{Alias, BlueprintId, PeerId, ServiceId};
use std::collections::BTreeSet;
use std::sync::Arc;

impl Runtime {
    /// Creates services whose ids the caller chose (so it could record them
    /// in its intents first): links each distinct blueprint once, creates
    /// every `services/<id>/` without syncing it (the deployer's one
    /// `syncfs` before it binds an alias makes them durable), and records all
    /// of them in one transaction. All or nothing: on an error no record is
    /// written and the directories created here are removed.
    pub async fn create_services(&self, items: &[(ServiceId, BlueprintId)], owner: &PeerId) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let blueprints: BTreeSet<BlueprintId> = items.iter().map(|(_, b)| *b).collect();
        for b in &blueprints {
            inner.prepared_async(b).await?;
        }
        let now = records::now_secs();
        let rows: Vec<ServiceRow> =
            items.iter().map(|(id, b)| ServiceRow { id: id.clone(), blueprint_id: *b, owner: owner.clone(), created_at: now }).collect();
        let mut made = Vec::with_capacity(rows.len());
        let result = (|| {
            for row in &rows {
                let dir = inner.services_dir.join(row.id.as_str());
                std::fs::create_dir(&dir).map_err(|e| cache::io(&dir, e))?;
                made.push(dir);
            }
            let mut conn = inner.store.lock();
            let tx = conn.transaction()?;
            for row in &rows {
                records::put_service_in(&tx, row)?;
            }
            tx.commit()?;
            Ok::<_, RuntimeError>(())
        })();
        if let Err(e) = result {
            for dir in &made {
                let _ = remove_dir_if_exists(dir);
            }
            return Err(e);
        }
        let mut services = write(&inner.services);
        for (row, dir) in rows.into_iter().zip(made) {
            services.insert(row.id.clone(), Arc::new(ServiceSlot::new(row, dir, inner.opts.limits.log)));
        }
        drop(services);
        tracing::info!(services = items.len(), owner = %owner, "services created");
        Ok(())
    }

    /// Binds unbound aliases, all in one transaction that also runs `also`
    /// (the deployer writes its entries and clears its intents there, so an
    /// alias and the record of what it points at commit together). Fails
    /// without binding anything when one alias is already bound or a target
    /// does not exist.
    pub fn bind_aliases_with(
        &self,
        bindings: &[(Alias, AliasTarget)],
        owner: &PeerId,
        also: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<()>,
    ) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let mut aliases = write(&inner.aliases);
        for (alias, target) in bindings {
            if let Some(b) = aliases.get(alias) {
                return Err(RuntimeError::AliasTaken { alias: alias.to_string(), target: b.target.clone(), owner: b.owner.to_string() });
            }
            inner.check_target(target)?;
        }
        let bound: Vec<AliasBinding> =
            bindings.iter().map(|(a, t)| AliasBinding { alias: a.clone(), target: t.clone(), owner: owner.clone() }).collect();
        {
            let mut conn = inner.store.lock();
            let tx = conn.transaction()?;
            for b in &bound {
                records::insert_alias_in(&tx, b)?;
            }
            also(&tx)?;
            tx.commit()?;
        }
        for b in bound {
            aliases.insert(b.alias.clone(), b);
        }
        Ok(())
    }
}
