//! Blocking client of the node's API, behind `sysdeploy call`.

use super::error::ErrorBody;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a call through the running node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connection refused: nothing listens there.
    #[error("the node is not running: nothing listens on {addr}; start it with `sysdeploy run` (or check node.api_listen)")]
    NodeNotRunning { addr: SocketAddr },
    /// Any other transport failure (timeout, reset, protocol error).
    #[error("could not talk to the node at {addr}: {source}")]
    Transport {
        addr: SocketAddr,
        #[source]
        source: ureq::Error,
    },
    /// The node answered with the API's error shape.
    #[error("{message} (http {status}, {code})")]
    Api { status: u16, code: String, message: String },
    /// The node answered something that is not the API's JSON.
    #[error("the node at {addr} answered http {status} with a body that is not the sysdeploy api's json: {body}")]
    BadResponse { addr: SocketAddr, status: u16, body: String },
}

impl ClientError {
    /// The API error code, when the node answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// How long to wait for the TCP connection; the call itself is bounded by the node's TTL.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest body echoed back in [`ClientError::BadResponse`].
const MAX_ECHOED_BODY: usize = 512;

fn agent(timeout: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Loopback traffic must never go through a proxy from the environment.
        .proxy(None)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(timeout)
        .build()
        .into()
}

/// Calls `alias.function(args)` through the node listening on `addr`;
/// returns the JSON result.
pub fn call(addr: SocketAddr, token: &str, alias: &str, function: &str, args: Value) -> Result<Value, ClientError> {
    let url = format!("http://{addr}/v1/services/{}/call/{}", encode_segment(alias), encode_segment(function));
    let resp =
        agent(None).post(&url).header("Authorization", &format!("Bearer {token}")).send_json(&args).map_err(|e| transport(addr, e))?;
    answer(addr, resp)
}

/// Asks the node on `addr` to reload its configuration (`POST /v1/reload`);
/// returns the deployment report.
pub fn reload(addr: SocketAddr, token: &str) -> Result<Value, ClientError> {
    let url = format!("http://{addr}/v1/reload");
    let resp = agent(None).post(&url).header("Authorization", &format!("Bearer {token}")).send_empty().map_err(|e| transport(addr, e))?;
    answer(addr, resp)
}

/// `GET /readyz` of the node on `addr` (bounded by `timeout`): whether it
/// answered 200, and its JSON body.
pub fn readiness(addr: SocketAddr, timeout: Duration) -> Result<(bool, Value), ClientError> {
    let mut resp = agent(Some(timeout)).get(&format!("http://{addr}/readyz")).call().map_err(|e| transport(addr, e))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().map_err(|e| transport(addr, e))?;
    let body = serde_json::from_str(&text).map_err(|_| bad_response(addr, status, &text))?;
    Ok((status == 200, body))
}

fn answer(addr: SocketAddr, mut resp: ureq::http::Response<ureq::Body>) -> Result<Value, ClientError> {
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().map_err(|e| transport(addr, e))?;
    if (200..300).contains(&status) {
        return serde_json::from_str(&text).map_err(|_| bad_response(addr, status, &text));
    }
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => Err(ClientError::Api { status, code: b.error.code, message: b.error.message }),
        Err(_) => Err(bad_response(addr, status, &text)),
    }
}

fn transport(addr: SocketAddr, e: ureq::Error) -> ClientError {
    match &e {
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => ClientError::NodeNotRunning { addr },
        _ => ClientError::Transport { addr, source: e },
    }
}

fn bad_response(addr: SocketAddr, status: u16, body: &str) -> ClientError {
    let mut body = body.to_string();
    if body.len() > MAX_ECHOED_BODY {
        let mut cut = MAX_ECHOED_BODY;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push('…');
    }
    ClientError::BadResponse { addr, status, body }
}

/// Percent-encodes one path segment: function names such as
/// `sysdeploy:registry/api#register` contain `/` and `#`.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("registry"), "registry");
        assert_eq!(encode_segment("sysdeploy:registry/api#register"), "sysdeploy%3Aregistry%2Fapi%23register");
        assert_eq!(encode_segment("a b?é"), "a%20b%3F%C3%A9");
    }

    #[test]
    fn refused_connection_means_node_not_running() {
        // Bind then drop to get a port nothing listens on.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let err = call(addr, "t", "echo", "echo", serde_json::json!([])).unwrap_err();
        assert!(matches!(err, ClientError::NodeNotRunning { .. }), "{err:?}");
        assert!(err.to_string().contains("not running"), "{err}");
    }
}
