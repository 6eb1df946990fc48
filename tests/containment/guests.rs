//! The hostile guest (`tests/distros/hostile-tree`) against the real runtime: it
//! builds its attacks through its own WASI layer, the host copies its data
//! (blue-green replace with `keep_data`), removes it and collects it, and a
//! neighbour service answers throughout.

use super::walker::{depth, secrets_in, DEEP};
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use sysdeploy::ids::{BlueprintId, PeerId, ServiceId};
use sysdeploy::runtime::{Blueprint, BlueprintComponent, Runtime, RuntimeConfig, RuntimeOptions, ServiceLimits};
use sysdeploy::store::Store;

/// The committed artifact of the hostile guest.
pub fn hostile_wasm() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distros/containment/hostile/hostile.wasm");
    fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn host() -> PeerId {
    PeerId::from_ed25519_public(&[1u8; 32])
}

/// A runtime over a temp state dir holding stand-ins for the node's secrets.
struct Node {
    dir: tempfile::TempDir,
    rt: Runtime,
    bp: BlueprintId,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("api.token"), "TOP SECRET api token").unwrap();
        fs::write(dir.path().join("node.key"), "TOP SECRET node key").unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let cfg = RuntimeConfig { state_dir: dir.path().into(), call_ttl: Duration::from_secs(300), epoch_tick: Duration::from_millis(10) };
        let rt = Runtime::open_with(store, cfg, RuntimeOptions { host_peer: Some(host()), ..RuntimeOptions::default() }).unwrap();
        let hash = rt.add_component(&hostile_wasm(), None).unwrap();
        // The attacks here are about the walker, not the data quota (tests/limits.rs):
        // a quota large enough for the 1 GiB sparse file, whose logical length it counts.
        let limits = ServiceLimits { data_quota_mb: Some(4096), ..ServiceLimits::default() };
        let components = vec![BlueprintComponent { name: "hostile".into(), hash, memory_limit_mb: None }];
        let bp = rt.put_blueprint(&Blueprint { components, limits }).unwrap();
        Node { dir, rt, bp }
    }

    async fn service(&self) -> ServiceId {
        self.rt.create_service(&self.bp, &host()).await.unwrap()
    }

    /// Calls `f` and unwraps both the call and the guest's `result`.
    async fn ok(&self, s: &ServiceId, f: &str, args: Value) -> Value {
        match self.rt.call(s.as_str(), f, args.clone()).await {
            Ok(v) => match v.get("err") {
                Some(e) => panic!("{f}{args}: the guest failed: {e}"),
                None => v.get("ok").cloned().unwrap_or(v),
            },
            Err(e) => panic!("{f}{args}: {e}"),
        }
    }

    fn data(&self, s: &ServiceId) -> PathBuf {
        self.rt.data_dir(s)
    }

    /// The neighbour still answers with its own data.
    async fn neighbour_answers(&self, n: &ServiceId) {
        assert_eq!(self.ok(n, "get-file", json!(["data"])).await, json!("TOP SECRET neighbour data"));
    }
}

/// Attack 1: during a `keep_data` copy the old instance swaps its files and
/// directories for symlinks to the node's secrets and a neighbour's data
/// dir, between the host's listing and its open (driven from the
/// `tree::walk::listed` failpoint, so the guest always wins the timing). The
/// new service's data holds the symlinks, never the secrets, and following
/// them from inside the guest is refused.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_swapping_entries_for_symlinks_during_a_copy_gets_no_secret() {
    let _serial = super::serial();
    let node = Node::new();
    let neighbour = node.service().await;
    node.ok(&neighbour, "put-file", json!(["data", "TOP SECRET neighbour data"])).await;
    let old = node.service().await;
    // What the copy will list...
    for f in ["f0", "f1", "f2", "dir/inner/file"] {
        node.ok(&old, "put-file", json!([f, "mine"])).await;
    }
    // ...and what the guest swaps in (planted beforehand through its own WASI
    // layer: creating an escaping symlink is allowed, following it is not).
    let swaps = [
        ("f0", "../../api.token".to_string()),
        ("f1", "../../node.key".to_string()),
        ("f2", "../../../../../../../../etc/passwd".to_string()),
        ("dir", format!("../{neighbour}")),
    ];
    for (i, (_, target)) in swaps.iter().enumerate() {
        node.ok(&old, "make-symlink", json!([target, format!("stage{i}")])).await;
    }
    let new = node.service().await;

    // The guest's renames, performed at the failpoint (a rename is what the
    // guest's `move-entry` does; doing it here does not depend on whether
    // calls to the old instance are held during the copy).
    let src = node.data(&old);
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let names: Vec<&'static str> = swaps.iter().map(|(n, _)| *n).collect();
    fail::cfg_callback("tree::walk::listed", move || {
        if h.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
            return;
        }
        for (i, name) in names.iter().enumerate() {
            let at = src.join(name);
            if fs::symlink_metadata(&at).unwrap().is_dir() {
                fs::rename(&at, src.join("moved-away")).unwrap();
            }
            fs::rename(src.join(format!("stage{i}")), &at).unwrap();
        }
    })
    .unwrap();
    let copied = node.rt.copy_data(&old, &new).await;
    fail::remove("tree::walk::listed");
    copied.unwrap();
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) > 0, "the failpoint was not reached: the race was not exercised");

    let dst = node.data(&new);
    assert_eq!(secrets_in(&dst, "TOP SECRET"), Vec::<String>::new(), "a secret reached the new service's data");
    assert_eq!(secrets_in(&dst, "root:"), Vec::<String>::new(), "/etc/passwd reached the new service's data");
    for (name, target) in &swaps {
        let p = dst.join(name);
        assert!(fs::symlink_metadata(&p).unwrap().file_type().is_symlink(), "{name} must be copied as the symlink it was");
        assert_eq!(fs::read_link(&p).unwrap(), PathBuf::from(target));
    }
    // From inside, the new instance cannot follow them either.
    for (name, _) in &swaps[..3] {
        let r = node.rt.call(new.as_str(), "get-file", json!([name])).await.unwrap();
        assert!(r.get("err").is_some() && !r.to_string().contains("TOP SECRET"), "{name}: {r}");
    }
    node.neighbour_answers(&neighbour).await;
    assert_eq!(fs::read_to_string(node.dir.path().join("api.token")).unwrap(), "TOP SECRET api token");
}

/// Attacks 2 and 3: a guest-built 15,000-level tree is carried over by a
/// `keep_data` copy (no `File name too long`), and removed by
/// `remove_service` and by GC (no stack overflow: the test process would
/// abort); the neighbour answers after each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_built_15000_level_tree_is_copied_removed_and_collected() {
    let _serial = super::serial();
    let node = Node::new();
    let neighbour = node.service().await;
    node.ok(&neighbour, "put-file", json!(["data", "TOP SECRET neighbour data"])).await;
    let old = node.service().await;
    assert_eq!(node.ok(&old, "deep", json!(["deep", DEEP])).await, json!(DEEP));
    node.ok(&old, "put-file", json!(["top", "still here"])).await;

    let new = node.service().await;
    node.rt.copy_data(&old, &new).await.unwrap();
    assert_eq!(node.ok(&new, "depth", json!(["deep"])).await, json!(DEEP), "the new instance sees every level");
    assert_eq!(node.ok(&new, "get-file", json!(["top"])).await, json!("still here"));
    node.neighbour_answers(&neighbour).await;

    // Removed with its data (the reload/remove path).
    let old_dir = node.data(&old);
    node.rt.remove_service(&old, false).await.unwrap();
    assert!(!old_dir.exists(), "{} was not removed", old_dir.display());
    node.neighbour_answers(&neighbour).await;

    // Removed keeping its data, then the orphaned data dir collected by GC.
    let new_dir = node.data(&new);
    assert_eq!(depth(&new_dir.join("deep")), DEEP);
    node.rt.remove_service(&new, true).await.unwrap();
    assert!(new_dir.exists());
    let removed = node.rt.gc().unwrap();
    assert!(removed.iter().any(|r| r.contains(new.as_str())), "gc: {removed:?}");
    assert!(!new_dir.exists(), "gc left {}", new_dir.display());
    node.neighbour_answers(&neighbour).await;
}

/// Attack 5 (amplification): a 1 GiB sparse file stays sparse and a file
/// with 11 hard links stays one inode through a `keep_data` copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_files_and_hard_links_are_not_amplified_by_a_copy() {
    let _serial = super::serial();
    let node = Node::new();
    let old = node.service().await;
    node.ok(&old, "sparse", json!(["big", 1u64 << 30, "head", "tail"])).await;
    node.ok(&old, "put-file", json!(["shared", "one inode"])).await;
    for i in 0..10 {
        node.ok(&old, "hard-link", json!(["shared", format!("l{i}")])).await;
    }
    node.ok(&old, "put-file", json!(["sub/other", "x"])).await;
    node.ok(&old, "hard-link", json!(["shared", "sub/l10"])).await;
    let src_big = fs::metadata(node.data(&old).join("big")).unwrap();
    assert!(
        src_big.blocks() * 512 < 1 << 20,
        "this filesystem keeps no sparse files ({} blocks); the test needs one that does",
        src_big.blocks()
    );

    let new = node.service().await;
    node.rt.copy_data(&old, &new).await.unwrap();
    let dst = node.data(&new);
    let big = fs::metadata(dst.join("big")).unwrap();
    assert_eq!(big.len(), 1 << 30);
    assert!(big.blocks() <= src_big.blocks() + 16, "copy holds {} blocks, the original {}", big.blocks(), src_big.blocks());
    let shared = fs::metadata(dst.join("shared")).unwrap();
    assert_eq!(shared.nlink(), 12, "one inode with its 12 names");
    for i in 0..10 {
        assert_eq!(fs::metadata(dst.join(format!("l{i}"))).unwrap().ino(), shared.ino());
    }
    assert_eq!(fs::metadata(dst.join("sub/l10")).unwrap().ino(), shared.ino());
    assert_eq!(node.ok(&new, "get-file", json!(["l3"])).await, json!("one inode"));
}
