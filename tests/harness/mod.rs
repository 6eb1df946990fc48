//! What the black-box tests that start `sysdeploy` processes share: the
//! binary, a free loopback port, a spawned process with its log collected,
//! exit and signal helpers, and one HTTP client. Each test binary includes it
//! with `mod harness;` and keeps only what is particular to it (its sandbox
//! layout, its node's helper calls). Not every binary uses every item.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sysdeploy");

/// Upper bound for anything that should happen "soon" (boots compile wasm on
/// a shared, busy machine). Reaching it is a failure, never a pass.
pub const PATIENCE: Duration = Duration::from_secs(180);

/// A loopback port nothing listens on right now.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// What a short command (`plan`, `status`, `run --once`, …) left behind.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `cmd` to completion with stdin closed.
pub fn output(cmd: &mut Command) -> Out {
    cmd.stdin(Stdio::null()).output().unwrap().into()
}

/// A spawned `sysdeploy run` whose stderr (its log) is collected as it
/// comes; SIGKILLed on drop unless it already exited. Test binaries add their
/// own helpers in `impl Node` blocks (readiness, calls).
pub struct Node {
    pub child: Child,
    /// The API address it was given.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Node {
    /// Spawns `cmd` (a node told to listen on `addr`) with stdin closed,
    /// stdout discarded and stderr collected.
    pub fn spawn(cmd: &mut Command, addr: SocketAddr) -> Node {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Node { child, addr, log }
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`; panics with the log if the
    /// process exits first or patience runs out.
    pub fn wait_log(&mut self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(needle) {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("process exited ({st}) before logging {needle:?}; log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "log never showed {needle:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.child.id());
    }

    /// Waits for the process to exit (bounded) and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "process did not exit; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not json ({e}): {}", self.body))
    }

    /// Asserts 200 and returns the JSON body.
    pub fn ok_json(&self) -> Value {
        assert_eq!(self.status, 200, "{}", self.body);
        self.json()
    }

    /// The API error's code.
    pub fn error_code(&self) -> String {
        let v = self.json();
        v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code: {v}")).to_string()
    }

    /// Asserts the API error shape with this status and code; returns the message.
    /// The shape is exact: `{"error":{"code","message"}}`, nothing else, and
    /// a message that is not empty and does not end with a full stop.
    pub fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        let e = v["error"].as_object().unwrap_or_else(|| panic!("no error object: {v}"));
        assert_eq!(e.len(), 2, "only code and message: {v}");
        assert_eq!(e["code"], code, "{v}");
        let msg = e["message"].as_str().unwrap().to_string();
        assert!(!msg.is_empty() && !msg.ends_with('.'), "message {msg:?}");
        msg
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).proxy(None).timeout_global(Some(PATIENCE)).build().into()
}

fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> ureq::http::request::Builder {
    let mut req = ureq::http::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    req
}

fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let req = request(addr, method, path, token);
    match body {
        Some(b) => agent().run(req.header("Content-Type", "application/json").body(b).unwrap()),
        None => agent().run(req.body(()).unwrap()),
    }
}

/// One request (a bearer token if given; a JSON body if given); `None` when
/// nothing answered. The body is read whole, without a size limit, and
/// decoded lossily (a test that expected an error and got an archive says so).
pub fn try_http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> Option<Resp> {
    let resp = send(addr, method, path, token, body).ok()?;
    let status = resp.status().as_u16();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_body().into_reader(), &mut bytes).ok()?;
    Some(Resp { status, body: String::from_utf8_lossy(&bytes).into_owned() })
}

/// A request that must be answered, its body as bytes (archives are large).
pub fn http_bytes(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> (u16, Vec<u8>) {
    let resp = send(addr, method, path, token, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_body().into_reader(), &mut bytes)
        .unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"));
    (status, bytes)
}

/// [`try_http`] that must be answered.
pub fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> Resp {
    try_http(addr, method, path, token, body).unwrap_or_else(|| panic!("{method} {path}: the node did not answer"))
}

/// Polls `cond` until true, bounded by [`PATIENCE`].
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
