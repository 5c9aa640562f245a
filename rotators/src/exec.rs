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

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, Semaphore};

use crate::common::Strategy;
use crate::registry::looks_secret;
use crate::scrub::Scrubber;
use crate::{
    Credential, PasswordPolicy, RetirePasswordsRequest, RetirePasswordsResponse, Rotator, RotatorError, RotatorResult,
    SetPasswordOutcome, SetPasswordRequest, SetPasswordResponse, VerifyRequest, VerifyResponse,
};

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

/// Settings of an exec (plugin) target.
///
/// ```toml
/// [targets.legacy-app]
/// kind = "exec"
/// command = "/opt/kv-rotator/plugins/legacy_app.py"
/// args = ["--site", "eu"]
/// timeout_secs = 30
/// env = ["HTTPS_PROXY"]
/// settings = { url = "https://legacy.internal" }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// The program, by absolute path (no `PATH` lookup).
    #[serde(deserialize_with = "absolute_path")]
    pub command: PathBuf,
    /// Its arguments: visible to every local user (`ps`), so never secret
    /// (`--password=…`-like ones are refused).
    #[serde(default, deserialize_with = "non_secret_args")]
    pub args: Vec<String>,
    /// Seconds one run may take before its process group is killed; at least 1.
    #[serde(default = "default_timeout", deserialize_with = "at_least_one_sec")]
    pub timeout_secs: u64,
    /// Passed to the plugin in every request. Not secret: keys that name one
    /// ([`SECRET_WORDS`]) are refused.
    #[serde(default, deserialize_with = "non_secret_settings")]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Names of the worker's environment variables passed through (default none).
    #[serde(default, deserialize_with = "non_secret_env")]
    pub env: Vec<String>,
    /// Largest reply read from stdout; a longer one fails the run.
    #[serde(default = "default_max_reply")]
    pub max_reply_bytes: usize,
    /// Largest stretch of stderr kept (and logged); the rest is read and dropped.
    #[serde(default = "default_max_stderr")]
    pub max_stderr_bytes: usize,
    /// Most runs of this profile's program at once (the engine rotates several accounts
    /// concurrently); more wait their turn. At least 1.
    #[serde(default = "default_max_concurrent", deserialize_with = "at_least_one")]
    pub max_concurrent: usize,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}
fn default_max_reply() -> usize {
    DEFAULT_MAX_REPLY_BYTES
}
fn default_max_stderr() -> usize {
    DEFAULT_MAX_STDERR_BYTES
}

fn default_max_concurrent() -> usize {
    DEFAULT_MAX_CONCURRENT
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom("max_concurrent must be at least 1")),
        n => Ok(n),
    }
}

fn at_least_one_sec<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(serde::de::Error::custom("timeout_secs must be at least 1")),
        secs => Ok(secs),
    }
}

fn absolute_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let path = PathBuf::deserialize(d)?;
    if !path.is_absolute() {
        return Err(serde::de::Error::custom(format!("command {:?} must be an absolute path", path.display())));
    }
    Ok(path)
}

fn non_secret_settings<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<serde_json::Map<String, serde_json::Value>, D::Error> {
    let settings = serde_json::Map::deserialize(d)?;
    check_settings(&settings).map_err(serde::de::Error::custom)?;
    Ok(settings)
}

fn check_settings(settings: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
    for (key, value) in settings {
        if looks_secret(key) {
            return Err(format!(
                "settings.{key} looks like a secret: the configuration holds none (give the plugin an admin login \
                 from Key Vault instead)"
            ));
        }
        check_setting_value(value).map_err(|e| e.replacen("settings.", &format!("settings.{key}."), 1))?;
    }
    Ok(())
}

/// Tables inside a setting, also those inside arrays (`[[settings.hosts]]`).
fn check_setting_value(value: &serde_json::Value) -> Result<(), String> {
    match value {
        serde_json::Value::Object(inner) => check_settings(inner),
        serde_json::Value::Array(items) => items.iter().try_for_each(check_setting_value),
        _ => Ok(()),
    }
}

fn non_secret_args<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let args = Vec::<String>::deserialize(d)?;
    for arg in &args {
        // `--password=x`, or `--password` followed by its value.
        let name = arg.split_once('=').map_or(arg.as_str(), |(name, _)| name);
        if name.starts_with('-') && looks_secret(name) {
            return Err(serde::de::Error::custom(format!(
                "args: {name} looks like a secret option, and arguments are visible to every local user (ps); \
                 secrets reach a plugin on stdin only"
            )));
        }
    }
    Ok(args)
}

fn non_secret_env<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    for name in &names {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(serde::de::Error::custom(format!("env: {name:?} is not a variable name")));
        }
        if looks_secret(name) {
            return Err(serde::de::Error::custom(format!(
                "env: {name} looks like a secret; secrets reach a plugin on stdin only"
            )));
        }
    }
    Ok(names)
}

impl ExecConfig {
    /// `command` with every other setting at its default.
    pub fn new(command: impl Into<PathBuf>) -> Self {
        Self {
            command: command.into(),
            args: Vec::new(),
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            settings: serde_json::Map::new(),
            env: Vec::new(),
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            max_stderr_bytes: DEFAULT_MAX_STDERR_BYTES,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
        }
    }
}

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

/// Which file the command was when it was described: device, inode, size, change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandFile(u64, u64, u64, i64, i64);

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

/// The plugin program may be changed by no one but root and the worker's own user: it
/// runs with the worker's identity and sees every password of its profile. So the file
/// must be a regular file, and it and every directory above it up to `/` — along the path
/// as configured and along the path its symlinks resolve to — owned by root or the
/// worker's user and writable by neither group nor others. A sticky directory (`/tmp`)
/// does not pass: others may add files there, and an interpreter such as Python imports
/// modules from its script's directory. (With no one else able to write anywhere on the
/// path, the file cannot be swapped between this check and the run.)
///
/// Checked before every run; returns which file it is.
pub fn check_command_file(path: &std::path::Path) -> Result<CommandFile, String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the command file: {e}"))?;
    if !meta.is_file() {
        return Err("the command is not a regular file".to_owned());
    }
    let resolved = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve the command's path: {e}"))?;
    check_owner_and_mode(&format!("the command file {}", resolved.display()), &meta)?;
    for file in [path, resolved.as_path()] {
        for dir in file.ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()) {
            let dir_meta =
                std::fs::metadata(dir).map_err(|e| format!("cannot read directory {}: {e}", dir.display()))?;
            check_owner_and_mode(&format!("directory {}", dir.display()), &dir_meta)?;
        }
    }
    Ok(CommandFile(meta.dev(), meta.ino(), meta.len(), meta.ctime(), meta.ctime_nsec()))
}

fn check_owner_and_mode(what: &str, meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{what} is owned by uid {}, neither root nor the worker's user (uid {me}): its owner could change what \
             runs with the worker's identity and passwords",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{what} is writable by its group or by others (mode {:o}): they could change what runs with the \
             worker's identity and passwords (chmod go-w)",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
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

/// `value` as JSON in a buffer that is zeroized when dropped. Sized up front so no
/// reallocation leaves a copy of a password behind in freed memory.
fn encode<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    let mut counter = CountingWriter(0);
    serde_json::to_writer(&mut counter, value)?;
    let mut buf = Zeroizing::new(Vec::with_capacity(counter.0 + 1));
    serde_json::to_writer(&mut *buf, value)?;
    buf.push(b'\n');
    Ok(buf)
}

struct CountingWriter(usize);

impl std::io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `program` with `args`, set up as kv-rotator runs every program it is handed: an
/// environment of `env` only, working directory `/`, its own process group (for
/// [`ProcessGroup`]), all three pipes, killed if dropped.
pub fn confined_command<K, V>(
    program: &std::path::Path,
    args: &[String],
    env: impl IntoIterator<Item = (K, V)>,
) -> tokio::process::Command
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A child's process group (the child started with `process_group(0)`; its id is the
/// leader's pid), killed with `SIGKILL` once: by [`ProcessGroup::kill`] right after the
/// leader exits (the id is not reused while any member lives), or when dropped (a
/// cancelled call: the leader is not even reaped yet). Whatever the child left behind in
/// the group goes too.
#[derive(Debug)]
pub struct ProcessGroup(Option<rustix::process::Pid>);

impl ProcessGroup {
    /// The group `child` leads.
    pub fn of(child: &tokio::process::Child) -> Self {
        Self(child.id().and_then(|pid| rustix::process::Pid::from_raw(pid as i32)))
    }

    /// Kills every member now (once).
    pub fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            // ESRCH: every member is gone already.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
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

/// What [`read_capped`] read from a pipe.
#[derive(Debug, Default)]
pub struct Captured {
    /// The bytes kept (at most the cap), wiped when dropped.
    pub bytes: Zeroizing<Vec<u8>>,
    /// Whether the pipe had more than the cap.
    pub overflowed: bool,
}

/// Reads `pipe` to its end keeping at most `cap` bytes. With `drain`, what is past the
/// cap is read and dropped (the plugin never blocks on a full pipe); without, reading
/// stops at the first byte past it.
pub async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, cap: usize, drain: bool) -> Captured {
    let mut out = Captured::default();
    let Some(mut pipe) = pipe else { return out };
    let mut chunk = Zeroizing::new([0u8; 8192]);
    loop {
        match pipe.read(&mut chunk[..]).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let room = cap.saturating_sub(out.bytes.len());
                if n > room {
                    out.overflowed = true;
                    if !drain {
                        return out;
                    }
                }
                let keep = n.min(room);
                if keep > 0 {
                    // Reserved once (up to 1 MiB) so growing rarely leaves a copy behind.
                    if out.bytes.capacity() == 0 {
                        out.bytes.reserve_exact(cap.min(1 << 20));
                    }
                    out.bytes.extend_from_slice(&chunk[..keep]);
                }
            }
        }
    }
}

async fn collect_stderr(mut task: tokio::task::JoinHandle<Captured>, scrub: &Scrubber, cap: usize) -> String {
    let captured = match tokio::time::timeout(Duration::from_secs(5), &mut task).await {
        Ok(Ok(captured)) => captured,
        _ => {
            task.abort();
            return String::new();
        }
    };
    let raw = String::from_utf8_lossy(&captured.bytes).into_owned();
    let raw_len = raw.len();
    let mut text = scrub.clean(raw);
    if text.len() > cap || captured.overflowed {
        // A password the capture cut in half is not scrubbed; it begins past `cap` in the
        // raw text, and scrubbing shifts it left by what the redactions saved: cut that
        // much earlier, so none of it is kept.
        let shift = raw_len.saturating_sub(text.len());
        let mut cut = cap.saturating_sub(shift).min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" […truncated]");
    }
    text.trim_end().to_owned()
}

/// The operations of protocol 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Describe,
    Set,
    Verify,
    Retire,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Describe => "describe",
            Op::Set => "set",
            Op::Verify => "verify",
            Op::Retire => "retire",
        }
    }

    /// A run without a usable reply. A `set` may have changed the password before it
    /// went wrong, so the engine must keep the pending password (`NotYetVisible`);
    /// elsewhere nothing changed and the error is the plugin's (`Permanent`), but for
    /// `describe` (`Transient`).
    fn misbehaved(self, message: String) -> RotatorError {
        match self {
            Op::Set => RotatorError::NotYetVisible(message),
            // Nothing was asked of the target yet; a half-copied upgrade answers garbage
            // for a moment. A lasting fault is reported once the retries run out.
            Op::Describe => RotatorError::Transient(message),
            _ => RotatorError::Permanent(message),
        }
    }

    /// A run killed at its timeout: a `set` may have changed the password
    /// (`NotYetVisible`); elsewhere the target or the plugin's own network call was
    /// probably slow, and a later try can succeed (`Transient`).
    fn timed_out(self, message: String) -> RotatorError {
        match self {
            Op::Set => RotatorError::NotYetVisible(message),
            _ => RotatorError::Transient(message),
        }
    }
}

#[derive(Serialize)]
struct Request<'a> {
    protocol: u32,
    operation: &'static str,
    strategy: &'static str,
    deadline_unix_ms: u64,
    timeout_ms: u64,
    settings: &'a serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    body: &'a Body<'a>,
}

#[derive(Serialize)]
struct LoginJson<'a> {
    username: &'a str,
    password: &'a str,
}

impl<'a> LoginJson<'a> {
    fn of(c: &'a Credential) -> Self {
        LoginJson { username: &c.username, password: c.password.expose_secret() }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Describe,
    Set {
        username: &'a str,
        pending: &'a str,
        current: &'a str,
        previous: Vec<&'a str>,
        admin: Option<LoginJson<'a>>,
        pending_is_new: bool,
    },
    Verify {
        username: &'a str,
        password: &'a str,
    },
    Retire {
        username: &'a str,
        keep: &'a str,
        also_keep: Vec<&'a str>,
        admin: Option<LoginJson<'a>>,
    },
}

/// Password constraints a plugin may declare in `describe`.
#[derive(Debug, Default, Deserialize)]
struct Constraints {
    min_length: Option<usize>,
    max_length: Option<usize>,
    /// The only symbols the target accepts.
    symbols: Option<String>,
}

impl Constraints {
    fn check(&self, policy: &PasswordPolicy) -> Result<(), String> {
        if let Some(min) = self.min_length.filter(|&m| policy.length < m) {
            return Err(format!("password.length = {} is below the plugin's min_length {min}", policy.length));
        }
        if let Some(max) = self.max_length.filter(|&m| policy.length > m) {
            return Err(format!("password.length = {} is above the plugin's max_length {max}", policy.length));
        }
        if let Some(allowed) = &self.symbols {
            let bad: String =
                policy.symbols.chars().filter(|c| !allowed.contains(*c) && !policy.exclude.contains(*c)).collect();
            if !bad.is_empty() {
                return Err(format!(
                    "password.symbols has {bad:?}, which the plugin does not accept (it does {allowed:?})"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct Reply {
    protocol: Option<u32>,
    outcome: Option<String>,
    error: Option<ReplyError>,
    /// `set`: which login made the change.
    changed_with: Option<String>,
    // `set`'s `verified` is accepted (unknown fields are) but not read: the engine's own
    // `test` step checks a plugin's word.
    /// `retire`.
    removed: Option<usize>,
    /// `describe`.
    strategies: Option<Vec<String>>,
    password: Option<Constraints>,
}

#[derive(Debug, Deserialize)]
struct ReplyError {
    class: Option<String>,
    message: Option<String>,
}

trait ReplyOf: Sized {
    fn from_reply(reply: Reply) -> Result<Self, String>;
}

impl ReplyOf for Reply {
    fn from_reply(reply: Reply) -> Result<Self, String> {
        Ok(reply)
    }
}

impl ReplyOf for SetPasswordResponse {
    fn from_reply(reply: Reply) -> Result<Self, String> {
        let outcome = match (reply.outcome.as_deref(), reply.changed_with.as_deref()) {
            (Some("already-set"), _) => SetPasswordOutcome::AlreadySet,
            (Some("changed"), Some("current")) => SetPasswordOutcome::ChangedWithCurrent,
            (Some("changed"), Some("previous")) => SetPasswordOutcome::ChangedWithPrevious,
            (Some("changed"), Some("admin")) => SetPasswordOutcome::ChangedWithAdmin,
            (Some("changed"), other) => {
                return Err(format!("outcome \"changed\" needs changed_with current|previous|admin, got {other:?}"))
            }
            (other, _) => return Err(format!("set: unexpected outcome {other:?}")),
        };
        Ok(SetPasswordResponse { outcome, pending_verified: false })
    }
}

impl ReplyOf for VerifyResponse {
    fn from_reply(reply: Reply) -> Result<Self, String> {
        match reply.outcome.as_deref() {
            Some("accepted") => Ok(VerifyResponse::Accepted),
            Some("rejected") => Ok(VerifyResponse::Rejected),
            other => Err(format!("verify: unexpected outcome {other:?}")),
        }
    }
}

impl ReplyOf for RetirePasswordsResponse {
    fn from_reply(reply: Reply) -> Result<Self, String> {
        match (reply.outcome.as_deref(), reply.removed) {
            (Some("retired"), Some(removed)) => Ok(RetirePasswordsResponse { removed }),
            (other, removed) => {
                Err(format!("retire: expected outcome \"retired\" with removed, got {other:?}, {removed:?}"))
            }
        }
    }
}

impl crate::registry::KindSettings for ExecConfig {
    /// A plugin's strategies are known only when it describes itself: the rotator refuses
    /// then if the plugin does not declare the profile's.
    fn offers(&self, strategy: crate::common::Strategy) -> Result<(), std::borrow::Cow<'static, str>> {
        crate::registry::all_strategies_but(
            strategy,
            crate::common::Strategy::AlternatingUsers,
            "exec plugins offer single-user and multi-password (protocol 1 has no twin account operation)",
        )
    }

    fn build(
        &self,
        profile: &crate::registry::ProfileContext<'_>,
    ) -> Result<std::sync::Arc<dyn Rotator>, crate::registry::BuildError> {
        Ok(std::sync::Arc::new(ExecRotator::new(self.clone(), profile.password.clone(), profile.strategy)))
    }
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

    fn parse(toml_like: serde_json::Value) -> Result<ExecConfig, String> {
        serde_json::from_value(toml_like).map_err(|e| e.to_string())
    }

    #[test]
    fn config_needs_an_absolute_command_and_no_secrets() {
        let cfg = parse(serde_json::json!({"command": "/bin/true"})).unwrap();
        assert_eq!(cfg, ExecConfig::new("/bin/true"));
        let e = parse(serde_json::json!({"command": "plugin.sh"})).unwrap_err();
        assert!(e.contains("absolute path"), "{e}");
        let e = parse(serde_json::json!({"command": "/p", "settings": {"db": {"Password": "x"}}})).unwrap_err();
        assert!(e.contains("settings.db.Password looks like a secret"), "{e}");
        let e = parse(serde_json::json!({"command": "/p", "env": ["AZURE_CLIENT_SECRET"]})).unwrap_err();
        assert!(e.contains("looks like a secret"), "{e}");
        let e = parse(serde_json::json!({"command": "/p", "timeout_secs": 0})).unwrap_err();
        assert!(e.contains("timeout_secs must be at least 1"), "{e}");
        let e = parse(serde_json::json!({"command": "/p", "args": ["--site=eu", "--db-password=x"]})).unwrap_err();
        assert!(e.contains("args: --db-password looks like a secret option"), "{e}");
        // The option and its value apart, other spellings, and what is only a location.
        for args in [&["--password", "x"][..], &["--api-key=k"], &["--pass", "x"], &["-pwd=x"]] {
            let e = parse(serde_json::json!({"command": "/p", "args": args})).unwrap_err();
            assert!(e.contains("looks like a secret option"), "{args:?}: {e}");
        }
        let cfg = parse(serde_json::json!({"command": "/p", "args": ["--token-file=/run/t", "--password-env", "PW",
            "--site", "eu"], "settings": {"api-key_path": "/x"}}))
        .unwrap();
        assert_eq!(cfg.args.len(), 5);
        let e = parse(serde_json::json!({"command": "/p", "settings": {"hosts": [{"name": "a", "api_key": "k"}]}}))
            .unwrap_err();
        assert!(e.contains("settings.hosts.api_key looks like a secret"), "{e}");
        let e = parse(serde_json::json!({"command": "/p", "max_concurrent": 0})).unwrap_err();
        assert!(e.contains("max_concurrent must be at least 1"), "{e}");
        let e = parse(serde_json::json!({"command": "/p", "comand": "/q"})).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn escaped_passwords_are_scrubbed_too() {
        let p = SecretString::from("a\"b\\c-long-enough".to_owned());
        let s = scrubber([&p]);
        assert_eq!(s.clean(r#"{"m":"a\"b\\c-long-enough"}"#.to_owned()), r#"{"m":"[REDACTED]"}"#);
    }

    #[test]
    fn the_request_is_one_json_line() {
        let settings = serde_json::Map::new();
        let body = Body::Verify { username: "app", password: "pw" };
        let req = Request {
            protocol: 1,
            operation: "verify",
            strategy: "single-user",
            deadline_unix_ms: 5,
            timeout_ms: 1000,
            settings: &settings,
            body: &body,
        };
        let bytes = encode(&req).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["operation"], "verify");
        assert_eq!(v["password"], "pw");
        assert_eq!(bytes.last(), Some(&b'\n'));
        let describe = Request { operation: "describe", body: &Body::Describe, ..req };
        let v: serde_json::Value = serde_json::from_slice(&encode(&describe).unwrap()).unwrap();
        assert!(v.get("username").is_none() && v["protocol"] == 1, "{v}");
    }
}
