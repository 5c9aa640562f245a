//! The source filter, deduplication by event id and coalescing per secret version,
//! through the router: what is acknowledged, what is queued.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use kv_rotator_webhook::SourceFilter;
use serde_json::json;

const V1: &str = "0123456789abcdef0123456789abcdef";
const V2: &str = "fedcba9876543210fedcba9876543210";

#[tokio::test]
async fn only_allowlisted_vaults_are_queued_and_the_rest_acknowledged() {
    let (state, mut rx) = new_state(8);
    let state = state.with_source_filter(SourceFilter::only(["Prod-KV"]));
    let batch = json!([
        secret_event("ok", NEAR_EXPIRY, "prod-kv", "db", V1),
        secret_event("foreign", NEAR_EXPIRY, "evil-kv", "db", V1),
    ]);
    let reply = send(state, notification(&batch)).await;
    // 200: Event Grid must not retry an event we will never act on.
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json, json!({"queued": 1, "ignored": 0, "rejected": 1}));
    let queued = drain(&mut rx);
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].vault_name, "prod-kv");
}

#[tokio::test]
async fn spoofed_names_are_dropped() {
    let topic_of =
        |vault: &str| format!("/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{vault}");
    let mut topic_differs = secret_event("a", NEAR_EXPIRY, "prod-kv", "db", V1);
    topic_differs["topic"] = json!(topic_of("evil-kv"));
    let mut id_host_differs = secret_event("b", NEAR_EXPIRY, "prod-kv", "db", V1);
    id_host_differs["data"]["Id"] = json!(format!("https://evil-kv.vault.azure.net/secrets/db/{V1}"));
    let mut no_topic = secret_event("c", NEAR_EXPIRY, "prod-kv", "db", V1);
    no_topic.as_object_mut().unwrap().remove("topic");
    let mut no_id = secret_event("d", NEAR_EXPIRY, "prod-kv", "db", V1);
    no_id["data"].as_object_mut().unwrap().remove("Id");
    let mut storage_topic = secret_event("e", NEAR_EXPIRY, "prod-kv", "db", V1);
    storage_topic["topic"] =
        json!("/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/prod-kv");
    let mut all_evil = secret_event("f", NEAR_EXPIRY, "evil-kv", "db", V1);
    all_evil["topic"] = json!(topic_of("evil-kv"));
    for (name, event) in [
        ("topic differs", topic_differs),
        ("Id host differs", id_host_differs),
        ("no topic", no_topic),
        ("no Id", no_id),
        ("topic is not a vault", storage_topic),
        ("consistent but not allowed", all_evil),
    ] {
        let (state, mut rx) = new_state(4);
        let state = state.with_source_filter(SourceFilter::only(["prod-kv"]));
        let reply = send(state, notification(&json!([event]))).await;
        assert_eq!(reply.status, StatusCode::OK, "{name}");
        assert_eq!(reply.json["rejected"], 1, "{name}: {}", reply.text);
        assert!(drain(&mut rx).is_empty(), "{name}");
    }
}

#[tokio::test]
async fn a_redelivered_event_is_queued_once() {
    let (state, mut rx) = new_state(8);
    let batch = json!([secret_event("same-id", NEAR_EXPIRY, "prod-kv", "db", V1)]);
    for _ in 0..3 {
        let reply = send(state.clone(), notification(&batch)).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(drain(&mut rx).len(), 1);
}

#[tokio::test]
async fn a_503_is_not_remembered_so_the_redelivery_goes_in() {
    let (state, mut rx) = new_state(1);
    let batch = json!([
        secret_event("x1", NEAR_EXPIRY, "prod-kv", "one", V1),
        secret_event("x2", NEAR_EXPIRY, "prod-kv", "two", V1),
    ]);
    // Batch of two into a queue of one: the first goes in, then 503.
    assert_eq!(send(state.clone(), notification(&batch)).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(drain(&mut rx).len(), 1);
    // Redelivered whole: the one that went in is a duplicate now, the other goes in.
    let reply = send(state, notification(&batch)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json, json!({"queued": 1, "ignored": 1, "rejected": 0}));
    assert_eq!(drain(&mut rx)[0].secret_name, "two");
}

#[tokio::test]
async fn near_expiry_and_expired_of_one_version_coalesce() {
    let (state, mut rx) = new_state(8);
    for (id, kind, version) in [("n", NEAR_EXPIRY, V1), ("e", EXPIRED, V1), ("other-version", EXPIRED, V2)] {
        let reply = send(state.clone(), notification(&json!([secret_event(id, kind, "prod-kv", "DB", version)]))).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let queued = drain(&mut rx);
    assert_eq!(queued.iter().map(|r| r.version.as_deref().unwrap()).collect::<Vec<_>>(), [V1, V2]);
}

#[tokio::test]
async fn windows_expire() {
    let (state, mut rx) = new_state(8);
    let state = state.with_dedup(Duration::from_millis(100), 1000).with_coalesce_window(Duration::from_millis(100));
    let batch = json!([secret_event("id", NEAR_EXPIRY, "prod-kv", "db", V1)]);
    send(state.clone(), notification(&batch)).await;
    send(state.clone(), notification(&batch)).await;
    assert_eq!(drain(&mut rx).len(), 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    send(state, notification(&batch)).await;
    assert_eq!(drain(&mut rx).len(), 1, "remembered for the window only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_queue_one_rotation() {
    let (state, mut rx) = new_state(64);
    let batch = json!([secret_event("racy", NEAR_EXPIRY, "prod-kv", "db", V1)]);
    let tasks: Vec<_> = (0..32).map(|_| tokio::spawn(send(state.clone(), notification(&batch)))).collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(drain(&mut rx).len(), 1);
}
