//! What the Key Vault client is built from in `[vault]`: the Entra ID credential named
//! by `vault.credential`, and the client's retry, rate-limit and timeout settings. The
//! same credential kinds get `kv-rotator rotate` its token for an Entra ID admin API
//! (`admin.auth.client_credential`, [`credential_for`]).
//!
//! Building a credential needs no network: each kind is checked here as far as it can
//! be offline (ids present, files readable and of the right format, environment
//! variables set), and every error names the setting at fault. Secrets (client secret,
//! certificate password) come from environment variables named in the configuration,
//! so the file holds none, and they are never part of an error message; `main` takes
//! those variables out of the environment before any thread starts
//! ([`crate::hardening`]). The developer credentials spawn `az` and `azd`: they run
//! through [`HelperExecutor`], with only the variables in [`HELPER_ENV`].

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use azure_core::credentials::{Secret, SecretBytes, TokenCredential};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientSecretCredential, DeveloperToolsCredential,
    DeveloperToolsCredentialOptions, Executor, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
#[cfg(feature = "client-certificate")]
use azure_identity::{ClientCertificateCredential, ClientCertificateCredentialOptions};
use kv_rotator_config::{CredentialConfig, VaultConfig};
use kv_rotator_keyvault::azure::DevVaultCredential;
use kv_rotator_keyvault::pipeline::{ClientSettings, RateLimit};
use secrecy::ExposeSecret;

/// The client settings of `[vault]`; keys left out keep [`ClientSettings::default`].
pub fn client_settings(vault: &VaultConfig) -> ClientSettings {
    let mut settings = ClientSettings::default();
    if let Some(n) = vault.transactions_per_10s {
        settings.rate_limit = (n > 0).then_some(RateLimit { transactions: n, ..RateLimit::default() });
    }
    if let Some(n) = vault.max_retries {
        settings.retry.max_retries = n;
    }
    if let Some(ms) = vault.retry_initial_delay_ms {
        settings.retry.initial_delay = Duration::from_millis(ms);
    }
    if let Some(ms) = vault.retry_max_delay_ms {
        settings.retry.max_delay = Duration::from_millis(ms);
    }
    if let Some(secs) = vault.read_timeout_secs {
        settings.read_timeout = Duration::from_secs(secs);
    }
    settings
}

/// Builds the credential of `vault.credential`; errors name the setting at fault.
pub fn credential(config: &CredentialConfig) -> anyhow::Result<Arc<dyn TokenCredential>> {
    credential_for("vault.credential", config)
}

/// Builds the credential of `setting` (`vault.credential`, `admin.auth.client_credential`);
/// errors name the setting at fault.
pub fn credential_for(setting: &str, config: &CredentialConfig) -> anyhow::Result<Arc<dyn TokenCredential>> {
    Ok(match config {
        CredentialConfig::ManagedIdentity { client_id, object_id, resource_id } => {
            let ids = [client_id.is_some(), object_id.is_some(), resource_id.is_some()];
            if ids.iter().filter(|set| **set).count() > 1 {
                bail!("{setting}: set at most one of client_id, object_id, resource_id for a user-assigned managed identity");
            }
            for (key, value) in [("client_id", client_id), ("object_id", object_id), ("resource_id", resource_id)] {
                if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                    bail!("{setting}.{key} (managed-identity) is empty; leave it out for the system-assigned identity");
                }
            }
            let user_assigned_id = client_id
                .clone()
                .map(UserAssignedId::ClientId)
                .or_else(|| object_id.clone().map(UserAssignedId::ObjectId))
                .or_else(|| resource_id.clone().map(UserAssignedId::ResourceId));
            let options = ManagedIdentityCredentialOptions { user_assigned_id, ..Default::default() };
            ManagedIdentityCredential::new(Some(options)).with_context(|| format!("{setting} (managed-identity)"))?
        }
        CredentialConfig::WorkloadIdentity { client_id, tenant_id, token_file } => {
            if let Some(path) = token_file {
                if !path.is_file() {
                    bail!(
                        "{setting}.token_file (workload-identity) {}: no such file (AKS mounts it at the path in AZURE_FEDERATED_TOKEN_FILE)",
                        path.display()
                    );
                }
            }
            let options = WorkloadIdentityCredentialOptions {
                client_id: client_id.clone(),
                tenant_id: tenant_id.clone(),
                token_file_path: token_file.clone(),
                ..Default::default()
            };
            WorkloadIdentityCredential::new(Some(options)).with_context(|| {
                format!(
                    "{setting} (workload-identity): set client_id, tenant_id and token_file, or run where AKS sets \
                     AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE"
                )
            })?
        }
        CredentialConfig::ClientSecret { tenant_id, client_id, secret_env } => {
            require(setting, "client-secret", [("tenant_id", tenant_id), ("client_id", client_id)])?;
            let secret = env_secret(setting, "client-secret", "secret_env", secret_env)?;
            ClientSecretCredential::new(tenant_id, client_id.clone(), Secret::new(secret), None)
                .with_context(|| format!("{setting} (client-secret)"))?
        }
        #[cfg(feature = "client-certificate")]
        CredentialConfig::ClientCertificate { tenant_id, client_id, certificate_file, password_env } => {
            require(setting, "client-certificate", [("tenant_id", tenant_id), ("client_id", client_id)])?;
            let certificate = read_pkcs12(setting, certificate_file)?;
            let password = match password_env {
                Some(name) => Some(Secret::new(env_secret(setting, "client-certificate", "password_env", name)?)),
                None => None,
            };
            let options = ClientCertificateCredentialOptions { password, ..Default::default() };
            let file = certificate_file.display();
            match ClientCertificateCredential::new(tenant_id.clone(), client_id.clone(), certificate, Some(options)) {
                Ok(credential) => credential,
                Err(e) if e.to_string().contains("mac verify failure") || format!("{e:?}").contains("mac verify") => {
                    let hint = match password_env {
                        Some(name) => format!("the password in {name} ({setting}.password_env) is wrong"),
                        None => format!("the file has a password: name its variable in {setting}.password_env"),
                    };
                    bail!("{setting}.certificate_file (client-certificate) {file}: cannot open it: {hint}")
                }
                Err(e) if e.to_string().contains("only RSA") => {
                    bail!("{setting}.certificate_file (client-certificate) {file}: the key is not RSA; Entra ID certificate credentials here need an RSA key")
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("{setting}.certificate_file (client-certificate) {file}: not usable")))
                }
            }
        }
        // Without the feature the settings are still checked, so a config can be
        // validated on any build; only building the credential needs OpenSSL.
        #[cfg(not(feature = "client-certificate"))]
        CredentialConfig::ClientCertificate { tenant_id, client_id, certificate_file, .. } => {
            require(setting, "client-certificate", [("tenant_id", tenant_id), ("client_id", client_id)])?;
            read_pkcs12(setting, certificate_file)?;
            bail!(
                "{setting}.kind = \"client-certificate\" needs a kv-rotator built with the client-certificate \
                 feature (it links OpenSSL): cargo build --release --features client-certificate"
            )
        }
        CredentialConfig::AzureCli { tenant_id } => {
            let options = AzureCliCredentialOptions {
                tenant_id: tenant_id.clone(),
                executor: Some(Arc::new(HelperExecutor)),
                ..Default::default()
            };
            AzureCliCredential::new(Some(options)).with_context(|| format!("{setting} (azure-cli)"))?
        }
        CredentialConfig::DeveloperTools {} => {
            let options = DeveloperToolsCredentialOptions { executor: Some(Arc::new(HelperExecutor)) };
            DeveloperToolsCredential::new(Some(options)).with_context(|| format!("{setting} (developer-tools)"))?
        }
        CredentialConfig::DevVault {} => DevVaultCredential::new(),
    })
}

/// Refuses empty ids, naming the key.
fn require<'a>(
    setting: &str,
    kind: &str,
    fields: impl IntoIterator<Item = (&'a str, &'a String)>,
) -> anyhow::Result<()> {
    for (key, value) in fields {
        if value.trim().is_empty() {
            bail!("{setting}.{key} ({kind}) is empty");
        }
    }
    Ok(())
}

/// Reads a secret from the environment variable a setting names (taken out of the
/// environment at startup, [`crate::hardening`]); the value never appears in an error.
fn env_secret(setting: &str, kind: &str, key: &str, name: &str) -> anyhow::Result<String> {
    match crate::hardening::secret_var(name) {
        Ok(value) if !value.expose_secret().is_empty() => Ok(value.expose_secret().to_owned()),
        Ok(_) => bail!("{setting}.{key} ({kind}): environment variable {name} is empty"),
        Err(e) => bail!("{setting}.{key} ({kind}): environment variable {name} {e}"),
    }
}

/// Runs the Azure CLI and Azure Developer CLI token helpers (`az`, `azd`, through
/// `/bin/sh`) with a cleared environment plus [`HELPER_ENV`], instead of the SDK's
/// default executor, which lets them inherit the whole environment of the worker.
#[derive(Debug)]
pub struct HelperExecutor;

/// What `az` and `azd` need: where programs and their logins are, locale, temporary
/// files, proxies and CA bundles; on Windows, the system's own variables.
pub const HELPER_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "AZURE_CONFIG_DIR",
    "AZURE_EXTENSION_DIR",
    "AZD_CONFIG_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "SYSTEMROOT",
    "WINDIR",
    "COMSPEC",
    "PATHEXT",
    "USERPROFILE",
    "APPDATA",
    "LOCALAPPDATA",
    "PROGRAMFILES",
    "TEMP",
    "TMP",
];

#[async_trait::async_trait]
impl Executor for HelperExecutor {
    async fn run(&self, program: &OsStr, args: &[&OsStr]) -> std::io::Result<Output> {
        let env: Vec<_> =
            HELPER_ENV.iter().filter_map(|name| std::env::var_os(name).map(|value| (*name, value))).collect();
        #[cfg(feature = "leak-ledger")]
        kv_rotator_leakscan::record_spawn(
            "credential helper",
            std::iter::once(program).chain(args.iter().copied()),
            env.iter().map(|(name, value)| (name, value)),
        );
        tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
    }
}

/// Reads the PKCS#12 file, recognising the usual wrong formats.
fn read_pkcs12(setting: &str, path: &Path) -> anyhow::Result<SecretBytes> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{setting}.certificate_file (client-certificate) {}: cannot read", path.display()))?;
    if bytes.starts_with(b"-----BEGIN") {
        bail!(
            "{setting}.certificate_file (client-certificate) {}: this is PEM; a PKCS#12 (.pfx) file is needed: \
             openssl pkcs12 -export -in cert.pem -inkey key.pem -out cert.pfx",
            path.display()
        );
    }
    // PKCS#12 is DER: a SEQUENCE. Anything else is not worth handing to openssl.
    if bytes.first() != Some(&0x30) {
        bail!("{setting}.certificate_file (client-certificate) {}: not a PKCS#12 (.pfx) file", path.display());
    }
    Ok(SecretBytes::new(bytes))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkcs12::Pkcs12;
    use openssl::pkey::{PKey, Private};
    use openssl::rsa::Rsa;
    use openssl::x509::{X509NameBuilder, X509};

    use super::*;

    const TENANT: &str = "11111111-2222-3333-4444-555555555555";
    const CLIENT: &str = "66666666-7777-8888-9999-000000000000";

    fn self_signed(key: &PKey<Private>) -> X509 {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "kv-rotator-test").unwrap();
        let name = name.build();
        let mut builder = X509::builder().unwrap();
        builder.set_version(2).unwrap();
        builder.set_subject_name(&name).unwrap();
        builder.set_issuer_name(&name).unwrap();
        builder.set_pubkey(key).unwrap();
        builder.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        builder.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
        builder.sign(key, MessageDigest::sha256()).unwrap();
        builder.build()
    }

    /// A PKCS#12 file with a fresh self-signed certificate and `key`.
    fn pfx(dir: &Path, file: &str, key: PKey<Private>, password: &str) -> PathBuf {
        let cert = self_signed(&key);
        let der = Pkcs12::builder().name("test").pkey(&key).cert(&cert).build2(password).unwrap().to_der().unwrap();
        let path = dir.join(file);
        std::fs::write(&path, der).unwrap();
        path
    }

    fn rsa() -> PKey<Private> {
        PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
    }

    fn certificate(path: &Path, password_env: Option<&str>) -> CredentialConfig {
        CredentialConfig::ClientCertificate {
            tenant_id: TENANT.into(),
            client_id: CLIENT.into(),
            certificate_file: path.to_owned(),
            password_env: password_env.map(str::to_owned),
        }
    }

    fn error(config: &CredentialConfig) -> String {
        format!("{:#}", credential(config).expect_err("a misconfiguration"))
    }

    #[test]
    fn every_kind_builds_offline() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "eyJ.fake.token").unwrap();
        std::env::set_var("KVR_TEST_BUILDS_SECRET", "s3cret");
        std::env::set_var("KVR_TEST_BUILDS_PFX_PASSWORD", "pfx-password");
        let mut kinds = vec![
            CredentialConfig::default(),
            CredentialConfig::ManagedIdentity { client_id: Some(CLIENT.into()), object_id: None, resource_id: None },
            CredentialConfig::WorkloadIdentity {
                client_id: Some(CLIENT.into()),
                tenant_id: Some(TENANT.into()),
                token_file: Some(token_file),
            },
            CredentialConfig::ClientSecret {
                tenant_id: TENANT.into(),
                client_id: CLIENT.into(),
                secret_env: "KVR_TEST_BUILDS_SECRET".into(),
            },
            CredentialConfig::AzureCli { tenant_id: Some(TENANT.into()) },
            CredentialConfig::DeveloperTools {},
            CredentialConfig::DevVault {},
        ];
        if cfg!(feature = "client-certificate") {
            kinds.push(certificate(&pfx(dir.path(), "plain.pfx", rsa(), ""), None));
            kinds.push(certificate(
                &pfx(dir.path(), "locked.pfx", rsa(), "pfx-password"),
                Some("KVR_TEST_BUILDS_PFX_PASSWORD"),
            ));
        }
        for kind in &kinds {
            credential(kind).unwrap_or_else(|e| panic!("{kind:?}: {e:#}"));
        }
    }

    #[test]
    fn misconfigurations_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(CredentialConfig, &[&str])> = vec![
            (
                CredentialConfig::ManagedIdentity {
                    client_id: Some(CLIENT.into()),
                    object_id: Some(CLIENT.into()),
                    resource_id: None,
                },
                &["at most one of client_id, object_id, resource_id"],
            ),
            (
                CredentialConfig::ManagedIdentity { client_id: Some(" ".into()), object_id: None, resource_id: None },
                &["vault.credential.client_id", "empty"],
            ),
            (
                CredentialConfig::WorkloadIdentity {
                    client_id: Some(CLIENT.into()),
                    tenant_id: Some(TENANT.into()),
                    token_file: Some(dir.path().join("absent-token")),
                },
                &["vault.credential.token_file", "absent-token", "no such file"],
            ),
            (
                CredentialConfig::ClientSecret {
                    tenant_id: TENANT.into(),
                    client_id: CLIENT.into(),
                    secret_env: "KVR_TEST_UNSET_SECRET".into(),
                },
                &["vault.credential.secret_env", "KVR_TEST_UNSET_SECRET", "not set"],
            ),
            (
                CredentialConfig::ClientSecret {
                    tenant_id: String::new(),
                    client_id: CLIENT.into(),
                    secret_env: "KVR_TEST_UNSET_SECRET".into(),
                },
                &["vault.credential.tenant_id", "empty"],
            ),
            (
                CredentialConfig::ClientCertificate {
                    tenant_id: TENANT.into(),
                    client_id: String::new(),
                    certificate_file: dir.path().join("x.pfx"),
                    password_env: None,
                },
                &["vault.credential.client_id", "client-certificate", "empty"],
            ),
            (certificate(&dir.path().join("missing.pfx"), None), &["certificate_file", "missing.pfx", "cannot read"]),
        ];
        for (config, expected) in cases {
            let message = error(&config);
            for part in expected {
                assert!(message.contains(part), "{config:?}: {message:?} lacks {part:?}");
            }
        }
    }

    #[test]
    #[cfg(not(feature = "client-certificate"))]
    fn without_the_feature_a_certificate_credential_names_the_feature() {
        let dir = tempfile::tempdir().unwrap();
        let message = error(&certificate(&pfx(dir.path(), "plain.pfx", rsa(), ""), None));
        assert!(message.contains("--features client-certificate"), "{message}");
    }

    #[test]
    #[cfg(feature = "client-certificate")]
    fn certificate_files_are_checked_with_clear_errors() {
        use openssl::ec::{EcGroup, EcKey};
        use openssl::nid::Nid;

        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("cert.pem");
        std::fs::write(&pem, self_signed(&rsa()).to_pem().unwrap()).unwrap();
        let message = error(&certificate(&pem, None));
        assert!(message.contains("cert.pem") && message.contains("this is PEM") && message.contains("openssl pkcs12"));

        let junk = dir.path().join("junk.pfx");
        std::fs::write(&junk, b"not a certificate").unwrap();
        assert!(error(&certificate(&junk, None)).contains("not a PKCS#12 (.pfx) file"));

        let locked = pfx(dir.path(), "locked.pfx", rsa(), "right-password");
        let message = error(&certificate(&locked, None));
        assert!(
            message.contains("locked.pfx") && message.contains("has a password") && message.contains("password_env")
        );
        std::env::set_var("KVR_TEST_WRONG_PFX_PASSWORD", "wrong-password");
        let message = error(&certificate(&locked, Some("KVR_TEST_WRONG_PFX_PASSWORD")));
        assert!(message.contains("KVR_TEST_WRONG_PFX_PASSWORD") && message.contains("is wrong"), "{message}");
        assert!(!message.contains("wrong-password"), "the password never appears: {message}");
        let message = error(&certificate(&locked, Some("KVR_TEST_UNSET_PFX_PASSWORD")));
        assert!(message.contains("vault.credential.password_env") && message.contains("KVR_TEST_UNSET_PFX_PASSWORD"));

        let ec = PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap())
            .unwrap();
        let message = error(&certificate(&pfx(dir.path(), "ec.pfx", ec, ""), None));
        assert!(message.contains("ec.pfx") && message.contains("not RSA"), "{message}");
    }

    #[test]
    fn client_settings_follow_the_vault_keys() {
        let figment = kv_rotator_config::figment::Figment::from(
            kv_rotator_config::figment::providers::Serialized::defaults(serde_json::json!({ "vault": {
                "url": "https://v.vault.azure.net/",
                "transactions_per_10s": 500,
                "max_retries": 3,
                "retry_initial_delay_ms": 100,
                "retry_max_delay_ms": 2000,
                "read_timeout_secs": 5,
            }})),
        );
        let config = kv_rotator_config::load::from_figment(figment).unwrap();
        let settings = client_settings(&config.vault);
        assert_eq!(settings.rate_limit, Some(RateLimit { transactions: 500, per: Duration::from_secs(10) }));
        assert_eq!(settings.retry.max_retries, 3);
        assert_eq!(
            (settings.retry.initial_delay, settings.retry.max_delay),
            (Duration::from_millis(100), Duration::from_secs(2))
        );
        assert_eq!(settings.read_timeout, Duration::from_secs(5));

        let mut off = config.vault.clone();
        off.transactions_per_10s = Some(0);
        assert_eq!(client_settings(&off).rate_limit, None);
        off.transactions_per_10s = None;
        assert_eq!(
            client_settings(&off).rate_limit,
            ClientSettings::default().rate_limit,
            "default: the service limit"
        );

        let bad = kv_rotator_config::figment::Figment::from(
            kv_rotator_config::figment::providers::Serialized::defaults(serde_json::json!({ "vault": {
                "url": "https://v.vault.azure.net/",
                "retry_initial_delay_ms": 5000,
                "retry_max_delay_ms": 1000,
                "read_timeout_secs": 0,
            }})),
        );
        let message = kv_rotator_config::load::from_figment(bad).unwrap_err().to_string();
        assert!(
            message.contains("vault.retry_initial_delay_ms (5000)")
                && message.contains("vault.retry_max_delay_ms (1000)")
        );
        assert!(message.contains("vault.read_timeout_secs must be at least 1"), "{message}");
    }
}
