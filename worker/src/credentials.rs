//! Chooses the Entra ID credential named by `vault.credential` in the configuration.

use std::sync::Arc;

use anyhow::{bail, Context};
use azure_core::credentials::{Secret, TokenCredential};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientSecretCredential, DeveloperToolsCredential,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use kv_rotator_config::CredentialConfig;
use kv_rotator_keyvault::azure::DevVaultCredential;

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
