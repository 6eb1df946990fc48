//! The deep-tree attack through the real binary: a guest builds a
//! 15,000-level tree, then an operator's `POST /v1/reload` replaces its
//! service with `keep_data` (the copy used to fail with `File name too
//! long`, and with `on_failure = "stop"` every boot failed) and then removes
//! the package (the removal used to overflow a worker's stack and abort the
//! whole process). The node stays up and the neighbour keeps its data.

use super::walker::{depth, DEEP};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound for what should happen "soon" on a busy shared machine;
/// reaching it is a failure, never a pass.
const PATIENCE: Duration = Duration::from_secs(300);

fn bin() -> PathBuf {
    std::env::var_os("TEST_SYSDEPLOY_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sysdeploy")))
}

/// A running `sysdeploy run` over a temp state dir; killed on drop.
struct Node {
    dir: tempfile::TempDir,
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Node {
    fn config(dir: &Path, enable: &[&str], generation: &str) {
        let enable: Vec<String> = enable.iter().map(|p| format!("{p:?}")).collect();
        let text = format!(
            "[system_services]\nenable = [{}]\non_failure = \"stop\"\ncall_ttl_ms = 300000\n\n[system_services.hostile]\ngeneration = {generation:?}\n",
            enable.join(", ")
        );
        std::fs::write(dir.join("sysdeploy.toml"), text).unwrap();
    }

    fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        Node::config(dir.path(), &["hostile", "kv-store"], "1");
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut child = Command::new(bin())
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--config")
            .arg(dir.path().join("sysdeploy.toml"))
            .arg("--distros-dir")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distros/containment"))
            .arg("--api-listen")
            .arg(addr.to_string())
            .arg("run")
            .env_remove("FAILPOINTS")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut node = Node { dir, child, addr, log };
        let deadline = Instant::now() + PATIENCE;
        while node.http("GET", "/health", None).map(|r| r.0) != Some(200) {
            node.assert_alive("booting");
            assert!(Instant::now() < deadline, "never ready; log:\n{}", node.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn assert_alive(&mut self, when: &str) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("the node died {when} ({st}); log:\n{}", self.log());
        }
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state/api.token")).unwrap().trim().to_string()
    }

    /// One HTTP/1.1 request (`Connection: close`); `None` when the node does
    /// not answer at all.
    fn http(&self, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
        let mut s = TcpStream::connect(self.addr).ok()?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = if path.starts_with("/v1") { format!("Authorization: Bearer {}\r\n", self.token()) } else { String::new() };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        let status = raw.split(' ').nth(1)?.parse().ok()?;
        let text = raw.split_once("\r\n\r\n")?.1;
        Some((status, serde_json::from_str(text).unwrap_or(Value::String(text.into()))))
    }

    /// A call that must answer 200.
    fn call(&mut self, alias: &str, f: &str, args: Value) -> Value {
        let r = self.http("POST", &format!("/v1/services/{alias}/call/{f}"), Some(&args));
        self.assert_alive(&format!("during {alias}.{f}"));
        let (status, body) = r.unwrap_or_else(|| panic!("{alias}.{f}: no answer; log:\n{}", self.log()));
        assert_eq!(status, 200, "{alias}.{f}: {body}");
        body
    }

    /// `POST /v1/reload` that must succeed, the node alive after it.
    fn reload(&mut self) -> Value {
        let r = self.http("POST", "/v1/reload", None);
        self.assert_alive("during the reload");
        let (status, report) = r.unwrap_or_else(|| panic!("reload: no answer; log:\n{}", self.log()));
        assert_eq!(status, 200, "reload: {report}");
        assert_eq!(report["outcome"], "ok", "{report}");
        assert_eq!(self.http("GET", "/health", None).map(|r| r.0), Some(200));
        report
    }

    fn service_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("state/services")).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The temp dir's own removal recurses; take the deep tree down first.
        for d in self.service_dirs() {
            let _ = sysdeploy::tree::remove_tree(&d);
        }
    }
}

fn actions(report: &Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] != "keep")
        .map(|s| format!("{} {}", s["action"].as_str().unwrap(), s["alias"].as_str().unwrap()))
        .collect()
}

#[test]
fn a_15000_level_tree_survives_replace_and_removal_through_reload_and_the_node_stays_up() {
    let _serial = super::serial();
    let mut node = Node::start();
    node.call("kv-store", "put", json!(["mine", "kept"]));
    assert_eq!(node.call("hostile", "deep", json!(["deep", DEEP])), json!({"ok": DEEP}));

    // Replace with keep_data: the deep tree is copied.
    Node::config(node.dir.path(), &["hostile", "kv-store"], "2");
    let report = node.reload();
    assert_eq!(actions(&report), vec!["replace hostile".to_string()], "{report}");
    assert_eq!(node.call("hostile", "depth", json!(["deep"])), json!({"ok": DEEP}), "the new instance has every level");
    assert_eq!(node.call("hostile", "get-file", json!(["generation"])), json!({"ok": "2"}));
    let dirs = node.service_dirs();
    assert_eq!(dirs.len(), 2, "the old data dir is gone: {dirs:?}");
    assert!(dirs.iter().any(|d| depth(&d.join("deep")) == DEEP));

    // Remove the package: its data dir goes, the node stays up.
    Node::config(node.dir.path(), &["kv-store"], "2");
    let report = node.reload();
    assert_eq!(actions(&report), vec!["remove hostile".to_string()], "{report}");
    assert_eq!(node.service_dirs().len(), 1, "only the neighbour's data dir is left");
    assert_eq!(node.call("kv-store", "get", json!(["mine"])), json!("kept"));
    node.assert_alive("after the removal");
}
