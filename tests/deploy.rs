//! Executor tests against a real runtime (wasmtime components built from
//! WAT), a real SQLite store in a temp dir, and an in-memory spell layer.

use serde_json::json;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use sysdeploy::deploy::*;
use sysdeploy::ids::*;
use sysdeploy::runtime::*;
use sysdeploy::store::Store;

/// A component keeping one u32 in a global; `version` tells builds apart;
/// `fail` makes `set-value` trap (an init that fails).
fn counter_wat(version: u32, fail: bool) -> Vec<u8> {
    let set_body = if fail { "unreachable" } else { "(global.set $v (local.get 0))" };
    wat::parse_str(format!(
        r#"(component
            (core module $m
              (global $v (mut i32) (i32.const 0))
              (func (export "set") (param i32) {set_body})
              (func (export "get") (result i32) (global.get $v))
              (func (export "version") (result i32) (i32.const {version})))
            (core instance $i (instantiate $m))
            (func (export "set-value") (param "v" u32) (canon lift (core func $i "set")))
            (func (export "get-value") (result u32) (canon lift (core func $i "get")))
            (func (export "version") (result u32) (canon lift (core func $i "version"))))"#
    ))
    .unwrap()
}

struct Components(HashMap<ComponentHash, Vec<u8>>);
impl ComponentSource for Components {
    fn bytes(&self, hash: &ComponentHash) -> Option<Cow<'_, [u8]>> {
        self.0.get(hash).map(|b| Cow::Borrowed(b.as_slice()))
    }
}

#[derive(Default)]
struct FakeSpells(Mutex<BTreeMap<Alias, (String, DesiredSpell)>>);
impl SpellOps for FakeSpells {
    fn install(&self, s: &DesiredSpell, _: &PeerId) -> Result<String, String> {
        let id = format!("spell-{}", s.alias);
        self.0.lock().unwrap().insert(s.alias.clone(), (id.clone(), s.clone()));
        Ok(id)
    }
    fn update(&self, s: &DesiredSpell, _: &PeerId) -> Result<(), String> {
        let mut m = self.0.lock().unwrap();
        let e = m.get_mut(&s.alias).ok_or("no spell")?;
        e.1 = s.clone();
        Ok(())
    }
    fn kv_apply(&self, s: &DesiredSpell) -> Result<Vec<String>, String> {
        self.update(s, &host())?;
        Ok(vec![])
    }
    fn remove(&self, alias: &Alias) -> Result<(), String> {
        self.0.lock().unwrap().remove(alias);
        Ok(())
    }
    fn id_of(&self, alias: &Alias) -> Option<String> {
        self.0.lock().unwrap().get(alias).map(|e| e.0.clone())
    }
}

fn host() -> PeerId {
    PeerId::from_ed25519_public(&[1; 32])
}

struct Node {
    _dir: tempfile::TempDir,
    deployer: Deployer,
    components: Arc<Components>,
}

fn node(policy: FailurePolicy) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let runtime = Runtime::open(store.clone(), RuntimeConfig::new(dir.path())).unwrap();
    let mut map = HashMap::new();
    for (v, fail) in [(1, false), (2, false), (3, true)] {
        let b = counter_wat(v, fail);
        map.insert(ComponentHash::of(&b), b);
    }
    let deployer = Deployer {
        runtime,
        spells: Arc::new(FakeSpells::default()),
        journal: journal::Journal::new(store),
        host: host(),
        policy: ApplyPolicy { on_failure: policy, ..Default::default() },
    };
    Node { _dir: dir, deployer, components: Arc::new(Components(map)) }
}

fn service(alias: &str, package: &str, version: u32, fail: bool, value: u32, on_change: ConfigChange) -> DesiredService {
    let hash = ComponentHash::of(&counter_wat(version, fail));
    let blueprint = Blueprint::new(vec![BlueprintComponent { name: "counter".into(), hash, memory_limit_mb: Some(16) }]);
    DesiredService {
        alias: Alias::new(alias).unwrap(),
        package: PackageName::new(package).unwrap(),
        version: format!("{version}.0.0"),
        blueprint_id: blueprint.id(),
        blueprint,
        keep_data: true,
        on_config_change: on_change,
        init: vec![ResolvedInit {
            function: "set-value".into(),
            args: vec![json!(value)],
            run: InitRun::OnChange,
            inputs: vec![ConfigInput { key: format!("system_services.{package}.value"), source: "default".into(), secret: false }],
        }],
        private: vec![],
        snapshot_before_replace: false,
        restore_data_from: None,
    }
}

fn desired(services: Vec<DesiredService>) -> Desired {
    let mut packages: Vec<DesiredPackage> = Vec::new();
    for s in services {
        match packages.iter_mut().find(|p| p.name == s.package) {
            Some(p) => p.services.push(s),
            None => packages.push(DesiredPackage {
                name: s.package.clone(),
                version: s.version.clone(),
                depends_on: vec![],
                migrates_from: None,
                services: vec![s],
                spells: vec![],
            }),
        }
    }
    Desired { packages, exports: Default::default(), catalog_order: vec![] }
}

impl Node {
    /// prepare → plan → apply, like a boot does.
    async fn deploy(&self, mut d: Desired) -> (Plan, Report) {
        self.deployer.recover().await.unwrap();
        d.exports = self.deployer.prepare(&d, self.components.clone()).await.unwrap();
        let current = self.deployer.current().unwrap();
        let p = plan(&d, &current, &host()).unwrap();
        let r = self.deployer.apply(&d, &p).await;
        (p, r)
    }
    async fn get(&self, alias: &str, f: &str) -> serde_json::Value {
        self.deployer.runtime.call(alias, f, json!([])).await.unwrap()
    }
    fn id_of(&self, alias: &str) -> ServiceId {
        match self.deployer.runtime.alias(&Alias::new(alias).unwrap()).unwrap().target {
            AliasTarget::Service(id) => id,
            t => panic!("{t:?}"),
        }
    }
}

#[tokio::test]
async fn install_then_noop_then_reinit_keeps_id() {
    let n = node(FailurePolicy::Stop);
    let (_, r) = n.deploy(desired(vec![service("counter", "pkg-a", 1, false, 7, ConfigChange::Reinit)])).await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    assert_eq!(n.get("counter", "get-value").await, json!(7));
    let id = n.id_of("counter");

    let (p, r) = n.deploy(desired(vec![service("counter", "pkg-a", 1, false, 7, ConfigChange::Reinit)])).await;
    assert!(p.is_noop(), "{p}");
    assert!(r.no_changes);
    assert_eq!(n.id_of("counter"), id);

    let (p, r) = n.deploy(desired(vec![service("counter", "pkg-a", 1, false, 9, ConfigChange::Reinit)])).await;
    assert!(matches!(p.steps[0], Step::Reinit { .. }), "{p}");
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(n.id_of("counter"), id, "reinit keeps the service id");
    assert_eq!(n.get("counter", "get-value").await, json!(9));
}

#[tokio::test]
async fn replace_on_component_change_swaps_alias_and_removes_old() {
    let n = node(FailurePolicy::Stop);
    n.deploy(desired(vec![service("counter", "pkg-a", 1, false, 7, ConfigChange::Reinit)])).await;
    let old = n.id_of("counter");
    let (p, r) = n.deploy(desired(vec![service("counter", "pkg-a", 2, false, 7, ConfigChange::Reinit)])).await;
    assert!(matches!(p.steps[0], Step::Replace { .. }), "{p}");
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    assert_ne!(n.id_of("counter"), old);
    assert_eq!(n.get("counter", "version").await, json!(2));
    assert!(n.deployer.runtime.resolve(old.as_str()).is_none(), "old service removed");
    assert_eq!(n.deployer.runtime.list_services().len(), 1);
}

#[tokio::test]
async fn failed_replace_leaves_old_service_bound_and_answering() {
    for policy in [FailurePolicy::Stop, FailurePolicy::Continue] {
        let n = node(policy);
        n.deploy(desired(vec![
            service("counter", "pkg-a", 1, false, 7, ConfigChange::Reinit),
            service("other", "pkg-b", 1, false, 1, ConfigChange::Reinit),
        ]))
        .await;
        let old = n.id_of("counter");
        let (_, r) = n
            .deploy(desired(vec![
                service("counter", "pkg-a", 3, true, 7, ConfigChange::Reinit),
                service("other", "pkg-b", 1, false, 2, ConfigChange::Reinit),
            ]))
            .await;
        let expected = if policy == FailurePolicy::Stop { Outcome::Failed } else { Outcome::Degraded };
        assert_eq!(r.outcome, expected);
        let f = r.failures().join("\n");
        assert!(f.contains("package pkg-a") && f.contains("alias counter") && f.contains("step replace") && f.contains("set-value"), "{f}");
        assert_eq!(n.id_of("counter"), old, "old service still bound");
        assert_eq!(n.get("counter", "get-value").await, json!(7));
        assert_eq!(n.get("counter", "version").await, json!(1));
        assert_eq!(n.deployer.runtime.list_services().len(), 2, "the half-made service was removed");
        assert!(n.deployer.journal.intents().unwrap().is_empty());
    }
}

#[tokio::test]
async fn disabled_package_is_removed_others_keep_ids() {
    let n = node(FailurePolicy::Stop);
    n.deploy(desired(vec![
        service("counter", "pkg-a", 1, false, 7, ConfigChange::Reinit),
        service("other", "pkg-b", 1, false, 1, ConfigChange::Reinit),
    ]))
    .await;
    let other = n.id_of("other");
    let (p, r) = n.deploy(desired(vec![service("other", "pkg-b", 1, false, 1, ConfigChange::Reinit)])).await;
    assert!(matches!(&p.steps[0], Step::Remove { reason, .. } if reason == "package pkg-a is not enabled"), "{p}");
    assert_eq!(r.outcome, Outcome::Ok);
    assert!(n.deployer.runtime.alias(&Alias::new("counter").unwrap()).is_none());
    assert_eq!(n.id_of("other"), other);
    assert_eq!(n.deployer.runtime.list_services().len(), 1);
}

#[tokio::test]
async fn alias_of_another_owner_is_a_conflict_and_untouched() {
    let n = node(FailurePolicy::Continue);
    // Someone else's service holds the alias.
    let stranger = PeerId::from_ed25519_public(&[9; 32]);
    let d = desired(vec![service("counter", "pkg-a", 1, false, 7, ConfigChange::Reinit)]);
    let mut d2 = d.clone();
    d2.exports = n.deployer.prepare(&d2, n.components.clone()).await.unwrap();
    let theirs = n.deployer.runtime.create_service(&d.packages[0].services[0].blueprint_id, &stranger).await.unwrap();
    n.deployer.runtime.bind_alias(&Alias::new("counter").unwrap(), AliasTarget::Service(theirs.clone()), &stranger).unwrap();
    n.deployer.runtime.call(theirs.as_str(), "set-value", json!([42])).await.unwrap();

    let (p, r) = n.deploy(d).await;
    assert!(matches!(&p.steps[0], Step::Conflict { owner, .. } if *owner == stranger), "{p}");
    assert_eq!(r.outcome, Outcome::Degraded);
    assert!(r.failures()[0].contains(stranger.as_str()));
    assert_eq!(n.id_of("counter"), theirs);
    assert_eq!(n.get("counter", "get-value").await, json!(42), "their service was not re-initialised");
    assert!(n.deployer.runtime.resolve(theirs.as_str()).is_some());
}

#[tokio::test]
async fn replace_on_change_policy_makes_a_new_service() {
    let n = node(FailurePolicy::Stop);
    n.deploy(desired(vec![service("counter", "pkg-a", 1, false, 7, ConfigChange::Replace)])).await;
    let old = n.id_of("counter");
    let (p, r) = n.deploy(desired(vec![service("counter", "pkg-a", 1, false, 8, ConfigChange::Replace)])).await;
    assert!(matches!(p.steps[0], Step::Replace { .. }), "{p}");
    assert_eq!(r.outcome, Outcome::Ok);
    assert_ne!(n.id_of("counter"), old);
    assert_eq!(n.get("counter", "get-value").await, json!(8));
}

#[tokio::test]
async fn recovery_rolls_back_unbound_install_and_finishes_swapped_replace() {
    let n = node(FailurePolicy::Stop);
    let d = desired(vec![service("counter", "pkg-a", 1, false, 7, ConfigChange::Reinit)]);
    n.deploy(d.clone()).await;
    let old = n.id_of("counter");

    // A replace interrupted after the swap: the new service is bound but the
    // old one still exists and the intent is still there.
    let d2 = desired(vec![service("counter", "pkg-a", 2, false, 7, ConfigChange::Reinit)]);
    let mut d2p = d2.clone();
    d2p.exports = n.deployer.prepare(&d2p, n.components.clone()).await.unwrap();
    let p = plan(&d2p, &n.deployer.current().unwrap(), &host()).unwrap();
    let new = n.deployer.runtime.create_service(&d2.packages[0].services[0].blueprint_id, &host()).await.unwrap();
    let mut entry = n.deployer.journal.deployed().unwrap()[&Alias::new("counter").unwrap()].clone();
    if let DeployedKind::Service { service_id, blueprint_id, .. } = &mut entry.kind {
        *service_id = new.clone();
        *blueprint_id = d2.packages[0].services[0].blueprint_id;
    }
    n.deployer
        .journal
        .put_intent(&journal::Intent {
            alias: p.steps[0].alias().clone(),
            package: p.steps[0].package().clone(),
            action: journal::Action::of(&p.steps[0]).unwrap(),
            phase: journal::Phase::Initialised,
            new_service: Some(new.clone()),
            entry: Some(entry),
        })
        .unwrap();
    n.deployer.runtime.rebind_alias(&Alias::new("counter").unwrap(), AliasTarget::Service(new.clone()), &host()).unwrap();
    // An install interrupted before binding: an orphan service.
    let orphan = n.deployer.runtime.create_service(&d.packages[0].services[0].blueprint_id, &host()).await.unwrap();

    let done = n.deployer.recover().await.unwrap();
    assert!(done.iter().any(|l| l.contains("finished interrupted replace")), "{done:?}");
    assert!(done.iter().any(|l| l.contains(orphan.as_str())), "{done:?}");
    assert!(n.deployer.runtime.resolve(old.as_str()).is_none());
    assert!(n.deployer.runtime.resolve(orphan.as_str()).is_none());
    assert_eq!(n.id_of("counter"), new);
    // And the plan now agrees nothing is left to do.
    let (p, _) = n.deploy(d2).await;
    assert!(p.is_noop(), "{p}");
}
