//! `serve` and `rotate` as operators run them, over a [`DevSite`], with the `[admin.auth]`
//! a suite picks ([`Served`]); a program squatting the admin port ([`Squatter`]); and a
//! service killed mid-job, a squatter taking its port ([`Served::killed_mid_job`]).

#![allow(dead_code)] // not every suite uses every helper

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use serde_json::{json, Value};

use super::devsite::DevSite;
use super::proc::{Proc, ADMIN_LISTEN_ENV};
use kv_rotator_rotators::PasswordPolicy;

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");

/// A configuration file for `serve` and `rotate`: the dev site's vault and htpasswd
/// target, the sweeper off, quick retries, and `[admin.auth]` as given.
pub struct Served {
    pub site: DevSite,
    pub config: PathBuf,
    /// The body of the `[admin.auth]` table.
    pub admin_auth: String,
    /// Variables both `serve` and `rotate` get.
    pub env: Vec<(String, String)>,
    /// Port 0 until [`Served::listening`] learns the ports the service took.
    pub admin: SocketAddr,
    pub webhook: SocketAddr,
    /// More of the configuration, after the rest (target profiles).
    pub extra_toml: String,
}

/// What [`Served::killed_mid_job`] saw.
pub struct KilledMidJob {
    /// Whether `rotate` exited 0.
    pub ok: bool,
    /// `rotate`'s stdout and stderr.
    pub output: String,
    /// The job `rotate` said it followed.
    pub job: String,
    /// What took the admin port once the service was killed.
    pub squatter: Squatter,
}

impl Served {
    pub async fn new(admin_auth: &str, env: &[(&str, &str)]) -> Served {
        let site = DevSite::start().await;
        let config = site.dir.path().join("kv-rotator.toml");
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let env = env.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        let served = Served {
            site,
            config,
            admin_auth: admin_auth.to_owned(),
            env,
            admin: any_port,
            webhook: any_port,
            extra_toml: String::new(),
        };
        served.write_config();
        served
    }

    pub fn write_config(&self) {
        let (webhook, admin, admin_auth) = (self.webhook, self.admin, &self.admin_auth);
        std::fs::write(
            &self.config,
            format!(
                "{}[webhook]\nlisten = \"{webhook}\"\nauth = {{ mode = \"none\" }}\n\
                 [admin]\nlisten = \"{admin}\"\n[admin.auth]\n{admin_auth}\n\
                 [sweeper]\nenabled = false\n\
                 [engine]\ninitial_backoff_ms = 10\nmax_backoff_ms = 20\nmax_attempts = 2\n{}{}",
                self.site.vault_toml(),
                self.site.htpasswd_target_toml(),
                self.extra_toml,
            ),
        )
        .unwrap();
    }

    /// Learns the ports `serve` took (port 0 in the file: the OS picked them, no port was
    /// bound, dropped and bound again) and writes them into the file, where `rotate`
    /// finds the service as an operator's would.
    pub async fn listening(&mut self, serve: &mut Proc) {
        self.webhook = serve.logged_addr("webhook_addr").await;
        self.admin = serve.logged_addr("admin_addr").await;
        self.write_config();
    }

    pub fn serve(&self) -> Proc {
        Proc::spawn(
            Command::new(BIN)
                .args(["serve", "--config"])
                .arg(&self.config)
                .envs(self.env.iter().map(|(name, value)| (name, value)))
                .env("KVR_LEASE_SETTLE_MS", "0")
                .env_remove(ADMIN_LISTEN_ENV),
        )
    }

    /// `rotate --output text` with `args`: whether it succeeded, its stdout and stderr.
    pub fn rotate(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.rotate_command(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    fn rotate_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("rotate")
            .arg("--config")
            .arg(&self.config)
            .args(["--output", "text"])
            .args(args)
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .env("KVR_LEASE_SETTLE_MS", "0")
            .env_remove(ADMIN_LISTEN_ENV);
        command
    }

    /// A managed secret `secret` whose rotation never ends while the test runs: its target
    /// (profile `stall`, PostgreSQL) is a port that accepts connections and never answers,
    /// and the rotator waits 300 s for it. The port's listener, to keep while it runs.
    pub async fn stalled_secret(&mut self, secret: &str) -> std::net::TcpListener {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        self.extra_toml = format!(
            "[targets.stall]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nport = {port}\nsslmode = \"disable\"\n\
             connect_timeout_secs = 300\naccounts = [\"stalled\"]\n"
        );
        self.write_config();
        self.site.managed_secret(secret, "stall", "stalled", &PasswordPolicy::default().generate()).await;
        listener
    }

    /// `rotate` of `secret` (a [`Served::stalled_secret`]) through `serve`: once `rotate`
    /// says which job it follows, `serve` is killed and a [`Squatter`] takes its admin
    /// port, answering any job with `secret` rotated; then `rotate`'s exit.
    pub async fn killed_mid_job(&self, serve: Proc, secret: &str) -> KilledMidJob {
        let mut rotate = Proc::spawn(&mut self.rotate_command(&[secret, "--reason", "INC-13"]));
        let deadline = Instant::now() + Duration::from_secs(60);
        let job = loop {
            let output = rotate.output();
            if let Some(job) = output.split("(job ").nth(1).and_then(|rest| rest.split(')').next()) {
                break job.to_owned();
            }
            assert!(rotate.exited().is_none(), "rotate ended before following a job:\n{output}");
            assert!(Instant::now() < deadline, "rotate followed no job within 60 s:\n{output}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let fake_job = json!({"id": job, "done": true,
            "secrets": [{"secret": secret, "state": "rotated", "ok": true, "detail": "rotated a -> b"}]});
        serve.sigkill();
        let squatter = Squatter::start_on(self.admin, fake_job).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = rotate.exited() {
                break status;
            }
            assert!(Instant::now() < deadline, "rotate did not end within 60 s:\n{}", rotate.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        KilledMidJob { ok: status.success(), output: rotate.output(), job, squatter }
    }
}

impl KilledMidJob {
    /// What `rotate` must do whatever its credential: ask what took the port to prove itself
    /// and nothing else (no `Authorization` sent), believe none of its answers, and exit
    /// non-zero saying it lost the service, naming the job.
    pub fn assert_the_squatter_got_nothing(&self) {
        let (seen, output) = (self.squatter.seen(), &self.output);
        assert!(!seen.is_empty(), "rotate never reached the squatter:\n{output}");
        for request in &seen {
            assert!(request.starts_with("GET /api/service-proof/") && request.ends_with(" None"), "{seen:?}");
        }
        assert!(!self.ok, "rotate took the squatter's answer:\n{output}");
        assert!(output.contains(&format!("lost the service while waiting for job {}", self.job)), "{output}");
        assert!(output.contains("did not prove that it knows") && output.contains("no token was sent"), "{output}");
        assert!(!output.contains("Nothing was rotated"), "the job did start:\n{output}");
        assert!(!output.contains("rotated a -> b"), "{output}");
    }
}

/// A program that took the admin port: it records every request (method, URI and
/// `Authorization` header), answers the service proof with a wrong one and anything else
/// with `fake_job` (202).
pub struct Squatter {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Squatter {
    pub async fn start(fake_job: Value) -> Squatter {
        Squatter::start_on("127.0.0.1:0".parse().unwrap(), fake_job).await
    }

    /// [`Squatter::start`] on `addr`.
    pub async fn start_on(addr: SocketAddr, fake_job: Value) -> Squatter {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (record, fake_job) = (record.clone(), fake_job.clone());
            async move {
                let authorization =
                    request.headers().get("authorization").map(|v| v.to_str().unwrap_or("?").to_owned());
                record.lock().unwrap().push(format!("{} {} {authorization:?}", request.method(), request.uri()));
                if request.uri().path().starts_with("/api/service-proof/") {
                    return axum::Json(json!({"proof": "00".repeat(32)})).into_response();
                }
                (axum::http::StatusCode::ACCEPTED, axum::Json(fake_job)).into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the squatter's port");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Squatter { addr, seen }
    }

    /// The requests so far, as `METHOD URI Some("authorization")` or `... None`.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}
