//! Writing a snapshot archive from a staged tree (format in `snapshot/mod.rs`).
//!
//! Guest trees are walked with `tree::visit` (fd-relative, `O_NOFOLLOW`): a
//! symlink is archived as a symlink and never followed, a hard link becomes a
//! copy, and a FIFO, socket or device is left out with a warning naming it.
//! A symlink the restore would refuse (absolute, or out of the state dir)
//! is left out the same way: its guest cannot follow it either (WASI confines
//! it to its data dir), and archiving it would make the snapshot unrestorable.

use super::progress::Progress;
use super::stage::{self, StageInfo};
use super::{Entry, EntryKind, Header, Manifest, PartKind, SnapshotError, FOOTER_MAGIC, HEADER_NAME, MANIFEST_NAME, PARTS};
use crate::tree::Found;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What was written.
#[derive(Debug, Clone)]
pub struct Summary {
    pub header: Header,
    /// Entries in the manifest.
    pub entries: u64,
    /// Sum of the archived files' sizes.
    pub file_bytes: u64,
    /// Bytes of the whole archive.
    pub archive_bytes: u64,
    /// blake3 of the whole archive (hex).
    pub blake3: String,
    /// What was left out, each with why.
    pub skipped: Vec<String>,
    pub duration: Duration,
}

/// Streams the archive of the staged tree `staged` into `out`.
pub fn write(staged: &Path, out: &mut dyn Write, progress: &mut dyn Progress) -> Result<Summary, SnapshotError> {
    let started = Instant::now();
    let info = stage::read_info(staged)?;
    // First pass: what will be archived (totals for the header and progress).
    let mut entries = Vec::new();
    let mut skipped = info.skipped.clone();
    walk(staged, &mut |item| {
        match item {
            Item::Skip(why) => skipped.push(why),
            Item::Entry(e, ..) => entries.push(e),
        }
        Ok(())
    })?;
    for s in &skipped {
        tracing::warn!("snapshot: left out {s}");
    }
    let file_bytes: u64 = entries.iter().filter(|e| e.kind == EntryKind::File).map(|e| e.size).sum();
    let header = header(&info, file_bytes, entries.len() as u64);
    progress.start(file_bytes);
    let mut hashed = HashWriter { inner: out, hasher: blake3::Hasher::new(), n: 0 };
    let mut tar = tar::Builder::new(&mut hashed);
    append_json(&mut tar, HEADER_NAME, &header)?;
    // Second pass: stream, hashing each file as it is read.
    let mut written = Vec::with_capacity(entries.len());
    let r = walk(staged, &mut |item| {
        let Item::Entry(mut e, file, mtime) = item else { return Ok(()) };
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime.max(0) as u64);
        match e.kind {
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, &e.path, io::empty())?;
            }
            EntryKind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, &e.path, e.target.as_deref().unwrap_or_default())?;
            }
            EntryKind::File => {
                let file = file.expect("files come with their fd");
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(e.size);
                let mut r = HashRead { inner: (&file).take(e.size), hasher: blake3::Hasher::new(), n: 0, progress: &mut *progress };
                tar.append_data(&mut h, &e.path, &mut r)?;
                if r.n != e.size {
                    return Err(io::Error::other(format!("{} changed size while it was archived", e.path)));
                }
                e.blake3 = Some(r.hasher.finalize().to_hex().to_string());
            }
        }
        written.push(e);
        Ok(())
    });
    if let Err(e) = r {
        progress.finish();
        return Err(e);
    }
    if written.iter().map(|e| (&e.path, e.kind)).ne(entries.iter().map(|e| (&e.path, e.kind))) {
        progress.finish();
        return Err(SnapshotError::Other(format!("staged tree {} changed while it was archived", staged.display())));
    }
    let manifest = Manifest { header: header.clone(), entries: written };
    append_json(&mut tar, MANIFEST_NAME, &manifest)?;
    tar.finish().map_err(write_err)?;
    drop(tar);
    let digest = hashed.hasher.finalize();
    hashed.inner.write_all(FOOTER_MAGIC).map_err(write_err)?;
    hashed.inner.write_all(digest.as_bytes()).map_err(write_err)?;
    hashed.inner.flush().map_err(write_err)?;
    progress.finish();
    let archive_bytes = hashed.n + super::FOOTER_LEN as u64;
    // The blake3 of the whole archive, footer included (what `b3sum FILE` prints).
    let mut whole = hashed.hasher.clone();
    whole.update(FOOTER_MAGIC);
    whole.update(digest.as_bytes());
    Ok(Summary {
        entries: manifest.entries.len() as u64,
        header,
        file_bytes,
        archive_bytes,
        blake3: whole.finalize().to_hex().to_string(),
        skipped,
        duration: started.elapsed(),
    })
}

/// [`write`] into `file`: a temp file beside it (0600: it holds service data,
/// and with identity the node key), fsync, rename, fsync of the directory.
/// Nothing is left at `file` or beside it on failure.
pub fn write_file(staged: &Path, file: &Path, progress: &mut dyn Progress) -> Result<Summary, SnapshotError> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file.file_name().ok_or_else(|| SnapshotError::Refused(format!("{} is not a file name", file.display())))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), super::random_suffix()));
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| SnapshotError::Refused(format!("cannot create the snapshot file in {}: {e}", dir.display())))?;
    let result = (|| {
        let mut w = io::BufWriter::with_capacity(1 << 20, &f);
        let summary = write(staged, &mut w, progress)?;
        w.flush().map_err(SnapshotError::io("write", &tmp))?;
        drop(w);
        f.sync_all().map_err(SnapshotError::io("sync", &tmp))?;
        super::check_interrupted().map_err(SnapshotError::io("write", file))?;
        fs::rename(&tmp, file).map_err(SnapshotError::io("rename into place", file))?;
        fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(SnapshotError::io("sync", &dir))?;
        Ok(summary)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn header(info: &StageInfo, total_bytes: u64, total_entries: u64) -> Header {
    Header {
        format: super::FORMAT_VERSION,
        sysdeploy_version: env!("CARGO_PKG_VERSION").to_string(),
        schema_version: info.schema_version,
        host_peer_id: info.host_peer_id.clone(),
        identity: info.identity,
        engine_key: info.engine_key.clone(),
        created_at: super::now_secs(),
        total_bytes,
        total_entries,
    }
}

fn write_err(e: io::Error) -> SnapshotError {
    SnapshotError::Io { action: "write", path: PathBuf::from("<snapshot>"), source: e }
}

fn append_json<W: Write>(tar: &mut tar::Builder<W>, name: &str, value: &impl serde::Serialize) -> Result<(), SnapshotError> {
    let bytes = serde_json::to_vec(value).expect("serialises");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_size(bytes.len() as u64);
    h.set_mtime(super::now_secs());
    tar.append_data(&mut h, name, &bytes[..]).map_err(write_err)
}

/// One thing the walk met: an entry to archive (files with their open fd;
/// the hash not yet known) with its mtime, or something left out and why.
enum Item {
    Entry(Entry, Option<fs::File>, i64),
    Skip(String),
}

/// Walks the parts of the staged tree in [`PARTS`] order.
fn walk(staged: &Path, f: &mut dyn FnMut(Item) -> io::Result<()>) -> Result<(), SnapshotError> {
    for (name, kind) in PARTS {
        let p = staged.join(name);
        let meta = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SnapshotError::io("inspect", &p)(e)),
        };
        match kind {
            PartKind::File => {
                if !meta.is_file() {
                    f(Item::Skip(format!("{name}: not a regular file"))).map_err(write_err)?;
                    continue;
                }
                let file =
                    fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&p).map_err(SnapshotError::io("open", &p))?;
                let m = file.metadata().map_err(SnapshotError::io("inspect", &p))?;
                let e = Entry {
                    path: name.to_string(),
                    kind: EntryKind::File,
                    mode: m.mode() & 0o7777,
                    size: m.len(),
                    blake3: None,
                    target: None,
                };
                f(Item::Entry(e, Some(file), m.mtime())).map_err(write_err)?;
            }
            PartKind::Dir => {
                if !meta.is_dir() {
                    f(Item::Skip(format!("{name}: not a directory"))).map_err(write_err)?;
                    continue;
                }
                let e =
                    Entry { path: name.to_string(), kind: EntryKind::Dir, mode: meta.mode() & 0o7777, size: 0, blake3: None, target: None };
                f(Item::Entry(e, None, meta.mtime())).map_err(write_err)?;
                crate::tree::visit(&p, &mut |found| f(item(name, found)))?;
            }
        }
    }
    Ok(())
}

/// What to do with one entry of a part's tree.
fn item(part: &str, found: Found<'_>) -> Item {
    let rel = |p: &Path| -> Result<String, Item> {
        match p.to_str() {
            Some(s) => Ok(format!("{part}/{s}")),
            None => Err(Item::Skip(format!("{part}/{}: a name that is not UTF-8 (no WASI guest can make one)", p.display()))),
        }
    };
    let entry = |path, kind, mode, size, target| Entry { path, kind, mode, size, blake3: None, target };
    match found {
        Found::Dir { path, mode, mtime } => match rel(path) {
            Ok(p) => Item::Entry(entry(p, EntryKind::Dir, mode, 0, None), None, mtime),
            Err(skip) => skip,
        },
        Found::File { path, file, mode, size, mtime } => match rel(path) {
            Ok(p) => Item::Entry(entry(p, EntryKind::File, mode, size, None), Some(file), mtime),
            Err(skip) => skip,
        },
        Found::Symlink { path, target } => {
            let p = match rel(path) {
                Ok(p) => p,
                Err(skip) => return skip,
            };
            let Some(t) = target.to_str() else {
                return Item::Skip(format!("{p}: a symlink whose target is not UTF-8"));
            };
            if let Some(why) = super::check_path(&p, EntryKind::Symlink) {
                return Item::Skip(format!("{p}: {why}"));
            }
            if super::link_escapes(Path::new(&p), Path::new(t)) {
                return Item::Skip(format!("{p}: a symlink to {t:?}, outside the state directory (never followed)"));
            }
            Item::Entry(entry(p, EntryKind::Symlink, 0o777, 0, Some(t.to_string())), None, 0)
        }
        Found::Other { path, kind } => Item::Skip(format!("{}/{}: a {kind} (never opened)", part, path.display())),
    }
}

/// Counts and hashes what passes through; the footer covers every byte.
struct HashWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: blake3::Hasher,
    n: u64,
}

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes a file's bytes as the tar builder reads them, reporting progress.
struct HashRead<'p, R> {
    inner: R,
    hasher: blake3::Hasher,
    n: u64,
    progress: &'p mut dyn Progress,
}

impl<R: Read> Read for HashRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        super::check_interrupted()?;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }
}
