//! `kv-rotator events send`: posts one real-shaped Key Vault event to a webhook, so an
//! operator can test the subscription path (ingress, TLS, authentication, source filter)
//! the way Event Grid will use it.
//!
//! - [`delivery`]: the body, in the Event Grid schema (a JSON array, `application/json`,
//!   PascalCase `data`, `topic` the vault's ARM id) or CloudEvents 1.0 (one structured
//!   event, `application/cloudevents+json`, as Event Grid delivers without batching),
//!   with Event Grid's `aeg-*` headers. `seed` builds the dev service's sample event
//!   with it too.
//! - Authentication as the webhook checks it (`kv_rotator_webhook::auth`): a shared key
//!   in a header or a query parameter, or an Entra ID bearer token. Both are read from an
//!   environment variable or a file, never from the command line (argv is visible to
//!   every user of the machine).
//! - The answer: the HTTP status and a short reason (the webhook's `error`, or what it
//!   queued); any status but 2xx fails the command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use kv_rotator_config::SecretSource;
use kv_rotator_webhook::auth::{DEFAULT_KEY_HEADER, DEFAULT_KEY_QUERY_PARAMETER};
use secrecy::{ExposeSecret, SecretString};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::logging::sanitized;

/// Longest part of an answer printed.
const ANSWER_MAX: usize = 512;

/// `kv-rotator events …`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Subcommand.
    #[command(subcommand)]
    pub command: EventsCommand,
}

/// Subcommands of `kv-rotator events`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Post one Key Vault event, shaped as Event Grid delivers it, to a webhook.
    ///
    /// The event names a vault and a secret; a webhook that serves that vault queues a
    /// rotation (which the engine still gates: the secret must be managed and due).
    /// Authentication as the subscription sends it: a shared key (header or query
    /// parameter) or an Entra ID bearer token, read from an environment variable or a
    /// file, never from the command line. Prints the HTTP status and the webhook's
    /// answer; exit code 1 unless it is 2xx.
    Send(SendArgs),
}

/// Options of `kv-rotator events send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The webhook's URL, as in the Event Grid subscription (e.g.
    /// https://rotator.example.com/api/eventgrid).
    #[arg(long)]
    pub url: url::Url,
    /// The event schema of the subscription: `eventgrid` (Event Grid schema) or
    /// `cloudevents` (CloudEvents 1.0).
    #[arg(long, value_enum, default_value_t = Schema::Eventgrid)]
    pub schema: Schema,
    /// The Key Vault event type.
    #[arg(long, value_enum, default_value_t = EventType::NearExpiry)]
    pub event_type: EventType,
    /// The vault the event comes from: its name (contoso-kv) or its URL
    /// (https://contoso-kv.vault.azure.net).
    #[arg(long)]
    pub vault: String,
    /// The secret the event names.
    #[arg(long)]
    pub secret: String,
    /// The secret version the event names (32 hex digits). Default: none, and the
    /// engine takes the latest version.
    #[arg(long)]
    pub version: Option<String>,
    /// Shared key (webhook.auth mode "shared-key"): read from this environment variable.
    /// Default: no credential.
    #[arg(long, value_name = "VAR", group = "credential")]
    pub shared_key_env: Option<String>,
    /// Shared key: read from this file (a trailing newline is ignored).
    #[arg(long, value_name = "FILE", group = "credential")]
    pub shared_key_file: Option<PathBuf>,
    /// The header the shared key is sent in (webhook.auth.header).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_KEY_HEADER)]
    pub key_header: String,
    /// Send the shared key in this query parameter (webhook.auth.query_parameter;
    /// "key" when given without a name) instead of the header.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = DEFAULT_KEY_QUERY_PARAMETER)]
    pub key_query_parameter: Option<String>,
    /// Entra ID bearer token (webhook.auth mode "entra-id"): read from this environment
    /// variable.
    #[arg(long, value_name = "VAR", group = "credential")]
    pub bearer_token_env: Option<String>,
    /// Entra ID bearer token: read from this file.
    #[arg(long, value_name = "FILE", group = "credential")]
    pub bearer_token_file: Option<PathBuf>,
    /// The aeg-subscription-name header sent.
    #[arg(long, default_value = "KV-ROTATOR-EVENTS-SEND")]
    pub subscription_name: String,
    /// Seconds to wait for the whole answer.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
}

/// An Event Grid subscription's event schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Schema {
    /// Event Grid schema: a JSON array of events, `application/json`.
    Eventgrid,
    /// CloudEvents 1.0, structured mode: one event, `application/cloudevents+json`.
    Cloudevents,
}

/// The Key Vault secret events kv-rotator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventType {
    /// Microsoft.KeyVault.SecretNearExpiry (EXP in 30 days).
    #[value(alias = "Microsoft.KeyVault.SecretNearExpiry")]
    NearExpiry,
    /// Microsoft.KeyVault.SecretExpired (EXP now).
    #[value(alias = "Microsoft.KeyVault.SecretExpired")]
    Expired,
    /// Microsoft.KeyVault.SecretNewVersionCreated (no EXP).
    #[value(alias = "Microsoft.KeyVault.SecretNewVersionCreated")]
    NewVersion,
}

impl Schema {
    /// Its name in Azure's documentation.
    pub fn name(self) -> &'static str {
        match self {
            Schema::Eventgrid => "Event Grid schema",
            Schema::Cloudevents => "CloudEvents 1.0 schema",
        }
    }
}

impl EventType {
    /// The `eventType` / `type` value.
    pub fn name(self) -> &'static str {
        match self {
            EventType::NearExpiry => "Microsoft.KeyVault.SecretNearExpiry",
            EventType::Expired => "Microsoft.KeyVault.SecretExpired",
            EventType::NewVersion => "Microsoft.KeyVault.SecretNewVersionCreated",
        }
    }
}

/// What one event says.
#[derive(Debug, Clone)]
pub struct EventSpec<'a> {
    /// Its schema.
    pub schema: Schema,
    /// Its type.
    pub event_type: EventType,
    /// The vault's name (`topic`/`source`, `VaultName`).
    pub vault_name: &'a str,
    /// The vault's host (`data.Id`).
    pub vault_host: &'a str,
    /// The secret.
    pub secret: &'a str,
    /// The version, if the event names one.
    pub version: Option<&'a str>,
    /// `EXP`, if any.
    pub exp: Option<OffsetDateTime>,
}

/// The body of a delivery of `spec` and its content type.
pub fn delivery(spec: &EventSpec<'_>) -> (serde_json::Value, &'static str) {
    let EventSpec { schema, event_type, vault_name, vault_host, secret, version, exp } = *spec;
    let topic = format!(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/kv-rotator/providers/Microsoft.KeyVault/vaults/{vault_name}"
    );
    let id = match version {
        Some(version) => format!("https://{vault_host}/secrets/{secret}/{version}"),
        None => format!("https://{vault_host}/secrets/{secret}"),
    };
    // The service's field order (the webhook's fast path reads the common shape first).
    let mut data = serde_json::Map::new();
    data.insert("Id".into(), id.into());
    data.insert("VaultName".into(), vault_name.into());
    data.insert("ObjectType".into(), "Secret".into());
    data.insert("ObjectName".into(), secret.into());
    if let Some(version) = version {
        data.insert("Version".into(), version.into());
    }
    data.insert("NBF".into(), serde_json::Value::Null);
    data.insert("EXP".into(), exp.map(|t| t.unix_timestamp()).into());
    let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
    match schema {
        Schema::Eventgrid => (
            serde_json::json!([{
                "id": uuid_like(),
                "topic": topic,
                "subject": secret,
                "eventType": event_type.name(),
                "eventTime": now,
                "data": data,
                "dataVersion": "1",
                "metadataVersion": "1",
            }]),
            "application/json",
        ),
        Schema::Cloudevents => (
            serde_json::json!({
                "id": uuid_like(),
                "source": topic,
                "subject": secret,
                "type": event_type.name(),
                "time": now,
                "data": data,
                "specversion": "1.0",
            }),
            "application/cloudevents+json",
        ),
    }
}

/// A random id in the UUID format Event Grid uses.
fn uuid_like() -> String {
    let bytes: [u8; 16] = rand::random();
    let h = hex::encode(bytes);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The vault's name and host from `--vault` (a name or a URL).
fn vault_name_and_host(vault: &str) -> anyhow::Result<(String, String)> {
    let vault = vault.trim();
    if vault.contains("://") {
        let url = url::Url::parse(vault).with_context(|| format!("--vault {vault:?}: not a URL"))?;
        let host = url.host_str().filter(|h| !h.is_empty()).with_context(|| format!("--vault {vault:?}: no host"))?;
        let name = host.split('.').next().unwrap_or(host);
        return Ok((name.to_owned(), host.to_owned()));
    }
    if vault.is_empty() || vault.contains(['/', '.', ' ']) {
        anyhow::bail!("--vault {vault:?}: give the vault's name (contoso-kv) or its URL");
    }
    Ok((vault.to_owned(), format!("{vault}.vault.azure.net")))
}

/// The names of the environment variables `args` reads secrets from, for
/// [`crate::hardening`] to take out of the environment at startup.
pub fn secret_env_names(args: &EventsArgs) -> Vec<String> {
    let EventsCommand::Send(send) = &args.command;
    send.shared_key_env.iter().chain(&send.bearer_token_env).cloned().collect()
}

/// The credential to send, read from its variable or file.
enum Credential {
    None,
    SharedKey(SecretString),
    Bearer(SecretString),
}

fn credential(args: &SendArgs) -> anyhow::Result<Credential> {
    let source = |env: &Option<String>, file: &Option<PathBuf>| SecretSource { env: env.clone(), file: file.clone() };
    if args.shared_key_env.is_some() || args.shared_key_file.is_some() {
        let key = crate::service::read_secret("shared key", &source(&args.shared_key_env, &args.shared_key_file))?;
        return Ok(Credential::SharedKey(key));
    }
    if args.bearer_token_env.is_some() || args.bearer_token_file.is_some() {
        let token =
            crate::service::read_secret("bearer token", &source(&args.bearer_token_env, &args.bearer_token_file))?;
        return Ok(Credential::Bearer(token));
    }
    Ok(Credential::None)
}

/// `kv-rotator events …`.
pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    match args.command {
        EventsCommand::Send(args) => send(args).await,
    }
}

/// `kv-rotator events send`: posts the event, prints the status and why; fails unless 2xx.
pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    // The key (or token) crosses the network with the event: https, or http to this host.
    if let Some(problem) = kv_rotator_config::load::sink_url_problem("--url", args.url.as_str()) {
        anyhow::bail!("{problem}; nothing was sent");
    }
    let key_parameter = args.key_query_parameter.as_deref().unwrap_or(DEFAULT_KEY_QUERY_PARAMETER);
    if args.url.query_pairs().any(|(name, _)| name == key_parameter || name == DEFAULT_KEY_QUERY_PARAMETER) {
        anyhow::bail!(
            "--url carries a key in its query ({key_parameter}=…): the command line is visible to every user of \
             the machine; give the key with --shared-key-env or --shared-key-file and --key-query-parameter"
        );
    }
    let (vault_name, vault_host) = vault_name_and_host(&args.vault)?;
    let exp = match args.event_type {
        EventType::NearExpiry => Some(OffsetDateTime::now_utc() + time::Duration::days(30)),
        EventType::Expired => Some(OffsetDateTime::now_utc()),
        EventType::NewVersion => None,
    };
    let spec = EventSpec {
        schema: args.schema,
        event_type: args.event_type,
        vault_name: &vault_name,
        vault_host: &vault_host,
        secret: &args.secret,
        version: args.version.as_deref(),
        exp,
    };
    let (body, content_type) = delivery(&spec);
    let credential = credential(&args)?;
    let mut url = args.url.clone();
    if let (Credential::SharedKey(key), Some(name)) = (&credential, &args.key_query_parameter) {
        url.query_pairs_mut().append_pair(name, key.expose_secret());
    }
    // Never to where a redirect points: reqwest keeps custom headers (the key) across
    // hosts, and the Referer would carry a key in the query. A 3xx is an answer.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .build()
        .context("cannot build the HTTP client")?;
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .header("aeg-event-type", "Notification")
        .header("aeg-subscription-name", &args.subscription_name)
        .header("aeg-delivery-count", "0");
    if args.schema == Schema::Eventgrid {
        request = request.header("aeg-data-version", "1").header("aeg-metadata-version", "1");
    }
    match &credential {
        Credential::SharedKey(key) if args.key_query_parameter.is_none() => {
            request = request.header(args.key_header.as_str(), key.expose_secret());
        }
        Credential::Bearer(token) => request = request.bearer_auth(token.expose_secret()),
        _ => {}
    }
    // Origin and path only: a query or user part may be a credential.
    let shown_url = sanitized(&format!("{}{}", args.url.origin().ascii_serialization(), args.url.path()), ANSWER_MAX);
    let response = request.body(body.to_string()).send().await.map_err(|e| {
        // reqwest's error quotes the URL, which may carry the key in its query.
        anyhow::anyhow!("POST {shown_url}: {}", sanitized(&e.without_url().to_string(), ANSWER_MAX))
    })?;
    let status = response.status();
    let answer = response.text().await.unwrap_or_default();
    println!("{}: {}: {}", event_label(&spec), status_text(status), answer_reason(&answer));
    if !status.is_success() {
        anyhow::bail!("the webhook at {shown_url} answered {}", status_text(status));
    }
    Ok(())
}

fn event_label(spec: &EventSpec<'_>) -> String {
    format!(
        "{} for {}/{} ({})",
        spec.event_type.name(),
        sanitized(spec.vault_name, ANSWER_MAX),
        sanitized(spec.secret, ANSWER_MAX),
        spec.schema.name()
    )
}

fn status_text(status: reqwest::StatusCode) -> String {
    format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))
}

/// What the webhook's body says, short: its `error`, or what it queued.
fn answer_reason(answer: &str) -> String {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(answer) else {
        return sanitized(answer.trim(), ANSWER_MAX);
    };
    if let Some(error) = json.get("error").and_then(|e| e.as_str()) {
        return sanitized(error, ANSWER_MAX);
    }
    let count = |key: &str| json.get(key).and_then(|v| v.as_u64());
    match (count("queued"), count("ignored"), count("rejected")) {
        (Some(0), Some(ignored), Some(rejected)) => format!(
            "accepted, but no rotation queued (ignored {ignored}, rejected {rejected}: another vault than the \
             webhook serves, a secret name or version it refuses, or a rotation of this version already asked; \
             its log says which)"
        ),
        (Some(queued), _, _) => format!("accepted: {queued} rotation request(s) queued"),
        _ => sanitized(answer.trim(), ANSWER_MAX),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::routing::post;

    use super::*;

    /// What the server saw: headers, URI and body.
    type Seen = Arc<Mutex<Vec<(HeaderMap, Uri, String)>>>;

    async fn serve(status: StatusCode) -> (url::Url, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().route(
            "/api/eventgrid",
            post(move |headers: HeaderMap, uri: Uri, body: String| async move {
                record.lock().unwrap().push((headers, uri, body));
                (status, r#"{"error":"no such \u001b[2J thing"}"#)
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/api/eventgrid").parse().unwrap(), seen)
    }

    fn args(url: url::Url) -> SendArgs {
        SendArgs {
            url,
            schema: Schema::Cloudevents,
            event_type: EventType::NewVersion,
            vault: "https://contoso-kv.vault.azure.net/".to_owned(),
            secret: "orders-db".to_owned(),
            version: Some("0123456789abcdef0123456789abcdef".to_owned()),
            shared_key_env: None,
            shared_key_file: None,
            key_header: DEFAULT_KEY_HEADER.to_owned(),
            key_query_parameter: None,
            bearer_token_env: None,
            bearer_token_file: None,
            subscription_name: "TEST".to_owned(),
            timeout_secs: 5,
        }
    }

    #[tokio::test]
    async fn a_bearer_token_from_a_file_goes_in_the_authorization_header_of_a_cloudevent() {
        let (url, seen) = serve(StatusCode::ACCEPTED).await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "eyJ.token.sig\n").unwrap();
        send(SendArgs { bearer_token_file: Some(token), ..args(url) }).await.unwrap();
        let seen = seen.lock().unwrap();
        let (headers, uri, body) = &seen[0];
        assert_eq!(headers["authorization"], "Bearer eyJ.token.sig");
        assert_eq!(headers["content-type"], "application/cloudevents+json");
        assert_eq!(headers["aeg-event-type"], "Notification");
        assert_eq!(uri.query(), None);
        let event: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["type"], "Microsoft.KeyVault.SecretNewVersionCreated");
        assert_eq!(event["specversion"], "1.0");
        assert!(event["source"].as_str().unwrap().ends_with("/providers/Microsoft.KeyVault/vaults/contoso-kv"));
        assert_eq!(
            event["data"]["Id"],
            "https://contoso-kv.vault.azure.net/secrets/orders-db/0123456789abcdef0123456789abcdef"
        );
        assert_eq!(event["data"]["VaultName"], "contoso-kv");
    }

    #[tokio::test]
    async fn a_shared_key_goes_in_the_header_or_the_query_and_a_refusal_fails() {
        let (url, seen) = serve(StatusCode::FORBIDDEN).await;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "key-from-the-file\n").unwrap();
        let header = SendArgs { shared_key_file: Some(key.clone()), ..args(url.clone()) };
        let err = send(header).await.unwrap_err();
        assert!(err.to_string().contains("answered 403 Forbidden"), "{err:#}");
        let query = SendArgs {
            shared_key_file: Some(key),
            key_query_parameter: Some("code".to_owned()),
            schema: Schema::Eventgrid,
            ..args(url)
        };
        assert!(send(query).await.is_err());
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0["x-kv-rotator-key"], "key-from-the-file");
        assert_eq!(seen[1].1.query(), Some("code=key-from-the-file"));
        assert!(!seen[1].0.contains_key("x-kv-rotator-key"));
        assert_eq!(seen[1].0["content-type"], "application/json");
        let events: serde_json::Value = serde_json::from_str(&seen[1].2).unwrap();
        assert_eq!(events[0]["eventType"], "Microsoft.KeyVault.SecretNewVersionCreated");
    }

    #[tokio::test]
    async fn a_key_in_the_url_is_refused_before_anything_is_sent() {
        let (url, seen) = serve(StatusCode::OK).await;
        let mut with_key = url.clone();
        with_key.set_query(Some("key=s3cret-on-the-command-line"));
        let err = send(args(with_key)).await.unwrap_err().to_string();
        assert!(err.contains("--url carries a key") && !err.contains("s3cret"), "{err}");
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn the_webhooks_answer_is_escaped_and_a_vault_is_a_name_or_a_url() {
        assert_eq!(answer_reason(r#"{"error":"bad \u001b[2J"}"#), "bad \\u{1b}[2J");
        assert!(answer_reason(r#"{"queued":0,"ignored":1,"rejected":0}"#).contains("no rotation queued"));
        assert_eq!(vault_name_and_host("kv1").unwrap(), ("kv1".to_owned(), "kv1.vault.azure.net".to_owned()));
        let (name, host) = vault_name_and_host("https://kv1.vault.azure.net:8443/").unwrap();
        assert_eq!((name.as_str(), host.as_str()), ("kv1", "kv1.vault.azure.net"));
        assert!(vault_name_and_host("kv1.example.com").is_err());
    }

    /// The key never goes where a redirect points (reqwest would keep a custom header
    /// across hosts), nor in clear to another host.
    #[tokio::test]
    async fn the_key_goes_neither_through_a_redirect_nor_over_plain_http_to_another_host() {
        let (elsewhere, stolen) = serve(StatusCode::OK).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let to = elsewhere.to_string();
        let app = axum::Router::new().route(
            "/api/eventgrid",
            post(move || async move { (StatusCode::TEMPORARY_REDIRECT, [(axum::http::header::LOCATION, to)]) }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "key-from-the-file\n").unwrap();
        let redirected = format!("http://{addr}/api/eventgrid").parse().unwrap();
        let err = send(SendArgs { shared_key_file: Some(key.clone()), ..args(redirected) }).await.unwrap_err();
        assert!(err.to_string().contains("answered 307"), "{err:#}");
        assert!(stolen.lock().unwrap().is_empty(), "nothing reached where the redirect pointed");

        let remote = "http://webhook.example.com/api/eventgrid".parse().unwrap();
        let err = send(SendArgs { shared_key_file: Some(key), ..args(remote) }).await.unwrap_err();
        assert!(err.to_string().contains("plain http only to a loopback host"), "{err:#}");
    }
}
