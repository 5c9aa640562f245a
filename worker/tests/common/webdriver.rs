//! A small W3C WebDriver client over reqwest, for the status page's browser test: headless
//! Chromium through a `chromedriver` this starts on a port it picks itself. Only the commands the
//! test needs (navigate, find, click, type, read, screenshot). A crate such as fantoccini
//! would bring a second `http`, `thiserror`, `cookie` and ICU and an MPL-2.0 dependency,
//! each an exception in deny.toml.

#![allow(dead_code)] // not every suite uses every helper

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::proc::Proc;

/// The key of an element reference in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session. On drop (also when a test panics) the session is ended, so the
/// browser quits, and then the driver process is killed.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    driver_port: u16,
    _driver: Proc,
}

/// An element of the current page.
#[derive(Clone)]
pub struct Element {
    id: String,
}

impl Browser {
    /// Starts `chromedriver` on a port it picks (`--port=0`, read back from its log: no port
    /// is bound, dropped and bound again, a gap in which another process could take it)
    /// and opens a headless Chromium session (`--no-sandbox`: the tests run as root).
    pub async fn headless_chromium() -> Browser {
        let mut driver = Proc::spawn(Command::new("chromedriver").arg("--port=0"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = started_on(&driver.output()) {
                break port;
            }
            if let Some(status) = driver.exited() {
                panic!("chromedriver exited with {status}: {}", driver.output());
            }
            assert!(Instant::now() < deadline, "chromedriver did not start: {}", driver.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        while !http.get(format!("{base}/status")).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "chromedriver did not start: {}", driver.output());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let args =
            ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"];
        let capabilities = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"args": args}}}});
        let answer: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session = answer["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {answer}"));
        Browser { http, session: format!("{base}/session/{session}"), driver_port: port, _driver: driver }
    }

    /// A command's `value`; panics with the driver's error.
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method.parse().unwrap(), format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert!(status.is_success(), "WebDriver {method} {path}: {status} {answer}");
        answer["value"].clone()
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({"url": url}))).await;
    }

    /// The current page's URL.
    pub async fn url(&self) -> url::Url {
        self.command("GET", "/url", None).await.as_str().unwrap().parse().unwrap()
    }

    /// The current page's HTML as the browser holds it.
    pub async fn source(&self) -> String {
        self.command("GET", "/source", None).await.as_str().unwrap().to_owned()
    }

    /// The elements matching CSS `selector`, under `parent` or in the whole page.
    pub async fn find_all(&self, parent: Option<&Element>, selector: &str) -> Vec<Element> {
        let path = parent.map_or("/elements".to_owned(), |p| format!("/element/{}/elements", p.id));
        let found = self.command("POST", &path, Some(json!({"using": "css selector", "value": selector}))).await;
        found.as_array().unwrap().iter().map(|e| Element { id: e[ELEMENT_KEY].as_str().unwrap().to_owned() }).collect()
    }

    /// The first element matching `selector` under `parent` (or the page); panics with the
    /// page when there is none.
    pub async fn find(&self, parent: Option<&Element>, selector: &str) -> Element {
        match self.find_all(parent, selector).await.into_iter().next() {
            Some(element) => element,
            None => panic!("no {selector} in the page: {}", self.source().await),
        }
    }

    /// Waits (at most `within`) for an element matching `selector`, as a page reloads.
    pub async fn wait_for(&self, selector: &str, within: Duration) -> Element {
        let deadline = Instant::now() + within;
        loop {
            if let Some(element) = self.find_all(None, selector).await.into_iter().next() {
                return element;
            }
            assert!(Instant::now() < deadline, "no {selector} within {within:?}: {}", self.source().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, element: &Element) {
        self.command("POST", &format!("/element/{}/click", element.id), Some(json!({}))).await;
    }

    pub async fn type_into(&self, element: &Element, text: &str) {
        self.command("POST", &format!("/element/{}/value", element.id), Some(json!({"text": text}))).await;
    }

    /// The element's rendered text.
    pub async fn text(&self, element: &Element) -> String {
        self.command("GET", &format!("/element/{}/text", element.id), None).await.as_str().unwrap().to_owned()
    }

    pub async fn attribute(&self, element: &Element, name: &str) -> Option<String> {
        let value = self.command("GET", &format!("/element/{}/attribute/{name}", element.id), None).await;
        value.as_str().map(str::to_owned)
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.command("GET", "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap()).unwrap()
    }
}

impl Drop for Browser {
    /// `DELETE /session/<id>` over a plain blocking socket (no runtime in a drop): Chromium
    /// would outlive its killed driver otherwise.
    fn drop(&mut self) {
        let Some(path) = self.session.split_once(&format!(":{}", self.driver_port)).map(|(_, path)| path.to_owned())
        else {
            return;
        };
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.driver_port)) else { return };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.driver_port
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            // The answer comes once the browser has quit; its first bytes are enough.
            let _ = stream.read(&mut [0u8; 512]);
        }
    }
}

/// The port of chromedriver's "ChromeDriver was started successfully on port N." line.
fn started_on(log: &str) -> Option<u16> {
    const STARTED: &str = "started successfully on port ";
    let rest = &log[log.find(STARTED)? + STARTED.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}
