//! Process exit codes: part of the interface contract, shared by the CLI and
//! the node (which the CLI calls), so neither imports the other for them.

use std::process::ExitCode;

/// Process exit codes; part of the interface contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// A deployment step failed, or the command could not complete. (A
    /// deployment interrupted by SIGTERM/SIGINT is an orderly stop: exit 0,
    /// the next boot finishes or rolls back the interrupted step.)
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
