//! Protocol 1 on the wire (docs/plugins.md): the operations ([`Op`]) and what a failed
//! run of each means for the engine, the request ([`Request`], [`Body`]) encoded in a
//! buffer zeroized on drop, and the reply ([`Reply`]) with what each operation's reply
//! must say ([`ReplyOf`]), and the password constraints a plugin may declare.

use secrecy::zeroize::Zeroizing;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::{
    Credential, PasswordPolicy, RetirePasswordsResponse, RotatorError, SetPasswordOutcome, SetPasswordResponse,
    VerifyResponse,
};

/// `value` as JSON in a buffer that is zeroized when dropped. Sized up front so no
/// reallocation leaves a copy of a password behind in freed memory.
pub(super) fn encode<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    let mut counter = CountingWriter(0);
    serde_json::to_writer(&mut counter, value)?;
    let mut buf = Zeroizing::new(Vec::with_capacity(counter.0 + 1));
    serde_json::to_writer(&mut *buf, value)?;
    buf.push(b'\n');
    Ok(buf)
}

struct CountingWriter(usize);

impl std::io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The operations of protocol 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Describe,
    Set,
    Verify,
    Retire,
}

impl Op {
    pub(super) fn name(self) -> &'static str {
        match self {
            Op::Describe => "describe",
            Op::Set => "set",
            Op::Verify => "verify",
            Op::Retire => "retire",
        }
    }

    /// A run without a usable reply. A `set` may have changed the password before it
    /// went wrong, so the engine must keep the pending password (`NotYetVisible`);
    /// elsewhere nothing changed and the error is the plugin's (`Permanent`), but for
    /// `describe` (`Transient`).
    pub(super) fn misbehaved(self, message: String) -> RotatorError {
        match self {
            Op::Set => RotatorError::NotYetVisible(message),
            // Nothing was asked of the target yet; a half-copied upgrade answers garbage
            // for a moment. A lasting fault is reported once the retries run out.
            Op::Describe => RotatorError::Transient(message),
            _ => RotatorError::Permanent(message),
        }
    }

    /// A run killed at its timeout: a `set` may have changed the password
    /// (`NotYetVisible`); elsewhere the target or the plugin's own network call was
    /// probably slow, and a later try can succeed (`Transient`).
    pub(super) fn timed_out(self, message: String) -> RotatorError {
        match self {
            Op::Set => RotatorError::NotYetVisible(message),
            _ => RotatorError::Transient(message),
        }
    }
}

#[derive(Serialize)]
pub(super) struct Request<'a> {
    pub(super) protocol: u32,
    pub(super) operation: &'static str,
    pub(super) strategy: &'static str,
    pub(super) deadline_unix_ms: u64,
    pub(super) timeout_ms: u64,
    pub(super) settings: &'a serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    pub(super) body: &'a Body<'a>,
}

#[derive(Serialize)]
pub(super) struct LoginJson<'a> {
    username: &'a str,
    password: &'a str,
}

impl<'a> LoginJson<'a> {
    pub(super) fn of(c: &'a Credential) -> Self {
        LoginJson { username: &c.username, password: c.password.expose_secret() }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum Body<'a> {
    Describe,
    Set {
        username: &'a str,
        pending: &'a str,
        current: &'a str,
        previous: Vec<&'a str>,
        admin: Option<LoginJson<'a>>,
        pending_is_new: bool,
    },
    Verify {
        username: &'a str,
        password: &'a str,
    },
    Retire {
        username: &'a str,
        keep: &'a str,
        also_keep: Vec<&'a str>,
        admin: Option<LoginJson<'a>>,
    },
}

/// Password constraints a plugin may declare in `describe`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Constraints {
    min_length: Option<usize>,
    max_length: Option<usize>,
    /// The only symbols the target accepts.
    symbols: Option<String>,
}

impl Constraints {
    pub(super) fn check(&self, policy: &PasswordPolicy) -> Result<(), String> {
        if let Some(min) = self.min_length.filter(|&m| policy.length < m) {
            return Err(format!("password.length = {} is below the plugin's min_length {min}", policy.length));
        }
        if let Some(max) = self.max_length.filter(|&m| policy.length > m) {
            return Err(format!("password.length = {} is above the plugin's max_length {max}", policy.length));
        }
        if let Some(allowed) = &self.symbols {
            let bad: String =
                policy.symbols.chars().filter(|c| !allowed.contains(*c) && !policy.exclude.contains(*c)).collect();
            if !bad.is_empty() {
                return Err(format!(
                    "password.symbols has {bad:?}, which the plugin does not accept (it does {allowed:?})"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Reply {
    pub(super) protocol: Option<u32>,
    pub(super) outcome: Option<String>,
    pub(super) error: Option<ReplyError>,
    /// `set`: which login made the change.
    pub(super) changed_with: Option<String>,
    // `set`'s `verified` is accepted (unknown fields are) but not read: the engine's own
    // `test` step checks a plugin's word.
    /// `retire`.
    pub(super) removed: Option<usize>,
    /// `describe`.
    pub(super) strategies: Option<Vec<String>>,
    pub(super) password: Option<Constraints>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ReplyError {
    pub(super) class: Option<String>,
    pub(super) message: Option<String>,
}

pub(super) trait ReplyOf: Sized {
    fn from_reply(reply: Reply) -> Result<Self, String>;
}

impl ReplyOf for Reply {
    fn from_reply(reply: Reply) -> Result<Self, String> {
        Ok(reply)
    }
}

impl ReplyOf for SetPasswordResponse {
    fn from_reply(reply: Reply) -> Result<Self, String> {
        let outcome = match (reply.outcome.as_deref(), reply.changed_with.as_deref()) {
            (Some("already-set"), _) => SetPasswordOutcome::AlreadySet,
            (Some("changed"), Some("current")) => SetPasswordOutcome::ChangedWithCurrent,
            (Some("changed"), Some("previous")) => SetPasswordOutcome::ChangedWithPrevious,
            (Some("changed"), Some("admin")) => SetPasswordOutcome::ChangedWithAdmin,
            (Some("changed"), other) => {
                return Err(format!("outcome \"changed\" needs changed_with current|previous|admin, got {other:?}"))
            }
            (other, _) => return Err(format!("set: unexpected outcome {other:?}")),
        };
        Ok(SetPasswordResponse { outcome, pending_verified: false })
    }
}

impl ReplyOf for VerifyResponse {
    fn from_reply(reply: Reply) -> Result<Self, String> {
        match reply.outcome.as_deref() {
            Some("accepted") => Ok(VerifyResponse::Accepted),
            Some("rejected") => Ok(VerifyResponse::Rejected),
            other => Err(format!("verify: unexpected outcome {other:?}")),
        }
    }
}

impl ReplyOf for RetirePasswordsResponse {
    fn from_reply(reply: Reply) -> Result<Self, String> {
        match (reply.outcome.as_deref(), reply.removed) {
            (Some("retired"), Some(removed)) => Ok(RetirePasswordsResponse { removed }),
            (other, removed) => {
                Err(format!("retire: expected outcome \"retired\" with removed, got {other:?}, {removed:?}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_one_json_line() {
        let settings = serde_json::Map::new();
        let body = Body::Verify { username: "app", password: "pw" };
        let req = Request {
            protocol: 1,
            operation: "verify",
            strategy: "single-user",
            deadline_unix_ms: 5,
            timeout_ms: 1000,
            settings: &settings,
            body: &body,
        };
        let bytes = encode(&req).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["operation"], "verify");
        assert_eq!(v["password"], "pw");
        assert_eq!(bytes.last(), Some(&b'\n'));
        let describe = Request { operation: "describe", body: &Body::Describe, ..req };
        let v: serde_json::Value = serde_json::from_slice(&encode(&describe).unwrap()).unwrap();
        assert!(v.get("username").is_none() && v["protocol"] == 1, "{v}");
    }
}
