//! Generations (issue 17): every deployment that changes something records
//! a numbered generation — per package its version, its source as loaded
//! (`source.rs`), the resolved config (secrets only as digests), per alias
//! the blueprint and service bound after the deployment, the plan and the
//! outcome. The blueprints of the newest `system_services.keep_generations`
//! generations stay in the runtime's GC keep-set; older generations are
//! marked pruned (their rows stay listed). Pins (`deploy_pins`, written by
//! `sysdeploy rollback`) make a package's desired state come from a
//! generation (`pins.rs`).

pub mod pins;
pub mod source;

use super::model::{Current, DeployedKind, Desired};
use super::plan::Plan;
use super::report::{Outcome, Report, StepOutcome};
use crate::config::EffectiveConfig;
use crate::ids::{Alias, BlueprintId, PackageName, ServiceId};
use crate::store::Store;
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};

pub use pins::{resolve, Pin, PinView, ResolveError, Resolved};
pub use source::{register_dir, PackageSource};

/// The generations' migration, handed to the store (`crate::schema`).
pub const MIGRATIONS: &[crate::store::migrations::Migration] =
    &[crate::store::migrations::Migration { name: "gen-001-generations", sql: MIGRATION_SQL }];

const MIGRATION_SQL: &str = "
CREATE TABLE deploy_generations (
    number     INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,  -- unix ms
    outcome    TEXT NOT NULL,     -- ok | partial | failed
    pruned     INTEGER NOT NULL DEFAULT 0,
    record     TEXT NOT NULL      -- JSON of GenerationRecord
) STRICT;
CREATE TABLE deploy_generation_sources (
    digest TEXT PRIMARY KEY,      -- PackageSource::digest
    source TEXT NOT NULL          -- JSON of PackageSource
) STRICT;
CREATE TABLE deploy_pins (
    package      TEXT PRIMARY KEY,
    generation   INTEGER NOT NULL,
    restore_data INTEGER NOT NULL,
    pinned_at    INTEGER NOT NULL
) STRICT;
";

/// Generation rows kept at most (older ones are deleted, pinned ones excepted).
pub const MAX_ROWS: u64 = 100;

/// Bytes of generation records kept at most: a node of 10,000 services writes
/// ~4 MB per generation (its aliases and plan), so the row cap alone would let
/// the store grow by ~400 MB. Beyond it the oldest rows go first — never a
/// pinned one, never one of the newest `keep_generations`.
pub const MAX_RECORD_BYTES: i64 = 64 << 20;

/// A config value as a generation keeps it: the value, or a secret's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StoredValue {
    Secret { secret_digest: String },
    Plain { value: Json },
}

/// The digest a secret value is kept as.
pub fn secret_digest(v: &Json) -> String {
    blake3::hash(&serde_json::to_vec(v).expect("json")).to_hex().to_string()
}

/// One package in a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    pub version: String,
    /// Digest of its `PackageSource` (`None`: its files could not be recorded).
    #[serde(default)]
    pub source: Option<String>,
    /// Its config section as resolved (secrets as digests).
    pub config: BTreeMap<String, StoredValue>,
    /// The blueprints it asked for.
    #[serde(default)]
    pub blueprints: Vec<BlueprintId>,
    /// Deployed from this generation's pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<u64>,
}

/// One alias after the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub package: PackageName,
    /// `service` or `spell`
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blueprint_id: Option<BlueprintId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<ServiceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_hash: Option<String>,
}

/// What a generation holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GenerationRecord {
    pub packages: BTreeMap<PackageName, PackageRecord>,
    pub aliases: BTreeMap<Alias, AliasRecord>,
    /// The plan's changing steps with their reasons and outcomes.
    pub plan: Vec<Json>,
}

/// One row of `deploy_generations`.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub number: u64,
    pub created_at_ms: i64,
    pub outcome: String,
    pub pruned: bool,
    pub record: GenerationRecord,
}

/// `system_services.keep_generations`.
pub fn keep_generations(cfg: &EffectiveConfig) -> u64 {
    cfg.get("system_services.keep_generations").and_then(|v| v.value.as_u64()).unwrap_or(3).max(1)
}

/// True when the store has the generation tables (a read-only store of an
/// older schema does not).
fn has_tables(conn: &rusqlite::Connection) -> rusqlite::Result<bool> {
    conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'deploy_generations'", [], |r| r.get::<_, i64>(0))
        .map(|n| n > 0)
}

fn bad(column: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("{column}: {e}").into())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Generation> {
    let text: String = r.get(4)?;
    let record = serde_json::from_str(&text).map_err(|e| bad("deploy_generations.record", e))?;
    Ok(Generation {
        number: r.get::<_, i64>(0)? as u64,
        created_at_ms: r.get(1)?,
        outcome: r.get(2)?,
        pruned: r.get::<_, i64>(3)? != 0,
        record,
    })
}

/// Every generation, newest first.
pub fn list(store: &Store) -> rusqlite::Result<Vec<Generation>> {
    let conn = store.lock();
    if !has_tables(&conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT number, created_at, outcome, pruned, record FROM deploy_generations ORDER BY number DESC")?;
    let rows = stmt.query_map([], row)?.collect();
    rows
}

/// Generation `n`, if recorded.
pub fn get(store: &Store, n: u64) -> rusqlite::Result<Option<Generation>> {
    let conn = store.lock();
    if !has_tables(&conn)? {
        return Ok(None);
    }
    conn.query_row("SELECT number, created_at, outcome, pruned, record FROM deploy_generations WHERE number = ?1", [n as i64], row)
        .optional()
}

/// A recorded package source.
pub fn source(store: &Store, digest: &str) -> rusqlite::Result<Option<PackageSource>> {
    let conn = store.lock();
    let text: Option<String> =
        conn.query_row("SELECT source FROM deploy_generation_sources WHERE digest = ?1", [digest], |r| r.get(0)).optional()?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| bad("deploy_generation_sources.source", e))).transpose()
}

/// The blueprints bound after each generation not pruned:
/// `Runtime::keep_blueprints` keeps them (with components and artifacts)
/// beside the desired ones.
pub fn keep_set(store: &Store) -> rusqlite::Result<BTreeSet<BlueprintId>> {
    let conn = store.lock();
    if !has_tables(&conn)? {
        return Ok(BTreeSet::new());
    }
    let mut stmt = conn.prepare("SELECT record FROM deploy_generations WHERE pruned = 0")?;
    let mut out = BTreeSet::new();
    for text in stmt.query_map([], |r| r.get::<_, String>(0))? {
        let rec: GenerationRecord = serde_json::from_str(&text?).map_err(|e| bad("deploy_generations.record", e))?;
        // What was bound after the deployment: a blueprint a failed step
        // only wanted is kept while it is desired, not for a rollback.
        out.extend(rec.aliases.values().filter_map(|a| a.blueprint_id));
    }
    Ok(out)
}

/// What one deployment leaves behind, recorded by [`record`].
pub struct Deployment<'a> {
    /// The catalog the node loaded (sources of packages that are not pinned).
    pub catalog: &'a crate::distro::Catalog,
    /// What was resolved (pins, and the config used).
    pub resolved: &'a Resolved,
    pub config: &'a EffectiveConfig,
    pub desired: &'a Desired,
    pub plan: &'a Plan,
    pub report: &'a Report,
    /// The observed state after the deployment.
    pub current: &'a Current,
}

/// `ok`, `partial` (some change applied, some failed) or `failed`.
pub fn outcome_of(report: &Report) -> &'static str {
    match report.outcome {
        Outcome::Ok => "ok",
        Outcome::Degraded => "partial",
        Outcome::Failed => {
            let applied = report.steps.iter().any(|s| s.outcome == StepOutcome::Ok && !matches!(s.action.as_str(), "keep" | "keep-spell"));
            if applied {
                "partial"
            } else {
                "failed"
            }
        }
    }
}

/// Builds the generation record of a deployment (sources of packages not
/// pinned captured from the catalog's origin).
fn build(d: &Deployment<'_>) -> (GenerationRecord, Vec<PackageSource>) {
    let cfg = d.resolved.config.as_ref().unwrap_or(d.config);
    let captured = source::capture(d.catalog);
    let mut sources = Vec::new();
    let mut packages = BTreeMap::new();
    for p in &d.desired.packages {
        let pin = d.resolved.pins.iter().find(|v| v.package == p.name);
        let src = match pin {
            Some(v) => v.source.clone(),
            None => captured.get(&p.name).map(|s| {
                sources.push(s.clone());
                s.digest()
            }),
        };
        let config = cfg
            .system_services
            .packages
            .get(&p.name)
            .map(|section| {
                section
                    .iter()
                    .map(|(k, v)| {
                        let stored = if v.secret {
                            StoredValue::Secret { secret_digest: secret_digest(&v.value) }
                        } else {
                            StoredValue::Plain { value: v.value.clone() }
                        };
                        (k.clone(), stored)
                    })
                    .collect()
            })
            .unwrap_or_default();
        packages.insert(
            p.name.clone(),
            PackageRecord {
                version: p.version.clone(),
                source: src,
                config,
                blueprints: p.services.iter().map(|s| s.blueprint_id).collect(),
                pinned: pin.map(|v| v.generation),
            },
        );
    }
    let aliases = d
        .current
        .deployed
        .iter()
        .map(|(a, e)| {
            let r = match &e.kind {
                DeployedKind::Service { service_id, blueprint_id, .. } => AliasRecord {
                    package: e.package.clone(),
                    kind: "service".into(),
                    blueprint_id: Some(*blueprint_id),
                    service_id: Some(service_id.clone()),
                    script_hash: None,
                },
                DeployedKind::Spell { script_hash, .. } => AliasRecord {
                    package: e.package.clone(),
                    kind: "spell".into(),
                    blueprint_id: None,
                    service_id: None,
                    script_hash: Some(script_hash.clone()),
                },
            };
            (a.clone(), r)
        })
        .collect();
    let outcomes: BTreeMap<(&str, &str), &super::report::StepReport> =
        d.report.steps.iter().map(|s| ((s.alias.as_str(), s.action.as_str()), s)).collect();
    let plan = d
        .plan
        .changes()
        .map(|s| {
            let out = outcomes.get(&(s.alias().as_str(), s.kind())).map(|r| format!("{:?}", r.outcome).to_lowercase());
            serde_json::json!({
                "action": s.kind(),
                "alias": s.alias(),
                "package": s.package(),
                "reason": s.reason(),
                "outcome": out,
            })
        })
        .collect();
    (GenerationRecord { packages, aliases, plan }, sources)
}

/// Records the generation of a deployment that changed something (a
/// deployment that leaves packages and aliases as the newest generation
/// recorded them writes nothing), marks the generations beyond `keep`
/// pruned (pinned ones excepted), and clears the `restore_data` flag of pins
/// whose package was deployed. Returns the new generation's number.
pub fn record(store: &Store, d: &Deployment<'_>, keep: u64) -> rusqlite::Result<Option<u64>> {
    let (rec, sources) = build(d);
    let outcome = outcome_of(d.report);
    let newest = list_newest(store)?;
    if let Some(g) = &newest {
        if g.record.packages == rec.packages && g.record.aliases == rec.aliases {
            return Ok(None);
        }
    }
    let number = newest.map_or(1, |g| g.number + 1);
    let mut conn = store.lock();
    let tx = conn.transaction()?;
    for s in &sources {
        tx.execute(
            "INSERT OR IGNORE INTO deploy_generation_sources(digest, source) VALUES (?1, ?2)",
            params![s.digest(), serde_json::to_string(s).expect("json")],
        )?;
    }
    tx.execute(
        "INSERT INTO deploy_generations(number, created_at, outcome, pruned, record) VALUES (?1, ?2, ?3, 0, ?4)",
        params![number as i64, super::journal::now_ms(), outcome, serde_json::to_string(&rec).expect("json")],
    )?;
    tx.execute(
        "UPDATE deploy_generations SET pruned = 1
         WHERE pruned = 0 AND number <= ?1 AND number NOT IN (SELECT generation FROM deploy_pins)",
        [number as i64 - keep as i64],
    )?;
    tx.execute(
        "DELETE FROM deploy_generations WHERE number <= ?1 AND number NOT IN (SELECT generation FROM deploy_pins)",
        [number as i64 - MAX_ROWS as i64],
    )?;
    prune_by_bytes(&tx, number, keep, MAX_RECORD_BYTES)?;
    tx.execute(
        "DELETE FROM deploy_generation_sources WHERE digest NOT IN
         (SELECT json_extract(p.value, '$.source') FROM deploy_generations g, json_each(g.record, '$.packages') p
          WHERE json_extract(p.value, '$.source') IS NOT NULL)",
        [],
    )?;
    if outcome == "ok" {
        for p in rec.packages.values().filter_map(|p| p.pinned) {
            tx.execute("UPDATE deploy_pins SET restore_data = 0 WHERE generation = ?1", [p as i64])?;
        }
    }
    tx.commit()?;
    // Recorded, report not yet saved, GC not yet run: the next boot's plan is
    // empty and the generation stays (crash matrix, op `gc`).
    crash_point!("deploy::generation::recorded");
    Ok(Some(number))
}

/// Deletes the oldest generation rows while the records of the rows newer
/// than them add up to more than `cap` bytes; pinned rows and the newest
/// `keep` (up to `newest`) always stay.
fn prune_by_bytes(conn: &rusqlite::Connection, newest: u64, keep: u64, cap: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM deploy_generations
         WHERE number IN (SELECT number FROM
                 (SELECT number, SUM(length(record)) OVER (ORDER BY number DESC) AS upto FROM deploy_generations)
               WHERE upto > ?1)
           AND number <= ?2
           AND number NOT IN (SELECT generation FROM deploy_pins)",
        params![cap, newest as i64 - keep as i64],
    )
}

fn list_newest(store: &Store) -> rusqlite::Result<Option<Generation>> {
    let conn = store.lock();
    conn.query_row("SELECT number, created_at, outcome, pruned, record FROM deploy_generations ORDER BY number DESC LIMIT 1", [], row)
        .optional()
}

/// What changed from `prev` to `cur`, one line per change: package versions
/// `a → b`, packages added/removed, files or config keys changed, pins,
/// aliases installed/replaced/removed.
pub fn changes(prev: Option<&GenerationRecord>, cur: &GenerationRecord) -> Vec<String> {
    let empty = GenerationRecord::default();
    let prev = prev.unwrap_or(&empty);
    let mut out = Vec::new();
    let names: BTreeSet<&PackageName> = prev.packages.keys().chain(cur.packages.keys()).collect();
    for n in names {
        match (prev.packages.get(n), cur.packages.get(n)) {
            (None, Some(c)) => out.push(format!("package {n} {} added", c.version)),
            (Some(p), None) => out.push(format!("package {n} {} removed", p.version)),
            (Some(p), Some(c)) => {
                if p.version != c.version {
                    out.push(format!("package {n} {} → {}", p.version, c.version));
                } else if p.source != c.source || p.blueprints != c.blueprints {
                    out.push(format!("package {n} {}: files changed", c.version));
                }
                let keys: BTreeSet<&String> = p.config.keys().chain(c.config.keys()).collect();
                for k in keys {
                    let (a, b) = (p.config.get(k), c.config.get(k));
                    if a != b {
                        let secret = matches!(a, Some(StoredValue::Secret { .. })) || matches!(b, Some(StoredValue::Secret { .. }));
                        out.push(format!("{}config system_services.{}.{k} changed", if secret { "secret " } else { "" }, n.config_key()));
                    }
                }
                match (p.pinned, c.pinned) {
                    (a, Some(g)) if a != Some(g) => out.push(format!("package {n} pinned to generation {g}")),
                    (Some(_), None) => out.push(format!("package {n} unpinned")),
                    _ => {}
                }
            }
            (None, None) => {}
        }
    }
    let aliases: BTreeSet<&Alias> = prev.aliases.keys().chain(cur.aliases.keys()).collect();
    for a in aliases {
        match (prev.aliases.get(a), cur.aliases.get(a)) {
            (None, Some(c)) => out.push(format!("{} {a} installed", c.kind)),
            (Some(p), None) => out.push(format!("{} {a} removed", p.kind)),
            (Some(p), Some(c)) if p.service_id != c.service_id || p.script_hash != c.script_hash => {
                out.push(format!("{} {a} replaced", c.kind))
            }
            _ => {}
        }
    }
    out
}

/// A generation as `generations --json` shows it.
pub fn to_json(g: &Generation, prev: Option<&Generation>) -> Json {
    serde_json::json!({
        "number": g.number,
        "created_at_ms": g.created_at_ms,
        "outcome": g.outcome,
        "pruned": g.pruned,
        "changes": changes(prev.map(|p| &p.record), &g.record),
        "packages": g.record.packages.iter().map(|(n, p)| (n.to_string(), serde_json::json!({
            "version": p.version,
            "pinned": p.pinned,
            "source_recorded": p.source.is_some(),
        }))).collect::<serde_json::Map<_, _>>(),
        "aliases": g.record.aliases,
        "plan": g.record.plan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: &str, greeting: &str, secret: &str, service: &str) -> GenerationRecord {
        let name = PackageName::new("kv").unwrap();
        let config = BTreeMap::from([
            ("greeting".to_string(), StoredValue::Plain { value: Json::from(greeting) }),
            ("token".to_string(), StoredValue::Secret { secret_digest: secret_digest(&Json::from(secret)) }),
        ]);
        let package = PackageRecord { version: version.into(), source: Some(version.into()), config, blueprints: vec![], pinned: None };
        let alias = AliasRecord {
            package: name.clone(),
            kind: "service".into(),
            blueprint_id: None,
            service_id: Some(ServiceId::try_from(service.to_string()).unwrap()),
            script_hash: None,
        };
        GenerationRecord {
            packages: BTreeMap::from([(name, package)]),
            aliases: BTreeMap::from([(Alias::new("kv").unwrap(), alias)]),
            plan: vec![],
        }
    }

    /// What changed: versions, config keys (a secret only as "changed",
    /// never its value or digest), replaced aliases; nothing for equal records.
    #[test]
    fn old_generations_go_when_the_records_outgrow_the_byte_cap_but_never_pinned_or_kept_ones() {
        let store = Store::in_memory();
        let conn = store.lock();
        for n in 1..=10i64 {
            conn.execute(
                "INSERT INTO deploy_generations(number, created_at, outcome, pruned, record) VALUES (?1, 0, 'ok', 0, ?2)",
                params![n, "x".repeat(1000)],
            )
            .unwrap();
        }
        conn.execute("INSERT INTO deploy_pins(package, generation, restore_data, pinned_at) VALUES ('p', 2, 0, 0)", []).unwrap();
        let numbers = |c: &rusqlite::Connection| -> Vec<i64> {
            let mut st = c.prepare("SELECT number FROM deploy_generations ORDER BY number").unwrap();
            st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        // 4,500 bytes: the newest four fit, 6 and older are beyond; 2 is pinned.
        assert_eq!(prune_by_bytes(&conn, 10, 3, 4500).unwrap(), 5);
        assert_eq!(numbers(&conn), [2, 7, 8, 9, 10]);
        // A cap smaller than one record still keeps the newest `keep`.
        prune_by_bytes(&conn, 10, 3, 10).unwrap();
        assert_eq!(numbers(&conn), [2, 8, 9, 10]);
        // Under the cap nothing goes.
        assert_eq!(prune_by_bytes(&conn, 10, 1, 1 << 20).unwrap(), 0);
    }

    #[test]
    fn changes_name_versions_keys_and_aliases() {
        let a = rec("1.0.0", "hello", "s1", "0123456789abcdef0123456789abcdef");
        let b = rec("2.0.0", "hi", "s2", "fedcba9876543210fedcba9876543210");
        assert_eq!(
            changes(Some(&a), &b),
            [
                "package kv 1.0.0 → 2.0.0",
                "config system_services.kv.greeting changed",
                "secret config system_services.kv.token changed",
                "service kv replaced"
            ]
        );
        assert!(changes(Some(&a), &a).is_empty());
        assert_eq!(changes(None, &a), ["package kv 1.0.0 added", "service kv installed"]);
        // A secret's stored form is its digest, never the value.
        let text = serde_json::to_string(&a).unwrap();
        assert!(!text.contains("s1"), "{text}");
    }
}
