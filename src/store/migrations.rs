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
];
