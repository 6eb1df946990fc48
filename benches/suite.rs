//! In-process half of the benchmark suite (`cargo xtask bench` drives it; not
//! run by `cargo test`). Each mode prints one JSON object on stdout:
//!
//! - `floor <artifact.cwasm>...`: bare wasmtime (same engine settings as the
//!   runtime) creates an engine and a WASI linker, deserialises each
//!   precompiled artifact and instantiates it once. Run as its own process it
//!   is the floor of a no-op boot.
//! - `compile <component.wasm>...`: compiles every component with bare
//!   wasmtime, one thread per component plus Cranelift's own parallelism: the
//!   floor of a cold first boot.
//! - `call <iterations>`: `Runtime::call` of a small record echo (JSON →
//!   WIT values → guest → JSON) next to a bare typed wasmtime call of the
//!   same function on the same engine settings.
//! - `concurrent <tasks> <calls-per-task>`: `tasks` tokio tasks (2 workers)
//!   call `echo-entry` of ONE service at once, next to the same tasks each
//!   calling a service of its own: what serialising calls per service costs
//!   in throughput and tail latency, without HTTP in the way.
//! - `plan <distros-dir> <state-dir> <reps>`: resolve desired state and run
//!   the pure planner against a deployed store, in process, repeatedly.
//! - `hold <reps> <keys>`: blue-green replaces (kv-store v1 ⇄ v2, `keep_data`,
//!   `keys` files of data) through the executor: how long calls to the old
//!   service are held (data copy + init + sync + alias move), next to the
//!   whole replace step as its baseline.
//!
//! Every mode ignores the `--bench` flag cargo passes to bench binaries.

mod bare;

use bare::{bare_engine, bare_linker, bare_store, Bare};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use sysdeploy::runtime::{Blueprint, BlueprintComponent, Runtime, RuntimeConfig, RuntimeOptions};
use wasmtime::component::{Component, ComponentType, Lift, Linker, Lower};

/// A component exporting `echo-entry: func(e: entry) -> entry` for a small
/// record `entry { key: string, value: u64 }`. The core function writes the
/// record it was given back into a return area; strings are bump-allocated.
const ECHO_ENTRY_WAT: &str = r#"
(component
  (core module $m
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 1024))
    (func (export "realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32) (result i32)
      (local $p i32)
      ;; Start over near the bottom when the page is nearly used: callers
      ;; never keep a string across calls.
      (if (i32.gt_u (i32.add (global.get $heap) (local.get $new_size)) (i32.const 60000))
        (then (global.set $heap (i32.const 1024))))
      (local.set $p
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get $align))))
      (global.set $heap (i32.add (local.get $p) (local.get $new_size)))
      (local.get $p))
    (func (export "echo-entry") (param $ptr i32) (param $len i32) (param $value i64) (result i32)
      (i32.store (i32.const 16) (local.get $ptr))
      (i32.store (i32.const 20) (local.get $len))
      (i64.store (i32.const 24) (local.get $value))
      (i32.const 16))
  )
  (core instance $i (instantiate $m))
  (alias core export $i "memory" (core memory $mem))
  (alias core export $i "realloc" (core func $realloc))
  (type $entry' (record (field "key" string) (field "value" u64)))
  (export $entry "entry" (type $entry'))
  (func (export "echo-entry") (param "e" $entry) (result $entry)
    (canon lift (core func $i "echo-entry") (memory $mem) (realloc $realloc)))
)
"#;

/// The typed Rust view of the WIT `entry` record.
#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq)]
#[component(record)]
struct Entry {
    key: String,
    value: u64,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median, min and max of samples in microseconds.
fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    json!({ "median_us": v[v.len() / 2], "min_us": v[0], "max_us": v[v.len() - 1], "samples": v.len() })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    let out = match args.first().map(String::as_str) {
        Some("floor") => rt.block_on(floor(&args[1..])),
        Some("compile") => compile(&args[1..]),
        Some("call") => rt.block_on(call(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(20_000))),
        Some("concurrent") => rt.block_on(concurrent(
            args.get(1).and_then(|n| n.parse().ok()).unwrap_or(8),
            args.get(2).and_then(|n| n.parse().ok()).unwrap_or(5_000),
        )),
        Some("plan") => plan(Path::new(&args[1]), Path::new(&args[2]), args.get(3).and_then(|n| n.parse().ok()).unwrap_or(11)),
        Some("hold") => rt.block_on(hold(
            args.get(1).and_then(|n| n.parse().ok()).unwrap_or(11),
            args.get(2).and_then(|n| n.parse().ok()).unwrap_or(100),
        )),
        _ => {
            eprintln!("usage: suite floor <cwasm>... | compile <wasm>... | call [iterations] | concurrent [tasks] [calls-per-task] | plan <distros-dir> <state-dir> [reps] | hold [reps] [keys]");
            std::process::exit(2);
        }
    };
    println!("{out}");
}

/// Engine + linker, then deserialise and instantiate every artifact.
async fn floor(paths: &[String]) -> Value {
    let t = Instant::now();
    let engine = bare_engine();
    let linker = bare_linker(&engine);
    for p in paths {
        // SAFETY: the artifacts were written by sysdeploy's runtime with this
        // wasmtime version and the same engine settings, and are not modified
        // while mapped; wasmtime checks compatibility.
        let c = unsafe { Component::deserialize_file(&engine, p) }.unwrap_or_else(|e| panic!("{p}: {e:#}"));
        let pre = linker.instantiate_pre(&c).unwrap_or_else(|e| panic!("{p}: linking: {e:#}"));
        let mut store = bare_store(&engine, None);
        pre.instantiate_async(&mut store).await.unwrap_or_else(|e| panic!("{p}: instantiating: {e:#}"));
    }
    json!({ "components": paths.len(), "in_process_us": us(t.elapsed()) })
}

/// Compiles every component, each on its own thread.
fn compile(paths: &[String]) -> Value {
    let t = Instant::now();
    let engine = bare_engine();
    let bytes: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"))).collect();
    std::thread::scope(|s| {
        for b in &bytes {
            let engine = engine.clone();
            s.spawn(move || {
                let c = Component::new(&engine, b).expect("compiles");
                // Serialising is part of what a cache-filling boot pays.
                c.serialize().expect("serialises")
            });
        }
    });
    json!({ "components": paths.len(), "in_process_us": us(t.elapsed()) })
}

/// A runtime over a temporary state dir with `n` services of the echo-entry
/// component (the directory lives as long as the returned guard); also the
/// component's bytes.
async fn echo_services(n: usize) -> (tempfile::TempDir, Runtime, Vec<sysdeploy::ids::ServiceId>, Vec<u8>) {
    let bytes = wat::parse_str(ECHO_ENTRY_WAT).expect("echo-entry wat");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sysdeploy::store::Store::open(&dir.path().join("state.db")).expect("store");
    let mut cfg = RuntimeConfig::new(dir.path());
    cfg.call_ttl = Duration::from_secs(5);
    let host = sysdeploy::ids::PeerId::from_ed25519_public(&[1u8; 32]);
    let runtime = Runtime::open_with(store, cfg, RuntimeOptions { host_peer: Some(host.clone()), ..Default::default() }).expect("runtime");
    let hash = runtime.add_component(&bytes, None).expect("add");
    let bp = runtime
        .put_blueprint(&Blueprint::new(vec![BlueprintComponent { name: "echo-entry".into(), hash, memory_limit_mb: None }]))
        .expect("blueprint");
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(runtime.create_service(&bp, &host).await.expect("service"));
    }
    (dir, runtime, ids, bytes)
}

/// JSON call through the runtime vs bare typed call, same function.
async fn call(n: usize) -> Value {
    let (_dir, runtime, ids, bytes) = echo_services(1).await;
    let id = &ids[0];
    let arg = |i: usize| json!([{ "key": "record-key", "value": i }]);
    // Warm up: instantiation happens on the first call.
    for i in 0..1000 {
        runtime.call(id.as_str(), "echo-entry", arg(i)).await.expect("call");
    }
    let mut json_path = Vec::with_capacity(n);
    for i in 0..n {
        let a = arg(i);
        let t = Instant::now();
        let r = runtime.call(id.as_str(), "echo-entry", a).await.expect("call");
        json_path.push(us(t.elapsed()));
        debug_assert_eq!(r["value"], json!(i));
    }

    let engine = bare_engine();
    let linker: Linker<Bare> = Linker::new(&engine);
    let component = Component::new(&engine, &bytes).expect("compile");
    let mut store = bare_store(&engine, None);
    let instance = linker.instantiate_pre(&component).expect("link").instantiate_async(&mut store).await.expect("instantiate");
    let f = instance.get_typed_func::<(Entry,), (Entry,)>(&mut store, "echo-entry").expect("typed func");
    for i in 0..1000u64 {
        f.call_async(&mut store, (Entry { key: "record-key".into(), value: i },)).await.expect("call");
    }
    let mut typed = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let e = Entry { key: "record-key".into(), value: i };
        let t = Instant::now();
        let (r,) = f.call_async(&mut store, (e,)).await.expect("call");
        typed.push(us(t.elapsed()));
        debug_assert_eq!(r.value, i);
    }
    json!({ "iterations": n, "json_call": stats(json_path), "typed_call": stats(typed) })
}

/// `tasks` concurrent callers of one service vs each caller on its own service.
async fn concurrent(tasks: usize, per_task: usize) -> Value {
    let (_dir, runtime, ids, _) = echo_services(tasks).await;
    let run = |targets: Vec<String>| {
        let runtime = runtime.clone();
        async move {
            let t = Instant::now();
            let mut handles = Vec::new();
            for target in targets {
                let runtime = runtime.clone();
                handles.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per_task);
                    for i in 0..per_task {
                        let a = json!([{ "key": "record-key", "value": i }]);
                        let t = Instant::now();
                        runtime.call(&target, "echo-entry", a).await.expect("call");
                        lat.push(us(t.elapsed()));
                    }
                    lat
                }));
            }
            let mut all = Vec::new();
            for h in handles {
                all.extend(h.await.expect("caller task"));
            }
            let secs = t.elapsed().as_secs_f64();
            all.sort_by(f64::total_cmp);
            let p = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
            json!({ "calls": all.len(), "per_second": all.len() as f64 / secs, "p50_us": p(0.5), "p99_us": p(0.99), "max_us": p(1.0) })
        }
    };
    // Warm up: every service instantiated, then measured alternately.
    let own: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let one: Vec<String> = vec![ids[0].to_string(); tasks];
    run(own.clone()).await;
    let one_service = run(one).await;
    let own_services = run(own).await;
    json!({ "tasks": tasks, "per_task": per_task, "one_service": one_service, "own_services": own_services })
}

/// Resolve + pure plan against a deployed state dir, `reps` times.
fn plan(distros: &Path, state: &Path, reps: usize) -> Value {
    use sysdeploy::config::{self, LoadOptions};
    use sysdeploy::deploy::{self, desired};
    let t = Instant::now();
    let catalog = sysdeploy::distro::Catalog::load_dir(distros).unwrap_or_else(|e| panic!("{}: {e}", distros.display()));
    let load_us = us(t.elapsed());
    let schemas = catalog.schemas();
    let opts = LoadOptions {
        config_path: None,
        env: vec![],
        flags: vec![config::FlagValue::new("--state-dir", "node.state_dir", state.to_string_lossy())],
    };
    let cfg = config::load(&opts, &schemas).unwrap_or_else(|e| panic!("config: {e}"));
    let sd = sysdeploy::state::StateDir::open_shared(state).expect("state dir");
    let host = sd.peer_id().clone();
    let store = sysdeploy::store::Store::open_read_only(&sd.store_path()).expect("store");
    let current = sysdeploy::node::current_readonly(&store, &host).expect("current");
    // Facade exports, once per distinct blueprint (not timed: the node gets
    // them from its artifact cache).
    let mut exports = std::collections::BTreeMap::new();
    {
        let d = desired::resolve(&catalog, &cfg).expect("desired");
        for p in &d.packages {
            for s in &p.services {
                if !exports.contains_key(&s.blueprint_id) {
                    let facade = s.blueprint.components.last().expect("facade");
                    let spec = catalog
                        .packages
                        .iter()
                        .flat_map(|p| &p.services)
                        .flat_map(|s| &s.components)
                        .find(|c| c.hash == facade.hash)
                        .expect("component in catalog");
                    exports.insert(
                        s.blueprint_id,
                        sysdeploy::runtime::inspect_exports(std::path::Path::new(""), None, &facade.hash, &spec.bytes).expect("exports"),
                    );
                }
            }
        }
    }
    let (mut resolve_s, mut plan_s) = (Vec::new(), Vec::new());
    let mut services = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let mut d = desired::resolve(&catalog, &cfg).expect("desired");
        resolve_s.push(us(t.elapsed()));
        d.exports = exports.clone();
        let t = Instant::now();
        let p = deploy::plan(&d, &current, &host).expect("plan");
        plan_s.push(us(t.elapsed()));
        assert!(p.is_noop(), "the bench plans against a deployed state: nothing should change");
        services = d.packages.iter().map(|p| p.services.len()).sum();
    }
    json!({ "services": services, "load_dir_us": load_us, "resolve": stats(resolve_s), "plan": stats(plan_s) })
}

/// Pause of calls during a blue-green replace with `keep_data`.
async fn hold(reps: usize, keys: usize) -> Value {
    use std::sync::Arc;
    use sysdeploy::deploy::*;
    use sysdeploy::ids::{Alias, ComponentHash, PackageName, PeerId};

    struct Bytes(std::collections::HashMap<ComponentHash, Vec<u8>>);
    impl ComponentSource for Bytes {
        fn bytes(&self, h: &ComponentHash) -> Option<std::borrow::Cow<'_, [u8]>> {
            self.0.get(h).map(|b| std::borrow::Cow::Borrowed(b.as_slice()))
        }
    }
    struct NoSpells;
    impl SpellOps for NoSpells {
        fn install(&self, _: &DesiredSpell, _: &PeerId) -> Result<String, String> {
            Err("no spells here".into())
        }
        fn update(&self, _: &DesiredSpell, _: &PeerId) -> Result<(), String> {
            Err("no spells here".into())
        }
        fn kv_apply(&self, _: &DesiredSpell) -> Result<Vec<String>, String> {
            Err("no spells here".into())
        }
        fn remove(&self, _: &Alias) -> Result<(), String> {
            Ok(())
        }
        fn id_of(&self, _: &Alias) -> Option<String> {
            None
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distros");
    let builds: Vec<Vec<u8>> =
        ["v1", "v2"].iter().map(|b| std::fs::read(root.join(b).join("kv-store/kv-store.wasm")).expect("kv-store")).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sysdeploy::store::Store::open(&dir.path().join("state.db")).expect("store");
    let host = PeerId::from_ed25519_public(&[1u8; 32]);
    let runtime = Runtime::open_with(
        store.clone(),
        RuntimeConfig::new(dir.path()),
        RuntimeOptions { host_peer: Some(host.clone()), ..Default::default() },
    )
    .expect("runtime");
    let deployer = Deployer {
        runtime: runtime.clone(),
        spells: Arc::new(NoSpells),
        journal: journal::Journal::new(store),
        host: host.clone(),
        policy: ApplyPolicy::default(),
    };
    let source = Arc::new(Bytes(builds.iter().map(|b| (ComponentHash::of(b), b.clone())).collect()));
    let desired = |k: usize| {
        let bp = Blueprint::new(vec![BlueprintComponent {
            name: "kv-store".into(),
            hash: ComponentHash::of(&builds[k]),
            memory_limit_mb: None,
        }]);
        let s = DesiredService {
            alias: Alias::new("kv-store").unwrap(),
            package: PackageName::new("kv-store").unwrap(),
            version: format!("{k}"),
            blueprint_id: bp.id(),
            blueprint: bp,
            keep_data: true,
            on_config_change: ConfigChange::Reinit,
            init: vec![ResolvedInit { function: "set-greeting".into(), args: vec![json!("hi")], run: InitRun::OnChange, inputs: vec![] }],
            private: vec![],
            snapshot_before_replace: false,
            restore_data_from: None,
        };
        Desired {
            packages: vec![DesiredPackage {
                name: s.package.clone(),
                version: s.version.clone(),
                depends_on: vec![],
                migrates_from: None,
                services: vec![s],
                spells: vec![],
            }],
            ..Default::default()
        }
    };
    sysdeploy::failpoint::trace::enable();
    let (mut held, mut step) = (Vec::new(), Vec::new());
    for rep in 0..=reps {
        let mut d = desired(rep % 2);
        d.exports = deployer.prepare(&d, source.clone()).await.expect("prepare");
        let p = sysdeploy::deploy::plan(&d, &deployer.current().expect("current"), &host).expect("plan");
        let before = sysdeploy::failpoint::trace::events().len();
        let r = deployer.apply(&d, &p).await;
        assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
        if rep == 0 {
            for i in 0..keys {
                runtime
                    .call("kv-store", "put", json!([format!("key-{i}"), "a value of some forty bytes, like a record"]))
                    .await
                    .expect("put");
            }
            continue;
        }
        let events = sysdeploy::failpoint::trace::events();
        let us_held = events[before..]
            .iter()
            .find_map(|e| e.strip_prefix("held kv-store ").and_then(|v| v.strip_suffix("us")).and_then(|v| v.parse::<f64>().ok()))
            .expect("a replace holds calls");
        held.push(us_held);
        step.push(r.steps[0].duration_ms * 1000.0);
    }
    json!({ "reps": reps, "keys": keys, "calls_held": stats(held), "replace_step": stats(step) })
}
