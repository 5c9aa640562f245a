//! PostgreSQL rotator, single-user strategy.
//!
//! - [`PostgresConfig`]: where the server is (a target profile with `kind = "postgres"`).
//! - [`SslMode`]: only `disable` for now; TLS is a later issue.
//! - [`PostgresRotator`]: the [`Rotator`]. `verify` opens a fresh connection as the
//!   user; `set_password` logs in as the user with its current password, then each
//!   previous one, then as the admin, and runs
//!   `ALTER ROLE "<user>" PASSWORD '<SCRAM-SHA-256 verifier>'`.
//!
//! The verifier is computed client-side ([`postgres_protocol::password::scram_sha_256`]),
//! so the plaintext never reaches the server: not its log (`log_statement = 'all'`), not
//! `pg_stat_statements`, not `pg_stat_activity`. Logging in uses SCRAM too, which never
//! sends the password either (with `scram-sha-256` or `md5` in `pg_hba.conf`).
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

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use tokio_postgres::{Client, NoTls};

use crate::{
    PasswordPolicy, Rotator, RotatorError, RotatorResult, SetPasswordOutcome, SetPasswordRequest, SetPasswordResponse,
    VerifyRequest, VerifyResponse,
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
/// sslmode = "disable"   # required; the only value accepted for now
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Host name or IP address; a path starting with `/` is a Unix socket directory.
    pub host: String,
    /// TCP port. Default 5432.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database to connect to. Default `postgres`.
    #[serde(default = "default_database")]
    pub database: String,
    /// Limit, in seconds, on establishing a connection (TCP and authentication) and on
    /// each statement. Default 10; at least 1.
    #[serde(default = "default_connect_timeout", deserialize_with = "positive_secs")]
    pub connect_timeout_secs: u64,
    /// Transport security. Required, so that running without TLS is a visible choice.
    pub sslmode: SslMode,
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

fn positive_secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let secs = u64::deserialize(d)?;
    if secs == 0 {
        return Err(serde::de::Error::custom("connect_timeout_secs must be at least 1"));
    }
    Ok(secs)
}

impl PostgresConfig {
    /// A configuration with the defaults for everything but the host.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: default_port(),
            database: default_database(),
            connect_timeout_secs: default_connect_timeout(),
            sslmode: SslMode::Disable,
            application_name: default_application_name(),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }
}

/// How the connection is protected, named as libpq names it.
///
/// Only `disable` exists for now: TLS to PostgreSQL is a later issue. The other libpq
/// values are refused with a message saying so, rather than silently connecting in the
/// clear. SCRAM authentication does not send the password, but the connection (and the
/// verifier sent by `ALTER ROLE`) is readable and hijackable on the network path: keep
/// the worker and the server on a private network until TLS lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
}

impl<'de> Deserialize<'de> for SslMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        match value.as_str() {
            "disable" => Ok(SslMode::Disable),
            "allow" | "prefer" | "require" | "verify-ca" | "verify-full" => Err(serde::de::Error::custom(format!(
                "sslmode {value:?} is not supported yet: only \"disable\" is accepted for now (TLS to PostgreSQL is a later issue)"
            ))),
            _ => Err(serde::de::Error::custom(format!(
                "unknown sslmode {value:?}: only \"disable\" is accepted for now (TLS to PostgreSQL is a later issue)"
            ))),
        }
    }
}

/// Rotates PostgreSQL role passwords in place (single-user strategy).
///
/// Every operation opens its own connections, so one rotator serves concurrent
/// rotations of different roles.
#[derive(Debug, Clone)]
pub struct PostgresRotator {
    cfg: PostgresConfig,
    policy: PasswordPolicy,
}

impl PostgresRotator {
    /// A rotator for the server in `cfg`, generating passwords under `policy`.
    pub fn new(cfg: PostgresConfig, policy: PasswordPolicy) -> Self {
        Self { cfg, policy }
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
        pg.host(&self.cfg.host)
            .port(self.cfg.port)
            .dbname(&self.cfg.database)
            .user(user)
            .password(password.expose_secret())
            .application_name(&self.cfg.application_name)
            .connect_timeout(self.cfg.timeout());
        let context = format!("connecting to {} as {who}", self.server());
        // tokio-postgres's connect_timeout covers the TCP connect only; a server that
        // accepts and then stays silent must not hang a rotation.
        let connected = match tokio::time::timeout(self.cfg.timeout(), pg.connect(NoTls)).await {
            Ok(result) => result,
            Err(_) => {
                return Err(RotatorError::Transient(format!(
                    "{context}: no answer within {}s",
                    self.cfg.connect_timeout_secs
                )))
            }
        };
        match connected {
            Ok((client, connection)) => {
                // The connection future drives the socket; it ends when `client` drops.
                // Its error, if any, surfaces through the client's calls.
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(Some(client))
            }
            Err(e) => match classify(&e, &context, scrub) {
                Classified::AuthRefused => Ok(None),
                Classified::Error(err) => Err(err),
            },
        }
    }

    /// Runs one statement (simple query protocol) with the operation timeout.
    async fn execute(&self, client: &Client, sql: &str, context: &str, scrub: &Scrubber) -> RotatorResult<()> {
        match tokio::time::timeout(self.cfg.timeout(), client.batch_execute(sql)).await {
            Err(_) => Err(RotatorError::Transient(format!(
                "{context}: no answer within {}s (the statement may still complete)",
                self.cfg.connect_timeout_secs
            ))),
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => match classify(&e, context, scrub) {
                // An authentication error after login: the server changed its mind; let
                // the engine retry rather than guess.
                Classified::AuthRefused => Err(RotatorError::Transient(format!(
                    "{context}: authorization failed after login ({})",
                    describe(&e, scrub)
                ))),
                Classified::Error(err) => Err(err),
            },
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
        let scrub = Scrubber::for_request(&req, &verifier);
        let user = &req.username;
        let role = quote_ident(user);

        // Idempotency: a retry after a crash between ALTER and finish lands here.
        let pending_who = format!("{role} with the pending password");
        if self.check(user, &req.pending, &pending_who, &scrub).await? == VerifyResponse::Accepted {
            return Ok(SetPasswordResponse { outcome: SetPasswordOutcome::AlreadySet });
        }

        let mut logins: Vec<(&str, &SecretString, String, SetPasswordOutcome)> = vec![(
            user,
            &req.current,
            format!("{role} with its current password"),
            SetPasswordOutcome::ChangedWithCurrent,
        )];
        for (i, previous) in req.previous.iter().enumerate() {
            logins.push((
                user,
                previous,
                format!("{role} with previous password #{}", i + 1),
                SetPasswordOutcome::ChangedWithPrevious,
            ));
        }
        if let Some(admin) = &req.admin {
            logins.push((
                &admin.username,
                &admin.password,
                format!("admin {}", quote_ident(&admin.username)),
                SetPasswordOutcome::ChangedWithAdmin,
            ));
        }

        let mut tried = Vec::new();
        let mut seen: Vec<(&str, &str)> = vec![(user.as_str(), req.pending.expose_secret())];
        for (login_user, password, who, outcome) in logins {
            // The same password twice is one more refused login for nothing.
            if password.expose_secret().is_empty() || seen.contains(&(login_user, password.expose_secret())) {
                continue;
            }
            seen.push((login_user, password.expose_secret()));
            let Some(client) = self.login(login_user, password, &who, &scrub).await? else {
                tried.push(who);
                continue;
            };
            // The verifier is base64 and `$:` only: nothing to escape inside '…'.
            debug_assert!(!verifier.contains(['\'', '\\']));
            let sql = format!("ALTER ROLE {role} PASSWORD '{verifier}'");
            let context = format!("changing the password of role {role} on {} as {who}", self.server());
            // A transient failure once ALTER was sent (timeout, connection lost) leaves
            // it unknown whether the change was applied: the target may have it.
            self.execute(&client, &sql, &context, &scrub).await.map_err(|e| match e {
                RotatorError::Transient(message) => RotatorError::NotYetVisible(message),
                other => other,
            })?;
            drop(client);

            // A fresh connection proves the new password works end to end.
            let after_who = format!("{role} with the new password");
            // Rejected here is not a refusal: ALTER succeeded, so the change is made and
            // may only not show yet (a standby behind the balanced host, a pooler's own
            // auth file). The engine retries, knows the target changed, and never
            // replaces this password.
            let after = self.check(user, &req.pending, &after_who, &scrub).await.map_err(|e| match e {
                // ALTER succeeded: whatever keeps the check from answering, the target changed.
                RotatorError::Transient(message) => RotatorError::NotYetVisible(message),
                other => other,
            });
            return match after? {
                VerifyResponse::Accepted => Ok(SetPasswordResponse { outcome }),
                VerifyResponse::Rejected => Err(RotatorError::NotYetVisible(format!(
                    "the password of role {role} was changed as {who}, but the new password does not log in on {} yet \
                     (replication lag or a pooler; if it persists, check pg_hba.conf, the role's LOGIN and VALID UNTIL)",
                    self.server()
                ))),
            };
        }
        let admin_note = if req.admin.is_none() { "; no admin credential configured" } else { "" };
        Err(RotatorError::Permanent(format!(
            "no known login could change the password of role {role} on {}: refused: {}{admin_note}",
            self.server(),
            tried.join(", ")
        )))
    }

    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        check_role_name(&req.username)?;
        let scrub = Scrubber::new(vec![req.password.expose_secret().to_owned()]);
        let who = quote_ident(&req.username);
        self.check(&req.username, &req.password, &who, &scrub).await
    }
}

/// `name` as a PostgreSQL quoted identifier: in double quotes, inner double quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
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
            quote_ident(name)
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

fn classify(e: &tokio_postgres::Error, context: &str, scrub: &Scrubber) -> Classified {
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

/// Removes known secrets from text that leaves the module. tokio-postgres and the server
/// do not echo passwords, but an error message is no place to rely on that.
struct Scrubber {
    secrets: Vec<String>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} secrets)", self.secrets.len())
    }
}

impl Scrubber {
    fn new(mut secrets: Vec<String>) -> Self {
        secrets.retain(|s| !s.is_empty());
        // Longest first, so a secret containing another is removed whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    fn for_request(req: &SetPasswordRequest, verifier: &str) -> Self {
        let mut secrets =
            vec![req.pending.expose_secret().to_owned(), req.current.expose_secret().to_owned(), verifier.to_owned()];
        secrets.extend(req.previous.iter().map(|p| p.expose_secret().to_owned()));
        if let Some(admin) = &req.admin {
            secrets.push(admin.password.expose_secret().to_owned());
        }
        Self::new(secrets)
    }

    fn clean(&self, mut text: String) -> String {
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "[REDACTED]");
            }
        }
        text
    }
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
        let cfg: PostgresConfig = serde_json::from_str(r#"{"host": "db", "sslmode": "disable"}"#).unwrap();
        assert_eq!(cfg, PostgresConfig::new("db"));
        assert_eq!(cfg.port, 5432);
        assert_eq!(cfg.database, "postgres");
        assert_eq!(cfg.connect_timeout_secs, 10);
        assert_eq!(cfg.application_name, "kv-rotator");
        assert_eq!(cfg.sslmode, SslMode::Disable);
    }

    #[test]
    fn config_rejects_unknown_keys_tls_modes_and_zero_timeout() {
        let err = |json: &str| serde_json::from_str::<PostgresConfig>(json).unwrap_err().to_string();
        let e = err(r#"{"host": "db", "sslmode": "disable", "prot": 1}"#);
        assert!(e.contains("unknown field `prot`"), "{e}");
        let e = err(r#"{"host": "db", "sslmode": "require"}"#);
        assert!(e.contains("sslmode \"require\" is not supported yet") && e.contains("later issue"), "{e}");
        let e = err(r#"{"host": "db", "sslmode": "bogus"}"#);
        assert!(e.contains("unknown sslmode \"bogus\""), "{e}");
        let e = err(r#"{"host": "db"}"#);
        assert!(e.contains("missing field `sslmode`"), "{e}");
        let e = err(r#"{"host": "db", "sslmode": "disable", "connect_timeout_secs": 0}"#);
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn scrubber_removes_every_secret() {
        let s = Scrubber::new(vec!["hunter2hunter2".into(), String::new(), "hunter2".into()]);
        assert_eq!(s.clean("a hunter2hunter2 b hunter2 c".into()), "a [REDACTED] b [REDACTED] c");
        assert!(!format!("{s:?}").contains("hunter2"));
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
