//! Planner unit tests: builders for desired/current states, assertions on plans.
use super::*;
use crate::ids::ComponentHash;
use crate::runtime::{Blueprint, BlueprintComponent, WitType};
use serde_json::json;

fn host() -> PeerId {
    PeerId::from_ed25519_public(&[1; 32])
}
fn other() -> PeerId {
    PeerId::from_ed25519_public(&[2; 32])
}
fn a(s: &str) -> Alias {
    Alias::new(s).unwrap()
}
fn pkg(s: &str) -> PackageName {
    PackageName::new(s).unwrap()
}
fn bp(n: u8) -> BlueprintId {
    BlueprintId([n; 32])
}

fn service(alias: &str, package: &str, blueprint: u8) -> DesiredService {
    DesiredService {
        alias: a(alias),
        package: pkg(package),
        version: "1.0.0".into(),
        blueprint: Blueprint::new(vec![BlueprintComponent {
            name: format!("{alias}.wasm"),
            hash: ComponentHash([blueprint; 32]),
            memory_limit_mb: None,
        }]),
        blueprint_id: bp(blueprint),
        keep_data: true,
        on_config_change: ConfigChange::Reinit,
        init: vec![],
        private: vec![],
        snapshot_before_replace: false,
        restore_data_from: None,
    }
}

fn with_init(mut s: DesiredService, function: &str, arg: serde_json::Value, key: &str, source: &str, secret: bool) -> DesiredService {
    s.init.push(ResolvedInit {
        function: function.into(),
        args: vec![arg],
        run: InitRun::OnChange,
        inputs: vec![ConfigInput { key: key.into(), source: source.into(), secret }],
    });
    s
}

fn spell(alias: &str, package: &str, script: &str, period: u64, kv: &[(&str, serde_json::Value)]) -> DesiredSpell {
    DesiredSpell {
        alias: a(alias),
        package: pkg(package),
        version: "1.0.0".into(),
        script_hash: blake3::hash(script.as_bytes()).to_hex().to_string(),
        script: script.into(),
        trigger: DesiredTrigger { start: None, period_sec: period, end: None },
        kv: kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        secret_keys: vec![],
        kv_inputs: Default::default(),
    }
}

fn desired(packages: Vec<(&str, Vec<DesiredService>, Vec<DesiredSpell>)>) -> Desired {
    Desired {
        packages: packages
            .into_iter()
            .map(|(n, services, spells)| DesiredPackage {
                name: pkg(n),
                version: "1.0.0".into(),
                depends_on: vec![],
                migrates_from: None,
                services,
                spells,
            })
            .collect(),
        exports: Default::default(),
        catalog_order: vec![],
    }
}

/// The current state right after a successful apply of `d` (what the
/// executor records), so tests can express "deployed, then config changed".
fn deployed_from(d: &Desired) -> Current {
    let mut c = Current { host: Some(host()), ..Default::default() };
    for p in &d.packages {
        for s in &p.services {
            let id = ServiceId::random();
            c.aliases.insert(s.alias.clone(), AliasHolder { owner: host(), kind: "service".into(), target: id.to_string() });
            c.services.insert(id.clone(), ObservedService { owner: host(), blueprint_id: s.blueprint_id, created_at: 0 });
            c.deployed.insert(
                s.alias.clone(),
                Deployed {
                    alias: s.alias.clone(),
                    package: s.package.clone(),
                    version: s.version.clone(),
                    kind: DeployedKind::Service {
                        service_id: id,
                        blueprint_id: s.blueprint_id,
                        components: s.components(),
                        init_hash: s.init_hash(),
                        init_snapshot: s.init_snapshot(),
                    },
                    created_at: 0,
                    updated_at: 0,
                },
            );
        }
        for s in &p.spells {
            c.aliases.insert(s.alias.clone(), AliasHolder { owner: host(), kind: "spell".into(), target: "sp".into() });
            c.spells.insert(s.alias.clone(), ObservedSpell { id: "sp".into(), owner: host() });
            c.deployed.insert(
                s.alias.clone(),
                Deployed {
                    alias: s.alias.clone(),
                    package: s.package.clone(),
                    version: s.version.clone(),
                    kind: DeployedKind::Spell {
                        spell_id: "sp".into(),
                        script_hash: s.script_hash.clone(),
                        trigger: s.trigger.clone(),
                        kv_applied: kv_applied_of(s),
                    },
                    created_at: 0,
                    updated_at: 0,
                },
            );
        }
    }
    c
}

fn kinds(p: &Plan) -> Vec<(String, &'static str)> {
    p.steps.iter().map(|s| (s.alias().to_string(), s.kind())).collect()
}

#[test]
fn fresh_state_installs_everything_in_package_order() {
    let d = desired(vec![
        ("registry", vec![service("registry", "registry", 1)], vec![spell("registry-spell", "registry", "x", 60, &[])]),
        ("decider", vec![service("connector", "decider", 2)], vec![]),
    ]);
    let p = plan(&d, &Current::default(), &host()).unwrap();
    assert_eq!(
        kinds(&p),
        vec![("registry".into(), "install"), ("registry-spell".into(), "install-spell"), ("connector".into(), "install")]
    );
    assert!(!p.is_noop());
}

#[test]
fn same_state_is_a_noop_and_says_no_changes() {
    let d = desired(vec![(
        "registry",
        vec![with_init(
            service("registry", "registry", 1),
            "set-expiry",
            json!(86400),
            "system_services.registry.expired_period_sec",
            "default",
            false,
        )],
        vec![spell("registry-spell", "registry", "x", 60, &[("expired_period_sec", json!(86400))])],
    )]);
    let c = deployed_from(&d);
    let p = plan(&d, &c, &host()).unwrap();
    assert!(p.is_noop(), "{p}");
    assert!(p.to_string().starts_with("no changes"));
}

#[test]
fn disabled_package_is_removed_with_its_spells_others_kept() {
    let full = desired(vec![
        ("registry", vec![service("registry", "registry", 1)], vec![spell("registry-spell", "registry", "x", 60, &[])]),
        ("decider", vec![service("connector", "decider", 2)], vec![]),
    ]);
    let c = deployed_from(&full);
    let shrunk = desired(vec![("decider", vec![service("connector", "decider", 2)], vec![])]);
    let p = plan(&shrunk, &c, &host()).unwrap();
    assert_eq!(kinds(&p), vec![("registry".into(), "remove"), ("registry-spell".into(), "remove-spell"), ("connector".into(), "keep")]);
    assert_eq!(p.steps[0].reason(), Some("package registry is not enabled"));
}

#[test]
fn init_arg_change_reinits_and_names_key_and_source() {
    let key = "system_services.registry.expired_period_sec";
    let before = desired(vec![(
        "registry",
        vec![with_init(service("registry", "registry", 1), "set-expiry", json!(86400), key, "default", false)],
        vec![],
    )]);
    let c = deployed_from(&before);
    let after = desired(vec![(
        "registry",
        vec![with_init(
            service("registry", "registry", 1),
            "set-expiry",
            json!(60),
            key,
            "env SYSDEPLOY_SYSTEM_SERVICES__REGISTRY__EXPIRED_PERIOD_SEC",
            false,
        )],
        vec![],
    )]);
    let p = plan(&after, &c, &host()).unwrap();
    match &p.steps[0] {
        Step::Reinit { functions, reason, service_id, .. } => {
            assert_eq!(functions, &vec!["set-expiry".to_string()]);
            assert!(reason.contains(key) && reason.contains("env SYSDEPLOY_SYSTEM_SERVICES__REGISTRY__EXPIRED_PERIOD_SEC"), "{reason}");
            let DeployedKind::Service { service_id: old, .. } = &c.deployed[&a("registry")].kind else { panic!() };
            assert_eq!(service_id, old);
        }
        s => panic!("expected reinit, got {s:?}"),
    }
}

#[test]
fn replace_on_change_policy_replaces() {
    let key = "system_services.decider.wallet_key";
    let mut s1 = with_init(service("connector", "decider", 2), "set-wallet-key", json!("k1"), key, "default", true);
    s1.on_config_change = ConfigChange::Replace;
    let c = deployed_from(&desired(vec![("decider", vec![s1.clone()], vec![])]));
    let mut s2 = with_init(service("connector", "decider", 2), "set-wallet-key", json!("k2-secret-value"), key, "env X", true);
    s2.on_config_change = ConfigChange::Replace;
    let p = plan(&desired(vec![("decider", vec![s2], vec![])]), &c, &host()).unwrap();
    match &p.steps[0] {
        Step::Replace { reason, keep_data, .. } => {
            assert!(reason.contains("(secret) changed"), "{reason}");
            assert!(*keep_data);
        }
        s => panic!("expected replace, got {s:?}"),
    }
    let text = format!("{p}{}", serde_json::to_string(&p).unwrap());
    assert!(!text.contains("k2-secret-value") && !text.contains("k1"), "secret leaked: {text}");
}

#[test]
fn on_install_init_change_is_not_a_change() {
    let mut s = service("trust-graph", "trust-graph", 3);
    s.init.push(ResolvedInit { function: "set-root".into(), args: vec![json!("a")], run: InitRun::OnInstall, inputs: vec![] });
    let c = deployed_from(&desired(vec![("trust-graph", vec![s.clone()], vec![])]));
    s.init[0].args = vec![json!("b")];
    let p = plan(&desired(vec![("trust-graph", vec![s], vec![])]), &c, &host()).unwrap();
    assert!(p.is_noop());
}

#[test]
fn component_change_replaces_and_says_which() {
    let c = deployed_from(&desired(vec![("registry", vec![service("registry", "registry", 1)], vec![])]));
    let mut s = service("registry", "registry", 9);
    s.version = "1.1.0".into();
    let p = plan(&desired(vec![("registry", vec![s], vec![])]), &c, &host()).unwrap();
    match &p.steps[0] {
        Step::Replace { reason, blueprint_id, .. } => {
            assert_eq!(*blueprint_id, bp(9));
            assert!(reason.contains("component registry.wasm changed") && reason.contains("1.0.0 → 1.1.0"), "{reason}");
        }
        s => panic!("expected replace, got {s:?}"),
    }
}

#[test]
fn alias_held_by_another_owner_is_a_conflict_naming_it() {
    let mut c = Current::default();
    c.aliases.insert(a("registry"), AliasHolder { owner: other(), kind: "service".into(), target: "abc".into() });
    let d = desired(vec![("registry", vec![service("registry", "registry", 1)], vec![spell("registry", "registry", "x", 1, &[])])]);
    // duplicate alias inside desired is an error first
    assert!(matches!(plan(&d, &c, &host()).unwrap_err().0[0], PlanError::DuplicateAlias { .. }));
    let d = desired(vec![("registry", vec![service("registry", "registry", 1)], vec![])]);
    let p = plan(&d, &c, &host()).unwrap();
    match &p.steps[0] {
        Step::Conflict { owner, reason, .. } => {
            assert_eq!(owner, &other());
            assert!(reason.contains(other().as_str()));
        }
        s => panic!("expected conflict, got {s:?}"),
    }
}

#[test]
fn spell_script_and_trigger_changes_update_in_place() {
    let c = deployed_from(&desired(vec![("registry", vec![], vec![spell("registry-spell", "registry", "v1", 60, &[])])]));
    let p = plan(&desired(vec![("registry", vec![], vec![spell("registry-spell", "registry", "v2", 60, &[])])]), &c, &host()).unwrap();
    assert!(matches!(&p.steps[0], Step::UpdateSpell { script: true, trigger: false, .. }), "{p:?}");
    let p = plan(&desired(vec![("registry", vec![], vec![spell("registry-spell", "registry", "v1", 30, &[])])]), &c, &host()).unwrap();
    match &p.steps[0] {
        Step::UpdateSpell { script: false, trigger: true, reason, .. } => {
            assert!(reason.contains("every 60s from now → every 30s from now"), "{reason}")
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn kv_apply_writes_only_keys_whose_configured_value_changed() {
    let before = spell("registry-spell", "registry", "v1", 60, &[("expired_period_sec", json!(86400)), ("renew_period_sec", json!(43200))]);
    let c = deployed_from(&desired(vec![("registry", vec![], vec![before])]));
    let mut after =
        spell("registry-spell", "registry", "v1", 60, &[("expired_period_sec", json!(100)), ("renew_period_sec", json!(43200))]);
    after.kv_inputs.insert(
        "expired_period_sec".into(),
        vec![ConfigInput { key: "system_services.registry.expired_period_sec".into(), source: "/etc/n.toml:4".into(), secret: false }],
    );
    let p = plan(&desired(vec![("registry", vec![], vec![after])]), &c, &host()).unwrap();
    match &p.steps[0] {
        Step::KvApply { keys, reason, .. } => {
            assert_eq!(keys, &vec!["expired_period_sec".to_string()]);
            assert!(reason.contains("/etc/n.toml:4"), "{reason}");
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn init_args_are_typechecked_against_exports() {
    use crate::runtime::FunctionSig;
    let key = "system_services.registry.expired_period_sec";
    let s = with_init(service("registry", "registry", 1), "set-expiry", json!("soon"), key, "/etc/n.toml:7", false);
    let mut d = desired(vec![("registry", vec![s], vec![])]);
    d.exports.insert(
        bp(1),
        vec![FunctionSig { name: "sysdeploy:registry/api#set-expiry".into(), params: vec![("sec".into(), WitType::U64)], results: vec![] }],
    );
    let errs = plan(&d, &Current::default(), &host()).unwrap_err();
    let msg = errs.to_string();
    assert!(
        msg.contains("package registry")
            && msg.contains("set-expiry")
            && msg.contains("parameter sec")
            && msg.contains("expected u64")
            && msg.contains("\"soon\"")
            && msg.contains("/etc/n.toml:7"),
        "{msg}"
    );
    // a missing function is reported too, with what is available
    d.packages[0].services[0].init[0].function = "nope".into();
    let msg = plan(&d, &Current::default(), &host()).unwrap_err().to_string();
    assert!(msg.contains("nope") && msg.contains("set-expiry"), "{msg}");
}

#[test]
fn plan_is_deterministic() {
    let d = desired(vec![("registry", vec![service("registry", "registry", 1)], vec![])]);
    let c = Current::default();
    assert_eq!(plan(&d, &c, &host()).unwrap(), plan(&d, &c, &host()).unwrap());
}
