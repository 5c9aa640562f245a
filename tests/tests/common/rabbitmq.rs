//! The machine's RabbitMQ (AMQP on 127.0.0.1:5672, the management API on 15672 that
//! `scripts/setup-rabbitmq.sh` enables): users made and removed as guest, AMQP logins as
//! a consumer makes them (amqprs, not the exec plugin's own probe), and the plugin's target.

use std::path::Path;

use amqprs::connection::{Connection, OpenConnectionArguments};
use kv_rotator_config::TargetKind;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

/// The management API.
pub const MANAGEMENT: &str = "http://127.0.0.1:15672";
/// AMQP.
pub const AMQP: (&str, u16) = ("127.0.0.1", 5672);

/// The management API as guest: `method` on `/api/{path}`, the status.
pub async fn api(method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> u16 {
    let mut req =
        reqwest::Client::new().request(method, format!("{MANAGEMENT}/api/{path}")).basic_auth("guest", Some("guest"));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}; run scripts/setup-rabbitmq.sh"));
    resp.status().as_u16()
}

/// Creates user `name` with `password` and management `tags`.
pub async fn create_user(name: &str, password: &SecretString, tags: &str) {
    let body = json!({ "password": password.expose_secret(), "tags": tags });
    let status = api(reqwest::Method::PUT, &format!("users/{name}"), Some(body)).await;
    assert_eq!(status, 201, "creating {name}");
}

/// `Ok` once a connection with `password` is open on vhost `/`; amqprs's error otherwise.
pub async fn amqp_login(user: &str, password: &SecretString) -> Result<(), String> {
    let args = OpenConnectionArguments::new(AMQP.0, AMQP.1, user, password.expose_secret());
    let conn = Connection::open(&args).await.map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok(())
}

/// The RabbitMQ exec plugin (`examples/plugins/rabbitmq.py`) as a target.
pub fn target() -> TargetKind {
    let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/rabbitmq.py").canonicalize().unwrap();
    let exec = json!({
        "command": plugin,
        "settings": { "management_url": MANAGEMENT, "amqp_host": AMQP.0, "amqp_port": AMQP.1 },
    });
    TargetKind::parse("exec", exec).unwrap()
}
