//! Snapshots of a running node and nodes started from a peer (issue 17),
//! black-box: real `sysdeploy run` processes on loopback with the kv-store
//! package of `tests/distros/node/`, real HTTP, real SIGKILL.
//!
//! - a snapshot taken through `POST /v1/snapshots` while clients write holds
//!   every write acknowledged before the request was sent, and no torn value;
//! - `run --bootstrap-from` a running peer converges (empty plan, same data,
//!   new identity) and is ignored once the state dir holds a node;
//! - a truncated, cut or corrupted fetch, and a token the peer refuses, exit
//!   non-zero naming the URL (never the token) and leave no state dir;
//! - a SIGKILL during the bootstrap's restore leaves a state dir the next
//!   attempt handles (`failpoints` feature);
//! - one snapshot at a time (`busy`), never the identity through the API.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod harness;
use harness::{eventually, free_addr, http, http_bytes, try_http, Node, Out, BIN, PATIENCE};

/// The per-service hold lines of an online snapshot are `debug` (one line
/// per service would flood a large node's log); tests that wait for them ask.
const LOG_HOLDS: &str = "info,sysdeploy::snapshot::online=debug";

fn distros() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distros/node")
}

/// A temp dir with a state dir and a config file enabling kv-store.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let sb = Sandbox { dir: tempfile::tempdir().unwrap() };
        std::fs::write(sb.config_path(), "[system_services]\nenable = [\"kv-store\"]\non_failure = \"stop\"\n").unwrap();
        sb
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn config_path(&self) -> PathBuf {
        self.dir.path().join("sysdeploy.toml")
    }
    fn cmd(&self, addr: SocketAddr) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--state-dir")
            .arg(self.state())
            .arg("--config")
            .arg(self.config_path())
            .arg("--distros-dir")
            .arg(distros())
            .arg("--api-listen")
            .arg(addr.to_string())
            .env_remove("RUST_LOG")
            .env_remove("FAILPOINTS")
            .env_remove("SYSDEPLOY_BOOTSTRAP_FROM")
            .env_remove("SYSDEPLOY_BOOTSTRAP_TOKEN_FILE")
            .env_remove("NOTIFY_SOCKET");
        c
    }
    fn run(&self, args: &[&str]) -> Out {
        let o = self.cmd(free_addr()).args(args).stdin(Stdio::null()).output().unwrap();
        Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    fn token(&self) -> String {
        std::fs::read_to_string(self.state().join("api.token")).unwrap().trim().to_string()
    }
    /// A token file (0600) holding `token`.
    fn token_file(&self, token: &str) -> PathBuf {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.dir.path().join(format!("peer-token-{}", token.len()));
        let _ = std::fs::remove_file(&p);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).unwrap();
        writeln!(f, "{token}").unwrap();
        p
    }
    /// `run --once --bootstrap-from URL --bootstrap-token-file FILE`.
    fn bootstrap_once(&self, url: &str, token_file: &Path) -> Out {
        self.run(&["run", "--once", "--bootstrap-from", url, "--bootstrap-token-file", token_file.to_str().unwrap()])
    }
    fn status(&self) -> Value {
        let o = self.run(&["status", "--json"]);
        assert_eq!(o.code, Some(0), "status failed: {o:?}");
        serde_json::from_str(&o.stdout).unwrap()
    }
    fn plan(&self) -> Value {
        let o = self.run(&["plan", "--json"]);
        assert_eq!(o.code, Some(0), "plan failed: {o:?}");
        serde_json::from_str(&o.stdout).unwrap()
    }
    /// The state dir is absent or empty.
    fn assert_no_state(&self, what: &str) {
        let entries: Vec<String> = match std::fs::read_dir(self.state()) {
            Ok(d) => d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        };
        assert!(entries.is_empty(), "{what}: the state dir holds {entries:?}");
    }
}

impl Node {
    fn start(sb: &Sandbox, extra: &[&str], env: &[(&str, &str)]) -> Node {
        let addr = free_addr();
        let mut cmd = sb.cmd(addr);
        cmd.arg("run").args(extra).envs(env.iter().copied());
        Node::spawn(&mut cmd, addr)
    }
    fn ready(sb: &Sandbox, extra: &[&str]) -> Node {
        let mut n = Node::start(sb, extra, &[]);
        n.wait_ready();
        n
    }
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("node exited ({st}) before it was ready; log:\n{}", self.log());
            }
            if try_http(self.addr, "GET", "/health", None, None).is_some_and(|r| r.status == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "node never became ready; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn put(&self, token: &str, key: &str, value: &str) -> bool {
        put(self.addr, token, key, value)
    }
    fn get(&self, token: &str, key: &str) -> Value {
        let r = http(self.addr, "POST", "/v1/services/kv-store/call/get", Some(token), Some(json!([key]).to_string().into_bytes()));
        assert_eq!(r.status, 200, "get {key}: {}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }
    /// The whole archive of `GET /v1/snapshot`.
    fn snapshot(&self, token: &str) -> Vec<u8> {
        let r = http_bytes(self.addr, "GET", "/v1/snapshot", Some(token), None);
        assert_eq!(r.0, 200, "GET /v1/snapshot: {}", String::from_utf8_lossy(&r.1));
        r.1
    }
}

/// `kv-store.put(key, value)`; whether the node acknowledged it (200).
fn put(addr: SocketAddr, token: &str, key: &str, value: &str) -> bool {
    try_http(addr, "POST", "/v1/services/kv-store/call/put", Some(token), Some(json!([key, value]).to_string().into_bytes()))
        .is_some_and(|r| r.status == 200)
}

/// How a fake peer answers `GET /v1/snapshot`.
#[derive(Clone, Copy, Debug)]
enum Serve {
    /// The whole archive.
    Whole,
    /// `Content-Length` of the whole archive, then the connection is closed
    /// after this many bytes (a transfer cut half-way).
    CutAt(usize),
    /// No length: this many bytes, then a clean close (a short archive that
    /// looks like a whole transfer).
    ShortAt(usize),
    /// The whole length with one byte flipped at this offset.
    Flip(usize),
}

/// A fake peer on loopback serving `archive` as `how` says, to every request.
fn fake_peer(archive: Arc<Vec<u8>>, how: Serve) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let archive = archive.clone();
            std::thread::spawn(move || answer_once(&mut conn, &archive, how));
        }
    });
    addr
}

fn answer_once(conn: &mut TcpStream, archive: &[u8], how: Serve) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let (body, length): (Vec<u8>, Option<usize>) = match how {
        Serve::Whole => (archive.to_vec(), Some(archive.len())),
        Serve::CutAt(n) => (archive[..n].to_vec(), Some(archive.len())),
        Serve::ShortAt(n) => (archive[..n].to_vec(), None),
        Serve::Flip(i) => {
            let mut b = archive.to_vec();
            b[i] ^= 0x01;
            (b, Some(archive.len()))
        }
    };
    let length = length.map(|l| format!("Content-Length: {l}\r\n")).unwrap_or_default();
    let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{length}Connection: close\r\n\r\n");
    let _ = conn.write_all(&body);
    let _ = conn.flush();
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

// ------------------------------------------------------------------ tests

/// Clients write distinct keys while a snapshot is taken through `POST
/// /v1/snapshots`; the node restored from it answers every write
/// acknowledged before the request was sent, and no value is torn.
#[test]
fn a_snapshot_taken_while_clients_write_holds_every_write_acknowledged_before_it() {
    let a = Sandbox::new();
    let node = Node::ready(&a, &[]);
    let token = a.token();

    const WRITERS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    // Per writer: (key, value) attempted, and how many of them were acknowledged.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let attempted: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let addr = node.addr;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (stop, acked, attempted, token) = (stop.clone(), acked.clone(), attempted.clone(), token.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    // Values of different lengths: a torn copy would show.
                    let (k, v) = (format!("w{w}-{i}"), format!("value {w}-{i} {}", "x".repeat(i % 97)));
                    attempted.lock().unwrap().push((k.clone(), v.clone()));
                    if put(addr, &token, &k, &v) {
                        acked.lock().unwrap().push((k, v));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    eventually("writers got 40 writes acknowledged", || acked.lock().unwrap().len() >= 40);

    // Everything acknowledged up to here must be in the snapshot.
    let before: Vec<(String, String)> = acked.lock().unwrap().clone();
    let (status, archive) = http_bytes(node.addr, "POST", "/v1/snapshots", Some(&token), Some(b"{\"include_identity\": false}".to_vec()));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&archive));
    // Writers kept writing during the snapshot.
    let during = acked.lock().unwrap().len();
    eventually("writers kept writing after the snapshot", || acked.lock().unwrap().len() > during);
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let metrics = http(node.addr, "GET", "/metrics", None, None).body;
    assert!(metrics.contains("sysdeploy_snapshots_total{outcome=\"ok\"} 1"), "{metrics}");
    assert!(metrics.contains("sysdeploy_snapshot_bytes "), "{metrics}");
    let staging: Vec<_> = std::fs::read_dir(a.state())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".snapshot-stage-"))
        .collect();
    assert!(staging.is_empty(), "the staged tree is removed once sent: {staging:?}");

    // Restore it as a new node (a fake peer serves the archive).
    let b = Sandbox::new();
    let peer = fake_peer(Arc::new(archive), Serve::Whole);
    let restored = Node::ready(
        &b,
        &["--bootstrap-from", &format!("http://{peer}"), "--bootstrap-token-file", b.token_file("unused").to_str().unwrap()],
    );
    let btoken = b.token();
    for (k, v) in &before {
        assert_eq!(restored.get(&btoken, k), json!(v), "write {k} acknowledged before the snapshot is missing");
    }
    // No torn value: whatever the restored node has of a key is one whole value written.
    let attempted = attempted.lock().unwrap().clone();
    for (k, v) in attempted.iter().skip(before.len()).step_by(3) {
        let got = restored.get(&btoken, k);
        assert!(got == Value::Null || got == json!(v), "key {k}: torn value {got} (wrote {v:?})");
    }
}

/// A second node started with `--bootstrap-from` the first converges: its
/// plan is empty, its data equals the first's, its identity is its own; run
/// again, the flag is ignored.
#[test]
fn a_node_bootstrapped_from_a_running_peer_converges() {
    let a = Sandbox::new();
    let peer = Node::ready(&a, &[]);
    let token = a.token();
    for i in 0..10 {
        assert!(peer.put(&token, &format!("k{i}"), &format!("v{i}")));
    }
    let b = Sandbox::new();
    let tf = b.token_file(&token);
    let url = format!("http://{}", peer.addr);
    let mut node = Node::ready(&b, &["--bootstrap-from", &url, "--bootstrap-token-file", tf.to_str().unwrap()]);
    let log = node.log();
    assert!(log.contains("restored with a new identity"), "{log}");
    assert!(!log.contains(&token), "the token reached the log:\n{log}");
    let btoken = b.token();
    assert_ne!(btoken, token, "the api token is the new node's own");
    for i in 0..10 {
        assert_eq!(node.get(&btoken, &format!("k{i}")), json!(format!("v{i}")));
    }
    assert_eq!(node.get(&btoken, "k-absent"), Value::Null);
    drop(node);
    let (sa, sb) = (a.status(), b.status());
    assert_ne!(sa["peer_id"], sb["peer_id"], "a new identity");
    let owners: Vec<&Value> = sb["services"].as_array().unwrap().iter().map(|s| &s["owner"]).collect();
    assert!(owners.iter().all(|o| **o == sb["peer_id"]), "the new node owns what it restored: {sb}");
    assert_eq!(b.plan()["no_changes"], json!(true), "{}", b.plan());

    // Run again with the flags: the state dir holds a node, the flag is ignored.
    node = Node::ready(&b, &["--bootstrap-from", &url, "--bootstrap-token-file", tf.to_str().unwrap()]);
    node.wait_log("--bootstrap-from is ignored");
    assert_eq!(node.get(&btoken, "k3"), json!("v3"));
}

/// A fetch cut half-way, a short archive and a flipped byte are refused with
/// the URL named (never the token) and no state dir; a good fetch then works.
#[test]
fn a_cut_short_or_corrupt_fetch_leaves_nothing_and_a_good_one_then_succeeds() {
    let a = Sandbox::new();
    let peer = Node::ready(&a, &[]);
    let token = a.token();
    assert!(peer.put(&token, "kept", "yes"));
    let archive = Arc::new(peer.snapshot(&token));
    drop(peer);
    let half = archive.len() / 2;

    let b = Sandbox::new();
    let tf = b.token_file(&token);
    for how in [Serve::CutAt(half), Serve::ShortAt(half), Serve::Flip(half), Serve::Flip(archive.len() - 1)] {
        let url = format!("http://{}", fake_peer(archive.clone(), how));
        let o = b.bootstrap_once(&url, &tf);
        assert_ne!(o.code, Some(0), "{how:?} was accepted: {o:?}");
        assert!(o.stderr.contains(&url), "{how:?}: the error names the url: {}", o.stderr);
        assert!(!o.stderr.contains(&token), "{how:?}: the token reached the output");
        b.assert_no_state(&format!("{how:?}"));
    }
    let url = format!("http://{}", fake_peer(archive.clone(), Serve::Whole));
    let o = b.bootstrap_once(&url, &tf);
    assert_eq!(o.code, Some(0), "{o:?}");
    let node = Node::ready(&b, &[]);
    assert_eq!(node.get(&b.token(), "kept"), json!("yes"));
}

/// A token the peer refuses, and a token file others may read, are bad input
/// (exit 2): clear errors, nothing fetched or written.
#[test]
fn a_bad_token_is_refused_and_nothing_is_written() {
    let a = Sandbox::new();
    let peer = Node::ready(&a, &[]);
    let token = a.token();
    let url = format!("http://{}", peer.addr);
    let b = Sandbox::new();
    let wrong = "0".repeat(64);
    let o = b.bootstrap_once(&url, &b.token_file(&wrong));
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stderr.contains(&url) && o.stderr.contains("401") && o.stderr.contains("bad_token"), "{}", o.stderr);
    assert!(!o.stderr.contains(&wrong), "the token reached the output: {}", o.stderr);
    b.assert_no_state("refused token");

    use std::os::unix::fs::PermissionsExt;
    let tf = b.token_file(&token);
    std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = b.bootstrap_once(&url, &tf);
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stderr.contains(tf.to_str().unwrap()) && o.stderr.contains("0644"), "{}", o.stderr);
    assert!(!o.stderr.contains(&token), "the token reached the output");
    b.assert_no_state("token file readable by others");

    // A state dir that holds something but no node is refused before the peer stages anything.
    std::fs::create_dir_all(b.state()).unwrap();
    std::fs::write(b.state().join("stray"), "x").unwrap();
    let o = b.bootstrap_once(&url, &b.token_file(&token));
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stderr.contains("not empty") && o.stderr.contains("stray"), "{}", o.stderr);
    assert_eq!(std::fs::read_dir(b.state()).unwrap().count(), 1, "the state dir is untouched");
    let metrics = http(peer.addr, "GET", "/metrics", None, None).body;
    assert!(metrics.contains("sysdeploy_snapshots_total{outcome=\"ok\"} 0"), "the peer took no snapshot: {metrics}");
    std::fs::remove_dir_all(b.state()).unwrap();

    // One flag without the other is a usage error.
    let o = b.run(&["run", "--once", "--bootstrap-from", &url]);
    assert_eq!(o.code, Some(2), "{o:?}");
    b.assert_no_state("no token file");
}

/// A second snapshot while one runs is `busy`; the identity is never served;
/// the first one completes.
#[cfg(feature = "failpoints")]
#[test]
fn one_snapshot_at_a_time_and_never_the_identity() {
    let a = Sandbox::new();
    let failpoints = "deploy::install::created=1*sleep(3000);snapshot::online::staging=1*sleep(3000)";
    let mut node = Node::start(&a, &[], &[("FAILPOINTS", failpoints)]);
    // While the first deployment runs there is nothing consistent to take.
    eventually("the api answers while the node deploys", || {
        try_http(node.addr, "GET", "/health", None, None).is_some_and(|r| r.status == 503 && r.body.contains("deploying"))
    });
    let r = http(node.addr, "GET", "/v1/snapshot", Some(&a.token()), None);
    assert_eq!((r.status, r.error_code()), (503, "booting".to_string()), "{}", r.body);
    node.wait_ready();
    let token = a.token();
    let r = http(node.addr, "POST", "/v1/snapshots", Some(&token), Some(b"{\"include_identity\": true}".to_vec()));
    assert_eq!((r.status, r.error_code()), (400, "identity_not_served".to_string()), "{}", r.body);
    let r = http(node.addr, "POST", "/v1/snapshots", Some(&token), Some(b"{\"include\": 1}".to_vec()));
    assert_eq!((r.status, r.error_code()), (400, "bad_json".to_string()), "{}", r.body);
    let r = http(node.addr, "GET", "/v1/snapshot", None, None);
    assert_eq!(r.status, 401);

    let addr = node.addr;
    let t = token.clone();
    let first = std::thread::spawn(move || http_bytes(addr, "GET", "/v1/snapshot", Some(&t), None));
    node.wait_log("snapshot: staging the running node");
    let r = http(node.addr, "POST", "/v1/snapshots", Some(&token), None);
    assert_eq!((r.status, r.error_code()), (503, "busy".to_string()), "{}", r.body);
    // A reload asked while the node stages waits for the staging, then runs.
    let t = token.clone();
    let reload = std::thread::spawn(move || http(addr, "POST", "/v1/reload", Some(&t), None));
    eventually("the control loop took the reload", || {
        let r = http(addr, "GET", "/readyz", None, None);
        r.body.contains("\"reloading\":true") || node.log().contains("reloading configuration")
    });
    let (status, archive) = first.join().unwrap();
    assert_eq!(status, 200);
    assert!(!archive.is_empty());
    let r = reload.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let log = node.log();
    let (staged, reloaded) = (log.find("snapshot: running node staged"), log.find("reloading configuration"));
    assert!(staged.is_some() && staged < reloaded, "the reload ran while the node was staged:\n{log}");
    // Free again once the first is sent.
    eventually("a snapshot can be taken again", || {
        let (s, _) = http_bytes(addr, "GET", "/v1/snapshot", Some(&token), None);
        s == 200
    });
}

/// SIGKILL while the bootstrap restores; the next attempt restores and boots.
#[cfg(feature = "failpoints")]
#[test]
fn a_kill_during_the_bootstrap_restore_is_handled_by_the_next_attempt() {
    let a = Sandbox::new();
    let peer = Node::ready(&a, &[]);
    let token = a.token();
    assert!(peer.put(&token, "survives", "the kill"));
    let b = Sandbox::new();
    let tf = b.token_file(&token);
    let url = format!("http://{}", peer.addr);
    let args = ["--bootstrap-from", url.as_str(), "--bootstrap-token-file", tf.to_str().unwrap()];
    let mut first = Node::start(&b, &args, &[("FAILPOINTS", "snapshot::bootstrap::receiving=sleep(600000)")]);
    first.wait_log("bootstrap: receiving the snapshot");
    first.child.kill().unwrap();
    let st = first.wait_exit();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    assert!(!b.state().join("state.db").exists(), "a half-restored state dir is in place");

    let node = Node::ready(&b, &args);
    assert!(node.log().contains("restored with a new identity"), "{}", node.log());
    let leftovers: Vec<_> = std::fs::read_dir(b.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".restore-"))
        .collect();
    assert!(leftovers.is_empty(), "the killed attempt's temp dir is gone: {leftovers:?}");
    assert_eq!(node.get(&b.token(), "survives"), json!("the kill"));
}

/// A call that arrives while its service's data is copied waits for the
/// copy: the archive holds the value written before the snapshot and not
/// the one written during the hold (answered only once the copy is done).
#[cfg(feature = "failpoints")]
#[test]
fn calls_wait_while_their_service_is_copied() {
    let a = Sandbox::new();
    let mut node = Node::start(&a, &[], &[("FAILPOINTS", "snapshot::online::held=1*sleep(1500)"), ("RUST_LOG", LOG_HOLDS)]);
    node.wait_ready();
    let token = a.token();
    assert!(node.put(&token, "before", "value-written-before-the-snapshot"));
    let (addr, t) = (node.addr, token.clone());
    let snapshot = std::thread::spawn(move || http_bytes(addr, "GET", "/v1/snapshot", Some(&t), None));
    node.wait_log("snapshot: calls held while the service's data is copied");
    assert!(node.put(&token, "during", "value-written-during-the-hold"));
    let (status, archive) = snapshot.join().unwrap();
    assert_eq!(status, 200);
    let has = |needle: &str| archive.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has("value-written-before-the-snapshot"), "the write acknowledged before the snapshot is missing");
    assert!(!has("value-written-during-the-hold"), "a call ran on the service while its data was copied");
    assert_eq!(node.get(&token, "during"), json!("value-written-during-the-hold"));
}

/// `sysdeploy snapshot create FILE` with a node running goes through the
/// node: FILE (0600) restores with `snapshot restore --adopt` to a node that
/// answers what was written; `--include-identity` is refused (exit 2).
#[test]
fn snapshot_create_goes_through_the_running_node() {
    let a = Sandbox::new();
    let node = Node::ready(&a, &[]);
    let token = a.token();
    assert!(node.put(&token, "online", "yes"));
    let file = a.dir.path().join("node.snapshot");
    let o = a.run(&["snapshot", "create", file.to_str().unwrap(), "--include-identity"]);
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stderr.contains("--include-identity") && o.stderr.contains("running"), "{}", o.stderr);
    assert!(!file.exists());
    // A FILE that cannot be written is refused before the node is asked:
    // no snapshot staged for nobody, and the next create is not `busy`.
    let nowhere = a.dir.path().join("no-such-dir/node.snapshot");
    let o = a.run(&["snapshot", "create", nowhere.to_str().unwrap()]);
    assert_ne!(o.code, Some(0), "{o:?}");
    assert!(o.stderr.contains("no-such-dir"), "names the path: {}", o.stderr);
    let metrics = http(node.addr, "GET", "/metrics", None, None).body;
    assert!(!metrics.contains("sysdeploy_snapshots_total{outcome=\"aborted\"} 1"), "the node was asked for nothing: {metrics}");
    assert!(metrics.contains("sysdeploy_snapshots_total{outcome=\"ok\"} 0"), "the node was asked for nothing: {metrics}");
    let o = a.run(&["snapshot", "create", file.to_str().unwrap()]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("taken by the running node"), "{}", o.stdout);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(a.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The node kept serving.
    assert_eq!(node.get(&token, "online"), json!("yes"));

    let b = Sandbox::new();
    let o = b.run(&["snapshot", "restore", file.to_str().unwrap(), "--adopt"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let restored = Node::ready(&b, &[]);
    assert_eq!(restored.get(&b.token(), "online"), json!("yes"));
}

/// A client that goes away mid-stream ends the snapshot: counted as
/// `aborted`, the staged tree removed, the slot free for the next one.
#[test]
fn a_client_that_goes_away_ends_the_snapshot_and_frees_the_slot() {
    let a = Sandbox::new();
    let node = Node::ready(&a, &[]);
    let token = a.token();
    // ~20 MiB of service data: far more than the stream's buffers hold.
    let big = "z".repeat(64 * 1024);
    for i in 0..320 {
        assert!(node.put(&token, &format!("big{i}"), &big));
    }
    let mut conn = TcpStream::connect(node.addr).unwrap();
    write!(conn, "GET /v1/snapshot HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n").unwrap();
    let mut first = vec![0u8; 64 * 1024];
    conn.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first[..64]));
    drop(conn);
    let staging = || {
        std::fs::read_dir(a.state())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".snapshot-stage-"))
            .count()
    };
    eventually("the snapshot is counted as aborted and its staged tree removed", || {
        let m = http(node.addr, "GET", "/metrics", None, None).body;
        m.contains("sysdeploy_snapshots_total{outcome=\"aborted\"} 1") && staging() == 0
    });
    let archive = node.snapshot(&token);
    assert!(archive.len() > 20 << 20, "{} bytes", archive.len());
}

/// A node killed while it stages a snapshot leaves the staged tree (a copy
/// of the services' data); the next boot removes it.
#[cfg(feature = "failpoints")]
#[test]
fn a_node_killed_while_staging_a_snapshot_removes_the_staged_tree_at_its_next_boot() {
    let a = Sandbox::new();
    let mut node = Node::start(&a, &[], &[("FAILPOINTS", "snapshot::online::held=sleep(600000)"), ("RUST_LOG", LOG_HOLDS)]);
    node.wait_ready();
    let token = a.token();
    assert!(node.put(&token, "k", "v"));
    let addr = node.addr;
    let t = token.clone();
    std::thread::spawn(move || try_http(addr, "GET", "/v1/snapshot", Some(&t), None));
    node.wait_log("snapshot: calls held while the service's data is copied");
    node.child.kill().unwrap();
    node.wait_exit();
    let staging = || {
        std::fs::read_dir(a.state())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".snapshot-stage-"))
            .count()
    };
    assert_eq!(staging(), 1, "the killed snapshot left its staged tree");
    let node = Node::ready(&a, &[]);
    assert_eq!(staging(), 0, "the boot removed it");
    assert_eq!(node.get(&token, "k"), json!("v"));
}

/// `snapshot create FILE` through a node that dies mid-stream exits non-zero
/// and leaves neither FILE nor its temp file.
#[cfg(feature = "failpoints")]
#[test]
fn snapshot_create_through_a_node_that_dies_mid_stream_leaves_no_file() {
    let a = Sandbox::new();
    let mut node = Node::start(&a, &[], &[("FAILPOINTS", "snapshot::online::streaming=sleep(600000)")]);
    node.wait_ready();
    let file = a.dir.path().join("cut.snapshot");
    let create = a
        .cmd(free_addr())
        .args(["snapshot", "create", file.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    node.wait_log("snapshot: streaming the archive");
    node.child.kill().unwrap();
    node.wait_exit();
    let o = create.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/v1/snapshots"), "the error names what was fetched: {stderr}");
    let left: Vec<_> = std::fs::read_dir(a.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("cut.snapshot"))
        .collect();
    assert!(left.is_empty(), "nothing left under the file's name or a temp name: {left:?}");
}
