//! [`LdapConfig`]: where the directory is, how the connection is protected and how an
//! account becomes a DN; [`offers`]: the strategies of the `ldap` kind, which the registry
//! builds from these settings.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::{LdapRotator, TlsMode};
use crate::common::Strategy;
use crate::Rotator;

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn single_user_only() {
        assert!(offers(Strategy::SingleUser).is_ok());
        assert!(offers(Strategy::MultiPassword).unwrap_err().contains("one password per account"));
        assert!(offers(Strategy::AlternatingUsers).is_err());
    }
}
