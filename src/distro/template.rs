//! Templates in distro manifests: init arguments, spell KV values and trigger
//! fields that refer to config values (`${config.key}`), bundled data files
//! (`${file:certs.json}`) and the current element of a `for_each` list
//! (`${item}`, `${item.field}`).
//!
//! A template is parsed once (at build time for the embedded packages) and
//! resolved many times against the effective config. A string that is exactly
//! one placeholder keeps the placeholder's type (an integer stays an integer);
//! placeholders mixed with text are rendered into a string. `$${` writes a
//! literal `${`.
//!
//! Compiled into both the library and `build.rs`: depends on nothing
//! crate-internal.

use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

/// A parsed template: the value as written in the manifest plus its parsed
/// form, so resolution never re-parses.
#[derive(Clone, PartialEq)]
pub struct Template {
    /// The value as written (TOML converted to JSON); shown in messages.
    source: Value,
    node: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// No placeholder anywhere below: used as is.
    Literal(Value),
    /// A string that is exactly one placeholder: keeps the value's type.
    Whole(Placeholder),
    /// A string mixing text and placeholders: always renders to a string.
    Text(Vec<Part>),
    Array(Vec<Node>),
    Object(BTreeMap<String, Node>),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Ph(Placeholder),
}

/// One `${...}` reference.
#[derive(Debug, Clone, PartialEq)]
pub enum Placeholder {
    /// `${config.key}`: a key of the package's own config section.
    Config(String),
    /// `${file:path}`: a data file bundled in the package folder, loaded when
    /// the manifest is loaded (JSON files parsed, others as a string).
    File {
        path: String,
        value: Arc<Value>,
        /// The file was parsed as JSON (and so may not be spliced into text).
        json: bool,
    },
    /// `${item}` or `${item.a.b}`: the current element of the init call's
    /// `for_each` list (and fields inside it).
    Item(Vec<String>),
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placeholder::Config(k) => write!(f, "${{config.{k}}}"),
            Placeholder::File { path, .. } => write!(f, "${{file:{path}}}"),
            Placeholder::Item(p) if p.is_empty() => f.write_str("${item}"),
            Placeholder::Item(p) => write!(f, "${{item.{}}}", p.join(".")),
        }
    }
}

/// Loads a `${file:..}` data file for [`Template::parse`]: its value and
/// whether it is JSON, or `None` when the loader already reported why not.
pub type FileLoader<'a> = dyn FnMut(&str) -> Option<(Arc<Value>, bool)> + 'a;

/// Where a placeholder sits in its template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The whole string is this placeholder: its value keeps its type.
    Whole,
    /// Spliced into surrounding text: its value must render as text.
    InText,
}

/// Why a template string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateSyntaxError {
    #[error("unterminated placeholder in {0:?}: a `${{` needs a closing `}}` (write `$${{` for a literal `${{`)")]
    Unterminated(String),
    #[error("empty placeholder `${{}}` in {0:?}; expected ${{config.<key>}}, ${{file:<path>}} or ${{item}}")]
    Empty(String),
    #[error("unknown placeholder `${{{0}}}`; expected ${{config.<key>}}, ${{file:<path>}}, ${{item}} or ${{item.<field>}}")]
    Unknown(String),
    #[error("`${{config.{0}}}` is not a valid config key name (lowercase letters, digits and '_', starting with a letter)")]
    BadConfigKey(String),
    #[error("`${{item.{0}}}` is not a valid item field path (dot-separated non-empty field names)")]
    BadItemPath(String),
}

impl Template {
    /// Parses a manifest value. `load_file` is asked for each `${file:..}`
    /// path and returns the file's value and whether it is JSON, or `None`
    /// when it has already reported why the file is unusable (the template
    /// is then rejected; the error list may be empty).
    pub fn parse(source: Value, load_file: &mut FileLoader<'_>) -> Result<Template, Vec<TemplateSyntaxError>> {
        let mut errors = Vec::new();
        let mut failed = false;
        let node = parse_node(&source, load_file, &mut errors, &mut failed);
        if errors.is_empty() && !failed {
            Ok(Template { source, node })
        } else {
            Err(errors)
        }
    }

    /// A template without placeholders.
    pub fn literal(value: Value) -> Template {
        Template { node: Node::Literal(value.clone()), source: value }
    }

    /// The value as written in the manifest.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// The value when the template has no placeholders.
    pub fn as_literal(&self) -> Option<&Value> {
        match &self.node {
            Node::Literal(v) => Some(v),
            _ => None,
        }
    }

    /// The placeholder when the template is exactly one placeholder.
    pub fn as_whole(&self) -> Option<&Placeholder> {
        match &self.node {
            Node::Whole(p) => Some(p),
            _ => None,
        }
    }

    /// Every placeholder with its position, in document order.
    pub fn placeholders(&self) -> Vec<(&Placeholder, Position)> {
        let mut out = Vec::new();
        collect(&self.node, &mut out);
        out
    }

    /// Config keys this template reads, sorted and deduplicated.
    pub fn config_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .placeholders()
            .into_iter()
            .filter_map(|(p, _)| match p {
                Placeholder::Config(k) => Some(k.as_str()),
                _ => None,
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Whether the template refers to `${item}`.
    pub fn uses_item(&self) -> bool {
        self.placeholders().iter().any(|(p, _)| matches!(p, Placeholder::Item(_)))
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({})", self.source)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Value::String(s) => f.write_str(s),
            other => write!(f, "{other}"),
        }
    }
}

fn collect<'a>(node: &'a Node, out: &mut Vec<(&'a Placeholder, Position)>) {
    match node {
        Node::Literal(_) => {}
        Node::Whole(p) => out.push((p, Position::Whole)),
        Node::Text(parts) => out.extend(parts.iter().filter_map(|p| match p {
            Part::Ph(p) => Some((p, Position::InText)),
            Part::Lit(_) => None,
        })),
        Node::Array(items) => items.iter().for_each(|n| collect(n, out)),
        Node::Object(map) => map.values().for_each(|n| collect(n, out)),
    }
}

fn parse_node(v: &Value, load_file: &mut FileLoader<'_>, errors: &mut Vec<TemplateSyntaxError>, failed: &mut bool) -> Node {
    match v {
        Value::String(s) => parse_string(s, load_file, errors, failed),
        Value::Array(items) => {
            let nodes: Vec<Node> = items.iter().map(|i| parse_node(i, load_file, errors, failed)).collect();
            if nodes.iter().all(|n| matches!(n, Node::Literal(_))) {
                Node::Literal(v.clone())
            } else {
                Node::Array(nodes)
            }
        }
        Value::Object(map) => {
            let nodes: BTreeMap<String, Node> = map.iter().map(|(k, i)| (k.clone(), parse_node(i, load_file, errors, failed))).collect();
            if nodes.values().all(|n| matches!(n, Node::Literal(_))) {
                Node::Literal(v.clone())
            } else {
                Node::Object(nodes)
            }
        }
        other => Node::Literal(other.clone()),
    }
}

fn parse_string(s: &str, load_file: &mut FileLoader<'_>, errors: &mut Vec<TemplateSyntaxError>, failed: &mut bool) -> Node {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            lit.push_str(&rest[..at]);
            lit.push_str("${");
            rest = tail;
        } else if let Some(inner) = after.strip_prefix("${") {
            lit.push_str(&rest[..at]);
            let Some(end) = inner.find('}') else {
                errors.push(TemplateSyntaxError::Unterminated(s.to_string()));
                return Node::Literal(Value::String(s.to_string()));
            };
            match parse_placeholder(s, &inner[..end], load_file, failed) {
                Ok(Some(p)) => {
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Ph(p));
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
            rest = &inner[end + 1..];
        } else {
            lit.push_str(&rest[..at + 1]);
            rest = &after[1..];
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    match parts.len() {
        0 => Node::Literal(Value::String(String::new())),
        1 => match parts.pop().expect("one part") {
            Part::Ph(p) => Node::Whole(p),
            Part::Lit(l) => Node::Literal(Value::String(l)),
        },
        _ => Node::Text(parts),
    }
}

fn parse_placeholder(
    whole: &str,
    inner: &str,
    load_file: &mut FileLoader<'_>,
    failed: &mut bool,
) -> Result<Option<Placeholder>, TemplateSyntaxError> {
    if inner.trim().is_empty() {
        return Err(TemplateSyntaxError::Empty(whole.to_string()));
    }
    if let Some(key) = inner.strip_prefix("config.") {
        if !is_config_key(key) {
            return Err(TemplateSyntaxError::BadConfigKey(key.to_string()));
        }
        return Ok(Some(Placeholder::Config(key.to_string())));
    }
    if let Some(path) = inner.strip_prefix("file:") {
        return Ok(match load_file(path) {
            Some((value, json)) => Some(Placeholder::File { path: path.to_string(), value, json }),
            None => {
                *failed = true;
                None
            }
        });
    }
    if inner == "item" {
        return Ok(Some(Placeholder::Item(Vec::new())));
    }
    if let Some(path) = inner.strip_prefix("item.") {
        let fields: Vec<String> = path.split('.').map(str::to_string).collect();
        if fields.iter().any(|f| f.is_empty() || f.chars().any(char::is_whitespace)) {
            return Err(TemplateSyntaxError::BadItemPath(path.to_string()));
        }
        return Ok(Some(Placeholder::Item(fields)));
    }
    Err(TemplateSyntaxError::Unknown(inner.to_string()))
}

/// Config key names: `[a-z][a-z0-9_]*`, at most 64 bytes.
pub fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.as_bytes()[0].is_ascii_lowercase()
        && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

// ---------------------------------------------------------------- resolution

/// Where `resolve` reads config values from: the package's own section of the
/// effective config, keyed by key name. `None` (or JSON `null`) means unset.
pub trait ConfigLookup {
    /// The value of `key` and whether it is a secret.
    fn lookup(&self, key: &str) -> Option<(Cow<'_, Value>, bool)>;
}

impl ConfigLookup for BTreeMap<String, Value> {
    fn lookup(&self, key: &str) -> Option<(Cow<'_, Value>, bool)> {
        self.get(key).map(|v| (Cow::Borrowed(v), false))
    }
}

impl ConfigLookup for HashMap<String, Value> {
    fn lookup(&self, key: &str) -> Option<(Cow<'_, Value>, bool)> {
        self.get(key).map(|v| (Cow::Borrowed(v), false))
    }
}

/// Adapts a closure `key -> Option<(value, secret)>` to [`ConfigLookup`].
pub struct LookupFn<F>(pub F);

impl<F: Fn(&str) -> Option<(Value, bool)>> ConfigLookup for LookupFn<F> {
    fn lookup(&self, key: &str) -> Option<(Cow<'_, Value>, bool)> {
        (self.0)(key).map(|(v, s)| (Cow::Owned(v), s))
    }
}

/// A resolved template.
#[derive(Clone, PartialEq, Eq)]
pub struct Resolved {
    pub value: Value,
    /// Config keys it read (sorted, deduplicated): the deployer records them so
    /// a plan can say which config change caused a reinit.
    pub inputs: Vec<String>,
    /// It read a secret: the value must never be logged, printed or stored in
    /// clear; compare it by hash.
    pub secret: bool,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Resolved");
        if self.secret {
            d.field("value", &"<redacted>");
        } else {
            d.field("value", &self.value);
        }
        d.field("inputs", &self.inputs).field("secret", &self.secret).finish()
    }
}

/// Why a template could not be resolved against a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The key has no value and no default. Init calls whose arguments read an
    /// unset optional key are skipped rather than failed (see the manifest docs).
    #[error("config key {key} is not set; give it a value under [system_services.<package>] or remove its use")]
    Unset { key: String },
    #[error("{placeholder} is {found} and cannot be spliced into text; use it as the whole value instead")]
    NotText { placeholder: String, found: &'static str },
    #[error("{placeholder} is only available in init calls that declare `for_each`")]
    NoItem { placeholder: String },
    #[error("{placeholder}: the current for_each item has no field path {path:?}")]
    ItemField { placeholder: String, path: String },
    #[error("for_each must resolve to a list, got {found}")]
    NotList { found: &'static str },
    #[error("{what} must resolve to a non-negative integer, got {got}")]
    NotInteger { what: String, got: String },
}

/// Resolves `t` against the package's config values.
pub fn resolve<C: ConfigLookup + ?Sized>(t: &Template, values: &C) -> Result<Resolved, TemplateError> {
    resolve_with_item(t, values, None)
}

/// Resolves `t` with `item` bound to the current `for_each` element.
pub fn resolve_with_item<C: ConfigLookup + ?Sized>(t: &Template, values: &C, item: Option<&Value>) -> Result<Resolved, TemplateError> {
    let mut ctx = Ctx { values, item, inputs: Vec::new(), secret: false };
    let value = ctx.node(&t.node)?;
    let mut inputs = ctx.inputs;
    inputs.sort();
    inputs.dedup();
    Ok(Resolved { value, inputs, secret: ctx.secret })
}

struct Ctx<'a, C: ?Sized> {
    values: &'a C,
    item: Option<&'a Value>,
    inputs: Vec<String>,
    secret: bool,
}

impl<C: ConfigLookup + ?Sized> Ctx<'_, C> {
    fn node(&mut self, n: &Node) -> Result<Value, TemplateError> {
        Ok(match n {
            Node::Literal(v) => v.clone(),
            Node::Whole(p) => self.placeholder(p)?,
            Node::Text(parts) => {
                let mut s = String::new();
                for part in parts {
                    match part {
                        Part::Lit(l) => s.push_str(l),
                        Part::Ph(p) => match self.placeholder(p)? {
                            Value::String(v) => s.push_str(&v),
                            Value::Number(n) => s.push_str(&n.to_string()),
                            Value::Bool(b) => s.push_str(if b { "true" } else { "false" }),
                            other => return Err(TemplateError::NotText { placeholder: p.to_string(), found: kind(&other) }),
                        },
                    }
                }
                Value::String(s)
            }
            Node::Array(items) => Value::Array(items.iter().map(|i| self.node(i)).collect::<Result<_, _>>()?),
            Node::Object(map) => {
                Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), self.node(v)?))).collect::<Result<_, TemplateError>>()?)
            }
        })
    }

    fn placeholder(&mut self, p: &Placeholder) -> Result<Value, TemplateError> {
        match p {
            Placeholder::Config(key) => {
                self.inputs.push(key.clone());
                match self.values.lookup(key) {
                    Some((v, secret)) if !v.is_null() => {
                        self.secret |= secret;
                        Ok(v.into_owned())
                    }
                    _ => Err(TemplateError::Unset { key: key.clone() }),
                }
            }
            Placeholder::File { value, .. } => Ok(Value::clone(value)),
            Placeholder::Item(path) => {
                let mut v = self.item.ok_or_else(|| TemplateError::NoItem { placeholder: p.to_string() })?;
                for field in path {
                    v = v.get(field).ok_or_else(|| TemplateError::ItemField { placeholder: p.to_string(), path: path.join(".") })?;
                }
                Ok(v.clone())
            }
        }
    }
}

/// A short name of a JSON value's kind, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Template {
        Template::parse(v, &mut |p| match p {
            "certs.json" => Some((Arc::new(json!([{"a": 1}, {"a": 2}])), true)),
            "motd.txt" => Some((Arc::new(json!("hello\n")), false)),
            _ => None,
        })
        .unwrap()
    }

    fn config() -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("period".to_string(), json!(3600)),
            ("addr".to_string(), json!("/ip4/1.2.3.4/tcp/5001")),
            ("flag".to_string(), json!(true)),
            ("list".to_string(), json!(["a", "b"])),
        ])
    }

    #[test]
    fn whole_placeholder_keeps_type() {
        let r = resolve(&parse(json!("${config.period}")), &config()).unwrap();
        assert_eq!(r.value, json!(3600));
        assert_eq!(r.inputs, vec!["period"]);
        assert!(!r.secret);
        assert_eq!(resolve(&parse(json!("${config.flag}")), &config()).unwrap().value, json!(true));
        assert_eq!(resolve(&parse(json!("${config.list}")), &config()).unwrap().value, json!(["a", "b"]));
    }

    #[test]
    fn text_renders_to_string() {
        let t = parse(json!("every ${config.period}s at ${config.addr} ($${literal}) $5"));
        let r = resolve(&t, &config()).unwrap();
        assert_eq!(r.value, json!("every 3600s at /ip4/1.2.3.4/tcp/5001 (${literal}) $5"));
        assert_eq!(r.inputs, vec!["addr", "period"]);
    }

    #[test]
    fn lists_cannot_be_spliced_into_text() {
        let e = resolve(&parse(json!("x ${config.list}")), &config()).unwrap_err();
        assert_eq!(e, TemplateError::NotText { placeholder: "${config.list}".into(), found: "a list" });
    }

    #[test]
    fn literals_of_any_type_and_nested_templates() {
        let t = parse(json!({"n": 1, "xs": ["${config.period}", 2.5, false], "s": "plain"}));
        let r = resolve(&t, &config()).unwrap();
        assert_eq!(r.value, json!({"n": 1, "xs": [3600, 2.5, false], "s": "plain"}));
        assert!(parse(json!([1, "two"])).as_literal().is_some());
    }

    #[test]
    fn files_and_items() {
        let certs = parse(json!("${file:certs.json}"));
        assert_eq!(resolve(&certs, &config()).unwrap().value, json!([{"a": 1}, {"a": 2}]));
        let motd = parse(json!("motd: ${file:motd.txt}"));
        assert_eq!(resolve(&motd, &config()).unwrap().value, json!("motd: hello\n"));
        let item = parse(json!(["${item.a}", "${item}"]));
        let r = resolve_with_item(&item, &config(), Some(&json!({"a": 7}))).unwrap();
        assert_eq!(r.value, json!([7, {"a": 7}]));
        assert!(matches!(resolve(&item, &config()), Err(TemplateError::NoItem { .. })));
        let missing = resolve_with_item(&parse(json!("${item.b}")), &config(), Some(&json!({"a": 7})));
        assert!(matches!(missing, Err(TemplateError::ItemField { .. })));
    }

    #[test]
    fn unset_and_null_and_secret() {
        let t = parse(json!("${config.wallet_key}"));
        assert_eq!(resolve(&t, &config()).unwrap_err(), TemplateError::Unset { key: "wallet_key".into() });
        let nulls = BTreeMap::from([("wallet_key".to_string(), Value::Null)]);
        assert!(resolve(&t, &nulls).is_err());
        let secret = LookupFn(|k: &str| (k == "wallet_key").then(|| (json!("0xdead"), true)));
        let r = resolve(&t, &secret).unwrap();
        assert!(r.secret);
        assert!(!format!("{r:?}").contains("dead"), "secret leaked into Debug");
    }

    #[test]
    fn syntax_errors() {
        let mut none = |_: &str| None;
        let err = |s: &str| Template::parse(json!(s), &mut |_: &str| None).unwrap_err();
        assert_eq!(err("${config.a"), vec![TemplateSyntaxError::Unterminated("${config.a".into())]);
        assert_eq!(err("${}"), vec![TemplateSyntaxError::Empty("${}".into())]);
        assert_eq!(err("${env.HOME}"), vec![TemplateSyntaxError::Unknown("env.HOME".into())]);
        assert_eq!(err("${config.Bad}"), vec![TemplateSyntaxError::BadConfigKey("Bad".into())]);
        assert_eq!(err("${item..x}"), vec![TemplateSyntaxError::BadItemPath(".x".into())]);
        // A file the loader rejected fails the template without a syntax error.
        assert_eq!(Template::parse(json!("${file:nope.json}"), &mut none).unwrap_err(), vec![]);
    }
}
