//! Authentication end to end through the router: Entra ID tokens against a local
//! identity provider (discovery, JWKS, key rotation, rate-limited refresh, outage),
//! and shared keys. The negative cases (forged, expired, wrong claims) are in the
//! hostile-input catalogue (`hostile.rs`).

mod common;

use std::sync::Arc;

use axum::http::{header, StatusCode};
use common::entra::*;
use common::*;
use kv_rotator_webhook::{Authenticator, EntraId, JwksLocation, SharedKey};
use secrecy::SecretString;
use serde_json::json;

#[tokio::test]
async fn v1_and_v2_tokens_authenticate_handshake_and_notifications() {
    let signer = Signer::generate("key-1");
    let idp = IdentityProvider::start(vec![signer.jwk()]).await;
    let auth = idp.authenticator();
    for claims in [v1_claims(), v2_claims()] {
        let token = signer.token(&claims);
        let (state, mut rx) = new_state(4);
        let state = state.with_auth(auth.clone());
        // Event Grid sends the token on the validation handshake too.
        let request = event_grid_post("/api/eventgrid", "SubscriptionValidation", fixture(VALIDATION_EVENT));
        let reply = send(state.clone(), with_bearer(request, &token)).await;
        assert_eq!(reply.status, StatusCode::OK, "{claims}: {}", reply.text);
        assert_eq!(reply.json, fixture_json(VALIDATION_RESPONSE));

        let reply = send(state, with_bearer(notification(&keyvault_batch(NEAR_EXPIRY)), &token)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(drain(&mut rx), vec![expected_request(NEAR_EXPIRY)]);
    }
    assert_eq!(idp.fetches(), 1, "the key set is cached");
}

#[tokio::test]
async fn direct_jwks_url_works_without_discovery() {
    let signer = Signer::generate("key-direct");
    let idp = IdentityProvider::start(vec![signer.jwk()]).await;
    let mut config = idp.config();
    config.jwks = JwksLocation::Jwks(format!("{}/keys", idp.base).parse().unwrap());
    let auth = Authenticator::EntraId(Arc::new(EntraId::new(config).unwrap()));
    let (state, mut rx) = new_state(4);
    let request = with_bearer(notification(&keyvault_batch(EXPIRED)), &signer.token(&v1_claims()));
    let reply = send(state.with_auth(auth), request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(drain(&mut rx).len(), 1);
}

#[tokio::test]
async fn missing_token_is_401_with_a_bearer_challenge() {
    let idp = IdentityProvider::start(vec![Signer::generate("k").jwk()]).await;
    let (state, mut rx) = new_state(4);
    let reply = send(state.with_auth(idp.authenticator()), notification(&keyvault_batch(NEAR_EXPIRY))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer");
    assert!(drain(&mut rx).is_empty());
    assert_eq!(idp.fetches(), 0, "no key fetch for a request without a token");
}

#[tokio::test]
async fn signing_key_rotation_is_picked_up_on_an_unknown_kid() {
    let old = Signer::generate("old");
    let new = Signer::generate("new");
    let idp = IdentityProvider::start(vec![old.jwk()]).await;
    let mut config = idp.config();
    config.min_refresh_interval = std::time::Duration::ZERO;
    let (state, mut rx) = new_state(8);
    let state = state.with_auth(Authenticator::EntraId(Arc::new(EntraId::new(config).unwrap())));
    let reply = send(state.clone(), with_bearer(notification(&distinct(1)), &old.token(&v1_claims()))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(idp.fetches(), 1);

    // Entra rolls its keys: the next token names a kid the cache has not seen.
    idp.set_keys(vec![old.jwk(), new.jwk()]);
    let reply = send(state.clone(), with_bearer(notification(&distinct(2)), &new.token(&v2_claims()))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(idp.fetches(), 2, "one refetch for the new kid");
    let reply = send(state, with_bearer(notification(&distinct(3)), &old.token(&v1_claims()))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(idp.fetches(), 2, "known kids come from the cache");
    assert_eq!(drain(&mut rx).len(), 3);
}

#[tokio::test]
async fn unknown_kids_cannot_make_the_webhook_hammer_the_identity_provider() {
    let signer = Signer::generate("real");
    let idp = IdentityProvider::start(vec![signer.jwk()]).await;
    let (state, mut rx) = new_state(4);
    let state = state.with_auth(idp.authenticator());
    for i in 0..20 {
        let stranger = signer.sign(&json!({"alg": "RS256", "kid": format!("made-up-{i}")}), &v1_claims());
        let reply = send(state.clone(), with_bearer(notification(&keyvault_batch(NEAR_EXPIRY)), &stranger)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    }
    assert_eq!(idp.fetches(), 1, "at most one fetch per min_refresh_interval");
    // The real key still works from the cache.
    let reply = send(state, with_bearer(notification(&keyvault_batch(NEAR_EXPIRY)), &signer.token(&v1_claims()))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(drain(&mut rx).len(), 1);
}

#[tokio::test]
async fn identity_provider_outage_is_503_not_401() {
    // 401 would make Event Grid drop a good event; an outage is transient.
    let signer = Signer::generate("k1");
    let idp = IdentityProvider::start(vec![signer.jwk()]).await;
    idp.set_down(true);
    let (state, mut rx) = new_state(4);
    let state = state.with_auth(idp.authenticator());
    let reply =
        send(state.clone(), with_bearer(notification(&keyvault_batch(NEAR_EXPIRY)), &signer.token(&v1_claims()))).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text);
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
    assert!(drain(&mut rx).is_empty());

    // Within the refresh interval the outage is remembered: still 503, no new fetch.
    idp.set_down(false);
    let reply = send(state, with_bearer(notification(&keyvault_batch(NEAR_EXPIRY)), &signer.token(&v1_claims()))).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(idp.fetches(), 0);

    // Once the provider answers again, Event Grid's redelivery goes through.
    let mut config = idp.config();
    config.min_refresh_interval = std::time::Duration::ZERO;
    let (state, mut rx) = new_state(4);
    let state = state.with_auth(Authenticator::EntraId(Arc::new(EntraId::new(config).unwrap())));
    let reply = send(state, with_bearer(notification(&keyvault_batch(NEAR_EXPIRY)), &signer.token(&v1_claims()))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(drain(&mut rx).len(), 1);
}

#[tokio::test]
async fn cached_keys_survive_an_outage() {
    let signer = Signer::generate("k1");
    let idp = IdentityProvider::start(vec![signer.jwk()]).await;
    let mut config = idp.config();
    config.max_key_age = std::time::Duration::ZERO; // every use wants a refetch
    config.min_refresh_interval = std::time::Duration::ZERO;
    let entra = Arc::new(EntraId::new(config).unwrap());
    assert_eq!(entra.refresh_keys().await, Ok(1));
    idp.set_down(true);
    let (state, mut rx) = new_state(4);
    let state = state.with_auth(Authenticator::EntraId(entra));
    let reply = send(state, with_bearer(notification(&keyvault_batch(EXPIRED)), &signer.token(&v1_claims()))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(drain(&mut rx).len(), 1);
}

/// A delivery of one SecretNearExpiry for secret `s{n}`: distinct events are not deduplicated.
fn distinct(n: u32) -> serde_json::Value {
    json!([secret_event(&format!("event-{n}"), NEAR_EXPIRY, "sample-kv", &format!("s{n}"), "v1")])
}

fn shared_key() -> Authenticator {
    let current = SecretString::from("current-0123456789-abcdef".to_owned());
    let previous = SecretString::from("previous-0123456789-abcdef".to_owned());
    Authenticator::SharedKey(Arc::new(SharedKey::new(&current, Some(&previous)).unwrap()))
}

#[tokio::test]
async fn shared_key_in_query_or_header_and_both_keys_during_rotation() {
    for (path, header_value) in [
        ("/api/eventgrid?key=current-0123456789-abcdef", None),
        ("/api/eventgrid?key=previous-0123456789-abcdef", None),
        ("/api/eventgrid", Some("previous-0123456789-abcdef")),
    ] {
        let (state, mut rx) = new_state(4);
        let state = state.with_auth(shared_key());
        let mut request = event_grid_post(path, "SubscriptionValidation", fixture(VALIDATION_EVENT));
        if let Some(value) = header_value {
            request.headers_mut().insert("X-KV-Rotator-Key", value.parse().unwrap());
        }
        let reply = send(state.clone(), request).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        assert_eq!(reply.json, fixture_json(VALIDATION_RESPONSE));
        let mut request = event_grid_post(path, "Notification", keyvault_batch(NEAR_EXPIRY).to_string());
        if let Some(value) = header_value {
            request.headers_mut().insert("x-kv-rotator-key", value.parse().unwrap());
        }
        assert_eq!(send(state, request).await.status, StatusCode::OK);
        assert_eq!(drain(&mut rx), vec![expected_request(NEAR_EXPIRY)]);
    }
}

#[tokio::test]
async fn shared_key_refusals_never_echo_the_key() {
    let (state, mut rx) = new_state(4);
    let state = state.with_auth(shared_key());
    let reply = send(state.clone(), notification(&keyvault_batch(NEAR_EXPIRY))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let request = event_grid_post("/?key=wrong-guess-0123456789", "Notification", keyvault_batch(EXPIRED).to_string());
    let reply = send(state.clone(), request).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(!reply.text.contains("wrong-guess") && !reply.text.contains("current-"), "{}", reply.text);
    assert!(!reply.headers.contains_key(header::WWW_AUTHENTICATE));
    assert!(drain(&mut rx).is_empty());
    // Health checks need no key.
    let reply = send(state, axum::http::Request::get("/healthz").body(axum::body::Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn a_remembered_token_still_expires() {
    // Verified tokens are remembered so the signature is checked once; exp still applies.
    let signer = Signer::generate("short");
    let idp = IdentityProvider::start(vec![signer.jwk()]).await;
    let mut config = idp.config();
    config.clock_skew = std::time::Duration::ZERO;
    let auth = Authenticator::EntraId(Arc::new(EntraId::new(config).unwrap()));
    let mut claims = v1_claims();
    claims["exp"] = json!(now() + 2);
    let token = signer.token(&claims);
    let (state, mut rx) = new_state(8);
    let state = state.with_auth(auth);
    for n in 1..=2 {
        let reply = send(state.clone(), with_bearer(notification(&distinct(n)), &token)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let reply = send(state, with_bearer(notification(&distinct(3)), &token)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    assert!(reply.json["error"].as_str().unwrap().contains("expired"), "{}", reply.text);
    assert_eq!(drain(&mut rx).len(), 2);
}

/// A server that answers every path with a redirect to the same path at `target`: 302, or
/// the status in the query (`?307`, `?308`).
async fn redirecting_to(target: &str) -> String {
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let target = target.to_owned();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let target = target.clone();
        async move {
            let status = match uri.query() {
                Some("307") => StatusCode::TEMPORARY_REDIRECT,
                Some("308") => StatusCode::PERMANENT_REDIRECT,
                _ => StatusCode::FOUND,
            };
            (status, [(header::LOCATION, format!("{target}{}", uri.path()))]).into_response()
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn signing_keys_follow_no_redirect() {
    let signer = Signer::generate("k1");
    let idp = IdentityProvider::start(vec![signer.jwk()]).await;
    // The real documents, one redirect away: /keys and the discovery path both exist at idp.base.
    let moved = redirecting_to(&idp.base).await;
    let discovery_path = idp.discovery_url().trim_start_matches(&idp.base).to_owned();
    let locations = [
        JwksLocation::OpenIdConfiguration(format!("{moved}{discovery_path}").parse().unwrap()),
        JwksLocation::Jwks(format!("{moved}/keys").parse().unwrap()),
        JwksLocation::Jwks(format!("{moved}/keys?307").parse().unwrap()),
        JwksLocation::Jwks(format!("{moved}/keys?308").parse().unwrap()),
    ];
    for jwks in locations {
        let mut config = idp.config();
        config.jwks = jwks.clone();
        let entra = Arc::new(EntraId::new(config).unwrap());
        let err = entra.refresh_keys().await.expect_err("a redirect is not followed");
        let message = err.to_string();
        assert!(message.contains("redirects are not followed") && message.contains(" 30"), "{jwks:?}: {message}");

        // A delivery with a good token: 503 (Event Grid retries), not the keys behind the redirect.
        let (state, mut rx) = new_state(4);
        let request = with_bearer(notification(&keyvault_batch(NEAR_EXPIRY)), &signer.token(&v1_claims()));
        let reply = send(state.with_auth(Authenticator::EntraId(entra)), request).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{jwks:?}: {}", reply.text);
        assert!(drain(&mut rx).is_empty());
    }
    assert_eq!(idp.fetches(), 0, "the key set behind the redirects was never fetched");
}
