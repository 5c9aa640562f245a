//! Microsoft Entra ID authentication: a bearer token from Event Grid's first-party
//! application, verified against the tenant's signing keys (JWKS), which are cached and
//! refreshed on an unknown `kid` at most once per interval; a verified token is
//! remembered by its digest until its `exp`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{config_error, AuthConfigError, AuthError};

/// Event Grid's first-party application id: `appid`/`azp` of the tokens it sends.
pub const EVENT_GRID_APP_ID: &str = "4962773b-9cdb-44cf-a8bf-237846a00ab7";
/// The app role Event Grid's service principal is given on the webhook's application.
pub const DEFAULT_ROLE: &str = "AzureEventGridSecureWebhookSubscriber";
/// Largest clock skew [`EntraIdConfig::clock_skew`] may be set to.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Longest `Authorization` header looked at; Entra tokens are a few KB.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Verified tokens remembered at most (Event Grid uses one per subscription at a time).
const MAX_VERIFIED_TOKENS: usize = 1024;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where the tenant's signing keys are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksLocation {
    /// An OpenID Connect discovery document whose `jwks_uri` names the key set.
    OpenIdConfiguration(url::Url),
    /// The key set itself.
    Jwks(url::Url),
}

/// What an [`EntraId`] authenticator accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraIdConfig {
    /// The tenant (directory) id; the accepted issuers are
    /// `https://sts.windows.net/{tenant}/` and `https://login.microsoftonline.com/{tenant}/v2.0`.
    pub tenant_id: String,
    /// Accepted `aud` values: the webhook application's id and/or App ID URI.
    pub audiences: Vec<String>,
    /// Accepted `appid` (v1 tokens) / `azp` (v2 tokens); default [`EVENT_GRID_APP_ID`].
    /// `None`: any application, the role alone decides (the admin API, whose callers are
    /// operators' tools and pipelines).
    pub app_id: Option<String>,
    /// A role `roles` must contain; default [`DEFAULT_ROLE`].
    pub role: String,
    /// Where the signing keys are.
    pub jwks: JwksLocation,
    /// Skew allowed on `exp`/`nbf`, at most [`MAX_CLOCK_SKEW`].
    pub clock_skew: Duration,
    /// Least time between two fetches of the key set, so unknown `kid`s cannot make
    /// the webhook hammer the identity provider.
    pub min_refresh_interval: Duration,
    /// Keys older than this are refetched before use (kept if the fetch fails).
    pub max_key_age: Duration,
    /// Timeout of one key-set fetch.
    pub fetch_timeout: Duration,
}

impl EntraIdConfig {
    /// Defaults for the public cloud: discovery at
    /// `https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration`.
    pub fn new(tenant_id: &str, audiences: Vec<String>) -> Result<Self, AuthConfigError> {
        let discovery = format!("https://login.microsoftonline.com/{tenant_id}/v2.0/.well-known/openid-configuration");
        let discovery = url::Url::parse(&discovery).map_err(|e| config_error("tenant_id", e.to_string()))?;
        Ok(Self {
            tenant_id: tenant_id.to_owned(),
            audiences,
            app_id: Some(EVENT_GRID_APP_ID.to_owned()),
            role: DEFAULT_ROLE.to_owned(),
            jwks: JwksLocation::OpenIdConfiguration(discovery),
            clock_skew: Duration::from_secs(60),
            min_refresh_interval: Duration::from_secs(30),
            max_key_age: Duration::from_secs(24 * 3600),
            fetch_timeout: Duration::from_secs(10),
        })
    }

    fn validate(&self) -> Result<(), AuthConfigError> {
        let tenant_ok = !self.tenant_id.is_empty()
            && self.tenant_id.len() <= 64
            && self.tenant_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !tenant_ok {
            return Err(config_error("tenant_id", format!("{:?} is not a tenant id or domain", self.tenant_id)));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|a| a.trim().is_empty()) {
            return Err(config_error("audience", "name the webhook application's id or App ID URI"));
        }
        if self.clock_skew > MAX_CLOCK_SKEW {
            return Err(config_error("clock_skew", format!("at most {} s", MAX_CLOCK_SKEW.as_secs())));
        }
        if self.role.trim().is_empty() {
            return Err(config_error("role", "is empty"));
        }
        let url = match &self.jwks {
            JwksLocation::OpenIdConfiguration(u) | JwksLocation::Jwks(u) => u,
        };
        if !is_https_or_loopback(url) {
            return Err(config_error("jwks", format!("{url} must be https (plain http only on loopback)")));
        }
        Ok(())
    }
}

/// Signing keys must come over https; plain http is allowed on loopback for tests.
fn is_https_or_loopback(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        },
        _ => false,
    }
}

/// Entra ID bearer-token authentication; see the [module docs](self).
pub struct EntraId {
    config: EntraIdConfig,
    validation: Validation,
    http: reqwest::Client,
    keys: RwLock<KeyCache>,
    refresh: tokio::sync::Mutex<RefreshState>,
    /// SHA-256 of tokens that passed every check → their (exp, nbf).
    verified: Mutex<HashMap<[u8; 32], Validity>>,
}

impl fmt::Debug for EntraId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraId").field("config", &self.config).finish_non_exhaustive()
    }
}

/// A verified token's `exp` and `nbf` (Unix seconds), and whose it is.
type Validity = (u64, Option<u64>, Caller);

/// Who a verified token names, for logs: object id and application, never the token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// `oid`: the user's or service principal's object id.
    pub oid: Option<String>,
    /// `appid` (v1) or `azp` (v2): the client application.
    pub app_id: Option<String>,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Claims come from a verified token, but are quoted all the same.
        let shown = |v: &Option<String>| match v {
            Some(v) => format!("{:?}", v.chars().take(64).collect::<String>()),
            None => "-".to_owned(),
        };
        write!(f, "entra oid={} appid={}", shown(&self.oid), shown(&self.app_id))
    }
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Arc<DecodingKey>>,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// The claims checked beyond what [`Validation`] covers.
#[derive(Debug, Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    oid: Option<String>,
}

impl EntraId {
    /// Checks `config`; keys are fetched on first use or by [`EntraId::refresh_keys`].
    pub fn new(config: EntraIdConfig) -> Result<Self, AuthConfigError> {
        config.validate()?;
        let tenant = &config.tenant_id;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.leeway = config.clock_skew.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_audience(&config.audiences);
        validation.set_issuer(&[
            format!("https://sts.windows.net/{tenant}/"),
            format!("https://login.microsoftonline.com/{tenant}/v2.0"),
        ]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // No redirects: the keys come from the configured URL (or the discovery document's
        // https jwks_uri) and nowhere a 3xx points to, which would also bypass the https check.
        let http = reqwest::Client::builder()
            .timeout(config.fetch_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| config_error("jwks", format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            config,
            validation,
            http,
            keys: RwLock::new(KeyCache::default()),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &EntraIdConfig {
        &self.config
    }

    /// Fetches the key set now (e.g. at startup), returning how many keys it holds.
    pub async fn refresh_keys(&self) -> Result<usize, AuthError> {
        let mut state = self.refresh.lock().await;
        state.last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(n) => {
                state.last_error = None;
                Ok(n)
            }
            Err(e) => {
                state.last_error = Some(e.clone());
                Err(AuthError::Unavailable(e))
            }
        }
    }

    /// Checks the request's bearer token; whose it is when it passes.
    pub async fn authenticate(&self, parts: &Parts) -> Result<Caller, AuthError> {
        let token = bearer_token(parts)?;
        // Event Grid reuses one token for many deliveries: a token that passed every
        // check is remembered (by digest) until its own exp, so the RSA verification
        // runs once per token, not once per delivery.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        let leeway = self.validation.leeway;
        if let Some((exp, nbf, caller)) = self.verified.lock().unwrap_or_else(|p| p.into_inner()).get(&digest) {
            if now <= exp.saturating_add(leeway) && nbf.is_none_or(|nbf| nbf <= now.saturating_add(leeway)) {
                return Ok(caller.clone());
            }
        }
        // Boxed: the verification (with its key fetch) is rare and its future large; every
        // delivery's future would otherwise carry its ~1.7 KB.
        let claims = Box::pin(self.verify(token)).await?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= MAX_VERIFIED_TOKENS {
            // Rare (a token lives about an hour): start over rather than track ages.
            verified.clear();
        }
        let caller = Caller { oid: claims.oid.clone(), app_id: claims.appid.clone().or(claims.azp.clone()) };
        verified.insert(digest, (claims.exp, claims.nbf, caller.clone()));
        Ok(caller)
    }

    /// Full verification: header, signing key, signature, standard and Entra claims.
    async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token header: {}", describe(e.kind()))))?;
        // Checked before any key lookup, so `alg: none` or HS* cannot even trigger a fetch.
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::Invalid(format!("token algorithm {:?} is not RS256", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| AuthError::Invalid("token has no kid".to_owned()))?;
        let key = self.key(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|e| AuthError::Invalid(describe(e.kind())))?;
        let claims = data.claims;
        if let Some(app_id) = &self.config.app_id {
            let apps: Vec<&String> = claims.appid.iter().chain(claims.azp.iter()).collect();
            if apps.is_empty() || apps.iter().any(|app| !app.eq_ignore_ascii_case(app_id)) {
                let whom = if app_id.eq_ignore_ascii_case(EVENT_GRID_APP_ID) {
                    "Event Grid"
                } else {
                    "the accepted application"
                };
                return Err(AuthError::Forbidden(format!("token is not issued to {whom} (appid/azp)")));
            }
        }
        if !claims.roles.iter().any(|r| r == &self.config.role) {
            return Err(AuthError::Forbidden(format!("token lacks the role {}", self.config.role)));
        }
        Ok(claims)
    }

    fn cached(&self, kid: &str) -> (Option<Arc<DecodingKey>>, bool) {
        let cache = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let fresh = cache.fetched_at.is_some_and(|t| t.elapsed() < self.config.max_key_age);
        (cache.keys.get(kid).cloned(), fresh)
    }

    /// The key for `kid`: from the cache, or after one rate-limited refetch.
    async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, AuthError> {
        if let (Some(key), true) = self.cached(kid) {
            return Ok(key);
        }
        let mut state = self.refresh.lock().await;
        // Another request may have refreshed while this one waited.
        let (cached, fresh) = self.cached(kid);
        if let (Some(key), true) = (&cached, fresh) {
            return Ok(key.clone());
        }
        let recently = state.last_attempt.is_some_and(|t| t.elapsed() < self.config.min_refresh_interval);
        if recently {
            return match (cached, &state.last_error) {
                (Some(key), _) => Ok(key),
                (None, Some(e)) => Err(AuthError::Unavailable(e.clone())),
                (None, None) => Err(AuthError::Invalid("token signed with an unknown key".to_owned())),
            };
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(_) => {
                state.last_error = None;
                self.cached(kid).0.ok_or_else(|| AuthError::Invalid("token signed with an unknown key".to_owned()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch the Entra ID signing keys");
                state.last_error = Some(e.clone());
                // A stale key is better than refusing Event Grid over a transient outage.
                cached.ok_or(AuthError::Unavailable(e))
            }
        }
    }

    /// Fetches the key set into the cache; the error names what failed, for logs.
    async fn fetch(&self) -> Result<usize, String> {
        let jwks_url = match &self.config.jwks {
            JwksLocation::Jwks(url) => url.clone(),
            JwksLocation::OpenIdConfiguration(url) => {
                let doc: Value = self.get_json(url).await?;
                let uri = doc.get("jwks_uri").and_then(Value::as_str).ok_or(format!("{url}: no jwks_uri"))?;
                let uri = url::Url::parse(uri).map_err(|e| format!("{url}: jwks_uri: {e}"))?;
                if !is_https_or_loopback(&uri) {
                    return Err(format!("{url}: jwks_uri {uri} is not https"));
                }
                uri
            }
        };
        let set: Value = self.get_json(&jwks_url).await?;
        let entries = set.get("keys").and_then(Value::as_array).ok_or(format!("{jwks_url}: no keys array"))?;
        let mut keys = HashMap::new();
        for entry in entries {
            // Keys of other types or malformed entries are skipped, not fatal.
            let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else { continue };
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            if let Ok(key) = DecodingKey::from_jwk(&jwk) {
                if matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::RSA(_)) {
                    keys.insert(kid, Arc::new(key));
                }
            }
        }
        if keys.is_empty() {
            return Err(format!("{jwks_url}: no usable RSA signing key"));
        }
        let n = keys.len();
        let mut cache = self.keys.write().unwrap_or_else(|p| p.into_inner());
        *cache = KeyCache { keys, fetched_at: Some(Instant::now()) };
        tracing::info!(keys = n, url = %jwks_url, "Entra ID signing keys fetched");
        Ok(n)
    }

    async fn get_json(&self, url: &url::Url) -> Result<Value, String> {
        let response = self.http.get(url.clone()).send().await.map_err(|e| format!("{url}: {e}"))?;
        if response.status().is_redirection() {
            return Err(format!("{url}: HTTP {}: redirects are not followed for signing keys", response.status()));
        }
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        response.json().await.map_err(|e| format!("{url}: {e}"))
    }
}

fn bearer_token(parts: &Parts) -> Result<&str, AuthError> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or(AuthError::Missing("no Authorization header"))?;
    if value.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Invalid("Authorization header too long".to_owned()));
    }
    let value = value.to_str().map_err(|_| AuthError::Invalid("Authorization header is not ASCII".to_owned()))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Invalid("not a Bearer token".to_owned()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Invalid("not a Bearer token".to_owned()));
    }
    Ok(token.trim())
}

/// A short reason for a token failure, never the token.
fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "token expired".to_owned(),
        K::ImmatureSignature => "token not yet valid (nbf)".to_owned(),
        K::InvalidAudience => "wrong audience".to_owned(),
        K::InvalidIssuer => "wrong issuer".to_owned(),
        K::InvalidSignature => "bad signature".to_owned(),
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => "algorithm not allowed".to_owned(),
        K::MissingRequiredClaim(claim) => format!("token lacks {claim}"),
        K::InvalidClaimFormat(claim) => format!("malformed claim {claim}"),
        _ => "malformed token".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::parts;

    #[test]
    fn entra_settings_are_checked() {
        let mut config = EntraIdConfig::new("contoso.onmicrosoft.com", vec!["api://kv-rotator".into()]).unwrap();
        assert!(EntraId::new(config.clone()).is_ok());
        config.clock_skew = Duration::from_secs(301);
        assert_eq!(EntraId::new(config.clone()).unwrap_err().setting, "clock_skew");
        config.clock_skew = Duration::from_secs(60);
        config.jwks = JwksLocation::Jwks(url::Url::parse("http://keys.example/jwks").unwrap());
        assert_eq!(EntraId::new(config.clone()).unwrap_err().setting, "jwks");
        config.jwks = JwksLocation::Jwks(url::Url::parse("http://127.0.0.1:9/jwks").unwrap());
        assert!(EntraId::new(config.clone()).is_ok());
        config.audiences.clear();
        assert_eq!(EntraId::new(config).unwrap_err().setting, "audience");
        assert!(EntraIdConfig::new("a/b", vec!["x".into()]).map(EntraId::new).is_ok_and(|r| r.is_err()));
    }

    #[test]
    fn bearer_scheme_is_required() {
        assert_eq!(bearer_token(&parts("/", &[("authorization", "Bearer abc")])), Ok("abc"));
        assert_eq!(bearer_token(&parts("/", &[("authorization", "bearer  abc ")])), Ok("abc"));
        assert!(matches!(bearer_token(&parts("/", &[("authorization", "Basic abc")])), Err(AuthError::Invalid(_))));
        assert!(matches!(bearer_token(&parts("/", &[])), Err(AuthError::Missing(_))));
    }
}
