//! Out-of-process plugins (`kind = "exec"`): a user program runs once per operation and
//! speaks a small, versioned JSON protocol on stdin and stdout (docs/plugins.md).
//!
//! - [`ExecConfig`]: the program (absolute path), its non-secret arguments and
//!   settings, the timeout, the environment variables passed through, and the caps on
//!   its reply and its stderr.
//! - [`ExecRotator`]: the [`Rotator`]. Each call writes one request to the program's
//!   stdin and closes it, reads one reply from its stdout, and maps it to the trait's
//!   results. The first call asks the program to `describe` itself (protocol version,
//!   strategies, password constraints) and refuses to go on if it does not fit the
//!   profile.
//!
//! Secrets travel only on stdin: never in argv, in the environment (cleared, then only
//! `PATH`, `LANG` and the allow-listed names) or in files. The request is built in a
//! zeroized buffer. Every password of the request is scrubbed from whatever the program
//! writes before it reaches a log or an error, and a reply that quotes one is refused.
//!
//! Each run is its own process group: a timeout, an oversized reply or the end of the
//! run kills the whole group (children the plugin left behind in it included; one that
//! started a session of its own escapes it: docs/plugins.md).
//!
//! The parts, each in its own file:
//! - `config`: [`ExecConfig`] and the checks that keep secrets out of its arguments,
//!   settings and environment names.
//! - `protocol`: protocol 1 on the wire — the operations, the request (built in a zeroized
//!   buffer), the reply and how each operation's reply maps to the trait's results.
//! - `process`: running a program as kv-rotator runs every program it is handed —
//!   [`check_command_file`], [`confined_command`], [`ProcessGroup`], [`read_capped`].
//! - here: [`ExecRotator`], which asks for a description, runs one operation within its
//!   timeout and judges the reply (a quoted password, a bad status, an error class).

use std::process::ExitStatus;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, Semaphore};

use self::process::collect_stderr;
use self::protocol::{encode, Body, LoginJson, Op, Reply, ReplyOf, Request};
use crate::common::Strategy;
use crate::scrub::Scrubber;
use crate::{
    PasswordPolicy, RetirePasswordsRequest, RetirePasswordsResponse, Rotator, RotatorError, RotatorResult,
    SetPasswordRequest, SetPasswordResponse, VerifyRequest, VerifyResponse,
};

mod config;
mod process;
mod protocol;

pub use self::config::ExecConfig;
pub use self::process::{check_command_file, confined_command, read_capped, Captured, CommandFile, ProcessGroup};

/// The protocol version this rotator speaks.
pub const PROTOCOL: u32 = 1;
/// Default `timeout_secs`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// Default `max_reply_bytes`.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 64 * 1024;
/// Default `max_stderr_bytes`.
pub const DEFAULT_MAX_STDERR_BYTES: usize = 16 * 1024;
/// Default `max_concurrent`.
pub const DEFAULT_MAX_CONCURRENT: usize = 4;
/// The `PATH` a plugin gets (unless `env` passes the worker's own through).
pub const PLUGIN_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Longest a `set` waits before its run starts — for the plugin's description and for a
/// free run (`max_concurrent`) — before it gives up with a transient error, nothing run.
/// The engine checked its lease just before calling `set`; a change that started long
/// after could come after another engine took over (the lease's margin is 10 s by
/// default). The engine checks the lease again on its retry.
pub const SET_START_WAIT: Duration = Duration::from_secs(2);
/// Longest stretch of a reply or stderr quoted in an error.
const QUOTE_CHARS: usize = 400;

/// What a plugin said of itself (`describe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// Protocol version (always [`PROTOCOL`] once accepted).
    pub protocol: u32,
    /// Strategies it implements.
    pub strategies: Vec<Strategy>,
}

/// Runs a plugin program per operation; see the [module docs](self).
#[derive(Debug)]
pub struct ExecRotator {
    cfg: ExecConfig,
    policy: PasswordPolicy,
    strategy: Strategy,
    /// The last description, and the command file it came from: a replaced program is
    /// asked again.
    described: Mutex<Option<(CommandFile, Description)>>,
    /// At most `max_concurrent` runs at once.
    runs: Semaphore,
}

impl ExecRotator {
    /// A rotator running `cfg.command` for a profile with `strategy` (single-user or
    /// multi-password; the plugin must declare it), passwords generated under `policy`.
    pub fn new(cfg: ExecConfig, policy: PasswordPolicy, strategy: Strategy) -> Self {
        let runs = Semaphore::new(cfg.max_concurrent.max(1));
        Self { cfg, policy, strategy, described: Mutex::new(None), runs }
    }

    /// Its settings.
    pub fn config(&self) -> &ExecConfig {
        &self.cfg
    }

    /// Checks the command file (see [`check_command_file`]), then asks the plugin to
    /// describe itself — once per version of the file: a replaced or edited program is
    /// asked again, a failure too — and checks that it fits: protocol, strategy, password
    /// constraints.
    pub async fn describe(&self) -> RotatorResult<Description> {
        // Transient: a plugin being upgraded (a chmod after a copy) may pass in a moment;
        // nothing has run, and a lasting problem is reported once the retries run out.
        let file = check_command_file(&self.cfg.command)
            .map_err(|why| RotatorError::Transient(format!("plugin {}: {why}", self.cfg.command.display())))?;
        let mut described = self.described.lock().await;
        if let Some((seen, description)) = described.as_ref() {
            if *seen == file {
                return Ok(description.clone());
            }
        }
        let description = self.describe_uncached().await?;
        *described = Some((file, description.clone()));
        Ok(description)
    }

    async fn describe_uncached(&self) -> RotatorResult<Description> {
        let body = Body::Describe;
        let reply: Reply = self.call(Op::Describe, &body, &Scrubber::new([]), None).await?;
        let Reply { outcome, strategies, password, .. } = reply;
        if outcome.as_deref() != Some("described") {
            return Err(self.protocol_error(Op::Describe, "expected outcome \"described\""));
        }
        let mut known = Vec::new();
        for name in strategies.unwrap_or_default() {
            // Unknown strategies are a later protocol's: ignored, not fatal.
            if let Ok(s) = name.parse::<Strategy>() {
                known.push(s);
            }
        }
        if !known.contains(&self.strategy) {
            return Err(RotatorError::Permanent(format!(
                "plugin {} does not offer strategy {:?} (it declares {:?})",
                self.cfg.command.display(),
                self.strategy.as_str(),
                known.iter().map(|s| s.as_str()).collect::<Vec<_>>()
            )));
        }
        if let Some(constraints) = password {
            constraints.check(&self.policy).map_err(|why| {
                RotatorError::Permanent(format!(
                    "the profile's password policy does not fit plugin {}: {why}",
                    self.cfg.command.display()
                ))
            })?;
        }
        Ok(Description { protocol: PROTOCOL, strategies: known })
    }

    fn protocol_error(&self, op: Op, why: &str) -> RotatorError {
        op.misbehaved(format!("plugin {} ({}): {why}", self.cfg.command.display(), op.name()))
    }

    /// One run: request in, reply out, mapped to `T` unless it is an error reply.
    async fn call<T: ReplyOf>(
        &self,
        op: Op,
        body: &Body<'_>,
        scrub: &Scrubber,
        start_by: Option<tokio::time::Instant>,
    ) -> RotatorResult<T> {
        let run = self.run(op, body, scrub, start_by).await?;
        let who = format!("plugin {} ({})", self.cfg.command.display(), op.name());
        let stderr_note = |s: &str| if s.is_empty() { String::new() } else { format!("; stderr: {s}") };
        if run.stdout.iter().all(u8::is_ascii_whitespace) {
            return Err(op.misbehaved(format!(
                "{who}: no reply ({}){}",
                describe_status(run.status),
                stderr_note(&run.stderr)
            )));
        }
        // A password echoed anywhere in the reply (escaped or not) refuses it whole.
        let text = String::from_utf8_lossy(&run.stdout).into_owned();
        let cleaned = scrub.clean(text.clone());
        let text = Zeroizing::new(text);
        if cleaned != *text {
            return Err(op.misbehaved(format!(
                "{who}: the reply contains a password of the request (scrubbed here), refused: {}",
                quote(&cleaned)
            )));
        }
        // Encoders escape more than serde does (`\u003c`, `\/`, non-ASCII as `\uXXXX`):
        // the reply is also checked in serde's own spelling of the same JSON.
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
            let canonical = Zeroizing::new(value.to_string());
            let cleaned = scrub.clean(canonical.to_string());
            if cleaned != *canonical {
                return Err(op.misbehaved(format!(
                    "{who}: the reply contains a password of the request (scrubbed here), refused: {}",
                    quote(&cleaned)
                )));
            }
        }
        let reply: Reply = match serde_json::from_str(&text) {
            Ok(reply) => reply,
            Err(e) => {
                // Not JSON, so not checkable in serde's spelling: shown only without escapes.
                let shown = if text.contains('\\') {
                    "(not shown: it has escapes the scrubber cannot follow)".to_owned()
                } else {
                    quote(&cleaned)
                };
                return Err(op.misbehaved(format!(
                    "{who}: the reply is not the protocol's JSON ({e}; {}): {shown}{}",
                    describe_status(run.status),
                    stderr_note(&run.stderr)
                )));
            }
        };
        if reply.protocol != Some(PROTOCOL) {
            return Err(op.misbehaved(format!(
                "{who}: reply protocol {:?}, expected {PROTOCOL}",
                reply.protocol.map_or("missing".to_owned(), |p| p.to_string())
            )));
        }
        if reply.outcome.as_deref() == Some("error") {
            let Some(error) = reply.error else {
                return Err(op.misbehaved(format!("{who}: outcome \"error\" without an \"error\" object")));
            };
            // Clipped: a message is for a log line and an alert, not a reply's worth of text.
            let message = format!("{who}: {}", clip(error.message.as_deref().unwrap_or_default()));
            return Err(match error.class.as_deref() {
                Some("transient") => RotatorError::Transient(message),
                Some("not-yet-visible") => RotatorError::NotYetVisible(message),
                Some("refused") if op == Op::Set => RotatorError::Refused(message),
                Some("permanent") => RotatorError::Permanent(message),
                other => op.misbehaved(format!("{message} (unknown error class {other:?})")),
            });
        }
        if !run.status.success() {
            return Err(op.misbehaved(format!(
                "{who}: a reply but {}{}",
                describe_status(run.status),
                stderr_note(&run.stderr)
            )));
        }
        T::from_reply(reply).map_err(|why| op.misbehaved(format!("{who}: {why}")))
    }

    /// Spawns the plugin, writes the request, collects stdout and stderr within the
    /// timeout, and kills the process group whatever happened.
    async fn run(
        &self,
        op: Op,
        body: &Body<'_>,
        scrub: &Scrubber,
        start_by: Option<tokio::time::Instant>,
    ) -> RotatorResult<Finished> {
        let who = format!("plugin {} ({})", self.cfg.command.display(), op.name());
        let turn = match start_by {
            Some(deadline) => tokio::time::timeout_at(deadline, self.runs.acquire()).await.map_err(|_| {
                RotatorError::Transient(format!(
                    "{who}: all {} runs of this plugin are busy; nothing was run",
                    self.cfg.max_concurrent
                ))
            })?,
            None => self.runs.acquire().await,
        };
        // The semaphore is never closed: `turn` is always a permit.
        let _turn = turn.map_err(|e| RotatorError::Permanent(format!("{who}: {e}")))?;
        let timeout = Duration::from_secs(self.cfg.timeout_secs);
        let deadline_ms = SystemTime::now().checked_add(timeout).and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        let request = Request {
            protocol: PROTOCOL,
            operation: op.name(),
            strategy: self.strategy.as_str(),
            deadline_unix_ms: deadline_ms.map_or(0, |d| d.as_millis() as u64),
            timeout_ms: timeout.as_millis() as u64,
            settings: &self.cfg.settings,
            body,
        };
        let request = encode(&request).map_err(|e| RotatorError::Permanent(format!("{who}: request: {e}")))?;

        let env: Vec<(String, std::ffi::OsString)> = [("PATH", PLUGIN_PATH), ("LANG", "C.UTF-8")]
            .into_iter()
            .filter(|(name, _)| !self.cfg.env.iter().any(|n| n == name))
            .map(|(n, v)| (n.to_owned(), v.into()))
            .chain(self.cfg.env.iter().filter_map(|n| std::env::var_os(n).map(|v| (n.clone(), v))))
            .collect();
        #[cfg(feature = "leak-ledger")]
        kv_rotator_leakscan::record_spawn(
            "exec plugin",
            std::iter::once(self.cfg.command.as_os_str()).chain(self.cfg.args.iter().map(|a| a.as_ref())),
            env.iter().map(|(n, v)| (n, v)),
        );
        let mut child = confined_command(&self.cfg.command, &self.cfg.args, env)
            .spawn()
            .map_err(|e| RotatorError::Permanent(format!("{who}: cannot start: {e}")))?;
        // Killed on every path out of here, a dropped (cancelled) call included.
        let mut group = ProcessGroup::of(&child);

        let mut stdin = child.stdin.take();
        let writer = async move {
            if let Some(stdin) = stdin.as_mut() {
                // A plugin that exits without reading is its own business: the reply decides.
                let _ = stdin.write_all(&request).await;
                let _ = stdin.shutdown().await;
            }
            drop(stdin);
            drop(request);
        };
        let max_reply = self.cfg.max_reply_bytes;
        // Kept beyond the cap by the longest secret, so a password cut by the cap is
        // still whole when scrubbed, then cut off.
        let longest = scrub.secrets().map(|s| s.expose_secret().len()).max().unwrap_or(0);
        let stderr_keep = self.cfg.max_stderr_bytes.saturating_add(longest);
        let mut stdout_task = tokio::spawn(read_capped(child.stdout.take(), max_reply, false));
        let stderr_task = tokio::spawn(read_capped(child.stderr.take(), stderr_keep, true));
        let writer = tokio::spawn(writer);

        let sleep = tokio::time::sleep(timeout);
        tokio::pin!(sleep);
        let mut stdout = None;
        let ended = loop {
            tokio::select! {
                status = child.wait() => break End::Exited(status),
                _ = &mut sleep => break End::TimedOut,
                out = &mut stdout_task, if stdout.is_none() => {
                    let out = out.unwrap_or_default();
                    if out.overflowed {
                        break End::TooLarge;
                    }
                    stdout = Some(out);
                }
            }
        };
        // Whatever the plugin left running goes with it; so does a write still blocked on
        // a pipe no one reads (its buffer is zeroized when dropped).
        group.kill();
        writer.abort();
        let status = match ended {
            End::Exited(status) => status.map_err(|e| op.misbehaved(format!("{who}: wait: {e}")))?,
            End::TimedOut | End::TooLarge => {
                let _ = child.wait().await;
                let stderr = collect_stderr(stderr_task, scrub, self.cfg.max_stderr_bytes).await;
                log_stderr(&who, &stderr);
                let stderr = if stderr.is_empty() { String::new() } else { format!("; stderr: {stderr}") };
                return Err(match ended {
                    End::TimedOut => op.timed_out(format!(
                        "{who}: no reply within {} s: process group killed{stderr}",
                        self.cfg.timeout_secs
                    )),
                    _ => op.misbehaved(format!(
                        "{who}: reply larger than max_reply_bytes = {max_reply}: process group killed{stderr}"
                    )),
                });
            }
        };
        let stdout = match stdout {
            Some(out) => out,
            // The group is dead, so the pipe ends are closed: this finishes at once.
            None => match tokio::time::timeout(Duration::from_secs(5), &mut stdout_task).await {
                Ok(Ok(out)) => out,
                _ => {
                    stdout_task.abort();
                    Captured::default()
                }
            },
        };
        if stdout.overflowed {
            return Err(
                op.misbehaved(format!("{who}: reply larger than max_reply_bytes = {max_reply}: process group killed"))
            );
        }
        let stderr = collect_stderr(stderr_task, scrub, self.cfg.max_stderr_bytes).await;
        log_stderr(&who, &stderr);
        Ok(Finished { status, stdout: stdout.bytes, stderr })
    }

    fn require_strategy(&self, wanted: Strategy, op: Op) -> RotatorResult<()> {
        if self.strategy != wanted {
            return Err(RotatorError::Permanent(format!(
                "{} is for strategy {:?}; this profile's is {:?}",
                op.name(),
                wanted.as_str(),
                self.strategy.as_str()
            )));
        }
        Ok(())
    }
}

/// Every password in `passwords` and its JSON-escaped form (what a reply would echo).
fn scrubber<'a>(passwords: impl IntoIterator<Item = &'a SecretString>) -> Scrubber {
    let mut all: Vec<SecretString> = Vec::new();
    for p in passwords {
        all.push(p.clone());
        let escaped = Zeroizing::new(serde_json::to_string(p.expose_secret()).unwrap_or_default());
        let inner = escaped.get(1..escaped.len().saturating_sub(1)).unwrap_or_default();
        if inner != p.expose_secret() && !inner.is_empty() {
            all.push(SecretString::from(inner.to_owned()));
        }
    }
    Scrubber::new(&all)
}

fn log_stderr(who: &str, stderr: &str) {
    if !stderr.is_empty() {
        tracing::info!(plugin_stderr = %stderr, "{who} wrote to stderr");
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => "exit 0".to_owned(),
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// At most [`QUOTE_CHARS`] characters of already scrubbed text, quoted.
fn quote(text: &str) -> String {
    let text = clip(text);
    format!("{text:?}")
}

/// At most [`QUOTE_CHARS`] characters of already scrubbed text, trimmed.
fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

enum End {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    TooLarge,
}

struct Finished {
    status: ExitStatus,
    stdout: Zeroizing<Vec<u8>>,
    /// Scrubbed, capped.
    stderr: String,
}

#[async_trait]
impl Rotator for ExecRotator {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn password_policy(&self) -> &PasswordPolicy {
        &self.policy
    }

    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        let start_by = tokio::time::Instant::now() + SET_START_WAIT;
        tokio::time::timeout_at(start_by, self.describe()).await.map_err(|_| {
            RotatorError::Transient(format!(
                "plugin {} (set): its description took longer than {SET_START_WAIT:?}; nothing was run",
                self.cfg.command.display()
            ))
        })??;
        let scrub = scrubber(
            [&req.pending, &req.current].into_iter().chain(&req.previous).chain(req.admin.iter().map(|a| &a.password)),
        );
        let body = Body::Set {
            username: &req.username,
            pending: req.pending.expose_secret(),
            current: req.current.expose_secret(),
            previous: req.previous.iter().map(|p| p.expose_secret()).collect(),
            admin: req.admin.as_ref().map(LoginJson::of),
            pending_is_new: req.pending_is_new,
        };
        self.call(Op::Set, &body, &scrub, Some(start_by)).await
    }

    /// The command file's check and the plugin's `describe` (protocol, strategy,
    /// password constraints): what every operation asks first.
    async fn check_setup(&self) -> RotatorResult<Option<String>> {
        let description = self.describe().await?;
        let strategies: Vec<&str> = description.strategies.iter().map(|s| s.as_str()).collect();
        Ok(Some(format!(
            "plugin {} describes itself: protocol {}, strategies {strategies:?}",
            self.cfg.command.display(),
            description.protocol
        )))
    }

    /// Protocol 1 has no operation that logs in as the admin without changing anything.
    async fn check_admin(&self, _admin: &crate::Credential) -> RotatorResult<crate::AdminCheck> {
        Ok(crate::AdminCheck::NotChecked(format!(
            "plugin protocol {PROTOCOL} has no read-only admin login operation (the plugin logs in as the admin in set)"
        )))
    }

    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        self.describe().await?;
        let scrub = scrubber([&req.password]);
        let body = Body::Verify { username: &req.username, password: req.password.expose_secret() };
        self.call(Op::Verify, &body, &scrub, None).await
    }

    async fn retire_passwords(&self, req: RetirePasswordsRequest) -> RotatorResult<RetirePasswordsResponse> {
        self.require_strategy(Strategy::MultiPassword, Op::Retire)?;
        self.describe().await?;
        let scrub =
            scrubber(std::iter::once(&req.keep).chain(&req.also_keep).chain(req.admin.iter().map(|a| &a.password)));
        let body = Body::Retire {
            username: &req.username,
            keep: req.keep.expose_secret(),
            also_keep: req.also_keep.iter().map(|p| p.expose_secret()).collect(),
            admin: req.admin.as_ref().map(LoginJson::of),
        };
        self.call(Op::Retire, &body, &scrub, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_passwords_are_scrubbed_too() {
        let p = SecretString::from("a\"b\\c-long-enough".to_owned());
        let s = scrubber([&p]);
        assert_eq!(s.clean(r#"{"m":"a\"b\\c-long-enough"}"#.to_owned()), r#"{"m":"[REDACTED]"}"#);
    }
}
