//! Issue 14: `plan` reads export signatures without compiling, and compiled
//! artifacts survive a failed deployment.
//!
//! - Exports decoded from a component's bytes (`runtime::decode`) equal the
//!   exports of the compiled component, for every committed component (and a
//!   synthetic one with every WIT type kind).
//! - `sysdeploy plan` on a node whose component changed never compiles: the
//!   binary runs with `FAILPOINTS=runtime::compile=return`, which makes any
//!   compile fail, and still plans; bad init arguments and unlinkable
//!   components are still exit 2 with the same message.
//! - A deployment whose init call fails keeps the component's artifact; the
//!   retry loads it (same inode, same mtime) and compiles nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use sysdeploy::ids::ComponentHash;
use sysdeploy::runtime::decode::{decode, Item};
use sysdeploy::runtime::{Blueprint, BlueprintComponent, Runtime, RuntimeConfig};
use sysdeploy::store::Store;

const BIN: &str = env!("CARGO_BIN_EXE_sysdeploy");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every committed `.wasm` component (symlinks followed, duplicates by hash
/// once), with the WAT fixtures that are components.
fn committed_components() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![repo().join("distros"), repo().join("tests/distros")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("target") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "wasm") {
                let bytes = std::fs::read(&p).unwrap();
                if seen.insert(ComponentHash::of(&bytes)) {
                    out.insert(p.strip_prefix(repo()).unwrap().display().to_string(), bytes);
                }
            }
        }
    }
    for e in std::fs::read_dir(repo().join("tests/fixtures")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "wat") {
            let bytes = wat::parse_file(&p).unwrap();
            // A component's layer field is 1 (bytes 6..8 of the preamble).
            if bytes.get(6..8) == Some(&[1, 0]) && seen.insert(ComponentHash::of(&bytes)) {
                out.insert(p.strip_prefix(repo()).unwrap().display().to_string(), bytes);
            }
        }
    }
    out
}

/// A component whose exports use every WIT type kind the runtime maps,
/// nested in records, lists, options, results and an exported interface.
fn every_type() -> Vec<u8> {
    wat::parse_str(
        r#"(component
  (core module $m
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 8)
    (func (export "p3") (param i32 i32 i32) unreachable)
    (func (export "p3r") (param i32 i32 i32) (result i32) unreachable)
    (func (export "v") (param i32 i64 i32) unreachable)
    (func (export "scalars") (param i32 i32 i32 i32 i32 i32 i64 i64 f32 f64 i32) (result i32) unreachable)
    (func (export "i") (param i32) (result i32) unreachable)
    (func (export "n") unreachable)
    (func (export "p2") (param i32 i32) unreachable)
  )
  (core instance $i (instantiate $m))
  (alias core export $i "memory" (core memory $mem))
  (alias core export $i "realloc" (core func $realloc))
  (type $point' (record (field "x" s32) (field "label" string)))
  (export $point "point" (type $point'))
  (type $shape' (variant (case "none") (case "big" u64) (case "named" string)))
  (export $shape "shape" (type $shape'))
  (type $color' (enum "red" "green"))
  (export $color "color" (type $color'))
  (type $perm' (flags "read" "write"))
  (export $perm "perm" (type $perm'))
  (type $res' (resource (rep i32)))
  (export $res "res" (type $res'))
  (type $nested (list (option (tuple u8 $color))))
  (type $out (result $point (error $shape)))
  (func $rec (param "p" $point) (result $out) (canon lift (core func $i "p3r") (memory $mem) (realloc $realloc)))
  (func $var (param "s" $shape) (canon lift (core func $i "v") (memory $mem) (realloc $realloc)))
  (func $list (param "l" $nested) (canon lift (core func $i "p2") (memory $mem) (realloc $realloc)))
  (func $scalars
    (param "a" bool) (param "b" s8) (param "c" u8) (param "d" s16) (param "e" u16) (param "f" u32)
    (param "g" s64) (param "h" u64) (param "i" f32) (param "j" f64) (param "k" char)
    (result $perm)
    (canon lift (core func $i "scalars")))
  (func $own (param "r" (borrow $res)) (result (own $res)) (canon lift (core func $i "i")))
  (func $none (canon lift (core func $i "n")))
  (export "rec" (func $rec))
  (export "var" (func $var))
  (export "scalars" (func $scalars))
  (export "own" (func $own))
  (instance $api (export "list" (func $list)) (export "none" (func $none)))
  (export "test:all/api@0.1.0" (instance $api))
)"#,
    )
    .unwrap()
}

/// The facade exports of `bytes` as the runtime lists them after compiling.
fn compiled(rt: &Runtime, bytes: &[u8]) -> Vec<sysdeploy::runtime::FunctionSig> {
    let hash = rt.add_component(bytes, None).unwrap();
    let id = rt.put_blueprint(&Blueprint::new(vec![BlueprintComponent { name: "c".into(), hash, memory_limit_mb: None }])).unwrap();
    rt.blueprint_exports(&id).unwrap()
}

/// Import and export names (and items) wasmtime reports for the compiled
/// component, against the decoded ones.
fn check_names(what: &str, engine: &wasmtime::Engine, bytes: &[u8]) {
    use wasmtime::component::types::ComponentItem;
    let c = wasmtime::component::Component::new(engine, bytes).unwrap();
    let d = decode(bytes).unwrap();
    let ty = c.component_type();
    let kind = |i: &ComponentItem| match i {
        ComponentItem::ComponentFunc(_) => "func",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Resource(_) => "resource",
        ComponentItem::Type(_) => "type",
        _ => "other",
    };
    let dkind = |i: &Item| match i {
        Item::Func => "func",
        Item::Instance(_) => "instance",
        Item::Resource => "resource",
        Item::Type => "type",
        Item::Other(_) => "other",
    };
    let want: Vec<(String, &str)> = ty.imports(engine).map(|(n, i)| (n.to_string(), kind(&i.ty))).collect();
    let got: Vec<(String, &str)> = d.imports.iter().map(|(n, i)| (n.clone(), dkind(i))).collect();
    assert_eq!(got, want, "{what}: imports");
    let want: Vec<(String, &str)> = ty.exports(engine).map(|(n, i)| (n.to_string(), kind(&i.ty))).collect();
    let got: Vec<(String, &str)> = d.exports.iter().map(|(n, i)| (n.clone(), dkind(i))).collect();
    assert_eq!(got, want, "{what}: exports");
    // Items of imported instances: what the blueprint link check matches.
    for (name, item) in ty.imports(engine) {
        if let ComponentItem::ComponentInstance(inst) = item.ty {
            let want: Vec<(String, &str)> = inst.exports(engine).map(|(n, i)| (n.to_string(), kind(&i.ty))).collect();
            let Some((_, Item::Instance(items))) = d.imports.iter().find(|(n, _)| n == name) else { panic!("{what}: {name}") };
            let got: Vec<(String, &str)> = items.iter().map(|(n, i)| (n.clone(), dkind(i))).collect();
            assert_eq!(got, want, "{what}: items of import {name}");
        }
    }
}

#[test]
fn decoded_exports_equal_the_compiled_exports_of_every_committed_component() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let rt = Runtime::open(store, RuntimeConfig::new(dir.path())).unwrap();
    let engine = wasmtime::Engine::new(wasmtime::Config::new().wasm_component_model(true)).unwrap();
    let mut components = committed_components();
    components.insert("synthetic: every WIT type".into(), every_type());
    let mut checked = 0;
    for (what, bytes) in &components {
        let Ok(d) = decode(bytes) else {
            // Not a component (empty placeholders of manifest test cases):
            // wasmtime refuses it too.
            assert!(wasmtime::component::Component::new(&engine, bytes).is_err(), "{what}: decode refused a component wasmtime accepts");
            continue;
        };
        assert_eq!(d.functions, compiled(&rt, bytes), "{what}: decoded exports differ from the compiled component's");
        check_names(what, &engine, bytes);
        checked += 1;
    }
    // The 4 distros, the kv-store builds, hostile guests, fixtures, synthetic.
    assert!(checked >= 12, "only {checked} components checked: {:?}", components.keys().collect::<Vec<_>>());
    let every = decode(&every_type()).unwrap();
    let names: Vec<&str> = every.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["rec", "var", "scalars", "own", "test:all/api@0.1.0#list", "test:all/api@0.1.0#none"]);
}

#[test]
fn a_core_module_or_garbage_is_refused_with_a_clear_message() {
    let e = decode(&wat::parse_str("(module)").unwrap()).unwrap_err().to_string();
    assert!(e.contains("core WebAssembly module, not a component"), "{e}");
    let e = decode(b"\0asm\x0d\0\x01\0\x07\xff").unwrap_err().to_string();
    assert!(e.contains("not a valid WebAssembly component"), "{e}");
    let e = decode(b"").unwrap_err().to_string();
    assert!(e.contains("not a valid WebAssembly component"), "{e}");
}

/// A temp state dir, distros dir and config file, driven through the binary.
struct Env {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    distros: PathBuf,
    config: PathBuf,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (state, distros, config) = (tmp.path().join("state"), tmp.path().join("distros"), tmp.path().join("node.toml"));
        std::fs::write(&config, "").unwrap();
        Env { _tmp: tmp, state, distros, config }
    }

    /// One package `pkg` with service `svc` on `component`, one init call.
    fn package(&self, component: &[u8], config: &str, init: &str) {
        let _ = std::fs::remove_dir_all(&self.distros);
        let dir = self.distros.join("pkg");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("svc.wasm"), component).unwrap();
        let toml = format!(
            "[package]\nname = \"pkg\"\nversion = \"0.1.0\"\n{config}\n[[service]]\nalias = \"svc\"\ncomponents = [\"svc.wasm\"]\n{init}\n"
        );
        std::fs::write(dir.join("distro.toml"), toml).unwrap();
    }

    fn cmd(&self, args: &[&str], no_compile: bool) -> Output {
        let mut c = Command::new(BIN);
        c.arg("--state-dir").arg(&self.state).arg("--distros-dir").arg(&self.distros).arg("--config").arg(&self.config).args(args);
        c.env("RUST_LOG", "info").env_remove("SYSDEPLOY_CONFIG").env_remove("SYSDEPLOY_DISTROS_DIR");
        if no_compile {
            c.env("FAILPOINTS", "runtime::compile=return");
        } else {
            c.env_remove("FAILPOINTS");
        }
        c.output().unwrap()
    }

    /// The artifacts in the cache, each with (inode, mtime in ns).
    fn artifacts(&self) -> BTreeMap<String, (u64, i128)> {
        let mut out = BTreeMap::new();
        for key in std::fs::read_dir(self.state.join("cache")).unwrap() {
            for f in std::fs::read_dir(key.unwrap().path()).unwrap() {
                let p = f.unwrap().path();
                let m = std::fs::metadata(&p).unwrap();
                out.insert(
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    (m.ino(), m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128),
                );
            }
        }
        out
    }
}

fn text(o: &Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn kv_store(build: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/distros").join(build).join("kv-store/kv-store.wasm")).unwrap()
}

const GREETING: &str = "[config.greeting]\ntype = \"string\"\ndefault = \"hello\"\ndoc = \"greeting\"\n";
const SET_GREETING: &str = "[[service.init]]\nfunction = \"set-greeting\"\nargs = [\"${config.greeting}\"]\n";

#[cfg(feature = "failpoints")]
#[test]
fn plan_with_a_changed_component_compiles_nothing_and_still_type_checks() {
    let env = Env::new();
    env.package(&kv_store("v1"), GREETING, SET_GREETING);
    let out = env.cmd(&["run", "--once"], false);
    assert!(out.status.success(), "{}", text(&out));

    // The component changed: `run` would have to compile it, and with
    // compiling refused it cannot (the failpoint works) ...
    env.package(&kv_store("v2"), GREETING, SET_GREETING);
    let before = env.artifacts();
    let out = env.cmd(&["run", "--once"], true);
    assert!(!out.status.success() && text(&out).contains("refused by failpoint runtime::compile"), "{}", text(&out));
    // ... but `plan` reads the new exports without compiling.
    let out = env.cmd(&["plan", "--json"], true);
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps: Vec<(&str, &str)> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] != "keep")
        .map(|s| (s["alias"].as_str().unwrap(), s["action"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("svc", "replace")], "{plan:#}");
    assert_eq!(env.artifacts(), before, "plan wrote no artifact");

    // A bad init argument is still found by `plan`, exit 2, with the message `run` gives.
    env.package(&kv_store("v2"), "[config.greeting]\ntype = \"integer\"\ndefault = 42\ndoc = \"greeting\"\n", SET_GREETING);
    let plan = env.cmd(&["plan"], true);
    let run = env.cmd(&["run", "--once"], true);
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    let msg = |o: &Output| {
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| l.contains("parameter greeting"))
            .map(|l| l.trim().to_string())
            .collect::<Vec<_>>()
    };
    assert!(!msg(&plan).is_empty() && msg(&plan).iter().all(|l| l.contains("expected string")), "{}", text(&plan));
    assert_eq!(msg(&plan), msg(&run), "plan and run report the same error");
    assert_eq!(env.artifacts(), before);
}

/// A component importing `wasi:http`, which the host does not provide.
fn wants_http() -> Vec<u8> {
    wat::parse_str(
        r#"(component
            (import "wasi:http/outgoing-handler@0.2.0" (instance $h (export "ping" (func))))
            (core module $m (func (export "get") (result i32) (i32.const 1)))
            (core instance $i (instantiate $m))
            (func (export "get-value") (result u32) (canon lift (core func $i "get"))))"#,
    )
    .unwrap()
}

#[cfg(feature = "failpoints")]
#[test]
fn plan_refuses_an_unlinkable_component_without_compiling_it() {
    let env = Env::new();
    env.package(&wants_http(), "", "");
    let plan = env.cmd(&["plan"], true);
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
    let err = String::from_utf8_lossy(&plan.stderr).to_string();
    for needle in ["package pkg", "svc", "wasi:http/outgoing-handler@0.2.0", "neither an earlier component nor the host provides"] {
        assert!(err.contains(needle), "{needle:?} missing: {err}");
    }
    assert!(!err.contains("failpoint"), "{err}");
    // `run` refuses it the same way, before anything is stored.
    let run = env.cmd(&["run", "--once"], false);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(String::from_utf8_lossy(&run.stderr).contains("wasi:http/outgoing-handler@0.2.0"), "{}", text(&run));
}

#[test]
fn a_two_component_blueprint_links_from_decoded_types() {
    // lib exports an interface, the facade imports it: forwarded, not host.
    let lib = wat::parse_str(
        r#"(component
            (core module $m (func (export "f") (result i32) (i32.const 7)))
            (core instance $i (instantiate $m))
            (func $f (result u32) (canon lift (core func $i "f")))
            (instance $api (export "get" (func $f)))
            (export "test:lib/api" (instance $api)))"#,
    )
    .unwrap();
    let facade = |fname: &str| {
        wat::parse_str(format!(
            r#"(component
            (import "test:lib/api" (instance $api (export "{fname}" (func (result u32)))))
            (alias export $api "{fname}" (func $get))
            (core func $g (canon lower (func $get)))
            (core module $m (import "x" "g" (func (result i32))) (func (export "f") (result i32) (call 0)))
            (core instance $i (instantiate $m (with "x" (instance (export "g" (func $g))))))
            (func (export "value") (result u32) (canon lift (core func $i "f"))))"#
        ))
        .unwrap()
    };
    let ok = facade("get");
    let bad = facade("missing");
    let bytes: BTreeMap<ComponentHash, Vec<u8>> = [&lib, &ok, &bad].into_iter().map(|b| (ComponentHash::of(b), b.clone())).collect();
    let lookup = |h: &ComponentHash| bytes.get(h).map(|b| std::borrow::Cow::Borrowed(b.as_slice()));
    let bp = |facade: &[u8]| {
        Blueprint::new(vec![
            BlueprintComponent { name: "lib".into(), hash: ComponentHash::of(&lib), memory_limit_mb: None },
            BlueprintComponent { name: "facade".into(), hash: ComponentHash::of(facade), memory_limit_mb: None },
        ])
    };
    sysdeploy::runtime::check_links_offline(&bp(&ok), &lookup).unwrap();
    let e = sysdeploy::runtime::check_links_offline(&bp(&bad), &lookup).unwrap_err().to_string();
    assert!(e.contains("test:lib/api#missing") && e.contains("component lib exports test:lib/api without it"), "{e}");
    // Alone, the facade's import goes to the host, which lacks it.
    let alone = Blueprint::new(vec![BlueprintComponent { name: "facade".into(), hash: ComponentHash::of(&ok), memory_limit_mb: None }]);
    let e = sysdeploy::runtime::check_links_offline(&alone, &lookup).unwrap_err().to_string();
    assert!(e.contains("imports test:lib/api, which neither an earlier component nor the host provides"), "{e}");
    // The same verdicts from a runtime, which links the compiled components.
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::open(Store::open(&dir.path().join("state.db")).unwrap(), RuntimeConfig::new(dir.path())).unwrap();
    rt.check_links(&bp(&ok), &lookup).unwrap();
    assert!(rt.check_links(&bp(&bad), &lookup).unwrap_err().to_string().contains("test:lib/api#missing"));
}

fn checked_wasm() -> Vec<u8> {
    wat::parse_file(repo().join("tests/fixtures/checked.wat")).unwrap()
}

const VALUE: &str = "[config.value]\ntype = \"string\"\ndefault = \"!rejected\"\ndoc = \"value\"\n";
const SET_VALUE: &str = "[[service.init]]\nfunction = \"set-value\"\nargs = [\"${config.value}\"]\n";

#[cfg(feature = "failpoints")]
#[test]
fn a_retry_after_a_failed_init_loads_the_artifact_instead_of_compiling() {
    let env = Env::new();
    env.package(&checked_wasm(), VALUE, SET_VALUE);
    // The install compiles, then its init answers `err`: the deployment fails.
    let out = env.cmd(&["run", "--once"], false);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("compiled component"), "{}", text(&out));
    let kept = env.artifacts();
    let hash = ComponentHash::of(&checked_wasm()).to_hex();
    assert!(kept.contains_key(&format!("{hash}.cwasm")), "the artifact survives the failed deployment: {kept:?}");

    // A retry (same config: fails again at init) compiles nothing.
    let out = env.cmd(&["run", "--once"], true);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("set-value") && !t.contains("failpoint") && !t.contains("compiled component"), "{t}");
    assert_eq!(env.artifacts(), kept, "same artifact file (inode, mtime)");

    // The operator fixes the value: the retry installs, still without compiling.
    std::fs::write(&env.config, "[system_services.pkg]\nvalue = \"fine\"\n").unwrap();
    let out = env.cmd(&["run", "--once"], true);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env.artifacts(), kept);

    // Once nothing wants the component any more, GC removes it.
    env.package(&kv_store("v1"), GREETING, SET_GREETING);
    // Only the newest generation is kept for rollback (issue 17).
    std::fs::write(&env.config, "[system_services]\nkeep_generations = 1\n").unwrap();
    let out = env.cmd(&["run", "--once"], false);
    assert!(out.status.success(), "{}", text(&out));
    let after = env.artifacts();
    assert!(!after.contains_key(&format!("{hash}.cwasm")), "{after:?}");
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(!Path::new(&env.state.join("components").join(format!("{hash}.wasm"))).exists());
}
