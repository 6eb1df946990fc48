//! Secrets from files (issue 15): `SYSDEPLOY_<KEY>_FILE`, `<key>_file` in
//! the config file and systemd credentials in `$CREDENTIALS_DIRECTORY`;
//! trailing newlines trimmed, owner-only modes enforced, the value never
//! shown (provenance says "file PATH"), and `--set` of a secret warned about.

use serde_json::json;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use sysdeploy::config::{self, ConfigErrors, EffectiveConfig, FlagValue, LoadOptions, Source};
use sysdeploy::distro;

const KEY: &str = "system_services.decider.wallet_key";
const ENV: &str = "SYSDEPLOY_SYSTEM_SERVICES__DECIDER__WALLET_KEY";
const ENV_FILE: &str = "SYSDEPLOY_SYSTEM_SERVICES__DECIDER__WALLET_KEY_FILE";
const SECRET: &str = "0xS3CRETKEY";

fn bin() -> PathBuf {
    std::env::var_os("TEST_SYSDEPLOY_BIN").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_BIN_EXE_sysdeploy").into())
}

fn load(file: Option<&Path>, env: &[(&str, &str)], flags: Vec<FlagValue>) -> Result<EffectiveConfig, ConfigErrors> {
    let opts = LoadOptions {
        config_path: file.map(Path::to_path_buf),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        flags,
    };
    config::load(&opts, &distro::package_schemas())
}

/// Writes `text` to `dir/name` with `mode`.
fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn file_source(c: &EffectiveConfig) -> (PathBuf, String) {
    match c.source_of(KEY) {
        Some(Source::SecretFile { path, via }) => (path.clone(), via.clone()),
        other => panic!("{KEY} does not come from a file: {other:?}"),
    }
}

#[test]
fn env_file_form_reads_the_secret_and_trims_the_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let p = secret_file(dir.path(), "wallet", &format!("{SECRET}\n"), 0o600);
    let c = load(None, &[(ENV_FILE, p.to_str().unwrap())], vec![]).unwrap_or_else(|e| panic!("{e}"));
    let v = c.get(KEY).unwrap();
    assert_eq!(v.value, json!(SECRET));
    assert!(v.secret);
    assert_eq!(file_source(&c), (p.clone(), format!("env {ENV_FILE}")));
    assert_eq!(c.source_of(KEY).unwrap().to_string(), format!("file {} (named by env {ENV_FILE})", p.display()));

    // CRLF and several newlines too; 0400 is owner-only as well.
    let p = secret_file(dir.path(), "crlf", &format!("{SECRET}\r\n\n"), 0o400);
    let c = load(None, &[(ENV_FILE, p.to_str().unwrap())], vec![]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.get(KEY).unwrap().value, json!(SECRET));
    // Redacted in every rendering.
    let entry = c.entries().into_iter().find(|e| e.key == KEY).unwrap();
    assert_eq!(entry.value, json!(config::REDACTED));
}

#[test]
fn config_file_form_is_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("creds")).unwrap();
    let p = secret_file(&dir.path().join("creds"), "wallet", &format!("{SECRET}\n"), 0o600);
    let cfg = dir.path().join("sysdeploy.toml");
    fs::write(&cfg, "[system_services.decider]\nwallet_key_file = \"creds/wallet\"\n").unwrap();
    let c = load(Some(&cfg), &[], vec![]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.get(KEY).unwrap().value, json!(SECRET));
    let (path, via) = file_source(&c);
    assert_eq!(fs::canonicalize(path).unwrap(), fs::canonicalize(&p).unwrap());
    assert_eq!(via, format!("{}:2", cfg.display()));

    // Both forms in one table: refused, naming both.
    fs::write(&cfg, "[system_services.decider]\nwallet_key = \"0xother\"\nwallet_key_file = \"creds/wallet\"\n").unwrap();
    let err = load(Some(&cfg), &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("either wallet_key or wallet_key_file"), "{err}");
    assert!(!err.contains("0xother") && !err.contains(SECRET), "{err}");
    // Only secret keys have a file form.
    fs::write(&cfg, "[system_services.decider]\ndecider_period_sec_file = \"creds/wallet\"\n").unwrap();
    let err = load(Some(&cfg), &[], vec![]).unwrap_err().to_string();
    assert!(err.contains("decider_period_sec_file") && err.contains("unknown key"), "{err}");
}

#[test]
fn systemd_credentials_are_named_by_the_dotted_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = secret_file(dir.path(), KEY, &format!("{SECRET}\n"), 0o400);
    // Files that are not secret keys are someone else's: ignored.
    secret_file(dir.path(), "unrelated", "x", 0o644);
    let creds = dir.path().to_str().unwrap();
    let c = load(None, &[("CREDENTIALS_DIRECTORY", creds)], vec![]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.get(KEY).unwrap().value, json!(SECRET));
    assert_eq!(file_source(&c).0, p);
    // The env var outranks the credential.
    let c = load(None, &[("CREDENTIALS_DIRECTORY", creds), (ENV, "0xfromenv")], vec![]).unwrap();
    assert_eq!(c.get(KEY).unwrap().value, json!("0xfromenv"));
    // Without the variable, nothing is read.
    assert_eq!(load(None, &[], vec![]).unwrap().get(KEY), None);
}

#[test]
fn env_and_env_file_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = secret_file(dir.path(), "wallet", SECRET, 0o600);
    let err = load(None, &[(ENV, "0xother"), (ENV_FILE, p.to_str().unwrap())], vec![]).unwrap_err().to_string();
    assert!(err.contains(&format!("either {ENV} or {ENV_FILE}, not both")), "{err}");
    assert!(!err.contains("0xother") && !err.contains(SECRET), "{err}");
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = Command::new(bin()).args(args).current_dir(dir).env_clear().envs(env.iter().copied()).output().expect("run sysdeploy");
    Out {
        code: out.status.code().expect("exited normally"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_file_others_can_read_is_refused_with_exit_2_naming_path_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    // Group-read alone by one of our groups (0640, 0440) is accepted: the
    // Kubernetes fsGroup case, tested in tests/kube.rs.
    for mode in [0o644, 0o604, 0o660, 0o650] {
        let p = secret_file(dir.path(), "wallet", SECRET, mode);
        let out = run(dir.path(), &["config"], &[(ENV_FILE, p.to_str().unwrap())]);
        assert_eq!(out.code, 2, "mode {mode:o}: {}", out.stderr);
        let mode_text = format!("mode {mode:04o}");
        for needle in [KEY, p.to_str().unwrap(), mode_text.as_str(), "chmod 600", ENV_FILE] {
            assert!(out.stderr.contains(needle), "mode {mode:o}: stderr lacks {needle:?}: {}", out.stderr);
        }
        assert!(!out.stderr.contains(SECRET) && !out.stdout.contains(SECRET));
        assert!(!dir.path().join(".sysdeploy").exists(), "nothing on disk is touched");
    }
    // A missing file names the path too.
    let out = run(dir.path(), &["config"], &[(ENV_FILE, "/nonexistent/wallet")]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("/nonexistent/wallet") && out.stderr.contains("cannot be read"), "{}", out.stderr);
}

#[test]
fn config_output_shows_the_file_never_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let p = secret_file(dir.path(), "wallet", &format!("{SECRET}\n"), 0o600);
    let env = [(ENV_FILE, p.to_str().unwrap()), ("RUST_LOG", "trace")];
    let out = run(dir.path(), &["config", "--json"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["values"][KEY]["value"], config::REDACTED);
    assert_eq!(j["values"][KEY]["source"], format!("file {} (named by env {ENV_FILE})", p.display()));
    let out = run(dir.path(), &["config"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&format!("file {}", p.display())), "{}", out.stdout);
    assert!(!format!("{}{}", out.stdout, out.stderr).contains(SECRET));
}

#[test]
fn set_of_a_secret_warns_that_it_shows_in_ps() {
    let dir = tempfile::tempdir().unwrap();
    let set = format!("{KEY}={SECRET}");
    let out = run(dir.path(), &["--set", &set, "config"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("shows in `ps`") && out.stderr.contains(ENV_FILE), "{}", out.stderr);
    assert!(!out.stderr.contains(SECRET) && !out.stdout.contains(SECRET));
    // A non-secret key gets no such warning.
    let out = run(dir.path(), &["--set", "system_services.decider.decider_period_sec=60", "config"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("`ps`"), "{}", out.stderr);
}
