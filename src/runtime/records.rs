//! The runtime's SQLite tables and typed accessors: components, verified
//! precompiled artifacts, blueprints, services and the alias table shared by
//! services and spells.
//!
//! Every accessor takes the store lock for one statement or one transaction
//! and never across an `.await`.

use super::{AliasBinding, AliasTarget, Blueprint, RuntimeError};
use crate::ids::{Alias, BlueprintId, ComponentHash, PeerId, ServiceId};
use crate::store::Store;
use rusqlite::{params, OptionalExtension};

/// The runtime's migrations, handed to the store (`crate::schema`).
pub const MIGRATIONS: &[crate::store::migrations::Migration] =
    &[crate::store::migrations::Migration { name: "002-runtime", sql: MIGRATION_SQL }];

/// The runtime's schema.
pub const MIGRATION_SQL: &str = "
CREATE TABLE rt_components (
    hash TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    added_at INTEGER NOT NULL
) STRICT;
CREATE TABLE rt_artifacts (
    component_hash TEXT NOT NULL,
    engine_key TEXT NOT NULL,
    blake3 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (component_hash, engine_key)
) STRICT;
CREATE TABLE rt_blueprints (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    added_at INTEGER NOT NULL
) STRICT;
CREATE TABLE rt_services (
    id TEXT PRIMARY KEY,
    blueprint_id TEXT NOT NULL REFERENCES rt_blueprints(id),
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE TABLE rt_aliases (
    alias TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('service', 'spell')),
    target TEXT NOT NULL,
    owner TEXT NOT NULL
) STRICT;
CREATE INDEX rt_aliases_by_target ON rt_aliases(kind, target);
";

/// A service row.
#[derive(Debug, Clone)]
pub(crate) struct ServiceRow {
    pub id: ServiceId,
    pub blueprint_id: BlueprintId,
    pub owner: PeerId,
    pub created_at: i64,
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn corrupt(what: &str, value: &str) -> RuntimeError {
    RuntimeError::CorruptRecord { what: what.to_string(), value: value.to_string() }
}

pub(crate) fn put_component(store: &Store, hash: &ComponentHash, size: u64) -> Result<(), RuntimeError> {
    store.lock().execute(
        "INSERT OR IGNORE INTO rt_components (hash, size, added_at) VALUES (?1, ?2, ?3)",
        params![hash.to_hex(), size as i64, now_secs()],
    )?;
    Ok(())
}

pub(crate) fn has_component(store: &Store, hash: &ComponentHash) -> Result<bool, RuntimeError> {
    let n: i64 = store.lock().query_row("SELECT COUNT(*) FROM rt_components WHERE hash = ?1", [hash.to_hex()], |r| r.get(0))?;
    Ok(n > 0)
}

pub(crate) fn components(store: &Store) -> Result<Vec<ComponentHash>, RuntimeError> {
    let conn = store.lock();
    let mut st = conn.prepare("SELECT hash FROM rt_components")?;
    let rows = st.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    rows.iter().map(|h| ComponentHash::from_hex(h).map_err(|_| corrupt("component hash", h))).collect()
}

pub(crate) fn delete_component(store: &Store, hash: &ComponentHash) -> Result<(), RuntimeError> {
    let mut conn = store.lock();
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM rt_artifacts WHERE component_hash = ?1", [hash.to_hex()])?;
    tx.execute("DELETE FROM rt_components WHERE hash = ?1", [hash.to_hex()])?;
    tx.commit()?;
    Ok(())
}

/// The recorded blake3 (hex) of a component's artifact for this engine.
pub(crate) fn artifact_digest(store: &Store, hash: &ComponentHash, engine_key: &str) -> Result<Option<String>, RuntimeError> {
    Ok(store
        .lock()
        .query_row(
            "SELECT blake3 FROM rt_artifacts WHERE component_hash = ?1 AND engine_key = ?2",
            params![hash.to_hex(), engine_key],
            |r| r.get(0),
        )
        .optional()?)
}

pub(crate) fn put_artifact(store: &Store, hash: &ComponentHash, engine_key: &str, digest: &str, size: u64) -> Result<(), RuntimeError> {
    store.lock().execute(
        "INSERT OR REPLACE INTO rt_artifacts (component_hash, engine_key, blake3, size) VALUES (?1, ?2, ?3, ?4)",
        params![hash.to_hex(), engine_key, digest, size as i64],
    )?;
    Ok(())
}

pub(crate) fn delete_artifact(store: &Store, hash: &ComponentHash, engine_key: &str) -> Result<(), RuntimeError> {
    store.lock().execute("DELETE FROM rt_artifacts WHERE component_hash = ?1 AND engine_key = ?2", params![hash.to_hex(), engine_key])?;
    Ok(())
}

/// Forgets artifacts recorded for other engines (other wasmtime versions or
/// CPUs); their files live in other cache directories, removed by `gc`.
pub(crate) fn delete_foreign_artifacts(store: &Store, engine_key: &str) -> Result<usize, RuntimeError> {
    Ok(store.lock().execute("DELETE FROM rt_artifacts WHERE engine_key != ?1", [engine_key])?)
}

pub(crate) fn put_blueprint(store: &Store, id: &BlueprintId, bp: &Blueprint) -> Result<(), RuntimeError> {
    let body = serde_json::to_string(bp).expect("blueprint serialises");
    store
        .lock()
        .execute("INSERT OR IGNORE INTO rt_blueprints (id, body, added_at) VALUES (?1, ?2, ?3)", params![id.to_hex(), body, now_secs()])?;
    Ok(())
}

pub(crate) fn blueprints(store: &Store) -> Result<Vec<(BlueprintId, Blueprint)>, RuntimeError> {
    let conn = store.lock();
    let mut st = conn.prepare("SELECT id, body FROM rt_blueprints")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?.collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(id, body)| {
            let id = BlueprintId::from_hex(&id).map_err(|_| corrupt("blueprint id", &id))?;
            let bp: Blueprint = serde_json::from_str(&body).map_err(|_| corrupt("blueprint", &body))?;
            Ok((id, bp))
        })
        .collect()
}

pub(crate) fn delete_blueprint(store: &Store, id: &BlueprintId) -> Result<(), RuntimeError> {
    store.lock().execute("DELETE FROM rt_blueprints WHERE id = ?1", [id.to_hex()])?;
    Ok(())
}

pub(crate) fn put_service(store: &Store, row: &ServiceRow) -> Result<(), RuntimeError> {
    put_service_in(&store.lock(), row)
}

/// `put_service` on a connection or an open transaction (batched creates).
pub(crate) fn put_service_in(conn: &rusqlite::Connection, row: &ServiceRow) -> Result<(), RuntimeError> {
    conn.prepare_cached("INSERT INTO rt_services (id, blueprint_id, owner, created_at) VALUES (?1, ?2, ?3, ?4)")?.execute(params![
        row.id.as_str(),
        row.blueprint_id.to_hex(),
        row.owner.as_str(),
        row.created_at
    ])?;
    Ok(())
}

pub(crate) fn services(store: &Store) -> Result<Vec<ServiceRow>, RuntimeError> {
    let conn = store.lock();
    let mut st = conn.prepare("SELECT id, blueprint_id, owner, created_at FROM rt_services")?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(id, bp, owner, created_at)| {
            Ok(ServiceRow {
                id: ServiceId::try_from(id.clone()).map_err(|_| corrupt("service id", &id))?,
                blueprint_id: BlueprintId::from_hex(&bp).map_err(|_| corrupt("blueprint id", &bp))?,
                owner: PeerId::parse(&owner).ok_or_else(|| corrupt("peer id", &owner))?,
                created_at,
            })
        })
        .collect()
}

/// Deletes a service and every alias pointing at it, in one transaction, so
/// no alias is ever left dangling.
pub(crate) fn delete_service(store: &Store, id: &ServiceId) -> Result<(), RuntimeError> {
    let mut conn = store.lock();
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM rt_aliases WHERE kind = 'service' AND target = ?1", [id.as_str()])?;
    tx.execute("DELETE FROM rt_services WHERE id = ?1", [id.as_str()])?;
    tx.commit()?;
    Ok(())
}

fn target_parts(t: &AliasTarget) -> (&'static str, &str) {
    match t {
        AliasTarget::Service(id) => ("service", id.as_str()),
        AliasTarget::Spell(id) => ("spell", id.as_str()),
    }
}

pub(crate) fn insert_alias(store: &Store, b: &AliasBinding) -> Result<(), RuntimeError> {
    insert_alias_in(&store.lock(), b)
}

/// `insert_alias` on a connection or an open transaction (batched binds).
pub(crate) fn insert_alias_in(conn: &rusqlite::Connection, b: &AliasBinding) -> Result<(), RuntimeError> {
    let (kind, target) = target_parts(&b.target);
    conn.prepare_cached("INSERT INTO rt_aliases (alias, kind, target, owner) VALUES (?1, ?2, ?3, ?4)")?.execute(params![
        b.alias.as_str(),
        kind,
        target,
        b.owner.as_str()
    ])?;
    Ok(())
}

pub(crate) fn update_alias(store: &Store, alias: &Alias, target: &AliasTarget) -> Result<(), RuntimeError> {
    let (kind, id) = target_parts(target);
    store.lock().execute("UPDATE rt_aliases SET kind = ?2, target = ?3 WHERE alias = ?1", params![alias.as_str(), kind, id])?;
    Ok(())
}

pub(crate) fn delete_alias(store: &Store, alias: &Alias) -> Result<(), RuntimeError> {
    store.lock().execute("DELETE FROM rt_aliases WHERE alias = ?1", [alias.as_str()])?;
    Ok(())
}

pub fn aliases(store: &Store) -> Result<Vec<AliasBinding>, RuntimeError> {
    let conn = store.lock();
    let mut st = conn.prepare("SELECT alias, kind, target, owner FROM rt_aliases ORDER BY alias")?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(alias, kind, target, owner)| {
            let target = match kind.as_str() {
                "service" => AliasTarget::Service(ServiceId::try_from(target.clone()).map_err(|_| corrupt("service id", &target))?),
                _ => AliasTarget::Spell(target),
            };
            Ok(AliasBinding {
                alias: Alias::new(alias.clone()).map_err(|_| corrupt("alias", &alias))?,
                target,
                owner: PeerId::parse(&owner).ok_or_else(|| corrupt("peer id", &owner))?,
            })
        })
        .collect()
}
