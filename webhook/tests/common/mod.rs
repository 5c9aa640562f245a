//! Helpers shared by the webhook's integration tests: fixtures, one-shot delivery
//! against [`router`], and draining the queue.
//!
//! Fixtures are read from `tests/fixtures/eventgrid`, a byte-exact copy of the
//! project's shared fixtures (so the crate tests alone, e.g. in CI); the test
//! `vendored_fixtures_match_shared` catches drift between the two.

#![allow(dead_code)] // each test binary uses a different subset

pub mod entra;

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_webhook::{router, WebhookState};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower::ServiceExt;

pub const VALIDATION_EVENT: &str = "docs_SubscriptionValidationEvent_eventgridschema.json";
pub const VALIDATION_RESPONSE: &str = "docs_SubscriptionValidationResponse.json";
pub const KEYVAULT_EVENT: &str = "docs_keyvault_SecretNewVersionCreated_eventgridschema.json";
pub const KEYVAULT_CLOUDEVENT: &str = "docs_keyvault_SecretNewVersionCreated_cloudeventschema.json";

/// The documented example's id and version (its `Version` has a leading space).
pub const FIXTURE_EVENT_ID: &str = "00eccf70-95a7-4e7c-8299-2eb17ee9ad64";
pub const FIXTURE_VERSION: &str = "ee059b2bb5bc48398a53b168c6cdcb10";

pub const NEAR_EXPIRY: &str = "Microsoft.KeyVault.SecretNearExpiry";
pub const EXPIRED: &str = "Microsoft.KeyVault.SecretExpired";
pub const NEW_VERSION: &str = "Microsoft.KeyVault.SecretNewVersionCreated";

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eventgrid")
}

/// The project's shared fixtures, beside the repository (`../shared` from its root).
pub fn shared_fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/eventgrid")
}

pub fn fixture(name: &str) -> String {
    let path = fixture_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

/// The documented Key Vault event with its `eventType` rewritten (no payload is
/// published for SecretNearExpiry/SecretExpired; the docs say the data is the same).
pub fn keyvault_batch(event_type: &str) -> Value {
    let mut batch = fixture_json(KEYVAULT_EVENT);
    batch[0]["eventType"] = Value::from(event_type);
    batch
}

/// What the documented example must become.
pub fn expected_request(event_type: &str) -> RotationRequest {
    RotationRequest {
        vault_name: "sample-kv".into(),
        secret_name: "newsecret".into(),
        version: Some(FIXTURE_VERSION.into()),
        trigger: Trigger::EventGrid { event_id: FIXTURE_EVENT_ID.into(), event_type: event_type.into() },
    }
}

/// One response, its body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

/// An Event Grid style POST: JSON content type and the `aeg-event-type` header.
pub fn event_grid_post(path: &str, aeg_event_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header("aeg-event-type", aeg_event_type)
        .body(body.into())
        .unwrap()
}

pub fn notification(body: &Value) -> Request<Body> {
    event_grid_post("/api/eventgrid", "Notification", body.to_string())
}

pub async fn send(state: WebhookState, request: Request<Body>) -> Reply {
    let response = router(state).oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status: parts.status, headers: parts.headers, text, json }
}

/// A state over a fresh queue of `capacity`.
pub fn new_state(capacity: usize) -> (WebhookState, mpsc::Receiver<RotationRequest>) {
    let (tx, rx) = mpsc::channel(capacity);
    (WebhookState::new(tx), rx)
}

/// Everything queued so far, without waiting.
pub fn drain(rx: &mut mpsc::Receiver<RotationRequest>) -> Vec<RotationRequest> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// A Key Vault secret event; `data` in the documented PascalCase shape.
pub fn secret_event(id: &str, event_type: &str, vault: &str, name: &str, version: &str) -> Value {
    json!({
        "id": id,
        "topic": format!("/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{vault}"),
        "subject": name,
        "eventType": event_type,
        "eventTime": "2024-01-01T00:00:00Z",
        "data": {
            "Id": format!("https://{vault}.vault.azure.net/secrets/{name}/{version}"),
            "VaultName": vault,
            "ObjectType": "Secret",
            "ObjectName": name,
            "Version": version,
            "NBF": null,
            "EXP": 1704067200
        },
        "dataVersion": "1",
        "metadataVersion": "1"
    })
}

/// `request` with `Authorization: Bearer {token}`.
pub fn with_bearer(mut request: Request<Body>, token: &str) -> Request<Body> {
    request.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    request
}
