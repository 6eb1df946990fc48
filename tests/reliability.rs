//! Reliability and security proof (issue 9): crash matrix, property tests
//! over operation sequences, hostile inputs, hostile guests, storage faults
//! and API abuse, all against the real binary, real SQLite files and real
//! wasmtime components. See RELIABILITY.md for what each part promises.

#[path = "reliability/batch.rs"]
mod batch;
#[path = "reliability/common.rs"]
mod common;
#[path = "reliability/corpus.rs"]
mod corpus;
#[cfg(feature = "failpoints")]
#[path = "reliability/crash.rs"]
mod crash;
#[path = "reliability/faults.rs"]
mod faults;
#[path = "reliability/fuzz.rs"]
mod fuzz;
#[cfg(feature = "failpoints")]
#[path = "reliability/model.rs"]
mod model;
