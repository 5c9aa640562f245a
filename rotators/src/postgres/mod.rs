//! PostgreSQL rotator, single-user strategy.
//!
//! - [`PostgresConfig`]: where the server is and how the connection is protected (a
//!   target profile with `kind = "postgres"`).
//! - [`tls`]: `sslmode` (`verify-full` by default), `sslrootcert`, `channel_binding`.
//! - [`auth_guard`]: refuses a server's request for a cleartext or MD5 password before
//!   any byte of it is sent (`allow_weak_auth` turns that off).
//! - [`PostgresRotator`]: the [`Rotator`]. `verify` opens a fresh connection as the
//!   user; `set_password` first tries the pending password (unless the engine says it is
//!   new, [`crate::SetPasswordRequest::pending_is_new`]), then logs in as the user with its
//!   current password, then each previous one, then as the admin, and runs
//!   `ALTER ROLE "<user>" PASSWORD '<SCRAM-SHA-256 verifier>'`; a fresh login with the new
//!   password ends it, and its response says so (`pending_verified`), so the engine's
//!   `test` step does not log in a second time. A fresh rotation costs two logins here.
//!
//! The verifier is computed client-side ([`postgres_protocol::password::scram_sha_256`]),
//! so the plaintext never reaches the server: not its log (`log_statement = 'all'`), not
//! `pg_stat_statements`, not `pg_stat_activity`. Logging in uses SCRAM, which never sends the password
//! either; a server asking for it in clear or as MD5 is refused (see [`auth_guard`]).
//! The verifier is still a secret (with it, a sniffed login's proof yields a login): over
//! anything but a trusted private network, use TLS.
//!
//! The admin needs `CREATEROLE` (and, from PostgreSQL 16, `ADMIN OPTION` on the user's
//! role) or to be a superuser; a user changing its own password needs no privilege.
//!
//! Error mapping: SQLSTATE `28P01` (invalid password) means "this login does not work" —
//! [`VerifyResponse::Rejected`], or the next login for `set_password`. `28000` (invalid
//! authorization specification: no `pg_hba.conf` entry for the worker's address, or the
//! role may not log in) is [`RotatorError::Permanent`]: no password logs in from here, so
//! nothing could prove which one the role has — treating it as "wrong password" would let
//! the admin change a password the worker can never verify. Refused
//! connections, timeouts, `57P03` (starting up) and other temporary conditions are
//! [`RotatorError::Transient`]. `42501` (insufficient privilege) and anything else the
//! server refuses is [`RotatorError::Permanent`], naming the login used. Every message is
//! scrubbed of the passwords and the verifier before it leaves this module.
//!
//! Size: ~35 lines of module doc, ~535 of code, ~65 of unit tests. The code is one
//! rotator: its configuration, the login chain and the SQLSTATE mapping of each failure;
//! TLS, the authentication guard and the twin strategy are apart.

pub mod auth_guard;
pub mod tls;
mod twin;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use self::auth_guard::{AuthGuard, GuardRefusal, GuardedTls};
pub use self::tls::{ChannelBinding, SslMode, TlsSetupError};

use crate::common::{after_change, already_set, changed_if_transient, find_cause, logins, no_login, pending_may_work};
use crate::scrub::Scrubber;
use crate::{
    PasswordPolicy, Rotator, RotatorError, RotatorResult, SetPasswordRequest, SetPasswordResponse, SyncTwinRequest,
    SyncTwinResponse, VerifyRequest, VerifyResponse,
};

/// Longest role name PostgreSQL keeps (`NAMEDATALEN - 1`); longer ones are silently
/// truncated by the server, so `ALTER ROLE` could hit another role.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Connection settings of a PostgreSQL target.
///
/// ```toml
/// [targets.orders-db]
/// kind = "postgres"
/// host = "orders.postgres.database.azure.com"
/// database = "orders"
/// sslmode = "verify-full"        # the default; also verify-ca, require, disable
/// # sslrootcert = "/etc/kv-rotator/orders-ca.pem"   # default: the system's CA store
/// # channel_binding = "prefer"   # the default; "require" refuses servers without it
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Host name or IP address (what `verify-full` checks the certificate against).
    pub host: String,
    /// TCP port. Default 5432.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database to connect to. Default `postgres`.
    #[serde(default = "default_database")]
    pub database: String,
    /// Limit, in seconds, on establishing a connection (TCP and authentication) and on
    /// each statement. Default 10; at least 1.
    #[serde(default = "default_connect_timeout", deserialize_with = "crate::common::positive_secs")]
    pub connect_timeout_secs: u64,
    /// Transport security, as libpq names it. Default `verify-full`.
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM file of the CA certificates that `verify-ca` and `verify-full` trust. Default:
    /// the system's store. Refused with `require` and `disable`, which check no chain.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Whether the login is bound to the TLS session (`SCRAM-SHA-256-PLUS`). Default:
    /// `prefer` (whenever the server offers it) with `verify-full`; `require` with
    /// `require` and `verify-ca`, where it is what stops a man in the middle, so it may
    /// not be weakened there; `disable` without TLS.
    #[serde(default)]
    pub channel_binding: Option<ChannelBinding>,
    /// Let the server ask for the password in clear text or as an MD5 hash. Default false:
    /// such a request ends the connection before the password is sent. Only with
    /// `verify-full`, where the server is known to be the right one.
    #[serde(default)]
    pub allow_weak_auth: bool,
    /// Shown in `pg_stat_activity`. Default `kv-rotator`.
    #[serde(default = "default_application_name")]
    pub application_name: String,
}

fn default_port() -> u16 {
    5432
}
fn default_database() -> String {
    "postgres".to_owned()
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_application_name() -> String {
    "kv-rotator".to_owned()
}

impl PostgresConfig {
    /// A configuration with the defaults for everything but the host.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: default_port(),
            database: default_database(),
            connect_timeout_secs: default_connect_timeout(),
            sslmode: SslMode::default(),
            sslrootcert: None,
            channel_binding: None,
            allow_weak_auth: false,
            application_name: default_application_name(),
        }
    }

    /// `channel_binding` as set, or the default for the `sslmode`.
    pub fn effective_channel_binding(&self) -> ChannelBinding {
        self.channel_binding.unwrap_or(match self.sslmode {
            SslMode::Disable => ChannelBinding::Disable,
            SslMode::Require | SslMode::VerifyCa => ChannelBinding::Require,
            SslMode::VerifyFull => ChannelBinding::Prefer,
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }
}

/// Rotates PostgreSQL role passwords in place (single-user strategy).
///
/// Every operation opens its own connections, so one rotator serves concurrent
/// rotations of different roles.
#[derive(Clone)]
pub struct PostgresRotator {
    cfg: PostgresConfig,
    policy: PasswordPolicy,
    /// Built once from `sslmode` and `sslrootcert`; `None` for `disable`.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for PostgresRotator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresRotator").field("cfg", &self.cfg).field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl PostgresRotator {
    /// A rotator for the server in `cfg`, generating passwords under `policy`. Fails when
    /// TLS cannot be set up as configured (an unreadable `sslrootcert`, no system CAs).
    pub fn new(cfg: PostgresConfig, policy: PasswordPolicy) -> Result<Self, TlsSetupError> {
        let tls = tls::client_config(&cfg)?;
        Ok(Self { cfg, policy, tls })
    }

    /// Its connection settings.
    pub fn config(&self) -> &PostgresConfig {
        &self.cfg
    }

    fn server(&self) -> String {
        format!("{}:{}", self.cfg.host, self.cfg.port)
    }

    /// Logs in; `Ok(None)` when the server refused these credentials.
    async fn login(
        &self,
        user: &str,
        password: &SecretString,
        who: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<Option<Client>> {
        if self.cfg.host.is_empty() {
            return Err(RotatorError::Permanent("postgres target has an empty host".to_owned()));
        }
        if password.expose_secret().contains('\0') {
            // Startup and SASL messages are NUL-terminated: such a password cannot be sent.
            return Err(RotatorError::Permanent(format!("the password of {who} contains a NUL byte")));
        }
        let mut pg = tokio_postgres::Config::new();
        pg.dbname(&self.cfg.database)
            .user(user)
            .password(password.expose_secret())
            .application_name(&self.cfg.application_name)
            // Notices could echo statements (a role set to client_min_messages = log
            // would send back ALTER ROLE with its verifier); they are dropped below too.
            .options("-c client_min_messages=warning")
            .channel_binding(self.cfg.effective_channel_binding().into());
        let context = format!("connecting to {} as {who}", self.server());
        // One limit on TCP, TLS and authentication together: a server that accepts and
        // then stays silent must not hang a rotation.
        let connected = match tokio::time::timeout(self.cfg.timeout(), self.connect(&mut pg)).await {
            Ok(result) => result,
            Err(_) => {
                return Err(RotatorError::Transient(format!(
                    "{context}: no answer within {}s",
                    self.cfg.connect_timeout_secs
                )))
            }
        };
        match connected {
            Ok(client) => Ok(Some(client)),
            Err(ConnectFailure::Socket(e)) => Err(RotatorError::Transient(format!("{context}: {e}"))),
            Err(ConnectFailure::Postgres(e)) => match classify(&e, &context, self.cfg.sslmode, scrub) {
                Classified::AuthRefused => Ok(None),
                Classified::Error(err) => Err(err),
            },
        }
    }

    /// Opens the socket, TLS as configured, and logs in, with every server message up to
    /// the end of authentication seen by the [`AuthGuard`].
    async fn connect(&self, pg: &mut tokio_postgres::Config) -> Result<Client, ConnectFailure> {
        let allow_weak = self.cfg.allow_weak_auth;
        let socket = tokio::net::TcpStream::connect((self.cfg.host.as_str(), self.cfg.port))
            .await
            .map_err(ConnectFailure::Socket)?;
        let _ = socket.set_nodelay(true);
        let (client, connection) = match &self.tls {
            None => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, connection) = pg.connect_raw(AuthGuard::new(socket, allow_weak), NoTls).await?;
                (client, tokio::spawn(drive(connection)))
            }
            Some(config) => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let mut make = MakeRustlsConnect::new(rustls::ClientConfig::clone(config));
                // Infallible: the host name is checked during the handshake.
                let Ok(connector) = <MakeRustlsConnect as MakeTlsConnect<tokio::net::TcpStream>>::make_tls_connect(
                    &mut make,
                    &self.cfg.host,
                );
                let (client, connection) = pg.connect_raw(socket, GuardedTls::new(connector, allow_weak)).await?;
                (client, tokio::spawn(drive(connection)))
            }
        };
        // The connection task drives the socket and ends when `client` drops; its error,
        // if any, surfaces through the client's calls.
        drop(connection);
        Ok(client)
    }

    /// Runs one statement (simple query protocol) with the operation timeout.
    async fn execute(&self, client: &Client, sql: &str, context: &str, scrub: &Scrubber) -> RotatorResult<()> {
        match tokio::time::timeout(self.cfg.timeout(), client.batch_execute(sql)).await {
            Err(_) => Err(RotatorError::Transient(format!(
                "{context}: no answer within {}s (the statement may still complete)",
                self.cfg.connect_timeout_secs
            ))),
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.statement_error(&e, context, scrub)),
        }
    }

    /// Runs one query (extended protocol: `params` are bound, never spliced into the
    /// text) with the operation timeout.
    async fn query(
        &self,
        client: &Client,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        context: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<Vec<tokio_postgres::Row>> {
        match tokio::time::timeout(self.cfg.timeout(), client.query(sql, params)).await {
            Err(_) => {
                Err(RotatorError::Transient(format!("{context}: no answer within {}s", self.cfg.connect_timeout_secs)))
            }
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(self.statement_error(&e, context, scrub)),
        }
    }

    fn statement_error(&self, e: &tokio_postgres::Error, context: &str, scrub: &Scrubber) -> RotatorError {
        match classify(e, context, self.cfg.sslmode, scrub) {
            // An authentication error after login: the server changed its mind; let
            // the engine retry rather than guess.
            Classified::AuthRefused => {
                RotatorError::Transient(format!("{context}: authorization failed after login ({})", describe(e, scrub)))
            }
            Classified::Error(err) => err,
        }
    }

    /// Whether `password` logs `user` in and gets a working session.
    async fn check(
        &self,
        user: &str,
        password: &SecretString,
        who: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<VerifyResponse> {
        match self.login(user, password, who, scrub).await? {
            None => Ok(VerifyResponse::Rejected),
            Some(client) => {
                let context = format!("checking the session of {who} on {}", self.server());
                self.execute(&client, "SELECT 1", &context, scrub).await?;
                Ok(VerifyResponse::Accepted)
            }
        }
    }
}

impl crate::registry::KindSettings for PostgresConfig {
    fn offers(&self, strategy: crate::common::Strategy) -> Result<(), std::borrow::Cow<'static, str>> {
        crate::registry::all_strategies_but(
            strategy,
            crate::common::Strategy::MultiPassword,
            "PostgreSQL keeps one password per role",
        )
    }

    fn build(
        &self,
        profile: &crate::registry::ProfileContext<'_>,
    ) -> Result<Arc<dyn Rotator>, crate::registry::BuildError> {
        Ok(Arc::new(PostgresRotator::new(self.clone(), profile.password.clone())?))
    }
}

#[async_trait]
impl Rotator for PostgresRotator {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn password_policy(&self) -> &PasswordPolicy {
        &self.policy
    }

    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        check_role_name(&req.username)?;
        if req.pending.expose_secret().is_empty() {
            return Err(RotatorError::Refused("the pending password is empty".to_owned()));
        }
        let verifier = postgres_protocol::password::scram_sha_256(req.pending.expose_secret().as_bytes());
        let scrub = Scrubber::for_request(&req, [verifier.as_str()]);
        let user = &req.username;
        // `role_sql` goes into the statement; `role` into messages, with control
        // characters escaped (a role name comes from a tag: it may hold a line break or
        // a terminal escape sequence).
        let (role_sql, role) = (quote_ident(user), shown(user));

        // Idempotency: a retry after a crash between ALTER and finish lands here (not a
        // password this attempt just journaled: nobody can have set it).
        let pending_who = format!("{role} with the pending password");
        if pending_may_work(&req)
            && self.check(user, &req.pending, &pending_who, &scrub).await? == VerifyResponse::Accepted
        {
            return Ok(already_set());
        }

        let mut refused = Vec::new();
        for login in logins(&req, &role, shown) {
            let who = login.who;
            let Some(client) = self.login(login.user, login.password, &who, &scrub).await? else {
                refused.push(who);
                continue;
            };
            // The verifier is base64 and `$:` only: nothing to escape inside '…'.
            debug_assert!(!verifier.contains(['\'', '\\']));
            let sql = format!("ALTER ROLE {role_sql} PASSWORD '{verifier}'");
            let context = format!("changing the password of role {role} on {} as {who}", self.server());
            self.execute(&client, &sql, &context, &scrub).await.map_err(changed_if_transient)?;
            drop(client);

            // A fresh connection proves the new password works end to end.
            let after_who = format!("{role} with the new password");
            let after = self.check(user, &req.pending, &after_who, &scrub).await;
            return after_change(after, login.outcome, || {
                format!(
                    "the password of role {role} was changed as {who}, but the new password does not log in on {} yet \
                     (replication lag or a pooler; if it persists, check pg_hba.conf, the role's LOGIN and VALID UNTIL)",
                    self.server()
                )
            });
        }
        Err(no_login(&format!("role {role}"), &self.server(), &refused, Vec::new(), req.admin.is_some()))
    }

    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        check_role_name(&req.username)?;
        let scrub = Scrubber::new([&req.password]);
        let who = shown(&req.username);
        self.check(&req.username, &req.password, &who, &scrub).await
    }

    async fn sync_twin(&self, req: SyncTwinRequest) -> RotatorResult<SyncTwinResponse> {
        twin::sync(self, req).await
    }

    async fn check_admin(&self, admin: &crate::Credential) -> RotatorResult<crate::AdminCheck> {
        crate::common::admin_logs_in(self, admin).await
    }
}

/// Drives a connection until its client drops. Notices and notifications are dropped:
/// polled as a future, tokio-postgres would log each notice at INFO, and a notice can
/// carry the statement it is about (`ALTER ROLE … PASSWORD '<verifier>'`).
async fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
        if message.is_err() {
            // Surfaces through the client's calls.
            break;
        }
    }
}

/// Why [`PostgresRotator::connect`] got no session.
enum ConnectFailure {
    /// The TCP connection (name resolution, refused, unreachable).
    Socket(std::io::Error),
    /// TLS, authentication or the server's answer.
    Postgres(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for ConnectFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        ConnectFailure::Postgres(e)
    }
}

/// `name` as a PostgreSQL quoted identifier: in double quotes, inner double quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `name` for messages: quoted as the engine and the other rotators quote, with control
/// characters escaped, so a hostile name cannot forge lines or drive a terminal.
fn shown(name: &str) -> String {
    format!("{name:?}")
}

fn check_role_name(name: &str) -> RotatorResult<()> {
    if name.is_empty() {
        return Err(RotatorError::Permanent("the role name is empty".to_owned()));
    }
    if name.contains('\0') {
        return Err(RotatorError::Permanent("the role name contains a NUL byte".to_owned()));
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(RotatorError::Permanent(format!(
            "role name {} is longer than {MAX_IDENTIFIER_BYTES} bytes: PostgreSQL would truncate it",
            shown(name)
        )));
    }
    Ok(())
}

enum Classified {
    /// The server refused these credentials.
    AuthRefused,
    Error(RotatorError),
}

/// SQLSTATE classes and codes a later retry can get past.
fn is_transient_sqlstate(code: &str) -> bool {
    const CLASSES: [&str; 5] = [
        "08", // connection exception
        "40", // transaction rollback: serialization failure, deadlock
        "53", // insufficient resources: too many connections, out of memory, disk full
        "57", // operator intervention: 57P03 cannot connect now, shutdowns, query canceled
        "58", // system error: I/O error
    ];
    CLASSES.iter().any(|class| code.starts_with(class)) || code == "55P03" // lock not available
}

fn classify(e: &tokio_postgres::Error, context: &str, sslmode: SslMode, scrub: &Scrubber) -> Classified {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let text = describe(e, scrub);
        return Classified::Error(match code {
            "28P01" => return Classified::AuthRefused,
            // invalid_authorization_specification: no pg_hba.conf entry for this address,
            // or the role may not log in. No password can log in here, so no login can
            // prove which one the role has: a configuration error, not a wrong password.
            "28000" => RotatorError::Permanent(format!(
                "{context}: {text}; kv-rotator must be able to log in as the role from its own address \
                 (pg_hba.conf) to prove which password works"
            )),
            "42501" => RotatorError::Permanent(format!("{context}: insufficient privilege: {text}")),
            // invalid_parameter_value: what password-check hooks (passwordcheck, credcheck)
            // raise for a password they refuse; nothing was changed.
            "22023" => RotatorError::Refused(format!("{context}: {text}")),
            "42704" => RotatorError::Permanent(format!("{context}: {text}")),
            "3D000" => RotatorError::Permanent(format!("{context}: {text}")),
            c if is_transient_sqlstate(c) => RotatorError::Transient(format!("{context}: {text}")),
            _ => RotatorError::Permanent(format!("{context}: {text}")),
        });
    }
    let text = describe(e, scrub);
    if find_cause::<GuardRefusal>(e).is_some() {
        return Classified::Error(RotatorError::Permanent(format!("{context}: {text}")));
    }
    if find_cause::<rustls::Error>(e).is_some_and(tls::is_certificate_error) {
        return Classified::Error(RotatorError::Permanent(format!(
            "{context}: the server's certificate was refused under sslmode {:?}: {text}",
            sslmode.as_str()
        )));
    }
    if text.contains("server does not support TLS") {
        return Classified::Error(RotatorError::Permanent(format!(
            "{context}: {text}; sslmode {:?} needs TLS (ssl = on on the server)",
            sslmode.as_str()
        )));
    }
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if io || e.is_closed() || text.starts_with("timeout") {
        return Classified::Error(RotatorError::Transient(format!("{context}: {text}")));
    }
    if text.starts_with("authentication error") || text.starts_with("invalid configuration") {
        // e.g. pg_hba.conf asks for a method tokio-postgres does not speak (GSSAPI, cert).
        return Classified::Error(RotatorError::Permanent(format!("{context}: {text}")));
    }
    Classified::Error(RotatorError::Transient(format!("{context}: {text}")))
}

/// The error and its causes on one line, scrubbed.
fn describe(e: &tokio_postgres::Error, scrub: &Scrubber) -> String {
    let text = match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(hint) = db.hint() {
                text.push_str(&format!(" (hint: {hint})"));
            }
            text
        }
        None => std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |s| s.source())
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": "),
    };
    scrub.clean(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_ident_doubles_double_quotes() {
        assert_eq!(quote_ident("alice"), "\"alice\"");
        assert_eq!(quote_ident("a \"b\" c"), "\"a \"\"b\"\" c\"");
        assert_eq!(quote_ident("x\"; DROP ROLE y; --"), "\"x\"\"; DROP ROLE y; --\"");
        assert_eq!(quote_ident("O'Brien"), "\"O'Brien\"");
    }

    #[test]
    fn role_names_postgres_would_mangle_are_refused() {
        assert!(check_role_name("").is_err());
        assert!(check_role_name("a\0b").is_err());
        assert!(check_role_name(&"r".repeat(63)).is_ok());
        let err = check_role_name(&"r".repeat(64)).unwrap_err();
        assert!(!err.is_transient());
        assert!(err.to_string().contains("longer than 63 bytes"), "{err}");
    }

    #[test]
    fn config_defaults() {
        let cfg: PostgresConfig = serde_json::from_str(r#"{"host": "db"}"#).unwrap();
        assert_eq!(cfg, PostgresConfig::new("db"));
        assert_eq!(cfg.port, 5432);
        assert_eq!(cfg.database, "postgres");
        assert_eq!(cfg.connect_timeout_secs, 10);
        assert_eq!(cfg.application_name, "kv-rotator");
        // Secure unless told otherwise: verified TLS, channel binding when offered, no
        // cleartext or MD5 password.
        assert_eq!(cfg.sslmode, SslMode::VerifyFull);
        assert_eq!(cfg.sslrootcert, None);
        assert_eq!(cfg.channel_binding, None);
        assert_eq!(cfg.effective_channel_binding(), ChannelBinding::Prefer);
        assert!(!cfg.allow_weak_auth);
    }

    #[test]
    fn config_rejects_unknown_keys_downgradable_modes_and_zero_timeout() {
        let err = |json: &str| serde_json::from_str::<PostgresConfig>(json).unwrap_err().to_string();
        let e = err(r#"{"host": "db", "sslmode": "disable", "prot": 1}"#);
        assert!(e.contains("unknown field `prot`"), "{e}");
        let e = err(r#"{"host": "db", "sslmode": "prefer"}"#);
        assert!(e.contains("sslmode \"prefer\" is refused"), "{e}");
        let e = err(r#"{"host": "db", "sslmode": "bogus"}"#);
        assert!(e.contains("unknown sslmode \"bogus\""), "{e}");
        let e = err(r#"{"host": "db", "channel_binding": "always"}"#);
        assert!(e.contains("unknown variant `always`"), "{e}");
        let e = err(r#"{"host": "db", "sslmode": "disable", "connect_timeout_secs": 0}"#);
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn transient_sqlstates() {
        for code in ["57P03", "53300", "08006", "40001", "40P01", "55P03", "57014", "58030"] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["42501", "42704", "3D000", "28P01", "XX000", "22023", "22P02"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
    }
}
