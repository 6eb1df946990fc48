//! Black-box tests of the spell layer: Rhai runs against a fake service
//! caller, KV in real SQLite files, and the scheduler under tokio's paused
//! clock (time only moves when every task waits, so schedules are exact).

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sysdeploy::ids::{Alias, PeerId};
use sysdeploy::spell::{RunStatus, Scheduler, ServiceCaller, SpellConfig, SpellDef, SpellError, Spells, Start, TokioClock, Trigger};
use sysdeploy::store::Store;
use tokio::sync::Notify;

/// Unix time at which every test starts.
const B: u64 = 1_700_000_000;

type Handler = Box<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// Services as spells see them. `slow.wait` blocks until the test releases
/// it, announcing through `entered` that a call arrived.
#[derive(Default)]
struct FakeServices {
    handlers: HashMap<String, Handler>,
    calls: Mutex<Vec<(String, String, Value)>>,
    entered: Notify,
    release: Notify,
}

impl FakeServices {
    fn new() -> Self {
        let mut f = Self::default();
        f.handlers.insert("echo.echo".into(), Box::new(Ok));
        f.handlers.insert(
            "math.add".into(),
            Box::new(|args| {
                let a = args[0].as_i64().ok_or("expected a number")?;
                let b = args[1].as_i64().ok_or("expected a number")?;
                Ok(json!(a + b))
            }),
        );
        f
    }
}

impl ServiceCaller for FakeServices {
    fn call(&self, alias: &str, function: &str, args: Value) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + '_>> {
        self.calls.lock().unwrap().push((alias.into(), function.into(), args.clone()));
        let key = format!("{alias}.{function}");
        let alias = alias.to_string();
        Box::pin(async move {
            if key == "slow.wait" {
                self.entered.notify_one();
                self.release.notified().await;
                return Ok(json!("released"));
            }
            match self.handlers.get(&key) {
                Some(h) => h(args),
                None => Err(format!("no service or alias named {alias}")),
            }
        })
    }
}

fn peer() -> PeerId {
    PeerId::from_ed25519_public(&[1u8; 32])
}

fn alias(s: &str) -> Alias {
    Alias::new(s).unwrap()
}

fn def(name: &str, script: &str, trigger: Trigger) -> SpellDef {
    SpellDef::new(alias(name), peer(), script, trigger)
}

fn kv(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// A node's state: a SQLite file in a temp dir and the fake services.
struct Fixture {
    _dir: tempfile::TempDir,
    db: PathBuf,
    services: Arc<FakeServices>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        Self { _dir: dir, db, services: Arc::new(FakeServices::new()) }
    }

    /// Spells over the file, with a clock that reads `unix` now and follows
    /// tokio's clock from here on. Opening again simulates a restart.
    fn spells_at(&self, unix: u64) -> Spells {
        self.spells_with(unix, SpellConfig::new(peer()))
    }

    fn spells_with(&self, unix: u64, cfg: SpellConfig) -> Spells {
        open(&self.db, self.services.clone(), unix, cfg)
    }
}

fn open(db: &Path, services: Arc<FakeServices>, unix: u64, cfg: SpellConfig) -> Spells {
    Spells::with_clock(Store::open(db).unwrap(), services, cfg, Arc::new(TokioClock::starting_at(unix)))
}

const COUNTER: &str = r#"kv_set("count", (kv_get("count") ?? 0) + 1);"#;

fn starts(spells: &Spells, name: &str) -> Vec<u64> {
    spells.history(&alias(name)).iter().map(|r| r.started_at).collect()
}

async fn sleep(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

fn never() -> impl Future<Output = ()> + Send + 'static {
    std::future::pending()
}

#[tokio::test(start_paused = true)]
async fn periodic_spell_runs_at_expected_times() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    spells.install(&def("counter", COUNTER, Trigger::periodic(10)), &BTreeMap::new()).unwrap();
    // nothing runs before the scheduler is started (after deployment)
    sleep(5).await;
    assert!(starts(&spells, "counter").is_empty());

    let sched = Scheduler::start(spells.clone(), never());
    sleep(35).await;
    sched.shutdown(Duration::from_secs(1)).await;

    assert_eq!(starts(&spells, "counter"), vec![B + 5, B + 15, B + 25, B + 35]);
    assert_eq!(spells.kv(&alias("counter")).unwrap()["count"], json!(4));
    let rec = spells.get(&alias("counter")).unwrap();
    assert_eq!((rec.run_count, rec.last_run, rec.next_run), (4, Some(B + 35), Some(B + 45)));
}

#[tokio::test(start_paused = true)]
async fn end_stops_the_spell() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let trigger = Trigger { start: Start::Now, period_sec: 10, end: Some(B + 25) };
    spells.install(&def("ending", COUNTER, trigger), &BTreeMap::new()).unwrap();
    let sched = Scheduler::start(spells.clone(), never());
    sleep(100).await;
    sched.shutdown(Duration::from_secs(1)).await;
    assert_eq!(starts(&spells, "ending"), vec![B, B + 10, B + 20]);
    assert_eq!(spells.get(&alias("ending")).unwrap().next_run, None);
}

#[tokio::test(start_paused = true)]
async fn start_in_the_future_waits_for_it() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let trigger = Trigger { start: Start::At(B + 42), period_sec: 100, end: None };
    spells.install(&def("later", COUNTER, trigger), &BTreeMap::new()).unwrap();
    let sched = Scheduler::start(spells.clone(), never());
    sleep(50).await;
    sched.shutdown(Duration::from_secs(1)).await;
    assert_eq!(starts(&spells, "later"), vec![B + 42]);
}

#[tokio::test(start_paused = true)]
async fn period_zero_runs_once_also_across_restarts() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    spells.install(&def("once", COUNTER, Trigger::once()), &BTreeMap::new()).unwrap();
    let sched = Scheduler::start(spells.clone(), never());
    sleep(50).await;
    sched.shutdown(Duration::from_secs(1)).await;
    assert_eq!(starts(&spells, "once"), vec![B]);
    drop(spells);

    let spells = f.spells_at(B + 1000);
    let sched = Scheduler::start(spells.clone(), never());
    sleep(50).await;
    sched.shutdown(Duration::from_secs(1)).await;
    assert_eq!(starts(&spells, "once"), vec![B]);
    assert_eq!(spells.kv(&alias("once")).unwrap()["count"], json!(1));

    // a changed trigger is a new "once": it runs one more time
    spells.update(&def("once", COUNTER, Trigger { start: Start::Now, period_sec: 0, end: Some(B + 5000) })).unwrap();
    let sched = Scheduler::start(spells.clone(), never());
    sleep(50).await;
    sched.shutdown(Duration::from_secs(1)).await;
    assert_eq!(starts(&spells, "once"), vec![B, B + 1050]);
}

#[tokio::test(start_paused = true)]
async fn restart_causes_no_extra_run_and_no_burst() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    spells.install(&def("counter", COUNTER, Trigger::periodic(10)), &BTreeMap::new()).unwrap();
    let sched = Scheduler::start(spells.clone(), never());
    sleep(25).await;
    sched.shutdown(Duration::from_secs(1)).await;
    assert_eq!(starts(&spells, "counter"), vec![B, B + 10, B + 20]);
    drop(spells);

    // back after 2 s: the next run is at last_run + P, not at boot
    let spells = f.spells_at(B + 27);
    let sched = Scheduler::start(spells.clone(), never());
    sleep(2).await;
    assert_eq!(starts(&spells, "counter"), vec![B, B + 10, B + 20], "a restart must not cause a run");
    sleep(3).await;
    sched.shutdown(Duration::from_secs(1)).await;
    assert_eq!(starts(&spells, "counter"), vec![B, B + 10, B + 20, B + 30]);
    drop(spells);

    // back after a long downtime: one run at boot, not one per missed period
    let spells = f.spells_at(B + 300);
    let sched = Scheduler::start(spells.clone(), never());
    sleep(15).await;
    sched.shutdown(Duration::from_secs(1)).await;
    assert_eq!(starts(&spells, "counter"), vec![B, B + 10, B + 20, B + 30, B + 300, B + 310]);
    assert_eq!(spells.kv(&alias("counter")).unwrap()["count"], json!(6), "kv survives restarts");
}

#[tokio::test(start_paused = true)]
async fn script_change_keeps_kv_and_schedule() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let a = alias("counter");
    spells.install(&def("counter", COUNTER, Trigger::periodic(60)), &BTreeMap::new()).unwrap();
    spells.run_once(&a).await.unwrap();
    spells.run_once(&a).await.unwrap();
    let before = spells.get(&a).unwrap();

    let v2 = r#"kv_set("count", (kv_get("count") ?? 0) + 10);"#;
    spells.update(&def("counter", v2, Trigger::periodic(60))).unwrap();
    let after = spells.get(&a).unwrap();
    assert_ne!(after.script_hash, before.script_hash);
    assert_eq!((after.id, after.last_run, after.run_count), (before.id, before.last_run, 2));

    spells.run_once(&a).await.unwrap();
    assert_eq!(spells.kv(&a).unwrap()["count"], json!(12), "the counter keeps counting");
    assert_eq!(spells.get(&a).unwrap().run_count, 3);
}

#[tokio::test(start_paused = true)]
async fn trigger_change_reschedules_a_running_scheduler() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    spells.install(&def("counter", COUNTER, Trigger::periodic(100)), &BTreeMap::new()).unwrap();
    let sched = Scheduler::start(spells.clone(), never());
    sleep(5).await;
    assert_eq!(starts(&spells, "counter"), vec![B]);

    spells.update(&def("counter", COUNTER, Trigger::periodic(10))).unwrap();
    sleep(20).await;
    assert_eq!(starts(&spells, "counter"), vec![B, B + 10, B + 20]);

    // spells installed while the scheduler runs are picked up too
    spells.install(&def("late", COUNTER, Trigger::periodic(10)), &BTreeMap::new()).unwrap();
    sleep(1).await;
    assert_eq!(starts(&spells, "late"), vec![B + 25]);

    // a removed spell stops running and its KV is gone
    spells.remove(&alias("counter")).unwrap();
    sleep(30).await;
    sched.shutdown(Duration::from_secs(1)).await;
    assert!(spells.get(&alias("counter")).is_none());
    assert!(spells.kv(&alias("counter")).is_none());
    assert_eq!(starts(&spells, "late"), vec![B + 25, B + 35, B + 45, B + 55]);
}

#[tokio::test(start_paused = true)]
async fn kv_apply_is_three_way() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let a = alias("cfg");
    let script = r#"kv_set("mode", "chosen-by-spell");"#;
    let initial = kv(&[("threshold", json!(5)), ("mode", json!("a"))]);
    spells.install(&def("cfg", script, Trigger::periodic(60)), &initial).unwrap();
    assert_eq!(spells.kv(&a).unwrap(), initial);
    spells.run_once(&a).await.unwrap();

    // an unrelated config change: only that key is written, the spell's own value survives
    let c2 = kv(&[("threshold", json!(7)), ("mode", json!("a"))]);
    assert_eq!(spells.plan_kv(&a, &c2).unwrap(), vec!["threshold"]);
    assert_eq!(spells.kv_apply(&a, &c2).unwrap(), vec!["threshold"]);
    assert_eq!(spells.kv(&a).unwrap(), kv(&[("threshold", json!(7)), ("mode", json!("chosen-by-spell"))]));
    assert_eq!(spells.get(&a).unwrap().last_applied_kv, c2);

    // the configured value of "mode" changes: config wins for that key
    let c3 = kv(&[("threshold", json!(7)), ("mode", json!("b")), ("extra", json!([1, 2]))]);
    assert_eq!(spells.kv_apply(&a, &c3).unwrap(), vec!["extra", "mode"]);
    assert_eq!(spells.kv(&a).unwrap()["mode"], json!("b"));

    // nothing changed: nothing written
    assert!(spells.kv_apply(&a, &c3).unwrap().is_empty());
    // a key leaves the config: the spell's data stays
    let c4 = kv(&[("threshold", json!(7)), ("mode", json!("b"))]);
    assert!(spells.kv_apply(&a, &c4).unwrap().is_empty());
    assert_eq!(spells.kv(&a).unwrap()["extra"], json!([1, 2]));
    assert_eq!(spells.get(&a).unwrap().last_applied_kv, c4);
}

#[tokio::test(start_paused = true)]
async fn throwing_spell_records_errors_commits_nothing_and_keeps_running() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let a = alias("thrower");
    let script = r#"kv_set("partial", 1); throw "boom";"#;
    spells.install(&def("thrower", script, Trigger::periodic(10)), &kv(&[("seed", json!(1))])).unwrap();
    let sched = Scheduler::start(spells.clone(), never());
    sleep(25).await;
    sched.shutdown(Duration::from_secs(1)).await;

    let history = spells.history(&a);
    assert_eq!(history.iter().map(|r| r.started_at).collect::<Vec<_>>(), vec![B, B + 10, B + 20]);
    assert!(history.iter().all(|r| r.status == RunStatus::Failed));
    let errors = spells.errors(&a);
    assert_eq!(errors.len(), 3);
    assert!(errors[0].message.contains("boom"), "{}", errors[0].message);
    assert_eq!(errors[2].at, B + 20);
    assert_eq!(spells.kv(&a).unwrap(), kv(&[("seed", json!(1))]), "a failing run commits no KV");
}

#[tokio::test(start_paused = true)]
async fn error_log_keeps_the_last_n() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let a = alias("thrower");
    spells.install(&def("thrower", r#"throw "boom " + now();"#, Trigger::periodic(1)), &BTreeMap::new()).unwrap();
    for _ in 0..25 {
        spells.run_once(&a).await.unwrap();
        sleep(1).await;
    }
    let errors = spells.errors(&a);
    assert_eq!(errors.len(), 20);
    assert!(errors[0].message.contains(&format!("boom {}", B + 5)), "{}", errors[0].message);
    assert!(errors[19].message.contains(&format!("boom {}", B + 24)), "{}", errors[19].message);
}

#[tokio::test(start_paused = true)]
async fn endless_loop_is_stopped_by_the_operation_budget() {
    let f = Fixture::new();
    let mut cfg = SpellConfig::new(peer());
    cfg.max_operations = 10_000;
    let spells = f.spells_with(B, cfg);
    let a = alias("looper");
    let script = r#"kv_set("x", 1); let n = 0; loop { n += 1; }"#;
    spells.install(&def("looper", script, Trigger::periodic(10)), &BTreeMap::new()).unwrap();
    let out = spells.run_once(&a).await.unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    assert!(out.error.as_deref().unwrap().contains("budget of 10000 operations"), "{:?}", out.error);
    assert_eq!(spells.errors(&a).len(), 1);
    assert!(spells.kv(&a).unwrap().is_empty());

    // the spell is not stopped: the scheduler runs it again on time
    let sched = Scheduler::start(spells.clone(), never());
    sleep(15).await;
    sched.shutdown(Duration::from_secs(1)).await;
    assert_eq!(starts(&spells, "looper"), vec![B, B + 10]);
    assert_eq!(spells.errors(&a).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn run_ttl_stops_a_hanging_call() {
    let f = Fixture::new();
    let mut cfg = SpellConfig::new(peer());
    cfg.run_ttl = Duration::from_secs(30);
    let spells = f.spells_with(B, cfg);
    let a = alias("hanger");
    let script = r#"kv_set("x", 1); try { call_service("slow", "wait", []); } catch (e) { kv_set("caught", e); } loop {}"#;
    spells.install(&def("hanger", script, Trigger::periodic(60)), &BTreeMap::new()).unwrap();
    let run = tokio::spawn({
        let spells = spells.clone();
        let a = a.clone();
        async move { spells.run_once(&a).await }
    });
    f.services.entered.notified().await;
    tokio::time::advance(Duration::from_secs(31)).await;
    let out = run.await.unwrap().unwrap();
    assert_eq!(out.status, RunStatus::TimedOut, "{out:?}");
    assert!(spells.errors(&a)[0].message.contains("time limit of 30000 ms"), "{:?}", spells.errors(&a));
    assert!(spells.kv(&a).unwrap().is_empty(), "a timed-out run commits nothing, even if it catches the error");
    // the timed-out run counts for the schedule, so it is not retried in a loop
    assert_eq!(spells.get(&a).unwrap().last_run, Some(B));
}

#[tokio::test(start_paused = true)]
async fn calling_a_missing_service_is_recorded_and_next_run_happens() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let a = alias("caller");
    let script = r#"
        let target = kv_get("target");
        let r = call_service(target, "add", [2, 3]);
        kv_set("result", r);
    "#;
    spells.install(&def("caller", script, Trigger::periodic(10)), &kv(&[("target", json!("nope"))])).unwrap();
    let out = spells.run_once(&a).await.unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    let msg = &spells.errors(&a)[0].message;
    assert!(msg.contains("call nope.add failed: no service or alias named nope"), "{msg}");

    spells.kv_apply(&a, &kv(&[("target", json!("math"))])).unwrap();
    sleep(10).await;
    let out = spells.run_once(&a).await.unwrap();
    assert_eq!(out.status, RunStatus::Ok, "{out:?}");
    assert_eq!(spells.kv(&a).unwrap()["result"], json!(5));
    assert_eq!(spells.errors(&a).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn host_api() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let a = alias("api-test");
    let script = r#"
        kv_set("now", now());
        kv_set("alias", spell_alias());
        kv_set("peer", peer_id());
        kv_remove("old");
        kv_set("keys", kv_list());
        kv_set("missing", kv_get("nothing") == ());
        kv_set("echo", call_service("echo", "echo", [1, "a", #{x: 2.5, y: [true, ()]}]));
        log("warn", "hello from a spell");
        print("printed");
        kv_set("no-args", call("echo", "echo"));
        let k = 2;
        let f = |x, y| x * y * k;
        kv_set("fn-ptr", call(f, 3, 7));
        kv_set("fn-ptr-named", call(Fn("to_upper"), "abc"));
        try { call("echo", "echo", 7); } catch (e) { kv_set("bad-args", e); }
    "#;
    spells.install(&def("api-test", script, Trigger::periodic(60)), &kv(&[("old", json!(1)), ("keep", json!(2))])).unwrap();
    let out = spells.run_once(&a).await.unwrap();
    assert_eq!(out.status, RunStatus::Ok, "{out:?}");
    let got = spells.kv(&a).unwrap();
    assert_eq!(got["now"], json!(B));
    assert_eq!(got["alias"], json!("api-test"));
    assert_eq!(got["peer"], json!(peer().as_str()));
    assert!(!got.contains_key("old"));
    assert_eq!(got["keep"], json!(2));
    assert_eq!(got["keys"], json!(["alias", "keep", "now", "peer"]));
    assert_eq!(got["missing"], json!(true));
    assert_eq!(got["echo"], json!([1, "a", {"x": 2.5, "y": [true, null]}]));
    assert_eq!(got["no-args"], json!([]));
    assert_eq!(got["fn-ptr"], json!(42), "call(f, ..) still calls a closure");
    assert_eq!(got["fn-ptr-named"], json!("ABC"));
    assert!(got["bad-args"].as_str().unwrap().contains("args must be an array"), "{}", got["bad-args"]);
    assert_eq!(
        out.kv_changed,
        vec!["alias", "bad-args", "echo", "fn-ptr", "fn-ptr-named", "keys", "missing", "no-args", "now", "old", "peer"]
    );
    let calls = f.services.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![("echo".into(), "echo".into(), json!([1, "a", {"x": 2.5, "y": [true, null]}])), ("echo".into(), "echo".into(), json!([])),]
    );
}

#[tokio::test(start_paused = true)]
async fn scripts_are_sandboxed() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let a = alias("sneaky");
    // A real module a file-resolving engine would load: `import "<dir>/lib"`
    // finds `<dir>/lib.rhai`. The sandbox must refuse it, so its value never
    // reaches the KV.
    let lib = f._dir.path().join("lib");
    std::fs::write(lib.with_extension("rhai"), "export const SECRET = \"read from a file\";\n").unwrap();
    let script = format!("kv_set(\"before\", 1);\nimport {:?} as m;\nkv_set(\"leak\", m::SECRET);\n", lib.display().to_string());
    spells.install(&def("sneaky", &script, Trigger::once()), &BTreeMap::new()).unwrap();
    let out = spells.run_once(&a).await.unwrap();
    assert_eq!(out.status, RunStatus::Failed, "{out:?}");
    let msg = out.error.as_deref().unwrap_or_default();
    assert!(msg.contains("lib"), "the refusal names the module: {msg}");
    assert!(spells.kv(&a).unwrap().is_empty(), "nothing of the run, and no imported value, is in the KV");
    // values that are not JSON cannot be stored
    spells.update(&def("sneaky", r#"kv_set("f", |x| x + 1);"#, Trigger::once())).unwrap();
    let out = spells.run_once(&a).await.unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    let msg = out.error.unwrap();
    assert!(msg.contains("cannot be stored as JSON"), "{msg}");
}

#[tokio::test(start_paused = true)]
async fn runs_of_one_spell_never_overlap() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let a = alias("slow");
    spells.install(&def("slow", r#"call_service("slow", "wait", []);"#, Trigger::periodic(60)), &BTreeMap::new()).unwrap();
    let run = tokio::spawn({
        let spells = spells.clone();
        let a = a.clone();
        async move { spells.run_once(&a).await }
    });
    f.services.entered.notified().await;
    assert!(matches!(spells.run_once(&a).await, Err(SpellError::Busy { .. })));
    f.services.release.notify_one();
    assert_eq!(run.await.unwrap().unwrap().status, RunStatus::Ok);
    // and once it finished, the next one may run
    let again = tokio::spawn({
        let spells = spells.clone();
        async move { spells.run_once(&alias("slow")).await }
    });
    f.services.entered.notified().await;
    f.services.release.notify_one();
    assert_eq!(again.await.unwrap().unwrap().status, RunStatus::Ok);
}

#[tokio::test(start_paused = true)]
async fn long_run_delays_the_next_instead_of_overlapping() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    spells.install(&def("slow", r#"call_service("slow", "wait", []);"#, Trigger::periodic(10)), &BTreeMap::new()).unwrap();
    let sched = Scheduler::start(spells.clone(), never());
    f.services.entered.notified().await;
    // the first run hangs for 25 s, over two periods
    tokio::time::advance(Duration::from_secs(25)).await;
    f.services.release.notify_one();
    // the next run starts right after, once, not twice
    f.services.entered.notified().await;
    let hist = spells.history(&alias("slow"));
    assert_eq!(hist.len(), 1);
    assert_eq!((hist[0].started_at, hist[0].finished_at), (B, B + 25));
    tokio::time::advance(Duration::from_secs(1)).await;
    f.services.release.notify_one();
    f.services.entered.notified().await;
    assert_eq!(starts(&spells, "slow"), vec![B, B + 25]);
    f.services.release.notify_one();
    sched.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_gives_a_running_run_its_grace_period() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let a = alias("slow");
    let script = r#"kv_set("before", 1); let r = call_service("slow", "wait", []); kv_set("after", r);"#;
    spells.install(&def("slow", script, Trigger::periodic(10)), &BTreeMap::new()).unwrap();
    let sched = Scheduler::start(spells.clone(), never());
    f.services.entered.notified().await;
    let stopping = tokio::spawn(sched.shutdown(Duration::from_secs(10)));
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(3)).await;
    f.services.release.notify_one();
    stopping.await.unwrap();
    assert_eq!(spells.kv(&a).unwrap(), kv(&[("before", json!(1)), ("after", json!("released"))]));
    assert_eq!(starts(&spells, "slow"), vec![B], "no new run starts once shutdown began");
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_a_run_after_the_grace_period_without_committing() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let a = alias("slow");
    let script = r#"kv_set("before", 1); call_service("slow", "wait", []); kv_set("after", 2);"#;
    spells.install(&def("slow", script, Trigger::periodic(10)), &BTreeMap::new()).unwrap();
    let sched = Scheduler::start(spells.clone(), never());
    f.services.entered.notified().await;
    let stopping = tokio::spawn(sched.shutdown(Duration::from_secs(10)));
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(11)).await;
    stopping.await.unwrap();

    assert!(spells.kv(&a).unwrap().is_empty(), "a cancelled run commits nothing");
    let hist = spells.history(&a);
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0].status, RunStatus::Cancelled);
    assert!(spells.errors(&a)[0].message.contains("cancelled at shutdown"));
    // a cancelled run does not count: after a restart it runs at once
    assert_eq!(spells.get(&a).unwrap().last_run, None);
}

#[tokio::test(start_paused = true)]
async fn shutdown_signal_stops_new_runs() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    spells.install(&def("counter", COUNTER, Trigger::periodic(10)), &BTreeMap::new()).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let sched = Scheduler::start(spells.clone(), async move {
        let _ = rx.await;
    });
    sleep(15).await;
    tx.send(()).unwrap();
    sleep(100).await;
    assert_eq!(starts(&spells, "counter"), vec![B, B + 10]);
    sched.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn install_and_update_validate_their_input() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let none = BTreeMap::new();
    assert!(matches!(spells.install(&def("bad", "let x = ;", Trigger::once()), &none), Err(SpellError::Compile { .. })));
    let mut wrong_hash = def("bad", COUNTER, Trigger::once());
    wrong_hash.script_hash = sysdeploy::spell::script_hash("something else");
    assert!(matches!(spells.install(&wrong_hash, &none), Err(SpellError::HashMismatch { .. })));
    let bad_trigger = Trigger { start: Start::At(B + 10), period_sec: 1, end: Some(B + 5) };
    assert!(matches!(spells.install(&def("bad", COUNTER, bad_trigger), &none), Err(SpellError::InvalidTrigger { .. })));
    assert!(matches!(spells.install(&def("bad", COUNTER, Trigger::once()), &kv(&[("", json!(1))])), Err(SpellError::InvalidKv { .. })));
    assert!(spells.list().is_empty(), "nothing is written for rejected input");

    spells.install(&def("good", COUNTER, Trigger::once()), &none).unwrap();
    assert!(matches!(spells.install(&def("good", COUNTER, Trigger::once()), &none), Err(SpellError::AlreadyInstalled { .. })));
    let mut foreign = def("good", "1;", Trigger::once());
    foreign.owner = PeerId::from_ed25519_public(&[2u8; 32]);
    assert!(matches!(spells.update(&foreign), Err(SpellError::NotOwner { .. })));
    assert!(matches!(spells.update(&def("good", "let x = ;", Trigger::once())), Err(SpellError::Compile { .. })));
    assert!(matches!(spells.update(&def("absent", COUNTER, Trigger::once())), Err(SpellError::Unknown { .. })));
    assert!(matches!(spells.remove(&alias("absent")), Err(SpellError::Unknown { .. })));
    assert_eq!(spells.list().len(), 1);
    assert_eq!(spells.get(&alias("good")).unwrap().script_hash, sysdeploy::spell::script_hash(COUNTER));

    // an unchanged definition is a no-op: updated_at does not move
    let before = spells.get(&alias("good")).unwrap();
    sleep(10).await;
    spells.update(&def("good", COUNTER, Trigger::once())).unwrap();
    assert_eq!(spells.get(&alias("good")).unwrap().updated_at, before.updated_at);
}

#[tokio::test(start_paused = true)]
async fn read_only_readers_see_spells() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    spells.install(&def("counter", COUNTER, Trigger::periodic(10)), &kv(&[("a", json!(1))])).unwrap();
    spells.run_once(&alias("counter")).await.unwrap();
    let ro = Store::open_read_only(&f.db).unwrap();
    let all = sysdeploy::spell::read_spells(&ro, B + 3).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].last_run, all[0].next_run), (Some(B), Some(B + 10)));
    assert_eq!(all[0].last_applied_kv, kv(&[("a", json!(1))]));
}

#[tokio::test(start_paused = true)]
async fn removing_a_spell_during_its_run_keeps_it_removed() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let a = alias("slow");
    let script = r#"kv_set("x", 1); call("slow", "wait", []);"#;
    spells.install(&def("slow", script, Trigger::periodic(60)), &kv(&[("seed", json!(0))])).unwrap();
    let run = tokio::spawn({
        let spells = spells.clone();
        let a = a.clone();
        async move { spells.run_once(&a).await }
    });
    f.services.entered.notified().await;
    spells.remove(&a).unwrap();
    f.services.release.notify_one();
    assert_eq!(run.await.unwrap().unwrap().status, RunStatus::Ok);
    assert!(spells.get(&a).is_none());
    assert!(spells.kv(&a).is_none(), "the finished run must not bring KV back");
    // the alias is free for a fresh spell with fresh KV
    spells.install(&def("slow", COUNTER, Trigger::once()), &BTreeMap::new()).unwrap();
    assert!(spells.kv(&a).unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn kv_writes_are_bounded() {
    let f = Fixture::new();
    let spells = f.spells_at(B);
    let a = alias("big");
    let long_key = "k".repeat(sysdeploy::spell::MAX_KEY_LEN + 1);
    spells.install(&def("big", &format!(r#"kv_set("{long_key}", 1);"#), Trigger::once()), &BTreeMap::new()).unwrap();
    let out = spells.run_once(&a).await.unwrap();
    assert!(out.error.unwrap().contains("kv key must be 1 to 256 bytes"));
    spells.update(&def("big", r#"let s = "x"; s.pad(1048577, "x"); kv_set("v", s);"#, Trigger::once())).unwrap();
    let out = spells.run_once(&a).await.unwrap();
    assert_eq!(out.status, RunStatus::Failed, "{out:?}");
    assert!(spells.kv(&a).unwrap().is_empty());
}
// Spells checked against services at plan time (issue 16).
#[path = "spells/plan_check.rs"]
mod plan_check;
