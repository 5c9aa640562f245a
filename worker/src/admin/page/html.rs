//! The status page's HTML, written with `maud`: every value inserted is HTML-escaped (names,
//! tags, reasons and errors come from the vault and callers), no script, and the only
//! inline style is the stylesheet below and the timeline bars' widths (numbers computed
//! here, never text from the vault).

use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{JOBS_PATH, LOGIN_PATH, LOGOUT_PATH, PAGE_PATH, ROTATE_PATH};
use crate::admin::api::MAX_REASON_CHARS;
use crate::admin::jobs::Job;
use crate::cli::status::StatusView;

/// The page's stylesheet.
const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em;margin:0}h2{font-size:1.1em;margin-top:1.6em}\
header{display:flex;gap:1em;align-items:center;justify-content:space-between}\
table{border-collapse:collapse;width:100%}th,td{padding:.35em .5em;border-bottom:1px solid #ddd;\
text-align:left;vertical-align:top}th{background:#f4f4f4}code{font-size:.95em}\
.bar{background:#eee;width:12em;height:.7em;border-radius:.35em;overflow:hidden}\
.bar span{display:block;height:100%}.ok span{background:#3a8f4b}.soon span{background:#e0a100}\
.expired span{background:#c62828}.failed{color:#c62828}.muted{color:#777}\
.notice{padding:.6em .8em;border-radius:.3em;background:#fdecea;color:#8a1c1c}\
form.rotate{display:flex;gap:.4em;align-items:center}form.rotate input[name=reason]{width:12em}";

/// One managed secret as `GET /api/secrets` serializes it ([`crate::cli::status::SecretRow`]).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretRow {
    secret: String,
    profile: String,
    version: String,
    age: String,
    expires: String,
    next_due: String,
    last_failure: Option<String>,
}

/// One unfinished journal record as `GET /api/secrets` serializes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JournalRow {
    journal: String,
    secret: String,
    step: String,
    created: String,
    resumable: bool,
}

/// A whole page around `body`, titled `title`; `refresh_secs`: reloads itself.
fn layout(title: &str, refresh_secs: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(secs) = refresh_secs { meta http-equiv="refresh" content=(secs); }
                title { (title) " · kv-rotator" }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
}

/// A page that says only `message`, with a way back.
pub fn message(title: &str, message: &str) -> Markup {
    layout(
        title,
        None,
        html! {
            h1 { (title) }
            p.notice { (message) }
            p { a href=(PAGE_PATH) { "Back to the status page" } }
        },
    )
}

/// The login form (static-token mode); `failed`: why the last attempt was refused.
pub fn login(failed: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            h1 { "kv-rotator status: log in" }
            @if let Some(why) = failed { p.notice { (why) } }
            p { "Paste the admin API token (" code { "[admin.auth] mode = \"static-token\"" } "). It is checked \
                 once; the browser then holds a session cookie, never the token." }
            form method="post" action=(LOGIN_PATH) {
                input type="password" name="token" autocomplete="off" required maxlength="1024" aria-label="Admin token";
                " "
                button type="submit" { "Log in" }
            }
        },
    )
}

/// The status page: managed secrets on an expiry timeline, unfinished journals, recent
/// jobs, a rotate form per secret; `vault_error`: why the secrets could not be read.
pub fn status(
    vault: &str,
    who: &str,
    csrf: &str,
    view: Option<&serde_json::Value>,
    vault_error: Option<&str>,
    jobs: &[Job],
) -> Markup {
    let parsed: Option<(Vec<SecretRow>, Vec<JournalRow>)> = view.map(|v| {
        let rows = serde_json::from_value(v["secrets"].clone()).unwrap_or_default();
        let journals = serde_json::from_value(v["journals"].clone()).unwrap_or_default();
        (rows, journals)
    });
    layout(
        "Status",
        None,
        html! {
            header {
                h1 { "kv-rotator status: " code { (vault) } }
                form method="post" action=(LOGOUT_PATH) {
                    span.muted { (who) " " }
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { "Log out" }
                }
            }
            @if let Some(why) = vault_error { p.notice { "The vault could not be read: " (why) } }
            @if let Some((rows, journals)) = &parsed {
                (secrets(rows, csrf))
                @if !journals.is_empty() { (journal_table(journals)) }
            }
            (job_table(jobs))
        },
    )
}

/// When `expires` (RFC 3339) is, relative to now: a CSS class (amber when due or within a
/// week, red once expired), the bar's width in percent of `horizon_days`, and a label.
fn timeline(expires: &str, due: bool, now: OffsetDateTime, horizon_days: f64) -> (&'static str, u32, String) {
    let Ok(at) = OffsetDateTime::parse(expires, &Rfc3339) else { return ("ok", 0, "no expiry".to_owned()) };
    let days = (at - now).as_seconds_f64() / 86_400.0;
    if days <= 0.0 {
        return ("expired", 100, format!("expired {:.0} d ago", -days));
    }
    let width = (days / horizon_days * 100.0).clamp(1.0, 100.0) as u32;
    (if due || days < 7.0 { "soon" } else { "ok" }, width, format!("in {days:.1} d"))
}

fn expiry(row: &SecretRow) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(&row.expires, &Rfc3339).ok()
}

/// The managed secrets, soonest expiry first, each with its rotate form.
fn secrets(rows: &[SecretRow], csrf: &str) -> Markup {
    let now = OffsetDateTime::now_utc();
    let mut rows: Vec<&SecretRow> = rows.iter().collect();
    rows.sort_by_key(|r| (expiry(r).is_none(), expiry(r)));
    let horizon =
        rows.iter().filter_map(|r| expiry(r)).map(|at| (at - now).as_seconds_f64() / 86_400.0).fold(30.0, f64::max);
    html! {
        h2 { "Managed secrets (" (rows.len()) ")" }
        @if rows.is_empty() { p.muted { "No managed secret in this vault." } } @else {
        table #secrets {
            thead { tr { th { "Secret" } th { "Profile" } th { "Version" } th { "Age" } th { "Expires" }
                         th { "Next due" } th { "Last failure" } th { "Rotate" } } }
            tbody {
                @for row in rows {
                    @let (class, width, label) = timeline(&row.expires, row.next_due.starts_with("now"), now, horizon);
                    tr data-secret=(row.secret) {
                        td.name { code { (row.secret) } }
                        td { (row.profile) }
                        td { code { (row.version.get(..8).unwrap_or(&row.version)) } }
                        td { (row.age) }
                        td.expires title=(row.expires) {
                            div class={ "bar " (class) } { span style={ "width:" (width) "%" } {} }
                            span.label { (label) }
                        }
                        td { (row.next_due) }
                        td.failed { @if let Some(failure) = &row.last_failure { (failure) } }
                        td { (rotate_form(&row.secret, csrf)) }
                    }
                }
            }
        }
        }
    }
}

/// A manual rotation of `secret`: a reason, and forcing only when the box is ticked.
fn rotate_form(secret: &str, csrf: &str) -> Markup {
    html! {
        form.rotate method="post" action=(ROTATE_PATH) {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="secret" value=(secret);
            input type="text" name="reason" required maxlength=(MAX_REASON_CHARS) placeholder="reason"
                aria-label={ "Reason to rotate " (secret) };
            label title="Bypass engine.min_rotation_interval_secs" {
                input type="checkbox" name="force" value="yes"; " force"
            }
            button type="submit" { "Rotate" }
        }
    }
}

fn journal_table(journals: &[JournalRow]) -> Markup {
    html! {
        h2 { "Unfinished rotations (journal records)" }
        table {
            thead { tr { th { "Journal" } th { "Secret" } th { "Step" } th { "Created" } th { "Resumed by the sweeper" } } }
            tbody { @for j in journals { tr {
                td { code { (j.journal) } } td { (j.secret) } td { (j.step) } td { (j.created) }
                td { @if j.resumable { "yes" } @else { span.failed { "no" } } }
            } } }
        }
    }
}

/// The recent jobs, newest first: each secret's state, failures in red.
fn job_table(jobs: &[Job]) -> Markup {
    html! {
        h2 { "Recent rotations" }
        @if jobs.is_empty() { p.muted { "No rotation was asked through the admin API since the service started." } }
        @else { table #jobs {
            thead { tr { th { "Asked" } th { "By" } th { "Reason" } th { "Secrets" } th { "" } } }
            tbody { @for job in jobs { tr {
                td { (short_time(&job.created)) }
                td { (job.requested_by) }
                td { (job.reason) @if job.force { " (forced)" } }
                td { @for s in &job.secrets {
                    div class=[(s.ok == Some(false)).then_some("failed")] { code { (s.secret) } ": " (s.state) }
                } }
                td { a href={ (JOBS_PATH) "/" (job.id) } { "details" } }
            } } }
        } }
    }
}

/// An RFC 3339 time to the second: `2026-11-30 11:57:28 UTC`.
fn short_time(rfc3339: &str) -> String {
    match rfc3339.get(..19) {
        Some(seconds) if rfc3339.ends_with('Z') => format!("{} UTC", seconds.replacen('T', " ", 1)),
        _ => rfc3339.to_owned(),
    }
}

/// One job: each secret's state, detail and error; reloads itself until the job is done.
pub fn job(job: &Job) -> Markup {
    let title = if job.done { "Rotation finished" } else { "Rotation running" };
    layout(
        title,
        (!job.done).then_some(2),
        html! {
            h1 { (title) }
            p { "Job " code { (job.id) } ", asked " (short_time(&job.created)) " by " (job.requested_by) ": " (job.reason)
                @if job.force { " (forced)" } }
            table #job data-done=(job.done) {
                thead { tr { th { "Secret" } th { "State" } th { "Outcome" } } }
                tbody { @for s in &job.secrets { tr data-state=(s.state) {
                    td { code { (s.secret) } }
                    td class=[(s.ok == Some(false)).then_some("failed")] { (s.state) }
                    td { @if let Some(detail) = &s.detail { (detail) } @if let Some(error) = &s.error { br; span.failed { (error) } } }
                } } }
            }
            @if !job.done { p.muted { "This page reloads every 2 seconds until every secret has ended." } }
            p { a href=(PAGE_PATH) { "Back to the status page" } }
        },
    )
}

/// `view` as `GET /api/secrets` serializes it: the page reads that shape, the one the API
/// promises (the rows' fields are `status`'s own).
pub fn view_json(view: &StatusView) -> serde_json::Value {
    serde_json::to_value(view).unwrap_or_default()
}
