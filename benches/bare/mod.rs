//! The bare-wasmtime baseline shared by the benchmarks: the runtime's engine
//! settings, WASI plus `sysdeploy:host/node` stubbed with the smallest bodies
//! (so the distros' components link as they do in the runtime), and a store.

use std::path::Path;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Store data of the bare baseline: WASI only.
pub struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The engine settings of `sysdeploy::runtime` (component model, epoch
/// interruption, parallel compilation), so artifacts are interchangeable.
pub fn bare_engine() -> Engine {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    c.parallel_compilation(true);
    Engine::new(&c).expect("engine")
}

pub fn bare_linker(engine: &Engine) -> Linker<Bare> {
    let mut l = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut l).expect("wasi");
    let mut node = l.instance("sysdeploy:host/node@0.1.0").expect("host instance");
    node.func_new("log", |_, _, _, _| Ok(())).expect("log");
    node.func_new("peer-id", |_, _, _, r| {
        r[0] = wasmtime::component::Val::String("peer".into());
        Ok(())
    })
    .expect("peer-id");
    node.func_new("now-ms", |_, _, _, r| {
        r[0] = wasmtime::component::Val::U64(0);
        Ok(())
    })
    .expect("now-ms");
    l
}

/// A store with `data` preopened at `/data` when given (as a service has).
pub fn bare_store(engine: &Engine, data: Option<&Path>) -> Store<Bare> {
    let mut wasi = WasiCtxBuilder::new();
    if let Some(d) = data {
        wasi.preopened_dir(d, "/data", wasmtime_wasi::FsPerms::ReadWrite).expect("preopen");
    }
    let mut s = Store::new(engine, Bare { wasi: wasi.build(), table: ResourceTable::new() });
    s.set_epoch_deadline(u64::MAX / 2);
    s
}
