//! Hostile guests cannot escape or starve the node through their data
//! directory (issue 20: the copy race, deep trees, PATH_MAX, sparse files
//! and hard links). `walker`: the safe walker (`sysdeploy::tree`) on real
//! directories; `guests`: the hostile guest (`tests/distros/hostile-tree`) against
//! the real runtime; `node`: the same attacks through the real binary's
//! reload path, with a benign neighbour answering throughout.
//!
//! Every test here takes [`serial`]: the race tests arm a process-wide
//! failpoint, and another test's walk passing it would swap too early.

#![allow(clippy::await_holding_lock)]

#[path = "containment/guests.rs"]
mod guests;
#[path = "containment/node.rs"]
mod node;
#[path = "containment/walker.rs"]
mod walker;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One test of this binary at a time (a failed test does not block the rest).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
