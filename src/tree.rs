//! The one walker for every host operation on a guest's directory tree
//! (copy, remove, sync, usage). A guest may be running and rewriting its tree
//! while the host walks it, so the walker:
//!
//! - resolves one name at a time, relative to a directory fd it holds
//!   (`openat` with `O_NOFOLLOW`), never a path, so no `PATH_MAX` limit and no
//!   symlink is ever followed (symlinks are copied as symlinks);
//! - checks every opened fd with `fstat` against what the listing said
//!   (type and inode); a mismatch means the entry was swapped, and the entry
//!   is classified again (`fstatat` without following) before it is used;
//! - is iterative: an explicit stack of pending names, at most a few fds open
//!   at any depth; going back up is `openat(fd, "..")` checked against the
//!   device and inode remembered on the way down;
//! - copies sparse files sparsely (`SEEK_DATA`/`SEEK_HOLE`, `copy_file_range`)
//!   and hard links as hard links.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom, Stat, CWD};
use rustix::io::Errno;
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Attempts to classify and open one entry that keeps changing under the
/// walker before the walk gives up with [`TreeError::Changed`].
const ATTEMPTS: usize = 4;

/// Why a walk failed. Nothing outside the walked tree was read or written.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{root}: {op} {at}: {source}")]
    Io {
        root: PathBuf,
        /// Where in the tree, relative to `root` (elided when deep).
        at: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{root}: {at} kept changing while it was walked ({what}); it was not followed, try again when its service is idle")]
    Changed { root: PathBuf, at: String, what: &'static str },
}

/// Bytes (allocated blocks) and inodes of a tree, hard links counted once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Copies the tree at `src` into `dst` (created if absent; existing entries
/// of the same name are replaced). Safe while a guest rewrites `src`.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), TreeError> {
    copy_tree_reporting(src, dst).map(|_| ())
}

/// [`copy_tree`], returning what was not copied: each FIFO, socket or
/// device, by its path relative to `src` and its kind.
pub fn copy_tree_reporting(src: &Path, dst: &Path) -> Result<Vec<(PathBuf, &'static str)>, TreeError> {
    // `dst` is the host's own path (a new service's data dir), not the guest's.
    std::fs::create_dir_all(dst).map_err(|e| io_err(dst, "creating", String::new(), e))?;
    let root = open_dir(CWD, dst).map_err(|e| io_err(dst, "opening", String::new(), e))?;
    let mut copy = Copier {
        dst: None,
        dst_ids: Vec::new(),
        dirs: vec![(usize::MAX, CString::default())],
        here: 0,
        links: HashMap::new(),
        root_fd: root,
        skipped: Vec::new(),
    };
    match walk(src, &mut copy) {
        Err(TreeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound && !src.exists() => Ok(Vec::new()),
        r => r.map(|()| copy.skipped),
    }
}

/// Removes the tree at `path`; `Ok(false)` when there was nothing. Safe
/// against symlinks inside (they are unlinked, never followed) and at any depth.
pub fn remove_tree(path: &Path) -> Result<bool, TreeError> {
    let (parent, name) = split(path)?;
    let parent_fd = match open_dir(CWD, parent) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(io_err(path, "opening the parent of", String::new(), e)),
    };
    let top = match open_dir(&parent_fd, &name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(false),
        Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
            return unlink(&parent_fd, &name, AtFlags::empty()).map(|_| true).map_err(|e| io_err(path, "removing", String::new(), e));
        }
        Err(e) => return Err(io_err(path, "opening", String::new(), e)),
    };
    let mut names = Names::default();
    let err = |names: &Names, op, e| io_err(path, op, names.show(), e);
    let mut stack =
        vec![Frame { name: name.clone(), id: id(&fstat(&top).map_err(|e| err(&names, "stat", e))?), pending: Vec::new(), relisted: 0 }];
    stack[0].pending = list(&top).map_err(|e| err(&names, "listing", e))?;
    let mut cur = top;
    loop {
        let top = stack.last_mut().expect("the root frame is popped last");
        if let Some(entry) = top.pending.pop() {
            names.push(&entry.name);
            if entry.kind != FileType::Directory {
                match unlink(&cur, &entry.name, AtFlags::empty()) {
                    Ok(_) => {
                        names.pop();
                        continue;
                    }
                    // Listed as a file, a directory now (or unknown type): descend.
                    Err(Errno::ISDIR) | Err(Errno::PERM) => {}
                    Err(e) => return Err(err(&names, "removing", e)),
                }
            }
            match open_dir(&cur, &entry.name) {
                Ok(fd) => {
                    let st = fstat(&fd).map_err(|e| err(&names, "stat", e))?;
                    let pending = list(&fd).map_err(|e| err(&names, "listing", e))?;
                    stack.push(Frame { name: entry.name, id: id(&st), pending, relisted: 0 });
                    cur = fd;
                }
                Err(Errno::NOENT) => names.pop(),
                // Swapped for a file or a symlink after the listing: unlink it, never follow.
                Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                    unlink(&cur, &entry.name, AtFlags::empty()).map_err(|e| err(&names, "removing", e))?;
                    names.pop();
                }
                Err(e) => return Err(err(&names, "opening", e)),
            }
            continue;
        }
        // Every listed entry is gone: remove the directory itself from its parent.
        let frame = stack.pop().expect("checked above");
        let parent = match stack.last() {
            Some(up) => up_checked(&cur, up.id).map_err(|e| e.at(path, &names))?,
            None => parent_fd.try_clone().map_err(|e| io_err(path, "duplicating", names.show(), e))?,
        };
        match unlink(&parent, &frame.name, AtFlags::REMOVEDIR) {
            Ok(_) => {}
            // Something was created after the listing: list again (bounded).
            Err(Errno::NOTEMPTY) | Err(Errno::EXIST) if frame.relisted < ATTEMPTS as u8 => {
                let pending = list(&cur).map_err(|e| err(&names, "listing", e))?;
                stack.push(Frame { relisted: frame.relisted + 1, pending, ..frame });
                continue;
            }
            Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => {
                return Err(TreeError::Changed { root: path.into(), at: names.show(), what: "entries kept appearing while it was removed" })
            }
            Err(e) => return Err(err(&names, "removing", e)),
        }
        if stack.is_empty() {
            return Ok(true);
        }
        names.pop();
        cur = parent;
    }
}

/// `fsync`s every regular file and directory of the tree at `path`
/// (directories after their entries), so a copy is durable before it is used.
pub fn sync_tree(path: &Path) -> Result<(), TreeError> {
    struct Sync;
    impl Visit for Sync {
        fn file(&mut self, _: &CStr, fd: OwnedFd, _: &Stat) -> rustix::io::Result<()> {
            rustix::fs::fsync(fd)
        }
        fn leave(&mut self, dir: BorrowedFd<'_>, _: &Stat, _: bool) -> Result<(), Up> {
            rustix::fs::fsync(dir).map_err(Up::Io)
        }
    }
    walk(path, &mut Sync)
}

/// Allocated bytes and inodes of the tree at `path` (hard links once).
pub fn usage(path: &Path) -> Result<Usage, TreeError> {
    #[derive(Default)]
    struct Count {
        usage: Usage,
        seen: std::collections::HashSet<(u64, u64)>,
    }
    impl Count {
        fn add(&mut self, st: &Stat) {
            let linked = st.st_nlink > 1 && FileType::from_raw_mode(st.st_mode) != FileType::Directory;
            if linked && !self.seen.insert(id(st)) {
                return;
            }
            self.usage.inodes += 1;
            self.usage.bytes += st.st_blocks as u64 * 512;
        }
    }
    impl Visit for Count {
        fn enter(&mut self, _: &CStr, st: &Stat) -> rustix::io::Result<()> {
            self.add(st);
            Ok(())
        }
        fn file(&mut self, _: &CStr, _: OwnedFd, st: &Stat) -> rustix::io::Result<()> {
            self.add(st);
            Ok(())
        }
        fn symlink(&mut self, _: &CStr, _: &CStr, st: &Stat) -> rustix::io::Result<()> {
            self.add(st);
            Ok(())
        }
        fn leave(&mut self, _: BorrowedFd<'_>, st: &Stat, root: bool) -> Result<(), Up> {
            if root {
                self.add(st);
            }
            Ok(())
        }
    }
    let mut c = Count::default();
    walk(path, &mut c)?;
    Ok(c.usage)
}

/// One entry met by [`visit`], named by its path relative to the walk's root
/// (never the root itself). A directory is met before its entries.
#[derive(Debug)]
pub enum Found<'a> {
    Dir {
        path: &'a Path,
        mode: u32,
        mtime: i64,
    },
    /// `file` is the entry itself, opened without following; `size` is its
    /// length when opened (read at most that much: a guest may append).
    File {
        path: &'a Path,
        file: std::fs::File,
        mode: u32,
        size: u64,
        mtime: i64,
    },
    /// The link's target as stored; never followed.
    Symlink {
        path: &'a Path,
        target: &'a OsStr,
    },
    /// A FIFO, socket or device: never opened. `kind` names it.
    Other {
        path: &'a Path,
        kind: &'static str,
    },
}

/// Walks the tree at `root` read-only with the same safety as the rest of
/// this module (fd-relative, `O_NOFOLLOW`, checked `..`), handing each entry
/// to `f`. An error from `f` stops the walk and is returned as the walk's.
pub fn visit(root: &Path, f: &mut dyn FnMut(Found<'_>) -> std::io::Result<()>) -> Result<(), TreeError> {
    struct Visitor<'f> {
        path: PathBuf,
        f: &'f mut dyn FnMut(Found<'_>) -> std::io::Result<()>,
        /// The callback's own error, kept whole (the walk only carries an errno).
        failed: Option<std::io::Error>,
    }
    impl Visitor<'_> {
        /// The callback's result; its error is kept whole, the walk gets its errno.
        fn done(&mut self, r: std::io::Result<()>) -> rustix::io::Result<()> {
            r.map_err(|e| {
                let errno = e.raw_os_error().map(Errno::from_raw_os_error).unwrap_or(Errno::IO);
                self.failed = Some(e);
                errno
            })
        }
    }
    fn child(v: &mut Visitor<'_>, name: &CStr) {
        v.path.push(OsStr::from_bytes(name.to_bytes()));
    }
    impl Visit for Visitor<'_> {
        fn enter(&mut self, name: &CStr, st: &Stat) -> rustix::io::Result<()> {
            child(self, name);
            let (mode, mtime) = (st.st_mode & 0o7777, st.st_mtime as i64);
            let r = (self.f)(Found::Dir { path: &self.path, mode, mtime });
            self.done(r)
        }
        fn leave(&mut self, _: BorrowedFd<'_>, _: &Stat, root: bool) -> Result<(), Up> {
            if !root {
                self.path.pop();
            }
            Ok(())
        }
        fn file(&mut self, name: &CStr, fd: OwnedFd, st: &Stat) -> rustix::io::Result<()> {
            child(self, name);
            let (mode, size, mtime) = (st.st_mode & 0o7777, st.st_size as u64, st.st_mtime as i64);
            let r = (self.f)(Found::File { path: &self.path, file: std::fs::File::from(fd), mode, size, mtime });
            let r = self.done(r);
            self.path.pop();
            r
        }
        fn symlink(&mut self, name: &CStr, target: &CStr, _: &Stat) -> rustix::io::Result<()> {
            child(self, name);
            let target = OsStr::from_bytes(target.to_bytes());
            let r = (self.f)(Found::Symlink { path: &self.path, target });
            let r = self.done(r);
            self.path.pop();
            r
        }
        fn other(&mut self, name: &CStr, kind: FileType) -> rustix::io::Result<()> {
            child(self, name);
            let kind = kind_name(kind);
            let r = (self.f)(Found::Other { path: &self.path, kind });
            let r = self.done(r);
            self.path.pop();
            r
        }
    }
    let mut v = Visitor { path: PathBuf::new(), f, failed: None };
    let walked = walk(root, &mut v);
    match v.failed {
        Some(e) => Err(TreeError::Io { root: root.into(), at: String::new(), op: "visiting", source: e }),
        None => walked,
    }
}

/// What a FIFO, socket or device is called in messages.
fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "special file",
    }
}

/// What a walk does with what it finds. Names are single components of the
/// directory the walk is in; `enter`/`leave` bracket a subdirectory.
trait Visit {
    fn enter(&mut self, _name: &CStr, _st: &Stat) -> rustix::io::Result<()> {
        Ok(())
    }
    /// The current directory's entries are done; `root` for the last call.
    fn leave(&mut self, _dir: BorrowedFd<'_>, _st: &Stat, _root: bool) -> Result<(), Up> {
        Ok(())
    }
    fn file(&mut self, _name: &CStr, _fd: OwnedFd, _st: &Stat) -> rustix::io::Result<()> {
        Ok(())
    }
    fn symlink(&mut self, _name: &CStr, _target: &CStr, _st: &Stat) -> rustix::io::Result<()> {
        Ok(())
    }
    /// A FIFO, socket or device: never opened.
    fn other(&mut self, _name: &CStr, _kind: FileType) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// Failure of a step that goes back up a level.
enum Up {
    Io(Errno),
    /// `..` is not the directory we came from: the tree was moved meanwhile.
    Moved,
}

impl Up {
    fn at(self, root: &Path, names: &Names) -> TreeError {
        match self {
            Up::Io(e) => io_err(root, "going up from", names.show(), e),
            Up::Moved => TreeError::Changed { root: root.into(), at: names.show(), what: "its directory was moved" },
        }
    }
}

/// A directory on the walker's stack: its name in its parent, its identity
/// (to check `..` against on the way back up) and the entries not yet done.
struct Frame {
    name: CString,
    id: (u64, u64),
    pending: Vec<Entry>,
    relisted: u8,
}

/// One name from a listing, with the type and inode the listing gave.
struct Entry {
    name: CString,
    kind: FileType,
    ino: u64,
}

/// What an entry turned out to be once opened without following.
enum Opened {
    Dir(OwnedFd, Stat),
    File(OwnedFd, Stat),
    Symlink(CString, Stat),
    /// A FIFO, socket or device: never opened, never copied.
    Other(FileType),
    /// Deleted between the listing and the open.
    Gone,
}

/// The read-only walk behind copy, sync and usage.
fn walk(root: &Path, v: &mut impl Visit) -> Result<(), TreeError> {
    let mut names = Names::default();
    let err = |names: &Names, op, e| io_err(root, op, names.show(), e);
    let top = open_dir(CWD, root).map_err(|e| err(&names, "opening", e))?;
    let st = fstat(&top).map_err(|e| err(&names, "stat", e))?;
    let pending = list(&top).map_err(|e| err(&names, "listing", e))?;
    let mut stack = vec![(Frame { name: CString::default(), id: id(&st), pending, relisted: 0 }, st)];
    let mut cur = top;
    loop {
        let (frame, _) = stack.last_mut().expect("the root frame is popped last");
        if let Some(entry) = frame.pending.pop() {
            names.push(&entry.name);
            // The window a racing guest aims at: listed, not yet opened.
            fail::fail_point!("tree::walk::listed");
            match open_entry(&cur, &entry).map_err(|e| match e {
                Some(e) => err(&names, "opening", e),
                None => TreeError::Changed { root: root.into(), at: names.show(), what: "its type kept changing" },
            })? {
                Opened::Dir(fd, st) => {
                    v.enter(&entry.name, &st).map_err(|e| err(&names, "creating", e))?;
                    let pending = list(&fd).map_err(|e| err(&names, "listing", e))?;
                    stack.push((Frame { name: entry.name, id: id(&st), pending, relisted: 0 }, st));
                    cur = fd;
                    continue;
                }
                Opened::File(fd, st) => v.file(&entry.name, fd, &st).map_err(|e| err(&names, "copying", e))?,
                Opened::Symlink(target, st) => v.symlink(&entry.name, &target, &st).map_err(|e| err(&names, "copying symlink", e))?,
                Opened::Other(kind) => v.other(&entry.name, kind).map_err(|e| err(&names, "visiting", e))?,
                Opened::Gone => {}
            }
            names.pop();
            continue;
        }
        let (_, st) = stack.pop().expect("checked above");
        let is_root = stack.is_empty();
        v.leave(cur.as_fd(), &st, is_root).map_err(|e| e.at(root, &names))?;
        if is_root {
            return Ok(());
        }
        cur = up_checked(&cur, stack.last().expect("not root").0.id).map_err(|e| e.at(root, &names))?;
        names.pop();
    }
}

/// Opens `entry` in `dir` without following a symlink and checks the fd
/// against what the listing said; if the entry was swapped, classifies it
/// again from `fstatat` (no follow) and retries. `Err(None)`: still changing
/// after [`ATTEMPTS`].
fn open_entry(dir: &OwnedFd, entry: &Entry) -> Result<Opened, Option<Errno>> {
    let (mut kind, mut ino) = (entry.kind, Some(entry.ino));
    for _ in 0..ATTEMPTS {
        if kind == FileType::Unknown {
            match rustix::fs::statat(dir, entry.name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => (kind, ino) = (FileType::from_raw_mode(st.st_mode), Some(st.st_ino)),
                Err(Errno::NOENT) => return Ok(Opened::Gone),
                Err(e) => return Err(Some(e)),
            }
        }
        let flags = match kind {
            FileType::Directory => OFlags::DIRECTORY,
            FileType::RegularFile => OFlags::NONBLOCK | OFlags::NOCTTY,
            FileType::Symlink => {
                match rustix::fs::readlinkat(dir, entry.name.as_c_str(), Vec::new()) {
                    Ok(target) => {
                        // The inode the target was read from must be the one listed.
                        let st = rustix::fs::statat(dir, entry.name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(Some)?;
                        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink && ino.is_none_or(|i| i == st.st_ino) {
                            return Ok(Opened::Symlink(target, st));
                        }
                    }
                    Err(Errno::NOENT) => return Ok(Opened::Gone),
                    Err(Errno::INVAL) => {}
                    Err(e) => return Err(Some(e)),
                }
                (kind, ino) = (FileType::Unknown, None);
                continue;
            }
            other => return Ok(Opened::Other(other)),
        };
        match rustix::fs::openat(dir, entry.name.as_c_str(), flags | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => {
                let st = fstat(&fd).map_err(Some)?;
                let is = FileType::from_raw_mode(st.st_mode);
                if is == kind && ino.is_none_or(|i| i == st.st_ino) {
                    return Ok(if is == FileType::Directory { Opened::Dir(fd, st) } else { Opened::File(fd, st) });
                }
            }
            Err(Errno::NOENT) => return Ok(Opened::Gone),
            // A symlink (O_NOFOLLOW) or a non-directory now: look again.
            Err(Errno::LOOP) | Err(Errno::NOTDIR) | Err(Errno::NXIO) => {}
            Err(e) => return Err(Some(e)),
        }
        (kind, ino) = (FileType::Unknown, None);
    }
    Err(None)
}

/// Builds the copy in the destination while [`walk`] reads the source.
struct Copier {
    /// The destination directory matching the walk's current directory
    /// (`None` = the root, held in `root_fd`).
    dst: Option<OwnedFd>,
    /// Identities of the destination directories above `dst`.
    dst_ids: Vec<(u64, u64)>,
    /// Every destination directory created: (parent index, name), so a later
    /// hard link can find the directory of the first copy of its inode.
    dirs: Vec<(usize, CString)>,
    /// Index in `dirs` of `dst`.
    here: usize,
    /// Source inodes with more than one link → where their first copy is.
    links: HashMap<(u64, u64), (usize, CString)>,
    root_fd: OwnedFd,
    /// FIFOs, sockets and devices met (never copied): path below the root, kind.
    skipped: Vec<(PathBuf, &'static str)>,
}

impl Copier {
    fn dst(&self) -> BorrowedFd<'_> {
        self.dst.as_ref().unwrap_or(&self.root_fd).as_fd()
    }

    /// The path below the root of `name` in destination directory `index`.
    fn path_of(&self, index: usize, name: &CStr) -> PathBuf {
        let mut chain = vec![name];
        let mut i = index;
        while i != 0 {
            chain.push(&self.dirs[i].1);
            i = self.dirs[i].0;
        }
        chain.iter().rev().map(|n| OsStr::from_bytes(n.to_bytes())).collect()
    }

    /// Opens destination directory `index` by walking down from the root.
    fn open_index(&self, index: usize) -> rustix::io::Result<OwnedFd> {
        let mut chain = Vec::new();
        let mut i = index;
        while i != 0 {
            chain.push(&self.dirs[i].1);
            i = self.dirs[i].0;
        }
        let mut fd = open_dir(&self.root_fd, c".")?;
        for name in chain.into_iter().rev() {
            fd = open_dir(&fd, name)?;
        }
        Ok(fd)
    }
}

impl Visit for Copier {
    fn enter(&mut self, name: &CStr, st: &Stat) -> rustix::io::Result<()> {
        match rustix::fs::mkdirat(self.dst(), name, Mode::from_raw_mode(st.st_mode & 0o777 | 0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        let fd = open_dir(self.dst(), name)?;
        self.dst_ids.push(id(&fstat(self.dst())?));
        self.dirs.push((self.here, name.to_owned()));
        self.here = self.dirs.len() - 1;
        self.dst = Some(fd);
        Ok(())
    }

    fn leave(&mut self, _: BorrowedFd<'_>, st: &Stat, root: bool) -> Result<(), Up> {
        let dst = self.dst();
        rustix::fs::fchmod(dst, Mode::from_raw_mode(st.st_mode & 0o777)).map_err(Up::Io)?;
        rustix::fs::futimens(dst, &times(st)).map_err(Up::Io)?;
        if root {
            return Ok(());
        }
        let expected = self.dst_ids.pop().expect("entered before");
        self.here = self.dirs[self.here].0;
        self.dst = if self.dst_ids.is_empty() { None } else { Some(up_checked(self.dst.as_ref().expect("below root"), expected)?) };
        Ok(())
    }

    fn file(&mut self, name: &CStr, src: OwnedFd, st: &Stat) -> rustix::io::Result<()> {
        let key = id(st);
        if st.st_nlink > 1 {
            if let Some((index, first)) = self.links.get(&key) {
                let dir = if *index == self.here { None } else { Some(self.open_index(*index)?) };
                let from = dir.as_ref().map(|d| d.as_fd()).unwrap_or(self.dst());
                let _ = unlink(self.dst(), name, AtFlags::empty());
                return rustix::fs::linkat(from, first.as_c_str(), self.dst(), name, AtFlags::empty());
            }
        }
        let out = rustix::fs::openat(
            self.dst(),
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(st.st_mode & 0o777),
        )?;
        copy_sparse(&src, &out, st.st_size as u64)?;
        rustix::fs::fchmod(&out, Mode::from_raw_mode(st.st_mode & 0o777))?;
        rustix::fs::futimens(&out, &times(st))?;
        if st.st_nlink > 1 {
            self.links.insert(key, (self.here, name.to_owned()));
        }
        Ok(())
    }

    fn other(&mut self, name: &CStr, kind: FileType) -> rustix::io::Result<()> {
        self.skipped.push((self.path_of(self.here, name), kind_name(kind)));
        Ok(())
    }

    fn symlink(&mut self, name: &CStr, target: &CStr, _: &Stat) -> rustix::io::Result<()> {
        match rustix::fs::symlinkat(target, self.dst(), name) {
            Err(Errno::EXIST) => {
                unlink(self.dst(), name, AtFlags::empty())?;
                rustix::fs::symlinkat(target, self.dst(), name)
            }
            r => r,
        }
    }
}

impl From<Errno> for Up {
    fn from(e: Errno) -> Self {
        Up::Io(e)
    }
}

/// Copies the first `size` bytes of `src` into `out`, data ranges only:
/// holes stay holes. Bounded by `size`, so a guest appending meanwhile
/// cannot make the copy run forever.
fn copy_sparse(src: &OwnedFd, out: &OwnedFd, size: u64) -> rustix::io::Result<()> {
    let mut off = 0;
    while off < size {
        let data = match rustix::fs::seek(src, SeekFrom::Data(off)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break,
            // No SEEK_DATA on this filesystem: everything is data.
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => off,
            Err(e) => return Err(e),
        };
        if data >= size {
            break;
        }
        let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => size,
            Err(e) => return Err(e),
        };
        copy_range(src, out, data, hole)?;
        off = hole.max(data + 1);
    }
    rustix::fs::ftruncate(out, size)
}

fn copy_range(src: &OwnedFd, out: &OwnedFd, from: u64, to: u64) -> rustix::io::Result<()> {
    let (mut i, mut o) = (from, from);
    while i < to {
        let len = (to - i).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut i), out, Some(&mut o), len) {
            Ok(0) => return Ok(()), // the file shrank meanwhile
            Ok(_) => {}
            Err(Errno::XDEV) | Err(Errno::NOSYS) | Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => return copy_range_rw(src, out, i, to),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `copy_range` where `copy_file_range` is not available.
fn copy_range_rw(src: &OwnedFd, out: &OwnedFd, mut at: u64, to: u64) -> rustix::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    while at < to {
        let want = ((to - at) as usize).min(buf.len());
        let n = rustix::io::pread(src, &mut buf[..want], at)?;
        if n == 0 {
            return Ok(());
        }
        let mut done = 0;
        while done < n {
            done += rustix::io::pwrite(out, &buf[done..n], at + done as u64)?;
        }
        at += n as u64;
    }
    Ok(())
}

/// Every entry of a directory but `.` and `..`, in reverse listing order
/// (the walk pops from the end).
fn list(dir: &OwnedFd) -> rustix::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let name = e.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        out.push(Entry { name: name.to_owned(), kind: e.file_type(), ino: e.ino() });
    }
    out.reverse();
    Ok(out)
}

fn open_dir<Fd: AsFd, P: rustix::path::Arg>(dir: Fd, name: P) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
}

/// The parent of `dir`, which must be the directory whose identity is `expected`.
fn up_checked(dir: &OwnedFd, expected: (u64, u64)) -> Result<OwnedFd, Up> {
    let up = open_dir(dir, c"..")?;
    if id(&fstat(&up)?) != expected {
        return Err(Up::Moved);
    }
    Ok(up)
}

fn fstat(fd: impl AsFd) -> rustix::io::Result<Stat> {
    rustix::fs::fstat(fd)
}

fn unlink(dir: impl AsFd, name: &CStr, flags: AtFlags) -> rustix::io::Result<()> {
    match rustix::fs::unlinkat(dir, name, flags) {
        Err(Errno::NOENT) => Ok(()),
        r => r,
    }
}

fn id(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

fn times(st: &Stat) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: st.st_atime as _, tv_nsec: st.st_atime_nsec as _ },
        last_modification: rustix::fs::Timespec { tv_sec: st.st_mtime as _, tv_nsec: st.st_mtime_nsec as _ },
    }
}

fn split(path: &Path) -> Result<(&Path, CString), TreeError> {
    let bad = || io_err(path, "removing", String::new(), Errno::INVAL);
    let name = path.file_name().ok_or_else(bad)?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok((parent, CString::new(name.as_bytes()).map_err(|_| bad())?))
}

fn io_err(root: &Path, op: &'static str, at: String, e: impl Into<std::io::Error>) -> TreeError {
    TreeError::Io { root: root.into(), at, op, source: e.into() }
}

/// The names from the walk's root to where it is, for error messages only.
#[derive(Default)]
struct Names(Vec<CString>);

impl Names {
    fn push(&mut self, n: &CStr) {
        self.0.push(n.to_owned());
    }
    fn pop(&mut self) {
        self.0.pop();
    }
    /// `a/b/c`, or `a/b/…(N levels)…/x/y/z` when deep.
    fn show(&self) -> String {
        let s = |n: &CString| OsStr::from_bytes(n.to_bytes()).to_string_lossy().into_owned();
        let all: Vec<String> = self.0.iter().map(s).collect();
        if all.is_empty() {
            return ".".into();
        }
        if all.len() <= 8 {
            return all.join("/");
        }
        format!("{}/…({} levels)…/{}", all[..2].join("/"), all.len() - 5, all[all.len() - 3..].join("/"))
    }
}
