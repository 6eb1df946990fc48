//! A package as it was loaded, kept with a generation: its manifest text,
//! every non-component file it references (bytes) and its components (by
//! hash; the bytes stay in the component store while the generation is
//! kept). Loading it again goes through the same `distro::manifest::load`
//! as the build, with a `PackageFiles` reader over the stored bytes.

use crate::distro::manifest::{self, DiskFiles, FileData, FileError, ManifestSource, PackageFiles};
use crate::distro::{Bytes, Catalog};
use crate::ids::{ComponentHash, PackageName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One package's source as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSource {
    /// Its folder name under the distros root.
    pub dir: String,
    /// `distro.toml` as loaded.
    pub manifest: String,
    /// Every other file the manifest references (scripts, `${file:…}`), hex.
    pub files: BTreeMap<String, String>,
    /// Component files by path, as hashes into the component store.
    pub components: BTreeMap<String, ComponentHash>,
}

impl PackageSource {
    /// Content id: blake3 of the canonical JSON (maps are sorted).
    pub fn digest(&self) -> String {
        blake3::hash(&serde_json::to_vec(self).expect("json")).to_hex().to_string()
    }
}

/// Folders `--distros-dir` catalogs were loaded from, by catalog address
/// (one catalog per process; `cli` registers it).
static DIRS: Mutex<Vec<(usize, PathBuf)>> = Mutex::new(Vec::new());

/// Remembers that `catalog` was loaded from `dir`, so generations can record
/// its packages' sources.
pub fn register_dir(catalog: &'static Catalog, dir: &Path) {
    DIRS.lock().unwrap_or_else(|p| p.into_inner()).push((catalog as *const Catalog as usize, dir.to_path_buf()));
}

enum Files {
    Embedded(&'static dyn PackageFiles),
    Disk(DiskFiles),
}

impl Files {
    fn get(&self) -> &dyn PackageFiles {
        match self {
            Files::Embedded(f) => *f,
            Files::Disk(d) => d,
        }
    }
}

/// Where a catalog's manifests and files come from.
pub(super) struct Origin {
    pub(super) label: String,
    pub(super) sources: Vec<ManifestSource>,
    files: Files,
}

impl Origin {
    pub(super) fn of(catalog: &Catalog) -> Option<Origin> {
        if std::ptr::eq(catalog, crate::distro::embedded()) {
            let (label, sources, files) = crate::distro::embedded_sources();
            return Some(Origin { label: label.to_string(), sources, files: Files::Embedded(files) });
        }
        let addr = catalog as *const Catalog as usize;
        let dir = DIRS.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(a, _)| *a == addr).map(|(_, d)| d.clone())?;
        let label = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string());
        let sources = manifest::scan_dir(&dir, &label).ok()?;
        Some(Origin { label, sources, files: Files::Disk(DiskFiles::new(&dir)) })
    }

    pub(super) fn files(&self) -> &dyn PackageFiles {
        self.files.get()
    }
}

/// Records every file read through it.
struct Recording<'a> {
    inner: &'a dyn PackageFiles,
    reads: Mutex<BTreeMap<(String, String), FileData>>,
}

impl PackageFiles for Recording<'_> {
    fn read(&self, dir: &str, rel: &str) -> Result<FileData, FileError> {
        let d = self.inner.read(dir, rel)?;
        self.reads.lock().unwrap_or_else(|p| p.into_inner()).insert((dir.to_string(), rel.to_string()), d.clone());
        Ok(d)
    }
}

/// `distros/<dir>/distro.toml` → `<dir>`.
pub(super) fn dir_of(manifest_path: &str, label: &str) -> String {
    let rest = manifest_path.strip_prefix(label).and_then(|r| r.strip_prefix('/')).unwrap_or(manifest_path);
    rest.strip_suffix(&format!("/{}", manifest::MANIFEST_FILE)).unwrap_or(rest).to_string()
}

/// The sources of every package of `catalog`, loaded again from where the
/// catalog came from and checked against it (same version, same
/// components); a package that cannot be matched is left out (its
/// generation then cannot be rolled back to, and says so).
pub fn capture(catalog: &Catalog) -> BTreeMap<PackageName, PackageSource> {
    let mut out = BTreeMap::new();
    let Some(origin) = Origin::of(catalog) else {
        return out;
    };
    let rec = Recording { inner: origin.files(), reads: Mutex::new(BTreeMap::new()) };
    let Ok(loaded) = manifest::load(&origin.label, &origin.sources, &rec) else {
        tracing::warn!("generations: the packages' sources changed since they were loaded; this generation records none");
        return out;
    };
    let reads = rec.reads.into_inner().unwrap_or_else(|p| p.into_inner());
    for pkg in &loaded.packages {
        let Some(now) = catalog.package(&pkg.name) else { continue };
        let same = now.version == pkg.version
            && now.services.iter().map(|s| s.blueprint()).eq(pkg.services.iter().map(|s| s.blueprint()))
            && now.spells.iter().map(|s| s.script_hash).eq(pkg.spells.iter().map(|s| s.script_hash));
        if !same {
            tracing::warn!(package = %pkg.name, "generations: the package's files changed since it was loaded; its source is not recorded");
            continue;
        }
        let dir = dir_of(&pkg.manifest_path, &origin.label);
        let Some(src) = origin.sources.iter().find(|s| s.dir == dir) else { continue };
        let hashes: std::collections::BTreeSet<ComponentHash> =
            pkg.services.iter().flat_map(|s| s.components.iter().map(|c| c.hash)).collect();
        let mut files = BTreeMap::new();
        let mut components = BTreeMap::new();
        for ((d, rel), data) in &reads {
            if *d != dir {
                continue;
            }
            if hashes.contains(&ComponentHash(data.blake3)) {
                components.insert(rel.clone(), ComponentHash(data.blake3));
            } else {
                files.insert(rel.clone(), hex::encode(&*data.bytes));
            }
        }
        out.insert(pkg.name.clone(), PackageSource { dir, manifest: src.text.clone(), files, components });
    }
    out
}

/// Serves the files of recorded packages (components from the component
/// store, verified against their hash), the rest from `inner`.
pub(super) struct StoredFiles<'a> {
    pub(super) inner: Option<&'a dyn PackageFiles>,
    /// Folder name → source.
    pub(super) stored: BTreeMap<String, PackageSource>,
    pub(super) components_dir: PathBuf,
}

impl PackageFiles for StoredFiles<'_> {
    fn read(&self, dir: &str, rel: &str) -> Result<FileData, FileError> {
        let Some(src) = self.stored.get(dir) else {
            return self.inner.map_or(Err(FileError::NotFound), |i| i.read(dir, rel));
        };
        if let Some(h) = src.files.get(rel) {
            let bytes = hex::decode(h).map_err(|e| FileError::Io(format!("stored file {rel} is damaged: {e}")))?;
            let blake3 = *blake3::hash(&bytes).as_bytes();
            return Ok(FileData { bytes: Bytes::Shared(bytes.into()), blake3 });
        }
        let Some(hash) = src.components.get(rel) else {
            return Err(FileError::NotFound);
        };
        let path = self.components_dir.join(format!("{}.wasm", hash.to_hex()));
        let bytes = std::fs::read(&path).map_err(|e| {
            FileError::Io(format!("component {hash} is not in the component store ({}: {e}); its generation was pruned", path.display()))
        })?;
        let blake3 = *blake3::hash(&bytes).as_bytes();
        if blake3 != hash.0 {
            return Err(FileError::Io(format!("component {} in the component store does not match its hash", path.display())));
        }
        Ok(FileData { bytes: Bytes::Shared(bytes.into()), blake3 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded catalog's packages are captured from the binary and load
    /// again, equal, from the stored bytes plus a component store.
    #[test]
    fn embedded_packages_are_captured_and_load_again() {
        let catalog = crate::distro::embedded();
        let captured = capture(catalog);
        assert_eq!(captured.len(), catalog.packages.len(), "every embedded package is recorded");
        let tmp = tempfile::tempdir().unwrap();
        for p in &catalog.packages {
            for c in p.services.iter().flat_map(|s| &s.components) {
                std::fs::write(tmp.path().join(format!("{}.wasm", c.hash.to_hex())), &*c.bytes).unwrap();
            }
        }
        let stored: BTreeMap<String, PackageSource> = captured.values().map(|s| (s.dir.clone(), s.clone())).collect();
        let sources: Vec<ManifestSource> =
            stored.values().map(|s| ManifestSource { dir: s.dir.clone(), text: s.manifest.clone() }).collect();
        let files = StoredFiles { inner: None, stored, components_dir: tmp.path().to_path_buf() };
        let (label, _, _) = crate::distro::embedded_sources();
        let again = manifest::load(label, &sources, &files).unwrap();
        assert_eq!(&again, catalog);
    }

    #[test]
    fn dir_of_strips_label_and_manifest() {
        assert_eq!(dir_of("distros/kv-store/distro.toml", "distros"), "kv-store");
        assert_eq!(dir_of("v2/kv/distro.toml", "v2"), "kv");
    }

    /// A package recorded from disk loads again from the stored bytes and the
    /// component store, equal to what was loaded.
    #[test]
    fn a_captured_package_loads_again_from_stored_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("distros");
        let pkg = root.join("kv");
        std::fs::create_dir_all(&pkg).unwrap();
        let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distros/v1/kv-store/kv-store.wasm");
        std::fs::copy(&wasm, pkg.join("kv-store.wasm")).unwrap();
        std::fs::write(pkg.join("tick.rhai"), "let x = 1;").unwrap();
        std::fs::write(
            pkg.join("distro.toml"),
            "[package]\nname = \"kv\"\nversion = \"1.0.0\"\n\n[[service]]\nalias = \"kv\"\ncomponents = [\"kv-store.wasm\"]\n\n\
             [[spell]]\nalias = \"tick\"\nscript = \"tick.rhai\"\ntrigger = { clock = { start = \"now\", period_sec = 60 } }\n",
        )
        .unwrap();
        let catalog: &'static Catalog = Box::leak(Box::new(Catalog::load_dir(&root).unwrap()));
        register_dir(catalog, &root);
        let captured = capture(catalog);
        let src = &captured[&PackageName::new("kv").unwrap()];
        assert_eq!(src.files.keys().collect::<Vec<_>>(), ["tick.rhai"]);
        assert_eq!(src.components.keys().collect::<Vec<_>>(), ["kv-store.wasm"]);
        // Reload from the stored bytes, the component from a "component store".
        let comps = tmp.path().join("components");
        std::fs::create_dir_all(&comps).unwrap();
        let hash = src.components["kv-store.wasm"];
        let files = StoredFiles { inner: None, stored: [(src.dir.clone(), src.clone())].into(), components_dir: comps.clone() };
        let sources = [ManifestSource { dir: src.dir.clone(), text: src.manifest.clone() }];
        assert!(manifest::load("generation", &sources, &files).is_err(), "component missing: not loadable");
        std::fs::copy(&wasm, comps.join(format!("{}.wasm", hash.to_hex()))).unwrap();
        let again = manifest::load("generation", &sources, &files).unwrap();
        assert_eq!(again.packages[0].services, catalog.packages[0].services);
        assert_eq!(again.packages[0].spells, catalog.packages[0].spells);
    }
}
