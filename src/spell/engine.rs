//! The Rhai side of a spell run: a sandboxed engine per run (no file access,
//! no module imports), the host API scripts see, the per-run KV overlay, and
//! the bounds (operation budget, wall-clock deadline, cancellation).
//!
//! Host API:
//! `call(alias, function, args_array)` / `call(alias, function)` (custom
//! syntax, see [`register_call_syntax`]) and the same as the plain function
//! `call_service(alias, function[, args_array])`,
//! `kv_get(k)` (`()` if absent), `kv_set(k, v)`, `kv_remove(k)`,
//! `kv_list()` (sorted keys), `now()` (unix seconds), `log(level, msg)`,
//! `spell_alias()`, `peer_id()`. `print`/`debug` go to the log too.

use super::schedule::Clock;
use super::ServiceCaller;
use crate::ids::{Alias, PeerId};
use rhai::packages::{Package, StandardPackage};
use rhai::{Array, Dynamic, Engine, EvalAltResult, EvalContext, Expression, FnPtr, ImmutableString, Module, Scope, Shared, AST};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Longest KV key a script may write, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Largest KV value a script may write, in bytes of JSON.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Limits of the Rhai interpreter shared by every run, besides the operation
/// budget: they keep a script from exhausting the node's memory or stack.
const MAX_CALL_LEVELS: usize = 64;
const MAX_EXPR_DEPTH: usize = 64;
const MAX_FN_EXPR_DEPTH: usize = 32;
const MAX_STRING_LEN: usize = 1 << 20;
const MAX_ARRAY_LEN: usize = 100_000;
const MAX_MAP_LEN: usize = 100_000;
/// How many operations pass between two looks at the wall clock.
const DEADLINE_CHECK_EVERY: u64 = 256;

/// A cancellation signal: cheap to check from the interpreter thread, and
/// awaitable from the async side of a host call.
#[derive(Clone, Debug)]
pub(crate) struct Cancel(Arc<watch::Sender<bool>>);

impl Cancel {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
    pub fn cancel(&self) {
        self.0.send_replace(true);
    }
    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }
    pub async fn cancelled(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so `wait_for` can only end by seeing `true`.
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Why a run was stopped from outside the script.
const RUNNING: u8 = 0;
const TIMED_OUT: u8 = 1;
const CANCELLED: u8 = 2;

/// KV as the script sees it during one run: the committed snapshot plus the
/// run's own writes, which only reach the store if the run succeeds.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    pub base: BTreeMap<String, Value>,
    /// `None` = removed by this run.
    pub writes: BTreeMap<String, Option<Value>>,
}

impl Overlay {
    fn get(&self, k: &str) -> Option<&Value> {
        match self.writes.get(k) {
            Some(w) => w.as_ref(),
            None => self.base.get(k),
        }
    }
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.base.keys().filter(|k| !self.writes.contains_key(*k)).cloned().collect();
        keys.extend(self.writes.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| k.clone()));
        keys.sort();
        keys
    }
}

/// Everything the host functions of one run need.
pub(crate) struct RunContext {
    pub alias: Alias,
    pub peer_id: PeerId,
    pub clock: Arc<dyn Clock>,
    pub caller: Arc<dyn ServiceCaller>,
    /// The runtime the async caller runs on; host calls block on it from the
    /// interpreter's blocking thread.
    pub handle: tokio::runtime::Handle,
    /// The run TTL expires here (tokio time, so tests can control it).
    pub deadline: tokio::time::Instant,
    pub ttl: Duration,
    /// Fires when this run's future is dropped.
    pub cancel_run: Cancel,
    /// Fires when the scheduler gives up waiting at shutdown.
    pub cancel_all: Cancel,
    /// `RUNNING`, `TIMED_OUT` or `CANCELLED`: set once, read by the
    /// progress callback so a script cannot swallow its own termination.
    pub stop: AtomicU8,
    pub kv: Mutex<Overlay>,
}

impl RunContext {
    fn stop_reason(&self) -> u8 {
        let s = self.stop.load(Ordering::Acquire);
        if s != RUNNING {
            return s;
        }
        if self.cancel_run.is_cancelled() || self.cancel_all.is_cancelled() {
            self.set_stop(CANCELLED);
            return CANCELLED;
        }
        RUNNING
    }
    fn set_stop(&self, why: u8) {
        let _ = self.stop.compare_exchange(RUNNING, why, Ordering::AcqRel, Ordering::Acquire);
    }
    fn stop_error(&self) -> Option<Box<EvalAltResult>> {
        match self.stop_reason() {
            TIMED_OUT => Some(format!("run exceeded its time limit of {} ms", self.ttl.as_millis()).into()),
            CANCELLED => Some("run cancelled: the node is shutting down".into()),
            _ => None,
        }
    }
}

/// How a script run ended.
#[derive(Debug)]
pub(crate) enum Finish {
    /// Success; the run's KV writes, to commit.
    Ok(BTreeMap<String, Option<Value>>),
    Failed(String),
    TimedOut,
    Cancelled,
}

/// The standard library, built once and shared by every run's engine.
pub(crate) fn std_module() -> Shared<Module> {
    StandardPackage::new().as_shared_module()
}

fn limited_engine(std: &Shared<Module>, max_operations: u64) -> Engine {
    let mut e = Engine::new_raw();
    e.register_global_module(std.clone());
    e.set_max_operations(max_operations)
        .set_max_call_levels(MAX_CALL_LEVELS)
        .set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FN_EXPR_DEPTH)
        .set_max_string_size(MAX_STRING_LEN)
        .set_max_array_size(MAX_ARRAY_LEN)
        .set_max_map_size(MAX_MAP_LEN);
    e
}

/// The engine that compiles scripts (install-time validation and the AST
/// cache). Compilation does not depend on the host functions, only on the
/// `call` syntax.
pub(crate) fn compiler(std: &Shared<Module>) -> Engine {
    let mut e = limited_engine(std, 0);
    register_call_syntax(&mut e, |_, _| Err("call: this engine only compiles scripts".into()));
    e
}

/// `call(alias, function)` and `call(alias, function, args)`.
///
/// `call` is Rhai's built-in for calling function pointers, and a registered
/// function of that name is never reached; so the host call is custom syntax
/// `call(expr, expr, ...)` and the evaluator gets the argument expressions.
/// `call(f, args..)` with a function pointer `f` keeps working (see
/// [`call_fn_ptr`]); the method form `f.call(..)` does not parse any more.
fn register_call_syntax(
    e: &mut Engine,
    eval: impl Fn(&mut EvalContext, &[Expression]) -> Result<Dynamic, Box<EvalAltResult>> + Send + Sync + 'static,
) {
    e.register_custom_syntax_with_state_raw(
        "call",
        |segments, look_ahead, _| {
            let next = match segments.last().map(|s| s.as_str()) {
                Some("call") => "(",
                Some("(") | Some(",") => "$expr$",
                Some("$expr$") if look_ahead == "," => ",",
                Some("$expr$") => ")",
                _ => return Ok(None),
            };
            Ok(Some(next.into()))
        },
        false,
        move |ec, inputs, _| eval(ec, inputs),
    );
}

/// `call(f, args..)` for a function pointer `f`: calls the function it
/// names with its curried values (a closure's captures) and `args`.
fn call_fn_ptr(ec: &mut EvalContext, f: &FnPtr, rest: &[Expression]) -> Result<Dynamic, Box<EvalAltResult>> {
    let mut args: Vec<Dynamic> = f.curry().to_vec();
    for e in rest {
        args.push(ec.eval_expression_tree(e)?);
    }
    let mut refs: Vec<&mut Dynamic> = args.iter_mut().collect();
    ec.call_fn_raw(f.fn_name(), false, false, &mut refs)
}

/// Compiles a script, returning a readable message on failure.
pub(crate) fn compile(compiler: &Engine, script: &str) -> Result<AST, String> {
    compiler.compile(script).map_err(|e| e.to_string())
}

fn to_json(what: &str, v: &Dynamic) -> Result<Value, Box<EvalAltResult>> {
    rhai::serde::from_dynamic::<Value>(v)
        .map_err(|e| format!("{what}: value of type {} cannot be stored as JSON: {e}", v.type_name()).into())
}

fn check_key(k: &str) -> Result<(), Box<EvalAltResult>> {
    if k.is_empty() || k.len() > MAX_KEY_LEN {
        return Err(format!("kv key must be 1 to {MAX_KEY_LEN} bytes long, got {} bytes", k.len()).into());
    }
    Ok(())
}

fn log_event(alias: &str, level: &str, msg: &str) {
    match level.to_ascii_lowercase().as_str() {
        "error" => tracing::error!(spell = alias, "{msg}"),
        "warn" | "warning" => tracing::warn!(spell = alias, "{msg}"),
        "debug" => tracing::debug!(spell = alias, "{msg}"),
        "trace" => tracing::trace!(spell = alias, "{msg}"),
        _ => tracing::info!(spell = alias, "{msg}"),
    }
}

/// What the async side of a host call came back with.
enum CallEnd {
    Done(Result<Value, String>),
    TimedOut,
    Cancelled,
}

fn host_call(ctx: &RunContext, alias: &str, function: &str, args: Dynamic) -> Result<Dynamic, Box<EvalAltResult>> {
    if let Some(e) = ctx.stop_error() {
        return Err(e);
    }
    let args = match args.into_array() {
        Ok(a) => to_json("call arguments", &Dynamic::from_array(a))?,
        Err(t) => return Err(format!("call({alias:?}, {function:?}, args): args must be an array, got {t}").into()),
    };
    let fut = ctx.caller.call_from(&ctx.alias, alias, function, args);
    let end = ctx.handle.block_on(async {
        tokio::select! {
            biased;
            _ = ctx.cancel_run.cancelled() => CallEnd::Cancelled,
            _ = ctx.cancel_all.cancelled() => CallEnd::Cancelled,
            r = tokio::time::timeout_at(ctx.deadline, fut) => match r {
                Ok(r) => CallEnd::Done(r),
                Err(_) => CallEnd::TimedOut,
            },
        }
    });
    match end {
        CallEnd::Done(Ok(v)) => rhai::serde::to_dynamic(v),
        CallEnd::Done(Err(e)) => Err(format!("call {alias}.{function} failed: {e}").into()),
        CallEnd::TimedOut => {
            ctx.set_stop(TIMED_OUT);
            Err(ctx.stop_error().expect("stop reason set"))
        }
        CallEnd::Cancelled => {
            ctx.set_stop(CANCELLED);
            Err(ctx.stop_error().expect("stop reason set"))
        }
    }
}

fn run_engine(ctx: &Arc<RunContext>, std: &Shared<Module>, max_operations: u64) -> Engine {
    let mut e = limited_engine(std, max_operations);
    let alias = ctx.alias.to_string();

    let c = ctx.clone();
    e.on_progress(move |ops| {
        if c.stop_reason() != RUNNING {
            return Some(Dynamic::UNIT);
        }
        if ops % DEADLINE_CHECK_EVERY == 0 && tokio::time::Instant::now() >= c.deadline {
            c.set_stop(TIMED_OUT);
            return Some(Dynamic::UNIT);
        }
        None
    });
    let a = alias.clone();
    e.on_print(move |s| log_event(&a, "info", s));
    let a = alias.clone();
    e.on_debug(move |s, _, pos| log_event(&a, "debug", &format!("{pos:?} {s}")));

    let c = ctx.clone();
    register_call_syntax(&mut e, move |ec, inputs| {
        let name = |v: Dynamic, what: &str| {
            v.into_immutable_string().map_err(|t| -> Box<EvalAltResult> { format!("call: the {what} must be a string, got {t}").into() })
        };
        let first = ec.eval_expression_tree(&inputs[0])?;
        if let Some(f) = first.read_lock::<FnPtr>() {
            let f = f.clone();
            return call_fn_ptr(ec, &f, &inputs[1..]);
        }
        if !(2..=3).contains(&inputs.len()) {
            return Err(format!("call takes (alias, function) or (alias, function, args_array), got {} arguments", inputs.len()).into());
        }
        let alias = name(first, "service alias")?;
        let function = name(ec.eval_expression_tree(&inputs[1])?, "function name")?;
        let args = match inputs.get(2) {
            Some(a) => ec.eval_expression_tree(a)?,
            None => Dynamic::from_array(Array::new()),
        };
        host_call(&c, &alias, &function, args)
    });
    // The same host call as a plain function, which the distro scripts use.
    let c = ctx.clone();
    e.register_fn("call_service", move |alias: ImmutableString, function: ImmutableString, args: Dynamic| {
        host_call(&c, &alias, &function, args)
    });
    let c = ctx.clone();
    e.register_fn("call_service", move |alias: ImmutableString, function: ImmutableString| {
        host_call(&c, &alias, &function, Dynamic::from_array(Array::new()))
    });

    let c = ctx.clone();
    e.register_fn("kv_get", move |k: ImmutableString| -> Result<Dynamic, Box<EvalAltResult>> {
        let kv = c.kv.lock().unwrap_or_else(|p| p.into_inner());
        match kv.get(&k) {
            Some(v) => rhai::serde::to_dynamic(v),
            None => Ok(Dynamic::UNIT),
        }
    });
    let c = ctx.clone();
    e.register_fn("kv_set", move |k: ImmutableString, v: Dynamic| -> Result<(), Box<EvalAltResult>> {
        check_key(&k)?;
        let json = to_json(&format!("kv_set({k:?})"), &v)?;
        let size = json.to_string().len();
        if size > MAX_VALUE_BYTES {
            return Err(format!("kv_set({k:?}): value is {size} bytes of JSON; at most {MAX_VALUE_BYTES} are allowed").into());
        }
        c.kv.lock().unwrap_or_else(|p| p.into_inner()).writes.insert(k.to_string(), Some(json));
        Ok(())
    });
    let c = ctx.clone();
    e.register_fn("kv_remove", move |k: ImmutableString| {
        c.kv.lock().unwrap_or_else(|p| p.into_inner()).writes.insert(k.to_string(), None);
    });
    let c = ctx.clone();
    e.register_fn("kv_list", move || -> Array {
        let kv = c.kv.lock().unwrap_or_else(|p| p.into_inner());
        kv.keys().into_iter().map(Dynamic::from).collect()
    });
    let c = ctx.clone();
    e.register_fn("now", move || -> rhai::INT { c.clock.now() as rhai::INT });
    let a = alias.clone();
    e.register_fn("log", move |level: ImmutableString, msg: Dynamic| log_event(&a, &level, &msg.to_string()));
    let a = alias.clone();
    e.register_fn("spell_alias", move || -> ImmutableString { a.as_str().into() });
    let p: ImmutableString = ctx.peer_id.as_str().into();
    e.register_fn("peer_id", move || -> ImmutableString { p.clone() });
    e
}

/// Innermost error of a chain of script-function calls.
fn root_cause(e: &EvalAltResult) -> &EvalAltResult {
    match e {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) | EvalAltResult::ErrorInModule(_, inner, _) => root_cause(inner),
        other => other,
    }
}

/// Runs a compiled script to completion on the calling (blocking) thread.
pub(crate) fn execute(ast: &AST, ctx: &Arc<RunContext>, std: &Shared<Module>, max_operations: u64) -> Finish {
    let engine = run_engine(ctx, std, max_operations);
    let result = engine.run_ast_with_scope(&mut Scope::new(), ast);
    drop(engine); // releases the closures' references to `ctx`
    match ctx.stop_reason() {
        TIMED_OUT => return Finish::TimedOut,
        CANCELLED => return Finish::Cancelled,
        _ => {}
    }
    match result {
        Ok(()) => {
            let mut kv = ctx.kv.lock().unwrap_or_else(|p| p.into_inner());
            Finish::Ok(std::mem::take(&mut kv.writes))
        }
        Err(e) => match root_cause(&e) {
            EvalAltResult::ErrorTooManyOperations(pos) => Finish::Failed(format!(
                "script exceeded its budget of {max_operations} operations at {pos}; it may loop forever — \
                 fix the script or raise the operation budget"
            )),
            _ => Finish::Failed(e.to_string()),
        },
    }
}
