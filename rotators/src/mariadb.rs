//! MariaDB rotator, single-user strategy (MySQL is not supported: `kind = "mysql"` is
//! refused when the configuration loads).
//!
//! - [`MariaDbConfig`]: where the server is and how the connection is protected (a target
//!   profile with `kind = "mariadb"`).
//! - [`MariaDbRotator`]: the [`Rotator`]. `verify` opens a fresh connection as the user;
//!   `set_password` tries the pending password first (unless the engine just journaled
//!   it: `pending_is_new`), then logs in as the user with its current password, then each
//!   previous one, then as the admin, and changes the password with the first login that
//!   can change every host entry of the account; a fresh login with the new password ends
//!   it (`pending_verified`).
//!
//! **Only hashes are sent.** The new password's `mysql_native_password` hash
//! (`*` and the upper-case hex of SHA1(SHA1(password))) is computed here, and the server
//! is given `SET PASSWORD = '*…'` (the user itself) or
//! `ALTER USER `app`@`%` IDENTIFIED BY PASSWORD '*…', `app`@`localhost` IDENTIFIED BY PASSWORD '*…'`
//! (the admin), so the plain password never reaches the general query log, the slow log,
//! the binary log or `SHOW PROCESSLIST`. Accounts on another plugin (`ed25519`,
//! `caching_sha2_password`, `unix_socket`, `pam`…), or with alternatives
//! (`IDENTIFIED VIA mysql_native_password … OR unix_socket`, which `ALTER USER` would
//! drop), are refused by name. A server whose `strict_password_validation` refuses hashes
//! (a password validation plugin is loaded) is a permanent error: kv-rotator does not
//! fall back to the plain password.
//!
//! **Logins.** A `mysql_native_password` login sends a challenge response derived from
//! the password (SHA1(password) masked with the server's challenge and the stored hash):
//! not the password, but whoever holds the stored hash and sees the exchange recovers
//! SHA1(password), which logs in. And mysql_async answers any plugin the server names,
//! `caching_sha2_password`'s full authentication included (the password itself, RSA-
//! encrypted with a key the server sends). Hence: `tls = "disable"` only for a loopback
//! host ([`crate::tls::plaintext_only_on_loopback`]), where the logins go through
//! `auth_guard`, which cuts the connection before mysql_async sees a request for any
//! other plugin; anywhere else `verify-full`, whose certificate check proves the server
//! is the target.
//!
//! **Every host entry or none.** An account is all the rows of `mysql.user` with its
//! name (`'app'@'%'`, `'app'@'localhost'`, …); consumers log in through whichever
//! matches their address, so all of them change together. The admin reads them
//! (`SELECT … FROM mysql.user`, which needs `SELECT` on it) and changes them in one
//! `ALTER USER`. MariaDB does not make that statement atomic: an entry that fails (one
//! dropped meanwhile) leaves the others changed. Then the rotator restores every entry
//! it changed to the hash it read before, checks that it did, and reports the failure
//! as nothing changed; if the restore fails too, the error names the entries left on
//! each password ([`RotatorError::NotYetVisible`]: some entries may have the pending
//! password, and the next attempt rolls them all forward). The user itself can change only
//! the entry it logged in through (`SET PASSWORD`), so it does so only when it can see
//! that this is the account's only entry: that takes
//! `GRANT SELECT (User, Host) ON mysql.user TO 'app'@'%'` (no password hash is readable
//! through it). Otherwise the next login — the admin — is used.
//!
//! **A login is proven.** After logging in, the rotator reads the account's own
//! `SHOW GRANTS FOR CURRENT_USER()`, which MariaDB prints with the stored hash, and
//! requires it to be the hash of the password it logged in with. A proxy or a fake
//! server that answers for the target cannot produce it, so "this password works" is
//! never taken from a server that did not check it (a server that does not print the hash,
//! MySQL or a fake claiming to be, proves nothing: a permanent error). The row read is the
//! account's own `GRANT … ON *.* TO …`, wherever it comes (a granted role's row may be
//! first).
//!
//! **Already set?** A first login with the pending password proves only the host entry
//! the worker's address matches. `AlreadySet` needs that entry to be the account's only
//! one (seen by the user), or the admin to have read every entry's hash as the pending
//! one; otherwise the admin sets every entry (rolling forward: the pending password is
//! journaled and in use), and any failure on that path is
//! [`RotatorError::NotYetVisible`], so the engine keeps the pending password.
//!
//! **TLS** (`tls`, [`TlsMode`]): `verify-full` (the default) or `disable` (loopback hosts
//! only, refused at construction for any other host); trust anchors
//! from `tls_ca_file` or the system's store; `tls_server_name` when the certificate does
//! not carry `host`. `verify-ca` is refused for this kind: mysql_async's "any name"
//! check no longer recognises rustls's name error. A refused certificate and a server
//! without TLS under `verify-full` are permanent errors.
//!
//! Error mapping: `1045` (access denied) is "this login does not work" —
//! [`VerifyResponse::Rejected`], or the next login for `set_password`. A locked account
//! (`4151`), an expired password (`1862`) and a host blocked for connection errors
//! (`1129`) are [`RotatorError::Permanent`]: no login can prove which password the
//! account has. Refused connections, timeouts, too many connections and lock timeouts
//! are [`RotatorError::Transient`]; a missing privilege and anything else the server
//! refuses is permanent, naming the login used. Every message is scrubbed of the
//! passwords and their hashes before it leaves this module.
//!
//! mysql_async is built without its `tracing` feature, so it logs nothing (with it, its
//! spans would carry every statement, hashes included).
//!
//! Size: ~85 lines of module doc, ~810 of code, ~100 of unit tests. The code is one
//! sequence (log in, prove it, read the host entries, change all, restore) and the error
//! mapping of its steps; what stands alone is apart (`auth_guard`, `twin`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod auth_guard;
mod twin;

use crate::common::{
    after_change, already_set, chain_text, changed_if_transient, find_cause, logins, no_login, pending_may_work,
    request_hashes,
};
use crate::scrub::Scrubber;
pub use crate::tls::{TlsMode, TlsSetupError};
use crate::{
    PasswordPolicy, Rotator, RotatorError, RotatorResult, SetPasswordOutcome, SetPasswordRequest, SetPasswordResponse,
    SyncTwinRequest, SyncTwinResponse, VerifyRequest, VerifyResponse,
};

/// Longest user name MariaDB keeps (MySQL: 32).
const MAX_USER_NAME_CHARS: usize = 80;

/// The plugin whose hash kv-rotator computes.
const NATIVE_PLUGIN: &str = "mysql_native_password";

/// Connection settings of a MariaDB target (MariaDB servers only: `kind = "mysql"` is
/// refused, naming why).
///
/// ```toml
/// [targets.shop-db]
/// kind = "mariadb"
/// host = "shop-db.internal.example"
/// tls = "verify-full"            # the default; or "disable"
/// # tls_ca_file = "/etc/kv-rotator/shop-ca.pem"   # default: the system's CA store
/// # tls_server_name = "shop-db.example"           # default: host
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MariaDbConfig {
    /// Host name or IP address (what `verify-full` checks the certificate against).
    pub host: String,
    /// TCP port. Default 3306.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Limit, in seconds, on establishing a connection (TCP, TLS, authentication) and on
    /// each statement. Default 10; at least 1.
    #[serde(default = "default_connect_timeout", deserialize_with = "crate::common::positive_secs")]
    pub connect_timeout_secs: u64,
    /// Transport security. Default `verify-full`.
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file of the CA certificates `verify-full` trusts. Default: the system's
    /// store; refused with `disable`.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not `host` (the server
    /// reached by an IP address or an alias). Default: `host`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

fn default_port() -> u16 {
    3306
}
fn default_connect_timeout() -> u64 {
    10
}

impl MariaDbConfig {
    /// A configuration with the defaults for everything but the host.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: default_port(),
            connect_timeout_secs: default_connect_timeout(),
            tls: TlsMode::default(),
            tls_ca_file: None,
            tls_server_name: None,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }
}

/// Rotates MariaDB account passwords in place (single-user strategy); see the
/// [module docs](self).
///
/// Every operation opens its own connections, so one rotator serves concurrent
/// rotations of different accounts.
#[derive(Clone)]
pub struct MariaDbRotator {
    cfg: MariaDbConfig,
    policy: PasswordPolicy,
    /// Built once from `tls` and `tls_ca_file`; `None` for `disable`.
    ssl: Option<SslOpts>,
    /// Test hook: a host entry that does not exist, added to every admin change.
    phantom_host: Option<String>,
}

impl fmt::Debug for MariaDbRotator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MariaDbRotator").field("cfg", &self.cfg).field("policy", &self.policy).finish_non_exhaustive()
    }
}

/// What mysql_async's query methods return.
type DriverFuture<'c, T> = std::pin::Pin<Box<dyn std::future::Future<Output = mysql_async::Result<T>> + Send + 'c>>;

/// A logged-in connection whose password was proven (see the module docs).
struct Session {
    conn: Conn,
    /// The account's entry authenticates by `mysql_native_password` alone, with this
    /// login's password.
    native_only: bool,
}

/// One row of `mysql.user` for the account.
struct Entry {
    host: String,
    plugin: String,
    /// The stored hash, to restore after a partial failure.
    auth: Zeroizing<String>,
}

impl MariaDbRotator {
    /// A rotator for the server in `cfg`, generating passwords under `policy`. Fails when
    /// TLS cannot be set up as configured (a `tls_ca_file` that cannot be read, no system
    /// CAs, `verify-ca` without a CA file).
    pub fn new(cfg: MariaDbConfig, policy: PasswordPolicy) -> Result<Self, TlsSetupError> {
        crate::tls::check_ca_file(cfg.tls, cfg.tls_ca_file.as_deref())?;
        let ssl =
            match cfg.tls {
                TlsMode::Disable if cfg.tls_server_name.is_some() => return Err(TlsSetupError::Combination(
                    "tls_server_name with tls = \"disable\": no certificate is checked, so the name would only look \
                     like protection"
                        .to_owned(),
                )),
                TlsMode::Disable => {
                    crate::tls::plaintext_only_on_loopback("tls", &cfg.host, "tls_ca_file")?;
                    None
                }
                // mysql_async's own "skip the name" check no longer matches rustls's error,
                // so it would refuse every name anyway; a name to check is the safer answer.
                TlsMode::VerifyCa => {
                    return Err(TlsSetupError::Combination(
                        "tls = \"verify-ca\" is not available for kind \"mariadb\": use \"verify-full\", with \
                     tls_server_name = the name in the server's certificate when host is an address or alias it does \
                     not carry"
                            .to_owned(),
                    ))
                }
                TlsMode::VerifyFull => {
                    let anchors = crate::tls::trust_anchors(cfg.tls_ca_file.as_deref(), "tls_ca_file")?;
                    Some(
                        SslOpts::default()
                            .with_root_certs(anchors.into_iter().map(|cert| cert.to_vec().into()).collect())
                            .with_disable_built_in_roots(true)
                            .with_danger_tls_hostname_override(cfg.tls_server_name.clone()),
                    )
                }
            };
        Ok(Self { cfg, policy, ssl, phantom_host: None })
    }

    /// Its connection settings.
    pub fn config(&self) -> &MariaDbConfig {
        &self.cfg
    }

    /// Test hook, not for production: every admin change also names `host`, an entry of
    /// the account that does not exist, so the `ALTER USER` fails part-way (as when an
    /// entry is dropped between reading and changing) and the restore path runs.
    #[doc(hidden)]
    pub fn with_phantom_host_entry(mut self, host: impl Into<String>) -> Self {
        self.phantom_host = Some(host.into());
        self
    }

    fn server(&self) -> String {
        format!("{}:{}", escape_controls(&self.cfg.host), self.cfg.port)
    }

    fn timeout_message(&self, context: &str, tail: &str) -> String {
        format!("{context}: no answer within {}s{tail}", self.cfg.connect_timeout_secs)
    }

    /// The driver's options; `socket`: the guard's relay to connect to instead of `host`.
    fn opts(&self, user: &str, password: &SecretString, socket: Option<&std::path::Path>) -> Opts {
        OptsBuilder::default()
            .ip_or_hostname(self.cfg.host.clone())
            .socket(socket.map(|path| path.to_string_lossy().into_owned()))
            .tcp_port(self.cfg.port)
            .user(Some(user))
            .pass(Some(password.expose_secret()))
            // Never switch to the Unix socket the server names: it would bypass TLS.
            .prefer_socket(false)
            .ssl_opts(self.ssl.clone())
            .stmt_cache_size(0)
            .enable_cleartext_plugin(false)
            .into()
    }

    /// Logs in and proves the password; `Ok(None)` when the server refused it.
    async fn login(
        &self,
        user: &str,
        password: &SecretString,
        who: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<Option<Session>> {
        if self.cfg.host.is_empty() {
            return Err(RotatorError::Permanent("mariadb target has an empty host".to_owned()));
        }
        let context = format!("connecting to {} as {who}", self.server());
        let attempt = async {
            if self.ssl.is_some() {
                return Ok((Conn::new(self.opts(user, password, None)).await, None));
            }
            // Plaintext (loopback only): through the guard, which refuses every plugin
            // but mysql_native_password before mysql_async can answer it.
            let tcp = tokio::net::TcpStream::connect((self.cfg.host.as_str(), self.cfg.port)).await?;
            let relay = auth_guard::connect(tcp, self.cfg.timeout())?;
            Ok::<_, std::io::Error>((
                Conn::new(self.opts(user, password, Some(&relay.socket))).await,
                Some(relay.verdict),
            ))
        };
        let mut conn = match tokio::time::timeout(self.cfg.timeout(), attempt).await {
            Err(_) => return Err(RotatorError::Transient(self.timeout_message(&context, ""))),
            Ok(Err(e)) => return Err(RotatorError::Transient(format!("{context}: {}", scrub.clean(e.to_string())))),
            Ok(Ok((Ok(conn), _))) => conn,
            Ok(Ok((Err(e), verdict))) => {
                if let Some(why) = verdict.and_then(|v| v.refusal()) {
                    return Err(RotatorError::Permanent(format!("{context}: {}", scrub.clean(why))));
                }
                return match classify_login(&e, &context, self.cfg.tls, scrub) {
                    Classified::AuthRefused => Ok(None),
                    Classified::Error(err) => Err(err),
                };
            }
        };
        let context = format!("reading the grants of {who} on {}", self.server());
        let rows: Vec<String> =
            self.run(&mut conn, &context, scrub, |c| c.query("SHOW GRANTS FOR CURRENT_USER()")).await?;
        let rows: Vec<Zeroizing<String>> = rows.into_iter().map(Zeroizing::new).collect();
        let hash = native_hash(password);
        let quoted = Zeroizing::new(format!("'{}'", hash.as_str()));
        // The account's own row (`GRANT … ON *.* TO …`), whichever place it has among the
        // others (a granted role's row may come first). Required always: a proxy or a fake
        // server claiming to be MySQL (which never prints the hash) proves nothing.
        let own = rows.iter().find(|row| is_global_grant(row));
        let Some(own) = own.filter(|row| row.contains(quoted.as_str())) else {
            disconnect(conn).await;
            return Err(RotatorError::Permanent(format!(
                "{context}: the server let {who} in, but SHOW GRANTS does not show this password's stored hash \
                 (another plugin, MySQL rather than MariaDB, or not the real server: a proxy answering for it); \
                 kv-rotator cannot prove which password works"
            )));
        };
        let native_only = own.contains(&format!(" IDENTIFIED BY PASSWORD {}", quoted.as_str()));
        Ok(Some(Session { conn, native_only }))
    }

    /// Runs `op` with the statement timeout, classifying its error as a statement's.
    async fn run<'c, T, F>(&self, conn: &'c mut Conn, context: &str, scrub: &Scrubber, op: F) -> RotatorResult<T>
    where
        F: FnOnce(&'c mut Conn) -> DriverFuture<'c, T>,
        T: Send + 'c,
    {
        match tokio::time::timeout(self.cfg.timeout(), op(conn)).await {
            Err(_) => {
                Err(RotatorError::Transient(self.timeout_message(context, " (the statement may still complete)")))
            }
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(classify_statement(&e, context, self.cfg.tls, scrub)),
        }
    }

    /// Whether `password` logs `user` in (proven, see [`MariaDbRotator::login`]).
    async fn check(
        &self,
        user: &str,
        password: &SecretString,
        who: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<VerifyResponse> {
        match self.login(user, password, who, scrub).await? {
            None => Ok(VerifyResponse::Rejected),
            Some(session) => {
                disconnect(session.conn).await;
                Ok(VerifyResponse::Accepted)
            }
        }
    }

    /// The account's entries, read through `conn`; `Ok(None)` when this login may not read
    /// them.
    async fn entries(
        &self,
        conn: &mut Conn,
        user: &str,
        full: bool,
        context: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<Option<Vec<Entry>>> {
        let sql = if full {
            "SELECT Host, plugin, authentication_string FROM mysql.user WHERE User = ? AND is_role <> 'Y' ORDER BY Host"
        } else {
            "SELECT Host, '', '' FROM mysql.user WHERE User = ? ORDER BY Host"
        };
        let params = (user.to_owned(),);
        let rows: Vec<(String, String, String)> =
            match tokio::time::timeout(self.cfg.timeout(), conn.exec(sql, params)).await {
                Err(_) => return Err(RotatorError::Transient(self.timeout_message(context, ""))),
                Ok(Ok(rows)) => rows,
                Ok(Err(mysql_async::Error::Server(e))) if is_privilege_code(e.code) => return Ok(None),
                Ok(Err(e)) => return Err(classify_statement(&e, context, self.cfg.tls, scrub)),
            };
        Ok(Some(
            rows.into_iter().map(|(host, plugin, auth)| Entry { host, plugin, auth: Zeroizing::new(auth) }).collect(),
        ))
    }

    /// Changes the password as the user itself, if it can change every entry (it has
    /// only the one it logged in through, and can see so). `Ok(None)`: this login cannot,
    /// with why.
    async fn change_as_self(
        &self,
        session: &mut Session,
        user: &str,
        hash: &str,
        who: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<Option<String>> {
        let context = format!("listing the host entries of {} on {} as {who}", shown(user), self.server());
        let Some(entries) = self.entries(&mut session.conn, user, false, &context, scrub).await? else {
            return Ok(Some(format!(
                "{who} cannot see the account's host entries (GRANT SELECT (User, Host) ON mysql.user to it)"
            )));
        };
        if entries.len() != 1 {
            let hosts: Vec<String> = entries.iter().map(|e| shown(&e.host)).collect();
            return Ok(Some(format!(
                "{who} can change only its own host entry, and the account has {}: {}",
                entries.len(),
                hosts.join(", ")
            )));
        }
        if !session.native_only {
            return Ok(Some(format!("{who}'s entry does not authenticate by {NATIVE_PLUGIN} alone")));
        }
        let context = format!("changing the password of {} on {} as {who}", shown(user), self.server());
        let sql = Zeroizing::new(format!("SET PASSWORD = '{hash}'"));
        self.run(&mut session.conn, &context, scrub, |c| c.query_drop(sql.as_str()))
            .await
            .map_err(changed_if_transient)?;
        Ok(None)
    }

    /// Changes every entry of the account in one `ALTER USER`, as the admin. For a fresh
    /// change (`repair` false) it restores the entries if the statement fails part-way.
    /// With `repair` (the pending password already logs in through some entry, so it is
    /// journaled and in use), it rolls forward: `Ok(false)` without a statement when
    /// every entry already has the pending hash, and no restore on failure.
    /// `Ok(true)`: the statement ran.
    async fn change_as_admin(
        &self,
        conn: &mut Conn,
        user: &str,
        hash: &str,
        who: &str,
        scrub: &Scrubber,
        repair: bool,
    ) -> RotatorResult<bool> {
        let account = shown(user);
        let context = format!("reading the host entries of {account} on {} as {who}", self.server());
        let Some(entries) = self.entries(conn, user, true, &context, scrub).await? else {
            return Err(RotatorError::Permanent(format!(
                "{context}: insufficient privilege (the admin needs SELECT on mysql.user, and CREATE USER)"
            )));
        };
        if entries.is_empty() {
            return Err(RotatorError::Permanent(format!("{context}: the account does not exist")));
        }
        if let Some(other) = entries.iter().find(|e| e.plugin != NATIVE_PLUGIN) {
            return Err(RotatorError::Permanent(format!(
                "{context}: entry {account}@{} uses plugin {:?}; kv-rotator changes only {NATIVE_PLUGIN} accounts, \
                 whose hash it can send (another plugin would need the plain password in the statement, or would be \
                 replaced)",
                shown(&other.host),
                other.plugin
            )));
        }
        // `IDENTIFIED VIA mysql_native_password … OR unix_socket` shows as the first method
        // alone in mysql.user, and ALTER USER … IDENTIFIED BY PASSWORD would drop the others.
        let sql = "SELECT Host FROM mysql.global_priv WHERE User = ? AND JSON_EXTRACT(Priv, '$.auth_or') IS NOT NULL \
                   ORDER BY Host";
        let with_alternatives: Vec<String> =
            match tokio::time::timeout(self.cfg.timeout(), conn.exec(sql, (user.to_owned(),))).await {
                Err(_) => return Err(RotatorError::Transient(self.timeout_message(&context, ""))),
                Ok(Ok(hosts)) => hosts,
                Ok(Err(mysql_async::Error::Server(e))) if is_privilege_code(e.code) => {
                    return Err(RotatorError::Permanent(format!(
                        "{context}: insufficient privilege: the admin needs SELECT on mysql.global_priv to see whether \
                         an entry has other authentication methods (IDENTIFIED VIA … OR …), which the change would \
                         remove"
                    )))
                }
                Ok(Err(e)) => return Err(classify_statement(&e, &context, self.cfg.tls, scrub)),
            };
        if let Some(host) = with_alternatives.first() {
            return Err(RotatorError::Permanent(format!(
                "{context}: entry {}@{} authenticates by {NATIVE_PLUGIN} OR another method (IDENTIFIED VIA … OR …); \
                 kv-rotator refuses it: ALTER USER would silently remove the other methods",
                shown(user),
                shown(host)
            )));
        }
        if repair && entries.iter().all(|e| e.auth.as_str() == hash) {
            return Ok(false);
        }
        // Old hashes are secrets too: scrub them from what follows.
        let olds: Vec<SecretString> = entries.iter().map(|e| SecretString::from(e.auth.to_string())).collect();
        let scrub = Scrubber::new(scrub.secrets().chain(&olds));
        let mut hosts: Vec<&str> = entries.iter().map(|e| e.host.as_str()).collect();
        if let Some(phantom) = &self.phantom_host {
            hosts.insert(hosts.len() / 2, phantom);
        }
        let targets: Vec<String> =
            hosts.iter().map(|host| format!("{}@{}", quote_ident(user), quote_ident(host))).collect();
        let sql = Zeroizing::new(format!(
            "ALTER USER {}",
            targets.iter().map(|t| format!("{t} IDENTIFIED BY PASSWORD '{hash}'")).collect::<Vec<_>>().join(", ")
        ));
        let shown_targets: Vec<String> = hosts.iter().map(|host| format!("{account}@{}", shown(host))).collect();
        let context = format!("changing the password of {} on {} as {who}", shown_targets.join(", "), self.server());
        let failure = match self.run(conn, &context, &scrub, |c| c.query_drop(sql.as_str())).await {
            Ok(()) => return Ok(true),
            Err(e @ RotatorError::Transient(_)) => return Err(changed_if_transient(e)),
            Err(e) if repair => return Err(e),
            Err(e) => e,
        };
        // Entries left differing: some may have the pending password, so the engine must
        // keep it and retry (the next attempt rolls forward), never drop it.
        self.restore(conn, user, &entries, hash, who, &scrub).await.map_err(|left| {
            RotatorError::NotYetVisible(format!(
                "{failure}; and restoring the entries failed, so they differ: {left} (the next attempt sets them all to \
                 the pending password)"
            ))
        })?;
        Err(failure)
    }

    /// The pending password logs in through one host entry, and the account has others (or
    /// the user cannot see whether it does): a crash mid-change or mid-restore may have left
    /// them on older passwords. `AlreadySet` only once the admin has read every entry's
    /// hash and all are the pending one; otherwise the admin sets them all (rolling
    /// forward: the pending password is journaled and already in use). Every failure is
    /// [`RotatorError::NotYetVisible`]: the target may use the pending password, which the
    /// engine must keep.
    async fn roll_forward(
        &self,
        req: &SetPasswordRequest,
        hash: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<SetPasswordResponse> {
        let user = &req.username;
        let account = shown(user);
        let not_yet = |why: String| {
            RotatorError::NotYetVisible(format!(
                "the pending password logs in as {} on {}, but the account may have other host entries on older \
                 passwords: {why}",
                shown(user),
                self.server()
            ))
        };
        let Some(admin) = &req.admin else {
            return Err(not_yet(
                "no admin credential is configured to read and set them all (the user alone can prove only the \
                 entry it logs in through)"
                    .to_owned(),
            ));
        };
        let who = format!("admin {}", shown(&admin.username));
        let strip = |e: RotatorError| not_yet(e.to_string());
        let Some(mut session) = self.login(&admin.username, &admin.password, &who, scrub).await.map_err(strip)? else {
            return Err(not_yet(format!("{who} was refused")));
        };
        let changed = self.change_as_admin(&mut session.conn, user, hash, &who, scrub, true).await;
        disconnect(session.conn).await;
        if !changed.map_err(strip)? {
            return Ok(already_set());
        }
        let after_who = format!("{account} with the new password");
        let after = self.check(user, &req.pending, &after_who, scrub).await;
        after_change(after, SetPasswordOutcome::ChangedWithAdmin, || {
            format!("{who} set every host entry of {account} to the pending password, but it does not log in yet")
        })
    }

    /// After a failed `ALTER USER`: puts back the hash each entry had; `Err` says which
    /// entries still have the new one.
    async fn restore(
        &self,
        conn: &mut Conn,
        user: &str,
        before: &[Entry],
        hash: &str,
        who: &str,
        scrub: &Scrubber,
    ) -> Result<(), String> {
        let account = shown(user);
        let context = format!("restoring the host entries of {account} on {} as {who}", self.server());
        let mut problems = Vec::new();
        for entry in before {
            let sql = Zeroizing::new(format!(
                "ALTER USER {}@{} IDENTIFIED BY PASSWORD '{}'",
                quote_ident(user),
                quote_ident(&entry.host),
                entry.auth.as_str()
            ));
            if let Err(e) = self.run(conn, &context, scrub, |c| c.query_drop(sql.as_str())).await {
                problems.push(e.to_string());
            }
        }
        let now = match self.entries(conn, user, true, &context, scrub).await {
            Ok(Some(now)) => now,
            Ok(None) => return Err(format!("{context}: the entries cannot be read back")),
            Err(e) => return Err(e.to_string()),
        };
        let changed: Vec<String> =
            now.iter().filter(|e| e.auth.as_str() == hash).map(|e| format!("{account}@{}", shown(&e.host))).collect();
        if changed.is_empty() {
            return Ok(());
        }
        problems.push(format!("still on the new password: {}", changed.join(", ")));
        Err(problems.join("; "))
    }
}

async fn disconnect(conn: Conn) {
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
}

impl crate::registry::KindSettings for MariaDbConfig {
    fn offers(&self, strategy: crate::common::Strategy) -> Result<(), std::borrow::Cow<'static, str>> {
        crate::registry::all_strategies_but(
            strategy,
            crate::common::Strategy::MultiPassword,
            "MariaDB keeps one password per account (MySQL 8's RETAIN \
                 CURRENT PASSWORD has no MariaDB equivalent, and kv-rotator has no MySQL 8 server to test it against)",
        )
    }

    fn build(
        &self,
        profile: &crate::registry::ProfileContext<'_>,
    ) -> Result<std::sync::Arc<dyn Rotator>, crate::registry::BuildError> {
        Ok(std::sync::Arc::new(MariaDbRotator::new(self.clone(), profile.password.clone())?))
    }
}

#[async_trait]
impl Rotator for MariaDbRotator {
    fn kind(&self) -> &'static str {
        "mariadb"
    }

    fn password_policy(&self) -> &PasswordPolicy {
        &self.policy
    }

    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        check_user_name(&req.username)?;
        if req.pending.expose_secret().is_empty() {
            return Err(RotatorError::Refused("the pending password is empty".to_owned()));
        }
        let hashes = request_hashes(&req, native_hash);
        let scrub = Scrubber::for_request(&req, hashes.iter().map(|h| h.as_str()));
        let hash = hashes[0].as_str();
        let user = &req.username;
        let account = shown(user);

        // Idempotency: a retry after a crash between the change and finish lands here.
        let pending_who = format!("{account} with the pending password");
        let pending_login =
            if pending_may_work(&req) { self.login(user, &req.pending, &pending_who, &scrub).await? } else { None };
        if let Some(mut session) = pending_login {
            let context = format!("listing the host entries of {account} on {} as {pending_who}", self.server());
            let seen = self.entries(&mut session.conn, user, false, &context, &scrub).await;
            disconnect(session.conn).await;
            // One entry, the one just logged in through: proven.
            if seen?.is_some_and(|entries| entries.len() == 1) {
                return Ok(already_set());
            }
            return self.roll_forward(&req, hash, &scrub).await;
        }

        let (mut refused, mut cannot) = (Vec::new(), Vec::new());
        for login in logins(&req, &account, shown) {
            let who = login.who;
            let Some(mut session) = self.login(login.user, login.password, &who, &scrub).await? else {
                refused.push(who);
                continue;
            };
            if login.outcome == SetPasswordOutcome::ChangedWithAdmin {
                let changed = self.change_as_admin(&mut session.conn, user, hash, &who, &scrub, false).await;
                disconnect(session.conn).await;
                changed?;
            } else {
                let why_not = self.change_as_self(&mut session, user, hash, &who, &scrub).await;
                disconnect(session.conn).await;
                if let Some(why_not) = why_not? {
                    cannot.push(why_not);
                    continue;
                }
            }

            // A fresh connection proves the new password works end to end.
            let after_who = format!("{account} with the new password");
            let after = self.check(user, &req.pending, &after_who, &scrub).await;
            return after_change(after, login.outcome, || {
                format!(
                    "the password of {account} was changed as {who}, but the new password does not log in on {} yet \
                     (replication lag or a proxy; if it persists, check the account's host entries)",
                    self.server()
                )
            });
        }
        Err(no_login(&account, &self.server(), &refused, cannot, req.admin.is_some()))
    }

    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        check_user_name(&req.username)?;
        let hash = native_hash(&req.password);
        let hash = SecretString::from(hash.to_string());
        let scrub = Scrubber::new([&req.password, &hash]);
        self.check(&req.username, &req.password, &shown(&req.username), &scrub).await
    }
    async fn sync_twin(&self, req: SyncTwinRequest) -> RotatorResult<SyncTwinResponse> {
        twin::sync(self, req).await
    }

    async fn check_admin(&self, admin: &crate::Credential) -> RotatorResult<crate::AdminCheck> {
        crate::common::admin_logs_in(self, admin).await
    }
}

/// The `mysql_native_password` hash: `*` and the upper-case hex of SHA1(SHA1(password)).
/// The inner SHA1 is login-equivalent and is zeroized.
pub fn native_hash(password: &SecretString) -> Zeroizing<String> {
    use aws_lc_rs::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY as SHA1};
    let mut stage1 = Zeroizing::new([0u8; 20]);
    stage1.copy_from_slice(digest(&SHA1, password.expose_secret().as_bytes()).as_ref());
    let stage2 = digest(&SHA1, stage1.as_slice());
    Zeroizing::new(format!("*{}", hex::encode_upper(stage2.as_ref())))
}

/// Whether a row of `SHOW GRANTS` is the account's own global one,
/// `GRANT <privileges> ON *.* TO `user`@`host` …` (privilege names have no backticks,
/// so a role named "x ON *.* TO y", shown in backticks, cannot pass for it).
fn is_global_grant(row: &str) -> bool {
    row.strip_prefix("GRANT ")
        .and_then(|rest| rest.split_once(" ON *.* TO "))
        .is_some_and(|(privileges, _)| !privileges.contains('`'))
}

/// A name as messages show it: in double quotes, control characters and quotes escaped
/// (`quote_ident` is for SQL only: it keeps line breaks and escape sequences raw).
fn shown(name: &str) -> String {
    format!("{name:?}")
}

/// `text` (a server's message, a host name) with its control characters escaped (`\n`,
/// `\u{1b}`), so it cannot forge log lines or drive a terminal; the rest as is.
fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// `name` as a MariaDB identifier: in backticks, inner backticks doubled (no backslash
/// escapes apply inside backticks, whatever `sql_mode` says).
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn check_user_name(name: &str) -> RotatorResult<()> {
    if name.is_empty() {
        return Err(RotatorError::Permanent("the user name is empty".to_owned()));
    }
    if name.contains('\0') {
        return Err(RotatorError::Permanent("the user name contains a NUL byte".to_owned()));
    }
    if name.chars().count() > MAX_USER_NAME_CHARS {
        return Err(RotatorError::Permanent(format!(
            "user name {} is longer than {MAX_USER_NAME_CHARS} characters",
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

/// Server error codes a later retry can get past.
fn is_transient_code(code: u16) -> bool {
    matches!(
        code,
        1040 // too many connections
            | 1053 // server shutdown in progress
            | 1203 // max_user_connections
            | 1205 // lock wait timeout
            | 1213 // deadlock
            | 1226 // user resource exceeded (max_connections_per_hour…)
            | 1927 // connection killed
    )
}

/// Server error codes of a missing privilege.
fn is_privilege_code(code: u16) -> bool {
    matches!(code, 1044 | 1045 | 1142 | 1143 | 1227 | 1370)
}

fn classify_login(e: &mysql_async::Error, context: &str, tls: TlsMode, scrub: &Scrubber) -> Classified {
    let text = describe(e, scrub);
    if let mysql_async::Error::Server(server) = e {
        return Classified::Error(match server.code {
            1045 | 1698 => return Classified::AuthRefused,
            4151 | 1862 | 1129 => RotatorError::Permanent(format!(
                "{context}: {text}; no password can log in as the account now, so kv-rotator cannot prove which one \
                 it has"
            )),
            code if is_transient_code(code) => RotatorError::Transient(format!("{context}: {text}")),
            _ => RotatorError::Permanent(format!("{context}: {text}")),
        });
    }
    Classified::Error(classify_other(e, context, &text, tls))
}

fn classify_statement(e: &mysql_async::Error, context: &str, tls: TlsMode, scrub: &Scrubber) -> RotatorError {
    let text = describe(e, scrub);
    if let mysql_async::Error::Server(server) = e {
        return match server.code {
            code if is_privilege_code(code) => {
                RotatorError::Permanent(format!("{context}: insufficient privilege: {text}"))
            }
            // ER_NOT_VALID_PASSWORD: a validation plugin refused this password.
            1819 => RotatorError::Refused(format!("{context}: {text}")),
            // ER_OPTION_PREVENTS_STATEMENT: read-only, or strict_password_validation
            // refusing hashes.
            1290 => RotatorError::Permanent(format!(
                "{context}: {text}; kv-rotator sends only password hashes and never falls back to the plain password"
            )),
            code if is_transient_code(code) => RotatorError::Transient(format!("{context}: {text}")),
            _ => RotatorError::Permanent(format!("{context}: {text}")),
        };
    }
    classify_other(e, context, &text, tls)
}

/// Errors that are not the server's answer: I/O, TLS, the driver.
fn classify_other(e: &mysql_async::Error, context: &str, text: &str, tls: TlsMode) -> RotatorError {
    if find_cause::<rustls::Error>(e).is_some_and(crate::tls::is_certificate_error) {
        return RotatorError::Permanent(format!(
            "{context}: the server's certificate was refused under tls {:?}: {text}",
            tls.as_str()
        ));
    }
    match e {
        mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => RotatorError::Permanent(
            format!("{context}: {text}; tls {:?} needs TLS on the server (ssl_cert, ssl_key)", tls.as_str()),
        ),
        mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed) | mysql_async::Error::Io(_) => {
            RotatorError::Transient(format!("{context}: {text}"))
        }
        // Authentication plugins kv-rotator will not answer (cleartext, old password,
        // unknown), and everything else.
        _ => RotatorError::Permanent(format!("{context}: {text}")),
    }
}

/// The error and its causes on one line, scrubbed.
fn describe(e: &mysql_async::Error, scrub: &Scrubber) -> String {
    let text = match e {
        mysql_async::Error::Server(server) => {
            format!("ERROR {} ({}): {}", server.code, server.state, server.message)
        }
        _ => chain_text(e),
    };
    escape_controls(&scrub.clean(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_hash_matches_the_server() {
        // SELECT PASSWORD('pw1') on MariaDB 10.11.
        let hash = native_hash(&SecretString::from("pw1".to_owned()));
        assert_eq!(hash.as_str(), "*2B602296A79E0A8784ACC5C88D92E46588CCA3C3");
    }

    #[test]
    fn only_the_accounts_own_global_row_counts_as_its_grants() {
        assert!(is_global_grant("GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*AB'"));
        assert!(is_global_grant("GRANT SELECT, CREATE USER ON *.* TO `a b`@`localhost`"));
        assert!(!is_global_grant("GRANT `r` TO `app`@`%`"));
        assert!(!is_global_grant("GRANT `x ON *.* TO y` TO `app`@`%`"), "a role's name");
        assert!(!is_global_grant("GRANT SELECT ON `db`.* TO `app`@`%`"));
        assert!(!is_global_grant("grant USAGE ON *.* TO `app`@`%`"));
    }

    #[test]
    fn messages_escape_control_characters() {
        assert_eq!(shown("app\n2026 INFO forged\x1b[2J"), "\"app\\n2026 INFO forged\\u{1b}[2J\"");
        assert_eq!(escape_controls("Access denied\r\nfake line\u{7}é"), "Access denied\\r\\nfake line\\u{7}é");
        let e = check_user_name(&format!("{}\n", "u".repeat(81))).unwrap_err().to_string();
        assert!(!e.contains('\n') && e.contains("\\n"), "{e}");
    }

    #[test]
    fn quote_ident_doubles_backticks() {
        assert_eq!(quote_ident("app"), "`app`");
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_ident("x'; DROP USER y; --"), "`x'; DROP USER y; --`");
        assert_eq!(quote_ident("a\\"), "`a\\`");
    }

    #[test]
    fn user_names_mariadb_would_refuse_are_refused_here() {
        assert!(check_user_name("").is_err());
        assert!(check_user_name("a\0b").is_err());
        assert!(check_user_name(&"é".repeat(80)).is_ok());
        let e = check_user_name(&"u".repeat(81)).unwrap_err();
        assert!(!e.is_transient() && e.to_string().contains("longer than 80"), "{e}");
    }

    #[test]
    fn config_defaults_and_refusals() {
        let cfg: MariaDbConfig = serde_json::from_str(r#"{"host": "db"}"#).unwrap();
        assert_eq!(cfg, MariaDbConfig::new("db"));
        assert_eq!(cfg.port, 3306);
        assert_eq!(cfg.tls, TlsMode::VerifyFull, "verified TLS unless told otherwise");
        let err = |json: &str| serde_json::from_str::<MariaDbConfig>(json).unwrap_err().to_string();
        assert!(err(r#"{"host": "db", "prot": 1}"#).contains("unknown field `prot`"));
        assert!(err(r#"{"host": "db", "tls": "required"}"#).contains("tls \"required\" is refused"));
        assert!(err(r#"{"host": "db", "connect_timeout_secs": 0}"#).contains("at least 1"));
    }

    #[test]
    fn tls_combinations_that_only_look_protected_are_refused() {
        let refused = |adjust: &dyn Fn(&mut MariaDbConfig)| {
            let mut cfg = MariaDbConfig::new("db");
            adjust(&mut cfg);
            MariaDbRotator::new(cfg, PasswordPolicy::default()).unwrap_err().to_string()
        };
        let e = refused(&|c| {
            c.tls = TlsMode::VerifyCa;
            c.tls_ca_file = Some("/nonexistent/ca.pem".into());
        });
        assert!(e.contains("\"verify-ca\" is not available") && e.contains("tls_server_name"), "{e}");
        let e = refused(&|c| {
            c.tls = TlsMode::Disable;
            c.tls_ca_file = Some("/nonexistent/ca.pem".into());
        });
        assert!(e.contains("tls_ca_file") && e.contains("disable"), "{e}");
        let e = refused(&|c| {
            c.tls = TlsMode::Disable;
            c.tls_server_name = Some("db.example".into());
        });
        assert!(e.contains("tls_server_name with tls = \"disable\""), "{e}");
        // Plaintext only to this machine: a sniffer would combine the login with the hash
        // SHOW GRANTS returns, and a fake server would ask for the password.
        let e = refused(&|c| c.tls = TlsMode::Disable);
        assert!(e.starts_with("tls = \"disable\" is refused for host \"db\"") && e.contains("loopback"), "{e}");
        for host in ["127.0.0.1", "localhost", "::1"] {
            let mut cfg = MariaDbConfig::new(host);
            cfg.tls = TlsMode::Disable;
            MariaDbRotator::new(cfg, PasswordPolicy::default()).unwrap();
        }
    }

    #[test]
    fn transient_and_privilege_codes() {
        for code in [1040, 1205, 1213, 1203] {
            assert!(is_transient_code(code), "{code}");
        }
        for code in [1045, 1142, 1227, 1396, 1290, 1819] {
            assert!(!is_transient_code(code), "{code}");
        }
        assert!(is_privilege_code(1227) && is_privilege_code(1142) && !is_privilege_code(1396));
    }
}
