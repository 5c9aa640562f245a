//! Event Grid receiver for kv-rotator.
//!
//! - [`auth`]: who may deliver — a shared key or a Microsoft Entra ID token.
//! - [`eventgrid`]: the Event Grid and CloudEvents envelopes, tolerant parsing of Key Vault
//!   event data and secret ids, and the decision for each event (one file per part).
//! - [`fastpath`]: the common Event Grid delivery decided without a JSON tree; anything
//!   unusual goes the general way.
//! - [`source`]: which vaults' events are accepted; topic, `VaultName` and `Id` must agree.
//! - [`text`]: trimming, name comparison, id splitting and quoting of untrusted event text,
//!   shared by the parsing and the source check.
//! - [`dedup`]: bounded, time-limited memory of event ids and requested rotations.
//! - [`app`]: the axum [`Router`](axum::Router): validation handshake, routing of
//!   `SecretNearExpiry`/`SecretExpired` into the queue (while its [`Intake`] is open),
//!   acknowledgement of the rest.
//! - [`observe`]: each delivery's outcome (queued, ignored, handshake, refused…) for a
//!   [`DeliveryObserver`] the host implements (the worker's metrics).
//!
//! What it queues is a [`RotationRequest`](kv_rotator_core::RotationRequest), the type every
//! trigger shares (`kv-rotator-core`): a hint, the engine re-reads Key Vault before acting.
//! The webhook knows no rotator and no credential.

pub mod app;
pub mod auth;
pub mod dedup;
pub mod eventgrid;
pub mod fastpath;
pub mod observe;
pub mod source;
mod text;

pub use app::{router, Intake, WebhookState};
pub use auth::{AuthError, Authenticator, EntraId, EntraIdConfig, JwksLocation, SharedKey};
pub use observe::{DeliveryObserver, DeliveryOutcome};
pub use source::SourceFilter;
