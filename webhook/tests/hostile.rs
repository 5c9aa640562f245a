//! The hostile-input catalogue: one table of requests an attacker, a misconfigured
//! subscription or a broken proxy could send, each with the status Event Grid's retry
//! rules call for, and each checked to queue no rotation.
//!
//! The webhook under test is configured as in production: Entra ID authentication
//! against a local identity provider, and an allowlist of one vault (`prod-kv`). One
//! good request is checked first, so a case cannot pass merely because everything
//! fails.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::entra::*;
use common::*;
use kv_rotator_webhook::{Authenticator, SharedKey, SourceFilter, WebhookState};
use secrecy::SecretString;
use serde_json::{json, Value};

const VAULT: &str = "prod-kv";
const V1: &str = "0123456789abcdef0123456789abcdef";
const MB10: usize = 10 * 1024 * 1024;

/// Which authentication the case's webhook uses.
#[derive(Clone, Copy)]
enum Mode {
    Entra,
    Key,
}

struct Case {
    name: &'static str,
    mode: Mode,
    request: Request<Body>,
    status: StatusCode,
}

fn good_event() -> Value {
    secret_event("evt-1", NEAR_EXPIRY, VAULT, "db-password", V1)
}

/// A good event with `edit` applied.
fn event_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut event = good_event();
    edit(&mut event);
    event
}

fn post(content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::post("/api/eventgrid").header("aeg-event-type", "Notification");
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder.body(body.into()).unwrap()
}

fn claims_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut claims = v1_claims();
    edit(&mut claims);
    claims
}

fn cases(signer: &Signer, stranger: &Signer) -> Vec<Case> {
    let token = signer.token(&v1_claims());
    let authed = |request: Request<Body>| with_bearer(request, &token);
    let json = |body: &Value| authed(post(Some("application/json"), body.to_string()));
    let batch = |event: Value| json(&json!([event]));
    let bearer = |t: &str| with_bearer(post(Some("application/json"), json!([good_event()]).to_string()), t);
    let with_claims = |edit: fn(&mut Value)| bearer(&signer.token(&claims_with(edit)));
    let topic = |vault: &str| format!("/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{vault}");
    let secret_named = |name: &str| {
        let name = name.to_owned();
        batch(event_with(move |e| {
            e["subject"] = json!(name);
            e["data"]["ObjectName"] = json!(name);
            e["data"]["Id"] = json!(format!("https://{VAULT}.vault.azure.net/secrets/{name}/{V1}"));
        }))
    };
    let tampered = {
        // Signed, then the payload swapped for one with more privileges.
        let good = signer.token(&claims_with(|c| c["roles"] = json!(["Reader"])));
        let parts: Vec<&str> = good.split('.').collect();
        format!("{}.{}.{}", parts[0], b64(&v1_claims()), parts[2])
    };
    let forged_kid = stranger.sign(&json!({"alg": "RS256", "typ": "JWT", "kid": signer.kid}), &v1_claims());
    let ok = StatusCode::OK;
    let (bad, unauth, forbidden, too_large) =
        (StatusCode::BAD_REQUEST, StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN, StatusCode::PAYLOAD_TOO_LARGE);

    let entra = |name, request, status| Case { name, mode: Mode::Entra, request, status };
    let key = |name, request, status| Case { name, mode: Mode::Key, request, status };
    vec![
        // --- Entra ID tokens -------------------------------------------------------
        entra("no Authorization header", post(Some("application/json"), "[]"), unauth),
        entra(
            "Basic scheme",
            {
                let mut r = post(Some("application/json"), "[]");
                r.headers_mut().insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
                r
            },
            unauth,
        ),
        entra("garbage bearer", bearer("not-a-jwt"), unauth),
        entra(
            "empty bearer",
            {
                let mut r = post(Some("application/json"), "[]");
                r.headers_mut().insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
                r
            },
            unauth,
        ),
        entra("forged: another key under the real kid", bearer(&forged_kid), unauth),
        entra("tampered payload", bearer(&tampered), unauth),
        entra("alg none", bearer(&alg_none(&signer.kid, &v1_claims())), unauth),
        entra(
            "HS256 keyed with the public key",
            bearer(&hs256(&signer.kid, &v1_claims(), &signer.public_der())),
            unauth,
        ),
        entra("RS256 header without kid", bearer(&signer.sign(&json!({"alg": "RS256"}), &v1_claims())), unauth),
        entra("expired beyond the skew", with_claims(|c| c["exp"] = json!(now() - 600)), unauth),
        entra("not yet valid (nbf)", with_claims(|c| c["nbf"] = json!(now() + 600)), unauth),
        entra(
            "no exp",
            with_claims(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            unauth,
        ),
        entra("wrong audience", with_claims(|c| c["aud"] = json!("api://someone-else")), unauth),
        entra(
            "wrong issuer (other tenant, v1)",
            with_claims(|c| {
                c["iss"] = json!("https://sts.windows.net/00000000-0000-0000-0000-000000000001/");
            }),
            unauth,
        ),
        entra(
            "wrong issuer (lookalike host)",
            with_claims(|c| {
                c["iss"] = json!(format!("https://login.microsoftonline.com.evil.example/{TENANT}/v2.0"));
            }),
            unauth,
        ),
        entra("wrong appid", with_claims(|c| c["appid"] = json!("11111111-2222-3333-4444-555555555555")), forbidden),
        entra(
            "v2 token with wrong azp",
            bearer(&signer.token(&{
                let mut c = v2_claims();
                c["azp"] = json!("11111111-2222-3333-4444-555555555555");
                c
            })),
            forbidden,
        ),
        entra(
            "no appid nor azp",
            with_claims(|c| {
                c.as_object_mut().unwrap().remove("appid");
            }),
            forbidden,
        ),
        entra(
            "no roles",
            with_claims(|c| {
                c.as_object_mut().unwrap().remove("roles");
            }),
            forbidden,
        ),
        entra(
            "role in the wrong case",
            with_claims(|c| c["roles"] = json!(["azureeventgridsecurewebhooksubscriber"])),
            forbidden,
        ),
        entra("oversized Authorization header", bearer(&"a".repeat(20_000)), unauth),
        entra(
            "forged token on the validation handshake",
            with_bearer(post(Some("application/json"), fixture(VALIDATION_EVENT)), &forged_kid),
            unauth,
        ),
        entra(
            "OPTIONS handshake without a token",
            Request::options("/api/eventgrid")
                .header("WebHook-Request-Origin", "eventgrid.azure.net")
                .body(Body::empty())
                .unwrap(),
            unauth,
        ),
        // --- shared key ------------------------------------------------------------
        key("no key", post(Some("application/json"), json!([good_event()]).to_string()), unauth),
        key(
            "wrong key",
            {
                let mut r = post(Some("application/json"), json!([good_event()]).to_string());
                *r.uri_mut() = "/api/eventgrid?key=guess-0123456789abcdef".parse().unwrap();
                r
            },
            unauth,
        ),
        key(
            "key prefix only",
            {
                let mut r = post(Some("application/json"), json!([good_event()]).to_string());
                *r.uri_mut() = "/api/eventgrid?key=catalogue-key".parse().unwrap();
                r
            },
            unauth,
        ),
        key(
            "key under another parameter name",
            {
                let mut r = post(Some("application/json"), json!([good_event()]).to_string());
                *r.uri_mut() = "/api/eventgrid?code=catalogue-key-0123456789".parse().unwrap();
                r
            },
            unauth,
        ),
        // --- content type and body -------------------------------------------------
        entra("text/plain", authed(post(Some("text/plain"), json!([good_event()]).to_string())), bad),
        entra("no Content-Type", authed(post(None, json!([good_event()]).to_string())), bad),
        entra("application/xml", authed(post(Some("application/xml"), "<events/>")), bad),
        entra(
            "CloudEvents binary mode",
            {
                let mut r = json(&good_event()["data"]);
                r.headers_mut().insert("ce-specversion", "1.0".parse().unwrap());
                r
            },
            bad,
        ),
        entra(
            "truncated JSON",
            authed(post(Some("application/json"), {
                let text = json!([good_event()]).to_string();
                text[..text.len() / 2].to_owned()
            })),
            bad,
        ),
        entra(
            "deeply nested JSON",
            authed(post(Some("application/json"), format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)))),
            bad,
        ),
        entra(
            "deep nesting inside data",
            authed(post(
                Some("application/json"),
                format!(
                    r#"[{{"id": "n", "eventType": "{NEAR_EXPIRY}", "data": {}{}}}]"#,
                    "[".repeat(5000),
                    "]".repeat(5000)
                ),
            )),
            bad,
        ),
        entra(
            "10 MB body, declared",
            {
                let body = format!("[{}]", " ".repeat(MB10));
                let mut r = authed(post(Some("application/json"), body.clone()));
                r.headers_mut().insert(header::CONTENT_LENGTH, body.len().into());
                r
            },
            too_large,
        ),
        entra(
            "10 MB body, undeclared",
            authed(post(Some("application/json"), format!("[{}]", " ".repeat(MB10)))),
            too_large,
        ),
        entra(
            "non-UTF-8 body",
            authed(post(Some("application/json"), {
                let mut bytes = br#"[{"id": ""#.to_vec();
                bytes.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
                bytes.extend_from_slice(br#""}]"#);
                bytes
            })),
            bad,
        ),
        entra("empty body", authed(post(Some("application/json"), "")), bad),
        entra("object instead of array", json(&good_event()), bad),
        entra(
            "validation event inside a batch",
            json(&json!([fixture_json(VALIDATION_EVENT)[0].clone(), good_event()])),
            bad,
        ),
        // --- schema versions -------------------------------------------------------
        entra("unknown metadataVersion", batch(event_with(|e| e["metadataVersion"] = json!("2"))), ok),
        entra("unknown dataVersion", batch(event_with(|e| e["dataVersion"] = json!("9.1"))), ok),
        entra(
            "CloudEvents specversion 0.3",
            authed(post(
                Some("application/cloudevents+json"),
                json!({
                    "specversion": "0.3", "id": "ce-1", "source": topic(VAULT), "type": NEAR_EXPIRY,
                    "data": good_event()["data"].clone()
                })
                .to_string(),
            )),
            ok,
        ),
        // --- source -----------------------------------------------------------------
        entra(
            "vault not on the allowlist",
            batch(event_with(|e| {
                e["topic"] = json!(topic("evil-kv"));
                e["data"]["VaultName"] = json!("evil-kv");
                e["data"]["Id"] = json!(format!("https://evil-kv.vault.azure.net/secrets/db-password/{V1}"));
            })),
            ok,
        ),
        entra("topic names another vault", batch(event_with(|e| e["topic"] = json!(topic("evil-kv")))), ok),
        entra("VaultName names another vault", batch(event_with(|e| e["data"]["VaultName"] = json!("evil-kv"))), ok),
        entra(
            "Id host names another vault",
            batch(event_with(|e| {
                e["data"]["Id"] = json!(format!("https://evil-kv.vault.azure.net/secrets/db-password/{V1}"));
            })),
            ok,
        ),
        entra(
            "Id on an attacker's host",
            batch(event_with(|e| {
                e["data"]["Id"] = json!(format!("https://{VAULT}.evil.example/secrets/db-password/{V1}"));
                e["topic"] = json!(topic("evil-kv"));
            })),
            ok,
        ),
        entra(
            "homoglyph vault name",
            batch(event_with(|e| {
                e["data"]["VaultName"] = json!("prоd-kv"); // Cyrillic о
            })),
            ok,
        ),
        entra(
            "no topic",
            batch(event_with(|e| {
                e.as_object_mut().unwrap().remove("topic");
            })),
            ok,
        ),
        // --- names and fields -------------------------------------------------------
        entra("SQL in the secret name", secret_named("db'; DROP TABLE secrets;--"), ok),
        entra("log line in the secret name", secret_named("db\nINFO rotation request queued secret=admin"), ok),
        entra("path traversal in the secret name", secret_named("..%2F..%2Fadmin"), ok),
        entra("NUL in the secret name", secret_named("db\u{0}admin"), ok),
        entra("secret name of 200 characters", secret_named(&"a".repeat(200)), ok),
        entra("ObjectType Key", batch(event_with(|e| e["data"]["ObjectType"] = json!("Key"))), ok),
        entra(
            "http Id",
            batch(event_with(|e| {
                e["data"]["Id"] = json!(format!("http://{VAULT}.vault.azure.net/secrets/db-password/{V1}"));
            })),
            ok,
        ),
        entra(
            "conflicting spellings of ObjectName",
            batch(event_with(|e| e["data"]["objectName"] = json!("admin"))),
            ok,
        ),
        entra("VaultName as a number", batch(event_with(|e| e["data"]["VaultName"] = json!(5))), ok),
        entra("data is an array", batch(event_with(|e| e["data"] = json!([1, 2]))), ok),
        entra(
            "no eventType",
            batch(event_with(|e| {
                e.as_object_mut().unwrap().remove("eventType");
            })),
            ok,
        ),
        entra(
            "version with a slash",
            batch(event_with(|e| {
                e["data"]["Version"] = json!("v1/../v2");
                e["data"]["Id"] = json!(format!("https://{VAULT}.vault.azure.net/secrets/db-password"));
            })),
            ok,
        ),
    ]
}

#[tokio::test]
async fn every_hostile_request_gets_its_status_and_queues_nothing() {
    let signer = Signer::generate("catalogue-key");
    let stranger = Signer::generate("stranger");
    let idp = IdentityProvider::start(vec![signer.jwk()]).await;
    let entra = idp.authenticator();
    let shared = SecretString::from("catalogue-key-0123456789".to_owned());
    let shared = Authenticator::SharedKey(Arc::new(SharedKey::new(&shared, None).unwrap()));
    let state_for = |mode: Mode| {
        let (state, rx) = new_state(16);
        let auth = match mode {
            Mode::Entra => entra.clone(),
            Mode::Key => shared.clone(),
        };
        (state.with_auth(auth).with_source_filter(SourceFilter::only([VAULT])), rx)
    };
    assert_eq!(WebhookState::DEFAULT_MAX_BODY_BYTES, 1024 * 1024);

    // The control: the same setup queues a good delivery, with either credential.
    let (state, mut rx) = state_for(Mode::Entra);
    let good =
        with_bearer(post(Some("application/json"), json!([good_event()]).to_string()), &signer.token(&v1_claims()));
    let reply = send(state, good).await;
    assert_eq!((reply.status, drain(&mut rx).len()), (StatusCode::OK, 1), "control: {}", reply.text);
    let (state, mut rx) = state_for(Mode::Key);
    let mut good = post(Some("application/json"), json!([good_event()]).to_string());
    *good.uri_mut() = "/api/eventgrid?key=catalogue-key-0123456789".parse().unwrap();
    assert_eq!(send(state, good).await.status, StatusCode::OK);
    assert_eq!(drain(&mut rx).len(), 1);

    let cases = cases(&signer, &stranger);
    assert!(cases.len() >= 40, "the catalogue has {} cases", cases.len());
    let mut failures = Vec::new();
    for Case { name, mode, request, status } in cases {
        let (state, mut rx) = state_for(mode);
        let reply = send(state, request).await;
        let queued = drain(&mut rx);
        if reply.status != status || !queued.is_empty() {
            failures
                .push(format!("{name}: expected {status}, got {} ({}), queued {queued:?}", reply.status, reply.text));
        }
        if reply.status == StatusCode::OK && reply.json.get("queued").is_some() {
            // Acknowledged means dropped and counted, never silently accepted.
            if reply.json["rejected"] == 0 && reply.json["ignored"] == 0 {
                failures.push(format!("{name}: acknowledged without counting the event: {}", reply.text));
            }
        }
        for leak in ["DROP TABLE", "INFO rotation", "catalogue-key-0123456789"] {
            if reply.text.contains(leak) {
                failures.push(format!("{name}: the answer echoes {leak:?}: {}", reply.text));
            }
        }
    }
    assert!(failures.is_empty(), "{} hostile cases misbehaved:\n{}", failures.len(), failures.join("\n"));
    // Forged and odd kids cost at most one key fetch per refresh interval.
    assert!(idp.fetches() <= 2, "{} key fetches", idp.fetches());
}
