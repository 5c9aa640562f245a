//! `[notifications]`: defaults, each sink and auth mode parses, and what cannot work is
//! refused naming the key — plain http off loopback, a key written inline (never quoted
//! back), unknown keys, bad stages.
// figment::Jail's closure signature returns figment::Error.
#![allow(clippy::result_large_err)]

use figment::providers::Format;
use kv_rotator_config::load::from_figment;
use kv_rotator_config::{ConfigError, EventGridAuth, NotificationSink, SecretSource, SinkUrl};

fn parse(notifications: &str) -> Result<kv_rotator_config::Config, ConfigError> {
    let text = format!("[vault]\nurl = \"https://v.vault.azure.net/\"\n\n[notifications]\n{notifications}\n");
    from_figment(figment::Figment::from(figment::providers::Toml::string(&text)))
}

fn problems(notifications: &str) -> String {
    parse(notifications).unwrap_err().to_string()
}

#[test]
fn off_by_default_with_three_stages() {
    let config = parse("").unwrap();
    let n = &config.notifications;
    assert_eq!(n.sink, None);
    assert_eq!(n.expiry_warning_days, [30, 7, 1]);
    assert_eq!((n.timeout_ms, n.max_attempts, n.queue_capacity), (5000, 5, 1024));
}

#[test]
fn a_webhook_and_an_event_grid_topic_with_either_auth() {
    let config =
        parse("expiry_warning_days = [14, 2]\nsink = { kind = \"webhook\", url = \"https://hooks.example/kvr\" }")
            .unwrap();
    assert_eq!(config.notifications.sink, Some(NotificationSink::Webhook { url: "https://hooks.example/kvr".into() }));
    assert_eq!(config.notifications.expiry_warning_days, [14, 2]);
    let config = parse(
        "[notifications.sink]\nkind = \"event-grid\"\n\
         topic_endpoint = \"https://t.westeurope-1.eventgrid.azure.net/api/events\"\n\
         auth = { mode = \"key\", key = { env = \"EG_TOPIC_KEY\" } }",
    )
    .unwrap();
    let Some(NotificationSink::EventGrid { auth: EventGridAuth::Key { key }, .. }) = config.notifications.sink else {
        panic!("{:?}", config.notifications.sink)
    };
    assert_eq!(key, SecretSource { env: Some("EG_TOPIC_KEY".into()), file: None });
    let config = parse(
        "[notifications.sink]\nkind = \"event-grid\"\n\
         topic_endpoint = \"https://t.westeurope-1.eventgrid.azure.net/api/events\"\nauth = { mode = \"entra-id\" }",
    )
    .unwrap();
    assert!(matches!(
        config.notifications.sink,
        Some(NotificationSink::EventGrid { auth: EventGridAuth::EntraId {}, .. })
    ));
    // Plain http to this machine is allowed (a local relay, tests).
    assert!(parse("sink = { kind = \"webhook\", url = \"http://127.0.0.1:9000/hook\" }").is_ok());
    assert!(parse("sink = { kind = \"webhook\", url = \"http://localhost:9000/hook\" }").is_ok());
}

#[test]
fn plain_http_off_loopback_is_refused_naming_the_key_and_never_the_query() {
    let message = problems("sink = { kind = \"webhook\", url = \"http://flows.example/hook?sig=S3CRETsig\" }");
    assert!(message.contains("notifications.sink.url \"http://flows.example/…\""), "{message}");
    assert!(message.contains("loopback"), "{message}");
    assert!(!message.contains("S3CRETsig"), "{message}");
    let message = problems(
        "sink = { kind = \"event-grid\", topic_endpoint = \"http://10.0.0.4/api/events\", auth = { mode = \"entra-id\" } }",
    );
    assert!(message.contains("notifications.sink.topic_endpoint"), "{message}");
    for (url, expected) in [("ftp://x.example/", "must be http or https"), ("not a url", "not a URL")] {
        let message = problems(&format!("sink = {{ kind = \"webhook\", url = {url:?} }}"));
        assert!(message.contains("notifications.sink.url") && message.contains(expected), "{message}");
    }
    // The same rule for the alert sink, whose URL is as much a credential.
    let text = "[vault]\nurl = \"https://v.vault.azure.net/\"\n[alerts]\nwebhook_url = \"http://alerts.example/x\"\n";
    let message = from_figment(figment::Figment::from(figment::providers::Toml::string(text))).unwrap_err().to_string();
    assert!(
        message.contains("alerts.webhook_url \"http://alerts.example/…\": plain http only to a loopback host"),
        "{message}"
    );
}

#[test]
fn a_key_written_inline_is_refused_without_being_repeated() {
    let sink = "[notifications.sink]\nkind = \"event-grid\"\ntopic_endpoint = \"https://t.example/api/events\"\n";
    for inline in ["\"c2VjcmV0LWtleS1vZi10aGUtdG9waWM=\"", "123456789"] {
        let message = problems(&format!("{sink}auth = {{ mode = \"key\", key = {inline} }}"));
        assert!(message.contains("notifications.sink.auth.key: a secret written inline is refused"), "{message}");
        assert!(!message.contains(inline.trim_matches('"')), "the key is quoted back: {message}");
    }
    let message = problems(&format!("{sink}auth = {{ mode = \"key\", key = {{ env = \"A\", file = \"/b\" }} }}"));
    assert!(message.contains("notifications.sink.auth.key: set exactly one of env or file"), "{message}");
    let message = problems(&format!("{sink}auth = {{ mode = \"key\", key = {{ env = \"KV_ROTATOR_EG\" }} }}"));
    assert!(message.contains("notifications.sink.auth.key.env"), "{message}");
    // A key under another name is an unknown key: named, its value not shown.
    let message = problems(&format!("{sink}auth = {{ mode = \"entra-id\" }}\nsas_key = \"TopSecretSasKey\""));
    assert!(message.contains("sas_key") && !message.contains("TopSecretSasKey"), "{message}");
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    for (body, expected) in [
        ("expiry_warnings = [7]", "expiry_warnings"),
        ("sink = { kind = \"webhook\", url = \"https://h.example/\", method = \"PUT\" }", "method"),
        ("sink = { kind = \"smtp\", url = \"https://h.example/\" }", "smtp"),
        ("sink = { kind = \"event-grid\", topic_endpoint = \"https://t.example/\" }", "auth"),
        (
            "sink = { kind = \"event-grid\", topic_endpoint = \"https://t.example/\", auth = { mode = \"entra-id\", tenant = \"x\" } }",
            "tenant",
        ),
        ("expiry_warning_days = [7, 0]", "notifications.expiry_warning_days"),
        ("expiry_warning_days = [7, 7]", "listed twice"),
        ("timeout_ms = 0", "notifications.timeout_ms"),
        ("max_attempts = 0", "notifications.max_attempts"),
        ("queue_capacity = 0", "notifications.queue_capacity"),
    ] {
        let message = problems(body);
        assert!(message.contains(expected), "{body}: {message}");
    }
    assert!(parse("expiry_warning_days = []").is_ok(), "no stages: warnings off");
}

/// The worker takes the key's variable out of its environment at startup, like every
/// other secret variable the configuration names.
#[test]
fn the_keys_variable_is_a_secret_variable() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "kv-rotator.toml",
            "[notifications.sink]\nkind = \"event-grid\"\ntopic_endpoint = \"https://t.example/api/events\"\n\
             auth = { mode = \"key\", key = { env = \"EG_TOPIC_KEY\" } }\n",
        )?;
        let names = kv_rotator_config::load::secret_env_names(Some(std::path::Path::new("kv-rotator.toml")));
        assert_eq!(names, ["EG_TOPIC_KEY"]);
        Ok(())
    });
}

/// A Power Automate trigger's URL carries its credential (`sig=`): written inline it is
/// refused, naming the parameter and never its value; from an environment variable or a
/// file it is accepted, and those sources are checked like every other secret's.
#[test]
fn a_url_carrying_a_credential_is_read_from_a_source_never_written_inline() {
    let flow = "https://prod-12.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke\
                ?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=S3CRETsig";
    for (setting, text) in [
        ("notifications.sink.url", format!("sink = {{ kind = \"webhook\", url = {flow:?} }}")),
        ("alerts.webhook_url", format!("[alerts]\nwebhook_url = {flow:?}")),
    ] {
        let text = format!(
            "[vault]\nurl = \"https://v.vault.azure.net/\"\n{}",
            text.replace("sink =", "[notifications]\nsink =")
        );
        let message =
            from_figment(figment::Figment::from(figment::providers::Toml::string(&text))).unwrap_err().to_string();
        assert!(message.contains(setting) && message.contains("\"sig\" query parameter"), "{message}");
        assert!(message.contains("env = \\\"NAME\\\"") || message.contains("env = \"NAME\""), "{message}");
        assert!(!message.contains("S3CRETsig"), "{message}");
    }
    for credential in
        ["https://u:pw@hooks.example/x", "https://f.azurewebsites.net/api/hook?code=abc", "https://h.example/?Token=t"]
    {
        let message = problems(&format!("sink = {{ kind = \"webhook\", url = {credential:?} }}"));
        assert!(message.contains("carries a credential"), "{credential}: {message}");
    }
    // A URL without one stays inline; one with it comes from a source.
    assert!(parse("sink = { kind = \"webhook\", url = \"https://hooks.example/kvr?tenant=a\" }").is_ok());
    let config = parse("sink = { kind = \"webhook\", url = { env = \"FLOW_URL\" } }").unwrap();
    assert_eq!(
        config.notifications.sink,
        Some(NotificationSink::Webhook {
            url: SinkUrl::Secret(SecretSource { env: Some("FLOW_URL".into()), file: None })
        })
    );
    let message = problems("sink = { kind = \"webhook\", url = { env = \"FLOW_URL\", file = \"/run/flow\" } }");
    assert!(message.contains("notifications.sink.url: set exactly one of env or file"), "{message}");
    let message = problems("sink = { kind = \"webhook\", url = { path = \"/run/flow\" } }");
    assert!(message.contains("path"), "{message}");
}
