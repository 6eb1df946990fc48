//! Fuzz-style property tests (proptest generators; `cargo fuzz` needs a
//! nightly toolchain this project does not use) over the two parsers that
//! face operator and developer input: the layered config loader (file, env,
//! `--set` flags) and the distro manifest loader (`Catalog::load_dir`).
//! Inputs are mutations of valid documents (token swaps, insertions of
//! hostile tokens, cuts, duplicated lines) and raw random text. The property:
//! no panic, and an input that is refused yields at least one message. Bounded
//! by case count (`RELIABILITY_FUZZ_CASES`, default 10,000 per parser).

use super::common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::fs;
use std::time::Instant;
use sysdeploy::config::{self, FlagValue, LoadOptions};
use sysdeploy::distro::Catalog;

const CONFIG: &str = r#"[node]
state_dir = ".sysdeploy"
api_listen = "127.0.0.1:7200"

[system_services]
enable = ["kv-store", "ticker"]
on_failure = "stop"
call_ttl_ms = 60000

[system_services.kv_store]
greeting = "hello"

[system_services.ticker]
period_sec = 60
threshold = 5
"#;

const MANIFEST: &str = r#"[package]
name = "p"
version = "1.0.0"
depends_on = []

[config.period]
type = "integer"
default = 60
doc = "period"

[config.name]
type = "string"
default = "x"
secret = false
legacy_env = ["FLUENCE_ENV_P_NAME"]

[[service]]
alias = "p"
components = ["kv.wasm"]
keep_data = true
memory_limit_mb = 64
on_config_change = "reinit"

[[service.init]]
function = "set-greeting"
args = ["${config.name}"]
run = "on-change"

[[spell]]
alias = "p-spell"
script = "s.rhai"
trigger = { clock = { start = "now", period_sec = "${config.period}" } }

[spell.kv]
name = "${config.name}"
n = 1
"#;

/// Tokens that tend to break parsers and validators.
const HOSTILE: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ".",
    ",",
    "\n",
    "\\",
    "\\u0000",
    "\u{0}",
    "\u{feff}",
    "\u{fffd}",
    "../",
    "/etc/passwd",
    "${",
    "${config.",
    "${config.period}",
    "${item}",
    "}}",
    "-1",
    "0",
    "18446744073709551616",
    "9223372036854775807",
    "1e400",
    "nan",
    "inf",
    "true",
    "\"\"\"",
    "'''",
    "#",
    "ü",
    "🦀",
    "a.b.c",
    "[x]",
    "[[service]]",
    "[[spell]]",
    "[config.x]",
    "type = \"list\"",
    "x = [[[[[[1]]]]]]",
    "\t",
    "\r\n",
    "kv-store",
    "ticker",
    "---",
    "0x10",
    "1979-05-27T07:32:00Z",
];

/// A valid document, mutated.
fn mutated(base: &'static str) -> impl Strategy<Value = String> {
    let n = base.len();
    proptest::collection::vec((0..=n, 0usize..4, 0..HOSTILE.len(), 0usize..40), 0..4).prop_map(move |edits| {
        let mut s = base.to_string();
        for (at, kind, tok, len) in edits {
            let at = floor_char(&s, at.min(s.len()));
            match kind {
                0 => s.insert_str(at, HOSTILE[tok]),
                1 => {
                    let end = floor_char(&s, (at + len).min(s.len()));
                    s.replace_range(at..end, "");
                }
                2 => {
                    let end = floor_char(&s, (at + len).min(s.len()));
                    s.replace_range(at..end, HOSTILE[tok]);
                }
                _ => {
                    // Duplicate the line at `at`.
                    let start = s[..at].rfind('\n').map_or(0, |i| i + 1);
                    let end = s[at..].find('\n').map_or(s.len(), |i| at + i + 1);
                    let line = s[start..end].to_string();
                    s.insert_str(end, &line);
                }
            }
        }
        s
    })
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn document(base: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![4 => mutated(base), 1 => "[\\[\\]{}=\"'.,#a-z0-9_ \\n-]{0,300}", 1 => any::<String>()]
}

fn cases() -> u32 {
    std::env::var("RELIABILITY_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000)
}

#[test]
fn config_loading_never_panics() {
    let sb = Sandbox::new();
    let catalog = Catalog::load_dir(&sb.distros(&Want::default())).expect("test distros load");
    let schemas = catalog.schemas();
    let file = sb.dir.path().join("fuzz.toml");
    let env_value = prop_oneof![Just("".to_string()), "[a-z0-9,._/-]{0,20}", proptest::sample::select(HOSTILE).prop_map(str::to_string)];
    let env_name = proptest::sample::select(
        &[
            "SYSDEPLOY_SYSTEM_SERVICES__ENABLE",
            "SYSDEPLOY_SYSTEM_SERVICES__CALL_TTL_MS",
            "SYSDEPLOY_SYSTEM_SERVICES__KV_STORE__GREETING",
            "SYSDEPLOY_SYSTEM_SERVICES__TICKER",
            "SYSDEPLOY_NODE__API_LISTEN",
            "SYSDEPLOY_NODE",
            "SYSDEPLOY_",
            "SYSDEPLOY___",
            "SYSDEPLOY_SYSTEM_SERVICES__TICKER__PERIOD_SEC__X",
        ][..],
    );
    let input = (
        document(CONFIG),
        proptest::collection::vec((env_name, env_value.clone()), 0..3),
        proptest::collection::vec(("[a-z_.]{0,30}", env_value), 0..2),
    );
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, max_shrink_iters: 200, ..Config::default() });
    let t = Instant::now();
    runner
        .run(&input, |(text, env, flags)| {
            fs::write(&file, &text).unwrap();
            let opts = LoadOptions {
                config_path: Some(file.clone()),
                env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                flags: flags.into_iter().map(|(k, v)| FlagValue::set(&k, v)).collect(),
            };
            if let Err(e) = config::load(&opts, &schemas) {
                prop_assert!(!e.0.is_empty() && !e.to_string().is_empty());
            }
            Ok(())
        })
        .unwrap();
    println!("fuzz: {} config inputs loaded without a panic in {:.1} s", cases(), t.elapsed().as_secs_f64());
}

#[test]
fn manifest_loading_never_panics() {
    let sb = Sandbox::new();
    let root = sb.dir.path().join("fuzz-distros");
    let pkg = root.join("p");
    fs::create_dir_all(&pkg).unwrap();
    fs::write(pkg.join("kv.wasm"), Build::V1.wasm()).unwrap();
    fs::write(pkg.join("s.rhai"), "let x = 1;\n").unwrap();
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, max_shrink_iters: 200, ..Config::default() });
    let t = Instant::now();
    let accepted = std::cell::Cell::new(0);
    runner
        .run(&document(MANIFEST), |text| {
            fs::write(pkg.join("distro.toml"), &text).unwrap();
            match Catalog::load_dir(&root) {
                Ok(c) => {
                    // Whatever loads must also resolve or be refused cleanly.
                    let cfg = config::load(&LoadOptions { config_path: None, env: vec![], flags: vec![] }, &c.schemas());
                    if let Ok(cfg) = cfg {
                        let _ = sysdeploy::deploy::desired::resolve(&c, &cfg);
                    }
                    accepted.set(accepted.get() + 1);
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            Ok(())
        })
        .unwrap();
    println!("fuzz: {} manifests loaded without a panic in {:.1} s ({} accepted)", cases(), t.elapsed().as_secs_f64(), accepted.get());
}
