//! Schema migrations, applied in order; `PRAGMA user_version` is the count
//! applied. Never edit a migration that has shipped: append a new one.
//! Each layer owns its tables and hands its migrations to `Store::open_with`
//! (in the order of `crate::schema::SCHEMA`).

pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

/// The store's own table. Every layer above hands its migrations in
/// (`crate::schema::SCHEMA` lists them in order); the store knows none of
/// their SQL.
pub const STORE: &[Migration] =
    &[Migration { name: "001-meta", sql: "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;" }];
