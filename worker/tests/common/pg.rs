//! The machine's PostgreSQL (127.0.0.1:5432) for the suites that rotate real roles:
//! superuser access, login checks, throwaway roles in `kvr_scram` (SCRAM, not trust;
//! `scripts/setup-postgres.sh` sets that up) dropped at the end, and a TCP proxy that
//! can take "the target" down and bring it back.

#![allow(dead_code)] // not every suite uses every helper

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub async fn superuser() -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (scripts/setup-postgres.sh)");
    tokio::spawn(conn);
    client
}

/// Whether `password` logs in as `role`, directly (not through a proxy).
pub async fn logs_in(role: &str, password: &SecretString) -> bool {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1").port(5432).user(role).password(password.expose_secret()).dbname("postgres");
    match cfg.connect(tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client.simple_query("SELECT 1").await.is_ok()
        }
        Err(_) => false,
    }
}

/// Login roles with random passwords, dropped on drop.
pub struct Roles(pub Vec<(String, SecretString)>);

impl Roles {
    /// `n` roles named `{prefix}_{random}_{i}`.
    pub async fn create(prefix: &str, n: usize) -> Roles {
        let su = superuser().await;
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let mut roles = Roles(Vec::new());
        for i in 0..n {
            let role = format!("{prefix}_{tag}_{i}");
            let password = kv_rotator_rotators::PasswordPolicy::default().generate();
            su.batch_execute(&format!(
                "CREATE ROLE {role} LOGIN IN ROLE kvr_scram PASSWORD '{}'",
                password.expose_secret()
            ))
            .await
            .expect("create role (scripts/setup-postgres.sh creates kvr_scram)");
            roles.0.push((role.clone(), password));
            assert!(
                !logs_in(&role, &SecretString::from("wrong".to_owned())).await,
                "pg_hba.conf trusts {role}: run scripts/setup-postgres.sh"
            );
        }
        roles
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let names: Vec<String> = self.0.iter().map(|(name, _)| name.clone()).collect();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let su = superuser().await;
                for name in names {
                    let _ = su.batch_execute(&format!("DROP ROLE IF EXISTS {name}")).await;
                }
            })
        })
        .join();
    }
}

/// A TCP proxy to PostgreSQL whose port can be closed ("the target is down": new
/// connections are refused, open ones cut) and reopened. It counts the connections it
/// accepted: one per login attempt.
#[allow(dead_code)] // not every suite takes the target down
pub struct Proxy {
    pub port: u16,
    tasks: Arc<Mutex<JoinSet<()>>>,
    accepted: Arc<AtomicUsize>,
}

#[allow(dead_code)]
impl Proxy {
    pub async fn start() -> Proxy {
        // The first listener is kept, not dropped and bound again (another process could
        // take the port in between); only `up` after `down` binds the port a second time.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy { port, tasks: Arc::new(Mutex::new(JoinSet::new())), accepted: Arc::default() };
        proxy.forward(listener);
        proxy
    }

    /// Opens the port again (after [`Self::down`]) and forwards every connection to
    /// 127.0.0.1:5432.
    pub async fn up(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("rebind the proxy port");
        self.forward(listener);
    }

    fn forward(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let inner = self.tasks.clone();
        let accepted = self.accepted.clone();
        tasks.lock().unwrap().spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                inner.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes the port and cuts every open connection.
    pub fn down(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}
