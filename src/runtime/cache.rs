//! Content-addressed component files (`components/<blake3>.wasm`) and the
//! precompiled-artifact cache (`cache/<engine key>/<blake3>.cwasm`).
//!
//! An artifact is written once (temp file, fsync, rename, fsync of the
//! directory) and never rewritten in place, because `deserialize_file` maps
//! it into memory. Its blake3 is recorded in SQLite and checked before every
//! load: `deserialize` trusts its input, so a flipped byte, a truncation or an
//! artifact from another engine must never reach it unverified. Anything that
//! fails the check, or that wasmtime refuses, is deleted and recompiled.

use super::records;
use super::RuntimeError;
use crate::ids::ComponentHash;
use crate::store::Store;
use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Artifact cache counters, exported on `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Verified artifacts loaded with `deserialize_file`.
    pub hits: u64,
    /// Components compiled because no usable artifact existed.
    pub misses: u64,
    /// Artifacts deleted because their digest did not match the record or
    /// wasmtime refused them (subset of the situations counted in `misses`).
    pub discarded: u64,
}

/// A `Hasher` whose output depends only on the bytes fed to it (blake3), so
/// the cache key survives process restarts and Rust upgrades, unlike
/// `DefaultHasher`.
struct StableHasher(blake3::Hasher);

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        let d = self.0.finalize();
        u64::from_le_bytes(d.as_bytes()[..8].try_into().expect("8 bytes"))
    }
}

/// The cache directory name of this engine: a stable hash of
/// `Engine::precompile_compatibility_hash` (wasmtime version, target CPU
/// features and every setting that changes generated code).
pub fn engine_key(engine: &Engine) -> String {
    let mut h = StableHasher(blake3::Hasher::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.finalize().to_hex()[..32].to_string()
}

/// Owns the on-disk component store, the artifact cache and the in-memory
/// table of loaded components.
pub(crate) struct ComponentCache {
    engine: Engine,
    store: Store,
    /// `cache/<engine key>` in the record table; artifacts of other engines
    /// are ignored (and collected by `gc`).
    engine_key: String,
    components_dir: PathBuf,
    cache_root: PathBuf,
    artifacts_dir: PathBuf,
    /// Loaded (deserialised or freshly compiled) components. `Component` is a
    /// cheap handle; keeping it here means each is loaded once per process.
    loaded: RwLock<HashMap<ComponentHash, Component>>,
    /// One lock per component being loaded so two callers never compile the
    /// same component twice in parallel.
    loading: Mutex<HashMap<ComponentHash, Arc<Mutex<()>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
    discarded: AtomicU64,
}

impl ComponentCache {
    pub(crate) fn open(engine: Engine, store: Store, state_dir: &Path) -> Result<Self, RuntimeError> {
        let engine_key = engine_key(&engine);
        let components_dir = state_dir.join("components");
        let cache_root = state_dir.join("cache");
        let artifacts_dir = cache_root.join(&engine_key);
        for d in [&components_dir, &artifacts_dir] {
            fs::create_dir_all(d).map_err(|e| io(d, e))?;
        }
        Ok(Self {
            engine,
            store,
            engine_key,
            components_dir,
            cache_root,
            artifacts_dir,
            loaded: RwLock::default(),
            loading: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
        })
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn engine_key(&self) -> &str {
        &self.engine_key
    }

    pub(crate) fn component_path(&self, hash: &ComponentHash) -> PathBuf {
        self.components_dir.join(format!("{}.wasm", hash.to_hex()))
    }

    pub(crate) fn artifact_path(&self, hash: &ComponentHash) -> PathBuf {
        self.artifacts_dir.join(format!("{}.cwasm", hash.to_hex()))
    }

    /// Stores the component bytes if absent (or of the wrong size, i.e.
    /// damaged) and records them. Writes nothing when both are in place, so a
    /// no-op boot does not touch the store.
    pub(crate) fn store_bytes(&self, bytes: &[u8], hash: &ComponentHash) -> Result<(), RuntimeError> {
        let path = self.component_path(hash);
        let intact = fs::metadata(&path).map(|m| m.len() == bytes.len() as u64).unwrap_or(false);
        if !intact {
            write_atomic(&path, bytes)?;
        }
        if !records::has_component(&self.store, hash)? {
            records::put_component(&self.store, hash, bytes.len() as u64)?;
        }
        Ok(())
    }

    /// The loaded component: from memory, else from a verified artifact, else
    /// compiled (from `bytes` when given, else from the component store) and
    /// cached. CPU-heavy on a miss.
    pub(crate) fn load(&self, hash: &ComponentHash, bytes: Option<&[u8]>) -> Result<Component, RuntimeError> {
        if let Some(c) = self.loaded.read().unwrap_or_else(|p| p.into_inner()).get(hash) {
            return Ok(c.clone());
        }
        let gate = self.loading.lock().unwrap_or_else(|p| p.into_inner()).entry(*hash).or_default().clone();
        let _serial = gate.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = self.loaded.read().unwrap_or_else(|p| p.into_inner()).get(hash) {
            return Ok(c.clone());
        }
        let result = self.load_artifact(hash).and_then(|found| match found {
            Some(c) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Ok(c)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                self.compile(hash, bytes)
            }
        });
        if let Ok(component) = &result {
            self.loaded.write().unwrap_or_else(|p| p.into_inner()).insert(*hash, component.clone());
        }
        self.loading.lock().unwrap_or_else(|p| p.into_inner()).remove(hash);
        result
    }

    /// The component if it is loaded or has a recorded artifact (loaded and
    /// verified now, a cache hit); `None` when it would have to be compiled.
    /// Never compiles and writes nothing: plan-time checks decode instead.
    pub(crate) fn cached(&self, hash: &ComponentHash) -> Result<Option<Component>, RuntimeError> {
        if let Some(c) = self.loaded.read().unwrap_or_else(|p| p.into_inner()).get(hash) {
            return Ok(Some(c.clone()));
        }
        if records::artifact_digest(&self.store, hash, &self.engine_key)?.is_none() {
            return Ok(None);
        }
        // `load` finds the artifact (or, if it turned out damaged, would
        // compile): check again under its gate rather than duplicate it.
        match self.load_artifact(hash)? {
            Some(c) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.loaded.write().unwrap_or_else(|p| p.into_inner()).insert(*hash, c.clone());
                Ok(Some(c))
            }
            None => Ok(None),
        }
    }

    /// Loads the artifact if it exists and its digest matches the record.
    /// A bad artifact is deleted (with its record) and `None` returned.
    fn load_artifact(&self, hash: &ComponentHash) -> Result<Option<Component>, RuntimeError> {
        let path = self.artifact_path(hash);
        let Some(expected) = records::artifact_digest(&self.store, hash, &self.engine_key)? else {
            // Never verified: whatever is at the path (a leftover of a crash
            // between rename and record) must not be loaded.
            if path.exists() {
                self.discard(hash, &path, "artifact without a recorded digest")?;
            }
            return Ok(None);
        };
        let actual = match digest_file(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                records::delete_artifact(&self.store, hash, &self.engine_key)?;
                return Ok(None);
            }
            Err(e) => return Err(io(&path, e)),
        };
        if actual != expected {
            self.discard(hash, &path, "digest mismatch (corrupted or truncated)")?;
            return Ok(None);
        }
        // SAFETY: the file's blake3 equals the digest recorded when this
        // process family wrote it with `Component::serialize`, and artifacts
        // are only ever replaced by rename, never modified in place, so the
        // mapping stays valid and the bytes are ones wasmtime produced.
        // Compatibility with this engine is still checked by wasmtime.
        match unsafe { Component::deserialize_file(&self.engine, &path) } {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                self.discard(hash, &path, &format!("refused by wasmtime: {e}"))?;
                Ok(None)
            }
        }
    }

    fn discard(&self, hash: &ComponentHash, path: &Path, why: &str) -> Result<(), RuntimeError> {
        tracing::warn!(component = %hash.short(), path = %path.display(), why, "discarding precompiled artifact; it will be recompiled");
        self.discarded.fetch_add(1, Ordering::Relaxed);
        records::delete_artifact(&self.store, hash, &self.engine_key)?;
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(path, e)),
        }
    }

    fn compile(&self, hash: &ComponentHash, bytes: Option<&[u8]>) -> Result<Component, RuntimeError> {
        let owned;
        let bytes = match bytes {
            Some(b) => b,
            None => {
                let path = self.component_path(hash);
                owned = match fs::read(&path) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(RuntimeError::Component {
                            hash: hash.to_hex(),
                            message: format!("{} is missing; add the component again", path.display()),
                        })
                    }
                    Err(e) => return Err(io(&path, e)),
                };
                if ComponentHash::of(&owned) != *hash {
                    return Err(RuntimeError::Component {
                        hash: hash.to_hex(),
                        message: format!("{} does not match its hash (corrupted on disk); add the component again", path.display()),
                    });
                }
                &owned
            }
        };
        let started = std::time::Instant::now();
        let component = compile_guest(&self.engine, hash, bytes)?;
        let artifact = component.serialize().map_err(|e| RuntimeError::Wasmtime(format!("serialising {}: {e:#}", hash.short())))?;
        let path = self.artifact_path(hash);
        write_atomic(&path, &artifact)?;
        // The artifact is on disk but has no recorded digest yet: the next
        // load must discard it rather than trust it.
        crash_point!("runtime::cache::artifact-written");
        records::put_artifact(&self.store, hash, &self.engine_key, blake3::hash(&artifact).to_hex().as_str(), artifact.len() as u64)?;
        tracing::info!(component = %hash.short(), bytes = bytes.len(), ms = started.elapsed().as_millis() as u64, "compiled component");
        Ok(component)
    }

    /// Drops a component from memory, disk and records (for `gc`).
    pub(crate) fn remove(&self, hash: &ComponentHash) -> Result<Vec<String>, RuntimeError> {
        let mut removed = Vec::new();
        self.loaded.write().unwrap_or_else(|p| p.into_inner()).remove(hash);
        for path in [self.artifact_path(hash), self.component_path(hash)] {
            match fs::remove_file(&path) {
                Ok(()) => removed.push(path.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, e)),
            }
        }
        // Files gone, record still there: the next gc removes the record.
        crash_point!("runtime::gc::component-files-removed");
        records::delete_component(&self.store, hash)?;
        Ok(removed)
    }

    /// Removes cache directories of other engines and stray temp files.
    pub(crate) fn collect_foreign(&self) -> Result<Vec<String>, RuntimeError> {
        let mut removed = Vec::new();
        records::delete_foreign_artifacts(&self.store, &self.engine_key)?;
        let entries = fs::read_dir(&self.cache_root).map_err(|e| io(&self.cache_root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io(&self.cache_root, e))?;
            if entry.file_name().to_str() == Some(self.engine_key.as_str()) {
                continue;
            }
            let path = entry.path();
            // Directories of any depth, symlinks unlinked, never followed.
            crate::tree::remove_tree(&path)?;
            removed.push(path.display().to_string());
        }
        for dir in [&self.artifacts_dir, &self.components_dir] {
            for entry in fs::read_dir(dir).map_err(|e| io(dir, e))? {
                let path = entry.map_err(|e| io(dir, e))?.path();
                if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(TEMP_PREFIX)) {
                    fs::remove_file(&path).map_err(|e| io(&path, e))?;
                    removed.push(path.display().to_string());
                }
            }
        }
        Ok(removed)
    }
}

const TEMP_PREFIX: &str = ".tmp-";

/// Compiles a guest component with Cranelift: the one place the runtime
/// generates code for guest bytes. Failpoint `runtime::compile` (with the
/// `failpoints` feature, `FAILPOINTS=runtime::compile=return`) makes it fail,
/// so a test can prove a path never compiles; each call is a `trace` event.
pub(crate) fn compile_guest(engine: &Engine, hash: &ComponentHash, bytes: &[u8]) -> Result<Component, RuntimeError> {
    fail::fail_point!("runtime::compile", |_| Err(RuntimeError::Component {
        hash: hash.to_hex(),
        message: "compiling is refused by failpoint runtime::compile".into(),
    }));
    crate::failpoint::trace::event(|| format!("compile {}", hash.to_hex()));
    Component::new(engine, bytes).map_err(|e| RuntimeError::Component { hash: hash.to_hex(), message: format!("does not compile: {e:#}") })
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory,
/// fsync, rename over the target, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let dir = path.parent().expect("path has a parent");
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).expect("the OS random source failed");
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!("{TEMP_PREFIX}{}-{name}", hex::encode(suffix)));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        // A temp file left behind here is collected by `gc`.
        crash_point!("runtime::cache::temp-written");
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io(path, e))
}

fn digest_file(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(fs::File::open(path)?)?;
    Ok(h.finalize().to_hex().to_string())
}

pub(crate) fn io(path: &Path, source: std::io::Error) -> RuntimeError {
    RuntimeError::Io { path: path.to_path_buf(), source }
}
