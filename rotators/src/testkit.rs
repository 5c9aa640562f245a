//! Conformance checks every rotator must pass (built-in ones and plugins alike).
//!
//! - [`ConformanceFixture`]: what a test provides: a way to create a user with a known
//!   password on a real target, and the target's admin login if it has one.
//! - [`TwinFixture`] and [`run_twin_conformance`]: the same for the alternating-users
//!   strategy's [`Rotator::sync_twin`] (the checks are listed on the function).
//! - [`run_multi_password_conformance`]: the multi-password strategy's add and retire.
//! - [`run_conformance`]: drives a [`Rotator`] through the contract written on
//!   [`SetPasswordRequest`] and [`Rotator::verify`], and returns a
//!   [`ConformanceReport`] or the first failed check.
//!
//! The checks, in order, all with passwords from the rotator's own policy:
//!
//! 1. `verify` accepts the user's password and rejects a wrong one. The engine relies on
//!    the second half at every rotation (a random canary must be `Rejected`): a target
//!    that accepts any password — `trust` in `pg_hba.conf`, a proxy answering for it —
//!    can prove nothing, and fails here and in the engine before anything is written.
//! 2. `set_password` with the right current password and a new pending password
//!    (`pending_is_new`, as the engine sends a password it just journaled) →
//!    `ChangedWithCurrent`; the pending password then logs in and the old one no longer does.
//! 3. The same request again, not new (a resumed journal) → `AlreadySet`, and the
//!    password stays: a resumed request must try the pending password first.
//! 4. Current wrong, a previous one right → `ChangedWithPrevious`.
//! 5. Only the admin login works → `ChangedWithAdmin` (when the fixture has an admin).
//! 6. No known login → `Err(Permanent)`, and nothing changed; the same with a wrong
//!    admin password when the fixture can offer one.
//! 7. Two users rotated concurrently through one rotator both end up changed.
//! 8. The read-only checks of `kv-rotator check`: `check_setup` succeeds; `check_admin`
//!    says the fixture's admin logs in and a wrong admin password is `Refused` (or, for
//!    a kind that cannot check an admin login read-only, `NotChecked` both times).
//!
//! Every response that says `pending_verified` is checked: `verify` must accept the
//! pending password right after it (the engine's `test` step trusts that claim).
//!
//! 9. No `Debug` or `Display` text of any request, response or error contains any
//!    password used.
//!
//! Size: ~35 lines of module doc, ~650 of code, no unit tests (it is a test harness). Its
//! three suites (single-user, twin, multi-password) share one private driver, `Run`: the
//! passwords handed out, every text seen, the leak check.

use std::fmt;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::{
    AdminCheck, Credential, RetirePasswordsRequest, RetirePasswordsResponse, Rotator, RotatorError, SetPasswordOutcome,
    SetPasswordRequest, SetPasswordResponse, SyncTwinRequest, SyncTwinResponse, VerifyRequest, VerifyResponse,
};

/// The target side of a conformance run.
#[async_trait]
pub trait ConformanceFixture: Send {
    /// Creates a new user on the target whose password is `password`, and returns its
    /// name. Called several times per run; each call must give a fresh user.
    async fn create_user(&mut self, password: &SecretString) -> Result<String, String>;

    /// A working admin credential, if the target has one (enables the admin check).
    fn admin(&self) -> Option<Credential>;

    /// The admin's user name with a wrong password, if the target checks admin
    /// passwords (enables the wrong-admin check). Must not change anything on the target.
    fn wrong_admin(&self, wrong_password: SecretString) -> Option<Credential> {
        self.admin().map(|admin| Credential { username: admin.username, password: wrong_password })
    }
}

/// What a passing run checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConformanceReport {
    /// Checks that ran and passed, in order.
    pub passed: Vec<String>,
    /// Checks the fixture did not support, with why.
    pub skipped: Vec<String>,
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} checks passed, {} skipped", self.passed.len(), self.skipped.len())?;
        for s in &self.skipped {
            write!(f, "\n  skipped: {s}")?;
        }
        Ok(())
    }
}

/// Runs every check against `rotator`; `Err` describes the first failure (never with a
/// password in it).
pub async fn run_conformance(
    rotator: &dyn Rotator,
    fixture: &mut dyn ConformanceFixture,
) -> Result<ConformanceReport, String> {
    let mut run = Run::new(rotator);
    let result = run.all(fixture).await;
    run.finish(result, "requests, responses and errors")
}

struct Run<'a> {
    rotator: &'a dyn Rotator,
    /// Every password used, to look for in `texts`.
    secrets: Vec<SecretString>,
    /// Every Debug/Display rendering seen.
    texts: Vec<String>,
    report: ConformanceReport,
}

impl<'a> Run<'a> {
    fn new(rotator: &'a dyn Rotator) -> Self {
        Run { rotator, secrets: Vec::new(), texts: Vec::new(), report: ConformanceReport::default() }
    }

    /// The report, once the leak check passed over every text of the run (`of` says
    /// which); it runs after a failure too: a failure message is text too.
    fn finish(mut self, result: Result<(), String>, of: &str) -> Result<ConformanceReport, String> {
        let leak = self.leak_check(result.as_ref().err());
        result?;
        leak?;
        self.report.passed.push(format!("no password in any Debug/Display text of {of}"));
        Ok(self.report)
    }

    fn password(&mut self) -> SecretString {
        let p = self.rotator.password_policy().generate();
        self.secrets.push(p.clone());
        p
    }

    fn pass(&mut self, check: &str) {
        self.report.passed.push(check.to_owned());
    }

    async fn user(&mut self, fixture: &mut dyn ConformanceFixture) -> Result<(String, SecretString), String> {
        let password = self.password();
        let user = fixture.create_user(&password).await.map_err(|e| format!("fixture could not create a user: {e}"))?;
        Ok((user, password))
    }

    async fn verify(&mut self, user: &str, password: &SecretString) -> Result<VerifyResponse, String> {
        let req = VerifyRequest { username: user.to_owned(), password: password.clone() };
        self.texts.push(format!("{req:?}"));
        let result = self.rotator.verify(req).await;
        self.texts.push(format!("{result:?}"));
        if let Err(e) = &result {
            self.texts.push(e.to_string());
        }
        result.map_err(|e| format!("verify({user:?}) failed: {e}"))
    }

    async fn expect_verify(
        &mut self,
        user: &str,
        password: &SecretString,
        want: VerifyResponse,
        which: &str,
    ) -> Result<(), String> {
        let got = self.verify(user, password).await?;
        if got != want {
            return Err(format!("verify({user:?}, {which}): expected {want:?}, got {got:?}"));
        }
        Ok(())
    }

    async fn set(&mut self, req: SetPasswordRequest) -> Result<SetPasswordResponse, RotatorError> {
        self.texts.push(format!("{req:?}"));
        let result = self.rotator.set_password(req).await;
        self.texts.push(format!("{result:?}"));
        if let Err(e) = &result {
            self.texts.push(e.to_string());
        }
        result
    }

    async fn expect_set(
        &mut self,
        req: SetPasswordRequest,
        want: SetPasswordOutcome,
        check: &str,
    ) -> Result<(), String> {
        let (user, pending) = (req.username.clone(), req.pending.clone());
        match self.set(req).await {
            Ok(resp) if resp.outcome == want => {
                if resp.pending_verified {
                    self.expect_verify(&user, &pending, VerifyResponse::Accepted, "a pending password said verified")
                        .await
                        .map_err(|e| format!("{check}: {e}"))?;
                }
                Ok(())
            }
            Ok(resp) => Err(format!("{check}: set_password({user:?}) expected {want:?}, got {:?}", resp.outcome)),
            Err(e) => Err(format!("{check}: set_password({user:?}) expected {want:?}, got error: {e}")),
        }
    }

    async fn expect_permanent(&mut self, req: SetPasswordRequest, check: &str) -> Result<(), String> {
        let user = req.username.clone();
        match self.set(req).await {
            Err(RotatorError::Permanent(_)) => Ok(()),
            Err(e) => Err(format!("{check}: set_password({user:?}) expected a permanent error, got: {e}")),
            Ok(resp) => {
                Err(format!("{check}: set_password({user:?}) expected a permanent error, got {:?}", resp.outcome))
            }
        }
    }

    async fn check_admin(&mut self, admin: &Credential) -> Result<AdminCheck, String> {
        let result = self.rotator.check_admin(admin).await;
        self.texts.push(format!("{result:?}"));
        result.map_err(|e| format!("check_admin({:?}) failed: {e}", admin.username))
    }

    /// 8: what `kv-rotator check` asks, which must change nothing and tell the truth.
    async fn read_only_checks(
        &mut self,
        fixture: &dyn ConformanceFixture,
        admin: Option<&Credential>,
    ) -> Result<(), String> {
        let setup = self.rotator.check_setup().await;
        self.texts.push(format!("{setup:?}"));
        setup.map_err(|e| format!("check_setup failed: {e}"))?;
        let Some(admin) = admin else {
            self.pass("check_setup succeeds (no admin to check)");
            return Ok(());
        };
        let wrong = fixture.wrong_admin(self.password());
        match self.check_admin(admin).await? {
            AdminCheck::Works(_) => {}
            AdminCheck::NotChecked(why) => {
                if let Some(wrong) = wrong {
                    match self.check_admin(&wrong).await? {
                        AdminCheck::NotChecked(_) => {}
                        other => {
                            return Err(format!(
                                "check_admin: NotChecked for the admin, {other:?} for a wrong password"
                            ))
                        }
                    }
                }
                self.pass(&format!("check_setup succeeds; check_admin does not check this kind read-only ({why})"));
                return Ok(());
            }
            AdminCheck::Refused => return Err("check_admin refused the fixture's working admin login".to_owned()),
        }
        if let Some(wrong) = wrong {
            let got = self.check_admin(&wrong).await?;
            if got != AdminCheck::Refused {
                return Err(format!("check_admin with a wrong admin password: expected Refused, got {got:?}"));
            }
        }
        self.pass("check_setup succeeds; check_admin: the admin logs in, a wrong admin password is refused");
        Ok(())
    }

    async fn all(&mut self, fixture: &mut dyn ConformanceFixture) -> Result<(), String> {
        let admin = fixture.admin();
        if let Some(admin) = &admin {
            self.secrets.push(admin.password.clone());
            self.texts.push(format!("{admin:?}"));
        }

        // 1. verify
        let (user, p0) = self.user(fixture).await?;
        self.expect_verify(&user, &p0, VerifyResponse::Accepted, "its password").await?;
        let wrong = self.password();
        self.expect_verify(&user, &wrong, VerifyResponse::Rejected, "a wrong password").await?;
        self.pass("verify accepts the right password and rejects a wrong one");
        self.read_only_checks(fixture, admin.as_ref()).await?;

        // 2. change with current
        let p1 = self.password();
        let req = SetPasswordRequest {
            username: user.clone(),
            pending: p1.clone(),
            current: p0.clone(),
            previous: vec![],
            admin: None,
            pending_is_new: true,
        };
        self.expect_set(req.clone(), SetPasswordOutcome::ChangedWithCurrent, "change with current").await?;
        self.expect_verify(&user, &p1, VerifyResponse::Accepted, "the new password").await?;
        self.expect_verify(&user, &p0, VerifyResponse::Rejected, "the replaced password").await?;
        self.pass("set_password of a new pending password with the current password → ChangedWithCurrent; new accepted, old rejected");

        // 3. idempotent
        let req = SetPasswordRequest { pending_is_new: false, ..req };
        self.expect_set(req, SetPasswordOutcome::AlreadySet, "repeat").await?;
        self.expect_verify(&user, &p1, VerifyResponse::Accepted, "the password after a repeat").await?;
        self.pass("repeating the same set_password, resumed (not new) → AlreadySet");

        // 4. change with previous
        let p2 = self.password();
        let wrong_current = self.password();
        let wrong_previous = self.password();
        let req = SetPasswordRequest {
            username: user.clone(),
            pending: p2.clone(),
            current: wrong_current,
            previous: vec![wrong_previous, p1.clone()],
            admin: None,
            pending_is_new: false,
        };
        self.expect_set(req, SetPasswordOutcome::ChangedWithPrevious, "change with previous").await?;
        self.expect_verify(&user, &p2, VerifyResponse::Accepted, "the new password").await?;
        self.expect_verify(&user, &p1, VerifyResponse::Rejected, "the replaced password").await?;
        self.pass("current wrong, second previous right → ChangedWithPrevious");

        // 5. change with admin
        let mut live = p2;
        if let Some(admin) = admin.clone() {
            let p3 = self.password();
            let req = SetPasswordRequest {
                username: user.clone(),
                pending: p3.clone(),
                current: self.password(),
                previous: vec![self.password()],
                admin: Some(admin),
                pending_is_new: false,
            };
            self.expect_set(req, SetPasswordOutcome::ChangedWithAdmin, "change with admin").await?;
            self.expect_verify(&user, &p3, VerifyResponse::Accepted, "the new password").await?;
            self.expect_verify(&user, &live, VerifyResponse::Rejected, "the replaced password").await?;
            live = p3;
            self.pass("only the admin login works → ChangedWithAdmin");
        } else {
            self.report.skipped.push("ChangedWithAdmin: the fixture has no admin".to_owned());
        }

        // 6. no known login
        let p4 = self.password();
        let req = SetPasswordRequest {
            username: user.clone(),
            pending: p4.clone(),
            current: self.password(),
            previous: vec![self.password()],
            admin: None,
            pending_is_new: false,
        };
        self.expect_permanent(req, "no known login").await?;
        self.expect_verify(&user, &p4, VerifyResponse::Rejected, "the refused pending password").await?;
        self.expect_verify(&user, &live, VerifyResponse::Accepted, "the untouched password").await?;
        self.pass("no known login → permanent error, nothing changed");

        let wrong_admin_password = self.password();
        if let Some(wrong_admin) = fixture.wrong_admin(wrong_admin_password) {
            let req = SetPasswordRequest {
                username: user.clone(),
                pending: p4.clone(),
                current: self.password(),
                previous: vec![],
                admin: Some(wrong_admin),
                pending_is_new: false,
            };
            self.expect_permanent(req, "wrong admin password").await?;
            self.expect_verify(&user, &live, VerifyResponse::Accepted, "the untouched password").await?;
            self.pass("wrong admin password → permanent error, nothing changed");
        } else {
            self.report.skipped.push("wrong admin password: the fixture cannot offer one".to_owned());
        }

        // 7. concurrency: one rotator shared by rotations of different users.
        let (user_a, a0) = self.user(fixture).await?;
        let (user_b, b0) = self.user(fixture).await?;
        let (a1, b1) = (self.password(), self.password());
        let req_a = SetPasswordRequest {
            username: user_a.clone(),
            pending: a1.clone(),
            current: a0,
            previous: vec![],
            admin: None,
            pending_is_new: false,
        };
        let req_b = SetPasswordRequest {
            username: user_b.clone(),
            pending: b1.clone(),
            current: b0,
            previous: vec![],
            admin: None,
            pending_is_new: false,
        };
        self.texts.push(format!("{req_a:?} {req_b:?}"));
        let (ra, rb) = tokio::join!(self.rotator.set_password(req_a), self.rotator.set_password(req_b));
        for (who, result) in [(&user_a, ra), (&user_b, rb)] {
            self.texts.push(format!("{result:?}"));
            match result {
                Ok(resp) if resp.outcome == SetPasswordOutcome::ChangedWithCurrent => {}
                Ok(resp) => return Err(format!("concurrent set_password({who:?}): got {:?}", resp.outcome)),
                Err(e) => return Err(format!("concurrent set_password({who:?}) failed: {e}")),
            }
        }
        self.expect_verify(&user_a, &a1, VerifyResponse::Accepted, "its new password after a concurrent rotation")
            .await?;
        self.expect_verify(&user_b, &b1, VerifyResponse::Accepted, "its new password after a concurrent rotation")
            .await?;
        self.pass("concurrent rotations of two users both take effect");
        Ok(())
    }

    /// Fails if any recorded text (or the failure message) contains a password.
    fn leak_check(&self, failure: Option<&String>) -> Result<(), String> {
        let texts = self.texts.iter().chain(failure);
        for (i, text) in texts.enumerate() {
            if let Some(n) = self.secrets.iter().position(|s| contains_secret(text, s)) {
                // Say where, never what.
                return Err(format!("leak: recorded text #{i} contains password #{n}"));
            }
        }
        Ok(())
    }
}

/// Whether `text` contains `secret` (an empty secret never matches).
pub fn contains_secret(text: &str, secret: &SecretString) -> bool {
    let s = secret.expose_secret();
    !s.is_empty() && text.contains(s)
}

/// The target side of an alternating-users run ([`run_twin_conformance`]).
#[async_trait]
pub trait TwinFixture: Send {
    /// The admin login `sync_twin` is given.
    fn admin(&self) -> Credential;

    /// Creates a new account whose password is `password`, with a privilege only it holds
    /// (e.g. `SELECT` on a table granted to it alone), and returns its name.
    async fn create_primary(&mut self, password: &SecretString) -> Result<String, String>;

    /// A fresh name, for an account that does not exist yet (the fixture drops it at the
    /// end if the rotator created it).
    fn fresh_name(&mut self) -> String;

    /// Logs in as `user` with `password` and uses the primary's privilege; `Err` says
    /// why it could not.
    async fn use_primary_privilege(&mut self, user: &str, password: &SecretString) -> Result<(), String>;

    /// Gives `primary` something its twin then lacks (a grant, a role, an attribute),
    /// and returns a word the next `sync_twin`'s repaired or drift text must contain.
    async fn grow_primary(&mut self, primary: &str) -> Result<String, String>;

    /// Gives `twin` a privilege `primary` lacks, and returns a word the drift text must
    /// contain.
    async fn grow_twin(&mut self, twin: &str) -> Result<String, String>;
}

/// Runs the alternating-users checks of [`Rotator::sync_twin`] against `rotator`:
///
/// 1. refusals: the twin named as the primary, a primary that does not exist, a name
///    too long for any target → permanent errors;
/// 2. a missing twin is created (`created`), logs in with the password it was created
///    with, and can use the primary's privilege; `set_password` with that password
///    (what the engine calls next) is `AlreadySet`;
/// 3. a second call changes nothing: not created, nothing repaired, no drift, and the
///    password it offers is not set; one that says the secret never used the twin is
///    refused (an existing account of that name is someone else's);
/// 4. what the primary gains is repaired (then a further call is a no-op) or reported;
/// 5. a privilege only the twin has is reported as drift, and again at the next call
///    (it was not revoked);
/// 6. no password, in any text.
pub async fn run_twin_conformance(
    rotator: &dyn Rotator,
    fixture: &mut dyn TwinFixture,
) -> Result<ConformanceReport, String> {
    let mut run = Run::new(rotator);
    let result = run.twin(fixture).await;
    run.finish(result, "sync_twin requests, responses and errors")
}

impl Run<'_> {
    async fn sync(&mut self, req: SyncTwinRequest) -> Result<SyncTwinResponse, RotatorError> {
        self.texts.push(format!("{req:?}"));
        let result = self.rotator.sync_twin(req).await;
        self.texts.push(format!("{result:?}"));
        match &result {
            Ok(resp) => self.texts.extend(resp.repaired.iter().chain(&resp.drift).cloned()),
            Err(e) => self.texts.push(e.to_string()),
        }
        result
    }

    async fn expect_sync(&mut self, req: SyncTwinRequest, check: &str) -> Result<SyncTwinResponse, String> {
        self.sync(req).await.map_err(|e| format!("{check}: sync_twin failed: {e}"))
    }

    async fn expect_sync_refused(&mut self, req: SyncTwinRequest, check: &str) -> Result<(), String> {
        match self.sync(req).await {
            Err(RotatorError::Permanent(_)) => Ok(()),
            other => Err(format!("{check}: expected a permanent error, got {other:?}")),
        }
    }

    async fn twin(&mut self, fixture: &mut dyn TwinFixture) -> Result<(), String> {
        let admin = fixture.admin();
        self.secrets.push(admin.password.clone());
        let p0 = self.password();
        let primary = fixture.create_primary(&p0).await.map_err(|e| format!("fixture: creating the primary: {e}"))?;
        let twin = fixture.fresh_name();
        let request = |run: &mut Self, primary: &str, twin: &str| SyncTwinRequest {
            primary: primary.to_owned(),
            twin: twin.to_owned(),
            password_if_created: run.password(),
            admin: admin.clone(),
            twin_known: true,
        };

        // 1. refusals
        let req = request(self, &primary, &primary);
        self.expect_sync_refused(req, "twin = primary").await?;
        let ghost = fixture.fresh_name();
        let req = request(self, &ghost, &twin);
        self.expect_sync_refused(req, "a primary that does not exist").await?;
        let req = request(self, &primary, &"t".repeat(200));
        self.expect_sync_refused(req, "a twin name too long").await?;
        self.pass("sync_twin refuses twin = primary, a missing primary, and a name the target would refuse");

        // 2. creation
        let req = request(self, &primary, &twin);
        let t0 = req.password_if_created.clone();
        let resp = self.expect_sync(req, "create").await?;
        if !resp.created || !resp.repaired.is_empty() || !resp.drift.is_empty() {
            return Err(format!("create: expected created and nothing else, got {resp:?}"));
        }
        self.expect_verify(&twin, &t0, VerifyResponse::Accepted, "the password it was created with").await?;
        fixture
            .use_primary_privilege(&twin, &t0)
            .await
            .map_err(|e| format!("the new twin lacks the primary's privilege: {e}"))?;
        let set = SetPasswordRequest {
            username: twin.clone(),
            pending: t0.clone(),
            current: self.password(),
            previous: vec![],
            admin: Some(admin.clone()),
            pending_is_new: false,
        };
        self.expect_set(set, SetPasswordOutcome::AlreadySet, "set_password after creation").await?;
        self.pass("a missing twin is created with the password and the primary's privileges");

        // 3. idempotent
        let req = request(self, &primary, &twin);
        let unused = req.password_if_created.clone();
        let resp = self.expect_sync(req, "repeat").await?;
        if resp != SyncTwinResponse::default() {
            return Err(format!("repeat: expected no change, got {resp:?}"));
        }
        self.expect_verify(&twin, &unused, VerifyResponse::Rejected, "a password offered to an existing twin").await?;
        self.expect_verify(&twin, &t0, VerifyResponse::Accepted, "its password after a repeat").await?;
        self.pass("a second sync_twin changes nothing");

        // 3b. an account this secret never used is not taken over
        let mut req = request(self, &primary, &twin);
        req.twin_known = false;
        self.expect_sync_refused(req, "an existing account the secret never used").await?;
        self.expect_verify(&twin, &t0, VerifyResponse::Accepted, "its password after the refusal").await?;
        self.pass("an existing account the secret never used is refused, untouched");

        // 4. the primary grows
        let word = fixture.grow_primary(&primary).await.map_err(|e| format!("fixture: growing the primary: {e}"))?;
        let req = request(self, &primary, &twin);
        let resp = self.expect_sync(req, "after the primary grew").await?;
        let named = |texts: &[String]| texts.iter().any(|t| t.contains(&word));
        if named(&resp.repaired) {
            let req = request(self, &primary, &twin);
            let again = self.expect_sync(req, "after a repair").await?;
            if again != SyncTwinResponse::default() {
                return Err(format!("after a repair: expected no change, got {again:?}"));
            }
            self.pass("what the primary gains is repaired on the twin, once");
        } else if named(&resp.drift) {
            self.pass("what the primary gains is reported as drift");
        } else {
            return Err(format!("after the primary grew ({word:?}): neither repaired nor reported: {resp:?}"));
        }

        // 5. the twin has more
        let word = fixture.grow_twin(&twin).await.map_err(|e| format!("fixture: growing the twin: {e}"))?;
        for check in ["an extra privilege of the twin", "the extra privilege again"] {
            let req = request(self, &primary, &twin);
            let resp = self.expect_sync(req, check).await?;
            if !resp.drift.iter().any(|t| t.contains(&word)) || !resp.repaired.is_empty() {
                return Err(format!("{check} ({word:?}): expected drift naming it, nothing repaired: {resp:?}"));
            }
        }
        self.pass("a privilege only the twin has is reported, not revoked");
        Ok(())
    }
}

/// Runs the multi-password checks of [`Rotator::set_password`] and
/// [`Rotator::retire_passwords`] against `rotator` (built for that strategy), with users
/// from `fixture`:
///
/// 1. `set_password` adds the new password: the old and the new one both log in;
/// 2. retiring keeps the current password and those also kept, and removes the others;
/// 3. a retirement whose password to keep does not log in is refused, and removes
///    nothing (consumers may still use an old password);
/// 4. then only the current one remains, and a repeat (a crash before the engine
///    recorded it) removes nothing;
/// 5. no password, in any text.
pub async fn run_multi_password_conformance(
    rotator: &dyn Rotator,
    fixture: &mut dyn ConformanceFixture,
) -> Result<ConformanceReport, String> {
    let mut run = Run::new(rotator);
    let result = run.multi_password(fixture).await;
    run.finish(result, "multi-password requests, responses and errors")
}

impl Run<'_> {
    async fn retire(&mut self, req: RetirePasswordsRequest) -> Result<RetirePasswordsResponse, RotatorError> {
        self.texts.push(format!("{req:?}"));
        let result = self.rotator.retire_passwords(req).await;
        self.texts.push(format!("{result:?}"));
        if let Err(e) = &result {
            self.texts.push(e.to_string());
        }
        result
    }

    async fn expect_retired(&mut self, req: RetirePasswordsRequest, want: usize, check: &str) -> Result<(), String> {
        match self.retire(req).await {
            Ok(resp) if resp.removed == want => Ok(()),
            Ok(resp) => Err(format!("{check}: expected {want} removed, got {}", resp.removed)),
            Err(e) => Err(format!("{check}: retire_passwords failed: {e}")),
        }
    }

    async fn multi_password(&mut self, fixture: &mut dyn ConformanceFixture) -> Result<(), String> {
        let admin = fixture.admin();
        if let Some(admin) = &admin {
            self.secrets.push(admin.password.clone());
        }
        let (user, p0) = self.user(fixture).await?;
        let retire = |keep: &SecretString, also_keep: &[&SecretString]| RetirePasswordsRequest {
            username: user.clone(),
            keep: keep.clone(),
            also_keep: also_keep.iter().map(|p| (*p).clone()).collect(),
            admin: admin.clone(),
        };

        // 1. added, not replaced
        let p1 = self.password();
        let req = SetPasswordRequest {
            username: user.clone(),
            pending: p1.clone(),
            current: p0.clone(),
            previous: vec![],
            admin: admin.clone(),
            pending_is_new: true,
        };
        match self.set(req).await {
            Ok(resp) if resp.outcome != SetPasswordOutcome::AlreadySet => {}
            other => return Err(format!("set_password (multi-password): expected a change, got {other:?}")),
        }
        self.expect_verify(&user, &p0, VerifyResponse::Accepted, "the old password, in its grace period").await?;
        self.expect_verify(&user, &p1, VerifyResponse::Accepted, "the new password").await?;
        self.pass("set_password adds the new password and the old one keeps working");

        // 3. refused without a working password to keep (before 2, while p0 still works)
        let stranger = self.password();
        if self.retire(retire(&stranger, &[])).await.is_ok() {
            return Err("retire_passwords with a password to keep that does not log in: expected an error".into());
        }
        self.expect_verify(&user, &p0, VerifyResponse::Accepted, "the old password after a refused retirement").await?;
        self.pass("nothing is retired unless the password to keep logs in");

        // 2. the other passwords it keeps stay
        let p2 = self.password();
        let req = SetPasswordRequest {
            username: user.clone(),
            pending: p2.clone(),
            current: p1.clone(),
            previous: vec![],
            admin: admin.clone(),
            pending_is_new: true,
        };
        if let Err(e) = self.set(req).await {
            return Err(format!("set_password of a third password: {e}"));
        }
        self.expect_retired(retire(&p1, &[&p2]), 1, "retiring all but two").await?;
        self.expect_verify(&user, &p0, VerifyResponse::Rejected, "the retired password").await?;
        self.expect_verify(&user, &p2, VerifyResponse::Accepted, "a password kept beside the current one").await?;
        self.pass("retire_passwords removes every password but those kept");

        // 4. then only the current one, once
        self.expect_retired(retire(&p1, &[]), 1, "retiring all but the current one").await?;
        self.expect_verify(&user, &p2, VerifyResponse::Rejected, "a password no longer kept").await?;
        self.expect_verify(&user, &p1, VerifyResponse::Accepted, "the kept password").await?;
        self.expect_retired(retire(&p1, &[]), 0, "retiring again").await?;
        self.pass("the current password is never retired, and a repeat removes nothing");
        Ok(())
    }
}
