//! Every documented Event Grid payload in `tests/fixtures/eventgrid`, delivered to
//! the router as Event Grid would send it.

mod common;

use std::time::Duration;

use axum::http::{header, Request, StatusCode};
use common::*;
use serde_json::{json, Map, Value};

#[tokio::test]
async fn validation_fixture_is_answered_with_its_code() {
    let expected = fixture_json(VALIDATION_RESPONSE);
    // The header value in any case, on the main path and on the alias.
    for (path, aeg) in [("/api/eventgrid", "SubscriptionValidation"), ("/", "subscriptionvalidation")] {
        let (state, mut rx) = new_state(4);
        let reply = send(state, event_grid_post(path, aeg, fixture(VALIDATION_EVENT))).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        assert_eq!(reply.json, expected, "{path}");
        assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
        assert!(drain(&mut rx).is_empty());
    }
}

#[tokio::test]
async fn keyvault_fixture_as_near_expiry_enqueues_the_secret() {
    let (state, mut rx) = new_state(4);
    // The handler never waits for a rotation: nobody reads the queue here.
    let reply = tokio::time::timeout(Duration::from_secs(5), send(state, notification(&keyvault_batch(NEAR_EXPIRY))))
        .await
        .expect("the webhook must answer without waiting for the rotation");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json, json!({"queued": 1, "ignored": 0, "rejected": 0}));
    assert_eq!(drain(&mut rx), vec![expected_request(NEAR_EXPIRY)]);
}

#[tokio::test]
async fn keyvault_fixture_as_expired_enqueues_the_secret() {
    let (state, mut rx) = new_state(4);
    let reply = send(state, notification(&keyvault_batch(EXPIRED))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(drain(&mut rx), vec![expected_request(EXPIRED)]);
}

#[tokio::test]
async fn keyvault_fixture_as_published_enqueues_nothing() {
    // SecretNewVersionCreated, as documented: our own writes must not loop.
    let (state, mut rx) = new_state(4);
    let request = event_grid_post("/api/eventgrid", "Notification", fixture(KEYVAULT_EVENT));
    let reply = send(state, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json, json!({"queued": 0, "ignored": 1, "rejected": 0}));
    assert!(drain(&mut rx).is_empty());
}

/// `Id` → `id`, `"ObjectName "` → `objectName`, `NBF` → `nbf`.
fn camel_case(key: &str) -> String {
    let key = key.trim();
    if key.chars().all(|c| c.is_ascii_uppercase()) {
        key.to_ascii_lowercase()
    } else {
        key[..1].to_ascii_lowercase() + &key[1..]
    }
}

#[tokio::test]
async fn camel_case_variant_enqueues_the_same_request() {
    let mut batch = keyvault_batch(NEAR_EXPIRY);
    let data = batch[0]["data"].as_object().unwrap().clone();
    let camel: Map<String, Value> = data.into_iter().map(|(k, v)| (camel_case(&k), v)).collect();
    assert!(camel.contains_key("objectName") && camel.contains_key("nbf"), "{camel:?}");
    batch[0]["data"] = Value::Object(camel);

    let (state, mut rx) = new_state(4);
    let reply = send(state, notification(&batch)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(drain(&mut rx), vec![expected_request(NEAR_EXPIRY)]);
}

#[tokio::test]
async fn integer_and_null_nbf_exp_are_accepted() {
    for (nbf, exp) in
        [(json!(1559081980), json!(1559082102)), (json!(null), json!(null)), (json!(1559081980), json!(null))]
    {
        let mut batch = keyvault_batch(NEAR_EXPIRY);
        batch[0]["data"]["NBF"] = nbf.clone();
        batch[0]["data"]["EXP"] = exp.clone();
        let (state, mut rx) = new_state(4);
        let reply = send(state, notification(&batch)).await;
        assert_eq!(reply.status, StatusCode::OK, "NBF {nbf} EXP {exp}: {}", reply.text);
        assert_eq!(drain(&mut rx), vec![expected_request(NEAR_EXPIRY)], "NBF {nbf} EXP {exp}");
    }
}

#[tokio::test]
async fn cloudevents_fixture_is_read_in_every_content_type() {
    for content_type in
        ["application/cloudevents-batch+json; charset=utf-8", "application/cloudevents+json", "application/json"]
    {
        // As published (SecretNewVersionCreated): acknowledged, nothing queued.
        let (state, mut rx) = new_state(4);
        let request = Request::post("/api/eventgrid")
            .header(header::CONTENT_TYPE, content_type)
            .body(fixture(KEYVAULT_CLOUDEVENT).into())
            .unwrap();
        let reply = send(state, request).await;
        assert_eq!(reply.status, StatusCode::OK, "{content_type}: {}", reply.text);
        assert_eq!(reply.json, json!({"queued": 0, "ignored": 1, "rejected": 0}), "{content_type}");
        assert!(drain(&mut rx).is_empty());

        // As SecretNearExpiry: the same rotation request as the Event Grid schema's.
        let mut batch = fixture_json(KEYVAULT_CLOUDEVENT);
        batch[0]["type"] = json!(NEAR_EXPIRY);
        let (state, mut rx) = new_state(4);
        let request = Request::post("/api/eventgrid")
            .header(header::CONTENT_TYPE, content_type)
            .body(batch.to_string().into())
            .unwrap();
        let reply = send(state, request).await;
        assert_eq!(reply.status, StatusCode::OK, "{content_type}: {}", reply.text);
        assert_eq!(drain(&mut rx), vec![expected_request(NEAR_EXPIRY)], "{content_type}");
    }
}

#[tokio::test]
async fn single_cloudevent_as_an_object() {
    let mut event = fixture_json(KEYVAULT_CLOUDEVENT)[0].clone();
    event["type"] = json!(EXPIRED);
    let (state, mut rx) = new_state(4);
    let request = Request::post("/api/eventgrid")
        .header(header::CONTENT_TYPE, "application/cloudevents+json; charset=utf-8")
        .body(event.to_string().into())
        .unwrap();
    let reply = send(state, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(drain(&mut rx), vec![expected_request(EXPIRED)]);
}

#[test]
fn every_fixture_is_covered() {
    // A new fixture must get a test above before it is listed here.
    let covered = [VALIDATION_EVENT, VALIDATION_RESPONSE, KEYVAULT_EVENT, KEYVAULT_CLOUDEVENT, "SOURCES.md"];
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(covered.contains(&name.as_str()), "fixture {name} has no test");
    }
}

#[test]
fn vendored_fixtures_match_shared() {
    // The shared fixtures live beside the repository; without them (e.g. a bare
    // clone) only the vendored copy is tested.
    let Ok(entries) = std::fs::read_dir(shared_fixture_dir()) else {
        eprintln!("no shared fixtures at {}, skipping", shared_fixture_dir().display());
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let vendored = std::fs::read(fixture_dir().join(&name))
            .unwrap_or_else(|_| panic!("shared fixture {name} is not copied into tests/fixtures/eventgrid"));
        assert_eq!(vendored, std::fs::read(entry.path()).unwrap(), "{name} differs from the shared copy");
    }
}
