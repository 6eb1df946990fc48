//! Distro packages: the catalog embedded in the binary at build time
//! (`build.rs` validates `distros/*/distro.toml` and embeds every file they
//! reference with its blake3), the same validation for folders on disk, and
//! resolution of init calls, spell KV and triggers against the config.
//!
//! See `distros/README.md` for the manifest format.

pub mod manifest;
pub mod template;

pub use manifest::{
    Bytes, Catalog, ClockStart, ComponentSpec, ConfigChange, InitRun, InitSpec, ManifestError, ManifestErrorKind, ManifestErrors, Package,
    ServiceSpec, SpellSpec, TriggerSpec,
};
pub use template::{resolve, resolve_with_item, ConfigLookup, LookupFn, Resolved, Template, TemplateError};

use crate::config::schema::PackageSchema;
use crate::ids::PackageName;
use crate::runtime::{Blueprint, BlueprintComponent};
use manifest::{FileData, FileError, ManifestSource, PackageFiles};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

/// One package folder as embedded by `build.rs`.
struct EmbeddedPackage {
    dir: &'static str,
    manifest: &'static str,
    files: &'static [EmbeddedFile],
}

/// One file a manifest references, with the blake3 computed at build time.
struct EmbeddedFile {
    path: &'static str,
    bytes: &'static [u8],
    blake3: [u8; 32],
}

mod generated {
    use super::{EmbeddedFile, EmbeddedPackage};
    include!(concat!(env!("OUT_DIR"), "/distros.rs"));
}

/// Serves embedded files with their precomputed hashes: boot never re-hashes.
struct EmbeddedFiles;

impl PackageFiles for EmbeddedFiles {
    fn read(&self, dir: &str, rel: &str) -> Result<FileData, FileError> {
        generated::PACKAGES
            .iter()
            .filter(|p| p.dir == dir)
            .flat_map(|p| p.files)
            .find(|f| f.path == rel)
            .map(|f| FileData { bytes: Bytes::Static(f.bytes), blake3: f.blake3 })
            .ok_or(FileError::NotFound)
    }
}

/// The packages compiled into this binary (validated by the build; parsed on
/// first use from the embedded manifests, with precomputed hashes).
pub fn embedded() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let sources: Vec<ManifestSource> =
            generated::PACKAGES.iter().map(|p| ManifestSource { dir: p.dir.to_string(), text: p.manifest.to_string() }).collect();
        manifest::load(generated::ROOT_LABEL, &sources, &EmbeddedFiles)
            .unwrap_or_else(|e| panic!("the embedded distros passed validation in build.rs but not at run time:\n{e}"))
    })
}

/// The embedded manifests and a reader of their files (build-time hashes):
/// `deploy::generations` records a package as it was loaded (issue 17).
pub fn embedded_sources() -> (&'static str, Vec<ManifestSource>, &'static dyn PackageFiles) {
    let sources = generated::PACKAGES.iter().map(|p| ManifestSource { dir: p.dir.to_string(), text: p.manifest.to_string() }).collect();
    (generated::ROOT_LABEL, sources, &EmbeddedFiles)
}

/// Config schemas of every embedded package, in package order.
pub fn package_schemas() -> Vec<PackageSchema> {
    embedded().schemas()
}

impl Catalog {
    /// Validates a distros folder on disk (same checks as the build) and
    /// computes the hashes of its files.
    pub fn load_dir(dir: &Path) -> Result<Catalog, ManifestErrors> {
        manifest::load_dir(dir)
    }

    pub fn package(&self, name: &PackageName) -> Option<&Package> {
        self.packages.iter().find(|p| &p.name == name)
    }

    /// Config schemas in package order.
    pub fn schemas(&self) -> Vec<PackageSchema> {
        self.packages.iter().map(|p| p.config.clone()).collect()
    }
}

impl ServiceSpec {
    /// The blueprint this service runs (component hashes and settings, facade last).
    pub fn blueprint(&self) -> Blueprint {
        Blueprint {
            components: self
                .components
                .iter()
                .map(|c| BlueprintComponent { name: c.name.clone(), hash: c.hash, memory_limit_mb: c.memory_limit_mb })
                .collect(),
            limits: crate::runtime::ServiceLimits {
                data_quota_mb: self.data_quota_mb,
                data_quota_inodes: self.data_quota_inodes,
                open_files_max: self.open_files_max,
                call_ttl_ms: self.call_ttl_ms,
                queue_depth: self.queue_depth,
                // Literal entries only; the deployer resolves templated ones
                // against the config (`resolve_outbound`) and sets the list.
                allowed_outbound_hosts: self.resolve_outbound(&BTreeMap::<String, Value>::new()).unwrap_or_default(),
            },
        }
    }
}

/// A package's section of the effective config (`[system_services.<package>]`),
/// as the config layer produces it: `resolve(t, &section)`.
impl ConfigLookup for BTreeMap<String, crate::config::ConfigValue> {
    fn lookup(&self, key: &str) -> Option<(std::borrow::Cow<'_, Value>, bool)> {
        self.get(key).map(|v| (std::borrow::Cow::Borrowed(&v.value), v.secret))
    }
}

/// An init call resolved against the config: what the deployer calls and
/// compares with what it applied last time.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedInit {
    pub function: String,
    pub run: InitRun,
    /// One argument list per call (one per `for_each` element, else one).
    /// Empty when skipped.
    pub calls: Vec<Vec<Value>>,
    /// Set when the call is skipped because its arguments read this optional
    /// config key, which has no value. Once the key is set, the arguments
    /// change and an `on-change` call runs.
    pub skipped: Option<String>,
    /// Config keys the call's arguments (and `for_each`) read.
    pub inputs: Vec<String>,
    /// The arguments contain a secret: never log, print or store them in clear.
    pub secret: bool,
}

impl fmt::Debug for ResolvedInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResolvedInit");
        d.field("function", &self.function).field("run", &self.run);
        if self.secret {
            d.field("calls", &format_args!("<{} calls with secret arguments>", self.calls.len()));
        } else {
            d.field("calls", &self.calls);
        }
        d.field("skipped", &self.skipped).field("inputs", &self.inputs).field("secret", &self.secret).finish()
    }
}

impl InitSpec {
    /// Resolves the arguments (expanding `for_each`). An unset optional config
    /// key makes the call skipped rather than failed.
    pub fn resolve<C: ConfigLookup + ?Sized>(&self, values: &C) -> Result<ResolvedInit, TemplateError> {
        let mut out = ResolvedInit {
            function: self.function.clone(),
            run: self.run,
            calls: Vec::new(),
            skipped: None,
            inputs: Vec::new(),
            secret: false,
        };
        let absorb = |out: &mut ResolvedInit, r: Resolved| {
            out.inputs.extend(r.inputs);
            out.secret |= r.secret;
            r.value
        };
        let items: Option<Vec<Value>> = match &self.for_each {
            None => None,
            Some(t) => match resolve(t, values) {
                Ok(r) => match absorb(&mut out, r) {
                    Value::Array(items) => Some(items),
                    other => return Err(TemplateError::NotList { found: template::kind(&other) }),
                },
                Err(TemplateError::Unset { key }) => {
                    out.inputs.push(key.clone());
                    out.skipped = Some(key);
                    None
                }
                Err(e) => return Err(e),
            },
        };
        if out.skipped.is_none() {
            let items: Vec<Option<&Value>> = match &items {
                None => vec![None],
                Some(items) => items.iter().map(Some).collect(),
            };
            'calls: for item in items {
                let mut args = Vec::with_capacity(self.args.len());
                for t in &self.args {
                    match resolve_with_item(t, values, item) {
                        Ok(r) => args.push(absorb(&mut out, r)),
                        Err(TemplateError::Unset { key }) => {
                            out.inputs.push(key.clone());
                            out.skipped = Some(key);
                            out.calls.clear();
                            break 'calls;
                        }
                        Err(e) => return Err(e),
                    }
                }
                out.calls.push(args);
            }
        }
        out.inputs.sort();
        out.inputs.dedup();
        Ok(out)
    }
}

/// A clock trigger with its templates resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClockTrigger {
    pub start: ClockStart,
    pub period_sec: u64,
    /// Unix time in seconds after which the spell stops running.
    pub end: Option<u64>,
}

impl SpellSpec {
    /// The trigger with its templates resolved.
    pub fn resolve_trigger<C: ConfigLookup + ?Sized>(&self, values: &C) -> Result<ClockTrigger, TemplateError> {
        let int = |what: &str, t: &Template| -> Result<u64, TemplateError> {
            let r = resolve(t, values)?;
            r.value.as_u64().ok_or_else(|| TemplateError::NotInteger { what: what.to_string(), got: r.value.to_string() })
        };
        match &self.trigger {
            TriggerSpec::Clock { start, period_sec, end } => Ok(ClockTrigger {
                start: *start,
                period_sec: int("period_sec", period_sec)?,
                end: end.as_ref().map(|e| int("end", e)).transpose()?,
            }),
        }
    }

    /// The initial KV resolved; keys whose template reads an unset optional
    /// config key are left out.
    pub fn resolve_kv<C: ConfigLookup + ?Sized>(&self, values: &C) -> Result<BTreeMap<String, Resolved>, TemplateError> {
        let mut out = BTreeMap::new();
        for (k, t) in &self.kv {
            match resolve(t, values) {
                Ok(r) => {
                    out.insert(k.clone(), r);
                }
                Err(TemplateError::Unset { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// blake3 of the script, hex.
    pub fn script_hash_hex(&self) -> String {
        hex::encode(self.script_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigValue;
    use serde_json::json;

    #[test]
    fn resolves_against_config_values_and_carries_the_secret_flag() {
        let decider = embedded().package(&PackageName::new("decider").unwrap()).unwrap();
        let init = &decider.services[0].init[0];
        let section: BTreeMap<String, ConfigValue> = BTreeMap::from([(
            "wallet_key".to_string(),
            ConfigValue { value: json!("0x1234"), source: crate::config::Source::Env { var: "X".into() }, secret: true },
        )]);
        let r = init.resolve(&section).unwrap();
        assert!(r.secret);
        assert_eq!(r.calls, vec![vec![json!("0x1234")]]);
        let t = &decider.spells[0].kv["worker_period_sec"];
        let section = BTreeMap::from([(
            "worker_period_sec".to_string(),
            ConfigValue { value: json!(5), source: crate::config::Source::Default, secret: false },
        )]);
        assert_eq!(resolve(t, &section).unwrap().value, json!(5));
    }
}
