//! One connection to the directory and what is done on it: connect (TCP, then TLS or
//! StartTLS) within the timeout, bind and prove the session with Who Am I?, change a
//! password with Password Modify; and how results and failures become [`RotatorError`]s
//! (the module docs' "Error mapping"). Every text from the server or a library is scrubbed
//! of the passwords before it is shown.

use std::sync::Arc;

use ldap3::exop::{PasswordModify, WhoAmI};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, StdStream};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpStream;

use super::LdapRotator;
use crate::common::{chain_text, find_cause};
use crate::scrub::Scrubber;
use crate::{RotatorError, RotatorResult, VerifyResponse};

/// An open connection; its driver task ends with it.
pub(super) struct Session {
    pub(super) ldap: Ldap,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// How a bind ended.
pub(super) enum Bound {
    /// Authenticated, the session ready for operations.
    Yes(Session),
    /// The server refused the credentials (`invalidCredentials`).
    Refused,
}

/// Why a Password Modify did not change the password, the login being the cause.
pub(super) enum CannotChange {
    /// Not this login's right (`insufficientAccessRights`, `unwillingToPerform`).
    NotAllowed(String),
    /// The server's password policy refused the new password (`constraintViolation`).
    Policy(String),
}

const INVALID_CREDENTIALS: u32 = 49;

impl LdapRotator {
    /// Connects (TCP, then TLS or StartTLS), within the timeout.
    async fn connect(&self, context: &str, scrub: &Scrubber) -> RotatorResult<Session> {
        let open = async {
            let socket = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| RotatorError::Transient(format!("{context}: {}", scrub.shown(e.to_string()))))?;
            let _ = socket.set_nodelay(true);
            let socket = socket
                .into_std()
                .map_err(|e| RotatorError::Transient(format!("{context}: {}", scrub.shown(e.to_string()))))?;
            let mut settings = LdapConnSettings::new().set_std_stream(StdStream::Tcp(socket));
            if let Some(config) = &self.tls {
                settings = settings.set_config(Arc::clone(config)).set_starttls(self.cfg.starttls);
            }
            let (conn, ldap) = LdapConnAsync::from_url_with_settings(settings, &self.conn_url)
                .await
                .map_err(|e| self.connect_error(&e, context, scrub))?;
            let driver = tokio::spawn(async move {
                let _ = conn.drive().await;
            });
            Ok(Session { ldap, driver })
        };
        tokio::time::timeout(self.timeout(), open)
            .await
            .map_err(|_| RotatorError::Transient(self.no_answer(context)))?
    }

    fn connect_error(&self, e: &LdapError, context: &str, scrub: &Scrubber) -> RotatorError {
        let text = scrub.shown(chain_text(e));
        let mode = self.cfg.tls.as_str();
        if let Some(tls) = find_cause::<rustls::Error>(e) {
            return if crate::tls::is_certificate_error(tls) {
                RotatorError::Permanent(format!(
                    "{context}: the server's certificate was refused under tls {mode:?}: {text}"
                ))
            } else {
                // The port answered, but not with TLS (a plain port, another service).
                RotatorError::Permanent(format!(
                    "{context}: no TLS handshake under tls {mode:?} ({text}); is this the server's {} port?",
                    if self.cfg.starttls { "StartTLS" } else { "LDAPS" }
                ))
            };
        }
        match e {
            LdapError::LdapResult { result } => RotatorError::Permanent(format!(
                "{context}: the server refused StartTLS ({}); kv-rotator never falls back to plain text",
                result_text(result, scrub)
            )),
            LdapError::DNSName { .. } | LdapError::UrlParsing { .. } | LdapError::UnknownScheme(_) => {
                RotatorError::Permanent(format!("{context}: {text}"))
            }
            // A connection closed during the handshake may be a restart, or a port that
            // does not speak TLS this way: retried, with the hint.
            _ if self.tls.is_some() => RotatorError::Transient(format!(
                "{context}: {text} (is this the server's {} port?)",
                if self.cfg.starttls { "StartTLS" } else { "LDAPS" }
            )),
            _ => RotatorError::Transient(format!("{context}: {text}")),
        }
    }

    /// Connects and binds as `dn`; `Bound::Refused` when the server refused the password.
    pub(super) async fn bind(
        &self,
        dn: &str,
        password: &SecretString,
        who: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<Bound> {
        // The last guard: an empty password is an unauthenticated bind, which succeeds.
        if password.expose_secret().is_empty() {
            return Err(RotatorError::Permanent(format!(
                "{who}: an empty password is never sent (it would be an \
                                                        unauthenticated bind, which succeeds)"
            )));
        }
        let context = format!("binding to {} as {who}", self.server());
        let mut session = self.connect(&context, scrub).await?;
        let result = session.ldap.with_timeout(self.timeout()).simple_bind(dn, password.expose_secret()).await;
        let result = result.map_err(|e| self.op_error(&e, &context, scrub))?;
        match result.rc {
            0 => {}
            INVALID_CREDENTIALS => return Ok(Bound::Refused),
            _ => return Err(self.result_error(&result, &context, scrub)),
        }
        // Proof the session is authenticated: Who Am I? names an identity.
        let context = format!("asking who the session is (Who Am I?) on {} as {who}", self.server());
        let answer = session.ldap.with_timeout(self.timeout()).extended(WhoAmI).await;
        let ldap3::result::ExopResult(exop, result) = answer.map_err(|e| self.op_error(&e, &context, scrub))?;
        match result.rc {
            0 if exop.val.as_deref().is_some_and(|id| !id.is_empty()) => Ok(Bound::Yes(session)),
            0 => Err(RotatorError::Permanent(format!(
                "{context}: the bind succeeded but the session is anonymous; the server does not check this password"
            ))),
            _ => Err(self.result_error(&result, &context, scrub)),
        }
    }

    /// Whether `password` binds as `dn` (a fresh connection).
    pub(super) async fn check(
        &self,
        dn: &str,
        password: &SecretString,
        who: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<VerifyResponse> {
        Ok(match self.bind(dn, password, who, scrub).await? {
            Bound::Yes(mut session) => {
                let _ = tokio::time::timeout(self.timeout(), session.ldap.unbind()).await;
                VerifyResponse::Accepted
            }
            Bound::Refused => VerifyResponse::Rejected,
        })
    }

    /// Password Modify of `user_dn` through `session`; `Ok(Err(why))` when the server
    /// answered that this login may not make it.
    pub(super) async fn change(
        &self,
        session: &mut Session,
        user_dn: &str,
        old: Option<&SecretString>,
        pending: &SecretString,
        context: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<Result<(), CannotChange>> {
        let exop = PasswordModify {
            user_id: Some(user_dn),
            old_pass: old.map(|p| p.expose_secret()),
            new_pass: Some(pending.expose_secret()),
        };
        let answer = session.ldap.with_timeout(self.timeout()).extended(exop).await;
        // Sent: an unanswered change may have been applied.
        let ldap3::result::ExopResult(_, result) = answer.map_err(|e| match self.op_error(&e, context, scrub) {
            RotatorError::Transient(m) => RotatorError::NotYetVisible(m),
            other => other,
        })?;
        let text = || result_text(&result, scrub);
        Ok(match result.rc {
            0 => Ok(()),
            50 | 53 => Err(CannotChange::NotAllowed(format!("{context}: {}", text()))),
            19 => Err(CannotChange::Policy(format!("{context}: {}", text()))),
            32 => {
                return Err(RotatorError::Permanent(format!("{context}: no such entry ({})", text())));
            }
            2 | 12 => {
                return Err(RotatorError::Permanent(format!(
                    "{context}: the server does not support the Password Modify extended operation (RFC 3062) ({}); \
                     Active Directory does not (see docs/deploy.md)",
                    text()
                )));
            }
            // Codes that say the change was not applied keep their class.
            10 | 13 | 8 | 34 => return Err(self.result_error(&result, context, scrub)),
            // Any other answer may come after the change was applied: a proxy (lloadd,
            // back-ldap, a chain overlay) that lost its upstream answers 52 or 80 for a
            // write the provider made. The engine keeps the pending password.
            _ => return Err(RotatorError::NotYetVisible(self.result_error(&result, context, scrub).to_string())),
        })
    }

    /// An operation that failed without a result (timeout, lost connection).
    fn op_error(&self, e: &LdapError, context: &str, scrub: &Scrubber) -> RotatorError {
        match e {
            LdapError::Timeout { .. } => RotatorError::Transient(self.no_answer(context)),
            LdapError::LdapResult { result } => self.result_error(result, context, scrub),
            _ => RotatorError::Transient(format!("{context}: {}", scrub.shown(chain_text(e)))),
        }
    }

    /// A result code that is not the operation's success, classified.
    fn result_error(&self, result: &LdapResult, context: &str, scrub: &Scrubber) -> RotatorError {
        let text = result_text(result, scrub);
        match result.rc {
            // busy, unavailable, timeLimitExceeded, adminLimitExceeded
            51 | 52 | 3 | 11 => RotatorError::Transient(format!("{context}: {text}")),
            10 => RotatorError::Permanent(format!(
                "{context}: referred elsewhere ({text}); a read-only replica refers changes to its provider: point \
                 url at the provider"
            )),
            13 | 8 => RotatorError::Permanent(format!("{context}: the server wants a stronger protection ({text})")),
            _ => RotatorError::Permanent(format!("{context}: {text}")),
        }
    }
}

/// An LDAP result as messages show it: its code, name and the server's text (scrubbed,
/// cut, escaped), never the referrals' or matched DN's raw text unescaped.
fn result_text(result: &LdapResult, scrub: &Scrubber) -> String {
    // ldap3's Display: `rc=19 (constraintViolation), dn: "…", text: "…"`; only the name.
    let full = result.to_string();
    let name = full.split_once(" (").and_then(|(_, rest)| rest.split_once(')')).map_or("unknown", |(name, _)| name);
    let mut text = format!("result {} {name}", result.rc);
    if !result.text.is_empty() {
        text.push_str(&format!(", {}", scrub.shown(result.text.clone())));
    }
    if !result.refs.is_empty() {
        text.push_str(&format!(", referrals {}", scrub.shown(result.refs.join(" "))));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_show_their_name_and_scrubbed_text() {
        let secret = SecretString::from("hunter2-secret".to_owned());
        let scrub = Scrubber::new([&secret]);
        let result = LdapResult {
            rc: 19,
            matched: String::new(),
            text: "Password fails quality: hunter2-secret\n".into(),
            refs: vec![],
            ctrls: vec![],
        };
        let text = result_text(&result, &scrub);
        assert_eq!(text, "result 19 constraintViolation, \"Password fails quality: [REDACTED]\\n\"");
    }
}
