//! `[webhook.auth]`, `webhook.allowed_vaults` and the listener limits: each mode parses, and settings that
//! cannot work are errors naming the key.
// figment::Jail's closure signature returns figment::Error.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;

use figment::providers::Format;

use kv_rotator_config::load::from_figment;
use kv_rotator_config::{ConfigError, SecretSource, WebhookAuthConfig};

fn parse(webhook: &str) -> Result<kv_rotator_config::Config, ConfigError> {
    let text = format!("[vault]\nurl = \"https://v.vault.azure.net/\"\n\n[webhook]\n{webhook}\n");
    from_figment(figment::Figment::from(figment::providers::Toml::string(&text)))
}

fn problems(webhook: &str) -> String {
    parse(webhook).unwrap_err().to_string()
}

#[test]
fn auth_is_absent_unless_configured() {
    let config = parse("listen = \"127.0.0.1:1\"").unwrap();
    assert_eq!(config.webhook.auth, None);
    assert!(config.webhook.allowed_vaults.is_empty());
    let config = parse("auth = { mode = \"none\" }").unwrap();
    assert_eq!(config.webhook.auth, Some(WebhookAuthConfig::None {}));
}

#[test]
fn shared_key_from_env_and_file() {
    let config = parse(
        "allowed_vaults = [\"prod-kv\", \"Other-Vault-2\"]\n[webhook.auth]\nmode = \"shared-key\"\n\
         key = { env = \"EG_WEBHOOK_KEY\" }\nprevious_key = { file = \"/run/secrets/old\" }\nheader = \"x-eg-key\"",
    )
    .unwrap();
    assert_eq!(config.webhook.allowed_vaults, ["prod-kv", "Other-Vault-2"]);
    let Some(WebhookAuthConfig::SharedKey { key, previous_key, header, query_parameter }) = config.webhook.auth else {
        panic!("{:?}", config.webhook.auth)
    };
    assert_eq!(key, SecretSource { env: Some("EG_WEBHOOK_KEY".into()), file: None });
    assert_eq!(previous_key.unwrap().file, Some(PathBuf::from("/run/secrets/old")));
    assert_eq!((header.as_deref(), query_parameter), (Some("x-eg-key"), None));
}

#[test]
fn entra_id_parses() {
    let config = parse(
        "[webhook.auth]\nmode = \"entra-id\"\ntenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\n\
         audience = [\"api://kv-rotator\"]\nclock_skew_secs = 120",
    )
    .unwrap();
    let Some(WebhookAuthConfig::EntraId { audience, clock_skew_secs, role, .. }) = config.webhook.auth else {
        panic!()
    };
    assert_eq!((audience, clock_skew_secs, role), (vec!["api://kv-rotator".to_owned()], Some(120), None));
}

#[test]
fn bad_settings_name_the_key() {
    for (webhook, expected) in [
        ("auth = { mode = \"basic\" }", "basic"),
        ("auth = { mode = \"shared-key\" }", "key"),
        ("auth = { mode = \"shared-key\", key = { env = \"A\", file = \"/b\" } }", "webhook.auth.key: set exactly one"),
        ("auth = { mode = \"shared-key\", key = {} }", "webhook.auth.key: set exactly one"),
        ("auth = { mode = \"shared-key\", key = { env = \"KV_ROTATOR_KEY\" } }", "webhook.auth.key.env"),
        ("auth = { mode = \"shared-key\", key = { value = \"inline\" } }", "value"),
        ("auth = { mode = \"entra-id\", tenant_id = \"t\" }", "audience"),
        (
            "auth = { mode = \"entra-id\", tenant_id = \"t\", audience = [\"a\"], jwks_url = \"https://x/k\", openid_configuration_url = \"https://x/o\" }",
            "not both",
        ),
        ("auth = { mode = \"none\", key = { env = \"X\" } }", "key"),
        ("allowed_vaults = [\"kv\"]", "webhook.allowed_vaults: \"kv\""),
        ("allowed_vaults = [\"bad_name\"]", "webhook.allowed_vaults: \"bad_name\""),
    ] {
        let message = problems(webhook);
        assert!(message.contains(expected), "{webhook}: {message}");
    }
}

#[test]
fn listener_limits_default_and_must_be_at_least_one() {
    let config = parse("listen = \"127.0.0.1:1\"").unwrap();
    let webhook = &config.webhook;
    assert_eq!(
        (
            webhook.header_read_timeout_secs,
            webhook.request_timeout_secs,
            webhook.max_connections,
            webhook.shutdown_grace_secs
        ),
        (10, 30, 1024, 10)
    );
    let config =
        parse("header_read_timeout_secs = 3\nrequest_timeout_secs = 7\nmax_connections = 5\nshutdown_grace_secs = 2")
            .unwrap();
    assert_eq!((config.webhook.header_read_timeout_secs, config.webhook.max_connections), (3, 5));
    let text = problems(
        "header_read_timeout_secs = 0\nrequest_timeout_secs = 0\nmax_connections = 0\nshutdown_grace_secs = 0",
    );
    for key in ["header_read_timeout_secs", "request_timeout_secs", "max_connections", "shutdown_grace_secs"] {
        assert!(text.contains(&format!("webhook.{key}: must be at least 1")), "{text}");
    }
}
