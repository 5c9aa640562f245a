//! What became of each delivery, for whoever counts them (the worker's metrics), told
//! through [`DeliveryObserver`] so this crate knows nothing of the counter's type.
//!
//! The handlers tag their answers with a [`DeliveryOutcome`] where the status alone does
//! not say it (a 200 that queued rotations, one that queued none, one whose events were
//! all spoofed, a handshake, a plain `OPTIONS`); a layer on the delivery routes reads the
//! tag, or else the status, and tells the observer. The request timeout ([`timed`]) sits
//! inside that layer, so its 408s are told too.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

/// What one delivery (a `POST` or an `OPTIONS` on a delivery path) came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryOutcome {
    /// 200, at least one rotation queued.
    Queued,
    /// 200, nothing queued: event types not ours, redeliveries, dropped events.
    Ignored,
    /// 200, nothing queued, and at least one event refused for its source: a topic or
    /// vault that is not an allowed one (spoofed, or a subscription on another vault).
    RefusedSource,
    /// A validation handshake answered (Event Grid's, or the CloudEvents `OPTIONS` one
    /// carrying `WebHook-Request-Origin`).
    Validation,
    /// A plain `OPTIONS` (no `WebHook-Request-Origin`): answered with what the endpoint
    /// takes; no handshake, nothing delivered.
    Probe,
    /// 401 or 403: the credential is missing or wrong.
    RefusedAuth,
    /// 408: the delivery (its body, or its handling) took longer than the request timeout.
    Timeout,
    /// 400 (and any other 4xx but 401, 403, 408 and 413): not a delivery we can read.
    BadRequest,
    /// 413: the body is over the limit.
    TooLarge,
    /// 503 with `Retry-After`: the queue is full, the service is in standby or shutting
    /// down, or the signing keys cannot be fetched now. Event Grid retries it.
    Unavailable,
    /// Anything else (a 5xx from elsewhere in the stack).
    Other,
}

impl DeliveryOutcome {
    /// Every outcome, in a stable order.
    pub const ALL: [DeliveryOutcome; 11] = [
        DeliveryOutcome::Queued,
        DeliveryOutcome::Ignored,
        DeliveryOutcome::RefusedSource,
        DeliveryOutcome::Validation,
        DeliveryOutcome::Probe,
        DeliveryOutcome::RefusedAuth,
        DeliveryOutcome::Timeout,
        DeliveryOutcome::BadRequest,
        DeliveryOutcome::TooLarge,
        DeliveryOutcome::Unavailable,
        DeliveryOutcome::Other,
    ];

    /// A short, stable name (a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Queued => "queued",
            DeliveryOutcome::Ignored => "ignored",
            DeliveryOutcome::RefusedSource => "refused_source",
            DeliveryOutcome::Validation => "validation",
            DeliveryOutcome::Probe => "probe",
            DeliveryOutcome::RefusedAuth => "refused_auth",
            DeliveryOutcome::Timeout => "timeout",
            DeliveryOutcome::BadRequest => "bad_request",
            DeliveryOutcome::TooLarge => "too_large",
            DeliveryOutcome::Unavailable => "unavailable",
            DeliveryOutcome::Other => "other",
        }
    }

    /// The outcome of an answer: its tag, else what its status says.
    fn of(response: &Response) -> DeliveryOutcome {
        if let Some(outcome) = response.extensions().get::<DeliveryOutcome>() {
            return *outcome;
        }
        match response.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => DeliveryOutcome::RefusedAuth,
            StatusCode::REQUEST_TIMEOUT => DeliveryOutcome::Timeout,
            StatusCode::PAYLOAD_TOO_LARGE => DeliveryOutcome::TooLarge,
            StatusCode::SERVICE_UNAVAILABLE => DeliveryOutcome::Unavailable,
            status if status.is_client_error() => DeliveryOutcome::BadRequest,
            _ => DeliveryOutcome::Other,
        }
    }
}

/// Told of every delivery's outcome once it is answered. Called on the request path:
/// implementations must be quick and never block.
pub trait DeliveryObserver: Send + Sync + std::fmt::Debug {
    /// One delivery was answered.
    fn delivered(&self, outcome: DeliveryOutcome);
}

/// `response`, tagged with what became of its delivery.
pub(crate) fn tagged(mut response: Response, outcome: DeliveryOutcome) -> Response {
    response.extensions_mut().insert(outcome);
    response
}

/// `routes` answering 408 to a request not answered within `limit` (a body that never
/// comes, included). Layered inside [`observed`], so the 408 is counted.
pub(crate) fn timed<S: Clone + Send + Sync + 'static>(routes: Router<S>, limit: Duration) -> Router<S> {
    routes.route_layer(axum::middleware::from_fn(move |request: Request, next: Next| async move {
        match tokio::time::timeout(limit, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                tracing::warn!(?limit, "delivery not answered within the request timeout: 408");
                let body = axum::Json(serde_json::json!({ "error": "request timeout" }));
                tagged((StatusCode::REQUEST_TIMEOUT, body).into_response(), DeliveryOutcome::Timeout)
            }
        }
    }))
}

/// `routes` telling `observer` of each answer they give.
pub(crate) fn observed<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    observer: Arc<dyn DeliveryObserver>,
) -> Router<S> {
    routes.route_layer(axum::middleware::from_fn(move |request: Request, next: Next| {
        let observer = observer.clone();
        async move {
            let response = next.run(request).await;
            observer.delivered(DeliveryOutcome::of(&response));
            response
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Body;
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    use super::*;
    use crate::WebhookState;

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<DeliveryOutcome>>);

    impl DeliveryObserver for Seen {
        fn delivered(&self, outcome: DeliveryOutcome) {
            self.0.lock().unwrap().push(outcome);
        }
    }

    async fn deliver(state: WebhookState, method: &str, content_type: &str, body: String) {
        let request = Request::builder()
            .method(method)
            .uri(crate::app::EVENTGRID_PATH)
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap();
        crate::router(state).oneshot(request).await.unwrap();
    }

    fn event(id: &str, event_type: &str, secret: &str) -> String {
        serde_json::json!([{
            "id": id, "eventType": event_type,
            "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample-kv",
            "data": {"Id": format!("https://sample-kv.vault.azure.net/secrets/{secret}"), "VaultName": "sample-kv"}
        }])
        .to_string()
    }

    #[tokio::test]
    async fn each_delivery_is_told_once_with_its_outcome_and_healthz_is_not() {
        let seen = Arc::new(Seen::default());
        let (queue, _engine) = mpsc::channel(1);
        let state = WebhookState::new(queue).with_observer(seen.clone());
        let json = "application/json";
        deliver(state.clone(), "POST", json, event("e1", crate::eventgrid::SECRET_NEAR_EXPIRY, "s1")).await;
        deliver(state.clone(), "POST", json, event("e1", crate::eventgrid::SECRET_NEAR_EXPIRY, "s1")).await;
        deliver(state.clone(), "POST", json, event("e2", crate::eventgrid::SECRET_NEW_VERSION_CREATED, "s1")).await;
        deliver(state.clone(), "POST", "text/plain", "[]".to_owned()).await;
        deliver(state.clone(), "OPTIONS", json, String::new()).await;
        // The queue (capacity 1) is full: 503.
        deliver(state.clone(), "POST", json, event("e3", crate::eventgrid::SECRET_EXPIRED, "s2")).await;
        let health = Request::builder().uri(crate::app::HEALTHZ_PATH).body(Body::empty()).unwrap();
        crate::router(state).oneshot(health).await.unwrap();
        use DeliveryOutcome::*;
        assert_eq!(*seen.0.lock().unwrap(), [Queued, Ignored, Ignored, BadRequest, Probe, Unavailable]);
    }

    fn observed_state() -> (Arc<Seen>, WebhookState, mpsc::Receiver<kv_rotator_core::RotationRequest>) {
        let seen = Arc::new(Seen::default());
        let (queue, engine) = mpsc::channel(8);
        (seen.clone(), WebhookState::new(queue).with_observer(seen), engine)
    }

    #[tokio::test]
    async fn only_an_options_carrying_the_handshake_origin_counts_as_validation() {
        let (seen, state, _engine) = observed_state();
        deliver(state.clone(), "OPTIONS", "application/json", String::new()).await;
        let handshake = Request::builder()
            .method("OPTIONS")
            .uri(crate::app::EVENTGRID_PATH)
            .header("webhook-request-origin", "eventemitter.example.com")
            .body(Body::empty())
            .unwrap();
        let answer = crate::router(state).oneshot(handshake).await.unwrap();
        assert_eq!(answer.headers()["webhook-allowed-origin"], "eventemitter.example.com");
        assert_eq!(*seen.0.lock().unwrap(), [DeliveryOutcome::Probe, DeliveryOutcome::Validation]);
    }

    #[tokio::test]
    async fn a_delivery_from_a_vault_not_allowed_counts_as_refused_source_not_ignored() {
        let (seen, state, mut engine) = observed_state();
        let state = state.with_source_filter(crate::SourceFilter::only(["sample-kv"]));
        let near_expiry = crate::eventgrid::SECRET_NEAR_EXPIRY;
        let spoofed = event("e1", near_expiry, "s1").replace("sample-kv", "other-kv");
        // The common shape (fast path), and a CloudEvent (general path).
        deliver(state.clone(), "POST", "application/json", spoofed).await;
        let cloud = serde_json::json!({
            "specversion": "1.0", "id": "c1", "type": near_expiry,
            "source": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/other-kv",
            "data": {"Id": "https://sample-kv.vault.azure.net/secrets/s1", "VaultName": "sample-kv"}
        });
        deliver(state.clone(), "POST", "application/cloudevents+json", cloud.to_string()).await;
        // An allowed vault's event of a type not ours is still only ignored.
        let other_type = event("e2", crate::eventgrid::SECRET_NEW_VERSION_CREATED, "s1");
        deliver(state.clone(), "POST", "application/json", other_type).await;
        use DeliveryOutcome::*;
        assert_eq!(*seen.0.lock().unwrap(), [RefusedSource, RefusedSource, Ignored]);
        assert!(engine.try_recv().is_err(), "nothing queued");
    }

    #[tokio::test]
    async fn a_body_that_never_comes_is_answered_408_and_counts_as_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (seen, state, _engine) = observed_state();
        let state = state.with_request_timeout(std::time::Duration::from_millis(100));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, crate::router(state)).await });
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = "POST /api/eventgrid HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 512];
        let read = socket.read(&mut answer).await.unwrap();
        let status_line = String::from_utf8_lossy(&answer[..read]).lines().next().unwrap_or_default().to_owned();
        assert!(status_line.starts_with("HTTP/1.1 408"), "{status_line:?}");
        assert_eq!(*seen.0.lock().unwrap(), [DeliveryOutcome::Timeout]);
        server.abort();
    }

    #[test]
    fn an_untagged_408_counts_as_timeout() {
        let response = StatusCode::REQUEST_TIMEOUT.into_response();
        assert_eq!(DeliveryOutcome::of(&response), DeliveryOutcome::Timeout);
        assert_eq!(DeliveryOutcome::Timeout.as_str(), "timeout");
    }
}
