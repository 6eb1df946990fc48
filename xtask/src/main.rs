//! Build chores: `cargo xtask distros [--check] [--jobs N] [--only PATH]`
//! rebuilds the guest artifacts (Rust and componentize-py) and their lock;
//! `cargo xtask new-package` / `build-package` scaffold and rebuild a package; `cargo xtask trust-certs` regenerates the
//! trust-graph package's bundled certificates; `cargo xtask bench` runs the
//! benchmark suite (see BENCHMARKS.md).

mod bench;
mod bench_http;
mod lock;
mod new_package;
mod trust;
mod trust_sign;

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

const USAGE: &str = "usage:
  cargo xtask distros [--jobs N] [--only PATH]...
                                   rebuild every guest artifact (Rust: wasm32-wasip2; Python: componentize-py), or those
                                   under PATH, and write distros/artifacts.lock with each one's toolchain and command
  cargo xtask distros --check      verify committed artifacts and sources against distros/artifacts.lock (no wasm target needed)
  cargo xtask new-package NAME [--lang rust] [--dir DIR]
                                   write a working package DIR/NAME (default DIR: distros) and build its component
  cargo xtask build-package DIR    rebuild a self-contained package (one made with --dir outside distros/) and its artifacts.lock
  cargo xtask trust-certs          regenerate distros/trust-graph/{roots,certs}.json from fixed seeds
  cargo xtask bench [--quick]      build release binaries and run the benchmark suite (see BENCHMARKS.md)";

fn main() -> anyhow::Result<()> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the repo").to_path_buf();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("distros") => {
            let mut check = false;
            let mut jobs = "1".to_string();
            let mut only = Vec::new();
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--check" => check = true,
                    "--jobs" | "-j" => jobs = it.next().context("--jobs needs a number")?.clone(),
                    "--only" => only.push(it.next().context("--only needs a path, e.g. tests/distros/python")?.clone()),
                    other => bail!("unknown option {other}\n{USAGE}"),
                }
            }
            if check {
                check_lock(&repo)
            } else {
                build(&repo, &jobs, &only)
            }
        }
        Some("new-package") => {
            let mut name = None;
            let mut lang = "rust".to_string();
            let mut dir = repo.join("distros");
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--lang" => lang = it.next().context("--lang needs a language: rust")?.clone(),
                    "--dir" => dir = PathBuf::from(it.next().context("--dir needs the folder to create the package in")?),
                    o if o.starts_with('-') => bail!("unknown option {o}\n{USAGE}"),
                    n if name.is_none() => name = Some(n.to_string()),
                    extra => bail!("unexpected argument {extra}\n{USAGE}"),
                }
            }
            let name = name.context(format!("new-package needs a NAME\n{USAGE}"))?;
            new_package(&repo, &name, &lang, &dir)
        }
        Some("build-package") => {
            let dir = args.get(1).context(format!("build-package needs the package folder\n{USAGE}"))?;
            new_package::build_standalone(Path::new(dir), None).map_err(anyhow::Error::msg)?;
            Ok(())
        }
        Some("trust-certs") => trust::run(&repo),
        Some("bench") => bench::run(&repo, &args[1..]),
        _ => bail!("{USAGE}"),
    }
}

/// `new-package`: scaffold, then build the component through the path that
/// will rebuild it later (the distros workspace in the repo, else the
/// package's own), recording it in the matching lock.
fn new_package(repo: &Path, name: &str, lang: &str, parent: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let dir = new_package::scaffold(repo, name, lang, parent).map_err(anyhow::Error::msg)?;
    println!("wrote {}", dir.display());
    if new_package::in_repo(repo, parent) {
        // The new workspace member goes into distros/Cargo.lock before the `--locked` build.
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(repo)
            .args(["metadata", "--format-version", "1", "--manifest-path", "distros/Cargo.toml"])
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("adding {name} to distros/Cargo.lock failed");
        }
        build(repo, "1", &[format!("distros/{name}")])?;
        println!("next: `cargo build` embeds it; `sysdeploy package check distros/{name}`; docs/packages.md");
    } else {
        new_package::build_standalone(&dir, None).map_err(anyhow::Error::msg)?;
        println!(
            "next: `sysdeploy package check {0}`; `SYSDEPLOY_BIN=$(which sysdeploy) cargo test --manifest-path {0}/guest/Cargo.toml`; docs/packages.md",
            dir.display()
        );
    }
    Ok(())
}

fn check_lock(repo: &Path) -> anyhow::Result<()> {
    match lock::check(repo) {
        Ok(()) => {
            println!("{} matches the committed artifacts and their sources", lock::LOCK_PATH);
            Ok(())
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            bail!("{} problem(s) with the guest artifacts", problems.len())
        }
    }
}

/// `<tool> --version`, first line, or an error naming how to install it.
fn tool_version(tool: &str) -> anyhow::Result<String> {
    let out = Command::new(tool).arg("--version").output().with_context(|| match tool {
        "componentize-py" => "running componentize-py (install it: `pip install componentize-py`)".to_string(),
        _ => format!("running {tool}"),
    })?;
    if !out.status.success() {
        bail!("`{tool} --version` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_string())
}

/// Builds one target's artifact in place.
fn build_target(repo: &Path, t: &lock::Target, jobs: &str) -> anyhow::Result<()> {
    let target_dir = repo.join("distros/target");
    let cmd = t.command();
    println!("building {}: {}", t.artifact, cmd.join(" "));
    match &t.builder {
        lock::Builder::Cargo { crate_name, .. } => {
            // Paths inside the artifacts (panic locations) must not depend on where
            // the repo or the cargo registry happen to live.
            let home = std::env::var("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
                .unwrap_or_default();
            let rustflags =
                [format!("--remap-path-prefix={}=/sysdeploy", repo.display()), format!("--remap-path-prefix={}=/cargo", home.display())]
                    .join("\x1f");
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(repo)
                .args(&cmd[1..])
                .args(["--jobs", jobs])
                .arg("--target-dir")
                .arg(&target_dir)
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("RUSTFLAGS")
                .env("CARGO_ENCODED_RUSTFLAGS", &rustflags)
                .status()
                .context("running cargo")?;
            if !status.success() {
                bail!("building {} failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)", t.artifact);
            }
            let built = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", crate_name.replace('-', "_")));
            let dest = repo.join(&t.artifact);
            std::fs::create_dir_all(dest.parent().expect("artifact has a folder"))?;
            std::fs::copy(&built, &dest).with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
        }
        lock::Builder::ComponentizePy { .. } => {
            let status = Command::new(&cmd[0])
                .current_dir(repo)
                .args(&cmd[1..])
                // Bytecode caches would land in the sources (and in their hash).
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .status()
                .context("running componentize-py (install it: `pip install componentize-py`)")?;
            if !status.success() {
                bail!("building {} with componentize-py failed", t.artifact);
            }
        }
    }
    Ok(())
}

/// Rebuilds the artifacts (all, or those under the `only` paths) and rewrites
/// the lock, recording the toolchain of each rebuilt artifact.
fn build(repo: &Path, jobs: &str, only: &[String]) -> anyhow::Result<()> {
    let targets = lock::targets(repo).map_err(anyhow::Error::msg)?;
    let wanted = |t: &lock::Target| only.is_empty() || only.iter().any(|o| t.artifact.starts_with(o.trim_end_matches('/')));
    if !targets.iter().any(wanted) {
        bail!(
            "no guest artifact under {}; artifacts: {}",
            only.join(", "),
            targets.iter().map(|t| t.artifact.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    // Every toolchain first: a missing one fails before anything is rebuilt.
    let mut versions = std::collections::BTreeMap::new();
    for t in targets.iter().filter(|t| wanted(t)) {
        let tool = t.builder.tool();
        if !versions.contains_key(tool) {
            let v = tool_version(tool)
                .with_context(|| format!("{} needs {tool}; install it, or rebuild other artifacts with --only <path>", t.artifact))?;
            versions.insert(tool, v);
        }
    }
    for t in targets.iter().filter(|t| wanted(t)) {
        build_target(repo, t, jobs)?;
    }
    let previous = std::fs::read_to_string(repo.join(lock::LOCK_PATH)).ok().and_then(|t| lock::parse(&t).ok()).unwrap_or_default();
    let entries = lock::compute(repo, &previous, &|t| wanted(t).then(|| versions[t.builder.tool()].clone())).map_err(anyhow::Error::msg)?;
    std::fs::write(repo.join(lock::LOCK_PATH), lock::render(&entries))?;
    println!("wrote {} ({} artifacts)", lock::LOCK_PATH, entries.len());
    Ok(())
}
