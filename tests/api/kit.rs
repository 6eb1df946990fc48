//! Package developer kit semantics through the real binary (issue 16):
//! private functions (refused to API clients and to other packages' spells,
//! callable by init calls and the package's own spells, left out of
//! listings), and `on-install` init calls, which run when a service is first
//! created and not again on a blue-green replace that carries its data.

use serde_json::{json, Value};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use sysdeploy::api::client::{self, ClientError};

const BIN: &str = env!("CARGO_BIN_EXE_sysdeploy");

/// Upper bound for what should happen soon on a busy machine; reaching it fails.
const PATIENCE: Duration = Duration::from_secs(120);

/// The connector component of the embedded decider package: a persistent
/// queue (`enqueue`, `pending`) and `set-wallet-key` / `has-wallet-key`.
fn connector_wasm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("distros/decider/connector.wasm")
}

struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Sandbox { tmp: tempfile::tempdir().unwrap() }
    }
    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }
    fn distros(&self) -> PathBuf {
        self.tmp.path().join("distros")
    }
    /// Writes package `name` (manifest, the connector component, scripts).
    fn package(&self, name: &str, manifest: &str, scripts: &[(&str, &str)]) {
        let dir = self.distros().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(connector_wasm(), dir.join("connector.wasm")).unwrap();
        std::fs::write(dir.join("distro.toml"), manifest).unwrap();
        for (file, text) in scripts {
            std::fs::write(dir.join(file), text).unwrap();
        }
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--state-dir").arg(self.state()).arg("--distros-dir").arg(self.distros()).args(args);
        c.env_remove("SYSDEPLOY_CONFIG").env_remove("NOTIFY_SOCKET").env("RUST_LOG", "warn");
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }
    fn token(&self) -> String {
        std::fs::read_to_string(self.state().join("api.token")).unwrap().trim().to_string()
    }
}

fn ok(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `sysdeploy run`, killed on drop.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(addr: SocketAddr, path: &str, token: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).proxy(None).build().into();
    let mut resp = agent.get(&format!("http://{addr}{path}")).header("Authorization", &format!("Bearer {token}")).call().unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl Node {
    /// Starts `sysdeploy run` and waits until `/health` answers 200.
    fn ready(sb: &Sandbox) -> Node {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = sb
            .cmd(&["--api-listen", &addr.to_string(), "run"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut node = Node { child, addr };
        let start = Instant::now();
        loop {
            if let Some(status) = node.child.try_wait().unwrap() {
                let mut log = String::new();
                node.child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
                panic!("the node exited ({status}) before it was ready:\n{log}");
            }
            if client::readiness(addr, Duration::from_secs(5)).is_ok_and(|(ready, _)| ready) {
                return node;
            }
            assert!(start.elapsed() < PATIENCE, "the node was not ready within {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `/v1/spells` shows `alias` with at least one run, returns it.
    fn spell_after_a_run(&self, token: &str, alias: &str) -> Value {
        let start = Instant::now();
        loop {
            let (_, v) = get(self.addr, "/v1/spells", token);
            let s = v["spells"].as_array().and_then(|l| l.iter().find(|s| s["alias"] == alias).cloned());
            if let Some(s) = s.filter(|s| s["run_count"].as_u64().unwrap_or(0) >= 1) {
                return s;
            }
            assert!(start.elapsed() < PATIENCE, "spell {alias} did not run within {PATIENCE:?}: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const VAULT: &str = r#"[package]
name = "vault"
version = "0.1.0"

[[service]]
alias = "vault"
components = ["connector.wasm"]
private = ["set-wallet-key"]

[[service.init]]
function = "set-wallet-key"
args = ["k1"]

[[spell]]
alias = "vault-spell"
script = "vault.rhai"
trigger = { clock = { start = "now", period_sec = 0 } }
"#;

const OTHER: &str = r#"[package]
name = "other"
version = "0.1.0"
depends_on = ["vault"]

[[spell]]
alias = "intruder"
script = "intruder.rhai"
trigger = { clock = { start = "now", period_sec = 0 } }
"#;

#[test]
fn private_functions_are_refused_to_api_clients_and_other_packages_spells() {
    let sb = Sandbox::new();
    // The package's own spell may call its private function.
    sb.package("vault", VAULT, &[("vault.rhai", "call(\"vault\", \"set-wallet-key\", [\"k2\"]);\nkv_set(\"ok\", true);")]);
    // Another package's spell may not; the name is not a literal, so only
    // the runtime can refuse it (a literal one is refused by `plan`).
    sb.package(
        "other",
        OTHER,
        &[("intruder.rhai", "let f = \"set-wallet-\" + \"key\";\ncall(\"vault\", f, [\"k3\"]);\nkv_set(\"reached\", true);")],
    );
    // The init call to the private function ran: the node deployed.
    let node = Node::ready(&sb);
    let token = sb.token();

    // API: 403 with the stable code; the message says whose it is.
    match client::call(node.addr, &token, "vault", "set-wallet-key", json!(["x"])) {
        Err(ClientError::Api { status, code, message }) => {
            assert_eq!((status, code.as_str()), (403, "private_function"), "{message}");
            assert!(message.contains("set-wallet-key is private to package vault"), "{message}");
        }
        other => panic!("expected 403 private_function, got {other:?}"),
    }
    // Public functions still answer; the init call did set the key.
    assert_eq!(client::call(node.addr, &token, "vault", "has-wallet-key", json!([])).unwrap(), json!(true));
    // An unknown name lists only the public functions.
    match client::call(node.addr, &token, "vault", "nope", json!([])) {
        Err(ClientError::Api { status: 404, code, message }) if code == "unknown_function" => {
            assert!(message.contains("has-wallet-key") && !message.contains("set-wallet-key"), "{message}");
        }
        other => panic!("expected 404 unknown_function, got {other:?}"),
    }
    // The listing shows only public functions.
    let (status, services) = get(node.addr, "/v1/services", &token);
    assert_eq!(status, 200, "{services}");
    let vault = services["services"].as_array().unwrap().iter().find(|s| s["aliases"] == json!(["vault"])).unwrap().clone();
    let functions: Vec<&str> = vault["functions"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(functions.iter().any(|f| f.starts_with("has-wallet-key: func()")), "{functions:?}");
    assert!(functions.iter().all(|f| !f.starts_with("set-wallet-key")), "{functions:?}");
    // `sysdeploy call` says so clearly.
    let out = sb.run(&["--api-listen", &node.addr.to_string(), "call", "vault", "set-wallet-key", "[\"x\"]"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("private to package vault") && err.contains("403") && err.contains("private_function"), "{err}");

    // Spells: the package's own succeeded, the other package's was refused.
    let mine = node.spell_after_a_run(&token, "vault-spell");
    assert_eq!(mine["errors"], json!([]), "{mine}");
    assert_eq!(get(node.addr, "/v1/spells/vault-spell/kv", &token).1["ok"], json!(true));
    let theirs = node.spell_after_a_run(&token, "intruder");
    let errors = theirs["errors"].to_string();
    assert!(errors.contains("set-wallet-key is private to package vault") && errors.contains("spells of package other"), "{theirs}");
    assert_eq!(get(node.addr, "/v1/spells/intruder/kv", &token).1.get("reached"), None, "the refused call stopped the run");
}

/// A queue whose `on-install` init call seeds one item.
fn queue_manifest(memory_limit_mb: u32) -> String {
    format!(
        r#"[package]
name = "queue"
version = "0.1.0"

[[service]]
alias = "queue"
components = ["connector.wasm"]
keep_data = true
memory_limit_mb = {memory_limit_mb}

[[service.init]]
function = "enqueue"
args = ["seed"]
run = "on-install"
"#
    )
}

async fn pending(state: &Path) -> Value {
    let store = sysdeploy::store::Store::open(&state.join("state.db")).unwrap();
    let rt = sysdeploy::runtime::Runtime::open(store, sysdeploy::runtime::RuntimeConfig::new(state)).unwrap();
    rt.call("queue", "pending", json!([])).await.unwrap()
}

#[tokio::test]
async fn on_install_init_runs_once_and_not_again_on_a_replace_that_keeps_data() {
    let sb = Sandbox::new();
    sb.package("queue", &queue_manifest(32), &[]);
    let plan = sb.run(&["plan", "--json"]);
    ok(&plan);
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert!(plan["steps"][0]["reason"].as_str().unwrap().ends_with("; init: enqueue"), "{plan}");
    ok(&sb.run(&["run", "--once"]));
    assert_eq!(pending(&sb.state()).await, json!(1), "seeded once on install");

    // A new blueprint (another memory cap): a blue-green replace that
    // carries the queue over, without seeding it again.
    sb.package("queue", &queue_manifest(48), &[]);
    let plan = sb.run(&["plan", "--json"]);
    ok(&plan);
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let step = &plan["steps"][0];
    assert_eq!(step["action"], "replace", "{plan}");
    assert!(step["reason"].as_str().unwrap().contains("on-install init not re-run (the data is carried over): enqueue"), "{plan}");
    ok(&sb.run(&["run", "--once"]));
    assert_eq!(pending(&sb.state()).await, json!(1), "the seed item is there once after the replace");
}

/// A component shaped like componentize-py's output: its pre-initialisation
/// entry point exported as `exports#init`, beside the service's own `greet`.
const TOOLCHAIN_WAT: &str = r#"(component
  (core module $m
    (func (export "init"))
    (func (export "greet") (result i32) (i32.const 7)))
  (core instance $i (instantiate $m))
  (func $init (canon lift (core func $i "init")))
  (func $greet (result u32) (canon lift (core func $i "greet")))
  (instance $exports (export "init" (func $init)))
  (export "exports" (instance $exports))
  (export "greet" (func $greet)))"#;

#[tokio::test]
async fn toolchain_exports_are_private_without_being_listed() {
    use sysdeploy::ids::{Alias, PackageName, PeerId};
    use sysdeploy::runtime::{
        AccessTable, AliasTarget, Blueprint, BlueprintComponent, CallError, CallOrigin, Runtime, RuntimeConfig, ServiceAccess,
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = sysdeploy::store::Store::open(&tmp.path().join("state.db")).unwrap();
    let rt = Runtime::open(store, RuntimeConfig::new(tmp.path())).unwrap();
    let hash = rt.add_component(&wat::parse_str(TOOLCHAIN_WAT).unwrap(), None).unwrap();
    let bp = rt.put_blueprint(&Blueprint::new(vec![BlueprintComponent { name: "py".into(), hash, memory_limit_mb: None }])).unwrap();
    let host = PeerId::from_ed25519_public(&[1; 32]);
    let id = rt.create_service(&bp, &host).await.unwrap();
    rt.bind_alias(&Alias::new("py").unwrap(), AliasTarget::Service(id.clone()), &host).unwrap();
    let pkg = |n: &str| PackageName::new(n).unwrap();
    let mut table = AccessTable::default();
    // The manifest lists nothing private.
    table.services.insert(Alias::new("py").unwrap(), ServiceAccess { package: pkg("py"), private: Default::default() });
    rt.set_access(table);

    for (origin, target, name) in [
        (CallOrigin::Api, "py", "exports#init"),
        (CallOrigin::Api, "py", "init"),
        (CallOrigin::Api, id.as_str(), "exports#init"),
        (CallOrigin::Spell(Some(pkg("other"))), "py", "init"),
        (CallOrigin::Spell(None), "py", "exports#init"),
    ] {
        match rt.call_as(&origin, target, name, json!([])).await {
            Err(CallError::PrivateFunction { reason, .. }) => assert!(reason.contains("exports#init is private to package py"), "{reason}"),
            other => panic!("{origin:?} {target}.{name}: expected private_function, got {other:?}"),
        }
    }
    assert_eq!(rt.call_as(&CallOrigin::Api, "py", "greet", json!([])).await.unwrap(), json!(7));
    rt.call_as(&CallOrigin::Spell(Some(pkg("py"))), "py", "init", json!([])).await.unwrap();
    rt.call_as(&CallOrigin::Init, "py", "exports#init", json!([])).await.unwrap();
    let public: Vec<String> = rt.public_functions("py").unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(public, vec!["greet".to_string()]);
}
