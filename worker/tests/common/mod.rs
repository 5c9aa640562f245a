//! Helpers shared by the worker's integration suites.

pub mod devsite;
pub mod pg;
pub mod proc;
