//! `sysdeploy package check DIR`: validates one package folder the way the
//! build and `--distros-dir` load it, and goes on where they stop, so a
//! package developer sees every problem of a package at once:
//!
//! 1. the manifest (`distro::manifest::load`, the build's own validation; a
//!    package with `depends_on` is loaded with its sibling folders, as
//!    `--distros-dir` would);
//! 2. the desired state with the config defaults (`deploy::desired::resolve`:
//!    templates, spell scripts, triggers, spell KV), required keys given a
//!    placeholder of their type;
//! 3. each service's facade exports and links (`runtime::inspect_exports`,
//!    `check_links_offline`: imports the host does not provide);
//! 4. the plan against an empty node (`deploy::plan`: init functions exist,
//!    arity and argument types);
//! 5. provenance: every component has an entry in an artifacts lock (the
//!    package's own `artifacts.lock`, or `distros/artifacts.lock` of the repo
//!    it sits in) whose artifact hash matches, with the toolchain and command
//!    that built it, and whose sources still hash as recorded.
//!
//! Nothing is written anywhere; no state directory is opened.

#[allow(dead_code)] // the build half is xtask's
#[path = "../xtask/src/lock.rs"]
mod lock;

use crate::config::{self, schema::ValueType, FlagValue, LoadOptions};
use crate::deploy::{self, desired::DesiredError, PlanError};
use crate::distro::manifest::{self, DiskFiles, ManifestSource};
use crate::distro::Catalog;
use crate::ids::PeerId;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One problem: the file, where in it (key path, line, or function), and what
/// is wrong and expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    /// `line:col`, a manifest key path (`service[0].init[1]`), or empty.
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file)?;
        if !self.at.is_empty() {
            write!(f, ": {}", self.at)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What a good package holds, for the summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub package: String,
    pub version: String,
    /// `alias: function, function, …` per service (the facade's exports).
    pub services: Vec<ServiceSummary>,
    pub spells: Vec<String>,
    pub config_keys: Vec<String>,
    /// Components with their provenance (`toolchain`, `command`).
    pub components: Vec<ComponentSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceSummary {
    pub alias: String,
    pub functions: Vec<String>,
    pub init_calls: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentSummary {
    pub file: String,
    pub blake3: String,
    pub toolchain: String,
    pub command: String,
}

/// The outcome of a check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dir: String,
    pub ok: bool,
    pub problems: Vec<Problem>,
    pub summary: Summary,
}

/// Checks the package folder `dir`; never fails, every problem is in the report.
pub fn check(dir: &Path) -> Report {
    let mut problems = Vec::new();
    let mut summary = Summary::default();
    let shown = dir.display().to_string();
    let done = |problems: Vec<Problem>, summary| Report { dir: shown.clone(), ok: problems.is_empty(), problems, summary };
    let manifest_path = dir.join(manifest::MANIFEST_FILE);
    let text = match std::fs::read_to_string(&manifest_path) {
        Ok(t) => t,
        Err(e) => {
            let message = if dir.is_dir() {
                format!("cannot read: {e}; a package folder holds a distro.toml (see docs/packages.md)")
            } else {
                format!("{shown} is not a folder ({e}); give the package folder, the one holding distro.toml")
            };
            problems.push(Problem { file: manifest_path.display().to_string(), at: String::new(), message });
            return done(problems, summary);
        }
    };
    // The folder is loaded as a package of its parent, the way --distros-dir
    // loads `<dir>/<package>/distro.toml`; messages name `<parent>/<dir>/…`.
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let (root, name) = match (abs.parent(), abs.file_name()) {
        (Some(r), Some(n)) => (r.to_path_buf(), n.to_string_lossy().into_owned()),
        _ => (PathBuf::from("/"), String::new()),
    };
    let label = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| root.display().to_string());
    let mut sources = vec![ManifestSource { dir: name.clone(), text: text.clone() }];
    if declares_dependencies(&text) {
        if let Ok(siblings) = manifest::scan_dir(&root, &label) {
            sources.extend(siblings.into_iter().filter(|s| s.dir != name));
        }
    }
    let manifest_file = format!("{label}/{name}/{}", manifest::MANIFEST_FILE);
    let catalog = match manifest::load(&label, &sources, &DiskFiles::new(&root)) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors.0 {
                let mut at = e.line_col.map(|(l, c)| format!("line {l}:{c}")).unwrap_or_default();
                if !e.key.is_empty() {
                    at = if at.is_empty() { e.key.clone() } else { format!("{at}, {}", e.key) };
                }
                problems.push(Problem { file: e.file, at, message: e.kind.to_string() });
            }
            return done(problems, summary);
        }
    };
    let Some(pkg) = catalog.packages.iter().find(|p| p.manifest_path == manifest_file) else {
        problems.push(Problem { file: manifest_file, at: String::new(), message: "the package did not load".into() });
        return done(problems, summary);
    };
    summary.package = pkg.name.to_string();
    summary.version = pkg.version.clone();
    summary.spells = pkg.spells.iter().map(|s| s.alias.to_string()).collect();
    summary.config_keys = pkg.config.keys.iter().map(|k| k.name.clone()).collect();

    let at_service = |alias: &str| pkg.services.iter().position(|s| s.alias.as_str() == alias);
    let at_init = |alias: &str, function: &str| -> String {
        match at_service(alias) {
            Some(i) => match pkg.services[i].init.iter().position(|x| x.function == function) {
                Some(j) => format!("service[{i}].init[{j}] (function {function})"),
                None => format!("service[{i}]"),
            },
            None => String::new(),
        }
    };
    let at_spell =
        |alias: &str| pkg.spells.iter().position(|s| s.alias.as_str() == alias).map(|i| format!("spell[{i}]")).unwrap_or_default();

    // 2. The desired state with the defaults (and placeholders for required keys).
    let mut desired = match desired_with_defaults(&catalog) {
        Ok(d) => Some(d),
        Err(Failure::Config(msg)) => {
            problems.push(Problem { file: manifest_file.clone(), at: "config".into(), message: msg });
            None
        }
        Err(Failure::Desired(errors)) => {
            for e in errors {
                let at = match &e {
                    DesiredError::Script { alias, .. } | DesiredError::Trigger { alias, .. } | DesiredError::Kv { alias, .. } => {
                        at_spell(alias.as_str())
                    }
                    DesiredError::Template { what, .. } => what.clone(),
                    _ => String::new(),
                };
                problems.push(Problem { file: manifest_file.clone(), at, message: e.to_string() });
            }
            // Spell problems must not hide the services' problems: resolve
            // once more without the spells, for the export and plan checks.
            let mut services_only = catalog.clone();
            services_only.packages.iter_mut().for_each(|p| p.spells.clear());
            desired_with_defaults(&services_only).ok()
        }
    };

    // 3. Exports and links of each service of this package.
    for (i, s) in pkg.services.iter().enumerate() {
        let bp = s.blueprint();
        let facade = s.components.last().expect("validated: at least one component");
        let at = format!("service[{i}].components (alias {})", s.alias);
        match crate::runtime::inspect_exports(Path::new(""), None, &facade.hash, &facade.bytes) {
            Ok(sigs) => {
                summary.services.push(ServiceSummary {
                    alias: s.alias.to_string(),
                    functions: sigs.iter().map(|f| f.to_string()).collect(),
                    init_calls: s.init.len(),
                });
                if let Some(d) = desired.as_mut() {
                    d.exports.insert(bp.id(), sigs);
                }
            }
            Err(e) => problems.push(Problem { file: manifest_file.clone(), at: at.clone(), message: format!("{}.wasm: {e}", facade.name) }),
        }
        let lookup =
            |h: &crate::ids::ComponentHash| s.components.iter().find(|c| &c.hash == h).map(|c| std::borrow::Cow::Borrowed(&*c.bytes));
        if let Err(e) = crate::runtime::check_links_offline(&bp, &lookup) {
            problems.push(Problem { file: manifest_file.clone(), at, message: e.to_string() });
        }
    }

    // 4. The plan on an empty node: init functions, arity, argument types.
    if let Some(d) = &desired {
        if let Err(errors) = deploy::plan(d, &deploy::Current::default(), &PeerId::from_ed25519_public(&[0; 32])) {
            for e in errors.0 {
                let at = match &e {
                    PlanError::UnknownInitFunction { alias, function, .. }
                    | PlanError::InitArity { alias, function, .. }
                    | PlanError::InitArgType { alias, function, .. } => at_init(alias.as_str(), function),
                    _ => String::new(),
                };
                // Problems of sibling packages loaded for depends_on are theirs.
                if e.to_string().contains(&format!("package {},", pkg.name)) || at.is_empty() {
                    problems.push(Problem { file: manifest_file.clone(), at, message: e.to_string() });
                }
            }
        }
    }

    // 5. Provenance of every component.
    provenance(&abs, &label, &name, pkg, &mut problems, &mut summary);
    done(problems, summary)
}

/// Whether `[package] depends_on` is a non-empty list (unparseable text is
/// left to the manifest loader to report).
fn declares_dependencies(text: &str) -> bool {
    toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("package")?.get("depends_on")?.as_array().map(|a| !a.is_empty()))
        .unwrap_or(false)
}

enum Failure {
    Config(String),
    Desired(Vec<DesiredError>),
}

/// A value of `ty` that passes its type check, for required keys.
fn placeholder(ty: ValueType) -> &'static str {
    match ty {
        ValueType::String | ValueType::StringList => "placeholder",
        ValueType::Integer => "1",
        ValueType::Float => "1.0",
        ValueType::Boolean => "false",
        ValueType::Url => "http://127.0.0.1:1",
        ValueType::HexAddress => "0x0000000000000000000000000000000000000000",
        ValueType::HexNumber => "0x1",
    }
}

/// Resolves every package of the catalog against the config defaults; the
/// process environment and config files are not read, so the check does not
/// depend on where it runs.
fn desired_with_defaults(catalog: &Catalog) -> Result<deploy::Desired, Failure> {
    let names: Vec<String> = catalog.packages.iter().map(|p| p.name.to_string()).collect();
    let mut flags = vec![FlagValue::set("system_services.enable", names.join(","))];
    for p in &catalog.packages {
        for k in p.config.keys.iter().filter(|k| k.required && k.default.is_none()) {
            flags.push(FlagValue::set(&format!("system_services.{}.{}", p.name.config_key(), k.name), placeholder(k.ty)));
        }
    }
    let opts = LoadOptions { config_path: None, env: Vec::new(), flags };
    let cfg = config::load(&opts, &catalog.schemas()).map_err(|e| Failure::Config(e.to_string()))?;
    deploy::desired::resolve(catalog, &cfg).map_err(|e| Failure::Desired(e.0))
}

/// Where the lock for `pkg_dir` is: its own `artifacts.lock` (paths relative
/// to the package folder), or the nearest enclosing repo's
/// `distros/artifacts.lock` (paths relative to the repo).
fn find_lock(pkg_dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let own = pkg_dir.join(lock::PACKAGE_LOCK);
    if own.is_file() {
        return Some((own, pkg_dir.to_path_buf()));
    }
    pkg_dir.ancestors().skip(1).map(|a| (a.join(lock::LOCK_PATH), a.to_path_buf())).find(|(l, _)| l.is_file())
}

fn provenance(pkg_dir: &Path, label: &str, name: &str, pkg: &crate::distro::Package, problems: &mut Vec<Problem>, summary: &mut Summary) {
    let components: Vec<&crate::distro::ComponentSpec> = pkg.services.iter().flat_map(|s| &s.components).collect();
    let Some((lock_path, base)) = find_lock(pkg_dir) else {
        for c in components {
            problems.push(Problem {
                file: format!("{label}/{name}/{}.wasm", c.name),
                at: String::new(),
                message: format!(
                    "no provenance: no {} in the package folder (nor a distros/{} in a repo around it) records the sources, \
                     toolchain and command that built this component; `cargo xtask new-package` and `cargo xtask distros` write one",
                    lock::PACKAGE_LOCK,
                    lock::PACKAGE_LOCK
                ),
            });
        }
        return;
    };
    let lock_label = lock_path.display().to_string();
    let entries = match std::fs::read_to_string(&lock_path).map_err(|e| e.to_string()).and_then(|t| lock::parse_as(&lock_label, &t)) {
        Ok(e) => e,
        Err(message) => {
            problems.push(Problem { file: lock_label, at: String::new(), message });
            return;
        }
    };
    let repo_targets = if lock_path.ends_with(lock::LOCK_PATH) { lock::targets(&base).unwrap_or_default() } else { Vec::new() };
    let mut seen = std::collections::BTreeSet::new();
    for c in components {
        if !seen.insert(c.hash) {
            continue;
        }
        let file = format!("{label}/{name}/{}.wasm", c.name);
        let hash = c.hash.to_hex();
        // The entry for this file: by path (the file or what its symlink
        // points at), else by identical bytes (a copy of a built artifact).
        let on_disk = pkg_dir.join(format!("{}.wasm", c.name));
        let canon_base = std::fs::canonicalize(&base).unwrap_or_else(|_| base.clone());
        let rel =
            std::fs::canonicalize(&on_disk).ok().and_then(|p| p.strip_prefix(&canon_base).ok().map(|r| r.to_string_lossy().into_owned()));
        let entry =
            entries.iter().find(|e| Some(&e.artifact) == rel.as_ref()).or_else(|| entries.iter().find(|e| e.artifact_blake3 == hash));
        let Some(entry) = entry else {
            problems.push(Problem {
                file,
                at: String::new(),
                message: format!("no entry in {lock_label}: the component's provenance (sources, toolchain, command) is not recorded; rebuild it with `cargo xtask distros` (or `cargo xtask new-package` for a package of its own)"),
            });
            continue;
        };
        if entry.artifact_blake3 != hash {
            problems.push(Problem {
                file: file.clone(),
                at: String::new(),
                message: format!(
                    "its blake3 is {hash}, but {lock_label} records {} for {}; the artifact is not the one that was built: rebuild it",
                    entry.artifact_blake3, entry.artifact
                ),
            });
        }
        if entry.toolchain.is_empty() || entry.command.is_empty() {
            problems.push(Problem {
                file: file.clone(),
                at: String::new(),
                message: format!("{lock_label} does not record the toolchain and command that built {}", entry.artifact),
            });
        }
        // Sources: from the entry's own inputs (a package lock) or the repo's targets.
        let inputs: Option<Vec<String>> = if !entry.inputs.is_empty() {
            Some(entry.inputs.clone())
        } else {
            repo_targets.iter().find(|t| t.artifact == entry.artifact).map(|t| t.sources.clone())
        };
        match inputs.map(|i| lock::hash_sources(&base, &i)) {
            Some(Ok(h)) if h != entry.sources_blake3 => problems.push(Problem {
                file: file.clone(),
                at: String::new(),
                message: format!(
                    "its sources changed since it was built ({lock_label} records another sources hash); rebuild it and update the lock"
                ),
            }),
            Some(Err(e)) => problems.push(Problem {
                file: file.clone(),
                at: String::new(),
                message: format!("cannot hash the sources recorded in {lock_label}: {e}"),
            }),
            _ => {}
        }
        summary.components.push(ComponentSummary {
            file,
            blake3: hash,
            toolchain: entry.toolchain.clone(),
            command: entry.command.clone(),
        });
    }
}

/// The command: prints the report (text or `--json`); exit 0 when the
/// package is good, 2 with every problem otherwise.
pub fn run(dir: &Path, json: bool) -> crate::exit::Exit {
    let report = check(dir);
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("report serialises"));
    } else if report.ok {
        let s = &report.summary;
        println!("package {} {} ({}): OK", s.package, s.version, report.dir);
        for svc in &s.services {
            println!("  service {}: {} function(s), {} init call(s)", svc.alias, svc.functions.len(), svc.init_calls);
            for f in &svc.functions {
                println!("    {f}");
            }
        }
        for sp in &s.spells {
            println!("  spell {sp}");
        }
        if !s.config_keys.is_empty() {
            println!("  config keys: {}", s.config_keys.join(", "));
        }
        for c in &s.components {
            println!("  component {}: built by {} with {}", c.file, c.toolchain, c.command);
        }
    } else {
        eprintln!("package {}: {} problem(s):", report.dir, report.problems.len());
        for p in &report.problems {
            eprintln!("  - {p}");
        }
    }
    if report.ok {
        crate::exit::Exit::Ok
    } else {
        crate::exit::Exit::Invalid
    }
}
