//! Authentication of Event Grid deliveries, checked before the body is read.
//!
//! - [`Authenticator`]: the mode a [`WebhookState`](crate::WebhookState) uses —
//!   [`SharedKey`], [`EntraId`], or none (tests, `dev`, or behind an authenticating
//!   ingress).
//! - [`shared_key`]: [`SharedKey`], a key in a query parameter or a header (Event Grid
//!   delivery properties can set either), compared in constant time against up to two
//!   accepted keys so the key itself can be rotated without a lost delivery.
//! - [`entra`]: [`EntraId`], a Microsoft Entra ID bearer token, which Event Grid sends when
//!   the subscription has "Use Microsoft Entra authentication" on. RS256 only, verified
//!   against the tenant's JWKS ([`JwksLocation`]), cached and refreshed on an unknown
//!   `kid` at most once per [`EntraIdConfig::min_refresh_interval`], following no
//!   redirect; `iss` (v1 and v2
//!   issuers), `aud`, `exp`/`nbf` with bounded skew, `appid`/`azp` (Event Grid's
//!   first-party application) and `roles`. A token that passed is remembered by its
//!   digest until its `exp`, so the signature is verified once per token.
//! - [`AuthError`]: 401 for a missing or invalid credential, 403 for a valid token of
//!   the wrong application or without the role, 503 when the JWKS cannot be fetched —
//!   a transient condition must never get a status Event Grid does not retry.
//!
//! Keys never appear in logs or errors; [`SharedKey`] keeps only their SHA-256 digests.
//! Every public name is re-exported here (`auth::SharedKey`, `auth::DEFAULT_ROLE`, ...).

use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::StatusCode;

pub mod entra;
pub mod shared_key;

pub use entra::{Caller, EntraId, EntraIdConfig, JwksLocation, DEFAULT_ROLE, EVENT_GRID_APP_ID, MAX_CLOCK_SKEW};
pub use shared_key::{SharedKey, DEFAULT_KEY_HEADER, DEFAULT_KEY_QUERY_PARAMETER, MIN_KEY_LEN};

/// Why a request is not authenticated, and which status says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential at all: 401.
    #[error("missing credential: {0}")]
    Missing(&'static str),
    /// A credential that does not verify (bad key, bad signature, expired, wrong
    /// issuer or audience, unknown signing key): 401. Permanent.
    #[error("invalid credential: {0}")]
    Invalid(String),
    /// A genuine token for someone else (wrong application, missing role): 403.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The signing keys cannot be fetched now: 503, Event Grid retries.
    #[error("cannot verify tokens now: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The HTTP status for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing(_) | Self::Invalid(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether retrying the same request later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A setting that cannot work, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct AuthConfigError {
    /// Which setting.
    pub setting: &'static str,
    /// Why.
    pub reason: String,
}

fn config_error(setting: &'static str, reason: impl Into<String>) -> AuthConfigError {
    AuthConfigError { setting, reason: reason.into() }
}

/// How deliveries are authenticated.
#[derive(Debug, Clone, Default)]
pub enum Authenticator {
    /// Every request is accepted. Only for tests, `dev`, or behind an ingress that
    /// authenticates Event Grid.
    #[default]
    None,
    /// A shared key in a query parameter or header.
    SharedKey(Arc<SharedKey>),
    /// A Microsoft Entra ID bearer token.
    EntraId(Arc<EntraId>),
}

impl Authenticator {
    /// Checks one request's credential (headers and URI only; the body is not read).
    pub async fn check(&self, parts: &Parts) -> Result<(), AuthError> {
        match self {
            Self::None => Ok(()),
            Self::SharedKey(key) => key.check(parts),
            Self::EntraId(entra) => entra.authenticate(parts).await.map(|_| ()),
        }
    }

    /// A short name for logs: `none`, `shared-key`, `entra-id`.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::SharedKey(_) => "shared-key",
            Self::EntraId(_) => "entra-id",
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    /// The head of a POST to `uri` with `headers`.
    pub(super) fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::post(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }
}
