//! kv-rotator's shared vocabulary, used by every other crate of the workspace.
//!
//! - [`request`]: [`RotationRequest`] and its [`Trigger`], what every trigger (webhook,
//!   sweeper, `rotate`, admin API, Functions) hands to the engine.
//! - [`names`]: Key Vault's rules for vault names, secret names and versions.
//! - [`limits`]: Key Vault's limits on a version's value, tags and content type.
//! - [`tags`]: the tags kv-rotator reads and writes on managed secrets and journal
//!   records, with the values it parses.
//!
//! Nothing here does I/O or depends on another crate: it is the one place a rule or a
//! name is written, so the webhook, the configuration, the dev vault and the engine cannot
//! disagree about it.

pub mod limits;
pub mod names;
pub mod request;
pub mod tags;

pub use request::{RotationRequest, Trigger};
