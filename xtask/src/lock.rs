//! `distros/artifacts.lock`: blake3 of every committed guest artifact and of
//! the sources it is built from, so CI can tell a stale artifact without the
//! wasm target.
//!
//! Shared by `cargo xtask distros [--check]` and `tests/distros.rs` (included
//! there with `#[path]`): depends only on std and blake3.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Repo-relative path of the lock file.
pub const LOCK_PATH: &str = "distros/artifacts.lock";

/// Guest crates outside `distros/` whose artifacts are test fixtures:
/// (crate folder, cargo feature or "", artifact destination).
pub const TEST_GUESTS: &[(&str, &str, &str)] = &[
    ("tests/distros/guest", "", "tests/distros/v1/kv-store/kv-store.wasm"),
    ("tests/distros/guest", "v2", "tests/distros/v2/kv-store/kv-store.wasm"),
    ("tests/distros/guest", "fail-init", "tests/distros/fail-init/kv-store/kv-store.wasm"),
    ("tests/distros/hostile", "", "tests/distros/limits/hostile/hostile.wasm"),
    ("tests/distros/hostile-tree", "", "tests/distros/containment/hostile/hostile.wasm"),
    ("tests/distros/fetcher", "", "tests/distros/outbound/fetcher/fetcher.wasm"),
];

/// One artifact and how it is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Repo-relative destination of the `.wasm` (committed).
    pub artifact: String,
    /// Repo-relative folder of the guest crate.
    pub crate_dir: String,
    /// The crate's package name (the built file is `<name with _>.wasm`).
    pub crate_name: String,
    /// Cargo feature to enable, if any.
    pub feature: Option<String>,
    /// Repo-relative Cargo workspace manifest the crate is built through.
    pub workspace_manifest: String,
    /// Repo-relative files and folders whose content determines the artifact.
    pub sources: Vec<String>,
}

/// One line of the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub artifact: String,
    pub artifact_blake3: String,
    pub sources_blake3: String,
}

fn err(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

/// Reads `name = "..."` from the `[package]` table of a Cargo.toml.
fn crate_name(manifest: &Path) -> Result<String, String> {
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
/// `distros/<package>/<crate name>.wasm`) plus the test fixtures.
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
            crate_name: name,
            feature: None,
            workspace_manifest: "distros/Cargo.toml".into(),
            sources,
        });
    }
    for (dir, feature, artifact) in TEST_GUESTS {
        out.push(Target {
            artifact: artifact.to_string(),
            crate_dir: dir.to_string(),
            crate_name: crate_name(&repo.join(dir).join("Cargo.toml"))?,
            feature: (!feature.is_empty()).then(|| feature.to_string()),
            workspace_manifest: format!("{dir}/Cargo.toml"),
            sources: vec![dir.to_string()],
        });
    }
    Ok(out)
}

/// Files under `rel` (a file or a folder), repo-relative with '/', sorted;
/// `target` folders and hidden entries are skipped.
fn files(repo: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), String> {
    let path = repo.join(rel);
    let meta = std::fs::metadata(&path).map_err(|e| err(&path, e))?;
    if meta.is_file() {
        out.push(rel.to_string());
        return Ok(());
    }
    let mut names: Vec<String> = std::fs::read_dir(&path)
        .map_err(|e| err(&path, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "target")
        .collect();
    names.sort();
    for n in names {
        files(repo, &format!("{rel}/{n}"), out)?;
    }
    Ok(())
}

/// blake3 over every source file's path and content, in path order.
pub fn hash_sources(repo: &Path, sources: &[String]) -> Result<String, String> {
    let mut all = Vec::new();
    for s in sources {
        files(repo, s, &mut all)?;
    }
    all.sort();
    all.dedup();
    let mut h = blake3::Hasher::new();
    for f in &all {
        let path = repo.join(f);
        let bytes = std::fs::read(&path).map_err(|e| err(&path, e))?;
        h.update(f.as_bytes());
        h.update(&[0]);
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The lock as the current tree would produce it.
pub fn compute(repo: &Path) -> Result<Vec<Entry>, String> {
    targets(repo)?
        .into_iter()
        .map(|t| {
            let path = repo.join(&t.artifact);
            let bytes = std::fs::read(&path).map_err(|e| err(&path, e))?;
            Ok(Entry {
                artifact_blake3: blake3::hash(&bytes).to_hex().to_string(),
                sources_blake3: hash_sources(repo, &t.sources)?,
                artifact: t.artifact,
            })
        })
        .collect()
}

pub fn render(entries: &[Entry]) -> String {
    let mut s = String::from(
        "# blake3 of each committed guest artifact and of the sources it was built from.\n\
         # Written by `cargo xtask distros`; verified by `cargo xtask distros --check` and tests/distros.rs.\n",
    );
    for e in entries {
        let _ = writeln!(s, "{} artifact={} sources={}", e.artifact, e.artifact_blake3, e.sources_blake3);
    }
    s
}

pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(artifact), Some(a), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(format!("{LOCK_PATH}:{}: expected `<path> artifact=<hex> sources=<hex>`", i + 1));
        };
        let (Some(a), Some(s)) = (a.strip_prefix("artifact="), s.strip_prefix("sources=")) else {
            return Err(format!("{LOCK_PATH}:{}: expected `<path> artifact=<hex> sources=<hex>`", i + 1));
        };
        out.push(Entry { artifact: artifact.into(), artifact_blake3: a.into(), sources_blake3: s.into() });
    }
    Ok(out)
}

/// Compares the committed lock with the tree; returns every mismatch.
pub fn check(repo: &Path) -> Result<(), Vec<String>> {
    let lock_path: PathBuf = repo.join(LOCK_PATH);
    let text = std::fs::read_to_string(&lock_path).map_err(|e| vec![err(&lock_path, e)])?;
    let locked = parse(&text).map_err(|e| vec![e])?;
    let now = compute(repo).map_err(|e| vec![e])?;
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
            }
        }
    }
    for l in &locked {
        if !now.iter().any(|e| e.artifact == l.artifact) {
            problems.push(format!("{LOCK_PATH} lists {}, which no guest builds any more; run `cargo xtask distros`", l.artifact));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
