//! Black-box tests of the component runtime with real components (WAT
//! fixtures), a real SQLite store and a real state directory.

mod fixtures;

use fixtures::{host, stranger, Harness};
use serde_json::{json, Value};
use std::time::Duration;
use sysdeploy::ids::{Alias, ServiceId};
use sysdeploy::runtime::{check_args, AliasTarget, ArgError, Blueprint, CallError, RuntimeError, RuntimeOptions, WitType};

fn alias(s: &str) -> Alias {
    Alias::new(s).unwrap()
}

async fn service(h: &Harness, parts: &[(&str, Option<u64>)]) -> ServiceId {
    let bp = h.blueprint(parts);
    h.rt.create_service(&bp, &host()).await.unwrap()
}

async fn call(h: &Harness, target: &ServiceId, f: &str, args: Value) -> Result<Value, CallError> {
    h.rt.call(target.as_str(), f, args).await
}

#[tokio::test]
async fn echo_round_trips_every_wit_type() {
    let h = Harness::new();
    let s = service(&h, &[("echo", None)]).await;
    let cases = [
        ("echo-bool", json!(true)),
        ("echo-s8", json!(-128)),
        ("echo-u8", json!(255)),
        ("echo-s16", json!(-32768)),
        ("echo-u16", json!(65535)),
        ("echo-s32", json!(-2147483648i64)),
        ("echo-u32", json!(4294967295u64)),
        ("echo-s64", json!(i64::MIN)),
        ("echo-u64", json!(u64::MAX)),
        ("echo-f32", json!(1.5)),
        ("echo-f64", json!(-0.25)),
        ("echo-char", json!("ж")),
        ("echo-color", json!("blue")),
        ("echo-perms", json!(["read", "exec"])),
        ("echo-string", json!("hello, wörld")),
        ("echo-list", json!([1, 2, 3, 4294967295u64])),
    ];
    for (f, v) in cases {
        let got = call(&h, &s, f, json!([v.clone()])).await.unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(got, v, "{f}");
    }
    let everything = json!({
        "flag": true, "s8": -1, "u8": 2, "s16": -3, "u16": 4, "s32": -5, "u32": 6,
        "s64": -7, "u64": 8, "f32": 0.5, "f64": 2.25, "letter": "λ", "name": "sysdeploy",
        "tags": ["a", "bc", ""], "maybe": 9, "outcome": {"err": "nope"}, "done": {"ok": null},
        "pair": [10, "ten"], "at": {"x": -11, "y": 12}, "shape": {"circle": 1.25},
        "color": "green", "perms": ["write"]
    });
    assert_eq!(call(&h, &s, "echo-everything", json!([everything.clone()])).await.unwrap(), everything);
    let mut other = everything.clone();
    other["maybe"] = Value::Null;
    other["outcome"] = json!({"ok": 77});
    other["shape"] = json!("empty");
    other["done"] = json!({"err": null});
    other["perms"] = json!([]);
    other["tags"] = json!([]);
    assert_eq!(call(&h, &s, "echo-everything", json!([other.clone()])).await.unwrap(), other);
    // No parameters and no results: `[]` or `null` in, `null` out.
    assert_eq!(call(&h, &s, "nothing", json!([])).await.unwrap(), Value::Null);
    assert_eq!(call(&h, &s, "nothing", Value::Null).await.unwrap(), Value::Null);
}

#[tokio::test]
async fn functions_are_found_at_top_level_and_in_interfaces() {
    let h = Harness::new();
    let s = service(&h, &[("echo", None)]).await;
    assert_eq!(call(&h, &s, "add", json!([2, 3])).await.unwrap(), json!(5));
    assert_eq!(call(&h, &s, "sysdeploy:test/math#add", json!([4, 5])).await.unwrap(), json!(9));
    assert_eq!(call(&h, &s, "sysdeploy:test/math#mul", json!([4, 5])).await.unwrap(), json!(20));
    // `mul` exists only in the interface, so the bare name is unambiguous.
    assert_eq!(call(&h, &s, "mul", json!([6, 7])).await.unwrap(), json!(42));
    // Extreme TTLs neither overflow nor time out at once.
    assert_eq!(h.rt.call_with_ttl(s.as_str(), "mul", json!([2, 2]), Duration::MAX).await.unwrap(), json!(4));
    assert_eq!(h.rt.call_with_ttl(s.as_str(), "mul", json!([3, 2]), Duration::ZERO).await.unwrap(), json!(6));
    let e = call(&h, &s, "divide", json!([1, 2])).await.unwrap_err();
    match e {
        CallError::UnknownFunction { function, available, .. } => {
            assert_eq!(function, "divide");
            assert!(available.contains("sysdeploy:test/math#mul") && available.contains("echo-everything"), "{available}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn json_wit_mismatch_names_the_parameter() {
    let h = Harness::new();
    let s = service(&h, &[("echo", None)]).await;
    let e = call(&h, &s, "add", json!([1, "two"])).await.unwrap_err();
    assert_eq!(
        e,
        CallError::BadArgument {
            target: s.to_string(),
            function: "add".into(),
            param: "b".into(),
            expected: "u32".into(),
            got: "\"two\"".into()
        }
    );
    assert!(e.to_string().contains("parameter b: expected u32, got \"two\""), "{e}");
    let e = call(&h, &s, "echo-u8", json!([256])).await.unwrap_err();
    assert!(matches!(&e, CallError::BadArgument { param, expected, got, .. } if param == "v" && expected == "u8" && got == "256"), "{e:?}");
    let e = call(&h, &s, "echo-everything", json!([{"flag": 1}])).await.unwrap_err();
    assert!(matches!(&e, CallError::BadArgument { param, expected, .. } if param == "v.flag" && expected == "bool"), "{e:?}");
    let e = call(&h, &s, "add", json!([1])).await.unwrap_err();
    assert!(
        matches!(&e, CallError::BadArguments { message, .. } if message.contains("expected 2 argument(s)") && message.contains("a: u32, b: u32")),
        "{e:?}"
    );
    let e = call(&h, &s, "add", json!({"a": 1})).await.unwrap_err();
    assert!(matches!(e, CallError::BadArguments { .. }), "{e:?}");
    // The instance is unharmed by rejected arguments.
    assert_eq!(call(&h, &s, "add", json!([1, 1])).await.unwrap(), json!(2));
}

#[tokio::test]
async fn blueprint_exports_give_signatures_for_plan_time_checks() {
    let h = Harness::new();
    let bp = h.blueprint(&[("echo", None)]);
    let sigs = h.rt.blueprint_exports(&bp).unwrap();
    let add = sigs.iter().find(|s| s.name == "add").unwrap();
    assert_eq!(add.params, vec![("a".to_string(), WitType::U32), ("b".to_string(), WitType::U32)]);
    assert_eq!(add.results, vec![WitType::U32]);
    assert!(sigs.iter().any(|s| s.name == "sysdeploy:test/math#mul"));
    let every = sigs.iter().find(|s| s.name == "echo-everything").unwrap();
    let WitType::Record { fields } = &every.params[0].1 else { panic!("{every:?}") };
    assert_eq!(fields.len(), 22);
    assert!(fields.iter().any(|(n, t)| n == "color" && *t == WitType::Enum { cases: vec!["red".into(), "green".into(), "blue".into()] }));
    // Pure check, no service needed.
    assert_eq!(check_args(add, &json!([1, 2])), Ok(()));
    assert_eq!(check_args(add, &json!([1, -2])), Err(ArgError::Mismatch { param: "b".into(), expected: "u32".into(), got: "-2".into() }));
    assert!(matches!(h.rt.blueprint_exports(&sysdeploy::ids::BlueprintId([0; 32])), Err(RuntimeError::UnknownBlueprint(_))));
}

#[tokio::test]
async fn facade_imports_are_satisfied_by_earlier_components() {
    let h = Harness::new();
    let s = service(&h, &[("lib", None), ("facade", None)]).await;
    assert_eq!(call(&h, &s, "quad", json!([3])).await.unwrap(), json!(12));
    assert_eq!(call(&h, &s, "shout", json!(["hello, lib"])).await.unwrap(), json!("HELLO, LIB"));
    // Only the facade's exports are the service's functions.
    let e = call(&h, &s, "double", json!([1])).await.unwrap_err();
    assert!(matches!(e, CallError::UnknownFunction { .. }), "{e:?}");
}

#[tokio::test]
async fn unsatisfied_imports_are_named_at_create_time() {
    let h = Harness::new();
    let bp = h.blueprint(&[("echo", None), ("orphan", None)]);
    let e = h.rt.create_service(&bp, &host()).await.unwrap_err();
    match &e {
        RuntimeError::UnsatisfiedImport { component, import, .. } => {
            assert_eq!(component, "orphan");
            assert_eq!(import, "sysdeploy:test/nobody");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("component orphan imports sysdeploy:test/nobody"), "{e}");
    // The facade without its library: the import exists, its provider does not.
    let bp = h.blueprint(&[("facade", None)]);
    let e = h.rt.create_service(&bp, &host()).await.unwrap_err();
    assert!(
        matches!(&e, RuntimeError::UnsatisfiedImport { component, import, .. } if component == "facade" && import == "sysdeploy:test/lib@0.1.0"),
        "{e:?}"
    );
    assert!(h.rt.list_services().is_empty(), "nothing was created");
}

#[tokio::test]
async fn host_interface_gives_peer_id_clock_and_logging() {
    let h = Harness::new();
    let s = service(&h, &[("hostcalls", None)]).await;
    assert_eq!(call(&h, &s, "whoami", json!([])).await.unwrap(), json!(host().to_string()));
    let now = call(&h, &s, "now", json!([])).await.unwrap().as_u64().unwrap();
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(now > 1_600_000_000_000 && now <= wall, "{now} vs {wall}");
    assert_eq!(call(&h, &s, "hello", json!([])).await.unwrap(), Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_guest_is_stopped_and_other_services_keep_answering() {
    let h = Harness::new();
    let runaway = service(&h, &[("misbehave", None)]).await;
    let other = service(&h, &[("misbehave", None)]).await;
    let rt = h.rt.clone();
    let r = runaway.clone();
    let ttl = Duration::from_millis(3_000);
    let spin = tokio::spawn(async move { rt.call_with_ttl(r.as_str(), "spin", json!([]), ttl).await });
    // Only once the runaway is observably running: the other service must
    // answer several calls while it still runs (one lock for all services
    // would hold them until the runaway's TTL).
    while !h.rt.is_busy(&runaway) {
        assert!(!spin.is_finished(), "the runaway call ended before it was seen running");
        tokio::task::yield_now().await;
    }
    for n in 1..=5u32 {
        assert_eq!(call(&h, &other, "count", json!([])).await.unwrap(), json!(n));
        assert!(h.rt.is_busy(&runaway) && !spin.is_finished(), "answer {n} of the other service came only after the runaway stopped");
    }
    let e = spin.await.unwrap().unwrap_err();
    assert_eq!(e, CallError::Timeout { target: runaway.to_string(), function: "spin".into(), ttl_ms: 3_000 });
    assert!(e.to_string().contains("time limit of 3000 ms"), "{e}");
    // The interrupted instance was discarded; the next call gets a fresh one.
    assert!(!h.rt.is_instantiated(&runaway));
    assert_eq!(call(&h, &runaway, "count", json!([])).await.unwrap(), json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_one_service_are_serialised() {
    let h = Harness::new();
    let s = service(&h, &[("misbehave", None)]).await;
    assert_eq!(call(&h, &s, "count", json!([])).await.unwrap(), json!(1));
    let rt = h.rt.clone();
    let id = s.clone();
    // The TTL only has to outlast the next few statements, also on a busy machine.
    let spin = tokio::spawn(async move { rt.call_with_ttl(id.as_str(), "spin", json!([]), Duration::from_millis(2_000)).await });
    while !h.rt.is_busy(&s) {
        assert!(!spin.is_finished());
        tokio::task::yield_now().await;
    }
    assert_eq!(h.rt.calls_in_flight(&s), 1);
    // Issued while the spin holds the instance: it waits for the spin to be
    // interrupted and its instance discarded, so it sees a fresh counter
    // (had it run on the old instance it would answer 2).
    let n = call(&h, &s, "count", json!([])).await.unwrap();
    assert!(matches!(spin.await.unwrap(), Err(CallError::Timeout { .. })));
    assert_eq!(n, json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_busy() {
    let h = Harness::with_options(RuntimeOptions { host_peer: Some(host()), max_queued_calls: 1, ..RuntimeOptions::default() });
    let s = service(&h, &[("misbehave", None)]).await;
    let rt = h.rt.clone();
    let id = s.clone();
    // The TTL only has to outlast the next few statements, also on a busy machine.
    let spin = tokio::spawn(async move { rt.call_with_ttl(id.as_str(), "spin", json!([]), Duration::from_millis(2_000)).await });
    while !h.rt.is_busy(&s) {
        assert!(!spin.is_finished());
        tokio::task::yield_now().await;
    }
    assert_eq!(call(&h, &s, "count", json!([])).await, Err(CallError::Busy { target: s.to_string() }));
    assert!(matches!(spin.await.unwrap(), Err(CallError::Timeout { .. })));
}

#[tokio::test]
async fn memory_bomb_fails_with_a_clear_error() {
    let h = Harness::new();
    let s = service(&h, &[("misbehave", Some(4))]).await;
    let e = call(&h, &s, "bomb", json!([])).await.unwrap_err();
    match &e {
        CallError::Trap { function, trap, .. } => {
            assert_eq!(function, "bomb");
            assert!(trap.contains("component misbehave exceeded its memory limit of 4 MiB"), "{trap}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!h.rt.is_instantiated(&s));
    assert_eq!(call(&h, &s, "count", json!([])).await.unwrap(), json!(1));
}

#[tokio::test]
async fn a_trap_names_the_function_and_discards_the_instance() {
    let h = Harness::new();
    let s = service(&h, &[("misbehave", None)]).await;
    h.rt.bind_alias(&alias("flaky"), AliasTarget::Service(s.clone()), &host()).unwrap();
    assert_eq!(h.rt.call("flaky", "count", json!([])).await.unwrap(), json!(1));
    assert_eq!(h.rt.call("flaky", "count", json!([])).await.unwrap(), json!(2));
    let e = h.rt.call("flaky", "crash", json!([])).await.unwrap_err();
    assert!(
        matches!(&e, CallError::Trap { target, function, trap } if target == "flaky" && function == "crash" && trap.contains("unreachable")),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("flaky.crash: guest trapped: "), "{e}");
    assert_eq!(h.rt.call("flaky", "count", json!([])).await.unwrap(), json!(1), "a fresh instance");
}

#[tokio::test]
async fn stack_overflow_is_an_error() {
    let h = Harness::new();
    let s = service(&h, &[("misbehave", None)]).await;
    let e = call(&h, &s, "recurse", json!([0])).await.unwrap_err();
    assert!(matches!(&e, CallError::Trap { function, trap, .. } if function == "recurse" && trap.contains("stack overflow")), "{e:?}");
    assert_eq!(call(&h, &s, "count", json!([])).await.unwrap(), json!(1));
}

fn artifact(h: &Harness, hash: &sysdeploy::ids::ComponentHash) -> std::path::PathBuf {
    h.rt.artifact_dir().join(format!("{}.cwasm", hash.to_hex()))
}

async fn recompiles_after(damage: impl FnOnce(&std::path::Path)) {
    let h = Harness::new();
    let hash = h.add("echo");
    assert_eq!(h.rt.cache_stats().misses, 1);
    let path = artifact(&h, &hash);
    assert!(path.exists());
    damage(&path);
    let h = h.restart();
    let bp = h.blueprint(&[("echo", None)]);
    let s = h.rt.create_service(&bp, &host()).await.unwrap();
    assert_eq!(call(&h, &s, "add", json!([20, 22])).await.unwrap(), json!(42));
    let stats = h.rt.cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.discarded), (0, 1, 1), "{stats:?}");
    // The fresh artifact is good: the next restart loads it.
    let h = h.restart();
    assert_eq!(call(&h, &s, "add", json!([1, 2])).await.unwrap(), json!(3));
    assert_eq!(h.rt.cache_stats().misses, 0);
    assert_eq!(h.rt.cache_stats().hits, 1);
}

#[tokio::test]
async fn flipped_byte_in_artifact_is_recompiled() {
    recompiles_after(|p| {
        let mut bytes = std::fs::read(p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(p, bytes).unwrap();
    })
    .await;
}

#[tokio::test]
async fn truncated_artifact_is_recompiled() {
    recompiles_after(|p| {
        let bytes = std::fs::read(p).unwrap();
        std::fs::write(p, &bytes[..bytes.len() / 3]).unwrap();
    })
    .await;
}

#[tokio::test]
async fn incompatible_artifact_is_recompiled() {
    let h = Harness::new();
    let hash = h.add("echo");
    let path = artifact(&h, &hash);
    // An artifact compiled by a differently configured engine (no epoch
    // interruption), recorded with its correct digest: only wasmtime's own
    // compatibility check can catch it.
    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true);
    let foreign = wasmtime::Engine::new(&cfg).unwrap();
    let bytes = wasmtime::component::Component::new(&foreign, fixtures::component("echo")).unwrap().serialize().unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let digest = blake3::hash(&bytes).to_hex().to_string();
    let store = sysdeploy::store::Store::open(&h.state_dir().join("state.db")).unwrap();
    let n = store.lock().execute("UPDATE rt_artifacts SET blake3 = ?1 WHERE component_hash = ?2", [&digest, &hash.to_hex()]).unwrap();
    assert_eq!(n, 1);
    drop(store);
    let h = h.restart();
    let bp = h.blueprint(&[("echo", None)]);
    let s = h.rt.create_service(&bp, &host()).await.unwrap();
    assert_eq!(call(&h, &s, "add", json!([2, 2])).await.unwrap(), json!(4));
    let stats = h.rt.cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.discarded), (0, 1, 1), "{stats:?}");
}

#[tokio::test]
async fn restart_brings_services_back_without_recompiling() {
    let h = Harness::new();
    let files = service(&h, &[("files", None)]).await;
    let pair = service(&h, &[("lib", None), ("facade", Some(16))]).await;
    h.rt.bind_alias(&alias("files"), AliasTarget::Service(files.clone()), &host()).unwrap();
    h.rt.bind_alias(&alias("pair"), AliasTarget::Service(pair.clone()), &host()).unwrap();
    h.rt.bind_alias(&alias("some-spell"), AliasTarget::Spell("spell-1".into()), &host()).unwrap();
    assert_eq!(h.rt.call("files", "put", json!(["survives restarts"])).await.unwrap(), json!(true));
    let before = h.rt.list_services();
    let aliases_before = h.rt.aliases();
    assert_eq!(before.len(), 2);

    let h = h.restart();
    assert_eq!(h.rt.list_services(), before);
    assert_eq!(h.rt.aliases(), aliases_before);
    assert_eq!(h.rt.resolve("files").unwrap().id, files);
    assert_eq!(h.rt.call("files", "get", json!([])).await.unwrap(), json!("survives restarts"));
    assert_eq!(h.rt.call("pair", "quad", json!([5])).await.unwrap(), json!(20));
    // The deployer re-adds embedded components on every boot: still no compile.
    h.add("files");
    let stats = h.rt.cache_stats();
    assert_eq!(stats.misses, 0, "{stats:?}");
    assert_eq!(stats.hits, 3, "files, lib, facade loaded from the cache: {stats:?}");
}

#[tokio::test]
async fn data_dir_is_private_persistent_and_the_only_filesystem() {
    let h = Harness::new();
    let a = service(&h, &[("files", None)]).await;
    let b = service(&h, &[("files", None)]).await;
    assert_eq!(call(&h, &a, "preopen-count", json!([])).await.unwrap(), json!(1));
    assert_eq!(call(&h, &a, "dir-name", json!([])).await.unwrap(), json!("/data"));
    assert_eq!(call(&h, &a, "get", json!([])).await.unwrap(), Value::Null);
    assert_eq!(call(&h, &a, "put", json!(["mine"])).await.unwrap(), json!(true));
    assert_eq!(call(&h, &a, "get", json!([])).await.unwrap(), json!("mine"));
    assert_eq!(call(&h, &b, "get", json!([])).await.unwrap(), Value::Null, "b cannot see a's file");
    assert_eq!(std::fs::read_to_string(h.rt.data_dir(&a).join("state.txt")).unwrap(), "mine");
    assert_eq!(call(&h, &a, "try-escape", json!([])).await.unwrap(), json!(true));
    assert!(!h.state_dir().join("services").join("outside.txt").exists());
}

#[tokio::test]
async fn aliases_bind_rebind_unbind() {
    let h = Harness::new();
    let one = service(&h, &[("misbehave", None)]).await;
    let two = service(&h, &[("echo", None)]).await;
    let name = alias("registry");
    h.rt.bind_alias(&name, AliasTarget::Service(one.clone()), &host()).unwrap();
    let e = h.rt.bind_alias(&name, AliasTarget::Service(two.clone()), &host()).unwrap_err();
    assert!(
        matches!(&e, RuntimeError::AliasTaken { alias, target, owner } if alias == "registry" && *target == AliasTarget::Service(one.clone()) && *owner == host().to_string()),
        "{e:?}"
    );
    assert_eq!(h.rt.call("registry", "count", json!([])).await.unwrap(), json!(1));
    // Spells share the namespace.
    h.rt.bind_alias(&alias("decider"), AliasTarget::Spell("s-1".into()), &host()).unwrap();
    assert!(matches!(h.rt.bind_alias(&alias("decider"), AliasTarget::Service(two.clone()), &host()), Err(RuntimeError::AliasTaken { .. })));
    assert!(h.rt.resolve("decider").is_none(), "a spell alias is not a service");

    let old = h.rt.rebind_alias(&name, AliasTarget::Service(two.clone()), &host()).unwrap();
    assert_eq!(old, AliasTarget::Service(one.clone()));
    assert_eq!(h.rt.call("registry", "add", json!([1, 2])).await.unwrap(), json!(3));
    assert_eq!(h.rt.resolve("registry").unwrap().aliases, vec![name.clone()]);
    assert!(h.rt.resolve(one.as_str()).unwrap().aliases.is_empty());

    assert!(matches!(h.rt.unbind_alias(&name, &stranger()), Err(RuntimeError::NotOwner(..))));
    assert!(matches!(h.rt.rebind_alias(&name, AliasTarget::Service(one.clone()), &stranger()), Err(RuntimeError::NotOwner(..))));
    h.rt.unbind_alias(&name, &host()).unwrap();
    assert!(h.rt.alias(&name).is_none());
    assert!(matches!(h.rt.unbind_alias(&name, &host()), Err(RuntimeError::AliasNotBound(_))));
    assert!(matches!(h.rt.call("registry", "add", json!([1, 2])).await, Err(CallError::UnknownTarget { .. })));
    let ghost = ServiceId::random();
    assert!(matches!(h.rt.bind_alias(&name, AliasTarget::Service(ghost), &host()), Err(RuntimeError::UnknownService(_))));
}

#[tokio::test]
async fn ownership_is_checked() {
    let h = Harness::new();
    let bp = h.blueprint(&[("echo", None)]);
    let theirs = h.rt.create_service(&bp, &stranger()).await.unwrap();
    let ours = h.rt.create_service(&bp, &host()).await.unwrap();
    h.rt.check_owner(&ours, &host()).unwrap();
    let e = h.rt.check_owner(&theirs, &host()).unwrap_err();
    assert!(
        matches!(&e, RuntimeError::NotOwner(what, owner) if what.contains(theirs.as_str()) && *owner == stranger().to_string()),
        "{e:?}"
    );
    h.rt.bind_alias(&alias("theirs"), AliasTarget::Service(theirs.clone()), &stranger()).unwrap();
    assert!(matches!(h.rt.rebind_alias(&alias("theirs"), AliasTarget::Service(ours), &host()), Err(RuntimeError::NotOwner(..))));
    assert_eq!(h.rt.resolve("theirs").unwrap().owner, stranger());
}

#[tokio::test]
async fn remove_service_drops_instance_record_aliases_and_data() {
    let h = Harness::new();
    let keep = service(&h, &[("files", None)]).await;
    let gone = service(&h, &[("files", None)]).await;
    h.rt.bind_alias(&alias("gone"), AliasTarget::Service(gone.clone()), &host()).unwrap();
    call(&h, &keep, "put", json!(["k"])).await.unwrap();
    call(&h, &gone, "put", json!(["g"])).await.unwrap();
    h.rt.remove_service(&gone, false).await.unwrap();
    assert!(!h.rt.data_dir(&gone).exists());
    assert!(h.rt.alias(&alias("gone")).is_none(), "no orphaned alias");
    assert!(matches!(call(&h, &gone, "get", json!([])).await, Err(CallError::UnknownTarget { .. })));
    h.rt.remove_service(&keep, true).await.unwrap();
    assert!(h.rt.data_dir(&keep).join("state.txt").exists());
    assert!(h.rt.list_services().is_empty());
    assert!(matches!(h.rt.remove_service(&keep, true).await, Err(RuntimeError::UnknownService(_))));
    let h = h.restart();
    assert!(h.rt.list_services().is_empty() && h.rt.aliases().is_empty());
}

#[tokio::test]
async fn copy_data_carries_files_to_a_new_service() {
    let h = Harness::new();
    let old = service(&h, &[("files", None)]).await;
    call(&h, &old, "put", json!(["carried over"])).await.unwrap();
    std::fs::create_dir_all(h.rt.data_dir(&old).join("nested/deeper")).unwrap();
    std::fs::write(h.rt.data_dir(&old).join("nested/deeper/x"), b"x").unwrap();
    let new = service(&h, &[("files", None)]).await;
    h.rt.copy_data(&old, &new).await.unwrap();
    assert_eq!(call(&h, &new, "get", json!([])).await.unwrap(), json!("carried over"));
    assert_eq!(std::fs::read(h.rt.data_dir(&new).join("nested/deeper/x")).unwrap(), b"x");
    // Too late once the target has an instance.
    assert!(matches!(h.rt.copy_data(&old, &new).await, Err(RuntimeError::ServiceInUse(_))));
}

#[tokio::test]
async fn gc_removes_only_what_nothing_references() {
    let h = Harness::new();
    let used = service(&h, &[("echo", None)]).await;
    let unused_bp = h.blueprint(&[("lib", None), ("facade", None)]);
    let stray = h.state_dir().join("services").join(ServiceId::random().as_str());
    std::fs::create_dir_all(&stray).unwrap();
    let foreign_cache = h.state_dir().join("cache").join("0123456789abcdef");
    std::fs::create_dir_all(&foreign_cache).unwrap();
    let lib_hash = sysdeploy::ids::ComponentHash::of(&fixtures::component("lib"));
    let removed = h.rt.gc().unwrap();
    assert!(removed.iter().any(|r| r == &format!("blueprint {unused_bp}")), "{removed:?}");
    assert!(removed.iter().any(|r| r == &format!("component {lib_hash}")), "{removed:?}");
    assert!(!stray.exists() && !foreign_cache.exists());
    assert!(!artifact(&h, &lib_hash).exists());
    assert!(!h.state_dir().join("components").join(format!("{lib_hash}.wasm")).exists());
    assert!(matches!(h.rt.blueprint_exports(&unused_bp), Err(RuntimeError::UnknownBlueprint(_))));
    // What is referenced survives and still works, also after a restart.
    assert_eq!(call(&h, &used, "add", json!([1, 1])).await.unwrap(), json!(2));
    assert!(h.rt.gc().unwrap().is_empty());
    let h = h.restart();
    assert_eq!(call(&h, &used, "add", json!([2, 2])).await.unwrap(), json!(4));
    assert_eq!(h.rt.cache_stats().misses, 0);
}

#[tokio::test]
async fn bad_components_and_blueprints_are_rejected() {
    let h = Harness::new();
    let e = h.rt.add_component(b"not wasm at all", None).unwrap_err();
    assert!(matches!(&e, RuntimeError::Component { message, .. } if message.contains("does not compile")), "{e:?}");
    assert!(matches!(h.rt.put_blueprint(&Blueprint::new(vec![])), Err(RuntimeError::InvalidBlueprint { .. })));
    let never_added = sysdeploy::runtime::BlueprintComponent {
        name: "ghost".into(),
        hash: sysdeploy::ids::ComponentHash::of(b"ghost"),
        memory_limit_mb: None,
    };
    let e = h.rt.put_blueprint(&Blueprint::new(vec![never_added])).unwrap_err();
    assert!(matches!(&e, RuntimeError::Component { message, .. } if message.contains("never added")), "{e:?}");
}

#[tokio::test]
async fn distro_components_built_from_rust_link_and_list_exports() {
    // Real wasm32-wasip2 components (Rust std, WASI 0.2 imports, the host
    // interface): every one must link against what the host provides.
    let h = Harness::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("distros");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(files) = std::fs::read_dir(&dir) else { continue };
        for f in files {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "wasm") {
                let bytes = std::fs::read(&path).unwrap();
                let hash = h.rt.add_component(&bytes, None).unwrap();
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                let bp =
                    h.rt.put_blueprint(&Blueprint::new(vec![sysdeploy::runtime::BlueprintComponent { name, hash, memory_limit_mb: None }]))
                        .unwrap();
                let sigs = h.rt.blueprint_exports(&bp).unwrap();
                assert!(!sigs.is_empty(), "{}", path.display());
                let s = h.rt.create_service(&bp, &host()).await.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if sigs.iter().any(|f| f.name == "register") {
                    // A real record through the JSON path, both ways.
                    let ok = call(&h, &s, "register", json!(["k", "v", "me", 7])).await.unwrap();
                    assert_eq!(ok, json!({"ok": null}));
                    let got = call(&h, &s, "get", json!(["k"])).await.unwrap();
                    assert_eq!(got, json!({"key": "k", "value": "v", "issuer": "me", "timestamp": 7}));
                }
                seen += 1;
            }
        }
    }
    assert!(seen >= 4, "found {seen} distro components");
}

/// Calls to one service go through its call task: one at a time, in arrival
/// order, on one instance; a caller that goes away abandons its call.
mod call_task {
    use super::*;
    use tokio::task::JoinHandle;

    fn spawn_call(h: &Harness, s: &ServiceId, f: &'static str, args: Value, ttl: Duration) -> JoinHandle<Result<Value, CallError>> {
        let (rt, id) = (h.rt.clone(), s.clone());
        tokio::spawn(async move { rt.call_with_ttl(id.as_str(), f, args, ttl).await })
    }

    /// Waits until `n` calls are admitted to `s`, failing if `first` ended first.
    async fn until_in_flight(h: &Harness, s: &ServiceId, n: usize, first: &JoinHandle<Result<Value, CallError>>) {
        while h.rt.calls_in_flight(s) != n {
            assert!(!first.is_finished(), "the first call ended before {n} calls were queued");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_never_overlap_and_run_in_arrival_order_on_one_instance() {
        let h = Harness::new();
        let s = service(&h, &[("serial", None)]).await;
        // Holds the instance until its TTL while the others queue up (the TTL
        // only has to outlast the queueing, also on a busy machine).
        let spin = spawn_call(&h, &s, "spin", json!([]), Duration::from_millis(2_000));
        while !h.rt.is_busy(&s) {
            assert!(!spin.is_finished());
            tokio::task::yield_now().await;
        }
        let mut calls = Vec::new();
        for k in 0..7 {
            // Each spins across several epoch ticks, yielding to tokio inside
            // the guest: a second call let in meanwhile would trap.
            calls.push(spawn_call(&h, &s, "enter", json!([20_000_000u32]), Duration::from_secs(30)));
            until_in_flight(&h, &s, k + 2, &spin).await;
        }
        assert!(matches!(spin.await.unwrap(), Err(CallError::Timeout { .. })));
        // The spin's instance was discarded: the queued calls ran on one fresh
        // instance, one after the other, in the order they arrived.
        for (k, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap(), Ok(json!(k + 1)), "call {k}");
        }
        assert_eq!(h.rt.calls_in_flight(&s), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_goes_away_abandons_its_call_running_or_queued() {
        let h = Harness::new();
        let s = service(&h, &[("serial", None)]).await;
        assert_eq!(call(&h, &s, "enter", json!([1])).await, Ok(json!(1)));
        // Running: dropping the caller stops the guest and discards the
        // instance (the next call sees a fresh one); without that the test
        // would wait here for the hour-long TTL. Once on the caller's own task
        // (the service is idle, nothing queued), once on the service's call
        // task (queued behind another call).
        let spin = spawn_call(&h, &s, "spin", json!([]), Duration::from_secs(3_600));
        while !h.rt.is_busy(&s) {
            tokio::task::yield_now().await;
        }
        spin.abort();
        while h.rt.is_busy(&s) || h.rt.calls_in_flight(&s) != 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(call(&h, &s, "enter", json!([1])).await, Ok(json!(1)));
        let first = spawn_call(&h, &s, "spin", json!([]), Duration::from_millis(2_000));
        while !h.rt.is_busy(&s) {
            assert!(!first.is_finished());
            tokio::task::yield_now().await;
        }
        let queued = spawn_call(&h, &s, "spin", json!([]), Duration::from_secs(3_600));
        until_in_flight(&h, &s, 2, &first).await;
        assert!(matches!(first.await.unwrap(), Err(CallError::Timeout { .. })));
        while !h.rt.is_busy(&s) {
            tokio::task::yield_now().await;
        }
        queued.abort();
        while h.rt.is_busy(&s) || h.rt.calls_in_flight(&s) != 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(call(&h, &s, "enter", json!([1])).await, Ok(json!(1)));
        // Queued: a call whose caller went away before its turn is not run.
        let spin = spawn_call(&h, &s, "spin", json!([]), Duration::from_millis(2_000));
        while !h.rt.is_busy(&s) {
            assert!(!spin.is_finished());
            tokio::task::yield_now().await;
        }
        let gone = spawn_call(&h, &s, "enter", json!([1]), Duration::from_secs(30));
        until_in_flight(&h, &s, 2, &spin).await;
        let kept = spawn_call(&h, &s, "enter", json!([1]), Duration::from_secs(30));
        until_in_flight(&h, &s, 3, &spin).await;
        gone.abort();
        until_in_flight(&h, &s, 2, &spin).await;
        assert!(matches!(spin.await.unwrap(), Err(CallError::Timeout { .. })));
        assert_eq!(kept.await.unwrap(), Ok(json!(1)), "the abandoned call ran before it");
    }
}
