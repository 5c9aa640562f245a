//! Who may call the admin API (`[admin.auth]`), checked before a request's body is read.
//!
//! - [`AdminAuth::StaticToken`]: `Authorization: Bearer <token>`, the token read at startup
//!   from an environment variable or a file, at least
//!   [`MIN_ADMIN_TOKEN_LEN`](kv_rotator_config::MIN_ADMIN_TOKEN_LEN) characters; only its
//!   SHA-256 digest is kept, and digests are compared in constant time (which also hides
//!   the token's length).
//! - [`AdminAuth::EntraId`]: a Microsoft Entra ID bearer token, verified by the webhook
//!   crate's [`EntraId`] (JWKS fetch and cache, issuer, audience, `exp`/`nbf`), for any
//!   client application, carrying the configured app role.
//! - [`AdminAuth::None`]: every caller; the configuration allows it on loopback only.
//!
//! Failures are the webhook's [`AuthError`]s: 401 for a missing or bad credential, 403 for
//! a genuine token without the role, 503 when the signing keys cannot be fetched.
//!
//! The other way round, [`service_proof`]: with a static token, the service proves to a
//! client (`kv-rotator rotate`) that it knows the token before the client sends it — an
//! HMAC of the client's nonce keyed by the token's digest — so a program that took the
//! admin port first gets neither the token nor the chance to fake a job's answer.

use std::fmt;
use std::sync::Arc;

use anyhow::Context;
use axum::http::header;
use axum::http::request::Parts;
use kv_rotator_config::{AdminAuthConfig, MIN_ADMIN_TOKEN_LEN};
use kv_rotator_webhook::auth::Caller;
use kv_rotator_webhook::{AuthError, EntraId};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How admin API callers are authenticated. Cheap to clone.
#[derive(Clone)]
pub enum AdminAuth {
    /// Anyone who reaches the (loopback) listener.
    None,
    /// A static bearer token; only its digest is held.
    StaticToken([u8; 32]),
    /// Entra ID bearer tokens with an app role.
    EntraId(Arc<EntraId>),
}

impl fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mode())
    }
}

impl AdminAuth {
    /// From `[admin.auth]`: the token read from its source now (too short: an error naming
    /// the setting, never the value), or the Entra ID verifier built (its keys fetched in
    /// the background when `prefetch`).
    pub fn from_config(config: &AdminAuthConfig, prefetch: bool) -> anyhow::Result<Self> {
        Ok(match config {
            AdminAuthConfig::None {} => AdminAuth::None,
            AdminAuthConfig::StaticToken { token } => {
                let token = crate::service::read_secret("admin.auth.token", token)?;
                Self::static_token(&token)?
            }
            AdminAuthConfig::EntraId {
                tenant_id,
                audience,
                role,
                openid_configuration_url,
                jwks_url,
                clock_skew_secs,
            } => {
                let mut entra = crate::service::entra_config(
                    tenant_id,
                    audience,
                    openid_configuration_url,
                    jwks_url,
                    *clock_skew_secs,
                )
                .context("admin.auth")?;
                // Operators' tools and pipelines: any client application; the role decides.
                entra.app_id = None;
                entra.role = role.clone();
                let entra = Arc::new(EntraId::new(entra).context("admin.auth")?);
                if prefetch {
                    let prefetching = entra.clone();
                    tokio::spawn(async move {
                        if let Err(e) = prefetching.refresh_keys().await {
                            tracing::warn!(error = %e, "admin API: Entra ID signing keys not fetched yet; retried on the first call");
                        }
                    });
                }
                AdminAuth::EntraId(entra)
            }
        })
    }

    /// A static token, refused when shorter than the minimum or padded with whitespace.
    pub fn static_token(token: &SecretString) -> anyhow::Result<Self> {
        let token = token.expose_secret();
        if token.chars().count() < MIN_ADMIN_TOKEN_LEN {
            anyhow::bail!("admin.auth.token: shorter than {MIN_ADMIN_TOKEN_LEN} characters");
        }
        if token.trim() != token {
            anyhow::bail!("admin.auth.token: has leading or trailing whitespace");
        }
        Ok(AdminAuth::StaticToken(Sha256::digest(token.as_bytes()).into()))
    }

    /// `none`, `static-token` or `entra-id`.
    pub fn mode(&self) -> &'static str {
        match self {
            AdminAuth::None => "none",
            AdminAuth::StaticToken(_) => "static-token",
            AdminAuth::EntraId(_) => "entra-id",
        }
    }

    /// Checks a request's credential; who the caller is, for the log and the audit record.
    pub async fn check(&self, parts: &Parts) -> Result<String, AuthError> {
        match self {
            AdminAuth::None => Ok("anonymous (admin.auth mode none)".to_owned()),
            AdminAuth::StaticToken(digest) => {
                let value = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .ok_or(AuthError::Missing("no Authorization header"))?
                    .as_bytes();
                let token = match value.split_first_chunk::<7>() {
                    Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token.trim_ascii(),
                    _ => return Err(AuthError::Invalid("not a Bearer token".to_owned())),
                };
                matches_digest(digest, token)
            }
            AdminAuth::EntraId(entra) => entra.authenticate(parts).await.map(|caller: Caller| caller.to_string()),
        }
    }

    /// Checks a static token presented in a form (the status page's login), as [`Self::check`]
    /// checks a bearer token; in other modes there is no token to present.
    pub fn check_static_token(&self, token: &[u8]) -> Result<String, AuthError> {
        match self {
            AdminAuth::StaticToken(digest) => matches_digest(digest, token.trim_ascii()),
            _ => Err(AuthError::Invalid(format!("admin.auth mode {} takes no static token", self.mode()))),
        }
    }
}

/// What [`service_proof`] signs before the nonce: the purpose, so that the proof is good
/// for nothing else.
const PROOF_CONTEXT: &[u8] = b"kv-rotator admin API service proof v1\n";

/// The proof that whoever answers knows the static token whose SHA-256 is `digest`: an
/// HMAC-SHA256 of `nonce` (the client's, fresh), keyed by the digest.
pub fn service_proof(digest: &[u8; 32], nonce: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, digest);
    let mut context = aws_lc_rs::hmac::Context::with_key(&key);
    context.update(PROOF_CONTEXT);
    context.update(nonce);
    context.sign().as_ref().to_vec()
}

/// Whether `proof` is [`service_proof`] of `nonce` for `token`, compared in constant time.
pub fn proof_matches(token: &SecretString, nonce: &[u8], proof: &[u8]) -> bool {
    let digest: [u8; 32] = Sha256::digest(token.expose_secret().as_bytes()).into();
    bool::from(service_proof(&digest, nonce).as_slice().ct_eq(proof))
}

/// Whether `token`'s digest is `digest`, compared in constant time.
fn matches_digest(digest: &[u8; 32], token: &[u8]) -> Result<String, AuthError> {
    let presented: [u8; 32] = Sha256::digest(token).into();
    if bool::from(presented.ct_eq(digest)) {
        Ok("static-token".to_owned())
    } else {
        Err(AuthError::Invalid("the token does not match".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    fn parts(authorization: Option<&str>) -> Parts {
        let mut builder = Request::get("/api/secrets");
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_service_proof_holds_for_its_token_and_nonce_only() {
        let token = SecretString::from("0123456789abcdef0123456789abcdef".to_owned());
        let AdminAuth::StaticToken(digest) = AdminAuth::static_token(&token).unwrap() else { unreachable!() };
        let proof = service_proof(&digest, b"nonce-1");
        assert!(proof_matches(&token, b"nonce-1", &proof));
        assert!(!proof_matches(&token, b"nonce-2", &proof), "another nonce");
        let other = SecretString::from("0123456789abcdef0123456789abcdeF".to_owned());
        assert!(!proof_matches(&other, b"nonce-1", &proof), "another token");
        assert!(!proof_matches(&token, b"nonce-1", &proof[..31]), "a cut proof");
        assert_ne!(&proof[..], &digest[..], "the digest itself is never handed out");
    }

    #[tokio::test]
    async fn a_static_token_is_long_checked_in_constant_time_and_never_shown() {
        let token = "0123456789abcdef0123456789abcdef";
        let auth = AdminAuth::static_token(&SecretString::from(token.to_owned())).unwrap();
        assert_eq!(auth.check(&parts(Some(&format!("Bearer {token}")))).await.unwrap(), "static-token");
        assert_eq!(auth.check(&parts(Some(&format!("bearer  {token} ")))).await.unwrap(), "static-token");
        for wrong in [format!("Bearer {token}0"), format!("Basic {token}"), token.to_owned(), "Bearer".to_owned()] {
            let err = auth.check(&parts(Some(&wrong))).await.unwrap_err();
            assert_eq!(err.status(), 401, "{wrong}");
        }
        assert!(matches!(auth.check(&parts(None)).await, Err(AuthError::Missing(_))));
        assert!(!format!("{auth:?}").contains(token));
        let short = AdminAuth::static_token(&SecretString::from("x".repeat(31))).unwrap_err().to_string();
        assert!(short.contains("shorter than 32") && !short.contains("xxx"), "{short}");
        assert!(AdminAuth::static_token(&SecretString::from(format!(" {token}"))).is_err());
    }
}
