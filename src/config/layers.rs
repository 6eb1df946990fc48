//! The config layers (defaults, file, legacy env, env, flags), each read and
//! checked on its own into a flat map of key path → (value, source), and the
//! figment provider that feeds them to the merge.
//!
//! Each layer is validated separately so a bad value is reported with its own
//! source even when a higher layer overrides it.

use super::catalog::{
    self, Catalog, Kind, Leaf, Mismatch, CLI_ENV, ENV_CONFIG, ENV_JOIN_ALL_DEALS, ENV_PREFIX, JOIN_ALL_DEALS_PACKAGE,
    LEGACY_SECTION_PREFIX, SECTION_TABLES,
};
use super::problem::{ConfigProblem, Source};
use super::secrets;
use super::FlagValue;
use figment::value::{Dict, Map, Value as FigValue};
use figment::{Metadata, Profile, Provider};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// One layer, flattened: key path → checked value and where it came from.
#[derive(Debug, Default)]
pub(crate) struct Layer {
    /// Figment metadata name; maps a merged value's tag back to this layer.
    pub name: &'static str,
    pub values: BTreeMap<String, (Json, Source)>,
}

impl Layer {
    fn new(name: &'static str) -> Self {
        Layer { name, values: BTreeMap::new() }
    }
}

impl Provider for &Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Json::Object(Default::default());
        for (path, (value, _)) in &self.values {
            let mut node = &mut root;
            let mut parts = path.split('.').peekable();
            while let Some(part) = parts.next() {
                let obj = node.as_object_mut().expect("only tables have children: the catalogue keeps leaves and tables apart");
                if parts.peek().is_none() {
                    obj.insert(part.to_string(), value.clone());
                    break;
                }
                node = obj.entry(part.to_string()).or_insert_with(|| Json::Object(Default::default()));
            }
        }
        match FigValue::serialize(root)? {
            FigValue::Dict(_, dict) => Ok(Profile::Default.collect(dict)),
            _ => unreachable!("an object serialises to a dict"),
        }
    }
}

/// The compiled-in defaults of every key that has one.
pub(crate) fn defaults(cat: &Catalog) -> Layer {
    let mut layer = Layer::new("default");
    for leaf in cat.leaves() {
        if let Some(d) = &leaf.default {
            layer.values.insert(leaf.path.clone(), (d.clone(), Source::Default));
        }
    }
    layer
}

/// What the loader tells the operator besides problems: deprecations
/// (`warnings`, also shown by `sysdeploy config`) and plain information
/// (`notices`, such as the top-level keys section mode ignored).
#[derive(Debug, Default)]
pub(crate) struct Notes {
    pub warnings: Vec<String>,
    pub notices: Vec<String>,
}

/// Reads the config file named by `--config` or `SYSDEPLOY_CONFIG`, if any.
/// With `section` (section mode) only the `[system_services]` and `[node]`
/// tables are read, strictly; every other top-level key is named in one notice.
pub(crate) fn file(
    config_path: Option<&Path>,
    env: &[(String, String)],
    section: Option<&str>,
    cat: &Catalog,
    problems: &mut Vec<ConfigProblem>,
    notes: &mut Notes,
) -> (Option<PathBuf>, Layer) {
    let mut layer = Layer::new("file");
    let (path, origin) = match config_path {
        Some(p) => (p.to_path_buf(), Source::Flag { flag: "--config".into() }),
        None => match env.iter().rev().find(|(k, v)| k == ENV_CONFIG && !v.is_empty()) {
            Some((k, v)) => (PathBuf::from(v), Source::Env { var: k.clone() }),
            None => return (None, layer),
        },
    };
    let text = match read_text(&path) {
        Ok(t) => t,
        Err(Unreadable::Missing) => {
            problems.push(ConfigProblem::FileMissing { path: path.clone(), origin });
            return (Some(path), layer);
        }
        Err(Unreadable::Other(reason)) => {
            problems.push(ConfigProblem::FileUnreadable { path: path.clone(), origin, reason });
            return (Some(path), layer);
        }
    };
    let (table, errors) = DeTable::parse_recoverable(&text);
    if !errors.is_empty() {
        // Recovered contents after a syntax error are guesses; report the
        // syntax only, so the messages point at what to fix.
        for e in errors {
            let (line, column) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((1, 1));
            let message = e.message().replace('\n', "; ");
            problems.push(ConfigProblem::Syntax { path: path.clone(), line, column, message });
        }
        return (Some(path), layer);
    }
    let walker = FileWalker { cat, path: &path, text: &text, section_mode: section.is_some() };
    let mut found = Vec::new();
    let mut ignored = Vec::new();
    walker.table(table.get_ref(), "", &mut layer, &mut found, notes, &mut ignored);
    if let Some(section) = section {
        if !ignored.is_empty() {
            notes.notices.push(format!(
                "config file {}: section mode ({section}) reads only [{}]; ignored the other top-level keys: {}",
                path.display(),
                SECTION_TABLES.join("] and ["),
                ignored.join(", ")
            ));
        }
        if !table.get_ref().contains_key(section) {
            notes.notices.push(format!(
                "config file {}: section mode ({section}) found no [{section}] table; its keys keep their defaults",
                path.display()
            ));
        }
    }
    // Tables iterate in key order; operators read files top to bottom.
    found.sort_by_key(|p| match p.origin() {
        Some(Source::File { line, .. }) => line,
        _ => None,
    });
    problems.extend(found);
    (Some(path), layer)
}

enum Unreadable {
    Missing,
    Other(String),
}

/// Reads a regular UTF-8 file, refusing anything else up front (a fifo would
/// block the boot forever).
fn read_text(path: &Path) -> Result<String, Unreadable> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Unreadable::Missing),
        Err(e) => return Err(Unreadable::Other(e.to_string())),
    };
    if meta.is_dir() {
        return Err(Unreadable::Other("it is a directory".into()));
    }
    if !meta.is_file() {
        return Err(Unreadable::Other("it is not a regular file (a fifo, socket or device)".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| Unreadable::Other(e.to_string()))?;
    String::from_utf8(bytes)
        .map_err(|e| Unreadable::Other(format!("it is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to())))
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line as u32, column as u32)
}

struct FileWalker<'a> {
    cat: &'a Catalog,
    path: &'a Path,
    text: &'a str,
    /// Top-level keys other than [`SECTION_TABLES`] are skipped, not errors.
    section_mode: bool,
}

impl FileWalker<'_> {
    fn source(&self, offset: usize) -> Source {
        Source::File { path: self.path.to_path_buf(), line: Some(line_col(self.text, offset).0) }
    }

    fn table(
        &self,
        table: &DeTable<'_>,
        prefix: &str,
        layer: &mut Layer,
        problems: &mut Vec<ConfigProblem>,
        notes: &mut Notes,
        ignored: &mut Vec<String>,
    ) {
        for (key, value) in table.iter() {
            let path = if prefix.is_empty() { key.get_ref().to_string() } else { format!("{prefix}.{}", key.get_ref()) };
            let v = value.get_ref();
            if prefix.is_empty() && self.section_mode && !SECTION_TABLES.contains(&key.get_ref().as_ref()) {
                ignored.push(path);
                continue;
            }
            if let Some(leaf) = self.cat.leaf(&path) {
                let origin = self.source(value.span().start);
                match self.cat.check_toml(leaf.kind, v) {
                    Ok(json) => {
                        layer.values.insert(path, (json, origin));
                    }
                    Err(m) => problems.push(mismatch(self.cat, leaf, redact(leaf.secret, catalog::show_toml(v)), origin, m)),
                }
            } else if self.cat.is_table(&path) {
                match v {
                    DeValue::Table(t) => self.table(t, &path, layer, problems, notes, ignored),
                    _ => problems.push(ConfigProblem::WrongType {
                        key: path.clone(),
                        value: redact(self.cat.holds_secret(&path), catalog::show_toml(v)),
                        origin: self.source(value.span().start),
                        expected: format!("a table ([{path}])"),
                    }),
                }
            } else if let Some(leaf) = secrets::target(self.cat, &path).filter(|l| l.secret) {
                self.secret_file(table, leaf, v, self.source(value.span().start), layer, problems);
            } else if let Some(why) = catalog::retired(&path) {
                notes.warnings.push(retired_warning(&path, &self.source(key.span().start), why));
            } else if let (true, DeValue::Table(t)) = (self.cat.is_retired_table(&path), v) {
                self.table(t, &path, layer, problems, notes, ignored);
            } else {
                let mut p = unknown(self.cat, prefix, path, self.source(key.span().start));
                if let (true, ConfigProblem::UnknownKey { hint, .. }) = (prefix.is_empty(), &mut p) {
                    hint.push_str(&format!(
                        "; if this is a node's own config file with [{}] among other sections, read only that section \
                         with --config-section {0}",
                        catalog::SECTION_SYSTEM_SERVICES
                    ));
                }
                problems.push(p);
            }
        }
    }
}

impl FileWalker<'_> {
    /// `<key>_file = "PATH"` for a secret key: a path relative to the config
    /// file's directory; the key itself in the same table is a conflict.
    fn secret_file(
        &self,
        table: &DeTable<'_>,
        leaf: &Leaf,
        v: &DeValue<'_>,
        origin: Source,
        layer: &mut Layer,
        problems: &mut Vec<ConfigProblem>,
    ) {
        let name = leaf.path.rsplit('.').next().unwrap_or_default();
        let DeValue::String(file) = v else {
            return problems.push(ConfigProblem::WrongType {
                key: format!("{}{}", leaf.path, secrets::FILE_SUFFIX),
                value: catalog::show_toml(v),
                origin,
                expected: format!("a string: the path of a file holding {}", leaf.path),
            });
        };
        if table.iter().any(|(k, _)| k.get_ref() == name) {
            return problems.push(ConfigProblem::WrongType {
                key: leaf.path.clone(),
                value: super::REDACTED.into(),
                origin,
                expected: format!("either {name} or {name}{} in the file, not both; remove one", secrets::FILE_SUFFIX),
            });
        }
        let base = self.path.parent().unwrap_or(Path::new(""));
        let path = base.join(file.as_ref());
        secret_file(self.cat, leaf, &path, origin.to_string(), layer, problems);
    }
}

fn retired_warning(path: &str, origin: &Source, why: &str) -> String {
    format!("{path} ({origin}) is deprecated and ignored: {why}")
}

/// A legacy value that does not parse: refused for secrets (a garbled key
/// must not silently leave the node unsigned), otherwise ignored with a
/// warning, as the old node did.
fn legacy_unparsable(leaf: &Leaf, problem: ConfigProblem, notes: &mut Notes, problems: &mut Vec<ConfigProblem>) {
    if leaf.secret {
        problems.push(problem);
    } else {
        notes.warnings.push(format!("{problem}; ignored, as the old node did (the value from a lower layer applies)"));
    }
}

/// Deprecated env names declared by packages and nox's
/// `FLUENCE_ENV_CONNECTOR_JOIN_ALL_DEALS`, below the `SYSDEPLOY_` names.
/// `base_enable` is `enable` as the lower layers (defaults, file) leave it:
/// the value `JOIN_ALL_DEALS` edits.
pub(crate) fn legacy_env(
    env: &[(String, String)],
    cat: &Catalog,
    base_enable: Option<&Json>,
    problems: &mut Vec<ConfigProblem>,
    notes: &mut Notes,
) -> Layer {
    let mut layer = Layer::new("legacy env");
    for leaf in cat.leaves() {
        let current = leaf.env_var();
        let overridden = higher_name(env, leaf);
        for legacy in &leaf.legacy_env {
            let Some((_, text)) = env.iter().rev().find(|(k, _)| k == legacy) else { continue };
            let origin = Source::LegacyEnv { var: legacy.clone() };
            if layer.values.contains_key(&leaf.path) {
                notes.warnings.push(format!(
                    "env {legacy} is deprecated and ignored: an earlier legacy name already sets {}; use {current}",
                    leaf.path
                ));
                continue;
            }
            match &overridden {
                Some(higher) => {
                    notes.warnings.push(format!("env {legacy} is deprecated and ignored because {higher} is also set; unset {legacy}"))
                }
                None => notes.warnings.push(format!("env {legacy} is deprecated; rename it to {current}")),
            }
            if let Some(p) = not_utf8(leaf, text, &origin) {
                legacy_unparsable(leaf, p, notes, problems);
                continue;
            }
            match cat.check_text(leaf.kind, text) {
                Ok(json) => {
                    layer.values.insert(leaf.path.clone(), (json, origin));
                }
                Err(m) => {
                    let p = mismatch(cat, leaf, redact(leaf.secret, catalog::show_text(text)), origin, m);
                    legacy_unparsable(leaf, p, notes, problems);
                }
            }
        }
    }
    if let (Some((var, text)), Some(leaf)) = (env.iter().rev().find(|(k, _)| k == ENV_JOIN_ALL_DEALS), cat.leaf("system_services.enable")) {
        join_all_deals(env, var, text, leaf, cat, base_enable, &mut layer, problems, notes);
    }
    layer
}

/// The `SYSDEPLOY_` name of `leaf` or its `FLUENCE_SYSTEM_SERVICES__` alias,
/// if one is set: it outranks every legacy name.
fn higher_name(env: &[(String, String)], leaf: &Leaf) -> Option<String> {
    let current = leaf.env_var();
    let alias =
        leaf.path.strip_prefix("system_services.").map(|rest| format!("{LEGACY_SECTION_PREFIX}{}", rest.replace('.', "__").to_uppercase()));
    env.iter().map(|(k, _)| k).find(|k| **k == current || Some(*k) == alias.as_ref()).cloned()
}

/// `FLUENCE_ENV_CONNECTOR_JOIN_ALL_DEALS`: `true` adds the decider to
/// `enable` as the lower layers leave it, `false` removes it. Anything else is
/// refused: `enable` decides which services (and their data) exist.
#[allow(clippy::too_many_arguments)]
fn join_all_deals(
    env: &[(String, String)],
    var: &str,
    text: &str,
    leaf: &Leaf,
    cat: &Catalog,
    base_enable: Option<&Json>,
    layer: &mut Layer,
    problems: &mut Vec<ConfigProblem>,
    notes: &mut Notes,
) {
    let origin = Source::LegacyEnv { var: var.to_string() };
    let edit = format!("it now adds {JOIN_ALL_DEALS_PACKAGE} to (true) or removes it from (false) system_services.enable");
    match higher_name(env, leaf) {
        Some(higher) => notes.warnings.push(format!("env {var} is deprecated and ignored because {higher} is also set; unset {var}")),
        None => notes
            .warnings
            .push(format!("env {var} is deprecated: {edit}; list the packages in enable in the file or in {} instead", leaf.env_var())),
    }
    let join = match text.trim() {
        "true" => true,
        "false" => false,
        _ => {
            problems.push(ConfigProblem::WrongType {
                key: leaf.path.clone(),
                value: catalog::show_text(text),
                origin,
                expected: format!(
                    "true (add {JOIN_ALL_DEALS_PACKAGE} to enable) or false (remove it); refused rather than ignored because \
                     enable decides which services and their data exist"
                ),
            });
            return;
        }
    };
    let mut list: Vec<Json> = base_enable.and_then(Json::as_array).cloned().unwrap_or_default();
    let decider = Json::from(JOIN_ALL_DEALS_PACKAGE);
    if join {
        if !list.contains(&decider) {
            list.push(decider);
        }
    } else {
        list.retain(|p| *p != decider);
    }
    match cat.check(Kind::Packages, &Json::from(list)) {
        Ok(json) => {
            layer.values.insert(leaf.path.clone(), (json, origin));
        }
        Err(m) => problems.push(mismatch(cat, leaf, catalog::show_text(text), origin, m)),
    }
}

/// `SYSDEPLOY_` env vars: `__` between levels, lower-cased keys. nox's
/// `FLUENCE_SYSTEM_SERVICES__` names are read first as aliases of
/// `SYSDEPLOY_SYSTEM_SERVICES__` (a `SYSDEPLOY_` name of the same key wins),
/// with one deprecation warning naming them all.
pub(crate) fn env(env: &[(String, String)], cat: &Catalog, problems: &mut Vec<ConfigProblem>, notes: &mut Notes) -> Layer {
    let mut layer = Layer::new("env");
    let mut aliased = Vec::new();
    for (var, text) in env {
        let Some(rest) = var.strip_prefix(LEGACY_SECTION_PREFIX) else { continue };
        let path = format!("system_services.{}", rest.split("__").map(str::to_lowercase).collect::<Vec<_>>().join("."));
        let origin = Source::LegacyEnv { var: var.clone() };
        text_value(cat, &path, text, origin, &mut layer, problems, notes);
        aliased.push(var.as_str());
    }
    if !aliased.is_empty() {
        notes.warnings.push(format!(
            "env {}: the {LEGACY_SECTION_PREFIX} prefix is deprecated and read as {ENV_PREFIX}SYSTEM_SERVICES__; rename {}",
            aliased.join(", "),
            if aliased.len() == 1 { "it" } else { "them" }
        ));
    }
    for (var, text) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else { continue };
        if CLI_ENV.contains(&var.as_str()) {
            continue;
        }
        let path = rest.split("__").map(str::to_lowercase).collect::<Vec<_>>().join(".");
        let origin = Source::Env { var: var.clone() };
        text_value(cat, &path, text, origin, &mut layer, problems, notes);
        let both = secrets::target(cat, &path).filter(|l| l.secret && env.iter().any(|(k, _)| *k == l.env_var()));
        if let Some(leaf) = both {
            problems.push(ConfigProblem::WrongType {
                key: leaf.path.clone(),
                value: super::REDACTED.into(),
                origin: Source::Env { var: leaf.env_var() },
                expected: format!("either {} or {var}, not both; unset one of them", leaf.env_var()),
            });
        }
    }
    layer
}

/// `--state-dir`, `--api-listen` and `--set KEY=VALUE`.
pub(crate) fn flags(flags: &[FlagValue], cat: &Catalog, problems: &mut Vec<ConfigProblem>, notes: &mut Notes) -> Layer {
    let mut layer = Layer::new("flags");
    for f in flags.iter().filter(|f| f.key != catalog::SECTION_KEY) {
        let origin = Source::Flag { flag: f.flag.clone() };
        if let (true, Some(leaf)) = (f.flag.starts_with("--set "), cat.leaf(&f.key).filter(|l| l.secret)) {
            notes.warnings.push(format!(
                "{}: {} is a secret, and a value on the command line shows in `ps` and shell history to other users of \
                 the machine; give it as a file instead: {}{} or {}{} = \"PATH\" in the config file (mode 600), or a \
                 systemd credential named {}",
                f.flag,
                leaf.path,
                leaf.env_var(),
                secrets::FILE_SUFFIX.to_uppercase(),
                leaf.path.rsplit('.').next().unwrap_or_default(),
                secrets::FILE_SUFFIX,
                leaf.path
            ));
        }
        text_value(cat, &f.key, &f.value, origin, &mut layer, problems, notes);
    }
    layer
}

/// Checks one text value (env or flag) against the key at `path`.
fn text_value(
    cat: &Catalog,
    path: &str,
    text: &str,
    origin: Source,
    layer: &mut Layer,
    problems: &mut Vec<ConfigProblem>,
    notes: &mut Notes,
) {
    if let Some(why) = catalog::retired(path) {
        notes.warnings.push(retired_warning(path, &origin, why));
    } else if let Some(leaf) = cat.leaf(path) {
        if let Some(p) = not_utf8(leaf, text, &origin) {
            problems.push(p);
            return;
        }
        match cat.check_text(leaf.kind, text) {
            Ok(json) => {
                layer.values.insert(path.to_string(), (json, origin));
            }
            Err(m) => problems.push(mismatch(cat, leaf, redact(leaf.secret, catalog::show_text(text)), origin, m)),
        }
    } else if let Some(leaf) = secrets::target(cat, path).filter(|l| l.secret) {
        secret_file(cat, leaf, Path::new(text), origin.to_string(), layer, problems);
    } else if cat.is_table(path) && !path.split('.').any(str::is_empty) {
        problems.push(ConfigProblem::WrongType {
            key: path.to_string(),
            value: redact(cat.holds_secret(path), catalog::show_text(text)),
            origin,
            expected: format!("a single key, not the table [{path}]; set its keys one by one ({})", cat.children(path).join(", ")),
        });
    } else {
        let parent = path.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        problems.push(unknown(cat, parent, path.to_string(), origin));
    }
}

/// Reads the secret of `leaf` from the file at `path` (named by `via`) into
/// `layer`, checked like any other value of the key.
fn secret_file(cat: &Catalog, leaf: &Leaf, path: &Path, via: String, layer: &mut Layer, problems: &mut Vec<ConfigProblem>) {
    let text = match secrets::read(&leaf.path, path, &via) {
        Ok(t) => t,
        Err(p) => return problems.push(p),
    };
    let origin = Source::SecretFile { path: path.to_path_buf(), via };
    match cat.check_text(leaf.kind, &text) {
        Ok(json) => {
            layer.values.insert(leaf.path.clone(), (json, origin));
        }
        Err(m) => problems.push(mismatch(cat, leaf, super::REDACTED.to_string(), origin, m)),
    }
}

/// systemd credentials: for every secret key, a file named by its dotted
/// path (`system_services.decider.wallet_key`) in `$CREDENTIALS_DIRECTORY`,
/// if there is one. Other files there are not ours and are left alone.
pub(crate) fn credentials(env: &[(String, String)], cat: &Catalog, problems: &mut Vec<ConfigProblem>) -> Layer {
    let mut layer = Layer::new("credentials");
    let Some((_, dir)) = env.iter().rev().find(|(k, v)| k == secrets::ENV_CREDENTIALS_DIRECTORY && !v.is_empty()) else {
        return layer;
    };
    for leaf in cat.leaves().filter(|l| l.secret) {
        let path = Path::new(dir).join(&leaf.path);
        if std::fs::symlink_metadata(&path).is_ok() {
            let via = format!("systemd credential {} in ${}", leaf.path, secrets::ENV_CREDENTIALS_DIRECTORY);
            secret_file(cat, leaf, &path, via, &mut layer, problems);
        }
    }
    layer
}

/// The process environment reaches the loader lossily converted (`cli::main`),
/// so bytes that were not UTF-8 arrive as U+FFFD. Such a value is garbled
/// (a wrong locale, a binary secret pasted raw): refuse it instead of
/// deploying the replacement characters.
fn not_utf8(leaf: &Leaf, text: &str, origin: &Source) -> Option<ConfigProblem> {
    text.contains('\u{FFFD}').then(|| ConfigProblem::WrongType {
        key: leaf.path.clone(),
        value: redact(leaf.secret, catalog::show_text(text)),
        origin: origin.clone(),
        expected: "valid UTF-8 text; the value holds bytes that are not UTF-8 (shown as \u{FFFD}): re-export it as UTF-8".into(),
    })
}

fn redact(secret: bool, shown: String) -> String {
    if secret {
        super::REDACTED.to_string()
    } else {
        shown
    }
}

fn mismatch(cat: &Catalog, leaf: &Leaf, value: String, origin: Source, m: Mismatch) -> ConfigProblem {
    match m {
        Mismatch::Expected(expected) => ConfigProblem::WrongType { key: leaf.path.clone(), value, origin, expected },
        Mismatch::UnknownPackages(unknown) => ConfigProblem::UnknownPackage {
            key: leaf.path.clone(),
            value,
            origin,
            unknown,
            known: cat.packages.iter().map(|p| p.to_string()).collect(),
        },
    }
}

/// An unknown key: its name, where it came from and the nearest known key
/// (as an env var name when it came from the env), never its value.
fn unknown(cat: &Catalog, parent: &str, key: String, origin: Source) -> ConfigProblem {
    let mut hint = String::new();
    if let Some(s) = cat.suggestion(&key) {
        match (&origin, cat.leaf(&s)) {
            (Source::Env { .. }, Some(leaf)) => hint.push_str(&format!(" (did you mean {} for {s}?)", leaf.env_var())),
            _ => hint.push_str(&format!(" (did you mean {s}?)")),
        }
    }
    if cat.is_table(parent) {
        let where_ = if parent.is_empty() { "at the top level".to_string() } else { format!("in [{parent}]") };
        hint.push_str(&format!("; known keys {where_}: {}", cat.children(parent).join(", ")));
    }
    ConfigProblem::UnknownKey { key, origin, hint }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let t = "a = 1\nbb = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, 11), (2, 6));
        assert_eq!(line_col(t, 999), (3, 1));
    }

    #[test]
    fn layer_feeds_figment_nested_dicts() {
        let mut l = Layer::new("x");
        l.values.insert("a.b".into(), (Json::from(1), Source::Default));
        l.values.insert("a.c".into(), (Json::from("s"), Source::Default));
        let fig = figment::Figment::new().merge(&l);
        assert_eq!(fig.find_value("a.b").unwrap().deserialize::<i64>().unwrap(), 1);
        assert_eq!(fig.find_metadata("a.c").unwrap().name, "x");
    }
}
