//! "What is recorded is what runs" (issue 12) and "validate everything
//! before touching anything" (issue 13, item 3): init calls that return
//! `err`, writes during a blue-green replace, the durability barrier before
//! an alias moves, identity and ownership, one observed truth for `plan` and
//! `recover`, versioned journal records, and plan-time refusal of bad
//! triggers, KV values and component imports.
//!
//! Library-level tests run the real executor over a real runtime (wasmtime
//! components: WAT fixtures and the committed kv-store builds), a real
//! SQLite store and the real spell layer; `cli` runs the binary.

use serde_json::json;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use sysdeploy::deploy::journal::{self, Journal};
use sysdeploy::deploy::*;
use sysdeploy::ids::*;
use sysdeploy::runtime::*;
use sysdeploy::spell::{ServiceCaller, SpellConfig, SpellDef, Spells, Start, Trigger};
use sysdeploy::store::Store;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn a(s: &str) -> Alias {
    Alias::new(s).unwrap()
}

fn host() -> PeerId {
    PeerId::from_ed25519_public(&[1; 32])
}

fn stranger() -> PeerId {
    PeerId::from_ed25519_public(&[9; 32])
}

/// A counter whose init `set-value: func(v: u32) -> result<_, string>`
/// rejects 0 with `err("value must not be zero")`.
fn checked_counter() -> Vec<u8> {
    wat::parse_str(
        r#"(component
            (core module $m
              (memory (export "memory") 1)
              (global $v (mut i32) (i32.const 0))
              (data (i32.const 64) "value must not be zero")
              (func (export "set") (param i32) (result i32)
                (if (i32.eqz (local.get 0))
                  (then
                    (i32.store8 (i32.const 16) (i32.const 1))
                    (i32.store (i32.const 20) (i32.const 64))
                    (i32.store (i32.const 24) (i32.const 22))
                    (return (i32.const 16))))
                (global.set $v (local.get 0))
                (i32.store8 (i32.const 16) (i32.const 0))
                (i32.const 16))
              (func (export "get") (result i32) (global.get $v)))
            (core instance $i (instantiate $m))
            (alias core export $i "memory" (core memory $mem))
            (type $r (result (error string)))
            (func (export "set-value") (param "v" u32) (result $r) (canon lift (core func $i "set") (memory $mem)))
            (func (export "get-value") (result u32) (canon lift (core func $i "get"))))"#,
    )
    .unwrap()
}

/// A component importing `wasi:keyvalue`, which the host does not provide
/// (it provides `wasi:http` since issue 16).
fn wants_http() -> Vec<u8> {
    wat::parse_str(
        r#"(component
            (import "wasi:keyvalue/store@0.2.0" (instance $h (export "ping" (func))))
            (core module $m (func (export "get") (result i32) (i32.const 1)))
            (core instance $i (instantiate $m))
            (func (export "get-value") (result u32) (canon lift (core func $i "get"))))"#,
    )
    .unwrap()
}

fn kv_store(build: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/distros").join(build).join("kv-store/kv-store.wasm")).unwrap()
}

struct Components(HashMap<ComponentHash, Vec<u8>>);
impl ComponentSource for Components {
    fn bytes(&self, hash: &ComponentHash) -> Option<Cow<'_, [u8]>> {
        self.0.get(hash).map(|b| Cow::Borrowed(b.as_slice()))
    }
}

struct NoServices;
impl ServiceCaller for NoServices {
    fn call(
        &self,
        _: &str,
        _: &str,
        _: serde_json::Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, String>> + Send + '_>> {
        Box::pin(async { Err("no services in this test".to_string()) })
    }
}

/// The real spell layer behind the executor's trait (as `node.rs` does).
struct RealSpells(Spells);
fn def(s: &DesiredSpell, owner: &PeerId) -> SpellDef {
    SpellDef {
        alias: s.alias.clone(),
        owner: owner.clone(),
        script: s.script.clone(),
        script_hash: s.script_hash.clone(),
        trigger: Trigger { start: s.trigger.start.map_or(Start::Now, Start::At), period_sec: s.trigger.period_sec, end: s.trigger.end },
    }
}
impl SpellOps for RealSpells {
    fn install(&self, s: &DesiredSpell, owner: &PeerId) -> Result<String, String> {
        self.0.install(&def(s, owner), &s.kv).map(|id| id.to_string()).map_err(|e| e.to_string())
    }
    fn update(&self, s: &DesiredSpell, owner: &PeerId) -> Result<(), String> {
        self.0.update(&def(s, owner)).map_err(|e| e.to_string())
    }
    fn kv_apply(&self, s: &DesiredSpell) -> Result<Vec<String>, String> {
        self.0.kv_apply(&s.alias, &s.kv).map_err(|e| e.to_string())
    }
    fn remove(&self, alias: &Alias) -> Result<(), String> {
        if self.0.get(alias).is_none() {
            return Ok(());
        }
        self.0.remove(alias).map_err(|e| e.to_string())
    }
    fn id_of(&self, alias: &Alias) -> Option<String> {
        self.0.get(alias).map(|r| r.id.to_string())
    }
}

struct Node {
    _dir: tempfile::TempDir,
    deployer: Deployer,
    spells: Spells,
    components: Arc<Components>,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let runtime =
        Runtime::open_with(store.clone(), RuntimeConfig::new(dir.path()), RuntimeOptions { host_peer: Some(host()), ..Default::default() })
            .unwrap();
    let spells = Spells::new(store.clone(), Arc::new(NoServices), SpellConfig::new(host()));
    let mut map = HashMap::new();
    for b in [checked_counter(), wants_http(), kv_store("v1"), kv_store("v2")] {
        map.insert(ComponentHash::of(&b), b);
    }
    let deployer = Deployer {
        runtime,
        spells: Arc::new(RealSpells(spells.clone())),
        journal: Journal::new(store),
        host: host(),
        policy: ApplyPolicy { on_failure: FailurePolicy::Continue, ..Default::default() },
    };
    Node { _dir: dir, deployer, spells, components: Arc::new(Components(map)) }
}

fn blueprint(bytes: &[u8], name: &str) -> Blueprint {
    Blueprint::new(vec![BlueprintComponent { name: name.into(), hash: ComponentHash::of(bytes), memory_limit_mb: Some(64) }])
}

fn service(alias: &str, package: &str, bp: Blueprint, init: Vec<(&str, serde_json::Value)>, on_change: ConfigChange) -> DesiredService {
    DesiredService {
        alias: a(alias),
        package: PackageName::new(package).unwrap(),
        version: "1.0.0".into(),
        blueprint_id: bp.id(),
        blueprint: bp,
        keep_data: true,
        on_config_change: on_change,
        init: init
            .into_iter()
            .map(|(f, arg)| ResolvedInit {
                function: f.into(),
                args: vec![arg],
                run: InitRun::OnChange,
                inputs: vec![ConfigInput { key: format!("system_services.{package}.value"), source: "default".into(), secret: false }],
            })
            .collect(),
        private: vec![],
        snapshot_before_replace: false,
        restore_data_from: None,
    }
}

fn counter(alias: &str, value: u32, on_change: ConfigChange) -> DesiredService {
    service(alias, "pkg-c", blueprint(&checked_counter(), "counter"), vec![("set-value", json!(value))], on_change)
}

fn kv(alias: &str, build: &str) -> DesiredService {
    service(alias, "pkg-kv", blueprint(&kv_store(build), "kv-store"), vec![("set-greeting", json!("hi"))], ConfigChange::Reinit)
}

fn spell(alias: &str, package: &str) -> DesiredSpell {
    let script = "kv_set(\"ran\", true);".to_string();
    DesiredSpell {
        alias: a(alias),
        package: PackageName::new(package).unwrap(),
        version: "1.0.0".into(),
        script_hash: sysdeploy::spell::script_hash(&script),
        script,
        trigger: DesiredTrigger { start: None, period_sec: 3600, end: None },
        kv: [("k".to_string(), json!(1))].into(),
        secret_keys: vec![],
        kv_inputs: Default::default(),
    }
}

fn desired(services: Vec<DesiredService>, spells: Vec<DesiredSpell>) -> Desired {
    let mut packages: Vec<DesiredPackage> = Vec::new();
    let mut add = |name: &PackageName| -> usize {
        if let Some(i) = packages.iter().position(|p| p.name == *name) {
            return i;
        }
        packages.push(DesiredPackage {
            name: name.clone(),
            version: "1.0.0".into(),
            depends_on: vec![],
            migrates_from: None,
            services: vec![],
            spells: vec![],
        });
        packages.len() - 1
    };
    let mut out_services = Vec::new();
    for s in services {
        out_services.push((add(&s.package), s));
    }
    let mut out_spells = Vec::new();
    for s in spells {
        out_spells.push((add(&s.package), s));
    }
    for (i, s) in out_services {
        packages[i].services.push(s);
    }
    for (i, s) in out_spells {
        packages[i].spells.push(s);
    }
    Desired { packages, exports: Default::default(), catalog_order: vec![] }
}

impl Node {
    /// recover → exports → prepare → plan → apply, like a boot.
    async fn deploy(&self, mut d: Desired) -> (Plan, Report) {
        self.deployer.recover().await.unwrap();
        d.exports = self.deployer.exports(&d, self.components.clone()).await.unwrap();
        self.deployer.prepare(&d, self.components.clone()).await.unwrap();
        let p = self.plan(&d);
        let r = self.deployer.apply(&d, &p).await;
        (p, r)
    }
    fn plan(&self, d: &Desired) -> Plan {
        plan(d, &self.deployer.current().unwrap(), &host()).unwrap()
    }
    async fn call(&self, alias: &str, f: &str, args: serde_json::Value) -> serde_json::Value {
        self.deployer.runtime.call(alias, f, args).await.unwrap_or_else(|e| panic!("{alias}.{f}: {e}"))
    }
    fn target(&self, alias: &str) -> Option<AliasTarget> {
        self.deployer.runtime.alias(&a(alias)).map(|b| b.target)
    }
    fn id_of(&self, alias: &str) -> ServiceId {
        match self.target(alias) {
            Some(AliasTarget::Service(id)) => id,
            t => panic!("{alias}: {t:?}"),
        }
    }
    fn intents(&self) -> Vec<journal::Intent> {
        self.deployer.journal.intents().unwrap()
    }
}

fn kinds(p: &Plan) -> Vec<(String, &'static str)> {
    p.steps.iter().filter(|s| s.is_change()).map(|s| (s.alias().to_string(), s.kind())).collect()
}

/// Item 1: an init call whose WIT result is `err` fails its step like a trap.
mod init_err {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_err_result_fails_install_reinit_and_replace_and_keeps_the_old_record() {
        let n = node();
        // Install with a rejected value: failed, nothing left behind.
        let (_, r) = n.deploy(desired(vec![counter("counter", 0, ConfigChange::Reinit)], vec![])).await;
        assert_eq!(r.outcome, Outcome::Degraded, "{r:#?}");
        let f = r.failures().join("\n");
        for needle in ["package pkg-c", "alias counter", "step install", "set-value", "value must not be zero"] {
            assert!(f.contains(needle), "{needle:?} missing from {f}");
        }
        assert!(n.target("counter").is_none());
        assert!(n.deployer.runtime.list_services().is_empty(), "the rejected service was removed");
        assert!(n.intents().is_empty());

        // A good install, then a reinit with a rejected value.
        let (_, r) = n.deploy(desired(vec![counter("counter", 7, ConfigChange::Reinit)], vec![])).await;
        assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
        let id = n.id_of("counter");
        let bad = desired(vec![counter("counter", 0, ConfigChange::Reinit)], vec![]);
        let (p, r) = n.deploy(bad.clone()).await;
        assert_eq!(kinds(&p), vec![("counter".into(), "reinit")]);
        assert_eq!(r.outcome, Outcome::Degraded);
        assert!(r.failures().join("\n").contains("value must not be zero"), "{r:#?}");
        assert!(n.intents().is_empty());
        // The previous record stays: the plan still shows the change.
        assert_eq!(kinds(&n.plan(&bad)), vec![("counter".into(), "reinit")]);
        assert_eq!(n.id_of("counter"), id);

        // Replace-on-change with a rejected value: the old service stays bound.
        let (_, r) = n.deploy(desired(vec![counter("counter", 7, ConfigChange::Replace)], vec![])).await;
        assert_eq!(r.outcome, Outcome::Ok);
        let bad = desired(vec![counter("counter", 0, ConfigChange::Replace)], vec![]);
        let (p, r) = n.deploy(bad.clone()).await;
        assert_eq!(kinds(&p), vec![("counter".into(), "replace")]);
        assert_eq!(r.outcome, Outcome::Degraded);
        assert_eq!(n.id_of("counter"), id, "the old service is still bound");
        assert_eq!(n.call("counter", "get-value", json!([])).await, json!(7));
        assert_eq!(n.deployer.runtime.list_services().len(), 1, "the rejected new service was removed");
        assert_eq!(kinds(&n.plan(&bad)), vec![("counter".into(), "replace")]);
    }
}

/// Item 2: calls to the old service wait from the copy until the alias moved.
mod hold {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_write_during_a_replace_lands_in_the_new_service() {
        let n = Arc::new(node());
        n.deploy(desired(vec![kv("hold-kv", "v1")], vec![])).await;
        n.call("hold-kv", "put", json!(["before", "1"])).await;
        let old = n.id_of("hold-kv");

        // Stop the replace right after the data copy.
        let (reached_tx, reached_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = std::sync::Mutex::new(go_rx);
        let reached_tx = std::sync::Mutex::new(reached_tx);
        sysdeploy::failpoint::trace::add_hook(move |e| {
            if e == "copied hold-kv" {
                reached_tx.lock().unwrap().send(()).unwrap();
                go_rx.lock().unwrap().recv().unwrap();
            }
        });
        let deploying = {
            let n = n.clone();
            tokio::spawn(async move { n.deploy(desired(vec![kv("hold-kv", "v2")], vec![])).await })
        };
        tokio::task::spawn_blocking(move || reached_rx.recv().unwrap()).await.unwrap();

        // A write through the alias while the copy is done and the alias not
        // yet moved: it must not be applied to the old service and dropped.
        let writer = {
            let rt = n.deployer.runtime.clone();
            tokio::spawn(async move { rt.call("hold-kv", "put", json!(["during", "2"])).await })
        };
        // Observable: the call is admitted on the old service and waiting.
        while n.deployer.runtime.calls_in_flight(&old) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!writer.is_finished(), "the write ran on the old service during the replace");
        go_tx.send(()).unwrap();
        let (_, r) = deploying.await.unwrap();
        assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
        writer.await.unwrap().expect("the held write is answered once the alias moved");

        assert_ne!(n.id_of("hold-kv"), old);
        assert_eq!(n.call("hold-kv", "version", json!([])).await, json!(2));
        assert_eq!(n.call("hold-kv", "get", json!(["before"])).await, json!("1"));
        assert_eq!(n.call("hold-kv", "get", json!(["during"])).await, json!("2"), "an acknowledged write was lost");
        let held = sysdeploy::failpoint::trace::events().into_iter().find(|e| e.starts_with("held hold-kv "));
        assert!(held.is_some(), "the hold was not recorded");
    }

    /// Many concurrent writers through a replace: every acknowledged write
    /// is in the new service.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_acknowledged_write_is_lost_across_a_replace() {
        let n = Arc::new(node());
        n.deploy(desired(vec![kv("busy-kv", "v1")], vec![])).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for w in 0..4 {
            let (rt, stop, acked) = (n.deployer.runtime.clone(), stop.clone(), acked.clone());
            writers.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("w{w}-{i}");
                    if rt.call("busy-kv", "put", json!([key, "x"])).await.is_ok() {
                        acked.lock().unwrap().push(key);
                    }
                    i += 1;
                }
            }));
        }
        while acked.lock().unwrap().len() < 20 {
            tokio::task::yield_now().await;
        }
        let (_, r) = n.deploy(desired(vec![kv("busy-kv", "v2")], vec![])).await;
        assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
        let after = acked.lock().unwrap().len();
        while acked.lock().unwrap().len() < after + 20 {
            tokio::task::yield_now().await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let keys = acked.lock().unwrap().clone();
        let mut lost = Vec::new();
        for k in &keys {
            if n.call("busy-kv", "get", json!([k])).await != json!("x") {
                lost.push(k.clone());
            }
        }
        assert!(lost.is_empty(), "{} of {} acknowledged writes lost: {lost:?}", lost.len(), keys.len());
    }
}

/// Item 3: data is synced before the commit that points an alias at it; the
/// old data dir goes only after.
mod durability {
    use super::*;

    fn position(events: &[String], what: &str) -> usize {
        events.iter().position(|e| e == what).unwrap_or_else(|| panic!("{what:?} not recorded in {events:#?}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_is_synced_before_the_alias_moves_and_the_old_service_goes_after() {
        sysdeploy::failpoint::trace::enable();
        let n = node();
        n.deploy(desired(vec![kv("durable-kv", "v1")], vec![])).await;
        let first = n.id_of("durable-kv");
        let ev = sysdeploy::failpoint::trace::events();
        assert!(
            position(&ev, &format!("synced {first}")) < position(&ev, &format!("bound durable-kv -> Service({first:?})")),
            "install: {ev:#?}"
        );

        n.deploy(desired(vec![kv("durable-kv", "v2")], vec![])).await;
        let second = n.id_of("durable-kv");
        let ev = sysdeploy::failpoint::trace::events();
        let synced = position(&ev, &format!("synced {second}"));
        let bound = position(&ev, &format!("bound durable-kv -> Service({second:?})"));
        let removed = position(&ev, &format!("removed {first}"));
        assert!(synced < bound && bound < removed, "replace: sync {synced}, alias {bound}, old removed {removed}: {ev:#?}");

        let mut reinit = kv("durable-kv", "v2");
        reinit.init[0].args = vec![json!("bye")];
        n.deploy(desired(vec![reinit], vec![])).await;
        let ev = sysdeploy::failpoint::trace::events();
        let synced = ev.iter().rposition(|e| *e == format!("synced {second}")).unwrap();
        assert!(synced < position(&ev, "recorded durable-kv"), "reinit: {ev:#?}");
    }
}

/// Item 5: identity is never replaced; another peer's service is never
/// removed or re-aliased.
mod identity {
    use super::*;

    #[test]
    fn a_store_without_its_key_is_refused_and_not_rekeyed() {
        let dir = tempfile::tempdir().unwrap();
        drop(sysdeploy::state::StateDir::open_exclusive(dir.path()).unwrap());
        drop(Store::open(&dir.path().join("state.db")).unwrap());
        std::fs::remove_file(dir.path().join("node.key")).unwrap();
        let e = sysdeploy::state::StateDir::open_exclusive(dir.path()).unwrap_err().to_string();
        assert!(e.contains("node identity") && e.contains("missing") && e.contains("restore node.key from a backup"), "{e}");
        assert!(!dir.path().join("node.key").exists(), "a new key was written");
        let e = sysdeploy::state::StateDir::open_shared(dir.path()).unwrap_err().to_string();
        assert!(e.contains("restore node.key"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_service_of_another_peer_is_never_removed_or_realiased() {
        let n = node();
        let d = desired(vec![counter("theirs", 5, ConfigChange::Reinit)], vec![]);
        n.deployer.prepare(&d, n.components.clone()).await.unwrap();
        let bp = d.packages[0].services[0].blueprint_id;
        // Recorded as ours (an entry), but the service is another peer's and
        // so is the alias.
        let theirs = n.deployer.runtime.create_service(&bp, &stranger()).await.unwrap();
        n.deployer.runtime.call(theirs.as_str(), "set-value", json!([42])).await.unwrap();
        n.deployer
            .journal
            .upsert(&Deployed {
                alias: a("theirs"),
                package: PackageName::new("pkg-c").unwrap(),
                version: "1.0.0".into(),
                kind: DeployedKind::Service {
                    service_id: theirs.clone(),
                    blueprint_id: bp,
                    components: vec![],
                    init_hash: String::new(),
                    init_snapshot: vec![],
                },
                created_at: 0,
                updated_at: 0,
            })
            .unwrap();

        // Wanted with a changed config: not re-initialised, not re-aliased.
        let (p, _) = n.deploy(d.clone()).await;
        assert!(matches!(&p.steps[0], Step::Conflict { owner, .. } if *owner == stranger()), "{p}");
        assert!(n.target("theirs").is_none(), "the alias was bound to something");
        assert_eq!(n.call(theirs.as_str(), "get-value", json!([])).await, json!(42));

        // Bound by its owner, then the package disabled: not removed.
        n.deployer.runtime.bind_alias(&a("theirs"), AliasTarget::Service(theirs.clone()), &stranger()).unwrap();
        let (p, _) = n.deploy(desired(vec![], vec![])).await;
        assert!(matches!(&p.steps[0], Step::Remove { .. }), "{p}");
        assert!(n.deployer.runtime.resolve(theirs.as_str()).is_some(), "another peer's service was removed");
        assert_eq!(n.target("theirs"), Some(AliasTarget::Service(theirs.clone())));
        assert_eq!(n.call("theirs", "get-value", json!([])).await, json!(42));
    }
}

/// Item 6: one observed truth; every disagreement is a repair that converges
/// in one deployment.
mod observed {
    use super::*;

    async fn converged(n: &Node, d: &Desired) {
        let p = n.plan(d);
        assert!(p.is_noop(), "not converged in one deployment: {p}");
        assert!(n.intents().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_alias_that_changes_kind_converges_in_one_deployment() {
        let n = node();
        let as_spell = desired(vec![], vec![spell("shifty", "pkg-s")]);
        n.deploy(as_spell.clone()).await;
        assert!(matches!(n.target("shifty"), Some(AliasTarget::Spell(_))));

        let as_service = desired(vec![counter("shifty", 3, ConfigChange::Reinit)], vec![]);
        let (p, r) = n.deploy(as_service.clone()).await;
        assert_eq!(r.outcome, Outcome::Ok, "{p}\n{r:#?}");
        assert_eq!(n.call("shifty", "get-value", json!([])).await, json!(3));
        assert!(n.spells.get(&a("shifty")).is_none(), "the spell is gone");
        converged(&n, &as_service).await;

        let (p, r) = n.deploy(as_spell.clone()).await;
        assert_eq!(r.outcome, Outcome::Ok, "{p}\n{r:#?}");
        assert!(matches!(n.target("shifty"), Some(AliasTarget::Spell(_))));
        assert!(n.deployer.runtime.list_services().is_empty());
        converged(&n, &as_spell).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unbound_or_redirected_alias_is_repaired() {
        let n = node();
        let d = desired(vec![counter("fixme", 4, ConfigChange::Reinit)], vec![spell("fixme-spell", "pkg-c")]);
        n.deploy(d.clone()).await;
        let id = n.id_of("fixme");

        // Unbound.
        n.deployer.runtime.unbind_alias(&a("fixme"), &host()).unwrap();
        n.deployer.runtime.unbind_alias(&a("fixme-spell"), &host()).unwrap();
        let p = n.plan(&d);
        assert_eq!(kinds(&p), vec![("fixme".into(), "repair"), ("fixme-spell".into(), "repair")], "{p}");
        assert!(p.steps.iter().all(|s| s.kind() != "repair" || s.reason().unwrap().contains("alias is not bound")), "{p}");
        let (_, r) = n.deploy(d.clone()).await;
        assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
        assert_eq!(n.id_of("fixme"), id);
        converged(&n, &d).await;

        // Pointing at another host service nobody recorded.
        let stray = n.deployer.runtime.create_service(&d.packages[0].services[0].blueprint_id, &host()).await.unwrap();
        n.deployer.runtime.rebind_alias(&a("fixme"), AliasTarget::Service(stray.clone()), &host()).unwrap();
        let p = n.plan(&d);
        assert!(
            matches!(&p.steps[0], Step::Repair { reason, .. } if reason.contains(stray.as_str()) && reason.contains(id.as_str())),
            "{p}"
        );
        let (_, r) = n.deploy(d.clone()).await;
        assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
        assert_eq!(n.id_of("fixme"), id);
        assert!(n.deployer.runtime.resolve(stray.as_str()).is_none(), "the stray service was removed");
        converged(&n, &d).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unbound_alias_and_a_config_change_converge_in_one_deployment() {
        let n = node();
        n.deploy(desired(vec![counter("both", 4, ConfigChange::Reinit)], vec![])).await;
        let id = n.id_of("both");
        n.deployer.runtime.unbind_alias(&a("both"), &host()).unwrap();
        let d = desired(vec![counter("both", 5, ConfigChange::Reinit)], vec![]);
        assert_eq!(kinds(&n.plan(&d)), vec![("both".into(), "repair"), ("both".into(), "reinit")]);
        let (_, r) = n.deploy(d.clone()).await;
        assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
        assert_eq!(n.id_of("both"), id);
        assert_eq!(n.call("both", "get-value", json!([])).await, json!(5));
        converged(&n, &d).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spell_without_an_entry_is_removed_and_a_lost_service_reinstalled() {
        let n = node();
        let d = desired(vec![counter("lost", 4, ConfigChange::Reinit)], vec![]);
        n.deploy(d.clone()).await;
        // A spell nobody recorded.
        n.spells.install(&def(&spell("ghost", "pkg-x"), &host()), &Default::default()).unwrap();
        // The recorded service vanished (its alias with it).
        let id = n.id_of("lost");
        n.deployer.runtime.remove_service(&id, false).await.unwrap();
        let p = n.plan(&d);
        assert_eq!(kinds(&p), vec![("ghost".into(), "remove-spell"), ("lost".into(), "install")], "{p}");
        let (_, r) = n.deploy(d.clone()).await;
        assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
        assert!(n.spells.get(&a("ghost")).is_none());
        assert_eq!(n.call("lost", "get-value", json!([])).await, json!(4));
        converged(&n, &d).await;
    }
}

/// Item 7: versioned journal records; rows in the format of releases before
/// them still decode and recover.
mod records {
    use super::*;

    /// Rows as the unversioned release wrote them (`tests/fixtures/journal-v0.json`).
    fn fixture(replacements: &[(&str, String)]) -> serde_json::Value {
        let mut text = std::fs::read_to_string(repo().join("tests/fixtures/journal-v0.json")).unwrap();
        for (k, v) in replacements {
            text = text.replace(k, v);
        }
        serde_json::from_str(&text).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unversioned_rows_decode_and_an_interrupted_replace_recovers() {
        let n = node();
        let d1 = desired(vec![kv("kv-store", "v1")], vec![]);
        let d2 = desired(vec![kv("kv-store", "v2")], vec![]);
        n.deploy(d1.clone()).await;
        let old = n.id_of("kv-store");
        n.deployer.prepare(&d2, n.components.clone()).await.unwrap();
        let new = n.deployer.runtime.create_service(&d2.packages[0].services[0].blueprint_id, &host()).await.unwrap();
        n.deployer.runtime.rebind_alias(&a("kv-store"), AliasTarget::Service(new.clone()), &host()).unwrap();
        let v1 = d1.packages[0].services[0].blueprint_id.to_hex();
        let v2 = d2.packages[0].services[0].blueprint_id.to_hex();
        let s2 = &d2.packages[0].services[0];
        let rows = fixture(&[
            ("{OLD}", old.to_string()),
            ("{NEW}", new.to_string()),
            ("{BP1}", v1),
            ("{BP2}", v2),
            ("{H1}", ComponentHash::of(&kv_store("v1")).to_hex()),
            ("{H2}", ComponentHash::of(&kv_store("v2")).to_hex()),
            ("{INIT}", s2.init_hash()),
        ]);
        {
            let conn = n.deployer.journal.store().lock();
            conn.execute("DELETE FROM deploy_entries", []).unwrap();
            for e in rows["deploy_entries"].as_array().unwrap() {
                conn.execute(
                    "INSERT INTO deploy_entries(alias, package, version, kind, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, 0, 0)",
                    [
                        e["alias"].as_str().unwrap(),
                        e["package"].as_str().unwrap(),
                        e["version"].as_str().unwrap(),
                        e["kind"].as_str().unwrap(),
                    ],
                )
                .unwrap();
            }
            for i in rows["deploy_intents"].as_array().unwrap() {
                conn.execute(
                    "INSERT INTO deploy_intents(alias, intent, created_at) VALUES (?1, ?2, 0)",
                    [i["alias"].as_str().unwrap(), i["intent"].as_str().unwrap()],
                )
                .unwrap();
            }
        }
        let intents = n.intents();
        assert_eq!(intents.len(), 1);
        assert_eq!(intents[0].action, journal::Action::Replace { old_service: old.clone() });
        assert_eq!(intents[0].phase, journal::Phase::Swapped);
        let done = n.deployer.recover().await.unwrap();
        assert!(done.iter().any(|l| l.contains("finished interrupted replace")), "{done:?}");
        assert!(n.deployer.runtime.resolve(old.as_str()).is_none());
        assert_eq!(n.id_of("kv-store"), new);
        assert!(n.plan(&d2).is_noop(), "{}", n.plan(&d2));
        // Rewritten rows carry their version.
        n.deployer.journal.upsert(&n.deployer.journal.deployed().unwrap()[&a("kv-store")]).unwrap();
        let kind: String = n
            .deployer
            .journal
            .store()
            .lock()
            .query_row("SELECT kind FROM deploy_entries WHERE alias = 'kv-store'", [], |r| r.get(0))
            .unwrap();
        assert!(kind.contains("\"v\":1"), "{kind}");
    }

    #[test]
    fn a_record_from_a_newer_release_is_refused_with_a_message() {
        let e = journal::decode_intent(r#"{"v": 99, "alias": "x"}"#).unwrap_err().to_string();
        assert!(e.contains("record version 99") && e.contains("newer sysdeploy"), "{e}");
    }
}

/// Item 8: the small ones.
mod small {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_component_that_cannot_link_is_refused_at_plan_time_and_leaves_no_intent() {
        let n = node();
        let d = desired(vec![service("web", "pkg-w", blueprint(&wants_http(), "web"), vec![], ConfigChange::Reinit)], vec![]);
        let e = n.deployer.exports(&d, n.components.clone()).await.unwrap_err();
        assert!(e.is_invalid_input(), "{e}");
        assert!(e.to_string().contains("wasi:keyvalue/store") && e.to_string().contains("package pkg-w"), "{e}");
        // Applied anyway (skipping the plan-time check): the install fails
        // and clears its intent instead of leaving one to "roll back".
        n.deployer.prepare(&d, n.components.clone()).await.unwrap();
        let p = n.plan(&d);
        let r = n.deployer.apply(&d, &p).await;
        assert_eq!(r.outcome, Outcome::Degraded);
        assert!(n.intents().is_empty(), "{:?}", n.intents());
        assert!(n.deployer.runtime.list_services().is_empty());
    }

    #[test]
    fn removals_run_in_reverse_dependency_order() {
        let deployed = |alias: &str, package: &str| Deployed {
            alias: a(alias),
            package: PackageName::new(package).unwrap(),
            version: "1".into(),
            kind: DeployedKind::Spell {
                spell_id: alias.into(),
                script_hash: String::new(),
                trigger: spell("x", "p").trigger,
                kv_applied: Default::default(),
            },
            created_at: 0,
            updated_at: 0,
        };
        let mut current = Current { host: Some(host()), ..Default::default() };
        for (alias, package) in [("a-base", "base"), ("z-top", "top"), ("m-mid", "mid"), ("gone", "gone")] {
            current.deployed.insert(a(alias), deployed(alias, package));
            current.spells.insert(a(alias), ObservedSpell { id: alias.into(), owner: host() });
        }
        let mut d = desired(vec![], vec![]);
        // `base` ← `mid` ← `top`, in catalog (dependency) order.
        d.catalog_order = ["base", "mid", "top"].iter().map(|p| PackageName::new(*p).unwrap()).collect();
        let p = plan(&d, &current, &host()).unwrap();
        let order: Vec<&str> = p.steps.iter().map(|s| s.package().as_str()).collect();
        assert_eq!(order, vec!["gone", "top", "mid", "base"], "{p}");
    }

    /// A SpellOps whose removal always fails.
    struct Broken;
    impl SpellOps for Broken {
        fn install(&self, _: &DesiredSpell, _: &PeerId) -> Result<String, String> {
            Err("broken".into())
        }
        fn update(&self, _: &DesiredSpell, _: &PeerId) -> Result<(), String> {
            Err("broken".into())
        }
        fn kv_apply(&self, _: &DesiredSpell) -> Result<Vec<String>, String> {
            Err("broken".into())
        }
        fn remove(&self, _: &Alias) -> Result<(), String> {
            Err("the spell store refused the delete".into())
        }
        fn id_of(&self, _: &Alias) -> Option<String> {
            None
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recovery_failure_names_the_interrupted_step() {
        let mut n = node();
        n.spells.install(&def(&spell("doomed", "pkg-d"), &host()), &Default::default()).unwrap();
        n.deployer
            .journal
            .put_intent(&journal::Intent {
                alias: a("doomed"),
                package: PackageName::new("pkg-d").unwrap(),
                action: journal::Action::RemoveSpell,
                phase: journal::Phase::Started,
                new_service: None,
                entry: None,
            })
            .unwrap();
        n.deployer.spells = Arc::new(Broken);
        let e = n.deployer.recover().await.unwrap_err().to_string();
        assert!(e.starts_with("crash recovery: finishing the interrupted remove-spell of doomed"), "{e}");
        assert!(e.contains("refused the delete") && !e.contains("preparing components"), "{e}");
    }
}

/// Issue 13 item 3 through the binary: bad spell triggers, KV values and
/// component imports are exit 2 from `plan` and `run`, nothing on disk changed.
mod cli {
    use super::*;
    use std::process::Command;

    fn bin() -> PathBuf {
        std::env::var_os("TEST_SYSDEPLOY_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sysdeploy")))
    }

    /// A distros folder: kv-store (v1) and a spell package whose period and
    /// KV value come from config; with `http`, a package whose component
    /// imports `wasi:keyvalue`.
    fn distros(root: &Path, http: bool) -> PathBuf {
        let dir = root.join(if http { "distros-http" } else { "distros" });
        let kv = dir.join("kv-store");
        std::fs::create_dir_all(&kv).unwrap();
        std::fs::write(kv.join("kv-store.wasm"), kv_store("v1")).unwrap();
        std::fs::copy(repo().join("tests/distros/v1/kv-store/distro.toml"), kv.join("distro.toml")).unwrap();
        let t = dir.join("ticker");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("ticker.rhai"), "kv_set(\"ran\", true);\n").unwrap();
        std::fs::write(
            t.join("distro.toml"),
            r#"[package]
name = "ticker"
version = "0.1.0"

[config.period_sec]
type = "integer"
default = 60
doc = "how often"

[config.note]
type = "string"
default = "short"
doc = "written into the KV"

[[spell]]
alias = "ticker"
script = "ticker.rhai"
trigger = { clock = { start = "now", period_sec = "${config.period_sec}" } }

[spell.kv]
note = "${config.note}"
"#,
        )
        .unwrap();
        if http {
            let w = dir.join("web");
            std::fs::create_dir_all(&w).unwrap();
            std::fs::write(w.join("web.wasm"), wants_http()).unwrap();
            std::fs::write(
                w.join("distro.toml"),
                "[package]\nname = \"web\"\nversion = \"0.1.0\"\n\n[[service]]\nalias = \"web\"\ncomponents = [\"web.wasm\"]\n",
            )
            .unwrap();
        }
        dir
    }

    fn run(root: &Path, http: bool, cmd: &[&str], extra: &[String]) -> std::process::Output {
        let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--distros-dir".into(),
            distros(root, http).display().to_string(),
            "--state-dir".into(),
            root.join("sd").display().to_string(),
        ]);
        let enable = if http { "kv-store,ticker,web" } else { "kv-store,ticker" };
        args.extend(["--set".into(), format!("system_services.enable={enable}")]);
        args.extend(extra.iter().cloned());
        Command::new(bin()).args(&args).env_clear().env("RUST_LOG", "warn").output().unwrap()
    }

    fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                if p.is_dir() {
                    out.insert(rel, b"dir".to_vec());
                    walk(root, &p, out);
                } else {
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        walk(root, root, &mut out);
        out
    }

    #[test]
    fn bad_triggers_kv_values_and_imports_are_exit_2_before_anything_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let out = run(root, false, &["run", "--once"], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let before = tree(&root.join("sd"));
        // Over the 1 MiB KV value limit; from a file (one argument or env
        // value cannot be that long).
        let big = root.join("big.toml");
        std::fs::write(&big, format!("[system_services.ticker]\nnote = \"{}\"\n", "x".repeat((1 << 20) + 10))).unwrap();
        let cases: Vec<(bool, Vec<String>, Vec<&str>)> = vec![
            (
                false,
                vec!["--set".into(), "system_services.ticker.period_sec=400000000".into()],
                vec!["spell ticker", "period_sec 400000000 exceeds", "system_services.ticker.period_sec"],
            ),
            (false, vec!["--config".into(), big.display().to_string()], vec!["spell ticker", "kv key \"note\"", "bytes of JSON"]),
            (true, vec![], vec!["package web, service web", "wasi:keyvalue/store", "neither an earlier component nor the host provides"]),
        ];
        for (http, extra, needles) in cases {
            for cmd in [&["plan"][..], &["run", "--once"][..]] {
                let out = run(root, http, cmd, &extra);
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(2), "{cmd:?} {needles:?}: {stderr}");
                for n in &needles {
                    assert!(stderr.contains(n), "{cmd:?}: {n:?} missing from {stderr}");
                }
                let after = tree(&root.join("sd"));
                let changed: Vec<&String> = after.keys().chain(before.keys()).filter(|k| after.get(*k) != before.get(*k)).collect();
                // `run` takes the lock (its pid is written into it) before it
                // can compile the components; a read-only SQLite reader in
                // WAL mode leaves its shared-memory index and an empty WAL.
                // Nothing else may change.
                let harmless =
                    |k: &str| k == "lock" || k == "state.db-shm" || (k == "state.db-wal" && after.get(k).is_none_or(|w| w.is_empty()));
                assert!(changed.iter().all(|k| harmless(k)), "{cmd:?} {needles:?} changed {changed:?}");
            }
        }
    }

    #[test]
    fn a_state_dir_that_lost_its_key_is_exit_3_for_run_and_plan() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let out = run(root, false, &["run", "--once"], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::remove_file(root.join("sd/node.key")).unwrap();
        for cmd in [&["run", "--once"][..], &["plan"][..]] {
            let out = run(root, false, cmd, &[]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{cmd:?}: {stderr}");
            assert!(stderr.contains("node identity") && stderr.contains("restore node.key"), "{cmd:?}: {stderr}");
            assert!(!root.join("sd/node.key").exists(), "{cmd:?} created a new identity");
        }
    }
}
