//! What `kv-rotator rotate` presents to the admin API as `Authorization: Bearer`
//! ([`Bearer`]): the static token, or Entra ID tokens from `admin.auth.client_credential`,
//! renewed while a job runs — early enough for a long job, seldom enough that a credential
//! handing out short tokens does not run `az` at every poll ([`renewal_due`]).
//!
//! Which connection it may go out on is [`super::client`]'s business: only one the service
//! proved itself on.

use std::sync::Arc;

use anyhow::bail;
use azure_core::credentials::{AccessToken, TokenCredential};
use hyper::StatusCode;
use kv_rotator_config::CredentialConfig;
use secrecy::SecretString;
use time::OffsetDateTime;

/// An Entra ID token is renewed this long before it expires (a job may outlast it), or at
/// half its life when it is shorter-lived than twice this.
const TOKEN_RENEW_BEFORE: time::Duration = time::Duration::minutes(5);
/// A token is not renewed again within this long of the last one, unless it is about to
/// expire: a credential handing out short tokens must not run `az` at every poll.
const TOKEN_RENEW_AT_MOST_EVERY: time::Duration = time::Duration::minutes(1);
/// A token with less than this left is renewed whenever it was fetched.
const TOKEN_LEAST_LEFT: time::Duration = time::Duration::seconds(15);

/// What `rotate` presents to the service as `Authorization: Bearer`.
#[derive(Debug)]
pub(super) enum Bearer {
    /// `admin.auth.token`.
    Static(SecretString),
    /// Entra ID tokens for `scope` from `admin.auth.client_credential`, the last one kept
    /// until it is due for renewal ([`renewal_due`]; `az` and `azd` cache nothing for
    /// their caller).
    EntraId { credential: Arc<dyn TokenCredential>, scope: String, role: String, last: Option<Fetched> },
}

/// An Entra ID token and when it was fetched.
#[derive(Debug)]
pub(super) struct Fetched {
    token: AccessToken,
    at: OffsetDateTime,
}

/// Whether a token fetched `at` and expiring `expires` should be renewed `now`: within
/// [`TOKEN_RENEW_BEFORE`] of its expiry, or past half its life if it is short-lived — but
/// not within [`TOKEN_RENEW_AT_MOST_EVERY`] of its fetch unless less than
/// [`TOKEN_LEAST_LEFT`] is left.
fn renewal_due(at: OffsetDateTime, expires: OffsetDateTime, now: OffsetDateTime) -> bool {
    let left = expires - now;
    if left <= TOKEN_LEAST_LEFT {
        return true;
    }
    left <= TOKEN_RENEW_BEFORE.min((expires - at) / 2) && now - at >= TOKEN_RENEW_AT_MOST_EVERY
}

impl Bearer {
    /// The Entra ID bearer of `[admin.auth]`: the credential built (offline), no token yet.
    pub(super) fn entra_id(
        credential: Option<&CredentialConfig>,
        audience: &[String],
        role: &str,
    ) -> anyhow::Result<Self> {
        let Some(audience) = audience.first() else { bail!("admin.auth.audience is empty") };
        let default = CredentialConfig::DeveloperTools {};
        let credential =
            crate::credentials::credential_for("admin.auth.client_credential", credential.unwrap_or(&default))?;
        let scope = format!("{}/.default", audience.trim_end_matches('/'));
        Ok(Bearer::EntraId { credential, scope, role: role.to_owned(), last: None })
    }

    /// The token to send now: the static one, or an Entra ID token not yet due for
    /// renewal. `job`: the job being followed, if any (what an error says goes on).
    pub(super) async fn token(&mut self, job: Option<uuid::Uuid>) -> anyhow::Result<SecretString> {
        let (credential, scope, last) = match self {
            Bearer::Static(token) => return Ok(token.clone()),
            Bearer::EntraId { credential, scope, last, .. } => (credential, scope, last),
        };
        let now = OffsetDateTime::now_utc();
        if last.as_ref().is_none_or(|last| renewal_due(last.at, last.token.expires_on, now)) {
            let token = credential.get_token(&[scope.as_str()], None).await.map_err(|e| {
                let e = crate::logging::sanitized(&e.to_string(), 1000);
                let consequence = match job {
                    None => "Nothing was rotated".to_owned(),
                    Some(id) => format!(
                        "rotate stops following job {id}, which goes on in the service (GET /api/rotations/{id} \
                         or the service's log tell how it ends)"
                    ),
                };
                anyhow::anyhow!(
                    "admin.auth.client_credential: no Entra ID token for scope {scope}: {e}. {consequence} (unset, \
                     client_credential is kind = \"developer-tools\": your az login or azd auth login)"
                )
            })?;
            *last = Some(Fetched { token, at: now });
        }
        let token = last.as_ref().map(|last| last.token.token.secret()).unwrap_or_default();
        Ok(SecretString::from(token.to_owned()))
    }

    /// What an operator should do about a 401 or 403 (`status`) from the service.
    pub(super) fn hint(&self, status: StatusCode) -> String {
        match (self, status.as_u16()) {
            (Bearer::EntraId { role, .. }, 403) => format!(
                ": the identity of admin.auth.client_credential lacks the app role {role} (admin.auth.role); \
                 assign it to that user or application on the admin API's enterprise application"
            ),
            (Bearer::EntraId { scope, .. }, 401) => format!(
                ": the service did not accept the Entra ID token for {scope} (wrong tenant or audience, or \
                 expired); check admin.auth.tenant_id, admin.auth.audience and admin.auth.client_credential"
            ),
            (Bearer::Static(_), 401) => ": the service does not take this admin.auth.token".to_owned(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn a_token_is_renewed_before_it_expires_and_a_short_one_not_at_every_poll() {
        let at = datetime!(2026-01-01 12:00 UTC);
        let minutes = |m: i64| at + time::Duration::minutes(m);
        let seconds = |s: i64| at + time::Duration::seconds(s);
        // An hour-long token: kept until 5 minutes before its expiry.
        assert!(!renewal_due(at, minutes(60), minutes(54)));
        assert!(renewal_due(at, minutes(60), minutes(56)));
        // A 4-minute token: at half its life, not before.
        assert!(!renewal_due(at, minutes(4), seconds(110)));
        assert!(renewal_due(at, minutes(4), seconds(130)));
        // A 90-second token: at most once a minute, though it is past half its life.
        assert!(!renewal_due(at, seconds(90), seconds(50)));
        assert!(renewal_due(at, seconds(90), seconds(61)));
        // One about to expire, or expired: whenever it was fetched.
        assert!(renewal_due(at, seconds(20), seconds(10)));
        assert!(renewal_due(at, seconds(20), seconds(30)));
    }
}
