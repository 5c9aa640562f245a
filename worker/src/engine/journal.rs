//! Rotation ids and the pending journal record's name and content type (its tags are
//! `kv_rotator_core::tags`).
//!
//! The rotation id is derived from (vault, secret, source version), so every trigger
//! of the same state — duplicate deliveries, the sweeper, a manual request — converges
//! on one rotation and one journal record.
//!
//! Each rotation gets its own journal secret, named from the rotation id. Key Vault
//! soft-deletes on delete, and a soft-deleted name refuses new writes (409) until
//! purged — which purge protection may forbid for up to 90 days. A name used once never
//! needs to be written again, so finishing never depends on purge rights.

use sha2::{Digest, Sha256};

/// Prefix of every secret kv-rotator keeps for itself (journals, the engine lease): never
/// managed, whatever its tags say.
pub const RESERVED_PREFIX: &str = "kv-rotator-";
/// Content type of journal records, so no one mistakes one for a managed secret.
pub const JOURNAL_CONTENT_TYPE: &str = "application/vnd.kv-rotator.pending-password";

/// The rotation id of `secret` at `source_version` in the vault named `vault`:
/// 32 hex characters, case-insensitive in vault and secret names as Key Vault is.
pub fn rotation_id(vault: &str, secret: &str, source_version: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [vault.to_ascii_lowercase(), secret.to_ascii_lowercase(), source_version.to_ascii_lowercase()] {
        hasher.update(part.as_bytes());
        // A separator that cannot occur in any of the parts keeps the encoding unambiguous.
        hasher.update(b"/");
    }
    hex::encode(&hasher.finalize()[..16])
}

/// What every journal record's name starts with.
pub const JOURNAL_PREFIX: &str = "kv-rotator-pending-";

/// The journal secret's name for a rotation id (a valid Key Vault secret name).
pub fn journal_name(rotation_id: &str) -> String {
    format!("{JOURNAL_PREFIX}{rotation_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_id_converges_on_case_and_differs_per_version() {
        let a = rotation_id("MyVault", "Db-Password", "ABC");
        assert_eq!(a, rotation_id("myvault", "db-password", "abc"));
        assert_ne!(a, rotation_id("myvault", "db-password", "abd"));
        assert_ne!(a, rotation_id("myvault", "db-passwor", "dabc"));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn journal_name_is_a_valid_secret_name() {
        let name = journal_name(&rotation_id("v", "s", "1"));
        assert!(name.len() <= 127);
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
}
