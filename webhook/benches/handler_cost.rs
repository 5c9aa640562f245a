//! The cost of one delivery through the router, in process: no sockets, one thread, one
//! target per run, so that `valgrind --tool=callgrind` counts the handler's instructions
//! and little else. Instruction counts are repeatable to the instruction for a given
//! binary, unlike timings on a shared machine; `scripts/webhook-instructions.sh` runs
//! every target under callgrind and prints each one's count per delivery next to the
//! bare handler's.
//!
//! `cargo bench -p kv-rotator-webhook --bench handler_cost` times all targets;
//! `BENCH_TARGET=bare|webhook|webhook-key` runs one, `BENCH_DELIVERIES` (default 20000)
//! sets how many. The bodies are built before the loop, and the same way for every target.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::Router;
use kv_rotator_webhook::{router, Authenticator, SharedKey, SourceFilter, WebhookState};
use secrecy::SecretString;
use tower::ServiceExt;

mod support;

const KEY: &str = "bench-shared-key-0123456789";

/// The targets: the bare handler (reads the body, answers 200), the webhook with an
/// allowlist of one vault and no authentication, and the same with a shared key.
fn targets() -> Vec<(&'static str, Router, &'static str)> {
    // The queue is never drained, and big enough for every delivery of a run.
    let (queue, receiver) = tokio::sync::mpsc::channel(1 << 22);
    std::mem::forget(receiver);
    let webhook = WebhookState::new(queue).with_source_filter(SourceFilter::only([support::VAULT]));
    let key = SharedKey::new(&SecretString::from(KEY.to_owned()), None).unwrap();
    vec![
        ("bare", Router::new().route("/api/eventgrid", post(|_body: Bytes| async { StatusCode::OK })), ""),
        ("webhook", router(webhook.clone()), ""),
        (
            "webhook-key",
            router(webhook.with_auth(Authenticator::SharedKey(Arc::new(key)))),
            "?key=bench-shared-key-0123456789",
        ),
    ]
}

async fn run(app: Router, query: &str, bodies: Vec<String>) {
    let uri = format!("/api/eventgrid{query}");
    for body in bodies {
        let request = Request::post(uri.as_str())
            .header("content-type", "application/json")
            .header("aeg-event-type", "Notification")
            .body(Body::from(body))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

fn main() {
    let only = std::env::var("BENCH_TARGET").ok();
    let n: u64 = std::env::var("BENCH_DELIVERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let targets = runtime.block_on(async { targets() });
    for (name, app, query) in targets {
        if only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        let bodies: Vec<String> = (0..n).map(support::delivery).collect();
        let start = Instant::now();
        runtime.block_on(run(app, query, bodies));
        println!("{name:<12} {:>6.2} µs per delivery over {n}", start.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
}
