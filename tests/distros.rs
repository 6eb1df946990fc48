//! Distro packages: manifest validation messages (data-driven from
//! `tests/ui/manifests/`), the embedded catalog, template resolution, adding a
//! package as a folder, the artifact lock and the bundled trust data.

#[allow(dead_code)] // render/parse are for xtask
#[path = "../xtask/src/lock.rs"]
mod lock;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use sysdeploy::config::schema::ValueType;
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
    let mut m: BTreeMap<String, Value> =
        p.config.keys.iter().filter_map(|k| Some((k.name.clone(), k.default.clone()?))).collect();
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
    for (k, d) in [("registry_period_sec", 3600), ("expired_period_sec", 86400), ("renew_period_sec", 43200), ("replicate_period_sec", 3600)] {
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
    let r = aqua.services[0].init[1].resolve(&values(aqua, &[("external_api_multiaddr", json!("/dns4/ipfs.example/tcp/443/https"))])).unwrap();
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
    assert_eq!(plain, BTreeMap::from([
        ("expired_period_sec", &json!(86400)),
        ("renew_period_sec", &json!(43200)),
        ("replicate_period_sec", &json!(3600)),
    ]));
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
    let seed = blake3::hash(format!("sysdeploy trust-graph fixture: {label}").as_bytes());
    ed25519_dalek::SigningKey::from_bytes(seed.as_bytes()).verifying_key().to_bytes()
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
