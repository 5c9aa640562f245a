//! The names of the tags kv-rotator reads and writes on managed secrets and on journal
//! records, and the values it gives the tags whose value it parses.
//!
//! These texts are stored in Key Vault and outlive a release: a journal record written by
//! one version is resumed by the next. Renaming one strands what is already in a vault,
//! so each stays as it is (the test below pins them). The engine lease's own tags are the
//! lease's business (`kv_rotator::lease`).

/// Tag naming the target profile (kv-rotator's own): a secret without it is not managed.
pub const TAG_ROTATOR: &str = "rotator";
/// Tag naming the user on the target (Microsoft's rotation samples).
pub const TAG_CREDENTIAL_ID: &str = "CredentialId";
/// Tag with the validity of a new version in days (Microsoft's rotation samples).
pub const TAG_VALIDITY_DAYS: &str = "ValidityPeriodDays";
/// Tag with the secret's rotation window, overriding its profile's `rotation_window`
/// (e.g. `Mon-Fri 22:00-05:00 Europe/Amsterdam`); carried over to new versions.
pub const TAG_ROTATION_WINDOW: &str = "RotationWindow";

/// Tag on new versions and journal records: the rotation that wrote them.
pub const TAG_ROTATION_ID: &str = "rotation-id";
/// Tag on new versions: when the rotation finished (RFC 3339).
pub const TAG_ROTATED_AT: &str = "rotated-at";
/// Tag on new versions: the version this one replaced.
pub const TAG_ROTATED_FROM: &str = "rotated-from";
/// Tag on a managed secret's latest version: a rotation failed past the retry cap
/// (value: when, attempts, rotation id). Removed by the next successful rotation.
pub const TAG_FAILED: &str = "kv-rotator-failed";
/// Tag on a new version of a multi-password profile: the passwords of the versions
/// before it are still valid on the target and will be retired after the grace period
/// (value: when, RFC 3339; see `engine::retire`). Removed once they are.
pub const TAG_RETIRE_AFTER: &str = "kv-rotator-retire-after";

/// Tag on journal records: the secret the pending password belongs to.
pub const TAG_JOURNAL_FOR: &str = "kv-rotator-journal-for";
/// Tag on journal records: the protocol step reached, [`STEP_PENDING`] or
/// [`STEP_TARGET_SET`].
pub const TAG_STEP: &str = "kv-rotator-step";
/// [`TAG_STEP`]: the record is written, the target may not have the password yet.
pub const STEP_PENDING: &str = "pending";
/// [`TAG_STEP`]: the target accepts the pending password; Key Vault not finished.
pub const STEP_TARGET_SET: &str = "target-set";
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What earlier releases wrote into vaults, letter for letter: a record they left
    /// unfinished must still be found, judged and resumed.
    #[test]
    fn stored_names_and_values_are_those_earlier_releases_wrote() {
        let written = [
            (TAG_ROTATOR, "rotator"),
            (TAG_CREDENTIAL_ID, "CredentialId"),
            (TAG_VALIDITY_DAYS, "ValidityPeriodDays"),
            (TAG_ROTATION_WINDOW, "RotationWindow"),
            (TAG_ROTATION_ID, "rotation-id"),
            (TAG_ROTATED_AT, "rotated-at"),
            (TAG_ROTATED_FROM, "rotated-from"),
            (TAG_FAILED, "kv-rotator-failed"),
            (TAG_RETIRE_AFTER, "kv-rotator-retire-after"),
            (TAG_JOURNAL_FOR, "kv-rotator-journal-for"),
            (TAG_STEP, "kv-rotator-step"),
            (STEP_PENDING, "pending"),
            (STEP_TARGET_SET, "target-set"),
            (TAG_ATTEMPTS, "kv-rotator-attempts"),
            (TAG_PROFILE, "kv-rotator-profile"),
            (TAG_ACCOUNT, "kv-rotator-account"),
            (TAG_TRIGGER, "kv-rotator-trigger"),
            (TRIGGER_MANUAL, "manual"),
            (TRIGGER_SCHEDULED, "scheduled"),
        ];
        for (constant, stored) in written {
            assert_eq!(constant, stored);
        }
    }

    #[test]
    fn every_tag_name_fits_key_vaults_limit() {
        let names = [
            TAG_ROTATOR,
            TAG_CREDENTIAL_ID,
            TAG_VALIDITY_DAYS,
            TAG_ROTATION_WINDOW,
            TAG_ROTATION_ID,
            TAG_ROTATED_AT,
            TAG_ROTATED_FROM,
            TAG_FAILED,
            TAG_RETIRE_AFTER,
            TAG_JOURNAL_FOR,
            TAG_STEP,
            TAG_ATTEMPTS,
            TAG_PROFILE,
            TAG_ACCOUNT,
            TAG_TRIGGER,
        ];
        assert!(names.iter().all(|name| !name.is_empty() && name.chars().count() <= crate::limits::MAX_TAG_CHARS));
    }
}
