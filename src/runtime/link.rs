//! Linking a blueprint: the facade's exported functions with their WIT
//! signatures, and one `InstancePre` per component whose imports are
//! satisfied by earlier components' exports (forwarded through the linker
//! inside the same store), then by the host.

use super::host::HostState;
use super::wit::wit_type;
use super::{FunctionSig, RuntimeError};
use crate::ids::BlueprintId;
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, ComponentExportIndex, InstancePre, Linker, Val};
use wasmtime::Engine;

/// One exported function of a component.
pub(crate) struct ExportFn {
    pub(crate) sig: FunctionSig,
    /// Pre-resolved export index: calls skip the string lookup.
    pub(crate) index: ComponentExportIndex,
    /// False when a parameter or result cannot travel as JSON (resources,
    /// streams, …); such functions are listed but not callable.
    pub(crate) json_callable: bool,
}

/// The exported functions of a component and the names they answer to.
pub(crate) struct Exports {
    pub(crate) fns: Vec<ExportFn>,
    /// Full names (`f`, `iface#f`) and bare names that are unambiguous.
    by_name: HashMap<String, usize>,
}

impl Exports {
    pub(crate) fn of(engine: &Engine, component: &Component) -> Exports {
        let mut fns = Vec::new();
        let ty = component.component_type();
        for (name, ext) in ty.exports(engine) {
            match &ext.ty {
                ComponentItem::ComponentFunc(f) => {
                    if let Some(index) = component.get_export_index(None, name) {
                        fns.push(export_fn(name.to_string(), f, index));
                    }
                }
                ComponentItem::ComponentInstance(inst) => {
                    let Some(inst_index) = component.get_export_index(None, name) else { continue };
                    for (fname, fext) in inst.exports(engine) {
                        if let ComponentItem::ComponentFunc(f) = &fext.ty {
                            if let Some(index) = component.get_export_index(Some(&inst_index), fname) {
                                fns.push(export_fn(format!("{name}#{fname}"), f, index));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let mut by_name = HashMap::new();
        let mut bare_count: HashMap<&str, usize> = HashMap::new();
        for f in &fns {
            if let Some((_, bare)) = f.sig.name.split_once('#') {
                *bare_count.entry(bare).or_default() += 1;
            } else {
                *bare_count.entry(f.sig.name.as_str()).or_default() += 1;
            }
        }
        for (i, f) in fns.iter().enumerate() {
            by_name.insert(f.sig.name.clone(), i);
        }
        for (i, f) in fns.iter().enumerate() {
            if let Some((_, bare)) = f.sig.name.split_once('#') {
                if bare_count[bare] == 1 && !by_name.contains_key(bare) {
                    by_name.insert(bare.to_string(), i);
                }
            }
        }
        Exports { fns, by_name }
    }

    /// The function called `name` (full name, or bare name if unambiguous).
    pub(crate) fn find(&self, name: &str) -> Option<&ExportFn> {
        self.by_name.get(name).map(|&i| &self.fns[i])
    }

    pub(crate) fn sigs(&self) -> Vec<FunctionSig> {
        self.fns.iter().map(|f| f.sig.clone()).collect()
    }

    /// Comma-separated names, for "no such function" messages.
    pub(crate) fn available(&self) -> String {
        if self.fns.is_empty() {
            return "nothing".into();
        }
        self.fns.iter().map(|f| f.sig.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

fn export_fn(name: String, f: &wasmtime::component::types::ComponentFunc, index: ComponentExportIndex) -> ExportFn {
    let params: Vec<_> = f.params().map(|(n, t)| (n.to_string(), wit_type(&t))).collect();
    let results: Vec<_> = f.results().map(|t| wit_type(&t)).collect();
    let json_callable = params.iter().all(|(_, t)| t.is_supported()) && results.iter().all(|t| t.is_supported());
    ExportFn { sig: FunctionSig { name, params, results }, index, json_callable }
}

/// A blueprint ready to instantiate.
pub(crate) struct Prepared {
    /// Component names, for messages and the memory limiter.
    pub(crate) names: Vec<String>,
    /// Memory cap of each component, in bytes.
    pub(crate) limits: Vec<u64>,
    /// One per component, in order; instantiated in order into one store.
    pub(crate) pres: Vec<InstancePre<HostState>>,
    /// The facade's functions.
    pub(crate) exports: Arc<Exports>,
    /// The blueprint's overrides of the node's guest limits.
    pub(crate) service_limits: super::ServiceLimits,
}

/// Links every component of a blueprint. `components[k]` is the loaded
/// component of the blueprint's k-th entry, `names[k]` its name.
pub(crate) fn link(
    engine: &Engine,
    base: &Linker<HostState>,
    id: &BlueprintId,
    names: &[String],
    components: &[Component],
) -> Result<Vec<InstancePre<HostState>>, RuntimeError> {
    let mut pres = Vec::with_capacity(components.len());
    for (k, component) in components.iter().enumerate() {
        let ty = component.component_type();
        let forwarded = ty.imports(engine).any(|(import, _)| (0..k).any(|j| components[j].get_export_index(None, import).is_some()));
        if !forwarded {
            // Only host imports (the common single-component case): the base
            // linker serves as is, no clone needed.
            let pre = base.instantiate_pre(component).map_err(|e| import_error(id, &names[k], component, engine, e))?;
            pres.push(pre);
            continue;
        }
        let mut linker = base.clone();
        for (import, ext) in ty.imports(engine) {
            // The latest earlier component exporting this name provides it.
            let Some(j) = (0..k).rev().find(|&j| components[j].get_export_index(None, import).is_some()) else { continue };
            let provider = &components[j];
            let top = provider.get_export_index(None, import).expect("checked above");
            let unsupported = |what: &str| RuntimeError::Component {
                hash: id.to_hex(),
                message: format!(
                    "component {} imports {import} from component {}, but {what} cannot be passed between components of a blueprint",
                    names[k], names[j]
                ),
            };
            match &ext.ty {
                ComponentItem::ComponentInstance(inst) => {
                    let mut li = linker.instance(import).map_err(|e| wasm_err("defining", import, e))?;
                    for (fname, fext) in inst.exports(engine) {
                        match &fext.ty {
                            ComponentItem::ComponentFunc(_) => {
                                let Some(index) = provider.get_export_index(Some(&top), fname) else {
                                    return Err(RuntimeError::UnsatisfiedImport {
                                        id: id.to_hex(),
                                        component: names[k].clone(),
                                        import: format!("{import}#{fname} (component {} exports {import} without it)", names[j]),
                                    });
                                };
                                li.func_new_async(fname, forward(j, index)).map_err(|e| wasm_err("defining", fname, e))?;
                            }
                            ComponentItem::Type(_) => {}
                            ComponentItem::Resource(_) => return Err(unsupported("a resource type")),
                            _ => return Err(unsupported("this kind of item")),
                        }
                    }
                }
                ComponentItem::ComponentFunc(_) => {
                    linker.root().func_new_async(import, forward(j, top)).map_err(|e| wasm_err("defining", import, e))?;
                }
                ComponentItem::Type(_) => {}
                _ => return Err(unsupported("this kind of item")),
            }
        }
        let pre = linker.instantiate_pre(component).map_err(|e| import_error(id, &names[k], component, engine, e))?;
        pres.push(pre);
    }
    Ok(pres)
}

/// A host function that calls export `index` of component `j` in the same
/// store, charging memory growth to `j` while it runs.
#[allow(clippy::type_complexity)] // the exact closure shape `func_new_async` demands
fn forward(
    j: usize,
    index: ComponentExportIndex,
) -> impl for<'a> Fn(
    wasmtime::StoreContextMut<'a, HostState>,
    wasmtime::component::types::ComponentFunc,
    &'a [Val],
    &'a mut [Val],
) -> Box<dyn std::future::Future<Output = wasmtime::Result<()>> + Send + 'a>
       + Send
       + Sync
       + 'static {
    move |mut store, _ty, params, results| {
        Box::new(async move {
            let instance = store
                .data()
                .instances
                .get(j)
                .copied()
                .flatten()
                .ok_or_else(|| wasmtime::format_err!("component {j} of the blueprint is not instantiated"))?;
            let func = instance.get_func(&mut store, index).ok_or_else(|| wasmtime::format_err!("component {j} lost an export"))?;
            let caller = std::mem::replace(&mut store.data_mut().limiter.active, j);
            let r = func.call_async(&mut store, params, results).await;
            store.data_mut().limiter.active = caller;
            r
        })
    }
}

pub(crate) fn wasm_err(what: &str, name: &str, e: wasmtime::Error) -> RuntimeError {
    RuntimeError::Wasmtime(format!("{what} {name}: {e:#}"))
}

/// Turns a failed `instantiate_pre` into an error naming the component and
/// the import. wasmtime's outermost message reads "component imports
/// <kind> `<name>`, but a matching implementation was not found in the
/// linker"; the name is taken from it and checked against the component's
/// real import names.
pub(crate) fn import_error(
    id: &BlueprintId,
    component_name: &str,
    component: &Component,
    engine: &Engine,
    e: wasmtime::Error,
) -> RuntimeError {
    let outer = e.to_string();
    let named = outer.split('`').nth(1).map(str::to_string);
    let ty = component.component_type();
    let import = named.filter(|n| ty.imports(engine).any(|(i, _)| i == n));
    let Some(import) = import else {
        return RuntimeError::Component { hash: id.to_hex(), message: format!("component {component_name} cannot be linked: {e:#}") };
    };
    let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
    let missing = causes.last().is_none_or(|c| c.contains("is missing"));
    if missing {
        RuntimeError::UnsatisfiedImport { id: id.to_hex(), component: component_name.to_string(), import }
    } else {
        RuntimeError::ImportMismatch { id: id.to_hex(), component: component_name.to_string(), import, detail: causes.join(": ") }
    }
}
