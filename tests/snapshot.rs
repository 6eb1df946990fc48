//! Snapshots through the real binary (issue 17): `sysdeploy snapshot create`
//! of a stopped node and `snapshot restore` into a new state dir, with the
//! test packages of `tests/distros/node/` (kv-store service + spell).
//!
//! Refusals are checked on archives crafted to be valid in every other way
//! (their manifest lists the hostile entry with its right hash, their footer
//! matches), so each check is the only thing standing in the way.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sysdeploy");
const PATIENCE: Duration = Duration::from_secs(120);

fn distros() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distros/node")
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "command failed: {self:#?}");
        self
    }
}

/// A temp dir holding a config file and any number of state dirs.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let sb = Sandbox { dir: tempfile::tempdir().unwrap() };
        std::fs::write(sb.path("sysdeploy.toml"), "[system_services]\nenable = [\"kv-store\"]\n").unwrap();
        sb
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn cmd(&self, state: &Path, addr: SocketAddr) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--state-dir")
            .arg(state)
            .arg("--config")
            .arg(self.path("sysdeploy.toml"))
            .arg("--distros-dir")
            .arg(distros())
            .arg("--api-listen")
            .arg(addr.to_string())
            .env_remove("RUST_LOG")
            .env_remove("FAILPOINTS")
            .env_remove("NOTIFY_SOCKET");
        c
    }
    fn run_env(&self, state: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
        let o = self.cmd(state, free_addr()).args(args).envs(env.iter().copied()).stdin(Stdio::null()).output().unwrap();
        Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    fn run(&self, state: &Path, args: &[&str]) -> Out {
        self.run_env(state, args, &[])
    }
    fn json(&self, state: &Path, args: &[&str]) -> Value {
        let o = self.run(state, args).ok();
        serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("not json ({e}): {}", o.stdout))
    }
    fn peer(&self, state: &Path) -> String {
        self.json(state, &["status", "--json"])["peer_id"].as_str().unwrap().to_string()
    }
    /// A converged, stopped node in `name` (`run --once`).
    fn converged(&self, name: &str) -> PathBuf {
        let st = self.path(name);
        self.run(&st, &["run", "--once"]).ok();
        st
    }
    fn create(&self, state: &Path, file: &str, extra: &[&str]) -> (PathBuf, Out) {
        let f = self.path(file);
        let mut args = vec!["snapshot", "create", f.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = self.run(state, &args);
        (f, o)
    }
    fn restore(&self, file: &Path, into: &Path, extra: &[&str]) -> Out {
        let mut args = vec!["snapshot", "restore", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.run(into, &args)
    }
    /// Every name in the sandbox, recursively (to prove nothing was left behind).
    fn tree(&self) -> BTreeSet<String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.insert(p.strip_prefix(root).unwrap().display().to_string());
                if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out
    }
}

/// A running `sysdeploy run`; killed on drop.
struct Node {
    child: Child,
    addr: SocketAddr,
    token: String,
}

impl Node {
    fn start(sb: &Sandbox, state: &Path) -> Node {
        let addr = free_addr();
        let child = sb.cmd(state, addr).arg("run").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let mut n = Node { child, addr, token: String::new() };
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = http(addr, "GET", "/health", None, "") {
                break;
            }
            assert!(start.elapsed() < PATIENCE, "node did not become healthy");
            assert!(n.child.try_wait().unwrap().is_none(), "node exited early");
            std::thread::sleep(Duration::from_millis(50));
        }
        n.token = std::fs::read_to_string(state.join("api.token")).unwrap().trim().to_string();
        n
    }
    fn call(&self, alias: &str, function: &str, args: Value) -> Value {
        let (code, body) =
            http(self.addr, "POST", &format!("/v1/services/{alias}/call/{function}"), Some(&self.token), &args.to_string()).unwrap();
        assert_eq!(code, 200, "call {alias}.{function}: {body}");
        serde_json::from_str::<Value>(&body).unwrap()
    }
    /// SIGTERM and wait for the orderly exit.
    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().unwrap();
        assert_eq!(st.code(), Some(0), "orderly stop");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 client (Connection: close).
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(PATIENCE))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    let body = if resp.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(&body) } else { body };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// Asserts a restore was refused with exit 2 naming `needle`, and that the
/// sandbox is exactly as before (no state dir, no temp sibling).
fn assert_refused(sb: &Sandbox, file: &Path, needle: &str, what: &str) {
    let before = sb.tree();
    let into = sb.path("restored");
    let o = sb.restore(file, &into, &["--adopt"]);
    assert_eq!(o.code, Some(2), "{what}: expected exit 2: {o:#?}");
    assert!(o.stderr.contains(needle), "{what}: expected {needle:?} in: {}", o.stderr);
    assert_eq!(sb.tree(), before, "{what}: the restore left something behind");
}

#[test]
fn round_trip_with_adopt_and_with_identity() {
    let sb = Sandbox::new();
    let a = sb.path("a");
    let node = Node::start(&sb, &a);
    assert_eq!(node.call("kv-store", "put", json!(["k", "value written before the snapshot"])), Value::Null);
    // Killed, not stopped: the store's last commits are still in its WAL, and the snapshot has them.
    drop(node);
    assert!(std::fs::metadata(a.join("state.db-wal")).is_ok_and(|m| m.len() > 0), "the killed node left a WAL");
    let peer_a = sb.peer(&a);

    let (file, o) = sb.create(&a, "a.snap", &[]);
    let o = o.ok();
    assert!(o.stdout.contains("blake3:") && o.stdout.contains("entries"), "summary: {}", o.stdout);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "the archive holds service data");
    assert!(o.stderr.contains("snapshot create:") && o.stderr.contains("100%"), "progress lines on a non-tty: {}", o.stderr);
    let bytes = std::fs::read(&file).unwrap();
    assert!(o.stdout.contains(&blake3::hash(&bytes).to_hex().to_string()), "the printed blake3 is the file's (b3sum): {}", o.stdout);
    let key = std::fs::read(a.join("node.key")).unwrap();
    assert!(!contains(&bytes, &key), "node.key is archived only with --include-identity");
    assert!(sb.tree().iter().all(|p| !p.contains(".snapshot-stage-")), "staging dir removed");

    // Without identity, a new peer: refused without --adopt, nothing written.
    let b = sb.path("b");
    let before = sb.tree();
    let o = sb.restore(&file, &b, &[]);
    assert_eq!(o.code, Some(2), "{o:#?}");
    assert!(o.stderr.contains("--adopt") && o.stderr.contains(&peer_a), "names the flag and the snapshot's peer: {}", o.stderr);
    assert_eq!(sb.tree(), before, "a refused restore writes nothing");

    let o = sb.restore(&file, &b, &["--adopt"]).ok();
    assert!(o.stdout.contains("adopted:  rt_services.owner: 1 rows"), "{}", o.stdout);
    assert!(o.stderr.contains("owner rewritten"), "adoption is logged: {}", o.stderr);
    assert_eq!(std::fs::metadata(&b).unwrap().permissions().mode() & 0o777, 0o700);
    let peer_b = sb.peer(&b);
    assert_ne!(peer_b, peer_a, "a new identity");
    assert_eq!(sb.json(&b, &["plan", "--json"])["no_changes"], true, "the restored node has nothing to do");
    let o = sb.run(&b, &["run", "--once"]).ok();
    assert!(!o.stderr.contains("compiled component"), "the artifact of this engine is reused: {}", o.stderr);
    assert_eq!(sb.json(&b, &["status", "--json"])["deployment"]["no_changes"], true, "run --once changed nothing");
    let node = Node::start(&sb, &b);
    assert_eq!(node.call("kv-store", "get", json!(["k"])), json!("value written before the snapshot"));
    node.stop();

    // With identity: restored only when asked (`--include-identity` on both
    // sides; two nodes must never run as one peer). Without the flag it is a
    // refusal naming both ways; with --adopt alone a new peer; asking for the
    // identity of a snapshot that has none is refused too. Nothing written.
    let (file, o) = sb.create(&a, "a-id.snap", &["--include-identity"]);
    o.ok();
    assert!(contains(&std::fs::read(&file).unwrap(), &key));
    let c = sb.path("c");
    let o = sb.restore(&file, &c, &[]);
    assert_eq!(o.code, Some(2), "{o:#?}");
    assert!(o.stderr.contains("--include-identity") && o.stderr.contains("--adopt"), "{}", o.stderr);
    assert!(!c.exists(), "nothing written");
    let o = sb.restore(&sb.path("a.snap"), &c, &["--include-identity"]);
    assert_eq!(o.code, Some(2), "{o:#?}");
    assert!(o.stderr.contains("has no identity"), "{}", o.stderr);
    assert!(!c.exists(), "nothing written");
    let d = sb.path("d");
    sb.restore(&file, &d, &["--adopt"]).ok();
    assert_ne!(sb.peer(&d), peer_a, "the identity in the archive is not restored without --include-identity");
    assert_ne!(std::fs::read(d.join("node.key")).unwrap(), key);
    assert_eq!(sb.json(&d, &["plan", "--json"])["no_changes"], true, "adopted");
    sb.restore(&file, &c, &["--include-identity"]).ok();
    assert_eq!(sb.peer(&c), peer_a, "the same peer");
    assert_eq!(std::fs::read(c.join("node.key")).unwrap(), key);
    assert_eq!(sb.json(&c, &["plan", "--json"])["no_changes"], true);
    let node = Node::start(&sb, &c);
    assert_eq!(node.call("kv-store", "get", json!(["k"])), json!("value written before the snapshot"));
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The one service data dir of a converged state dir.
fn data_dir(state: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(state.join("services")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

#[test]
fn hostile_symlinks_and_fifos_are_never_followed_on_create() {
    let sb = Sandbox::new();
    let a = sb.converged("a");
    let secret = sb.path("host-secret.txt");
    let secret_text = "HOST SECRET 7f3a9c content that must never enter an archive";
    std::fs::write(&secret, secret_text).unwrap();
    let data = data_dir(&a);
    let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, data.join(name)).unwrap();
    link(Path::new("../../.."), "up");
    link(Path::new("../../../host-secret.txt"), "secret-relative");
    link(&secret, "secret-absolute");
    link(Path::new("/etc/passwd"), "passwd");
    link(&a.join("node.key"), "key-absolute");
    link(Path::new("../../node.key"), "key-relative");
    std::fs::create_dir(data.join("sub")).unwrap();
    link(Path::new("../greeting"), "sub/inside");
    std::fs::write(data.join("linked"), "one inode, two names").unwrap();
    std::fs::hard_link(data.join("linked"), data.join("sub/linked-too")).unwrap();
    let fifo = std::ffi::CString::new(data.join("fifo").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

    let (file, o) = sb.create(&a, "hostile.snap", &[]);
    let o = o.ok();
    let bytes = std::fs::read(&file).unwrap();
    assert!(!contains(&bytes, secret_text.as_bytes()), "a host file entered the archive");
    assert!(!contains(&bytes, &std::fs::read(a.join("node.key")).unwrap()), "node.key entered the archive through a link");
    assert!(!contains(&bytes, b"root:x:0:0"), "/etc/passwd entered the archive");
    for name in ["fifo", "up", "secret-relative", "secret-absolute", "passwd", "key-absolute"] {
        assert!(o.stderr.contains(&format!("/{name}: ")), "the warning names {name}: {}", o.stderr);
    }
    assert!(o.stdout.contains("left out: 6"), "{}", o.stdout);

    // Links inside the state dir stay links, restored as they were.
    let b = sb.path("b");
    sb.restore(&file, &b, &["--adopt"]).ok();
    let restored = data_dir(&b);
    assert_eq!(std::fs::read_link(restored.join("sub/inside")).unwrap(), Path::new("../greeting"));
    assert_eq!(std::fs::read_link(restored.join("key-relative")).unwrap(), Path::new("../../node.key"));
    // Hard links come back as copies.
    assert_eq!(std::fs::read(restored.join("sub/linked-too")).unwrap(), b"one inode, two names");
    assert_eq!(std::fs::read(restored.join("linked")).unwrap(), b"one inode, two names");
    for gone in ["fifo", "up", "passwd", "secret-absolute"] {
        assert!(std::fs::symlink_metadata(restored.join(gone)).is_err(), "{gone} was restored");
    }
}

#[test]
fn a_non_empty_state_dir_is_refused() {
    let sb = Sandbox::new();
    let a = sb.converged("a");
    std::fs::create_dir_all(a.join("kept/0123")).unwrap();
    std::fs::write(a.join("kept/0123/data.txt"), "kept data").unwrap();
    let before = sb.tree();
    let o = sb.create(&a, "no-such-dir/a.snap", &[]).1;
    assert_eq!(o.code, Some(2), "{o:#?}");
    assert!(o.stderr.contains("no-such-dir") && o.stderr.contains("does not exist"), "{}", o.stderr);
    let mut after = sb.tree();
    after.insert("a/lock".into());
    assert_eq!(after, before, "nothing staged or written");
    let (file, o) = sb.create(&a, "a.snap", &[]);
    o.ok();
    let into = sb.path("restored");
    std::fs::create_dir(&into).unwrap();
    std::fs::write(into.join("precious.txt"), "keep me").unwrap();
    let before = sb.tree();
    let o = sb.restore(&file, &into, &["--adopt"]);
    assert_eq!(o.code, Some(2), "{o:#?}");
    assert!(o.stderr.contains("not empty") && o.stderr.contains("precious.txt"), "names what is there: {}", o.stderr);
    assert_eq!(sb.tree(), before);
    // An empty dir is fine, and made private; `-` reads the archive from stdin.
    std::fs::remove_file(into.join("precious.txt")).unwrap();
    std::fs::set_permissions(&into, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = sb
        .cmd(&into, free_addr())
        .args(["snapshot", "restore", "-", "--adopt"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::metadata(&into).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::read(into.join("kept/0123/data.txt")).unwrap(), b"kept data", "kept data dirs travel too");
    assert!(into.join("state.db").is_file());
}

/// One entry of a crafted archive.
#[derive(Clone)]
struct Raw {
    path: Vec<u8>,
    kind: tar::EntryType,
    data: Vec<u8>,
    link: Vec<u8>,
}

/// The entries of a real archive (header and manifest entries dropped).
fn read_entries(file: &Path) -> Vec<Raw> {
    let bytes = std::fs::read(file).unwrap();
    let mut a = tar::Archive::new(&bytes[..bytes.len() - 40]);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path_bytes().into_owned();
        let link = e.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default();
        let kind = e.header().entry_type();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(Raw { path, kind, data, link });
    }
    out
}

/// Writes an archive of `entries` (the first is the header entry) with a
/// manifest listing every entry as the restore will see it, and a correct
/// footer. Paths and link names are written raw (no checks).
fn craft(entries: &[Raw], out: &Path) {
    let header: Value = serde_json::from_slice(&entries[0].data).unwrap();
    let mut header = header;
    let listed: Vec<&Raw> = entries[1..].iter().filter(|e| e.path != b"sysdeploy-manifest.json").collect();
    header["total_entries"] = json!(listed.len());
    let manifest_entries: Vec<Value> = listed
        .iter()
        .map(|e| {
            let path = String::from_utf8_lossy(&e.path).trim_end_matches('/').to_string();
            match e.kind {
                tar::EntryType::Directory => json!({"path": path, "kind": "dir", "mode": 0o700, "size": 0}),
                tar::EntryType::Symlink => {
                    json!({"path": path, "kind": "symlink", "mode": 0o777, "size": 0, "target": String::from_utf8_lossy(&e.link)})
                }
                _ => json!({"path": path, "kind": "file", "mode": 0o600, "size": e.data.len(), "blake3": blake3::hash(&e.data).to_hex().to_string()}),
            }
        })
        .collect();
    let manifest = json!({"header": header, "entries": manifest_entries});
    let mut all: Vec<Raw> = vec![Raw { data: serde_json::to_vec(&header).unwrap(), ..entries[0].clone() }];
    all.extend(listed.into_iter().cloned());
    all.push(Raw {
        path: b"sysdeploy-manifest.json".to_vec(),
        kind: tar::EntryType::Regular,
        data: serde_json::to_vec(&manifest).unwrap(),
        link: vec![],
    });
    let mut b = tar::Builder::new(Vec::new());
    for e in &all {
        let mode = match e.kind {
            tar::EntryType::Directory => 0o700,
            tar::EntryType::Symlink => 0o777,
            _ => 0o600,
        };
        if e.path.len() >= 100 || e.link.len() >= 100 {
            // Long (benign) names: GNU long-name entries, as sysdeploy writes them.
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(e.kind);
            h.set_mode(mode);
            h.set_size(e.data.len() as u64);
            let path = String::from_utf8(e.path.clone()).unwrap();
            match e.kind {
                tar::EntryType::Symlink => b.append_link(&mut h, &path, String::from_utf8(e.link.clone()).unwrap()).unwrap(),
                _ => b.append_data(&mut h, &path, &e.data[..]).unwrap(),
            }
            continue;
        }
        // Short names raw, so hostile ones are written exactly as given.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..e.path.len()].copy_from_slice(&e.path);
        h.as_old_mut().linkname[..e.link.len()].copy_from_slice(&e.link);
        h.set_entry_type(e.kind);
        h.set_mode(mode);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        b.append(&h, &e.data[..]).unwrap();
    }
    let mut bytes = b.into_inner().unwrap();
    let digest = blake3::hash(&bytes);
    bytes.extend_from_slice(b"SDSNAP01");
    bytes.extend_from_slice(digest.as_bytes());
    std::fs::write(out, bytes).unwrap();
}

#[test]
fn damaged_and_hostile_archives_are_refused_with_nothing_written() {
    let sb = Sandbox::new();
    let a = sb.converged("a");
    let (file, o) = sb.create(&a, "good.snap", &[]);
    o.ok();
    let good = std::fs::read(&file).unwrap();
    let entries = read_entries(&file);
    let id = data_dir(&a).file_name().unwrap().to_str().unwrap().to_string();

    // The crafting itself yields a restorable archive.
    let crafted = sb.path("crafted.snap");
    craft(&entries, &crafted);
    let probe = sb.path("probe");
    sb.restore(&crafted, &probe, &["--adopt"]).ok();
    std::fs::remove_dir_all(&probe).unwrap();

    // A flipped byte anywhere: in a file's content, a tar header, the padding
    // after an entry, the header JSON, the end blocks, the footer.
    let find = |needle: &[u8]| good.windows(needle.len()).position(|w| w == needle).unwrap();
    let store_hdr = find(b"state.db\0");
    let positions = [
        ("the store's content", store_hdr + 512 + 4096),
        ("a tar header", store_hdr + 3),
        ("the header entry", find(b"host_peer_id") + 2),
        ("tar padding", find(b"sysdeploy-manifest.json\0") - 1),
        ("the end blocks", good.len() - 40 - 10),
        ("the footer", good.len() - 5),
    ];
    let bad_file = sb.path("bad.snap");
    for (what, at) in positions {
        let mut b = good.clone();
        b[at] ^= 0x20;
        std::fs::write(&bad_file, &b).unwrap();
        assert_refused(&sb, &bad_file, "nothing was restored", &format!("a flipped byte in {what}"));
    }
    // Truncated at several lengths.
    for len in [0, 100, 512, good.len() / 2, good.len() - 41, good.len() - 1] {
        std::fs::write(&bad_file, &good[..len]).unwrap();
        assert_refused(&sb, &bad_file, "nothing was restored", &format!("truncated to {len} bytes"));
    }
    // An extra entry the manifest does not list (footer recomputed).
    {
        let mut b = tar::Builder::new(Vec::new());
        let raw = &good[..good.len() - 40];
        let mut ar = tar::Archive::new(raw);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if e.path_bytes().as_ref() == b"sysdeploy-manifest.json" {
                let mut x = tar::Header::new_gnu();
                x.set_entry_type(tar::EntryType::Regular);
                x.set_mode(0o600);
                x.set_size(5);
                b.append_data(&mut x, format!("services/{id}/extra"), &b"extra"[..]).unwrap();
            }
            b.append(&h, &data[..]).unwrap();
        }
        let mut bytes = b.into_inner().unwrap();
        let d = blake3::hash(&bytes);
        bytes.extend_from_slice(b"SDSNAP01");
        bytes.extend_from_slice(d.as_bytes());
        std::fs::write(&bad_file, bytes).unwrap();
        assert_refused(&sb, &bad_file, "is in the archive but not in its manifest", "an extra entry");
    }
    // Hostile entries, listed in the manifest with their right hashes.
    let with = |extra: Raw| {
        let mut e = entries.clone();
        let at = e.len() - 1; // before the old manifest (dropped by `craft`)
        e.insert(at, extra);
        e
    };
    let file_entry =
        |path: &str| Raw { path: path.as_bytes().to_vec(), kind: tar::EntryType::Regular, data: b"owned".to_vec(), link: vec![] };
    let link_entry = |path: &str, to: &str| Raw {
        path: path.as_bytes().to_vec(),
        kind: tar::EntryType::Symlink,
        data: vec![],
        link: to.as_bytes().to_vec(),
    };
    let cases: Vec<(&str, Raw, &str)> = vec![
        ("a path with ..", file_entry(&format!("services/{id}/../../../escaped")), "a path with `..`"),
        ("an absolute path", file_entry("/tmp/sysdeploy-snapshot-escaped"), "an absolute"),
        ("a path outside the parts", file_entry("api.addr"), "outside the parts"),
        ("a symlink escaping the state dir", link_entry(&format!("services/{id}/out"), "../../../x"), "outside the state directory"),
        ("an absolute symlink", link_entry(&format!("services/{id}/abs"), "/etc"), "outside the state directory"),
        ("a symlink in the host's parts", link_entry("components/evil.wasm", "../state.db"), "symlink outside a service's data directory"),
        ("a device", Raw { kind: tar::EntryType::Char, ..file_entry(&format!("services/{id}/dev")) }, "character device"),
        (
            "a hard link",
            Raw { kind: tar::EntryType::Link, link: b"state.db".to_vec(), ..file_entry(&format!("services/{id}/hl")) },
            "hard link",
        ),
    ];
    for (what, extra, needle) in cases {
        craft(&with(extra), &bad_file);
        assert_refused(&sb, &bad_file, needle, what);
    }
    // A write through a symlink planted earlier in the same archive.
    let mut e = with(link_entry(&format!("services/{id}/dir"), "."));
    let at = e.len() - 1;
    e.insert(at, file_entry(&format!("services/{id}/dir/through")));
    craft(&e, &bad_file);
    assert_refused(&sb, &bad_file, "not an earlier directory entry", "a file below a symlink");
    assert!(!Path::new("/tmp/sysdeploy-snapshot-escaped").exists());
    // A store that is not a database, with its right hash.
    let mut e = entries.clone();
    e.iter_mut().filter(|x| x.path == b"state.db").for_each(|x| x.data = b"not a database at all ".repeat(200));
    craft(&e, &bad_file);
    assert_refused(&sb, &bad_file, "state.db cannot be used", "a store that is not a database");
}

/// SIGKILL at `snapshot::restore::extracted` (verified, synced, not yet
/// renamed): no state dir that boots; the next restore removes the leftover.
/// SIGKILL at `snapshot::create::staged`: the next create removes the staging dir.
#[cfg(feature = "failpoints")]
#[test]
fn a_killed_restore_or_create_leaves_nothing_that_boots_and_the_next_attempt_succeeds() {
    use std::os::unix::process::ExitStatusExt;
    let sb = Sandbox::new();
    let a = sb.converged("a");
    let (file, o) = sb.create(&a, "a.snap", &[]);
    o.ok();
    let into = sb.path("restored");
    let mut args = vec!["snapshot", "restore", file.to_str().unwrap(), "--adopt"];
    let o = sb.cmd(&into, free_addr()).args(&args).env("FAILPOINTS", "snapshot::restore::extracted=return").output().unwrap();
    assert_eq!(o.status.signal(), Some(libc::SIGKILL), "killed at the crash point: {}", String::from_utf8_lossy(&o.stderr));
    assert!(!into.exists(), "no state dir before the rename");
    let leftovers: Vec<String> = sb.tree().into_iter().filter(|p| p.starts_with("restored.restore-") && !p.contains('/')).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    // A foreign look-alike without the marker is left alone.
    std::fs::create_dir(sb.path("restored.restore-notours")).unwrap();
    args.truncate(4);
    sb.restore(&file, &into, &["--adopt"]).ok();
    assert!(!sb.path(&leftovers[0]).exists(), "the leftover was removed");
    assert!(sb.path("restored.restore-notours").exists(), "only what the restore can prove it made is removed");
    assert_eq!(sb.json(&into, &["plan", "--json"])["no_changes"], true);

    let o =
        sb.run_env(&a, &["snapshot", "create", sb.path("b.snap").to_str().unwrap()], &[("FAILPOINTS", "snapshot::create::staged=return")]);
    assert_eq!(o.code, None, "killed: {o:#?}");
    assert!(std::fs::read_dir(&a).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".snapshot-stage-")));
    assert!(!sb.path("b.snap").exists());
    assert_eq!(sb.json(&a, &["plan", "--json"])["no_changes"], true, "the node is unaffected");
    sb.create(&a, "b.snap", &[]).1.ok();
    assert!(
        !std::fs::read_dir(&a).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".snapshot-stage-")),
        "leftover removed"
    );
}

#[test]
fn offline_create_refuses_a_running_node_and_a_missing_store() {
    let sb = Sandbox::new();
    let o = sb.create(&sb.path("none"), "x.snap", &[]).1;
    assert_eq!(o.code, Some(3), "{o:#?}");
    assert!(!sb.path("none").exists() && !sb.path("x.snap").exists());
    let a = sb.path("a");
    let node = Node::start(&sb, &a);
    // Without --include-identity a running node is snapshotted through its
    // api instead (tests/bootstrap.rs); the identity needs it stopped.
    let o = sb.create(&a, "x.snap", &["--include-identity"]).1;
    assert_eq!(o.code, Some(2), "{o:#?}");
    assert!(o.stderr.contains("is running") && o.stderr.contains("stop it"), "{}", o.stderr);
    assert!(!sb.path("x.snap").exists());
    drop(node);
}

/// Artifacts compiled by another engine (another wasmtime, CPU or setting)
/// are not restored: their records go, the next run recompiles, and the
/// restored node converges as usual.
#[test]
fn artifacts_of_another_engine_are_dropped_and_recompiled() {
    let sb = Sandbox::new();
    let a = sb.converged("a");
    let (file, o) = sb.create(&a, "a.snap", &[]);
    o.ok();
    let mut entries = read_entries(&file);
    let mut header: Value = serde_json::from_slice(&entries[0].data).unwrap();
    let real = header["engine_key"].as_str().unwrap().to_string();
    let fake = "0123456789abcdef0123456789abcdef";
    header["engine_key"] = json!(fake);
    entries[0].data = serde_json::to_vec(&header).unwrap();
    let db = sb.path("state.db.copy");
    for e in entries.iter_mut() {
        let p = String::from_utf8(e.path.clone()).unwrap();
        if p.starts_with(&format!("cache/{real}")) {
            e.path = p.replacen(&real, fake, 1).into_bytes();
        }
        if p == "state.db" {
            std::fs::write(&db, &e.data).unwrap();
            let n = rusqlite::Connection::open(&db).unwrap().execute("UPDATE rt_artifacts SET engine_key = ?1", [fake]).unwrap();
            assert_eq!(n, 1, "the kv-store artifact is recorded");
            e.data = std::fs::read(&db).unwrap();
        }
    }
    let crafted = sb.path("other-engine.snap");
    craft(&entries, &crafted);
    let b = sb.path("b");
    let o = sb.restore(&crafted, &b, &["--adopt"]).ok();
    assert!(o.stdout.contains("artifacts: 1 compiled by another engine"), "{}", o.stdout);
    assert!(!b.join("cache").join(fake).exists(), "foreign artifacts are not written");
    let rows: i64 =
        rusqlite::Connection::open(b.join("state.db")).unwrap().query_row("SELECT COUNT(*) FROM rt_artifacts", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0, "no record of an artifact that is not there");
    let o = sb.run(&b, &["run", "--once"]).ok();
    assert!(o.stderr.contains("compiled component"), "recompiled for this engine: {}", o.stderr);
    assert_eq!(sb.json(&b, &["plan", "--json"])["no_changes"], true);
}

/// SIGINT (Ctrl-C) or SIGTERM during a create or a restore ends it through
/// its cleanup: no staging dir, no temp file, no archive, no state dir.
#[cfg(feature = "failpoints")]
#[test]
fn a_stop_signal_ends_create_and_restore_with_nothing_left_behind() {
    let sb = Sandbox::new();
    let a = sb.converged("a");
    let (file, o) = sb.create(&a, "a.snap", &[]);
    o.ok();
    let before = sb.tree();
    let stopped = |args: &[&str], state: &Path, point: &str, started: &dyn Fn() -> bool, sig: i32| {
        let mut child = sb
            .cmd(state, free_addr())
            .args(args)
            .env("FAILPOINTS", format!("{point}=sleep(10000)"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !started() {
            assert!(t.elapsed() < PATIENCE && child.try_wait().unwrap().is_none(), "{args:?} did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("interrupted by a signal"), "{stderr}");
    };
    let staging = || std::fs::read_dir(&a).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".snapshot-stage-"));
    let out = sb.path("b.snap");
    stopped(&["snapshot", "create", out.to_str().unwrap()], &a, "snapshot::create::staged", &staging, libc::SIGINT);
    let mut after = sb.tree();
    after.insert("a/lock".into());
    assert_eq!(after, before, "a stopped create leaves nothing (the lock file's pid aside)");

    let into = sb.path("restored");
    let temp = || sb.tree().iter().any(|p| p.starts_with("restored.restore-"));
    stopped(&["snapshot", "restore", file.to_str().unwrap(), "--adopt"], &into, "snapshot::restore::extracted", &temp, libc::SIGTERM);
    let mut after = sb.tree();
    after.insert("a/lock".into());
    assert_eq!(after, before, "a stopped restore leaves nothing");
}

/// A state dir that is a mount point (a container volume) cannot be renamed
/// over: the restore extracts inside it and moves the parts in, `state.db`
/// first and `node.key` last. A kill in between leaves a store without its
/// key, which no node boots (exit 3); the next restore removes exactly what
/// was moved and succeeds.
#[test]
fn a_state_dir_that_is_a_mount_point_is_restored_in_place() {
    let sb = Sandbox::new();
    let a = sb.converged("a");
    let (file, o) = sb.create(&a, "a.snap", &[]);
    o.ok();
    let into = sb.path("volume");
    std::fs::create_dir(&into).unwrap();
    let mounted = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs"]).arg(&into).output();
    let root = unsafe { libc::geteuid() } == 0;
    match mounted {
        Ok(o) if o.status.success() => {}
        other => {
            let opted_out = std::env::var_os("SYSDEPLOY_TEST_NO_TMPFS").is_some_and(|v| !v.is_empty());
            assert!(!root || opted_out, "mount -t tmpfs failed as root ({other:?}); set SYSDEPLOY_TEST_NO_TMPFS=1 to skip on purpose");
            println!("snapshot: restore into a mount point SKIPPED: cannot mount a tmpfs (root: {root})");
            return;
        }
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(into.clone());
    let before = sb.tree();

    #[cfg(feature = "failpoints")]
    {
        let o = sb.run_env(
            &into,
            &["snapshot", "restore", file.to_str().unwrap(), "--adopt"],
            &[("FAILPOINTS", "snapshot::restore::moving=return")],
        );
        assert_eq!(o.code, None, "killed at the crash point: {o:#?}");
        assert!(into.join("state.db").exists() && !into.join("node.key").exists(), "killed between the store and the key");
        let o = sb.run(&into, &["run", "--once"]);
        assert_eq!(o.code, Some(3), "a half-moved state dir does not boot: {o:#?}");
        assert!(!into.join("node.key").exists(), "and is not re-keyed");
    }
    sb.restore(&file, &into, &["--adopt"]).ok();
    let names: BTreeSet<String> =
        std::fs::read_dir(&into).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with(".sysdeploy-restore")), "no temp dir left inside: {names:?}");
    assert_eq!(sb.json(&into, &["plan", "--json"])["no_changes"], true);
    sb.run(&into, &["run", "--once"]).ok();
    drop(before);
}
