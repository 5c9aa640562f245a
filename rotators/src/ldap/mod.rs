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
//! The parts, each in its own file:
//! - `config`: [`LdapConfig`], [`offers`] and the `ldap` kind of the registry.
//! - `dn`: [`user_dn`] and the template and DN rules that keep an untrusted account inside
//!   its RDN (below, "The account is untrusted").
//! - `session`: one connection and what is done on it — connect (TLS or StartTLS), bind
//!   and Who Am I?, Password Modify — and how results and failures become errors (below,
//!   "Error mapping").
//! - here: [`LdapRotator`], its settings checked once ([`LdapRotator::new`]), and the
//!   [`Rotator`] methods: which logins are tried in which order.
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
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::ExposeSecret;

use self::dn::{check_template, same_dn};
use self::session::{Bound, CannotChange};
use crate::common::{after_change, already_set, logins, no_login, pending_may_work};
use crate::scrub::Scrubber;
pub use crate::tls::{TlsMode, TlsSetupError};
use crate::{
    PasswordPolicy, Rotator, RotatorError, RotatorResult, SetPasswordOutcome, SetPasswordRequest, SetPasswordResponse,
    VerifyRequest, VerifyResponse,
};

mod config;
mod dn;
mod session;

pub use self::config::{offers, LdapConfig};
pub use self::dn::{user_dn, PLACEHOLDER};

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
    fn user_dn(&self, account: &str) -> RotatorResult<String> {
        user_dn(&self.cfg.user_dn_template, account)
    }
}

/// A name or DN in messages.
fn quote(name: &str) -> String {
    format!("{name:?}")
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
    use secrecy::SecretString;

    use super::*;
    use crate::SetPasswordRequest;

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
