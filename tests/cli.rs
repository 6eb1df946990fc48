//! Black-box tests of the `sysdeploy` binary: config layering and provenance,
//! every kind of bad input (exit 2, nothing touched), the state directory
//! (lock → exit 3 naming the pid, private key files, stable peer id, newer
//! schema → exit 3) and secret redaction in output and logs.

use serde_json::Value as Json;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary under test. `CARGO_BIN_EXE_sysdeploy` normally; a target dir
/// shared by several checkouts overwrites that path with whichever build ran
/// last, so `TEST_SYSDEPLOY_BIN` may name a private copy instead.
fn bin() -> PathBuf {
    std::env::var_os("TEST_SYSDEPLOY_BIN").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_BIN_EXE_sysdeploy").into())
}
const PERIOD: &str = "system_services.decider.decider_period_sec";
const PERIOD_ENV: &str = "SYSDEPLOY_SYSTEM_SERVICES__DECIDER__DECIDER_PERIOD_SEC";
const WALLET_ENV: &str = "SYSDEPLOY_SYSTEM_SERVICES__DECIDER__WALLET_KEY";

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
    fn json(&self) -> Json {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
    /// Asserts exit 2 and that stderr contains each needle.
    fn invalid(&self, needles: &[&str]) {
        assert_eq!(self.code, 2, "{self:?}");
        for n in needles {
            assert!(self.stderr.contains(n), "stderr lacks {n:?}:\n{}", self.stderr);
        }
    }
}

/// A scratch directory that is the binary's working directory, so the
/// default `.sysdeploy` state dir lands inside it.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Sandbox { dir: tempfile::tempdir().unwrap() }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        fs::write(&p, text).unwrap();
        p
    }
    /// Runs the binary with a clean environment plus `env`.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let out = Command::new(bin())
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .expect("run sysdeploy");
        Out {
            code: out.status.code().expect("exited normally"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    /// Runs the binary with a clean environment as an unprivileged user: as
    /// root, as uid/gid 65534 (nobody); otherwise as this process's own user.
    fn run_unprivileged(&self, args: &[&str]) -> Out {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin());
        cmd.args(args).current_dir(self.dir.path()).env_clear();
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            cmd.uid(65534).gid(65534);
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("run {} as an unprivileged user: {e}", bin().display()));
        Out {
            code: out.status.code().expect("exited normally"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    fn config_json(&self, args: &[&str], env: &[(&str, &str)]) -> Json {
        let mut a = vec!["config", "--json"];
        a.extend_from_slice(args);
        let out = self.run(&a, env);
        assert_eq!(out.code, 0, "{out:?}");
        out.json()
    }
}

fn value<'a>(cfg: &'a Json, key: &str) -> &'a Json {
    &cfg["values"][key]
}

/// `run --once` until the deployer lands exits 1 ("nothing deployed"); after
/// it, 0. Either way the state directory and store exist afterwards.
fn boot(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut a = vec!["run", "--once"];
    a.extend_from_slice(args);
    let out = sb.run(&a, env);
    assert!(out.code == 0 || out.code == 1, "run --once failed before deploying: {out:?}");
    out
}

#[test]
fn each_layer_overrides_the_one_below_with_provenance() {
    let sb = Sandbox::new();
    let file = sb.write("sysdeploy.toml", "# node config\n[system_services.decider]\ndecider_period_sec = 10\n");
    let file_s = file.to_str().unwrap();

    let c = sb.config_json(&[], &[]);
    assert_eq!(value(&c, PERIOD)["value"], 120);
    assert_eq!(value(&c, PERIOD)["source"], "default");
    assert_eq!(c["config_file"], Json::Null);

    let c = sb.config_json(&["--config", file_s], &[]);
    assert_eq!(value(&c, PERIOD)["value"], 10);
    assert_eq!(value(&c, PERIOD)["source"], format!("{file_s}:3"));
    assert_eq!(value(&c, PERIOD)["origin"]["line"], 3);
    assert_eq!(value(&c, "system_services.decider.worker_period_sec")["source"], "default");

    let c = sb.config_json(&["--config", file_s], &[(PERIOD_ENV, "20")]);
    assert_eq!(value(&c, PERIOD)["value"], 20, "env values are typed by the schema");
    assert_eq!(value(&c, PERIOD)["source"], format!("env {PERIOD_ENV}"));

    let set = format!("{PERIOD}=30");
    let c = sb.config_json(&["--config", file_s, "--set", &set], &[(PERIOD_ENV, "20")]);
    assert_eq!(value(&c, PERIOD)["value"], 30);
    assert_eq!(value(&c, PERIOD)["source"], format!("flag --set {PERIOD}"));

    // The same for a [node] key with its dedicated flag, and the config path from env.
    let f2 = sb.write("node.toml", "[node]\nstate_dir = \"from-file\"\n");
    let f2s = f2.to_str().unwrap();
    let c = sb.config_json(&[], &[("SYSDEPLOY_CONFIG", f2s)]);
    assert_eq!(value(&c, "node.state_dir")["source"], format!("{f2s}:2"));
    let c = sb.config_json(&[], &[("SYSDEPLOY_CONFIG", f2s), ("SYSDEPLOY_NODE__STATE_DIR", "from-env")]);
    assert_eq!(value(&c, "node.state_dir")["value"], "from-env");
    let c = sb.config_json(&["--state-dir", "from-flag"], &[("SYSDEPLOY_CONFIG", f2s), ("SYSDEPLOY_NODE__STATE_DIR", "from-env")]);
    assert_eq!(value(&c, "node.state_dir")["value"], "from-flag");
    assert_eq!(value(&c, "node.state_dir")["source"], "flag --state-dir");

    // Comma list from env.
    let c = sb.config_json(&[], &[("SYSDEPLOY_SYSTEM_SERVICES__ENABLE", "registry,decider")]);
    assert_eq!(value(&c, "system_services.enable")["value"], serde_json::json!(["registry", "decider"]));
}

#[test]
fn human_config_output_shows_sources() {
    let sb = Sandbox::new();
    let file = sb.write("c.toml", "[node]\napi_listen = \"127.0.0.1:9000\"\n");
    let out = sb.run(&["config", "--config", file.to_str().unwrap()], &[(PERIOD_ENV, "60")]);
    assert_eq!(out.code, 0, "{out:?}");
    let line =
        |key: &str| out.stdout.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("{key} missing:\n{}", out.stdout)).to_string();
    assert!(line("node.api_listen ").contains("\"127.0.0.1:9000\"") && line("node.api_listen ").ends_with("c.toml:2"));
    assert!(line(PERIOD).contains("60") && line(PERIOD).ends_with(&format!("# env {PERIOD_ENV}")));
    assert!(line("node.state_dir").ends_with("# default"));
}

#[test]
fn malformed_toml_names_file_and_line() {
    let sb = Sandbox::new();
    let f = sb.write("bad.toml", "[node]\nstate_dir = \"x\"\napi_listen = \"unterminated\n");
    let out = sb.run(&["config", "--config", f.to_str().unwrap()], &[]);
    out.invalid(&["malformed TOML", &format!("{}:3:", f.display())]);
}

#[test]
fn wrong_type_in_file_names_key_value_source_and_expectation() {
    let sb = Sandbox::new();
    let f = sb.write("c.toml", "[system_services.decider]\ndecider_period_sec = \"often\"\n");
    let out = sb.run(&["config", "--config", f.to_str().unwrap()], &[]);
    out.invalid(&[&format!("{PERIOD} = \"often\" ({}:2): expected an integer", f.display())]);
}

#[test]
fn wrong_type_from_env_names_the_var() {
    let sb = Sandbox::new();
    let out = sb.run(&["config"], &[(PERIOD_ENV, "abc")]);
    out.invalid(&[&format!("{PERIOD} = \"abc\" (env {PERIOD_ENV}): expected an integer")]);
    let out = sb.run(&["config", "--api-listen", "nowhere"], &[]);
    out.invalid(&["node.api_listen = \"nowhere\" (flag --api-listen): expected an IP socket address"]);
}

#[test]
fn unknown_keys_are_errors() {
    let sb = Sandbox::new();
    let f = sb.write("c.toml", "[node]\nstate_dir = \"x\"\n\n[nodes]\napi_listen = \"127.0.0.1:1\"\n");
    sb.run(&["config", "--config", f.to_str().unwrap()], &[])
        .invalid(&[&format!("nodes ({}:4): unknown key (did you mean node?)", f.display())]);

    let f = sb.write("d.toml", "[system_services.registry]\nexpired_period = 5\n");
    sb.run(&["config", "--config", f.to_str().unwrap()], &[]).invalid(&[
        &format!("system_services.registry.expired_period ({}:2): unknown key", f.display()),
        "did you mean system_services.registry.expired_period_sec?",
    ]);

    sb.run(&["config"], &[("SYSDEPLOY_SYSTEM_SERVICES__NOPE__X", "1")])
        .invalid(&["system_services.nope.x (env SYSDEPLOY_SYSTEM_SERVICES__NOPE__X): unknown key"]);
}

#[test]
fn unknown_package_in_enable() {
    let sb = Sandbox::new();
    let f = sb.write("c.toml", "[system_services]\nenable = [\"registry\", \"regsitry\"]\n");
    sb.run(&["config", "--config", f.to_str().unwrap()], &[]).invalid(&[
        &format!("system_services.enable = [\"registry\", \"regsitry\"] ({}:2): unknown package \"regsitry\"", f.display()),
        "embedded packages are: ",
    ]);
    let out = sb.run(&["config", "--config", f.to_str().unwrap()], &[]);
    for p in ["aqua-ipfs", "trust-graph", "registry", "decider"] {
        assert!(out.stderr.contains(p), "embedded packages are listed: {}", out.stderr);
    }
    sb.run(&["config"], &[("SYSDEPLOY_SYSTEM_SERVICES__ENABLE", "decider,ipfs")])
        .invalid(&["(env SYSDEPLOY_SYSTEM_SERVICES__ENABLE): unknown package \"ipfs\""]);
}

#[test]
fn missing_config_path() {
    let sb = Sandbox::new();
    sb.run(&["config", "--config", "/nonexistent/sysdeploy.toml"], &[])
        .invalid(&["config file /nonexistent/sysdeploy.toml (from flag --config) does not exist"]);
    sb.run(&["config"], &[("SYSDEPLOY_CONFIG", "/nonexistent/env.toml")])
        .invalid(&["config file /nonexistent/env.toml (from env SYSDEPLOY_CONFIG) does not exist"]);
}

#[test]
fn unreadable_config_file() {
    let sb = Sandbox::new();
    // A directory where the file should be.
    let d = sb.path("confdir");
    fs::create_dir(&d).unwrap();
    sb.run(&["config", "--config", d.to_str().unwrap()], &[]).invalid(&["cannot be read: it is a directory"]);

    // A fifo: reading it would block the boot forever; it is refused up front.
    let fifo = sb.path("conf.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().map(|s| s.success()).unwrap_or(false);
    if made {
        sb.run(&["config", "--config", fifo.to_str().unwrap()], &[]).invalid(&["it is not a regular file"]);
    } else {
        eprintln!("skipping the fifo case: mkfifo is not available");
    }

    // Bytes that are not text.
    let bin = sb.path("bin.toml");
    fs::write(&bin, b"[node]\nstate_dir = \"\xff\xfe\"\n").unwrap();
    sb.run(&["config", "--config", bin.to_str().unwrap()], &[]).invalid(&["cannot be read: it is not UTF-8"]);

    // No read permission. Root reads any file, so as root the binary runs
    // as an unprivileged uid (nobody); a readable twin shows that uid gets
    // through the sandbox and only the mode stops it.
    fs::set_permissions(sb.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let readable = sb.write("readable.toml", "[node]\n");
    fs::set_permissions(&readable, fs::Permissions::from_mode(0o644)).unwrap();
    let locked = sb.write("locked.toml", "[node]\n");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let ok = sb.run_unprivileged(&["config", "--config", readable.to_str().unwrap()]);
    assert_eq!(ok.code, 0, "the unprivileged uid must read a 0644 file: {ok:?}");
    sb.run_unprivileged(&["config", "--config", locked.to_str().unwrap()]).invalid(&["cannot be read", "Permission denied"]);
}

#[test]
fn several_problems_are_all_reported() {
    let sb = Sandbox::new();
    let f = sb.write("c.toml", "bogus = 1\n[system_services]\non_failure = \"halt\"\nenable = [\"nope\"]\n");
    let out = sb.run(&["config", "--config", f.to_str().unwrap(), "--set", "node.api_listen=x"], &[(PERIOD_ENV, "soon")]);
    out.invalid(&[
        "invalid configuration (5 problems)",
        "bogus (",
        "system_services.on_failure = \"halt\"",
        "unknown package \"nope\"",
        &format!("env {PERIOD_ENV}"),
        "flag --set node.api_listen",
    ]);
}

#[test]
fn bad_config_leaves_the_disk_untouched() {
    let sb = Sandbox::new();
    let f = sb.write("c.toml", "[node]\nstate_dir = 5\n");
    for cmd in ["run", "status", "plan", "config"] {
        let out = sb.run(&[cmd, "--config", f.to_str().unwrap(), "--state-dir", "sd"], &[]);
        out.invalid(&["node.state_dir = 5"]);
    }
    let out = sb.run(&["run", "--state-dir", "sd"], &[(PERIOD_ENV, "x")]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(!sb.path("sd").exists(), "state dir created despite bad config");
    assert!(!sb.path(".sysdeploy").exists());
}

#[test]
fn second_process_on_a_locked_state_dir_exits_3_naming_the_pid() {
    let sb = Sandbox::new();
    let dir = sb.path("sd");
    // This test process is the "running node": it holds the lock.
    let held = sysdeploy::state::StateDir::open_exclusive(&dir).unwrap();
    let out = sb.run(&["run", "--state-dir", "sd"], &[]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains(&format!("pid {}", std::process::id())), "{}", out.stderr);
    assert!(out.stderr.contains("locked by another sysdeploy process"), "{}", out.stderr);

    // Readers never take the lock and keep working.
    let st = sb.run(&["status", "--json", "--state-dir", "sd"], &[]);
    assert_eq!(st.code, 0, "{st:?}");
    assert_eq!(st.json()["peer_id"], held.peer_id().as_str());
    drop(held);
    boot(&sb, &["--state-dir", "sd"], &[]);
}

#[test]
fn key_files_are_private_and_the_peer_id_is_stable() {
    let sb = Sandbox::new();
    let before = sb.run(&["status"], &[]);
    assert_eq!(before.code, 0, "{before:?}");
    assert!(before.stdout.contains("no deployment yet"), "{before:?}");
    assert!(!sb.path(".sysdeploy").exists(), "status must not create the state dir");

    boot(&sb, &[], &[]);
    let dir = sb.path(".sysdeploy");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("node.key")), 0o600);
    assert_eq!(mode(&dir.join("api.token")), 0o600);
    assert!(dir.join("state.db").exists());

    let first = sb.run(&["status", "--json"], &[]).json();
    let peer = first["peer_id"].as_str().unwrap().to_string();
    assert!(peer.starts_with("12D3KooW"), "{peer}");
    assert_eq!(first["store"]["schema_version"], first["store"]["known_schema_version"]);
    boot(&sb, &[], &[]);
    assert_eq!(sb.run(&["status", "--json"], &[]).json()["peer_id"], peer.as_str(), "peer id changed across restarts");
    let human = sb.run(&["status"], &[]);
    assert!(human.stdout.contains(&peer), "{human:?}");
}

#[test]
fn a_damaged_key_is_refused_not_replaced() {
    let sb = Sandbox::new();
    boot(&sb, &[], &[]);
    let key = sb.path(".sysdeploy/node.key");
    fs::write(&key, b"0123456789").unwrap();
    let out = sb.run(&["run", "--once"], &[]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("has 10 bytes, expected a 32-byte ed25519 seed"), "{}", out.stderr);
    assert_eq!(fs::read(&key).unwrap(), b"0123456789");
}

#[test]
fn a_newer_store_schema_exits_3() {
    let sb = Sandbox::new();
    boot(&sb, &[], &[]);
    let db = sb.path(".sysdeploy/state.db");
    rusqlite::Connection::open(&db).unwrap().pragma_update(None, "user_version", 999).unwrap();
    for args in [&["run", "--once"][..], &["status"][..]] {
        let out = sb.run(args, &[]);
        assert_eq!(out.code, 3, "{args:?}: {out:?}");
        assert!(out.stderr.contains("schema version 999, newer than"), "{}", out.stderr);
    }
}

#[test]
fn secrets_never_reach_output_or_logs() {
    let sb = Sandbox::new();
    let secret = "0xWALLET-S3CRET-77";
    let env = [(WALLET_ENV, secret), ("RUST_LOG", "trace")];
    let mut outs = vec![
        sb.run(&["config"], &env),
        sb.run(&["config", "--json"], &env),
        boot(&sb, &[], &env),
        boot(&sb, &["--log-format", "json"], &env),
        sb.run(&["status"], &env),
        sb.run(&["plan"], &env),
        sb.run(&["config", "--set", &format!("system_services.decider.wallet_key={secret}")], &[("RUST_LOG", "trace")]),
        // A bad config elsewhere must not make the loader echo the secret.
        sb.run(&["run", "--once", "--set", "node.api_listen=bad"], &env),
        sb.run(&["config"], &[("SYSDEPLOY_SYSTEM_SERVICES__DECIDER__WALET_KEY", secret)]),
    ];
    let c = outs.remove(1);
    assert_eq!(c.json()["values"]["system_services.decider.wallet_key"]["value"], "<redacted>");
    assert!(!c.all().contains(secret));
    assert!(outs[0].stdout.contains("<redacted>"), "{:?}", outs[0]);
    for out in outs {
        assert!(!out.all().contains(secret), "secret leaked: {out:?}");
    }
}

#[test]
fn deprecated_env_names_work_with_a_warning() {
    let sb = Sandbox::new();
    let legacy = "FLUENCE_ENV_AQUA_IPFS_EXTERNAL_API_MULTIADDR";
    let out = sb.run(&["config", "--json"], &[(legacy, "/ip4/10.0.0.1/tcp/5001")]);
    assert_eq!(out.code, 0, "{out:?}");
    let c = out.json();
    let v = value(&c, "system_services.aqua_ipfs.external_api_multiaddr");
    assert_eq!(v["value"], "/ip4/10.0.0.1/tcp/5001");
    assert_eq!(v["source"], format!("env {legacy} (deprecated)"));
    assert!(c["warnings"][0].as_str().unwrap().contains("SYSDEPLOY_SYSTEM_SERVICES__AQUA_IPFS__EXTERNAL_API_MULTIADDR"));
    assert!(out.stderr.contains("deprecated"), "the warning is logged too: {}", out.stderr);
}

#[test]
fn json_logs_are_json_lines() {
    let sb = Sandbox::new();
    let out = boot(&sb, &["--log-format", "json"], &[("RUST_LOG", "debug")]);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: Json = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v["level"].is_string(), "{l}");
    }
}

#[test]
fn help_and_argument_errors() {
    let sb = Sandbox::new();
    let help = sb.run(&["--help"], &[]);
    assert_eq!(help.code, 0);
    for word in ["run", "plan", "status", "config", "call", "SYSDEPLOY_CONFIG", "Exit codes"] {
        assert!(help.stdout.contains(word), "help lacks {word}");
    }
    let call = sb.run(&["call", "--help"], &[]);
    assert_eq!(call.code, 0);
    assert!(call.stdout.contains("JSON-ARGS") && call.stdout.contains("ALIAS"), "{}", call.stdout);

    assert_eq!(sb.run(&["deploy"], &[]).code, 2);
    assert_eq!(sb.run(&["--log-format", "xml", "config"], &[]).code, 2);
    assert_eq!(sb.run(&["config", "--set", "novalue"], &[]).code, 2);
    sb.run(&["call", "registry", "get", "{not json"], &[]).invalid(&["is not a JSON array"]);
    sb.run(&["call", "Bad/Alias", "get"], &[]).invalid(&["alias \"Bad/Alias\""]);
}

/// The example config sets every non-secret key (each value's source is a
/// line of the example file), with the embedded default as its value.
#[test]
fn the_example_config_is_valid_and_matches_the_defaults() {
    let sb = Sandbox::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sysdeploy.example.toml");
    let with_file = sb.config_json(&["--config", example.to_str().unwrap()], &[]);
    let defaults = sb.config_json(&[], &[]);
    let from_example = format!("{}:", example.display());
    let mut missing = Vec::new();
    for (key, v) in with_file["values"].as_object().unwrap() {
        let source = v["source"].as_str().unwrap();
        if v["secret"] != true && !source.starts_with(&from_example) {
            missing.push(format!("{key} (from {source})"));
        }
    }
    assert!(missing.is_empty(), "the example config lacks these keys:\n  {}", missing.join("\n  "));
    assert!(defaults["values"].as_object().unwrap().len() > 10, "{defaults}");
    for (key, v) in defaults["values"].as_object().unwrap() {
        let (mut ours, mut theirs) = (with_file["values"][key]["value"].clone(), v["value"].clone());
        if key == "system_services.enable" {
            // Same packages; the example may list them in another order.
            for list in [&mut ours, &mut theirs] {
                list.as_array_mut().unwrap().sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
        assert_eq!(ours, theirs, "{key}: the example disagrees with the embedded default");
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let ci = fs::read_to_string(root.join(".ci/run")).unwrap();
    let cmd = "cargo test --workspace --all-features";
    assert!(readme.contains(cmd), "README lost its test command");
    assert_eq!(ci.lines().filter(|l| l.trim_start().starts_with("cargo test")).collect::<Vec<_>>(), vec![cmd]);
    assert!(fs::metadata(root.join(".ci/run")).unwrap().permissions().mode() & 0o111 != 0, ".ci/run is not executable");
}
