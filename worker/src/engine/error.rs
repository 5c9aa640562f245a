//! Why an attempt failed ([`RotationError`]), whether another attempt can help, and how
//! the error is shown.

use kv_rotator_keyvault::StoreError;
use kv_rotator_rotators::RotatorError;

/// Why an attempt failed, and whether another attempt can help.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// Key Vault failed.
    #[error("key vault: {0}")]
    Store(#[from] StoreError),
    /// The target failed.
    #[error("target {profile}: {source}")]
    Target {
        /// Target profile name.
        profile: String,
        /// The rotator's (sanitized) error.
        source: RotatorError,
    },
    /// The secret or its configuration is not usable as it is; an operator must act.
    #[error("{0}")]
    Misconfigured(String),
    /// The pending password was set but the target does not accept it.
    #[error("target {profile} does not accept the new password after setting it")]
    TestFailed {
        /// Target profile name.
        profile: String,
    },
    /// Someone else wrote the secret or the journal record during this attempt (another
    /// engine on the same vault); the next attempt fences again.
    #[error("{0}")]
    Raced(String),
    /// This process no longer holds the engine lease of the vault.
    #[error("this process does not hold the vault's engine lease (another kv-rotator engine may be running)")]
    LeaseLost,
    /// The engine lease's renewals are failing; a later one may restore it.
    #[error("the vault's engine lease lapsed (renewals failing); waiting for it to be renewed")]
    LeaseLapsed,
}

/// An attempt's error as logs, outcomes, audit records and alerts show it: it carries what
/// targets and Key Vault said, so it is escaped and middle-clipped (`logging::sanitized`).
pub(super) fn shown(err: &RotationError) -> String {
    crate::logging::sanitized(&err.to_string(), crate::logging::MAX_ERROR_CHARS)
}

impl RotationError {
    /// Whether retrying the rotation later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RotationError::Store(e) => e.is_transient(),
            RotationError::Target { source, .. } => source.is_transient(),
            RotationError::Misconfigured(_) => false,
            // Replication lag or a pooler may make a fresh password fail for a moment.
            RotationError::TestFailed { .. } => true,
            RotationError::Raced(_) | RotationError::LeaseLapsed => true,
            // Another engine may be running: this one stops, and writes nothing more.
            RotationError::LeaseLost => false,
        }
    }
}
