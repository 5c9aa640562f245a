//! kv-rotator: an event-driven password rotation worker for Azure Key Vault.
//!
//! The binary wires the workspace's parts together:
//!
//! - [`engine`]: the only place that knows the rotation protocol — fence on the latest
//!   version, write the pending journal record to Key Vault before touching the target,
//!   set, test, finish, delete the journal — with retries and per-secret locking.
//! - [`targets`]: builds one [`Rotator`](kv_rotator_rotators::Rotator) per target profile.
//! - [`credentials`]: picks the Entra ID credential the configuration names.
//! - [`service`]: runs the webhook and the engine together until shutdown.
//! - [`cli`]: the `demo`, `dev` and `serve` commands.
//!
//! See `docs/architecture.md` for the data flow and the invariant.

pub mod cli;
pub mod credentials;
pub mod engine;
pub mod service;
pub mod targets;
