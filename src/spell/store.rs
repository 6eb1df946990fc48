//! Typed access to the spell tables (`spells`, `spell_kv`, `spell_applied_kv`,
//! `spell_errors`, `spell_runs`). Plain functions over a connection so that a
//! caller can group several of them in one transaction.

use super::schedule::{Start, Trigger};
use super::{RunRecord, RunStatus, SpellError, SpellErrorRecord};
use crate::ids::{Alias, PeerId};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use std::collections::BTreeMap;

/// The spell layer's tables, handed to the store (`crate::schema`).
pub const MIGRATIONS: &[crate::store::migrations::Migration] = &[
    // spells, their KV, last-applied config KV, error log, run history
    crate::store::migrations::Migration {
        name: "spell-001-spells",
        sql: "
CREATE TABLE spells (
    id TEXT PRIMARY KEY,
    alias TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    script TEXT NOT NULL,
    script_hash TEXT NOT NULL,
    start_at INTEGER,
    period_sec INTEGER NOT NULL,
    end_at INTEGER,
    last_run INTEGER,
    run_count INTEGER NOT NULL DEFAULT 0,
    runs_under_trigger INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE TABLE spell_kv (
    spell_id TEXT NOT NULL REFERENCES spells(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (spell_id, key)
) STRICT, WITHOUT ROWID;
CREATE TABLE spell_applied_kv (
    spell_id TEXT NOT NULL REFERENCES spells(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (spell_id, key)
) STRICT, WITHOUT ROWID;
CREATE TABLE spell_errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spell_id TEXT NOT NULL REFERENCES spells(id) ON DELETE CASCADE,
    at INTEGER NOT NULL,
    message TEXT NOT NULL
) STRICT;
CREATE INDEX spell_errors_by_spell ON spell_errors (spell_id, id);
CREATE TABLE spell_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spell_id TEXT NOT NULL REFERENCES spells(id) ON DELETE CASCADE,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    status TEXT NOT NULL
) STRICT;
CREATE INDEX spell_runs_by_spell ON spell_runs (spell_id, id);
",
    },
];

/// One row of `spells`, decoded.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub id: String,
    pub alias: Alias,
    pub owner: PeerId,
    pub script: String,
    pub script_hash: String,
    pub trigger: Trigger,
    pub last_run: Option<u64>,
    pub run_count: u64,
    pub runs_under_trigger: u64,
    pub created_at: u64,
    pub updated_at: u64,
}

const COLUMNS: &str =
    "id, alias, owner, script, script_hash, start_at, period_sec, end_at, last_run, run_count, runs_under_trigger, created_at, updated_at";

pub(crate) fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> SpellError {
    move |source| SpellError::Sql { op, source }
}

/// A `spells` row as SQLite holds it, before validation.
struct RawRow {
    id: String,
    alias: String,
    owner: String,
    script: String,
    script_hash: String,
    start_at: Option<i64>,
    period_sec: i64,
    end_at: Option<i64>,
    last_run: Option<i64>,
    run_count: i64,
    runs_under_trigger: i64,
    created_at: i64,
    updated_at: i64,
}

fn decode(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: r.get(0)?,
        alias: r.get(1)?,
        owner: r.get(2)?,
        script: r.get(3)?,
        script_hash: r.get(4)?,
        start_at: r.get(5)?,
        period_sec: r.get(6)?,
        end_at: r.get(7)?,
        last_run: r.get(8)?,
        run_count: r.get(9)?,
        runs_under_trigger: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
    })
}

fn to_row(raw: RawRow) -> Result<Row, SpellError> {
    let corrupt = |what: String| SpellError::Corrupt { alias: raw.alias.clone(), what };
    let alias = Alias::new(raw.alias.clone()).map_err(|e| corrupt(format!("alias {e}")))?;
    let owner = PeerId::parse(&raw.owner).ok_or_else(|| corrupt(format!("owner {:?} is not a peer id", raw.owner)))?;
    let u = |v: i64| v.max(0) as u64;
    Ok(Row {
        id: raw.id,
        alias,
        owner,
        script: raw.script,
        script_hash: raw.script_hash,
        trigger: Trigger {
            start: raw.start_at.map_or(Start::Now, |t| Start::At(u(t))),
            period_sec: u(raw.period_sec),
            end: raw.end_at.map(u),
        },
        last_run: raw.last_run.map(u),
        run_count: u(raw.run_count),
        runs_under_trigger: u(raw.runs_under_trigger),
        created_at: u(raw.created_at),
        updated_at: u(raw.updated_at),
    })
}

fn start_col(t: &Trigger) -> Option<i64> {
    match t.start {
        Start::Now => None,
        Start::At(s) => Some(s as i64),
    }
}

pub(crate) fn by_alias(conn: &Connection, alias: &Alias) -> Result<Option<Row>, SpellError> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM spells WHERE alias = ?1"))
        .and_then(|mut st| st.query_row([alias.as_str()], decode).optional())
        .map_err(sql("read spell"))?
        .map(to_row)
        .transpose()
}

pub(crate) fn by_id(conn: &Connection, id: &str) -> Result<Option<Row>, SpellError> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM spells WHERE id = ?1"))
        .and_then(|mut st| st.query_row([id], decode).optional())
        .map_err(sql("read spell"))?
        .map(to_row)
        .transpose()
}

pub(crate) fn all(conn: &Connection) -> Result<Vec<Row>, SpellError> {
    let raws = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM spells ORDER BY alias"))
        .and_then(|mut st| st.query_map([], decode)?.collect::<Result<Vec<_>, _>>())
        .map_err(sql("list spells"))?;
    raws.into_iter().map(to_row).collect()
}

/// `(id, alias)` of every spell; what the scheduler needs to supervise.
pub(crate) fn ids(conn: &Connection) -> Result<Vec<(String, String)>, SpellError> {
    conn.prepare_cached("SELECT id, alias FROM spells ORDER BY alias")
        .and_then(|mut st| st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(sql("list spells"))
}

/// Script hashes in use, to prune the compiled-script cache.
pub(crate) fn script_hashes(conn: &Connection) -> Result<Vec<String>, SpellError> {
    conn.prepare_cached("SELECT DISTINCT script_hash FROM spells")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(sql("list script hashes"))
}

pub(crate) fn insert(conn: &Connection, row: &Row) -> Result<(), SpellError> {
    conn.execute(
        &format!("INSERT INTO spells ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
        params![
            row.id,
            row.alias.as_str(),
            row.owner.as_str(),
            row.script,
            row.script_hash,
            start_col(&row.trigger),
            row.trigger.period_sec as i64,
            row.trigger.end.map(|e| e as i64),
            row.last_run.map(|t| t as i64),
            row.run_count as i64,
            row.runs_under_trigger as i64,
            row.created_at as i64,
            row.updated_at as i64,
        ],
    )
    .map_err(sql("insert spell"))?;
    Ok(())
}

pub(crate) fn set_script(conn: &Connection, id: &str, script: &str, hash: &str, now: u64) -> Result<(), SpellError> {
    conn.execute("UPDATE spells SET script = ?2, script_hash = ?3, updated_at = ?4 WHERE id = ?1", params![id, script, hash, now as i64])
        .map_err(sql("update spell script"))?;
    Ok(())
}

/// Sets a new trigger and restarts the count of runs under it (so a
/// `period_sec = 0` trigger that was changed runs once more).
pub(crate) fn set_trigger(conn: &Connection, id: &str, t: &Trigger, now: u64) -> Result<(), SpellError> {
    conn.execute(
        "UPDATE spells SET start_at = ?2, period_sec = ?3, end_at = ?4, runs_under_trigger = 0, updated_at = ?5 WHERE id = ?1",
        params![id, start_col(t), t.period_sec as i64, t.end.map(|e| e as i64), now as i64],
    )
    .map_err(sql("update spell trigger"))?;
    Ok(())
}

/// Records that a run which started at `started_at` finished; `same_trigger`
/// says whether the trigger it ran under is still the current one.
pub(crate) fn mark_run(conn: &Connection, id: &str, started_at: u64, same_trigger: bool) -> Result<(), SpellError> {
    conn.execute(
        "UPDATE spells SET last_run = ?2, run_count = run_count + 1,
             runs_under_trigger = runs_under_trigger + ?3 WHERE id = ?1",
        params![id, started_at as i64, same_trigger as i64],
    )
    .map_err(sql("record spell run"))?;
    Ok(())
}

pub(crate) fn delete(conn: &Connection, id: &str) -> Result<(), SpellError> {
    conn.execute("DELETE FROM spells WHERE id = ?1", [id]).map_err(sql("delete spell"))?;
    Ok(())
}

fn read_map(conn: &Connection, table: &str, alias: &str, id: &str) -> Result<BTreeMap<String, Value>, SpellError> {
    let rows: Vec<(String, String)> = conn
        .prepare_cached(&format!("SELECT key, value FROM {table} WHERE spell_id = ?1"))
        .and_then(|mut st| st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(sql("read spell kv"))?;
    rows.into_iter()
        .map(|(k, v)| match serde_json::from_str(&v) {
            Ok(v) => Ok((k, v)),
            Err(e) => Err(SpellError::Corrupt { alias: alias.to_string(), what: format!("{table} key {k:?} is not JSON: {e}") }),
        })
        .collect()
}

pub(crate) fn kv(conn: &Connection, row: &Row) -> Result<BTreeMap<String, Value>, SpellError> {
    read_map(conn, "spell_kv", row.alias.as_str(), &row.id)
}

pub(crate) fn applied_kv(conn: &Connection, row: &Row) -> Result<BTreeMap<String, Value>, SpellError> {
    read_map(conn, "spell_applied_kv", row.alias.as_str(), &row.id)
}

pub(crate) fn kv_put(conn: &Connection, id: &str, key: &str, value: &Value) -> Result<(), SpellError> {
    conn.prepare_cached(
        "INSERT INTO spell_kv (spell_id, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (spell_id, key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut st| st.execute(params![id, key, value.to_string()]))
    .map_err(sql("write spell kv"))?;
    Ok(())
}

pub(crate) fn kv_delete(conn: &Connection, id: &str, key: &str) -> Result<(), SpellError> {
    conn.prepare_cached("DELETE FROM spell_kv WHERE spell_id = ?1 AND key = ?2")
        .and_then(|mut st| st.execute(params![id, key]))
        .map_err(sql("delete spell kv"))?;
    Ok(())
}

pub(crate) fn set_applied_kv(conn: &Connection, id: &str, kv: &BTreeMap<String, Value>) -> Result<(), SpellError> {
    conn.execute("DELETE FROM spell_applied_kv WHERE spell_id = ?1", [id]).map_err(sql("write applied kv"))?;
    let mut st =
        conn.prepare_cached("INSERT INTO spell_applied_kv (spell_id, key, value) VALUES (?1, ?2, ?3)").map_err(sql("write applied kv"))?;
    for (k, v) in kv {
        st.execute(params![id, k, v.to_string()]).map_err(sql("write applied kv"))?;
    }
    Ok(())
}

/// Appends an error and keeps only the newest `keep`.
pub(crate) fn push_error(conn: &Connection, id: &str, at: u64, message: &str, keep: usize) -> Result<(), SpellError> {
    conn.execute("INSERT INTO spell_errors (spell_id, at, message) VALUES (?1, ?2, ?3)", params![id, at as i64, message])
        .map_err(sql("record spell error"))?;
    keep_newest(conn, "spell_errors", id, keep, "trim spell errors")
}

pub(crate) fn errors(conn: &Connection, id: &str) -> Result<Vec<SpellErrorRecord>, SpellError> {
    conn.prepare_cached("SELECT at, message FROM spell_errors WHERE spell_id = ?1 ORDER BY id")
        .and_then(|mut st| {
            st.query_map([id], |r| Ok(SpellErrorRecord { at: r.get::<_, i64>(0)?.max(0) as u64, message: r.get(1)? }))?.collect()
        })
        .map_err(sql("read spell errors"))
}

/// Appends a run to the history and keeps only the newest `keep`.
pub(crate) fn push_run(conn: &Connection, id: &str, run: &RunRecord, keep: usize) -> Result<(), SpellError> {
    conn.execute(
        "INSERT INTO spell_runs (spell_id, started_at, finished_at, status) VALUES (?1, ?2, ?3, ?4)",
        params![id, run.started_at as i64, run.finished_at as i64, run.status.as_str()],
    )
    .map_err(sql("record spell run"))?;
    keep_newest(conn, "spell_runs", id, keep, "trim spell runs")
}

/// Deletes all but the newest `keep` rows of one spell from a log table
/// (`spell_errors`, `spell_runs`: a fixed name, never input).
fn keep_newest(conn: &Connection, table: &'static str, id: &str, keep: usize, op: &'static str) -> Result<(), SpellError> {
    conn.execute(
        &format!(
            "DELETE FROM {table} WHERE spell_id = ?1 AND id NOT IN (SELECT id FROM {table} WHERE spell_id = ?1 ORDER BY id DESC LIMIT ?2)"
        ),
        params![id, keep as i64],
    )
    .map_err(sql(op))?;
    Ok(())
}

pub(crate) fn runs(conn: &Connection, id: &str) -> Result<Vec<RunRecord>, SpellError> {
    let rows: Vec<(i64, i64, String)> = conn
        .prepare_cached("SELECT started_at, finished_at, status FROM spell_runs WHERE spell_id = ?1 ORDER BY id")
        .and_then(|mut st| st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
        .map_err(sql("read spell runs"))?;
    Ok(rows
        .into_iter()
        .map(|(s, f, st)| RunRecord { started_at: s.max(0) as u64, finished_at: f.max(0) as u64, status: RunStatus::parse(&st) })
        .collect())
}
