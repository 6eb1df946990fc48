//! The deployer: desired state (config + distros) vs current state (store) →
//! pure plan → one executor that applies it crash-safely.
pub mod access;
mod batch;
pub mod desired;
pub mod executor;
pub mod generations;
pub mod journal;
pub mod kept;
pub mod migrate;
pub mod model;
pub mod observed;
pub mod plan;
mod recover;
pub mod report;
mod spell_calls;
mod steps;

pub use executor::{ApplyPolicy, ComponentSource, DeployError, Deployer, FailurePolicy, SpellOps};
pub use model::*;
pub use plan::{plan, Plan, PlanError, PlanErrors, Step};
pub use recover::{resolve as recovery_of, Resolution};
pub use report::{Outcome, Report};
