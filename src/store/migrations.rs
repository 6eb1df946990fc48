//! Schema migrations, applied in order; `PRAGMA user_version` is the count
//! applied. Never edit a migration that has shipped: append a new one.
//! Each layer appends its own tables (runtime, deploy, spell).

pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration { name: "001-meta", sql: "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;" },
    Migration { name: "002-runtime", sql: crate::runtime::records::MIGRATION_SQL },
    Migration { name: "003-deploy", sql: crate::deploy::journal::MIGRATION_SQL },
    // spell layer: spells, their KV, last-applied config KV, error log, run history
    Migration {
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
