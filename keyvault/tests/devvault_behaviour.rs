//! The dev vault's behaviours beyond what the recordings show, over TLS with raw reqwest:
//! the challenge, api-version and validation errors, 409 after soft delete, 403
//! `SecretDisabled`, paging with `maxresults`, version-id order, 404s, seeding.

use std::collections::BTreeMap;

use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions, SeedSecret, API_VERSION, DEV_TOKEN};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

struct Vault {
    dev: DevVault,
    http: reqwest::Client,
}

/// One answer: status, headers, JSON body (`Null` when empty).
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }
}

impl Vault {
    async fn start() -> Self {
        Self::with(DevVaultOptions::default()).await
    }

    async fn with(options: DevVaultOptions) -> Self {
        let dev = DevVault::start(options).await.unwrap();
        let http = dev.http_client().unwrap();
        Self { dev, http }
    }

    /// `path` on our endpoint, with `api-version` added unless the path has a query.
    fn url(&self, path: &str) -> String {
        let base = self.dev.endpoint().as_str().trim_end_matches('/').to_string();
        if path.contains('?') {
            format!("{base}{path}")
        } else {
            format!("{base}{path}?api-version={API_VERSION}")
        }
    }

    async fn raw(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        Answer { status, headers, body }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let url = if path.starts_with("https://") { path.to_string() } else { self.url(path) };
        let mut request = self.http.request(method, url).bearer_auth(DEV_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.raw(request).await
    }

    async fn put(&self, name: &str, body: Value) -> Answer {
        self.call(Method::PUT, &format!("/secrets/{name}"), Some(body)).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    /// Sets `value` and returns the new version id.
    async fn set(&self, name: &str, value: &str) -> String {
        let answer = self.put(name, json!({ "value": value })).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["id"].as_str().unwrap().rsplit('/').next().unwrap().to_string()
    }

    /// Follows nextLinks from `path`; returns the page sizes and every item.
    async fn pages(&self, path: &str) -> (Vec<usize>, Vec<Value>) {
        let (mut sizes, mut items) = (Vec::new(), Vec::new());
        let mut next = Some(path.to_string());
        while let Some(link) = next {
            let page = self.get(&link).await;
            assert_eq!(page.status, 200, "{link}: {}", page.body);
            let value = page.body["value"].as_array().unwrap().clone();
            sizes.push(value.len());
            items.extend(value);
            next = page.body["nextLink"].as_str().map(String::from);
        }
        (sizes, items)
    }
}

#[tokio::test]
async fn requests_without_a_bearer_token_get_the_challenge() {
    let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let vault = Vault::with(DevVaultOptions { tenant_id: tenant.into(), ..Default::default() }).await;
    let challenge = format!(
        "Bearer authorization=\"https://login.microsoftonline.com/{tenant}\", resource=\"https://vault.azure.net\""
    );
    for authorization in [None, Some("Bearer "), Some("Basic dXNlcjpwYXNz")] {
        // No api-version either: authentication is checked first.
        let mut request = vault.http.put(vault.url("/secrets/x?")).body("{\"value\":\"v\"}");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let answer = vault.raw(request).await;
        assert_eq!(answer.status, 401, "{authorization:?}");
        assert_eq!(answer.headers["www-authenticate"], challenge.as_str());
        assert_eq!(answer.headers["content-type"], "application/json; charset=utf-8");
        assert_eq!(
            answer.body,
            json!({"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer, PoP, or MTLS_POP token."}})
        );
    }
    assert_eq!(vault.call(Method::GET, "/secrets", None).await.status, 200, "any non-empty token is accepted");
}

#[tokio::test]
async fn api_version_is_required_and_checked() {
    let vault = Vault::start().await;
    let missing = vault.get("/secrets?").await;
    assert_eq!((missing.status, missing.code()), (400, "BadParameter"));
    let unknown = vault.get("/secrets?api-version=1999-01-01").await;
    assert_eq!((unknown.status, unknown.code()), (400, "BadParameter"));
    assert_eq!(
        unknown.message(),
        "The specified version (1999-01-01) is not recognized. Consider using the latest supported version (2025-07-01)."
    );
    assert_eq!(vault.get("/secrets?api-version=7.4").await.status, 200, "older versions of the same API are accepted");
}

#[tokio::test]
async fn names_are_validated_and_case_insensitive() {
    let vault = Vault::start().await;
    for bad in ["bad_name", "dot.name", &"a".repeat(128)] {
        let answer = vault.put(bad, json!({"value": "v"})).await;
        assert_eq!((answer.status, answer.code()), (400, "BadParameter"), "{bad}");
        assert_eq!(answer.message(), format!("The request URI contains an invalid name: {bad}"));
        assert_eq!(vault.get(&format!("/secrets/{bad}")).await.status, 400, "GET {bad}");
    }
    vault.set(&"a".repeat(127), "v").await;
    vault.set("0-starts-with-a-digit", "v").await;

    // `restore` and `versions` are names too, on the methods that do not mean the operations.
    vault.set("restore", "r").await;
    assert_eq!(vault.get("/secrets/restore").await.body["value"], "r");

    let version = vault.set("MixedCase", "one").await;
    let again = vault.put("mixedcase", json!({"value": "two"})).await;
    assert!(again.body["id"].as_str().unwrap().contains("/secrets/MixedCase/"), "{}", again.body);
    assert_eq!(vault.get("/secrets/MIXEDCASE").await.body["value"], "two");
    assert_eq!(vault.get(&format!("/secrets/mixedCASE/{}", version.to_uppercase())).await.body["value"], "one");
}

#[tokio::test]
async fn values_tags_and_content_types_have_the_service_limits() {
    let vault = Vault::start().await;
    let tags = |n: usize| -> BTreeMap<String, String> { (0..n).map(|i| (format!("t{i}"), "v".into())).collect() };
    let tag = |k: usize, v: usize| BTreeMap::from([("k".repeat(k), "v".repeat(v))]);
    let accepted = [
        json!({"value": "v", "attributes": {"enabled": false, "nbf": 1, "exp": 2, "created": 5, "recoveryLevel": "x"}}),
        json!({"value": "x".repeat(25 * 1024)}),
        json!({"value": ""}),
        json!({"value": "v", "tags": tags(15)}),
        json!({"value": "v", "tags": tag(256, 256)}),
        json!({"value": "v", "contentType": "c".repeat(255)}),
    ];
    for body in accepted {
        let answer = vault.put("limits", body.clone()).await;
        assert_eq!(answer.status, 200, "{body}: {}", answer.body);
    }
    let refused = [
        json!({"value": "x".repeat(25 * 1024 + 1)}),
        json!({"value": "é".repeat(12_801)}), // 25,602 bytes in 12,801 characters
        json!({"value": "v", "tags": tags(16)}),
        json!({"value": "v", "tags": tag(257, 1)}),
        json!({"value": "v", "tags": tag(1, 257)}),
        json!({"value": "v", "contentType": "c".repeat(256)}),
        json!({"contentType": "no value"}),
        json!({"value": 5}),
        json!({"value": "v", "tags": {"k": 1}}),
    ];
    for body in refused {
        let answer = vault.put("limits", body.clone()).await;
        assert_eq!((answer.status, answer.code()), (400, "BadParameter"), "{body}: {}", answer.body);
    }
    let not_json = vault.raw(vault.http.put(vault.url("/secrets/limits")).bearer_auth(DEV_TOKEN).body("{")).await;
    assert_eq!((not_json.status, not_json.code()), (400, "BadParameter"));
    let patch = vault.call(Method::PATCH, "/secrets/limits/", Some(json!({"tags": tags(16)}))).await;
    assert_eq!((patch.status, patch.code()), (400, "BadParameter"));
    assert_eq!(vault.get("/secrets/limits").await.body["value"], "v", "refused writes change nothing");
}

#[tokio::test]
async fn a_soft_deleted_name_cannot_be_reused_until_recovered_or_purged() {
    let vault = Vault::start().await;
    let first = vault.set("db-password", "one").await;
    let second = vault.set("db-password", "two").await;
    let backup = vault.call(Method::POST, "/secrets/db-password/backup", None).await;
    assert_eq!(backup.status, 200);

    let deleted = vault.call(Method::DELETE, "/secrets/db-password", None).await;
    assert_eq!(deleted.status, 200);
    assert!(deleted.body.get("value").is_none(), "a deleted bundle has no value");
    assert_eq!(
        deleted.body["scheduledPurgeDate"].as_i64().unwrap() - deleted.body["deletedDate"].as_i64().unwrap(),
        90 * 86_400
    );
    let conflict = vault.put("db-password", json!({"value": "three"})).await;
    assert_eq!(conflict.status, 409);
    assert_eq!(
        conflict.body,
        json!({"error": {
            "code": "Conflict",
            "message": "Secret db-password is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged.",
            "innererror": {"code": "ObjectIsDeletedButRecoverable"}
        }})
    );
    assert_eq!(vault.put("DB-PASSWORD", json!({"value": "three"})).await.status, 409, "names are case-insensitive");
    let restore = vault.call(Method::POST, "/secrets/restore", Some(json!({"value": backup.body["value"]}))).await;
    assert_eq!((restore.status, restore.code()), (409, "Conflict"));
    assert_eq!(vault.get("/secrets/db-password").await.status, 404);
    assert_eq!(vault.get("/secrets/db-password/versions").await.body, json!({"value": [], "nextLink": null}));

    let recovered = vault.call(Method::POST, "/deletedsecrets/db-password/recover", None).await;
    assert_eq!(recovered.status, 200);
    assert!(recovered.body["id"].as_str().unwrap().ends_with(&second));
    assert_eq!(vault.get(&format!("/secrets/db-password/{first}")).await.body["value"], "one");
    let restore_over_live =
        vault.call(Method::POST, "/secrets/restore", Some(json!({"value": backup.body["value"]}))).await;
    assert_eq!((restore_over_live.status, restore_over_live.code()), (409, "Conflict"));

    vault.call(Method::DELETE, "/secrets/db-password", None).await;
    let purged = vault.call(Method::DELETE, "/deletedsecrets/db-password", None).await;
    assert_eq!(purged.status, 204);
    assert_eq!(purged.body, Value::Null);
    assert!(purged.headers.get("content-type").is_none());
    vault.set("db-password", "fresh").await;
    let (_, versions) = vault.pages("/secrets/db-password/versions").await;
    assert_eq!(versions.len(), 1, "a purged secret's versions are gone");
}

#[tokio::test]
async fn a_disabled_version_cannot_be_read() {
    let vault = Vault::start().await;
    let v1 = vault.set("pw", "one").await;
    let v2 = vault.set("pw", "two").await;
    let patch = vault.call(Method::PATCH, "/secrets/pw/", Some(json!({"attributes": {"enabled": false}}))).await;
    assert_eq!(patch.status, 200);
    assert!(patch.body["id"].as_str().unwrap().ends_with(&v2), "PATCH without a version updates the latest");
    assert!(patch.body.get("value").is_none());

    let forbidden = json!({"error": {
        "code": "Forbidden",
        "message": "Operation get is not allowed on a disabled secret.",
        "innererror": {"code": "SecretDisabled"}
    }});
    for path in ["/secrets/pw".to_string(), "/secrets/pw/".to_string(), format!("/secrets/pw/{v2}")] {
        let answer = vault.get(&path).await;
        assert_eq!((answer.status, &answer.body), (403, &forbidden), "{path}");
    }
    assert_eq!(vault.get(&format!("/secrets/pw/{v1}")).await.body["value"], "one", "older versions stay readable");
    let (_, items) = vault.pages("/secrets").await;
    assert_eq!(items[0]["attributes"]["enabled"], false, "the listing shows the latest version's state");

    vault.set("pw", "three").await;
    assert_eq!(vault.get("/secrets/pw").await.body["value"], "three", "a new version is enabled by default");
}

#[tokio::test]
async fn listings_page_with_maxresults_and_skiptokens() {
    let vault = Vault::start().await;
    for i in 0..30 {
        vault.set(&format!("s{i:02}"), "v").await;
    }
    let first = vault.get("/secrets").await;
    assert_eq!(first.body["value"].as_array().unwrap().len(), 25, "25 per page by default");
    let next = first.body["nextLink"].as_str().unwrap();
    let port = vault.dev.local_addr().port();
    assert!(
        next.starts_with(&format!(
            "https://devvault.vault.azure.net:{port}/secrets?api-version=2025-07-01&$skiptoken="
        )),
        "{next}"
    );
    assert!(first.body["value"][0].get("value").is_none(), "listings carry no values");
    assert_eq!(first.body["value"][0]["id"], "https://devvault.vault.azure.net/secrets/s00");

    let (sizes, items) = vault.pages("/secrets").await;
    assert_eq!(sizes, [25, 5]);
    let names: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap().rsplit('/').next().unwrap()).collect();
    let expected: Vec<String> = (0..30).map(|i| format!("s{i:02}")).collect();
    assert_eq!(names, expected);

    let (sizes, _) = vault.pages("/secrets?maxresults=7&api-version=2025-07-01").await;
    assert_eq!(sizes, [7, 7, 7, 7, 2]);
    let page = vault.get("/secrets?api-version=2025-07-01&maxresults=7").await;
    let next = page.body["nextLink"].as_str().unwrap();
    assert!(next.ends_with("&maxresults=7"), "{next}");

    // As the SDK sends it: `$` encoded and the parameters reordered.
    let token = url::Url::parse(next).unwrap().query_pairs().find(|(k, _)| k == "$skiptoken").unwrap().1.into_owned();
    let reordered = format!("/secrets?maxresults=7&%24skiptoken={token}&api-version=2025-07-01");
    let second = vault.get(&reordered).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body["value"][0]["id"], "https://devvault.vault.azure.net/secrets/s07");

    for bad in ["maxresults=26", "maxresults=0", "maxresults=x", "$skiptoken=bm90LW91cnM"] {
        let answer = vault.get(&format!("/secrets?api-version=2025-07-01&{bad}")).await;
        assert_eq!((answer.status, answer.code()), (400, "BadParameter"), "{bad}");
    }
    let foreign = format!("/deletedsecrets?api-version=2025-07-01&$skiptoken={token}");
    assert_eq!(vault.get(&foreign).await.status, 400, "a skiptoken belongs to its listing");

    for i in 0..3 {
        vault.call(Method::DELETE, &format!("/secrets/s{i:02}"), None).await;
    }
    let (sizes, deleted) = vault.pages("/deletedsecrets?api-version=2025-07-01&maxresults=2").await;
    assert_eq!(sizes, [2, 1]);
    assert_eq!(deleted[0]["recoveryId"], "https://devvault.vault.azure.net/deletedsecrets/s00");
    assert_eq!(deleted[0]["id"], "https://devvault.vault.azure.net/secrets/s00", "deleted items name no version");
}

#[tokio::test]
async fn versions_are_listed_in_id_order() {
    let vault = Vault::start().await;
    let mut created = Vec::new();
    for i in 0..12 {
        let version = vault.set("rotated", &format!("v{i}")).await;
        assert!(version.len() == 32 && version.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        created.push(version);
    }
    let (sizes, items) = vault.pages("/secrets/rotated/versions?api-version=2025-07-01&maxresults=5").await;
    assert_eq!(sizes, [5, 5, 2]);
    let listed: Vec<String> =
        items.iter().map(|i| i["id"].as_str().unwrap().rsplit('/').next().unwrap().to_string()).collect();
    let mut sorted = created.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "id order, not creation order ({created:?})");
    assert!(items.iter().all(|i| i.get("value").is_none()));

    let unknown = vault.get("/secrets/never-set/versions").await;
    assert_eq!((unknown.status, unknown.body), (200, json!({"value": [], "nextLink": null})));
}

#[tokio::test]
async fn missing_secrets_are_404_with_the_service_messages() {
    let vault = Vault::start().await;
    let not_found = "A secret with (name/id) nope was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182";
    for (method, path) in [
        (Method::GET, "/secrets/nope"),
        (Method::GET, "/secrets/nope/"),
        (Method::DELETE, "/secrets/nope"),
        (Method::POST, "/secrets/nope/backup"),
    ] {
        let answer = vault.call(method.clone(), path, None).await;
        assert_eq!(
            (answer.status, answer.code(), answer.message()),
            (404, "SecretNotFound", not_found),
            "{method} {path}"
        );
    }
    let patch = vault.call(Method::PATCH, "/secrets/nope", Some(json!({"contentType": "x"}))).await;
    assert_eq!((patch.status, patch.code()), (404, "SecretNotFound"));

    vault.set("there", "v").await;
    let version = "0123456789abcdef0123456789abcdef";
    let answer = vault.get(&format!("/secrets/there/{version}")).await;
    assert_eq!(answer.status, 404);
    assert!(answer.message().starts_with(&format!("A secret with (name/id) there/{version} was not found")));

    for (method, path) in [
        (Method::GET, "/deletedsecrets/nope"),
        (Method::DELETE, "/deletedsecrets/nope"),
        (Method::POST, "/deletedsecrets/nope/recover"),
        (Method::GET, "/deletedsecrets/there"),
    ] {
        let answer = vault.call(method.clone(), path, None).await;
        assert_eq!((answer.status, answer.code()), (404, "SecretNotFound"), "{method} {path}");
        assert!(answer.message().starts_with("Deleted Secret not found: "), "{}", answer.message());
    }
    assert_eq!(vault.get("/keys/k").await.status, 404);
    assert_eq!(vault.call(Method::POST, "/secrets", None).await.status, 405);
}

#[tokio::test]
async fn answers_carry_the_service_headers() {
    let vault = Vault::start().await;
    let answer = vault.put("h", json!({"value": "v"})).await;
    for (name, value) in [
        ("content-type", "application/json; charset=utf-8"),
        ("cache-control", "no-cache"),
        ("pragma", "no-cache"),
        ("expires", "-1"),
        ("x-content-type-options", "nosniff"),
        ("strict-transport-security", "max-age=31536000;includeSubDomains"),
    ] {
        assert_eq!(answer.headers[name], value, "{name}");
    }
    for name in [
        "x-ms-request-id",
        "x-ms-keyvault-region",
        "x-ms-keyvault-service-version",
        "x-ms-keyvault-network-info",
        "date",
    ] {
        assert!(answer.headers.contains_key(name), "{name}");
    }
    assert_eq!(
        answer.headers["x-ms-keyvault-network-info"],
        "conn_type=Ipv4;addr=127.0.0.1;act_addr_fam=InterNetwork;"
    );
}

#[tokio::test]
async fn seeding_makes_what_the_rest_api_cannot() {
    let vault = Vault::start().await;
    vault
        .dev
        .seed(SeedSecret {
            name: "cert-backed".into(),
            value: "pem".into(),
            content_type: Some("application/x-pem-file".into()),
            created: Some(1_700_000_000),
            managed: true,
            ..Default::default()
        })
        .unwrap();
    vault
        .dev
        .seed(SeedSecret {
            name: "gone".into(),
            value: "v".into(),
            deleted_date: Some(1_700_000_100),
            ..Default::default()
        })
        .unwrap();
    assert!(vault.dev.seed(SeedSecret { name: "GONE".into(), ..Default::default() }).is_err(), "names are taken");
    assert!(vault.dev.seed(SeedSecret { name: "bad name".into(), ..Default::default() }).is_err());

    let item = &vault.pages("/secrets").await.1[0];
    assert_eq!(item["managed"], true);
    assert_eq!(item["attributes"]["created"], 1_700_000_000);
    assert_eq!(item["attributes"]["updated"], 1_700_000_000);
    let deleted = vault.get("/deletedsecrets/gone").await;
    assert_eq!(deleted.body["deletedDate"], 1_700_000_100);
    assert_eq!(deleted.body["scheduledPurgeDate"], 1_700_000_100 + 90 * 86_400);
    assert_eq!(vault.put("gone", json!({"value": "v"})).await.status, 409);
    vault.dev.shutdown().await;
}
