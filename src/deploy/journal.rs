//! The deployer's own tables: what it deployed (`deploy_entries`), the intent
//! of the step in progress (`deploy_intents`, written before a mutating step
//! and cleared after it), and the deployment reports (`deployments`).

use super::model::{Deployed, DeployedKind};
use super::plan::Step;
use crate::ids::{Alias, PackageName, ServiceId};
use crate::store::Store;
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The deployer's migrations, handed to the store (`crate::schema`).
pub const MIGRATIONS: &[crate::store::migrations::Migration] =
    &[crate::store::migrations::Migration { name: "003-deploy", sql: MIGRATION_SQL }];

/// SQL of the deployer's migration.
pub const MIGRATION_SQL: &str = "
CREATE TABLE deploy_entries (
    alias      TEXT PRIMARY KEY,
    package    TEXT NOT NULL,
    version    TEXT NOT NULL,
    kind       TEXT NOT NULL,  -- JSON of DeployedKind
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE TABLE deploy_intents (
    alias      TEXT PRIMARY KEY,
    intent     TEXT NOT NULL,  -- JSON of Intent
    created_at INTEGER NOT NULL
) STRICT;
CREATE TABLE deployments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    report      TEXT NOT NULL
) STRICT;
";

/// How far a mutating step got. `recover` reads it: a step still at
/// `Started` created nothing worth keeping; from `Created` on, the new
/// service's id is in the intent; at `Swapped` the alias has moved and the
/// step can only roll forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Recorded before anything was done.
    Started,
    /// The new service exists (id in the intent) but the alias does not
    /// point at it yet. A batch of installs records this phase with the id
    /// it chose before creating the services (so recovery removes the
    /// service whether or not it got created).
    Created,
    /// Data carried over, init calls done and synced; alias still on the old
    /// service.
    Initialised,
    /// The alias points at the new service (the point of no return: recovery
    /// rolls forward from here).
    Swapped,
}

/// What a step does, as recorded in its intent: only what recovery needs,
/// independent of the planner's `Step` (which may change between releases).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    Install,
    Replace { old_service: ServiceId },
    Reinit,
    Remove { service: ServiceId },
    Repair,
    InstallSpell,
    UpdateSpell,
    KvApply,
    RemoveSpell,
}

impl Action {
    /// The action of a plan step (`None` for steps that change nothing).
    pub fn of(step: &Step) -> Option<Action> {
        Some(match step {
            Step::Install { .. } => Action::Install,
            Step::Replace { old_service_id, .. } => Action::Replace { old_service: old_service_id.clone() },
            Step::Reinit { .. } => Action::Reinit,
            Step::Remove { service_id, .. } => Action::Remove { service: service_id.clone() },
            Step::Repair { .. } => Action::Repair,
            Step::InstallSpell { .. } => Action::InstallSpell,
            Step::UpdateSpell { .. } => Action::UpdateSpell,
            Step::KvApply { .. } => Action::KvApply,
            Step::RemoveSpell { .. } => Action::RemoveSpell,
            Step::Keep { .. } | Step::KeepSpell { .. } | Step::Conflict { .. } => return None,
        })
    }
    /// As in reports (`install`, `kv-apply`).
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Install => "install",
            Action::Replace { .. } => "replace",
            Action::Reinit => "reinit",
            Action::Remove { .. } => "remove",
            Action::Repair => "repair",
            Action::InstallSpell => "install-spell",
            Action::UpdateSpell => "update-spell",
            Action::KvApply => "kv-apply",
            Action::RemoveSpell => "remove-spell",
        }
    }
}

/// The intent of one in-progress step, written before it mutates anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub alias: Alias,
    pub package: PackageName,
    #[serde(flatten)]
    pub action: Action,
    pub phase: Phase,
    /// The service being created (install/replace), once it exists.
    pub new_service: Option<ServiceId>,
    /// What the entry will be once the step completes (install, replace,
    /// reinit, spell steps), so recovery can roll forward.
    pub entry: Option<Deployed>,
}

/// Version of the intent and entry records written by this binary. Older
/// versions are decoded (see `decode_intent`, `decode_kind`); a newer one is
/// refused with a message, never guessed at.
pub const RECORD_VERSION: u64 = 1;

/// A journal row this binary cannot read.
#[derive(Debug, thiserror::Error)]
#[error("deployer journal: {column} holds a record this binary cannot read ({problem}); if a newer sysdeploy wrote it, run that version (or let it finish its deployment) before downgrading")]
pub struct RecordError {
    pub column: &'static str,
    pub problem: String,
}

fn version_of(v: &serde_json::Value) -> u64 {
    v.get("v").and_then(|v| v.as_u64()).unwrap_or(0)
}

/// Encodes an intent as a versioned record.
pub fn encode_intent(intent: &Intent) -> String {
    let mut v = serde_json::to_value(intent).expect("intent serialises");
    v["v"] = RECORD_VERSION.into();
    v.to_string()
}

/// Decodes an intent of any version this binary knows: 1 (today's), or the
/// unversioned format of releases before versioned records (0), which held
/// the planner's whole `Step`.
pub fn decode_intent(text: &str) -> Result<Intent, RecordError> {
    let bad = |problem: String| RecordError { column: "deploy_intents.intent", problem };
    let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    match version_of(&v) {
        0 => {
            let step = v.get("step").cloned().ok_or_else(|| bad("no step in an unversioned intent".into()))?;
            let field = |name: &str| step.get(name).cloned().unwrap_or(serde_json::Value::Null);
            let mut action = serde_json::json!({ "action": field("action") });
            match step.get("action").and_then(|a| a.as_str()) {
                Some("replace") => action["old_service"] = field("old_service_id"),
                Some("remove") => action["service"] = field("service_id"),
                _ => {}
            }
            let action: Action = serde_json::from_value(action).map_err(|e| bad(format!("step of an unversioned intent: {e}")))?;
            let entry = match v.get_mut("entry").map(serde_json::Value::take) {
                Some(serde_json::Value::Null) | None => None,
                Some(e) => Some(decode_deployed(e).map_err(|e| bad(e.problem))?),
            };
            Ok(Intent {
                alias: serde_json::from_value(field("alias")).map_err(|e| bad(format!("alias: {e}")))?,
                package: serde_json::from_value(field("package")).map_err(|e| bad(format!("package: {e}")))?,
                action,
                phase: serde_json::from_value(v["phase"].take()).map_err(|e| bad(format!("phase: {e}")))?,
                new_service: serde_json::from_value(v["new_service"].take()).map_err(|e| bad(format!("new_service: {e}")))?,
                entry,
            })
        }
        1 => serde_json::from_value(v).map_err(|e| bad(e.to_string())),
        n => Err(bad(format!("record version {n}, this binary knows up to {RECORD_VERSION}"))),
    }
}

/// An entry's kind as a versioned record.
pub fn encode_kind(kind: &DeployedKind) -> String {
    let mut v = serde_json::to_value(kind).expect("entry serialises");
    v["v"] = RECORD_VERSION.into();
    v.to_string()
}

/// Decodes an entry's kind: version 1 and the unversioned format (0) have
/// the same fields.
pub fn decode_kind(text: &str) -> Result<DeployedKind, RecordError> {
    let bad = |problem: String| RecordError { column: "deploy_entries.kind", problem };
    let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    match version_of(&v) {
        0 | 1 => {
            if let Some(o) = v.as_object_mut() {
                o.remove("v");
            }
            serde_json::from_value(v).map_err(|e| bad(e.to_string()))
        }
        n => Err(bad(format!("record version {n}, this binary knows up to {RECORD_VERSION}"))),
    }
}

/// A whole `Deployed` inside an unversioned intent (kind flattened in).
fn decode_deployed(v: serde_json::Value) -> Result<Deployed, RecordError> {
    serde_json::from_value(v).map_err(|e| RecordError { column: "deploy_intents.intent", problem: format!("entry: {e}") })
}

/// Typed access to the deployer's tables.
#[derive(Debug, Clone)]
pub struct Journal {
    store: Store,
    /// The observed state recovery read when it found nothing to do, handed
    /// once to the `Deployer::current` that follows it (a boot then reads
    /// 10,000 entries, aliases and services once, not twice). It is kept
    /// with the connection's `total_changes` and handed out only while no
    /// row was written since (all of the node's writes use this connection).
    observed: std::sync::Arc<std::sync::Mutex<Option<(u64, super::model::Current)>>>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Journal {
    pub fn new(store: Store) -> Self {
        Self { store, observed: Default::default() }
    }

    /// Keeps `current` for the next `take_observed` (see the field).
    pub(super) fn keep_observed(&self, current: super::model::Current) {
        let changes = self.store.lock().total_changes();
        *self.observed.lock().unwrap_or_else(|p| p.into_inner()) = Some((changes, current));
    }

    /// The kept observation, once, if nothing was written since.
    pub(super) fn take_observed(&self) -> Option<super::model::Current> {
        let (changes, current) = self.observed.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        (self.store.lock().total_changes() == changes).then_some(current)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn deployed(&self) -> rusqlite::Result<BTreeMap<Alias, Deployed>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare("SELECT alias, package, version, kind, created_at, updated_at FROM deploy_entries ORDER BY alias")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (alias, package, version, kind, created_at, updated_at) = row?;
            let alias = Alias::new(&alias).map_err(|e| bad_row("deploy_entries.alias", &alias, e))?;
            let package = PackageName::new(&package).map_err(|e| bad_row("deploy_entries.package", &package, e))?;
            let kind = decode_kind(&kind).map_err(|e| bad_row("deploy_entries.kind", &kind, e))?;
            out.insert(alias.clone(), Deployed { alias, package, version, kind, created_at, updated_at });
        }
        Ok(out)
    }

    pub fn upsert(&self, d: &Deployed) -> rusqlite::Result<()> {
        upsert_entry(&self.store.lock(), d)
    }

    /// Records (or advances) the intent of the step on `alias`.
    pub fn put_intent(&self, intent: &Intent) -> rusqlite::Result<()> {
        self.store.lock().execute(
            "INSERT INTO deploy_intents(alias, intent, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(alias) DO UPDATE SET intent = excluded.intent",
            params![intent.alias.as_str(), encode_intent(intent), now_ms()],
        )?;
        Ok(())
    }

    /// Records the intents of a batch of steps in one transaction.
    pub fn put_intents(&self, intents: &[Intent]) -> rusqlite::Result<()> {
        let mut conn = self.store.lock();
        let tx = conn.transaction()?;
        let now = now_ms();
        for intent in intents {
            tx.prepare_cached(
                "INSERT INTO deploy_intents(alias, intent, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(alias) DO UPDATE SET intent = excluded.intent",
            )?
            .execute(params![intent.alias.as_str(), encode_intent(intent), now])?;
        }
        tx.commit()
    }

    /// Clears the intents of a batch of steps in one transaction.
    pub fn clear_intents<'a>(&self, aliases: impl IntoIterator<Item = &'a Alias>) -> rusqlite::Result<()> {
        let mut conn = self.store.lock();
        let tx = conn.transaction()?;
        for alias in aliases {
            tx.prepare_cached("DELETE FROM deploy_intents WHERE alias = ?1")?.execute([alias.as_str()])?;
        }
        tx.commit()
    }

    /// Completes a step: writes (or deletes) its entry and clears its intent
    /// in one transaction.
    pub fn complete(&self, alias: &Alias, entry: Option<&Deployed>) -> rusqlite::Result<()> {
        let mut conn = self.store.lock();
        let tx = conn.transaction()?;
        match entry {
            Some(d) => upsert_entry(&tx, d)?,
            None => {
                tx.execute("DELETE FROM deploy_entries WHERE alias = ?1", [alias.as_str()])?;
            }
        }
        tx.execute("DELETE FROM deploy_intents WHERE alias = ?1", [alias.as_str()])?;
        tx.commit()
    }

    pub fn clear_intent(&self, alias: &Alias) -> rusqlite::Result<()> {
        self.store.lock().execute("DELETE FROM deploy_intents WHERE alias = ?1", [alias.as_str()])?;
        Ok(())
    }

    pub fn intents(&self) -> rusqlite::Result<Vec<Intent>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare("SELECT intent FROM deploy_intents ORDER BY created_at")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            let s = row?;
            out.push(decode_intent(&s).map_err(|e| bad_row("deploy_intents.intent", &s, e))?);
        }
        Ok(out)
    }

    /// Saves a deployment report and returns its id. A deployment that
    /// changed nothing, recovered nothing and succeeded, after a last one of
    /// the same kind, writes nothing (the last report's id is returned): a
    /// no-op boot then pays no commit and no checkpoint.
    pub fn save_report(&self, started_at: i64, finished_at: i64, outcome: &str, report: &serde_json::Value) -> rusqlite::Result<i64> {
        let conn = self.store.lock();
        if is_quiet(outcome, report) {
            // SQLite's JSON functions read the two fields without building
            // the last report (10,000 `keep` steps at 10,000 services).
            let last: Option<(i64, String, Option<i64>, Option<i64>)> = conn
                .query_row(
                    "SELECT id, outcome, json_extract(report, '$.no_changes'), json_array_length(report, '$.recovered')
                     FROM deployments ORDER BY id DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            if let Some((id, last_outcome, Some(1), recovered)) = last {
                if last_outcome == "ok" && recovered.unwrap_or(0) == 0 {
                    return Ok(id);
                }
            }
        }
        conn.execute(
            "INSERT INTO deployments(started_at, finished_at, outcome, report) VALUES (?1, ?2, ?3, ?4)",
            params![started_at, finished_at, outcome, report.to_string()],
        )?;
        let id = conn.last_insert_rowid();
        // Keep the last 100 reports.
        conn.execute("DELETE FROM deployments WHERE id <= ?1 - 100", [id])?;
        Ok(id)
    }

    pub fn last_report(&self) -> rusqlite::Result<Option<serde_json::Value>> {
        let conn = self.store.lock();
        let s: Option<String> = conn.query_row("SELECT report FROM deployments ORDER BY id DESC LIMIT 1", [], |r| r.get(0)).optional()?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok()))
    }
}

/// A report of a deployment that changed nothing: outcome ok, no changes,
/// nothing recovered.
fn is_quiet(outcome: &str, report: &serde_json::Value) -> bool {
    outcome == "ok" && report["no_changes"] == serde_json::Value::Bool(true) && report["recovered"].as_array().is_none_or(|r| r.is_empty())
}

/// Completes a step inside a transaction someone else holds (the runtime's
/// batched alias bind): writes its entry and clears its intent.
pub fn complete_in(conn: &rusqlite::Connection, entry: &Deployed) -> rusqlite::Result<()> {
    upsert_entry(conn, entry)?;
    conn.prepare_cached("DELETE FROM deploy_intents WHERE alias = ?1")?.execute([entry.alias.as_str()])?;
    Ok(())
}

/// Inserts or updates one entry (keeping its `created_at`).
fn upsert_entry(conn: &rusqlite::Connection, d: &Deployed) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO deploy_entries(alias, package, version, kind, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(alias) DO UPDATE SET package = excluded.package, version = excluded.version, kind = excluded.kind, updated_at = excluded.updated_at",
    )?
    .execute(params![d.alias.as_str(), d.package.as_str(), d.version, encode_kind(&d.kind), d.created_at, d.updated_at])?;
    Ok(())
}

pub(super) fn bad_row(col: &str, value: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, format!("{col} = {value:?}: {e}"), rusqlite::types::Type::Text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(no_changes: bool, recovered: &[&str]) -> serde_json::Value {
        serde_json::json!({ "no_changes": no_changes, "recovered": recovered, "steps": [] })
    }

    fn rows(j: &Journal) -> i64 {
        j.store().lock().query_row("SELECT COUNT(*) FROM deployments", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_kept_observation_is_handed_out_once_and_never_after_a_write() {
        let j = Journal::new(Store::in_memory());
        j.keep_observed(crate::deploy::Current::default());
        assert!(j.take_observed().is_some());
        assert!(j.take_observed().is_none(), "handed out once");
        j.keep_observed(crate::deploy::Current::default());
        j.save_report(1, 2, "ok", &report(false, &[])).unwrap();
        assert!(j.take_observed().is_none(), "a row was written since it was observed");
    }

    #[test]
    fn a_repeated_no_op_deployment_writes_no_report() {
        let j = Journal::new(Store::in_memory());
        let first = j.save_report(1, 2, "ok", &report(false, &[])).unwrap();
        let noop = j.save_report(3, 4, "ok", &report(true, &[])).unwrap();
        assert!(noop > first, "the first no-op after a change is recorded");
        assert_eq!(j.save_report(5, 6, "ok", &report(true, &[])).unwrap(), noop, "a repeated no-op writes nothing");
        assert_eq!(rows(&j), 2);
        // Anything that is not a quiet no-op is written.
        j.save_report(7, 8, "ok", &report(true, &["kv: rolled back"])).unwrap();
        j.save_report(9, 10, "failed", &report(true, &[])).unwrap();
        assert_eq!(rows(&j), 4);
        let after_failure = j.save_report(11, 12, "ok", &report(true, &[])).unwrap();
        assert_eq!(rows(&j), 5, "a no-op after a failure is recorded: {after_failure}");
    }
}
