//! The dev vault: a local, TLS-serving implementation of the Azure Key Vault secrets REST
//! API (api-version 2025-07-01), for `kv-rotator dev`, the demo and every test.
//!
//! It aims to answer as the service does, so that the official SDK works against it
//! unchanged, bearer challenge included; `tests/devvault_conformance.rs` replays real
//! recorded traffic against it. Parts:
//!
//! - [`DevVault`] / [`DevVaultOptions`]: start a server on a port, reach it, stop it.
//! - `tls`: a throwaway CA and a server certificate for `{vault}.vault.azure.net`.
//! - `http`: authentication, api-version, routing, paging and the service's headers.
//! - `state`: secrets, versions, soft delete, backup blobs, validation limits.
//! - `errors`: [`DevVaultError`], and the REST API's error answers with their sources.
//! - `faults`: the service's rate limit ([`RateLimit`], on by default) and injected
//!   faults ([`Faults`]: latency, 429/500/503 per operation, dropped connections,
//!   fail-the-Nth-call), changeable while running with [`DevVault::set_faults`];
//!   [`DevVault::stats`] counts what was injected.
//! - `persist`: optional state file ([`DevVaultOptions::state_file`]), mode 0600,
//!   values unencrypted.
//!
//! Clients connect to `https://{vault}.vault.azure.net:{port}/`, trusting
//! [`DevVault::ca_certificate_pem`] and resolving the host to [`DevVault::local_addr`]
//! ([`DevVault::http_client`] does both). Any non-empty bearer token is accepted;
//! [`DEV_TOKEN`] is the one kv-rotator's dev credential presents.
//!
//! Unlike the service, every operation completes at once (no seconds-long window in
//! which a deleted secret is not yet listed as deleted); state is in memory unless a
//! state file is given; backup blobs are our own unencrypted format.

mod errors;
mod faults;
mod http;
mod persist;
mod state;
mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

pub use errors::DevVaultError;
pub use faults::{
    parse_fail_nth, DevVaultStats, ErrorRule, FaultSyntaxError, Faults, Injected, InvalidFaults, Operation, RateLimit,
};
pub use state::{SeedError, SeedSecret, StateFileError};

/// The bearer token kv-rotator's dev credential presents. The dev vault accepts any
/// non-empty token; this one only makes logs and captures recognisable.
pub const DEV_TOKEN: &str = "kv-rotator-dev-token";

/// The api-version the dev vault implements.
pub const API_VERSION: &str = http::API_VERSION;

/// How to start a [`DevVault`].
#[derive(Debug, Clone)]
pub struct DevVaultOptions {
    /// First label of the host name, `{vault_name}.vault.azure.net`. Default `devvault`.
    pub vault_name: String,
    /// Where to listen. Default `127.0.0.1:0` (a free port).
    pub bind: SocketAddr,
    /// Tenant named in the 401 challenge. Default the all-zero GUID.
    pub tenant_id: String,
    /// The service's throttle; `None` turns it off (benchmarks). Default 2,000
    /// transactions per 10 seconds.
    pub rate_limit: Option<RateLimit>,
    /// Faults injected from the start; [`DevVault::set_faults`] changes them later.
    pub faults: Faults,
    /// Keep the state in this file (created 0600; values UNENCRYPTED) and load it at
    /// start. `None`: in memory only.
    pub state_file: Option<PathBuf>,
}

impl Default for DevVaultOptions {
    fn default() -> Self {
        Self {
            vault_name: "devvault".to_string(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            tenant_id: "00000000-0000-0000-0000-000000000000".to_string(),
            rate_limit: Some(RateLimit::default()),
            faults: Faults::default(),
            state_file: None,
        }
    }
}

/// A running dev vault. Dropping it stops the server too; [`DevVault::shutdown`] also
/// waits for it to finish.
pub struct DevVault {
    host: String,
    local_addr: SocketAddr,
    ca_pem: String,
    shared: Arc<http::Shared>,
    handle: axum_server::Handle<SocketAddr>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl fmt::Debug for DevVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevVault").field("host", &self.host).field("local_addr", &self.local_addr).finish()
    }
}

impl DevVault {
    /// Generates the certificates, binds `opts.bind` and serves in a background task.
    pub async fn start(opts: DevVaultOptions) -> Result<DevVault, DevVaultError> {
        // Test builds: a test process's log events go to the leak scanner from here on.
        #[cfg(feature = "leak-ledger")]
        kv_rotator_leakscan::ensure_log_capture();
        let label = opts.vault_name.to_ascii_lowercase();
        let label_ok = (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !label_ok {
            return Err(DevVaultError::InvalidOptions(format!("vault name {:?} is not a DNS label", opts.vault_name)));
        }
        if opts.tenant_id.is_empty() || !opts.tenant_id.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
            return Err(DevVaultError::InvalidOptions(format!("tenant id {:?}", opts.tenant_id)));
        }
        if let Some(limit) = opts.rate_limit {
            if limit.transactions == 0 || limit.per.is_zero() {
                return Err(DevVaultError::InvalidOptions(format!("rate limit {limit:?} admits nothing")));
            }
        }
        opts.faults.validate().map_err(|e| DevVaultError::InvalidOptions(e.to_string()))?;
        let host = format!("{label}.vault.azure.net");
        let tls = tls::generate(&host)?;
        let (state_file, vault) = match &opts.state_file {
            Some(path) => {
                let (file, vault) = persist::StateFile::open(path, host.clone())?;
                (Some(file), vault)
            }
            None => (None, state::Vault::new(host.clone())),
        };

        let bind_error = |source| DevVaultError::Bind { addr: opts.bind, source };
        let listener = std::net::TcpListener::bind(opts.bind).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;

        let shared = Arc::new(http::Shared {
            vault: Mutex::new(vault),
            host: host.clone(),
            port: local_addr.port(),
            tenant_id: opts.tenant_id,
            gate: faults::Gate::new(opts.rate_limit, opts.faults),
            state_file,
        });
        let app = http::router(shared.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(tls.server_config),
        )
        .map_err(bind_error)?
        .handle(handle.clone());
        let task = tokio::spawn(server.serve(app));
        Ok(DevVault { host, local_addr, ca_pem: tls.ca_pem, shared, handle, task: Some(task) })
    }

    /// `https://{vault_name}.vault.azure.net:{port}/`, the vault URL clients use.
    pub fn endpoint(&self) -> url::Url {
        let text = format!("https://{}:{}/", self.host, self.local_addr.port());
        // Both parts were validated in `start`: a DNS label and a port number.
        url::Url::parse(&text).expect("the dev vault endpoint is a valid URL")
    }

    /// `{vault_name}.vault.azure.net`, the host in ids; clients resolve it to
    /// [`local_addr`](Self::local_addr).
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// PEM of the root certificate clients must trust.
    pub fn ca_certificate_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A reqwest client that trusts only the dev vault's CA, resolves its host to
    /// [`local_addr`](Self::local_addr) and follows no redirects (as the SDK's transport
    /// should not). Send it to [`endpoint`](Self::endpoint) URLs.
    pub fn http_client(&self) -> Result<reqwest::Client, DevVaultError> {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?;
        Ok(reqwest::Client::builder()
            .tls_certs_only([ca])
            .resolve(&self.host, self.local_addr)
            .redirect(reqwest::redirect::Policy::none())
            .build()?)
    }

    /// Puts a secret straight into the state, for what the REST API cannot make:
    /// certificate-backed (`managed`) secrets, fixed times, soft-deleted ones with a given
    /// deletion date. Returns the version id. Refuses invalid or taken names.
    pub fn seed(&self, secret: SeedSecret) -> Result<String, DevVaultError> {
        let mut vault = self.shared.vault();
        let id = vault.seed(secret).map_err(DevVaultError::Seed)?;
        if let Some(file) = &self.shared.state_file {
            file.save(&vault)?;
        }
        Ok(id)
    }

    /// Replaces the injected faults; the fail-the-Nth-call count restarts at 0.
    pub fn set_faults(&self, faults: Faults) -> Result<(), DevVaultError> {
        faults.validate().map_err(|e| DevVaultError::InvalidOptions(e.to_string()))?;
        self.shared.gate.set_faults(faults);
        Ok(())
    }

    /// Requests served, throttled, failed and dropped on purpose since the start.
    pub fn stats(&self) -> DevVaultStats {
        self.shared.gate.stats()
    }

    /// Stops accepting connections, lets open requests finish (up to a second) and waits
    /// for the server task.
    pub async fn shutdown(mut self) {
        self.handle.graceful_shutdown(Some(Duration::from_secs(1)));
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DevVault {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.handle.shutdown();
        }
    }
}
