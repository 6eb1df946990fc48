//! State migrations and kept data (issue 17), through the real `sysdeploy`
//! binary on real state dirs, with the kv-store builds of `tests/distros/`:
//! v1 (`tests/distros/guest`) and the `kv-migrate` builds of
//! `tests/distros/migrator` (a facade exporting `migrate`; `err`, `trap` and
//! `bad-signature` variants). The restore from kept data runs the executor in
//! process on the same state dir (`DesiredService::restore_data_from` is set
//! by `rollback --restore-data`; here the test sets it).

use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use sysdeploy::deploy::*;
use sysdeploy::ids::*;
use sysdeploy::runtime::*;
use sysdeploy::store::Store;

static BIN: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
    std::env::var_os("TEST_SYSDEPLOY_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sysdeploy")))
});
const KV: &str = "kv-store";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The committed kv-store builds: `v1`, `v2`, `migrate`, `migrate-err`, …
fn wasm(build: &str) -> Vec<u8> {
    fs::read(repo().join("tests/distros").join(build).join("kv-store/kv-store.wasm")).unwrap()
}

/// What `distro.toml` of the kv-store package says besides its build.
#[derive(Clone, Default)]
struct Pkg {
    version: &'static str,
    migrates_from: Option<&'static str>,
    snapshot: bool,
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// A temp dir with the state dir `sd/` and one distros folder per boot.
struct Sandbox {
    dir: tempfile::TempDir,
    n: std::cell::Cell<u32>,
}

impl Sandbox {
    fn new() -> Self {
        Sandbox { dir: tempfile::tempdir().unwrap(), n: Default::default() }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("sd")
    }

    /// A distros folder holding the kv-store package of `build` as `pkg` says.
    fn distros(&self, build: &str, pkg: &Pkg) -> PathBuf {
        self.n.set(self.n.get() + 1);
        let dir = self.dir.path().join(format!("distros-{}", self.n.get())).join(KV);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("kv-store.wasm"), wasm(build)).unwrap();
        let migrates_from = pkg.migrates_from.map(|v| format!("migrates_from = \"{v}\"\n")).unwrap_or_default();
        let snapshot = if pkg.snapshot { "snapshot_before_replace = true\n" } else { "" };
        fs::write(
            dir.join("distro.toml"),
            format!(
                "[package]\nname = \"kv-store\"\nversion = \"{}\"\n{migrates_from}\n[config.greeting]\ntype = \"string\"\ndefault = \"hello\"\n\n\
                 [[service]]\nalias = \"kv-store\"\ncomponents = [\"kv-store.wasm\"]\nkeep_data = true\n{snapshot}\n\
                 [[service.init]]\nfunction = \"set-greeting\"\nargs = [\"${{config.greeting}}\"]\n",
                pkg.version
            ),
        )
        .unwrap();
        dir.parent().unwrap().to_path_buf()
    }

    fn run(&self, cmd: &[&str], distros: &Path, extra: &[&str]) -> Out {
        let root = self.root();
        let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        args.extend(["--distros-dir".into(), distros.display().to_string(), "--state-dir".into(), root.display().to_string()]);
        args.extend(["--set".into(), "system_services.enable=kv-store".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = Command::new(&*BIN)
            .args(&args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .expect("run sysdeploy");
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `run --once` of `build` as `pkg`.
    fn boot(&self, build: &str, pkg: &Pkg, extra: &[&str]) -> Out {
        let d = self.distros(build, pkg);
        self.run(&["run", "--once"], &d, extra)
    }

    fn converge(&self, build: &str, pkg: &Pkg, extra: &[&str]) {
        let out = self.boot(build, pkg, extra);
        assert_eq!(out.code, Some(0), "boot of {build} {} failed: {out:?}", pkg.version);
    }

    fn plan_json(&self, build: &str, pkg: &Pkg) -> Value {
        let d = self.distros(build, pkg);
        let out = self.run(&["plan", "--json"], &d, &[]);
        assert_eq!(out.code, Some(0), "plan: {out:?}");
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// The state dir opened in this process (the node has exited).
    fn open(&self) -> Opened {
        let root = self.root();
        let host = sysdeploy::state::StateDir::open_shared(&root).unwrap().peer_id().clone();
        let store = Store::open(&root.join("state.db")).unwrap();
        let runtime = Runtime::open(store.clone(), RuntimeConfig::new(&root)).unwrap();
        Opened { root, host, store, runtime }
    }
}

struct Opened {
    root: PathBuf,
    host: PeerId,
    store: Store,
    runtime: Runtime,
}

impl Opened {
    fn service_id(&self) -> ServiceId {
        match self.runtime.alias(&Alias::new(KV).unwrap()).expect("kv-store bound").target {
            AliasTarget::Service(id) => id,
            t => panic!("kv-store is {t:?}"),
        }
    }
    async fn call(&self, f: &str, args: Value) -> Value {
        self.runtime.call(KV, f, args).await.unwrap_or_else(|e| panic!("{f}: {e}"))
    }
    fn service_dirs(&self) -> BTreeSet<String> {
        names(&self.root.join("services"))
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir).map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

/// Every entry under `root` (relative path → blake3 of a file, `dir`, or
/// `link -> target`), for byte-for-byte comparisons.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(rel, format!("link -> {}", fs::read_link(&p).unwrap().display()));
            } else if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else {
                out.insert(rel, blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The state dir's tree without what a read-only or refused command may
/// change: the lock's pid and SQLite's reader files.
fn state_tree(root: &Path) -> BTreeMap<String, String> {
    let mut t = tree(root);
    t.remove("lock");
    t.remove("state.db-shm");
    if t.get("state.db-wal").is_some_and(|h| *h == blake3::hash(b"").to_hex().to_string()) {
        t.remove("state.db-wal");
    }
    t
}

const V1: Pkg = Pkg { version: "1.0.0", migrates_from: None, snapshot: false };
const V2: Pkg = Pkg { version: "2.0.0", migrates_from: None, snapshot: false };

/// The one replace step of a plan.
fn the_replace(plan: &Value) -> &Value {
    let steps: Vec<&Value> =
        plan["steps"].as_array().unwrap().iter().filter(|s| !s["action"].as_str().unwrap().starts_with("keep")).collect();
    assert_eq!(steps.len(), 1, "{plan:#}");
    assert_eq!(steps[0]["action"], "replace", "{plan:#}");
    steps[0]
}

/// v1 deployed with data written; returns the sandbox, v1's service id and
/// the tree of its data dir.
async fn v1_with_data() -> (Sandbox, ServiceId, BTreeMap<String, String>) {
    let sb = Sandbox::new();
    sb.converge("v1", &V1, &[]);
    let o = sb.open();
    o.call("put", json!(["k", "written by v1"])).await;
    let id = o.service_id();
    // A guest may leave symlinks in its data: they are carried, kept and
    // restored as symlinks, never followed.
    std::os::unix::fs::symlink("/etc/passwd", o.runtime.data_dir(&id).join("escape")).unwrap();
    let data = tree(&o.runtime.data_dir(&id));
    assert!(data.len() >= 4, "v1's data dir holds the greeting, the key and the link: {data:?}");
    (sb, id, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_called_with_the_old_version_on_a_replace_that_carries_data() {
    let (sb, old, _) = v1_with_data().await;
    // plan says so, in text and JSON.
    let plan = sb.plan_json("migrate", &V2);
    let step = the_replace(&plan);
    assert_eq!(step["migrate_from"], "1.0.0", "{step:#}");
    assert!(step["reason"].as_str().unwrap().contains("migrate from 1.0.0"), "{step:#}");
    let d = sb.distros("migrate", &V2);
    let text = sb.run(&["plan"], &d, &[]);
    assert!(text.stdout.contains("migrate from 1.0.0"), "{text:?}");

    sb.converge("migrate", &V2, &[]);
    let o = sb.open();
    assert_ne!(o.service_id(), old);
    assert_eq!(o.call("version", json!([])).await, json!(3));
    assert_eq!(o.call("migrated-from", json!([])).await, json!("1.0.0"), "migrate got the old package version");
    assert_eq!(o.call("get", json!(["k"])).await, json!("written by v1"), "the data was copied before migrate");
    assert_eq!(o.call("greeting", json!([])).await, json!("hello"));
    drop(o);
    assert_eq!(sb.plan_json("migrate", &V2)["no_changes"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_version_or_a_replace_without_data_does_not_migrate() {
    // Same package version, new component: a replace, but nothing to migrate.
    let (sb, _, _) = v1_with_data().await;
    let plan = sb.plan_json("migrate", &V1);
    let step = the_replace(&plan);
    assert!(step.get("migrate_from").is_none(), "{step:#}");
    assert!(!step["reason"].as_str().unwrap().contains("migrate"), "{step:#}");
    sb.converge("migrate", &V1, &[]);
    let o = sb.open();
    assert_eq!(o.call("migrated-from", json!([])).await, json!(""), "migrate was not called");
    assert_eq!(o.call("get", json!(["k"])).await, json!("written by v1"));
}

/// A migrate that fails (`err` or a trap) fails the replace like a failing
/// init: exit 1 naming package, alias, "migrate from X" and the guest's
/// text; the old service stays bound with its data byte for byte; the new
/// one is gone; the plan still shows the replace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migrate_rolls_the_replace_back_and_leaves_the_old_data_untouched() {
    for (build, text) in [("migrate-err", "cannot migrate data from 1.0.0"), ("migrate-trap", "migrate from 1.0.0")] {
        let (sb, old, data) = v1_with_data().await;
        let out = sb.boot(build, &V2, &[]);
        assert_eq!(out.code, Some(1), "{build}: {out:?}");
        for want in ["package kv-store", "alias kv-store", "step replace", "migrate from 1.0.0", text] {
            assert!(out.stderr.contains(want), "{build}: stderr lacks {want:?}: {out:?}");
        }
        let o = sb.open();
        assert_eq!(o.service_id(), old, "{build}: the old service stays bound");
        assert_eq!(o.service_dirs(), BTreeSet::from([old.to_string()]), "{build}: the new service's data dir is gone");
        assert_eq!(tree(&o.runtime.data_dir(&old)), data, "{build}: the old data is byte-for-byte as before");
        assert_eq!(o.call("version", json!([])).await, json!(1));
        drop(o);
        let plan = sb.plan_json(build, &V2);
        assert_eq!(the_replace(&plan)["migrate_from"], "1.0.0", "{build}: the plan still shows the replace");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrate_export_with_another_signature_is_exit_2_before_anything_is_touched() {
    let (sb, _, _) = v1_with_data().await;
    let before = state_tree(&sb.root());
    let d = sb.distros("migrate-bad-signature", &V2);
    for cmd in [&["plan"][..], &["run", "--once"][..]] {
        let out = sb.run(cmd, &d, &[]);
        assert_eq!(out.code, Some(2), "{cmd:?}: {out:?}");
        for want in
            ["package kv-store", "service kv-store", "migrate: func(from-version: u32)", "func(from-version: string) -> result<_, string>"]
        {
            assert!(out.stderr.contains(want), "{cmd:?}: stderr lacks {want:?}: {out:?}");
        }
        assert_eq!(state_tree(&sb.root()), before, "{cmd:?} changed the state dir");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployed_version_older_than_migrates_from_is_exit_2_before_anything_is_touched() {
    let (sb, _, _) = v1_with_data().await;
    let before = state_tree(&sb.root());
    let gap = Pkg { version: "2.0.0", migrates_from: Some("1.5.0"), snapshot: false };
    let d = sb.distros("migrate", &gap);
    for cmd in [&["plan", "--json"][..], &["run", "--once"][..]] {
        let out = sb.run(cmd, &d, &[]);
        assert_eq!(out.code, Some(2), "{cmd:?}: {out:?}");
        let want = "package kv-store: deployed version 1.0.0 is older than the oldest version this release migrates from (1.5.0); upgrade through an intermediate release first";
        assert!(out.stderr.contains(want), "{cmd:?}: {out:?}");
        assert_eq!(state_tree(&sb.root()), before, "{cmd:?} changed the state dir");
    }
    // The boundary: migrating from exactly the oldest supported version is fine.
    sb.converge("migrate", &Pkg { version: "2.0.0", migrates_from: Some("1.0.0"), snapshot: false }, &[]);
    assert_eq!(sb.open().call("migrated-from", json!([])).await, json!("1.0.0"));
}

/// `migrate` is the deployer's: the access table makes it private (not
/// callable through the API) whether or not the manifest says so.
#[test]
fn migrate_is_private() {
    let sigs = sysdeploy::runtime::inspect_exports(Path::new("."), None, &ComponentHash::of(&wasm("migrate")), &wasm("migrate")).unwrap();
    let mut d = desired(vec![service("migrate", "2.0.0", None)]);
    let id = d.packages[0].services[0].blueprint_id;
    d.exports.insert(id, sigs);
    let t = sysdeploy::deploy::access::table(&d);
    let a = t.services.get(&Alias::new(KV).unwrap());
    assert!(sysdeploy::runtime::is_private(a, "migrate"));
    assert!(!sysdeploy::runtime::is_private(a, "get"));
}

// ------------------------------------------------------------ kept data

/// The whole procedure through the binary (gen's `rollback` and `unpin`):
/// upgrade v1 → v2 keeping the old data, `rollback --restore-data` brings
/// the pre-upgrade data back (once: the next boot changes nothing), `unpin`
/// returns to v2 carrying the data forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restore_data_brings_the_pre_upgrade_data_back_and_unpin_returns_to_v2() {
    let sb = Sandbox::new();
    let snap = ["--set", "system_services.snapshot_before_replace=true"];
    sb.converge("v1", &V1, &snap);
    sb.open().call("put", json!(["k", "before the upgrade"])).await;
    sb.converge("v2", &V2, &snap);
    {
        let o = sb.open();
        assert_eq!(o.call("version", json!([])).await, json!(2));
        o.call("put", json!(["k", "after the upgrade"])).await;
    }
    let release = sb.distros("v2", &V2);
    let out = sb.run(&["rollback", "--restore-data"], &release, &snap);
    assert_eq!(out.code, Some(0), "{out:?}");
    // Without its kept dir the restore is refused before anything is touched.
    let kept = names(&sb.root().join("kept"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    let v1_id = kept.iter().next().unwrap().clone();
    let (dir, aside) = (sb.root().join("kept").join(&v1_id), sb.dir.path().join("aside"));
    fs::rename(&dir, &aside).unwrap();
    let before = state_tree(&sb.root());
    for cmd in [&["plan"][..], &["run", "--once"][..]] {
        let out = sb.run(cmd, &release, &snap);
        assert_eq!(out.code, Some(2), "{cmd:?}: {out:?}");
        let want = format!("package kv-store, service kv-store: the data to restore was kept from service {v1_id}, but this node keeps no data of that service");
        assert!(out.stderr.contains(&want), "{cmd:?}: {out:?}");
        assert_eq!(state_tree(&sb.root()), before, "{cmd:?} changed the state dir");
    }
    fs::rename(&aside, &dir).unwrap();
    let out = sb.run(&["run", "--once"], &release, &snap);
    assert_eq!(out.code, Some(0), "{out:?}");
    {
        let o = sb.open();
        assert_eq!(o.call("version", json!([])).await, json!(1), "rolled back to v1");
        assert_eq!(o.call("get", json!(["k"])).await, json!("before the upgrade"), "the pre-upgrade data is back");
        o.call("put", json!(["k2", "written after the rollback"])).await;
    }
    let out = sb.run(&["run", "--once"], &release, &snap);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(sb.open().call("get", json!(["k2"])).await, json!("written after the rollback"), "the restore ran once");
    for cmd in [&["unpin"][..], &["run", "--once"][..]] {
        let out = sb.run(cmd, &release, &snap);
        assert_eq!(out.code, Some(0), "{cmd:?}: {out:?}");
    }
    let o = sb.open();
    assert_eq!(o.call("version", json!([])).await, json!(2), "unpin returns to v2");
    assert_eq!(o.call("get", json!(["k"])).await, json!("before the upgrade"), "data moves forward");
    assert_eq!(o.call("get", json!(["k2"])).await, json!("written after the rollback"));
}

/// The kv-store service of a committed build, as the executor wants it.
fn service(build: &str, version: &str, restore: Option<ServiceId>) -> DesiredService {
    let hash = ComponentHash::of(&wasm(build));
    let blueprint = Blueprint::new(vec![BlueprintComponent { name: "kv-store.wasm".into(), hash, memory_limit_mb: None }]);
    DesiredService {
        alias: Alias::new(KV).unwrap(),
        package: PackageName::new(KV).unwrap(),
        version: version.into(),
        blueprint_id: blueprint.id(),
        blueprint,
        keep_data: true,
        on_config_change: ConfigChange::Reinit,
        init: vec![ResolvedInit { function: "set-greeting".into(), args: vec![json!("hello")], run: InitRun::OnChange, inputs: vec![] }],
        private: vec![],
        snapshot_before_replace: false,
        restore_data_from: restore,
    }
}

fn desired(services: Vec<DesiredService>) -> Desired {
    let packages = services
        .into_iter()
        .map(|s| DesiredPackage {
            name: s.package.clone(),
            version: s.version.clone(),
            depends_on: vec![],
            migrates_from: None,
            services: vec![s],
            spells: vec![],
        })
        .collect();
    Desired { packages, exports: Default::default(), catalog_order: vec![] }
}

struct Builds;
impl ComponentSource for Builds {
    fn bytes(&self, hash: &ComponentHash) -> Option<Cow<'_, [u8]>> {
        ["v1", "v2", "migrate"].into_iter().map(wasm).find(|b| ComponentHash::of(b) == *hash).map(Cow::Owned)
    }
}

struct NoSpells;
impl SpellOps for NoSpells {
    fn install(&self, _: &DesiredSpell, _: &PeerId) -> Result<String, String> {
        Err("no spells here".into())
    }
    fn update(&self, _: &DesiredSpell, _: &PeerId) -> Result<(), String> {
        Err("no spells here".into())
    }
    fn kv_apply(&self, _: &DesiredSpell) -> Result<Vec<String>, String> {
        Err("no spells here".into())
    }
    fn remove(&self, _: &Alias) -> Result<(), String> {
        Ok(())
    }
    fn id_of(&self, _: &Alias) -> Option<String> {
        None
    }
}

fn deployer(o: &Opened) -> Deployer {
    Deployer {
        runtime: o.runtime.clone(),
        spells: Arc::new(NoSpells),
        journal: journal::Journal::new(o.store.clone()),
        host: o.host.clone(),
        policy: ApplyPolicy::default(),
    }
}

/// Plans `desired` (exports decoded) against the state dir; `Err` = plan errors.
async fn plan_of(d: &Deployer, mut desired: Desired) -> (Desired, Result<Plan, PlanErrors>) {
    desired.exports = d.exports(&desired, Arc::new(Builds)).await.unwrap();
    let current = d.current().unwrap();
    let plan = sysdeploy::deploy::plan(&desired, &current, &d.host);
    (desired, plan)
}

/// `snapshot_before_replace` (manifest key, then the config key) keeps the
/// replaced service's data dir as it was when the alias moved; a no-op boot
/// and its GC leave it alone; `restore_data_from` starts a replace from it
/// (the kept dir stays); a service id with nothing kept is a plan error;
/// retention keeps the newest `keep_generations` per alias.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_data_is_kept_restored_and_retained() {
    let (sb, v1_id, v1_data) = v1_with_data().await;
    let snap2 = Pkg { snapshot: true, ..V2 };
    sb.converge("v2", &snap2, &[]);
    let kept_v1 = sysdeploy::deploy::kept::path(&sb.root(), &v1_id);
    assert_eq!(tree(&kept_v1), v1_data, "the kept dir is v1's data as it was");
    {
        let o = sb.open();
        let v2_id = o.service_id();
        assert_eq!(o.service_dirs(), BTreeSet::from([v2_id.to_string()]), "v1's data dir moved out of services/");
        let rows = sysdeploy::deploy::kept::list(&o.store).unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].service_id.clone(), rows[0].alias.as_str(), rows[0].version.as_str()), (v1_id.clone(), KV, "1.0.0"));
        o.call("put", json!(["k", "written by v2"])).await;
    }
    // A no-op boot (recovery, GC) leaves the kept dir alone.
    sb.converge("v2", &snap2, &[]);
    assert_eq!(tree(&kept_v1), v1_data, "a no-op boot changed the kept dir");

    // Restore: v1 again, starting from the data kept from v1's service.
    {
        let o = sb.open();
        let d = deployer(&o);
        let (_, missing) = plan_of(&d, desired(vec![service("v1", "1.0.0", Some(ServiceId::random()))])).await;
        let e = missing.expect_err("restoring from a service with nothing kept").to_string();
        assert!(e.contains("package kv-store, service kv-store: the data to restore was kept from service"), "{e}");
        assert!(e.contains(&v1_id.to_string()), "the error lists what is kept: {e}");
        // Restoring v1's data into the migrating build: migrate from the kept data's version.
        let (_, p) = plan_of(&d, desired(vec![service("migrate", "3.0.0", Some(v1_id.clone()))])).await;
        let p = p.unwrap();
        let reason = p.changes().next().unwrap().reason().unwrap().to_string();
        assert!(reason.contains(&format!("restore data kept from service {v1_id}")) && reason.contains("migrate from 1.0.0"), "{reason}");

        let (want, p) = plan_of(&d, desired(vec![service("v1", "1.0.0", Some(v1_id.clone()))])).await;
        let p = p.unwrap();
        let reason = p.changes().next().unwrap().reason().unwrap().to_string();
        assert!(reason.contains(&format!("restore data kept from service {v1_id}")), "{reason}");
        d.prepare(&want, Arc::new(Builds)).await.unwrap();
        let report = d.apply(&want, &p).await;
        assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
        assert_eq!(o.call("get", json!(["k"])).await, json!("written by v1"), "the kept data came back");
        let restored_dir = tree(&o.runtime.data_dir(&o.service_id()));
        assert_eq!(restored_dir.get("escape").map(String::as_str), Some("link -> /etc/passwd"), "{restored_dir:?}");
        assert_eq!(o.call("version", json!([])).await, json!(1));
        assert_eq!(tree(&kept_v1), v1_data, "the kept dir stays for a second rollback");
        let (_, again) = plan_of(&d, want.clone()).await;
        assert!(again.unwrap().is_noop(), "a restored deployment converges");

        // A later replace under the same request carries the data the
        // service has now: the restore happened once.
        o.call("put", json!(["k", "written after the restore"])).await;
        let (want, p) = plan_of(&d, desired(vec![service("v2", "1.0.0", Some(v1_id.clone()))])).await;
        let p = p.unwrap();
        let reason = p.changes().next().unwrap().reason().unwrap().to_string();
        assert!(!reason.contains("restore"), "{reason}");
        d.prepare(&want, Arc::new(Builds)).await.unwrap();
        assert_eq!(d.apply(&want, &p).await.outcome, Outcome::Ok);
        assert_eq!(o.call("get", json!(["k"])).await, json!("written after the restore"), "the data was restored twice");

        // An install may start from kept data too (the package was removed
        // in between, which ends the request: the restore happens again),
        // migrating it from the kept data's version.
        assert_eq!(sysdeploy::deploy::kept::restored(&o.store).unwrap().get(&Alias::new(KV).unwrap()), Some(&v1_id));
        let (none, p) = plan_of(&d, desired(vec![])).await;
        assert_eq!(d.apply(&none, &p.unwrap()).await.outcome, Outcome::Ok);
        assert!(o.runtime.alias(&Alias::new(KV).unwrap()).is_none());
        assert!(sysdeploy::deploy::kept::restored(&o.store).unwrap().is_empty(), "the request ended with the removal");
        let (want, p) = plan_of(&d, desired(vec![service("migrate", "3.0.0", Some(v1_id.clone()))])).await;
        let p = p.unwrap();
        let step = p.changes().next().unwrap();
        assert_eq!(step.kind(), "install");
        assert!(step.reason().unwrap().contains(&format!("restore data kept from service {v1_id}; migrate from 1.0.0")), "{step:?}");
        d.prepare(&want, Arc::new(Builds)).await.unwrap();
        let report = d.apply(&want, &p).await;
        assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
        assert_eq!(o.call("get", json!(["k"])).await, json!("written by v1"), "the install started from the kept data");
        assert_eq!(o.call("migrated-from", json!([])).await, json!("1.0.0"));
    }

    // Retention: the config key keeps the next replaced dir; with
    // keep_generations = 1 only the newest kept dir of the alias stays.
    let restored = sb.open().service_id();
    let out = sb.boot("v2", &V2, &["--set", "system_services.snapshot_before_replace=true", "--set", "system_services.keep_generations=1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(names(&sb.root().join("kept")), BTreeSet::from([restored.to_string()]), "{out:?}");
    let o = sb.open();
    let rows: Vec<ServiceId> = sysdeploy::deploy::kept::list(&o.store).unwrap().into_iter().map(|k| k.service_id).collect();
    assert_eq!(rows, vec![restored], "only the newest kept dir is recorded");
}
