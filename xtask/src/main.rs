//! Build chores: `cargo xtask distros [--check] [--jobs N]` rebuilds the guest
//! artifacts and their lock; `cargo xtask trust-certs` regenerates the
//! trust-graph package's bundled certificates; `cargo xtask bench` runs the
//! benchmark suite (see BENCHMARKS.md).

mod bench;
mod bench_http;
mod lock;
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
        Some("trust-certs") => trust::run(&repo),
        Some("bench") => bench::run(&repo, &args[1..]),
        _ => bail!("{USAGE}"),
    }
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
    let mut versions = std::collections::BTreeMap::new();
    for t in targets.iter().filter(|t| wanted(t)) {
        let tool = t.builder.tool();
        if !versions.contains_key(tool) {
            versions.insert(tool, tool_version(tool)?);
        }
        build_target(repo, t, jobs)?;
    }
    let previous = std::fs::read_to_string(repo.join(lock::LOCK_PATH)).ok().and_then(|t| lock::parse(&t).ok()).unwrap_or_default();
    let entries = lock::compute(repo, &previous, &|t| wanted(t).then(|| versions[t.builder.tool()].clone())).map_err(anyhow::Error::msg)?;
    std::fs::write(repo.join(lock::LOCK_PATH), lock::render(&entries))?;
    println!("wrote {} ({} artifacts)", lock::LOCK_PATH, entries.len());
    Ok(())
}
