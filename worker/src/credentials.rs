//! What the Key Vault client is built from in `[vault]`: the Entra ID credential named
//! by `vault.credential`, and the client's retry, rate-limit and timeout settings.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use azure_core::credentials::{Secret, TokenCredential};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientSecretCredential, DeveloperToolsCredential,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use kv_rotator_config::{CredentialConfig, VaultConfig};
use kv_rotator_keyvault::azure::DevVaultCredential;
use kv_rotator_keyvault::pipeline::{ClientRateLimit, ClientSettings};

/// The client settings of `[vault]`; keys left out keep [`ClientSettings::default`].
pub fn client_settings(vault: &VaultConfig) -> ClientSettings {
    let mut settings = ClientSettings::default();
    if let Some(n) = vault.transactions_per_10s {
        settings.rate_limit = (n > 0).then_some(ClientRateLimit { transactions: n, ..ClientRateLimit::default() });
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

/// Builds the credential; errors name the setting at fault.
pub fn credential(config: &CredentialConfig) -> anyhow::Result<Arc<dyn TokenCredential>> {
    Ok(match config {
        CredentialConfig::ManagedIdentity { client_id, object_id, resource_id } => {
            let ids = [client_id.is_some(), object_id.is_some(), resource_id.is_some()];
            if ids.iter().filter(|set| **set).count() > 1 {
                bail!("vault.credential: set at most one of client_id, object_id, resource_id for a user-assigned managed identity");
            }
            let user_assigned_id = client_id
                .clone()
                .map(UserAssignedId::ClientId)
                .or_else(|| object_id.clone().map(UserAssignedId::ObjectId))
                .or_else(|| resource_id.clone().map(UserAssignedId::ResourceId));
            let options = ManagedIdentityCredentialOptions { user_assigned_id, ..Default::default() };
            ManagedIdentityCredential::new(Some(options)).context("vault.credential (managed-identity)")?
        }
        CredentialConfig::WorkloadIdentity { client_id, tenant_id, token_file } => {
            let options = WorkloadIdentityCredentialOptions {
                client_id: client_id.clone(),
                tenant_id: tenant_id.clone(),
                token_file_path: token_file.clone(),
                ..Default::default()
            };
            WorkloadIdentityCredential::new(Some(options)).context("vault.credential (workload-identity)")?
        }
        CredentialConfig::ClientSecret { tenant_id, client_id, secret_env } => {
            let secret = std::env::var(secret_env).with_context(|| {
                format!("vault.credential (client-secret): environment variable {secret_env} is not set")
            })?;
            ClientSecretCredential::new(tenant_id, client_id.clone(), Secret::new(secret), None)
                .context("vault.credential (client-secret)")?
        }
        CredentialConfig::AzureCli { tenant_id } => {
            let options = AzureCliCredentialOptions { tenant_id: tenant_id.clone(), ..Default::default() };
            AzureCliCredential::new(Some(options)).context("vault.credential (azure-cli)")?
        }
        CredentialConfig::DeveloperTools => {
            DeveloperToolsCredential::new(None).context("vault.credential (developer-tools)")?
        }
        CredentialConfig::DevVault => DevVaultCredential::new(),
    })
}
