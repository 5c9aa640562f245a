//! CloudEvents 1.0: the OPTIONS abuse-protection handshake and what is refused.
//! (The fixture in each content type is in `fixtures.rs`.)

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;
use kv_rotator_webhook::{Authenticator, SharedKey};
use secrecy::SecretString;
use serde_json::json;

fn options(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::options(path);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn abuse_protection_handshake_echoes_the_origin() {
    for path in ["/api/eventgrid", "/"] {
        let (state, _rx) = new_state(1);
        let request =
            options(path, &[("WebHook-Request-Origin", "eventgrid.azure.net"), ("WebHook-Request-Rate", "120")]);
        let reply = send(state, request).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.headers["webhook-allowed-origin"], "eventgrid.azure.net");
        assert_eq!(reply.headers["webhook-allowed-rate"], "*");
        assert_eq!(reply.headers[header::ALLOW], "POST, OPTIONS");
    }
    // No rate asked, none given.
    let (state, _rx) = new_state(1);
    let reply = send(state, options("/api/eventgrid", &[("webhook-request-origin", "eventgrid.azure.net")])).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!reply.headers.contains_key("webhook-allowed-rate"));
}

#[tokio::test]
async fn abuse_protection_handshake_is_authenticated() {
    let key = SecretString::from("handshake-key-0123456789".to_owned());
    let auth = Authenticator::SharedKey(Arc::new(SharedKey::new(&key, None).unwrap()));
    let (state, _rx) = new_state(1);
    let state = state.with_auth(auth);
    let origin = [("WebHook-Request-Origin", "eventgrid.azure.net")];
    let reply = send(state.clone(), options("/api/eventgrid", &origin)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(!reply.headers.contains_key("webhook-allowed-origin"));
    let reply = send(state, options("/api/eventgrid?key=handshake-key-0123456789", &origin)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["webhook-allowed-origin"], "eventgrid.azure.net");
}

#[tokio::test]
async fn refusals() {
    let event = || {
        let mut e = fixture_json(KEYVAULT_CLOUDEVENT)[0].clone();
        e["type"] = json!(NEAR_EXPIRY);
        e
    };
    // Binary mode: 400 naming structured mode.
    let (state, mut rx) = new_state(4);
    let request = Request::post("/api/eventgrid")
        .header(header::CONTENT_TYPE, "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-type", NEAR_EXPIRY)
        .body(Body::from(event()["data"].to_string()))
        .unwrap();
    let reply = send(state, request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json["error"].as_str().unwrap().contains("structured mode"));
    assert!(drain(&mut rx).is_empty());

    // A batch content type around one object: 400.
    let (state, _rx) = new_state(4);
    let request = Request::post("/")
        .header(header::CONTENT_TYPE, "application/cloudevents-batch+json")
        .body(Body::from(event().to_string()))
        .unwrap();
    assert_eq!(send(state, request).await.status, StatusCode::BAD_REQUEST);

    // Unknown specversion, data_base64, a validation event: dropped, acknowledged.
    let mut old = event();
    old["specversion"] = json!("0.3");
    let mut binary = event();
    binary.as_object_mut().unwrap().remove("data");
    binary["data_base64"] = json!("AAAA");
    let mut validation = event();
    validation["type"] = json!("Microsoft.EventGrid.SubscriptionValidationEvent");
    validation["data"] = json!({"validationCode": "x"});
    let (state, mut rx) = new_state(4);
    let request = Request::post("/")
        .header(header::CONTENT_TYPE, "application/cloudevents-batch+json")
        .body(Body::from(json!([old, binary, validation]).to_string()))
        .unwrap();
    let reply = send(state, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json, json!({"queued": 0, "ignored": 0, "rejected": 3}));
    assert!(drain(&mut rx).is_empty());
}
