//! Hostile guests cannot starve the node or their neighbours (issue 20,
//! attacks 4–7; issue 13, item 7): a real wasm32-wasip2 guest built from Rust
//! (`tests/distros/hostile/`, committed as
//! `tests/distros/limits/hostile/hostile.wasm`) runs beside a benign instance
//! of itself on a real runtime, store and state directory, and tries to take
//! more than its share of disk, inodes, descriptors, the log and host memory.

mod fixtures;

use fixtures::{host, Harness};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use sysdeploy::ids::ServiceId;
use sysdeploy::runtime::{Blueprint, BlueprintComponent, CallError, GuestLimits, LogLimits, RuntimeOptions};

/// The committed hostile guest.
fn hostile_wasm() -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distros/limits/hostile/hostile.wasm");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn harness(limits: GuestLimits) -> Harness {
    Harness::with_options(RuntimeOptions { host_peer: Some(host()), limits, ..RuntimeOptions::default() })
}

/// Two services of the hostile blueprint: the attacker and its neighbour.
async fn pair(h: &Harness) -> (ServiceId, ServiceId) {
    let hash = h.rt.add_component(&hostile_wasm(), None).unwrap();
    let bp = h.rt.put_blueprint(&Blueprint::new(vec![BlueprintComponent { name: "hostile".into(), hash, memory_limit_mb: None }])).unwrap();
    (h.rt.create_service(&bp, &host()).await.unwrap(), h.rt.create_service(&bp, &host()).await.unwrap())
}

async fn call(h: &Harness, s: &ServiceId, f: &str, args: Value) -> Value {
    h.rt.call(s.as_str(), f, args).await.unwrap_or_else(|e| panic!("{f}: {e}"))
}

/// `outcome` → (done, error text or "").
fn outcome(v: &Value) -> (u64, String) {
    (v["done"].as_u64().unwrap(), v["error"].as_str().unwrap_or("").to_string())
}

const MIB: u64 = 1 << 20;

/// A failed stream write: wasi-libc (Rust's wasm32-wasip2 std) turns every
/// `last-operation-failed` stream error into EIO without asking
/// `filesystem-error-code`, which the host answers with `quota`. Either is an
/// error code the guest handles, never a trap.
fn quota_or_eio(err: &str) -> bool {
    err.starts_with("QuotaExceeded") || err == "Uncategorized: I/O error (os error 29)"
}

fn limits() -> GuestLimits {
    GuestLimits { data_quota_bytes: MIB, data_quota_inodes: 40, ..GuestLimits::default() }
}

#[tokio::test]
async fn a_guest_over_its_data_quota_gets_an_error_code_while_its_neighbour_keeps_writing() {
    let h = harness(limits());
    let (bad, good) = pair(&h).await;

    // Bytes: a write past the quota stops at it with EDQUOT, not a trap.
    let (done, err) = outcome(&call(&h, &bad, "write-file", json!(["/data/big", 2 * MIB])).await);
    assert!(done <= MIB && quota_or_eio(&err), "{done} {err}");
    assert!(h.rt.is_instantiated(&bad), "a quota error is an error code: the instance lives on");
    let (done, err) = outcome(&call(&h, &bad, "append-file", json!(["/data/big", 64 * 1024])).await);
    assert!(done == 0 && quota_or_eio(&err), "{done} {err}");
    // A sparse file counts at its length: a 10 TiB hole is refused at once.
    let (_, err) = outcome(&call(&h, &bad, "set-size", json!(["/data/sparse", 10u64 << 40])).await);
    assert!(err.starts_with("QuotaExceeded"), "{err}");

    // The neighbour has a quota of its own.
    assert_eq!(outcome(&call(&h, &good, "write-file", json!(["/data/x", 900 * 1024])).await), (900 * 1024, String::new()));

    // Deleting frees quota; overwriting in place does not grow it.
    assert_eq!(outcome(&call(&h, &bad, "remove-path", json!(["/data/big"])).await).1, "");
    assert_eq!(outcome(&call(&h, &bad, "write-file", json!(["/data/a", 600 * 1024])).await), (600 * 1024, String::new()));
    assert_eq!(outcome(&call(&h, &bad, "write-file", json!(["/data/a", 600 * 1024])).await), (600 * 1024, String::new()));
    // A shrink that fails (read-only descriptor) credits nothing.
    let (_, err) = outcome(&call(&h, &bad, "truncate-read-only", json!(["/data/a", 0])).await);
    assert!(!err.is_empty(), "a read-only descriptor cannot be truncated");
    let (_, err) = outcome(&call(&h, &bad, "write-file", json!(["/data/b", 600 * 1024])).await);
    assert!(quota_or_eio(&err), "{err}");

    // Entries: files stop at the entry quota; the neighbour still creates its own.
    let (done, err) = outcome(&call(&h, &bad, "make-files", json!(["/data/many", 100])).await);
    assert!(done < 40 && err.starts_with("QuotaExceeded"), "{done} {err}");
    assert_eq!(outcome(&call(&h, &good, "make-files", json!(["/data/few", 10])).await), (10, String::new()));
    // At the entry quota an existing file still opens for writing.
    assert_eq!(outcome(&call(&h, &bad, "append-file", json!(["/data/many/f0", 10])).await), (10, String::new()));

    // What the runtime reports is what is on disk, and within the quota.
    let usage = h.rt.guest_usage(&bad).unwrap();
    let on_disk = sysdeploy::runtime::data_usage(&h.rt.data_dir(&bad)).unwrap();
    assert!(usage.data.bytes <= MIB && usage.data.inodes <= 40, "{usage:?}");
    assert_eq!(on_disk, usage.data, "ledger and disk agree");

    // A fresh instance (after a trap) scans the dir and enforces the same quota.
    assert!(h.rt.call(bad.as_str(), "crash", json!(["bye"])).await.is_err());
    let (_, err) = outcome(&call(&h, &bad, "write-file", json!(["/data/c", 600 * 1024])).await);
    assert!(quota_or_eio(&err), "{err}");
    assert_eq!(call(&h, &good, "read-sum", json!(["/data/x"])).await["error"], Value::Null);
}

#[tokio::test]
async fn a_guest_cannot_hold_more_descriptors_than_its_cap() {
    let h = harness(GuestLimits { max_open_files: 16, ..GuestLimits::default() });
    let (bad, good) = pair(&h).await;
    let (done, err) = outcome(&call(&h, &bad, "hold-open", json!([1000])).await);
    assert_eq!(done, 16, "{err}");
    assert!(err.starts_with("OutOfMemory"), "the guest gets an error code, not a trap: {err}");
    assert_eq!(h.rt.guest_usage(&bad).unwrap().open_files, 16);
    // The neighbour opens its own share, and its ordinary file work goes on.
    assert_eq!(outcome(&call(&h, &good, "hold-open", json!([16])).await), (16, String::new()));
    assert_eq!(call(&h, &good, "release", json!([])).await, json!(16));
    assert_eq!(outcome(&call(&h, &good, "write-file", json!(["/data/x", 10])).await), (10, String::new()));
    // Closing gives the descriptors back.
    assert_eq!(call(&h, &bad, "release", json!([])).await, json!(16));
    assert_eq!(outcome(&call(&h, &bad, "hold-open", json!([16])).await), (16, String::new()));
}

#[tokio::test]
async fn a_result_over_the_cap_fails_with_result_too_large_and_the_instance_lives() {
    let h = harness(GuestLimits { max_result_bytes: MIB, ..GuestLimits::default() });
    let (bad, _) = pair(&h).await;
    let e = match h.rt.call(bad.as_str(), "big-result", json!([2 * MIB])).await {
        Ok(v) => panic!("a {}-byte result passed the cap", v.as_str().map_or(0, str::len)),
        Err(e) => e,
    };
    assert!(matches!(e, CallError::ResultTooLarge { limit_bytes, .. } if limit_bytes == MIB), "{e:?}");
    assert_eq!(serde_json::to_value(&e).unwrap()["code"], "result_too_large");
    assert!(h.rt.is_instantiated(&bad), "the guest did nothing wrong: its instance is kept");
    assert_eq!(call(&h, &bad, "big-result", json!([1000])).await.as_str().unwrap().len(), 1000);
}

/// Everything the node logs in this test binary, human format without colour.
fn captured() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buf.clone());
        let subscriber =
            tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::TRACE).with_writer(move || writer.clone()).finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
    .clone()
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured lines about service `s`.
fn lines_of(log: &Arc<Mutex<Vec<u8>>>, s: &ServiceId) -> Vec<String> {
    String::from_utf8_lossy(&log.lock().unwrap()).lines().filter(|l| l.contains(s.as_str())).map(str::to_string).collect()
}

#[tokio::test]
async fn guest_output_reaches_the_log_escaped_line_buffered_and_attributed() {
    let log = captured();
    let h = harness(GuestLimits::default());
    let (bad, _) = pair(&h).await;
    call(&h, &bad, "log-flood", json!([1, "ok\nERROR sysdeploy::node: forged\r\u{1b}[31mred"])).await;
    call(&h, &bad, "print", json!(["hello\nwor", "stderr line\n"])).await;
    call(&h, &bad, "print", json!(["ld\n", ""])).await;
    let e = h.rt.call(bad.as_str(), "crash", json!(["Traceback: the reason"])).await.unwrap_err();
    assert!(matches!(e, CallError::Trap { .. }), "{e:?}");

    let all = String::from_utf8_lossy(&log.lock().unwrap()).to_string();
    assert!(!all.lines().any(|l| l.starts_with("ERROR sysdeploy::node")), "a guest forged a log line:\n{all}");
    assert!(!all.contains('\u{1b}'), "a guest sent an escape sequence to the log");
    let mine = lines_of(&log, &bad);
    let has = |needle: &str, source: &str| mine.iter().any(|l| l.contains(needle) && l.contains(&format!("source=\"{source}\"")));
    assert!(has(r"ok\nERROR sysdeploy::node: forged\r\u{1b}[31mred", "log"), "{mine:#?}");
    assert!(has("hello", "stdout") && has("world", "stdout"), "stdout is line-buffered across calls: {mine:#?}");
    assert!(has("stderr line", "stderr"), "{mine:#?}");
    assert!(has("Traceback: the reason", "stderr"), "the guest's last words before a trap reach the log: {mine:#?}");
    assert!(has("hostile guest crashed on purpose", "stderr"), "the panic message reaches the log: {mine:#?}");
}

#[tokio::test]
async fn a_log_flood_is_rate_limited_cut_and_counted() {
    let log = captured();
    let h = harness(GuestLimits { log: LogLimits { lines_per_sec: 5, line_max_bytes: 100 }, ..GuestLimits::default() });
    let (bad, good) = pair(&h).await;
    let started = std::time::Instant::now();
    call(&h, &bad, "log-flood", json!([2000, "x".repeat(10_000)])).await;
    let stdout_flood = "line\n".repeat(2000);
    call(&h, &bad, "print", json!([stdout_flood, ""])).await;
    let secs = started.elapsed().as_secs() + 1;
    let emitted = lines_of(&log, &bad).len() as u64;
    // At most the burst plus the refill over the time it took, plus the
    // summary lines that report drops.
    assert!(emitted <= 5 + 5 * secs + 2 * (1 + 5 * secs), "{emitted} lines in ~{secs} s");
    let dropped = h.rt.guest_usage(&bad).unwrap().log_lines_dropped;
    assert!(dropped >= 4000 - 5 - 5 * secs, "{dropped}");
    assert!(lines_of(&log, &bad).iter().all(|l| l.len() < 400), "long lines are cut");
    assert_eq!(h.rt.guest_usage(&good).unwrap().log_lines_dropped, 0, "the neighbour's budget is its own");
    call(&h, &good, "log-flood", json!([3, "neighbour speaks"])).await;
    assert_eq!(lines_of(&log, &good).iter().filter(|l| l.contains("neighbour speaks")).count(), 3);
}

/// The node end to end: `sysdeploy run` with the `hostile` package of
/// `tests/distros/limits/` (service `hostile` with its own quota and a
/// descriptor cap above the node's budget, service `neighbour` with the
/// defaults), a result cap from the config, and `RLIMIT_NOFILE` lowered to
/// 512 before exec, so the node's guest budget is 512 − 256 = 256.
mod node {
    use serde_json::{json, Value};
    use std::io::{BufRead, BufReader};
    use std::net::SocketAddr;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    const PATIENCE: Duration = Duration::from_secs(120);

    struct Node {
        child: Child,
        log: Arc<Mutex<String>>,
    }

    impl Drop for Node {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Option<(u16, Value)> {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).proxy(None).timeout_global(Some(PATIENCE)).build().into();
        let mut req = ureq::http::Request::builder().method(method).uri(format!("http://{addr}{path}"));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => agent.run(req.header("Content-Type", "application/json").body(b.to_string().into_bytes()).unwrap()),
            None => agent.run(req.body(()).unwrap()),
        };
        let mut resp = resp.ok()?;
        let text = resp.body_mut().read_to_string().ok()?;
        Some((resp.status().as_u16(), serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    #[test]
    fn per_service_limits_hold_on_a_running_node_and_status_and_metrics_show_usage() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let config = dir.path().join("sysdeploy.toml");
        std::fs::write(&config, "[system_services]\nguest_result_max_bytes = 1048576\n").unwrap();
        let distros = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distros/limits");
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sysdeploy"));
        cmd.arg("--state-dir").arg(&state).arg("--config").arg(&config).arg("--distros-dir").arg(&distros);
        cmd.arg("--api-listen").arg(addr.to_string()).arg("run");
        cmd.env_remove("RUST_LOG").env_remove("FAILPOINTS").env_remove("NOTIFY_SOCKET");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let r = libc::rlimit { rlim_cur: 512, rlim_max: 512 };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut node = Node { child, log };
        let deadline = Instant::now() + PATIENCE;
        while http(addr, "GET", "/health", None, None).map(|r| r.0) != Some(200) {
            if let Some(st) = node.child.try_wait().unwrap() {
                panic!("node exited ({st}); log:\n{}", node.log.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "node never became ready; log:\n{}", node.log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
        let token = std::fs::read_to_string(state.join("api.token")).unwrap().trim().to_string();
        let call = |alias: &str, f: &str, args: Value| {
            http(addr, "POST", &format!("/v1/services/{alias}/call/{f}"), Some(&token), Some(args)).expect("the node answers")
        };
        let ok = |alias: &str, f: &str, args: Value| {
            let (status, body) = call(alias, f, args);
            assert_eq!(status, 200, "{alias}.{f}: {body}");
            body
        };

        // The package's own quota (1 MiB, 1000 entries) for `hostile`; the
        // neighbour has the node's default (1 GiB).
        let r = ok("hostile", "write-file", json!(["/data/big", 3 << 20]));
        assert!(r["done"].as_u64().unwrap() <= 1 << 20 && r["error"].is_string(), "{r}");
        let r = ok("hostile", "set-size", json!(["/data/sparse", 1u64 << 40]));
        assert!(r["error"].as_str().unwrap().starts_with("QuotaExceeded"), "{r}");
        assert_eq!(ok("neighbour", "write-file", json!(["/data/x", 3 << 20])), json!({"done": 3 << 20, "error": null}));

        // The result cap from the config: a stable code, before any JSON.
        let (status, body) = call("neighbour", "big-result", json!([2 << 20]));
        assert_eq!((status, body["error"]["code"].as_str()), (502, Some("result_too_large")), "{body}");
        assert_eq!(ok("neighbour", "big-result", json!([10])), json!("xxxxxxxxxx"));

        // `hostile` may hold 100,000 descriptors by its manifest, but the node
        // keeps 256 of its 512 for itself: the guest stops at the budget with
        // an error, and the node's API and store keep working.
        let r = ok("hostile", "hold-open", json!([100_000]));
        let held = r["done"].as_u64().unwrap();
        assert!((100..=256).contains(&held) && r["error"].as_str().unwrap().starts_with("OutOfMemory"), "{r}");
        assert_eq!(http(addr, "GET", "/health", None, None).map(|r| r.0), Some(200));
        assert_eq!(http(addr, "GET", "/v1/services", Some(&token), None).map(|r| r.0), Some(200));
        assert_eq!(ok("neighbour", "big-result", json!([3])), json!("xxx"), "calls that need no descriptor still work");
        let metrics = http(addr, "GET", "/metrics", None, None).unwrap().1;
        let metrics = metrics.as_str().unwrap();
        assert!(metrics.contains(&format!("sysdeploy_guest_open_files{{alias=\"hostile\"}} {held}")), "{metrics}");
        assert!(metrics.contains("sysdeploy_guest_data_bytes{alias=\"neighbour\"} 3145728"), "{metrics}");
        // Released, the budget is there for the neighbour again.
        assert_eq!(ok("hostile", "release", json!([])), json!(held));
        assert_eq!(ok("neighbour", "hold-open", json!([10])), json!({"done": 10, "error": null}));

        // `status` (read-only, beside the running node) shows each service's usage.
        let out = Command::new(env!("CARGO_BIN_EXE_sysdeploy")).arg("--state-dir").arg(&state).args(["status", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        let data_of = |alias: &str| {
            status["services"].as_array().unwrap().iter().find(|s| s["aliases"][0] == alias).map(|s| s["data"].clone()).unwrap()
        };
        assert_eq!(data_of("neighbour")["bytes"], json!(3 << 20), "{status}");
        assert!(data_of("hostile")["bytes"].as_u64().unwrap() <= 1 << 20, "{status}");

        // Guest limits are given to the runtime at boot: a reload that
        // changes one reports it as needing a restart and keeps the running value.
        std::fs::write(&config, "[system_services]\nguest_result_max_bytes = 2097152\n").unwrap();
        let (status, report) = http(addr, "POST", "/v1/reload", Some(&token), None).unwrap();
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["needs_restart"], json!(["system_services.guest_result_max_bytes: 1048576 → 2097152"]), "{report}");
        assert_eq!(call("neighbour", "big-result", json!([3 << 19])).0, 502, "the running cap stays 1 MiB");
        drop(node);
    }
}

/// A trap message names the guest function from the guest's own name
/// section: its control characters are escaped like log lines, so a trap
/// reported in the node's log cannot forge a line either.
#[tokio::test]
async fn a_guest_function_name_cannot_forge_a_line_in_a_trap_message() {
    let wat = r#"(component
        (core module $m
            (func (@name "boom\nERROR sysdeploy::node: forged\1b[31m") (export "boom") unreachable))
        (core instance $i (instantiate $m))
        (func (export "boom") (canon lift (core func $i "boom"))))"#;
    let bytes = wat::parse_str(wat).unwrap();
    let h = harness(GuestLimits::default());
    let hash = h.rt.add_component(&bytes, None).unwrap();
    let bp = h.rt.put_blueprint(&Blueprint::new(vec![BlueprintComponent { name: "boom".into(), hash, memory_limit_mb: None }])).unwrap();
    let s = h.rt.create_service(&bp, &host()).await.unwrap();
    let e = h.rt.call(s.as_str(), "boom", json!([])).await.unwrap_err();
    let CallError::Trap { trap, .. } = &e else { panic!("{e:?}") };
    assert!(trap.contains(r"boom\nERROR sysdeploy::node: forged\u{1b}[31m"), "{trap}");
    assert!(!e.to_string().contains(['\n', '\u{1b}']), "{e}");
}

/// Guests' filesystem calls run on the guest's thread, except `sync` and
/// `sync-data`, which the runtime shadows to keep them on the blocking pool.
mod guest_fs {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sync_and_sync_data_of_a_file_and_of_the_data_dir_succeed_and_files_read_back() {
        let h = Harness::new();
        let hash = h.add("files");
        let bp =
            h.rt.put_blueprint(&Blueprint::new(vec![BlueprintComponent { name: "files".into(), hash, memory_limit_mb: None }])).unwrap();
        let s = h.rt.create_service(&bp, &host()).await.unwrap();
        assert_eq!(call(&h, &s, "put", json!(["kept"])).await, json!(true));
        assert_eq!(call(&h, &s, "sync-all", json!([])).await, json!(0), "bit k set: sync call k failed");
        assert_eq!(call(&h, &s, "get", json!([])).await, json!("kept"));
        assert_eq!(std::fs::read_to_string(h.rt.data_dir(&s).join("state.txt")).unwrap(), "kept");
    }
}
