//! The state directory: an exclusive lock naming its holder's pid, the node's
//! ed25519 identity (`node.key` → host peer id) and the API bearer token.
//!
//! Secret files are created 0600 through a temp file, fsync and rename, so a
//! crash never leaves a half-written key; an existing key is never
//! overwritten, whatever is wrong with it.

use crate::ids::PeerId;
use ed25519_dalek::SigningKey;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File names inside the state directory.
pub const LOCK_FILE: &str = "lock";
pub const KEY_FILE: &str = "node.key";
pub const TOKEN_FILE: &str = "api.token";
pub const STORE_FILE: &str = "state.db";
/// Where the running node records its bound API address and pid.
pub const API_ADDR_FILE: &str = "api.addr";

/// Why the state directory cannot be used. All map to exit code 3.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {} is locked by another sysdeploy process ({}); stop that process first, or point --state-dir elsewhere", path.display(), holder(pid))]
    Locked { path: PathBuf, pid: Option<u32> },

    #[error("state directory {} does not exist yet; run `sysdeploy run` once to create it", path.display())]
    Missing { path: PathBuf },

    #[error("state directory {} is not a directory; move that file away or point --state-dir elsewhere", path.display())]
    NotADirectory { path: PathBuf },

    #[error("cannot create state directory {}: {source}; check the permissions of its parent or point --state-dir elsewhere", path.display())]
    Create { path: PathBuf, source: io::Error },

    #[error("cannot lock {}: {source}; the file system must support flock", path.display())]
    Lock { path: PathBuf, source: io::Error },

    #[error("permission denied: cannot {action} {}: {}; this process runs as uid {euid}: run it as the owner, or `chown` the state directory to uid {euid} (with systemd, StateDirectory= does this)", path.display(), describe_owner(.path))]
    PermissionDenied { action: &'static str, path: PathBuf, euid: u32 },

    #[error("node key {} is missing although the state directory exists; restore it from a backup, or run `sysdeploy run` to create a new identity", path.display())]
    KeyMissing { path: PathBuf },

    #[error("the node identity {} is missing but {} records what this node deployed under it: a new key would own none of it (every alias would conflict, nothing would converge); restore node.key from a backup of this state directory (a 32-byte file, mode 0600); to start over as a new node, move the whole state directory away", key.display(), store.display())]
    IdentityMissing { key: PathBuf, store: PathBuf },

    #[error("node key {} has {len} bytes, expected a 32-byte ed25519 seed; it was left untouched: restore it from a backup (the peer id depends on it) or move it away to get a new identity", path.display())]
    KeyWrongSize { path: PathBuf, len: u64 },

    #[error("{} can be read by group or others (mode {mode:03o}) but holds a secret; run `chmod 600 {}` and start again", path.display(), path.display())]
    Permissions { path: PathBuf, mode: u32 },

    #[error("state directory {} is accessible to group or others (mode {mode:03o}) and could not be made private: {source}; it holds the node key and service data: run `chmod 700 {}` as its owner (with systemd, set StateDirectoryMode=0700) and start again", path.display(), path.display())]
    DirPermissions { path: PathBuf, mode: u32, source: io::Error },

    #[error("api token {} is not 64 hex characters; it was left untouched: delete it and run `sysdeploy run` to create a new one", path.display())]
    TokenInvalid { path: PathBuf },

    #[error("api token {} does not exist; the node creates it at its first `sysdeploy run`: start the node, or point --state-dir at its state directory", path.display())]
    TokenMissing { path: PathBuf },

    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
}

/// A state dir that holds a store but lost its key must not be re-keyed:
/// everything in the store is owned by the lost identity.
fn refuse_new_identity_over_a_store(dir: &Path) -> Result<(), StateError> {
    let store = dir.join(STORE_FILE);
    if store.exists() {
        return Err(StateError::IdentityMissing { key: dir.join(KEY_FILE), store });
    }
    Ok(())
}

fn holder(pid: &Option<u32>) -> String {
    match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown: it has not written it yet".into(),
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| denied(action, path, source).unwrap_or_else(|source| StateError::Io { action, path: path.to_path_buf(), source })
}

/// A permission error becomes [`StateError::PermissionDenied`] (naming the
/// owner and mode of `path`, or of its nearest existing ancestor, and our
/// effective uid); any other error is given back.
fn denied(action: &'static str, path: &Path, source: io::Error) -> Result<StateError, io::Error> {
    if source.kind() != io::ErrorKind::PermissionDenied {
        return Err(source);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    Ok(StateError::PermissionDenied { action, path: path.to_path_buf(), euid })
}

/// "owned by uid U, mode M" of `path`, or of the nearest ancestor that can be inspected.
fn describe_owner(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut p = Some(path);
    while let Some(q) = p {
        if let Ok(m) = fs::metadata(q) {
            let what = if q == path { String::new() } else { format!(" (its parent {})", q.display()) };
            return format!("owned by uid {} gid {}, mode {:03o}{what}", m.uid(), m.gid(), m.mode() & 0o7777);
        }
        p = q.parent();
    }
    "its owner and mode cannot be read".to_string()
}

/// An opened state directory. Exclusive handles hold the lock until dropped.
pub struct StateDir {
    path: PathBuf,
    /// Open lock file while we hold the flock; `None` for shared handles.
    /// The kernel drops the lock when this closes or the process dies, so a
    /// crashed node never leaves a stale lock behind.
    lock: Option<File>,
    /// The node identity; host peer id derives from it.
    signing_key: SigningKey,
    peer_id: PeerId,
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("StateDir").field("path", &self.path).field("peer_id", &self.peer_id).field("locked", &self.lock.is_some()).finish()
    }
}

impl StateDir {
    /// Creates the directory (0700) if absent, takes the exclusive lock
    /// (writing our pid into `lock`), and creates `node.key` and `api.token`
    /// if absent. A second process fails fast with [`StateError::Locked`].
    pub fn open_exclusive(path: &Path) -> Result<StateDir, StateError> {
        match fs::metadata(path) {
            Ok(m) if !m.is_dir() => return Err(StateError::NotADirectory { path: path.into() }),
            Ok(m) => make_private(path, m.permissions().mode() & 0o777)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(|source| {
                    denied("create", path, source).unwrap_or_else(|source| StateError::Create { path: path.into(), source })
                })?;
            }
            Err(source) => {
                return Err(denied("inspect", path, source).unwrap_or_else(|source| StateError::Create { path: path.into(), source }))
            }
        }
        let lock = take_lock(&path.join(LOCK_FILE))?;
        let key_path = path.join(KEY_FILE);
        let signing_key = match read_key(&key_path)? {
            Some(k) => k,
            None => {
                refuse_new_identity_over_a_store(path)?;
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| io_err("generate a key for", &key_path)(io::Error::other(e.to_string())))?;
                let written = write_secret(path, KEY_FILE, &seed);
                let key = SigningKey::from_bytes(&seed);
                seed.fill(0);
                written?;
                tracing::info!(path = %key_path.display(), "created a new node identity");
                key
            }
        };
        let token_path = path.join(TOKEN_FILE);
        if !token_path.exists() {
            let mut raw = [0u8; 32];
            getrandom::fill(&mut raw).map_err(|e| io_err("generate a token for", &token_path)(io::Error::other(e.to_string())))?;
            let token = hex::encode(raw);
            raw.fill(0);
            write_secret(path, TOKEN_FILE, token.as_bytes())?;
        }
        let peer_id = PeerId::from_ed25519_public(&signing_key.verifying_key().to_bytes());
        let dir = StateDir { path: path.into(), lock: Some(lock), signing_key, peer_id };
        dir.api_token()?; // a damaged token is reported at boot, not on the first API call
        Ok(dir)
    }

    /// Opens an existing directory without locking or writing anything (for
    /// `plan`, `status`, `config`, `call` while a node may be running).
    pub fn open_shared(path: &Path) -> Result<StateDir, StateError> {
        match fs::metadata(path) {
            Ok(m) if !m.is_dir() => return Err(StateError::NotADirectory { path: path.into() }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StateError::Missing { path: path.into() }),
            Err(source) => return Err(io_err("read", path)(source)),
        }
        let key_path = path.join(KEY_FILE);
        let signing_key = match read_key(&key_path)? {
            Some(k) => k,
            None => {
                refuse_new_identity_over_a_store(path)?;
                return Err(StateError::KeyMissing { path: key_path });
            }
        };
        let peer_id = PeerId::from_ed25519_public(&signing_key.verifying_key().to_bytes());
        Ok(StateDir { path: path.into(), lock: None, signing_key, peer_id })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The host peer id: owner of every system service and spell.
    pub fn peer_id(&self) -> &PeerId {
        &self.peer_id
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// Whether this handle holds the exclusive lock.
    pub fn is_exclusive(&self) -> bool {
        self.lock.is_some()
    }

    /// `<state_dir>/state.db`.
    pub fn store_path(&self) -> PathBuf {
        self.path.join(STORE_FILE)
    }

    /// The API bearer token (64 hex characters), read fresh from `api.token`.
    pub fn api_token(&self) -> Result<String, StateError> {
        read_api_token(&self.path)
    }
}

/// The API bearer token of the state directory `dir`, read from `api.token`
/// alone: what `call`, `reload` and `health` need, so an operator who may
/// read the token (and not `node.key`) can use them. Takes no lock, writes
/// nothing; the token must be 0600 like every secret here.
pub fn read_api_token(dir: &Path) -> Result<String, StateError> {
    let p = dir.join(TOKEN_FILE);
    let f = match File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(match fs::metadata(dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => StateError::Missing { path: dir.into() },
                Ok(m) if !m.is_dir() => StateError::NotADirectory { path: dir.into() },
                _ => StateError::TokenMissing { path: p },
            });
        }
        Err(e) => return Err(io_err("read", &p)(e)),
    };
    check_private(&f, &p)?;
    let mut s = String::new();
    (&f).take(1024).read_to_string(&mut s).map_err(|_| StateError::TokenInvalid { path: p.clone() })?;
    let token = s.trim();
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StateError::TokenInvalid { path: p });
    }
    Ok(token.to_string())
}

/// The running node as the state directory records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningNode {
    /// Pid of the process holding the state-dir lock.
    pub pid: Option<u32>,
    /// Its bound API address, when it serves one (from `api.addr`).
    pub api: Option<std::net::SocketAddr>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ApiAddrRecord {
    addr: std::net::SocketAddr,
    pid: u32,
}

impl StateDir {
    /// Records the bound API address and our pid in `api.addr` (0600,
    /// atomically); only the lock holder does this.
    pub fn write_api_addr(&self, addr: std::net::SocketAddr) -> Result<(), StateError> {
        let rec = serde_json::to_vec(&ApiAddrRecord { addr, pid: std::process::id() }).expect("serialises");
        write_secret(&self.path, API_ADDR_FILE, &rec)
    }

    /// Removes `api.addr` if it is still ours (orderly exit).
    pub fn remove_api_addr(&self) {
        let p = self.path.join(API_ADDR_FILE);
        let ours =
            fs::read(&p).ok().and_then(|b| serde_json::from_slice::<ApiAddrRecord>(&b).ok()).is_some_and(|r| r.pid == std::process::id());
        if ours {
            let _ = fs::remove_file(&p);
        }
    }
}

/// Whether a node runs on the state directory `dir`: some process holds its
/// lock (a killed node's lock dies with it, so a stale `api.addr` is never
/// trusted). Its API address is the one in `api.addr` when that file names
/// the lock holder's pid. Reads only; takes no lock it keeps.
pub fn running_node(dir: &Path) -> Option<RunningNode> {
    let lock = File::open(dir.join(LOCK_FILE)).ok()?;
    match lock.try_lock_shared() {
        // Nobody holds the exclusive lock: no node runs.
        Ok(()) => return None,
        Err(fs::TryLockError::WouldBlock) => {}
        Err(fs::TryLockError::Error(_)) => return None,
    }
    let mut s = String::new();
    let _ = (&lock).take(32).read_to_string(&mut s);
    let pid: Option<u32> = s.trim().parse().ok();
    let api = fs::read(dir.join(API_ADDR_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<ApiAddrRecord>(&b).ok())
        .filter(|r| Some(r.pid) == pid)
        .map(|r| r.addr);
    Some(RunningNode { pid, api })
}

/// Takes the flock on `path` (creating the file), then records our pid in it.
fn take_lock(path: &Path) -> Result<File, StateError> {
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path).map_err(|source| {
        denied("open the lock file", path, source).unwrap_or_else(|source| StateError::Lock { path: path.into(), source })
    })?;
    match f.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut s = String::new();
            let _ = f.take(32).read_to_string(&mut s);
            let pid = s.trim().parse().ok();
            return Err(StateError::Locked { path: path.parent().unwrap_or(path).into(), pid });
        }
        Err(fs::TryLockError::Error(source)) => return Err(StateError::Lock { path: path.into(), source }),
    }
    // Not synced: the pid is only a hint for the error message of a second
    // process (the flock is the lock, and it dies with its holder), so a
    // boot does not pay an fsync for it.
    let record = |f: &mut File| -> io::Result<()> {
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())
    };
    record(&mut f).map_err(io_err("write the pid into", path))?;
    Ok(f)
}

/// An existing state dir that group or others can reach (systemd's
/// `StateDirectory=` creates 0755) is repaired to 0700, with a warning;
/// refused when that is not permitted. Everything inside is created under
/// umask 077 (`cli::main`), so the dir's mode is what guards older files.
fn make_private(path: &Path, mode: u32) -> Result<(), StateError> {
    if mode & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|source| StateError::DirPermissions {
        path: path.into(),
        mode,
        source,
    })?;
    tracing::warn!(
        state_dir = %path.display(),
        "state directory was mode {mode:03o} (group or others could reach the node key and service data); changed it to 0700"
    );
    Ok(())
}

/// Fails unless only the owner can read the file.
fn check_private(f: &File, path: &Path) -> Result<(), StateError> {
    let mode = f.metadata().map_err(io_err("inspect", path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StateError::Permissions { path: path.into(), mode });
    }
    Ok(())
}

/// Reads `node.key`; `None` if it does not exist.
fn read_key(path: &Path) -> Result<Option<SigningKey>, StateError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let len = f.metadata().map_err(io_err("inspect", path))?.len();
    if len != 32 {
        return Err(StateError::KeyWrongSize { path: path.into(), len });
    }
    check_private(&f, path)?;
    let mut seed = [0u8; 32];
    f.read_exact(&mut seed).map_err(io_err("read", path))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(Some(key))
}

/// Writes a 0600 file atomically: temp file, fsync, rename, fsync the dir.
fn write_secret(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dest = dir.join(name);
    let _ = fs::remove_file(&tmp); // left over from a crash mid-write; never the real file
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io_err("write", &tmp))?;
    drop(f);
    fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_private_files_and_keeps_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/state");
        let s = StateDir::open_exclusive(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(TOKEN_FILE)), 0o600);
        assert_eq!(fs::metadata(dir.join(KEY_FILE)).unwrap().len(), 32);
        assert_eq!(fs::read_to_string(dir.join(LOCK_FILE)).unwrap().trim(), std::process::id().to_string());
        let peer = s.peer_id().clone();
        let token = s.api_token().unwrap();
        assert_eq!(token.len(), 64);
        assert!(peer.as_str().starts_with("12D3KooW"));
        drop(s);

        let again = StateDir::open_exclusive(&dir).unwrap();
        assert_eq!(again.peer_id(), &peer);
        assert_eq!(again.api_token().unwrap(), token);
        assert_eq!(again.store_path(), dir.join("state.db"));
        assert!(!dir.join("node.key.tmp").exists());
    }

    #[test]
    fn second_exclusive_open_fails_fast_naming_the_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let first = StateDir::open_exclusive(tmp.path()).unwrap();
        let err = StateDir::open_exclusive(tmp.path()).unwrap_err();
        let me = std::process::id();
        assert!(matches!(err, StateError::Locked { pid: Some(p), .. } if p == me), "{err:?}");
        assert!(err.to_string().contains(&format!("pid {me}")), "{err}");

        let shared = StateDir::open_shared(tmp.path()).unwrap();
        assert_eq!(shared.peer_id(), first.peer_id(), "readers work while a node runs");
        assert!(!shared.is_exclusive());
        drop(first);
        StateDir::open_exclusive(tmp.path()).expect("the lock dies with its holder");
    }

    #[test]
    fn damaged_key_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join(KEY_FILE);
        fs::write(&key, b"short").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let err = StateDir::open_exclusive(tmp.path()).unwrap_err();
        assert!(matches!(err, StateError::KeyWrongSize { len: 5, .. }), "{err:?}");
        assert_eq!(fs::read(&key).unwrap(), b"short");
        assert!(matches!(StateDir::open_shared(tmp.path()), Err(StateError::KeyWrongSize { .. })));
    }

    #[test]
    fn readable_key_is_refused_with_a_fix() {
        let tmp = tempfile::tempdir().unwrap();
        drop(StateDir::open_exclusive(tmp.path()).unwrap());
        let key = tmp.path().join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = StateDir::open_exclusive(tmp.path()).unwrap_err();
        assert!(matches!(err, StateError::Permissions { mode: 0o644, .. }), "{err:?}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn shared_open_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("none");
        assert!(matches!(StateDir::open_shared(&missing), Err(StateError::Missing { .. })));
        assert!(!missing.exists());
        assert!(matches!(StateDir::open_shared(tmp.path()), Err(StateError::KeyMissing { .. })));
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn debug_hides_key_material() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateDir::open_exclusive(tmp.path()).unwrap();
        let seed_hex = hex::encode(fs::read(tmp.path().join(KEY_FILE)).unwrap());
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(&seed_hex) && !dbg.to_lowercase().contains("signing"), "{dbg}");
        assert!(!dbg.contains(&s.api_token().unwrap()));
    }

    #[test]
    fn an_open_state_dir_is_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        drop(StateDir::open_exclusive(&dir).unwrap());
        assert_eq!(mode(&dir), 0o700);
        // Readers never change anything.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        drop(StateDir::open_shared(&dir).unwrap());
        assert_eq!(mode(&dir), 0o750);
    }

    #[test]
    fn a_file_in_place_of_the_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        fs::write(&f, b"x").unwrap();
        assert!(matches!(StateDir::open_exclusive(&f), Err(StateError::NotADirectory { .. })));
    }
}
