//! Process exit codes: part of the interface contract, shared by the CLI and
//! the node (which the CLI calls), so neither imports the other for them.

use std::process::ExitCode;

/// Process exit codes; part of the interface contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// A deployment step failed, a deployment was interrupted by a signal,
    /// or the command could not complete.
    DeployFailed = 1,
    /// Invalid configuration, manifest or arguments.
    Invalid = 2,
    /// State store unusable: locked by another process, corrupt, newer schema.
    StoreUnusable = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}
