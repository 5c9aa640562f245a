//! Configuration of kv-rotator: the model, layered loading and validation.
//!
//! - [`model`]: the typed configuration — `vault` (URL, credential, TLS overrides for the
//!   dev vault), `webhook` (listen address, limits), `admin` (the loopback listener of
//!   `/metrics` and the probes), `engine` (queue, retries) and `targets` (one profile per
//!   target system, named by a secret's `rotator` tag).
//! - [`load`]: layering with figment — built-in defaults, then a TOML file, then
//!   environment variables prefixed `KV_ROTATOR_` (`__` separates levels) — and
//!   validation. Unknown keys are errors that name the key.
//! - [`window`]: rotation windows, the local hours in which scheduled rotations may start
//!   (a profile's `rotation_window`, a secret's `RotationWindow` tag).

pub mod load;
pub mod model;
pub mod window;

/// Re-exported so callers can build base layers for [`load_onto`].
pub use figment;
pub use load::{load, load_onto, ConfigError};
pub use model::*;
