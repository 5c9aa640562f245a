//! Where an event comes from, and whether it is one we listen to.
//!
//! A rotation event names its vault three times: the `topic` (Event Grid schema) or
//! `source` (CloudEvents) ARM resource id, `data.VaultName`, and the host of `data.Id`.
//! [`SourceFilter::check`] requires all three, requires them to agree (ignoring ASCII
//! case, as Key Vault names do), and, when an allowlist is set, the vault to be on it.
//! An event failing the check is dropped and acknowledged: it can never become valid,
//! and a failure status would only make Event Grid redeliver it.
//!
//! The event stays a hint either way: the engine re-reads Key Vault before acting.

use std::collections::HashSet;
use std::sync::Arc;

use crate::eventgrid::{same_name, trim, EventError, KeyVaultEventData};

/// Which vaults' events are accepted.
#[derive(Debug, Clone, Default)]
pub struct SourceFilter {
    /// Lower-cased vault names; `None`: any vault (the three names must still agree).
    allowed: Option<Arc<HashSet<String>>>,
}

impl SourceFilter {
    /// Any vault, as long as topic, `VaultName` and `Id` agree.
    pub fn any() -> Self {
        Self { allowed: None }
    }

    /// Only these vaults (names, any case).
    pub fn only<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names = names.into_iter().map(|n| n.as_ref().trim().to_ascii_lowercase()).collect();
        Self { allowed: Some(Arc::new(names)) }
    }

    /// Whether `vault` may send events.
    pub fn allows(&self, vault: &str) -> bool {
        self.allowed.as_ref().is_none_or(|set| match vault.bytes().any(|b| b.is_ascii_uppercase()) {
            true => set.contains(&vault.to_ascii_lowercase()),
            false => set.contains(vault),
        })
    }

    /// Checks one rotation event's source; `topic` is the `topic`/`source` attribute.
    pub fn check(&self, topic: Option<&str>, data: &KeyVaultEventData) -> Result<(), EventError> {
        self.check_names(topic, data.vault_name.as_deref(), data.id.as_deref())
    }

    /// [`check`](Self::check) on the two fields of `data` it reads.
    pub(crate) fn check_names(
        &self,
        topic: Option<&str>,
        vault_name: Option<&str>,
        id: Option<&str>,
    ) -> Result<(), EventError> {
        let topic = topic.map(trim).filter(|t| !t.is_empty()).ok_or(EventError::MissingSource("topic"))?;
        let from_topic = vault_from_resource_id(topic).ok_or_else(|| EventError::SourceMismatch {
            reason: format!("topic {} is not a Key Vault resource id", quote(topic)),
        })?;
        let from_data = vault_name.ok_or(EventError::MissingSource("data.VaultName"))?;
        let id = id.ok_or(EventError::MissingSource("data.Id"))?;
        let from_id = id_vault(id)
            .ok_or_else(|| EventError::SourceMismatch { reason: "data.Id's host names no vault".to_owned() })?;
        if !same_name(from_topic, from_data) || !same_name(from_id, from_data) {
            return Err(EventError::SourceMismatch {
                reason: format!(
                    "topic names vault {}, data.VaultName {}, data.Id {}",
                    quote(from_topic),
                    quote(from_data),
                    quote(from_id)
                ),
            });
        }
        if !self.allows(from_data) {
            return Err(EventError::VaultNotAllowed(quote(from_data)));
        }
        Ok(())
    }
}

/// The first label of `https://{label}.{domain}/...`, without a full URL parse: the
/// id was already parsed and cross-checked against `VaultName` by `secret_ref`, and any
/// oddity this simpler reading sees differently (userinfo, percent-encoding) can only
/// make the names disagree, never agree.
fn id_vault(id: &str) -> Option<&str> {
    let id = trim(id);
    let rest = id.get(..8).filter(|scheme| scheme.eq_ignore_ascii_case("https://")).map(|_| &id[8..])?;
    let host = split_slash(rest).next()?;
    let (label, domain) = host.split_once('.')?;
    (!label.is_empty() && !domain.is_empty()).then_some(label)
}

/// The vault name in `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{name}`.
pub fn vault_from_resource_id(id: &str) -> Option<&str> {
    let mut parts = split_slash(trim(id).trim_matches('/'));
    let mut segments = [""; 8];
    for segment in &mut segments {
        *segment = parts.next()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let eq = same_name;
    match segments {
        [s, sub, rg, group, p, ns, v, name]
            if eq(s, "subscriptions")
                && !sub.is_empty()
                && eq(rg, "resourceGroups")
                && !group.is_empty()
                && eq(p, "providers")
                && eq(ns, "Microsoft.KeyVault")
                && eq(v, "vaults")
                && !name.is_empty() =>
        {
            Some(name)
        }
        _ => None,
    }
}

/// `s.split('/')`, by a plain byte scan: resource ids and secret ids have short
/// segments, where `str::split`'s searcher costs more than it saves.
pub(crate) fn split_slash(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == b'/') {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

fn quote(value: &str) -> String {
    crate::eventgrid::quote(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample-kv";

    fn data(vault: &str, id_vault: &str) -> KeyVaultEventData {
        KeyVaultEventData {
            id: Some(format!("https://{id_vault}.vault.azure.net/secrets/s/v1")),
            vault_name: Some(vault.into()),
            ..Default::default()
        }
    }

    #[test]
    fn split_slash_splits_as_str_split() {
        for s in ["", "/", "a", "a/b", "/a//b/", "é/ü/", "//"] {
            assert_eq!(split_slash(s).collect::<Vec<_>>(), s.split('/').collect::<Vec<_>>(), "{s:?}");
        }
    }

    #[test]
    fn resource_ids() {
        assert_eq!(vault_from_resource_id(TOPIC), Some("sample-kv"));
        assert_eq!(vault_from_resource_id(&TOPIC.to_ascii_lowercase()), Some("sample-kv"));
        assert_eq!(vault_from_resource_id("/subscriptions/x"), None);
        assert_eq!(vault_from_resource_id(&TOPIC.replace("KeyVault", "Storage")), None);
        assert_eq!(vault_from_resource_id(&format!("{TOPIC}/secrets/s")), None);
    }

    #[test]
    fn all_three_must_agree_and_be_allowed() {
        let any = SourceFilter::any();
        assert_eq!(any.check(Some(TOPIC), &data("SAMPLE-KV", "sample-kv")), Ok(()));
        assert!(matches!(any.check(None, &data("sample-kv", "sample-kv")), Err(EventError::MissingSource("topic"))));
        let other_topic = TOPIC.replace("sample-kv", "evil-kv");
        assert!(matches!(
            any.check(Some(&other_topic), &data("sample-kv", "sample-kv")),
            Err(EventError::SourceMismatch { .. })
        ));
        assert!(matches!(
            any.check(Some(TOPIC), &data("sample-kv", "evil-kv")),
            Err(EventError::SourceMismatch { .. })
        ));
        let only = SourceFilter::only(["Sample-KV"]);
        assert_eq!(only.check(Some(TOPIC), &data("sample-kv", "sample-kv")), Ok(()));
        let evil = TOPIC.replace("sample-kv", "evil-kv");
        assert!(matches!(only.check(Some(&evil), &data("evil-kv", "evil-kv")), Err(EventError::VaultNotAllowed(_))));
        let no_id = KeyVaultEventData { vault_name: Some("sample-kv".into()), ..Default::default() };
        assert_eq!(only.check(Some(TOPIC), &no_id), Err(EventError::MissingSource("data.Id")));
    }
}
