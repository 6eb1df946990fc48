//! Property test over random operation sequences against a simple model:
//! enable/disable packages, change config values, swap the component build
//! (v1/v2), change the spell script, write service data, restart, and crash
//! at a random crash point (SIGKILL) followed by a restart. After every step
//! the node must be converged on what the model wants (`Inspect`), hold the
//! data the model says survived, and a plain restart must change nothing.
//!
//! Bounded: `RELIABILITY_PROPTEST_CASES` cases (default 32) of at most 8
//! operations, each a real boot of the binary, so it fits in ~1-2 minutes.

use super::common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone)]
enum Op {
    ToggleKv,
    ToggleTicker,
    Greeting(u8),
    Threshold(i64),
    Period(u64),
    Script(u8),
    SwapBuild,
    WriteData(u8),
    Restart,
    /// Apply `change`, but crash at crash point `point` on the way (the
    /// point may not be on the path of this change: then the boot simply
    /// succeeds), then restart.
    Crash {
        point: usize,
        change: Box<Op>,
    },
}

fn change() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::ToggleKv),
        Just(Op::ToggleTicker),
        (0u8..3).prop_map(Op::Greeting),
        (0i64..3).prop_map(Op::Threshold),
        (1u64..3).prop_map(|p| Op::Period(p * 30)),
        (0u8..2).prop_map(Op::Script),
        Just(Op::SwapBuild),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let n = sysdeploy::failpoint::CRASH_POINTS.len();
    prop_oneof![
        4 => change(),
        1 => (0u8..3).prop_map(Op::WriteData),
        1 => Just(Op::Restart),
        3 => (0..n, change()).prop_map(|(point, c)| Op::Crash { point, change: Box::new(c) }),
    ]
}

/// What the model expects besides the `Want`: service data and whether the
/// spell wrote its own KV key, both lost only when their package is removed.
#[derive(Debug, Clone, Default)]
struct Model {
    want: Want,
    data: BTreeMap<String, String>,
    spell_wrote: bool,
}

impl Model {
    fn apply(&mut self, op: &Op) {
        let w = &mut self.want;
        match op {
            Op::ToggleKv => {
                w.kv = if w.kv.is_some() { None } else { Some(Build::V1) };
                if w.kv.is_none() {
                    self.data.clear();
                }
            }
            Op::ToggleTicker => {
                w.ticker = !w.ticker;
                if !w.ticker {
                    self.spell_wrote = false;
                }
            }
            Op::Greeting(g) => w.greeting = format!("greeting-{g}"),
            Op::Threshold(t) => w.threshold = *t,
            Op::Period(p) => w.period = *p,
            Op::Script(s) => w.script = *s,
            Op::SwapBuild => w.kv = w.kv.map(|b| if b == Build::V1 { Build::V2 } else { Build::V1 }),
            Op::WriteData(_) | Op::Restart | Op::Crash { .. } => {}
        }
    }
}

/// The executor operations (`CRASH_POINTS` tags) a change passes through.
fn ops_of(change: &Op, w: &Want) -> Vec<&'static str> {
    match change {
        Op::ToggleKv if w.kv.is_some() => vec!["remove", "gc"],
        Op::ToggleKv => vec!["install", "cache-write"],
        Op::ToggleTicker if w.ticker => vec!["remove-spell"],
        Op::ToggleTicker => vec!["install-spell"],
        Op::Greeting(_) if w.kv.is_some() => vec!["reinit"],
        Op::Threshold(_) if w.ticker => vec!["kv-apply"],
        Op::Period(_) | Op::Script(_) if w.ticker => vec!["update-spell"],
        Op::SwapBuild if w.kv.is_some() => vec!["replace", "cache-write", "gc"],
        _ => vec![],
    }
}

struct Stats {
    steps: AtomicUsize,
    crashes: AtomicUsize,
    cases: AtomicUsize,
}

async fn run_case(ops: &[Op], stats: &Stats) -> Result<(), TestCaseError> {
    let sb = Sandbox::new();
    let mut m = Model::default();
    sb.converge(&m.want);
    for (n, op) in ops.iter().enumerate() {
        let ctx = format!("step {n} {op:?} of {ops:?}");
        let ids_before = {
            let i = Inspect::open(&sb.state_dir());
            (i.service_id(KV), i.spell_id(TICKER))
        };
        match op {
            Op::WriteData(k) => {
                let i = Inspect::open(&sb.state_dir());
                i.write_data(&format!("key-{k}"), &format!("value-{n}")).await;
                if m.want.kv.is_some() {
                    m.data.insert(format!("key-{k}"), format!("value-{n}"));
                }
                if m.want.ticker {
                    m.spell_wrote = true;
                }
            }
            Op::Restart => {
                let plan = sb.plan(&m.want);
                prop_assert_eq!(&plan["no_changes"], &true, "{}: plan before a restart: {:#}", ctx, plan);
                sb.converge(&m.want);
                let i = Inspect::open(&sb.state_dir());
                prop_assert_eq!((i.service_id(KV), i.spell_id(TICKER)), ids_before, "{}: a restart changed ids", ctx);
            }
            Op::Crash { point, change } => {
                // Crash points on the path of this change, so most crashes
                // land (any point, when the change passes none).
                let all = sysdeploy::failpoint::CRASH_POINTS;
                let ops = ops_of(change, &m.want);
                let on_path: Vec<&str> = all.iter().filter(|(_, o)| ops.contains(o)).map(|(n, _)| *n).collect();
                let name = if on_path.is_empty() { all[*point].0 } else { on_path[*point % on_path.len()] };
                m.apply(change);
                let out = sb.boot(&m.want, Some(name));
                if out.killed() {
                    stats.crashes.fetch_add(1, Ordering::Relaxed);
                } else {
                    prop_assert_eq!(out.code(), Some(0), "{}: {:#?}", ctx, out);
                }
                sb.converge(&m.want);
            }
            change => {
                m.apply(change);
                sb.converge(&m.want);
            }
        }
        let i = Inspect::open(&sb.state_dir());
        let v = i.violations(&m.want);
        prop_assert!(v.is_empty(), "{}: not converged:\n  {}", ctx, v.join("\n  "));
        i.assert_contents(&m.want, &m.data, m.spell_wrote, &ctx).await;
        stats.steps.fetch_add(1, Ordering::Relaxed);
    }
    let plan = sb.plan(&m.want);
    prop_assert_eq!(&plan["no_changes"], &true, "after {:?}: {:#}", ops, plan);
    stats.cases.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[test]
fn random_operation_sequences_match_the_model() {
    let cases = std::env::var("RELIABILITY_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(32);
    let cfg = Config { cases, max_shrink_iters: 8, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(cfg);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stats = Stats { steps: AtomicUsize::new(0), crashes: AtomicUsize::new(0), cases: AtomicUsize::new(0) };
    let result = runner.run(&proptest::collection::vec(op(), 1..=8), |ops| rt.block_on(run_case(&ops, &stats)));
    println!(
        "property test: {} cases, {} steps checked against the model, {} of them crashed (SIGKILL) at a random crash point",
        stats.cases.load(Ordering::Relaxed),
        stats.steps.load(Ordering::Relaxed),
        stats.crashes.load(Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
