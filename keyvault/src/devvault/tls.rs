//! TLS material made at start: a throwaway CA and a server certificate it signs.
//!
//! Two certificates rather than one self-signed: rustls refuses a CA certificate used as
//! the end entity (`CaUsedAsEndEntity`), and clients only need to trust the CA. The
//! server certificate names the vault host, `*.vault.azure.net`, `localhost` and
//! `127.0.0.1`. Keys live only in memory; nothing is written to disk.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use super::errors::DevVaultError;

/// What the server needs, and the PEM of the root clients must trust.
pub(crate) struct TlsMaterial {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "kv-rotator dev vault");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Generates the CA and the server certificate for `host` and builds the rustls config.
pub(crate) fn generate(host: &str) -> Result<TlsMaterial, DevVaultError> {
    // Backdated an hour so small clock differences between processes do not matter.
    let not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    let not_after = not_before + Duration::days(365);

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = name("kv-rotator dev vault CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let leaf_key = KeyPair::generate()?;
    let sans = vec![host.to_string(), "*.vault.azure.net".into(), "localhost".into(), "127.0.0.1".into()];
    let mut leaf_params = CertificateParams::new(sans)?;
    leaf_params.distinguished_name = name(host);
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.not_before = not_before;
    leaf_params.not_after = not_after;
    let leaf_cert = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key)?;

    // The provider is passed explicitly so that no process-wide default is needed.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];

    Ok(TlsMaterial { ca_pem: ca_cert.pem(), server_config: Arc::new(config) })
}
