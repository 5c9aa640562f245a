//! A dev vault and an htpasswd target for the suites that run the binary against them:
//! the vault, a store over the real SDK, the vault's CA written into a temporary
//! directory, and the configuration sections that point a process there.

#![allow(dead_code)] // not every suite uses every helper

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kv_rotator::admin::auth::AdminAuth;
use kv_rotator::service::{self, Background, RunningService};
use kv_rotator::targets::Targets;
use kv_rotator_config::figment::providers::Format as _;
use kv_rotator_config::{EngineConfig, WebhookConfig};

use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions};
use kv_rotator_keyvault::{NewSecretVersion, SecretProperties, SecretStore};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::{PasswordPolicy, Rotator, VerifyRequest, VerifyResponse};
use secrecy::SecretString;

pub struct DevSite {
    /// Holds `ca.pem`, the htpasswd file and whatever the suite writes.
    pub dir: tempfile::TempDir,
    pub vault: DevVault,
    pub store: Arc<dyn SecretStore>,
    /// The htpasswd target's file (created with its first user).
    pub htpasswd: PathBuf,
}

impl DevSite {
    pub async fn start() -> DevSite {
        let dir = tempfile::tempdir().unwrap();
        let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
        let store: Arc<dyn SecretStore> = Arc::new(AzureSecretStore::for_dev_vault(&vault).unwrap());
        std::fs::write(dir.path().join("ca.pem"), vault.ca_certificate_pem()).unwrap();
        let htpasswd = dir.path().join("site.htpasswd");
        DevSite { dir, vault, store, htpasswd }
    }

    /// `[vault]`: this dev vault, through its CA and address.
    pub fn vault_toml(&self) -> String {
        format!(
            "[vault]\nurl = \"{}\"\ntls_ca_file = \"{}\"\nconnect_to = \"{}\"\ncredential = {{ kind = \"dev-vault\" }}\n",
            self.vault.endpoint(),
            self.dir.path().join("ca.pem").display(),
            self.vault.local_addr()
        )
    }

    /// `[targets.site]`: the htpasswd file, every account.
    pub fn htpasswd_target_toml(&self) -> String {
        format!(
            "[targets.site]\nkind = \"htpasswd\"\npath = \"{}\"\nbcrypt_cost = 4\naccounts = [\"*\"]\n",
            self.htpasswd.display()
        )
    }

    /// A user on the htpasswd target and its managed secret (no expiry: due at once);
    /// returns the first version and the password.
    pub async fn user(&self, secret: &str, user: &str) -> (String, SecretString) {
        self.tagged_user(secret, user, &[]).await
    }

    /// [`DevSite::user`], its secret carrying `extra` tags too.
    pub async fn tagged_user(&self, secret: &str, user: &str, extra: &[(&str, &str)]) -> (String, SecretString) {
        let password = PasswordPolicy::default().generate();
        htpasswd::add_user(&self.htpasswd, user, &password, 4).unwrap();
        (self.managed_secret_tagged(secret, "site", user, &password, extra).await, password)
    }

    /// A secret managed by target profile `profile` for `account`, with no expiry.
    pub async fn managed_secret(&self, secret: &str, profile: &str, account: &str, password: &SecretString) -> String {
        self.managed_secret_tagged(secret, profile, account, password, &[]).await
    }

    /// [`DevSite::managed_secret`] carrying `extra` tags too.
    pub async fn managed_secret_tagged(
        &self,
        secret: &str,
        profile: &str,
        account: &str,
        password: &SecretString,
        extra: &[(&str, &str)],
    ) -> String {
        let mut tags = BTreeMap::from([
            ("rotator".to_owned(), profile.to_owned()),
            ("CredentialId".to_owned(), account.to_owned()),
        ]);
        tags.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let new =
            NewSecretVersion { value: password.clone(), tags, content_type: None, expires: None, not_before: None };
        self.store.set_secret(secret, new).await.unwrap().version
    }

    /// The target profiles of [`Self::htpasswd_target_toml`].
    pub fn targets(&self) -> Targets {
        let toml = format!("{}{}", self.vault_toml(), self.htpasswd_target_toml());
        let figment =
            kv_rotator_config::figment::Figment::from(kv_rotator_config::figment::providers::Toml::string(&toml));
        let config = kv_rotator_config::load::from_figment(figment).unwrap();
        Targets::from_profiles(&config.targets).unwrap()
    }

    /// The service in process over this vault and the htpasswd target (engine retries
    /// shortened), its admin listener on a free loopback port, the admin API (and status
    /// page) authenticated by `auth`; the service and the admin listener's address.
    pub async fn admin_service(&self, auth: AdminAuth) -> (RunningService, SocketAddr) {
        let background = Background {
            admin: Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
            admin_auth: Some(auth),
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let engine = EngineConfig { initial_backoff_ms: 10, max_backoff_ms: 20, max_attempts: 2, ..Default::default() };
        let webhook = WebhookConfig::default();
        let running = service::start_with(self.store.clone(), self.targets(), engine, &webhook, background, listener)
            .await
            .unwrap();
        let admin = running.admin_addr.unwrap();
        (running, admin)
    }

    /// Every secret's every version (tags, attributes, timestamps), by name: what a
    /// read-only command must leave as it was.
    pub async fn vault_state(&self) -> BTreeMap<String, Vec<SecretProperties>> {
        let mut state = BTreeMap::new();
        for secret in self.store.list_secrets().await.unwrap() {
            let mut versions = self.store.list_versions(&secret.name).await.unwrap();
            versions.sort_by(|a, b| a.version.cmp(&b.version));
            state.insert(secret.name, versions);
        }
        state
    }

    /// Whether `password` logs in as `user` to the htpasswd target.
    pub async fn logs_in(&self, user: &str, password: &SecretString) -> bool {
        let rotator = HtpasswdRotator::new(HtpasswdConfig::new(&self.htpasswd), PasswordPolicy::default());
        let req = VerifyRequest::new(user, password.clone());
        rotator.verify(req).await.unwrap() == VerifyResponse::Accepted
    }
}
