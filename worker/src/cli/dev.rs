//! `kv-rotator dev`: the service with the dev vault embedded, for local experiments.
//!
//! Writes the dev vault's CA certificate, a `serve` configuration pointing at it, the
//! demo htpasswd target and a sample delivery into the state directory, so the dev
//! vault can also be used by a separately started `kv-rotator serve` or by curl, and
//! `endpoints.json` with the addresses in use (written last: its presence means ready).
//! Like `serve`, it holds the dev vault's engine lease while it runs ([`crate::lease`]),
//! so a `serve` or `rotate` pointed at the same dev vault is refused.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use kv_rotator_config::figment::providers::Serialized;
use kv_rotator_config::figment::Figment;
use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{
    parse_fail_nth, DevVault, DevVaultOptions, ErrorRule, Faults, Injected, RateLimit,
};
use kv_rotator_keyvault::SecretStore;
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::seed::{self, DEMO_SECRET};
use crate::service;
use crate::targets::Targets;

/// Options of `kv-rotator dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address the dev vault serves TLS on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub vault_addr: SocketAddr,
    /// Address the webhook listens on (overrides webhook.listen).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the admin listener: /metrics, /healthz, /readyz (overrides admin.listen,
    /// default 127.0.0.1:9464, and enables it).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Optional configuration file for target profiles and engine settings; its
    /// `[vault]` section, if any, is replaced by the embedded dev vault.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Directory for the CA certificate, the sample config and the demo target.
    #[arg(long, default_value = ".kv-rotator-dev")]
    pub state_dir: PathBuf,
    /// Dev vault: keep its secrets in this file across runs (mode 0600; values are
    /// stored UNENCRYPTED). Default: in memory only.
    #[arg(long, value_name = "FILE")]
    pub vault_state_file: Option<PathBuf>,
    /// Dev vault: transactions per 10 seconds before it answers 429, as the service
    /// does (2000); 0 turns throttling off.
    #[arg(long, default_value_t = 2000)]
    pub vault_rate_limit: u32,
    /// Dev vault: milliseconds added to every answer.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub vault_latency_ms: u64,
    /// Dev vault: inject failures, repeatable: `[OPERATION:]FAULT=RATE` with FAULT one of
    /// 429, 500, 503, drop (no answer), drop-after (carried out, answer lost) and OPERATION
    /// one of get, set, update, delete, list, deleted, backup (all when left out), e.g.
    /// `--vault-fault 503=0.1 --vault-fault set:429=0.3`.
    #[arg(long = "vault-fault", value_name = "[OP:]FAULT=RATE")]
    pub vault_faults: Vec<ErrorRule>,
    /// Dev vault: fail the Nth request, `N[:FAULT]` (FAULT 429, 500, 503, drop or drop-after; 503 if left out).
    #[arg(long, value_name = "N[:FAULT]", value_parser = parse_fail_nth)]
    pub vault_fail_nth: Option<(u64, Injected)>,
}

/// Runs the dev service until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    warn!("dev mode: embedded dev vault (not Azure; in memory unless --vault-state-file is given)");
    let faults = Faults {
        latency: std::time::Duration::from_millis(args.vault_latency_ms),
        errors: args.vault_faults.clone(),
        fail_nth: args.vault_fail_nth,
    };
    let rate_limit =
        (args.vault_rate_limit > 0).then(|| RateLimit { transactions: args.vault_rate_limit, ..RateLimit::default() });
    let options = DevVaultOptions {
        bind: args.vault_addr,
        rate_limit,
        faults,
        state_file: args.vault_state_file.clone(),
        ..Default::default()
    };
    let vault =
        DevVault::start(options).await.with_context(|| format!("cannot start the dev vault on {}", args.vault_addr))?;
    let base = Figment::from(Serialized::default("vault.url", vault.endpoint().as_str()));
    let config = kv_rotator_config::load_onto(base, args.config.as_deref())?;
    if matches!(config.webhook.auth, None | Some(kv_rotator_config::WebhookAuthConfig::None {})) {
        warn!("dev mode: the webhook accepts UNAUTHENTICATED deliveries; set [webhook.auth] to try authentication");
    }

    std::fs::create_dir_all(&args.state_dir).with_context(|| format!("cannot create {}", args.state_dir.display()))?;
    let state_dir = args.state_dir.canonicalize()?;
    // The dev vault is in memory: files of an earlier run describe nothing that exists now.
    for stale in ["endpoints.json", "demo.htpasswd"] {
        let _ = std::fs::remove_file(state_dir.join(stale));
    }
    let ca_path = state_dir.join("dev-vault-ca.pem");
    std::fs::write(&ca_path, vault.ca_certificate_pem())
        .with_context(|| format!("cannot write {}", ca_path.display()))?;

    let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault)?);
    let lease = super::serve::claim_lease(store.clone(), "dev", &config.lease).await?;
    let result = serve(&args, &vault, &config, store, state_dir, ca_path, lease.clone()).await;
    lease.release().await;
    vault.shutdown().await;
    result
}

/// Seeds the demo target, writes the state directory's files and serves until stopped.
async fn serve(
    args: &DevArgs,
    vault: &DevVault,
    config: &kv_rotator_config::Config,
    store: Arc<dyn SecretStore>,
    state_dir: PathBuf,
    ca_path: PathBuf,
    lease: crate::lease::LeaseGuard,
) -> anyhow::Result<()> {
    let mut targets = Targets::from_profiles(&config.targets)?;
    let demo = seed::seed_demo_target(store.as_ref(), &state_dir, &mut targets).await?;

    let serve_config = format!(
        "# kv-rotator serve --config {0}/serve.toml   (against this dev vault)\n[vault]\nurl = \"{1}\"\ntls_ca_file = \"{2}\"\nconnect_to = \"{3}\"\ncredential = {{ kind = \"dev-vault\" }}\n\n[webhook]\nlisten = \"127.0.0.1:8080\"\n# local use only: real deployments set mode = \"entra-id\" or \"shared-key\"\nauth = {{ mode = \"none\" }}\n",
        state_dir.display(),
        vault.endpoint(),
        ca_path.display(),
        vault.local_addr()
    );
    std::fs::write(state_dir.join("serve.toml"), serve_config)?;
    let latest = store.get_latest(DEMO_SECRET).await?;
    let delivery = seed::near_expiry_delivery(
        store.vault_name(),
        &vault.host(),
        DEMO_SECRET,
        &demo.initial_version,
        latest.properties.expires.unwrap_or_else(time::OffsetDateTime::now_utc),
    );
    let event_path = state_dir.join("near-expiry-event.json");
    std::fs::write(&event_path, serde_json::to_string_pretty(&delivery)?)?;

    let listener =
        TcpListener::bind(args.listen).await.with_context(|| format!("cannot bind the webhook on {}", args.listen))?;
    let admin = crate::admin::bind(&config.admin, args.admin_listen).await?;
    let admin_auth = crate::admin::api_auth(&config.admin, admin.as_ref())?;
    let notifications = crate::notify::Sink::from_config(&config.notifications, &config.vault)?;
    let vault_failing_for = Some(std::time::Duration::from_secs(config.admin.vault_failing_secs));
    let background = service::Background {
        lease: Some(lease),
        admin,
        admin_auth,
        notifications,
        vault_failing_for,
        ..Default::default()
    };
    let running =
        service::start_with(store, targets, config.engine.clone(), &config.webhook, background, listener).await?;
    // Where everything is, for scripts and tests (ports may have been chosen by the OS).
    let endpoints = serde_json::json!({
        "vault_url": vault.endpoint().as_str(),
        "vault_addr": vault.local_addr().to_string(),
        "ca_file": ca_path,
        "serve_config": state_dir.join("serve.toml"),
        "webhook_url": format!("http://{}/api/eventgrid", running.webhook_addr),
        "metrics_url": running.admin_addr.map(|addr| format!("http://{addr}/metrics")),
        "demo_secret": DEMO_SECRET,
        "sample_event": event_path,
    });
    std::fs::write(state_dir.join("endpoints.json"), serde_json::to_string_pretty(&endpoints)?)?;
    info!(vault = %vault.endpoint(), vault_addr = %vault.local_addr(), ca = %ca_path.display(), "dev vault ready");
    info!(
        "rotate the demo secret: curl -sS -H 'aeg-event-type: Notification' -H 'content-type: application/json' --data @{} http://{}/api/eventgrid",
        event_path.display(),
        running.webhook_addr
    );
    running.run_until(service::shutdown_signal()).await
}
