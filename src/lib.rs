//! sysdeploy: declarative boot-time deployer of system services and spells
//! for nodes that host WebAssembly services. See ARCHITECTURE.md for the map.
#[macro_use]
pub mod failpoint;

pub mod api;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod distro;
pub mod exit;
pub mod ids;
pub mod node;
pub mod notify;
pub mod package_check;
pub mod pin_cli;
pub mod runtime;
pub mod schema;
pub mod snapshot;
pub mod spell;
pub mod state;
pub mod store;
pub mod text;
pub mod tree;
pub mod watch;
