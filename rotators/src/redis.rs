//! Redis rotator for ACL users (Redis 6 and later): single-user and multi-password.
//!
//! - [`RedisConfig`]: where the server is, how the connection is protected, and whether
//!   changes are saved to the server's ACL file (a target profile with `kind = "redis"`).
//! - [`RedisRotator`]: the [`Rotator`]. `verify` opens a fresh connection and sends
//!   `AUTH <user> <password>`; `set_password` tries the pending password first (unless
//!   the engine just journaled it: `pending_is_new`), then logs in as the user with its
//!   current password, then each previous one, then as the admin, and runs
//!   `ACL SETUSER <user> resetpass #<sha256 of the new password>`; a fresh login with the
//!   new password ends it (`pending_verified`).
//!
//! **Only hashes are sent where one can be.** The new password goes to the server as its
//! SHA-256 (`#<hex>`), which is what Redis stores, so it is never in a command's
//! arguments (`MONITOR`, the slow log, `ACL LOG`). `AUTH` has no such form: logging in
//! sends the password itself, so outside a trusted private network use TLS.
//! `resetpass` drops the user's other passwords (and `nopass`) and nothing else: its
//! `on`/`off` state, commands, keys, channels and selectors stay as they were.
//!
//! **Multi-password** ([`RedisRotator::with_multi_password`], `strategy =
//! "multi-password"`): an ACL user holds any number of passwords, so `set_password`
//! adds the new hash without `resetpass`, and consumers holding the old value keep
//! working. After the profile's grace period the engine calls
//! [`Rotator::retire_passwords`]: it logs in with the latest version's password (which
//! must work, or nothing is removed), reads the user's hashes (`ACL GETUSER`) and removes
//! those of the old versions it still has in one `ACL SETUSER … !<hash>…`, then saves as
//! above and proves the current password still logs in. Only hashes travel here too.
//!
//! **Who may change a password.** `ACL SETUSER` needs the `acl` permission, which lets
//! whoever holds it grant itself everything: in practice the admin login changes
//! passwords, and a user changes its own only if it was given `+acl|setuser` and
//! `+acl|getuser`. A login the server refuses (`NOPERM`) is not an error until no login
//! is left. The admin first reads the user (`ACL GETUSER`): a user that does not exist
//! is a permanent error (`ACL SETUSER` would create it), and so is one that is `off` (no
//! password can log in as it, so none can be proven).
//!
//! **Saving** (`acl_save`). ACL changes live in the server's memory until `ACL SAVE`
//! writes them to its ACL file (`aclfile`); a server that defines its users in
//! `redis.conf` (or with `requirepass`) brings the old password back when it restarts.
//! With `acl_save = "required"` (the default) the changing login first checks that the
//! server has an ACL file (`CONFIG GET aclfile`, so it needs `+config|get`) and refuses
//! to change anything otherwise, and runs `ACL SAVE` after the change (as the admin when
//! the changing login may not save), and again when a retry finds the pending password
//! already in force (a save that failed, a crash before it). A failed save does not undo
//! the change: the old password is refused already and the new one is what works, so the
//! outcome stands (Key Vault gets the new password) and the failure is a WARN log naming
//! the server and the user (the engine's span adds the vault and the secret) — the old
//! password comes back when the server restarts unless an operator fixes the ACL file
//! and runs `ACL SAVE`. `acl_save = "never"`
//! is for servers whose users are kept some other way (a managed service, a
//! configuration manager) or that keep nothing (tests).
//!
//! **The `default` user** (`requirepass`, and clients that send `AUTH <password>`) is
//! rotated like any other user. On a server configured with `requirepass` and no ACL
//! file, the default `acl_save = "required"` refuses it, since a restart would bring
//! `requirepass` back; with an ACL file, keep `requirepass` out of `redis.conf`.
//!
//! **A login is proven.** After `AUTH` succeeds, the rotator sends `AUTH` again with a
//! random password on the same connection, which a real server must refuse: a user with
//! `nopass`, or a server that is not the real one, would take any password, and then
//! "this password works" proves nothing. A failed `AUTH` leaves the connection logged in
//! as before; it adds one entry to `ACL LOG`.
//!
//! **TLS** (`tls`, [`TlsMode`]): `verify-full` by default, `verify-ca` with
//! `tls_ca_file`, or `disable`, for a loopback host only (`AUTH` would send every
//! password tried in clear; [`crate::tls::plaintext_only_on_loopback`]); trust anchors
//! from `tls_ca_file` or the system's store; `tls_server_name` when the certificate does
//! not carry `host`. kv-rotator opens the
//! socket and the TLS session itself (rustls) and hands the stream to the `redis` crate,
//! which is built without TLS, cluster or Sentinel support and so logs nothing. A
//! refused certificate, and a port that does not speak TLS under a TLS mode, are
//! permanent errors.
//!
//! Error mapping: `WRONGPASS` is "this login does not work" ([`VerifyResponse::Rejected`],
//! or the next login). Refused connections, timeouts, `LOADING`, `BUSY` and `TRYAGAIN`
//! are [`RotatorError::Transient`]; anything else the server refuses is permanent,
//! naming the login used. Every message is scrubbed of the passwords and their hashes;
//! text from the server or a library is scrubbed whole, then cut to 200 characters, then
//! escaped (`{:?}`, like user names), so no line break or terminal escape reaches a log.
//!
//! Size: ~80 lines of module doc, ~805 of code, ~75 of unit tests. The code is one
//! conversation with the server (log in and prove it, change or retire, save) on a stream
//! it opens, with the reply parsing and error mapping only it uses.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, RedisConnectionInfo, Value};
use async_trait::async_trait;
use rustls::pki_types::ServerName;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{
    after_change, already_set, chain_text, find_cause, logins, no_login, pending_may_work, request_hashes,
};
use crate::scrub::Scrubber;
pub use crate::tls::{TlsMode, TlsSetupError};
use crate::{
    Credential, PasswordPolicy, RetirePasswordsRequest, RetirePasswordsResponse, Rotator, RotatorError, RotatorResult,
    SetPasswordOutcome, SetPasswordRequest, SetPasswordResponse, VerifyRequest, VerifyResponse,
};

/// Longest reply line read during authentication.
const MAX_AUTH_REPLY: usize = 512;

/// Connection settings of a Redis target.
///
/// ```toml
/// [targets.sessions-cache]
/// kind = "redis"
/// host = "cache.internal.example"
/// port = 6380
/// tls = "verify-full"            # the default; also "verify-ca" (with tls_ca_file), "disable" (loopback only)
/// # tls_ca_file = "/etc/kv-rotator/cache-ca.pem"   # default: the system's CA store
/// acl_save = "required"          # the default: ACL SAVE to the server's aclfile; or "never"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Host name or IP address (what `verify-full` checks the certificate against).
    pub host: String,
    /// TCP port. Default 6379.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Limit, in seconds, on establishing a connection (TCP, TLS, `AUTH`) and on each
    /// command. Default 10; at least 1.
    #[serde(default = "default_connect_timeout", deserialize_with = "crate::common::positive_secs")]
    pub connect_timeout_secs: u64,
    /// Transport security. Default `verify-full`; `disable` only for a loopback host.
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file of the CA certificates `verify-ca` and `verify-full` trust. Default: the
    /// system's store (not with `verify-ca`); refused with `disable`.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not `host`. Default: `host`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Whether changes are saved with `ACL SAVE`. Default `required`.
    #[serde(default)]
    pub acl_save: AclSave,
}

/// The `acl_save` key; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AclSave {
    /// The server must have an ACL file; every change is saved to it.
    #[default]
    Required,
    /// Changes stay in the server's memory.
    Never,
}

fn default_port() -> u16 {
    6379
}
fn default_connect_timeout() -> u64 {
    10
}

impl RedisConfig {
    /// A configuration with the defaults for everything but the host.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: default_port(),
            connect_timeout_secs: default_connect_timeout(),
            tls: TlsMode::default(),
            tls_ca_file: None,
            tls_server_name: None,
            acl_save: AclSave::default(),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }
}

/// Rotates the passwords of Redis ACL users in place (single-user strategy); see the
/// [module docs](self).
///
/// Every operation opens its own connections, so one rotator serves concurrent
/// rotations of different users.
#[derive(Clone)]
pub struct RedisRotator {
    cfg: RedisConfig,
    policy: PasswordPolicy,
    /// Multi-password strategy: a new password is added beside the others (no `resetpass`).
    keep_old_passwords: bool,
    /// Built once from `tls` and `tls_ca_file`; `None` for `disable`.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl fmt::Debug for RedisRotator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRotator").field("cfg", &self.cfg).field("policy", &self.policy).finish_non_exhaustive()
    }
}

/// A byte stream to the server, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Why a connection has no session.
enum Failure {
    /// The server refused the credentials (`WRONGPASS`).
    Refused,
    /// Any other error, already classified.
    Error(RotatorError),
}

impl From<RotatorError> for Failure {
    fn from(e: RotatorError) -> Self {
        Failure::Error(e)
    }
}

impl RedisRotator {
    /// A rotator for the server in `cfg`, generating passwords under `policy`. Fails when
    /// TLS cannot be set up as configured (a `tls_ca_file` that cannot be read, no system
    /// CAs, `verify-ca` without a CA file, a CA file or server name with `disable`).
    pub fn new(cfg: RedisConfig, policy: PasswordPolicy) -> Result<Self, TlsSetupError> {
        crate::tls::check_ca_file(cfg.tls, cfg.tls_ca_file.as_deref())?;
        let tls =
            match cfg.tls.verification() {
                None if cfg.tls_server_name.is_some() => return Err(TlsSetupError::Combination(
                    "tls_server_name with tls = \"disable\": no certificate is checked, so the name would only look \
                     like protection"
                        .to_owned(),
                )),
                None => {
                    // `AUTH` sends the password itself.
                    crate::tls::plaintext_only_on_loopback("tls", &cfg.host, "tls_ca_file")?;
                    None
                }
                Some(verification) => {
                    let config = crate::tls::client_config(verification, cfg.tls_ca_file.as_deref(), "tls_ca_file")?;
                    let name = cfg.tls_server_name.as_deref().unwrap_or(&cfg.host);
                    let name = ServerName::try_from(name.to_owned()).map_err(|e| {
                        TlsSetupError::Combination(format!("{name:?} cannot be checked against a certificate: {e}"))
                    })?;
                    Some((tokio_rustls::TlsConnector::from(config), name))
                }
            };
        Ok(Self { cfg, policy, keep_old_passwords: false, tls })
    }

    /// For a profile with `strategy = "multi-password"`: `set_password` adds the new
    /// password and leaves the user's others in force; [`Rotator::retire_passwords`]
    /// removes the old ones after the grace period.
    pub fn with_multi_password(mut self) -> Self {
        self.keep_old_passwords = true;
        self
    }

    /// Its connection settings.
    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    fn server(&self) -> String {
        format!("{}:{}", self.cfg.host, self.cfg.port)
    }

    /// Connects and authenticates, all within the connect timeout; `Ok(None)` when the
    /// server refused the password.
    async fn login(
        &self,
        user: &str,
        password: &SecretString,
        who: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<Option<Box<dyn Stream>>> {
        if self.cfg.host.is_empty() {
            return Err(RotatorError::Permanent("redis target has an empty host".to_owned()));
        }
        let context = format!("connecting to {} as {who}", self.server());
        match tokio::time::timeout(self.cfg.timeout(), self.connect_and_auth(user, password, &context, scrub)).await {
            Err(_) => {
                Err(RotatorError::Transient(format!("{context}: no answer within {}s", self.cfg.connect_timeout_secs)))
            }
            Ok(Ok(stream)) => Ok(Some(stream)),
            Ok(Err(Failure::Refused)) => Ok(None),
            Ok(Err(Failure::Error(e))) => Err(e),
        }
    }

    async fn connect_and_auth(
        &self,
        user: &str,
        password: &SecretString,
        context: &str,
        scrub: &Scrubber,
    ) -> Result<Box<dyn Stream>, Failure> {
        let socket = TcpStream::connect((self.cfg.host.as_str(), self.cfg.port))
            .await
            .map_err(|e| RotatorError::Transient(format!("{context}: {}", shown_text(scrub, e.to_string()))))?;
        let _ = socket.set_nodelay(true);
        let mut stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(socket),
            Some((connector, name)) => Box::new(
                connector.connect(name.clone(), socket).await.map_err(|e| self.tls_failure(e, context, scrub))?,
            ),
        };
        let io =
            |e: std::io::Error| RotatorError::Transient(format!("{context}: {}", shown_text(scrub, e.to_string())));
        auth(&mut stream, user, password).await.map_err(io)?;
        match read_line(&mut stream).await.map_err(io)? {
            line if line.as_str() == "+OK" => {}
            line if line.starts_with("-WRONGPASS") => return Err(Failure::Refused),
            line => return Err(reply_error(&line, context, scrub).into()),
        }
        // Proof that the server checked it: a random password must now be refused.
        let probe = SecretString::from(format!("kvr-probe-{:032x}", rand::random::<u128>()));
        auth(&mut stream, user, &probe).await.map_err(io)?;
        let line = read_line(&mut stream).await.map_err(io)?;
        if !line.starts_with("-WRONGPASS") {
            return Err(Failure::Error(RotatorError::Permanent(format!(
                "{context}: the server accepted a random password too (the user has nopass, or this is not the real \
                 server): kv-rotator cannot prove which password works; give the user a password (ACL SETUSER … \
                 resetpass)"
            ))));
        }
        Ok(stream)
    }

    fn tls_failure(&self, e: std::io::Error, context: &str, scrub: &Scrubber) -> RotatorError {
        let text = shown_text(scrub, chain_text(&e));
        let mode = self.cfg.tls.as_str();
        match find_cause::<rustls::Error>(&e) {
            Some(tls) if crate::tls::is_certificate_error(tls) => RotatorError::Permanent(format!(
                "{context}: the server's certificate was refused under tls {mode:?}: {text}"
            )),
            // The port answered, but not with TLS (a plain port, another service).
            Some(_) => RotatorError::Permanent(format!(
                "{context}: no TLS handshake under tls {mode:?} ({text}); is this the server's TLS port (tls-port)?"
            )),
            None => RotatorError::Transient(format!("{context}: {text}")),
        }
    }

    /// A `redis` connection over an authenticated stream.
    async fn commands(&self, stream: Box<dyn Stream>, context: &str, scrub: &Scrubber) -> RotatorResult<Commands> {
        let info = RedisConnectionInfo::default().set_skip_set_lib_name();
        let (conn, driver) = MultiplexedConnection::new_with_config(&info, stream, AsyncConnectionConfig::new())
            .await
            .map_err(|e| classify(&e, context, scrub))?;
        let driver = tokio::spawn(driver);
        Ok(Commands { conn, driver, timeout: self.cfg.timeout() })
    }

    /// Whether `password` logs `user` in (proven, see the module docs).
    async fn check(
        &self,
        user: &str,
        password: &SecretString,
        who: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<VerifyResponse> {
        Ok(match self.login(user, password, who, scrub).await? {
            Some(_) => VerifyResponse::Accepted,
            None => VerifyResponse::Rejected,
        })
    }

    /// Changes the password through `cmds`; `Ok(Some(why))` when this login may not.
    async fn change(
        &self,
        cmds: &mut Commands,
        user: &str,
        hash: &str,
        who: &str,
        as_admin: bool,
        scrub: &Scrubber,
    ) -> RotatorResult<Option<String>> {
        let name = quote(user);
        let server = self.server();
        let context = format!("reading user {name} on {server} as {who}");
        let flags = match cmds.run(::redis::cmd("ACL").arg("GETUSER").arg(user), &context, scrub).await {
            Ok(Value::Nil) => {
                return Err(RotatorError::Permanent(format!("{context}: no such user (ACL SETUSER would create it)")))
            }
            Ok(value) => flags_of(&value),
            Err(Refusal::NoPerm(text)) if !as_admin => return Ok(Some(format!("{who} may not read ACLs: {text}"))),
            Err(e) => return Err(e.into_error(&context)),
        };
        if flags.iter().any(|f| f == "off") {
            return Err(RotatorError::Permanent(format!(
                "{context}: the user is off: no password can log in as it, so kv-rotator cannot prove which one it has"
            )));
        }
        if self.cfg.acl_save == AclSave::Required {
            let context = format!("checking for an ACL file on {server} as {who}");
            match cmds.run(::redis::cmd("CONFIG").arg("GET").arg("aclfile"), &context, scrub).await {
                Ok(value) if aclfile_of(&value).is_some_and(|file| !file.is_empty()) => {}
                Ok(_) => {
                    return Err(RotatorError::Permanent(format!(
                        "{context}: the server has no ACL file, so a restart would bring the old password back \
                         (users from redis.conf or requirepass); give it an aclfile, or set acl_save = \"never\" if its \
                         users are kept some other way"
                    )))
                }
                Err(Refusal::NoPerm(text)) if !as_admin => {
                    return Ok(Some(format!("{who} may not check for an ACL file (+config|get): {text}")))
                }
                Err(e) => return Err(e.into_error(&context)),
            }
        }
        let context = format!("changing the password of user {name} on {server} as {who}");
        let setuser = Zeroizing::new(format!("#{hash}"));
        let mut cmd = ::redis::cmd("ACL");
        cmd.arg("SETUSER").arg(user);
        if !self.keep_old_passwords {
            cmd.arg("resetpass");
        }
        cmd.arg(setuser.as_str());
        match cmds.run(&cmd, &context, scrub).await {
            Ok(_) => {}
            Err(Refusal::NoPerm(text)) if !as_admin => return Ok(Some(format!("{who} may not change ACLs: {text}"))),
            // Sent, then no answer: the change may have been made.
            Err(Refusal::Other(RotatorError::Transient(m))) => return Err(RotatorError::NotYetVisible(m)),
            Err(e) => return Err(e.into_error(&context)),
        }
        Ok(None)
    }

    /// Removes every password hash `user` has but `kept` (`ACL GETUSER`, then one
    /// `ACL SETUSER … !<hash>…`); how many it removed.
    async fn remove_hashes(
        &self,
        cmds: &mut Commands,
        user: &str,
        kept: &[Zeroizing<String>],
        who: &str,
        scrub: &Scrubber,
    ) -> Result<usize, Refusal> {
        let context = format!("reading user {} on {} as {who}", quote(user), self.server());
        let present = match cmds.run(::redis::cmd("ACL").arg("GETUSER").arg(user), &context, scrub).await? {
            Value::Nil => {
                return Err(Refusal::Other(RotatorError::Permanent(format!("{context}: no such user"))));
            }
            value => passwords_of(&value),
        };
        let gone: Vec<&Zeroizing<String>> =
            present.iter().filter(|p| !kept.iter().any(|k| k.as_str() == p.as_str())).collect();
        if gone.is_empty() {
            return Ok(0);
        }
        // The hashes of passwords kv-rotator never knew are scrubbed from what the server says too.
        let unknown: Vec<SecretString> = gone.iter().map(|h| SecretString::from(h.to_string())).collect();
        let scrub = Scrubber::new(scrub.secrets().chain(&unknown));
        let mut cmd = ::redis::cmd("ACL");
        cmd.arg("SETUSER").arg(user);
        let removals: Vec<Zeroizing<String>> =
            gone.iter().map(|h| Zeroizing::new(format!("!{}", h.as_str()))).collect();
        for removal in &removals {
            cmd.arg(removal.as_str());
        }
        let context = format!("retiring old passwords of user {} on {} as {who}", quote(user), self.server());
        // Sent, then no answer: they may be gone or not; the next call reads them again.
        cmds.run(&cmd, &context, &scrub).await.map(|_| gone.len())
    }

    /// `ACL SAVE` once the password is changed (or found changed), when `acl_save` is
    /// `required`: through `first` (the session that changed it, or the user's own with
    /// the pending password), then as the admin when that one may not save. A failure
    /// does not undo the change: the password in force is the new one, which Key Vault
    /// must get, so it is logged as a warning (the old password comes back when the
    /// server restarts) and the outcome stands.
    async fn save(
        &self,
        first: Option<(Commands, String)>,
        first_is_admin: bool,
        (user, admin): (&str, Option<&Credential>),
        scrub: &Scrubber,
    ) {
        if self.cfg.acl_save != AclSave::Required {
            return;
        }
        let mut why = Vec::new();
        if let Some((mut cmds, who)) = first {
            match self.save_on(&mut cmds, &who, scrub).await {
                Ok(()) => return,
                Err(Refusal::NoPerm(text)) if !first_is_admin => why.push(format!("{who} may not save ACLs: {text}")),
                Err(e) => {
                    return self.unsaved(user, &e.into_error(&format!("saving the ACL file as {who}")).to_string())
                }
            }
        }
        match admin.filter(|_| !first_is_admin) {
            None if why.is_empty() => why.push("no login to save with".to_owned()),
            None => why.push("no admin credential configured".to_owned()),
            Some(admin) => {
                let who = format!("admin {}", quote(&admin.username));
                let saved = async {
                    let Some(stream) = self.login(&admin.username, &admin.password, &who, scrub).await? else {
                        return Err(RotatorError::Permanent(format!("{who}: refused")));
                    };
                    let context = format!("opening a session on {} as {who}", self.server());
                    let mut cmds = self.commands(stream, &context, scrub).await?;
                    self.save_on(&mut cmds, &who, scrub)
                        .await
                        .map_err(|e| e.into_error(&format!("saving the ACL file as {who}")))
                };
                match saved.await {
                    Ok(()) => return,
                    Err(e) => why.push(e.to_string()),
                }
            }
        }
        self.unsaved(user, &why.join("; "))
    }

    async fn save_on(&self, cmds: &mut Commands, who: &str, scrub: &Scrubber) -> Result<(), Refusal> {
        let context = format!("saving the ACL file on {} as {who}", self.server());
        cmds.run(::redis::cmd("ACL").arg("SAVE"), &context, scrub).await.map(drop)
    }

    /// The loud report of a change that is not saved.
    fn unsaved(&self, user: &str, why: &str) {
        tracing::warn!(
            server = %self.server(),
            user = %quote(user),
            error = %why,
            "the password of the Redis user is changed in the server's memory but NOT saved to its ACL file: the \
             old password comes back when the server restarts, and Key Vault holds the new one; fix the ACL file \
             (space, permissions) and run ACL SAVE on the server"
        );
    }
}

/// An authenticated `redis` connection with the command timeout.
struct Commands {
    conn: MultiplexedConnection,
    driver: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Drop for Commands {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A command's failure: refused for lack of permission, or anything else.
enum Refusal {
    NoPerm(String),
    Other(RotatorError),
}

impl Refusal {
    fn into_error(self, context: &str) -> RotatorError {
        match self {
            Refusal::NoPerm(text) => RotatorError::Permanent(format!("{context}: insufficient privilege: {text}")),
            Refusal::Other(e) => e,
        }
    }
}

impl Commands {
    async fn run(&mut self, cmd: &::redis::Cmd, context: &str, scrub: &Scrubber) -> Result<Value, Refusal> {
        match tokio::time::timeout(self.timeout, cmd.query_async::<Value>(&mut self.conn)).await {
            Err(_) => Err(Refusal::Other(RotatorError::Transient(format!(
                "{context}: no answer within {}s (the command may still complete)",
                self.timeout.as_secs()
            )))),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if e.code() == Some("NOPERM") => Err(Refusal::NoPerm(shown_text(scrub, e.to_string()))),
            Ok(Err(e)) => Err(Refusal::Other(classify(&e, context, scrub))),
        }
    }
}

impl crate::registry::KindSettings for RedisConfig {
    fn offers(&self, strategy: crate::common::Strategy) -> Result<(), std::borrow::Cow<'static, str>> {
        crate::registry::all_strategies_but(
            strategy,
            crate::common::Strategy::AlternatingUsers,
            "Redis ACL users hold several passwords, so use \
                 multi-password: one account, no user name for consumers to learn",
        )
    }

    fn build(
        &self,
        profile: &crate::registry::ProfileContext<'_>,
    ) -> Result<std::sync::Arc<dyn Rotator>, crate::registry::BuildError> {
        let rotator = RedisRotator::new(self.clone(), profile.password.clone())?;
        Ok(match profile.strategy {
            crate::common::Strategy::MultiPassword => std::sync::Arc::new(rotator.with_multi_password()),
            _ => std::sync::Arc::new(rotator),
        })
    }
}

#[async_trait]
impl Rotator for RedisRotator {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn password_policy(&self) -> &PasswordPolicy {
        &self.policy
    }

    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        check_user_name(&req.username)?;
        if req.pending.expose_secret().is_empty() {
            return Err(RotatorError::Refused("the pending password is empty".to_owned()));
        }
        let hashes = request_hashes(&req, acl_hash);
        let scrub = Scrubber::for_request(&req, hashes.iter().map(|h| h.as_str()));
        let hash = hashes[0].as_str();
        let user = &req.username;
        let name = quote(user);

        // Idempotency: a retry after a crash between the change and finish lands here.
        let pending_who = format!("user {name} with the pending password");
        let pending_login =
            if pending_may_work(&req) { self.login(user, &req.pending, &pending_who, &scrub).await? } else { None };
        if let Some(stream) = pending_login {
            // The change may be in memory only (a save that failed, a crash before it).
            if self.cfg.acl_save == AclSave::Required {
                let context = format!("opening a session on {} as {pending_who}", self.server());
                match self.commands(stream, &context, &scrub).await {
                    Ok(cmds) => self.save(Some((cmds, pending_who)), false, (user, req.admin.as_ref()), &scrub).await,
                    Err(_) => self.save(None, false, (user, req.admin.as_ref()), &scrub).await,
                }
            }
            return Ok(already_set());
        }

        let (mut refused, mut cannot) = (Vec::new(), Vec::new());
        for login in logins(&req, &format!("user {name}"), quote) {
            let who = login.who;
            let Some(stream) = self.login(login.user, login.password, &who, &scrub).await? else {
                refused.push(who);
                continue;
            };
            let context = format!("opening a session on {} as {who}", self.server());
            let mut cmds = self.commands(stream, &context, &scrub).await?;
            let as_admin = login.outcome == SetPasswordOutcome::ChangedWithAdmin;
            if let Some(why_not) = self.change(&mut cmds, user, hash, &who, as_admin, &scrub).await? {
                cannot.push(why_not);
                continue;
            }
            self.save(Some((cmds, who.clone())), as_admin, (user, req.admin.as_ref()), &scrub).await;
            // A fresh connection proves the new password works end to end.
            let after_who = format!("user {name} with the new password");
            let after = self.check(user, &req.pending, &after_who, &scrub).await;
            return after_change(after, login.outcome, || {
                format!(
                    "the password of user {name} was changed as {who}, but the new password does not log in on {} \
                     yet (a replica behind a proxy?)",
                    self.server()
                )
            });
        }
        Err(no_login(&format!("user {name}"), &self.server(), &refused, cannot, req.admin.is_some()))
    }

    async fn check_admin(&self, admin: &crate::Credential) -> RotatorResult<crate::AdminCheck> {
        crate::common::admin_logs_in(self, admin).await
    }

    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        check_user_name(&req.username)?;
        let hash = SecretString::from(acl_hash(&req.password).to_string());
        let scrub = Scrubber::new([&req.password, &hash]);
        self.check(&req.username, &req.password, &format!("user {}", quote(&req.username)), &scrub).await
    }

    async fn retire_passwords(&self, req: RetirePasswordsRequest) -> RotatorResult<RetirePasswordsResponse> {
        check_user_name(&req.username)?;
        let kept: Vec<Zeroizing<String>> = std::iter::once(&req.keep).chain(&req.also_keep).map(acl_hash).collect();
        let derived: Vec<SecretString> = kept.iter().map(|h| SecretString::from(h.to_string())).collect();
        let scrub = Scrubber::new(
            [&req.keep]
                .into_iter()
                .chain(&req.also_keep)
                .chain(req.admin.as_ref().map(|a| &a.password))
                .chain(&derived),
        );
        let user = req.username.as_str();
        let name = quote(user);
        // The password consumers use now must work before anything is removed, and is
        // the first login: a user that may change its own ACL retires its own passwords.
        let keep_who = format!("user {name} with its current password");
        let own = self.login(user, &req.keep, &keep_who, &scrub).await?;
        if own.is_none() {
            return Err(RotatorError::Permanent(format!(
                "user {name} on {}: the password of the secret's latest version does not log in, so no older \
                 password is retired (consumers may still depend on one)",
                self.server()
            )));
        }
        let mut sessions = vec![(own, keep_who, false)];
        if let Some(admin) = &req.admin {
            sessions.push((None, format!("admin {}", quote(&admin.username)), true));
        }
        let mut cannot = Vec::new();
        for (stream, who, as_admin) in sessions {
            let stream = match stream {
                Some(stream) => stream,
                None => {
                    let admin = req.admin.as_ref().expect("an admin session only with an admin");
                    match self.login(&admin.username, &admin.password, &who, &scrub).await? {
                        Some(stream) => stream,
                        None => {
                            cannot.push(format!("{who}: refused"));
                            continue;
                        }
                    }
                }
            };
            let context = format!("opening a session on {} as {who}", self.server());
            let mut cmds = self.commands(stream, &context, &scrub).await?;
            match self.remove_hashes(&mut cmds, user, &kept, &who, &scrub).await {
                Ok(removed) => {
                    // Saved even when nothing was left to remove: a removal whose save was
                    // cut short (a crash) would come back at the server's next restart.
                    self.save(Some((cmds, who)), as_admin, (user, req.admin.as_ref()), &scrub).await;
                    // Removing others never touches `keep`; a fresh login proves it.
                    let after =
                        self.check(user, &req.keep, &format!("user {name} with its current password"), &scrub).await;
                    return match after? {
                        VerifyResponse::Accepted => Ok(RetirePasswordsResponse { removed }),
                        VerifyResponse::Rejected => Err(RotatorError::Permanent(format!(
                            "user {name} on {}: old passwords were retired, and now the current one does not log in \
                             either (changed by someone else meanwhile?)",
                            self.server()
                        ))),
                    };
                }
                Err(Refusal::NoPerm(text)) if !as_admin => cannot.push(format!("{who} may not change ACLs: {text}")),
                Err(e) => return Err(e.into_error(&format!("retiring old passwords of user {name} as {who}"))),
            }
        }
        if req.admin.is_none() {
            cannot.push("no admin credential configured".to_owned());
        }
        Err(RotatorError::Permanent(format!(
            "no login could retire old passwords of user {name} on {}: {}",
            self.server(),
            cannot.join("; ")
        )))
    }
}

/// What Redis stores of a password: the lower-case hex of its SHA-256 (sent as `#<hex>`).
pub fn acl_hash(password: &SecretString) -> Zeroizing<String> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, password.expose_secret().as_bytes());
    Zeroizing::new(hex::encode(digest.as_ref()))
}

/// Sends `AUTH user password` as one RESP array, from a buffer that is zeroized.
async fn auth(stream: &mut Box<dyn Stream>, user: &str, password: &SecretString) -> std::io::Result<()> {
    let password = password.expose_secret().as_bytes();
    let mut frame = Zeroizing::new(Vec::with_capacity(32 + user.len() + password.len()));
    frame.extend_from_slice(b"*3\r\n$4\r\nAUTH\r\n");
    for part in [user.as_bytes(), password] {
        frame.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        frame.extend_from_slice(part);
        frame.extend_from_slice(b"\r\n");
    }
    stream.write_all(&frame).await?;
    stream.flush().await
}

/// One reply line, without its CRLF (a simple string or an error).
async fn read_line(stream: &mut Box<dyn Stream>) -> std::io::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(Vec::new());
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' && line.last() == Some(&b'\r') {
            line.pop();
            return Ok(Zeroizing::new(String::from_utf8_lossy(&line).into_owned()));
        }
        if line.len() >= MAX_AUTH_REPLY {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "over-long reply to AUTH"));
        }
        line.push(byte);
    }
}

/// A reply to `AUTH` that is neither `+OK` nor `-WRONGPASS`.
fn reply_error(line: &str, context: &str, scrub: &Scrubber) -> RotatorError {
    let clean = Zeroizing::new(scrub.clean(line.to_owned()));
    let code = clean.trim_start_matches('-').split(' ').next().unwrap_or_default();
    let text = shown_text(scrub, clean.to_string());
    if is_transient_code(code) {
        RotatorError::Transient(format!("{context}: {text}"))
    } else {
        RotatorError::Permanent(format!("{context}: {text}"))
    }
}

fn is_transient_code(code: &str) -> bool {
    matches!(code, "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN")
}

fn classify(e: &::redis::RedisError, context: &str, scrub: &Scrubber) -> RotatorError {
    let text = shown_text(scrub, e.to_string());
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.code().is_some_and(is_transient_code) {
        RotatorError::Transient(format!("{context}: {text}"))
    } else {
        RotatorError::Permanent(format!("{context}: {text}"))
    }
}

/// The `flags` of an `ACL GETUSER` reply.
fn flags_of(value: &Value) -> Vec<String> {
    field(value, "flags")
        .and_then(|flags| match flags {
            Value::Array(items) | Value::Set(items) => Some(items.iter().filter_map(text_of).collect()),
            _ => None,
        })
        .unwrap_or_default()
}

/// The password hashes of an `ACL GETUSER` reply (lower-case hex SHA-256).
fn passwords_of(value: &Value) -> Vec<Zeroizing<String>> {
    field(value, "passwords")
        .and_then(|list| match list {
            Value::Array(items) | Value::Set(items) => {
                Some(items.iter().filter_map(text_of).map(|h| Zeroizing::new(h.to_ascii_lowercase())).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

/// The value of `CONFIG GET aclfile`.
fn aclfile_of(value: &Value) -> Option<String> {
    field(value, "aclfile").and_then(text_of)
}

/// `key`'s value in a RESP2 flat array of pairs or a RESP3 map.
fn field<'v>(value: &'v Value, key: &str) -> Option<&'v Value> {
    match value {
        Value::Array(items) => {
            items.chunks(2).find(|pair| text_of(&pair[0]).as_deref() == Some(key)).and_then(|pair| pair.get(1))
        }
        Value::Map(pairs) => pairs.iter().find(|(k, _)| text_of(k).as_deref() == Some(key)).map(|(_, v)| v),
        _ => None,
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Text from the server, or a library's error, as messages show it ([`Scrubber::shown`]).
fn shown_text(scrub: &Scrubber, text: String) -> String {
    scrub.shown(text)
}

/// A user name in messages.
fn quote(name: &str) -> String {
    format!("{name:?}")
}

fn check_user_name(name: &str) -> RotatorResult<()> {
    if name.is_empty() {
        return Err(RotatorError::Permanent("the user name is empty".to_owned()));
    }
    // Redis refuses these in ACL user names.
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RotatorError::Permanent(format!(
            "user name {} contains a space or a control character",
            quote(name)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_hash_is_lower_case_sha256_hex() {
        let hash = acl_hash(&SecretString::from("foo".to_owned()));
        assert_eq!(hash.as_str(), "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae");
    }

    #[test]
    fn config_defaults_and_refusals() {
        let cfg: RedisConfig = serde_json::from_str(r#"{"host": "cache"}"#).unwrap();
        assert_eq!(cfg, RedisConfig::new("cache"));
        assert_eq!(cfg.port, 6379);
        assert_eq!(cfg.tls, TlsMode::VerifyFull, "verified TLS unless told otherwise");
        assert_eq!(cfg.acl_save, AclSave::Required, "saved unless told otherwise");
        let err = |json: &str| serde_json::from_str::<RedisConfig>(json).unwrap_err().to_string();
        assert!(err(r#"{"host": "c", "acl_sav": "never"}"#).contains("unknown field `acl_sav`"));
        assert!(err(r#"{"host": "c", "acl_save": "sometimes"}"#).contains("unknown variant `sometimes`"));
        assert!(err(r#"{"host": "c", "tls": "require"}"#).contains("tls \"require\" is refused"));
    }

    #[test]
    fn tls_combinations_that_only_look_protected_are_refused() {
        let refused = |adjust: &dyn Fn(&mut RedisConfig)| {
            let mut cfg = RedisConfig::new("cache");
            adjust(&mut cfg);
            RedisRotator::new(cfg, PasswordPolicy::default()).unwrap_err().to_string()
        };
        assert!(refused(&|c| c.tls = TlsMode::VerifyCa).contains("without tls_ca_file"));
        let e = refused(&|c| {
            c.tls = TlsMode::Disable;
            c.tls_server_name = Some("cache.example".into());
        });
        assert!(e.contains("tls_server_name with tls = \"disable\""), "{e}");
        let e = refused(&|c| {
            c.tls = TlsMode::Disable;
            c.tls_ca_file = Some("/nonexistent/ca.pem".into());
        });
        assert!(e.contains("tls_ca_file"), "{e}");
        let e = refused(&|c| c.tls = TlsMode::Disable);
        assert!(e.contains("loopback"), "plaintext AUTH to another host: {e}");
        for host in ["127.0.0.1", "localhost", "::1"] {
            let mut cfg = RedisConfig::new(host);
            cfg.tls = TlsMode::Disable;
            assert!(RedisRotator::new(cfg, PasswordPolicy::default()).is_ok(), "{host}");
        }
    }

    #[test]
    fn replies_are_read_as_pairs_or_maps() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let getuser = Value::Array(vec![
            bulk("flags"),
            Value::Array(vec![bulk("on"), bulk("sanitize-payload")]),
            bulk("passwords"),
        ]);
        assert_eq!(flags_of(&getuser), ["on", "sanitize-payload"]);
        assert_eq!(
            aclfile_of(&Value::Array(vec![bulk("aclfile"), bulk("/etc/redis/users.acl")])).unwrap(),
            "/etc/redis/users.acl"
        );
        assert_eq!(aclfile_of(&Value::Map(vec![(bulk("aclfile"), bulk(""))])).unwrap(), "");
        assert_eq!(aclfile_of(&Value::Nil), None);
    }

    #[test]
    fn user_names_redis_refuses_are_refused_here() {
        assert!(check_user_name("").is_err());
        assert!(check_user_name("a b").is_err());
        assert!(check_user_name("a\nb").is_err());
        assert!(check_user_name("app-1").is_ok());
    }
}
