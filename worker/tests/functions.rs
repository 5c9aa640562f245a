//! `kv-rotator functions`, the Azure Functions custom handler, driven as the Functions host
//! drives it: the binary started with `FUNCTIONS_CUSTOMHANDLER_PORT`, real-shaped invocation
//! payloads POSTed to `/{function}` (`{"Data", "Metadata"}`, as on Microsoft's "Azure
//! Functions custom handlers" page), answers read as the host reads them (`Outputs`,
//! `Logs`, `ReturnValue`; a non-2xx fails the invocation). Against the dev vault and real
//! targets (an htpasswd file; the local PostgreSQL for the HTTP trigger), checking the new
//! versions in the vault and that the new passwords log in; with `[notifications]`, an
//! invocation answers once its rotation's CloudEvent was delivered.
//!
//! Size: ~690 lines, all tests: 7 of the handler (one with a slow notification sink), and
//! ~280 lines above them playing the Functions host (the process, each trigger's payload)
//! that every test uses; each file under tests/ is one more binary linking the whole
//! worker.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::devsite::DevSite;
use common::proc::Proc;
use kv_rotator_keyvault::devvault::Faults;
use kv_rotator_keyvault::StoreError;
use serde_json::{json, Value};
use time::OffsetDateTime;

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");
const LEASE: &str = "kv-rotator-engine-lease";

/// A dev vault and an htpasswd target `site`, and the handler's configuration for them.
struct Site {
    dev: DevSite,
}

impl std::ops::Deref for Site {
    type Target = DevSite;

    fn deref(&self) -> &DevSite {
        &self.dev
    }
}

impl Site {
    /// The site, configured as `config.toml` (the name host.json gives), with `extra`
    /// configuration (more targets).
    async fn new(extra: &str) -> Site {
        let dev = DevSite::start().await;
        let config = format!(
            "{}[engine]\ninitial_backoff_ms = 10\nmax_backoff_ms = 50\nmax_attempts = 3\n\
             [lease]\nttl_secs = 4\nsettle_ms = 200\n[webhook]\nmax_body_bytes = 16384\n{}{extra}",
            dev.vault_toml(),
            dev.htpasswd_target_toml()
        );
        std::fs::write(dev.dir.path().join("config.toml"), config).unwrap();
        Site { dev }
    }

    async fn versions(&self, name: &str) -> usize {
        match self.store.list_versions(name).await {
            Ok(versions) => versions.len(),
            Err(StoreError::NotFound { .. }) => 0,
            Err(e) => panic!("{e}"),
        }
    }

    async fn journals(&self) -> Vec<String> {
        let all = self.store.list_secrets().await.unwrap();
        all.into_iter().filter(|p| p.name.starts_with("kv-rotator-pending-")).map(|p| p.name).collect()
    }

    /// Whether some engine's lease version is enabled now.
    async fn lease_enabled(&self) -> bool {
        match self.store.list_versions(LEASE).await {
            Ok(versions) => versions.iter().any(|v| v.enabled),
            Err(StoreError::NotFound { .. }) => false,
            Err(e) => panic!("{e}"),
        }
    }

    /// The handler, as the Functions host starts it (host.json's arguments, the port).
    ///
    /// The host hands the handler a port number, never a listener, so the test does the
    /// same: a free port is looked up, and if another process takes it before the handler
    /// binds it (the handler then exits: "cannot bind"), the start is retried on another.
    async fn handler(&self, args: &[&str]) -> Handler {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            // host.json's arguments as they are; its `config.toml` is the site's (the working
            // directory is the app's root).
            let mut command = Command::new(BIN);
            command
                .args(host_arguments())
                .args(args)
                .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
                .env("RUST_LOG", "info")
                .current_dir(self.dir.path());
            let mut proc = Proc::spawn(&mut command);
            if answers(&mut proc, &client, port).await {
                return Handler { proc, port, client };
            }
        }
        panic!("the handler found its port taken three times");
    }

    fn vault_host(&self) -> String {
        self.vault.host()
    }
}

/// Whether the handler on `port` answers, as the host pings it (at most 60 s); `false` if
/// it exited because the port was taken. Any other exit panics with its output.
async fn answers(proc: &mut Proc, client: &reqwest::Client, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = proc.exited() {
            let output = proc.output();
            assert!(output.contains("cannot bind"), "the handler exited early with {status}:\n{output}");
            return false;
        }
        // Only once it bound the port (it says so): before, another process may answer there.
        let bound = proc.output().contains("custom handler listening");
        if bound && client.get(format!("http://127.0.0.1:{port}/")).send().await.is_ok() {
            return true;
        }
        assert!(Instant::now() < deadline, "handler not listening:\n{}", proc.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `deploy/functions`, the app the Functions host runs.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/functions")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The handler's arguments in `host.json`.
fn host_arguments() -> Vec<String> {
    let host = read_json(&deploy_dir().join("host.json"));
    let arguments = host["customHandler"]["description"]["arguments"].as_array().expect("arguments");
    arguments.iter().map(|a| a.as_str().expect("string arguments").to_owned()).collect()
}

struct Handler {
    proc: Proc,
    port: u16,
    client: reqwest::Client,
}

/// What the host gets back: the status, and the body as JSON (`ReturnValue`'s text parsed).
struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    fn return_value(&self) -> Value {
        serde_json::from_str(self.body["ReturnValue"].as_str().expect("ReturnValue is a string")).unwrap()
    }

    fn logs(&self) -> String {
        self.body["Logs"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect::<Vec<_>>().join("\n")
    }

    /// The HTTP output binding `res`: (status, body as JSON).
    fn res(&self) -> (u64, Value) {
        let res = &self.body["Outputs"]["res"];
        assert_eq!(res["statusCode"], res["status"], "{res}");
        assert_eq!(res["headers"]["Content-Type"], "application/json");
        (res["statusCode"].as_u64().unwrap(), serde_json::from_str(res["body"].as_str().unwrap()).unwrap())
    }
}

impl Handler {
    /// POST /{function} with a raw body, as the host does (its headers included).
    async fn post_raw(&self, function: &str, body: String) -> Reply {
        let response = self
            .client
            .post(format!("http://127.0.0.1:{}/{function}", self.port))
            .header("content-type", "application/json")
            .header("x-azure-functions-invocationid", "9b3c64fa-6b3d-4a8f-9d50-4f1c1e7d2a11")
            .header("x-azure-functions-hostversion", "4.1037.0.0")
            .header("user-agent", "Azure-Functions-Custom-Handler/4.1037.0.0")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}:\n{}", self.proc.output()));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        Reply { status, body }
    }

    async fn invoke(&self, function: &str, payload: Value) -> Reply {
        self.post_raw(function, payload.to_string()).await
    }
}

fn sys(method: &str) -> Value {
    json!({ "MethodName": method, "UtcNow": "2025-06-01T10:00:00.1234567Z", "RandGuid": "6b0e2f0e-3d5e-4d4f-9a7b-0d1c2b3a4f5e" })
}

/// A Key Vault `SecretNearExpiry` event, Event Grid schema, as Key Vault publishes it.
fn near_expiry(site: &Site, secret: &str, version: &str) -> Value {
    let vault = site.store.vault_name().to_owned();
    let mut event = kv_rotator::cli::seed::near_expiry_delivery(
        &vault,
        &site.vault_host(),
        secret,
        version,
        OffsetDateTime::now_utc() + time::Duration::days(3),
    );
    event.as_array_mut().unwrap().remove(0)
}

/// The Event Grid trigger's invocation: the event under the binding name `event`, in the
/// form given, and the binding data (`data`) in `Metadata`, as the host sends it.
fn eventgrid_invocation(event: &Value, form: &str) -> Value {
    let data = match form {
        "object" => event.clone(),
        "string" => Value::String(event.to_string()),
        "twice" => Value::String(Value::String(event.to_string()).to_string()),
        other => panic!("{other}"),
    };
    json!({ "Data": { "event": data }, "Metadata": { "data": event["data"], "sys": sys("eventgrid") } })
}

fn timer_invocation(past_due: bool) -> Value {
    json!({
        "Data": { "timer": {
            "Schedule": { "AdjustForDST": true },
            "ScheduleStatus": {
                "Last": "2025-06-01T09:45:00+00:00", "Next": "2025-06-01T10:00:00+00:00",
                "LastUpdated": "2025-06-01T09:45:00.0095632+00:00"
            },
            "IsPastDue": past_due
        } },
        "Metadata": { "sys": sys("sweep") }
    })
}

/// The identity the host attaches to a request that passed the function key `key`.
fn key_identity(key: &str) -> Value {
    json!({
        "AuthenticationType": "WebJobsAuthLevel", "IsAuthenticated": true, "Actor": null,
        "BootstrapContext": null, "Label": null, "Name": null,
        "NameClaimType": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
        "RoleClaimType": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role",
        "Claims": [
            { "Issuer": "LOCAL AUTHORITY", "OriginalIssuer": "LOCAL AUTHORITY", "Properties": {},
              "Type": "http://schemas.microsoft.com/2017/07/functions/claims/authlevel", "Value": "Function",
              "ValueType": "http://www.w3.org/2001/XMLSchema#string" },
            { "Issuer": "LOCAL AUTHORITY", "OriginalIssuer": "LOCAL AUTHORITY", "Properties": {},
              "Type": "http://schemas.microsoft.com/2017/07/functions/claims/keyid", "Value": key,
              "ValueType": "http://www.w3.org/2001/XMLSchema#string" }
        ]
    })
}

/// The HTTP trigger's invocation (`enableForwardingHttpRequest` false): the request under
/// `req`, its body as text.
fn http_invocation(method: &str, body: Option<&str>, identities: Value) -> Value {
    let mut req = json!({
        "Url": "https://kvr-func.azurewebsites.net/api/rotate",
        "Method": method,
        "Query": {},
        "Headers": { "Content-Type": ["application/json"], "Host": ["kvr-func.azurewebsites.net"] },
        "Params": {},
        "Identities": identities,
    });
    if let Some(body) = body {
        req["Body"] = Value::String(body.to_owned());
    }
    json!({ "Data": { "req": req }, "Metadata": { "Query": {}, "Headers": req["Headers"], "sys": sys("rotate") } })
}

/// `deploy/functions` and the handler agree: the functions it serves, their binding names,
/// the HTTP trigger's key, the deadlines under the host's and Event Grid's timeouts, and a
/// configuration file that loads.
#[test]
fn deploy_functions_is_what_the_handler_serves() {
    use kv_rotator::cli::functions::{DEFAULT_EVENT_DEADLINE_SECS, DEFAULT_SWEEP_DEADLINE_SECS};
    use kv_rotator::functions as f;
    let dir = deploy_dir();
    let host = read_json(&dir.join("host.json"));
    assert_eq!(host["version"], "2.0");
    assert_eq!(host["customHandler"]["description"]["defaultExecutablePath"], "kv-rotator");
    assert_eq!(&host_arguments()[..3], ["functions", "--config", "config.toml"]);
    // The HTTP trigger gets the invocation payload (its identities), not the raw request.
    assert_eq!(host["customHandler"]["enableForwardingHttpRequest"], false);
    assert_eq!(host["extensionBundle"]["id"], "Microsoft.Azure.Functions.ExtensionBundle");
    assert_eq!(host["extensionBundle"]["version"], "[4.*, 5.0.0)");
    let timeout: Vec<u64> =
        host["functionTimeout"].as_str().unwrap().split(':').map(|part| part.parse().unwrap()).collect();
    let timeout = timeout[0] * 3600 + timeout[1] * 60 + timeout[2];
    assert!(DEFAULT_SWEEP_DEADLINE_SECS + 30 <= timeout, "the sweep must answer before functionTimeout");
    const { assert!(DEFAULT_EVENT_DEADLINE_SECS < 30, "Event Grid waits 30 s for an answer") };

    let mut folders: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    folders.sort();
    assert_eq!(folders, [f::EVENTGRID_FUNCTION, f::ROTATE_FUNCTION, f::SWEEP_FUNCTION]);
    let bindings = |function: &str| read_json(&dir.join(function).join("function.json"))["bindings"].clone();
    assert_eq!(
        bindings(f::EVENTGRID_FUNCTION),
        json!([{ "type": "eventGridTrigger", "direction": "in", "name": f::EVENT_BINDING }])
    );
    let http = bindings(f::ROTATE_FUNCTION);
    assert_eq!(
        http[0],
        json!({ "type": "httpTrigger", "direction": "in", "name": f::REQUEST_BINDING, "authLevel": "function", "methods": ["post"] })
    );
    assert_eq!(http[1], json!({ "type": "http", "direction": "out", "name": f::RESPONSE_BINDING }));
    let timer = &bindings(f::SWEEP_FUNCTION)[0];
    assert_eq!((&timer["type"], &timer["name"]), (&json!("timerTrigger"), &json!(f::TIMER_BINDING)));
    assert_eq!(timer["schedule"].as_str().unwrap().split_whitespace().count(), 6, "NCRONTAB has six fields");

    let config =
        kv_rotator_config::load(Some(dir.join("config.toml").as_path())).expect("deploy/functions/config.toml");
    assert!(config.webhook.auth.is_none(), "the Functions host authenticates; [webhook.auth] would mislead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventgrid_rotates_the_event_in_every_shape_the_host_hands_it_over() {
    let site = Site::new("").await;
    let handler = site.handler(&["--lease-idle-secs", "1"]).await;
    for (i, form) in ["object", "string", "twice", "cloudevent"].into_iter().enumerate() {
        let (secret, user) = (format!("eg-secret-{i}"), format!("eg-user-{i}"));
        let (v1, old) = site.user(&secret, &user).await;
        let mut event = near_expiry(&site, &secret, &v1);
        let payload = if form == "cloudevent" {
            // A subscription with the CloudEvents 1.0 schema hands over the event in that shape.
            event = json!({
                "specversion": "1.0", "id": event["id"], "source": event["topic"], "subject": secret,
                "type": "Microsoft.KeyVault.SecretNearExpiry", "time": event["eventTime"], "data": event["data"],
            });
            eventgrid_invocation(&event, "object")
        } else {
            eventgrid_invocation(&event, form)
        };
        let reply = handler.invoke("eventgrid", payload.clone()).await;
        assert_eq!(reply.status, 200, "{form}: {}", reply.body);
        assert!(reply.body["Outputs"].as_object().unwrap().is_empty());
        let result = &reply.return_value()["events"][0];
        assert_eq!(result["result"], "rotate", "{form}: {result}");
        assert_eq!(result["eventId"], event["id"]);
        let rotation = &result["rotation"];
        assert_eq!(rotation["outcome"], "rotated", "{form}: {rotation}");
        assert_eq!(rotation["triggerKind"], "event_grid");
        assert_eq!(rotation["oldVersion"], v1.as_str());
        assert!(reply.logs().contains(&format!("{secret}: rotated {v1} -> ")), "{}", reply.logs());
        // The vault has the new version, and it is the password the target takes.
        let latest = site.store.get_latest(&secret).await.unwrap();
        assert_eq!(rotation["newVersion"], latest.version.as_str());
        assert!(latest.properties.tags.contains_key("rotation-id"));
        assert!(site.logs_in(&user, &latest.value).await, "{form}: the new password does not log in");
        assert!(!site.logs_in(&user, &old).await, "{form}: the old password still logs in");

        // Event Grid redelivers (its response timeout, a 500): the same rotation, not a second one.
        let again = handler.invoke("eventgrid", payload).await;
        assert_eq!(again.status, 200);
        assert_eq!(again.return_value()["events"][0]["rotation"]["outcome"], "already_rotated", "{}", again.body);
        assert_eq!(site.versions(&secret).await, 2);
    }
    assert!(site.journals().await.is_empty());
    // Idle for longer than --lease-idle-secs: the instance lets the lease go.
    let deadline = Instant::now() + Duration::from_secs(20);
    while site.lease_enabled().await {
        assert!(Instant::now() < deadline, "the lease was not released when idle:\n{}", handler.proc.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = handler.proc.terminate();
    assert!(output.contains("engine lease released"), "{output}");
    assert!(output.contains("process hardening: core dumps disabled"), "{output}");
    site.dev.vault.shutdown().await;
}

/// A notification sink on 127.0.0.1 that answers each CloudEvent only after `delay`, and
/// records it once it has answered: the events the handler's notifier has delivered.
async fn slow_sink(delay: Duration) -> (Arc<Mutex<Vec<Value>>>, String) {
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let record = delivered.clone();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |body: axum::body::Bytes| {
            let record = record.clone();
            async move {
                tokio::time::sleep(delay).await;
                record.lock().unwrap().push(serde_json::from_slice::<Value>(&body).unwrap());
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (delivered, url)
}

/// An instance may be frozen or recycled once it answered, and the notification queue
/// lives in its memory: the invocation answers only once its rotation's CloudEvent is
/// delivered, even to a sink that takes its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_answers_once_its_rotations_cloudevent_was_delivered() {
    let (delivered, url) = slow_sink(Duration::from_millis(1500)).await;
    let site = Site::new(&format!("[notifications.sink]\nkind = \"webhook\"\nurl = \"{url}\"\n")).await;
    let (v1, _) = site.user("notified-secret", "notified").await;
    let handler = site.handler(&[]).await;
    let reply =
        handler.invoke("eventgrid", eventgrid_invocation(&near_expiry(&site, "notified-secret", &v1), "object")).await;
    let delivered_at_answer = delivered.lock().unwrap().clone();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let rotation = &reply.return_value()["events"][0]["rotation"];
    assert_eq!(rotation["outcome"], "rotated", "{rotation}");
    assert_eq!(
        delivered_at_answer.len(),
        1,
        "the CloudEvent was not delivered when the invocation answered: {delivered_at_answer:?}\n{}",
        handler.proc.output()
    );
    let event = &delivered_at_answer[0];
    assert_eq!(event["type"], "kv-rotator.rotation.succeeded");
    assert_eq!(event["subject"], "notified-secret");
    assert_eq!(event["data"]["version"], rotation["newVersion"], "{event}");
    assert_eq!(event["data"]["previousVersion"], v1.as_str(), "{event}");
    handler.proc.terminate();
    site.dev.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_get_a_clear_error_and_change_nothing() {
    let site = Site::new("").await;
    let (v1, password) = site.user("quiet-secret", "quiet").await;
    let handler = site.handler(&[]).await;
    let event = near_expiry(&site, "quiet-secret", &v1);

    // Not an invocation at all: the invocation fails, naming what is wrong.
    let refused: [(&str, String, u16, &str); 9] = [
        ("eventgrid", "not json".to_owned(), 400, "not JSON"),
        ("eventgrid", "[1]".to_owned(), 400, "not a JSON object"),
        ("eventgrid", json!({ "Metadata": {} }).to_string(), 400, "no Data"),
        ("eventgrid", json!({ "Data": {} }).to_string(), 400, "Data has no event"),
        ("eventgrid", json!({ "Data": { "event": 7 } }).to_string(), 400, "not an event"),
        ("eventgrid", json!({ "Data": { "event": "{not json" } }).to_string(), 400, "not JSON"),
        ("rotate", json!({ "Data": { "request": {} } }).to_string(), 400, "Data has no req"),
        ("no-such-function", eventgrid_invocation(&event, "object").to_string(), 404, "no such function"),
        // Over the limit (4 x webhook.max_body_bytes: an event may come twice encoded).
        ("eventgrid", "x".repeat(70 * 1024), 413, ""),
    ];
    for (function, body, status, error) in refused {
        let response = handler
            .client
            .post(format!("http://127.0.0.1:{}/{function}", handler.port))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{function} {error}");
        let text = response.text().await.unwrap();
        if !error.is_empty() {
            let body: Value = serde_json::from_str(&text).unwrap();
            assert!(body["error"].as_str().unwrap().contains(error), "{error}: {body}");
        }
    }
    let get = handler.client.get(format!("http://127.0.0.1:{}/eventgrid", handler.port)).send().await.unwrap();
    assert_eq!(get.status().as_u16(), 405);

    // Events that are understood but unusable: acknowledged (redelivery cannot help), each
    // with its reason, none rotated.
    let mut other_vault = event.clone();
    other_vault["topic"] =
        json!("/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/someone-elses-kv");
    other_vault["data"]["VaultName"] = json!("someone-elses-kv");
    other_vault["data"]["Id"] = json!(format!("https://someone-elses-kv.vault.azure.net/secrets/quiet-secret/{v1}"));
    let mut forged_id = event.clone();
    forged_id["id"] = json!("line\nforged");
    let mut no_data = event.clone();
    no_data["data"] = json!({});
    let mut new_version = event.clone();
    new_version["eventType"] = json!("Microsoft.KeyVault.SecretNewVersionCreated");
    let validation = json!({
        "id": "v-1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "topic": event["topic"],
        "data": { "validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6" }, "dataVersion": "1", "metadataVersion": "1",
    });
    let cases = [
        (other_vault, "rejected", "someone-elses-kv"),
        (forged_id, "rejected", "is not an event id"),
        (no_data, "rejected", ""),
        (validation, "rejected", "answers the handshake itself"),
        (new_version, "ignored", ""),
    ];
    for (event, result, reason) in cases {
        let reply = handler.invoke("eventgrid", eventgrid_invocation(&event, "string")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let got = &reply.return_value()["events"][0];
        assert_eq!(got["result"], result, "{got}");
        assert!(got["reason"].as_str().unwrap_or("").contains(reason), "{got}");
        assert!(!reply.logs().is_empty());
    }

    // The HTTP trigger: the caller is told, through `res`, what is wrong with its request.
    let key = json!([key_identity("ops")]);
    let anonymous = json!([{ "AuthenticationType": null, "IsAuthenticated": false, "Claims": [] }]);
    let secret_body = r#"{"secret": "quiet-secret"}"#;
    let http_cases = [
        (http_invocation("GET", None, key.clone()), 405, "POST"),
        (http_invocation("POST", Some(secret_body), anonymous), 401, "authenticated identity"),
        (http_invocation("POST", Some(secret_body), json!([])), 401, "authenticated identity"),
        (http_invocation("POST", None, key.clone()), 400, "empty body"),
        (http_invocation("POST", Some("{oops"), key.clone()), 400, "not JSON"),
        (http_invocation("POST", Some(r#"{"secret": "a/b"}"#), key.clone()), 400, "not a Key Vault secret name"),
        (
            http_invocation("POST", Some(r#"{"secret": "quiet-secret", "all": true}"#), key.clone()),
            400,
            "unknown field",
        ),
        (http_invocation("POST", Some(r#"{"secret": "no-such-secret"}"#), key.clone()), 404, "no secret"),
    ];
    for (payload, status, error) in http_cases {
        let reply = handler.invoke("rotate", payload).await;
        assert_eq!(reply.status, 200, "the invocation itself succeeds: {}", reply.body);
        let (got, body) = reply.res();
        assert_eq!(got, status, "{body}");
        assert!(body["error"].as_str().unwrap().contains(error), "{error}: {body}");
    }

    // Nothing changed: one version, no journal, the password still works, and no engine
    // lease was even claimed.
    assert_eq!(site.versions("quiet-secret").await, 1);
    assert!(site.journals().await.is_empty());
    assert!(site.logs_in("quiet", &password).await);
    assert_eq!(site.versions(LEASE).await, 0, "a bad payload claimed the engine lease");
    handler.proc.terminate();
    site.dev.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timer_sweep_finishes_a_rotation_that_outlived_its_invocation() {
    let site = Site::new("").await;
    let (v1, old) = site.user("slow-secret", "slow").await;
    // A slow vault, and an invocation that waits one second only.
    site.vault.set_faults(Faults { latency: Duration::from_millis(250), ..Default::default() }).unwrap();
    let first = site.handler(&["--event-deadline-secs", "1", "--lease-idle-secs", "60"]).await;
    let reply =
        first.invoke("eventgrid", eventgrid_invocation(&near_expiry(&site, "slow-secret", &v1), "object")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let rotation = &reply.return_value()["events"][0]["rotation"];
    assert_eq!(rotation["outcome"], "in_progress", "{rotation}");
    assert!(reply.logs().contains("still rotating at the deadline"), "{}", reply.logs());

    // It goes on after the answer; the instance is torn down once its journal is written.
    let deadline = Instant::now() + Duration::from_secs(30);
    while site.journals().await.is_empty() {
        assert!(Instant::now() < deadline, "no journal record:\n{}", first.proc.output());
    }
    let output = first.proc.sigkill();
    site.vault.set_faults(Faults::default()).unwrap();
    assert_eq!(site.versions("slow-secret").await, 1, "finished before the kill:\n{output}");
    let journal = site.journals().await.pop().expect("the journal record survives the instance");
    let pending = site.store.get_latest(&journal).await.unwrap().value;
    assert!(site.logs_in("slow", &old).await || site.logs_in("slow", &pending).await, "the invariant");

    // The next instance's timer: refused while the dead instance's lease has not lapsed
    // (the invocation fails, the timer fires again), then it resumes the journal.
    let second = site.handler(&[]).await;
    let mut refused = 0;
    let reply = loop {
        let reply = second.invoke("sweep", timer_invocation(refused > 0)).await;
        if reply.status != 503 {
            break reply;
        }
        assert!(reply.body["error"].as_str().unwrap().contains("engine lease"), "{}", reply.body);
        refused += 1;
        assert!(refused < 30, "still refused:\n{}", second.proc.output());
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(refused > 0, "the dead instance's lease did not hold the next one off");
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Two requests for one rotation: the journal's resume and the still-due secret. Both
    // name the source version, so they converge: one finishes the journal, the other finds
    // the rotation done.
    let summary = reply.return_value();
    assert_eq!(summary["requested"], 2, "{summary}");
    let outcomes: Vec<&str> =
        summary["rotations"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "rotated").count(), 1, "{summary}");
    assert!(outcomes.iter().all(|o| ["rotated", "stale", "already_rotated"].contains(o)), "{summary}");
    let kinds: Vec<&str> =
        summary["rotations"].as_array().unwrap().iter().map(|r| r["triggerKind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"resume") && kinds.contains(&"sweeper"), "{summary}");
    let latest = site.store.get_latest("slow-secret").await.unwrap();
    assert_eq!(latest.properties.tags.get("rotated-from").map(String::as_str), Some(v1.as_str()));
    assert!(site.logs_in("slow", &latest.value).await);
    assert!(!site.logs_in("slow", &old).await);
    assert!(site.journals().await.is_empty());

    // The next sweep has nothing to do, and claims no lease for it.
    let quiet = second.invoke("sweep", timer_invocation(false)).await;
    assert_eq!(quiet.status, 200);
    assert_eq!(quiet.return_value()["requested"], 0, "{}", quiet.body);
    second.proc.terminate();
    site.dev.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_is_refused_while_the_first_holds_the_lease_and_takes_over_after() {
    let site = Site::new("").await;
    let (a1, _) = site.user("first-secret", "first").await;
    let (b1, b_old) = site.user("second-secret", "second").await;
    let first = site.handler(&["--lease-idle-secs", "3"]).await;
    let second = site.handler(&["--lease-idle-secs", "1"]).await;

    let reply =
        first.invoke("eventgrid", eventgrid_invocation(&near_expiry(&site, "first-secret", &a1), "object")).await;
    assert_eq!(reply.return_value()["events"][0]["rotation"]["outcome"], "rotated", "{}", reply.body);
    // The first instance keeps the lease while it may get more events: the second is refused.
    let event = eventgrid_invocation(&near_expiry(&site, "second-secret", &b1), "object");
    let refused = second.invoke("eventgrid", event.clone()).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    let error = refused.body["error"].as_str().unwrap();
    assert!(error.contains("another engine holds the engine lease") && error.contains("functions"), "{error}");
    assert_eq!(site.versions("second-secret").await, 1);
    assert!(site.journals().await.is_empty());

    // Once the first is idle it lets go, and Event Grid's redelivery finds the second free.
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reply = second.invoke("eventgrid", event.clone()).await;
        if reply.status == 200 {
            break reply;
        }
        assert!(Instant::now() < deadline, "the second instance never got the lease: {}", reply.body);
    };
    assert_eq!(reply.return_value()["events"][0]["rotation"]["outcome"], "rotated", "{}", reply.body);
    let latest = site.store.get_latest("second-secret").await.unwrap();
    assert!(site.logs_in("second", &latest.value).await && !site.logs_in("second", &b_old).await);
    first.proc.terminate();
    second.proc.terminate();
    site.dev.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_trigger_rotates_a_named_postgres_secret_and_force_overrides_the_interval() {
    use common::pg::{logs_in, Roles};
    let roles = Roles::create("kvr_func", 1).await;
    let (role, old) = roles.0[0].clone();
    let site = Site::new(
        "[targets.pg]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nport = 5432\nsslmode = \"disable\"\naccounts = [\"kvr_func_*\"]\n",
    )
    .await;
    let v1 = site.managed_secret("pg-app-password", "pg", &role, &old).await;
    let handler = site.handler(&[]).await;
    let identity = json!([key_identity("ops")]);
    let rotate = |force: bool| {
        http_invocation(
            "POST",
            Some(&json!({ "secret": "pg-app-password", "force": force }).to_string()),
            identity.clone(),
        )
    };

    let reply = handler.invoke("rotate", rotate(false)).await;
    assert_eq!(reply.status, 200);
    let (status, body) = reply.res();
    assert_eq!((status, &body["outcome"]), (200, &json!("rotated")), "{body}");
    assert_eq!(body["oldVersion"], v1.as_str());
    assert_eq!(body["trigger"], r#"manual by functions http, key "ops""#, "{body}");
    let v2 = site.store.get_latest("pg-app-password").await.unwrap();
    assert_eq!(body["newVersion"], v2.version.as_str());
    assert!(logs_in(&role, &v2.value).await, "the new password does not log in to PostgreSQL");
    assert!(!logs_in(&role, &old).await);

    // Again at once: within engine.min_rotation_interval_secs, refused with 409 ...
    let (status, body) = handler.invoke("rotate", rotate(false)).await.res();
    assert_eq!((status, &body["outcome"]), (409, &json!("too_soon")), "{body}");
    assert_eq!(site.versions("pg-app-password").await, 2);
    // ... unless forced (a password that leaked).
    let (status, body) = handler.invoke("rotate", rotate(true)).await.res();
    assert_eq!((status, &body["outcome"]), (200, &json!("rotated")), "{body}");
    let v3 = site.store.get_latest("pg-app-password").await.unwrap();
    assert_eq!(body["oldVersion"], v2.version.as_str());
    assert!(logs_in(&role, &v3.value).await && !logs_in(&role, &v2.value).await);

    let output = handler.proc.terminate();
    assert!(output.contains("manual (forced) by functions http, key"), "audit record:\n{output}");
    site.dev.vault.shutdown().await;
}
