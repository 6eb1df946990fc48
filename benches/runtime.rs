//! Runtime benchmark (`cargo bench --bench runtime`; not run by `cargo test`).
//!
//! Reports medians and ratios measured in one run, on the distros' real
//! components and the test fixtures:
//! 1. cold vs cached: compiling every component vs what a restart costs
//!    (`Runtime::open` on a warm state dir + first call into each service:
//!    verify + deserialize + link + instantiate + call), next to the floor of
//!    bare wasmtime doing deserialize_file + instantiate of the same artifacts;
//! 2. call overhead: `Runtime::call` (JSON → typed values → guest → JSON) vs
//!    a bare typed wasmtime call of the same function;
//! 3. runaway guest: how long after its TTL an endless loop is stopped.

mod bare;
#[path = "../tests/fixtures/mod.rs"]
mod fixtures;

use bare::{bare_engine, bare_linker, bare_store};

use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use sysdeploy::ids::{ComponentHash, ServiceId};
use sysdeploy::runtime::{Blueprint, BlueprintComponent, RuntimeOptions};
use wasmtime::component::Component;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

/// Components to measure: the distros' artifacts (real Rust components)
/// plus the echo fixture.
fn components() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("distros");
    if let Ok(dirs) = std::fs::read_dir(&root) {
        for d in dirs.flatten() {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                let p = f.path();
                if p.extension().is_some_and(|e| e == "wasm") {
                    out.push((p.file_stem().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()));
                }
            }
        }
    }
    out.push(("echo".into(), fixtures::component("echo")));
    out.sort();
    out
}

/// A function each component can be called with, to make instantiation and
/// first call comparable.
fn probe(name: &str) -> Option<(&'static str, serde_json::Value)> {
    match name {
        "echo" => Some(("add", json!([1, 2]))),
        "registry" => Some(("count", json!([]))),
        "connector" => Some(("pending", json!([]))),
        "aqua-ipfs" => Some(("get-local-api-multiaddr", json!([]))),
        "trust-graph" => Some(("get-weight", json!(["p"]))),
        _ => None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let comps = components();
    let total_kb: usize = comps.iter().map(|(_, b)| b.len()).sum::<usize>() / 1024;
    println!("runtime benchmark: {} components, {total_kb} KiB of wasm; medians", comps.len());

    // 1. Compile vs cached.
    let engine = bare_engine();
    let mut compile = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for (_, b) in &comps {
            Component::new(&engine, b).unwrap();
        }
        compile.push(t.elapsed());
    }
    let compile = median(compile);

    let state = tempfile::tempdir().unwrap();
    let opts = RuntimeOptions { host_peer: Some(fixtures::host()), ..RuntimeOptions::default() };
    let mut services: Vec<(ServiceId, &'static str, serde_json::Value)> = Vec::new();
    let mut hashes: Vec<ComponentHash> = Vec::new();
    {
        let rt = fixtures::open(state.path(), opts.clone());
        for (name, bytes) in &comps {
            let hash = rt.add_component(bytes, None).unwrap();
            hashes.push(hash);
            let bp =
                rt.put_blueprint(&Blueprint::new(vec![BlueprintComponent { name: name.clone(), hash, memory_limit_mb: None }])).unwrap();
            let id = rt.create_service(&bp, &fixtures::host()).await.unwrap();
            if let Some((f, args)) = probe(name) {
                services.push((id, f, args));
            }
        }
    }
    let (mut cached, mut store_open, mut rt_open) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..9 {
        let t = Instant::now();
        let store = sysdeploy::store::Store::open(&state.path().join("state.db")).unwrap();
        store_open.push(t.elapsed());
        let rt = sysdeploy::runtime::Runtime::open_with(store, fixtures::config(state.path()), opts.clone()).unwrap();
        rt_open.push(t.elapsed());
        for (id, f, args) in &services {
            rt.call(id.as_str(), f, args.clone()).await.unwrap();
        }
        cached.push(t.elapsed());
        assert_eq!(rt.cache_stats().misses, 0, "a restart must not compile");
        drop(rt);
    }
    let (cached, store_open, rt_open) = (median(cached), median(store_open), median(rt_open));

    // The floor does the same: deserialize each artifact, instantiate it and
    // make the same first call (arguments converted beforehand).
    type Probe = Option<(String, Vec<wasmtime::component::Val>, usize)>;
    let (artifacts, bare_probes): (Vec<PathBuf>, Vec<Probe>) = {
        let rt = fixtures::open(state.path(), opts.clone());
        let dir = rt.artifact_dir();
        let artifacts: Vec<PathBuf> = hashes.iter().map(|h| dir.join(format!("{}.cwasm", h.to_hex()))).collect();
        let probes = comps
            .iter()
            .map(|(name, _)| {
                let (f, args) = probe(name)?;
                let (id, ..) = services.iter().find(|(_, pf, pa)| *pf == f && *pa == args)?;
                let sig = rt.service_exports(id.as_str())?.ok()?.into_iter().find(|s| s.name == f)?;
                let vals = sysdeploy::runtime::wit::json_args_to_vals(&sig.params, &args).ok()?;
                Some((f.to_string(), vals, sig.results.len()))
            })
            .collect();
        (artifacts, probes)
    };
    let bare_data = tempfile::tempdir().unwrap();
    let mut floor = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        let engine = bare_engine();
        let linker = bare_linker(&engine);
        for (p, probe) in artifacts.iter().zip(&bare_probes) {
            // SAFETY: artifacts written by the runtime above with this
            // wasmtime version and an identical engine configuration.
            let c = unsafe { Component::deserialize_file(&engine, p) }.unwrap();
            let pre = linker.instantiate_pre(&c).unwrap();
            let mut store = bare_store(&engine, Some(bare_data.path()));
            let inst = pre.instantiate_async(&mut store).await.unwrap();
            if let Some((f, vals, n)) = probe {
                let func = inst.get_func(&mut store, f.as_str()).unwrap();
                let mut results = vec![wasmtime::component::Val::Bool(false); *n];
                func.call_async(&mut store, vals, &mut results).await.unwrap();
            }
        }
        floor.push(t.elapsed());
    }
    let floor = median(floor);
    println!();
    println!("cold vs cached ({} components)", comps.len());
    println!("  compile all (parallel compilation)         {}", ms(compile));
    println!("  bare floor: deserialize, inst., first call {}", ms(floor));
    println!("  sysdeploy restart: open + first call each   {}", ms(cached));
    println!("    of which SQLite store open                {}", ms(store_open));
    println!("    of which runtime open (engine, linker)    {}", ms(rt_open.saturating_sub(store_open)));
    let artifact_bytes: u64 = artifacts.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    println!("    artifacts verified (blake3)               {} KiB", artifact_bytes / 1024);
    println!("  ratio restart / bare floor                  {:.2}x", cached.as_secs_f64() / floor.as_secs_f64());
    println!("  speed-up restart vs compile                 {:.1}x", compile.as_secs_f64() / cached.as_secs_f64());

    // 2. JSON call path vs bare typed call.
    let rt = fixtures::open(state.path(), opts.clone());
    let echo = services.iter().find(|(_, f, _)| *f == "add").map(|(id, ..)| id.clone()).unwrap();
    let n = 20_000;
    let mut json_add = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let t = Instant::now();
        let r = rt.call(echo.as_str(), "add", json!([i, 1])).await.unwrap();
        json_add.push(t.elapsed());
        debug_assert_eq!(r, json!(i + 1));
    }
    let record = json!({
        "flag": true, "s8": -1, "u8": 2, "s16": -3, "u16": 4, "s32": -5, "u32": 6, "s64": -7, "u64": 8,
        "f32": 0.5, "f64": 2.25, "letter": "λ", "name": "sysdeploy", "tags": ["a", "bc"], "maybe": 9,
        "outcome": {"ok": 1}, "done": {"ok": null}, "pair": [10, "ten"], "at": {"x": 1, "y": 2},
        "shape": {"circle": 1.25}, "color": "green", "perms": ["write"]
    });
    let mut json_record = Vec::with_capacity(n);
    for _ in 0..n {
        let args = json!([record.clone()]);
        let t = Instant::now();
        rt.call(echo.as_str(), "echo-everything", args).await.unwrap();
        json_record.push(t.elapsed());
    }
    let (json_add, json_record) = (median(json_add), median(json_record));

    let engine = bare_engine();
    let linker = bare_linker(&engine);
    let c = Component::new(&engine, fixtures::component("echo")).unwrap();
    let mut store = bare_store(&engine, Some(bare_data.path()));
    let inst = linker.instantiate_pre(&c).unwrap().instantiate_async(&mut store).await.unwrap();
    let add = inst.get_typed_func::<(u32, u32), (u32,)>(&mut store, "add").unwrap();
    let mut bare_add = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let t = Instant::now();
        let (r,) = add.call_async(&mut store, (i, 1)).await.unwrap();
        bare_add.push(t.elapsed());
        debug_assert_eq!(r, i + 1);
    }
    let bare_add = median(bare_add);
    // The same record through a bare dynamic call with prebuilt values: the
    // floor for `echo-everything`, so the difference is the JSON conversion.
    let func = inst.get_func(&mut store, "echo-everything").unwrap();
    let sig = rt.service_exports(echo.as_str()).unwrap().unwrap().into_iter().find(|f| f.name == "echo-everything").unwrap();
    let vals = sysdeploy::runtime::wit::json_args_to_vals(&sig.params, &json!([record.clone()])).unwrap();
    let mut bare_record = Vec::with_capacity(n);
    for _ in 0..n {
        let params = vals.clone();
        let mut results = [wasmtime::component::Val::Bool(false)];
        let t = Instant::now();
        func.call_async(&mut store, &params, &mut results).await.unwrap();
        bare_record.push(t.elapsed());
    }
    let bare_record = median(bare_record);
    println!();
    println!("call overhead ({n} calls each)");
    println!("  bare typed call add(u32, u32)               {}", us(bare_add));
    println!("  Runtime::call add, JSON in/out              {}", us(json_add));
    println!("  overhead of the JSON path                   {}", us(json_add.saturating_sub(bare_add)));
    println!("  bare dynamic call echo-everything (Vals)    {}", us(bare_record));
    println!("  Runtime::call echo-everything (22 fields)   {}", us(json_record));
    println!("  overhead of the JSON path, record           {}", us(json_record.saturating_sub(bare_record)));
    println!("  ratio JSON add / bare add                   {:.1}x", json_add.as_secs_f64() / bare_add.as_secs_f64());

    // 3. Runaway guest.
    let rt = fixtures::open(state.path(), opts);
    let misbehave = rt.add_component(&fixtures::component("misbehave"), None).unwrap();
    let bp = rt
        .put_blueprint(&Blueprint::new(vec![BlueprintComponent { name: "misbehave".into(), hash: misbehave, memory_limit_mb: None }]))
        .unwrap();
    let spin = rt.create_service(&bp, &fixtures::host()).await.unwrap();
    let ttl = Duration::from_millis(50);
    let tick = fixtures::config(state.path()).epoch_tick;
    let mut stop = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        let r = rt.call_with_ttl(spin.as_str(), "spin", json!([]), ttl).await;
        stop.push(t.elapsed());
        assert!(r.is_err());
    }
    let stop = median(stop);
    println!();
    println!("runaway guest (TTL {} ms, tick {} ms, incl. re-instantiation)", ttl.as_millis(), tick.as_millis());
    println!("  stopped after                               {}", ms(stop));
    println!("  target TTL + 2 ticks                        {}", ms(ttl + tick * 2));
}
