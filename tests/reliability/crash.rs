//! The crash matrix: every crash point in `failpoint::CRASH_POINTS` × a real
//! SIGKILL of the `sysdeploy` process at that point → restart → converge.
//! After each: the converged-state invariants of `Inspect::violations` (one
//! service per alias, no orphan services, spells, components, artifacts,
//! data dirs or temp files, no intent left), service data and spell KV
//! intact, and `plan` says "no changes".

use super::common::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// How to reach a crash point: the deployment before it (`setup`, after
/// which data is written into the service and the spell runs once) and the
/// one that passes through the point (`target`).
struct Scenario {
    setup: Want,
    target: Want,
}

fn scenario(op: &str) -> Scenario {
    let base = Want::default();
    let (setup, target) = match op {
        "install" => (Want { kv: None, ..base.clone() }, base),
        "replace" | "cache-write" | "gc" => (base.clone(), Want { kv: Some(Build::V2), ..base }),
        // Issue 17: a replace whose new facade exports `migrate` (package
        // 0.1.0 → 0.2.0), and one that keeps the replaced data dir.
        "migrate" => (base.clone(), Want { kv: Some(Build::Migrate), ..base }),
        "keep-data" => (base.clone(), Want { kv: Some(Build::V2), snapshot: true, ..base }),
        "reinit" => (base.clone(), Want { greeting: "bye".into(), ..base }),
        "remove" => (base.clone(), Want { kv: None, ..base }),
        "install-spell" => (Want { ticker: false, ..base.clone() }, base),
        "update-spell" => (base.clone(), Want { script: 1, period: 30, ..base }),
        "kv-apply" => (base.clone(), Want { threshold: 9, ..base }),
        "remove-spell" => (base.clone(), Want { ticker: false, ..base }),
        other => panic!("crash point operation {other:?} has no scenario in the crash matrix; add one"),
    };
    Scenario { setup, target }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_dir(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Service data written after the setup deployment.
fn data() -> BTreeMap<String, String> {
    BTreeMap::from([("survivor".to_string(), "data written before the crash".to_string())])
}

/// The plan of a crashed state dir (read-only, before recovery) names what
/// is left: the interrupted operation's step on its alias — or nothing, for
/// the points after which the operation's record is already written (the
/// old service's removal and GC are bookkeeping the plan does not show).
fn assert_plan_after_crash(point: &str, op: &str, plan: &serde_json::Value) {
    // A batched install binds its aliases and writes their entries in one
    // transaction, so after `deploy::install::bound` nothing is left.
    let recorded = matches!(point, "deploy::replace::recorded" | "deploy::replace::old-removed" | "deploy::install::bound")
        || op == "gc"
        || op == "keep-data";
    if recorded {
        assert_eq!(plan["no_changes"], true, "{point}: the record was written before the crash, yet the plan is {plan:#}");
        return;
    }
    let (alias, action) = match op {
        "install" | "replace" | "reinit" | "remove" => (KV, op),
        "migrate" => (KV, "replace"),
        "cache-write" => (KV, "replace"),
        "install-spell" | "update-spell" | "kv-apply" | "remove-spell" => (TICKER, op),
        other => panic!("{point}: no expected plan for operation {other}"),
    };
    assert_eq!(plan["no_changes"], false, "{point}: {plan:#}");
    let steps = plan["steps"].as_array().expect("steps");
    let changes: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| (s["alias"].as_str().unwrap_or(""), s["action"].as_str().unwrap_or("")))
        .filter(|(_, a)| !a.starts_with("keep"))
        .collect();
    assert_eq!(changes, vec![(alias, action)], "{point}: the plan of the crashed state dir: {plan:#}");
}

/// Issue 17: after a crash in a migrating replace the service that serves
/// was migrated from the old version; after a crash while keeping the
/// replaced data dir, that dir is kept (recorded, with the data written
/// before the crash) and nothing else is.
async fn assert_issue17_outcome(op: &str, point: &str, i: &Inspect) {
    match op {
        "migrate" => assert_eq!(i.call(KV, "migrated-from", serde_json::json!([])).await, "0.1.0", "{point}: not migrated"),
        "keep-data" => {
            let kept = names(&i.root.join("kept"));
            assert_eq!(kept.len(), 1, "{point}: kept dirs {kept:?}");
            let id = kept.iter().next().unwrap();
            let hex: String = "survivor".bytes().map(|b| format!("{b:02x}")).collect();
            let value = fs::read_to_string(i.root.join("kept").join(id).join("kv").join(format!("k{hex}")));
            assert_eq!(value.ok().as_deref(), Some("data written before the crash"), "{point}: the kept dir lacks the data");
            let rows: Vec<String> =
                sysdeploy::deploy::kept::list(&i.store).unwrap().into_iter().map(|k| k.service_id.to_string()).collect();
            assert_eq!(rows, vec![id.clone()], "{point}: kept data records");
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crash_point_recovers_and_converges() {
    let points = sysdeploy::failpoint::CRASH_POINTS;
    // One prepared sandbox per distinct setup, copied for each point.
    let mut templates: Vec<(Want, Sandbox)> = Vec::new();
    let mut by_op: BTreeMap<&str, usize> = BTreeMap::new();
    for (point, op) in points {
        if *op == "snapshot" {
            // Not a deployment step: tests/snapshot.rs kills these (RELIABILITY.md).
            continue;
        }
        let sc = scenario(op);
        if !templates.iter().any(|(w, _)| *w == sc.setup) {
            let sb = Sandbox::new();
            sb.converge(&sc.setup);
            let i = Inspect::open(&sb.state_dir());
            i.write_data("survivor", "data written before the crash").await;
            drop(i);
            templates.push((sc.setup.clone(), sb));
        }
        let template = &templates.iter().find(|(w, _)| *w == sc.setup).unwrap().1;
        let sb = Sandbox::new();
        copy_dir(template.dir.path(), sb.dir.path());

        let out = sb.boot(&sc.target, Some(point));
        assert!(out.killed(), "{point}: the crash point was not reached (the process was not killed): {out:#?}");
        assert!(out.stderr.contains(&format!("failpoint {point}")), "{point}: {}", out.stderr);

        // Readers work on a crashed state dir and say what is left to do.
        let crashed_plan = sb.plan(&sc.target);
        assert_plan_after_crash(point, op, &crashed_plan);

        let restart = sb.converge(&sc.target);
        let i = Inspect::open(&sb.state_dir());
        i.assert_converged(&sc.target, &format!("after a crash at {point} and a restart"));
        let kept_data = if sc.setup.kv.is_some() && sc.target.kv.is_some() { data() } else { BTreeMap::new() };
        let spell_ran = sc.setup.ticker && sc.target.ticker;
        i.assert_contents(&sc.target, &kept_data, spell_ran, &format!("after a crash at {point}")).await;
        assert_issue17_outcome(op, point, &i).await;
        drop(i);
        let plan = sb.plan(&sc.target);
        assert_eq!(plan["no_changes"], true, "{point}: plan after convergence is not empty: {plan:#}\nrestart log:\n{}", restart.stderr);
        *by_op.entry(op).or_default() += 1;
    }
    let exercised: usize = by_op.values().sum();
    println!("crash matrix: {exercised} crash points exercised (SIGKILL → restart → converge), by operation: {by_op:?}");
}
