//! The common Event Grid delivery, read without building a JSON tree.
//!
//! [`plan_event_grid`] decides a whole `application/json` delivery the way
//! [`plan_event`](crate::eventgrid::plan_event) decides each of its events, but reads the
//! body straight into borrowed, typed envelopes in one pass: strings stay slices of the
//! body, and of `data` only the Key Vault fields are kept (the rest is skipped unread). Per delivery it allocates the list of events and
//! the strings of the decisions, where the general path allocates a `serde_json::Value`
//! node per key and value.
//!
//! It only takes the shape real deliveries have, and returns `None` for anything else
//! (a key given twice, an escaped string, a number where a string belongs, a validation
//! event, a CloudEvent, a body that is not an array, ...). The caller then runs the
//! general path, so every unusual body is decided, and every error worded, by one piece
//! of code; a property test checks that both paths agree wherever this one answers.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::eventgrid::{
    check_versions, checked_event_id, kv_field, rotation, Disposition, EventKind, KvView, PlannedEvent,
};
use crate::source::SourceFilter;
use crate::text::trim;

/// Decides every event of an Event Grid schema delivery; `None` when the body is not
/// in the common shape and the general path must read it.
pub fn plan_event_grid(body: &[u8], source: &SourceFilter) -> Option<Vec<PlannedEvent>> {
    // Skipped values are not checked for UTF-8 by the parser, but a body that is not UTF-8
    // is refused by the general path: check it whole, first.
    let mut de = serde_json::Deserializer::from_str(std::str::from_utf8(body).ok()?);
    let planned = Delivery { source }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(planned)
}

/// The body's array, each event planned as soon as it is read (no list of envelopes).
struct Delivery<'s> {
    source: &'s SourceFilter,
}

impl<'de> DeserializeSeed<'de> for Delivery<'_> {
    type Value = Vec<PlannedEvent>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Delivery<'_> {
    type Value = Vec<PlannedEvent>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of Event Grid events")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        // Most deliveries hold one event.
        let mut planned = Vec::with_capacity(1);
        while let Some(event) = seq.next_element::<Envelope<'de>>()? {
            planned.push(plan(planned.len(), event, self.source).ok_or_else(|| de::Error::custom(UNUSUAL))?);
        }
        Ok(planned)
    }
}

/// One event's envelope, fields borrowed from the body.
struct Envelope<'a> {
    id: &'a str,
    topic: Option<&'a str>,
    event_type: &'a str,
    /// `data` read in the same pass as the envelope, as a Key Vault payload; `None` when
    /// it is not one in the common shape (which only matters for rotation events).
    data: Option<Option<KvView<'a>>>,
    data_version: Option<&'a str>,
    metadata_version: Option<&'a str>,
}

/// The fast path's refusal: the general path takes over. Never shown to anyone.
const UNUSUAL: &str = "not the common shape";

/// Sets `slot` once; a second value (a key given twice) is unusual.
fn set_once<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(E::custom(UNUSUAL)),
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Envelope<'a> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct EnvelopeVisitor;
        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = Envelope<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an Event Grid event")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let (mut id, mut topic, mut subject, mut event_type, mut event_time) = (None, None, None, None, None);
                let (mut data, mut data_version, mut metadata_version) = (None, None, None);
                // Keys with escapes fail to borrow: unusual, like everything else below.
                while let Some(key) = map.next_key::<&'de str>()? {
                    match key {
                        "id" => set_once(&mut id, map.next_value::<&'de str>()?)?,
                        "eventType" => set_once(&mut event_type, map.next_value::<&'de str>()?)?,
                        "topic" => set_once(&mut topic, map.next_value::<Option<&'de str>>()?)?,
                        "subject" => set_once(&mut subject, map.next_value::<Option<&'de str>>()?)?,
                        "eventTime" => set_once(&mut event_time, map.next_value::<Option<&'de str>>()?)?,
                        "data" => set_once(&mut data, map.next_value_seed(DataSeed)?)?,
                        "dataVersion" => set_once(&mut data_version, map.next_value::<Option<&'de str>>()?)?,
                        "metadataVersion" => set_once(&mut metadata_version, map.next_value::<Option<&'de str>>()?)?,
                        // Maybe a CloudEvent: the general path tells.
                        "specversion" => return Err(de::Error::custom(UNUSUAL)),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Envelope {
                    id: id.ok_or_else(|| de::Error::custom(UNUSUAL))?,
                    topic: topic.flatten(),
                    event_type: event_type.ok_or_else(|| de::Error::custom(UNUSUAL))?,
                    data,
                    data_version: data_version.flatten(),
                    metadata_version: metadata_version.flatten(),
                })
            }
        }
        de.deserialize_map(EnvelopeVisitor)
    }
}

/// One event's decision, as [`decide`](crate::eventgrid) makes it; `None` when unusual.
fn plan(index: usize, event: Envelope<'_>, source: &SourceFilter) -> Option<PlannedEvent> {
    let kind = EventKind::classify(event.event_type);
    if kind == EventKind::SubscriptionValidation {
        return None;
    }
    let event_id = match checked_event_id(Some(event.id)) {
        Ok(event_id) => event_id,
        Err(e) => return Some(PlannedEvent::rejected(index, e)),
    };
    let disposition = match kind {
        EventKind::SubscriptionValidation => unreachable!("returned above"),
        EventKind::SecretNearExpiry | EventKind::SecretExpired => {
            let data = match check_versions(event.metadata_version, event.data_version) {
                Err(e) => Err(e),
                Ok(()) => Ok(event.data??),
            };
            rotation(event.id, event.event_type, event.topic, data, source)
        }
        EventKind::SubscriptionDeleted
        | EventKind::SecretNewVersionCreated
        | EventKind::OtherKeyVault
        | EventKind::Unknown => Disposition::Ignore { kind, event_type: event.event_type.to_owned() },
    };
    Some(PlannedEvent { index, event_id, disposition })
}

/// Reads `data` like [`KeyVaultEventData::from_value`](crate::eventgrid::KeyVaultEventData::from_value),
/// keys matched after trimming and ignoring ASCII case, into `Some` view; `None` when
/// unusual (not an object, a field under two keys, a name that is not a plain string or
/// null), the value consumed either way. `NBF`/`EXP` are only looked at for being given
/// twice: the decisions never use them, and no value of theirs makes the general path fail.
struct DataSeed;

impl<'de> DeserializeSeed<'de> for DataSeed {
    type Value = Option<KvView<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(DataVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = Option<KvView<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key Vault event data")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut fields: [Option<Scalar<'de>>; 7] = [None; 7];
        let mut usual = true;
        while let Some(key) = map.next_key::<&'de str>()? {
            let value = map.next_value_seed(ScalarSeed)?;
            if let Some(i) = kv_field(key) {
                // Names must be plain strings or null; NBF and EXP (the last two) may be anything.
                usual &= fields[i].replace(value).is_none() && (i >= 5 || value != Scalar::Other);
            }
        }
        let text = |i: usize| match fields[i] {
            Some(Scalar::Str(s)) => Some(trim(s)).filter(|s| !s.is_empty()),
            _ => None,
        };
        Ok(usual.then(|| KvView {
            id: text(0),
            vault_name: text(1),
            object_type: text(2),
            object_name: text(3),
            version: text(4),
        }))
    }

    fn visit_seq<S: SeqAccess<'de>>(self, seq: S) -> Result<Self::Value, S::Error> {
        ScalarSeed.visit_seq(seq).map(|_| None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A value inside `data`: null, a string without escapes, or anything else (consumed).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scalar<'a> {
    Null,
    Str(&'a str),
    Other,
}

struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(s))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::eventgrid::plan_event;

    const TOPIC: &str = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample-kv";
    const ID: &str = "https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10";

    fn general(body: &Value, source: &SourceFilter) -> Vec<PlannedEvent> {
        let Value::Array(events) = body.clone() else { panic!("not an array") };
        events.into_iter().enumerate().map(|(i, e)| plan_event(i, e, source)).collect()
    }

    fn event(data: Value) -> Value {
        json!({
            "id": "e1", "topic": TOPIC, "subject": "newsecret", "eventType": "Microsoft.KeyVault.SecretNearExpiry",
            "eventTime": "2019-07-25T01:08:33.1036736Z", "data": data, "dataVersion": "1", "metadataVersion": "1"
        })
    }

    /// The fast path answers `body` and agrees with the general one.
    fn agrees(body: Value) {
        let source = SourceFilter::only(["sample-kv"]);
        let fast = plan_event_grid(body.to_string().as_bytes(), &source);
        assert_eq!(fast.as_ref(), Some(&general(&body, &source)), "{body}");
    }

    /// The fast path leaves `body` to the general one.
    fn declines(body: Value) {
        assert_eq!(plan_event_grid(body.to_string().as_bytes(), &SourceFilter::any()), None, "{body}");
    }

    #[test]
    fn common_shapes_take_the_fast_path_and_decide_alike() {
        let documented = json!({
            "Id": ID, "VaultName": "sample-kv", "ObjectType": "Secret", "ObjectName ": "newsecret",
            "Version": " ee059b2bb5bc48398a53b168c6cdcb10", "NBF": "1559081980", "EXP": "1559082102"
        });
        agrees(json!([event(documented.clone())]));
        agrees(json!([event(json!({"id": ID, "vaultName": "SAMPLE-KV", "nbf": 1559081980, "exp": null}))]));
        agrees(json!([event(json!({"Id": ID, "VaultName": "other-kv"}))]));
        agrees(json!([event(json!({"Id": ID, "VaultName": "sample-kv", "ObjectType": "Key"}))]));
        agrees(json!([event(json!({"Id": "https://sample-kv.vault.azure.net/keys/k", "VaultName": "sample-kv"}))]));
        agrees(json!([event(json!({"Id": "https://127.0.0.1:8443/secrets/s/v", "VaultName": "sample-kv"}))]));
        agrees(json!([event(json!({"VaultName": "sample-kv", "EXP": 1.5, "NBF": 1e3}))]));
        let mut unknown_version = event(documented.clone());
        unknown_version["metadataVersion"] = json!("2");
        let mut new_version = event(documented);
        new_version["eventType"] = json!("Microsoft.KeyVault.SecretNewVersionCreated");
        agrees(json!([unknown_version, new_version, {"id": "x", "eventType": "Other", "data": [1]}]));
        agrees(json!([]));
        // Ids that are not event ids are rejected by both, before anything else is read.
        let mut huge = event(json!({"Id": ID, "VaultName": "sample-kv"}));
        huge["id"] = json!("A".repeat(100_000));
        let mut spaced = event(json!({}));
        spaced["id"] = json!("a b");
        agrees(json!([huge, spaced, {"id": "", "eventType": "Other"}]));
    }

    #[test]
    fn unusual_shapes_are_left_to_the_general_path() {
        declines(json!({"id": "e1"}));
        declines(json!([event(json!({"Id": ID, "id": ID}))]));
        declines(json!([event(json!({"VaultName": 5}))]));
        declines(json!([event(json!({"VaultName": "with \"quotes\""}))]));
        declines(json!([event(json!("not an object"))]));
        declines(json!([{"id": "v", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {}}]));
        declines(json!([{"specversion": "1.0", "id": "c", "type": "t", "source": TOPIC}]));
        declines(json!([{"id": 5, "eventType": "Other"}]));
        declines(json!([{"eventType": "Other"}]));
        let mut numeric_version = event(json!({"Id": ID}));
        numeric_version["dataVersion"] = json!(1);
        declines(json!([numeric_version]));
        assert_eq!(plan_event_grid(br#"[{"id":"a","id":"b","eventType":"x"}]"#, &SourceFilter::any()), None);
        assert_eq!(plan_event_grid(b"[", &SourceFilter::any()), None);
        // Bodies the general path refuses whole, with the fault in a value nobody reads.
        for body in [
            &b"[{\"id\":\"a\",\"eventType\":\"x\",\"junk\":\"\xff\"}]"[..],
            b"[{\"id\":\"a\",\"eventType\":\"x\",\"data\":{\"junk\":[\"\xc3\"]}}]",
            b"[{\"id\":\"a\",\"eventType\":\"x\",\"junk\":\"\x01\"}]",
            b"[{\"id\":\"a\",\"eventType\":\"x\",\"data\":{\"j\":\"\x1f\"}}]",
            b"[{\"id\":\"a\",\"eventType\":\"x\",\"junk\":\"\\q\"}]",
        ] {
            assert!(serde_json::from_slice::<Value>(body).is_err());
            assert_eq!(plan_event_grid(body, &SourceFilter::any()), None, "{}", String::from_utf8_lossy(body));
        }
    }
}
