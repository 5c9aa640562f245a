//! Load benchmark of the webhook on loopback, next to a bare axum handler measured in
//! the same run: deliveries per second and p50/p99 latency, and the ratio of the two.
//! Prints figures; asserts nothing about speed.
//!
//! `cargo bench -p kv-rotator-webhook --bench webhook_load`
//! (`BENCH_SECS`, default 10, per target; `BENCH_CONCURRENCY`, default 32 connections;
//! `BENCH_IN_PROCESS`, default 20000).
//!
//! Each delivery is a distinct `SecretNearExpiry` of one event (so none is deduplicated)
//! for the allowed vault, sent with the shared key in the query and an Entra ID token in
//! `Authorization` to every target alike. The webhook runs as in production: authentication (a shared key
//! in one variant, an Entra ID RS256 token checked against a JWKS on loopback in the
//! other), the vault allowlist, dedup and coalescing, a queue drained by a consumer task.
//! The baseline reads the body and answers 200. The three targets take turns in
//! 500 ms slices, so drift in the machine's load falls on all of them alike.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use kv_rotator_webhook::{router, Authenticator, SharedKey, SourceFilter, WebhookState};
use secrecy::SecretString;

#[allow(dead_code)]
#[path = "../tests/common/entra.rs"]
mod entra;
mod support;

use support::delivery;

const KEY: &str = "bench-shared-key-0123456789";

#[derive(Clone, Copy)]
enum Target {
    Bare,
    SharedKey,
    EntraId,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Bare => "bare axum handler (200)",
            Target::SharedKey => "webhook, shared key",
            Target::EntraId => "webhook, Entra ID token",
        }
    }
}

/// What one target got over all its slices.
#[derive(Default)]
struct Figures {
    delivered: u64,
    busy: Duration,
    latencies: Vec<Duration>,
    errors: u64,
}

impl Figures {
    fn per_sec(&self) -> f64 {
        self.delivered as f64 / self.busy.as_secs_f64()
    }

    fn quantile(&mut self, q: f64) -> Duration {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 * q) as usize).min(self.latencies.len().saturating_sub(1));
        self.latencies.get(i).copied().unwrap_or_default()
    }
}

/// Event ids and versions are never reused, so no delivery is deduplicated.
static NEXT: AtomicU64 = AtomicU64::new(0);

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Drives `concurrency` connections at `url` for `duration`, adding to `figures`.
async fn load(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    concurrency: usize,
    duration: Duration,
    figures: &mut Figures,
) {
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, token, errors) =
                (client.clone(), url.to_owned(), token.map(str::to_owned), errors.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while start.elapsed() < duration {
                    let mut request = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("aeg-event-type", "Notification")
                        .body(delivery(NEXT.fetch_add(1, Ordering::Relaxed)));
                    if let Some(token) = &token {
                        request = request.bearer_auth(token);
                    }
                    let sent = Instant::now();
                    match request.send().await {
                        Ok(response) if response.status() == StatusCode::OK => {
                            let _ = response.bytes().await;
                            latencies.push(sent.elapsed());
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    for task in tasks {
        let latencies = task.await.unwrap();
        figures.delivered += latencies.len() as u64;
        figures.latencies.extend(latencies);
    }
    figures.busy += start.elapsed();
    figures.errors += errors.load(Ordering::Relaxed);
}

fn webhook_state(auth: Authenticator) -> WebhookState {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 16);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    WebhookState::new(tx).with_auth(auth).with_source_filter(SourceFilter::only([support::VAULT]))
}

/// Mean time of one delivery through `app` in-process (no sockets): what the handler
/// itself costs, next to the same figure for the bare handler.
async fn in_process(app: Router, token: Option<&str>, query: &str, n: u64) -> Duration {
    use tower::ServiceExt;
    let start = Instant::now();
    for _ in 0..n {
        let mut request = axum::http::Request::post(format!("/api/eventgrid{query}"))
            .header("content-type", "application/json")
            .header("aeg-event-type", "Notification");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(axum::body::Body::from(delivery(NEXT.fetch_add(1, Ordering::Relaxed)))).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // Let the queue's consumer run, as it would between requests.
        tokio::task::yield_now().await;
    }
    start.elapsed() / n as u32
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let concurrency = env("BENCH_CONCURRENCY", 32) as usize;

    let bare_app = Router::new().route("/api/eventgrid", post(|_body: Bytes| async { StatusCode::OK }));
    let shared = SharedKey::new(&SecretString::from(KEY.to_owned()), None).unwrap();
    let key_app = router(webhook_state(Authenticator::SharedKey(Arc::new(shared))));
    let signer = entra::Signer::generate("bench");
    let idp = entra::IdentityProvider::start(vec![signer.jwk()]).await;
    let entra_app = router(webhook_state(idp.authenticator()));
    let token = signer.token(&entra::v1_claims());

    let n = env("BENCH_IN_PROCESS", 20_000);
    let query = format!("?key={KEY}");
    let _ = in_process(entra_app.clone(), Some(&token), "", 10).await; // JWKS fetch
    println!("in process (oneshot, no sockets), mean per delivery over {n}:");
    for (name, app, token, query) in [
        (Target::Bare.name(), bare_app.clone(), None, ""),
        (Target::SharedKey.name(), key_app.clone(), None, query.as_str()),
        (Target::EntraId.name(), entra_app.clone(), Some(token.as_str()), ""),
    ] {
        // On a worker thread, as a handler under load runs.
        let (token, query) = (token.map(str::to_owned), query.to_owned());
        let mean = tokio::spawn(async move { in_process(app, token.as_deref(), &query, n).await }).await.unwrap();
        println!("  {name:<26} {:>7.1} µs", mean.as_secs_f64() * 1e6);
    }

    let bare = serve(bare_app).await;
    let with_key = serve(key_app).await;
    let with_entra = serve(entra_app).await;

    let secs = env("BENCH_SECS", 10);
    let slice = Duration::from_millis(env("BENCH_SLICE_MS", 500));
    println!(
        "webhook load: {concurrency} connections, {secs} s per target in {} ms slices, {} CPUs, loopback",
        slice.as_millis(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let targets = [Target::Bare, Target::SharedKey, Target::EntraId];
    // Every target gets the same requests, key and token included (each ignores what it
    // does not check), so the difference is the server's work alone.
    let urls = [bare, with_key, with_entra].map(|addr| format!("http://{addr}/api/eventgrid?key={KEY}"));
    let tokens = [Some(token.as_str()); 3];
    let clients: Vec<reqwest::Client> =
        (0..3).map(|_| reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap()).collect();
    // Warm-up: connections, the JWKS fetch, the allocator, the dedup sets' growth.
    for i in 0..3 {
        load(&clients[i], &urls[i], tokens[i], concurrency, Duration::from_secs(1), &mut Figures::default()).await;
    }
    // Short slices, the targets' order rotating, so load from other processes on the
    // machine falls on all three alike.
    let mut figures: [Figures; 3] = Default::default();
    let slices = (secs * 1000 / slice.as_millis() as u64).max(1) as usize;
    for n in 0..slices * 3 {
        let i = (n + n / 3) % 3;
        load(&clients[i], &urls[i], tokens[i], concurrency, slice, &mut figures[i]).await;
    }
    let bare_rate = figures[0].per_sec();
    for (i, target) in targets.into_iter().enumerate() {
        let f = &mut figures[i];
        let (p50, p99) = (f.quantile(0.50), f.quantile(0.99));
        println!(
            "  {:<26} {:>8.0} deliveries/s  {:.2}x bare   p50 {:>5.2} ms   p99 {:>5.2} ms   errors {}",
            target.name(),
            f.per_sec(),
            f.per_sec() / bare_rate,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            f.errors
        );
    }
}
