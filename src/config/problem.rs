//! What can be wrong with the configuration, and where each value came from.
//!
//! Every problem names the key path, the offending value (redacted when the
//! key is secret), the source and what was expected; [`ConfigErrors`] carries
//! all of them so an operator fixes everything in one round.

use crate::ids::PackageName;
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// Compiled into the binary (fixed keys or a package schema default).
    Default,
    /// The TOML file; `line` is 1-based.
    File { path: PathBuf, line: Option<u32> },
    /// A `SYSDEPLOY_` env var.
    Env { var: String },
    /// A deprecated env name declared by a package (`FLUENCE_ENV_...`).
    LegacyEnv { var: String },
    /// A command-line flag (`--state-dir`, `--set KEY`).
    Flag { flag: String },
    /// A secret read from a file; `via` names what pointed at the file (an
    /// env var `..._FILE`, a `<key>_file` line of the config file, a flag, or
    /// a systemd credential in `$CREDENTIALS_DIRECTORY`).
    SecretFile { path: PathBuf, via: String },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line: Some(l) } => write!(f, "{}:{l}", path.display()),
            Source::File { path, line: None } => write!(f, "{}", path.display()),
            Source::Env { var } => write!(f, "env {var}"),
            Source::LegacyEnv { var } => write!(f, "env {var} (deprecated)"),
            Source::Flag { flag } => write!(f, "flag {flag}"),
            Source::SecretFile { path, via } => write!(f, "file {} (named by {via})", path.display()),
        }
    }
}

/// One thing wrong with the configuration. Values in messages are already
/// redacted where the key is secret.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigProblem {
    #[error("{}:{line}:{column}: malformed TOML: {message}; fix the syntax at that line", path.display())]
    Syntax { path: PathBuf, line: u32, column: u32, message: String },

    #[error("config file {} (from {origin}) does not exist; check the path, or leave out --config and SYSDEPLOY_CONFIG to run on the embedded defaults", path.display())]
    FileMissing { path: PathBuf, origin: Source },

    #[error("config file {} (from {origin}) cannot be read: {reason}; expected a readable UTF-8 TOML file", path.display())]
    FileUnreadable { path: PathBuf, origin: Source, reason: String },

    /// The value is never kept: an unknown key may be a mistyped secret
    /// (`..._DECIDER_WALLET_KEY` for `..._DECIDER__WALLET_KEY`), and this
    /// text reaches stderr, JSON logs and the reload answer.
    /// A huge key is elided on its own, so "unknown key" and the list of
    /// known keys survive the report's line cut however many keys there are.
    #[error("{k} ({origin}): unknown key{hint}; its value is not shown", k = crate::text::elide(key, 200))]
    UnknownKey { key: String, origin: Source, hint: String },

    #[error("{key} = {value} ({origin}): expected {expected}")]
    WrongType { key: String, value: String, origin: Source, expected: String },

    #[error("{key} = {value} ({origin}): unknown package {}; embedded packages are: {}", quoted(unknown), known.join(", "))]
    UnknownPackage { key: String, value: String, origin: Source, unknown: Vec<String>, known: Vec<String> },

    #[error("{key} has no value and no default, and package {package} is enabled; set it under [system_services.{}] in the config file or with env {env_var}", package.config_key())]
    MissingRequired { key: String, package: PackageName, env_var: String },

    /// A secret file that cannot be used; its contents are never shown.
    #[error("{key}: secret file {} (named by {via}) {reason}", path.display())]
    SecretFile { key: String, path: PathBuf, via: String, reason: String },

    #[error("config section {value} ({origin}) is not supported; expected \"system_services\": read [system_services] and [node] from a larger file such as a nox node's config")]
    BadSection { value: String, origin: Source },

    #[error("embedded package schema is invalid: {detail}; this is a bug in the distro, not in your config")]
    BadSchema { detail: String },
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

impl ConfigProblem {
    /// The key path the problem is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigProblem::UnknownKey { key, .. }
            | ConfigProblem::WrongType { key, .. }
            | ConfigProblem::UnknownPackage { key, .. }
            | ConfigProblem::MissingRequired { key, .. }
            | ConfigProblem::SecretFile { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Where the offending input came from, when known.
    pub fn origin(&self) -> Option<Source> {
        match self {
            ConfigProblem::Syntax { path, line, .. } => Some(Source::File { path: path.clone(), line: Some(*line) }),
            ConfigProblem::FileMissing { origin, .. }
            | ConfigProblem::FileUnreadable { origin, .. }
            | ConfigProblem::UnknownKey { origin, .. }
            | ConfigProblem::WrongType { origin, .. }
            | ConfigProblem::UnknownPackage { origin, .. }
            | ConfigProblem::BadSection { origin, .. } => Some(origin.clone()),
            ConfigProblem::SecretFile { path, via, .. } => Some(Source::SecretFile { path: path.clone(), via: via.clone() }),
            ConfigProblem::MissingRequired { .. } | ConfigProblem::BadSchema { .. } => None,
        }
    }
}

/// Every problem found while loading; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every problem is reported, but a hostile or generated file must
        // not turn the report into a dump: at most MAX_SHOWN problems, each
        // cut at MAX_LINE characters.
        const MAX_SHOWN: usize = 100;
        const MAX_LINE: usize = 1000;
        let n = self.0.len();
        write!(f, "invalid configuration ({n} problem{}); nothing was changed:", if n == 1 { "" } else { "s" })?;
        for p in self.0.iter().take(MAX_SHOWN) {
            write!(f, "\n  - {}", crate::text::elide(&p.to_string(), MAX_LINE))?;
        }
        if n > MAX_SHOWN {
            write!(f, "\n  … and {} more problems; fix the ones above first", n - MAX_SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_display_as_operators_read_them() {
        assert_eq!(Source::Default.to_string(), "default");
        assert_eq!(Source::File { path: "/etc/x.toml".into(), line: Some(12) }.to_string(), "/etc/x.toml:12");
        assert_eq!(Source::Env { var: "SYSDEPLOY_NODE__STATE_DIR".into() }.to_string(), "env SYSDEPLOY_NODE__STATE_DIR");
        assert_eq!(Source::Flag { flag: "--state-dir".into() }.to_string(), "flag --state-dir");
    }

    #[test]
    fn errors_list_every_problem() {
        let e = ConfigErrors(vec![
            ConfigProblem::BadSchema { detail: "a".into() },
            ConfigProblem::WrongType {
                key: "node.api_listen".into(),
                value: "\"x\"".into(),
                origin: Source::Env { var: "SYSDEPLOY_NODE__API_LISTEN".into() },
                expected: "an address".into(),
            },
        ]);
        let s = e.to_string();
        assert!(s.starts_with("invalid configuration (2 problems)"), "{s}");
        assert!(s.contains("node.api_listen = \"x\" (env SYSDEPLOY_NODE__API_LISTEN): expected an address"), "{s}");
    }
}
