//! Key Vault access for kv-rotator.
//!
//! - [`store`]: the [`SecretStore`] trait — everything the rotation engine needs from
//!   Key Vault — with its value types and the error classification (transient or not).
//! - [`azure`]: the production store over the official `SecretClient`
//!   (`azure_security_keyvault_secrets` 1.x).
//! - [`pipeline`]: what the store adds to the SDK's pipeline: bounded retries and a
//!   client-side rate limiter, with [`ClientSettings`](pipeline::ClientSettings).
//! - [`devvault`]: the dev vault, a local TLS-serving implementation of the Key Vault
//!   secrets REST API used by `kv-rotator dev`, the demo and every test.

// A test-only feature never reaches a binary that ships (see `kv-rotator-leakscan`).
#[cfg(all(feature = "leak-ledger", not(debug_assertions)))]
compile_error!(
    "the leak-ledger feature copies logs and vault metadata to files for the leak scanner: test builds only"
);

pub mod azure;
pub mod devvault;
pub mod pipeline;
pub mod store;

pub use store::{
    NewSecretVersion, PropertiesUpdate, SecretProperties, SecretRecord, SecretStore, StoreError, StoreResult,
};
