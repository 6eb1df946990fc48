//! The catalogue of every key the node config accepts: the fixed `[node]` and
//! `[system_services]` keys plus one section per package schema, each with its
//! kind, default and secrecy, and the typing rules shared by every layer.
//!
//! Typing lives here so that a value from a TOML file, an env var and a `--set`
//! flag is judged by exactly the same rules.

use super::schema::{PackageSchema, ValueType};
use crate::ids::PackageName;
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use toml::de::DeValue;

/// Prefix of every env override; `__` separates levels below it.
pub const ENV_PREFIX: &str = "SYSDEPLOY_";
/// Env var naming the config file; not a config key.
pub const ENV_CONFIG: &str = "SYSDEPLOY_CONFIG";
/// Env var of the CLI's `--distros-dir`; not a config key.
pub const ENV_DISTROS_DIR: &str = "SYSDEPLOY_DISTROS_DIR";
/// Env var of `--config-section`; not a config key.
pub const ENV_CONFIG_SECTION: &str = "SYSDEPLOY_CONFIG_SECTION";
/// `SYSDEPLOY_` env vars the CLI owns: the env layer skips them instead of
/// reading them as config keys (`cli` checks that every `env =` of its
/// arguments is listed here).
pub const CLI_ENV: &[&str] =
    &[ENV_CONFIG, ENV_DISTROS_DIR, ENV_CONFIG_SECTION, "SYSDEPLOY_BOOTSTRAP_FROM", "SYSDEPLOY_BOOTSTRAP_TOKEN_FILE"];
/// Pseudo-key of a [`super::FlagValue`] that selects section mode
/// (`--config-section`); read by the file layer, not a config key.
pub const SECTION_KEY: &str = "config_section";
/// The only section a larger file can be read for: `[system_services]`
/// (and `[node]` next to it), as in a nox node's config file.
pub const SECTION_SYSTEM_SERVICES: &str = "system_services";
/// Top-level tables read from a file in section mode.
pub const SECTION_TABLES: &[&str] = &["node", "system_services"];
/// nox's own env form of its `[system_services]` section; read as an alias of
/// `SYSDEPLOY_SYSTEM_SERVICES__`, with one deprecation warning.
pub const LEGACY_SECTION_PREFIX: &str = "FLUENCE_SYSTEM_SERVICES__";
/// nox's switch for the decider: `true` adds `decider` to `enable`, `false`
/// removes it.
pub const ENV_JOIN_ALL_DEALS: &str = "FLUENCE_ENV_CONNECTOR_JOIN_ALL_DEALS";
/// The package `FLUENCE_ENV_CONNECTOR_JOIN_ALL_DEALS` switches.
pub const JOIN_ALL_DEALS_PACKAGE: &str = "decider";

/// Keys of nox's `[system_services]` that mean nothing for WebAssembly
/// components: accepted from every layer with a deprecation warning saying
/// why, and never part of the effective config or the plan.
pub const RETIRED: &[(&str, &str)] = &[
    (
        "system_services.aqua_ipfs.ipfs_binary_path",
        "the IPFS adapter is a WebAssembly component that reaches IPFS through its API multiaddr \
         (local_api_multiaddr), not by running an ipfs binary; remove the key",
    ),
    (
        "system_services.connector.curl_binary_path",
        "the connector is a WebAssembly component inside the decider package and never runs curl; \
         its chain endpoint is [system_services.decider] network_api_endpoint; remove the key",
    ),
];

/// Why a retired key no longer applies, if `path` is one.
pub(crate) fn retired(path: &str) -> Option<&'static str> {
    RETIRED.iter().find(|(p, _)| *p == path).map(|(_, why)| *why)
}

/// Default of `node.state_dir`.
pub const DEFAULT_STATE_DIR: &str = ".sysdeploy";
/// Default of `node.api_listen`.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7200";
/// Default of `system_services.call_ttl_ms`.
pub const DEFAULT_CALL_TTL_MS: u64 = 60_000;
/// Default of `system_services.keep_generations`.
pub const DEFAULT_KEEP_GENERATIONS: u64 = 3;
/// Limits on what one guest may take (`system_services.guest_*`), with defaults.
pub const GUEST_LIMIT_KEYS: [(&str, u64); 6] = [
    ("system_services.guest_result_max_bytes", 16 << 20),
    ("system_services.guest_open_files_max", 256),
    ("system_services.guest_data_quota_mb", 1024),
    ("system_services.guest_data_quota_inodes", 100_000),
    ("system_services.guest_log_lines_per_sec", 100),
    ("system_services.guest_log_line_max_bytes", 4096),
];

/// Node-level ceilings of what a package's `distro.toml` may ask for one
/// service (`call_ttl_ms`, `queue_depth`, `memory_limit_mb`), with defaults.
/// A manifest value above its ceiling is refused (exit 2) when the desired
/// state is resolved.
pub const SERVICE_CEILING_KEYS: [(&str, u64); 3] = [
    ("system_services.service_call_ttl_max_ms", 600_000),
    ("system_services.service_queue_depth_max", 1024),
    ("system_services.service_memory_max_mb", 4096),
];

/// How a key's value is checked and normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A non-empty path string.
    Path,
    /// `ip:port`.
    SocketAddr,
    /// A list of embedded package names (env/flag form: comma-separated).
    Packages,
    /// `"stop"` or `"continue"`.
    OnFailure,
    /// A positive integer number of milliseconds.
    Millis,
    /// A positive integer (a count or a size).
    Positive,
    /// A package key, typed by its schema.
    Typed(ValueType),
}

/// One settable key.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    /// Dotted path as written in the file (`system_services.aqua_ipfs.local_api_multiaddr`).
    pub path: String,
    pub kind: Kind,
    /// Compiled-in default, already normalised.
    pub default: Option<Json>,
    /// Redacted in every output when set.
    pub secret: bool,
    /// Must end up with a value when its package is enabled.
    pub required: bool,
    /// Deprecated env names honoured below the `SYSDEPLOY_` one.
    pub legacy_env: Vec<String>,
    /// For package keys: which package and which schema key.
    pub package: Option<(PackageName, String)>,
}

impl Leaf {
    /// The `SYSDEPLOY_` env var that sets this key.
    pub fn env_var(&self) -> String {
        format!("{ENV_PREFIX}{}", self.path.replace('.', "__").to_uppercase())
    }
}

/// Why a value does not fit its key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Mismatch {
    /// The value has the wrong shape; the text says what was expected.
    Expected(String),
    /// A package list names packages that are not embedded.
    UnknownPackages(Vec<String>),
}

/// Every key the config accepts, built from the package schemas.
#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    leaves: BTreeMap<String, Leaf>,
    /// Paths that are tables (`node`, `system_services`, `system_services.decider`).
    tables: BTreeSet<String>,
    /// Embedded package names, in schema order (the default of `enable`).
    pub packages: Vec<PackageName>,
}

impl Catalog {
    /// Builds the catalogue; schema defects (bad package name, default of the
    /// wrong type) are returned as texts because they are bugs in a distro.
    pub fn new(schemas: &[PackageSchema]) -> (Self, Vec<String>) {
        let mut defects = Vec::new();
        let mut cat = Catalog { leaves: BTreeMap::new(), tables: BTreeSet::new(), packages: Vec::new() };
        cat.tables.insert("node".into());
        cat.tables.insert("system_services".into());
        let fixed = [
            ("node.state_dir", Kind::Path, Json::from(DEFAULT_STATE_DIR)),
            ("node.api_listen", Kind::SocketAddr, Json::from(DEFAULT_API_LISTEN)),
            // Reload when the config file changes (`crate::watch`).
            ("node.watch_config", Kind::Typed(ValueType::Boolean), Json::from(false)),
            ("system_services.on_failure", Kind::OnFailure, Json::from("stop")),
            ("system_services.call_ttl_ms", Kind::Millis, Json::from(DEFAULT_CALL_TTL_MS)),
            // Generations whose components, artifacts and kept data stay (issue 17).
            ("system_services.keep_generations", Kind::Positive, Json::from(DEFAULT_KEEP_GENERATIONS)),
            // Keep a replaced service's data dir with its generation (issue 17).
            ("system_services.snapshot_before_replace", Kind::Typed(ValueType::Boolean), Json::from(false)),
        ];
        let limits =
            GUEST_LIMIT_KEYS.iter().chain(&SERVICE_CEILING_KEYS).map(|(path, default)| (*path, Kind::Positive, Json::from(*default)));
        for (path, kind, default) in fixed.into_iter().chain(limits) {
            cat.insert(Leaf {
                path: path.into(),
                kind,
                default: Some(default),
                secret: false,
                required: false,
                legacy_env: vec![],
                package: None,
            });
        }
        for schema in schemas {
            let name = match PackageName::new(schema.package.clone()) {
                Ok(n) => n,
                Err(e) => {
                    defects.push(format!("package name {:?} {e}", schema.package));
                    continue;
                }
            };
            let section = format!("system_services.{}", name.config_key());
            if !cat.tables.insert(section.clone()) || cat.leaves.contains_key(&section) {
                defects.push(format!("package {name} is declared twice (or its section collides with a fixed key)"));
                continue;
            }
            cat.packages.push(name.clone());
            for spec in &schema.keys {
                let path = format!("{section}.{}", spec.name);
                let kind = Kind::Typed(spec.ty);
                let default = match &spec.default {
                    None => None,
                    Some(d) => match check_json(kind, d) {
                        Ok(v) => Some(v),
                        Err(_) => {
                            defects.push(format!("package {name}: default of {} is not {}", spec.name, spec.ty.describe()));
                            None
                        }
                    },
                };
                if spec.name.is_empty() || spec.name.contains('.') || cat.leaves.contains_key(&path) {
                    defects.push(format!("package {name}: key {:?} is empty, dotted or declared twice", spec.name));
                    continue;
                }
                cat.insert(Leaf {
                    path,
                    kind,
                    default,
                    secret: spec.secret,
                    required: spec.required,
                    legacy_env: spec.legacy_env.clone(),
                    package: Some((name.clone(), spec.name.clone())),
                });
            }
        }
        let enable_default = Json::from(cat.packages.iter().map(|p| Json::from(p.as_str())).collect::<Vec<_>>());
        cat.insert(Leaf {
            path: "system_services.enable".into(),
            kind: Kind::Packages,
            default: Some(enable_default),
            secret: false,
            required: false,
            legacy_env: vec![],
            package: None,
        });
        (cat, defects)
    }

    fn insert(&mut self, leaf: Leaf) {
        self.leaves.insert(leaf.path.clone(), leaf);
    }

    pub fn leaf(&self, path: &str) -> Option<&Leaf> {
        self.leaves.get(path)
    }

    pub fn leaves(&self) -> impl Iterator<Item = &Leaf> {
        self.leaves.values()
    }

    /// `""` is the root table.
    pub fn is_table(&self, path: &str) -> bool {
        path.is_empty() || self.tables.contains(path)
    }

    /// A table that exists only to hold retired keys (nox's
    /// `[system_services.connector]`): walked for them, not a package.
    pub fn is_retired_table(&self, path: &str) -> bool {
        !self.is_table(path)
            && !self.leaves.contains_key(path)
            && RETIRED.iter().any(|(p, _)| p.rsplit_once('.').map(|(t, _)| t) == Some(path))
    }

    /// Names of the keys and tables directly under `table` (for hints).
    pub fn children(&self, table: &str) -> Vec<String> {
        let prefix = if table.is_empty() { String::new() } else { format!("{table}.") };
        let mut out: Vec<String> = self
            .leaves
            .keys()
            .chain(self.tables.iter())
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('.'))
            .map(str::to_string)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether the table at `path` holds a secret key at any depth (a value
    /// given for the table itself may be a secret put one level too high).
    pub fn holds_secret(&self, path: &str) -> bool {
        let prefix = if path.is_empty() { String::new() } else { format!("{path}.") };
        self.leaves.values().any(|l| l.secret && l.path.starts_with(&prefix))
    }

    /// The known key closest to the unknown `path`, if any is close: first a
    /// key that differs only in where the levels are cut (`decider_wallet_key`
    /// for `decider.wallet_key`: one `_` where the env needs `__`), then the
    /// closest sibling, then the closest key anywhere.
    pub fn suggestion(&self, path: &str) -> Option<String> {
        let flat = |p: &str| p.replace(['.', '-'], "_");
        let wanted = flat(path);
        let known = || self.leaves.keys().chain(self.tables.iter());
        if let Some(k) = known().find(|k| flat(k) == wanted) {
            return Some(k.clone());
        }
        let (table, last) = match path.rsplit_once('.') {
            Some((t, l)) => (t, l),
            None => ("", path),
        };
        let normalised = last.replace('-', "_");
        let sibling = self
            .children(table)
            .into_iter()
            .map(|c| (edit_distance(&c, &normalised), c))
            .filter(|(d, c)| *d <= 2.max(c.len() / 4))
            .min()
            .map(|(_, c)| if table.is_empty() { c } else { format!("{table}.{c}") });
        sibling.or_else(|| known().map(|k| (edit_distance(&flat(k), &wanted), k)).filter(|(d, _)| *d <= 2).min().map(|(_, k)| k.clone()))
    }

    /// Checks a value from a TOML file.
    pub fn check_toml(&self, kind: Kind, v: &DeValue<'_>) -> Result<Json, Mismatch> {
        let json = toml_to_json(v).ok_or_else(|| Mismatch::Expected(self.expected(kind)))?;
        self.check(kind, &json)
    }

    /// Checks a value given as text (env var or `--set`).
    pub fn check_text(&self, kind: Kind, s: &str) -> Result<Json, Mismatch> {
        let bad = || Mismatch::Expected(self.expected(kind));
        let json = match kind {
            Kind::Path
            | Kind::SocketAddr
            | Kind::OnFailure
            | Kind::Typed(ValueType::String | ValueType::Url | ValueType::HexAddress | ValueType::HexNumber) => Json::from(s),
            Kind::Millis | Kind::Positive | Kind::Typed(ValueType::Integer) => Json::from(s.trim().parse::<i64>().map_err(|_| bad())?),
            Kind::Typed(ValueType::Float) => {
                let f: f64 = s.trim().parse().map_err(|_| bad())?;
                serde_json::Number::from_f64(f).map(Json::Number).ok_or_else(bad)?
            }
            Kind::Typed(ValueType::Boolean) => match s.trim() {
                "true" => Json::Bool(true),
                "false" => Json::Bool(false),
                _ => return Err(bad()),
            },
            Kind::Packages | Kind::Typed(ValueType::StringList) => {
                let items: Vec<Json> = s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(Json::from).collect();
                // An env/flag value that names no package (``, `,`, ` , `) is
                // far more often a templating slip than a wish to remove every
                // system service and its data.
                if kind == Kind::Packages && items.is_empty() {
                    return Err(Mismatch::Expected(
                        "a comma-separated list of package names; a value that names no package (empty, or only commas \
                         and spaces) would remove every system service and its data, so it is refused here (to run no \
                         package, write enable = [] in the config file)"
                            .into(),
                    ));
                }
                Json::from(items)
            }
        };
        self.check(kind, &json)
    }

    /// Checks and normalises an already-parsed value.
    pub(crate) fn check(&self, kind: Kind, v: &Json) -> Result<Json, Mismatch> {
        let bad = || Mismatch::Expected(self.expected(kind));
        match kind {
            Kind::Packages => {
                let items = v.as_array().ok_or_else(bad)?;
                let mut names = Vec::new();
                for item in items {
                    names.push(item.as_str().ok_or_else(bad)?.to_string());
                }
                let unknown: Vec<String> =
                    names.iter().filter(|n| !self.packages.iter().any(|p| p.as_str() == n.as_str())).cloned().collect();
                if !unknown.is_empty() {
                    return Err(Mismatch::UnknownPackages(unknown));
                }
                let distinct: BTreeSet<&String> = names.iter().collect();
                if distinct.len() != names.len() {
                    return Err(Mismatch::Expected("a list naming each package at most once".into()));
                }
                Ok(v.clone())
            }
            _ => check_json(kind, v).map_err(|_| bad()),
        }
    }

    /// What a value of `kind` must look like, for messages.
    pub fn expected(&self, kind: Kind) -> String {
        match kind {
            Kind::Path => "a non-empty path".into(),
            Kind::SocketAddr => "an IP socket address such as \"127.0.0.1:7200\"".into(),
            Kind::Packages => format!(
                "a list of embedded package names (in env or --set: comma-separated), from: {}",
                self.packages.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
            ),
            Kind::OnFailure => "\"stop\" or \"continue\"".into(),
            Kind::Millis => "a positive integer (milliseconds)".into(),
            Kind::Positive => "a positive integer".into(),
            Kind::Typed(t) => t.describe().into(),
        }
    }
}

/// Checks a JSON value against a kind that does not need the catalogue.
fn check_json(kind: Kind, v: &Json) -> Result<Json, ()> {
    match kind {
        Kind::Path => v.as_str().filter(|s| !s.is_empty()).map(Json::from).ok_or(()),
        Kind::SocketAddr => v.as_str().filter(|s| s.parse::<SocketAddr>().is_ok()).map(Json::from).ok_or(()),
        Kind::OnFailure => v.as_str().filter(|s| matches!(*s, "stop" | "continue")).map(Json::from).ok_or(()),
        Kind::Millis | Kind::Positive => v.as_i64().filter(|n| *n > 0).map(Json::from).ok_or(()),
        Kind::Packages => Err(()),
        Kind::Typed(ValueType::String) => v.as_str().map(Json::from).ok_or(()),
        Kind::Typed(ValueType::Integer) => v.as_i64().map(Json::from).ok_or(()),
        Kind::Typed(ValueType::Float) => v.as_f64().and_then(serde_json::Number::from_f64).map(Json::Number).ok_or(()),
        Kind::Typed(ValueType::Boolean) => v.as_bool().map(Json::from).ok_or(()),
        Kind::Typed(ValueType::StringList) => {
            let items = v.as_array().ok_or(())?;
            items.iter().map(|i| i.as_str().map(Json::from).ok_or(())).collect::<Result<Vec<_>, _>>().map(Json::from)
        }
        Kind::Typed(ValueType::Url) => v.as_str().filter(|s| is_http_url(s)).map(Json::from).ok_or(()),
        Kind::Typed(ValueType::HexAddress) => v.as_str().filter(|s| is_hex(s, 40, 40)).map(Json::from).ok_or(()),
        Kind::Typed(ValueType::HexNumber) => v.as_str().filter(|s| is_hex(s, 1, 16)).map(Json::from).ok_or(()),
    }
}

/// An absolute `http`/`https` URL with a host, written without surrounding
/// spaces (the parser would trim them; the value would not be what runs).
fn is_http_url(s: &str) -> bool {
    s.trim() == s && url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()))
}

/// `0x` (or `0X`) followed by `min..=max` hex digits.
fn is_hex(s: &str, min: usize, max: usize) -> bool {
    let Some(digits) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) else { return false };
    (min..=max).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_hexdigit())
}

/// TOML value to JSON; `None` for values JSON cannot hold (datetimes,
/// integers beyond i64, non-finite floats) — never valid for any key.
fn toml_to_json(v: &DeValue<'_>) -> Option<Json> {
    Some(match v {
        DeValue::String(s) => Json::from(s.as_ref()),
        DeValue::Integer(i) => Json::from(i64::from_str_radix(i.as_str(), i.radix()).ok()?),
        DeValue::Float(f) => Json::Number(serde_json::Number::from_f64(f.as_str().parse().ok()?)?),
        DeValue::Boolean(b) => Json::Bool(*b),
        DeValue::Datetime(_) => return None,
        DeValue::Array(a) => Json::from(a.iter().map(|x| toml_to_json(x.get_ref())).collect::<Option<Vec<_>>>()?),
        DeValue::Table(t) => {
            Json::Object(t.iter().map(|(k, v)| Some((k.get_ref().to_string(), toml_to_json(v.get_ref())?))).collect::<Option<_>>()?)
        }
    })
}

/// A short TOML-like rendering of a file value for messages.
pub(crate) fn show_toml(v: &DeValue<'_>) -> String {
    let s = match v {
        DeValue::String(s) => format!("{:?}", s.as_ref()),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(a) => format!("[{}]", a.iter().map(|x| show_toml(x.get_ref())).collect::<Vec<_>>().join(", ")),
        DeValue::Table(t) => {
            format!(
                "{{ {} }}",
                t.iter().map(|(k, v)| format!("{} = {}", k.get_ref(), show_toml(v.get_ref()))).collect::<Vec<_>>().join(", ")
            )
        }
    };
    truncate(s)
}

/// A short rendering of a text value (env var or flag) for messages.
pub(crate) fn show_text(s: &str) -> String {
    truncate(format!("{s:?}"))
}

fn truncate(s: String) -> String {
    const MAX: usize = 120;
    if s.chars().count() <= MAX {
        s
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(row[j + 1]) };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> Catalog {
        let (c, defects) = Catalog::new(&super::super::tests::fixture());
        assert!(defects.is_empty(), "{defects:?}");
        c
    }

    #[test]
    fn text_values_are_typed_by_kind() {
        let c = cat();
        assert_eq!(c.check_text(Kind::Typed(ValueType::Integer), "120"), Ok(Json::from(120)));
        assert!(c.check_text(Kind::Typed(ValueType::Integer), "abc").is_err());
        assert_eq!(c.check_text(Kind::Typed(ValueType::String), "120"), Ok(Json::from("120")));
        assert_eq!(c.check_text(Kind::Typed(ValueType::Boolean), "true"), Ok(Json::Bool(true)));
        assert!(c.check_text(Kind::Typed(ValueType::Boolean), "yes").is_err());
        assert_eq!(c.check_text(Kind::Packages, "registry, decider"), Ok(serde_json::json!(["registry", "decider"])));
        for empty in ["", ",", " , ", ",,", " "] {
            assert!(c.check_text(Kind::Packages, empty).is_err(), "{empty:?}: a package list naming nothing is refused from env or a flag");
        }
        assert_eq!(c.check_text(Kind::Typed(ValueType::StringList), ","), Ok(serde_json::json!([])), "only `enable` is guarded");
        assert_eq!(c.check_text(Kind::Packages, "registry,nope"), Err(Mismatch::UnknownPackages(vec!["nope".into()])));
        assert!(c.check_text(Kind::Packages, "registry,registry").is_err());
        assert!(c.check_text(Kind::Millis, "0").is_err());
        assert!(c.check_text(Kind::Positive, "0").is_err());
        assert_eq!(c.check_text(Kind::Positive, "256"), Ok(Json::from(256)));
        assert!(c.check_text(Kind::SocketAddr, "localhost").is_err());
        assert!(c.check_text(Kind::OnFailure, "halt").is_err());
        assert!(c.check_text(Kind::Path, "").is_err());
    }

    #[test]
    fn hints() {
        let c = cat();
        assert_eq!(c.suggestion("system_services.aqua-ipfs").as_deref(), Some("system_services.aqua_ipfs"));
        assert_eq!(c.suggestion("nod").as_deref(), Some("node"));
        assert_eq!(c.suggestion("completely_else"), None);
        assert!(c.holds_secret("system_services.decider") && c.holds_secret("system_services"));
        assert!(!c.holds_secret("system_services.registry") && !c.holds_secret("node"));
        // One `_` where the env needs `__`: the level cut is found.
        assert_eq!(c.suggestion("system_services.decider_wallet_key").as_deref(), Some("system_services.decider.wallet_key"));
        assert_eq!(c.suggestion("system_service.decider.wallet_key").as_deref(), Some("system_services.decider.wallet_key"));
        assert_eq!(c.children(""), vec!["node", "system_services"]);
    }

    #[test]
    fn env_var_names() {
        let c = cat();
        let l = c.leaf("system_services.aqua_ipfs.external_api_multiaddr").unwrap();
        assert_eq!(l.env_var(), "SYSDEPLOY_SYSTEM_SERVICES__AQUA_IPFS__EXTERNAL_API_MULTIADDR");
    }
}
