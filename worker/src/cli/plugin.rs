//! `kv-rotator plugin test`: the conformance testkit
//! ([`kv_rotator_rotators::testkit`]) against one target profile of a configuration,
//! with test users made by a fixture program of the plugin author's.
//!
//! Meant for plugin authors (`kind = "exec"`), it works for any kind: the profile's rotator
//! is built as `serve` would build it. The checks follow the profile's strategy:
//! single-user runs [`run_conformance`], multi-password
//! [`run_multi_password_conformance`]. Nothing is read from or written to Key Vault.
//!
//! The fixture speaks the plugins' style: one JSON object on stdin, one on stdout
//! (docs/plugins.md, "Testing a plugin"):
//! - `{"fixture": 1, "op": "admin", "profile", "settings"}` → `{"admin": {"username",
//!   "password"}}`, or `{"admin": null}` for a target without an admin login;
//! - `{"fixture": 1, "op": "create-user", "password", "profile", "settings"}` →
//!   `{"username"}`: a new user whose password is `password`.
//!
//! Passwords travel on stdin and stdout only; the fixture's stderr is passed through.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use async_trait::async_trait;
use clap::{Args, Subcommand};
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::exec::{confined_command, read_capped, ExecConfig, ProcessGroup};
use kv_rotator_rotators::registry::ProfileContext;
use kv_rotator_rotators::scrub::Scrubber;
use kv_rotator_rotators::testkit::{run_conformance, run_multi_password_conformance, ConformanceFixture};
use kv_rotator_rotators::Credential;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::targets::{Accounts, Targets};

/// `kv-rotator plugin …`.
#[derive(Debug, Args)]
pub struct PluginArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// Plugin commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run the conformance checks against a target profile, with users made by your fixture
    /// program (docs/plugins.md, "Testing a plugin"). Nothing touches Key Vault.
    Test(TestArgs),
}

/// Options of `kv-rotator plugin test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Configuration file (TOML) holding the profile; `KV_ROTATOR_*` environment variables
    /// override it.
    #[arg(long, short, env = "KV_ROTATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// The fixture: a program that creates test users on the target and gives its admin
    /// login, by absolute or relative path.
    #[arg(long)]
    pub fixture: PathBuf,
    /// An argument for the fixture (repeatable); never a secret (argv is visible to `ps`).
    #[arg(long = "fixture-arg", value_name = "ARG")]
    pub fixture_args: Vec<String>,
    /// Seconds one fixture call may take; then its process group is killed.
    #[arg(long, default_value_t = 60)]
    pub fixture_timeout_secs: u64,
    /// An environment variable passed to the fixture (repeatable); it gets only `PATH`,
    /// `LANG`, `HOME` and these.
    #[arg(long = "fixture-env", value_name = "NAME")]
    pub fixture_env: Vec<String>,
    /// The target profile to test (`[targets.NAME]`).
    pub profile: String,
}

/// Runs a plugin command; prints the checks, and fails if one did.
pub async fn run(args: PluginArgs) -> anyhow::Result<()> {
    match args.command {
        PluginCommand::Test(args) => test(args).await,
    }
}

async fn test(args: TestArgs) -> anyhow::Result<()> {
    let config = kv_rotator_config::load(args.config.as_deref())?;
    let Some(profile) = config.targets.get(&args.profile) else {
        let known: Vec<_> = config.targets.keys().map(String::as_str).collect();
        bail!("no [targets.{}] profile; the configuration has: {}", args.profile, known.join(", "));
    };
    let multi_password = match profile.strategy {
        Strategy::SingleUser => false,
        Strategy::MultiPassword => true,
        Strategy::AlternatingUsers => bail!(
            "plugin test runs the single-user and multi-password checks; alternating-users profiles are checked by \
             the testkit's run_twin_conformance from Rust"
        ),
    };
    let context = ProfileContext::new(&args.profile, &profile.password, profile.strategy);
    let rotator = profile.target.build(&context).map_err(|e| anyhow::anyhow!("targets.{}: {e}", args.profile))?;
    let settings = profile.target.settings::<ExecConfig>().map(|exec| exec.settings.clone()).unwrap_or_default();
    let mut fixture = ProgramFixture {
        program: args.fixture,
        args: args.fixture_args,
        env: args.fixture_env,
        timeout: Duration::from_secs(args.fixture_timeout_secs.max(1)),
        profile: args.profile.clone(),
        settings: serde_json::Value::Object(settings),
        // The checks change the passwords of the users the fixture names: only users the
        // profile may rotate, never its admin (`allow_admin_account` does not apply here).
        rule: Targets::default(),
        admin: None,
    };
    fixture.rule.insert(&args.profile, rotator.clone(), profile.admin.clone());
    fixture.rule.set_accounts(&args.profile, Accounts::new(&profile.accounts, false));
    fixture.admin = fixture.ask_admin().await?;
    println!(
        "testing targets.{} (kind {:?}, strategy {}) with fixture {}",
        args.profile,
        profile.target.name(),
        profile.strategy,
        fixture.program.display()
    );
    let result = if multi_password {
        run_multi_password_conformance(rotator.as_ref(), &mut fixture).await
    } else {
        run_conformance(rotator.as_ref(), &mut fixture).await
    };
    match result {
        Ok(report) => {
            for check in &report.passed {
                println!("ok       {check}");
            }
            for skipped in &report.skipped {
                println!("skipped  {skipped}");
            }
            println!("passed: {} checks passed, {} skipped", report.passed.len(), report.skipped.len());
            Ok(())
        }
        Err(failure) => {
            // The testkit's failures never hold a password (its last check is that).
            println!("FAILED   {failure}");
            bail!("targets.{} failed the conformance checks", args.profile)
        }
    }
}

/// The fixture program, run once per call: in its own process group (killed after each
/// call and on timeout), from `/`, with a cleared environment (`PATH`, `LANG`, `HOME` and
/// `--fixture-env` names), its stderr scrubbed of the passwords it was given or gave.
struct ProgramFixture {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<String>,
    timeout: Duration,
    profile: String,
    settings: serde_json::Value,
    /// Which users the checks may change: the profile's `accounts`, not its admin.
    rule: Targets,
    admin: Option<Credential>,
}

/// A fixture's reply to `admin`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminReply {
    admin: Option<LoginReply>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginReply {
    username: String,
    password: SecretString,
}

/// A fixture's reply to `create-user`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserReply {
    username: String,
}

/// A fixture request: the password borrowed, serialized straight into a wiped buffer.
#[derive(Serialize)]
struct FixtureRequest<'a> {
    fixture: u32,
    op: &'a str,
    profile: &'a str,
    settings: &'a serde_json::Value,
    password: Option<&'a str>,
}

/// The largest fixture reply, and the most of its stderr shown.
const MAX_REPLY: usize = 64 * 1024;
const MAX_STDERR: usize = 16 * 1024;

impl ProgramFixture {
    async fn ask_admin(&self) -> anyhow::Result<Option<Credential>> {
        let reply: AdminReply = self.call("admin", None).await?;
        Ok(reply.admin.map(|login| Credential::new(login.username, login.password)))
    }

    /// One run of the program: `op`'s request on stdin, its reply from stdout.
    async fn call<T: for<'de> Deserialize<'de>>(&self, op: &str, password: Option<&SecretString>) -> anyhow::Result<T> {
        let who = format!("fixture {} op {op}", self.program.display());
        let request = FixtureRequest {
            fixture: 1,
            op,
            profile: &self.profile,
            settings: &self.settings,
            password: password.map(|p| p.expose_secret()),
        };
        let mut buffer = Zeroizing::new(Vec::with_capacity(4096 + password.map_or(0, |p| 6 * p.expose_secret().len())));
        serde_json::to_writer(&mut *buffer, &request)?;
        buffer.push(b'\n');
        let env = ["PATH", "LANG", "HOME"].iter().map(|n| n.to_string()).chain(self.env.iter().cloned());
        let env = env.filter_map(|name| std::env::var_os(&name).map(|value| (name, value)));
        let mut child = confined_command(&self.program, &self.args, env)
            .spawn()
            .with_context(|| format!("{who}: cannot start it"))?;
        let mut group = ProcessGroup::of(&child);
        let (mut stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let run = async {
            let write = async {
                if let Some(stdin) = stdin.as_mut() {
                    // A fixture that exits without reading is judged by its reply.
                    let _ = stdin.write_all(&buffer).await;
                }
                drop(stdin.take());
            };
            // Stderr is read to its end (a fixture must not block on a full pipe), its
            // start kept; the reply stops at the cap.
            let (out, err) = (read_capped(stdout, MAX_REPLY, false), read_capped(stderr, MAX_STDERR, true));
            let ((), out, err, status) = tokio::join!(write, out, err, child.wait());
            anyhow::Ok((status?, out, err.bytes))
        };
        let finished = tokio::time::timeout(self.timeout, run).await;
        group.kill();
        let (status, out, err) = finished
            .map_err(|_| anyhow::anyhow!("{who}: no answer within {:?}; process group killed", self.timeout))??;
        let scrub = Scrubber::new(password.into_iter().chain(self.admin.iter().map(|a| &a.password)));
        let err = scrub.clean(String::from_utf8_lossy(&err).into_owned());
        if !err.trim().is_empty() {
            eprintln!("{who}, stderr: {}", err.trim_end());
        }
        if !status.success() {
            bail!("{who}: {status}");
        }
        if out.overflowed {
            bail!("{who}: reply larger than {MAX_REPLY} bytes");
        }
        // The reply may hold the admin password: the parse error names no value.
        serde_json::from_slice(&out.bytes).map_err(|e| {
            anyhow::anyhow!(
                "{who}: its reply is not the expected JSON (line {}, column {}: {:?}; docs/plugins.md, \"Testing a \
                 plugin\")",
                e.line(),
                e.column(),
                e.classify()
            )
        })
    }
}

#[async_trait]
impl ConformanceFixture for ProgramFixture {
    async fn create_user(&mut self, password: &SecretString) -> Result<String, String> {
        let reply: UserReply = self.call("create-user", Some(password)).await.map_err(|e| format!("{e:#}"))?;
        // The checks will change this user's password: it must be one the profile may
        // rotate, and not its admin (whose password lives in Key Vault).
        match self.rule.refuse_account(&self.profile, &reply.username) {
            Some(why) => Err(format!("the fixture's new user is refused before any change: {why}")),
            None => Ok(reply.username),
        }
    }

    fn admin(&self) -> Option<Credential> {
        self.admin.clone()
    }
}

impl std::fmt::Debug for ProgramFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgramFixture").field("program", &self.program).finish_non_exhaustive()
    }
}
