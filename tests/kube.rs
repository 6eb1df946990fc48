//! Kubernetes (issue 15, this slice): the kustomize base in
//! `deploy/kubernetes/` rendered (`kubectl kustomize`) and validated offline
//! by `kubernetes-validate --strict` (bundled schemas); the manifests agree
//! with the binary (every env var and config key they set is accepted and
//! used, the probe paths answer on the port the node listens on, the grace
//! period covers the drain); `node.watch_config` reloading an in-place edit
//! and a Kubernetes-style `..data` symlink swap, refusing an invalid edit
//! while the node keeps serving; secret files mounted with `fsGroup` (0440,
//! group of the process) accepted; `call`, `reload`, `health` needing only
//! `api.token`.
//!
//! A test needing `kubernetes-validate` (pip; it brings PyYAML, which the
//! tests use to read the YAML) prints a loud SKIPPED message when it is
//! absent (`.ci/run` installs it). Without `kubectl` or `kustomize` the base
//! is rendered by concatenating its resources with the generated ConfigMap
//! (the labels and images transformers are then not applied), and the test
//! says so.

use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod harness;
use harness::{free_addr, Node};

/// Upper bound for anything that should happen "soon"; reaching it fails.
const PATIENCE: Duration = Duration::from_secs(120);

fn bin() -> PathBuf {
    std::env::var_os("TEST_SYSDEPLOY_BIN").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_BIN_EXE_sysdeploy").into())
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn skipped(what: &str) {
    eprintln!("\n!!!!! SKIPPED: {what} !!!!!\n");
}

/// The path of `name` on `PATH`, if any.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
}

/// Whether Python has `kubernetes_validate` (and so PyYAML); loud when not.
fn have_kubernetes_validate() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import kubernetes_validate, yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skipped(
            "the Python package kubernetes-validate is not installed (pip install kubernetes-validate; .ci/run does \
             this); the Kubernetes manifests are NOT validated",
        );
    }
    ok
}

fn run_with_stdin(cmd: &mut Command, stdin: &str) -> std::process::Output {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Every document of a YAML stream, as JSON (PyYAML's safe loader).
fn yaml_docs(text: &str) -> Vec<Value> {
    let o = run_with_stdin(
        Command::new("python3")
            .args(["-c", "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)"]),
        text,
    );
    assert!(o.status.success(), "reading YAML: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The base rendered as one YAML stream, and how.
fn render() -> (String, &'static str) {
    let base = repo("deploy/kubernetes");
    for (tool, args) in [("kubectl", &["kustomize"][..]), ("kustomize", &["build"][..])] {
        if on_path(tool).is_some() {
            let o = Command::new(tool).args(args).arg(&base).output().unwrap();
            assert!(o.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            return (String::from_utf8(o.stdout).unwrap(), tool);
        }
    }
    eprintln!(
        "\n!!!!! NOTE: neither kubectl nor kustomize is installed: the base is rendered by concatenating its resources \
         with the ConfigMap its configMapGenerator makes; the labels and images transformers are NOT applied !!!!!\n"
    );
    let k = &yaml_docs(&std::fs::read_to_string(base.join("kustomization.yaml")).unwrap())[0];
    let mut out = String::new();
    for r in k["resources"].as_array().unwrap() {
        out.push_str(&std::fs::read_to_string(base.join(r.as_str().unwrap())).unwrap());
        out.push_str("\n---\n");
    }
    for g in k["configMapGenerator"].as_array().unwrap() {
        let mut data = serde_json::Map::new();
        for f in g["files"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            data.insert(f.into(), std::fs::read_to_string(base.join(f)).unwrap().into());
        }
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": g["name"]}, "data": data});
        // JSON is YAML.
        out.push_str(&cm.to_string());
        out.push_str("\n---\n");
    }
    (out, "concatenation")
}

/// `kubernetes-validate --strict` on `file` for `version` (None: its
/// newest): exit status and output.
fn validate(file: &Path, version: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "kubernetes_validate", "--strict"]);
    if let Some(v) = version {
        cmd.args(["-k", v]);
    }
    let o = cmd.arg(file).output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

// --------------------------------------------------------------- manifests

/// The base renders and every resource passes `kubernetes-validate
/// --strict` (unknown fields are errors) against the oldest Kubernetes we
/// document (1.29) and the newest schemas bundled; a misspelled field is
/// caught, so the validator does look.
#[test]
fn the_kustomize_base_renders_and_validates_offline() {
    if !have_kubernetes_validate() {
        return;
    }
    let (yaml, how) = render();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let kinds: Vec<String> = yaml_docs(&yaml).iter().map(|d| d["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "StatefulSet").count(), 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "ConfigMap").count(), 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "Service").count(), 2, "{kinds:?}");
    for version in [Some("1.29.0"), None] {
        let (ok, said) = validate(&file, version);
        assert!(ok, "kubernetes-validate {version:?} ({how}):\n{said}");
        assert_eq!(said.matches(" passed for resource ").count(), kinds.len(), "every resource checked ({version:?}):\n{said}");
        assert!(!said.contains("ERROR") && !said.contains("WARN"), "{said}");
    }
    // The validator is not a rubber stamp: a misspelled field fails.
    std::fs::write(&file, yaml.replace("terminationGracePeriodSeconds:", "terminationGracePeriod:")).unwrap();
    let (ok, said) = validate(&file, None);
    assert!(!ok && said.contains("terminationGracePeriod"), "a misspelled field must fail --strict:\n{said}");
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// The named port of the container, or the number itself.
fn port_of(container: &Value, port: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(name) => container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
            .as_u64()
            .unwrap(),
        other => panic!("bad port {other}"),
    }
}

/// Flattens a TOML document to dotted key paths.
fn toml_keys(text: &str) -> Vec<String> {
    fn walk(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in t {
            let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(t) => walk(&p, t, out),
                _ => out.push(p),
            }
        }
    }
    let mut out = Vec::new();
    walk("", &text.parse::<toml::Table>().unwrap(), &mut out);
    out
}

/// What the manifests set agrees with what the binary accepts and does:
/// the pod's security settings; the config file from the ConfigMap, mounted
/// as a directory where `--config` points; the secret `_FILE` paths inside
/// the Secret's mount; the state dir under the volume claim; the probes on
/// the port the node listens on; the grace period covering the drain. Then
/// the binary, run with the manifest's own args and env (paths moved into a
/// temp dir, the secret file 0440 with our group as `fsGroup` makes it):
/// `config` accepts every env var and every key of the ConfigMap and takes
/// each value from there; `run` answers every probe path with 200 and stops
/// with exit 0 on SIGTERM.
#[test]
fn the_manifests_agree_with_the_binary() {
    if !have_kubernetes_validate() {
        return;
    }
    let docs = yaml_docs(&render().0);
    let sts = find(&docs, "StatefulSet")[0];
    let cm = find(&docs, "ConfigMap")[0];
    let pod = &sts["spec"]["template"]["spec"];
    let c = &pod["containers"][0];

    // Security and lifecycle.
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert!(psc["runAsUser"].as_u64().unwrap() > 0 && psc["fsGroup"].as_u64().is_some(), "{psc}");
    assert_eq!(psc["fsGroupChangePolicy"], "OnRootMismatch", "Always would make node.key group-readable at every mount");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(pod["enableServiceLinks"], false, "service links inject SYSDEPLOY_* variables the node refuses");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let drain = (sysdeploy::node::API_DRAIN + sysdeploy::node::SPELL_GRACE).as_secs();
    assert!(grace > drain, "terminationGracePeriodSeconds {grace} must exceed the drain {drain} s");

    let env: Vec<(String, String)> =
        c["env"].as_array().unwrap().iter().map(|e| (s(&e["name"]).to_string(), s(&e["value"]).to_string())).collect();
    let var = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mounts = c["volumeMounts"].as_array().unwrap();
    let volume = |name: &str| pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).cloned();
    let mount_of = |dir: &Path| {
        mounts.iter().find(|m| Path::new(s(&m["mountPath"])) == dir).unwrap_or_else(|| panic!("nothing is mounted at {}", dir.display()))
    };

    // The config file: a key of the ConfigMap, in a whole-directory mount
    // (a subPath mount never sees updates, so watch_config would not either).
    let args: Vec<String> = c["args"].as_array().unwrap().iter().map(|a| s(a).to_string()).collect();
    let at = args.iter().position(|a| a == "--config").expect("--config in args");
    let config_path = PathBuf::from(&args[at + 1]);
    let m = mount_of(config_path.parent().unwrap());
    assert!(m.get("subPath").is_none(), "{m}");
    let v = volume(s(&m["name"])).unwrap();
    assert_eq!(v["configMap"]["name"], cm["metadata"]["name"]);
    let config_text = s(&cm["data"][config_path.file_name().unwrap().to_str().unwrap()]).to_string();
    assert_eq!(var("SYSDEPLOY_NODE__WATCH_CONFIG").as_deref(), Some("true"));

    // The state dir: a directory inside a volume claim's mount (the node
    // creates it 0700; the mount root is the fsGroup's).
    let state_dir = PathBuf::from(var("SYSDEPLOY_NODE__STATE_DIR").unwrap());
    let claim_mount = mounts
        .iter()
        .find(|m| state_dir.starts_with(s(&m["mountPath"])))
        .unwrap_or_else(|| panic!("state dir {} is on no volume", state_dir.display()));
    assert_ne!(Path::new(s(&claim_mount["mountPath"])), state_dir, "the state dir must be below the volume's root");
    let claims = sts["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert!(claims.iter().any(|t| t["metadata"]["name"] == claim_mount["name"]), "the state volume is a volumeClaimTemplate");

    // Secret files: inside the Secret's mount, named by one of its items.
    let file_vars: Vec<&(String, String)> = env.iter().filter(|(k, _)| k.ends_with("_FILE")).collect();
    assert!(!file_vars.is_empty(), "the base gives the wallet key as a file");
    for (k, p) in &file_vars {
        let p = Path::new(p);
        let m = mount_of(p.parent().unwrap());
        let secret = &volume(s(&m["name"])).unwrap()["secret"];
        assert!(secret.is_object(), "{k}: {} is not in a Secret mount", p.display());
        let items: Vec<&str> = secret["items"].as_array().unwrap().iter().map(|i| s(&i["path"])).collect();
        assert!(items.contains(&p.file_name().unwrap().to_str().unwrap()), "{k}: {items:?}");
    }

    // Probes and the listening port.
    let listen: SocketAddr = var("SYSDEPLOY_NODE__API_LISTEN").unwrap().parse().unwrap();
    assert!(listen.ip().is_unspecified(), "the API must listen on the pod's address: {listen}");
    let mut probe_paths = Vec::new();
    for (probe, path) in [("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_of(c, &get["port"]), u64::from(listen.port()), "{probe} port");
        probe_paths.push(path.to_string());
    }
    for svc in find(&docs, "Service") {
        let labels = &sts["spec"]["template"]["metadata"]["labels"];
        for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&labels[k], v, "service {} selects the pods", svc["metadata"]["name"]);
        }
        for p in svc["spec"]["ports"].as_array().unwrap() {
            assert_eq!(port_of(c, &p["targetPort"]), u64::from(listen.port()));
        }
    }

    // Now the binary, with those args and env moved into a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let local_config = root.join("etc/sysdeploy.toml");
    std::fs::create_dir_all(local_config.parent().unwrap()).unwrap();
    std::fs::write(&local_config, &config_text).unwrap();
    // The volume root as fsGroup leaves it: group-writable, setgid.
    let volume_root = root.join("volume");
    std::fs::create_dir(&volume_root).unwrap();
    std::fs::set_permissions(&volume_root, std::fs::Permissions::from_mode(0o2775)).unwrap();
    let local_state = volume_root.join(state_dir.file_name().unwrap());
    let addr = free_addr();
    let mut local_env = Vec::new();
    for (k, v) in &env {
        let v = match k.as_str() {
            "SYSDEPLOY_NODE__STATE_DIR" => local_state.display().to_string(),
            "SYSDEPLOY_NODE__API_LISTEN" => addr.to_string(),
            k if k.ends_with("_FILE") => {
                // As the kubelet writes a Secret with fsGroup: 0440, our group.
                let p = root.join("secrets").join(Path::new(v).file_name().unwrap());
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, format!("0x{}\n", "ab".repeat(32))).unwrap();
                fs_group_file(&p, 0o440);
                p.display().to_string()
            }
            _ => v.clone(),
        };
        local_env.push((k.clone(), v));
    }
    let mut local_args = args.clone();
    local_args[at + 1] = local_config.display().to_string();
    let cmd_at = local_args.iter().position(|a| a == "run").expect("the container runs `run`");
    let command = |sub: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.args(&local_args[..cmd_at]).args(sub).env_clear().envs(local_env.iter().map(|(k, v)| (k, v))).current_dir(root);
        cmd
    };

    let o = command(&["config", "--json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "`sysdeploy config` refuses what the manifests set:\n{stderr}");
    let cfg: Value = serde_json::from_slice(&o.stdout).unwrap();
    let values = &cfg["values"];
    for (k, _) in &env {
        let (key, expected) = match k.strip_suffix("_FILE") {
            Some(plain) => (plain, "file "),
            None => (k.as_str(), "env "),
        };
        let path = key.strip_prefix("SYSDEPLOY_").unwrap().to_lowercase().replace("__", ".");
        let source = values[&path]["source"].as_str().unwrap_or_else(|| panic!("{k} sets no key ({path}): {values}"));
        assert!(source.starts_with(expected) && source.contains(k.as_str()), "{k}: {path} comes from {source}");
    }
    let from_file = format!("{}:", local_config.display());
    for key in toml_keys(&config_text) {
        let source = values[&key]["source"].as_str().unwrap_or_else(|| panic!("ConfigMap key {key} is unknown"));
        assert!(source.starts_with(&from_file), "ConfigMap key {key} comes from {source}");
    }

    // Run it; every probe path answers 200 (liveness at once, readiness
    // once deployed), and SIGTERM stops it with exit 0.
    let mut node = Node::spawn(&mut command(&local_args[cmd_at..].iter().map(String::as_str).collect::<Vec<_>>()), addr);
    for path in &probe_paths {
        node.wait_for(path, 200);
    }
    assert_eq!(std::fs::metadata(&local_state).unwrap().mode() & 0o777, 0o700, "the node made its state dir private");
    node.signal(libc::SIGTERM);
    let st = node.wait_exit();
    assert_eq!(st.code(), Some(0), "SIGTERM is an orderly stop; log:\n{}", node.log());
    assert!(!stderr.contains("0xabab") && !node.log().contains("0xabab"), "the secret never shows");
}

/// `chmod mode` and `chgrp` to our effective gid: what the kubelet does to a
/// Secret volume's files with `fsGroup` (the process runs in that group).
fn fs_group_file(p: &Path, mode: u32) {
    // SAFETY: getegid has no preconditions.
    let gid = unsafe { libc::getegid() };
    std::os::unix::fs::chown(p, None, Some(gid)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ------------------------------------------------------------- fsGroup

/// A secret file that only the owner and one of the process's groups can
/// read (0440/0640, as Kubernetes mounts a Secret with `fsGroup`) is
/// accepted; group write, other bits, or a group the process is not in are
/// refused with exit 2 naming the path, mode and group.
#[test]
fn secret_files_mounted_with_fs_group_are_accepted() {
    const ENV_FILE: &str = "SYSDEPLOY_SYSTEM_SERVICES__DECIDER__WALLET_KEY_FILE";
    const KEY: &str = "system_services.decider.wallet_key";
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wallet_key");
    std::fs::write(&p, "0xS3CRET\n").unwrap();
    let config = |p: &Path| {
        let o = Command::new(bin()).args(["config", "--json"]).env_clear().env(ENV_FILE, p).current_dir(dir.path()).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    for mode in [0o440, 0o640] {
        fs_group_file(&p, mode);
        let (code, out, err) = config(&p);
        assert_eq!(code, Some(0), "mode {mode:o} with our group: {err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert!(s(&v["values"][KEY]["source"]).starts_with(&format!("file {}", p.display())), "{out}");
        assert!(!out.contains("S3CRET") && !err.contains("S3CRET"));
    }
    for (mode, why) in [(0o460, "write or execute"), (0o660, "write or execute"), (0o444, "other users"), (0o640 | 0o004, "other users")] {
        fs_group_file(&p, mode);
        let (code, _, err) = config(&p);
        assert_eq!(code, Some(2), "mode {mode:o}: {err}");
        for needle in [p.to_str().unwrap(), &format!("mode {mode:04o}"), why, "chmod 600"] {
            assert!(err.contains(needle), "mode {mode:o}: stderr lacks {needle:?}: {err}");
        }
    }
    // A group the process is not in: only root may give the file one.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skipped("not root: cannot chgrp a file to a group this process is not in; the foreign-group case is not tested here");
        return;
    }
    let foreign = 54_321;
    std::os::unix::fs::chown(&p, None, Some(foreign)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o440)).unwrap();
    let (code, _, err) = config(&p);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not in that group") && err.contains(&format!("gid {foreign}")), "{err}");
}

// ------------------------------------------------------- running nodes

impl Node {
    /// Polls `check` until it returns `Some`; fails after [`PATIENCE`] or if
    /// the node exits.
    fn wait_until<T>(&mut self, what: &str, mut check: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("node exited ({st}) before {what}; log:\n{}", self.log());
            }
            if let Some(v) = check(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "never: {what}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn wait_for(&mut self, path: &str, status: u16) -> Value {
        self.wait_until(&format!("{path} answered {status}"), |n| {
            http(n.addr, "GET", path, None).filter(|(st, _)| *st == status).map(|(_, body)| body)
        })
    }
}

/// One request; `None` when the node cannot be reached. The body as JSON
/// (`Null` when it is not JSON).
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Option<(u16, Value)> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).proxy(None).timeout_global(Some(PATIENCE)).build().into();
    let url = format!("http://{addr}{path}");
    let auth = format!("Bearer {}", token.unwrap_or(""));
    let mut resp = match method {
        "GET" => agent.get(&url).header("Authorization", &auth).call(),
        _ => agent.post(&url).header("Authorization", &auth).header("Content-Type", "application/json").send("[]"),
    }
    .ok()?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().ok()?;
    Some((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// A temp dir with the `kv-store` test package (its greeting is given at
/// init; a change replaces the service) and a state dir.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let sb = Sandbox { dir: tempfile::tempdir().unwrap() };
        let to = sb.path("distros/kv-store");
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(repo("tests/distros/node/kv-store")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        sb
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn cmd(&self, config: &Path, addr: SocketAddr) -> Command {
        let mut c = Command::new(bin());
        c.arg("--state-dir")
            .arg(self.path("state"))
            .arg("--config")
            .arg(config)
            .arg("--distros-dir")
            .arg(self.path("distros"))
            .arg("--api-listen")
            .arg(addr.to_string())
            .env_clear()
            .env("RUST_LOG", "info");
        c
    }
    fn token(&self) -> String {
        std::fs::read_to_string(self.path("state/api.token")).unwrap().trim().to_string()
    }
}

fn kv_config(greeting: &str, watch: bool) -> String {
    format!(
        "[node]\nwatch_config = {watch}\n\n[system_services]\nenable = [\"kv-store\"]\n\n[system_services.kv_store]\ngreeting = \
         {greeting}\n"
    )
}

/// The greeting the running kv-store service was initialised with.
fn greeting(n: &Node, token: &str) -> Option<String> {
    match http(n.addr, "POST", "/v1/services/kv-store/call/greeting", Some(token)) {
        Some((200, Value::String(g))) => Some(g),
        _ => None,
    }
}

// --------------------------------------------------------- watch_config

/// `node.watch_config = true`: the node reloads by itself when its config
/// file changes — written in place, or swapped the way the kubelet updates
/// a mounted ConfigMap (`sysdeploy.toml -> ..data/sysdeploy.toml`,
/// `..data -> ..v1` renamed over by a link to a new `..v2`). An invalid
/// edit is refused (recorded as the last deployment, logged) and the node
/// keeps serving the old config; the next valid edit is applied.
#[test]
fn watch_config_reloads_in_place_edits_and_configmap_swaps_and_refuses_invalid_ones() {
    let sb = Sandbox::new();
    let mount = sb.path("etc");
    std::fs::create_dir_all(mount.join("..v1")).unwrap();
    std::fs::write(mount.join("..v1/sysdeploy.toml"), kv_config("\"one\"", true)).unwrap();
    std::os::unix::fs::symlink("..v1", mount.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/sysdeploy.toml", mount.join("sysdeploy.toml")).unwrap();
    let addr = free_addr();
    let mut cmd = sb.cmd(&mount.join("sysdeploy.toml"), addr);
    cmd.arg("run");
    let mut node = Node::spawn(&mut cmd, addr);
    node.wait_for("/health", 200);
    let token = sb.token();
    assert_eq!(greeting(&node, &token).as_deref(), Some("one"));
    assert!(node.log().contains("node.watch_config: reloading when these files change"), "{}", node.log());

    // The kubelet's atomic swap: a new timestamped dir, `..data` renamed over.
    let swap = |version: &str, text: String| {
        std::fs::create_dir(mount.join(version)).unwrap();
        std::fs::write(mount.join(version).join("sysdeploy.toml"), text).unwrap();
        std::os::unix::fs::symlink(version, mount.join("..data_tmp")).unwrap();
        std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    };
    swap("..v2", kv_config("\"two\"", true));
    node.wait_until("the swapped ConfigMap is applied", |n| greeting(n, &token).filter(|g| g == "two"));

    // In place (an editor that writes the file itself).
    std::fs::write(mount.join("..v2/sysdeploy.toml"), kv_config("\"three\"", true)).unwrap();
    node.wait_until("the in-place edit is applied", |n| greeting(n, &token).filter(|g| g == "three"));

    // Invalid: refused and recorded; the node keeps serving "three".
    std::fs::write(mount.join("..v2/sysdeploy.toml"), kv_config("5", true)).unwrap();
    let last = node.wait_until("the invalid edit is refused", |n| {
        http(n.addr, "GET", "/v1/deployments/last", Some(&token))
            .map(|(_, v)| v)
            .filter(|v| v["error"].as_str().is_some_and(|e| e.contains("greeting")))
    });
    assert_eq!(last["trigger"], "reload", "{last}");
    assert!(node.log().contains("reload refused"), "{}", node.log());
    assert_eq!(greeting(&node, &token).as_deref(), Some("three"), "the node keeps serving the last good config");
    assert_eq!(http(addr, "GET", "/readyz", None).unwrap().0, 200);

    // Fixed by the next swap: applied.
    swap("..v3", kv_config("\"four\"", true));
    node.wait_until("the fixed ConfigMap is applied", |n| greeting(n, &token).filter(|g| g == "four"));
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit().code(), Some(0), "{}", node.log());
}

// ------------------------------------------------------------ token only

/// `call`, `reload` and `health` need only `api.token` (and the node's
/// recorded address): they work with `node.key` gone from the state dir
/// (and, not as root, unreadable), as for an operator account that may
/// read the token and nothing else.
#[test]
fn call_reload_and_health_need_only_the_token() {
    let sb = Sandbox::new();
    let config = sb.path("sysdeploy.toml");
    std::fs::write(&config, kv_config("\"hi\"", false)).unwrap();
    let addr = free_addr();
    let mut cmd = sb.cmd(&config, addr);
    cmd.arg("run");
    let mut node = Node::spawn(&mut cmd, addr);
    node.wait_for("/health", 200);

    let key = sb.path("state/node.key");
    let ops = |label: &str| {
        // Another configured address: the recorded one must be used.
        let elsewhere = free_addr();
        for args in [&["call", "kv-store", "greeting"][..], &["reload"], &["health"]] {
            let o = sb.cmd(&config, elsewhere).args(args).output().unwrap();
            let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            assert!(o.status.success(), "{label}: `{}` failed ({:?}): {err}", args.join(" "), o.status);
            if args[0] == "call" {
                assert_eq!(out.trim(), "\"hi\"", "{label}");
            }
        }
    };
    // Unreadable: only a non-root caller is stopped by mode 000.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000)).unwrap();
        ops("node.key unreadable");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    } else {
        skipped("running as root: node.key cannot be made unreadable; only the absent-key case runs");
    }
    let away = sb.path("node.key.away");
    std::fs::rename(&key, &away).unwrap();
    ops("node.key absent");
    std::fs::rename(&away, &key).unwrap();
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit().code(), Some(0), "{}", node.log());
}
