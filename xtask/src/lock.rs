//! `distros/artifacts.lock`: for every committed guest component, its blake3,
//! the blake3 of the sources it is built from, and its provenance (the
//! command that built it and the toolchain version), so CI can tell a stale
//! artifact without the wasm target or the guest's language toolchain.
//!
//! Every `.wasm` under `distros/` and `tests/distros/` (a symlink to or a copy
//! of a built artifact counts as that artifact) must be built by a target here: a component with no
//! provenance record is a problem. Rust guests are built with cargo, Python
//! guests with componentize-py.
//!
//! Shared by `cargo xtask distros [--check]`, `tests/distros.rs`, `tests/kit.rs`
//! and `sysdeploy package check` (included there with `#[path]`): depends only
//! on std and blake3.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Repo-relative path of the lock file.
pub const LOCK_PATH: &str = "distros/artifacts.lock";

/// Name of a package-local lock (a package built outside the repo, e.g. by
/// `cargo xtask new-package --dir`): paths in it are relative to the package folder.
pub const PACKAGE_LOCK: &str = "artifacts.lock";

/// Folders whose packages' components must all have a lock entry.
pub const COVERED: &[&str] = &["distros", "tests/distros"];

/// Guest crates outside `distros/` whose artifacts are test fixtures:
/// (crate folder, cargo feature or "", artifact destination).
pub const TEST_GUESTS: &[(&str, &str, &str)] = &[
    ("tests/distros/guest", "", "tests/distros/v1/kv-store/kv-store.wasm"),
    ("tests/distros/guest", "v2", "tests/distros/v2/kv-store/kv-store.wasm"),
    ("tests/distros/guest", "fail-init", "tests/distros/fail-init/kv-store/kv-store.wasm"),
    ("tests/distros/hostile", "", "tests/distros/limits/hostile/hostile.wasm"),
    ("tests/distros/hostile-tree", "", "tests/distros/containment/hostile/hostile.wasm"),
    ("tests/distros/fetcher", "", "tests/distros/outbound/fetcher/fetcher.wasm"),
    ("tests/distros/migrator", "", "tests/distros/migrate/kv-store/kv-store.wasm"),
    ("tests/distros/migrator", "err", "tests/distros/migrate-err/kv-store/kv-store.wasm"),
    ("tests/distros/migrator", "trap", "tests/distros/migrate-trap/kv-store/kv-store.wasm"),
    ("tests/distros/migrator", "bad-signature", "tests/distros/migrate-bad-signature/kv-store/kv-store.wasm"),
];

/// Python guests built with componentize-py: (package folder, WIT world,
/// Python module in `<package>/guest/`). The artifact is
/// `<package>/<folder name>.wasm`; the WIT is `<package>/wit` plus `wit/host.wit`.
pub const PY_GUESTS: &[(&str, &str, &str)] = &[("tests/distros/python/py-records", "sysdeploy:py-records/py-records@0.1.0", "app")];

/// How an artifact is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builder {
    /// `cargo build --release --target wasm32-wasip2` of a guest crate.
    Cargo {
        /// The crate's package name (the built file is `<name with _>.wasm`).
        crate_name: String,
        /// Cargo feature to enable, if any.
        feature: Option<String>,
        /// Repo-relative Cargo workspace manifest the crate is built through.
        workspace_manifest: String,
    },
    /// `componentize-py ... componentize` of a Python module.
    ComponentizePy {
        /// Repo-relative WIT files or folders (`-d`), in order.
        wit: Vec<String>,
        world: String,
        /// Repo-relative folder holding the module (`-p`).
        app_dir: String,
        module: String,
    },
}

impl Builder {
    /// The tool whose version is the toolchain (`<tool> --version`).
    pub fn tool(&self) -> &'static str {
        match self {
            Builder::Cargo { .. } => "rustc",
            Builder::ComponentizePy { .. } => "componentize-py",
        }
    }
}

/// One artifact and how it is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Repo-relative destination of the `.wasm` (committed).
    pub artifact: String,
    /// Repo-relative folder of the guest sources (crate or Python app).
    pub crate_dir: String,
    pub builder: Builder,
    /// Repo-relative files and folders whose content determines the artifact.
    pub sources: Vec<String>,
}

impl Target {
    /// The command that builds the artifact, run from the repo root (as
    /// recorded in the lock; `cargo xtask distros` also sets
    /// `--remap-path-prefix` flags so the bytes do not depend on where the
    /// repo lives).
    pub fn command(&self) -> Vec<String> {
        let s = |x: &str| x.to_string();
        match &self.builder {
            Builder::Cargo { crate_name, feature, workspace_manifest } => {
                let mut v: Vec<String> =
                    ["cargo", "build", "--release", "--target", "wasm32-wasip2", "--locked", "--manifest-path"].map(s).to_vec();
                v.extend([workspace_manifest.clone(), s("--package"), crate_name.clone()]);
                if let Some(f) = feature {
                    v.extend([s("--features"), f.clone()]);
                }
                v
            }
            Builder::ComponentizePy { wit, world, app_dir, module } => {
                let mut v = vec![s("componentize-py")];
                for w in wit {
                    v.extend([s("-d"), w.clone()]);
                }
                v.extend([
                    s("-w"),
                    world.clone(),
                    s("componentize"),
                    s("-p"),
                    app_dir.clone(),
                    module.clone(),
                    s("-o"),
                    self.artifact.clone(),
                ]);
                v
            }
        }
    }
}

/// One line of the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub artifact: String,
    pub artifact_blake3: String,
    pub sources_blake3: String,
    /// `<tool> --version` of what built it, e.g. `rustc 1.95.0 (59807616e 2026-04-14)`.
    pub toolchain: String,
    /// The build command, run from the repo root (or the package folder for a package-local lock).
    pub command: String,
    /// The source files and folders hashed into `sources_blake3`, when the
    /// lock says so itself (a package-local lock); empty in the repo's lock,
    /// whose sources follow from [`targets`].
    pub inputs: Vec<String>,
}

fn err(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

/// Reads `name = "..."` from the `[package]` table of a Cargo.toml.
pub fn crate_name(manifest: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(manifest).map_err(|e| err(manifest, e))?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(rest) = line.strip_prefix("name") {
                if let Some(v) = rest.trim_start().strip_prefix('=') {
                    return Ok(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    Err(format!("{}: no `name` in [package]", manifest.display()))
}

/// Every guest artifact: one per `distros/<package>/guest/` crate (built to
/// `distros/<package>/<crate name>.wasm`), the Rust test fixtures and the
/// Python guests.
pub fn targets(repo: &Path) -> Result<Vec<Target>, String> {
    let distros = repo.join("distros");
    let mut dirs: Vec<String> = std::fs::read_dir(&distros)
        .map_err(|e| err(&distros, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && distros.join(n).join("guest/Cargo.toml").is_file())
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    for pkg in dirs {
        let crate_dir = format!("distros/{pkg}/guest");
        let name = crate_name(&repo.join(&crate_dir).join("Cargo.toml"))?;
        let mut sources = vec![crate_dir.clone(), "distros/Cargo.toml".into(), "distros/Cargo.lock".into(), "wit".into()];
        if repo.join(format!("distros/{pkg}/wit")).is_dir() {
            sources.push(format!("distros/{pkg}/wit"));
        }
        out.push(Target {
            artifact: format!("distros/{pkg}/{name}.wasm"),
            crate_dir,
            builder: Builder::Cargo { crate_name: name, feature: None, workspace_manifest: "distros/Cargo.toml".into() },
            sources,
        });
    }
    for (dir, feature, artifact) in TEST_GUESTS {
        out.push(Target {
            artifact: artifact.to_string(),
            crate_dir: dir.to_string(),
            builder: Builder::Cargo {
                crate_name: crate_name(&repo.join(dir).join("Cargo.toml"))?,
                feature: (!feature.is_empty()).then(|| feature.to_string()),
                workspace_manifest: format!("{dir}/Cargo.toml"),
            },
            sources: vec![dir.to_string()],
        });
    }
    for (pkg, world, module) in PY_GUESTS {
        let name = pkg.rsplit('/').next().expect("a folder");
        let (app_dir, wit) = (format!("{pkg}/guest"), format!("{pkg}/wit"));
        out.push(Target {
            artifact: format!("{pkg}/{name}.wasm"),
            crate_dir: app_dir.clone(),
            builder: Builder::ComponentizePy {
                wit: vec!["wit/host.wit".into(), wit.clone()],
                world: world.to_string(),
                app_dir: app_dir.clone(),
                module: module.to_string(),
            },
            sources: vec![app_dir, wit, "wit/host.wit".into()],
        });
    }
    Ok(out)
}

/// Files under `rel` (a file or a folder), relative to `base` with '/',
/// sorted; `target` folders, `__pycache__` and hidden entries are skipped.
fn files(base: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), String> {
    let path = base.join(rel);
    let meta = std::fs::metadata(&path).map_err(|e| err(&path, e))?;
    if meta.is_file() {
        out.push(rel.to_string());
        return Ok(());
    }
    let mut names: Vec<String> = std::fs::read_dir(&path)
        .map_err(|e| err(&path, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "target" && n != "__pycache__")
        .collect();
    names.sort();
    for n in names {
        files(base, &format!("{rel}/{n}"), out)?;
    }
    Ok(())
}

/// blake3 over every source file's path (relative to `base`) and content, in path order.
pub fn hash_sources(base: &Path, sources: &[String]) -> Result<String, String> {
    let mut all = Vec::new();
    for s in sources {
        files(base, s, &mut all)?;
    }
    all.sort();
    all.dedup();
    let mut h = blake3::Hasher::new();
    for f in &all {
        let path = base.join(f);
        let bytes = std::fs::read(&path).map_err(|e| err(&path, e))?;
        h.update(f.as_bytes());
        h.update(&[0]);
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The lock as the current tree would produce it. `toolchain` gives the
/// version of the tool that built an artifact (`Builder::tool`), or `None`
/// when unknown (the entry then keeps the toolchain of `previous`).
pub fn compute(repo: &Path, previous: &[Entry], toolchain: &dyn Fn(&Target) -> Option<String>) -> Result<Vec<Entry>, String> {
    targets(repo)?
        .into_iter()
        .map(|t| {
            let path = repo.join(&t.artifact);
            let bytes = std::fs::read(&path).map_err(|e| err(&path, e))?;
            let toolchain = toolchain(&t)
                .or_else(|| previous.iter().find(|e| e.artifact == t.artifact).map(|e| e.toolchain.clone()))
                .unwrap_or_default();
            Ok(Entry {
                artifact_blake3: blake3::hash(&bytes).to_hex().to_string(),
                sources_blake3: hash_sources(repo, &t.sources)?,
                command: t.command().join(" "),
                inputs: Vec::new(),
                toolchain,
                artifact: t.artifact,
            })
        })
        .collect()
}

pub fn render(entries: &[Entry]) -> String {
    let mut s = String::from(
        "# For each committed guest component: blake3 of the artifact and of the sources it was built from,\n\
         # the toolchain that built it and the command (run from the repo root).\n\
         # Written by `cargo xtask distros`; verified by `cargo xtask distros --check` and tests/distros.rs.\n",
    );
    for e in entries {
        s.push_str(&render_entry(e));
    }
    s
}

/// One line of a lock.
pub fn render_entry(e: &Entry) -> String {
    let mut s = format!(
        "{} artifact={} sources={} toolchain=\"{}\" command=\"{}\"",
        e.artifact, e.artifact_blake3, e.sources_blake3, e.toolchain, e.command
    );
    if !e.inputs.is_empty() {
        let _ = write!(s, " inputs=\"{}\"", e.inputs.join(","));
    }
    s.push('\n');
    s
}

/// Splits `a b="c d" e` into `["a", "b=c d", "e"]`; `None` on an unclosed quote.
fn fields(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut any) = (false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    Some(out)
}

/// Parses a lock; `label` names it in messages.
pub fn parse_as(label: &str, text: &str) -> Result<Vec<Entry>, String> {
    const SHAPE: &str = "expected `<path> artifact=<hex> sources=<hex> toolchain=\"<version>\" command=\"<command>\"`";
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| format!("{label}:{}: {what}; {SHAPE}", i + 1);
        let f = fields(line).ok_or_else(|| bad("unclosed quote"))?;
        let mut it = f.iter();
        let artifact = it.next().ok_or_else(|| bad("empty line"))?.clone();
        let mut e = Entry {
            artifact,
            artifact_blake3: String::new(),
            sources_blake3: String::new(),
            toolchain: String::new(),
            command: String::new(),
            inputs: Vec::new(),
        };
        for kv in it {
            let (k, v) = kv.split_once('=').ok_or_else(|| bad(&format!("{kv:?} is not key=value")))?;
            let slot = match k {
                "artifact" => &mut e.artifact_blake3,
                "sources" => &mut e.sources_blake3,
                "toolchain" => &mut e.toolchain,
                "command" => &mut e.command,
                "inputs" => {
                    e.inputs = v.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect();
                    continue;
                }
                other => return Err(bad(&format!("unknown field {other:?}"))),
            };
            *slot = v.to_string();
        }
        if e.artifact_blake3.is_empty() || e.sources_blake3.is_empty() {
            return Err(bad("artifact= and sources= are required"));
        }
        out.push(e);
    }
    Ok(out)
}

pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    parse_as(LOCK_PATH, text)
}

/// Repo-relative paths of every `.wasm` in the package folders under
/// [`COVERED`], sorted.
pub fn components(repo: &Path) -> Result<Vec<String>, String> {
    fn walk(repo: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), String> {
        let path = repo.join(rel);
        for e in std::fs::read_dir(&path).map_err(|e| err(&path, e))?.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            let child = format!("{rel}/{name}");
            if e.path().is_dir() {
                walk(repo, &child, out)?;
            } else if name.ends_with(".wasm") {
                out.push(child);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for c in COVERED {
        if repo.join(c).is_dir() {
            walk(repo, c, &mut out)?;
        }
    }
    out.sort();
    Ok(out)
}

/// Compares the committed lock with the tree; returns every mismatch:
/// stale sources, swapped artifacts, entries without provenance or built by
/// another command, and components no target builds.
pub fn check(repo: &Path) -> Result<(), Vec<String>> {
    let lock_path: PathBuf = repo.join(LOCK_PATH);
    let text = std::fs::read_to_string(&lock_path).map_err(|e| vec![err(&lock_path, e)])?;
    let locked = parse(&text).map_err(|e| vec![e])?;
    let now = compute(repo, &locked, &|_| None).map_err(|e| vec![e])?;
    let mut problems = Vec::new();
    for e in &now {
        match locked.iter().find(|l| l.artifact == e.artifact) {
            None => problems.push(format!("{} is not in {LOCK_PATH}; run `cargo xtask distros`", e.artifact)),
            Some(l) => {
                if l.sources_blake3 != e.sources_blake3 {
                    problems.push(format!(
                        "{}: its sources changed since it was built; run `cargo xtask distros` and commit the artifact and the lock",
                        e.artifact
                    ));
                }
                if l.artifact_blake3 != e.artifact_blake3 {
                    problems.push(format!(
                        "{}: the committed artifact is not the one recorded in {LOCK_PATH}; run `cargo xtask distros`",
                        e.artifact
                    ));
                }
                if l.toolchain.is_empty() {
                    problems.push(format!(
                        "{}: {LOCK_PATH} does not record the toolchain that built it; run `cargo xtask distros`",
                        e.artifact
                    ));
                }
                if l.command != e.command {
                    problems.push(format!(
                        "{}: {LOCK_PATH} records the command {:?}, but it is built by {:?}; run `cargo xtask distros`",
                        e.artifact, l.command, e.command
                    ));
                }
            }
        }
    }
    for l in &locked {
        if !now.iter().any(|e| e.artifact == l.artifact) {
            problems.push(format!("{LOCK_PATH} lists {}, which no guest builds any more; run `cargo xtask distros`", l.artifact));
        }
    }
    match components(repo) {
        Ok(found) => {
            for c in found {
                // A symlink to (or a copy of) a built artifact shares its provenance.
                let same_bytes = || std::fs::read(repo.join(&c)).map(|b| blake3::hash(&b).to_hex().to_string()).ok();
                if !now.iter().any(|e| e.artifact == c) && !same_bytes().is_some_and(|h| now.iter().any(|e| e.artifact_blake3 == h)) {
                    problems.push(format!(
                        "{c}: a component with no provenance: no guest in xtask/src/lock.rs builds it, so {LOCK_PATH} cannot record \
                         its sources, toolchain and command; add its guest (Rust crate in <package>/guest/, or PY_GUESTS) or remove it"
                    ));
                }
            }
        }
        Err(e) => problems.push(e),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
