//! Issue 18: sysdeploy as a drop-in for an existing nox node's
//! `[system_services]`: section mode on the node's own config file, the
//! decider's chain keys, retired keys, every legacy env name and the
//! `FLUENCE_SYSTEM_SERVICES__` alias. Config rules are checked through the
//! library loader (fast, exact sources); what an operator sees (`config`,
//! `plan`, exit codes) through the real binary on a real state directory.

use serde_json::{json, Value as Json};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use sysdeploy::config::{self, ConfigErrors, EffectiveConfig, FlagValue, LoadOptions, Source};
use sysdeploy::distro;
use sysdeploy::ids::PackageName;

/// The binary under test (see tests/cli.rs for `TEST_SYSDEPLOY_BIN`).
fn bin() -> PathBuf {
    std::env::var_os("TEST_SYSDEPLOY_BIN").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_BIN_EXE_sysdeploy").into())
}

/// The `[system_services]` part of a nox node's config, as nox documented it
/// (its README example), with the retired keys operators still carry.
const NOX_SYSTEM_SERVICES: &str = r#"[system_services]
enable = ["registry", "decider", "aqua-ipfs", "trust-graph"]

[system_services.aqua_ipfs]
external_api_multiaddr = "/ip4/1.2.3.4/tcp/5001"
local_api_multiaddr = "/dns4/ipfs/tcp/5001"
ipfs_binary_path = "/usr/bin/ipfs"

[system_services.decider]
decider_period_sec = 10
worker_period_sec = 900
worker_ipfs_multiaddr = "/dns4/ipfs/tcp/5001"
network_api_endpoint = "http://127.0.0.1:8545"
contract_address_hex = "0x0f68c702dC151D07038fA40ab3Ed1f9b8BAC2981"
contract_block_hex = "0x0"

[system_services.registry]
registry_period_sec = 3600
expired_period_sec = 86400
renew_period_sec = 43200
replicate_period_sec = 3600

[system_services.connector]
curl_binary_path = "/usr/bin/curl"
"#;

/// A whole nox node config file: node sections before and after
/// `[system_services]`.
fn nox_file() -> String {
    format!(
        r#"aquavm_pool_size = 2
tcp_port = 7777
websocket_port = 9999
http_port = 18080
external_multiaddresses = ["/ip4/1.2.3.4/tcp/7777"]

[root_key_pair]
format = "ed25519"
generate_on_absence = true
path = "/.fluence/v1/secret_key.ed25519"

{NOX_SYSTEM_SERVICES}
[http]
port = 8080
"#
    )
}

/// The same values written natively: only `[system_services]`, no retired keys.
fn native_file() -> String {
    NOX_SYSTEM_SERVICES
        .lines()
        .filter(|l| !l.starts_with("ipfs_binary_path") && !l.starts_with("curl_binary_path") && *l != "[system_services.connector]")
        .map(|l| format!("{l}\n"))
        .collect()
}

// ------------------------------------------------------------- loader level

fn load(file: Option<&Path>, env: &[(&str, &str)], flags: Vec<FlagValue>) -> Result<EffectiveConfig, ConfigErrors> {
    let opts = LoadOptions {
        config_path: file.map(Path::to_path_buf),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        flags,
    };
    config::load(&opts, &distro::package_schemas())
}

fn load_env(env: &[(&str, &str)]) -> EffectiveConfig {
    load(None, env, vec![]).unwrap_or_else(|e| panic!("{e}"))
}

fn section() -> Vec<FlagValue> {
    vec![FlagValue::config_section("system_services")]
}

/// key → value, without sources.
fn values(c: &EffectiveConfig) -> Vec<(String, Json)> {
    c.entries().into_iter().map(|e| (e.key, e.value)).collect()
}

fn legacy(var: &str) -> Source {
    Source::LegacyEnv { var: var.into() }
}

fn written(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

#[test]
fn section_mode_reads_system_services_of_a_node_file_with_file_line_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let nox = written(dir.path(), "Config.toml", &nox_file());
    let native = written(dir.path(), "native.toml", &native_file());

    let ours = load(Some(&nox), &[], section()).unwrap();
    let theirs = load(Some(&native), &[], vec![]).unwrap();
    assert_eq!(values(&ours), values(&theirs), "section mode reads exactly the values the native file gives");
    assert_eq!(
        ours.get("system_services.decider.contract_address_hex").unwrap().value,
        json!("0x0f68c702dC151D07038fA40ab3Ed1f9b8BAC2981")
    );
    // Provenance: the line in the node's own file.
    let line = nox_file().lines().position(|l| l.starts_with("contract_block_hex")).unwrap() as u32 + 1;
    assert_eq!(ours.source_of("system_services.decider.contract_block_hex"), Some(&Source::File { path: nox.clone(), line: Some(line) }));

    // One notice naming every ignored top-level key.
    assert_eq!(ours.notices.len(), 1, "{:?}", ours.notices);
    for k in ["aquavm_pool_size", "tcp_port", "websocket_port", "http_port", "external_multiaddresses", "root_key_pair", "http"] {
        assert!(ours.notices[0].contains(k), "{k} not named: {}", ours.notices[0]);
    }
    assert!(!ours.notices[0].contains("system_services,") && !ours.notices[0].ends_with("system_services"));

    // The same through the env equivalent.
    let via_env = load(Some(&nox), &[("SYSDEPLOY_CONFIG_SECTION", "system_services")], vec![]).unwrap();
    assert_eq!(values(&via_env), values(&theirs));

    // Without section mode the node file is refused, with the way out named.
    let err = load(Some(&nox), &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("tcp_port") && err.contains("--config-section system_services"), "{err}");
    assert!(!err.contains("7777"), "values of unknown keys are never shown: {err}");
}

#[test]
fn section_mode_stays_strict_inside_its_sections() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "tcp_port = 7777\n[node]\napi_listen = \"nowhere\"\n{}",
        NOX_SYSTEM_SERVICES.replace("decider_period_sec", "decider_period")
    );
    let f = written(dir.path(), "Config.toml", &text);
    let err = load(Some(&f), &[], section()).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.0.len(), 2, "{msg}");
    assert!(msg.contains("node.api_listen = \"nowhere\"") && msg.contains("Config.toml:3"), "{msg}");
    assert!(
        msg.contains("system_services.decider.decider_period") && msg.contains("did you mean system_services.decider.decider_period_sec"),
        "{msg}"
    );
    assert!(!msg.contains("tcp_port"), "{msg}");

    // An unknown section name is refused (exit 2 in the CLI), from flag and env alike.
    for (env, flags) in [(vec![], vec![FlagValue::config_section("node")]), (vec![("SYSDEPLOY_CONFIG_SECTION", "nox")], vec![])] {
        let msg = load(Some(&f), &env, flags).unwrap_err().to_string();
        assert!(msg.contains("is not supported; expected \"system_services\""), "{msg}");
    }
    // A file without [system_services] says so instead of silently running defaults.
    let empty = written(dir.path(), "other.toml", "tcp_port = 7777\n");
    let c = load(Some(&empty), &[], section()).unwrap();
    assert!(c.notices.iter().any(|n| n.contains("found no [system_services] table")), "{:?}", c.notices);
}

#[test]
fn decider_chain_keys_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let good = load_env(&[]);
    for k in ["network_api_endpoint", "contract_address_hex", "contract_block_hex", "worker_gas"] {
        assert!(good.get(&format!("system_services.decider.{k}")).is_none(), "{k} is optional and unset by default");
    }
    let cases = [
        ("network_api_endpoint", "\"127.0.0.1:8545\"", "an http(s) URL"),
        ("network_api_endpoint", "\"ftp://chain.example\"", "an http(s) URL"),
        ("contract_address_hex", "\"0x0f68c702dC151D07038fA40ab3Ed1f9b8BAC29\"", "a 20-byte hex address"),
        ("contract_address_hex", "\"0f68c702dC151D07038fA40ab3Ed1f9b8BAC2981\"", "a 20-byte hex address"),
        ("contract_address_hex", "\"0x0f68c702dC151D07038fA40ab3Ed1f9b8BAC29zz\"", "a 20-byte hex address"),
        ("contract_block_hex", "\"latest\"", "a hex number"),
        ("contract_block_hex", "\"0x\"", "a hex number"),
        ("contract_block_hex", "12", "a hex number"),
        ("worker_gas", "\"lots\"", "an integer"),
    ];
    for (key, value, expected) in cases {
        let f = written(dir.path(), "c.toml", &format!("[system_services.decider]\n{key} = {value}\n"));
        let msg = load(Some(&f), &[], vec![]).unwrap_err().to_string();
        assert!(msg.contains(&format!("system_services.decider.{key} = {value}")) && msg.contains(expected), "{key} = {value}: {msg}");
        assert!(msg.contains("c.toml:2"), "{msg}");
    }
    let f = written(
        dir.path(),
        "c.toml",
        "[system_services.decider]\nnetwork_api_endpoint = \"https://rpc.example:443/v1\"\ncontract_block_hex = \"0x1A2b\"\n",
    );
    let c = load(Some(&f), &[], vec![]).unwrap();
    assert_eq!(c.get("system_services.decider.contract_block_hex").unwrap().value, json!("0x1A2b"));

    // Delivered to the decider through its spell KV; unset keys are left out.
    let name = PackageName::new("decider").unwrap();
    let decider = distro::embedded().package(&name).unwrap();
    let kv = decider.spells[0].resolve_kv(&c.system_services.packages[&name]).unwrap();
    assert_eq!(kv["network_api_endpoint"].value, json!("https://rpc.example:443/v1"));
    assert_eq!(kv["contract_block_hex"].value, json!("0x1A2b"));
    assert!(!kv.contains_key("contract_address_hex") && !kv.contains_key("worker_gas"), "{:?}", kv.keys().collect::<Vec<_>>());
}

#[test]
fn retired_keys_warn_why_and_change_nothing_from_any_layer() {
    let dir = tempfile::tempdir().unwrap();
    let plain = load_env(&[]);
    let f = written(
        dir.path(),
        "c.toml",
        "[system_services.aqua_ipfs]\nipfs_binary_path = \"/usr/bin/ipfs\"\n[system_services.connector]\ncurl_binary_path = 7\n",
    );
    let from_file = load(Some(&f), &[], vec![]).unwrap();
    let from_env = load_env(&[
        ("SYSDEPLOY_SYSTEM_SERVICES__CONNECTOR__CURL_BINARY_PATH", "/usr/bin/curl"),
        ("FLUENCE_SYSTEM_SERVICES__AQUA_IPFS__IPFS_BINARY_PATH", "/usr/bin/ipfs"),
    ]);
    let from_flag = load(None, &[], vec![FlagValue::set("system_services.aqua_ipfs.ipfs_binary_path", "/x")]).unwrap();
    for c in [&from_file, &from_env, &from_flag] {
        assert_eq!(values(c), values(&plain), "a retired key never changes the config");
    }
    let w = from_file.warnings.join("\n");
    assert!(w.contains("system_services.aqua_ipfs.ipfs_binary_path (") && w.contains("c.toml:2) is deprecated and ignored"), "{w}");
    assert!(w.contains("not by running an ipfs binary"), "{w}");
    assert!(w.contains("system_services.connector.curl_binary_path") && w.contains("never runs curl"), "{w}");
    let w = from_env.warnings.join("\n");
    assert!(w.contains("env SYSDEPLOY_SYSTEM_SERVICES__CONNECTOR__CURL_BINARY_PATH) is deprecated and ignored"), "{w}");
    assert!(w.contains("env FLUENCE_SYSTEM_SERVICES__AQUA_IPFS__IPFS_BINARY_PATH (deprecated)) is deprecated and ignored"), "{w}");
    // Only the retired keys: anything else under [system_services.connector] is still an error.
    let f = written(dir.path(), "c.toml", "[system_services.connector]\ncurl_path = \"/usr/bin/curl\"\n");
    assert!(load(Some(&f), &[], vec![]).unwrap_err().to_string().contains("system_services.connector.curl_path"));
}

/// One legacy name: its value lands on `key` with a legacy source and a
/// deprecation warning; a `SYSDEPLOY_` name wins over it; an unparsable
/// value (if any) is ignored with a warning, as nox did.
fn legacy_name(var: &str, key: &str, good: &str, expected: Json, unparsable: Option<&str>) {
    let path = format!("system_services.{key}");
    let current = format!("SYSDEPLOY_SYSTEM_SERVICES__{}", key.replace('.', "__").to_uppercase());
    let c = load_env(&[(var, good)]);
    assert_eq!(c.get(&path).map(|v| (&v.value, &v.source)), Some((&expected, &legacy(var))), "{var}");
    assert!(c.warnings.iter().any(|w| w == &format!("env {var} is deprecated; rename it to {current}")), "{:?}", c.warnings);

    let c = load_env(&[(var, good), (&current, good)]);
    assert_eq!(c.source_of(&path), Some(&Source::Env { var: current.clone() }), "{var} loses to {current}");
    assert!(c.warnings.iter().any(|w| w.contains(&format!("{var} is deprecated and ignored because {current} is also set"))));

    if let Some(bad) = unparsable {
        let c = load(None, &[(var, bad)], vec![]).unwrap_or_else(|e| panic!("{var}={bad:?} must be ignored, not refused: {e}"));
        assert_eq!(c.get(&path), load_env(&[]).get(&path), "{var}={bad:?} is ignored");
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains(&format!("(env {var} (deprecated)): expected")) && w.contains("ignored, as the old node did")));
    }
}

#[test]
fn legacy_connector_api_endpoint() {
    legacy_name(
        "FLUENCE_ENV_CONNECTOR_API_ENDPOINT",
        "decider.network_api_endpoint",
        "http://rpc:8545",
        json!("http://rpc:8545"),
        Some("rpc:8545"),
    );
}

#[test]
fn legacy_connector_contract_address() {
    let a = "0x6328bb918a01603adc91eae689b848a9ecaef26d";
    legacy_name("FLUENCE_ENV_CONNECTOR_CONTRACT_ADDRESS", "decider.contract_address_hex", a, json!(a), Some("0x6328"));
}

#[test]
fn legacy_connector_from_block() {
    legacy_name("FLUENCE_ENV_CONNECTOR_FROM_BLOCK", "decider.contract_block_hex", "0x3e8", json!("0x3e8"), Some("latest"));
}

#[test]
fn legacy_connector_worker_gas() {
    legacy_name("FLUENCE_ENV_CONNECTOR_WORKER_GAS", "decider.worker_gas", "210000", json!(210000), Some("210k"));
}

#[test]
fn legacy_decider_ipfs_multiaddr() {
    legacy_name(
        "FLUENCE_ENV_DECIDER_IPFS_MULTIADDR",
        "decider.worker_ipfs_multiaddr",
        "/dns4/ipfs/tcp/5001",
        json!("/dns4/ipfs/tcp/5001"),
        None,
    );
}

#[test]
fn legacy_aqua_ipfs_external_api_multiaddr() {
    legacy_name(
        "FLUENCE_ENV_AQUA_IPFS_EXTERNAL_API_MULTIADDR",
        "aqua_ipfs.external_api_multiaddr",
        "/ip4/1.2.3.4/tcp/5001",
        json!("/ip4/1.2.3.4/tcp/5001"),
        None,
    );
}

#[test]
fn legacy_aqua_ipfs_local_api_multiaddr() {
    legacy_name(
        "FLUENCE_ENV_AQUA_IPFS_LOCAL_API_MULTIADDR",
        "aqua_ipfs.local_api_multiaddr",
        "/dns4/ipfs/tcp/5001",
        json!("/dns4/ipfs/tcp/5001"),
        None,
    );
}

#[test]
fn legacy_connector_wallet_key_is_a_secret_and_garbage_is_refused() {
    let var = "FLUENCE_ENV_CONNECTOR_WALLET_KEY";
    legacy_name(var, "decider.wallet_key", "0xS3CRETKEY", json!("0xS3CRETKEY"), None);
    let c = load_env(&[(var, "0xS3CRETKEY")]);
    let v = c.get("system_services.decider.wallet_key").unwrap();
    assert!(v.secret && v.redacted() == json!(config::REDACTED));
    assert!(!format!("{:?}{:?}", c.entries(), c.warnings).contains("S3CRET"));
    // Unparsable (garbled bytes): refused, never ignored, and not echoed.
    let err = load(None, &[(var, "0xS3CRET\u{FFFD}")], vec![]).unwrap_err().to_string();
    assert!(err.contains("system_services.decider.wallet_key = <redacted>") && err.contains(var) && err.contains("not UTF-8"), "{err}");
    assert!(!err.contains("S3CRET"), "{err}");
}

#[test]
fn legacy_connector_join_all_deals_edits_enable() {
    let var = config::ENV_JOIN_ALL_DEALS;
    let dir = tempfile::tempdir().unwrap();
    let f = written(dir.path(), "c.toml", "[system_services]\nenable = [\"registry\", \"trust-graph\"]\n");
    let enable = |c: &EffectiveConfig| c.get("system_services.enable").map(|v| (v.value.clone(), v.source.clone())).unwrap();

    let c = load(Some(&f), &[(var, "true")], vec![]).unwrap();
    assert_eq!(enable(&c), (json!(["registry", "trust-graph", "decider"]), legacy(var)), "true adds decider to the file's list");
    assert!(c.warnings.iter().any(|w| w.contains(&format!("env {var} is deprecated: it now adds decider"))), "{:?}", c.warnings);
    let c = load(Some(&f), &[(var, "false")], vec![]).unwrap();
    assert_eq!(enable(&c).0, json!(["registry", "trust-graph"]));
    let c = load_env(&[(var, "false")]);
    assert_eq!(enable(&c), (json!(["aqua-ipfs", "trust-graph", "registry"]), legacy(var)), "false removes decider from the default");
    let c = load_env(&[(var, "true")]);
    assert_eq!(enable(&c).0, load_env(&[]).get("system_services.enable").unwrap().value);

    // The SYSDEPLOY_ name (or its FLUENCE_SYSTEM_SERVICES__ alias) wins.
    for higher in ["SYSDEPLOY_SYSTEM_SERVICES__ENABLE", "FLUENCE_SYSTEM_SERVICES__ENABLE"] {
        let c = load(Some(&f), &[(var, "true"), (higher, "registry")], vec![]).unwrap();
        assert_eq!(enable(&c).0, json!(["registry"]), "{higher}");
        assert!(c.warnings.iter().any(|w| w.contains(&format!("ignored because {higher} is also set"))), "{:?}", c.warnings);
    }
    // enable decides which services and data exist: an unparsable value is refused.
    for bad in ["yes", "1", "", "TRUE "] {
        let err = load(Some(&f), &[(var, bad)], vec![]).unwrap_err().to_string();
        assert!(err.contains(&format!("system_services.enable = {bad:?} (env {var} (deprecated)): expected true")), "{bad:?}: {err}");
    }
}

#[test]
fn fluence_system_services_prefix_is_an_alias_with_one_warning() {
    let c = load_env(&[
        ("FLUENCE_SYSTEM_SERVICES__ENABLE", "registry,trust-graph"),
        ("FLUENCE_SYSTEM_SERVICES__DECIDER__DECIDER_PERIOD_SEC", "30"),
        ("FLUENCE_SYSTEM_SERVICES__DECIDER__WALLET_KEY", "0xS3CRETKEY"),
    ]);
    assert_eq!(c.get("system_services.enable").unwrap().value, json!(["registry", "trust-graph"]));
    assert_eq!(c.source_of("system_services.enable"), Some(&legacy("FLUENCE_SYSTEM_SERVICES__ENABLE")));
    assert_eq!(c.get("system_services.decider.decider_period_sec").unwrap().value, json!(30));
    assert!(c.get("system_services.decider.wallet_key").unwrap().secret);
    let prefix_warnings: Vec<_> = c.warnings.iter().filter(|w| w.contains("FLUENCE_SYSTEM_SERVICES__ prefix is deprecated")).collect();
    assert_eq!(prefix_warnings.len(), 1, "{:?}", c.warnings);
    assert!(prefix_warnings[0].contains("FLUENCE_SYSTEM_SERVICES__ENABLE") && prefix_warnings[0].contains("__DECIDER_PERIOD_SEC"));
    assert!(!c.warnings.join(" ").contains("S3CRET"));

    // The SYSDEPLOY_ name of the same key wins, whatever the env order.
    let c = load_env(&[
        ("SYSDEPLOY_SYSTEM_SERVICES__DECIDER__DECIDER_PERIOD_SEC", "40"),
        ("FLUENCE_SYSTEM_SERVICES__DECIDER__DECIDER_PERIOD_SEC", "30"),
    ]);
    assert_eq!(c.get("system_services.decider.decider_period_sec").unwrap().value, json!(40));
    // It is an alias of the strict namespace: typos and bad values are errors,
    // and an unknown key's value is never shown.
    let err = load(None, &[("FLUENCE_SYSTEM_SERVICES__DECIDER_WALLET_KEY", "0xS3CRETKEY")], vec![]).unwrap_err().to_string();
    assert!(err.contains("system_services.decider_wallet_key") && !err.contains("S3CRET"), "{err}");
    let err = load(None, &[("FLUENCE_SYSTEM_SERVICES__ENABLE", "nope")], vec![]).unwrap_err().to_string();
    assert!(err.contains("unknown package \"nope\""), "{err}");
}

#[test]
fn the_example_config_shows_every_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = fs::read_to_string(root.join("config/sysdeploy.example.toml")).unwrap();
    let mut missing = Vec::new();
    for schema in distro::package_schemas() {
        let header = format!("[system_services.{}]", schema.section());
        let Some(at) = example.find(&header) else {
            if !schema.keys.is_empty() {
                missing.push(header);
            }
            continue;
        };
        let body = example[at + header.len()..].split("\n[").next().unwrap();
        for k in &schema.keys {
            if !body.lines().any(|l| l.trim_start_matches(['#', ' ']).starts_with(&format!("{} =", k.name))) {
                missing.push(format!("{header} {}", k.name));
            }
        }
    }
    assert!(missing.is_empty(), "config/sysdeploy.example.toml lacks: {missing:?}");
}

// ------------------------------------------------------------- binary level

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = Command::new(bin()).args(args).current_dir(dir).env_clear().envs(env.iter().copied()).output().expect("run sysdeploy");
    let o = Out {
        code: out.status.code().expect("exited normally"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(o.code == 0 || o.code == 2, "sysdeploy {args:?}: {}\n{}", o.stdout, o.stderr);
    o
}

#[test]
fn a_nox_node_config_in_section_mode_plans_exactly_as_the_same_values_given_natively() {
    let dir = tempfile::tempdir().unwrap();
    let nox = written(dir.path(), "Config.toml", &nox_file());
    let native = written(dir.path(), "native.toml", &native_file());
    let (nox, native) = (nox.to_str().unwrap(), native.to_str().unwrap());
    let section = ["--config-section", "system_services"];

    // Without section mode: exit 2, nothing on disk.
    let o = run(dir.path(), &["--config", nox, "plan"], &[]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("--config-section system_services"), "{}", o.stderr);
    assert!(!dir.path().join(".sysdeploy").exists());

    // Deploy natively, then plan from the node's own file: nothing to do.
    let o = run(dir.path(), &["--config", native, "--api-listen", "127.0.0.1:0", "run", "--once"], &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(dir.path(), &[&["--config", nox][..], &section, &["plan", "--json"]].concat(), &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let plan: Json = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(plan["no_changes"], json!(true), "{}", o.stdout);
    let notices: Vec<_> = o.stderr.lines().filter(|l| l.contains("ignored the other top-level keys")).collect();
    assert_eq!(notices.len(), 1, "{}", o.stderr);
    assert!(notices[0].contains(" INFO ") && notices[0].contains("root_key_pair") && notices[0].contains("tcp_port"), "{}", notices[0]);

    // The plan does read the section: one value changed in the node's file
    // is a change, and so is a chain key delivered through the spell KV.
    let changed = nox_file()
        .replace("decider_period_sec = 10", "decider_period_sec = 11")
        .replace("contract_block_hex = \"0x0\"", "contract_block_hex = \"0x10\"");
    let nox2 = written(dir.path(), "Config2.toml", &changed);
    let o = run(dir.path(), &[&["--config", nox2.to_str().unwrap()][..], &section, &["plan"]].concat(), &[]);
    assert!(o.stdout.contains("trigger changed (every 10s from now → every 11s from now)"), "{}", o.stdout);
    assert!(o.stdout.contains("contract_block_hex changed") && o.stdout.contains("Config2.toml:"), "{}", o.stdout);
    // And the env equivalent of the flag.
    let o = run(dir.path(), &["--config", nox, "plan", "--json"], &[("SYSDEPLOY_CONFIG_SECTION", "system_services")]);
    assert_eq!(serde_json::from_str::<Json>(&o.stdout).unwrap()["no_changes"], json!(true), "{}", o.stderr);
}

#[test]
fn config_shows_each_legacy_source_and_the_deprecation() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("FLUENCE_ENV_CONNECTOR_API_ENDPOINT", "http://rpc:8545"),
        ("FLUENCE_ENV_CONNECTOR_CONTRACT_ADDRESS", "0x6328bb918a01603adc91eae689b848a9ecaef26d"),
        ("FLUENCE_ENV_CONNECTOR_FROM_BLOCK", "0x3e8"),
        ("FLUENCE_ENV_CONNECTOR_WALLET_KEY", "0xS3CRETKEY"),
        ("FLUENCE_ENV_CONNECTOR_WORKER_GAS", "210000"),
        ("FLUENCE_ENV_CONNECTOR_JOIN_ALL_DEALS", "false"),
        ("FLUENCE_SYSTEM_SERVICES__DECIDER__DECIDER_PERIOD_SEC", "30"),
    ];
    let o = run(dir.path(), &["config"], &env);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let expect = [
        ("system_services.decider.network_api_endpoint", "\"http://rpc:8545\"", "FLUENCE_ENV_CONNECTOR_API_ENDPOINT"),
        (
            "system_services.decider.contract_address_hex",
            "\"0x6328bb918a01603adc91eae689b848a9ecaef26d\"",
            "FLUENCE_ENV_CONNECTOR_CONTRACT_ADDRESS",
        ),
        ("system_services.decider.contract_block_hex", "\"0x3e8\"", "FLUENCE_ENV_CONNECTOR_FROM_BLOCK"),
        ("system_services.decider.wallet_key", "<redacted>", "FLUENCE_ENV_CONNECTOR_WALLET_KEY"),
        ("system_services.decider.worker_gas", "210000", "FLUENCE_ENV_CONNECTOR_WORKER_GAS"),
        ("system_services.enable", "[\"aqua-ipfs\",\"trust-graph\",\"registry\"]", "FLUENCE_ENV_CONNECTOR_JOIN_ALL_DEALS"),
        ("system_services.decider.decider_period_sec", "30", "FLUENCE_SYSTEM_SERVICES__DECIDER__DECIDER_PERIOD_SEC"),
    ];
    for (key, value, var) in expect {
        let line = o.stdout.lines().find(|l| l.starts_with(&format!("{key} "))).unwrap_or_else(|| panic!("{key} missing:\n{}", o.stdout));
        assert!(line.contains(&format!("= {value}")) && line.ends_with(&format!("# env {var} (deprecated)")), "{line}");
    }
    for (var, _) in &env[..5] {
        assert!(
            o.stdout.contains(&format!("# warning: env {var} is deprecated; rename it to SYSDEPLOY_SYSTEM_SERVICES__DECIDER__")),
            "{var}:\n{}",
            o.stdout
        );
    }
    assert!(o.stdout.contains("# warning: env FLUENCE_ENV_CONNECTOR_JOIN_ALL_DEALS is deprecated: it now adds decider"), "{}", o.stdout);
    assert!(o.stdout.contains("the FLUENCE_SYSTEM_SERVICES__ prefix is deprecated"), "{}", o.stdout);
    assert!(!o.stdout.contains("S3CRET") && !o.stderr.contains("S3CRET"));

    // Unparsable: ignored with a warning (exit 0) except enable and secrets (exit 2, nothing on disk).
    let o = run(dir.path(), &["config"], &[("FLUENCE_ENV_CONNECTOR_WORKER_GAS", "lots")]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("# warning: system_services.decider.worker_gas = \"lots\"") && o.stdout.contains("ignored, as the old node did")
    );
    let o = run(dir.path(), &["plan"], &[("FLUENCE_ENV_CONNECTOR_JOIN_ALL_DEALS", "yes")]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(!dir.path().join(".sysdeploy").exists());
}
