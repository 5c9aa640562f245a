//! LDAP rotator (OpenLDAP and other directories with RFC 3062): single-user.
//!
//! - [`LdapConfig`]: where the directory is (`url`), how the connection is protected
//!   (`ldaps://`, or `ldap://` with `starttls`; `tls`, `tls_ca_file`, `tls_server_name`),
//!   and how a secret's account becomes a DN (`user_dn_template`): a target profile with
//!   `kind = "ldap"`.
//! - [`LdapRotator`]: the [`Rotator`]. `verify` opens a fresh connection and makes a simple
//!   bind as the account's DN, then asks the server who it is bound as (Who Am I?,
//!   RFC 4532); `set_password` tries the pending password first (unless the engine just
//!   journaled it: `pending_is_new`), then binds as the user with its current password,
//!   then each previous one, then as the admin DN, and changes the password with the
//!   Password Modify extended operation (RFC 3062); a fresh bind with the new password
//!   ends it (`pending_verified`).
//! - [`user_dn`]: the account's DN from the template, its value escaped per RFC 4514.
//! - [`offers`]: the strategies the kind offers (single-user only); with
//!   [`crate::registry::KindSettings`] for [`LdapConfig`], the kind `ldap` of
//!   [`crate::registry::Registry::builtin`].
//!
//! **The account is untrusted.** A secret's `CredentialId` tag is whatever someone with
//! write access to the tags wrote. It becomes the value of the template's first RDN and
//! nothing else: empty values and control characters (NUL included) are refused, and
//! every character with a meaning in a DN (`,` `+` `"` `\` `<` `>` `;` `=`, a leading `#`
//! or space, a trailing space) is escaped, so `x,ou=admins` names the entry whose `uid`
//! is literally `x,ou=admins` under the template's base, never an entry elsewhere. `*` has
//! no meaning in a DN (only in search filters, which this rotator never builds). The
//! admin DN is never rotated through a profile whose admin it is: a user DN equal to it
//! is refused.
//!
//! **Password Modify.** As the user: bind with the password tried, then `userIdentity` =
//! the user's DN, `oldPasswd` = that password, `newPasswd` = the pending one (the server
//! checks the old password again and applies its password policy). As the admin: bind as
//! the admin DN, then `userIdentity` = the user's DN, `newPasswd` = the pending one. The
//! server hashes the new password itself (OpenLDAP's `password-hash`). Directories without
//! RFC 3062 (Active Directory) refuse the operation: a permanent error saying so.
//!
//! **No empty password is ever sent.** A simple bind with a DN and an empty password is
//! an *unauthenticated* bind (RFC 4513 §5.1.2), which many servers answer with success: an
//! empty password would "log in" as anyone. `verify` answers `Rejected` for one without
//! asking the server, `set_password` refuses an empty pending password, the logins it
//! tries leave empty ones out, and the bind itself refuses one as a last guard. After a
//! bind, Who Am I? must name an identity (an anonymous session answers an empty one).
//!
//! **TLS** (`tls`, [`TlsMode`]): `verify-full` by default, `verify-ca` with `tls_ca_file`;
//! over `ldaps://` (TLS from the first byte) or `ldap://` with `starttls = true` (the
//! StartTLS extended operation before any bind; a server that refuses it is a permanent
//! error, never a fallback to plain text). `tls = "disable"` is plain `ldap://` without
//! StartTLS, for a loopback host only ([`crate::tls::plaintext_only_on_loopback`]): a bind
//! sends the password itself. kv-rotator opens the TCP connection itself (so
//! `tls_server_name` can name the certificate's host while `url` names the address) and
//! hands it to the `ldap3` crate, built over rustls with aws-lc-rs and the configuration
//! of [`crate::tls::client_config`].
//!
//! Error mapping: bind result 49 (`invalidCredentials`) is "this login does not work"
//! ([`VerifyResponse::Rejected`], or the next login). On Password Modify, 50
//! (`insufficientAccessRights`) and 53 (`unwillingToPerform`) mean this login may not
//! change it (the next login is tried); 19 (`constraintViolation`: the server's password
//! policy — quality, length, history, minimum age) likewise, and when no login could
//! change it and one was refused so, the result is [`RotatorError::Refused`]. `busy`,
//! `unavailable`, `timeLimitExceeded`, `adminLimitExceeded`, refused connections and
//! timeouts before a change is sent are [`RotatorError::Transient`]; a lost answer to a
//! Password Modify is [`RotatorError::NotYetVisible`] (it may have been applied). A
//! refused certificate, a refused StartTLS, a referral (a read-only replica: point `url`
//! at the provider), an unsupported operation and a missing entry are permanent. Every
//! message is scrubbed of the passwords; text from the server or a library is scrubbed,
//! cut and escaped ([`Scrubber::shown`]).
//!
//! What `ldap3` holds: the passwords it encodes into BER messages live in its own buffers
//! (not zeroized) until they are written to the connection; it logs through `log`, whose
//! records the worker caps at INFO for dependencies, and none of its messages carries a
//! request's content.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ldap3::exop::{PasswordModify, WhoAmI};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, StdStream};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::common::{after_change, already_set, chain_text, find_cause, logins, no_login, pending_may_work, Strategy};
use crate::scrub::Scrubber;
pub use crate::tls::{TlsMode, TlsSetupError};
use crate::{
    PasswordPolicy, Rotator, RotatorError, RotatorResult, SetPasswordOutcome, SetPasswordRequest, SetPasswordResponse,
    VerifyRequest, VerifyResponse,
};

/// The placeholder `user_dn_template` holds once, as the whole value of its first RDN.
pub const PLACEHOLDER: &str = "{}";

/// Connection settings of an LDAP target.
///
/// ```toml
/// [targets.directory]
/// kind = "ldap"
/// url = "ldaps://ldap.example.com"   # or "ldap://ldap.example.com" with starttls = true
/// # starttls = false                 # ldap:// only: StartTLS before any bind
/// tls = "verify-full"                # the default; also "verify-ca" (with tls_ca_file), "disable" (loopback only)
/// # tls_ca_file = "/etc/kv-rotator/ldap-ca.pem"   # default: the system's CA store
/// # tls_server_name = "ldap.example.com"          # default: the url's host
/// user_dn_template = "uid={},ou=people,dc=example,dc=com"
/// connect_timeout_secs = 10
/// accounts = ["svc-*"]
/// admin = { username = "cn=kv-rotator,ou=services,dc=example,dc=com", secret = "ldap-rotator" }
/// ```
///
/// The admin login's `username` is its bind DN.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldaps://host[:port]` (default port 636) or `ldap://host[:port]` (default 389); no
    /// DN, attributes or other parts.
    pub url: String,
    /// `ldap://` only: upgrade the connection with StartTLS before any bind. Required for
    /// `ldap://` unless `tls = "disable"`; refused with `ldaps://`. Default false.
    #[serde(default)]
    pub starttls: bool,
    /// Transport security: `verify-full` (default), `verify-ca` (with `tls_ca_file`), or
    /// `disable` (plain `ldap://` without StartTLS, loopback hosts only).
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file of the CA certificates `verify-ca` and `verify-full` trust. Default: the
    /// system's store (not with `verify-ca`); refused with `disable`.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the url's host.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// The DN of a secret's account: `{}` is replaced by its `CredentialId`, escaped per
    /// RFC 4514. It must be the whole value of the first RDN (`uid={},ou=people,…`).
    pub user_dn_template: String,
    /// Limit, in seconds, on establishing a connection (TCP, TLS, StartTLS) and on each
    /// operation (bind, Who Am I?, Password Modify). Default 10; at least 1.
    #[serde(default = "default_connect_timeout", deserialize_with = "crate::common::positive_secs")]
    pub connect_timeout_secs: u64,
}

fn default_connect_timeout() -> u64 {
    10
}

impl LdapConfig {
    /// A configuration with the defaults for everything but the url and the template.
    pub fn new(url: impl Into<String>, user_dn_template: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            starttls: false,
            tls: TlsMode::default(),
            tls_ca_file: None,
            tls_server_name: None,
            user_dn_template: user_dn_template.into(),
            connect_timeout_secs: default_connect_timeout(),
        }
    }
}

/// Whether the `ldap` kind offers `strategy`; if not, why (for the configuration error).
pub fn offers(strategy: Strategy) -> Result<(), &'static str> {
    match strategy {
        Strategy::SingleUser => Ok(()),
        Strategy::MultiPassword => Err("an LDAP entry's userPassword is replaced by Password Modify (RFC 3062): one \
                                        password per account"),
        Strategy::AlternatingUsers => {
            Err("the LDAP rotator does not create entries (alternating users needs a twin entry made and kept alike)")
        }
    }
}

impl crate::registry::KindSettings for LdapConfig {
    fn offers(&self, strategy: Strategy) -> Result<(), std::borrow::Cow<'static, str>> {
        offers(strategy).map_err(Into::into)
    }

    fn build(
        &self,
        profile: &crate::registry::ProfileContext<'_>,
    ) -> Result<Arc<dyn Rotator>, crate::registry::BuildError> {
        Ok(Arc::new(LdapRotator::new(self.clone(), profile.password.clone())?))
    }
}

/// The DN of `account` under `template` (checked by [`LdapRotator::new`]): the account
/// escaped per RFC 4514 in place of `{}`. Refused: an empty account, or one with a control
/// character (NUL included).
pub fn user_dn(template: &str, account: &str) -> RotatorResult<String> {
    if account.is_empty() {
        return Err(RotatorError::Permanent("the account name (CredentialId) is empty".to_owned()));
    }
    if account.chars().any(char::is_control) {
        return Err(RotatorError::Permanent(format!("account name {} contains a control character", quote(account))));
    }
    // The directory compares DNs after Unicode folding and space collapsing (the Kelvin
    // sign is a `k`, two spaces are one): a name this rotator would compare as another
    // could still name the admin's entry. Printable ASCII, single inner spaces only.
    if !account.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        || account.starts_with(' ')
        || account.ends_with(' ')
        || account.contains("  ")
    {
        return Err(RotatorError::Permanent(format!(
            "account name {} is refused: LDAP account names are printable ASCII with single inner spaces (the \
             directory folds other characters and spaces into names this rotator cannot compare)",
            quote(account)
        )));
    }
    Ok(template.replacen(PLACEHOLDER, &ldap3::dn_escape(account), 1))
}

/// Refuses a template that would let the account be anything but the first RDN's value.
fn check_template(template: &str) -> Result<(), TlsSetupError> {
    let bad = |why: &str| TlsSetupError::Combination(format!("user_dn_template {}: {why}", quote(template)));
    if template.matches(PLACEHOLDER).count() != 1 || template.matches(['{', '}']).count() != 2 {
        return Err(bad("must hold `{}` exactly once, and no other brace"));
    }
    let (attr, rest) = template.split_once('=').ok_or_else(|| bad("must start with `attribute={}`"))?;
    let keystring = attr.starts_with(|c: char| c.is_ascii_alphabetic())
        && attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let oid = !attr.is_empty() && attr.split('.').all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if !(keystring || oid) {
        return Err(bad("must start with an attribute type, then `={}`"));
    }
    let Some(base) = rest.strip_prefix(PLACEHOLDER) else {
        return Err(bad("`{}` must be the whole value of the first RDN (`uid={},ou=people,…`)"));
    };
    if !(base.is_empty() || base.starts_with(',') && base.len() > 1) {
        return Err(bad("`{}` must be followed by `,` and the base DN, or nothing"));
    }
    if template.chars().any(char::is_control) {
        return Err(bad("holds a control character"));
    }
    Ok(())
}

/// Rotates the passwords of LDAP entries with Password Modify (single-user strategy);
/// see the [module docs](self).
///
/// Every operation opens its own connections, so one rotator serves concurrent
/// rotations of different users.
#[derive(Clone)]
pub struct LdapRotator {
    cfg: LdapConfig,
    policy: PasswordPolicy,
    /// Where the TCP connection goes.
    host: String,
    port: u16,
    /// What `ldap3` is given: the scheme and the name the certificate must carry.
    conn_url: url::Url,
    /// Built once; `None` for `disable`.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `scheme://host:port`, for messages.
    server: String,
}

impl fmt::Debug for LdapRotator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapRotator").field("cfg", &self.cfg).field("policy", &self.policy).finish_non_exhaustive()
    }
}

/// An open connection; its driver task ends with it.
struct Session {
    ldap: Ldap,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// How a bind ended.
enum Bound {
    /// Authenticated, the session ready for operations.
    Yes(Session),
    /// The server refused the credentials (`invalidCredentials`).
    Refused,
}

/// Why a Password Modify did not change the password, the login being the cause.
enum CannotChange {
    /// Not this login's right (`insufficientAccessRights`, `unwillingToPerform`).
    NotAllowed(String),
    /// The server's password policy refused the new password (`constraintViolation`).
    Policy(String),
}

const INVALID_CREDENTIALS: u32 = 49;

impl LdapRotator {
    /// A rotator for the directory in `cfg`, generating passwords under `policy`. Fails on
    /// a url, template or TLS setting that cannot work or only looks protected.
    pub fn new(cfg: LdapConfig, policy: PasswordPolicy) -> Result<Self, TlsSetupError> {
        let bad = |why: String| TlsSetupError::Combination(why);
        let url = url::Url::parse(&cfg.url).map_err(|e| bad(format!("url {}: {e}", quote(&cfg.url))))?;
        let ldaps = match url.scheme() {
            "ldaps" => true,
            "ldap" => false,
            other => return Err(bad(format!("url {}: scheme {other:?} is not ldap or ldaps", quote(&cfg.url)))),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(bad(format!("url {}: no host", quote(&cfg.url)))),
        };
        if !url.username().is_empty()
            || url.password().is_some()
            || !matches!(url.path(), "" | "/")
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(bad(format!(
                "url {}: only ldap[s]://host[:port] (the DN to change comes from user_dn_template)",
                quote(&cfg.url)
            )));
        }
        let port = url.port().unwrap_or(if ldaps { 636 } else { 389 });
        check_template(&cfg.user_dn_template)?;
        crate::tls::check_ca_file(cfg.tls, cfg.tls_ca_file.as_deref())?;
        let tls = match cfg.tls.verification() {
            None => {
                if ldaps || cfg.starttls {
                    return Err(bad(format!(
                        "tls = \"disable\" with {}: the url or starttls asks for TLS; use tls = \"verify-full\"",
                        if ldaps { "an ldaps:// url" } else { "starttls = true" }
                    )));
                }
                if cfg.tls_server_name.is_some() {
                    return Err(bad("tls_server_name with tls = \"disable\": no certificate is checked, so the name \
                                    would only look like protection"
                        .to_owned()));
                }
                // A simple bind sends the password itself.
                crate::tls::plaintext_only_on_loopback("tls", &host, "tls_ca_file")?;
                None
            }
            Some(verification) => {
                if ldaps && cfg.starttls {
                    return Err(bad(
                        "starttls = true with an ldaps:// url: the connection is TLS from its first byte; \
                                    drop starttls"
                            .to_owned(),
                    ));
                }
                if !ldaps && !cfg.starttls {
                    return Err(bad(format!(
                        "url {} is plain ldap:// without starttls: every bind would send its password in clear; use \
                         ldaps://, or starttls = true, or (loopback only, knowingly) tls = \"disable\"",
                        quote(&cfg.url)
                    )));
                }
                Some(crate::tls::client_config(verification, cfg.tls_ca_file.as_deref(), "tls_ca_file")?)
            }
        };
        let name = cfg.tls_server_name.as_deref().unwrap_or(&host);
        if tls.is_some() && name.parse::<std::net::Ipv6Addr>().is_ok() {
            return Err(bad(format!(
                "TLS to the IPv6 address {name}: set tls_server_name to a DNS name the certificate carries"
            )));
        }
        // As the url wrote it (an IPv6 address in brackets), unless tls_server_name says.
        let url_name = cfg.tls_server_name.as_deref().or(url.host_str()).unwrap_or_default();
        let conn_url = url::Url::parse(&format!("{}://{url_name}:{port}", url.scheme()))
            .map_err(|e| bad(format!("tls_server_name {}: {e}", quote(name))))?;
        let server = format!("{}://{}:{port}", url.scheme(), url.host_str().unwrap_or_default());
        Ok(Self { cfg, policy, host, port, conn_url, tls, server })
    }

    /// Its connection settings.
    pub fn config(&self) -> &LdapConfig {
        &self.cfg
    }

    fn server(&self) -> &str {
        &self.server
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.connect_timeout_secs.max(1))
    }

    fn no_answer(&self, context: &str) -> String {
        format!("{context}: no answer within {}s", self.cfg.connect_timeout_secs)
    }

    /// Connects (TCP, then TLS or StartTLS), within the timeout.
    async fn connect(&self, context: &str, scrub: &Scrubber) -> RotatorResult<Session> {
        let open = async {
            let socket = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| RotatorError::Transient(format!("{context}: {}", scrub.shown(e.to_string()))))?;
            let _ = socket.set_nodelay(true);
            let socket = socket
                .into_std()
                .map_err(|e| RotatorError::Transient(format!("{context}: {}", scrub.shown(e.to_string()))))?;
            let mut settings = LdapConnSettings::new().set_std_stream(StdStream::Tcp(socket));
            if let Some(config) = &self.tls {
                settings = settings.set_config(Arc::clone(config)).set_starttls(self.cfg.starttls);
            }
            let (conn, ldap) = LdapConnAsync::from_url_with_settings(settings, &self.conn_url)
                .await
                .map_err(|e| self.connect_error(&e, context, scrub))?;
            let driver = tokio::spawn(async move {
                let _ = conn.drive().await;
            });
            Ok(Session { ldap, driver })
        };
        tokio::time::timeout(self.timeout(), open)
            .await
            .map_err(|_| RotatorError::Transient(self.no_answer(context)))?
    }

    fn connect_error(&self, e: &LdapError, context: &str, scrub: &Scrubber) -> RotatorError {
        let text = scrub.shown(chain_text(e));
        let mode = self.cfg.tls.as_str();
        if let Some(tls) = find_cause::<rustls::Error>(e) {
            return if crate::tls::is_certificate_error(tls) {
                RotatorError::Permanent(format!(
                    "{context}: the server's certificate was refused under tls {mode:?}: {text}"
                ))
            } else {
                // The port answered, but not with TLS (a plain port, another service).
                RotatorError::Permanent(format!(
                    "{context}: no TLS handshake under tls {mode:?} ({text}); is this the server's {} port?",
                    if self.cfg.starttls { "StartTLS" } else { "LDAPS" }
                ))
            };
        }
        match e {
            LdapError::LdapResult { result } => RotatorError::Permanent(format!(
                "{context}: the server refused StartTLS ({}); kv-rotator never falls back to plain text",
                result_text(result, scrub)
            )),
            LdapError::DNSName { .. } | LdapError::UrlParsing { .. } | LdapError::UnknownScheme(_) => {
                RotatorError::Permanent(format!("{context}: {text}"))
            }
            // A connection closed during the handshake may be a restart, or a port that
            // does not speak TLS this way: retried, with the hint.
            _ if self.tls.is_some() => RotatorError::Transient(format!(
                "{context}: {text} (is this the server's {} port?)",
                if self.cfg.starttls { "StartTLS" } else { "LDAPS" }
            )),
            _ => RotatorError::Transient(format!("{context}: {text}")),
        }
    }

    /// Connects and binds as `dn`; `Bound::Refused` when the server refused the password.
    async fn bind(&self, dn: &str, password: &SecretString, who: &str, scrub: &Scrubber) -> RotatorResult<Bound> {
        // The last guard: an empty password is an unauthenticated bind, which succeeds.
        if password.expose_secret().is_empty() {
            return Err(RotatorError::Permanent(format!(
                "{who}: an empty password is never sent (it would be an \
                                                        unauthenticated bind, which succeeds)"
            )));
        }
        let context = format!("binding to {} as {who}", self.server());
        let mut session = self.connect(&context, scrub).await?;
        let result = session.ldap.with_timeout(self.timeout()).simple_bind(dn, password.expose_secret()).await;
        let result = result.map_err(|e| self.op_error(&e, &context, scrub))?;
        match result.rc {
            0 => {}
            INVALID_CREDENTIALS => return Ok(Bound::Refused),
            _ => return Err(self.result_error(&result, &context, scrub)),
        }
        // Proof the session is authenticated: Who Am I? names an identity.
        let context = format!("asking who the session is (Who Am I?) on {} as {who}", self.server());
        let answer = session.ldap.with_timeout(self.timeout()).extended(WhoAmI).await;
        let ldap3::result::ExopResult(exop, result) = answer.map_err(|e| self.op_error(&e, &context, scrub))?;
        match result.rc {
            0 if exop.val.as_deref().is_some_and(|id| !id.is_empty()) => Ok(Bound::Yes(session)),
            0 => Err(RotatorError::Permanent(format!(
                "{context}: the bind succeeded but the session is anonymous; the server does not check this password"
            ))),
            _ => Err(self.result_error(&result, &context, scrub)),
        }
    }

    /// Whether `password` binds as `dn` (a fresh connection).
    async fn check(
        &self,
        dn: &str,
        password: &SecretString,
        who: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<VerifyResponse> {
        Ok(match self.bind(dn, password, who, scrub).await? {
            Bound::Yes(mut session) => {
                let _ = tokio::time::timeout(self.timeout(), session.ldap.unbind()).await;
                VerifyResponse::Accepted
            }
            Bound::Refused => VerifyResponse::Rejected,
        })
    }

    /// Password Modify of `user_dn` through `session`; `Ok(Err(why))` when the server
    /// answered that this login may not make it.
    async fn change(
        &self,
        session: &mut Session,
        user_dn: &str,
        old: Option<&SecretString>,
        pending: &SecretString,
        context: &str,
        scrub: &Scrubber,
    ) -> RotatorResult<Result<(), CannotChange>> {
        let exop = PasswordModify {
            user_id: Some(user_dn),
            old_pass: old.map(|p| p.expose_secret()),
            new_pass: Some(pending.expose_secret()),
        };
        let answer = session.ldap.with_timeout(self.timeout()).extended(exop).await;
        // Sent: an unanswered change may have been applied.
        let ldap3::result::ExopResult(_, result) = answer.map_err(|e| match self.op_error(&e, context, scrub) {
            RotatorError::Transient(m) => RotatorError::NotYetVisible(m),
            other => other,
        })?;
        let text = || result_text(&result, scrub);
        Ok(match result.rc {
            0 => Ok(()),
            50 | 53 => Err(CannotChange::NotAllowed(format!("{context}: {}", text()))),
            19 => Err(CannotChange::Policy(format!("{context}: {}", text()))),
            32 => {
                return Err(RotatorError::Permanent(format!("{context}: no such entry ({})", text())));
            }
            2 | 12 => {
                return Err(RotatorError::Permanent(format!(
                    "{context}: the server does not support the Password Modify extended operation (RFC 3062) ({}); \
                     Active Directory does not (see docs/deploy.md)",
                    text()
                )));
            }
            // Codes that say the change was not applied keep their class.
            10 | 13 | 8 | 34 => return Err(self.result_error(&result, context, scrub)),
            // Any other answer may come after the change was applied: a proxy (lloadd,
            // back-ldap, a chain overlay) that lost its upstream answers 52 or 80 for a
            // write the provider made. The engine keeps the pending password.
            _ => return Err(RotatorError::NotYetVisible(self.result_error(&result, context, scrub).to_string())),
        })
    }

    /// An operation that failed without a result (timeout, lost connection).
    fn op_error(&self, e: &LdapError, context: &str, scrub: &Scrubber) -> RotatorError {
        match e {
            LdapError::Timeout { .. } => RotatorError::Transient(self.no_answer(context)),
            LdapError::LdapResult { result } => self.result_error(result, context, scrub),
            _ => RotatorError::Transient(format!("{context}: {}", scrub.shown(chain_text(e)))),
        }
    }

    /// A result code that is not the operation's success, classified.
    fn result_error(&self, result: &LdapResult, context: &str, scrub: &Scrubber) -> RotatorError {
        let text = result_text(result, scrub);
        match result.rc {
            // busy, unavailable, timeLimitExceeded, adminLimitExceeded
            51 | 52 | 3 | 11 => RotatorError::Transient(format!("{context}: {text}")),
            10 => RotatorError::Permanent(format!(
                "{context}: referred elsewhere ({text}); a read-only replica refers changes to its provider: point \
                 url at the provider"
            )),
            13 | 8 => RotatorError::Permanent(format!("{context}: the server wants a stronger protection ({text})")),
            _ => RotatorError::Permanent(format!("{context}: {text}")),
        }
    }

    fn user_dn(&self, account: &str) -> RotatorResult<String> {
        user_dn(&self.cfg.user_dn_template, account)
    }
}

/// An LDAP result as messages show it: its code, name and the server's text (scrubbed,
/// cut, escaped), never the referrals' or matched DN's raw text unescaped.
fn result_text(result: &LdapResult, scrub: &Scrubber) -> String {
    // ldap3's Display: `rc=19 (constraintViolation), dn: "…", text: "…"`; only the name.
    let full = result.to_string();
    let name = full.split_once(" (").and_then(|(_, rest)| rest.split_once(')')).map_or("unknown", |(name, _)| name);
    let mut text = format!("result {} {name}", result.rc);
    if !result.text.is_empty() {
        text.push_str(&format!(", {}", scrub.shown(result.text.clone())));
    }
    if !result.refs.is_empty() {
        text.push_str(&format!(", referrals {}", scrub.shown(result.refs.join(" "))));
    }
    text
}

/// A name or DN in messages.
fn quote(name: &str) -> String {
    format!("{name:?}")
}

/// The same DN, whatever the case and the spaces after separators (enough to recognize
/// the admin's own DN written from the template).
fn same_dn(a: &str, b: &str) -> bool {
    let norm = |dn: &str| dn.split(',').map(|rdn| rdn.trim().to_ascii_lowercase()).collect::<Vec<_>>();
    norm(a) == norm(b)
}

#[async_trait]
impl Rotator for LdapRotator {
    fn kind(&self) -> &'static str {
        "ldap"
    }

    fn password_policy(&self) -> &PasswordPolicy {
        &self.policy
    }

    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        let dn = self.user_dn(&req.username)?;
        if req.pending.expose_secret().is_empty() {
            return Err(RotatorError::Refused("the pending password is empty".to_owned()));
        }
        if let Some(admin) = &req.admin {
            if admin.username.is_empty() || admin.username.chars().any(char::is_control) {
                return Err(RotatorError::Permanent(format!(
                    "the admin login's username {} is not a bind DN",
                    quote(&admin.username)
                )));
            }
            if same_dn(&admin.username, &dn) {
                return Err(RotatorError::Permanent(format!(
                    "account {} is the admin DN {} of this profile: it is not rotated through its own profile",
                    quote(&req.username),
                    quote(&admin.username)
                )));
            }
        }
        let scrub = Scrubber::for_request(&req, []);
        let name = format!("entry {}", quote(&dn));

        // Idempotency: a retry after a crash between the change and finish lands here.
        if pending_may_work(&req) {
            let who = format!("{name} with the pending password");
            if self.check(&dn, &req.pending, &who, &scrub).await? == VerifyResponse::Accepted {
                return Ok(already_set());
            }
        }

        let (mut refused, mut cannot, mut policy) = (Vec::new(), Vec::new(), Vec::new());
        for login in logins(&req, &name, quote) {
            let who = login.who;
            let as_user = login.outcome != SetPasswordOutcome::ChangedWithAdmin;
            let bind_dn = if as_user { dn.as_str() } else { login.user };
            let Bound::Yes(mut session) = self.bind(bind_dn, login.password, &who, &scrub).await? else {
                refused.push(who);
                continue;
            };
            let context = format!("changing the password of {name} on {} as {who}", self.server());
            let old = as_user.then_some(login.password);
            match self.change(&mut session, &dn, old, &req.pending, &context, &scrub).await? {
                Ok(()) => {}
                Err(CannotChange::NotAllowed(why)) => {
                    cannot.push(why);
                    continue;
                }
                Err(CannotChange::Policy(why)) => {
                    policy.push(why);
                    continue;
                }
            }
            let _ = tokio::time::timeout(self.timeout(), session.ldap.unbind()).await;
            drop(session);
            // A fresh connection proves the new password works end to end.
            let after = self.check(&dn, &req.pending, &format!("{name} with the new password"), &scrub).await;
            return after_change(after, login.outcome, || {
                format!(
                    "the password of {name} was changed as {who}, but the new password does not bind on {} yet (a \
                     replica behind a load balancer?)",
                    self.server()
                )
            });
        }
        if !policy.is_empty() {
            return Err(RotatorError::Refused(format!(
                "the directory's password policy refused the new password of {name}: {}",
                policy.join("; ")
            )));
        }
        Err(no_login(&name, self.server(), &refused, cannot, req.admin.is_some()))
    }

    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        let dn = self.user_dn(&req.username)?;
        // An empty password is an unauthenticated bind: it proves nothing, and is no login.
        if req.password.expose_secret().is_empty() {
            return Ok(VerifyResponse::Rejected);
        }
        let scrub = Scrubber::new([&req.password]);
        self.check(&dn, &req.password, &format!("entry {}", quote(&dn)), &scrub).await
    }

    /// A bind as the admin DN itself (not through the template), and Who Am I?.
    async fn check_admin(&self, admin: &crate::Credential) -> RotatorResult<crate::AdminCheck> {
        let dn = &admin.username;
        if dn.is_empty() || dn.chars().any(char::is_control) {
            return Err(RotatorError::Permanent(format!("the admin login's username {} is not a bind DN", quote(dn))));
        }
        if admin.password.expose_secret().is_empty() {
            return Ok(crate::AdminCheck::Refused);
        }
        let scrub = Scrubber::new([&admin.password]);
        Ok(match self.check(dn, &admin.password, &format!("the admin DN {}", quote(dn)), &scrub).await? {
            VerifyResponse::Accepted => crate::AdminCheck::Works(format!("the admin DN {} binds", quote(dn))),
            VerifyResponse::Rejected => crate::AdminCheck::Refused,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = "uid={},ou=people,dc=kvr,dc=test";

    fn config(url: &str) -> LdapConfig {
        LdapConfig::new(url, TEMPLATE)
    }

    fn refused(adjust: impl FnOnce(&mut LdapConfig)) -> String {
        let mut cfg = config("ldaps://ldap.example");
        adjust(&mut cfg);
        LdapRotator::new(cfg, PasswordPolicy::default()).unwrap_err().to_string()
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let cfg: LdapConfig =
            serde_json::from_str(r#"{"url": "ldaps://ldap.example", "user_dn_template": "uid={},dc=x"}"#).unwrap();
        assert_eq!(cfg, LdapConfig::new("ldaps://ldap.example", "uid={},dc=x"));
        assert_eq!(cfg.tls, TlsMode::VerifyFull, "verified TLS unless told otherwise");
        assert!(!cfg.starttls);
        assert_eq!(cfg.connect_timeout_secs, 10);
        let err = |json: &str| serde_json::from_str::<LdapConfig>(json).unwrap_err().to_string();
        assert!(err(r#"{"url": "ldaps://l", "user_dn_template": "uid={}", "start_tls": true}"#)
            .contains("unknown field `start_tls`"));
        assert!(err(r#"{"url": "ldaps://l"}"#).contains("missing field `user_dn_template`"));
        assert!(err(r#"{"url": "ldaps://l", "user_dn_template": "uid={}", "tls": "require"}"#).contains("refused"));
        assert!(err(r#"{"url": "ldaps://l", "user_dn_template": "uid={}", "connect_timeout_secs": 0}"#)
            .contains("at least 1"));
    }

    #[test]
    fn plain_ldap_needs_starttls_or_a_knowing_disable_on_loopback() {
        let e = refused(|c| c.url = "ldap://ldap.example".into());
        assert!(e.contains("without starttls") && e.contains("in clear"), "{e}");
        let e = refused(|c| {
            c.url = "ldap://ldap.example".into();
            c.tls = TlsMode::Disable;
        });
        assert!(e.contains("loopback"), "{e}");
        let e = refused(|c| c.starttls = true);
        assert!(e.contains("starttls = true with an ldaps:// url"), "{e}");
        let e = refused(|c| c.tls = TlsMode::Disable);
        assert!(e.contains("tls = \"disable\" with an ldaps:// url"), "{e}");
        let e = refused(|c| {
            c.url = "ldap://127.0.0.1".into();
            c.tls = TlsMode::Disable;
            c.tls_server_name = Some("ldap.example".into());
        });
        assert!(e.contains("tls_server_name with tls = \"disable\""), "{e}");
        assert!(refused(|c| c.tls = TlsMode::VerifyCa).contains("without tls_ca_file"));

        for url in ["ldap://127.0.0.1:3389", "ldap://localhost", "ldap://[::1]:3389"] {
            let mut cfg = config(url);
            cfg.tls = TlsMode::Disable;
            let rotator = LdapRotator::new(cfg, PasswordPolicy::default()).unwrap();
            assert!(rotator.tls.is_none(), "{url}");
        }
        let mut cfg = config("ldap://ldap.example");
        cfg.starttls = true;
        let rotator = LdapRotator::new(cfg, PasswordPolicy::default()).unwrap();
        assert_eq!(rotator.port, 389);
        assert_eq!(LdapRotator::new(config("ldaps://ldap.example"), PasswordPolicy::default()).unwrap().port, 636);
    }

    #[test]
    fn urls_are_only_scheme_host_and_port() {
        for url in [
            "ldaps://ldap.example/dc=x",
            "ldaps://ldap.example/?uid",
            "ldaps://user:pw@ldap.example",
            "ldapi://%2fvar%2frun%2fslapd",
            "https://ldap.example",
            "ldaps://",
            "not a url",
        ] {
            let e = refused(|c| c.url = url.into());
            assert!(e.starts_with("url "), "{url}: {e}");
        }
        let e = refused(|c| c.url = "ldaps://[::1]".into());
        assert!(e.contains("IPv6") && e.contains("tls_server_name"), "{e}");
        let mut cfg = config("ldaps://[::1]:3636");
        cfg.tls_server_name = Some("localhost".into());
        let rotator = LdapRotator::new(cfg, PasswordPolicy::default()).unwrap();
        assert_eq!(
            (rotator.host.as_str(), rotator.port, rotator.conn_url.as_str()),
            ("::1", 3636, "ldaps://localhost:3636")
        );
    }

    #[test]
    fn templates_put_the_account_in_the_first_rdn_only() {
        for good in [TEMPLATE, "cn={}", "2.5.4.3={},o=x", "sAMAccountName={},ou=a b,dc=x"] {
            check_template(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "uid=x,ou=people",
            "uid={},ou={}",
            "uid={}x,ou=people",
            "uid=x{},ou=people",
            "{}=x,ou=people",
            "ou=people,uid={}",
            "uid={},",
            "uid={}+cn=x,dc=y",
            "u id={},dc=x",
            "uid={},ou=p{eople",
            "uid={},ou=\npeople",
        ] {
            assert!(check_template(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn accounts_are_escaped_per_rfc_4514_and_never_reach_beyond_their_rdn() {
        let dn = |account: &str| user_dn(TEMPLATE, account);
        assert_eq!(dn("app-1").unwrap(), "uid=app-1,ou=people,dc=kvr,dc=test");
        assert_eq!(dn("x,ou=admins").unwrap(), "uid=x\\2cou\\3dadmins,ou=people,dc=kvr,dc=test");
        assert_eq!(dn("a+b").unwrap(), "uid=a\\2bb,ou=people,dc=kvr,dc=test");
        assert_eq!(dn("#x").unwrap(), "uid=\\23x,ou=people,dc=kvr,dc=test");
        assert_eq!(dn("a\\b\"c<d>e;f").unwrap(), "uid=a\\5cb\\22c\\3cd\\3ee\\3bf,ou=people,dc=kvr,dc=test");
        assert_eq!(dn("*").unwrap(), "uid=*,ou=people,dc=kvr,dc=test", "`*` means nothing in a DN");
        assert_eq!(dn("{}").unwrap(), "uid={},ou=people,dc=kvr,dc=test", "replaced once, not re-expanded");
        // Names the directory would fold into another (the Kelvin sign is `k`, runs of
        // spaces are one, outer spaces go): the admin's own entry could hide behind one.
        for hostile in ["", "x\0", "a\nb", "\u{1b}[2J", "x\u{7f}", "\u{212A}v-rotator", "kv  rotator", " x", "x ", "ü"]
        {
            let e = dn(hostile).unwrap_err();
            assert!(matches!(e, RotatorError::Permanent(_)), "{hostile:?}");
            assert!(!e.to_string().contains('\n') && !e.to_string().contains('\u{1b}'), "{e}");
        }
        // Every escaped DN has exactly the template's RDN separators.
        for account in ["x,ou=admins", "a,b,c", "\\,", "x\\", ",", "=,+"] {
            let d = dn(account).unwrap();
            assert_eq!(d.matches(',').count(), TEMPLATE.matches(',').count(), "{account:?} → {d}");
        }
    }

    #[test]
    fn admin_dns_are_recognized_whatever_the_case_and_spaces() {
        assert!(same_dn("cn=Admin, dc=kvr, dc=test", "cn=admin,dc=kvr,dc=test"));
        assert!(!same_dn("cn=admin,dc=kvr,dc=test", "cn=admin2,dc=kvr,dc=test"));
    }

    #[test]
    fn single_user_only() {
        assert!(offers(Strategy::SingleUser).is_ok());
        assert!(offers(Strategy::MultiPassword).unwrap_err().contains("one password per account"));
        assert!(offers(Strategy::AlternatingUsers).is_err());
    }

    #[test]
    fn results_show_their_name_and_scrubbed_text() {
        let secret = SecretString::from("hunter2-secret".to_owned());
        let scrub = Scrubber::new([&secret]);
        let result = LdapResult {
            rc: 19,
            matched: String::new(),
            text: "Password fails quality: hunter2-secret\n".into(),
            refs: vec![],
            ctrls: vec![],
        };
        let text = result_text(&result, &scrub);
        assert_eq!(text, "result 19 constraintViolation, \"Password fails quality: [REDACTED]\\n\"");
    }

    #[tokio::test]
    async fn empty_passwords_are_never_sent() {
        // A port nobody listens on (bound, never listening: refused, and no one else can
        // take it meanwhile): any attempt to connect would be an error, not `Rejected`.
        let closed_socket = tokio::net::TcpSocket::new_v4().unwrap();
        closed_socket.bind((std::net::Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let port = closed_socket.local_addr().unwrap().port();
        let mut cfg = config(&format!("ldap://127.0.0.1:{port}"));
        cfg.tls = TlsMode::Disable;
        let rotator = LdapRotator::new(cfg, PasswordPolicy::default()).unwrap();
        let empty = SecretString::from(String::new());
        let verdict = rotator.verify(VerifyRequest { username: "app".into(), password: empty.clone() }).await;
        assert_eq!(verdict.unwrap(), VerifyResponse::Rejected);
        let scrub = Scrubber::new([]);
        let e = rotator.bind("uid=app,dc=x", &empty, "app", &scrub).await.err().unwrap();
        assert!(e.to_string().contains("never sent"), "{e}");
        let req = SetPasswordRequest {
            username: "app".into(),
            pending: empty.clone(),
            current: SecretString::from("c".to_owned()),
            previous: vec![],
            admin: None,
            pending_is_new: false,
        };
        assert!(matches!(rotator.set_password(req).await, Err(RotatorError::Refused(_))));
    }
}
