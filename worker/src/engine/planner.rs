//! The planner: the protocol's decisions, as pure functions the protocol calls at each
//! decision point and acts on, so that every combination of what Key Vault and the
//! target can show is unit-tested against the code that runs.
//!
//! - [`fence`]: from the latest version — rotate, already rotated, or stale.
//! - [`leftover`]: a request the fence stops, whose rotation left a journal record: the
//!   record outlived its source version, or its rotation finished. [`Leftover`] asks, one
//!   [`Question`] at a time, only what its verdict needs (each answer costs reads or
//!   logins), then gives the verdict ([`StaleJournal`]).
//! - [`start`]: a rotation from the source version, with or without its record (the
//!   target asked about it): through the gate or not, and with a fresh password or the
//!   record's.
//!
//! The protocol ([`super::protocol`]) calls these at its decision points and acts on what
//! they return; the tests below run them the same way over every state.
//!
//! The rule behind all of them is the invariant: a journal record may hold the only
//! copy of the password the target accepts, so it is deleted only when versions of the
//! secret hold its passwords, or when the latest version logs in once the target had time
//! to show the record's password (a lagging replica still takes the old one).

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
    /// The journal's pending password logs in: its newest (the one set last).
    AcceptsPending,
    /// An older password of the journal logs in, not its newest: the target may lag
    /// behind the newest's set, so this one is no proof of what its primary has.
    AcceptsOlderPending,
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
    /// Nothing to write to the secret.
    Stop(Stop),
}

/// Why the fence stops a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Finished before.
    AlreadyRotated,
    /// The request names an older version.
    Stale,
}

/// Step 1: the fence.
pub fn fence(latest: Latest) -> Fence {
    match latest {
        Latest::IsSource => Fence::Rotate,
        Latest::CarriesRotationId => Fence::Stop(Stop::AlreadyRotated),
        Latest::Newer => Fence::Stop(Stop::Stale),
    }
}

/// Step 1, for a request the fence stops: a journal record of its rotation outlived its
/// source version, or its rotation finished — [`Leftover`] judges it.
pub fn leftover(stop: Stop, journal: Journal) -> Option<Leftover> {
    match journal {
        Journal::Absent => None,
        Journal::Present => Some(Leftover::new(stop)),
    }
}

/// This rotation's journal record, as a rotation from the source version finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// No record.
    Absent,
    /// A record, once the target was asked about it. `target_uses_it`: the target
    /// accepts one of its passwords (or, for `own`, this request set it). `own`: this
    /// request journaled it, so the target need not be asked.
    Present { target_uses_it: bool, own: bool },
}

/// How a rotation from the source version goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// The gate decides whether it starts now (a rotation the target has taken is always
    /// finished, whatever the schedule).
    pub gated: bool,
    /// The password `set` makes the target accept.
    pub password: Password,
}

/// Where the pending password comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Password {
    /// Generated, and journaled before the target sees it (over the record, if any).
    Fresh,
    /// The journal record's (never replaced by a fresh one).
    Journaled,
}

/// Step 2: with or without this rotation's record, whether the gate is asked and which
/// password is set.
pub fn start(record: Record) -> Start {
    match record {
        Record::Absent => Start { gated: true, password: Password::Fresh },
        // The rotation has begun on the target: it is finished with that password.
        Record::Present { target_uses_it: true, .. } => Start { gated: false, password: Password::Journaled },
        // This request's own record, not yet set: it passed the gate when it journaled,
        // and only the clock has moved since — a rotation begun in its window finishes
        // its retries after the window closes.
        Record::Present { target_uses_it: false, own: true } => Start { gated: false, password: Password::Journaled },
        // A rotation not begun, or a planted record: its password is not trusted.
        Record::Present { target_uses_it: false, own: false } => Start { gated: true, password: Password::Fresh },
    }
}

/// The verdict on a journal that outlived its source version, or a finished rotation's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleJournal {
    /// Its password is safe elsewhere or unused: delete the record.
    Delete,
    /// The latest version carries the rotation id, but the target uses the record's
    /// password (two engines finished one rotation): write that password again as the
    /// latest version, then delete the record.
    Refinish,
    /// Keep it: its password may be the only one the target accepts; an operator must
    /// decide (the alert says so).
    KeepForOperator,
    /// Keep it and try later: the target could not be asked.
    KeepAndRetry,
    /// Keep it for now: the latest logs in, but the record's password was set too recently
    /// for a replica to show it; the sweeper judges it again.
    KeepUntilSettled,
}

/// What [`Leftover`] needs to know next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    /// Whether every version of the record can be read. A disabled one may hold the
    /// password the target uses, and nothing about it can be checked.
    AllVersionsReadable,
    /// Whether the record holds only the finished (latest) version's password.
    HoldsOnlyLatest,
    /// Whether each of the record's passwords is held by a version of the secret carrying
    /// the rotation id (the rotation finished, then someone wrote again): deleting the
    /// record then loses nothing, whatever the target says.
    FinishedInHistory,
    /// Which password the target accepts ([`Target`]).
    Target,
    /// Whether a recent version of the secret holds the record's password the target
    /// accepts.
    PendingInHistory,
    /// Whether the record's newest version is older than the target's replication lag
    /// (`engine.target_lag_secs`): only then does the latest logging in prove that the
    /// record's password is not the one the target's primary has.
    RecordSettled,
    /// Whether the latest holds a value the secret held before the rotation (its source
    /// version's, or an older one's; a source that cannot be read counts): the password
    /// the target had before the record's was set, which a login path that never caught
    /// up still takes.
    LatestIsSource,
    /// Whether the record's password the target accepts is one the secret held before
    /// the rotation (as [`Question::LatestIsSource`]): no password kv-rotator generates is,
    /// so the record version holding it was written by someone else — a forgery of an old
    /// password a lagging login path still takes.
    PendingIsOld,
}

/// The planner's next move on a leftover record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Answer this, then ask again.
    Ask(Question),
    /// Carry this out.
    Verdict(StaleJournal),
}

/// A leftover journal record and the answers gathered about it so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leftover {
    /// The latest version carries the rotation id ([`Stop::AlreadyRotated`]).
    finished_latest: bool,
    /// Answer to [`Question::AllVersionsReadable`].
    pub all_readable: Option<bool>,
    /// Answer to [`Question::HoldsOnlyLatest`].
    pub holds_only_latest: Option<bool>,
    /// Answer to [`Question::FinishedInHistory`].
    pub finished_in_history: Option<bool>,
    /// Answer to [`Question::Target`].
    pub target: Option<Target>,
    /// Answer to [`Question::PendingInHistory`].
    pub pending_in_history: Option<bool>,
    /// Answer to [`Question::RecordSettled`].
    pub record_settled: Option<bool>,
    /// Answer to [`Question::LatestIsSource`].
    pub latest_is_source: Option<bool>,
    /// Answer to [`Question::PendingIsOld`].
    pub pending_is_old: Option<bool>,
}

impl Leftover {
    fn new(stop: Stop) -> Self {
        Self {
            finished_latest: stop == Stop::AlreadyRotated,
            all_readable: None,
            holds_only_latest: None,
            finished_in_history: None,
            target: None,
            pending_in_history: None,
            record_settled: None,
            latest_is_source: None,
            pending_is_old: None,
        }
    }

    /// The next question, or the verdict once the answers suffice. The target is asked
    /// unless every password of the record is readable in a version of the secret: a
    /// finished rotation's record may still hold the only working password when a second
    /// engine set one after it finished, and the tag that says "finished" is anyone's to
    /// write.
    pub fn next(&self) -> Next {
        let Some(all_readable) = self.all_readable else { return Next::Ask(Question::AllVersionsReadable) };
        if !all_readable {
            return Next::Verdict(StaleJournal::KeepForOperator);
        }
        if self.finished_latest {
            // What a crash between finish and delete leaves.
            let Some(only_latest) = self.holds_only_latest else { return Next::Ask(Question::HoldsOnlyLatest) };
            if only_latest {
                return Next::Verdict(StaleJournal::Delete);
            }
            return match self.target {
                None => Next::Ask(Question::Target),
                Some(Target::AcceptsPending) => match self.pending_is_old {
                    None => Next::Ask(Question::PendingIsOld),
                    Some(true) => Next::Verdict(StaleJournal::KeepForOperator),
                    Some(false) => Next::Verdict(StaleJournal::Refinish),
                },
                Some(target) => self.judge(target),
            };
        }
        match self.finished_in_history {
            None => return Next::Ask(Question::FinishedInHistory),
            Some(true) => return Next::Verdict(StaleJournal::Delete),
            Some(false) => {}
        }
        let Some(target) = self.target else { return Next::Ask(Question::Target) };
        // Where several passwords work (pairs, multi-password), the record's may be one a
        // version also holds (a finished rotation's, left over): it is readable there.
        if target == Target::AcceptsPending {
            match self.pending_is_old {
                None => return Next::Ask(Question::PendingIsOld),
                Some(true) => return Next::Verdict(StaleJournal::KeepForOperator),
                Some(false) => {}
            }
            match self.pending_in_history {
                None => return Next::Ask(Question::PendingInHistory),
                Some(true) => return Next::Verdict(StaleJournal::Delete),
                Some(false) => {}
            }
        }
        self.judge(target)
    }

    /// The verdict on a record some of whose passwords no version holds, once the target
    /// answered. Only the latest logging in makes it worthless, and only once the target
    /// had time to show the record's password: a replica lagging behind its primary still
    /// takes the password it had before (a version holding that old value, written again
    /// or planted, would otherwise delete the only copy of the primary's). Even then, the
    /// latest holding the very value the rotation started from is kept for an operator: a
    /// login path that never catches up (broken replication, a pooler's stale auth file)
    /// takes it forever. Refusing every password proves nothing either, and an older record
    /// password logging in shows lag, for the same reason.
    fn judge(&self, target: Target) -> Next {
        let settled = || match self.record_settled {
            None => Err(Next::Ask(Question::RecordSettled)),
            Some(settled) => Ok(settled),
        };
        Next::Verdict(match target {
            Target::AcceptsLatest | Target::AcceptsOlderPending => match settled() {
                Err(ask) => return ask,
                Ok(false) => StaleJournal::KeepUntilSettled,
                Ok(true) if target == Target::AcceptsOlderPending => StaleJournal::KeepForOperator,
                Ok(true) => match self.latest_is_source {
                    None => return Next::Ask(Question::LatestIsSource),
                    Some(true) => StaleJournal::KeepForOperator,
                    Some(false) => StaleJournal::Delete,
                },
            },
            Target::AcceptsPending | Target::AcceptsNeither => StaleJournal::KeepForOperator,
            Target::Unreachable => StaleJournal::KeepAndRetry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATEST: [Latest; 3] = [Latest::IsSource, Latest::CarriesRotationId, Latest::Newer];
    const JOURNAL: [Journal; 2] = [Journal::Absent, Journal::Present];
    const TARGET: [Target; 5] = [
        Target::AcceptsLatest,
        Target::AcceptsPending,
        Target::AcceptsOlderPending,
        Target::AcceptsNeither,
        Target::Unreachable,
    ];

    /// Everything the protocol can observe: the latest version, the record, the target,
    /// and the facts the planner may ask about.
    #[derive(Debug, Clone, Copy)]
    struct State {
        latest: Latest,
        journal: Journal,
        target: Target,
        /// This request journaled the record.
        own: bool,
        /// Versions carrying the rotation id hold every one of the record's passwords.
        finished_in_history: bool,
        /// The record holds only the latest version's password.
        holds_only_latest: bool,
        /// A recent version holds the record's password the target accepts.
        pending_in_history: bool,
        /// The gate lets a new rotation start.
        gate_open: bool,
        /// Every version of the record can be read.
        all_readable: bool,
        /// The record's newest version is older than the target's replication lag.
        record_settled: bool,
        /// The latest holds the value the rotation started from.
        latest_is_source: bool,
        /// The record's password the target accepts is one the secret held before.
        pending_is_old: bool,
    }

    impl State {
        /// Every password of the record is readable in a version of the secret (not
        /// shown by the rotation id tag alone, which anyone may write).
        fn record_in_versions(&self) -> bool {
            self.journal == Journal::Present
                && self.all_readable
                && ((self.latest == Latest::CarriesRotationId && self.holds_only_latest)
                    || (self.latest == Latest::Newer && self.finished_in_history))
        }

        /// The latest logs in with a password newer than the rotation, and the target
        /// had time to show the record's had it been set: the record's is not the primary's.
        fn latest_proven(&self) -> bool {
            self.target == Target::AcceptsLatest && self.record_settled && !self.latest_is_source
        }

        /// The target uses one of the record's passwords (the newest or an older one).
        fn uses_record(&self) -> bool {
            matches!(self.target, Target::AcceptsPending | Target::AcceptsOlderPending)
        }
    }

    /// Where the protocol ends up, following the planner's answers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Decision {
        /// Set, test and finish with this password.
        Rotate(Password),
        /// The gate ended the request.
        Gated,
        /// Asking the target about the record failed: the attempt is retried.
        Retry,
        /// The verdict on a leftover record.
        Leftover(StaleJournal),
        /// Nothing to write.
        Nothing,
    }

    /// Runs the planner as the protocol does, answering its questions from `s`.
    fn decide(s: State) -> Decision {
        let record = match (fence(s.latest), s.journal) {
            (Fence::Stop(stop), journal) => {
                return match leftover(stop, journal) {
                    None => Decision::Nothing,
                    Some(mut leftover) => Decision::Leftover(answer(&mut leftover, s)),
                };
            }
            (Fence::Rotate, Journal::Absent) => Record::Absent,
            // This request's own record: it knows whether it set the target, without a login.
            (Fence::Rotate, Journal::Present) if s.own => {
                Record::Present { target_uses_it: s.uses_record(), own: true }
            }
            // Asking the target about someone else's record failed: the attempt ends.
            (Fence::Rotate, Journal::Present) if s.target == Target::Unreachable => return Decision::Retry,
            (Fence::Rotate, Journal::Present) => Record::Present { target_uses_it: s.uses_record(), own: false },
        };
        let rotation = start(record);
        match (rotation.gated, s.gate_open) {
            (true, false) => Decision::Gated,
            _ => Decision::Rotate(rotation.password),
        }
    }

    /// Answers `leftover`'s questions until its verdict, each at most once.
    fn answer(leftover: &mut Leftover, s: State) -> StaleJournal {
        let mut asked = Vec::new();
        loop {
            let question = match leftover.next() {
                Next::Verdict(verdict) => return verdict,
                Next::Ask(question) => question,
            };
            assert!(!asked.contains(&question), "{question:?} asked twice in {s:?}");
            asked.push(question);
            match question {
                Question::HoldsOnlyLatest => leftover.holds_only_latest = Some(s.holds_only_latest),
                Question::FinishedInHistory => leftover.finished_in_history = Some(s.finished_in_history),
                Question::Target => leftover.target = Some(s.target),
                Question::PendingInHistory => leftover.pending_in_history = Some(s.pending_in_history),
                Question::AllVersionsReadable => leftover.all_readable = Some(s.all_readable),
                Question::RecordSettled => leftover.record_settled = Some(s.record_settled),
                Question::LatestIsSource => leftover.latest_is_source = Some(s.latest_is_source),
                Question::PendingIsOld => leftover.pending_is_old = Some(s.pending_is_old),
            }
        }
    }

    /// Whether the target is asked about the record in `s`.
    fn target_asked(s: State) -> bool {
        s.all_readable && !s.record_in_versions()
    }

    fn every_state() -> impl Iterator<Item = State> {
        LATEST.into_iter().flat_map(move |latest| {
            JOURNAL.into_iter().flat_map(move |journal| {
                TARGET.into_iter().flat_map(move |target| {
                    (0..512u16).map(move |bits| {
                        let flag = |bit: u16| bits & (1 << bit) != 0;
                        State {
                            latest,
                            journal,
                            target,
                            own: flag(0),
                            finished_in_history: flag(1),
                            holds_only_latest: flag(2),
                            pending_in_history: flag(3),
                            gate_open: flag(4),
                            all_readable: flag(5),
                            record_settled: flag(6),
                            latest_is_source: flag(7),
                            pending_is_old: flag(8),
                        }
                    })
                })
            })
        })
    }

    /// Whether, in this state, the journal's password may be the only working one: not
    /// every password of the record is readable in a version, the target's accepting the
    /// newest one that a version holds does not show, and the latest logging in does not
    /// prove it (a lagging target takes an old password too, and refuses the new one).
    fn pending_only_in_journal(s: State) -> bool {
        let accepted_one_in_a_version = s.target == Target::AcceptsPending && s.pending_in_history && !s.pending_is_old;
        s.journal == Journal::Present
            && !s.record_in_versions()
            && !(s.all_readable && (accepted_one_in_a_version || s.latest_proven()))
    }

    #[test]
    fn the_matrix_has_every_combination() {
        assert_eq!(every_state().count(), 3 * 2 * 5 * 512);
    }

    #[test]
    fn a_journal_holding_the_only_working_password_is_never_deleted() {
        for s in every_state() {
            let d = decide(s);
            if pending_only_in_journal(s) {
                assert_ne!(d, Decision::Leftover(StaleJournal::Delete), "{s:?}");
            }
            // A refinish deletes the record's other passwords: only with the newest, and
            // never with a password the secret held before (a forgery).
            let untrusted =
                s.target == Target::AcceptsOlderPending || (s.target == Target::AcceptsPending && s.pending_is_old);
            if s.latest != Latest::IsSource && untrusted {
                let deleting = matches!(d, Decision::Leftover(StaleJournal::Delete | StaleJournal::Refinish));
                assert!(!deleting || s.record_in_versions(), "{s:?} -> {d:?}");
            }
        }
    }

    #[test]
    fn a_journal_the_target_uses_is_reused_never_replaced_by_a_fresh_password() {
        for s in every_state() {
            let d = decide(s);
            let uses_it = s.uses_record();
            if s.latest == Latest::IsSource && s.journal == Journal::Present && (uses_it || s.own) {
                assert!(matches!(d, Decision::Rotate(Password::Journaled) | Decision::Gated), "{s:?} -> {d:?}");
            }
            if s.latest == Latest::IsSource && s.journal == Journal::Present && uses_it {
                assert_eq!(d, Decision::Rotate(Password::Journaled), "the gate never holds a begun rotation: {s:?}");
            }
            if d == Decision::Rotate(Password::Journaled) {
                assert_eq!(s.journal, Journal::Present, "{s:?}");
            }
        }
    }

    #[test]
    fn a_fresh_password_is_journaled_only_for_a_rotation_the_gate_lets_start() {
        for s in every_state() {
            if decide(s) == Decision::Rotate(Password::Fresh) {
                assert!(s.gate_open, "{s:?}");
                let untrusted = s.journal == Journal::Present && !s.own && !s.uses_record();
                assert!(s.journal == Journal::Absent || untrusted, "{s:?}");
            }
        }
    }

    /// A retry of a request that journaled its password is not held by the gate again:
    /// the window it started in may have closed since (or the sweeps stalled), and the
    /// request would otherwise end as "outside the window" with its failure unreported.
    #[test]
    fn a_rotation_this_request_began_is_not_gated_again() {
        for s in every_state() {
            if s.latest == Latest::IsSource && s.journal == Journal::Present && s.own {
                assert_eq!(decide(s), Decision::Rotate(Password::Journaled), "{s:?}");
            }
        }
    }

    #[test]
    fn a_record_the_target_does_not_use_and_this_request_did_not_write_is_never_trusted() {
        for s in every_state() {
            let unused = !s.uses_record() && s.target != Target::Unreachable;
            if s.latest == Latest::IsSource && s.journal == Journal::Present && !s.own && unused {
                let expected = if s.gate_open { Decision::Rotate(Password::Fresh) } else { Decision::Gated };
                assert_eq!(decide(s), expected, "{s:?}");
            }
        }
    }

    #[test]
    fn only_the_source_version_is_rotated_and_always_is() {
        for s in every_state() {
            let d = decide(s);
            let rotates = matches!(d, Decision::Rotate(_));
            assert!(!rotates || s.latest == Latest::IsSource, "{s:?} -> {d:?}");
            if s.latest == Latest::IsSource {
                assert!(matches!(d, Decision::Rotate(_) | Decision::Gated | Decision::Retry), "{s:?} -> {d:?}");
            }
            if s.latest == Latest::IsSource && s.gate_open && s.target != Target::Unreachable {
                assert!(rotates, "{s:?} -> {d:?}");
            }
        }
    }

    /// The already-rotated leftover whose record holds a password no version holds: a
    /// target refusing every password (a lagging replica may) keeps it for an operator;
    /// the rotation id tag alone, which anyone may write, does not make it worthless.
    #[test]
    fn a_finish_shown_by_its_tag_alone_does_not_let_a_refusing_target_delete_the_record() {
        let mut leftover = leftover(Stop::AlreadyRotated, Journal::Present).expect("a record to judge");
        leftover.all_readable = Some(true);
        leftover.holds_only_latest = Some(false);
        leftover.target = Some(Target::AcceptsNeither);
        assert_eq!(leftover.next(), Next::Verdict(StaleJournal::KeepForOperator));
        leftover.holds_only_latest = Some(true);
        leftover.target = None;
        assert_eq!(leftover.next(), Next::Verdict(StaleJournal::Delete), "what a crash before the delete leaves");
    }

    /// A version holding the password the target had before the rotation (restored by
    /// an operator, or planted), and a replica that does not show the record's password
    /// yet: the latest logs in, yet the record holds the only password the primary takes.
    /// It is kept until the record is older than the target's lag, then judged again —
    /// and kept for an operator if the latest holds the rotation's source value (a login
    /// path that never catches up). An older record password logging in is lag too.
    #[test]
    fn the_latest_logging_in_deletes_a_record_only_once_the_target_settled() {
        for stop in [Stop::AlreadyRotated, Stop::Stale] {
            let mut leftover = leftover(stop, Journal::Present).expect("a record to judge");
            leftover.all_readable = Some(true);
            leftover.holds_only_latest = Some(false);
            leftover.finished_in_history = Some(false);
            leftover.target = Some(Target::AcceptsLatest);
            assert_eq!(leftover.next(), Next::Ask(Question::RecordSettled), "{stop:?}");
            leftover.record_settled = Some(false);
            assert_eq!(leftover.next(), Next::Verdict(StaleJournal::KeepUntilSettled), "{stop:?}");
            leftover.record_settled = Some(true);
            assert_eq!(leftover.next(), Next::Ask(Question::LatestIsSource), "{stop:?}");
            leftover.latest_is_source = Some(false);
            assert_eq!(leftover.next(), Next::Verdict(StaleJournal::Delete), "{stop:?}");
            leftover.latest_is_source = Some(true);
            assert_eq!(
                leftover.next(),
                Next::Verdict(StaleJournal::KeepForOperator),
                "a login path that never caught up"
            );
        }
        for s in every_state() {
            let asked = s.journal == Journal::Present && s.latest != Latest::IsSource && target_asked(s);
            if asked && matches!(s.target, Target::AcceptsLatest | Target::AcceptsOlderPending) {
                let expected = match (s.record_settled, s.latest_proven()) {
                    (false, _) => StaleJournal::KeepUntilSettled,
                    (true, true) => StaleJournal::Delete,
                    (true, false) => StaleJournal::KeepForOperator,
                };
                assert_eq!(decide(s), Decision::Leftover(expected), "{s:?}");
            }
        }
    }

    /// A disabled version of the record (one that cannot be read) may hold the password
    /// the target uses, and none of the record's other facts says anything about it.
    #[test]
    fn a_record_with_a_version_that_cannot_be_read_is_kept_for_an_operator() {
        for s in every_state() {
            if s.journal == Journal::Present && s.latest != Latest::IsSource && !s.all_readable {
                assert_eq!(decide(s), Decision::Leftover(StaleJournal::KeepForOperator), "{s:?}");
            }
        }
    }

    #[test]
    fn leftovers_whose_passwords_are_readable_or_superseded_are_cleaned_up() {
        for s in every_state() {
            let d = decide(s);
            let refinishable =
                s.latest == Latest::CarriesRotationId && s.target == Target::AcceptsPending && !s.pending_is_old;
            if s.journal == Journal::Present
                && s.latest != Latest::IsSource
                && s.all_readable
                && (s.record_in_versions() || s.latest_proven() || refinishable)
            {
                let cleaned = matches!(d, Decision::Leftover(StaleJournal::Delete | StaleJournal::Refinish));
                assert!(cleaned, "{s:?} -> {d:?}");
            }
        }
    }

    #[test]
    fn only_a_finished_rotation_is_refinished_and_only_with_the_password_the_target_uses() {
        for s in every_state() {
            if decide(s) == Decision::Leftover(StaleJournal::Refinish) {
                assert_eq!(s.latest, Latest::CarriesRotationId, "{s:?}");
                assert_eq!(s.target, Target::AcceptsPending, "{s:?}");
            }
        }
    }

    #[test]
    fn a_stale_journal_is_kept_for_retry_only_when_the_target_cannot_be_asked() {
        for s in every_state() {
            if let Decision::Leftover(verdict) = decide(s) {
                let cannot_ask = s.target == Target::Unreachable && target_asked(s);
                assert_eq!(verdict == StaleJournal::KeepAndRetry, cannot_ask, "{s:?}");
            }
        }
    }

    #[test]
    fn states_without_a_journal_never_touch_one() {
        for s in every_state().filter(|s| s.journal == Journal::Absent) {
            let expected = match (s.latest, s.gate_open) {
                (Latest::IsSource, true) => Decision::Rotate(Password::Fresh),
                (Latest::IsSource, false) => Decision::Gated,
                (Latest::CarriesRotationId | Latest::Newer, _) => Decision::Nothing,
            };
            assert_eq!(decide(s), expected, "{s:?}");
        }
    }
}
