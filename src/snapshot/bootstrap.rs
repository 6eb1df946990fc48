//! Starting a node from a peer (issue 17): `sysdeploy run --bootstrap-from
//! URL --bootstrap-token-file FILE` fetches `GET URL/v1/snapshot` from the
//! peer's API when the state dir is empty or absent, streams it into
//! `snapshot::restore::restore` with `adopt` (a new identity takes over what
//! the peer owned), then the node boots as usual. Also the client side of
//! `sysdeploy snapshot create FILE` while a node runs (`fetch_to_file`).
//!
//! The token comes from a file with the rules of every secret file (mode
//! 0600, or 0440/0640 for one of our groups), never from argv; it reaches no
//! message. A URL with user info is refused for the same reason. A failed or
//! interrupted fetch leaves no state dir behind: the restore writes into a
//! temporary sibling and renames it into place only once every hash matched.

use crate::exit::Exit;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `run --bootstrap-from` was given.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The peer's API base, e.g. `http://10.0.0.5:7200`.
    pub url: String,
    /// The file holding the peer's API token.
    pub token_file: PathBuf,
}

/// Why a bootstrap or an online snapshot fetch failed. Never holds the token.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("--bootstrap-from {url:?} {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{0}")]
    Token(String),
    /// The config or a package is invalid: refused before fetching.
    #[error("{0}")]
    Invalid(String),
    #[error("fetching {url}: {cause}")]
    Fetch { url: String, cause: String },
    #[error("fetching {url}: the peer answered http {status} ({code}): {message}")]
    Peer { url: String, status: u16, code: String, message: String },
    #[error("fetching {url}: the snapshot could not be restored into {}: {cause}; nothing was put in place", state_dir.display())]
    Restore { url: String, state_dir: PathBuf, cause: String, exit: Exit },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BootstrapError {
    /// Bad input (URL, token file, a token the peer refuses) is 2; a failed fetch or restore is 1.
    pub fn exit(&self) -> Exit {
        match self {
            BootstrapError::BadUrl { .. } | BootstrapError::Token(_) | BootstrapError::Invalid(_) => Exit::Invalid,
            BootstrapError::Peer { status: 401, .. } => Exit::Invalid,
            BootstrapError::Restore { exit, .. } => *exit,
            _ => Exit::DeployFailed,
        }
    }
}

/// What a bootstrap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The snapshot was fetched, verified and restored.
    Restored { bytes: u64 },
    /// The state dir already holds a node (an earlier bootstrap completed, or
    /// the node ran before): the flags are ignored.
    AlreadyInitialised,
}

/// How long the peer may take to stage its snapshot before its answer starts.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes received before the `snapshot::bootstrap::receiving` failpoint (crash tests).
const FAILPOINT_AFTER: u64 = 64 * 1024;

/// The hook of `run`: bad input (config, packages, URL, token file) is
/// refused before anything is fetched or written, then [`run`].
pub fn before_run(
    b: &Bootstrap,
    config: &crate::config::EffectiveConfig,
    catalog: &crate::distro::Catalog,
) -> Result<Outcome, BootstrapError> {
    crate::deploy::desired::resolve(catalog, config).map_err(|e| BootstrapError::Invalid(e.to_string().trim_end().to_string()))?;
    // Crash tests stop a bootstrap half-way (`FAILPOINTS`); torn down before
    // `node::run` sets its own scenario up.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    run(b, &config.node.state_dir)
}

/// `run --bootstrap-from`: restores the peer's snapshot into `state_dir`
/// when it is empty or absent; leaves an initialised one alone.
pub fn run(b: &Bootstrap, state_dir: &Path) -> Result<Outcome, BootstrapError> {
    let endpoint = snapshot_url(&b.url)?;
    let token = read_token(&b.token_file)?;
    if holds_a_node(state_dir) {
        tracing::info!(
            state_dir = %state_dir.display(),
            "--bootstrap-from is ignored: the state directory already holds a node (an earlier bootstrap completed or the node ran before)"
        );
        return Ok(Outcome::AlreadyInitialised);
    }
    // Refused here rather than by the restore, so the peer stages nothing for us.
    if let Ok(mut entries) = std::fs::read_dir(state_dir) {
        if let Some(Ok(e)) = entries.next() {
            return Err(BootstrapError::Invalid(format!(
                "--bootstrap-from: state directory {} is not empty (it holds {:?}, and no node: no {} or {}); a bootstrap \
                 restores only into an empty or absent directory: move it away or empty it",
                state_dir.display(),
                e.file_name(),
                crate::state::KEY_FILE,
                crate::state::STORE_FILE
            )));
        }
    }
    tracing::info!(peer = %endpoint, state_dir = %state_dir.display(), "bootstrap: fetching the peer's snapshot");
    let started = std::time::Instant::now();
    let body = open(&endpoint, &token)?;
    let mut reader = Counting { inner: body, read: 0, noted: false, error: None };
    let mut progress = super::progress::stderr("bootstrap");
    let restored = super::restore::restore(
        &mut reader,
        state_dir,
        &super::restore::RestoreOptions { adopt: true, include_identity: false },
        &mut progress,
    )
    .map_err(|e| {
        // A peer that sends a damaged archive is a failed fetch (1); a
        // state dir that cannot take it keeps the restore's own code.
        let exit = match &e {
            super::SnapshotError::BadArchive { .. } => Exit::DeployFailed,
            e => e.exit(),
        };
        let cause = match e {
            super::SnapshotError::BadArchive { what, .. } => what,
            e => e.to_string(),
        };
        BootstrapError::Restore { url: endpoint.clone(), state_dir: state_dir.to_path_buf(), cause, exit }
    });
    match restored {
        Ok(_) => {
            tracing::info!(
                peer = %endpoint,
                bytes = reader.read,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "bootstrap: the peer's snapshot is verified and restored with a new identity; booting"
            );
            Ok(Outcome::Restored { bytes: reader.read })
        }
        Err(e) => {
            // A transport error surfaces through the reader: name it rather
            // than what the archive reader made of the short input.
            Err(match reader.error.take() {
                Some(cause) => BootstrapError::Fetch { url: endpoint, cause },
                None => e,
            })
        }
    }
}

/// `sysdeploy snapshot create FILE` while a node runs: `POST
/// /v1/snapshots` to the node on `addr`, written to `file` atomically (temp
/// file 0600 beside it, fsync, rename, fsync of the directory). Returns the
/// bytes written.
pub fn fetch_to_file(
    addr: std::net::SocketAddr,
    token: &str,
    file: &Path,
    progress: &mut dyn super::progress::Progress,
) -> Result<u64, BootstrapError> {
    let url = format!("http://{addr}/v1/snapshots");
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = file.file_name().ok_or_else(|| BootstrapError::Write {
        path: file.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootstrapError::Write { path, source }
    };
    // The temp file is made before the node is asked: a FILE that cannot be
    // written (no such directory, no permission) is refused without making
    // the node stage a snapshot nobody reads.
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(werr(&tmp))?
    };
    let written = (|| {
        let resp = agent()
            .post(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .send_json(serde_json::json!({ "include_identity": false }))
            .map_err(|e| BootstrapError::Fetch { url: url.clone(), cause: e.to_string() })?;
        let mut body = answer(&url, resp)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        progress.start(0);
        loop {
            let got = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(g) => g,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BootstrapError::Fetch { url: url.clone(), cause: format!("the stream broke after {n} bytes: {e}") }),
            };
            f.write_all(&buf[..got]).map_err(werr(&tmp))?;
            n += got as u64;
            progress.advance(got as u64);
        }
        f.sync_all().map_err(werr(&tmp))?;
        std::fs::rename(&tmp, file).map_err(werr(file))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(werr(dir))?;
        progress.finish();
        Ok(n)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `sysdeploy snapshot create FILE` while a node runs on `state_dir`: the
/// node stages and streams its own snapshot (`POST /v1/snapshots`, token from
/// `api.token`), written to FILE atomically with progress on stderr. The
/// identity is never served by the API: `--include-identity` is refused.
pub fn cli_create_online(
    state_dir: &Path,
    addr: std::net::SocketAddr,
    pid: Option<u32>,
    file: &Path,
    include_identity: bool,
) -> Result<Exit, BootstrapError> {
    let pid = pid.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"));
    if include_identity {
        return Err(BootstrapError::Invalid(format!(
            "a node is running on state directory {} ({pid}): its api never serves node.key and api.token; stop it for              --include-identity, or leave the flag out to snapshot it while it runs",
            state_dir.display()
        )));
    }
    let token = crate::state::read_api_token(state_dir).map_err(|e| BootstrapError::Token(e.to_string()))?;
    let started = std::time::Instant::now();
    let mut progress = super::progress::stderr("snapshot create");
    let bytes = fetch_to_file(addr, &token, file, &mut progress)?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(file = %file.display(), bytes, ms = (secs * 1000.0) as u64, "snapshot created through the running node");
    println!(
        "snapshot {}: {} archive, without identity, taken by the running node ({pid}, api on {addr})",
        file.display(),
        super::mib(bytes)
    );
    println!("took:     {secs:.2} s");
    Ok(Exit::Ok)
}

/// `URL/v1/snapshot` for the peer's API base `url` (http only, no user info).
fn snapshot_url(url: &str) -> Result<String, BootstrapError> {
    let bad = |reason: &str| BootstrapError::BadUrl { url: url.to_string(), reason: reason.to_string() };
    let parsed =
        url::Url::parse(url).map_err(|e| bad(&format!("is not a url ({e}); expected the peer's api base, e.g. http://10.0.0.5:7200")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // The message must not echo a password: name the problem only.
        return Err(BootstrapError::BadUrl {
            url: format!("{}://…@{}", parsed.scheme(), parsed.host_str().unwrap_or("")),
            reason: "holds user info; give the peer's api token in --bootstrap-token-file instead".into(),
        });
    }
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(bad("uses https, which this build does not speak to peers yet; reach the peer's api over a private network \
                 or a local tls-terminating proxy (http://...)"))
        }
        _ => return Err(bad("is not an http url; expected the peer's api base, e.g. http://10.0.0.5:7200")),
    }
    if parsed.host_str().is_none() || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("must be the peer's api base (scheme, host, port), e.g. http://10.0.0.5:7200"));
    }
    Ok(format!("{}/v1/snapshot", parsed.as_str().trim_end_matches('/')))
}

fn read_token(path: &Path) -> Result<String, BootstrapError> {
    let token = crate::config::read_secret_file("bootstrap token", path, "--bootstrap-token-file or SYSDEPLOY_BOOTSTRAP_TOKEN_FILE")
        .map_err(|e| BootstrapError::Token(e.to_string()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(BootstrapError::Token(format!(
            "bootstrap token: secret file {} (named by --bootstrap-token-file) is empty; expected the peer's api token (its <state_dir>/api.token)",
            path.display()
        )));
    }
    Ok(token)
}

/// Whether `dir` already holds a node: its key or its store.
fn holds_a_node(dir: &Path) -> bool {
    dir.join(crate::state::KEY_FILE).exists() || dir.join(crate::state::STORE_FILE).exists()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .build()
        .into()
}

/// `GET endpoint` with the bearer token; the body as a reader once it answered 200.
fn open(endpoint: &str, token: &str) -> Result<Box<dyn Read + Send>, BootstrapError> {
    let resp = agent()
        .get(endpoint)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .map_err(|e| BootstrapError::Fetch { url: endpoint.to_string(), cause: e.to_string() })?;
    answer(endpoint, resp)
}

/// The body of a 200; the API's error (status, code, message) otherwise.
fn answer(url: &str, mut resp: ureq::http::Response<ureq::Body>) -> Result<Box<dyn Read + Send>, BootstrapError> {
    let status = resp.status().as_u16();
    if status == 200 {
        return Ok(Box::new(resp.into_body().into_reader()));
    }
    let text = resp.body_mut().with_config().limit(64 * 1024).read_to_string().unwrap_or_default();
    let (code, message) = match serde_json::from_str::<crate::api::ErrorBody>(&text) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => ("not_sysdeploy".to_string(), crate::text::elide(&text, 200)),
    };
    Err(BootstrapError::Peer { url: url.to_string(), status, code, message })
}

/// Counts what the restore read and remembers a transport error.
struct Counting {
    inner: Box<dyn Read + Send>,
    read: u64,
    noted: bool,
    /// The transport error the restore saw, if any.
    error: Option<String>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let r = self.inner.read(buf);
        match &r {
            Ok(n) => {
                self.read += *n as u64;
                if !self.noted && self.read >= FAILPOINT_AFTER {
                    self.noted = true;
                    tracing::info!(bytes = self.read, "bootstrap: receiving the snapshot");
                    fail::fail_point!("snapshot::bootstrap::receiving");
                }
            }
            Err(e) => self.error = Some(format!("the stream broke after {} bytes: {e}", self.read)),
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_the_peers_api_base() {
        assert_eq!(snapshot_url("http://127.0.0.1:7200").unwrap(), "http://127.0.0.1:7200/v1/snapshot");
        assert_eq!(snapshot_url("http://peer:7200/").unwrap(), "http://peer:7200/v1/snapshot");
        for bad in ["peer:7200", "ftp://peer", "http://peer/?t=1", "https://peer:7200", ""] {
            assert!(matches!(snapshot_url(bad), Err(BootstrapError::BadUrl { .. })), "{bad}");
        }
        let e = snapshot_url("http://user:hunter2@peer:7200").unwrap_err().to_string();
        assert!(!e.contains("hunter2") && e.contains("user info"), "{e}");
    }

    #[test]
    fn a_token_the_peer_refuses_is_bad_input() {
        let e = BootstrapError::Peer { url: "u".into(), status: 401, code: "bad_token".into(), message: "m".into() };
        assert_eq!(e.exit(), Exit::Invalid);
        let e = BootstrapError::Fetch { url: "u".into(), cause: "reset".into() };
        assert_eq!(e.exit(), Exit::DeployFailed);
    }
}
