//! Who may call the admin API (`[admin.auth]`), checked before a request's body is read.
//!
//! - [`AdminAuth::StaticToken`]: `Authorization: Bearer <token>`, the token read at startup
//!   from an environment variable or a file, at least
//!   [`MIN_ADMIN_TOKEN_LEN`](kv_rotator_config::MIN_ADMIN_TOKEN_LEN) characters; only its
//!   SHA-256 digest is kept, and digests are compared in constant time (which also hides
//!   the token's length).
//! - [`AdminAuth::EntraId`]: a Microsoft Entra ID bearer token, verified by the webhook
//!   crate's [`EntraId`] (JWKS fetch and cache, issuer, audience, `exp`/`nbf`), for any
//!   client application, carrying the configured app role; with `proof_file`, a proof key
//!   written there at startup ([`write_proof_key`]).
//! - [`AdminAuth::None`]: every caller; the configuration allows it on loopback only.
//!
//! Failures are the webhook's [`AuthError`]s: 401 for a missing or bad credential, 403 for
//! a genuine token without the role, 503 when the signing keys cannot be fetched.
//!
//! The other way round, [`service_proof`]: the service proves to a client (`kv-rotator
//! rotate`) that it knows a shared secret before the client sends a credential — an HMAC
//! of the client's nonce keyed by the secret's digest — so a program that took the admin
//! port first gets neither the credential nor the chance to fake a job's answer. The
//! secret is the static token, or with Entra ID the proof key in `proof_file`, which only
//! the service's user (and root) can read: an Entra ID token is no secret the service
//! holds, and one sent to a squatter could be replayed to the real service until it expires.

use std::fmt;
use std::path::Path;
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
    EntraId {
        /// Checks the tokens.
        verifier: Arc<EntraId>,
        /// The digest of the proof key written to `proof_file`, if set: what the service
        /// proves it knows.
        proof_key: Option<[u8; 32]>,
    },
}

impl fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mode())
    }
}

impl AdminAuth {
    /// From `[admin.auth]`: the token read from its source now (too short: an error naming
    /// the setting, never the value), or the Entra ID verifier built (its keys fetched in
    /// the background when `prefetch`) and a fresh proof key written to `proof_file`.
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
                proof_file,
                client_credential: _,
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
                let proof_key = proof_file.as_deref().map(write_proof_key).transpose()?;
                AdminAuth::EntraId { verifier: entra, proof_key }
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
            AdminAuth::EntraId { .. } => "entra-id",
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
            AdminAuth::EntraId { verifier, .. } => {
                verifier.authenticate(parts).await.map(|caller: Caller| caller.to_string())
            }
        }
    }

    /// The digest of the secret [`service_proof`] is keyed by: the static token's, or the
    /// proof key's; `None` when the mode has neither.
    pub fn proof_digest(&self) -> Option<&[u8; 32]> {
        match self {
            AdminAuth::StaticToken(digest) | AdminAuth::EntraId { proof_key: Some(digest), .. } => Some(digest),
            _ => None,
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

/// The proof that whoever answers knows the secret (static token, or proof key) whose
/// SHA-256 is `digest`: an HMAC-SHA256 of `nonce` (the client's, fresh), keyed by the digest.
pub fn service_proof(digest: &[u8; 32], nonce: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, digest);
    let mut context = aws_lc_rs::hmac::Context::with_key(&key);
    context.update(PROOF_CONTEXT);
    context.update(nonce);
    context.sign().as_ref().to_vec()
}

/// Whether `proof` is [`service_proof`] of `nonce` for `secret` (the static token, or the
/// proof key as written), compared in constant time.
pub fn proof_matches(secret: &SecretString, nonce: &[u8], proof: &[u8]) -> bool {
    let digest: [u8; 32] = Sha256::digest(secret.expose_secret().as_bytes()).into();
    bool::from(service_proof(&digest, nonce).as_slice().ct_eq(proof))
}

/// Length of a proof key in hex digits (32 random bytes).
pub const PROOF_KEY_HEX: usize = 64;

/// Writes a fresh proof key (32 random bytes, hex, and a newline) to `path` — a file of
/// mode 0600 written beside it, then renamed over it, so that no reader ever sees a
/// partial key or a wider mode — and returns the key's digest. The directory must exist.
/// A fresh key each start: a file left by an earlier run proves nothing to a client.
pub fn write_proof_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    use secrecy::zeroize::Zeroizing;
    use std::io::Write;

    let shown = path.display();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "admin.auth.proof_file {shown}: the directory {} does not exist; create it, writable by the service's \
             user only (e.g. systemd RuntimeDirectory=kv-rotator gives /run/kv-rotator)",
            dir.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(dir).map(|meta| meta.mode()).unwrap_or(0);
        if mode & 0o022 != 0 {
            // Another user could plant a key there (`rotate` refuses one by its owner).
            tracing::warn!(proof_file = %shown, dir_mode = format!("{:o}", mode & 0o7777),
                "admin.auth.proof_file: its directory is writable by other users; on a shared host prefer one only \
                 the service's user can write (harmless in a container of one user)");
        }
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| anyhow::anyhow!("admin.auth.proof_file: no random bytes"))?;
    let key = Zeroizing::new(hex::encode(bytes.as_ref()));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".kv-rotator-proof-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    let mut file = builder
        .tempfile_in(dir)
        .with_context(|| format!("admin.auth.proof_file {shown}: cannot create a file in {}", dir.display()))?;
    file.write_all(key.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("admin.auth.proof_file {shown}: cannot write"))?;
    file.persist(path).map_err(|e| anyhow::anyhow!("admin.auth.proof_file {shown}: cannot replace it: {}", e.error))?;
    tracing::info!(proof_file = %shown, "admin API: wrote a fresh proof key for kv-rotator rotate");
    Ok(Sha256::digest(key.as_bytes()).into())
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

    #[test]
    #[cfg(unix)]
    fn a_proof_key_is_fresh_private_and_proves_what_the_file_says() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-proof");
        let first = write_proof_key(&path).unwrap();
        let key = SecretString::from(std::fs::read_to_string(&path).unwrap().trim_end().to_owned());
        assert_eq!(key.expose_secret().len(), PROOF_KEY_HEX);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(proof_matches(&key, b"nonce", &service_proof(&first, b"nonce")), "the file's key is the proven one");
        assert_ne!(write_proof_key(&path).unwrap(), first, "a fresh key each time");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["admin-proof"], "no temporary file left behind");
        let message = write_proof_key(&dir.path().join("absent").join("admin-proof")).unwrap_err().to_string();
        assert!(message.starts_with("admin.auth.proof_file ") && message.contains("does not exist"), "{message}");
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
