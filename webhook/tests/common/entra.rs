//! A local stand-in for Microsoft Entra ID: RSA keys generated per test run
//! (aws-lc-rs), tokens signed with them, and an OpenID discovery document plus JWKS
//! served on 127.0.0.1:0.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kv_rotator_webhook::auth::{DEFAULT_ROLE, EVENT_GRID_APP_ID};
use kv_rotator_webhook::{Authenticator, EntraId, EntraIdConfig, JwksLocation};
use serde_json::{json, Value};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const APP_ID: &str = "0b0c2e44-6a3e-4c0e-9f0e-6f4c5a0d7a11";
pub const APP_ID_URI: &str = "api://kv-rotator-webhook";

/// An RSA signing key and its `kid`.
pub struct Signer {
    pub kid: String,
    key: KeyPair,
}

impl Signer {
    pub fn generate(kid: &str) -> Self {
        Self { kid: kid.to_owned(), key: KeyPair::generate(KeySize::Rsa2048).unwrap() }
    }

    /// The public key as a JWK, as Entra publishes it.
    pub fn jwk(&self) -> Value {
        let public = self.key.public_key();
        json!({
            "kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.kid,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        })
    }

    /// The DER of the public key, for key-confusion attacks (HS256 with it as secret).
    pub fn public_der(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// `header.claims.signature` with RS256, whatever `header` says.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let message = format!("{}.{}", b64(header), b64(claims));
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message.as_bytes(), &mut signature).unwrap();
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// A well-formed RS256 token with this key's `kid`.
    pub fn token(&self, claims: &Value) -> String {
        self.sign(&json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}), claims)
    }
}

pub fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// An HS256 token keyed with `secret`.
pub fn hs256(kid: &str, claims: &Value, secret: &[u8]) -> String {
    let message = format!("{}.{}", b64(&json!({"alg": "HS256", "typ": "JWT", "kid": kid})), b64(claims));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// An unsigned `alg: none` token.
pub fn alg_none(kid: &str, claims: &Value) -> String {
    format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})), b64(claims))
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The claims of a v1 token Event Grid would send.
pub fn v1_claims() -> Value {
    let now = now();
    json!({
        "aud": APP_ID_URI, "iss": format!("https://sts.windows.net/{TENANT}/"),
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
        "appid": EVENT_GRID_APP_ID, "appidacr": "2", "idp": format!("https://sts.windows.net/{TENANT}/"),
        "oid": "00000000-0000-0000-0000-0000000000aa", "roles": [DEFAULT_ROLE],
        "sub": "00000000-0000-0000-0000-0000000000aa", "tid": TENANT, "ver": "1.0"
    })
}

/// The claims of a v2 token: `azp` instead of `appid`, the v2 issuer, the app id as audience.
pub fn v2_claims() -> Value {
    let now = now();
    json!({
        "aud": APP_ID, "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
        "azp": EVENT_GRID_APP_ID, "azpacr": "2", "roles": [DEFAULT_ROLE, "Other"],
        "sub": "00000000-0000-0000-0000-0000000000aa", "tid": TENANT, "ver": "2.0"
    })
}

/// The discovery document and key set on loopback.
#[derive(Clone)]
pub struct IdentityProvider {
    pub base: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl IdentityProvider {
    pub async fn start(keys: Vec<Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let idp = Self { base, keys: Arc::new(Mutex::new(keys)), fetches: Arc::default(), down: Arc::default() };
        let app = Router::new()
            .route(&format!("/{TENANT}/v2.0/.well-known/openid-configuration"), get(discovery))
            .route("/keys", get(jwks))
            .with_state(idp.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        idp
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/{TENANT}/v2.0/.well-known/openid-configuration", self.base)
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    /// Key-set fetches served so far.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Answer 500 to everything from now on (or again serve).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The webhook's configuration against this provider.
    pub fn config(&self) -> EntraIdConfig {
        let mut config = EntraIdConfig::new(TENANT, vec![APP_ID.to_owned(), APP_ID_URI.to_owned()]).unwrap();
        config.jwks = JwksLocation::OpenIdConfiguration(self.discovery_url().parse().unwrap());
        config.fetch_timeout = Duration::from_secs(5);
        config
    }

    pub fn authenticator(&self) -> Authenticator {
        Authenticator::EntraId(Arc::new(EntraId::new(self.config()).unwrap()))
    }
}

async fn discovery(State(idp): State<IdentityProvider>) -> Response {
    if idp.down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    Json(json!({
        "issuer": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
        "jwks_uri": format!("{}/keys", idp.base),
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
    .into_response()
}

async fn jwks(State(idp): State<IdentityProvider>) -> Response {
    if idp.down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    let keys = idp.keys.lock().unwrap().clone();
    Json(json!({ "keys": keys })).into_response()
}
