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

/// SQL of the deployer's migration (appended to `store::migrations`).
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

/// How far a mutating step got; recovery finishes or rolls back from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Recorded before anything was done.
    Started,
    /// The new service exists (id in the intent) but the alias does not
    /// point at it yet.
    Created,
    /// Data carried over, init calls done; alias still on the old service.
    Initialised,
    /// The alias points at the new service (the point of no return: recovery
    /// rolls forward from here).
    Swapped,
}

/// The intent of one in-progress step, written before it mutates anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub step: Step,
    pub phase: Phase,
    /// The service being created (install/replace), once it exists.
    pub new_service: Option<ServiceId>,
    /// What the entry will be once the step completes (install, replace,
    /// reinit, spell steps), so recovery can roll forward.
    pub entry: Option<Deployed>,
}

/// Typed access to the deployer's tables.
#[derive(Debug, Clone)]
pub struct Journal {
    store: Store,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Journal {
    pub fn new(store: Store) -> Self {
        Self { store }
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
            let kind: DeployedKind = serde_json::from_str(&kind).map_err(|e| bad_row("deploy_entries.kind", &kind, e))?;
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
            params![intent.step.alias().as_str(), serde_json::to_string(intent).expect("json"), now_ms()],
        )?;
        Ok(())
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
            out.push(serde_json::from_str(&s).map_err(|e| bad_row("deploy_intents.intent", &s, e))?);
        }
        Ok(out)
    }

    pub fn save_report(&self, started_at: i64, finished_at: i64, outcome: &str, report: &serde_json::Value) -> rusqlite::Result<i64> {
        let conn = self.store.lock();
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

/// Inserts or updates one entry (keeping its `created_at`).
fn upsert_entry(conn: &rusqlite::Connection, d: &Deployed) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO deploy_entries(alias, package, version, kind, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(alias) DO UPDATE SET package = excluded.package, version = excluded.version, kind = excluded.kind, updated_at = excluded.updated_at",
        params![d.alias.as_str(), d.package.as_str(), d.version, serde_json::to_string(&d.kind).expect("json"), d.created_at, d.updated_at],
    )?;
    Ok(())
}

fn bad_row(col: &str, value: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, format!("{col} = {value:?}: {e}"), rusqlite::types::Type::Text)
}
