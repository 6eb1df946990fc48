//! Plan-time check of a spell's service calls (issue 16): every
//! `call(alias, function[, args])` and `call_service(alias, function[, args])`
//! whose alias and function are string literals is checked against the
//! exports of the service that alias will hold after the plan — the alias
//! exists and is a service, the function exists, the number of arguments
//! (when `args` is an array literal) and the type of each literal argument
//! (with the runtime's own JSON⇄WIT checker). Pure: the caller supplies what
//! each alias will be.

use crate::runtime::wit::{json_to_val, ArgError};
use crate::runtime::FunctionSig;
use rhai::{ASTNode, Expr, Stmt};
use serde_json::Value;

/// One service call found in a script, with literal alias and function.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptCall {
    /// 1-based line of the call.
    pub line: usize,
    pub alias: String,
    pub function: String,
    /// `None` when the arguments are not an array literal (arity unknown);
    /// else one entry per argument, `Some(value)` for a literal one.
    pub args: Option<Vec<Option<Value>>>,
}

/// What an alias will be after the plan, as far as a spell's call is concerned.
pub enum Target<'a> {
    /// A service whose facade exports these functions.
    Service(&'a [FunctionSig]),
    /// A service whose exports are not known here (someone else's service):
    /// not checked.
    Unchecked,
    /// A spell: `call` reaches only services.
    Spell,
}

/// Every call with a literal alias and function, in source order. `Err` when
/// the script does not compile (reported elsewhere).
pub fn service_calls(script: &str) -> Result<Vec<ScriptCall>, String> {
    let ast = super::engine::compile(&super::engine::compiler(&super::engine::std_module()), script)?;
    let mut out = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        let found = match path.last() {
            Some(ASTNode::Expr(Expr::Custom(x, pos))) if x.tokens.first().is_some_and(|t| t.as_str() == "call") => {
                Some((&x.inputs[..], *pos))
            }
            // A call is an expression, or a statement of its own.
            Some(ASTNode::Expr(Expr::FnCall(x, pos))) | Some(ASTNode::Stmt(Stmt::FnCall(x, pos)))
                if x.name.as_str() == "call_service" && x.namespace.is_empty() =>
            {
                Some((&x.args[..], *pos))
            }
            _ => None,
        };
        if let Some((inputs, pos)) = found {
            if let Some(call) = literal_call(inputs, pos.line().unwrap_or(0)) {
                out.push(call);
            }
        }
        true
    });
    out.sort_by_key(|c| c.line);
    Ok(out)
}

fn literal_string(e: &Expr) -> Option<String> {
    match e {
        Expr::StringConstant(s, _) => Some(s.to_string()),
        _ => None,
    }
}

fn literal_json(e: &Expr) -> Option<Value> {
    let v = e.get_literal_value(None)?;
    rhai::serde::from_dynamic::<Value>(&v).ok()
}

fn literal_call(inputs: &[Expr], line: usize) -> Option<ScriptCall> {
    if !(2..=3).contains(&inputs.len()) {
        return None;
    }
    let alias = literal_string(&inputs[0])?;
    let function = literal_string(&inputs[1])?;
    let args = match inputs.get(2) {
        None => Some(Vec::new()),
        Some(Expr::Array(items, _)) => Some(items.iter().map(literal_json).collect()),
        Some(e) => match literal_json(e) {
            // A constant folded into a literal array.
            Some(Value::Array(items)) => Some(items.into_iter().map(Some).collect()),
            _ => None,
        },
    };
    Some(ScriptCall { line, alias, function, args })
}

/// Checks one call against what its alias will be: `Err` says why it does
/// not fit; `Ok(Some(name))` is the full name of the export it calls,
/// `Ok(None)` when the alias is not checked here.
pub fn check_call(call: &ScriptCall, target: Option<Target<'_>>, known_services: &str) -> Result<Option<String>, String> {
    let sigs = match target {
        None => return Err(format!("no service will be named {:?} after this plan; services: {known_services}", call.alias)),
        Some(Target::Spell) => return Err(format!("{:?} is a spell, not a service; call reaches only services", call.alias)),
        Some(Target::Unchecked) => return Ok(None),
        Some(Target::Service(sigs)) => sigs,
    };
    let Some(sig) = find_export(sigs, &call.function) else {
        let names: Vec<&str> = sigs.iter().map(|s| s.name.as_str()).collect();
        return Err(format!("service {} has no function {:?}; it exports: {}", call.alias, call.function, names.join(", ")));
    };
    let Some(args) = call.args.as_ref() else { return Ok(Some(sig.name.clone())) };
    if args.len() != sig.params.len() {
        let list = sig.params.iter().map(|(n, t)| format!("{n}: {t}")).collect::<Vec<_>>().join(", ");
        return Err(format!("{} takes {} argument(s) ({list}), the call passes {}", sig.name, sig.params.len(), args.len()));
    }
    for ((name, ty), arg) in sig.params.iter().zip(args) {
        let Some(v) = arg else { continue };
        match json_to_val(ty, v, name) {
            Ok(_) => {}
            Err(ArgError::Mismatch { param, expected, got }) => {
                return Err(format!("{}: parameter {param}: expected {expected}, got {got}", sig.name))
            }
            Err(e) => return Err(format!("{}: {e}", sig.name)),
        }
    }
    Ok(Some(sig.name.clone()))
}

/// The export a call names, as the runtime resolves it: the exact name, or
/// the bare function name of exactly one interface export.
fn find_export<'a>(sigs: &'a [FunctionSig], name: &str) -> Option<&'a FunctionSig> {
    if let Some(s) = sigs.iter().find(|s| s.name == name) {
        return Some(s);
    }
    let mut hits = sigs.iter().filter(|s| s.name.rsplit('#').next() == Some(name));
    let first = hits.next()?;
    hits.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_literal_calls_of_both_forms_with_lines() {
        let script = "let n = 2;\ncall(\"a\", \"f\", [1, n, \"x\"]);\nfn g() { call_service(\"b\", \"h\") }\ncall(\"c\", \"k\", n);\ncall(n, \"k\");";
        let calls = service_calls(script).unwrap();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(
            calls[0],
            ScriptCall { line: 2, alias: "a".into(), function: "f".into(), args: Some(vec![Some(1.into()), None, Some("x".into())]) }
        );
        assert_eq!(calls[1], ScriptCall { line: 3, alias: "b".into(), function: "h".into(), args: Some(vec![]) });
        assert_eq!(calls[2], ScriptCall { line: 4, alias: "c".into(), function: "k".into(), args: None });
    }
}
