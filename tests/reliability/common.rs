//! Shared harness of the reliability tests: a sandboxed state dir driven
//! through the real `sysdeploy` binary, test distros written per test (the
//! kv-store builds of `tests/distros/` plus a spell package), and an
//! in-process inspector that opens the state dir after the node exited and
//! checks the invariants every converged node must hold.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use sysdeploy::deploy::journal::{Intent, Journal};
use sysdeploy::deploy::{Deployed, DeployedKind};
use sysdeploy::ids::{Alias, ComponentHash, PeerId};
use sysdeploy::runtime::{AliasBinding, AliasTarget, Runtime, RuntimeConfig, ServiceInfo};
use sysdeploy::spell::{ServiceCaller, SpellConfig, SpellRecord, Spells};
use sysdeploy::state::StateDir;
use sysdeploy::store::Store;

/// The binary under test. `TEST_SYSDEPLOY_BIN` overrides the one cargo
/// built: on a machine where several worktrees share one target dir, the
/// uplifted `target/debug/sysdeploy` can be replaced by another build while
/// the tests run, so a developer points this at a private copy.
pub static BIN: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
    std::env::var_os("TEST_SYSDEPLOY_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sysdeploy")))
});
pub const KV: &str = "kv-store";
pub const TICKER: &str = "ticker";
/// A service whose init rejects values starting with `!` (a WIT `err`).
pub const CHECKED: &str = "checked";
/// An alias that is a spell or a service, as `Want::shifty` says.
pub const SHIFTY: &str = "shifty";

/// What the `shifty` alias is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Spell,
    Service,
}

/// The component of the `checked` package and of `shifty` as a service
/// (`tests/fixtures/checked.wat`).
pub fn checked_wasm() -> Vec<u8> {
    wat::parse_file(repo().join("tests/fixtures/checked.wat")).unwrap()
}
/// The value the ticker spell writes into its own KV when it runs.
pub const SPELL_OWN_KEY: &str = "mine";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn alias(s: &str) -> Alias {
    Alias::new(s).unwrap()
}

/// Which build of the kv-store test component a package folder carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Build {
    V1,
    V2,
    FailInit,
    /// `tests/distros/migrator`: exports `migrate` (issue 17), package 0.2.0.
    Migrate,
}

impl Build {
    pub fn dir(self) -> &'static str {
        match self {
            Build::V1 => "v1",
            Build::V2 => "v2",
            Build::FailInit => "fail-init",
            Build::Migrate => "migrate",
        }
    }
    pub fn wasm(self) -> Vec<u8> {
        fs::read(repo().join("tests/distros").join(self.dir()).join("kv-store/kv-store.wasm")).unwrap()
    }
    pub fn hash(self) -> ComponentHash {
        ComponentHash::of(&self.wasm())
    }
    /// What `version()` answers.
    pub fn version(self) -> u64 {
        match self {
            Build::V2 => 2,
            Build::Migrate => 3,
            _ => 1,
        }
    }
    /// The package version its `distro.toml` says (a change makes a replace
    /// call `migrate`).
    pub fn package_version(self) -> &'static str {
        if self == Build::Migrate {
            "0.2.0"
        } else {
            "0.1.0"
        }
    }
}

/// What one boot asks for: the packages of its distros folder and the
/// config flags. Two `Want`s with equal fields ask for the same deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The kv-store build, or `None` when the package is not enabled.
    pub kv: Option<Build>,
    pub greeting: String,
    /// Whether the ticker (spell) package is enabled.
    pub ticker: bool,
    /// Script variant of the ticker spell (a change is an update-spell).
    pub script: u8,
    /// `${config.period_sec}` of the ticker's clock trigger.
    pub period: u64,
    /// `${config.threshold}`, written into the ticker's KV (kv-apply).
    pub threshold: i64,
    /// The `checked` package's value (its init rejects one starting with
    /// `!`), or `None` when the package is not enabled.
    pub checked: Option<String>,
    /// What the `shifty` alias is, or `None` when its package is not enabled.
    pub shifty: Option<Kind>,
    /// `system_services.snapshot_before_replace` (issue 17).
    pub snapshot: bool,
}

impl Default for Want {
    fn default() -> Self {
        Want {
            kv: Some(Build::V1),
            greeting: "hello".into(),
            ticker: true,
            script: 0,
            period: 60,
            threshold: 5,
            checked: None,
            shifty: None,
            snapshot: false,
        }
    }
}

impl Want {
    pub fn enabled(&self) -> Vec<&'static str> {
        let mut e = Vec::new();
        if self.kv.is_some() {
            e.push(KV);
        }
        if self.ticker {
            e.push(TICKER);
        }
        if self.checked.is_some() {
            e.push(CHECKED);
        }
        if self.shifty.is_some() {
            e.push(SHIFTY);
        }
        e
    }

    /// The distros folder name of this want (build, script, shifty's kind).
    fn distros_name(&self) -> String {
        let build = self.kv.unwrap_or(Build::V1);
        let shape = if self.shifty == Some(Kind::Service) { "-service" } else { "" };
        format!("distros-{}-{}{shape}", build.dir(), self.script)
    }
}

/// Result of one run of the binary.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    /// Whether a crash point killed the process (SIGKILL).
    pub fn killed(&self) -> bool {
        self.status.signal() == Some(libc_sigkill())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
    pub fn expect_ok(&self, what: &str) -> &Self {
        assert_eq!(self.code(), Some(0), "{what} failed: {self:#?}");
        self
    }
}

fn libc_sigkill() -> i32 {
    9
}

/// A temp dir holding the state dir (`sd/`) and the distros folders.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Sandbox { dir: tempfile::tempdir().unwrap() }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("sd")
    }

    /// The distros folder for `want` (created on first use): the kv-store
    /// package of the wanted build and the ticker package with the wanted
    /// script. Both are always present; `enable` picks.
    pub fn distros(&self, want: &Want) -> PathBuf {
        let build = want.kv.unwrap_or(Build::V1);
        let dir = self.dir.path().join(want.distros_name());
        if dir.exists() {
            return dir;
        }
        write_checked_packages(&dir, want.shifty == Some(Kind::Service));
        let kv = dir.join(KV);
        fs::create_dir_all(&kv).unwrap();
        fs::write(kv.join("kv-store.wasm"), build.wasm()).unwrap();
        fs::write(
            kv.join("distro.toml"),
            format!("[package]\nname = \"kv-store\"\nversion = \"{}\"\n", build.package_version())
                + r#"
[config.greeting]
type = "string"
default = "hello"
doc = "greeting handed to the service at init"

[[service]]
alias = "kv-store"
components = ["kv-store.wasm"]
keep_data = true

[[service.init]]
function = "set-greeting"
args = ["${config.greeting}"]
"#,
        )
        .unwrap();
        let t = dir.join(TICKER);
        fs::create_dir_all(&t).unwrap();
        fs::write(
            t.join("ticker.rhai"),
            format!("// ticker script, variant {}\nkv_set(\"{SPELL_OWN_KEY}\", \"written by the spell\");\n", want.script),
        )
        .unwrap();
        fs::write(
            t.join("distro.toml"),
            r#"[package]
name = "ticker"
version = "0.1.0"

[config.period_sec]
type = "integer"
default = 60
doc = "how often the ticker runs"

[config.threshold]
type = "integer"
default = 5
doc = "written into the ticker's KV"

[[spell]]
alias = "ticker"
script = "ticker.rhai"
trigger = { clock = { start = "now", period_sec = "${config.period_sec}" } }

[spell.kv]
threshold = "${config.threshold}"
fixed = "never changes"
"#,
        )
        .unwrap();
        dir
    }

    /// The global arguments selecting `want` (distros folder, state dir, config).
    pub fn args(&self, want: &Want) -> Vec<String> {
        // An empty `enable` is refused from env and flags (a likely slip that
        // would remove everything); "no package" is said in a config file.
        let enable = if want.enabled().is_empty() {
            let f = self.dir.path().join("enable-none.toml");
            std::fs::write(&f, "[system_services]\nenable = []\n").unwrap();
            vec!["--config".to_string(), f.display().to_string()]
        } else {
            vec!["--set".to_string(), format!("system_services.enable={}", want.enabled().join(","))]
        };
        let mut args = vec![
            "--distros-dir".into(),
            self.distros(want).display().to_string(),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
        ];
        args.extend(enable);
        if let Some(v) = &want.checked {
            args.extend(["--set".into(), format!("system_services.checked.value={v}")]);
        }
        if want.snapshot {
            args.extend(["--set".into(), "system_services.snapshot_before_replace=true".into()]);
        }
        args.extend([
            // Only the newest generation's blueprints stay (issue 17): the
            // converged-state check expects nothing but what is used, and
            // older generations' retention is tests/generations.rs's.
            "--set".into(),
            "system_services.keep_generations=1".into(),
            "--set".into(),
            format!("system_services.kv_store.greeting={}", want.greeting),
            "--set".into(),
            format!("system_services.ticker.period_sec={}", want.period),
            "--set".into(),
            format!("system_services.ticker.threshold={}", want.threshold),
        ]);
        args
    }

    /// Runs the binary with a clean environment plus `env`.
    pub fn run(&self, args: &[String], env: &[(&str, &str)]) -> Out {
        let out = Command::new(&*BIN)
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run sysdeploy");
        Out {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `run --once` for `want`, optionally with a crash point armed.
    pub fn boot(&self, want: &Want, crash_at: Option<&str>) -> Out {
        let mut a = vec!["run".to_string(), "--once".to_string()];
        a.extend(self.args(want));
        let fp = crash_at.map(|p| format!("{p}=return"));
        let env: Vec<(&str, &str)> = fp.as_deref().map(|f| vec![("FAILPOINTS", f)]).unwrap_or_default();
        self.run(&a, &env)
    }

    /// `run --once` that must succeed.
    pub fn converge(&self, want: &Want) -> Out {
        let out = self.boot(want, None);
        out.expect_ok("converging boot");
        out
    }

    /// `plan --json` for `want`.
    pub fn plan(&self, want: &Want) -> Value {
        let mut a = vec!["plan".to_string(), "--json".to_string()];
        a.extend(self.args(want));
        let out = self.run(&a, &[]);
        out.expect_ok("plan");
        out.json()
    }

    /// Every file under the state dir (relative path → blake3 of its bytes),
    /// for byte-for-byte comparisons.
    pub fn tree(&self) -> BTreeMap<String, String> {
        tree(&self.state_dir())
    }
}

/// Every file under `root` (relative path → blake3 of its bytes); directories
/// are listed with the value `dir`.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if p.is_dir() {
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

/// [`tree`] with the lock file's content (the pid of its last holder) left
/// out: `run` takes the lock and writes its pid before it can find some
/// problems (a corrupt store, a plan-time error), and nothing else of the
/// state dir may change.
pub fn tree_but_lock_pid(root: &Path) -> BTreeMap<String, String> {
    let mut t = tree(root);
    if let Some(lock) = t.get_mut("lock") {
        *lock = "(pid of the last holder)".into();
    }
    t
}

/// blake3 of zero bytes, as [`tree`] lists an empty file.
pub const EMPTY_FILE: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

/// `t` (a [`tree`] of a state dir after a read-only command such as `plan`)
/// without SQLite's reader files: a read-only connection to a WAL store
/// creates `state.db-shm` and an empty `state.db-wal` and cannot remove them
/// (RELIABILITY.md, "Known limits"). A WAL with anything in it stays listed.
pub fn without_reader_files(mut t: BTreeMap<String, String>) -> BTreeMap<String, String> {
    if t.get("state.db-wal").map(String::as_str) == Some(EMPTY_FILE) {
        t.remove("state.db-wal");
        t.remove("state.db-shm");
    }
    t
}

/// A spell caller for in-process spell runs; the ticker calls no service.
struct NoServices;
impl ServiceCaller for NoServices {
    fn call(
        &self,
        alias: &str,
        _: &str,
        _: Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send + '_>> {
        let alias = alias.to_string();
        Box::pin(async move { Err(format!("no service {alias} in this test")) })
    }
}

/// The state dir opened in this process after the node exited: what the
/// store and the disk say, plus live handles to call services and run spells.
pub struct Inspect {
    pub root: PathBuf,
    pub host: PeerId,
    pub store: Store,
    pub runtime: Runtime,
    pub spells: Spells,
    pub deployed: BTreeMap<Alias, Deployed>,
    pub intents: Vec<Intent>,
    pub services: Vec<ServiceInfo>,
    pub aliases: Vec<AliasBinding>,
    pub spell_list: Vec<SpellRecord>,
}

impl Inspect {
    pub fn open(root: &Path) -> Inspect {
        let state = StateDir::open_shared(root).expect("state dir");
        let host = state.peer_id().clone();
        let store = Store::open(&root.join("state.db")).expect("store");
        let runtime = Runtime::open(store.clone(), RuntimeConfig::new(root)).expect("runtime");
        let spells = Spells::new(store.clone(), Arc::new(NoServices), SpellConfig::new(host.clone()));
        let journal = Journal::new(store.clone());
        Inspect {
            root: root.into(),
            deployed: journal.deployed().unwrap(),
            intents: journal.intents().unwrap(),
            services: runtime.list_services(),
            aliases: runtime.aliases(),
            spell_list: spells.list(),
            host,
            store,
            runtime,
            spells,
        }
    }

    pub fn service_id(&self, a: &str) -> Option<String> {
        self.aliases.iter().find(|b| b.alias.as_str() == a).and_then(|b| match &b.target {
            AliasTarget::Service(id) => Some(id.to_string()),
            AliasTarget::Spell(_) => None,
        })
    }

    pub fn spell_id(&self, a: &str) -> Option<String> {
        self.spell_list.iter().find(|s| s.alias.as_str() == a).map(|s| s.id.as_str().to_string())
    }

    pub fn kv(&self, a: &str) -> BTreeMap<String, Value> {
        self.spells.kv(&alias(a)).unwrap_or_default()
    }

    pub async fn call(&self, a: &str, f: &str, args: Value) -> Value {
        self.runtime.call(a, f, args).await.unwrap_or_else(|e| panic!("{a}.{f}: {e}"))
    }

    /// The state a converged node must be in for `want`: exactly the wanted
    /// aliases, one host-owned service per service alias and no other
    /// service, one spell per spell alias, entries agreeing with the
    /// bindings, no intent left, and on disk nothing but what they use (data
    /// dirs, component files, artifacts of this engine; no temp files).
    /// Returns a list of violations (empty = fine).
    pub fn violations(&self, want: &Want) -> Vec<String> {
        self.violations_keeping(want, &[])
    }

    /// [`Inspect::violations`] on a node whose last deployment failed:
    /// the component and artifact of each `kept` build (wanted, not
    /// deployed) stay for the retry (issue 14), nothing else extra.
    pub fn violations_keeping(&self, want: &Want, kept: &[Build]) -> Vec<String> {
        let mut v = Vec::new();
        if !self.intents.is_empty() {
            v.push(format!("intents left: {:?}", self.intents));
        }
        let mut want_aliases = BTreeSet::new();
        if want.kv.is_some() {
            want_aliases.insert(KV.to_string());
        }
        if want.ticker {
            want_aliases.insert(TICKER.to_string());
        }
        if want.checked.is_some() {
            want_aliases.insert(CHECKED.to_string());
        }
        if want.shifty.is_some() {
            want_aliases.insert(SHIFTY.to_string());
        }
        let bound: BTreeSet<String> = self.aliases.iter().map(|b| b.alias.to_string()).collect();
        if bound != want_aliases {
            v.push(format!("bound aliases {bound:?}, wanted {want_aliases:?}"));
        }
        let entries: BTreeSet<String> = self.deployed.keys().map(|a| a.to_string()).collect();
        if entries != want_aliases {
            v.push(format!("deployer entries {entries:?}, wanted {want_aliases:?}"));
        }
        for b in &self.aliases {
            if b.owner != self.host {
                v.push(format!("alias {} owned by {}", b.alias, b.owner));
            }
            match (&b.target, self.deployed.get(&b.alias).map(|d| &d.kind)) {
                (AliasTarget::Service(id), Some(DeployedKind::Service { service_id, .. })) if service_id == id => {}
                (AliasTarget::Spell(id), Some(DeployedKind::Spell { spell_id, .. })) if spell_id == id => {}
                (t, e) => v.push(format!("alias {} → {t:?} but entry says {e:?}", b.alias)),
            }
        }
        // One service per service alias, no orphans.
        let service_aliases: Vec<&AliasBinding> = self.aliases.iter().filter(|b| matches!(b.target, AliasTarget::Service(_))).collect();
        if self.services.len() != service_aliases.len() {
            v.push(format!("{} services for {} service aliases: {:?}", self.services.len(), service_aliases.len(), self.services));
        }
        for s in &self.services {
            if s.aliases.len() != 1 {
                v.push(format!("service {} has aliases {:?}", s.id, s.aliases));
            }
        }
        // One spell per spell alias, no orphans.
        let spell_aliases: BTreeSet<String> =
            self.aliases.iter().filter(|b| matches!(b.target, AliasTarget::Spell(_))).map(|b| b.alias.to_string()).collect();
        let spells: BTreeSet<String> = self.spell_list.iter().map(|s| s.alias.to_string()).collect();
        if spells != spell_aliases {
            v.push(format!("spells {spells:?}, spell aliases {spell_aliases:?}"));
        }
        for s in &self.spell_list {
            if let Some(AliasBinding { target: AliasTarget::Spell(id), .. }) = self.aliases.iter().find(|b| b.alias == s.alias) {
                if id != s.id.as_str() {
                    v.push(format!("spell alias {} → {id}, spell id is {}", s.alias, s.id));
                }
            }
        }
        // Disk: data dirs = services.
        let ids: BTreeSet<String> = self.services.iter().map(|s| s.id.to_string()).collect();
        let dirs = names(&self.root.join("services"));
        if dirs != ids {
            v.push(format!("data dirs {dirs:?}, services {ids:?}"));
        }
        // Components and artifacts = the wanted build only.
        let mut comps = BTreeSet::new();
        if let Some(b) = want.kv {
            comps.insert(b.hash().to_hex());
        }
        for b in kept {
            comps.insert(b.hash().to_hex());
        }
        if want.checked.is_some() || want.shifty == Some(Kind::Service) {
            comps.insert(ComponentHash::of(&checked_wasm()).to_hex());
        }
        let files = names(&self.root.join("components"));
        let want_files: BTreeSet<String> = comps.iter().map(|h| format!("{h}.wasm")).collect();
        if files != want_files {
            v.push(format!("component files {files:?}, wanted {want_files:?}"));
        }
        let engine_dirs = names(&self.root.join("cache"));
        let art_dir = self.runtime.artifact_dir();
        let key = art_dir.file_name().unwrap().to_string_lossy().to_string();
        if engine_dirs != BTreeSet::from([key]) {
            v.push(format!("cache dirs {engine_dirs:?}, wanted only this engine's"));
        }
        let arts = names(&art_dir);
        let want_arts: BTreeSet<String> = comps.iter().map(|h| format!("{h}.cwasm")).collect();
        if arts != want_arts {
            v.push(format!("artifacts {arts:?}, wanted {want_arts:?}"));
        }
        v
    }

    /// Panics with every violation of [`Inspect::violations`].
    pub fn assert_converged(&self, want: &Want, context: &str) {
        self.assert_converged_keeping(want, &[], context)
    }

    /// Panics with every violation of [`Inspect::violations_keeping`].
    pub fn assert_converged_keeping(&self, want: &Want, kept: &[Build], context: &str) {
        let v = self.violations_keeping(want, kept);
        assert!(v.is_empty(), "{context}: not converged:\n  {}", v.join("\n  "));
    }

    /// Checks what the services and spells hold against `want` (greeting,
    /// version, configured KV) and `data` (keys written to kv-store that must
    /// still be there); `spell_wrote` = the ticker ran and its own key must
    /// have survived.
    pub async fn assert_contents(&self, want: &Want, data: &BTreeMap<String, String>, spell_wrote: bool, context: &str) {
        if let Some(b) = want.kv {
            assert_eq!(self.call(KV, "version", json!([])).await, json!(b.version()), "{context}: version");
            assert_eq!(self.call(KV, "greeting", json!([])).await, json!(want.greeting), "{context}: greeting");
            for (k, val) in data {
                assert_eq!(self.call(KV, "get", json!([k])).await, json!(val), "{context}: service data key {k} lost");
            }
        }
        if want.ticker {
            let kv = self.kv(TICKER);
            assert_eq!(kv.get("threshold"), Some(&json!(want.threshold)), "{context}: ticker kv {kv:?}");
            assert_eq!(kv.get("fixed"), Some(&json!("never changes")), "{context}: ticker kv {kv:?}");
            if spell_wrote {
                assert_eq!(kv.get(SPELL_OWN_KEY), Some(&json!("written by the spell")), "{context}: spell's own kv key lost: {kv:?}");
            }
            let rec = self.spell_list.iter().find(|s| s.alias.as_str() == TICKER).expect("ticker spell");
            assert_eq!(rec.trigger.period_sec, want.period, "{context}: ticker trigger");
            let script = fs::read_to_string(Sandbox::script_path_for(&self.root, want)).ok();
            if let Some(script) = script {
                assert_eq!(rec.script_hash, sysdeploy::spell::script_hash(&script), "{context}: ticker script");
            }
        }
        // What the guests and spells hold, observed through their own
        // getters and KV, not the store's rows.
        if let Some(v) = &want.checked {
            assert_eq!(self.call(CHECKED, "get-value", json!([])).await, json!(v), "{context}: checked value");
        }
        match want.shifty {
            Some(Kind::Service) => {
                assert_eq!(self.call(SHIFTY, "get-value", json!([])).await, json!("as a service"), "{context}: shifty service");
            }
            Some(Kind::Spell) => {
                let kv = self.kv(SHIFTY);
                assert_eq!(kv.get("shape"), Some(&json!("spell")), "{context}: shifty spell kv {kv:?}");
            }
            None => {}
        }
    }

    /// Writes `key = value` into the kv-store service (its data dir) and runs
    /// the ticker spell once so it writes its own KV key.
    pub async fn write_data(&self, key: &str, value: &str) {
        if self.service_id(KV).is_some() {
            self.call(KV, "put", json!([key, value])).await;
        }
        if self.spell_id(TICKER).is_some() {
            let out = self.spells.run_once(&alias(TICKER)).await.expect("ticker runs");
            assert!(out.error.is_none(), "ticker run failed: {out:?}");
        }
    }
}

impl Sandbox {
    /// The ticker script of `want`, relative to a state dir at `<sandbox>/sd`.
    fn script_path_for(state_root: &Path, want: &Want) -> PathBuf {
        state_root.parent().unwrap().join(want.distros_name()).join(TICKER).join("ticker.rhai")
    }
}

/// File names in a directory (empty when it does not exist).
pub fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir).map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

/// The `checked` package and the `shifty` package (a service when
/// `shifty_service`, else a spell) in a distros folder.
fn write_checked_packages(dir: &Path, shifty_service: bool) {
    let c = dir.join(CHECKED);
    fs::create_dir_all(&c).unwrap();
    fs::write(c.join("checked.wasm"), checked_wasm()).unwrap();
    fs::write(
        c.join("distro.toml"),
        r#"[package]
name = "checked"
version = "0.1.0"

[config.value]
type = "string"
default = "first"
doc = "kept by the service; one starting with ! is rejected by its init"

[[service]]
alias = "checked"
components = ["checked.wasm"]
keep_data = true

[[service.init]]
function = "set-value"
args = ["${config.value}"]
"#,
    )
    .unwrap();
    let sh = dir.join(SHIFTY);
    fs::create_dir_all(&sh).unwrap();
    if shifty_service {
        fs::write(sh.join("checked.wasm"), checked_wasm()).unwrap();
        fs::write(
            sh.join("distro.toml"),
            "[package]\nname = \"shifty\"\nversion = \"0.1.0\"\n\n[[service]]\nalias = \"shifty\"\ncomponents = [\"checked.wasm\"]\n\n[[service.init]]\nfunction = \"set-value\"\nargs = [\"as a service\"]\n",
        )
        .unwrap();
    } else {
        fs::write(sh.join("shifty.rhai"), "// shifty as a spell\n").unwrap();
        fs::write(
            sh.join("distro.toml"),
            "[package]\nname = \"shifty\"\nversion = \"0.1.0\"\n\n[[spell]]\nalias = \"shifty\"\nscript = \"shifty.rhai\"\ntrigger = { clock = { start = \"now\", period_sec = 3600 } }\n\n[spell.kv]\nshape = \"spell\"\n",
        )
        .unwrap();
    }
}
