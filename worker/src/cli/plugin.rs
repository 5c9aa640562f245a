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
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use async_trait::async_trait;
use clap::{Args, Subcommand};
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::exec::ExecConfig;
use kv_rotator_rotators::registry::ProfileContext;
use kv_rotator_rotators::testkit::{run_conformance, run_multi_password_conformance, ConformanceFixture};
use kv_rotator_rotators::Credential;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    /// Seconds one fixture call may take.
    #[arg(long, default_value_t = 60)]
    pub fixture_timeout_secs: u64,
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
    let context = ProfileContext::new(&args.profile, &profile.password, profile.strategy);
    let rotator = profile.target.build(&context).map_err(|e| anyhow::anyhow!("targets.{}: {e}", args.profile))?;
    let settings = profile.target.settings::<ExecConfig>().map(|exec| exec.settings.clone()).unwrap_or_default();
    let mut fixture = ProgramFixture {
        program: args.fixture,
        args: args.fixture_args,
        timeout: Duration::from_secs(args.fixture_timeout_secs.max(1)),
        profile: args.profile.clone(),
        settings: serde_json::Value::Object(settings),
        admin: None,
    };
    fixture.admin = fixture.ask_admin().await?;
    println!(
        "testing targets.{} (kind {:?}, strategy {}) with fixture {}",
        args.profile,
        profile.target.name(),
        profile.strategy,
        fixture.program.display()
    );
    let result = match profile.strategy {
        Strategy::SingleUser => run_conformance(rotator.as_ref(), &mut fixture).await,
        Strategy::MultiPassword => run_multi_password_conformance(rotator.as_ref(), &mut fixture).await,
        Strategy::AlternatingUsers => bail!(
            "plugin test runs the single-user and multi-password checks; alternating-users profiles are checked by \
             the testkit's run_twin_conformance from Rust"
        ),
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

/// The fixture program, run once per call.
struct ProgramFixture {
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    profile: String,
    settings: serde_json::Value,
    admin: Option<Credential>,
}

/// A fixture's reply to `admin`.
#[derive(Deserialize)]
struct AdminReply {
    admin: Option<LoginReply>,
}

#[derive(Deserialize)]
struct LoginReply {
    username: String,
    password: SecretString,
}

/// A fixture's reply to `create-user`.
#[derive(Deserialize)]
struct UserReply {
    username: String,
}

/// The largest fixture reply read.
const MAX_REPLY: u64 = 64 * 1024;

impl ProgramFixture {
    async fn ask_admin(&self) -> anyhow::Result<Option<Credential>> {
        let reply: AdminReply = self.call("admin", None).await?;
        Ok(reply.admin.map(|login| Credential { username: login.username, password: login.password }))
    }

    /// One run of the program: `op`'s request on stdin, its reply from stdout.
    async fn call<T: for<'de> Deserialize<'de>>(&self, op: &str, password: Option<&SecretString>) -> anyhow::Result<T> {
        let request = serde_json::json!({
            "fixture": 1,
            "op": op,
            "profile": self.profile,
            "settings": self.settings,
            "password": password.map(|p| p.expose_secret()),
        });
        let request = Zeroizing::new(serde_json::to_vec(&request)?);
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("fixture {}: cannot start it", self.program.display()))?;
        let run = async {
            let mut stdin = child.stdin.take().context("no stdin")?;
            stdin.write_all(&request).await?;
            stdin.write_all(b"\n").await?;
            drop(stdin);
            let mut out = Zeroizing::new(Vec::new());
            child.stdout.take().context("no stdout")?.take(MAX_REPLY).read_to_end(&mut out).await?;
            let status = child.wait().await?;
            anyhow::Ok((status, out))
        };
        let (status, out) = tokio::time::timeout(self.timeout, run).await.with_context(|| {
            format!("fixture {} op {op}: no answer within {:?}", self.program.display(), self.timeout)
        })??;
        if !status.success() {
            bail!("fixture {} op {op}: {status}", self.program.display());
        }
        // The reply may hold the admin password: the parse error names no value.
        serde_json::from_slice(&out).map_err(|e| {
            anyhow::anyhow!(
                "fixture {} op {op}: its reply is not the expected JSON (line {}, column {}: {:?})",
                self.program.display(),
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
        Ok(reply.username)
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
