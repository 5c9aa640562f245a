//! The decision for one event ([`plan_event`], [`plan_cloud_event`], [`plan_any_event`]):
//! validate, rotate, ignore or reject, as a [`Disposition`]. Rotation events must name a
//! secret whose fields agree and come from an accepted source ([`SourceFilter::check`]).

use serde::Deserialize;
use serde_json::Value;

use super::data::{KeyVaultEventData, KvView};
use super::envelope::{check_versions, checked_event_id, CloudEvent, EventGridEvent, EventKind};
use super::envelope::{is_cloud_event, SubscriptionValidationData};
use super::EventError;
use crate::source::SourceFilter;
use crate::text::{quote, trim};
use kv_rotator_core::{RotationRequest, Trigger};

/// What to do with one event of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The handshake: answer with this code.
    Validate(SubscriptionValidationData),
    /// Enqueue this rotation.
    Rotate(RotationRequest),
    /// Acknowledge and do nothing.
    Ignore {
        /// The event's kind.
        kind: EventKind,
        /// The event's `eventType` as sent.
        event_type: String,
    },
    /// Drop it, logging why.
    Reject(EventError),
}

/// One event of a delivery with its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Position in the delivered array, for logs.
    pub index: usize,
    /// The event's `id`, when it could be read and is an event id ([`is_event_id`](super::is_event_id)).
    pub event_id: Option<String>,
    /// What to do.
    pub disposition: Disposition,
}

impl PlannedEvent {
    /// The event at `index` of a delivery, dropped for `error` before its id was read.
    pub(crate) fn rejected(index: usize, error: EventError) -> Self {
        Self { index, event_id: None, disposition: Disposition::Reject(error) }
    }
}

/// Like [`plan_event`], for one element of a CloudEvents delivery: the event is read
/// as CloudEvents 1.0 and then decided exactly as its Event Grid twin (`source` plays
/// the part of `topic`, `type` of `eventType`).
pub fn plan_cloud_event(index: usize, value: Value, source: &SourceFilter) -> PlannedEvent {
    let event_id = match checked_event_id(value.get("id").and_then(Value::as_str)) {
        Ok(event_id) => event_id,
        Err(e) => return PlannedEvent::rejected(index, e),
    };
    let disposition = match serde_json::from_value::<CloudEvent>(value) {
        Err(e) => Disposition::Reject(EventError::Envelope(e.to_string())),
        Ok(ce) if ce.specversion.trim() != "1.0" => {
            Disposition::Reject(EventError::UnknownVersion { field: "specversion", value: quote(&ce.specversion) })
        }
        Ok(ce) if ce.data_base64.is_some() && ce.data.is_null() => {
            Disposition::Reject(EventError::Envelope("data_base64 is not a Key Vault payload".to_owned()))
        }
        Ok(ce) if EventKind::classify(&ce.event_type) == EventKind::SubscriptionValidation => Disposition::Reject(
            EventError::Envelope("CloudEvents subscriptions validate with OPTIONS, not a validation event".to_owned()),
        ),
        Ok(ce) => decide(
            EventGridEvent {
                id: ce.id,
                topic: Some(ce.source),
                subject: ce.subject,
                event_type: ce.event_type,
                event_time: ce.time,
                data: ce.data,
                data_version: None,
                metadata_version: None,
            },
            source,
        ),
    };
    PlannedEvent { index, event_id, disposition }
}

/// Decides what to do with one element of a delivered array; rotation events must
/// pass `source` (see [`SourceFilter::check`]). An event whose `id` is not an event id
/// ([`is_event_id`](super::is_event_id)) is rejected, whatever its type.
///
/// Takes the value by move: its strings and `data` move into the event, not copied.
pub fn plan_event(index: usize, value: Value, source: &SourceFilter) -> PlannedEvent {
    let event_id = match checked_event_id(value.get("id").and_then(Value::as_str)) {
        Ok(event_id) => event_id,
        Err(e) => return PlannedEvent::rejected(index, e),
    };
    let disposition = match serde_json::from_value::<EventGridEvent>(value) {
        Ok(event) => decide(event, source),
        Err(e) => Disposition::Reject(EventError::Envelope(e.to_string())),
    };
    PlannedEvent { index, event_id, disposition }
}

/// [`plan_cloud_event`] or [`plan_event`], by the event's own shape ([`is_cloud_event`]):
/// for an event that arrives alone, without a delivery's content type to tell the schema
/// (the Azure Functions Event Grid trigger hands its function one event of either schema).
pub fn plan_any_event(index: usize, value: Value, source: &SourceFilter) -> PlannedEvent {
    if is_cloud_event(&value) {
        plan_cloud_event(index, value, source)
    } else {
        plan_event(index, value, source)
    }
}

fn decide(event: EventGridEvent, source: &SourceFilter) -> Disposition {
    let kind = EventKind::classify(&event.event_type);
    match kind {
        EventKind::SubscriptionValidation => match SubscriptionValidationData::deserialize(&event.data) {
            Ok(data) => Disposition::Validate(data),
            Err(e) => Disposition::Reject(EventError::InvalidField { field: "validationCode", reason: e.to_string() }),
        },
        EventKind::SecretNearExpiry | EventKind::SecretExpired => {
            let data = check_versions(event.metadata_version.as_deref(), event.data_version.as_deref())
                .and_then(|()| KeyVaultEventData::from_value(&event.data));
            let view = data.as_ref().map(KeyVaultEventData::view).map_err(EventError::clone);
            rotation(&event.id, &event.event_type, event.topic.as_deref(), view, source)
        }
        EventKind::SubscriptionDeleted
        | EventKind::SecretNewVersionCreated
        | EventKind::OtherKeyVault
        | EventKind::Unknown => Disposition::Ignore { kind, event_type: event.event_type },
    }
}

/// The decision for a `SecretNearExpiry`/`SecretExpired` event whose `data` was read
/// (or failed to be): rotate the secret it names if its names and source check out.
pub(crate) fn rotation(
    event_id: &str,
    event_type: &str,
    topic: Option<&str>,
    data: Result<KvView<'_>, EventError>,
    source: &SourceFilter,
) -> Disposition {
    let checked = data.and_then(|data| {
        let secret = data.secret_ref()?;
        source.check(topic, data.vault_name, data.id)?;
        Ok(secret)
    });
    match checked {
        Ok(secret) => Disposition::Rotate(RotationRequest {
            vault_name: secret.vault_name,
            secret_name: secret.secret_name,
            // Key Vault answers version ids in lower case; normalized here, at the boundary,
            // so the engine's fence and rotation id see one spelling.
            version: secret.version.map(|v| v.to_ascii_lowercase()),
            trigger: Trigger::EventGrid { event_id: event_id.to_owned(), event_type: trim(event_type).to_owned() },
        }),
        Err(e) => Disposition::Reject(e),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::eventgrid::data::tests::{documented_data, VERSION};
    use crate::eventgrid::{SECRET_NEAR_EXPIRY, SECRET_NEW_VERSION_CREATED, SUBSCRIPTION_VALIDATION_EVENT};

    #[test]
    fn an_event_with_a_bad_id_is_rejected_whatever_its_type_with_the_id_clipped() {
        let huge = "A".repeat(500_000);
        for event_type in [SECRET_NEAR_EXPIRY, SECRET_NEW_VERSION_CREATED, SUBSCRIPTION_VALIDATION_EVENT, "Other"] {
            let event = json!({"id": huge, "eventType": event_type, "data": documented_data()});
            let planned = plan_event(2, event.clone(), &SourceFilter::any());
            assert_eq!((planned.index, planned.event_id.as_deref()), (2, None));
            let Disposition::Reject(e @ EventError::InvalidEventId(_)) = &planned.disposition else {
                panic!("{event_type}: {:?}", planned.disposition)
            };
            let text = e.to_string();
            assert!(text.starts_with("id \"AAAA") && text.len() < 200, "{text}");
            let cloud = json!({"specversion": "1.0", "id": huge, "source": "s", "type": event_type});
            assert_eq!(plan_cloud_event(2, cloud, &SourceFilter::any()).disposition, planned.disposition);
        }
        let planned = plan_event(0, json!({"id": "a\u{1b}[31m\nb", "eventType": "Other"}), &SourceFilter::any());
        let Disposition::Reject(e) = planned.disposition else { panic!() };
        let expected = r#"id "a\u{1b}[31m\nb" is not an event id: 1 to 128 visible ASCII characters, without " or \"#;
        assert_eq!(e.to_string(), expected);
    }

    #[test]
    fn plan_rotates_near_expiry_and_ignores_new_versions() {
        let mut event = json!({
            "id": "e1", "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/sample-kv",
            "subject": "newsecret", "eventType": SECRET_NEAR_EXPIRY,
            "eventTime": "2019-07-25T01:08:33.1036736Z", "data": documented_data(),
            "dataVersion": 1, "metadataVersion": "1"
        });
        let planned = plan_event(3, event.clone(), &SourceFilter::any());
        assert_eq!(planned.index, 3);
        assert_eq!(planned.event_id.as_deref(), Some("e1"));
        let Disposition::Rotate(request) = planned.disposition else { panic!("{planned:?}") };
        assert_eq!(request.version.as_deref(), Some(VERSION));
        assert_eq!(
            request.trigger,
            Trigger::EventGrid { event_id: "e1".into(), event_type: SECRET_NEAR_EXPIRY.into() }
        );

        event["eventType"] = json!(SECRET_NEW_VERSION_CREATED);
        assert!(matches!(
            plan_event(0, event.clone(), &SourceFilter::any()).disposition,
            Disposition::Ignore { kind: EventKind::SecretNewVersionCreated, .. }
        ));
    }

    #[test]
    fn plan_rejects_broken_envelopes() {
        assert!(matches!(
            plan_event(0, json!(42), &SourceFilter::any()).disposition,
            Disposition::Reject(EventError::Envelope(_))
        ));
        let no_type = json!({"id": "e1", "data": {}});
        let planned = plan_event(0, no_type, &SourceFilter::any());
        assert_eq!(planned.event_id.as_deref(), Some("e1"));
        assert!(matches!(planned.disposition, Disposition::Reject(EventError::Envelope(m)) if m.contains("eventType")));
        let no_code = json!({"id": "v", "eventType": SUBSCRIPTION_VALIDATION_EVENT, "data": {}});
        assert!(matches!(
            plan_event(0, no_code, &SourceFilter::any()).disposition,
            Disposition::Reject(EventError::InvalidField { .. })
        ));
    }
}
