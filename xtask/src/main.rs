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
  cargo xtask distros [--jobs N]   rebuild every guest artifact for wasm32-wasip2 and write distros/artifacts.lock
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
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--check" => check = true,
                    "--jobs" | "-j" => jobs = it.next().context("--jobs needs a number")?.clone(),
                    other => bail!("unknown option {other}\n{USAGE}"),
                }
            }
            if check {
                check_lock(&repo)
            } else {
                build(&repo, &jobs)
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

fn build(repo: &Path, jobs: &str) -> anyhow::Result<()> {
    let target_dir = repo.join("distros/target");
    let targets = lock::targets(repo).map_err(anyhow::Error::msg)?;
    // Paths inside the artifacts (panic locations) must not depend on where
    // the repo or the cargo registry happen to live.
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let rustflags =
        [format!("--remap-path-prefix={}=/sysdeploy", repo.display()), format!("--remap-path-prefix={}=/cargo", home.display())]
            .join("\x1f");
    for t in &targets {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(repo)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--jobs", jobs, "--locked"])
            .arg("--manifest-path")
            .arg(&t.workspace_manifest)
            .args(["--package", &t.crate_name])
            .arg("--target-dir")
            .arg(&target_dir)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env("CARGO_ENCODED_RUSTFLAGS", &rustflags);
        if let Some(f) = &t.feature {
            cmd.args(["--features", f]);
        }
        println!(
            "building {} ({}{})",
            t.artifact,
            t.crate_name,
            t.feature.as_deref().map(|f| format!(", feature {f}")).unwrap_or_default()
        );
        let status = cmd.status().context("running cargo")?;
        if !status.success() {
            bail!("building {} failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)", t.artifact);
        }
        let built = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", t.crate_name.replace('-', "_")));
        let dest = repo.join(&t.artifact);
        std::fs::create_dir_all(dest.parent().expect("artifact has a folder"))?;
        std::fs::copy(&built, &dest).with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    }
    let entries = lock::compute(repo).map_err(anyhow::Error::msg)?;
    std::fs::write(repo.join(lock::LOCK_PATH), lock::render(&entries))?;
    println!("wrote {} ({} artifacts)", lock::LOCK_PATH, entries.len());
    Ok(())
}
