//! `kv-rotator check`: is this configuration ready to rotate? Checked without changing
//! anything, one line per check:
//!
//! - `config`: the configuration loads and validates (the loader's own checks, which
//!   name the key and the file); nothing else is checked when it does not.
//! - `webhook.auth`: the webhook's authentication can be set up (its keys read from
//!   their variables or files), as `serve` would set it up; skipped when not set
//!   (`serve` refuses that, `functions` does not use it).
//! - `alerts`, `notifications`: their sinks can be set up (URLs and keys read from their
//!   variables or files, a URL read that way held to the rule of inline ones); nothing
//!   is sent; skipped when not set.
//! - `vault`: the vault answers a listing, through the store the service uses;
//!   `secrets`: no managed secret names a target profile the configuration lacks.
//! - per target profile, `targets.NAME setup`: what the kind checks before any login
//!   ([`Rotator::check_setup`]: a plugin's `describe`, an htpasswd file's access);
//!   `targets.NAME admin`: the admin login, its password read from the vault
//!   ([`Rotator::check_admin`]); `targets.NAME canary`: a random password must be refused
//!   — the engine's own canary ([`refuses_a_random_password`]), asked for the account of
//!   one managed secret of the profile, else (through `check_admin`) for the admin.
//!
//! The canary costs one refused login (lockout policies count them), the admin check one
//! login. Text from the vault or a target is printed escaped ([`sanitized`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use kv_rotator_config::{Config, TargetProfile};
use kv_rotator_keyvault::SecretStore;
use kv_rotator_rotators::{AdminCheck, Credential, Rotator};

use crate::engine::protocol::refuses_a_random_password;
use crate::logging::sanitized;
use crate::service;
use crate::targets::Targets;
use kv_rotator_core::tags::{TAG_CREDENTIAL_ID, TAG_ROTATION_WINDOW, TAG_ROTATOR};

use crate::engine::due::Windows;

/// Longest reason printed (target and vault errors quote the server).
const REASON_MAX: usize = 1024;

/// Options of `kv-rotator check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file (TOML); `KV_ROTATOR_*` environment variables override it.
    /// Default: none (built-in defaults and `KV_ROTATOR_*` variables only).
    #[arg(long, short, env = "KV_ROTATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// One JSON object per line (`check`, `status`: ok, failed or skipped, `reason`)
    /// instead of text.
    #[arg(long)]
    pub json: bool,
}

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Failed,
    /// Nothing to check (no admin login, no account to ask): not a failure.
    Skipped,
}

/// One line of the report.
#[derive(Debug, serde::Serialize)]
struct Line {
    check: String,
    status: Status,
    reason: String,
}

impl Line {
    fn new(check: impl Into<String>, status: Status, reason: impl AsRef<str>) -> Self {
        Self { check: sanitized(&check.into(), REASON_MAX), status, reason: sanitized(reason.as_ref(), REASON_MAX) }
    }
}

/// Prints each line as it comes, so a slow target shows where the check waits.
struct Report {
    json: bool,
    failed: usize,
    total: usize,
}

impl Report {
    fn add(&mut self, line: Line) {
        self.total += 1;
        if line.status == Status::Failed {
            self.failed += 1;
        }
        if self.json {
            println!("{}", serde_json::to_value(&line).unwrap_or_default());
        } else {
            let status = match line.status {
                Status::Ok => "ok",
                Status::Failed => "FAILED",
                Status::Skipped => "skipped",
            };
            println!("{status:<7} {}: {}", line.check, line.reason);
        }
    }
}

/// `kv-rotator check`: fails when any check failed.
pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let mut report = Report { json: args.json, failed: 0, total: 0 };
    match kv_rotator_config::load(args.config.as_deref()) {
        Ok(config) => {
            report.add(Line::new("config", Status::Ok, "loaded and valid"));
            check_config(&config, &mut report).await;
        }
        Err(err) => report.add(Line::new("config", Status::Failed, format!("{err:#}"))),
    }
    if report.failed > 0 {
        anyhow::bail!("{} of {} checks failed", report.failed, report.total);
    }
    Ok(())
}

/// The line of a sink that `serve` sets up before it starts (`None`: not configured):
/// its URL and key read from their sources, held to the URL rule. Nothing is sent.
fn sink_line(check: &str, set_up: Option<anyhow::Result<()>>) -> Line {
    match set_up {
        None => Line::new(check, Status::Skipped, "no sink configured"),
        Some(Ok(())) => Line::new(check, Status::Ok, "sink set up (URL and key read; nothing sent)"),
        Some(Err(err)) => Line::new(check, Status::Failed, format!("{err:#}")),
    }
}

async fn check_config(config: &Config, report: &mut Report) {
    let auth = match service::webhook_auth(config.webhook.auth.as_ref()) {
        Ok(_) if config.webhook.auth.is_none() => Line::new(
            "webhook.auth",
            Status::Skipped,
            "not set: `serve` refuses to start without it (`functions` does not use it)",
        ),
        Ok(kv_rotator_webhook::Authenticator::None) => Line::new(
            "webhook.auth",
            Status::Ok,
            "mode none: deliveries are accepted UNAUTHENTICATED (only behind an ingress that authenticates Event Grid)",
        ),
        Ok(_) => Line::new("webhook.auth", Status::Ok, "set up (keys read, settings valid)"),
        Err(err) => Line::new("webhook.auth", Status::Failed, format!("{err:#}")),
    };
    report.add(auth);
    report.add(sink_line(
        "alerts",
        config.alerts.webhook_url.as_ref().map(|url| service::sink_url("alerts.webhook_url", url).map(|_| ())),
    ));
    report.add(sink_line(
        "notifications",
        config
            .notifications
            .sink
            .as_ref()
            .map(|_| crate::notify::Sink::from_config(&config.notifications, &config.vault).map(|_| ())),
    ));
    let (store, accounts) = match check_vault(config).await {
        Ok((store, accounts, line, window_tags)) => {
            report.add(line);
            if !window_tags.is_empty() {
                let why = format!(
                    "{TAG_ROTATION_WINDOW} tags that are not usable windows (the profile's rotation_window, or any \
                     time, applies instead): {}",
                    window_tags.join("; ")
                );
                report.add(Line::new("secret windows", Status::Failed, why));
            }
            (Some(store), accounts)
        }
        Err(err) => {
            report.add(Line::new("vault", Status::Failed, format!("{err:#}")));
            (None, BTreeMap::new())
        }
    };
    let unknown: Vec<String> = accounts
        .iter()
        .filter(|(p, _)| !config.targets.contains_key(*p))
        .map(|(p, a)| format!("{p:?} ({})", a.len()))
        .collect();
    if !unknown.is_empty() {
        let why = format!(
            "managed secrets name target profiles the configuration does not have, so their rotations fail: {} \
             (profile and secrets)",
            unknown.join(", ")
        );
        report.add(Line::new("secrets", Status::Failed, why));
    }
    for (name, profile) in &config.targets {
        let accounts = accounts.get(name).map(Vec::as_slice).unwrap_or_default();
        check_profile(name, profile, store.as_deref(), accounts, report).await;
    }
}

/// The vault as `check` sees it: the store, per profile the accounts its managed
/// secrets name (in name order), the line to report, and each managed secret whose
/// `RotationWindow` tag is not used, with why.
type VaultView = (Arc<dyn SecretStore>, BTreeMap<String, Vec<String>>, Line, Vec<String>);

/// Lists the vault ([`VaultView`]), from the listing's tags.
async fn check_vault(config: &Config) -> anyhow::Result<VaultView> {
    let store = service::connect_store(&config.vault)?;
    let listing = store.list_secrets().await.map_err(|e| anyhow::anyhow!("cannot list the vault's secrets: {e}"))?;
    let windows = Windows::from_config(&config.targets, &config.sweeper);
    let mut accounts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut window_tags = Vec::new();
    for properties in &listing {
        let tag = |key: &str| properties.tags.get(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if let (Some(profile), Some(account)) = (tag(TAG_ROTATOR), tag(TAG_CREDENTIAL_ID)) {
            accounts.entry(profile).or_default().push(account);
            if let (_, Some(problem)) = windows.of(properties) {
                window_tags.push(format!("{}: {problem}", properties.name));
            }
        }
    }
    let managed: usize = accounts.values().map(Vec::len).sum();
    let line = Line::new(
        "vault",
        Status::Ok,
        format!("{} answers: {} secrets listed, {managed} managed", config.vault.url, listing.len()),
    );
    Ok((store, accounts, line, window_tags))
}

/// The setup, admin and canary checks of one profile.
async fn check_profile(
    name: &str,
    profile: &TargetProfile,
    store: Option<&dyn SecretStore>,
    accounts: &[String],
    report: &mut Report,
) {
    let check = |what: &str| format!("targets.{name} {what}");
    // Built as `serve` builds it (TLS anchors read), one profile at a time so that one
    // broken profile does not hide the others.
    let targets = match Targets::from_profiles(&BTreeMap::from([(name.to_owned(), profile.clone())])) {
        Ok(targets) => targets,
        Err(err) => return report.add(Line::new(check("setup"), Status::Failed, format!("{err:#}"))),
    };
    let Some(rotator) = targets.rotator(name) else { return };
    match rotator.check_setup().await {
        Ok(Some(what)) => report.add(Line::new(check("setup"), Status::Ok, what)),
        Ok(None) => {}
        Err(err) => return report.add(Line::new(check("setup"), Status::Failed, err.to_string())),
    }
    let admin = match (&profile.admin, store) {
        (None, _) => {
            report.add(Line::new(check("admin"), Status::Skipped, "no admin login configured"));
            None
        }
        (Some(admin), None) => {
            let why = format!("cannot read its password from secret {:?}: the vault is not reachable", admin.secret);
            report.add(Line::new(check("admin"), Status::Failed, why));
            None
        }
        (Some(admin), Some(store)) => match store.get_latest(&admin.secret).await {
            Ok(record) => {
                let credential = Credential::new(admin.username.clone(), record.value);
                report.add(admin_line(check("admin"), rotator.as_ref(), &credential, &admin.secret).await);
                Some(credential)
            }
            Err(err) => {
                let why = format!("cannot read its password from secret {:?}: {err}", admin.secret);
                report.add(Line::new(check("admin"), Status::Failed, why));
                None
            }
        },
    };
    // An account the profile may rotate, as the engine asks the canary for a secret's.
    let account = accounts.iter().find(|a| targets.refuse_account(name, a).is_none());
    report.add(canary_line(check("canary"), name, rotator.as_ref(), account, admin.as_ref()).await);
}

async fn admin_line(check: String, rotator: &dyn Rotator, admin: &Credential, secret: &str) -> Line {
    match rotator.check_admin(admin).await {
        Ok(AdminCheck::Works(what)) => Line::new(check, Status::Ok, what),
        Ok(AdminCheck::Refused) => Line::new(
            check,
            Status::Failed,
            format!("the target refused the password of the admin {:?} (read from secret {secret:?})", admin.username),
        ),
        Ok(AdminCheck::NotChecked(why)) => Line::new(check, Status::Skipped, why),
        Err(err) => Line::new(check, Status::Failed, err.to_string()),
    }
}

/// A random password must be refused: for `account` through `verify` (the engine's
/// canary), else for the admin through `check_admin`.
async fn canary_line(
    check: String,
    profile: &str,
    rotator: &dyn Rotator,
    account: Option<&String>,
    admin: Option<&Credential>,
) -> Line {
    let accepted = |who: String| {
        Line::new(
            check.clone(),
            Status::Failed,
            format!(
                "target {profile} accepted a random wrong password for {who}: it does not check passwords (e.g. trust \
                 in pg_hba.conf for this address), so no login can prove which password works; the engine refuses to \
                 rotate through it"
            ),
        )
    };
    if let Some(account) = account {
        return match refuses_a_random_password(rotator, account).await {
            Ok(true) => Line::new(check, Status::Ok, format!("a random password for account {account:?} was refused")),
            Ok(false) => accepted(format!("account {account:?}")),
            Err(err) => Line::new(check, Status::Failed, err.to_string()),
        };
    }
    let Some(admin) = admin else {
        let why = "no account to ask: no managed secret in the vault names this profile, and it has no admin login";
        return Line::new(check, Status::Skipped, why);
    };
    let canary = Credential::new(admin.username.clone(), rotator.password_policy().generate());
    match rotator.check_admin(&canary).await {
        Ok(AdminCheck::Refused) => {
            Line::new(check, Status::Ok, format!("a random password for the admin {:?} was refused", admin.username))
        }
        Ok(AdminCheck::Works(_)) => accepted(format!("the admin {:?}", admin.username)),
        Ok(AdminCheck::NotChecked(why)) => {
            Line::new(check, Status::Skipped, format!("no managed secret names this profile; {why}"))
        }
        Err(err) => Line::new(check, Status::Failed, err.to_string()),
    }
}
