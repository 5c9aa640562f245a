//! Helpers shared by the worker's integration suites.

pub mod pg;
pub mod proc;
