//! Plan-time type checking of JSON init arguments against WIT types, with
//! the same JSON mapping the runtime uses for calls (records are objects,
//! variants `{"case": payload}` or `"case"`, options `null`/value, results
//! `{"ok": v}`/`{"err": e}`, flags arrays of names, tuples arrays).

use crate::runtime::WitType;
use serde_json::Value;

/// `Err(expected)` describes the WIT type the value does not match.
pub fn check_value(ty: &WitType, v: &Value) -> Result<(), String> {
    let ok = match ty {
        WitType::Bool => v.is_boolean(),
        WitType::S8 => int_in(v, i8::MIN as i128, i8::MAX as i128),
        WitType::U8 => int_in(v, 0, u8::MAX as i128),
        WitType::S16 => int_in(v, i16::MIN as i128, i16::MAX as i128),
        WitType::U16 => int_in(v, 0, u16::MAX as i128),
        WitType::S32 => int_in(v, i32::MIN as i128, i32::MAX as i128),
        WitType::U32 => int_in(v, 0, u32::MAX as i128),
        WitType::S64 => int_in(v, i64::MIN as i128, i64::MAX as i128),
        WitType::U64 => int_in(v, 0, u64::MAX as i128),
        WitType::F32 | WitType::F64 => v.is_number(),
        WitType::Char => v.as_str().is_some_and(|s| s.chars().count() == 1),
        WitType::String => v.is_string(),
        WitType::List { element } => match v.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check_value(element, item).map_err(|e| format!("{} (element {i}: expected {e})", describe(ty)))?;
                }
                true
            }
            None => false,
        },
        WitType::Option { inner } => v.is_null() || check_value(inner, v).is_ok(),
        WitType::Result { ok, err } => match v.as_object() {
            Some(o) if o.len() == 1 => match (o.get("ok"), o.get("err")) {
                (Some(x), None) => ok.as_ref().map_or(x.is_null(), |t| check_value(t, x).is_ok()),
                (None, Some(x)) => err.as_ref().map_or(x.is_null(), |t| check_value(t, x).is_ok()),
                _ => false,
            },
            _ => false,
        },
        WitType::Tuple { items } => match v.as_array() {
            Some(a) if a.len() == items.len() => items.iter().zip(a).all(|(t, x)| check_value(t, x).is_ok()),
            _ => false,
        },
        WitType::Record { fields } => match v.as_object() {
            Some(o) => {
                for (name, fty) in fields {
                    let fv = o.get(name).unwrap_or(&Value::Null);
                    check_value(fty, fv).map_err(|e| format!("{} (field {name}: expected {e})", describe(ty)))?;
                }
                o.keys().all(|k| fields.iter().any(|(n, _)| n == k))
            }
            None => false,
        },
        WitType::Variant { cases } => match v {
            Value::String(s) => cases.iter().any(|(n, p)| n == s && p.is_none()),
            Value::Object(o) if o.len() == 1 => {
                let (k, x) = o.iter().next().expect("one entry");
                cases.iter().any(|(n, p)| n == k && p.as_ref().map_or(x.is_null(), |t| check_value(t, x).is_ok()))
            }
            _ => false,
        },
        WitType::Enum { cases } => v.as_str().is_some_and(|s| cases.iter().any(|c| c == s)),
        WitType::Flags { names } => {
            v.as_array().is_some_and(|a| a.iter().all(|x| x.as_str().is_some_and(|s| names.iter().any(|n| n == s))))
        }
        WitType::Unsupported { .. } => false,
    };
    if ok { Ok(()) } else { Err(describe(ty)) }
}

fn int_in(v: &Value, lo: i128, hi: i128) -> bool {
    let n = v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from));
    n.is_some_and(|n| n >= lo && n <= hi)
}

/// A WIT type as written in WIT (`list<u32>`, `record { a: string }`).
pub fn describe(ty: &WitType) -> String {
    match ty {
        WitType::Bool => "bool".into(),
        WitType::S8 => "s8".into(),
        WitType::U8 => "u8".into(),
        WitType::S16 => "s16".into(),
        WitType::U16 => "u16".into(),
        WitType::S32 => "s32".into(),
        WitType::U32 => "u32".into(),
        WitType::S64 => "s64".into(),
        WitType::U64 => "u64".into(),
        WitType::F32 => "f32".into(),
        WitType::F64 => "f64".into(),
        WitType::Char => "char".into(),
        WitType::String => "string".into(),
        WitType::List { element } => format!("list<{}>", describe(element)),
        WitType::Option { inner } => format!("option<{}>", describe(inner)),
        WitType::Result { ok, err } => format!(
            "result<{}, {}>",
            ok.as_ref().map_or("_".into(), |t| describe(t)),
            err.as_ref().map_or("_".into(), |t| describe(t))
        ),
        WitType::Tuple { items } => format!("tuple<{}>", items.iter().map(describe).collect::<Vec<_>>().join(", ")),
        WitType::Record { fields } => {
            format!("record {{ {} }}", fields.iter().map(|(n, t)| format!("{n}: {}", describe(t))).collect::<Vec<_>>().join(", "))
        }
        WitType::Variant { cases } => format!(
            "variant {{ {} }}",
            cases.iter().map(|(n, p)| p.as_ref().map_or(n.clone(), |t| format!("{n}({})", describe(t)))).collect::<Vec<_>>().join(", ")
        ),
        WitType::Enum { cases } => format!("enum {{ {} }}", cases.join(", ")),
        WitType::Flags { names } => format!("flags {{ {} }}", names.join(", ")),
        WitType::Unsupported { what } => format!("{what} (not representable in JSON)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ints_and_strings() {
        assert!(check_value(&WitType::U32, &json!(5)).is_ok());
        assert_eq!(check_value(&WitType::U32, &json!(-1)), Err("u32".into()));
        assert_eq!(check_value(&WitType::U8, &json!(256)), Err("u8".into()));
        assert!(check_value(&WitType::String, &json!(5)).is_err());
        assert!(check_value(&WitType::U64, &json!("5")).is_err());
    }

    #[test]
    fn compound() {
        let rec = WitType::Record { fields: vec![("a".into(), WitType::String), ("b".into(), WitType::Option { inner: Box::new(WitType::U8) })] };
        assert!(check_value(&rec, &json!({"a": "x"})).is_ok());
        assert!(check_value(&rec, &json!({"a": "x", "b": 3})).is_ok());
        assert!(check_value(&rec, &json!({"a": "x", "c": 3})).is_err());
        let var = WitType::Variant { cases: vec![("none".into(), None), ("some".into(), Some(WitType::U8))] };
        assert!(check_value(&var, &json!("none")).is_ok());
        assert!(check_value(&var, &json!({"some": 1})).is_ok());
        assert!(check_value(&var, &json!({"some": "x"})).is_err());
        let list = WitType::List { element: Box::new(WitType::U16) };
        assert_eq!(check_value(&list, &json!([1, "a"])), Err("list<u16> (element 1: expected u16)".into()));
    }
}
