//! The `data` of a Key Vault event, read tolerantly ([`KeyVaultEventData`]), and the
//! secret it names once its fields are cross-checked ([`SecretRef`]).
//!
//! Keys are matched after trimming and ignoring ASCII case; `Id` is split by
//! [`secret_id`](super::secret_id) and must agree with `VaultName`, `ObjectName` and
//! `Version`; names must pass Key Vault's rules (`kv-rotator-core`'s `names`).

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::secret_id::secret_id_parts;
use super::EventError;
use crate::text::{quote, same_name, trim};
use kv_rotator_core::names::{is_secret_name, is_vault_name, is_version};

/// The `data` of a Key Vault object event, read tolerantly.
///
/// Keys match after trimming and ignoring ASCII case (`Id`/`id`, `"ObjectName "`);
/// string values are trimmed, and empty or null values count as absent. `NBF`/`EXP`
/// may be integers, integer strings or null; an unreadable one counts as absent,
/// because they are informational (the engine reads `exp` from Key Vault itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyVaultEventData {
    /// `Id`: the object's URL, `https://{vault}.vault.azure.net/secrets/{name}/{version}`.
    pub id: Option<String>,
    /// `VaultName`.
    pub vault_name: Option<String>,
    /// `ObjectType`: `Secret`, `Key` or `Certificate`.
    pub object_type: Option<String>,
    /// `ObjectName`.
    pub object_name: Option<String>,
    /// `Version`.
    pub version: Option<String>,
    /// `NBF`, Unix seconds.
    pub nbf: Option<i64>,
    /// `EXP`, Unix seconds.
    pub exp: Option<i64>,
}

/// The `data` keys we read, in canonical spelling, matched after trimming and ignoring ASCII case.
pub(crate) const KV_FIELDS: [&str; 7] = ["Id", "VaultName", "ObjectType", "ObjectName", "Version", "NBF", "EXP"];

/// The index in [`KV_FIELDS`] of a `data` key (trimmed, any ASCII case).
pub(crate) fn kv_field(key: &str) -> Option<usize> {
    let key = trim(key);
    KV_FIELDS.iter().position(|field| same_name(key, field))
}

impl KeyVaultEventData {
    /// Reads an event's `data`. Fails only when `data` is not an object, a field has
    /// a type no variant of the payload uses, or a key is given twice (e.g. `Id` and
    /// `id`) with different values.
    pub fn from_value(data: &Value) -> Result<Self, EventError> {
        let Value::Object(map) = data else {
            return Err(EventError::DataNotObject);
        };
        let mut out = Self::default();
        for (index, field) in KV_FIELDS.into_iter().enumerate() {
            let value = lookup(map, index)?;
            match field {
                "NBF" => out.nbf = value.and_then(unix_seconds),
                "EXP" => out.exp = value.and_then(unix_seconds),
                _ => {
                    let text = value.map(|v| trimmed_string(field, v)).transpose()?.flatten();
                    match field {
                        "Id" => out.id = text,
                        "VaultName" => out.vault_name = text,
                        "ObjectType" => out.object_type = text,
                        "ObjectName" => out.object_name = text,
                        _ => out.version = text,
                    }
                }
            }
        }
        Ok(out)
    }

    /// The secret this event names.
    ///
    /// Names come from `Id` when it is present, and every other field given must
    /// agree with it (ignoring ASCII case, as Key Vault names do); a disagreement
    /// rejects the event, since we cannot tell which field lies. Without `Id`, the
    /// names come from `VaultName`, `ObjectName` and `Version`.
    pub fn secret_ref(&self) -> Result<SecretRef, EventError> {
        self.view().secret_ref()
    }

    /// The fields the decisions use, borrowed.
    pub(crate) fn view(&self) -> KvView<'_> {
        KvView {
            id: self.id.as_deref(),
            vault_name: self.vault_name.as_deref(),
            object_type: self.object_type.as_deref(),
            object_name: self.object_name.as_deref(),
            version: self.version.as_deref(),
        }
    }
}

/// The name fields of [`KeyVaultEventData`], borrowed (trimmed, `None` when empty), so
/// the fast path decides without copying them; see [`KeyVaultEventData::secret_ref`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KvView<'a> {
    pub(crate) id: Option<&'a str>,
    pub(crate) vault_name: Option<&'a str>,
    pub(crate) object_type: Option<&'a str>,
    pub(crate) object_name: Option<&'a str>,
    pub(crate) version: Option<&'a str>,
}

impl KvView<'_> {
    /// [`KeyVaultEventData::secret_ref`]; only the checked names are copied.
    pub(crate) fn secret_ref(&self) -> Result<SecretRef, EventError> {
        if let Some(object_type) = self.object_type {
            if !same_name(object_type, "Secret") {
                return Err(EventError::WrongObjectType(quote(object_type)));
            }
        }
        let from_id = self.id.map(secret_id_parts).transpose()?;
        let (id_vault, id_name, id_version) = match from_id {
            Some((vault, name, version)) => (vault, Some(name), version),
            None => (None, None, None),
        };
        let vault_name = agree("VaultName", id_vault, self.vault_name)?.ok_or(EventError::MissingField("VaultName"))?;
        let secret_name =
            agree("ObjectName", id_name, self.object_name)?.ok_or(EventError::MissingField("ObjectName"))?;
        let version = agree("Version", id_version, self.version)?;

        if !is_vault_name(&vault_name) {
            return Err(EventError::InvalidVaultName(quote(&vault_name)));
        }
        if !is_secret_name(&secret_name) {
            return Err(EventError::InvalidSecretName(quote(&secret_name)));
        }
        if let Some(version) = &version {
            if !is_version(version) {
                return Err(EventError::InvalidVersion(quote(version)));
            }
        }
        Ok(SecretRef {
            vault_name: vault_name.into_owned(),
            secret_name: secret_name.into_owned(),
            version: version.map(Cow::into_owned),
        })
    }
}

/// Finds field `index` of [`KV_FIELDS`] among `map`'s keys, as [`kv_field`] reads them; two
/// spellings with different values are a conflict, not a choice.
fn lookup(map: &Map<String, Value>, index: usize) -> Result<Option<&Value>, EventError> {
    let mut found: Option<&Value> = None;
    for (key, value) in map {
        if kv_field(key) != Some(index) || value.is_null() {
            continue;
        }
        match found {
            Some(previous) if !same_value(previous, value) => {
                return Err(EventError::ConflictingField(KV_FIELDS[index]))
            }
            Some(_) => {}
            None => found = Some(value),
        }
    }
    Ok(found)
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.trim() == b.trim(),
        _ => a == b,
    }
}

/// A trimmed string, `None` when empty; a non-string is an error.
fn trimmed_string(field: &'static str, value: &Value) -> Result<Option<String>, EventError> {
    match value {
        Value::String(s) => {
            let s = s.trim();
            Ok((!s.is_empty()).then(|| s.to_owned()))
        }
        other => {
            Err(EventError::InvalidField { field, reason: format!("expected a string, got {}", json_type(other)) })
        }
    }
}

/// `NBF`/`EXP`: an integer, an integral float or a string holding one.
fn unix_seconds(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => {
            n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e15).map(|f| f as i64))
        }
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Cross-checks a name from `Id` with the same name given as its own field.
fn agree<'a>(
    field: &'static str,
    from_id: Option<Cow<'a, str>>,
    from_data: Option<&'a str>,
) -> Result<Option<Cow<'a, str>>, EventError> {
    match (from_id, from_data) {
        (Some(id), Some(data)) if !same_name(&id, data) => {
            Err(EventError::Mismatch { field, from_id: quote(&id), from_data: quote(data) })
        }
        (Some(id), _) => Ok(Some(id)),
        (None, data) => Ok(data.map(Cow::Borrowed)),
    }
}

/// The secret an event names, checked: a valid vault name, secret name and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// The vault's name.
    pub vault_name: String,
    /// The secret's name.
    pub secret_name: String,
    /// The version the event names, if any.
    pub version: Option<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;

    pub(crate) const VERSION: &str = "ee059b2bb5bc48398a53b168c6cdcb10";

    pub(crate) fn documented_data() -> Value {
        // The `data` of Microsoft's documented example, quirks included.
        json!({
            "Id": "https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10",
            "VaultName": "sample-kv",
            "ObjectType": "Secret",
            "ObjectName ": "newsecret",
            "Version": " ee059b2bb5bc48398a53b168c6cdcb10",
            "NBF": "1559081980",
            "EXP": "1559082102"
        })
    }

    fn expected_ref() -> SecretRef {
        SecretRef { vault_name: "sample-kv".into(), secret_name: "newsecret".into(), version: Some(VERSION.into()) }
    }

    #[test]
    fn documented_data_parses_with_its_quirks() {
        let data = KeyVaultEventData::from_value(&documented_data()).unwrap();
        assert_eq!(data.object_name.as_deref(), Some("newsecret"));
        assert_eq!(data.version.as_deref(), Some(VERSION));
        assert_eq!(data.nbf, Some(1_559_081_980));
        assert_eq!(data.exp, Some(1_559_082_102));
        assert_eq!(data.secret_ref().unwrap(), expected_ref());
    }

    #[test]
    fn camel_case_keys_and_integer_or_null_times() {
        let data = json!({
            "id": "https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10",
            "vaultName": "sample-kv",
            "objectType": "Secret",
            "objectName": "newsecret",
            "version": VERSION,
            "nbf": 1559081980,
            "exp": null
        });
        let data = KeyVaultEventData::from_value(&data).unwrap();
        assert_eq!((data.nbf, data.exp), (Some(1_559_081_980), None));
        assert_eq!(data.secret_ref().unwrap(), expected_ref());
    }

    #[test]
    fn unreadable_times_are_absent_not_fatal() {
        let mut data = documented_data();
        data["NBF"] = json!("soon");
        data["EXP"] = json!(1559082102.0);
        let data = KeyVaultEventData::from_value(&data).unwrap();
        assert_eq!((data.nbf, data.exp), (None, Some(1_559_082_102)));
    }

    #[test]
    fn names_without_id_come_from_fields() {
        let data = json!({"VaultName": "sample-kv", "ObjectName": "newsecret", "Version": VERSION});
        let data = KeyVaultEventData::from_value(&data).unwrap();
        assert_eq!(data.secret_ref().unwrap(), expected_ref());
    }

    #[test]
    fn id_alone_is_enough() {
        let data = json!({"Id": "https://sample-kv.vault.azure.net/secrets/newsecret/"});
        let secret = KeyVaultEventData::from_value(&data).unwrap().secret_ref().unwrap();
        assert_eq!(secret.vault_name, "sample-kv");
        assert_eq!(secret.secret_name, "newsecret");
        assert_eq!(secret.version, None);
    }

    #[test]
    fn names_compare_ignoring_case_and_id_spelling_wins() {
        let mut data = documented_data();
        data["ObjectName "] = json!("NewSecret");
        data["VaultName"] = json!("SAMPLE-KV");
        let secret = KeyVaultEventData::from_value(&data).unwrap().secret_ref().unwrap();
        assert_eq!(secret, expected_ref());
    }

    #[test]
    fn disagreements_with_id_are_rejected() {
        for (key, value, field) in [
            ("ObjectName ", "othersecret", "ObjectName"),
            ("VaultName", "other-kv", "VaultName"),
            ("Version", "0123456789abcdef0123456789abcdef", "Version"),
        ] {
            let mut data = documented_data();
            data[key] = json!(value);
            let err = KeyVaultEventData::from_value(&data).unwrap().secret_ref().unwrap_err();
            assert!(matches!(err, EventError::Mismatch { field: f, .. } if f == field), "{key}: {err}");
        }
    }

    #[test]
    fn conflicting_spellings_are_rejected_and_equal_ones_accepted() {
        let mut data = documented_data();
        data["ObjectName"] = json!("other");
        assert_eq!(KeyVaultEventData::from_value(&data), Err(EventError::ConflictingField("ObjectName")));
        data["ObjectName"] = json!("newsecret ");
        assert!(KeyVaultEventData::from_value(&data).is_ok());
    }

    #[test]
    fn bad_shapes_are_rejected() {
        assert_eq!(KeyVaultEventData::from_value(&json!("x")), Err(EventError::DataNotObject));
        let err = KeyVaultEventData::from_value(&json!({"VaultName": 5})).unwrap_err();
        assert!(matches!(err, EventError::InvalidField { field: "VaultName", .. }));
        let missing = KeyVaultEventData::from_value(&json!({"VaultName": "sample-kv"})).unwrap();
        assert_eq!(missing.secret_ref(), Err(EventError::MissingField("ObjectName")));
    }

    #[test]
    fn wrong_object_type_is_rejected() {
        let mut data = documented_data();
        data["ObjectType"] = json!("Key");
        let err = KeyVaultEventData::from_value(&data).unwrap().secret_ref().unwrap_err();
        assert!(matches!(err, EventError::WrongObjectType(_)));
    }

    #[test]
    fn data_keys_and_trim_read_as_the_general_path_reads_them() {
        for key in [
            "Id",
            "id",
            " ID ",
            "VaultName",
            "vaultname",
            "ObjectType",
            "OBJECTTYPE",
            "ObjectName ",
            "objectName",
            "Version",
            "NBF",
            "nbf",
            "EXP",
            "Exp",
            "\u{a0}Id",
            "Idx",
            "ObjectTypo",
            "ObjectNamx",
            "NBX",
            "EXX",
            "",
            " ",
        ] {
            let general = KV_FIELDS.iter().position(|field| key.trim().eq_ignore_ascii_case(field));
            assert_eq!(kv_field(key), general, "{key:?}");
            assert_eq!(trim(key), key.trim(), "{key:?}");
        }
    }

    #[test]
    fn invalid_names_are_rejected_with_clipped_quotes() {
        let long = "x".repeat(500);
        let data = json!({"VaultName": "sample-kv", "ObjectName": format!("{long}\n"), "Version": VERSION});
        let err = KeyVaultEventData::from_value(&data).unwrap().secret_ref().unwrap_err();
        let EventError::InvalidSecretName(quoted) = &err else { panic!("{err}") };
        assert!(quoted.len() < 100, "{quoted}");
        let data = json!({"VaultName": "sample-kv", "ObjectName": "a\nb"});
        let err = KeyVaultEventData::from_value(&data).unwrap().secret_ref().unwrap_err();
        assert_eq!(err.to_string(), r#"invalid secret name "a\nb""#);
    }
}
