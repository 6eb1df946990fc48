//! Spells checked against services at plan time (issue 16): every literal
//! `call(alias, function, args)` of a desired spell is checked against the
//! exports of the service the alias will hold after the plan — the pure
//! planner over the real kv-store component's exports, and through the
//! binary (`plan` and `run --once` exit 2, nothing touched).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use sysdeploy::deploy::{self, AliasHolder, Current, Desired, DesiredPackage, DesiredService, DesiredSpell, DesiredTrigger, PlanError};
use sysdeploy::ids::{Alias, ComponentHash, PackageName, PeerId};
use sysdeploy::runtime::{Blueprint, BlueprintComponent};

fn kv_store_wasm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distros/v1/kv-store/kv-store.wasm")
}

fn host() -> PeerId {
    PeerId::from_ed25519_public(&[7; 32])
}

fn a(s: &str) -> Alias {
    Alias::new(s).unwrap()
}

fn pkg(s: &str) -> PackageName {
    PackageName::new(s).unwrap()
}

/// Package `store` deploys the kv-store component as `kv` (`put` private)
/// and the spell `tick`; package `other` deploys `spells` (one spell per
/// script, aliases `s0`, `s1`, ...).
fn desired(store_script: &str, scripts: &[&str]) -> Desired {
    let bytes = std::fs::read(kv_store_wasm()).unwrap();
    let hash = ComponentHash::of(&bytes);
    let bp = Blueprint::new(vec![BlueprintComponent { name: "kv-store".into(), hash, memory_limit_mb: None }]);
    let sigs = sysdeploy::runtime::inspect_exports(Path::new("/nonexistent"), None, &hash, &bytes).unwrap();
    let spell = |alias: &str, package: &str, script: &str| DesiredSpell {
        alias: a(alias),
        package: pkg(package),
        version: "1.0.0".into(),
        script_hash: sysdeploy::spell::script_hash(script),
        script: script.into(),
        trigger: DesiredTrigger { start: None, period_sec: 60, end: None },
        kv: BTreeMap::new(),
        secret_keys: vec![],
        kv_inputs: BTreeMap::new(),
    };
    let service = DesiredService {
        alias: a("kv"),
        package: pkg("store"),
        version: "1.0.0".into(),
        blueprint_id: bp.id(),
        blueprint: bp.clone(),
        keep_data: true,
        on_config_change: deploy::ConfigChange::Reinit,
        init: vec![],
        private: vec!["put".into()],
        snapshot_before_replace: false,
        restore_data_from: None,
    };
    Desired {
        packages: vec![
            DesiredPackage {
                name: pkg("store"),
                version: "1.0.0".into(),
                depends_on: vec![],
                migrates_from: None,
                services: vec![service],
                spells: vec![spell("tick", "store", store_script)],
            },
            DesiredPackage {
                name: pkg("other"),
                version: "1.0.0".into(),
                depends_on: vec![pkg("store")],
                migrates_from: None,
                services: vec![],
                spells: scripts.iter().enumerate().map(|(i, s)| spell(&format!("s{i}"), "other", s)).collect(),
            },
        ],
        exports: BTreeMap::from([(bp.id(), sigs)]),
        catalog_order: vec![pkg("store"), pkg("other")],
    }
}

/// The plan's spell-call problems, as text.
fn problems(d: &Desired, current: &Current) -> Vec<String> {
    match deploy::plan(d, current, &host()) {
        Ok(_) => vec![],
        Err(e) => {
            e.0.iter()
                .map(|e| {
                    assert!(matches!(e, PlanError::SpellCall { .. }), "only spell-call problems expected: {e}");
                    e.to_string()
                })
                .collect()
        }
    }
}

#[test]
fn literal_calls_that_fit_the_services_pass() {
    let ok = [
        // Arguments that are not literals are not type-checked; arity is.
        "let k = \"a\"; let v = kv_get(\"x\"); call(\"kv\", \"get\", [k]); call_service(\"kv\", \"greeting\");",
        // Not literal alias or function: left to run time.
        "let f = \"nope\"; call(\"kv\", f, [1, 2, 3]); let s = \"ghost\"; call(s, \"get\", []);",
        "call(\"kv\", \"version\", []); call(\"kv\", \"get\", [\"key\"]);",
    ];
    assert_eq!(problems(&desired("call(\"kv\", \"put\", [\"k\", \"v\"]);", &ok), &Current::default()), Vec::<String>::new());
}

#[test]
fn unknown_alias_unknown_function_arity_type_and_spell_alias_are_plan_errors() {
    let scripts = [
        "// line 1\ncall(\"ghost\", \"get\", [\"k\"]);",
        "\n\ncall_service(\"kv\", \"gett\", [\"k\"]);",
        "call(\"kv\", \"set-greeting\", [\"a\", \"b\"]);",
        "let x = 1;\ncall(\"kv\", \"get\", [42]);",
        "call(\"tick\", \"get\", [\"k\"]);",
    ];
    let p = problems(&desired("", &scripts), &Current::default());
    assert_eq!(p.len(), 5, "{p:#?}");
    let expect: [&[&str]; 5] = [
        &["package other, spell s0, line 2", "call(\"ghost\", \"get\")", "no service will be named \"ghost\"", "services: kv"],
        &["spell s1, line 3", "call(\"kv\", \"gett\")", "has no function \"gett\"", "it exports:", "set-greeting"],
        &["spell s2, line 1", "set-greeting takes 1 argument(s) (greeting: string), the call passes 2"],
        &["spell s3, line 2", "call(\"kv\", \"get\")", "parameter key: expected string, got 42"],
        &["spell s4, line 1", "\"tick\" is a spell, not a service"],
    ];
    for (msg, needles) in p.iter().zip(expect) {
        for n in needles {
            assert!(msg.contains(n), "missing {n:?} in {msg}");
        }
    }
}

#[test]
fn a_private_function_is_refused_to_other_packages_spells_only() {
    // `store`'s own spell may call its private `put`; `other`'s may not.
    let d = desired("call(\"kv\", \"put\", [\"k\", \"v\"]);", &["call(\"kv\", \"put\", [\"k\", \"v\"]);"]);
    let p = problems(&d, &Current::default());
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("spell s0") && p[0].contains("put is private to package store"), "{}", p[0]);
}

#[test]
fn aliases_are_checked_as_they_will_be_after_the_plan() {
    // Someone else's service keeps its alias (exports unknown: not checked);
    // the host's own leftover is removed by the plan, so calling it is wrong.
    let mut current = Current::default();
    let stranger = PeerId::from_ed25519_public(&[9; 32]);
    for (alias, owner) in [("theirs", &stranger), ("leftover", &host())] {
        current.aliases.insert(a(alias), AliasHolder { owner: owner.clone(), kind: "service".into(), target: "x".repeat(32) });
    }
    let d = desired("", &["call(\"theirs\", \"anything\", [1]);", "call(\"leftover\", \"get\", [\"k\"]);"]);
    let p = problems(&d, &current);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("spell s1") && p[0].contains("no service will be named \"leftover\""), "{}", p[0]);
}

// ------------------------------------------------------------ the binary

const BIN: &str = env!("CARGO_BIN_EXE_sysdeploy");

fn sysdeploy(state: &Path, distros: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .arg("--distros-dir")
        .arg(distros)
        .args(args)
        .env_remove("SYSDEPLOY_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn write_package(distros: &Path, script: &str) {
    let dir = distros.join("kv");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(kv_store_wasm(), dir.join("kv-store.wasm")).unwrap();
    std::fs::write(
        dir.join("distro.toml"),
        "[package]\nname = \"kv\"\nversion = \"0.1.0\"\n\n[[service]]\nalias = \"kv\"\ncomponents = [\"kv-store.wasm\"]\n\n\
         [[spell]]\nalias = \"filler\"\nscript = \"filler.rhai\"\ntrigger = { clock = { start = \"now\", period_sec = 3600 } }\n",
    )
    .unwrap();
    std::fs::write(dir.join("filler.rhai"), script).unwrap();
}

/// Every file under `root` with the blake3 of its bytes (the lock file's pid left out).
fn files(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if p.is_dir() {
                stack.push(p);
                out.insert(rel, "dir".into());
            } else if rel != "lock" {
                out.insert(rel, blake3::hash(&std::fs::read(&p).unwrap()).to_hex().to_string());
            }
        }
    }
    out
}

#[test]
fn plan_and_run_refuse_a_spell_calling_a_function_the_service_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, distros) = (tmp.path().join("state"), tmp.path().join("distros"));
    write_package(&distros, "call(\"kv\", \"put\", [\"n\", \"1\"]);");
    let out = sysdeploy(&state, &distros, &["run", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let before = files(&state);

    // The new script has a typo in the function name on its third line.
    write_package(&distros, "let v = \"1\";\n// fill\ncall(\"kv\", \"putt\", [\"n\", v]);");
    for args in [&["plan"][..], &["run", "--once"][..]] {
        let out = sysdeploy(&state, &distros, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for needle in ["package kv, spell filler, line 3", "call(\"kv\", \"putt\")", "has no function \"putt\"", "put"] {
            assert!(err.contains(needle), "{args:?}: missing {needle:?} in:\n{err}");
        }
    }
    assert_eq!(files(&state), before, "nothing in the state dir was touched");
}

#[test]
fn a_private_name_the_service_does_not_export_is_a_plan_error() {
    // A typo would leave the real function public: refused.
    let mut d = desired("", &[]);
    d.packages[0].services[0].private = vec!["put".into(), "set-greting".into()];
    let e = deploy::plan(&d, &Current::default(), &host()).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    let msg = e.0[0].to_string();
    assert!(
        msg.contains("package store, service kv: private function set-greting is not exported") && msg.contains("set-greeting"),
        "{msg}"
    );
}
