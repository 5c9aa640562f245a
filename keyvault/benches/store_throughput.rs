//! Throughput of `AzureSecretStore` against the dev vault, and the cost of the SDK path
//! over a raw HTTPS request to the same dev vault, measured in the same run.
//!
//! `cargo bench -p kv-rotator-keyvault --bench store_throughput` (a plain binary that
//! prints figures; nothing is asserted). Both paths use reqwest 0.13 with rustls, the
//! dev vault's CA and a pooled keep-alive connection; the raw path sends the request
//! with a bearer token and parses the JSON answer, the SDK path adds the pipeline
//! (challenge gate, bounded retry, per-try rate-limit policy with the limiter off,
//! bearer policy, request id and user agent headers) and the model deserialization.
//! The dev vault's throttle is off so both run flat out; rounds alternate between the
//! paths so drift on a shared machine hits both alike. `BENCH_OPS` sets operations per
//! round (default 2000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions, SeedSecret, API_VERSION, DEV_TOKEN};
use kv_rotator_keyvault::pipeline::ClientSettings;
use kv_rotator_keyvault::{NewSecretVersion, SecretStore};
use secrecy::SecretString;

const ROUNDS: usize = 3;
const CONCURRENCY: usize = 16;

/// One path under test: reads or writes one secret, `ops` times, `concurrency` at once.
#[derive(Clone)]
enum Path {
    Sdk(Arc<AzureSecretStore>),
    Raw(reqwest::Client, String),
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Get,
    Set,
}

impl Path {
    async fn once(&self, op: Op, i: usize) {
        match (self, op) {
            (Path::Sdk(store), Op::Get) => {
                store.get_latest("bench").await.expect("get");
            }
            (Path::Sdk(store), Op::Set) => {
                let new = NewSecretVersion {
                    value: SecretString::from(format!("value-{i}")),
                    tags: Default::default(),
                    content_type: None,
                    expires: None,
                    not_before: None,
                };
                store.set_secret(&format!("bench-sdk-{}", i % 50), new).await.expect("set");
            }
            (Path::Raw(http, base), op) => {
                let url = format!(
                    "{base}/secrets/{}?api-version={API_VERSION}",
                    if op == Op::Get { "bench" } else { "bench-set" }
                );
                let request = match op {
                    Op::Get => http.get(url),
                    Op::Set => http.put(url).json(&serde_json::json!({ "value": format!("value-{i}") })),
                };
                let response = request.bearer_auth(DEV_TOKEN).send().await.expect("send");
                assert!(response.status().is_success(), "{}", response.status());
                let body: serde_json::Value = response.json().await.expect("json");
                assert!(body["id"].is_string());
            }
        }
    }

    /// Runs `ops` operations with `concurrency` workers; returns the elapsed time.
    async fn run(&self, op: Op, ops: usize, concurrency: usize) -> Duration {
        let started = Instant::now();
        let workers: Vec<_> = (0..concurrency)
            .map(|w| {
                let path = self.clone();
                tokio::spawn(async move {
                    for i in (w..ops).step_by(concurrency) {
                        path.once(op, i).await;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("worker");
        }
        started.elapsed()
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let ops: usize = std::env::var("BENCH_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let vault = DevVault::start(DevVaultOptions { rate_limit: None, ..Default::default() }).await.expect("dev vault");
    vault.seed(SeedSecret { name: "bench".into(), value: "x".repeat(64), ..Default::default() }).expect("seed");
    let settings = ClientSettings { rate_limit: None, ..Default::default() };
    let sdk = Path::Sdk(Arc::new(AzureSecretStore::for_dev_vault_with(&vault, settings).expect("store")));
    let base = vault.endpoint().as_str().trim_end_matches('/').to_string();
    let raw = Path::Raw(vault.http_client().expect("client"), base);

    println!("kv-rotator-keyvault store throughput: dev vault over TLS on 127.0.0.1, {ops} operations per round, best of {ROUNDS} rounds");
    println!("{:<34} {:>12} {:>12} {:>14}", "case", "SDK ops/s", "raw ops/s", "SDK/raw time");
    for (label, op, concurrency) in [
        ("get latest, 1 at a time", Op::Get, 1),
        ("get latest, 16 at a time", Op::Get, CONCURRENCY),
        ("set (new version), 1 at a time", Op::Set, 1),
        ("set (new version), 16 at a time", Op::Set, CONCURRENCY),
    ] {
        // Warm up: connections, the challenge, the token.
        sdk.run(op, 50, concurrency).await;
        raw.run(op, 50, concurrency).await;
        let (mut best_sdk, mut best_raw) = (Duration::MAX, Duration::MAX);
        for _ in 0..ROUNDS {
            best_sdk = best_sdk.min(sdk.run(op, ops, concurrency).await);
            best_raw = best_raw.min(raw.run(op, ops, concurrency).await);
        }
        let rate = |d: Duration| ops as f64 / d.as_secs_f64();
        // One at a time, the difference in time per operation is the SDK's added latency.
        let added = if concurrency == 1 {
            let us = (best_sdk.as_secs_f64() - best_raw.as_secs_f64()) / ops as f64 * 1e6;
            format!("   SDK adds {us:.0} µs per operation")
        } else {
            String::new()
        };
        println!(
            "{label:<34} {:>12.0} {:>12.0} {:>13.2}x{added}",
            rate(best_sdk),
            rate(best_raw),
            best_sdk.as_secs_f64() / best_raw.as_secs_f64()
        );
    }
    vault.shutdown().await;
}
