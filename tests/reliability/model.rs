//! Property test over random operation sequences against a simple model:
//! enable/disable packages, change config values, swap the component build
//! (v1/v2), change the spell script, write service data, restart, give a
//! service a config value its init rejects (a WIT `err`), change an alias
//! from a spell to a service and back, lose `node.key`, and crash at a crash
//! point on the change's path (SIGKILL, which must fire) followed by a
//! restart. After every step the node must be converged on what the model
//! wants (`Inspect`), and what it *observably* holds — every service's
//! getters, every spell's KV — must equal the model; a plain restart must
//! change nothing.
//!
//! Bounded: `PROPTEST_CASES` (or `RELIABILITY_PROPTEST_CASES`; default 48)
//! cases of at most 8 operations, each a real boot of the binary. The seed is
//! printed (`RELIABILITY_PROPTEST_SEED=<hex>` replays it) and failures are
//! persisted in `model.proptest-regressions` beside this file (committed, so
//! a found failure is replayed first on every run).

use super::common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestRng, TestRunner};
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
    /// Enable the `checked` package with this value, or disable it.
    Checked(Option<u8>),
    /// Boot with a `checked` value its init rejects: exit 1, nothing of it
    /// applied; the operator then goes back to the previous config.
    Reject,
    /// What the `shifty` alias is: a spell, a service, or not enabled.
    Shift(Option<Kind>),
    /// `node.key` is moved away: `run` and `plan` exit 3 and change nothing;
    /// then it is restored.
    LoseKey,
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
        prop_oneof![Just(None), (0u8..3).prop_map(Some)].prop_map(Op::Checked),
        prop_oneof![1 => Just(None), 2 => Just(Some(Kind::Spell)), 2 => Just(Some(Kind::Service))].prop_map(Op::Shift),
        prop_oneof![Just(Some(Kind::Spell)), Just(Some(Kind::Service))].prop_map(Op::Shift),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let n = sysdeploy::failpoint::CRASH_POINTS.len();
    prop_oneof![
        4 => change(),
        1 => (0u8..3).prop_map(Op::WriteData),
        1 => Just(Op::Restart),
        1 => Just(Op::Reject),
        1 => Just(Op::LoseKey),
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
            Op::Checked(v) => w.checked = v.map(|v| format!("value-{v}")),
            Op::Shift(k) => w.shifty = *k,
            Op::WriteData(_) | Op::Restart | Op::Crash { .. } | Op::Reject | Op::LoseKey => {}
        }
    }
}

/// The executor operations (`CRASH_POINTS` tags) a change from `w` passes
/// through for sure (so a crash point of theirs must fire).
fn ops_of(change: &Op, w: &Want) -> Vec<&'static str> {
    match change {
        Op::Checked(None) if w.checked.is_some() => vec!["remove"],
        Op::Checked(Some(_)) if w.checked.is_some() => vec!["reinit"],
        Op::Checked(Some(_)) => vec!["install"],
        Op::Shift(new) => match (w.shifty, new) {
            (a, b) if a == *b => vec![],
            (_, Some(Kind::Spell)) => vec!["install-spell"],
            (_, Some(Kind::Service)) => vec!["install"],
            (Some(Kind::Spell), None) => vec!["remove-spell"],
            (_, None) => vec!["remove"],
        },
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
    rejected: AtomicUsize,
    shifts: AtomicUsize,
    keys_lost: AtomicUsize,
    cases: AtomicUsize,
}

/// Counts a change of the `shifty` alias between spell and service.
fn count_kind_change(change: &Op, w: &Want, stats: &Stats) {
    if matches!(change, Op::Shift(Some(k)) if w.shifty.is_some_and(|now| now != *k)) {
        stats.shifts.fetch_add(1, Ordering::Relaxed);
    }
}

async fn run_case(ops: &[Op], stats: &Stats) -> Result<(), TestCaseError> {
    let sb = Sandbox::new();
    // Every package enabled at the start, so the operations on `checked`
    // and `shifty` have something to act on.
    let mut m = Model { want: Want { checked: Some("value-0".into()), shifty: Some(Kind::Spell), ..Want::default() }, ..Model::default() };
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
                // Crash points on the path of this change: the armed one
                // must fire (a change that passes none is a plain boot).
                let all = sysdeploy::failpoint::CRASH_POINTS;
                let before = m.want.clone();
                count_kind_change(change, &m.want, stats);
                m.apply(change);
                let ops = if m.want == before { vec![] } else { ops_of(change, &before) };
                let on_path: Vec<&str> = all.iter().filter(|(_, o)| ops.contains(o)).map(|(n, _)| *n).collect();
                if on_path.is_empty() {
                    sb.converge(&m.want);
                } else {
                    let name = on_path[*point % on_path.len()];
                    let out = sb.boot(&m.want, Some(name));
                    prop_assert!(out.killed(), "{}: crash point {} on the path of {:?} did not fire: {:#?}", ctx, name, ops, out);
                    stats.crashes.fetch_add(1, Ordering::Relaxed);
                    sb.converge(&m.want);
                }
            }
            Op::Reject if m.want.checked.is_none() => {}
            Op::Reject => {
                let bad = Want { checked: Some("!rejected".into()), ..m.want.clone() };
                let out = sb.boot(&bad, None);
                prop_assert_eq!(out.code(), Some(1), "{}: a value the guest rejects must fail the step: {:#?}", ctx, out);
                prop_assert!(
                    out.stderr.contains("alias checked") && out.stderr.contains("set-value") && out.stderr.contains("rejected: the value"),
                    "{}: {}",
                    ctx,
                    out.stderr
                );
                // Not recorded as applied: the plan still shows it.
                let plan = sb.plan(&bad);
                prop_assert_eq!(&plan["no_changes"], &false, "{}: {:#}", ctx, plan);
                stats.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Op::LoseKey => {
                let key = sb.state_dir().join("node.key");
                let saved = sb.dir.path().join("node.key.saved");
                std::fs::rename(&key, &saved).unwrap();
                let before = sb.tree();
                let out = sb.boot(&m.want, None);
                prop_assert_eq!(out.code(), Some(3), "{}: {:#?}", ctx, out);
                prop_assert!(out.stderr.contains("node identity"), "{}: {}", ctx, out.stderr);
                let mut after = sb.tree();
                after.remove("lock");
                let mut expected = before.clone();
                expected.remove("lock");
                prop_assert_eq!(after, expected, "{}: the state dir changed", ctx);
                std::fs::rename(&saved, &key).unwrap();
                stats.keys_lost.fetch_add(1, Ordering::Relaxed);
            }
            change => {
                count_kind_change(change, &m.want, stats);
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
    let cases = ["PROPTEST_CASES", "RELIABILITY_PROPTEST_CASES"]
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(|s| s.parse().ok()))
        .unwrap_or(48);
    let seed: [u8; 32] = match std::env::var("RELIABILITY_PROPTEST_SEED") {
        Ok(hex) => {
            let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex seed")).collect();
            bytes.try_into().expect("RELIABILITY_PROPTEST_SEED is 64 hex characters")
        }
        Err(_) => {
            let mut s = [0u8; 32];
            getrandom::fill(&mut s).unwrap();
            s
        }
    };
    let seed_hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    println!("property test: seed {seed_hex} (replay with RELIABILITY_PROPTEST_SEED={seed_hex}), {cases} cases");
    let persistence = FileFailurePersistence::Direct(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reliability/model.proptest-regressions"));
    let cfg = Config {
        cases,
        max_shrink_iters: 8,
        failure_persistence: Some(Box::new(persistence)),
        source_file: Some(file!()),
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(cfg, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stats = Stats {
        steps: AtomicUsize::new(0),
        crashes: AtomicUsize::new(0),
        rejected: AtomicUsize::new(0),
        shifts: AtomicUsize::new(0),
        keys_lost: AtomicUsize::new(0),
        cases: AtomicUsize::new(0),
    };
    let result = runner.run(&proptest::collection::vec(op(), 1..=8), |ops| rt.block_on(run_case(&ops, &stats)));
    let crashes = stats.crashes.load(Ordering::Relaxed);
    println!(
        "property test: {} cases, {} steps checked against the model, {} of them SIGKILLed at a crash point on their path (every armed point fired), {} rejected init values, {} alias kind changes, {} lost node.key; seed {seed_hex}",
        stats.cases.load(Ordering::Relaxed),
        stats.steps.load(Ordering::Relaxed),
        crashes,
        stats.rejected.load(Ordering::Relaxed),
        stats.shifts.load(Ordering::Relaxed),
        stats.keys_lost.load(Ordering::Relaxed),
    );
    if let Err(e) = result {
        panic!("{e}\nseed {seed_hex}: replay with RELIABILITY_PROPTEST_SEED={seed_hex}");
    }
    if cases >= 8 {
        assert!(crashes > 0, "{cases} cases and no crash point fired: the crash operations test nothing");
    }
}
