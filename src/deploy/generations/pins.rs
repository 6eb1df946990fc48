//! Pins (`deploy_pins`): package → generation. The desired state of a
//! pinned package comes only from its generation: the package is loaded from
//! the stored manifest and files (components from the component store), its
//! config is the generation's stored non-secret values, its secrets come
//! from the current config (a digest that differs is said, not hidden). A
//! pin to a generation that did not have the package removes it.

use super::source::{dir_of, Origin, StoredFiles};
use super::{get, source, StoredValue};
use crate::config::{ConfigValue, EffectiveConfig, Source};
use crate::deploy::desired::{self, CatalogComponents, DesiredErrors};
use crate::deploy::model::Desired;
use crate::distro::manifest::{self, ManifestSource};
use crate::distro::Catalog;
use crate::ids::{Alias, PackageName, ServiceId};
use crate::store::Store;
use rusqlite::params;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One row of `deploy_pins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pin {
    pub package: PackageName,
    pub generation: u64,
    /// `rollback --restore-data`: start from the data kept of the service
    /// each alias had in that generation (cleared once deployed).
    pub restore_data: bool,
    pub pinned_at_ms: i64,
}

/// Every pin (none when the store predates the table).
pub fn pins(store: &Store) -> rusqlite::Result<Vec<Pin>> {
    let conn = store.lock();
    if !super::has_tables(&conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT package, generation, restore_data, pinned_at FROM deploy_pins ORDER BY package")?;
    let rows = stmt.query_map([], |r| {
        let name: String = r.get(0)?;
        Ok(Pin {
            package: PackageName::new(name.clone()).map_err(|e| super::bad("deploy_pins.package", format!("{name:?}: {e}")))?,
            generation: r.get::<_, i64>(1)? as u64,
            restore_data: r.get::<_, i64>(2)? != 0,
            pinned_at_ms: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// Writes `pins` (replacing those packages' pins) in one transaction.
pub fn set(store: &Store, pins: &[Pin]) -> rusqlite::Result<()> {
    let mut conn = store.lock();
    let tx = conn.transaction()?;
    for p in pins {
        tx.execute(
            "INSERT OR REPLACE INTO deploy_pins(package, generation, restore_data, pinned_at) VALUES (?1, ?2, ?3, ?4)",
            params![p.package.as_str(), p.generation as i64, p.restore_data as i64, p.pinned_at_ms],
        )?;
    }
    tx.commit()
}

/// Removes the pins of `packages` (all when `None`); returns what was removed.
pub fn remove(store: &Store, packages: Option<&[PackageName]>) -> rusqlite::Result<Vec<Pin>> {
    let all = pins(store)?;
    let gone: Vec<Pin> = all.into_iter().filter(|p| packages.is_none_or(|ps| ps.contains(&p.package))).collect();
    let mut conn = store.lock();
    let tx = conn.transaction()?;
    for p in &gone {
        tx.execute("DELETE FROM deploy_pins WHERE package = ?1", [p.package.as_str()])?;
    }
    tx.commit()?;
    Ok(gone)
}

/// What a pin makes of its package, for `plan`, `status` and the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PinView {
    pub package: PackageName,
    pub generation: u64,
    /// The generation's version; `None` when the generation had no such
    /// package (the pin removes it).
    pub version: Option<String>,
    /// What the embedded release (the loaded catalog, if it enables the
    /// package) would deploy instead.
    pub release: Option<String>,
    pub restore_data: bool,
    /// Per alias, the service whose kept data the deployment starts from.
    pub restore_data_from: BTreeMap<Alias, ServiceId>,
    /// Secrets that differ from the generation's digests, and the like.
    pub notes: Vec<String>,
    /// Digest of the package source the pin deploys.
    #[serde(skip)]
    pub source: Option<String>,
}

/// The desired state with pins applied.
pub struct Resolved {
    pub desired: Desired,
    /// Component bytes of every desired package (pinned ones from the store).
    pub components: std::sync::Arc<CatalogComponents>,
    /// The config the desired state was resolved with, when pins changed it.
    pub config: Option<EffectiveConfig>,
    pub pins: Vec<PinView>,
}

/// Why the desired state cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Desired(#[from] DesiredErrors),
    /// A pin cannot be honoured (exit 2).
    #[error("{0}")]
    Pin(String),
    #[error("reading generations and pins: {0}")]
    Store(#[from] rusqlite::Error),
}

impl ResolveError {
    pub fn exit(&self) -> crate::exit::Exit {
        match self {
            ResolveError::Store(_) => crate::exit::Exit::StoreUnusable,
            _ => crate::exit::Exit::Invalid,
        }
    }
}

/// Where a generation's config value came from, for reasons.
fn from_generation(n: u64) -> Source {
    Source::File { path: format!("generation {n}").into(), line: None }
}

/// The desired state: `desired::resolve` of the catalog and config, with
/// every pinned package taken from its generation instead. Without pins (or
/// without a store) exactly `desired::resolve`.
pub fn resolve(catalog: &Catalog, cfg: &EffectiveConfig, store: Option<&Store>, state_dir: &Path) -> Result<Resolved, ResolveError> {
    let pins = match store {
        Some(s) => pins(s)?,
        None => Vec::new(),
    };
    if pins.is_empty() {
        return Ok(Resolved {
            desired: desired::resolve(catalog, cfg)?,
            components: std::sync::Arc::new(CatalogComponents::new(catalog)),
            config: None,
            pins: vec![],
        });
    }
    let store = store.expect("pins come from a store");
    let origin = Origin::of(catalog).ok_or_else(|| {
        ResolveError::Pin("packages are pinned, but the sources of this node's packages are unknown (a catalog built in process)".into())
    })?;
    let mut cfg2 = cfg.clone();
    let mut sources: Vec<ManifestSource> = origin.sources.clone();
    let mut stored = BTreeMap::new();
    let mut views = Vec::new();
    let mut problems = Vec::new();
    let mut restore: Vec<(PackageName, BTreeMap<Alias, ServiceId>)> = Vec::new();
    for pin in &pins {
        let unpin = format!("`sysdeploy unpin --package {}`", pin.package);
        let Some(gen) = get(store, pin.generation)? else {
            problems
                .push(format!("package {} is pinned to generation {}, which is no longer recorded; {unpin}", pin.package, pin.generation));
            continue;
        };
        if gen.pruned {
            problems.push(format!(
                "package {} is pinned to generation {}, which was pruned (its components are gone); {unpin}",
                pin.package, pin.generation
            ));
            continue;
        }
        let release =
            catalog.package(&pin.package).filter(|_| cfg.system_services.enable.contains(&pin.package)).map(|p| p.version.clone());
        if let Some(p) = catalog.package(&pin.package) {
            let d = dir_of(&p.manifest_path, &origin.label);
            sources.retain(|s| s.dir != d);
        }
        let mut view = PinView {
            package: pin.package.clone(),
            generation: pin.generation,
            version: None,
            release,
            restore_data: pin.restore_data,
            restore_data_from: BTreeMap::new(),
            notes: Vec::new(),
            source: None,
        };
        let Some(rec) = gen.record.packages.get(&pin.package) else {
            // Generation N did not have the package: the pin removes it.
            cfg2.system_services.enable.retain(|n| n != &pin.package);
            view.notes.push(format!("generation {} had no package {}: it is removed", pin.generation, pin.package));
            views.push(view);
            continue;
        };
        let Some(digest) = &rec.source else {
            problems.push(format!(
                "package {} is pinned to generation {}, which did not record the package's files; {unpin}",
                pin.package, pin.generation
            ));
            continue;
        };
        let Some(src) = source(store, digest)? else {
            problems.push(format!(
                "package {} is pinned to generation {}, whose package files are missing; {unpin}",
                pin.package, pin.generation
            ));
            continue;
        };
        // Messages name the generation: `distros/kv-store@generation-1/distro.toml`.
        let dir = format!("{}@generation-{}", src.dir, pin.generation);
        sources.push(ManifestSource { dir: dir.clone(), text: src.manifest.clone() });
        stored.insert(dir, src);
        if !cfg2.system_services.enable.contains(&pin.package) {
            cfg2.system_services.enable.push(pin.package.clone());
        }
        let now = cfg.system_services.packages.get(&pin.package);
        let mut section = BTreeMap::new();
        for (k, v) in &rec.config {
            let key = format!("system_services.{}.{k}", pin.package.config_key());
            match v {
                StoredValue::Plain { value } => {
                    section.insert(k.clone(), ConfigValue { value: value.clone(), source: from_generation(pin.generation), secret: false });
                }
                StoredValue::Secret { secret_digest } => match now.and_then(|s| s.get(k)).filter(|c| c.secret) {
                    Some(c) => {
                        if super::secret_digest(&c.value) != *secret_digest {
                            view.notes.push(format!("secret {key} differs from generation {}", pin.generation));
                        }
                        section.insert(k.clone(), c.clone());
                    }
                    None => view.notes.push(format!("secret {key} is not set now; generation {} had one", pin.generation)),
                },
            }
        }
        cfg2.system_services.packages.insert(pin.package.clone(), section);
        view.version = Some(rec.version.clone());
        view.source = Some(digest.clone());
        if pin.restore_data {
            // The service each alias had then, unless it is still the one
            // bound (nothing was replaced: nothing to restore).
            let bound = crate::deploy::journal::Journal::new(store.clone()).deployed()?;
            let from: BTreeMap<Alias, ServiceId> = gen
                .record
                .aliases
                .iter()
                .filter(|(_, a)| a.package == pin.package)
                .filter_map(|(alias, a)| a.service_id.clone().map(|id| (alias.clone(), id)))
                .filter(|(alias, id)| {
                    !matches!(bound.get(alias).map(|e| &e.kind), Some(crate::deploy::DeployedKind::Service { service_id, .. }) if service_id == id)
                })
                .collect();
            view.restore_data_from = from.clone();
            restore.push((pin.package.clone(), from));
        }
        views.push(view);
    }
    if !problems.is_empty() {
        return Err(ResolveError::Pin(problems.join("\n")));
    }
    let files = StoredFiles { inner: Some(origin.files()), stored, components_dir: state_dir.join("components") };
    let merged = manifest::load(&origin.label, &sources, &files)
        .map_err(|e| ResolveError::Pin(format!("the pinned packages cannot be loaded from their generations: {e}")))?;
    let mut desired = desired::resolve(&merged, &cfg2)?;
    for (package, from) in restore {
        for p in desired.packages.iter_mut().filter(|p| p.name == package) {
            for s in &mut p.services {
                s.restore_data_from = from.get(&s.alias).cloned();
            }
        }
    }
    let components = std::sync::Arc::new(CatalogComponents::new(&merged));
    Ok(Resolved { desired, components, config: Some(cfg2), pins: views })
}

impl PinView {
    /// One line for `plan` and `status`.
    pub fn line(&self) -> String {
        let to = match &self.version {
            Some(v) => format!("{} {v}", self.package),
            None => format!("{} (absent)", self.package),
        };
        let release = match &self.release {
            Some(v) => format!("the embedded release would deploy {v}"),
            None => "the embedded release does not deploy it".to_string(),
        };
        let mut s = format!("pinned: {to} from generation {}; {release}", self.generation);
        for (alias, id) in &self.restore_data_from {
            s.push_str(&format!("; {alias} restores data kept from service {id}"));
        }
        s
    }
}
