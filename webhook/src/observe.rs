//! What became of each delivery, for whoever counts them (the worker's metrics), told
//! through [`DeliveryObserver`] so this crate knows nothing of the counter's type.
//!
//! The handlers tag their answers with a [`DeliveryOutcome`] where the status alone does
//! not say it (a 200 that queued rotations, one that queued none, a handshake); a layer
//! on the delivery routes reads the tag, or else the status, and tells the observer.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

/// What one delivery (a `POST` or an `OPTIONS` on a delivery path) came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryOutcome {
    /// 200, at least one rotation queued.
    Queued,
    /// 200, nothing queued: event types not ours, redeliveries, dropped events.
    Ignored,
    /// A validation handshake answered (Event Grid's, or the CloudEvents `OPTIONS` one).
    Validation,
    /// 401 or 403: the credential is missing or wrong.
    RefusedAuth,
    /// 400 (and any other 4xx but 401, 403 and 413): not a delivery we can read.
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
    pub const ALL: [DeliveryOutcome; 8] = [
        DeliveryOutcome::Queued,
        DeliveryOutcome::Ignored,
        DeliveryOutcome::Validation,
        DeliveryOutcome::RefusedAuth,
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
            DeliveryOutcome::Validation => "validation",
            DeliveryOutcome::RefusedAuth => "refused_auth",
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
        assert_eq!(*seen.0.lock().unwrap(), [Queued, Ignored, Ignored, BadRequest, Validation, Unavailable]);
    }
}
