//! Layered node configuration with provenance: embedded defaults < TOML file <
//! legacy env names < systemd credentials < `SYSDEPLOY_` env < CLI flags, merged with figment, every
//! effective value remembering where it came from, secrets redacted in every
//! rendering.
//!
//! Loading never touches the disk except to read the config file and secret
//! files (see [`secrets`]), and it reports every problem at once ([`ConfigErrors`]).

mod catalog;
mod layers;
mod problem;
pub mod schema;
mod secrets;
/// Reads a secret file with the rules of every secret file (issue 17: `--bootstrap-token-file`).
pub(crate) use secrets::read as read_secret_file;

pub use catalog::SERVICE_CEILING_KEYS;
pub use catalog::{
    CLI_ENV, DEFAULT_API_LISTEN, DEFAULT_CALL_TTL_MS, DEFAULT_STATE_DIR, ENV_CONFIG, ENV_CONFIG_SECTION, ENV_DISTROS_DIR,
    ENV_JOIN_ALL_DEALS, ENV_PREFIX, LEGACY_SECTION_PREFIX, RETIRED, SECTION_KEY, SECTION_SYSTEM_SERVICES,
};
pub use problem::{ConfigErrors, ConfigProblem, Source};

use crate::ids::PackageName;
use catalog::Catalog;
use figment::Figment;
use schema::PackageSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// What every secret value is shown as.
pub const REDACTED: &str = "<redacted>";

/// Inputs of [`load`]. The env is injected (the CLI passes `std::env::vars()`)
/// so tests never mutate the process environment.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// `--config`; when `None`, `SYSDEPLOY_CONFIG` from `env` is used, and
    /// when that is absent too the node runs on embedded defaults.
    pub config_path: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    /// Highest layer, in command-line order (a later flag wins). A flag with
    /// key [`SECTION_KEY`] (`--config-section`) selects section mode instead
    /// of setting a key; without one, `SYSDEPLOY_CONFIG_SECTION` from `env` does.
    pub flags: Vec<FlagValue>,
}

impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Env values and flag values may be secrets: names only.
        f.debug_struct("LoadOptions")
            .field("config_path", &self.config_path)
            .field("env", &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("flags", &self.flags)
            .finish()
    }
}

/// One config value given on the command line.
#[derive(Clone, PartialEq, Eq)]
pub struct FlagValue {
    /// How the operator wrote it, for provenance (`--state-dir`, `--set node.api_listen`).
    pub flag: String,
    /// Dotted key path it sets.
    pub key: String,
    /// Raw text, typed by the key's schema like an env value.
    pub value: String,
}

impl FlagValue {
    /// `--config-section SECTION`: read only `[SECTION]` (and `[node]`) of
    /// the config file.
    pub fn config_section(section: impl Into<String>) -> Self {
        FlagValue::new("--config-section", SECTION_KEY, section)
    }
    /// A dedicated flag such as `--state-dir` for `node.state_dir`.
    pub fn new(flag: &str, key: &str, value: impl Into<String>) -> Self {
        FlagValue { flag: flag.into(), key: key.into(), value: value.into() }
    }
    /// `--set KEY=VALUE`.
    pub fn set(key: &str, value: impl Into<String>) -> Self {
        FlagValue { flag: format!("--set {key}"), key: key.into(), value: value.into() }
    }
}

impl fmt::Debug for FlagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlagValue({} -> {})", self.flag, self.key)
    }
}

/// What the node does when a deployment step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Exit non-zero after writing the report (default).
    Stop,
    /// Serve what works and report degraded.
    Continue,
}

impl fmt::Display for OnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnFailure::Stop => "stop",
            OnFailure::Continue => "continue",
        })
    }
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Holds the key, the store, components and service data; relative paths
    /// are relative to the working directory.
    pub state_dir: PathBuf,
    /// Where the HTTP API listens.
    pub api_listen: SocketAddr,
}

/// `[system_services]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemServicesConfig {
    /// Packages to deploy; default: every embedded package.
    pub enable: Vec<PackageName>,
    pub on_failure: OnFailure,
    /// TTL of one guest call, unless a package overrides it.
    pub call_ttl_ms: u64,
    /// Defaults of what one guest may take (`guest_*` keys).
    pub guest: GuestLimitsConfig,
    /// Ceilings of the per-service limits a manifest may set (`service_*_max*` keys).
    pub ceilings: ServiceCeilings,
    /// Every package in the schemas (enabled or not) → every key of its schema
    /// that has a value, with its source. Keys are schema key names.
    pub packages: BTreeMap<PackageName, BTreeMap<String, ConfigValue>>,
}

/// The `system_services.guest_*` keys: what one service's guest may take of
/// what the node's services share (a package's `distro.toml` may lower or
/// raise the data quota and the descriptor cap of its services).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimitsConfig {
    /// Largest call result (estimated JSON bytes).
    pub result_max_bytes: u64,
    /// Descriptors one instance may hold open.
    pub open_files_max: u64,
    /// Logical bytes of regular files under a service's `/data`, in MiB.
    pub data_quota_mb: u64,
    /// Directory entries under a service's `/data`.
    pub data_quota_inodes: u64,
    /// Guest log lines per second (and burst) per service.
    pub log_lines_per_sec: u64,
    /// Longer guest log lines are cut.
    pub log_line_max_bytes: u64,
}

/// The `system_services.service_*_max*` keys: the most a package's
/// `distro.toml` may ask for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCeilings {
    /// Largest per-service `call_ttl_ms`.
    pub call_ttl_max_ms: u64,
    /// Largest per-service `queue_depth`.
    pub queue_depth_max: u64,
    /// Largest `memory_limit_mb` of one component.
    pub memory_max_mb: u64,
}

/// One effective value and where it came from. `Debug` and `Display` redact
/// secrets; only `.value` holds the real thing.
#[derive(Clone, PartialEq)]
pub struct ConfigValue {
    pub value: Json,
    pub source: Source,
    /// Declared secret by its schema: never printed or logged.
    pub secret: bool,
}

impl ConfigValue {
    /// The value for output: the real one, or `"<redacted>"` when secret.
    pub fn redacted(&self) -> Json {
        if self.secret {
            Json::from(REDACTED)
        } else {
            self.value.clone()
        }
    }
}

impl fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            f.write_str(REDACTED)
        } else {
            write!(f, "{}", self.value)
        }
    }
}

impl fmt::Debug for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigValue")
            .field("value", &format_args!("{self}"))
            .field("source", &self.source)
            .field("secret", &self.secret)
            .finish()
    }
}

/// One line of `sysdeploy config`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigEntry {
    /// Dotted path as written in the file (`system_services.decider.wallet_key`).
    pub key: String,
    /// The value, `"<redacted>"` when secret.
    pub value: Json,
    pub source: Source,
    pub secret: bool,
}

/// The merged configuration the node runs with.
#[derive(Debug, Clone)]
pub struct EffectiveConfig {
    pub node: NodeConfig,
    pub system_services: SystemServicesConfig,
    /// The file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Deprecation notices (legacy env names, retired keys), also logged at load.
    pub warnings: Vec<String>,
    /// Plain information, also logged at load: the top-level keys section
    /// mode ignored.
    pub notices: Vec<String>,
    /// Every key path with a value → its value and source.
    values: BTreeMap<String, ConfigValue>,
}

impl EffectiveConfig {
    /// Every effective value with its source, secrets redacted: `[node]`
    /// first, then `[system_services]`, then the package sections.
    pub fn entries(&self) -> Vec<ConfigEntry> {
        let mut out: Vec<ConfigEntry> = self
            .values
            .iter()
            .map(|(k, v)| ConfigEntry { key: k.clone(), value: v.redacted(), source: v.source.clone(), secret: v.secret })
            .collect();
        out.sort_by_key(|e| (!e.key.starts_with("node."), e.key.matches('.').count(), e.key.clone()));
        out
    }

    /// Where the value at a dotted key path came from.
    pub fn source_of(&self, key_path: &str) -> Option<&Source> {
        self.values.get(key_path).map(|v| &v.source)
    }

    /// The value at a dotted key path, with its source.
    pub fn get(&self, key_path: &str) -> Option<&ConfigValue> {
        self.values.get(key_path)
    }

    /// The embedded defaults alone (no file, env or flags).
    pub fn defaults(schemas: &[PackageSchema]) -> Result<Self, ConfigErrors> {
        load(&LoadOptions::default(), schemas)
    }
}

/// Loads the effective configuration. Reads only the config file; returns
/// every problem found in every layer.
pub fn load(opts: &LoadOptions, schemas: &[PackageSchema]) -> Result<EffectiveConfig, ConfigErrors> {
    let (cat, defects) = Catalog::new(schemas);
    let mut problems: Vec<ConfigProblem> = defects.into_iter().map(|detail| ConfigProblem::BadSchema { detail }).collect();
    let mut notes = layers::Notes::default();

    let section = section(opts, &mut problems);
    let defaults = layers::defaults(&cat);
    let (config_file, file) = layers::file(opts.config_path.as_deref(), &opts.env, section, &cat, &mut problems, &mut notes);
    let enable = "system_services.enable";
    let base_enable = file.values.get(enable).or_else(|| defaults.values.get(enable)).map(|(v, _)| v);
    let legacy = layers::legacy_env(&opts.env, &cat, base_enable, &mut problems, &mut notes);
    let credentials = layers::credentials(&opts.env, &cat, &mut problems);
    let env = layers::env(&opts.env, &cat, &mut problems, &mut notes);
    let flags = layers::flags(&opts.flags, &cat, &mut problems, &mut notes);
    for w in &notes.warnings {
        tracing::warn!("{w}");
    }
    for n in &notes.notices {
        tracing::info!("{n}");
    }

    let all = [&defaults, &file, &legacy, &credentials, &env, &flags];
    let figment = all.iter().fold(Figment::new(), |f, layer| f.merge(*layer));

    let mut values = BTreeMap::new();
    for leaf in cat.leaves() {
        let Ok(merged) = figment.find_value(&leaf.path) else { continue };
        let value: Json = match merged.deserialize() {
            Ok(v) => v,
            Err(e) => {
                problems.push(ConfigProblem::BadSchema { detail: format!("merging {}: {e}", leaf.path) });
                continue;
            }
        };
        // The tag of the merged value names the layer that won; the layer
        // knows the exact file line, env var or flag.
        let layer_name = figment.find_metadata(&leaf.path).map(|m| m.name.as_ref()).unwrap_or("default");
        let source = all
            .iter()
            .find(|l| l.name == layer_name)
            .and_then(|l| l.values.get(&leaf.path))
            .map(|(_, s)| s.clone())
            .unwrap_or(Source::Default);
        values.insert(leaf.path.clone(), ConfigValue { value, source, secret: leaf.secret });
    }

    let enabled: Vec<String> = values
        .get("system_services.enable")
        .and_then(|v| v.value.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    for leaf in cat.leaves().filter(|l| l.required && !values.contains_key(&l.path)) {
        if let Some((package, _)) = &leaf.package {
            if enabled.iter().any(|e| e == package.as_str()) {
                problems.push(ConfigProblem::MissingRequired { key: leaf.path.clone(), package: package.clone(), env_var: leaf.env_var() });
            }
        }
    }

    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    Ok(assemble(&cat, values, config_file, notes))
}

/// The section to read from the config file: `--config-section` (the last
/// one), else `SYSDEPLOY_CONFIG_SECTION`; `None` reads the whole file.
fn section(opts: &LoadOptions, problems: &mut Vec<ConfigProblem>) -> Option<&'static str> {
    let (value, origin) = match opts.flags.iter().rev().find(|f| f.key == SECTION_KEY) {
        Some(f) => (f.value.as_str(), Source::Flag { flag: f.flag.clone() }),
        None => match opts.env.iter().rev().find(|(k, v)| k == ENV_CONFIG_SECTION && !v.is_empty()) {
            Some((k, v)) => (v.as_str(), Source::Env { var: k.clone() }),
            None => return None,
        },
    };
    if value == SECTION_SYSTEM_SERVICES {
        Some(SECTION_SYSTEM_SERVICES)
    } else {
        problems.push(ConfigProblem::BadSection { value: catalog::show_text(value), origin });
        None
    }
}

/// Builds the typed view from checked values; every fixed key has a default,
/// and every value was checked by its kind, so the conversions cannot fail.
fn assemble(cat: &Catalog, values: BTreeMap<String, ConfigValue>, config_file: Option<PathBuf>, notes: layers::Notes) -> EffectiveConfig {
    let str_of = |k: &str| values.get(k).and_then(|v| v.value.as_str()).unwrap_or_default().to_string();
    let node = NodeConfig {
        state_dir: PathBuf::from(str_of("node.state_dir")),
        api_listen: str_of("node.api_listen").parse().unwrap_or_else(|_| DEFAULT_API_LISTEN.parse().expect("valid default")),
    };
    let enable = values
        .get("system_services.enable")
        .and_then(|v| v.value.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).filter_map(|s| PackageName::new(s).ok()).collect())
        .unwrap_or_default();
    let on_failure = if str_of("system_services.on_failure") == "continue" { OnFailure::Continue } else { OnFailure::Stop };
    let call_ttl_ms = values.get("system_services.call_ttl_ms").and_then(|v| v.value.as_u64()).unwrap_or(DEFAULT_CALL_TTL_MS);
    let guest_limit = |i: usize| {
        let (key, default) = catalog::GUEST_LIMIT_KEYS[i];
        values.get(key).and_then(|v| v.value.as_u64()).unwrap_or(default)
    };
    let guest = GuestLimitsConfig {
        result_max_bytes: guest_limit(0),
        open_files_max: guest_limit(1),
        data_quota_mb: guest_limit(2),
        data_quota_inodes: guest_limit(3),
        log_lines_per_sec: guest_limit(4),
        log_line_max_bytes: guest_limit(5),
    };
    let ceiling = |i: usize| {
        let (key, default) = catalog::SERVICE_CEILING_KEYS[i];
        values.get(key).and_then(|v| v.value.as_u64()).unwrap_or(default)
    };
    let ceilings = ServiceCeilings { call_ttl_max_ms: ceiling(0), queue_depth_max: ceiling(1), memory_max_mb: ceiling(2) };
    let mut packages: BTreeMap<PackageName, BTreeMap<String, ConfigValue>> =
        cat.packages.iter().map(|p| (p.clone(), BTreeMap::new())).collect();
    for leaf in cat.leaves() {
        if let (Some((package, key)), Some(v)) = (&leaf.package, values.get(&leaf.path)) {
            packages.entry(package.clone()).or_default().insert(key.clone(), v.clone());
        }
    }
    EffectiveConfig {
        node,
        system_services: SystemServicesConfig { enable, on_failure, call_ttl_ms, guest, ceilings, packages },
        config_file,
        warnings: notes.warnings,
        notices: notes.notices,
        values,
    }
}

#[cfg(test)]
mod tests;
