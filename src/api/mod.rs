//! The node's HTTP API (axum): health, metrics, listings, service calls and
//! reload, behind a bearer token; plus the blocking client `sysdeploy call` uses.
//!
//! The API never touches the runtime, spells or store directly: it talks to a
//! [`Backend`] that the node implements. No endpoint removes or re-aliases a
//! service.

mod auth;
pub mod client;
mod error;
mod metrics;

pub use error::{call_error_code, ApiError, ErrorBody, ErrorDetail};
pub use metrics::{
    Format as MetricsFormat, Metrics, CLASSIC_CONTENT_TYPE as METRICS_CLASSIC_CONTENT_TYPE, CONTENT_TYPE as METRICS_CONTENT_TYPE,
};

use crate::runtime::CallError;
use auth::TokenCheck;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The node's readiness, as `GET /health` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Boot or reload in progress: 503 `{"status":"deploying"}`.
    Deploying,
    /// Everything deployed: 200 `{"status":"ready"}`.
    Ready,
    /// Deployed with failures under `on_failure = "continue"`; the node serves what works: 503.
    Degraded { failures: Vec<String> },
    /// Deployment failed: 503.
    Failed { failures: Vec<String> },
}

impl Health {
    /// The `status` word of `/health` and `/readyz` bodies.
    pub fn status(&self) -> &'static str {
        match self {
            Health::Deploying => "deploying",
            Health::Ready => "ready",
            Health::Degraded { .. } => "degraded",
            Health::Failed { .. } => "failed",
        }
    }

    /// Whether `/readyz` answers 200: a deployment finished and did not fail
    /// (a degraded node serves what works; readiness is about routing traffic).
    pub fn is_ready(&self) -> bool {
        matches!(self, Health::Ready | Health::Degraded { .. })
    }

    fn failures(&self) -> Option<&[String]> {
        match self {
            Health::Degraded { failures } | Health::Failed { failures } => Some(failures),
            Health::Deploying | Health::Ready => None,
        }
    }
}

/// A boxed future borrowing the backend, as trait methods return it.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the API needs from the node. The node implements it over the
/// runtime, the spell scheduler and the store.
pub trait Backend: Send + Sync + 'static {
    fn health(&self) -> Health;
    /// `GET /v1/services` body.
    fn services(&self) -> Value;
    /// `GET /v1/spells` body.
    fn spells(&self) -> Value;
    /// A spell's KV store; `None` when no spell has that alias (404).
    fn spell_kv(&self, alias: &str) -> Option<Value>;
    /// The last deployment report; `None` before the first deployment (404).
    fn last_deployment(&self) -> Option<Value>;
    /// Calls `function` of the service named `alias` (alias or id) with a
    /// JSON array of arguments.
    fn call(&self, alias: &str, function: &str, args: Value) -> BoxFuture<'_, Result<Value, CallError>>;
    /// Re-reads the config, plans and applies; `Ok` carries the report.
    fn reload(&self) -> BoxFuture<'_, Result<Value, ReloadError>>;
    /// Whether a reload is running now (`/readyz` says so in its body).
    fn reloading(&self) -> bool {
        false
    }
    /// Stages the running node and streams its snapshot archive (issue 17);
    /// identity is never included.
    fn snapshot(&self) -> BoxFuture<'_, Result<crate::snapshot::online::ByteStream, SnapshotRefused>> {
        Box::pin(async { Err(SnapshotRefused::Failed("this node does not take snapshots".into())) })
    }
    /// Resolves to `true` when the node's control loop answered; `/livez`
    /// bounds the wait.
    fn alive(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}

/// How long `/livez` waits for the control loop before answering 503.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `POST /v1/reload` did not deploy, each with its own status and code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    /// 503 `booting`: the first deployment is still running; ask again once
    /// `/health` is ready.
    Booting,
    /// 503 `busy`: too many reloads are already waiting.
    Busy,
    /// 503 `shutting_down`: the node is stopping; the reload did not run or
    /// was interrupted (the next boot finishes what it started).
    ShuttingDown(String),
    /// 400 `invalid_config`: the config, a package or the plan was refused;
    /// nothing was changed and the node keeps serving.
    Invalid(String),
    /// 500 `reload_failed`: the deployment ran and failed.
    Failed(String),
}

impl From<String> for ReloadError {
    fn from(message: String) -> Self {
        ReloadError::Failed(message)
    }
}

impl From<&str> for ReloadError {
    fn from(message: &str) -> Self {
        ReloadError::Failed(message.to_string())
    }
}

/// Why `POST /v1/snapshots` / `GET /v1/snapshot` did not start streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRefused {
    /// 503 `booting`: the first deployment runs.
    Booting,
    /// 503 `busy`: another snapshot is being taken.
    Busy,
    /// 500 `snapshot_failed`: staging failed.
    Failed(String),
}

/// Settings of the API server.
#[derive(Clone)]
pub struct ApiConfig {
    /// Bearer token every `/v1` request must present (`<state_dir>/api.token`).
    /// Never printed: `Debug` redacts it.
    pub token: String,
    /// Largest request body accepted, in bytes; larger ones get 413 before
    /// they are buffered.
    pub body_limit: usize,
    /// Upper bound on one call as the API sees it. The runtime enforces the
    /// per-call TTL itself; this is a backstop so a stuck backend cannot pin
    /// a connection forever, so set it a little above the call TTL.
    pub call_timeout: Duration,
    /// How long a client may take to send a request's head (request line
    /// and headers), and how long a kept-alive connection may sit idle,
    /// before the connection is closed.
    pub header_read_timeout: Duration,
}

impl ApiConfig {
    /// Default header-read (and idle) timeout: well inside the node's 10 s
    /// shutdown drain, so a half-sent request never outlasts it.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

    /// Default body limit: 1 MiB, plenty for JSON arguments.
    pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

    /// `token` with the default body limit and a call timeout of `call_ttl` plus 5 s.
    pub fn new(token: String, call_ttl: Duration) -> Self {
        ApiConfig {
            token,
            body_limit: Self::DEFAULT_BODY_LIMIT,
            call_timeout: call_ttl + Duration::from_secs(5),
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("token", &"<redacted>")
            .field("body_limit", &self.body_limit)
            .field("call_timeout", &self.call_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .finish()
    }
}

/// Shared by every handler.
#[derive(Clone)]
struct AppState {
    backend: Arc<dyn Backend>,
    metrics: Metrics,
    token: TokenCheck,
    /// Kept to name the limit in 413 messages.
    body_limit: usize,
    call_timeout: Duration,
}

/// Serves the API on `listener` until `shutdown` resolves; then stops
/// accepting connections, lets in-flight requests finish and returns. The
/// caller bounds how long that may take (e.g. `tokio::time::timeout`).
///
/// Fails at once (`InvalidInput`) when the token is empty.
pub async fn serve(
    listener: tokio::net::TcpListener,
    backend: Arc<dyn Backend>,
    metrics: Metrics,
    cfg: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(backend, metrics, &cfg)?;
    if let Ok(addr) = listener.local_addr() {
        warn_if_not_loopback(addr);
        tracing::info!(%addr, "api listening");
    }
    // Our own accept loop instead of `axum::serve`, which sets no timer and
    // so no header-read timeout: a client that sends half a request line
    // would hold a connection (and shutdown's drain) forever.
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper starts this timer whenever it waits for a request head: on a new
    // connection, and between requests on a kept-alive one, so it is also
    // the idle timeout. It never runs while a handler works.
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(cfg.header_read_timeout).keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving
                    // the connections we have, and try again shortly.
                    tracing::warn!(error = %e, "api: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "api connection ended with an error");
            }
        });
    }
    drop(listener);
    // In-flight requests finish; idle connections close at once; the caller bounds the wait.
    graceful.shutdown().await;
    tracing::info!("api stopped");
    Ok(())
}

/// Builds the router (exposed to the crate for in-process use).
pub(crate) fn router(backend: Arc<dyn Backend>, metrics: Metrics, cfg: &ApiConfig) -> std::io::Result<Router> {
    let token = TokenCheck::new(&cfg.token).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "api token is empty; the node must create <state_dir>/api.token before serving the api",
        )
    })?;
    let state = AppState { backend, metrics, token, body_limit: cfg.body_limit, call_timeout: cfg.call_timeout };
    Ok(Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/services", get(services))
        .route("/v1/spells", get(spells))
        .route("/v1/spells/{alias}/kv", get(spell_kv))
        .route("/v1/deployments/last", get(last_deployment))
        .route("/v1/services/{alias}/call/{function}", post(call))
        .route("/v1/reload", post(reload))
        .route("/v1/snapshots", post(create_snapshot))
        .route("/v1/snapshot", get(get_snapshot))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        // Router::layer wraps the fallback too, so unknown `/v1` paths answer
        // 401 to strangers rather than revealing what exists.
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(DefaultBodyLimit::max(cfg.body_limit))
        .with_state(state))
}

/// Logs a warning when the API binds a non-loopback address (the API can call
/// every service; exposing it is a deliberate choice). Returns whether it warned.
pub fn warn_if_not_loopback(addr: SocketAddr) -> bool {
    let exposed = !addr.ip().is_loopback();
    if exposed {
        tracing::warn!(
            %addr,
            "the api listens on a non-loopback address: anyone who can reach it and holds the token can call every service; \
             set node.api_listen to 127.0.0.1:<port> unless this is intended"
        );
    }
    exposed
}

/// Everything under `/v1` needs the bearer token; `/health`, `/livez`, `/readyz` and `/metrics` are open.
async fn require_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/v1" || path.starts_with("/v1/") {
        if let Err(e) = st.token.check(req.headers()) {
            return e.into_response();
        }
    }
    next.run(req).await
}

#[derive(serde::Serialize)]
struct HealthBody<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    failures: Option<&'a [String]>,
}

async fn health(State(st): State<AppState>) -> Response {
    let h = st.backend.health();
    let (status, body) = match &h {
        Health::Ready => (StatusCode::OK, HealthBody { status: "ready", failures: None }),
        Health::Deploying => (StatusCode::SERVICE_UNAVAILABLE, HealthBody { status: "deploying", failures: None }),
        Health::Degraded { failures } => (StatusCode::SERVICE_UNAVAILABLE, HealthBody { status: "degraded", failures: Some(failures) }),
        Health::Failed { failures } => (StatusCode::SERVICE_UNAVAILABLE, HealthBody { status: "failed", failures: Some(failures) }),
    };
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /livez`: 200 while the process runs and its control loop answers
/// within [`LIVENESS_TIMEOUT`] (also during deployments and reloads, which
/// the loop watches rather than blocks on); 503 otherwise, so a supervisor
/// restarts a wedged node. Says nothing about deployments.
async fn livez(State(st): State<AppState>) -> Response {
    let alive = tokio::time::timeout(LIVENESS_TIMEOUT, st.backend.alive()).await.unwrap_or(false);
    let (status, word) = if alive { (StatusCode::OK, "alive") } else { (StatusCode::SERVICE_UNAVAILABLE, "unresponsive") };
    no_store((status, Json(serde_json::json!({ "status": word }))).into_response())
}

/// `GET /readyz`: 200 once the first deployment finished and did not fail —
/// also while a reload runs and when degraded — so a readiness probe never
/// flaps on reloads; the body carries the details.
async fn readyz(State(st): State<AppState>) -> Response {
    let h = st.backend.health();
    let status = if h.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "ready": h.is_ready(),
        "status": h.status(),
        "reloading": st.backend.reloading(),
        "failures": h.failures().unwrap_or(&[]),
    });
    no_store((status, Json(body)).into_response())
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /metrics`: the classic text format unless `Accept` prefers OpenMetrics.
async fn metrics_text(State(st): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = metrics::Format::negotiate(accept);
    let mut resp = ([(header::CONTENT_TYPE, format.content_type())], st.metrics.render_as(format)).into_response();
    resp.headers_mut().insert(header::VARY, HeaderValue::from_static("accept"));
    resp
}

async fn services(State(st): State<AppState>) -> Json<Value> {
    Json(st.backend.services())
}

async fn spells(State(st): State<AppState>) -> Json<Value> {
    Json(st.backend.spells())
}

async fn spell_kv(State(st): State<AppState>, Path(alias): Path<String>) -> Result<Json<Value>, ApiError> {
    st.backend.spell_kv(&alias).map(Json).ok_or(ApiError::UnknownSpell { alias })
}

async fn last_deployment(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    st.backend.last_deployment().map(Json).ok_or(ApiError::NoDeployment)
}

async fn call(
    State(st): State<AppState>,
    Path((alias, function)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let args = parse_args(body, st.body_limit)?;
    let started = Instant::now();
    let result = match tokio::time::timeout(st.call_timeout, st.backend.call(&alias, &function, args)).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout {
            target: alias.clone(),
            function: function.clone(),
            ttl_ms: u64::try_from(st.call_timeout.as_millis()).unwrap_or(u64::MAX),
        }),
    };
    // Unknown targets are not recorded: a label per mistyped alias would let
    // any client grow the metrics without bound.
    if !matches!(result, Err(CallError::UnknownTarget { .. })) {
        st.metrics.observe_call(&alias, started.elapsed(), result.as_ref().err().map(error::call_error_code));
    }
    Ok(Json(result?))
}

/// The call body: a JSON array (or nothing, for no arguments), within the size limit.
fn parse_args(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Value, ApiError> {
    let bytes = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::BadBody(rej.body_text())
        }
    })?;
    // No body at all means no arguments: `curl -X POST .../call/version` works.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Array(Vec::new()));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let got = match &value {
        Value::Array(_) => return Ok(value),
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Object(_) => "an object",
    };
    Err(ApiError::NotAnArray { got })
}

async fn reload(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    st.backend.reload().await.map(Json).map_err(|e| match e {
        ReloadError::Booting => ApiError::Booting,
        ReloadError::Busy => ApiError::ReloadBusy,
        ReloadError::ShuttingDown(m) => ApiError::ShuttingDown(m),
        ReloadError::Invalid(m) => ApiError::InvalidConfig(m),
        ReloadError::Failed(m) => ApiError::Reload(m),
    })
}

/// `POST /v1/snapshots` body; every field optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    #[serde(default)]
    include_identity: bool,
}

/// `POST /v1/snapshots`: a snapshot of the running node, streamed (issue 17).
/// `{"include_identity": true}` is refused: the API never serves the identity.
async fn create_snapshot(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let bytes = body.map_err(|rej| ApiError::BadBody(rej.body_text()))?;
    let req: SnapshotRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        SnapshotRequest::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::BadJson(e.to_string()))?
    };
    if req.include_identity {
        return Err(ApiError::IdentityNotServed);
    }
    get_snapshot(State(st)).await
}

/// `GET /v1/snapshot`: staged first (errors are statuses), then streamed as
/// the client reads; a transfer that breaks off ends without the final chunk.
async fn get_snapshot(State(st): State<AppState>) -> Result<Response, ApiError> {
    let stream = st.backend.snapshot().await.map_err(|e| match e {
        SnapshotRefused::Booting => ApiError::SnapshotBooting,
        SnapshotRefused::Busy => ApiError::SnapshotBusy,
        SnapshotRefused::Failed(m) => ApiError::Snapshot(m),
    })?;
    let mut resp = Response::new(axum::body::Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::snapshot::online::CONTENT_TYPE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute { method: method.to_string(), path: uri.path().to_string() }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_config_debug_redacts_the_token() {
        let cfg = ApiConfig::new("tok-very-secret".into(), Duration::from_secs(60));
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("tok-very-secret"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
        assert_eq!(cfg.call_timeout, Duration::from_secs(65));
    }

    #[test]
    fn loopback_detection() {
        assert!(!warn_if_not_loopback("127.0.0.1:7200".parse().unwrap()));
        assert!(!warn_if_not_loopback("[::1]:7200".parse().unwrap()));
        assert!(warn_if_not_loopback("0.0.0.0:7200".parse().unwrap()));
        assert!(warn_if_not_loopback("192.0.2.7:7200".parse().unwrap()));
    }

    #[test]
    fn args_must_be_a_json_array() {
        let ok = parse_args(Ok(Bytes::from_static(b"[1, \"a\"]")), 10).unwrap();
        assert_eq!(ok, serde_json::json!([1, "a"]));
        assert!(matches!(parse_args(Ok(Bytes::from_static(b"{}")), 10), Err(ApiError::NotAnArray { got: "an object" })));
        assert!(matches!(parse_args(Ok(Bytes::from_static(b"[1,")), 10), Err(ApiError::BadJson(_))));
        assert_eq!(parse_args(Ok(Bytes::new()), 10).unwrap(), serde_json::json!([]));
        assert!(matches!(parse_args(Ok(Bytes::from_static(b"nul")), 10), Err(ApiError::BadJson(_))));
    }
}
