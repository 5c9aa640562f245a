//! Property tests of the dev vault's request handling over HTTP (issue 10, item 10):
//! arbitrary methods, paths (percent escapes, dot segments, NULs, non-ASCII, over-long
//! names), query strings, headers and bodies never get a 5xx or a dropped connection (a
//! panic in the handler), an error answer is the service's JSON error shape, and a
//! request that is refused — or only reads — changes nothing.
//!
//! Each case runs against a fresh dev vault seeded with live, multi-version, disabled,
//! certificate-backed and soft-deleted secrets; the state is read before and after over
//! the REST API itself (listings, backups of every live secret, every deleted secret).
//! CI runs 256 cases (about 5 s in a debug build). Longer runs:
//! `PROPTEST_CASES=100000 cargo test --release -p kv-rotator-keyvault --test devvault_prop`.

use std::collections::BTreeMap;

use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions, SeedSecret, API_VERSION};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{contextualize_config, Config as ProptestConfig, TestCaseError, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const V1: &str = "0123456789abcdef0123456789abcdef";
const V2: &str = "fedcba9876543210fedcba9876543210";

/// The seeded state: what paths and bodies aim at.
fn seeds() -> Vec<SeedSecret> {
    let tags = |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let secret = |name: &str| SeedSecret { name: name.into(), value: format!("{name}-value"), ..Default::default() };
    vec![
        SeedSecret { version: Some(V1.into()), tags: tags(&[("rotator", "pg")]), ..secret("alpha") },
        SeedSecret { version: Some(V2.into()), add_version: true, expires: Some(4_102_444_800), ..secret("alpha") },
        SeedSecret {
            content_type: Some("text/plain".into()),
            tags: tags(&[("CredentialId", "app")]),
            ..secret("Beta-2")
        },
        SeedSecret { enabled: false, ..secret("disabled") },
        SeedSecret { managed: true, content_type: Some("application/x-pkcs12".into()), ..secret("cert") },
        SeedSecret { deleted_date: Some(1_700_000_000), ..secret("gone") },
    ]
}

/// One request, as generated.
#[derive(Debug, Clone)]
struct Req {
    method: Method,
    path: String,
    query: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Json(Value),
    Raw(Vec<u8>),
    /// A backup blob of `alpha`, taken in the case, optionally edited, wrapped as restore's body.
    Blob(BlobEdit),
}

#[derive(Debug, Clone)]
enum BlobEdit {
    AsIs,
    /// The secret's name inside the blob replaced (a new name restores; a bad one must not).
    Rename(String),
    /// A byte of the decoded blob replaced.
    Corrupt(usize, u8),
    /// Base64 that is not a blob.
    Garbage(String),
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec!["secrets", "deletedsecrets", "restore", "versions", "backup", "recover", "keys", "certificates"])
            .prop_map(str::to_owned),
        4 => select(vec!["alpha", "ALPHA", "Beta-2", "beta-2", "disabled", "cert", "gone", "new-secret", "restore", V1, V2, "0123456789ABCDEF0123456789ABCDEF"])
            .prop_map(str::to_owned),
        2 => "[A-Za-z0-9-]{1,10}",
        2 => select(vec![
            "", ".", "..", "%2e%2e", "%2E", "%00", "a%00b", "%FF", "%C0%AF", "%2F", "a%2Fb", "al%70ha", "%", "%z", "%7",
            "%0d%0aX-Injected:%201", "caf%C3%A9", "名前", "é", "a b", "a;b", "a?b", "%3F", "#", "\\", "~", "*",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z]{128}",
        1 => "[ -~]{0,12}",
    ]
}

/// A route of the API and the method it takes.
fn route() -> impl Strategy<Value = (&'static str, Method)> {
    select(vec![
        ("/secrets", Method::GET),
        ("/secrets/{n}", Method::PUT),
        ("/secrets/{n}", Method::GET),
        ("/secrets/{n}/", Method::GET),
        ("/secrets/{n}", Method::PATCH),
        ("/secrets/{n}", Method::DELETE),
        ("/secrets/{n}/{v}", Method::GET),
        ("/secrets/{n}/{v}", Method::PATCH),
        ("/secrets/{n}/versions", Method::GET),
        ("/secrets/{n}/backup", Method::POST),
        ("/secrets/restore", Method::POST),
        ("/deletedsecrets", Method::GET),
        ("/deletedsecrets/{n}", Method::GET),
        ("/deletedsecrets/{n}", Method::DELETE),
        ("/deletedsecrets/{n}/recover", Method::POST),
    ])
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec!["alpha", "ALPHA", "Beta-2", "disabled", "cert", "gone", "new-secret"]).prop_map(str::to_owned),
        2 => segment(),
    ]
}

fn version() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => select(vec![V1, V2, "0123456789ABCDEF0123456789ABCDEF"]).prop_map(str::to_owned),
        1 => segment(),
    ]
}

/// Method and path: mostly the API's own routes with generated names and versions, so
/// that requests reach the operations; sometimes another method, or any segments.
fn method_and_path() -> impl Strategy<Value = (Method, String)> {
    let other_method = prop_oneof![
        8 => select(vec![Method::GET, Method::PUT, Method::PATCH, Method::POST, Method::DELETE]),
        1 => select(vec![Method::HEAD, Method::OPTIONS, Method::TRACE, Method::from_bytes(b"PROPFIND").unwrap()]),
    ];
    let on_route = || {
        (route(), name(), version())
            .prop_map(|((route, method), n, v)| (method, route.replace("{n}", &n).replace("{v}", &v)))
    };
    let any_path = prop_oneof![
        3 => (prop::collection::vec(segment(), 0..5), select(vec!["", "/", "//"]))
            .prop_map(|(segments, tail)| format!("/{}{tail}", segments.join("/"))),
        1 => "/[ -~]{0,30}",
        1 => select(vec!["/secrets/alpha/../../deletedsecrets/gone", "//secrets//alpha//", "/secrets/./alpha", "/%2fsecrets/alpha"])
            .prop_map(str::to_owned),
    ];
    prop_oneof![
        6 => on_route(),
        2 => (on_route(), other_method.clone()).prop_map(|((_, path), method)| (method, path)),
        2 => (other_method, any_path),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let api_version = prop_oneof![
        6 => Just(format!("api-version={API_VERSION}")),
        1 => select(vec!["api-version=7.4", "API-VERSION=7.5", "api-version=", "api-version=2099-01-01", "api-version=7.4%00", "api-version=7.4&api-version=junk", "api%2Dversion=7.4"])
            .prop_map(str::to_owned),
        1 => Just(String::new()),
    ];
    let extra = prop::collection::vec(
        prop_oneof![
            select(vec![
                "maxresults=0",
                "maxresults=1",
                "maxresults=25",
                "maxresults=26",
                "maxresults=-1",
                "maxresults=abc",
                "maxresults=99999999999999999999"
            ])
            .prop_map(str::to_owned),
            select(vec![
                "$skiptoken=",
                "$skiptoken=c2VjcmV0cwphbHBoYQ",
                "%24skiptoken=c2VjcmV0cwphbHBoYQ",
                "$skiptoken=ZGVsZXRlZApnb25l",
                "$skiptoken=%FF%FE",
                "$skiptoken=dmVyc2lvbnM6YWxwaGEKMA"
            ])
            .prop_map(str::to_owned),
            "[a-z$%=&]{0,12}",
        ],
        0..3,
    );
    (api_version, extra).prop_map(|(api, extra)| {
        std::iter::once(api).chain(extra).filter(|p| !p.is_empty()).collect::<Vec<_>>().join("&")
    })
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let authorization = prop_oneof![
        6 => Just(Some(b"Bearer kv-rotator-dev-token".to_vec())),
        1 => select(vec![&b"Bearer "[..], b"bearer x", b"Basic dXNlcjpwYXNz", b"Bearer \xff\xfe", b"x", b"Bearer  a b c"]).prop_map(|v| Some(v.to_vec())),
        1 => Just(None),
    ];
    let content_type = prop_oneof![
        3 => Just(Some(b"application/json".to_vec())),
        1 => select(vec![&b"text/plain"[..], b"application/json; charset=latin1", b"\xff", b"multipart/form-data; boundary=x"]).prop_map(|v| Some(v.to_vec())),
        1 => Just(None),
    ];
    let extra = prop::collection::vec(
        (
            prop_oneof![
                "[a-z][a-z-]{0,10}",
                select(vec![
                    "x-ms-client-request-id",
                    "if-match",
                    "transfer-encoding-x",
                    "x-forwarded-host",
                    "host-x",
                    "accept"
                ])
                .prop_map(str::to_owned),
            ],
            prop_oneof![
                prop::collection::vec(32u8..127, 0..40),
                Just(vec![b'a'; 8 * 1024]),
                Just(b"\x80\xff".to_vec())
            ],
        ),
        0..3,
    );
    (authorization, content_type, extra).prop_map(|(auth, ct, extra)| {
        let mut out = Vec::new();
        if let Some(auth) = auth {
            out.push(("authorization".to_owned(), auth));
        }
        if let Some(ct) = ct {
            out.push(("content-type".to_owned(), ct));
        }
        out.extend(extra);
        out
    })
}

fn text() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[ -~]{0,16}".prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
        Just(Value::from("x".repeat(257))),
        Just(Value::from("v".repeat(25 * 1024 + 1))),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text(),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,6}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// SetParams/UpdateParams-shaped bodies with some fields of the wrong type or too large.
fn secret_body() -> impl Strategy<Value = Value> {
    let tags = prop_oneof![
        prop::collection::btree_map("[A-Za-z-]{1,8}", text(), 0..4).prop_map(|m| json!(m)),
        Just(json!((0..16).map(|i| (format!("t{i}"), "v".to_owned())).collect::<BTreeMap<_, _>>())),
        Just(json!({ "x".repeat(257): "v" })),
        any_json(),
    ];
    let attributes = prop_oneof![
        (prop::option::of(any::<bool>()), prop::option::of(any::<i64>()), prop::option::of(any::<i64>()))
            .prop_map(|(enabled, nbf, exp)| json!({ "enabled": enabled, "nbf": nbf, "exp": exp })),
        any_json(),
    ];
    (
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(tags),
        prop::option::of(attributes),
        prop::option::of(any_json()),
    )
        .prop_map(|(value, content_type, tags, attributes, junk)| {
            let mut body = serde_json::Map::new();
            for (key, field) in [
                ("value", value),
                ("contentType", content_type),
                ("tags", tags),
                ("attributes", attributes),
                ("junk", junk),
            ] {
                if let Some(field) = field {
                    body.insert(key.to_owned(), field);
                }
            }
            Value::Object(body)
        })
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        3 => Just(Body::None),
        4 => secret_body().prop_map(Body::Json),
        1 => any_json().prop_map(Body::Json),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Body::Raw),
        2 => prop_oneof![
            Just(BlobEdit::AsIs),
            select(vec!["alpha-copy", "ALPHA", "gone", "bad name", "", "x/y"]).prop_map(|n| BlobEdit::Rename(n.to_owned())),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| BlobEdit::Corrupt(i, b)),
            "[A-Za-z0-9_-]{0,24}".prop_map(BlobEdit::Garbage),
        ]
        .prop_map(Body::Blob),
    ]
}

fn request() -> impl Strategy<Value = Req> {
    (method_and_path(), query(), headers(), body()).prop_map(|((method, path), query, headers, body)| Req {
        method,
        path,
        query,
        headers,
        body,
    })
}

/// A fresh dev vault with [`seeds`], and a client for it, on `runtime`.
fn start(runtime: &tokio::runtime::Runtime) -> (DevVault, reqwest::Client) {
    runtime.block_on(async {
        let options = DevVaultOptions { rate_limit: None, ..Default::default() };
        let vault = DevVault::start(options).await.unwrap();
        for seed in seeds() {
            vault.seed(seed).unwrap();
        }
        let client = vault.http_client().unwrap();
        (vault, client)
    })
}

/// The vault's state as the REST API shows it: every live secret's backup (all
/// versions, values, tags, times), the listings, and every deleted secret.
async fn snapshot(vault: &DevVault, client: &reqwest::Client) -> Result<Vec<Value>, TestCaseError> {
    let base = vault.endpoint();
    let get = |url: String, method: Method| {
        let client = client.clone();
        async move {
            let answer = client.request(method, &url).bearer_auth("kv-rotator-dev-token").send().await;
            let answer = answer.map_err(|e| TestCaseError::fail(format!("{url}: {e:?}")))?;
            let status = answer.status();
            let body: Value = answer.json().await.map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
            if !status.is_success() {
                return Err(TestCaseError::fail(format!("{url}: {status} {body}")));
            }
            Ok::<_, TestCaseError>(body)
        }
    };
    let mut state = Vec::new();
    for (collection, deleted) in [("secrets", false), ("deletedsecrets", true)] {
        let mut next = Some(format!("{base}{collection}?api-version={API_VERSION}"));
        while let Some(url) = next.take() {
            let page = get(url, Method::GET).await?;
            for item in page["value"].as_array().cloned().unwrap_or_default() {
                let name = item["id"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();
                let detail = if deleted {
                    get(format!("{base}deletedsecrets/{name}?api-version={API_VERSION}"), Method::GET).await?
                } else {
                    get(format!("{base}secrets/{name}/backup?api-version={API_VERSION}"), Method::POST).await?
                };
                state.push(json!({ "item": item, "detail": detail }));
            }
            next = page["nextLink"].as_str().map(str::to_owned);
        }
    }
    Ok(state)
}

/// The body to send for `req`, taking a backup of `alpha` for restore bodies.
async fn body_bytes(req: &Req, vault: &DevVault, client: &reqwest::Client) -> Result<Option<Vec<u8>>, TestCaseError> {
    use azure_core::base64::{decode_url_safe, encode_url_safe};
    Ok(match &req.body {
        Body::None => None,
        Body::Json(value) => Some(serde_json::to_vec(value).unwrap()),
        Body::Raw(bytes) => Some(bytes.clone()),
        Body::Blob(edit) => {
            let url = format!("{}secrets/alpha/backup?api-version={API_VERSION}", vault.endpoint());
            let answer =
                client.post(&url).bearer_auth("t").send().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let blob: Value = answer.json().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let encoded = blob["value"].as_str().unwrap_or_default().to_owned();
            let mut raw = decode_url_safe(&encoded).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let encoded = match edit {
                BlobEdit::AsIs => encoded,
                BlobEdit::Rename(name) => {
                    let text = String::from_utf8_lossy(&raw)
                        .replace("\"name\":\"alpha\"", &format!("\"name\":{}", json!(name)));
                    encode_url_safe(text)
                }
                BlobEdit::Corrupt(at, byte) => {
                    let at = at % raw.len().max(1);
                    if let Some(slot) = raw.get_mut(at) {
                        *slot = *byte;
                    }
                    encode_url_safe(&raw)
                }
                BlobEdit::Garbage(text) => text.clone(),
            };
            Some(serde_json::to_vec(&json!({ "value": encoded })).unwrap())
        }
    })
}

/// Panics in any thread of this test binary so far (the dev vault's handler runs in the
/// runtime's worker threads, where a panic only ends its connection).
fn panics_so_far() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Once;
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}

/// Runs one case on a fresh vault: the property itself.
fn case(runtime: &tokio::runtime::Runtime, req: &Req) -> Result<(), TestCaseError> {
    let (vault, client) = start(runtime);
    let result = runtime.block_on(async {
        // reqwest refuses some of what is generated (a URL that does not parse, a header
        // value it will not send): nothing reached the vault, nothing to check.
        let url = format!("https://{}:{}{}?{}", vault.host(), vault.local_addr().port(), req.path, req.query);
        let Ok(url) = reqwest::Url::parse(&url) else { return Ok(()) };
        let body = body_bytes(req, &vault, &client).await?;
        let before = snapshot(&vault, &client).await?;
        // Its own connection: the server may close one whose request body it did not read,
        // and the state is read on another.
        let mut builder = vault.http_client().unwrap().request(req.method.clone(), url.clone());
        for (name, value) in &req.headers {
            let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_bytes(value),
            ) else {
                continue;
            };
            builder = builder.header(name, value);
        }
        if let Some(body) = body {
            builder = builder.body(body);
        }
        let panics = panics_so_far();
        let answer = builder.send().await;
        // A server that answers early (a body it does not need) may close the connection
        // while the body is still being written: no status then. A panic in the handler
        // also ends the connection, but is counted by the hook.
        let (status, text) = match answer {
            Ok(answer) => {
                let status = answer.status();
                let text = answer
                    .text()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("body of the answer to {url}: {e}")))?;
                (Some(status), text)
            }
            Err(_) => (None, String::new()),
        };
        prop_assert_eq!(panics_so_far(), panics, "the server panicked on {} {}", req.method, url);
        if let Some(status) = status {
            prop_assert!(!status.is_server_error(), "{status} for {} {url}: {text:.300}", req.method);
            if !status.is_success() && req.method != Method::HEAD {
                let error: Value = serde_json::from_str(&text)
                    .map_err(|e| TestCaseError::fail(format!("{status}: {e}: {text:.300}")))?;
                prop_assert!(
                    error["error"]["code"].is_string() && error["error"]["message"].is_string(),
                    "{status}: {text:.300}"
                );
            }
        }
        let after = snapshot(&vault, &client).await?;
        let refused = status.is_none_or(|status| !status.is_success());
        if refused || [Method::GET, Method::HEAD].contains(&req.method) {
            prop_assert!(before == after, "{status:?} for {} {url} changed the state", req.method);
        }
        Ok(())
    });
    drop(vault);
    result
}

#[test]
fn any_request_gets_no_5xx_and_a_refused_one_changes_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = contextualize_config(ProptestConfig { cases: 256, ..ProptestConfig::default() });
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&request(), |req| case(&runtime, &req)) {
        panic!("{e}");
    }
}

#[test]
fn generated_requests_reach_every_operation() {
    // Guards against a vacuous property: across the generated requests, the vault must
    // answer with successes (state changes among them) and with several kinds of refusal.
    use proptest::strategy::ValueTree;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (vault, client) = start(&runtime);
    let mut runner = TestRunner::deterministic();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut changes = 0;
    runtime.block_on(async {
        for _ in 0..200 {
            let req = request().new_tree(&mut runner).unwrap().current();
            let url = format!("https://{}:{}{}?{}", vault.host(), vault.local_addr().port(), req.path, req.query);
            let Ok(url) = reqwest::Url::parse(&url) else { continue };
            let before = snapshot(&vault, &client).await.unwrap();
            let mut builder = vault.http_client().unwrap().request(req.method.clone(), url).bearer_auth("t");
            if let Some(body) = body_bytes(&req, &vault, &client).await.unwrap() {
                builder = builder.header("content-type", "application/json").body(body);
            }
            let status = builder.send().await.unwrap().status();
            *statuses.entry(status.as_u16()).or_default() += 1;
            changes += usize::from(snapshot(&vault, &client).await.unwrap() != before);
        }
    });
    let count = |code: u16| statuses.get(&code).copied().unwrap_or_default();
    assert!(
        count(200) >= 20 && changes >= 5 && count(400) >= 10 && count(404) >= 10 && count(405) >= 5,
        "statuses {statuses:?}, state changes {changes}"
    );
    assert!(statuses.keys().all(|code| *code < 500), "{statuses:?}");
}

#[test]
fn oversized_bodies_and_values_are_refused_without_a_change() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (vault, client) = start(&runtime);
    runtime.block_on(async {
        let before = snapshot(&vault, &client).await.unwrap();
        let url = format!("{}secrets/alpha?api-version={API_VERSION}", vault.endpoint());
        let too_long = json!({ "value": "v".repeat(25 * 1024 + 1) });
        let over_limit = vec![b' '; 16 * 1024 * 1024 + 1];
        for body in [serde_json::to_vec(&too_long).unwrap(), over_limit] {
            let answer = vault
                .http_client()
                .unwrap()
                .put(&url)
                .bearer_auth("t")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        }
        assert_eq!(snapshot(&vault, &client).await.unwrap(), before);
    });
}
