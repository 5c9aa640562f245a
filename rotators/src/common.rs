//! Pieces the network rotators share.
//!
//! - [`Strategy`]: the `strategy` key of a target profile (the configuration checks
//!   that the profile's kind offers it).
//! - [`positive_secs`]: `connect_timeout_secs` and the like must be at least 1.
//! - [`find_cause`]: the first error of a type in an error's chain, looking inside
//!   `io::Error`s too (how a rustls certificate error is found under a driver's error).
//! - [`chain_text`]: an error and its causes on one line, each said once.
//! - [`logins`], [`request_hashes`], [`pending_may_work`], [`changed_if_transient`],
//!   [`after_change`], [`already_set`] and [`no_login`]: the parts of the single-user
//!   `set_password` contract every network rotator follows the same way (which logins, in
//!   which order; when the pending password need not be tried first; what an unanswered
//!   change means; the last word, which also proves what the engine's `test` step would).
//! - [`check_twin_pair`]: what every `sync_twin` refuses before logging in.
//! - [`admin_logs_in`]: `check_admin` of a kind whose admin is an account like any other
//!   (a fresh login through `verify`).

use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::{
    AdminCheck, Credential, Rotator, RotatorError, RotatorResult, SetPasswordOutcome, SetPasswordRequest,
    SetPasswordResponse, SyncTwinRequest, VerifyRequest, VerifyResponse,
};

/// How a rotation keeps consumers working (`strategy = "…"` in a target profile; the
/// configuration checks that the profile's kind offers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Strategy {
    /// One account, its password changed in place.
    #[default]
    SingleUser,
    /// Two accounts: each rotation resets the idle one and makes it the active one.
    AlternatingUsers,
    /// One account holding the old and the new password together for a grace period,
    /// after which the old one is retired ([`crate::Rotator::retire_passwords`]).
    MultiPassword,
}

impl Strategy {
    /// Every strategy, in the order messages list them.
    pub const ALL: [Strategy; 3] = [Strategy::SingleUser, Strategy::AlternatingUsers, Strategy::MultiPassword];

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::SingleUser => "single-user",
            Strategy::AlternatingUsers => "alternating-users",
            Strategy::MultiPassword => "multi-password",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        Strategy::ALL.into_iter().find(|s| s.as_str() == value).ok_or_else(|| {
            let known: Vec<String> = Strategy::ALL.iter().map(|s| format!("{:?}", s.as_str())).collect();
            format!("unknown strategy {value:?}: expected one of {}", known.join(", "))
        })
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A number of seconds that must be at least 1 (a zero timeout would fail every call).
pub fn positive_secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let secs = u64::deserialize(d)?;
    if secs == 0 {
        return Err(serde::de::Error::custom("connect_timeout_secs must be at least 1"));
    }
    Ok(secs)
}

/// The first error of type `T` in `e`'s chain, looking inside `io::Error`s too (whose
/// `source` skips the error they wrap).
pub fn find_cause<'a, T: std::error::Error + 'static>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(wrapped) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            if let Some(found) = find_cause::<T>(wrapped) {
                return Some(found);
            }
        }
        next = e.source();
    }
    None
}

/// `e` and its causes, joined by `: `, leaving out a cause whose text the line already
/// holds (`io::Error` repeats the error it wraps). Not scrubbed: callers scrub.
pub fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    for cause in std::iter::successors(Some(e), |s| s.source()) {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// A login [`crate::Rotator::set_password`] may change the password with.
#[derive(Debug)]
pub struct Login<'r> {
    /// Who logs in.
    pub user: &'r str,
    /// With this password.
    pub password: &'r SecretString,
    /// How messages name it: `"app" with its current password`, `admin "root"`.
    pub who: String,
    /// What a change made through it reports.
    pub outcome: SetPasswordOutcome,
}

/// The logins of `req` in the contract's order — the user with its current password,
/// with each previous one, then the admin — leaving out empty passwords and repeats (the
/// pending password among them): the same password twice is one more refused login for
/// nothing. `user` names the user in messages; `quote` quotes the admin's name.
pub fn logins<'r>(req: &'r SetPasswordRequest, user: &str, quote: fn(&str) -> String) -> Vec<Login<'r>> {
    let mut all = vec![Login {
        user: &req.username,
        password: &req.current,
        who: format!("{user} with its current password"),
        outcome: SetPasswordOutcome::ChangedWithCurrent,
    }];
    all.extend(req.previous.iter().enumerate().map(|(i, password)| Login {
        user: &req.username,
        password,
        who: format!("{user} with previous password #{}", i + 1),
        outcome: SetPasswordOutcome::ChangedWithPrevious,
    }));
    all.extend(req.admin.iter().map(|admin| Login {
        user: &admin.username,
        password: &admin.password,
        who: format!("admin {}", quote(&admin.username)),
        outcome: SetPasswordOutcome::ChangedWithAdmin,
    }));
    let mut seen: Vec<(&str, &str)> = vec![(&req.username, req.pending.expose_secret())];
    all.retain(|login| {
        let key = (login.user, login.password.expose_secret());
        if key.1.is_empty() || seen.contains(&key) {
            return false;
        }
        seen.push(key);
        true
    });
    all
}

/// `hash` of every password of `req`, the pending one first: what a rotator sends or
/// reads back instead of the password, to scrub with the passwords.
pub fn request_hashes(
    req: &SetPasswordRequest,
    hash: fn(&SecretString) -> Zeroizing<String>,
) -> Vec<Zeroizing<String>> {
    [&req.pending, &req.current]
        .into_iter()
        .chain(&req.previous)
        .chain(req.admin.iter().map(|a| &a.password))
        .map(hash)
        .collect()
}

/// The checks every `sync_twin` makes before logging in: both names acceptable to the
/// target (`check_name`), two different accounts, neither the admin's. `what` names an
/// account in messages (`role`, `account`); `shown` quotes a name.
pub fn check_twin_pair(
    req: &SyncTwinRequest,
    what: &str,
    check_name: fn(&str) -> RotatorResult<()>,
    shown: fn(&str) -> String,
) -> RotatorResult<()> {
    check_name(&req.primary)?;
    check_name(&req.twin)?;
    let (primary, twin) = (shown(&req.primary), shown(&req.twin));
    if req.primary == req.twin {
        return Err(RotatorError::Permanent(format!("the twin of {what} {primary} is the {what} itself")));
    }
    if req.admin.username == req.primary || req.admin.username == req.twin {
        return Err(RotatorError::Permanent(format!(
            "the admin login {} is one of the pair {primary}/{twin}: the pair must be application {what}s",
            shown(&req.admin.username)
        )));
    }
    Ok(())
}

/// Whether `set_password` must first try whether `pending` already logs in (the
/// idempotency check). Not for a password this very attempt journaled
/// ([`SetPasswordRequest::pending_is_new`]): nobody can have set it, so that login could
/// only be refused.
pub fn pending_may_work(req: &SetPasswordRequest) -> bool {
    !req.pending_is_new
}

/// `pending` already logged in, within this call, on a fresh connection: nothing to
/// change, and the login is the proof the engine's `test` step would make.
pub fn already_set() -> SetPasswordResponse {
    SetPasswordResponse { outcome: SetPasswordOutcome::AlreadySet, pending_verified: true }
}

/// A transient failure once a change was sent (a timeout, a lost connection) leaves it
/// unknown whether it was applied: the target may have the pending password.
pub fn changed_if_transient(e: RotatorError) -> RotatorError {
    match e {
        RotatorError::Transient(message) => RotatorError::NotYetVisible(message),
        other => other,
    }
}

/// The end of a change: a fresh login with the pending password (`check`) decides.
/// Whatever keeps it from answering, the change was made, so any error — transient or
/// not (a certificate refused on the new connection, a session the server restricts
/// after an admin reset) — is [`RotatorError::NotYetVisible`], and so is a refusal
/// (replication lag, a pooler's own auth file), with `not_yet` as its message: the engine
/// retries and never replaces the pending password. An accepted login is the same proof
/// as `verify`, so the response says `pending_verified` and the engine's `test` step
/// does not log in again.
pub fn after_change(
    check: RotatorResult<VerifyResponse>,
    outcome: SetPasswordOutcome,
    not_yet: impl FnOnce() -> String,
) -> RotatorResult<SetPasswordResponse> {
    let changed = |e: RotatorError| match e {
        RotatorError::NotYetVisible(m) => RotatorError::NotYetVisible(m),
        other => RotatorError::NotYetVisible(format!("changed, then the new password could not be checked: {other}")),
    };
    match check.map_err(changed)? {
        VerifyResponse::Accepted => Ok(SetPasswordResponse { outcome, pending_verified: true }),
        VerifyResponse::Rejected => Err(RotatorError::NotYetVisible(not_yet())),
    }
}

/// No login could change the password of `what` on `server`: a permanent error naming
/// the logins refused and why the others could not (never a password).
pub fn no_login(what: &str, server: &str, refused: &[String], cannot: Vec<String>, has_admin: bool) -> RotatorError {
    let mut why = Vec::new();
    if !refused.is_empty() {
        why.push(format!("refused: {}", refused.join(", ")));
    }
    why.extend(cannot);
    if !has_admin {
        why.push("no admin credential configured".to_owned());
    }
    RotatorError::Permanent(format!(
        "no known login could change the password of {what} on {server}: {}",
        why.join("; ")
    ))
}

/// [`Rotator::check_admin`] for kinds whose admin logs in as an account like any other:
/// `verify`'s fresh login (and session check) with the admin's name and password.
pub async fn admin_logs_in(rotator: &dyn Rotator, admin: &Credential) -> RotatorResult<AdminCheck> {
    let req = VerifyRequest { username: admin.username.clone(), password: admin.password.clone() };
    Ok(match rotator.verify(req).await? {
        VerifyResponse::Accepted => AdminCheck::Works(format!("the admin {:?} logs in", admin.username)),
        VerifyResponse::Rejected => AdminCheck::Refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_error_checking_a_change_that_was_made_keeps_the_pending_password() {
        let outcome = SetPasswordOutcome::ChangedWithAdmin;
        for error in [
            RotatorError::Transient("connection reset".into()),
            RotatorError::Permanent("certificate refused".into()),
            RotatorError::Refused("policy".into()),
        ] {
            let e = after_change(Err(error), outcome, || "lag".into()).unwrap_err();
            assert!(matches!(e, RotatorError::NotYetVisible(_)), "{e:?}");
        }
        let e = after_change(Ok(VerifyResponse::Rejected), outcome, || "lag".into()).unwrap_err();
        assert!(matches!(e, RotatorError::NotYetVisible(ref m) if m == "lag"), "{e:?}");
        assert!(after_change(Ok(VerifyResponse::Accepted), outcome, || "lag".into()).unwrap().pending_verified);
    }

    #[test]
    fn strategies_parse_by_their_configuration_names() {
        for strategy in Strategy::ALL {
            assert_eq!(strategy.as_str().parse::<Strategy>(), Ok(strategy));
        }
        assert_eq!(Strategy::default(), Strategy::SingleUser);
        let e = "single_user".parse::<Strategy>().unwrap_err();
        assert!(e.contains("unknown strategy \"single_user\"") && e.contains("\"multi-password\""), "{e}");
    }

    #[test]
    fn logins_come_in_order_without_repeats() {
        let secret = |s: &str| SecretString::from(s.to_owned());
        let req = SetPasswordRequest {
            username: "app".into(),
            pending: secret("p"),
            current: secret("c"),
            previous: vec![secret("p"), secret(""), secret("o"), secret("c")],
            admin: Some(crate::Credential { username: "root".into(), password: secret("c") }),
            pending_is_new: false,
        };
        let who: Vec<String> = logins(&req, "\"app\"", |n| format!("<{n}>")).into_iter().map(|l| l.who).collect();
        assert_eq!(who, ["\"app\" with its current password", "\"app\" with previous password #3", "admin <root>"]);
        let e = no_login("role x", "db:5432", &["a".into()], vec!["b cannot".into()], false).to_string();
        assert_eq!(e, "no known login could change the password of role x on db:5432: refused: a; b cannot; no admin credential configured");
        assert!(pending_may_work(&req));
        assert!(!pending_may_work(&SetPasswordRequest { pending_is_new: true, ..req.clone() }));
        let out = after_change(Ok(VerifyResponse::Accepted), SetPasswordOutcome::ChangedWithAdmin, String::new);
        assert!(matches!(
            out,
            Ok(SetPasswordResponse { outcome: SetPasswordOutcome::ChangedWithAdmin, pending_verified: true })
        ));
        let out = after_change(Ok(VerifyResponse::Rejected), SetPasswordOutcome::ChangedWithAdmin, || "lag".into());
        assert!(matches!(out, Err(RotatorError::NotYetVisible(m)) if m == "lag"));
        let out =
            after_change(Err(RotatorError::Transient("t".into())), SetPasswordOutcome::ChangedWithAdmin, String::new);
        assert!(matches!(out, Err(RotatorError::NotYetVisible(_))));
    }

    #[test]
    fn causes_are_found_inside_io_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner;
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other(Inner));
        assert!(find_cause::<Inner>(&e).is_some());
        assert!(find_cause::<std::fmt::Error>(&e).is_none());
        assert_eq!(chain_text(&e), "outer: inner");
    }
}
