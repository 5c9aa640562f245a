//! The planner: pure decisions of the protocol, separated from I/O so that every
//! combination of what Key Vault and the target can show is unit-tested.
//!
//! - [`fence`]: from the latest version — rotate, already rotated, or stale.
//! - [`with_journal`]: what to do with this rotation's journal record given the fence.
//! - [`stale_journal`]: a journal whose source version is no longer the latest — delete
//!   it only when its password is provably not the one the target depends on.
//! - [`decide`]: the three chained, as the protocol runs them.
//!
//! The rule behind all of them is the invariant: a journal record may hold the only
//! copy of the password the target accepts, so it is deleted only when a version of the
//! secret carries its rotation id or the latest version is proven to log in.

/// What the latest version says about this rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latest {
    /// The latest version is the one the rotation starts from.
    IsSource,
    /// A newer version carries this rotation's id: this rotation finished.
    CarriesRotationId,
    /// A newer version that this rotation did not write.
    Newer,
}

/// Whether this rotation's journal record exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journal {
    /// No record.
    Absent,
    /// A record with a pending password.
    Present,
}

/// Which password the target accepts, when the planner has to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The latest version's password logs in.
    AcceptsLatest,
    /// Only the journal's pending password logs in.
    AcceptsPending,
    /// Neither logs in.
    AcceptsNeither,
    /// The target cannot be reached.
    Unreachable,
}

/// The fence's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// Run the protocol from the latest version.
    Rotate,
    /// Finished before: nothing to write.
    AlreadyRotated,
    /// The request names an older version.
    Stale,
}

/// Step 1: the fence.
pub fn fence(latest: Latest) -> Fence {
    match latest {
        Latest::IsSource => Fence::Rotate,
        Latest::CarriesRotationId => Fence::AlreadyRotated,
        Latest::Newer => Fence::Stale,
    }
}

/// What to do once the fence and the journal are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalStep {
    /// Generate a password and write the journal record before touching the target.
    Create,
    /// Resume with the journaled pending password (never generate a new one).
    Reuse,
    /// Delete the journal record (if any): its password is in a version of the secret.
    Delete,
    /// Nothing to do.
    Nothing,
    /// A journal outlived its source version: look at the history and the target
    /// ([`stale_journal`]).
    Inspect,
}

/// Step 2: the journal, given the fence.
pub fn with_journal(fence: Fence, journal: Journal) -> JournalStep {
    match (fence, journal) {
        (Fence::Rotate, Journal::Absent) => JournalStep::Create,
        (Fence::Rotate, Journal::Present) => JournalStep::Reuse,
        // Finished: the new version holds the pending password; a leftover record is
        // what a crash between finish and delete leaves.
        (Fence::AlreadyRotated, Journal::Present) => JournalStep::Delete,
        (Fence::AlreadyRotated, Journal::Absent) => JournalStep::Nothing,
        (Fence::Stale, Journal::Absent) => JournalStep::Nothing,
        (Fence::Stale, Journal::Present) => JournalStep::Inspect,
    }
}

/// The verdict on a journal that outlived its source version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleJournal {
    /// Its password is safe elsewhere or unused: delete the record.
    Delete,
    /// Keep it: its password may be the only one the target accepts; an operator must
    /// decide (the alert says so).
    KeepForOperator,
    /// Keep it and try later: the target could not be asked.
    KeepAndRetry,
}

/// Step 3, for [`JournalStep::Inspect`]. `finished_in_history`: a version of the secret
/// carries the rotation id (the rotation finished, then someone wrote again). The target
/// is always asked: a finished rotation's record may still hold the only working
/// password when a second engine set one after it finished.
pub fn stale_journal(finished_in_history: bool, target: Target) -> StaleJournal {
    match target {
        Target::AcceptsLatest => StaleJournal::Delete,
        // Finished, and the record's passwords do not work either: nothing to keep.
        Target::AcceptsNeither if finished_in_history => StaleJournal::Delete,
        Target::AcceptsPending | Target::AcceptsNeither => StaleJournal::KeepForOperator,
        Target::Unreachable => StaleJournal::KeepAndRetry,
    }
}

/// The whole decision, as [`super::protocol`] takes it step by step (it asks the
/// history and the target only when [`JournalStep::Inspect`] needs them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Create or reuse the journal, then set, test, finish.
    Rotate(JournalStep),
    /// Nothing to write to the secret; the journal step says what becomes of a record.
    Stop(Fence, JournalStep, Option<StaleJournal>),
}

/// Chains [`fence`], [`with_journal`] and [`stale_journal`].
pub fn decide(latest: Latest, journal: Journal, finished_in_history: bool, target: Target) -> Decision {
    let fence = fence(latest);
    let step = with_journal(fence, journal);
    match (fence, step) {
        (Fence::Rotate, step) => Decision::Rotate(step),
        (fence, JournalStep::Inspect) => {
            Decision::Stop(fence, JournalStep::Inspect, Some(stale_journal(finished_in_history, target)))
        }
        (fence, step) => Decision::Stop(fence, step, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATEST: [Latest; 3] = [Latest::IsSource, Latest::CarriesRotationId, Latest::Newer];
    const JOURNAL: [Journal; 2] = [Journal::Absent, Journal::Present];
    const TARGET: [Target; 4] =
        [Target::AcceptsLatest, Target::AcceptsPending, Target::AcceptsNeither, Target::Unreachable];

    fn every_state() -> impl Iterator<Item = (Latest, Journal, bool, Target)> {
        LATEST.into_iter().flat_map(|l| {
            JOURNAL.into_iter().flat_map(move |j| {
                [false, true].into_iter().flat_map(move |h| TARGET.into_iter().map(move |t| (l, j, h, t)))
            })
        })
    }

    /// Whether, in this state, the journal's password may be the only working one: the
    /// target accepts it, no version of the secret carries it.
    fn pending_only_in_journal(latest: Latest, journal: Journal, history: bool, target: Target) -> bool {
        journal == Journal::Present
            && latest != Latest::CarriesRotationId
            && (target == Target::AcceptsPending
                || (!history && matches!(target, Target::Unreachable | Target::AcceptsNeither)))
    }

    #[test]
    fn the_matrix_has_every_combination() {
        assert_eq!(every_state().count(), 3 * 2 * 2 * 4);
    }

    #[test]
    fn a_journal_holding_the_only_working_password_is_never_deleted() {
        for (l, j, h, t) in every_state() {
            let d = decide(l, j, h, t);
            if pending_only_in_journal(l, j, h, t) {
                let deletes = matches!(
                    d,
                    Decision::Stop(_, JournalStep::Delete, _) | Decision::Stop(_, _, Some(StaleJournal::Delete))
                );
                assert!(!deletes, "{l:?} {j:?} history={h} {t:?} -> {d:?}");
            }
        }
    }

    #[test]
    fn an_existing_journal_is_reused_never_replaced_by_a_fresh_password() {
        for (l, j, h, t) in every_state() {
            let d = decide(l, j, h, t);
            if j == Journal::Present {
                assert_ne!(d, Decision::Rotate(JournalStep::Create), "{l:?} {j:?} history={h} {t:?}");
            }
            if d == Decision::Rotate(JournalStep::Reuse) {
                assert_eq!(j, Journal::Present);
            }
        }
    }

    #[test]
    fn only_the_source_version_is_rotated_and_always_is() {
        for (l, j, h, t) in every_state() {
            let d = decide(l, j, h, t);
            assert_eq!(
                matches!(d, Decision::Rotate(_)),
                l == Latest::IsSource,
                "{l:?} {j:?} history={h} {t:?} -> {d:?}"
            );
        }
    }

    #[test]
    fn leftovers_of_finished_rotations_are_cleaned_up_unless_the_target_uses_them() {
        for (l, j, h, t) in every_state() {
            let d = decide(l, j, h, t);
            let finished = l == Latest::CarriesRotationId || (l == Latest::Newer && h);
            let target_uses_it_or_cannot_say = matches!(t, Target::AcceptsPending | Target::Unreachable);
            if finished && j == Journal::Present && !(l == Latest::Newer && target_uses_it_or_cannot_say) {
                let deletes = matches!(
                    d,
                    Decision::Stop(_, JournalStep::Delete, _) | Decision::Stop(_, _, Some(StaleJournal::Delete))
                );
                assert!(deletes, "{l:?} {j:?} history={h} {t:?} -> {d:?}");
            }
        }
    }

    #[test]
    fn a_stale_journal_is_kept_for_retry_only_when_the_target_cannot_be_asked() {
        for (l, j, h, t) in every_state() {
            if let Decision::Stop(_, _, Some(verdict)) = decide(l, j, h, t) {
                assert_eq!(verdict == StaleJournal::KeepAndRetry, t == Target::Unreachable);
            }
        }
    }

    #[test]
    fn states_without_a_journal_never_touch_one() {
        for (l, _, h, t) in every_state() {
            let d = decide(l, Journal::Absent, h, t);
            let expected = match l {
                Latest::IsSource => Decision::Rotate(JournalStep::Create),
                Latest::CarriesRotationId => Decision::Stop(Fence::AlreadyRotated, JournalStep::Nothing, None),
                Latest::Newer => Decision::Stop(Fence::Stale, JournalStep::Nothing, None),
            };
            assert_eq!(d, expected);
        }
    }
}
