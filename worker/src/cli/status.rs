//! Read-only views of the vault: `kv-rotator rotate --dry-run` and `kv-rotator status`.
//!
//! - [`dry_run`]: the plan of a `rotate` (named secrets, `--all`, `--resume`, `--force`):
//!   for each secret its profile, account, latest version and expiry, and what the engine
//!   would decide and why — through the engine's own rules ([`gate_rule`], [`DueRule`],
//!   [`Targets::refuse_account`], the journal's naming). It claims no lease, writes
//!   nothing and contacts no target.
//! - [`status`]: every managed secret (profile, account, latest version's age, expiry,
//!   next due time, its rotation window and when it next opens, the `kv-rotator-failed`
//!   mark) and every unfinished journal record, as
//!   a table or as JSON lines (`--json`).
//!
//! Everything read from the vault (names, tags) is printed escaped: anyone who can write
//! secrets can put terminal escapes into them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use kv_rotator_core::tags::{TAG_CREDENTIAL_ID, TAG_FAILED, TAG_JOURNAL_FOR, TAG_ROTATED_FROM, TAG_ROTATOR, TAG_STEP};
use kv_rotator_core::Trigger;
use kv_rotator_keyvault::{SecretProperties, SecretStore, StoreError};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::rotate::RotateArgs;
use crate::engine::due::{Due, DueRule, Windows};
use crate::engine::journal::{self, JOURNAL_PREFIX, RESERVED_PREFIX};
use crate::engine::protocol::{gate_rule, GateRule, Schedule};
use crate::engine::Outcome;
use crate::logging::sanitized;
use crate::service;
use crate::sweeper;
use crate::targets::Targets;

/// Longest text from the vault printed in one field.
const FIELD_MAX: usize = 128;
/// Longest reason printed (it quotes names and versions).
const REASON_MAX: usize = 1024;

/// Options of `kv-rotator status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Configuration file (TOML); `KV_ROTATOR_*` environment variables override it.
    /// Default: none (built-in defaults and `KV_ROTATOR_*` variables only).
    #[arg(long, short, env = "KV_ROTATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// One JSON object per line instead of a table (default: a table).
    #[arg(long)]
    pub json: bool,
}

/// Text from the vault, escaped and clipped for printing.
fn shown(text: &str) -> String {
    sanitized(text, FIELD_MAX)
}

/// A reason quoting text from the vault (an outcome, an error), escaped and clipped.
fn reason(text: &str) -> String {
    sanitized(text, REASON_MAX)
}

fn rfc3339(at: Option<OffsetDateTime>) -> String {
    at.and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_else(|| "-".to_owned())
}

/// `3d4h`, `5h12m`, `40s`: a coarse age.
fn age(span: time::Duration) -> String {
    let s = span.whole_seconds().max(0);
    match (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

/// One secret's line of the plan.
#[derive(Debug, Default)]
struct PlanLine {
    secret: String,
    profile: String,
    account: String,
    version: String,
    expires: String,
    /// `rotate`, `resume`, `stale`, `not-due`, `outside-window`, `too-soon`, `not-managed`, `not-found`,
    /// `account-refused`, `profile-unknown`, `misconfigured`, `error`.
    decision: &'static str,
    why: String,
}

impl std::fmt::Display for PlanLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or_dash = |s: &str| if s.is_empty() { "-".to_owned() } else { s.to_owned() };
        write!(
            f,
            "{}: {} ({}) profile={} account={} version={} expires={}",
            self.secret,
            self.decision,
            self.why,
            or_dash(&self.profile),
            or_dash(&self.account),
            or_dash(&self.version),
            or_dash(&self.expires)
        )
    }
}

/// Why the due rule says a version is due, or when it will be.
fn due_text(due: Due) -> String {
    match due {
        Due::NoExpiry => "due: no expiry".to_owned(),
        Due::Expired => "due: expired".to_owned(),
        Due::NearExpiry => "due: within the lead before expiry".to_owned(),
        Due::NotYet { due_at } => format!("not due until {}", rfc3339(Some(due_at))),
        Due::WaitingForWindow { opens_at } => {
            format!("due, waiting for its rotation window (opens {})", rfc3339(Some(opens_at)))
        }
        Due::WindowTooLate { opens_at } => format!(
            "due: its rotation window opens too close to expiry ({}), so it is rotated outside it",
            rfc3339(Some(opens_at))
        ),
        Due::Disabled => "disabled: never due by schedule".to_owned(),
    }
}

/// A version's rotation window as `status` shows it, and when it next opens: `-` for
/// none; the window's own text, noting a `RotationWindow` tag passed over.
fn window_columns(rule: &DueRule, properties: &SecretProperties, now: OffsetDateTime) -> (String, String) {
    let (window, tag_problem) = rule.windows.of(properties);
    let text = match (&window, tag_problem) {
        (Some(window), None) => shown(&window.to_string()),
        (Some(window), Some(_)) => format!("{} (RotationWindow tag not used)", shown(&window.to_string())),
        (None, Some(_)) => "- (RotationWindow tag not used)".to_owned(),
        (None, None) => "-".to_owned(),
    };
    let next = match window {
        None => "-".to_owned(),
        Some(window) if window.contains(now) => "open now".to_owned(),
        Some(window) => rfc3339(window.next_opening(now)),
    };
    (text, next)
}

/// What the engine would decide for `secret` on a request naming `version` (the latest
/// when `None`) under `trigger`, read-only.
async fn plan_one(
    store: &dyn SecretStore,
    targets: &Targets,
    rule: &DueRule,
    secret: &str,
    version: Option<&str>,
    trigger: &Trigger,
) -> PlanLine {
    let mut line = PlanLine { secret: shown(secret), ..Default::default() };
    let decide = |mut line: PlanLine, decision, why: String| {
        line.decision = decision;
        line.why = why;
        line
    };
    if secret.to_ascii_lowercase().starts_with(RESERVED_PREFIX) {
        return decide(line, "not-managed", "kv-rotator's own record (journal or lease)".to_owned());
    }
    let latest = match store.get_latest(secret).await {
        Ok(latest) => latest,
        Err(StoreError::NotFound { .. }) => return decide(line, "not-found", Outcome::NotFound.to_string()),
        Err(err) => return decide(line, "error", reason(&format!("cannot read it: {err}"))),
    };
    let tags = &latest.properties.tags;
    line.version = shown(&latest.version);
    line.expires = rfc3339(latest.properties.expires);
    line.account = tags.get(TAG_CREDENTIAL_ID).map(|a| shown(a.trim())).unwrap_or_default();
    let Some(profile) = tags.get(TAG_ROTATOR).cloned() else {
        return decide(line, "not-managed", Outcome::NotManaged.to_string());
    };
    line.profile = shown(&profile);
    let source = version.unwrap_or(&latest.version).to_ascii_lowercase();
    if !latest.version.eq_ignore_ascii_case(&source) {
        let why =
            format!("stale: the request names version {}; the engine's fence decides at run time", shown(&source));
        return decide(line, "stale", why);
    }
    let journal_name = journal::journal_name(&journal::rotation_id(store.vault_name(), secret, &source));
    let journaled = match store.get_latest(&journal_name).await {
        Ok(_) => true,
        Err(StoreError::NotFound { .. }) => false,
        Err(err) => return decide(line, "error", reason(&format!("cannot read journal {journal_name}: {err}"))),
    };
    let now = OffsetDateTime::now_utc();
    let due = rule.check(&latest.properties, now);
    if !journaled {
        let grace = targets.grace_period(&profile);
        match gate_rule(rule, Schedule::of(trigger), &latest.version, &latest.properties, grace, now) {
            GateRule::Open => {}
            GateRule::Closed(outcome @ Outcome::OutsideWindow { .. }) => {
                return decide(line, "outside-window", reason(&outcome.to_string()))
            }
            GateRule::Closed(outcome) => return decide(line, "not-due", reason(&outcome.to_string())),
            GateRule::TooSoonIfRotatedBefore(outcome) => match store.list_versions(secret).await {
                Ok(versions) if versions.len() <= 1 => {}
                Ok(_) => return decide(line, "too-soon", reason(&outcome.to_string())),
                Err(err) => return decide(line, "error", reason(&format!("cannot list its versions: {err}"))),
            },
        }
    }
    if targets.rotator(&profile).is_none() {
        let why = format!("the configuration has no target profile {}", shown(&profile));
        return decide(line, "profile-unknown", why);
    }
    let Some(account) = tags.get(TAG_CREDENTIAL_ID).map(|a| a.trim()).filter(|a| !a.is_empty()) else {
        return decide(line, "misconfigured", format!("no {TAG_CREDENTIAL_ID:?} tag naming the user on the target"));
    };
    if let Some(why) = targets.refuse_account(&profile, account) {
        return decide(line, "account-refused", reason(&why));
    }
    if journaled {
        let why = format!(
            "unfinished journal {journal_name} to resume (the engine asks the target whether it already uses the \
             journaled password; if not, it starts over under the schedule)"
        );
        return decide(line, "resume", why);
    }
    let why = match trigger {
        Trigger::Manual { force: true, .. } => format!("forced; {}", due_text(due)),
        Trigger::Manual { .. } => format!("manual; {}", due_text(due)),
        _ => due_text(due),
    };
    decide(line, "rotate", why)
}

/// `rotate --dry-run`: the plan, one line per secret; nothing written, no lease, no target.
pub async fn dry_run(args: RotateArgs) -> anyhow::Result<()> {
    let config = kv_rotator_config::load(args.config.as_deref())?;
    let store = service::connect_store(&config.vault)?;
    // Builds the rotators from the profiles (TLS anchors read), connects to none.
    let targets = Targets::from_profiles(&config.targets)?;
    let rule = DueRule::from_config(&config.engine, &config.sweeper)
        .with_windows(Windows::from_config(&config.targets, &config.sweeper));
    let requested_by = "dry-run".to_owned();
    let requests: Vec<(String, Option<String>, Trigger)> = if args.resume {
        let scan = sweeper::scan(store.as_ref(), None).await.context("cannot list the vault's journal records")?;
        scan.requests.into_iter().map(|(r, _)| (r.secret_name, r.version, r.trigger)).collect()
    } else {
        let names = args.selected(store.as_ref()).await?;
        let trigger = Trigger::Manual { requested_by, force: args.force };
        names.into_iter().map(|n| (n, None, trigger.clone())).collect()
    };
    if requests.is_empty() {
        println!("nothing to do");
        return Ok(());
    }
    println!("dry run: nothing is rotated, written or contacted");
    for (secret, version, trigger) in requests {
        let line = plan_one(store.as_ref(), &targets, &rule, &secret, version.as_deref(), &trigger).await;
        println!("{line}");
    }
    Ok(())
}

/// One managed secret of `status` (and of the admin API's `GET /api/secrets`).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRow {
    kind: &'static str,
    secret: String,
    profile: String,
    account: String,
    version: String,
    age: String,
    expires: String,
    next_due: String,
    /// The rotation window that applies (the tag's, else the profile's), or `-`.
    window: String,
    /// `open now`, when it next opens, or `-` without a window.
    next_window: String,
    last_failure: Option<String>,
}

/// One unfinished journal record of `status` (and of `GET /api/secrets`).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalRow {
    kind: &'static str,
    journal: String,
    secret: String,
    from_version: String,
    step: String,
    created: String,
    /// Whether the sweeper resumes it (its tags name a valid secret and version).
    resumable: bool,
}

/// What `status` shows: every managed secret and every unfinished journal record.
#[derive(Debug, serde::Serialize)]
pub struct StatusView {
    /// Managed secrets, in the listing's order.
    pub secrets: Vec<SecretRow>,
    /// Unfinished journal records.
    pub journals: Vec<JournalRow>,
}

/// `kv-rotator status`: managed secrets and unfinished journals, read-only.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let config = kv_rotator_config::load(args.config.as_deref())?;
    let store: Arc<dyn SecretStore> = service::connect_store(&config.vault)?;
    let rule = DueRule::from_config(&config.engine, &config.sweeper)
        .with_windows(Windows::from_config(&config.targets, &config.sweeper));
    let StatusView { secrets, journals } = read_status(store.as_ref(), &rule).await?;
    if args.json {
        for r in &secrets {
            println!("{}", serde_json::to_value(r)?);
        }
        for j in &journals {
            println!("{}", serde_json::to_value(j)?);
        }
        return Ok(());
    }
    print_status(&secrets, &journals);
    Ok(())
}

/// Reads what `status` shows, through the due `rule`; read-only.
pub async fn read_status(store: &dyn SecretStore, rule: &DueRule) -> anyhow::Result<StatusView> {
    let now = OffsetDateTime::now_utc();
    let listing = store.list_secrets().await.context("cannot list the vault's secrets")?;
    let mut secrets = Vec::new();
    let mut journals = Vec::new();
    for properties in listing {
        if properties.name.starts_with(JOURNAL_PREFIX) {
            journals.push(journal_row(store.vault_name(), &properties));
            continue;
        }
        if properties.name.to_ascii_lowercase().starts_with(RESERVED_PREFIX)
            || !properties.tags.contains_key(TAG_ROTATOR)
        {
            continue;
        }
        // The listing names no version: the latest's own properties are what the engine judges.
        let latest = match store.get_latest(&properties.name).await {
            Ok(latest) => latest,
            Err(StoreError::NotFound { .. }) => continue,
            Err(err) => return Err(anyhow::Error::new(err).context(format!("cannot read {}", shown(&properties.name)))),
        };
        let p = &latest.properties;
        let tag = |key: &str| p.tags.get(key).map(|v| shown(v.trim())).unwrap_or_default();
        let (window, next_window) = window_columns(rule, p, now);
        let next_due = match rule.check(p, now) {
            Due::NotYet { due_at } => rfc3339(Some(due_at)),
            Due::WaitingForWindow { opens_at } => format!("{} (in its rotation window)", rfc3339(Some(opens_at))),
            Due::Disabled => "never (disabled)".to_owned(),
            due => format!("now ({})", due_text(due).trim_start_matches("due: ")),
        };
        secrets.push(SecretRow {
            kind: "secret",
            secret: shown(&latest.name),
            profile: tag(TAG_ROTATOR),
            account: tag(TAG_CREDENTIAL_ID),
            version: shown(&latest.version),
            age: p.created.map(|c| age(now - c)).unwrap_or_else(|| "-".to_owned()),
            expires: rfc3339(p.expires),
            next_due,
            last_failure: p.tags.get(TAG_FAILED).map(|v| shown(v)),
            window,
            next_window,
        });
    }
    Ok(StatusView { secrets, journals })
}

fn print_status(secrets: &[SecretRow], journals: &[JournalRow]) {
    let header =
        ["SECRET", "PROFILE", "ACCOUNT", "VERSION", "AGE", "EXPIRES", "NEXT DUE", "NEXT WINDOW", "LAST FAILURE"];
    let rows: Vec<[String; 9]> = secrets
        .iter()
        .map(|r| {
            [
                r.secret.clone(),
                r.profile.clone(),
                r.account.clone(),
                r.version.clone(),
                r.age.clone(),
                r.expires.clone(),
                r.next_due.clone(),
                if r.window == "-" { "-".to_owned() } else { format!("{} ({})", r.next_window, r.window) },
                r.last_failure.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    print_table(&header, &rows);
    if !journals.is_empty() {
        println!();
        let header = ["JOURNAL", "SECRET", "FROM VERSION", "STEP", "CREATED", "RESUMABLE"];
        let rows: Vec<[String; 6]> = journals
            .iter()
            .map(|j| {
                [
                    j.journal.clone(),
                    j.secret.clone(),
                    j.from_version.clone(),
                    j.step.clone(),
                    j.created.clone(),
                    if j.resumable { "yes" } else { "no: invalid tags" }.to_owned(),
                ]
            })
            .collect();
        print_table(&header, &rows);
    }
}

fn journal_row(vault: &str, properties: &SecretProperties) -> JournalRow {
    let tag = |key: &str| properties.tags.get(key).map(|v| shown(v)).unwrap_or_default();
    JournalRow {
        kind: "journal",
        journal: shown(&properties.name),
        secret: tag(TAG_JOURNAL_FOR),
        from_version: tag(TAG_ROTATED_FROM),
        step: tag(TAG_STEP),
        created: rfc3339(properties.created),
        resumable: sweeper::journal_request(vault, properties).is_some(),
    }
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
