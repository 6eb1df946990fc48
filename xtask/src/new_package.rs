//! `cargo xtask new-package NAME [--lang rust] [--dir DIR]`: writes a working
//! package — manifest, WIT importing the host interface, a Rust guest crate,
//! a config key feeding an init call, a spell that calls the service and a
//! test that deploys it — then builds its component and records it in a lock.
//!
//! Two layouts:
//! - in the repo (`--dir distros`, the default): the guest is a member of the
//!   `distros/` workspace, built by `cargo xtask distros` and recorded in
//!   `distros/artifacts.lock`, like the embedded packages;
//! - anywhere else: the package is self-contained (its own Cargo workspace
//!   and `Cargo.lock` in `guest/`, the host WIT copied to
//!   `wit/deps/sysdeploy-host/`, its own `artifacts.lock`), rebuilt by
//!   `cargo xtask build-package DIR`.
//!
//! Depends only on std, blake3 and `lock.rs` (`tests/kit.rs` includes it with `#[path]`).

use crate::lock;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Checks a package name: kebab-case words, each starting with a letter (so
/// it is also a WIT package and world name and a Cargo crate name).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.split('-').all(|w| {
            let mut c = w.chars();
            c.next().is_some_and(|f| f.is_ascii_lowercase()) && c.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "package name {name:?} is not valid: expected kebab-case words that each start with a lowercase letter \
             (letters a-z, digits, single '-' between words, at most 48 bytes), e.g. \"hello-kit\""
        ))
    }
}

/// Whether `parent` is the repo's `distros/` (the package then joins its workspace).
pub fn in_repo(repo: &Path, parent: &Path) -> bool {
    match (std::fs::canonicalize(repo.join("distros")), std::fs::canonicalize(parent)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Writes the package folder `<parent>/<name>/`; refuses an existing one.
/// Returns the package folder.
pub fn scaffold(repo: &Path, name: &str, lang: &str, parent: &Path) -> Result<PathBuf, String> {
    check_name(name)?;
    if lang != "rust" {
        return Err(format!(
            "--lang {lang:?} is not supported by the scaffold; expected \"rust\" (Python and JavaScript guests: see docs/packages.md)"
        ));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(format!("{} already exists; choose another name or remove it", dir.display()));
    }
    let repo_mode = parent.is_dir() && in_repo(repo, parent);
    let snake = name.replace('-', "_");
    let sub = |t: &str| t.replace("@NAME@", name).replace("@SNAKE@", &snake);

    write(&dir.join("distro.toml"), &sub(DISTRO_TOML))?;
    write(&dir.join(format!("{name}-spell.rhai")), &sub(SPELL))?;
    write(&dir.join(format!("wit/{name}.wit")), &sub(WIT))?;
    write(&dir.join("guest/tests/deploy.rs"), &sub(DEPLOY_TEST))?;
    if repo_mode {
        write(&dir.join("guest/Cargo.toml"), &sub(CARGO_TOML_MEMBER))?;
        write(&dir.join("guest/src/lib.rs"), &sub(LIB_RS).replace("@WIT_PATH@", r#"["../../../wit/host.wit", "../wit"]"#))?;
    } else {
        write(&dir.join("guest/Cargo.toml"), &sub(CARGO_TOML_STANDALONE))?;
        write(&dir.join("guest/src/lib.rs"), &sub(LIB_RS).replace("@WIT_PATH@", r#""../wit""#))?;
        let host = std::fs::read_to_string(repo.join("wit/host.wit")).map_err(|e| format!("reading wit/host.wit: {e}"))?;
        write(&dir.join("wit/deps/sysdeploy-host/host.wit"), &host)?;
        // Start from the repo's pinned versions (wit-bindgen and friends);
        // cargo prunes what the guest does not use.
        let pinned = std::fs::read_to_string(repo.join("distros/Cargo.lock")).map_err(|e| format!("reading distros/Cargo.lock: {e}"))?;
        write(&dir.join("guest/Cargo.lock"), &pinned)?;
        write(&dir.join(".gitignore"), "guest/target/\n")?;
    }
    Ok(dir)
}

/// The sources hashed into a self-contained package's lock entry.
pub const STANDALONE_INPUTS: &[&str] = &["guest", "wit"];

/// The build command of a self-contained package, run from its folder.
pub fn standalone_command() -> Vec<String> {
    ["cargo", "build", "--release", "--target", "wasm32-wasip2", "--locked", "--manifest-path", "guest/Cargo.toml"]
        .map(str::to_string)
        .to_vec()
}

/// Builds a self-contained package's component into `<dir>/<crate>.wasm`
/// and rewrites `<dir>/artifacts.lock`. `target_dir`: cargo's target dir
/// (default `<dir>/guest/target`).
pub fn build_standalone(dir: &Path, target_dir: Option<&Path>) -> Result<PathBuf, String> {
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let crate_name = lock::crate_name(&dir.join("guest/Cargo.toml"))?;
    let target_dir = target_dir.map(Path::to_path_buf).unwrap_or_else(|| dir.join("guest/target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    // Paths inside the artifact must not depend on where the package lives.
    let rustflags =
        [format!("--remap-path-prefix={}=/package", dir.display()), format!("--remap-path-prefix={}=/cargo", home.display())].join("\x1f");
    let run = |args: &[String], what: &str| -> Result<(), String> {
        let status = Command::new(&cargo)
            .current_dir(&dir)
            .args(args)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env("CARGO_ENCODED_RUSTFLAGS", &rustflags)
            .status()
            .map_err(|e| format!("running cargo: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)"))
        }
    };
    // Settle Cargo.lock first, so the recorded build is `--locked`.
    run(
        &["metadata", "--format-version", "1", "--manifest-path", "guest/Cargo.toml"].map(str::to_string),
        "resolving the guest's dependencies",
    )?;
    let mut args = standalone_command()[1..].to_vec();
    args.push("--target-dir".into());
    args.push(target_dir.display().to_string());
    println!("building {}: {}", dir.display(), standalone_command().join(" "));
    run(&args, "building the guest")?;
    let built = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", crate_name.replace('-', "_")));
    let artifact = format!("{crate_name}.wasm");
    std::fs::copy(&built, dir.join(&artifact)).map_err(|e| format!("copying {} into the package: {e}", built.display()))?;
    let version = Command::new("rustc").arg("--version").output().map_err(|e| format!("running rustc --version: {e}"))?;
    let inputs: Vec<String> = STANDALONE_INPUTS.iter().map(|s| s.to_string()).collect();
    let bytes = std::fs::read(dir.join(&artifact)).map_err(|e| format!("reading {artifact}: {e}"))?;
    let entry = lock::Entry {
        artifact: artifact.clone(),
        artifact_blake3: blake3::hash(&bytes).to_hex().to_string(),
        sources_blake3: lock::hash_sources(&dir, &inputs)?,
        toolchain: String::from_utf8_lossy(&version.stdout).trim().to_string(),
        command: standalone_command().join(" "),
        inputs,
    };
    let text = format!(
        "# blake3 of this package's component and of its sources, with the toolchain and the command\n\
         # (run from this folder) that built it. Written by `cargo xtask build-package`; checked by\n\
         # `sysdeploy package check`.\n{}",
        lock::render_entry(&entry)
    );
    write(&dir.join(lock::PACKAGE_LOCK), &text)?;
    println!("wrote {} ({artifact} {})", dir.join(lock::PACKAGE_LOCK).display(), entry.artifact_blake3);
    Ok(dir.join(artifact))
}

const DISTRO_TOML: &str = r#"# @NAME@: written by `cargo xtask new-package`; see docs/packages.md.
[package]
name = "@NAME@"
version = "0.1.0"

[config.greeting]
type = "string"
default = "hello"
doc = "how @NAME@ greets; handed to the service by its init call"

[config.spell_period_sec]
type = "integer"
default = 60
doc = "how often the @NAME@-spell runs, in seconds"

[[service]]
alias = "@NAME@"
components = ["@NAME@.wasm"]
keep_data = true          # /data survives a blue-green replace
memory_limit_mb = 32

[[service.init]]
function = "set-greeting"
args = ["${config.greeting}"]
run = "on-change"         # again whenever the greeting changes

[[spell]]
alias = "@NAME@-spell"
script = "@NAME@-spell.rhai"
trigger = { clock = { start = "now", period_sec = "${config.spell_period_sec}" } }
kv = { who = "@NAME@-spell" }
"#;

const SPELL: &str = r#"// @NAME@-spell: greets the service and keeps what it answered in its KV.
let who = kv_get("who");
if type_of(who) != "string" {
    who = spell_alias();
}
let answer = call_service("@NAME@", "greet", [who]);
kv_set("last_answer", answer);
log("info", `@NAME@ answered: ${answer}`);
"#;

const WIT: &str = r#"/// @NAME@: written by `cargo xtask new-package`; edit freely, then rebuild
/// (see docs/packages.md for the JSON⇄WIT mapping of calls).
package sysdeploy:@NAME@@0.1.0;

world @NAME@ {
    /// log, peer-id, now-ms: what the node offers beyond WASI.
    import sysdeploy:host/node@0.1.0;

    /// Init call (distro.toml): stores the greeting in /data.
    export set-greeting: func(greeting: string) -> result<_, string>;
    /// "<greeting>, <name>!"; counts the calls in /data.
    export greet: func(name: string) -> string;
    /// How many times greet was called.
    export calls: func() -> u64;
}
"#;

const CARGO_TOML_MEMBER: &str = r#"[package]
name = "@NAME@"
version = "0.1.0"
edition.workspace = true
publish.workspace = true
license.workspace = true
description = "@NAME@: written by cargo xtask new-package"

[lib]
crate-type = ["cdylib"]

[dependencies]
wit-bindgen.workspace = true
"#;

const CARGO_TOML_STANDALONE: &str = r#"# @NAME@'s guest: its own workspace, built for wasm32-wasip2 by
# `cargo xtask build-package <package folder>` (see docs/packages.md).
[workspace]

[package]
name = "@NAME@"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
wit-bindgen = { version = "0.61", default-features = false, features = ["macros", "realloc", "std"] }

# Size first: the node compiles components on first boot.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"
debug = false
"#;

const LIB_RS: &str = r#"//! @NAME@: a sysdeploy service written by `cargo xtask new-package`.
//!
//! Its state lives in `/data`, the service's private data directory (the
//! only directory it can see), so it survives restarts and, with
//! `keep_data = true`, blue-green replaces.

wit_bindgen::generate!({
    world: "sysdeploy:@NAME@/@NAME@",
    path: @WIT_PATH@,
    generate_all,
});

use sysdeploy::host::node::{log, Level};

const GREETING: &str = "/data/greeting";
const CALLS: &str = "/data/calls";

/// What `greet` answers.
pub fn greeting_for(greeting: &str, name: &str) -> String {
    format!("{greeting}, {name}!")
}

fn read_u64(path: &str) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

struct Service;

impl Guest for Service {
    fn set_greeting(greeting: String) -> Result<(), String> {
        if greeting.trim().is_empty() {
            // An `err` fails the init call: the deployment reports it.
            return Err("greeting must not be empty".into());
        }
        std::fs::write(GREETING, &greeting).map_err(|e| format!("writing {GREETING}: {e}"))?;
        log(Level::Info, &format!("greeting set to {greeting:?}"));
        Ok(())
    }

    fn greet(name: String) -> String {
        let _ = std::fs::write(CALLS, (read_u64(CALLS) + 1).to_string());
        let greeting = std::fs::read_to_string(GREETING).unwrap_or_else(|_| "hello".into());
        greeting_for(&greeting, &name)
    }

    fn calls() -> u64 {
        read_u64(CALLS)
    }
}

export!(Service);

#[cfg(test)]
mod tests {
    #[test]
    fn greets_by_name() {
        assert_eq!(super::greeting_for("hi", "ana"), "hi, ana!");
    }
}
"#;

const DEPLOY_TEST: &str = r##"//! Deploys this package with a real node and calls it: `sysdeploy run` on a
//! free port with a temp state dir, the package's folder as --distros-dir,
//! then `sysdeploy call`. Needs the `sysdeploy` binary: $SYSDEPLOY_BIN, or
//! `sysdeploy` on PATH (skipped, loudly, without one). Build the component first (`cargo xtask
//! build-package <package folder>`, or `cargo xtask distros` in the repo).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(180);

/// $SYSDEPLOY_BIN, else `sysdeploy` on PATH.
fn find_sysdeploy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SYSDEPLOY_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("sysdeploy")).find(|f| f.is_file()))
}

fn sysdeploy() -> PathBuf {
    find_sysdeploy().expect("checked at the start of the test")
}

/// A `sysdeploy` command. SYSDEPLOY_* variables are config overrides to it,
/// so SYSDEPLOY_BIN is not passed on.
fn node_cmd() -> Command {
    let mut c = Command::new(sysdeploy());
    c.env_remove("SYSDEPLOY_BIN");
    c
}

struct Node {
    child: Child,
    state: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

impl Node {
    fn cli(&self, args: &[&str]) -> Output {
        node_cmd().arg("--state-dir").arg(&self.state).args(args).stdin(Stdio::null()).output().unwrap()
    }
    /// `sysdeploy call`; the JSON answer.
    fn call(&self, function: &str, args: &str) -> String {
        let o = self.cli(&["call", "@NAME@", function, args]);
        assert!(o.status.success(), "call {function} failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
    /// Waits until `ok` holds, failing if the node exits or PATIENCE runs out.
    fn wait(&mut self, what: &str, mut ok: impl FnMut(&Node) -> bool) {
        let start = Instant::now();
        while !ok(self) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sysdeploy exited ({status}) while waiting for {what}");
            }
            assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn deploys_and_answers() {
    if find_sysdeploy().is_none() {
        eprintln!("SKIPPED deploys_and_answers: it deploys the package with the `sysdeploy` binary; set SYSDEPLOY_BIN or put sysdeploy on PATH");
        return;
    }
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    assert!(package.join("@NAME@.wasm").is_file(), "build the component first: cargo xtask build-package {}", package.display());
    let state = std::env::temp_dir().join(format!("@NAME@-deploy-test-{}", std::process::id()));
    let child = node_cmd()
        .arg("--state-dir")
        .arg(&state)
        .arg("--distros-dir")
        .arg(package.parent().unwrap())
        .args(["--api-listen", "127.0.0.1:0", "--set", "system_services.enable=@NAME@", "--set", "system_services.@SNAKE@.greeting=hi", "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut node = Node { child, state };
    node.wait("the node to be ready", |n| n.cli(&["health"]).status.success());
    // The init call handed the configured greeting to the service.
    assert_eq!(node.call("greet", r#"["test"]"#), r#""hi, test!""#);
    // The spell ran (start = "now") and called the service too.
    node.wait("the spell's call", |n| n.call("calls", "[]").parse::<u64>().unwrap_or(0) >= 2);
}
"##;
