//! The official SDK (`azure_security_keyvault_secrets`), unchanged, against the dev vault:
//! the bearer challenge, every operation the SDK has, paging across `nextLink`s that
//! carry the port, and the errors the rotation engine relies on (403 `SecretDisabled`,
//! 409 `Conflict`, 404 `SecretNotFound`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::{StatusCode, Transport};
use azure_core::time::{Duration, OffsetDateTime};
use azure_security_keyvault_secrets::models::{
    RestoreSecretParameters, SecretAttributes, SecretClientGetSecretOptions, SecretClientListSecretPropertiesOptions,
    SecretClientListSecretPropertiesVersionsOptions, SetSecretParameters, UpdateSecretPropertiesParameters,
};
use azure_security_keyvault_secrets::{ResourceExt, SecretClient, SecretClientOptions};
use futures::TryStreamExt;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions, DEV_TOKEN};

/// Hands out [`DEV_TOKEN`] and remembers the scopes asked for.
#[derive(Debug, Default)]
struct FixedToken {
    scopes: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl TokenCredential for FixedToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.scopes.lock().unwrap().extend(scopes.iter().map(|s| s.to_string()));
        Ok(AccessToken::new(DEV_TOKEN.to_string(), OffsetDateTime::now_utc() + Duration::hours(1)))
    }
}

fn client(vault: &DevVault, credential: Arc<FixedToken>) -> SecretClient {
    let mut options = SecretClientOptions::default();
    options.client_options.transport = Some(Transport::new(Arc::new(vault.http_client().unwrap())));
    SecretClient::new(vault.endpoint().as_str(), credential, Some(options)).unwrap()
}

fn status_and_code(error: &azure_core::Error) -> (Option<StatusCode>, Option<String>) {
    match error.kind() {
        ErrorKind::HttpResponse { status, error_code, .. } => (Some(*status), error_code.clone()),
        _ => (None, None),
    }
}

fn set_params(value: &str) -> SetSecretParameters {
    SetSecretParameters { value: Some(value.into()), ..Default::default() }
}

#[tokio::test]
async fn the_official_sdk_works_unchanged() -> azure_core::Result<()> {
    let vault = DevVault::start(DevVaultOptions::default()).await.unwrap();
    let credential = Arc::new(FixedToken::default());
    let client = client(&vault, credential.clone());

    // Set with everything the rotation engine writes; the first call goes through the challenge.
    let exp = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp() + 86_400).unwrap();
    let first = SetSecretParameters {
        value: Some("v1".into()),
        content_type: Some("password".into()),
        tags: Some(HashMap::from([("CredentialId".to_string(), "app".to_string())])),
        secret_attributes: Some(SecretAttributes { expires: Some(exp), ..Default::default() }),
    };
    let v1 = client.set_secret("sdk-secret", first.try_into()?, None).await?.into_model()?;
    assert_eq!(*credential.scopes.lock().unwrap(), vec!["https://vault.azure.net/.default".to_string()]);
    let v1_id = v1.resource_id()?;
    assert_eq!(v1_id.name, "sdk-secret");
    assert_eq!(v1.tags.as_ref().and_then(|t| t.get("CredentialId")).map(String::as_str), Some("app"));
    assert_eq!(v1.attributes.as_ref().and_then(|a| a.expires), Some(exp));
    assert!(v1_id.vault_url.starts_with(&format!("https://{}", vault.host())), "{}", v1_id.vault_url);

    client.set_secret("sdk-secret", set_params("v2").try_into()?, None).await?;
    let latest = client.get_secret("sdk-secret", None).await?.into_model()?;
    assert_eq!(latest.value.as_deref(), Some("v2"));
    let older = SecretClientGetSecretOptions { secret_version: v1_id.version.clone(), ..Default::default() };
    assert_eq!(client.get_secret("sdk-secret", Some(older)).await?.into_model()?.value.as_deref(), Some("v1"));

    // A disabled latest version cannot be read (403 Forbidden / SecretDisabled).
    let disable = UpdateSecretPropertiesParameters {
        secret_attributes: Some(SecretAttributes { enabled: Some(false), ..Default::default() }),
        ..Default::default()
    };
    let updated = client.update_secret_properties("sdk-secret", disable.try_into()?, None).await?.into_model()?;
    assert_eq!(updated.attributes.and_then(|a| a.enabled), Some(false));
    let error = client.get_secret("sdk-secret", None).await.unwrap_err();
    assert_eq!(status_and_code(&error), (Some(StatusCode::Forbidden), Some("Forbidden".into())));
    let enable = UpdateSecretPropertiesParameters {
        secret_attributes: Some(SecretAttributes { enabled: Some(true), ..Default::default() }),
        ..Default::default()
    };
    client.update_secret_properties("sdk-secret", enable.try_into()?, None).await?;

    // Versions, a page at a time: nextLinks carry the port and the pager follows them.
    let options = SecretClientListSecretPropertiesVersionsOptions { maxresults: Some(1), ..Default::default() };
    let versions: Vec<_> = client.list_secret_properties_versions("sdk-secret", Some(options))?.try_collect().await?;
    let ids: Vec<String> = versions.iter().filter_map(|v| v.id.clone()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1], "versions are listed in id order: {ids:?}");

    // More secrets than one default page.
    for i in 0..30 {
        client.set_secret(&format!("bulk-{i:02}"), set_params("x").try_into()?, None).await?;
    }
    let listed: Vec<_> = client.list_secret_properties(None)?.try_collect().await?;
    let names: BTreeSet<String> = listed.iter().map(|s| s.resource_id().unwrap().name).collect();
    assert_eq!(names.len(), 31);
    let options = SecretClientListSecretPropertiesOptions { maxresults: Some(7), ..Default::default() };
    let pages: Vec<_> = client.list_secret_properties(Some(options))?.into_pages().try_collect().await?;
    assert_eq!(pages.len(), 5, "31 secrets in pages of 7");

    // Backup, soft delete, the 409 on reuse, recover, purge, restore.
    let backup = client.backup_secret("sdk-secret", None).await?.into_model()?.value.expect("a backup blob");
    let deleted = client.delete_secret("sdk-secret", None).await?.into_model()?;
    assert!(deleted.recovery_id.is_some() && deleted.scheduled_purge_date.is_some());
    let error = client.set_secret("sdk-secret", set_params("v3").try_into()?, None).await.unwrap_err();
    assert_eq!(status_and_code(&error), (Some(StatusCode::Conflict), Some("Conflict".into())));
    let deleted_items: Vec<_> = client.list_deleted_secret_properties(None)?.try_collect().await?;
    assert_eq!(deleted_items.len(), 1);
    client.get_deleted_secret("sdk-secret", None).await?;
    client.recover_deleted_secret("sdk-secret", None).await?;
    assert_eq!(client.get_secret("sdk-secret", None).await?.into_model()?.value.as_deref(), Some("v2"));

    client.delete_secret("sdk-secret", None).await?;
    client.purge_deleted_secret("sdk-secret", None).await?;
    let error = client.get_secret("sdk-secret", None).await.unwrap_err();
    assert_eq!(status_and_code(&error), (Some(StatusCode::NotFound), Some("SecretNotFound".into())));
    let restore = RestoreSecretParameters { secret_backup: Some(backup) };
    let restored = client.restore_secret(restore.try_into()?, None).await?.into_model()?;
    assert_eq!(restored.resource_id()?.name, "sdk-secret");
    assert_eq!(client.get_secret("sdk-secret", None).await?.into_model()?.value.as_deref(), Some("v2"));

    vault.shutdown().await;
    Ok(())
}
