//! The staged tree a snapshot is written from: a directory laid out like a
//! state dir (`state.db` as one consistent file from SQLite's online backup,
//! `components/`, `cache/<engine key>/`, `services/<id>/`, `kept/<id>/`,
//! optionally `node.key` + `api.token`) plus `stage.json` ([`StageInfo`]).
//!
//! Staging dirs live inside the state dir (`.snapshot-stage-<random>`: same
//! file system, so immutable components and artifacts are hard links) and are
//! removed when the [`Staged`] is dropped, and as leftovers by the next
//! command that stages. Guest trees are copied with `tree::copy_tree` (never
//! following a symlink); nothing else of the state dir is read.

use super::SnapshotError;
use crate::ids::PeerId;
use crate::state::{StateDir, KEY_FILE, STORE_FILE, TOKEN_FILE};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Name of the [`StageInfo`] file at the root of a staged tree (not archived).
pub const STAGE_INFO: &str = "stage.json";
/// Prefix of staging dirs inside a state dir.
pub const STAGING_PREFIX: &str = ".snapshot-stage-";

/// What the archive's header says about a staged tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageInfo {
    pub host_peer_id: String,
    pub engine_key: String,
    pub schema_version: u64,
    /// Whether `node.key` and `api.token` were staged.
    pub identity: bool,
    /// What staging left out, each with why (reported with the archive's).
    #[serde(default)]
    pub skipped: Vec<String>,
}

/// A staged tree; removed (with `tree::remove_tree`) when dropped. Holds the
/// state-dir lock when it was staged offline.
#[derive(Debug)]
pub struct Staged {
    pub dir: PathBuf,
    pub info: StageInfo,
    _lock: Option<StateDir>,
}

impl Staged {
    /// A staged tree made by someone else (the running node); removed on drop.
    pub fn new(dir: PathBuf, info: StageInfo) -> Self {
        Staged { dir, info, _lock: None }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(e) = crate::tree::remove_tree(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the snapshot staging dir; the next snapshot removes it");
        }
    }
}

/// A fresh staging dir name inside `state_dir` (not created).
pub fn staging_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(format!("{STAGING_PREFIX}{}", super::random_suffix()))
}

/// Removes staging dirs left by a crashed snapshot. Only the holder of the
/// state-dir lock may call this (no other stager can be running).
pub fn remove_leftovers(state_dir: &Path) -> Result<usize, SnapshotError> {
    let mut n = 0;
    for e in fs::read_dir(state_dir).map_err(SnapshotError::io("list", state_dir))? {
        let e = e.map_err(SnapshotError::io("list", state_dir))?;
        if e.file_name().to_str().is_some_and(|n| n.starts_with(STAGING_PREFIX)) {
            crate::tree::remove_tree(&e.path())?;
            tracing::info!(dir = %e.path().display(), "removed a snapshot staging dir left by an interrupted snapshot");
            n += 1;
        }
    }
    Ok(n)
}

/// Stages a stopped node's state dir into `into` (created; must not exist):
/// takes the state-dir lock (held until the [`Staged`] is dropped, so no node
/// starts meanwhile), removes staging leftovers, then copies the parts.
pub fn stage_offline(state_dir: &Path, into: &Path, include_identity: bool) -> Result<Staged, SnapshotError> {
    match fs::metadata(state_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(crate::state::StateError::NotADirectory { path: state_dir.into() }.into()),
        Err(_) => return Err(crate::state::StateError::Missing { path: state_dir.into() }.into()),
    }
    let db = state_dir.join(STORE_FILE);
    if !db.exists() {
        return Err(SnapshotError::Refused(format!(
            "state directory {} has no store ({STORE_FILE}) yet: there is nothing to snapshot; run `sysdeploy run` first",
            state_dir.display()
        )));
    }
    let lock = StateDir::open_exclusive(state_dir)?;
    remove_leftovers(state_dir)?;
    let engine_key = crate::runtime::current_engine_key().map_err(|e| SnapshotError::Other(e.to_string()))?;
    fs::DirBuilder::new().mode(0o700).create(into).map_err(SnapshotError::io("create", into))?;
    // From here on the dir is removed whatever happens (`Staged`'s drop).
    let info = StageInfo {
        host_peer_id: lock.peer_id().to_string(),
        engine_key,
        schema_version: 0,
        identity: include_identity,
        skipped: Vec::new(),
    };
    let mut staged = Staged { dir: into.to_path_buf(), info, _lock: Some(lock) };
    staged.info.schema_version = backup_store(&db, &into.join(STORE_FILE))?;
    link_flat(&state_dir.join("components"), &into.join("components"))?;
    fs::create_dir(into.join("cache")).map_err(SnapshotError::io("create", into))?;
    let key = staged.info.engine_key.clone();
    link_flat(&state_dir.join("cache").join(&key), &into.join("cache").join(&key))?;
    for part in super::GUEST_PARTS {
        copy_guest_trees(state_dir, &state_dir.join(part), &into.join(part), &mut staged.info.skipped)?;
    }
    if include_identity {
        for name in [KEY_FILE, TOKEN_FILE] {
            copy_private(&state_dir.join(name), &into.join(name))?;
        }
    }
    crash_point!("snapshot::create::staged");
    write_info(into, &staged.info)?;
    Ok(staged)
}

/// Writes `stage.json` into a staged tree.
pub fn write_info(into: &Path, info: &StageInfo) -> Result<(), SnapshotError> {
    let p = into.join(STAGE_INFO);
    fs::write(&p, serde_json::to_vec(info).expect("serialises")).map_err(SnapshotError::io("write", &p))
}

/// Reads `stage.json` of a staged tree.
pub fn read_info(staged: &Path) -> Result<StageInfo, SnapshotError> {
    let p = staged.join(STAGE_INFO);
    let b = fs::read(&p).map_err(SnapshotError::io("read", &p))?;
    serde_json::from_slice(&b).map_err(|e| SnapshotError::Other(format!("{}: not a staged tree's info: {e}", p.display())))
}

/// Copies the store at `src` into the new single file `dst` with SQLite's
/// online backup API in one step: one read transaction, so the store as of
/// one instant even while the running node writes (a step-wise backup
/// restarts whenever another connection writes); no `-wal` left. Returns its
/// schema version. Offline and online staging both use it.
pub fn backup_store(src: &Path, dst: &Path) -> Result<u64, SnapshotError> {
    use rusqlite::{backup::StepResult, Connection, OpenFlags};
    use std::time::{Duration, Instant};
    let store_err = |e: rusqlite::Error| SnapshotError::Store(crate::store::StoreError::Sqlite { path: src.to_path_buf(), source: e });
    let from = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(store_err)?;
    from.busy_timeout(Duration::from_secs(30)).map_err(store_err)?;
    let version: i64 = from.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(store_err)?;
    let mut to = Connection::open(dst).map_err(store_err)?;
    {
        let backup = rusqlite::backup::Backup::new(&from, &mut to).map_err(store_err)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match backup.step(-1).map_err(store_err)? {
                StepResult::Done => break,
                // Busy or locked by a writer's checkpoint: try again shortly.
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => return Err(store_err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None))),
            }
        }
    }
    // The copy keeps the source's WAL mode in its header; a single file is
    // what is archived (the restored node switches back to WAL when it opens it).
    to.pragma_update(None, "journal_mode", "DELETE").map_err(store_err)?;
    to.close().map_err(|(_, e)| store_err(e))?;
    Ok(version.max(0) as u64)
}

/// Hard-links (or copies, where links are refused) the regular files of the
/// host-owned flat directory `src` (components, artifacts) into `dst`.
/// Temp files (`.tmp-*`) are left out; a missing `src` stages an empty dir.
pub fn link_flat(src: &Path, dst: &Path) -> Result<u64, SnapshotError> {
    fs::DirBuilder::new().mode(0o700).create(dst).map_err(SnapshotError::io("create", dst))?;
    let entries = match fs::read_dir(src) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(SnapshotError::io("list", src)(e)),
    };
    let mut n = 0;
    for e in entries {
        let e = e.map_err(SnapshotError::io("list", src))?;
        let name = e.file_name();
        if name.to_str().is_none_or(|s| s.starts_with('.')) {
            continue;
        }
        let from = e.path();
        // Host-owned and immutable; still, never follow or archive anything but files.
        if !fs::symlink_metadata(&from).map_err(SnapshotError::io("inspect", &from))?.is_file() {
            tracing::warn!(path = %from.display(), "not a regular file; left out of the snapshot");
            continue;
        }
        let to = dst.join(&name);
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).map_err(SnapshotError::io("copy", &from))?;
        }
        n += 1;
    }
    Ok(n)
}

/// Copies every `<id>/` guest tree of `src` (`services/`, `kept/`) into
/// `dst` with the safe walker; FIFOs, sockets and devices are added to
/// `skipped` (named relative to `root`). A missing `src` stages nothing.
pub fn copy_guest_trees(root: &Path, src: &Path, dst: &Path, skipped: &mut Vec<String>) -> Result<u64, SnapshotError> {
    let entries = match fs::read_dir(src) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(SnapshotError::io("list", src)(e)),
    };
    fs::DirBuilder::new().mode(0o700).create(dst).map_err(SnapshotError::io("create", dst))?;
    let mut n = 0;
    for e in entries {
        let e = e.map_err(SnapshotError::io("list", src))?;
        let from = e.path();
        // `<id>` itself is the host's (it made it); what is inside is the guest's.
        if !fs::symlink_metadata(&from).map_err(SnapshotError::io("inspect", &from))?.is_dir() || e.file_name().to_str().is_none() {
            tracing::warn!(path = %from.display(), "not a service data directory; left out of the snapshot");
            continue;
        }
        for (path, kind) in crate::tree::copy_tree_reporting(&from, &dst.join(e.file_name()))? {
            skipped.push(format!("{}/{}: a {kind} (never opened)", from.strip_prefix(root).unwrap_or(&from).display(), path.display()));
        }
        n += 1;
    }
    Ok(n)
}

/// Copies a 0600 secret file (identity) into the staged tree.
fn copy_private(src: &Path, dst: &Path) -> Result<(), SnapshotError> {
    let bytes = fs::read(src).map_err(SnapshotError::io("read", src))?;
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dst).map_err(SnapshotError::io("create", dst))?;
    std::io::Write::write_all(&mut f, &bytes).map_err(SnapshotError::io("write", dst))
}

/// The peer id a staged tree's header names.
pub fn host_of(info: &StageInfo) -> Option<PeerId> {
    PeerId::parse(&info.host_peer_id)
}
