//! Generations, rollback and pins (issue 17) through the real binary: the
//! kv-store test package in two builds (`tests/distros/v1`, `v2`, whose
//! `version` function answers 1 or 2) assembled into temp `--distros-dir`
//! folders as package versions 1.0.0 and 2.0.0; nodes on loopback, calls
//! through `sysdeploy call`, readiness through `sysdeploy health`.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sysdeploy");

/// Upper bound for what should happen soon; reaching it is a failure.
const PATIENCE: Duration = Duration::from_secs(180);

const KV: &str = "kv-store";

struct Env {
    tmp: tempfile::TempDir,
    state: PathBuf,
    config: PathBuf,
    /// The distros folder `cmd` points at.
    distros: std::cell::RefCell<PathBuf>,
    env: Vec<(String, String)>,
}

/// A `sysdeploy run`, SIGKILLed on drop unless it exited.
struct Node {
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl Env {
    fn new(config: &str) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let cfg = tmp.path().join("node.toml");
        std::fs::write(&cfg, config).unwrap();
        let distros = std::cell::RefCell::new(tmp.path().join("none"));
        Env { tmp, state, config: cfg, distros, env: Vec::new() }
    }

    /// Points the node at a distros folder holding the kv-store package built
    /// from `build` (`v1`/`v2`) as package `version`, with `extra` TOML.
    fn release(&self, build: &str, version: &str, extra: &str) {
        let root = self.tmp.path().join(format!("distros-{build}-{version}"));
        let dir = root.join(KV);
        std::fs::create_dir_all(&dir).unwrap();
        let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distros").join(build).join("kv-store/kv-store.wasm");
        std::fs::copy(wasm, dir.join("kv-store.wasm")).unwrap();
        let toml = format!(
            "[package]\nname = \"{KV}\"\nversion = \"{version}\"\n\n[config.greeting]\ntype = \"string\"\ndefault = \"hello\"\n\
             doc = \"greeting\"\n{extra}\n[[service]]\nalias = \"{KV}\"\ncomponents = [\"kv-store.wasm\"]\nkeep_data = true\n\n\
             [[service.init]]\nfunction = \"set-greeting\"\nargs = [\"${{config.greeting}}\"]\n"
        );
        std::fs::write(dir.join("distro.toml"), toml).unwrap();
        *self.distros.borrow_mut() = root;
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--state-dir")
            .arg(&self.state)
            .arg("--distros-dir")
            .arg(&*self.distros.borrow())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("FAILPOINTS")
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        c
    }

    fn out(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.out(args);
        assert!(o.status.success(), "{args:?}: exit {:?}\nstdout:\n{}\nstderr:\n{}", o.status.code(), text(&o.stdout), text(&o.stderr));
        text(&o.stdout)
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} is not JSON ({e}): {out}"))
    }

    /// Starts `sysdeploy run` (with extra env) and waits until `health` says ready.
    fn start(&self, env: &[(&str, &str)]) -> Node {
        let addr = free_addr();
        let mut c = self.cmd(&["--api-listen", &addr.to_string(), "run"]);
        c.envs(env.iter().copied()).stdout(Stdio::null()).stderr(Stdio::inherit());
        let mut node = Node { child: c.spawn().unwrap() };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = node.child.try_wait().unwrap() {
                panic!("node exited ({st}) before it was ready");
            }
            if self.out(&["health"]).status.success() {
                return node;
            }
            assert!(Instant::now() < deadline, "node never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `sysdeploy call` through the running node.
    fn call(&self, function: &str, args: Value) -> Value {
        self.json(&["call", KV, function, &args.to_string()])
    }

    fn stop(&self, mut node: Node) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(node.child.id() as i32, libc::SIGTERM) };
        let st = wait_exit(&mut node.child);
        assert!(st.success(), "the node did not stop cleanly: {st}");
    }

    fn generations(&self) -> Vec<Value> {
        self.json(&["generations", "--json"])["generations"].as_array().unwrap().clone()
    }

    /// Every file under the state dir with its blake3 (the lock's pid left out).
    fn files(&self) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![self.state.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let rel = p.strip_prefix(&self.state).unwrap().display().to_string();
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

    fn component_file(&self, build: &str) -> PathBuf {
        let wasm =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distros").join(build).join("kv-store/kv-store.wasm")).unwrap();
        self.state.join("components").join(format!("{}.wasm", blake3::hash(&wasm).to_hex()))
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "the node did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn changes(g: &Value) -> Vec<String> {
    g["changes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect()
}

/// The scenario on a running node: upgrade v1 → v2 (data written
/// under v2), `generations` shows the version change, `rollback` reloads the
/// node onto v1 with the v2 data kept, `plan`/`status` say pinned, `unpin`
/// returns to v2.
#[test]
fn upgrade_rollback_and_unpin_on_a_running_node() {
    let env = Env::new("");
    env.release("v1", "1.0.0", "");
    env.ok(&["run", "--once"]);
    env.release("v2", "2.0.0", "");
    let node = env.start(&[]);
    assert_eq!(env.call("version", json!([])), json!(2));
    env.call("put", json!(["k", "written under v2"]));

    let gens = env.generations();
    assert_eq!(gens.len(), 2, "{gens:#?}");
    assert_eq!(gens[0]["number"], json!(2), "newest first");
    assert_eq!(gens[0]["outcome"], json!("ok"));
    let c = changes(&gens[0]);
    assert!(c.contains(&"package kv-store 1.0.0 → 2.0.0".to_string()), "{c:?}");
    assert!(c.contains(&"service kv-store replaced".to_string()), "{c:?}");
    assert!(changes(&gens[1]).contains(&"service kv-store installed".to_string()), "{gens:#?}");
    let listing = env.ok(&["generations"]);
    assert!(listing.contains("generation 2") && listing.contains("kv-store 1.0.0 → 2.0.0"), "{listing}");

    // Rollback while the node runs: pinned, and the node reloaded onto v1.
    let out = env.ok(&["rollback"]);
    assert!(out.contains("pinned kv-store 1.0.0 to generation 1"), "{out}");
    assert_eq!(env.call("version", json!([])), json!(1), "the running node serves v1 after the rollback");
    assert_eq!(env.call("get", json!(["k"])), json!("written under v2"), "data moves forward");

    let plan = env.json(&["plan", "--json"]);
    assert_eq!(plan["no_changes"], json!(true), "{plan:#}");
    let pin = &plan["pins"][0];
    assert_eq!(
        (&pin["package"], &pin["generation"], &pin["version"], &pin["release"]),
        (&json!(KV), &json!(1), &json!("1.0.0"), &json!("2.0.0"))
    );
    let plan_text = env.ok(&["plan"]);
    assert!(plan_text.contains("pinned: kv-store 1.0.0 from generation 1; the embedded release would deploy 2.0.0"), "{plan_text}");
    let status = env.json(&["status", "--json"]);
    assert_eq!(status["pins"][0]["generation"], json!(1), "{status:#}");
    assert!(env.ok(&["status"]).contains("pinned: kv-store 1.0.0 from generation 1"));
    let gens = env.generations();
    assert_eq!(gens.len(), 3);
    let c = changes(&gens[0]);
    assert!(
        c.contains(&"package kv-store 2.0.0 → 1.0.0".to_string()) && c.contains(&"package kv-store pinned to generation 1".to_string()),
        "{c:?}"
    );

    // Unpin: back to the release (v2), data still there.
    let out = env.ok(&["unpin"]);
    assert!(out.contains("unpinned kv-store (was generation 1)"), "{out}");
    assert_eq!(env.call("version", json!([])), json!(2));
    assert_eq!(env.call("get", json!(["k"])), json!("written under v2"));
    assert_eq!(env.json(&["plan", "--json"])["pins"], json!([]));
    env.stop(node);
    assert_eq!(env.generations().len(), 4);
}

/// `keep_generations = 2`: after a third generation the first is pruned —
/// its component is gone from `components/`, rolling back to it is exit 2
/// naming the generations — while a kept one stays usable: rolling back to
/// generation 2 restores its config. Bad input writes nothing.
#[tokio::test]
async fn pruned_generations_lose_their_components_and_cannot_be_rolled_back_to() {
    let env = Env::new("[system_services]\nkeep_generations = 2\n");
    env.release("v1", "1.0.0", "");
    env.ok(&["run", "--once"]);
    env.release("v2", "2.0.0", "");
    env.ok(&["run", "--once"]);
    assert!(env.component_file("v1").exists(), "generation 1 is kept: its component stays though no service uses it");
    std::fs::write(&env.config, "[system_services]\nkeep_generations = 2\n\n[system_services.kv_store]\ngreeting = \"hi\"\n").unwrap();
    env.ok(&["run", "--once"]);
    let gens = env.generations();
    let pruned: Vec<(u64, bool)> = gens.iter().map(|g| (g["number"].as_u64().unwrap(), g["pruned"].as_bool().unwrap())).collect();
    assert_eq!(pruned, [(3, false), (2, false), (1, true)]);
    assert!(changes(&gens[0]).contains(&"config system_services.kv_store.greeting changed".to_string()), "{gens:#?}");
    assert!(!env.component_file("v1").exists(), "generation 1 was pruned: its component is gone");
    assert!(env.component_file("v2").exists());

    // Bad input: exit 2, named, nothing written.
    let before = env.files();
    for (args, needle) in [
        (vec!["rollback", "--to", "99"], "there is no generation 99; known generations: 1 (pruned), 2, 3"),
        (vec!["rollback", "--to", "1"], "generation 1 was pruned"),
        (vec!["rollback", "--to", "2", "--package", "nope"], "--package nope"),
        (vec!["unpin", "--package", KV], "package kv-store is not pinned"),
    ] {
        let o = env.out(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains(needle), "{args:?}: {}", text(&o.stderr));
    }
    assert_eq!(env.files(), before, "refused rollbacks wrote nothing");

    // A kept generation: its stored config (greeting "hello") comes back.
    let out = env.ok(&["rollback", "--to", "2"]);
    assert!(out.contains("the next `sysdeploy run` deploys this"), "{out}");
    let plan = env.json(&["plan", "--json"]);
    assert_eq!(plan["steps"][0]["action"], json!("reinit"), "{plan:#}");
    assert!(plan["steps"][0]["reason"].as_str().unwrap().contains("generation 2"), "{plan:#}");
    env.ok(&["run", "--once"]);
    let store = sysdeploy::store::Store::open(&env.state.join("state.db")).unwrap();
    let rt = sysdeploy::runtime::Runtime::open(store, sysdeploy::runtime::RuntimeConfig::new(&env.state)).unwrap();
    assert_eq!(rt.call(KV, "greeting", json!([])).await.unwrap(), json!("hello"));
}

/// `--restore-data` sets the desired service's `restore_data_from` to the
/// service the alias had in that generation (shown by `plan --json`); a
/// secret whose current value differs from the generation's digest is said.
#[test]
fn restore_data_and_secret_differences_are_shown_by_plan() {
    let secret = "\n[config.token]\ntype = \"string\"\nsecret = true\ndoc = \"a secret\"\n";
    let mut env = Env::new("[system_services]\nsnapshot_before_replace = true\n");
    env.env.push(("SYSDEPLOY_SYSTEM_SERVICES__KV_STORE__TOKEN".into(), "first-secret".into()));
    env.release("v1", "1.0.0", secret);
    env.ok(&["run", "--once"]);
    let gen1 = env.generations()[0].clone();
    let v1_service = gen1["aliases"][KV]["service_id"].as_str().unwrap().to_string();
    env.release("v2", "2.0.0", secret);
    env.ok(&["run", "--once"]);
    let out = env.ok(&["rollback", "--restore-data"]);
    assert!(out.contains("restoring its kept data"), "{out}");
    let plan = env.json(&["plan", "--json"]);
    assert_eq!(plan["pins"][0]["restore_data_from"][KV], json!(v1_service), "{plan:#}");
    assert_eq!(plan["pins"][0]["notes"], json!([]), "same secret: nothing to say");
    env.env[0].1 = "second-secret".into();
    let plan = env.json(&["plan", "--json"]);
    assert_eq!(plan["pins"][0]["notes"], json!(["secret system_services.kv_store.token differs from generation 1"]), "{plan:#}");
    let text_plan = env.ok(&["plan"]);
    assert!(text_plan.contains("note: secret system_services.kv_store.token differs from generation 1"), "{text_plan}");
    assert!(!text_plan.contains("second-secret") && !text_plan.contains("first-secret"), "{text_plan}");
}

/// SIGKILL in the middle of the rollback's replace (crash point after the
/// data copy): the pin is already written, so the next boot recovers and
/// converges to the pinned generation with the data kept.
#[cfg(feature = "failpoints")]
#[test]
fn a_node_killed_during_the_rollback_deployment_converges_to_the_pin_at_next_boot() {
    let env = Env::new("");
    env.release("v1", "1.0.0", "");
    env.ok(&["run", "--once"]);
    env.release("v2", "2.0.0", "");
    let node = env.start(&[]);
    env.call("put", json!(["k", "before the crash"]));
    env.stop(node);
    let mut node = env.start(&[("FAILPOINTS", "deploy::replace::copied=return")]);
    let o = env.out(&["rollback"]);
    assert_eq!(o.status.code(), Some(1), "the reload died with the node: {}", text(&o.stderr));
    assert!(text(&o.stdout).contains("pinned kv-store 1.0.0 to generation 1"), "{}", text(&o.stdout));
    let st = wait_exit(&mut node.child);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "killed at the crash point: {st}");
    let node = env.start(&[]);
    assert_eq!(env.call("version", json!([])), json!(1), "the next boot converged to the pinned generation");
    assert_eq!(env.call("get", json!(["k"])), json!("before the crash"));
    assert_eq!(env.json(&["plan", "--json"])["no_changes"], json!(true));
    env.stop(node);
    let gens = env.generations();
    assert_eq!(gens[0]["packages"][KV]["pinned"], json!(1), "{gens:#?}");
}

/// The whole upgrade story across generations and kept data, on a
/// running node with `snapshot_before_replace`: v1 → v2 carries the data
/// forward; `rollback` serves v1 with the data written since; `unpin` serves
/// v2 again; `rollback --to 1 --restore-data` serves v1 with the data as it
/// was before the upgrade (what v2 wrote is gone from the serving service);
/// a final `unpin` carries the restored data forward into v2. (Generation 1
/// is the fifth back when it is asked for, hence `keep_generations = 5`.)
#[test]
fn rollback_with_restore_data_brings_back_the_pre_upgrade_data() {
    let env = Env::new("[system_services]\nsnapshot_before_replace = true\nkeep_generations = 5\n");
    env.release("v1", "1.0.0", "");
    let node = env.start(&[]);
    env.call("put", json!(["k", "before the upgrade"]));
    env.stop(node);

    env.release("v2", "2.0.0", "");
    let node = env.start(&[]);
    assert_eq!(env.call("version", json!([])), json!(2));
    assert_eq!(env.call("get", json!(["k"])), json!("before the upgrade"), "the upgrade carries the data forward");
    env.call("put", json!(["k", "after the upgrade"]));
    env.call("put", json!(["v2-only", "yes"]));

    env.ok(&["rollback"]);
    assert_eq!(env.call("version", json!([])), json!(1));
    assert_eq!(env.call("get", json!(["k"])), json!("after the upgrade"), "a plain rollback keeps the data written since");

    env.ok(&["unpin"]);
    assert_eq!(env.call("version", json!([])), json!(2));
    assert_eq!(env.call("get", json!(["k"])), json!("after the upgrade"));

    let plan_before = env.ok(&["plan"]);
    let out = env.ok(&["rollback", "--to", "1", "--restore-data"]);
    assert!(out.contains("restoring its kept data"), "{out}\n(plan before: {plan_before})");
    assert_eq!(env.call("version", json!([])), json!(1));
    assert_eq!(env.call("get", json!(["k"])), json!("before the upgrade"), "--restore-data brings back the data kept at the upgrade");
    assert_eq!(env.call("get", json!(["v2-only"])), json!(null), "what was written after the upgrade is not in the restored data");
    let plan = env.json(&["plan", "--json"]);
    assert_eq!(plan["no_changes"], json!(true), "the restore converged: {plan:#}");

    env.ok(&["unpin"]);
    assert_eq!(env.call("version", json!([])), json!(2));
    assert_eq!(env.call("get", json!(["k"])), json!("before the upgrade"), "unpin carries the restored data forward");
    env.stop(node);
}

/// A package the release no longer has comes back from its generation, with
/// the config value the generation recorded (the current config cannot even
/// name it: its schema is gone); `unpin` removes it again.
#[tokio::test]
async fn a_package_the_release_dropped_comes_back_from_its_generation_with_its_config() {
    let env = Env::new("[system_services.kv_other]\ngreeting = \"from the old config\"\n");
    env.release("v1", "1.0.0", "");
    let other = env.distros.borrow().join("kv-other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(env.distros.borrow().join(KV).join("kv-store.wasm"), other.join("kv-store.wasm")).unwrap();
    std::fs::write(
        other.join("distro.toml"),
        "[package]\nname = \"kv-other\"\nversion = \"0.3.0\"\n\n[config.greeting]\ntype = \"string\"\ndefault = \"hello\"\ndoc = \"g\"\n\n\
         [[service]]\nalias = \"kv-other\"\ncomponents = [\"kv-store.wasm\"]\n\n[[service.init]]\nfunction = \"set-greeting\"\n\
         args = [\"${config.greeting}\"]\n",
    )
    .unwrap();
    env.ok(&["run", "--once"]);
    env.release("v2", "2.0.0", "");
    std::fs::write(&env.config, "").unwrap();
    env.ok(&["run", "--once"]);
    let c = changes(&env.generations()[0]);
    assert!(c.contains(&"package kv-other 0.3.0 removed".to_string()) && c.contains(&"service kv-other removed".to_string()), "{c:?}");

    let out = env.ok(&["rollback", "--package", "kv-other"]);
    assert!(out.contains("pinned kv-other 0.3.0 to generation 1"), "{out}");
    let plan = env.json(&["plan", "--json"]);
    assert_eq!(plan["pins"][0]["release"], json!(null), "the release does not deploy kv-other: {plan:#}");
    assert!(env.ok(&["plan"]).contains("pinned: kv-other 0.3.0 from generation 1; the embedded release does not deploy it"));
    env.ok(&["run", "--once"]);
    {
        let store = sysdeploy::store::Store::open(&env.state.join("state.db")).unwrap();
        let rt = sysdeploy::runtime::Runtime::open(store, sysdeploy::runtime::RuntimeConfig::new(&env.state)).unwrap();
        assert_eq!(rt.call("kv-other", "greeting", json!([])).await.unwrap(), json!("from the old config"));
        assert_eq!(rt.call(KV, "version", json!([])).await.unwrap(), json!(2), "kv-store was not pinned");
    }
    env.ok(&["unpin"]);
    env.ok(&["run", "--once"]);
    let c = changes(&env.generations()[0]);
    assert!(c.contains(&"service kv-other removed".to_string()), "{c:?}");
}
