//! The node's schema: every layer's migrations in the order they were first
//! shipped (`PRAGMA user_version` counts them), and the `Store` constructors
//! that use it. The store itself knows no layer's SQL; this composition root
//! is the only place that names them all.

use crate::store::migrations::Migration;
use crate::store::{Store, StoreError};
use std::path::Path;

/// Store, runtime, deployer, spells: never reorder, only append.
pub const SCHEMA: &[&[Migration]] = &[
    crate::store::migrations::STORE,
    crate::runtime::records::MIGRATIONS,
    crate::deploy::journal::MIGRATIONS,
    crate::spell::MIGRATIONS,
    crate::deploy::kept::MIGRATIONS,
    crate::deploy::generations::MIGRATIONS,
];

/// How many migrations this binary knows.
pub fn known() -> usize {
    SCHEMA.iter().map(|l| l.len()).sum()
}

impl Store {
    /// [`Store::open_with`] the node's schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SCHEMA)
    }

    /// [`Store::open_read_only_with`] the node's schema.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        Self::open_read_only_with(path, known())
    }

    /// An in-memory store with the node's schema, for unit tests.
    pub fn in_memory() -> Self {
        Self::in_memory_with(SCHEMA)
    }
}

#[cfg(test)]
mod tests {
    /// The order of migrations is the order they shipped in.
    #[test]
    fn migration_names_are_in_shipping_order() {
        let names: Vec<&str> = super::SCHEMA.iter().flat_map(|l| l.iter().map(|m| m.name)).collect();
        assert_eq!(names, ["001-meta", "002-runtime", "003-deploy", "spell-001-spells", "deploy-kept-001", "gen-001-generations"]);
    }
}
