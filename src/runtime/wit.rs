//! WIT types as plain data, and the JSON ⇄ component-value conversion used by
//! calls: JSON arguments are checked against the declared [`WitType`]s and
//! turned into `wasmtime::component::Val`s; results go back to JSON.
//!
//! JSON mapping (the same in both directions):
//! bool → `true`; integers → numbers (64-bit ones also accepted as decimal
//! strings, since JSON clients often lose precision above 2^53); floats →
//! numbers, with `"NaN"`, `"inf"`, `"-inf"` as strings; char → one-character
//! string; string → string; list and tuple → array; option → `null` or the
//! value; result → `{"ok": v}` / `{"err": e}` (`null` payload when the case
//! has no type); record → object with the WIT (kebab-case) field names, a
//! missing `option` field meaning none; variant → `{"case": payload}`, or
//! `"case"` for a case without payload; enum → `"case"`; flags → array of the
//! set flag names.

use super::FunctionSig;
use super::WitType;
use serde_json::{Map, Number, Value};
use std::fmt;
use wasmtime::component::types::Type;
use wasmtime::component::Val;

/// Longest JSON excerpt quoted in an error message.
const MAX_GOT_LEN: usize = 80;

/// Why JSON arguments do not fit a function's parameters. Pure data so the
/// deployer can check init arguments at plan time, before anything exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("arguments must be a JSON array with one element per parameter, got {got}")]
    NotAnArray { got: String },
    #[error("expected {expected} argument(s) ({params}), got {got}")]
    WrongCount { expected: usize, got: usize, params: String },
    /// `param` is the parameter name, followed by the path inside it
    /// (`point.x`, `tags[2]`) when the mismatch is nested.
    #[error("parameter {param}: expected {expected}, got {got}")]
    Mismatch { param: String, expected: String, got: String },
    #[error("parameter {param} has type {what}, which cannot be passed as JSON")]
    Unsupported { param: String, what: String },
}

impl ArgError {
    /// The call error the API reports for this argument error.
    pub fn into_call_error(self, target: &str, function: &str) -> super::CallError {
        let (target, function) = (target.to_string(), function.to_string());
        match self {
            ArgError::Mismatch { param, expected, got } => super::CallError::BadArgument { target, function, param, expected, got },
            other => super::CallError::BadArguments { target, function, message: other.to_string() },
        }
    }
}

/// Checks JSON arguments against a function signature without calling it.
pub fn check_args(sig: &FunctionSig, args: &Value) -> Result<(), ArgError> {
    json_args_to_vals(&sig.params, args).map(|_| ())
}

/// Converts a JSON array of arguments into component values per the
/// declared parameter types.
pub fn json_args_to_vals(params: &[(String, WitType)], args: &Value) -> Result<Vec<Val>, ArgError> {
    let items: &[Value] = match args {
        Value::Array(a) => a,
        // A function without parameters may be called with `null` or nothing.
        Value::Null if params.is_empty() => &[],
        other => return Err(ArgError::NotAnArray { got: excerpt(other) }),
    };
    if items.len() != params.len() {
        let list = params.iter().map(|(n, t)| format!("{n}: {t}")).collect::<Vec<_>>().join(", ");
        return Err(ArgError::WrongCount { expected: params.len(), got: items.len(), params: list });
    }
    params.iter().zip(items).map(|((name, ty), v)| json_to_val(ty, v, name)).collect()
}

/// Converts one JSON value to a component value of type `ty`; `path` names
/// the parameter (and the position inside it) for error messages.
pub fn json_to_val(ty: &WitType, v: &Value, path: &str) -> Result<Val, ArgError> {
    convert(ty, v, &Seg::Root(path))
}

/// Where a value sits inside a parameter, built on the stack so the success
/// path allocates nothing for it; rendered only for an error.
enum Seg<'a> {
    Root(&'a str),
    Field(&'a Seg<'a>, &'a str),
    Index(&'a Seg<'a>, usize),
}

impl fmt::Display for Seg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seg::Root(s) => f.write_str(s),
            Seg::Field(p, n) => write!(f, "{p}.{n}"),
            Seg::Index(p, i) => write!(f, "{p}[{i}]"),
        }
    }
}

fn convert(ty: &WitType, v: &Value, path: &Seg<'_>) -> Result<Val, ArgError> {
    let mismatch = || ArgError::Mismatch { param: path.to_string(), expected: ty.to_string(), got: excerpt(v) };
    Ok(match ty {
        WitType::Bool => Val::Bool(v.as_bool().ok_or_else(mismatch)?),
        WitType::S8 => Val::S8(int(v).and_then(|i| i8::try_from(i).ok()).ok_or_else(mismatch)?),
        WitType::U8 => Val::U8(uint(v).and_then(|i| u8::try_from(i).ok()).ok_or_else(mismatch)?),
        WitType::S16 => Val::S16(int(v).and_then(|i| i16::try_from(i).ok()).ok_or_else(mismatch)?),
        WitType::U16 => Val::U16(uint(v).and_then(|i| u16::try_from(i).ok()).ok_or_else(mismatch)?),
        WitType::S32 => Val::S32(int(v).and_then(|i| i32::try_from(i).ok()).ok_or_else(mismatch)?),
        WitType::U32 => Val::U32(uint(v).and_then(|i| u32::try_from(i).ok()).ok_or_else(mismatch)?),
        WitType::S64 => Val::S64(int(v).or_else(|| v.as_str().and_then(|s| s.parse().ok())).ok_or_else(mismatch)?),
        WitType::U64 => Val::U64(uint(v).or_else(|| v.as_str().and_then(|s| s.parse().ok())).ok_or_else(mismatch)?),
        WitType::F32 => Val::Float32(float(v).ok_or_else(mismatch)? as f32),
        WitType::F64 => Val::Float64(float(v).ok_or_else(mismatch)?),
        WitType::Char => {
            let s = v.as_str().ok_or_else(mismatch)?;
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Val::Char(c),
                _ => return Err(mismatch()),
            }
        }
        WitType::String => Val::String(v.as_str().ok_or_else(mismatch)?.to_string()),
        WitType::List { element } => {
            let items = v.as_array().ok_or_else(mismatch)?;
            let vals = items.iter().enumerate().map(|(i, item)| convert(element, item, &Seg::Index(path, i))).collect::<Result<_, _>>()?;
            Val::List(vals)
        }
        WitType::Option { inner } => match v {
            Value::Null => Val::Option(None),
            other => Val::Option(Some(Box::new(convert(inner, other, path)?))),
        },
        WitType::Result { ok, err } => {
            let obj = v.as_object().filter(|o| o.len() == 1).ok_or_else(mismatch)?;
            let (case, payload) = obj.iter().next().expect("one entry");
            let payload_val = |t: &Option<Box<WitType>>, sub: &str| -> Result<Option<Box<Val>>, ArgError> {
                match t {
                    Some(t) => Ok(Some(Box::new(convert(t, payload, &Seg::Field(path, sub))?))),
                    None if payload.is_null() => Ok(None),
                    None => Err(mismatch()),
                }
            };
            match case.as_str() {
                "ok" => Val::Result(Ok(payload_val(ok, "ok")?)),
                "err" => Val::Result(Err(payload_val(err, "err")?)),
                _ => return Err(mismatch()),
            }
        }
        WitType::Tuple { items } => {
            let arr = v.as_array().filter(|a| a.len() == items.len()).ok_or_else(mismatch)?;
            let vals =
                items.iter().zip(arr).enumerate().map(|(i, (t, item))| convert(t, item, &Seg::Index(path, i))).collect::<Result<_, _>>()?;
            Val::Tuple(vals)
        }
        WitType::Record { fields } => {
            let obj = v.as_object().ok_or_else(mismatch)?;
            let mut vals = Vec::with_capacity(fields.len());
            let mut present = 0;
            for (name, fty) in fields {
                let sub = Seg::Field(path, name);
                let val = match (obj.get(name), fty) {
                    (Some(fv), _) => {
                        present += 1;
                        convert(fty, fv, &sub)?
                    }
                    (None, WitType::Option { .. }) => Val::Option(None),
                    (None, _) => {
                        return Err(ArgError::Mismatch {
                            param: sub.to_string(),
                            expected: fty.to_string(),
                            got: "nothing (field missing)".into(),
                        })
                    }
                };
                vals.push((name.clone(), val));
            }
            if present < obj.len() {
                let unknown = obj.keys().find(|k| !fields.iter().any(|(f, _)| f == *k)).expect("an extra key exists");
                return Err(ArgError::Mismatch {
                    param: format!("{path}.{unknown}"),
                    expected: format!("no such field; {ty} has fields {}", field_names(fields)),
                    got: excerpt(&obj[unknown]),
                });
            }
            Val::Record(vals)
        }
        WitType::Variant { cases } => {
            let (case, payload) = match v {
                Value::String(s) => (s.as_str(), None),
                Value::Object(o) if o.len() == 1 => {
                    let (k, p) = o.iter().next().expect("one entry");
                    (k.as_str(), Some(p))
                }
                _ => return Err(mismatch()),
            };
            let (_, cty) = cases.iter().find(|(c, _)| c == case).ok_or_else(mismatch)?;
            let payload = match (cty, payload) {
                (Some(t), Some(p)) => Some(Box::new(convert(t, p, &Seg::Field(path, case))?)),
                (None, None) | (None, Some(Value::Null)) => None,
                _ => return Err(mismatch()),
            };
            Val::Variant(case.to_string(), payload)
        }
        WitType::Enum { cases } => {
            let s = v.as_str().filter(|s| cases.iter().any(|c| c == s)).ok_or_else(mismatch)?;
            Val::Enum(s.to_string())
        }
        WitType::Flags { names } => {
            let arr = v.as_array().ok_or_else(mismatch)?;
            let mut set = Vec::with_capacity(arr.len());
            for item in arr {
                let s = item.as_str().filter(|s| names.iter().any(|n| n == s)).ok_or_else(mismatch)?;
                if !set.iter().any(|x: &String| x == s) {
                    set.push(s.to_string());
                }
            }
            Val::Flags(set)
        }
        WitType::Unsupported { what } => return Err(ArgError::Unsupported { param: path.to_string(), what: what.clone() }),
    })
}

/// Converts a component value to JSON (see the module docs for the mapping).
pub fn val_to_json(v: &Val) -> Value {
    match v {
        Val::Bool(b) => Value::Bool(*b),
        Val::S8(i) => (*i).into(),
        Val::U8(i) => (*i).into(),
        Val::S16(i) => (*i).into(),
        Val::U16(i) => (*i).into(),
        Val::S32(i) => (*i).into(),
        Val::U32(i) => (*i).into(),
        Val::S64(i) => (*i).into(),
        Val::U64(i) => (*i).into(),
        Val::Float32(f) => float_json(*f as f64),
        Val::Float64(f) => float_json(*f),
        Val::Char(c) => Value::String(c.to_string()),
        Val::String(s) => Value::String(s.clone()),
        Val::List(items) | Val::Tuple(items) | Val::FixedLengthList(items) => Value::Array(items.iter().map(val_to_json).collect()),
        Val::Map(pairs) => Value::Array(pairs.iter().map(|(k, v)| Value::Array(vec![val_to_json(k), val_to_json(v)])).collect()),
        Val::Record(fields) => Value::Object(fields.iter().map(|(k, v)| (k.clone(), val_to_json(v))).collect()),
        Val::Variant(case, None) => Value::String(case.clone()),
        Val::Variant(case, Some(p)) => single(case, val_to_json(p)),
        Val::Enum(case) => Value::String(case.clone()),
        Val::Option(None) => Value::Null,
        Val::Option(Some(v)) => val_to_json(v),
        Val::Result(Ok(p)) => single("ok", p.as_deref().map(val_to_json).unwrap_or(Value::Null)),
        Val::Result(Err(p)) => single("err", p.as_deref().map(val_to_json).unwrap_or(Value::Null)),
        Val::Flags(names) => Value::Array(names.iter().map(|n| Value::String(n.clone())).collect()),
        Val::Resource(_) => Value::String("<resource>".into()),
        Val::Future(_) => Value::String("<future>".into()),
        Val::Stream(_) => Value::String("<stream>".into()),
        Val::ErrorContext(_) => Value::String("<error-context>".into()),
    }
}

/// Results of a call as JSON: none → `null`, one → itself, several → array.
pub fn results_to_json(results: &[Val]) -> Value {
    match results {
        [] => Value::Null,
        [one] => val_to_json(one),
        many => Value::Array(many.iter().map(val_to_json).collect()),
    }
}

/// A placeholder value of the right shape for a result slot (wasmtime
/// overwrites it; the initial variant does not matter).
pub(crate) fn placeholder() -> Val {
    Val::Bool(false)
}

/// The plain-data form of a wasmtime component type.
pub fn wit_type(ty: &Type) -> WitType {
    match ty {
        Type::Bool => WitType::Bool,
        Type::S8 => WitType::S8,
        Type::U8 => WitType::U8,
        Type::S16 => WitType::S16,
        Type::U16 => WitType::U16,
        Type::S32 => WitType::S32,
        Type::U32 => WitType::U32,
        Type::S64 => WitType::S64,
        Type::U64 => WitType::U64,
        Type::Float32 => WitType::F32,
        Type::Float64 => WitType::F64,
        Type::Char => WitType::Char,
        Type::String => WitType::String,
        Type::List(l) => WitType::List { element: Box::new(wit_type(&l.ty())) },
        Type::Option(o) => WitType::Option { inner: Box::new(wit_type(&o.ty())) },
        Type::Result(r) => WitType::Result { ok: r.ok().map(|t| Box::new(wit_type(&t))), err: r.err().map(|t| Box::new(wit_type(&t))) },
        Type::Tuple(t) => WitType::Tuple { items: t.types().map(|t| wit_type(&t)).collect() },
        Type::Record(r) => WitType::Record { fields: r.fields().map(|f| (f.name.to_string(), wit_type(&f.ty))).collect() },
        Type::Variant(v) => WitType::Variant { cases: v.cases().map(|c| (c.name.to_string(), c.ty.as_ref().map(wit_type))).collect() },
        Type::Enum(e) => WitType::Enum { cases: e.names().map(str::to_string).collect() },
        Type::Flags(f) => WitType::Flags { names: f.names().map(str::to_string).collect() },
        Type::Own(_) => WitType::Unsupported { what: "own<resource>".into() },
        Type::Borrow(_) => WitType::Unsupported { what: "borrow<resource>".into() },
        Type::Future(_) => WitType::Unsupported { what: "future".into() },
        Type::Stream(_) => WitType::Unsupported { what: "stream".into() },
        Type::ErrorContext => WitType::Unsupported { what: "error-context".into() },
        Type::Map(_) => WitType::Unsupported { what: "map".into() },
        Type::FixedLengthList(_) => WitType::Unsupported { what: "fixed-length list".into() },
    }
}

impl WitType {
    /// Whether a value of this type can travel as JSON.
    pub fn is_supported(&self) -> bool {
        match self {
            WitType::Unsupported { .. } => false,
            WitType::List { element } => element.is_supported(),
            WitType::Option { inner } => inner.is_supported(),
            WitType::Result { ok, err } => ok.iter().chain(err.iter()).all(|t| t.is_supported()),
            WitType::Tuple { items } => items.iter().all(WitType::is_supported),
            WitType::Record { fields } => fields.iter().all(|(_, t)| t.is_supported()),
            WitType::Variant { cases } => cases.iter().filter_map(|(_, t)| t.as_ref()).all(WitType::is_supported),
            _ => true,
        }
    }
}

/// WIT syntax, used in error messages and listings.
impl fmt::Display for WitType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WitType::Bool => f.write_str("bool"),
            WitType::S8 => f.write_str("s8"),
            WitType::U8 => f.write_str("u8"),
            WitType::S16 => f.write_str("s16"),
            WitType::U16 => f.write_str("u16"),
            WitType::S32 => f.write_str("s32"),
            WitType::U32 => f.write_str("u32"),
            WitType::S64 => f.write_str("s64"),
            WitType::U64 => f.write_str("u64"),
            WitType::F32 => f.write_str("f32"),
            WitType::F64 => f.write_str("f64"),
            WitType::Char => f.write_str("char"),
            WitType::String => f.write_str("string"),
            WitType::List { element } => write!(f, "list<{element}>"),
            WitType::Option { inner } => write!(f, "option<{inner}>"),
            WitType::Result { ok, err } => match (ok, err) {
                (None, None) => f.write_str("result"),
                (Some(o), None) => write!(f, "result<{o}>"),
                (None, Some(e)) => write!(f, "result<_, {e}>"),
                (Some(o), Some(e)) => write!(f, "result<{o}, {e}>"),
            },
            WitType::Tuple { items } => {
                f.write_str("tuple<")?;
                for (i, t) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{t}")?;
                }
                f.write_str(">")
            }
            WitType::Record { fields } => {
                f.write_str("record { ")?;
                for (i, (n, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{n}: {t}")?;
                }
                f.write_str(" }")
            }
            WitType::Variant { cases } => {
                f.write_str("variant { ")?;
                for (i, (n, t)) in cases.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match t {
                        Some(t) => write!(f, "{n}({t})")?,
                        None => f.write_str(n)?,
                    }
                }
                f.write_str(" }")
            }
            WitType::Enum { cases } => write!(f, "enum {{ {} }}", cases.join(", ")),
            WitType::Flags { names } => write!(f, "flags {{ {} }}", names.join(", ")),
            WitType::Unsupported { what } => f.write_str(what),
        }
    }
}

/// `name: func(a: u32) -> string`, for listings.
impl fmt::Display for FunctionSig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: func(", self.name)?;
        for (i, (n, t)) in self.params.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}: {t}")?;
        }
        f.write_str(")")?;
        match self.results.as_slice() {
            [] => Ok(()),
            [one] => write!(f, " -> {one}"),
            many => {
                f.write_str(" -> (")?;
                for (i, t) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{t}")?;
                }
                f.write_str(")")
            }
        }
    }
}

fn field_names(fields: &[(String, WitType)]) -> String {
    fields.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64()
}

fn uint(v: &Value) -> Option<u64> {
    v.as_u64()
}

fn float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

fn float_json(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String("NaN".into()),
        None if f > 0.0 => Value::String("inf".into()),
        None => Value::String("-inf".into()),
    }
}

fn single(key: &str, v: Value) -> Value {
    let mut m = Map::with_capacity(1);
    m.insert(key.to_string(), v);
    Value::Object(m)
}

/// The JSON received, shortened for messages.
fn excerpt(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= MAX_GOT_LEN {
        return s;
    }
    let mut cut = MAX_GOT_LEN;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b(t: WitType) -> Box<WitType> {
        Box::new(t)
    }

    fn everything() -> WitType {
        WitType::Record {
            fields: vec![
                ("flag".into(), WitType::Bool),
                ("small".into(), WitType::S8),
                ("big".into(), WitType::U64),
                ("ratio".into(), WitType::F64),
                ("letter".into(), WitType::Char),
                ("name".into(), WitType::String),
                ("tags".into(), WitType::List { element: b(WitType::String) }),
                ("maybe".into(), WitType::Option { inner: b(WitType::U32) }),
                ("outcome".into(), WitType::Result { ok: Some(b(WitType::U32)), err: Some(b(WitType::String)) }),
                ("done".into(), WitType::Result { ok: None, err: None }),
                ("pair".into(), WitType::Tuple { items: vec![WitType::U8, WitType::String] }),
                ("shape".into(), WitType::Variant { cases: vec![("circle".into(), Some(WitType::F32)), ("empty".into(), None)] }),
                ("color".into(), WitType::Enum { cases: vec!["red".into(), "green".into()] }),
                ("perms".into(), WitType::Flags { names: vec!["read".into(), "write".into()] }),
            ],
        }
    }

    #[test]
    fn round_trips_every_type() {
        let v = json!({
            "flag": true, "small": -5, "big": 18446744073709551615u64, "ratio": 0.5, "letter": "ß",
            "name": "n", "tags": ["a", "b"], "maybe": 7, "outcome": {"err": "bad"}, "done": {"ok": null},
            "pair": [1, "x"], "shape": {"circle": 1.5}, "color": "green", "perms": ["write"]
        });
        let val = json_to_val(&everything(), &v, "v").unwrap();
        assert_eq!(val_to_json(&val), v);
        let v2 = json!({
            "flag": false, "small": 0, "big": "42", "ratio": "NaN", "letter": "x", "name": "", "tags": [],
            "outcome": {"ok": 1}, "done": {"err": null}, "pair": [0, ""], "shape": "empty", "color": "red", "perms": []
        });
        let out = val_to_json(&json_to_val(&everything(), &v2, "v").unwrap());
        assert_eq!(out["maybe"], Value::Null, "missing option field is none");
        assert_eq!(out["big"], json!(42));
        assert_eq!(out["ratio"], json!("NaN"));
        assert_eq!(out["shape"], json!("empty"));
    }

    #[test]
    fn mismatch_names_parameter_path_type_and_json() {
        let sig =
            FunctionSig { name: "f".into(), params: vec![("count".into(), WitType::U8), ("v".into(), everything())], results: vec![] };
        let e = check_args(&sig, &json!([300, {}])).unwrap_err();
        assert_eq!(e, ArgError::Mismatch { param: "count".into(), expected: "u8".into(), got: "300".into() });
        let mut v = json!({
            "flag": true, "small": 1, "big": 1, "ratio": 1, "letter": "a", "name": "n", "tags": ["a", 3],
            "outcome": {"ok": 1}, "done": {"ok": null}, "pair": [1, "x"], "shape": "empty", "color": "red", "perms": []
        });
        let e = check_args(&sig, &json!([1, v.clone()])).unwrap_err();
        assert_eq!(e, ArgError::Mismatch { param: "v.tags[1]".into(), expected: "string".into(), got: "3".into() });
        v["tags"] = json!([]);
        v["color"] = json!("blue");
        let e = check_args(&sig, &json!([1, v.clone()])).unwrap_err();
        assert!(matches!(&e, ArgError::Mismatch { param, expected, .. } if param == "v.color" && expected == "enum { red, green }"), "{e}");
        v["color"] = json!("red");
        v["extra"] = json!(1);
        let e = check_args(&sig, &json!([1, v.clone()])).unwrap_err();
        assert!(matches!(&e, ArgError::Mismatch { param, .. } if param == "v.extra"), "{e}");
        v.as_object_mut().unwrap().remove("extra");
        v.as_object_mut().unwrap().remove("name");
        let e = check_args(&sig, &json!([1, v.clone()])).unwrap_err();
        assert!(matches!(&e, ArgError::Mismatch { param, .. } if param == "v.name"), "{e}");
        assert!(matches!(check_args(&sig, &json!([1])), Err(ArgError::WrongCount { expected: 2, got: 1, .. })));
        assert!(matches!(check_args(&sig, &json!({"count": 1})), Err(ArgError::NotAnArray { .. })));
    }

    #[test]
    fn integer_ranges_and_chars_are_enforced() {
        let one = |t: WitType, v: Value| json_to_val(&t, &v, "x");
        assert!(one(WitType::S8, json!(-129)).is_err());
        assert!(one(WitType::S8, json!(-128)).is_ok());
        assert!(one(WitType::U32, json!(-1)).is_err());
        assert!(one(WitType::U32, json!(1.5)).is_err());
        assert!(one(WitType::S64, json!("-9223372036854775808")).is_ok());
        assert!(one(WitType::Char, json!("ab")).is_err());
        assert!(one(WitType::Char, json!("")).is_err());
        assert!(one(WitType::Flags { names: vec!["a".into()] }, json!(["b"])).is_err());
        assert!(one(WitType::Result { ok: None, err: None }, json!({"ok": 1})).is_err());
        assert!(one(WitType::Result { ok: None, err: None }, json!({"ok": null, "err": null})).is_err());
        let e = one(WitType::Unsupported { what: "own<resource>".into() }, json!(1)).unwrap_err();
        assert!(matches!(e, ArgError::Unsupported { .. }));
    }

    #[test]
    fn display_is_wit_syntax() {
        let t = WitType::Result { ok: Some(b(WitType::List { element: b(WitType::U8) })), err: None };
        assert_eq!(t.to_string(), "result<list<u8>>");
        let sig = FunctionSig { name: "a#f".into(), params: vec![("x".into(), WitType::U32)], results: vec![WitType::String] };
        assert_eq!(sig.to_string(), "a#f: func(x: u32) -> string");
    }

    #[test]
    fn long_json_is_shortened() {
        let s = "é".repeat(100);
        let e = json_to_val(&WitType::U8, &json!(s), "p").unwrap_err();
        let ArgError::Mismatch { got, .. } = e else { panic!() };
        assert!(got.ends_with('…') && got.len() < 100, "{got}");
    }
}
