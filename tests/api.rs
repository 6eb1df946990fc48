//! Black-box tests of the HTTP API: a real server on 127.0.0.1:0 with a test
//! backend (the only fake), driven by a real HTTP client.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sysdeploy::api::{self, client, ApiConfig, Backend, BoxFuture, Health, Metrics};
use sysdeploy::runtime::CallError;
use tokio::sync::{oneshot, Notify};

const TOKEN: &str = "test-token-0123456789abcdef";

/// The only fake: answers from fixed data and fails on demand by function name.
struct TestBackend {
    health: Mutex<Health>,
    last_deployment: Mutex<Option<Value>>,
    reload_fails: AtomicBool,
    /// Signalled when the `slow` function has started.
    slow_entered: Notify,
    /// The `slow` function returns once this is signalled.
    slow_release: Notify,
}

impl TestBackend {
    fn new() -> Arc<Self> {
        Arc::new(TestBackend {
            health: Mutex::new(Health::Ready),
            last_deployment: Mutex::new(None),
            reload_fails: AtomicBool::new(false),
            slow_entered: Notify::new(),
            slow_release: Notify::new(),
        })
    }
}

impl Backend for TestBackend {
    fn health(&self) -> Health {
        self.health.lock().unwrap().clone()
    }
    fn services(&self) -> Value {
        json!([{"alias": "echo", "id": "0123456789abcdef0123456789abcdef"}])
    }
    fn spells(&self) -> Value {
        json!([{"alias": "tick"}])
    }
    fn spell_kv(&self, alias: &str) -> Option<Value> {
        (alias == "tick").then(|| json!({"counter": 3}))
    }
    fn last_deployment(&self) -> Option<Value> {
        self.last_deployment.lock().unwrap().clone()
    }
    fn call(&self, alias: &str, function: &str, args: Value) -> BoxFuture<'_, Result<Value, CallError>> {
        let target = alias.to_string();
        let function = function.to_string();
        Box::pin(async move {
            let f = function.clone();
            if target != "echo" {
                return Err(CallError::UnknownTarget { target });
            }
            match f.as_str() {
                "echo" => Ok(args),
                "sysdeploy:registry/api#register" => Ok(json!(function)),
                "slow" => {
                    self.slow_entered.notify_one();
                    self.slow_release.notified().await;
                    Ok(json!("done"))
                }
                "hang" => std::future::pending().await,
                "bad-arg" => {
                    Err(CallError::BadArgument { target, function, param: "n".into(), expected: "u32".into(), got: "\"x\"".into() })
                }
                "bad-args" => Err(CallError::BadArguments { target, function, message: "expected 1 argument, got 0".into() }),
                "timeout" => Err(CallError::Timeout { target, function, ttl_ms: 60000 }),
                "trap" => Err(CallError::Trap { target, function, trap: "wasm trap: unreachable".into() }),
                "busy" => Err(CallError::Busy { target }),
                "internal" => Err(CallError::Internal { target, function, message: "instance lost".into() }),
                _ => Err(CallError::UnknownFunction { target, function, available: "echo".into() }),
            }
        })
    }
    fn reload(&self) -> BoxFuture<'_, Result<Value, sysdeploy::api::ReloadError>> {
        Box::pin(async move {
            if self.reload_fails.load(Ordering::SeqCst) {
                Err("config file: system_services.call_ttl_ms: expected an integer".into())
            } else {
                Ok(json!({"changes": 0}))
            }
        })
    }
}

/// A running server and the handles to drive it.
struct Server {
    addr: SocketAddr,
    backend: Arc<TestBackend>,
    metrics: Metrics,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut ApiConfig)) -> Server {
        let mut cfg = ApiConfig::new(TOKEN.to_string(), Duration::from_secs(60));
        tweak(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = TestBackend::new();
        let metrics = Metrics::new();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(api::serve(listener, backend.clone(), metrics.clone(), cfg, async move {
            let _ = rx.await;
        }));
        Server { addr, backend, metrics, shutdown: Some(tx), task }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        http(self.addr, "GET", path, token, None).await
    }

    async fn post(&self, path: &str, body: &[u8]) -> Resp {
        http(self.addr, "POST", path, Some(TOKEN), Some(body.to_vec())).await
    }

    async fn stop(mut self) {
        self.shutdown.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    www_authenticate: Option<String>,
    content_type: Option<String>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not json ({e}): {}", self.body))
    }

    /// Asserts the status and the stable error shape with `code`.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let v = self.json();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 1, "only `error` at the top: {v}");
        let err = obj["error"].as_object().unwrap();
        assert_eq!(err.len(), 2, "only code and message: {v}");
        assert_eq!(err["code"], code, "{v}");
        let msg = err["message"].as_str().unwrap();
        assert!(!msg.is_empty() && !msg.ends_with('.'), "message {msg:?}");
    }
}

/// One request with a fresh blocking client (ureq) off the async threads.
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> Resp {
    let url = format!("http://{addr}{path}");
    let method = method.to_string();
    let token = token.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).proxy(None).build().into();
        let mut req = ureq::http::Request::builder().method(method.as_str()).uri(&url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = match body {
            Some(b) => agent.run(req.header("Content-Type", "application/json").body(b).unwrap()),
            None => agent.run(req.body(()).unwrap()),
        }
        .unwrap();
        let header = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_string());
        let www_authenticate = header("www-authenticate");
        let content_type = header("content-type");
        Resp { status: resp.status().as_u16(), www_authenticate, content_type, body: resp.body_mut().read_to_string().unwrap() }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_each_state_without_a_token() {
    let s = Server::start().await;
    *s.backend.health.lock().unwrap() = Health::Deploying;
    let r = s.get("/health", None).await;
    assert_eq!((r.status, r.json()), (503, json!({"status": "deploying"})));

    *s.backend.health.lock().unwrap() = Health::Ready;
    let r = s.get("/health", None).await;
    assert_eq!((r.status, r.json()), (200, json!({"status": "ready"})));

    *s.backend.health.lock().unwrap() = Health::Degraded { failures: vec!["registry: init failed".into()] };
    let r = s.get("/health", None).await;
    assert_eq!((r.status, r.json()), (503, json!({"status": "degraded", "failures": ["registry: init failed"]})));

    *s.backend.health.lock().unwrap() = Health::Failed { failures: vec!["a".into(), "b".into()] };
    let r = s.get("/health", None).await;
    assert_eq!((r.status, r.json()), (503, json!({"status": "failed", "failures": ["a", "b"]})));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_needs_the_bearer_token() {
    let s = Server::start().await;
    let gets = ["/v1/services", "/v1/spells", "/v1/spells/tick/kv", "/v1/deployments/last", "/v1/no-such-thing"];
    for path in gets {
        let r = s.get(path, None).await;
        r.assert_error(401, "missing_token");
        assert!(r.www_authenticate.as_deref().unwrap().starts_with("Bearer"), "{r:?}");

        let r = s.get(path, Some("wrong-token")).await;
        r.assert_error(401, "bad_token");
        assert!(r.www_authenticate.as_deref().unwrap().starts_with("Bearer"), "{r:?}");
    }
    for path in ["/v1/services/echo/call/echo", "/v1/reload"] {
        http(s.addr, "POST", path, None, Some(b"[]".to_vec())).await.assert_error(401, "missing_token");
        http(s.addr, "POST", path, Some("nope"), Some(b"[]".to_vec())).await.assert_error(401, "bad_token");
    }
    // A prefix or extension of the right token is still wrong.
    s.get("/v1/services", Some(&TOKEN[..TOKEN.len() - 1])).await.assert_error(401, "bad_token");
    s.get("/v1/services", Some(&format!("{TOKEN}x"))).await.assert_error(401, "bad_token");
    // Nothing reached the backend: no call was recorded.
    assert!(!s.metrics.render().contains("sysdeploy_calls_total{"), "{}", s.metrics.render());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_kv_and_last_deployment() {
    let s = Server::start().await;
    let r = s.get("/v1/services", Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()[0]["alias"], "echo");
    assert_eq!(s.get("/v1/spells", Some(TOKEN)).await.json(), json!([{"alias": "tick"}]));

    let r = s.get("/v1/spells/tick/kv", Some(TOKEN)).await;
    assert_eq!((r.status, r.json()), (200, json!({"counter": 3})));
    s.get("/v1/spells/nope/kv", Some(TOKEN)).await.assert_error(404, "unknown_spell");

    s.get("/v1/deployments/last", Some(TOKEN)).await.assert_error(404, "no_deployment");
    *s.backend.last_deployment.lock().unwrap() = Some(json!({"outcome": "ok", "steps": []}));
    let r = s.get("/v1/deployments/last", Some(TOKEN)).await;
    assert_eq!((r.status, r.json()), (200, json!({"outcome": "ok", "steps": []})));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_returns_the_json_result() {
    let s = Server::start().await;
    let r = s.post("/v1/services/echo/call/echo", br#"[1, "two", {"three": [3]}]"#).await;
    assert_eq!((r.status, r.json()), (200, json!([1, "two", {"three": [3]}])));
    assert!(r.content_type.unwrap().starts_with("application/json"));
    // No body means no arguments.
    let r = http(s.addr, "POST", "/v1/services/echo/call/echo", Some(TOKEN), None).await;
    assert_eq!((r.status, r.json()), (200, json!([])));
    // Interface-qualified names travel percent-encoded and arrive decoded.
    let r = s.post("/v1/services/echo/call/sysdeploy%3Aregistry%2Fapi%23register", b"[]").await;
    assert_eq!((r.status, r.json()), (200, json!("sysdeploy:registry/api#register")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_errors_map_to_statuses_and_codes() {
    let s = Server::start().await;
    let cases = [
        ("/v1/services/missing/call/echo", 404, "unknown_target"),
        ("/v1/services/echo/call/nope", 404, "unknown_function"),
        ("/v1/services/echo/call/bad-arg", 400, "bad_argument"),
        ("/v1/services/echo/call/bad-args", 400, "bad_arguments"),
        ("/v1/services/echo/call/timeout", 504, "timeout"),
        ("/v1/services/echo/call/busy", 503, "busy"),
        ("/v1/services/echo/call/trap", 500, "trap"),
        ("/v1/services/echo/call/internal", 500, "internal"),
    ];
    for (path, status, code) in cases {
        s.post(path, b"[]").await.assert_error(status, code);
    }
    let r = s.post("/v1/services/echo/call/trap", b"[]").await;
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("wasm trap: unreachable"), "{r:?}");
    let r = s.post("/v1/services/echo/call/bad-arg", b"[]").await;
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("parameter n") && msg.contains("u32"), "{msg}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_rejected_before_the_backend() {
    let s = Server::start_with(|c| c.body_limit = 1024).await;
    s.post("/v1/services/echo/call/echo", b"[1, 2").await.assert_error(400, "bad_json");
    s.post("/v1/services/echo/call/echo", b"not json").await.assert_error(400, "bad_json");
    s.post("/v1/services/echo/call/echo", br#"{"a": 1}"#).await.assert_error(400, "bad_arguments");
    s.post("/v1/services/echo/call/echo", b"\"x\"").await.assert_error(400, "bad_arguments");

    let big = format!("[\"{}\"]", "x".repeat(4096));
    let r = s.post("/v1/services/echo/call/echo", big.as_bytes()).await;
    r.assert_error(413, "body_too_large");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("1024"), "{r:?}");
    // Just under the limit passes.
    let fits = format!("[\"{}\"]", "x".repeat(1000));
    assert_eq!(s.post("/v1/services/echo/call/echo", fits.as_bytes()).await.status, 200);
    // Only the one successful call reached the backend.
    assert!(s.metrics.render().contains(r#"sysdeploy_calls_total{alias="echo"} 1"#), "{}", s.metrics.render());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_use_the_error_shape() {
    let s = Server::start().await;
    s.get("/nope", None).await.assert_error(404, "not_found");
    s.get("/v1/nope", Some(TOKEN)).await.assert_error(404, "not_found");
    http(s.addr, "DELETE", "/health", None, None).await.assert_error(405, "method_not_allowed");
    // No endpoint removes or re-aliases a service.
    http(s.addr, "DELETE", "/v1/services/echo", Some(TOKEN), None).await.assert_error(404, "not_found");
    http(s.addr, "PUT", "/v1/services/echo/alias", Some(TOKEN), Some(b"[]".to_vec())).await.assert_error(404, "not_found");
    http(s.addr, "GET", "/v1/services/echo/call/echo", Some(TOKEN), None).await.assert_error(405, "method_not_allowed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_api_timeout_answers_504() {
    let s = Server::start_with(|c| c.call_timeout = Duration::from_millis(100)).await;
    s.post("/v1/services/echo/call/hang", b"[]").await.assert_error(504, "timeout");
    let text = s.metrics.render();
    assert!(text.contains(r#"sysdeploy_call_errors_total{alias="echo",code="timeout"} 1"#), "{text}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reports_success_and_failure() {
    let s = Server::start().await;
    let r = s.post("/v1/reload", b"").await;
    assert_eq!((r.status, r.json()), (200, json!({"changes": 0})));
    s.backend.reload_fails.store(true, Ordering::SeqCst);
    let r = s.post("/v1/reload", b"").await;
    r.assert_error(500, "reload_failed");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("call_ttl_ms"), "{r:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_calls_and_the_other_layers_series() {
    let s = Server::start().await;
    s.post("/v1/services/echo/call/echo", b"[1]").await;
    s.post("/v1/services/echo/call/echo", b"[2]").await;
    s.post("/v1/services/echo/call/trap", b"[]").await;
    s.post("/v1/services/ghost/call/echo", b"[]").await; // unknown target: not a series
                                                         // What the deployer, spell scheduler and runtime record through their clone.
    s.metrics.observe_step("install", Duration::from_millis(12), "ok");
    s.metrics.set_deployed(3, 1);
    s.metrics.spell_run("tick", true);
    s.metrics.cache(2, 1);

    let r = s.get("/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r.content_type.as_deref().unwrap().contains("text"), "{r:?}");
    for needle in [
        r#"sysdeploy_calls_total{alias="echo"} 3"#,
        r#"sysdeploy_call_errors_total{alias="echo",code="trap"} 1"#,
        r#"sysdeploy_call_duration_seconds_count{alias="echo"} 3"#,
        r#"sysdeploy_call_duration_seconds_bucket{le="+Inf",alias="echo"} 3"#,
        r#"sysdeploy_deploy_steps_total{action="install",outcome="ok"} 1"#,
        r#"sysdeploy_deploy_step_duration_seconds_count{action="install",outcome="ok"} 1"#,
        "sysdeploy_services_deployed 3",
        "sysdeploy_spells_deployed 1",
        r#"sysdeploy_spell_runs_total{alias="tick"} 1"#,
        r#"sysdeploy_spell_errors_total{alias="tick"} 0"#,
        "sysdeploy_precompiled_cache_hits_total 2",
        "sysdeploy_precompiled_cache_misses_total 1",
    ] {
        assert!(r.body.contains(needle), "missing {needle:?} in:\n{}", r.body);
    }
    assert!(!r.body.contains("ghost"), "{}", r.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_an_in_flight_call_finish() {
    let mut s = Server::start().await;
    let addr = s.addr;
    let in_flight = tokio::spawn(http(addr, "POST", "/v1/services/echo/call/slow", Some(TOKEN), Some(b"[]".to_vec())));
    s.backend.slow_entered.notified().await;

    s.shutdown.take().unwrap().send(()).unwrap();
    // New connections are refused once the listener is closed, while the call is still running.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the listener still accepts after shutdown was signalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!s.task.is_finished(), "serve returned with a call in flight");
    assert!(!in_flight.is_finished());

    s.backend.slow_release.notify_one();
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.json()), (200, json!("done")));
    s.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_round_trip_and_its_errors() {
    let s = Server::start().await;
    let addr = s.addr;
    let (ok, qualified, unknown, wrong_token, trap) = tokio::task::spawn_blocking(move || {
        (
            client::call(addr, TOKEN, "echo", "echo", json!(["hi", 2])),
            client::call(addr, TOKEN, "echo", "sysdeploy:registry/api#register", json!([])),
            client::call(addr, TOKEN, "ghost", "echo", json!([])),
            client::call(addr, "wrong", "echo", "echo", json!([])),
            client::call(addr, TOKEN, "echo", "trap", json!([])),
        )
    })
    .await
    .unwrap();
    assert_eq!(ok.unwrap(), json!(["hi", 2]));
    assert_eq!(qualified.unwrap(), json!("sysdeploy:registry/api#register"));

    match unknown.unwrap_err() {
        client::ClientError::Api { status, code, message } => {
            assert_eq!((status, code.as_str()), (404, "unknown_target"));
            assert!(message.contains("ghost"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let e = wrong_token.unwrap_err();
    assert_eq!(e.code(), Some("bad_token"), "{e:?}");
    assert!(e.to_string().contains("api.token"), "{e}");
    let e = trap.unwrap_err();
    assert_eq!(e.code(), Some("trap"));
    assert!(e.to_string().contains("wasm trap: unreachable"), "{e}");

    s.stop().await;
    // The node is gone: the client says so instead of printing a socket error.
    let e = tokio::task::spawn_blocking(move || client::call(addr, TOKEN, "echo", "echo", json!([]))).await.unwrap().unwrap_err();
    assert!(matches!(e, client::ClientError::NodeNotRunning { .. }), "{e:?}");
    assert!(e.to_string().contains("node is not running"), "{e}");
}

#[tokio::test]
async fn serve_refuses_an_empty_token() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = ApiConfig::new(String::new(), Duration::from_secs(1));
    let err = api::serve(listener, TestBackend::new(), Metrics::new(), cfg, std::future::pending()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("api.token"), "{err}");
}

/// The non-test code of a source file, without `//` comments.
fn code_of(rel: &str) -> String {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap();
    code.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n")
}

/// Constant-time token comparison cannot be observed reliably through the
/// network, so this pins the code instead: `src/api/auth.rs` hashes the
/// presented token and compares the digests only with `subtle`'s `ct_eq`
/// (one comparison, no `==`, no `PartialEq` on the check), and no other API
/// or node code compares anything with a token. Replacing `ct_eq` by `==`
/// (or comparing the raw strings) fails this test.
#[test]
fn the_token_is_compared_only_in_constant_time() {
    let auth = code_of("src/api/auth.rs");
    assert_eq!(auth.matches(".ct_eq(").count(), 1, "exactly one constant-time comparison:\n{auth}");
    assert!(auth.contains("blake3::hash(presented"), "the presented token is hashed before comparing (its length must not matter)");
    assert!(auth.contains(".ct_eq(&self.expected)"), "the digests are compared with ct_eq");
    assert_eq!(auth.matches("self.expected").count(), 1, "the expected digest is read only by ct_eq");
    for op in ["==", "!=", ".eq(", ".ne(", ".cmp(", "partial_cmp", "PartialEq", "starts_with", "ends_with", "memcmp", "matches!("] {
        assert!(!auth.contains(op), "src/api/auth.rs compares with {op:?}: only ct_eq may compare the token");
    }
    for rel in ["src/api/mod.rs", "src/api/error.rs", "src/node.rs"] {
        for line in code_of(rel).lines() {
            let compares = ["==", "!=", ".eq(", "starts_with", "ends_with"].iter().any(|op| line.contains(op));
            assert!(!(compares && line.to_lowercase().contains("token")), "{rel} compares a token outside auth.rs: {line:?}");
        }
    }
}
// Private functions and on-install semantics through the real binary (issue 16).
#[path = "api/kit.rs"]
mod kit;
