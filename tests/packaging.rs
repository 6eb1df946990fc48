//! What ships (issue 15, packaging slice), checked with the real tools: the
//! split release binary (`packaging/build-release.sh`: no debug sections, a
//! `.gnu_debuglink` to a debug file that holds the line tables, still runs);
//! the container image built by `packaging/container/build-local.sh` from the
//! Containerfile with buildah, booted as its own user with its own env,
//! healthy, and stopped by SIGTERM with exit 0; the Prometheus alert rules
//! (`promtool check rules` and `promtool test rules`); and the Grafana
//! dashboard and alert rules querying only metrics a live node exports.
//!
//! A test needing a tool that is absent (buildah, promtool, binutils) prints
//! a loud SKIPPED message naming it; `.ci/run` installs them.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sysdeploy");

/// Upper bound for anything that should happen "soon"; reaching it fails.
const PATIENCE: Duration = Duration::from_secs(120);

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The path of `tool`, or `None` after a loud message (the caller skips).
fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()));
    if found.is_none() {
        eprintln!(
            "\n!!!!! SKIPPED: `{name}` is not installed; this test cannot run (.ci/run installs it: apt-get install {package}) !!!!!\n"
        );
    }
    found
}

/// Runs `cmd` to completion; panics with its output unless it exits 0.
fn ok(cmd: &mut Command) -> String {
    let o = out(cmd);
    assert!(o.status.success(), "{cmd:?}: {}\n{}{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn out(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).proxy(None).timeout_global(Some(PATIENCE)).build().into();
    let mut resp = agent.get(&format!("http://{addr}{path}")).call().ok()?;
    Some((resp.status().as_u16(), resp.body_mut().read_to_string().ok()?))
}

// ---------------------------------------------------------- shipped binary

/// Section names and sizes, from `readelf -S -W`.
fn sections(file: &Path) -> Vec<(String, u64)> {
    let text = ok(Command::new("readelf").args(["-S", "-W"]).arg(file));
    text.lines()
        .filter_map(|l| {
            // "  [33] .debug_abbrev  PROGBITS  0000000000000000 28d7202 00edd9 00 ..."
            let rest = l.trim_start().strip_prefix('[')?.split_once(']')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.first()?.to_string(), u64::from_str_radix(f.get(4)?, 16).ok()?))
        })
        .collect()
}

/// `file:line` that `addr2line` gives for `addr` in `file`.
fn addr2line(file: &Path, addr: &str) -> String {
    ok(Command::new("addr2line").arg("-e").arg(file).arg(addr)).trim().to_string()
}

/// `packaging/build-release.sh --split` (the step a release build ends
/// with), run on the test binary: the result has no debug sections and no
/// symbol table, carries a `.gnu_debuglink` to `sysdeploy.debug`, is smaller
/// by at least the debug sections' size and still runs; the debug file holds
/// the line tables, and addr2line finds them through the link (and not
/// without the debug file). The input binary is left as it was.
#[test]
fn release_split_strips_the_binary_and_keeps_the_line_tables_beside_it() {
    for (t, pkg) in [("objcopy", "binutils"), ("strip", "binutils"), ("readelf", "binutils"), ("addr2line", "binutils"), ("nm", "binutils")]
    {
        if tool(t, pkg).is_none() {
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let before = std::fs::metadata(BIN).unwrap().len();
    ok(Command::new(repo("packaging/build-release.sh")).arg("--split").arg(BIN).arg("--out").arg(dir.path()));
    assert_eq!(std::fs::metadata(BIN).unwrap().len(), before, "the input binary is not modified");
    let shipped = dir.path().join("sysdeploy");
    let debug = dir.path().join("sysdeploy.debug");

    let original = sections(Path::new(BIN));
    let debug_bytes: u64 = original.iter().filter(|(n, _)| n.starts_with(".debug_") && n != ".debug_gdb_scripts").map(|(_, s)| s).sum();
    assert!(debug_bytes > 1_000_000, "the test binary has line tables to split: {original:?}");
    let names: Vec<String> = sections(&shipped).into_iter().map(|(n, _)| n).collect();
    // .debug_gdb_scripts is loaded with the program (SHF_ALLOC, 34 bytes:
    // the name of gdb's pretty-printer script), not debug info.
    let left: Vec<&String> = names.iter().filter(|n| n.starts_with(".debug") && *n != ".debug_gdb_scripts").collect();
    assert!(left.is_empty(), "debug sections left in the shipped binary: {left:?}");
    assert!(!names.iter().any(|n| n == ".symtab"), "the symbol table is in the debug file only: {names:?}");
    assert!(names.iter().any(|n| n == ".gnu_debuglink"), "{names:?}");
    let link = ok(Command::new("readelf").arg("--string-dump=.gnu_debuglink").arg(&shipped));
    assert!(link.contains("sysdeploy.debug"), "{link}");
    let size = std::fs::metadata(&shipped).unwrap().len();
    assert!(size + debug_bytes <= before, "shipped {size} bytes of {before}, debug sections {debug_bytes}");

    let debug_names: Vec<String> = sections(&debug).into_iter().map(|(n, _)| n).collect();
    for needed in [".debug_line", ".debug_info", ".symtab"] {
        assert!(debug_names.iter().any(|n| n == needed), "the debug file lacks {needed}: {debug_names:?}");
    }

    let version = ok(Command::new(&shipped).arg("--version"));
    assert_eq!(version, ok(Command::new(BIN).arg("--version")));
    assert!(ok(Command::new(&shipped).arg("--help")).contains("Exit codes"), "--help runs");

    // A function of the CLI module: its address maps to src/cli.rs:LINE in
    // the debug file, and through the shipped binary's debuglink.
    let symbols = ok(Command::new("nm").arg(&debug));
    let addr = symbols
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && matches!(f[1], "t" | "T") && f[2].starts_with("_ZN9sysdeploy3cli")).then(|| format!("0x{}", f[0]))
        })
        .expect("a sysdeploy::cli function in the debug file's symbols");
    let line = addr2line(&debug, &addr);
    let (file, n) = line.rsplit_once(':').unwrap_or_else(|| panic!("{line}"));
    assert!(file.ends_with("src/cli.rs") && n.parse::<u32>().is_ok_and(|n| n > 0), "{addr} -> {line}");
    assert_eq!(addr2line(&shipped, &addr), line, "addr2line follows the debuglink");
    let alone = tempfile::tempdir().unwrap();
    std::fs::copy(&shipped, alone.path().join("sysdeploy")).unwrap();
    assert_eq!(addr2line(&alone.path().join("sysdeploy"), &addr), "??:0", "without the debug file there are no line tables");
}

// ----------------------------------------------------------- the image

/// buildah on a private vfs store in a temp dir.
struct Buildah {
    store: tempfile::TempDir,
}

impl Buildah {
    fn cmd(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root").arg(self.store.path().join("root")).arg("--runroot").arg(self.store.path().join("run"));
        c.args(["--storage-driver", "vfs"]);
        c
    }
}

/// A `buildah run` of the node inside a working container; its stderr
/// collected; the node (found by its pid) SIGKILLed on drop if still there.
struct Boot {
    child: Child,
    log: Arc<Mutex<String>>,
    node_pid: Option<i32>,
}

impl Boot {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "buildah run did not exit; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = self.node_pid {
                // SAFETY: kill(2) with a valid signal; the pid is the node we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The image's config as buildah records it in docker format.
fn image_config(b: &Buildah, image: &str) -> Value {
    let text = ok(b.cmd().args(["inspect", "--type", "image", image]));
    let v: Value = serde_json::from_str(&text).unwrap();
    v["Docker"]["config"].clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// `build-local.sh` builds the Containerfile's runtime stage from the test
/// binary (stripped on the way); the image's config is what a container
/// runtime needs (non-root numeric user, the state volume, SIGTERM, the env,
/// an exec-form health check: there is no shell in the image). Booted with
/// `buildah run` (chroot isolation) as the image's user with its env (only
/// the port changed, so parallel tests do not collide), the node deploys the
/// embedded packages, answers /readyz and /health, the image's health check
/// command exits 0, SIGTERM stops it with exit 0, and afterwards the health
/// check exits 1.
#[test]
fn container_image_boots_as_its_user_answers_health_and_stops_on_sigterm() {
    for (t, pkg) in [("buildah", "buildah"), ("objcopy", "binutils"), ("readelf", "binutils")] {
        if tool(t, pkg).is_none() {
            return;
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "\n!!!!! SKIPPED: building and running the image with buildah needs root here (or `buildah unshare cargo test ...`) !!!!!\n"
        );
        return;
    }
    let b = Buildah { store: tempfile::tempdir().unwrap() };
    let image = "localhost/sysdeploy:packaging-test";
    let o = out(Command::new(repo("packaging/container/build-local.sh"))
        .arg("--binary")
        .arg(BIN)
        .args(["--tag", image])
        .arg("--storage-root")
        .arg(b.store.path().join("root"))
        .arg("--storage-runroot")
        .arg(b.store.path().join("run"))
        .env_remove("STORAGE_DRIVER")
        .env_remove("BUILDAH_ISOLATION"));
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "build-local.sh: {}\n{said}", o.status);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), image);

    let config = image_config(&b, image);
    let user = config["User"].as_str().unwrap_or("");
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap_or_else(|_| panic!("the user is numeric uid:gid: {user:?}"));
    assert_ne!(uid, 0, "the image runs as a non-root user");
    assert!(config["Volumes"].get("/var/lib/sysdeploy").is_some(), "{config}");
    assert_eq!(config["StopSignal"], "SIGTERM", "{config}");
    let env = strings(&config["Env"]);
    for want in ["SYSDEPLOY_NODE__API_LISTEN=0.0.0.0:7200", "SYSDEPLOY_NODE__STATE_DIR=/var/lib/sysdeploy"] {
        assert!(env.iter().any(|e| e == want), "image env lacks {want}: {env:?}");
    }
    let health = strings(&config["Healthcheck"]["Test"]);
    assert_eq!(health.first().map(String::as_str), Some("CMD"), "exec form (no shell in the image): {health:?}");
    let health_cmd = &health[1..];
    assert!(health_cmd.first().is_some_and(|c| c.starts_with('/')), "{health:?}");
    let mut entry = strings(&config["Entrypoint"]);
    entry.extend(strings(&config["Cmd"]));
    assert!(entry.first().is_some_and(|c| c == "/usr/bin/sysdeploy") && entry.last().is_some_and(|c| c == "run"), "{entry:?}");

    let ctr = ok(b.cmd().args(["from", "--pull=never", image])).trim().to_string();
    let port = free_addr().port();
    let listen = format!("SYSDEPLOY_NODE__API_LISTEN=0.0.0.0:{port}");
    let run_in = |args: &[String]| -> Command {
        let mut c = b.cmd();
        c.args(["run", "--isolation", "chroot", "--env", &listen, &ctr, "--"]).args(args);
        c
    };
    let (code, _) = {
        let o = out(&mut run_in(health_cmd));
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    assert_eq!(code, Some(1), "no node runs yet: the health check fails");

    let mut child = run_in(&entry).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
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
    let mut boot = Boot { child, log, node_pid: None };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while get(addr, "/readyz").map(|r| r.0) != Some(200) {
        if let Some(st) = boot.child.try_wait().unwrap() {
            panic!("the node in the image exited ({st}) before it was ready; log:\n{}", boot.log());
        }
        assert!(Instant::now() < deadline, "/readyz never answered 200; log:\n{}", boot.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(addr, "/health").map(|r| r.0), Some(200), "log:\n{}", boot.log());
    let o = out(&mut run_in(health_cmd));
    assert_eq!(o.status.code(), Some(0), "the image's health check: {}", String::from_utf8_lossy(&o.stdout));

    // The node's pid, as the node itself records it (chroot isolation shares
    // the pid namespace); it runs as the image's user.
    let status: Value = serde_json::from_str(&ok(&mut run_in(&["/usr/bin/sysdeploy".into(), "status".into(), "--json".into()]))).unwrap();
    let pid = status["node"]["pid"].as_i64().unwrap_or_else(|| panic!("status names the running node's pid: {status}")) as i32;
    boot.node_pid = Some(pid);
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = proc_status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    assert!(uids.split_whitespace().all(|u| u == uid.to_string()), "the node runs as uid {uid}: Uid:{uids}");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"/usr/bin/sysdeploy\0"), "{}", String::from_utf8_lossy(&cmdline));

    // SAFETY: kill(2) on the node we started, with a valid signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let st = boot.wait_exit();
    assert_eq!(st.code(), Some(0), "SIGTERM is an orderly stop; log:\n{}", boot.log());
    let log = boot.log();
    for line in log.lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("the image logs JSON ({e}): {line}"));
    }
    assert!(log.contains("\"stopped\""), "the node logged its stop (as JSON):\n{log}");
    assert_eq!(out(&mut run_in(health_cmd)).status.code(), Some(1), "after the stop the health check fails again");
}

// ------------------------------------------------------------- monitoring

/// `promtool check rules` on `file`: exits 0 and reports `rules` rules.
fn promtool_check_rules(promtool: &Path, file: &Path) -> Result<usize, String> {
    let o = out(Command::new(promtool).args(["check", "rules"]).arg(file));
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    if !o.status.success() {
        return Err(said);
    }
    said.lines()
        .find_map(|l| l.trim().strip_prefix("SUCCESS: ")?.strip_suffix(" rules found")?.parse().ok())
        .ok_or_else(|| format!("no rule count in: {said}"))
}

/// The alert rules pass `promtool check rules` (PromQL parsed, templates
/// checked) and their unit tests (`promtool test rules alerts_test.yml`:
/// each alert fires when it should and not before); a broken expression is
/// refused, so the check has teeth.
#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = tool("promtool", "prometheus") else { return };
    let rules = repo("deploy/prometheus/alerts.yml");
    let n = promtool_check_rules(&promtool, &rules).unwrap_or_else(|e| panic!("promtool check rules: {e}"));
    assert_eq!(n, alert_exprs().len(), "every rule's expr is read by alert_exprs()");
    let o = out(Command::new(&promtool).args(["test", "rules", "alerts_test.yml"]).current_dir(repo("deploy/prometheus")));
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && said.contains("SUCCESS"), "promtool test rules: {}\n{said}", o.status);

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("alerts.yml");
    let text = std::fs::read_to_string(&rules).unwrap();
    std::fs::write(&broken, text.replacen("expr: sysdeploy_ready == 0", "expr: sysdeploy_ready == == 0", 1)).unwrap();
    assert!(promtool_check_rules(&promtool, &broken).is_err(), "promtool refuses a broken expression");
}

/// The `expr:` of every rule in alerts.yml (single line or a `|` block).
fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else { continue };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let indent = line.len() - line.trim_start().len();
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            exprs.push(block.join(" ").trim().to_string());
        } else {
            exprs.push(value.trim_matches(|c| c == '\'' || c == '"').to_string());
        }
    }
    exprs
}

/// Every PromQL query of the dashboard: panel targets and template variables.
fn dashboard_exprs(dash: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        // Template variables: label_values(SELECTOR, label).
                        ("query", Value::Object(q)) => {
                            if let Some(s) = q.get("query").and_then(Value::as_str) {
                                let inner = s.strip_prefix("label_values(").and_then(|s| s.rsplit_once(',')).map(|(sel, _)| sel);
                                out.push(inner.unwrap_or(s).to_string());
                            }
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dash, &mut out);
    out
}

/// The metric names a PromQL expression reads: identifiers outside strings,
/// label matchers, ranges and `by (...)`-style label lists that are neither
/// function calls nor keywords.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"];
    const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                // `sum by (alias) (...)`: an aggregation's label list may
                // stand between its name and its argument.
                let mut k = j;
                for kw in ["by", "without"] {
                    let rest: String = chars[k..].iter().take(kw.len() + 1).collect();
                    if rest.starts_with(kw) && rest[kw.len()..].chars().all(|c| c.is_whitespace() || c == '(') {
                        k += kw.len();
                        while k < chars.len() && chars[k] != ')' {
                            k += 1;
                        }
                        k += 1;
                        while k < chars.len() && chars[k].is_whitespace() {
                            k += 1;
                        }
                    }
                }
                let call = (j < chars.len() && chars[j] == '(') || (k > j && k < chars.len() && chars[k] == '(');
                if LABEL_LISTS.contains(&word.as_str()) {
                    if call {
                        while j < chars.len() && chars[j] != ')' {
                            j += 1;
                        }
                        i = j + 1;
                    }
                } else if !call && !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            // Numbers and durations (5m, 2e9, 0.99) are not names.
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            // Template variables ($instance, $__rate_interval) outside matchers.
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn promql_metric_names_reads_only_metric_names() {
    let names = promql_metric_names(
        r#"sum by (alias, code) (rate(a_total{code=~"x|y",alias="$alias"}[$__rate_interval])) / on(instance) group_left b > bool 0.5 and time() - c offset 5m"#,
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a_total", "b", "c"]);
    assert_eq!(
        promql_metric_names("histogram_quantile(0.99, sum without (le) (x_bucket)) > 2e9").into_iter().collect::<Vec<_>>(),
        ["x_bucket"]
    );
}

/// A node on the embedded packages, with a call made so every per-alias
/// series exists; returns its classic-format /metrics.
/// `/metrics` of a live node that answered a call, read again until `has_all`
/// accepts it (series such as the spells' appear only once a spell has run,
/// which on a loaded machine may be after the first scrape) or patience runs
/// out; the caller's assertion then names what is missing.
fn live_metrics(has_all: impl Fn(&str) -> bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut cmd = Command::new(BIN);
    cmd.arg("--state-dir").arg(dir.path().join("state")).arg("--api-listen").arg(addr.to_string()).arg("run");
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("SYSDEPLOY_") || ["RUST_LOG", "NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY"].contains(&k.as_str()) {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);
    let deadline = Instant::now() + PATIENCE;
    while get(addr, "/readyz").map(|r| r.0) != Some(200) {
        assert!(guard.0.try_wait().unwrap().is_none(), "the node exited before it was ready");
        assert!(Instant::now() < deadline, "/readyz never answered 200");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(dir.path().join("state/api.token")).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).proxy(None).build().into();
    let resp = agent
        .post(&format!("http://{addr}/v1/services/registry/call/count"))
        .header("Authorization", &format!("Bearer {}", token.trim()))
        .send("[]");
    assert_eq!(resp.unwrap().status().as_u16(), 200, "a call to the embedded registry");
    loop {
        let (status, body) = get(addr, "/metrics").unwrap();
        assert_eq!(status, 200);
        if has_all(&body) || Instant::now() >= deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The metric names with samples in an exposition.
fn exported_names(metrics: &str) -> BTreeSet<&str> {
    metrics.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(|l| l.split(['{', ' ']).next()).collect()
}

/// Every metric the Grafana dashboard and the alert rules query has samples
/// on a live node (`up` excepted: Prometheus makes it for each target). The
/// dashboard's queries, with their template variables filled in, also pass
/// `promtool check rules` as recording rules, so they parse as PromQL.
#[test]
fn dashboard_and_alerts_query_only_metrics_a_live_node_exports() {
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/sysdeploy.json")).unwrap()).unwrap();
    let dash_exprs = dashboard_exprs(&dash);
    assert!(dash_exprs.len() >= 20, "{dash_exprs:?}");
    let mut queried: BTreeSet<String> = BTreeSet::new();
    for e in dash_exprs.iter().chain(alert_exprs().iter()) {
        let names = promql_metric_names(e);
        assert!(!names.is_empty(), "no metric found in {e:?}");
        queried.extend(names);
    }
    let metrics = live_metrics(|m| {
        let exported = exported_names(m);
        queried.iter().all(|n| n == "up" || exported.contains(n.as_str()))
    });
    let exported = exported_names(&metrics);
    let missing: Vec<&String> = queried.iter().filter(|n| *n != "up" && !exported.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "queried but not exported by a live node: {missing:?}\nexported: {exported:?}");
    assert!(queried.len() >= 15, "{queried:?}");

    let Some(promtool) = tool("promtool", "prometheus") else { return };
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dash_exprs.iter().enumerate() {
        let e = e.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$alias", ".*");
        rules.push_str(&format!("      - record: dashboard:query_{i}\n        expr: {}\n", serde_json::to_string(&e).unwrap()));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    let n = promtool_check_rules(&promtool, &dir.path().join("dashboard.yml")).unwrap_or_else(|e| panic!("dashboard queries: {e}"));
    assert_eq!(n, dash_exprs.len());
}
