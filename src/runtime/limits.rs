//! What one guest may take of what the node's services share: bytes and
//! entries of its data directory (a quota enforced in the host's WASI
//! filesystem layer), open descriptors (a per-instance cap inside a node-wide
//! budget below `RLIMIT_NOFILE`), and the size of a call result.
//!
//! The quota is kept by shadowing the `wasi:filesystem/types` functions that
//! can grow a directory (`open-at` with `create`, `write`, `set-size`,
//! `create-directory-at`, `symlink-at`, `link-at`) or shrink it
//! (`unlink-file-at`, `remove-directory-at`, `rename-at` over an existing
//! entry) in the component linker: each checks and records, then delegates to
//! wasmtime-wasi's own implementation. File streams (`write-via-stream`,
//! `append-via-stream`, which wasi-libc's `write` uses) are wrapped in a
//! [`QuotaStream`] that checks every write before the file stream sees it, so
//! `write`, `blocking-write-and-flush`, `write-zeroes` and `splice` are all
//! covered. A guest over quota gets the WASI error code `quota` (`EDQUOT`),
//! never a trap; `filesystem-error-code` is shadowed too so a stream write
//! refused for quota reports `quota` (wasi-libc does not ask: its `write()`
//! reports every failed stream write as `EIO`).
//!
//! The ledger errs only towards charging too much: growth is charged before
//! the operation runs (and stays charged if it then fails), shrinking is
//! credited after it succeeded.
//!
//! Bytes are the logical sizes of regular files, each inode counted once
//! (hard links do not multiply it); a sparse file counts at its full length,
//! which bounds the blocks it can ever occupy. Entries are directory entries:
//! every file, directory, symlink and hard link counts one.

use super::host::HostState;
use super::RuntimeError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use wasmtime::component::{Linker, Resource};
use wasmtime::StoreContextMut;
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{DescriptorFlags, ErrorCode, Host as _, HostDescriptor as _, OpenFlags, PathFlags};
use wasmtime_wasi::p2::{DynOutputStream, FsResult, OutputStream, Pollable, StreamError, StreamResult};

/// The WASI filesystem interface the host provides (wasmtime-wasi 48's WIT
/// version; guests importing any 0.2.x resolve to it).
const FS_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Bytes and entries under a service's `/data`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataUsage {
    /// Logical bytes of regular files, each inode once.
    pub bytes: u64,
    /// Directory entries: files, directories, symlinks, hard links.
    pub inodes: u64,
}

/// Why a write or a create was refused.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("data quota exceeded")]
pub(crate) struct QuotaExceeded;

/// The quota ledger of one service's data dir, shared by its instance's
/// store data and the file streams the instance opened.
pub(crate) struct Quota {
    max_bytes: u64,
    max_inodes: u64,
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    usage: DataUsage,
    /// Charged length per regular-file inode: the largest end of anything
    /// written, or the length set; at least the file's length.
    files: HashMap<u64, u64>,
}

/// What a removed entry was.
pub(crate) struct Gone {
    ino: u64,
    regular: bool,
    nlink: u64,
}

impl Quota {
    /// Scans `root` (no symlink followed, fd-relative) and starts the ledger
    /// from what is there.
    pub(crate) fn scan(root: &Path, max_bytes: u64, max_inodes: u64) -> Result<Quota, RuntimeError> {
        let (usage, files) = scan(root).map_err(|e| RuntimeError::Io { path: root.to_path_buf(), source: e })?;
        Ok(Quota { max_bytes, max_inodes, ledger: Mutex::new(Ledger { usage, files }) })
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn usage(&self) -> DataUsage {
        self.ledger().usage
    }

    /// Charges file `ino` for data up to `end`; refused if that would take
    /// the service over its byte quota (shrinking or staying is always fine).
    pub(crate) fn grow_to(&self, ino: u64, end: u64) -> Result<(), QuotaExceeded> {
        let mut l = self.ledger();
        let old = l.files.get(&ino).copied().unwrap_or(0);
        if end <= old {
            return Ok(());
        }
        let bytes = l.usage.bytes.saturating_add(end - old);
        if bytes > self.max_bytes {
            return Err(QuotaExceeded);
        }
        l.usage.bytes = bytes;
        l.files.insert(ino, end);
        Ok(())
    }

    /// Sets the charged length of `ino` to `len` (`set-size`); growth is
    /// checked like a write.
    pub(crate) fn set_len(&self, ino: u64, len: u64) -> Result<(), QuotaExceeded> {
        let mut l = self.ledger();
        let old = l.files.get(&ino).copied().unwrap_or(0);
        let bytes = l.usage.bytes - old.min(l.usage.bytes) + len;
        if len > old && bytes > self.max_bytes {
            return Err(QuotaExceeded);
        }
        l.usage.bytes = bytes;
        l.files.insert(ino, len);
        Ok(())
    }

    /// The length charged for `ino` so far.
    fn charged(&self, ino: u64) -> u64 {
        self.ledger().files.get(&ino).copied().unwrap_or(0)
    }

    /// Whether `ino` is a regular file the ledger already counts.
    pub(crate) fn knows(&self, ino: u64) -> bool {
        self.ledger().files.contains_key(&ino)
    }

    /// Whether one more entry fits.
    pub(crate) fn check_entry(&self) -> Result<(), QuotaExceeded> {
        let l = self.ledger();
        if l.usage.inodes >= self.max_inodes {
            return Err(QuotaExceeded);
        }
        Ok(())
    }

    /// Records a created entry; for a regular file, its inode and length.
    pub(crate) fn entry_created(&self, file: Option<(u64, u64)>) {
        let mut l = self.ledger();
        l.usage.inodes += 1;
        if let Some((ino, len)) = file {
            if let std::collections::hash_map::Entry::Vacant(e) = l.files.entry(ino) {
                e.insert(len);
                l.usage.bytes = l.usage.bytes.saturating_add(len);
            }
        }
    }

    /// Records a removed entry. The bytes of a file's last link are released
    /// unless the instance still holds the file open (then they stay charged
    /// until the instance is gone: an open unlinked file still takes disk).
    pub(crate) fn entry_removed(&self, gone: &Gone, open: &OpenFiles) {
        let mut l = self.ledger();
        l.usage.inodes = l.usage.inodes.saturating_sub(1);
        if gone.regular && gone.nlink <= 1 && !open.holds(gone.ino) {
            if let Some(len) = l.files.remove(&gone.ino) {
                l.usage.bytes = l.usage.bytes.saturating_sub(len);
            }
        }
    }
}

/// Walks `root` without following symlinks, one open directory per level
/// (fd-relative, so depth is not limited by `PATH_MAX`).
fn scan(root: &Path) -> std::io::Result<(DataUsage, HashMap<u64, u64>)> {
    use rustix::fs::{openat, statat, AtFlags, Dir, FileType, Mode, OFlags, CWD};
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut usage = DataUsage::default();
    let mut files = HashMap::new();
    let root_fd = match openat(CWD, root, dir_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok((usage, files)),
        Err(e) => return Err(e.into()),
    };
    let mut stack = vec![Dir::new(root_fd)?];
    while let Some(dir) = stack.last_mut() {
        let Some(entry) = dir.read() else {
            stack.pop();
            continue;
        };
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let fd = dir.fd()?;
        let st = match statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed since the listing: nothing to count.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        usage.inodes += 1;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                let len = st.st_size as u64;
                if files.insert(st.st_ino, len).is_none() {
                    usage.bytes += len;
                }
            }
            FileType::Directory => {
                let child = match openat(fd, name, dir_flags, Mode::empty()) {
                    Ok(c) => c,
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                };
                stack.push(Dir::new(child)?);
            }
            _ => {}
        }
    }
    Ok((usage, files))
}

/// The node-wide budget of descriptors guests may hold: the soft
/// `RLIMIT_NOFILE` (raised to the hard limit at start) minus a reserve for the
/// API, the store, compiles and logs.
pub(crate) struct FdBudget {
    limit: usize,
    used: AtomicUsize,
}

impl FdBudget {
    pub(crate) fn new(limit: usize) -> Arc<FdBudget> {
        Arc::new(FdBudget { limit, used: AtomicUsize::new(0) })
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit and returns
/// the resulting soft limit.
pub(crate) fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
        r.rlim_cur
    }
}

/// Descriptors guests may hold in total when the soft limit is `soft`: a
/// reserve of an eighth (at least 256) stays with the node.
pub(crate) fn guest_fd_budget(soft: u64) -> usize {
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    soft.saturating_sub((soft / 8).max(256))
}

/// The descriptors one instance holds: the files and directories it opened
/// (a file stream keeps its file's descriptor alive, so it counts through it).
pub(crate) struct OpenFiles {
    max: usize,
    handles: Vec<(Weak<std::fs::File>, u64)>,
    budget: Arc<FdBudget>,
    /// What this instance has added to `budget.used`.
    counted: usize,
}

/// Why an `open-at` was refused.
pub(crate) enum FdRefused {
    Instance,
    Node,
}

impl OpenFiles {
    pub(crate) fn new(max: usize, budget: Arc<FdBudget>) -> Self {
        OpenFiles { max, handles: Vec::new(), budget, counted: 0 }
    }

    fn prune(&mut self) {
        self.handles.retain(|(w, _)| w.strong_count() > 0);
        let n = self.handles.len();
        if n < self.counted {
            self.budget.used.fetch_sub(self.counted - n, Ordering::AcqRel);
            self.counted = n;
        }
    }

    /// Descriptors held now.
    pub(crate) fn live(&mut self) -> usize {
        self.prune();
        self.handles.len()
    }

    /// Whether one more descriptor may be opened.
    pub(crate) fn check(&mut self) -> Result<(), FdRefused> {
        if self.live() >= self.max {
            return Err(FdRefused::Instance);
        }
        if self.budget.used.load(Ordering::Acquire) >= self.budget.limit {
            return Err(FdRefused::Node);
        }
        Ok(())
    }

    pub(crate) fn opened(&mut self, file: &Arc<std::fs::File>, ino: u64) {
        self.handles.push((Arc::downgrade(file), ino));
        self.counted += 1;
        self.budget.used.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether a live descriptor of this instance refers to `ino`.
    pub(crate) fn holds(&self, ino: u64) -> bool {
        self.handles.iter().any(|(w, i)| *i == ino && w.strong_count() > 0)
    }
}

impl Drop for OpenFiles {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.counted, Ordering::AcqRel);
    }
}

/// The OS file behind a descriptor.
fn os_file(d: &Descriptor) -> &Arc<std::fs::File> {
    match d {
        Descriptor::File(f) => &f.file,
        Descriptor::Dir(d) => &d.dir,
    }
}

fn ino_of(file: &std::fs::File) -> Option<(u64, bool, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata().ok()?;
    Some((m.ino(), m.is_file(), m.len()))
}

/// `path` under directory `dir`, not following a final symlink: what a
/// removal or a rename over it would take away. Used only for accounting; the
/// operation itself is wasmtime-wasi's, sandboxed.
fn entry_at(dir: &std::fs::File, path: &str) -> Option<Gone> {
    use rustix::fs::{statat, AtFlags, FileType};
    let st = statat(dir, path, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    Some(Gone { ino: st.st_ino, regular: FileType::from_raw_mode(st.st_mode) == FileType::RegularFile, nlink: st.st_nlink })
}

fn dir_file(state: &mut HostState, fd: &Resource<Descriptor>) -> Option<Arc<std::fs::File>> {
    match state.table_mut().get(fd) {
        Ok(Descriptor::Dir(d)) => Some(d.dir.clone()),
        _ => None,
    }
}

type FsRet<T> = wasmtime::Result<(Result<T, ErrorCode>,)>;

/// wasmtime-wasi's result in the shape the linker wants: an error code for
/// the guest, or a trap.
fn ret<T>(r: FsResult<T>) -> FsRet<T> {
    match r {
        Ok(v) => Ok((Ok(v),)),
        Err(e) => Ok((Err(e.downcast()?),)),
    }
}

/// Shadows the filesystem functions that change a data dir's usage or open a
/// descriptor; see the module docs.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut i = linker.instance(FS_TYPES)?;

    i.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, path_flags, path, oflags, flags): (Resource<Descriptor>, PathFlags, String, OpenFlags, DescriptorFlags)| {
            Box::new(async move {
                let state = store.data_mut();
                match state.open_files.check() {
                    Ok(()) => {}
                    Err(FdRefused::Instance) => {
                        tracing::debug!(target: "guest", service = state.service_id(), "open-at refused: open descriptor cap");
                        return Ok((Err(ErrorCode::InsufficientMemory),));
                    }
                    Err(FdRefused::Node) => {
                        tracing::warn!(target: "guest", service = state.service_id(), "open-at refused: the node's descriptor budget for guests is used up");
                        return Ok((Err(ErrorCode::InsufficientMemory),));
                    }
                }
                let creating = oflags.contains(OpenFlags::CREATE);
                if creating && state.quota.check_entry().is_err() {
                    // At the entry quota, opening an existing file still works.
                    let exists = dir_file(state, &fd).is_some_and(|d| entry_at(&d, &path).is_some());
                    if !exists {
                        return Ok((Err(ErrorCode::Quota),));
                    }
                }
                let r = state.filesystem().open_at(fd, path_flags, path, oflags, flags).await;
                let new_fd = match r {
                    Ok(new_fd) => new_fd,
                    Err(e) => return ret(Err(e)),
                };
                let file = state.table_mut().get(&new_fd).map(|d| os_file(d).clone());
                if let Ok(file) = file {
                    if let Some((ino, regular, len)) = ino_of(&file) {
                        state.open_files.opened(&file, ino);
                        if regular {
                            if !state.quota.knows(ino) {
                                state.quota.entry_created(Some((ino, len)));
                            } else if oflags.contains(OpenFlags::TRUNCATE) {
                                let _ = state.quota.set_len(ino, len);
                            }
                        }
                    }
                }
                Ok((Ok(new_fd),))
            })
        },
    )?;

    i.func_wrap_async(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, HostState>, (fd, buf, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                if let Ok(Descriptor::File(f)) = state.table_mut().get(&fd) {
                    if let Some((ino, _, _)) = ino_of(&f.file) {
                        if state.quota.grow_to(ino, offset.saturating_add(buf.len() as u64)).is_err() {
                            return Ok((Err(ErrorCode::Quota),));
                        }
                    }
                }
                ret(state.filesystem().write(fd, buf, offset).await)
            })
        },
    )?;

    i.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, HostState>, (fd, size): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                let ino = match state.table_mut().get(&fd) {
                    Ok(Descriptor::File(f)) => ino_of(&f.file).map(|(ino, _, _)| ino),
                    _ => None,
                };
                // Growth is charged first (refused over quota); shrinking is
                // credited only once it happened, so a failing `set-size`
                // cannot lower the ledger below what is on disk.
                let grows = ino.is_some_and(|ino| size > state.quota.charged(ino));
                if let (Some(ino), true) = (ino, grows) {
                    if state.quota.set_len(ino, size).is_err() {
                        return Ok((Err(ErrorCode::Quota),));
                    }
                }
                let r = state.filesystem().set_size(fd, size).await;
                if let (Some(ino), false, Ok(())) = (ino, grows, &r) {
                    let _ = state.quota.set_len(ino, size);
                }
                ret(r)
            })
        },
    )?;

    i.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store: StoreContextMut<'_, HostState>, (fd, offset): (Resource<Descriptor>, u64)| {
            let state = store.data_mut();
            let file = match state.table_mut().get(&fd) {
                Ok(Descriptor::File(f)) => Some(f.file.clone()),
                _ => None,
            };
            let r = state.filesystem().write_via_stream(fd, offset);
            wrap_stream(state, r, file, WriteMode::At(offset))
        },
    )?;

    i.func_wrap("[method]descriptor.append-via-stream", |mut store: StoreContextMut<'_, HostState>, (fd,): (Resource<Descriptor>,)| {
        let state = store.data_mut();
        let file = match state.table_mut().get(&fd) {
            Ok(Descriptor::File(f)) => Some(f.file.clone()),
            _ => None,
        };
        let r = state.filesystem().append_via_stream(fd);
        wrap_stream(state, r, file, WriteMode::Append)
    })?;

    i.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |mut store: StoreContextMut<'_, HostState>, (fd, path): (Resource<Descriptor>, String)| {
            Box::new(async move {
                let state = store.data_mut();
                if state.quota.check_entry().is_err() {
                    return Ok((Err(ErrorCode::Quota),));
                }
                let r = state.filesystem().create_directory_at(fd, path).await;
                if r.is_ok() {
                    state.quota.entry_created(None);
                }
                ret(r)
            })
        },
    )?;

    i.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store: StoreContextMut<'_, HostState>, (fd, old, new): (Resource<Descriptor>, String, String)| {
            Box::new(async move {
                let state = store.data_mut();
                if state.quota.check_entry().is_err() {
                    return Ok((Err(ErrorCode::Quota),));
                }
                let r = state.filesystem().symlink_at(fd, old, new).await;
                if r.is_ok() {
                    state.quota.entry_created(None);
                }
                ret(r)
            })
        },
    )?;

    i.func_wrap_async(
        "[method]descriptor.link-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, flags, old, new_fd, new): (Resource<Descriptor>, PathFlags, String, Resource<Descriptor>, String)| {
            Box::new(async move {
                let state = store.data_mut();
                if state.quota.check_entry().is_err() {
                    return Ok((Err(ErrorCode::Quota),));
                }
                let r = state.filesystem().link_at(fd, flags, old, new_fd, new).await;
                if r.is_ok() {
                    state.quota.entry_created(None);
                }
                ret(r)
            })
        },
    )?;

    i.func_wrap_async(
        "[method]descriptor.unlink-file-at",
        |mut store: StoreContextMut<'_, HostState>, (fd, path): (Resource<Descriptor>, String)| {
            Box::new(async move {
                let state = store.data_mut();
                let gone = dir_file(state, &fd).and_then(|d| entry_at(&d, &path));
                let r = state.filesystem().unlink_file_at(fd, path).await;
                if let (Ok(()), Some(gone)) = (&r, gone) {
                    state.open_files.live();
                    state.quota.entry_removed(&gone, &state.open_files);
                }
                ret(r)
            })
        },
    )?;

    i.func_wrap_async(
        "[method]descriptor.remove-directory-at",
        |mut store: StoreContextMut<'_, HostState>, (fd, path): (Resource<Descriptor>, String)| {
            Box::new(async move {
                let state = store.data_mut();
                let gone = dir_file(state, &fd).and_then(|d| entry_at(&d, &path));
                let r = state.filesystem().remove_directory_at(fd, path).await;
                if let (Ok(()), Some(gone)) = (&r, gone) {
                    state.quota.entry_removed(&gone, &state.open_files);
                }
                ret(r)
            })
        },
    )?;

    i.func_wrap_async(
        "[method]descriptor.rename-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, old, new_fd, new): (Resource<Descriptor>, String, Resource<Descriptor>, String)| {
            Box::new(async move {
                let state = store.data_mut();
                let source = dir_file(state, &fd).and_then(|d| entry_at(&d, &old));
                // An existing destination is replaced: it goes away.
                let replaced = dir_file(state, &new_fd).and_then(|d| entry_at(&d, &new));
                let r = state.filesystem().rename_at(fd, old, new_fd, new).await;
                if let (Ok(()), Some(gone)) = (&r, replaced) {
                    let same = source.is_some_and(|s| s.ino == gone.ino);
                    if !same {
                        state.open_files.live();
                        state.quota.entry_removed(&gone, &state.open_files);
                    }
                }
                ret(r)
            })
        },
    )?;

    // Guests' filesystem calls run on the calling thread (the WASI context
    // allows blocking it: a small read is a few microseconds, a handoff to
    // the blocking pool and back costs far more); flushing to disk can take
    // long on a busy disk, so `sync` and `sync-data` still go to the
    // blocking pool and keep the async workers free.
    for (name, data_only) in [("[method]descriptor.sync", false), ("[method]descriptor.sync-data", true)] {
        i.func_wrap_async(name, move |mut store: StoreContextMut<'_, HostState>, (fd,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let (file, dir) = match store.data_mut().table_mut().get(&fd) {
                    Ok(Descriptor::File(f)) => (f.file.clone(), false),
                    Ok(Descriptor::Dir(d)) => (d.dir.clone(), true),
                    Err(e) => return Err(e.into()),
                };
                let r = tokio::task::spawn_blocking(move || sync_off_thread(&file, dir, data_only))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(format!("sync task failed: {e}"))));
                ret(r.map_err(wasmtime_wasi::p2::FsError::from))
            })
        })?;
    }

    i.func_wrap(
        "filesystem-error-code",
        |mut store: StoreContextMut<'_, HostState>, (err,): (Resource<wasmtime::Error>,)| -> wasmtime::Result<(Option<ErrorCode>,)> {
            let state = store.data_mut();
            if state.table_mut().get(&err)?.downcast_ref::<QuotaExceeded>().is_some() {
                return Ok((Some(ErrorCode::Quota),));
            }
            Ok((state.filesystem().filesystem_error_code(err)?,))
        },
    )?;
    Ok(())
}

/// `fsync`/`fdatasync` of a file, or of a directory through a descriptor of
/// its own (the one the guest holds may not allow syncing).
fn sync_off_thread(file: &std::fs::File, dir: bool, data_only: bool) -> std::io::Result<()> {
    use rustix::fs::{fdatasync, fsync, openat, Mode, OFlags};
    let reopened;
    let fd = if dir {
        reopened = openat(file, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        rustix::fd::AsFd::as_fd(&reopened)
    } else {
        rustix::fd::AsFd::as_fd(file)
    };
    if data_only {
        fdatasync(fd)?;
    } else {
        fsync(fd)?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum WriteMode {
    At(u64),
    Append,
}

/// Replaces the file stream wasmtime-wasi just pushed by one that checks the
/// quota before every write.
fn wrap_stream(
    state: &mut HostState,
    r: FsResult<Resource<DynOutputStream>>,
    file: Option<Arc<std::fs::File>>,
    mode: WriteMode,
) -> FsRet<Resource<DynOutputStream>> {
    let stream = match r {
        Ok(s) => s,
        Err(e) => return ret(Err(e)),
    };
    let Some((file, (ino, _, _))) = file.and_then(|f| ino_of(&f).map(|i| (f, i))) else {
        return Ok((Ok(stream),));
    };
    let table = state.table_mut();
    let inner = table.delete(stream)?;
    let wrapped: DynOutputStream = Box::new(QuotaStream { inner, quota: state.quota.clone(), file, ino, mode });
    let stream = state.table_mut().push(wrapped)?;
    Ok((Ok(stream),))
}

/// A file output stream whose writes are checked against the quota first.
struct QuotaStream {
    inner: DynOutputStream,
    quota: Arc<Quota>,
    file: Arc<std::fs::File>,
    ino: u64,
    mode: WriteMode,
}

impl QuotaStream {
    /// Charges a write of `len` bytes at the stream's position.
    fn charge(&self, len: u64) -> StreamResult<()> {
        let start = match self.mode {
            WriteMode::At(p) => p,
            WriteMode::Append => {
                let now = ino_of(&self.file).map(|(_, _, l)| l).unwrap_or(0);
                now.max(self.quota.charged(self.ino))
            }
        };
        self.quota.grow_to(self.ino, start.saturating_add(len)).map_err(|e| StreamError::LastOperationFailed(wasmtime::Error::new(e)))
    }

    fn advance(&mut self, len: u64) {
        if let WriteMode::At(p) = &mut self.mode {
            *p = p.saturating_add(len);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        let len = bytes.len() as u64;
        self.charge(len)?;
        self.inner.write(bytes)?;
        self.advance(len);
        Ok(())
    }
    async fn blocking_write_and_flush(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        let len = bytes.len() as u64;
        self.charge(len)?;
        self.inner.blocking_write_and_flush(bytes).await?;
        self.advance(len);
        Ok(())
    }
    fn write_zeroes(&mut self, n: usize) -> StreamResult<()> {
        self.charge(n as u64)?;
        self.inner.write_zeroes(n)?;
        self.advance(n as u64);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }
    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for QuotaStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

/// Bytes a call result would take as JSON, estimated from the lifted values
/// without building the JSON; stops counting once past `cap`.
pub(crate) fn result_size(vals: &[wasmtime::component::Val], cap: u64) -> u64 {
    use wasmtime::component::Val;
    let mut total: u64 = 0;
    let mut stack: Vec<&Val> = vals.iter().collect();
    while let Some(v) = stack.pop() {
        if total > cap {
            break;
        }
        total += match v {
            Val::String(s) => s.len() as u64 + 2,
            Val::Char(_) => 6,
            Val::Bool(_) => 5,
            Val::List(items) | Val::Tuple(items) => {
                stack.extend(items.iter());
                items.len() as u64 + 2
            }
            Val::Record(fields) => {
                stack.extend(fields.iter().map(|(_, v)| v));
                fields.iter().map(|(n, _)| n.len() as u64 + 4).sum::<u64>() + 2
            }
            Val::Variant(name, payload) => {
                stack.extend(payload.as_deref());
                name.len() as u64 + 8
            }
            Val::Option(inner) => {
                stack.extend(inner.as_deref());
                4
            }
            Val::Result(r) => {
                match r {
                    Ok(v) | Err(v) => stack.extend(v.as_deref()),
                }
                8
            }
            Val::Enum(name) => name.len() as u64 + 2,
            Val::Flags(names) => names.iter().map(|n| n.len() as u64 + 3).sum::<u64>() + 2,
            _ => 8,
        };
    }
    total
}
