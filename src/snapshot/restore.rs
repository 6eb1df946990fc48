//! Restoring a snapshot into an empty state dir, whole or not at all.
//!
//! Everything is extracted into a sibling `DIR.restore-<random>` holding a
//! marker file (flocked while the restore runs), checked entry by entry as it
//! streams (path under a known part, no `..`, no absolute path, a symlink only
//! inside a service's data dir and pointing inside the state dir, no devices,
//! each file's blake3, each dir created before what is in it), then as a whole
//! (the manifest lists exactly what was streamed; the footer's blake3 covers
//! every byte). Only then: identity, `--adopt`, artifacts of this engine, syncfs,
//! rename into place. A crash before the rename leaves only the sibling, which
//! the next restore into the same DIR removes (it has the marker, unlocked).

use super::progress::Progress;
use super::{Entry, EntryKind, Header, Manifest, SnapshotError, FOOTER_LEN, FOOTER_MAGIC, HEADER_NAME, MANIFEST_NAME};
use crate::ids::PeerId;
use crate::state::{StateDir, KEY_FILE, STORE_FILE, TOKEN_FILE};
use crate::store::Store;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Take ownership, under this node's new identity, of what the snapshot's
    /// host owned (required when the snapshot has no identity).
    pub adopt: bool,
    /// Restore the snapshot's identity (`node.key`, `api.token`): the
    /// restored node is the same peer. Without it an identity in the archive
    /// is verified but not restored, and the node gets a new one (`--adopt`).
    pub include_identity: bool,
}

/// What was restored.
#[derive(Debug, Clone)]
pub struct Restored {
    pub header: Header,
    /// The restored node's peer id.
    pub peer_id: PeerId,
    /// Owner columns rewritten by `--adopt`: (`table.column`, rows).
    pub adopted: Vec<(String, usize)>,
    pub entries: u64,
    pub file_bytes: u64,
    /// Artifacts left out because they were compiled by another engine.
    pub artifacts_dropped: u64,
    pub duration: Duration,
}

/// Name of the marker file inside a restore's temp dir.
pub const MARKER: &str = ".sysdeploy-restore";
/// Largest header or manifest accepted.
const MAX_HEADER: u64 = 1 << 20;
const MAX_MANIFEST: u64 = 1 << 30;

/// Restores the archive read from `input` into `state_dir`, which must not
/// exist or be empty (its parent must exist).
pub fn restore(
    input: &mut dyn Read,
    state_dir: &Path,
    opts: &RestoreOptions,
    progress: &mut dyn Progress,
) -> Result<Restored, SnapshotError> {
    let started = Instant::now();
    let (parent, name) = target_names(state_dir)?;
    remove_leftovers(&parent, &name);
    remove_leftovers_inside(state_dir);
    check_empty(state_dir)?;
    let in_place = in_place(state_dir, &parent);
    let tmp = if in_place {
        state_dir.join(format!("{INSIDE_PREFIX}{}", super::random_suffix()))
    } else {
        parent.join(format!("{name}.restore-{}", super::random_suffix()))
    };
    fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(SnapshotError::io("create", &tmp))?;
    let mut guard = TempDir { path: tmp.clone(), marker: None, armed: true };
    let marker = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp.join(MARKER))
        .map_err(SnapshotError::io("create", &tmp))?;
    marker.try_lock().map_err(|e| SnapshotError::Other(format!("cannot lock {}: {e}", tmp.join(MARKER).display())))?;
    guard.marker = Some(marker);
    let result = extract(input, &tmp, opts, progress);
    progress.finish();
    let (header, state, stats) = result?;
    let peer_id = state.peer_id().clone();
    let (adopted, artifacts_dropped) = fix_up(&tmp, &header, &peer_id, opts)?;
    // One `syncfs` for everything extracted (as a deployment's barrier): far
    // cheaper than an fsync per file when a data dir holds many small files.
    sync_filesystem(&tmp).map_err(SnapshotError::io("sync the file system of", &tmp))?;
    crash_point!("snapshot::restore::extracted");
    super::check_interrupted().map_err(SnapshotError::io("restore", state_dir))?;
    if in_place {
        move_in(&tmp, state_dir, guard.marker.as_mut().expect("set above"))?;
        guard.armed = false;
        let _ = fs::remove_file(tmp.join(MARKER));
        let _ = fs::remove_dir(&tmp);
        fs::File::open(state_dir).and_then(|f| f.sync_all()).map_err(SnapshotError::io("sync", state_dir))?;
        drop(state);
        drop(guard);
        for (col, n) in &adopted {
            tracing::info!(column = %col, rows = n, from = %header.host_peer_id, to = %peer_id, "adopted: owner rewritten");
        }
        return Ok(Restored {
            header,
            peer_id,
            adopted,
            entries: stats.0,
            file_bytes: stats.1,
            artifacts_dropped,
            duration: started.elapsed(),
        });
    }
    // Into place: over an empty dir, or where none was.
    fs::rename(&tmp, state_dir).map_err(|e| {
        SnapshotError::Other(format!(
            "cannot rename {} to {}: {e}; the state directory must be on the same file system as its parent and not a mount point (restore into a subdirectory of the mount instead)",
            tmp.display(),
            state_dir.display()
        ))
    })?;
    guard.armed = false;
    let _ = fs::remove_file(state_dir.join(MARKER));
    for d in [state_dir, &parent] {
        fs::File::open(d).and_then(|f| f.sync_all()).map_err(SnapshotError::io("sync", d))?;
    }
    drop(state);
    drop(guard);
    for (col, n) in &adopted {
        tracing::info!(column = %col, rows = n, from = %header.host_peer_id, to = %peer_id, "adopted: owner rewritten");
    }
    Ok(Restored { header, peer_id, adopted, entries: stats.0, file_bytes: stats.1, artifacts_dropped, duration: started.elapsed() })
}

/// `syncfs(2)` on the file system holding `dir`.
fn sync_filesystem(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(dir)?;
    // SAFETY: syncfs on a valid, open file descriptor we own.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes the temp dir unless the restore put it in place.
struct TempDir {
    path: PathBuf,
    marker: Option<fs::File>,
    armed: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = crate::tree::remove_tree(&self.path) {
                tracing::warn!(dir = %self.path.display(), error = %e, "could not remove the restore's temp dir; the next restore into the same dir removes it");
            }
        }
        drop(self.marker.take());
    }
}

/// Prefix of the temp dir of a restore made inside the state dir (when it is
/// a mount point or its parent is not writable).
pub const INSIDE_PREFIX: &str = ".sysdeploy-restore-";

/// Whether to extract inside `state_dir` and move the parts in one by one
/// instead of renaming a sibling over it: when it exists and is a mount
/// point (a container volume) or its parent is not writable by us (systemd's
/// `/var/lib` for the service user).
fn in_place(state_dir: &Path, parent: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(d), Ok(p)) = (fs::metadata(state_dir), fs::metadata(parent)) else { return false };
    let writable = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())
        // SAFETY: access(2) on a valid NUL-terminated path.
        .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0);
    d.dev() != p.dev() || !writable
}

/// Moves the verified parts from `tmp` (inside `state_dir`) into `state_dir`:
/// `state.db` first and `node.key` last, so a crash in between leaves a store
/// without its key, which no node boots (exit 3); each name is recorded in
/// the marker before it moves, so the next restore can remove exactly those.
fn move_in(tmp: &Path, state_dir: &Path, marker: &mut fs::File) -> Result<(), SnapshotError> {
    let mut names: Vec<String> = fs::read_dir(tmp)
        .map_err(SnapshotError::io("list", tmp))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != MARKER)
        .collect();
    let rank = |n: &str| match n {
        STORE_FILE => 0,
        KEY_FILE => 2,
        _ => 1,
    };
    names.sort_by_key(|n| (rank(n), n.clone()));
    let mut moved: Vec<&String> = Vec::new();
    let result = (|| {
        for n in &names {
            marker
                .write_all(format!("moved {n}\n").as_bytes())
                .and_then(|_| marker.sync_data())
                .map_err(SnapshotError::io("write", tmp))?;
            fs::rename(tmp.join(n), state_dir.join(n)).map_err(SnapshotError::io("move into place", &state_dir.join(n)))?;
            moved.push(n);
            if n == STORE_FILE {
                crash_point!("snapshot::restore::moving");
            }
        }
        Ok(())
    })();
    if result.is_err() {
        // Undo: the state dir was empty before.
        for n in moved {
            let _ = crate::tree::remove_tree(&state_dir.join(n));
        }
    }
    result
}

/// Removes what a killed in-place restore left inside `state_dir`: its temp
/// dir (marker present and unlocked) and, unless the restore got as far as
/// moving `node.key` (then the state dir is whole), the names it recorded as
/// moved.
fn remove_leftovers_inside(state_dir: &Path) {
    for (dir, marker) in abandoned(state_dir, INSIDE_PREFIX) {
        if !state_dir.join(KEY_FILE).exists() {
            for n in marker.lines().filter_map(|l| l.strip_prefix("moved ")) {
                // Only the plain top-level names a restore moves.
                if !n.is_empty() && !n.contains('/') && n != "." && n != ".." {
                    let _ = crate::tree::remove_tree(&state_dir.join(n));
                }
            }
        }
        match crate::tree::remove_tree(&dir) {
            Ok(_) => tracing::info!(dir = %dir.display(), "removed what an interrupted restore left in the state directory"),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "could not remove the temp dir of an interrupted restore"),
        }
    }
}

/// The temp dirs named `prefix…` in `parent` that a restore made (they hold
/// its marker) and that no live restore holds (the marker is not locked),
/// each with its marker's text. Look-alikes without a marker are left alone.
fn abandoned(parent: &Path, prefix: &str) -> Vec<(PathBuf, String)> {
    let Ok(entries) = fs::read_dir(parent) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        if !e.file_name().to_str().is_some_and(|n| n.starts_with(prefix)) {
            continue;
        }
        let dir = e.path();
        let Ok(marker) = fs::File::open(dir.join(MARKER)) else {
            tracing::warn!(dir = %dir.display(), "left alone: it looks like a restore's temp dir but has no restore marker");
            continue;
        };
        if marker.try_lock().is_err() {
            continue; // another restore is running there
        }
        let text = fs::read_to_string(dir.join(MARKER)).unwrap_or_default();
        out.push((dir, text));
    }
    out
}

/// `state_dir` must name a directory whose parent exists; returns both.
fn target_names(state_dir: &Path) -> Result<(PathBuf, String), SnapshotError> {
    let name = state_dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| SnapshotError::Refused(format!("--state-dir {} must name a directory (not `.`, `..` or `/`)", state_dir.display())))?
        .to_string();
    let parent = match state_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(SnapshotError::Refused(format!(
            "the parent of the state directory, {}, does not exist; create it first (nothing was restored)",
            parent.display()
        )));
    }
    Ok((parent, name))
}

/// `state_dir` must be absent or an empty directory.
fn check_empty(state_dir: &Path) -> Result<(), SnapshotError> {
    match fs::symlink_metadata(state_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(SnapshotError::io("inspect", state_dir)(e)),
        Ok(m) if !m.is_dir() => {
            return Err(SnapshotError::Refused(format!(
                "{} exists and is not a directory; restore into an empty or new directory",
                state_dir.display()
            )))
        }
        Ok(_) => {
            let mut names: Vec<String> = fs::read_dir(state_dir)
                .map_err(SnapshotError::io("list", state_dir))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            // A lock file no process holds is not state (a refused `run` leaves one).
            let lock = state_dir.join(crate::state::LOCK_FILE);
            if names.len() == 1 && names[0] == crate::state::LOCK_FILE && crate::state::running_node(state_dir).is_none() && lock.is_file()
            {
                fs::remove_file(&lock).map_err(SnapshotError::io("remove", &lock))?;
                names.clear();
            }
            if !names.is_empty() {
                names.sort();
                let more = if names.len() > 5 { format!(" and {} more", names.len() - 5) } else { String::new() };
                names.truncate(5);
                return Err(SnapshotError::Refused(format!(
                    "state directory {} is not empty (it holds {}{more}); a restore never merges into existing state: restore into a new or empty directory, or move this one away first",
                    state_dir.display(),
                    names.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// Removes `NAME.restore-*` siblings a killed restore left: only those that
/// hold our marker and whose marker no live restore holds locked.
fn remove_leftovers(parent: &Path, name: &str) {
    for (dir, _) in abandoned(parent, &format!("{name}.restore-")) {
        match crate::tree::remove_tree(&dir) {
            Ok(_) => tracing::info!(dir = %dir.display(), "removed the temp dir of an interrupted restore"),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "could not remove the temp dir of an interrupted restore"),
        }
    }
}

fn bad(what: impl Into<String>) -> SnapshotError {
    SnapshotError::BadArchive { source_name: "archive".into(), what: what.into() }
}

/// Streams the archive into `tmp`, checking as it goes and as a whole.
/// Returns the header, the state dir handle (lock held) and (entries, bytes).
fn extract(
    input: &mut dyn Read,
    tmp: &Path,
    opts: &RestoreOptions,
    progress: &mut dyn Progress,
) -> Result<(Header, StateDir, (u64, u64)), SnapshotError> {
    let mut reader = Holdback::new(input);
    let mut archive = tar::Archive::new(&mut reader);
    let mut entries = archive.entries().map_err(|e| bad(format!("not a snapshot archive: {e}")))?;
    let damaged = |e: io::Error| bad(format!("truncated or damaged: {e}"));

    // The header, first.
    let mut first = entries.next().ok_or_else(|| bad("empty: not a snapshot archive"))?.map_err(damaged)?;
    if first.path().map_err(damaged)?.as_os_str() != HEADER_NAME || first.size() > MAX_HEADER {
        return Err(bad(format!("not a sysdeploy snapshot (its first entry is not {HEADER_NAME})")));
    }
    let header: Header = read_json(&mut first, "header")?;
    drop(first);
    if header.format != super::FORMAT_VERSION {
        return Err(bad(format!(
            "archive format {} (this sysdeploy reads format {}); restore it with a matching sysdeploy",
            header.format,
            super::FORMAT_VERSION
        )));
    }
    let known = crate::schema::known() as u64;
    if header.schema_version > known {
        return Err(bad(format!(
            "its store has schema version {}, newer than the {known} this sysdeploy {} knows (it was written by sysdeploy {}); restore it with that version or newer",
            header.schema_version,
            env!("CARGO_PKG_VERSION"),
            header.sysdeploy_version
        )));
    }
    let old_host =
        PeerId::parse(&header.host_peer_id).ok_or_else(|| bad(format!("host peer id {:?} is not a peer id", header.host_peer_id)))?;
    if opts.include_identity && !header.identity {
        return Err(SnapshotError::Refused(format!(
            "--include-identity: the snapshot of peer {old_host} has no identity (it was created without --include-identity); restore it with --adopt under a new identity, or use a snapshot created with --include-identity; nothing was restored"
        )));
    }
    // The archive's identity is restored only when asked: two nodes running
    // as one peer id is worse than a refusal.
    let use_identity = header.identity && opts.include_identity;
    if !use_identity && !opts.adopt {
        let how = if header.identity {
            format!("pass --include-identity to restore peer {old_host} itself (only where that node no longer runs: two nodes must never share a peer id), or --adopt to make a new identity the owner (every owner column is rewritten and logged)")
        } else {
            "pass --adopt to make the new identity the owner (every owner column is rewritten and logged), or take the snapshot with --include-identity to restore the same peer".to_string()
        };
        let what = if header.identity { "with its identity, which is restored only when asked" } else { "without its identity (node.key)" };
        return Err(SnapshotError::Refused(format!(
            "the snapshot was taken on peer {old_host} {what}: the restored node gets a new peer id and would own nothing of what {old_host} deployed; {how}; nothing was restored"
        )));
    }
    if use_identity && opts.adopt {
        tracing::warn!("--adopt has no effect: the snapshot's identity is restored, the restored node is peer {old_host}");
    }
    // A new identity is made before the store arrives (a store without a key is refused).
    let mut state = if use_identity { None } else { Some(StateDir::open_exclusive(tmp)?) };
    let engine_key = crate::runtime::current_engine_key().map_err(|e| SnapshotError::Other(e.to_string()))?;
    progress.start(header.total_bytes);

    let mut seen: BTreeMap<String, Entry> = BTreeMap::new();
    let mut dirs: HashSet<String> = HashSet::new();
    let mut manifest: Option<Manifest> = None;
    let mut file_bytes = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(damaged)?;
        let raw = entry.path().map_err(damaged)?.into_owned();
        let path = raw
            .to_str()
            .ok_or_else(|| bad(format!("entry {} has a name that is not UTF-8", raw.display())))?
            .trim_end_matches('/')
            .to_string();
        if manifest.is_some() {
            return Err(bad(format!("entry {path} after the manifest")));
        }
        if path == MANIFEST_NAME {
            if entry.size() > MAX_MANIFEST {
                return Err(bad("its manifest is too large"));
            }
            manifest = Some(read_json(&mut entry, "manifest")?);
            continue;
        }
        let at = |why: &str| bad(format!("entry {path}: {why}"));
        let etype = entry.header().entry_type();
        let kind = match etype {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            other => return Err(at(&format!("a {} (only files, directories and symlinks are restored)", type_name(other)))),
        };
        if let Some(why) = super::check_path(&path, kind) {
            return Err(at(&why));
        }
        if (path == KEY_FILE || path == TOKEN_FILE) && !header.identity {
            return Err(at("identity in an archive whose header says it has none"));
        }
        if seen.contains_key(&path) {
            return Err(at("appears twice"));
        }
        let parent = Path::new(&path).parent().and_then(|p| p.to_str()).unwrap_or("");
        if !parent.is_empty() && !dirs.contains(parent) {
            return Err(at("its directory is not an earlier directory entry of the archive"));
        }
        let mode = entry.header().mode().map_err(damaged)? & 0o7777;
        let dest = tmp.join(&path);
        // Artifacts of another engine: verified, never written (recompiled here).
        // Also the archive's identity when it is not restored (a new one is in place).
        let foreign = path.starts_with("cache/") && path.split('/').nth(1).is_some_and(|k| k != engine_key)
            || (path == KEY_FILE || path == TOKEN_FILE) && !use_identity;
        let mut record = Entry { path: path.clone(), kind, mode, size: 0, blake3: None, target: None };
        match kind {
            EntryKind::Dir => {
                if !foreign {
                    fs::DirBuilder::new().mode(0o700).create(&dest).map_err(SnapshotError::io("create", &dest))?;
                }
                dirs.insert(path.clone());
            }
            EntryKind::Symlink => {
                let target = entry.link_name().map_err(damaged)?.ok_or_else(|| at("a symlink without a target"))?.into_owned();
                let t = target.to_str().ok_or_else(|| at("a symlink target that is not UTF-8"))?.to_string();
                if super::link_escapes(Path::new(&path), &target) {
                    return Err(at(&format!("a symlink to {t:?}, outside the state directory")));
                }
                std::os::unix::fs::symlink(&target, &dest).map_err(SnapshotError::io("create", &dest))?;
                record.mode = mode;
                record.target = Some(t);
            }
            EntryKind::File => {
                let size = entry.size();
                let mtime = entry.header().mtime().unwrap_or(0);
                let mut out = if foreign {
                    None
                } else {
                    Some(
                        fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(&dest)
                            .map_err(SnapshotError::io("create", &dest))?,
                    )
                };
                let mut hasher = blake3::Hasher::new();
                let mut buf = vec![0u8; 1 << 16];
                let mut n = 0u64;
                loop {
                    super::check_interrupted().map_err(SnapshotError::io("restore", tmp))?;
                    let k = entry.read(&mut buf).map_err(damaged)?;
                    if k == 0 {
                        break;
                    }
                    hasher.update(&buf[..k]);
                    if let Some(o) = out.as_mut() {
                        o.write_all(&buf[..k]).map_err(SnapshotError::io("write", &dest))?;
                    }
                    n += k as u64;
                    progress.advance(k as u64);
                }
                if n != size {
                    return Err(at("truncated"));
                }
                if let Some(o) = out {
                    // The store and the identity stay owner-only whatever the header says.
                    let perm = if path.contains('/') { mode & 0o777 | 0o600 } else { 0o600 };
                    if perm != 0o600 {
                        o.set_permissions(fs::Permissions::from_mode(perm)).map_err(SnapshotError::io("set the mode of", &dest))?;
                    }
                    let _ = o.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(mtime));
                }
                file_bytes += n;
                record.size = size;
                record.blake3 = Some(hasher.finalize().to_hex().to_string());
            }
        }
        seen.insert(path, record);
    }
    let manifest = manifest.ok_or_else(|| bad("truncated: it ends before its manifest"))?;
    drop(archive);
    reader.finish()?;

    // The manifest lists exactly what was streamed.
    if manifest.header != header {
        return Err(bad("its manifest's header differs from the archive's header"));
    }
    let listed: BTreeMap<String, Entry> = manifest.entries.iter().map(|e| (e.path.clone(), e.clone())).collect();
    if listed.len() != manifest.entries.len() {
        return Err(bad("its manifest lists a path twice"));
    }
    for (p, e) in &seen {
        match listed.get(p) {
            None => return Err(bad(format!("entry {p} is in the archive but not in its manifest"))),
            Some(l) if l != e => {
                return Err(bad(format!(
                    "entry {p} does not match its manifest (kind, mode, size or blake3 differs: the archive is damaged)"
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(p) = listed.keys().find(|p| !seen.contains_key(*p)) {
        return Err(bad(format!("{p} is in the manifest but not in the archive")));
    }
    if header.total_entries != seen.len() as u64 {
        return Err(bad("its header counts a different number of entries"));
    }
    if !seen.contains_key(STORE_FILE) {
        return Err(bad(format!("it has no {STORE_FILE}")));
    }
    if header.identity && (!seen.contains_key(KEY_FILE) || !seen.contains_key(TOKEN_FILE)) {
        return Err(bad("its header says it has the identity, but node.key or api.token is missing"));
    }
    if use_identity {
        let s = StateDir::open_exclusive(tmp)?;
        if s.peer_id() != &old_host {
            return Err(bad(format!("its node.key is peer {}, not the snapshot's host {old_host}", s.peer_id())));
        }
        state = Some(s);
    }
    Ok((header, state.expect("made above"), (seen.len() as u64, file_bytes)))
}

/// The store after extraction: migrations of an older schema, `--adopt`,
/// artifact records consistent with this engine's files.
fn fix_up(tmp: &Path, header: &Header, peer: &PeerId, opts: &RestoreOptions) -> Result<(Vec<(String, usize)>, u64), SnapshotError> {
    // Its hashes matched, so a store that cannot be opened came so from its writer.
    let store = Store::open(&tmp.join(STORE_FILE)).map_err(|e| bad(format!("its {STORE_FILE} cannot be used: {e}")))?;
    let engine_key = crate::runtime::current_engine_key().map_err(|e| SnapshotError::Other(e.to_string()))?;
    let sql = |e: rusqlite::Error| SnapshotError::Store(crate::store::StoreError::Sqlite { path: tmp.join(STORE_FILE), source: e });
    let mut conn = store.lock();
    let tx = conn.transaction().map_err(sql)?;
    let mut adopted = Vec::new();
    if opts.adopt && header.host_peer_id != peer.as_str() {
        for (table, column) in owner_columns(&tx).map_err(sql)? {
            let n = tx
                .execute(
                    &format!("UPDATE \"{table}\" SET \"{column}\" = ?1 WHERE \"{column}\" = ?2"),
                    [peer.as_str(), header.host_peer_id.as_str()],
                )
                .map_err(sql)?;
            adopted.push((format!("{table}.{column}"), n));
        }
    }
    // Artifacts of another engine were not extracted; records of missing files go.
    let dropped = tx.execute("DELETE FROM rt_artifacts WHERE engine_key != ?1", [&engine_key]).map_err(sql)? as u64;
    let rows: Vec<String> = {
        let mut st = tx.prepare("SELECT component_hash FROM rt_artifacts WHERE engine_key = ?1").map_err(sql)?;
        let r = st.query_map([&engine_key], |r| r.get(0)).map_err(sql)?.collect::<Result<_, _>>().map_err(sql)?;
        r
    };
    for hash in rows {
        if !tmp.join("cache").join(&engine_key).join(format!("{hash}.cwasm")).is_file() {
            tx.execute("DELETE FROM rt_artifacts WHERE component_hash = ?1 AND engine_key = ?2", [&hash, &engine_key]).map_err(sql)?;
        }
    }
    tx.commit().map_err(sql)?;
    drop(conn);
    drop(store);
    // The runtime recreates it at boot; an empty one keeps restores uniform.
    let _ = fs::create_dir_all(tmp.join("cache").join(&engine_key));
    if dropped > 0 {
        tracing::info!(artifacts = dropped, from = %header.engine_key, to = %engine_key, "compiled artifacts are for another engine: left out, recompiled at the next run");
    }
    Ok((adopted, dropped))
}

/// Every column holding a peer id as an owner: named `owner`, `*_owner` or
/// containing `peer` (so tables added by later layers are covered).
fn owner_columns(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let tables: Vec<String> = {
        let mut st = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?;
        let r = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        r
    };
    let mut out = Vec::new();
    for t in tables {
        let mut st = conn.prepare(&format!("PRAGMA table_info(\"{t}\")"))?;
        let cols: Vec<String> = st.query_map([], |r| r.get::<_, String>(1))?.collect::<Result<_, _>>()?;
        for c in cols {
            if c == "owner" || c.ends_with("_owner") || c.contains("peer") {
                out.push((t.clone(), c));
            }
        }
    }
    Ok(out)
}

fn read_json<T: serde::de::DeserializeOwned>(r: &mut impl Read, what: &str) -> Result<T, SnapshotError> {
    let mut b = Vec::new();
    r.read_to_end(&mut b).map_err(|e| bad(format!("truncated or damaged {what}: {e}")))?;
    serde_json::from_slice(&b).map_err(|e| bad(format!("its {what} is damaged: {e}")))
}

fn type_name(t: tar::EntryType) -> &'static str {
    match t {
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "fifo",
        tar::EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

/// Passes the stream through but holds back its last [`FOOTER_LEN`] bytes,
/// hashing what it passes; `finish` checks the footer against that hash.
struct Holdback<'a> {
    inner: &'a mut dyn Read,
    hasher: blake3::Hasher,
    buf: Vec<u8>,
    /// `buf[start..]` is not yet passed on.
    start: usize,
    eof: bool,
}

impl<'a> Holdback<'a> {
    fn new(inner: &'a mut dyn Read) -> Self {
        Holdback { inner, hasher: blake3::Hasher::new(), buf: Vec::with_capacity(1 << 17), start: 0, eof: false }
    }

    fn fill(&mut self) -> io::Result<()> {
        while !self.eof && self.buf.len() - self.start <= FOOTER_LEN {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let len = self.buf.len();
            self.buf.resize(len + (1 << 16), 0);
            let n = loop {
                match self.inner.read(&mut self.buf[len..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e);
                }
            };
            self.buf.truncate(len + n);
            self.eof = n == 0;
        }
        Ok(())
    }

    /// Reads to the end and checks the footer.
    fn finish(&mut self) -> Result<(), SnapshotError> {
        io::copy(self, &mut io::sink()).map_err(|e| bad(format!("truncated or damaged: {e}")))?;
        let tail = &self.buf[self.start..];
        if tail.len() != FOOTER_LEN || &tail[..8] != FOOTER_MAGIC {
            return Err(bad("truncated: its footer is missing"));
        }
        if tail[8..] != *self.hasher.finalize().as_bytes() {
            return Err(bad("damaged: its bytes do not match the blake3 in its footer"));
        }
        Ok(())
    }
}

impl Read for Holdback<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.fill()?;
        let avail = (self.buf.len() - self.start).saturating_sub(FOOTER_LEN);
        let n = avail.min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.hasher.update(&out[..n]);
        self.start += n;
        Ok(n)
    }
}
