//! Distro manifests (`distros/<package>/distro.toml`): the user-facing schema,
//! validation that reports every problem at once (file, key path, what was
//! expected), and the validated catalog the deployer plans from.
//!
//! Compiled into both the library and `build.rs` (through `#[path]`), so the
//! build accepts exactly the manifests the library accepts. It may use only
//! `crate::ids`, `crate::config::schema`, `crate::distro::template` and
//! crates that are also build-dependencies (serde, serde_json, toml, blake3,
//! thiserror).

use crate::config::schema::{KeySpec, PackageSchema, ValueType};
use crate::distro::template::{self, Placeholder, Position, Template, TemplateSyntaxError};
use crate::ids::{Alias, ComponentHash, NameError, PackageName};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Name of the manifest file inside each package folder.
pub const MANIFEST_FILE: &str = "distro.toml";

/// Largest `memory_limit_mb`: a 32-bit WebAssembly memory cannot grow past
/// 4 GiB, so a larger cap is a typo that would silently mean "no cap".
pub const MAX_MEMORY_LIMIT_MB: u64 = 4096;

// ------------------------------------------------------------------- model

/// Every package of a distros folder, validated, topologically sorted by
/// `depends_on` (ties broken by name, so the order is deterministic).
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    pub packages: Vec<Package>,
}

/// One validated package.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    pub name: PackageName,
    pub version: String,
    /// Packages whose steps must be applied before this one's.
    pub depends_on: Vec<PackageName>,
    /// The oldest deployed version this release's services migrate their
    /// data from (`migrates_from`, issue 17); an older one is a plan error.
    pub migrates_from: Option<String>,
    /// The `[system_services.<package>]` section's keys, for the config loader.
    pub config: PackageSchema,
    pub services: Vec<ServiceSpec>,
    pub spells: Vec<SpellSpec>,
    /// `distros/<dir>/distro.toml`, for messages that must name the manifest.
    pub manifest_path: String,
}

/// A service the package deploys.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub alias: Alias,
    /// Facade last: its exports are the service's functions.
    pub components: Vec<ComponentSpec>,
    /// Carry `services/<id>/` over when the service is replaced.
    pub keep_data: bool,
    /// What a change of resolved init arguments does.
    pub on_config_change: ConfigChange,
    pub init: Vec<InitSpec>,
    /// This service's data quota in MiB; `None` = the node's default.
    pub data_quota_mb: Option<u64>,
    /// This service's entry quota; `None` = the node's default.
    pub data_quota_inodes: Option<u64>,
    /// Descriptors one instance may hold; `None` = the node's default.
    pub open_files_max: Option<u32>,
    /// Origins (`scheme://host:port`, templates allowed) the service may send
    /// HTTP requests to through `wasi:http/outgoing-handler`; empty = none.
    pub allowed_outbound_hosts: Vec<Template>,
    /// TTL of one call to this service in ms; `None` = the node's `call_ttl_ms`.
    pub call_ttl_ms: Option<u64>,
    /// Calls admitted at once (one running, the rest queued); `None` = the
    /// runtime's default.
    pub queue_depth: Option<u32>,
    /// Functions only init calls and this package's spells may call (`private`).
    pub private: Vec<String>,
    /// Keep the replaced service's data dir (`snapshot_before_replace`, issue 17).
    pub snapshot_before_replace: bool,
}

/// One component of a service, with the bytes embedded in the binary (or
/// loaded from disk) and their blake3 computed once, at build/load time.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentSpec {
    /// File stem (`registry` for `registry.wasm`): names the component in
    /// blueprints and messages.
    pub name: String,
    pub hash: ComponentHash,
    pub bytes: Bytes,
    /// Linear-memory cap of this component's instance; `None` = runtime default.
    pub memory_limit_mb: Option<u64>,
}

/// What a change of an init call's resolved arguments does to a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigChange {
    /// Call the init functions again on the running service.
    #[default]
    Reinit,
    /// The service cannot be re-initialised: deploy a new one (blue-green).
    Replace,
}

/// When an init call runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitRun {
    /// On install, and again whenever its resolved arguments change.
    #[default]
    OnChange,
    /// Only when the service is installed (or replaced by a new one).
    OnInstall,
}

/// One init call (or one per element of `for_each`).
#[derive(Debug, Clone, PartialEq)]
pub struct InitSpec {
    /// Exported function of the facade (`set-expiry`, or `iface#name`).
    pub function: String,
    pub args: Vec<Template>,
    pub run: InitRun,
    /// A list template; when present the call is made once per element, with
    /// `${item}` bound to the element in `args`.
    pub for_each: Option<Template>,
}

/// A spell the package deploys.
#[derive(Debug, Clone, PartialEq)]
pub struct SpellSpec {
    pub alias: Alias,
    /// The Rhai source.
    pub script: Arc<str>,
    /// blake3 of the script's bytes, computed at build/load time.
    pub script_hash: [u8; 32],
    pub trigger: TriggerSpec,
    /// Initial KV, written with three-way merge semantics by the deployer.
    pub kv: BTreeMap<String, Template>,
}

/// When a spell runs.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerSpec {
    /// Periodic: first run at `start`, then every `period_sec` until `end`.
    Clock {
        start: ClockStart,
        /// Resolves to a non-negative integer (checked at load time).
        period_sec: Template,
        /// Resolves to a Unix time in seconds.
        end: Option<Template>,
    },
}

/// First run of a clock trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClockStart {
    Now,
    /// Unix time in seconds.
    At(u64),
}

/// File bytes: `'static` when embedded in the binary, shared when loaded.
#[derive(Clone)]
pub enum Bytes {
    Static(&'static [u8]),
    Shared(Arc<[u8]>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Static(b) => b,
            Bytes::Shared(b) => b,
        }
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}
impl Eq for Bytes {}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.len())
    }
}

// ------------------------------------------------------------------ errors

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// `distros/<dir>/distro.toml`.
    pub file: String,
    /// Line and column, for TOML syntax and schema errors.
    pub line_col: Option<(usize, usize)>,
    /// Key path inside the manifest (`service[0].init[1].args[0]`); empty
    /// for problems of the whole file.
    pub key: String,
    pub kind: ManifestErrorKind,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some((l, c)) = self.line_col {
            write!(f, ":{l}:{c}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for ManifestError {}

/// Why a manifest is invalid; one variant per cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestErrorKind {
    #[error("cannot read: {0}")]
    Read(String),
    #[error("{0}")]
    Syntax(String),
    #[error("{what} {value:?} {reason}")]
    BadName { what: &'static str, value: String, reason: NameError },
    #[error("version {0:?} is not a semantic version; expected MAJOR.MINOR.PATCH such as \"0.9.4\"")]
    BadVersion(String),
    #[error("migrates_from {from:?} is newer than the package's own version {version:?}; it names the oldest deployed version this release can migrate from")]
    MigratesFromNewer { from: String, version: String },
    #[error("package {name} is also defined in {other}; package names must be unique")]
    DuplicatePackage { name: String, other: String },
    #[error("alias {alias} is already used by {other}; services and spells share one alias namespace, so aliases must be unique across all packages")]
    DuplicateAlias { alias: String, other: String },
    #[error("depends on unknown package {name}; known packages: {known}")]
    UnknownDependency { name: String, known: String },
    #[error("dependency cycle {0}; remove one of these depends_on entries")]
    DependencyCycle(String),
    #[error("{path:?} is not a path inside the package folder: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("{what} {path} does not exist; add the file or fix the name")]
    MissingFile { what: &'static str, path: String },
    #[error("cannot read {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("component file {0:?} must have the .wasm extension")]
    NotWasmFile(String),
    #[error("{0} is not a WebAssembly component (expected the component-model header 00 61 73 6d 0d 00 01 00); a core module must be wrapped into a component first")]
    NotComponent(String),
    #[error("{0} is not valid UTF-8")]
    NotUtf8(String),
    #[error("{path} is not valid JSON: {message}")]
    BadJson { path: String, message: String },
    #[error("a service needs at least one component (the facade, last)")]
    NoComponents,
    #[error("component {0} is listed twice in this service")]
    DuplicateComponent(String),
    #[error("expected a file name (\"x.wasm\") or a table {{ file = \"x.wasm\", memory_limit_mb = 64 }}, got {0}")]
    BadComponentEntry(String),
    #[error("memory_limit_mb must be at least 1")]
    ZeroMemoryLimit,
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
    #[error("memory_limit_mb = {0} is more than a 32-bit WebAssembly memory can use; at most 4096 (4 GiB)")]
    HugeMemoryLimit(u64),
    #[error("{0:?} is not a valid config key name (lowercase letters, digits and '_', starting with a letter, at most 64 bytes)")]
    BadConfigKeyName(String),
    #[error("default is {got}, but the key is declared as {}", .expected.describe())]
    DefaultType { expected: ValueType, got: &'static str },
    #[error("a secret key cannot have a default compiled into the binary; remove the default and let operators set it")]
    SecretWithDefault,
    #[error("a key with a default is never missing; drop `required = true` or the default")]
    RequiredWithDefault,
    #[error("{0:?} is not an environment variable name (uppercase letters, digits and '_', starting with a letter)")]
    BadLegacyEnv(String),
    #[error("{0}")]
    Template(TemplateSyntaxError),
    #[error("refers to unknown config key {key}; declared keys: {known} (declare it under [config.{key}])")]
    UnknownConfigKey { key: String, known: String },
    #[error("{placeholder} is {found} and cannot be spliced into text; use it as the whole value")]
    NotSpliceable { placeholder: String, found: &'static str },
    #[error("{0} is only available in init calls that declare for_each")]
    ItemOutsideForEach(String),
    #[error("for_each cannot use ${{item}}: it is what supplies the items")]
    ItemInForEach,
    #[error("for_each is declared but no argument uses ${{item}}")]
    ForEachUnused,
    #[error(
        "for_each must be a list: a literal list, ${{file:<name>.json}} holding a list, or ${{config.<key>}} of type string-list; got {0}"
    )]
    ForEachNotList(String),
    #[error("expected a non-negative integer: a literal or ${{config.<key>}} of type integer; got {0}")]
    NotInteger(String),
    #[error("start must be \"now\" or a Unix time in seconds, got {0}")]
    BadStart(String),
    #[error("spell KV and triggers are readable through the API, so they cannot use the secret config key {0}")]
    SecretInSpell(String),
    #[error("{0:?} is not a WIT function name (kebab-case, optionally prefixed by `namespace:package/interface#`)")]
    BadFunction(String),
    #[error("{0:?} is not a valid KV key (ASCII letters, digits, '_', '-' and '.', at most 128 bytes)")]
    BadKvKey(String),
    #[error("{value:?} is not an allowed outbound host: {reason}; expected \"scheme://host[:port]\" with scheme http, https or *, host a name, an IP, * or *.domain, port a number or * (e.g. \"https://rpc.example.com\", \"http://127.0.0.1:5001\", \"${{config.api_endpoint}}\")")]
    BadOutboundHost { value: String, reason: String },
    #[error("allowed outbound hosts are shown by status and the API, so they cannot use the secret config key {0}")]
    SecretInOutbound(String),
    #[error("{0:?} is listed twice; list each private function once")]
    DuplicatePrivate(String),
}

/// Every problem found, in a deterministic order (folder order, then file
/// order, then cross-package checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // All problems count, but a hostile or generated manifest must not
        // turn the report into a dump: at most MAX_SHOWN, each cut at MAX_LINE.
        const MAX_SHOWN: usize = 100;
        const MAX_LINE: usize = 1000;
        for (i, e) in self.0.iter().take(MAX_SHOWN).enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&crate::text::elide(&e.to_string(), MAX_LINE))?;
        }
        if self.0.len() > MAX_SHOWN {
            write!(f, "\n… and {} more problems; fix the ones above first", self.0.len() - MAX_SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

// ------------------------------------------------------------- file access

/// A file of a package with its blake3.
#[derive(Clone)]
pub struct FileData {
    pub bytes: Bytes,
    /// Computed when read from disk; precomputed by the build for embedded files.
    pub blake3: [u8; 32],
}

/// Why a package file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileError {
    NotFound,
    Io(String),
}

/// Read access to the files of the package folders.
pub trait PackageFiles {
    /// Reads `rel` (already checked to stay inside the folder) of package folder `dir`.
    fn read(&self, dir: &str, rel: &str) -> Result<FileData, FileError>;
}

/// A manifest to validate: its package folder name and its text.
#[derive(Debug, Clone)]
pub struct ManifestSource {
    pub dir: String,
    pub text: String,
}

/// One file read by [`DiskFiles`], for `build.rs` to embed.
#[derive(Debug, Clone)]
pub struct FileRead {
    pub dir: String,
    pub rel: String,
    pub path: PathBuf,
    pub blake3: [u8; 32],
}

/// Package files on disk under a distros root; hashes what it reads and
/// remembers every read (the build embeds exactly those files).
pub struct DiskFiles {
    root: PathBuf,
    reads: Mutex<Vec<FileRead>>,
    /// Files already read, by (folder, path): services sharing a component
    /// share one copy of its bytes and hash it once (N services referencing
    /// one `.wasm` would otherwise hold N copies).
    cache: Mutex<BTreeMap<(String, String), FileData>>,
}

impl DiskFiles {
    pub fn new(root: &Path) -> DiskFiles {
        DiskFiles { root: root.to_path_buf(), reads: Mutex::new(Vec::new()), cache: Mutex::new(BTreeMap::new()) }
    }
    /// Every file read so far, sorted by folder and path, deduplicated.
    pub fn reads(&self) -> Vec<FileRead> {
        let mut v = self.reads.lock().unwrap_or_else(|e| e.into_inner()).clone();
        v.sort_by(|a, b| (&a.dir, &a.rel).cmp(&(&b.dir, &b.rel)));
        v.dedup_by(|a, b| a.dir == b.dir && a.rel == b.rel);
        v
    }
}

impl PackageFiles for DiskFiles {
    fn read(&self, dir: &str, rel: &str) -> Result<FileData, FileError> {
        let key = (dir.to_string(), rel.to_string());
        if let Some(d) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(d.clone());
        }
        let path = self.root.join(dir).join(rel);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FileError::NotFound),
            Err(e) => return Err(FileError::Io(e.to_string())),
        };
        let blake3 = *blake3::hash(&bytes).as_bytes();
        self.reads.lock().unwrap_or_else(|e| e.into_inner()).push(FileRead { dir: dir.to_string(), rel: rel.to_string(), path, blake3 });
        let data = FileData { bytes: Bytes::Shared(bytes.into()), blake3 };
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, data.clone());
        Ok(data)
    }
}

/// Reads every `<root>/<dir>/distro.toml` (folders sorted by name; folders
/// without a manifest, and hidden ones, are skipped).
pub fn scan_dir(root: &Path, root_label: &str) -> Result<Vec<ManifestSource>, ManifestErrors> {
    let fail = |file: String, message: String| {
        ManifestErrors(vec![ManifestError { file, line_col: None, key: String::new(), kind: ManifestErrorKind::Read(message) }])
    };
    let entries = std::fs::read_dir(root).map_err(|e| fail(root_label.to_string(), e.to_string()))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| fail(root_label.to_string(), e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().join(MANIFEST_FILE).is_file() {
            continue;
        }
        dirs.push(name);
    }
    dirs.sort();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for dir in dirs {
        let path = root.join(&dir).join(MANIFEST_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push(ManifestSource { dir, text }),
            Err(e) => errors.push(ManifestError {
                file: format!("{root_label}/{dir}/{MANIFEST_FILE}"),
                line_col: None,
                key: String::new(),
                kind: ManifestErrorKind::Read(e.to_string()),
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ManifestErrors(errors))
    }
}

/// Validates a distros folder on disk, hashing every file it embeds.
pub fn load_dir(root: &Path) -> Result<Catalog, ManifestErrors> {
    let label = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| root.display().to_string());
    let sources = scan_dir(root, &label)?;
    load(&label, &sources, &DiskFiles::new(root))
}

// -------------------------------------------------------------- raw schema

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    package: RawPackage,
    #[serde(default)]
    config: BTreeMap<String, RawKey>,
    #[serde(default)]
    service: Vec<RawService>,
    #[serde(default)]
    spell: Vec<RawSpell>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    name: String,
    version: String,
    #[serde(default)]
    depends_on: Vec<String>,
    /// Oldest deployed version the services migrate from (issue 17).
    migrates_from: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    #[serde(rename = "type")]
    ty: ValueType,
    default: Option<toml::Value>,
    #[serde(default)]
    doc: String,
    #[serde(default)]
    secret: bool,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    legacy_env: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    alias: String,
    components: Vec<toml::Value>,
    #[serde(default)]
    keep_data: bool,
    memory_limit_mb: Option<u64>,
    #[serde(default)]
    on_config_change: ConfigChange,
    #[serde(default)]
    init: Vec<RawInit>,
    data_quota_mb: Option<u64>,
    data_quota_inodes: Option<u64>,
    open_files_max: Option<u32>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<toml::Value>,
    call_ttl_ms: Option<u64>,
    queue_depth: Option<u32>,
    /// Functions not callable through the API (issue 16).
    #[serde(default)]
    private: Vec<String>,
    /// Keep the replaced service's data dir (issue 17).
    #[serde(default)]
    snapshot_before_replace: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInit {
    function: String,
    #[serde(default)]
    args: Vec<toml::Value>,
    #[serde(default)]
    run: InitRun,
    for_each: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpell {
    alias: String,
    script: String,
    trigger: RawTrigger,
    #[serde(default)]
    kv: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    clock: RawClock,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClock {
    start: Option<toml::Value>,
    period_sec: toml::Value,
    end: Option<toml::Value>,
}

// -------------------------------------------------------------- validation

/// Collects the problems of one manifest.
struct Check<'a> {
    file: String,
    root_label: &'a str,
    dir: &'a str,
    files: &'a dyn PackageFiles,
    errors: &'a mut Vec<ManifestError>,
    /// Data files already loaded for templates (shared between templates).
    data: BTreeMap<String, Option<(Arc<serde_json::Value>, bool)>>,
}

impl Check<'_> {
    fn err(&mut self, key: impl Into<String>, kind: ManifestErrorKind) {
        self.errors.push(ManifestError { file: self.file.clone(), line_col: None, key: key.into(), kind });
    }

    fn label(&self, rel: &str) -> String {
        format!("{}/{}/{}", self.root_label, self.dir, rel)
    }

    /// Checks that `rel` stays inside the package folder and reads it.
    fn read(&mut self, key: &str, what: &'static str, rel: &str) -> Option<FileData> {
        let reason = if rel.is_empty() {
            Some("it is empty")
        } else if rel.starts_with('/') || rel.contains(':') {
            Some("absolute paths are not allowed")
        } else if rel.contains('\\') {
            Some("use '/' as the separator")
        } else if rel.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
            Some("'..', '.' and empty components are not allowed")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.err(key, ManifestErrorKind::BadPath { path: rel.to_string(), reason });
            return None;
        }
        match self.files.read(self.dir, rel) {
            Ok(d) => Some(d),
            Err(FileError::NotFound) => {
                let path = self.label(rel);
                self.err(key, ManifestErrorKind::MissingFile { what, path });
                None
            }
            Err(FileError::Io(message)) => {
                let path = self.label(rel);
                self.err(key, ManifestErrorKind::Unreadable { path, message });
                None
            }
        }
    }

    /// Loads a `${file:..}` data file (JSON parsed, other files as text).
    fn data_file(&mut self, key: &str, rel: &str) -> Option<(Arc<serde_json::Value>, bool)> {
        if let Some(cached) = self.data.get(rel) {
            return cached.clone();
        }
        let loaded = self.read(key, "data file", rel).and_then(|d| {
            let path = self.label(rel);
            if rel.ends_with(".json") {
                match serde_json::from_slice::<serde_json::Value>(&d.bytes) {
                    Ok(v) => Some((Arc::new(v), true)),
                    Err(e) => {
                        self.err(key, ManifestErrorKind::BadJson { path, message: e.to_string() });
                        None
                    }
                }
            } else {
                match std::str::from_utf8(&d.bytes) {
                    Ok(s) => Some((Arc::new(serde_json::Value::String(s.to_string())), false)),
                    Err(_) => {
                        self.err(key, ManifestErrorKind::NotUtf8(path));
                        None
                    }
                }
            }
        });
        self.data.insert(rel.to_string(), loaded.clone());
        loaded
    }

    fn template(&mut self, key: &str, value: &toml::Value) -> Option<Template> {
        let json = toml_to_json(value);
        let mut load = |p: &str| self.data_file(key, p);
        match Template::parse(json, &mut load) {
            Ok(t) => Some(t),
            Err(errs) => {
                for e in errs {
                    self.err(key, ManifestErrorKind::Template(e));
                }
                None
            }
        }
    }

    /// Checks a template's placeholders against the config schema and where
    /// `${item}` may appear.
    fn placeholders(&mut self, key: &str, t: &Template, config: &BTreeMap<String, KeySpec>, item_allowed: bool, in_spell: bool) {
        for (p, pos) in t.placeholders() {
            match p {
                Placeholder::Config(k) => match config.get(k) {
                    None => {
                        let known =
                            if config.is_empty() { "(none)".to_string() } else { config.keys().cloned().collect::<Vec<_>>().join(", ") };
                        self.err(key, ManifestErrorKind::UnknownConfigKey { key: k.clone(), known });
                    }
                    Some(spec) => {
                        if pos == Position::InText && spec.ty == ValueType::StringList {
                            self.err(key, ManifestErrorKind::NotSpliceable { placeholder: p.to_string(), found: "a list of strings" });
                        }
                        if in_spell && spec.secret {
                            self.err(key, ManifestErrorKind::SecretInSpell(k.clone()));
                        }
                    }
                },
                Placeholder::File { json, .. } => {
                    if pos == Position::InText && *json {
                        self.err(key, ManifestErrorKind::NotSpliceable { placeholder: p.to_string(), found: "a JSON data file" });
                    }
                }
                Placeholder::Item(_) => {
                    if !item_allowed {
                        self.err(key, ManifestErrorKind::ItemOutsideForEach(p.to_string()));
                    }
                }
            }
        }
    }

    /// A template that must resolve to a non-negative integer.
    fn integer_template(&mut self, key: &str, value: &toml::Value, config: &BTreeMap<String, KeySpec>) -> Option<Template> {
        let t = self.template(key, value)?;
        self.placeholders(key, &t, config, false, true);
        let ok = match (t.as_literal(), t.as_whole()) {
            (Some(v), _) => v.as_u64().is_some(),
            (_, Some(Placeholder::Config(k))) => config.get(k).is_none_or(|s| s.ty == ValueType::Integer),
            _ => false,
        };
        if !ok {
            let found = match t.as_whole() {
                Some(Placeholder::Config(k)) => format!("{t}, which is declared as {}", config[k].ty.describe()),
                _ => t.source().to_string(),
            };
            self.err(key, ManifestErrorKind::NotInteger(found));
            return None;
        }
        Some(t)
    }
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(t.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect()),
    }
}

fn toml_kind(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}

fn default_matches(ty: ValueType, v: &toml::Value) -> bool {
    match ty {
        ValueType::String | ValueType::Url | ValueType::HexAddress | ValueType::HexNumber => v.is_str(),
        ValueType::Integer => v.is_integer(),
        ValueType::Float => v.is_float() || v.is_integer(),
        ValueType::Boolean => v.is_bool(),
        ValueType::StringList => v.as_array().is_some_and(|a| a.iter().all(|i| i.is_str())),
    }
}

fn is_semver(v: &str) -> bool {
    let (core, rest) = match v.find(['-', '+']) {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p.len() == 1 || !p.starts_with('0')))
        && rest.is_none_or(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.+".contains(&b)))
}

/// Semantic-version precedence of two versions (build metadata ignored):
/// `MAJOR.MINOR.PATCH` numerically, then a version without a pre-release
/// above one with; pre-release identifiers compared left to right, numeric
/// ones numerically and below alphanumeric ones, which compare as ASCII; a
/// shorter list of equal identifiers is lower. `None` when either is not a
/// semantic version (`is_semver`).
pub fn compare_versions(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering;
    fn split(v: &str) -> Option<([u64; 3], Option<&str>)> {
        if !is_semver(v) {
            return None;
        }
        let v = v.split('+').next().unwrap_or(v);
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (v, None),
        };
        let mut n = [0u64; 3];
        for (slot, part) in n.iter_mut().zip(core.split('.')) {
            *slot = part.parse().ok()?;
        }
        Some((n, pre))
    }
    let ((an, ap), (bn, bp)) = (split(a)?, split(b)?);
    Some(an.cmp(&bn).then_with(|| match (ap, bp) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            let (mut xs, mut ys) = (x.split('.'), y.split('.'));
            loop {
                match (xs.next(), ys.next()) {
                    (None, None) => return Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some(p), Some(q)) => {
                        let o = match (p.parse::<u64>(), q.parse::<u64>()) {
                            (Ok(i), Ok(j)) => i.cmp(&j),
                            (Ok(_), Err(_)) => Ordering::Less,
                            (Err(_), Ok(_)) => Ordering::Greater,
                            (Err(_), Err(_)) => p.cmp(q),
                        };
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                }
            }
        }
    }))
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty() && s.as_bytes()[0].is_ascii_uppercase() && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn is_kebab(s: &str) -> bool {
    crate::ids::validate_name(s).is_ok()
}

fn is_function_name(s: &str) -> bool {
    match s.split_once('#') {
        None => is_kebab(s),
        Some((iface, name)) => {
            is_kebab(name)
                && !iface.is_empty()
                && iface.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-:/@.".contains(&b))
        }
    }
}

fn is_kv_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// A package that parsed, with what the cross-package checks need.
struct Draft {
    package: Package,
    /// Dependencies as written, with their key paths (unvalidated names are
    /// already reported and dropped).
    deps: Vec<(String, PackageName)>,
    /// Aliases with their key paths.
    aliases: Vec<(String, Alias)>,
}

/// Validates one manifest. Returns a draft whenever the file parsed and the
/// package name is valid, so cross-package checks still see it.
fn check_package(root_label: &str, src: &ManifestSource, files: &dyn PackageFiles, errors: &mut Vec<ManifestError>) -> Option<Draft> {
    let file = format!("{root_label}/{}/{MANIFEST_FILE}", src.dir);
    let raw: RawManifest = match toml::from_str(&src.text) {
        Ok(r) => r,
        Err(e) => {
            let line_col = e.span().map(|s| line_col(&src.text, s.start));
            errors.push(ManifestError {
                file,
                line_col,
                key: String::new(),
                kind: ManifestErrorKind::Syntax(e.message().trim().to_string()),
            });
            return None;
        }
    };
    let mut c = Check { file, root_label, dir: &src.dir, files, errors, data: BTreeMap::new() };

    // [package]
    let name = match PackageName::new(raw.package.name.clone()) {
        Ok(n) => Some(n),
        Err(reason) => {
            c.err("package.name", ManifestErrorKind::BadName { what: "package name", value: raw.package.name.clone(), reason });
            None
        }
    };
    if !is_semver(&raw.package.version) {
        c.err("package.version", ManifestErrorKind::BadVersion(raw.package.version.clone()));
    }
    if let Some(from) = &raw.package.migrates_from {
        if !is_semver(from) {
            c.err("package.migrates_from", ManifestErrorKind::BadVersion(from.clone()));
        } else if compare_versions(from, &raw.package.version) == Some(std::cmp::Ordering::Greater) {
            c.err(
                "package.migrates_from",
                ManifestErrorKind::MigratesFromNewer { from: from.clone(), version: raw.package.version.clone() },
            );
        }
    }
    let mut deps = Vec::new();
    for (i, d) in raw.package.depends_on.iter().enumerate() {
        let key = format!("package.depends_on[{i}]");
        match PackageName::new(d.clone()) {
            Ok(n) => deps.push((key, n)),
            Err(reason) => c.err(key, ManifestErrorKind::BadName { what: "package name", value: d.clone(), reason }),
        }
    }

    // [config.*]
    let mut config: BTreeMap<String, KeySpec> = BTreeMap::new();
    for (k, rk) in &raw.config {
        let key = format!("config.{k}");
        if !template::is_config_key(k) {
            c.err(&key, ManifestErrorKind::BadConfigKeyName(k.clone()));
            continue;
        }
        if let Some(d) = &rk.default {
            if !default_matches(rk.ty, d) {
                let got = if d.is_array() { "a list with an element that is not a string" } else { toml_kind(d) };
                c.err(format!("{key}.default"), ManifestErrorKind::DefaultType { expected: rk.ty, got });
            }
            if rk.secret {
                c.err(format!("{key}.default"), ManifestErrorKind::SecretWithDefault);
            }
            if rk.required {
                c.err(format!("{key}.required"), ManifestErrorKind::RequiredWithDefault);
            }
        }
        for (i, e) in rk.legacy_env.iter().enumerate() {
            if !is_env_name(e) {
                c.err(format!("{key}.legacy_env[{i}]"), ManifestErrorKind::BadLegacyEnv(e.clone()));
            }
        }
        config.insert(
            k.clone(),
            KeySpec {
                name: k.clone(),
                ty: rk.ty,
                default: rk.default.as_ref().map(toml_to_json),
                required: rk.required,
                secret: rk.secret,
                doc: rk.doc.trim().to_string(),
                legacy_env: rk.legacy_env.clone(),
            },
        );
    }

    let mut aliases = Vec::new();
    let mut alias = |c: &mut Check, key: String, value: &str| match Alias::new(value) {
        Ok(a) => {
            aliases.push((key, a.clone()));
            Some(a)
        }
        Err(reason) => {
            c.err(key, ManifestErrorKind::BadName { what: "alias", value: value.to_string(), reason });
            None
        }
    };

    // [[service]]
    let mut services = Vec::new();
    for (si, rs) in raw.service.iter().enumerate() {
        let base = format!("service[{si}]");
        let a = alias(&mut c, format!("{base}.alias"), &rs.alias);
        if rs.memory_limit_mb == Some(0) {
            c.err(format!("{base}.memory_limit_mb"), ManifestErrorKind::ZeroMemoryLimit);
        }
        if let Some(n) = rs.memory_limit_mb.filter(|n| *n > MAX_MEMORY_LIMIT_MB) {
            c.err(format!("{base}.memory_limit_mb"), ManifestErrorKind::HugeMemoryLimit(n));
        }
        for (key, zero) in [
            ("data_quota_mb", rs.data_quota_mb == Some(0)),
            ("data_quota_inodes", rs.data_quota_inodes == Some(0)),
            ("open_files_max", rs.open_files_max == Some(0)),
            ("call_ttl_ms", rs.call_ttl_ms == Some(0)),
            ("queue_depth", rs.queue_depth == Some(0)),
        ] {
            if zero {
                c.err(format!("{base}.{key}"), ManifestErrorKind::ZeroLimit(key));
            }
        }
        if rs.components.is_empty() {
            c.err(format!("{base}.components"), ManifestErrorKind::NoComponents);
        }
        let mut components = Vec::new();
        let mut seen = BTreeSet::new();
        for (ci, entry) in rs.components.iter().enumerate() {
            let key = format!("{base}.components[{ci}]");
            let (rel, limit) = match entry {
                toml::Value::String(s) => (s.clone(), rs.memory_limit_mb),
                toml::Value::Table(t)
                    if t.keys().all(|k| k == "file" || k == "memory_limit_mb") && t.get("file").is_some_and(|f| f.is_str()) =>
                {
                    let limit = match t.get("memory_limit_mb") {
                        None => rs.memory_limit_mb,
                        Some(toml::Value::Integer(n)) if *n > MAX_MEMORY_LIMIT_MB as i64 => {
                            c.err(format!("{key}.memory_limit_mb"), ManifestErrorKind::HugeMemoryLimit(*n as u64));
                            None
                        }
                        Some(toml::Value::Integer(n)) if *n > 0 => Some(*n as u64),
                        Some(toml::Value::Integer(0)) => {
                            c.err(format!("{key}.memory_limit_mb"), ManifestErrorKind::ZeroMemoryLimit);
                            None
                        }
                        Some(other) => {
                            c.err(&key, ManifestErrorKind::BadComponentEntry(format!("memory_limit_mb = {other}")));
                            None
                        }
                    };
                    (t["file"].as_str().unwrap_or_default().to_string(), limit)
                }
                other => {
                    c.err(&key, ManifestErrorKind::BadComponentEntry(other.to_string()));
                    continue;
                }
            };
            let Some(stem) = rel.strip_suffix(".wasm").filter(|s| !s.is_empty()) else {
                c.err(&key, ManifestErrorKind::NotWasmFile(rel));
                continue;
            };
            let name = stem.rsplit('/').next().unwrap_or(stem).to_string();
            if !seen.insert(name.clone()) {
                c.err(&key, ManifestErrorKind::DuplicateComponent(name.clone()));
            }
            let Some(data) = c.read(&key, "component", &rel) else { continue };
            if !data.bytes.starts_with(&COMPONENT_HEADER) {
                let path = c.label(&rel);
                c.err(&key, ManifestErrorKind::NotComponent(path));
                continue;
            }
            components.push(ComponentSpec { name, hash: ComponentHash(data.blake3), bytes: data.bytes, memory_limit_mb: limit });
        }

        let mut init = Vec::new();
        for (ii, ri) in rs.init.iter().enumerate() {
            let ibase = format!("{base}.init[{ii}]");
            if !is_function_name(&ri.function) {
                c.err(format!("{ibase}.function"), ManifestErrorKind::BadFunction(ri.function.clone()));
            }
            let for_each = ri.for_each.as_ref().and_then(|v| {
                let key = format!("{ibase}.for_each");
                let t = c.template(&key, v)?;
                if t.uses_item() {
                    c.err(key, ManifestErrorKind::ItemInForEach);
                    return None;
                }
                c.placeholders(&key, &t, &config, false, false);
                let is_list = match (t.as_literal(), t.as_whole()) {
                    (Some(v), _) => v.is_array(),
                    (_, Some(Placeholder::File { value, json: true, .. })) => value.is_array(),
                    (_, Some(Placeholder::Config(k))) => config.get(k).is_none_or(|s| s.ty == ValueType::StringList),
                    _ => false,
                };
                if !is_list {
                    let found = match t.as_whole() {
                        Some(Placeholder::File { value, .. }) => format!("{t} holding {}", template::kind(value)),
                        Some(Placeholder::Config(k)) => format!("{t}, which is declared as {}", config[k].ty.describe()),
                        _ => t.source().to_string(),
                    };
                    c.err(key, ManifestErrorKind::ForEachNotList(found));
                    return None;
                }
                Some(t)
            });
            let mut args = Vec::new();
            let mut uses_item = false;
            for (ai, v) in ri.args.iter().enumerate() {
                let key = format!("{ibase}.args[{ai}]");
                if let Some(t) = c.template(&key, v) {
                    c.placeholders(&key, &t, &config, ri.for_each.is_some(), false);
                    uses_item |= t.uses_item();
                    args.push(t);
                }
            }
            if ri.for_each.is_some() && !uses_item {
                c.err(format!("{ibase}.for_each"), ManifestErrorKind::ForEachUnused);
            }
            init.push(InitSpec { function: ri.function.clone(), args, run: ri.run, for_each });
        }
        let mut allowed_outbound_hosts = Vec::new();
        for (hi, v) in rs.allowed_outbound_hosts.iter().enumerate() {
            let key = format!("{base}.allowed_outbound_hosts[{hi}]");
            let toml::Value::String(text) = v else {
                c.err(&key, ManifestErrorKind::BadOutboundHost { value: v.to_string(), reason: "it is not a string".into() });
                continue;
            };
            let Some(t) = c.template(&key, v) else { continue };
            c.placeholders(&key, &t, &config, false, false);
            for k in t.config_keys() {
                if config.get(k).is_some_and(|s| s.secret) {
                    c.err(&key, ManifestErrorKind::SecretInOutbound(k.to_string()));
                }
            }
            // A literal entry is checked here; a templated one when the
            // deployer resolves it against the config.
            if t.as_literal().is_some() {
                if let Err(reason) = AllowedHost::parse(text, false) {
                    // Never repeat credentials someone wrote into the entry.
                    let value = if text.contains('@') { "<redacted: holds user:password@>".to_string() } else { text.clone() };
                    c.err(&key, ManifestErrorKind::BadOutboundHost { value, reason });
                    continue;
                }
            }
            allowed_outbound_hosts.push(t);
        }
        let mut private: Vec<String> = Vec::new();
        for (pi, f) in rs.private.iter().enumerate() {
            let key = format!("{base}.private[{pi}]");
            if !is_function_name(f) {
                c.err(key, ManifestErrorKind::BadFunction(f.clone()));
            } else if private.contains(f) {
                c.err(key, ManifestErrorKind::DuplicatePrivate(f.clone()));
            } else {
                private.push(f.clone());
            }
        }
        if let Some(alias) = a {
            services.push(ServiceSpec {
                alias,
                components,
                keep_data: rs.keep_data,
                on_config_change: rs.on_config_change,
                init,
                data_quota_mb: rs.data_quota_mb,
                data_quota_inodes: rs.data_quota_inodes,
                open_files_max: rs.open_files_max,
                allowed_outbound_hosts,
                call_ttl_ms: rs.call_ttl_ms,
                queue_depth: rs.queue_depth,
                private,
                snapshot_before_replace: rs.snapshot_before_replace,
            });
        }
    }

    // [[spell]]
    let mut spells = Vec::new();
    for (si, sp) in raw.spell.iter().enumerate() {
        let base = format!("spell[{si}]");
        let a = alias(&mut c, format!("{base}.alias"), &sp.alias);
        let key = format!("{base}.script");
        let script = c.read(&key, "spell script", &sp.script).and_then(|d| match std::str::from_utf8(&d.bytes) {
            Ok(s) => Some((Arc::<str>::from(s), d.blake3)),
            Err(_) => {
                let path = c.label(&sp.script);
                c.err(&key, ManifestErrorKind::NotUtf8(path));
                None
            }
        });
        let clock = &sp.trigger.clock;
        let start = match &clock.start {
            None => Some(ClockStart::Now),
            Some(toml::Value::String(s)) if s == "now" => Some(ClockStart::Now),
            Some(toml::Value::Integer(n)) if *n >= 0 => Some(ClockStart::At(*n as u64)),
            Some(other) => {
                c.err(format!("{base}.trigger.clock.start"), ManifestErrorKind::BadStart(other.to_string()));
                None
            }
        };
        let period = c.integer_template(&format!("{base}.trigger.clock.period_sec"), &clock.period_sec, &config);
        let end = clock.end.as_ref().map(|e| c.integer_template(&format!("{base}.trigger.clock.end"), e, &config));
        let mut kv = BTreeMap::new();
        for (k, v) in &sp.kv {
            let key = format!("{base}.kv.{k}");
            if !is_kv_key(k) {
                c.err(&key, ManifestErrorKind::BadKvKey(k.clone()));
                continue;
            }
            if let Some(t) = c.template(&key, v) {
                c.placeholders(&key, &t, &config, false, true);
                kv.insert(k.clone(), t);
            }
        }
        if let (Some(alias), Some((script, script_hash)), Some(start), Some(period_sec), Some(end)) =
            (a, script, start, period, end.map_or(Some(None), |e| e.map(Some)))
        {
            spells.push(SpellSpec { alias, script, script_hash, trigger: TriggerSpec::Clock { start, period_sec, end }, kv });
        }
    }

    let name = name?;
    let schema = PackageSchema { package: name.as_str().to_string(), keys: config.into_values().collect() };
    Some(Draft {
        package: Package {
            name,
            version: raw.package.version,
            depends_on: deps.iter().map(|(_, n)| n.clone()).collect(),
            migrates_from: raw.package.migrates_from,
            config: schema,
            services,
            spells,
            manifest_path: c.file,
        },
        deps,
        aliases,
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |n| before.len() - n - 1) + 1;
    (line, col)
}

/// Validates every manifest (per package, then across packages) and builds
/// the catalog. `root_label` names the folder in messages (`distros`).
pub fn load(root_label: &str, sources: &[ManifestSource], files: &dyn PackageFiles) -> Result<Catalog, ManifestErrors> {
    let mut errors = Vec::new();
    let mut drafts: Vec<Draft> = Vec::new();
    for src in sources {
        if let Some(d) = check_package(root_label, src, files, &mut errors) {
            drafts.push(d);
        }
    }

    let cross = |errors: &mut Vec<ManifestError>, file: &str, key: &str, kind| {
        errors.push(ManifestError { file: file.to_string(), line_col: None, key: key.to_string(), kind })
    };

    // Unique package names (first definition wins).
    let mut by_name: BTreeMap<PackageName, usize> = BTreeMap::new();
    let mut unique = Vec::new();
    for (i, d) in drafts.iter().enumerate() {
        if let Some(&first) = by_name.get(&d.package.name) {
            let other = drafts[first].package.manifest_path.clone();
            cross(
                &mut errors,
                &d.package.manifest_path,
                "package.name",
                ManifestErrorKind::DuplicatePackage { name: d.package.name.to_string(), other },
            );
        } else {
            by_name.insert(d.package.name.clone(), i);
            unique.push(i);
        }
    }

    // Unique aliases across all packages.
    let mut alias_owner: BTreeMap<Alias, String> = BTreeMap::new();
    for d in &drafts {
        for (key, a) in &d.aliases {
            let here = format!("package {} ({} {key})", d.package.name, d.package.manifest_path);
            match alias_owner.get(a) {
                Some(other) => cross(
                    &mut errors,
                    &d.package.manifest_path,
                    key,
                    ManifestErrorKind::DuplicateAlias { alias: a.to_string(), other: other.clone() },
                ),
                None => {
                    alias_owner.insert(a.clone(), here);
                }
            }
        }
    }

    // Known dependencies.
    let known = by_name.keys().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
    for &i in &unique {
        let d = &drafts[i];
        for (key, dep) in &d.deps {
            if !by_name.contains_key(dep) {
                cross(
                    &mut errors,
                    &d.package.manifest_path,
                    key,
                    ManifestErrorKind::UnknownDependency { name: dep.to_string(), known: known.clone() },
                );
            }
        }
    }

    // Topological order (Kahn, ties by name); what remains is in a cycle.
    let mut pending: BTreeMap<&PackageName, BTreeSet<&PackageName>> = unique
        .iter()
        .map(|&i| {
            let d = &drafts[i];
            (&d.package.name, d.deps.iter().map(|(_, n)| n).filter(|n| by_name.contains_key(*n)).collect())
        })
        .collect();
    let mut order = Vec::new();
    loop {
        let ready: Option<&PackageName> = pending.iter().find(|(_, deps)| deps.is_empty()).map(|(n, _)| *n);
        let Some(next) = ready else { break };
        pending.remove(next);
        for deps in pending.values_mut() {
            deps.remove(next);
        }
        order.push(next.clone());
    }
    let mut reported: BTreeSet<&PackageName> = BTreeSet::new();
    let starts: Vec<&PackageName> = pending.keys().copied().collect();
    for start in starts {
        if reported.contains(start) {
            continue;
        }
        // Walk first unresolved dependencies until a package repeats.
        let mut path = vec![start];
        let cycle = loop {
            let last = *path.last().expect("non-empty");
            let next = pending[last].iter().next().copied().expect("a package left by Kahn has a pending dependency");
            if let Some(pos) = path.iter().position(|p| *p == next) {
                break path[pos..].to_vec();
            }
            path.push(next);
        };
        if cycle.iter().any(|p| reported.contains(p)) {
            continue;
        }
        reported.extend(cycle.iter().copied());
        let first = cycle.iter().min().copied().expect("non-empty");
        let rot = cycle.iter().position(|p| *p == first).expect("present");
        let mut names: Vec<String> = cycle[rot..].iter().chain(&cycle[..rot]).map(|p| p.to_string()).collect();
        names.push(first.to_string());
        let d = &drafts[by_name[first]];
        let key = d.deps.iter().find(|(_, n)| pending.contains_key(n) && cycle.contains(&n)).map(|(k, _)| k.clone()).unwrap_or_default();
        cross(&mut errors, &d.package.manifest_path, &key, ManifestErrorKind::DependencyCycle(names.join(" -> ")));
    }

    if !errors.is_empty() {
        return Err(ManifestErrors(errors));
    }
    let mut slots: Vec<Option<Draft>> = drafts.into_iter().map(Some).collect();
    let packages = order.iter().map(|n| slots[by_name[n]].take().expect("each package once").package).collect();
    Ok(Catalog { packages })
}

#[cfg(test)]
mod disk_files_tests {
    use super::*;

    /// Services sharing a component share one copy of its bytes: a folder
    /// with many services must not hold (and hash) the file once per service.
    #[test]
    fn services_sharing_a_component_share_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("shared");
        std::fs::create_dir_all(&pkg).unwrap();
        let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distros/v1/kv-store/kv-store.wasm");
        std::fs::copy(&wasm, pkg.join("kv-store.wasm")).unwrap();
        let mut m = String::from("[package]\nname = \"shared\"\nversion = \"0.1.0\"\n");
        for alias in ["one", "two", "three"] {
            m.push_str(&format!("\n[[service]]\nalias = \"{alias}\"\ncomponents = [\"kv-store.wasm\"]\n"));
        }
        std::fs::write(pkg.join("distro.toml"), m).unwrap();
        let catalog = load_dir(dir.path()).unwrap();
        let comps: Vec<&ComponentSpec> = catalog.packages[0].services.iter().map(|s| &s.components[0]).collect();
        assert_eq!(comps.len(), 3);
        for c in &comps[1..] {
            assert_eq!(c.hash, comps[0].hash);
            assert!(std::ptr::eq(c.bytes.as_ptr(), comps[0].bytes.as_ptr()), "each service got its own copy of the component bytes");
        }
    }
}

// ------------------------------------------------------ outbound allow-list

/// One entry of a service's `allowed_outbound_hosts`: the origins its
/// requests through `wasi:http/outgoing-handler` may go to. `None` parts
/// (written `*`) match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// `http` or `https`; `None` = either.
    pub scheme: Option<String>,
    pub host: HostPattern,
    /// `None` = any port.
    pub port: Option<u16>,
}

/// The host part of an [`AllowedHost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: any host.
    Any,
    /// A name or IP, lowercase (IPv6 in brackets).
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (not the bare domain).
    Suffix(String),
}

impl AllowedHost {
    /// Parses `scheme://host[:port]`. A missing port is the scheme's default
    /// (80, 443). Credentials (`user:pass@`) are refused. With `origin_only`
    /// (an entry resolved from a config value such as an API endpoint) a
    /// path, query or fragment is dropped; otherwise it is an error.
    /// Messages never repeat the value (a config value may hold a token).
    pub fn parse(text: &str, origin_only: bool) -> Result<AllowedHost, String> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| "it has no scheme (expected scheme://host[:port])".to_string())?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Some("http".to_string()),
            "https" => Some("https".to_string()),
            "*" => None,
            _ => return Err("the scheme must be http, https or *".into()),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err("credentials (user:password@) are not allowed in an allowed host; keep them in a secret config key".into());
        }
        if !origin_only && !tail.is_empty() && tail != "/" {
            return Err("only an origin is allowed, without a path, query or fragment".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or_else(|| "an IPv6 address lacks its closing ']'".to_string())?;
            if addr.is_empty() || !addr.chars().all(|ch| ch.is_ascii_hexdigit() || ch == ':' || ch == '.') {
                return Err("the IPv6 address is malformed".into());
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| "expected ':' and a port after the IPv6 address".to_string())?),
            };
            (HostPattern::Exact(format!("[{}]", addr.to_ascii_lowercase())), port)
        } else {
            let (h, p) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            let valid = |name: &str| {
                !name.is_empty()
                    && name.len() <= 253
                    && name.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            };
            let host = if h == "*" {
                HostPattern::Any
            } else if let Some(domain) = h.strip_prefix("*.") {
                if !valid(domain) {
                    return Err("the domain after '*.' is not a host name".into());
                }
                HostPattern::Suffix(format!(".{domain}"))
            } else if valid(&h) {
                HostPattern::Exact(h)
            } else {
                return Err("the host is empty or not a host name or IP address".into());
            };
            (host, p)
        };
        let port = match port {
            Some("*") => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
                _ => return Err("the port must be a number from 1 to 65535 or *".into()),
            },
            None => match scheme.as_deref() {
                Some("http") => Some(80),
                Some("https") => Some(443),
                _ => return Err("with scheme * give a port (a number or *)".into()),
            },
        };
        Ok(AllowedHost { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` is allowed (`host` as in a
    /// URI: lowercase compared, IPv6 in brackets).
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.scheme.as_deref().is_none_or(|s| s.eq_ignore_ascii_case(scheme))
            && self.port.is_none_or(|p| p == port)
            && match &self.host {
                HostPattern::Any => true,
                HostPattern::Exact(h) => *h == host,
                HostPattern::Suffix(d) => host.ends_with(d.as_str()),
            }
    }
}

/// The canonical form: `scheme://host:port`, `*` where anything matches.
impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            HostPattern::Any => "*".to_string(),
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Suffix(d) => format!("*{d}"),
        };
        let port = self.port.map_or("*".to_string(), |p| p.to_string());
        write!(f, "{}://{host}:{port}", self.scheme.as_deref().unwrap_or("*"))
    }
}

impl ServiceSpec {
    /// `allowed_outbound_hosts` resolved against the package's config, in
    /// canonical form (sorted, deduplicated). An entry whose config key is
    /// unset grants nothing and is left out. Errors name the entry and the
    /// config keys it read, never the value.
    pub fn resolve_outbound<C: template::ConfigLookup + ?Sized>(&self, cfg: &C) -> Result<Vec<String>, Vec<String>> {
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        for (i, t) in self.allowed_outbound_hosts.iter().enumerate() {
            let what = || {
                let keys = t.config_keys();
                let from = if keys.is_empty() { String::new() } else { format!(" (from {})", keys.join(", ")) };
                format!("allowed_outbound_hosts[{i}]{from}")
            };
            let r = match template::resolve(t, cfg) {
                Ok(r) => r,
                Err(template::TemplateError::Unset { .. }) => continue,
                Err(e) => {
                    errors.push(format!("{}: {e}", what()));
                    continue;
                }
            };
            match r.value.as_str() {
                _ if r.secret => errors.push(format!("{}: reads a secret config key", what())),
                Some(text) => match AllowedHost::parse(text, true) {
                    Ok(h) => out.push(h.to_string()),
                    Err(reason) => errors.push(format!("{}: not an allowed outbound host: {reason}", what())),
                },
                None => {
                    errors.push(format!("{}: resolves to {}, expected a string scheme://host[:port]", what(), template::kind(&r.value)))
                }
            }
        }
        out.sort();
        out.dedup();
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod version_order_tests {
    use super::compare_versions;
    use std::cmp::Ordering::*;

    #[test]
    fn versions_compare_by_semver_precedence() {
        let ordered = [
            "0.9.4",
            "0.10.0",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0",
            "1.2.0",
            "10.0.0",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(compare_versions(a, b), Some(i.cmp(&j)), "{a} vs {b}");
            }
        }
        assert_eq!(compare_versions("1.0.0+build.5", "1.0.0"), Some(Equal));
        assert_eq!(compare_versions("1.0", "1.0.0"), None);
        assert_eq!(compare_versions("1.0.0", "v1"), None);
        assert_eq!(compare_versions("2.0.0", "1.99.99"), Some(Greater));
        assert_eq!(compare_versions("1.0.0", "1.0.1"), Some(Less));
    }
}
