//! Operator CLI (issue 15): the running node records its bound API address
//! and pid in `<state_dir>/api.addr`, and `call`, `reload`, `health` and
//! `status` find it there (a killed node's stale file is not trusted);
//! permission errors name path, owner, mode and uid; broken pipes exit
//! quietly; the API closes connections that send half a request head or sit
//! idle.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod harness;
use harness::{free_addr, Node, BIN, PATIENCE};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// A temp dir with the `kv-store` test package, a config and a state dir.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let sb = Sandbox { dir: tempfile::tempdir().unwrap() };
        let to = sb.dir.path().join("distros/kv-store");
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(repo("tests/distros/node/kv-store")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        std::fs::write(
            sb.dir.path().join("sysdeploy.toml"),
            "[system_services]\nenable = [\"kv-store\"]\n\n[system_services.kv_store]\ngreeting = \"hello\"\n",
        )
        .unwrap();
        sb
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    /// The binary with this sandbox's config, packages and state dir, and
    /// `--api-listen addr` as the configured address.
    fn cmd(&self, addr: SocketAddr) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--state-dir")
            .arg(self.state())
            .arg("--config")
            .arg(self.dir.path().join("sysdeploy.toml"))
            .arg("--distros-dir")
            .arg(self.dir.path().join("distros"))
            .arg("--api-listen")
            .arg(addr.to_string())
            .stdin(Stdio::null());
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("SYSDEPLOY_") || ["RUST_LOG", "FAILPOINTS", "NOTIFY_SOCKET"].contains(&k.as_str()) {
                c.env_remove(k);
            }
        }
        c
    }
    /// Runs a short command with `addr` configured: (exit code, stdout, stderr).
    fn run(&self, addr: SocketAddr, args: &[&str]) -> (Option<i32>, String, String) {
        let o = self.cmd(addr).args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    }
    fn status(&self, addr: SocketAddr) -> Value {
        let (code, out, err) = self.run(addr, &["status", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
    }
}

impl Node {
    fn start(sb: &Sandbox) -> Node {
        let addr = free_addr();
        let mut node = Node::spawn(sb.cmd(addr).arg("run"), addr);
        node.wait_ready();
        node
    }
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).proxy(None).timeout_global(Some(PATIENCE)).build().into();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("node exited ({st}) before it was ready; log:\n{}", self.log());
            }
            if agent.get(&format!("http://{}/readyz", self.addr)).call().is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "node never became ready; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The node records its bound address and pid (0600) in `api.addr`;
/// `health`, `call`, `reload` and `status` find it there although the
/// configured address is a different one where nothing listens; the file is
/// removed on an orderly stop. After a SIGKILL the stale file is ignored:
/// `status` says no node runs, `health` tries the configured address.
#[test]
fn commands_find_the_node_through_its_recorded_address() {
    let sb = Sandbox::new();
    let mut node = Node::start(&sb);
    let file = sb.state().join("api.addr");
    let meta = std::fs::metadata(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let elsewhere = free_addr(); // configured, but nothing listens there

    let (code, out, err) = sb.run(elsewhere, &["health"]);
    assert_eq!(code, Some(0), "health did not find the node: {out}{err}");
    let (code, out, err) = sb.run(elsewhere, &["call", "kv-store", "put", r#"["a","1"]"#]);
    assert_eq!(code, Some(0), "call did not find the node: {out}{err}");
    let (code, out, err) = sb.run(elsewhere, &["reload"]);
    assert_eq!(code, Some(0), "reload did not find the node: {out}{err}");

    let st = sb.status(elsewhere);
    assert_eq!(st["node"]["running"], true, "{st}");
    assert_eq!(st["node"]["pid"], node.child.id(), "{st}");
    assert_eq!(st["node"]["api"], node.addr.to_string(), "{st}");
    let (_, text, _) = sb.run(elsewhere, &["status"]);
    assert!(text.contains(&format!("running (pid {}, api on {})", node.child.id(), node.addr)), "{text}");

    node.signal(libc::SIGTERM);
    assert!(node.wait_exit().success(), "{}", node.log());
    assert!(!file.exists(), "api.addr left behind by an orderly stop");
    assert_eq!(sb.status(elsewhere)["node"]["running"], false);

    // A killed node leaves its file behind; nothing may trust it.
    let mut node = Node::start(&sb);
    node.signal(libc::SIGKILL);
    node.wait_exit();
    assert!(file.exists(), "the SIGKILLed node's api.addr should still be there for this test");
    let st = sb.status(elsewhere);
    assert_eq!(st["node"], serde_json::json!({ "running": false, "pid": null, "api": null }), "{st}");
    let (_, text, _) = sb.run(elsewhere, &["status"]);
    assert!(text.contains("node:            not running"), "{text}");
    let (code, out, err) = sb.run(elsewhere, &["health"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains(&elsewhere.to_string()), "health should try the configured address: {err}");
}

/// A state directory the node's user cannot write is reported as a
/// permission problem naming the path, its owner and mode and the
/// effective uid, not as a file system without flock. Needs root (to run
/// the binary as uid 65534 on a root-owned dir).
#[test]
fn an_unwritable_state_dir_names_path_owner_mode_and_uid() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("\n!!!!! SKIPPED: not root; this test runs the binary as uid 65534 on a root-owned state dir !!!!!\n");
        return;
    }
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    for p in [sb.dir.path().to_path_buf(), sb.dir.path().join("distros"), sb.dir.path().join("distros/kv-store")] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for e in std::fs::read_dir(sb.dir.path().join("distros/kv-store")).unwrap() {
        std::fs::set_permissions(e.unwrap().path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(sb.dir.path().join("sysdeploy.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(sb.state()).unwrap();
    std::fs::set_permissions(sb.state(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let o = sb.cmd(free_addr()).args(["run", "--once"]).uid(65534).gid(65534).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    let lock = sb.state().join("lock");
    for needle in ["permission denied", &lock.display().to_string(), "uid 0", "mode 700", "runs as uid 65534"] {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
    assert!(!err.contains("flock"), "{err}");
    assert_eq!(std::fs::read_dir(sb.state()).unwrap().count(), 0, "nothing created");
}

/// Output into a pipe whose reader is gone (`status --json | head -c1`)
/// ends the command quietly: no panic, nothing on stderr, killed by SIGPIPE
/// as Unix tools are (or exit 0).
#[test]
fn a_closed_stdout_pipe_exits_quietly() {
    let sb = Sandbox::new();
    for args in [&["status", "--json"][..], &["config"][..], &["plan"][..]] {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two fds we then own.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fds[0] is ours; closing the read end makes every write EPIPE.
        unsafe { libc::close(fds[0]) };
        // SAFETY: fds[1] is an open fd we own; Stdio takes it over.
        let stdout = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
        let o = sb.cmd(free_addr()).args(args).stdout(Stdio::from(stdout)).stderr(Stdio::piped()).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.trim().is_empty(), "{args:?} printed on stderr: {err}");
        assert!(o.status.code() == Some(0) || o.status.signal() == Some(libc::SIGPIPE), "{args:?}: {:?}", o.status);
    }
}

/// Reads from `s` until the server closes the connection; how long it took.
fn wait_closed(s: &mut TcpStream) -> Duration {
    let t = Instant::now();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return t.elapsed(),
            Err(e) => panic!("the server kept the connection open ({e}) after {:?}", t.elapsed()),
        }
    }
}

/// A client that sends half a request line is disconnected after the
/// header-read timeout; so is a kept-alive connection that stays idle; and
/// neither holds shutdown for long.
#[test]
fn half_sent_requests_and_idle_connections_are_closed() {
    let sb = Sandbox::new();
    let mut node = Node::start(&sb);
    let mut half = TcpStream::connect(node.addr).unwrap();
    half.write_all(b"GET /hea").unwrap();
    let mut idle = TcpStream::connect(node.addr).unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let took = wait_closed(&mut half);
    assert!(took < Duration::from_secs(30), "half a request line held a connection for {took:?}");
    let took = wait_closed(&mut idle);
    assert!(took < Duration::from_secs(30), "an idle connection was held for {took:?}");

    // A half-sent request at shutdown is bounded by the same timeout.
    let mut half = TcpStream::connect(node.addr).unwrap();
    half.write_all(b"GET /hea").unwrap();
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit().success(), "{}", node.log());
    wait_closed(&mut half);
    assert!(!node.log().contains("did not finish"), "{}", node.log());
}
