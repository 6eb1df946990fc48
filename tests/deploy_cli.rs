//! The deployer through the real binary (`sysdeploy run --once`, `plan`)
//! with test packages from `tests/distros/` assembled into a temp
//! `--distros-dir`; state inspected with the library on the same state dir.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use sysdeploy::ids::{Alias, PeerId};
use sysdeploy::runtime::{AliasTarget, Runtime, RuntimeConfig};
use sysdeploy::store::Store;

const BIN: &str = env!("CARGO_BIN_EXE_sysdeploy");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distros")
}

/// One package built on the kv-store test component.
struct Pkg<'a> {
    name: &'a str,
    alias: &'a str,
    /// `v1`, `v2` or `fail-init`: which build of the component.
    build: &'a str,
    on_change: &'a str,
    /// Extra TOML appended (a spell, another config key, ...).
    extra: &'a str,
    greeting_type: &'a str,
    greeting_default: &'a str,
}

impl<'a> Pkg<'a> {
    fn new(name: &'a str, alias: &'a str) -> Self {
        Pkg { name, alias, build: "v1", on_change: "reinit", extra: "", greeting_type: "string", greeting_default: "\"hello\"" }
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    distros: PathBuf,
    config: PathBuf,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let distros = tmp.path().join("distros");
        let config = tmp.path().join("node.toml");
        std::fs::write(&config, "").unwrap();
        Env { _tmp: tmp, state, distros, config }
    }

    /// Rewrites the distros folder with exactly these packages.
    fn distros(&self, pkgs: &[Pkg]) {
        let _ = std::fs::remove_dir_all(&self.distros);
        for p in pkgs {
            let dir = self.distros.join(p.name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(fixtures().join(p.build).join("kv-store/kv-store.wasm"), dir.join("kv-store.wasm")).unwrap();
            let toml = format!(
                r#"[package]
name = "{name}"
version = "0.1.0"

[config.greeting]
type = "{gt}"
default = {gd}
doc = "greeting handed to the service at init"

[[service]]
alias = "{alias}"
components = ["kv-store.wasm"]
keep_data = true
on_config_change = "{on_change}"

[[service.init]]
function = "set-greeting"
args = ["${{config.greeting}}"]
{extra}
"#,
                name = p.name,
                alias = p.alias,
                on_change = p.on_change,
                extra = p.extra,
                gt = p.greeting_type,
                gd = p.greeting_default,
            );
            std::fs::write(dir.join("distro.toml"), toml).unwrap();
            if p.extra.contains("tick.rhai") {
                std::fs::write(dir.join("tick.rhai"), "let n = kv_get(\"count\"); if n == () { n = 0; } kv_set(\"count\", n + 1);")
                    .unwrap();
            }
        }
    }

    fn config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--distros-dir")
            .arg(&self.distros)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("RUST_LOG")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    fn boot(&self) -> Output {
        self.cmd(&["run", "--once"])
    }

    fn plan(&self) -> Value {
        let out = self.cmd(&["plan", "--json"]);
        assert!(out.status.success(), "plan failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The library's view of the (stopped) node's state dir.
    fn runtime(&self) -> Runtime {
        let store = Store::open(&self.state.join("state.db")).unwrap();
        Runtime::open(store, RuntimeConfig::new(&self.state)).unwrap()
    }

    /// Every row of every table but the deployment reports (`deployments`
    /// and its `sqlite_sequence` row), plus every file under `components/`,
    /// `cache/` and `services/` and the key files, to compare across boots.
    fn snapshot(&self) -> Vec<String> {
        let conn = rusqlite_conn(&self.state.join("state.db"));
        let mut tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'deployments' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert!(tables.len() >= 13, "the store's tables: {tables:?}");
        let mut out = Vec::new();
        for t in tables.drain(..) {
            let filter = if t == "sqlite_sequence" { " WHERE name != 'deployments'" } else { "" };
            let mut stmt = conn.prepare(&format!("SELECT * FROM {t}{filter}")).unwrap();
            let n = stmt.column_count();
            let mut rows: Vec<String> = stmt
                .query_map([], |r| {
                    let mut s = format!("{t}:");
                    for i in 0..n {
                        let v: rusqlite::types::Value = r.get(i)?;
                        s.push_str(&format!("{v:?}|"));
                    }
                    Ok(s)
                })
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            rows.sort();
            out.extend(rows);
        }
        out.extend(
            state_files(&self.state)
                .into_iter()
                .filter(|(k, _)| ["components/", "cache/", "services/", "node.key", "api.token"].iter().any(|p| k.starts_with(p)))
                .map(|(k, v)| format!("file {k}: {v}")),
        );
        out
    }
}

/// Every file and directory under the state dir (relative path → blake3 of
/// the bytes, `dir` for directories), the lock file's content (the pid of
/// its last holder) left out: WAL and shared-memory files included, so a
/// write that only reached `state.db-wal` still shows.
fn state_files(root: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for p in walk_all(root) {
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let v = if p.is_dir() {
            "dir".to_string()
        } else if rel == "lock" {
            "(pid of the last holder)".to_string()
        } else {
            blake3::hash(&std::fs::read(&p).unwrap()).to_hex().to_string()
        };
        out.insert(rel, v);
    }
    out
}

fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_all(&p));
        }
        out.push(p);
    }
    out
}

fn rusqlite_conn(p: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

fn ok(out: &Output) {
    assert!(out.status.success(), "exit {:?}\nstderr:\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
}

fn service_id(rt: &Runtime, alias: &str) -> String {
    match rt.alias(&Alias::new(alias).unwrap()).unwrap_or_else(|| panic!("{alias} not bound")).target {
        AliasTarget::Service(id) => id.to_string(),
        t => panic!("{t:?}"),
    }
}

fn actions(plan: &Value) -> Vec<(String, String)> {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["alias"].as_str().unwrap().to_string(), s["action"].as_str().unwrap().to_string()))
        .collect()
}

async fn call(rt: &Runtime, alias: &str, f: &str, args: Value) -> Value {
    rt.call(alias, f, args).await.unwrap_or_else(|e| panic!("{alias}.{f}: {e}"))
}

const SPELL: &str = r#"
[[spell]]
alias = "ticker"
script = "tick.rhai"
trigger = { clock = { start = "now", period_sec = 3600 } }
"#;

#[tokio::test]
async fn fresh_boot_installs_and_second_boot_changes_nothing() {
    let env = Env::new();
    env.distros(&[Pkg::new("kv-a", "kv-a"), Pkg { extra: SPELL, ..Pkg::new("kv-b", "kv-b") }]);
    assert_eq!(actions(&env.plan()).len(), 3, "plan before the first boot");
    assert!(!env.state.join("state.db").exists(), "plan wrote nothing");
    ok(&env.boot());
    {
        let rt = env.runtime();
        assert_eq!(call(&rt, "kv-a", "greeting", json!([])).await, json!("hello"));
        call(&rt, "kv-b", "put", json!(["k", "v"])).await;
    }
    let plan = env.plan();
    assert_eq!(plan["no_changes"], json!(true), "{plan}");
    let text = env.cmd(&["plan"]);
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("no changes"), "{}", String::from_utf8_lossy(&text.stdout));
    let before = env.snapshot();
    ok(&env.boot());
    let after = env.snapshot();
    let gone: Vec<&String> = before.iter().filter(|r| !after.contains(r)).collect();
    let new: Vec<&String> = after.iter().filter(|r| !before.contains(r)).collect();
    assert!(
        gone.is_empty() && new.is_empty(),
        "a no-op boot writes nothing but its deployment report:\nbefore: {gone:#?}\nafter: {new:#?}"
    );
    let rt = env.runtime();
    assert_eq!(call(&rt, "kv-b", "get", json!(["k"])).await, json!("v"), "service data survives restarts");
}

#[tokio::test]
async fn disabling_a_package_removes_its_services_and_spells_only() {
    let env = Env::new();
    env.distros(&[Pkg::new("kv-a", "kv-a"), Pkg { extra: SPELL, ..Pkg::new("kv-b", "kv-b") }]);
    ok(&env.boot());
    let a_id = service_id(&env.runtime(), "kv-a");
    env.config("[system_services]\nenable = [\"kv-a\"]\n");
    let plan = env.plan();
    let acts = actions(&plan);
    assert!(acts.contains(&("kv-b".into(), "remove".into())) && acts.contains(&("ticker".into(), "remove-spell".into())), "{plan}");
    ok(&env.boot());
    let rt = env.runtime();
    assert!(rt.alias(&Alias::new("kv-b").unwrap()).is_none());
    assert!(rt.alias(&Alias::new("ticker").unwrap()).is_none());
    assert_eq!(service_id(&rt, "kv-a"), a_id, "the other package keeps its service id");
    assert_eq!(rt.list_services().len(), 1);
    let spells: i64 = rusqlite_conn(&env.state.join("state.db")).query_row("SELECT count(*) FROM spells", [], |r| r.get(0)).unwrap();
    assert_eq!(spells, 0);
}

#[tokio::test]
async fn config_change_reinits_in_place_or_replaces_with_data_carried_over() {
    let env = Env::new();
    env.distros(&[Pkg::new("kv-a", "kv-a"), Pkg { on_change: "replace", ..Pkg::new("kv-b", "kv-b") }]);
    ok(&env.boot());
    let (a_id, b_id) = {
        let rt = env.runtime();
        call(&rt, "kv-b", "put", json!(["kept", "yes"])).await;
        (service_id(&rt, "kv-a"), service_id(&rt, "kv-b"))
    };
    env.config("[system_services.kv_a]\ngreeting = \"bonjour\"\n\n[system_services.kv_b]\ngreeting = \"hola\"\n");
    let plan = env.plan();
    let steps = plan["steps"].as_array().unwrap();
    let a = steps.iter().find(|s| s["alias"] == "kv-a").unwrap();
    assert_eq!(a["action"], "reinit", "{plan}");
    let reason = a["reason"].as_str().unwrap();
    assert!(reason.contains("system_services.kv_a.greeting") && reason.contains("node.toml:2"), "{reason}");
    assert_eq!(steps.iter().find(|s| s["alias"] == "kv-b").unwrap()["action"], "replace", "{plan}");
    ok(&env.boot());
    let rt = env.runtime();
    assert_eq!(service_id(&rt, "kv-a"), a_id, "reinit keeps the id");
    assert_eq!(call(&rt, "kv-a", "greeting", json!([])).await, json!("bonjour"));
    assert_ne!(service_id(&rt, "kv-b"), b_id, "replace makes a new service");
    assert_eq!(call(&rt, "kv-b", "greeting", json!([])).await, json!("hola"));
    assert_eq!(call(&rt, "kv-b", "get", json!(["kept"])).await, json!("yes"), "data carried over");
    assert_eq!(rt.list_services().len(), 2);
}

#[tokio::test]
async fn component_change_replaces_and_keeps_data() {
    let env = Env::new();
    env.distros(&[Pkg::new("kv-a", "kv-a")]);
    ok(&env.boot());
    let old = {
        let rt = env.runtime();
        call(&rt, "kv-a", "put", json!(["k", "before"])).await;
        assert_eq!(call(&rt, "kv-a", "version", json!([])).await, json!(1));
        service_id(&rt, "kv-a")
    };
    env.distros(&[Pkg { build: "v2", ..Pkg::new("kv-a", "kv-a") }]);
    let plan = env.plan();
    assert_eq!(actions(&plan), vec![("kv-a".to_string(), "replace".to_string())]);
    assert!(plan["steps"][0]["reason"].as_str().unwrap().contains("component kv-store changed"), "{plan}");
    ok(&env.boot());
    let rt = env.runtime();
    assert_ne!(service_id(&rt, "kv-a"), old);
    assert_eq!(call(&rt, "kv-a", "version", json!([])).await, json!(2));
    assert_eq!(call(&rt, "kv-a", "get", json!(["k"])).await, json!("before"));
    assert!(!env.state.join("services").join(&old).exists(), "old data dir removed");
}

#[tokio::test]
async fn failing_new_version_leaves_old_bound_exit_1_or_degraded() {
    for (policy, code, outcome) in [("stop", 1, "failed"), ("continue", 0, "degraded")] {
        let env = Env::new();
        env.distros(&[Pkg::new("kv-a", "kv-a"), Pkg::new("kv-b", "kv-b")]);
        ok(&env.boot());
        let old = {
            let rt = env.runtime();
            call(&rt, "kv-a", "put", json!(["k", "v1"])).await;
            service_id(&rt, "kv-a")
        };
        env.distros(&[Pkg { build: "fail-init", ..Pkg::new("kv-a", "kv-a") }, Pkg::new("kv-b", "kv-b")]);
        env.config(&format!("[system_services]\non_failure = \"{policy}\"\n"));
        let out = env.boot();
        assert_eq!(out.status.code(), Some(code), "{policy}: {}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("package kv-a") && err.contains("alias kv-a") && err.contains("step replace") && err.contains("set-greeting"),
            "{err}"
        );
        let rt = env.runtime();
        assert_eq!(service_id(&rt, "kv-a"), old, "{policy}: the old service stays bound");
        assert_eq!(call(&rt, "kv-a", "get", json!(["k"])).await, json!("v1"));
        assert_eq!(call(&rt, "kv-a", "version", json!([])).await, json!(1));
        assert_eq!(rt.list_services().len(), 2, "no half-made service left");
        let status = env.cmd(&["status", "--json"]);
        let report: Value = rusqlite_conn(&env.state.join("state.db"))
            .query_row("SELECT report FROM deployments ORDER BY id DESC LIMIT 1", [], |r| r.get::<_, String>(0))
            .map(|s| serde_json::from_str(&s).unwrap())
            .unwrap();
        assert_eq!(report["outcome"], outcome, "{}", String::from_utf8_lossy(&status.stdout));
    }
}

#[tokio::test]
async fn alias_held_by_another_owner_is_a_conflict_and_left_alone() {
    let env = Env::new();
    env.distros(&[Pkg::new("kv-a", "kv-a"), Pkg::new("kv-b", "kv-b")]);
    // First boot with only kv-b enabled, then someone else takes "kv-a".
    env.config("[system_services]\nenable = [\"kv-b\"]\non_failure = \"continue\"\n");
    ok(&env.boot());
    let stranger = PeerId::from_ed25519_public(&[7; 32]);
    let theirs = {
        let rt = env.runtime();
        let b = rt.resolve("kv-b").unwrap().blueprint_id;
        let id = rt.create_service(&b, &stranger).await.unwrap();
        rt.bind_alias(&Alias::new("kv-a").unwrap(), AliasTarget::Service(id.clone()), &stranger).unwrap();
        rt.call(id.as_str(), "set-greeting", json!(["theirs"])).await.unwrap();
        id.to_string()
    };
    env.config("[system_services]\non_failure = \"continue\"\n");
    let plan = env.plan();
    let step = plan["steps"].as_array().unwrap().iter().find(|s| s["alias"] == "kv-a").unwrap().clone();
    assert_eq!(step["action"], "conflict", "{plan}");
    assert!(step["reason"].as_str().unwrap().contains(stranger.as_str()));
    let out = env.boot();
    assert!(String::from_utf8_lossy(&out.stderr).contains(stranger.as_str()));
    let rt = env.runtime();
    assert_eq!(service_id(&rt, "kv-a"), theirs);
    assert_eq!(call(&rt, "kv-a", "greeting", json!([])).await, json!("theirs"), "their service was not touched");
}

#[tokio::test]
async fn plan_rejects_an_init_argument_of_the_wrong_type_and_changes_nothing() {
    let env = Env::new();
    env.distros(&[Pkg::new("kv-a", "kv-a")]);
    ok(&env.boot());
    let before = state_files(&env.state);
    // The package now declares greeting as an integer (set-greeting takes a
    // string) and ships a new build: nothing of it may be stored.
    env.distros(&[Pkg { greeting_type: "integer", greeting_default: "5", build: "v2", ..Pkg::new("kv-a", "kv-a") }]);
    env.config("# the operator's file\n[system_services.kv_a]\ngreeting = 42\n");
    for args in [&["plan"][..], &["run", "--once"][..]] {
        let out = env.cmd(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for needle in
            ["package kv-a", "set-greeting", "parameter greeting", "expected string", "42", "system_services.kv_a.greeting", "node.toml:3"]
        {
            assert!(err.contains(needle), "{args:?}: missing {needle:?} in:\n{err}");
        }
    }
    assert_eq!(state_files(&env.state), before, "store, components, artifacts and data dirs unchanged");
}

#[tokio::test]
async fn a_component_that_does_not_compile_is_invalid_input() {
    let env = Env::new();
    env.distros(&[Pkg::new("kv-a", "kv-a")]);
    ok(&env.boot());
    let before = state_files(&env.state);
    std::fs::write(env.distros.join("kv-a/kv-store.wasm"), b"\0asm\x0d\0\x01\0 not really a component").unwrap();
    let out = env.boot();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("package kv-a") && err.contains("component kv-store") && err.contains("not a valid WebAssembly component"),
        "{err}"
    );
    assert_eq!(state_files(&env.state), before, "the state dir is unchanged");
    assert_eq!(service_id(&env.runtime(), "kv-a").len(), 32, "the deployed service is still there");
}
