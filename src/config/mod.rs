//! Layered node configuration with provenance.
pub mod schema;
