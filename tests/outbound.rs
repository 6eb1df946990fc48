//! Outbound HTTP behind an allow-list and limits per service (issue 16): the
//! `fetcher` guest (`tests/distros/fetcher/`, committed as
//! `tests/distros/outbound/fetcher/fetcher.wasm`) imports
//! `wasi:http/outgoing-handler` and talks to real HTTP servers on loopback
//! (std `TcpListener`), in process on a real runtime and through the binary.

mod fixtures;

use fixtures::{host, Harness};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use sysdeploy::distro::Catalog;
use sysdeploy::ids::ServiceId;
use sysdeploy::runtime::{Blueprint, BlueprintComponent, CallError, ServiceLimits};

const BIN: &str = env!("CARGO_BIN_EXE_sysdeploy");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The package folder (`tests/distros/outbound/fetcher/`) and its distros dir.
fn distros() -> PathBuf {
    repo().join("tests/distros/outbound")
}

fn fetcher_wasm() -> Vec<u8> {
    let path = distros().join("fetcher/fetcher.wasm");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An HTTP/1.1 server on loopback that answers every request with `body`
/// (or, when `answer` is false, accepts and never answers), counting the
/// connections it gets.
struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

fn serve(body: &'static str, answer: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            if !answer {
                held.push(conn);
                continue;
            }
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let _ = write!(conn, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            });
        }
    });
    Server { addr, hits }
}

/// A service of the fetcher component with these limits.
async fn service(h: &Harness, limits: ServiceLimits) -> ServiceId {
    let hash = h.rt.add_component(&fetcher_wasm(), None).unwrap();
    let bp = Blueprint { components: vec![BlueprintComponent { name: "fetcher".into(), hash, memory_limit_mb: None }], limits };
    let bp = h.rt.put_blueprint(&bp).unwrap();
    h.rt.create_service(&bp, &host()).await.unwrap()
}

fn allow(hosts: &[String]) -> ServiceLimits {
    ServiceLimits { allowed_outbound_hosts: hosts.to_vec(), ..ServiceLimits::default() }
}

async fn fetch(h: &Harness, s: &ServiceId, url: &str) -> Value {
    h.rt.call(s.as_str(), "fetch", json!([url])).await.unwrap_or_else(|e| panic!("fetch {url}: {e}"))
}

/// The error text of a `result` that must be `err`.
fn err_of(v: &Value) -> String {
    v["err"].as_str().unwrap_or_else(|| panic!("expected an error, got {v}")).to_string()
}

/// Everything the runtime logs in this test binary.
fn captured() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buf.clone());
        let subscriber =
            tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::DEBUG).with_writer(move || writer.clone()).finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
    .clone()
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text(log: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&log.lock().unwrap()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_answers_and_every_other_is_denied_in_the_guest_and_logged() {
    let log = captured();
    let api = serve("hello from the api", true);
    let other = serve("must not be reached", true);
    let h = Harness::new();
    let s = service(&h, allow(&[format!("http://{}", api.addr)])).await;

    assert_eq!(fetch(&h, &s, &format!("http://{}/v1/x?y=1", api.addr)).await, json!({ "ok": "hello from the api" }));
    assert_eq!(api.hits.load(Ordering::SeqCst), 1);

    // Another port, another scheme, another name for the same address.
    let port = api.addr.port();
    for url in [
        format!("http://{}/", other.addr),
        format!("https://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://{}/path?token=s3cr3t-query", other.addr),
    ] {
        let e = err_of(&fetch(&h, &s, &url).await);
        assert!(e.contains("HttpRequestDenied"), "{url}: {e}");
    }
    assert_eq!(other.hits.load(Ordering::SeqCst), 0, "a denied request never leaves the node");
    assert_eq!(api.hits.load(Ordering::SeqCst), 1);
    assert!(h.rt.is_instantiated(&s), "a denial is an error code, not a trap");

    let text = log_text(&log);
    let denied: Vec<&str> = text.lines().filter(|l| l.contains("outbound HTTP request denied") && l.contains(s.as_str())).collect();
    assert!(denied.iter().any(|l| l.contains(&format!("http://{}", other.addr))), "the log names service and host:\n{text}");
    assert!(denied.iter().any(|l| l.contains(&format!("http://localhost:{port}"))), "{text}");
    assert!(!text.contains("s3cr3t-query"), "the log names the origin, never path or query:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_importing_wasi_http_without_an_allow_list_deploys_and_is_denied() {
    let server = serve("nope", true);
    let h = Harness::new();
    let bytes = fetcher_wasm();
    let hash = h.rt.add_component(&bytes, None).unwrap();
    let bp = Blueprint::new(vec![BlueprintComponent { name: "fetcher".into(), hash, memory_limit_mb: None }]);
    // The plan-time link check accepts the wasi:http imports.
    sysdeploy::runtime::check_links_offline(&bp, &|_| Some(std::borrow::Cow::Borrowed(&bytes[..]))).unwrap();
    h.rt.check_links(&bp, &|_| Some(std::borrow::Cow::Borrowed(&bytes[..]))).unwrap();
    let s = service(&h, ServiceLimits::default()).await;
    let e = err_of(&fetch(&h, &s, &format!("http://{}/", server.addr)).await);
    assert!(e.contains("HttpRequestDenied"), "{e}");
    assert_eq!(server.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_ends_the_request_within_the_call_ttl() {
    let silent = serve("", false);
    let h = Harness::new();
    let s = service(&h, allow(&[format!("http://{}", silent.addr)])).await;
    let started = Instant::now();
    let r = h.rt.call_with_ttl(s.as_str(), "fetch", json!([format!("http://{}/", silent.addr)]), Duration::from_millis(800)).await;
    // The request's timeouts were cut to what was left of the call: the guest
    // sees a timeout error code inside its TTL and its instance lives on
    // (without the cut the runtime would have to interrupt the whole call).
    let v = r.unwrap_or_else(|e| panic!("the call itself failed: {e:?}"));
    let e = err_of(&v);
    assert!(e.contains("Timeout"), "{e}");
    assert_eq!(silent.hits.load(Ordering::SeqCst), 1, "the request was sent");
    assert!(h.rt.is_instantiated(&s));
    assert!(started.elapsed() < Duration::from_secs(30), "sanity: the call did not outlive its TTL by much");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_a_short_ttl_times_out_where_its_neighbour_does_not() {
    let h = Harness::new(); // the runtime's default TTL is 5 s
    let hasty = service(&h, ServiceLimits { call_ttl_ms: Some(200), ..ServiceLimits::default() }).await;
    let calm = service(&h, ServiceLimits::default()).await;
    let e = h.rt.call(hasty.as_str(), "spin", json!([3000])).await.unwrap_err();
    assert!(matches!(e, CallError::Timeout { ttl_ms: 200, .. }), "{e:?}");
    assert!(h.rt.call(calm.as_str(), "spin", json!([600])).await.is_ok(), "600 ms is within the default TTL");
    // An explicit TTL still wins over the service's own.
    assert!(h.rt.call_with_ttl(hasty.as_str(), "spin", json!([400]), Duration::from_secs(5)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_one_turns_a_second_concurrent_call_away_busy() {
    let h = Harness::new();
    let single = service(&h, ServiceLimits { queue_depth: Some(1), ..ServiceLimits::default() }).await;
    let queued = service(&h, ServiceLimits::default()).await;
    for (s, busy) in [(&single, true), (&queued, false)] {
        let rt = h.rt.clone();
        let id = s.clone();
        let first = tokio::spawn(async move { rt.call(id.as_str(), "spin", json!([1500])).await });
        while !h.rt.is_busy(s) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let second = h.rt.call(s.as_str(), "spin", json!([1])).await;
        assert_eq!(matches!(second, Err(CallError::Busy { .. })), busy, "{second:?}");
        if !busy {
            assert!(second.is_ok(), "{second:?}");
        }
        assert!(first.await.unwrap().is_ok());
    }
}

/// The package's config section and the catalog of `tests/distros/outbound`.
fn desired(config: &str) -> (Catalog, Result<sysdeploy::deploy::Desired, String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sysdeploy.toml");
    std::fs::write(&path, config).unwrap();
    let catalog = Catalog::load_dir(&distros()).unwrap();
    let opts = sysdeploy::config::LoadOptions { config_path: Some(path), env: vec![], flags: vec![] };
    let cfg = sysdeploy::config::load(&opts, &catalog.schemas()).unwrap();
    let d = sysdeploy::deploy::desired::resolve(&catalog, &cfg).map_err(|e| e.to_string());
    (catalog, d)
}

fn blueprint_of(d: &sysdeploy::deploy::Desired, alias: &str) -> Blueprint {
    d.packages.iter().flat_map(|p| &p.services).find(|s| s.alias.as_str() == alias).unwrap().blueprint.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templated_host_from_the_config_is_reached_and_an_unset_one_grants_nothing() {
    let api = serve("templated", true);
    // Only the origin of the endpoint counts: path and query are dropped.
    let (_, d) = desired(&format!("[system_services.fetcher]\napi_endpoint = \"http://{}/rpc/v1?key=abc\"\n", api.addr));
    let d = d.unwrap();
    let bp = blueprint_of(&d, "fetcher");
    assert_eq!(bp.limits.allowed_outbound_hosts, vec![format!("http://{}", api.addr)]);
    assert!(blueprint_of(&d, "closed").limits.allowed_outbound_hosts.is_empty());

    let h = Harness::new();
    h.rt.add_component(&fetcher_wasm(), None).unwrap();
    let id = h.rt.put_blueprint(&bp).unwrap();
    let s = h.rt.create_service(&id, &host()).await.unwrap();
    assert_eq!(fetch(&h, &s, &format!("http://{}/rpc/v1", api.addr)).await, json!({ "ok": "templated" }));

    let (_, unset) = desired("");
    assert!(blueprint_of(&unset.unwrap(), "fetcher").limits.allowed_outbound_hosts.is_empty(), "an unset endpoint allows nothing");

    // A resolved value that is no origin is refused, naming the entry and key but not the value.
    let (_, bad) = desired("[system_services.fetcher]\napi_endpoint = \"ftp://user:hunter2@example.com\"\n");
    let e = bad.unwrap_err();
    assert!(e.contains("package fetcher, service fetcher: allowed_outbound_hosts[0] (from api_endpoint)"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn a_manifest_limit_above_the_node_ceiling_is_refused_naming_package_service_key_value_and_ceiling() {
    let (_, d) = desired("[system_services]\nservice_call_ttl_max_ms = 100\nservice_queue_depth_max = 5\nservice_memory_max_mb = 16\n");
    let e = d.unwrap_err();
    assert!(
        e.contains("package fetcher, service hasty: call_ttl_ms = 300 is above the node's ceiling of 100 (system_services.service_call_ttl_max_ms)"),
        "{e}"
    );
    assert!(e.contains("service hasty: memory_limit_mb (component fetcher) = 32 is above the node's ceiling of 16"), "{e}");
    assert!(!e.contains("queue_depth"), "1 is within 5: {e}");
    let (_, ok) = desired("");
    let hasty = blueprint_of(&ok.unwrap(), "hasty");
    assert_eq!((hasty.limits.call_ttl_ms, hasty.limits.queue_depth), (Some(300), Some(1)));
}

/// A running `sysdeploy run` over `tests/distros/outbound`; killed on drop.
struct Node {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn sysdeploy(state: &Path, config: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--state-dir").arg(state).arg("--config").arg(config).arg("--distros-dir").arg(distros()).env_remove("RUST_LOG");
    c
}

fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> Option<(u16, String)> {
    let mut conn = TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

#[test]
fn through_the_binary_templated_hosts_are_reached_denials_are_logged_and_status_and_the_api_show_limits() {
    let api = serve("through the node", true);
    let other = serve("never", true);
    let dir = tempfile::tempdir().unwrap();
    let (state, config) = (dir.path().join("state"), dir.path().join("sysdeploy.toml"));
    std::fs::write(&config, format!("[system_services.fetcher]\napi_endpoint = \"http://{}/\"\n", api.addr)).unwrap();

    let addr = free_addr();
    let mut child = sysdeploy(&state, &config)
        .args(["--api-listen", &addr.to_string(), "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let mut node = Node { child, addr, log };
    let deadline = Instant::now() + Duration::from_secs(240);
    while http(node.addr, "GET", "/health", None, "").map(|r| r.0) != Some(200) {
        if let Ok(Some(st)) = node.child.try_wait() {
            panic!("node exited ({st}); log:\n{}", node.log.lock().unwrap());
        }
        assert!(Instant::now() < deadline, "the node never became ready; log:\n{}", node.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(state.join("api.token")).unwrap().trim().to_string();
    let call = |alias: &str, url: String| {
        let (status, body) = http(node.addr, "POST", &format!("/v1/services/{alias}/call/fetch"), Some(&token), &json!([url]).to_string())
            .expect("the API answers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    assert_eq!(call("fetcher", format!("http://{}/secret-path-q", api.addr)), json!({ "ok": "through the node" }));
    assert!(err_of(&call("fetcher", format!("http://{}/x", other.addr))).contains("HttpRequestDenied"));
    assert!(err_of(&call("closed", format!("http://{}/x", api.addr))).contains("HttpRequestDenied"));
    assert_eq!(other.hits.load(Ordering::SeqCst), 0);

    // /v1/services shows what each service runs with.
    let (status, body) = http(node.addr, "GET", "/v1/services", Some(&token), "").unwrap();
    assert_eq!(status, 200, "{body}");
    let services: Value = serde_json::from_str(&body).unwrap();
    let limits_of = |v: &Value, alias: &str| {
        v["services"].as_array().unwrap().iter().find(|s| s["aliases"][0] == alias).unwrap_or_else(|| panic!("{alias} in {v}"))["limits"]
            .clone()
    };
    let hasty = json!({
        "call_ttl_ms": 300, "queue_depth": 1, "memory_limit_mb": { "fetcher": 32 },
        "allowed_outbound_hosts": [], "set_by_package": ["call_ttl_ms", "queue_depth", "memory_limit_mb"],
    });
    assert_eq!(limits_of(&services, "hasty"), hasty);
    assert_eq!(limits_of(&services, "fetcher")["allowed_outbound_hosts"], json!([format!("http://{}", api.addr)]));
    assert_eq!(limits_of(&services, "closed")["call_ttl_ms"], 60_000, "the node's default");

    // status (read-only, beside the running node): JSON and human.
    let out = sysdeploy(&state, &config).args(["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(limits_of(&status, "hasty"), hasty);
    let out = sysdeploy(&state, &config).arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("limits: ttl 300 ms, queue 1, memory fetcher 32 MiB, outbound HTTP none"), "{text}");
    assert!(text.contains(&format!("outbound HTTP http://{}", api.addr)), "{text}");

    let _ = node.child.kill();
    let _ = node.child.wait();
    let log = node.log.lock().unwrap().clone();
    let denied: Vec<&str> = log.lines().filter(|l| l.contains("outbound HTTP request denied")).collect();
    assert!(denied.iter().any(|l| l.contains("alias=closed") && l.contains(&format!("http://{}", api.addr))), "{log}");
    assert!(denied.iter().any(|l| l.contains("alias=fetcher") && l.contains(&format!("http://{}", other.addr))), "{log}");
    assert!(!log.contains("secret-path-q"), "paths stay out of the log:\n{log}");

    // A ceiling below what the package asks: plan refuses it (exit 2).
    std::fs::write(&config, "[system_services]\nservice_call_ttl_max_ms = 299\n").unwrap();
    let out = sysdeploy(&state, &config).arg("plan").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("package fetcher, service hasty: call_ttl_ms = 300 is above the node's ceiling of 299"), "{err}");
}
