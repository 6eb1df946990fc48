//! `sysdeploy generations`, `rollback`, `unpin` (issue 17), and the pin
//! lines of `plan` and `status`. `generations` only reads; `rollback` and
//! `unpin` write pins through SQLite (also while a node runs) and then ask
//! the running node to reload, as `sysdeploy reload` does.

use crate::cli::{Context, Exit};
use crate::deploy::generations::{self, pins, Generation, Pin, PinView};
use crate::ids::PackageName;
use crate::state::StateDir;
use crate::store::{Store, StoreError};
use serde_json::{json, Value as Json};

/// The store of the state dir, read-only; `None` when nothing was deployed yet.
fn read_store(ctx: &Context) -> Result<Option<Store>, (Exit, String)> {
    let dir = ctx.state_dir();
    if !dir.exists() {
        return Ok(None);
    }
    let state = StateDir::open_shared(dir).map_err(|e| (Exit::StoreUnusable, e.to_string()))?;
    match Store::open_read_only(&state.store_path()) {
        Ok(s) => Ok(Some(s)),
        Err(StoreError::Missing { .. }) => Ok(None),
        Err(e) => Err((Exit::StoreUnusable, e.to_string())),
    }
}

fn time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `sysdeploy generations [--json]`: newest first, with what changed.
pub fn cmd_generations(ctx: &Context, as_json: bool) -> Exit {
    let gens = match read_store(ctx) {
        Ok(Some(s)) => match generations::list(&s) {
            Ok(g) => g,
            Err(e) => return ctx.fail(Exit::StoreUnusable, format!("reading generations: {e}")),
        },
        Ok(None) => Vec::new(),
        Err((exit, e)) => return ctx.fail(exit, e),
    };
    let keep = generations::keep_generations(&ctx.config);
    if as_json {
        let list: Vec<Json> = gens.iter().enumerate().map(|(i, g)| generations::to_json(g, gens.get(i + 1))).collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "keep_generations": keep, "generations": list })).expect("json"));
        return Exit::Ok;
    }
    if gens.is_empty() {
        println!("no generations yet (every deployment that changes something records one)");
        return Exit::Ok;
    }
    for (i, g) in gens.iter().enumerate() {
        let mark = if g.pruned { ", pruned" } else { "" };
        println!("generation {}  {}  {}{mark}", g.number, time(g.created_at_ms), g.outcome);
        let versions: Vec<String> = g.record.packages.iter().map(|(n, p)| format!("{n} {}", p.version)).collect();
        println!("  packages: {}", if versions.is_empty() { "none".to_string() } else { versions.join(", ") });
        for c in generations::changes(gens.get(i + 1).map(|p| &p.record), &g.record) {
            println!("  - {c}");
        }
    }
    Exit::Ok
}

/// Packages whose recorded state differs between two generations.
fn differing(a: &Generation, b: &Generation) -> Vec<PackageName> {
    let names: std::collections::BTreeSet<&PackageName> = a.record.packages.keys().chain(b.record.packages.keys()).collect();
    names
        .into_iter()
        .filter(|n| {
            let (x, y) = (a.record.packages.get(*n), b.record.packages.get(*n));
            match (x, y) {
                (Some(x), Some(y)) => x.version != y.version || x.source != y.source || x.config != y.config,
                _ => true,
            }
        })
        .cloned()
        .collect()
}

fn numbers(gens: &[Generation]) -> String {
    gens.iter().rev().map(|g| format!("{}{}", g.number, if g.pruned { " (pruned)" } else { "" })).collect::<Vec<_>>().join(", ")
}

/// `sysdeploy rollback [--to N] [--package P]... [--restore-data]`.
pub fn cmd_rollback(ctx: &Context, to: Option<u64>, packages: &[String], restore_data: bool) -> Exit {
    let store = match read_store(ctx) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return ctx.fail(Exit::Invalid, "no generations yet: nothing was deployed on this state directory, nothing to roll back to")
        }
        Err((exit, e)) => return ctx.fail(exit, e),
    };
    let gens = match generations::list(&store) {
        Ok(g) => g,
        Err(e) => return ctx.fail(Exit::StoreUnusable, format!("reading generations: {e}")),
    };
    let Some(newest) = gens.first() else {
        return ctx.fail(Exit::Invalid, "no generations yet: nothing to roll back to");
    };
    let target = match to {
        Some(n) => match gens.iter().find(|g| g.number == n) {
            Some(g) => g,
            None => {
                return ctx.fail(
                    Exit::Invalid,
                    format!("--to {n}: there is no generation {n}; known generations: {} (see `sysdeploy generations`)", numbers(&gens)),
                )
            }
        },
        None => match gens.iter().skip(1).find(|g| g.outcome != "failed") {
            Some(g) => g,
            None => {
                return ctx
                    .fail(Exit::Invalid, format!("there is no earlier generation to roll back to; known generations: {}", numbers(&gens)))
            }
        },
    };
    let n = target.number;
    if target.pruned {
        return ctx.fail(
            Exit::Invalid,
            format!(
                "generation {n} was pruned (system_services.keep_generations = {}): its components are gone and it cannot be \
                 rolled back to; known generations: {}",
                generations::keep_generations(&ctx.config),
                numbers(&gens)
            ),
        );
    }
    if target.outcome == "failed" {
        return ctx
            .fail(Exit::Invalid, format!("generation {n} is a failed deployment; roll back to one that applied: {}", numbers(&gens)));
    }
    let mut chosen = Vec::new();
    for p in packages {
        let name = match PackageName::new(p.clone()) {
            Ok(n) => n,
            Err(e) => return ctx.fail(Exit::Invalid, format!("--package {p:?}: {e}")),
        };
        if !target.record.packages.contains_key(&name) && !newest.record.packages.contains_key(&name) {
            let known: Vec<String> = target.record.packages.keys().map(|k| k.to_string()).collect();
            return ctx.fail(
                Exit::Invalid,
                format!(
                    "--package {name}: generation {n} and the newest generation have no package {name}; generation {n} has: {}",
                    known.join(", ")
                ),
            );
        }
        chosen.push(name);
    }
    if chosen.is_empty() {
        chosen = differing(target, newest);
        if chosen.is_empty() {
            println!("nothing differs between generation {n} and the newest generation {}; nothing pinned", newest.number);
            return Exit::Ok;
        }
    }
    for name in &chosen {
        if let Some(rec) = target.record.packages.get(name) {
            if rec.source.is_none() {
                return ctx.fail(
                    Exit::Invalid,
                    format!("generation {n} did not record the files of package {name}; it cannot be rolled back to"),
                );
            }
        }
    }
    let now = crate::deploy::journal::now_ms();
    let new: Vec<Pin> = chosen.iter().map(|p| Pin { package: p.clone(), generation: n, restore_data, pinned_at_ms: now }).collect();
    drop(store);
    let rw = match Store::open(&ctx.state_dir().join(crate::state::STORE_FILE)) {
        Ok(s) => s,
        Err(e) => return ctx.fail(Exit::StoreUnusable, e),
    };
    if let Err(e) = pins::set(&rw, &new) {
        return ctx.fail(Exit::StoreUnusable, format!("writing the pins: {e}"));
    }
    for p in &new {
        let what = match target.record.packages.get(&p.package) {
            Some(r) => format!("{} {}", p.package, r.version),
            None => format!("{} (absent in generation {n}: removed)", p.package),
        };
        println!("pinned {what} to generation {n}{}", if restore_data { ", restoring its kept data" } else { "" });
    }
    apply(ctx)
}

/// `sysdeploy unpin [--package P]...`.
pub fn cmd_unpin(ctx: &Context, packages: &[String]) -> Exit {
    let store = match read_store(ctx) {
        Ok(Some(s)) => s,
        Ok(None) => {
            println!("nothing is pinned");
            return Exit::Ok;
        }
        Err((exit, e)) => return ctx.fail(exit, e),
    };
    let now = match pins::pins(&store) {
        Ok(p) => p,
        Err(e) => return ctx.fail(Exit::StoreUnusable, format!("reading pins: {e}")),
    };
    let mut names = Vec::new();
    for p in packages {
        let Some(pin) = now.iter().find(|x| x.package.as_str() == p) else {
            let pinned: Vec<String> = now.iter().map(|x| x.package.to_string()).collect();
            let pinned = if pinned.is_empty() { "none".to_string() } else { pinned.join(", ") };
            return ctx.fail(Exit::Invalid, format!("--package {p}: package {p} is not pinned; pinned packages: {pinned}"));
        };
        names.push(pin.package.clone());
    }
    if now.is_empty() {
        println!("nothing is pinned");
        return Exit::Ok;
    }
    drop(store);
    let rw = match Store::open(&ctx.state_dir().join(crate::state::STORE_FILE)) {
        Ok(s) => s,
        Err(e) => return ctx.fail(Exit::StoreUnusable, e),
    };
    let gone = match pins::remove(&rw, if names.is_empty() { None } else { Some(&names) }) {
        Ok(g) => g,
        Err(e) => return ctx.fail(Exit::StoreUnusable, format!("removing pins: {e}")),
    };
    for p in &gone {
        println!("unpinned {} (was generation {}): the embedded release deploys it again", p.package, p.generation);
    }
    apply(ctx)
}

/// After pins changed: reload the running node (as `sysdeploy reload`), or
/// say the next boot applies them.
fn apply(ctx: &Context) -> Exit {
    let dir = ctx.state_dir();
    let Some(addr) = crate::state::running_node(dir).map(|n| n.api.unwrap_or(ctx.config.node.api_listen)) else {
        println!("no node is running on {}: the next `sysdeploy run` deploys this", dir.display());
        return Exit::Ok;
    };
    let token = match crate::state::read_api_token(dir) {
        Ok(t) => t,
        Err(e) => return ctx.fail(Exit::StoreUnusable, e),
    };
    println!("reloading the running node ({addr})");
    match crate::api::client::reload(addr, &token) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            Exit::Ok
        }
        Err(e) if e.code() == Some("invalid_config") => ctx.fail(Exit::Invalid, format!("the node refused the pinned state: {e}")),
        Err(e) => ctx.fail(
            Exit::DeployFailed,
            format!("the pins are written but the reload failed: {e}; `sysdeploy reload` or a restart applies them"),
        ),
    }
}

/// The pins as `plan` and `status` show them (empty without pins; an
/// unusable pin is its own line).
pub fn pin_views(ctx: &Context) -> Result<Vec<PinView>, String> {
    let store = match read_store(ctx) {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(Vec::new()),
        Err((_, e)) => return Err(e),
    };
    match pins::pins(&store) {
        Ok(p) if p.is_empty() => return Ok(Vec::new()),
        Ok(_) => {}
        Err(e) => return Err(e.to_string()),
    }
    generations::resolve(ctx.catalog, &ctx.config, Some(&store), ctx.state_dir()).map(|r| r.pins).map_err(|e| e.to_string())
}

/// Pins as JSON for `plan --json` and `status --json`.
pub fn pins_json(ctx: &Context) -> Json {
    match pin_views(ctx) {
        Ok(v) => json!(v),
        Err(e) => json!([{ "error": e }]),
    }
}

/// Pin lines for `plan` and `status` text output.
pub fn print_pins(ctx: &Context) {
    match pin_views(ctx) {
        Ok(views) => {
            for v in views {
                println!("{}", v.line());
                for n in &v.notes {
                    println!("  note: {n}");
                }
            }
        }
        Err(e) => println!("pins: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_utc_dates() {
        assert_eq!(super::time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::time(1_796_000_000_123), "2026-11-30 00:53:20 UTC");
        assert_eq!(super::time(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
