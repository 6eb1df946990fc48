//! The SQLite state store (`<state_dir>/state.db`): one connection in WAL
//! mode, versioned migrations, and the refusal to open a schema newer than
//! this binary knows.
//!
//! Each layer owns its tables and hands its migrations in
//! ([`Store::open_with`]; `crate::schema` lists the node's, in order, and
//! adds `Store::open`); higher layers wrap [`Store`] with their own typed
//! accessors (`runtime::records`, `deploy::journal`, `spell::store`). This
//! module knows none of their SQL.

pub mod migrations;

use migrations::Migration;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Why the store cannot be used. All of these map to exit code 3.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path} has schema version {found}, newer than the {known} this binary knows; upgrade sysdeploy or point --state-dir elsewhere")]
    NewerSchema { path: PathBuf, found: i64, known: i64 },
    #[error("state store {path} is corrupt or not a sysdeploy database ({source}); it was left untouched — restore it from a backup or move it away")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state store {path} cannot be used ({source}{os}): the disk is full, read-only or failing, or the file is not accessible; it was left untouched — free space or fix the mount and permissions, then start again")]
    Unavailable {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
        /// The OS's reason for SQLite's last failed system call ("; the OS
        /// says: No space left on device (os error 28)"), or empty: SQLite's
        /// own text for it is often only "disk I/O error".
        os: String,
    },
    #[error("state store {path} does not exist yet; run `sysdeploy run` once to create it")]
    Missing { path: PathBuf },
}

/// A handle on the store; cheap to clone, safe to share between threads.
/// Operations are short, so a mutex around one connection is enough.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the store to `schema` (each
    /// layer's migrations, in order). Only the process that holds the
    /// state-dir lock may call this.
    pub fn open_with(path: &Path, schema: &[&[Migration]]) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|e| sql(path, e))?;
        let store = Self::setup(conn, path)?;
        store.migrate(schema)?;
        Ok(store)
    }

    /// Opens an existing store without writing to it (for `plan`, `status`,
    /// `config` while a node may be running). Refuses a schema newer than
    /// the `known` migrations.
    pub fn open_read_only_with(path: &Path, known: usize) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing { path: path.into() });
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| sql(path, e))?;
        let store = Self::setup(conn, path)?;
        let found = store.schema_version()?;
        let known = known as i64;
        if found > known {
            return Err(StoreError::NewerSchema { path: path.into(), found, known });
        }
        Ok(store)
    }

    /// An in-memory store with `schema`, for unit tests.
    pub fn in_memory_with(schema: &[&[Migration]]) -> Self {
        let conn = Connection::open_in_memory().expect("in-memory sqlite");
        let s = Self::setup(conn, Path::new(":memory:")).expect("setup");
        s.migrate(schema).expect("migrate");
        s
    }

    fn setup(conn: Connection, path: &Path) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| sql(path, e))?;
        // A garbage file fails here, on the first read of the header.
        let check: Result<String, _> = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0));
        if let Err(e) = check {
            return Err(corrupt(path, e, &conn));
        }
        if !conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
            conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| corrupt(path, e, &conn))?;
            conn.pragma_update(None, "synchronous", "FULL").map_err(|e| sql(path, e))?;
        }
        conn.pragma_update(None, "foreign_keys", "ON").map_err(|e| sql(path, e))?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), path: path.into() })
    }

    fn schema_version(&self) -> Result<i64, StoreError> {
        let conn = self.lock();
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| corrupt(&self.path, e, &conn))
    }

    fn migrate(&self, schema: &[&[Migration]]) -> Result<(), StoreError> {
        let all: Vec<&Migration> = schema.iter().flat_map(|layer| layer.iter()).collect();
        let found = self.schema_version()?;
        let known = all.len() as i64;
        if found > known {
            return Err(StoreError::NewerSchema { path: self.path.clone(), found, known });
        }
        let mut conn = self.lock();
        for (i, m) in all.iter().enumerate().skip(found as usize) {
            let tx = conn.transaction().map_err(|e| sql(&self.path, e))?;
            tx.execute_batch(m.sql).map_err(|e| corrupt(&self.path, e, &tx))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(|e| sql(&self.path, e))?;
            tx.commit().map_err(|e| sql(&self.path, e))?;
        }
        // Integrity check on every open is cheap at our sizes and catches a
        // damaged file before we act on it.
        let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|e| corrupt(&self.path, e, &conn))?;
        if ok != "ok" {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                source: rusqlite::Error::InvalidParameterName(format!("quick_check: {ok}")),
            });
        }
        Ok(())
    }

    /// The connection. Hold the guard only for the duration of one short
    /// operation or transaction; never across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn sql(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite { path: path.into(), source }
}
/// A failure while opening or checking the store: `Corrupt` only when SQLite
/// says the file is damaged or not a database; a full, read-only or failing
/// disk must not send the operator restoring backups of a healthy file.
fn corrupt(path: &Path, source: rusqlite::Error, conn: &Connection) -> StoreError {
    use rusqlite::ErrorCode::*;
    match source.sqlite_error_code() {
        Some(DatabaseCorrupt | NotADatabase) | None => StoreError::Corrupt { path: path.into(), source },
        Some(_) => {
            // SAFETY: `conn` is open for the duration of the call; the
            // function only reads the errno SQLite saved on the connection.
            let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) };
            let os = if errno > 0 { format!("; the OS says: {}", std::io::Error::from_raw_os_error(errno)) } else { String::new() };
            StoreError::Unavailable { path: path.into(), source, os }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_and_refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        drop(Store::open(&p).unwrap());
        let v: i64 = Connection::open(&p).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, crate::schema::known() as i64);
        Connection::open(&p).unwrap().pragma_update(None, "user_version", 999).unwrap();
        assert!(matches!(Store::open(&p), Err(StoreError::NewerSchema { found: 999, .. })));
        assert!(matches!(Store::open_read_only(&p), Err(StoreError::NewerSchema { .. })));
    }

    #[test]
    fn garbage_file_is_corrupt_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        std::fs::write(&p, b"this is not a database, just some bytes that are long enough to have a header").unwrap();
        let before = std::fs::read(&p).unwrap();
        assert!(matches!(Store::open(&p), Err(StoreError::Corrupt { .. })));
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }
}
