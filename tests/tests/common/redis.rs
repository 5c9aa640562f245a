//! The machine's Redis (127.0.0.1:6379; TLS on 6380 with the setup's test CA): ACL users
//! made and removed as the default user, and logins as a consumer makes them.

use kv_rotator_config::TargetKind;
use secrecy::{ExposeSecret, SecretString};

use super::test_ca;

/// A connection as the default user (the setup's; it administers the ACL).
pub async fn redis_admin_connection() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    client.get_multiplexed_async_connection().await.expect("Redis must run on 127.0.0.1:6379")
}

/// The SHA-256 of `password` in hex: how `ACL SETUSER` takes a password hash (after `#`).
pub fn sha256_hex(password: &SecretString) -> String {
    use std::fmt::Write;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(password.expose_secret().as_bytes());
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Whether a client sending `AUTH user password` is let in.
pub async fn redis_logs_in(user: &str, password: &SecretString) -> bool {
    let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return false };
    let auth: redis::RedisResult<()> =
        redis::cmd("AUTH").arg(user).arg(password.expose_secret()).query_async(&mut conn).await;
    auth.is_ok()
}

/// `ACL ARGS...` on `conn`; panics on an error.
pub async fn redis_acl(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    for arg in args {
        cmd.arg(*arg);
    }
    let _: redis::Value = cmd.query_async(conn).await.unwrap_or_else(|e| panic!("ACL {}: {e}", args[0]));
}

/// A `redis` target over verified TLS (port 6380, the setup's CA) that never runs `ACL SAVE`.
pub fn target() -> TargetKind {
    let settings = serde_json::json!({
        "host": "127.0.0.1", "port": 6380, "tls": "verify-full", "acl_save": "never",
        "tls_ca_file": test_ca("KVR_TEST_REDIS_CA", "/var/lib/redis/kvr-test-tls/ca.pem"),
    });
    TargetKind::parse("redis", settings).unwrap()
}
