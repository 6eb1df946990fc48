//! A consistent staged tree of a *running* node (issue 17): what
//! `POST /v1/snapshots` / `GET /v1/snapshot` archive, while services keep
//! taking calls.
//!
//! The staged tree is laid out like a state dir (see `snapshot::stage`):
//! `state.db`, `components/`, `cache/<engine key>/`, `services/<id>/`,
//! `kept/<id>/`, and `node.key` + `api.token` only when asked for. It is
//! built under `<state_dir>/snapshot.staging/` (same file system, so the
//! immutable components and artifacts are hard links, not copies) and removed
//! when the [`StagedTree`] is dropped.
//!
//! Consistency, in the order [`stage`] works:
//! 1. the one-deployment-at-a-time lock is held throughout, so no deployment,
//!    reload or GC changes which services, aliases, blueprints, components,
//!    artifacts or kept dirs exist (a reload asked meanwhile waits);
//! 2. `state.db` is copied with SQLite's online backup API from a separate
//!    read connection, in one step: one read transaction, so the copy is the
//!    store as of one instant (spells' KV included: a spell run commits its
//!    KV in one transaction), and writers are never blocked;
//! 3. each service's data dir is copied while that service's calls are held
//!    (`Runtime::hold_calls`): the hold waits for the calls queued or running,
//!    so every call acknowledged before the hold started is on disk and none
//!    is half-applied in the copy; later calls wait for the copy of that one
//!    service only, one service at a time;
//! 4. components and artifacts are hard-linked (written once, replaced only by
//!    rename), kept data dirs copied (only deployments touch them).
//!
//! So each service is consistent as of its own hold, and the store as of its
//! backup; all of them are after the snapshot was asked for, so a write
//! acknowledged before the request was sent is in the snapshot.

use crate::ids::ServiceId;
use crate::runtime::Runtime;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where staged trees of a running node are built, inside its state dir.
pub const STAGING_DIR: &str = "snapshot.staging";

/// Why a running node could not be staged.
#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    #[error("snapshot: copying the state store {} with the sqlite backup api: {source}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("snapshot: {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot: copying the data of service {service}: {source}")]
    Data {
        service: ServiceId,
        #[source]
        source: crate::tree::TreeError,
    },
    #[error("snapshot: {0}")]
    Runtime(String),
}

/// What [`stage`] needs of the running node.
pub struct Handles<'a> {
    /// The node's state dir (`node.key`, `api.token`, `components/`, ...).
    pub state_dir: &'a Path,
    pub runtime: &'a Runtime,
    /// The node's one-deployment-at-a-time lock (`Node::deploying`).
    pub deploying: &'a tokio::sync::Mutex<()>,
}

/// A staged tree, removed (through `tree::remove_tree`) when dropped.
#[derive(Debug)]
pub struct StagedTree {
    path: PathBuf,
    /// How long each service's calls were held while its data was copied.
    pub holds: Vec<(ServiceId, Duration)>,
}

impl StagedTree {
    /// The staged tree's root (laid out like a state dir).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagedTree {
    fn drop(&mut self) {
        if let Err(e) = crate::tree::remove_tree(&self.path) {
            tracing::warn!("removing the staged snapshot {}: {e}; the next snapshot removes it", self.path.display());
        }
    }
}

/// Stages the running node into a fresh directory under
/// `<state_dir>/snapshot.staging/` (whatever a crashed earlier snapshot left
/// there is removed first: one snapshot runs at a time). See the module
/// documentation for what is consistent with what.
pub async fn stage(h: &Handles<'_>, include_identity: bool) -> Result<StagedTree, OnlineError> {
    let started = Instant::now();
    let _one = h.deploying.lock().await;
    let parent = h.state_dir.join(STAGING_DIR);
    let p = parent.clone();
    blocking(move || crate::tree::remove_tree(&p).map(|_| ()).map_err(|e| OnlineError::Runtime(e.to_string()))).await?;
    std::fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
    let mut staged = StagedTree { path: parent.join("tree"), holds: Vec::new() };
    std::fs::create_dir(&staged.path).map_err(io("creating", &staged.path))?;

    let (src, dst) = (h.state_dir.join(crate::state::STORE_FILE), staged.path.join(crate::state::STORE_FILE));
    blocking(move || backup_store(&src, &dst)).await?;

    let services = staged.path.join("services");
    std::fs::create_dir(&services).map_err(io("creating", &services))?;
    for s in h.runtime.list_services() {
        let hold = h.runtime.hold_calls(&s.id).await.map_err(|e| OnlineError::Runtime(e.to_string()))?;
        let (from, to, id) = (h.runtime.data_dir(&s.id), services.join(s.id.as_str()), s.id.clone());
        let copied = blocking(move || crate::tree::copy_tree(&from, &to).map_err(|source| OnlineError::Data { service: id, source })).await;
        let held = hold.release();
        copied?;
        tracing::debug!(service = %s.id, held_ms = held.as_millis() as u64, "snapshot: service data copied while its calls were held");
        staged.holds.push((s.id, held));
    }

    let state_dir = h.state_dir.to_path_buf();
    let (root, engine_dir) = (staged.path.clone(), h.runtime.artifact_dir());
    blocking(move || {
        link_files(&state_dir.join("components"), &root.join("components"))?;
        if let Ok(rel) = engine_dir.strip_prefix(&state_dir) {
            link_files(&engine_dir, &root.join(rel))?;
        }
        let kept = state_dir.join("kept");
        if kept.is_dir() {
            crate::tree::copy_tree(&kept, &root.join("kept")).map_err(|e| OnlineError::Runtime(format!("copying kept data: {e}")))?;
        }
        if include_identity {
            for name in [crate::state::KEY_FILE, crate::state::TOKEN_FILE] {
                let (from, to) = (state_dir.join(name), root.join(name));
                std::fs::copy(&from, &to).map_err(io("copying", &from))?;
            }
        }
        Ok(())
    })
    .await?;
    tracing::info!(
        services = staged.holds.len(),
        longest_hold_ms = staged.holds.iter().map(|(_, d)| d.as_millis() as u64).max().unwrap_or(0),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot: running node staged"
    );
    Ok(staged)
}

/// Copies the store at `src` to a new single file `dst` in one backup step
/// (one read transaction: the store as of one instant; no `-wal` left).
fn backup_store(src: &Path, dst: &Path) -> Result<(), OnlineError> {
    let err = |source| OnlineError::Store { path: src.to_path_buf(), source };
    let from = rusqlite::Connection::open_with_flags(src, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
    from.busy_timeout(Duration::from_secs(30)).map_err(err)?;
    let mut to = rusqlite::Connection::open(dst).map_err(err)?;
    {
        let backup = rusqlite::backup::Backup::new(&from, &mut to).map_err(err)?;
        // -1: every page in one step, under one read transaction.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match backup.step(-1).map_err(err)? {
                rusqlite::backup::StepResult::Done => break,
                // Busy or locked by a writer's checkpoint: try again shortly.
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => return Err(err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None))),
            }
        }
    }
    // The copy keeps the source's WAL mode in its header; make it a plain
    // single file (the restored node switches back to WAL when it opens it).
    to.pragma_update(None, "journal_mode", "DELETE").map_err(err)?;
    to.close().map_err(|(_, e)| err(e))?;
    Ok(())
}

/// Hard-links every regular file of `from` (not recursive; temp files of
/// unfinished writes skipped) into `to`; copies when linking is refused.
fn link_files(from: &Path, to: &Path) -> Result<(), OnlineError> {
    std::fs::create_dir_all(to).map_err(io("creating", to))?;
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("listing", from)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("listing", from))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(".tmp-") || !entry.file_type().map_err(io("listing", from))?.is_file() {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(io("copying", &src))?;
        }
    }
    Ok(())
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OnlineError {
    let path = path.to_path_buf();
    move |source| OnlineError::Io { what, path, source }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, OnlineError> + Send + 'static) -> Result<T, OnlineError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| OnlineError::Runtime(format!("staging task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_backup_is_one_file_with_every_committed_row() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("state.db");
        let c = rusqlite::Connection::open(&src).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("CREATE TABLE t (k TEXT); INSERT INTO t VALUES ('a'), ('b');").unwrap();
        let dst = dir.path().join("copy.db");
        backup_store(&src, &dst).unwrap();
        // Written while the source stays open with its WAL: not in the copy's way.
        c.execute("INSERT INTO t VALUES ('c')", []).unwrap();
        assert!(!dir.path().join("copy.db-wal").exists());
        let copy = rusqlite::Connection::open(&dst).unwrap();
        let n: i64 = copy.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn links_skip_temp_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("components"), dir.path().join("staged/components"));
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::write(from.join("x.wasm"), b"x").unwrap();
        std::fs::write(from.join(".tmp-1-x.wasm"), b"half").unwrap();
        link_files(&from, &to).unwrap();
        let names: Vec<String> = std::fs::read_dir(&to).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["x.wasm"]);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(from.join("x.wasm")).unwrap().ino(), std::fs::metadata(to.join("x.wasm")).unwrap().ino());
        link_files(&dir.path().join("absent"), &dir.path().join("staged/none")).unwrap();
    }
}
