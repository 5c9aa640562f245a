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

use crate::text::{quote, same_name, split_slash, trim};

/// Why an event's source is refused. Each is an
/// [`EventError`](crate::eventgrid::EventError) variant of its own once the event is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// A field naming the source is absent (`topic`, `data.VaultName`, `data.Id`).
    Missing(&'static str),
    /// `topic`/`source`, `data.VaultName` and `data.Id` do not name the same vault.
    Mismatch {
        /// Which names disagree, quoted and clipped.
        reason: String,
    },
    /// The vault is not on the allowlist (its name, quoted and clipped).
    NotAllowed(String),
}

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

    /// Checks one rotation event's source: `topic` is its `topic`/`source` attribute,
    /// `vault_name` and `id` its `data.VaultName` and `data.Id`.
    pub fn check(&self, topic: Option<&str>, vault_name: Option<&str>, id: Option<&str>) -> Result<(), SourceError> {
        let topic = topic.map(trim).filter(|t| !t.is_empty()).ok_or(SourceError::Missing("topic"))?;
        let from_topic = vault_from_resource_id(topic).ok_or_else(|| SourceError::Mismatch {
            reason: format!("topic {} is not a Key Vault resource id", quote(topic)),
        })?;
        let from_data = vault_name.ok_or(SourceError::Missing("data.VaultName"))?;
        let id = id.ok_or(SourceError::Missing("data.Id"))?;
        let from_id =
            id_vault(id).ok_or_else(|| SourceError::Mismatch { reason: "data.Id's host names no vault".to_owned() })?;
        if !same_name(from_topic, from_data) || !same_name(from_id, from_data) {
            return Err(SourceError::Mismatch {
                reason: format!(
                    "topic names vault {}, data.VaultName {}, data.Id {}",
                    quote(from_topic),
                    quote(from_data),
                    quote(from_id)
                ),
            });
        }
        if !self.allows(from_data) {
            return Err(SourceError::NotAllowed(quote(from_data)));
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

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample-kv";

    /// A `data.Id` in the vault named `vault`.
    fn id(vault: &str) -> String {
        format!("https://{vault}.vault.azure.net/secrets/s/v1")
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
        assert_eq!(any.check(Some(TOPIC), Some("SAMPLE-KV"), Some(&id("sample-kv"))), Ok(()));
        assert!(matches!(
            any.check(None, Some("sample-kv"), Some(&id("sample-kv"))),
            Err(SourceError::Missing("topic"))
        ));
        let other_topic = TOPIC.replace("sample-kv", "evil-kv");
        assert!(matches!(
            any.check(Some(&other_topic), Some("sample-kv"), Some(&id("sample-kv"))),
            Err(SourceError::Mismatch { .. })
        ));
        assert!(matches!(
            any.check(Some(TOPIC), Some("sample-kv"), Some(&id("evil-kv"))),
            Err(SourceError::Mismatch { .. })
        ));
        let only = SourceFilter::only(["Sample-KV"]);
        assert_eq!(only.check(Some(TOPIC), Some("sample-kv"), Some(&id("sample-kv"))), Ok(()));
        let evil = TOPIC.replace("sample-kv", "evil-kv");
        assert!(matches!(
            only.check(Some(&evil), Some("evil-kv"), Some(&id("evil-kv"))),
            Err(SourceError::NotAllowed(_))
        ));
        assert_eq!(only.check(Some(TOPIC), Some("sample-kv"), None), Err(SourceError::Missing("data.Id")));
    }
}
