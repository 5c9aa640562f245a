//! The webhook listener under abuse (issue 10, item 2): 1,000 connections trickling their
//! headers do not slow a good request down, and are closed after the header-read timeout,
//! as is an idle socket; a body that never comes gets 408 after the request timeout;
//! connections past `max_connections` wait until one closes; and
//! shutdown ends within its grace period while slow connections are still open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_rotator::service::{self, Background, RunningService};
use kv_rotator::targets::Targets;
use kv_rotator_config::{EngineConfig, WebhookConfig};
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::SecretStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header-read timeout of the trickling test.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

const SLOW_HEAD: &[u8] = b"POST /api/eventgrid HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

/// The dev vault, and the service on loopback with these `[webhook]` limits: header-read
/// timeout, request timeout and shutdown grace in seconds, and the connection cap. It has
/// an admin listener (for `/metrics`).
async fn start(header_read: u64, request: u64, max_connections: usize, grace: u64) -> (DevVault, RunningService) {
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
    let webhook = WebhookConfig {
        header_read_timeout_secs: header_read,
        request_timeout_secs: request,
        max_connections,
        shutdown_grace_secs: grace,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = service::start_with(
        store,
        Targets::default(),
        EngineConfig::default(),
        &webhook,
        Background { admin: Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()), ..Default::default() },
        listener,
    )
    .await
    .unwrap();
    (vault, running)
}

/// A whole `GET /healthz` on a new connection: its status line and how long it took.
async fn healthz(addr: std::net::SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut response))
        .await
        .expect("healthz answered within 10 s")
        .unwrap();
    let status = String::from_utf8_lossy(&response).lines().next().unwrap_or_default().to_owned();
    (status, started.elapsed())
}

/// The whole answer to `GET path` on a new connection.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

/// The median of `n` `/healthz` latencies, each asserted to be a 200.
async fn healthz_median(addr: std::net::SocketAddr, n: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..n {
        let (status, took) = healthz(addr).await;
        assert!(status.starts_with("HTTP/1.1 200"), "healthz answered {status:?}");
        times.push(took);
    }
    times.sort();
    times[n / 2]
}

/// Sends `SLOW_HEAD` then a byte every `every` until the server closes the socket (read
/// returns 0, or an error) or `cap` passes; returns when the server closed it, if it did.
async fn trickle(mut socket: TcpStream, every: Duration, cap: Duration) -> Option<Duration> {
    let started = Instant::now();
    if socket.write_all(SLOW_HEAD).await.is_err() {
        return Some(started.elapsed());
    }
    let mut buf = [0u8; 256];
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    while started.elapsed() < cap {
        tokio::select! {
            read = socket.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {} // a 408 or 400 before the close: keep reading
            },
            _ = tick.tick() => {
                if socket.write_all(b"a").await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_trickling_connections_neither_slow_a_good_request_nor_stay_open() {
    const ATTACKERS: usize = 1000;
    let (vault, running) = start(HEADER_TIMEOUT.as_secs(), 5, 2048, 2).await;
    let addr = running.webhook_addr;

    let baseline = healthz_median(addr, 7).await;

    // An idle socket, and one kept alive after a completed request.
    let idle_since = Instant::now();
    let idle = TcpStream::connect(addr).await.unwrap();
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();

    let connected = Arc::new(AtomicUsize::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..ATTACKERS {
        let connected = connected.clone();
        attackers.spawn(async move {
            let socket = TcpStream::connect(addr).await.unwrap();
            connected.fetch_add(1, Ordering::SeqCst);
            trickle(socket, Duration::from_millis(300), Duration::from_secs(15)).await
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected.load(Ordering::SeqCst) < ATTACKERS {
        assert!(Instant::now() < deadline, "the attackers did not connect within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let under_attack = healthz_median(addr, 7).await;

    let idle_closed = async move {
        let mut idle = idle;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the idle socket was not closed: {read:?}");
        idle_since.elapsed()
    };
    let kept_closed = async move {
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), kept.read_to_end(&mut response))
            .await
            .expect("the kept-alive socket was closed within 10 s")
            .ok();
        assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));
        idle_since.elapsed()
    };
    let (idle_after, kept_after) = tokio::join!(idle_closed, kept_closed);

    let mut closed = 0;
    let mut slowest = Duration::ZERO;
    while let Some(result) = attackers.join_next().await {
        if let Some(after) = result.unwrap() {
            closed += 1;
            slowest = slowest.max(after);
        }
    }
    let ratio = under_attack.as_secs_f64() / baseline.as_secs_f64().max(1e-6);
    println!(
        "healthz median: baseline {baseline:?}, under {ATTACKERS} trickling connections {under_attack:?} \
         (x{ratio:.1}); trickling sockets closed by the server: {closed}/{ATTACKERS}, the last after {slowest:?}; \
         idle socket closed {idle_after:?} after connecting, kept-alive one {kept_after:?} (header timeout {HEADER_TIMEOUT:?})"
    );
    assert!(under_attack < Duration::from_secs(2), "a good request took {under_attack:?} under attack");
    assert_eq!(closed, ATTACKERS, "every trickling socket is closed by the server");
    let slack = Duration::from_secs(4);
    assert!(slowest < HEADER_TIMEOUT + slack, "a trickling socket stayed open {slowest:?}");
    assert!(idle_after < HEADER_TIMEOUT + slack, "the idle socket stayed open {idle_after:?}");
    assert!(kept_after < HEADER_TIMEOUT + slack, "the kept-alive socket stayed open {kept_after:?}");

    running.shutdown().await.unwrap();
    vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_cap_waits_until_one_closes() {
    const CAP: usize = 4;
    let (vault, running) = start(30, 30, CAP, 1).await;
    let addr = running.webhook_addr;

    let mut holders = Vec::new();
    for _ in 0..CAP {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(SLOW_HEAD).await.unwrap();
        holders.push(socket);
    }
    // Let the server accept all of them.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let mut extra = TcpStream::connect(addr).await.unwrap(); // the kernel's backlog takes it
    extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    let early = tokio::time::timeout(Duration::from_secs(1), extra.read_to_end(&mut response)).await;
    assert!(early.is_err() && response.is_empty(), "connection {} was served past the cap", CAP + 1);

    drop(holders.pop());
    tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut response))
        .await
        .expect("served once a connection closed")
        .unwrap();
    let status = String::from_utf8_lossy(&response).lines().next().unwrap_or_default().to_owned();
    println!(
        "connection {} served {:?} after connecting, once one of {CAP} closed: {status}",
        CAP + 1,
        started.elapsed()
    );
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");

    running.shutdown().await.unwrap();
    vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_within_the_grace_period_while_slow_connections_are_open() {
    const SLOW: usize = 100;
    let grace = Duration::from_secs(1);
    // Header timeout far beyond the grace: only the grace can end these connections.
    let (vault, running) = start(60, 60, 1024, 1).await;
    let addr = running.webhook_addr;

    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..SLOW {
        let socket = TcpStream::connect(addr).await.unwrap();
        slow.spawn(trickle(socket, Duration::from_millis(300), Duration::from_secs(20)));
    }
    // A request whose body never comes: past its head, inside the handler's body read.
    let mut body_pending = TcpStream::connect(addr).await.unwrap();
    body_pending
        .write_all(b"POST /api/eventgrid HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), running.shutdown())
        .await
        .expect("shutdown ended within 15 s")
        .unwrap();
    let took = started.elapsed();
    let mut closed = 0;
    while let Some(result) = slow.join_next().await {
        closed += usize::from(result.unwrap().is_some());
    }
    println!("shutdown with {SLOW} trickling connections and a body never sent took {took:?} (grace {grace:?}); {closed}/{SLOW} closed by the server");
    assert!(took < grace + Duration::from_secs(2), "shutdown took {took:?}");
    assert_eq!(closed, SLOW);
    vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_comes_gets_408_after_the_request_timeout() {
    let (vault, running) = start(30, 1, 1024, 1).await;
    let started = Instant::now();
    let mut socket = TcpStream::connect(running.webhook_addr).await.unwrap();
    let head = "POST /api/eventgrid HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut response = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut response))
        .await
        .expect("answered within 5 s")
        .unwrap();
    let status = String::from_utf8_lossy(&response[..n]).lines().next().unwrap_or_default().to_owned();
    let took = started.elapsed();
    println!("a body never sent: {status:?} after {took:?} (request timeout 1s)");
    assert!(status.starts_with("HTTP/1.1 408"), "{status:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Counted as a delivery outcome of its own (the webhook answers its 408s inside its metrics).
    let metrics = get(running.admin_addr.unwrap(), "/metrics").await;
    assert!(metrics.contains(r#"kv_rotator_webhook_deliveries_total{outcome="timeout"} 1"#), "{metrics}");
    running.shutdown().await.unwrap();
    vault.shutdown().await;
}
