//! Operator-proofing (issue 13 items 1, 2, 4, 5, 6; issue 12 item 4), black
//! box where the operator would meet it: the real `sysdeploy` binary on a
//! free loopback port with a temp state dir, test packages copied into a
//! temp distros folder (the kv-store builds plus `spinner`, whose init call
//! loops until its TTL, so "while deploying" lasts as long as a test needs),
//! and the spell scheduler under tokio's paused clock.
//!
//! - one control loop: a reload during boot is answered 503 `booting`; a
//!   shutdown signal preempts a reload (API or SIGHUP) and the exit code says
//!   the deployment was interrupted; a refused reload (invalid config, a
//!   package that does not resolve) answers 400, leaves `/health` and the
//!   services as they were and is recorded in `/v1/deployments/last`;
//!   restart-only settings are reported as "needs restart";
//! - no value of an unknown key in error text, JSON logs or the reload answer;
//! - every env var the CLI documents works;
//! - an `enable` list naming no package is refused with nothing touched;
//! - every file and dir the node creates is private to its user;
//! - a spell whose `last_run` lies in the future runs one period from now.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod harness;
use harness::{free_addr, output as out, try_http, Node, Out, Resp, BIN, PATIENCE};

/// A TTL no test waits for: a `spinner` init call lasts this long.
const LONG_TTL_MS: u64 = 3_600_000;

const SECRET: &str = "0xS3CRET5EED";

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// A temp dir holding the distros folder, the state dir and the config file.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let sb = Sandbox { dir: tempfile::tempdir().unwrap() };
        let distros = sb.distros();
        for pkg in ["kv-store", "kv-other"] {
            let to = distros.join(pkg);
            std::fs::create_dir_all(&to).unwrap();
            for e in std::fs::read_dir(repo("tests/distros/node").join(pkg)).unwrap() {
                let e = e.unwrap();
                // fs::copy follows the symlinks to the committed artifacts.
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
        let spinner = distros.join("spinner");
        std::fs::create_dir_all(&spinner).unwrap();
        std::fs::write(spinner.join("spinner.wasm"), wat::parse_file(repo("tests/fixtures/misbehave.wat")).unwrap()).unwrap();
        std::fs::write(
            spinner.join("distro.toml"),
            "# Control tests: an init call that loops until its TTL.\n[package]\nname = \"spinner\"\nversion = \"0.1.0\"\n\n\
             [[service]]\nalias = \"spinner\"\ncomponents = [\"spinner.wasm\"]\n\n[[service.init]]\nfunction = \"spin\"\n",
        )
        .unwrap();
        sb
    }
    fn distros(&self) -> PathBuf {
        self.dir.path().join("distros")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn config_path(&self) -> PathBuf {
        self.dir.path().join("sysdeploy.toml")
    }
    /// Writes the config file: packages, call TTL, greeting, plus raw lines.
    fn config(&self, enable: &[&str], call_ttl_ms: u64, greeting: &str, extra: &str) {
        let enable: Vec<String> = enable.iter().map(|p| format!("{p:?}")).collect();
        let text = format!(
            "[system_services]\nenable = [{}]\ncall_ttl_ms = {call_ttl_ms}\n\n[system_services.kv_store]\ngreeting = {greeting:?}\n{extra}",
            enable.join(", ")
        );
        std::fs::write(self.config_path(), text).unwrap();
    }
    fn cmd(&self, addr: SocketAddr) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--state-dir")
            .arg(self.state())
            .arg("--config")
            .arg(self.config_path())
            .arg("--distros-dir")
            .arg(self.distros())
            .arg("--api-listen")
            .arg(addr.to_string());
        clean_env(&mut c);
        c
    }
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        out(self.cmd(free_addr()).args(args).envs(env.iter().copied()))
    }
    fn token(&self) -> String {
        std::fs::read_to_string(self.state().join("api.token")).unwrap().trim().to_string()
    }
    fn plan(&self) -> Value {
        let o = self.run(&["plan", "--json"], &[]);
        assert_eq!(o.code, Some(0), "plan failed: {o:?}");
        serde_json::from_str(&o.stdout).unwrap()
    }
}

/// No inherited setting changes what a test sees.
fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("SYSDEPLOY_") || k.starts_with("FLUENCE_") || ["RUST_LOG", "FAILPOINTS", "NOTIFY_SOCKET"].contains(&k.as_str()) {
            c.env_remove(k);
        }
    }
}

impl Node {
    fn start(sb: &Sandbox) -> Node {
        let addr = free_addr();
        let mut cmd = sb.cmd(addr);
        cmd.arg("run");
        Node::spawn(&mut cmd, addr)
    }
    fn ready(sb: &Sandbox) -> Node {
        let mut n = Node::start(sb);
        n.wait_health(200);
        n
    }
    fn wait_health(&mut self, status: u16) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("node exited ({st}) before /health answered {status}; log:\n{}", self.log());
            }
            if let Some(r) = try_http(self.addr, "GET", "/health", None, None) {
                if r.status == status {
                    return r.json();
                }
            }
            assert!(Instant::now() < deadline, "/health never answered {status}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn http(&self, method: &str, path: &str, token: Option<&str>) -> Resp {
        try_http(self.addr, method, path, token, None).unwrap_or_else(|| panic!("{method} {path}: no answer; log:\n{}", self.log()))
    }
    fn call(&self, token: &str, alias: &str, function: &str) -> Value {
        let r = self.http("POST", &format!("/v1/services/{alias}/call/{function}"), Some(token));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }
}

/// Every file under `dir` with its mode and contents (the lock file's pid included).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_dir() {
                out.insert(p.clone(), (mode, vec![]));
                stack.push(p);
            } else {
                out.insert(p.clone(), (mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

// ------------------------------------------------------- item 4: control loop

/// A reload asked while the first deployment runs is answered 503 `booting`
/// at once (it used to run a second deployment beside crash recovery); a
/// SIGTERM then stops the boot at its next await with exit 0 (an orderly
/// stop: `systemctl stop` must not mark the unit failed; the next boot converges).
#[test]
fn a_reload_during_boot_is_answered_booting() {
    let sb = Sandbox::new();
    sb.config(&["spinner"], LONG_TTL_MS, "hello", "");
    let mut node = Node::start(&sb);
    node.wait_log("alias=spinner");
    assert_eq!(node.wait_health(503)["status"], "deploying");
    let msg = node.http("POST", "/v1/reload", Some(&sb.token())).error(503, "booting");
    assert!(msg.contains("booting"), "{msg}");
    node.signal(libc::SIGTERM);
    let st = node.wait_exit();
    assert_eq!(st.code(), Some(0), "an orderly stop during boot exits 0; log:\n{}", node.log());
}

/// SIGTERM during a reload started through the API: the reload is cut at its
/// next await, the waiting client is told why (503 `shutting_down`), the node
/// exits 0 as an orderly stop (it used to wait for the reload, or be SIGKILLed
/// by its supervisor), and the next boot rolls the interrupted install back.
#[test]
fn sigterm_preempts_a_reload_from_the_api_and_the_next_boot_converges() {
    let sb = Sandbox::new();
    sb.config(&["kv-store"], LONG_TTL_MS, "hello", "");
    let mut node = Node::ready(&sb);
    let token = sb.token();
    sb.config(&["kv-store", "spinner"], LONG_TTL_MS, "hello", "");
    let addr = node.addr;
    let t = token.clone();
    let client = std::thread::spawn(move || try_http(addr, "POST", "/v1/reload", Some(&t), None));
    node.wait_log("alias=spinner");
    node.signal(libc::SIGTERM);
    let st = node.wait_exit();
    assert_eq!(st.code(), Some(0), "an orderly stop during a reload exits 0; log:\n{}", node.log());
    assert!(node.log().contains("the deployment was interrupted"), "{}", node.log());
    let answer = client.join().unwrap().expect("the reload request was answered");
    let msg = answer.error(503, "shutting_down");
    assert!(msg.contains("interrupted"), "{msg}");

    // The next boot recovers the half-done install (as after a crash) and
    // converges on the config it is given.
    sb.config(&["kv-store"], LONG_TTL_MS, "hello", "");
    let o = sb.run(&["run", "--once"], &[]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let plan = sb.plan();
    assert_eq!(plan["no_changes"], true, "{plan}");
    let st = sb.run(&["status", "--json"], &[]);
    let st: Value = serde_json::from_str(&st.stdout).unwrap();
    let services = st["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "no orphan of the interrupted install: {st}");
    assert_eq!(services[0]["aliases"], json!(["kv-store"]), "{st}");
}

/// SIGTERM during a SIGHUP reload is seen at the reload's next await (it
/// used to wait for the whole reload).
#[test]
fn sigterm_preempts_a_sighup_reload() {
    let sb = Sandbox::new();
    sb.config(&["kv-store"], LONG_TTL_MS, "hello", "");
    let mut node = Node::ready(&sb);
    sb.config(&["kv-store", "spinner"], LONG_TTL_MS, "hello", "");
    node.signal(libc::SIGHUP);
    node.wait_log("alias=spinner");
    node.signal(libc::SIGTERM);
    let st = node.wait_exit();
    assert_eq!(st.code(), Some(0), "log:\n{}", node.log());
}

/// A reload is validated (load, resolve, plan) before anything is swapped: a
/// refused one answers 400 `invalid_config` without the value of any unknown
/// key, leaves `/health` ready and the services as they were, and is recorded
/// in `/v1/deployments/last` and the log. A changed `call_ttl_ms` is reported
/// as needing a restart while the rest of the reload applies.
#[test]
fn a_refused_reload_leaves_the_node_serving_and_says_why() {
    let sb = Sandbox::new();
    sb.config(&["kv-store"], 10_000, "hello", "");
    let mut node = Node::ready(&sb);
    let token = sb.token();
    let last = |n: &Node| n.http("GET", "/v1/deployments/last", Some(&token)).json();
    let first = last(&node);

    // 1. An unknown key (a typo of a key meant to hold a secret).
    sb.config(&["kv-store"], 10_000, "hello", &format!("greting = {SECRET:?}\n"));
    let msg = node.http("POST", "/v1/reload", Some(&token)).error(400, "invalid_config");
    assert!(msg.contains("system_services.kv_store.greting ("), "{msg}");
    assert!(msg.contains(&format!("{}:7", sb.config_path().display())), "names file and line: {msg}");
    assert!(msg.contains("did you mean system_services.kv_store.greeting?"), "{msg}");
    assert!(!msg.contains(SECRET), "{msg}");
    assert_eq!(node.http("GET", "/health", None).json(), json!({"status": "ready"}));
    let rec = last(&node);
    assert_ne!(rec, first);
    assert_eq!(rec["outcome"], "failed", "{rec}");
    assert!(rec["error"].as_str().unwrap().contains("greting"), "{rec}");
    assert!(!rec.to_string().contains(SECRET), "{rec}");
    node.wait_log("reload refused");
    assert!(!node.log().contains(SECRET), "{}", node.log());

    // 2. A config that loads but does not resolve (used to swap the config,
    //    then mark /health failed while the old deployment kept serving).
    sb.config(&["kv-store"], 10_000, "bonjour", "ticker_period_sec = -5\n");
    let msg = node.http("POST", "/v1/reload", Some(&token)).error(400, "invalid_config");
    assert!(msg.contains("ticker_period_sec") || msg.contains("period"), "{msg}");
    assert_eq!(node.http("GET", "/health", None).json(), json!({"status": "ready"}));
    assert_eq!(node.call(&token, "kv-store", "greeting"), json!("hello"), "nothing was swapped");

    // 3. The same by SIGHUP: logged and recorded, /health unchanged.
    let before = last(&node)["started_at_ms"].clone();
    node.signal(libc::SIGHUP);
    let deadline = Instant::now() + PATIENCE;
    while last(&node)["started_at_ms"] == before {
        assert!(Instant::now() < deadline, "the SIGHUP reload was never recorded; log:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(last(&node)["outcome"], "failed");
    assert_eq!(node.http("GET", "/health", None).json(), json!({"status": "ready"}));
    let status = sb.run(&["status", "--json"], &[]);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["deployment"]["summary"], "reload refused; nothing was changed", "{status}");

    // 4. A valid reload that also changes a restart-only setting: the rest
    //    applies, the TTL is reported, not silently half-applied.
    sb.config(&["kv-store"], 20_000, "bonjour", "");
    let r = node.http("POST", "/v1/reload", Some(&token));
    assert_eq!(r.status, 200, "{}", r.body);
    let report = r.json();
    assert_eq!(report["outcome"], "ok", "{report}");
    assert_eq!(report["needs_restart"], json!(["system_services.call_ttl_ms: 10000 → 20000"]), "{report}");
    assert_eq!(node.call(&token, "kv-store", "greeting"), json!("bonjour"));
    assert!(node.log().contains("needs a restart"), "{}", node.log());

    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit().code(), Some(0), "an idle node stops with 0; log:\n{}", node.log());
}

// ------------------------------------------------ item 1: unknown key values

/// The most common env typo (`_` for `__`) names the key, its source and the
/// right env var, never the value: in plain text and in JSON logs.
#[test]
fn an_unknown_key_never_echoes_its_value() {
    let sb = Sandbox::new();
    sb.config(&["kv-store"], 10_000, "hello", "");
    let typo = "SYSDEPLOY_SYSTEM_SERVICES__KV_STORE_GREETING";
    for format in ["human", "json"] {
        for cmd in [&["config"][..], &["plan"], &["run", "--once"]] {
            let mut args = vec!["--log-format", format];
            args.extend_from_slice(cmd);
            let o = sb.run(&args, &[(typo, SECRET)]);
            assert_eq!(o.code, Some(2), "{args:?}: {o:?}");
            let all = format!("{}{}", o.stdout, o.stderr);
            assert!(!all.contains(SECRET), "{args:?} echoed the value: {all}");
            assert!(all.contains("system_services.kv_store_greeting"), "{all}");
            assert!(all.contains(&format!("env {typo}")), "{all}");
            assert!(all.contains("SYSDEPLOY_SYSTEM_SERVICES__KV_STORE__GREETING"), "the hint names the right variable: {all}");
        }
    }
    assert!(!sb.state().exists(), "nothing was created");
}

// ------------------------------------------------ item 2: documented env vars

/// Walks `sysdeploy --help` and every subcommand's help for env var names and
/// tries each one: it must do what the help says (it used to exit 2 for
/// `SYSDEPLOY_DISTROS_DIR`, "unknown key distros_dir").
#[test]
fn every_env_var_the_help_documents_works() {
    let help = |args: &[&str]| {
        let mut c = Command::new(BIN);
        clean_env(&mut c);
        let o = out(c.args(args));
        assert_eq!(o.code, Some(0), "{args:?}: {o:?}");
        o.stdout
    };
    let top = help(&["--help"]);
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // A command's line starts with two spaces; wrapped text with more.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 5, "{top}");
    let mut texts = vec![top];
    for c in &commands {
        texts.push(help(&[c, "--help"]));
    }
    let mut documented: Vec<String> = texts
        .iter()
        .flat_map(|t| t.split_whitespace())
        // `<LOG_FORMAT>` is a value placeholder, not a variable.
        .filter(|w| !w.starts_with('<'))
        .flat_map(|w| w.split(|ch: char| !(ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')))
        .filter(|w| w.contains('_') && !w.ends_with('_') && w.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(str::to_string)
        .collect();
    documented.sort();
    documented.dedup();
    assert!(documented.iter().any(|v| v == "SYSDEPLOY_DISTROS_DIR"), "{documented:?}");

    let sb = Sandbox::new();
    let dir = sb.dir.path();
    let config_json = |env: &[(&str, &str)]| -> Value {
        let mut c = Command::new(BIN);
        clean_env(&mut c);
        let o = out(c.args(["--state-dir", dir.join("none").to_str().unwrap(), "config", "--json"]).envs(env.iter().copied()));
        assert_eq!(o.code, Some(0), "{env:?}: {o:?}");
        serde_json::from_str(&o.stdout).unwrap()
    };
    for var in &documented {
        match var.as_str() {
            "SYSDEPLOY_CONFIG" => {
                let f = dir.join("via-env.toml");
                std::fs::write(&f, "[node]\napi_listen = \"127.0.0.1:7999\"\n").unwrap();
                let v = config_json(&[(var, f.to_str().unwrap())]);
                assert_eq!(v["values"]["node.api_listen"]["value"], "127.0.0.1:7999", "{v}");
            }
            "SYSDEPLOY_CONFIG_SECTION" => {
                let f = dir.join("node-file.toml");
                std::fs::write(&f, "tcp_port = 7777\n[system_services]\nenable = [\"registry\", \"trust-graph\"]\n").unwrap();
                let v = config_json(&[(var, "system_services"), ("SYSDEPLOY_CONFIG", f.to_str().unwrap())]);
                assert_eq!(v["values"]["system_services.enable"]["value"], json!(["registry", "trust-graph"]), "{v}");
            }
            "SYSDEPLOY_NODE__API_LISTEN" => {
                let v = config_json(&[(var, "127.0.0.1:7201")]);
                assert_eq!(v["values"]["node.api_listen"]["value"], "127.0.0.1:7201", "{v}");
                assert_eq!(v["values"]["node.api_listen"]["source"], format!("env {var}"), "{v}");
            }
            "SYSDEPLOY_SYSTEM_SERVICES__ENABLE" => {
                let v = config_json(&[(var, "registry,decider")]);
                assert_eq!(v["values"]["system_services.enable"]["value"], json!(["registry", "decider"]), "{v}");
            }
            "SYSDEPLOY_DISTROS_DIR" => {
                let distros = sb.distros();
                let d = distros.to_str().unwrap();
                let v = config_json(&[(var, d)]);
                assert!(v["values"].get("system_services.kv_store.greeting").is_some(), "packages come from {d}: {v}");
                // Every command, not only `config`.
                sb.config(&["kv-store"], 10_000, "hello", "");
                for cmd in [&["plan", "--json"][..], &["status", "--json"], &["run", "--once"]] {
                    let mut c = Command::new(BIN);
                    clean_env(&mut c);
                    c.args(["--state-dir", sb.state().to_str().unwrap(), "--config", sb.config_path().to_str().unwrap()]);
                    let o = out(c.args(cmd).env(var, d));
                    assert_eq!(o.code, Some(0), "{cmd:?} with {var}: {o:?}");
                }
            }
            "RUST_LOG" => {
                let run = |env: &[(&str, &str)]| {
                    let f = dir.join("none.toml");
                    std::fs::write(&f, "[system_services]\nenable = []\n").unwrap();
                    let mut c = Command::new(BIN);
                    clean_env(&mut c);
                    c.args(["--state-dir", dir.join("rust-log-state").to_str().unwrap(), "--config", f.to_str().unwrap()]);
                    let o = out(c.args(["run", "--once"]).envs(env.iter().copied()));
                    assert_eq!(o.code, Some(0), "{o:?}");
                    o.stderr
                };
                assert!(!run(&[]).contains("DEBUG"));
                assert!(run(&[(var, "debug")]).contains("DEBUG"), "RUST_LOG=debug shows debug records");
            }
            "SYSDEPLOY_BOOTSTRAP_FROM" | "SYSDEPLOY_BOOTSTRAP_TOKEN_FILE" => {
                // Both from env (tests/bootstrap.rs has the real peers): a
                // peer that does not answer is named from the env's URL.
                use std::os::unix::fs::OpenOptionsExt;
                let tf = dir.join("peer.token");
                let _ = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tf).and_then(|mut f| {
                    use std::io::Write;
                    f.write_all(b"0000")
                });
                let url = format!("http://{}", free_addr());
                let state = dir.join("bootstrap-state");
                let mut c = Command::new(BIN);
                clean_env(&mut c);
                c.args(["--state-dir", state.to_str().unwrap(), "run", "--once"]);
                let o = out(c.env("SYSDEPLOY_BOOTSTRAP_FROM", &url).env("SYSDEPLOY_BOOTSTRAP_TOKEN_FILE", &tf));
                assert_eq!(o.code, Some(1), "{o:?}");
                assert!(o.stderr.contains(&url), "{o:?}");
                assert!(!state.exists(), "nothing written: {o:?}");
            }
            other => panic!("`--help` documents {other}, which this test does not know how to try: add it here"),
        }
    }
}

// ------------------------------------------ issue 12 item 4, item 5: modes

/// Everything the node creates is private to its user even under umask 022
/// (state.db and service data dirs used to be 0644/0755), and an existing
/// state dir that others can reach (systemd's `StateDirectory=` makes 0755)
/// is made 0700 with a warning. Then an `enable` list naming no package, from
/// env or a flag, is refused with exit 2 and nothing on disk changes.
#[test]
fn the_node_creates_only_private_files_and_refuses_an_enable_naming_nothing() {
    let sb = Sandbox::new();
    sb.config(&["kv-store", "kv-other"], 10_000, "hello", "");
    std::fs::create_dir(sb.state()).unwrap();
    std::fs::set_permissions(sb.state(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The umask a supervisor or shell commonly hands down.
    let mut c = Command::new("sh");
    c.arg("-c").arg("umask 022; exec \"$@\"").arg("sh").arg(BIN);
    c.args(sb.cmd(free_addr()).get_args());
    clean_env(&mut c);
    let o = out(c.args(["run", "--once"]));
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stderr.contains("changed it to 0700"), "the repair is logged: {}", o.stderr);

    let files = snapshot(&sb.state());
    assert!(files.keys().any(|p| p.ends_with("state.db")), "{files:?}");
    assert!(files.keys().any(|p| p.parent().is_some_and(|d| d.ends_with("services"))), "service data dirs exist: {files:?}");
    let mut open = vec![];
    let root = std::fs::metadata(sb.state()).unwrap().permissions().mode() & 0o777;
    if root != 0o700 {
        open.push(format!("{}: {root:03o}", sb.state().display()));
    }
    for (p, (mode, _)) in &files {
        if mode & 0o077 != 0 {
            open.push(format!("{}: {mode:03o}", p.display()));
        }
    }
    assert!(open.is_empty(), "group/other-accessible: {open:#?}");

    // Issue 12 item 4: `,`, ` , ` (and the empty value) name no package.
    let before = snapshot(&sb.state());
    for value in ["", ",", " , "] {
        for (env, flag) in [(Some(value), None), (None, Some(format!("system_services.enable={value}")))] {
            let mut args = vec![];
            if let Some(f) = &flag {
                args.extend(["--set", f.as_str()]);
            }
            args.extend(["run", "--once"]);
            let envs: Vec<(&str, &str)> = env.map(|v| ("SYSDEPLOY_SYSTEM_SERVICES__ENABLE", v)).into_iter().collect();
            let o = sb.run(&args, &envs);
            assert_eq!(o.code, Some(2), "{value:?} {flag:?}: {o:?}");
            assert!(o.stderr.contains("names no package") || o.stderr.contains("would remove every system service"), "{o:?}");
        }
    }
    assert_eq!(snapshot(&sb.state()), before, "nothing on disk changed");
}

// ------------------------------------------------ item 6: clock stepped back

mod clock {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use sysdeploy::ids::{Alias, PeerId};
    use sysdeploy::spell::{Scheduler, ServiceCaller, SpellConfig, SpellDef, Spells, TokioClock, Trigger};
    use sysdeploy::store::Store;

    struct NoServices;
    impl ServiceCaller for NoServices {
        fn call(&self, alias: &str, _: &str, _: Value) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + '_>> {
            let alias = alias.to_string();
            Box::pin(async move { Err(format!("no service {alias}")) })
        }
    }

    const B: u64 = 1_700_000_000;
    /// How far ahead the clock was at the first boot.
    const AHEAD: u64 = 1_000_000;

    fn spells(db: &Path, unix: u64) -> Spells {
        let cfg = SpellConfig::new(PeerId::from_ed25519_public(&[1u8; 32]));
        Spells::with_clock(Store::open(db).unwrap(), Arc::new(NoServices), cfg, Arc::new(TokioClock::starting_at(unix)))
    }

    /// A VM booted with its clock `AHEAD` seconds fast and ran a spell; NTP
    /// then stepped the clock back. The spell runs one period after the
    /// restart, not `AHEAD` seconds later.
    #[tokio::test(start_paused = true)]
    async fn a_last_run_in_the_future_is_clamped_to_now() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let alias = Alias::new("counter").unwrap();
        let s = spells(&db, B + AHEAD);
        let def = SpellDef::new(
            alias.clone(),
            PeerId::from_ed25519_public(&[1u8; 32]),
            r#"kv_set("n", (kv_get("n") ?? 0) + 1);"#,
            Trigger::periodic(10),
        );
        s.install(&def, &BTreeMap::new()).unwrap();
        let sched = Scheduler::start(s.clone(), std::future::pending());
        tokio::time::sleep(Duration::from_secs(1)).await;
        sched.shutdown(Duration::from_secs(1)).await;
        assert_eq!(s.get(&alias).unwrap().last_run, Some(B + AHEAD));
        drop(s);

        // The clock is stepped back: restart at B.
        let s = spells(&db, B);
        let sched = Scheduler::start(s.clone(), std::future::pending());
        tokio::time::sleep(Duration::from_secs(25)).await;
        sched.shutdown(Duration::from_secs(1)).await;
        let starts: Vec<u64> = s.history(&alias).iter().map(|r| r.started_at).collect();
        assert_eq!(starts, vec![B + AHEAD, B + 10, B + 20], "one period after the clamp, then on schedule");
        assert_eq!(s.kv(&alias).unwrap()["n"], json!(3));
    }
}
