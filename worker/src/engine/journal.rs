//! Rotation ids and the pending journal record's name and tags.
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

/// Tag on new versions and journal records: the rotation that wrote them.
pub const TAG_ROTATION_ID: &str = "rotation-id";
/// Tag on new versions: when the rotation finished (RFC 3339).
pub const TAG_ROTATED_AT: &str = "rotated-at";
/// Tag on new versions: the version this one replaced.
pub const TAG_ROTATED_FROM: &str = "rotated-from";
/// Tag on journal records: the secret the pending password belongs to.
pub const TAG_JOURNAL_FOR: &str = "kv-rotator-journal-for";
/// Tag on journal records: the protocol step reached.
pub const TAG_STEP: &str = "kv-rotator-step";
/// Tag on journal records: attempts that used this record, across processes (the
/// record's own `created`/`updated` attributes are its timestamps).
pub const TAG_ATTEMPTS: &str = "kv-rotator-attempts";
/// Tag on journal records: the target profile the pending password is for (probes of a
/// stale record use it, not the tags of whatever version is latest by then).
pub const TAG_PROFILE: &str = "kv-rotator-profile";
/// Tag on journal records: the account on the target the pending password is for.
pub const TAG_ACCOUNT: &str = "kv-rotator-account";
/// Tag on journal records: what started the rotation, [`TRIGGER_MANUAL`] or
/// [`TRIGGER_SCHEDULED`] (a resume of a manual one need not wait until the secret is due).
pub const TAG_TRIGGER: &str = "kv-rotator-trigger";
/// [`TAG_TRIGGER`]: an operator's request.
pub const TRIGGER_MANUAL: &str = "manual";
/// [`TAG_TRIGGER`]: an event, the sweeper or a resume.
pub const TRIGGER_SCHEDULED: &str = "scheduled";
/// Prefix of every secret kv-rotator keeps for itself (journals, the engine lease): never
/// managed, whatever its tags say.
pub const RESERVED_PREFIX: &str = "kv-rotator-";
/// Tag on a managed secret's latest version: a rotation failed past the retry cap
/// (value: when, attempts, rotation id). Removed by the next successful rotation.
pub const TAG_FAILED: &str = "kv-rotator-failed";
/// Tag on a new version of a multi-password profile: the passwords of the versions
/// before it are still valid on the target and will be retired after the grace period
/// (value: when, RFC 3339; see `engine::retire`). Removed once they are.
pub const TAG_RETIRE_AFTER: &str = "kv-rotator-retire-after";
/// Journal step: the record is written, the target may not have the password yet.
pub const STEP_PENDING: &str = "pending";
/// Journal step: the target accepts the pending password; Key Vault not finished.
pub const STEP_TARGET_SET: &str = "target-set";
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
