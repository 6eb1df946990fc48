//! Plan-time link check: would a blueprint's components link against each
//! other and the host? Run before anything is stored, so a component that
//! imports what the host does not provide (e.g. `wasi:keyvalue`) is invalid
//! input (exit 2) found by `plan`, not a failed step found by `apply`.

use super::{engine, host, link, Blueprint, Runtime, RuntimeConfig, RuntimeError};
use crate::ids::ComponentHash;
use std::borrow::Cow;
use std::path::PathBuf;
use wasmtime::component::Component;

/// Where component bytes come from.
pub type Bytes<'a> = &'a dyn Fn(&ComponentHash) -> Option<Cow<'a, [u8]>>;

impl Runtime {
    /// Links `bp` in memory (components compiled in memory or loaded from the
    /// verified cache, nothing written): `UnsatisfiedImport` /
    /// `ImportMismatch` name the component and the import.
    pub fn check_links(&self, bp: &Blueprint, bytes: Bytes<'_>) -> Result<(), RuntimeError> {
        let mut components = Vec::with_capacity(bp.components.len());
        for c in &bp.components {
            let b = bytes(&c.hash).ok_or_else(|| missing(&c.hash, &c.name))?;
            components.push(self.inner.cache.inspect(&c.hash, &b)?);
        }
        let names: Vec<String> = bp.components.iter().map(|c| c.name.clone()).collect();
        link::link(&self.inner.engine, &self.inner.base_linker, &bp.id(), &names, &components).map(|_| ())
    }
}

/// [`Runtime::check_links`] without a runtime (for `sysdeploy plan`, which
/// opens no runtime): compiles with a throwaway engine of the same settings.
pub fn check_links_offline(bp: &Blueprint, bytes: Bytes<'_>) -> Result<(), RuntimeError> {
    let engine = engine(&RuntimeConfig::new(PathBuf::new()))?;
    let base = host::base_linker(&engine)?;
    let mut components = Vec::with_capacity(bp.components.len());
    for c in &bp.components {
        let b = bytes(&c.hash).ok_or_else(|| missing(&c.hash, &c.name))?;
        let component = Component::new(&engine, &b)
            .map_err(|e| RuntimeError::Component { hash: c.hash.to_hex(), message: format!("does not compile: {e:#}") })?;
        components.push(component);
    }
    let names: Vec<String> = bp.components.iter().map(|c| c.name.clone()).collect();
    link::link(&engine, &base, &bp.id(), &names, &components).map(|_| ())
}

fn missing(hash: &ComponentHash, name: &str) -> RuntimeError {
    RuntimeError::Component { hash: hash.to_hex(), message: format!("component {name} is not in the distro") }
}
