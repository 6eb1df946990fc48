//! `cargo xtask bench`: builds the optimised binary and the `suite` bench,
//! then measures boot, scale, call path and memory, each figure next to a
//! baseline measured in the same run. Prints a table and writes
//! `target/bench/results.json` (plus a dated copy).
//!
//! Whole-process figures run the real `sysdeploy` binary on a state directory
//! under `target/bench/work`; where `/usr/bin/time` exists every process run
//! goes through it too, so CPU time and peak RSS come from a public tool.
//! Runs of a figure and its baseline are interleaved so drift on a shared
//! machine hits both alike.

use crate::bench_http as http;
#[path = "bench_plan.rs"]
mod bench_plan;
#[path = "bench_calls.rs"]
mod calls;
#[path = "bench_deploy.rs"]
mod deploy;
#[path = "bench_snapshot.rs"]
mod snapshot;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of one suite run.
struct Opts {
    /// Repetitions of each whole-process figure (medians over these).
    reps: usize,
    /// Largest N of the scale section.
    max_n: usize,
    /// Seconds of each HTTP load run.
    http_secs: u64,
    /// Concurrent keep-alive connections of the HTTP client.
    conns: usize,
    /// Sections to run (`--only a,b`); empty = all.
    only: Vec<String>,
}

/// The sections, in the order they run (`--only` names).
const SECTIONS: [&str; 7] = ["boot", "call-path", "calls", "scale", "plan", "deploy", "snapshot"];

/// One measured figure with its same-run baseline.
struct Row {
    section: &'static str,
    name: String,
    unit: &'static str,
    samples: Vec<f64>,
    baseline: Option<(String, f64)>,
    /// What `ratio` is checked against, as text for the table.
    target: String,
    /// Whether the target is met (`None`: informational).
    ok: Option<bool>,
    /// Lower is better (times) or higher is better (throughput).
    lower_is_better: bool,
}

impl Row {
    fn median(&self) -> f64 {
        median(&self.samples)
    }
    fn ratio(&self) -> Option<f64> {
        self.baseline.as_ref().map(|(_, b)| self.median() / b)
    }
    fn json(&self) -> Value {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        json!({
            "section": self.section, "name": self.name, "unit": self.unit,
            "median": self.median(), "min": s.first(), "max": s.last(), "samples": s,
            "baseline": self.baseline.as_ref().map(|(n, v)| json!({"name": n, "median": v})),
            "ratio": self.ratio(), "target": self.target, "ok": self.ok,
            "lower_is_better": self.lower_is_better,
        })
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

const USAGE: &str =
    "usage: cargo xtask bench [--reps N] [--max-n N] [--http-secs S] [--conns C] [--quick] [--only boot,call-path,calls,scale,plan,deploy,snapshot]";

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts { reps: 11, max_n: 10_000, http_secs: 5, conns: 8, only: Vec::new() };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> anyhow::Result<usize> {
            it.next().with_context(|| format!("{what} needs a number"))?.parse().with_context(|| format!("{what} needs a number"))
        };
        match a.as_str() {
            "--reps" => o.reps = num("--reps")?.max(1),
            "--max-n" => o.max_n = num("--max-n")?,
            "--http-secs" => o.http_secs = num("--http-secs")?.max(1) as u64,
            "--conns" => o.conns = num("--conns")?.max(1),
            "--only" => {
                let list = it.next().context("--only needs a list of sections")?;
                for name in list.split(',') {
                    if !SECTIONS.contains(&name) {
                        bail!("--only: unknown section {name:?}; the sections are {}\n{USAGE}", SECTIONS.join(", "));
                    }
                    o.only.push(name.to_string());
                }
            }
            "--quick" => {
                o.reps = 3;
                o.max_n = 1000;
                o.http_secs = 2;
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    Ok(o)
}

/// The built executables.
struct Bins {
    sysdeploy: PathBuf,
    suite: PathBuf,
}

fn build(repo: &Path) -> anyhow::Result<Bins> {
    // The `bench` profile is the release profile (optimised, same settings)
    // under the name `cargo bench` uses, so this shares its wasmtime build
    // with `cargo bench` instead of compiling wasmtime a second time.
    eprintln!("building optimised binaries (profile bench; the first build of wasmtime takes minutes)...");
    // The binary is uplifted to `<target>/release/sysdeploy`, which other
    // checkouts sharing CARGO_TARGET_DIR overwrite: touching main.rs forces a
    // relink (seconds), and the result is copied away at once.
    let main_rs = repo.join("src/main.rs");
    std::fs::File::options().append(true).open(&main_rs)?.set_modified(std::time::SystemTime::now())?;
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(repo)
        .args([
            "build",
            "--profile",
            "bench",
            "--package",
            "sysdeploy",
            "--bin",
            "sysdeploy",
            "--bench",
            "suite",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build --profile bench failed");
    }
    let (mut sysdeploy, mut suite) = (None, None);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) else { continue };
        match name {
            "sysdeploy" => sysdeploy = Some(PathBuf::from(exe)),
            "suite" => suite = Some(PathBuf::from(exe)),
            _ => {}
        }
    }
    let bin_dir = repo.join("target/bench/bin");
    std::fs::create_dir_all(&bin_dir)?;
    let copy = |exe: Option<PathBuf>, name: &str| -> anyhow::Result<PathBuf> {
        let exe = exe.with_context(|| format!("cargo did not report the {name} executable"))?;
        let dest = bin_dir.join(name);
        let _ = std::fs::remove_file(&dest);
        std::fs::copy(&exe, &dest).with_context(|| format!("copying {}", exe.display()))?;
        Ok(dest)
    };
    Ok(Bins { sysdeploy: copy(sysdeploy, "sysdeploy")?, suite: copy(suite, "suite")? })
}

/// One finished process run.
struct Run {
    wall_ms: f64,
    /// From `/usr/bin/time` when available.
    cpu_ms: Option<f64>,
    max_rss_kb: Option<f64>,
    stdout: String,
}

/// Runs a command to completion, timed; fails on a non-zero exit.
fn timed(cmd: &mut Command, scratch: &Path) -> anyhow::Result<Run> {
    let time_out = scratch.join("time.out");
    let use_time = Path::new("/usr/bin/time").exists();
    let mut full = if use_time {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-f").arg("%U %S %M").arg("-o").arg(&time_out).arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    } else {
        std::mem::replace(cmd, Command::new("true"))
    };
    let err_path = scratch.join("stderr.log");
    let t = Instant::now();
    let out = full.stdin(Stdio::null()).stderr(std::fs::File::create(&err_path)?).output().context("spawning")?;
    let wall_ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        bail!(
            "{:?} failed ({}):\n{}",
            full,
            out.status,
            err.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let (mut cpu_ms, mut max_rss_kb) = (None, None);
    if use_time {
        let t = std::fs::read_to_string(&time_out).unwrap_or_default();
        let f: Vec<f64> = t.lines().last().unwrap_or("").split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if f.len() == 3 {
            cpu_ms = Some((f[0] + f[1]) * 1e3);
            max_rss_kb = Some(f[2]);
        }
    }
    Ok(Run { wall_ms, cpu_ms, max_rss_kb, stdout: String::from_utf8_lossy(&out.stdout).into_owned() })
}

/// The suite: everything the report needs.
struct Suite {
    repo: PathBuf,
    bins: Bins,
    work: PathBuf,
    opts: Opts,
    rows: Vec<Row>,
    /// Everything else worth keeping (raw outputs, setup times).
    notes: serde_json::Map<String, Value>,
    next_port: u16,
}

impl Suite {
    fn node(&self, state: &Path, distros: Option<&Path>) -> Command {
        let mut c = Command::new(&self.bins.sysdeploy);
        c.arg("--state-dir").arg(state);
        if let Some(d) = distros {
            c.arg("--distros-dir").arg(d);
        }
        c.env("RUST_LOG", "info").env_remove("SYSDEPLOY_DISTROS_DIR").env_remove("SYSDEPLOY_CONFIG");
        c
    }

    fn suite(&self) -> Command {
        Command::new(&self.bins.suite)
    }

    fn port(&mut self) -> u16 {
        self.next_port += 1;
        self.next_port
    }

    fn row(&mut self, section: &'static str, name: impl Into<String>, unit: &'static str, samples: Vec<f64>) -> &mut Row {
        self.rows.push(Row {
            section,
            name: name.into(),
            unit,
            samples,
            baseline: None,
            target: String::new(),
            ok: None,
            lower_is_better: true,
        });
        self.rows.last_mut().expect("just pushed")
    }
}

impl Row {
    fn vs(&mut self, name: impl Into<String>, baseline: f64) -> &mut Self {
        self.baseline = Some((name.into(), baseline));
        self
    }
    /// Target on the ratio to the baseline: `ratio <= max`.
    fn ratio_at_most(&mut self, max: f64) -> &mut Self {
        self.target = format!("ratio <= {max}");
        self.ok = self.ratio().map(|r| r <= max);
        self
    }
    /// Target on the baseline / figure (a speed-up): `>= min`.
    fn speedup_at_least(&mut self, min: f64) -> &mut Self {
        self.target = format!("baseline/figure >= {min}x");
        self.ok = self.ratio().map(|r| 1.0 / r >= min);
        self
    }
    /// Target on the median itself.
    fn at_most(&mut self, max: f64) -> &mut Self {
        self.target = format!("<= {max} {}", self.unit);
        self.ok = Some(self.median() <= max);
        self
    }
    fn at_least(&mut self, min: f64) -> &mut Self {
        self.target = format!(">= {min} {}", self.unit);
        self.ok = Some(self.median() >= min);
        self.lower_is_better = false;
        self
    }
    fn higher_is_better(&mut self) -> &mut Self {
        self.lower_is_better = false;
        self
    }
}

pub fn run(repo: &Path, args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let bins = build(repo)?;
    let out_dir = repo.join("target/bench");
    let work = out_dir.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let mut s = Suite { repo: repo.to_path_buf(), bins, work, opts, rows: Vec::new(), notes: Default::default(), next_port: 17_300 };
    let started = Instant::now();
    let want = |name: &str| s.opts.only.is_empty() || s.opts.only.iter().any(|o| o == name);
    let (boot, path, call, sc, plan, dep, snap) =
        (want("boot"), want("call-path"), want("calls"), want("scale"), want("plan"), want("deploy"), want("snapshot"));
    if boot {
        boot_default(&mut s)?;
    }
    if path {
        call_path(&mut s)?;
    }
    if call {
        calls::run(&mut s)?;
    }
    if sc {
        scale(&mut s)?;
    }
    if plan {
        bench_plan::run(&mut s)?;
    }
    if dep {
        deploy::first_deploy(&mut s)?;
    }
    if snap {
        snapshot::run(&mut s)?;
    }
    s.notes.insert("suite_seconds".into(), json!(started.elapsed().as_secs_f64()));
    report(&s, &out_dir)
}

fn components(repo: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(repo.join("distros"))? {
        let d = d?.path();
        if !d.join("distro.toml").exists() {
            continue;
        }
        for f in std::fs::read_dir(&d)? {
            let f = f?.path();
            if f.extension().is_some_and(|e| e == "wasm") {
                out.push(f);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The `.cwasm` artifacts sysdeploy's runtime wrote into a state dir.
fn artifacts(state: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for key in std::fs::read_dir(state.join("cache"))? {
        for f in std::fs::read_dir(key?.path())? {
            let f = f?.path();
            if f.extension().is_some_and(|e| e == "cwasm") {
                out.push(f);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn json_of(run: &Run) -> anyhow::Result<Value> {
    serde_json::from_str(run.stdout.trim()).with_context(|| format!("suite printed no JSON: {:?}", run.stdout))
}

/// Sections 1, 2 and 5 (and the HTTP figure on the default distros).
fn boot_default(s: &mut Suite) -> anyhow::Result<()> {
    let reps = s.opts.reps;
    let wasm = components(&s.repo)?;
    eprintln!("[1/4] default distros ({} components): cold boot vs parallel compile, {reps} runs each", wasm.len());
    let scratch = s.work.clone();
    let (mut cold, mut compile, mut cold_cpu, mut compile_cpu) = (vec![], vec![], vec![], vec![]);
    let cold_reps = reps.min(5);
    for i in 0..cold_reps {
        let dir = s.work.join(format!("cold-{i}"));
        let r = timed(s.node(&dir, None).args(["run", "--once"]), &scratch)?;
        cold.push(r.wall_ms);
        cold_cpu.extend(r.cpu_ms);
        if i > 0 {
            std::fs::remove_dir_all(&dir)?;
        }
        let r = timed(s.suite().arg("compile").args(&wasm), &scratch)?;
        compile.push(r.wall_ms);
        compile_cpu.extend(r.cpu_ms);
    }
    let compile_med = median(&compile);
    s.row("cold", "cold first boot, run --once", "ms", cold)
        .vs("bare wasmtime: compile the same components in parallel (process)", compile_med)
        .ratio_at_most(1.2);
    s.row("cold", "baseline: bare parallel compile (process)", "ms", compile);
    if !cold_cpu.is_empty() {
        let b = median(&compile_cpu);
        s.row("cold", "cold first boot, CPU time (user+sys)", "ms", cold_cpu).vs("bare parallel compile CPU time", b);
    }

    let state = s.work.join("cold-0");
    let cwasm = artifacts(&state)?;
    if cwasm.len() != wasm.len() {
        bail!("{} holds {} artifacts, expected {}", state.display(), cwasm.len(), wasm.len());
    }
    eprintln!("[1/4] no-op boot vs floor vs compiling boot, {reps} runs each");
    let (mut noop, mut floor, mut floor_inproc, mut recompile, mut noop_rss, mut floor_rss) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        let r = timed(s.node(&state, None).args(["run", "--once"]), &scratch)?;
        noop.push(r.wall_ms);
        noop_rss.extend(r.max_rss_kb);
        let r = timed(s.suite().arg("floor").args(&cwasm), &scratch)?;
        floor.push(r.wall_ms);
        floor_rss.extend(r.max_rss_kb);
        floor_inproc.push(json_of(&r)?["in_process_us"].as_f64().unwrap_or(f64::NAN) / 1e3);
        for a in artifacts(&state)? {
            std::fs::remove_file(a)?;
        }
        let r = timed(s.node(&state, None).args(["run", "--once"]), &scratch)?;
        recompile.push(r.wall_ms);
    }
    let (floor_med, recompile_med) = (median(&floor), median(&recompile));
    s.row("no-op boot", "no-op boot, run --once (process)", "ms", noop.clone())
        .vs("floor: bare deserialize + instantiate (process)", floor_med)
        .ratio_at_most(1.5);
    s.row("no-op boot", "no-op boot vs a boot that compiles", "ms", noop)
        .vs("boot with the artifact cache emptied (process)", recompile_med)
        .speedup_at_least(20.0);
    s.row("no-op boot", "baseline: floor, bare deserialize + instantiate (process)", "ms", floor);
    s.row("no-op boot", "baseline: floor, in-process part only", "ms", floor_inproc);
    s.row("no-op boot", "baseline: boot that compiles (cache emptied)", "ms", recompile);

    eprintln!("[1/4] boot to /health 200 with `run`, idle RSS, HTTP on the default distros");
    let mut to_health = vec![];
    let mut rss_idle = vec![];
    for i in 0..reps.min(5) {
        let port = s.port();
        let node = Node::start(s, &state, None, port)?;
        to_health.push(node.ready_ms);
        if i == 0 {
            // Idle: deployed, spells scheduled, nothing called yet.
            std::thread::sleep(Duration::from_millis(1500));
            rss_idle.push(node.rss_kb()? / 1024.0);
            let token = std::fs::read_to_string(state.join("api.token"))?.trim().to_string();
            let call = http::load(
                port,
                &token,
                "/v1/services/aqua-ipfs/call/get-local-api-multiaddr",
                Some("[]"),
                s.opts.conns,
                Duration::from_secs(s.opts.http_secs),
            )?;
            let rss_after = node.rss_kb()? / 1024.0;
            s.notes.insert("http_default_distros".into(), call.json());
            s.row("http", "HTTP calls/s, aqua-ipfs get-local-api-multiaddr (reads a file in the guest)", "calls/s", vec![call.rate()])
                .higher_is_better();
            s.row("http", "  same, p50 latency", "ms", vec![call.pct(0.50)]);
            s.row("http", "  same, p99 latency", "ms", vec![call.pct(0.99)]);
            s.row("memory", "RSS after the HTTP load (instance live)", "MiB", vec![rss_after]);
        }
        node.stop()?;
    }
    s.row("no-op boot", "no-op boot to /health 200, `run` (process)", "ms", to_health)
        .vs("floor: bare deserialize + instantiate (process)", floor_med)
        .ratio_at_most(1.5);
    let floor_rss_mb = median(&floor_rss) / 1024.0;
    let r = s.row("memory", "idle node RSS, default distros (VmRSS)", "MiB", rss_idle);
    if floor_rss.is_empty() {
        r.at_most(60.0);
    } else {
        r.vs("peak RSS of the bare floor process (/usr/bin/time)", floor_rss_mb).at_most(60.0);
    }
    if !noop_rss.is_empty() {
        s.row("memory", "peak RSS of a no-op `run --once` (/usr/bin/time)", "MiB", noop_rss.iter().map(|k| k / 1024.0).collect())
            .vs("peak RSS of the bare floor process", floor_rss_mb);
    }
    Ok(())
}

/// Section 4: call path in process, then HTTP on a node with a trivial function.
fn call_path(s: &mut Suite) -> anyhow::Result<()> {
    eprintln!("[2/4] call path: JSON -> WIT -> guest -> JSON vs bare typed call");
    let scratch = s.work.clone();
    let mut json_us = vec![];
    let mut typed_us = vec![];
    for _ in 0..s.opts.reps.min(5) {
        let r = json_of(&timed(s.suite().args(["call", "20000"]), &scratch)?)?;
        json_us.push(r["json_call"]["median_us"].as_f64().unwrap_or(f64::NAN));
        typed_us.push(r["typed_call"]["median_us"].as_f64().unwrap_or(f64::NAN));
    }
    let typed_med = median(&typed_us);
    let overhead: Vec<f64> = json_us.iter().zip(&typed_us).map(|(j, t)| j - t).collect();
    s.row("call path", "Runtime::call echo-entry({key,value}), JSON in/out (median of 20k calls, per run)", "µs", json_us)
        .vs("bare typed call_async of the same function", typed_med);
    s.row("call path", "baseline: bare typed call", "µs", typed_us);
    s.row("call path", "overhead of the JSON path over the bare call", "µs", overhead).at_most(10.0);

    eprintln!("[2/4] HTTP calls of a trivial function (kv-store version) vs GET /health, keep-alive, {} connections", s.opts.conns);
    let state = s.work.join("http-kv");
    let distros = s.repo.join("tests/distros/v1");
    timed(s.node(&state, Some(&distros)).args(["run", "--once"]), &scratch)?;
    let port = s.port();
    let node = Node::start(s, &state, Some(&distros), port)?;
    let token = std::fs::read_to_string(state.join("api.token"))?.trim().to_string();
    let dur = Duration::from_secs(s.opts.http_secs);
    let health = http::load(port, &token, "/health", None, s.opts.conns, dur)?;
    let call = http::load(port, &token, "/v1/services/kv-store/call/version", Some("[]"), s.opts.conns, dur)?;
    node.stop()?;
    s.notes.insert("http_health".into(), health.json());
    s.notes.insert("http_trivial_call".into(), call.json());
    s.row("http", format!("HTTP calls/s, trivial function, {} keep-alive connections", s.opts.conns), "calls/s", vec![call.rate()])
        .vs("GET /health calls/s (HTTP stack, no guest)", health.rate())
        .at_least(5000.0);
    s.row("http", "  same, p50 latency", "ms", vec![call.pct(0.50)]).vs("GET /health p50", health.pct(0.50));
    s.row("http", "  same, p99 latency", "ms", vec![call.pct(0.99)]).vs("GET /health p99", health.pct(0.99)).at_most(5.0);
    Ok(())
}

/// Writes a distros folder with one package of `n` services sharing one
/// component (the kv-store test guest).
fn synth_distros(repo: &Path, dir: &Path, n: usize) -> anyhow::Result<()> {
    let pkg = dir.join("bench-scale");
    std::fs::create_dir_all(&pkg)?;
    std::fs::copy(repo.join("tests/distros/v1/kv-store/kv-store.wasm"), pkg.join("kv-store.wasm"))?;
    let mut m = String::from(
        "# Generated by `cargo xtask bench`: N services sharing one component.\n[package]\nname = \"bench-scale\"\nversion = \"0.1.0\"\n",
    );
    for i in 0..n {
        m.push_str(&format!("\n[[service]]\nalias = \"svc-{i:05}\"\ncomponents = [\"kv-store.wasm\"]\n"));
    }
    std::fs::write(pkg.join("distro.toml"), m)?;
    Ok(())
}

/// Section 3: plan and no-op boot with N synthetic services.
fn scale(s: &mut Suite) -> anyhow::Result<()> {
    let scratch = s.work.clone();
    let ns: Vec<usize> = [10, 100, 1000, 10_000].into_iter().filter(|n| *n <= s.opts.max_n).collect();
    let mut plan_med = std::collections::BTreeMap::new();
    let mut boot_med = std::collections::BTreeMap::new();
    for &n in &ns {
        let reps = if n >= 10_000 { s.opts.reps.min(3) } else { s.opts.reps.min(5) };
        eprintln!("[3/4] scale N={n}: first deploy, then plan and no-op boot ({reps} runs)");
        let distros = s.work.join(format!("scale-{n}-distros"));
        let state = s.work.join(format!("scale-{n}-state"));
        synth_distros(&s.repo, &distros, n)?;
        let first = timed(s.node(&state, Some(&distros)).args(["run", "--once"]), &scratch)?;
        s.notes.insert(format!("scale_{n}_first_deploy_ms"), json!(first.wall_ms));
        let r = s.row("scale", format!("N={n}: first deploy (creates N services), run --once"), "ms", vec![first.wall_ms]);
        if n == 10_000 {
            r.at_most(15_000.0);
        }

        let inproc = json_of(&timed(s.suite().arg("plan").arg(&distros).arg(&state).arg(if n >= 10_000 { "5" } else { "11" }), &scratch)?)?;
        let plan_us = inproc["plan"]["median_us"].as_f64().unwrap_or(f64::NAN);
        let resolve_us = inproc["resolve"]["median_us"].as_f64().unwrap_or(f64::NAN);
        s.notes.insert(format!("scale_{n}_plan_inproc"), inproc.clone());
        plan_med.insert(n, plan_us / 1e3);

        let (mut plan_cli, mut noop, mut health) = (vec![], vec![], vec![]);
        for _ in 0..reps {
            plan_cli.push(timed(s.node(&state, Some(&distros)).args(["plan", "--json"]), &scratch)?.wall_ms);
            noop.push(timed(s.node(&state, Some(&distros)).args(["run", "--once"]), &scratch)?.wall_ms);
            let port = s.port();
            let node = Node::start(s, &state, Some(&distros), port)?;
            health.push(node.ready_ms);
            node.stop()?;
        }
        let noop_med = median(&noop);
        boot_med.insert(n, noop_med);
        let r = s.row("scale", format!("N={n}: pure plan (deploy::plan, in process)"), "µs", vec![plan_us]);
        if n == 1000 {
            r.at_most(20_000.0);
        }
        s.row("scale", format!("N={n}: plan per service"), "µs", vec![plan_us / n as f64]);
        s.row("scale", format!("N={n}: resolve desired state (in process)"), "µs", vec![resolve_us]);
        s.row("scale", format!("N={n}: `sysdeploy plan` (process)"), "ms", plan_cli);
        s.row("scale", format!("N={n}: no-op boot, run --once (process)"), "ms", noop);
        let r = s.row("scale", format!("N={n}: no-op boot to /health 200 (process)"), "ms", health);
        if n == 1000 {
            r.at_most(1000.0);
        }
        if n == 10_000 {
            r.at_most(250.0);
        }
        s.row("scale", format!("N={n}: no-op boot per service"), "µs", vec![noop_med * 1e3 / n as f64]);
    }
    if let (Some(p1), Some(p10)) = (plan_med.get(&1000), plan_med.get(&10_000)) {
        s.row("scale", "plan t(10000)/t(1000)", "x", vec![p10 / p1]).at_most(10.5);
    }
    if let (Some(b1), Some(b10)) = (boot_med.get(&1000), boot_med.get(&10_000)) {
        s.row("scale", "no-op boot t(10000)/t(1000)", "x", vec![b10 / b1]).at_most(12.0);
    }
    Ok(())
}

/// A `sysdeploy run` process.
struct Node {
    child: Child,
    /// Spawn to first `/health` 200.
    ready_ms: f64,
}

impl Node {
    fn start(s: &Suite, state: &Path, distros: Option<&Path>, port: u16) -> anyhow::Result<Node> {
        let err = std::fs::File::create(s.work.join(format!("node-{port}.log")))?;
        let t = Instant::now();
        let mut child = s
            .node(state, distros)
            .args(["--api-listen", &format!("127.0.0.1:{port}"), "run"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .context("starting sysdeploy run")?;
        loop {
            if let Ok(200) = http::status(port, "/health") {
                break;
            }
            if let Some(st) = child.try_wait()? {
                bail!("sysdeploy run exited early ({st}); see {}", s.work.join(format!("node-{port}.log")).display());
            }
            if t.elapsed() > Duration::from_secs(300) {
                let _ = child.kill();
                bail!("sysdeploy run did not answer /health 200 within 300 s");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(Node { child, ready_ms: t.elapsed().as_secs_f64() * 1e3 })
    }

    /// Resident set of the node now, in KiB (`VmRSS` in /proc/<pid>/status).
    fn rss_kb(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
        Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
    }

    /// SIGTERM, then wait (SIGKILL after 20 s).
    fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let t = Instant::now();
        while self.child.try_wait()?.is_none() {
            if t.elapsed() > Duration::from_secs(20) {
                self.child.kill()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child.wait()?;
        Ok(())
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string()))
        .unwrap_or_default();
    let cmd = |c: &str, a: &[&str]| {
        Command::new(c).args(a).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
    };
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "mem_kib": mem,
        "kernel": cmd("uname", &["-sr"]),
        "date_utc": cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "rustc": cmd("rustc", &["--version"]),
        "git": cmd("git", &["rev-parse", "--short", "HEAD"]),
    })
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn report(s: &Suite, out_dir: &Path) -> anyhow::Result<()> {
    let m = machine();
    println!();
    println!(
        "sysdeploy benchmarks: {} | {} cores | {} | {} | git {}",
        m["date_utc"].as_str().unwrap_or(""),
        m["cores"],
        m["cpu"].as_str().unwrap_or(""),
        m["kernel"].as_str().unwrap_or(""),
        m["git"].as_str().unwrap_or("")
    );
    println!("medians over runs (n = runs); ratio = figure / baseline, both measured in this run");
    println!();
    println!("| figure | unit | median | min | max | n | baseline (median) | ratio | target | ok |");
    println!("|---|---|---:|---:|---:|---:|---|---:|---|---|");
    for r in &s.rows {
        let mut v = r.samples.clone();
        v.sort_by(f64::total_cmp);
        let base = r.baseline.as_ref().map(|(n, b)| format!("{n}: {}", fmt(*b))).unwrap_or_default();
        let ratio = r.ratio().map(|x| format!("{x:.2}")).unwrap_or_default();
        let ok = match r.ok {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        println!(
            "| [{}] {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.section,
            r.name,
            r.unit,
            fmt(r.median()),
            fmt(*v.first().unwrap_or(&f64::NAN)),
            fmt(*v.last().unwrap_or(&f64::NAN)),
            v.len(),
            base,
            ratio,
            r.target,
            ok
        );
    }
    let doc = json!({
        "machine": m,
        "options": { "reps": s.opts.reps, "max_n": s.opts.max_n, "http_secs": s.opts.http_secs, "conns": s.opts.conns, "only": s.opts.only },
        "rows": s.rows.iter().map(Row::json).collect::<Vec<_>>(),
        "notes": s.notes,
    });
    std::fs::create_dir_all(out_dir)?;
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(out_dir.join("results.json"), &text)?;
    let stamp = m["date_utc"].as_str().unwrap_or("undated").replace([' ', ':'], "-");
    std::fs::write(out_dir.join(format!("results-{stamp}.json")), &text)?;
    println!();
    println!("wrote {}", out_dir.join("results.json").display());
    Ok(())
}
