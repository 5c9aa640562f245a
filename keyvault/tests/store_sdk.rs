//! The production `AzureSecretStore`, through the official SDK and real TLS, against the
//! dev vault: every `SecretStore` method, versions sorted by `created` when ids are not,
//! and the precise errors the engine and the operator act on.

use std::collections::BTreeMap;

use kv_rotator_keyvault::azure::AzureSecretStore;
use kv_rotator_keyvault::devvault::{DevVault, DevVaultOptions, SeedSecret};
use kv_rotator_keyvault::{NewSecretVersion, PropertiesUpdate, SecretStore, StoreError};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

async fn start() -> (DevVault, AzureSecretStore) {
    let vault = DevVault::start(DevVaultOptions::default()).await.expect("dev vault");
    let store = AzureSecretStore::for_dev_vault(&vault).expect("store");
    (vault, store)
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn version(value: &str, tags: BTreeMap<String, String>) -> NewSecretVersion {
    NewSecretVersion { value: SecretString::from(value), tags, content_type: None, expires: None, not_before: None }
}

/// Whole seconds: the service's time resolution.
fn at(offset_s: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp() + offset_s).unwrap()
}

#[tokio::test]
async fn every_method_round_trips_through_the_sdk() {
    let (vault, store) = start().await;
    assert_eq!(store.vault_name(), "devvault");
    assert_eq!(store.vault_url().as_str(), vault.endpoint().as_str());

    let (exp, nbf) = (at(86_400), at(-60));
    let first = store
        .set_secret(
            "app-db",
            NewSecretVersion {
                value: SecretString::from("first-password"),
                tags: tags(&[("CredentialId", "app"), ("rotator", "pg")]),
                content_type: Some("password".into()),
                expires: Some(exp),
                not_before: Some(nbf),
            },
        )
        .await
        .unwrap();
    assert_eq!(first.name, "app-db");
    assert_eq!(first.version.len(), 32, "a service-shaped version id: {}", first.version);
    assert_eq!(first.properties.tags, tags(&[("CredentialId", "app"), ("rotator", "pg")]));
    assert_eq!(first.properties.content_type.as_deref(), Some("password"));
    assert_eq!((first.properties.expires, first.properties.not_before), (Some(exp), Some(nbf)));
    assert!(first.properties.enabled && first.properties.created.is_some());

    let second =
        store.set_secret("app-db", version("second-password", tags(&[("CredentialId", "app")]))).await.unwrap();
    let latest = store.get_latest("app-db").await.unwrap();
    assert_eq!((latest.version.as_str(), latest.value.expose_secret()), (second.version.as_str(), "second-password"));
    assert_eq!(latest.properties.tags, tags(&[("CredentialId", "app")]), "tags are per version, not carried over");
    let old = store.get_version("app-db", &first.version).await.unwrap();
    assert_eq!(old.value.expose_secret(), "first-password");
    assert_eq!(old.properties.version.as_deref(), Some(first.version.as_str()));

    // update_properties on the latest version: tags replaced whole, exp and contentType set.
    let new_exp = at(7 * 86_400);
    let update = PropertiesUpdate {
        tags: Some(tags(&[("rotation-state", "failed")])),
        expires: Some(new_exp),
        content_type: Some("text/plain".into()),
        enabled: None,
    };
    let updated = store.update_properties("app-db", None, update).await.unwrap();
    assert_eq!(updated.version.as_deref(), Some(second.version.as_str()));
    assert_eq!(updated.tags, tags(&[("rotation-state", "failed")]));
    assert_eq!((updated.expires, updated.content_type.as_deref()), (Some(new_exp), Some("text/plain")));
    let reread = store.get_latest("app-db").await.unwrap().properties;
    assert_eq!((reread.tags, reread.expires), (tags(&[("rotation-state", "failed")]), Some(new_exp)));
    assert!(reread.enabled, "fields left None stay as they were");

    // ... and on a named older version, leaving the latest alone.
    let disable = PropertiesUpdate { enabled: Some(false), ..Default::default() };
    let disabled = store.update_properties("app-db", Some(&first.version), disable).await.unwrap();
    assert_eq!((disabled.version.as_deref(), disabled.enabled), (Some(first.version.as_str()), false));
    assert_eq!(disabled.tags, tags(&[("CredentialId", "app"), ("rotator", "pg")]), "tags untouched when None");
    assert!(matches!(store.get_version("app-db", &first.version).await, Err(StoreError::Disabled { .. })));
    assert_eq!(store.get_latest("app-db").await.unwrap().version, second.version);

    let versions = store.list_versions("app-db").await.unwrap();
    let listed: Vec<(Option<&str>, bool)> = versions.iter().map(|v| (v.version.as_deref(), v.enabled)).collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&(Some(first.version.as_str()), false)) && listed.contains(&(Some(&second.version), true)));

    store.set_secret("other", version("x", BTreeMap::new())).await.unwrap();
    let secrets = store.list_secrets().await.unwrap();
    let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["app-db", "other"]);
    assert_eq!(secrets[0].tags, tags(&[("rotation-state", "failed")]), "list shows the latest version's tags");
    assert_eq!(secrets[0].version, None, "the list-secrets operation names no version");

    // Delete is a soft delete; purge frees the name; both are idempotent.
    store.delete_secret("other").await.unwrap();
    assert_eq!(store.list_secrets().await.unwrap().len(), 1);
    store.delete_secret("other").await.expect("deleting a missing secret is not an error");
    store.purge_deleted_secret("other").await.unwrap();
    store.purge_deleted_secret("other").await.expect("purging what is not deleted is not an error");
    store.set_secret("other", version("again", BTreeMap::new())).await.expect("the purged name is free again");
    assert_eq!(store.get_latest("other").await.unwrap().value.expose_secret(), "again");
    vault.shutdown().await;
}

#[tokio::test]
async fn versions_are_sorted_by_created_even_when_ids_are_not() {
    let (vault, store) = start().await;
    let base = OffsetDateTime::now_utc().unix_timestamp() - 10_000;
    // Id order (0…, 8…, f…) is the reverse of creation order (f… first, 0… last).
    let seeds = [("f".repeat(32), base), ("8".repeat(32), base + 100), ("0".repeat(32), base + 200)];
    for (i, (id, created)) in seeds.iter().enumerate() {
        vault
            .seed(SeedSecret {
                name: "ordered".into(),
                value: format!("v{i}"),
                created: Some(*created),
                version: Some(id.clone()),
                add_version: i > 0,
                ..Default::default()
            })
            .unwrap();
    }
    let versions = store.list_versions("ordered").await.unwrap();
    let ids: Vec<&str> = versions.iter().filter_map(|v| v.version.as_deref()).collect();
    let expected: Vec<&str> = seeds.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, expected, "oldest created first");
    let created: Vec<i64> = versions.iter().map(|v| v.created.unwrap().unix_timestamp()).collect();
    assert_eq!(created, [base, base + 100, base + 200]);
    // The latest (last written) is the one created last, whatever its id.
    assert_eq!(store.get_latest("ordered").await.unwrap().version, "0".repeat(32));
    assert!(store.list_versions("never-written").await.unwrap().is_empty());
    vault.shutdown().await;
}

#[tokio::test]
async fn service_refusals_become_precise_errors() {
    let (vault, store) = start().await;

    // Missing secret, missing version, update of a missing secret: NotFound, permanent.
    for error in [
        store.get_latest("nope").await.unwrap_err(),
        store.get_version("nope", &"a".repeat(32)).await.unwrap_err(),
        store.update_properties("nope", None, PropertiesUpdate::default()).await.unwrap_err(),
    ] {
        assert!(matches!(&error, StoreError::NotFound { name, .. } if name == "nope"), "{error:?}");
        assert!(!error.is_transient());
        assert!(error.to_string().contains("\"nope\""), "{error}");
    }
    store.set_secret("present", version("x", BTreeMap::new())).await.unwrap();
    let error = store.get_version("present", &"a".repeat(32)).await.unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error:?}");

    // Disabled latest version: 403 SecretDisabled → Disabled, with what to do.
    let disable = PropertiesUpdate { enabled: Some(false), ..Default::default() };
    store.update_properties("present", None, disable).await.unwrap();
    let error = store.get_latest("present").await.unwrap_err();
    assert!(matches!(&error, StoreError::Disabled { name, vault } if name == "present" && vault == "devvault"));
    assert!(!error.is_transient());
    assert!(error.to_string().contains("enable it or write a new version"), "{error}");

    // Soft-deleted name: 409 Conflict → SoftDeleted.
    store.delete_secret("present").await.unwrap();
    let error = store.set_secret("present", version("y", BTreeMap::new())).await.unwrap_err();
    assert!(matches!(&error, StoreError::SoftDeleted { name, .. } if name == "present"), "{error:?}");
    assert!(error.to_string().contains("recover or purge"), "{error}");
    assert!(!error.is_transient());
    vault.shutdown().await;
}

#[tokio::test]
async fn limits_are_checked_before_sending_and_name_the_limit_and_the_secret() {
    let (vault, store) = start().await;

    // Exactly at the limits: accepted by the client and the service.
    let at_limit: BTreeMap<String, String> = (0..15).map(|i| (format!("t{i}"), "v".into())).collect();
    store.set_secret("edge", version(&"a".repeat(25 * 1024), at_limit.clone())).await.expect("25 KiB and 15 tags");

    let big = "s".repeat(25 * 1024 + 1);
    let error = store.set_secret("too-big", version(&big, BTreeMap::new())).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, StoreError::Invalid { .. }), "{error:?}");
    assert!(text.contains("\"too-big\"") && text.contains("25 KiB") && text.contains("25601 bytes"), "{text}");
    assert!(!text.contains("sss"), "the value never appears in the error");
    assert!(!error.is_transient());

    let mut sixteen = at_limit.clone();
    sixteen.insert("t15".into(), "v".into());
    let error = store.set_secret("too-many", version("x", sixteen.clone())).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("\"too-many\"") && text.contains("16 tags") && text.contains("limit of 15"), "{text}");
    let update = PropertiesUpdate { tags: Some(sixteen), ..Default::default() };
    let error = store.update_properties("edge", None, update).await.unwrap_err();
    assert!(error.to_string().contains("\"edge\"") && error.to_string().contains("limit of 15"), "{error}");

    // Nothing was sent: neither secret exists, and the edge secret kept its 15 tags.
    for name in ["too-big", "too-many"] {
        assert!(matches!(store.get_latest(name).await, Err(StoreError::NotFound { .. })), "{name} was written");
    }
    assert_eq!(store.get_latest("edge").await.unwrap().properties.tags, at_limit);

    // A limit left to the service (tag value over 256 characters): its 400 is kept and explained.
    let long_tag = tags(&[("note", &"n".repeat(257))]);
    let error = store.set_secret("long-tag", version("x", long_tag)).await.unwrap_err();
    match &error {
        StoreError::Rejected { name, status, code, message, .. } => {
            assert_eq!((name.as_str(), *status, code.as_str()), ("long-tag", 400, "BadParameter"));
            assert!(
                message.starts_with("Property has invalid value") && message.contains("256 characters"),
                "{message}"
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(!error.is_transient());
    vault.shutdown().await;
}
