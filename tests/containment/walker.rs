//! The safe walker (`sysdeploy::tree`) on real directories: symlinks copied
//! as symlinks, a 15,000-level tree copied, measured and removed on a
//! 256 KiB stack, sparse files kept sparse, hard links kept as links, and the
//! listing-to-open race driven from a failpoint.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use sysdeploy::tree::{copy_tree, remove_tree, sync_tree, usage};

/// Levels of the deep-tree attack in issue 20 (past PATH_MAX by far, and
/// deep enough to overflow a 2 MiB stack with a recursive walk).
pub const DEEP: u32 = 15_000;

/// Builds `top/d/d/…/d` (`levels` deep) the way the attacker did: `mkdir n;
/// rename top n/d; rename n top`, so no call resolves a long path.
pub fn build_deep(top: &Path, levels: u32) {
    fs::create_dir_all(top).unwrap();
    let tmp = top.with_extension("n");
    for _ in 0..levels {
        fs::create_dir(&tmp).unwrap();
        fs::rename(top, tmp.join("d")).unwrap();
        fs::rename(&tmp, top).unwrap();
    }
}

/// Depth of the `d` chain under `top`, one fd-relative open per level (0
/// when `top` is not there).
pub fn depth(top: &Path) -> u32 {
    use rustix::fs::{openat, Mode, OFlags, CWD};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(mut fd) = openat(CWD, top, flags, Mode::empty()) else { return 0 };
    let mut n = 0;
    while let Ok(child) = openat(&fd, c"d", flags, Mode::empty()) {
        fd = child;
        n += 1;
    }
    n
}

/// Runs `f` on a thread with a small stack: a walk that recursed per level
/// would overflow it long before 15,000 levels (and abort the test binary).
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(256 << 10).spawn(f).unwrap().join().unwrap()
}

#[test]
fn symlinks_are_copied_as_symlinks_and_never_followed() {
    let _serial = super::serial();
    let t = tempfile::tempdir().unwrap();
    let secret = t.path().join("secret.txt");
    fs::write(&secret, "TOP SECRET").unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("sub/inner")).unwrap();
    fs::write(src.join("a.txt"), "alpha").unwrap();
    fs::write(src.join("sub/inner/b.txt"), "beta").unwrap();
    fs::set_permissions(src.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("../secret.txt", src.join("escape")).unwrap();
    std::os::unix::fs::symlink("..", src.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("/etc", src.join("abs")).unwrap();
    let dst = t.path().join("dst");
    copy_tree(&src, &dst).unwrap();
    assert_eq!(fs::read_to_string(dst.join("a.txt")).unwrap(), "alpha");
    assert_eq!(fs::metadata(dst.join("a.txt")).unwrap().mode() & 0o777, 0o640);
    assert_eq!(fs::read_to_string(dst.join("sub/inner/b.txt")).unwrap(), "beta");
    for (link, target) in [("escape", "../secret.txt"), ("sub/up", ".."), ("abs", "/etc")] {
        assert!(fs::symlink_metadata(dst.join(link)).unwrap().file_type().is_symlink(), "{link} must stay a symlink");
        assert_eq!(fs::read_link(dst.join(link)).unwrap(), Path::new(target));
    }
    assert_eq!(secrets_in(&dst, "TOP SECRET"), Vec::<String>::new());

    // Usage counts what is there: the root, 2 dirs, 2 files, 3 symlinks.
    assert_eq!(usage(&src).unwrap().inodes, 8);
    sync_tree(&dst).unwrap();

    // Removing never follows a symlink: the secret and /etc survive.
    assert!(remove_tree(&dst).unwrap());
    assert!(!dst.exists());
    assert_eq!(fs::read_to_string(&secret).unwrap(), "TOP SECRET");
    assert!(!remove_tree(&dst).unwrap(), "removing what is gone is fine");
    assert!(!remove_tree(&dst.join("a/b")).unwrap(), "so is removing below what is gone");
    let file = t.path().join("file");
    fs::write(&file, "x").unwrap();
    assert!(remove_tree(&file).unwrap(), "a plain file is unlinked");
    assert!(!file.exists());
}

#[test]
fn a_15000_level_tree_is_copied_measured_and_removed_without_recursion() {
    let _serial = super::serial();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_deep(&src.join("deep"), DEEP);
    let dst = t.path().join("dst");
    let (s, d) = (src.clone(), dst.clone());
    // (`sync_tree` takes the same walk; it is not run here because 15,000
    // directory fsyncs take ~40 s on a busy disk.)
    let used = on_small_stack(move || {
        copy_tree(&s, &d).unwrap();
        usage(&d).unwrap()
    });
    assert_eq!(depth(&dst.join("deep")), DEEP, "the copy has every level");
    assert_eq!(used.inodes, DEEP as u64 + 2, "every level plus deep/ and the root");
    let (s, d) = (src.clone(), dst.clone());
    on_small_stack(move || {
        assert!(remove_tree(&d).unwrap());
        assert!(remove_tree(&s).unwrap());
    });
    assert!(!src.exists() && !dst.exists());
}

#[test]
fn sparse_files_stay_sparse_and_hard_links_stay_links() {
    let _serial = super::serial();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("x/y")).unwrap();
    let big = src.join("big");
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(&big).unwrap();
        f.set_len(1 << 30).unwrap();
        f.write_at(b"head", 0).unwrap();
        f.write_at(b"middle", 1 << 29).unwrap();
        f.write_at(b"tail", (1 << 30) - 4).unwrap();
    }
    let src_blocks = fs::metadata(&big).unwrap().blocks();
    assert!(
        src_blocks * 512 < 1 << 20,
        "this filesystem does not keep sparse files sparse ({src_blocks} blocks); the test needs one that does"
    );
    fs::write(src.join("shared"), "one inode").unwrap();
    fs::hard_link(src.join("shared"), src.join("x/y/link1")).unwrap();
    fs::hard_link(src.join("shared"), src.join("x/link2")).unwrap();
    fs::hard_link(src.join("shared"), src.join("link3")).unwrap();

    let dst = t.path().join("dst");
    copy_tree(&src, &dst).unwrap();

    let copy = dst.join("big");
    let m = fs::metadata(&copy).unwrap();
    assert_eq!(m.len(), 1 << 30);
    assert!(m.blocks() <= src_blocks + 16, "the copy holds {} blocks, the original {src_blocks}", m.blocks());
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(&copy).unwrap();
        let mut buf = [0u8; 6];
        f.read_exact_at(&mut buf[..4], 0).unwrap();
        assert_eq!(&buf[..4], b"head");
        f.read_exact_at(&mut buf, 1 << 29).unwrap();
        assert_eq!(&buf, b"middle");
        f.read_exact_at(&mut buf[..4], (1 << 30) - 4).unwrap();
        assert_eq!(&buf[..4], b"tail");
    }

    let ino = fs::metadata(dst.join("shared")).unwrap().ino();
    for l in ["x/y/link1", "x/link2", "link3"] {
        assert_eq!(fs::metadata(dst.join(l)).unwrap().ino(), ino, "{l} must be a hard link of the copy of shared");
    }
    assert_eq!(fs::metadata(dst.join("shared")).unwrap().nlink(), 4);
    assert_eq!(fs::read_to_string(dst.join("x/y/link1")).unwrap(), "one inode");
    // Usage charges allocated blocks and counts a linked inode once.
    let u = usage(&src).unwrap();
    assert_eq!(u.inodes, 5, "root, x, x/y, big, shared (once)");
    assert!(u.bytes < 1 << 20, "usage counts blocks, not the apparent size: {u:?}");
}

/// Every regular file under `root` whose bytes contain `needle` (symlinks
/// are not followed).
pub fn secrets_in(root: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && String::from_utf8_lossy(&fs::read(&p).unwrap()).contains(needle) {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

/// The race of issue 20, attack 1, made deterministic: at the failpoint
/// between listing an entry and opening it, every file and directory of the
/// tree is swapped for a symlink to a secret outside it (renamed over the
/// entry, as the guest does). The copy must hold the symlinks, never the
/// secrets.
#[cfg(feature = "failpoints")]
#[test]
fn entries_swapped_for_symlinks_between_listing_and_open_are_never_followed() {
    let _serial = super::serial();
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("node.key"), "TOP SECRET key").unwrap();
    fs::create_dir(t.path().join("neighbour")).unwrap();
    fs::write(t.path().join("neighbour/data"), "TOP SECRET neighbour").unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("dir/inner")).unwrap();
    fs::write(src.join("dir/inner/file"), "mine").unwrap();
    for i in 0..4 {
        fs::write(src.join(format!("f{i}")), "mine").unwrap();
    }
    // The swaps: (entry, symlink target), staged beside the tree.
    let mut swaps: Vec<(String, String)> = (0..4).map(|i| (format!("f{i}"), "../node.key".to_string())).collect();
    swaps.push(("dir".into(), "../neighbour".into()));
    swaps.push(("dir/inner/file".into(), "../../../node.key".into()));
    let stage = t.path().join("stage");
    fs::create_dir(&stage).unwrap();
    for (i, (_, target)) in swaps.iter().enumerate() {
        std::os::unix::fs::symlink(target, stage.join(i.to_string())).unwrap();
    }

    // Only the walk on this test's thread swaps, so parallel tests that also
    // pass the failpoint are not disturbed.
    let me = std::thread::current().id();
    let hits = Arc::new(AtomicUsize::new(0));
    let (h, s, st) = (hits.clone(), src.clone(), stage.clone());
    let swapped = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    fail::cfg_callback("tree::walk::listed", move || {
        if std::thread::current().id() != me {
            return;
        }
        h.fetch_add(1, Ordering::SeqCst);
        let mut done = swapped.lock().unwrap();
        for (i, (entry, _)) in swaps.iter().enumerate() {
            let at = s.join(entry);
            // Swap what exists and is not swapped yet (a swapped "dir" hides
            // "dir/inner/file").
            if done.contains(&i) || fs::symlink_metadata(&at).is_err() {
                continue;
            }
            if fs::symlink_metadata(&at).unwrap().is_dir() {
                fs::rename(&at, s.join(format!(".old{i}"))).unwrap();
            }
            fs::rename(st.join(i.to_string()), &at).unwrap();
            done.insert(i);
        }
    })
    .unwrap();
    let dst = t.path().join("dst");
    let r = copy_tree(&src, &dst);
    fail::remove("tree::walk::listed");
    r.unwrap();
    assert!(hits.load(Ordering::SeqCst) > 0, "the failpoint was never reached: the race was not exercised");
    assert_eq!(secrets_in(&dst, "TOP SECRET"), Vec::<String>::new(), "a secret reached the copy");
    for i in 0..4 {
        assert_eq!(fs::read_link(dst.join(format!("f{i}"))).unwrap(), Path::new("../node.key"));
    }
    assert_eq!(fs::read_link(dst.join("dir")).unwrap(), Path::new("../neighbour"));
}
