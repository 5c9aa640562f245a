//! The dev vault failing on purpose, seen with raw HTTPS: the service's throttle (429
//! `Throttled` with `Retry-After`), injected errors per operation, fail-the-Nth-call,
//! dropped connections, added latency, and the optional state file (mode 0600).

use std::time::{Duration, Instant};

use kv_rotator_keyvault::devvault::{
    DevVault, DevVaultOptions, DevVaultStats, ErrorRule, Faults, Injected, Operation, RateLimit, API_VERSION, DEV_TOKEN,
};
use serde_json::{json, Value};

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(vault: &DevVault) -> Self {
        let base = vault.endpoint().as_str().trim_end_matches('/').to_string();
        Self { http: vault.http_client().unwrap(), base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}?api-version={API_VERSION}", self.base)
    }

    /// Status, `Retry-After` and JSON body; `Err` when the connection failed.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Option<String>, Value), reqwest::Error> {
        let response = request.bearer_auth(DEV_TOKEN).send().await?;
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        let bytes = response.bytes().await?;
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        Ok((status, retry_after, body))
    }

    async fn get(&self, name: &str) -> Result<(u16, Option<String>, Value), reqwest::Error> {
        self.send(self.http.get(self.url(&format!("/secrets/{name}")))).await
    }

    async fn set(&self, name: &str, value: &str) -> Result<(u16, Option<String>, Value), reqwest::Error> {
        self.send(self.http.put(self.url(&format!("/secrets/{name}"))).json(&json!({ "value": value }))).await
    }
}

#[tokio::test]
async fn over_the_rate_limit_answers_429_throttled_with_retry_after() {
    let limit = RateLimit { transactions: 20, per: Duration::from_secs(2) };
    let vault = DevVault::start(DevVaultOptions { rate_limit: Some(limit), ..Default::default() }).await.unwrap();
    let client = Client::new(&vault);
    let start = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..25 {
        statuses.push(client.set("busy", &format!("v{i}")).await.unwrap());
    }
    assert!(start.elapsed() < limit.per, "the burst must fit in one window for this test to mean anything");
    assert!(statuses[..20].iter().all(|(s, ..)| *s == 200), "the first 20 pass");
    for (status, retry_after, body) in &statuses[20..] {
        assert_eq!(*status, 429);
        let seconds: u64 = retry_after.as_deref().expect("Retry-After").parse().unwrap();
        assert!((1..=2).contains(&seconds), "Retry-After {seconds} within the 2 s window");
        assert_eq!(body["error"]["code"], "Throttled");
        assert_eq!(
            body["error"]["message"],
            "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached"
        );
    }
    assert_eq!(vault.stats(), DevVaultStats { requests: 25, throttled: 5, injected_errors: 0, dropped: 0 });

    // The window slides: once the oldest transactions leave it, requests pass again.
    tokio::time::sleep(limit.per).await;
    assert_eq!(client.get("busy").await.unwrap().0, 200);
    vault.shutdown().await;
}

#[tokio::test]
async fn the_default_limit_is_the_services() {
    assert_eq!(
        DevVaultOptions::default().rate_limit,
        Some(RateLimit { transactions: 2_000, per: Duration::from_secs(10) })
    );
    let zero = RateLimit { transactions: 0, per: Duration::from_secs(1) };
    let error = DevVault::start(DevVaultOptions { rate_limit: Some(zero), ..Default::default() }).await.unwrap_err();
    assert!(error.to_string().contains("admits nothing"), "{error}");
}

#[tokio::test]
async fn injected_errors_hit_only_their_operation_at_their_rate() {
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let client = Client::new(&vault);
    assert_eq!(client.set("s", "v").await.unwrap().0, 200);
    let rule = |spec: &str| spec.parse::<ErrorRule>().unwrap();
    vault.set_faults(Faults { errors: vec![rule("get:503=0.5"), rule("get:500=0.25")], ..Default::default() }).unwrap();

    let (mut ok, mut s500, mut s503) = (0, 0, 0);
    for _ in 0..400 {
        let (status, retry_after, body) = client.get("s").await.unwrap();
        match status {
            200 => ok += 1,
            500 => {
                s500 += 1;
                assert_eq!((retry_after, body["error"]["code"].as_str()), (None, Some("InternalServerError")));
            }
            503 => {
                s503 += 1;
                assert_eq!(
                    (retry_after.as_deref(), body["error"]["code"].as_str()),
                    (Some("1"), Some("ServiceUnavailable"))
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // Binomial(400, p): these bounds are more than 5 standard deviations wide.
    assert!((150..=250).contains(&s503), "503 at 50%: {s503}");
    assert!((60..=140).contains(&s500), "500 at 25%: {s500}");
    assert!((60..=140).contains(&ok), "the rest pass: {ok}");
    for _ in 0..20 {
        assert_eq!(client.set("s", "v").await.unwrap().0, 200, "set is not aimed at");
    }
    let stats = vault.stats();
    assert_eq!(stats.injected_errors, s500 + s503);
    assert_eq!(stats.requests, 421);

    vault.set_faults(Faults::default()).unwrap();
    assert_eq!(client.get("s").await.unwrap().0, 200, "faults can be turned off");
    let bad = Faults { errors: vec![rule("503=0.7"), rule("429=0.7")], ..Default::default() };
    assert!(vault.set_faults(bad).unwrap_err().to_string().contains("add up to"));
    vault.shutdown().await;
}

#[tokio::test]
async fn the_nth_call_fails_and_dropped_connections_are_io_errors() {
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let client = Client::new(&vault);
    vault.set_faults(Faults { fail_nth: Some((3, Injected::Status(429))), ..Default::default() }).unwrap();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(client.set("nth", "v").await.unwrap().0);
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200]);

    vault.set_faults(Faults { fail_nth: Some((1, Injected::Drop)), ..Default::default() }).unwrap();
    let error = client.get("nth").await.expect_err("the connection is dropped");
    assert!(!error.is_status(), "no HTTP answer: {error:?}");
    assert_eq!(client.get("nth").await.unwrap().0, 200, "a new connection works");

    let drop_sets = Faults {
        errors: vec![ErrorRule { operation: Some(Operation::Set), rate: 1.0, fault: Injected::Drop }],
        ..Default::default()
    };
    vault.set_faults(drop_sets).unwrap();
    assert!(client.set("nth", "never").await.is_err());
    assert_eq!(client.get("nth").await.unwrap().2["value"], "v", "a dropped write did not happen");
    assert_eq!(vault.stats().dropped, 2);
    vault.shutdown().await;
}

#[tokio::test]
async fn latency_is_added_to_every_answer() {
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let client = Client::new(&vault);
    client.set("slow", "v").await.unwrap();
    vault.set_faults(Faults { latency: Duration::from_millis(150), ..Default::default() }).unwrap();
    let start = Instant::now();
    for _ in 0..3 {
        assert_eq!(client.get("slow").await.unwrap().0, 200);
    }
    assert!(start.elapsed() >= Duration::from_millis(450), "three answers, 150 ms each at least");
    vault.shutdown().await;
}

#[cfg(unix)]
#[tokio::test]
async fn a_state_file_survives_a_restart_and_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.json");
    let options = || DevVaultOptions { state_file: Some(path.clone()), ..Default::default() };

    let vault = DevVault::start(options()).await.unwrap();
    let client = Client::new(&vault);
    client.set("kept", "first").await.unwrap();
    client.set("kept", "second").await.unwrap();
    client.set("gone", "x").await.unwrap();
    client.send(client.http.delete(client.url("/secrets/gone"))).await.unwrap();
    vault.shutdown().await;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    let vault = DevVault::start(options()).await.unwrap();
    let client = Client::new(&vault);
    assert_eq!(client.get("kept").await.unwrap().2["value"], "second");
    let (_, _, versions) = client.send(client.http.get(client.url("/secrets/kept/versions"))).await.unwrap();
    assert_eq!(versions["value"].as_array().unwrap().len(), 2);
    assert_eq!(client.set("gone", "y").await.unwrap().0, 409, "still soft-deleted after the restart");
    vault.shutdown().await;

    // A looser mode is tightened; a file that is not ours is refused with its path.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    DevVault::start(options()).await.unwrap().shutdown().await;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::write(&path, b"{\"something\": \"else\"}").unwrap();
    let error = DevVault::start(options()).await.unwrap_err().to_string();
    assert!(error.contains("vault.json") && error.contains("not a dev vault state file"), "{error}");
}
