//! Snapshots of a node's state directory (issue 17): one archive holding the
//! store, the component store, the artifact cache of one engine and every
//! service's data, with a manifest of blake3 hashes; written from a *staged
//! tree* (`stage`), streamed by `archive`, verified and put in place whole by
//! `restore`. `progress` reports sizes as they go.
//!
//! The archive is a tar stream (GNU headers) followed by a 40-byte footer:
//!
//! ```text
//! sysdeploy-snapshot.json   header: format, versions, host peer id, engine key, totals
//! state.db, components/…, cache/<key>/…, services/<id>/…, kept/<id>/…, [node.key, api.token]
//! sysdeploy-manifest.json   the header again + every entry (path, kind, mode, size, blake3 | target)
//! <tar end-of-archive blocks>
//! SDSNAP01 + blake3 of every byte before the footer
//! ```
//!
//! The per-entry hashes prove the manifest lists exactly what was streamed;
//! the footer covers the bytes no entry owns (tar padding, end blocks), so a
//! flipped byte anywhere is refused.

pub mod archive;
pub mod bootstrap;
pub mod online;
pub mod progress;
pub mod restore;
pub mod stage;

use crate::exit::Exit;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// Version of the archive layout; a restore refuses any other.
pub const FORMAT_VERSION: u32 = 1;
/// First tar entry: the [`Header`].
pub const HEADER_NAME: &str = "sysdeploy-snapshot.json";
/// Last tar entry: the [`Manifest`].
pub const MANIFEST_NAME: &str = "sysdeploy-manifest.json";
/// Footer: this magic, then the 32-byte blake3 of everything before it.
pub const FOOTER_MAGIC: &[u8; 8] = b"SDSNAP01";
pub const FOOTER_LEN: usize = 40;

/// Whether a top-level name of a state dir is a file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    File,
    Dir,
}

/// The top-level names of a state dir a snapshot carries, in archive order;
/// nothing else is archived or restored (not `lock`, `api.addr`, temp files).
pub const PARTS: &[(&str, PartKind)] = &[
    (crate::state::STORE_FILE, PartKind::File),
    ("components", PartKind::Dir),
    ("cache", PartKind::Dir),
    ("services", PartKind::Dir),
    ("kept", PartKind::Dir),
    (crate::state::KEY_FILE, PartKind::File),
    (crate::state::TOKEN_FILE, PartKind::File),
];

/// Top-level parts that are guest trees (`<part>/<id>/…`): the only places a
/// symlink may be.
pub const GUEST_PARTS: &[&str] = &["services", "kept"];

/// What a snapshot is, written first so a restore can refuse early.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: u32,
    pub sysdeploy_version: String,
    /// `PRAGMA user_version` of the archived store (`schema::known()` of its writer).
    pub schema_version: u64,
    /// The peer id of the node the snapshot was taken on: the owner of its services.
    pub host_peer_id: String,
    /// Whether `node.key` and `api.token` are in the archive.
    pub identity: bool,
    /// The `cache/<key>` naming of the engine whose artifacts are archived.
    pub engine_key: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Sum of the archived files' sizes, for progress.
    pub total_bytes: u64,
    /// Number of entries the manifest lists.
    pub total_entries: u64,
}

/// The kind of an archived entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One archived entry, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    /// Files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Symlinks only: the target as stored, never followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The last entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub header: Header,
    pub entries: Vec<Entry>,
}

/// Why a snapshot could not be made or restored. Nothing was put in place.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The archive is not a valid snapshot (damaged, truncated, hostile,
    /// from an unknown format). Exit 2.
    #[error("snapshot {source_name}: {what}; nothing was restored")]
    BadArchive { source_name: String, what: String },
    /// The request cannot be done as asked (non-empty target, missing
    /// `--adopt`, ...). Exit 2.
    #[error("{0}")]
    Refused(String),
    /// The state directory cannot be used (locked, damaged identity). Exit 3.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A node runs on the state directory (an offline snapshot needs it stopped). Exit 3.
    #[error("{0}")]
    NodeRunning(String),
    /// The store cannot be used. Exit 3.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Tree(#[from] crate::tree::TreeError),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl SnapshotError {
    /// The process exit code of this failure.
    pub fn exit(&self) -> Exit {
        match self {
            SnapshotError::BadArchive { .. } | SnapshotError::Refused(_) => Exit::Invalid,
            SnapshotError::State(_) | SnapshotError::Store(_) | SnapshotError::NodeRunning(_) => Exit::StoreUnusable,
            SnapshotError::Tree(_) | SnapshotError::Io { .. } | SnapshotError::Other(_) => Exit::DeployFailed,
        }
    }

    pub(crate) fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
        move |source| SnapshotError::Io { action, path: path.to_path_buf(), source }
    }
}

/// Why an archive path is unacceptable, or `None`: relative, only normal
/// components, under one of [`PARTS`] of the right kind.
pub fn check_path(path: &str, kind: EntryKind) -> Option<String> {
    if path.is_empty() || path.starts_with('/') {
        return Some("an absolute or empty path".into());
    }
    // Split by hand: `Path::components` silently drops inner `.` segments.
    let parts: Vec<&str> = path.split('/').collect();
    for p in &parts {
        match *p {
            ".." => return Some("a path with `..`".into()),
            "." => return Some("a path with `.`".into()),
            "" => return Some("a path that is not in normal form".into()),
            p if p.contains('\0') => return Some("a path with a NUL byte".into()),
            _ => {}
        }
    }
    let top = parts[0];
    let Some((_, part)) = PARTS.iter().find(|(n, _)| *n == top) else {
        return Some(format!(
            "a path outside the parts of a state directory ({})",
            PARTS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
        ));
    };
    let whole_kind = if parts.len() == 1 { Some(*part) } else { None };
    match (whole_kind, part, kind) {
        (Some(PartKind::File), _, EntryKind::File) | (Some(PartKind::Dir), _, EntryKind::Dir) => None,
        (Some(_), _, _) => Some(format!("{top} as a {}", format!("{kind:?}").to_lowercase())),
        (None, PartKind::File, _) => Some(format!("a path below the file {top}")),
        (None, PartKind::Dir, EntryKind::Symlink) if !GUEST_PARTS.contains(&top) || parts.len() < 3 => {
            Some("a symlink outside a service's data directory".into())
        }
        (None, PartKind::Dir, _) => None,
    }
}

/// Whether a symlink at `link` (relative to the state dir) whose target is
/// `target` would point outside the state dir: absolute targets always do;
/// relative ones are resolved lexically from the link's directory.
pub fn link_escapes(link: &Path, target: &Path) -> bool {
    if target.as_os_str().is_empty() || target.is_absolute() {
        return true;
    }
    let mut depth: Vec<&std::ffi::OsStr> = link
        .parent()
        .into_iter()
        .flat_map(|p| p.components())
        .filter_map(|c| if let Component::Normal(n) = c { Some(n) } else { None })
        .collect();
    for c in target.components() {
        match c {
            Component::Normal(n) => depth.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return true;
                }
            }
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

/// Set by SIGINT/SIGTERM/SIGHUP while a snapshot command runs
/// ([`stop_on_signals`]); long loops check it with [`check_interrupted`] so
/// the command ends through its normal cleanup (temp files and dirs removed).
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP end a snapshot command cleanly instead
/// of killing it mid-write (only the CLI calls this; a node has its own).
pub fn stop_on_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// An error once a stop signal arrived.
pub fn check_interrupted() -> std::io::Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(std::io::Error::other("interrupted by a signal"));
    }
    Ok(())
}

/// Unix seconds now.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `<hex>` of 8 random bytes, for temp names.
pub(crate) fn random_suffix() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source failed");
    hex::encode(b)
}

/// "12.3 MiB".
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// `sysdeploy snapshot create FILE [--include-identity]` for a stopped node:
/// stages, writes FILE, prints a summary on stdout.
pub fn cli_create(state_dir: &Path, file: &Path, include_identity: bool) -> Result<Exit, SnapshotError> {
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    stop_on_signals();
    if let Some(n) = crate::state::running_node(state_dir) {
        let pid = n.pid.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"));
        return Err(SnapshotError::NodeRunning(format!(
            "a node is running on state directory {} ({pid}); an offline snapshot needs it stopped: stop it and run this again",
            state_dir.display()
        )));
    }
    let parent = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(SnapshotError::Refused(format!(
            "{} does not exist: create it first, or write the snapshot elsewhere",
            parent.display()
        )));
    }
    let started = std::time::Instant::now();
    let staged = stage::stage_offline(state_dir, &stage::staging_dir(state_dir), include_identity)?;
    let staging = started.elapsed();
    let mut progress = progress::stderr("snapshot create");
    let s = archive::write_file(&staged.dir, file, &mut progress)?;
    drop(staged);
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        file = %file.display(),
        entries = s.entries,
        file_bytes = s.file_bytes,
        archive_bytes = s.archive_bytes,
        staging_ms = staging.as_millis() as u64,
        ms = (secs * 1000.0) as u64,
        "snapshot created"
    );
    let identity = if include_identity { "with identity (node.key, api.token)" } else { "without identity" };
    println!(
        "snapshot {}: {} entries, {} of files, {} archive, {identity}",
        file.display(),
        s.entries,
        mib(s.file_bytes),
        mib(s.archive_bytes)
    );
    println!("peer id:  {}", s.header.host_peer_id);
    println!("took:     {secs:.2} s");
    println!("blake3:   {}", s.blake3);
    if !s.skipped.is_empty() {
        println!("left out: {} (see the warnings above)", s.skipped.len());
    }
    Ok(Exit::Ok)
}

/// `sysdeploy snapshot restore FILE --state-dir DIR [--adopt]
/// [--include-identity]` (`-` reads stdin); prints what was restored on stdout.
pub fn cli_restore(file: &Path, state_dir: &Path, adopt: bool, include_identity: bool) -> Result<Exit, SnapshotError> {
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    stop_on_signals();
    let opts = restore::RestoreOptions { adopt, include_identity };
    let mut progress = progress::stderr("snapshot restore");
    let r = if file == Path::new("-") {
        restore::restore(&mut std::io::stdin().lock(), state_dir, &opts, &mut progress)
    } else {
        let mut f = std::fs::File::open(file)
            .map_err(|e| SnapshotError::Refused(format!("cannot open snapshot {}: {e}; nothing was restored", file.display())))?;
        restore::restore(&mut f, state_dir, &opts, &mut progress)
    }
    .map_err(|e| match e {
        SnapshotError::BadArchive { what, .. } => SnapshotError::BadArchive { source_name: file.display().to_string(), what },
        e => e,
    })?;
    let secs = r.duration.as_secs_f64();
    tracing::info!(state_dir = %state_dir.display(), entries = r.entries, file_bytes = r.file_bytes, ms = (secs * 1000.0) as u64, "snapshot restored");
    println!(
        "restored {} into {}: {} entries, {} of files, in {secs:.2} s",
        file.display(),
        state_dir.display(),
        r.entries,
        mib(r.file_bytes)
    );
    if r.peer_id.as_str() == r.header.host_peer_id {
        println!("peer id:  {} (the snapshot's identity)", r.peer_id);
    } else {
        println!("peer id:  {} (new; the snapshot was taken on {})", r.peer_id, r.header.host_peer_id);
        for (col, n) in &r.adopted {
            println!("adopted:  {col}: {n} rows");
        }
    }
    if r.artifacts_dropped > 0 {
        println!("artifacts: {} compiled by another engine, recompiled at the next run", r.artifacts_dropped);
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_parts_are_refused() {
        assert_eq!(check_path("state.db", EntryKind::File), None);
        assert_eq!(check_path("services/abc/x/y", EntryKind::File), None);
        assert_eq!(check_path("services/abc/link", EntryKind::Symlink), None);
        for (p, k) in [
            ("/etc/passwd", EntryKind::File),
            ("services/../../x", EntryKind::File),
            ("services/./x", EntryKind::File),
            ("lock", EntryKind::File),
            ("api.addr", EntryKind::File),
            ("state.db", EntryKind::Dir),
            ("services", EntryKind::File),
            ("state.db/x", EntryKind::File),
            ("components/x.wasm", EntryKind::Symlink),
            ("services/link", EntryKind::Symlink),
            ("", EntryKind::File),
        ] {
            assert!(check_path(p, k).is_some(), "{p} {k:?} accepted");
        }
    }

    #[test]
    fn links_are_resolved_lexically_from_their_directory() {
        let esc = |l: &str, t: &str| link_escapes(Path::new(l), Path::new(t));
        assert!(!esc("services/a/l", "x"));
        assert!(!esc("services/a/l", "../b/x"));
        assert!(!esc("services/a/b/l", "../../../node.key"), "inside the state dir (never followed by the host)");
        assert!(esc("services/a/l", "../../.."));
        assert!(esc("services/a/l", "/etc/passwd"));
        assert!(esc("services/a/l", ""));
        assert!(esc("services/a/b/l", "../../../../x"));
        assert!(!esc("services/a/l", "./././x/.."));
    }
}
