//! Rotators: the parts of kv-rotator that talk to target systems.
//!
//! - [`Rotator`]: the trait every target implements — make the target accept a pending
//!   password ([`Rotator::set_password`]) and check a password ([`Rotator::verify`]);
//!   read-only checks for `kv-rotator check` ([`Rotator::check_setup`],
//!   [`Rotator::check_admin`]).
//!   Requests and responses are `#[non_exhaustive]` structs, built with `new(…)` and
//!   `with_…`, so fields can be added without breaking plugins (custom kinds). The
//!   enums they carry ([`VerifyResponse`], [`SetPasswordOutcome`], [`AdminCheck`],
//!   [`RotatorError`]) stay exhaustive on purpose: see [`VerifyResponse`].
//! - [`password`]: password policy and generation.
//! - built-in rotators, one module per target, each behind a feature flag:
//!   [`postgres`], [`mariadb`] (MariaDB servers; `kind = "mysql"` is refused), [`redis`] (ACL users), [`ldap`]
//!   (OpenLDAP, Password Modify) — single-user strategy — and [`htpasswd`] (bcrypt file,
//!   used by the demo).
//! - [`exec`]: out-of-process plugins, a user program per operation speaking JSON on
//!   stdin/stdout (docs/plugins.md).
//! - [`registry`]: the `kind = "…"` names, each a registration of a settings type that
//!   builds its rotator; built-in and custom kinds alike.
//! - [`common`]: the `strategy` key and other pieces the network rotators share.
//! - [`tls`]: the rustls client setup and certificate checks the network rotators share.
//! - [`scrub`]: removes a request's secrets from text (driver and server errors) before
//!   it leaves a rotator; its copies are zeroized.
//! - [`testkit`]: conformance checks every rotator must pass.
//!
//! Rotators know nothing of Key Vault or HTTP ingress: the engine hands them the
//! passwords it read, and keeps the protocol (journal, fencing, finish) to itself.

// A test-only feature never reaches a binary that ships (see `kv-rotator-leakscan`).
#[cfg(all(feature = "leak-ledger", not(debug_assertions)))]
compile_error!("the leak-ledger feature records every password to a file: test builds only");

use std::fmt;

use async_trait::async_trait;
use secrecy::SecretString;

pub mod common;
#[cfg(feature = "exec")]
pub mod exec;
#[cfg(feature = "htpasswd")]
pub mod htpasswd;
#[cfg(feature = "ldap")]
pub mod ldap;
#[cfg(feature = "mariadb")]
pub mod mariadb;
pub mod password;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
pub mod registry;
pub mod scrub;
pub mod testkit;
#[cfg(feature = "tls")]
pub mod tls;

pub use password::PasswordPolicy;

/// Result alias for rotator operations.
pub type RotatorResult<T> = Result<T, RotatorError>;

/// A rotator error. Messages are sanitized: they never contain a password.
///
/// Which variant matters to the engine's guarantees. [`RotatorError::Refused`] says
/// nothing changed: the next rotation journals a fresh password. A change that was made
/// but does not show yet — replication lag behind a balanced host, a pooler with its own
/// auth file — is `NotYetVisible`, never `Refused`: the engine then counts the target as
/// changed and keeps finishing with that pending password.
#[derive(Debug, thiserror::Error)]
pub enum RotatorError {
    /// The target could not be reached or answered with a temporary failure, and did
    /// not change; retry later.
    #[error("target unavailable: {0}")]
    Transient(String),
    /// The change was made (or may have been: a statement that timed out) but the new
    /// password does not log in yet — replication lag, a pooler's auth file. Retry later;
    /// the target may already use the pending password.
    #[error("changed, but not visible yet: {0}")]
    NotYetVisible(String),
    /// The target refused to take this password by its own rules (length, complexity,
    /// history…), and changed nothing. Another password may be accepted.
    #[error("the target refused the new password: {0}")]
    Refused(String),
    /// No retry will help without an operator (bad configuration, missing privilege,
    /// no known password accepted…).
    #[error("{0}")]
    Permanent(String),
}

impl RotatorError {
    /// Whether retrying later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, RotatorError::Transient(_) | RotatorError::NotYetVisible(_))
    }

    /// Whether the target may have changed although the call failed.
    pub fn may_have_changed(&self) -> bool {
        matches!(self, RotatorError::NotYetVisible(_))
    }
}

/// A login on the target: user name and password.
#[derive(Clone)]
#[non_exhaustive]
pub struct Credential {
    /// User (role, account) name on the target.
    pub username: String,
    /// Its password; never printed.
    pub password: SecretString,
}

impl Credential {
    /// The login of `username` with `password`.
    pub fn new(username: impl Into<String>, password: SecretString) -> Self {
        Self { username: username.into(), password }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential").field("username", &self.username).field("password", &"[REDACTED]").finish()
    }
}

/// Ask the target to accept `pending` as the password of `username`.
///
/// Idempotency contract: if `pending` already authenticates, succeed without changing
/// anything ([`SetPasswordOutcome::AlreadySet`]). Otherwise log in with `current`, then
/// each of `previous`, then `admin`, and change the password with the first that works.
/// If none works, return [`RotatorError::Permanent`] naming which logins were tried
/// (never their values).
///
/// With [`SetPasswordRequest::pending_is_new`], the "does `pending` already work" login
/// may be skipped: see there why that is safe.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SetPasswordRequest {
    /// The account whose password changes (the secret's `CredentialId` tag).
    pub username: String,
    /// The password to set.
    pub pending: SecretString,
    /// The password in the secret's latest version.
    pub current: SecretString,
    /// Older passwords worth trying, newest first.
    pub previous: Vec<SecretString>,
    /// The profile's admin login, when it has one.
    pub admin: Option<Credential>,
    /// `pending` was generated and journaled by this very attempt and no target has been
    /// asked to take it: it cannot authenticate yet, so a rotator may skip the "does
    /// `pending` already work" login (one refused login saved, and refused logins count
    /// toward lockouts). Only the engine sets it, and only on that path; a resumed journal
    /// record is never new. Even if it were wrongly set, nothing is lost: the change would
    /// be made again (or fail with `pending` still journaled).
    pub pending_is_new: bool,
}

/// How [`Rotator::set_password`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetPasswordOutcome {
    /// `pending` already authenticated; nothing changed.
    AlreadySet,
    /// Changed while logged in as the user with its current password.
    ChangedWithCurrent,
    /// Changed while logged in as the user with one of the previous passwords.
    ChangedWithPrevious,
    /// Changed while logged in with the admin credential.
    ChangedWithAdmin,
}

/// Response of [`Rotator::set_password`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SetPasswordResponse {
    /// What happened.
    pub outcome: SetPasswordOutcome,
    /// The rotator proved, within this call and after any change, that `pending` logs in
    /// exactly as [`Rotator::verify`] would check it (a fresh login, a working session).
    /// The engine then does not log in again in its `test` step. `false` when unsure.
    pub pending_verified: bool,
}

/// Check whether `password` logs in as `username` and has what consumers need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyRequest {
    /// The account.
    pub username: String,
    /// The password to try.
    pub password: SecretString,
}

/// Response of [`Rotator::verify`].
///
/// Not `#[non_exhaustive]`, and neither are [`SetPasswordOutcome`], [`AdminCheck`] and
/// [`RotatorError`]: a custom kind only builds these, which a new variant would not
/// break, while the engine matches them and must decide what each answer means. A
/// wildcard arm would let a new answer through unexamined (an unknown "verified" is a
/// failure, never a success), so adding a variant is meant to stop the engine's build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyResponse {
    /// The login works.
    Accepted,
    /// The target answered and refused this password (authentication failure).
    Rejected,
}

/// Multi-password strategy: once the grace period after a rotation has passed, leave the
/// account only the passwords Key Vault says are in use — `keep` (the latest version's)
/// and `also_keep` (an unfinished rotation's pending passwords) — removing every other
/// one it has: older versions', disabled versions', and any a journal alone held. `keep`
/// must log in first, or nothing is removed, and it must still log in after.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RetirePasswordsRequest {
    /// The account.
    pub username: String,
    /// The password consumers use now (the secret's latest version): never removed, and
    /// the login the rotator uses first.
    pub keep: SecretString,
    /// Other passwords that stay (an unfinished rotation's pending passwords).
    pub also_keep: Vec<SecretString>,
    /// The profile's admin login, when it has one.
    pub admin: Option<Credential>,
}

/// Response of [`Rotator::retire_passwords`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetirePasswordsResponse {
    /// How many passwords the account had beside those kept, and no longer has.
    pub removed: usize,
}

/// Alternating-users strategy: make `twin` (the second account of the pair) ready to
/// take over from `primary` (the account the secret's `CredentialId` names, whose grants
/// are the reference). Called before every rotation of the pair, through the admin login.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SyncTwinRequest {
    /// The reference account (the secret's `CredentialId`).
    pub primary: String,
    /// The other account of the pair.
    pub twin: String,
    /// The password to create `twin` with, if it does not exist (the rotation's pending
    /// password, already journaled). Empty when `twin` is the active account: then a
    /// missing twin is a permanent error, never created with a password no one has.
    pub password_if_created: SecretString,
    /// The profile's admin login (required by this strategy).
    pub admin: Credential,
    /// Whether `twin` may exist already: this secret used it, or an earlier attempt of
    /// this rotation may have created it. When false an existing account of that name is
    /// someone else's, and is refused untouched (never taken over).
    pub twin_known: bool,
}

/// Response of [`Rotator::sync_twin`]. Texts name grants and roles, never passwords.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncTwinResponse {
    /// `twin` did not exist and was created, with `primary`'s grants and memberships.
    pub created: bool,
    /// Differences from `primary` that were repaired on `twin`.
    pub repaired: Vec<String>,
    /// Differences that could not be repaired (reported to the operator).
    pub drift: Vec<String>,
}

impl SetPasswordRequest {
    /// Asks the target to make `pending` the password of `username`, whose password is
    /// `current` now; no previous passwords, no admin login, `pending` not new.
    pub fn new(username: impl Into<String>, pending: SecretString, current: SecretString) -> Self {
        Self { username: username.into(), pending, current, previous: Vec::new(), admin: None, pending_is_new: false }
    }

    /// With older passwords worth trying, newest first.
    pub fn with_previous(mut self, previous: Vec<SecretString>) -> Self {
        self.previous = previous;
        self
    }

    /// With the profile's admin login (or none).
    pub fn with_admin(mut self, admin: impl Into<Option<Credential>>) -> Self {
        self.admin = admin.into();
        self
    }

    /// Whether `pending` was generated by this very attempt; see
    /// [`SetPasswordRequest::pending_is_new`].
    pub fn with_pending_is_new(mut self, pending_is_new: bool) -> Self {
        self.pending_is_new = pending_is_new;
        self
    }
}

impl SetPasswordResponse {
    /// Ended with `outcome`; `pending` not verified (see [`Self::with_pending_verified`]).
    pub fn new(outcome: SetPasswordOutcome) -> Self {
        Self { outcome, pending_verified: false }
    }

    /// Whether the rotator proved that `pending` logs in; see
    /// [`SetPasswordResponse::pending_verified`].
    pub fn with_pending_verified(mut self, pending_verified: bool) -> Self {
        self.pending_verified = pending_verified;
        self
    }
}

impl VerifyRequest {
    /// Check whether `password` logs in as `username`.
    pub fn new(username: impl Into<String>, password: SecretString) -> Self {
        Self { username: username.into(), password }
    }
}

impl RetirePasswordsRequest {
    /// Leave `username` only `keep`; nothing else kept, no admin login.
    pub fn new(username: impl Into<String>, keep: SecretString) -> Self {
        Self { username: username.into(), keep, also_keep: Vec::new(), admin: None }
    }

    /// With other passwords that stay (an unfinished rotation's pending passwords).
    pub fn with_also_keep(mut self, also_keep: Vec<SecretString>) -> Self {
        self.also_keep = also_keep;
        self
    }

    /// With the profile's admin login (or none).
    pub fn with_admin(mut self, admin: impl Into<Option<Credential>>) -> Self {
        self.admin = admin.into();
        self
    }
}

impl RetirePasswordsResponse {
    /// `removed` passwords were removed.
    pub fn new(removed: usize) -> Self {
        Self { removed }
    }
}

impl SyncTwinRequest {
    /// Make `twin` ready to take over from `primary`, through `admin`. The twin is not
    /// known (an existing account of that name is refused) and a missing one is not
    /// created: see [`Self::with_password_if_created`] and [`Self::with_twin_known`].
    pub fn new(primary: impl Into<String>, twin: impl Into<String>, admin: Credential) -> Self {
        Self {
            primary: primary.into(),
            twin: twin.into(),
            password_if_created: SecretString::from(""),
            admin,
            twin_known: false,
        }
    }

    /// The password to create `twin` with if it does not exist; see
    /// [`SyncTwinRequest::password_if_created`].
    pub fn with_password_if_created(mut self, password: SecretString) -> Self {
        self.password_if_created = password;
        self
    }

    /// Whether `twin` may exist already; see [`SyncTwinRequest::twin_known`].
    pub fn with_twin_known(mut self, twin_known: bool) -> Self {
        self.twin_known = twin_known;
        self
    }
}

impl SyncTwinResponse {
    /// Nothing created, repaired or found different.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `twin` was created.
    pub fn with_created(mut self, created: bool) -> Self {
        self.created = created;
        self
    }

    /// Differences from `primary` that were repaired on `twin`.
    pub fn with_repaired(mut self, repaired: Vec<String>) -> Self {
        self.repaired = repaired;
        self
    }

    /// Differences that could not be repaired.
    pub fn with_drift(mut self, drift: Vec<String>) -> Self {
        self.drift = drift;
        self
    }
}

/// What [`Rotator::check_admin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCheck {
    /// The admin login works; the text says what was checked.
    Works(String),
    /// The target answered and refused this password.
    Refused,
    /// This kind cannot check an admin login without changing anything; the text says why.
    NotChecked(String),
}

/// A target system whose passwords kv-rotator rotates.
///
/// Implementations hold their connection settings (from a target profile) and must be
/// safe to share between concurrent rotations of different users. They must not log or
/// return passwords; tracing and metrics wrap them in the engine.
#[async_trait]
pub trait Rotator: Send + Sync + fmt::Debug {
    /// Short name of the target kind, e.g. `postgres`.
    fn kind(&self) -> &'static str;

    /// The password policy new passwords for this target must follow.
    fn password_policy(&self) -> &PasswordPolicy;

    /// Makes the target accept `pending`; see [`SetPasswordRequest`] for the contract.
    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse>;

    /// Logs in with the given password. An authentication failure is
    /// `Ok(VerifyResponse::Rejected)`; an unreachable target is `Err(Transient)`.
    ///
    /// Contract: a wrong password is `Rejected`. The engine checks it at every rotation
    /// with a random canary before it believes any "accepted" (a `pg_hba.conf` that
    /// trusts the worker, a proxy that answers for the target): a target that accepts
    /// the canary fails the rotation before anything is written.
    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse>;

    /// Read-only, for `kv-rotator check`: what this kind can check about its target
    /// before any login (a plugin describing itself, a file it must rewrite), said in a
    /// sentence; `None` when there is nothing of the kind. Changes nothing.
    async fn check_setup(&self) -> RotatorResult<Option<String>> {
        Ok(None)
    }

    /// Read-only, for `kv-rotator check`: whether `admin` logs in, as the profile's admin
    /// login would in `set_password`, without changing anything. A refused password is
    /// `Ok(AdminCheck::Refused)` (the check's canary relies on it); an unreachable target
    /// is an error, as for [`Rotator::verify`].
    async fn check_admin(&self, admin: &Credential) -> RotatorResult<AdminCheck> {
        let _ = admin;
        Ok(AdminCheck::NotChecked(format!("kind {:?} has no read-only admin login check", self.kind())))
    }

    /// Multi-password strategy only: removes old passwords; see [`RetirePasswordsRequest`].
    /// The configuration offers the strategy only for kinds that implement this.
    async fn retire_passwords(&self, req: RetirePasswordsRequest) -> RotatorResult<RetirePasswordsResponse> {
        let _ = req;
        Err(RotatorError::Permanent(format!("kind {:?} keeps one password per account", self.kind())))
    }

    /// Alternating-users strategy only: creates or repairs the pair's second account; see
    /// [`SyncTwinRequest`]. The configuration offers the strategy only for kinds that
    /// implement this.
    async fn sync_twin(&self, req: SyncTwinRequest) -> RotatorResult<SyncTwinResponse> {
        let _ = req;
        Err(RotatorError::Permanent(format!("kind {:?} has no alternating-users support", self.kind())))
    }
}
