//! The admin API (`[admin.auth]`, `/api/...` on the admin listener): authentication
//! (static token, Entra ID app role), each endpoint's happy path and bad input, a full
//! queue, the OpenAPI document against the served routes — in process, over the dev vault
//! and an htpasswd target — and `kv-rotator rotate` through a running `serve`.

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;
#[allow(dead_code)]
#[path = "../../webhook/tests/common/entra.rs"]
mod entra;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::devsite::DevSite;
use common::line_for;
use common::served::{Served, Squatter};
use kv_rotator::admin::api::{self, ApiState};
use kv_rotator::admin::auth::AdminAuth;
use kv_rotator::admin::jobs::Jobs;
use kv_rotator::admin::Readiness;
use kv_rotator::service::RunningService;
use kv_rotator_config::AdminAuthConfig;
use kv_rotator_core::RotationRequest;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const TOKEN: &str = "admin-token-0123456789-abcdefghijklmnop";
const ROLE: &str = "KvRotator.Rotate";

/// The service in process, its admin API authenticated by `auth`.
async fn service(site: &DevSite, auth: AdminAuth) -> (RunningService, SocketAddr) {
    site.admin_service(auth).await
}

fn static_token() -> AdminAuth {
    AdminAuth::static_token(&SecretString::from(TOKEN.to_owned())).unwrap()
}

/// A call to the admin listener: status, headers, body as JSON (or `Value::Null`).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = reqwest::Client::new();
    let mut request = client.request(method.parse().unwrap(), format!("http://{addr}{path}"));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Polls job `id` until it is done (the engine reports every secret); at most 60 s.
async fn finished(addr: SocketAddr, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, job) = call(addr, "GET", &format!("/api/rotations/{id}"), Some(TOKEN), None).await;
        assert_eq!(status, 200, "{job}");
        if job["done"] == true {
            return job;
        }
        assert!(Instant::now() < deadline, "job not done within 60 s: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn entry<'a>(job: &'a Value, secret: &str) -> &'a Value {
    job["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["secret"] == secret)
        .unwrap_or_else(|| panic!("{secret}: {job}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_needs_the_token_and_the_probes_do_not() {
    let site = DevSite::start().await;
    let (running, admin) = service(&site, static_token()).await;
    for (method, path) in [("GET", "/api/secrets"), ("GET", "/api/openapi.json"), ("POST", "/api/rotations")] {
        let body = (method == "POST").then(|| json!({"all": true, "reason": "r"}));
        let (status, headers, answer) = call(admin, method, path, None, body.clone()).await;
        assert_eq!(status, 401, "{path}: {answer}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        let wrong = format!("{TOKEN}x");
        let (status, _, answer) = call(admin, method, path, Some(&wrong), body).await;
        assert_eq!(status, 401, "{path}: {answer}");
        assert!(!answer.to_string().contains(TOKEN), "{answer}");
    }
    let (status, _, _) = call(admin, "GET", "/api/rotations/00000000-0000-0000-0000-000000000000", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(call(admin, "GET", "/api/secrets", Some(TOKEN), None).await.0, 200);
    // The probes and metrics stay as they are, unauthenticated.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(reqwest::get(format!("http://{admin}{path}")).await.unwrap().status(), 200, "{path}");
    }
    running.shutdown().await.unwrap();
    site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_token_needs_the_app_role() {
    let site = DevSite::start().await;
    let signer = entra::Signer::generate("admin-key");
    let idp = entra::IdentityProvider::start(vec![signer.jwk()]).await;
    let config = AdminAuthConfig::EntraId {
        tenant_id: entra::TENANT.to_owned(),
        audience: vec![entra::APP_ID.to_owned(), entra::APP_ID_URI.to_owned()],
        role: ROLE.to_owned(),
        openid_configuration_url: Some(idp.discovery_url()),
        jwks_url: None,
        clock_skew_secs: None,
        proof_file: None,
        client_credential: None,
    };
    let (running, admin) = service(&site, AdminAuth::from_config(&config, false).unwrap()).await;
    // An operator's tool (not Event Grid), with the role: accepted, whatever its app id.
    let mut claims = entra::v1_claims();
    claims["appid"] = json!("04b07795-8ddb-461a-bbee-02f9e1bf7b46");
    claims["roles"] = json!([ROLE]);
    let (status, _, answer) = call(admin, "GET", "/api/secrets", Some(&signer.token(&claims)), None).await;
    assert_eq!(status, 200, "{answer}");
    // The same token without the role (Event Grid's role only): 403, not 401.
    claims["roles"] = json!([kv_rotator_webhook::auth::DEFAULT_ROLE]);
    let (status, _, answer) = call(admin, "GET", "/api/secrets", Some(&signer.token(&claims)), None).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains(ROLE), "{answer}");
    claims.as_object_mut().unwrap().remove("roles");
    let body = json!({"all": true, "reason": "r"});
    assert_eq!(call(admin, "POST", "/api/rotations", Some(&signer.token(&claims)), Some(body)).await.0, 403);
    // Another audience, an expired token, another key, no token: 401.
    let mut other = entra::v1_claims();
    other["roles"] = json!([ROLE]);
    other["aud"] = json!("api://someone-else");
    assert_eq!(call(admin, "GET", "/api/secrets", Some(&signer.token(&other)), None).await.0, 401);
    let mut expired = entra::v1_claims();
    expired["roles"] = json!([ROLE]);
    expired["exp"] = json!(entra::now() - 3600);
    assert_eq!(call(admin, "GET", "/api/secrets", Some(&signer.token(&expired)), None).await.0, 401);
    let stranger = entra::Signer::generate("admin-key");
    let mut claims = entra::v2_claims();
    claims["roles"] = json!([ROLE]);
    assert_eq!(call(admin, "GET", "/api/secrets", Some(&stranger.token(&claims)), None).await.0, 401);
    assert_eq!(call(admin, "GET", "/api/secrets", Some(&signer.token(&claims)), None).await.0, 200);
    assert_eq!(call(admin, "GET", "/api/secrets", None, None).await.0, 401);
    running.shutdown().await.unwrap();
    site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_rotates_named_tagged_or_all_secrets_and_reports_each() {
    let site = DevSite::start().await;
    let (a1, a_pw) = site.user("alpha-password", "alpha").await;
    let (b1, _) = site.user("beta-password", "beta").await;
    let (running, admin) = service(&site, static_token()).await;

    let body = json!({"secrets": ["alpha-password", "beta-password", "no-such-secret"], "reason": "INC-42 leak"});
    let (status, headers, job) = call(admin, "POST", "/api/rotations", Some(TOKEN), Some(body)).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(headers["location"], format!("/api/rotations/{id}").as_str());
    assert_eq!(job["reason"], "INC-42 leak");
    assert_eq!(job["requestedBy"], "static-token");
    assert_eq!(entry(&job, "alpha-password")["version"], a1.to_ascii_lowercase().as_str());
    assert_eq!(entry(&job, "no-such-secret")["state"], "failed", "unreadable at trigger time: never queued");
    let job = finished(admin, &id).await;
    for (secret, user, old) in [("alpha-password", "alpha", &a1), ("beta-password", "beta", &b1)] {
        let e = entry(&job, secret);
        let latest = site.store.get_latest(secret).await.unwrap();
        assert_eq!((e["state"].as_str(), e["ok"].as_bool()), (Some("rotated"), Some(true)), "{job}");
        assert_eq!(e["newVersion"].as_str().unwrap(), latest.version);
        assert!(e["detail"].as_str().unwrap().contains(&format!("rotated {old} -> ")), "{e}");
        assert!(site.logs_in(user, &latest.value).await);
    }
    assert!(!site.logs_in("alpha", &a_pw).await);
    assert_eq!(entry(&job, "no-such-secret")["ok"], false);
    assert!(!job.to_string().contains(site.store.get_latest("alpha-password").await.unwrap().value.expose_secret()));

    // By tag: only the secrets carrying it.
    let mut tags = site.store.get_latest("beta-password").await.unwrap().properties.tags;
    tags.insert("host".into(), "db-7".into());
    let update = kv_rotator_keyvault::PropertiesUpdate { tags: Some(tags), ..Default::default() };
    site.store.update_properties("beta-password", None, update).await.unwrap();
    let body = json!({"tag": {"host": "db-7"}, "reason": "host db-7 compromised", "force": true});
    let (status, _, job) = call(admin, "POST", "/api/rotations", Some(TOKEN), Some(body)).await;
    assert_eq!(status, 202, "{job}");
    let job = finished(admin, job["id"].as_str().unwrap()).await;
    assert_eq!(job["secrets"].as_array().unwrap().len(), 1, "{job}");
    assert_eq!(entry(&job, "beta-password")["state"], "rotated");
    assert_eq!(job["force"], true);

    // All: every managed secret.
    let (status, _, job) = call(
        admin,
        "POST",
        "/api/rotations",
        Some(TOKEN),
        Some(json!({"all": true, "reason": "drill", "force": true})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let job = finished(admin, job["id"].as_str().unwrap()).await;
    let mut names: Vec<&str> =
        job["secrets"].as_array().unwrap().iter().map(|s| s["secret"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["alpha-password", "beta-password"]);

    // The managed secrets as `status` shows them.
    let (status, _, view) = call(admin, "GET", "/api/secrets", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    let secrets = view["secrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 2, "{view}");
    let alpha = secrets.iter().find(|s| s["secret"] == "alpha-password").unwrap();
    assert_eq!(alpha["profile"], "site");
    assert_eq!(alpha["account"], "alpha");
    assert_eq!(alpha["version"].as_str().unwrap(), site.store.get_latest("alpha-password").await.unwrap().version);
    assert_eq!(view["journals"], json!([]));
    running.shutdown().await.unwrap();
    site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_what_and_where_and_nothing_is_written() {
    let site = DevSite::start().await;
    site.user("alpha-password", "alpha").await;
    let (running, admin) = service(&site, static_token()).await;
    for (body, expected) in [
        (json!({"secrets": ["alpha-password"]}), "reason: required"),
        (json!({"secrets": ["alpha-password"], "reason": ""}), "reason: must not be empty"),
        (json!({"secrets": ["alpha-password"], "reason": "x".repeat(201)}), "longer than 200"),
        (json!({"secrets": ["alpha-password"], "reason": "ok\nforged"}), "control or invisible formatting character"),
        (json!({"secrets": ["alpha-password"], "reason": "ok \u{202E}degrof"}), "at position 3"),
        (json!({"secrets": ["alpha_password"], "reason": "r"}), "secrets[0]"),
        (json!({"secrets": ["alpha-password"], "reason": "r", "priority": 1}), "unknown field `priority`"),
        (json!({"secrets": ["alpha-password"], "all": true, "reason": "r"}), "exclude each other"),
        (json!({"reason": "r"}), "one of"),
        (json!({"all": "yes", "reason": "r"}), "invalid type"),
        (json!(["alpha-password"]), "body:"),
    ] {
        let (status, _, answer) = call(admin, "POST", "/api/rotations", Some(TOKEN), Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(expected), "{body}: {answer}");
    }
    // Not JSON: 415 (a web page cannot post JSON cross-origin without a preflight).
    let response = reqwest::Client::new()
        .post(format!("http://{admin}/api/rotations"))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body(r#"{"all": true, "reason": "r"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let (status, _, answer) = call(admin, "GET", "/api/rotations/not-a-uuid", Some(TOKEN), None).await;
    assert_eq!((status, answer["error"].as_str().unwrap().contains("UUID")), (400, true), "{answer}");
    let unknown = "3f2c1e4a-0000-4000-8000-000000000000";
    let (status, _, answer) = call(admin, "GET", &format!("/api/rotations/{unknown}"), Some(TOKEN), None).await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(site.store.list_versions("alpha-password").await.unwrap().len(), 1, "nothing was rotated");
    running.shutdown().await.unwrap();
    site.vault.shutdown().await;
}

/// A queue without room for the whole job: 503 with Retry-After, nothing of the job queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_and_queues_nothing_of_the_job() {
    let site = DevSite::start().await;
    site.user("alpha-password", "alpha").await;
    site.user("beta-password", "beta").await;
    // An engine that takes nothing off its queue of 2, one place already taken.
    let (tx, mut rx) = mpsc::channel::<RotationRequest>(2);
    let state = ApiState {
        auth: static_token(),
        store: site.store.clone(),
        queue: tx.downgrade(),
        readiness: Readiness::new(&tx, None),
        jobs: Arc::new(Jobs::default()),
        due_rule: kv_rotator::engine::due::DueRule::from_config(&Default::default(), &Default::default()),
        vault_calls: ApiState::vault_calls(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, api::router(state)).await });
    tx.try_send(
        kv_rotator::cli::rotate::manual_request(site.store.as_ref(), "alpha-password", "x", false).await.unwrap(),
    )
    .unwrap();

    let body = json!({"secrets": ["alpha-password", "beta-password"], "reason": "r"});
    let (status, headers, answer) = call(addr, "POST", "/api/rotations", Some(TOKEN), Some(body.clone())).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(headers["retry-after"], "5");
    assert!(answer["error"].as_str().unwrap().contains("room for 1 of the 2"), "{answer}");
    assert_eq!(answer["queued"], json!([]));
    assert_eq!(rx.len(), 1, "nothing of the job was queued");
    // A job larger than the queue can ever hold is refused as such.
    rx.recv().await.unwrap();
    let three = json!({"secrets": ["alpha-password", "beta-password", "gamma"], "reason": "r"});
    site.user("gamma", "gamma").await;
    let (status, _, answer) = call(addr, "POST", "/api/rotations", Some(TOKEN), Some(three)).await;
    assert_eq!(status, 413, "{answer}");
    // Room again: the whole job goes.
    let (status, _, job) = call(addr, "POST", "/api/rotations", Some(TOKEN), Some(body)).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(rx.len(), 2);
    let queued = rx.recv().await.unwrap();
    assert!(queued.trigger.to_string().contains(&format!("via admin API job {}", job["id"].as_str().unwrap())));
    drop(tx);
    site.vault.shutdown().await;
}

/// Every path and method of the served OpenAPI document is served, and the API serves
/// no other `/api/...` route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_served_routes() {
    let site = DevSite::start().await;
    site.user("alpha-password", "alpha").await;
    let (running, admin) = service(&site, static_token()).await;
    let (status, _, doc) = call(admin, "GET", "/api/openapi.json", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let (_, _, job) =
        call(admin, "POST", "/api/rotations", Some(TOKEN), Some(json!({"secrets": ["alpha-password"], "reason": "r"})))
            .await;
    let id = job["id"].as_str().unwrap();
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            let body = (method == "POST").then(|| json!({"secrets": ["alpha-password"], "reason": "r", "force": true}));
            let path_now = path.replace("{id}", id).replace("{nonce}", &"ab".repeat(16));
            let (status, _, answer) = call(admin, &method, &path_now, Some(TOKEN), body).await;
            assert!((200..300).contains(&status), "{method} {path}: {status} {answer}");
            documented.push((method, path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = api::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    for (method, path) in
        [("GET", "/api/rotations"), ("DELETE", "/api/rotations/x"), ("GET", "/api/jobs"), ("POST", "/api/secrets")]
    {
        let status = call(admin, method, path, Some(TOKEN), None).await.0;
        assert!(status == 404 || status == 405, "{method} {path}: {status}");
    }
    finished(admin, id).await;
    running.shutdown().await.unwrap();
    site.vault.shutdown().await;
}

/// `serve` and `rotate` as operators run them, with `[admin.auth]` static-token.
async fn served() -> Served {
    Served::new("mode = \"static-token\"\ntoken = { env = \"ADMIN_TOKEN\" }", &[("ADMIN_TOKEN", TOKEN)]).await
}

/// A program that took the admin port while the service was down: `rotate` asks it to
/// prove it knows the token, gets no good proof, and sends it neither the token nor a job;
/// it does not report the squatter's "rotated" as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_squatting_the_admin_port_gets_no_token_and_fakes_no_job() {
    let mut served = served().await;
    served.site.user("alpha-password", "alpha").await;
    let fake_job = json!({"id": "00000000-0000-0000-0000-000000000001", "done": true,
        "secrets": [{"secret": "alpha-password", "state": "rotated", "ok": true, "detail": "rotated a -> b"}]});
    let squatter = Squatter::start(fake_job).await;
    served.admin = squatter.addr;
    served.write_config();

    let (ok, stdout, stderr) = served.rotate(&["alpha-password", "--reason", "INC-9"]);
    assert!(!ok, "a squatter's answer is not a rotation:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("did not prove that it knows the admin token") && stderr.contains("a wrong proof"),
        "{stderr}"
    );
    assert!(!stdout.contains("rotated"), "{stdout}");
    let seen = squatter.seen();
    assert_eq!(seen.len(), 1, "only the proof was asked for: {seen:?}");
    assert!(seen[0].starts_with("GET /api/service-proof/") && seen[0].ends_with("None"), "no token sent: {seen:?}");
    assert_eq!(served.site.store.list_versions("alpha-password").await.unwrap().len(), 1);
    served.site.vault.shutdown().await;
}

/// The service killed while `rotate` follows its job, and a program binding the port at
/// once: `rotate` proves the service again on its new connection, so the squatter gets a
/// proof request and no token, and its "rotated" answer is not believed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatter_taking_the_port_mid_job_gets_no_token_and_fakes_no_end() {
    let mut served = served().await;
    let _stall = served.stalled_secret("stalled-password").await;
    let mut serve = served.serve();
    served.listening(&mut serve).await;
    serve.wait_healthy(served.webhook.port()).await;

    let killed = served.killed_mid_job(serve, "stalled-password").await;
    killed.assert_the_squatter_got_nothing();
    assert!(!killed.output.contains(TOKEN));
    served.site.vault.shutdown().await;
}

/// Today a `rotate` beside a `serve` was refused by the lease; through the admin API the
/// service's engine rotates, and `rotate` claims no lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_goes_through_the_running_service_and_one_engine_rotates() {
    let mut served = served().await;
    let mut users = Vec::new();
    for (secret, user) in [("alpha-password", "alpha"), ("beta-password", "beta"), ("gamma-password", "gamma")] {
        users.push((secret, user, served.site.user(secret, user).await.0));
    }
    let mut serve = served.serve();
    served.listening(&mut serve).await;
    serve.wait_healthy(served.webhook.port()).await;
    let lease_versions = served.site.store.list_versions("kv-rotator-engine-lease").await.unwrap().len();

    let (ok, stdout, stderr) =
        served.rotate(&["alpha-password", "beta-password", "gamma-password", "--reason", "INC-7 rotate the three"]);
    assert!(ok, "{stdout}\n{stderr}\n{}", serve.output());
    assert!(stderr.contains(&format!("rotating through the service at http://{}", served.admin)), "{stderr}");
    for (secret, user, old) in &users {
        assert!(line_for(&stdout, secret).contains(&format!("rotated {old} -> ")), "{stdout}");
        let latest = served.site.store.get_latest(secret).await.unwrap();
        assert!(served.site.logs_in(user, &latest.value).await);
    }
    assert_eq!(
        served.site.store.list_versions("kv-rotator-engine-lease").await.unwrap().len(),
        lease_versions,
        "rotate claimed no engine lease: the service's engine rotated"
    );
    let log = serve.output();
    assert!(log.contains("admin API: rotation job queued") && log.contains("INC-7 rotate the three"), "{log}");
    for (secret, _, _) in &users {
        let audit = log
            .lines()
            .find(|l| l.contains("rotation audit record") && l.contains(&format!("\"secret\":\"{secret}\"")));
        let audit = audit.unwrap_or_else(|| panic!("no audit record of {secret} in the service's log:\n{log}"));
        assert!(audit.contains("manual by static-token via admin API job "), "{audit}");
    }
    assert!(!log.contains(TOKEN) && !stdout.contains(TOKEN) && !stderr.contains(TOKEN));

    // A failure is in the exit code, as in process.
    let (ok, stdout, _) = served.rotate(&["no-such-secret"]);
    assert!(!ok);
    assert!(line_for(&stdout, "no-such-secret").contains("failed"), "{stdout}");

    // --in-process beside the running service: refused by the lease, nothing rotated.
    let (ok, _, stderr) = served.rotate(&["--in-process", "alpha-password"]);
    assert!(!ok);
    assert!(stderr.contains("refusing to rotate"), "{stderr}");

    // No service answers any more: in process, under the lease it can now take.
    serve.terminate();
    let (ok, stdout, stderr) = served.rotate(&["alpha-password", "--force"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("no service answers on admin.listen"), "{stderr}");
    assert!(line_for(&stdout, "alpha-password").contains("rotated"), "{stdout}");
    served.site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_admin_token_stops_serve_at_startup() {
    let mut served = served().await;
    let short = "too-short-token-0123456789abcde"; // 31 characters
    served.env = vec![("ADMIN_TOKEN".to_owned(), short.to_owned())];
    let mut serve = served.serve();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = serve.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve still runs with a short token:\n{}", serve.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = serve.output();
    assert!(!status.success(), "{output}");
    assert!(output.contains("admin.auth.token: shorter than 32 characters"), "{output}");
    assert!(!output.contains(short), "{output}");
    served.site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_a_browser_sent_for_a_web_page_is_refused_even_with_the_token() {
    let site = DevSite::start().await;
    site.user("alpha-password", "alpha").await;
    let (running, admin) = service(&site, static_token()).await;
    let before = site.store.list_versions("alpha-password").await.unwrap().len();
    let body = json!({"secrets": ["alpha-password"], "reason": "rebinding", "force": true});
    let http = reqwest::Client::new();
    for (name, value, why) in [
        ("host", "evil.example:9464", "DNS rebinding"),
        ("origin", "http://evil.example", "Origin"),
        ("sec-fetch-site", "cross-site", "Sec-Fetch-Site"),
    ] {
        let response = http
            .post(format!("http://{admin}/api/rotations"))
            .bearer_auth(TOKEN)
            .header(name, value)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{name}: {value}");
        let text = response.text().await.unwrap();
        assert!(text.contains(why), "{name}: {text}");
    }
    assert_eq!(site.store.list_versions("alpha-password").await.unwrap().len(), before, "a refused call rotated");
    // The same call as a tool makes it is accepted: by IP and as localhost.
    let localhost = format!("http://localhost:{}/api/secrets", admin.port());
    assert_eq!(http.get(&localhost).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    let (status, _, answer) = call(admin, "POST", "/api/rotations", Some(TOKEN), Some(body)).await;
    assert_eq!(status, 202, "{answer}");
    running.shutdown().await.unwrap();
    site.vault.shutdown().await;
}
