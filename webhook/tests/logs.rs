//! Log content of the webhook. Alone in its test binary: `tracing`'s per-callsite
//! interest cache makes a scoped subscriber miss events when other tests in the same
//! process hit the same callsites concurrently.

mod common;

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use common::*;
use serde_json::json;

const V1: &str = "0123456789abcdef0123456789abcdef";

/// A `tracing` writer collecting everything into a string.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn logs_name_the_rotation_and_the_dropped_event_but_not_the_body() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut batch = keyvault_batch(NEAR_EXPIRY);
    batch[0]["data"]["Padding"] = json!("BODY-ONLY-MARKER");
    let mut bad = secret_event("bad-one", EXPIRED, "sample-kv", "one", V1);
    bad["data"]["ObjectName"] = json!("two");
    batch.as_array_mut().unwrap().push(bad);
    let (state, _rx) = new_state(4);
    let mut request = notification(&batch);
    // Event Grid sends the subscription name upper-case.
    request.headers_mut().insert("AEG-SUBSCRIPTION-NAME", "KV-ROTATOR-SUB".parse().unwrap());
    request.headers_mut().insert("aeg-delivery-count", "3".parse().unwrap());
    let reply = send(state, request).await;
    assert_eq!(reply.status, StatusCode::OK);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let queued = logs.lines().find(|l| l.contains("rotation request queued")).expect(&logs);
    assert!(queued.contains(" INFO "), "{queued}");
    // The delivery's span names the subscription and the attempt.
    for field in [
        "vault=sample-kv",
        "secret=newsecret",
        &format!("version={FIXTURE_VERSION}"),
        FIXTURE_EVENT_ID,
        "aeg_subscription_name=\"KV-ROTATOR-SUB\"",
        "aeg_delivery_count=\"3\"",
    ] {
        assert!(queued.contains(field), "{field} missing from {queued}");
    }
    let dropped = logs.lines().find(|l| l.contains("event dropped")).expect(&logs);
    assert!(dropped.contains("index=1") && dropped.contains("bad-one") && dropped.contains("ObjectName"), "{dropped}");
    assert!(!logs.contains("BODY-ONLY-MARKER"), "{logs}");
}
