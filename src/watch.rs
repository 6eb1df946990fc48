//! `node.watch_config`: the node reloads by itself when its config file (or
//! a secret file the config names) changes — the same reload SIGHUP and
//! `POST /v1/reload` ask for, through the control loop's request channel.
//!
//! Polling, not inotify: every [`POLL`] each watched path is resolved
//! (following symlinks) and fingerprinted by its target's path, device,
//! inode, mtime, length and blake3 of its contents. That sees an in-place
//! write, an editor's rename-over, and Kubernetes' ConfigMap/Secret update
//! (the mounted name is a symlink through `..data`, which the kubelet swaps
//! atomically to a new directory: the file itself is never written, so an
//! inotify watch on it sees nothing), on any file system (overlayfs, NFS,
//! tmpfs), with no new dependency and no watch descriptors to re-arm.
//! Hashing a config file twice a second costs microseconds.
//!
//! Debounce: a change is acted on only once two consecutive polls agree,
//! so a file written in several steps is reloaded once, complete. A reload
//! the loop cannot take yet (`booting`, `busy`) is asked again at the next
//! poll; a refused one (invalid config) is not retried until the file
//! changes again.

use crate::api::{BoxFuture, ReloadError};
use crate::config::{EffectiveConfig, LoadOptions, Source};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The config key that turns the watcher on (default false; restart-only).
pub const KEY: &str = "node.watch_config";

/// How often the watched files are looked at.
pub const POLL: Duration = Duration::from_millis(500);

/// Larger files are fingerprinted by their metadata alone.
const MAX_HASHED: u64 = 16 << 20;

/// Asks the control loop for a reload and waits for its answer.
pub type AskReload = Box<dyn Fn() -> BoxFuture<'static, Result<serde_json::Value, ReloadError>> + Send + Sync>;

/// The files to watch now: the config file and the secret files the running
/// config was read from (they can change with a reload).
pub type Paths = Box<dyn Fn() -> Vec<PathBuf> + Send + Sync>;

/// What one watched path looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Present {
        target: PathBuf,
        dev: u64,
        ino: u64,
        mtime_ns: i128,
        len: u64,
        hash: Option<[u8; 32]>,
    },
    /// Missing or unreadable: the error kind.
    Absent(std::io::ErrorKind),
}

/// Every watched path with its state, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(PathBuf, State)>);

impl Fingerprint {
    fn take(paths: &[PathBuf]) -> Self {
        Fingerprint(paths.iter().map(|p| (p.clone(), state(p))).collect())
    }
    fn same_paths(&self, other: &Fingerprint) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| a.0 == b.0)
    }
    /// The paths whose state differs from `other`'s.
    fn changed(&self, other: &Fingerprint) -> Vec<String> {
        self.0.iter().zip(&other.0).filter(|(a, b)| a.1 != b.1).map(|(a, _)| a.0.display().to_string()).collect()
    }
}

fn state(path: &Path) -> State {
    let read = || -> std::io::Result<State> {
        let target = std::fs::canonicalize(path)?;
        let m = std::fs::metadata(&target)?;
        let hash = if m.is_file() && m.len() <= MAX_HASHED { Some(*blake3::hash(&std::fs::read(&target)?).as_bytes()) } else { None };
        let mtime_ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
        Ok(State::Present { target, dev: m.dev(), ino: m.ino(), mtime_ns, len: m.len(), hash })
    };
    read().unwrap_or_else(|e| State::Absent(e.kind()))
}

/// Whether `node.watch_config` is on.
pub fn enabled(cfg: &EffectiveConfig) -> bool {
    cfg.get(KEY).and_then(|v| v.value.as_bool()).unwrap_or(false)
}

/// The config file the node was started with, then every secret file the
/// config `cfg` was read from (a Kubernetes Secret is updated like a
/// ConfigMap).
pub fn watched_paths(opts: &LoadOptions, cfg: &EffectiveConfig) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = opts.config_path.iter().cloned().collect();
    for e in cfg.entries() {
        if let Source::SecretFile { path, .. } = e.source {
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    out
}

/// A watcher whose baseline was taken when it was made: changes after that
/// moment are reloaded once [`Watcher::spawn`] runs it.
pub struct Watcher {
    baseline: Fingerprint,
}

impl Watcher {
    /// Takes the baseline of `paths` now (as early as possible after the
    /// config was loaded, so an edit during boot is not missed). `None` when
    /// there is nothing to watch.
    pub fn new(paths: &[PathBuf]) -> Option<Watcher> {
        if paths.is_empty() {
            return None;
        }
        Some(Watcher { baseline: Fingerprint::take(paths) })
    }

    /// The watched paths, for the log.
    pub fn describe(&self) -> String {
        self.baseline.0.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Polls `paths()` until the control loop stops taking requests, asking
    /// `ask` for a reload after each settled change. Abort the task to stop
    /// it sooner.
    pub fn spawn(self, paths: Paths, ask: AskReload) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(paths, ask))
    }

    async fn run(self, paths: Paths, ask: AskReload) {
        let paths = std::sync::Arc::new(paths);
        let mut applied = self.baseline;
        let mut seen = applied.clone();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let p = paths.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || Fingerprint::take(&p())).await else { return };
            if now != seen {
                // Changed since the last poll: wait until it settles.
                seen = now;
                continue;
            }
            if now == applied {
                continue;
            }
            if !now.same_paths(&applied) {
                // A reload changed which secret files the config names; they
                // were read by that reload.
                applied = now;
                continue;
            }
            tracing::info!(changed = %now.changed(&applied).join(", "), "config changed (node.watch_config): reloading");
            match ask().await {
                Ok(_) => applied = now,
                // The loop cannot take it yet: ask again at the next poll.
                Err(ReloadError::Booting | ReloadError::Busy) => {}
                Err(ReloadError::ShuttingDown(_)) => return,
                // Refused or failed: the control loop logged and recorded
                // why; retried when the files change again.
                Err(ReloadError::Invalid(why) | ReloadError::Failed(why)) => {
                    tracing::warn!("the reload after a config change did not apply: {why}; the node keeps serving");
                    applied = now;
                }
            }
        }
    }
}

/// Aborts the watcher task when dropped.
pub struct Running(pub tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_and_the_secret_files_it_names_are_watched() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("wallet_key");
        std::fs::write(&secret, "0xkey\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file = dir.path().join("sysdeploy.toml");
        std::fs::write(&file, "[node]\nwatch_config = true\n").unwrap();
        let opts = LoadOptions {
            config_path: Some(file.clone()),
            env: vec![("SYSDEPLOY_SYSTEM_SERVICES__DECIDER__WALLET_KEY_FILE".into(), secret.display().to_string())],
            flags: vec![],
        };
        let cfg = crate::config::load(&opts, &crate::distro::package_schemas()).unwrap();
        assert!(enabled(&cfg));
        assert_eq!(watched_paths(&opts, &cfg), vec![file, secret]);
        let defaults = crate::config::load(&LoadOptions::default(), &crate::distro::package_schemas()).unwrap();
        assert!(!enabled(&defaults), "off by default");
        assert!(watched_paths(&LoadOptions::default(), &defaults).is_empty());
    }

    #[test]
    fn in_place_writes_and_symlink_swaps_change_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Kubernetes' layout: name -> ..data/name, ..data -> ..v1.
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/c.toml"), "a = 1\n").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/c.toml", d.join("c.toml")).unwrap();
        let paths = vec![d.join("c.toml")];
        let f1 = Fingerprint::take(&paths);
        assert!(matches!(&f1.0[0].1, State::Present { hash: Some(_), .. }));
        assert_eq!(Fingerprint::take(&paths), f1, "nothing changed");

        // The swap: a new dir with identical contents, ..data renamed over.
        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(d.join("..v2/c.toml"), "a = 1\n").unwrap();
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        let f2 = Fingerprint::take(&paths);
        assert_ne!(f2, f1, "the symlink swap is a change even with the same contents");
        assert_eq!(f2.changed(&f1), vec![d.join("c.toml").display().to_string()]);

        // In place, same length: the hash sees it whatever the mtime says.
        std::fs::write(d.join("..v2/c.toml"), "a = 2\n").unwrap();
        assert_ne!(Fingerprint::take(&paths), f2);

        std::fs::remove_file(d.join("..v2/c.toml")).unwrap();
        assert!(matches!(Fingerprint::take(&paths).0[0].1, State::Absent(_)));
        assert!(Watcher::new(&[]).is_none());
    }
}
