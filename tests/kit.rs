//! The package developer kit (issue 16): a package written by the scaffold
//! (`cargo xtask new-package`, included here from xtask) is built, passes
//! `sysdeploy package check` and its own generated test deploys it with the
//! real binary; the Python package of `tests/distros/python/` deploys from
//! `--distros-dir` and round-trips records, lists, options, variants and
//! results through the API; `package check` reports every problem of a
//! broken package at once.

#[allow(dead_code)]
#[path = "../xtask/src/lock.rs"]
mod lock;

#[allow(dead_code)]
#[path = "../xtask/src/new_package.rs"]
mod new_package;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sysdeploy");

/// Upper bound for what should happen "soon" (an 18 MB Python component is
/// compiled on a shared, busy machine). Reaching it is a failure.
const PATIENCE: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `sysdeploy` with the given args, env without SYSDEPLOY_* overrides.
fn sysdeploy(args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SYSDEPLOY_") {
            c.env_remove(k);
        }
    }
    c.args(args).env_remove("RUST_LOG").stdin(Stdio::null()).output().unwrap()
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// Whether the wasm32-wasip2 standard library is installed.
fn wasm_target_installed() -> bool {
    let out = Command::new("rustc").args(["--print", "target-libdir", "--target", "wasm32-wasip2"]).output();
    matches!(out, Ok(o) if o.status.success() && Path::new(text(&o.stdout).trim()).is_dir())
}

/// A `sysdeploy run` on a free port; killed on drop.
struct Node {
    child: Child,
    state: tempfile::TempDir,
}

impl Node {
    fn start(distros: &Path) -> Node {
        let state = tempfile::tempdir().unwrap();
        let child = Command::new(BIN)
            .arg("--state-dir")
            .arg(state.path())
            .arg("--distros-dir")
            .arg(distros)
            .args(["--api-listen", "127.0.0.1:0", "run"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut n = Node { child, state };
        let start = Instant::now();
        while !n.cli(&["health"]).status.success() {
            if let Some(s) = n.child.try_wait().unwrap() {
                panic!("sysdeploy run exited ({s}) before it was ready");
            }
            assert!(start.elapsed() < PATIENCE, "the node was not ready within {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        n
    }
    fn cli(&self, args: &[&str]) -> Output {
        let state = self.state.path().to_str().unwrap();
        let mut all = vec!["--state-dir", state];
        all.extend_from_slice(args);
        sysdeploy(&all)
    }
    /// `sysdeploy call`: the JSON answer.
    fn call(&self, alias: &str, function: &str, args: Value) -> Value {
        let o = self.cli(&["call", alias, function, &args.to_string()]);
        assert!(o.status.success(), "call {alias} {function} {args} failed: {}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------- scaffold

#[test]
fn scaffolded_package_builds_checks_and_its_own_test_deploys_it() {
    if !wasm_target_installed() {
        eprintln!(
            "SKIPPED scaffolded_package_builds_checks_and_its_own_test_deploys_it: the wasm32-wasip2 target is missing \
             (`rustup target add wasm32-wasip2`; .ci/run installs it)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_package::scaffold(&repo(), "kit-demo", "rust", tmp.path()).unwrap();
    // A second scaffold over it is refused, and nothing is touched.
    let again = new_package::scaffold(&repo(), "kit-demo", "rust", tmp.path()).unwrap_err();
    assert!(again.contains("already exists"), "{again}");
    assert!(new_package::scaffold(&repo(), "Kit_Demo", "rust", tmp.path()).unwrap_err().contains("kebab-case"));
    // One target dir across runs keeps CI's rebuilds incremental.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kit-guest");
    new_package::build_standalone(&dir, Some(&target)).unwrap();

    let o = sysdeploy(&["package", "check", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "package check: {}{}", text(&o.stdout), text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("package kit-demo 0.1.0") && out.contains("greet: func(name: string) -> string"), "{out}");
    assert!(out.contains("spell kit-demo-spell") && out.contains("built by rustc"), "{out}");

    // The package's own test, as `cargo test` runs it: deploys with the real
    // node, calls the service with the configured greeting, sees the spell's call.
    let o = Command::new(env!("CARGO"))
        .args(["test", "--manifest-path"])
        .arg(dir.join("guest/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .args(["--", "--nocapture"])
        .env("SYSDEPLOY_BIN", BIN)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "the scaffold's cargo test failed:\n{out}\n{err}");
    assert!(out.contains("deploys_and_answers ... ok") && !err.contains("SKIPPED"), "the deploying test did not run:\n{out}\n{err}");
    assert!(out.contains("test tests::greets_by_name ... ok"), "{out}");
}

// --------------------------------------------------------- python package

#[test]
fn python_package_round_trips_records_lists_options_variants_and_results() {
    let distros = repo().join("tests/distros/python");
    let n = Node::start(&distros);
    // The init call handed the config default to the Python service.
    assert_eq!(n.call("py-records", "greeting", json!([])), json!("hello from python"));
    // Record with kebab-case keys; an omitted option field is none; a 64-bit
    // integer passed as a decimal string keeps its precision.
    let item = json!({"item-name": "a", "count": 2, "tags": ["x"], "big": "9007199254740993"});
    assert_eq!(
        n.call("py-records", "echo-item", json!([item])),
        json!({"item-name": "a", "count": 4, "tags": ["x", "seen"], "note": null, "big": 9007199254740993u64})
    );
    // list<record> in, option<record> out.
    let b = json!({"item-name": "b", "count": 1, "tags": [], "note": "n", "big": -5});
    assert_eq!(
        n.call("py-records", "find", json!([[item, b], "b"])),
        json!({"item-name": "b", "count": 1, "tags": [], "note": "n", "big": -5})
    );
    assert_eq!(n.call("py-records", "find", json!([[], "z"])), Value::Null);
    // Variants: {"case": payload}, or "case" without payload.
    assert_eq!(n.call("py-records", "grow", json!([{"circle": 1.5}])), json!({"circle": 3.0}));
    assert_eq!(n.call("py-records", "grow", json!(["empty"])), json!({"square": 1}));
    // Results: {"ok": v} / {"err": e}.
    assert_eq!(n.call("py-records", "checked-div", json!(["7", 2])), json!({"ok": 3}));
    assert_eq!(n.call("py-records", "checked-div", json!([1, 0])), json!({"err": "division by zero"}));
    // A type mismatch is refused before the guest runs, naming the parameter.
    let o = n.cli(&["call", "py-records", "echo-item", r#"[{"item-name": 1}]"#]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("item-name"), "{}", text(&o.stderr));
}

// ---------------------------------------------------------- package check

/// A copy of the v1 kv-store package (component, manifest) to break.
fn kv_copy(tmp: &Path) -> PathBuf {
    let dir = tmp.join("pkgs/broken");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(repo().join("tests/distros/v1/kv-store/kv-store.wasm"), dir.join("kv-store.wasm")).unwrap();
    dir
}

fn check_json(dir: &Path) -> (Option<i32>, Value) {
    let o = sysdeploy(&["package", "check", "--json", dir.to_str().unwrap()]);
    (o.status.code(), serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not json ({e}): {}", text(&o.stdout))))
}

#[test]
fn package_check_reports_every_manifest_problem_with_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = kv_copy(tmp.path());
    std::fs::write(
        dir.join("distro.toml"),
        r#"[package]
name = "broken"
version = "1.0"

[[service]]
alias = "kv"
components = ["kv-store.wasm"]

[[service.init]]
function = "set-greeting"
args = ["${config.nope}"]

[[spell]]
alias = "tick"
script = "missing.rhai"
trigger = { clock = { start = "now", period_sec = 10 } }
"#,
    )
    .unwrap();
    let (code, r) = check_json(&dir);
    assert_eq!(code, Some(2), "{r:#}");
    let problems = r["problems"].as_array().unwrap();
    let all = serde_json::to_string_pretty(problems).unwrap();
    assert_eq!(problems.len(), 3, "{all}");
    assert!(problems.iter().all(|p| p["file"] == "pkgs/broken/distro.toml"), "{all}");
    let has = |at: &str, msg: &str| {
        problems.iter().any(|p| p["at"].as_str().unwrap().contains(at) && p["message"].as_str().unwrap().contains(msg))
    };
    assert!(has("package.version", "MAJOR.MINOR.PATCH"), "{all}");
    assert!(has("service[0].init[0].args[0]", "unknown config key nope"), "{all}");
    assert!(has("spell[0].script", "missing.rhai does not exist"), "{all}");
    // A TOML schema error names its line.
    std::fs::write(dir.join("distro.toml"), "[package]\nname = \"broken\"\nversion = \"1.0.0\"\nsurprise = 1\n").unwrap();
    let (code, r) = check_json(&dir);
    assert_eq!(code, Some(2), "{r:#}");
    assert_eq!(r["problems"][0]["at"], "line 4:1", "{r:#}");
}

#[test]
fn package_check_reports_init_spell_and_provenance_problems_together() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = kv_copy(tmp.path());
    std::fs::write(
        dir.join("distro.toml"),
        r#"[package]
name = "broken"
version = "1.0.0"

[config.greeting]
type = "string"
default = "hi"

[[service]]
alias = "kv"
components = ["kv-store.wasm"]

[[service.init]]
function = "set-greting"
args = ["${config.greeting}"]

[[service.init]]
function = "put"
args = [1, "${config.greeting}"]

[[spell]]
alias = "tick"
script = "tick.rhai"
trigger = { clock = { start = "now", period_sec = 10 } }
"#,
    )
    .unwrap();
    std::fs::write(dir.join("tick.rhai"), "let x = call_service(\"kv\", \"get\", [\"k\"];\n").unwrap();
    let (code, r) = check_json(&dir);
    assert_eq!(code, Some(2), "{r:#}");
    let problems = r["problems"].as_array().unwrap();
    let all = serde_json::to_string_pretty(problems).unwrap();
    let has = |at: &str, msg: &str| {
        problems.iter().any(|p| p["at"].as_str().unwrap().contains(at) && p["message"].as_str().unwrap().contains(msg))
    };
    assert!(has("service[0].init[0]", "set-greting is not exported"), "{all}");
    assert!(has("service[0].init[1]", "parameter key: expected string"), "{all}");
    assert!(has("spell[0]", "does not compile"), "{all}");
    assert!(
        problems.iter().any(|p| p["file"] == "pkgs/broken/kv-store.wasm" && p["message"].as_str().unwrap().contains("no provenance")),
        "{all}"
    );

    // A lock that records other bytes: the artifact is not the one built.
    std::fs::write(
        dir.join("artifacts.lock"),
        format!("kv-store.wasm artifact={} sources={} toolchain=\"rustc 1\" command=\"cargo build\"\n", "0".repeat(64), "0".repeat(64)),
    )
    .unwrap();
    let (_, r) = check_json(&dir);
    let all = serde_json::to_string_pretty(&r["problems"]).unwrap();
    assert!(all.contains("the artifact is not the one that was built"), "{all}");

    // Fixed, it is good: exit 0 and a summary.
    std::fs::write(dir.join("tick.rhai"), "let x = call_service(\"kv\", \"get\", [\"k\"]);\n").unwrap();
    let text = std::fs::read_to_string(dir.join("distro.toml"))
        .unwrap()
        .replace("set-greting", "set-greeting")
        .replace("args = [1, ", "args = [\"k\", ");
    std::fs::write(dir.join("distro.toml"), text).unwrap();
    let bytes = std::fs::read(dir.join("kv-store.wasm")).unwrap();
    let entry = lock::Entry {
        artifact: "kv-store.wasm".into(),
        artifact_blake3: blake3::hash(&bytes).to_hex().to_string(),
        sources_blake3: lock::hash_sources(&dir, &["tick.rhai".to_string()]).unwrap(),
        toolchain: "rustc 1.95.0".into(),
        command: "cargo build".into(),
        inputs: vec!["tick.rhai".into()],
    };
    std::fs::write(dir.join("artifacts.lock"), lock::render_entry(&entry)).unwrap();
    let (code, r) = check_json(&dir);
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["summary"]["services"][0]["alias"], "kv");
    // An edited source no longer matches what the lock says was built from.
    std::fs::write(dir.join("tick.rhai"), "let y = 1;\n").unwrap();
    let (code, r) = check_json(&dir);
    assert_eq!(code, Some(2));
    assert!(r["problems"].to_string().contains("its sources changed"), "{r:#}");
}

// ----------------------------------------------------------------- lock

#[test]
fn lock_records_every_component_with_toolchain_and_command() {
    let text = std::fs::read_to_string(repo().join(lock::LOCK_PATH)).unwrap();
    let entries = lock::parse(&text).unwrap();
    let py =
        entries.iter().find(|e| e.artifact == "tests/distros/python/py-records/py-records.wasm").expect("the Python package is locked");
    assert!(py.toolchain.starts_with("componentize-py "), "{py:?}");
    assert!(py.command.starts_with("componentize-py ") && py.command.contains("-o tests/distros/python/py-records/py-records.wasm"));
    assert!(entries.iter().all(|e| !e.toolchain.is_empty() && !e.command.is_empty()), "{entries:#?}");
    // A component no guest builds is a problem of the check.
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for d in ["distros", "wit", "tests/distros"] {
        copy_dir(&repo().join(d), &t.join(d));
    }
    std::fs::create_dir_all(t.join("tests/distros/stray/p")).unwrap();
    std::fs::write(t.join("tests/distros/stray/p/x.wasm"), b"\0asm\x0d\0\x01\0").unwrap();
    let problems = lock::check(t).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].starts_with("tests/distros/stray/p/x.wasm: a component with no provenance"), "{}", problems[0]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() == "target" {
            continue;
        }
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}
