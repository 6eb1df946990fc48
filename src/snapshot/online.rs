//! A consistent staged tree of a *running* node (issue 17): what
//! `POST /v1/snapshots` / `GET /v1/snapshot` archive, while services keep
//! taking calls; and the stream that sends it.
//!
//! The staged tree is the one `snapshot::stage` defines (laid out like a state
//! dir, with `stage.json`, in `<state_dir>/.snapshot-stage-<random>`: same
//! file system, so the immutable components and artifacts are hard links); it
//! is removed when the [`StagedTree`] is dropped, and as a leftover by the
//! next snapshot.
//!
//! Consistency, in the order [`stage`] works:
//! 1. the one-deployment-at-a-time lock is held throughout, so no deployment,
//!    reload or GC changes which services, aliases, blueprints, components,
//!    artifacts or kept dirs exist (a reload asked meanwhile waits);
//! 2. `state.db` is copied with SQLite's online backup API from a separate
//!    read connection in *one* step: one read transaction, so the copy is the
//!    store as of one instant (spells' KV included: a spell run commits its
//!    KV in one transaction), writers are never blocked, and a write meanwhile
//!    cannot restart the copy (a step-wise backup restarts after each write
//!    of another connection, and the node's store is written all the time);
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

use super::stage::{self, StageInfo, Staged};
use super::SnapshotError;
use crate::ids::{PeerId, ServiceId};
use crate::runtime::Runtime;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// Why a running node could not be staged.
#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    #[error("snapshot: {0}")]
    Stage(#[from] SnapshotError),
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
    /// The node's identity: the owner of what it deployed (the archive's header).
    pub peer_id: &'a PeerId,
    pub runtime: &'a Runtime,
    /// The node's one-deployment-at-a-time lock (`Node::deploying`).
    pub deploying: &'a tokio::sync::Mutex<()>,
}

/// A staged tree of the running node; removed when dropped.
#[derive(Debug)]
pub struct StagedTree {
    staged: Staged,
    /// How long each service's calls were held while its data was copied.
    pub holds: Vec<(ServiceId, Duration)>,
}

impl StagedTree {
    /// The staged tree's root (laid out like a state dir, with `stage.json`).
    pub fn path(&self) -> &Path {
        &self.staged.dir
    }
}

/// Stages the running node into a fresh staging dir of its state dir
/// (leftovers of a crashed snapshot are removed first: one snapshot runs at a
/// time, see [`Slot`]). See the module documentation for what is consistent
/// with what.
pub async fn stage(h: &Handles<'_>, include_identity: bool) -> Result<StagedTree, OnlineError> {
    let started = Instant::now();
    let _one = h.deploying.lock().await;
    tracing::info!("snapshot: staging the running node (deployments wait until it is staged)");
    // Tests hold a snapshot here to see what happens meanwhile.
    fail::fail_point!("snapshot::online::staging");
    let state_dir = h.state_dir.to_path_buf();
    let into = blocking(move || {
        stage::remove_leftovers(&state_dir)?;
        let into = stage::staging_dir(&state_dir);
        std::fs::DirBuilder::new().mode(0o700).create(&into).map_err(SnapshotError::io("create", &into))?;
        Ok(into)
    })
    .await?;
    let engine_dir = h.runtime.artifact_dir();
    let engine_key = engine_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let info =
        StageInfo { host_peer_id: h.peer_id.to_string(), engine_key, schema_version: 0, identity: include_identity, skipped: Vec::new() };
    // From here on the dir is removed whatever happens.
    let mut staged = StagedTree { staged: Staged::new(into.clone(), info), holds: Vec::new() };

    let (src, dst) = (h.state_dir.join(crate::state::STORE_FILE), into.join(crate::state::STORE_FILE));
    staged.staged.info.schema_version = blocking(move || Ok(stage::backup_store(&src, &dst)?)).await?;

    let services = into.join("services");
    std::fs::DirBuilder::new().mode(0o700).create(&services).map_err(SnapshotError::io("create", &services))?;
    for s in h.runtime.list_services() {
        let hold = h.runtime.hold_calls(&s.id).await.map_err(|e| OnlineError::Runtime(e.to_string()))?;
        tracing::debug!(service = %s.id, "snapshot: calls held while the service's data is copied");
        // Tests slow the copy down here to see calls wait.
        fail::fail_point!("snapshot::online::held");
        let (from, to, id) = (h.runtime.data_dir(&s.id), services.join(s.id.as_str()), s.id.clone());
        let copied =
            blocking(move || crate::tree::copy_tree_reporting(&from, &to).map_err(|source| OnlineError::Data { service: id, source }))
                .await;
        if let Ok(left_out) = &copied {
            for (path, kind) in left_out {
                staged.staged.info.skipped.push(format!("services/{}/{}: a {kind} (never opened)", s.id, path.display()));
            }
            // Before the release: a call held meanwhile is answered after this line.
            tracing::debug!(service = %s.id, held_ms = hold.held_for().as_millis() as u64, "snapshot: service data copied; releasing its calls");
        }
        let held = hold.release();
        copied?;
        staged.holds.push((s.id, held));
    }

    let (state_dir, root) = (h.state_dir.to_path_buf(), into.clone());
    let mut info = staged.staged.info.clone();
    blocking(move || {
        stage::link_flat(&state_dir.join("components"), &root.join("components"))?;
        std::fs::DirBuilder::new().mode(0o700).create(root.join("cache")).map_err(SnapshotError::io("create", &root))?;
        stage::link_flat(&engine_dir, &root.join("cache").join(&info.engine_key))?;
        stage::copy_guest_trees(&state_dir, &state_dir.join("kept"), &root.join("kept"), &mut info.skipped)?;
        if include_identity {
            for name in [crate::state::KEY_FILE, crate::state::TOKEN_FILE] {
                let (from, to) = (state_dir.join(name), root.join(name));
                let bytes = std::fs::read(&from).map_err(SnapshotError::io("read", &from))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&to)
                    .map_err(SnapshotError::io("create", &to))?;
                f.write_all(&bytes).map_err(SnapshotError::io("write", &to))?;
            }
        }
        stage::write_info(&root, &info)?;
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

/// The bytes of an archive as the API streams them.
pub type ByteStream = futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>;

/// `Content-Type` of a streamed snapshot archive.
pub const CONTENT_TYPE: &str = "application/octet-stream";

/// One snapshot of a running node at a time: a second one is refused (`busy`)
/// while the first stages or streams.
#[derive(Clone)]
pub struct Slot(std::sync::Arc<tokio::sync::Semaphore>);

impl Default for Slot {
    fn default() -> Self {
        Slot(std::sync::Arc::new(tokio::sync::Semaphore::new(1)))
    }
}

impl Slot {
    /// The slot, or `None` while another snapshot runs; held until dropped.
    pub fn try_take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// Size of the chunks the archive is sent in.
const CHUNK: usize = 256 * 1024;

/// Streams the archive of `staged` (`snapshot::archive::write` on a blocking
/// thread, into a bounded channel the response body reads): the staged tree
/// and `slot` are released when the archive is written, when writing fails
/// (the stream then ends with an error, so the client sees a broken
/// transfer, never a short archive that looks whole), or when the client goes
/// away. Records the snapshot's size, duration and outcome in `metrics`.
pub fn stream(staged: StagedTree, slot: tokio::sync::OwnedSemaphorePermit, metrics: crate::api::Metrics, started: Instant) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut out = ChannelWriter { tx, buf: Vec::with_capacity(CHUNK), sent: 0, gone: false };
        let mut progress = super::progress::none();
        let written = super::archive::write(staged.path(), &mut out, &mut progress)
            .map_err(|e| e.to_string())
            .and_then(|_| out.flush().map_err(|e| e.to_string()));
        let outcome = match written {
            Ok(()) => {
                tracing::info!(bytes = out.sent, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot: archive sent");
                "ok"
            }
            Err(_) if out.gone => {
                tracing::warn!(bytes = out.sent, "snapshot: the client went away before the archive was sent; staged tree removed");
                "aborted"
            }
            Err(e) => {
                tracing::error!(bytes = out.sent, "snapshot: writing the archive failed: {e}");
                let _ = out.tx.blocking_send(Err(std::io::Error::other(e)));
                "failed"
            }
        };
        // The staged tree goes and the metrics are recorded before the body
        // ends (the channel closes with `out`), so a client that has read the
        // whole archive sees both done.
        drop(staged);
        metrics.snapshot(outcome, out.sent, started.elapsed());
        drop(out);
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// `std::io::Write` into the response body's channel, in chunks.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    buf: Vec<u8>,
    /// Bytes handed to the response so far.
    sent: u64,
    /// The response body was dropped: the client went away.
    gone: bool,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        let n = chunk.len() as u64;
        if self.tx.blocking_send(Ok(chunk)).is_err() {
            self.gone = true;
            return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"));
        }
        if self.sent == 0 {
            tracing::info!("snapshot: streaming the archive");
            // Tests stop a stream here, after its first chunk.
            fail::fail_point!("snapshot::online::streaming");
        }
        self.sent += n;
        Ok(())
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        let n = data.len().min(CHUNK.saturating_sub(self.buf.len()).max(1));
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// At boot, with the state-dir lock held: removes staged trees a snapshot
/// left when the node was killed while taking it (they hold a copy of every
/// service's data). A failure is logged; the next snapshot tries again.
pub fn remove_leftovers(state_dir: &Path) {
    if let Err(e) = stage::remove_leftovers(state_dir) {
        tracing::warn!("removing what an interrupted snapshot left in {}: {e}; the next snapshot tries again", state_dir.display());
    }
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
        c.execute_batch("PRAGMA user_version = 7; CREATE TABLE t (k TEXT); INSERT INTO t VALUES ('a'), ('b');").unwrap();
        let dst = dir.path().join("copy.db");
        assert_eq!(stage::backup_store(&src, &dst).unwrap(), 7);
        // Written while the source stays open with its WAL: not in the copy's way.
        c.execute("INSERT INTO t VALUES ('c')", []).unwrap();
        assert!(!dir.path().join("copy.db-wal").exists());
        let copy = rusqlite::Connection::open(&dst).unwrap();
        let n: i64 = copy.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
    }
}
