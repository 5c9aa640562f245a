//! The status page on the admin listener (`/status`): in headless Chromium through
//! chromedriver (log in, see the managed secrets and their expiry, rotate one, watch the
//! job end, the new password works), and over plain HTTP what a browser must not get
//! past: no session, a wrong token, a form without the CSRF token or from another site, a
//! rebinding `Host`, text from the vault that tries to be HTML.
//!
//! The browser test needs `chromium` and `chromedriver` (Debian's `chromium` and
//! `chromium-driver`; scripts/test.sh installs them) and saves `target/status-page.png`.

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;
#[allow(dead_code)]
#[path = "../../webhook/tests/common/entra.rs"]
mod entra;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::devsite::DevSite;
use common::webdriver::Browser;
use kv_rotator::admin::auth::AdminAuth;
use kv_rotator::service::RunningService;
use kv_rotator_config::AdminAuthConfig;
use kv_rotator_core::tags::TAG_FAILED;
use kv_rotator_keyvault::PropertiesUpdate;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::redirect::Policy;
use secrecy::{ExposeSecret, SecretString};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const TOKEN: &str = "status-page-token-0123456789-abcdefghij";

/// The service in process over the dev vault and the htpasswd target, its admin listener
/// authenticated by `auth`.
async fn service(site: &DevSite, auth: AdminAuth) -> (RunningService, SocketAddr) {
    site.admin_service(auth).await
}

fn static_token() -> AdminAuth {
    AdminAuth::static_token(&SecretString::from(TOKEN.to_owned())).unwrap()
}

/// Sets `secret`'s latest version's expiry (and extra tags), as an operator would.
async fn update(site: &DevSite, secret: &str, expires: Option<OffsetDateTime>, tags: &[(&str, &str)]) {
    let mut all = site.store.get_latest(secret).await.unwrap().properties.tags;
    all.extend(tags.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let update = PropertiesUpdate { tags: Some(all), expires, ..Default::default() };
    site.store.update_properties(secret, None, update).await.unwrap();
}

/// A client that shows redirects instead of following them and keeps no cookies.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().unwrap()
}

/// Posts `fields` as an HTML form does, with the session `cookie` and `headers`.
async fn post_form(url: String, cookie: &str, headers: HeaderMap, fields: &[(&str, &str)]) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
    client()
        .post(url)
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Logs in with the token; the session cookie (`name=value`).
async fn log_in(admin: SocketAddr) -> String {
    let response = post_form(format!("http://{admin}/status/login"), "", HeaderMap::new(), &[("token", TOKEN)]).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/status");
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    // Only the page's own paths get it (not the API's, nor /metrics).
    assert!(cookie.split("; ").any(|attribute| attribute == "Path=/status"), "{cookie}");
    assert!(!cookie.contains(TOKEN), "the token never goes into the cookie");
    cookie.split(';').next().unwrap().to_owned()
}

/// The page as the session `cookie` sees it: status and body.
async fn get_page(admin: SocketAddr, cookie: &str) -> (u16, String) {
    let response = client().get(format!("http://{admin}/status")).header("cookie", cookie).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The session's CSRF token, as its forms carry it.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form with the CSRF token") + 19;
    page[at..at + 64].to_owned()
}

/// Posts the rotate form of `secret`: status and `Location`.
async fn post_rotate(admin: SocketAddr, cookie: &str, csrf: Option<&str>, headers: HeaderMap) -> (u16, String) {
    let mut form = vec![("secret", "alpha-password"), ("reason", "INC-9 page test")];
    if let Some(csrf) = csrf {
        form.push(("csrf", csrf));
    }
    let response = post_form(format!("http://{admin}/status/rotate"), cookie, headers, &form).await;
    let location = response.headers().get("location").map(|l| l.to_str().unwrap().to_owned()).unwrap_or_default();
    (response.status().as_u16(), location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_or_from_another_site_nothing_is_shown_or_rotated() {
    let site = DevSite::start().await;
    let (first, _) = site.user("alpha-password", "alpha").await;
    let (running, admin) = service(&site, static_token()).await;

    // No session: to the login form; a form without a session: refused.
    let response = client().get(format!("http://{admin}/status")).send().await.unwrap();
    assert_eq!((response.status().as_u16(), response.headers()["location"].to_str().unwrap()), (303, "/status/login"));
    assert_eq!(post_rotate(admin, "kv_rotator_session=none", None, HeaderMap::new()).await.0, 403);
    let login = client().get(format!("http://{admin}/status/login")).send().await.unwrap();
    assert_eq!(login.headers()["x-frame-options"], "DENY");
    assert!(login.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert!(login.text().await.unwrap().contains("name=\"token\""));

    // A wrong token: 401, no session.
    let wrong = format!("{TOKEN}x");
    let response = post_form(format!("http://{admin}/status/login"), "", HeaderMap::new(), &[("token", &wrong)]).await;
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("set-cookie").is_none());
    assert!(response.text().await.unwrap().contains("not the admin token"));

    let cookie = log_in(admin).await;
    let (status, page) = get_page(admin, &cookie).await;
    assert_eq!(status, 200);
    assert!(page.contains("alpha-password") && !page.contains(TOKEN));
    let csrf = csrf_of(&page);

    // Without the CSRF token, with another session's, from another site's page, or through
    // a name that rebinds to this listener: refused, nothing queued.
    let other_csrf = csrf_of(&get_page(admin, &log_in(admin).await).await.1);
    let header = |name: &'static str, value: &str| {
        HeaderMap::from_iter([(name.parse().unwrap(), HeaderValue::from_str(value).unwrap())])
    };
    assert_eq!(post_rotate(admin, &cookie, None, HeaderMap::new()).await.0, 403);
    assert_eq!(post_rotate(admin, &cookie, Some(&other_csrf), HeaderMap::new()).await.0, 403);
    assert_eq!(post_rotate(admin, &cookie, Some(&csrf), header("origin", "http://evil.example")).await.0, 403);
    assert_eq!(post_rotate(admin, &cookie, Some(&csrf), header("origin", "null")).await.0, 403);
    assert_eq!(post_rotate(admin, &cookie, Some(&csrf), header("sec-fetch-site", "cross-site")).await.0, 403);
    assert_eq!(post_rotate(admin, &cookie, Some(&csrf), header("sec-fetch-site", "same-site")).await.0, 403);
    let rebound = header("host", &format!("evil.example:{}", admin.port()));
    assert_eq!(post_rotate(admin, &cookie, Some(&csrf), rebound.clone()).await.0, 403);
    let response =
        client().get(format!("http://{admin}/status")).header("cookie", &cookie).headers(rebound).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(site.store.get_latest("alpha-password").await.unwrap().version, first, "nothing was rotated");

    // The same form from this listener's own page: a job, then its page.
    let same_origin = header("origin", &format!("http://{admin}"));
    let (status, location) = post_rotate(admin, &cookie, Some(&csrf), same_origin).await;
    assert_eq!(status, 303);
    assert!(location.starts_with("/status/jobs/"), "{location}");
    let job_page = |location: String| {
        let cookie = cookie.clone();
        async move {
            let response = client().get(format!("http://{admin}{location}")).header("cookie", cookie).send().await;
            response.unwrap().text().await.unwrap()
        }
    };
    assert!(!job_page(location).await.contains("(forced)"));
    // Forced only with the box ticked; a body over the limit is refused before it is read.
    let rotate = format!("http://{admin}/status/rotate");
    let fields = [("csrf", csrf.as_str()), ("secret", "alpha-password"), ("reason", "leak"), ("force", "yes")];
    let forced = post_form(rotate.clone(), &cookie, HeaderMap::new(), &fields).await;
    assert_eq!(forced.status(), 303);
    assert!(job_page(forced.headers()["location"].to_str().unwrap().to_owned()).await.contains("(forced)"));
    let long = "x".repeat(9 * 1024);
    let fields = [("csrf", csrf.as_str()), ("secret", "alpha-password"), ("reason", long.as_str())];
    assert_eq!(post_form(rotate.clone(), &cookie, HeaderMap::new(), &fields).await.status(), 413);
    // A reason the API refuses: its words, escaped, on a page.
    let fields = [("csrf", csrf.as_str()), ("secret", "alpha-password"), ("reason", "a\u{202e}<b>")];
    let refused = post_form(rotate, &cookie, HeaderMap::new(), &fields).await;
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("reason: control or invisible formatting character at position 1"));

    // Logged out: the session is gone.
    let response =
        post_form(format!("http://{admin}/status/logout"), &cookie, HeaderMap::new(), &[("csrf", &csrf)]).await;
    assert_eq!(response.status(), 303);
    assert_eq!(get_page(admin, &cookie).await.0, 303);
    running.shutdown().await.unwrap();
    site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_the_vault_is_shown_escaped() {
    let site = DevSite::start().await;
    site.user("alpha-password", "alpha").await;
    let script = "<script>alert(1)</script>";
    let image = "\"><img src=x onerror=alert(2)>";
    update(&site, "alpha-password", None, &[(TAG_FAILED, image)]).await;
    let password = SecretString::from("x".repeat(24));
    site.managed_secret("beta-password", script, "\"'><b>", &password).await;
    let (running, admin) = service(&site, AdminAuth::None).await;

    // `none` mode: no login, a session (for the CSRF token) on the first visit.
    let response = client().get(format!("http://{admin}/status")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["set-cookie"].to_str().unwrap().contains("HttpOnly"));
    let page = response.text().await.unwrap();
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    assert!(page.contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"), "{page}");
    for raw in ["<script", "<img", "<b>"] {
        assert!(!page.contains(raw), "{raw} reached the page unescaped");
    }
    running.shutdown().await.unwrap();
    site.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_entra_id_the_page_says_it_is_unavailable() {
    let site = DevSite::start().await;
    let config = AdminAuthConfig::EntraId {
        tenant_id: entra::TENANT.to_owned(),
        audience: vec![entra::APP_ID.to_owned()],
        role: "KvRotator.Rotate".to_owned(),
        openid_configuration_url: Some("http://127.0.0.1:9/.well-known/openid-configuration".to_owned()),
        jwks_url: None,
        clock_skew_secs: None,
        proof_file: None,
        client_credential: None,
    };
    let (running, admin) = service(&site, AdminAuth::from_config(&config, false).unwrap()).await;
    for path in ["/status", "/status/login"] {
        let response = client().get(format!("http://{admin}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 501, "{path}");
        assert!(response.text().await.unwrap().contains("OAuth sign-in flow"));
    }
    running.shutdown().await.unwrap();
    site.vault.shutdown().await;
}

/// Where CI keeps artifacts: the target directory this test was built in.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_owned() // target/debug/deps/status_page-…
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_an_operator_logs_in_sees_the_secrets_and_rotates_one() {
    let site = DevSite::start().await;
    let (first, old_password) = site.user("alpha-password", "alpha").await;
    site.user("beta-password", "beta").await;
    let expires = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + time::Duration::days(20);
    update(&site, "beta-password", Some(expires), &[]).await;
    let (running, admin) = service(&site, static_token()).await;
    let browser = Browser::headless_chromium().await;

    // No session: the login form; the token once.
    browser.goto(&format!("http://{admin}/status")).await;
    assert_eq!(browser.url().await.path(), "/status/login");
    browser.type_into(&browser.find(None, "input[name=token]").await, TOKEN).await;
    browser.click(&browser.find(None, "button[type=submit]").await).await;
    // (A click returns before the page it loads is there: wait for what is only on the next.)
    let table = browser.wait_for("table#secrets", Duration::from_secs(30)).await;

    // Both secrets, soonest expiry first, with their expiry.
    let rows = browser.find_all(Some(&table), "tbody tr").await;
    let mut names = Vec::new();
    for row in &rows {
        names.push(browser.attribute(row, "data-secret").await.unwrap());
    }
    assert_eq!(names, ["beta-password", "alpha-password"]);
    let beta_expiry = browser.find(Some(&rows[0]), "td.expires").await;
    assert_eq!(browser.attribute(&beta_expiry, "title").await.unwrap(), expires.format(&Rfc3339).unwrap());
    let label = browser.text(&beta_expiry).await;
    assert!(label.contains("in 20.0 d"), "{label}");
    let alpha_expiry = browser.find(Some(&rows[1]), "td.expires").await;
    assert!(browser.text(&alpha_expiry).await.contains("no expiry"));

    // Rotate alpha with a reason (force not ticked); the job's page follows it to its end.
    let form = browser.find(Some(&rows[1]), "form.rotate").await;
    browser.type_into(&browser.find(Some(&form), "input[name=reason]").await, "INC-7 browser drill").await;
    browser.click(&browser.find(Some(&form), "button[type=submit]").await).await;
    let done = browser.wait_for("table#job[data-done=true]", Duration::from_secs(60)).await;
    let state = browser.text(&browser.find(Some(&done), "tbody tr td:nth-child(2)").await).await;
    assert_eq!(state, "rotated");
    assert_eq!(browser.text(&browser.find(None, "h1").await).await, "Rotation finished");
    assert!(!browser.source().await.contains("(forced)"), "force was not ticked");

    // In the vault: a new version whose password works, the old one no longer.
    let latest = site.store.get_latest("alpha-password").await.unwrap();
    assert_ne!(latest.version, first);
    assert!(site.logs_in("alpha", &latest.value).await);
    assert!(!site.logs_in("alpha", &old_password).await);
    let outcome = browser.text(&browser.find(Some(&done), "tbody tr td:nth-child(3)").await).await;
    assert!(outcome.contains(&latest.version), "{outcome}");
    assert!(!browser.source().await.contains(latest.value.expose_secret()));

    // Back on the page: the job among the recent rotations; a screenshot for CI.
    browser.click(&browser.find(None, "a[href='/status']").await).await;
    let jobs = browser.text(&browser.wait_for("table#jobs", Duration::from_secs(30)).await).await;
    assert!(jobs.contains("INC-7 browser drill") && jobs.contains("alpha-password: rotated"), "{jobs}");
    std::fs::write(target_dir().join("status-page.png"), browser.screenshot().await).unwrap();
    drop(browser); // the browser quits
    running.shutdown().await.unwrap();
    site.vault.shutdown().await;
}
