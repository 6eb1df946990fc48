//! The hostile input corpus (`tests/corpus/`): config files, env values and
//! distros folders (via `--distros-dir`) that are wrong, huge, deeply nested,
//! not UTF-8, or try path traversal, duplicate aliases and dependency
//! cycles; plus generated inputs too big to commit. Each must make `run` and
//! `plan` exit 2 with a clear message (the case's own expected fragments —
//! every case has at least one that names its problem —, no panic, no dump
//! of the input) while the state directory stays byte-for-byte as it was,
//! lock file included. The `@plan-time` cases are found after `run` took the
//! state dir's lock: for them every file but the lock (which names the last
//! holder's pid) must be byte-for-byte as it was.
//!
//! Case files: `config/<case>.toml` and `env/<case>.env` start with a
//! `# expect: a | b` line; `manifests/<case>/` is a distros folder with an
//! `expect.txt` (one fragment a line). An empty `*.wasm` in a case stands
//! for a valid component (the v1 kv-store build is put there), so the
//! corpus carries no binaries. The manifest cases of `tests/ui/manifests/`
//! are run through the binary as well, each expecting the lines of its
//! `expected.txt` with `distros/` replaced by the case's folder.

use super::common::*;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bigger than any message about a bad input should be.
const MAX_STDERR: usize = 64 * 1024;

fn corpus() -> PathBuf {
    repo().join("tests/corpus")
}

/// One hostile input.
struct Case {
    name: String,
    /// Extra arguments (`--config F`, `--distros-dir D`).
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    expect: Vec<String>,
    /// Found only by the plan (init functions and argument types against the
    /// compiled facade), after `run` took the lock: every file but the lock
    /// must be unchanged (see RELIABILITY.md, "Known limits"). Marked
    /// `@plan-time` in `expect.txt`.
    plan_time: bool,
}

/// The sandbox every case runs against: a node converged with the default
/// test distros, so there is a store, services, data and spells to protect.
struct Target {
    sb: Sandbox,
    want: Want,
    before: BTreeMap<String, String>,
    /// A pristine copy of the state dir, restored after a case that changed it.
    pristine: tempfile::TempDir,
}

/// The lock file: `run` rewrites it with its own pid once it holds the lock.
const LOCK: &str = "lock";

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for p in sorted_entries(from) {
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &dst);
        } else {
            fs::copy(&p, &dst).unwrap();
        }
    }
}

impl Target {
    fn new() -> Target {
        let sb = Sandbox::new();
        let want = Want::default();
        sb.converge(&want);
        let before = sb.tree();
        let pristine = tempfile::tempdir().unwrap();
        copy_tree(&sb.state_dir(), pristine.path());
        Target { sb, want, before, pristine }
    }

    /// Runs `run --once` and `plan` with the case's input; both must exit 2
    /// with the expected fragments, and the state dir must be unchanged.
    fn check(&self, case: &Case) -> Result<(), String> {
        let good_distros = self.sb.distros(&self.want);
        for cmd in [&["run", "--once"][..], &["plan"][..]] {
            let mut args: Vec<OsString> = cmd.iter().map(OsString::from).collect();
            args.push("--state-dir".into());
            args.push(self.sb.state_dir().into());
            if !case.args.iter().any(|a| a == "--distros-dir") {
                args.push("--distros-dir".into());
                args.push(good_distros.clone().into());
            }
            args.extend(case.args.iter().cloned());
            let out = Command::new(&*BIN)
                .args(&args)
                .current_dir(self.sb.dir.path())
                .env_clear()
                .envs(case.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .output()
                .expect("run sysdeploy");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let what = format!("case {} ({})", case.name, cmd.join(" "));
            if out.status.code() != Some(2) {
                return Err(format!("{what}: exit {:?}, expected 2\nstderr: {}", out.status, truncate(&stderr)));
            }
            if stderr.contains("panicked") {
                return Err(format!("{what}: panicked: {}", truncate(&stderr)));
            }
            if !stderr.contains("error") {
                return Err(format!("{what}: no error message: {}", truncate(&stderr)));
            }
            if case.expect.is_empty() {
                return Err(format!(
                    "{what}: the case expects no fragment; every failure prints \"error\", so give it one that names its problem:\n{}",
                    truncate(&stderr)
                ));
            }
            if stderr.len() > MAX_STDERR {
                return Err(format!("{what}: {} bytes of stderr; a message should name the problem, not dump the input", stderr.len()));
            }
            for e in &case.expect {
                if !stderr.contains(e.as_str()) {
                    return Err(format!("{what}: stderr lacks {e:?}:\n{}", truncate(&stderr)));
                }
            }
            let (mut after, mut before) = (self.sb.tree(), self.before.clone());
            if case.plan_time {
                after = tree_but_lock_pid(&self.sb.state_dir());
                if let Some(lock) = before.get_mut(LOCK) {
                    *lock = after[LOCK].clone();
                }
                // `plan` reads the store through a read-only SQLite
                // connection, which creates the WAL index (`state.db-shm`)
                // and an empty `state.db-wal` and cannot remove them (see
                // RELIABILITY.md, "Known limits"); nothing may be in the WAL.
                if cmd == ["plan"] {
                    after = without_reader_files(after);
                }
            }
            if after != before || case.plan_time {
                // Back to the pristine copy (for a plan-time case: its lock).
                fs::remove_dir_all(self.sb.state_dir()).unwrap();
                copy_tree(self.pristine.path(), &self.sb.state_dir());
            }
            if after != before {
                return Err(format!("{what}: the state dir changed: {}", diff(&before, &after)));
            }
        }
        Ok(())
    }
}

fn truncate(s: &str) -> String {
    if s.len() > 4000 {
        format!("{}… ({} bytes)", &s[..s.char_indices().nth(4000).map(|(i, _)| i).unwrap_or(s.len())], s.len())
    } else {
        s.to_string()
    }
}

fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("-{k}")),
            Some(w) if w != v => out.push(format!("~{k}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.push(format!("+{k}"));
    }
    out.join(" ")
}

/// The `# expect: a | b` line of a config or env case.
fn expect_line(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let first = text.trim_start_matches('\u{feff}').lines().next().unwrap_or("");
    let list = first.strip_prefix("# expect:").unwrap_or_else(|| panic!("case must start with `# expect:`: {first:?}"));
    list.split('|').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// Copies a manifest case into `to`, putting the v1 component where the
/// case has an empty `.wasm` placeholder.
fn copy_case(from: &Path, to: &Path, wasm: &[u8]) {
    fs::create_dir_all(to).unwrap();
    for p in sorted_entries(from) {
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_case(&p, &dst, wasm);
        } else if p.extension().is_some_and(|e| e == "wasm") && fs::metadata(&p).unwrap().len() == 0 {
            fs::write(&dst, wasm).unwrap();
        } else {
            fs::copy(&p, &dst).unwrap();
        }
    }
}

fn file_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for p in sorted_entries(&corpus().join("config")) {
        let bytes = fs::read(&p).unwrap();
        cases.push(Case {
            name: format!("config/{}", p.file_name().unwrap().to_string_lossy()),
            args: vec!["--config".into(), p.clone().into()],
            env: vec![],
            expect: expect_line(&bytes),
            plan_time: false,
        });
    }
    for p in sorted_entries(&corpus().join("env")) {
        let bytes = fs::read(&p).unwrap();
        let mut env = Vec::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty() && !l.starts_with(b"#")) {
            let eq = line.iter().position(|b| *b == b'=').expect("NAME=VALUE");
            env.push((OsString::from_vec(line[..eq].to_vec()), OsString::from_vec(line[eq + 1..].to_vec())));
        }
        cases.push(Case {
            name: format!("env/{}", p.file_name().unwrap().to_string_lossy()),
            args: vec![],
            env,
            expect: expect_line(&bytes),
            plan_time: false,
        });
    }
    cases
}

fn manifest_cases(scratch: &Path) -> Vec<Case> {
    let wasm = Build::V1.wasm();
    let mut cases = Vec::new();
    for case in sorted_entries(&corpus().join("manifests")) {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let dir = scratch.join("corpus").join(&name);
        copy_case(&case, &dir, &wasm);
        fs::remove_file(dir.join("expect.txt")).unwrap();
        let lines: Vec<String> =
            fs::read_to_string(case.join("expect.txt")).unwrap().lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
        let plan_time = lines.iter().any(|l| l == "@plan-time");
        let expect = lines.into_iter().filter(|l| !l.starts_with('@')).collect();
        cases.push(Case {
            name: format!("manifests/{name}"),
            args: vec!["--distros-dir".into(), dir.into()],
            env: vec![],
            expect,
            plan_time,
        });
    }
    // The UI cases of the manifest validator, end to end.
    for case in sorted_entries(&repo().join("tests/ui/manifests")) {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let dir = scratch.join("ui").join(&name);
        if case.join("distro.toml").exists() {
            copy_case(&case, &dir.join(&name), &wasm);
            fs::remove_file(dir.join(&name).join("expected.txt")).ok();
        } else {
            copy_case(&case, &dir, &wasm);
            fs::remove_file(dir.join("expected.txt")).ok();
        }
        // Its expected messages, with the paths the binary prints: the
        // validator's UI test names files under `distros/`, the binary
        // under the name of the `--distros-dir` folder (the case's name).
        let prefix = format!("{name}/");
        let expect = fs::read_to_string(case.join("expected.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.replace("distros/", &prefix))
            .collect();
        cases.push(Case {
            name: format!("ui/{name}"),
            args: vec!["--distros-dir".into(), dir.into()],
            env: vec![],
            expect,
            plan_time: false,
        });
    }
    cases
}

/// Inputs too big or too odd to commit.
fn generated_cases(scratch: &Path) -> Vec<Case> {
    let dir = scratch.join("generated");
    fs::create_dir_all(&dir).unwrap();
    let mut cases = Vec::new();
    let mut config = |name: &str, text: Vec<u8>, expect: &[&str]| {
        let p = dir.join(format!("{name}.toml"));
        fs::write(&p, text).unwrap();
        cases.push(Case {
            name: format!("generated/{name}"),
            args: vec!["--config".into(), p.into()],
            env: vec![],
            expect: expect.iter().map(|s| s.to_string()).collect(),
            plan_time: false,
        });
    };
    let depth = 50_000;
    config(
        "deep-array",
        format!("[system_services]\nenable = {}{}\n", "[".repeat(depth), "]".repeat(depth)).into_bytes(),
        &["deep-array.toml:2:", "max recursion depth met"],
    );
    config(
        "deep-inline-table",
        format!("[system_services]\nx = {}1{}\n", "{ a = ".repeat(depth), " }".repeat(depth)).into_bytes(),
        &["deep-inline-table.toml:2:", "max recursion depth met"],
    );
    config(
        "deep-dotted-key",
        format!("{} = 1\n", vec!["a"; depth].join(".")).into_bytes(),
        &["deep-dotted-key.toml:1:1", "recursion limit"],
    );
    config(
        "huge-integer-text",
        format!("[system_services]\ncall_ttl_ms = {}\n", "9".repeat(1 << 20)).into_bytes(),
        &["system_services.call_ttl_ms = 9999", "huge-integer-text.toml:2", "expected a positive integer"],
    );
    config("huge-unknown-key", format!("[system_services]\n{} = 1\n", "k".repeat(1 << 20)).into_bytes(), &["unknown key"]);
    config(
        "huge-wrong-value",
        format!("[system_services]\non_failure = \"{}\"\n", "x".repeat(8 << 20)).into_bytes(),
        &["system_services.on_failure"],
    );
    config(
        "many-problems",
        (0..10_000).map(|i| format!("[system_services.k{i}]\nx = 1\n")).collect::<String>().into_bytes(),
        &["10000 problems", "system_services.k0 (", "its value is not shown", "unknown key"],
    );
    config("invalid-utf8", b"[system_services.kv_store]\ngreeting = \"\xc3\x28\"\n".to_vec(), &["UTF-8"]);
    config("nul-bytes", b"[system_services.kv_store]\n\0greeting = \"a\"\n".to_vec(), &["nul-bytes.toml:2:1", "malformed TOML"]);

    cases.push(Case {
        name: "generated/env-huge-value".into(),
        args: vec![],
        env: vec![("SYSDEPLOY_SYSTEM_SERVICES__TICKER__THRESHOLD".into(), "7".repeat(100_000).into())],
        expect: vec!["SYSDEPLOY_SYSTEM_SERVICES__TICKER__THRESHOLD".into()],
        plan_time: false,
    });
    cases.push(Case {
        name: "generated/env-huge-list".into(),
        args: vec![],
        env: vec![("SYSDEPLOY_SYSTEM_SERVICES__ENABLE".into(), vec!["ghost"; 15_000].join(",").into())],
        expect: vec!["unknown package".into()],
        plan_time: false,
    });

    // Manifests.
    let wasm = Build::V1.wasm();
    let mut manifest = |name: &str, toml: Vec<u8>, extra: &dyn Fn(&Path), expect: &[&str]| {
        let d = dir.join(name);
        let p = d.join("p");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("distro.toml"), toml).unwrap();
        fs::write(p.join("kv.wasm"), &wasm).unwrap();
        extra(&p);
        cases.push(Case {
            name: format!("generated/manifests/{name}"),
            args: vec!["--distros-dir".into(), d.into()],
            env: vec![],
            expect: expect.iter().map(|s| s.to_string()).collect(),
            plan_time: false,
        });
    };
    let head = "[package]\nname = \"p\"\nversion = \"1.0.0\"\n";
    let service = "\n[[service]]\nalias = \"p\"\ncomponents = [\"kv.wasm\"]\n";
    manifest(
        "deep-nesting",
        format!("{head}x = {}{}\n", "[".repeat(depth), "]".repeat(depth)).into_bytes(),
        &|_| {},
        &["deep-nesting/p/distro.toml:4:", "max recursion depth met"],
    );
    manifest("invalid-utf8", [head.as_bytes(), b"description = \"\xff\xfe\"\n"].concat(), &|_| {}, &["UTF-8"]);
    manifest(
        "huge-doc",
        format!("{head}\n[config.k]\ntype = \"string\"\ndefault = \"a\"\ndoc = \"{}\"\nbogus = 1\n", "d".repeat(16 << 20)).into_bytes(),
        &|_| {},
        &["huge-doc/p/distro.toml:9:1", "unknown field `bogus`"],
    );
    manifest(
        "ten-thousand-services",
        format!(
            "{head}{}",
            (0..10_000)
                .map(|i| format!("\n[[service]]\nalias = \"s{i}\"\ncomponents = [\"kv.wasm\"]\nmemory_limit_mb = 0\n"))
                .collect::<String>()
        )
        .into_bytes(),
        &|_| {},
        &["service[0].memory_limit_mb: memory_limit_mb must be at least 1"],
    );
    manifest(
        "symlink-out-of-package",
        format!("{head}\n[[service]]\nalias = \"p\"\ncomponents = [\"evil.wasm\"]\n").into_bytes(),
        &|p| std::os::unix::fs::symlink("/etc/passwd", p.join("evil.wasm")).unwrap(),
        &["evil.wasm"],
    );
    manifest("symlinked-script-dir", format!("{head}{service}\n[[spell]]\nalias = \"s\"\nscript = \"up/etc/passwd.rhai\"\ntrigger = {{ clock = {{ start = \"now\", period_sec = 5 }} }}\n").into_bytes(), &|p| std::os::unix::fs::symlink("/", p.join("up")).unwrap(), &["spell[0].script"]);
    manifest(
        "huge-alias",
        format!("{head}\n[[service]]\nalias = \"{}\"\ncomponents = [\"kv.wasm\"]\n", "a".repeat(1 << 20)).into_bytes(),
        &|_| {},
        &["service[0].alias"],
    );
    cases
}

#[test]
fn hostile_inputs_exit_2_and_leave_the_state_dir_untouched() {
    let target = Target::new();
    let scratch = tempfile::tempdir().unwrap();
    let mut cases = file_cases();
    cases.extend(manifest_cases(scratch.path()));
    cases.extend(generated_cases(scratch.path()));
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(e) = target.check(case) {
            failures.push(e);
        }
    }
    let files = cases.iter().filter(|c| !c.name.starts_with("generated/")).count();
    println!(
        "hostile input corpus: {} cases ({files} from files, {} generated), each through `run --once` and `plan`",
        cases.len(),
        cases.len() - files
    );
    assert!(
        failures.is_empty(),
        "{} of {} hostile inputs were not refused cleanly:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
