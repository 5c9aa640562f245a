//! `serve` and `rotate` as operators run them, over a [`DevSite`], with the `[admin.auth]`
//! a suite picks ([`Served`]); and a program squatting the admin port ([`Squatter`]).

#![allow(dead_code)] // not every suite uses every helper

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::response::IntoResponse;
use serde_json::{json, Value};

use super::devsite::DevSite;
use super::proc::{Proc, ADMIN_LISTEN_ENV};

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
}

impl Served {
    pub async fn new(admin_auth: &str, env: &[(&str, &str)]) -> Served {
        let site = DevSite::start().await;
        let config = site.dir.path().join("kv-rotator.toml");
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let env = env.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        let served =
            Served { site, config, admin_auth: admin_auth.to_owned(), env, admin: any_port, webhook: any_port };
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
                 [engine]\ninitial_backoff_ms = 10\nmax_backoff_ms = 20\nmax_attempts = 2\n{}",
                self.site.vault_toml(),
                self.site.htpasswd_target_toml()
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
        let out = Command::new(BIN)
            .arg("rotate")
            .arg("--config")
            .arg(&self.config)
            .args(["--output", "text"])
            .args(args)
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .env("KVR_LEASE_SETTLE_MS", "0")
            .env_remove(ADMIN_LISTEN_ENV)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Squatter { addr, seen }
    }

    /// The requests so far, as `METHOD URI Some("authorization")` or `... None`.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}
