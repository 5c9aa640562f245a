//! TLS to PostgreSQL over rustls: the `sslmode`, `sslrootcert` and `channel_binding` keys.
//!
//! The modes mean what they mean to libpq, minus the ones that let an attacker on the
//! path turn TLS off (`allow`, `prefer`):
//!
//! | `sslmode`     | encrypted | certificate chain checked | host name checked |
//! |---------------|-----------|---------------------------|-------------------|
//! | `disable`     | no        | —                         | —                 |
//! | `require`     | yes       | no                        | no                |
//! | `verify-ca`   | yes       | yes                       | no                |
//! | `verify-full` | yes       | yes                       | yes (default)     |
//!
//! Trust anchors are `sslrootcert` (a PEM file of CA certificates) or, for `verify-full`
//! only, the system's store: `verify-ca` against public CAs would accept any certificate
//! anyone can buy. Channel binding (`SCRAM-SHA-256-PLUS`, `tls-server-end-point`) ties
//! the login to the TLS session, so a man in the middle that the certificate check did
//! not stop cannot complete a login. With `require` and `verify-ca` it is what stops one,
//! so there it is required: under `prefer`, a man in the middle that talks plain TCP to
//! a server offering no `-PLUS` would get the SCRAM exchange and the new verifier, which
//! together yield a login.
//!
//! The combinations that look protected but are not are refused when the rotator is
//! built, naming the keys.

use std::sync::Arc;

use rustls::ClientConfig;
use serde::{Deserialize, Deserializer};

use crate::tls::Verification;
pub use crate::tls::{is_certificate_error, TlsSetupError};

/// How the connection is protected, named as libpq names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP: only for a server on the same host or a private network you trust.
    Disable,
    /// Encrypted, but any certificate is accepted: a passive listener learns nothing, an
    /// active one is stopped only by channel binding.
    Require,
    /// Encrypted; the certificate must chain to a trusted CA, for any host name.
    VerifyCa,
    /// Encrypted; the certificate must chain to a trusted CA and name the host.
    #[default]
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl<'de> Deserialize<'de> for SslMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        match value.as_str() {
            "disable" => Ok(SslMode::Disable),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" | "prefer" => Err(serde::de::Error::custom(format!(
                "sslmode {value:?} is refused: it falls back to plain TCP whenever the server (or anyone on the path) \
                 says no to TLS; use \"verify-full\", \"verify-ca\", \"require\" or, knowingly, \"disable\""
            ))),
            _ => Err(serde::de::Error::custom(format!(
                "unknown sslmode {value:?}: expected \"verify-full\", \"verify-ca\", \"require\" or \"disable\""
            ))),
        }
    }
}

/// Whether the login must be bound to the TLS session (libpq's `channel_binding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBinding {
    /// Never, even when the server offers it.
    Disable,
    /// When the server offers `SCRAM-SHA-256-PLUS` over TLS.
    Prefer,
    /// Always: a server that cannot (no TLS, no SCRAM, an old server) is refused, and so
    /// is a cleartext or MD5 password request whatever `allow_weak_auth` says.
    Require,
}

impl ChannelBinding {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }
}

impl From<ChannelBinding> for tokio_postgres::config::ChannelBinding {
    fn from(value: ChannelBinding) -> Self {
        match value {
            ChannelBinding::Disable => Self::Disable,
            ChannelBinding::Prefer => Self::Prefer,
            ChannelBinding::Require => Self::Require,
        }
    }
}

/// The rustls client configuration for a profile; `None` for `disable` (accepted only for
/// a loopback host: [`crate::tls::plaintext_only_on_loopback`]). Refuses the
/// combinations of `sslmode`, `sslrootcert`, `channel_binding` and `allow_weak_auth` that
/// look protected but are not.
pub fn client_config(cfg: &super::PostgresConfig) -> Result<Option<Arc<ClientConfig>>, TlsSetupError> {
    check_combination(cfg)?;
    let (mode, root_cert) = (cfg.sslmode, cfg.sslrootcert.as_deref());
    if let (SslMode::Disable | SslMode::Require, Some(path)) = (mode, root_cert) {
        return Err(TlsSetupError::RootCert {
            key: "sslrootcert",
            path: path.to_owned(),
            reason: format!(
                "is only read with sslmode \"verify-ca\" or \"verify-full\", not {:?}: a CA that is never checked \
                 would only look like protection",
                mode.as_str()
            ),
        });
    }
    let verification = match mode {
        SslMode::Disable => {
            crate::tls::plaintext_only_on_loopback("sslmode", &cfg.host, "sslrootcert")?;
            return Ok(None);
        }
        SslMode::Require => Verification::AnyCertificate,
        SslMode::VerifyCa => Verification::Chain,
        SslMode::VerifyFull => Verification::Full,
    };
    crate::tls::client_config(verification, root_cert, "sslrootcert").map(Some)
}

fn check_combination(cfg: &super::PostgresConfig) -> Result<(), TlsSetupError> {
    let mode = cfg.sslmode.as_str();
    let refuse = |why: String| Err(TlsSetupError::Combination(why));
    match (cfg.sslmode, cfg.channel_binding) {
        (SslMode::Require | SslMode::VerifyCa, Some(binding @ (ChannelBinding::Prefer | ChannelBinding::Disable))) => {
            return refuse(format!(
                "channel_binding = {:?} with sslmode = {mode:?}: without a checked host name, channel binding is what stops a man in the middle, so it must be \"require\" (the default); or use sslmode = \"verify-full\"",
                binding.as_str()
            ))
        }
        (SslMode::Disable, Some(ChannelBinding::Require)) => {
            return refuse(
                "channel_binding = \"require\" with sslmode = \"disable\": channel binding needs TLS, so every login \
                 would fail"
                    .to_owned(),
            )
        }
        _ => {}
    }
    if cfg.sslmode == SslMode::VerifyCa && cfg.sslrootcert.is_none() {
        return refuse(
            "sslmode = \"verify-ca\" without sslrootcert: against the system's public CAs it would accept a \
             certificate anyone can buy for any name; set sslrootcert to your private CA, or use \"verify-full\""
                .to_owned(),
        );
    }
    if cfg.allow_weak_auth && cfg.sslmode != SslMode::VerifyFull {
        return refuse(format!(
            "allow_weak_auth = true with sslmode = {mode:?}: a cleartext or MD5 password may only go to a server whose \
             certificate names it (sslmode = \"verify-full\")"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmodes_parse_and_downgradable_ones_are_refused() {
        let parse = |v: &str| serde_json::from_value::<SslMode>(serde_json::json!(v)).map_err(|e| e.to_string());
        for mode in [SslMode::Disable, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(parse(mode.as_str()).unwrap(), mode);
        }
        for downgradable in ["allow", "prefer"] {
            let e = parse(downgradable).unwrap_err();
            assert!(e.contains("refused") && e.contains("falls back to plain TCP"), "{e}");
        }
        assert!(parse("verify_full").unwrap_err().contains("unknown sslmode"));
    }

    fn config(mode: SslMode, adjust: impl FnOnce(&mut super::super::PostgresConfig)) -> super::super::PostgresConfig {
        let mut cfg = super::super::PostgresConfig::new("db");
        cfg.sslmode = mode;
        adjust(&mut cfg);
        cfg
    }

    #[test]
    fn a_missing_or_empty_root_cert_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = client_config(&config(SslMode::VerifyFull, |c| c.sslrootcert = Some(missing.clone())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e =
            client_config(&config(SslMode::VerifyCa, |c| c.sslrootcert = Some(empty.clone()))).unwrap_err().to_string();
        assert!(e.contains("empty.pem") && e.contains("no PEM certificate"), "{e}");
        // `require` and `disable` check no chain: a CA file with them is a mistake.
        for mode in [SslMode::Require, SslMode::Disable] {
            let e = client_config(&config(mode, |c| c.sslrootcert = Some(empty.clone()))).unwrap_err().to_string();
            assert!(e.contains("is only read with sslmode"), "{e}");
        }
        assert!(client_config(&config(SslMode::Require, |_| {})).unwrap().is_some());
        let local = |host: &str| config(SslMode::Disable, |c| c.host = host.to_owned());
        assert!(client_config(&local("127.0.0.1")).unwrap().is_none());
        assert!(client_config(&local("localhost")).unwrap().is_none());
    }

    #[test]
    fn plaintext_is_refused_for_a_host_that_is_not_loopback() {
        // A passive listener would get the verifier in ALTER ROLE and the next login's
        // proof: together, a login.
        let e = client_config(&config(SslMode::Disable, |_| {})).unwrap_err().to_string();
        assert!(e.starts_with("sslmode = \"disable\" is refused for host \"db\""), "{e}");
        assert!(e.contains("loopback") && e.contains("sslmode = \"verify-full\" (sslrootcert"), "{e}");
    }

    #[test]
    fn combinations_that_only_look_protected_are_refused() {
        let refused = |cfg: super::super::PostgresConfig| client_config(&cfg).unwrap_err().to_string();
        for mode in [SslMode::Require, SslMode::VerifyCa] {
            for weak in [ChannelBinding::Prefer, ChannelBinding::Disable] {
                let e = refused(config(mode, |c| {
                    c.channel_binding = Some(weak);
                    c.sslrootcert = Some("/nonexistent/ca.pem".into());
                }));
                assert!(e.contains(&format!("channel_binding = {:?}", weak.as_str())), "{e}");
            }
            // And by default they require it.
            assert_eq!(config(mode, |_| {}).effective_channel_binding(), ChannelBinding::Require);
        }
        assert_eq!(config(SslMode::VerifyFull, |_| {}).effective_channel_binding(), ChannelBinding::Prefer);
        assert_eq!(config(SslMode::Disable, |_| {}).effective_channel_binding(), ChannelBinding::Disable);
        let e = refused(config(SslMode::Disable, |c| c.channel_binding = Some(ChannelBinding::Require)));
        assert!(e.contains("channel binding needs TLS"), "{e}");
        let e = refused(config(SslMode::VerifyCa, |_| {}));
        assert!(e.contains("without sslrootcert"), "{e}");
        for mode in [SslMode::Require, SslMode::Disable] {
            let e = refused(config(mode, |c| c.allow_weak_auth = true));
            assert!(e.contains("allow_weak_auth = true with sslmode"), "{e}");
        }
    }
}
