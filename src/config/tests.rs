//! Unit tests of the config loader: layering, provenance, typing, redaction
//! and the collection of every problem.

use super::schema::{KeySpec, ValueType};
use super::*;
use serde_json::json;
use std::path::Path;

/// A fixed set of package schemas, so these tests do not move when the
/// embedded distros change (black-box tests cover the real ones).
pub(super) fn fixture() -> Vec<PackageSchema> {
    fn key(name: &str, ty: ValueType, default: Option<serde_json::Value>, secret: bool, legacy: &[&str]) -> KeySpec {
        KeySpec {
            name: name.into(),
            ty,
            default,
            required: false,
            secret,
            doc: String::new(),
            legacy_env: legacy.iter().map(|s| s.to_string()).collect(),
        }
    }
    let ipfs = json!("/ip4/127.0.0.1/tcp/5001");
    vec![
        PackageSchema {
            package: "aqua-ipfs".into(),
            keys: vec![
                key(
                    "external_api_multiaddr",
                    ValueType::String,
                    Some(ipfs.clone()),
                    false,
                    &["FLUENCE_ENV_AQUA_IPFS_EXTERNAL_API_MULTIADDR"],
                ),
                key("local_api_multiaddr", ValueType::String, Some(ipfs.clone()), false, &["FLUENCE_ENV_AQUA_IPFS_LOCAL_API_MULTIADDR"]),
            ],
        },
        PackageSchema { package: "trust-graph".into(), keys: vec![] },
        PackageSchema {
            package: "registry".into(),
            keys: vec![
                key("registry_period_sec", ValueType::Integer, Some(json!(3600)), false, &[]),
                key("expired_period_sec", ValueType::Integer, Some(json!(86400)), false, &[]),
            ],
        },
        PackageSchema {
            package: "decider".into(),
            keys: vec![
                key("decider_period_sec", ValueType::Integer, Some(json!(120)), false, &[]),
                key("worker_period_sec", ValueType::Integer, Some(json!(900)), false, &[]),
                key("worker_ipfs_multiaddr", ValueType::String, Some(ipfs), false, &["FLUENCE_ENV_DECIDER_IPFS_MULTIADDR"]),
                key("wallet_key", ValueType::String, None, true, &[]),
            ],
        },
    ]
}

fn schemas() -> Vec<PackageSchema> {
    fixture()
}

#[test]
fn the_embedded_schemas_are_valid() {
    let (_, defects) = catalog::Catalog::new(&crate::distro::package_schemas());
    assert!(defects.is_empty(), "{defects:?}");
    EffectiveConfig::defaults(&crate::distro::package_schemas()).expect("embedded defaults load");
}

/// Writes `text` as a config file in `dir` and returns options reading it.
fn with_file(dir: &Path, text: &str) -> LoadOptions {
    let p = dir.join("sysdeploy.toml");
    std::fs::write(&p, text).unwrap();
    LoadOptions { config_path: Some(p), ..Default::default() }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn problems(opts: &LoadOptions) -> Vec<ConfigProblem> {
    load(opts, &schemas()).expect_err("config should be rejected").0
}

#[test]
fn defaults_alone_are_complete() {
    let c = EffectiveConfig::defaults(&schemas()).unwrap();
    assert_eq!(c.node.state_dir, PathBuf::from(".sysdeploy"));
    assert_eq!(c.node.api_listen, "127.0.0.1:7200".parse().unwrap());
    assert_eq!(c.system_services.on_failure, OnFailure::Stop);
    assert_eq!(c.system_services.call_ttl_ms, 60_000);
    let enabled: Vec<&str> = c.system_services.enable.iter().map(|p| p.as_str()).collect();
    // Every embedded package, in the catalog's dependency order.
    let all: Vec<String> = schemas().iter().map(|s| s.package.clone()).collect();
    assert_eq!(enabled, all);
    for p in ["aqua-ipfs", "trust-graph", "registry", "decider"] {
        assert!(enabled.contains(&p), "{p} is enabled by default");
    }
    assert_eq!(c.system_services.packages.len(), 4, "every package has an entry, even with no keys");
    let decider = &c.system_services.packages[&PackageName::new("decider").unwrap()];
    assert_eq!(decider["decider_period_sec"].value, json!(120));
    assert!(!decider.contains_key("wallet_key"), "unset keys without default are absent");
    assert!(c.entries().iter().all(|e| e.source == Source::Default));
    assert_eq!(c.config_file, None);
}

#[test]
fn each_layer_overrides_the_one_below_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let key = "system_services.decider.decider_period_sec";
    let var = "SYSDEPLOY_SYSTEM_SERVICES__DECIDER__DECIDER_PERIOD_SEC";
    let mut opts = with_file(dir.path(), "[system_services.decider]\n\ndecider_period_sec = 10\n");
    let file = opts.config_path.clone().unwrap();

    let c = load(&opts, &schemas()).unwrap();
    assert_eq!(c.get(key).unwrap().value, json!(10));
    assert_eq!(c.source_of(key), Some(&Source::File { path: file.clone(), line: Some(3) }));
    assert_eq!(c.source_of("system_services.decider.worker_period_sec"), Some(&Source::Default));

    opts.env = env(&[(var, "20")]);
    let c = load(&opts, &schemas()).unwrap();
    assert_eq!(c.get(key).unwrap().value, json!(20));
    assert_eq!(c.source_of(key), Some(&Source::Env { var: var.into() }));

    opts.flags = vec![FlagValue::set(key, "30")];
    let c = load(&opts, &schemas()).unwrap();
    assert_eq!(c.get(key).unwrap().value, json!(30));
    assert_eq!(c.source_of(key).unwrap().to_string(), format!("flag --set {key}"));
    let decider = &c.system_services.packages[&PackageName::new("decider").unwrap()];
    assert_eq!(decider["decider_period_sec"].value, json!(30));
}

#[test]
fn fixed_keys_layer_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = with_file(
        dir.path(),
        "[node]\nstate_dir = \"/var/lib/x\"\napi_listen = \"0.0.0.0:1\"\n[system_services]\nenable = [\"registry\"]\non_failure = \"continue\"\ncall_ttl_ms = 5\n",
    );
    opts.env = env(&[("SYSDEPLOY_SYSTEM_SERVICES__ENABLE", "registry, decider"), ("SYSDEPLOY_NODE__API_LISTEN", "127.0.0.1:9")]);
    opts.flags = vec![FlagValue::new("--state-dir", "node.state_dir", "/srv/sd")];
    let c = load(&opts, &schemas()).unwrap();
    assert_eq!(c.node.state_dir, PathBuf::from("/srv/sd"));
    assert_eq!(c.node.api_listen, "127.0.0.1:9".parse().unwrap());
    assert_eq!(c.system_services.enable, vec![PackageName::new("registry").unwrap(), PackageName::new("decider").unwrap()]);
    assert_eq!(c.system_services.on_failure, OnFailure::Continue);
    assert_eq!(c.system_services.call_ttl_ms, 5);
    assert_eq!(c.source_of("system_services.enable").unwrap().to_string(), "env SYSDEPLOY_SYSTEM_SERVICES__ENABLE");
    assert_eq!(c.source_of("node.state_dir").unwrap().to_string(), "flag --state-dir");
    assert!(c.source_of("system_services.call_ttl_ms").unwrap().to_string().ends_with("sysdeploy.toml:7"));
}

#[test]
fn config_path_from_env_when_no_flag() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[system_services]\ncall_ttl_ms = 7\n").unwrap();
    let opts = LoadOptions { env: env(&[("SYSDEPLOY_CONFIG", p.to_str().unwrap())]), ..Default::default() };
    let c = load(&opts, &schemas()).unwrap();
    assert_eq!(c.system_services.call_ttl_ms, 7);
    assert_eq!(c.config_file.as_deref(), Some(p.as_path()));

    let missing = LoadOptions { env: env(&[("SYSDEPLOY_CONFIG", "/nonexistent/x.toml")]), ..Default::default() };
    let p = problems(&missing);
    assert_eq!(p.len(), 1);
    assert!(p[0].to_string().contains("/nonexistent/x.toml (from env SYSDEPLOY_CONFIG) does not exist"), "{}", p[0]);
}

#[test]
fn every_problem_is_reported_with_key_value_source_and_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = with_file(
        dir.path(),
        "nodes = 1\n[system_services]\nenable = [\"registry\", \"nope\"]\ncall_ttl_ms = \"soon\"\n[system_services.aqua-ipfs]\nx = 1\n[system_services.decider]\ncolour = \"red\"\n",
    );
    opts.env = env(&[
        ("SYSDEPLOY_SYSTEM_SERVICES__REGISTRY__EXPIRED_PERIOD_SEC", "abc"),
        ("SYSDEPLOY_NODE__BOGUS", "1"),
        ("UNRELATED", "ignored"),
    ]);
    opts.flags = vec![FlagValue::new("--api-listen", "node.api_listen", "nowhere")];
    let p = problems(&opts);
    let text: Vec<String> = p.iter().map(|x| x.to_string()).collect();
    let all = text.join("\n");
    assert_eq!(p.len(), 8, "{all}");
    let has = |needle: &str| assert!(all.contains(needle), "missing {needle:?} in\n{all}");
    has("nodes (");
    has("sysdeploy.toml:1): unknown key (did you mean node?)");
    has("system_services.enable = [\"registry\", \"nope\"] (");
    has("sysdeploy.toml:3): unknown package \"nope\"");
    has("system_services.call_ttl_ms = \"soon\" (");
    has("sysdeploy.toml:4): expected a positive integer");
    has("system_services.aqua-ipfs (");
    has("did you mean system_services.aqua_ipfs?");
    has("system_services.decider.colour (");
    has("system_services.registry.expired_period_sec = \"abc\" (env SYSDEPLOY_SYSTEM_SERVICES__REGISTRY__EXPIRED_PERIOD_SEC): expected an integer");
    has("node.bogus (env SYSDEPLOY_NODE__BOGUS): unknown key");
    assert!(!all.contains("\"red\"") && !all.contains("x = 1"), "values of unknown keys are never shown:\n{all}");
    has("node.api_listen = \"nowhere\" (flag --api-listen): expected an IP socket address");
}

#[test]
fn malformed_toml_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let opts = with_file(dir.path(), "[node]\nstate_dir = \"x\"\napi_listen = \n");
    let p = problems(&opts);
    assert!(matches!(&p[0], ConfigProblem::Syntax { line: 3, .. }), "{p:?}");
    assert!(p[0].to_string().contains("sysdeploy.toml:3:"), "{}", p[0]);
}

#[test]
fn duplicate_key_is_a_syntax_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = problems(&with_file(dir.path(), "[node]\nstate_dir = \"a\"\nstate_dir = \"b\"\n"));
    assert!(matches!(&p[0], ConfigProblem::Syntax { line: 3, .. }), "{p:?}");
}

#[test]
fn unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions { config_path: Some(dir.path().to_path_buf()), ..Default::default() };
    assert!(problems(&opts)[0].to_string().contains("cannot be read: it is a directory"));
    let bin = dir.path().join("bin.toml");
    std::fs::write(&bin, b"a = \"\xff\"\n").unwrap();
    let opts = LoadOptions { config_path: Some(bin), ..Default::default() };
    assert!(problems(&opts)[0].to_string().contains("not UTF-8"));
}

#[test]
fn secrets_are_redacted_everywhere() {
    let var = "SYSDEPLOY_SYSTEM_SERVICES__DECIDER__WALLET_KEY";
    let opts = LoadOptions { env: env(&[(var, "0xS3CRET")]), ..Default::default() };
    let c = load(&opts, &schemas()).unwrap();
    let v = c.get("system_services.decider.wallet_key").unwrap();
    assert_eq!(v.value, json!("0xS3CRET"), "the deployer still gets the real value");
    assert_eq!(v.to_string(), REDACTED);
    assert!(!format!("{c:?}").contains("S3CRET"));
    assert!(!format!("{opts:?}").contains("S3CRET"));
    assert!(!serde_json::to_string(&c.entries()).unwrap().contains("S3CRET"));

    // A wrong type for a secret key does not echo the value either.
    let mut s = schemas();
    s[3].keys.push(KeySpec {
        name: "pin".into(),
        ty: ValueType::Integer,
        default: None,
        required: false,
        secret: true,
        doc: String::new(),
        legacy_env: vec![],
    });
    let opts = LoadOptions { env: env(&[("SYSDEPLOY_SYSTEM_SERVICES__DECIDER__PIN", "S3CRET")]), ..Default::default() };
    let e = load(&opts, &s).unwrap_err().to_string();
    assert!(e.contains("system_services.decider.pin = <redacted>"), "{e}");
    assert!(!e.contains("S3CRET"));

    // Nor does a typo of a secret key.
    let opts = LoadOptions { env: env(&[("SYSDEPLOY_SYSTEM_SERVICES__DECIDER__WALET_KEY", "S3CRET")]), ..Default::default() };
    let e = load(&opts, &schemas()).unwrap_err().to_string();
    assert!(e.contains("did you mean SYSDEPLOY_SYSTEM_SERVICES__DECIDER__WALLET_KEY for system_services.decider.wallet_key?"), "{e}");
    assert!(!e.contains("S3CRET"), "{e}");
}

/// The most common env typo: one `_` where `__` was meant. The key, its
/// source and the right name are reported; the value never is, whatever the
/// key looks like, and neither is a value given for a table that holds a
/// secret.
#[test]
fn unknown_keys_never_echo_their_value() {
    let typo = "SYSDEPLOY_SYSTEM_SERVICES__DECIDER_WALLET_KEY";
    let opts = LoadOptions {
        env: env(&[(typo, "0xS3CRET"), ("SYSDEPLOY_SYSTEM_SERVICES__DECIDER", "0xS3CRET2"), ("SYSDEPLOY_NODE__COLOUR", "PLAIN")]),
        ..Default::default()
    };
    let e = load(&opts, &schemas()).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "system_services.decider_wallet_key (env {typo}): unknown key (did you mean \
             SYSDEPLOY_SYSTEM_SERVICES__DECIDER__WALLET_KEY for system_services.decider.wallet_key?)"
        )),
        "{e}"
    );
    assert!(e.contains("system_services.decider = <redacted> (env SYSDEPLOY_SYSTEM_SERVICES__DECIDER)"), "{e}");
    assert!(!e.contains("S3CRET") && !e.contains("PLAIN"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let opts = with_file(dir.path(), "[system_services.decidr]\nwallet_key = \"0xS3CRET\"\n[system_services]\ndecider = \"0xS3CRET2\"\n");
    let e = load(&opts, &schemas()).unwrap_err().to_string();
    assert!(e.contains("system_services.decidr (") && e.contains("did you mean system_services.decider?"), "{e}");
    assert!(e.contains("system_services.decider = <redacted> ("), "{e}");
    assert!(!e.contains("S3CRET"), "{e}");
}

#[test]
fn legacy_env_is_honoured_below_the_new_name_with_a_warning() {
    let key = "system_services.aqua_ipfs.external_api_multiaddr";
    let legacy = "FLUENCE_ENV_AQUA_IPFS_EXTERNAL_API_MULTIADDR";
    let new = "SYSDEPLOY_SYSTEM_SERVICES__AQUA_IPFS__EXTERNAL_API_MULTIADDR";
    let dir = tempfile::tempdir().unwrap();
    let mut opts = with_file(dir.path(), "[system_services.aqua_ipfs]\nexternal_api_multiaddr = \"/file\"\n");
    opts.env = env(&[(legacy, "/legacy")]);
    let c = load(&opts, &schemas()).unwrap();
    assert_eq!(c.get(key).unwrap().value, json!("/legacy"));
    assert_eq!(c.source_of(key), Some(&Source::LegacyEnv { var: legacy.into() }));
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].contains(&format!("{legacy} is deprecated; rename it to {new}")), "{:?}", c.warnings);

    opts.env.push((new.into(), "/new".into()));
    let c = load(&opts, &schemas()).unwrap();
    assert_eq!(c.get(key).unwrap().value, json!("/new"));
    assert!(c.warnings[0].contains("ignored because"), "{:?}", c.warnings);
}

#[test]
fn required_keys_of_enabled_packages_must_be_set() {
    let mut s = schemas();
    let decider = s.iter_mut().find(|p| p.package == "decider").unwrap();
    decider.keys.iter_mut().find(|k| k.name == "wallet_key").unwrap().required = true;
    let e = load(&LoadOptions::default(), &s).unwrap_err();
    assert_eq!(e.0.len(), 1);
    let msg = e.to_string();
    assert!(msg.contains("system_services.decider.wallet_key has no value"), "{msg}");
    assert!(msg.contains("SYSDEPLOY_SYSTEM_SERVICES__DECIDER__WALLET_KEY"), "{msg}");

    let opts = LoadOptions { env: env(&[("SYSDEPLOY_SYSTEM_SERVICES__ENABLE", "registry")]), ..Default::default() };
    assert!(load(&opts, &s).is_ok(), "a disabled package needs nothing");
}

#[test]
fn env_naming_a_table_or_nothing_is_an_error() {
    let p = problems(&LoadOptions { env: env(&[("SYSDEPLOY_NODE", "x"), ("SYSDEPLOY_", "y")]), ..Default::default() });
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p.iter().any(|x| x.to_string().contains("not the table [node]")));
}

#[test]
fn schema_types_apply_to_file_values() {
    let dir = tempfile::tempdir().unwrap();
    let p = problems(&with_file(dir.path(), "[system_services.decider]\ndecider_period_sec = 1.5\nworker_ipfs_multiaddr = 5\n"));
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p.iter().all(|x| matches!(x, ConfigProblem::WrongType { .. })));
}

#[test]
fn an_empty_enable_from_env_is_refused_but_an_empty_list_in_the_file_is_not() {
    for value in ["", ",", " , "] {
        let opts = LoadOptions { env: env(&[("SYSDEPLOY_SYSTEM_SERVICES__ENABLE", value)]), ..Default::default() };
        let msg = load(&opts, &schemas()).unwrap_err().to_string();
        assert!(msg.contains("SYSDEPLOY_SYSTEM_SERVICES__ENABLE") && msg.contains("enable = []"), "{value:?}: {msg}");
        let opts = LoadOptions { flags: vec![FlagValue::set("system_services.enable", value)], ..Default::default() };
        let msg = load(&opts, &schemas()).unwrap_err().to_string();
        assert!(msg.contains("flag --set system_services.enable") && msg.contains("names no package"), "{value:?}: {msg}");
    }
    let dir = tempfile::tempdir().unwrap();
    let c = load(&with_file(dir.path(), "[system_services]\nenable = []\n"), &schemas()).unwrap();
    assert!(c.system_services.enable.is_empty());
}
