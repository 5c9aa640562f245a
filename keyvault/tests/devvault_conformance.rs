//! Replays every recording of real Key Vault traffic against a fresh dev vault.
//!
//! The recordings (Azure SDK for Python test-proxy sessions, api-version 2025-07-01; see
//! their SOURCES.md) are read from `../shared/fixtures/keyvault-recordings` beside the
//! repository, not in it (or from `KV_ROTATOR_RECORDINGS`; docs/testing.md, "Fixtures
//! outside the repository"). They are sent in order over TLS with
//! raw reqwest, and each answer is compared with the recorded one: status, error codes
//! and messages, the set of keys of every JSON object (recursively), ids with recorded
//! versions mapped to ours as they appear, times as integers (`nbf`/`exp` exactly, since
//! requests set them), and the headers (`WWW-Authenticate`, `Content-Type`, every header
//! name the service sent, the fixed values among them).
//!
//! Where the recording cannot be reproduced literally, the test says how it compares
//! instead (each rule is at its code):
//! - The proxy strips `Authorization`; a recorded 2xx/4xx other than 401 proves the
//!   client had a token, so ours carries one; recorded 401s are sent without.
//! - The vault held secrets before the session (certificate-backed ones among them); the
//!   listings reveal them, and they are seeded into the fresh vault first.
//! - A 404 that the real service gave while a deletion or recovery was still in
//!   progress, followed by 200 for the same request: the dev vault completes at once, so
//!   ours must be 200 and is compared with that later recorded 200; the recorded 404's
//!   body is checked with a probe for a name that does not exist.
//! - Listings are compared as whole chains (following our `nextLink`s): the same items in
//!   the same order. The service's page boundaries depend on its storage (pages of 25,
//!   20, 2; empty pages that still carry a `nextLink`), so page sizes are compared only
//!   where the recorded chain is regular (full pages, then the rest).
//! - Versions are random, so a versions listing is compared as the set of mapped
//!   versions, and ours must be in version-id order (as the recorded one is).
//! - Backup blobs are opaque: ours must be base64url; restore sends ours.
//!
//! Set `KV_ROTATOR_RECORDINGS` to read the recordings from elsewhere.
//!
//! Size: ~650 lines for one test, ~400 of them `Replay`: the comparison of a recorded
//! answer with ours, one rule per way a recording cannot be replayed literally (listed
//! above), all on its one id and version mapping.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions, SeedSecret, DEV_TOKEN};
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

/// The vault name the recordings' ids carry after sanitization.
const RECORDED_VAULT: &str = "vaultname";
/// Headers whose values are the same in every answer of the service.
const FIXED_HEADERS: &[&str] =
    &["cache-control", "pragma", "expires", "strict-transport-security", "x-content-type-options"];
/// Keys holding times the service sets (compared as integers only).
const SERVICE_TIMES: &[&str] = &["created", "updated", "deletedDate", "scheduledPurgeDate"];
/// Keys holding times the client sets (compared exactly).
const CLIENT_TIMES: &[&str] = &["nbf", "exp"];
const DEFAULT_PAGE: usize = 25;

#[derive(Debug, Deserialize)]
struct RecordingFile {
    #[serde(rename = "Entries")]
    entries: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    request_uri: String,
    request_method: String,
    request_headers: BTreeMap<String, String>,
    request_body: Option<Value>,
    status_code: u16,
    response_headers: BTreeMap<String, String>,
    response_body: Option<Value>,
}

impl Entry {
    fn url(&self) -> url::Url {
        url::Url::parse(&self.request_uri).expect("recorded URIs parse")
    }
    fn path(&self) -> String {
        self.url().path().to_string()
    }
    fn has_skiptoken(&self) -> bool {
        self.url().query_pairs().any(|(k, _)| k == "$skiptoken")
    }
    fn is_listing(&self) -> bool {
        matches!(&self.response_body, Some(Value::Object(o)) if o.get("value").is_some_and(Value::is_array) && o.contains_key("nextLink"))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.response_headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One of our answers.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Option<Value>,
}

#[derive(Debug, Default)]
struct Counts {
    recordings: usize,
    entries: usize,
    one_by_one: usize,
    chains: usize,
    chained_entries: usize,
    transient: usize,
    seeded: usize,
    versions_mapped: usize,
}

fn recordings_dir() -> PathBuf {
    std::env::var_os("KV_ROTATOR_RECORDINGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/keyvault-recordings"))
}

fn is_version(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn last_segment(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or_default()
}

/// State of one replay: the vault, the maps from recorded to our values, the failures.
struct Replay {
    file: String,
    vault: DevVault,
    client: reqwest::Client,
    /// Recorded version → ours, and back (the map must stay one-to-one).
    versions: HashMap<String, String>,
    versions_back: HashMap<String, String>,
    /// Recorded backup blob → ours.
    blobs: HashMap<String, String>,
    failures: Vec<String>,
}

impl Replay {
    fn fail(&mut self, index: usize, entry: &Entry, what: String) {
        let path = entry.path();
        self.failures.push(format!("{} entry {index} ({} {path}): {what}", self.file, entry.request_method));
    }

    fn base(&self) -> String {
        format!("https://{}:{}", self.vault.host(), self.vault.local_addr().port())
    }

    /// The recorded request's path and query on our vault, recorded versions replaced.
    fn our_url(&self, entry: &Entry) -> Result<String, String> {
        let url = entry.url();
        let mut segments = Vec::new();
        for segment in url.path().split('/') {
            if is_version(segment) {
                match self.versions.get(segment) {
                    Some(ours) => segments.push(ours.clone()),
                    None => return Err(format!("recorded version {segment} was never seen in an answer")),
                }
            } else {
                segments.push(segment.to_string());
            }
        }
        let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
        Ok(format!("{}{}{query}", self.base(), segments.join("/")))
    }

    fn swap_blobs(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.blobs.get(s).cloned().unwrap_or_else(|| s.clone())),
            Value::Array(a) => Value::Array(a.iter().map(|v| self.swap_blobs(v)).collect()),
            Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), self.swap_blobs(v))).collect()),
            other => other.clone(),
        }
    }

    async fn send(&self, method: &str, url: &str, entry: Option<&Entry>, authorize: bool) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("recorded methods are valid");
        let mut request = self.client.request(method, url);
        if authorize {
            request = request.bearer_auth(DEV_TOKEN);
        }
        if let Some(entry) = entry {
            if let Some((_, ct)) = entry.request_headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
                request = request.header("content-type", ct);
            }
            if let Some(body) = &entry.request_body {
                request = request.body(serde_json::to_vec(&self.swap_blobs(body)).unwrap());
            }
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{}: sending to {url}: {e}", self.file));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("reading our answer");
        let body = if bytes.is_empty() {
            None
        } else {
            Some(
                serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: our answer is not JSON: {e}", self.file)),
            )
        };
        Answer { status, headers, body }
    }

    /// The proxy strips `Authorization`; only the recorded 401s went without one.
    fn authorize(entry: &Entry) -> bool {
        entry.request_headers.keys().any(|k| k.eq_ignore_ascii_case("authorization")) || entry.status_code != 401
    }

    fn compare_headers(&self, recorded: &Entry, ours: &HeaderMap) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in &recorded.response_headers {
            let lower = name.to_ascii_lowercase();
            let Some(our) = ours.get(&lower).and_then(|v| v.to_str().ok()) else {
                problems.push(format!("header {name} missing"));
                continue;
            };
            let exact =
                FIXED_HEADERS.contains(&lower.as_str()) || lower == "content-type" || lower == "www-authenticate";
            if exact && our != value {
                problems.push(format!("header {name}: recorded {value:?}, ours {our:?}"));
            }
        }
        for name in ["content-type", "www-authenticate"] {
            if recorded.header(name).is_none() && ours.contains_key(name) {
                problems.push(format!("header {name} present, recorded answer has none"));
            }
        }
        problems
    }

    /// Compares an id (or recoveryId), mapping recorded versions to ours.
    fn compare_id(&mut self, path: &str, recorded: &str, ours: &str, problems: &mut Vec<String>) {
        let (r, o): (Vec<&str>, Vec<&str>) = (recorded.split('/').collect(), ours.split('/').collect());
        if r.len() != o.len() {
            problems.push(format!("{path}: recorded {recorded:?}, ours {ours:?}"));
            return;
        }
        for (rs, os) in r.iter().zip(&o) {
            if is_version(rs) && is_version(os) {
                match (self.versions.get(*rs), self.versions_back.get(*os)) {
                    (Some(mapped), _) if mapped == os => {}
                    (None, None) => {
                        self.versions.insert(rs.to_string(), os.to_string());
                        self.versions_back.insert(os.to_string(), rs.to_string());
                    }
                    _ => problems
                        .push(format!("{path}: version {rs} maps to {:?}, ours is {os}", self.versions.get(*rs))),
                }
            } else if rs != os {
                problems.push(format!("{path}: recorded {recorded:?}, ours {ours:?}"));
                return;
            }
        }
    }

    /// Recursive comparison: same keys, same types; values compared per the module rules.
    fn compare_json(&mut self, path: &str, recorded: &Value, ours: &Value, backup: bool, problems: &mut Vec<String>) {
        match (recorded, ours) {
            (Value::Object(r), Value::Object(o)) => {
                let rk: BTreeSet<&String> = r.keys().collect();
                let ok: BTreeSet<&String> = o.keys().collect();
                if rk != ok {
                    let missing: Vec<_> = rk.difference(&ok).collect();
                    let extra: Vec<_> = ok.difference(&rk).collect();
                    problems.push(format!("{path}: keys differ, missing {missing:?}, extra {extra:?}"));
                }
                for (key, rv) in r {
                    let Some(ov) = o.get(key) else { continue };
                    let sub = format!("{path}.{key}");
                    let both_int = rv.is_i64() && ov.is_i64();
                    if matches!(key.as_str(), "id" | "recoveryId" | "kid") {
                        match (rv.as_str(), ov.as_str()) {
                            (Some(rs), Some(os)) => self.compare_id(&sub, rs, os, problems),
                            _ => problems.push(format!("{sub}: recorded {rv}, ours {ov}")),
                        }
                    } else if SERVICE_TIMES.contains(&key.as_str()) {
                        if !both_int {
                            problems.push(format!("{sub}: recorded {rv}, ours {ov} (both must be unix seconds)"));
                        }
                    } else if CLIENT_TIMES.contains(&key.as_str()) {
                        if !both_int || rv != ov {
                            problems.push(format!("{sub}: recorded {rv}, ours {ov}"));
                        }
                    } else if backup && path == "$" && key == "value" {
                        match (rv.as_str(), ov.as_str()) {
                            (Some(rs), Some(os)) if azure_core::base64::decode_url_safe(os).is_ok() => {
                                self.blobs.insert(rs.to_string(), os.to_string());
                            }
                            _ => problems.push(format!("{sub}: ours {ov} is not a base64url blob")),
                        }
                    } else {
                        self.compare_json(&sub, rv, ov, backup, problems);
                    }
                }
                if let (Some(d), Some(p)) = (o.get("deletedDate"), o.get("scheduledPurgeDate")) {
                    if p.as_i64().zip(d.as_i64()).map(|(p, d)| p - d) != Some(90 * 86_400) {
                        problems.push(format!("{path}: scheduledPurgeDate {p} is not deletedDate {d} + 90 days"));
                    }
                }
            }
            (Value::Array(r), Value::Array(o)) => {
                if r.len() != o.len() {
                    problems.push(format!("{path}: {} items recorded, {} ours", r.len(), o.len()));
                }
                for (i, (rv, ov)) in r.iter().zip(o).enumerate() {
                    self.compare_json(&format!("{path}[{i}]"), rv, ov, backup, problems);
                }
            }
            (r, o) if r == o => {}
            (r, o) => problems.push(format!("{path}: recorded {r}, ours {o}")),
        }
    }

    /// Compares one answer with one recorded entry.
    fn compare_answer(&mut self, recorded: &Entry, ours: &Answer) -> Vec<String> {
        let mut problems = Vec::new();
        if recorded.status_code != ours.status {
            problems.push(format!(
                "status: recorded {}, ours {} (body {:?})",
                recorded.status_code, ours.status, ours.body
            ));
            return problems;
        }
        problems.extend(self.compare_headers(recorded, &ours.headers));
        let backup = recorded.path().ends_with("/backup");
        match (&recorded.response_body, &ours.body) {
            (None, None) => {}
            (Some(r), Some(o)) => self.compare_json("$", r, o, backup, &mut problems),
            (r, o) => problems.push(format!("body: recorded {r:?}, ours {o:?}")),
        }
        problems
    }

    /// A recorded 404 that turned to 200 on the next identical request was the service
    /// still completing a delete or recover: returns the index of that 200.
    fn transient_until(entries: &[Entry], index: usize) -> Option<usize> {
        let entry = &entries[index];
        if entry.status_code != 404 {
            return None;
        }
        let same = |e: &Entry| e.request_method == entry.request_method && e.request_uri == entry.request_uri;
        entries[index + 1..]
            .iter()
            .take_while(|e| same(e))
            .position(|e| e.status_code == 200)
            .map(|offset| index + 1 + offset)
    }

    async fn one(&mut self, entries: &[Entry], index: usize, counts: &mut Counts) {
        let entry = &entries[index];
        let url = match self.our_url(entry) {
            Ok(url) => url,
            Err(e) => return self.fail(index, entry, e),
        };
        let ours = self.send(&entry.request_method, &url, Some(entry), Self::authorize(entry)).await;
        let problems = match Self::transient_until(entries, index) {
            Some(done) => {
                counts.transient += 1;
                let mut problems = Vec::new();
                if ours.status != 200 {
                    problems.push(format!("expected the operation to be complete already (200), got {}", ours.status));
                } else {
                    // The dev vault completes at once: compare with the later recorded 200.
                    problems.extend(self.compare_answer(&entries[done], &ours));
                }
                problems.extend(self.probe_not_found(entry).await);
                problems
            }
            None => self.compare_answer(entry, &ours),
        };
        for p in problems {
            self.fail(index, entry, p);
        }
    }

    /// Checks a recorded 404 body on a name that does not exist here either.
    async fn probe_not_found(&mut self, entry: &Entry) -> Vec<String> {
        let url = match self.our_url(entry) {
            Ok(url) => url,
            Err(e) => return vec![e],
        };
        let path = entry.path();
        let Some(name) = path.split('/').filter(|s| !s.is_empty()).nth(1) else {
            return vec!["no name to probe with".into()];
        };
        let probe = format!("{name}-probe");
        let url = url.replacen(&format!("/{name}"), &format!("/{probe}"), 1);
        let ours = self.send(&entry.request_method, &url, Some(entry), true).await;
        let recorded = serde_json::to_string(&entry.response_body).unwrap().replace(name, &probe);
        let recorded: Value = serde_json::from_str(&recorded).unwrap();
        let mut problems = Vec::new();
        if ours.status != entry.status_code {
            problems.push(format!("probe {probe}: status {}, recorded {}", ours.status, entry.status_code));
        } else if ours.body.as_ref() != Some(&recorded) {
            problems.push(format!("probe {probe}: body {:?}, recorded {recorded}", ours.body));
        }
        problems.extend(self.compare_headers(entry, &ours.headers).into_iter().map(|p| format!("probe {probe}: {p}")));
        problems
    }

    /// A listing and its recorded continuation pages, compared as one chain.
    async fn chain(&mut self, entries: &[Entry], start: usize, end: usize, counts: &mut Counts) {
        let first = &entries[start];
        counts.chains += 1;
        counts.chained_entries += end - start;
        let fail_all = |this: &mut Self, what: String| this.fail(start, first, what);
        let first_url = match self.our_url(first) {
            Ok(url) => url,
            Err(e) => return fail_all(self, e),
        };
        let first_query: HashMap<String, String> = first.url().query_pairs().into_owned().collect();
        let page_size = first_query.get("maxresults").and_then(|m| m.parse().ok()).unwrap_or(DEFAULT_PAGE);

        let mut pages = vec![self.send("GET", &first_url, Some(first), true).await];
        while let Some(next) = pages.last().and_then(|p| p.body.as_ref()).and_then(|b| b["nextLink"].as_str()) {
            let next = next.to_string();
            if let Some(problem) = self.check_next_link(&next, &first.path(), &first_query) {
                return fail_all(self, problem);
            }
            if pages.len() > 100 {
                return fail_all(self, "more than 100 pages".into());
            }
            pages.push(self.send("GET", &next, None, true).await);
        }

        let recorded = &entries[start..end];
        let mut problems = Vec::new();
        for (i, page) in pages.iter().enumerate() {
            if page.status != 200 {
                problems.push(format!("our page {i}: status {} ({:?})", page.status, page.body));
            }
        }
        if recorded.iter().any(|e| e.status_code != 200) {
            problems.push("the recorded pages are not all 200; this test cannot compare them".into());
        }
        if !problems.is_empty() {
            for p in problems {
                self.fail(start, first, p);
            }
            return;
        }
        for (i, page) in pages.iter().enumerate() {
            problems
                .extend(self.compare_headers(first, &page.headers).into_iter().map(|p| format!("our page {i}: {p}")));
        }
        let items = |bodies: Vec<&Value>| -> Vec<Value> {
            bodies.iter().flat_map(|b| b["value"].as_array().cloned().unwrap_or_default()).collect()
        };
        let rec_items = items(recorded.iter().filter_map(|e| e.response_body.as_ref()).collect());
        let our_items = items(pages.iter().filter_map(|p| p.body.as_ref()).collect());
        let our_sizes: Vec<usize> =
            pages.iter().map(|p| p.body.as_ref().map_or(0, |b| b["value"].as_array().map_or(0, Vec::len))).collect();
        let rec_sizes: Vec<usize> = recorded
            .iter()
            .map(|e| e.response_body.as_ref().map_or(0, |b| b["value"].as_array().map_or(0, Vec::len)))
            .collect();

        // Our pages are full but for the last; the service's only where the chain is regular.
        if our_sizes.iter().any(|&n| n > page_size) || our_sizes[..our_sizes.len() - 1].iter().any(|&n| n != page_size)
        {
            problems.push(format!("our page sizes {our_sizes:?} for maxresults {page_size}"));
        }
        let regular = rec_sizes[..rec_sizes.len() - 1].iter().all(|&n| n == page_size)
            && rec_sizes.last().is_some_and(|&n| n <= page_size);
        if regular && rec_sizes != our_sizes {
            problems.push(format!("page sizes: recorded {rec_sizes:?}, ours {our_sizes:?}"));
        }
        if recorded.last().and_then(|e| e.response_body.as_ref()).is_some_and(|b| !b["nextLink"].is_null()) {
            problems.push("the recorded chain does not end with nextLink null".into());
        }

        if first.path().ends_with("/versions") {
            self.compare_versions(&rec_items, &our_items, &mut problems);
        } else {
            let names = |items: &[Value]| -> Vec<String> {
                items.iter().map(|i| last_segment(i["id"].as_str().unwrap_or_default()).to_string()).collect()
            };
            let (rec_names, our_names) = (names(&rec_items), names(&our_items));
            if rec_names != our_names {
                problems.push(format!("items (in order): recorded {rec_names:?}, ours {our_names:?}"));
            } else {
                for (i, (r, o)) in rec_items.iter().zip(&our_items).enumerate() {
                    self.compare_json(&format!("$.value[{i}]"), r, o, false, &mut problems);
                }
            }
        }
        for p in problems {
            self.fail(start, first, p);
        }
    }

    fn check_next_link(&self, next: &str, path: &str, first_query: &HashMap<String, String>) -> Option<String> {
        let Ok(url) = url::Url::parse(next) else { return Some(format!("nextLink {next:?} is not absolute")) };
        let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
        let expected_port = self.vault.local_addr().port();
        let ok = url.scheme() == "https"
            && url.host_str() == Some(self.vault.host().as_str())
            && url.port() == Some(expected_port)
            && url.path() == path
            && query.get("api-version") == first_query.get("api-version")
            && query.contains_key("$skiptoken")
            && query.get("maxresults") == first_query.get("maxresults");
        (!ok).then(|| format!("nextLink {next:?} is not https://{}:{expected_port}{path} with api-version, $skiptoken and the first request's maxresults", self.vault.host()))
    }

    /// Versions listings: the same set of (mapped) versions, each in id order.
    fn compare_versions(&mut self, recorded: &[Value], ours: &[Value], problems: &mut Vec<String>) {
        let version = |item: &Value| last_segment(item["id"].as_str().unwrap_or_default()).to_string();
        let rec_versions: Vec<String> = recorded.iter().map(version).collect();
        let our_versions: Vec<String> = ours.iter().map(version).collect();
        let sorted = |v: &[String]| v.windows(2).all(|w| w[0] < w[1]);
        if !sorted(&rec_versions) {
            problems.push(format!("the recording itself is not in version-id order: {rec_versions:?}"));
        }
        if !sorted(&our_versions) {
            problems.push(format!("ours not in version-id order: {our_versions:?}"));
        }
        let by_version: HashMap<String, &Value> = our_versions.iter().cloned().zip(ours.iter()).collect();
        if recorded.len() != ours.len() {
            problems.push(format!("{} versions recorded, {} ours", recorded.len(), ours.len()));
        }
        for (i, item) in recorded.iter().enumerate() {
            let rec = version(item);
            match self.versions.get(&rec).and_then(|o| by_version.get(o)) {
                Some(our_item) => {
                    let our_item = (*our_item).clone();
                    self.compare_json(&format!("$.value[{i}]"), item, &our_item, false, problems);
                }
                None => problems.push(format!("recorded version {rec} is not in our listing")),
            }
        }
    }
}

/// Secrets the listings show but the session never created: the vault's prior state.
fn seeds(entries: &[Entry]) -> Vec<SeedSecret> {
    let created: HashSet<String> = entries
        .iter()
        .filter(|e| e.request_method == "PUT")
        .filter_map(|e| e.path().split('/').nth(2).map(str::to_ascii_lowercase))
        .collect();
    let mut seen = HashSet::new();
    let mut seeds = Vec::new();
    for entry in entries.iter().filter(|e| e.is_listing()) {
        let deleted = entry.path() == "/deletedsecrets";
        if !deleted && entry.path() != "/secrets" {
            continue;
        }
        for item in entry.response_body.as_ref().and_then(|b| b["value"].as_array()).into_iter().flatten() {
            let name = last_segment(item["id"].as_str().unwrap_or_default()).to_string();
            if created.contains(&name.to_ascii_lowercase()) || !seen.insert(name.to_ascii_lowercase()) {
                continue;
            }
            let attributes = &item["attributes"];
            let tags = item
                .get("tags")
                .and_then(Value::as_object)
                .map(|t| t.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect());
            seeds.push(SeedSecret {
                name,
                value: "seeded".into(),
                content_type: item["contentType"].as_str().map(String::from),
                tags,
                enabled: attributes["enabled"].as_bool().unwrap_or(true),
                not_before: attributes["nbf"].as_i64(),
                expires: attributes["exp"].as_i64(),
                created: attributes["created"].as_i64(),
                updated: attributes["updated"].as_i64(),
                managed: item["managed"].as_bool().unwrap_or(false),
                deleted_date: if deleted { item["deletedDate"].as_i64() } else { None },
                ..Default::default()
            });
        }
    }
    seeds
}

async fn replay(file: String, entries: Vec<Entry>, counts: &mut Counts) -> Vec<String> {
    let vault = DevVault::start(DevVaultOptions { vault_name: RECORDED_VAULT.into(), ..Default::default() })
        .await
        .expect("the dev vault starts");
    for seed in seeds(&entries) {
        vault.seed(seed).expect("seeding");
        counts.seeded += 1;
    }
    let client = vault.http_client().expect("a client for the dev vault");
    let mut replay = Replay {
        file,
        vault,
        client,
        versions: HashMap::new(),
        versions_back: HashMap::new(),
        blobs: HashMap::new(),
        failures: Vec::new(),
    };
    let mut index = 0;
    while index < entries.len() {
        let entry = &entries[index];
        if entry.is_listing() && !entry.has_skiptoken() {
            let path = entry.path();
            let end = index
                + 1
                + entries[index + 1..]
                    .iter()
                    .take_while(|e| e.request_method == "GET" && e.path() == path && e.has_skiptoken())
                    .count();
            replay.chain(&entries, index, end, counts).await;
            index = end;
        } else {
            replay.one(&entries, index, counts).await;
            counts.one_by_one += 1;
            index += 1;
        }
    }
    counts.entries += entries.len();
    counts.versions_mapped += replay.versions.len();
    let Replay { vault, failures, .. } = replay;
    vault.shutdown().await;
    failures
}

#[tokio::test]
async fn every_recording_replays_against_the_dev_vault() {
    let dir = recordings_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading the recordings at {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no recordings in {}", dir.display());

    let mut counts = Counts::default();
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).expect("reading a recording");
        let recording: RecordingFile = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!recording.entries.is_empty(), "{name} has no entries");
        counts.recordings += 1;
        failures.extend(replay(name, recording.entries, &mut counts).await);
    }
    println!(
        "devvault conformance: {} recordings, {} entries checked ({} one by one, {} in {} listing chains; \
         {} transient 404s taken as completed and probed), {} secrets seeded, {} versions mapped",
        counts.recordings,
        counts.entries,
        counts.one_by_one,
        counts.chained_entries,
        counts.chains,
        counts.transient,
        counts.seeded,
        counts.versions_mapped,
    );
    assert_eq!(counts.entries, counts.one_by_one + counts.chained_entries);
    assert!(failures.is_empty(), "{} divergences from the recordings:\n{}", failures.len(), failures.join("\n"));
}
