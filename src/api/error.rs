//! The API's error type and its stable wire shape:
//! `{"error":{"code":"...","message":"..."}}` with one HTTP status per cause.

use crate::runtime::CallError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Everything a request can fail with. Each variant has one status and one
/// stable `code`; clients match on the code, humans read the message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401; `Authorization` header absent.
    #[error("missing bearer token: send `Authorization: Bearer <token>` with the token from <state_dir>/api.token")]
    MissingToken,
    /// 401; header present but malformed or the token does not match.
    #[error("invalid bearer token: use the token from <state_dir>/api.token of the running node")]
    BadToken,
    /// 404; no route matches the path.
    #[error("no endpoint {method} {path}; endpoints: GET /health, GET /livez, GET /readyz, GET /metrics, GET /v1/services, GET /v1/spells, GET /v1/spells/{{alias}}/kv, GET /v1/deployments/last, POST /v1/services/{{alias}}/call/{{function}}, POST /v1/reload, POST /v1/snapshots, GET /v1/snapshot")]
    NoRoute { method: String, path: String },
    /// 405; the path exists with other methods.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// 404; `GET /v1/spells/{alias}/kv` for an alias that is not a spell.
    #[error("no spell named {alias}; GET /v1/spells lists the deployed spells")]
    UnknownSpell { alias: String },
    /// 404; nothing deployed yet.
    #[error("no deployment has been recorded yet")]
    NoDeployment,
    /// 413
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// 400; the body could not be read.
    #[error("could not read the request body: {0}")]
    BadBody(String),
    /// 400; the body is not JSON.
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    /// 400; the body is JSON but not an array of arguments.
    #[error("request body must be a JSON array of arguments, e.g. [\"a\", 1]; got {got}")]
    NotAnArray { got: &'static str },
    /// Status per [`CallError`] variant.
    #[error(transparent)]
    Call(#[from] CallError),
    /// 500; the backend could not reload.
    #[error("reload failed: {0}")]
    Reload(String),
    /// 503; a reload was asked while the first deployment runs.
    #[error("the node is still booting (its first deployment runs); reload once GET /health answers ready")]
    Booting,
    /// 503; too many reloads are waiting already.
    #[error("too many reloads are waiting; try again when the current one has finished")]
    ReloadBusy,
    /// 503; the node is stopping.
    #[error("the node is shutting down: {0}")]
    ShuttingDown(String),
    /// 503 `busy`; a snapshot of this node is being taken already (issue 17).
    #[error("a snapshot of this node is being taken already (one at a time); try again when it has finished")]
    SnapshotBusy,
    /// 503 `booting`; the first deployment runs, there is nothing consistent to snapshot yet.
    #[error("the node is still booting (its first deployment runs); take the snapshot once GET /health answers ready")]
    SnapshotBooting,
    /// 400; `include_identity: true`: the API never serves `node.key` and `api.token`.
    #[error("the api does not serve the node's identity (include_identity must be false): whoever holds the api token could take over node.key; on the node's host, stop it and run `sysdeploy snapshot create FILE --include-identity`")]
    IdentityNotServed,
    /// 500; staging the running node failed.
    #[error("snapshot failed: {0}")]
    Snapshot(String),
    /// 400; the reloaded config, a package or the plan was refused; nothing changed.
    #[error("reload refused, nothing was changed and the node keeps serving: {0}")]
    InvalidConfig(String),
}

/// The stable code of a failed call: the same names as [`CallError`]'s serde
/// tag, so logs, API answers and the `code` label of
/// `sysdeploy_call_errors_total` agree.
pub fn call_error_code(e: &CallError) -> &'static str {
    match e {
        CallError::UnknownTarget { .. } => "unknown_target",
        CallError::UnknownFunction { .. } => "unknown_function",
        CallError::BadArgument { .. } => "bad_argument",
        CallError::BadArguments { .. } => "bad_arguments",
        CallError::Timeout { .. } => "timeout",
        CallError::Trap { .. } => "trap",
        CallError::Busy { .. } => "busy",
        CallError::Internal { .. } => "internal",
        CallError::ResultTooLarge { .. } => "result_too_large",
        CallError::PrivateFunction { .. } => "private_function",
    }
}

/// Every code [`call_error_code`] returns except `unknown_target` (calls to
/// unknown targets are not recorded, so they never have a series).
pub const CALL_ERROR_CODES: &[&str] =
    &["unknown_function", "bad_argument", "bad_arguments", "timeout", "trap", "busy", "internal", "result_too_large", "private_function"];

/// The wire form of an error, also what [`crate::api::client`] parses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// Inner object of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable (`bad_json`, `unknown_target`, ...).
    pub code: String,
    /// For humans; may change between versions.
    pub message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingToken | ApiError::BadToken => StatusCode::UNAUTHORIZED,
            ApiError::NoRoute { .. } | ApiError::UnknownSpell { .. } | ApiError::NoDeployment => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadBody(_) | ApiError::BadJson(_) | ApiError::NotAnArray { .. } => StatusCode::BAD_REQUEST,
            ApiError::Reload(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Booting | ApiError::ReloadBusy | ApiError::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::SnapshotBusy | ApiError::SnapshotBooting => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::IdentityNotServed => StatusCode::BAD_REQUEST,
            ApiError::Snapshot(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::InvalidConfig(_) => StatusCode::BAD_REQUEST,
            ApiError::Call(e) => match e {
                CallError::UnknownTarget { .. } | CallError::UnknownFunction { .. } => StatusCode::NOT_FOUND,
                CallError::BadArgument { .. } | CallError::BadArguments { .. } => StatusCode::BAD_REQUEST,
                CallError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                CallError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
                CallError::Trap { .. } | CallError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                CallError::ResultTooLarge { .. } => StatusCode::BAD_GATEWAY,
                CallError::PrivateFunction { .. } => StatusCode::FORBIDDEN,
            },
        }
    }

    /// The stable `code` of the wire shape.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingToken => "missing_token",
            ApiError::BadToken => "bad_token",
            ApiError::NoRoute { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::UnknownSpell { .. } => "unknown_spell",
            ApiError::NoDeployment => "no_deployment",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BadBody(_) => "bad_body",
            ApiError::BadJson(_) => "bad_json",
            ApiError::NotAnArray { .. } => "bad_arguments",
            ApiError::Reload(_) => "reload_failed",
            ApiError::Booting => "booting",
            ApiError::ReloadBusy => "busy",
            ApiError::ShuttingDown(_) => "shutting_down",
            ApiError::InvalidConfig(_) => "invalid_config",
            ApiError::SnapshotBusy => "busy",
            ApiError::SnapshotBooting => "booting",
            ApiError::IdentityNotServed => "identity_not_served",
            ApiError::Snapshot(_) => "snapshot_failed",
            ApiError::Call(e) => call_error_code(e),
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: self.code().to_string(), message: self.to_string() } }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code(), status = status.as_u16(), "api request failed: {self}");
        } else {
            tracing::debug!(code = self.code(), status = status.as_u16(), "api request rejected: {self}");
        }
        let mut resp = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            let value = match self {
                ApiError::BadToken => r#"Bearer realm="sysdeploy", error="invalid_token""#,
                _ => r#"Bearer realm="sysdeploy""#,
            };
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_error_codes_match_its_serde_tag() {
        let all = [
            CallError::UnknownTarget { target: "t".into() },
            CallError::UnknownFunction { target: "t".into(), function: "f".into(), available: "g".into() },
            CallError::BadArgument {
                target: "t".into(),
                function: "f".into(),
                param: "p".into(),
                expected: "u32".into(),
                got: "\"x\"".into(),
            },
            CallError::BadArguments { target: "t".into(), function: "f".into(), message: "m".into() },
            CallError::Timeout { target: "t".into(), function: "f".into(), ttl_ms: 5 },
            CallError::Trap { target: "t".into(), function: "f".into(), trap: "unreachable".into() },
            CallError::Busy { target: "t".into() },
            CallError::Internal { target: "t".into(), function: "f".into(), message: "m".into() },
            CallError::ResultTooLarge { target: "t".into(), function: "f".into(), limit_bytes: 1 },
        ];
        for e in all {
            let tag = serde_json::to_value(&e).unwrap()["code"].as_str().unwrap().to_string();
            assert_eq!(ApiError::Call(e).code(), tag);
        }
    }
}
