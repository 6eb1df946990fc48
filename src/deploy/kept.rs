//! Kept data (issue 17): a replace of a service with `snapshot_before_replace`
//! keeps the replaced service's data dir, as it was when the alias moved, in
//! `<state_dir>/kept/<old service id>/` (renamed there, never copied) and
//! records it in `deploy_kept_data`; a desired service with
//! `restore_data_from = Some(id)` starts from a copy of that dir. Per alias the
//! newest `keep_generations` kept dirs stay; older ones go at the end of a
//! deployment.
//!
//! Crash safety: the row is written before the rename (it is the intention),
//! the rename comes before the old service's record goes, and recovery
//! (`settle`, run before anything else) finishes a rename a crash
//! interrupted. So a data dir recorded as kept is never in `services/`
//! without a service record when the runtime's GC runs, and the GC, which
//! only looks at `services/`, never sees `kept/`.

use super::executor::{Deployer, StepFailure};
use super::model::{Deployed, DeployedKind, Desired, DesiredService, KeptData};
use super::steps::fail;
use crate::ids::{Alias, BlueprintId, PackageName, ServiceId};
use crate::runtime::AliasTarget;
use crate::store::Store;
use rusqlite::{params, OptionalExtension};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The kept-data migration, handed to the store (`crate::schema`).
pub const MIGRATIONS: &[crate::store::migrations::Migration] =
    &[crate::store::migrations::Migration { name: "deploy-kept-001", sql: MIGRATION_SQL }];

/// The restore marks' migration: its own layer, shipped after the
/// generations' (`crate::schema` never reorders).
pub const RESTORES_MIGRATIONS: &[crate::store::migrations::Migration] =
    &[crate::store::migrations::Migration { name: "deploy-kept-002-restores", sql: RESTORES_SQL }];

/// Which kept dir each alias was last restored from while its desired state
/// asks for it: a restore happens once per request, so a later replace under
/// the same request (a config change, a changed limit) carries the data the
/// service has now instead of restoring the old data again. Cleared when the
/// desired state stops asking (`unpin`), so a later rollback to the same
/// data restores it again.
const RESTORES_SQL: &str = "
CREATE TABLE deploy_kept_restores (
    alias           TEXT PRIMARY KEY,
    kept_service_id TEXT NOT NULL,
    restored_at     INTEGER NOT NULL  -- unix seconds
) STRICT;
";

const MIGRATION_SQL: &str = "
CREATE TABLE deploy_kept_data (
    service_id   TEXT PRIMARY KEY,
    alias        TEXT NOT NULL,
    package      TEXT NOT NULL,
    version      TEXT NOT NULL,
    blueprint_id TEXT NOT NULL,
    kept_at      INTEGER NOT NULL  -- unix seconds
) STRICT;
";

/// One kept data dir, as recorded.
pub type Kept = KeptData;

/// `<state_dir>/kept/<id>/`: where the data of replaced service `id` is kept.
pub fn path(state_dir: &Path, id: &ServiceId) -> PathBuf {
    state_dir.join("kept").join(id.as_str())
}

/// Every kept data dir recorded, oldest first. A store whose schema predates
/// the table (read-only `plan` on an older state dir) has none.
pub fn list(store: &Store) -> rusqlite::Result<Vec<Kept>> {
    let conn = store.lock();
    if !has_table(&conn, "deploy_kept_data")? {
        return Ok(Vec::new());
    }
    let mut stmt =
        conn.prepare("SELECT service_id, alias, package, version, blueprint_id, kept_at FROM deploy_kept_data ORDER BY kept_at, rowid")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, alias, package, version, blueprint, kept_at) = row?;
        use super::journal::bad_row;
        out.push(Kept {
            service_id: ServiceId::try_from(id.clone()).map_err(|e| bad_row("deploy_kept_data.service_id", &id, e))?,
            alias: Alias::new(&alias).map_err(|e| bad_row("deploy_kept_data.alias", &alias, e))?,
            package: PackageName::new(&package).map_err(|e| bad_row("deploy_kept_data.package", &package, e))?,
            version,
            blueprint_id: BlueprintId::from_hex(&blueprint).map_err(|e| bad_row("deploy_kept_data.blueprint_id", &blueprint, e))?,
            kept_at,
        });
    }
    Ok(out)
}

/// The recorded kept dir of service `id`, if any.
pub fn get(store: &Store, id: &ServiceId) -> rusqlite::Result<Option<Kept>> {
    Ok(list(store)?.into_iter().find(|k| k.service_id == *id))
}

/// Every kept data dir by service id, for the observed state: those recorded
/// whose dir is there (next to the store's file; an in-memory store has no
/// dirs to look at, so all recorded ones).
pub fn by_id(store: &Store) -> rusqlite::Result<BTreeMap<ServiceId, Kept>> {
    let state_dir = Some(store.path()).filter(|p| p.is_file()).and_then(Path::parent);
    Ok(list(store)?
        .into_iter()
        .filter(|k| state_dir.is_none_or(|d| path(d, &k.service_id).is_dir()))
        .map(|k| (k.service_id.clone(), k))
        .collect())
}

fn has_table(conn: &rusqlite::Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", [name], |_| Ok(())).optional().map(|o| o.is_some())
}

/// Per alias, the kept dir it was last restored from (see `RESTORES_SQL`).
pub fn restored(store: &Store) -> rusqlite::Result<BTreeMap<Alias, ServiceId>> {
    let conn = store.lock();
    if !has_table(&conn, "deploy_kept_restores")? {
        return Ok(BTreeMap::new());
    }
    let mut stmt = conn.prepare("SELECT alias, kept_service_id FROM deploy_kept_restores")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (alias, id) = row?;
        // A row this binary cannot read restores nothing again.
        if let (Ok(a), Ok(i)) = (Alias::new(&alias), ServiceId::try_from(id)) {
            out.insert(a, i);
        }
    }
    Ok(out)
}

/// The kept dir a replace or install of `s` starts from: `restore_data_from`,
/// unless that restore already happened (`restored` names it for the alias).
pub fn pending_restore<'a>(s: &'a DesiredService, restored: &BTreeMap<Alias, ServiceId>) -> Option<&'a ServiceId> {
    s.restore_data_from.as_ref().filter(|k| restored.get(&s.alias) != Some(*k))
}

/// Records that `alias` now runs on data restored from kept dir `id`.
pub(super) fn mark_restored(store: &Store, alias: &Alias, id: &ServiceId) -> rusqlite::Result<()> {
    store.lock().execute(
        "INSERT INTO deploy_kept_restores(alias, kept_service_id, restored_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(alias) DO UPDATE SET kept_service_id = excluded.kept_service_id, restored_at = excluded.restored_at",
        params![alias.as_str(), id.as_str(), crate::runtime::records::now_secs()],
    )?;
    Ok(())
}

/// At the end of a deployment: the marks of aliases the desired state no
/// longer asks to restore (unpinned, removed) go; nothing is written when
/// there are none.
pub(super) fn clear_restored(store: &Store, desired: &Desired) -> rusqlite::Result<()> {
    let asked: std::collections::BTreeSet<&Alias> =
        desired.packages.iter().flat_map(|p| &p.services).filter(|s| s.restore_data_from.is_some()).map(|s| &s.alias).collect();
    for alias in restored(store)?.keys().filter(|a| !asked.contains(a)) {
        store.lock().execute("DELETE FROM deploy_kept_restores WHERE alias = ?1", [alias.as_str()])?;
    }
    Ok(())
}

fn record(store: &Store, k: &Kept) -> rusqlite::Result<()> {
    store.lock().execute(
        "INSERT INTO deploy_kept_data(service_id, alias, package, version, blueprint_id, kept_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(service_id) DO UPDATE SET alias = excluded.alias, package = excluded.package, version = excluded.version,
           blueprint_id = excluded.blueprint_id, kept_at = excluded.kept_at",
        params![k.service_id.as_str(), k.alias.as_str(), k.package.as_str(), k.version, k.blueprint_id.to_hex(), k.kept_at],
    )?;
    Ok(())
}

fn forget(store: &Store, id: &ServiceId) -> rusqlite::Result<()> {
    store.lock().execute("DELETE FROM deploy_kept_data WHERE service_id = ?1", [id.as_str()])?;
    Ok(())
}

/// Makes a directory's entries (a rename into or out of it) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Renames `services/<id>` to `kept/<id>` (same file system) and makes both
/// directory entries durable.
fn move_in(services_dir: &Path, kept_root: &Path, id: &ServiceId) -> std::io::Result<()> {
    std::fs::create_dir_all(kept_root)?;
    std::fs::rename(services_dir.join(id.as_str()), kept_root.join(id.as_str()))?;
    sync_dir(kept_root)?;
    sync_dir(services_dir)
}

impl Deployer {
    /// The state dir, from where the runtime keeps data dirs
    /// (`<state_dir>/services/<id>`).
    fn state_dir(&self) -> PathBuf {
        let probe = self.runtime.data_dir(&ServiceId::random());
        probe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default()
    }

    /// The kept dir a replace or install of `s` starts from now (`pending_restore`).
    pub(super) fn pending_restore(&self, s: &DesiredService) -> Result<Option<ServiceId>, StepFailure> {
        let marks = restored(self.journal.store()).map_err(fail)?;
        Ok(pending_restore(s, &marks).cloned())
    }

    /// After an install of `s` is bound: the restore it did is done.
    pub(super) fn restore_done(&self, s: &DesiredService) {
        let r = self.pending_restore(s).and_then(|k| match k {
            Some(k) => mark_restored(self.journal.store(), &s.alias, &k).map_err(fail),
            None => Ok(()),
        });
        if let Err(f) = r {
            tracing::warn!(alias = %s.alias, "recording the restore: {}", f.message);
        }
    }

    /// Where the data of replaced service `id` is kept on this node.
    pub fn kept_path(&self, id: &ServiceId) -> PathBuf {
        path(&self.state_dir(), id)
    }

    /// The replace moved the alias off `old` (recorded by `entry`): keep its
    /// data dir instead of deleting it. The row first (so recovery finishes
    /// the rename), the rename while the old service's calls are held, then
    /// the old service's record goes (its data dir is no longer there).
    pub(super) async fn keep_replaced(&self, old: &ServiceId, entry: &Deployed) -> Result<(), StepFailure> {
        let DeployedKind::Service { blueprint_id, .. } = &entry.kind else {
            return Err(fail(format!("the entry of {} does not record a service", entry.alias)));
        };
        let kept = Kept {
            service_id: old.clone(),
            alias: entry.alias.clone(),
            package: entry.package.clone(),
            version: entry.version.clone(),
            blueprint_id: *blueprint_id,
            kept_at: crate::runtime::records::now_secs(),
        };
        record(self.journal.store(), &kept).map_err(fail)?;
        crash_point!("deploy::replace::kept-recorded");
        let hold = self.runtime.hold_calls(old).await.map_err(|e| fail(format!("holding the calls of {old}: {e}")))?;
        let services_dir = self.runtime.data_dir(old).parent().map(Path::to_path_buf).unwrap_or_default();
        let root = self.state_dir().join("kept");
        let moved = tokio::task::spawn_blocking({
            let (services_dir, root, old) = (services_dir.clone(), root.clone(), old.clone());
            move || move_in(&services_dir, &root, &old)
        })
        .await
        .map_err(|e| fail(format!("keep task failed: {e}")))?;
        if let Err(e) = moved {
            // The old service stays (with its record, so no GC deletes its
            // data); the next boot's recovery finishes the move.
            drop(hold);
            return Err(fail(format!("keeping the data of replaced service {old} in {}: {e}; the next boot retries", root.display())));
        }
        crate::failpoint::trace::event(|| format!("kept {old}"));
        crash_point!("deploy::replace::kept-moved");
        let removed = self.runtime.remove_service(old, true).await;
        let _ = hold.release_moved();
        removed.map_err(fail)?;
        tracing::info!(alias = %entry.alias, "the data of replaced service {old} is kept in {}", path(&self.state_dir(), old).display());
        Ok(())
    }

    /// Copies the kept data of service `from` into the (new, not yet called)
    /// service `to`, with the safe walker. The kept dir stays.
    pub(super) async fn restore_kept(&self, from: &ServiceId, to: &ServiceId) -> Result<(), StepFailure> {
        let src = self.kept_path(from);
        if get(self.journal.store(), from).map_err(fail)?.is_none() || !src.is_dir() {
            return Err(fail(format!("no data is kept from service {from} ({} is missing)", src.display())));
        }
        let dst = self.runtime.data_dir(to);
        tokio::task::spawn_blocking(move || crate::tree::copy_tree(&src, &dst))
            .await
            .map_err(|e| fail(format!("restore task failed: {e}")))?
            .map_err(|e| fail(format!("restoring the data kept from service {from}: {e}")))?;
        crate::failpoint::trace::event(|| format!("restored {from} -> {to}"));
        Ok(())
    }

    /// Recovery, before any intent is resolved: finishes every kept-data move
    /// a crash interrupted (row written, dir still in `services/`), warns about
    /// rows whose data is missing, and removes dirs under `kept/` no row records.
    pub(super) async fn settle_kept(&self) -> Result<Vec<String>, String> {
        let store = self.journal.store();
        let rows = list(store).map_err(|e| e.to_string())?;
        let root = self.state_dir().join("kept");
        let mut done = Vec::new();
        let entries = self.journal.deployed().map_err(|e| e.to_string())?;
        for k in &rows {
            let id = &k.service_id;
            if path(&self.state_dir(), id).is_dir() {
                if self.runtime.resolve(id.as_str()).is_some() && !self.referenced(id, &entries) {
                    self.runtime.remove_service(id, true).await.map_err(|e| e.to_string())?;
                    done.push(format!("removed replaced service {id}, whose data is kept"));
                }
                continue;
            }
            let src = self.runtime.data_dir(id);
            if !src.is_dir() {
                // Gone (or moved away by hand): the record stays, so the dir
                // counts again if it is put back; `plan` treats it as not
                // kept meanwhile, and retention drops the record in time.
                tracing::warn!(alias = %k.alias, "the data kept from service {id} is missing ({})", path(&self.state_dir(), id).display());
                continue;
            }
            if self.referenced(id, &entries) {
                // Still in use: the move was never meant for it.
                forget(store, id).map_err(|e| e.to_string())?;
                continue;
            }
            let services_dir = src.parent().map(Path::to_path_buf).unwrap_or_default();
            move_in(&services_dir, &root, id).map_err(|e| format!("keeping the data of service {id} in {}: {e}", root.display()))?;
            if self.runtime.resolve(id.as_str()).is_some() {
                self.runtime.remove_service(id, true).await.map_err(|e| e.to_string())?;
            }
            done.push(format!("{}: finished keeping the data of replaced service {id}", k.alias));
        }
        done.extend(self.remove_unrecorded_kept(&rows)?);
        Ok(done)
    }

    /// Dirs under `kept/` named like a service id that no row records (a
    /// retention interrupted after its row went).
    fn remove_unrecorded_kept(&self, rows: &[Kept]) -> Result<Vec<String>, String> {
        let root = self.state_dir().join("kept");
        let mut done = Vec::new();
        let Ok(dir) = std::fs::read_dir(&root) else { return Ok(done) };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(id) = ServiceId::try_from(name.clone()) else { continue };
            if !rows.iter().any(|k| k.service_id == id) {
                crate::tree::remove_tree(&e.path()).map_err(|e| e.to_string())?;
                done.push(format!("removed kept data {name}, which no record names"));
            }
        }
        Ok(done)
    }

    /// Whether an alias or an entry still points at service `id`.
    fn referenced(&self, id: &ServiceId, entries: &BTreeMap<Alias, Deployed>) -> bool {
        let by_alias = self.runtime.aliases().iter().any(|b| b.target == AliasTarget::Service(id.clone()));
        let by_entry = entries.values().any(|e| matches!(&e.kind, DeployedKind::Service { service_id, .. } if service_id == id));
        by_alias || by_entry
    }

    /// Retention, at the end of a deployment: per alias the newest `keep`
    /// kept dirs stay, older ones go (row first, then the dir; recovery
    /// removes a dir whose row went).
    pub(super) fn retain_kept(&self, keep: usize) -> Vec<String> {
        let store = self.journal.store();
        let rows = match list(store) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("reading the kept data records: {e}");
                return Vec::new();
            }
        };
        let mut by_alias: BTreeMap<&Alias, Vec<&Kept>> = BTreeMap::new();
        for k in &rows {
            by_alias.entry(&k.alias).or_default().push(k);
        }
        let mut done = Vec::new();
        for (alias, ks) in by_alias {
            // Oldest first: all but the newest `keep` go.
            let drop = ks.len().saturating_sub(keep.max(1));
            for k in &ks[..drop] {
                let id = &k.service_id;
                if let Err(e) = forget(store, id) {
                    tracing::warn!(%alias, "dropping kept data {id}: {e}");
                    continue;
                }
                if let Err(e) = crate::tree::remove_tree(&self.kept_path(id)) {
                    tracing::warn!(%alias, "removing kept data {id}: {e}; the next boot removes it");
                }
                done.push(format!("{alias}: removed kept data {id} (older than the newest {keep})"));
            }
        }
        for d in &done {
            tracing::info!("{d}");
        }
        done
    }
}
