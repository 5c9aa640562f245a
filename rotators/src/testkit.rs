//! Conformance checks every rotator must pass (built-in ones and plugins alike).
//!
//! - [`ConformanceFixture`]: what a test provides: a way to create a user with a known
//!   password on a real target, and the target's admin login if it has one.
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
//!
//! Every response that says `pending_verified` is checked: `verify` must accept the
//! pending password right after it (the engine's `test` step trusts that claim).
//!
//! 8. No `Debug` or `Display` text of any request, response or error contains any
//!    password used.

use std::fmt;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::{
    Credential, Rotator, RotatorError, SetPasswordOutcome, SetPasswordRequest, SetPasswordResponse, VerifyRequest,
    VerifyResponse,
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
    let mut run = Run { rotator, secrets: Vec::new(), texts: Vec::new(), report: ConformanceReport::default() };
    let result = run.all(fixture).await;
    // The leak check runs even after a failure: a failure message is text too.
    let leak = run.leak_check(result.as_ref().err());
    result?;
    leak?;
    run.report.passed.push("no password in any Debug/Display text of requests, responses and errors".to_owned());
    Ok(run.report)
}

struct Run<'a> {
    rotator: &'a dyn Rotator,
    /// Every password used, to look for in `texts`.
    secrets: Vec<SecretString>,
    /// Every Debug/Display rendering seen.
    texts: Vec<String>,
    report: ConformanceReport,
}

impl Run<'_> {
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
