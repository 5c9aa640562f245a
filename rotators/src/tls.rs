//! TLS to targets over rustls (aws-lc-rs), shared by the built-in rotators.
//!
//! - [`Verification`] and [`client_config`]: a rustls client configuration that checks
//!   the server's certificate chain and host name (or, where a rotator's mode says so,
//!   less), with trust anchors from a PEM file or the system's store ([`trust_anchors`]).
//! - [`TlsMode`] and [`check_ca_file`]: the `tls` and `tls_ca_file` keys of the MariaDB
//!   and Redis profiles. PostgreSQL keeps libpq's `sslmode` names (`postgres::tls`).
//! - [`is_certificate_error`]: whether a TLS failure was the certificate being refused
//!   (permanent: a configuration mistake or an attack).
//! - [`plaintext_only_on_loopback`] and [`is_loopback_host`]: the rule every rotator
//!   applies to its plaintext mode (`tls = "disable"`, `sslmode = "disable"`): accepted
//!   only for a host on this machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{aws_lc_rs, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Deserializer};

/// Why TLS could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// Settings that contradict each other, or look protected but are not.
    #[error("{0}")]
    Combination(String),
    /// The CA file named in the configuration.
    #[error("{key} {path}: {reason}")]
    RootCert { key: &'static str, path: PathBuf, reason: String },
    /// No CA file configured, and the system store gave nothing.
    #[error("no trusted CA certificates: the system store is empty or unreadable ({reasons}); set {key}")]
    NoSystemRoots { key: &'static str, reasons: String },
    /// rustls refused the configuration.
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// None of it (the handshake's signatures still are): PostgreSQL's `require`, where
    /// channel binding then ties the login to the session.
    AnyCertificate,
    /// The chain, validity and usage, not the host name (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// The rustls client configuration for `verification`, trusting the CAs in `ca_file` or,
/// without one, the system's store. `ca_key` names the configuration key in errors.
pub fn client_config(
    verification: Verification,
    ca_file: Option<&Path>,
    ca_key: &'static str,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::AnyCertificate => Arc::new(AnyCertificate(provider.signature_verification_algorithms)),
        Verification::Chain | Verification::Full => {
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(trust_anchors(ca_file, ca_key)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
            if verification == Verification::Chain {
                Arc::new(AnyHostName(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(Arc::new(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()))
}

/// The trust anchors: every certificate in `path` (each must be a usable CA), or the
/// usable ones of the system's store (at least one).
pub fn trust_anchors(path: Option<&Path>, key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let mut anchors = Vec::new();
    match path {
        Some(path) => {
            let fail = |reason: String| TlsSetupError::RootCert { key, path: path.to_owned(), reason };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| fail(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(e.to_string()))?;
            if certs.is_empty() {
                return Err(fail("holds no PEM certificate".to_owned()));
            }
            for cert in certs {
                RootCertStore::empty()
                    .add(cert.clone())
                    .map_err(|e| fail(format!("a certificate is not a usable CA: {e}")))?;
                anchors.push(cert);
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            anchors.extend(found.certs.into_iter().filter(|cert| RootCertStore::empty().add(cert.clone()).is_ok()));
            if anchors.is_empty() {
                let reasons: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(TlsSetupError::NoSystemRoots { key, reasons: reasons.join("; ") });
            }
        }
    }
    Ok(anchors)
}

/// Whether a TLS failure is the server's certificate being refused (a configuration
/// mistake or an attack: retrying will not help).
pub fn is_certificate_error(error: &rustls::Error) -> bool {
    matches!(error, rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
}

/// The `tls` key of the MariaDB and Redis profiles.
///
/// | `tls`         | encrypted | certificate chain checked | host name checked |
/// |---------------|-----------|---------------------------|-------------------|
/// | `disable`     | no        | —                         | —                 |
/// | `verify-ca`   | yes       | yes (`tls_ca_file` only)  | no                |
/// | `verify-full` | yes       | yes                       | yes (default)     |
///
/// There is no `require` (encryption without a certificate check): neither protocol binds
/// the login to the TLS session, so a man in the middle would read the Redis `AUTH`
/// password, or relay a MariaDB login and read the new password's hash, while the
/// profile looked protected. `preferred`-style modes are refused for the same reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain TCP: only for a server on the same host or a private network you trust.
    Disable,
    /// Encrypted; the certificate must chain to a CA of `tls_ca_file`, for any host name.
    VerifyCa,
    /// Encrypted; the certificate must chain to a trusted CA and name the host.
    #[default]
    VerifyFull,
}

impl TlsMode {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// What is checked of the certificate; `None` without TLS.
    pub fn verification(self) -> Option<Verification> {
        match self {
            TlsMode::Disable => None,
            TlsMode::VerifyCa => Some(Verification::Chain),
            TlsMode::VerifyFull => Some(Verification::Full),
        }
    }
}

impl<'de> Deserialize<'de> for TlsMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        match value.as_str() {
            "disable" => return Ok(TlsMode::Disable),
            "verify-ca" => return Ok(TlsMode::VerifyCa),
            "verify-full" => return Ok(TlsMode::VerifyFull),
            _ => {}
        }
        match value.to_ascii_lowercase().as_str() {
            "require" | "required" | "prefer" | "preferred" | "allow" => Err(serde::de::Error::custom(format!(
                "tls {value:?} is refused: it checks no certificate (or falls back to plain TCP), and the login is not \
                 bound to the TLS session, so a man in the middle would get the password; use \"verify-full\", \
                 \"verify-ca\" with tls_ca_file or, knowingly, \"disable\""
            ))),
            _ => Err(serde::de::Error::custom(format!(
                "unknown tls mode {value:?}: expected \"verify-full\", \"verify-ca\" or \"disable\""
            ))),
        }
    }
}

/// Refuses the `tls` and `tls_ca_file` combinations that only look protected:
/// `verify-ca` against the system's public CAs (a certificate anyone can buy, for any
/// name), and a CA file with `disable` (never read).
pub fn check_ca_file(mode: TlsMode, ca_file: Option<&Path>) -> Result<(), TlsSetupError> {
    match (mode, ca_file) {
        (TlsMode::VerifyCa, None) => Err(TlsSetupError::Combination(
            "tls = \"verify-ca\" without tls_ca_file: against the system's public CAs it would accept a certificate \
             anyone can buy for any name; set tls_ca_file to your private CA, or use \"verify-full\""
                .to_owned(),
        )),
        (TlsMode::Disable, Some(path)) => Err(TlsSetupError::RootCert {
            key: "tls_ca_file",
            path: path.to_owned(),
            reason: "is only read with tls \"verify-ca\" or \"verify-full\", not \"disable\": a CA that is never \
                     checked would only look like protection"
                .to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Whether `host` names this machine: `localhost` (any case, with or without the final
/// dot), an IPv4 address in 127.0.0.0/8, or `::1` (bracketed or not, also as the
/// IPv4-mapped `::ffff:127.x.y.z`). Nothing is resolved: another name is not loopback,
/// whatever it resolves to today.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(std::net::IpAddr::V6(v6)) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Err(_) => false,
    }
}

/// The one rule for plaintext, shared by every rotator: a profile whose transport
/// setting is plaintext (`key = "disable"`: `tls` for MariaDB and Redis, `sslmode` for
/// PostgreSQL) is accepted only when `host` is loopback ([`is_loopback_host`]), and
/// refused at construction for any other host.
///
/// Why: without TLS a passive listener on the path reads the login exchange and what
/// kv-rotator sends or reads back (the Redis `AUTH` password itself; the MariaDB hash that,
/// with a sniffed `mysql_native_password` login, logs in; the PostgreSQL SCRAM verifier
/// that, with the next login's proof, does the same), and an active one answers in the
/// server's place and asks for the password. "A trusted private network" is not a
/// property kv-rotator can check; the local machine is.
///
/// Call it from the rotator's constructor with the profile's key name and `host`
/// whenever the mode is plaintext, and return its error (for example, in
/// `RedisRotator::new`: `if cfg.tls == TlsMode::Disable {
/// crate::tls::plaintext_only_on_loopback("tls", &cfg.host, "tls_ca_file")?; }`).
/// `ca_key` names the CA file setting in the advice.
pub fn plaintext_only_on_loopback(key: &str, host: &str, ca_key: &str) -> Result<(), TlsSetupError> {
    if is_loopback_host(host) {
        return Ok(());
    }
    Err(TlsSetupError::Combination(format!(
        "{key} = \"disable\" is refused for host {host:?}: without TLS anyone on the path reads the login and the \
         password hashes kv-rotator sends and reads back (enough to log in as the account or the admin), or answers \
         in the server's place and asks for the password; plaintext is accepted only for a loopback host \
         (127.0.0.0/8, ::1, \"localhost\"); use {key} = \"verify-full\" ({ca_key} naming the CA when it is a private one)"
    )))
}

/// Any certificate, but the handshake's signatures are still checked, so the session is
/// with whoever holds the presented certificate's key (what channel binding then ties
/// the login to).
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The full WebPKI check, except that the certificate need not name the host.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // The name is checked last, after the chain, validity and usage: reaching it
            // means everything else held.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_modes_parse_and_unverified_ones_are_refused() {
        let parse = |v: &str| serde_json::from_value::<TlsMode>(serde_json::json!(v)).map_err(|e| e.to_string());
        for mode in [TlsMode::Disable, TlsMode::VerifyCa, TlsMode::VerifyFull] {
            assert_eq!(parse(mode.as_str()).unwrap(), mode);
        }
        for unverified in ["require", "REQUIRED", "preferred", "prefer", "allow"] {
            let e = parse(unverified).unwrap_err();
            assert!(e.contains("refused") && e.contains("man in the middle"), "{e}");
        }
        for unknown in ["verify_full", "VERIFY_IDENTITY", "on", ""] {
            assert!(parse(unknown).unwrap_err().contains("unknown tls mode"), "{unknown}");
        }
        assert_eq!(TlsMode::default(), TlsMode::VerifyFull);
    }

    #[test]
    fn ca_file_combinations_that_only_look_protected_are_refused() {
        let e = check_ca_file(TlsMode::VerifyCa, None).unwrap_err().to_string();
        assert!(e.contains("verify-ca") && e.contains("tls_ca_file"), "{e}");
        let e = check_ca_file(TlsMode::Disable, Some(Path::new("/etc/ca.pem"))).unwrap_err().to_string();
        assert!(e.contains("tls_ca_file /etc/ca.pem") && e.contains("never"), "{e}");
        check_ca_file(TlsMode::VerifyFull, None).unwrap();
        check_ca_file(TlsMode::VerifyCa, Some(Path::new("/etc/ca.pem"))).unwrap();
    }

    #[test]
    fn plaintext_is_accepted_only_for_loopback_hosts() {
        for host in
            ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST", "localhost.", "::ffff:127.0.0.1"]
        {
            assert!(is_loopback_host(host), "{host}");
            plaintext_only_on_loopback("tls", host, "tls_ca_file").unwrap();
        }
        for host in ["db", "10.0.0.1", "128.0.0.1", "::2", "localhost.example", "127.0.0.1.nip.io", "0.0.0.0", ""] {
            assert!(!is_loopback_host(host), "{host}");
            let e = plaintext_only_on_loopback("sslmode", host, "sslrootcert").unwrap_err().to_string();
            assert!(e.starts_with("sslmode = \"disable\" is refused for host"), "{e}");
            assert!(
                e.contains(&format!("{host:?}"))
                    && e.contains("loopback")
                    && e.contains("\"verify-full\" (sslrootcert"),
                "{e}"
            );
        }
        let e = plaintext_only_on_loopback("tls", "db\n\x1b[2J", "tls_ca_file").unwrap_err().to_string();
        assert!(!e.contains('\n') && !e.contains('\x1b'), "{e}");
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = client_config(Verification::Full, Some(&missing), "tls_ca_file").unwrap_err().to_string();
        assert!(e.starts_with("tls_ca_file ") && e.contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Verification::Chain, Some(&empty), "sslrootcert").unwrap_err().to_string();
        assert!(e.starts_with("sslrootcert ") && e.contains("no PEM certificate"), "{e}");
        client_config(Verification::AnyCertificate, None, "sslrootcert").unwrap();
    }
}
