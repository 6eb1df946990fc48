//! Distro packages: manifest validation messages (data-driven from
//! `tests/ui/manifests/`), the embedded catalog, template resolution, adding a
//! package as a folder, the artifact lock and the bundled trust data.

#[allow(dead_code)] // render/parse are for xtask
#[path = "../xtask/src/lock.rs"]
mod lock;

#[path = "../xtask/src/trust_sign.rs"]
mod trust_sign;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use sysdeploy::config::schema::ValueType;
use sysdeploy::config::{self, LoadOptions};
use sysdeploy::distro::{self, Catalog, ClockStart, ConfigChange, InitRun, LookupFn, TemplateError};
use sysdeploy::ids::{ComponentHash, PackageName, PeerId};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "target" {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if e.file_type().unwrap().is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn pkg(name: &str) -> PackageName {
    PackageName::new(name).unwrap()
}

/// Config values of a package as the config layer would hand them over:
/// defaults, overridden by `overrides`.
fn values(p: &distro::Package, overrides: &[(&str, Value)]) -> BTreeMap<String, Value> {
    let mut m: BTreeMap<String, Value> = p.config.keys.iter().filter_map(|k| Some((k.name.clone(), k.default.clone()?))).collect();
    for (k, v) in overrides {
        m.insert(k.to_string(), v.clone());
    }
    m
}

// ------------------------------------------------------------ ui manifests

/// Loads one case of `tests/ui/manifests/<case>/`: a single package when the
/// case holds a `distro.toml`, else every sub-folder is a package. The case is
/// copied under `<tmp>/distros/` so messages name `distros/...` paths.
fn check_case(case: &Path) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("distros");
    std::fs::create_dir_all(&root).unwrap();
    let name = case.file_name().unwrap();
    if case.join("distro.toml").is_file() {
        copy_dir(case, &root.join(name));
    } else {
        for e in std::fs::read_dir(case).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &root.join(e.file_name()));
            }
        }
    }
    let _ = std::fs::remove_file(root.join(name).join("expected.txt"));
    match Catalog::load_dir(&root) {
        Ok(c) => format!("OK: {} packages", c.packages.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn invalid_manifests_give_precise_messages() {
    let dir = repo().join("tests/ui/manifests");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 10, "expected the ui cases in {}", dir.display());
    let bless = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let got = check_case(case);
        let expected_path = case.join("expected.txt");
        if bless {
            std::fs::write(&expected_path, format!("{got}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected.trim_end() != got.trim_end() {
            failures.push(format!("--- {}\nexpected:\n{}\ngot:\n{got}\n", case.display(), expected.trim_end()));
        }
        assert!(!got.starts_with("OK"), "{}: an invalid manifest was accepted", case.display());
    }
    assert!(failures.is_empty(), "{} case(s) differ (UPDATE_EXPECT=1 rewrites them):\n{}", failures.len(), failures.join("\n"));
}

// --------------------------------------------------------- embedded catalog

#[test]
fn embedded_catalog_equals_loading_the_folder() {
    let from_disk = Catalog::load_dir(&repo().join("distros")).unwrap();
    let embedded = distro::embedded();
    assert_eq!(embedded, &from_disk, "build.rs and Catalog::load_dir disagree (stale build?)");
    let hashes = |c: &Catalog| -> Vec<ComponentHash> {
        c.packages.iter().flat_map(|p| &p.services).flat_map(|s| &s.components).map(|c| c.hash).collect()
    };
    assert_eq!(hashes(embedded), hashes(&from_disk));
    for c in embedded.packages.iter().flat_map(|p| &p.services).flat_map(|s| &s.components) {
        assert_eq!(ComponentHash::of(&c.bytes), c.hash, "{}: precomputed hash is wrong", c.name);
    }
}

#[test]
fn four_system_packages_in_dependency_order() {
    let c = distro::embedded();
    let names: Vec<&str> = c.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["aqua-ipfs", "decider", "trust-graph", "registry"]);
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    for p in &c.packages {
        for d in &p.depends_on {
            assert!(pos(d.as_str()) < pos(p.name.as_str()), "{} before its dependency {d}", p.name);
        }
    }
    let aliases: Vec<String> = c
        .packages
        .iter()
        .flat_map(|p| p.services.iter().map(|s| s.alias.to_string()).chain(p.spells.iter().map(|s| s.alias.to_string())))
        .collect();
    assert_eq!(aliases, ["aqua-ipfs", "connector", "decider", "trust-graph", "registry", "registry-spell"]);
    let registry = c.package(&pkg("registry")).unwrap();
    assert_eq!(registry.version, "0.9.4");
    assert_eq!(registry.manifest_path, "distros/registry/distro.toml");
    let svc = &registry.services[0];
    assert!(svc.keep_data);
    assert_eq!(svc.on_config_change, ConfigChange::Reinit);
    assert_eq!(svc.components[0].name, "registry");
    assert_eq!(svc.components[0].memory_limit_mb, Some(64));
    let bp = svc.blueprint();
    assert_eq!(bp.components.len(), 1);
    assert_eq!(bp.components[0].hash, svc.components[0].hash);
    assert_eq!(bp.id(), svc.blueprint().id(), "blueprint id is deterministic");
    assert!(c.package(&pkg("nope")).is_none());
}

#[test]
fn package_schemas_come_from_the_manifests() {
    let schemas = distro::package_schemas();
    let get = |p: &str, k: &str| schemas.iter().find(|s| s.package == p).and_then(|s| s.key(k)).cloned().unwrap();
    for (k, d) in
        [("registry_period_sec", 3600), ("expired_period_sec", 86400), ("renew_period_sec", 43200), ("replicate_period_sec", 3600)]
    {
        let spec = get("registry", k);
        assert_eq!((spec.ty, spec.default), (ValueType::Integer, Some(json!(d))), "registry.{k}");
    }
    assert_eq!(get("decider", "decider_period_sec").default, Some(json!(120)));
    assert_eq!(get("decider", "worker_period_sec").default, Some(json!(900)));
    assert_eq!(get("decider", "worker_ipfs_multiaddr").legacy_env, ["FLUENCE_ENV_DECIDER_IPFS_MULTIADDR"]);
    let wallet = get("decider", "wallet_key");
    assert!(wallet.secret && wallet.default.is_none() && !wallet.required);
    assert_eq!(get("aqua-ipfs", "local_api_multiaddr").legacy_env, ["FLUENCE_ENV_AQUA_IPFS_LOCAL_API_MULTIADDR"]);
    assert_eq!(get("aqua-ipfs", "external_api_multiaddr").legacy_env, ["FLUENCE_ENV_AQUA_IPFS_EXTERNAL_API_MULTIADDR"]);
    assert_eq!(schemas.iter().find(|s| s.package == "aqua-ipfs").unwrap().section(), "aqua_ipfs");
    assert!(schemas.iter().find(|s| s.package == "trust-graph").unwrap().keys.is_empty());
}

// ---------------------------------------------------------------- templates

#[test]
fn init_calls_resolve_with_types() {
    let c = distro::embedded();
    let registry = c.package(&pkg("registry")).unwrap();
    let init = &registry.services[0].init[0];
    let r = init.resolve(&values(registry, &[])).unwrap();
    assert_eq!((r.function.as_str(), r.run), ("set-expiry", InitRun::OnChange));
    assert_eq!(r.calls, vec![vec![json!(86400)]], "an integer config value stays an integer");
    assert_eq!(r.inputs, ["expired_period_sec"]);
    let r2 = init.resolve(&values(registry, &[("expired_period_sec", json!(60))])).unwrap();
    assert_ne!(r.calls, r2.calls, "a config change changes the resolved arguments");

    let aqua = c.package(&pkg("aqua-ipfs")).unwrap();
    let r =
        aqua.services[0].init[1].resolve(&values(aqua, &[("external_api_multiaddr", json!("/dns4/ipfs.example/tcp/443/https"))])).unwrap();
    assert_eq!(r.calls, vec![vec![json!("/dns4/ipfs.example/tcp/443/https")]]);
}

#[test]
fn spell_trigger_and_kv_resolve_with_types() {
    let registry = distro::embedded().package(&pkg("registry")).unwrap();
    let spell = &registry.spells[0];
    assert_eq!(spell.alias.as_str(), "registry-spell");
    assert!(spell.script.contains("clear-expired"));
    assert_eq!(spell.script_hash, *blake3::hash(spell.script.as_bytes()).as_bytes());
    let vals = values(registry, &[("registry_period_sec", json!(600))]);
    let t = spell.resolve_trigger(&vals).unwrap();
    assert_eq!((t.start, t.period_sec, t.end), (ClockStart::Now, 600, None));
    let kv = spell.resolve_kv(&vals).unwrap();
    let plain: BTreeMap<&str, &Value> = kv.iter().map(|(k, r)| (k.as_str(), &r.value)).collect();
    assert_eq!(
        plain,
        BTreeMap::from([
            ("expired_period_sec", &json!(86400)),
            ("renew_period_sec", &json!(43200)),
            ("replicate_period_sec", &json!(3600)),
        ])
    );
    assert_eq!(kv["renew_period_sec"].inputs, ["renew_period_sec"]);

    let bad = values(registry, &[("registry_period_sec", json!("soon"))]);
    assert!(matches!(spell.resolve_trigger(&bad), Err(TemplateError::NotInteger { .. })));
}

#[test]
fn trust_graph_init_runs_once_per_bundled_record() {
    let tg = distro::embedded().package(&pkg("trust-graph")).unwrap();
    let svc = &tg.services[0];
    let roots = svc.init[0].resolve(&values(tg, &[])).unwrap();
    assert_eq!((roots.function.as_str(), roots.run), ("set-root", InitRun::OnInstall));
    let root_peer = PeerId::from_ed25519_public(&trust_key("root"));
    assert_eq!(roots.calls, vec![vec![json!(root_peer.as_str()), json!(16)]]);
    let certs = svc.init[1].resolve(&values(tg, &[])).unwrap();
    assert_eq!(certs.function, "insert-cert");
    assert_eq!(certs.calls.len(), 2);
    assert!(certs.calls.iter().all(|args| args.len() == 1 && args[0]["chain"].is_array()));
}

#[test]
fn unset_optional_secret_skips_its_init_call_and_never_shows() {
    let decider = distro::embedded().package(&pkg("decider")).unwrap();
    let init = &decider.services[0].init[0];
    assert_eq!(init.function, "set-wallet-key");
    let skipped = init.resolve(&values(decider, &[])).unwrap();
    assert_eq!(skipped.skipped.as_deref(), Some("wallet_key"));
    assert!(skipped.calls.is_empty());
    assert_eq!(skipped.inputs, ["wallet_key"]);

    let key = "0xfeedfacecafebeef";
    let with_secret = LookupFn(|k: &str| match k {
        "wallet_key" => Some((json!(key), true)),
        _ => None,
    });
    let r = init.resolve(&with_secret).unwrap();
    assert!(r.secret && r.skipped.is_none());
    assert_eq!(r.calls, vec![vec![json!(key)]]);
    assert!(!format!("{r:?}").contains("feedface"), "secret reached Debug: {r:?}");
}

// ------------------------------------------------- a fifth package is a folder

#[test]
fn a_fifth_package_is_a_new_folder_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("distros");
    copy_dir(&repo().join("distros"), &root);
    copy_dir(&repo().join("tests/distros/v1/kv-store"), &root.join("kv-store"));
    let c = Catalog::load_dir(&root).unwrap();
    assert_eq!(c.packages.len(), 5);
    let kv = c.package(&pkg("kv-store")).unwrap();
    assert_eq!(kv.services[0].alias.as_str(), "kv-store");
    assert_eq!(kv.services[0].components[0].hash, ComponentHash::of(&std::fs::read(root.join("kv-store/kv-store.wasm")).unwrap()));
    let schema = c.schemas().into_iter().find(|s| s.package == "kv-store").unwrap();
    assert_eq!(schema.key("greeting").unwrap().default, Some(json!("hello")));
    let r = kv.services[0].init[0].resolve(&values(kv, &[])).unwrap();
    assert_eq!(r.calls, vec![vec![json!("hello")]]);
    // The four system packages are unchanged by the addition.
    for p in &distro::embedded().packages {
        assert_eq!(c.package(&p.name), Some(p));
    }

    // The config layer picks the new section up from the schemas alone: it is
    // enabled by default, takes env overrides, and its init resolves from them.
    let opts = LoadOptions { env: vec![("SYSDEPLOY_SYSTEM_SERVICES__KV_STORE__GREETING".into(), "hi".into())], ..LoadOptions::default() };
    let cfg = config::load(&opts, &c.schemas()).unwrap();
    assert!(cfg.system_services.enable.contains(&pkg("kv-store")));
    let section = &cfg.system_services.packages[&pkg("kv-store")];
    assert_eq!(section["greeting"].value, json!("hi"));
    assert_eq!(kv.services[0].init[0].resolve(section).unwrap().calls, vec![vec![json!("hi")]]);
    let file = tmp.path().join("node.toml");
    std::fs::write(&file, "[system_services.kv_store]\ngreting = \"typo\"\n").unwrap();
    let err = config::load(&LoadOptions { config_path: Some(file), ..LoadOptions::default() }, &c.schemas()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("system_services.kv_store.greting") && msg.contains("node.toml"), "{msg}");
}

#[test]
fn legacy_env_names_of_the_manifests_work_and_lose_to_sysdeploy_names() {
    let schemas = distro::package_schemas();
    let load = |env: &[(&str, &str)]| {
        let opts = LoadOptions { env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..LoadOptions::default() };
        config::load(&opts, &schemas).unwrap()
    };
    let legacy = ("FLUENCE_ENV_DECIDER_IPFS_MULTIADDR", "/dns4/legacy/tcp/5001");
    let cfg = load(&[legacy]);
    let v = &cfg.system_services.packages[&pkg("decider")]["worker_ipfs_multiaddr"];
    assert_eq!(v.value, json!("/dns4/legacy/tcp/5001"));
    let cfg = load(&[legacy, ("SYSDEPLOY_SYSTEM_SERVICES__DECIDER__WORKER_IPFS_MULTIADDR", "/dns4/new/tcp/5001")]);
    let v = &cfg.system_services.packages[&pkg("decider")]["worker_ipfs_multiaddr"];
    assert_eq!(v.value, json!("/dns4/new/tcp/5001"));
    // The resolved spell KV follows the effective config.
    let decider = distro::embedded().package(&pkg("decider")).unwrap();
    let kv = decider.spells[0].resolve_kv(&cfg.system_services.packages[&pkg("decider")]).unwrap();
    assert_eq!(kv["worker_ipfs_multiaddr"].value, json!("/dns4/new/tcp/5001"));
}

#[test]
fn test_distros_load_and_differ_only_in_the_component() {
    let load = |v: &str| Catalog::load_dir(&repo().join("tests/distros").join(v)).unwrap();
    let (v1, v2, fail) = (load("v1"), load("v2"), load("fail-init"));
    let svc = |c: &Catalog| c.packages[0].services[0].clone();
    assert_ne!(svc(&v1).blueprint().id(), svc(&v2).blueprint().id());
    assert_ne!(svc(&v1).blueprint().id(), svc(&fail).blueprint().id());
    assert_eq!(svc(&v1).init, svc(&v2).init);
    assert_eq!(v1.packages[0].config, v2.packages[0].config);
}

// ----------------------------------------------------------- artifact lock

#[test]
fn committed_artifacts_match_the_lock() {
    if let Err(problems) = lock::check(&repo()) {
        panic!("{}", problems.join("\n"));
    }
}

#[test]
fn lock_check_detects_stale_sources_and_swapped_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for d in ["distros", "wit", "tests/distros"] {
        copy_dir(&repo().join(d), &t.join(d));
    }
    lock::check(t).unwrap();
    std::fs::write(t.join("distros/registry/guest/src/lib.rs"), "// edited without rebuilding\n").unwrap();
    std::fs::write(t.join("tests/distros/v2/kv-store/kv-store.wasm"), b"\0asm\x0d\0\x01\0").unwrap();
    let problems = lock::check(t).unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].starts_with("distros/registry/registry.wasm: its sources changed"), "{}", problems[0]);
    assert!(problems[1].starts_with("tests/distros/v2/kv-store/kv-store.wasm: the committed artifact is not"), "{}", problems[1]);
}

// -------------------------------------------------------- bundled contents

/// Public key of a trust fixture key (same derivation as `cargo xtask trust-certs`).
fn trust_key(label: &str) -> [u8; 32] {
    trust_sign::key(label).verifying_key().to_bytes()
}

#[test]
fn bundled_certificates_are_validly_signed_chains_from_the_root() {
    let dir = repo().join("distros/trust-graph");
    let roots: Value = serde_json::from_slice(&std::fs::read(dir.join("roots.json")).unwrap()).unwrap();
    let certs: Value = serde_json::from_slice(&std::fs::read(dir.join("certs.json")).unwrap()).unwrap();
    let root = roots[0]["peer"].as_str().unwrap();
    for cert in certs.as_array().unwrap() {
        let chain = cert["chain"].as_array().unwrap();
        assert_eq!(chain[0]["issued-for"], root);
        for (i, link) in chain.iter().enumerate() {
            let pk: [u8; 32] = hex::decode(link["issuer-public-key"].as_str().unwrap()).unwrap().try_into().unwrap();
            let issuer = PeerId::from_ed25519_public(&pk);
            let expected = if i == 0 { &link["issued-for"] } else { &chain[i - 1]["issued-for"] };
            assert_eq!(issuer.as_str(), expected.as_str().unwrap(), "link {i} breaks the chain");
            let for_ = link["issued-for"].as_str().unwrap();
            let mut m = b"sysdeploy-trust-v1\0".to_vec();
            m.extend_from_slice(&(for_.len() as u32).to_le_bytes());
            m.extend_from_slice(for_.as_bytes());
            m.extend_from_slice(&link["expires-at"].as_u64().unwrap().to_le_bytes());
            m.extend_from_slice(&link["issued-at"].as_u64().unwrap().to_le_bytes());
            let sig: [u8; 64] = hex::decode(link["signature"].as_str().unwrap()).unwrap().try_into().unwrap();
            ed25519_dalek::VerifyingKey::from_bytes(&pk)
                .unwrap()
                .verify_strict(&m, &ed25519_dalek::Signature::from_bytes(&sig))
                .unwrap_or_else(|e| panic!("link {i}: {e}"));
        }
    }
}

#[test]
fn spell_scripts_compile() {
    let engine = rhai::Engine::new();
    for p in &distro::embedded().packages {
        for s in &p.spells {
            engine.compile(&*s.script).unwrap_or_else(|e| panic!("{} ({}): {e}", s.alias, p.name));
        }
    }
}

// ------------------------------------------- the packages through the runtime

mod through_runtime {
    use super::*;
    use rhai::{Dynamic, Engine, ImmutableString};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use sysdeploy::distro::{Package, ServiceSpec};
    use sysdeploy::ids::ServiceId;
    use sysdeploy::runtime::{AliasTarget, CallError, Runtime, RuntimeConfig, RuntimeOptions};
    use sysdeploy::store::Store;

    fn host() -> PeerId {
        PeerId::from_ed25519_public(&[9u8; 32])
    }

    /// A runtime over a state directory that can be reopened (a restart).
    struct Node {
        dir: tempfile::TempDir,
        rt: Runtime,
    }

    fn open(dir: &Path) -> Runtime {
        let store = Store::open(&dir.join("state.db")).unwrap();
        let cfg = RuntimeConfig { state_dir: dir.to_path_buf(), call_ttl: Duration::from_secs(20), epoch_tick: Duration::from_millis(10) };
        Runtime::open_with(store, cfg, RuntimeOptions { host_peer: Some(host()), ..RuntimeOptions::default() }).unwrap()
    }

    impl Node {
        fn new() -> Node {
            let dir = tempfile::tempdir().unwrap();
            let rt = open(dir.path());
            Node { dir, rt }
        }

        fn restart(self) -> Node {
            let Node { dir, rt } = self;
            drop(rt);
            let rt = open(dir.path());
            Node { dir, rt }
        }

        /// Installs a service the way the deployer does: components with their
        /// build-time hashes, blueprint, service, alias, then its init calls
        /// resolved against `config`.
        async fn install(&self, svc: &ServiceSpec, config: &BTreeMap<String, Value>) -> ServiceId {
            for c in &svc.components {
                assert_eq!(self.rt.add_component(&c.bytes, Some(c.hash)).unwrap(), c.hash);
            }
            let bp = self.rt.put_blueprint(&svc.blueprint()).unwrap();
            assert_eq!(bp, svc.blueprint().id());
            let id = self.rt.create_service(&bp, &host()).await.unwrap();
            self.rt.bind_alias(&svc.alias, AliasTarget::Service(id.clone()), &host()).unwrap();
            for init in &svc.init {
                let r = init.resolve(config).unwrap();
                for args in r.calls {
                    let out = self.call(svc.alias.as_str(), &r.function, Value::Array(args)).await;
                    assert!(out.get("err").is_none(), "init {} failed: {out}", r.function);
                }
            }
            id
        }

        async fn call(&self, alias: &str, f: &str, args: Value) -> Value {
            self.rt.call(alias, f, args).await.unwrap_or_else(|e| panic!("{alias}.{f}: {e}"))
        }
    }

    fn system(name: &str) -> &'static Package {
        distro::embedded().package(&pkg(name)).unwrap()
    }

    fn err_text(v: &Value) -> String {
        v.get("err").and_then(Value::as_str).unwrap_or_else(|| panic!("expected an err result, got {v}")).to_string()
    }

    #[tokio::test]
    async fn aqua_ipfs_validates_stores_and_keeps_multiaddrs() {
        let p = system("aqua-ipfs");
        let node = Node::new();
        node.install(&p.services[0], &values(p, &[("external_api_multiaddr", json!("/dns4/ipfs.example.com/tcp/443/https"))])).await;
        assert_eq!(node.call("aqua-ipfs", "get-local-api-multiaddr", json!([])).await, json!({"ok": "/ip4/127.0.0.1/tcp/5001"}));
        assert_eq!(
            node.call("aqua-ipfs", "get-external-api-multiaddr", json!([])).await,
            json!({"ok": "/dns4/ipfs.example.com/tcp/443/https"})
        );
        for bad in ["127.0.0.1:5001", "/ip4/300.1.1.1/tcp/5001", "/ip4/127.0.0.1", "/ip4/127.0.0.1/tcp/99999", "/ip6/zz/tcp/1"] {
            let out = node.call("aqua-ipfs", "set-external-api-multiaddr", json!([bad])).await;
            assert!(err_text(&out).contains("is invalid"), "{bad}: {out}");
        }
        let out = node.call("aqua-ipfs", "set-local-api-multiaddr", json!(["/ip6/::1/tcp/5001"])).await;
        assert_eq!(out, json!({"ok": null}));
        // A restart needs no re-init: the values live in the data directory.
        let node = node.restart();
        assert_eq!(node.call("aqua-ipfs", "get-local-api-multiaddr", json!([])).await, json!({"ok": "/ip6/::1/tcp/5001"}));
        assert_eq!(
            node.call("aqua-ipfs", "get-external-api-multiaddr", json!([])).await,
            json!({"ok": "/dns4/ipfs.example.com/tcp/443/https"})
        );
    }

    use super::trust_sign::{key as signing_key, link, peer_id as peer};

    #[tokio::test]
    async fn trust_graph_weighs_chains_and_rejects_bad_signatures_and_expired_links() {
        let p = system("trust-graph");
        let node = Node::new();
        node.install(&p.services[0], &values(p, &[])).await;
        let (root, relay, worker) = (signing_key("root"), signing_key("relay"), signing_key("worker"));
        assert_eq!(peer(&root), PeerId::from_ed25519_public(root.verifying_key().as_bytes()).to_string(), "fixture ids match the node's");
        let weight = |peer: String| {
            let node = &node;
            async move { node.call("trust-graph", "get-weight", json!([peer])).await }
        };
        assert_eq!(weight(peer(&root)).await, json!(16));
        assert_eq!(weight(peer(&relay)).await, json!(8));
        assert_eq!(weight(peer(&worker)).await, json!(4));
        assert_eq!(weight(peer(&signing_key("nobody"))).await, Value::Null);
        let certs = node.call("trust-graph", "get-certs", json!([peer(&worker)])).await;
        assert_eq!(certs.as_array().unwrap().len(), 1);
        assert_eq!(certs[0]["chain"].as_array().unwrap().len(), 3);

        let (far, past) = (4_102_444_800u64, 1_700_000_000u64);
        let root_link = link(&root, &peer(&root), far, past);
        let newcomer = signing_key("newcomer");

        // A valid new chain is accepted, and inserting it twice is a no-op.
        let good = json!({"chain": [root_link.clone(), link(&root, &peer(&newcomer), far, past)]});
        assert_eq!(node.call("trust-graph", "insert-cert", json!([good.clone()])).await, json!({"ok": null}));
        assert_eq!(node.call("trust-graph", "insert-cert", json!([good])).await, json!({"ok": null}));
        assert_eq!(node.call("trust-graph", "get-certs", json!([peer(&newcomer)])).await.as_array().unwrap().len(), 1);

        // Tampering with a signed field breaks the signature.
        let mut tampered = link(&root, &peer(&newcomer), far, past);
        tampered["expires-at"] = json!(far + 1);
        let out = node.call("trust-graph", "insert-cert", json!([{"chain": [root_link.clone(), tampered]}])).await;
        assert!(err_text(&out).contains("link 1") && err_text(&out).contains("bad signature"), "{out}");

        // A link signed by someone who is not the previous link's subject.
        let out = node
            .call("trust-graph", "insert-cert", json!([{"chain": [root_link.clone(), link(&newcomer, &peer(&worker), far, past)]}]))
            .await;
        assert!(err_text(&out).contains("the chain is broken"), "{out}");

        // Expired links are rejected even when correctly signed.
        let out = node
            .call("trust-graph", "insert-cert", json!([{"chain": [root_link.clone(), link(&root, &peer(&newcomer), past + 10, past)]}]))
            .await;
        assert!(err_text(&out).contains("expired at"), "{out}");

        // Chains must start at a root.
        let stranger = signing_key("stranger");
        let out = node.call("trust-graph", "insert-cert", json!([{"chain": [link(&stranger, &peer(&stranger), far, past)]}])).await;
        assert!(err_text(&out).contains("is not a root"), "{out}");

        // Roots can be added at run time; the graph survives a restart.
        assert_eq!(node.call("trust-graph", "set-root", json!([peer(&stranger), 2])).await, json!({"ok": null}));
        let node = node.restart();
        assert_eq!(node.call("trust-graph", "get-weight", json!([peer(&stranger)])).await, json!(2));
        assert_eq!(node.call("trust-graph", "get-weight", json!([peer(&worker)])).await, json!(4));
    }

    #[tokio::test]
    async fn registry_keeps_newest_records_and_clears_expired_ones() {
        let p = system("registry");
        let node = Node::new();
        node.install(&p.services[0], &values(p, &[("expired_period_sec", json!(100))])).await;
        assert_eq!(node.call("registry", "get-expiry", json!([])).await, json!(100));
        let ok = json!({"ok": null});
        assert_eq!(node.call("registry", "register", json!(["a", "1", "12D3KooWA", 1000])).await, ok);
        assert_eq!(node.call("registry", "register", json!(["a", "2", "12D3KooWA", 1050])).await, ok);
        assert_eq!(node.call("registry", "register", json!(["b", "x", "12D3KooWB", 1010])).await, ok);
        let out = node.call("registry", "register", json!(["a", "old", "12D3KooWA", 900])).await;
        assert!(err_text(&out).contains("older than the stored one"), "{out}");
        assert_eq!(
            node.call("registry", "get", json!(["a"])).await,
            json!({"key": "a", "value": "2", "issuer": "12D3KooWA", "timestamp": 1050})
        );
        assert_eq!(node.call("registry", "get", json!(["zzz"])).await, Value::Null);
        // period 0 = the expiry set at init (100 s): b (1010) expires at 1110, a at 1150.
        assert_eq!(node.call("registry", "clear-expired", json!([1120, 0])).await, json!(1));
        assert_eq!(node.call("registry", "count", json!([])).await, json!(1));
        let node = node.restart();
        assert_eq!(node.call("registry", "clear-expired", json!([1200, 1000])).await, json!(0));
        assert_eq!(node.call("registry", "clear-expired", json!([2050, 1000])).await, json!(1));
        assert_eq!(node.call("registry", "count", json!([])).await, json!(0));
        assert!(err_text(&node.call("registry", "set-expiry", json!([0])).await).contains("at least 1"));
    }

    #[tokio::test]
    async fn connector_queue_survives_restart_and_wallet_key_init_is_optional() {
        let p = system("decider");
        let node = Node::new();
        // wallet_key unset: its init call is skipped.
        node.install(&p.services[0], &values(p, &[])).await;
        assert_eq!(node.call("connector", "has-wallet-key", json!([])).await, json!(false));
        for (i, item) in ["deal-1", "deal-2", "deal-3"].iter().enumerate() {
            assert_eq!(node.call("connector", "enqueue", json!([item])).await, json!(i + 1));
        }
        let polled = node.call("connector", "poll", json!([2])).await;
        assert_eq!(polled, json!([{"id": 1, "item": "deal-1"}, {"id": 2, "item": "deal-2"}]));
        assert_eq!(node.call("connector", "ack", json!([1])).await, json!({"ok": null}));
        assert!(err_text(&node.call("connector", "ack", json!([1])).await).contains("no queued item has id 1"));
        let node = node.restart();
        assert_eq!(node.call("connector", "pending", json!([])).await, json!(2));
        assert_eq!(node.call("connector", "enqueue", json!(["deal-4"])).await, json!(4), "ids are never reused");

        // With the secret set, the init call hands it over.
        let init = &p.services[0].init[0];
        let key = LookupFn(|k: &str| (k == "wallet_key").then(|| (json!("0xabc123"), true)));
        let r = init.resolve(&key).unwrap();
        assert_eq!(node.call("connector", &r.function, Value::Array(r.calls[0].clone())).await, json!({"ok": null}));
        assert_eq!(node.call("connector", "has-wallet-key", json!([])).await, json!(true));
        let out = node.call("connector", "set-wallet-key", json!(["has a space"])).await;
        assert!(!err_text(&out).contains("has a space"), "the key was echoed: {out}");
    }

    /// Runs a spell script once against the runtime, with the host API of the
    /// spell engine (`call`, `kv_*`, `now`, `log`, `spell_alias`, `peer_id`).
    async fn run_spell(rt: &Runtime, script: &str, alias: &str, kv: Arc<Mutex<BTreeMap<String, Value>>>, now: i64) {
        let (rt, script, alias) = (rt.clone(), script.to_string(), alias.to_string());
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut e = Engine::new();
            e.register_fn(
                "call_service",
                move |a: ImmutableString, f: ImmutableString, args: Dynamic| -> Result<Dynamic, Box<rhai::EvalAltResult>> {
                    let args: Value = rhai::serde::from_dynamic(&args)?;
                    let out = handle.block_on(rt.call(&a, &f, args)).map_err(|e| e.to_string())?;
                    rhai::serde::to_dynamic(out)
                },
            );
            let k = kv.clone();
            e.register_fn("kv_get", move |key: &str| -> Dynamic {
                k.lock().unwrap().get(key).map(|v| rhai::serde::to_dynamic(v).unwrap()).unwrap_or(Dynamic::UNIT)
            });
            let k = kv.clone();
            e.register_fn("kv_set", move |key: &str, v: Dynamic| {
                k.lock().unwrap().insert(key.to_string(), rhai::serde::from_dynamic(&v).unwrap());
            });
            let k = kv.clone();
            e.register_fn("kv_remove", move |key: &str| {
                k.lock().unwrap().remove(key);
            });
            e.register_fn("now", move || now);
            e.register_fn("log", |_level: &str, _msg: Dynamic| {});
            let a = alias.clone();
            e.register_fn("spell_alias", move || a.clone());
            e.register_fn("peer_id", || host().to_string());
            e.run(&script).unwrap_or_else(|err| panic!("spell {alias}: {err}"));
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn registry_spell_clears_expired_records() {
        let p = system("registry");
        let node = Node::new();
        let vals = values(p, &[]);
        node.install(&p.services[0], &vals).await;
        node.call("registry", "register", json!(["old", "v", "12D3KooWA", 1_000])).await;
        node.call("registry", "register", json!(["new", "v", "12D3KooWA", 100_000])).await;
        let spell = &p.spells[0];
        let kv: BTreeMap<String, Value> = spell.resolve_kv(&vals).unwrap().into_iter().map(|(k, r)| (k, r.value)).collect();
        let kv = Arc::new(Mutex::new(kv));
        run_spell(&node.rt, &spell.script, "registry-spell", kv.clone(), 100_000).await;
        assert_eq!(node.call("registry", "count", json!([])).await, json!(1));
        run_spell(&node.rt, &spell.script, "registry-spell", kv.clone(), 100_001).await;
        let kv = kv.lock().unwrap();
        assert_eq!((kv["total_cleared"].clone(), kv["last_cleared"].clone()), (json!(1), json!(0)));
        assert_eq!(kv["expired_period_sec"], json!(86400));
    }

    #[tokio::test]
    async fn decider_spell_drains_the_connector_queue() {
        let p = system("decider");
        let node = Node::new();
        let vals = values(p, &[]);
        node.install(&p.services[0], &vals).await;
        for i in 0..20 {
            node.call("connector", "enqueue", json!([format!("item-{i}")])).await;
        }
        let spell = &p.spells[0];
        let kv: BTreeMap<String, Value> = spell.resolve_kv(&vals).unwrap().into_iter().map(|(k, r)| (k, r.value)).collect();
        assert_eq!(kv["batch_size"], json!(16));
        let kv = Arc::new(Mutex::new(kv));
        run_spell(&node.rt, &spell.script, "decider", kv.clone(), 1).await;
        assert_eq!(node.call("connector", "pending", json!([])).await, json!(4));
        run_spell(&node.rt, &spell.script, "decider", kv.clone(), 2).await;
        assert_eq!(node.call("connector", "pending", json!([])).await, json!(0));
        assert_eq!(kv.lock().unwrap()["processed"], json!(20));
    }

    #[tokio::test]
    async fn kv_store_test_packages_behave_as_documented() {
        let load = |v: &str| Catalog::load_dir(&repo().join("tests/distros").join(v)).unwrap();
        let node = Node::new();
        let v1 = load("v1");
        let p = &v1.packages[0];
        let id = node.install(&p.services[0], &values(p, &[("greeting", json!("hi"))])).await;
        assert_eq!(node.call("kv-store", "greeting", json!([])).await, json!("hi"));
        node.call("kv-store", "put", json!(["k", "v"])).await;
        assert_eq!(node.call("kv-store", "get", json!(["k"])).await, json!("v"));
        assert_eq!(node.call("kv-store", "version", json!([])).await, json!(1));

        let v2 = load("v2");
        let svc2 = &v2.packages[0].services[0];
        for c in &svc2.components {
            node.rt.add_component(&c.bytes, Some(c.hash)).unwrap();
        }
        let bp2 = node.rt.put_blueprint(&svc2.blueprint()).unwrap();
        let id2 = node.rt.create_service(&bp2, &host()).await.unwrap();
        node.rt.copy_data(&id, &id2).await.unwrap();
        assert_eq!(node.call(id2.as_str(), "version", json!([])).await, json!(2));
        assert_eq!(node.call(id2.as_str(), "get", json!(["k"])).await, json!("v"), "data carried over");

        let fail = load("fail-init");
        let svcf = &fail.packages[0].services[0];
        for c in &svcf.components {
            node.rt.add_component(&c.bytes, Some(c.hash)).unwrap();
        }
        let bpf = node.rt.put_blueprint(&svcf.blueprint()).unwrap();
        let idf = node.rt.create_service(&bpf, &host()).await.unwrap();
        let err = node.rt.call(idf.as_str(), "set-greeting", json!(["x"])).await.unwrap_err();
        assert!(matches!(err, CallError::Trap { .. }), "{err}");
    }
}
