//! Plan-time link check: would a blueprint's components link against each
//! other and the host? Run before anything is stored, so a component that
//! imports what the host does not provide (e.g. `wasi:http`) is invalid
//! input (exit 2) found by `plan`, not a failed step found by `apply`.
//!
//! Nothing here compiles guest code. Components the runtime has already
//! loaded (or holds verified artifacts of) are linked as they are; otherwise
//! every component is decoded (`decode.rs`): imports forwarded between
//! components are matched by name exactly as `link::link` does, and the host
//! judges the rest by linking each component's import prefix (types and
//! imports, no code) against the real base linker.

use super::decode::{self, Decoded, Item};
use super::host::{self, HostState};
use super::{engine, link, Blueprint, Runtime, RuntimeConfig, RuntimeError};
use crate::ids::ComponentHash;
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::OnceLock;
use wasmtime::component::{Component, Linker, Val};
use wasmtime::Engine;

/// Where component bytes come from.
pub type Bytes<'a> = &'a dyn Fn(&ComponentHash) -> Option<Cow<'a, [u8]>>;

impl Runtime {
    /// Links `bp` in memory, writing nothing and compiling no guest code:
    /// `UnsatisfiedImport` / `ImportMismatch` name the component and the import.
    pub fn check_links(&self, bp: &Blueprint, bytes: Bytes<'_>) -> Result<(), RuntimeError> {
        let mut compiled = Vec::with_capacity(bp.components.len());
        for c in &bp.components {
            match self.inner.cache.cached(&c.hash)? {
                Some(component) => compiled.push(component),
                None => break,
            }
        }
        let names: Vec<String> = bp.components.iter().map(|c| c.name.clone()).collect();
        if compiled.len() == bp.components.len() {
            return link::link(&self.inner.engine, &self.inner.base_linker, &bp.id(), &names, &compiled).map(|_| ());
        }
        check_decoded(&self.inner.engine, &self.inner.base_linker, bp, bytes)
    }
}

/// [`Runtime::check_links`] without a runtime (for `sysdeploy plan`, which
/// opens no runtime): decodes the components and links their import
/// prefixes with an engine and base linker of the runtime's settings, made
/// once per process.
pub fn check_links_offline(bp: &Blueprint, bytes: Bytes<'_>) -> Result<(), RuntimeError> {
    static HOST: OnceLock<Result<(Engine, Linker<HostState>), String>> = OnceLock::new();
    let made = HOST.get_or_init(|| {
        let engine = engine(&RuntimeConfig::new(PathBuf::new())).map_err(|e| e.to_string())?;
        let base = host::base_linker(&engine).map_err(|e| e.to_string())?;
        Ok((engine, base))
    });
    let (engine, base) = made.as_ref().map_err(|e| RuntimeError::Wasmtime(e.clone()))?;
    check_decoded(engine, base, bp, bytes)
}

/// Decodes `bytes` as a component: its exports as the runtime lists them.
pub(crate) fn decode_component(hash: &ComponentHash, bytes: &[u8]) -> Result<Decoded, RuntimeError> {
    decode::decode(bytes).map_err(|e| RuntimeError::Component { hash: hash.to_hex(), message: e.0 })
}

fn check_decoded(engine: &Engine, base: &Linker<HostState>, bp: &Blueprint, bytes: Bytes<'_>) -> Result<(), RuntimeError> {
    let id = bp.id();
    let mut all = Vec::with_capacity(bp.components.len());
    for c in &bp.components {
        let b = bytes(&c.hash).ok_or_else(|| missing(&c.hash, &c.name))?;
        let d = decode_component(&c.hash, &b)?;
        all.push((b, d));
    }
    for (k, c) in bp.components.iter().enumerate() {
        let (b, d) = &all[k];
        let provider = |import: &str| (0..k).rev().find(|&j| all[j].1.export(import).is_some());
        let prefix = Component::new(engine, d.import_prefix(b))
            .map_err(|e| RuntimeError::Component { hash: c.hash.to_hex(), message: format!("its imports do not validate: {e:#}") })?;
        crate::failpoint::trace::event(|| format!("link-check imports {}", c.hash.to_hex()));
        if !d.imports.iter().any(|(i, _)| provider(i).is_some()) {
            base.instantiate_pre(&prefix).map_err(|e| link::import_error(&id, &c.name, &prefix, engine, e))?;
            continue;
        }
        // The same forwarding rules as `link::link`, with stubs in place of
        // the forwarding functions (nothing is instantiated).
        let mut linker = base.clone();
        for (import, item) in &d.imports {
            let Some(j) = provider(import) else { continue };
            let provided = all[j].1.export(import).expect("found above");
            let unsupported = |what: &str| RuntimeError::Component {
                hash: id.to_hex(),
                message: format!(
                    "component {} imports {import} from component {}, but {what} cannot be passed between components of a blueprint",
                    c.name, bp.components[j].name
                ),
            };
            match item {
                Item::Instance(items) => {
                    let mut li = linker.instance(import).map_err(|e| link::wasm_err("defining", import, e))?;
                    for (fname, fitem) in items {
                        match fitem {
                            Item::Func => {
                                if !provided.names().any(|n| n == fname) {
                                    return Err(RuntimeError::UnsatisfiedImport {
                                        id: id.to_hex(),
                                        component: c.name.clone(),
                                        import: format!(
                                            "{import}#{fname} (component {} exports {import} without it)",
                                            bp.components[j].name
                                        ),
                                    });
                                }
                                li.func_new_async(fname, stub).map_err(|e| link::wasm_err("defining", fname, e))?;
                            }
                            Item::Type => {}
                            Item::Resource => return Err(unsupported("a resource type")),
                            _ => return Err(unsupported("this kind of item")),
                        }
                    }
                }
                Item::Func => linker.root().func_new_async(import, stub).map_err(|e| link::wasm_err("defining", import, e))?,
                Item::Type => {}
                _ => return Err(unsupported("this kind of item")),
            }
        }
        linker.instantiate_pre(&prefix).map_err(|e| link::import_error(&id, &c.name, &prefix, engine, e))?;
    }
    Ok(())
}

/// Stands in for a forwarding function: the check links, never calls.
fn stub<'a>(
    _: wasmtime::StoreContextMut<'a, HostState>,
    _: wasmtime::component::types::ComponentFunc,
    _: &'a [Val],
    _: &'a mut [Val],
) -> Box<dyn std::future::Future<Output = wasmtime::Result<()>> + Send + 'a> {
    Box::new(async { Err(wasmtime::format_err!("a link check never calls")) })
}

fn missing(hash: &ComponentHash, name: &str) -> RuntimeError {
    RuntimeError::Component { hash: hash.to_hex(), message: format!("component {name} is not in the distro") }
}
