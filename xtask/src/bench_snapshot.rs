//! `cargo xtask bench`, snapshot section (issue 17): `sysdeploy snapshot
//! create` of a stopped node whose one service holds 64 MiB of data (four
//! 16 MiB files of incompressible bytes and 1,024 files of 4 KiB), next to
//! `tar -cf` of the same state dir; `snapshot restore` next to `tar -xf` of
//! that tar followed by `sync -f` (restore ends with one `syncfs`). The runs
//! of a figure and of its baseline are interleaved.

use super::{median, timed, Suite};
use anyhow::Context;
use std::path::Path;
use std::process::Command;

/// Fills a data dir with the section's 64 MiB.
fn fill(dir: &Path) -> anyhow::Result<()> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        // xorshift64*: incompressible enough that no layer can cheat.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for i in 0..4 {
        let bytes: Vec<u8> = (0..(16 << 20) / 8).flat_map(|_| next().to_le_bytes()).collect();
        std::fs::write(dir.join(format!("big-{i}.bin")), bytes)?;
    }
    let small = dir.join("small");
    std::fs::create_dir_all(&small)?;
    for i in 0..1024 {
        let bytes: Vec<u8> = (0..4096 / 8).flat_map(|_| next().to_le_bytes()).collect();
        std::fs::write(small.join(format!("f{i:04}")), bytes)?;
    }
    Ok(())
}

pub(super) fn run(s: &mut Suite) -> anyhow::Result<()> {
    let reps = s.opts.reps.min(5);
    eprintln!("[snapshot] create and restore of a stopped node with 64 MiB of service data vs tar ({reps} runs each)");
    let distros = s.work.join("snapshot-distros");
    let pkg = distros.join("kv-store");
    std::fs::create_dir_all(&pkg)?;
    for f in ["distro.toml", "kv-store.wasm", "kv-ticker.rhai"] {
        std::fs::copy(s.repo.join("tests/distros/node/kv-store").join(f), pkg.join(f))?;
    }
    let state = s.work.join("snapshot-state");
    timed(s.node(&state, Some(&distros)).args(["run", "--once"]), &s.work)?;
    let services = state.join("services");
    let data = std::fs::read_dir(&services)?.next().context("no service data dir")??.path();
    fill(&data)?;

    let (mut create, mut tar_c, mut restore, mut tar_x) = (vec![], vec![], vec![], vec![]);
    for r in 0..reps {
        let snap = s.work.join(format!("snap-{r}.snapshot"));
        let tar = s.work.join(format!("snap-{r}.tar"));
        create.push(timed(s.node(&state, None).args(["snapshot", "create"]).arg(&snap), &s.work)?.wall_ms);
        tar_c.push(timed(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&state).arg("."), &s.work)?.wall_ms);

        let into = s.work.join(format!("restored-{r}"));
        restore.push(timed(s.node(&into, None).args(["snapshot", "restore"]).arg(&snap).arg("--adopt"), &s.work)?.wall_ms);
        let plain = s.work.join(format!("untarred-{r}"));
        std::fs::create_dir_all(&plain)?;
        let script = format!("tar -xf '{}' -C '{}' && sync -f '{}'", tar.display(), plain.display(), plain.display());
        tar_x.push(timed(Command::new("sh").arg("-c").arg(script), &s.work)?.wall_ms);
        for p in [&snap, &tar] {
            std::fs::remove_file(p)?;
        }
        for p in [&into, &plain] {
            std::fs::remove_dir_all(p)?;
        }
    }
    let (bc, bx) = (median(&tar_c), median(&tar_x));
    s.row("snapshot", "snapshot create, node stopped, 64 MiB of service data", "ms", create).vs("tar -cf of the state dir", bc);
    s.row("snapshot", "baseline: tar -cf of the state dir", "ms", tar_c);
    s.row("snapshot", "snapshot restore --adopt of that snapshot", "ms", restore).vs("tar -xf + sync -f", bx);
    s.row("snapshot", "baseline: tar -xf + sync -f", "ms", tar_x);
    Ok(())
}
