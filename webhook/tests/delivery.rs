//! How the webhook answers Event Grid: status codes for full queues, bad bodies and
//! size limits, and what a batch with bad events enqueues.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_webhook::WebhookState;
use serde_json::json;
use tokio::sync::mpsc;

const V1: &str = "0123456789abcdef0123456789abcdef";
const V2: &str = "fedcba9876543210fedcba9876543210";

fn request(id: &str, event_type: &str, vault: &str, name: &str, version: &str) -> RotationRequest {
    RotationRequest {
        vault_name: vault.into(),
        secret_name: name.into(),
        version: Some(version.into()),
        trigger: Trigger::EventGrid { event_id: id.into(), event_type: event_type.into() },
    }
}

fn filler() -> RotationRequest {
    RotationRequest { vault_name: "kv".into(), secret_name: "filler".into(), version: None, trigger: Trigger::Sweeper }
}

#[tokio::test]
async fn queue_full_is_503_with_retry_after_and_recovers() {
    let (tx, mut rx) = mpsc::channel(1);
    tx.try_send(filler()).unwrap();
    let state = WebhookState::new(tx);
    let reply = send(state.clone(), notification(&keyvault_batch(NEAR_EXPIRY))).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text);
    assert_eq!(reply.headers[header::RETRY_AFTER], "30");
    assert!(reply.json["error"].as_str().unwrap().contains("full"));
    assert_eq!(drain(&mut rx), vec![filler()], "nothing enqueued on 503");

    // Transient: Event Grid's redelivery succeeds once there is room.
    let reply = send(state, notification(&keyvault_batch(NEAR_EXPIRY))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(drain(&mut rx), vec![expected_request(NEAR_EXPIRY)]);
}

#[tokio::test]
async fn closed_queue_is_503() {
    let (state, rx) = new_state(4);
    drop(rx);
    let reply = send(state, notification(&keyvault_batch(EXPIRED))).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn a_batch_is_enqueued_whole_or_not_at_all() {
    // Room for one more, two rotations: nothing goes in, so the redelivery adds no duplicate.
    let (tx, mut rx) = mpsc::channel(2);
    tx.try_send(filler()).unwrap();
    let batch = json!([
        secret_event("a", NEAR_EXPIRY, "sample-kv", "one", V1),
        secret_event("b", NEAR_EXPIRY, "sample-kv", "two", V1),
    ]);
    let reply = send(WebhookState::new(tx), notification(&batch)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(drain(&mut rx), vec![filler()]);
}

#[tokio::test]
async fn batch_larger_than_the_queue_goes_in_one_by_one() {
    // All-or-nothing could never succeed here; what went in stays, and the
    // redelivery's duplicates are the engine's to fold.
    let (state, mut rx) = new_state(1);
    let batch = json!([
        secret_event("a", NEAR_EXPIRY, "sample-kv", "one", V1),
        secret_event("b", NEAR_EXPIRY, "sample-kv", "two", V1),
    ]);
    let reply = send(state, notification(&batch)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(drain(&mut rx), vec![request("a", NEAR_EXPIRY, "sample-kv", "one", V1)]);
}

#[tokio::test]
async fn malformed_json_is_400_without_echoing_the_body() {
    for body in [r#"[{"id": "secret-looking-value""#, "not json", ""] {
        let (state, mut rx) = new_state(4);
        let reply = send(state, event_grid_post("/api/eventgrid", "Notification", body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
        let error = reply.json["error"].as_str().unwrap();
        assert!(error.starts_with("body is not valid JSON"), "{error}");
        assert!(!reply.text.contains("secret-looking-value"));
        assert!(drain(&mut rx).is_empty());
    }
}

#[tokio::test]
async fn non_array_body_is_400() {
    let (state, _rx) = new_state(4);
    let single = keyvault_batch(NEAR_EXPIRY)[0].clone();
    let reply = send(state, notification(&single)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json, json!({"error": "body must be a JSON array of Event Grid events"}));
}

#[tokio::test]
async fn wrong_content_type_is_400() {
    let (state, _rx) = new_state(4);
    let request = Request::post("/api/eventgrid")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("aeg-event-type", "Notification")
        .body(Body::from(keyvault_batch(NEAR_EXPIRY).to_string()))
        .unwrap();
    let reply = send(state, request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json["error"].as_str().unwrap().contains("application/json"));
}

/// A valid delivery padded to exactly `len` bytes.
fn padded_batch(len: usize) -> String {
    let mut body = keyvault_batch(NEAR_EXPIRY).to_string();
    assert!(body.len() <= len);
    body.insert_str(1, &" ".repeat(len - body.len()));
    body
}

#[tokio::test]
async fn oversize_body_is_413() {
    let limit = WebhookState::DEFAULT_MAX_BODY_BYTES;
    assert_eq!(limit, 1024 * 1024);
    // Declared by Content-Length (refused before reading) and undeclared (refused while reading).
    for declare in [true, false] {
        let (state, mut rx) = new_state(4);
        let body = padded_batch(limit + 1);
        let mut request = event_grid_post("/api/eventgrid", "Notification", body.clone());
        if declare {
            request.headers_mut().insert(header::CONTENT_LENGTH, body.len().into());
        }
        let reply = send(state, request).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "declared: {declare}");
        assert!(reply.json["error"].as_str().unwrap().contains("1048576"), "{}", reply.text);
        assert!(drain(&mut rx).is_empty());
    }
}

#[tokio::test]
async fn body_at_the_limit_is_accepted_and_limit_is_configurable() {
    let body = padded_batch(2000);
    let (tx, mut rx) = mpsc::channel(4);
    let reply = send(WebhookState::new(tx.clone()).with_max_body_bytes(2000), notification_raw(&body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(drain(&mut rx).len(), 1);
    let reply = send(WebhookState::new(tx).with_max_body_bytes(1999), notification_raw(&body)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
}

fn notification_raw(body: &str) -> Request<Body> {
    event_grid_post("/api/eventgrid", "Notification", body.to_owned())
}

#[tokio::test]
async fn id_disagreeing_with_object_name_is_dropped_with_200() {
    let mut batch = keyvault_batch(NEAR_EXPIRY);
    batch[0]["data"]["ObjectName "] = json!("othersecret");
    let (state, mut rx) = new_state(4);
    let reply = send(state, notification(&batch)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json, json!({"queued": 0, "ignored": 0, "rejected": 1}));
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test]
async fn mixed_batch_enqueues_the_good_and_drops_the_bad() {
    let mut mismatch = secret_event("bad-mismatch", NEAR_EXPIRY, "sample-kv", "one", V1);
    mismatch["data"]["VaultName"] = json!("other-kv");
    let mut bad_name = secret_event("bad-name", EXPIRED, "sample-kv", "x", V1);
    bad_name["data"] = json!({"VaultName": "sample-kv", "ObjectName": "bad_name!", "Version": V1});
    let batch = json!([
        secret_event("good-1", NEAR_EXPIRY, "sample-kv", "one", V1),
        mismatch,
        42,
        {"id": "no-type", "data": {}},
        secret_event("own-write", NEW_VERSION, "sample-kv", "one", V2),
        secret_event("key", "Microsoft.KeyVault.KeyNearExpiry", "sample-kv", "k", V1),
        {"id": "blob", "eventType": "Microsoft.Storage.BlobCreated", "data": {"url": "x"}},
        secret_event("good-2", EXPIRED, "other-kv", "two", V2),
        bad_name,
        {"id": "bad-data", "eventType": NEAR_EXPIRY, "data": "not an object"},
    ]);
    let (state, mut rx) = new_state(16);
    let reply = send(state, notification(&batch)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json, json!({"queued": 2, "ignored": 3, "rejected": 5}));
    assert_eq!(
        drain(&mut rx),
        vec![request("good-1", NEAR_EXPIRY, "sample-kv", "one", V1), request("good-2", EXPIRED, "other-kv", "two", V2),]
    );
}

#[tokio::test]
async fn same_secret_version_twice_in_a_batch_is_enqueued_once() {
    let batch = json!([
        secret_event("a", NEAR_EXPIRY, "sample-kv", "one", V1),
        secret_event("b", EXPIRED, "SAMPLE-KV", "One", V1),
        secret_event("c", EXPIRED, "sample-kv", "one", V2),
    ]);
    let (state, mut rx) = new_state(4);
    let reply = send(state, notification(&batch)).await;
    assert_eq!(reply.json, json!({"queued": 2, "ignored": 1, "rejected": 0}));
    let queued = drain(&mut rx);
    assert_eq!(queued[0], request("a", NEAR_EXPIRY, "sample-kv", "one", V1));
    assert_eq!(queued[1].version.as_deref(), Some(V2));
}

#[tokio::test]
async fn subscription_deletion_is_acknowledged() {
    let batch = json!([{
        "id": "d", "topic": "t", "subject": "", "eventType": "Microsoft.EventGrid.SubscriptionDeletedEvent",
        "eventTime": "2024-01-01T00:00:00Z", "data": {"eventSubscriptionId": "x"},
        "dataVersion": "1", "metadataVersion": "1"
    }]);
    let (state, mut rx) = new_state(4);
    let reply = send(state, event_grid_post("/api/eventgrid", "SubscriptionDeletion", batch.to_string())).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test]
async fn validation_header_without_a_validation_event_is_400() {
    let (state, mut rx) = new_state(4);
    let body = keyvault_batch(NEAR_EXPIRY).to_string();
    let reply = send(state, event_grid_post("/api/eventgrid", "SubscriptionValidation", body)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json["error"].as_str().unwrap().contains("SubscriptionValidationEvent"));
    assert!(drain(&mut rx).is_empty(), "a validation delivery never enqueues");

    let mut no_code = fixture_json(VALIDATION_EVENT);
    no_code[0]["data"].as_object_mut().unwrap().remove("validationCode");
    let (state, _rx) = new_state(4);
    let reply = send(state, event_grid_post("/", "SubscriptionValidation", no_code.to_string())).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json["error"].as_str().unwrap().contains("validationCode"), "{}", reply.text);
}

#[tokio::test]
async fn validation_event_is_answered_whatever_the_header() {
    // The eventType decides; a proxy that drops the header must not break the handshake.
    let request = Request::post("/api/eventgrid")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(fixture(VALIDATION_EVENT)))
        .unwrap();
    let (state, _rx) = new_state(4);
    let reply = send(state, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json, fixture_json(VALIDATION_RESPONSE));
}

#[tokio::test]
async fn healthz_and_alias_route() {
    let (state, mut rx) = new_state(4);
    let reply = send(state.clone(), Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((reply.status, reply.text.as_str()), (StatusCode::OK, "ok"));
    let reply = send(state.clone(), event_grid_post("/", "Notification", keyvault_batch(EXPIRED).to_string())).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(drain(&mut rx), vec![expected_request(EXPIRED)]);
    let reply = send(state, Request::get("/api/eventgrid").body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn event_grids_largest_batches_are_taken_whole() {
    // Event Grid batches up to 5,000 events or 1 MiB, whichever comes first.
    let ignored: Vec<_> = (0..5000)
        .map(|i| json!({"id": format!("k{i}"), "eventType": "Microsoft.KeyVault.KeyNearExpiry", "data": {}}))
        .collect();
    let body = serde_json::Value::Array(ignored).to_string();
    assert!(body.len() < WebhookState::DEFAULT_MAX_BODY_BYTES, "{}", body.len());
    let (state, mut rx) = new_state(4);
    let reply = send(state, notification_raw(&body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json, json!({"queued": 0, "ignored": 5000, "rejected": 0}));
    assert!(drain(&mut rx).is_empty());

    // As many full rotation events as fit in 1 MiB, all distinct: all queued.
    let mut events = Vec::new();
    let mut size = 2;
    for i in 0.. {
        let event = secret_event(&format!("e{i}"), NEAR_EXPIRY, "sample-kv", &format!("secret-{i}"), V1);
        size += event.to_string().len() + 1;
        if size > WebhookState::DEFAULT_MAX_BODY_BYTES {
            break;
        }
        events.push(event);
    }
    let n = events.len();
    assert!(n > 1000, "{n}");
    let (state, mut rx) = new_state(n);
    let reply = send(state, notification(&serde_json::Value::Array(events))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["queued"], n);
    assert_eq!(drain(&mut rx).len(), n);
}
