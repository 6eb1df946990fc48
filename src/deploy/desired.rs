//! Desired state: the enabled packages of a catalog, resolved against the
//! effective config (templates → typed values, with the config keys and
//! sources that fed them).

use super::model::*;
use crate::config::{ConfigValue, EffectiveConfig};
use crate::distro::{self, Catalog, ClockStart, ConfigLookup};
use crate::ids::PackageName;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Why the desired state cannot be built. All are reported at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    #[error("system_services.enable: package {package} is not embedded in this binary")]
    UnknownPackage { package: PackageName },
    #[error("package {package} depends on {dependency}, which is not enabled; add it to system_services.enable")]
    DependencyDisabled { package: PackageName, dependency: PackageName },
    #[error("package {package}, {what}: {message}")]
    Template { package: PackageName, what: String, message: String },
    #[error("package {package}, spell {alias}: the script does not compile: {message}; fix the script")]
    Script { package: PackageName, alias: crate::ids::Alias, message: String },
    #[error("package {package}, spell {alias}: trigger: {reason}{from}")]
    Trigger { package: PackageName, alias: crate::ids::Alias, reason: String, from: String },
    #[error("package {package}, spell {alias}: kv key {key:?}: {reason} (from {from})")]
    Kv { package: PackageName, alias: crate::ids::Alias, key: String, reason: String, from: String },
    #[error("package {package}, service {alias}: {key} = {value} is above the node's ceiling of {ceiling} ({ceiling_key}); lower it in distro.toml or raise {ceiling_key}")]
    OverCeiling { package: PackageName, alias: crate::ids::Alias, key: String, value: u64, ceiling: u64, ceiling_key: String },
    #[error("package {package}, service {alias}: {message}")]
    Outbound { package: PackageName, alias: crate::ids::Alias, message: String },
}

/// " (from key at source, …)" for the config keys behind a spell's trigger.
fn trigger_inputs(sp: &distro::SpellSpec, input: &dyn Fn(&str) -> ConfigInput) -> String {
    let distro::TriggerSpec::Clock { period_sec, end, .. } = &sp.trigger;
    let mut keys: Vec<&str> = period_sec.config_keys();
    keys.extend(end.iter().flat_map(|e| e.config_keys()));
    if keys.is_empty() {
        return String::new();
    }
    let from: Vec<String> = keys.iter().map(|k| input(k)).map(|i| format!("{} at {}", i.key, i.source)).collect();
    format!(" (from {})", from.join(", "))
}

/// All problems found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredErrors(pub Vec<DesiredError>);

impl std::fmt::Display for DesiredErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "the desired state cannot be built ({} problem(s)); nothing was changed:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}
impl std::error::Error for DesiredErrors {}

/// A package's config section as a template lookup.
struct Section<'a>(Option<&'a BTreeMap<String, ConfigValue>>);

impl ConfigLookup for Section<'_> {
    fn lookup(&self, key: &str) -> Option<(Cow<'_, Value>, bool)> {
        self.0?.get(key).map(|v| (Cow::Borrowed(&v.value), v.secret))
    }
}

/// Resolves the enabled packages of `catalog` against `cfg`, in the
/// catalog's dependency order.
pub fn resolve(catalog: &Catalog, cfg: &EffectiveConfig) -> Result<Desired, DesiredErrors> {
    let mut errors = Vec::new();
    let enabled = &cfg.system_services.enable;
    for name in enabled {
        if catalog.package(name).is_none() {
            errors.push(DesiredError::UnknownPackage { package: name.clone() });
        }
    }
    // `system_services.snapshot_before_replace`: keep every replaced data dir.
    let snapshot_all = cfg.get("system_services.snapshot_before_replace").and_then(|v| v.value.as_bool()).unwrap_or(false);
    let mut packages = Vec::new();
    for pkg in catalog.packages.iter().filter(|p| enabled.contains(&p.name)) {
        for dep in &pkg.depends_on {
            if !enabled.contains(dep) {
                errors.push(DesiredError::DependencyDisabled { package: pkg.name.clone(), dependency: dep.clone() });
            }
        }
        let section_map = cfg.system_services.packages.get(&pkg.name);
        let section = Section(section_map);
        let input = |key: &str| -> ConfigInput {
            let path = format!("system_services.{}.{key}", pkg.name.config_key());
            match section_map.and_then(|m| m.get(key)) {
                Some(v) => ConfigInput { key: path, source: v.source.to_string(), secret: v.secret },
                None => ConfigInput { key: path, source: "unset".into(), secret: false },
            }
        };
        let mut services = Vec::new();
        for s in &pkg.services {
            let mut init = Vec::new();
            for spec in &s.init {
                match spec.resolve(&section) {
                    Ok(r) => {
                        let inputs: Vec<ConfigInput> = r.inputs.iter().map(|k| input(k)).collect();
                        let run = match r.run {
                            distro::InitRun::OnInstall => InitRun::OnInstall,
                            distro::InitRun::OnChange => InitRun::OnChange,
                        };
                        for args in r.calls {
                            init.push(ResolvedInit { function: r.function.clone(), args, run, inputs: inputs.clone() });
                        }
                        // A skipped call still takes part in the init hash so
                        // setting the key later triggers it.
                        if let Some(key) = &r.skipped {
                            tracing::debug!(package = %pkg.name, alias = %s.alias, function = %r.function, "init call skipped: {key} is unset");
                        }
                    }
                    Err(e) => errors.push(DesiredError::Template {
                        package: pkg.name.clone(),
                        what: format!("service {}, init {}", s.alias, spec.function),
                        message: e.to_string(),
                    }),
                }
            }
            let mut blueprint = s.blueprint();
            // Outbound allow-list (templates resolved) and per-service limits
            // against the node's ceilings: `deploy::limits`.
            match s.resolve_outbound(&section) {
                Ok(hosts) => blueprint.limits.allowed_outbound_hosts = hosts,
                Err(msgs) => errors.extend(msgs.into_iter().map(|message| DesiredError::Outbound {
                    package: pkg.name.clone(),
                    alias: s.alias.clone(),
                    message,
                })),
            }
            errors.extend(over_ceiling(&pkg.name, s, &cfg.system_services.ceilings));
            services.push(DesiredService {
                alias: s.alias.clone(),
                package: pkg.name.clone(),
                version: pkg.version.clone(),
                blueprint_id: blueprint.id(),
                blueprint,
                keep_data: s.keep_data,
                on_config_change: match s.on_config_change {
                    distro::ConfigChange::Reinit => ConfigChange::Reinit,
                    distro::ConfigChange::Replace => ConfigChange::Replace,
                },
                init,
                private: s.private.clone(),
                snapshot_before_replace: s.snapshot_before_replace || snapshot_all,
                restore_data_from: None,
            });
        }
        let mut spells = Vec::new();
        for sp in &pkg.spells {
            // A script that does not compile is bad input: refuse it here,
            // before any step runs, not halfway through the deployment.
            if let Err(message) = crate::spell::check_script(&sp.script) {
                errors.push(DesiredError::Script { package: pkg.name.clone(), alias: sp.alias.clone(), message });
                continue;
            }
            let trigger = match sp.resolve_trigger(&section) {
                Ok(t) => DesiredTrigger {
                    start: match t.start {
                        ClockStart::Now => None,
                        ClockStart::At(s) => Some(s),
                    },
                    period_sec: t.period_sec,
                    end: t.end,
                },
                Err(e) => {
                    errors.push(DesiredError::Template {
                        package: pkg.name.clone(),
                        what: format!("spell {}, trigger", sp.alias),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            // The spell layer's own rules, checked here so bad values are
            // refused before anything is touched, not when the step runs.
            let rule = crate::spell::Trigger {
                start: trigger.start.map_or(crate::spell::Start::Now, crate::spell::Start::At),
                period_sec: trigger.period_sec,
                end: trigger.end,
            };
            if let Some(reason) = rule.problem() {
                errors.push(DesiredError::Trigger {
                    package: pkg.name.clone(),
                    alias: sp.alias.clone(),
                    reason,
                    from: trigger_inputs(sp, &input),
                });
                continue;
            }
            let kv = match sp.resolve_kv(&section) {
                Ok(kv) => kv,
                Err(e) => {
                    errors.push(DesiredError::Template {
                        package: pkg.name.clone(),
                        what: format!("spell {}, kv", sp.alias),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let mut kv_ok = true;
            for (k, r) in &kv {
                let size = r.value.to_string().len();
                let reason = if k.is_empty() || k.len() > crate::spell::MAX_KEY_LEN {
                    format!("keys must be 1 to {} bytes long", crate::spell::MAX_KEY_LEN)
                } else if size > crate::spell::MAX_VALUE_BYTES {
                    format!("the value is {size} bytes of JSON, more than the limit of {} bytes", crate::spell::MAX_VALUE_BYTES)
                } else {
                    continue;
                };
                let from = r.inputs.iter().map(|i| input(i)).map(|i| format!("{} from {}", i.key, i.source)).collect::<Vec<_>>().join(", ");
                errors.push(DesiredError::Kv { package: pkg.name.clone(), alias: sp.alias.clone(), key: k.clone(), reason, from });
                kv_ok = false;
            }
            if !kv_ok {
                continue;
            }
            let secret_keys = kv.iter().filter(|(_, r)| r.secret).map(|(k, _)| k.clone()).collect();
            let kv_inputs = kv.iter().map(|(k, r)| (k.clone(), r.inputs.iter().map(|i| input(i)).collect())).collect();
            spells.push(DesiredSpell {
                alias: sp.alias.clone(),
                package: pkg.name.clone(),
                version: pkg.version.clone(),
                script_hash: sp.script_hash_hex(),
                script: sp.script.to_string(),
                trigger,
                kv: kv.into_iter().map(|(k, r)| (k, r.value)).collect(),
                secret_keys,
                kv_inputs,
            });
        }
        packages.push(DesiredPackage {
            name: pkg.name.clone(),
            version: pkg.version.clone(),
            depends_on: pkg.depends_on.clone(),
            migrates_from: pkg.migrates_from.clone(),
            services,
            spells,
        });
    }
    if errors.is_empty() {
        let catalog_order = catalog.packages.iter().map(|p| p.name.clone()).collect();
        Ok(Desired { packages, exports: Default::default(), catalog_order })
    } else {
        Err(DesiredErrors(errors))
    }
}

/// Per-service limits of `s` above the node's ceilings.
fn over_ceiling(package: &PackageName, s: &distro::ServiceSpec, c: &crate::config::ServiceCeilings) -> Vec<DesiredError> {
    let mut asked: Vec<(String, u64, u64, &str)> = Vec::new();
    let [ttl_key, queue_key, memory_key] = crate::config::SERVICE_CEILING_KEYS.map(|(k, _)| k);
    asked.extend(s.call_ttl_ms.map(|v| ("call_ttl_ms".to_string(), v, c.call_ttl_max_ms, ttl_key)));
    asked.extend(s.queue_depth.map(|v| ("queue_depth".to_string(), u64::from(v), c.queue_depth_max, queue_key)));
    for comp in &s.components {
        if let Some(mb) = comp.memory_limit_mb {
            asked.push((format!("memory_limit_mb (component {})", comp.name), mb, c.memory_max_mb, memory_key));
        }
    }
    asked
        .into_iter()
        .filter(|(_, value, ceiling, _)| value > ceiling)
        .map(|(key, value, ceiling, ceiling_key)| DesiredError::OverCeiling {
            package: package.clone(),
            alias: s.alias.clone(),
            key,
            value,
            ceiling,
            ceiling_key: ceiling_key.to_string(),
        })
        .collect()
}

/// Serves component bytes from a catalog (embedded or loaded from disk).
pub struct CatalogComponents(std::collections::HashMap<crate::ids::ComponentHash, distro::Bytes>);

impl CatalogComponents {
    pub fn new(catalog: &Catalog) -> Self {
        Self(catalog.packages.iter().flat_map(|p| &p.services).flat_map(|s| &s.components).map(|c| (c.hash, c.bytes.clone())).collect())
    }
}

impl super::ComponentSource for CatalogComponents {
    fn bytes(&self, hash: &crate::ids::ComponentHash) -> Option<Cow<'_, [u8]>> {
        self.0.get(hash).map(|b| Cow::Borrowed(&**b))
    }
}
